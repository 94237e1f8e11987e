"""``sqlsociety ask``, ``sqlsociety eval`` and ``sqlsociety roles`` (Typer + Rich).

``ask`` and ``eval`` start one llama.cpp server (llama-server) per embedded model the config uses, on a
free loopback port, and always stop it (also on Ctrl-C or an error); aliases with a ``base_url``
need no server. Every invocation writes a run directory (see ``society.run``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax
from rich.table import Table

from evaluation.metrics.ex import database_problems
from society.config import DEFAULT_CONFIG, ConfigError, SocietyConfig
from society.evaluate import EvalSummary, evaluate
from society.infra import InfrastructureError, ctrl_c_noted, dead_servers
from society.llm import Endpoint
from society.run import AGENTS, RunRecorder, SocietyRun, endpoint_failure, run_society
from society.run_binding import BoundRun, bound_run
from tools.sampling import more_than_split, sample_examples, select_ids
from tools.spider import DataError, SplitNameError, load_examples, resolve_database

#: Agents the CLI runs (``senior`` needs given SQL per question: training.pipeline runs it).
CLI_AGENTS = tuple(a for a in AGENTS if a != "senior")


def check_agent(agent: str) -> None:
    """Refuse an ``--agent`` the CLI cannot run.

    Raises:
        typer.BadParameter: ``agent`` is not in :data:`CLI_AGENTS` (the message says why ``senior`` is not).
    """
    if agent not in CLI_AGENTS:
        raise typer.BadParameter(f"choose one of {CLI_AGENTS} (the senior-only agent needs the SQL to refine "
                                 "per question; `sqlsociety train` runs it on the juniors' chosen candidates, "
                                 "eval.senior_limit)", param_hint="'--agent'")

console = Console()
err_console = Console(stderr=True)


def load_config(config: Path | None, model_alias: str | None = None) -> SocietyConfig:
    """Load ``config`` (default ``configs/society.yaml``); ``model_alias`` re-points every embedded
    alias to that embedded model (e.g. ``smollm2-135m``).

    Raises:
        typer.BadParameter: the file is invalid, names an embedded model that does not exist, or the
            model alias is unknown.
    """
    from society.models import EMBEDDED_MODELS

    try:
        cfg = SocietyConfig.load(config)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="'--config'") from e
    for alias, spec in cfg.models.items():
        if spec.embedded and spec.embedded not in EMBEDDED_MODELS:
            raise typer.BadParameter(
                f"{config or DEFAULT_CONFIG}: models.{alias}.embedded is {spec.embedded!r}, not an embedded model; "
                f"known: {', '.join(sorted(EMBEDDED_MODELS))} (or give base_url + model for a served one)",
                param_hint="'--config'")
    if model_alias:
        if model_alias not in EMBEDDED_MODELS:
            raise typer.BadParameter(
                f"unknown model alias {model_alias!r}; embedded models: {sorted(EMBEDDED_MODELS)}",
                param_hint="'--model-alias'",
            )
        cfg = cfg.with_embedded(model_alias)
    return cfg


def _slots(concurrency: int) -> int:
    """Server slots for ``concurrency`` questions at once: three juniors each, at least 4, at most 16."""
    return max(4, min(16, 3 * concurrency))


@contextmanager
def serving(config: SocietyConfig, *, quiet: bool = False, proxy: bool = False,
            parallel: int | None = None, adapters: dict[str, Path] | None = None) -> Iterator[dict[str, Endpoint]]:
    """:func:`society.serving.serve_config` with progress lines on stderr (unless ``quiet``); ``adapters``:
    model alias -> GGUF LoRA served for it (``--run``)."""
    from society.serving import serve_config

    def started(srv: object) -> None:
        if not quiet:
            err_console.print(f"[dim]{srv.name} ready at {srv.base_url} ({srv.parallel} slots)[/dim]")  # type: ignore[attr-defined]

    with serve_config(config, proxy=proxy, parallel=parallel, on_start=started, adapters=adapters) as endpoints:
        if proxy and endpoints and not quiet:
            err_console.print(f"[dim]aliases {', '.join(endpoints)} routed through Agent Lightning's LLMProxy at "
                              f"{next(iter(endpoints.values())).base_url}[/dim]")
        yield endpoints


def _endpoint_text(config: SocietyConfig, alias: str | None) -> str:
    if not alias:
        return "-"
    m = config.models[alias]
    return f"{alias} = embedded {m.embedded}" if m.embedded else f"{alias} = {m.model} @ {m.base_url}"


# ---------------------------------------------------------------------- printing


def print_run(run: SocietyRun, *, max_rows: int = 20) -> None:
    """Print a run: path through the graph, candidates and the supervisor's choice, senior turns,
    reviews, the final SQL and its result table, and cost."""
    console.print(
        Panel(
            f"[bold]{run.question}[/bold]\n[dim]db: {run.db_id} ({run.db_path})[/dim]",
            title=f"sqlsociety · {run.agent}",
        )
    )
    console.print("[bold]path[/bold]: " + " → ".join(run.path))
    for ch in run.choices:
        t = Table(title=f"candidates (round {ch.round}) · supervisor policy: {ch.policy}", show_lines=False)
        for col in ("#", "junior", "SQL", "executes", "rows", "score", ""):
            t.add_column(col, overflow="fold")
        for i, c in enumerate(ch.candidates):
            ex = "yes" if c.ok else ("no SQL" if not c.sql else f"no: {c.error_category}")
            if c.fixed:
                ex += " (fixed)"
            score = f"{ch.scores[i]:.2f}" if i < len(ch.scores) else ""
            t.add_row(str(i + 1), c.junior, c.sql or "-", ex, str(c.row_count) if c.ok else "", score,
                      "[green]← chosen[/green]" if i == ch.index else "")
        console.print(t)
        extra = {k: v for k, v in ch.info.items() if k in ("fallback", "skipped", "reply")}
        if extra:
            console.print(f"[dim]supervisor: {extra}[/dim]")
    if run.senior_turns:
        t = Table(title="senior")
        for col in ("step", "verdict", "SQL before", "SQL after"):
            t.add_column(col, overflow="fold")
        for s in run.senior_turns:
            t.add_row(s.kind, s.verdict, s.sql_before or "-", (s.sql_after or "-") if s.kind == "rewrite" else "")
        console.print(t)
    if run.reviews:
        t = Table(title="reviews")
        for col in ("turn", "reviewer", "verdict", "severity", "feedback"):
            t.add_column(col, overflow="fold")
        for r in run.reviews:
            t.add_row(str(r.turn), r.reviewer, r.verdict.value, r.severity.value if r.severity else "", r.feedback)
        console.print(t)
    if run.final_sql:
        console.print(Panel(Syntax(run.final_sql, "sql", word_wrap=True), title=f"final SQL · {run.status}"))
    else:
        console.print(f"[red]no SQL[/red] ({run.status})")
    res = run.result
    if res is not None and res.ok:
        t = Table(title=f"result: {res.row_count}{'+' if res.truncated else ''} rows")
        for c in res.columns:
            t.add_column(str(c), overflow="fold")
        for row in res.rows[:max_rows]:
            t.add_row(*["NULL" if v is None else str(v) for v in row])
        console.print(t)
        if res.row_count > max_rows:
            console.print(f"[dim]... {res.row_count - max_rows} more rows[/dim]")
    elif res is not None and res.sql:
        console.print(f"[red]execution error[/red] ({res.error_category}): {res.error}")
    if run.error:
        console.print(f"[red]error[/red]: {run.error}")
    console.print(
        f"[dim]{run.seconds:.1f} s (model {run.model_seconds:.1f} s) · {run.llm_calls} LLM calls · "
        f"{run.tokens} tokens · {run.turns} review turn(s)[/dim]"
    )


def print_summary(s: EvalSummary, split: str) -> None:
    t = Table(title=f"{s.agent} on {split} ({s.n} questions)")
    for col in ("EX %", "executes %", "failed", "s / q", "LLM calls / q", "tokens / q", "turns / q", "wall s"):
        t.add_column(col, justify="right")
    t.add_row(f"{100 * s.ex:.1f}", f"{100 * s.executed_ok:.1f}", str(s.failed), f"{s.seconds_per_q:.1f}",
              f"{s.llm_calls_per_q:.1f}", f"{s.tokens_per_q:.0f}", f"{s.turns_per_q:.2f}", f"{s.wall_seconds:.0f}")
    console.print(t)


# ---------------------------------------------------------------------- commands

_RUN_HELP = ("A training run directory or a folder of `sqlsociety export`: every role bound to its trained part "
             "(juniors' and senior's LoRA adapters, the supervisor's bandit policy); untrained roles are named.")


def _trained(run: Path | None, config: Path | None, model_alias: str | None) -> BoundRun | None:
    """``--run``'s binding to serve (None without ``--run``), its role lines printed on stderr.

    Raises:
        typer.BadParameter: see :func:`society.run_binding.bound_run`.
    """
    if run is None:
        return None
    bound = bound_run(run, config, model_alias)
    err_console.print(f"[dim]--run {escape(str(run))}:[/dim]", highlight=False)
    for line in bound.notes:
        err_console.print(f"[dim]  {escape(line)}[/dim]", highlight=False, soft_wrap=True)
    return bound


def ask(
    question: str = typer.Argument(..., help="The question, in English."),
    db: str = typer.Option(
        ..., "--db", help="A db_id of the bundled Spider data (e.g. concert_singer) or a path to any SQLite file."
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="Society config YAML.", show_default="configs/society.yaml"
    ),
    model_alias: str = typer.Option(
        None,
        "--model-alias",
        help="Serve every embedded role with this embedded model (qwen2.5-coder-0.5b, smollm2-135m).",
    ),
    agent: str = typer.Option("society", "--agent", help=f"One of {', '.join(CLI_AGENTS)}."),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="Spider-format data directory for db_ids.",
        show_default="bundled data/spider, or $SQLSOCIETY_DATA_DIR",
    ),
    llm_proxy: bool = typer.Option(
        False, "--llm-proxy", help="Route the embedded model aliases through Agent Lightning's LLMProxy."
    ),
    run_dir: Path = typer.Option(None, "--run", help=_RUN_HELP),
) -> None:
    """Answer one question: prints the final SQL, its result, and the path through the graph."""
    check_agent(agent)
    try:
        db_path = resolve_database(db, data_dir)
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="'--db'") from e
    trained = _trained(run_dir, config, model_alias)
    cfg = trained.society if trained else load_config(config, model_alias)
    db_id = db_path.stem if Path(db).suffix or Path(db).exists() else db
    rec = RunRecorder(f"ask-{agent}", cfg, meta={"argv": sys.argv, "agent": agent, "db": str(db_path),
                                                 **({"trained": trained.meta} if trained else {})})
    try:
        with serving(cfg, proxy=llm_proxy, adapters=trained.adapters if trained else None) as endpoints:
            run = run_society(question, db_path, cfg, db_id=db_id, endpoints=endpoints, agent=agent, recorder=rec,
                              question_id="ask")
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted; server stopped; run directory: {rec.dir}[/yellow]")
        raise typer.Exit(130) from None
    except InfrastructureError as e:
        err_console.print(f"[red]stopped:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if endpoint_failure(run):  # a dead server or an endpoint that stayed down: say so, not "no SQL"
        dead = dead_servers()
        err_console.print(f"[red]stopped:[/red] {escape(str(dead[0]) if dead else endpoint_failure(run))}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    print_run(run)
    console.print(f"[dim]run directory: {rec.dir}[/dim]")
    if run.status == "failed":
        raise typer.Exit(1)


def _usable(examples: list) -> list:
    """``examples`` less those whose database file is unusable (empty, not SQLite, corrupt, a
    directory); one warning per such database counts the questions skipped."""
    problems = database_problems(examples)
    for db, why in problems.items():
        n = sum(str(e.db_path) == db for e in examples)
        err_console.print(f"[yellow]warning:[/] skipped {n} question(s): database {escape(db)} {escape(why)}",
                          soft_wrap=True)
    return [e for e in examples if str(e.db_path) not in problems]


def eval_cmd(
    split: str = typer.Option("dev", "--split", help="Split name (dev, train, ...)."),
    limit: int = typer.Option(
        None,
        "--limit",
        min=1,
        help="Only the first N executable questions (file order: the first 100 of Spider dev cover 3 databases).",
    ),
    sample: int = typer.Option(
        None,
        "--sample",
        min=1,
        help="N questions drawn at random across all databases (same draw for the same --seed).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --sample draw."),
    ids: str = typer.Option(None, "--ids", help="Comma-separated question ids to run (e.g. dev-0,dev-17)."),
    agent: str = typer.Option("society", "--agent", help=f"One of {', '.join(CLI_AGENTS)}."),
    concurrency: int = typer.Option(
        1, "--concurrency", min=1, help="Questions run at once (threads; each takes one database at a time)."
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="Society config YAML.", show_default="configs/society.yaml"
    ),
    model_alias: str = typer.Option(None, "--model-alias", help="Serve every embedded role with this embedded model."),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="Spider-format data directory.",
        show_default="bundled data/spider, or $SQLSOCIETY_DATA_DIR",
    ),
    llm_proxy: bool = typer.Option(
        False, "--llm-proxy", help="Route the embedded model aliases through Agent Lightning's LLMProxy."
    ),
    run_dir: Path = typer.Option(None, "--run", help=_RUN_HELP),
) -> None:
    """Run an agent over a split with a progress bar; writes predictions and per-question JSONL; prints EX.

    Questions run grouped by database (each schema prompt is processed once per database). A
    ``--limit`` or ``--sample`` larger than the split's executable questions runs all of them, with
    a note on stderr that says so (:func:`tools.sampling.more_than_split`).

    Raises:
        typer.BadParameter: more than one of --limit/--sample/--ids, a ``--split`` that is not a plain
            name (a path separator: :class:`tools.spider.SplitNameError`), an unusable data directory
            or split, unknown ids, no executable question, or an invalid config (exit code 2).
    """
    check_agent(agent)
    if sum(x is not None for x in (limit, sample, ids)) > 1:
        raise typer.BadParameter(
            "give at most one of --limit, --sample and --ids", param_hint="'--limit' / '--sample' / '--ids'"
        )
    try:
        examples = load_examples(data_dir, split, limit=limit)
    except SplitNameError as e:
        raise typer.BadParameter(str(e), param_hint="'--split'") from e
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="'--split' / '--data-dir'") from e
    for option, asked in (("--limit", limit), ("--sample", sample)):
        if asked is not None and asked > len(examples) > 0:
            err_console.print(f"[yellow]note:[/] {more_than_split(option, asked, split, len(examples))}",
                              soft_wrap=True)
    if sample is not None:
        examples = sample_examples(examples, sample, seed)
    if ids is not None:
        try:
            examples = select_ids(examples, ids.split(","))
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'--ids'") from e
    examples = _usable(examples)
    if not examples:
        raise typer.BadParameter(f"split {split!r} has no executable question", param_hint="'--split'")
    trained = _trained(run_dir, config, model_alias)
    cfg = trained.society if trained else load_config(config, model_alias)
    rec = RunRecorder(f"eval-{agent}-{split}", cfg, meta={
        **({"trained": trained.meta} if trained else {}),
        "argv": sys.argv, "agent": agent, "split": split, "limit": limit, "sample": sample, "seed": seed,
        "concurrency": concurrency, "question_ids": [e.id for e in examples],
        "databases": sorted({e.db_id for e in examples}),
    })
    done = {"n": 0, "match": 0}
    summary: EvalSummary | None = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[ex]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{agent} · {split}", total=len(examples), ex="")

        def on_result(r: dict) -> None:
            done["n"] += 1
            done["match"] += bool(r.get("match"))
            progress.update(task, advance=1, ex=f"EX {100 * done['match'] / done['n']:.1f}%")

        stop = threading.Event()
        try:
            with ctrl_c_noted(stop), serving(cfg, proxy=llm_proxy, parallel=_slots(concurrency),
                                             adapters=trained.adapters if trained else None) as endpoints:
                summary = evaluate(examples, cfg, agent=agent, concurrency=concurrency, endpoints=endpoints,
                                   recorder=rec, on_result=on_result, stop=stop)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(f"[yellow]interrupted after {done['n']} questions; server stopped; "
                              f"kept: {rec.dir}[/yellow]")
            raise typer.Exit(130) from None
        except InfrastructureError as e:
            progress.stop()
            err_console.print(f"[red]stopped:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            err_console.print(f"{done['n']} finished question(s) kept in {rec.dir}; the question in flight was not "
                              "scored. Fix the cause and run the evaluation again.")
            raise typer.Exit(1) from None
    assert summary is not None
    print_summary(summary, split)
    console.print(f"[dim]run directory: {rec.dir} (questions.jsonl, predictions.sql, traces/)[/dim]")


def roles(
    config: Path = typer.Option(
        None, "--config", "-c", help="Society config YAML.", show_default="configs/society.yaml"
    ),
    run_dir: Path = typer.Option(None, "--run", help=_RUN_HELP),
) -> None:
    """Print the roles of a config and what each is bound to (model, prompt, sampling, policy, tools);
    with ``--run``, also each role's trained part (or why it stays untrained)."""
    from society.roles import ROLE_TYPES
    from society.toolkit import web_search_available

    trained = bound_run(run_dir, config, serve=False) if run_dir is not None else None
    cfg = trained.society if trained else load_config(config)
    t = Table(title=f"roles · {cfg.name}" + (f" ({config or run_dir})" if config or run_dir else ""))
    for col in ("role", "type", "persona / policy", "model", "prompt · sampling · options"):
        t.add_column(col, overflow="fold")
    for r in cfg.roles:
        kind = ROLE_TYPES[r.type].kind
        name = r.name + (f" ×{r.count}" if r.count > 1 else "") + ("" if r.enabled else " (disabled)")
        who = f"policy: {r.policy or 'majority_vote'}" if kind == "supervisor" else (r.persona or "")
        uses_llm = cfg.uses_llm(r)
        if r.prompt is None:
            prompt = ROLE_TYPES[r.type].default_prompt_for(r) or "-"
        else:
            prompt = r.prompt if isinstance(r.prompt, str) else "(inline)"
        s = r.sampling
        parts = []
        if uses_llm:
            parts += [
                f"prompt={prompt}",
                f"T={s.temperature:g} max_tokens={s.max_tokens}"
                + (f" seed={s.seed}" if s.seed is not None else "")
                + (f" stop={s.stop}" if s.stop else ""),
            ]
        parts += [f"{k}={v}" for k, v in r.options.items()]
        if "web_search" in r.tools:
            parts.append("web_search=" + ("on" if web_search_available(r.tools) else "off (no TAVILY_API_KEY)"))
        t.add_row(
            name,
            r.type,
            who,
            _endpoint_text(cfg, r.model) if uses_llm else "- (deterministic)",
            "\n".join(parts) or "-",
        )
    console.print(t)
    lim = cfg.limits
    console.print(
        f"limits: max_review_rounds={lim.max_review_rounds}, max_junior_rounds={lim.max_junior_rounds}; "
        f"llm: timeout={cfg.llm.timeout_s:g}s retries={cfg.llm.retries}; schema: compact={cfg.schema_.compact} "
        f"sample_rows={cfg.schema_.sample_rows}"
    )
    if trained:
        console.print(f"trained parts (--run {escape(str(run_dir))}):", highlight=False, soft_wrap=True)
        for line in trained.notes:
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``ask``, ``eval`` and ``roles`` to the root ``sqlsociety`` app."""
    app.command("ask")(ask)
    app.command("eval")(eval_cmd)
    app.command("roles")(roles)
