#!/usr/bin/env bats
# moe-reward through real pipes: rewards, advantages, pass-through, bad input, exit codes.
# Rollout streams come from tests/support/moe_gen_rollouts (JSONL -> stream, stream -> JSONL).

load common

setup() { setup_common; }

# The float on line $2 of file $1 is within 1e-6 of $3.
near() {
  awk -v want="$3" -v n="$2" 'NR == n { d = $1 - want; if (d < 0) d = -d; ok = (d <= 1e-6) } END { exit ok ? 0 : 1 }' "$1"
}

cd_line() {  # group response -> one countdown input line for 3 7 12 = 33
  printf '{"group":%s,"prompt":"3 7 12=33|","response":"%s","numbers":[3,7,12],"target":33}\n' "$1" "$2"
}

@test "countdown: the worked example, rewards [1, 0] -> grpo +-0.70710578, drgrpo +-0.5, rloo +-1" {
  { cd_line 0 '(3 * 7) + 12<eos>'; cd_line 0 '3 7 12<eos>'; } > "$TMP/in.jsonl"
  moe_gen_rollouts "$TMP/in.jsonl" > "$TMP/in.zst"
  moe-reward --task countdown -q "$TMP/in.zst" | moe_gen_rollouts --to-jsonl --field reward > "$TMP/r"
  [ "$(cat "$TMP/r")" = "$(printf '1.0\n0.0')" ]
  moe-reward --task countdown -q < "$TMP/in.zst" | moe_gen_rollouts --to-jsonl --field advantage > "$TMP/a"
  near "$TMP/a" 1 0.70710578
  near "$TMP/a" 2 -0.70710578
  moe-reward --task countdown --adv drgrpo -q "$TMP/in.zst" -o "$TMP/d.zst"
  moe_gen_rollouts --to-jsonl --field advantage "$TMP/d.zst" > "$TMP/d"
  near "$TMP/d" 1 0.5
  near "$TMP/d" 2 -0.5
  moe-reward --task countdown --adv rloo -q "$TMP/in.zst" | moe_gen_rollouts --to-jsonl --field advantage > "$TMP/l"
  near "$TMP/l" 1 1
  near "$TMP/l" 2 -1
}

@test "countdown: format reward, reasons, and the summary on stderr" {
  { cd_line 0 '(3 * 7) + 12<eos>'; cd_line 0 '(3 + 7) + 12<eos>'; cd_line 0 'the answer is 33<eos>'
    cd_line 1 '12 + 3 * 7'; cd_line 1 '((((3))))*7+12'; } > "$TMP/in.jsonl"
  moe_gen_rollouts "$TMP/in.jsonl" > "$TMP/in.zst"
  run bash -c 'moe-reward --task countdown --format-reward 0.25 "$0" 2>"$0.err" | moe_gen_rollouts --to-jsonl --field reward' "$TMP/in.zst"
  [ "$status" -eq 0 ]
  [ "$output" = "$(printf '1.0\n0.25\n0.0\n1.0\n1.0')" ]
  grep -q 'moe-reward: 5 records in 2 groups, mean reward 0.6500, accuracy 60.00% (3/5), uniform groups 50.00% (1/2)' "$TMP/in.zst.err"
  moe-reward --task countdown -q "$TMP/in.zst" | moe_gen_rollouts --to-jsonl --field reward_info > "$TMP/info"
  grep -q '"reason":"value"' "$TMP/info"
  grep -q '"reason":"syntax"' "$TMP/info"
  run moe-reward --task countdown -q "$TMP/in.zst" -o "$TMP/out.zst"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
}

@test "--drop-uniform-groups drops all-equal groups and counts them" {
  { cd_line 0 '(3 * 7) + 12'; cd_line 0 '3'; cd_line 1 '3 + 7'; cd_line 1 '3 + 12'
    cd_line 2 'x'; cd_line 2 'y'; cd_line 3 '12 + 7 * 3'; } > "$TMP/in.jsonl"
  moe_gen_rollouts "$TMP/in.jsonl" > "$TMP/in.zst"
  moe-reward --task countdown --drop-uniform-groups "$TMP/in.zst" 2> "$TMP/err" | moe_gen_rollouts --to-jsonl --field group > "$TMP/g"
  [ "$(cat "$TMP/g")" = "$(printf '0\n0\n3')" ]
  grep -q 'uniform groups 50.00% (2/4), dropped 4 records in 2 groups, wrote 3 records in 2 groups' "$TMP/err"
}

@test "--overlong adds the DAPO length penalty" {
  # L_MAX 20, L_C 4: 17 tokens -> -0.25, 30 tokens -> -1
  printf '%s\n' '{"group":0,"response":"(3 * 7) + 12","tokens":17,"numbers":[3,7,12],"target":33}' \
                '{"group":0,"response":"(3 * 7) + 12","tokens":30,"numbers":[3,7,12],"target":33}' \
                '{"group":0,"response":"(3 * 7) + 12","tokens":16,"numbers":[3,7,12],"target":33}' \
    | moe_gen_rollouts | moe-reward --task countdown --overlong 20,4 -q | moe_gen_rollouts --to-jsonl --field reward > "$TMP/r"
  near "$TMP/r" 1 0.75
  near "$TMP/r" 2 0
  near "$TMP/r" 3 1
}

@test "math: boxed answers against the payload answer, --answer-key" {
  printf '%s\n' '{"group":0,"prompt":"q","response":"so $\\boxed{\\dfrac{1}{2}}$","answer":"0.5"}' \
                '{"group":0,"prompt":"q","response":"The answer is 1/3.","answer":"0.5"}' \
                '{"group":0,"prompt":"q","response":"I do not know","answer":"0.5"}' \
                '{"group":1,"prompt":"q","response":"\\boxed{1,000}","answer":1000}' > "$TMP/m.jsonl"
  moe_gen_rollouts "$TMP/m.jsonl" | moe-reward --task math -q | moe_gen_rollouts --to-jsonl --field reward > "$TMP/r"
  [ "$(cat "$TMP/r")" = "$(printf '1.0\n0.1\n0.0\n1.0')" ]
  sed 's/"answer"/"gold"/' "$TMP/m.jsonl" | moe_gen_rollouts > "$TMP/g.zst"
  moe-reward --task math --answer-key gold -q "$TMP/g.zst" | moe_gen_rollouts --to-jsonl --field reward > "$TMP/r2"
  cmp "$TMP/r" "$TMP/r2"
  run moe-reward --task math -q "$TMP/g.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-reward: error: $TMP/g.zst: offset "*": record id 0: task payload has no 'answer'"* ]]
}

@test "records pass through: task payload, unknown keys, header meta and producer" {
  printf '%s\n' '{"group":4,"id":17,"prompt":"3 7 12=33|","response":"(3 * 7) + 12","numbers":[3,7,12],"target":33,"source":"unit","x_future":{"a":[1,2]}}' \
    | moe_gen_rollouts > "$TMP/in.zst"
  moe-reward --task countdown -q "$TMP/in.zst" -o "$TMP/out.zst"
  moe_gen_rollouts --to-jsonl "$TMP/out.zst" > "$TMP/out.jsonl"
  grep -q '"id":17,"group":4,"sample":0,"prompt":"3 7 12=33|","response":"(3 \* 7) + 12"' "$TMP/out.jsonl"
  grep -q '"task":{"numbers":\[3,7,12\],"source":"unit","target":33}' "$TMP/out.jsonl"
  grep -q '"x_future":{"a":\[1,2\]}' "$TMP/out.jsonl"
  moe_gen_rollouts --to-jsonl --header "$TMP/out.zst" | head -n 1 > "$TMP/h"
  grep -q '"program":"moe-reward"' "$TMP/h"
  grep -q '"reward":{' "$TMP/h"
  grep -q '"task":"countdown"' "$TMP/h"
  grep -q '"input_producer":{"program":"moe_gen_rollouts"' "$TMP/h"
  grep -q '"model_digest":"test"' "$TMP/h"
  # scoring twice gives the same records
  moe-reward --task countdown -q "$TMP/out.zst" | moe_gen_rollouts --to-jsonl > "$TMP/again.jsonl"
  cmp "$TMP/out.jsonl" "$TMP/again.jsonl"
}

@test "--task keep uses existing rewards and rejects NaN" {
  printf '%s\n' '{"group":0,"response":"a","reward":2.0}' '{"group":0,"response":"b","reward":0.0}' \
    | moe_gen_rollouts | moe-reward --task keep --adv drgrpo -q | moe_gen_rollouts --to-jsonl --field advantage > "$TMP/a"
  near "$TMP/a" 1 1
  near "$TMP/a" 2 -1
  printf '%s\n' '{"group":0,"response":"a","reward":1.0}' '{"group":0,"response":"b","reward":"nan"}' \
    | moe_gen_rollouts > "$TMP/nan.zst"
  run moe-reward --task keep "$TMP/nan.zst" -o "$TMP/out.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/nan.zst: offset "*": record id 1: record has a non-finite reward"* ]]
  [ ! -e "$TMP/out.zst" ]
}

@test "bad input: missing payload, non-adjacent group, wrong kind, truncated stream, garbage" {
  { cd_line 0 '1'; printf '%s\n' '{"group":1,"response":"1","numbers":[1]}'; } | moe_gen_rollouts > "$TMP/nt.zst"
  run bash -c 'moe-reward --task countdown "$0" > "$0.out"' "$TMP/nt.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-reward: error: $TMP/nt.zst: offset "*": record id 1: task payload has no 'numbers' and 'target'"* ]]
  # what was written has no trailer: a downstream reader sees the truncation
  run moe_gen_rollouts --to-jsonl "$TMP/nt.zst.out"
  [ "$status" -ne 0 ]

  { cd_line 0 '1'; cd_line 1 '1'; cd_line 0 '1'; } | moe_gen_rollouts > "$TMP/adj.zst"
  run moe-reward --task countdown -q "$TMP/adj.zst" -o "$TMP/adj.out"
  [ "$status" -eq 1 ]
  [[ "$output" == *"record id 2: group 0 seen again after another group"* ]]

  moe_gen_rollouts --kind routing < /dev/null > "$TMP/routing.zst"
  run moe-reward --task countdown -q "$TMP/routing.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-reward: error: $TMP/routing.zst"* ]]

  { cd_line 0 '1'; cd_line 0 '2'; } | moe_gen_rollouts --no-trailer > "$TMP/trunc.zst"
  run moe-reward --task countdown -q "$TMP/trunc.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-reward: error: $TMP/trunc.zst"* ]]

  head -c 100000 /dev/urandom > "$TMP/garbage"
  run moe-reward --task countdown -q "$TMP/garbage"
  [ "$status" -eq 1 ]
  run bash -c 'moe-reward --task countdown -q < /dev/null'
  [ "$status" -eq 1 ]
  run moe-reward --task countdown -q "$TMP/does-not-exist"
  [ "$status" -eq 1 ]
  [[ "$output" == *"does-not-exist"* ]]
}

@test "hostile responses are scored, not crashed on" {
  deep=$(printf '(%.0s' $(seq 5000))
  big=$(head -c 300000 /dev/zero | tr '\0' '9')
  { cd_line 0 "$deep"; cd_line 0 "$big + 1"; cd_line 0 '12 / (7 - 7) + 3'; cd_line 0 '(3 * 7) + 12'; } > "$TMP/h.jsonl"
  moe_gen_rollouts "$TMP/h.jsonl" | moe-reward --task countdown -q | moe_gen_rollouts --to-jsonl --field reward_info > "$TMP/i"
  grep -q '"reason":"too_deep"' "$TMP/i"
  grep -q '"reason":"numbers"' "$TMP/i"
  [ "$(grep -c '"correct":true' "$TMP/i")" -eq 1 ]
}

@test "moe-reward: closed pipe exits 0, full disk exits 1, usage errors exit 2" {
  moe-data countdown -n 3000 --seed 1 --solutions -q > "$TMP/s.jsonl"
  moe_gen_rollouts --response-key solution "$TMP/s.jsonl" > "$TMP/big.zst"
  run bash -c 'moe-reward --task countdown -q "$0" | head -c 10 > /dev/null; echo "${PIPESTATUS[0]}"' "$TMP/big.zst"
  [ "$output" = "0" ]
  run bash -c 'moe-reward --task countdown -q "$0" > /dev/full' "$TMP/big.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"moe-reward: error:"* ]]
  run moe-reward "$TMP/big.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--task is required"* ]]
  run moe-reward --task chess "$TMP/big.zst"
  [ "$status" -eq 2 ]
  run moe-reward --task countdown --adv ppo "$TMP/big.zst"
  [ "$status" -eq 2 ]
  run moe-reward --task countdown --overlong 10,20 "$TMP/big.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--overlong"* ]]
  run moe-reward --task countdown --overlong 10 "$TMP/big.zst"
  [ "$status" -eq 2 ]
  run moe-reward --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--drop-uniform-groups"* ]]
}
