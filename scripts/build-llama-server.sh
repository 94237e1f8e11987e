#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (llama-server) for SQL Society, portable across x86-64 CPUs.
#
#   bash scripts/build-llama-server.sh            # prints the path of the built binary
#
# Source: the llama.cpp tree vendored in the llama-cpp-python sdist on PyPI (the only place this
# project's network reaches); nothing is downloaded at build or run time (web UI off).
#
# Portability: GGML_NATIVE=OFF with an explicit AVX2/FMA/F16C/BMI2 baseline; AVX-512 and the AMX
# tile kernels are off, so no instruction this machine's siblings may trap on (AMX `tilezero`
# raised SIGILL in a VM that advertises amx_tile) is compiled in. The result is checked with
# objdump: the script fails if any AMX tile or AVX-512 (zmm) instruction is left.
#
# Cache: the binary lives in $SQLSOCIETY_LLAMA_CACHE/<key>/, where <key> hashes the llama.cpp
# version, every cmake flag, the compiler and the machine architecture, so a build made with
# other flags (e.g. an old -march=native one) is never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LLAMA_SDIST_VERSION=${LLAMA_SDIST_VERSION:-0.3.36}
CACHE=${SQLSOCIETY_LLAMA_CACHE:-$HOME/.cache/sqlsociety/llama-server}

FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF
  -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
  -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
  -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
)

case "$(uname -m)" in
  x86_64) ;;
  *) echo "build-llama-server.sh: $(uname -m) is not supported (the flags above are for x86-64)" >&2; exit 2 ;;
esac
for f in avx2 fma f16c bmi2; do
  if ! grep -qw "$f" /proc/cpuinfo; then
    echo "build-llama-server.sh: this CPU lacks $f, which the portable llama.cpp build needs" >&2; exit 2
  fi
done

key_src="llama-cpp-python-sdist=${LLAMA_SDIST_VERSION} arch=$(uname -m) cc=$(cc --version | head -1) cxx=$(c++ --version | head -1) ${FLAGS[*]}"
key=$(printf '%s' "$key_src" | sha256sum | cut -c1-16)
out="$CACHE/$LLAMA_SDIST_VERSION-$key"
bin="$out/bin/llama-server"

if [ ! -x "$bin" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "building llama-server (llama.cpp from llama-cpp-python ${LLAMA_SDIST_VERSION}, portable AVX2 baseline; ~6 min on 2 cores)..." >&2
  $PY -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==${LLAMA_SDIST_VERSION}" -d "$work" >&2
  tar xzf "$work"/llama_cpp_python-"${LLAMA_SDIST_VERSION}".tar.gz -C "$work"
  src="$work/llama_cpp_python-${LLAMA_SDIST_VERSION}/vendor/llama.cpp"
  cmake -S "$src" -B "$work/build" "${FLAGS[@]}" >"$work/configure.log" 2>&1 \
    || { tail -30 "$work/configure.log" >&2; exit 1; }
  cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }
  tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp/bin"
  cp "$work/build/bin/llama-server" "$tmp/bin/"
  printf '%s\n' "$key_src" >"$tmp/BUILD-KEY"
  if command -v objdump >/dev/null; then
    objdump -d "$tmp/bin/llama-server" >"$work/disasm.txt"
    amx=$(grep -cE '\b(tilezero|tileloadd|tdpbssd|tdpbf16ps|ldtilecfg)\b' "$work/disasm.txt" || true)
    zmm=$(grep -c '%zmm' "$work/disasm.txt" || true)
    if [ "$amx" != 0 ] || [ "$zmm" != 0 ]; then
      echo "build-llama-server.sh: built binary still holds $amx AMX tile and $zmm AVX-512 instructions; not portable" >&2
      exit 1
    fi
    echo "objdump: 0 AMX tile instructions, 0 AVX-512 (zmm) instructions" >"$tmp/PORTABILITY"
  fi
  rm -rf "$out" && mv "$tmp" "$out"
fi
echo "$bin"
