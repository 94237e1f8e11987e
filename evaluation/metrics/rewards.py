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
``complexity``     [0, 1]          Gaussian similarity of log(complexity ratio) to gold
                                   (optional: weight 0 by default)
``reasoning``      [0, 1]          reasoning section of sensible length naming the schema
                                   tables/columns the SQL uses (optional: weight 0 by default)
=================  ==============  ===========================================================

SQL-R1 source: Ma et al., "SQL-R1: Training Natural Language to SQL Reasoning Model By
Reinforcement Learning", arXiv:2504.08600, §3 (reward design): format +1/-1, execution +2/-2,
result +3/-3, length reward only for correct results; the length formula and the gating (later
components only count when the format is right; the result only when the query executes) follow
the authors' released reward (``verl/utils/reward_score/synsql.py`` in IDEA-FinAI/SQL-R1):
``0.5 * min(1, (len(think) + len(answer)) / 2048) + len(sql) / len(answer)`` in characters. Our
tags are ``<reasoning>`` and ``<sql>`` instead of the paper's ``<think>`` and ``<answer>`` (both
configurable). Total SQL-R1 score range: [-1, 7.5].

Complexity reward: as in the GRPO text-to-SQL recipe for Unsloth (a Gaussian of the log ratio of
generated to gold query complexity), with this project's complexity count (:func:`sql_complexity`)
and width (:data:`COMPLEXITY_SIGMA`). The reasoning heuristic (:func:`reasoning_quality`) is this
project's design.

Partial credit and the error-category grades are this project's design (the grade *order*,
ambiguous column > no such column > syntax, is the specification; the numbers are in
``ERROR_CREDIT``).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from evaluation.metrics.ex import DEFAULT_MAX_ROWS, ExMatch, compare_results, order_matters, run_query
from evaluation.metrics.sql_text import extract_sql, statement_keyword
from tools.schema import load_schema
from tools.sql_results import ExecutionError, ExecutionResult
from tools.value_types import TypedSettings

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
    "sql_complexity",
    "complexity_reward",
    "sql_identifiers",
    "reasoning_quality",
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
    "complexity": (0.0, 1.0),
    "reasoning": (0.0, 1.0),
}

#: SQL-R1 magnitudes (arXiv:2504.08600 §3).
SQLR1_FORMAT, SQLR1_EXECUTION, SQLR1_RESULT = 1.0, 2.0, 3.0
#: Characters of reasoning+answer that earn the full 0.5 length sub-score (SQL-R1 reference code).
SQLR1_LENGTH_LIMIT = 2048

#: Credit for a prediction by executor outcome: ``"ok"`` for a successful run, else the
#: :class:`tools.sql_results.ErrorCategory` value; ``"none"`` for no SQL at all. The order
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
# optional shaping: query complexity and reasoning quality
# --------------------------------------------------------------------------------------------

#: Width of the complexity reward's Gaussian on ``log(c_gen / c_gold)``: ``sqrt(ln 2 / 2)`` ≈ 0.589,
#: so a query twice (or half) as complex as the gold scores exactly 0.5; ×1.5 scores ≈ 0.78,
#: ×3 ≈ 0.22, ×4 ≈ 0.06.
COMPLEXITY_SIGMA = math.sqrt(math.log(2) / 2)

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _complexity_nodes() -> tuple[type, ...]:
    from sqlglot import exp

    return (
        exp.Select,  # each query block: the outer query and every subquery / CTE body / set-operation side
        exp.Join,
        exp.AggFunc,  # COUNT, SUM, AVG, MIN, MAX, ...
        exp.Where, exp.Having, exp.Group, exp.Order, exp.Limit,
        exp.Predicate,  # =, <>, <, >, IN, LIKE, BETWEEN, IS, EXISTS, ...
        exp.Connector,  # AND / OR
        exp.Not,
        exp.SetOperation,  # UNION / INTERSECT / EXCEPT
        exp.Distinct, exp.Case, exp.Window, exp.CTE,
    )


def _token_count(sql: str) -> int:
    return len(_TOKEN_RE.findall(sql))


@functools.lru_cache(maxsize=8192)
def _parsed_complexity(sql: str) -> int | None:
    try:
        import sqlglot

        tree = sqlglot.parse_one(sql, read="sqlite")
    except Exception:  # noqa: BLE001 - any parser failure: the caller falls back to tokens
        return None
    if tree is None:
        return None
    kinds = _complexity_nodes()
    return 1 + sum(1 for node in tree.walk() if isinstance(node, kinds))


def sql_complexity(sql: str | None) -> tuple[int, str]:
    """Structural complexity of a query and how it was measured: ``(count, "ast" | "tokens")``.

    ``"ast"``: 1 + the number of structural features in sqlglot's parse tree (SQLite dialect):
    query blocks (SELECTs, so each subquery counts), JOINs, aggregate calls, WHERE / HAVING /
    GROUP BY / ORDER BY / LIMIT clauses, predicates (comparisons, IN, LIKE, BETWEEN, IS, EXISTS),
    AND/OR/NOT, set operations, DISTINCT, CASE, window functions, CTEs. ``"tokens"``: the number
    of word and punctuation tokens, when sqlglot cannot parse the text. No SQL -> ``(0, "tokens")``.

    >>> sql_complexity("SELECT name FROM singer")
    (2, 'ast')
    >>> sql_complexity("SELECT count(*) FROM singer WHERE age > 30")
    (5, 'ast')
    """
    if sql is None or not sql.strip():
        return (0, "tokens")
    n = _parsed_complexity(sql.strip())
    return (n, "ast") if n is not None else (_token_count(sql), "tokens")


def complexity_reward(pred_sql: str | None, gold_sql: str, *, sigma: float = COMPLEXITY_SIGMA) -> float:
    """How close the prediction's complexity is to the gold's, in [0, 1]; 1 when equal.

    ``exp(-(log(c_pred / c_gold))² / (2σ²))`` clipped to [0, 1], with ``c`` from
    :func:`sql_complexity` (both sides by tokens when either cannot be parsed, so the ratio compares
    like with like) and ``σ`` = :data:`COMPLEXITY_SIGMA` by default. Symmetric in the ratio: twice
    and half as complex score the same. 0 for no predicted SQL. Discourages both padding a query
    with needless clauses and dropping needed ones; says nothing about correctness.

    Raises:
        ValueError: ``sigma`` <= 0.

    >>> complexity_reward("SELECT name FROM singer", "SELECT name FROM singer")
    1.0
    >>> round(complexity_reward("SELECT name FROM singer", "SELECT count(*) FROM singer WHERE a > 1 AND b < 2"), 3)
    0.104
    """
    if not sigma > 0:
        raise ValueError(f"sigma = {sigma!r}; the complexity reward's width must be > 0")
    if pred_sql is None or not pred_sql.strip() or not gold_sql or not gold_sql.strip():
        return 0.0
    (cp, how_p), (cg, how_g) = sql_complexity(pred_sql), sql_complexity(gold_sql)
    if how_p != how_g:
        cp, cg = _token_count(pred_sql), _token_count(gold_sql)
    if cp <= 0 or cg <= 0:
        return 0.0
    r = math.exp(-(math.log(cp / cg) ** 2) / (2.0 * sigma**2))
    return min(1.0, max(0.0, r))


def sql_identifiers(sql: str | None, schema_names: Iterable[str] | None = None) -> set[str]:
    """Lower-cased table and column names a query uses.

    With sqlglot (SQLite dialect): the names of its ``Table`` and ``Column`` nodes (``*`` and
    aliases' qualifiers dropped). When ``schema_names`` is given only names in it are kept (so
    table aliases such as ``T1`` and output aliases do not count), and when the query does not
    parse, the words of the query that are schema names are used instead. Empty for no SQL.

    >>> sorted(sql_identifiers("SELECT T1.name FROM singer AS T1 WHERE T1.age > 3"))
    ['age', 'name', 'singer']
    """
    if sql is None or not sql.strip():
        return set()
    names = {n.lower() for n in schema_names} if schema_names is not None else None
    found: set[str] = set()
    try:
        import sqlglot
        from sqlglot import exp

        tree = sqlglot.parse_one(sql, read="sqlite")
        found = {t.name.lower() for t in tree.find_all(exp.Table) if t.name}
        found |= {c.name.lower() for c in tree.find_all(exp.Column) if c.name and c.name != "*"}
    except Exception:  # noqa: BLE001 - unparsable: match the query's words against the schema
        if names is None:
            return set()
        found = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
    return found & names if names is not None else found


def _mentions(text: str, name: str) -> bool:
    variants = {name, name.replace("_", " ")}
    return any(
        re.search(rf"(?<![A-Za-z0-9_]){re.escape(v)}(?![A-Za-z0-9_])", text, re.IGNORECASE) for v in variants if v
    )


#: Reasoning length (characters, stripped) that earns the full length score, and the length
#: after which the score decays as ``max / length``.
REASONING_MIN_CHARS = 40
REASONING_MAX_CHARS = 1500


def reasoning_quality(
    text: str | None,
    sql: str | None,
    *,
    schema_names: Iterable[str] | None = None,
    reasoning_tag: str = "reasoning",
    min_chars: int = REASONING_MIN_CHARS,
    max_chars: int = REASONING_MAX_CHARS,
) -> float:
    """Heuristic quality of the ``<reasoning>`` section, in [0, 1]. Not a correctness signal.

    Raises:
        ValueError: not ``0 < min_chars <= max_chars``.

    ``L · (0.25 + 0.75 · C)`` where

    * ``L`` (length) is 0 without a non-empty ``<reasoning>…</reasoning>`` block, rises linearly to
      1 at ``min_chars`` characters, stays 1 up to ``max_chars`` and then decays as
      ``max_chars / length`` (rambling costs credit);
    * ``C`` (grounding) is the share of the tables and columns the SQL uses
      (:func:`sql_identifiers`, restricted to ``schema_names`` when given) that the reasoning names
      (whole word, case-insensitive; ``singer_id`` also matches "singer id"); 0 when the SQL has
      no identifiable table or column (nothing grounds the reasoning).

    No SQL at all scores 0 (a reasoning that leads to no answer earns nothing). Non-decreasing in
    ``C`` and, up to ``max_chars``, in the reasoning's length.

    >>> t = ("<reasoning>Count the rows of the singer table, one per singer.</reasoning>"
    ...      "<sql>SELECT count(*) FROM singer</sql>")
    >>> reasoning_quality(t, "SELECT count(*) FROM singer")
    1.0
    """
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars (got {min_chars}, {max_chars})")
    if not text or sql is None or not sql.strip():
        return 0.0
    blocks = _tag_blocks(text, reasoning_tag)
    reasoning = blocks[0].strip() if blocks else ""
    n = len(reasoning)
    if n == 0:
        return 0.0
    length = min(1.0, n / min_chars) if n <= max_chars else max_chars / n
    idents = sql_identifiers(sql, schema_names)
    cover = sum(_mentions(reasoning, i) for i in idents) / len(idents) if idents else 0.0
    return min(1.0, max(0.0, length * (0.25 + 0.75 * cover)))


def schema_names_of(db_path: str | Path) -> set[str] | None:
    """Lower-cased table and column names of an SQLite database (``tools.schema.load_schema``,
    cached), or None when it cannot be read."""
    try:
        schema = load_schema(Path(db_path), sample_rows=0)
    except Exception:  # noqa: BLE001 - no schema: the reasoning heuristic uses the SQL's own names
        return None
    return {t.name.lower() for t in schema.tables} | {c.lower() for t in schema.tables for c in t.column_names}


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


class RewardConfig(TypedSettings):
    """How :func:`compute_reward` weighs the components (the ``reward:`` section of a training
    profile): a pydantic model, so an unknown key is refused and a wrongly typed value named with the
    type it wants (:class:`tools.value_types.TypedSettings`).

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
        complexity_sigma: width of the ``complexity`` component's Gaussian (> 0; see
            :func:`complexity_reward`).
        reasoning_min_chars, reasoning_max_chars: length band of the ``reasoning`` component
            (see :func:`reasoning_quality`).

    The ``complexity`` and ``reasoning`` components are optional shaping terms: they weigh 0
    unless ``weights`` names them (the defaults do not), e.g.
    ``RewardConfig(weights={**DEFAULT_WEIGHTS, "complexity": 0.1, "reasoning": 0.05})``.

    Raises (on construction, as a pydantic ``ValidationError``, a ``ValueError``): an unknown or
        wrongly typed key, an unknown component, a negative or non-finite weight, all weights zero,
        an unknown normalisation, a non-positive timeout, a non-positive complexity sigma, or a bad
        reasoning length band.
    """

    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    normalize: Normalization = "unit"
    keep_distinct: bool = False
    timeout_s: float = 5.0
    max_rows: int = DEFAULT_MAX_ROWS
    reasoning_tag: str = "reasoning"
    sql_tag: str = "sql"
    length_limit_chars: int = SQLR1_LENGTH_LIMIT
    complexity_sigma: float = COMPLEXITY_SIGMA
    reasoning_min_chars: int = REASONING_MIN_CHARS
    reasoning_max_chars: int = REASONING_MAX_CHARS

    @model_validator(mode="after")
    def _valid(self) -> RewardConfig:
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
        if not (isinstance(self.complexity_sigma, (int, float)) and math.isfinite(self.complexity_sigma)
                and self.complexity_sigma > 0):
            raise ValueError(f"RewardConfig.complexity_sigma = {self.complexity_sigma!r}; must be a finite number > 0")
        if not 0 < self.reasoning_min_chars <= self.reasoning_max_chars:
            raise ValueError(
                f"RewardConfig.reasoning_min_chars/max_chars = {self.reasoning_min_chars}/{self.reasoning_max_chars}; "
                "need 0 < min <= max"
            )
        return self

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
        complexity, reasoning: optional shaping components (always computed, weighted only when
            the config names them).
        sql_r1: format + execution + result + length, in [-1, 7.5].
        total: the weighted total of :class:`RewardConfig` (range ``config.bounds()``).
        ex_reason: the EX verdict's reason (see :class:`evaluation.metrics.ex.ExMatch`).
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
    complexity: float = 0.0
    reasoning: float = 0.0

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

    gold = run_query(
        db_path, gold_sql, keep_distinct=cfg.keep_distinct, timeout_s=cfg.timeout_s, max_rows=cfg.max_rows, cache=True
    )
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
        "complexity": complexity_reward(sql, gold_sql, sigma=cfg.complexity_sigma),
        "reasoning": reasoning_quality(
            text, sql, schema_names=schema_names_of(db_path), reasoning_tag=cfg.reasoning_tag,
            min_chars=cfg.reasoning_min_chars, max_chars=cfg.reasoning_max_chars,
        ),
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
