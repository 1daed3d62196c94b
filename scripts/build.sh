#!/usr/bin/env bash
# Configures and builds moekit (Ninja, ccache when present). Extra args go to cmake.
#   bash scripts/build.sh                 Debian's libtorch (CPU), into build/
#   bash scripts/build.sh --torch pypi    the libtorch inside the PyPI torch wheel (CUDA + NCCL), into build-pypi/
# The same choice through the environment: MOEKIT_TORCH=debian|pypi.
# For pypi the wheel is installed into a venv this script manages, MOEKIT_TORCH_VENV (default
# ~/.cache/moekit/venv-torch-$MOEKIT_TORCH_VERSION, reused across runs: the download is ~4 GB), or any venv
# that already has torch (point MOEKIT_TORCH_VENV at it). /usr/local/cuda (or CUDAToolkit_ROOT) is used for
# CMake's configuration only; headers and libraries of the CUDA runtime and NCCL come from the wheel.
# MOEKIT_BUILD_DIR overrides the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."

torch_kind="${MOEKIT_TORCH:-debian}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) torch_kind="${2:?--torch needs debian or pypi}"; shift 2 ;;
    --torch=*) torch_kind="${1#--torch=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
extra=()
case "$torch_kind" in
  debian)
    build="${MOEKIT_BUILD_DIR:-build}"
    ;;
  pypi)
    build="${MOEKIT_BUILD_DIR:-build-pypi}"
    version="${MOEKIT_TORCH_VERSION:-2.15.0}"
    venv="${MOEKIT_TORCH_VENV:-$HOME/.cache/moekit/venv-torch-$version}"
    if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
      echo "build: installing torch==$version from PyPI into $venv (several GB the first time)" >&2
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir "torch==$version" >&2
    fi
    torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
    site=$(dirname "$torch_dir")
    # Search the wheel's prefix first: Torch's config finds libtorch.so/libc10.so through find_library,
    # which otherwise prefers Debian's copies in the system directories.
    extra+=("-DCMAKE_PREFIX_PATH=$torch_dir/share/cmake;$torch_dir" "-DMOEKIT_TORCH_SITE=$site")
    cuda_root="${CUDAToolkit_ROOT:-/usr/local/cuda}"
    [ -d "$cuda_root" ] && extra+=("-DCUDAToolkit_ROOT=$cuda_root")
    ;;
  *) echo "build: unknown --torch '$torch_kind' (expected debian or pypi)" >&2; exit 2 ;;
esac

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${extra[@]}" "${args[@]}" >&2
fi
jobs=$(nproc 2>/dev/null || echo 2)
cmake --build "$build" -j "$jobs" >&2
