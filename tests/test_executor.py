"""Tests of the safe SQL executor (tools/executor.py) on real Spider databases.

The hostile corpus runs against copies of real Spider databases and once against the
bundled originals; after each run every database file must hash the same and no file
may have appeared.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from executor_clock import call_cost_s

from tools import executor as ex
from tools import sandbox, sql_results
from tools.executor import execute_sql, result_digest
from tools.spider import BUNDLED_DATA_DIR, load_examples
from tools.sql_results import ErrorCategory, ExecutionError, ExecutionResult

DB_DIR = BUNDLED_DATA_DIR / "database"
CONCERT = DB_DIR / "concert_singer" / "concert_singer.sqlite"
WORLD = DB_DIR / "world_1" / "world_1.sqlite"

F, T, O, S = ErrorCategory.FORBIDDEN, ErrorCategory.TIMEOUT, ErrorCategory.OTHER, ErrorCategory.SYNTAX
OK = "ok"  # the statement may finish (a CPU bomb that the linear-time functions defuse)

#: Hostile timeout (seconds) and the allowed overshoot past it. The overshoot is generous
#: because two cores are shared with other jobs; bench/executor.py measures the real one.
HOSTILE_TIMEOUT_S = 0.5
SLACK_S = 1.0
#: Where a call overshoots SLACK_S (a slower or loaded machine), the slack becomes this many times
#: the machine's own fixed cost of a call measured right then (:func:`executor_clock.call_cost_s`), as in
#: tests/test_executor_hostile.py: a deadline that failed (seconds, or never) still fails the test.
SLACK_FACTOR = 10
#: Deadline for statements that must complete (their subject is a result or an error category,
#: not the deadline): long, so that a slow or loaded machine cannot turn them into a timeout.
WORK_TIMEOUT_S = 60.0

_BIG_A = "replace(hex(zeroblob(100000)), '0', 'a')"  # 200,000 x 'a' (under the 256 KiB value cap)
_BIG_B = "replace(hex(zeroblob(100000)), '0', 'b')"
_INF = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r)"

#: (statement, allowed outcomes). ``{evil}`` is a file path that must never be created,
#: ``{t}`` a table of the target database.
HOSTILE: list[tuple[str, set]] = [
    # writes
    ("DROP TABLE {t}", {F}),
    ("DROP TABLE IF EXISTS {t}", {F}),
    ("DELETE FROM {t}", {F}),
    ("UPDATE {t} SET rowid = rowid + 1000", {F}),
    ("INSERT INTO {t} DEFAULT VALUES", {F}),
    ("INSERT INTO {t} SELECT * FROM {t}", {F}),
    ("REPLACE INTO {t} SELECT * FROM {t}", {F}),
    ("INSERT OR REPLACE INTO {t} SELECT * FROM {t} LIMIT 1", {F}),
    ("WITH x AS (SELECT 1) DELETE FROM {t}", {F}),
    ("WITH x AS (SELECT 1) UPDATE {t} SET rowid = -rowid", {F}),
    ("WITH x AS (SELECT * FROM {t}) INSERT INTO {t} SELECT * FROM x", {F}),
    ("EXPLAIN DELETE FROM {t}", {F}),
    # schema changes, temp objects included
    ("CREATE TABLE evil (x)", {F}),
    ("CREATE TABLE evil AS SELECT * FROM {t}", {F}),
    ("CREATE INDEX evil_idx ON {t} (rowid)", {F}),
    ("CREATE TRIGGER evil AFTER UPDATE ON {t} BEGIN DELETE FROM {t}; END", {F}),
    ("CREATE VIEW evil AS SELECT 1", {F}),
    ("CREATE TEMP TABLE evil AS SELECT * FROM {t}", {F}),
    ("CREATE TEMP VIEW evil AS SELECT 1", {F}),
    ("CREATE TEMP TRIGGER evil AFTER DELETE ON {t} BEGIN SELECT 1; END", {F}),
    ("CREATE VIRTUAL TABLE evil USING fts4(x)", {F}),
    ("ALTER TABLE {t} ADD COLUMN evil TEXT", {F}),
    ("ALTER TABLE {t} RENAME TO evil", {F}),
    ("DROP INDEX IF EXISTS sqlite_autoindex_x_1", {F}),
    # other files
    ("ATTACH DATABASE '{evil}' AS evil", {F}),
    ("ATTACH ':memory:' AS mem", {F}),
    ("DETACH DATABASE main", {F}),
    ("VACUUM", {F}),
    ("VACUUM INTO '{evil}'", {F}),
    ("SELECT load_extension('{evil}')", {F}),
    ("SELECT load_extension('libc.so.6', 'system')", {F}),
    ("SELECT fts3_tokenizer('simple')", {F}),
    ("SELECT writefile('{evil}', 'x')", {F, S}),
    # pragmas, reading ones too
    ("PRAGMA writable_schema = 1", {F}),
    ("PRAGMA writable_schema = ON", {F}),
    ("PRAGMA journal_mode = DELETE", {F}),
    ("PRAGMA journal_mode = WAL", {F}),
    ("PRAGMA query_only = 0", {F}),
    ("PRAGMA user_version = 42", {F}),
    ("PRAGMA schema_version = 1", {F}),
    ("PRAGMA foreign_keys = ON", {F}),
    ("PRAGMA table_info({t})", {F}),
    ("SELECT * FROM pragma_table_info('{t}')", {F}),
    ("REINDEX", {F}),
    ("ANALYZE", {F}),
    # transactions
    ("BEGIN", {F}),
    ("BEGIN EXCLUSIVE", {F}),
    ("BEGIN IMMEDIATE", {F}),
    ("COMMIT", {F}),
    ("ROLLBACK", {F}),
    ("SAVEPOINT sp", {F}),
    ("RELEASE sp", {F}),
    # more than one statement
    ("SELECT 1; DROP TABLE {t}", {F}),
    ("SELECT 1; SELECT 2", {F}),
    ("SELECT 1;\nDELETE FROM {t};", {F}),
    # runaway work
    (f"{_INF} SELECT count(*) FROM r", {T}),
    (f"{_INF} SELECT i FROM r ORDER BY i DESC LIMIT 1", {T}),
    ("SELECT count(*) FROM " + ", ".join(f"{{t}} t{i}" for i in range(12)), {T}),
    ("SELECT t0.rowid FROM " + ", ".join(f"{{t}} t{i}" for i in range(10)) + " ORDER BY random() LIMIT 1", {T}),
    (f"{_INF} SELECT count(DISTINCT randomblob(1000)) FROM r", {T}),
    (f"{_INF} SELECT length(json_group_array(hex(randomblob(1000)))) FROM r", {T, O}),  # O: worker heap limit
    # huge values
    ("SELECT randomblob(2000000000)", {O}),
    ("SELECT randomblob(2e9)", {O}),
    ("SELECT zeroblob(2000000000)", {O}),
    ("SELECT length(zeroblob(1e12))", {O}),
    ("SELECT printf('%.*c', 2000000000, 'x')", {O}),
    ("SELECT format('%.2000000000c', 'x')", {O}),
    ("SELECT printf('%' || 'x' || '%.200000c%.200000c', 'a', 'b')", {O}),
    ("SELECT printf('%*d', 2000000000, 1)", {O}),
    ("WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT length(s) FROM r", {O}),
    (f"{_INF} SELECT length(group_concat(hex(randomblob(10000)))) FROM r", {O, T}),
    (f"SELECT replace({_BIG_A}, 'a', {_BIG_A})", {O}),
    ("SELECT replace(replace(replace(hex(zeroblob(10000)), '0', '0000'), '0', '0000'), '0', '0000')", {O}),
    ("SELECT upper(hex(randomblob(200000)))", {O}),
    # single-instruction CPU bombs (quadratic built-ins): must still end in time
    (f"SELECT length(trim({_BIG_A}, {_BIG_B} || 'a'))", {OK}),
    (f"SELECT length(ltrim({_BIG_A}, {_BIG_B} || 'a'))", {OK}),
    (f"SELECT length(rtrim({_BIG_A}, {_BIG_B} || 'a'))", {OK}),
    (f"SELECT instr({_BIG_A}, substr({_BIG_A}, 1, 100000) || 'b')", {OK}),
    (f"SELECT {_BIG_A} LIKE '%' || substr({_BIG_A}, 1, 98) || 'b'", {OK}),
    (f"SELECT {_BIG_A} GLOB '*' || substr({_BIG_A}, 1, 98) || 'b'", {OK}),
    (f"SELECT {_BIG_A} LIKE '%' || substr({_BIG_A}, 1, 5000) || 'b'", {O}),
    (f"SELECT {_BIG_A} GLOB '*' || substr({_BIG_A}, 1, 5000) || 'b'", {O}),
    (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 10000), "
        "a AS MATERIALIZED (SELECT json_group_object('k' || i, i) AS o FROM r), "
        "b AS MATERIALIZED (SELECT json_group_object('j' || i, i) AS o FROM r) "
        "SELECT length(json_patch(a.o, b.o)) FROM a, b",
        {OK, T},  # SQLite's own json_patch (exact semantics): quadratic, ended by the worker deadline
    ),
    # parser limits and junk
    ("SELECT " + "1+" * 60_000 + "1", {O}),
    ("SELECT " + "(" * 5000 + "1" + ")" * 5000, {O, S}),
    ("SELECT 1\x00; DROP TABLE {t}", {S, F}),
    ("SELECT '\ud800'", {S, O}),
]


def _hash_tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _first_table(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid").fetchone()[0]


def _overshoot(db: Path, wall: float, timeout_s: float) -> str | None:
    """None when ``wall`` meets the deadline ``timeout_s`` closely: within SLACK_S, or where this
    machine is slower or busier now, within SLACK_FACTOR times its fixed cost of a call measured
    at once; else why not."""
    if wall <= timeout_s + SLACK_S:
        return None
    cost = call_cost_s(db)
    slack = max(SLACK_S, SLACK_FACTOR * cost)
    if wall <= timeout_s + slack:
        return None
    return (f"ran {wall:.2f} s, timeout was {timeout_s} s; a trivial call on a fresh worker takes "
            f"{cost * 1000:.0f} ms here now, so the bound was timeout_s + {slack:.2f} s")


def _run_corpus(db: Path, evil: Path) -> list[str]:
    """Run every hostile statement on ``db``; return a list of failure descriptions."""
    table = _first_table(db)
    failures = []
    for template, allowed in HOSTILE:
        sql = template.replace("{t}", f'"{table}"').replace("{evil}", str(evil))
        t0 = time.monotonic()
        r = execute_sql(db, sql, timeout_s=HOSTILE_TIMEOUT_S)
        wall = time.monotonic() - t0
        outcome = OK if r.ok else r.category
        if outcome not in allowed:
            failures.append(f"{sql[:90]!r}: got {outcome} ({getattr(r, 'message', '')}), want {allowed}")
        late = _overshoot(db, wall, HOSTILE_TIMEOUT_S)
        if late:
            failures.append(f"{sql[:90]!r}: {late}")
        if evil.exists():
            failures.append(f"{sql[:90]!r}: created {evil}")
    return failures


def test_hostile_corpus_has_at_least_30_statements():
    assert len(HOSTILE) >= 30
    assert len({s for s, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("db_id", ["concert_singer", "world_1", "car_1"])
def test_hostile_corpus_on_copies(tmp_path, db_id):
    """Every hostile statement is refused or stopped in time; the copy is byte-identical afterwards."""
    work = tmp_path / db_id
    work.mkdir()
    db = work / f"{db_id}.sqlite"
    db.write_bytes((DB_DIR / db_id / f"{db_id}.sqlite").read_bytes())
    before = _hash_tree(tmp_path)
    failures = _run_corpus(db, evil=work / "evil.sqlite")
    assert failures == []
    assert _hash_tree(tmp_path) == before  # same files, same bytes, nothing new (no -journal, no evil.sqlite)


def test_hostile_corpus_on_bundled_originals():
    """One run against the bundled databases in place: all 160+ files unchanged, none added."""
    before = _hash_tree(DB_DIR)
    failures = []
    for db_id in ("concert_singer", "world_1"):
        failures += _run_corpus(DB_DIR / db_id / f"{db_id}.sqlite", evil=DB_DIR / db_id / "evil.sqlite")
    ex.close_connections()
    assert failures == []
    assert _hash_tree(DB_DIR) == before


def test_hostile_corpus_in_a_fresh_process_exits_cleanly(tmp_path):
    """The whole corpus in a child interpreter: it stays up and exits 0 (no crash, no abort)."""
    db = tmp_path / "concert_singer.sqlite"
    db.write_bytes(CONCERT.read_bytes())
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from test_executor import _run_corpus
        from pathlib import Path
        f = _run_corpus(Path({str(db)!r}), Path({str(tmp_path / 'evil.db')!r}))
        print(len(f)); sys.exit(1 if f else 0)
        """
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hashlib.sha256(db.read_bytes()).digest() == hashlib.sha256(CONCERT.read_bytes()).digest()


# --------------------------------------------------------------------------- normal queries


def _oracle(db: Path, sql: str) -> tuple[list[str], list[tuple]]:
    """The same query on a plain sqlite3 connection (no executor)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        cur = c.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()


def test_concert_singer_dev_gold_queries_match_plain_sqlite():
    examples = load_examples(split="dev", db_ids={"concert_singer"})
    assert len(examples) == 45
    for e in examples:
        r = execute_sql(e.db_path, e.gold_sql)
        assert isinstance(r, ExecutionResult), (e.gold_sql, r)
        cols, rows = _oracle(e.db_path, e.gold_sql)
        assert (r.columns, r.rows, r.truncated) == (cols, rows, False), e.gold_sql
        assert all(type(row) is tuple for row in r.rows)
        assert r.elapsed_ms > 0


def test_known_values_of_concert_singer():
    r = execute_sql(CONCERT, "SELECT count(*) FROM singer")
    assert r.rows == [(6,)] and r.columns == ["count(*)"]
    r = execute_sql(CONCERT, 'SELECT "Name", "Country" FROM singer WHERE "Singer_ID" = 1')
    assert r.rows == [("Joe Sharp", "Netherlands")]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM singer;",
        "SELECT count(*) FROM singer ;  ",
        "SELECT count(*) FROM singer;;",
        "SELECT count(*) FROM singer -- trailing comment",
        "SELECT count(*) FROM singer; -- trailing comment",
        "/* leading */ SELECT count(*) FROM singer /* inner */ ; /* trailing */",
        "\n  select COUNT(*)\n  from singer\n",
    ],
)
def test_single_statement_with_semicolons_and_comments_runs(sql):
    r = execute_sql(CONCERT, sql)
    assert r.ok and r.rows == [(6,)], r


def test_row_cap_sets_truncated():
    total = execute_sql(WORLD, "SELECT count(*) FROM city").rows[0][0]
    assert total == 4079
    r = execute_sql(WORLD, "SELECT Name FROM city", max_rows=100)
    assert r.ok and len(r.rows) == 100 and r.truncated
    r = execute_sql(WORLD, "SELECT Name FROM city", max_rows=total)
    assert r.ok and len(r.rows) == total and not r.truncated
    r = execute_sql(WORLD, "SELECT Name FROM city", max_rows=total + 1)
    assert len(r.rows) == total and not r.truncated


def test_result_byte_cap_sets_truncated():
    r = execute_sql(WORLD, "SELECT hex(randomblob(50000)) FROM city", max_result_bytes=1_000_000)
    assert r.ok and r.truncated and 10 <= len(r.rows) < 20


@pytest.mark.parametrize(
    "sql, category",
    [
        ("SELEC Name FROM singer", ErrorCategory.SYNTAX),
        ("SELECT Name FROM singer WHERE", ErrorCategory.SYNTAX),
        ("SELECT 'unterminated FROM singer", ErrorCategory.SYNTAX),
        ("SELECT YEAR(Song_release_year) FROM singer", ErrorCategory.SYNTAX),
        ("", ErrorCategory.SYNTAX),
        (" ; -- nothing", ErrorCategory.SYNTAX),
        ("SELECT * FROM singers", ErrorCategory.NO_SUCH_TABLE),
        ("SELECT T1.Name FROM singer AS T1 JOIN concerts AS T2", ErrorCategory.NO_SUCH_TABLE),
        ("SELECT Nme FROM singer", ErrorCategory.NO_SUCH_COLUMN),
        ("SELECT T2.Name FROM singer AS T1", ErrorCategory.NO_SUCH_COLUMN),
        ("SELECT Singer_ID FROM singer JOIN singer_in_concert ON 1", ErrorCategory.AMBIGUOUS_COLUMN),
        (f"{_INF} SELECT max(i) FROM r", ErrorCategory.TIMEOUT),
        ("DELETE FROM singer", ErrorCategory.FORBIDDEN),
        ("SELECT 1; SELECT 2", ErrorCategory.FORBIDDEN),
        ("SELECT count(*) FROM singer GROUP BY count(*)", ErrorCategory.OTHER),
        ("SELECT Name FROM singer UNION SELECT Name, Age FROM singer", ErrorCategory.OTHER),
        ("SELECT randomblob(1e9)", ErrorCategory.OTHER),
    ],
)
def test_each_error_category_for_real(sql, category):
    r = execute_sql(CONCERT, sql, timeout_s=0.3 if category == ErrorCategory.TIMEOUT else WORK_TIMEOUT_S)
    assert isinstance(r, ExecutionError), r
    assert r.category == category, r
    assert r.message and r.elapsed_ms >= 0


def test_timeout_is_met_closely():
    """The runaway statement ends by its deadline, no sooner and closely after it: within SLACK_S,
    or a slack scaled by this machine's fixed cost of a call measured right then (:func:`_overshoot`)."""
    assert execute_sql(CONCERT, "SELECT 1").ok  # a ready worker: the deadline does not count a start-up
    r = execute_sql(CONCERT, f"{_INF} SELECT count(*) FROM r", timeout_s=0.2)
    assert r.category == ErrorCategory.TIMEOUT, r
    assert r.elapsed_ms >= 200
    ok = execute_sql(CONCERT, "SELECT count(*) FROM singer")  # the same cached connection works afterwards
    assert ok.ok and ok.rows == [(6,)]
    late = _overshoot(CONCERT, r.elapsed_ms / 1000, 0.2)  # measures the reference (new workers) only if needed
    assert late is None, late


def test_categorize_error_messages():
    c = sql_results.categorize_error
    assert c('near "FORM": syntax error') == ErrorCategory.SYNTAX
    assert c("no such table: main.singers") == ErrorCategory.NO_SUCH_TABLE
    assert c("no such column: T1.nme") == ErrorCategory.NO_SUCH_COLUMN
    assert c("ambiguous column name: Singer_ID") == ErrorCategory.AMBIGUOUS_COLUMN
    assert c("interrupted", timed_out=True) == ErrorCategory.TIMEOUT
    assert c("interrupted") == ErrorCategory.OTHER
    assert c("not authorized") == ErrorCategory.FORBIDDEN
    assert c("attempt to write a readonly database") == ErrorCategory.FORBIDDEN
    assert c("string or blob too big") == ErrorCategory.OTHER


# --------------------------------------------------------------------------- values


def _make_db(path: Path, rows: list[tuple]) -> Path:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        c.executemany("INSERT INTO t (v) VALUES (?)", [(r,) for r in rows])
    return path


def test_blobs_returned_as_bytes_and_bad_utf8_tolerated(tmp_path):
    db = _make_db(tmp_path / "v.sqlite", [b"\x00\xffbin", 1.5, None, "text"])
    with sqlite3.connect(db) as c:  # text with invalid UTF-8, as some scraped databases have
        c.execute("INSERT INTO t (v) VALUES (CAST(X'61ff62' AS TEXT))")
    r = execute_sql(db, "SELECT v FROM t WHERE id <= 4 ORDER BY id")
    assert r.rows == [(b"\x00\xffbin",), (1.5,), (None,), ("text",)]
    r = execute_sql(db, "SELECT v FROM t ORDER BY id")
    assert r.ok and r.rows[4] == ("a\ufffdb",) and r.rows[0] == (b"\x00\xffbin",)


def test_string_function_overrides_keep_sqlite_semantics():
    sql = (
        "SELECT trim('  x  '), trim('xxaxx', 'x'), ltrim('  a'), rtrim('a  '), ltrim(12.50, '1'), "
        "instr('hello', 'l'), instr(X'0102', X'02'), instr(NULL, 'a'), replace('abc', 'b', 'XY'), "
        "replace('abc', '', 'z'), replace(12.0, '.', ','), trim(NULL), replace('a', 'a', NULL), "
        "printf('%5.2f|%-4s|%d', 3.14159, 'ab', 7), format('%q', 'it''s'), "
        "json_patch('{\"a\":1,\"b\":{\"c\":2}}', '{\"b\":{\"c\":null,\"d\":3},\"e\":4}')"
    )
    with sqlite3.connect(":memory:") as plain:
        expected = plain.execute(sql).fetchall()
    assert execute_sql(CONCERT, sql).rows == expected
    mid = "replace(hex(zeroblob(25000)), '0', 'a')"  # 50,000 x 'a': the linear-time path
    big = execute_sql(CONCERT, f"SELECT length(trim({mid} || 'xyz' || {mid}, 'a')), instr({_BIG_A} || 'b', 'ab')")
    assert big.rows == [(3, 200_000)], big
    patch = execute_sql(
        CONCERT,
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300) "
        "SELECT json_patch((SELECT json_group_object('k' || i, i) FROM r), '{\"k1\":null,\"z\":[1,2]}')",
    )
    merged = json.loads(patch.rows[0][0])
    assert len(merged) == 300 and "k1" not in merged and merged["z"] == [1, 2] and merged["k300"] == 300


def test_cached_connection_sees_a_changed_file(tmp_path):
    db = _make_db(tmp_path / "c.sqlite", [1])
    assert execute_sql(db, "SELECT count(*) FROM t").rows == [(1,)]
    time.sleep(0.01)
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO t (v) VALUES (2)")
    assert execute_sql(db, "SELECT count(*) FROM t").rows == [(2,)]


def test_one_connection_per_call_mode_gives_the_same_results(monkeypatch):
    sql = "SELECT Name FROM singer ORDER BY Age"
    cached = execute_sql(CONCERT, sql)
    monkeypatch.setattr(sandbox, "REUSE_CONNECTIONS", False)
    assert execute_sql(CONCERT, sql).rows == cached.rows
    assert execute_sql(CONCERT, "DROP TABLE singer").category == ErrorCategory.FORBIDDEN


# --------------------------------------------------------------------------- bad input


def test_missing_db_path_raises_and_creates_nothing(tmp_path):
    missing = tmp_path / "nope" / "missing.sqlite"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        execute_sql(missing, "SELECT 1")
    missing2 = tmp_path / "missing.sqlite"
    with pytest.raises(FileNotFoundError):
        execute_sql(missing2, "SELECT 1")
    assert not missing2.exists() and list(tmp_path.iterdir()) == []


def test_directory_and_non_database_paths_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        execute_sql(tmp_path, "SELECT 1")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(ValueError, match="not an SQLite database"):
        execute_sql(junk, "SELECT * FROM t")


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="sql must be a str"):
        execute_sql(CONCERT, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        execute_sql(CONCERT, "SELECT 1", timeout_s=0)
    with pytest.raises(ValueError, match="max_rows"):
        execute_sql(CONCERT, "SELECT 1", max_rows=0)


# --------------------------------------------------------------------------- concurrency

_MIX = [
    (CONCERT, "SELECT Name, Age FROM singer ORDER BY Age"),
    (CONCERT, "SELECT count(*) FROM concert JOIN stadium USING (Stadium_ID)"),
    (CONCERT, "SELECT nope FROM singer"),
    (CONCERT, "DROP TABLE singer"),
    (WORLD, "SELECT Continent, count(*) FROM country GROUP BY Continent ORDER BY Continent"),
    (WORLD, "SELECT Name FROM city WHERE Population > 5000000 ORDER BY Name"),
    (WORLD, f"{_INF} SELECT count(*) FROM r"),
]


def _summary(db: Path, sql: str) -> tuple:
    r = execute_sql(db, sql, timeout_s=0.3 if sql.startswith(_INF) else WORK_TIMEOUT_S)  # only _INF times out
    return ("ok", r.columns, r.rows) if r.ok else ("error", r.category.value)


def test_many_threads_at_once():
    serial = [_summary(db, sql) for db, sql in _MIX]
    jobs = _MIX * 12
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda job: _summary(*job), jobs))
    assert got == serial * 12


def test_many_processes_at_once():
    _summary(CONCERT, "SELECT 1")  # a cached connection in the parent, to check fork safety
    serial = [_summary(db, sql) for db, sql in _MIX]
    jobs = _MIX * 4
    with ProcessPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(_summary, [d for d, _ in jobs], [s for _, s in jobs]))
    assert got == serial * 4


# --------------------------------------------------------------------------- digests


def test_result_digest_is_an_order_insensitive_multiset_hash():
    a = [(1, "x"), (2, "y"), (2, "y")]
    assert result_digest(a) == result_digest(list(reversed(a)))
    assert result_digest(a) != result_digest([(1, "x"), (2, "y")])  # multiplicity counts
    assert result_digest([(1, "x")]) != result_digest([("x", 1)])  # column order counts
    assert result_digest([(1, 2.0)]) == result_digest([(1.0, 2)])  # SQLite's 1 == 1.0
    assert result_digest([("1",)]) != result_digest([(1,)])
    assert result_digest([(0.1 + 0.2,)]) == result_digest([(0.3,)])
    assert result_digest([(None, b"\x00")]) == result_digest([(None, b"\x00")])
    assert result_digest([]) != result_digest([()])
    assert len(result_digest(a)) == 64


def test_result_digest_is_stable_across_processes():
    rows = execute_sql(CONCERT, "SELECT * FROM singer").rows
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(result_digest, rows).result()
    code = "from tools.executor import result_digest; print(result_digest([(1, 'a'), (2.5, None)]))"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(root)},
    ).stdout.strip()
    assert remote == result_digest(rows)
    assert out == result_digest([(2.5, None), (1, "a")])
