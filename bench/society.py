"""Framework overhead of the society: wall time split into model time vs everything else.

For a fixed set of Spider dev questions (the first ``--n`` executable ones, same every run) the
society answers each question once (after one warm-up question that is not counted) and the
benchmark reports, per question and in total:

* wall      -- seconds from graph start to finish (``SocietyRun.seconds``);
* model     -- seconds during which at least one LLM request was in flight (union of the LLM call
               intervals, so parallel juniors are not double-counted; includes HTTP and the
               server's queueing, i.e. everything the model server does);
* tools     -- seconds inside tool calls (schema inspection, SQL execution) while no LLM call was
               in flight;
* other     -- wall - model - tools: LangGraph scheduling, state merging, prompt rendering, SQL
               extraction, callbacks/tracing, recording;
* overhead  -- (wall - model) / wall, the share of time not spent waiting for the model;
* client layer -- "model" time includes LangChain's ``ChatOpenAI`` layer around the HTTP request;
               measured separately as the median extra time of ``ChatOpenAI.invoke`` over a bare
               ``openai`` request for a one-token completion, and added to the framework side:
               framework = tools + other + calls x client layer.

Usage::

    python bench/society.py                       # SmolLM2-135M (configs/smoke.yaml), 5 questions
    python bench/society.py --config configs/society.yaml --n 3
    python bench/society.py --base-url http://127.0.0.1:8080/v1 --model m   # an already-running server
    python bench/society.py --collect-runs        # with a LangChain tracer building every run tree

Prints a table and one JSON line (``--json`` to write it to a file).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from society.config import SMOKE_CONFIG, SocietyConfig  # noqa: E402
from society.llm import Endpoint  # noqa: E402
from society.run import AGENTS, SocietyRun, run_society  # noqa: E402
from tools.spider import load_examples  # noqa: E402


def client_overhead_ms(endpoint: Endpoint, pairs: int = 8) -> float:
    """Median extra milliseconds a LangChain ``ChatOpenAI.invoke`` costs over a bare ``openai``
    request for the same one-token completion (alternating pairs, so server load affects both).
    "model" time includes this client layer; the report moves it to the framework side."""
    import statistics

    from langchain_openai import ChatOpenAI
    from openai import OpenAI

    msgs = [{"role": "user", "content": "Say OK."}]
    raw = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0)
    chat = ChatOpenAI(model=endpoint.model, base_url=endpoint.base_url, api_key=endpoint.api_key, temperature=0,
                      max_tokens=1, max_retries=0, extra_body={"max_tokens": 1})
    chat.invoke("Say OK.")  # warm both paths
    raw.chat.completions.create(model=endpoint.model, messages=msgs, max_tokens=1, temperature=0)
    diffs = []
    for _ in range(pairs):
        t = time.perf_counter()
        raw.chat.completions.create(model=endpoint.model, messages=msgs, max_tokens=1, temperature=0)
        a = time.perf_counter() - t
        t = time.perf_counter()
        chat.invoke("Say OK.")
        b = time.perf_counter() - t
        diffs.append(1000 * (b - a))
    return statistics.median(diffs)


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def tool_seconds(run: SocietyRun) -> float:
    """Seconds inside tool calls of ``run`` that no LLM call overlapped (parallel juniors run tools
    while another junior waits for the model; that time is already model time)."""
    llm = _union([(c["started"], c["started"] + c["latency_s"]) for c in run.trace.get("llm_calls", [])])
    tools = _union([(t["started"], t["started"] + t["latency_s"]) for t in run.trace.get("tool_calls", [])])
    total = 0.0
    for a, b in tools:
        covered = sum(max(0.0, min(b, d) - max(a, c)) for c, d in llm)
        total += (b - a) - covered
    return total


def bench(config: SocietyConfig, endpoints: dict[str, Endpoint], n: int, agent: str, console: Console,
          collect_runs: bool = False) -> dict:
    examples = load_examples(split="dev", limit=n + 1)
    warm, examples = examples[0], examples[1:]
    collector = None
    if collect_runs:  # a LangChain tracer that builds every run tree in memory (LangSmith's work, minus the upload)
        from langchain_core.tracers.run_collector import RunCollectorCallbackHandler

        collector = RunCollectorCallbackHandler()
    cbs = [collector] if collector else None
    run_society(
        warm.question,
        warm.db_path,
        config,
        question_id=warm.id,
        db_id=warm.db_id,
        endpoints=endpoints,
        agent=agent,
        callbacks=cbs,
    )
    t = Table(title=f"{agent} · {config.name} · {len(examples)} questions")
    for col in ("question", "wall s", "model s", "tools s", "other s", "overhead", "LLM calls", "tokens", "status"):
        t.add_column(col, justify="right" if col != "question" else "left", overflow="fold")
    rows = []
    t0 = time.perf_counter()
    for ex in examples:
        run = run_society(
            ex.question,
            ex.db_path,
            config,
            question_id=ex.id,
            db_id=ex.db_id,
            endpoints=endpoints,
            agent=agent,
            callbacks=cbs,
        )
        tools = tool_seconds(run)
        other = max(0.0, run.seconds - run.model_seconds - tools)
        rows.append({"id": ex.id, "wall": run.seconds, "model": run.model_seconds, "tools": tools, "other": other,
                     "llm_calls": run.llm_calls, "tokens": run.tokens, "status": run.status})
        t.add_row(
            ex.id,
            f"{run.seconds:.2f}",
            f"{run.model_seconds:.2f}",
            f"{tools:.3f}",
            f"{other:.3f}",
            f"{(run.seconds - run.model_seconds) / run.seconds:.1%}",
            str(run.llm_calls),
            str(run.tokens),
            run.status,
        )
    total = time.perf_counter() - t0
    wall = sum(r["wall"] for r in rows)
    model = sum(r["model"] for r in rows)
    tools = sum(r["tools"] for r in rows)
    other = sum(r["other"] for r in rows)
    calls = sum(r["llm_calls"] for r in rows)
    t.add_section()
    t.add_row("all", f"{wall:.2f}", f"{model:.2f}", f"{tools:.3f}", f"{other:.3f}", f"{(wall - model) / wall:.1%}",
              str(calls), str(sum(r["tokens"] for r in rows)), "")
    console.print(t)
    summary = {
        "agent": agent,
        "config": config.name,
        "questions": len(rows),
        "wall_s": round(wall, 3),
        "model_s": round(model, 3),
        "tools_s": round(tools, 4),
        "other_s": round(other, 4),
        "overhead_ratio": round((wall - model) / wall, 4),
        "other_ms_per_llm_call": round(1000 * other / max(1, calls), 2),
        "llm_calls": calls,
        "seconds_per_question": round(wall / len(rows), 3),
        "loop_wall_s": round(total, 3),
        "rows": rows,
        "collect_runs": collect_runs,
        "traced_root_runs": len(collector.traced_runs) if collector else 0,
    }
    console.print(
        f"overhead (wall - model) / wall = {summary['overhead_ratio']:.1%}; tools {tools:.3f} s, "
        f"other {other:.3f} s = {summary['other_ms_per_llm_call']:.1f} ms per LLM call"
    )
    ep = next(iter(endpoints.values()), None) or ChatModelsEndpoint(config)
    client_ms = client_overhead_ms(ep)
    framework = other + tools + calls * client_ms / 1000
    summary.update({"client_overhead_ms_per_call": round(client_ms, 2), "framework_s": round(framework, 4),
                    "framework_ratio": round(framework / wall, 4)})
    console.print(
        f"LangChain client layer: {client_ms:.1f} ms per call (median, vs a bare openai request); "
        f"framework total (tools + other + client layer) = {framework:.2f} s = {framework / wall:.1%} of wall"
    )
    return summary


def ChatModelsEndpoint(config: SocietyConfig) -> Endpoint:  # noqa: N802 - small adapter
    """The endpoint of the first model alias (for --base-url runs)."""
    from society.llm import ChatModels

    return ChatModels(config).endpoint(next(iter(config.models)))


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.split("\n\n")[0])
def main(
    config: Path = typer.Option(SMOKE_CONFIG, "--config", help="society config (default: configs/smoke.yaml)"),
    n: int = typer.Option(5, "--n", help="questions measured (after 1 warm-up)"),
    agent: str = typer.Option("society", "--agent", help=f"one of {', '.join(AGENTS)}"),
    base_url: str | None = typer.Option(
        None, "--base-url", help="use this OpenAI-compatible server for every model alias instead of the embedded one"
    ),
    model: str = typer.Option("local", "--model", help="model name with --base-url"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the summary JSON here"),
    collect_runs: bool = typer.Option(
        False, "--collect-runs",
        help="attach a LangChain tracer that builds every run tree in memory (tracing cost without network)",
    ),
) -> None:
    if agent not in AGENTS:
        raise typer.BadParameter(f"{agent!r}: use one of {', '.join(AGENTS)}", param_hint="--agent")
    console = Console()
    cfg = SocietyConfig.load(config)
    if base_url:
        for alias in list(cfg.models):
            cfg = cfg.with_endpoint(alias, base_url, model)
        summary = bench(cfg, {}, n, agent, console, collect_runs)
    else:
        from society.commands import serving

        with serving(cfg) as endpoints:
            summary = bench(cfg, endpoints, n, agent, console, collect_runs)
    line = json.dumps({k: v for k, v in summary.items() if k != "rows"})
    print(line)
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()
