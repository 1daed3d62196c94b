#!/usr/bin/env bash
# needs: moe-data moe-rollout moe-reward moe-train-step
# N steps of on-policy RL on Countdown: fresh prompts -> rollouts with routing -> rewards/advantages ->
# one train step (RSPO with rollout routing replay, R3) that replaces the model dir in place.
#
#   rl_loop.sh MODEL_DIR [STEPS=10] [PROMPTS_PER_STEP=8]
#
# Environment: ALGO (rspo), ROUTER (replay-rollout), G (samples per prompt, 4), MAX_NEW (24),
# METRICS (MODEL_DIR.metrics.jsonl: one line per update + a summary line per step).
set -euo pipefail
model=${1:?usage: rl_loop.sh MODEL_DIR [STEPS] [PROMPTS_PER_STEP]}
steps=${2:-10}
prompts=${3:-8}
metrics=${METRICS:-${model%/}.metrics.jsonl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for ((i = 0; i < steps; i++)); do
  # moe-train-step reads the routing stream only after the rollout stream ended, when moe-rollout has
  # already put routes.zst in place.
  moe-data countdown -n "$prompts" --seed "$i" -q \
    | moe-rollout -m "$model" -G "${G:-4}" --max-new-tokens "${MAX_NEW:-24}" --seed "$i" \
        --routing-out "$work/routes.zst" -q \
    | moe-reward --task countdown -q \
    | moe-train-step -m "$model" --algo "${ALGO:-rspo}" --router "${ROUTER:-replay-rollout}" \
        --routing "$work/routes.zst" --seed "$i" --metrics "$metrics" -q
  # the step's summary line: a few of its fields
  echo "step $i: $(tail -n 1 "$metrics" | grep -o '"\(loss\|tokens\|seconds\|step\)":[^,}]*' | paste -sd' ')"
done
