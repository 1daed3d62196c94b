#!/usr/bin/env bash
# Configures and builds moekit into build/ (Ninja, ccache when present). Extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >&2
fi
jobs=$(nproc 2>/dev/null || echo 2)
cmake --build build -j "$jobs" >&2
