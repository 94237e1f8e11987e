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

__all__ = ["LIBRARY_LOGGERS", "PHASES", "STAGE_AFTER_PHASE", "PhaseReport", "RunDir", "route_library_logs"]

#: Phase number -> name; stages evaluated on the dev subset: baseline, then one after each of 2-4.
PHASES: dict[int, str] = {1: "gather", 2: "sft", 3: "grpo", 4: "bandit"}
STAGE_AFTER_PHASE = {2: "sft", 3: "grpo", 4: "bandit"}


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
        f = self.root / "phases" / f"{k}-{PHASES[k]}" / "done.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def mark_done(self, k: int, info: dict[str, Any]) -> None:
        f = self.phase_dir(k) / "done.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str))
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
