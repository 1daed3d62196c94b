#!/usr/bin/env bash
# Installs the Debian packages moekit builds and tests with. Idempotent; needs root (or sudo).
#   libtorch-dev libgloo-dev   the tensor library and c10d's Gloo backend (data parallel on CPU)
#   libopenblas0-openmp        fast BLAS for libtorch's CPU matmuls (the reference BLAS is ~20x slower)
#   libcli11-dev libmsgpack-cxx-dev libzstd-dev nlohmann-json3-dev   options, records, compression, JSON
#   libxxhash-dev              XXH3 checksums in stream trailers (fast, well kept; see formats/stream.md)
#   catch2 bats                unit and CLI tests
#   cmake ninja-build ccache g++ pkg-config   the build
#   zstd                       the reference decoder the stream benchmark compares against
#   gnuplot-nox                plots for 'moe-eval report'
#   jq                         JSON glue in shell_examples (eval lines, mean reward)
#   clang libclang-rt-dev      libFuzzer + ASan/UBSan for the fuzzing harness (fuzz/, scripts/fuzz.sh; CI runs it)
#   libpcre2-dev libutf8proc-dev   HF tokenizer.json: Unicode regexes (PCRE2, JIT) and NFC normalisation
#   python3-venv               the venv scripts/build.sh --torch pypi installs the PyPI torch wheel into
set -euo pipefail

packages=(
  cmake ninja-build ccache g++ pkg-config
  libtorch-dev libgloo-dev libopenblas0-openmp
  libcli11-dev libmsgpack-cxx-dev libzstd-dev nlohmann-json3-dev libxxhash-dev
  catch2 bats zstd gnuplot-nox jq
  clang libclang-rt-dev
  libpcre2-dev libutf8proc-dev
  python3-venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "install-deps: all packages present" >&2
fi

# libtorch-dev pulls in the reference BLAS; make sure libblas.so.3 resolves to OpenBLAS.
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
openblas=/usr/lib/$arch/openblas-openmp/libblas.so.3
if [ -e "$openblas" ]; then
  $sudo update-alternatives --set "libblas.so.3-$arch" "$openblas" >/dev/null
  $sudo update-alternatives --set "liblapack.so.3-$arch" "/usr/lib/$arch/openblas-openmp/liblapack.so.3" >/dev/null 2>&1 || true
fi
