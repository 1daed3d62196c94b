#!/usr/bin/env bash
# The README's first command: installs dependencies, builds, and runs the embedded-default demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
export PATH="$PWD/build/bin:$PATH"
# libtorch's OpenMP threads spin-wait otherwise, which is very slow on a shared machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
exec bash shell_examples/demo.sh "$@"
