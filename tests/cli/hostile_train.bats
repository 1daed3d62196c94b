#!/usr/bin/env bats
# moe-train-step under concurrent use and kill -9: one step at a time per model dir (flock, --wait), staged
# outputs that land together or not at all, and crash consistency: after a kill at a random point of an
# in-place step the dir holds exactly the old or the new checkpoint, and the next step removes what the
# killed one left.

load common

setup_file() {
  load common
  setup_train_fixture
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

fresh() { rm -rf "$1" "$1".tmp-* "$1".lock; cp -r "$W/m0" "$1"; }
# sha256 of every file of dir $1, one line per file, names relative.
manifest() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum); }
train_steps() { jq -r .train_steps "$1/trainer_state.json"; }
step() { moe-train-step -m "$1" --algo grpo --seed 5 --threads 1 -q "${@:2}" "$W/rew.zst"; }

@test "two steps on one dir with --wait: both land, no update is lost" {
  fresh "$TMP/m"
  step "$TMP/m" --wait 2> "$TMP/a.err" &
  a=$!
  step "$TMP/m" --wait 2> "$TMP/b.err" &
  b=$!
  wait "$a"
  wait "$b"
  [ "$(train_steps "$TMP/m")" -eq 2 ]
  [ "$(jq -r .global_step "$TMP/m/trainer_state.json")" -eq 4 ]  # 2 mini-batches per step
  [ -z "$(ls -d "$TMP"/m.tmp-* 2>/dev/null)" ]
}

@test "a step on a locked dir fails at once naming the holder's pid; --wait waits for it" {
  command -v flock >/dev/null || skip "flock(1) (util-linux) is not installed"
  fresh "$TMP/m"
  cp -r "$TMP/m" "$TMP/orig"
  printf 'moekit lock pid %-20s\n' 424242 > "$TMP/m.lock"
  # flock -o: the flock process itself holds the lock (not the sleep), so killing it releases the lock.
  flock -o "$TMP/m.lock" sleep 120 >/dev/null 2>&1 3>&- &
  holder=$!
  until ! flock -n "$TMP/m.lock" true; do sleep 0.1; done  # held
  run step "$TMP/m"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/m: locked by another moe-train-step (pid 424242, lock file $TMP/m.lock); use --wait to wait for it"* ]]
  [ "$(manifest "$TMP/m")" = "$(manifest "$TMP/orig")" ]
  step "$TMP/m" --wait 2> "$TMP/wait.err" &
  waiter=$!
  until grep -q "waiting for the lock" "$TMP/wait.err" 2>/dev/null; do sleep 0.1; done
  [ ! -e "$TMP/m/trainer_state.json" ]  # still waiting: nothing written
  sleeper=$(ps -o pid= --ppid "$holder" || true)
  kill "$holder" $sleeper
  wait "$waiter"
  grep -q "waiting for the lock held by pid 424242" "$TMP/wait.err"
  [ "$(train_steps "$TMP/m")" -eq 1 ]
  # A file of that name that is not a moekit lock is refused and left as it was.
  fresh "$TMP/n"
  echo "notes" > "$TMP/n.lock"
  run step "$TMP/n"
  [ "$status" -eq 1 ]
  [[ "$output" == *"is not a moekit lock file"* ]]
  [ "$(cat "$TMP/n.lock")" = notes ]
}

@test "outputs are staged: a bad --routing-out or a full disk exits 1 with nothing replaced" {
  fresh "$TMP/m"
  echo '{"old": 1}' > "$TMP/metrics.jsonl"
  before=$(manifest "$TMP/m")
  run step "$TMP/m" --routing-out "$TMP/no/such/dir/r.zst" --metrics "$TMP/metrics.jsonl"
  [ "$status" -eq 1 ]
  [ "$(manifest "$TMP/m")" = "$before" ]
  [ "$(cat "$TMP/metrics.jsonl")" = '{"old": 1}' ]
  if [ -w /dev/full ]; then
    run step "$TMP/m" --routing-out /dev/full --metrics "$TMP/metrics.jsonl"
    [ "$status" -eq 1 ]
    [[ "$output" == *"/dev/full: write error"* ]]
    [ -c /dev/full ]
    [ "$(manifest "$TMP/m")" = "$before" ]
    [ "$(cat "$TMP/metrics.jsonl")" = '{"old": 1}' ]
  fi
  # All land: checkpoint, routing stream, metrics lines appended after the old one.
  run step "$TMP/m" --routing-out "$TMP/r.zst" --metrics "$TMP/metrics.jsonl"
  [ "$status" -eq 0 ]
  [ "$(train_steps "$TMP/m")" -eq 1 ]
  moe-route-dump stats "$TMP/r.zst" > /dev/null
  [ "$(head -1 "$TMP/metrics.jsonl")" = '{"old": 1}' ]
  [ "$(tail -1 "$TMP/metrics.jsonl" | jq -r .kind)" = summary ]
  [ -z "$(ls "$TMP" | grep 'tmp-' || true)" ]
}

@test "staging dirs of a killed step are removed by the next step and never loaded as a checkpoint" {
  fresh "$TMP/m"
  mkdir "$TMP/m.tmp-Ab12Cd"
  cp "$TMP/m/config.json" "$TMP/m.tmp-Ab12Cd/"
  run step "$TMP/m.tmp-Ab12Cd"
  [ "$status" -eq 1 ]
  [[ "$output" == *"staging directory left by an interrupted moe-train-step, not a checkpoint"* ]]
  run moe-train-step -m "$TMP/m" --algo grpo --seed 5 --threads 1 "$W/rew.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *"removed 1 staging dir(s) left by an interrupted step"* ]]
  [ ! -e "$TMP/m.tmp-Ab12Cd" ]
}

@test "kill -9 at seeded random points of in-place steps: old or new checkpoint exactly, no staging survives" {
  trials=${MOEKIT_CRASH_TRIALS:-24}
  fresh "$TMP/old"
  old=$(manifest "$TMP/old")
  # The new checkpoint: the same step uninterrupted (same seed and threads: byte-identical).
  fresh "$TMP/m"
  t0=$(date +%s%N)
  step "$TMP/m"
  t1=$(date +%s%N)
  new=$(manifest "$TMP/m")
  [ "$old" != "$new" ]
  span=$(( (t1 - t0) / 1000000 ))  # ms of one step on this machine now
  RANDOM=11
  n_old=0 n_new=0 n_staged=0
  for i in $(seq 1 "$trials"); do
    fresh "$TMP/m"
    moe-train-step -m "$TMP/m" --algo grpo --seed 5 --threads 1 -q "$W/rew.zst" &
    pid=$!  # the process itself (not a subshell), so kill -9 hits it
    if [ $((i % 3)) -eq 0 ]; then
      # A third of the kills at a random time of the whole step (reading, old pass, updates).
      delay=$(( RANDOM % (span + 1) ))
      sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    else
      # The others while the checkpoint is written and swapped: 0-60 ms after the staging dir appears.
      until compgen -G "$TMP/m.tmp-*" >/dev/null || ! kill -0 "$pid" 2>/dev/null; do sleep 0.002; done
      delay=$(( RANDOM % 61 ))
      sleep "0.$(printf '%03d' "$delay")"
    fi
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    got=$(manifest "$TMP/m")
    if [ "$got" = "$old" ]; then n_old=$((n_old + 1));
    elif [ "$got" = "$new" ]; then n_new=$((n_new + 1));
    else echo "trial $i (kill after $delay ms): neither the old nor the new checkpoint"; diff <(echo "$old") <(echo "$got") || true; return 1; fi
    if compgen -G "$TMP/m.tmp-*" >/dev/null; then
      n_staged=$((n_staged + 1))
      step "$TMP/m"
      ! compgen -G "$TMP/m.tmp-*" >/dev/null || { echo "trial $i: a staging dir survived the next step"; return 1; }
      [ "$(train_steps "$TMP/m")" -ge 1 ]
    fi
  done
  echo "# $trials kills over $span ms steps: $n_old old, $n_new new, $n_staged left staging dirs" >&3
  [ $((n_old + n_new)) -eq "$trials" ]
  [ "$n_old" -gt 0 ]
  [ "$n_staged" -gt 0 ]  # some kills did land while the checkpoint was being written
}
