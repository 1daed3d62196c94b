#!/usr/bin/env bats
# A model directory as transformers' save_pretrained writes it (tests/fixtures/qwen3moe-hf: a random
# Qwen3-MoE with vocab 151936, the Qwen3 tokenizer, generation_config.json, chat_template.jinja), through
# every program with no hand-work; moe-data tokenize/detokenize; chat prompts, stop rules, checkpoint files.

load common

setup() {
  setup_common
  M="$TMP/qwen3moe-hf"
  tar -C "$TMP" -I zstd -xf "$SRC/tests/fixtures/qwen3moe-hf/model.tar.zst"
  export OMP_NUM_THREADS=1
}

records() { moe-route-dump show --jsonl "$1"; }

@test "done when: moe-data | moe-rollout --chat | moe-reward --task math | moe-train-step, then moe-eval" {
  moe-data countdown -n 4 --seed 1 \
    | moe-rollout -q -m "$M" --chat -G 2 --max-new-tokens 12 --seed 1 --routing-out "$TMP/routes.zst" \
    | moe-reward -q --task math --answer-key target \
    | moe-train-step -q -m "$M" --algo grpo --router replay-rollout --routing "$TMP/routes.zst" --metrics "$TMP/m.jsonl"
  [ "$(wc -l < "$TMP/m.jsonl")" -ge 1 ]
  # the updated dir keeps the files transformers wrote beside the weights
  for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
    cmp "$M/$f" <(tar -C "$TMP" -I zstd -xOf "$SRC/tests/fixtures/qwen3moe-hf/model.tar.zst" "qwen3moe-hf/$f")
  done
  printf '{"prompt": "What is 6*7? Put the answer in \\\\boxed{}.", "answer": "42"}\n{"messages": [{"role": "user", "content": "1+1?"}], "answer": 2}\n' > "$TMP/math.jsonl"
  run moe-eval -q -m "$M" --task math --data "$TMP/math.jsonl" --chat -k 2 --max-new-tokens 8 --json
  [ "$status" -eq 0 ]
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["overall"]["prompts"] == 2, r' "$output"
}

@test "--chat renders Qwen3's ChatML; --no-thinking adds the empty think block; every eos id stops" {
  echo '{"prompt": "Hello world", "answer": "1"}' > "$TMP/p.jsonl"
  moe-rollout -q -m "$M" --chat "$TMP/p.jsonl" -G 3 --max-new-tokens 40 --seed 2 -o "$TMP/a.zst"
  moe-rollout -q -m "$M" --no-thinking "$TMP/p.jsonl" --max-new-tokens 4 -o "$TMP/b.zst"
  run python3 - <(records "$TMP/a.zst") <(records "$TMP/b.zst") <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert a[0]["prompt_text"] == "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n", a[0]["prompt_text"]
# transformers' apply_chat_template ids (tests/fixtures/tokenizer/chat-qwen3.jsonl has the same prefix)
assert a[0]["prompt_tokens"][:3] == [151644, 872, 198] and a[0]["prompt_tokens"][-3:] == [151644, 77091, 198], a[0]["prompt_tokens"]
assert b[0]["prompt_text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), b[0]["prompt_text"]
for x in a + b:
    assert x["finish_reason"] in ("eos", "length"), x["finish_reason"]
    if x["finish_reason"] == "eos":
        assert x["response_tokens"][-1] in (151645, 151643)
    assert all(t < 151936 for t in x["response_tokens"])
PY
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "ids beyond the tokenizer (vocab 151936 > 151669 tokens) sample and decode to nothing" {
  # prompt_ids above the last token: accepted (they are model ids), decoded to no text
  echo '{"prompt_ids": [9707, 151700, 1879, 151935], "answer": "x"}' > "$TMP/ids.jsonl"
  moe-rollout -q -m "$M" "$TMP/ids.jsonl" --max-new-tokens 3 -o "$TMP/i.zst"
  run python3 -c 'import json,sys; x=json.loads(sys.stdin.readline()); assert x["prompt_text"] == "Hello world", x; assert "prompt_ids" not in x["task"]' < <(records "$TMP/i.zst")
  [ "$status" -eq 0 ]
  echo '{"prompt_ids": [151936]}' > "$TMP/big.jsonl"
  run moe-rollout -m "$M" "$TMP/big.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"big.jsonl:1: prompt_ids: 151936 is not a token id below vocab_size 151936"* ]]
}

@test "--stop ends a response at a string and cuts the text before it" {
  echo '{"prompt": "Hello", "answer": "1"}' > "$TMP/p.jsonl"
  moe-rollout -q -m "$M" --chat "$TMP/p.jsonl" -G 8 --max-new-tokens 30 --seed 5 -o "$TMP/free.zst"
  # a stop string: the letter or digit found in most responses after their first character (ties broken
  # by code point, so that every run picks the same one)
  stop=$(records "$TMP/free.zst" | python3 -c '
import collections, json, sys
c = collections.Counter()
for l in sys.stdin:
    c.update(set(ch for ch in json.loads(l)["response_text"][1:] if ch.isalnum()))
print(min(c, key=lambda ch: (-c[ch], ch)))')
  [ -n "$stop" ]
  moe-rollout -q -m "$M" --chat "$TMP/p.jsonl" -G 8 --max-new-tokens 30 --seed 5 --stop "$stop" -o "$TMP/stop.zst"
  run python3 - "$stop" <(records "$TMP/free.zst") <(records "$TMP/stop.zst") <<'PY'
import json, sys
stop = sys.argv[1]
free = [json.loads(l) for l in open(sys.argv[2])]
cut = [json.loads(l) for l in open(sys.argv[3])]
# Until the first response stops, both runs decode the same batch, so every response is the same token for
# token. After it, the batch is smaller than in the free run: matrix products over fewer rows may round
# differently and a later token may differ (no batch invariance is promised, as in vLLM).
first = min(len(c["response_tokens"]) for c in cut if c["finish_reason"] == "stop")
prefixes = 0
for f, c in zip(free, cut):
    assert stop not in c["response_text"], c
    assert f["response_tokens"][:first] == c["response_tokens"][:first], (f, c)
    if c["finish_reason"] == "stop" and len(c["response_tokens"]) == first:
        # stopped at that step: the stopped response and its text are a prefix of the free one
        assert f["response_text"].startswith(c["response_text"]), (f, c)
        prefixes += 1
assert prefixes >= 1
PY
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "prompts: messages, a clear error for a non-ChatML template, empty prompts rejected everywhere" {
  echo '{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]}' > "$TMP/msg.jsonl"
  moe-rollout -q -m "$M" "$TMP/msg.jsonl" --max-new-tokens 2 -o "$TMP/m.zst"
  run python3 -c 'import json,sys; x=json.loads(sys.stdin.readline()); assert x["prompt_text"] == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", x' < <(records "$TMP/m.zst")
  [ "$status" -eq 0 ]
  printf '%s' '{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}' > "$M/chat_template.jinja"
  run moe-rollout -m "$M" "$TMP/msg.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"msg.jsonl:1: the chat template is not ChatML"*"prompt_ids"* ]]
  for line in '{"prompt": ""}' '{"messages": []}' '{"prompt_ids": []}'; do
    echo "$line" > "$TMP/empty.jsonl"
    for prog in "moe-rollout -m $M $TMP/empty.jsonl" "moe-eval -m $M --task math --data $TMP/empty.jsonl"; do
      run $prog
      [ "$status" -eq 1 ]
      [[ "$output" == *"empty.jsonl:1: empty prompt"* ]]
    done
  done
  echo '{"prompt": "a", "prompt_ids": [1]}' > "$TMP/two.jsonl"
  run moe-rollout -m "$M" "$TMP/two.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"two.jsonl:1: give one of"* ]]
}

@test "moe-data tokenize / detokenize with the Qwen3 tokenizer" {
  printf '{"prompt": "Hello world", "k": 1}\n\n{"prompt": "<|im_start|>user\\n你好<|im_end|>"}\n' > "$TMP/t.jsonl"
  run moe-data tokenize -q -m "$M" "$TMP/t.jsonl"
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = '{"prompt":"Hello world","k":1,"ids":[9707,1879]}' ]
  [ "${lines[1]}" = '{"prompt":"<|im_start|>user\n你好<|im_end|>","ids":[151644,872,198,108386,151645]}' ]
  moe-data tokenize -q -m "$M" "$TMP/t.jsonl" | moe-data detokenize -q -m "$M" --skip-special > "$TMP/d.jsonl"
  run python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; assert [x["text"] for x in r] == ["Hello world", "user\n你好"], r' "$TMP/d.jsonl"
  [ "$status" -eq 0 ]
  run moe-data tokenize -q -m "$M" --key prompt --count "$TMP/t.jsonl"
  [ "${lines[0]}" = '{"prompt":"Hello world","k":1,"n_tokens":2}' ]
  printf '{"text": "x"}\n' > "$TMP/nokey.jsonl"
  run moe-data tokenize -m "$M" "$TMP/nokey.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *'nokey.jsonl:1: no "prompt" key'* ]]
  printf '{"prompt": "ok"}\n{"prompt": \n' > "$TMP/bad.jsonl"
  run moe-data tokenize -m "$M" "$TMP/bad.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"bad.jsonl:2: malformed JSON"* ]]
  printf '{"ids": [1, -2]}\n' > "$TMP/neg.jsonl"
  run moe-data detokenize -m "$M" "$TMP/neg.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"neg.jsonl:1"*"-2 is not a token id"* ]]
  run moe-data tokenize -m "$TMP/nowhere" "$TMP/t.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"nowhere/tokenizer.json"* ]]
  run moe-data tokenize "$TMP/t.jsonl"
  [ "$status" -eq 2 ]
  moe-data tokenize -q -m "$M" "$TMP/t.jsonl" | head -c 1 > /dev/null
}

@test "checkpoints: unused tensors are an error naming them; moe-train-step shards above --max-shard-size" {
  cp -r "$M" "$TMP/bias"
  python3 - "$TMP/bias" <<'PY'
import json, struct, sys
d = sys.argv[1]
# add a q_proj bias that attention_bias false does not use (a real checkpoint/config mismatch)
raw = open(d + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
end = max(v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__")
hdr["model.layers.0.self_attn.q_proj.bias"] = {"dtype": "BF16", "shape": [8], "data_offsets": [end, end + 16]}
data = data[:end] + b"\0" * 16
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(d + "/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
  echo '{"prompt": "x"}' > "$TMP/p.jsonl"
  run moe-rollout -m "$TMP/bias" "$TMP/p.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"not use"*"model.layers.0.self_attn.q_proj.bias"* ]]

  echo "hello" > "$M/README.md"
  moe-data countdown -n 2 --seed 3 | moe-rollout -q -m "$M" --chat -G 2 --max-new-tokens 4 \
    | moe-reward -q --task math --answer-key target \
    | moe-train-step -q -m "$M" --algo grpo -o "$TMP/out" --max-shard-size 1MB
  ls "$TMP/out"
  [ -e "$TMP/out/model.safetensors.index.json" ]
  [ ! -e "$TMP/out/model.safetensors" ]
  [ "$(ls "$TMP/out" | grep -c '^model-0000[0-9]-of-0000[0-9].safetensors$')" -ge 2 ]
  cmp "$M/README.md" "$TMP/out/README.md"
  cmp "$M/tokenizer.json" "$TMP/out/tokenizer.json"
  # the sharded dir is a model dir like any other; replacing it in place with one file drops the shards
  moe-data countdown -n 2 --seed 4 | moe-rollout -q -m "$TMP/out" -G 2 --max-new-tokens 4 \
    | moe-reward -q --task math --answer-key target | moe-train-step -q -m "$TMP/out" --algo grpo
  [ -e "$TMP/out/model.safetensors" ]
  [ "$(ls "$TMP/out" | grep -c '^model-')" -eq 0 ]
  [ ! -e "$TMP/out/model.safetensors.index.json" ]
  cmp "$M/README.md" "$TMP/out/README.md"
  run moe-train-step -m "$M" --algo grpo --max-shard-size 5XB < /dev/null
  [ "$status" -eq 2 ]
}

@test "moe-init --config with a vocabulary larger than the char tokenizer samples; ids without a token give no text" {
  moe-init -q --preset tiny -o "$TMP/t"
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['vocab_size']=4000; json.dump(c, open(sys.argv[2],'w'))" \
    "$TMP/t/config.json" "$TMP/big.json"
  moe-init -q --config "$TMP/big.json" -o "$TMP/b"
  moe-data countdown -n 4 --seed 2 | moe-rollout -q -m "$TMP/b" -G 4 --max-new-tokens 16 -o "$TMP/r.zst"
  run python3 - <(records "$TMP/r.zst") <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
beyond = sum(t >= 98 for r in recs for t in r["response_tokens"])
assert beyond > 0, "no id beyond the 98 tokens was sampled"
for r in recs:
    known = [t for t in r["response_tokens"] if 2 <= t < 98]   # "\n" and printable ASCII: one character each
    assert len(r["response_text"]) == len(known), (r["response_text"], r["response_tokens"])
PY
  echo "$output"
  [ "$status" -eq 0 ]
}
