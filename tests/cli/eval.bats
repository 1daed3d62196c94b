#!/usr/bin/env bats
# moe-eval on a tiny random model and moe-data countdown prompts; moe-eval report on hand-made metrics.

setup_file() {
  load common
  setup_common
  moe-init --preset tiny -o "$BATS_FILE_TMPDIR/m" --seed 1 -q
  moe-data countdown -n 6 --seed 3 --split test --unique > "$BATS_FILE_TMPDIR/a.jsonl"
  moe-data countdown -n 4 --seed 4 > "$BATS_FILE_TMPDIR/b.jsonl"
}

setup() {
  load common
  setup_common
  M="$BATS_FILE_TMPDIR/m"
  A="$BATS_FILE_TMPDIR/a.jsonl"
  B="$BATS_FILE_TMPDIR/b.jsonl"
  METRICS="$DATA/metrics"
  EV="moe-eval -m $M --task countdown --threads 1 --max-new-tokens 12"
}

json_check() {  # json_check JSON_TEXT PYTHON_ASSERTS (over the parsed object j)
  python3 -c "import json,sys; j=json.loads(sys.argv[1]); $2" "$1" "${@:3}"
}

@test "--help, --version and usage errors exit 2" {
  run moe-eval --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--rollouts-out"* ]]
  [[ "$output" == *"report"* ]]
  run moe-eval report --help
  [ "$status" -eq 0 ]
  [[ "$output" == *"--label"* ]]
  run moe-eval --version
  [ "$status" -eq 0 ]
  [[ "$output" == *moekit* ]]
  run moe-eval --data "$A" --task countdown
  [ "$status" -eq 2 ]
  [[ "$output" == *"-m/--model is required"* ]]
  run moe-eval -m "$M" --task countdown
  [ "$status" -eq 2 ]
  [[ "$output" == *"--data"* ]]
  run moe-eval -m "$M" --data "$A"
  [ "$status" -eq 2 ]
  [[ "$output" == *"--task"* ]]
  run moe-eval -m "$M" --data "$A" --task poetry
  [ "$status" -eq 2 ]
  run $EV --data "$A" --samples -1
  [ "$status" -eq 2 ]
  run $EV --data "$A" --temperature 0
  [ "$status" -eq 2 ]
  run $EV --data - --data -
  [ "$status" -eq 2 ]
  run $EV --data "$A" --bogus
  [ "$status" -eq 2 ]
  run moe-eval report
  [ "$status" -eq 2 ]
  run moe-eval report "$METRICS/rspo.jsonl" "$METRICS/grpo.jsonl" --label one
  [ "$status" -eq 2 ]
  [[ "$output" == *"--label"* ]]
}

@test "table: header, one row per dataset and an overall row" {
  run $EV -q --data "$A" -k 2
  [ "$status" -eq 0 ]
  echo "$output"
  [ "${#lines[@]}" -eq 3 ]
  [[ "${lines[0]}" =~ ^dataset\ +prompts\ +pass@1\ +mean@2\ +pass@2$ ]]
  [[ "${lines[1]}" =~ ^"$A"\ +6\ +[0-9.]+%\ +[0-9.]+%\ +[0-9.]+%$ ]]
  [[ "${lines[2]}" =~ ^overall\ +6\ +[0-9.]+%\ +[0-9.]+%\ +[0-9.]+%$ ]]
  run $EV -q --data "$A" --data "$B" -k 2
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 4 ]
  [[ "${lines[1]}" == "$A "* ]]
  [[ "${lines[2]}" == "$B "* ]]
  [[ "${lines[3]}" =~ ^overall\ +10\  ]]
  run $EV -q --data "$A" -k 0
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" =~ ^dataset\ +prompts\ +pass@1$ ]]
  run $EV -q --data "$A" -k 2 --markdown
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "| dataset | prompts | pass@1 | mean@2 | pass@2 |" ]
  [ "${lines[1]}" = "|---|---:|---:|---:|---:|" ]
  [[ "${lines[3]}" == "| overall | 6 | "* ]]
  run $EV -q --data "$A" --json --markdown
  [ "$status" -eq 2 ]
}

@test "stderr: a summary line, nothing with -q; stdout: the table only" {
  run bash -c "$EV --data '$A' -k 1 2>&1 >/dev/null"
  [ "$status" -eq 0 ]
  [[ "$output" == "moe-eval: evaluated 6 prompts (greedy + 1 sample each): "*" tokens/s" ]]
  run bash -c "$EV -q --data '$A' -k 1 2>&1 >/dev/null"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  run bash -c "moe-eval -q report '$METRICS/grpo.jsonl' -o '$TMP/rq' 2>&1"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
}

@test "--json: two --data files give two rows; overall pools the prompts" {
  run $EV -q --data "$A" --data "$B" -k 3 --json
  [ "$status" -eq 0 ]
  json_check "$output" "
d = j['datasets']; o = j['overall']
assert j['k'] == 3 and len(d) == 2, j
assert [x['name'] for x in d] == [sys.argv[2], sys.argv[3]], d
assert [x['prompts'] for x in d] == [6, 4] and o['prompts'] == 10
for x in d + [o]:
    for key in ('pass@1', 'mean@k', 'pass@k'):
        assert 0 <= x[key] <= 1, (key, x)
    assert x['pass@1'] == x['greedy_correct'] / x['prompts']
    assert x['samples'] == 3 * x['prompts']
    assert x['mean@k'] == x['sampled_correct'] / x['samples']
    assert x['pass@k'] >= x['mean@k'] - 1e-12
assert o['sampled_correct'] == sum(x['sampled_correct'] for x in d)
assert o['greedy_correct'] == sum(x['greedy_correct'] for x in d)
s = j['settings']
assert s['task'] == 'countdown' and s['temperature'] == 1 and s['max_new_tokens'] == 12 and s['seed'] == 0, s
" "$A" "$B"
  run $EV -q --data "$A" -k 0 --json
  json_check "$output" "assert j['k'] == 0 and j['overall']['mean@k'] is None and j['overall']['pass@k'] is None, j"
}

@test "deterministic for a seed; a dataset's row does not depend on the other files or the batch size" {
  a1=$($EV -q --data "$A" --data "$B" -k 3 --seed 5 --json)
  a2=$($EV -q --data "$A" --data "$B" -k 3 --seed 5 --json --batch-size 2)
  [ "$a1" = "$a2" ]
  b_alone=$($EV -q --data "$B" -k 3 --seed 5 --json)
  json_check "$a1" "b = json.loads(sys.argv[2])['datasets'][0]; assert j['datasets'][1] == b, (j['datasets'][1], b)" "$b_alone"
  # The responses themselves: same seed same rollouts, another seed other samples.
  # (the header records argv, so both runs use the very same command line, in two directories)
  for i in 1 2; do
    mkdir "$TMP/run$i"
    (cd "$TMP/run$i" && $EV -q --data "$A" -k 3 --seed 5 --rollouts-out r.zst -o /dev/null)
  done
  cmp "$TMP/run1/r.zst" "$TMP/run2/r.zst"
  $EV -q --data "$A" -k 3 --seed 6 --rollouts-out "$TMP/r3.zst" -o /dev/null
  ! cmp -s <(moe-route-dump show --jsonl "$TMP/run1/r.zst" | python3 -c "import json,sys; [print(json.loads(l)['response_tokens']) for l in sys.stdin]") \
           <(moe-route-dump show --jsonl "$TMP/r3.zst" | python3 -c "import json,sys; [print(json.loads(l)['response_tokens']) for l in sys.stdin]")
}

@test "--rollouts-out: a rollout stream with rewards that agrees with the table and with moe-reward" {
  run $EV -q --data "$A" --data "$B" -k 2 --json --rollouts-out "$TMP/r.zst"
  [ "$status" -eq 0 ]
  echo "$output" > "$TMP/eval.json"
  moe-route-dump show --jsonl "$TMP/r.zst" > "$TMP/r.jsonl"
  run python3 - "$TMP/eval.json" "$TMP/r.jsonl" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
recs = [json.loads(l) for l in open(sys.argv[2])]
assert len(recs) == 10 * 3, len(recs)
assert [r["id"] for r in recs] == list(range(30))
assert [r["group"] for r in recs] == [g for g in range(10) for _ in range(3)]
assert [r["sample"] for r in recs] == [0, 1, 2] * 10
for r in recs:
    assert r["reward"] in (0.0, 0.1, 1.0), r["reward"]
    assert r["reward_info"]["correct"] == (r["reward"] == 1.0)
    assert r["eval"]["decode"] == ("greedy" if r["sample"] == 0 else "sample")
    assert "numbers" in r["task"] and "target" in r["task"]
for d, (lo, hi) in zip(j["datasets"], [(0, 6), (6, 10)]):
    rs = [r for r in recs if lo <= r["group"] < hi]
    assert all(r["eval"]["dataset"] == d["name"] for r in rs)
    assert sum(r["reward_info"]["correct"] for r in rs if r["sample"] == 0) == d["greedy_correct"]
    assert sum(r["reward_info"]["correct"] for r in rs if r["sample"] > 0) == d["sampled_correct"]
PY
  echo "$output"
  [ "$status" -eq 0 ]
  # moe-reward re-scores the same responses to the same correctness.
  run bash -c "moe-reward --task countdown '$TMP/r.zst' 2>&1 >/dev/null"
  [ "$status" -eq 0 ]
  correct=$(python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['overall']; print(j['greedy_correct'] + j['sampled_correct'])" "$TMP/eval.json")
  [[ "$output" == *"($correct/30)"* ]]
}

@test "bad input: clear errors naming the file, exit 1" {
  printf '{"prompt": "1 2=3|", "numbers": [1, 2], "target": 3}\nnot json\n' > "$TMP/bad.jsonl"
  run $EV --data "$A" --data "$TMP/bad.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"bad.jsonl:2: malformed JSON"* ]]
  echo '{"text": "1 2=3|", "numbers": [1, 2], "target": 3}' > "$TMP/key.jsonl"
  run $EV --data "$TMP/key.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *'key.jsonl:1: no "prompt" key'* ]]
  run $EV -q --data "$TMP/key.jsonl" --prompt-key text -k 1
  [ "$status" -eq 0 ]
  : > "$TMP/empty.jsonl"
  run $EV --data "$TMP/empty.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"empty.jsonl: no prompts"* ]]
  # countdown prompts checked as math: no reference answer
  run moe-eval -m "$M" --task math --data "$A" --max-new-tokens 4 --threads 1
  [ "$status" -eq 1 ]
  [[ "$output" == *"a.jsonl:1: task payload has no 'answer'"* ]]
  # a payload error is found before any generation, at its line
  (cat "$A"; echo '{"prompt": "1 2=3|", "target": 3}') > "$TMP/nonum.jsonl"
  run $EV --data "$TMP/nonum.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"nonum.jsonl:7: task payload has no 'numbers'"* ]]
  run $EV --data "$TMP/nowhere.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"nowhere.jsonl"* ]]
  run $EV -q --data "$A" --device cuda -k 0
  if [ "$status" -ne 0 ]; then  # a CPU-only build: torch's message, not its backtrace
    [ "$status" -eq 1 ]
    [[ "$output" == *"cuda"* ]]
    [[ "$output" != *"frame #"* ]]
  fi
  run moe-eval -m "$TMP/nomodel" --task countdown --data "$A"
  [ "$status" -eq 1 ]
  [[ "$output" == *"nomodel"* ]]
}

@test "stdin data, closed reader ends quietly, a full disk is an error" {
  run bash -c "cat '$A' | $EV -q --data - -k 1 | head -1; echo \${PIPESTATUS[1]}"
  [[ "${lines[0]}" == "dataset "*"mean@1"* ]]
  [ "${lines[1]}" = "0" ]
  run bash -c "$EV -q --data '$A' -k 1 > /dev/full"
  [ "$status" -eq 1 ]
  [[ "$output" == *"No space left"* ]]
  run bash -c "moe-eval report -q '$METRICS/rspo.jsonl' | head -1; echo \${PIPESTATUS[0]}"
  [ "${lines[0]}" = "# Training report" ]
  [ "${lines[1]}" = "0" ]
  run bash -c "moe-eval report '$METRICS/rspo.jsonl' > /dev/full"
  [ "$status" -eq 1 ]
  [[ "$output" == *"No space left"* ]]
}

@test "report: report.md and one PNG per metric present, runs overlaid, absent metrics noted" {
  command -v gnuplot || skip "gnuplot not installed"
  run moe-eval report "$METRICS/rspo.jsonl" "$METRICS/grpo.jsonl" -o "$TMP/rep"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"not in any run, skipped: reward"* ]]
  md="$TMP/rep/report.md"
  [ -s "$md" ]
  grep -q '^## rspo$' "$md"
  grep -q '^## grpo$' "$md"
  grep -q "^| grad_norm | 24 |" "$md"
  grep -q '^| mismatch/k3_kl | 12 |' "$md"
  grep -q 'Not in any run (skipped): `reward`.' "$md"
  for p in val_accuracy loss entropy grad_norm pg_clipfrac mismatch_k3_kl routing_token_mismatch router_shift_gamma_mean; do
    [ "$(head -c 8 "$TMP/rep/$p.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]
    grep -qF "]($p.png)" "$md"
  done
  [ ! -e "$TMP/rep/reward.png" ]
  # --label names the runs; --metric adds a key
  run moe-eval -q report --label RSPO "$METRICS/rspo.jsonl" --label GRPO "$METRICS/grpo.jsonl" --metric lr -o "$TMP/rep2"
  [ "$status" -eq 0 ]
  grep -q '^## RSPO$' "$TMP/rep2/report.md"
  grep -q '^| GRPO | .*grpo.jsonl | 36 | 12 | 1 .. 24 |$' "$TMP/rep2/report.md"
  [ -s "$TMP/rep2/lr.png" ]
  # keys that make the same file name get distinct plots
  printf '{"step": 1, "a/b": 1, "a_b": 2}\n{"step": 2, "a/b": 2, "a_b": 1}\n' > "$TMP/ab.jsonl"
  run moe-eval -q report "$TMP/ab.jsonl" --metric a/b --metric a_b -o "$TMP/rep3"
  [ "$status" -eq 0 ]
  grep -qF '![a/b](a_b.png)' "$TMP/rep3/report.md"
  grep -qF '![a_b](a_b_2.png)' "$TMP/rep3/report.md"
  [ -s "$TMP/rep3/a_b_2.png" ]
}

@test "report --group: runs of a group as thin lines, its mean as a thick one, a table of last values" {
  # a/s1 and a/s2 share group a; b/s1 has steps 1-2 and b/s2 only step 1: b's mean is drawn at step 1 only
  printf '{"step": 1, "reward": 1}\n{"step": 2, "reward": 2}\n' > "$TMP/a1.jsonl"
  printf '{"step": 1, "reward": 3}\n{"step": 2, "reward": 4}\n{"step": 2, "reward": 6}\n' > "$TMP/a2.jsonl"
  printf '{"step": 1, "reward": 0}\n{"step": 2, "reward": 0.5}\n' > "$TMP/b1.jsonl"
  printf '{"step": 1, "reward": 1}\n' > "$TMP/b2.jsonl"
  # a gnuplot that keeps its script and data and makes the PNGs it was asked for
  printf '%s\n' '#!/bin/sh' "cp -r \"\$(dirname \"\$1\")\" '$TMP/gp'" \
    "sed -n \"s/^set output '\\(.*\\)'\$/\\1/p\" \"\$1\" | while read -r f; do printf png > \"\$f\"; done" \
    > "$TMP/fake-gnuplot"
  chmod +x "$TMP/fake-gnuplot"
  cat "$TMP/fake-gnuplot"
  run moe-eval -q report --group --gnuplot "$TMP/fake-gnuplot" -o "$TMP/rep" \
    "$TMP/a1.jsonl" "$TMP/a2.jsonl" "$TMP/b1.jsonl" "$TMP/b2.jsonl" --label a/s1 --label a/s2 --label b/s1 --label b/s2
  echo "$output"
  [ "$status" -eq 0 ]
  [ -s "$TMP/rep/reward.png" ]
  md="$TMP/rep/report.md"
  cat "$md"
  # last values: a/s1 2, a/s2 6 (its last line); b/s1 0.5, b/s2 1
  grep -qF '| a | 2 | 4 [2, 6] |' "$md"
  grep -qF '| b | 2 | 0.75 [0.5, 1] |' "$md"
  script="$TMP/gp/plots.gp"
  cat "$script"
  # four thin run lines in their group's colour, two thick means
  [ "$(grep -o 'with lines lw 1 lc 1 notitle' "$script" | wc -l)" -eq 2 ]
  [ "$(grep -o 'with lines lw 1 lc 2 notitle' "$script" | wc -l)" -eq 2 ]
  grep -qF "with lines lw 3 lc 1 title 'a (mean of 2)'" "$script"
  grep -qF "with lines lw 3 lc 2 title 'b (mean of 2)'" "$script"
  # a's mean: step 1 (1 + 3) / 2 = 2; step 2 (2 + (4 + 6) / 2) / 2 = 3.5. b's: step 1 only, 0.5.
  [ "$(awk '{ printf "%g %g\n", $1, $2 }' "$TMP"/gp/*.mean0.dat)" = "$(printf '1 2\n2 3.5')" ]
  [ "$(awk '{ printf "%g %g\n", $1, $2 }' "$TMP"/gp/*.mean1.dat)" = "1 0.5" ]
  # without --group: one titled line per run, no means, no group table
  rm -rf "$TMP/gp"
  run moe-eval -q report --gnuplot "$TMP/fake-gnuplot" -o "$TMP/rep2" "$TMP/a1.jsonl" "$TMP/a2.jsonl"
  [ "$status" -eq 0 ]
  ! grep -q 'lw 3' "$TMP/gp/plots.gp"
  ! grep -q '^## Groups' "$TMP/rep2/report.md"
  [ "$(grep -o 'linespoints pt 7 ps 0.6 title' "$TMP/gp/plots.gp" | wc -l)" -eq 2 ]
}

@test "report: without gnuplot a warning and the markdown; gnuplot failing is an error" {
  run moe-eval report "$METRICS/grpo.jsonl" --gnuplot "$TMP/no-gnuplot" -o "$TMP/rep"
  [ "$status" -eq 0 ]
  [[ "$output" == *"warning: gnuplot not found"* ]]
  grep -q 'Plots skipped' "$TMP/rep/report.md"
  [ -z "$(ls "$TMP/rep"/*.png 2>/dev/null)" ]
  run moe-eval report "$METRICS/grpo.jsonl" --gnuplot false -o "$TMP/rep3"
  [ "$status" -eq 1 ]
  [[ "$output" == *"failed (exit 1)"* ]]
  [ ! -e "$TMP/rep3/report.md" ]
}

@test "report: malformed metrics name file and line, exit 1" {
  run moe-eval report "$METRICS/rspo.jsonl" "$METRICS/malformed.jsonl" -o "$TMP/rep"
  [ "$status" -eq 1 ]
  [[ "$output" == *"malformed.jsonl:2: malformed JSON"* ]]
  [ ! -e "$TMP/rep/report.md" ]
  run moe-eval report "$METRICS/no_step.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *'no_step.jsonl:2: no numeric "step"'* ]]
  run moe-eval report "$TMP/missing.jsonl"
  [ "$status" -eq 1 ]
  [[ "$output" == *"missing.jsonl"* ]]
}

@test "report on real moe-train-step metrics (RSPO + R3): every key metric found, none skipped" {
  command -v gnuplot || skip "gnuplot not installed"
  run moe-eval report "$METRICS/train_step_rspo.jsonl" -o "$TMP/real"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" != *"skipped"* ]]
  md="$TMP/real/report.md"
  grep -q '^| train_step_rspo | .* | 16 | 4 | 1201 .. 1208 |$' "$md"
  for m in loss entropy grad_norm pg_clipfrac mismatch/k3_kl routing/token_mismatch router_shift/gamma_mean; do
    grep -q "^| $m | 8 |" "$md"
  done
  grep -q '^| reward | 4 |' "$md"
  grep -q '^| val/accuracy | 4 | 0.23 | 0.22 |' "$md"
  [ "$(ls "$TMP/real"/*.png | wc -l)" -eq 10 ]
}
