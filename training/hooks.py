"""Live training metrics: an Agent Lightning ``Hook`` writing one line per finished rollout.

:class:`MetricsHook` is passed to ``agl.Trainer(hooks=[...])``. After every rollout attempt the
runner calls :meth:`MetricsHook.on_rollout_end` with the rollout and the spans it stored; the
hook turns them into one metrics row (:func:`rollout_metrics`) and

* always appends it to ``RUN_DIR/metrics.jsonl`` (:class:`MetricsWriter`: one ``write()`` of a
  whole line on an ``O_APPEND`` descriptor, so rows from several runner processes never
  interleave, flushed at once so a killed run keeps every finished row);
* logs it to Weights & Biases when ``wandb`` is importable and configured (:func:`wandb_configured`:
  ``WANDB_API_KEY`` set, or ``WANDB_MODE=offline``/``dryrun``, or a project passed explicitly),
  with ``WANDB_MODE=disabled`` always off -- from the process that holds the hook in a ``with``
  block, which follows the file (see :class:`MetricsHook` for why). Offline mode needs no
  network; sync later with ``wandb sync RUN_DIR/wandb/offline-run-*``.

Row schema (all keys always present; None when unknown)::

    {"ts": unix seconds, "phase": str, "rollout_id": str, "task_id": str | None,
     "reward": float | None, "ex": float | None (1.0/0.0), "turns": int | None,
     "llm_calls": int, "tokens": int, "latency_s": float | None, "status": "ok" | "no_reward",
     "role_outcomes": {role: {key: value}}}

Where the values come from (the LitAgent in training/agent.py records them as spans):
    * reward -- Agent Lightning's ``find_final_reward`` over the attempt's spans as stored (the
      runner leaves the reward span of a float-returning agent out of what it hands hooks, so
      the hook reads the store back then);
    * ex -- annotation ``sqlsociety.final.ex`` (the LitAgent's outcome annotation) or ``ex``;
    * turns, llm_calls, tokens -- annotation keys of those names, else the fields of the
      LitAgent's ``society_run`` object span (``SocietyRun.to_record()``), else (calls, tokens)
      counted from the LLM-call spans' ``gen_ai.usage.*`` attributes;
    * role_outcomes -- :func:`evaluation.tracing.trace_records.role_credit_from_attributes` over the annotations
      (``sqlsociety.junior.<J>.*``, ``sqlsociety.supervisor.*``, ``sqlsociety.senior.*``);
    * latency_s -- wall time between ``on_rollout_start`` and ``on_rollout_end`` in this process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault(
    "LITELLM_LOCAL_MODEL_COST_MAP", "True"
)  # litellm (imported by agl) stalls on the network otherwise

from agentlightning import Hook
from agentlightning.emitter.reward import find_final_reward

from evaluation.tracing.trace_records import classify, llm_usage, role_credit_from_attributes

logger = logging.getLogger(__name__)

#: Prefixes under which the LitAgent may write its annotation keys.
_ANNOTATION_PREFIXES = ("", "sqlsociety.")
#: Where each row field may be found, first match wins: annotation keys (with or without the
#: ``sqlsociety.`` prefix), then the society-run object's JSON fields.
_FIELD_KEYS = {"ex": ("ex", "final.ex"), "turns": ("turns",), "llm_calls": ("llm_calls",), "tokens": ("tokens",)}


class MetricsWriter:
    """Append-only JSON-lines writer safe across threads and processes.

    Args:
        path: the ``metrics.jsonl`` file (parent directories are created).

    Each :meth:`write` serialises one row and hands the whole line to a single ``os.write`` on a
    descriptor opened with ``O_APPEND``, so concurrent writers never interleave within a line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` as one JSON line.

        Raises:
            TypeError: when ``row`` holds values JSON cannot encode (after ``str()`` fallback, never).
        """
        line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def _name_and_attrs(span: Any) -> tuple[str, Mapping[str, Any]]:
    """Name and attributes of an Agent Lightning Span or an OpenTelemetry ReadableSpan."""
    return str(getattr(span, "name", "")), dict(getattr(span, "attributes", None) or {})


def _span_id(span: Any) -> str | None:
    sid = getattr(span, "span_id", None)
    if sid is None and getattr(span, "context", None) is not None:
        sid = format(span.context.span_id, "016x")
    return sid


def _parent_id(span: Any) -> str | None:
    pid = getattr(span, "parent_id", None)
    if pid is None and getattr(span, "parent", None) is not None and hasattr(span.parent, "span_id"):
        sid = span.parent.span_id
        pid = sid if isinstance(sid, str) else format(sid, "016x")
    return pid


def _annotation_value(ann: Mapping[str, Any], key: str) -> Any:
    for p in _ANNOTATION_PREFIXES:
        if p + key in ann and ann[p + key] is not None:
            return ann[p + key]
    return None


def _float(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _intv(v: Any) -> int | None:
    f = _float(v)
    return None if f is None else int(f)


def rollout_metrics(
    rollout: Any,
    spans: Sequence[Any],
    *,
    phase: str,
    latency_s: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One metrics row for a finished rollout (schema in the module docstring).

    Args:
        rollout: the Agent Lightning ``Rollout``/``AttemptedRollout`` (``rollout_id``, ``input``,
            ``metadata`` are read).
        spans: the rollout's spans (Agent Lightning ``Span`` or OpenTelemetry ``ReadableSpan``).
        phase: the training phase name, e.g. ``"1-gather"``.
        latency_s: seconds the rollout took, if measured.
        now: timestamp to record (default ``time.time()``).

    Returns:
        The row dict (JSON-serialisable).
    """
    annotations: dict[str, Any] = {}
    run_record: dict[str, Any] = {}
    llm_calls = 0
    tokens = 0
    kinds = {}
    for s in spans:
        name, attrs = _name_and_attrs(s)
        kinds[_span_id(s)] = classify({"name": name, "attributes": attrs})
    for s in spans:
        name, attrs = _name_and_attrs(s)
        kind = kinds[_span_id(s)]
        if kind == "annotation":
            annotations.update(attrs)
        elif (
            kind == "llm" and kinds.get(_parent_id(s)) != "llm"
        ):  # a client span inside a framework LLM span is the same call
            llm_calls += 1
            p, c = llm_usage({"attributes": attrs})
            tokens += (p or 0) + (c or 0)
        elif name == "agentlightning.object" and attrs.get("sqlsociety.kind") == "society_run":
            try:
                run_record = json.loads(attrs.get("agentlightning.object.json") or "{}")
            except (TypeError, ValueError):
                run_record = {}
    reward = find_final_reward(list(spans))
    inp = getattr(rollout, "input", None)
    meta = getattr(rollout, "metadata", None) or {}
    task_id = None
    if isinstance(inp, Mapping) and inp.get("task_id") is not None:
        task_id = str(inp["task_id"])
    elif meta.get("task_id") is not None:
        task_id = str(meta["task_id"])

    def field(name: str) -> Any:
        for key in _FIELD_KEYS[name]:
            v = _annotation_value(annotations, key)
            if v is not None:
                return v
        return run_record.get(name)

    ann_calls, ann_tokens = _intv(field("llm_calls")), _intv(field("tokens"))
    return {
        "ts": time.time() if now is None else now,
        "phase": phase,
        "rollout_id": str(getattr(rollout, "rollout_id", "")),
        "task_id": task_id,
        "reward": None if reward is None else float(reward),
        "ex": _float(field("ex")),
        "turns": _intv(field("turns")),
        "llm_calls": ann_calls if ann_calls is not None else llm_calls,
        "tokens": ann_tokens if ann_tokens is not None else tokens,
        "latency_s": None if latency_s is None else round(float(latency_s), 4),
        "status": "ok" if reward is not None else "no_reward",
        "role_outcomes": role_credit_from_attributes(annotations),
    }


def wandb_configured(explicit_project: str | None = None) -> bool:
    """True when ``wandb`` is importable and configured (see the module docstring); never raises."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode == "disabled":
        return False
    try:
        import wandb  # noqa: F401
    except Exception:  # not installed (or broken): metrics.jsonl only
        return False
    return bool(explicit_project or os.environ.get("WANDB_API_KEY") or mode in ("offline", "dryrun"))


class MetricsHook(Hook):
    """Agent Lightning hook that records per-rollout metrics (see the module docstring).

    Use it as a context manager around the training call, so W&B logging runs in *this* process::

        hook = MetricsHook(run_dir / "metrics.jsonl", phase="1-gather", run_id=run_dir.name)
        with hook:
            agl.Trainer(..., hooks=[hook]).fit(agent, tasks)

    Why: with Agent Lightning's default client-server strategy the hook's ``on_rollout_end`` runs
    in runner processes, which Agent Lightning 0.3 ends without calling hook teardowns; so the
    runners only append rows to ``metrics.jsonl``, and the process that entered the ``with``
    follows that file (a thread polling every ``poll_s`` seconds) and logs each new row to W&B,
    draining the rest and finishing the W&B run on exit. Without ``with`` the file is written
    just the same and W&B is not used.

    Args:
        metrics_path: ``RUN_DIR/metrics.jsonl``.
        phase: phase name written into every row (e.g. ``"1-gather"``); one hook per phase, or
            :meth:`set_phase` between phases (before the runners start).
        run_id: run identifier (default: the metrics file's directory name); the W&B run name and group.
        wandb_project: W&B project; default ``$WANDB_PROJECT`` or ``"sqlsociety"``.
        wandb_dir: where W&B writes its files (offline runs); default the metrics file's directory.
        wandb_config: the resolved training config, attached to the W&B run.
        use_wandb: force W&B on/off; default :func:`wandb_configured`.
        poll_s: seconds between reads of the metrics file by the W&B follower (> 0).

    Raises:
        ValueError: empty ``phase`` or ``poll_s <= 0``.
    """

    def __init__(
        self,
        metrics_path: str | os.PathLike[str],
        *,
        phase: str,
        run_id: str | None = None,
        wandb_project: str | None = None,
        wandb_dir: str | os.PathLike[str] | None = None,
        wandb_config: Mapping[str, Any] | None = None,
        use_wandb: bool | None = None,
        poll_s: float = 1.0,
    ) -> None:
        super().__init__()
        if not phase:
            raise ValueError("MetricsHook needs a phase name, e.g. phase='1-gather'")
        if poll_s <= 0:
            raise ValueError(f"poll_s={poll_s}; the W&B follower needs a positive polling interval in seconds")
        self.writer = MetricsWriter(metrics_path)
        self.phase = phase
        self.run_id = run_id or Path(metrics_path).resolve().parent.name
        self.wandb_project = wandb_project or os.environ.get("WANDB_PROJECT") or "sqlsociety"
        self.wandb_dir = Path(wandb_dir) if wandb_dir else Path(metrics_path).resolve().parent
        self.wandb_config = dict(wandb_config or {})
        self.use_wandb = wandb_configured(wandb_project) if use_wandb is None else use_wandb
        self.poll_s = poll_s
        self._starts: dict[str, float] = {}
        self.rows_written = 0
        self.rows_logged = 0
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._offset = 0
        self._wandb_run: Any = None

    def set_phase(self, phase: str) -> None:
        """Label the following rows with ``phase``."""
        self.phase = phase

    def __getstate__(self) -> dict[str, Any]:  # runner processes get the file writer, not the follower
        state = dict(self.__dict__)
        for k in ("_follower", "_stop", "_wandb_run", "writer"):
            state.pop(k, None)
        state["_metrics_path"] = str(self.writer.path)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        path = state.pop("_metrics_path")
        self.__dict__.update(state)
        self.writer = MetricsWriter(path)
        self._follower, self._stop, self._wandb_run = None, threading.Event(), None

    # -- Agent Lightning lifecycle (runner side) ----------------------------------------------------

    async def on_rollout_start(self, *, agent: Any, runner: Any, rollout: Any) -> None:
        """Remember when the attempt started (for ``latency_s``)."""
        self._starts[rollout.rollout_id] = time.time()

    async def on_rollout_end(self, *, agent: Any, runner: Any, rollout: Any, spans: Sequence[Any]) -> None:
        """Append the rollout's metrics row. Never raises (a metrics failure must not fail a
        rollout): errors are logged."""
        start = self._starts.pop(rollout.rollout_id, None)
        try:
            latency = None if start is None else time.time() - start
            spans = await self._stored_spans(runner, rollout, spans)
            row = rollout_metrics(rollout, spans, phase=self.phase, latency_s=latency)
            self.writer.write(row)
            self.rows_written += 1
        except Exception:
            logger.exception("could not record metrics for rollout %s", getattr(rollout, "rollout_id", "?"))

    @staticmethod
    async def _stored_spans(runner: Any, rollout: Any, spans: Sequence[Any]) -> list[Any]:
        """The attempt's spans as stored. When the agent returns a float, Agent Lightning's runner
        adds the reward span to the store but not to the ``spans`` it hands to hooks, so the store
        (the source of truth) is asked whenever ``spans`` carry no reward."""
        spans = list(spans)
        if find_final_reward(spans) is not None:
            return spans
        attempt = getattr(rollout, "attempt", None)
        try:
            stored = await runner.get_store().query_spans(
                rollout.rollout_id, attempt.attempt_id if attempt is not None else "latest"
            )
            return list(stored) or spans
        except Exception:
            logger.warning("could not read spans of %s back from the store", rollout.rollout_id, exc_info=True)
            return spans

    # -- W&B follower (the process that entered ``with``) -------------------------------------------

    def __enter__(self) -> MetricsHook:
        if self.use_wandb and self._follower is None:
            path = self.writer.path
            self._offset = path.stat().st_size if path.exists() else 0  # earlier phases were logged by their own hook
            self._stop.clear()
            self._follower = threading.Thread(target=self._follow, name="metrics-wandb", daemon=True)
            self._follower.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        path = self.writer.path
        if not path.exists():
            return
        with path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in chunk[: end + 1].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            self._log_wandb(row)

    def _log_wandb(self, row: Mapping[str, Any]) -> None:
        if not self.use_wandb:
            return
        try:
            import wandb

            if self._wandb_run is None:
                self.wandb_dir.mkdir(parents=True, exist_ok=True)
                self._wandb_run = wandb.init(
                    project=self.wandb_project,
                    group=self.run_id,
                    name=f"{self.run_id}-{self.phase}",
                    job_type=self.phase,
                    dir=str(self.wandb_dir),
                    config=self.wandb_config,
                    reinit="create_new",
                )
            phase = row.get("phase", self.phase)
            data = {
                f"{phase}/{k}": row[k]
                for k in ("reward", "ex", "turns", "llm_calls", "tokens", "latency_s")
                if row.get(k) is not None
            }
            self.rows_logged += 1
            data["rollouts"] = self.rows_logged
            self._wandb_run.log(data)
        except Exception:
            self.use_wandb = False
            logger.exception("W&B logging failed; continuing with metrics.jsonl only")

    def close(self) -> None:
        """Stop the follower (logging the rows still unread) and finish the W&B run. Idempotent."""
        if self._follower is not None:
            self._stop.set()
            self._follower.join()
            self._follower = None
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            run.finish()
