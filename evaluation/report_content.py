"""The training report's content: summaries and tables computed from a run directory, before rendering.

:func:`compute_report` turns a :class:`evaluation.run_data.RunData` into a :class:`ReportContent` (the tables
and the matplotlib PNGs, independent of the output format); :mod:`evaluation.report` renders it as HTML and
Markdown.

Sections: learning curves (raw + rolling-mean reward per phase), EX per stage, the
multi-metric table, each phase's paired effect on its role, the one-shot control beside the
juniors' pick and the society (:mod:`evaluation.control_effects`), the bandit comparison,
per-role breakdown, and side-by-side examples where the last stage's answer differs from the
baseline's.

Metric definitions (all means over the questions of one ``eval/<stage>.jsonl``):
    * EX -- execution accuracy (Yu et al., Spider, EMNLP 2018): share of questions whose
      predicted SQL returns the same result as the gold SQL (the record's ``match``).
    * execution success rate -- share whose predicted SQL executed without error (``executed_ok``).
    * mean reward -- mean of the record's ``reward`` (the foundation's weighted reward, in [0, 1]).
    * turns, LLM calls, tokens, seconds -- per-question means of the same-named fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation import plots
from evaluation.control_effects import ControlRow, adjust_with, control_rows
from evaluation.metrics import sql_text
from evaluation.role_effects import role_effects
from evaluation.run_data import RunData
from evaluation.stats import Effect
from society.response_cache import cached_calls

#: Which stage trains which role family (role names are matched by prefix).
ROLE_TRAINING_STAGE: dict[str, str] = {"junior": "sft", "senior": "grpo", "supervisor": "bandit"}

#: At most this many side-by-side examples in the report.
MAX_EXAMPLES = 8


# --------------------------------------------------------------------------- summaries


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def stage_summary(records: Sequence[Mapping]) -> dict[str, float | int | None]:
    """The multi-metric row for one stage.

    Args:
        records: eval records of one stage.

    Returns:
        ``{"n", "ex", "exec_success", "mean_reward", "turns", "llm_calls", "tokens", "seconds",
        "cached_calls"}``; ``ex``/``exec_success`` are fractions in [0, 1]; ``cached_calls`` is the
        stage's calls answered from the run's response cache (a sum); the others are per-question
        means; a metric whose field no record carries is None.
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
        "cached_calls": cached_calls(records),
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
    ``"<phase>: reward"``; one junior adapter per persona (``adapters``: persona -> its ``losses``)
    gives ``"<phase> (<persona>): loss"``; phases without them are left out.

    >>> training_signals({"2-sft": {"adapters": {"direct": {"losses": [[1, 2.0]]}, "decompose": {"rows": 0}}},
    ...                   "3-grpo": {"rewards": [0.5]}})
    {'2-sft (direct): loss': [(1.0, 2.0)], '3-grpo: reward': [(1.0, 0.5)]}
    """
    out: dict[str, list[tuple[float, float]]] = {}
    for name, done in phases.items():
        if not done:
            continue
        for key, label in (("losses", "loss"), ("rewards", "reward")):
            pts = _points(done.get(key))
            if pts:
                out[f"{name}: {label}"] = pts
        for persona, one in (done.get("adapters") or {}).items():
            pts = _points((one or {}).get("losses"))
            if pts:
                out[f"{name} ({persona}): loss"] = pts
    return out


def junior_adapter_rows(phases: Mapping[str, Mapping | None]) -> list[dict[str, Any]]:
    """The juniors' LoRA adapters of phase 2 (``phases/2-sft/done.json``): one row per persona
    (``junior_adapters: per_persona``) or one row ``all personas`` (shared), each with ``persona``,
    ``alias`` (the model name its requests carry), ``rows``, ``steps``, ``first_loss``, ``last_loss``
    (None when not trained: a persona with no admitted conversation keeps the base model).
    Empty when phase 2 has not finished.

    >>> rows = junior_adapter_rows({"2-sft": {"junior_adapters": "per_persona", "adapters": {
    ...     "direct": {"alias": "junior_policy_direct", "rows": 4, "steps": 2, "losses": [[1, 2.0], [2, 1.5]],
    ...                "adapter": "a"},
    ...     "decompose": {"alias": "junior_policy_decompose", "rows": 0, "adapter": None}}}})
    >>> [(r["persona"], r["rows"], r["first_loss"], r["last_loss"], r["trained"]) for r in rows]
    [('direct', 4, 2.0, 1.5, True), ('decompose', 0, None, None, False)]
    >>> junior_adapter_rows({"2-sft": {"adapter": "a", "rows": 9, "steps": 3, "losses": [[1, 1.0]]}})[0]["persona"]
    'all personas'
    """
    done = next((d for name, d in phases.items() if name.endswith("-sft") and d), None)
    if not done:
        return []
    if done.get("junior_adapters") == "per_persona":
        items = [(p, one or {}) for p, one in (done.get("adapters") or {}).items()]
    else:
        items = [("all personas", {**done, "alias": done.get("alias", "junior_policy")})]
    out = []
    for persona, one in items:
        pts = _points(one.get("losses"))
        out.append({"persona": persona, "alias": one.get("alias"), "rows": one.get("rows"), "steps": one.get("steps"),
                    "first_loss": pts[0][1] if pts else None, "last_loss": pts[-1][1] if pts else None,
                    "trained": bool(one.get("adapter"))})
    return out


def reused_stages(run_dir: str | Path) -> list[dict[str, Any]]:
    """What this run took from an earlier run instead of running it (``training.reuse``): phase 1's
    rollouts (``phases/1-gather/reused.json``), then the stages (``eval/<stage>.reused.json`` and
    ``eval/roles/<stage>.reused.json``) in file-name order: ``stage``, ``source_run``, ``n`` and its
    ``unit`` (``questions``, or ``rollouts`` for phase 1), ``of`` (the stage's questions in this run,
    from its ``.summary.json``; more than ``n`` when the run evaluated the rest itself, e.g. a stage
    widened on resume), ``source_n`` (the source stage's questions when only some of them were this
    stage's, ``training.reuse.copy_questions``; else None), ``source_seconds`` (what it cost where it
    ran) and ``parts`` (the matching content hashes). Unreadable files are skipped."""
    run = Path(run_dir)
    out = []
    files = sorted(run.glob("phases/*/reused.json")) + sorted([*run.glob("eval/*.reused.json"),
                                                               *run.glob("eval/roles/*.reused.json")])
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            try:
                of = json.loads(Path(str(f).removesuffix(".reused.json") + ".summary.json").read_text()).get("n")
            except (OSError, ValueError, AttributeError):
                of = None
            out.append({"stage": data.get("stage", f.name.removesuffix(".reused.json")),
                        "source_run": data.get("source_run"), "n": data.get("n"), "of": of,
                        "source_n": data.get("source_n"),
                        "unit": data.get("unit", "questions"),
                        "source_seconds": data.get("source_seconds"), "parts": data.get("parts") or {}})
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
        :func:`evaluation.metrics.sql_text.normalize_sql` with ``lower=True``).
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
    :func:`evaluation.metrics.sql_text.normalize_sql` with ``lower=True``).

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



# --------------------------------------------------------------------------- the report's content


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
            paired, with CI, raw McNemar p and the p Holm-adjusted over these rows, the juniors'
            noise-control rows when the run has them, and the questions counted as failures;
            :meth:`evaluation.stats.Effect.called` is the verdict).
        junior_adapters: :func:`junior_adapter_rows` (phase 2's adapters, shared or per persona).
        reused: :func:`reused_stages` (stages taken from an earlier run, and from where).
        controls: :func:`evaluation.control_effects.control_rows`: the one-shot ``single`` agent beside the
            juniors' pick and the society, paired, with each agent's tokens and seconds per question; their
            effects are also the last rows of ``effects`` and Holm-adjusted with them (one family).
    """

    run: RunData
    stages: dict[str, dict]
    phases: list[dict]
    roles: list[dict]
    examples: list[dict]
    trained_stage: str | None
    pngs: dict[str, bytes]
    effects: list[Effect] = field(default_factory=list)
    junior_adapters: list[dict] = field(default_factory=list)
    reused: list[dict] = field(default_factory=list)
    controls: list[ControlRow] = field(default_factory=list)


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
    effects, controls = adjust_with(role_effects(run.evals, role_evals=run.role_evals, replay=run.replay),
                                    control_rows(run.evals, run.role_evals))
    return ReportContent(
        run=run,
        stages=stages,
        phases=phase_summary(run.metrics),
        roles=roles,
        examples=examples,
        trained_stage=trained if examples or trained else None,
        pngs=pngs,
        effects=effects,
        junior_adapters=junior_adapter_rows(run.phases),
        reused=reused_stages(run.run_dir),
        controls=controls,
    )

