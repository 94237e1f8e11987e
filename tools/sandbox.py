"""The in-process sandbox: one hardened read-only SQLite connection, and one statement run on it
(layers 1-5 and 7 of :mod:`tools.executor`).

:func:`run_statement` opens (or reuses, per process, thread and file) a connection opened read-only
(``mode=ro``, ``query_only``) with SQLite's limits set, an allow-list authorizer, a progress handler
that interrupts the statement at its deadline and the string-function overrides of
:mod:`tools.sql_functions`; it fetches at most ``max_rows`` rows and ``max_result_bytes`` bytes of values
and returns a reply tuple (never an exception for bad SQL). It bounds nothing that SQLite does inside
one call: that is the worker process's job (:mod:`tools.worker_pool`), which runs this module.

Standard library only: the executor's worker processes (:mod:`tools.sql_worker`) import it.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tools.sql_functions import ALL_OVERRIDES, UTF8_RERUN_MAX_BYTES, StringFunctions, guard_printf_calls
from tools.sql_results import ErrorCategory, categorize_error

#: Default cap on any single string/blob value, in bytes (SQLITE_LIMIT_LENGTH).
#: Spider's longest stored value is 213 bytes; 256 KiB leaves ample room while keeping
#: single-instruction work on one value (e.g. a 100-byte LIKE pattern) short.
MAX_VALUE_BYTES = 256 * 1024
#: Longest LIKE/GLOB pattern, in bytes (SQLITE_LIMIT_LIKE_PATTERN_LENGTH; SQLite's default is 50,000).
MAX_LIKE_PATTERN_BYTES = 100
#: Longest SQL text, in bytes (SQLITE_LIMIT_SQL_LENGTH).
MAX_SQL_BYTES = 100_000
#: VDBE instructions between two progress-handler calls (timeout granularity).
PROGRESS_STEPS = 2_000
#: Connections kept per thread (least recently used ones are closed).
CONNECTIONS_PER_THREAD = 16
#: Functions the authorizer refuses: extension loading, fts3_tokenizer (leaks and
#: accepts raw pointers), and the sqlite3 shell's file functions in case a build has them.
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
#: Authorizer actions that a read-only SELECT needs; everything else is denied.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})


# --------------------------------------------------------------------------- connections


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
    """Allow-list authorizer: reads, SELECT, recursive CTEs and non-denied functions only."""
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _lenient_text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


class _SafeConnection:
    """One hardened read-only connection plus its per-call deadline.

    ``guarded``: None for every override (the first run of a statement); for the rerun of a
    statement whose arguments the Python overrides cannot receive (:mod:`tools.executor`, layer 5),
    the guarded printf names of :func:`tools.sql_functions.guard_printf_calls` (the only overrides then), with every
    string and blob limited to :data:`tools.sql_functions.UTF8_RERUN_MAX_BYTES` (or ``max_value_bytes`` when smaller).
    """

    def __init__(self, path: Path, max_value_bytes: int, guarded: tuple[str, ...] | None = None) -> None:
        self.deadline = math.inf
        limit = max_value_bytes if guarded is None else min(max_value_bytes, UTF8_RERUN_MAX_BYTES)
        self.conn = open_readonly(path, max_value_bytes=limit)
        self.funcs = StringFunctions(limit)
        self.funcs.install(self.conn, ALL_OVERRIDES if guarded is None else guarded)
        self.conn.set_authorizer(_authorizer)
        self.conn.set_progress_handler(self._progress, PROGRESS_STEPS)

    def _progress(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.funcs.close()


def open_readonly(path: str | Path, *, max_value_bytes: int = MAX_VALUE_BYTES) -> sqlite3.Connection:
    """Open ``path`` read-only (``mode=ro`` URI, ``query_only``, limits set), without an authorizer.

    For trusted, project-written SQL (e.g. :mod:`tools.schema`); untrusted SQL goes through
    :func:`tools.executor.execute_sql`.

    Raises:
        FileNotFoundError: ``path`` does not exist (no file is created).
        ValueError: ``path`` is a directory.
    """
    p = check_path(path)
    # timeout: how long to wait for a writer's lock (the progress handler cannot interrupt that wait)
    conn = sqlite3.connect(p.as_uri() + "?mode=ro", uri=True, isolation_level=None, timeout=1.0)
    try:
        if hasattr(conn, "enable_load_extension"):
            conn.enable_load_extension(False)
        conn.execute("PRAGMA query_only=ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_LIKE_PATTERN_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VDBE_OP, 1_000_000)
    except BaseException:
        conn.close()
        raise
    return conn


def check_path(path: str | Path) -> Path:
    """``path`` resolved, once it names an existing file (nothing is created or opened).

    Raises:
        TypeError: ``path`` is neither a str nor a path.
        FileNotFoundError: it does not exist (the message names the expected Spider location).
        ValueError: it is a directory.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"db_path must be a str or Path, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"database file {p} does not exist; pass the path of an existing SQLite file "
            "(e.g. data/spider/database/<db_id>/<db_id>.sqlite)"
        )
    if p.is_dir():
        raise ValueError(f"db_path {p} is a directory; pass the .sqlite file inside it")
    return p.resolve()


class _ConnectionCache(threading.local):
    """Per-thread LRU of hardened connections, keyed by file identity; reset after fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.conns: OrderedDict[tuple, _SafeConnection] = OrderedDict()


_cache = _ConnectionCache()
_abandoned: list[Any] = []  # connections and workers inherited through fork: kept referenced, never closed
#: Reuse connections per (process, thread, file); set False to open one per call.
REUSE_CONNECTIONS = True


def _acquire(path: Path, max_value_bytes: int, reuse: bool) -> tuple[_SafeConnection, bool]:
    """Return (connection, reusable). A reusable one stays in the thread's cache."""
    if not reuse:
        return _open_safe(path, max_value_bytes), False
    if _cache.pid != os.getpid():  # forked child: never use or close the parent's handles
        _abandoned.append(_cache.conns)
        _cache.pid = os.getpid()
        _cache.conns = OrderedDict()
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, max_value_bytes)
    sc = _cache.conns.get(key)
    if sc is not None:
        _cache.conns.move_to_end(key)
        return sc, True
    sc = _open_safe(path, max_value_bytes)
    _cache.conns[key] = sc
    # drop stale versions of the same file and the least recently used beyond the cap
    for k in [k for k in _cache.conns if k[0] == key[0] and k[1:5] != key[1:5]]:
        _cache.conns.pop(k).close()
    while len(_cache.conns) > CONNECTIONS_PER_THREAD:
        _cache.conns.popitem(last=False)[1].close()
    return sc, True


def _open_safe(path: Path, max_value_bytes: int, guarded: tuple[str, ...] | None = None) -> _SafeConnection:
    try:
        return _SafeConnection(path, max_value_bytes, guarded)
    except sqlite3.Error as e:
        raise ValueError(f"cannot open database {path} read-only ({e}); check the file and its permissions") from e


def close_cached_connections() -> None:
    """Close this thread's cached connections (they are opened again on demand)."""
    while _cache.conns:
        _cache.conns.popitem()[1].close()


# --------------------------------------------------------------------------- running one statement

_TRAILING = re.compile(r"[\s;]+\Z")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(\*/|\Z)", re.S)
_UDF_FAILED = "user-defined function raised exception"


class _RerunWithBuiltins(Exception):
    """``sqlite3`` could not hand an argument to a Python override (text that is not valid UTF-8):
    rerun with the guards of the rerun (:class:`_SafeConnection` ``guarded``)."""


def _printf_refused(max_chars: int) -> str:
    return ("printf()/format() refused: an argument is text that is not valid UTF-8, which the width guard cannot "
            "read (SQLite's own printf would loop once per character of a large width or precision); CAST that "
            f"argument AS BLOB, or give every printf()/format() a literal format without '*' (widths up to "
            f"{max_chars} characters)")


def _rerun_too_big(sqlite_message: str, max_chars: int) -> str:
    return (f"{sqlite_message}: text that is not valid UTF-8 reached trim()/ltrim()/rtrim()/instr()/replace()/"
            f"printf()/format(), so the statement ran with SQLite's own string functions and every string or blob "
            f"limited to {max_chars} bytes (their time grows with the product of their operands' lengths); CAST the "
            "text AS BLOB, or work on shorter values")


def _value_size(v: Any) -> int:
    """Bytes a value counts for against ``max_result_bytes``: text as UTF-8, blobs as is, others 8."""
    if isinstance(v, str):
        return len(v) if v.isascii() else len(v.encode("utf-8", "surrogatepass"))
    if isinstance(v, bytes):
        return len(v)
    return 8


def run_statement(
    path: Path, sql: str, timeout_s: float, max_rows: int, max_value_bytes: int, max_result_bytes: int, reuse: bool
) -> tuple:
    """Run ``sql`` on ``path`` in this process (layers 1-5 and 7 of :mod:`tools.executor`).

    Returns:
        ``("ok", columns, rows, truncated)`` or ``("error", category value, message)``.

    Raises:
        FileNotFoundError, ValueError: the file vanished, cannot be opened or is not a database.
    """
    deadline = time.monotonic() + timeout_s
    text = _TRAILING.sub("", sql)
    sc, reusable = _acquire(path, max_value_bytes, reuse)
    try:
        return _run_on(sc, reusable, path, text, deadline, max_rows, max_value_bytes, max_result_bytes)
    except _RerunWithBuiltins:
        pass
    # text that is not valid UTF-8 reached an override: rerun once on a connection of its own
    rerun_text, names = guard_printf_calls(text, min(max_value_bytes, UTF8_RERUN_MAX_BYTES))
    sc = _open_safe(path, max_value_bytes, tuple(names))
    return _run_on(sc, False, path, rerun_text, deadline, max_rows, max_value_bytes, max_result_bytes, names)


def _run_on(
    sc: _SafeConnection,
    reusable: bool,
    path: Path,
    text: str,
    deadline: float,
    max_rows: int,
    max_value_bytes: int,
    max_result_bytes: int,
    rerun: dict[str, str] | None = None,
) -> tuple:
    """One pass of :func:`run_statement` on one connection (see there). ``rerun``: None on the
    first pass; on the rerun the renamed printf calls (:func:`tools.sql_functions.guard_printf_calls`), whose names are
    put back in the column names.

    Raises:
        _RerunWithBuiltins: on the first pass, when ``sqlite3`` could not hand an argument to an override.
    """

    def fail(message: str) -> tuple:
        timed_out = time.monotonic() > deadline
        if _UDF_FAILED in message:
            if sc.funcs.last_error:
                message = sc.funcs.last_error
            elif rerun is None and not timed_out:
                raise _RerunWithBuiltins(message)
            elif not timed_out:  # the rerun: only guarded printf calls are overrides; one got text that is not UTF-8
                message = _printf_refused(sc.funcs.max_chars)
        elif rerun is not None and "string or blob too big" in message.lower():
            message = _rerun_too_big(message, sc.funcs.max_chars)
        return ("error", categorize_error(message, timed_out=timed_out).value, message)

    sc.deadline = deadline
    sc.funcs.last_error = None
    cur = None
    closed = False
    try:
        try:
            cur = sc.conn.execute(text)
        except sqlite3.OperationalError as e:
            if "could not decode to utf-8" not in str(e).lower():
                raise
            sc.conn.text_factory = _lenient_text  # invalid UTF-8 in the data: decode with U+FFFD from now on
            cur = sc.conn.execute(text)
        if cur.description is None:  # nothing to run, or a statement that is not a query
            if _COMMENTS.sub("", text).strip(" \t\r\n\f;"):
                return ("error", ErrorCategory.FORBIDDEN.value, "not a query: only SELECT statements are allowed")
            return ("error", ErrorCategory.SYNTAX.value, "empty statement: no SQL to run")
        columns = [d[0] for d in cur.description]
        for new, old in (rerun or {}).items():
            columns = [c.replace(new, old) for c in columns]
        # No row can be larger than worst_row, so a batch of n rows never holds more than
        # n * worst_row bytes: batches are sized to fit what is left of the byte budget, and
        # every row is checked before it is kept (the returned values never exceed the cap).
        worst_row = max(1, len(columns)) * max(max_value_bytes, 8)
        rows: list[tuple] = []
        size = 0
        truncated = False
        while len(rows) < max_rows:
            batch = max(1, min(256, (max_result_bytes - size) // worst_row, max_rows - len(rows)))
            try:
                chunk = cur.fetchmany(batch)
            except sqlite3.OperationalError as e:
                if "could not decode to utf-8" not in str(e).lower() or sc.conn.text_factory is _lenient_text:
                    raise
                sc.conn.text_factory = _lenient_text
                cur.close()
                cur, rows, size = sc.conn.execute(text), [], 0  # rerun from the start
                continue
            if not chunk:
                break
            for row in chunk:
                row_size = sum(_value_size(v) for v in row)
                if size + row_size > max_result_bytes:
                    truncated = True
                    break
                rows.append(row)
                size += row_size
            if truncated:
                break
        else:
            truncated = cur.fetchone() is not None
        return ("ok", columns, rows, truncated)
    except sqlite3.DatabaseError as e:
        if "file is not a database" in str(e).lower():
            _discard(sc, reusable)
            closed = True
            raise ValueError(f"{path} is not an SQLite database ({e}); pass a .sqlite file") from e
        return fail(str(e))
    except MemoryError as e:
        return ("error", ErrorCategory.OTHER.value, f"out of memory ({e})" if str(e) else "out of memory")
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as e:
        return fail(str(e) or type(e).__name__)
    finally:
        if not closed:
            sc.deadline = math.inf
            if cur is not None:
                try:
                    cur.close()
                except sqlite3.Error:
                    pass
            if sc.conn.in_transaction:  # cannot happen (transactions are denied); belt and braces
                sc.conn.rollback()
            if not reusable:
                sc.close()


def _discard(sc: _SafeConnection, reusable: bool) -> None:
    if reusable:
        for k in [k for k, v in _cache.conns.items() if v is sc]:
            del _cache.conns[k]
    sc.close()
