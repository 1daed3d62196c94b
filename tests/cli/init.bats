#!/usr/bin/env bats
# moe-init: presets, refusal to overwrite, --force, determinism, bad configs.

load common

setup() { setup_common; }

@test "moe-init --help prints usage and exits 0" {
  run moe-init --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--preset"* ]]
  [[ "$output" == *"--force"* ]]
}

@test "moe-init --version" {
  run moe-init --version
  [ "$status" -eq 0 ]
  [[ "$output" == "moe-init (moekit) "* ]]
}

@test "usage errors exit 2" {
  run moe-init --bogus -o "$TMP/m"
  [ "$status" -eq 2 ]
  [[ "$output" == *"moe-init: error:"* ]]
  run moe-init --preset huge -o "$TMP/m"
  [ "$status" -eq 2 ]
  run moe-init
  [ "$status" -eq 2 ]
  run moe-init --preset tiny --config "$TMP/x.json" -o "$TMP/m"
  [ "$status" -eq 2 ]
  [ ! -e "$TMP/m" ]
}

@test "writes a tiny model dir" {
  run moe-init --preset tiny -o "$TMP/m" --seed 1
  [ "$status" -eq 0 ]
  [[ "$output" == *"0.77 M parameters"* ]]
  [ -f "$TMP/m/config.json" ]
  [ -f "$TMP/m/model.safetensors" ]
  [ -f "$TMP/m/tokenizer.json" ]
  grep -q '"model_type": "qwen3_moe"' "$TMP/m/config.json"
  grep -q '"Qwen3MoeForCausalLM"' "$TMP/m/config.json"
  grep -q '"num_experts": 8' "$TMP/m/config.json"
  grep -q '"type": "char"' "$TMP/m/tokenizer.json"
  # nothing printed on stdout
  run bash -c "moe-init -q -o '$TMP/q' 2>/dev/null"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
}

@test "refuses to overwrite without --force, replaces with it" {
  moe-init -q -o "$TMP/m" --seed 1
  cp "$TMP/m/model.safetensors" "$TMP/first"
  run moe-init -o "$TMP/m" --seed 2
  [ "$status" -eq 1 ]
  [[ "$output" == *"already exists"* ]]
  cmp "$TMP/m/model.safetensors" "$TMP/first"
  run moe-init -q -o "$TMP/m" --seed 2 --force
  [ "$status" -eq 0 ]
  ! cmp -s "$TMP/m/model.safetensors" "$TMP/first"
  # no staging dirs left behind
  [ "$(ls "$TMP" | grep -c tmp-)" -eq 0 ]
}

@test "same seed gives byte-identical files" {
  moe-init -q -o "$TMP/a" --seed 7
  moe-init -q -o "$TMP/b" --seed 7
  for f in config.json model.safetensors tokenizer.json; do cmp "$TMP/a/$f" "$TMP/b/$f"; done
  moe-init -q -o "$TMP/c" --seed 8
  ! cmp -s "$TMP/a/model.safetensors" "$TMP/c/model.safetensors"
}

@test "--config takes a qwen3_moe config.json; bad ones exit 1" {
  moe-init -q -o "$TMP/a"
  sed 's/"num_experts": 8/"num_experts": 4/' "$TMP/a/config.json" > "$TMP/four.json"
  run moe-init -o "$TMP/four" --config "$TMP/four.json"
  [ "$status" -eq 0 ]
  grep -q '"num_experts": 4' "$TMP/four/config.json"

  echo '{"model_type": "qwen3_moe", "hidden_size": 8}' > "$TMP/bad.json"
  run moe-init -o "$TMP/bad" --config "$TMP/bad.json"
  [ "$status" -eq 1 ]
  [[ "$output" == *"bad.json: missing key 'vocab_size'"* ]]
  [ ! -e "$TMP/bad" ]

  echo '{not json' > "$TMP/junk.json"
  run moe-init -o "$TMP/bad" --config "$TMP/junk.json"
  [ "$status" -eq 1 ]
  [[ "$output" == *"junk.json: malformed JSON at byte"* ]]

  sed 's/"vocab_size": 98/"vocab_size": 20/' "$TMP/a/config.json" > "$TMP/small_vocab.json"
  run moe-init -o "$TMP/bad" --config "$TMP/small_vocab.json"
  [ "$status" -eq 1 ]
  [[ "$output" == *"smaller than the tokenizer"* ]]

  run moe-init -o "$TMP/bad" --config "$TMP/missing.json"
  [ "$status" -eq 1 ]
}

@test "--dtype bf16 writes bf16 weights" {
  run moe-init -q -o "$TMP/h" --dtype bf16
  [ "$status" -eq 0 ]
  grep -q '"torch_dtype": "bfloat16"' "$TMP/h/config.json"
  head -c 4000 "$TMP/h/model.safetensors" | grep -q '"BF16"'
}

@test "the routing-regime presets top1 and fine write their shapes and generate" {
  run moe-init --preset top1 -o "$TMP/t1" --seed 1
  [ "$status" -eq 0 ]
  [ "$(jq -c '[.num_experts, .num_experts_per_tok, .moe_intermediate_size, .norm_topk_prob, .hidden_size]' \
        "$TMP/t1/config.json")" = '[8,1,192,false,96]' ]
  run moe-init --preset fine -o "$TMP/f" --seed 1
  [ "$status" -eq 0 ]
  [ "$(jq -c '[.num_experts, .num_experts_per_tok, .moe_intermediate_size, .norm_topk_prob, .hidden_size]' \
        "$TMP/f/config.json")" = '[32,4,48,true,96]' ]
  # both run a rollout whose routing stream records their top-K
  for m in t1 f; do
    moe-data countdown -q -n 2 --seed 1 \
      | moe-rollout -q -m "$TMP/$m" -G 2 --max-new-tokens 4 --seed 1 --threads 1 --routing-out "$TMP/$m.routes.zst" \
      > "$TMP/$m.rollouts.zst"
    [ -s "$TMP/$m.routes.zst" ]
  done
  [ "$(moe-route-dump show --header "$TMP/t1.routes.zst" | jq -c '[.meta.num_experts, .meta.top_k]')" = '[8,1]' ]
  [ "$(moe-route-dump show --header "$TMP/f.routes.zst" | jq -c '[.meta.num_experts, .meta.top_k]')" = '[32,4]' ]
  # one expert per token and layer under top1
  [ "$(moe-route-dump show --jsonl "$TMP/t1.routes.zst" | jq -sc '[.[].experts[][] | length] | unique')" = '[1]' ]
}
