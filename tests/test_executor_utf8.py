"""The executor's function guards hold for text that is not valid UTF-8 (issue 22 item 6.5).

Python's ``sqlite3`` cannot hand such text to a Python function, so the linear-time ``trim``/
``instr``/``replace`` and the ``printf``/``format`` width guard (``tools.executor``, layer 5) cannot
receive it. A statement that gives them such text is rerun once with the guards in another form:
SQLite's own trim/instr/replace with every value limited to ``UTF8_RERUN_MAX_BYTES``, SQLite's own
printf where the format is a bounded literal, the Python guard for every other printf call. Hostile
statements are therefore refused by the guard, in milliseconds, with its own message, never by the
worker kill; the others still give SQLite's results. Real SQLite files, the real worker processes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tools import sql_functions
from tools.executor import execute_sql
from tools.sql_functions import guard_printf_calls
from tools.sql_results import ErrorCategory

#: Deadline of the hostile statements: long, so that a refusal by the guard (milliseconds) is told
#: apart from the deadline (a timeout after at least this long) by a wide margin.
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A database whose text column holds invalid UTF-8, as some scraped databases do."""
    p = tmp_path_factory.mktemp("utf8") / "bad.sqlite"
    with sqlite3.connect(p) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        c.execute("INSERT INTO t (v) VALUES (CAST(x'61ff62' AS TEXT)), (CAST(x'20c3a9ff20' AS TEXT)), ('plain')")
        c.execute("INSERT INTO t (v) VALUES (CAST(x'ff' || zeroblob(2000) AS TEXT))")  # over the small-operand size
    return p


def _sqlite(db: Path, sql: str) -> tuple[list[str], list[tuple]]:
    with sqlite3.connect(db) as plain:
        plain.text_factory = lambda b: b.decode("utf-8", "replace")  # as the executor reads invalid text back
        cur = plain.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()


HOSTILE_PRINTF = [
    "SELECT printf('%.*c', 1000000000, CAST(X'FF' AS TEXT))",
    "SELECT printf('%.*c', 2000000000, CAST(x'ff' AS TEXT))",
    "SELECT format('%.*c%s', 2000000000, 'x', CAST(x'61ff' AS TEXT))",
    "SELECT \"PRINTF\"(char(37, 46, 42, 99), 2000000000, CAST(x'ff' AS TEXT))",  # quoted name, format built
    "SELECT printf /* a comment */ ('%.2000000000c', v) FROM t",  # the column's invalid text
    "SELECT printf('%' || '.*c', 2000000000, v) FROM t",
]


@pytest.mark.parametrize("sql", HOSTILE_PRINTF)
def test_printf_with_invalid_utf8_and_a_huge_width_is_refused_by_the_guard(db: Path, sql: str) -> None:
    r = execute_sql(db, sql, timeout_s=TIMEOUT_S)
    assert not r.ok and r.category == ErrorCategory.OTHER, r
    assert r.message.startswith("printf()/format() refused: an argument is text that is not valid UTF-8"), r
    assert "CAST that argument AS BLOB" in r.message
    assert r.elapsed_ms < 1000 * TIMEOUT_S / 4, r  # the guard, not the deadline or the kill


HOSTILE_TRIM = [
    # 200,001 x 20,001 comparisons in SQLite's own trim, were the values allowed to get that long
    "SELECT length(trim(replace(hex(zeroblob(100000)), '0', 'a') || CAST(x'ff' AS TEXT), "
    "replace(hex(zeroblob(10000)), '0', 'b') || 'a'))",
    "SELECT instr(replace(hex(zeroblob(100000)), '0', 'a') || CAST(x'ff' AS TEXT), "
    "replace(hex(zeroblob(10000)), '0', 'a') || 'b')",
    "SELECT length(replace(v || replace(hex(zeroblob(50000)), '0', 'a'), 'a', 'bb')) FROM t",
]


@pytest.mark.parametrize("sql", HOSTILE_TRIM)
def test_trim_on_a_huge_string_with_an_invalid_byte_is_refused_by_the_guard(db: Path, sql: str) -> None:
    r = execute_sql(db, sql, timeout_s=TIMEOUT_S)
    assert not r.ok and r.category == ErrorCategory.OTHER, r
    assert r.message.startswith("string or blob too big: text that is not valid UTF-8 reached trim()"), r
    assert f"limited to {sql_functions.UTF8_RERUN_MAX_BYTES} bytes" in r.message
    assert r.elapsed_ms < 1000 * TIMEOUT_S / 4, r


_BAD = "CAST(x'61ff62' AS TEXT)"

SAME_AS_SQLITE = [
    f"SELECT replace({_BAD}, 'a', 'x'), trim({_BAD}, 'ab'), ltrim({_BAD}, 'a'), rtrim({_BAD}, 'b'), "
    f"trim(' ' || {_BAD} || ' '), instr({_BAD}, 'b'), printf('%s|%5s', {_BAD}, 'z'), format('%q', {_BAD})",
    "SELECT id, trim(v), ltrim(v, 'a'), instr(v, 'b'), replace(v, 'a', 'A'), length(trim(v, char(0))) "
    "FROM t ORDER BY id",
    # bounded literal formats run as SQLite's; the '*' one keeps the Python guard, on valid text
    f"SELECT printf('%.*c', 5, 'z'), printf('%*d|%-*d', 4, 7, 3, 8), printf('%s', {_BAD}), printf('%.3s', v) FROM t",
    f"SELECT \"FORMAT\"('%5s', {_BAD}), [printf]('%d%%', 50), printf(12), printf(NULL), printf('%s', v) FROM t",
]


@pytest.mark.parametrize("sql", SAME_AS_SQLITE)
def test_other_statements_with_invalid_utf8_still_give_sqlites_results(db: Path, sql: str) -> None:
    columns, rows = _sqlite(db, sql)
    r = execute_sql(db, sql, timeout_s=TIMEOUT_S)
    assert r.ok, r
    assert (r.columns, r.rows) == (columns, rows)  # column names too: the renamed calls' names are put back


def test_valid_text_keeps_the_first_pass_guards(db: Path) -> None:
    """Valid UTF-8 never reaches the rerun: the guard still refuses a huge width with its first-pass
    message, and large operands still take the linear-time path (no 4096-byte limit)."""
    r = execute_sql(db, "SELECT printf('%.*c', 2000000000, 'x')", timeout_s=TIMEOUT_S)
    assert not r.ok and "too big (result of printf()/format() exceeds" in r.message, r
    r = execute_sql(db, "SELECT length(trim(replace(hex(zeroblob(100000)), '0', 'a') || 'x', 'a'))")
    assert r.ok and r.rows == [(1,)], r


def test_guard_printf_calls_renames_only_the_unbounded_calls() -> None:
    sql = ("SELECT printf('%d', a), printf('%.*c', n, 'x'), \"format\"('%5000c', 'y'), format FROM t "
           "WHERE printf(fmt, b) = 'printf(' -- printf('%.*c', 9, 'z')")
    rewritten, names = guard_printf_calls(sql, 4096)
    assert names == {"sqlsociety_guarded_printf_0_": "printf", "sqlsociety_guarded_printf_1_": '"format"',
                     "sqlsociety_guarded_printf_2_": "printf"}
    assert rewritten == (
        "SELECT printf('%d', a), sqlsociety_guarded_printf_0_('%.*c', n, 'x'), sqlsociety_guarded_printf_1_('%5000c', "
        "'y'), format FROM t WHERE sqlsociety_guarded_printf_2_(fmt, b) = 'printf(' -- printf('%.*c', 9, 'z')"
    )
    assert guard_printf_calls("SELECT printf('it''s %5d', 1)", 4096) == ("SELECT printf('it''s %5d', 1)", {})
