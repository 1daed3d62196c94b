#!/usr/bin/env bash
# test: 16
# The embedded-default demo: a tiny Qwen3-MoE model, the Countdown task, and the routing tools.
#   demo.sh [PROMPTS]    (default 64)
# Makes a model, samples Countdown answers with a bf16 "inference engine" while recording its routing,
# scores them, re-scores the same tokens in fp32 (the "training engine"), and shows how often the two
# passes disagree on experts.
set -euo pipefail
n=${1:-64}
work=${MOEKIT_DEMO_DIR:-$(mktemp -d)}
mkdir -p "$work"
echo "demo: working in $work" >&2

[ -d "$work/model" ] || moe-init --preset tiny --seed 1 -o "$work/model"
moe-data countdown -n "$n" --seed 7 --split train > "$work/train.jsonl"

moe-rollout -m "$work/model" "$work/train.jsonl" -G 8 --max-new-tokens 24 --dtype bf16 --seed 1 \
    --routing-out "$work/rollout.routes.zst" \
  | moe-reward --task countdown > "$work/rewarded.zst"
moe-rollout -m "$work/model" --score "$work/rewarded.zst" --routing-out "$work/train.routes.zst" -o /dev/null

echo "== expert load of the rollout pass"
moe-route-dump stats "$work/rollout.routes.zst"
echo "== bf16 rollout vs fp32 re-score of the same tokens"
moe-route-dump diff "$work/rollout.routes.zst" "$work/train.routes.zst"
echo "== first rewarded rollout"
moe-route-dump show "$work/rewarded.zst" | head -n 6
