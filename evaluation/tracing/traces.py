"""A run's traces: list, load and export the rollouts a run directory recorded.

The source of truth is the run's persistent LightningStore (``RUN_DIR/store.sqlite``, read with
:class:`evaluation.tracing.store.RolloutArchive`, safe while a trainer writes), checked with plain
``sqlite3`` before Agent Lightning is imported (:func:`store_problem`). Reading writes nothing:
with no trainer running the store is opened as a snapshot (``immutable``, so SQLite creates no
``-wal``/``-shm`` beside it; :func:`tools.sqlite_files.read_only_uri`). A society run directory
(``sqlsociety ask`` / ``eval``: ``traces/<question>.json``, no store) is read too, one question
per rollout (:mod:`evaluation.tracing.society_spans`).

Spans become span records (:mod:`evaluation.tracing.trace_records`), a rollout's records a tree
(:mod:`evaluation.tracing.trace_tree`), printed by :mod:`evaluation.tracing.trace_render`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.tracing.society_spans import society_run_records
from evaluation.tracing.trace_records import TraceError, span_to_record
from evaluation.tracing.trace_tree import RolloutTrace, build_tree
from tools.files import atomic_writer, read_jsonl
from tools.sqlite_files import read_error_problem, read_only_uri

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- run directories


def is_society_run_dir(run_dir: str | Path) -> bool:
    """True for a society run directory (``traces/*.json`` and no ``store.sqlite``)."""
    p = Path(run_dir)
    return p.is_dir() and not (p / "store.sqlite").exists() and (p / "traces").is_dir()


#: Tables every rollout store has (``evaluation.tracing.store``'s schema); checked before the store is read.
STORE_TABLES = ("rollouts", "attempts", "spans", "rewards")


def store_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable rollout store, or None when it is. Plain ``sqlite3``, read-only
    (Agent Lightning is not imported, nothing is created or changed). Never raises.

    Returns:
        None, or a phrase completing "store <path> ...": ``"is empty (0 bytes)"``, ``"is not an SQLite
        database (...)"``, ``"is corrupt (...)"``, ``"is an SQLite file but not a rollout store
        (no table ...)"``.
    """
    p = Path(path)
    with _no_new_sidecars(p, always=False) as outcome:
        outcome.append(_store_problem(p))
    return outcome[0]


def _sidecars(p: Path) -> list[Path]:
    return [p.with_name(p.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


@contextmanager
def _no_new_sidecars(p: Path, *, always: bool) -> Iterator[list]:
    """Remove the ``-wal``/``-shm``/``-journal`` files that SQLite creates when it reads a WAL-mode
    file and that were not there before, after the block: always (``always``), else only when the
    block raised or yielded a problem (its list's first item is not None). A read that fails
    leaves the run directory as it was."""
    before = {s for s in _sidecars(p) if s.exists()}
    outcome: list = []
    failed = True
    try:
        yield outcome
        failed = bool(outcome) and outcome[0] is not None
    finally:
        if always or failed:
            for s in _sidecars(p):
                if s not in before and s.exists() and (s.name.endswith("-shm") or s.stat().st_size == 0):
                    try:
                        s.unlink()
                    except OSError:
                        pass


def _store_problem(p: Path) -> str | None:
    try:
        size = p.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return (
            "is empty (0 bytes); it is not a rollout store — pass the run directory of a finished `sqlsociety train`"
        )
    try:
        conn = sqlite3.connect(read_only_uri(p.resolve(), snapshot=True), uri=True)
    except sqlite3.Error as e:
        return f"cannot be opened read-only ({e})"
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        return read_error_problem(e, not_a_database="pass the run directory of `sqlsociety train`",
                                  corrupt="the run's traces cannot be read")
    finally:
        conn.close()
    missing = [t for t in STORE_TABLES if t not in tables]
    if missing:
        return (f"is an SQLite file but not a rollout store (no table {', '.join(missing)}); "
                "pass the run directory of `sqlsociety train`")
    return None


def store_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/store.sqlite``, or ``run_dir`` itself when it is a ``.sqlite`` file; checked to be a
    readable rollout store (:func:`store_problem`).

    Raises:
        TraceError: when neither exists, or the file is not a readable rollout store (empty, not
            SQLite, corrupt, or another SQLite file).
    """
    p = Path(run_dir).expanduser()
    if p.is_file() and p.suffix in (".sqlite", ".db", ".sqlite3"):
        s = p
    else:
        if not p.exists():
            raise TraceError(f"run directory {p} does not exist; pass a run directory made by `sqlsociety train` "
                             "(it holds store.sqlite)")
        s = p / "store.sqlite"
        if not s.is_file():
            raise TraceError(
                f"no store at {s}; pass a run directory made by `sqlsociety train` (it holds store.sqlite)"
            )
    problem = store_problem(s)
    if problem:
        raise TraceError(f"store {s} {problem}")
    return s


@contextmanager
def _reading(spath: Path) -> Iterator[None]:
    """Turn errors met while reading a store that passed :func:`store_problem` (pages corrupt
    further in, rows that are not Agent Lightning records) into :class:`TraceError`; the read
    then leaves no SQLite side files behind that were not there before."""
    try:
        with _no_new_sidecars(spath, always=False):
            yield
    except sqlite3.DatabaseError as e:
        raise TraceError(f"store {spath} is corrupt ({e}); the run's traces cannot be read") from e
    except ValueError as e:  # pydantic ValidationError / JSONDecodeError of a stored row
        if isinstance(e, TraceError):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TraceError(f"store {spath} holds a row that is not an Agent Lightning record ({first[:200]})") from e


def _metrics_by_rollout(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    try:
        rows = read_jsonl(path, skip_bad=True)  # a run may be appending to it
    except ValueError as e:
        logger.warning("ignoring %s: %s", path, e)
        return {}
    return {str(row["rollout_id"]): row for row in rows if row.get("rollout_id")}


@dataclass(frozen=True)
class RolloutSummary:
    """One line of ``traces list``.

    Attributes:
        rollout_id, task_id, status, phase, db_id, question: as recorded (phase/db_id/question
            from the rollout input or metadata, else from ``metrics.jsonl``; None when unknown).
        reward: final reward or None; ex: the rollout's EX from metrics.jsonl or None.
        n_spans: spans stored; duration_s: end - start in seconds or None.
    """

    rollout_id: str
    task_id: str | None
    status: str
    phase: str | None
    db_id: str | None
    question: str | None
    reward: float | None
    ex: float | None
    n_spans: int
    duration_s: float | None


def _lookup(rec: Any, key: str) -> Any:
    for src in (rec.input if isinstance(rec.input, Mapping) else {}, rec.metadata or {}):
        if src.get(key) is not None:
            return src[key]
    return None


def list_rollouts(
    run_dir: str | Path,
    *,
    phase: str | None = None,
    min_reward: float | None = None,
    failed: bool = False,
) -> list[RolloutSummary]:
    """Rollouts of a run in start order, filtered.

    Args:
        run_dir: run directory (or the store file).
        phase: keep rollouts of this phase only (matched as a substring, so ``sft`` matches ``2-sft``).
        min_reward: keep rollouts with reward >= this.
        failed: keep only rollouts that failed (status failed/cancelled, or no reward emitted).

    Raises:
        TraceError: no store, or the store is not a readable rollout store.
    """
    if is_society_run_dir(run_dir):
        return _list_society_run(Path(run_dir), phase=phase, min_reward=min_reward, failed=failed)
    spath = store_path(run_dir)  # checked before Agent Lightning is imported (seconds)
    from evaluation.tracing.store import RolloutArchive  # the store module owns the file format

    metrics = _metrics_by_rollout(spath.parent)
    out = []
    with _reading(spath), RolloutArchive(spath, snapshot=True) as arch:
        for rec in arch.rollouts():
            m = metrics.get(rec.rollout_id, {})
            ph = m.get("phase") or _lookup(rec, "phase")
            reward = rec.reward if rec.reward is not None else m.get("reward")
            summary = RolloutSummary(
                rollout_id=rec.rollout_id,
                task_id=rec.task_id or m.get("task_id"),
                status=rec.status,
                phase=None if ph is None else str(ph),
                db_id=_lookup(rec, "db_id"),
                question=_lookup(rec, "question"),
                reward=None if reward is None else float(reward),
                ex=None if m.get("ex") is None else float(m["ex"]),
                n_spans=rec.n_spans,
                duration_s=None if rec.end_time is None else rec.end_time - rec.start_time,
            )
            if phase and (summary.phase is None or phase not in summary.phase):
                continue
            if min_reward is not None and (summary.reward is None or summary.reward < min_reward):
                continue
            if failed and not (summary.status in ("failed", "cancelled") or summary.reward is None):
                continue
            out.append(summary)
    return out


def _society_span_count(run_dir: Path, question_id: str) -> int:
    f = run_dir / "traces" / f"{question_id}.json"
    try:
        return len(society_run_records(json.loads(f.read_text(encoding="utf-8"))))
    except (OSError, ValueError):
        return 0


def _list_society_run(
    run_dir: Path, *, phase: str | None, min_reward: float | None, failed: bool
) -> list[RolloutSummary]:
    """``list_rollouts`` for a society run directory: one row per ``questions.jsonl`` line (phase =
    the agent; EX = ``match`` when the run was an eval; no reward is recorded there; spans = the
    records :func:`society_run_records` makes of the question's trace file)."""
    out = []
    qpath = run_dir / "questions.jsonl"
    questions = read_jsonl(qpath, error=TraceError, skip_bad=True) if qpath.is_file() else []
    for q in questions:
        row = RolloutSummary(
            rollout_id=str(q.get("question_id") or q.get("run_id")), task_id=q.get("question_id"),
            status=str(q.get("status") or "?"), phase=q.get("agent"), db_id=q.get("db_id"), question=q.get("question"),
            reward=None, ex=None if q.get("match") is None else float(bool(q["match"])),
            n_spans=_society_span_count(run_dir, str(q.get("question_id") or "")), duration_s=q.get("seconds"),
        )
        if phase and (row.phase is None or phase not in row.phase):
            continue
        if min_reward is not None:
            continue  # society runs record no reward
        if failed and row.status != "failed":
            continue
        out.append(row)
    return out


def load_rollout_trace(run_dir: str | Path, rollout_id: str, *, prune: bool = True) -> RolloutTrace:
    """A rollout's tree from the run's store (its latest attempt), with the rollout's facts in ``info``.

    Raises:
        TraceError: no store, an unreadable store, or no such rollout (the message lists a few ids
            that exist).
    """
    if is_society_run_dir(run_dir):
        return load_society_trace(run_dir, rollout_id, prune=prune)
    spath = store_path(run_dir)
    from evaluation.tracing.store import RolloutArchive

    with _reading(spath), RolloutArchive(spath, snapshot=True) as arch:
        recs = arch.rollouts()
        match = [r for r in recs if r.rollout_id == rollout_id] or [
            r for r in recs if r.rollout_id.startswith(rollout_id)
        ]
        if len(match) != 1:
            some = ", ".join(r.rollout_id for r in recs[:5])
            what = "several rollouts start with" if match else "no rollout"
            raise TraceError(f"{what} {rollout_id!r} in {spath}; ids there include: {some or '(none)'}")
        rec = match[0]
        spans = arch.spans(rec.rollout_id)
    trace = build_tree([span_to_record(s) for s in spans], prune=prune, rollout_id=rec.rollout_id)
    m = _metrics_by_rollout(spath.parent).get(rec.rollout_id, {})
    trace.info = {
        "task_id": rec.task_id,
        "status": rec.status,
        "phase": m.get("phase") or _lookup(rec, "phase"),
        "db_id": _lookup(rec, "db_id"),
        "question": _lookup(rec, "question"),
    }
    if trace.reward is None and rec.reward is not None:
        trace.reward = rec.reward
    if not trace.role_credit and m.get("role_outcomes"):
        trace.role_credit = {
            k: dict(v) if isinstance(v, Mapping) else {"value": v} for k, v in m["role_outcomes"].items()
        }
    return trace


def _society_trace_file(run_dir: Path, question_id: str) -> Path:
    files = sorted((run_dir / "traces").glob("*.json"))
    match = [f for f in files if f.stem == question_id] or [f for f in files if f.stem.startswith(question_id)]
    if len(match) != 1:
        some = ", ".join(f.stem for f in files[:5])
        what = "several questions start with" if match else "no question"
        raise TraceError(f"{what} {question_id!r} in {run_dir / 'traces'}; ids there include: {some or '(none)'}")
    return match[0]


def load_society_trace(run_dir: str | Path, question_id: str, *, prune: bool = True) -> RolloutTrace:
    """A question of a society run directory (``sqlsociety ask`` / ``eval``) as a tree; ``info``
    carries the question, db, status and (for eval) EX as ``match``.

    Raises:
        TraceError: no such question (the message lists some that exist).
    """
    run_dir = Path(run_dir)
    f = _society_trace_file(run_dir, question_id)
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise TraceError(
            f"trace file {f} cannot be read as JSON ({e}); it is not one `sqlsociety ask/eval` wrote"
        ) from e
    if not isinstance(d, dict):
        raise TraceError(f"trace file {f} holds a JSON {type(d).__name__}, not a society run record")
    trace = build_tree(society_run_records(d), prune=prune, rollout_id=str(d.get("question_id") or question_id))
    trace.info = {"task_id": d.get("question_id"), "db_id": d.get("db_id"), "status": d.get("status"),
                  "phase": d.get("agent"), "question": d.get("question")}
    if "match" in d:
        trace.info["ex"] = int(bool(d["match"]))
    return trace


def iter_records(run_dir: str | Path, rollout_ids: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Span records of the run's rollouts (latest attempt each), rollout by rollout in start order.

    Args:
        run_dir: run directory or store file.
        rollout_ids: restrict to these ids (None: all rollouts).

    Raises:
        TraceError: no store, or the store is not a readable rollout store.
    """
    spath = store_path(run_dir)
    from evaluation.tracing.store import RolloutArchive

    wanted = None if rollout_ids is None else set(rollout_ids)
    with _reading(spath), RolloutArchive(spath, snapshot=True) as arch:
        for rec in arch.rollouts():
            if wanted is not None and rec.rollout_id not in wanted:
                continue
            for span in arch.spans(rec.rollout_id):
                yield span_to_record(span)


def export_jsonl(
    run_dir: str | Path, out: str | Path, rollout_ids: Iterable[str] | None = None
) -> int:
    """Write the run's spans as JSON lines of span records (OpenTelemetry fields).

    The file is written atomically: on any error nothing is created (or an existing ``out`` is
    left as it was). The store is checked before ``out`` is touched.

    Returns:
        Number of spans written.

    Raises:
        TraceError: no store or an unreadable one (nothing written).
        OSError: ``out`` cannot be written.
    """
    n = 0
    out = Path(out)
    store_path(run_dir)  # fail before creating anything
    with atomic_writer(out) as fh:
        for rec in iter_records(run_dir, rollout_ids):
            fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n
