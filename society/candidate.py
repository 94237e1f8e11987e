"""The candidate: one junior's SQL draft plus what executing it showed.

CONTRACT shared by the graph (society/), the supervisor policies and the bandit
(society/bandit.py, trained by training/bandit.py). Keep field names stable; add fields only with
defaults.

Also the one definition of what the policies and the bandit read off a list of candidates:
:func:`candidate_context` (per-candidate execution features), :func:`usable` and
:func:`majority_vote`, and :func:`epsilon_greedy` exploration.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field


class Candidate(BaseModel):
    """One candidate SQL query drafted by a junior.

    Attributes:
        junior: the junior role instance that drafted it, e.g. ``"junior_direct"``.
        persona: the persona/strategy name, e.g. ``"direct"``, ``"step_by_step"``, ``"decompose"``.
        sql: the extracted SQL statement, or None when the model output held no usable SQL.
        raw: the raw model output (for SFT and inspection).
        ok: True when ``sql`` executed without error.
        error_category: executor error category (see ``tools.sql_results.ErrorCategory``) or None.
        error: the executor's error message, or None.
        row_count: rows returned (capped by the executor's row cap); 0 on error.
        columns: result column names.
        result_digest: order-insensitive hash of the result rows ("" on error); equal digests
            mean equal result multisets, used for agreement/majority vote.
        fixed: True when the junior rewrote its draft once after an execution error.
        llm_calls: model calls this junior made for this candidate.
    """

    junior: str
    persona: str
    sql: str | None = None
    raw: str = ""
    ok: bool = False
    error_category: str | None = None
    error: str | None = None
    row_count: int = 0
    columns: list[str] = Field(default_factory=list)
    result_digest: str = ""
    fixed: bool = False
    llm_calls: int = 0


def _get(c: Any, key: str, default: Any = None) -> Any:
    if isinstance(c, Mapping):
        return c.get(key, default)
    return getattr(c, key, default)


def candidate_context(candidates: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-candidate context dicts, from ``Candidate`` objects/dicts or from feature dicts.

    Feature dicts (``training.adapter.candidate_features`` output, recognised by an
    ``executes`` key) are returned as they are; ``Candidate``-shaped items (``ok``, ``row_count``,
    ``result_digest`` ...) are converted with the same definitions: ``executes`` = ran without
    error and has SQL, ``empty`` = ran with 0 rows, ``agreement`` = share of the *other* executed
    candidates with an equal result digest (0 when it did not run or it is the only one).

    Raises:
        ValueError: an item that is neither a mapping nor has Candidate attributes.
    """
    items = list(candidates)
    if items and all(isinstance(c, Mapping) and "executes" in c for c in items):
        return [dict(c) for c in items]
    rows = []
    for c in items:
        if not (isinstance(c, Mapping) or hasattr(c, "ok")):
            raise ValueError(
                f"candidate {c!r:.80} is not a Candidate nor a mapping; pass society.candidate.Candidate objects"
            )
        rows.append({
            "junior": str(_get(c, "junior", "") or ""),
            "persona": str(_get(c, "persona", "") or ""),
            "sql": _get(c, "sql") or "",
            "ok": bool(_get(c, "ok", False)) and bool(_get(c, "sql")),
            "row_count": int(_get(c, "row_count", 0) or 0),
            "result_digest": str(_get(c, "result_digest", "") or ""),
            "error_category": str(_get(c, "error_category", "") or ""),
            "fixed": bool(_get(c, "fixed", False)),
        })
    out = []
    for i, c in enumerate(rows):
        others = [d for j, d in enumerate(rows) if j != i and d["ok"]]
        agree = (
            (sum(d["result_digest"] == c["result_digest"] for d in others) / len(others))
            if c["ok"] and others
            else 0.0
        )
        out.append({
            "junior": c["junior"], "persona": c["persona"], "sql": c["sql"],
            "executes": int(c["ok"]), "empty": int(c["ok"] and c["row_count"] == 0),
            "row_count": c["row_count"], "agreement": float(agree),
            "error_category": "" if c["ok"] else c["error_category"], "fixed": int(c["fixed"]),
            "result_digest": c["result_digest"] if c["ok"] else "",
        })
    return out


def usable(candidates: Sequence[Any]) -> list[int]:
    """Indices of the candidates that executed OK (with SQL), else of those with any SQL, else [].

    ``candidates``: ``Candidate`` objects/dicts or :func:`candidate_context` dicts.
    """
    ctx = candidate_context(candidates)
    ok = [i for i, c in enumerate(ctx) if c.get("executes") and c.get("sql")]
    return ok or [i for i, c in enumerate(ctx) if c.get("sql")]


def majority_vote(candidates: Sequence[Any]) -> tuple[int, Counter[str], list[int]]:
    """Self-consistency over execution results: ``(index, votes, executed)``.

    ``votes`` counts the result digests of the ``executed`` candidates (ran OK, with SQL); the pick
    is the largest group, then a non-empty result, then junior order. With no executed candidate:
    the first :func:`usable` one (-1 when none has SQL), empty ``votes`` and ``executed``.
    """
    ctx = candidate_context(candidates)
    ok = [i for i, c in enumerate(ctx) if c.get("executes") and c.get("sql")]
    if not ok:
        u = usable(ctx)
        return (u[0] if u else -1), Counter(), []
    votes = Counter(str(ctx[i].get("result_digest")) for i in ok)
    pick = min(ok, key=lambda i: (-votes[str(ctx[i].get("result_digest"))], int(ctx[i].get("row_count", 0)) == 0, i))
    return pick, votes, ok


def epsilon_greedy(rng: random.Random, allowed: Sequence[int], greedy: int, epsilon: float) -> tuple[int, float, bool]:
    """Epsilon-greedy exploration among ``allowed`` indices: ``(pick, propensity, drew)``.

    With probability ``epsilon`` (``drew``) a uniform pick among ``allowed``, else ``greedy``;
    ``propensity`` is the exact probability of ``pick`` under this rule,
    ``(1 - epsilon)·[pick == greedy] + epsilon / |allowed|`` (what inverse propensity scoring needs).
    Used by the ``epsilon_greedy`` supervisor policy and the bandit's own exploration.
    """
    drew = rng.random() < epsilon
    pick = allowed[rng.randrange(len(allowed))] if drew else greedy
    return pick, epsilon / len(allowed) + ((1.0 - epsilon) if pick == greedy else 0.0), drew
