#!/usr/bin/env bash
# needs: moe-init moe-data moe-rollout moe-route-dump
# How often do two forward passes of the same tokens pick different experts? Samples Countdown responses
# with a bf16 model (the "inference engine"), re-scores the same tokens in fp32 (the "training engine"),
# and diffs the two routing streams per layer. The fp32 re-score of an fp32 rollout is the control: 0.
#   two_pass_diff.sh [MODEL_DIR] [PROMPTS]      (default: a fresh tiny model, 32 prompts)
# test: "" 8
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=${1:-}
prompts=${2:-32}
if [ -z "$model" ]; then
  model=$work/model
  moe-init --preset tiny --seed 1 -o "$model" -q
fi

moe-data countdown -q -n "$prompts" --seed 7 > "$work/prompts.jsonl"
for dtype in bf16 f32; do
  moe-rollout -q -m "$model" "$work/prompts.jsonl" -G 4 --max-new-tokens 24 --seed 1 --dtype "$dtype" \
    --routing-out "$work/$dtype.routes.zst" -o "$work/$dtype.rollouts.zst"
  moe-rollout -q -m "$model" --score "$work/$dtype.rollouts.zst" --routing-out "$work/$dtype.rescored.zst" -o /dev/null
done

echo "== bf16 rollout vs fp32 re-score of the same tokens"
moe-route-dump diff "$work/bf16.routes.zst" "$work/bf16.rescored.zst"
echo "== fp32 rollout vs fp32 re-score (control: expect 0)"
moe-route-dump diff "$work/f32.routes.zst" "$work/f32.rescored.zst"
