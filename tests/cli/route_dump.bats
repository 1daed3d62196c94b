#!/usr/bin/env bats
# moe-route-dump through real pipes, with broken files, closed readers and full disks.

setup() {
  load common
  setup_common
  GEN=moe_gen_routing
}

gen_pair() {  # two routing streams of the same sequences; B has 10% of (position, layer) rows perturbed
  $GEN --records 200 --positions 50 --layers 4 --experts 16 --top-k 2 -o "$TMP/a.zst"
  $GEN --records 200 --positions 50 --layers 4 --experts 16 --top-k 2 --perturb 0.1 -o "$TMP/b.zst"
}

json_get() {  # json_get FILE EXPR: prints python's value of EXPR over the parsed object `j`
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

@test "show reads a real pipe and '-'" {
  run bash -c "$GEN --records 3 --positions 4 --flush-every 1 | moe-route-dump show -"
  [ "$status" -eq 0 ]
  [ "$(grep -c '^id ' <<<"$output")" -eq 3 ]
  [ "$(grep -c '^  pos ' <<<"$output")" -eq 12 ]
  run bash -c "$GEN --records 3 | moe-route-dump show"
  [ "$status" -eq 0 ]
  [ "$(grep -c '^id ' <<<"$output")" -eq 3 ]
}

@test "show --jsonl emits one JSON object per record, --id and --layer select" {
  $GEN --records 5 --positions 3 --layers 4 -o "$TMP/r.zst"
  run bash -c "moe-route-dump show --jsonl --id 1 --id 3 --layer 2 '$TMP/r.zst' > '$TMP/out.jsonl'"
  [ "$status" -eq 0 ]
  [ "$(wc -l < "$TMP/out.jsonl")" -eq 2 ]
  run python3 -c "
import json,sys
recs=[json.loads(l) for l in open(sys.argv[1])]
assert [r['id'] for r in recs]==[1,3], recs
assert all(r['layers']==[2] and len(r['experts'])==3 and len(r['experts'][0])==1 and len(r['experts'][0][0])==2 for r in recs)
assert all(len(r['probs'][0][0])==2 for r in recs)
" "$TMP/out.jsonl"
  [ "$status" -eq 0 ]
  run moe-route-dump show --layer 9 "$TMP/r.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"layer 9 is not in this stream"* ]]
}

@test "show --header prints the header as JSON" {
  $GEN --records 1 --experts 300 -o "$TMP/r.zst"
  run moe-route-dump show --header "$TMP/r.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *'"magic":"moekit"'* ]]
  [[ "$output" == *'"index_dtype":"u16"'* ]]
  [[ "$output" == *'"program":"moe_gen_routing"'* ]]
}

@test "show and stats read rollout streams too" {
  $GEN --kind rollout --records 8 -o "$TMP/ro.zst"
  run moe-route-dump show "$TMP/ro.zst"
  [ "$status" -eq 0 ]
  [ "$(grep -c '^id ' <<<"$output")" -eq 8 ]
  run moe-route-dump show --jsonl --id 2 "$TMP/ro.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *'"prompt_text":"prompt 2"'* ]]
  run moe-route-dump stats --json "$TMP/ro.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *'"records":8'* ]]
  run moe-route-dump diff "$TMP/ro.zst" "$TMP/ro.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"expected a routing stream, found rollout"* ]]
}

@test "every broken file in tests/data/bad: exit 1 naming the file, for every subcommand" {
  $GEN --records 3 --layers 2 --experts 8 -o "$TMP/good.zst"
  n=0
  for f in "$DATA"/bad/*; do
    case "$f" in *.md) continue ;; esac
    n=$((n + 1))
    for cmd in "show" "show --jsonl" "stats" "stats --json" "diff $TMP/good.zst" "diff -"; do
      if [ "$cmd" = "diff -" ]; then
        run bash -c "moe-route-dump diff - '$f' < '$TMP/good.zst'"
      else
        run moe-route-dump $cmd "$f"
      fi
      if [ "$status" -ne 1 ] || [[ "$output" != *"$f"* ]]; then
        echo "moe-route-dump $cmd $f: status $status: $output"
        return 1
      fi
    done
    # also through a pipe: the name is then <stdin>
    run bash -c "moe-route-dump show < '$f'"
    [ "$status" -eq 1 ]
    [[ "$output" == *"<stdin>"* ]]
  done
  [ "$n" -ge 13 ]
}

@test "u16 indices, f32 and absent probabilities work end to end" {
  for opts in "--index-dtype u16 --prob-dtype f32" "--experts 1000 --prob-dtype none" "--prob-dtype f16"; do
    $GEN --records 5 --positions 6 --layers 3 $opts -o "$TMP/a.zst"
    $GEN --records 5 --positions 6 --layers 3 $opts --perturb 1 -o "$TMP/b.zst"
    run moe-route-dump stats --json "$TMP/a.zst"
    [ "$status" -eq 0 ]
    [ "$(json_get <(echo "$output") "j['positions']")" = "30" ]
    run bash -c "moe-route-dump diff --json '$TMP/a.zst' '$TMP/b.zst' > '$TMP/d.json'"
    [ "$status" -eq 0 ]
    # every row perturbed: every (token, layer) pair differs
    [ "$(json_get "$TMP/d.json" "j['overall']['mismatch'], j['token_mismatch']")" = "1.0 1.0" ]
    run moe-route-dump show --jsonl --id 4 "$TMP/b.zst"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"id":4'* ]]
  done
  run moe-route-dump show --header "$TMP/a.zst"
  [[ "$output" == *'"prob_dtype":"f16"'* ]]
}

@test "truncated and trailer-less streams from the generator are errors" {
  run bash -c "$GEN --records 50 --no-trailer | moe-route-dump stats"
  [ "$status" -eq 1 ]
  [[ "$output" == *"missing trailer"* ]]
  run bash -c "$GEN --records 50 --truncate 300 | moe-route-dump show >/dev/null"
  [ "$status" -eq 1 ]
  [[ "$output" == *"truncated"* ]]
}

@test "| head -1 stops quietly with exit 0" {
  $GEN --records 2000 --positions 20 -o "$TMP/big.zst"
  run bash -c "moe-route-dump show '$TMP/big.zst' 2>'$TMP/err' | head -1; echo \"rc=\${PIPESTATUS[0]}\""
  [[ "$output" == *"rc=0"* ]]
  [ ! -s "$TMP/err" ]
  run bash -c "moe-route-dump show --jsonl '$TMP/big.zst' 2>'$TMP/err' | head -c 10 >/dev/null; echo \"rc=\${PIPESTATUS[0]}\""
  [[ "$output" == *"rc=0"* ]]
  [ ! -s "$TMP/err" ]
}

@test "> /dev/full exits 1 with a message" {
  $GEN --records 20 -o "$TMP/r.zst"
  run bash -c "moe-route-dump show '$TMP/r.zst' > /dev/full"
  [ "$status" -eq 1 ]
  [[ "$output" == *"No space left on device"* ]]
  run bash -c "moe-route-dump stats --json '$TMP/r.zst' > /dev/full"
  [ "$status" -eq 1 ]
}

@test "stats: loads sum to positions x k, JSON parses, entropy bounded by ln k" {
  $GEN --records 40 --positions 25 --layers 3 --experts 16 --top-k 4 -o "$TMP/r.zst"
  run bash -c "moe-route-dump stats --json '$TMP/r.zst' > '$TMP/s.json'"
  [ "$status" -eq 0 ]
  run python3 -c "
import json,sys,math
j=json.load(open(sys.argv[1]))
assert j['positions']==1000 and len(j['layers'])==3
for l in j['layers']:
    assert sum(l['counts'])==4000, l['counts']
    assert abs(sum(l['share'])-1)<1e-9
    assert 0 < l['entropy'] <= math.log(4)+1e-9
    assert 0.5 - 1e-3 <= l['topk_mass'] <= 0.95 + 1e-3
    assert l['cv'] > 0.2   # skewed popularity, not uniform
" "$TMP/s.json"
  [ "$status" -eq 0 ]
  run moe-route-dump stats "$TMP/r.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *"routing, 40 records, 1000 positions"* ]]
  $GEN --records 2 --prob-dtype none -o "$TMP/n.zst"
  run moe-route-dump stats --json "$TMP/n.zst"
  [ "$status" -eq 0 ]
  [[ "$output" == *'"entropy":null'* ]]
}

@test "diff: identical streams have no mismatch" {
  gen_pair
  run bash -c "moe-route-dump diff --json '$TMP/a.zst' '$TMP/a.zst' > '$TMP/d.json'"
  [ "$status" -eq 0 ]
  [ "$(json_get "$TMP/d.json" "j['token_mismatch'], j['overall']['jaccard'], j['overall']['prob_mad'], j['tokens_compared']")" = "0.0 1.0 0.0 10000" ]
  run moe-route-dump diff "$TMP/a.zst" "$TMP/a.zst" --fail-above 0
  [ "$status" -eq 0 ]
}

@test "diff: perturbed stream gives the known shares" {
  gen_pair
  run bash -c "moe-route-dump diff --json '$TMP/a.zst' '$TMP/b.zst' > '$TMP/d.json'"
  [ "$status" -eq 0 ]
  # 10% of rows differ in one of 2 experts: pair mismatch 0.1, Jaccard 0.9 + 0.1/3,
  # tokens with a differing layer 1 - 0.9^4 = 0.3439, mean differing layers 0.4.
  run python3 -c "
import json,sys
j=json.load(open(sys.argv[1]))
o=j['overall']
assert abs(o['mismatch']-0.1)<0.01, o
assert abs(o['jaccard']-(0.9+0.1/3))<0.005, o
assert abs(j['token_mismatch']-0.3439)<0.02, j['token_mismatch']
assert abs(j['mean_differing_layers']-0.4)<0.03, j['mean_differing_layers']
assert all(abs(l['mismatch']-0.1)<0.02 for l in j['layers'])
assert j['max_buffered_records']==0
" "$TMP/d.json"
  [ "$status" -eq 0 ]
  # --fail-above: exit 3 above the threshold, 0 below it
  run moe-route-dump diff "$TMP/a.zst" "$TMP/b.zst" --fail-above 0.2
  [ "$status" -eq 3 ]
  run moe-route-dump diff "$TMP/a.zst" "$TMP/b.zst" --fail-above 0.5
  [ "$status" -eq 0 ]
  [[ "$output" == *"tokens with >= 1 differing layer: 0.3"* ]]
}

@test "diff: records in one file only are counted, out-of-order ids are joined" {
  $GEN --records 20 --positions 10 -o "$TMP/a.zst"
  run bash -c "$GEN --records 25 --positions 10 --reverse | moe-route-dump diff --json '$TMP/a.zst' - > '$TMP/d.json'"
  [ "$status" -eq 0 ]
  [ "$(json_get "$TMP/d.json" "j['records_compared'], j['only_b']['records'], j['only_b']['positions'], j['only_a']['records'], j['token_mismatch']")" = "20 5 50 0 0.0" ]
  # different first position: only the overlapping positions are compared
  $GEN --records 20 --positions 10 --first-pos 4 -o "$TMP/c.zst"
  run bash -c "moe-route-dump diff --json '$TMP/a.zst' '$TMP/c.zst' > '$TMP/d.json'"
  [ "$status" -eq 0 ]
  [ "$(json_get "$TMP/d.json" "j['tokens_compared'], j['only_a']['positions'], j['only_b']['positions'], j['token_mismatch']")" = "120 80 80 0.0" ]
}

@test "diff: streams of different shapes are an error" {
  $GEN --records 2 --layers 4 -o "$TMP/a.zst"
  $GEN --records 2 --layers 3 -o "$TMP/b.zst"
  run moe-route-dump diff "$TMP/a.zst" "$TMP/b.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"not comparable: num_layers 4 vs 3"* ]]
  $GEN --records 2 --top-k 3 -o "$TMP/c.zst"
  run moe-route-dump diff "$TMP/a.zst" "$TMP/c.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"top_k"* ]]
}

@test "usage errors exit 2, --help and --version exit 0 on stdout" {
  run moe-route-dump
  [ "$status" -eq 2 ]
  run moe-route-dump frobnicate
  [ "$status" -eq 2 ]
  run moe-route-dump diff only-one.zst
  [ "$status" -eq 2 ]
  run moe-route-dump diff - -
  [ "$status" -eq 2 ]
  run moe-route-dump diff a b --fail-above 2
  [ "$status" -eq 2 ]
  run moe-route-dump show --bogus
  [ "$status" -eq 2 ]
  [[ "$output" == *"--help"* ]]
  run bash -c "moe-route-dump --help 2>/dev/null"
  [ "$status" -eq 0 ]
  [[ "$output" == *"show"*"stats"*"diff"* ]]
  run bash -c "moe-route-dump --version 2>/dev/null"
  [ "$status" -eq 0 ]
  [[ "$output" == *"moekit"* ]]
  run moe-route-dump show "$TMP/missing.zst"
  [ "$status" -eq 1 ]
  [[ "$output" == *"missing.zst: No such file"* ]]
}
