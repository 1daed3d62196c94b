#!/usr/bin/env bash
# Decode tokens/s of moekit against the Python eager KV-cache generator (ref_decode.py) on the same model
# dir and the same work, run side by side: for each case, moekit and Python alternate REPS times (separate
# processes, each with a warm-up and RUNS timed runs whose median it reports), medians compared. Rates are
# tokens per CPU second of the process (with one thread, what a loaded shared machine distorts least); the
# wall-clock ratio is printed beside it.
# Then sampled / greedy of moekit within one process (see below). Prints numbers, never fails on a time.
# moekit is built against Debian's libtorch 1.13 + OpenBLAS; Python runs the PyPI torch wheel (2.15, MKL).
#   tests/bench/decode_vs_python.sh [preset=tiny] [threads=1] [prompt=16] [new=24] [batches="64 256"] [reps=3] [runs=5]
# Needs build/bench/bench_decode and /work/.venv-ref (PYTHON= to use another interpreter with torch +
# safetensors).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
preset=${1:-tiny} threads=${2:-1} prompt=${3:-16} new=${4:-24} batches=${5:-"64 256"} reps=${6:-3} runs=${7:-5}
bench=${BENCH_BIN:-$root/build/bench}/bench_decode
py=${PYTHON:-/work/.venv-ref/bin/python}
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bench" save "$dir/model" "$preset"
"$py" -c 'import torch; print("python: torch", torch.__version__)'
echo "preset $preset, prompt $prompt, $new new tokens, $threads thread(s), median of $reps interleaved processes x $runs runs"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for b in $batches; do
  for mode in greedy sampled; do
    ours=() theirs=() ours_w=() theirs_w=()
    for ((r = 0; r < reps; r++)); do
      l=$("$bench" gen "$dir/model" "$b" "$prompt" "$new" "$mode" "$threads" "$runs" 2>/dev/null)
      ours+=("$(awk '{print $(NF-6)}' <<<"$l")") ours_w+=("$(awk '{print $5}' <<<"$l")")
      l=$("$py" "$here/ref_decode.py" "$dir/model" "$b" "$prompt" "$new" "$mode" "$threads" "$runs" 2>/dev/null)
      theirs+=("$(awk '{print $(NF-6)}' <<<"$l")") theirs_w+=("$(awk '{print $5}' <<<"$l")")
    done
    mo=$(printf '%s\n' "${ours[@]}" | median) mp=$(printf '%s\n' "${theirs[@]}" | median)
    wo=$(printf '%s\n' "${ours_w[@]}" | median) wp=$(printf '%s\n' "${theirs_w[@]}" | median)
    printf 'batch %4s %-7s moekit %7.0f  python %7.0f tok/CPU-s  ratio x%.2f  | wall: moekit %7.0f  python %7.0f tok/s  ratio x%.2f\n' \
      "$b" "$mode" "$mo" "$mp" "$(awk -v a="$mo" -v b="$mp" 'BEGIN {print a / b}')" \
      "$wo" "$wp" "$(awk -v a="$wo" -v b="$wp" 'BEGIN {print a / b}')"
    echo "    runs (tok/CPU-s): moekit ${ours[*]} | python ${theirs[*]}"
  done
done
# Sampled against greedy in one process (bench_decode gen ... both: the modes alternate, the ratio of each
# pair of runs), the median over REPS processes: the figure above compares medians of separate processes,
# whose spread on this shared machine is larger than the gap itself.
for b in $batches; do
  rs=()
  for ((r = 0; r < reps; r++)); do
    rs+=("$("$bench" gen "$dir/model" "$b" "$prompt" "$new" both "$threads" "$runs" 2>/dev/null | awk '/sampled \/ greedy/ {print substr($7, 2)}')")
  done
  printf 'batch %4s moekit sampled / greedy x%.3f (in-process pairs; processes: %s)\n' "$b" "$(printf '%s\n' "${rs[@]}" | median)" "${rs[*]}"
done
# BLAS in use, once each
"$bench" gen "$dir/model" 2 4 2 greedy "$threads" 2>&1 >/dev/null | head -1
"$py" "$here/ref_decode.py" "$dir/model" 2 4 2 greedy "$threads" 2>&1 >/dev/null | head -1
