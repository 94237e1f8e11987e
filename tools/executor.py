"""Safe execution of untrusted, model-written SQL against SQLite.

Every statement runs under several independent layers, so that one slip does not
let model-written SQL change a database, read another file, or hang the caller:

1. **Read-only open**: URI ``file:<path>?mode=ro`` (SQLite never creates or writes
   the file) and ``PRAGMA query_only=ON``.
2. **Authorizer allow-list** (``Connection.set_authorizer``): only ``SELECT``,
   column/table reads, recursive CTEs and functions other than
   :data:`DENIED_FUNCTIONS` are allowed. Everything else is denied at prepare
   time: INSERT/UPDATE/DELETE/REPLACE, CREATE/DROP/ALTER (temp objects too),
   ATTACH/DETACH (VACUUM and VACUUM INTO are authorized as ATTACH), PRAGMA,
   BEGIN/COMMIT/ROLLBACK/SAVEPOINT, REINDEX, ANALYZE, virtual-table creation.
3. **Limits** (``Connection.setlimit``): strings/blobs at most ``max_value_bytes``
   (so ``randomblob(2e9)``, ``zeroblob``, ``printf('%.*c', ...)`` and doubling
   CTEs fail fast with "string or blob too big"), no attached databases, SQL text
   and LIKE/GLOB pattern length bounded.
4. **Wall-clock timeout**: a progress handler checked every
   :data:`PROGRESS_STEPS` VDBE instructions interrupts the statement once
   ``timeout_s`` has passed (measured overshoot well under 50 ms for VM-bound
   work, see ``bench/executor.py``).
5. **Linear-time string functions**: SQLite's built-in ``trim``/``ltrim``/``rtrim``
   (O(len(X)*len(Y))), ``instr``/``replace`` (naive search) and ``json_patch``
   (O(keys(T)*keys(P))) run *inside one VM instruction*, where no progress handler
   can stop them; with 256 KiB operands ``trim`` alone takes minutes. They are
   overridden by functions that call the built-in for small operands (identical
   results) and a linear-time equivalent for large ones. ``printf``/``format``
   calls whose widths and precisions add up past the value cap are refused
   (SQLite 3.40 spins ~40 s on ``printf('%.*c', 2e9, 'x')``).
6. **Row and byte caps**: at most ``max_rows`` rows (``truncated`` flag) and about
   ``max_result_bytes`` of values are fetched.

Only one statement per call: ``sqlite3`` refuses a second statement (category
``forbidden``); a trailing ``;`` and comments are fine.

Connections are opened per (process, thread, database file) and reused, so the
executor is safe to call from many threads and processes at once (see
``bench/executor.py`` for the measured gain over a connection per call).

Known limits: table-valued functions (``json_each``, ``pragma_table_info``) are
refused with the rest (SQLite authorizes them as schema writes); memory may grow
until the deadline (``json_group_array`` over a runaway CTE: ~180 MB/s measured),
and large sorts spill to SQLite's temporary files, which SQLite deletes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

#: Default cap on any single string/blob value, in bytes (SQLITE_LIMIT_LENGTH).
#: Spider's longest stored value is 213 bytes; 256 KiB leaves ample room while
#: keeping the worst single-instruction work (e.g. a 100-byte LIKE pattern over a
#: maximal string) near 0.1 s.
MAX_VALUE_BYTES = 256 * 1024
#: Longest LIKE/GLOB pattern, in bytes (SQLITE_LIMIT_LIKE_PATTERN_LENGTH; SQLite's default is 50,000).
MAX_LIKE_PATTERN_BYTES = 100
#: Longest SQL text, in bytes (SQLITE_LIMIT_SQL_LENGTH).
MAX_SQL_BYTES = 100_000
#: Default cap on the summed size of fetched values (bytes, approximate).
MAX_RESULT_BYTES = 32 * 1024 * 1024
#: VDBE instructions between two progress-handler calls (timeout granularity).
PROGRESS_STEPS = 2_000
#: Connections kept per thread (least recently used ones are closed).
CONNECTIONS_PER_THREAD = 16
#: Functions the authorizer refuses: extension loading, fts3_tokenizer (leaks and
#: accepts raw pointers), and the sqlite3 shell's file functions in case a build has them.
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
#: Authorizer actions that a read-only SELECT needs; everything else is denied.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})


class ErrorCategory(str, Enum):
    """Why a statement did not produce a result."""

    SYNTAX = "syntax"
    NO_SUCH_TABLE = "no_such_table"
    NO_SUCH_COLUMN = "no_such_column"
    AMBIGUOUS_COLUMN = "ambiguous_column"
    TIMEOUT = "timeout"
    FORBIDDEN = "forbidden"
    OTHER = "other"


@dataclass(frozen=True)
class ExecutionResult:
    """A successful execution: ``columns`` names, ``rows`` (at most ``max_rows`` tuples),
    ``truncated`` True when more rows existed (or the byte cap was hit), ``elapsed_ms``
    wall-clock milliseconds (open + run + fetch)."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool
    elapsed_ms: float
    ok: bool = field(default=True, init=False)


@dataclass(frozen=True)
class ExecutionError:
    """A failed execution: ``category`` (see :class:`ErrorCategory`), SQLite's ``message``, ``elapsed_ms``."""

    category: ErrorCategory
    message: str
    elapsed_ms: float
    ok: bool = field(default=False, init=False)


# --------------------------------------------------------------------------- errors

_FORBIDDEN_MARKERS = (
    "not authorized",
    "authorization denied",
    "access to ",  # "access to t.c is prohibited"
    "readonly database",
    "one statement at a time",
    "too many attached databases",
    "cannot vacuum",
    "cannot start a transaction",
    "cannot commit",
    "cannot rollback",
)
_SYNTAX_MARKERS = (
    "syntax error",
    "incomplete input",
    "unrecognized token",
    "null character",
    "no such function",
    "wrong number of arguments",
    "incorrect number of bindings",
    "empty statement",
    "surrogates not allowed",
)


def categorize_error(message: str, *, timed_out: bool = False) -> ErrorCategory:
    """Map an SQLite/``sqlite3`` error message to an :class:`ErrorCategory`.

    Args:
        message: the exception text, e.g. ``"no such column: T1.nme"``.
        timed_out: True when the executor's deadline had passed (an ``interrupted`` error is then a timeout).

    Returns:
        ``no_such_table`` ("no such table"), ``no_such_column`` ("no such column"),
        ``ambiguous_column`` ("ambiguous column name"), ``timeout`` ("interrupted" past the
        deadline), ``forbidden`` (authorizer denials, read-only writes, a second statement),
        ``syntax`` (parse errors, unknown functions or wrong argument counts), else ``other``
        (e.g. "string or blob too big", "misuse of aggregate").
    """
    m = message.lower()
    if "interrupted" in m:
        return ErrorCategory.TIMEOUT if timed_out else ErrorCategory.OTHER
    if m.startswith("no such table") or "no such table:" in m:
        return ErrorCategory.NO_SUCH_TABLE
    if "no such column" in m:
        return ErrorCategory.NO_SUCH_COLUMN
    if "ambiguous column name" in m:
        return ErrorCategory.AMBIGUOUS_COLUMN
    if any(k in m for k in _FORBIDDEN_MARKERS):
        return ErrorCategory.FORBIDDEN
    if any(k in m for k in _SYNTAX_MARKERS):
        return ErrorCategory.SYNTAX
    return ErrorCategory.OTHER


# --------------------------------------------------------------------------- linear-time string functions

_PRINTF_SPEC = re.compile(r"%[-+ #!0,]*(\d*)(?:\.(\d*))?")
_SMALL_OPERANDS = 1024  # total chars/bytes up to which the built-in (quadratic worst case) is used


class _TooBig(Exception):
    """A linear-time replacement would build a value above the length limit."""


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch on parsed values."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


class _StringFunctions:
    """Replacements for ``trim``/``ltrim``/``rtrim``/``instr``/``replace`` (see module docstring, layer 5).

    Small operands go to the built-in on a private in-memory connection (identical
    results); large ones use Python's linear-time ``str``/``bytes`` operations.
    """

    def __init__(self, max_value_bytes: int) -> None:
        self.max_chars = max_value_bytes
        self.mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.mem.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        self.last_error: str | None = None

    def close(self) -> None:
        self.mem.close()

    @staticmethod
    def _size(args: tuple) -> int:
        return sum(len(a) for a in args if isinstance(a, (str, bytes)))

    def _builtin(self, sql: str, args: tuple) -> Any:
        try:
            return self.mem.execute(sql, args).fetchone()[0]
        except sqlite3.Error as e:
            self.last_error = str(e)
            raise

    def _text(self, v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        return self._builtin("SELECT CAST(? AS TEXT)", (v,))  # SQLite's own number rendering

    def _fail(self, what: str) -> None:
        self.last_error = f"string or blob too big (result of {what} exceeds {self.max_chars} bytes)"
        raise _TooBig(self.last_error)

    def replace(self, x: Any, y: Any, z: Any) -> Any:
        if self._size((x, y, z)) <= _SMALL_OPERANDS:
            return self._builtin("SELECT replace(?, ?, ?)", (x, y, z))
        xs = self._text(x)
        if xs is None:
            return None
        ys = self._text(y)
        if ys is None:
            return None
        if ys == "":
            return x
        zs = self._text(z)
        if zs is None:
            return None
        n = xs.count(ys)
        if len(xs) + n * (len(zs) - len(ys)) > self.max_chars:
            self._fail("replace()")
        return xs.replace(ys, zs)

    def instr(self, x: Any, y: Any) -> Any:
        if self._size((x, y)) <= _SMALL_OPERANDS:
            return self._builtin("SELECT instr(?, ?)", (x, y))
        if x is None or y is None:
            return None
        if isinstance(x, bytes) and isinstance(y, bytes):
            return x.find(y) + 1
        return self._text(x).find(self._text(y)) + 1

    def _strip(self, name: str, x: Any, y: Any, left: bool, right: bool) -> Any:
        if self._size((x, y)) <= _SMALL_OPERANDS:
            return self._builtin(f"SELECT {name}(?, ?)", (x, y))
        xs = self._text(x)
        ys = self._text(y)
        if xs is None or ys is None:
            return None
        chars = set(ys)
        i, j = 0, len(xs)
        if left:
            while i < j and xs[i] in chars:
                i += 1
        if right:
            while j > i and xs[j - 1] in chars:
                j -= 1
        return xs[i:j]

    def printf(self, fmt: Any, *args: Any) -> Any:
        # SQLite 3.40's printf loops once per repeated character for "%.<N>c" even after its
        # buffer is full (2e9 iterations: ~40 s in one instruction). Refuse any call whose
        # widths and precisions add up past the value cap; run the others with the built-in.
        if isinstance(fmt, str) and "%" in fmt:
            total = sum(int(w or 0) + int(p or 0) for w, p in _PRINTF_SPEC.findall(fmt))
            if "*" in fmt:
                total += sum(min(abs(int(a)), 1 << 40) for a in args if isinstance(a, (int, float)) and math.isfinite(a))
            if total > self.max_chars:
                self._fail("printf()/format()")
        return self._builtin(f"SELECT printf({', '.join('?' * (1 + len(args)))})", (fmt, *args))

    def json_patch(self, target: Any, patch: Any) -> Any:
        # SQLite 3.40 merges objects by linear key search, O(keys(T) * keys(P)) in one
        # instruction (two 10,000-key objects: ~2 s); RFC 7396 merge on dicts is linear.
        if self._size((target, patch)) <= _SMALL_OPERANDS or not (isinstance(target, str) and isinstance(patch, str)):
            return self._builtin("SELECT json_patch(?, ?)", (target, patch))
        try:
            merged = _merge_patch(json.loads(target), json.loads(patch))
        except (ValueError, RecursionError):
            self.last_error = "malformed JSON"
            raise
        out = json.dumps(merged, separators=(",", ":"), ensure_ascii=False)
        if len(out) > self.max_chars:
            self._fail("json_patch()")
        return out

    def install(self, conn: sqlite3.Connection) -> None:
        """Register the replacements on ``conn`` (1- and 2-argument trims, instr, replace, printf/format)."""
        for name, left, right in (("trim", True, True), ("ltrim", True, False), ("rtrim", False, True)):
            conn.create_function(
                name, 2, (lambda x, y, _n=name, _l=left, _r=right: self._strip(_n, x, y, _l, _r)), deterministic=True
            )
            conn.create_function(
                name, 1, (lambda x, _n=name, _l=left, _r=right: self._strip(_n, x, " ", _l, _r)), deterministic=True
            )
        conn.create_function("instr", 2, self.instr, deterministic=True)
        conn.create_function("replace", 3, self.replace, deterministic=True)
        conn.create_function("json_patch", 2, self.json_patch, deterministic=True)
        conn.create_function("printf", -1, self.printf, deterministic=True)
        conn.create_function("format", -1, self.printf, deterministic=True)


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
    """One hardened read-only connection plus its per-call deadline."""

    def __init__(self, path: Path, max_value_bytes: int) -> None:
        self.deadline = math.inf
        self.conn = open_readonly(path, max_value_bytes=max_value_bytes)
        self.funcs = _StringFunctions(max_value_bytes)
        self.funcs.install(self.conn)
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

    For trusted, project-written SQL (e.g. :mod:`tools.schema`); untrusted SQL goes through :func:`execute_sql`.

    Raises:
        FileNotFoundError: ``path`` does not exist (no file is created).
        ValueError: ``path`` is a directory.
    """
    p = _check_path(path)
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


def _check_path(path: str | Path) -> Path:
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
_abandoned: list[OrderedDict] = []  # connections inherited through fork: kept referenced, never closed
#: Reuse connections per (process, thread, file); set False to open one per call.
REUSE_CONNECTIONS = True


def _acquire(path: Path, max_value_bytes: int) -> tuple[_SafeConnection, bool]:
    """Return (connection, reusable). A reusable one stays in the thread's cache."""
    if not REUSE_CONNECTIONS:
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
    for k in [k for k in _cache.conns if k[0] == key[0] and k != key]:
        _cache.conns.pop(k).close()
    while len(_cache.conns) > CONNECTIONS_PER_THREAD:
        _cache.conns.popitem(last=False)[1].close()
    return sc, True


def _open_safe(path: Path, max_value_bytes: int) -> _SafeConnection:
    try:
        return _SafeConnection(path, max_value_bytes)
    except sqlite3.Error as e:
        raise ValueError(f"cannot open database {path} read-only ({e}); check the file and its permissions") from e


def close_connections() -> None:
    """Close this thread's cached connections (they reopen on demand)."""
    while _cache.conns:
        _cache.conns.popitem()[1].close()


# --------------------------------------------------------------------------- execution

_TRAILING = re.compile(r"[\s;]+\Z")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(\*/|\Z)", re.S)


def _value_size(v: Any) -> int:
    return len(v) if isinstance(v, (str, bytes)) else 8


def execute_sql(
    db_path: str | Path,
    sql: str,
    *,
    timeout_s: float = 5.0,
    max_rows: int = 10_000,
    max_value_bytes: int = MAX_VALUE_BYTES,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> ExecutionResult | ExecutionError:
    """Run one read-only statement; never raises for bad SQL, never writes, never hangs past ``timeout_s``.

    Args:
        db_path: an existing SQLite file (opened read-only; never created).
        sql: one statement (a trailing ``;`` and comments are fine).
        timeout_s: wall-clock budget in seconds (> 0) for running and fetching.
        max_rows: most rows returned (>= 1); ``truncated`` is True when there were more.
        max_value_bytes: longest string/blob any expression may build (SQLITE_LIMIT_LENGTH).
        max_result_bytes: approximate cap on the summed size of returned values; hitting it
            also sets ``truncated``.

    Returns:
        :class:`ExecutionResult` (``rows`` as tuples of ``int``/``float``/``str``/``bytes``/``None``,
        BLOBs returned as ``bytes`` unchanged; invalid UTF-8 text is decoded with U+FFFD) or
        :class:`ExecutionError` with a :class:`ErrorCategory`.

    Raises:
        FileNotFoundError: ``db_path`` does not exist.
        ValueError: ``db_path`` is a directory or not an SQLite database; a limit is out of range.
        TypeError: ``sql`` is not a string.
    """
    t0 = time.perf_counter()
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, got {type(sql).__name__}; pass the statement text")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows!r}")
    if max_value_bytes < 1 or max_result_bytes < 1:
        raise ValueError(
            f"max_value_bytes and max_result_bytes must be >= 1, got {max_value_bytes!r} and {max_result_bytes!r}"
        )
    path = _check_path(db_path)
    deadline = time.monotonic() + timeout_s
    sc, reusable = _acquire(path, max_value_bytes)

    def ms() -> float:
        return (time.perf_counter() - t0) * 1000.0

    def fail(message: str) -> ExecutionError:
        timed_out = time.monotonic() > deadline
        if "user-defined function raised exception" in message and sc.funcs.last_error:
            message = sc.funcs.last_error
        return ExecutionError(categorize_error(message, timed_out=timed_out), message, ms())

    text = _TRAILING.sub("", sql)
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
                return ExecutionError(
                    ErrorCategory.FORBIDDEN, "not a query: only SELECT statements are allowed", ms()
                )
            return ExecutionError(ErrorCategory.SYNTAX, "empty statement: no SQL to run", ms())
        columns = [d[0] for d in cur.description]
        rows: list[tuple] = []
        size = 0
        truncated = False
        chunk_size = 16  # adapted to the observed row size so the byte cap is not overshot much
        while len(rows) < max_rows:
            try:
                chunk = cur.fetchmany(min(chunk_size, max_rows - len(rows)))
            except sqlite3.OperationalError as e:
                if "could not decode to utf-8" not in str(e).lower() or sc.conn.text_factory is _lenient_text:
                    raise
                sc.conn.text_factory = _lenient_text
                cur.close()
                cur, rows, size = sc.conn.execute(text), [], 0  # rerun from the start
                continue
            if not chunk:
                break
            rows.extend(chunk)
            size += sum(_value_size(v) for r in chunk for v in r)
            if size > max_result_bytes:
                truncated = True
                break
            row_bytes = max(1, size // len(rows))
            chunk_size = max(1, min(512, (max_result_bytes - size) // row_bytes // 2))
        else:
            truncated = cur.fetchone() is not None
        return ExecutionResult(columns, rows, truncated, ms())
    except sqlite3.DatabaseError as e:
        if "file is not a database" in str(e).lower():
            _discard(sc, reusable)
            closed = True
            raise ValueError(f"{path} is not an SQLite database ({e}); pass a .sqlite file") from e
        return fail(str(e))
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as e:
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


# --------------------------------------------------------------------------- digests


def _normalise(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer() and abs(v) < 2**63:
            return int(v)
        return float(f"{v:.12g}") if math.isfinite(v) else v
    if isinstance(v, memoryview):
        return bytes(v)
    return v


def result_digest(rows: Iterable[Iterable[Any]]) -> str:
    """Order-insensitive SHA-256 hex digest of a multiset of rows.

    Equal digests mean the same rows with the same multiplicities, in any order; column
    order inside a row matters. Values are normalised first: ``bool`` -> ``int``, a
    finite integral ``float`` -> ``int`` (SQLite's ``1`` and ``1.0`` compare equal), other
    floats rounded to 12 significant digits. Stable across processes and runs (no
    ``hash()``), e.g. ``result_digest([(1, "a"), (2, "b")]) == result_digest([(2, "b"), (1.0, "a")])``.
    """
    lines = sorted(repr(tuple(_normalise(v) for v in row)) for row in rows)
    h = hashlib.sha256()
    for line in lines:
        data = line.encode("utf-8", "backslashreplace")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


__all__ = [
    "ErrorCategory",
    "ExecutionResult",
    "ExecutionError",
    "execute_sql",
    "result_digest",
    "categorize_error",
    "open_readonly",
    "close_connections",
    "DENIED_FUNCTIONS",
    "MAX_VALUE_BYTES",
]
