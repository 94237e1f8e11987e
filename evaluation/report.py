"""The training report: one self-contained HTML page plus a Markdown summary for a run directory.

Reads the run-directory layout written by ``sqlsociety train``::

    RUN_DIR/config.yaml               resolved training config (shown verbatim, collapsed)
    RUN_DIR/metrics.jsonl             one JSON per finished rollout (see training/hooks.py)
    RUN_DIR/phases/<k>-<name>/done.json
    RUN_DIR/eval/<stage>.jsonl        per-question records on the fixed dev subset after each stage
    RUN_DIR/bandit_comparison.json    rows {policy, mean_reward, ex, n}

and writes ``RUN_DIR/report.html`` (matplotlib PNGs embedded as base64 ``data:`` URIs, inline
CSS, no scripts, no external assets) and ``RUN_DIR/report.md``. The HTML page is the Jinja2 template
``evaluation/templates/report.html.j2`` (autoescaped) filled with values computed here; the Markdown
tables are made by ``tabulate``.

Sections: learning curves (raw + rolling-mean reward per phase), EX per stage, the
multi-metric table, the bandit comparison, per-role breakdown, and side-by-side examples where
the last stage's answer differs from the baseline's.

Metric definitions (all means over the questions of one ``eval/<stage>.jsonl``):
    * EX -- execution accuracy (Yu et al., Spider, EMNLP 2018): share of questions whose
      predicted SQL returns the same result as the gold SQL (the record's ``match``).
    * execution success rate -- share whose predicted SQL executed without error (``executed_ok``).
    * mean reward -- mean of the record's ``reward`` (the foundation's weighted reward, in [0, 1]).
    * turns, LLM calls, tokens, seconds -- per-question means of the same-named fields.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from tabulate import tabulate

from evaluation import plots, sql_text
from evaluation.role_effects import role_effects
from evaluation.stats import Effect, describe_effects, effects_table_markdown
from tools.files import atomic_write_text  # a failure leaves no half-written report
from tools.spider import database_path, default_data_dir

logger = logging.getLogger(__name__)

#: Stages in display order; any other ``eval/<stage>.jsonl`` is appended after these, sorted.
STAGE_ORDER: tuple[str, ...] = ("baseline", "sft", "grpo", "bandit")

#: Which stage trains which role family (role names are matched by prefix).
ROLE_TRAINING_STAGE: dict[str, str] = {"junior": "sft", "senior": "grpo", "supervisor": "bandit"}

#: At most this many side-by-side examples in the report.
MAX_EXAMPLES = 8


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


def read_jsonl(path: Path) -> list[dict]:
    """Parse a JSON-lines file; blank lines are skipped and a truncated last line (a run killed
    mid-write) is dropped with a warning.

    Raises:
        ReportError: when a line other than the last is not valid JSON.
    """
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                logger.warning("%s: dropping truncated last line", path)
                continue
            raise ReportError(f"{path} line {i + 1} is not JSON ({exc}); fix or remove that line") from exc
    return rows


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

    ``training.pipeline`` writes ``society.run.evaluate``'s records (``question_id``, ``result`` as an
    executor summary, no reward); the documented run-directory schema has ``id``,
    ``result_preview`` and ``reward``. Missing fields are derived: ``id`` from ``question_id``,
    ``result_preview`` from ``result`` (first 5 rows, or the error), and ``reward`` -- when the
    record's database is found (:func:`_database_of`) and it has gold SQL -- with the project's reward function
    :func:`evaluation.rewards.compute_reward` on the predicted SQL (``reward_source`` says which).
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
            from evaluation.rewards import compute_reward

            r["reward"] = float(compute_reward(r.get("pred_sql"), r["gold_sql"], db).total)
            r["reward_source"] = "evaluation.rewards.compute_reward"
    return r


def _database_of(rec: Mapping) -> Path | None:
    """The record's SQLite file: its ``db_path`` when that exists here, else ``db_id`` looked up in
    the data directory (``tools.spider.default_data_dir()``, so reports made on another machine
    still find the bundled databases); None when neither exists."""
    if rec.get("db_path") and Path(rec["db_path"]).is_file():
        return Path(rec["db_path"])
    if rec.get("db_id"):
        p = database_path(default_data_dir(), str(rec["db_id"]))
        if p.is_file():
            return p
    return None


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
        data.metrics = read_jsonl(run_dir / "metrics.jsonl")
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        stages = sorted((p.stem for p in eval_dir.glob("*.jsonl")), key=_stage_key)
        data.evals = {s: [normalize_record(r) for r in read_jsonl(eval_dir / f"{s}.jsonl")] for s in stages}
        if (eval_dir / "roles").is_dir():
            data.role_evals = {p.stem: read_jsonl(p) for p in sorted((eval_dir / "roles").glob("*.jsonl"))}
    if (run_dir / "phases" / "4-bandit" / "replay.jsonl").is_file():
        data.replay = read_jsonl(run_dir / "phases" / "4-bandit" / "replay.jsonl")
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


# --------------------------------------------------------------------------- summaries


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def stage_summary(records: Sequence[Mapping]) -> dict[str, float | int | None]:
    """The multi-metric row for one stage.

    Args:
        records: eval records of one stage.

    Returns:
        ``{"n", "ex", "exec_success", "mean_reward", "turns", "llm_calls", "tokens", "seconds"}``;
        ``ex``/``exec_success`` are fractions in [0, 1]; the others are per-question means; a
        metric whose field no record carries is None.
    """
    return {
        "n": len(records),
        "ex": _mean(bool(r.get("match")) for r in records) if records else None,
        "exec_success": _mean(
            None if r.get("executed_ok") is None else bool(r["executed_ok"]) for r in records
        ),
        "mean_reward": _mean(r.get("reward") for r in records),
        "turns": _mean(r.get("turns") for r in records),
        "llm_calls": _mean(r.get("llm_calls") for r in records),
        "tokens": _mean(r.get("tokens") for r in records),
        "seconds": _mean(r.get("seconds") for r in records),
    }


def phase_summary(metrics: Sequence[Mapping]) -> list[dict[str, Any]]:
    """Per-phase figures from ``metrics.jsonl``: n rollouts, mean reward, mean reward of the
    first and last fifth (at least one rollout each), mean EX, tokens and latency.

    Returns:
        One dict per phase, in order of first appearance.
    """
    by_phase: dict[str, list[Mapping]] = {}
    for row in metrics:
        by_phase.setdefault(str(row.get("phase", "?")), []).append(row)
    out = []
    for phase, rows in by_phase.items():
        rewards = [float(r["reward"]) for r in rows if r.get("reward") is not None]
        k = max(1, len(rewards) // 5)
        out.append(
            {
                "phase": phase,
                "n": len(rows),
                "mean_reward": _mean(rewards),
                "first_fifth": _mean(rewards[:k]),
                "last_fifth": _mean(rewards[-k:]),
                "ex": _mean(None if r.get("ex") is None else float(r["ex"]) for r in rows),
                "tokens": _mean(r.get("tokens") for r in rows),
                "latency_s": _mean(r.get("latency_s") for r in rows),
            }
        )
    return out


def _points(values: Any) -> list[tuple[float, float]]:
    """``[(step, value)]`` from a list of numbers, of ``[step, value]`` pairs, or of dicts with a
    ``step`` and a ``loss``/``reward``/``value``; [] when nothing numeric is found."""
    out: list[tuple[float, float]] = []
    if not isinstance(values, list):
        return out
    for i, v in enumerate(values, start=1):
        try:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((float(i), float(v)))
            elif isinstance(v, (list, tuple)) and len(v) == 2:
                out.append((float(v[0]), float(v[1])))
            elif isinstance(v, Mapping):
                y = next(v[k] for k in ("loss", "reward", "mean_reward", "value") if k in v)
                out.append((float(v.get("step", i)), float(y)))
        except (TypeError, ValueError, StopIteration):
            continue
    return out


def training_signals(phases: Mapping[str, Mapping | None]) -> dict[str, list[tuple[float, float]]]:
    """Per-step trainer signals recorded in ``phases/<k>-<name>/done.json``: ``losses`` (SFT, as
    ``[(step, loss)]``) and ``rewards`` (GRPO mean reward per step), labelled ``"<phase>: loss"`` /
    ``"<phase>: reward"``; phases without them are left out."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name, done in phases.items():
        if not done:
            continue
        for key, label in (("losses", "loss"), ("rewards", "reward")):
            pts = _points(done.get(key))
            if pts:
                out[f"{name}: {label}"] = pts
    return out


def _role_family(role: str) -> str:
    for fam in ROLE_TRAINING_STAGE:
        if role.startswith(fam):
            return fam
    return role


def _chosen_role(record: Mapping) -> str | None:
    """Name of the candidate role the supervisor picked (choice is a role name or an index into the
    candidate roles in record order)."""
    roles = record.get("roles") or {}
    choice = (roles.get("supervisor") or {}).get("choice")
    cand_roles = [r for r, v in roles.items() if isinstance(v, Mapping) and "sql" in v]
    if isinstance(choice, str) and choice in roles:
        return choice
    if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(cand_roles):
        return cand_roles[choice]
    return None


def role_stats(records: Sequence[Mapping]) -> dict[str, dict[str, float | int | None]]:
    """Per-role figures for one stage.

    For a candidate role (its entry has ``sql``; the juniors):
        ``own_ex`` -- share of questions where its own candidate was correct (its ``ex``);
        ``chosen`` -- share where the supervisor picked it;
        ``survived`` -- share where its SQL is the final answer unchanged (compared as
        :func:`evaluation.sql_text.normalize_sql` with ``lower=True``).
    For the supervisor:
        ``own_ex`` -- EX of the candidate it picked;
        ``best_pick`` -- among questions where at least one candidate was correct, the share
        where it picked a correct one;
        ``survived`` -- share where the picked SQL is the final answer unchanged.
    For the senior:
        ``own_ex`` -- EX after its refinement (``after_ex``); ``before_ex`` -- EX of what it got;
        ``fixed``/``broken`` -- shares where refinement turned wrong into right / right into wrong;
        ``survived`` -- share where its refinement changed the outcome for the better, net
        (``fixed - broken``), i.e. the EX it added.

    Returns:
        role -> {"family", "n", metric -> value in [0, 1] or None}.
    """
    acc: dict[str, dict[str, list]] = {}

    def add(role: str, key: str, value: Any) -> None:
        acc.setdefault(role, {}).setdefault(key, []).append(value)

    for rec in records:
        roles = rec.get("roles") or {}
        final = sql_text.normalize_sql(rec.get("pred_sql"), lower=True)
        chosen = _chosen_role(rec)
        any_correct = False
        for role, val in roles.items():
            if not isinstance(val, Mapping) or "sql" not in val:
                continue
            ex = val.get("ex")
            any_correct = any_correct or bool(ex)
            add(role, "own_ex", None if ex is None else float(bool(ex)))
            add(role, "chosen", float(chosen == role) if chosen is not None else None)
            kept = bool(val.get("sql")) and sql_text.normalize_sql(val.get("sql"), lower=True) == final
            add(role, "survived", float(kept))
        sup = roles.get("supervisor")
        if isinstance(sup, Mapping):
            picked = roles.get(chosen) if chosen else None
            pex = None if not picked or picked.get("ex") is None else float(bool(picked["ex"]))
            add("supervisor", "own_ex", pex)
            add("supervisor", "best_pick", pex if any_correct else None)
            add(
                "supervisor",
                "survived",
                None if not picked
                else float(sql_text.normalize_sql(picked.get("sql"), lower=True) == final and bool(final)),
            )
        sen = roles.get("senior")
        if isinstance(sen, Mapping) and ("after_ex" in sen or "before_ex" in sen):
            b, a = sen.get("before_ex"), sen.get("after_ex")
            add("senior", "own_ex", None if a is None else float(bool(a)))
            add("senior", "before_ex", None if b is None else float(bool(b)))
            if a is not None and b is not None:
                add("senior", "fixed", float(bool(a) and not bool(b)))
                add("senior", "broken", float(bool(b) and not bool(a)))
    out: dict[str, dict[str, float | int | None]] = {}
    for role, metrics in acc.items():
        row: dict[str, float | int | None] = {"family": _role_family(role), "n": len(records)}  # type: ignore[dict-item]
        for k, vals in metrics.items():
            row[k] = _mean(vals)
        if role == "senior" and row.get("fixed") is not None:
            row["survived"] = (row["fixed"] or 0.0) - (row["broken"] or 0.0)  # type: ignore[operator]
        out[role] = row
    return out


def role_breakdown(evals: Mapping[str, Sequence[Mapping]]) -> list[dict[str, Any]]:
    """Per-role breakdown across stages, with the change after each role's own training stage.

    Args:
        evals: stage -> eval records (ordered).

    Returns:
        One row per role: ``{"role", "family", "trained_in", "survived" (last stage),
        "own_ex": {stage: EX}, "before", "after", "delta"}`` where ``before``/``after`` are the
        role's own EX on the stage just before its training stage and on that stage, and
        ``delta = after - before`` (None when either stage is missing).
    """
    stages = list(evals)
    per_stage = {s: role_stats(evals[s]) for s in stages}
    roles: list[str] = []
    for s in stages:
        for r in per_stage[s]:
            if r not in roles:
                roles.append(r)
    rows = []
    for role in roles:
        fam = _role_family(role)
        trained_in = ROLE_TRAINING_STAGE.get(fam)
        own = {s: per_stage[s][role].get("own_ex") for s in stages if role in per_stage[s]}
        before = after = None
        if trained_in in stages and stages.index(trained_in) > 0:
            prev = stages[stages.index(trained_in) - 1]
            before, after = own.get(prev), own.get(trained_in)
        last = next((per_stage[s][role] for s in reversed(stages) if role in per_stage[s]), {})
        rows.append(
            {
                "role": role,
                "family": fam,
                "trained_in": trained_in,
                "survived": last.get("survived"),
                "chosen": last.get("chosen"),
                "best_pick": last.get("best_pick"),
                "own_ex": own,
                "before": before,
                "after": after,
                "delta": None if before is None or after is None else after - before,
            }
        )
    return rows


def differing_examples(
    baseline: Sequence[Mapping], trained: Sequence[Mapping], limit: int = MAX_EXAMPLES
) -> list[dict[str, Any]]:
    """Questions where the trained society's final SQL differs from the baseline's (compared as
    :func:`evaluation.sql_text.normalize_sql` with ``lower=True``).

    Matched by record ``id``. Ordered: fixed by training (baseline wrong, trained right) first,
    then broken (right -> wrong), then other differences; at most ``limit``.

    Returns:
        Dicts ``{"id", "question", "db_id", "gold_sql", "baseline": record, "trained": record, "kind"}``
        with ``kind`` in {"fixed", "broken", "changed"}.
    """
    base = {r.get("id"): r for r in baseline}
    out = []
    for t in trained:
        b = base.get(t.get("id"))
        if b is None:
            continue
        before, after = (sql_text.normalize_sql(r.get("pred_sql"), lower=True) for r in (b, t))
        if before == after:
            continue
        bm, tm = bool(b.get("match")), bool(t.get("match"))
        kind = "fixed" if tm and not bm else "broken" if bm and not tm else "changed"
        out.append(
            {
                "id": t.get("id"),
                "question": t.get("question", b.get("question", "")),
                "db_id": t.get("db_id", b.get("db_id", "")),
                "gold_sql": t.get("gold_sql", b.get("gold_sql", "")),
                "baseline": b,
                "trained": t,
                "kind": kind,
            }
        )
    order = {"fixed": 0, "broken": 1, "changed": 2}
    out.sort(key=lambda e: order[e["kind"]])
    return out[:limit]


# --------------------------------------------------------------------------- rendering


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:.1f}%"


def _num(v: float | int | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return f"{int(round(v)):,}"
    return f"{v:,.{digits}f}"


def _signed_pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:+.1f} pt"


def _preview(value: Any, limit: int = 300) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


@dataclass
class ReportContent:
    """Computed report content (tables and PNGs), independent of the output format.

    Attributes:
        run: the loaded run data.
        stages: stage -> :func:`stage_summary` row.
        phases: :func:`phase_summary` rows.
        roles: :func:`role_breakdown` rows.
        examples: :func:`differing_examples` rows (baseline vs the last stage).
        trained_stage: the stage compared with the baseline (None when fewer than 2 stages).
        pngs: figure name -> PNG bytes (``learning_curves``, ``training_signals``, ``ex_per_stage``,
            ``role_ex``), only those with data.
        effects: :func:`evaluation.role_effects.role_effects` rows (each phase on its own role,
            paired, with CI and McNemar p).
    """

    run: RunData
    stages: dict[str, dict]
    phases: list[dict]
    roles: list[dict]
    examples: list[dict]
    trained_stage: str | None
    pngs: dict[str, bytes]
    effects: list[Effect] = field(default_factory=list)


def compute_report(run: RunData) -> ReportContent:
    """Compute tables and figures for ``run`` (see :class:`ReportContent`)."""
    stages = {s: stage_summary(recs) for s, recs in run.evals.items()}
    roles = role_breakdown(run.evals)
    stage_names = list(run.evals)
    trained = stage_names[-1] if len(stage_names) >= 2 else None
    base = "baseline" if "baseline" in run.evals else (stage_names[0] if stage_names else None)
    examples = differing_examples(run.evals[base], run.evals[trained]) if base and trained and base != trained else []
    pngs: dict[str, bytes] = {}
    if run.metrics:
        pngs["learning_curves"] = plots.figure_to_png(plots.learning_curves(run.metrics))
    signals = training_signals(run.phases)
    if signals:
        pngs["training_signals"] = plots.figure_to_png(plots.training_signals(signals))
    ex = {s: v["ex"] for s, v in stages.items() if v["ex"] is not None}
    if ex:
        pngs["ex_per_stage"] = plots.figure_to_png(plots.ex_per_stage(ex, {s: stages[s]["n"] for s in ex}))
    role_ex = {r["role"]: {s: v for s, v in r["own_ex"].items() if v is not None} for r in roles}
    if any(role_ex.values()):
        pngs["role_ex"] = plots.figure_to_png(plots.role_candidate_ex(role_ex))
    return ReportContent(
        run=run,
        stages=stages,
        phases=phase_summary(run.metrics),
        roles=roles,
        examples=examples,
        trained_stage=trained if examples or trained else None,
        pngs=pngs,
        effects=role_effects(run.evals, role_evals=run.role_evals, replay=run.replay),
    )


_STAGE_HEADERS = ["stage", "n", "EX", "exec. success", "mean reward", "turns", "LLM calls", "tokens", "s / question"]


def _stage_rows(c: ReportContent) -> list[list[str]]:
    return [
        [
            s,
            str(v["n"]),
            _pct(v["ex"]),
            _pct(v["exec_success"]),
            _num(v["mean_reward"], 3),
            _num(v["turns"]),
            _num(v["llm_calls"]),
            _num(v["tokens"], 0),
            _num(v["seconds"]),
        ]
        for s, v in c.stages.items()
    ]


_PHASE_HEADERS = ["phase", "rollouts", "mean reward", "first fifth", "last fifth", "EX", "tokens", "latency s"]


def _phase_rows(c: ReportContent) -> list[list[str]]:
    return [
        [
            p["phase"],
            str(p["n"]),
            _num(p["mean_reward"], 3),
            _num(p["first_fifth"], 3),
            _num(p["last_fifth"], 3),
            _pct(p["ex"]),
            _num(p["tokens"], 0),
            _num(p["latency_s"]),
        ]
        for p in c.phases
    ]


_BANDIT_HEADERS = ["policy", "n", "EX", "mean reward", "note"]


def _bandit_rows(c: ReportContent) -> list[list[str]]:
    """Rows in the order ``compare_policies`` gives them (bandit, baselines, logged policies, oracle)."""
    return [
        [
            str(r.get("policy", "?")),
            str(r.get("n", "–")),
            _pct(r.get("ex")),
            _num(r.get("mean_reward"), 3),
            str(r.get("note") or ""),
        ]
        for r in c.run.bandit
    ]


def _role_headers(c: ReportContent) -> list[str]:
    return ["role", "trained in", "chosen", "survived to final"] + [f"own EX {s}" for s in c.stages] + [
        "Δ after its phase"
    ]


def _role_rows(c: ReportContent) -> list[list[str]]:
    out = []
    for r in c.roles:
        chosen = _pct(r["chosen"]) if r["chosen"] is not None else (
            f"best pick {_pct(r['best_pick'])}" if r["best_pick"] is not None else "–"
        )
        survived = _signed_pct(r["survived"]) if r["role"] == "senior" else _pct(r["survived"])
        out.append(
            [r["role"], r["trained_in"] or "–", chosen, survived]
            + [_pct(r["own_ex"].get(s)) for s in c.stages]
            + [_signed_pct(r["delta"])]
        )
    return out


_ROLE_NOTE = (
    "chosen: share of questions where the supervisor picked this junior's candidate "
    "(for the supervisor: among questions with at least one correct candidate, the share where it "
    "picked a correct one). survived to final: share where the role's SQL is the final answer unchanged "
    "(for the senior: net EX its refinement added, fixed − broken). own EX: the junior's own candidate, "
    "the candidate the supervisor picked, the senior's refined SQL. Δ after its phase: own EX on the stage "
    "that trains the role minus the stage before it. Columns 'chosen' and 'survived' are for the last stage."
)


def _failure(rec: Mapping) -> str:
    """What to show when a record has no result: why the question failed, if recorded."""
    if rec.get("error"):
        return f"(no result: {rec['error']})"
    return "(no result)" if not rec.get("pred_sql") else ""


def _example_view(e: Mapping, trained_stage: str) -> dict[str, Any]:
    """One :func:`differing_examples` row as the template shows it: ``{"kind", "id", "db_id", "question",
    "gold_sql", "sides"}`` with ``sides`` = baseline then ``trained_stage``, each ``{"label", "correct" (bool),
    "sql", "result"}`` (plain strings; the template escapes them)."""

    def side(label: str, rec: Mapping) -> dict[str, Any]:
        return {
            "label": label,
            "correct": bool(rec.get("match")),
            "sql": rec.get("pred_sql") or "(no SQL)",
            "result": _preview(rec.get("result_preview")) or _failure(rec),
        }

    return {
        "kind": e["kind"],
        "id": e["id"],
        "db_id": e["db_id"],
        "question": e["question"],
        "gold_sql": e["gold_sql"] or "",
        "sides": [side("baseline", e["baseline"]), side(trained_stage, e["trained"])],
    }


#: The HTML report's Jinja2 template, in ``evaluation/templates/`` (shipped as package data).
REPORT_TEMPLATE = "report.html.j2"


@functools.cache
def _html_template() -> jinja2.Template:
    """The report template, loaded once; autoescaped (every value is HTML-escaped unless marked safe) and strict
    (an undefined name raises :class:`jinja2.UndefinedError` instead of rendering as "").

    Raises:
        ValueError: when the package has no ``evaluation/templates/`` directory (installed without its package data).
        jinja2.TemplateNotFound: when that directory lacks ``report.html.j2``.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evaluation", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["png_tag"] = _png_tag
    return env.get_template(REPORT_TEMPLATE)


def render_html(c: ReportContent) -> str:
    """The report as one self-contained HTML document (str), rendered from :data:`REPORT_TEMPLATE`.

    Python computes every value (table rows as strings, notes, example texts); the template holds the
    structure. Values are HTML-escaped by Jinja2's autoescaping; the only markup passed through unescaped is the
    ``<img>`` tags :func:`_png_tag` builds (alt text escaped there, PNG as a base64 ``data:`` URI).

    Raises:
        ValueError, jinja2.TemplateNotFound: when the template is not installed with the package (see
            :func:`_html_template`).
    """
    run = c.run
    return _html_template().render(
        run_name=run.run_dir.name,
        run_dir=str(run.run_dir),
        n_rollouts=len(run.metrics),
        stages=list(c.stages),
        phases=[(name, done is not None) for name, done in run.phases.items()],
        pngs=c.pngs,
        phase_headers=_PHASE_HEADERS,
        phase_rows=_phase_rows(c),
        stage_headers=_STAGE_HEADERS,
        stage_rows=_stage_rows(c),
        reward_computed=any(r.get("reward_source") for recs in run.evals.values() for r in recs),
        effect_headers=_EFFECT_HEADERS,
        effect_rows=_effect_rows(c),
        effect_sentences=describe_effects(c.effects) if c.effects else [],
        effect_note=_EFFECT_NOTE,
        bandit_headers=_BANDIT_HEADERS,
        bandit_rows=_bandit_rows(c),
        role_headers=_role_headers(c),
        role_rows=_role_rows(c),
        role_note=_ROLE_NOTE,
        trained_stage=c.trained_stage,
        kinds={k: sum(e["kind"] == k for e in c.examples) for k in ("fixed", "broken", "changed")},
        examples=[_example_view(e, c.trained_stage) for e in c.examples] if c.trained_stage else [],
        config_text=run.config_text,
    )


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    r"""A GitHub Markdown table of string cells through ``tabulate`` (``tablefmt="github"``).

    Cells are kept as given: ``disable_numparse`` ("1,234" or "0.0%" stay strings), ``stralign=None`` (no
    padding, so a row reads ``| baseline | 8 | 62.5% |``). A ``|`` in a header or cell is escaped as ``\|`` and a
    newline becomes a space, so each row stays one table row. ``rows`` may be empty (header and separator only).
    """

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    return tabulate(
        [[cell(x) for x in r] for r in rows],
        headers=[cell(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,
        stralign=None,
    )


_EFFECT_HEADERS = ["phase", "role", "metric", "n", "before %", "after %", "Δ pts", "95% CI pts", "McNemar p", "fixed",
                   "broken"]
_EFFECT_NOTE = ("Paired on the same dev questions: Δ = after − before; CI: percentile bootstrap of the paired "
                "difference (Efron & Tibshirani 1993); p: exact McNemar test on the discordant pairs (McNemar 1947). "
                "An effect is distinguishable from zero when the CI excludes 0 and p < 0.05.")


def _effect_rows(c: ReportContent) -> list[list[str]]:
    return [[e.phase, e.role, e.metric, str(e.n), f"{100 * e.before:.1f}", f"{100 * e.after:.1f}",
             f"{100 * e.delta:+.1f}", f"[{100 * e.ci_low:+.1f}, {100 * e.ci_high:+.1f}]",
             "<0.001" if e.p < 0.001 else f"{e.p:.3f}", str(e.fixed), str(e.broken)] for e in c.effects]


def render_markdown(c: ReportContent) -> str:
    """A Markdown summary: the same tables as the HTML, without images and with examples abridged."""
    out = [f"# SQL Society training report — `{c.run.run_dir.name}`", ""]
    if c.phases:
        out += ["## Learning curves (rollouts per phase)", "", _md_table(_PHASE_HEADERS, _phase_rows(c)), ""]
    if c.stages:
        out += ["## Metrics per stage (fixed dev subset)", "", _md_table(_STAGE_HEADERS, _stage_rows(c)), ""]
    if c.effects:
        out += ["## Each phase on the role it trains (paired, same questions)", "",
                effects_table_markdown(c.effects), "",
                *[f"- {t}" for t in describe_effects(c.effects)], "", _EFFECT_NOTE, ""]
    if c.run.bandit:
        out += ["## Supervisor policies (bandit comparison)", "", _md_table(_BANDIT_HEADERS, _bandit_rows(c)), ""]
    if c.roles:
        out += ["## Per-role breakdown", "", _md_table(_role_headers(c), _role_rows(c)), "", _ROLE_NOTE, ""]
    if c.examples and c.trained_stage:
        out += [f"## Where the answer differs from the baseline (baseline vs {c.trained_stage})", ""]
        for e in c.examples:
            out += [
                f"- **{e['id']}** ({e['db_id']}, {e['kind']}): {e['question']}",
                f"  - baseline ({'correct' if e['baseline'].get('match') else 'wrong'}): "
                f"`{_preview(e['baseline'].get('pred_sql'), 200)}`",
                f"  - {c.trained_stage} ({'correct' if e['trained'].get('match') else 'wrong'}): "
                f"`{_preview(e['trained'].get('pred_sql'), 200)}`",
                f"  - gold: `{_preview(e['gold_sql'], 200)}`",
            ]
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`build_report` wrote the report: ``html`` and ``markdown`` paths."""

    html: Path
    markdown: Path


def build_report(
    run_dir: str | Path, out_html: str | Path | None = None, out_md: str | Path | None = None
) -> ReportPaths:
    """Write the HTML report and the Markdown summary for ``run_dir``.

    Args:
        run_dir: a ``sqlsociety train`` run directory (may be partial: mid-run reports work).
        out_html: HTML path; default ``RUN_DIR/report.html``.
        out_md: Markdown path; default ``RUN_DIR/report.md``.

    Returns:
        The paths written.

    Raises:
        ReportError: see :func:`load_run`.
    """
    run = load_run(run_dir)
    content = compute_report(run)
    html_path = Path(out_html) if out_html else run.run_dir / "report.html"
    md_path = Path(out_md) if out_md else run.run_dir / "report.md"
    atomic_write_text(html_path, render_html(content))
    atomic_write_text(md_path, render_markdown(content))
    return ReportPaths(html=html_path, markdown=md_path)


def write_report(run_dir: str | Path) -> Path:
    """:func:`build_report` with the default paths; returns ``RUN_DIR/report.html`` (what
    ``training.pipeline`` calls at the end of ``sqlsociety train``)."""
    return build_report(run_dir).html
