#!/usr/bin/env bash
# The stability study as a declared grid: every configuration of a grid file, for every seed of it, is one
# RL run on Countdown from the seed's SFT checkpoint, with the same prompts and sampling seeds at step i in
# every run of that seed, bf16 rollouts (train-inference mismatch on) and --mini-batches updates per step
# (off-policy after the first); then `moe-eval report` over all runs and a summary across seeds.
#
#   compare.sh [--grid FILE] [--smoke] [--seeds "S ..."] [--runs NAME,...] [--steps N] [--prompts P] [-G G]
#              [--mini-batches K] [--lr X] [--temperature T] [--eval-every E] [--eval-n N] [--eval-k K]
#              [--sft-steps S] [--preset NAME] [--model SFT_DIR] [--jobs J] [-o OUT]
#
# The grid file (default shell_examples/grids/study.grid): '#' comments, one line "seeds S1 S2 ..." and one
# line per configuration, "NAME moe-train-step options...", e.g. "rspo-pre --algo rspo --rs-apply pre-clip".
# A configuration that gives its own --mini-batches or --lr overrides the global one (grids/regime.grid).
# Two options of a line go to its rollouts, not to moe-train-step: --rollout-dtype (bf16 by default; f32
# takes the bf16 train-inference mismatch away) and --max-new-tokens (the response length of its rollouts;
# held-out evaluations keep compare.sh's 24, so runs stay comparable) (grids/drivers.grid).
# --seeds and --runs narrow or replace the grid's seeds and configurations.
# Defaults (the study, in the regime grids/regime.grid found: plain GRPO degrades there): 60 steps of 16
# prompts x 8 samples, 8 mini-batches (7 of every 8 updates off-policy), lr 3e-4, T 1.0, held-out eval of
# 200 test prompts (greedy + 8 samples) every 20 steps, SFT checkpoint per seed: moe-init --preset top1
# (8 experts, top-1) and 1200 SFT steps (batch 128) unless --model gives one checkpoint for all seeds; 1 job
# at a time, OUT = compare-out. Every program runs with --threads 1.
# Size of the default study: 14 configurations x 3 seeds = 42 runs of 60 steps, about 3 minutes of one core
# each (the regime grid's 6 runs took 560 s of wall clock at --jobs 2), so about 65 min at --jobs 2 on 2
# cores plus 3 SFT checkpoints of about 3 min.
# --smoke: the grid shell_examples/grids/smoke.grid (unless --grid) at 2 steps of 4 prompts x 4 samples,
# 10 SFT steps, eval of 4 prompts x 2 samples: checks the machinery in seconds, figures meaningless.
#
# Resuming: a run whose OUT/s<SEED>/<NAME>/done matches its configuration and sizes and whose
# metrics.jsonl holds all its steps is skipped; any other run is started again from its SFT checkpoint.
# So rerunning the same command after an interruption finishes only what is missing.
# Raw data kept per run: OUT/s<SEED>/<NAME>/metrics.jsonl (moe-train-step's lines plus, per step,
# {"kind":"eval","step",reward} and every E steps val/accuracy (greedy pass@1), val/mean_at_k and their
# standard errors val/accuracy_se, val/mean_at_k_se). OUT/report/ has report.md and the plots (moe-eval
# report --group: each seed a thin line, each configuration's mean across seeds a thick one);
# OUT/summary.md (also on stdout) one line per run and one per configuration across seeds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
grid="" smoke=0 seeds="" runs="" out=compare-out jobs=1 sft="" preset=top1 max_new=24
steps="" prompts="" g="" mb="" lr="" temp="" every="" eval_n="" eval_k="" sft_steps=""
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) smoke=1; shift; continue ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  esac
  v=${2:-}
  [ -n "$v" ] || { echo "compare.sh: $1 needs a value (try --help)" >&2; exit 2; }
  case $1 in
    --grid) grid=$v ;; --seeds|--seed) seeds=$v ;; --runs) runs=$v ;;
    --steps) steps=$v ;; --prompts) prompts=$v ;; -G) g=$v ;; --mini-batches) mb=$v ;; --lr) lr=$v ;;
    --temperature) temp=$v ;; --eval-every) every=$v ;; --eval-n) eval_n=$v ;; --eval-k) eval_k=$v ;;
    --sft-steps) sft_steps=$v ;; --preset) preset=$v ;; --model) sft=$v ;; --jobs) jobs=$v ;; -o) out=$v ;;
    *) echo "compare.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift 2
done
if [ "$smoke" = 1 ]; then
  : "${grid:=$here/grids/smoke.grid}" "${steps:=2}" "${prompts:=4}" "${g:=4}" "${sft_steps:=10}" \
    "${eval_n:=4}" "${eval_k:=2}" "${every:=2}"
fi
: "${grid:=$here/grids/study.grid}" "${steps:=60}" "${prompts:=16}" "${g:=8}" "${mb:=8}" "${lr:=3e-4}" \
  "${temp:=1.0}" "${every:=20}" "${eval_n:=200}" "${eval_k:=8}" "${sft_steps:=1200}"
for tool in moe-init moe-data moe-train-step moe-rollout moe-reward moe-eval moe-route-dump jq; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool not found on PATH" >&2; exit 1; }
done
[ -f "$grid" ] || { echo "compare.sh: no grid file '$grid'" >&2; exit 2; }

# The grid: configurations "NAME OPTIONS..." and the seeds line.
configs=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$grid" | awk 'NF && $1 != "seeds"')
[ -n "$seeds" ] || seeds=$(sed 's/#.*//' "$grid" | awk '$1 == "seeds" { $1 = ""; print }')
seeds=$(echo $seeds)
[ -n "$seeds" ] || { echo "compare.sh: $grid declares no seeds (a line 'seeds 1 2 3') and --seeds is not given" >&2; exit 2; }
dups=$(awk '{ print $1 }' <<<"$configs" | sort | uniq -d)
[ -z "$dups" ] || { echo "compare.sh: $grid: configuration names repeat: $dups" >&2; exit 2; }
if [ -n "$runs" ]; then
  configs=$(awk -v want=",$runs," 'index(want, "," $1 ",")' <<<"$configs")
fi
[ -n "$configs" ] || { echo "compare.sh: no configuration to run (grid $grid, --runs '$runs')" >&2; exit 2; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
n_conf=$(wc -l <<<"$configs")
echo "compare: $grid -> $out; $n_conf configurations x seeds $seeds; $steps steps x $prompts prompts x $g samples, $mb mini-batches, lr $lr" >&2
start=$SECONDS
say() { echo "compare [$((SECONDS - start))s]: $*" >&2; }

# sft_for SEED: the SFT checkpoint of a seed (made once, reused on resume)
sft_for() {
  if [ -n "$sft" ]; then echo "$sft"; return; fi
  local d=$out/s$1/sft-$preset-$sft_steps
  if [ ! -f "$d/model.safetensors" ]; then
    say "seed $1: SFT checkpoint: moe-init --preset $preset, $sft_steps SFT steps (batch 128)"
    rm -rf "$d.tmp"; mkdir -p "$out/s$1"
    moe-init -q --preset "$preset" --seed "$1" -o "$d.tmp"
    moe-data countdown -q -n $((sft_steps * 128 < 50000 ? sft_steps * 128 : 50000)) --solutions --seed "$1" \
      | moe-train-step -q -m "$d.tmp" --algo sft --steps "$sft_steps" --batch-size 128 --seed "$1" --threads 1 \
          --metrics "$d.tmp/sft.metrics.jsonl"
    mv "$d.tmp" "$d"
    rm -f "$d.tmp.lock"  # moe-train-step's lock file beside the directory it trained
  fi
  echo "$d"
}

# signature SEED OPTIONS...: what a finished run's done file must hold for it to be skipped
signature() {
  local s=$1; shift
  echo "seed=$s steps=$steps prompts=$prompts G=$g mini-batches=$mb lr=$lr T=$temp eval-every=$every" \
       "eval-n=$eval_n eval-k=$eval_k sft=${sft:-$preset/$sft_steps} options=$*"
}
# complete DIR SEED OPTIONS...: the run in DIR finished with this signature and all its steps
complete() {
  local dir=$1; shift
  [ -f "$dir/done" ] && [ -f "$dir/metrics.jsonl" ] || return 1
  [ "$(cat "$dir/done")" = "$(signature "$@")" ] || return 1
  [ "$(jq -s 'map(select(.kind == "summary")) | length' "$dir/metrics.jsonl")" -eq "$steps" ]
}

# run SEED NAME OPTIONS...: one RL run from the seed's SFT checkpoint into $out/s$SEED/$NAME
run() {
  local seed=$1 name=$2; shift 2
  local dir=$out/s$seed/$name m=$out/s$seed/$name/metrics.jsonl sft_dir
  # the line's rollout options (see the header); the rest goes to moe-train-step
  local line=("$@") rdtype=bf16 rnew=$max_new targs=()
  while [ $# -gt 0 ]; do
    case $1 in
      --rollout-dtype) rdtype=${2:?--rollout-dtype needs a value}; shift 2 ;;
      --max-new-tokens) rnew=${2:?--max-new-tokens needs a value}; shift 2 ;;
      *) targs+=("$1"); shift ;;
    esac
  done
  set -- ${targs[@]+"${targs[@]}"}
  sft_dir=$(sft_for "$seed")
  rm -rf "$dir"; mkdir -p "$dir"
  cp -r "$sft_dir" "$dir/model"
  local sft_step
  sft_step=$(jq '.global_step // 0' "$dir/model/trainer_state.json")
  # val STEP: held-out greedy pass@1 and sampled mean@k with their standard errors, as an eval line
  val() {
    moe-eval -q -m "$dir/model" --task countdown --data "$out/s$seed/test.jsonl" -k "$eval_k" \
        --temperature "$temp" --max-new-tokens "$max_new" --seed "$seed" --threads 1 --json \
      | jq -c --argjson step "$1" '{kind: "eval", step: $step, "val/accuracy": .overall["pass@1"],
          "val/accuracy_se": .overall["pass@1_se"], "val/mean_at_k": .overall["mean@k"],
          "val/mean_at_k_se": .overall["mean@k_se"]}' \
      >> "$m"
  }
  # --mini-batches and --lr: the configuration's own when its line gives them (a sweep), else the global ones
  local defaults=()
  case " $* " in *" --mini-batches "*) ;; *) defaults+=(--mini-batches "$mb") ;; esac
  case " $* " in *" --lr "*) ;; *) defaults+=(--lr "$lr") ;; esac
  touch "$m"
  val "$sft_step"
  local i lines step reward
  for ((i = 0; i < steps; i++)); do
    lines=$(wc -l < "$m")
    # same prompts and rollout seed for every run of this seed at step i (the policies differ after step 0)
    moe-data countdown -q -n "$prompts" --seed $((seed * 100000 + i)) \
      | moe-rollout -q -m "$dir/model" -G "$g" --temperature "$temp" --max-new-tokens "$rnew" --dtype "$rdtype" \
          --seed $((seed * 100000 + i)) --threads 1 --routing-out "$dir/routes.zst" \
      | moe-reward -q --task countdown \
      | tee "$dir/rewarded.zst" \
      | moe-train-step -q -m "$dir/model" "$@" --routing "$dir/routes.zst" "${defaults[@]}" \
          --seed $((seed * 100000 + i)) --threads 1 --metrics "$m"
    reward=$(moe-route-dump show --jsonl "$dir/rewarded.zst" | jq -s 'map(.reward) | add / length')
    step=$(tail -n +$((lines + 1)) "$m" | jq -s 'map(select(.kind == "summary")) | last | .step')
    echo "{\"kind\":\"eval\",\"step\":$step,\"reward\":$reward}" >> "$m"
    if (((i + 1) % every == 0 || i + 1 == steps)); then val "$step"; fi
    say "s$seed/$name step $((i + 1))/$steps: reward $(printf %.3f "$reward")$(tail -n 1 "$m" \
        | jq -r 'if .["val/accuracy"] then ", val/accuracy \(.["val/accuracy"]), val/mean_at_k \(.["val/mean_at_k"])" else "" end')"
  done
  rm -rf "$dir/routes.zst" "$dir/rewarded.zst" "$dir/model" "$dir/model.lock"  # the metrics are the record; models are large
  signature "$seed" "${line[@]}" > "$dir/done"
}

# SFT checkpoints and test sets first, up to --jobs seeds at a time (parallel runs of a seed then share them)
sft_pids=()
for s in $seeds; do
  mkdir -p "$out/s$s"
  moe-data countdown -q -n "$eval_n" --split test --unique --seed "$s" > "$out/s$s/test.jsonl"
  need=0
  while read -r name opts; do
    # shellcheck disable=SC2086  # opts are words
    complete "$out/s$s/$name" "$s" $opts || need=1
  done <<<"$configs"
  [ "$need" = 0 ] && continue
  sft_for "$s" > /dev/null &
  sft_pids+=($!)
  if [ "${#sft_pids[@]}" -ge "$jobs" ]; then
    wait "${sft_pids[0]}" || { echo "compare.sh: an SFT checkpoint failed" >&2; exit 1; }
    sft_pids=("${sft_pids[@]:1}")
  fi
done
for p in "${sft_pids[@]}"; do
  wait "$p" || { echo "compare.sh: an SFT checkpoint failed" >&2; exit 1; }
done

pids=() names=() skipped=0 started=0
# a failed run stops the others (their background jobs would otherwise outlive this script)
fail() { echo "compare.sh: run $1 failed" >&2; [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null; exit 1; }
for s in $seeds; do
  while read -r name opts; do
    # shellcheck disable=SC2086
    if complete "$out/s$s/$name" "$s" $opts; then
      skipped=$((skipped + 1)); continue
    fi
    started=$((started + 1))
    # shellcheck disable=SC2086
    run "$s" "$name" $opts &
    pids+=($!) names+=("s$s/$name")
    if [ "${#pids[@]}" -ge "$jobs" ]; then
      wait "${pids[0]}" || fail "${names[0]}"
      pids=("${pids[@]:1}") names=("${names[@]:1}")
    fi
  done <<<"$configs"
done
for j in "${!pids[@]}"; do
  wait "${pids[$j]}" || fail "${names[$j]}"
done
say "runs: $started started, $skipped already complete (skipped)"

files=() labels=()
for s in $seeds; do
  while read -r name _; do files+=("$out/s$s/$name/metrics.jsonl"); labels+=(--label "$name/s$s"); done <<<"$configs"
done
moe-eval report -q --group "${files[@]}" "${labels[@]}" --metric val/mean_at_k --metric mismatch/kl \
  --metric routing/layer_mismatch --metric router_shift/floor_frac -o "$out/report"

# One line per run: held-out accuracy before -> after, training reward of the first and last 10 steps,
# and step means of the stability metrics (summary lines: whole-step mismatch and routing; update lines:
# clipping, router shift), the first and last entropy and the largest gradient norm.
per_run='
  def mean: if length == 0 then null else add / length end;
  (map(select(.["val/accuracy"] != null))) as $v | (map(select(.reward != null) | .reward)) as $r |
  (map(select(.kind == "summary"))) as $s | (map(select(.kind == "update"))) as $u |
  {acc0: $v[0]["val/accuracy"], acc: $v[-1]["val/accuracy"], acc_se: $v[-1]["val/accuracy_se"],
   mk0: $v[0]["val/mean_at_k"], mk: $v[-1]["val/mean_at_k"], mk_se: $v[-1]["val/mean_at_k_se"],
   r0: ($r[:10] | mean), r1: ($r[-10:] | mean),
   k3: ($s | map(.["mismatch/k3_kl"] // empty) | mean), tm: ($s | map(.["routing/token_mismatch"] // empty) | mean),
   clip: ($u | map(.pg_clipfrac // empty) | mean), gamma: ($u | map(.["router_shift/gamma_mean"] // empty) | mean),
   ent0: $u[0].entropy, ent1: $u[-1].entropy, gmax: ($u | map(.grad_norm) | max)}'
fmt='def r3: if . == null then "n/a" else (. * 1000 | round / 1000 | tostring) end;
     def sci: if . == null then "n/a" else (. * 1e7 | round / 1e7 | tostring) end;'
{
  echo "Per run (held-out figures: first and last evaluation; +- the standard error over the test problems):"
  echo
  echo "| run | val/accuracy (greedy) | val/mean_at_k | train reward (first -> last 10 steps) | mismatch/k3_kl | routing/token_mismatch | pg_clipfrac | gamma_mean | entropy | max grad_norm |"
  echo "|---|---|---|---|---:|---:|---:|---:|---|---:|"
  for s in $seeds; do
    while read -r name _; do
      jq -rs --arg run "$name/s$s" "$fmt $per_run"' |
        "| \($run) | \(.acc0 | r3) -> \(.acc | r3) +- \(.acc_se | r3) | \(.mk0 | r3) -> \(.mk | r3) +- \(.mk_se | r3)" +
        " | \(.r0 | r3) -> \(.r1 | r3) | \(.k3 | sci) | \(.tm | r3) | \(.clip | r3) | \(.gamma | r3)" +
        " | \(.ent0 | r3) -> \(.ent1 | r3) | \(.gmax | r3) |"' "$out/s$s/$name/metrics.jsonl"
    done <<<"$configs"
  done
  echo
  echo "Per configuration across seeds ($seeds): mean [min, max] of each run's figure."
  echo
  echo "| configuration | seeds | val/accuracy gain | final val/accuracy | val/mean_at_k gain | final val/mean_at_k | train reward, last 10 steps | gamma_mean | max grad_norm |"
  echo "|---|---:|---|---|---|---|---|---|---|"
  while read -r name _; do
    for s in $seeds; do jq -s "$per_run" "$out/s$s/$name/metrics.jsonl"; done \
      | jq -rs --arg name "$name" "$fmt"'
          def gain(a; b): if a != null and b != null then a - b else null end;
          def agg(f): map(f) | map(select(. != null)) |
            if length == 0 then "n/a" else "\(add / length | r3) [\(min | r3), \(max | r3)]" end;
          "| \($name) | \(length) | \(agg(gain(.acc; .acc0))) | \(agg(.acc)) | \(agg(gain(.mk; .mk0))) | \(agg(.mk))" +
          " | \(agg(.r1)) | \(agg(.gamma)) | \(agg(.gmax)) |"'
  done <<<"$configs"
} > "$out/summary.md"
cat "$out/summary.md"
say "done: $out/summary.md, $out/report/report.md"
