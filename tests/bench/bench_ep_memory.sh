#!/usr/bin/env bash
# Benchmark (prints, never fails on a figure): peak RSS per rank of one moe-train-step with --expert-parallel
# N = 1, 2, 4 (world = N, Gloo on 127.0.0.1), against the model's expert share.
#   bench_ep_memory.sh [BIN_DIR=build/bin] [TEST_BIN_DIR=build/test-bin] [PRESET=small | CONFIG.json] [EPS="1 2 4"]
# The small preset trains 0.8 B expert parameters (16 bytes each with AdamW and float32 gradients: ~13 GB at
# EP 1); give a config.json to scale it down.
set -euo pipefail
bin=${1:-build/bin}
tbin=${2:-build/test-bin}
preset=${3:-small}
eps=${4:-1 2 4}
export PATH="$bin:$tbin:$PATH" OMP_WAIT_POLICY=passive
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
if [ -f "$preset" ]; then moe-init --config "$preset" -o "$w/m0" --seed 1 -q; else moe-init --preset "$preset" -o "$w/m0" --seed 1 -q; fi
moe-data countdown -n 4 --seed 1 | moe-rollout -m "$w/m0" -G 2 --max-new-tokens 8 --seed 1 -q > "$w/roll.zst"
moe_fake_reward "$w/roll.zst" | moe-reward --task keep -q > "$w/rew.zst"
python3 - "$w/m0/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
moe = [l for l in range(c["num_hidden_layers"]) if l not in c.get("mlp_only_layers", []) and (l + 1) % c.get("decoder_sparse_step", 1) == 0]
e = len(moe) * c["num_experts"] * 3 * c["hidden_size"] * c["moe_intermediate_size"]
print(f"bench_ep_memory.sh: {len(moe)} MoE layers x {c['num_experts']} experts: {e / 1e6:.1f} M expert parameters "
      f"({e * 16 / 2**20:.0f} MiB as float32 weight + gradient + 2 Adam moments)")
PY
for n in $eps; do
  rm -rf "$w/m"; cp -r "$w/m0" "$w/m"
  rdv=$(mktemp -u "$w/rendezvous.XXXXXX")
  args=(-m "$w/m" "$w/rew.zst" --threads 1 -q)
  [ "$n" -gt 1 ] && args+=(--world-size "$n" --expert-parallel "$n" --dist-init-file "$rdv")
  for r in $(seq 0 $((n - 1))); do
    extra=()
    [ "$n" -gt 1 ] && extra=(--rank "$r")
    /usr/bin/time -f "%M" -o "$w/rss.$r" moe-train-step "${args[@]}" "${extra[@]}" &
  done
  wait
  line="EP $n:"
  for r in $(seq 0 $((n - 1))); do
    kb=$(tail -1 "$w/rss.$r")  # a killed rank's file starts with "Command terminated by signal N"
    line="$line rank $r $((kb / 1024)) MiB$(grep -q terminated "$w/rss.$r" && echo ' (killed)' || true),"
  done
  echo "${line%,} (peak RSS)"
done
