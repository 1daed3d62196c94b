#!/usr/bin/env bats
# Device, memory and precision options of the trainer (issue: GPU-ready on a modern libtorch), through the
# real binaries: --device cuda without a GPU is one line and exit 1; --checkpoint-activations changes no
# weight; --dtype bf16 writes float32 masters close to float32 training; tests/gpu/run.sh builds here and
# says that no GPU was found.

load common

setup_file() {
  load common
  setup_train_fixture
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

fresh() { rm -rf "$1"; cp -r "$W/m0" "$1"; }

@test "moe-train-step --device cuda without a GPU: one line naming cuda, exit 1, checkpoint untouched" {
  if [ "$(gpu_check devices)" -gt 0 ]; then skip "this machine has a CUDA device"; fi
  fresh "$TMP/m"
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --device cuda -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"--device cuda: no CUDA device found"* ]]
  [ "$(wc -l <<<"$output")" -eq 1 ]
  cmp -s "$TMP/m/model.safetensors" "$W/m0/model.safetensors"
  run moe-rollout -m "$TMP/m" "$W/p.jsonl" --device cuda:1 -o "$TMP/o.zst"
  [ "$status" -eq 1 ]
  [ "$(wc -l <<<"$output")" -eq 1 ]
  [ ! -e "$TMP/o.zst" ]
}

@test "--checkpoint-activations: the same weights and optimizer state as without (1e-6)" {
  fresh "$TMP/a"
  fresh "$TMP/b"
  args=(--routing "$W/r.zst" --algo rspo --router replay-rollout --aux-coef 0.01 --seed 2 --threads 1 -q)
  moe-train-step -m "$TMP/a" "$W/rew.zst" "${args[@]}"
  moe-train-step -m "$TMP/b" "$W/rew.zst" "${args[@]}" --checkpoint-activations
  d=$(moe_tensor_diff "$TMP/a/model.safetensors" "$TMP/b/model.safetensors")
  echo "max diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-6) }'
  ! cmp -s "$TMP/a/model.safetensors" "$W/m0/model.safetensors"
  d=$(moe_tensor_diff "$TMP/a/optimizer.safetensors" "$TMP/b/optimizer.safetensors")
  awk -v d="$d" 'BEGIN { exit !(d < 1e-6) }'
}

@test "--dtype bf16: float32 checkpoint and Adam state, within a few steps' size of float32 training; f16 is refused" {
  fresh "$TMP/f"
  fresh "$TMP/b"
  args=(--routing "$W/r.zst" --algo grpo --router replay-rollout --seed 2 --threads 1 -q --lr 1e-3)
  moe-train-step -m "$TMP/f" "$W/rew.zst" "${args[@]}" --metrics "$TMP/f.jsonl"
  moe-train-step -m "$TMP/b" "$W/rew.zst" "${args[@]}" --metrics "$TMP/b.jsonl" --dtype bf16
  # bf16 gradients really were used: another gradient norm
  gf=$(jq -r 'select(.kind == "update") | .grad_norm' "$TMP/f.jsonl" | head -1)
  gb=$(jq -r 'select(.kind == "update") | .grad_norm' "$TMP/b.jsonl" | head -1)
  echo "grad_norm f32 $gf bf16 $gb"
  [ "$gf" != "$gb" ]
  awk -v a="$gf" -v b="$gb" 'BEGIN { exit !(b > 0.9 * a && b < 1.1 * a) }'
  # moe_tensor_diff reads F32 tensors only and fails on a dtype mismatch: both checkpoints are float32
  d=$(moe_tensor_diff "$TMP/f/model.safetensors" "$TMP/b/model.safetensors")
  step=$(moe_tensor_diff "$TMP/f/model.safetensors" "$W/m0/model.safetensors")
  echo "max |bf16 - f32| $d, max |f32 - start| $step"
  awk -v d="$d" -v s="$step" 'BEGIN { exit !(d < 3 * s) }'
  moe_tensor_diff "$TMP/f/optimizer.safetensors" "$TMP/b/optimizer.safetensors" >/dev/null
  fresh "$TMP/h"
  run moe-train-step -m "$TMP/h" "$W/rew.zst" --dtype f16 -q
  [ "$status" -eq 2 ]
  [[ "$output" == *"--dtype f16"* ]]
}

@test "tests/gpu/run.sh builds here and says clearly that no GPU was found" {
  if [ "$(gpu_check devices)" -gt 0 ]; then skip "this machine has a CUDA device"; fi
  run bash "$SRC/tests/gpu/run.sh" "$(dirname "$MOEKIT_BIN")"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"no CUDA device found"* ]]
  [[ "$output" == *"no GPU check was run"* ]]
}
