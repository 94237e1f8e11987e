#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (llama-server) for SQL Society, portable across x86-64 CPUs.
#
#   bash scripts/build-llama-server.sh            # prints the path of the built binary
#
# Source: the llama.cpp tree vendored in the llama-cpp-python sdist on PyPI (the only place this
# project's network reaches); nothing is downloaded at build or run time (web UI off).
#
# Two portable builds (SQLSOCIETY_LLAMA_CPU), neither with -march=native nor any AMX tile code (AMX
# `tilezero` raised SIGILL in a VM of this project's kind that advertises amx_tile):
#
# dispatch (the default): ggml's runtime CPU-variant dispatch (GGML_BACKEND_DL, one shared library
#   per x86 variant beside the binary, RPATH $ORIGIN; ggml loads the best one the CPU reports at
#   start). The AMX variant (sapphirerapids) is deleted before anything is copied; AVX-512 appears
#   only in the variants ggml loads where the CPU reports AVX-512. On this project's 2-core AMD
#   EPYC machines it loads the zen4 variant: 1.60x the AVX2 build's prompt rate, 1.05x its
#   generation rate (bench/cpu_builds.py, README "Serving"). ~13 min to build on 2 cores.
# avx2: one static binary with an explicit AVX2/FMA/F16C/BMI2 baseline, no AVX-512, no AMX
#   (~6.5 min). The fallback where a variant of the dispatch build does not run.
#
# Both are checked with objdump (scripts/objdump_portability.py): the script fails if any AMX tile
# instruction is left, or any AVX-512 instruction (EVEX-encoded on zmm, ymm or xmm, or an opmask
# one) outside the dispatch build's AVX-512 variants.
#
# Cache: the binary lives in $SQLSOCIETY_LLAMA_CACHE/<key>/, where <key> hashes the llama.cpp
# version, every cmake flag, the compiler and the machine architecture, so a build made with
# other flags (e.g. an old -march=native one) is never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LLAMA_SDIST_VERSION=${LLAMA_SDIST_VERSION:-0.3.36}
CACHE=${SQLSOCIETY_LLAMA_CACHE:-$HOME/.cache/sqlsociety/llama-server}
MODE=${SQLSOCIETY_LLAMA_CPU:-dispatch}

LLAMA_FLAGS=(
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
)
# (the flag order is part of the cache key: keep it, or every cached build is rebuilt)
# ggml builds every x86 CPU variant it knows (ggml/src/CMakeLists.txt: the ggml target depends on
# them all); the ones with AMX tiles are deleted before anything is copied, so ggml never loads them
AMX_VARIANTS=(sapphirerapids)
case "$MODE" in
  avx2)
    FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF
      -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
      -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
      -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
      -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF "${LLAMA_FLAGS[@]}")
    TARGETS=(llama-server) ;;
  dispatch)
    FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF "${LLAMA_FLAGS[@]}"
      -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON
      -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "-DCMAKE_INSTALL_RPATH=\$ORIGIN")
    TARGETS=(llama-server) ;;
  *) echo "build-llama-server.sh: SQLSOCIETY_LLAMA_CPU=$MODE; expected dispatch (default) or avx2" >&2; exit 2 ;;
esac

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
[ "$MODE" = avx2 ] || key_src="$key_src mode=$MODE without=${AMX_VARIANTS[*]}"
key=$(printf '%s' "$key_src" | sha256sum | cut -c1-16)
out="$CACHE/$LLAMA_SDIST_VERSION-$key"
bin="$out/bin/llama-server"

if [ ! -x "$bin" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "building llama-server (llama.cpp from llama-cpp-python ${LLAMA_SDIST_VERSION}, CPU build '$MODE'; ~13 min on 2 cores for dispatch, ~6.5 for avx2)..." >&2
  $PY -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==${LLAMA_SDIST_VERSION}" -d "$work" >&2
  tar xzf "$work"/llama_cpp_python-"${LLAMA_SDIST_VERSION}".tar.gz -C "$work"
  src="$work/llama_cpp_python-${LLAMA_SDIST_VERSION}/vendor/llama.cpp"
  cmake -S "$src" -B "$work/build" "${FLAGS[@]}" >"$work/configure.log" 2>&1 \
    || { tail -30 "$work/configure.log" >&2; exit 1; }
  cmake --build "$work/build" --target "${TARGETS[@]}" -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }
  tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp/bin"
  cp "$work/build/bin/llama-server" "$tmp/bin/"
  if [ "$MODE" = dispatch ]; then  # shared libraries beside the binary (RPATH $ORIGIN); variants loaded at run time
    for v in "${AMX_VARIANTS[@]}"; do rm -f "$work/build/bin/libggml-cpu-$v.so"; done
    cp -P "$work"/build/bin/*.so* "$tmp/bin/"
  fi
  printf '%s\n' "$key_src" >"$tmp/BUILD-KEY"
  if command -v objdump >/dev/null; then
    # the one rule (scripts/objdump_portability.py, also used by the test of the installed build):
    # no AMX anywhere; AVX-512 -- any EVEX instruction, on zmm, ymm or xmm, and opmask ones -- only
    # in the AVX-512 variants
    files=()
    for f in "$tmp"/bin/*; do [ -L "$f" ] || files+=("$f"); done
    $PY scripts/objdump_portability.py "${files[@]}" >"$tmp/PORTABILITY" \
      || { echo "build-llama-server.sh: the build is not portable (above); not installed" >&2; exit 1; }
  fi
  rm -rf "$out" && mv "$tmp" "$out"
fi
echo "$bin"
