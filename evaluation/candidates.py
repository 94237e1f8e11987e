"""How much the juniors' candidates differ, from the records of a juniors-only evaluation.

A society whose members differ writes candidates that are right on different questions; the
supervisor can only pick a right one when one exists. This module measures that on the
per-question records of a juniors-only evaluation (``eval/roles/juniors_<stage>.jsonl`` of a
training run, or ``questions.jsonl`` of ``sqlsociety eval --agent juniors``). Each record holds

* ``question_id``;
* ``roles``: ``{<junior>: {"ex": bool | None, "sql", "ok", "persona"}, ..., "supervisor":
  {"choice": <junior> | None, "policy", ...}}`` -- a junior of ``count: n > 1`` in the society
  config appears as ``<name>_1`` ... ``<name>_n``, each with its persona;
* ``candidates``: ``[{"junior", "persona", "sql", "ok", "result_digest", ...}]`` -- the juniors'
  candidates as the supervisor saw them (``result_digest``: a hash of the rows their SQL returned).

From them:

* :func:`junior_rates` / :func:`persona_rates` -- EX of each junior's own candidate and of each
  persona's draws (``k`` of ``n``, Wilson interval, :func:`evaluation.stats.wilson_ci`);
* :func:`oracle_outcomes` -- whether any junior's candidate is right (the best any supervisor
  could do with these candidates); :func:`pick_outcomes` -- whether the supervisor's pick is right;
* :func:`agreement` -- how many distinct results the executed candidates of a question return;
* :func:`pick_counts` -- how often each junior is the one picked;
* :func:`pass_at_k` / :func:`persona_pass_at_k` -- pass@k per persona, the unbiased estimator of
  Chen et al. (2021);
* :func:`pick_effects` -- the pick against each junior's own candidate, and
  :func:`against_control` -- the pick, the oracle and each junior against a control evaluation
  (e.g. the one-shot ``single`` agent's records) on the questions both hold, and
  :func:`against_before` -- each of them against the same row of another juniors-only evaluation
  (e.g. untrained -> trained), as
  :class:`evaluation.stats.Effect` rows (paired bootstrap CI, exact McNemar p, Holm over the rows
  of one table: see :mod:`evaluation.stats` for the formulas and their sources).

The records of the whole society (``eval/<stage>.jsonl``) have the same fields and can be read
too; there ``roles[<junior>]`` is the junior's last candidate when the reviewers sent the juniors
back for another round.

Counting rules (as in :mod:`evaluation.role_effects`): a junior with no outcome on a question (no
``ex``: it raised, or it is absent from that record) counts as a failure (0) and is counted in
``missing``; a question held by only one of two paired files is left out of the pair and counted
(``Effect.unpaired``, :attr:`ControlComparison.only_records` / ``only_control``). Nothing is
dropped silently.

References:
    Chen, M. et al. (2021). "Evaluating Large Language Models Trained on Code."
    arXiv:2107.03374, section 2.1, eq. 1 (the unbiased pass@k estimator).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.stats import Effect, holm_effects, paired_effect, wilson_ci
from society.candidate import majority_vote
from tools.files import read_jsonl

__all__ = [
    "CandidatesInputError",
    "CandidatesSummary",
    "ControlComparison",
    "Rate",
    "against_before",
    "against_control",
    "agreement",
    "junior_names",
    "junior_outcomes",
    "junior_personas",
    "junior_rates",
    "oracle_outcomes",
    "pass_at_k",
    "persona_pass_at_k",
    "persona_rates",
    "pick_counts",
    "pick_effects",
    "pick_outcomes",
    "pool_records",
    "Pooled",
    "read_control",
    "read_records",
    "read_summary",
    "summarize",
]

Record = Mapping[str, Any]

#: What a records file must be, for the messages.
RECORDS_HINT = ("pass the per-question records of a juniors-only evaluation (a training run's "
                "eval/roles/juniors_<stage>.jsonl, or questions.jsonl of `sqlsociety eval --agent juniors`)")
CONTROL_HINT = ("pass the per-question records of an evaluation of the control agent (e.g. questions.jsonl of "
                "`sqlsociety eval --agent single`), with question_id and match on every line")


class CandidatesInputError(ValueError):
    """A records or control file cannot be used; the message names the file and what to pass."""


# --------------------------------------------------------------------------- the estimator


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` draws of which ``c`` are right. Range [0, 1].

    pass@k is the chance that at least one of ``k`` draws is right. From ``n >= k`` draws with
    ``c`` right, ``1 - C(n - c, k) / C(n, k)`` is its unbiased estimate (Chen et al. 2021, eq. 1:
    the chance that ``k`` of the ``n`` draws, taken without replacement, are not all wrong);
    ``1.0`` when ``n - c < k`` (every ``k``-subset holds a right draw). With ``k = 1`` it is
    ``c / n``; with ``k = n`` it is 1 when any draw is right (the oracle). Computed as
    ``(C(n, k) - C(n - c, k)) / C(n, k)`` with exact integer binomials (:func:`math.comb`) and one
    division.

    >>> pass_at_k(5, 2, 2)  # 1 - C(3, 2) / C(5, 2) = 1 - 3/10
    0.7
    >>> pass_at_k(3, 1, 1), pass_at_k(3, 0, 3), pass_at_k(3, 1, 3)
    (0.3333333333333333, 0.0, 1.0)

    Raises:
        ValueError: not integers, ``n < 1``, ``k`` outside [1, n] or ``c`` outside [0, n].
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} = {v!r}; pass@k needs integer counts")
    if n < 1:
        raise ValueError(f"n = {n}; pass@k needs at least one draw")
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} with n = {n} draws; need 1 <= k <= n")
    if not 0 <= c <= n:
        raise ValueError(f"c = {c} right draws out of n = {n}; need 0 <= c <= n")
    if n - c < k:
        return 1.0
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total


# --------------------------------------------------------------------------- reading


def _question_ids(rows: Sequence[Record], path: Path, hint: str) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(rows, start=1):
        q = r.get("question_id")
        if q is None or q == "":
            raise CandidatesInputError(f"{path}: record {i} has no question_id; {hint}")
        if str(q) in seen:
            raise CandidatesInputError(f"{path}: question {q} appears twice (records {seen[str(q)]} and {i}); "
                                       "keep one record per question (e.g. drop the rows of an earlier, resumed "
                                       "attempt)")
        seen[str(q)] = i


def _read(path: str | Path, hint: str) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        raise CandidatesInputError(f"{p} is a directory; {hint}")
    try:
        rows = read_jsonl(p, error=CandidatesInputError)
    except CandidatesInputError as e:
        raise CandidatesInputError(f"{e}; {hint}") from e
    if not rows:
        raise CandidatesInputError(f"{p} holds no record; {hint}")
    _question_ids(rows, p, hint)
    return rows


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a juniors-only evaluation, checked (see the module docstring for their shape).

    A record with no junior in ``roles`` (a question whose run failed before any junior answered,
    ``status: "failed"``) is kept: every junior counts as a failure there (``missing``), see
    :attr:`CandidatesSummary.without_juniors`. A file in which *no* record has a junior is refused.
    Compact records (``roles`` without ``candidates``, as in the per-question records committed under
    ``bench/results``) are read too: everything but :func:`agreement` is measured from ``roles``.

    Returns:
        One dict per question, in file order (a truncated last line, from a run killed while
        writing, is dropped with a warning by :func:`tools.files.read_jsonl`).

    Raises:
        CandidatesInputError: the file is missing, a directory, not UTF-8 or not JSON lines, holds
            no record, a record has no ``question_id`` or repeats one, a record's ``roles`` is not
            a mapping or its ``candidates`` not a list, or no record has a junior in ``roles`` (e.g.
            the records of the one-shot agent); the message names the file, the record and what to
            pass.
    """
    p = Path(path)
    rows = _read(p, RECORDS_HINT)
    for i, r in enumerate(rows, start=1):
        where = f"{p}: record {i} (question {r.get('question_id')})"
        if r.get("roles") is not None and not isinstance(r["roles"], Mapping):
            raise CandidatesInputError(f"{where}: roles is {type(r['roles']).__name__}, not a mapping of role names; "
                                       f"{RECORDS_HINT}")
        if r.get("candidates") is not None and not isinstance(r["candidates"], list):
            raise CandidatesInputError(f"{where}: candidates is {type(r['candidates']).__name__}, not a list; "
                                       f"{RECORDS_HINT}")
    if not any(any(_is_junior(k) for k in _roles(r)) for r in rows):
        raise CandidatesInputError(f"{p}: none of its {len(rows)} records has a junior in roles (roles junior_*, "
                                   f"each with its ex); {RECORDS_HINT}")
    return rows


def read_control(path: str | Path) -> list[dict[str, Any]]:
    """The records of a control evaluation: each with ``question_id`` and ``match`` (bool, or None
    for a question without an outcome, counted as a failure).

    Raises:
        CandidatesInputError: as :func:`read_records` for the file, or a record without ``match`` or
            whose ``match`` is not a boolean, 0/1 or null.
    """
    p = Path(path)
    rows = _read(p, CONTROL_HINT)
    for i, r in enumerate(rows, start=1):
        where = f"{p}: record {i} (question {r.get('question_id')})"
        if "match" not in r:
            raise CandidatesInputError(f"{where} has no match; {CONTROL_HINT}")
        if r["match"] is not None and r["match"] not in (True, False):  # 0/1 compare equal to False/True
            raise CandidatesInputError(f"{where}: match is {r['match']!r}, not true/false/null; {CONTROL_HINT}")
    return rows


# --------------------------------------------------------------------------- pooling evaluations


@dataclass(frozen=True)
class Pooled:
    """What :func:`pool_records` made of several juniors-only evaluations.

    Attributes:
        records: one record per question held by every evaluation, in the first one's order.
        left_out: questions held by some of the evaluations only (not pooled), per file index.
        renamed: ``(file index, junior, new name)`` for each junior whose name an earlier file used.
    """

    records: list[dict[str, Any]]
    left_out: dict[int, int]
    renamed: list[tuple[int, str, str]]


def pool_records(sets: Sequence[Sequence[Record]]) -> Pooled:
    """The juniors of several juniors-only evaluations of the same questions, as the candidates of
    one society: per question, every evaluation's juniors (``roles``) and candidates side by side,
    and the supervisor's pick recomputed by majority vote on the candidates' execution results
    (:func:`society.candidate.majority_vote`, the default supervisor's rule: the largest group of
    equal results, then a non-empty result, then candidate order, i.e. the earlier file first).

    This is exact for juniors-only evaluations: there each junior answers the question alone (no
    junior sees another's draft), so juniors run apart, with their own seeds, write what they would
    have written together. A junior whose name an earlier file used gets ``_<file number>``
    appended (file numbers from 1; then ``_2``, ``_3``... until no junior holds the name), keeping
    its persona, so two draws of a persona pool into its pass@k.

    Args:
        sets: the records of each evaluation (:func:`read_records`), two or more; each record needs
            its ``candidates`` list (full records).

    Raises:
        ValueError: fewer than two sets, no question common to all, or a record without a
            ``candidates`` list (compact records cannot be voted on again).

    >>> a = [{"question_id": "q1", "roles": {"junior_d": {"ex": False, "persona": "direct"}},
    ...       "candidates": [{"junior": "junior_d", "persona": "direct", "sql": "S1", "ok": True,
    ...                       "result_digest": "x", "row_count": 1}]}]
    >>> b = [{"question_id": "q1", "roles": {"junior_d": {"ex": True, "persona": "direct"}},
    ...       "candidates": [{"junior": "junior_d", "persona": "direct", "sql": "S2", "ok": True,
    ...                       "result_digest": "y", "row_count": 1}]},
    ...      {"question_id": "q2", "roles": {}, "candidates": []}]
    >>> p = pool_records([a, b])
    >>> sorted(p.records[0]["roles"]), p.records[0]["roles"]["supervisor"]["choice"], p.left_out, p.renamed
    (['junior_d', 'junior_d_2', 'supervisor'], 'junior_d', {1: 1}, [(1, 'junior_d', 'junior_d_2')])
    >>> oracle_outcomes(p.records), pick_outcomes(p.records)
    ([1], ([0], 0))

    A new name is never one that another junior holds (``count: n`` juniors are ``<name>_1`` ...):

    >>> c = [{**a[0], "roles": {**a[0]["roles"], "junior_d_2": {"ex": False}}}]
    >>> pool_records([c, b]).renamed
    [(1, 'junior_d', 'junior_d_2_2')]
    """
    if len(sets) < 2:
        raise ValueError(f"pooling needs two or more evaluations, got {len(sets)}")
    ids = [[str(r.get("question_id")) for r in rs] for rs in sets]
    common = set(ids[0]).intersection(*map(set, ids[1:]))
    if not common:
        raise ValueError("the evaluations have no question in common; pool evaluations of the same questions")
    by_id = [{str(r.get("question_id")): r for r in rs} for rs in sets]
    names: dict[tuple[int, str], str] = {}
    taken: set[str] = set()
    renamed: list[tuple[int, str, str]] = []
    for i, rs in enumerate(sets):
        own = {str(k) for r in rs for k in _roles(r) if _is_junior(k)}
        own |= {str(c.get("junior")) for r in rs for c in r.get("candidates") or [] if isinstance(c, Mapping)}
        for j in sorted(own):
            new, n = j, 1
            while new in taken or (new != j and new in own):  # never a name an earlier file or this one uses
                new = f"{j}_{i + 1}" + (f"_{n}" if n > 1 else "")
                n += 1
            names[(i, j)] = new
            taken.add(new)
            if new != j:
                renamed.append((i, j, new))
    out = []
    for qid in ids[0]:
        if qid not in common:
            continue
        roles: dict[str, Any] = {}
        cands: list[dict[str, Any]] = []
        for i, table in enumerate(by_id):
            r = table[qid]
            if not isinstance(r.get("candidates"), list):
                raise ValueError(f"evaluation {i + 1}, question {qid}: no candidates list (compact records); "
                                 "pool the evaluations' full per-question records")
            roles |= {names[(i, k)]: v for k, v in _roles(r).items() if _is_junior(k)}
            cands += [{**c, "junior": names[(i, str(c.get("junior")))]} for c in r["candidates"]
                      if isinstance(c, Mapping)]
        pick, _, _ = majority_vote(cands)
        roles["supervisor"] = {"choice": cands[pick]["junior"] if pick >= 0 else None,
                               "policy": "majority_vote (pooled)"}
        out.append({"question_id": qid, "roles": roles, "candidates": cands})
    left = {i: len(set(x) - common) for i, x in enumerate(ids) if set(x) - common}
    return Pooled(out, left, renamed)


# --------------------------------------------------------------------------- per-question outcomes


def _is_junior(role: str) -> bool:
    return role.startswith("junior")


def _roles(r: Record) -> Mapping[str, Any]:
    roles = r.get("roles")
    return roles if isinstance(roles, Mapping) else {}


def junior_names(records: Sequence[Record]) -> list[str]:
    """Every junior named in the records' ``roles``, sorted.

    >>> junior_names([{"roles": {"junior_b": {}, "supervisor": {}}}, {"roles": {"junior_a": {}}}])
    ['junior_a', 'junior_b']
    """
    return sorted({k for r in records for k in _roles(r) if _is_junior(k)})


def junior_personas(records: Sequence[Record]) -> dict[str, str]:
    """Junior -> its persona: ``roles[<junior>]["persona"]``, else the persona of its candidate, else
    the junior's own name (the first record that names one wins).

    >>> junior_personas([{"roles": {"junior_direct_1": {"persona": "direct"}, "junior_x": {}}, "candidates": []}])
    {'junior_direct_1': 'direct', 'junior_x': 'junior_x'}
    """
    of_role: dict[str, str] = {}
    of_candidate: dict[str, str] = {}
    for r in records:
        for c in r.get("candidates") or []:
            if isinstance(c, Mapping) and c.get("junior") and c.get("persona"):
                of_candidate.setdefault(str(c["junior"]), str(c["persona"]))
        for name, role in _roles(r).items():
            if _is_junior(name) and isinstance(role, Mapping) and role.get("persona"):
                of_role.setdefault(name, str(role["persona"]))
    return {j: of_role.get(j) or of_candidate.get(j) or j for j in junior_names(records)}


def _ex(r: Record, junior: str | None) -> bool | None:
    role = _roles(r).get(junior) if junior else None
    ex = role.get("ex") if isinstance(role, Mapping) else None
    return None if ex is None else bool(ex)


def junior_outcomes(records: Sequence[Record], junior: str) -> tuple[list[int], int]:
    """``(outcomes, missing)``: EX (0/1) of ``junior``'s own candidate per record, and how many
    records had no outcome for it (counted as 0).

    >>> junior_outcomes([{"roles": {"j": {"ex": True}}}, {"roles": {"j": {"ex": None}}}, {"roles": {}}], "j")
    ([1, 0, 0], 2)
    """
    raw = [_ex(r, junior) for r in records]
    return [int(bool(x)) for x in raw], sum(x is None for x in raw)


def pick_outcomes(records: Sequence[Record]) -> tuple[list[int], int]:
    """``(outcomes, missing)``: EX (0/1) of the candidate the supervisor picked
    (``roles[roles["supervisor"]["choice"]]["ex"]``), and how many records had no choice or no
    outcome for the chosen junior (counted as 0). In a juniors-only evaluation this is the
    record's ``match``.

    >>> recs = [{"roles": {"j": {"ex": True}, "k": {"ex": False}, "supervisor": {"choice": "k"}}},
    ...         {"roles": {"j": {"ex": True}, "supervisor": {"choice": None}}}]
    >>> pick_outcomes(recs)
    ([0, 0], 1)
    """
    raw = [_ex(r, (_roles(r).get("supervisor") or {}).get("choice")) for r in records]
    return [int(bool(x)) for x in raw], sum(x is None for x in raw)


def oracle_outcomes(records: Sequence[Record]) -> list[int]:
    """1 where any junior's own candidate is right (``ex`` true), else 0: the EX of a supervisor
    that always picks a right candidate when there is one (an upper bound on any pick).

    >>> oracle_outcomes([{"roles": {"junior_a": {"ex": False}, "junior_b": {"ex": True}}},
    ...                  {"roles": {"junior_a": {"ex": None}}}])
    [1, 0]
    """
    return [int(any(_ex(r, j) for j in _roles(r) if _is_junior(j))) for r in records]


def agreement(records: Sequence[Record]) -> dict[int, int]:
    """Distinct results among a question's executed candidates -> number of questions, ascending.

    A candidate counts when it executed (``ok``); two agree when their ``result_digest`` (a hash
    of the rows returned) is equal. ``0`` means no candidate executed; ``1`` that every executed
    candidate returned the same rows (see :func:`summarize` for "all candidates agree", which
    also needs every candidate to have executed).

    >>> recs = [{"candidates": [{"ok": True, "result_digest": "x"}, {"ok": True, "result_digest": "x"}]},
    ...         {"candidates": [{"ok": True, "result_digest": "x"}, {"ok": False, "result_digest": "y"}]},
    ...         {"candidates": [{"ok": True, "result_digest": "x"}, {"ok": True, "result_digest": "y"}]}]
    >>> agreement(recs)
    {1: 2, 2: 1}
    """
    counts = Counter(len(_ok_digests(r)) for r in records)
    return dict(sorted(counts.items()))


def _ok_digests(r: Record) -> set[str]:
    return {str(c.get("result_digest")) for c in r.get("candidates") or [] if isinstance(c, Mapping) and c.get("ok")}


def _all_agree(r: Record) -> bool:
    cands = [c for c in r.get("candidates") or [] if isinstance(c, Mapping)]
    return bool(cands) and all(c.get("ok") for c in cands) and len(_ok_digests(r)) == 1


def pick_counts(records: Sequence[Record]) -> dict[str, int]:
    """Junior -> how many questions the supervisor picked its candidate, most picked first, then
    ``"(none)"``: records without a choice.

    >>> pick_counts([{"roles": {"supervisor": {"choice": "b"}}}, {"roles": {"supervisor": {"choice": "a"}}},
    ...              {"roles": {"supervisor": {"choice": "b"}}}, {"roles": {}}])
    {'b': 2, 'a': 1, '(none)': 1}
    """
    counts = Counter(str((_roles(r).get("supervisor") or {}).get("choice") or "(none)") for r in records)
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == "(none)", -kv[1], kv[0])))


def _persona_draws(records: Sequence[Record]) -> dict[str, list[str]]:
    """Persona -> its juniors (its draws per question), personas in first-seen order of the sorted juniors."""
    out: dict[str, list[str]] = {}
    for j, p in junior_personas(records).items():
        out.setdefault(p, []).append(j)
    return out


def persona_pass_at_k(records: Sequence[Record], persona: str) -> list[float]:
    """pass@k of ``persona`` for k = 1 .. its draws (the juniors of that persona), each the mean over
    the records of :func:`pass_at_k` ``(n = draws, c = its juniors right on that question, k)``
    (Chen et al. 2021, eq. 1, averaged over problems). A junior without an outcome on a question
    is a wrong draw there. With one draw pass@1 is the persona's EX. Each value in [0, 1],
    non-decreasing in k.

    >>> recs = [{"roles": {"junior_d_1": {"persona": "d", "ex": True}, "junior_d_2": {"persona": "d", "ex": False}}},
    ...         {"roles": {"junior_d_1": {"persona": "d", "ex": False}, "junior_d_2": {"persona": "d", "ex": False}}}]
    >>> persona_pass_at_k(recs, "d")
    [0.25, 0.5]

    Raises:
        ValueError: no record, or no junior of that persona.
    """
    juniors = _persona_draws(records).get(persona)
    if not records or not juniors:
        raise ValueError(f"no junior with persona {persona!r} in the records")
    n = len(juniors)
    cs = [sum(bool(_ex(r, j)) for j in juniors) for r in records]
    return [sum(pass_at_k(n, c, k) for c in cs) / len(cs) for k in range(1, n + 1)]


# --------------------------------------------------------------------------- rates and the summary


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with its Wilson interval (:func:`evaluation.stats.wilson_ci`).

    Attributes:
        label: what is counted (a junior, a persona, ``oracle``, ``pick``).
        k / n: right outcomes and outcomes (questions, or draws for a persona of several juniors).
        ci_low / ci_high: the Wilson interval of ``k / n`` at 95 %, within [0, 1].
        missing: outcomes counted as failures because the record held none.
        persona: the persona of a junior row ("" for the other rows).
        draws: juniors behind the row per question (1 for a junior, the oracle and the pick).
    """

    label: str
    k: int
    n: int
    ci_low: float
    ci_high: float
    missing: int = 0
    persona: str = ""
    draws: int = 1

    @property
    def rate(self) -> float:
        """``k / n``, in [0, 1]."""
        return self.k / self.n


def _rate(label: str, outcomes: Sequence[int], missing: int = 0, **kw: Any) -> Rate:
    k, n = sum(outcomes), len(outcomes)
    lo, hi = wilson_ci(k, n)
    return Rate(label, k, n, lo, hi, missing, **kw)


def junior_rates(records: Sequence[Record]) -> list[Rate]:
    """EX of each junior's own candidate over the records (``n`` = questions), sorted by junior.

    Raises:
        ValueError: no record (:func:`evaluation.stats.wilson_ci` needs n >= 1).
    """
    personas = junior_personas(records)
    return [_rate(j, *junior_outcomes(records, j), persona=personas[j]) for j in junior_names(records)]


def persona_rates(records: Sequence[Record]) -> list[Rate]:
    """EX of each persona's draws: ``k`` right draws of ``n = draws x questions``, with the Wilson
    interval of ``k / n``. With one draw per persona (``count: 1``) the row is its junior's; with
    several, ``k / n`` is pass@1 (:func:`persona_pass_at_k`) and the draws of one question are not
    independent, so the Wilson interval, which assumes they are, is too narrow: read the junior
    rows' intervals instead.

    Raises:
        ValueError: no record.
    """
    out = []
    for persona, juniors in _persona_draws(records).items():
        pooled: list[int] = []
        missing = 0
        for j in juniors:
            o, m = junior_outcomes(records, j)
            pooled += o
            missing += m
        out.append(_rate(persona, pooled, missing, persona=persona, draws=len(juniors)))
    return out


@dataclass(frozen=True)
class CandidatesSummary:
    """What :func:`summarize` measures on one records file (``n`` questions).

    Attributes:
        n: questions (records).
        juniors / personas: :func:`junior_rates` / :func:`persona_rates`.
        oracle / pick: :class:`Rate` of :func:`oracle_outcomes` / :func:`pick_outcomes`.
        pass_at_k: persona -> ``[pass@1, ..., pass@draws]`` (:func:`persona_pass_at_k`).
        agreement: :func:`agreement` (distinct executed results -> questions); None when no record
            holds a ``candidates`` list (compact records).
        all_agree: questions where every candidate executed and all returned the same rows; None
            as ``agreement``.
        picks: :func:`pick_counts`.
        within: :func:`pick_effects` (the pick vs each junior, Holm over those rows).
        without_juniors: records with no junior in ``roles`` (a failed run): every junior, the
            oracle and the pick count as failures there.
        pooled: for records pooled from several files (:func:`read_summary`), what was pooled and
            left out, else ''.
    """

    n: int
    juniors: list[Rate]
    personas: list[Rate]
    oracle: Rate
    pick: Rate
    pass_at_k: dict[str, list[float]]
    agreement: dict[int, int] | None
    all_agree: int | None
    picks: dict[str, int]
    within: list[Effect]
    without_juniors: int = 0
    pooled: str = ""


def pick_effects(records: Sequence[Record], *, seed: int = 0) -> list[Effect]:
    """The supervisor's pick against each junior's own candidate, on the same questions: one
    :class:`evaluation.stats.Effect` per junior (``before`` = the junior, ``after`` = the pick;
    ``fixed`` = questions the pick gets right and the junior not), Holm-adjusted over these rows
    (:func:`evaluation.stats.holm_effects`). ``missing_before``/``missing_after``: questions with
    no outcome for the junior / the pick, counted as failures.

    Raises:
        ValueError: no record.
    """
    pick, pick_missing = pick_outcomes(records)
    rows = []
    for j in junior_names(records):
        own, missing = junior_outcomes(records, j)
        e = paired_effect(own, pick, phase="juniors", role=f"pick vs {j}", metric="EX", seed=seed)
        rows.append(dataclasses.replace(e, missing_before=missing, missing_after=pick_missing))
    return holm_effects(rows)


def summarize(records: Sequence[Record], *, seed: int = 0) -> CandidatesSummary:
    """Every measure of the module docstring on ``records`` (checked by :func:`read_records`).

    Raises:
        ValueError: no record.
    """
    if not records:
        raise ValueError("no record to summarize")
    pick, pick_missing = pick_outcomes(records)
    has_candidates = any(isinstance(r.get("candidates"), list) for r in records)
    return CandidatesSummary(
        n=len(records),
        juniors=junior_rates(records),
        personas=persona_rates(records),
        oracle=_rate("oracle", oracle_outcomes(records),
                     sum(all(_ex(r, j) is None for j in _roles(r) if _is_junior(j)) for r in records),
                     draws=len(junior_names(records))),
        pick=_rate("pick", pick, pick_missing),
        pass_at_k={p: persona_pass_at_k(records, p) for p in _persona_draws(records)},
        agreement=agreement(records) if has_candidates else None,
        all_agree=sum(_all_agree(r) for r in records) if has_candidates else None,
        picks=pick_counts(records),
        within=pick_effects(records, seed=seed),
        without_juniors=sum(not any(_is_junior(k) for k in _roles(r)) for r in records),
    )


# --------------------------------------------------------------------------- against a control


@dataclass(frozen=True)
class ControlComparison:
    """The records against a control evaluation, paired by ``question_id``.

    Attributes:
        effects: pick, oracle, then each junior vs the control (``before`` = control, ``after`` =
            the row), Holm-adjusted over these rows; ``unpaired`` on each = ``only_records +
            only_control``.
        paired: questions both files hold (each row's ``n``).
        only_records / only_control: questions held by one file only, left out of every row.
        control_missing: paired questions whose control ``match`` is None, counted as failures.
    """

    effects: list[Effect]
    paired: int
    only_records: int
    only_control: int
    control_missing: int


def _by_question(records: Sequence[Record], other: Sequence[Record], records_name: str, other_name: str,
                 what_to_pass: str) -> tuple[dict[str, Record], dict[str, Record], list[str], int, int]:
    """Both files keyed by ``question_id``, the ids both hold (sorted), and how many only one holds;
    :class:`CandidatesInputError` naming both files when none is shared."""
    by_q = {str(r.get("question_id")): r for r in records}
    oth = {str(r.get("question_id")): r for r in other}
    shared = sorted(set(by_q) & set(oth))
    if not shared:
        raise CandidatesInputError(
            f"{other_name} and {records_name} have no question in common ({len(oth)} and {len(by_q)} questions, "
            "e.g. " + ", ".join(sorted(oth)[:3]) + " vs " + ", ".join(sorted(by_q)[:3]) + "); " + what_to_pass)
    return by_q, oth, shared, len(set(by_q) - set(oth)), len(set(oth) - set(by_q))


def against_control(records: Sequence[Record], control: Sequence[Record], *, seed: int = 0,
                    records_name: str = "records", control_name: str = "control") -> ControlComparison:
    """The pick, the oracle and each junior against ``control`` on the questions both hold
    (:func:`evaluation.stats.paired_effect`: difference, paired bootstrap CI, exact McNemar p;
    Holm over the rows, :func:`evaluation.stats.holm_effects`). The oracle row is an upper bound
    chosen with the gold answer, not a system: it says how much a perfect supervisor could gain.

    >>> recs = [{"question_id": q, "roles": {"junior_a": {"ex": q < 3}, "supervisor": {"choice": "junior_a"}}}
    ...         for q in range(5)]
    >>> ctl = [{"question_id": q, "match": q < 1} for q in range(1, 7)]
    >>> cmp = against_control(recs, ctl)
    >>> (cmp.paired, cmp.only_records, cmp.only_control)
    (4, 1, 2)
    >>> [(e.role, e.before, e.after, e.fixed, e.broken) for e in cmp.effects][:2]
    [('pick', 0.0, 0.5, 2, 0), ('oracle', 0.0, 0.5, 2, 0)]

    Raises:
        CandidatesInputError: no question in common (the message names both files by
            ``records_name``/``control_name``).
    """
    by_q, ctl, shared, only_r, only_c = _by_question(
        records, control, records_name, control_name,
        "pass a control evaluated on the same questions (same split, sample size and sampling seed)")
    recs = [by_q[q] for q in shared]
    raw_ctl = [ctl[q].get("match") for q in shared]
    base = [int(bool(x)) for x in raw_ctl]
    base_missing = sum(x is None for x in raw_ctl)
    pick, pick_missing = pick_outcomes(recs)
    rows: list[tuple[str, list[int], int]] = [("pick", pick, pick_missing), ("oracle", oracle_outcomes(recs), 0)]
    personas = junior_personas(recs)
    for j in junior_names(recs):
        own, missing = junior_outcomes(recs, j)
        rows.append((j if personas[j] in j else f"{j} ({personas[j]})", own, missing))
    effects = []
    for role, after, missing in rows:
        e = paired_effect(base, after, phase="vs control", role=role, metric="EX", seed=seed)
        effects.append(dataclasses.replace(e, missing_before=base_missing, missing_after=missing,
                                           unpaired=only_r + only_c))
    return ControlComparison(holm_effects(effects), len(shared), only_r, only_c, base_missing)


def against_before(records: Sequence[Record], before: Sequence[Record], *, seed: int = 0,
                   records_name: str = "records", before_name: str = "before") -> ControlComparison:
    """The pick, the oracle and each junior against *the same row* of another juniors-only
    evaluation of the same questions (``before``, e.g. the untrained juniors; ``records`` = after,
    e.g. the juniors on a trained adapter), paired by ``question_id``: the effect of whatever
    changed between the two evaluations on each junior's own candidate and on the pick.
    Difference, paired bootstrap CI and exact McNemar p per row
    (:func:`evaluation.stats.paired_effect`), Holm over the rows (:func:`evaluation.stats.holm_effects`).

    The result is a :class:`ControlComparison` whose "control" is ``before``: ``only_control`` counts
    the questions only ``before`` holds, ``control_missing`` the paired questions where ``before``'s
    pick had no outcome. A junior that only one side has gets no row.

    >>> def rec(q, a, b):
    ...     return {"question_id": q, "roles": {"junior_a": {"ex": a}, "junior_b": {"ex": b},
    ...                                         "supervisor": {"choice": "junior_a"}}}
    >>> old = [rec(q, False, q < 2) for q in range(4)]
    >>> new = [rec(q, q < 3, q < 2) for q in range(4)]
    >>> cmp = against_before(new, old)
    >>> for e in cmp.effects:
    ...     print(e.role, e.before, e.after, e.fixed, e.broken)
    pick 0.0 0.75 3 0
    oracle 0.5 0.75 1 0
    junior_a 0.0 0.75 3 0
    junior_b 0.5 0.5 0 0

    Raises:
        CandidatesInputError: no question in common, or no junior in common (the message names both
            files by ``records_name``/``before_name``).
    """
    by_q, old, shared, only_r, only_b = _by_question(
        records, before, records_name, before_name,
        "pass two evaluations of the same questions (same split and --ids, or the same --sample and --seed)")
    after_recs, before_recs = [by_q[q] for q in shared], [old[q] for q in shared]
    juniors = [j for j in junior_names(after_recs) if j in set(junior_names(before_recs))]
    if not juniors:
        raise CandidatesInputError(
            f"{before_name} and {records_name} have no junior in common ({', '.join(junior_names(before_recs))} vs "
            f"{', '.join(junior_names(after_recs))}); pass two juniors-only evaluations of the same society config")
    (pick_b, miss_pb), (pick_a, miss_pa) = pick_outcomes(before_recs), pick_outcomes(after_recs)
    rows = [("pick", pick_b, miss_pb, pick_a, miss_pa),
            ("oracle", oracle_outcomes(before_recs), 0, oracle_outcomes(after_recs), 0)]
    personas = junior_personas(after_recs)
    for j in juniors:
        b, mb = junior_outcomes(before_recs, j)
        a, ma = junior_outcomes(after_recs, j)
        rows.append((j if personas[j] in j else f"{j} ({personas[j]})", b, mb, a, ma))
    effects = [dataclasses.replace(paired_effect(b, a, phase="vs before", role=role, metric="EX", seed=seed),
                                   missing_before=mb, missing_after=ma, unpaired=only_r + only_b)
               for role, b, mb, a, ma in rows]
    return ControlComparison(holm_effects(effects), len(shared), only_r, only_b, miss_pb)


def read_summary(path: str | Path | Sequence[str | Path], control: str | Path | None = None, *,
                 before: str | Path | None = None, seed: int = 0,
                 ) -> tuple[CandidatesSummary, ControlComparison | None, ControlComparison | None]:
    """:func:`summarize` the records at ``path``; with ``control``, :func:`against_control` against
    the control file; with ``before``, :func:`against_before` against another juniors-only
    evaluation of the same questions (read-only). Several paths are pooled first
    (:func:`pool_records`): their juniors side by side as one society's candidates, the pick voted again.

    Returns:
        ``(summary, against the control or None, against before or None)``.

    Raises:
        CandidatesInputError: an unusable file (see :func:`read_records`, :func:`read_control`), no
            question (or, with ``before``, no junior) in common, or records that cannot be pooled
            (the message says why).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if len(paths) == 1:
        records = read_records(paths[0])
    else:
        try:
            pooled = pool_records([read_records(p) for p in paths])
        except ValueError as e:
            raise CandidatesInputError(f"cannot pool {', '.join(map(str, paths))}: {e}") from e
        records = pooled.records
        note = f"pooled {len(paths)} evaluations on the {len(records)} questions all hold"
        if pooled.left_out:
            note += "; left out: " + ", ".join(f"{n} only in {paths[i]}" for i, n in pooled.left_out.items())
        if pooled.renamed:
            note += "; renamed: " + ", ".join(f"{j} of {paths[i]} → {new}" for i, j, new in pooled.renamed)
    name = " + ".join(map(str, paths))
    cmp = None
    if control is not None:
        ctl = read_control(control)
        cmp = against_control(records, ctl, seed=seed, records_name=name, control_name=str(control))
    vs_before = None
    if before is not None:
        vs_before = against_before(records, read_records(before), seed=seed, records_name=name,
                                   before_name=str(before))
    summary = summarize(records, seed=seed)
    if len(paths) > 1:
        summary = dataclasses.replace(summary, pooled=note)
    return summary, cmp, vs_before
