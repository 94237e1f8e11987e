"""What the schema knows about a name a query used and the database lacks.

SQLite's message for a misplaced or misspelt name says only ``no such column: T2.Name``. A small model
asked to fix its query from that text alone mostly fails: on the 2026-12-05 default run's 300 dev
questions the untrained Qwen2.5-Coder-0.5B one-shot agent had 109 execution errors, 100 of them
``no such column``, and the juniors' one repair from the bare message left 114-149 (per persona)
still failing. :func:`name_hint` adds the schema's answer -- which table the alias stands for and
its columns, which tables do have a column of that name, the closest spellings -- so the repair step
(a junior's fix, the senior's rewrite) sees where the name lives. This is execution feedback made
specific, in the spirit of execution-guided repair (Chen et al. 2023, "Teaching Large Language
Models to Self-Debug", which feeds the execution error back; here the error is resolved against the
schema first); the names come from :class:`tools.schema.Schema`, the query's tables from sqlglot's
parse tree.
"""

from __future__ import annotations

import difflib
import re

import sqlglot
from sqlglot import exp

from tools.schema import Schema

__all__ = ["missing_name", "name_hint", "query_tables"]

_MISSING = re.compile(r"no such (column|table): ([^\s,;]+)", re.IGNORECASE)

#: Columns of a table listed in a hint at most (the rest are counted).
MAX_LISTED = 14


def missing_name(error: str | None) -> tuple[str, str | None, str] | None:
    """The name an SQLite error says is missing: ``(kind, qualifier, name)`` or None.

    ``kind`` is ``"column"`` or ``"table"``; ``qualifier`` is the table or alias before the dot
    (None when the name was unqualified). Surrounding quotes are dropped.

    >>> missing_name("no such column: T2.Name")
    ('column', 'T2', 'Name')
    >>> missing_name("no such column: PetType")
    ('column', None, 'PetType')
    >>> missing_name("no such table: main.singers")
    ('table', 'main', 'singers')
    >>> missing_name("near \\"FROM\\": syntax error") is None
    True
    """
    m = _MISSING.search(error or "")
    if not m:
        return None
    kind, ref = m.group(1).lower(), m.group(2).strip("\"'`[]")
    qualifier, _, name = ref.rpartition(".")
    return kind, (qualifier.strip("\"'`[]") or None), name.strip("\"'`[]")


def query_tables(sql: str) -> dict[str, str]:
    """Every table the query reads, by each name it can be referred to (alias or own name,
    lower-cased) -> the table's name as written; ``{}`` when sqlglot cannot parse the query.

    >>> query_tables("SELECT T1.a FROM singer AS T1 JOIN concert T2 ON T1.id = T2.id")
    {'singer': 'singer', 't1': 'singer', 'concert': 'concert', 't2': 'concert'}
    >>> query_tables("SELECT (")
    {}
    """
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return {}
    found: dict[str, str] = {}
    for t in tree.find_all(exp.Table):
        if not t.name:
            continue
        found.setdefault(t.name.lower(), t.name)
        if t.alias:
            found[t.alias.lower()] = t.name
    return found


def _close(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Candidates spelled like ``name`` (difflib ratio >= 0.6, or one containing the other), best first.

    >>> _close("Age", ["pet_age", "PetID", "weight"])
    ['pet_age']
    >>> _close("Horsepower", ["Horsepower", "Accelerate"])
    ['Horsepower']
    """
    low = {c.lower(): c for c in candidates}
    key = name.lower()
    hits = difflib.get_close_matches(key, list(low), n=n, cutoff=0.6)
    hits += [c for c in low if c not in hits and (key in c or c in key) and min(len(key), len(c)) >= 3]
    return [low[c] for c in hits[:n]]


def _columns_text(schema: Schema, table: str) -> str:
    cols = [c.name for c in schema.table(table).columns]
    more = f", ... ({len(cols) - MAX_LISTED} more)" if len(cols) > MAX_LISTED else ""
    return ", ".join(cols[:MAX_LISTED]) + more


def _table_names(schema: Schema) -> dict[str, str]:
    return {t.name.lower(): t.name for t in schema.tables}


def _column_hint(sql: str, qualifier: str | None, name: str, schema: Schema) -> list[str]:
    tables = _table_names(schema)
    refs = query_tables(sql)
    in_query = [tables[t.lower()] for t in dict.fromkeys(refs.values()) if t.lower() in tables]
    owners = [t.name for t in schema.tables if any(c.name.lower() == name.lower() for c in t.columns)]
    parts: list[str] = []
    target = refs.get(qualifier.lower()) if qualifier else None
    if qualifier and target and target.lower() in tables:
        real = tables[target.lower()]
        alias = f"{qualifier} is {real}; " if qualifier.lower() != real.lower() else ""
        parts.append(f"{alias}{real} has no column {name} (its columns: {_columns_text(schema, real)}).")
    elif qualifier and qualifier.lower() in tables:
        parts.append(f"{qualifier} is not in the query's FROM clause.")
    elif qualifier:
        parts.append(f"{qualifier} is neither a table nor an alias of the query.")
    elif in_query:
        parts.append(f"none of the query's tables ({', '.join(in_query)}) has a column {name}.")
    if owners:
        parts.append(f"{name} is a column of {', '.join(owners)}.")
    near = [f"{t}.{c}" for t in (in_query or list(tables.values()))
            for c in _close(name, [col.name for col in schema.table(t).columns]) if c.lower() != name.lower()]
    if near:
        parts.append(f"Similar names: {', '.join(near[:4])}.")
    return parts


def name_hint(sql: str, error: str | None, schema: Schema) -> str | None:
    """A one-paragraph hint resolving a ``no such column`` / ``no such table`` error of ``sql``
    against ``schema``, or None for any other error (or nothing the schema can add).

    Args:
        sql: the query that failed (parsed with sqlglot's SQLite dialect; an unparsable query still
            gets the owners and close spellings of the name).
        error: the SQLite error message.
        schema: the database's schema (:func:`tools.schema.load_schema`).

    Returns:
        ``"Schema: ..."``, at most a few hundred characters (a table's columns are listed up to
        :data:`MAX_LISTED`), or None.
    """
    missing = missing_name(error)
    if missing is None:
        return None
    kind, qualifier, name = missing
    if kind == "table":
        tables = _table_names(schema)
        near = _close(name, list(tables.values()))
        listed = ", ".join(list(tables.values())[:MAX_LISTED])
        parts = [f"there is no table {name}."]
        parts.append(f"Similar: {', '.join(near)}." if near else f"The tables are: {listed}.")
    else:
        parts = _column_hint(sql, qualifier, name, schema)
    return ("Schema: " + " ".join(parts)) if parts else None
