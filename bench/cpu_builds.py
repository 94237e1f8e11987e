"""CPU-build benchmark: the portable AVX2 llama-server against ggml's runtime CPU-variant dispatch.

``scripts/build-llama-server.sh`` makes two portable builds (``SQLSOCIETY_LLAMA_CPU``):

* ``avx2`` (the default): one binary with an AVX2/FMA/F16C/BMI2 baseline, no AVX-512, no AMX;
* ``dispatch``: ``GGML_BACKEND_DL`` with one shared library per x86 CPU variant, the best one the
  CPU reports loaded at start, the AMX variant (sapphirerapids) left out.

This script builds (or takes from the build cache) both, serves the default embedded model with
each in turn, and measures on the same machine, alternating builds round by round (A B A B ...):

* prompt rate: tokens/s of one ~900-token prompt with the prompt cache off;
* generation rate: tokens/s of 128 generated tokens, one stream;
* batched generation: total tokens/s of 4 streams of 64 tokens decoded together (4 slots).

It prints the variant ggml loaded (from the server's log), the median and range of each figure
over the rounds, and the ratio dispatch / avx2. A benchmark, not a test: about 25 min for the
dispatch build the first time, then a few minutes.

Run: ``python3 bench/cpu_builds.py [--rounds 5] [--threads 2] [--out results/cpu_builds.json]``
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/society.py shadows the package
sys.path.insert(0, str(_HERE.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from society.llama_server import LlamaServer  # noqa: E402
from society.models import ensure_model  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_serving", _HERE / "serving.py")
_serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serving)
calibrate = _serving.calibrate  # one definition of the single-stream prompt and generation rates


def build(mode: str) -> Path:
    """Path of the llama-server of build ``mode`` (built now unless cached)."""
    env = {**os.environ, "SQLSOCIETY_LLAMA_CPU": mode}
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(_HERE.parent / "scripts" / "build-llama-server.sh")], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"build {mode} failed:\n{out.stderr[-3000:]}")
    path = Path(out.stdout.strip().splitlines()[-1])
    print(f"build {mode}: {path} ({time.monotonic() - t0:.0f} s, cached if a few seconds)", flush=True)
    return path


def batched_generation(srv: LlamaServer, streams: int = 4, n_predict: int = 64) -> float:
    """Total generated tokens/s of ``streams`` requests decoded together."""
    results: list[dict[str, Any]] = []

    def one(i: int) -> None:
        results.append(srv.post("/completion", {"prompt": f"List {i + 3} colours and their hex codes:",
                                                "n_predict": n_predict, "ignore_eos": True,
                                                "cache_prompt": False, "temperature": 0}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return sum(r["timings"]["predicted_n"] for r in results) / wall


def measure(executable: Path, model: Path, threads: int) -> dict[str, Any]:
    """One round with one build: the loaded variant and the three rates."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with LlamaServer(model, model_alias="bench", n_ctx=2048, parallel=4, n_threads=threads, executable=executable,
                         log_path=log) as srv:
            # the CPU variant ggml loaded: the libggml-cpu-<variant>.so mapped into the server
            maps = Path(f"/proc/{srv.server_pid}/maps").read_text() if srv.server_pid else ""
            prompt_rate, gen_rate = calibrate(srv)
            batched = batched_generation(srv)
    m = re.findall(r"libggml-cpu-([\w.]+)\.so", maps)
    return {"variant": m[-1] if m else "built-in (avx2)", "prompt_tok_s": prompt_rate, "gen_tok_s": gen_rate,
            "batched4_tok_s": batched}


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    rounds: int = typer.Option(5, "--rounds"),
    threads: int = typer.Option(2, "--threads"),
    model_alias: str = typer.Option("qwen2.5-coder-0.5b", "--model", help="embedded model alias"),
    out_path: str | None = typer.Option(None, "--out", help="write the rounds as JSON here"),
) -> None:
    builds = {mode: build(mode) for mode in ("avx2", "dispatch")}
    model = ensure_model(model_alias)
    print(f"model {model_alias}; {threads} threads; {rounds} rounds; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    rows: list[dict[str, Any]] = []
    for r in range(rounds):
        for mode, exe in builds.items():
            row = {"round": r, "build": mode, **measure(exe, model, threads), "load_avg": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    keys = ("prompt_tok_s", "gen_tok_s", "batched4_tok_s")
    med = {m: {k: statistics.median(x[k] for x in rows if x["build"] == m) for k in keys} for m in builds}
    print(f"\nbuild     variant            {'  '.join(f'{k:>16}' for k in keys)}   (median [min, max] of {rounds})")
    for m in builds:
        vals = [x for x in rows if x["build"] == m]
        cells = "  ".join(f"{med[m][k]:6.1f} [{min(v[k] for v in vals):.0f},{max(v[k] for v in vals):.0f}]".rjust(16)
                          for k in keys)
        print(f"{m:<9} {vals[0]['variant']:<18} {cells}")
    print("dispatch / avx2: " + ", ".join(f"{k} {med['dispatch'][k] / med['avx2'][k]:.2f}x" for k in keys))
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps({"rows": rows, "median": med}, indent=1))


if __name__ == "__main__":
    app()
