#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan + UBSan) into build-fuzz/ and runs each for N seconds
# on a working copy of its committed seed corpus (fuzz/corpus/<name>), one after the other.
#   scripts/fuzz.sh [-t SECONDS] [-o OUTDIR] [TARGET...]     (default: every target, 60 s each)
#   -c CPU_SECONDS: stop each target once it has used that much CPU time (SIGUSR1, a graceful libFuzzer exit)
#   instead of after -t seconds of wall time: on a shared machine under `nice -n 19`, wall time says little.
#   scripts/fuzz.sh --ci                                      (10 s each: about a minute in all)
#   --no-build: run the targets already built in OUTDIR (e.g. a copy made for a long run)
# Prints one line per target: executions, coverage (edges), features, corpus size, crashes. A crash, a
# leak, a timeout (> 10 s per input) or an out-of-memory (> 2 GB) leaves its input in OUTDIR/artifacts/ and
# makes the script exit 1. New corpus entries stay in OUTDIR/corpus/<name> (merge them into fuzz/corpus
# by hand with -merge=1 when they add coverage). Run long sessions under `nice -n 19`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
out=build-fuzz
nobuild=0
cpu_limit=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t) seconds="$2"; shift 2 ;;
    -c) cpu_limit="$2"; seconds=$((cpu_limit * 100)); shift 2 ;;
    -o) out="$2"; shift 2 ;;
    --ci) seconds=10; shift ;;
    --no-build) nobuild=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
if [ "$nobuild" -eq 0 ]; then
  if [ ! -f "$out/CMakeCache.txt" ]; then
    CC=clang CXX=clang++ cmake -S fuzz -B "$out" "${gen[@]}" "${launcher[@]}" >&2
  fi
  cmake --build "$out" -j "$(nproc 2>/dev/null || echo 2)" >&2
fi

if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/targets/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
mkdir -p "$out/artifacts" "$out/logs"
status=0
printf '%-18s %8s %8s %10s %7s %7s %7s %s\n' target wall_s cpu_s execs cov ft corpus crashes
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  [ -x "$out/$t" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  work="$out/corpus/$name"
  mkdir -p "$work"
  cp -n fuzz/corpus/"$name"/* "$work"/ 2>/dev/null || true
  log="$out/logs/$t.log"
  rc=0
  # -close_fd_mask=2: the code under test prints nothing; keep the fuzzer's own stderr quiet of it too.
  start=$(date +%s)
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
    bash -c 'trap "times >&3" EXIT; "$@"' cpu "$out/$t" "$work" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" >"$log" 2>&1 3>"$log.times" &
  runner=$!
  if [ "$cpu_limit" -gt 0 ]; then
    # Watch the fuzzer's own CPU time (utime + stime of /proc/PID/stat, in clock ticks).
    ( tck=$(getconf CLK_TCK); pid=
      while kill -0 "$runner" 2>/dev/null; do
        [ -n "$pid" ] || pid=$(pgrep -P "$runner" | head -1 || true)
        if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
          used=$(awk -v t="$tck" '{ sub(/^.*\) /, ""); print int(($12 + $13) / t) }' "/proc/$pid/stat" 2>/dev/null || echo 0)
          if [ "${used:-0}" -ge "$cpu_limit" ]; then kill -USR1 "$pid" 2>/dev/null || true; break; fi
        fi
        sleep 5
      done ) &
    watcher=$!
  fi
  wait "$runner" || rc=$?
  [ "$cpu_limit" -gt 0 ] && { kill "$watcher" 2>/dev/null || true; wait "$watcher" 2>/dev/null || true; }
  wall=$(( $(date +%s) - start ))
  # `times` of the wrapper shell: its children's user and system CPU time (second line), e.g. "1m2.5s 0m0.3s".
  cpu=$(sed -n 2p "$log.times" | awk '{ s = 0; for (i = 1; i <= 2; ++i) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.0f", s }')
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  ncorpus=$(ls "$work" | wc -l)
  crashes=$(ls "$out/artifacts" | grep -c "^$t-" || true)
  printf '%-18s %8s %8s %10s %7s %7s %7s %s\n' "$t" "$wall" "${cpu:-?}" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$ncorpus" "$crashes"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t failed (exit $rc); see $log and $out/artifacts/" >&2
    grep -E 'ERROR|SUMMARY|runtime error' "$log" | head -5 >&2 || true
    status=1
  fi
done
exit $status
