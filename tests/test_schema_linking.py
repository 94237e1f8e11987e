"""Schema linking on real Spider schemas and gold queries (tools.schema_linking)."""

from __future__ import annotations

import doctest

import pytest

from tools import schema_linking
from tools.schema import load_schema
from tools.schema_linking import link_tables, sql_tables_columns
from tools.spider import load_examples


def test_doctests():
    assert doctest.testmod(schema_linking).failed == 0


def test_links_the_gold_tables_of_real_train_questions():
    """On the first 40 train questions (3 databases), the tables each gold query reads are kept with
    neighbours=1, and some question gets a shorter table list than its database has."""
    shorter = 0
    for e in load_examples(split="train", limit=40):
        schema = load_schema(e.db_path, sample_rows=0)
        tables = {t.name: t.column_names for t in schema.tables}
        kept = link_tables(e.question, tables, schema.foreign_keys, neighbours=1)
        gold, _ = sql_tables_columns(e.gold_sql)
        assert gold <= {t.lower() for t in kept}, (e.id, e.question, e.gold_sql, kept)
        assert kept == [t for t in tables if t in kept]  # schema order
        shorter += len(kept) < len(tables)
    assert shorter > 0


def test_bad_input():
    with pytest.raises(ValueError, match="neighbours must be 0 or 1"):
        link_tables("q", {"t": ["a"]}, neighbours=2)
    with pytest.raises(ValueError, match="no tables"):
        link_tables("q", {})
    import sqlglot

    with pytest.raises(sqlglot.errors.ParseError):
        sql_tables_columns("SELECT FROM WHERE (")
