#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, and runs every test (Catch2 unit tests and
# Bats CLI tests, all registered with CTest), against each libtorch of MOEKIT_TEST_TORCH:
#   debian  Debian's libtorch 1.13 (CPU), build/
#   pypi    the PyPI torch wheel's libtorch (CUDA + NCCL build; its tests run on the CPU), build-pypi/
# Default: debian. MOEKIT_TEST_TORCH="debian pypi" tests both; the wheel's venv (~5 GB) and ccache persist
# between runs on one machine (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Every fuzz target for 10 s on its committed corpus (about a minute): a crash fails CI.
bash scripts/fuzz.sh --ci
jobs=$(nproc 2>/dev/null || echo 2)
for kind in ${MOEKIT_TEST_TORCH:-debian}; do
  case "$kind" in
    debian) dir=build ;;
    pypi) dir=build-pypi ;;
    *) echo "test: unknown libtorch '$kind' in MOEKIT_TEST_TORCH (expected debian and/or pypi)" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  echo "test: building against the $kind libtorch into $dir/" >&2
  MOEKIT_BUILD_DIR=$dir bash scripts/build.sh --torch "$kind"
  built=$(date +%s)
  echo "test: running the suite against the $kind libtorch" >&2
  # Idle OpenMP threads sleep instead of spinning on 2 cores shared by -j tests.
  (cd "$dir" && OMP_WAIT_POLICY=passive ctest --output-on-failure -j "$jobs")
  echo "test: $kind: build $((built - start)) s, tests $(($(date +%s) - built)) s" >&2
done
