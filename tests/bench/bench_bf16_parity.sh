#!/usr/bin/env bash
# Benchmark (prints, never fails on a figure): bf16 training with float32 master weights against float32
# training, same data and seed, tiny preset: SFT loss side by side over STEPS steps, then one RSPO step on
# sampled rollouts; the final weights' mean |bf16 - f32| against the mean |f32 - start|.
#   bench_bf16_parity.sh [BIN_DIR=build/bin] [TEST_BIN_DIR=build/test-bin] [STEPS=60]
set -euo pipefail
bin=${1:-build/bin}
tbin=${2:-build/test-bin}
steps=${3:-60}
export PATH="$bin:$tbin:$PATH" OMP_WAIT_POLICY=passive
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
moe-init --preset tiny -o "$w/m0" --seed 1 -q
moe-data countdown -n 8192 --solutions --seed 1 > "$w/sft.jsonl"
for dt in f32 bf16; do
  cp -r "$w/m0" "$w/$dt"
  s=$(date +%s.%N)
  moe-train-step -m "$w/$dt" "$w/sft.jsonl" --algo sft --steps "$steps" --batch-size 64 --seed 1 --threads 1 \
    --dtype "$dt" --metrics "$w/$dt.jsonl" -q
  echo "$dt: $steps SFT steps in $(echo "$(date +%s.%N) - $s" | bc) s"
done
echo "step  sft_loss f32  sft_loss bf16"
paste <(jq -r 'select(.sft_loss != null) | .sft_loss' "$w/f32.jsonl") <(jq -r 'select(.sft_loss != null) | .sft_loss' "$w/bf16.jsonl") |
  awk -v n="$steps" '{ i++; if (i == 1 || i % 10 == 0 || i == n) printf "%4d  %12.5f  %13.5f\n", i, $1, $2 }'
echo "weights after SFT: $(moe_tensor_diff "$w/f32/model.safetensors" "$w/bf16/model.safetensors") max |bf16 - f32|, $(moe_tensor_diff "$w/f32/model.safetensors" "$w/m0/model.safetensors") max |f32 - start|"
moe-data countdown -n 16 --seed 2 |
  moe-rollout -m "$w/f32" -G 8 --max-new-tokens 24 --seed 2 -q --routing-out "$w/r.zst" |
  moe-reward --task countdown -q > "$w/rew.zst"
for dt in f32 bf16; do
  cp -r "$w/f32" "$w/rl-$dt"
  moe-train-step -m "$w/rl-$dt" "$w/rew.zst" --algo rspo --router replay-rollout --routing "$w/r.zst" --seed 3 --threads 1 \
    --dtype "$dt" --metrics "$w/rl-$dt.jsonl" -q
done
echo "one RSPO+R3 step from the f32 SFT model: summary loss f32 $(jq -r 'select(.kind == "summary") | .loss' "$w/rl-f32.jsonl"), bf16 $(jq -r 'select(.kind == "summary") | .loss' "$w/rl-bf16.jsonl");" \
  "first grad_norm f32 $(jq -r 'select(.kind == "update") | .grad_norm' "$w/rl-f32.jsonl" | head -1), bf16 $(jq -r 'select(.kind == "update") | .grad_norm' "$w/rl-bf16.jsonl" | head -1);" \
  "max |w bf16 - w f32| $(moe_tensor_diff "$w/rl-f32/model.safetensors" "$w/rl-bf16/model.safetensors"), max |w f32 - w before| $(moe_tensor_diff "$w/rl-f32/model.safetensors" "$w/f32/model.safetensors")"
