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

each with n, before, after, the difference, a 95 % paired-bootstrap CI and the exact McNemar p
(see :mod:`evaluation.stats` for the formulas and their sources). Questions are paired by
``question_id``; a question missing from either stage is left out of that row.

When the run made role-level evaluations (``eval/roles/<stage>.jsonl``, the role-level agents of
``society.baselines`` on their own larger samples) and a phase-4 replay (``phases/4-bandit/
replay.jsonl``), those judge the roles instead, and the rows become

=========  ==========  =============================================  ==========================
phase      role        metric                                         before -> after (paired)
=========  ==========  =============================================  ==========================
2 SFT      each junior own candidate EX                                juniors_baseline -> _sft
3 GRPO     senior      EX of its output on the fixed inputs            senior_baseline -> _grpo
3 GRPO     senior      EX of its output vs its input, base / trained   input -> output, each
4 bandit   supervisor  EX of the chosen candidate, all / contested     majority vote -> bandit
all        society     end-to-end EX                                   baseline -> last stage
=========  ==========  =============================================  ==========================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evaluation.stats import Effect, paired_effect

__all__ = ["STAGES", "role_effects"]

#: Stage order of a training run (``training.pipeline``: baseline, then after phases 2, 3, 4).
STAGES = ("baseline", "sft", "grpo", "bandit")


def _by_question(records: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(r.get("question_id")): r for r in records if r.get("question_id") is not None}


def _pairs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], get: Any) -> tuple[list[int], list[int]]:
    """Aligned 0/1 outcomes of the questions both stages hold and ``get`` can score (not None)."""
    qa, qb = _by_question(a), _by_question(b)
    before, after = [], []
    for q in sorted(set(qa) & set(qb)):
        x, y = get(qa[q]), get(qb[q])
        if x is not None and y is not None:
            before.append(int(bool(x)))
            after.append(int(bool(y)))
    return before, after


def _junior_ex(name: str) -> Any:
    return lambda r: ((r.get("roles") or {}).get(name) or {}).get("ex")


def _senior(key: str) -> Any:
    return lambda r: ((r.get("roles") or {}).get("senior") or {}).get(key)


def _chosen_ex(r: Mapping[str, Any]) -> Any:
    roles = r.get("roles") or {}
    choice = (roles.get("supervisor") or {}).get("choice")
    return (roles.get(choice) or {}).get("ex") if choice else None


def _net_senior(r: Mapping[str, Any]) -> Any:
    s = (r.get("roles") or {}).get("senior") or {}
    if s.get("before_ex") is None or s.get("after_ex") is None:
        return None
    return bool(s["after_ex"]) and not bool(s["before_ex"])  # a fix by the senior


def _effect(phase: str, role: str, metric: str, pair: tuple[list[int], list[int]], seed: int) -> Effect | None:
    before, after = pair
    if not before:
        return None
    return paired_effect(before, after, phase=phase, role=role, metric=metric, seed=seed)


def role_effects(evals: Mapping[str, Sequence[Mapping[str, Any]]], *, seed: int = 0,
                 role_evals: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 replay: Sequence[Mapping[str, Any]] | None = None) -> list[Effect]:
    """The per-role effects a run's stage evaluations support (rows for missing stages are left out).

    Args:
        evals: stage name -> records of ``eval/<stage>.jsonl`` (see the module docstring).
        seed: the bootstrap seed (the same seed gives the same CIs).
        role_evals: role-level stage name (``juniors_baseline``, ``juniors_sft``, ``senior_baseline``,
            ``senior_grpo``) -> records of ``eval/roles/<stage>.jsonl``; each role judged there
            replaces its rows from ``evals``.
        replay: rows of ``phases/4-bandit/replay.jsonl`` (``training.bandit.replay_outcomes``).

    Returns:
        :class:`evaluation.stats.Effect` rows in the order of the module docstring's tables.
    """
    out: list[Effect | None] = []
    base, sft, grpo, bandit = (evals.get(s) for s in STAGES)
    roles = role_evals or {}
    jb, js = roles.get("juniors_baseline"), roles.get("juniors_sft")
    sb, sg = roles.get("senior_baseline"), roles.get("senior_grpo")
    if jb and js:
        base, sft = jb, js  # the juniors' rows come from the juniors-only evaluations
    grpo_rows: list[Effect | None] = []  # the senior judged on its own fixed inputs
    if sb and sg:
        grpo_rows.append(_effect("3 GRPO", "senior", "EX of its output on fixed inputs (base -> trained)",
                                 _pairs(sb, sg, _senior("after_ex")), seed))
        for name, recs in (("base", sb), ("trained", sg)):
            pairs = [(_senior("before_ex")(r), _senior("after_ex")(r)) for r in recs]
            keep = [(int(bool(x)), int(bool(y))) for x, y in pairs if x is not None and y is not None]
            if keep:
                grpo_rows.append(_effect("3 GRPO", "senior", f"EX of output vs its input ({name} senior)",
                                         ([k[0] for k in keep], [k[1] for k in keep]), seed))
    if base and sft:
        juniors = sorted({k for r in base for k in (r.get("roles") or {}) if k.startswith("junior")})
        for j in juniors:
            out.append(_effect("2 SFT", j, "own candidate EX", _pairs(base, sft, _junior_ex(j)), seed))
    out.extend(grpo_rows)
    if grpo and not grpo_rows:
        before = [_senior("before_ex")(r) for r in grpo]
        after = [_senior("after_ex")(r) for r in grpo]
        keep = [(int(bool(x)), int(bool(y))) for x, y in zip(before, after) if x is not None and y is not None]
        if keep:
            out.append(_effect("3 GRPO", "senior", "EX of output vs its input",
                               ([k[0] for k in keep], [k[1] for k in keep]), seed))
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
                                   ([int(r["majority_vote"]) for r in rows], [int(r["bandit"]) for r in rows]), seed))
    elif grpo and bandit:
        chosen = _pairs(grpo, bandit, _chosen_ex)
        out.append(_effect("4 bandit", "supervisor", "EX of the chosen candidate", chosen, seed))
    soc_base = evals.get("baseline")
    last = next((evals.get(s) for s in reversed(STAGES[1:]) if evals.get(s)), None)
    if soc_base and last:
        out.append(_effect("all", "society", "end-to-end EX", _pairs(soc_base, last, lambda r: r.get("match")), seed))
    return [e for e in out if e is not None]
