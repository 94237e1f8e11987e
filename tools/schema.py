"""Database schema inspection and the prompt-ready schema text the agents see.

For one SQLite database: tables (and views) with their columns and declared types,
primary keys, foreign keys and a few sample rows, plus :func:`schema_prompt`, which
renders them as the ``CREATE TABLE`` statements stored in ``sqlite_master`` followed
by sample rows in SQL comments. The agents are small models (0.5B, ~4k tokens of
context), so :func:`schema_prompt` also has a compact form and a ``max_chars`` budget.

Results are cached per database, keyed by resolved path, modification time and size,
so a changed file is re-read. Inspection uses a read-only connection
(:func:`tools.sandbox.open_readonly`) and only project-written SQL.

Example::

    >>> s = load_schema("concert_singer")           # a db_id of the bundled Spider, or a path
    >>> s.table("singer").primary_key
    ('Singer_ID',)
    >>> print(schema_prompt("concert_singer", compact=True, sample_rows=1))
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.sandbox import open_readonly
from tools.spider import resolve_database

#: Default number of sample rows per table.
DEFAULT_SAMPLE_ROWS = 3
#: Default cap on the characters of one sample value in the prompt (longer ones end with "...").
DEFAULT_MAX_VALUE_CHARS = 40
#: Seconds allowed for reading one database's schema and samples.
INSPECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Column:
    """One column: ``name``, declared ``type`` (may be ``""``), ``not_null``, ``default`` (SQL text or None),
    ``pk`` = 1-based position in the primary key, 0 when not part of it."""

    name: str
    type: str
    not_null: bool
    default: str | None
    pk: int


@dataclass(frozen=True)
class ForeignKey:
    """``column`` of this table references ``ref_table.ref_column`` (``ref_column`` is the referenced
    table's primary key when the DDL names none; None when that cannot be resolved)."""

    column: str
    ref_table: str
    ref_column: str | None


@dataclass(frozen=True)
class Table:
    """One table or view.

    Attributes:
        name: as stored in ``sqlite_master``.
        kind: ``"table"`` or ``"view"``.
        create_sql: the ``CREATE`` statement exactly as stored in ``sqlite_master``.
        columns: in declaration order.
        primary_key: primary-key column names in key order (empty when none is declared).
        foreign_keys: declared foreign keys, one per referencing column.
        samples: up to ``sample_rows`` rows (tuples aligned with ``columns``), values as stored
            (long strings/blobs are truncated only when rendered).
    """

    name: str
    kind: str
    create_sql: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]
    samples: tuple[tuple, ...]

    @property
    def column_names(self) -> list[str]:
        """Column names in declaration order."""
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class Schema:
    """The schema of one database: ``db_id`` (file stem), ``path`` (resolved), ``tables`` in
    ``sqlite_master`` order, ``sample_rows`` requested per table."""

    db_id: str
    path: Path
    tables: tuple[Table, ...]
    sample_rows: int

    def table(self, name: str) -> Table:
        """The table called ``name`` (case-insensitive, as SQLite resolves names).

        Raises:
            KeyError: no such table; the message lists the known tables.
        """
        for t in self.tables:
            if t.name.lower() == name.lower():
                return t
        raise KeyError(f"no table '{name}' in {self.db_id}; tables: {', '.join(self.table_names)}")

    @property
    def table_names(self) -> list[str]:
        """Table and view names in ``sqlite_master`` order."""
        return [t.name for t in self.tables]

    @property
    def foreign_keys(self) -> list[tuple[str, str, str, str | None]]:
        """All foreign keys as ``(table, column, ref_table, ref_column)``."""
        return [(t.name, fk.column, fk.ref_table, fk.ref_column) for t in self.tables for fk in t.foreign_keys]

    def to_prompt(self, **kwargs: Any) -> str:
        """Render as prompt text; see :func:`render_prompt` for the keyword arguments."""
        return render_prompt(self, **kwargs)


# --------------------------------------------------------------------------- reading

_cache: dict[tuple, Schema] = {}
_cache_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def _q(name: str) -> str:
    """Quote an identifier for SQLite."""
    return '"' + name.replace('"', '""') + '"'


def _read_schema(path: Path, sample_rows: int) -> Schema:
    conn = open_readonly(path)
    deadline = time.monotonic() + INSPECT_TIMEOUT_S
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        objs = conn.execute(
            "SELECT type, name, sql FROM sqlite_master "
            "WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        ).fetchall()
        infos: dict[str, list[Column]] = {}
        for _, name, _ in objs:
            infos[name] = [
                Column(name=r[1], type=r[2] or "", not_null=bool(r[3]), default=r[4], pk=int(r[5]))
                for r in conn.execute(f"PRAGMA table_info({_q(name)})")
            ]
        pks = {
            n: tuple(c.name for c in sorted((c for c in cols if c.pk), key=lambda c: c.pk))
            for n, cols in infos.items()
        }
        lower = {n.lower(): n for n in infos}
        tables = []
        for kind, name, sql in objs:
            fks = []
            if kind == "table":
                rows = conn.execute(f"PRAGMA foreign_key_list({_q(name)})").fetchall()
                for r in sorted(rows, key=lambda r: (-r[0], r[1])):  # ids count down from the last declared
                    ref_table, src, dst = r[2], r[3], r[4]
                    if dst is None:  # REFERENCES t without a column: t's primary key, by position
                        ref_pk = pks.get(lower.get(ref_table.lower(), ref_table), ())
                        dst = ref_pk[r[1]] if r[1] < len(ref_pk) else None
                    fks.append(ForeignKey(column=src, ref_table=ref_table, ref_column=dst))
            samples: tuple[tuple, ...] = ()
            if sample_rows > 0:
                try:
                    samples = tuple(conn.execute(f"SELECT * FROM {_q(name)} LIMIT {int(sample_rows)}").fetchall())
                except sqlite3.Error:  # e.g. a view over a missing table: keep the schema, skip samples
                    samples = ()
            tables.append(
                Table(
                    name=name,
                    kind=kind,
                    create_sql=sql or "",
                    columns=tuple(infos[name]),
                    primary_key=pks[name],
                    foreign_keys=tuple(fks),
                    samples=samples,
                )
            )
        return Schema(db_id=path.stem, path=path, tables=tuple(tables), sample_rows=sample_rows)
    finally:
        conn.close()


def load_schema(
    db: str | Path, *, sample_rows: int = DEFAULT_SAMPLE_ROWS, data_dir: str | Path | None = None
) -> Schema:
    """Read (or fetch from the cache) the schema of a database.

    Args:
        db: a path to an SQLite file, or a db_id of ``data_dir`` (default: the bundled Spider copy).
        sample_rows: sample rows per table, >= 0 (first rows in storage order).
        data_dir: Spider/BIRD-format directory used to resolve a db_id.

    Returns:
        :class:`Schema`; the same object for the same file while its mtime and size are unchanged.

    Raises:
        tools.spider.DataError (a ValueError): no such file or db_id.
        ValueError: ``sample_rows`` < 0, or the file is not an SQLite database.
    """
    if sample_rows < 0:
        raise ValueError(f"sample_rows must be >= 0, got {sample_rows}")
    path = resolve_database(db, data_dir)
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, sample_rows)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _stats["hits"] += 1
            return hit
    try:
        schema = _read_schema(path, sample_rows)
    except sqlite3.DatabaseError as e:
        raise ValueError(f"cannot read the schema of {path} ({e}); pass an SQLite database file") from e
    with _cache_lock:
        _stats["misses"] += 1
        for k in [k for k in _cache if k[0] == key[0] and k[1:3] != key[1:3]]:
            del _cache[k]  # an older version of the same file
        _cache[key] = schema
    return schema


def cache_info() -> dict[str, int]:
    """Cache counters: ``{"hits": int, "misses": int, "size": int}``."""
    with _cache_lock:
        return {**_stats, "size": len(_cache)}


def clear_cache() -> None:
    """Empty the schema cache and reset its counters."""
    with _cache_lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)


# --------------------------------------------------------------------------- rendering

_SIMPLE_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {
    "select", "from", "where", "group", "order", "by", "table", "index", "join", "on", "as", "and", "or",
    "not", "in", "is", "null", "limit", "offset", "union", "values", "key", "default", "check", "case",
    "when", "then", "else", "end", "create", "primary", "foreign", "references", "unique", "having",
    "distinct", "all", "between", "like", "exists", "desc", "asc", "to", "set", "transaction", "match",
}


def _ident(name: str) -> str:
    return name if _SIMPLE_IDENT.match(name) and name.lower() not in _RESERVED else _q(name)


def _fmt_value(v: Any, max_value_chars: int) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return f"<blob {len(v)} bytes>"
    s = str(v).replace("\r", " ").replace("\n", " ").replace("*/", "* /")
    return s if len(s) <= max_value_chars else s[: max(1, max_value_chars - 3)] + "..."


def _compact_ddl(t: Table) -> str:
    if t.kind == "view":
        return " ".join(t.create_sql.split())
    parts = []
    single_pk = len(t.primary_key) == 1
    for c in t.columns:
        s = _ident(c.name) + (f" {c.type}" if c.type else "")
        if single_pk and c.pk:
            s += " PRIMARY KEY"
        parts.append(s)
    if len(t.primary_key) > 1:
        parts.append("PRIMARY KEY (" + ", ".join(_ident(c) for c in t.primary_key) + ")")
    for fk in t.foreign_keys:
        ref = f"{_ident(fk.ref_table)}({_ident(fk.ref_column)})" if fk.ref_column else _ident(fk.ref_table)
        parts.append(f"FOREIGN KEY ({_ident(fk.column)}) REFERENCES {ref}")
    return f"CREATE TABLE {_ident(t.name)} (" + ", ".join(parts) + ");"


def _samples_block(t: Table, n: int, max_value_chars: int, compact: bool) -> str:
    rows = t.samples[:n]
    if not rows:
        return ""
    sep = "|" if compact else " | "
    lines = [sep.join(t.column_names)]
    lines += [sep.join(_fmt_value(v, max_value_chars) for v in r) for r in rows]
    head = f"/* {len(rows)} example row{'s' if len(rows) != 1 else ''} from {t.name}:"
    return head + "\n" + "\n".join(lines) + " */" if compact else head + "\n" + "\n".join(lines) + "\n*/"


def _render(schema: Schema, sample_rows: int, compact: bool, max_value_chars: int) -> list[str]:
    blocks = []
    for t in schema.tables:
        ddl = _compact_ddl(t) if compact else t.create_sql.strip().rstrip(";") + ";"
        samples = _samples_block(t, sample_rows, max_value_chars, compact)
        blocks.append(ddl + ("\n" + samples if samples else ""))
    return blocks


def render_prompt(
    schema: Schema,
    *,
    sample_rows: int | None = None,
    compact: bool = False,
    max_chars: int | None = None,
    max_value_chars: int = DEFAULT_MAX_VALUE_CHARS,
) -> str:
    """Render ``schema`` as prompt text: one ``CREATE`` statement per table, each followed by
    sample rows in a ``/* ... */`` comment (a ``|``-separated header line, then one line per row).

    Args:
        schema: from :func:`load_schema`.
        sample_rows: rows shown per table (default: all loaded, ``schema.sample_rows``).
        compact: rebuild each ``CREATE TABLE`` on one line from the parsed columns, keys and
            foreign keys (about half the characters of Spider's stored DDL); otherwise the
            statement exactly as stored in ``sqlite_master``.
        max_chars: character budget. When the text is longer, it is shrunk step by step: compact
            DDL, then 1 sample row, then none; if still too long, trailing tables are dropped and a
            final ``/* N more tables omitted: ... */`` line names them (kept within the budget when
            the budget allows at least that line).
        max_value_chars: longest sample value shown (longer ones end with ``...``), >= 4.

    Returns:
        The text, tables separated by blank lines.
    """
    if max_value_chars < 4:
        raise ValueError(f"max_value_chars must be >= 4, got {max_value_chars}")
    n = schema.sample_rows if sample_rows is None else max(0, sample_rows)
    levels = [(n, compact), (n, True), (min(n, 1), True), (0, True)]
    if max_chars is None:
        return "\n\n".join(_render(schema, n, compact, max_value_chars))
    if max_chars <= 0:
        raise ValueError(f"max_chars must be > 0, got {max_chars}")
    blocks: list[str] = []
    for rows, cmp in levels:
        blocks = _render(schema, rows, cmp, max_value_chars)
        text = "\n\n".join(blocks)
        if len(text) <= max_chars:
            return text
    # drop trailing tables until the rest plus the omission note fits
    for keep in range(len(blocks) - 1, -1, -1):
        omitted = [t.name for t in schema.tables[keep:]]
        note = f"/* {len(omitted)} more table{'s' if len(omitted) != 1 else ''} omitted: {', '.join(omitted)} */"
        text = "\n\n".join(blocks[:keep] + [note])
        if len(text) <= max_chars:
            return text
    return text[:max_chars]


def schema_prompt(
    db: str | Path | Schema,
    *,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    compact: bool = False,
    max_chars: int | None = None,
    max_value_chars: int = DEFAULT_MAX_VALUE_CHARS,
    data_dir: str | Path | None = None,
) -> str:
    """Prompt-ready schema text of a database (cached read, then :func:`render_prompt`).

    Args:
        db: a path, a db_id (resolved in ``data_dir``, default the bundled Spider) or a :class:`Schema`.
        sample_rows, compact, max_chars, max_value_chars: see :func:`render_prompt`.

    Raises:
        tools.spider.DataError: no such database.
    """
    schema = db if isinstance(db, Schema) else load_schema(db, sample_rows=sample_rows, data_dir=data_dir)
    return render_prompt(
        schema, sample_rows=sample_rows, compact=compact, max_chars=max_chars, max_value_chars=max_value_chars
    )


__all__ = [
    "Column",
    "ForeignKey",
    "Table",
    "Schema",
    "load_schema",
    "render_prompt",
    "schema_prompt",
    "cache_info",
    "clear_cache",
]
