#!/usr/bin/env bash
# Install SQL Society and everything it needs into the current Python (3.11+).
#
#   bash scripts/install.sh          # CPU machine (this project's CI)
#   SQLSOCIETY_GPU=1 bash scripts/install.sh   # also the GPU stack (verl, vLLM, unsloth)
#
# - torch: the CPU build 2.13.0 is pinned first where the machine provides it, so that no
#   resolver pulls several GB of CUDA wheels on a CPU-only box.
# - llama-cpp-python has no Linux wheel on PyPI; it is built from source once (~10 min on
#   2 cores) into a wheel cache and reused by every later install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${SQLSOCIETY_WHEEL_CACHE:-$HOME/.cache/sqlsociety-wheels}
LLAMA_VERSION=0.3.36
mkdir -p "$WHEELS"

if [ "${SQLSOCIETY_GPU:-0}" != "1" ]; then
  $PY -m pip install "torch==2.13.0" || $PY -m pip install "torch>=2.4"
fi

if ! ls "$WHEELS"/llama_cpp_python-${LLAMA_VERSION}-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python ${LLAMA_VERSION} from source once (about 10 minutes on 2 cores)..."
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip wheel --no-deps -w "$WHEELS" "llama-cpp-python==${LLAMA_VERSION}"
fi

extras="dev"
[ "${SQLSOCIETY_GPU:-0}" = "1" ] && extras="dev,gpu"
$PY -m pip install --find-links "$WHEELS" -e ".[${extras}]"
echo "SQL Society installed: $($PY -m pip show sql-society | sed -n 2p)"
