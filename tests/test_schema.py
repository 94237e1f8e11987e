"""Tests of tools/schema.py on real Spider databases (and small purpose-built ones)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tools import schema as sch
from tools.schema import load_schema, render_prompt, schema_prompt
from tools.spider import BUNDLED_DATA_DIR, DataError, load_examples

DB_DIR = BUNDLED_DATA_DIR / "database"
CONCERT = DB_DIR / "concert_singer" / "concert_singer.sqlite"


def _plain(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(sql).fetchall()


def test_concert_singer_tables_columns_keys():
    s = load_schema(CONCERT)
    assert s.db_id == "concert_singer" and s.path == CONCERT.resolve()
    assert s.table_names == ["stadium", "singer", "concert", "singer_in_concert"]
    singer = s.table("singer")
    assert singer.column_names == ["Singer_ID", "Name", "Country", "Song_Name", "Song_release_year", "Age", "Is_male"]
    assert [c.type.lower() for c in singer.columns] == ["int", "text", "text", "text", "text", "int", "bool"]
    assert singer.primary_key == ("Singer_ID",)
    assert s.table("SINGER_IN_CONCERT").primary_key == ("concert_ID", "Singer_ID")
    assert sorted(s.foreign_keys) == [
        ("concert", "Stadium_ID", "stadium", "Stadium_ID"),
        ("singer_in_concert", "Singer_ID", "singer", "Singer_ID"),
        ("singer_in_concert", "concert_ID", "concert", "concert_ID"),
    ]
    with pytest.raises(KeyError, match="tables: stadium, singer"):
        s.table("singers")


def test_samples_are_the_first_rows_of_each_table():
    s = load_schema(CONCERT, sample_rows=3)
    for t in s.tables:
        assert list(t.samples) == _plain(CONCERT, f'SELECT * FROM "{t.name}" LIMIT 3')
        assert len(t.samples) == 3
    assert load_schema(CONCERT, sample_rows=0).table("singer").samples == ()


def test_create_sql_is_the_stored_text():
    s = load_schema(CONCERT)
    stored = dict(_plain(CONCERT, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    for t in s.tables:
        assert t.create_sql == stored[t.name]


def test_internal_tables_are_left_out():
    s = load_schema(DB_DIR / "world_1" / "world_1.sqlite")
    assert "sqlite_sequence" not in s.table_names
    assert s.table_names == ["city", "country", "countrylanguage"]


def test_load_by_db_id_and_missing_database(tmp_path):
    assert load_schema("concert_singer").path == CONCERT.resolve()
    with pytest.raises(DataError, match="no database 'no_such_db'"):
        load_schema("no_such_db")
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(DataError, match="does not exist"):
        load_schema(missing)
    assert not missing.exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 200)
    with pytest.raises(ValueError, match="not an SQLite database"):
        load_schema(junk)


def test_cache_hit_and_invalidation_on_change(tmp_path):
    db = tmp_path / "c.sqlite"
    db.write_bytes(CONCERT.read_bytes())
    sch.clear_cache()
    first = load_schema(db)
    again = load_schema(db)
    assert again is first
    assert sch.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    schema_prompt(db)  # rendering reuses the cached read
    assert sch.cache_info()["misses"] == 1
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY)")
    os.utime(db, ns=(first_ns := db.stat().st_mtime_ns + 10**9, first_ns))  # a different mtime for sure
    changed = load_schema(db)
    assert changed is not first and "extra" in changed.table_names
    assert sch.cache_info()["size"] == 1  # the stale entry was dropped


def test_prompt_contains_stored_create_table_and_samples():
    text = schema_prompt(CONCERT)
    s = load_schema(CONCERT)
    for t in s.tables:
        assert t.create_sql in text
    assert "Singer_ID | Name | Country" in text
    assert "1 | Joe Sharp | Netherlands" in text
    assert text.count("/* 3 example rows from") == 4


def test_compact_prompt_is_shorter_and_keeps_keys():
    full = schema_prompt(CONCERT, sample_rows=0)
    compact = schema_prompt(CONCERT, sample_rows=0, compact=True)
    assert len(compact) < len(full)
    assert "create table singer (singer_id int primary key, name text, country text" in compact.lower()
    assert "PRIMARY KEY (concert_ID, Singer_ID)" in compact
    assert "FOREIGN KEY (Stadium_ID) REFERENCES stadium(Stadium_ID)" in compact
    assert compact.count("CREATE TABLE") == 4 and "/*" not in compact
    # the compact DDL is valid SQL that rebuilds the same tables, keys and foreign keys
    mem = sqlite3.connect(":memory:")
    mem.executescript(compact)
    for t in load_schema(CONCERT).tables:
        got = [(r[1], r[5]) for r in mem.execute(f'PRAGMA table_info("{t.name}")')]
        assert got == [(c.name, c.pk) for c in t.columns]


@pytest.mark.parametrize("budget", [400, 1500, 3000])
def test_max_chars_is_respected_on_every_dev_database(budget):
    db_ids = sorted({e.db_id for e in load_examples(split="dev")})
    assert len(db_ids) == 19
    for db_id in db_ids:
        text = schema_prompt(db_id, max_chars=budget)
        assert len(text) <= budget, db_id
        assert text.startswith("CREATE TABLE") or text.startswith("/*"), db_id


def test_shrinking_order_under_a_budget():
    s = load_schema(CONCERT, sample_rows=3)
    full = render_prompt(s)
    assert render_prompt(s, max_chars=len(full)) == full  # fits: unchanged
    one_row = render_prompt(s, compact=True, sample_rows=1)
    assert render_prompt(s, max_chars=len(one_row)) == one_row  # compact + 1 row fits
    no_rows = render_prompt(s, compact=True, sample_rows=0)
    assert render_prompt(s, max_chars=len(no_rows)) == no_rows
    cut = render_prompt(s, max_chars=len(no_rows) - 1)
    assert cut.endswith("/* 1 more table omitted: singer_in_concert */")
    assert "CREATE TABLE concert" in cut


def test_long_values_blobs_and_odd_names_are_rendered_safely(tmp_path):
    db = tmp_path / "odd.sqlite"
    with sqlite3.connect(db) as c:
        c.execute('CREATE TABLE "order" ("id" INTEGER PRIMARY KEY, "the text" TEXT, data BLOB)')
        c.execute('CREATE TABLE child (id INTEGER, oid INTEGER REFERENCES "order")')
        c.execute('INSERT INTO "order" VALUES (1, ?, ?)', ("x" * 500 + " */ DROP", b"\x00\x01\x02"))
    s = load_schema(db)
    assert s.foreign_keys == [("child", "oid", "order", "id")]  # REFERENCES without a column -> the pk
    text = schema_prompt(db, max_value_chars=20)
    assert "x" * 17 + "..." in text and "x" * 21 not in text
    assert "<blob 3 bytes>" in text
    compact = schema_prompt(db, compact=True, sample_rows=0)
    assert 'CREATE TABLE "order" (id INTEGER PRIMARY KEY, "the text" TEXT, data BLOB);' in compact
    assert 'FOREIGN KEY (oid) REFERENCES "order"(id)' in compact
    sqlite3.connect(":memory:").executescript(compact)  # still valid SQL


def test_every_bundled_database_loads():
    dbs = sorted(DB_DIR.glob("*/*.sqlite"))
    assert len(dbs) >= 160
    for db in dbs:
        s = load_schema(db, sample_rows=1)
        assert s.tables, db
        assert all(t.columns for t in s.tables), db


def test_bad_arguments():
    with pytest.raises(ValueError, match="sample_rows"):
        load_schema(CONCERT, sample_rows=-1)
    with pytest.raises(ValueError, match="max_chars"):
        schema_prompt(CONCERT, max_chars=0)
    with pytest.raises(ValueError, match="max_value_chars"):
        schema_prompt(CONCERT, max_value_chars=2)
