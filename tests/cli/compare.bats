#!/usr/bin/env bats
# shell_examples/compare.sh: the declared grid runs, resumes without re-running finished runs, and keeps
# each run's raw metrics.

setup() {
  load common
  setup_common
}

@test "compare.sh --smoke runs the smoke grid, keeps raw metrics and resumes without re-running" {
  cd "$TMP"
  run bash "$SRC/shell_examples/compare.sh" --smoke -o out
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"runs: 4 started, 0 already complete"* ]]
  # two configurations x two seeds, each with its raw metrics: 2 steps (summary lines), 2 training-reward
  # lines and held-out evaluations before and after, with standard errors
  for s in 1 2; do
    for name in grpo-free rspo-r3; do
      m=out/s$s/$name/metrics.jsonl
      [ -f "$m" ]
      [ -f "out/s$s/$name/done" ]
      [ "$(jq -s 'map(select(.kind == "summary")) | length' "$m")" -eq 2 ]
      [ "$(jq -s 'map(select(.reward != null)) | length' "$m")" -eq 2 ]
      [ "$(jq -s 'map(select(.["val/accuracy"] != null and .["val/mean_at_k_se"] != null)) | length' "$m")" -eq 2 ]
    done
  done
  [ "$(grep -c '^| grpo-free/s[12] |' out/summary.md)" -eq 2 ]
  grep -q '^| rspo-r3 | 2 |' out/summary.md
  [ -f out/report/report.md ]
  sums=$(cat out/s*/*/metrics.jsonl | md5sum)

  # the same command again: every run is complete, nothing is re-run, the raw metrics are untouched
  run bash "$SRC/shell_examples/compare.sh" --smoke -o out
  [ "$status" -eq 0 ]
  [[ "$output" == *"runs: 0 started, 4 already complete"* ]]
  [[ "$output" != *"step 1/2"* ]]
  [ "$(cat out/s*/*/metrics.jsonl | md5sum)" = "$sums" ]

  # an interrupted run (no done file, half its metrics) is run again, and only that one
  rm out/s2/rspo-r3/done
  head -n 3 out/s2/rspo-r3/metrics.jsonl > x && mv x out/s2/rspo-r3/metrics.jsonl
  run bash "$SRC/shell_examples/compare.sh" --smoke -o out
  [ "$status" -eq 0 ]
  [[ "$output" == *"runs: 1 started, 3 already complete"* ]]
  [[ "$output" == *"s2/rspo-r3 step 2/2"* ]]
  [[ "$output" != *"s1/grpo-free step"* ]]
  [ "$(jq -s 'map(select(.kind == "summary")) | length' out/s2/rspo-r3/metrics.jsonl)" -eq 2 ]

  # other sizes make every run stale
  run bash "$SRC/shell_examples/compare.sh" --smoke --steps 1 --runs grpo-free --seeds 1 -o out
  [ "$status" -eq 0 ]
  [[ "$output" == *"runs: 1 started, 0 already complete"* ]]
}

@test "compare.sh rejects a grid without seeds and an unknown configuration" {
  cd "$TMP"
  printf 'a --algo grpo\n' > g
  run bash "$SRC/shell_examples/compare.sh" --grid g -o out
  [ "$status" -eq 2 ]
  [[ "$output" == *"declares no seeds"* ]]
  printf 'seeds 1\na --algo grpo\n' > g
  run bash "$SRC/shell_examples/compare.sh" --grid g --runs nope -o out
  [ "$status" -eq 2 ]
  [[ "$output" == *"no configuration to run"* ]]
}

@test "the study grid declares 3 seeds and the configurations of issue 14" {
  grid=$SRC/shell_examples/grids/study.grid
  [ "$(awk '$1 == "seeds" { print NF - 1 }' "$grid")" -eq 3 ]
  for name in grpo-free gspo-free gmpo-free rspo-after rspo-pre rspo-grad grpo+rs-after grpo+rs-pre grpo-r3 \
              rspo-r3 grpo-tis rspo-freeze rspo-copy-old; do
    grep -q "^$name " "$grid" || { echo "missing $name"; false; }
  done
  grep -q -- '--rs-grad' "$grid"
  grep -q -- '--rs-apply pre-clip' "$grid"
}

@test "compare.sh: a configuration's own --mini-batches and --lr override the global ones; no lock files left" {
  cd "$TMP"
  printf 'seeds 1\nglobal --algo grpo\nown --algo grpo --mini-batches 4 --lr 1e-5\n' > g
  # --smoke: 4 prompts x 4 samples per step; the global 8 mini-batches give 8 updates per step, "own" 4
  run bash "$SRC/shell_examples/compare.sh" --smoke --grid g --steps 1 -o out
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$(jq -s 'map(select(.kind == "update")) | length' out/s1/global/metrics.jsonl)" -eq 8 ]
  [ "$(jq -s 'map(select(.kind == "update")) | length' out/s1/own/metrics.jsonl)" -eq 4 ]
  [ "$(jq -s '[.[] | select(.kind == "update") | .lr] | unique' -c out/s1/own/metrics.jsonl)" = "[1e-05]" ]
  [ "$(jq -s '[.[] | select(.kind == "update") | .lr] | unique' -c out/s1/global/metrics.jsonl)" = "[0.0003]" ]
  [ -z "$(find out -name '*.lock')" ]
}

@test "compare.sh: a configuration's --rollout-dtype and --max-new-tokens go to its rollouts, not to moe-train-step" {
  cd "$TMP"
  printf 'seeds 1\nshort --algo grpo --max-new-tokens 2 --rollout-dtype f32\n' > g
  run bash "$SRC/shell_examples/compare.sh" --smoke --grid g --steps 1 -o out
  echo "$output"
  [ "$status" -eq 0 ]
  # responses of at most 2 tokens in every update; the done file keeps the whole line
  [ "$(jq -s '[.[] | select(.kind == "update") | .response_len_max] | max' out/s1/short/metrics.jsonl)" -le 2 ]
  grep -q -- '--max-new-tokens 2 --rollout-dtype f32' out/s1/short/done
  # a rollout option without its value is refused
  printf 'seeds 1\nbad --algo grpo --rollout-dtype\n' > g2
  run bash "$SRC/shell_examples/compare.sh" --smoke --grid g2 --steps 1 -o out2
  [ "$status" -ne 0 ]
}
