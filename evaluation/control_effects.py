"""What the society's extra calls buy: each society figure beside the one-shot control, paired.

The control is the agent a user would pick instead of the society: ``single`` of
``society.baselines`` -- the writer junior (``baselines.writer`` of the society config) drafts once
and its SQL is the answer, one LLM call per question. A training run evaluates it twice
(``training.pipeline``, ``eval.single``) on the questions of the juniors-only stages (the
``eval.junior_limit`` draw), as role-level stages:

* :data:`SINGLE_BASELINE` -- the untrained model (before phase 1, reusable across runs like every
  stage of the untrained model, ``training.reuse``);
* :data:`SINGLE_TRAINED` -- after phase 2, the writer on its trained LoRA adapter: what a user who
  wants one call per question gets from the run's training.

:func:`control_rows` builds one :class:`ControlRow` per comparison the run's records support
(rows whose stages are missing are left out):

======  ==============  ================================================  =============================
phase   role            control (before) -> compared agent (after)        records
======  ==============  ================================================  =============================
control juniors' pick   single untrained -> juniors' pick untrained       ``single_baseline``,
                                                                          ``juniors_baseline``
control juniors' pick   single trained -> juniors' pick trained           ``single_trained``, ``juniors_sft``
2 SFT   one-shot single single untrained -> single trained                ``single_baseline``, ``single_trained``
control society         single untrained -> society untrained             ``single_baseline``,
                                                                          ``eval/baseline``
control society         single trained -> society after its last stage    ``single_trained``, the last of
                                                                          ``eval/sft|grpo|bandit``
======  ==============  ================================================  =============================

Each row's :class:`evaluation.stats.Effect` is the EX (``match``) of the two agents paired by
``question_id`` on the questions both ran (:func:`evaluation.stats.paired_records`): Δ = compared − control, with the
paired bootstrap CI and the exact McNemar p of :func:`evaluation.stats.paired_effect`. The society
stage runs ``eval.limit`` questions and the single stages ``eval.junior_limit``: the society rows
pair on their intersection, their ``n`` says how many, and the questions held by one side only are
counted in ``Effect.unpaired``. A record without an outcome (no ``match``) counts as a failure (0)
and is counted (``missing_before`` / ``missing_after``), as in :mod:`evaluation.role_effects`.

Beside each row, the cost of each agent **on the same paired questions** (:class:`AgentCost`):
per-question means of the record fields ``tokens`` (prompt + completion tokens of all its LLM calls),
``seconds`` (wall seconds of the question) and ``llm_calls``.

These rows are claims like the phases' effects: :func:`adjust_with` Holm-adjusts them together with
the report's other effect rows (one family, :func:`evaluation.stats.holm_effects`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.role_effects import PICK
from evaluation.stats import Effect, holm_effects, paired_effect, paired_records
from society.response_cache import cached_calls

__all__ = ["SINGLE_BASELINE", "SINGLE_STAGES", "SINGLE_TRAINED", "AgentCost", "ControlRow", "adjust_with",
           "agent_cost", "control_rows"]

#: Role-level stage: the one-shot ``single`` agent on the untrained model (``eval/roles/single_baseline.jsonl``).
SINGLE_BASELINE = "single_baseline"
#: Role-level stage: the one-shot agent after phase 2, the writer junior on its trained adapter.
SINGLE_TRAINED = "single_trained"
#: Both, in the order the pipeline evaluates them.
SINGLE_STAGES = (SINGLE_BASELINE, SINGLE_TRAINED)

#: Society stages after the baseline, in run order (the trained society is the last one present).
_TRAINED_SOCIETY_STAGES = ("sft", "grpo", "bandit")

Record = Mapping[str, Any]


@dataclass(frozen=True)
class AgentCost:
    """What one agent spent per question on the paired questions of a :class:`ControlRow`.

    Attributes:
        label: the agent as the report names it (e.g. ``single (untrained)``).
        stage: the stage its records come from (``single_baseline``, ``baseline``, ...).
        n: questions the means are over (the row's paired questions).
        tokens: mean prompt + completion tokens per question (None when no record carries ``tokens``).
        seconds: mean wall seconds per question (None when no record carries ``seconds``).
        llm_calls: mean LLM calls per question (None when no record carries ``llm_calls``).
        cached_calls: of those calls, how many (in all) the run's response cache answered
            (``society.response_cache``): counted in tokens and calls, almost no seconds.
    """

    label: str
    stage: str
    n: int
    tokens: float | None
    seconds: float | None
    llm_calls: float | None
    cached_calls: int = 0


@dataclass(frozen=True)
class ControlRow:
    """One comparison with the one-shot control.

    Attributes:
        effect: EX of ``control`` (before) and ``compared`` (after) paired by question; ``p_holm`` is
            set once the row has been adjusted with the report's other rows (:func:`adjust_with`).
        control / compared: each agent's cost on the same paired questions.
    """

    effect: Effect
    control: AgentCost
    compared: AgentCost


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def agent_cost(label: str, stage: str, records: Sequence[Record]) -> AgentCost:
    """Per-question means of ``tokens``, ``seconds`` and ``llm_calls`` over ``records`` (a field no
    record carries is None), and the sum of their ``cached_calls``.

    >>> agent_cost("single", "single_baseline", [{"tokens": 300, "seconds": 1.0, "llm_calls": 1},
    ...                                          {"tokens": 340, "seconds": 3.0, "llm_calls": 1, "cached_calls": 1}])
    AgentCost(label='single', stage='single_baseline', n=2, tokens=320.0, seconds=2.0, llm_calls=1.0, cached_calls=1)
    """
    return AgentCost(label, stage, len(records), _mean([r.get("tokens") for r in records]),
                     _mean([r.get("seconds") for r in records]), _mean([r.get("llm_calls") for r in records]),
                     cached_calls(records))


def _row(phase: str, role: str, metric: str, control: tuple[str, str, Sequence[Record]],
         compared: tuple[str, str, Sequence[Record]], seed: int) -> ControlRow | None:
    """One :class:`ControlRow` from ``(label, stage, records)`` of each side; None when no question pairs."""
    pairs, unpaired = paired_records(control[2], compared[2])
    if not pairs:
        return None
    before = [x.get("match") for x, _ in pairs]
    after = [y.get("match") for _, y in pairs]
    e = paired_effect([int(bool(v)) for v in before], [int(bool(v)) for v in after], phase=phase, role=role,
                      metric=metric, seed=seed)
    e = dataclasses.replace(e, missing_before=sum(v is None for v in before),
                            missing_after=sum(v is None for v in after), unpaired=unpaired)
    return ControlRow(e, agent_cost(control[0], control[1], [x for x, _ in pairs]),
                      agent_cost(compared[0], compared[1], [y for _, y in pairs]))


def control_rows(evals: Mapping[str, Sequence[Record]], role_evals: Mapping[str, Sequence[Record]] | None = None,
                 *, seed: int = 0) -> list[ControlRow]:
    """The comparisons with the one-shot control that a run's records support (module docstring's table).

    Args:
        evals: society stage -> records of ``eval/<stage>.jsonl``.
        role_evals: role-level stage -> records of ``eval/roles/<stage>.jsonl``; the rows need
            :data:`SINGLE_BASELINE` and/or :data:`SINGLE_TRAINED` there.
        seed: the bootstrap seed (the same seed gives the same CIs).

    Returns:
        The rows in the table's order, ``p_holm`` not set (:func:`adjust_with` sets it over the
        report's family); empty when the run has no single stage.
    """
    roles = role_evals or {}
    sb, st = roles.get(SINGLE_BASELINE), roles.get(SINGLE_TRAINED)
    jb, js = roles.get("juniors_baseline"), roles.get("juniors_sft")
    base = evals.get("baseline")
    last = next(((s, evals[s]) for s in reversed(_TRAINED_SOCIETY_STAGES) if evals.get(s)), None)
    single_u = ("single (untrained)", SINGLE_BASELINE, sb or [])
    single_t = ("single (trained)", SINGLE_TRAINED, st or [])
    out: list[ControlRow | None] = []
    if sb and jb:
        out.append(_row("control", PICK, "EX, one-shot single -> juniors' pick, both untrained",
                        single_u, ("juniors' pick (untrained)", "juniors_baseline", jb), seed))
    if st and js:
        out.append(_row("control", PICK, "EX, one-shot single -> juniors' pick, both trained",
                        single_t, ("juniors' pick (trained)", "juniors_sft", js), seed))
    if sb and st:
        out.append(_row("2 SFT", "one-shot single", "EX, untrained -> the writer's trained adapter",
                        single_u, single_t, seed))
    if sb and base:
        out.append(_row("control", "society", "EX, one-shot single -> society, both untrained",
                        single_u, ("society (untrained)", "baseline", base), seed))
    if st and last:
        out.append(_row("control", "society", f"EX, one-shot single -> society, both trained (society: {last[0]})",
                        single_t, (f"society ({last[0]})", last[0], last[1]), seed))
    return [r for r in out if r is not None]


def adjust_with(effects: Sequence[Effect], controls: Sequence[ControlRow]) -> tuple[list[Effect], list[ControlRow]]:
    """Holm-adjust ``effects`` (the report's other rows) and the control rows as one family
    (:func:`evaluation.stats.holm_effects`; noise rows stay outside it).

    Returns:
        ``(effects + the control rows' effects, controls)``, every effect row's ``p_holm`` set over
        all of them, in that order; each control row carries its adjusted effect.

    >>> from evaluation.stats import paired_effect
    >>> a = paired_effect([0] * 10, [1] * 10, role="a")
    >>> c = ControlRow(paired_effect([0] * 10, [1] * 10, role="c"), *[agent_cost("x", "s", [])] * 2)
    >>> rows, (c2,) = adjust_with([a], [c])
    >>> [round(e.p_holm, 4) for e in rows], c2.effect is rows[1]
    ([0.0039, 0.0039], True)
    """
    rows = holm_effects([*effects, *(c.effect for c in controls)])
    k = len(effects)
    return rows, [dataclasses.replace(c, effect=e) for c, e in zip(controls, rows[k:], strict=True)]
