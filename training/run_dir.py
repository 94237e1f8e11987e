"""A training run's directory (:class:`RunDir`): where each phase and stage writes, which phases are
done (``phases/<k>-<name>/done.json``), and where the libraries' logs go (:func:`route_library_logs`).
The files the report reads are described in ``evaluation.run_data``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.files import atomic_write_text
from training.profile import TrainConfigError

__all__ = ["LIBRARY_LOGGERS", "PHASES", "STAGE_AFTER_PHASE", "PhaseReport", "RunDir", "kept_step", "mark_step",
           "rebase_paths", "route_library_logs"]

#: Phase number -> name; stages evaluated on the dev subset: baseline, then one after each of 2-4.
PHASES: dict[int, str] = {1: "gather", 2: "sft", 3: "grpo", 4: "bandit"}
STAGE_AFTER_PHASE = {2: "sft", 3: "grpo", 4: "bandit"}


def mark_step(path: Path, key: str, **fields: Any) -> None:
    """Record that a step inside a phase finished: ``{"key": key, **fields}`` written atomically to
    ``path`` (JSON), read back by :func:`kept_step` when the phase is resumed."""
    atomic_write_text(path, json.dumps({"key": key, **fields}, default=str) + "\n")


def kept_step(path: Path, key: str, echo: Any, label: str, what: str) -> dict[str, Any] | None:
    """The record :func:`mark_step` left in ``path``, if made with ``key``: the step finished
    before the stop and is kept (said: ``<label>: kept <what> finished before the stop``). None
    when there is none, or when it was made with another key (other rows, settings or data: the
    record is removed and ``echo`` says the step runs again).

    Args:
        path: the record's file.
        key: what the step is made from now (a sha256 of its inputs and settings).
        echo: called with the one line said.
        label / what: the phase's label, and the step's result in words.
    """
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    if rec.get("key") == key:
        echo(f"{label}: kept {what} finished before the stop ({path.name})")
        return rec
    echo(f"{label}: {path.name} was made from other settings or data; {what} runs again")
    path.unlink()
    return None


@dataclass
class PhaseReport:
    """What one phase (or stage evaluation) produced: ``artifacts`` name -> path/count, ``seconds``."""

    phase: int
    name: str
    seconds: float
    artifacts: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


#: Loggers of the libraries under the pipeline (LiteLLM inside the LLMProxy, Agent Lightning's
#: runners, the HTTP stack): their tracebacks and banners go to the run's log file.
LIBRARY_LOGGERS = ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router", "litellm", "agentlightning", "uvicorn",
                   "uvicorn.error", "uvicorn.access", "httpx", "openai", "aiohttp", "asyncio")


def route_library_logs(path: Path) -> None:
    """Send :data:`LIBRARY_LOGGERS`' records (INFO and up) to ``path`` instead of the console, so the
    console keeps one line per failure and the log file has the tracebacks."""
    import litellm  # noqa: F401  (imported first: it attaches console handlers to its loggers on import)

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False


def rebase_paths(value: Any, old: str, new: str) -> Any:
    """``value`` with every string that is the directory ``old`` or a path under it moved under
    ``new``, through nested dicts and lists (other values unchanged): how a ``done.json`` written
    in a run directory at ``old`` reads once the directory was moved or copied to ``new``
    (another disk, another machine).

    >>> rebase_paths({"adapter": "/a/run/phases/2-sft/adapter", "runs": ["/a/run", "/a/runner"], "steps": 3},
    ...              "/a/run", "/b/r")
    {'adapter': '/b/r/phases/2-sft/adapter', 'runs': ['/b/r', '/a/runner'], 'steps': 3}
    """
    if isinstance(value, str):
        if value == old:
            return new
        return new + value[len(old):] if value.startswith(old.rstrip("/") + "/") else value
    if isinstance(value, dict):
        return {k: rebase_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase_paths(v, old, new) for v in value]
    return value


class RunDir:
    """Layout of a training run directory (see ``evaluation.run_data`` for the files the report reads).

    ``create``: make the directory and its ``eval/`` and ``phases/`` folders (a run being trained);
    False only reads what is there (a trained society loaded by ``--run``).
    """

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "eval").mkdir(exist_ok=True)
            (self.root / "phases").mkdir(exist_ok=True)

    def phase_dir(self, k: int) -> Path:
        d = self.root / "phases" / f"{k}-{PHASES[k]}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, k: int) -> dict[str, Any] | None:
        """Phase ``k``'s ``done.json`` (None: not finished). It names the directory it was written in
        (``run_dir``); when the run has been moved since, its paths read as under the current root
        (:func:`rebase_paths`), so a run copied to another disk or machine resumes and loads."""
        f = self.root / "phases" / f"{k}-{PHASES[k]}" / "done.json"
        if not f.is_file():
            return None
        info = json.loads(f.read_text())
        was, now = info.get("run_dir"), str(self.root.resolve())
        return rebase_paths(info, was, now) if isinstance(was, str) and was != now else info

    def mark_done(self, k: int, info: dict[str, Any]) -> None:
        """Write phase ``k``'s ``done.json``: ``info`` and ``run_dir``, this directory's absolute path."""
        f = self.phase_dir(k) / "done.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({**info, "run_dir": str(self.root.resolve())}, indent=2, default=str))
        os.replace(tmp, f)

    def role_eval_path(self, stage: str) -> Path:
        """``eval/roles/<stage>.jsonl``: a role-level evaluation (``juniors_baseline``, ...)."""
        d = self.root / "eval" / "roles"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{stage}.jsonl"

    def eval_path(self, stage: str) -> Path:
        return self.root / "eval" / f"{stage}.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def store(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def response_cache(self) -> Path:
        """``eval/responses.sqlite``: the evaluation stages' response cache (``eval.response_cache``)."""
        return self.root / "eval" / "responses.sqlite"

    def archive(self) -> Any:
        """The run's rollout store (``store.sqlite``, written by phase 1), opened:
        ``evaluation.tracing.store.RolloutArchive``, a context manager.

        Raises:
            TrainConfigError: the run has no store yet (phase 1 has not run).
        """
        from evaluation.tracing.store import RolloutArchive

        if not self.store.is_file():
            raise TrainConfigError(f"{self.store} does not exist: run phase 1 (gather) first, e.g. --phases 1,2")
        return RolloutArchive(self.store)
