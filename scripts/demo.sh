#!/usr/bin/env bash
# The README's first command: installs dependencies, builds, and runs the embedded-default demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
export PATH="$PWD/build/bin:$PATH"
exec bash shell_examples/demo.sh "$@"
