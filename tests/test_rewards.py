"""Rewards: SQL extraction from raw model outputs, each component's range and ordering, and the
configurable total — on the real Spider concert_singer database."""

from __future__ import annotations

import sqlite3

import pytest

from evaluation.rewards import (
    COMPONENT_RANGES,
    RewardConfig,
    compute_reward,
    error_credit,
    extract_sql,
    format_ok,
    length_reward,
    result_jaccard,
    statement_type,
    statement_type_match,
)
from evaluation.ex import run_query
from tools.spider import BUNDLED_DATA_DIR

DB = BUNDLED_DATA_DIR / "database" / "concert_singer" / "concert_singer.sqlite"
GOLD = "SELECT name, country, age FROM singer ORDER BY age DESC"


# ---------------------------------------------------------------- extract_sql


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<reasoning>r</reasoning><sql>SELECT count(*) FROM singer;</sql>", "SELECT count(*) FROM singer"),
        ("<reasoning>r</reasoning><sql>```sql\nSELECT 1;\n```</sql>", "SELECT 1"),
        ("Here it is:\n```sql\nSELECT name FROM singer WHERE age > 30;\n```\nDone.", "SELECT name FROM singer WHERE age > 30"),
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


GOOD = "<reasoning>order singers by age, oldest first</reasoning><sql>SELECT name, country, age FROM singer ORDER BY age DESC</sql>"
OUTPUTS = [
    GOOD,
    "SELECT age, name, country FROM singer ORDER BY age DESC",  # right, unformatted
    "<reasoning>x</reasoning><sql>SELECT name, country, age FROM singer ORDER BY age</sql>",  # wrong order
    "<reasoning>x</reasoning><sql>SELECT name FROM singer</sql>",  # missing columns
    "<reasoning>x</reasoning><sql>SELECT * FROM singer</sql>",  # extra columns
    "<reasoning>x</reasoning><sql>SELECT nme FROM singer</sql>",  # no such column
    "<reasoning>x</reasoning><sql>SELECT singer_id FROM singer JOIN singer_in_concert ON singer.singer_id = singer_in_concert.singer_id</sql>",
    "<reasoning>x</reasoning><sql>SELEC name FROM singer</sql>",  # syntax
    "<reasoning>x</reasoning><sql>DROP TABLE singer</sql>",  # forbidden
    "<reasoning>x</reasoning><sql>WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n) SELECT count(*) FROM n</sql>",
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
