"""Each training phase judged on the role it trains, paired on the same dev questions.

The pipeline evaluates the society on one fixed dev sample after every stage
(``eval/<stage>.jsonl``: ``baseline``, ``sft``, ``grpo``, ``bandit``); every record holds the EX
of each junior's own candidate (``roles[<junior>]["ex"]``), of the senior's input and output
(``roles["senior"]["before_ex"/"after_ex"]``) and of the final SQL (``match``). From those
records :func:`role_effects` builds one :class:`evaluation.stats.Effect` per row of the table

=========  ==========  =============================================  ==========================
phase      role        metric                                         before -> after (paired)
=========  ==========  =============================================  ==========================
2 SFT      each junior own candidate EX                                baseline -> sft
3 GRPO     senior      EX of its output; its input is the chosen       its input -> its output,
                       candidate (fixed / broken counts)               in the ``grpo`` stage
3 GRPO     senior      net fixes, trained vs base senior               sft stage -> grpo stage
4 bandit   supervisor  EX of the chosen candidate                      grpo -> bandit
all        society     end-to-end EX                                   baseline -> last stage
=========  ==========  =============================================  ==========================

each with n, before, after, the difference, a 95 % paired-bootstrap CI, the exact McNemar p and
the McNemar p Holm-adjusted over the effect rows of the run (see :mod:`evaluation.stats` for the
formulas, their sources and when an effect is *called*).

Pairing. Questions are paired by ``question_id``. A question both stages hold whose record has no
outcome for the row's role (no ``ex`` for the junior: it raised, timed out or produced no SQL; no
``before_ex``/``after_ex`` for the senior; no choice for the supervisor) counts as a failure (0)
of that role in that stage, and the row says how many (``Effect.missing_before`` /
``missing_after``). A question held by only one of the two stages (a stage that did not finish)
cannot be paired: it is left out and counted (``Effect.unpaired``). Nothing is dropped silently.

When the run made role-level evaluations (``eval/roles/<stage>.jsonl``, the role-level agents of
``society.baselines`` on their own larger samples) and a phase-4 replay (``phases/4-bandit/
replay.jsonl``), those judge the roles instead, and the rows become

=========  ==========  =============================================  ==========================
phase      role        metric                                         before -> after (paired)
=========  ==========  =============================================  ==========================
2 SFT      each junior own candidate EX                                juniors_baseline -> _sft
2 SFT      juniors'    EX of the supervisor's pick among them          juniors_baseline -> _sft
           pick        (when the records carry ``match``)
3 GRPO     senior      EX of its output on the fixed inputs            senior_baseline -> _grpo
3 GRPO     senior      EX of its output vs its input, base / trained   input -> output, each
4 bandit   supervisor  EX of the chosen candidate, all / contested     majority vote -> bandit
all        society     end-to-end EX                                   baseline -> last stage
=========  ==========  =============================================  ==========================

Noise control. When the run also evaluated the untrained juniors a second time on the same
questions with every junior's sampling seed shifted (:data:`NOISE_STAGE`, ``eval.noise_repeat``
of ``training.pipeline``), each junior's SFT row (and the pick's) is followed by a ``kind="noise"`` row
(phase ``noise``: ``juniors_baseline`` -> :data:`NOISE_STAGE`, same pairing rules) and carries that
row's Δ and p as ``noise_delta``/``noise_p``: the difference two evaluations of the *same
untrained* junior show. The SFT row is called only when ``|Δ| > |noise Δ|`` and the noise row's
own p >= 0.05, besides the Holm-adjusted p < 0.05 and a CI that excludes 0
(:meth:`evaluation.stats.Effect.called`). Noise rows are controls, not claims: they are not in the
Holm family.

One adapter per persona against one for all. When the run also evaluated the trained juniors on a
shared adapter (:data:`SHARED_STAGE`, ``compare_shared_adapter`` of ``training.profile``: trained
on the same rows, the same settings), each junior gets a row (phase ``2 SFT``, metric "own
candidate EX, shared adapter -> its own adapter") paired :data:`SHARED_STAGE` -> ``juniors_sft``
on the same questions: a positive Δ favours the persona's own adapter. These are ``kind="comparison"``
rows, Holm-adjusted among themselves (:data:`evaluation.stats.FAMILIES`), so the secondary question
does not weaken the phases' effect rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.stats import Effect, holm_effects, paired_effect, paired_records

__all__ = ["NOISE_STAGE", "PICK", "SHARED_STAGE", "STAGES", "Pairs", "role_effects"]

#: Stage order of a training run (``training.pipeline``: baseline, then after phases 2, 3, 4).
STAGES = ("baseline", "sft", "grpo", "bandit")

#: The role-level stage of the noise control: the untrained juniors on the questions of
#: ``juniors_baseline`` again, every junior's sampling seed shifted (``training.pipeline``).
NOISE_STAGE = "juniors_baseline_repeat"

#: The role-level stage of the shared-adapter comparison: the juniors after phase 2 on one adapter
#: trained on every persona's rows, on the questions of ``juniors_sft`` (``training.stages``).
SHARED_STAGE = "juniors_sft_shared"

#: The role name of the juniors-only stages' pick (the supervisor's choice among the juniors'
#: candidates; its EX is the record's ``match``), the row issue 20 asks to move with the juniors.
PICK = "juniors' pick"


@dataclass(frozen=True)
class Pairs:
    """Aligned 0/1 outcomes of one row and what pairing did to get them.

    Attributes:
        before / after: outcomes, question by question (same length).
        missing_before / missing_after: questions whose outcome was absent and counted as 0.
        unpaired: questions held by one of the two stages only (left out).
    """

    before: list[int]
    after: list[int]
    missing_before: int = 0
    missing_after: int = 0
    unpaired: int = 0


Getter = Callable[[Mapping[str, Any]], Any]


def _pairs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], get: Getter) -> Pairs:
    """Outcomes ``get`` reads from the questions both stages hold, paired by ``question_id`` (sorted);
    an outcome ``get`` finds absent (None) counts as 0 and is counted; questions held by one stage
    only are counted in ``unpaired``."""
    pairs, unpaired = paired_records(a, b)
    return _score([(get(x), get(y)) for x, y in pairs], unpaired=unpaired)


def _within(records: Sequence[Mapping[str, Any]], get_before: Getter, get_after: Getter) -> Pairs:
    """Two outcomes of the same records (e.g. the senior's input and output), with :func:`_pairs`' rules."""
    return _score([(get_before(r), get_after(r)) for r in records])


def _score(raw: Sequence[tuple[Any, Any]], unpaired: int = 0) -> Pairs:
    before = [0 if x is None else int(bool(x)) for x, _ in raw]
    after = [0 if y is None else int(bool(y)) for _, y in raw]
    return Pairs(before, after, sum(x is None for x, _ in raw), sum(y is None for _, y in raw), unpaired)


def _junior_ex(name: str) -> Any:
    return lambda r: ((r.get("roles") or {}).get(name) or {}).get("ex")


def _senior(key: str) -> Any:
    return lambda r: ((r.get("roles") or {}).get("senior") or {}).get(key)


def _chosen_ex(r: Mapping[str, Any]) -> Any:
    roles = r.get("roles") or {}
    choice = (roles.get("supervisor") or {}).get("choice")
    return (roles.get(choice) or {}).get("ex") if choice else None


def _has_pick(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether juniors-only records carry the pick's outcome (``match``); constructed ones may not."""
    return any("match" in r for r in records)


def _pick_ex(r: Mapping[str, Any]) -> Any:
    """EX of a juniors-only record's final SQL: the supervisor's pick among the juniors' candidates."""
    return r.get("match")


def _with_floor(e: Effect | None, noise: Effect | None) -> list[Effect | None]:
    """An SFT row carrying its noise row's Δ and p (``noise_delta``/``noise_p``), then that noise row."""
    if e is not None and noise is not None:
        e = dataclasses.replace(e, noise_delta=noise.delta, noise_p=noise.p)
    return [e, noise]


def _net_senior(r: Mapping[str, Any]) -> Any:
    s = (r.get("roles") or {}).get("senior") or {}
    if s.get("before_ex") is None or s.get("after_ex") is None:
        return None
    return bool(s["after_ex"]) and not bool(s["before_ex"])  # a fix by the senior


def _effect(phase: str, role: str, metric: str, pair: Pairs, seed: int, kind: str = "effect") -> Effect | None:
    if not pair.before:
        return None
    e = paired_effect(pair.before, pair.after, phase=phase, role=role, metric=metric, seed=seed)
    return dataclasses.replace(e, missing_before=pair.missing_before, missing_after=pair.missing_after,
                               unpaired=pair.unpaired, kind=kind)


def _juniors(*stages: Sequence[Mapping[str, Any]] | None) -> list[str]:
    return sorted({k for recs in stages for r in recs or [] for k in (r.get("roles") or {}) if k.startswith("junior")})


def role_effects(evals: Mapping[str, Sequence[Mapping[str, Any]]], *, seed: int = 0,
                 role_evals: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 replay: Sequence[Mapping[str, Any]] | None = None) -> list[Effect]:
    """The per-role effects a run's stage evaluations support (rows for missing stages are left out).

    Args:
        evals: stage name -> records of ``eval/<stage>.jsonl`` (see the module docstring).
        seed: the bootstrap seed (the same seed gives the same CIs).
        role_evals: role-level stage name (``juniors_baseline``, ``juniors_sft``, ``senior_baseline``,
            ``senior_grpo``, :data:`NOISE_STAGE`) -> records of ``eval/roles/<stage>.jsonl``; each
            role judged there replaces its rows from ``evals``; :data:`NOISE_STAGE` adds the juniors'
            noise rows.
        replay: rows of ``phases/4-bandit/replay.jsonl`` (``training.bandit.replay_outcomes``).

    Returns:
        :class:`evaluation.stats.Effect` rows in the order of the module docstring's tables, with
        ``p_holm`` set over the effect rows (:func:`evaluation.stats.holm_effects`), noise rows
        after their junior's SFT row, and the counts of questions counted as failures or unpaired.
    """
    out: list[Effect | None] = []
    base, sft, grpo, bandit = (evals.get(s) for s in STAGES)
    roles = role_evals or {}
    jb, js = roles.get("juniors_baseline"), roles.get("juniors_sft")
    jr = roles.get(NOISE_STAGE)
    sb, sg = roles.get("senior_baseline"), roles.get("senior_grpo")
    role_level_juniors = bool(jb and js)
    if role_level_juniors:
        base, sft = jb, js  # the juniors' rows come from the juniors-only evaluations
    grpo_rows: list[Effect | None] = []  # the senior judged on its own fixed inputs
    if sb and sg:
        grpo_rows.append(_effect("3 GRPO", "senior", "EX of its output on fixed inputs (base -> trained)",
                                 _pairs(sb, sg, _senior("after_ex")), seed))
        for name, recs in (("base", sb), ("trained", sg)):
            grpo_rows.append(_effect("3 GRPO", "senior", f"EX of output vs its input ({name} senior)",
                                     _within(recs, _senior("before_ex"), _senior("after_ex")), seed))
    noise: dict[str, Effect] = {}
    if jb and jr:  # the untrained juniors twice, other sampling seeds
        for j in _juniors(jb, jr):
            n = _effect("noise", j, "own candidate EX, untrained juniors evaluated twice (other sampling seeds)",
                        _pairs(jb, jr, _junior_ex(j)), seed, kind="noise")
            if n is not None:
                noise[j] = n
    if base and sft:
        for j in _juniors(base, sft):
            e = _effect("2 SFT", j, "own candidate EX", _pairs(base, sft, _junior_ex(j)), seed)
            out.extend(_with_floor(e, noise.pop(j, None) if role_level_juniors else None))
    out.extend(noise.values())  # noise rows without an SFT row to sit under (phase 2 not evaluated yet)
    if role_level_juniors and _has_pick(jb) and _has_pick(js):  # the juniors-only stage's own pick
        e = _effect("2 SFT", PICK, "EX of the supervisor's pick among the juniors' candidates",
                    _pairs(jb, js, _pick_ex), seed)
        n = (_effect("noise", PICK, "EX of the pick, untrained juniors evaluated twice (other sampling seeds)",
                     _pairs(jb, jr, _pick_ex), seed, kind="noise") if jr and _has_pick(jr) else None)
        out.extend(_with_floor(e, n))
    shared = roles.get(SHARED_STAGE)
    if js and shared:
        for j in _juniors(shared, js):
            out.append(_effect("2 SFT", j, "own candidate EX, shared adapter -> its own adapter",
                               _pairs(shared, js, _junior_ex(j)), seed, kind="comparison"))
    out.extend(grpo_rows)
    if grpo and not grpo_rows:
        out.append(_effect("3 GRPO", "senior", "EX of output vs its input",
                           _within(grpo, _senior("before_ex"), _senior("after_ex")), seed))
    if sft and grpo and not grpo_rows:
        sft_soc, grpo_soc = evals.get("sft"), grpo
        if sft_soc:
            out.append(_effect("3 GRPO", "senior", "questions fixed by the senior",
                               _pairs(sft_soc, grpo_soc, _net_senior), seed))
    if replay:
        for label, rows in (("all held-out decisions", list(replay)),
                            ("contested decisions", [r for r in replay if r.get("contested")])):
            if rows:
                out.append(_effect("4 bandit", "supervisor", f"EX of the chosen candidate, {label} "
                                   "(majority vote -> bandit, offline replay)",
                                   _within(rows, lambda r: r.get("majority_vote"), lambda r: r.get("bandit")), seed))
    elif grpo and bandit:
        chosen = _pairs(grpo, bandit, _chosen_ex)
        out.append(_effect("4 bandit", "supervisor", "EX of the chosen candidate", chosen, seed))
    soc_base = evals.get("baseline")
    last = next((evals.get(s) for s in reversed(STAGES[1:]) if evals.get(s)), None)
    if soc_base and last:
        out.append(_effect("all", "society", "end-to-end EX", _pairs(soc_base, last, lambda r: r.get("match")), seed))
    return holm_effects(e for e in out if e is not None)
