"""``sqlsociety traces list|show|export|pull|dashboard`` and ``sqlsociety report``.

* ``traces list RUN_DIR [--phase P] [--min-reward X] [--failed]`` -- the run's rollouts (from
  ``RUN_DIR/store.sqlite``) as a table.
* ``traces show RUN_DIR ROLLOUT_ID [--full]`` -- one rollout as a tree: node -> role -> LLM call
  (prompt/response, tokens, latency) -> tool call (SQL, result or error) -> reward, with per-role
  credit. ``RUN_DIR`` may also be a JSONL file written by ``traces export`` or ``traces pull``
  (``ROLLOUT_ID`` then optional when it holds one rollout).
* ``traces export RUN_DIR [--out F] [--rollout ID]...`` -- JSONL, one span per line with
  OpenTelemetry span fields (see :mod:`evaluation.tracing.trace_records`).
* ``traces pull --project P --run-id R [--out F]`` -- fetch rollouts' traces back from LangSmith
  into that JSONL format and print their trees (needs ``LANGSMITH_API_KEY``).
* ``traces dashboard RUN_DIR [--port N]`` -- serve Agent Lightning's own dashboard over the run's
  store (read-mostly: unfinished rollouts are left as they are) until Ctrl-C.
* ``report RUN_DIR [--html F] [--md F]`` -- write the HTML report and Markdown summary.

Heavy imports (Agent Lightning, matplotlib, langsmith) happen inside the commands, after the
arguments are checked: a missing directory or a file that is not a rollout store (empty, not
SQLite, corrupt, another SQLite file) is reported at once with exit code 2, and nothing is
created. Output files are written atomically (a failure leaves none behind) and are never one
of the command's inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluation.tracing import langsmith_traces as lt
from evaluation.tracing.langsmith_traces import disable_tracing_without_key
from evaluation.tracing.trace_records import TraceError, group_by_rollout, read_records
from evaluation.tracing.trace_render import render_tree
from evaluation.tracing.trace_tree import build_tree
from evaluation.tracing.traces import export_jsonl, list_rollouts, load_rollout_trace, store_path
from tools.files import OutputPathError, check_output_path

console = Console()
err_console = Console(stderr=True)

traces_app = typer.Typer(
    help="Inspect rollouts: list, show as a tree, export as OpenTelemetry JSONL, pull from LangSmith.",
    no_args_is_help=True,
)


def _fail(msg: str) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(msg)}", soft_wrap=True)  # no hard wraps: paths stay copyable
    raise typer.Exit(code=2)


def _check_out(path: Path, option: str, inputs: list[Path]) -> None:
    """Exit 2 unless ``path`` can be written as a new/replaced file and is none of ``inputs``."""
    try:
        check_output_path(path, what=option, inputs=inputs)
    except OutputPathError as e:
        _fail(str(e))


@traces_app.command("list")
def traces_list(
    run_dir: Path = typer.Argument(..., help="Run directory of `sqlsociety train` (holds store.sqlite)."),
    phase: str | None = typer.Option(
        None, "--phase", help="Only rollouts of this phase (substring match, e.g. gather)."
    ),
    min_reward: float | None = typer.Option(None, "--min-reward", help="Only rollouts with reward >= this."),
    failed: bool = typer.Option(False, "--failed", help="Only failed rollouts (failed/cancelled or no reward)."),
    limit: int = typer.Option(50, "--limit", min=1, help="Show at most this many (the most recent)."),
) -> None:
    """List the rollouts recorded in a run."""

    try:
        rows = list_rollouts(run_dir, phase=phase, min_reward=min_reward, failed=failed)
    except TraceError as e:
        _fail(str(e))
    total = len(rows)
    rows = rows[-limit:]
    table = Table(
        title=f"{total} rollout(s) in {run_dir}" + (f" (showing last {len(rows)})" if total > len(rows) else "")
    )
    table.add_column("rollout", no_wrap=True, min_width=15)  # ids are what users copy: never cut them
    table.add_column("task", no_wrap=True)
    for col in ("phase", "db", "status", "reward", "EX", "spans", "seconds"):
        table.add_column(col, justify="right" if col in ("reward", "EX", "spans", "seconds") else "left")
    for r in rows:
        table.add_row(
            r.rollout_id,
            r.task_id or "–",
            r.phase or "–",
            r.db_id or "–",
            r.status if r.status == "succeeded" else f"[red]{r.status}[/]",
            "–" if r.reward is None else f"{r.reward:.3f}",
            "–" if r.ex is None else f"{r.ex:.0f}",
            str(r.n_spans),
            "–" if r.duration_s is None else f"{r.duration_s:.1f}",
        )
    console.print(table)


@traces_app.command("show")
def traces_show(
    source: Path = typer.Argument(..., help="Run directory, or a JSONL file from `traces export` / `traces pull`."),
    rollout_id: str | None = typer.Argument(None, help="Rollout id (a unique prefix is enough)."),
    full: bool = typer.Option(False, "--full", help="Whole prompts and responses instead of previews."),
    raw: bool = typer.Option(False, "--raw", help="Keep LangChain/LangGraph wrapper spans."),
) -> None:
    """Show one rollout as a tree (node -> role -> LLM call -> tool call -> reward, per-role credit)."""

    if not source.exists():
        _fail(f"{source} does not exist; pass a run directory or a JSONL file from `traces export` / `traces pull`")
    try:
        if source.is_file() and source.suffix == ".jsonl":
            groups = group_by_rollout(read_records(source))
            if rollout_id is None:
                if len(groups) != 1:
                    _fail(f"{source} holds {len(groups)} rollouts; pass one of: {', '.join(list(groups)[:8])}")
                rollout_id = next(iter(groups))
            match = [k for k in groups if k == rollout_id] or [k for k in groups if k.startswith(rollout_id)]
            if len(match) != 1:
                _fail(f"no single rollout {rollout_id!r} in {source}; it holds: {', '.join(list(groups)[:8])}")
            try:
                trace = build_tree(groups[match[0]], prune=not raw, rollout_id=match[0])
            except (TypeError, AttributeError, KeyError, ValueError) as e:
                _fail(f"{source} holds span records of the wrong shape ({type(e).__name__}: {e}); "
                      "pass a JSONL file written by `traces export` or `traces pull`")
        else:
            if rollout_id is None:
                _fail("pass a ROLLOUT_ID (see `sqlsociety traces list RUN_DIR`)")
            trace = load_rollout_trace(source, rollout_id, prune=not raw)
    except TraceError as e:
        _fail(str(e))
    console.print(render_tree(trace, full=full))


@traces_app.command("export")
def traces_export(
    run_dir: Path = typer.Argument(..., help="Run directory of `sqlsociety train`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output JSONL (default RUN_DIR/traces.jsonl)."),
    rollout: list[str] = typer.Option([], "--rollout", help="Only this rollout id (repeatable)."),
) -> None:
    """Write the run's spans as JSONL with OpenTelemetry span fields (trace_id, span_id, parent_span_id, ...).

    Nothing is written when the run directory or its store is unusable; the file appears only once
    complete."""

    try:
        spath = store_path(run_dir)
    except TraceError as e:
        _fail(str(e))
    out = out or run_dir / "traces.jsonl"
    _check_out(out, "--out", [spath, spath.with_name(spath.name + "-wal"), spath.with_name(spath.name + "-shm")])
    try:
        n = export_jsonl(run_dir, out, rollout or None)
    except TraceError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {out} ({e.strerror or e}); pass another --out")
    console.print(f"wrote {n} span(s) to {out}")


@traces_app.command("pull")
def traces_pull(
    project: str = typer.Option(..., "--project", help="LangSmith project name."),
    run_id: str = typer.Option(
        ..., "--run-id", help="sqlsociety run id (roots tagged run:<id>) or a LangSmith trace UUID."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output JSONL (default ./langsmith-<run id>.jsonl)."),
    show: bool = typer.Option(True, "--show/--no-show", help="Print each pulled rollout's tree."),
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many rollouts."),
) -> None:
    """Fetch traces from LangSmith (through the langsmith client) into the local JSONL format."""
    out = out or Path(f"langsmith-{run_id.replace('/', '_')}.jsonl")
    _check_out(out, "--out", [])

    try:
        groups = lt.pull_traces(project, run_id, limit=limit)
    except (RuntimeError, LookupError) as e:
        _fail(str(e))
    try:
        n = lt.write_records(groups, out)
    except OSError as e:
        _fail(f"cannot write {out} ({e.strerror or e}); pass another --out")
    console.print(f"pulled {len(groups)} rollout(s), {n} span(s) -> {out}")
    if show:
        for key, records in groups.items():
            console.print(render_tree(build_tree(records, rollout_id=key)))


@traces_app.command("dashboard")
def traces_dashboard(
    run_dir: Path = typer.Argument(..., help="Run directory of `sqlsociety train` (holds store.sqlite)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(4747, "--port", help="Port to serve on."),
) -> None:
    """Serve Agent Lightning's dashboard (rollouts, attempts, spans) over the run's store until Ctrl-C."""

    try:
        path = store_path(run_dir)  # before Agent Lightning is imported (seconds)
    except TraceError as e:
        _fail(str(e))
    import asyncio

    from agentlightning.store.client_server import LightningStoreServer

    from evaluation.tracing.store import SqliteLightningStore, StoreLockedError
    try:
        store = SqliteLightningStore(path, recover="keep")
    except StoreLockedError:
        _fail(f"{path} is open by a running trainer; its own store server already serves this dashboard "
              "(default http://localhost:4747)")
    server = LightningStoreServer(store, host=host, port=port)
    console.print(f"Agent Lightning dashboard for {path}: [bold]http://{host}:{port}/[/]  (Ctrl-C to stop)")

    async def _serve() -> None:
        await server.start()
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            await server.stop()

    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


def report(
    run_dir: Path = typer.Argument(..., help="Run directory of `sqlsociety train`."),
    html: Path | None = typer.Option(None, "--html", help="HTML output (default RUN_DIR/report.html)."),
    md: Path | None = typer.Option(None, "--md", help="Markdown output (default RUN_DIR/report.md)."),
) -> None:
    """Write the training report: learning curves, EX per stage, metrics, bandit comparison, per-role
    breakdown, and examples where training changed the answer (self-contained HTML + Markdown)."""
    if not run_dir.is_dir():
        _fail(
            f"run directory {run_dir} does not exist or is not a directory; pass the run directory of `sqlsociety "
            "train`"
        )
    for path, option in ((html, "--html"), (md, "--md")):
        if path is not None:
            _check_out(path, option, [run_dir / "store.sqlite", run_dir / "metrics.jsonl"])
    from evaluation.report import build_report
    from evaluation.run_data import ReportError

    try:
        paths = build_report(run_dir, html, md)
    except ReportError as e:
        _fail(str(e))
    console.print(f"report: {paths.html}\nsummary: {paths.markdown}")


def register(app: typer.Typer) -> None:
    """Add ``traces`` (list/show/export/pull/dashboard) and ``report`` to the root app.

    Also makes "no LangSmith key" mean "nothing sent" for every command of this process
    (:func:`evaluation.tracing.langsmith_traces.disable_tracing_without_key`).
    """

    disable_tracing_without_key()
    app.add_typer(traces_app, name="traces")
    app.command("report")(report)
