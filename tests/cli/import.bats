#!/usr/bin/env bats
# moe-data import (SGLang, vLLM, verl, plain JSONL) and moe-route-dump export: the hand-made engine
# fixtures of tests/data/engines (README there cites the engines' source), errors naming the record,
# the round trip moe-rollout -> export -> import, and import | moe-reward | moe-train-step (R3).

setup_file() {
  load common
  setup_common
  moe-init --config "$DATA/engines/config.json" -o "$BATS_FILE_TMPDIR/m" --seed 1 -q
}

setup() {
  load common
  setup_common
  M="$BATS_FILE_TMPDIR/m"
  E="$DATA/engines"
}

# One line per record: the rollout's fields and its routing's experts, as in expected.jsonl.
as_expected() {  # ROLLOUTS ROUTES
  moe-route-dump show --jsonl "$1" | jq -c '{id, group, sample, prompt_tokens, response_tokens, logprobs, finish_reason, task}' >"$TMP/ro.jsonl"
  moe-route-dump show --jsonl "$2" | jq -c '{experts}' >"$TMP/rt.jsonl"
  [ "$(wc -l <"$TMP/ro.jsonl")" -eq "$(wc -l <"$TMP/rt.jsonl")" ]
  paste -d '\n' "$TMP/ro.jsonl" "$TMP/rt.jsonl" | jq -c -n '[inputs] | range(0; length; 2) as $i | .[$i] + .[$i + 1]'
}

check_fixture() {  # FORMAT INPUT [extra import args...]
  local from=$1 input=$2
  shift 2
  run moe-data import --from "$from" -m "$M" --temperature 1 "$input" -o "$TMP/r.zst" --routing-out "$TMP/x.zst" "$@"
  echo "$output"
  [ "$status" -eq 0 ]
  as_expected "$TMP/r.zst" "$TMP/x.zst" | jq -S -c '.logprobs |= map(. * 1000000 | round)' >"$TMP/got.jsonl"
  jq -S -c '{id, group, sample, prompt_tokens, response_tokens, logprobs, finish_reason, task, experts} | .logprobs |= map(. * 1000000 | round)' \
    "$E/expected.jsonl" >"$TMP/want.jsonl"
  [ "$(wc -l <"$TMP/want.jsonl")" -eq 8 ]
  diff "$TMP/want.jsonl" "$TMP/got.jsonl"
  # The routing stream covers exactly the MoE layers 1-3, positions 0 .. T-2.
  moe-route-dump show --header "$TMP/x.zst" | jq -e '.meta.layer_ids == [1, 2, 3] and .meta.top_k == 2 and .meta.prob_dtype == "none"'
  moe-route-dump show --jsonl "$TMP/x.zst" | jq -e -s 'all(.first_pos == 0)'
  moe-route-dump show --header "$TMP/r.zst" | jq -e --arg f "$from" '.meta.source.engine == $f and .meta.temperature == 1'
}

train_on() {  # FORMAT INPUT: import | moe-reward | moe-train-step with R3
  rm -f "$TMP/routes.zst"
  moe-data import --from "$1" -m "$M" --temperature 1 "$2" --routing-out "$TMP/routes.zst" -q \
    | moe-reward --task countdown -q \
    | moe-train-step -m "$M" -o "$TMP/out-$1" --algo grpo --router replay-rollout --routing "$TMP/routes.zst" \
        --metrics "$TMP/m-$1.jsonl" --threads 1 -q
  tail -n 1 "$TMP/m-$1.jsonl" | jq -e '.tokens > 0 and (.["routing/token_mismatch"] | type == "number")'
  [ -f "$TMP/out-$1/model.safetensors" ]
}

@test "import --help names the formats; usage errors exit 2" {
  run moe-data import --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--from"*"--routing-out"*"--engine-layers"* ]]
  run moe-data import --from sglang -m "$M" "$E/sglang/generate.jsonl"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--temperature"* ]]
  run moe-data import --from tgi -m "$M" --temperature 1 "$E/sglang/generate.jsonl"
  [ "$status" -eq 2 ]
  run moe-route-dump export --to sglang "$TMP/none.zst"
  [ "$status" -eq 2 ]
  [[ "$output" == *"needs the model (-m DIR)"* ]]
}

@test "SGLang /generate responses import to the expected records and routing" {
  check_fixture sglang "$E/sglang/generate.jsonl"
}

@test "vLLM RequestOutput JSON imports to the expected records and routing" {
  check_fixture vllm "$E/vllm/request_outputs.jsonl"
}

@test "vLLM OpenAI completions (routed_experts as base64 .npy) import to the expected records" {
  check_fixture vllm "$E/vllm/completions.jsonl"
}

@test "verl's batch (safetensors + non-tensor JSONL) imports to the expected records" {
  check_fixture verl "$E/verl/batch.safetensors"
}

@test "plain JSONL (MoE-layer axis) imports to the expected records" {
  check_fixture jsonl "$E/jsonl/rollouts.jsonl"
}

@test "import | moe-reward | moe-train-step --router replay-rollout runs on every fixture" {
  train_on sglang "$E/sglang/generate.jsonl"
  train_on vllm "$E/vllm/request_outputs.jsonl"
  train_on vllm "$E/vllm/completions.jsonl"
  train_on verl "$E/verl/batch.safetensors"
  train_on jsonl "$E/jsonl/rollouts.jsonl"
}

@test "round trip: moe-rollout -> export --to jsonl|sglang|verl -> import gives the same streams" {
  moe-data countdown -n 3 --seed 5 -q \
    | moe-rollout -m "$M" -G 2 --max-new-tokens 12 --seed 5 --threads 1 --routing-out "$TMP/a-routes.zst" -o "$TMP/a.zst" -q
  moe-route-dump show --jsonl "$TMP/a.zst" >"$TMP/a.jsonl"
  moe-route-dump show --jsonl "$TMP/a-routes.zst" >"$TMP/a-routes.jsonl"
  # jsonl keeps everything, router probabilities included.
  moe-route-dump export --to jsonl --routing "$TMP/a-routes.zst" "$TMP/a.zst" -o "$TMP/a.export.jsonl" -q
  moe-data import --from jsonl -m "$M" --temperature "$(moe-route-dump show --header "$TMP/a.zst" | jq .meta.temperature)" \
    "$TMP/a.export.jsonl" -o "$TMP/b.zst" --routing-out "$TMP/b-routes.zst" -q
  moe-route-dump show --jsonl "$TMP/b.zst" | diff "$TMP/a.jsonl" -
  moe-route-dump show --jsonl "$TMP/b-routes.zst" | diff "$TMP/a-routes.jsonl" -
  run moe-route-dump diff --json "$TMP/a-routes.zst" "$TMP/b-routes.zst"
  [ "$(jq .token_mismatch <<<"$output")" = 0 ]
  [ "$(jq .only_a.positions <<<"$output")" = 0 ]
  # SGLang's and verl's formats hold expert ids only: the records are identical, the routing's experts too.
  for to in sglang verl; do
    rm -rf "$TMP/e-$to"
    moe-route-dump export --to "$to" -m "$M" --routing "$TMP/a-routes.zst" "$TMP/a.zst" -o "$TMP/e-$to" -q
    moe-data import --from "$to" -m "$M" --temperature 1 "$TMP/e-$to" -o "$TMP/c.zst" --routing-out "$TMP/c-routes.zst" -q
    moe-route-dump show --jsonl "$TMP/c.zst" | diff "$TMP/a.jsonl" -
    diff <(jq -c 'del(.probs)' "$TMP/a-routes.jsonl") <(moe-route-dump show --jsonl "$TMP/c-routes.zst")
  done
  # verl's directory holds the batch as numpy writes it
  [ -f "$TMP/e-verl/routed_experts.npy" ] && [ -f "$TMP/e-verl/non_tensor_batch.jsonl" ]
}

@test "errors name the input line and the record: expert out of range, duplicate, layers, top-k, length" {
  # jsonl line 3 = record 2
  awk 'NR == 3' "$E/jsonl/rollouts.jsonl" | jq -c '.routed_experts[4][1][0] = 8' >"$TMP/l3"
  { head -n 2 "$E/jsonl/rollouts.jsonl"; cat "$TMP/l3"; } >"$TMP/bad.jsonl"
  run moe-data import --from jsonl -m "$M" --temperature 1 "$TMP/bad.jsonl" --routing-out "$TMP/x.zst" -o "$TMP/r.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"bad.jsonl:3: record 2: position 4, layer 2: expert 8 out of range (the model has 8 experts)"* ]]
  [ ! -e "$TMP/r.zst" ] && [ ! -e "$TMP/x.zst" ]

  head -n 1 "$E/jsonl/rollouts.jsonl" | jq -c '.routed_experts[0][2][1] = .routed_experts[0][2][0]' >"$TMP/dup.jsonl"
  run moe-data import --from jsonl -m "$M" --temperature 1 "$TMP/dup.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"dup.jsonl:1: record 0: position 0, layer 3: expert "*" appears twice"* ]]

  head -n 1 "$E/jsonl/rollouts.jsonl" | jq -c '.routed_experts |= map(.[0:2])' >"$TMP/layers.jsonl"
  run moe-data import --from jsonl -m "$M" --temperature 1 "$TMP/layers.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"layers.jsonl:1: record 0: routing has 2 layers: the model has 4 layers, 3 of them MoE (1,2,3)"* ]]

  head -n 1 "$E/jsonl/rollouts.jsonl" | jq -c '.routed_experts |= map(map(.[0:1]))' >"$TMP/k.jsonl"
  run moe-data import --from jsonl -m "$M" --temperature 1 "$TMP/k.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"record 0: routing has top-1 experts per layer, the model routes to 2"* ]]

  # SGLang: two response tokens fewer than the routing covers
  sed -n 2p "$E/sglang/generate.jsonl" \
    | jq -c '.output_ids |= .[:-2] | .meta_info.output_token_logprobs |= .[:-2] | .meta_info.completion_tokens -= 2' >"$TMP/short.jsonl"
  run moe-data import --from sglang -m "$M" --temperature 1 "$TMP/short.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"short.jsonl:1: record 0: routing has 20 positions for 19 tokens (10 prompt + 9 response); expected 18"* ]]

  # SGLang's layer axis is every model layer: calling it the MoE axis does not fit
  run moe-data import --from sglang -m "$M" --temperature 1 --engine-layers moe "$E/sglang/generate.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"generate.jsonl:1: record 0: routed experts hold 176 ids, not a multiple of layers x top_k = 3 x 2"* ]]
}

@test "errors: missing log-probs, missing routing, prefix omission, bad base64, verl padding" {
  head -n 1 "$E/sglang/generate.jsonl" | jq -c 'del(.meta_info.output_token_logprobs)' >"$TMP/nolp.jsonl"
  run moe-data import --from sglang -m "$M" --temperature 1 "$TMP/nolp.jsonl" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"nolp.jsonl:1: record 0: no log-probs"* ]]
  run moe-data import --from sglang -m "$M" --temperature 1 --no-logprobs "$TMP/nolp.jsonl" -o "$TMP/r.zst"
  [ "$status" -eq 0 ]
  moe-route-dump show --jsonl "$TMP/r.zst" | jq -e '.logprobs == []'

  head -n 1 "$E/vllm/completions.jsonl" | jq -c '.choices[1].logprobs.token_logprobs[3] = null' >"$TMP/null.jsonl"
  run moe-data import --from vllm -m "$M" --temperature 1 "$TMP/null.jsonl" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"null.jsonl:1 choices[1]: record 1: log-prob of response token 3 is missing"* ]]

  head -n 1 "$E/vllm/request_outputs.jsonl" | jq -c 'del(.outputs[1].routed_experts)' >"$TMP/noroute.jsonl"
  run moe-data import --from vllm -m "$M" --temperature 1 "$TMP/noroute.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"noroute.jsonl:1 outputs[1]: record 1: no routed experts"* ]]

  # The prompt prefix left out (first 4 rows gone): an error, or aligned to the end with --prefix-omitted.
  head -n 1 "$E/vllm/request_outputs.jsonl" | jq -c '.outputs |= map(.routed_experts |= .[4:])' >"$TMP/prefix.jsonl"
  run moe-data import --from vllm -m "$M" --temperature 1 "$TMP/prefix.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"record 0: routing has 18 positions for 23 tokens (10 prompt + 13 response); expected 22"*"--prefix-omitted"* ]]
  run moe-data import --from vllm -m "$M" --temperature 1 --prefix-omitted "$TMP/prefix.jsonl" --routing-out "$TMP/x.zst" -o "$TMP/r.zst"
  [ "$status" -eq 0 ]
  moe-route-dump show --jsonl "$TMP/x.zst" | jq -e -s '.[0].first_pos == 4 and .[0].n_pos == 18'
  # ... which moe-train-step refuses to replay: R3 needs the prompt's routing too
  run moe-train-step -m "$M" -o "$TMP/o" --algo grpo --router replay-rollout --routing "$TMP/x.zst" \
    <(moe-reward --task countdown -q "$TMP/r.zst")
  [ "$status" -eq 1 ]
  [[ "$output" == *"covers positions 4..21, training needs 0..21"* ]]

  head -n 1 "$E/sglang/generate.jsonl" | jq -c '.meta_info.routed_experts = "AAAA*AAA"' >"$TMP/b64.jsonl"
  run moe-data import --from sglang -m "$M" --temperature 1 "$TMP/b64.jsonl" --routing-out "$TMP/x.zst" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"b64.jsonl:1: meta_info.routed_experts: base64 text holds a character that is not base64 at position 4"* ]]

  # verl: a right-padded prompt is not verl's layout
  rm -rf "$TMP/e"
  moe-data import --from verl -m "$M" --temperature 1 "$E/verl/batch.safetensors" -q \
    | moe-route-dump export --to verl -m "$M" -o "$TMP/e" -q
  [ -f "$TMP/e/prompts.npy" ]
  /bin/cp "$E/npy/uint8_2d.npy" "$TMP/e/attention_mask.npy"
  run moe-data import --from verl -m "$M" --temperature 1 "$TMP/e" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"shapes disagree"* ]]
  run moe-data import --from verl -m "$M" --temperature 1 "$E/npy/int32_3d.npy" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"a single .npy array"* ]]
  run moe-data import --from sglang -m "$M" --temperature 1 "$E/jsonl/rollouts.jsonl" -o /dev/null
  [ "$status" -eq 1 ]
  [[ "$output" == *"rollouts.jsonl:1: no \"meta_info\" object: not an SGLang /generate response"* ]]
}

@test "shell_examples/train_on_sglang.sh trains on the SGLang fixture" {
  cp -r "$M" "$TMP/m"
  run bash "$SRC/shell_examples/train_on_sglang.sh" "$TMP/m" "$E/sglang/generate.jsonl" 1
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"routing, 8 records"* ]]
  [[ "$output" == *"step: "*"\"tokens\":"* ]]
  ! cmp -s "$TMP/m/model.safetensors" "$M/model.safetensors"
}
