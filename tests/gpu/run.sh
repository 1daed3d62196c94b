#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA device (nothing here runs without one: it says so and exits 0).
#   tests/gpu/run.sh [BUILD_DIR]      default build-pypi/ (scripts/build.sh --torch pypi, built when missing)
# 1. CPU vs CUDA parity on the transformers fixtures: logits, router logits and top-k experts (fp32, no TF32).
#    The sampler on the CPU and on cuda:0 from the same logits (tokens and log-probs).
# 2. 2-rank NCCL data parallel == 1 rank, and 2-rank NCCL expert parallel (EP 2) == 1 rank: one RSPO + R3
#    step, weights within 1e-4 (needs 2 GPUs).
#    2-rank NCCL expert-parallel re-scoring (moe-rollout --score --expert-parallel 2) == 1 rank: log-probs
#    within 1e-4.
# 3. Throughput at the `small` preset on cuda:0: decode tokens/s (moe-rollout) and one train step's tokens/s.
# Exit 0 when every check that could run passed, 1 when one failed.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build-pypi}
if [ ! -x "$build/test-bin/gpu_check" ]; then
  echo "gpu: building the CUDA build into $build" >&2
  MOEKIT_BUILD_DIR=$build bash "$src/scripts/build.sh" --torch pypi
fi
export PATH="$build/bin:$build/test-bin:$PATH" OMP_WAIT_POLICY=passive
n=$(gpu_check devices)
if [ "$n" -eq 0 ]; then
  echo "gpu: no CUDA device found (torch::cuda::device_count() = 0 with the libtorch of $build): no GPU check was run"
  exit 0
fi
echo "gpu: $n CUDA device(s)"
fail=0
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT

for f in untied tied; do
  gpu_check parity "$src/tests/fixtures/qwen3moe-tiny/$f" cuda:0 || { echo "gpu: FAIL parity $f"; fail=1; }
done

gpu_check sampling cuda:0 || { echo "gpu: FAIL sampling"; fail=1; }

moe-init --preset tiny -o "$w/m0" --seed 1 -q
moe-data countdown -n 16 --seed 1 |
  moe-rollout -m "$w/m0" -G 4 --max-new-tokens 24 --seed 1 --routing-out "$w/r.zst" -q > "$w/roll.zst"
moe_fake_reward "$w/roll.zst" | moe-reward --task keep -q > "$w/rew.zst"
if [ "$n" -ge 2 ]; then
  args=(--routing "$w/r.zst" --algo rspo --router replay-rollout --seed 2 --device cuda -q)
  cp -r "$w/m0" "$w/one"
  cp -r "$w/m0" "$w/two"
  LOCAL_RANK=0 moe-train-step -m "$w/one" "$w/rew.zst" "${args[@]}"
  rdv=$(mktemp -u "$w/rendezvous.XXXXXX")
  LOCAL_RANK=1 moe-train-step -m "$w/two" "$w/rew.zst" "${args[@]}" --dist-backend nccl --rank 1 --world-size 2 --dist-init-file "$rdv" &
  pid=$!
  LOCAL_RANK=0 moe-train-step -m "$w/two" "$w/rew.zst" "${args[@]}" --dist-backend nccl --rank 0 --world-size 2 --dist-init-file "$rdv"
  wait "$pid"
  d=$(moe_tensor_diff "$w/one/model.safetensors" "$w/two/model.safetensors")
  echo "gpu: 2-rank NCCL vs 1 rank: max weight diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-4) }' || { echo "gpu: FAIL NCCL data parallel"; fail=1; }
  # Expert parallel over NCCL: EP 2 (each GPU owns 4 of the 8 experts) == 1 rank.
  cp -r "$w/m0" "$w/ep"
  rdv=$(mktemp -u "$w/rendezvous.XXXXXX")
  LOCAL_RANK=1 moe-train-step -m "$w/ep" "$w/rew.zst" "${args[@]}" --dist-backend nccl --rank 1 --world-size 2 --dist-init-file "$rdv" --expert-parallel 2 &
  pid=$!
  LOCAL_RANK=0 moe-train-step -m "$w/ep" "$w/rew.zst" "${args[@]}" --dist-backend nccl --rank 0 --world-size 2 --dist-init-file "$rdv" --expert-parallel 2
  wait "$pid"
  d=$(moe_tensor_diff "$w/one/model.safetensors" "$w/ep/model.safetensors.index.json")
  echo "gpu: 2-rank NCCL expert parallel (EP 2) vs 1 rank: max weight diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-4) }' || { echo "gpu: FAIL NCCL expert parallel"; fail=1; }
  # Expert-parallel re-scoring over NCCL: the same log-probs as one rank scoring on cuda:0.
  LOCAL_RANK=0 moe-rollout -m "$w/m0" --score "$w/roll.zst" --device cuda -q -o "$w/score1.zst"
  rdv=$(mktemp -u "$w/rendezvous.XXXXXX")
  LOCAL_RANK=1 moe-rollout -m "$w/m0" --score "$w/roll.zst" --device cuda -q -o "$w/score2.zst" --dist-backend nccl --rank 1 --world-size 2 --dist-init-file "$rdv" --expert-parallel 2 &
  pid=$!
  LOCAL_RANK=0 moe-rollout -m "$w/m0" --score "$w/roll.zst" --device cuda -q -o "$w/score2.zst" --dist-backend nccl --rank 0 --world-size 2 --dist-init-file "$rdv" --expert-parallel 2
  wait "$pid"
  d=$(python3 - <(moe-route-dump show --jsonl "$w/score1.zst") <(moe-route-dump show --jsonl "$w/score2.zst") <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) > 0 and all(x["id"] == y["id"] for x, y in zip(a, b))
print(max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x["logprobs"], y["logprobs"])))
PY
)
  echo "gpu: 2-rank NCCL expert-parallel --score vs 1 rank: log-prob max abs diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-4) }' || { echo "gpu: FAIL NCCL expert-parallel scoring"; fail=1; }
else
  echo "gpu: 1 device: the 2-rank NCCL check needs 2 (skipped)"
fi

moe-init --preset small -o "$w/small" --seed 1 -q
moe-data countdown -n 32 --seed 3 > "$w/p.jsonl"
s=$(date +%s.%N)
moe-rollout -m "$w/small" "$w/p.jsonl" -G 8 --max-new-tokens 128 --seed 1 --device cuda -q > "$w/sroll.zst"
e=$(date +%s.%N)
toks=$(moe-route-dump show --jsonl "$w/sroll.zst" | jq -s 'map(.response_tokens | length) | add')
echo "gpu: decode, small preset, 256 sequences on cuda:0: $toks tokens in $(echo "$e - $s" | bc) s ($(echo "$toks / ($e - $s)" | bc) tokens/s, model load included)"
moe_fake_reward "$w/sroll.zst" | moe-reward --task keep -q > "$w/srew.zst"
s=$(date +%s.%N)
moe-train-step -m "$w/small" "$w/srew.zst" --device cuda --metrics "$w/m.jsonl" -q
e=$(date +%s.%N)
echo "gpu: one train step, small preset on cuda:0: $(echo "$e - $s" | bc) s wall; $(jq -r 'select(.kind == "update") | "mini-batch of \(.tokens) tokens: forward \(."time/forward") s, backward \(."time/backward") s, optimizer \(."time/optimizer") s"' "$w/m.jsonl" | paste -sd ';')"
exit $fail
