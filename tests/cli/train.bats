#!/usr/bin/env bats
# moe-train-step through real pipes: moe-data | moe-rollout | moe-reward | moe-train-step for every algorithm
# and router mode on the tiny preset; broken inputs and unwritable outputs leave the checkpoint intact;
# SFT; 2-process data parallel equals 1 process; a dying rank makes the others fail without writing.
# Rewards of a random model are all 0, so most tests reward through tests/support/moe_fake_reward and
# `moe-reward --task keep` (non-zero advantages).

load common

setup_file() {
  load common
  setup_train_fixture
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

# Copies the initial model to $1.
fresh() { rm -rf "$1"; cp -r "$W/m0" "$1"; }

# Every file of dir $1 equals the one of dir $2 (and no file is added or missing).
same_dir() {
  [ "$(ls "$1")" = "$(ls "$2")" ] || return 1
  for f in "$2"/*; do cmp -s "$f" "$1/$(basename "$f")" || return 1; done
}

@test "moe-train-step --help lists the options; --version" {
  run moe-train-step --help
  [ "$status" -eq 0 ]
  for o in --algo --router --routing --mini-batches --epochs --lr --weight-decay --grad-clip --warmup --metrics \
           --router-shift --tis --mis --loss-agg --clip-low --clip-high --dual-clip --kl-coef --ref --entropy-coef \
           --aux-coef --rs-floor --rs-form --rs-layer-agg --rs-apply --rs-grad --loss-scale --rs-mask --routing-out --steps --batch-size --world-size; do
    [[ "$output" == *"$o"* ]] || { echo "missing $o"; return 1; }
  done
  run moe-train-step --version
  [ "$status" -eq 0 ]
  [[ "$output" == "moe-train-step (moekit) "* ]]
}

@test "usage errors exit 2 and leave the model alone" {
  fresh "$TMP/m"
  cp -r "$TMP/m" "$TMP/orig"
  for args in "--algo ppo" "--router sometimes" "--router replay-rollout" "--mis 2" "--mis 3,1" "--tis word" \
              "--loss-agg mean" "--algo gspo --loss-agg token-mean" "--mini-batches 0" "--kl-coef 0.1" "--rs-apply during" "--bogus"; do
    run moe-train-step -m "$TMP/m" $args "$W/rew.zst"
    echo "$args -> $status: $output"
    [ "$status" -eq 2 ]
    [[ "$output" == *"moe-train-step: error:"* ]]
  done
  run moe-train-step "$W/rew.zst"
  [ "$status" -eq 2 ]
  same_dir "$TMP/m" "$TMP/orig"
}

@test "the real pipe moe-data | moe-rollout | moe-reward | moe-train-step runs, writes state and metrics" {
  fresh "$TMP/m"
  moe-data countdown -n 2 --seed 5 \
    | moe-rollout -m "$TMP/m" -G 2 --max-new-tokens 5 --seed 2 --routing-out "$TMP/routes.zst" -q \
    | moe-reward --task countdown -q \
    | moe-train-step -m "$TMP/m" --algo rspo --router replay-rollout --routing "$TMP/routes.zst" --metrics "$TMP/m.jsonl" -q
  [ -f "$TMP/m/optimizer.safetensors" ]
  grep -q '"global_step": 2' "$TMP/m/trainer_state.json"
  [ "$(grep -c '"kind":"update"' "$TMP/m.jsonl")" -eq 2 ]
  [ "$(grep -c '"kind":"summary"' "$TMP/m.jsonl")" -eq 1 ]
  for k in loss grad_norm entropy lr tokens seconds step pg_loss ppo_kl pg_clipfrac 'router_shift/gamma_mean' \
           'router_shift/unshifted_frac' 'mismatch/kl' 'mismatch/k3_kl' 'routing/layer_mismatch' 'routing/token_mismatch'; do
    grep '"kind":"update"' "$TMP/m.jsonl" | head -1 | grep -q "\"$k\"" || { echo "missing $k"; return 1; }
  done
}

@test "every algorithm x router mode trains on the tiny preset (model changes; router only where it may)" {
  for algo in grpo dapo drgrpo gspo gmpo rspo; do
    for router in free freeze replay-old replay-rollout copy-old-logits; do
      fresh "$TMP/m"
      run moe-train-step -m "$TMP/m" "$W/rew.zst" --routing "$W/r.zst" --algo "$algo" --router "$router" \
        --lr 1e-3 --metrics "$TMP/m.jsonl" -q
      echo "$algo $router: $output"
      [ "$status" -eq 0 ]
      ! cmp -s "$TMP/m/model.safetensors" "$W/m0/model.safetensors"
      # router weights: bit-identical under freeze and copy-old-logits, trained otherwise
      d=$(moe_tensor_diff --match mlp.gate.weight "$TMP/m/model.safetensors" "$W/m0/model.safetensors")
      if [ "$router" = freeze ] || [ "$router" = copy-old-logits ]; then [ "$d" = 0 ]; else [ "$d" != 0 ]; fi
    done
  done
  [ "$(grep -c '"kind":"summary"' "$TMP/m.jsonl")" -eq 30 ]
  # routing agreement is logged even without replay
  grep '"router":"free"' "$TMP/m.jsonl" | grep -q 'routing/layer_mismatch'
}

@test "the first mini-batch takes its old-pass values from its own forward (ratios exactly 1) where it can" {
  for router in free replay-rollout; do
    fresh "$TMP/m"
    rm -f "$TMP/g.jsonl"
    moe-train-step -m "$TMP/m" "$W/rew.zst" --routing "$W/r.zst" --algo grpo --router "$router" --mini-batches 2 \
      --lr 1e-2 --metrics "$TMP/g.jsonl" -q
    # epoch 0, mini-batch 0 ran on the old pass's weights with its own log-probs: logp - logp_old is 0 exactly
    [ "$(jq -c 'select(.kind == "update" and .mini_batch == 0) | .ppo_kl == 0' "$TMP/g.jsonl")" = true ]
    # mini-batch 1 ran on moved weights against values of the old pass
    [ "$(jq -c 'select(.kind == "update" and .mini_batch == 1) | .ppo_kl != 0' "$TMP/g.jsonl")" = true ]
    # the whole-step metrics cover every sequence, those of mini-batch 0 included
    [ "$(jq -c 'select(.kind == "summary") | has("mismatch/kl") and has("routing/layer_mismatch")' "$TMP/g.jsonl")" = true ]
  done
}

@test "TIS, MIS, KL to a reference, entropy and aux terms run and log their metrics" {
  fresh "$TMP/m"
  moe-train-step -m "$TMP/m" "$W/rew.zst" --tis token --metrics "$TMP/a.jsonl" -q
  grep -q 'tis/w_mean' "$TMP/a.jsonl"
  fresh "$TMP/m"
  moe-train-step -m "$TMP/m" "$W/rew.zst" --tis seq --mis 0.5,2 --metrics "$TMP/b.jsonl" -q
  grep -q 'tis/clip_frac' "$TMP/b.jsonl"
  fresh "$TMP/m"
  moe-train-step -m "$TMP/m" "$W/rew.zst" --kl-coef 0.1 --ref "$W/m0" --entropy-coef 0.01 --aux-coef 0.01 \
    --router-shift --metrics "$TMP/c.jsonl" -q
  grep '"kind":"update"' "$TMP/c.jsonl" | head -1 | grep -q '"kl"'
  grep '"kind":"update"' "$TMP/c.jsonl" | head -1 | grep -q '"aux_loss"'
}

@test "optimizer state persists: a second step continues the global step; -o leaves -m untouched" {
  fresh "$TMP/m"
  cp -r "$TMP/m" "$TMP/orig"
  moe-train-step -m "$TMP/m" "$W/rew.zst" -o "$TMP/out" --warmup 10 -q --metrics "$TMP/m.jsonl"
  same_dir "$TMP/m" "$TMP/orig"
  [ -f "$TMP/out/tokenizer.json" ]
  grep -q '"global_step": 2' "$TMP/out/trainer_state.json"
  moe-train-step -m "$TMP/out" "$W/rew.zst" --warmup 10 -q --metrics "$TMP/m.jsonl"
  grep -q '"global_step": 4' "$TMP/out/trainer_state.json"
  # warmup: lr of step 4 is 4/10 of the peak
  grep '"step":4.0' "$TMP/m.jsonl" | grep -q '"lr":4e-05'
}

@test "deterministic: the same seed and threads give byte-identical checkpoints" {
  fresh "$TMP/a"
  fresh "$TMP/b"
  moe-train-step -m "$TMP/a" "$W/rew.zst" --seed 3 --threads 1 --algo rspo -q
  moe-train-step -m "$TMP/b" "$W/rew.zst" --seed 3 --threads 1 --algo rspo -q
  cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
  cmp "$TMP/a/optimizer.safetensors" "$TMP/b/optimizer.safetensors"
}

@test "bad input: truncated stream, wrong kind, no advantage, mismatched routing -> exit 1, checkpoint intact" {
  fresh "$TMP/m"
  cp -r "$TMP/m" "$TMP/orig"
  head -c 300 "$W/rew.zst" > "$TMP/trunc.zst"
  run moe-train-step -m "$TMP/m" "$TMP/trunc.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-train-step: error:"* ]]
  run moe-train-step -m "$TMP/m" "$W/r.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"kind"* ]]
  run moe-train-step -m "$TMP/m" "$W/roll.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"has no advantage"* ]]
  # a routing stream of another model shape (4 layers instead of the tiny preset's 3)
  moe_gen_routing --records 6 --positions 40 --layers 4 -o "$TMP/other.zst"
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --routing "$TMP/other.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"does not match the model"* ]]
  # a routing stream missing ids (routing of other rollouts, sampled with the same --seed as rew.zst's)
  moe-data countdown -n 1 --seed 9 | moe-rollout -m "$TMP/m" -G 1 --max-new-tokens 4 --seed 1 --routing-out "$TMP/few.zst" -q > /dev/null
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --routing "$TMP/few.zst" --router replay-rollout
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"no routing record"* || "$output" == *"covers positions"* ]]
  # ... and with another seed: refused by the headers before any record
  moe-data countdown -n 1 --seed 9 | moe-rollout -m "$TMP/m" -G 1 --max-new-tokens 4 --seed 2 --routing-out "$TMP/few2.zst" -q > /dev/null
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --routing "$TMP/few2.zst" --router replay-rollout
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"few2.zst: the routing stream belongs to another batch than the rollouts (routing header seed 2, rollout header seed 1)"* ]]
  run moe-train-step -m "$TMP/m" "$SRC/tests/data/bad/not_zstd.txt"
  [ "$status" -eq 1 ]
  same_dir "$TMP/m" "$TMP/orig"
}

@test "unwritable output: read-only parent, parent not a dir, a file-size limit -> exit 1, checkpoint intact" {
  mkdir -p "$TMP/ro"
  fresh "$TMP/ro/m"
  cp -r "$TMP/ro/m" "$TMP/orig"
  if [ "$(id -u)" -ne 0 ]; then  # root ignores directory permissions
    chmod a-w "$TMP/ro"
    run moe-train-step -m "$TMP/ro/m" "$W/rew.zst"
    chmod u+w "$TMP/ro"
    echo "$output"
    [ "$status" -eq 1 ]
    same_dir "$TMP/ro/m" "$TMP/orig"
  fi
  touch "$TMP/plainfile"
  run moe-train-step -m "$TMP/ro/m" "$W/rew.zst" -o "$TMP/plainfile/out" -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-train-step: error:"* ]]
  same_dir "$TMP/ro/m" "$TMP/orig"
  # "disk full": the checkpoint write hits RLIMIT_FSIZE (EFBIG) half-way through model.safetensors
  fresh "$TMP/m"
  run bash -c 'trap "" XFSZ; ulimit -f 200; moe-train-step -m "$0" "$1"' "$TMP/m" "$W/rew.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  same_dir "$TMP/m" "$TMP/orig"
  [ -z "$(ls "$TMP" | grep 'tmp-')" ]
}

@test "sft: moe-data --solutions JSONL on stdin, several steps in one process" {
  fresh "$TMP/m"
  moe-data countdown -n 16 --seed 4 --solutions \
    | moe-train-step -m "$TMP/m" --algo sft --steps 6 --batch-size 4 --metrics "$TMP/s.jsonl" -q
  [ "$(grep -c '"kind":"update"' "$TMP/s.jsonl")" -eq 6 ]
  grep -q '"sft_loss"' "$TMP/s.jsonl"
  grep -q '"global_step": 6' "$TMP/m/trainer_state.json"
  grep -q '"algo": "sft"' "$TMP/m/trainer_state.json"
  # a rollout stream is SFT input too (responses as targets), from a file or stdin
  moe-train-step -m "$TMP/m" --algo sft "$W/roll.zst" -q
  grep -q '"global_step": 8' "$TMP/m/trainer_state.json"
  moe-train-step -m "$TMP/m" --algo sft -q < "$W/roll.zst"
  grep -q '"global_step": 10' "$TMP/m/trainer_state.json"
  run bash -c 'echo garbage | moe-train-step -m "$0" --algo sft' "$TMP/m"
  [ "$status" -eq 1 ]
  [[ "$output" == *"neither a rollout stream"* ]]
  # JSONL without a solution
  echo '{"prompt":"1 2 3=6|"}' > "$TMP/bad.jsonl"
  run moe-train-step -m "$TMP/m" --algo sft "$TMP/bad.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"bad.jsonl:1:"* ]]
}

@test "sft: input that is not a regular file (process substitution, FIFO) trains as the same file does" {
  moe-data countdown -n 8 --seed 4 --solutions > "$TMP/s.jsonl"
  fresh "$TMP/a"; fresh "$TMP/b"; fresh "$TMP/c"; fresh "$TMP/d"
  moe-train-step -m "$TMP/a" --algo sft --seed 3 "$TMP/s.jsonl" -q
  moe-train-step -m "$TMP/b" --algo sft --seed 3 <(cat "$TMP/s.jsonl") -q
  cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
  # a rollout stream through a FIFO
  moe-train-step -m "$TMP/c" --algo sft --seed 3 "$W/roll.zst" -q
  mkfifo "$TMP/fifo"
  cat "$W/roll.zst" > "$TMP/fifo" &
  moe-train-step -m "$TMP/d" --algo sft --seed 3 "$TMP/fifo" -q
  wait
  cmp "$TMP/c/model.safetensors" "$TMP/d/model.safetensors"
  [ -p "$TMP/fifo" ]
  # an error names the input and its line
  run moe-train-step -m "$TMP/a" --algo sft <(printf '{"prompt":"1 2=3|","solution":"1+2"}\n{"prompt":"x"}\n') -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"/dev/fd/"*":2: no string \"solution\""* ]]
}

@test "--routing-out writes the training forward's routing; moe-route-dump diffs it against the rollout's" {
  fresh "$TMP/m"
  moe-train-step -m "$TMP/m" "$W/rew.zst" --routing-out "$TMP/train-routes.zst" -q
  run moe-route-dump diff "$W/r.zst" "$TMP/train-routes.zst" --json
  echo "$output"
  [ "$status" -eq 0 ]
}

# dp_run N DIR PREFIX ARGS...: one train step on a fresh copy DIR of m0 with N processes; rank 0 dumps every
# update's all-reduced gradient (before clipping) to PREFIX.<step>.safetensors and its metrics to PREFIX.jsonl.
dp_run() {
  local n=$1 dir=$2 prefix=$3 port r
  shift 3
  fresh "$dir"
  rm -f "$prefix".*
  if [ "$n" -eq 1 ]; then
    MOEKIT_TRAIN_GRAD_DUMP="$prefix" moe-train-step -m "$dir" "$@" --metrics "$prefix.jsonl" -q
    return
  fi
  port=$(free_port)
  local pids=()
  for r in $(seq 1 $((n - 1))); do
    moe-train-step -m "$dir" "$@" --rank "$r" --world-size "$n" --master-port "$port" -q &
    pids+=($!)
  done
  MOEKIT_TRAIN_GRAD_DUMP="$prefix" moe-train-step -m "$dir" "$@" --metrics "$prefix.jsonl" \
    --rank 0 --world-size "$n" --master-port "$port" -q
  for r in "${pids[@]}"; do wait "$r"; done
}

# dp_same ARGS...: 1, 2 and 3 processes give the same gradient at every update, relative to the largest
# gradient entry: 5e-6 at the first update, where the weights are the same and only float32 sums run in
# another order (measured up to 1.2e-6); 3e-5 at later ones, where the weights already differ by what AdamW
# made of those rounding differences (an entry whose gradient is near zero moves by up to lr whatever its
# sign; measured up to 6.4e-6 at update 3). A uniform error of 2x on one rank's share is ~0.3. And the same
# update metrics (pg_loss, kl, ppo_kl, clip
# fractions, entropy, mismatch/*, tis/*, router_shift/*: 2e-5). 6 sequences in 3 mini-batches of 2: with 2 and
# 3 processes some rank has no sequence in some mini-batch.
dp_same() {
  local n s d keys
  for n in 1 2 3; do dp_run "$n" "$TMP/m$n" "$TMP/g$n" "$W/rew.zst" --mini-batches 3 --seed 5 --threads 1 "$@"; done
  for n in 2 3; do
    for s in 1 2 3; do
      d=$(moe_tensor_diff --rel "$TMP/g1.$s.safetensors" "$TMP/g$n.$s.safetensors")
      echo "world $n, update $s: gradient max rel diff $d"
      awk -v d="$d" -v tol="$([ "$s" -eq 1 ] && echo 5e-6 || echo 3e-5)" 'BEGIN { exit !(d < tol) }'
    done
    # Every metric moe-train-step(1) calls exact; router_shift/delta_p90 (a quantile) is named approximate.
    keys=$(jq -r 'select(.kind == "update") | to_entries[] | select(.key | test("^(pg_|kl$|ppo_kl|entropy|mismatch/|tis/|router_shift/|routing/|loss$)")) | select(.key != "router_shift/delta_p90") | .key' "$TMP/g1.jsonl" | sort -u)
    [ -n "$keys" ]
    for k in $keys; do
      paste <(jq -r --arg k "$k" 'select(.kind == "update") | .[$k]' "$TMP/g1.jsonl") \
            <(jq -r --arg k "$k" 'select(.kind == "update") | .[$k]' "$TMP/g$n.jsonl") |
        awk -v k="$k" -v n="$n" '{ d = $1 - $2; if (d < 0) d = -d; if ($2 == "null" || d > 2e-5) { print "world " n ": " k " " $1 " vs " $2; bad = 1 } } END { exit bad }'
    done
  done
  [ "$(jq -s 'map(select(.kind == "update")) | length' "$TMP/g3.jsonl")" -eq 3 ]
}

@test "data parallel gradients, 1 = 2 = 3 processes: grpo with each aggregation" {
  dp_same --algo grpo
  dp_same --algo grpo --loss-agg seq-mean-token-mean
  dp_same --algo grpo --loss-agg seq-mean-token-sum
}

@test "data parallel gradients, 1 = 2 = 3 processes: drgrpo (C = max_new_tokens) + KL + entropy, dapo + TIS" {
  dp_same --algo drgrpo --kl-coef 0.1 --ref "$W/m0" --entropy-coef 0.01
  grep -q '"loss_scale":6' "$TMP/g3.jsonl"  # the rollout header's max_new_tokens, on every world size
  dp_same --algo dapo --tis token
}

@test "data parallel gradients, 1 = 2 = 3 processes: gspo, gmpo + MIS, rspo + R3, grpo + pre-clip router shift" {
  dp_same --algo gspo
  dp_same --algo gmpo --mis 0.5,2
  dp_same --algo rspo --router replay-rollout --routing "$W/r.zst"
  dp_same --algo grpo --router-shift --rs-apply pre-clip --rs-mask 0.999 --routing "$W/r.zst"
}

@test "data parallel: a rank that dies makes the other exit non-zero without writing" {
  fresh "$TMP/m"
  cp -r "$TMP/m" "$TMP/orig"
  rdv=$(rendezvous)
  MOEKIT_TRAIN_FAULT=1:2 moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 1 --world-size 2 --dist-init-file "$rdv" \
    --dist-timeout 30 -q 2> "$TMP/r1.err" &
  pid=$!
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 0 --world-size 2 --dist-init-file "$rdv" --dist-timeout 30 -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"data parallel"* ]]
  run wait "$pid"
  [ "$status" -ne 0 ]
  same_dir "$TMP/m" "$TMP/orig"
}

@test "data parallel: a rendezvous that fails is a one-line error (a taken port, a peer that never comes)" {
  fresh "$TMP/m"
  cp -r "$TMP/m" "$TMP/orig"
  port=$(free_port)
  python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); print("up", flush=True); time.sleep(60)' "$port" > "$TMP/holder" &
  holder=$!
  for _ in $(seq 100); do [ -s "$TMP/holder" ] && break; sleep 0.1; done
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 0 --world-size 2 --master-port "$port" --dist-timeout 5 -q
  kill "$holder"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == "moe-train-step: error: data parallel: rank 0 of 2: cannot form the process group (127.0.0.1:$port): "* ]]
  [[ "$output" == *"$port"*"in use"* ]]  # libtorch 1.13: "Address already in use"; 2.x: "address already in use"
  [ "${#lines[@]}" -eq 1 ]
  rdv=$(rendezvous)
  run moe-train-step -m "$TMP/m" "$W/rew.zst" --rank 1 --world-size 2 --dist-init-file "$rdv" --dist-timeout 2 -q
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == "moe-train-step: error: data parallel: rank 1 of 2: cannot form the process group ($rdv): "*[Tt]imeout* ]]
  [ "${#lines[@]}" -eq 1 ]
  same_dir "$TMP/m" "$TMP/orig"
}

@test "a model without MoE layers: the router-shift ratio is a usage error, grpo trains" {
  jq '.mlp_only_layers = [0, 1, 2]' "$W/m0/config.json" > "$TMP/dense.json"
  moe-init --config "$TMP/dense.json" -o "$TMP/m" --seed 2 -q
  moe-rollout -m "$TMP/m" -G 2 --max-new-tokens 6 --seed 1 -q "$W/p.jsonl" > "$TMP/roll.zst"
  moe_fake_reward "$TMP/roll.zst" | moe-reward --task keep -q > "$TMP/rew.zst"
  cp -r "$TMP/m" "$TMP/orig"
  for args in "--algo rspo" "--algo grpo --router-shift"; do
    run moe-train-step -m "$TMP/m" "$TMP/rew.zst" $args -q
    echo "$output"
    [ "$status" -eq 2 ]
    [[ "$output" == *"the router-shift ratio (--algo rspo, --router-shift) needs MoE layers, and the model has none"* ]]
  done
  same_dir "$TMP/m" "$TMP/orig"
  moe-train-step -m "$TMP/m" "$TMP/rew.zst" --algo grpo -q
  run cmp -s "$TMP/m/model.safetensors" "$TMP/orig/model.safetensors"
  [ "$status" -eq 1 ]  # the weights changed
}

@test "shell_examples/rl_loop.sh runs 2 steps of the pipeline" {
  fresh "$TMP/m"
  run bash "$SRC/shell_examples/rl_loop.sh" "$TMP/m" 2 2
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q '"global_step": 4' "$TMP/m/trainer_state.json"
  [ "$(grep -c '"kind":"summary"' "$TMP/m.metrics.jsonl")" -eq 2 ]
}
