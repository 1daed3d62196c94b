#!/usr/bin/env bats
# `moe-rollout --follow`: prompt batches in (blank-line separated), one rollout stream per batch out, the
# weights reloaded in place when the model dir's checkpoint changed: batch 2 after a train step equals a fresh
# process on the new checkpoint.

load common

setup_file() {
  load common
  setup_train_fixture
  moe-data countdown -n 3 --seed 4 > "$W/p2.jsonl"
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

fresh() { rm -rf "$1"; cp -r "$W/m0" "$1"; }

@test "moe-rollout --follow samples batch 2 from the checkpoint written after batch 1, as a fresh process does" {
  fresh "$TMP/m"
  mkfifo "$TMP/fifo"
  moe-rollout --follow -q -m "$TMP/m" -G 2 --max-new-tokens 6 --seed 1 - < "$TMP/fifo" > "$TMP/out.zst" 2> "$TMP/err" &
  pid=$!
  exec 8> "$TMP/fifo"
  { cat "$W/p.jsonl"; echo; } >&8
  # Wait for the first stream to be complete (its trailer read back).
  for i in $(seq 1 600); do
    moe-route-dump show --jsonl "$TMP/out.zst" > "$TMP/first.jsonl" 2>/dev/null && break
    sleep 0.1
  done
  [ "$(wc -l < "$TMP/first.jsonl")" -eq 6 ]
  first=$(stat -c %s "$TMP/out.zst")
  # A train step replaces the checkpoint while moe-rollout waits for the next batch.
  moe-train-step -q -m "$TMP/m" --seed 3 "$W/rew.zst"
  cat "$W/p2.jsonl" >&8
  exec 8>&-
  wait "$pid"
  cat "$TMP/err"
  tail -c +$((first + 1)) "$TMP/out.zst" > "$TMP/second.zst"
  # Batch 1 as a fresh process on the first checkpoint (seed 1), batch 2 on the second (seed 1 + 1).
  moe-rollout -q -m "$W/m0" -G 2 --max-new-tokens 6 --seed 1 "$W/p.jsonl" > "$TMP/fresh1.zst"
  moe-rollout -q -m "$TMP/m" -G 2 --max-new-tokens 6 --seed 2 "$W/p2.jsonl" > "$TMP/fresh2.zst"
  diff "$TMP/first.jsonl" <(moe-route-dump show --jsonl "$TMP/fresh1.zst")
  diff <(moe-route-dump show --jsonl "$TMP/second.zst") <(moe-route-dump show --jsonl "$TMP/fresh2.zst")
  # ... and not as the old weights would have sampled it.
  moe-rollout -q -m "$W/m0" -G 2 --max-new-tokens 6 --seed 2 "$W/p2.jsonl" > "$TMP/old2.zst"
  ! diff -q <(moe-route-dump show --jsonl "$TMP/second.zst") <(moe-route-dump show --jsonl "$TMP/old2.zst") >/dev/null
}

@test "moe-rollout --follow: blank lines split batches; --score is refused" {
  fresh "$TMP/m"
  { echo; cat "$W/p.jsonl"; echo; echo; cat "$W/p2.jsonl"; echo; } \
    | moe-rollout --follow -q -m "$TMP/m" -G 1 --max-new-tokens 4 --seed 1 - \
    | moe-reward --follow --task countdown -q > "$TMP/two.zst"
  # Two streams of 3 records: the first ends where moe-reward --follow of the first batch alone ends.
  cat "$W/p.jsonl" | moe-rollout --follow -q -m "$TMP/m" -G 1 --max-new-tokens 4 --seed 1 - \
    | moe-reward --follow --task countdown -q > "$TMP/one.zst"
  n=$(stat -c %s "$TMP/one.zst")
  cmp <(head -c "$n" "$TMP/two.zst") "$TMP/one.zst"
  [ "$(tail -c +$((n + 1)) "$TMP/two.zst" | moe-route-dump show --jsonl - | wc -l)" -eq 3 ]
  run moe-rollout --follow --score -m "$TMP/m" "$W/roll.zst"
  [ "$status" -eq 2 ]
}

# The R3 loop: rollouts with their routing, rewards, and a replay-rollout step per batch, in three processes
# for the whole run. The options make each batch's routing stream larger than a pipe buffer (checked on the
# separate runs' files), so a wrong order of writes or reads on either side of the FIFO would deadlock.
R3_ROLL=(-G 8 --max-new-tokens 32 --routing-probs f32 -q)
R3_REWARD=(--task countdown --overlong 32,28 -q)  # rewards by length: a random model's countdown rewards are all 0
R3_TRAIN=(--algo grpo --router replay-rollout --seed 3 -q)

@test "moe-rollout --follow --routing-out FIFO | moe-reward --follow | moe-train-step --follow --routing FIFO: 3 batches equal 3 separate R3 steps" {
  for b in 1 2 3; do moe-data countdown -n 24 --seed $((20 + b)) > "$TMP/p$b.jsonl"; done
  # Separate processes with regular routing files: batch b from the checkpoint of step b - 1, seed 5 + b - 1.
  fresh "$TMP/sep"
  for b in 1 2 3; do
    moe-rollout -m "$TMP/sep" "${R3_ROLL[@]}" --seed $((4 + b)) --routing-out "$TMP/r$b.zst" "$TMP/p$b.jsonl" \
      | moe-reward "${R3_REWARD[@]}" \
      | moe-train-step -m "$TMP/sep" "${R3_TRAIN[@]}" --routing "$TMP/r$b.zst" -
    echo "routing stream of batch $b: $(stat -c %s "$TMP/r$b.zst") bytes"
    [ "$(stat -c %s "$TMP/r$b.zst")" -gt 65536 ]
  done
  # One process each, R a FIFO. Batch b + 1 is written once checkpoint b is in place (2 updates per step),
  # so moe-rollout samples it from that checkpoint, as the separate runs do.
  fresh "$TMP/fol"
  mkfifo "$TMP/R" "$TMP/prompts"
  timeout 300 moe-rollout --follow -m "$TMP/fol" "${R3_ROLL[@]}" --seed 5 --routing-out "$TMP/R" - < "$TMP/prompts" 2> "$TMP/err1" \
    | timeout 300 moe-reward --follow "${R3_REWARD[@]}" 2> "$TMP/err2" \
    | timeout 300 moe-train-step --follow -m "$TMP/fol" "${R3_TRAIN[@]}" --routing "$TMP/R" - 2> "$TMP/err3" &
  pid=$!
  exec 8> "$TMP/prompts"
  for b in 1 2 3; do
    { cat "$TMP/p$b.jsonl"; echo; } >&8
    for i in $(seq 1 1200); do
      grep -qs "\"global_step\": $((2 * b))," "$TMP/fol/trainer_state.json" && break
      sleep 0.1
    done
  done
  exec 8>&-
  wait "$pid"
  cat "$TMP/err1" "$TMP/err2" "$TMP/err3"
  grep -q '"train_steps": 3' "$TMP/fol/trainer_state.json"
  [ -p "$TMP/R" ]  # still a FIFO: never renamed over or truncated
  cmp "$TMP/sep/model.safetensors" "$TMP/fol/model.safetensors"
  cmp "$TMP/sep/optimizer.safetensors" "$TMP/fol/optimizer.safetensors"
  # Not a no-op: the steps moved the weights.
  ! cmp -s "$W/m0/model.safetensors" "$TMP/fol/model.safetensors"
  [ -c /dev/null ]
}

# Two batches sampled from m0 by one moe-rollout --follow: their routing streams r1 and r2 (r12 = both), the
# rewarded rollout streams rew12 (both) and rew1 (batch 1 alone, the same bytes as rew12's first stream).
TWO_REWARD=(--task countdown --overlong 6,4 -q)
make_two_batches() {
  # The same argv both times (the headers record it): one dir each, the same relative --routing-out.
  mkdir "$TMP/a" "$TMP/b"
  (cd "$TMP/a" && { cat "$W/p.jsonl"; echo; } \
    | moe-rollout --follow -m "$W/m0" -G 2 --max-new-tokens 6 --seed 1 --routing-out r.zst -q - \
    | moe-reward --follow "${TWO_REWARD[@]}" > rew.zst)
  (cd "$TMP/b" && { cat "$W/p.jsonl"; echo; cat "$W/p2.jsonl"; } \
    | moe-rollout --follow -m "$W/m0" -G 2 --max-new-tokens 6 --seed 1 --routing-out r.zst -q - \
    | moe-reward --follow "${TWO_REWARD[@]}" > rew.zst)
  mv "$TMP/a/r.zst" "$TMP/r1.zst"; mv "$TMP/a/rew.zst" "$TMP/rew1.zst"
  mv "$TMP/b/r.zst" "$TMP/r12.zst"; mv "$TMP/b/rew.zst" "$TMP/rew12.zst"
  n=$(stat -c %s "$TMP/r1.zst")
  cmp <(head -c "$n" "$TMP/r12.zst") "$TMP/r1.zst"
  cmp <(head -c "$(stat -c %s "$TMP/rew1.zst")" "$TMP/rew12.zst") "$TMP/rew1.zst"
  tail -c +$((n + 1)) "$TMP/r12.zst" > "$TMP/r2.zst"
  [ "$(moe-route-dump show --jsonl "$TMP/r2.zst" | wc -l)" -eq 6 ]
}

@test "moe-train-step --follow --routing: a routing stream of another batch, missing, truncated or extra is an error naming the stream" {
  make_two_batches
  train() { moe-train-step --follow -m "$TMP/fol" --router replay-rollout --seed 3 -q --routing "$1" - < "$TMP/rew12.zst"; }
  # The right pairing trains both streams.
  fresh "$TMP/fol"
  run train "$TMP/r12.zst"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q '"train_steps": 2' "$TMP/fol/trainer_state.json"
  cp -r "$TMP/fol" "$TMP/two"
  # Batch 2's routing first: stream 1 is refused, the checkpoint untouched.
  fresh "$TMP/fol"
  cat "$TMP/r2.zst" "$TMP/r1.zst" > "$TMP/swapped.zst"
  run train "$TMP/swapped.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"error: stream 1: $TMP/swapped.zst: the routing stream belongs to another batch than the rollouts (routing header batch 2, rollout header batch 1)"* ]]
  diff <(cd "$W/m0" && sha256sum -- *) <(cd "$TMP/fol" && sha256sum -- *)
  # Batch 1's routing twice: stream 2 is refused, the first step's checkpoint kept.
  fresh "$TMP/one"
  moe-train-step --follow -m "$TMP/one" --router replay-rollout --seed 3 -q --routing "$TMP/r1.zst" - < "$TMP/rew1.zst"
  fresh "$TMP/fol"
  cat "$TMP/r1.zst" "$TMP/r1.zst" > "$TMP/twice.zst"
  run train "$TMP/twice.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"error: stream 2: $TMP/twice.zst: the routing stream belongs to another batch than the rollouts (routing header batch 1, rollout header batch 2)"* ]]
  cmp "$TMP/one/model.safetensors" "$TMP/fol/model.safetensors"
  # Missing: one routing stream for two rollout streams.
  fresh "$TMP/fol"
  run train "$TMP/r1.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"error: stream 2: $TMP/r1.zst: ended after 1 routing streams: none for this rollout stream"* ]]
  cmp "$TMP/one/model.safetensors" "$TMP/fol/model.safetensors"
  # Truncated second routing stream.
  fresh "$TMP/fol"
  { cat "$TMP/r1.zst"; head -c $(($(stat -c %s "$TMP/r2.zst") - 5)) "$TMP/r2.zst"; } > "$TMP/cut.zst"
  run train "$TMP/cut.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"error: stream 2: $TMP/cut.zst"*"truncated"* ]]
  cmp "$TMP/one/model.safetensors" "$TMP/fol/model.safetensors"
  # One routing stream more than rollout streams: both steps are written, then the error.
  fresh "$TMP/fol"
  cat "$TMP/r12.zst" "$TMP/r1.zst" > "$TMP/extra.zst"
  run train "$TMP/extra.zst"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"error: stream 3: $TMP/extra.zst: holds more routing streams than the input holds rollout streams (2)"* ]]
  cmp "$TMP/two/model.safetensors" "$TMP/fol/model.safetensors"
}

# The R3 loop of the manual (prompts through a pipe, R a FIFO) on two prompt batches, with moe-reward's extra
# options in $1 and moe-train-step's in the rest, under timeout, which ends the whole pipeline if it hangs
# (status 124). Prints the stages' exit statuses; the stages' stderr go to $TMP/err1, err2 and err3.
r3_fifo_loop() {
  fresh "$TMP/m"
  mkfifo "$TMP/R"
  { cat "$W/p.jsonl"; echo; cat "$W/p2.jsonl"; } > "$TMP/prompts.jsonl"
  run timeout 60 bash -c 'd=$1 reward=$2; shift 2
    cat "$d/prompts.jsonl" \
      | moe-rollout --follow -m "$d/m" -G 2 --max-new-tokens 6 --seed 1 -q --routing-out "$d/R" - 2> "$d/err1" \
      | moe-reward --follow --task countdown -q $reward 2> "$d/err2" \
      | moe-train-step --follow -m "$d/m" "$@" --routing "$d/R" - 2> "$d/err3"
    s=("${PIPESTATUS[@]}"); echo "statuses ${s[*]}"; exit "${s[3]}"' _ "$TMP" "$@"
  echo "$output"
  cat "$TMP/err1" "$TMP/err2" "$TMP/err3"
  [ "$status" -ne 124 ]  # no hang
  [ -p "$TMP/R" ]  # still a FIFO
}

@test "R3 FIFO loop: a trainer that exits at once (usage error) ends the pipeline instead of hanging it" {
  r3_fifo_loop "" --algo nope --router replay-rollout
  [ "$status" -eq 2 ]
  grep -q "algo" "$TMP/err3"
  # moe-reward ends quietly (a broken pipe); moe-rollout too, or with the FIFO error when its first batch was out.
  [[ "$output" == *"statuses "?" "[01]" 0 2" ]]
  [ ! -s "$TMP/err2" ]
}

@test "R3 FIFO loop: a trainer that fails on stream 1 before it opens R ends the pipeline, moe-rollout with an error" {
  # Every group of a random model's countdown rewards is uniform (all 0): the first rewarded stream is empty, and
  # the trainer fails on it after moe-reward has written it, while moe-reward waits for stream 2.
  r3_fifo_loop --drop-uniform-groups --algo grpo --router replay-rollout --seed 3 -q
  [ "$status" -eq 1 ]
  grep -q "error: stream 1: <stdin>: no records to train on" "$TMP/err3"
  [[ "$output" == *"statuses 0 1 0 1" ]]
  grep -q "moe-rollout: error: $TMP/R: no reader opened the FIFO, and the reader of <stdout> has gone away" "$TMP/err1"
  [ ! -s "$TMP/err2" ]
  cmp "$W/m0/model.safetensors" "$TMP/m/model.safetensors"
}

@test "moe-reward --follow: waiting for the next stream ends quietly once the reader of its output has gone" {
  moe-reward --follow --task keep -q < "$W/rew.zst" > "$TMP/one.zst"
  mkfifo "$TMP/in"
  exec 8<> "$TMP/in"  # a writer that stays: after stream 1 moe-reward waits for more input
  cat "$W/rew.zst" >&8
  # The reader takes stream 1 and exits.
  run timeout 60 bash -c 'moe-reward --follow --task keep -q < "$1/in" 2> "$1/err" | head -c "$2" > "$1/got.zst"
    echo "statuses ${PIPESTATUS[*]}"' _ "$TMP" "$(stat -c %s "$TMP/one.zst")"
  exec 8>&-
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$output" = "statuses 0 0" ]
  [ ! -s "$TMP/err" ]
  cmp "$TMP/one.zst" "$TMP/got.zst"
}

@test "moe-rollout --follow: waiting for the next prompt batch ends quietly once the reader of its output has gone" {
  mkfifo "$TMP/in"
  exec 8<> "$TMP/in"  # a writer that never writes: moe-rollout waits for its first batch
  run timeout 60 bash -c 'moe-rollout --follow -m "$2" -G 2 --max-new-tokens 6 -q - < "$1/in" 2> "$1/err" | true
    echo "statuses ${PIPESTATUS[*]}"' _ "$TMP" "$W/m0"
  exec 8>&-
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$output" = "statuses 0 0" ]
  [ ! -s "$TMP/err" ]
}
