#!/usr/bin/env bash
# Benchmark (prints, never fails on a figure): peak RSS of reading one near-limit record (issue 11: a
# record just under the 256 MiB limit must not cost several times its size). Builds rollout streams of one
# record whose bulk (MIB MiB) is an unknown key (kept as packed msgpack), the response text, or the
# response tokens, then runs moe-route-dump over each under /usr/bin/time -v and prints the peak RSS and
# its ratio to the record's size.
#   bench_big_record.sh [BIN_DIR=build/bin] [TEST_BIN_DIR=build/test-bin] [MIB=255]
set -euo pipefail
bin=${1:-build/bin}
tbin=${2:-build/test-bin}
mib=${3:-255}
export PATH="$bin:$tbin:$PATH"
command -v /usr/bin/time >/dev/null || { echo "bench_big_record.sh: /usr/bin/time (GNU time) not found" >&2; exit 1; }
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
n=$((mib << 20))
big() { head -c "$n" /dev/zero | tr '\0' 'a'; }
{ printf '{"prompt": "1 2=3|", "response": "x", "x_blob": "'; big; echo '"}'; } | moe_gen_rollouts > "$w/extra.zst"
{ printf '{"prompt": "1 2=3|", "tokens": 1, "response": "'; big; echo '"}'; } | moe_gen_rollouts > "$w/text.zst"
# One token per 8 bytes of bulk: tokens (int32) and logprobs (float32) make up the record.
{ printf '{"prompt": "1 2=3|", "response": "x", "tokens": %d}\n' $((n / 8)); } | moe_gen_rollouts > "$w/tokens.zst"
printf '%-8s %-28s %12s %12s %7s\n' bulk command record_MiB peak_rss_MiB ratio
for kind in extra text tokens; do
  rec=$(zstd -dcq "$w/$kind.zst" | wc -c)
  for cmd in "show" "show --jsonl" "stats"; do
    # shellcheck disable=SC2086
    /usr/bin/time -v moe-route-dump $cmd "$w/$kind.zst" > /dev/null 2> "$w/time.txt" || { cat "$w/time.txt" >&2; exit 1; }
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$w/time.txt")
    awk -v k="$kind" -v c="moe-route-dump $cmd" -v r="$rec" -v s="$rss" \
      'BEGIN { printf "%-8s %-28s %12.1f %12.1f %7.2f\n", k, c, r / 1048576, s / 1024, s * 1024 / r }'
  done
done
