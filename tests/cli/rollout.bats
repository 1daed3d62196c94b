#!/usr/bin/env bats
# moe-init and moe-rollout through real pipes: sampling, re-scoring, determinism, bad input.

setup() {
  load common
  setup_common
  moe-init --preset tiny -o "$TMP/m" --seed 1 -q
  cat > "$TMP/p.jsonl" <<'JSONL'
{"prompt": "3 7 12=57|", "numbers": [3, 7, 12], "target": 57}
{"prompt": "1 2=3|", "target": 3}

{"prompt": "20 5 4 1=99|", "target": 99, "id": "x"}
JSONL
}

count_records() { moe-route-dump show --jsonl "$1" | wc -l; }

@test "--help, --version and usage errors" {
  run moe-rollout --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--routing-out"* ]]
  run moe-rollout --version
  [ "$status" -eq 0 ]
  [[ "$output" == *moekit* ]]
  run moe-rollout "$TMP/p.jsonl"  # no -m
  [ "$status" -eq 2 ]
  [[ "$output" == *"--help"* ]]
  run moe-rollout -m "$TMP/m" --score -G 3 "$TMP/p.jsonl"
  [ "$status" -eq 2 ]
  [[ "$output" == *"does not apply to --score"* ]]
  run moe-rollout -m "$TMP/m" --bogus
  [ "$status" -eq 2 ]
}

@test "samples G responses per prompt with routing for every forwarded position" {
  run moe-rollout -q -m "$TMP/m" "$TMP/p.jsonl" -G 4 --max-new-tokens 12 --seed 3 \
    --routing-out "$TMP/r.zst" -o "$TMP/ro.zst"
  [ "$status" -eq 0 ]
  [ "$(count_records "$TMP/ro.zst")" -eq 12 ]
  [ "$(count_records "$TMP/r.zst")" -eq 12 ]
  moe-route-dump show --jsonl "$TMP/ro.zst" > "$TMP/ro.jsonl"
  moe-route-dump show --jsonl "$TMP/r.zst" > "$TMP/r.jsonl"
  run python3 - "$TMP/ro.jsonl" "$TMP/r.jsonl" <<'PY'
import json, sys
ro = [json.loads(l) for l in open(sys.argv[1])]
r = {x["id"]: x for x in map(json.loads, open(sys.argv[2]))}
assert [x["id"] for x in ro] == list(range(12)), [x["id"] for x in ro]
assert [x["group"] for x in ro] == [0]*4 + [1]*4 + [2]*4
assert [x["sample"] for x in ro] == [0, 1, 2, 3] * 3
for x in ro:
    n = len(x["prompt_tokens"]) + len(x["response_tokens"]) - 1
    assert r[x["id"]]["n_pos"] == n and r[x["id"]]["first_pos"] == 0, (x["id"], n)
    assert len(x["logprobs"]) == len(x["response_tokens"]) <= 12
    assert all(lp <= 0 for lp in x["logprobs"])
    assert x["finish_reason"] in ("eos", "length")
    assert (x["finish_reason"] == "length") == (len(x["response_tokens"]) == 12 and x["response_tokens"][-1] != 1)
assert ro[0]["task"] == {"numbers": [3, 7, 12], "target": 57}
assert ro[8]["task"] == {"target": 99, "id": "x"}
assert ro[0]["prompt_text"] == "3 7 12=57|"
PY
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "same seed gives byte-identical streams; another seed differs" {
  # The header records argv, so both runs use the very same command line, in two directories.
  for i in 1 2; do
    mkdir "$TMP/run$i"
    (cd "$TMP/run$i" && moe-rollout -q -m ../m ../p.jsonl -G 3 --max-new-tokens 10 --seed 5 --routing-out r.zst -o o.zst)
  done
  cmp "$TMP/run1/o.zst" "$TMP/run2/o.zst"
  cmp "$TMP/run1/r.zst" "$TMP/run2/r.zst"
  (cd "$TMP/run1" && moe-rollout -q -m ../m ../p.jsonl -G 3 --max-new-tokens 10 --seed 6 --routing-out r.zst -o o6.zst)
  ! cmp -s <(moe-route-dump show --jsonl "$TMP/run1/o.zst") <(moe-route-dump show --jsonl "$TMP/run1/o6.zst")
}

@test "a prompt's result does not depend on the batch size" {
  moe-rollout -q -m "$TMP/m" "$TMP/p.jsonl" -G 2 --max-new-tokens 10 --seed 5 --batch-size 1 -o "$TMP/a.zst"
  moe-rollout -q -m "$TMP/m" "$TMP/p.jsonl" -G 2 --max-new-tokens 10 --seed 5 --batch-size 64 -o "$TMP/b.zst"
  run python3 - <(moe-route-dump show --jsonl "$TMP/a.zst") <(moe-route-dump show --jsonl "$TMP/b.zst") <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 6
for x, y in zip(a, b):
    assert x["response_tokens"] == y["response_tokens"], (x["id"], x["response_tokens"], y["response_tokens"])
    assert max(abs(p - q) for p, q in zip(x["logprobs"], y["logprobs"])) < 1e-4
PY
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "--score re-scores a pipe: fp32 twice agrees exactly, previous log-probs are kept" {
  run bash -c "moe-rollout -q -m '$TMP/m' '$TMP/p.jsonl' -G 4 --max-new-tokens 12 --routing-out '$TMP/r.zst' \
    | moe-rollout -q -m '$TMP/m' --score - --routing-out '$TMP/s.zst' -o '$TMP/scored.zst'"
  [ "$status" -eq 0 ]
  run moe-route-dump diff --json "$TMP/r.zst" "$TMP/s.zst"
  [ "$status" -eq 0 ]
  python3 -c "import json,sys; j=json.loads(sys.argv[1]); assert j['token_mismatch']==0 and j['overall']['mismatch']==0 and j['tokens_compared']>0, j" "$output"
  run python3 - <(moe-route-dump show --jsonl "$TMP/scored.zst") <<'PY'
import json, sys
for x in map(json.loads, open(sys.argv[1])):
    assert len(x["prev_logprobs"]) == len(x["logprobs"]) == len(x["response_tokens"])
    assert max(abs(p - q) for p, q in zip(x["prev_logprobs"], x["logprobs"])) < 1e-4
PY
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "bf16 rollout against an fp32 re-score: diff runs and reports the disagreement" {
  moe-data countdown -n 16 --seed 2 > "$TMP/c.jsonl"
  moe-rollout -q -m "$TMP/m" "$TMP/c.jsonl" -G 4 --max-new-tokens 16 --dtype bf16 --routing-out "$TMP/rb.zst" -o "$TMP/b.zst"
  moe-rollout -q -m "$TMP/m" --score "$TMP/b.zst" --routing-out "$TMP/rf.zst" -o /dev/null
  run moe-route-dump diff "$TMP/rb.zst" "$TMP/rf.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *"tokens with >= 1 differing layer"* ]]
}

@test "bad input: clear errors, exit 1, no output file left" {
  printf '{"prompt": "1 2=3|"}\nnot json\n' > "$TMP/bad.jsonl"
  run moe-rollout -m "$TMP/m" "$TMP/bad.jsonl" -o "$TMP/out.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"bad.jsonl:2: malformed JSON"* ]]
  [ ! -e "$TMP/out.zst" ]
  echo '{"text": "1"}' > "$TMP/nokey.jsonl"
  run moe-rollout -m "$TMP/m" "$TMP/nokey.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *'nokey.jsonl:1: no "prompt" key'* ]]
  run moe-rollout -m "$TMP/m" --prompt-key text "$TMP/nokey.jsonl" -o /dev/null
  [ "$status" -eq 0 ]
  printf '{"prompt": "caf\xc3\xa9"}\n' > "$TMP/vocab.jsonl"
  run moe-rollout -m "$TMP/m" "$TMP/vocab.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"vocab.jsonl:1"*"not in the vocabulary"* ]]
  run moe-rollout -m "$TMP/nowhere" "$TMP/p.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"nowhere"* ]]
  mkdir "$TMP/m2" && cp "$TMP/m/config.json" "$TMP/m2/"
  run moe-rollout -m "$TMP/m2" "$TMP/p.jsonl"
  [ "$status" -eq 1 ]
  # --score of something that is not a rollout stream
  run moe-rollout -m "$TMP/m" --score "$TMP/p.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"p.jsonl"* ]]
  for f in "$DATA"/bad/*.zst; do
    run moe-rollout -m "$TMP/m" --score "$f" -o "$TMP/out.zst"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$(basename "$f")"* ]]
    [ ! -e "$TMP/out.zst" ]
  done
}

@test "weights that disagree with config.json are an input error" {
  mkdir "$TMP/m3"
  cp "$TMP/m/tokenizer.json" "$TMP/m/model.safetensors" "$TMP/m3/"
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['hidden_size']=128; c['head_dim']=32; json.dump(c, open(sys.argv[2],'w'))" \
    "$TMP/m/config.json" "$TMP/m3/config.json"
  run moe-rollout -m "$TMP/m3" "$TMP/p.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"shape"* ]]
}

@test "closed reader ends quietly; a full disk is an error" {
  run bash -c "moe-rollout -q -m '$TMP/m' '$TMP/p.jsonl' -G 64 --max-new-tokens 30 | head -c 100 > /dev/null; echo \${PIPESTATUS[0]}"
  [ "$output" = "0" ]
  run bash -c "moe-rollout -q -m '$TMP/m' '$TMP/p.jsonl' > /dev/full"
  [ "$status" -eq 1 ]
  [[ "$output" == *"No space left"* ]]
}

@test "a binary stream is not written to a terminal" {
  command -v script >/dev/null || skip "script(1) not installed"
  run script -qec "moe-rollout -m '$TMP/m' '$TMP/p.jsonl'" /dev/null
  [ "$status" -eq 2 ]
  [[ "$output" == *"refusing to write a binary rollout stream to a terminal"* ]]
}

@test "a device this libtorch lacks is a one-line error, not a backtrace" {
  run moe-rollout -m "$TMP/m" "$TMP/p.jsonl" --device cuda -o "$TMP/o.zst"
  if [ "$status" -eq 0 ]; then skip "this libtorch has CUDA and a device"; fi
  [ "$status" -eq 1 ]
  [[ "$output" == *"cuda"* ]]
  [[ "$output" != *"frame #"* ]]
  [ "$(wc -l <<<"$output")" -eq 1 ]
}
