"""Phase 4: fit the supervisor's contextual bandit (``society.bandit``) on logged decisions.

:func:`samples_from_records` turns evaluation records into samples, :func:`split_samples` splits
them by task, :func:`hold_out_contested` holds out whole train questions until their decisions hold
enough contested ones (:func:`is_contested`), :func:`compare_policies` replays logged decisions
offline against random, majority vote, the logging policies and the oracle, :func:`format_table`
prints that comparison. The model itself (features, :class:`~society.bandit.SupervisorBandit`,
:func:`~society.bandit.load_policy`) lives in ``society.bandit``, beside the other supervisor
policies; its names are re-exported here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from evaluation.metrics.ex import execution_match
from society.bandit import BanditConfig, SupervisorBandit, as_sample, featurize, load_policy
from society.candidate import candidate_context, majority_vote, usable
from tools.spider import recorded_database
from training.gather_config import JUNIORS_SUFFIX, question_of

__all__ = [
    "BanditConfig",
    "SupervisorBandit",
    "load_policy",
    "candidate_context",
    "featurize",
    "as_sample",
    "samples_from_records",
    "compare_policies",
    "format_table",
    "hold_out_contested",
    "is_contested",
    "split_samples",
]

# ============================================================================ samples


def samples_from_records(records: Sequence[Mapping[str, Any]], *, round: int = -1) -> list[dict[str, Any]]:
    """Bandit samples from society run records (``society.evaluate.evaluate``'s ``questions.jsonl`` /
    the pipeline's ``eval/<stage>.jsonl``), scored for real.

    Each record needs ``question``, ``gold_sql``, ``db_path`` (or a ``db_id`` of the data directory
    when that path does not exist here) and ``choices`` (the supervisor's
    decisions: ``candidates``, ``index``, ``policy``, ``info``); ``round`` picks the decision (-1:
    the last). Every candidate's reward is its execution match with gold
    (``evaluation.metrics.ex.execution_match``, 1.0 / 0.0) on the record's database, so any policy's
    choice can be replayed; the logged ``policy`` is the configured supervisor policy
    (``info["configured_policy"]`` when a fallback was used, e.g. ``llm``), with ``propensity``
    from ``info`` (1.0 when the logging policy did not explore). Records without a usable
    decision (no candidate with SQL) are skipped.

    Raises:
        ValueError: a record lacking ``gold_sql`` or ``db_path``.
    """
    out: list[dict[str, Any]] = []
    for k, r in enumerate(records):
        choices = r.get("choices") or []
        if not choices:
            continue
        ch = choices[round]
        cands = ch.get("candidates") or []
        action = int(ch.get("index", -1))
        if not cands or not 0 <= action < len(cands):
            continue
        gold, db = r.get("gold_sql"), recorded_database(r.get("db_path"), r.get("db_id"))
        if not gold or not db:
            raise ValueError(
                f"record {r.get('question_id', k)} lacks gold_sql/db_path; use "
                "society.evaluate.evaluate records"
            )
        rewards = [1.0 if c.get("sql") and execution_match(db, c["sql"], gold).match else 0.0 for c in cands]
        info = ch.get("info") or {}
        out.append({
            "task_id": str(r.get("question_id") or r.get("task_id") or k),
            "question": str(r.get("question", "")),
            "candidates": candidate_context(cands),
            "action": action,
            "reward": rewards[action],
            "candidate_rewards": rewards,
            "propensity": float(info.get("propensity", 1.0) or 1.0),
            "policy": str(info.get("configured_policy") or ch.get("policy") or ""),
        })
    return out


def split_samples(samples: Sequence[Any], holdout: float = 0.3, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split by task (never the same question on both sides), deterministic in ``seed``.

    Returns ``(train, held_out)``; with fewer than two tasks both are the full list.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    norm = [as_sample(s) for s in samples]
    keys = sorted({s["task_id"] or s["question"] for s in norm})
    if len(keys) < 2:
        return norm, norm
    rng = random.Random(seed)
    rng.shuffle(keys)
    n_held = max(1, int(round(len(keys) * holdout)))
    held_keys = set(keys[:n_held])
    train = [s for s in norm if (s["task_id"] or s["question"]) not in held_keys]
    held = [s for s in norm if (s["task_id"] or s["question"]) in held_keys]
    return train, held


def is_contested(sample: Any) -> bool:
    """A decision where the choice matters: the usable candidates' rewards differ (a candidate that
    did not run is never picked while another one ran, :func:`society.candidate.usable`); elsewhere
    every sensible policy scores the same.

    Raises:
        ValueError: the sample has no ``candidate_rewards`` (see :func:`as_sample`).

    >>> ok = {"sql": "SELECT 1", "executes": 1}
    >>> is_contested({"candidates": [ok, ok], "action": 0, "candidate_rewards": [1.0, 0.0]})
    True
    >>> is_contested({"candidates": [ok, {"sql": "SELEC", "executes": 0}], "action": 0, "candidate_rewards": [1, 0]})
    False
    """
    s = as_sample(sample)
    if s["candidate_rewards"] is None:
        raise ValueError(f"sample {s['task_id']} has no candidate_rewards; contested needs every candidate's reward")
    return len({s["candidate_rewards"][i] for i in usable(s["candidates"])}) > 1


def hold_out_contested(samples: Sequence[Any], need: int, *, seed: int = 0, first_draw: str = JUNIORS_SUFFIX,
                       max_share: float = 0.5) -> tuple[list[dict], list[dict]]:
    """Hold out whole train questions for judging the bandit, until their decisions include ``need``
    contested ones (:func:`is_contested`).

    The questions that have a first-draw juniors-only decision (task id ending in ``first_draw``:
    all three juniors drafted, nothing resampled or hinted) are taken in a random order
    (``random.Random(seed)``, over their sorted ids) one by one; each taken question's first-draw
    decisions are held out, and **every** decision on it (society rollout, resample draws) leaves
    the training side, so no held-out question is ever trained on. Deterministic in ``seed``.

    Args:
        samples: the train decisions (``BanditSample`` or dicts, :func:`as_sample`), each with
            ``candidate_rewards``.
        need: contested held-out decisions wanted (0: hold nothing out).
        max_share: at most this share of those questions is held out (rounded down), so the fit
            keeps the rest, in (0, 1].

    Returns:
        ``(train, held)`` as :func:`as_sample` dicts; ``held`` falls short of ``need`` contested only
        when ``max_share`` of the questions is reached.

    Raises:
        ValueError: ``need`` < 0, ``max_share`` outside (0, 1], or a sample without ``candidate_rewards``.

    >>> ok = {"sql": "SELECT 1", "executes": 1}
    >>> def d(t, r): return {"task_id": t, "candidates": [ok, ok], "action": 0, "candidate_rewards": r}
    >>> xs = [d(f"train-{i}/juniors", [1, i % 2]) for i in range(8)] + [d("train-1/juniors#1", [0, 1])]
    >>> train, held = hold_out_contested(xs, 2, seed=3)
    >>> held_q = {question_of(h["task_id"]) for h in held}
    >>> sum(is_contested(h) for h in held), held_q & {question_of(t["task_id"]) for t in train}
    (2, set())
    >>> hold_out_contested(xs, 2, seed=3) == (train, held), len(hold_out_contested(xs, 0)[1])
    (True, 0)
    >>> len({question_of(h["task_id"]) for h in hold_out_contested(xs, 99)[1]})  # half of the 8 questions
    4
    """
    if need < 0:
        raise ValueError(f"hold_out_contested needs need >= 0, got {need}")
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"hold_out_contested needs max_share in (0, 1], got {max_share}")
    norm = [as_sample(s) for s in samples]
    if need == 0:
        return norm, []
    first = {}
    for s in norm:
        if s["task_id"].endswith(first_draw):
            first.setdefault(question_of(s["task_id"]), []).append(s)
    order = sorted(first)
    random.Random(seed).shuffle(order)
    held_q: set[str] = set()
    held: list[dict] = []
    found = 0
    for q in order[:int(len(order) * max_share)]:
        if found >= need:
            break
        held_q.add(q)
        held.extend(first[q])
        found += sum(is_contested(s) for s in first[q])
    return [s for s in norm if question_of(s["task_id"]) not in held_q], held


# ============================================================================ offline replay


def compare_policies(
    samples: Sequence[Any],
    policy: SupervisorBandit | None = None,
    *,
    holdout: float = 0.3,
    seed: int = 0,
    success: float = 1.0,
) -> list[dict[str, Any]]:
    """Offline replay of logged supervisor decisions: how each policy would have scored.

    Every sample must carry ``candidate_rewards`` (each candidate's own reward/EX), so any
    policy's choice can be scored exactly -- no importance weighting is needed.

    Args:
        samples: held-out logged decisions (see :func:`as_sample`).
        policy: a trained bandit; None -> one is trained with default settings on a task-disjoint
            split (``holdout`` of the tasks are held out and scored).
        success: a chosen reward >= this counts as EX success (1.0 for 0/1 EX rewards).

    Returns:
        Rows ``{"policy", "n", "mean_reward", "ex", "n_contested", "ex_contested", "note"}``
        (``*_contested``: only the decisions where the choice matters, i.e. the usable
        candidates' rewards differ; elsewhere every sensible policy scores the same), in this order:
        ``bandit`` (greedy),
        ``random`` (exact expectation of a uniform pick among usable candidates),
        ``majority_vote``, one ``logged:<name>`` per logging policy present (the action actually
        taken, exploration included; ``llm`` is the LLM supervisor), and ``oracle`` (best
        candidate: the ceiling any selector can reach with these candidates).

    Raises:
        ValueError: no samples, or a sample without ``candidate_rewards``.
    """
    norm = [as_sample(s) for s in samples]
    if not norm:
        raise ValueError("compare_policies needs at least one sample")
    note = ""
    if policy is None:
        train, held = split_samples(norm, holdout=holdout, seed=seed)
        policy = SupervisorBandit(BanditConfig(seed=seed)).fit(train)
        note = f"trained on {len(train)} samples, scored on {len(held)} held-out"
        norm = held
    for s in norm:
        if s["candidate_rewards"] is None:
            raise ValueError(
                f"sample {s['task_id']} has no candidate_rewards; offline replay needs every candidate's reward"
            )

    # decisions where the choice matters: the usable candidates' rewards differ (a candidate that
    # did not run is never picked while another one ran)
    contested = [is_contested(s) for s in norm]

    def row(name: str, picks: list[float], ex_picks: list[float], mask: list[bool] | None = None,
            note: str = "") -> dict[str, Any]:
        mask = contested if mask is None else mask
        c = [e for e, m in zip(ex_picks, mask) if m]
        return {"policy": name, "n": len(picks), "mean_reward": sum(picks) / len(picks),
                "ex": sum(ex_picks) / len(ex_picks), "n_contested": len(c),
                "ex_contested": (sum(c) / len(c)) if c else None, "note": note}

    def value(s: dict[str, Any], idx: int) -> float:
        return s["candidate_rewards"][idx] if idx >= 0 else 0.0

    def picks(choose: Any) -> tuple[list[float], list[float]]:
        vals = [value(s, choose(s)) for s in norm]
        return vals, [float(v >= success) for v in vals]

    rows: list[dict[str, Any]] = []
    rows.append(row("bandit", *picks(lambda s: policy.choose(s["question"], s["candidates"])[0]), note=note))
    rnd_r, rnd_ex = [], []
    for s in norm:
        u = usable(s["candidates"])
        rnd_r.append(sum(value(s, i) for i in u) / len(u) if u else 0.0)
        rnd_ex.append(sum(value(s, i) >= success for i in u) / len(u) if u else 0.0)
    rows.append(row("random", rnd_r, rnd_ex, note="expectation over usable candidates"))
    rows.append(row("majority_vote", *picks(lambda s: majority_vote(s["candidates"])[0])))
    by_policy: dict[str, list[int]] = {}
    for k, s in enumerate(norm):
        if s["policy"]:
            by_policy.setdefault(s["policy"], []).append(k)
    for name, ks in sorted(by_policy.items()):
        vals = [value(norm[k], norm[k]["action"]) for k in ks]
        rows.append(row(f"logged:{name}", vals, [float(v >= success) for v in vals], mask=[contested[k] for k in ks],
                        note="the logged action (exploration included)"))
    best = [max(s["candidate_rewards"]) for s in norm]
    rows.append(row("oracle", best, [float(v >= success) for v in best], note="best candidate (ceiling)"))
    return rows


def replay_outcomes(samples: Sequence[Any], policy: SupervisorBandit, *, success: float = 1.0) -> list[dict[str, Any]]:
    """Per-decision outcomes of the offline replay, for paired tests of the bandit against majority vote.

    Args:
        samples: held-out logged decisions with ``candidate_rewards`` (see :func:`compare_policies`).
        policy: the trained bandit.
        success: a chosen reward >= this counts as EX success.

    Returns:
        One row per decision: ``{"task_id", "contested", "majority_vote", "bandit", "oracle"}`` with
        0/1 EX of each policy's pick (``contested``: the usable candidates' rewards differ).

    Raises:
        ValueError: a sample without ``candidate_rewards``.
    """
    out = []
    for s in (as_sample(x) for x in samples):
        rewards = s["candidate_rewards"]
        if rewards is None:
            raise ValueError(f"sample {s['task_id']} has no candidate_rewards; offline replay needs them")

        def ex(idx: int, _r: list[float] = rewards) -> int:
            return int(idx >= 0 and _r[idx] >= success)

        out.append({
            "task_id": s["task_id"],
            "contested": len({rewards[i] for i in usable(s["candidates"])}) > 1,
            "majority_vote": ex(majority_vote(s["candidates"])[0]),
            "bandit": ex(policy.choose(s["question"], s["candidates"])[0]),
            "oracle": int(max(rewards) >= success),
        })
    return out


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`compare_policies` as a Markdown table (EX in %)."""
    lines = ["| policy | n | EX (%) | mean reward | EX where the choice matters (%) | note |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ec = r.get("ex_contested")
        contested = "-" if ec is None else f"{100 * ec:.1f} (n={r.get('n_contested', 0)})"
        lines.append(
            f"| {r['policy']} | {r['n']} | {100 * r['ex']:.1f} | {r['mean_reward']:.3f} | {contested} | "
            f"{r.get('note', '')} |"
        )
    return "\n".join(lines)
