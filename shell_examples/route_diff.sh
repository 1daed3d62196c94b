#!/usr/bin/env bash
# needs: moe-route-dump
# route_diff.sh A B [THRESHOLD]
# How often do two routing dumps of the same sequences (e.g. moe-rollout's inference routing and the
# routing of the training forward) pick different experts? Prints both streams' shapes, then the layers
# sorted by disagreement (worst first) and the token-level summary. Exits 3 when the share of tokens
# with at least one differing layer exceeds THRESHOLD (default 1: never), like `diff --fail-above`.
set -euo pipefail
a=${1:?usage: route_diff.sh A B [THRESHOLD]}
b=${2:?usage: route_diff.sh A B [THRESHOLD]}
threshold=${3:-1}

for f in "$a" "$b"; do
  moe-route-dump stats "$f" | head -n 1
done

report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
moe-route-dump diff --fail-above "$threshold" -q "$a" "$b" >"$report" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then exit "$status"; fi

echo "layers by disagreement (share of tokens whose expert set differs, mean top-k Jaccard):"
awk '/^layer /{t=1; next} /^all /{t=0} t {printf "  layer %-4s mismatch %s  jaccard %s\n", $1, $3, $4}' "$report" |
  sort -t' ' -k5,5r -k4,4n
grep -E '^(all|tokens with|mean differing|only in)' "$report"
exit "$status"
