#!/usr/bin/env bash
# The project's own training paths (junior SFT, senior GRPO, LoRA adapters saved/reloaded) on a
# tiny randomly initialised Qwen2 model, on a GPU -- or on the CPU, which is how its test runs it.
# Nothing is downloaded while it runs: no model hub, no package registry.
#
#   bash scripts/gpu-check.sh                         # --device cuda, results in runs/gpu-check
#   bash scripts/gpu-check.sh --device cpu --out DIR  # the same steps on the CPU (tests/test_gpu_check.py)
#   bash scripts/gpu-check.sh --full                  # + vllm/verl/unsloth/agentlightning import (gpu extra)
#
# A GPU machine without a package registry (e.g. Python 3.12 with torch, transformers, peft,
# accelerate, pyarrow, scikit-learn preinstalled, nothing else): carry the pure-Python wheels.
#
#   # 1. here, with PyPI reachable: wheels for CPython 3.12 x86-64 Linux into gpu-wheels/ (~17 MB)
#   bash scripts/gpu-check.sh --download-wheels gpu-wheels
#   # 2. there: a venv that sees the machine's own packages, the carried wheels installed into it
#   #    with pip --no-index (a missing dependency fails here, naming it), then the check
#   bash scripts/gpu-check.sh --wheels gpu-wheels --device cuda
#
# The wheel list is the dependency closure of trl, datasets and sqlglot minus what torch,
# transformers, peft, accelerate, pyarrow and scikit-learn bring, at the versions installed here
# (`python -m training.gpu_check --wheel-pins`); override it with GPU_CHECK_PINS="trl==X datasets==Y ...".
# gpu-wheels/ is git-ignored: carry it explicitly with the working tree (at most 64 MiB).
#
# Output: OUT/gpu_check.json and OUT/gpu_check.md -- one row per step (step, seconds, pass/fail,
# error), printed too. Exit status: 0 every step passed, 1 a step failed, 2 bad arguments or a
# wheel installation that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

device=cuda
out=runs/gpu-check
wheels=""
download=""
extra=()
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs cuda or cpu}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --wheels) wheels=${2:?--wheels needs a directory}; shift 2 ;;
    --download-wheels) download=${2:?--download-wheels needs a directory}; shift 2 ;;
    --full) extra+=(--full); shift ;;
    --sft-steps|--grpo-steps|--threads) extra+=("$1" "${2:?$1 needs a number}"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu-check.sh: --device must be cuda or cpu, got $device" >&2; exit 2 ;; esac

if [ -n "$download" ]; then
  pins=${GPU_CHECK_PINS:-$($PY -m training.gpu_check --wheel-pins)}
  mkdir -p "$download"
  # shellcheck disable=SC2086  # one pin a word
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$download" $pins
  size=$(du -sm "$download" | cut -f1)
  echo "gpu-check.sh: $(ls "$download"/*.whl | wc -l) wheels, ${size} MiB in $download"
  if [ "$size" -gt 48 ]; then
    echo "gpu-check.sh: $download is over 48 MiB; it may not fit in the 64 MiB carried with the working tree" >&2
  fi
  exit 0
fi

if [ -n "$wheels" ]; then
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu-check.sh: no wheels in $wheels (make them with --download-wheels on a machine with PyPI)" >&2
    exit 2
  fi
  venv=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/sqlsociety-gpu-check-venv}
  # No pip/setuptools of its own (an old bundled setuptools would hide the machine's newer one, which
  # torch requires): the machine's pip installs into it through --python.
  [ -x "$venv/bin/python" ] || $PY -m venv --system-site-packages --without-pip "$venv"
  # Install by name: pip takes what the machine already has and only the missing rest from $wheels.
  names=$(for w in "$wheels"/*.whl; do basename "$w" | cut -d- -f1; done | sort -u)
  # shellcheck disable=SC2086
  if ! $PY -m pip --python "$venv/bin/python" install --no-index --find-links "$wheels" --disable-pip-version-check -q $names; then
    echo "gpu-check.sh: installing the carried wheels failed (above: the package pip could not find or resolve);" \
         "download it on a machine with PyPI into $wheels, or pin other versions with GPU_CHECK_PINS" >&2
    exit 2
  fi
  PY="$venv/bin/python"
fi

mkdir -p "$out"
exec env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m training.gpu_check --device "$device" --out "$out" "${extra[@]}"
