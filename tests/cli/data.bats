#!/usr/bin/env bats
# moe-data through real pipes: determinism, splits, solutions checked by moe-reward, exit codes.

load common

setup() { setup_common; }

# Canonical form of each problem (sorted numbers, target), one per line.
canonical() {
  sed -n 's/.*"prompt":"\([^"]*\)=\([0-9]*\)|".*/\1 \2/p' "$1" |
    awk '{ t = $NF; $NF = ""; n = split($0, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { x = a[i]; a[i] = a[j]; a[j] = x }
           s = ""; for (i = 1; i <= n; i++) s = s a[i] " "; print s "=" t }'
}

@test "countdown: same seed gives the same bytes, another seed other problems" {
  moe-data countdown -n 500 --seed 7 --solutions > "$TMP/a.jsonl"
  moe-data countdown -n 500 --seed 7 --solutions -o "$TMP/b.jsonl"
  cmp "$TMP/a.jsonl" "$TMP/b.jsonl"
  moe-data countdown -n 500 --seed 8 --solutions > "$TMP/c.jsonl"
  ! cmp -s "$TMP/a.jsonl" "$TMP/c.jsonl"
  [ "$(wc -l < "$TMP/a.jsonl")" -eq 500 ]
}

@test "countdown: the first lines are pinned for seed 7 (a changed generator changes every dataset)" {
  run moe-data countdown -n 2 --seed 7 --solutions -q
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = '{"prompt":"16 11 19=8|","numbers":[16,11,19],"target":8,"solution":"(16 + 11) - 19"}' ]
  [ "${lines[1]}" = '{"prompt":"2 9 10=11|","numbers":[2,9,10],"target":11,"solution":"(2 * 10) - 9"}' ]
}

@test "countdown: prompt format, ranges and line fields" {
  moe-data countdown -n 300 --seed 3 > "$TMP/p.jsonl"
  # every line: prompt "a b c=T|", numbers in 1..20, target in 1..100, no solution without --solutions
  run grep -cE '^\{"prompt":"([1-9]|1[0-9]|20) ([1-9]|1[0-9]|20) ([1-9]|1[0-9]|20)=([1-9]|[1-9][0-9]|100)\|","numbers":\[[0-9]+,[0-9]+,[0-9]+\],"target":[0-9]+\}$' "$TMP/p.jsonl"
  [ "$output" -eq 300 ]
  moe-data countdown -n 50 --seed 3 --numbers 4 --max-number 9 --solutions > "$TMP/q.jsonl"
  run grep -cE '^\{"prompt":"[1-9] [1-9] [1-9] [1-9]=[0-9]+\|".*"solution":"\(\([1-9] . [1-9]\) . [1-9]\) . [1-9]"\}$' "$TMP/q.jsonl"
  [ "$output" -eq 50 ]
}

@test "countdown: train and test splits are disjoint, for any pair of seeds" {
  moe-data countdown -n 4000 --seed 1 > "$TMP/train.jsonl"
  moe-data countdown -n 400 --seed 2 --split test > "$TMP/test.jsonl"
  canonical "$TMP/train.jsonl" | sort -u > "$TMP/train.keys"
  canonical "$TMP/test.jsonl" | sort -u > "$TMP/test.keys"
  [ "$(wc -l < "$TMP/train.keys")" -gt 2000 ]
  [ "$(wc -l < "$TMP/test.keys")" -gt 200 ]
  run comm -12 "$TMP/train.keys" "$TMP/test.keys"
  [ -z "$output" ]
}

@test "countdown: --unique never repeats a problem" {
  moe-data countdown -n 1000 --seed 5 --split test --unique > "$TMP/u.jsonl"
  [ "$(canonical "$TMP/u.jsonl" | sort -u | wc -l)" -eq 1000 ]
  run moe-data countdown -n 100000 --seed 5 --split test --unique --max-number 4 -o "$TMP/none.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-data: error: countdown: no new problem"* ]]
  [ ! -e "$TMP/none.jsonl" ]
}

@test "countdown: every reference solution scores 1 in moe-reward" {
  moe-data countdown -n 400 --seed 11 --solutions > "$TMP/s.jsonl"
  moe-data countdown -n 100 --seed 11 --numbers 4 --solutions >> "$TMP/s.jsonl"
  moe_gen_rollouts --response-key solution "$TMP/s.jsonl" \
    | moe-reward --task countdown -q \
    | moe_gen_rollouts --to-jsonl --field reward > "$TMP/r.txt"
  [ "$(wc -l < "$TMP/r.txt")" -eq 500 ]
  [ "$(grep -cx '1.0' "$TMP/r.txt")" -eq 500 ]
}

@test "moe-data: usage errors exit 2, help and version exit 0" {
  run moe-data countdown
  [ "$status" -eq 2 ]
  [[ "$output" == *"--count is required"* ]]
  run moe-data countdown -n 3 --numbers 5
  [ "$status" -eq 2 ]
  run moe-data countdown -n 3 --split dev
  [ "$status" -eq 2 ]
  run moe-data
  [ "$status" -eq 2 ]
  run moe-data sudoku -n 3
  [ "$status" -eq 2 ]
  run moe-data countdown --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--solutions"* ]]
  run moe-data --version
  [ "$status" -eq 0 ]
  [[ "$output" == "moe-data (moekit) "* ]]
}

@test "moe-data: a closed pipe is a quiet success, a full disk an error" {
  run bash -c 'moe-data countdown -n 200000 --seed 1 | head -n 3'
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 3 ]
  run bash -c 'set -o pipefail; moe-data countdown -n 200000 --seed 1 2>"$0" | head -c 10 >/dev/null' "$TMP/err"
  [ "$status" -eq 0 ]
  [ ! -s "$TMP/err" ] || ! grep -q error "$TMP/err"
  run bash -c 'moe-data countdown -n 1000 --seed 1 > /dev/full'
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-data: error:"* ]]
}
