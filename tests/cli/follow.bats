#!/usr/bin/env bats
# Many RL steps without a new process: `moe-train-step --follow` over concatenated rollout streams equals
# one moe-train-step per stream, byte for byte; a bad stream N keeps the N - 1 checkpoints; checkpoint N is
# written before stream N + 1 is read (an RL loop's next rollouts may need it); with --save-every N, after
# every Nth stream, the last one, and before an input error ends the run.

load common

setup_file() {
  load common
  setup_train_fixture
  # A second rewarded stream: other prompts, another seed.
  moe-data countdown -n 3 --seed 4 > "$W/p2.jsonl"
  moe-rollout -m "$W/m0" -G 2 --max-new-tokens 6 --seed 2 -q "$W/p2.jsonl" > "$W/roll2.zst"
  moe_fake_reward "$W/roll2.zst" | moe-reward --task keep -q > "$W/rew2.zst"
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

fresh() { rm -rf "$1"; cp -r "$W/m0" "$1"; }

# $1 without its last 7 bytes (a stream cut inside its trailer) into $2.
truncated() { head -c $(($(stat -c %s "$1") - 7)) "$1" > "$2"; }

# sha256 of every file of dir $1, by name.
digests() { (cd "$1" && sha256sum -- *); }

@test "--follow over two concatenated streams equals two separate steps, file by file" {
  fresh "$TMP/sep"
  moe-train-step -q -m "$TMP/sep" --seed 3 "$W/rew.zst"
  moe-train-step -q -m "$TMP/sep" --seed 3 "$W/rew2.zst"
  fresh "$TMP/fol"
  run bash -c "cat '$W/rew.zst' '$W/rew2.zst' | moe-train-step -q --follow -m '$TMP/fol' --seed 3 -"
  echo "$output"
  [ "$status" -eq 0 ]
  diff <(digests "$TMP/sep") <(digests "$TMP/fol")
  grep -q '"global_step": 4' "$TMP/fol/trainer_state.json"  # 2 streams x 2 mini-batches
  grep -q '"train_steps": 2' "$TMP/fol/trainer_state.json"
  # Not a no-op: one step alone gives another checkpoint.
  fresh "$TMP/one"
  moe-train-step -q -m "$TMP/one" --seed 3 "$W/rew.zst"
  ! diff -q <(digests "$TMP/one") <(digests "$TMP/fol") >/dev/null
}

@test "--follow: a truncated second stream keeps the first checkpoint and names stream 2" {
  fresh "$TMP/one"
  moe-train-step -q -m "$TMP/one" --seed 3 "$W/rew.zst"
  truncated "$W/rew2.zst" "$TMP/cut.zst"
  fresh "$TMP/fol"
  run bash -c "cat '$W/rew.zst' '$TMP/cut.zst' | moe-train-step -q --follow -m '$TMP/fol' --seed 3 -"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-train-step: error: stream 2: <stdin>"*"truncated"* ]]
  diff <(digests "$TMP/one") <(digests "$TMP/fol")
}

@test "--follow: a bad first stream changes nothing; trailing garbage after a trailer is an error" {
  fresh "$TMP/fol"
  cp -r "$TMP/fol" "$TMP/orig"
  run bash -c "printf 'not a stream' | moe-train-step -q --follow -m '$TMP/fol' -"
  [ "$status" -eq 1 ]
  [[ "$output" == *"stream 1: <stdin>: not a moekit stream"* ]]
  diff <(digests "$TMP/orig") <(digests "$TMP/fol")
  run bash -c "{ cat '$W/rew.zst'; printf 'junk'; } | moe-train-step -q --follow -m '$TMP/fol' --seed 3 -"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"stream 2: <stdin>"*"neither the end of the input nor a zstd frame"* ]]
  # The first stream's checkpoint was written.
  fresh "$TMP/one"
  moe-train-step -q -m "$TMP/one" --seed 3 "$W/rew.zst"
  diff <(digests "$TMP/one") <(digests "$TMP/fol")
}

@test "--follow writes checkpoint 1 before it reads stream 2 (through a FIFO held open)" {
  fresh "$TMP/fol"
  mkfifo "$TMP/fifo"
  moe-train-step -q --follow -m "$TMP/fol" --seed 3 - < "$TMP/fifo" 2> "$TMP/err" &
  pid=$!
  exec 8> "$TMP/fifo"
  cat "$W/rew.zst" >&8
  # Stream 2 is not written yet: the first checkpoint must appear anyway.
  for i in $(seq 1 600); do
    grep -qs '"global_step": 2' "$TMP/fol/trainer_state.json" && break
    sleep 0.1
  done
  grep -q '"global_step": 2' "$TMP/fol/trainer_state.json"
  # The lock is held between streams: a second writer fails at once.
  run moe-train-step -q -m "$TMP/fol" "$W/rew2.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"lock"* ]]
  cat "$W/rew2.zst" >&8
  exec 8>&-
  wait "$pid"
  fresh "$TMP/sep"
  moe-train-step -q -m "$TMP/sep" --seed 3 "$W/rew.zst"
  moe-train-step -q -m "$TMP/sep" --seed 3 "$W/rew2.zst"
  diff <(digests "$TMP/sep") <(digests "$TMP/fol")
}

@test "--follow: usage errors" {
  fresh "$TMP/fol"
  run moe-train-step --follow -m "$TMP/fol" --routing-out "$TMP/x.zst" "$W/rew.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--follow does not take --routing-out"* ]]
  run moe-train-step --follow -m "$TMP/fol" --algo sft --routing "$W/r.zst" "$W/rew.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--routing applies to RL algorithms"* ]]
  run moe-train-step --follow --save-every 0 -m "$TMP/fol" "$W/rew.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--save-every must be >= 1"* ]]
  run moe-train-step --save-every 2 -m "$TMP/fol" "$W/rew.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--save-every needs --follow"* ]]
}

@test "--follow --save-every 2: the checkpoint after stream 2 and after the last, the same as one step per stream" {
  fresh "$TMP/sep"
  for s in rew rew2 rew; do moe-train-step -q -m "$TMP/sep" --seed 3 "$W/$s.zst"; done
  fresh "$TMP/fol"
  run bash -c "cat '$W/rew.zst' '$W/rew2.zst' '$W/rew.zst' | moe-train-step --follow --save-every 2 -m '$TMP/fol' --seed 3 --metrics '$TMP/m.jsonl' -"
  echo "$output"
  [ "$status" -eq 0 ]
  diff <(digests "$TMP/sep") <(digests "$TMP/fol")
  grep -q '"train_steps": 3' "$TMP/fol/trainer_state.json"
  # Each step's summary says whether its checkpoint was written; the last one's is written at the end.
  [ "$(grep '"kind":"summary"' "$TMP/m.jsonl" | grep -o '"saved":[a-z]*' | tr '\n' ' ')" = '"saved":false "saved":true "saved":false ' ]
  [[ "$output" == *"checkpoint of step 6 written (1 stream(s) since the last one"* ]]
}

@test "--follow --save-every 3: an input error in stream 3 first writes the checkpoint of streams 1 and 2" {
  fresh "$TMP/sep"
  for s in rew rew2; do moe-train-step -q -m "$TMP/sep" --seed 3 "$W/$s.zst"; done
  truncated "$W/rew.zst" "$TMP/cut.zst"
  fresh "$TMP/fol"
  run bash -c "cat '$W/rew.zst' '$W/rew2.zst' '$TMP/cut.zst' | moe-train-step -q --follow --save-every 3 -m '$TMP/fol' --seed 3 -"
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"stream 3: <stdin>"*"truncated"* ]]
  diff <(digests "$TMP/sep") <(digests "$TMP/fol")
}

@test "moe-reward --follow: one rewarded stream per input stream, as separate runs give" {
  moe-reward --follow --task countdown -q < "$W/roll.zst" > "$TMP/r1.zst"
  moe-reward --follow --task countdown -q < "$W/roll2.zst" > "$TMP/r2.zst"
  cat "$W/roll.zst" "$W/roll2.zst" | moe-reward --follow --task countdown -q > "$TMP/both.zst"
  cat "$TMP/r1.zst" "$TMP/r2.zst" | cmp - "$TMP/both.zst"
  # Without --follow a second stream is trailing data.
  run bash -c "cat '$W/roll.zst' '$W/roll2.zst' | moe-reward --task countdown -q > /dev/null"
  [ "$status" -eq 1 ]
  [[ "$output" == *"trailing data"* ]]
  # A truncated second stream: the first is written whole, the error names stream 2.
  size=$(stat -c %s "$W/roll2.zst")
  run bash -c "cat '$W/roll.zst' <(head -c $((size / 2)) '$W/roll2.zst') | moe-reward --follow --task countdown -q > '$TMP/part.zst'"
  [ "$status" -eq 1 ]
  [[ "$output" == *"stream 2: <stdin>"* ]]
  cmp <(head -c "$(stat -c %s "$TMP/r1.zst")" "$TMP/part.zst") "$TMP/r1.zst"
  # The whole loop: reward and train on two streams in one process each.
  fresh "$TMP/fol"
  cat "$W/roll.zst" "$W/roll2.zst" | moe-reward --follow --task countdown -q \
    | moe-train-step -q --follow -m "$TMP/fol" -
  grep -q '"global_step": 4' "$TMP/fol/trainer_state.json"
  [ -c /dev/null ]
}
