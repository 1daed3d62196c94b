#!/usr/bin/env bash
# test: --quick
# The quickstart: the embedded default end to end on CPU.
#   moe-init --preset tiny -> SFT warm-up on generated Countdown solutions -> moe-eval (before RL)
#   -> RL steps: bf16 rollout with routing | countdown reward | RSPO with rollout routing replay (R3) and a
#      k3 KL to the SFT checkpoint
#   -> moe-eval (after RL), on a held-out test split and on the RL training prompts.
#
#   demo.sh [--quick] [--seed S]
#
# --quick: a tiny configuration that only checks the pipeline runs (seconds; accuracy meaningless).
# Sizes come from the environment (defaults: the configuration chosen in issue 14, docs/results.md section 1):
#   SFT_STEPS (400) SFT_BATCH (128)  RL_STEPS (150) PROMPTS (16, per RL step) G (8, samples per prompt)
#   POOL (RL_STEPS x PROMPTS: each prompt seen once; smaller pools are cycled) POOL_EVAL (256: the first
#   POOL_EVAL pool prompts are evaluated as "RL train prompts") LR (1e-4) TEMP (0.7, rollout and sampled-eval temperature)
#   MAX_NEW (24) TEST_N (500, held-out prompts) K (8, samples per prompt for mean@k) THREADS (1)
#   KL (0.2: the k3 KL coefficient to the SFT checkpoint, kept as WORK/sft-model: --kl-coef, --ref; 0: off)
#   MOEKIT_DEMO_DIR (a new temporary dir, kept and printed), SFT_MODEL (skip init + SFT: start RL from this dir)
# Progress goes to stderr; the before/after table (each figure +- its standard error) goes to stdout.
# Everything is seeded by --seed (1).
#
# Tuning (issue 14; bar: held-out greedy pass@1 and mean@8 both up by more than their standard error).
# Tried, all with 60 RL steps x 16 fresh prompts x 8 samples and TEST_N=500, chosen on seed 7, reported on
# seed 1: SFT 200 or 400 steps, LR 1e-4 or 2e-4, TEMP 1.0 or 0.7 (5 configurations). Chosen on seed 7:
# SFT 400, TEMP 0.7 (greedy 0.166 -> 0.214 +- 0.018, mean@8 0.151 -> 0.207 +- 0.014). On seed 1 it does
# NOT meet the bar: mean@8 0.185 -> 0.233 +- 0.016 (up), greedy 0.236 -> 0.226 +- 0.019 (flat). No
# configuration tried raised held-out greedy on seed 1; SFT 200 made RL hurt there. Table: docs/results.md.
# Re-run end to end in session 5 (new sampler, SFT changed at the rounding level): held-out greedy flat on
# seed 7 (0.222 -> 0.218) and down on seed 1 (0.260 -> 0.220); held-out mean@8 up on seed 7 only.
# Session 7: 150 RL steps (was 60), LR 1e-4 or 2e-4, TEMP 0.7 or 1.0, on seed 7, then seed 1. 150 steps at
# LR 1e-4 and TEMP 0.7 (the defaults now) meet the bar on seed 7 (greedy 0.160 -> 0.216 +- 0.018, mean@8
# 0.141 -> 0.191 +- 0.014) but NOT on seed 1 (greedy 0.272 -> 0.224: down; mean@8 0.202 -> 0.221 +- 0.016:
# up); TEMP 1.0 the same pattern; LR 2e-4 lowers everything. Table: docs/results.md section 1.
# Session 8: a k3 KL to the SFT checkpoint, KL 0.2 (the default now), meets the bar on seeds 1, 7 and 2 (held-out
# greedy 0.276 -> 0.304, 0.168 -> 0.232, 0.222 -> 0.254; mean@8 0.215 -> 0.254, 0.141 -> 0.178, 0.179 -> 0.221,
# each gain above its standard error); KL 0 and 0.05 still lowered seed 1's greedy accuracy (0.244, 0.262).
# Chosen on seed 1; 334-378 s end to end with 2-3 processes on the 2 cores. Table: docs/results.md section 1.
# Time (session 7): 491 s of wall clock end to end for seed 1 (SFT 88 s of it) with 3-4 other RL processes on the 2
# cores (under the 15-minute budget; not timed unloaded).
set -euo pipefail

quick=0 seed=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --seed) seed=${2:?--seed needs a value}; shift ;;
    -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  : "${SFT_STEPS:=20}" "${RL_STEPS:=2}" "${PROMPTS:=4}" "${G:=4}" "${POOL_EVAL:=8}" "${TEST_N:=8}" "${K:=2}"
fi
sft_steps=${SFT_STEPS:-400} sft_batch=${SFT_BATCH:-128}
rl_steps=${RL_STEPS:-150} prompts=${PROMPTS:-16} g=${G:-8}
pool=${POOL:-$((rl_steps * prompts))} pool_eval=${POOL_EVAL:-256}
lr=${LR:-1e-4} temp=${TEMP:-0.7} max_new=${MAX_NEW:-24} test_n=${TEST_N:-500} k=${K:-8}
threads=${THREADS:-1} kl=${KL:-0.2}
for tool in moe-init moe-data moe-train-step moe-rollout moe-reward moe-eval jq; do
  command -v "$tool" >/dev/null || { echo "demo.sh: $tool not found on PATH (build first: bash scripts/build.sh)" >&2; exit 1; }
done

work=${MOEKIT_DEMO_DIR:-$(mktemp -d)}
mkdir -p "$work"
echo "demo: working in $work (kept); seed $seed" >&2
start=$SECONDS
say() { echo "demo [$((SECONDS - start))s]: $*" >&2; }

model=$work/model
metrics=$work/metrics.jsonl
rm -rf "$model" "$metrics"
if [ -n "${SFT_MODEL:-}" ]; then
  say "starting from the SFT checkpoint $SFT_MODEL (SFT_MODEL)"
  cp -r "$SFT_MODEL" "$model"
else
  moe-init --preset tiny --seed "$seed" -o "$model" -q
  say "SFT warm-up: $sft_steps steps of $sft_batch generated Countdown solutions"
  moe-data countdown -q -n $((sft_steps * sft_batch < 50000 ? sft_steps * sft_batch : 50000)) --solutions \
      --seed "$seed" > "$work/sft.jsonl"
  moe-train-step -q -m "$model" "$work/sft.jsonl" --algo sft --steps "$sft_steps" --batch-size "$sft_batch" \
      --seed "$seed" --threads "$threads" --metrics "$work/sft.metrics.jsonl"
  say "SFT done: last loss $(tail -n 1 "$work/sft.metrics.jsonl" | jq -r '.loss | . * 1000 | round / 1000')"
fi

kl_args=()
if [ "$kl" != 0 ]; then
  rm -rf "$work/sft-model"
  cp -r "$model" "$work/sft-model"
  kl_args=(--kl-coef "$kl" --ref "$work/sft-model")
fi

# Held-out problems (the test split never occurs in any training set) and the RL training prompts.
moe-data countdown -q -n "$test_n" --split test --unique --seed "$seed" > "$work/test.jsonl"
moe-data countdown -q -n "$pool" --unique --seed $((seed + 1000)) > "$work/pool.jsonl"
head -n "$pool_eval" "$work/pool.jsonl" > "$work/train-eval.jsonl"

# evaluate NAME: greedy pass@1 and mean@k at the rollout temperature on both sets, as one JSON line
evaluate() {
  local out=$work/eval.$1.json
  moe-eval -q -m "$model" --task countdown --data "$work/test.jsonl" --data "$work/train-eval.jsonl" \
      -k "$k" --temperature "$temp" --max-new-tokens "$max_new" --seed "$seed" --threads "$threads" \
      --json > "$out"
  jq -c '[.datasets[] | {(.name | sub(".*/"; "") | sub("\\.jsonl$"; "")):
           {pass1: .["pass@1"], pass1_se: .["pass@1_se"], mean_at_k: .["mean@k"], mean_at_k_se: .["mean@k_se"]}}]
         | add' "$out"
}
say "evaluating before RL ($test_n held-out prompts, $(wc -l < "$work/train-eval.jsonl") RL training prompts, greedy + $k samples at T=$temp)"
before=$(evaluate before)
say "before RL: $before"

say "RL: $rl_steps steps x $prompts prompts x $g samples, bf16 rollout, RSPO + R3 (replay-rollout), lr $lr$([ "$kl" != 0 ] && echo ", k3 KL $kl to the SFT checkpoint")"
touch "$metrics"
for ((i = 0; i < rl_steps; i++)); do
  lines=$(wc -l < "$metrics")
  # this step's prompts: the next $prompts lines of the pool, cycling
  awk -v a=$((i * prompts % pool)) -v n="$prompts" -v p="$pool" \
      '{ l[NR - 1] = $0 } END { for (j = 0; j < n; j++) print l[(a + j) % p] }' "$work/pool.jsonl" \
    | moe-rollout -q -m "$model" -G "$g" --temperature "$temp" --max-new-tokens "$max_new" --dtype bf16 \
        --seed $((seed * 100000 + i)) --threads "$threads" --routing-out "$work/routes.zst" \
    | moe-reward -q --task countdown \
    | tee "$work/rewarded.zst" \
    | moe-train-step -q -m "$model" --algo rspo --router replay-rollout --routing "$work/routes.zst" \
        --lr "$lr" --seed "$((seed * 100000 + i))" --threads "$threads" --metrics "$metrics" ${kl_args[@]+"${kl_args[@]}"}
  reward=$(moe-route-dump show --jsonl "$work/rewarded.zst" | jq -s 'map(.reward) | add / length')
  step=$(tail -n +$((lines + 1)) "$metrics" | jq -s 'map(select(.kind == "summary")) | last | .step')
  echo "{\"kind\":\"eval\",\"step\":$step,\"reward\":$reward}" >> "$metrics"
  say "RL step $((i + 1))/$rl_steps: mean reward $(printf %.3f "$reward"), $(tail -n +$((lines + 1)) "$metrics" | jq -rs '
      (map(select(.kind == "summary")) | last) as $s | (map(select(.kind == "update"))) as $u |
      "mismatch/k3_kl \($s["mismatch/k3_kl"] * 1e6 | round / 1e6), routing/token_mismatch \($s["routing/token_mismatch"] * 1000 | round / 1000), gamma_mean \($u | map(.["router_shift/gamma_mean"]) | add / length * 1e4 | round / 1e4)"')"
done

say "evaluating after RL"
after=$(evaluate after)
say "after RL: $after"

echo "Countdown accuracy, tiny MoE, seed $seed ($((SECONDS - start)) s; $sft_steps SFT steps, $rl_steps RSPO+R3 steps, KL $kl)"
echo "(each figure +- its standard error: binomial for pass@1, across prompts of the per-prompt mean for mean@k)"
printf '%-36s %17s %17s %9s\n' "" "before RL" "after RL" "gain > SE"
for set in test train-eval; do
  name=$([ "$set" = test ] && echo "held-out test ($test_n)" || echo "RL train prompts ($(wc -l < "$work/train-eval.jsonl"))")
  for m in pass1 mean_at_k; do
    label=$([ "$m" = pass1 ] && echo "greedy pass@1" || echo "mean@$k T=$temp")
    # the gain counts when after - before exceeds the larger of the two standard errors
    jq -rn --argjson b "$before" --argjson a "$after" --arg s "$set" --arg m "$m" --arg row "$name $label" '
      $b[$s] as $x | $a[$s] as $y | ($x[$m + "_se"] // 0) as $bse | ($y[$m + "_se"] // 0) as $ase |
      [$row, $x[$m], $bse, $y[$m], $ase, (if $y[$m] - $x[$m] > ([$bse, $ase] | max) then "yes" else "no" end)]
      | map(tostring) | join("\t")' \
      | awk -F '\t' '{ printf "%-36s %7.3f +- %.3f %7.3f +- %.3f %9s\n", $1, $2, $3, $4, $5, $6 }'
  done
done
echo "metrics: $metrics; evals: $work/eval.before.json $work/eval.after.json" >&2
