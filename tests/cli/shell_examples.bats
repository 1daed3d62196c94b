#!/usr/bin/env bats
# Every script in shell_examples/ runs here, so examples cannot rot. Scripts declare the programs they
# need in a "# needs:" line; those that need only moe-route-dump take two routing streams as arguments.

setup() {
  load common
  setup_common
}

@test "shell_examples needing only moe-route-dump run on generated routing streams" {
  moe_gen_routing --records 30 --positions 20 --layers 4 -o "$TMP/a.zst"
  moe_gen_routing --records 30 --positions 20 --layers 4 --perturb 0.2 -o "$TMP/b.zst"
  ran=0
  for script in "$SRC"/shell_examples/*.sh; do
    needs=$(sed -n 's/^# needs: //p' "$script")
    [ "$needs" = "moe-route-dump" ] || continue
    run bash "$script" "$TMP/a.zst" "$TMP/b.zst"
    echo "$script: $output"
    [ "$status" -eq 0 ]
    run bash "$script" "$TMP/a.zst" "$TMP/b.zst" 0.01
    [ "$status" -eq 3 ]
    ran=$((ran + 1))
  done
  [ "$ran" -ge 1 ]
}

@test "route_diff.sh lists every layer and the token summary" {
  moe_gen_routing --records 10 --positions 10 --layers 3 -o "$TMP/a.zst"
  moe_gen_routing --records 10 --positions 10 --layers 3 --perturb 0.5 -o "$TMP/b.zst"
  run bash "$SRC/shell_examples/route_diff.sh" "$TMP/a.zst" "$TMP/b.zst"
  [ "$status" -eq 0 ]
  [ "$(grep -c '^  layer ' <<<"$output")" -eq 3 ]
  [[ "$output" == *"tokens with >= 1 differing layer"* ]]
}

@test "self-contained shell_examples run with the arguments of their '# test:' line" {
  ran=0
  for script in "$SRC"/shell_examples/*.sh; do
    grep -q '^# test:' "$script" || continue
    args=$(sed -n 's/^# test: //p' "$script")
    eval "set -- $args"
    cd "$TMP"
    run bash "$script" "$@"
    echo "$script: $output"
    [ "$status" -eq 0 ]
    ran=$((ran + 1))
  done
  [ "$ran" -ge 1 ]
}

@test "every shell_examples script is run by a test (its own '# test:' line, or a .bats file naming it)" {
  for script in "$SRC"/shell_examples/*.sh; do
    # run above (a '# test:' line, or route-dump-only), or named by another Bats file that runs it
    grep -q -e '^# test:' -e '^# needs: moe-route-dump$' "$script" && continue
    grep -l "shell_examples/$(basename "$script")" "$SRC"/tests/cli/*.bats | grep -qv shell_examples.bats \
      || { echo "not run by any test: $script"; false; }
  done
}

@test "two_pass_diff.sh: fp32 re-score of an fp32 rollout agrees exactly" {
  run bash "$SRC/shell_examples/two_pass_diff.sh" "" 8
  [ "$status" -eq 0 ]
  control=${output#*control: expect 0)}
  [[ "$control" == *"tokens with >= 1 differing layer: 0.0000"* ]]
  [[ "$output" == *"== bf16 rollout vs fp32 re-score"* ]]
}

@test "demo.sh --quick prints each held-out and train-prompt figure with its standard error" {
  cd "$TMP"
  MOEKIT_DEMO_DIR=$TMP/demo run bash "$SRC/shell_examples/demo.sh" --quick
  [ "$status" -eq 0 ]
  echo "$output"
  [ "$(grep -cE '^(held-out test|RL train prompts) .* [0-9.]+ \+- [0-9.]+ +[0-9.]+ \+- [0-9.]+ +(yes|no)$' <<<"$output")" -eq 4 ]
  # the standard errors are moe-eval's, present in both evaluations
  jq -e '.datasets | all(.["pass@1_se"] != null and .["mean@k_se"] != null)' "$TMP/demo/eval.before.json"
  jq -e '.datasets | all(.["pass@1_se"] != null and .["mean@k_se"] != null)' "$TMP/demo/eval.after.json"
  # the KL to the SFT checkpoint (KL=0.2 by default): the checkpoint is kept and every update reports it
  [ -f "$TMP/demo/sft-model/config.json" ]
  jq -se '[.[] | select(.kind == "update")] | length > 0 and all(has("kl"))' "$TMP/demo/metrics.jsonl"
}
