#!/usr/bin/env bash
# The gpu extra's verl, importable on a CPU machine, for tests/test_verl_config.py (Agent Lightning's verl
# modules imported; agl.VERL and its trainer built up to Ray). Called by scripts/install.sh.
#
#   bash scripts/verl-cpu-env.sh      # PYTHON=... the environment SQL Society is installed in
#
# verl 0.6 cannot import beside this environment's transformers 5 (it imports AutoModelForVision2Seq at
# module level), and an importable verl in this environment would read as "GPU stack present"
# (training.plan, training.grpo.resolve_backend). So a venv (default ~/.cache/sqlsociety/verl-env,
# SQLSOCIETY_VERL_ENV to choose) sees this environment's packages AFTER its own (one .pth line: torch's CPU
# build, agentlightning, peft, ... come from here) and holds only what differs:
#   - verl at the gpu extra's pin, without its dependencies (its numpy<2 pin is not applied: numpy stays
#     this environment's 2.x -- a difference from the GPU set, stated in the tests);
#   - transformers at the gpu extra's pin, and what verl's modules import that this environment lacks
#     (ray, tensordict, torchdata, codetiming, cachetools; datasets 4), with whatever older releases those
#     need (pip puts them in the venv: tokenizers and huggingface-hub for transformers 4.57).
# Nothing CUDA is installed. Rebuilt only when the pins, the Python or this environment's path change: 23-31 s
# and 418 MB when built (measured 2026-12-05, 2-core machine, ray and torchdata from a local mirror, the rest
# from PyPI), ~0.5 s when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
env_dir=${SQLSOCIETY_VERL_ENV:-$HOME/.cache/sqlsociety/verl-env}

# the gpu extra's verl and transformers requirements (verl==X, transformers==Y)
mapfile -t pins < <("$PY" -c 'import tomllib; from packaging.requirements import Requirement as R
gpu = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"].get("gpu", [])
for name in ("verl", "transformers"):
    print(next((r for r in gpu if R(r).name == name), ""))')
if [ -z "${pins[0]}" ]; then
  echo "verl-cpu-env: the gpu extra pins no verl; nothing to build" >&2; exit 0
fi
# What verl 0.6's modules on Agent Lightning's path import at module level and this environment lacks or has
# too new: tensordict (the top of verl 0.6.1's own range), cachetools (verl's agent loop imports it without
# declaring it), datasets 4.x (this environment's 5.x needs huggingface-hub >= 1, transformers 4.57 needs < 1;
# 4.8.5 is also inside unsloth's range), ray, torchdata, codetiming (current releases).
extra=("ray==2.58.0" "tensordict==0.10.0" "torchdata==0.11.0" "codetiming==1.4.0" "cachetools==7.2.0"
       "datasets==4.8.5")
main_site=$("$PY" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' | sort -u)
key=$(printf '%s\n' "$("$PY" -c 'import sys; print(sys.version)')" "$main_site" "${pins[@]}" "${extra[@]}" \
      | sha256sum | cut -c1-16)
if [ "$(cat "$env_dir/.sqlsociety-key" 2>/dev/null)" = "$key" ]; then
  echo "verl-cpu-env: $env_dir is up to date (${pins[*]})"; exit 0
fi

start=$SECONDS
rm -rf "$env_dir"
"$PY" -m venv "$env_dir"
vpy="$env_dir/bin/python"
venv_site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
{ for d in $main_site; do echo "import site; site.addsitedir('$d')"; done; } > "$venv_site/zz-sqlsociety-main-env.pth"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$vpy" -m pip install -q --no-deps "${pins[0]}"
"$vpy" -m pip install -q ${pins[1]:+"${pins[1]}"} "${extra[@]}"
"$vpy" -c 'import verl, transformers, ray, tensordict; print(f"verl-cpu-env: verl {verl.__version__}, transformers "
  f"{transformers.__version__}, ray {ray.__version__}, tensordict {tensordict.__version__} in {verl.__file__}")'
echo "$key" > "$env_dir/.sqlsociety-key"
echo "verl-cpu-env: built $env_dir in $((SECONDS - start)) s ($(du -sm "$env_dir" | cut -f1) MB)"
