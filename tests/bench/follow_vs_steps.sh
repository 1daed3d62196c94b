#!/usr/bin/env bash
# N RL steps as N moe-train-step processes against one `moe-train-step --follow` over the same N streams, at
# the larger shape of issue 15 (hidden 1024, 8 layers, 64 experts top-8, vocab 256 as the synthetic rollouts declare: ~424 M parameters).
# Prints per step: wall seconds of the process (separate runs) and, from the summary lines, the step's
# compute (old pass + updates) and save; then fixed cost / compute for both ways. Prints numbers, never fails
# on a time. The model dir lives in DIR (default a new dir under /tmp; a tmpfs such as /dev/shm takes the
# disk out). Synthetic rollouts: 4 sequences of 8 + 28 tokens per stream.
#   tests/bench/follow_vs_steps.sh [steps=3] [threads=2] [dir]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
steps=${1:-3} threads=${2:-2}
bin=${MOEKIT_BIN:-$root/build/bin} tbin=${MOEKIT_TEST_BIN:-$root/build/test-bin}
export OMP_WAIT_POLICY=passive
work=$(mktemp -d "${3:-/tmp}/follow_vs_steps.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "follow_vs_steps: $steps steps, $threads thread(s), dir $work, $("$bin/moe-train-step" --version)"
"$bin/moe-init" --preset tiny -o "$work/tiny" -q
python3 - "$work" <<'PY'
import json, random, sys
w = sys.argv[1]
c = json.load(open(f"{w}/tiny/config.json"))
c.update(vocab_size=256, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
         head_dim=64, num_experts=64, num_experts_per_tok=8, moe_intermediate_size=256, intermediate_size=2048,
         max_position_embeddings=4096, tie_word_embeddings=False)
json.dump(c, open(f"{w}/config.json", "w"))
r = random.Random(5)
def txt(n): return "".join(r.choice("0123456789+-*/()= abcdefgh") for _ in range(n))
for s in range(64):
    with open(f"{w}/s{s}.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": txt(8), "response": txt(23), "group": i // 2, "id": i,
                                "reward": r.random()}) + "\n")
PY
"$bin/moe-init" --config "$work/config.json" -o "$work/m0" -q
for ((s = 0; s < steps; s++)); do
  "$tbin/moe_gen_rollouts" --response-key response "$work/s$s.jsonl" | "$bin/moe-reward" --task keep -q > "$work/s$s.zst"
done
summary() { grep '"kind":"summary"' "$1" | tail -1; }
field() { python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j[sys.argv[2]])' "$1" "$2"; }
# Separate processes.
cp -r "$work/m0" "$work/sep"
sep_wall=0 sep_compute=0 sep_save=0
for ((s = 0; s < steps; s++)); do
  t0=$(date +%s.%N)
  "$bin/moe-train-step" -m "$work/sep" --threads "$threads" --metrics "$work/sep.jsonl" "$work/s$s.zst" 2>/dev/null
  t1=$(date +%s.%N)
  l=$(summary "$work/sep.jsonl")
  c=$(python3 -c "import json; j=json.loads('''$l'''); print(j['time/old_pass'] + j['time/updates'])")
  sv=$(field "$l" time/save)
  w=$(python3 -c "print($t1 - $t0)")
  printf 'separate step %d: process %.2f s wall, compute %.2f s, save %.2f s, fixed (wall - compute) %.2f s\n' \
    "$s" "$w" "$c" "$sv" "$(python3 -c "print($w - $c)")"
  sep_wall=$(python3 -c "print($sep_wall + $w)") sep_compute=$(python3 -c "print($sep_compute + $c)") sep_save=$(python3 -c "print($sep_save + $sv)")
done
# One process.
cp -r "$work/m0" "$work/fol"
files=()
for ((s = 0; s < steps; s++)); do files+=("$work/s$s.zst"); done
t0=$(date +%s.%N)
cat "${files[@]}" | "$bin/moe-train-step" --follow -m "$work/fol" --threads "$threads" --metrics "$work/fol.jsonl" - 2>/dev/null
t1=$(date +%s.%N)
fol_wall=$(python3 -c "print($t1 - $t0)")
read -r fol_compute fol_save < <(python3 - "$work/fol.jsonl" <<'PY'
import json, sys
c = s = 0.0
for l in open(sys.argv[1]):
    j = json.loads(l)
    if j.get("kind") == "summary":
        c += j["time/old_pass"] + j["time/updates"]
        s += j["time/save"]
print(c, s)
PY
)
python3 - "$steps" "$sep_wall" "$sep_compute" "$sep_save" "$fol_wall" "$fol_compute" "$fol_save" <<'PY'
import sys
n, sw, sc, ss, fw, fc, fs = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"separate processes: {sw/n:.2f} s per step, compute {sc/n:.2f} s, fixed {((sw-sc)/n):.2f} s "
      f"(save {ss/n:.2f} s): fixed/compute {(sw-sc)/sc:.2f}")
print(f"--follow (1 process): {fw/n:.2f} s per step, compute {fc/n:.2f} s, fixed {((fw-fc)/n):.2f} s "
      f"(save {fs/n:.2f} s): fixed/compute {(fw-fc)/fc:.2f}")
PY
cmp <(cd "$work/sep" && sha256sum -- *) <(cd "$work/fol" && sha256sum -- *) && echo "checkpoints identical (sha256 of every file)"
