#!/usr/bin/env bats
# Malformed and hostile inputs through the real tools: deep payloads, over-long prompts, huge and invalid
# JSON lines, 64-bit countdown payloads, a flipped header bit, a corrupt zstd frame. Each is exit 1 with a
# message naming the file and the line or offset, a short echo, and no temporary left behind.

load common

setup_file() {
  load common
  setup_common
  export W="$BATS_FILE_TMPDIR"
  moe-init --preset tiny -o "$W/m" --seed 1 -q
}

setup() {
  setup_common
  W="$BATS_FILE_TMPDIR"
}

no_temporaries() { [ -z "$(ls -a "$1" | grep 'tmp-' || true)" ]; }

@test "a task payload nested 70,000 levels deep: exit 1 naming file and line, nothing left behind" {
  { echo '{"prompt": "1 2 3=6|"}'
    printf '{"prompt": "1 2 3=6|", "x": '; head -c 70000 /dev/zero | tr '\0' '['; head -c 70000 /dev/zero | tr '\0' ']'; echo '}'; } > "$TMP/deep.jsonl"
  for tool in "moe-rollout -m $W/m -o $TMP/out.zst" "moe-eval -m $W/m --task countdown --data"; do
    run $tool "$TMP/deep.jsonl"
    echo "$tool: $status $output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$TMP/deep.jsonl:2: JSON nested deeper than 64 levels"* ]]
  done
  no_temporaries "$TMP"
  # 64 levels in the line are 64 in the payload, one more under "task" in a record: refused with the reason.
  printf '{"prompt": "1 2 3=6|", "x": %s%s}\n' "$(printf '[%.0s' $(seq 63))" "$(printf ']%.0s' $(seq 63))" > "$TMP/d64.jsonl"
  run moe-rollout -m "$W/m" -o "$TMP/out.zst" "$TMP/d64.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/d64.jsonl:1: the task payload nests 64 levels deep; a rollout record holds 63"* ]]
  # 63 levels: written, and read back by moe-reward.
  printf '{"prompt": "1 2 3=6|", "x": %s%s}\n' "$(printf '[%.0s' $(seq 62))" "$(printf ']%.0s' $(seq 62))" > "$TMP/d63.jsonl"
  moe-rollout -m "$W/m" --max-new-tokens 2 -q "$TMP/d63.jsonl" | moe-route-dump show --jsonl - > "$TMP/d63.out"
  [ "$(wc -l < "$TMP/d63.out")" -eq 1 ]
}

@test "a prompt longer than max_position_embeddings: exit 1 naming file and line, no tensor allocated" {
  { echo '{"prompt": "1 2 3=6|"}'; printf '{"prompt": "%s"}\n' "$(head -c 600 /dev/zero | tr '\0' '1')"; } > "$TMP/long.jsonl"
  run moe-rollout -m "$W/m" -o "$TMP/out.zst" "$TMP/long.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/long.jsonl:2: prompt of 600 tokens is longer than the model's max_position_embeddings (512)"* ]]
  run moe-eval -m "$W/m" --task countdown --data "$TMP/long.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/long.jsonl:2: prompt of 600 tokens"* ]]
  no_temporaries "$TMP"
}

@test "invalid UTF-8 and a 100 MB malformed line: file, line and offset, an echo of a few dozen bytes" {
  { echo '{"prompt": "1 2 3=6|"}'; printf '{"prompt": "caf\xe9\xff"}\n'; } > "$TMP/utf8.jsonl"
  run moe-rollout -m "$W/m" -o "$TMP/out.zst" "$TMP/utf8.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/utf8.jsonl:2: malformed JSON at byte 16 (offset 39)"* ]]
  [[ "$output" == *"UTF-8"* ]]
  [[ "$output" == *'\xe9'* ]]
  ! printf '%s' "$output" | grep -q $'\xe9'
  { echo '{"prompt": "1 2 3=6|"}'; printf '{"prompt": "x", "junk": "'; head -c 100000000 /dev/zero | tr '\0' 'a'; echo 'x}'; } > "$TMP/huge.jsonl"
  run moe-rollout -m "$W/m" -o "$TMP/out.zst" "$TMP/huge.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/huge.jsonl:2: malformed JSON at byte 100000027 (offset 100000050)"* ]]
  [ "${#output}" -lt 600 ]
  no_temporaries "$TMP"
}

@test "countdown payloads outside 64 bits: exit 1, never graded modulo 2^64" {
  printf '{"group":0,"prompt":"1 2=18446744073709551615|","response":"1 - 2<eos>","numbers":[1,2],"target":18446744073709551615}\n' \
    | moe_gen_rollouts > "$TMP/wrap.zst"
  run moe-reward --task countdown -q "$TMP/wrap.zst" -o "$TMP/out.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"18446744073709551615 is outside the signed 64-bit integer range"* ]]
  [ ! -e "$TMP/out.zst" ]
  no_temporaries "$TMP"
}

@test "one flipped bit in a stream header (temperature 1 -> 3) is a checksum error" {
  moe-data countdown -n 2 --seed 1 > "$TMP/p.jsonl"
  moe-rollout -m "$W/m" --max-new-tokens 3 --temperature 1 -q "$TMP/p.jsonl" -o "$TMP/r.zst"
  zstd -dcq "$TMP/r.zst" > "$TMP/r.raw"
  # The meta key "temperature" (str11: ab, then 11 bytes) and its value, the fixint 01 (msgpack packs 1.0 as
  # an integer): make it 03. (The argv of the producer holds "--temperature" too, without the ab byte.)
  at=$(LC_ALL=C grep -abo $'\xabtemperature' "$TMP/r.raw" | head -1 | cut -d: -f1)
  [ -n "$at" ]
  [ "$(od -An -tx1 -j $((at + 12)) -N1 "$TMP/r.raw" | tr -d ' ')" = 01 ]
  printf '\x03' | dd of="$TMP/r.raw" bs=1 seek=$((at + 12)) conv=notrunc status=none
  zstd -qc "$TMP/r.raw" > "$TMP/flip.zst"
  run moe-route-dump show --header "$TMP/flip.zst"
  [[ "$output" == *'"temperature":3'* ]]  # the header alone reads: the damage shows at the trailer
  run moe-reward --task countdown -q "$TMP/flip.zst" -o "$TMP/out.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/flip.zst: offset "*"checksum mismatch"*"header or records corrupted"* ]]
}

@test "corrupt zstd data is reported at the compressed offset of its frame" {
  moe-data countdown -n 40 --seed 2 > "$TMP/p.jsonl"
  moe-rollout -m "$W/m" --max-new-tokens 4 -q "$TMP/p.jsonl" -o "$TMP/r.zst"
  zstd -dcq "$TMP/r.zst" > "$TMP/r.raw"
  half=$(( $(stat -c %s "$TMP/r.raw") / 2 ))
  head -c "$half" "$TMP/r.raw" | zstd -qc > "$TMP/f1.zst"
  tail -c +"$((half + 1))" "$TMP/r.raw" | zstd -qc > "$TMP/f2.zst"
  f1=$(stat -c %s "$TMP/f1.zst")
  # The second frame's first block header (after a 4-byte magic, descriptor, window byte): reserved type 3.
  fhd=$(od -An -tu1 -j 4 -N1 "$TMP/f2.zst" | tr -d ' ')
  did=(0 1 2 4); single=$(( (fhd >> 5) & 1 )); fcsf=$(( fhd >> 6 ))
  fcs=(0 2 4 8); [ "$single" -eq 1 ] && fcs[0]=1
  hdr=$(( 5 + (1 - single) + ${did[$((fhd & 3))]} + ${fcs[$fcsf]} ))
  b=$(od -An -tu1 -j "$hdr" -N1 "$TMP/f2.zst" | tr -d ' ')
  printf "\\x$(printf %02x $((b | 6)))" | dd of="$TMP/f2.zst" bs=1 seek="$hdr" conv=notrunc status=none
  cat "$TMP/f1.zst" "$TMP/f2.zst" > "$TMP/two.zst"
  run moe-route-dump show --jsonl "$TMP/two.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"$TMP/two.zst: compressed offset $f1: corrupt zstd data in the frame starting there"* ]]
}

@test "config.json, trainer_state.json, tokenizer.json nested 100,000 levels deep: one line naming the file, exit 1" {
  deep() { printf '{"vocab_size": 98, "x": '; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'; echo '}'; }
  one_error() {  # $1: the file the message must name
    echo "$output" | head -3
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "${lines[0]}" == *"error: $1: JSON nested deeper than 64 levels (the limit of every moekit reader)" ]]
  }
  deep > "$TMP/deep.json"
  run moe-init -o "$TMP/new" --config "$TMP/deep.json" -q
  one_error "$TMP/deep.json"
  [ ! -e "$TMP/new" ]
  no_temporaries "$TMP"

  echo '{"prompt": "1 2 3=6|"}' > "$TMP/p.jsonl"
  cp -r "$W/m" "$TMP/cfg"
  deep > "$TMP/cfg/config.json"
  run moe-rollout -m "$TMP/cfg" -o "$TMP/out.zst" -q "$TMP/p.jsonl"
  one_error "$TMP/cfg/config.json"
  [ ! -e "$TMP/out.zst" ]

  cp -r "$W/m" "$TMP/tok"
  deep > "$TMP/tok/tokenizer.json"
  run moe-data tokenize -q -m "$TMP/tok" "$TMP/p.jsonl"
  one_error "$TMP/tok/tokenizer.json"

  moe-rollout -m "$W/m" -G 2 --max-new-tokens 4 --seed 1 -q "$TMP/p.jsonl" | moe_fake_reward | moe-reward --task keep -q > "$TMP/rew.zst"
  cp -r "$W/m" "$TMP/st"
  deep > "$TMP/st/trainer_state.json"
  run moe-train-step -m "$TMP/st" --algo grpo --seed 5 --threads 1 -q "$TMP/rew.zst"
  one_error "$TMP/st/trainer_state.json"
  no_temporaries "$TMP"
}
