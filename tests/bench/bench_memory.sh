#!/usr/bin/env bash
# Benchmark (prints, never fails on a figure): peak RSS of re-scoring and of one RL train step at vocab
# 151,936 for T = 512, 1024, 2048 positions, each in its own process, with the chunked head and with the
# full-logits computation it replaced.   bench_memory.sh [BENCH_DIR=build/bench]
set -euo pipefail
bin=${1:-build/bench}
export OMP_WAIT_POLICY=passive
blas=$(ldd "$bin/bench_memory" | grep -o 'lib[a-z]*blas[^ ]* => [^ ]*' | head -1 || true)
echo "bench_memory.sh: $(uname -m), BLAS: ${blas:-none in ldd (a statically linked MKL, as in the PyPI wheel)}; peak RSS per process"
for mode in score train; do
  for T in 512 1024 2048; do
    for full in "" --full; do
      "$bin/bench_memory" --mode "$mode" --T "$T" $full --threads 1
    done
  done
done
