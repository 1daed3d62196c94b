#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, and runs every test (Catch2 unit tests and
# Bats CLI tests, all registered with CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
cd build
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)"
cd ..
# Every fuzz target for 10 s on its committed corpus (about a minute): a crash fails CI.
bash scripts/fuzz.sh --ci
