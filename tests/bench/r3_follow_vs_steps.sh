#!/usr/bin/env bash
# The R3 loop (rollout with routing | reward | train step with --router replay-rollout) for N steps, two ways:
# N pipelines of three new processes with a regular routing file each, against three `--follow` processes
# for the whole run with the routing through a FIFO. Batch i + 1 is written to the --follow loop only once
# checkpoint i is in place, so both ways sample every batch from the newest checkpoint (on-policy) and end on
# the same weights (checked with cmp). Prints seconds per step both ways and the routing stream sizes; never
# fails on a time. Model: a fresh `moe-init --preset tiny`, or DIR given as the fourth argument.
#   tests/bench/r3_follow_vs_steps.sh [steps=4] [prompts=16] [threads=1] [model dir]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
steps=${1:-4} prompts=${2:-16} threads=${3:-1} model=${4:-}
bin=${MOEKIT_BIN:-$root/build/bin}
export OMP_WAIT_POLICY=passive PATH="$bin:$PATH"
work=$(mktemp -d /tmp/r3_follow_vs_steps.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "r3_follow_vs_steps: $steps steps of $prompts prompts x 8, $threads thread(s), $(moe-rollout --version)"
if [ -n "$model" ]; then cp -r "$model" "$work/m0"; else moe-init --preset tiny -o "$work/m0" --seed 1 -q; fi
for ((i = 1; i <= steps; i++)); do moe-data countdown -n "$prompts" --seed $((100 + i)) > "$work/p$i.jsonl" 2>/dev/null; done
roll=(-G 8 --max-new-tokens 24 --dtype bf16 --threads "$threads" -q)
reward=(--task countdown --overlong 24,20 -q)  # rewards that vary with length: a random model solves nothing
train=(--algo rspo --router replay-rollout --seed 3 --threads "$threads" -q)
now() { date +%s.%N; }

cp -r "$work/m0" "$work/sep"
t0=$(now)
for ((i = 1; i <= steps; i++)); do
  moe-rollout -m "$work/sep" "${roll[@]}" --seed $((10 + i)) --routing-out "$work/r$i.zst" "$work/p$i.jsonl" \
    | moe-reward "${reward[@]}" \
    | moe-train-step -m "$work/sep" "${train[@]}" --routing "$work/r$i.zst" -
done
t1=$(now)
sizes=$(for ((i = 1; i <= steps; i++)); do stat -c %s "$work/r$i.zst"; done | paste -sd' ')

cp -r "$work/m0" "$work/fol"
mkfifo "$work/R" "$work/prompts"
t2=$(now)
moe-rollout --follow -m "$work/fol" "${roll[@]}" --seed 11 --routing-out "$work/R" - < "$work/prompts" \
  | moe-reward --follow "${reward[@]}" \
  | moe-train-step --follow -m "$work/fol" "${train[@]}" --routing "$work/R" - &
pid=$!
exec 8> "$work/prompts"
for ((i = 1; i <= steps; i++)); do
  { cat "$work/p$i.jsonl"; echo; } >&8
  # Polled with a bash builtin 10 times a second: a tighter loop of grep processes took enough of 2 busy cores
  # to slow the trainer's updates ~1.8x. Up to 0.1 s per step of this wait is in the --follow figure.
  until { s=; read -r -d '' s < "$work/fol/trainer_state.json"; [[ "$s" == *"\"train_steps\": $i,"* ]]; } 2>/dev/null; do sleep 0.1; done
done
exec 8>&-
wait "$pid"
t3=$(now)

python3 - "$steps" "$t0" "$t1" "$t2" "$t3" "$sizes" <<'PY'
import sys
n, t0, t1, t2, t3 = int(sys.argv[1]), *map(float, sys.argv[2:6])
print(f"routing stream per batch (bytes): {sys.argv[6]}")
print(f"separate pipelines (3 new processes per step, routing file): {(t1 - t0) / n:.2f} s per step")
print(f"--follow loop (3 processes, routing FIFO):                 {(t3 - t2) / n:.2f} s per step")
PY
cmp "$work/sep/model.safetensors" "$work/fol/model.safetensors" && echo "final weights identical (cmp)"
