"""Serving benchmark: questions per minute of the society under the embedded model server.

On a fixed sample of dev questions drawn at random across all databases
(``tools.sampling.sample_examples``, seed fixed), runs ``evaluate`` (what ``sqlsociety eval``
runs) at several concurrencies, with

* ``new``: llama.cpp's ``llama-server`` (``society.serving``): parallel slots with continuous
  batching, prompt cache, work grouped by database;
* ``old``: llama-cpp-python's Python server (``python -m llama_cpp.server``), one request at a
  time -- the server this project used before; only when ``--old-python`` names a Python that
  has ``llama_cpp`` with its ``[server]`` extra (the project no longer installs it).

Prints per run: n, wall seconds, questions per minute, seconds per question, EX, and for the new
server the **model-bound limit** measured in the same run: prompt tokens not served from the
cache / the measured prompt rate + generated tokens / the measured generation rate (both rates
from single-stream calibration requests at start, token counts from the server's ``/metrics``).
Also runs the same number of questions from one database (``--one-db``), to compare the cost of
drawing questions across databases with the cost of one cached schema.

Targets (issue "Serving that runs on every machine of its kind"): concurrency 4 >= 2x the
questions per minute of the old server at concurrency 1; the society at concurrency 1 within
1.5x of the model-bound limit; across databases within 1.5x of one database per question.

Run: ``python3 bench/serving.py [--n 40] [--concurrency 1,2,4] [--old-python /path/to/python]``
(results also written as JSON with ``--out``). A benchmark, not a test: about an hour on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

# bench/society.py would shadow the `society` package when this file is run as a script
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from society.config import SocietyConfig  # noqa: E402
from society.cpu_threads import default_threads  # noqa: E402
from society.evaluate import evaluate  # noqa: E402
from society.health import http_ok, poll_until  # noqa: E402
from society.llama_server import LlamaServer  # noqa: E402
from society.llm import Endpoint  # noqa: E402
from society.models import ensure_model  # noqa: E402
from society.server_process import free_port  # noqa: E402
from society.serving import serve_config  # noqa: E402
from tools.sampling import sample_examples  # noqa: E402
from tools.spider import load_examples  # noqa: E402


def _slots(concurrency: int) -> int:
    return max(4, min(16, 3 * concurrency))


def calibrate(srv: LlamaServer) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one stream: a ~900-token prompt with the cache off,
    then 128 generated tokens."""
    prompt = " ".join(f"table t{i}(id INTEGER, name TEXT, value REAL, created DATE)" for i in range(60))
    r = srv.post("/completion", {"prompt": prompt, "n_predict": 1, "cache_prompt": False, "temperature": 0})
    t = r["timings"]
    prompt_rate = t["prompt_n"] / (t["prompt_ms"] / 1000)
    r = srv.post("/completion", {"prompt": "Count from one to a hundred:", "n_predict": 128, "ignore_eos": True,
                                 "cache_prompt": False, "temperature": 0})
    t = r["timings"]
    return prompt_rate, t["predicted_n"] / (t["predicted_ms"] / 1000)


def _wait_until_up(proc: subprocess.Popen, url: str, what: str, timeout_s: float = 120) -> None:
    """Poll ``GET url`` until 200; RuntimeError naming ``what`` when ``proc`` exits or ``timeout_s`` passes."""

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up")
        return http_ok(url)

    if not poll_until(up, timeout_s=timeout_s, poll_s=0.2):
        raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")


@contextmanager
def old_server(python: str, config: SocietyConfig) -> Iterator[dict[str, Endpoint]]:
    """llama-cpp-python's server for each embedded model of ``config`` (one request at a time)."""
    procs, endpoints = [], {}
    try:
        for model in sorted(set(config.embedded_aliases().values())):
            port = free_port()
            cmd = [python, "-m", "llama_cpp.server", "--model", str(ensure_model(model)), "--model_alias", model,
                   "--n_ctx", "4096", "--n_threads", str(default_threads()), "--host", "127.0.0.1",
                   "--port", str(port), "--interrupt_requests", "false"]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            url = f"http://127.0.0.1:{port}/v1"
            _wait_until_up(procs[-1], url + "/models", f"old server for {model} ({cmd})")
            for alias, m in config.embedded_aliases().items():
                if m == model:
                    endpoints[alias] = Endpoint(url, model)
        yield endpoints
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=20)


def run_one(examples: list, config: SocietyConfig, engine: str, concurrency: int, agent: str,
            old_python: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"engine": engine, "concurrency": concurrency, "n": len(examples), "agent": agent,
                           "databases": len({e.db_id for e in examples})}
    if engine == "new":
        servers: list[LlamaServer] = []
        with serve_config(config, parallel=_slots(concurrency), on_start=servers.append) as eps:
            if len(servers) != 1:
                raise SystemExit(
                    f"expected one embedded server, got {len(servers)}; use a config with one embedded model"
                )
            srv = servers[0]
            prompt_rate, gen_rate = calibrate(srv)
            m0 = srv.metrics()
            t0 = time.perf_counter()
            s = evaluate(examples, config, agent=agent, concurrency=concurrency, endpoints=eps)
            wall = time.perf_counter() - t0
            m1 = srv.metrics()
        prompt = m1["llamacpp:prompt_tokens_total"] - m0["llamacpp:prompt_tokens_total"]
        cached = m1.get("llamacpp:prompt_tokens_cached_total", 0) - m0.get("llamacpp:prompt_tokens_cached_total", 0)
        gen = m1["llamacpp:tokens_predicted_total"] - m0["llamacpp:tokens_predicted_total"]
        limit = prompt / prompt_rate + gen / gen_rate
        row.update(prompt_rate=round(prompt_rate, 1), gen_rate=round(gen_rate, 1), prompt_tokens=int(prompt),
                   cached_tokens=int(cached), generated_tokens=int(gen), model_bound_s=round(limit, 1),
                   wall_over_limit=round(wall / limit, 2) if limit else None)
    else:
        if not old_python:
            raise SystemExit("--old-python is required for the old engine")
        with old_server(old_python, config) as eps:
            t0 = time.perf_counter()
            s = evaluate(examples, config, agent=agent, concurrency=concurrency, endpoints=eps)
            wall = time.perf_counter() - t0
    row.update(wall_s=round(wall, 1), q_per_min=round(60 * len(examples) / wall, 2),
               s_per_q=round(wall / len(examples), 2), ex=round(s.ex, 4), failed=s.failed)
    return row


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    n: int = typer.Option(40, "--n", help="questions in the sample"),
    seed: int = typer.Option(0, "--seed"),
    concurrency: str = typer.Option("1,2,4", "--concurrency"),
    engines_text: str = typer.Option("new,old", "--engines"),
    old_python: str | None = typer.Option(None, "--old-python", help="a Python with llama_cpp[server] (old engine)"),
    old_concurrency: str = typer.Option("1", "--old-concurrency", help="concurrencies for the old engine"),
    one_db: str = typer.Option("car_1", "--one-db", help="database for the one-database comparison ('' to skip)"),
    agent: str = typer.Option("society", "--agent"),
    config_path: str = typer.Option(str(_HERE.parent / "configs" / "society.yaml"), "--config"),
    out_path: str | None = typer.Option(None, "--out", help="write the rows as JSON here"),
) -> None:
    config = SocietyConfig.load(config_path)
    dev = load_examples(split="dev")
    sample = sample_examples(dev, n, seed)
    print(f"sample: {len(sample)} dev questions over {len({e.db_id for e in sample})} databases (seed {seed}); "
          f"load average {os.getloadavg()[0]:.2f} at start; {os.cpu_count()} cores", flush=True)
    rows = []
    engines = engines_text.split(",")
    for engine in engines:
        levels = concurrency if engine == "new" else old_concurrency
        for c in (int(x) for x in levels.split(",")):
            if engine == "old" and not old_python:
                print("old engine skipped: pass --old-python", flush=True)
                break
            row = run_one(sample, config, engine, c, agent, old_python)
            row["load_avg"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if one_db and "new" in engines:
        one = sample_examples([e for e in dev if e.db_id == one_db], n, seed)
        row = run_one(one, config, "new", 1, agent, None)
        row["one_db"] = one_db
        row["load_avg"] = round(os.getloadavg()[0], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\nengine  c  n   databases  q/min   s/q    EX     model-bound s  wall/limit  load")
    for r in rows:
        print(
            f"{r['engine']:<6} {r['concurrency']:>2} {r['n']:>3} {r['databases']:>10} {r['q_per_min']:>6} "
            f"{r['s_per_q']:>6} {r['ex']:>6} {str(r.get('model_bound_s', '-')):>14} "
            f"{str(r.get('wall_over_limit', '-')):>11} {r['load_avg']:>5}"
            + (f"  (one db: {r['one_db']})" if r.get("one_db") else "")
        )
    base = next((r for r in rows if r["engine"] == "old" and r["concurrency"] == 1), None)
    new4 = next((r for r in rows if r["engine"] == "new" and r["concurrency"] == 4 and not r.get("one_db")), None)
    new1 = next((r for r in rows if r["engine"] == "new" and r["concurrency"] == 1 and not r.get("one_db")), None)
    one = next((r for r in rows if r.get("one_db")), None)
    if base and new4:
        print(f"new c=4 / old c=1 questions per minute: {new4['q_per_min'] / base['q_per_min']:.2f}x (target >= 2)")
    if new1:
        print(f"new c=1 wall / model-bound limit: {new1['wall_over_limit']}x (target <= 1.5)")
    if new1 and one:
        print(
            f"across databases / one database, s per question: {new1['s_per_q'] / one['s_per_q']:.2f}x (target <= 1.5)"
        )
    if out_path:
        Path(out_path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    app()
