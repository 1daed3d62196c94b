#!/usr/bin/env bats
# moe-train-step --expert-parallel N on c10d/Gloo with several local processes: EP 2, EP 4 and EP 2 x DP 2
# give the gradients (all-reduced, every expert gathered) and the updated weights of one process on the
# same data, for router modes free, replay-rollout, copy-old-logits and freeze, and for a model with a dense
# layer; an EP checkpoint is an ordinary one (EP 2 -> EP 1 -> EP 4 steps equal three 1-process steps);
# each rank writes its own experts' shards (model- and optimizer-0000i-of-0000n.safetensors + one index each,
# transformers' layout) and a rank failing or dying while it writes leaves the old checkpoint byte for byte;
# a reference model (--ref) sharded as the policy; --routing-out under data and expert parallel writes one
# process's stream; --dtype bf16 equals one process to bf16's rounding.
# moe-rollout --expert-parallel N (and plain data parallel), sampling and --score: one process's streams.

load common

setup_file() {
  load common
  setup_train_fixture
  # The same shape with layer 1 dense (mlp_only_layers): MoE layers 0 and 2 only.
  jq '.mlp_only_layers = [1]' "$W/m0/config.json" > "$W/dense.json"
  moe-init --config "$W/dense.json" -o "$W/d0" --seed 2 -q
  moe-rollout -m "$W/d0" -G 2 --max-new-tokens 6 --seed 1 --routing-out "$W/rd.zst" -q "$W/p.jsonl" > "$W/rolld.zst"
  moe_fake_reward "$W/rolld.zst" | moe-reward --task keep -q > "$W/rewd.zst"
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

# ep_run WORLD EP DIR PREFIX ARGS...: one train step on DIR with WORLD processes and --expert-parallel EP;
# every rank gets MOEKIT_TRAIN_GRAD_DUMP (under EP the gradient dump gathers every expert on rank 0).
ep_run() {
  local n=$1 ep=$2 dir=$3 prefix=$4 rdv r
  shift 4
  rm -f "$prefix".*
  if [ "$n" -eq 1 ]; then
    MOEKIT_TRAIN_GRAD_DUMP="$prefix" moe-train-step -m "$dir" "$@" --metrics "$prefix.jsonl" -q
    return
  fi
  rdv=$(rendezvous)
  local pids=()
  for r in $(seq 1 $((n - 1))); do
    MOEKIT_TRAIN_GRAD_DUMP="$prefix" moe-train-step -m "$dir" "$@" --rank "$r" --world-size "$n" --dist-init-file "$rdv" \
      --expert-parallel "$ep" --dist-timeout 60 -q &
    pids+=($!)
  done
  MOEKIT_TRAIN_GRAD_DUMP="$prefix" moe-train-step -m "$dir" "$@" --metrics "$prefix.jsonl" \
    --rank 0 --world-size "$n" --dist-init-file "$rdv" --expert-parallel "$ep" --dist-timeout 60 -q
  for r in "${pids[@]}"; do wait "$r"; done
}

# st FILE DIR STEM: DIR/STEM.safetensors when it exists, else DIR/STEM.safetensors.index.json (moe_tensor_diff
# reads the shards an index names).
st() {
  if [ -e "$1/$2.safetensors" ]; then echo "$1/$2.safetensors"; else echo "$1/$2.safetensors.index.json"; fi
}

# hf_shards DIR STEM REF: DIR holds STEM's tensors as transformers lays out a sharded checkpoint: no
# STEM.safetensors, STEM.safetensors.index.json whose weight_map names every tensor once, shard files named
# STEM-0000i-of-0000n.safetensors (i = 1..n, n of them, each named by the index and none other in DIR), each
# holding exactly the tensors the index maps to it, metadata.total_size their data bytes; the tensor names and
# shapes are those of the single file REF. Prints the shard count.
hf_shards() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, os, re, struct, sys
d, stem, ref = sys.argv[1:]
def header(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        size = os.path.getsize(p) - 8 - n
    h.pop("__metadata__", None)
    for k, e in h.items():
        assert 0 <= e["data_offsets"][0] <= e["data_offsets"][1] <= size, (p, k)
    return h
assert not os.path.exists(f"{d}/{stem}.safetensors"), "a single file beside the shards"
idx = json.load(open(f"{d}/{stem}.safetensors.index.json"))
wm = idx["weight_map"]
files = sorted(set(wm.values()))
on_disk = sorted(f for f in os.listdir(d) if re.fullmatch(re.escape(stem) + r"-\d{5}-of-\d{5}\.safetensors", f))
assert files == on_disk, (files, on_disk)
n = len(files)
assert files == [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)], files
seen, total = {}, 0
for f in files:
    h = header(f"{d}/{f}")
    assert sorted(h) == sorted(k for k, v in wm.items() if v == f), f
    for k, e in h.items():
        assert k not in seen, k
        seen[k] = e["shape"]
        total += e["data_offsets"][1] - e["data_offsets"][0]
assert idx["metadata"]["total_size"] == total, (idx["metadata"], total)
r = header(ref)
assert sorted(seen) == sorted(r), (sorted(set(seen) ^ set(r)))
for k in r:
    assert seen[k] == r[k]["shape"], k
print(n)
PY
}

# ep_same BASE ROLLOUTS ARGS...: 1 process, EP 2 (world 2), EP 2 x DP 2 and EP 4 (world 4) give the same
# gradient at every update (relative $GRAD_TOL, default 5e-6, of the largest entry, as data parallel; EP 2
# measured 5e-7 to 1e-6 in router mode free), the same grad_norm (relative $NORM_TOL, default 1e-5) and the
# same updated weights and Adam moments (absolute $WEIGHT_TOL and $ADAM_TOL, default 1e-5).
ep_same() {
  local base=$1 roll=$2 cfg n ep s d
  shift 2
  rm -rf "$TMP/e1"; cp -r "$base" "$TMP/e1"
  ep_run 1 1 "$TMP/e1" "$TMP/g1" "$roll" --mini-batches 3 --seed 5 --threads 1 "$@"
  for cfg in 2:2 4:2 4:4; do
    n=${cfg%:*} ep=${cfg#*:}
    rm -rf "$TMP/e$cfg"; cp -r "$base" "$TMP/e$cfg"
    ep_run "$n" "$ep" "$TMP/e$cfg" "$TMP/g$cfg" "$roll" --mini-batches 3 --seed 5 --threads 1 "$@"
    for s in 1 2 3; do
      d=$(moe_tensor_diff --rel "$TMP/g1.$s.safetensors" "$TMP/g$cfg.$s.safetensors")
      echo "world $n, EP $ep, update $s: gradient max rel diff $d"
      awk -v d="$d" -v t="${GRAD_TOL:-5e-6}" 'BEGIN { exit !(d < t) }'
    done
    paste <(jq -r 'select(.kind == "update") | .grad_norm' "$TMP/g1.jsonl") \
          <(jq -r 'select(.kind == "update") | .grad_norm' "$TMP/g$cfg.jsonl") |
      awk -v c="$cfg" -v t="${NORM_TOL:-1e-5}" '{ d = $1 - $2; if (d < 0) d = -d; print "world:EP " c ": grad_norm " $1 " vs " $2; if ($2 == "null" || d > t * $1) bad = 1 } END { exit bad }'
    d=$(moe_tensor_diff "$TMP/e1/model.safetensors" "$(st "$TMP/e$cfg" model)")
    echo "world $n, EP $ep: updated weights max abs diff $d"
    awk -v d="$d" -v t="${WEIGHT_TOL:-1e-5}" 'BEGIN { exit !(d < t) }'
    # the optimizer state has the same tensors (every expert's moments, each written by its owner)
    d=$(moe_tensor_diff "$TMP/e1/optimizer.safetensors" "$(st "$TMP/e$cfg" optimizer)")
    echo "world $n, EP $ep: Adam moments max abs diff $d"
    awk -v d="$d" -v t="${ADAM_TOL:-1e-5}" 'BEGIN { exit !(d < t) }'
  done
}

@test "expert parallel: usage errors (EP not dividing the world or the experts)" {
  cp -r "$W/m0" "$TMP/m"
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --expert-parallel 2 -q
  [ "$status" -eq 2 ]
  [[ "$output" == *"--expert-parallel 2 does not divide the world size 1"* ]]
  rdv=$(rendezvous)
  moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 1 --world-size 3 --dist-init-file "$rdv" --expert-parallel 3 --dist-timeout 20 -q 2>/dev/null &
  p1=$!
  moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 2 --world-size 3 --dist-init-file "$rdv" --expert-parallel 3 --dist-timeout 20 -q 2>/dev/null &
  p2=$!
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 0 --world-size 3 --dist-init-file "$rdv" --expert-parallel 3 --dist-timeout 20 -q
  echo "$output"
  [ "$status" -eq 2 ]
  [[ "$output" == *"8 experts cannot be split over 3 ranks"* ]]
  wait "$p1" || true
  wait "$p2" || true
  cmp "$TMP/m/model.safetensors" "$W/m0/model.safetensors"
}

@test "expert parallel = 1 process: grpo, router free" {
  ep_same "$W/m0" "$W/rew.zst" --algo grpo
}

@test "expert parallel = 1 process: rspo, rollout routing replay (R3)" {
  ep_same "$W/m0" "$W/rew.zst" --algo rspo --router replay-rollout --routing "$W/r.zst"
}

@test "expert parallel = 1 process: copy-old-logits and freeze (router untouched)" {
  # copy-old-logits: plain data parallel (EP 1, world 2 and 4) differs from one process by up to 5.8e-6 on
  # update 3 here as well (measured; lm_head's gradient), so this mode gets 1e-5. Its weights after three
  # updates were 1.13e-5 apart at world 4, EP 2 (measured once attention summed by blocks), with gradients
  # 9.3e-6 apart: AdamW turns a small entry's relative difference into a share of lr (1e-4) per update.
  # 3e-5 = 0.3 lr; a lost or misrouted gradient moves weights by about lr per update. Session 8's one-pass
  # kernels (the combine's fused multiply-add, RMSNorm's sums) moved update 2's gradient at world 2, EP 2
  # to 1.52e-5 apart (update 1: 5.7e-7), so gradients get 3e-5 too; a lost or misrouted gradient differs by
  # its own size (relative 1).
  GRAD_TOL=3e-5 WEIGHT_TOL=3e-5 ep_same "$W/m0" "$W/rew.zst" --algo grpo --router copy-old-logits
  d=$(moe_tensor_diff --match mlp.gate.weight "$(st "$TMP/e4:2" model)" "$W/m0/model.safetensors")
  [ "$d" = 0 ]
  ep_same "$W/m0" "$W/rew.zst" --algo gspo --router freeze
}

@test "expert parallel = 1 process: a model with a dense layer (mlp_only_layers), R3" {
  ep_same "$W/d0" "$W/rewd.zst" --algo grpo --router replay-rollout --routing "$W/rd.zst"
}

@test "expert parallel = 1 process: a reference model (--ref, k3 KL), its experts sharded as the policy's" {
  # a reference with other weights: the KL term and its gradient are not zero; --micro-batch 1: with 4 ranks
  # two own 2 sequences and two own 1, so the latter run an idle policy and reference forward in the old pass
  [ -d "$W/ref" ] || moe-init --preset tiny -o "$W/ref" --seed 9 -q
  ep_same "$W/m0" "$W/rew.zst" --algo grpo --kl-coef 0.5 --ref "$W/ref" --micro-batch 1
  for cfg in 2:2 4:2 4:4; do
    paste <(jq -r 'select(.kind == "update") | .kl' "$TMP/g1.jsonl") <(jq -r 'select(.kind == "update") | .kl' "$TMP/g$cfg.jsonl") |
      awk -v c="$cfg" '{ d = $1 - $2; if (d < 0) d = -d; print "world:EP " c ": kl " $1 " vs " $2; if (!($1 > 0) || d > 1e-5 * $1) bad = 1 } END { exit bad }'
  done
}

@test "expert parallel = 1 process under --dtype bf16, to bf16's rounding" {
  # bf16 compute, float32 masters and Adam states. The ranks forward other batches than one process, so the
  # bf16 roundings differ: one bf16 unit is 2^-8 = 3.9e-3 relative. Measured (EP 2, EP 2 x DP 2, EP 4):
  # gradient 0.005 of the largest entry at update 1 (same weights: 1.3 units), 0.025-0.028 at updates 2-3
  # (the weights already differ); grad_norm 2.5e-3 relative; weights 3.3e-4 and Adam moments 1.6e-4 apart.
  # Tolerances: gradient 0.05 (13 units), grad_norm 1e-2, weights 1e-3 = 10 lr (AdamW moves a weight by
  # about lr per update whatever its gradient's size, so a gradient entry near 0 whose sign flips moves it
  # 2 lr the other way), Adam moments 1e-3. A lost or misrouted expert gradient is off by O(1).
  GRAD_TOL=0.05 NORM_TOL=1e-2 WEIGHT_TOL=1e-3 ADAM_TOL=1e-3 ep_same "$W/m0" "$W/rew.zst" --algo grpo --dtype bf16
  # bf16 really computed: another gradient norm than float32 (measured 5.0588 against 5.0625 in f32 here)
  gb=$(jq -r 'select(.kind == "update") | .grad_norm' "$TMP/g1.jsonl" | head -1)
  rm -rf "$TMP/f"; cp -r "$W/m0" "$TMP/f"
  ep_run 1 1 "$TMP/f" "$TMP/gf" "$W/rew.zst" --mini-batches 3 --seed 5 --threads 1 --algo grpo
  gf=$(jq -r 'select(.kind == "update") | .grad_norm' "$TMP/gf.jsonl" | head -1)
  echo "grad_norm of update 1: bf16 $gb, f32 $gf"
  [ "$gb" != "$gf" ]
}

@test "expert parallel checkpoints are ordinary: EP 2 -> EP 1 -> EP 4 steps equal three 1-process steps" {
  rm -rf "$TMP/a" "$TMP/b"; cp -r "$W/m0" "$TMP/a"; cp -r "$W/m0" "$TMP/b"
  echo "a README kept" > "$TMP/b/README.md"
  for s in 1 2 3; do ep_run 1 1 "$TMP/a" "$TMP/ga$s" "$W/rew.zst" --seed "$s" --threads 1; done
  ep_run 2 2 "$TMP/b" "$TMP/gb1" "$W/rew.zst" --seed 1 --threads 1
  # each rank wrote its shards: transformers' sharded layout, model and optimizer alike, and the same tensors as
  # one process writes (the tiny model fits one 5 GB shard: 2 shards = one per rank)
  [ "$(hf_shards "$TMP/b" model "$TMP/a/model.safetensors")" = 2 ]
  [ "$(hf_shards "$TMP/b" optimizer "$TMP/a/optimizer.safetensors")" = 2 ]
  # rank 1's shard holds its experts (4..7) only; rank 0's the rest
  [ "$(jq -r '.weight_map["model.layers.0.mlp.experts.5.up_proj.weight"]' "$TMP/b/model.safetensors.index.json")" = model-00002-of-00002.safetensors ]
  [ "$(jq -r '.weight_map["model.layers.0.mlp.experts.3.up_proj.weight"]' "$TMP/b/model.safetensors.index.json")" = model-00001-of-00002.safetensors ]
  [ "$(jq -r '.weight_map["model.embed_tokens.weight"]' "$TMP/b/model.safetensors.index.json")" = model-00001-of-00002.safetensors ]
  [ "$(jq -r '.weight_map | to_entries | map(select(.value == "model-00002-of-00002.safetensors") | .key | test("experts\\.[4-7]\\.")) | all' "$TMP/b/model.safetensors.index.json")" = true ]
  [ "$(jq -r '.global_step' "$TMP/b/trainer_state.json")" = 2 ]
  [ "$(cat "$TMP/b/README.md")" = "a README kept" ]
  # loadable without expert parallel: one process steps from it (and writes one model.safetensors again, the
  # shards and indexes gone)
  ep_run 1 1 "$TMP/b" "$TMP/gb2" "$W/rew.zst" --seed 2 --threads 1
  [ -f "$TMP/b/model.safetensors" ] && [ -f "$TMP/b/optimizer.safetensors" ]
  [ -z "$(ls "$TMP/b" | grep -e '-of-' -e index)" ]
  ep_run 4 4 "$TMP/b" "$TMP/gb3" "$W/rew.zst" --seed 3 --threads 1
  [ "$(jq -r '.global_step' "$TMP/b/trainer_state.json")" = 6 ]
  [ "$(hf_shards "$TMP/b" model "$TMP/a/model.safetensors")" = 4 ]
  [ "$(hf_shards "$TMP/b" optimizer "$TMP/a/optimizer.safetensors")" = 4 ]
  [ ! -e "$TMP/b/model.safetensors" ] && [ ! -e "$TMP/b/optimizer.safetensors" ]
  d=$(moe_tensor_diff "$TMP/a/model.safetensors" "$(st "$TMP/b" model)")
  echo "3 steps: weights max abs diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-5) }'
  d=$(moe_tensor_diff "$TMP/a/optimizer.safetensors" "$(st "$TMP/b" optimizer)")
  echo "3 steps: Adam state max abs diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-5) }'
  [ "$(cat "$TMP/b/README.md")" = "a README kept" ]
  # and it scores without expert parallel, and with another size (EP 2 reads EP 4's shards)
  moe-rollout -m "$TMP/b" --score "$W/roll.zst" -q > /dev/null
  ep_run 2 2 "$TMP/b" "$TMP/gb4" "$W/rew.zst" --seed 4 --threads 1
  ep_run 1 1 "$TMP/a" "$TMP/ga4" "$W/rew.zst" --seed 4 --threads 1
  d=$(moe_tensor_diff "$TMP/a/model.safetensors" "$(st "$TMP/b" model)")
  echo "4 steps: weights max abs diff $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-5) }'
}

@test "expert parallel save: --max-shard-size splits each rank's part into several shards" {
  cp -r "$W/m0" "$TMP/a"; cp -r "$W/m0" "$TMP/b"
  ep_run 1 1 "$TMP/a" "$TMP/ga" "$W/rew.zst" --seed 1 --threads 1
  ep_run 2 2 "$TMP/b" "$TMP/gb" "$W/rew.zst" --seed 1 --threads 1 --max-shard-size 200KB
  n=$(hf_shards "$TMP/b" model "$TMP/a/model.safetensors")
  echo "model shards: $n"
  [ "$n" -gt 4 ]
  hf_shards "$TMP/b" optimizer "$TMP/a/optimizer.safetensors"
  # no shard above the limit unless it is one tensor larger than it
  for f in "$TMP"/b/model-*.safetensors; do
    python3 -c 'import json,struct,sys; f=open(sys.argv[1],"rb"); h=json.loads(f.read(struct.unpack("<Q",f.read(8))[0])); h.pop("__metadata__",None); s=[e["data_offsets"][1]-e["data_offsets"][0] for e in h.values()]; assert sum(s) <= 200000 or len(s) == 1, (sys.argv[1], sum(s))' "$f"
  done
  d=$(moe_tensor_diff "$TMP/a/model.safetensors" "$(st "$TMP/b" model)")
  awk -v d="$d" 'BEGIN { exit !(d < 1e-5) }'
}

@test "a sharded optimizer index that lies is an error naming it, the checkpoint untouched" {
  cp -r "$W/m0" "$TMP/m"
  ep_run 2 2 "$TMP/m" "$TMP/g0" "$W/rew.zst" --seed 1 --threads 1
  cp -a "$TMP/m" "$TMP/orig"
  idx="$TMP/m/optimizer.safetensors.index.json"
  # a tensor mapped to the shard that does not hold it
  jq '.weight_map["model.embed_tokens.weight.exp_avg"] = "optimizer-00002-of-00002.safetensors"' "$TMP/orig/optimizer.safetensors.index.json" > "$idx"
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --threads 1 -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"optimizer-00002-of-00002.safetensors: has no tensor model.embed_tokens.weight.exp_avg"* ]]
  # a file outside the dir
  jq '.weight_map["model.embed_tokens.weight.exp_avg"] = "../x.safetensors"' "$TMP/orig/optimizer.safetensors.index.json" > "$idx"
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --threads 1 -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"is not a file name of this directory"* ]]
  cp "$TMP/orig/optimizer.safetensors.index.json" "$idx"
  for f in "$TMP/orig"/*; do cmp "$f" "$TMP/m/$(basename "$f")"; done
}

# ep_save_fault FAULT RANK WORLD DIR: one step on DIR with WORLD processes, --expert-parallel WORLD, rank RANK
# given MOEKIT_TRAIN_FAULT=FAULT; every rank must exit non-zero. Leaves rank 0's stderr in $TMP/err.0.
ep_save_fault() {
  local fault=$1 bad=$2 n=$3 dir=$4 rdv r pids=() st=0
  rdv=$(rendezvous)
  for r in $(seq 1 $((n - 1))); do
    env $([ "$r" = "$bad" ] && echo "MOEKIT_TRAIN_FAULT=$fault") moe-train-step -m "$dir" "$W/rew.zst" --rank "$r" --world-size "$n" \
      --dist-init-file "$rdv" --expert-parallel "$n" --dist-timeout 30 --threads 1 --metrics "$TMP/m.jsonl" -q 2> "$TMP/err.$r" &
    pids+=($!)
  done
  env $([ "$bad" = 0 ] && echo "MOEKIT_TRAIN_FAULT=$fault") moe-train-step -m "$dir" "$W/rew.zst" --rank 0 --world-size "$n" \
    --dist-init-file "$rdv" --expert-parallel "$n" --dist-timeout 30 --threads 1 --metrics "$TMP/m.jsonl" -q 2> "$TMP/err.0" || st=$?
  echo "rank 0: exit $st: $(head -c 300 "$TMP/err.0")"
  [ "$st" -ne 0 ]
  for r in $(seq 1 $((n - 1))); do
    st=0
    wait "${pids[$((r - 1))]}" || st=$?
    echo "rank $r: exit $st: $(head -c 300 "$TMP/err.$r")"
    [ "$st" -ne 0 ]
  done
}

@test "expert parallel save: a rank failing or dying while it writes its shards leaves the old checkpoint byte for byte" {
  # the old checkpoint itself sharded by an EP 2 step, with a file of the user's beside it
  cp -r "$W/m0" "$TMP/m"
  echo "notes" > "$TMP/m/notes.txt"
  ep_run 2 2 "$TMP/m" "$TMP/g0" "$W/rew.zst" --seed 1 --threads 1
  cp -a "$TMP/m" "$TMP/orig"
  for fault in 1:save 0:save 3:save 2:save-exit; do
    n=2
    [ "${fault%%:*}" -ge 2 ] && n=4
    echo "== MOEKIT_TRAIN_FAULT=$fault, EP $n"
    ep_save_fault "$fault" "${fault%%:*}" "$n" "$TMP/m"
    [ "$(ls "$TMP/m")" = "$(ls "$TMP/orig")" ]
    for f in "$TMP/orig"/*; do cmp "$f" "$TMP/m/$(basename "$f")"; done
    # no staging dir left behind, no metrics line
    [ -z "$(ls "$TMP" | grep 'm.tmp-')" ]
    [ ! -s "$TMP/m.jsonl" ]
  done
  # the failing rank names its error; the others say which rank failed (or that a peer died)
  ep_save_fault 1:save 1 2 "$TMP/m"
  grep -q "MOEKIT_TRAIN_FAULT: rank 1 fails while writing its shards" "$TMP/err.1"
  grep -q "rank 1 failed to write its part of the checkpoint" "$TMP/err.0"
  # and a step after them succeeds from the untouched checkpoint
  ep_run 2 2 "$TMP/m" "$TMP/g1" "$W/rew.zst" --seed 2 --threads 1
  [ "$(jq -r '.global_step' "$TMP/m/trainer_state.json")" = 4 ]
  [ "$(cat "$TMP/m/notes.txt")" = notes ]
}

@test "--routing-out under data and expert parallel: one process's stream, byte for byte" {
  # The stream's header names the producer's argv (which differs: --rank, --expert-parallel), so the records
  # are compared as moe-route-dump prints them: every id, position, expert and float32 probability (printed
  # exactly, so equal text is equal bits), and the header without its producer.
  # --micro-batch 1: every rank forwards a sequence alone, as one process does; with larger micro-batches a
  # rank's old pass batches other sequences together than one process (their sums round in another order).
  for cfg in 1:1 2:1 2:2 4:2 4:4; do
    n=${cfg%:*} ep=${cfg#*:}
    rm -rf "$TMP/m$cfg"; cp -r "$W/m0" "$TMP/m$cfg"
    ep_run "$n" "$ep" "$TMP/m$cfg" "$TMP/g$cfg" "$W/rew.zst" --seed 5 --threads 1 --micro-batch 1 --routing-out "$TMP/ro$cfg.zst"
    moe-route-dump show --jsonl "$TMP/ro$cfg.zst" > "$TMP/ro$cfg.jsonl"
    moe-route-dump show --header --jsonl "$TMP/ro$cfg.zst" | head -1 | jq -c 'del(.producer)' > "$TMP/h$cfg.json"
  done
  [ "$(wc -l < "$TMP/ro1:1.jsonl")" = 6 ]
  for cfg in 2:1 2:2 4:2 4:4; do
    echo "world:EP $cfg"
    cmp "$TMP/ro1:1.jsonl" "$TMP/ro$cfg.jsonl"
    cmp "$TMP/h1:1.json" "$TMP/h$cfg.json"
  done
  # The default micro-batch (all of a rank's sequences in one forward): the same experts, probabilities to
  # float32 rounding (measured: at most 3e-8 apart).
  rm -rf "$TMP/a" "$TMP/b"; cp -r "$W/m0" "$TMP/a"; cp -r "$W/m0" "$TMP/b"
  ep_run 1 1 "$TMP/a" "$TMP/ga" "$W/rew.zst" --seed 5 --threads 1 --routing-out "$TMP/ra.zst"
  ep_run 2 2 "$TMP/b" "$TMP/gb" "$W/rew.zst" --seed 5 --threads 1 --routing-out "$TMP/rb.zst"
  moe-route-dump show --jsonl "$TMP/ra.zst" > "$TMP/ra.jsonl"
  moe-route-dump show --jsonl "$TMP/rb.zst" > "$TMP/rb.jsonl"
  cmp <(jq -c 'del(.probs)' "$TMP/ra.jsonl") <(jq -c 'del(.probs)' "$TMP/rb.jsonl")
  d=$(jq -n --slurpfile a "$TMP/ra.jsonl" --slurpfile b "$TMP/rb.jsonl" '
        [range($a | length) as $i | [($a[$i].probs | flatten), ($b[$i].probs | flatten)] | transpose[]
         | (.[0] - .[1]) | if . < 0 then -. else . end] | max')
  echo "default micro-batch, EP 2: max |probability difference| $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-6) }'
}

# ep_rollout WORLD EP OUT ARGS...: moe-rollout ARGS with WORLD processes and --expert-parallel EP (1 process:
# none); rank 0 writes OUT (and what ARGS name, e.g. --routing-out).
ep_rollout() {
  local n=$1 ep=$2 out=$3 rdv r
  shift 3
  if [ "$n" -eq 1 ]; then
    moe-rollout "$@" -o "$out" -q
    return
  fi
  rdv=$(rendezvous)
  local pids=()
  for r in $(seq 1 $((n - 1))); do
    moe-rollout "$@" --rank "$r" --world-size "$n" --dist-init-file "$rdv" --expert-parallel "$ep" --dist-timeout 60 -o "$out" -q &
    pids+=($!)
  done
  moe-rollout "$@" --rank 0 --world-size "$n" --dist-init-file "$rdv" --expert-parallel "$ep" --dist-timeout 60 -o "$out" -q
  for r in "${pids[@]}"; do wait "$r"; done
}

# same_rollouts A B: the same records (ids, groups, tokens, texts, finish reasons, tasks, in the same order) and
# log-probs (and previous log-probs) within 1e-5; prints the largest difference.
same_rollouts() {
  moe-route-dump show --jsonl "$1" > "$TMP/sa.jsonl"
  moe-route-dump show --jsonl "$2" > "$TMP/sb.jsonl"
  [ -s "$TMP/sa.jsonl" ]
  diff <(jq -c 'del(.logprobs, .prev_logprobs)' "$TMP/sa.jsonl") <(jq -c 'del(.logprobs, .prev_logprobs)' "$TMP/sb.jsonl")
  d=$(jq -n --slurpfile a "$TMP/sa.jsonl" --slurpfile b "$TMP/sb.jsonl" '
        [range($a | length) as $i | ("logprobs", "prev_logprobs") as $k | ($a[$i][$k] // []) as $x | ($b[$i][$k] // []) as $y
         | if ($x | length) != ($y | length) then 1e9 else (range($x | length) as $j | ($x[$j] - $y[$j]) | if . < 0 then -. else . end) end]
        | max // 0')
  echo "$(basename "$2"): max |log-prob difference| $d"
  awk -v d="$d" 'BEGIN { exit !(d < 1e-5) }'
}

@test "moe-rollout --expert-parallel: greedy and sampled rollouts and their routing equal one process's" {
  # 3 prompts x 2 samples, one prompt per batch: 3 batches, so with 2 and 4 ranks some rank has none in a round
  # (it serves its experts by idle forwards until its group is done).
  args=(-m "$W/m0" "$W/p.jsonl" -G 2 --max-new-tokens 6 --batch-size 2 --threads 1 --routing-out "$TMP/ROUTES" --routing-probs f32)
  for mode in greedy sampled; do
    extra=(--seed 7)
    [ "$mode" = greedy ] && extra+=(--greedy)
    for cfg in 1:1 2:2 2:1 4:2 4:4; do
      n=${cfg%:*} ep=${cfg#*:}
      ep_rollout "$n" "$ep" "$TMP/$mode$cfg.zst" "${args[@]/ROUTES/$mode$cfg.r.zst}" "${extra[@]}"
    done
    for cfg in 2:2 2:1 4:2 4:4; do
      echo "$mode, world:EP $cfg"
      same_rollouts "$TMP/${mode}1:1.zst" "$TMP/$mode$cfg.zst"
      cmp <(moe-route-dump show --jsonl "$TMP/${mode}1:1.r.zst") <(moe-route-dump show --jsonl "$TMP/$mode$cfg.r.zst")
    done
  done
  [ "$(moe-route-dump show --jsonl "$TMP/greedy1:1.zst" | wc -l)" = 6 ]
  # sampling really sampled: another response than greedy somewhere
  ! cmp -s <(moe-route-dump show --jsonl "$TMP/greedy1:1.zst" | jq -c .response_tokens) \
           <(moe-route-dump show --jsonl "$TMP/sampled1:1.zst" | jq -c .response_tokens)
}

@test "moe-rollout --score --expert-parallel: log-probs and routing of one process's re-score" {
  for cfg in 1:1 2:2 4:2; do
    n=${cfg%:*} ep=${cfg#*:}
    ep_rollout "$n" "$ep" "$TMP/s$cfg.zst" -m "$W/m0" --score "$W/roll.zst" --batch-size 4 --threads 1 \
      --routing-out "$TMP/s$cfg.r.zst" --routing-probs f32
  done
  for cfg in 2:2 4:2; do
    same_rollouts "$TMP/s1:1.zst" "$TMP/s$cfg.zst"
    cmp <(moe-route-dump show --jsonl "$TMP/s1:1.r.zst") <(moe-route-dump show --jsonl "$TMP/s$cfg.r.zst")
  done
}

@test "moe-rollout --expert-parallel: usage errors, and a rank that dies fails the others" {
  run moe-rollout -m "$W/m0" "$W/p.jsonl" --expert-parallel 2 -q
  [ "$status" -eq 2 ]
  [[ "$output" == *"--expert-parallel 2 does not divide the world size 1"* ]]
  rdv=$(rendezvous)
  moe-rollout -m "$W/m0" --rank 1 --world-size 2 --dist-init-file "$rdv" --dist-timeout 20 -q - < "$W/p.jsonl" > /dev/null 2>&1 &
  p1=$!
  run moe-rollout -m "$W/m0" --rank 0 --world-size 2 --dist-init-file "$rdv" --dist-timeout 20 -q - < "$W/p.jsonl"
  [ "$status" -eq 2 ]
  [[ "$output" == *"every rank reads the input: give a file, not stdin"* ]]
  wait "$p1" || true
  # rank 1 cannot read its model: rank 0 exits non-zero and writes nothing
  rdv=$(rendezvous)
  moe-rollout -m "$TMP/nowhere" "$W/p.jsonl" --rank 1 --world-size 2 --dist-init-file "$rdv" --expert-parallel 2 --dist-timeout 10 -q 2>/dev/null &
  p1=$!
  run moe-rollout -m "$W/m0" "$W/p.jsonl" --rank 0 --world-size 2 --dist-init-file "$rdv" --expert-parallel 2 --dist-timeout 10 \
    -o "$TMP/out.zst" -q
  echo "$output" | head -3
  [ "$status" -eq 1 ]
  [ ! -e "$TMP/out.zst" ]
  run wait "$p1"
  [ "$status" -ne 0 ]
}
