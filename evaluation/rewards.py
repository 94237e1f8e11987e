"""Rewards for text-to-SQL policies: the SQL-R1 composite, partial credit, and one weighted total.

Every component is a pure function of already-computed facts (the raw text, the extracted SQL,
executor outcomes, the EX verdict) with a documented range; :func:`compute_reward` is the one place
that executes queries (prediction once, gold once and cached) and combines the components with a
:class:`RewardConfig`.

Components and ranges (``COMPONENT_RANGES``):

=================  ==============  ===========================================================
name               range           meaning
=================  ==============  ===========================================================
``format``         {-1, +1}        SQL-R1 format reward: ``<reasoning>…</reasoning><sql>…</sql>``
``execution``      {-2, 0, +2}     SQL-R1 execution reward (0 when the format failed or the gold
                                   query failed)
``result``         {-3, 0, +3}     SQL-R1 result reward (0 when not executable / format failed)
``length``         [0, 1.5]        SQL-R1 length reward, only when the result matches
``ex``             {0, 1}          execution match with gold (Spider test-suite rule)
``statement_type`` {0, 1}          prediction is the same kind of statement as gold (sqlglot)
``executes``       {0, 1}          prediction ran without error
``result_jaccard`` [0, 1]          Jaccard similarity of the result-row multisets
``error_credit``   [0, 1]          1 when it ran, else graded by error category
=================  ==============  ===========================================================

SQL-R1 source: Ma et al., "SQL-R1: Training Natural Language to SQL Reasoning Model By
Reinforcement Learning", arXiv:2504.08600, §3 (reward design): format +1/-1, execution +2/-2,
result +3/-3, length reward only for correct results; the length formula and the gating (later
components only count when the format is right; the result only when the query executes) follow
the authors' released reward (``verl/utils/reward_score/synsql.py`` in IDEA-FinAI/SQL-R1):
``0.5 * min(1, (len(think) + len(answer)) / 2048) + len(sql) / len(answer)`` in characters. Our
tags are ``<reasoning>`` and ``<sql>`` instead of the paper's ``<think>`` and ``<answer>`` (both
configurable). Total SQL-R1 score range: [-1, 7.5].

Partial credit and the error-category grades are this project's design (the grade *order*,
ambiguous column > no such column > syntax, is the specification; the numbers are in
``ERROR_CREDIT``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from evaluation.ex import DEFAULT_MAX_ROWS, ExMatch, compare_results, order_matters, run_query
from evaluation.sql_text import extract_sql, statement_keyword
from tools.executor import ExecutionError, ExecutionResult

__all__ = [
    "extract_sql",
    "COMPONENT_RANGES",
    "ERROR_CREDIT",
    "format_ok",
    "format_reward",
    "execution_reward",
    "result_reward",
    "length_reward",
    "statement_type",
    "statement_type_match",
    "execution_success",
    "error_credit",
    "result_jaccard",
    "RewardConfig",
    "RewardBreakdown",
    "compute_reward",
]

#: Nominal [low, high] of every component (see the module docstring).
COMPONENT_RANGES: dict[str, tuple[float, float]] = {
    "format": (-1.0, 1.0),
    "execution": (-2.0, 2.0),
    "result": (-3.0, 3.0),
    "length": (0.0, 1.5),
    "ex": (0.0, 1.0),
    "statement_type": (0.0, 1.0),
    "executes": (0.0, 1.0),
    "result_jaccard": (0.0, 1.0),
    "error_credit": (0.0, 1.0),
}

#: SQL-R1 magnitudes (arXiv:2504.08600 §3).
SQLR1_FORMAT, SQLR1_EXECUTION, SQLR1_RESULT = 1.0, 2.0, 3.0
#: Characters of reasoning+answer that earn the full 0.5 length sub-score (SQL-R1 reference code).
SQLR1_LENGTH_LIMIT = 2048

#: Credit for a prediction by executor outcome: ``"ok"`` for a successful run, else the
#: :class:`tools.executor.ErrorCategory` value; ``"none"`` for no SQL at all. The order
#: ambiguous column > no such column > no such table > other/timeout > syntax > forbidden
#: reflects how close the query is to a runnable one.
ERROR_CREDIT: dict[str, float] = {
    "ok": 1.0,
    "ambiguous_column": 0.6,
    "no_such_column": 0.4,
    "no_such_table": 0.3,
    "timeout": 0.2,
    "other": 0.2,
    "syntax": 0.1,
    "forbidden": 0.0,
    "none": 0.0,
}

Outcome = ExecutionResult | ExecutionError | None


# --------------------------------------------------------------------------------------------
# SQL-R1 components
# --------------------------------------------------------------------------------------------


def _tag_blocks(text: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)


def format_ok(text: str | None, *, reasoning_tag: str = "reasoning", sql_tag: str = "sql") -> bool:
    """Whether ``text`` has the SQL-R1 answer structure: exactly one ``<reasoning>…</reasoning>``
    followed by exactly one ``<sql>…</sql>`` whose content is not empty.

    Mirrors the paper's format check (each tag once, in order, a non-empty SQL answer) with this
    project's tag names; tags are case-sensitive as in the reference code. Whether the SQL is valid
    is left to the execution reward.
    """
    if not text:
        return False
    tags = [f"<{reasoning_tag}>", f"</{reasoning_tag}>", f"<{sql_tag}>", f"</{sql_tag}>"]
    if any(text.count(t) != 1 for t in tags):
        return False
    pos = [text.find(t) for t in tags]
    if pos != sorted(pos):
        return False
    block = _tag_blocks(text, sql_tag)
    return bool(block) and extract_sql(f"<sql>{block[0]}</sql>") is not None


def format_reward(text: str | None, *, reasoning_tag: str = "reasoning", sql_tag: str = "sql") -> float:
    """SQL-R1 format reward: +1 if :func:`format_ok`, else -1. Range {-1, +1}."""
    return SQLR1_FORMAT if format_ok(text, reasoning_tag=reasoning_tag, sql_tag=sql_tag) else -SQLR1_FORMAT


def execution_reward(pred: Outcome, *, format_is_ok: bool = True, gold_ok: bool = True) -> float:
    """SQL-R1 execution reward: +2 when the prediction ran, -2 when it failed or is missing;
    0 when the format failed (SQL-R1 does not execute then) or the gold query failed. Range {-2, 0, 2}."""
    if not format_is_ok or not gold_ok:
        return 0.0
    return SQLR1_EXECUTION if pred is not None and pred.ok else -SQLR1_EXECUTION


def result_reward(match: bool, pred: Outcome, *, format_is_ok: bool = True, gold_ok: bool = True) -> float:
    """SQL-R1 result reward: +3 on execution match, -3 when it ran but differs, 0 when it did not run
    (or format/gold failed). Range {-3, 0, 3}."""
    if not format_is_ok or not gold_ok or pred is None or not pred.ok:
        return 0.0
    return SQLR1_RESULT if match else -SQLR1_RESULT


def length_reward(
    text: str | None,
    sql: str | None,
    match: bool,
    *,
    reasoning_tag: str = "reasoning",
    sql_tag: str = "sql",
    limit_chars: int = SQLR1_LENGTH_LIMIT,
) -> float:
    """SQL-R1 length reward, only for a correctly formatted, matching answer. Range [0, 1.5].

    ``0.5 * min(1, (len(reasoning) + len(answer)) / limit_chars) + len(sql) / len(answer)``, where
    ``answer`` is the ``<sql>`` block's text and ``sql`` the query extracted from it (so the second
    term, in [0, 1], rewards an answer that is all SQL). 0 when ``match`` is False or the format fails.
    """
    if not match or not sql or not format_ok(text, reasoning_tag=reasoning_tag, sql_tag=sql_tag):
        return 0.0
    assert text is not None
    reasoning = _tag_blocks(text, reasoning_tag)[0]
    answer = _tag_blocks(text, sql_tag)[0].strip()
    if not answer:
        return 0.0
    think_part = 0.5 * min(1.0, (len(reasoning.strip()) + len(answer)) / max(1, limit_chars))
    sql_part = min(1.0, len(sql) / len(answer))
    return think_part + sql_part


# --------------------------------------------------------------------------------------------
# partial credit
# --------------------------------------------------------------------------------------------


def statement_type(sql: str | None) -> str | None:
    """Kind of statement: ``"select"`` for any query (SELECT, WITH … SELECT, UNION/INTERSECT/EXCEPT,
    VALUES, parenthesised query), otherwise sqlglot's expression key (``"insert"``, ``"delete"``,
    ``"drop"``, ``"pragma"``, ``"attach"``, …); ``None`` for no SQL. Parsed with sqlglot's SQLite
    dialect; when sqlglot cannot parse it, the leading keyword decides (a query with a syntax
    error further on is still a SELECT)."""
    if sql is None or not sql.strip():
        return None
    try:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="sqlite")
        if isinstance(tree, (exp.Query, exp.Values)):
            return "select"
        return tree.key
    except Exception:  # noqa: BLE001 - any parser failure falls back to the keyword
        kw = statement_keyword(sql)
        if kw is None:
            return None
        return "select" if kw in {"SELECT", "WITH", "VALUES"} else kw.lower()


def statement_type_match(pred_sql: str | None, gold_sql: str) -> float:
    """1.0 when the prediction is the same kind of statement as the gold (see :func:`statement_type`),
    else 0.0 (also for no prediction). Range {0, 1}."""
    p = statement_type(pred_sql)
    return 1.0 if p is not None and p == statement_type(gold_sql) else 0.0


def execution_success(pred: Outcome) -> float:
    """1.0 when the prediction ran without error, else 0.0. Range {0, 1}."""
    return 1.0 if pred is not None and pred.ok else 0.0


def error_credit(pred: Outcome) -> float:
    """Graded credit by outcome (``ERROR_CREDIT``): 1.0 ran; ambiguous column 0.6 > no such column 0.4
    > no such table 0.3 > timeout/other 0.2 > syntax 0.1 > forbidden / no SQL 0.0. Range [0, 1]."""
    if pred is None:
        return ERROR_CREDIT["none"]
    if pred.ok:
        return ERROR_CREDIT["ok"]
    return ERROR_CREDIT.get(pred.category.value, ERROR_CREDIT["other"])


def _column_key(name: str) -> str:
    name = name.strip().strip('"`[]').split(".")[-1]
    return name.strip('"`[]').lower()


def _value_overlap(a: list, b: list) -> float:
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def _multiset_jaccard(a: Counter, b: Counter) -> float:
    inter = sum((a & b).values())
    union = sum((a | b).values())
    return inter / union if union else 1.0


def result_jaccard(gold: ExecutionResult, pred: ExecutionResult, *, max_rows_scanned: int = 10_000) -> float:
    """Jaccard similarity of the two results' row multisets, on their common columns. Range [0, 1].

    Columns are paired first by name (case-insensitive, table prefix and quotes dropped), then the
    remaining ones greedily by the overlap of their value sets. Rows are projected on the paired
    columns and compared as multisets: ``|G ∩ P| / |G ∪ P|`` (duplicates count, order ignored).
    The score is multiplied by the column Jaccard ``paired / (gold_cols + pred_cols - paired)`` so
    extra or missing columns cost credit (``SELECT *`` does not earn full marks). Two empty results
    score 1.0; an empty and a non-empty one 0.0; no pairable column 0.0. Only the first
    ``max_rows_scanned`` rows of each side are looked at.
    """
    g_rows = gold.rows[:max_rows_scanned]
    p_rows = pred.rows[:max_rows_scanned]
    if not g_rows and not p_rows:
        return 1.0
    if not g_rows or not p_rows:
        return 0.0
    ng, np_ = len(g_rows[0]), len(p_rows[0])
    g_names = [_column_key(c) for c in (gold.columns or [""] * ng)][:ng]
    p_names = [_column_key(c) for c in (pred.columns or [""] * np_)][:np_]
    pairs: list[tuple[int, int]] = []
    used_p: set[int] = set()
    for gi, gname in enumerate(g_names):
        for pj, pname in enumerate(p_names):
            if pj not in used_p and gname and gname == pname:
                pairs.append((gi, pj))
                used_p.add(pj)
                break
    free_g = [gi for gi in range(ng) if gi not in {a for a, _ in pairs}]
    free_p = [pj for pj in range(np_) if pj not in used_p]
    if free_g and free_p:
        g_cols = {gi: [r[gi] for r in g_rows] for gi in free_g}
        p_cols = {pj: [r[pj] for r in p_rows] for pj in free_p}
        scored = sorted(
            ((_value_overlap(g_cols[gi], p_cols[pj]), gi, pj) for gi in free_g for pj in free_p),
            key=lambda t: (-t[0], t[1], t[2]),
        )
        taken_g: set[int] = set()
        for score, gi, pj in scored:
            if score <= 0.0:
                break
            if gi in taken_g or pj in used_p:
                continue
            pairs.append((gi, pj))
            taken_g.add(gi)
            used_p.add(pj)
    if not pairs:
        return 0.0
    g_proj = Counter(tuple(r[gi] for gi, _ in pairs) for r in g_rows)
    p_proj = Counter(tuple(r[pj] for _, pj in pairs) for r in p_rows)
    col_factor = len(pairs) / (ng + np_ - len(pairs))
    return _multiset_jaccard(g_proj, p_proj) * col_factor


# --------------------------------------------------------------------------------------------
# the weighted total
# --------------------------------------------------------------------------------------------

#: Default weights: EX dominates; partial credit shapes the rest.
DEFAULT_WEIGHTS: dict[str, float] = {
    "ex": 1.0,
    "result_jaccard": 0.3,
    "error_credit": 0.1,
    "statement_type": 0.05,
}

Normalization = Literal["none", "unit", "symmetric"]


@dataclass
class RewardConfig:
    """How :func:`compute_reward` weighs the components (TRL-style config dataclass).

    Attributes:
        weights: component name -> weight >= 0 (names in ``COMPONENT_RANGES``; missing ones weigh 0).
        normalize: ``"none"``: total = Σ wᵢ·cᵢ (raw, in [Σ wᵢ·lowᵢ, Σ wᵢ·highᵢ]);
            ``"unit"``: the same sum mapped affinely from those nominal bounds to [0, 1];
            ``"symmetric"``: the unit value mapped to [-1, 1]. The bounds are nominal: with SQL-R1's
            gating some extremes are never reached, but the total never leaves the range.
        keep_distinct: keep DISTINCT when judging EX (official default: remove it).
        timeout_s: per-query wall-clock limit, seconds (the prediction scores as a timeout past it).
        max_rows: per-query row cap.
        reasoning_tag, sql_tag: tag names of the expected answer format.
        length_limit_chars: SQL-R1 length-reward limit in characters.

    Raises (on construction):
        ValueError: unknown component, negative or non-finite weight, all weights zero, unknown
            normalisation, or a non-positive timeout.
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    normalize: Normalization = "unit"
    keep_distinct: bool = False
    timeout_s: float = 5.0
    max_rows: int = DEFAULT_MAX_ROWS
    reasoning_tag: str = "reasoning"
    sql_tag: str = "sql"
    length_limit_chars: int = SQLR1_LENGTH_LIMIT

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(COMPONENT_RANGES))
        if unknown:
            raise ValueError(
                f"RewardConfig.weights has unknown component(s) {unknown}; use any of {sorted(COMPONENT_RANGES)}"
            )
        for k, w in self.weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"RewardConfig.weights[{k!r}] = {w!r}; weights must be finite numbers >= 0")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("RewardConfig.weights are all zero; give at least one component a positive weight")
        if self.normalize not in ("none", "unit", "symmetric"):
            raise ValueError(f"RewardConfig.normalize = {self.normalize!r}; use 'none', 'unit' or 'symmetric'")
        if not self.timeout_s > 0:
            raise ValueError(f"RewardConfig.timeout_s = {self.timeout_s!r}; must be > 0 seconds")

    @classmethod
    def sql_r1(cls, **kw: Any) -> RewardConfig:
        """The SQL-R1 composite as the total: format + execution + result + length, unnormalised,
        range [-1, 7.5]."""
        return cls(weights={"format": 1.0, "execution": 1.0, "result": 1.0, "length": 1.0}, normalize="none", **kw)

    @classmethod
    def binary_ex(cls, **kw: Any) -> RewardConfig:
        """Plain execution accuracy as the reward: 1 on match, else 0."""
        return cls(weights={"ex": 1.0}, normalize="none", **kw)

    def bounds(self) -> tuple[float, float]:
        """The nominal (low, high) of the total under this configuration."""
        if self.normalize == "unit":
            return (0.0, 1.0)
        if self.normalize == "symmetric":
            return (-1.0, 1.0)
        lo = sum(w * COMPONENT_RANGES[k][0] for k, w in self.weights.items())
        hi = sum(w * COMPONENT_RANGES[k][1] for k, w in self.weights.items())
        return (lo, hi)

    def combine(self, components: dict[str, float]) -> float:
        """Weighted total of ``components`` (name -> value) under this configuration."""
        raw = sum(w * components[k] for k, w in self.weights.items())
        if self.normalize == "none":
            return raw
        lo = sum(w * COMPONENT_RANGES[k][0] for k, w in self.weights.items())
        hi = sum(w * COMPONENT_RANGES[k][1] for k, w in self.weights.items())
        unit = min(1.0, max(0.0, (raw - lo) / (hi - lo)))
        return unit if self.normalize == "unit" else 2.0 * unit - 1.0


@dataclass(frozen=True)
class RewardBreakdown:
    """Every component of one prediction's reward, and the configured total.

    Attributes:
        sql: the SQL extracted from the output (``None`` if none).
        format, execution, result, length: SQL-R1 components (ranges in ``COMPONENT_RANGES``).
        ex, statement_type, executes, result_jaccard, error_credit: partial-credit components.
        sql_r1: format + execution + result + length, in [-1, 7.5].
        total: the weighted total of :class:`RewardConfig` (range ``config.bounds()``).
        ex_reason: the EX verdict's reason (see :class:`evaluation.ex.ExMatch`).
        error: the prediction's error category value, or ``None`` when it ran / was absent.
        gold_ok: False when the gold query itself failed (a trainer may drop such a sample).
    """

    sql: str | None
    format: float
    execution: float
    result: float
    length: float
    ex: float
    statement_type: float
    executes: float
    result_jaccard: float
    error_credit: float
    sql_r1: float
    total: float
    ex_reason: str
    error: str | None
    gold_ok: bool

    def components(self) -> dict[str, float]:
        """Component name -> value for the names in ``COMPONENT_RANGES``."""
        return {k: getattr(self, k) for k in COMPONENT_RANGES}

    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (for spans, logs, JSON)."""
        return asdict(self)


def compute_reward(
    pred_text_or_sql: str | None,
    gold_sql: str,
    db_path: str | Path,
    config: RewardConfig | None = None,
) -> RewardBreakdown:
    """Score one model output against the gold query on one database.

    Args:
        pred_text_or_sql: the raw model output (``<reasoning>…</reasoning><sql>…</sql>``, a Markdown
            ```` ```sql ```` fence, prose with a query, or bare SQL); the query is found with
            :func:`extract_sql`.
        gold_sql: reference SQL.
        db_path: SQLite file both run on (read-only, via :func:`tools.executor.execute_sql`).
        config: weights and limits; default :class:`RewardConfig()` (unit-normalised partial credit).

    Returns:
        :class:`RewardBreakdown` with every component and ``total`` in ``config.bounds()``.
        Executes the prediction at most once and the gold at most once (cached across calls).
        Never raises for bad SQL.
    """
    cfg = config or RewardConfig()
    text = "" if pred_text_or_sql is None else str(pred_text_or_sql)
    sql = extract_sql(text)
    fmt_ok = format_ok(text, reasoning_tag=cfg.reasoning_tag, sql_tag=cfg.sql_tag)

    gold = run_query(db_path, gold_sql, keep_distinct=cfg.keep_distinct, timeout_s=cfg.timeout_s, max_rows=cfg.max_rows, cache=True)
    pred: Outcome = None
    if sql is not None:
        pred = run_query(db_path, sql, keep_distinct=cfg.keep_distinct, timeout_s=cfg.timeout_s, max_rows=cfg.max_rows)
    verdict: ExMatch = compare_results(gold, pred, order_matters=order_matters(gold_sql))
    match = verdict.match

    if match:
        jacc = 1.0
    elif gold.ok and pred is not None and pred.ok:
        jacc = result_jaccard(gold, pred)
    else:
        jacc = 0.0
    comps = {
        "format": SQLR1_FORMAT if fmt_ok else -SQLR1_FORMAT,
        "execution": execution_reward(pred, format_is_ok=fmt_ok, gold_ok=gold.ok),
        "result": result_reward(match, pred, format_is_ok=fmt_ok, gold_ok=gold.ok),
        "length": length_reward(
            text, sql, match, reasoning_tag=cfg.reasoning_tag, sql_tag=cfg.sql_tag, limit_chars=cfg.length_limit_chars
        ),
        "ex": 1.0 if match else 0.0,
        "statement_type": statement_type_match(sql, gold_sql),
        "executes": execution_success(pred),
        "result_jaccard": jacc,
        "error_credit": error_credit(pred),
    }
    return RewardBreakdown(
        sql=sql,
        **comps,
        sql_r1=comps["format"] + comps["execution"] + comps["result"] + comps["length"],
        total=cfg.combine(comps),
        ex_reason=verdict.reason,
        error=None if pred is None or pred.ok else pred.category.value,
        gold_ok=gold.ok,
    )
