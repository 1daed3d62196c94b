#!/usr/bin/env bash
# Benchmark (prints, never fails on a time): wall time of one moe-train-step on the same rewarded stream
# with 1 process and with 2 data-parallel processes (Gloo, 127.0.0.1), tiny preset.
#   bench_train_dp.sh [BIN_DIR=build/bin] [TEST_BIN_DIR=build/test-bin] [PROMPTS=32] [G=8]
set -euo pipefail
bin=${1:-build/bin}
tbin=${2:-build/test-bin}
prompts=${3:-32}
G=${4:-8}
export PATH="$bin:$tbin:$PATH"
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
moe-init --preset tiny -o "$w/m0" --seed 1 -q
moe-data countdown -n "$prompts" --seed 1 \
  | moe-rollout -m "$w/m0" -G "$G" --max-new-tokens 32 --seed 1 -q > "$w/roll.zst"
moe_fake_reward "$w/roll.zst" | moe-reward --task keep -q > "$w/rew.zst"
t() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
for threads in 1 2; do
  cp -r "$w/m0" "$w/one"
  t1=$(t moe-train-step -m "$w/one" "$w/rew.zst" --threads "$threads" -q)
  rm -rf "$w/one"
  cp -r "$w/m0" "$w/two"
  rdv=$(mktemp -u "$w/rendezvous.XXXXXX")
  s=$(date +%s.%N)
  moe-train-step -m "$w/two" "$w/rew.zst" --threads "$threads" -q --rank 1 --world-size 2 --dist-init-file "$rdv" &
  moe-train-step -m "$w/two" "$w/rew.zst" --threads "$threads" -q --rank 0 --world-size 2 --dist-init-file "$rdv"
  wait
  e=$(date +%s.%N)
  rm -rf "$w/two"
  echo "$((prompts * G)) sequences, --threads $threads per process: 1 process $t1 s, 2 processes $(echo "$e - $s" | bc) s"
done
