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

@test "moe-rollout --follow: blank lines split batches; --score and --routing-out are refused" {
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
  run moe-rollout --follow -m "$TMP/m" --routing-out "$TMP/r.zst" "$W/p.jsonl"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--follow does not take --routing-out"* ]]
}
