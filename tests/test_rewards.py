"""Rewards: SQL extraction from raw model outputs, each component's range and ordering, and the
configurable total — on the real Spider concert_singer database."""

from __future__ import annotations

import sqlite3

import pytest

from evaluation.metrics.ex import run_query
from evaluation.metrics.rewards import (
    COMPLEXITY_SIGMA,
    COMPONENT_RANGES,
    DEFAULT_WEIGHTS,
    RewardConfig,
    complexity_reward,
    compute_reward,
    error_credit,
    extract_sql,
    format_ok,
    length_reward,
    reasoning_quality,
    result_jaccard,
    schema_names_of,
    sql_complexity,
    sql_identifiers,
    statement_type,
    statement_type_match,
)
from tools.spider import BUNDLED_DATA_DIR

DB = BUNDLED_DATA_DIR / "database" / "concert_singer" / "concert_singer.sqlite"
GOLD = "SELECT name, country, age FROM singer ORDER BY age DESC"


# ---------------------------------------------------------------- extract_sql


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<reasoning>r</reasoning><sql>SELECT count(*) FROM singer;</sql>", "SELECT count(*) FROM singer"),
        ("<reasoning>r</reasoning><sql>```sql\nSELECT 1;\n```</sql>", "SELECT 1"),
        (
            "Here it is:\n```sql\nSELECT name FROM singer WHERE age > 30;\n```\nDone.",
            "SELECT name FROM singer WHERE age > 30",
        ),
        ("```SQL\nSELECT a FROM t\n```", "SELECT a FROM t"),
        ("```\nSELECT a FROM t\n```", "SELECT a FROM t"),
        ("```sql\nSELECT 1\n```\nbetter:\n```sql\nSELECT 2\n```", "SELECT 2"),
        ("```python\nprint('x')\n```\nSELECT a FROM t;", "SELECT a FROM t"),
        ("The answer is SELECT name FROM singer.", "SELECT name FROM singer"),
        ("SELECT name FROM singer\n\nThis lists every singer.", "SELECT name FROM singer"),
        ("SELECT a FROM t; DROP TABLE t;", "SELECT a FROM t"),
        ("DROP TABLE t; SELECT a FROM t", "SELECT a FROM t"),
        ("<sql>DELETE FROM t</sql>", "DELETE FROM t"),
        ("select a from t;;", "select a from t"),
        ("<sql>SELECT name FROM singer WHERE name = 'a;b'", "SELECT name FROM singer WHERE name = 'a;b'"),
        ("```sql\nSELECT a\nFROM t", "SELECT a\nFROM t"),
        ("WITH x AS (SELECT 1 AS a) SELECT a FROM x;", "WITH x AS (SELECT 1 AS a) SELECT a FROM x"),
        ("<sql>\n-- names\nSELECT name FROM singer;\n</sql>", "SELECT name FROM singer"),
        ("<sql>SELECT 1</sql> then <sql>SELECT 2</sql>", "SELECT 2"),
        ("<SQL>SELECT 3</SQL>", "SELECT 3"),
        ("I cannot answer this question.", None),
        ("I will select the best approach.", None),
        ("<sql>   </sql>", None),
        ("<sql>-- nothing</sql>", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_sql(text, expected):
    assert extract_sql(text) == expected


def test_extracted_sql_executes():
    out = "Let me think.\n```sql\nSELECT count(*) FROM singer;\n```\nThat counts singers."
    res = run_query(DB, extract_sql(out))
    assert res.ok and res.rows == [(6,)]


# ---------------------------------------------------------------- components


GOOD = (
    "<reasoning>order singers by age, oldest first</reasoning>"
    "<sql>SELECT name, country, age FROM singer ORDER BY age DESC</sql>"
)
OUTPUTS = [
    GOOD,
    "SELECT age, name, country FROM singer ORDER BY age DESC",  # right, unformatted
    "<reasoning>x</reasoning><sql>SELECT name, country, age FROM singer ORDER BY age</sql>",  # wrong order
    "<reasoning>x</reasoning><sql>SELECT name FROM singer</sql>",  # missing columns
    "<reasoning>x</reasoning><sql>SELECT * FROM singer</sql>",  # extra columns
    "<reasoning>x</reasoning><sql>SELECT nme FROM singer</sql>",  # no such column
    "<reasoning>x</reasoning><sql>SELECT singer_id FROM singer JOIN singer_in_concert ON singer.singer_id = "
    "singer_in_concert.singer_id</sql>",
    "<reasoning>x</reasoning><sql>SELEC name FROM singer</sql>",  # syntax
    "<reasoning>x</reasoning><sql>DROP TABLE singer</sql>",  # forbidden
    "<reasoning>x</reasoning><sql>WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n) SELECT count(*) FROM "
    "n</sql>",
    "no idea",
    None,
    "<sql>SELECT 1</sql><reasoning>late</reasoning>",  # tags out of order
]


@pytest.fixture(scope="module")
def breakdowns():
    cfg = RewardConfig(timeout_s=0.5)
    return [compute_reward(o, GOLD, DB, cfg) for o in OUTPUTS]


def test_every_component_stays_in_its_documented_range(breakdowns):
    for b in breakdowns:
        for name, value in b.components().items():
            lo, hi = COMPONENT_RANGES[name]
            assert lo <= value <= hi, (name, value)
        assert -1.0 <= b.sql_r1 <= 7.5
        assert 0.0 <= b.total <= 1.0


def test_totals_stay_in_bounds_for_every_normalisation(breakdowns):
    configs = [
        RewardConfig(),
        RewardConfig(normalize="symmetric"),
        RewardConfig(normalize="none", weights={"ex": 2.0, "result_jaccard": 0.5, "format": 0.5}),
        RewardConfig.sql_r1(),
        RewardConfig.binary_ex(),
    ]
    for cfg in configs:
        lo, hi = cfg.bounds()
        for b in breakdowns:
            t = cfg.combine(b.components())
            assert lo - 1e-9 <= t <= hi + 1e-9


def test_sql_r1_values(breakdowns):
    good, unformatted, wrong_order, *_ = breakdowns
    assert (good.format, good.execution, good.result) == (1.0, 2.0, 3.0)
    assert 1.0 < good.length <= 1.5  # the whole <sql> block is SQL: second term is 1
    assert 6.0 < good.sql_r1 <= 7.5
    assert good.ex == 1.0
    # right answer without the format: SQL-R1 gives only the format penalty, EX still sees the match
    assert (unformatted.format, unformatted.execution, unformatted.result, unformatted.length) == (-1.0, 0.0, 0.0, 0.0)
    assert unformatted.ex == 1.0
    assert (wrong_order.format, wrong_order.execution, wrong_order.result, wrong_order.length) == (1.0, 2.0, -3.0, 0.0)
    assert wrong_order.ex_reason == "row_order"
    syntax = breakdowns[7]
    assert (syntax.execution, syntax.result, syntax.sql_r1) == (-2.0, 0.0, -1.0)
    assert compute_reward(GOOD, GOLD, DB, RewardConfig.sql_r1()).total == pytest.approx(good.sql_r1)


def test_length_reward_bounds():
    sql = "SELECT name FROM singer"
    short = f"<reasoning>a</reasoning><sql>{sql}</sql>"
    long = f"<reasoning>{'a' * 5000}</reasoning><sql>{sql}</sql>"
    noisy = f"<reasoning>a</reasoning><sql>The query is: {sql}</sql>"
    assert length_reward(short, sql, True) == pytest.approx(0.5 * (1 + len(sql)) / 2048 + 1.0)
    assert length_reward(long, sql, True) == pytest.approx(1.5)
    assert 0.5 < length_reward(noisy, sql, True) < 1.0
    assert length_reward(long, sql, False) == 0.0
    assert length_reward(sql, sql, True) == 0.0  # no format, no bonus


def test_format_check():
    assert format_ok("<reasoning>r</reasoning>\n<sql>SELECT 1</sql>")
    assert not format_ok("<sql>SELECT 1</sql>")
    assert not format_ok("<reasoning>r</reasoning><sql>SELECT 1</sql><sql>SELECT 2</sql>")
    assert not format_ok("<sql>SELECT 1</sql><reasoning>r</reasoning>")
    assert not format_ok("<reasoning>r</reasoning><sql>  </sql>")  # empty answer
    assert format_ok("<reasoning>r</reasoning><sql>SELEC typo</sql>")  # structure only; execution judges the SQL
    assert format_ok("<think>r</think><answer>SELECT 1</answer>", reasoning_tag="think", sql_tag="answer")


def test_error_credit_is_graded_by_real_error_category(breakdowns):
    by_error = {b.error: b.error_credit for b in breakdowns if b.error}
    assert {"ambiguous_column", "no_such_column", "syntax", "timeout"} <= set(by_error)
    assert by_error["ambiguous_column"] > by_error["no_such_column"] > by_error["syntax"] > 0.0
    assert breakdowns[0].error_credit == 1.0
    assert breakdowns[-3].error_credit == 0.0 and breakdowns[-3].sql is None  # "no idea"
    assert error_credit(None) == 0.0


def test_forbidden_statement_gets_no_credit(breakdowns):
    drop = breakdowns[8]
    assert drop.executes == 0.0 and drop.statement_type == 0.0 and drop.ex == 0.0
    con = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    assert con.execute("SELECT count(*) FROM singer").fetchone() == (6,)  # still there
    con.close()


def test_statement_type():
    assert statement_type("WITH a AS (SELECT 1) SELECT * FROM a") == "select"
    assert statement_type("SELECT 1 UNION SELECT 2") == "select"
    assert statement_type("SELECT a FROM WHERE ORDER") == "select"  # unparsable but a query
    assert statement_type("DELETE FROM t") == "delete"
    assert statement_type("") is None
    assert statement_type_match("select 1", GOLD) == 1.0
    assert statement_type_match("DROP TABLE singer", GOLD) == 0.0
    assert statement_type_match(None, GOLD) == 0.0


def test_result_jaccard_on_real_results():
    gold = run_query(DB, "SELECT name, age FROM singer")
    same_alias = run_query(DB, "SELECT age AS years, name AS who FROM singer")
    subset = run_query(DB, "SELECT name, age FROM singer WHERE age > 40")
    one_col = run_query(DB, "SELECT name FROM singer")
    star = run_query(DB, "SELECT * FROM singer")
    other = run_query(DB, "SELECT Stadium_ID, Capacity FROM stadium")
    assert result_jaccard(gold, same_alias) == pytest.approx(1.0)  # columns paired by values
    assert result_jaccard(gold, subset) == pytest.approx(3 / 6)  # 3 singers older than 40
    assert result_jaccard(gold, one_col) == pytest.approx(0.5)  # rows equal on name; 1 of 2 columns
    assert 0.0 < result_jaccard(gold, star) < 0.5  # 2 of 7 columns shared
    assert result_jaccard(gold, other) == 0.0
    empty = run_query(DB, "SELECT name FROM singer WHERE 0")
    assert result_jaccard(empty, empty) == 1.0 and result_jaccard(gold, empty) == 0.0


def test_partial_credit_orders_outputs_sensibly(breakdowns):
    good, _, wrong_order, one_col, star, no_col, ambiguous, syntax, drop, _, no_idea, none, _ = breakdowns
    assert good.total == 1.0
    assert good.total > wrong_order.total > one_col.total > no_col.total
    assert ambiguous.total > no_col.total > syntax.total > no_idea.total == none.total == 0.0
    assert drop.total <= syntax.total


def test_reward_config_validation():
    with pytest.raises(ValueError, match="unknown component"):
        RewardConfig(weights={"exx": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        RewardConfig(weights={"ex": -1.0})
    with pytest.raises(ValueError, match="all zero"):
        RewardConfig(weights={"ex": 0.0})
    with pytest.raises(ValueError, match="normalize"):
        RewardConfig(normalize="minmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        RewardConfig(timeout_s=0)


def test_keep_distinct_reaches_the_ex_component():
    gold = "SELECT country FROM singer"
    pred = "<reasoning>r</reasoning><sql>SELECT DISTINCT country FROM singer</sql>"
    assert compute_reward(pred, gold, DB).ex == 1.0
    b = compute_reward(pred, gold, DB, RewardConfig(keep_distinct=True))
    assert b.ex == 0.0 and 0.0 < b.result_jaccard < 1.0


# ---------------------------------------------------------------- optional shaping: complexity, reasoning

# increasingly complex queries on concert_singer, each a superset of the previous one's features
LADDER = [
    "SELECT name FROM singer",
    "SELECT name FROM singer WHERE age > 30",
    "SELECT name FROM singer WHERE age > 30 AND country = 'France'",
    "SELECT name FROM singer WHERE age > 30 AND country = 'France' ORDER BY age DESC LIMIT 3",
    (
        "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id "
        "WHERE T1.age > 30 AND T1.country = 'France' GROUP BY T1.name HAVING count(*) > 1 ORDER BY T1.age DESC LIMIT 3"
    ),
    (
        "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id "
        "WHERE T1.age > 30 AND T1.country = 'France' AND T2.concert_id IN (SELECT concert_id FROM concert WHERE year "
        "> 2014) "
        "GROUP BY T1.name HAVING count(*) > 1 ORDER BY T1.age DESC LIMIT 3"
    ),
]


def test_sql_complexity_counts_structure_and_falls_back_to_tokens():
    counts = [sql_complexity(q) for q in LADDER]
    assert all(how == "ast" for _, how in counts)
    values = [c for c, _ in counts]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing along the ladder
    n, how = sql_complexity("SELEC name FROM singer WHERE")  # sqlglot cannot parse it
    assert how == "tokens" and n == 5
    assert sql_complexity(None) == (0, "tokens") and sql_complexity("  ") == (0, "tokens")


def test_complexity_reward_range_and_monotonic_away_from_gold():
    for gold in LADDER:
        for pred in LADDER + ["SELEC name FROM", "no sql at all", ""]:
            assert 0.0 <= complexity_reward(pred, gold) <= 1.0
        assert complexity_reward(gold, gold) == 1.0
    gold_i = 2
    gold = LADDER[gold_i]
    up = [complexity_reward(q, gold) for q in LADDER[gold_i:]]
    down = [complexity_reward(q, gold) for q in reversed(LADDER[: gold_i + 1])]
    assert up == sorted(up, reverse=True) and up[-1] < up[0]  # more complex than gold: falls
    assert down == sorted(down, reverse=True) and down[-1] < down[0]  # simpler than gold: falls
    assert complexity_reward(None, gold) == 0.0


def test_complexity_reward_formula_and_sigma():
    cp, cg = sql_complexity(LADDER[0])[0], sql_complexity(LADDER[3])[0]
    import math

    expected = math.exp(-(math.log(cp / cg) ** 2) / (2 * COMPLEXITY_SIGMA**2))
    assert complexity_reward(LADDER[0], LADDER[3]) == pytest.approx(expected)
    # symmetric in the ratio, and a wider Gaussian is more lenient
    assert complexity_reward(LADDER[0], LADDER[3]) == pytest.approx(complexity_reward(LADDER[3], LADDER[0]))
    assert complexity_reward(LADDER[0], LADDER[3], sigma=2.0) > complexity_reward(LADDER[0], LADDER[3])
    # the documented calibration: twice as complex scores 0.5
    assert math.exp(-(math.log(2) ** 2) / (2 * COMPLEXITY_SIGMA**2)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sigma"):
        complexity_reward(LADDER[0], LADDER[0], sigma=0)


def test_sql_identifiers_use_the_real_schema():
    names = schema_names_of(DB)
    assert names is not None and {"singer", "name", "singer_id", "concert"} <= names
    ids = sql_identifiers(LADDER[4], names)
    assert ids == {"singer", "singer_in_concert", "name", "singer_id", "age", "country"}  # aliases T1/T2 dropped
    assert sql_identifiers("SELEC name FROM singer", names) == {"name", "singer"}  # unparsable: word match
    assert sql_identifiers(None, names) == set()
    assert schema_names_of("/nonexistent/db.sqlite") is None


def _reasoned(reasoning: str, sql: str = "SELECT name FROM singer WHERE age > 30 AND country = 'France'") -> str:
    return f"<reasoning>{reasoning}</reasoning><sql>{sql}</sql>"


def test_reasoning_quality_rewards_grounded_reasoning_of_sensible_length():
    sql = "SELECT name FROM singer WHERE age > 30 AND country = 'France'"
    names = schema_names_of(DB)
    filler = "We look at the data and filter what the question asks for. "
    steps = [
        filler,
        filler + "Use the singer table.",
        filler + "Use the singer table and its name column.",
        filler + "Use the singer table and its name column; filter on age.",
        filler + "Use the singer table and its name column; filter on age and country.",
    ]
    scores = [reasoning_quality(_reasoned(r, sql), sql, schema_names=names) for r in steps]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)  # each named column/table adds credit
    assert scores[-1] == 1.0 and 0.0 < scores[0] <= 0.25
    # no reasoning section, an empty one, or no SQL
    assert reasoning_quality(sql, sql, schema_names=names) == 0.0
    assert reasoning_quality(_reasoned("  ", sql), sql, schema_names=names) == 0.0
    assert reasoning_quality(None, sql) == 0.0
    assert reasoning_quality(_reasoned(steps[-1]), None, schema_names=names) == 0.0  # no answer: nothing earned
    assert (
        reasoning_quality(_reasoned(steps[-1], "SELECT 1"), "SELECT 1", schema_names=names) == 0.25
    )  # nothing to ground
    # length: rises up to min_chars, flat, then decays past max_chars
    short = [reasoning_quality(_reasoned("singer name age country"[:k]), sql, schema_names=names) for k in (6, 11, 23)]
    assert short == sorted(short)
    grounded = "singer name age country. "
    lengths = [reasoning_quality(_reasoned(grounded * k), sql, schema_names=names) for k in (2, 20, 100, 400)]
    assert lengths[0] == lengths[1] == 1.0 and lengths[1] > lengths[2] > lengths[3] > 0.0
    for r in steps + [grounded * 400, "x"]:
        assert 0.0 <= reasoning_quality(_reasoned(r, sql), sql, schema_names=names) <= 1.0
    with pytest.raises(ValueError, match="min_chars"):
        reasoning_quality("x", sql, min_chars=10, max_chars=5)


def test_optional_components_weigh_nothing_by_default(breakdowns):
    assert "complexity" not in DEFAULT_WEIGHTS and "reasoning" not in DEFAULT_WEIGHTS
    cfg = RewardConfig(timeout_s=0.5)
    for b in breakdowns:
        comps = {k: v for k, v in b.components().items() if k not in ("complexity", "reasoning")}
        assert b.total == pytest.approx(
            RewardConfig(weights=dict(DEFAULT_WEIGHTS)).combine({**comps, "complexity": 0, "reasoning": 0})
        )
        assert 0.0 <= b.complexity <= 1.0 and 0.0 <= b.reasoning <= 1.0
    good = breakdowns[0]
    assert good.complexity == 1.0  # GOOD's SQL is the gold query
    assert good.reasoning > 0.0  # "order singers by age" names the age column
    shaped = RewardConfig(weights={"complexity": 1.0, "reasoning": 1.0}, normalize="none")
    assert shaped.bounds() == (0.0, 2.0)
    assert shaped.combine(good.components()) == pytest.approx(good.complexity + good.reasoning)
    assert cfg.bounds() == (0.0, 1.0)
    with pytest.raises(ValueError, match="complexity_sigma"):
        RewardConfig(complexity_sigma=0.0)
    with pytest.raises(ValueError, match="reasoning_min_chars"):
        RewardConfig(reasoning_min_chars=0)


def test_rewards_doctests():
    import doctest

    from evaluation.metrics import rewards
    result = doctest.testmod(rewards)
    assert result.attempted > 0 and result.failed == 0
