"""Running the society on one question (:func:`run_society`) and recording runs locally
(:class:`RunRecorder`). Evaluating an agent over a split (EX, ``predictions.sql``, ``summary.json``) is
:func:`society.evaluate.evaluate`, which runs each question through :func:`run_society`.

``run_society`` is what the CLI, the benchmark and the trainer call. It never raises for model
or SQL problems: an endpoint that stays down after retries marks the question ``failed`` (with
the partial state kept), malformed output fails only the candidate concerned.

Run directory (always written by ``sqlsociety ask`` / ``eval``; ``$SQLSOCIETY_RUNS_DIR`` or
``./runs``)::

    runs/<YYYYmmdd-HHMMSS>-<name>/
        config.yaml          the resolved society config (no API keys)
        meta.json            command, agent, start time, model endpoints (no keys)
        questions.jsonl      one line per question (SQL, status, EX if known, turns, calls, tokens, seconds)
        traces/<qid>.json    full trace: node visits, candidates, choice, senior turns, reviews,
                             LLM calls (prompt, response, tokens, latency), tool calls (SQL, result, error)
        predictions.sql      (eval, written by society.evaluate) one predicted query per line,
                             Spider's format
        summary.json         (eval, written by society.evaluate) EX and per-question means

LangSmith: with ``LANGSMITH_TRACING=true`` and ``LANGSMITH_API_KEY`` set, LangChain sends every
run (graph ``society``, nodes, LLM calls named ``junior:<persona>`` / ``supervisor`` / ``senior`` /
``reviewer:semantic``, tools ``sql_db_query`` / ``sql_db_schema``) with the metadata below; without
a key nothing is sent.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from society.candidate import Candidate
from society.config import SocietyConfig
from society.llm import CallLog, ChatModels, Endpoint, as_endpoint
from society.response_cache import ResponseCache
from society.roles import ENDPOINT_FAILURE, RunContext
from society.state import ExecSummary, Review, SeniorTurn, SupervisorChoice

#: Agents :func:`run_society` (and so ``society.evaluate.evaluate`` / ``sqlsociety eval``) can run.
AGENTS = ("society", "single", "write-check-rewrite", "juniors", "senior")


class SocietyRun(BaseModel):
    """The outcome of one question.

    Attributes:
        agent: ``society``, ``single``, ``write-check-rewrite``, ``juniors`` or ``senior``.
        question / question_id / db_id / db_path: the task.
        run_id: unique id of this run (in every LLM/tool run's metadata).
        final_sql: the answer (None when no usable SQL was produced).
        result: executing ``final_sql`` (first rows, row count, error).
        status: ``approved`` (reviewers approved; write-check-rewrite: the check said correct),
            ``turn_limit`` (ended by the global turn limit), ``converged`` (the senior gave back the
            same SQL for the same feedback, so more turns could not change it), ``single`` (one-shot
            baseline), ``juniors`` / ``senior`` (a role-level agent's answer), ``failed`` (endpoint down
            after retries, no usable SQL, or the graph raised).
        error: why it failed, or None.
        path: ordered node visits, e.g. ``["prepare", "junior_direct/draft", ..., "finalize"]``.
        candidates: the last junior round's candidates; choices: every supervisor decision.
        senior_turns / reviews: every senior check/rewrite and every review.
        turns: review rounds done; junior_rounds: junior rounds done.
        llm_calls / input_tokens / output_tokens / tokens: totals over all roles.
        cached_calls: of ``llm_calls``, those answered from the response cache (their tokens are the
            earlier live call's; their seconds almost none, so ``seconds`` understates a live run).
        per_role: role instance -> {llm_calls, input_tokens, output_tokens, tokens, model_s[, cached_calls]}.
        seconds: wall time of the run; model_seconds: time with at least one LLM call in flight.
        errors: non-fatal problems (a junior's endpoint error, a policy fallback, ...).
        trace: LLM and tool calls (``CallLog.to_json()``); excluded from the JSONL line.
    """

    agent: str = "society"
    question: str
    question_id: str = ""
    db_id: str = ""
    db_path: str = ""
    run_id: str = ""
    final_sql: str | None = None
    result: ExecSummary | None = None
    status: str = ""
    error: str | None = None
    path: list[str] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    choices: list[SupervisorChoice] = Field(default_factory=list)
    senior_turns: list[SeniorTurn] = Field(default_factory=list)
    reviews: list[Review] = Field(default_factory=list)
    turns: int = 0
    junior_rounds: int = 0
    llm_calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0
    per_role: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seconds: float = 0.0
    model_seconds: float = 0.0
    errors: list[str] = Field(default_factory=list)
    trace: dict[str, Any] = Field(default_factory=dict)

    @property
    def choice(self) -> SupervisorChoice | None:
        """The last supervisor decision (None for the baselines)."""
        return self.choices[-1] if self.choices else None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def senior_before_after(self) -> tuple[str | None, str | None]:
        """SQL the senior received (the chosen candidate of the last round) and the final answer."""
        ch = self.choice
        return (ch.chosen.sql if ch and ch.chosen else None), self.final_sql

    def role_outcomes(self) -> dict[str, dict[str, Any]]:
        """Per-role outcomes for credit assignment: each junior's candidate (``sql``, ``ok``,
        ``persona``, ``fixed``), the supervisor's ``choice`` (junior name), ``index``, ``policy``,
        ``scores``, and the senior's ``before_sql`` / ``after_sql`` / ``turns``."""
        out: dict[str, dict[str, Any]] = {}
        for c in self.candidates:
            out[c.junior] = {
                "sql": c.sql,
                "ok": c.ok,
                "persona": c.persona,
                "fixed": c.fixed,
                "row_count": c.row_count,
            }
        ch = self.choice
        if ch is not None and self.agent != "senior":
            out["supervisor"] = {
                "choice": ch.chosen.junior if ch.chosen else None,
                "index": ch.index,
                "policy": ch.policy,
                "scores": ch.scores,
            }
        if ch is not None and self.agent != "juniors":
            before, after = self.senior_before_after()
            out["senior"] = {"before_sql": before, "after_sql": after, "turns": len(self.senior_turns)}
        return out

    def to_record(self) -> dict[str, Any]:
        """One JSON-able line for ``questions.jsonl`` (no trace, compact result)."""
        d = self.model_dump(mode="json", exclude={"trace"})
        d["pred_sql"] = self.final_sql
        d["executed_ok"] = bool(self.result and self.result.ok)
        d["roles"] = self.role_outcomes()
        return d


# ---------------------------------------------------------------------- caches

_GRAPH_CACHE: dict[tuple[str, str], Any] = {}
_MODELS_CACHE: dict[str, ChatModels] = {}
_CACHE_LOCK = threading.Lock()


def get_graph(config: SocietyConfig, agent: str = "society") -> Any:
    """The compiled graph for ``config`` and ``agent`` (cached; endpoints don't affect the graph)."""
    key = (agent, config.model_dump_json(exclude={"models"}))
    with _CACHE_LOCK:
        g = _GRAPH_CACHE.get(key)
    if g is None:
        if agent == "society":
            from society.graph import build_graph

            g = build_graph(config)
        elif agent in ("juniors", "senior"):
            from society.baselines import build_role_graph

            g = build_role_graph(config, agent)
        else:
            from society.baselines import build_baseline_graph

            g = build_baseline_graph(config, agent)
        with _CACHE_LOCK:
            _GRAPH_CACHE[key] = g
    return g


def get_models(config: SocietyConfig, endpoints: dict[str, Any] | None,
               cache: ResponseCache | None = None) -> ChatModels:
    """A cached :class:`ChatModels` for ``config`` + ``endpoints`` + ``cache`` (so HTTP clients are reused)."""
    eps = {a: as_endpoint(e) for a, e in (endpoints or {}).items()}
    key = json.dumps(
        [
            config.model_dump(mode="json", include={"models", "llm"}),
            {a: [e.base_url, e.model, e.api_key, e.extra_body, e.weights] for a, e in sorted(eps.items())},
            [(a, m.api_key) for a, m in sorted(config.models.items())],
            None if cache is None else cache.token,
        ],
        sort_keys=True,
        default=str,
    )
    with _CACHE_LOCK:
        m = _MODELS_CACHE.get(key)
        if m is None:
            m = _MODELS_CACHE[key] = ChatModels(config, eps, cache)
    return m


# ---------------------------------------------------------------------- one question


def run_society(
    question: str,
    db_path: str | Path,
    config: SocietyConfig | None = None,
    *,
    question_id: str | None = None,
    db_id: str | None = None,
    callbacks: Sequence[Any] | None = None,
    metadata: dict[str, Any] | None = None,
    tags: Sequence[str] = (),
    endpoints: dict[str, Endpoint | tuple[str, str] | tuple[str, str, str]] | None = None,
    agent: str = "society",
    recorder: RunRecorder | None = None,
    given_sql: str | None = None,
    junior_hint: str | None = None,
    response_cache: ResponseCache | None = None,
) -> SocietyRun:
    """Answer ``question`` on the SQLite database ``db_path`` with the society (or a baseline).

    Args:
        question: the natural-language question (non-empty).
        db_path: an existing SQLite file (use ``tools.spider.resolve_database`` for a db_id).
        config: the society config (default: ``configs/society.yaml``).
        question_id / db_id: identifiers put in every run's metadata (default: a fresh id / the file stem).
        callbacks: LangChain callback handlers for the whole graph run (e.g. Agent Lightning's
            ``tracer.get_langchain_handler()``); every node, LLM and tool run nests under them.
        metadata: extra metadata for every run (e.g. ``{"rollout_id": ...}``).
        tags: extra tags for the graph run.
        endpoints: model alias -> ``Endpoint`` or ``(base_url, model[, api_key])``, overriding the
            config (needed for ``embedded`` aliases: the CLI passes the server it started).
        agent: ``society`` (default), ``single``, ``write-check-rewrite``, or a role-level agent
            (``juniors``, ``senior``: see ``society.baselines``).
        recorder: when given, the run is appended to its run directory.
        given_sql: the SQL the ``senior`` agent refines (None: nothing to refine, the run ends
            ``failed`` with "no SQL given"); ignored by the other agents.
        junior_hint: a SQL query every junior is shown as a hint before its own prompt (STaR
            rationalization: the gold SQL, see :func:`society.prompts.hint_block`); None: no hint.
            Every agent whose juniors draft uses it (``society``, ``juniors``, the baselines' writer);
            ``senior`` ignores it.
        response_cache: answer repeated deterministic requests to endpoints with a ``weights``
            identity from it (:mod:`society.response_cache`); the run's ``cached_calls`` counts them.

    Returns:
        :class:`SocietyRun`; ``status == "failed"`` with ``error`` set when an endpoint stayed down
        or the graph raised (the partial state is kept).

    Raises:
        ValueError: empty question, unknown agent, or ``db_path`` is not a file.
        KeyboardInterrupt: passed through (the caller stops servers; written records stay).
    """
    if not question or not question.strip():
        raise ValueError("question is empty; pass the natural-language question to answer")
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose one of {AGENTS}")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ValueError(
            f"database {db_path} is not a file; pass a SQLite path (or resolve a db_id with "
            "tools.spider.resolve_database)"
        )
    if config is None:
        config = SocietyConfig.load()
    run_id = uuid.uuid4().hex[:12]
    qid = question_id or f"q-{run_id}"
    ctx = RunContext(
        config=config, models=get_models(config, endpoints, response_cache), db_path=str(db_path),
        db_id=db_id or db_path.stem, question_id=qid, run_id=run_id, log=CallLog(), metadata=dict(metadata or {}),
    )
    graph = get_graph(config, agent)
    invoke_cfg: dict[str, Any] = {
        "configurable": {"society": ctx},
        "recursion_limit": config.limits.recursion_limit,
        "run_name": agent,
        "tags": [agent, *tags],
        "metadata": {"question_id": qid, "db_id": ctx.db_id, "run_id": run_id, "agent": agent, **ctx.metadata},
    }
    if callbacks:
        invoke_cfg["callbacks"] = list(callbacks)
    inputs: dict[str, Any] = {"question": question.strip(), "question_id": qid, "db_id": ctx.db_id,
                              "db_path": str(db_path)}
    if agent == "senior":
        inputs["given_sql"] = given_sql
    if junior_hint:
        inputs["junior_hint"] = junior_hint

    t0 = time.perf_counter()
    state: dict[str, Any] = dict(inputs)
    crash: str | None = None
    try:
        for snapshot in graph.stream(inputs, invoke_cfg, stream_mode="values"):
            state = snapshot
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - never crash the caller; keep the partial state
        crash = f"graph: {type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    run = _run_from_state(state, ctx, agent=agent, seconds=seconds)
    if crash:
        run.status, run.error = "failed", crash
        run.errors.append(crash)
    if recorder is not None:
        recorder.record(run)
    return run


def _in_junior_order(cands: list[Candidate], ctx: RunContext) -> list[Candidate]:
    order = {j.name: i for i, j in enumerate(ctx.config.instances("junior"))}
    return sorted(cands, key=lambda c: order.get(c.junior, len(order)))


def _run_from_state(state: dict[str, Any], ctx: RunContext, *, agent: str, seconds: float) -> SocietyRun:
    per_role = ctx.log.per_role()
    inp = sum(int(v["input_tokens"]) for v in per_role.values())
    out = sum(int(v["output_tokens"]) for v in per_role.values())
    return SocietyRun(
        agent=agent,
        question=state.get("question", ""),
        question_id=ctx.question_id,
        db_id=ctx.db_id,
        db_path=ctx.db_path,
        run_id=ctx.run_id,
        final_sql=state.get("final_sql"),
        result=state.get("final_exec"),
        status=state.get("status") or "failed",
        error=state.get("error") or (None if state.get("status") else "the graph did not reach finalize"),
        path=list(state.get("visits") or []),
        candidates=_in_junior_order(state.get("candidates") or [], ctx),
        choices=list(state.get("choices") or []),
        senior_turns=list(state.get("senior_turns") or []),
        reviews=list(state.get("reviews") or []),
        turns=int(state.get("turn") or 0),
        junior_rounds=int(state["junior_round"]) + 1 if "junior_round" in state else 0,
        llm_calls=sum(int(v["llm_calls"]) for v in per_role.values()),
        cached_calls=sum(int(v.get("cached_calls", 0)) for v in per_role.values()),
        input_tokens=inp,
        output_tokens=out,
        tokens=inp + out,
        per_role=per_role,
        seconds=seconds,
        model_seconds=ctx.log.model_busy_seconds(),
        errors=list(state.get("errors") or []),
        trace=ctx.log.to_json(),
    )


# ---------------------------------------------------------------------- run directories


def runs_root() -> Path:
    """``$SQLSOCIETY_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("SQLSOCIETY_RUNS_DIR") or "runs")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


class RunRecorder:
    """Writes one run directory (layout in the module docstring). Thread-safe; every record is
    flushed as it is written, so an interrupted run keeps what it finished.

    Args:
        name: a short label for the directory name (``ask``, ``eval-society``, ...).
        config: snapshot written as ``config.yaml``.
        root: parent directory (default :func:`runs_root`).
        meta: extra JSON-able facts for ``meta.json``.
    """

    def __init__(self, name: str, config: SocietyConfig | None = None, *, root: str | Path | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        root = Path(root) if root is not None else runs_root()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = root / f"{stamp}-{_safe(name)}"
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        self.dir = path
        (self.dir / "traces").mkdir(parents=True)
        self._lock = threading.Lock()
        if config is not None:
            (self.dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        info = {"name": name, "started": datetime.now().isoformat(timespec="seconds"), **(meta or {})}
        (self.dir / "meta.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")

    @property
    def questions_path(self) -> Path:
        return self.dir / "questions.jsonl"

    def record(self, run: SocietyRun, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append ``run`` (+ ``extra`` fields, e.g. EX) to ``questions.jsonl`` and write its trace file."""
        rec = {**run.to_record(), **(extra or {})}
        trace = {**run.model_dump(mode="json"), **(extra or {})}
        name = _safe(run.question_id or run.run_id)
        with self._lock:
            (self.dir / "traces" / f"{name}.json").write_text(
                json.dumps(trace, indent=1, default=str), encoding="utf-8"
            )
            with self.questions_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec, default=str) + "\n")
                f.flush()
        return rec

    def write_json(self, name: str, data: Any) -> Path:
        p = self.dir / name
        p.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        return p


def endpoint_failure(run: SocietyRun) -> str | None:
    """The first error of ``run`` saying a model endpoint stayed down after all retries or its server
    died (``endpoint: <role>: ...``), or None. Such a run says nothing about the question."""
    for e in run.errors:
        if str(e).startswith(ENDPOINT_FAILURE + ":"):
            return str(e)
    return None
