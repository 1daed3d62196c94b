#!/usr/bin/env bats
# Output paths as a hostile (or just careless) user gives them: devices, FIFOs, symlinks, /dev/stdout.
# Atomic temp + rename is only for regular files and new paths; anything else is written in place.

load common

setup() { setup_common; }

cd_line() {  # group response -> one countdown input line for 3 7 12 = 33
  printf '{"group":%s,"prompt":"3 7 12=33|","response":"%s","numbers":[3,7,12],"target":33}\n' "$1" "$2"
}

@test "-o /dev/null leaves a character device behind" {
  [ "$(id -u)" -eq 0 ] || skip "needs root: only root could rename over /dev/null, which is what this guards against"
  { cd_line 0 '(3 * 7) + 12<eos>'; cd_line 0 '3 7 12<eos>'; } | moe_gen_rollouts > "$TMP/in.zst"
  # A private null device (major 1, minor 3), so the test neither depends on nor risks the machine's /dev/null.
  mknod -m 666 "$TMP/null" c 1 3 || skip "mknod is not permitted here"
  before=$(stat -c '%F %t:%T %i' "$TMP/null")
  moe-reward --task countdown -q "$TMP/in.zst" -o "$TMP/null"
  moe-data countdown -n 3 --seed 1 -o "$TMP/null"
  [ -c "$TMP/null" ]
  [ "$(stat -c '%F %t:%T %i' "$TMP/null")" = "$before" ]
  [ -z "$(ls "$TMP" | grep 'null.tmp-' || true)" ]
  # The machine's /dev/null too, when it still is one (a tool of an older build may have replaced it).
  if [ -c /dev/null ]; then
    moe-data countdown -n 3 --seed 1 -o /dev/null
    [ -c /dev/null ]
  fi
}

@test "a FIFO target streams: the reader sees the records, the FIFO stays a FIFO" {
  { cd_line 0 '(3 * 7) + 12<eos>'; cd_line 0 '3 7 12<eos>'; } | moe_gen_rollouts > "$TMP/in.zst"
  mkfifo "$TMP/fifo"
  moe_gen_rollouts --to-jsonl --field reward "$TMP/fifo" > "$TMP/out" &
  reader=$!
  moe-reward --task countdown -q "$TMP/in.zst" -o "$TMP/fifo"
  wait "$reader"
  [ "$(cat "$TMP/out")" = "$(printf '1.0\n0.0')" ]
  [ -p "$TMP/fifo" ]
  [ -z "$(ls "$TMP" | grep tmp- || true)" ]
}

@test "-o /dev/stdout writes through to the pipe; a symlink keeps being a symlink" {
  moe-data countdown -n 3 --seed 1 -o /dev/stdout | wc -l > "$TMP/n"
  [ "$(cat "$TMP/n")" -eq 3 ]
  echo old > "$TMP/target"
  ln -s target "$TMP/link"
  moe-data countdown -n 2 --seed 1 -o "$TMP/link"
  [ -L "$TMP/link" ]
  [ "$(wc -l < "$TMP/target")" -eq 2 ]
  # A dangling symlink creates its target.
  ln -s made "$TMP/dangling"
  moe-data countdown -n 1 --seed 1 -o "$TMP/dangling"
  [ -L "$TMP/dangling" ]
  [ "$(wc -l < "$TMP/made")" -eq 1 ]
}

@test "a directory as -o is a clear error, exit 1" {
  run moe-data countdown -n 1 -o "$TMP"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP: is a directory"* ]]
}
