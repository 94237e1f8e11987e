"""``sqlsociety judge RUN_DIR [--model ALIAS] [--base-url URL]``: LLM-as-a-judge scores beside EX.

Without ``--base-url`` the embedded model ``--model`` (default: the project's default embedded
model) is served on a free loopback port for the command and stopped afterwards; with it, any
OpenAI-compatible endpoint is used and ``--model`` is the model name sent (default: the first
one the endpoint lists). Writes ``judge.jsonl`` and ``judge_summary.json`` into the run directory
(see :mod:`evaluation.judge`) and prints mean scores overall and split by EX correct/incorrect.

Replies are constrained to the verdict's JSON Schema where the server supports it
(``--free-text`` to only ask for JSON in the prompt).

Exit codes: 0 done (also when some replies could not be parsed: they are counted), 2 bad
arguments, not a run directory, or an unusable endpoint (nothing is written then), 130 Ctrl-C.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from society.models import DEFAULT_MODEL_ALIAS, EMBEDDED_MODELS
from society.serving import serve_embedded

console = Console()
err_console = Console(stderr=True)


def _fail(msg: str) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(code=2)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def print_summary(summary: object) -> None:
    """The judge's means beside EX, as a Rich table (rows: all, EX correct, EX incorrect, EX unknown)."""
    from evaluation.judge import SCORE_KEYS, JudgeSummary

    assert isinstance(summary, JudgeSummary)
    t = Table(
        title=f"judge {summary.model}: {summary.n} answers, {summary.unparsed} unparsed (scores 1-5; EX is the metric)"
    )
    for col in ("answers", "n", "EX", "judged", *SCORE_KEYS):
        t.add_column(col, justify="left" if col == "answers" else "right")
    labels = {"all": "all", "ex_correct": "EX correct", "ex_incorrect": "EX incorrect", "ex_unknown": "EX unknown"}
    for key, label in labels.items():
        g = summary.groups[key]
        if key != "all" and g.n == 0:
            continue
        t.add_row(label, str(g.n), _fmt(g.ex, pct=True), str(g.parsed), *(_fmt(getattr(g, k)) for k in SCORE_KEYS))
    console.print(t)
    if summary.error_types:
        console.print("error types: " + ", ".join(f"{k} {v}" for k, v in summary.error_types.items()))


def judge(
    run_dir: Path = typer.Argument(..., help="Run directory of `sqlsociety ask/eval` (holds questions.jsonl)."),
    model: str = typer.Option(
        None,
        "--model",
        help="Embedded model alias to serve (default: the default embedded model); "
        "with --base-url, the model name to send (default: the endpoint's first model).",
    ),
    base_url: str = typer.Option(
        None, "--base-url", help="An OpenAI-compatible endpoint (…/v1) instead of an embedded model."
    ),
    api_key: str = typer.Option(
        "sk-no-key", "--api-key", envvar="SQLSOCIETY_JUDGE_API_KEY", help="API key for --base-url.", show_default=False
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N answers."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=16, help="Reply length limit per answer."),
    json_schema: bool = typer.Option(
        True,
        "--json-schema/--free-text",
        help="Ask the server to constrain replies to the verdict's JSON Schema "
        "(response_format); --free-text only asks in the prompt.",
    ),
) -> None:
    """Score a run's answers with an LLM judge (SQL correctness, reasoning, format 1-5; error type), beside EX."""
    from evaluation.judge import JudgeEndpointError, judge_run, load_answers, openai_completer

    try:
        n = len(load_answers(run_dir)[:limit])
    except ValueError as e:
        _fail(str(e))
    with ExitStack() as stack:
        try:
            if base_url:
                complete, name = openai_completer(base_url, model, api_key=api_key, max_tokens=max_tokens,
                                                  json_schema=json_schema)
            else:
                alias = model or DEFAULT_MODEL_ALIAS
                if alias not in EMBEDDED_MODELS:
                    _fail(f"--model {alias!r} is not an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}); "
                          "to use another model pass --base-url too")
                try:
                    srv = stack.enter_context(serve_embedded(alias))
                except Exception as e:  # noqa: BLE001 - any failure to start the judge is a clear exit 2
                    _fail(f"could not start the embedded judge {alias}: {type(e).__name__}: {e}")
                err_console.print(f"[dim]judge {alias} ready at {srv.base_url}[/dim]")
                complete, name = openai_completer(
                    srv.base_url, srv.model, max_tokens=max_tokens, json_schema=json_schema
                )
            err_console.print(
                f"[dim]judging {n} answer(s) of {escape(str(run_dir))} with {escape(name)}[/dim]", soft_wrap=True
            )
            done = {"n": 0}

            def progress(_rec: object) -> None:
                done["n"] += 1
                if done["n"] % 10 == 0 or done["n"] == n:
                    err_console.print(f"[dim]{done['n']}/{n} judged[/dim]")

            _, summary = judge_run(run_dir, complete, model=name, limit=limit, on_result=progress)
        except JudgeEndpointError as e:
            _fail(f"{e} (nothing was written)")
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted; no judge files written[/yellow]")
            raise typer.Exit(130) from None
    print_summary(summary)
    console.print(
        f"[dim]wrote {escape(str(run_dir / 'judge.jsonl'))} and {escape(str(run_dir / 'judge_summary.json'))}[/dim]",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``judge`` to the root ``sqlsociety`` app."""
    app.command("judge")(judge)
