#!/usr/bin/env bash
# Train-step tokens/s of moekit (bench_train_step, the tiny or the small preset) against transformers' eager
# Qwen3MoeForCausalLM step (ref_train.py) on the same work: SEQS sequences of PROMPT + RESPONSE tokens, two
# mini-batches, AdamW, clipping; sft and grpo. For each algorithm moekit and Python alternate REPS times
# (separate processes, each a warm-up step, then STEPS timed steps whose median it reports); medians compared.
# Prints numbers, never fails on a time.
#   tests/bench/train_vs_python.sh [threads=1] [seqs=64] [prompt=12] [response=24] [reps=3] [steps=5] [preset=tiny]
# preset small: the issue's larger shape (hidden 1024, 8 layers, 64 experts top-8, 424 M parameters; about
# 8 GB of memory per process), e.g. `train_vs_python.sh 2 8 12 24 3 3 small`.
# Needs build/bench/bench_train_step and bench_decode, and /work/.venv-ref (PYTHON= another interpreter
# with torch and transformers).
# moekit's step does more than the reference: its metrics (entropy, clip fractions, mismatch and routing
# statistics) and, for grpo, the routing it records in the old pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
threads=${1:-1} seqs=${2:-64} prompt=${3:-12} response=${4:-24} reps=${5:-3} steps=${6:-5} preset=${7:-tiny}
case $preset in
  tiny) sizes=(--seqs "$seqs" --small-layers 0) label=tiny ;;
  small) sizes=(--seqs 0 --small-layers 8 --small-seqs "$seqs") label=small/8L ;;
  *) echo "train_vs_python.sh: preset $preset: tiny or small" >&2; exit 2 ;;
esac
bin=${BENCH_BIN:-$root/build/bench}
py=${PYTHON:-/work/.venv-ref/bin/python}
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin/bench_decode" save "$dir/model" "$preset"  # the weights Python loads (moekit's bench initialises the same way)
echo "$preset preset, $seqs seqs x ($prompt + $response) tokens, $threads thread(s), median of $reps interleaved processes x $steps steps"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# grpo runs moekit twice per rep: as moe-train-step steps (the first mini-batch's old-pass values from that
# update's own forward: Trainer::old_pass, first_update) and with the old pass over every sequence, as the
# reference does (--old-pass full).
for algo in sft grpo; do
  ours=() full=() theirs=()
  for ((r = 0; r < reps; r++)); do
    for mode in defer full; do
      [[ $algo == sft && $mode == full ]] && continue
      l=$("$bin/bench_train_step" --threads "$threads" "${sizes[@]}" --prompt "$prompt" --response "$response" \
            --algo "$algo" --old-pass "$mode" --reps $((steps + 1)) | awk -v l="$label" '$1 == l')
      v=$(awk '{for (i = 1; i < NF; i++) if ($i == "step") print $(i + 1)}' <<<"$l")
      if [[ $mode == defer ]]; then ours+=("$v"); else full+=("$v"); fi
    done
    l=$("$py" "$here/ref_train.py" "$dir/model" "$algo" "$seqs" "$prompt" "$response" "$threads" "$steps" 2>/dev/null)
    theirs+=("$(awk '{print $4}' <<<"$l")")
  done
  mp=$(printf '%s\n' "${theirs[@]}" | median)
  for mode in defer full; do
    [[ $algo == sft && $mode == full ]] && continue
    if [[ $mode == defer ]]; then runs=("${ours[@]}") name=$algo; else runs=("${full[@]}") name="$algo (old pass over every sequence, as python)"; fi
    mo=$(printf '%s\n' "${runs[@]}" | median)
    printf '%-5s moekit %.3f s/step  python %.3f s/step  moekit speed x%.2f of python\n' "$name" "$mo" "$mp" \
      "$(awk -v a="$mo" -v b="$mp" 'BEGIN {print b / a}')"
    echo "    runs (s/step): moekit ${runs[*]} | python ${theirs[*]}"
  done
done
"$bin/bench_train_step" --threads "$threads" --seqs 2 --small-layers 0 | head -1
"$py" "$here/ref_train.py" "$dir/model" sft 2 4 4 "$threads" 2>&1 >/dev/null | tail -1
