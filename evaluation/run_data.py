"""Reading a training run directory: the input of the training report (:mod:`evaluation.report`).

The run-directory layout written by ``sqlsociety train``::

    RUN_DIR/config.yaml               resolved training config (shown verbatim, collapsed)
    RUN_DIR/metrics.jsonl             one JSON per finished rollout (see training/hooks.py)
    RUN_DIR/phases/<k>-<name>/done.json
    RUN_DIR/eval/<stage>.jsonl        per-question records on the fixed dev subset after each stage
    RUN_DIR/eval/roles/<stage>.jsonl  role-level records (``juniors_baseline``, ...)
    RUN_DIR/phases/4-bandit/replay.jsonl  per held-out decision: majority vote and bandit EX
    RUN_DIR/bandit_comparison.json    rows {policy, mean_reward, ex, n}

:func:`load_run` reads it into :class:`RunData` (every part optional, so a report can be made mid-run);
:func:`normalize_record` puts each eval record in the report's terms whichever writer produced it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.metrics.rewards import compute_reward
from tools.files import read_jsonl
from tools.spider import recorded_database

#: Stages in display order; any other ``eval/<stage>.jsonl`` is appended after these, sorted.
STAGE_ORDER: tuple[str, ...] = ("baseline", "sft", "grpo", "bandit")


class ReportError(ValueError):
    """Raised when a run directory cannot be reported on; the message names the path and the fix."""


@dataclass
class RunData:
    """Everything the report reads from one run directory.

    Attributes:
        run_dir: the run directory.
        config_text: ``config.yaml`` verbatim ("" when absent).
        metrics: ``metrics.jsonl`` rows in file order.
        evals: stage -> eval records, ordered as :data:`STAGE_ORDER` then by name.
        bandit: ``bandit_comparison.json`` rows.
        phases: phase directory name -> parsed ``done.json`` (None when the phase is not done).
        role_evals: role-level stage -> records of ``eval/roles/<stage>.jsonl`` (``juniors_baseline``, ...).
        replay: rows of ``phases/4-bandit/replay.jsonl`` (per held-out decision: majority vote and bandit EX).
    """

    run_dir: Path
    config_text: str = ""
    metrics: list[dict] = field(default_factory=list)
    evals: dict[str, list[dict]] = field(default_factory=dict)
    bandit: list[dict] = field(default_factory=list)
    phases: dict[str, dict | None] = field(default_factory=dict)
    role_evals: dict[str, list[dict]] = field(default_factory=dict)
    replay: list[dict] = field(default_factory=list)


def _result_preview(rec: Mapping) -> Any:
    res = rec.get("result")
    if not isinstance(res, Mapping):
        return None
    if res.get("ok"):
        rows = list(res.get("rows") or [])[:5]
        n = res.get("row_count")
        return {"rows": rows, "row_count": n} if n is not None and n > len(rows) else rows
    return f"error: {res.get('error')}" if res.get("error") else None


def normalize_record(rec: Mapping) -> dict:
    """One eval record in the report's terms, whichever writer produced it.

    ``training.pipeline`` writes ``society.evaluate.evaluate``'s records (``question_id``, ``result`` as an
    executor summary, no reward); the documented run-directory schema has ``id``,
    ``result_preview`` and ``reward``. Missing fields are derived: ``id`` from ``question_id``,
    ``result_preview`` from ``result`` (first 5 rows, or the error), and ``reward`` -- when the
    record's database is found (:func:`_database_of`) and it has gold SQL -- with the project's reward function
    :func:`evaluation.metrics.rewards.compute_reward` on the predicted SQL (``reward_source`` says which).
    """
    r = dict(rec)
    r.setdefault("id", r.get("question_id"))
    if r.get("pred_sql") is None and r.get("final_sql") is not None:
        r["pred_sql"] = r["final_sql"]
    if r.get("result_preview") is None:
        r["result_preview"] = _result_preview(r)
    if r.get("reward") is None and r.get("gold_sql"):
        db = _database_of(r)
        if db is not None:
            r["reward"] = float(compute_reward(r.get("pred_sql"), r["gold_sql"], db).total)
            r["reward_source"] = "evaluation.metrics.rewards.compute_reward"
    return r


def _database_of(rec: Mapping) -> Path | None:
    """The record's SQLite file: its ``db_path`` when that exists here, else ``db_id`` looked up in
    the data directory (``tools.spider.default_data_dir()``, so reports made on another machine
    still find the bundled databases); None when neither exists."""
    p = recorded_database(rec.get("db_path"), rec.get("db_id"))
    return Path(p) if p and Path(p).is_file() else None


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (all parts optional, so a report can be made mid-run).

    Raises:
        ReportError: if ``run_dir`` is not a directory, or holds neither ``metrics.jsonl`` nor ``eval/``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist; pass the RUN_DIR made by `sqlsociety train`")
    data = RunData(run_dir=run_dir)
    if (run_dir / "config.yaml").is_file():
        data.config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    if (run_dir / "metrics.jsonl").is_file():
        data.metrics = read_jsonl(run_dir / "metrics.jsonl", error=ReportError)
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        # finished stages only: ``<stage>.partial.jsonl`` is a stage stopped part-way, resumed by `train --resume`
        stages = sorted((p.stem for p in eval_dir.glob("*.jsonl") if not p.stem.endswith(".partial")), key=_stage_key)
        data.evals = {s: [normalize_record(r) for r in read_jsonl(eval_dir / f"{s}.jsonl", error=ReportError)]
                      for s in stages}
        if (eval_dir / "roles").is_dir():
            roles = sorted(p for p in (eval_dir / "roles").glob("*.jsonl") if not p.stem.endswith(".partial"))
            data.role_evals = {p.stem: read_jsonl(p, error=ReportError) for p in roles}
    if (run_dir / "phases" / "4-bandit" / "replay.jsonl").is_file():
        data.replay = read_jsonl(run_dir / "phases" / "4-bandit" / "replay.jsonl", error=ReportError)
    if (run_dir / "bandit_comparison.json").is_file():
        raw = json.loads((run_dir / "bandit_comparison.json").read_text(encoding="utf-8"))
        data.bandit = raw.get("rows", raw) if isinstance(raw, dict) else raw
    phases_dir = run_dir / "phases"
    if phases_dir.is_dir():
        for p in sorted(x for x in phases_dir.iterdir() if x.is_dir()):
            done = p / "done.json"
            data.phases[p.name] = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None
    if not data.metrics and not data.evals:
        raise ReportError(
            f"{run_dir} has neither metrics.jsonl nor eval/*.jsonl; is it a `sqlsociety train` run directory?"
        )
    return data

