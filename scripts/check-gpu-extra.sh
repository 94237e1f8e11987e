#!/usr/bin/env bash
# Check that the `gpu` extra (verl, vLLM, torch, agentlightning[verl], unsloth) resolves to one consistent
# set of versions for Linux x86-64 CPython 3.11, and that the set is the one pinned in pyproject.toml.
#
#   bash scripts/check-gpu-extra.sh          # PYTHON=python3.11 to choose the interpreter
#
# By resolution only: `pip install --dry-run --ignore-installed --report` of ".[gpu]" in a throwaway venv;
# nothing is installed and nothing runs on a GPU. About 1-2 minutes (venv, pip upgrade, a ~50 s resolution:
# pip reads wheel metadata only). Run it on Linux x86-64 with CPython 3.11: pip's --platform/--python-version
# need --only-binary=:all:, and agentlightning's gpustat is published only as an sdist, so the resolution is
# a plain one on a machine of the target kind. pip's config files (a machine's constraints or find-links) are
# ignored; PIP_INDEX_URL and the like in the environment still apply.
# Exit 1 when the extra does not resolve, when verl/vllm/torch/transformers/unsloth are not ==-pinned in the gpu
# extra, when a resolved version differs from its pin, or when the resolved vllm is outside verl's own `vllm` extra
# range (verl's wheel states which vLLM releases its rollout code is written for; the gpu extra installs verl
# without that extra, so the resolver alone does not hold vllm to it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import platform as p, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and p.system() == "Linux"
    and p.machine() == "x86_64" and p.python_implementation() == "CPython"))' || {
  echo "check-gpu-extra: needs Linux x86-64 CPython 3.11 (the GPU machines' target); $PY is not." >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_CONSTRAINT
start=$SECONDS
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
echo "check-gpu-extra: resolving .[gpu] with pip $("$tmp/venv/bin/python" -m pip --version | cut -d' ' -f2) ..."
if ! "$tmp/venv/bin/python" -m pip install --dry-run --ignore-installed --report "$tmp/report.json" ".[gpu]" \
    >"$tmp/pip.log" 2>&1; then
  tail -n 40 "$tmp/pip.log" >&2
  echo "check-gpu-extra: FAILED -- the gpu extra does not resolve (pip's words above) after $((SECONDS - start)) s." >&2
  exit 1
fi

"$tmp/venv/bin/python" - "$tmp/report.json" "$((SECONDS - start))" <<'EOF'
import json, sys, tomllib
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name as canon

report = json.load(open(sys.argv[1]))["install"]
resolved = {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in report}
requires = {canon(i["metadata"]["name"]): i["metadata"].get("requires_dist", []) for i in report}
gpu = [Requirement(r) for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]]
pins = {canon(r.name): r.specifier for r in gpu}
problems = []
for name in ["torch", "vllm", "verl", "agentlightning", "unsloth", "transformers", "trl", "peft", "flash-attn"]:
    got, spec = resolved.get(name), pins.get(name)
    if got is None and name != "flash-attn":
        problems.append(f"{name} is not in the resolved set")
    if got is not None or name != "flash-attn":
        print(f"  {name:15} {got or '-':14} {'gpu extra: ' + (str(spec) or 'any') if spec is not None else ''}")
for name in ("verl", "vllm", "torch", "transformers", "unsloth"):
    if not any(s.operator == "==" for s in pins.get(name, [])):
        problems.append(f"{name} is not pinned with == in the gpu extra ({pins.get(name) or 'absent'})")
for name, spec in pins.items():
    exact = [s.version for s in spec if s.operator == "=="]
    if exact and resolved.get(name) != exact[0]:
        problems.append(f"{name} resolved to {resolved.get(name)}, the gpu extra pins {exact[0]}")
# verl's `vllm` extra (e.g. verl 0.6.1: vllm>=0.8.5,<=0.11.0), evaluated for that extra
for r in map(Requirement, requires.get("verl", [])):
    if canon(r.name) == "vllm" and r.marker is not None and r.marker.evaluate({"extra": "vllm"}):
        ok = resolved.get("vllm") is not None and r.specifier.contains(resolved["vllm"], prereleases=True)
        print(f"  verl's own vllm range: {r.specifier} -> {'holds' if ok else 'VIOLATED'}")
        if not ok:
            problems.append(f"vllm {resolved.get('vllm')} is outside verl {resolved.get('verl')}'s vllm extra ({r.specifier})")
for p in problems:
    print(f"check-gpu-extra: FAILED -- {p}", file=sys.stderr)
print(f"check-gpu-extra: {'FAILED' if problems else 'OK'} ({len(resolved)} packages resolved, {sys.argv[2]} s)")
sys.exit(1 if problems else 0)
EOF
