#!/usr/bin/env bash
# test: --steps 2 --prompts 4 -G 4 --sft-steps 10 --eval-n 4 --eval-every 2 --runs grpo-free,rspo-r3,rspo-freeze
# The stability study: from one SFT checkpoint, with the same prompts and seeds, RL-train Countdown with
#   grpo, gspo, gmpo, rspo, grpo + --router-shift   each with --router free and --router replay-rollout (R3)
#   rspo with --router freeze, rspo with --router copy-old-logits   (the RSPO paper's router ablations)
# always from a bf16 rollout (train-inference mismatch on) and with --mini-batches updates per step
# (off-policy after the first), then `moe-eval report` over all runs' metrics.
#
#   compare.sh [--steps N] [--prompts P] [-G G] [--mini-batches K] [--lr X] [--temperature T]
#              [--eval-every E] [--eval-n N] [--eval-k K] [--sft-steps S] [--model SFT_DIR]
#              [--seed S] [--jobs J] [--runs NAME,...] [-o OUT]
#
# Defaults: 30 steps of 16 prompts x 8 samples, 2 mini-batches, lr 1e-4, T 1.0, held-out eval of 100 test
# prompts (greedy + 4 samples) every 5 steps, 1200 SFT steps unless --model gives an SFT checkpoint,
# seed 1, 1 job at a time, OUT = compare-out. Every program runs with --threads 1.
# OUT/<run>/metrics.jsonl gets moe-train-step's lines plus, per step, {"kind":"eval","step",reward} and
# every E steps val/accuracy (greedy pass@1) and val/mean_at_k; OUT/report/ has report.md and the plots;
# OUT/summary.md (also on stdout) one table line per run.
set -euo pipefail

steps=30 prompts=16 g=8 mb=2 lr=1e-4 temp=1.0 every=5 eval_n=100 eval_k=4 sft_steps=1200 sft=""
seed=1 jobs=1 runs="" out=compare-out max_new=24
while [ $# -gt 0 ]; do
  v=${2:-}
  case $1 in
    --steps) steps=$v ;; --prompts) prompts=$v ;; -G) g=$v ;; --mini-batches) mb=$v ;; --lr) lr=$v ;;
    --temperature) temp=$v ;; --eval-every) every=$v ;; --eval-n) eval_n=$v ;; --eval-k) eval_k=$v ;;
    --sft-steps) sft_steps=$v ;; --model) sft=$v ;; --seed) seed=$v ;; --jobs) jobs=$v ;; --runs) runs=$v ;;
    -o) out=$v ;;
    -h|--help) sed -n '3,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  [ -n "$v" ] || { echo "compare.sh: $1 needs a value" >&2; exit 2; }
  shift 2
done
for tool in moe-init moe-data moe-train-step moe-rollout moe-reward moe-eval moe-route-dump jq; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool not found on PATH" >&2; exit 1; }
done

# name  train-step options
all_runs="grpo-free      --algo grpo --router free
grpo-r3        --algo grpo --router replay-rollout
gspo-free      --algo gspo --router free
gspo-r3        --algo gspo --router replay-rollout
gmpo-free      --algo gmpo --router free
gmpo-r3        --algo gmpo --router replay-rollout
rspo-free      --algo rspo --router free
rspo-r3        --algo rspo --router replay-rollout
grpo+rs-free   --algo grpo --router-shift --router free
grpo+rs-r3     --algo grpo --router-shift --router replay-rollout
rspo-freeze    --algo rspo --router freeze
rspo-copy-old  --algo rspo --router copy-old-logits"
if [ -n "$runs" ]; then
  all_runs=$(awk -v want=",$runs," 'index(want, "," $1 ",")' <<<"$all_runs")
  [ -n "$all_runs" ] || { echo "compare.sh: no run matches --runs $runs" >&2; exit 2; }
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
echo "compare: writing to $out; seed $seed; $steps steps x $prompts prompts x $g samples, $mb mini-batches" >&2
start=$SECONDS
say() { echo "compare [$((SECONDS - start))s]: $*" >&2; }

if [ -z "$sft" ]; then
  sft=$out/sft
  if [ ! -f "$sft/model.safetensors" ]; then
    say "SFT checkpoint: moe-init --preset tiny, $sft_steps SFT steps (batch 128)"
    rm -rf "$sft.tmp"
    moe-init -q --preset tiny --seed "$seed" -o "$sft.tmp"
    moe-data countdown -q -n $((sft_steps * 128 < 50000 ? sft_steps * 128 : 50000)) --solutions --seed "$seed" \
      | moe-train-step -q -m "$sft.tmp" --algo sft --steps "$sft_steps" --batch-size 128 --seed "$seed" --threads 1
    mv "$sft.tmp" "$sft"
  else
    say "reusing the SFT checkpoint $sft"
  fi
fi
moe-data countdown -q -n "$eval_n" --split test --unique --seed "$seed" > "$out/test.jsonl"

# run NAME OPTIONS...: one RL run from the SFT checkpoint into $out/NAME
run() {
  local name=$1; shift
  local dir=$out/$name m=$out/$name/metrics.jsonl
  rm -rf "$dir"; mkdir -p "$dir"
  cp -r "$sft" "$dir/model"
  local sft_step
  sft_step=$(jq '.global_step // 0' "$dir/model/trainer_state.json")
  # val NAME STEP: held-out greedy pass@1 and sampled mean@k as an eval line of the metrics
  val() {
    moe-eval -q -m "$dir/model" --task countdown --data "$out/test.jsonl" -k "$eval_k" --temperature "$temp" \
        --max-new-tokens "$max_new" --seed "$seed" --threads 1 --json \
      | jq -c --argjson step "$1" \
          '{kind: "eval", step: $step, "val/accuracy": .overall["pass@1"], "val/mean_at_k": .overall["mean@k"]}' \
      >> "$m"
  }
  touch "$m"
  val "$sft_step"
  local i lines step reward
  for ((i = 0; i < steps; i++)); do
    lines=$(wc -l < "$m")
    # same prompts and rollout seed for every run at step i (the policies differ after step 0)
    moe-data countdown -q -n "$prompts" --seed $((seed * 100000 + i)) \
      | moe-rollout -q -m "$dir/model" -G "$g" --temperature "$temp" --max-new-tokens "$max_new" --dtype bf16 \
          --seed $((seed * 100000 + i)) --threads 1 --routing-out "$dir/routes.zst" \
      | moe-reward -q --task countdown \
      | tee "$dir/rewarded.zst" \
      | moe-train-step -q -m "$dir/model" "$@" --routing "$dir/routes.zst" --mini-batches "$mb" --lr "$lr" \
          --seed $((seed * 100000 + i)) --threads 1 --metrics "$m"
    reward=$(moe-route-dump show --jsonl "$dir/rewarded.zst" | jq -s 'map(.reward) | add / length')
    step=$(tail -n +$((lines + 1)) "$m" | jq -s 'map(select(.kind == "summary")) | last | .step')
    echo "{\"kind\":\"eval\",\"step\":$step,\"reward\":$reward}" >> "$m"
    if (((i + 1) % every == 0 || i + 1 == steps)); then val "$step"; fi
    say "$name step $((i + 1))/$steps: reward $(printf %.3f "$reward")$(tail -n 1 "$m" \
        | jq -r 'if .["val/accuracy"] then ", val/accuracy \(.["val/accuracy"]), val/mean_at_k \(.["val/mean_at_k"])" else "" end')"
  done
  rm -f "$dir/routes.zst" "$dir/rewarded.zst"
}

pids=() names=()
# a failed run stops the others (their background jobs would otherwise outlive this script)
fail() { echo "compare.sh: run $1 failed" >&2; [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null; exit 1; }
while read -r name opts; do
  # shellcheck disable=SC2086  # opts are words
  run "$name" $opts &
  pids+=($!) names+=("$name")
  if [ "${#pids[@]}" -ge "$jobs" ]; then
    wait "${pids[0]}" || fail "${names[0]}"
    pids=("${pids[@]:1}") names=("${names[@]:1}")
  fi
done <<<"$all_runs"
for j in "${!pids[@]}"; do
  wait "${pids[$j]}" || fail "${names[$j]}"
done

files=() labels=()
while read -r name _; do files+=("$out/$name/metrics.jsonl"); labels+=(--label "$name"); done <<<"$all_runs"
moe-eval report -q "${files[@]}" "${labels[@]}" --metric val/mean_at_k --metric mismatch/kl \
  --metric routing/layer_mismatch --metric router_shift/floor_frac -o "$out/report"

# One line per run: held-out accuracy before -> after, training reward of the first and last 10 steps,
# and step means of the stability metrics (summary lines: whole-step mismatch and routing; update lines:
# clipping, router shift), the last entropy and the largest gradient norm.
summary() {
  jq -rs --arg run "$1" '
    def r3: if . == null then "n/a" else (. * 1000 | round / 1000 | tostring) end;
    def sci: if . == null then "n/a" else (. * 1e7 | round / 1e7 | tostring) end;
    def mean: if length == 0 then null else add / length end;
    (map(select(.["val/accuracy"] != null))) as $v | (map(select(.reward != null) | .reward)) as $r |
    (map(select(.kind == "summary"))) as $s | (map(select(.kind == "update"))) as $u |
    "| \($run) | \($v[0]["val/accuracy"] | r3) -> \($v[-1]["val/accuracy"] | r3)" +
    " | \($v[0]["val/mean_at_k"] | r3) -> \($v[-1]["val/mean_at_k"] | r3)" +
    " | \($r[:10] | mean | r3) -> \($r[-10:] | mean | r3)" +
    " | \($s | map(.["mismatch/k3_kl"]) | mean | sci) | \($s | map(.["routing/token_mismatch"]) | mean | r3)" +
    " | \($u | map(.pg_clipfrac // empty) | mean | r3)" +
    " | \($u | map(.["router_shift/gamma_mean"] // empty) | mean | r3)" +
    " | \($u[0].entropy | r3) -> \($u[-1].entropy | r3) | \($u | map(.grad_norm) | max | r3) |"' "$2"
}
{
  echo "| run | val/accuracy (greedy) | val/mean_at_k | train reward (first -> last 10 steps) | mismatch/k3_kl | routing/token_mismatch | pg_clipfrac | gamma_mean | entropy | max grad_norm |"
  echo "|---|---|---|---|---:|---:|---:|---:|---|---:|"
  while read -r name _; do summary "$name" "$out/$name/metrics.jsonl"; done <<<"$all_runs"
} > "$out/summary.md"
cat "$out/summary.md"
say "done: $out/summary.md, $out/report/report.md"
