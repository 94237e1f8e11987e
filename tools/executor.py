"""Safe execution of untrusted, model-written SQL against SQLite.

Model-written SQL must never change a database, never hang the caller and never blow its
memory. :func:`execute_sql` therefore runs every statement in a **worker process** under a
hard deadline and an address-space limit, and inside that worker under several in-process
layers, so that one slip does not defeat the others:

1. **Read-only open**: URI ``file:<path>?mode=ro`` (SQLite never creates or writes
   the file) and ``PRAGMA query_only=ON``.
2. **Authorizer allow-list** (``Connection.set_authorizer``): only ``SELECT``,
   column/table reads, recursive CTEs and functions other than
   :data:`DENIED_FUNCTIONS` are allowed. Everything else is denied at prepare
   time: INSERT/UPDATE/DELETE/REPLACE, CREATE/DROP/ALTER (temp objects too),
   ATTACH/DETACH (VACUUM and VACUUM INTO are authorized as ATTACH), PRAGMA,
   BEGIN/COMMIT/ROLLBACK/SAVEPOINT, REINDEX, ANALYZE, virtual-table creation.
3. **Limits** (``Connection.setlimit``): strings/blobs at most ``max_value_bytes``
   (``randomblob(2e9)``, ``zeroblob`` and doubling CTEs fail fast with "string or blob
   too big"), no attached databases, SQL text, LIKE/GLOB pattern length and program size
   bounded. In a worker SQLite's own heap is capped too (:data:`WORKER_SQLITE_HEAP_BYTES`,
   ``sqlite3_hard_heap_limit64``), so most runaway allocations end as "out of memory".
4. **Progress handler**: checked every :data:`PROGRESS_STEPS` VDBE instructions, it
   interrupts a running statement once ``timeout_s`` has passed (category ``timeout``).
5. **Function overrides**: SQLite's ``trim``/``ltrim``/``rtrim`` (O(len(X)*len(Y))) and
   ``instr``/``replace`` (naive search) run inside one VM instruction, where no progress
   handler can stop them. They are replaced by functions that call the built-in for small
   operands (identical results) and a linear-time equivalent for large ones. ``printf``/
   ``format`` calls whose widths and precisions may add up past the value cap are refused
   ("string or blob too big"); the bound is computed from SQLite's own reading of the
   format (text or blob) and of ``*`` arguments (integers, reals, numeric text). Python
   cannot pass text that is not valid UTF-8 to an override; a statement that gives such
   text to one is rerun once with the guards in another form (:data:`UTF8_RERUN_MAX_BYTES`):
   ``trim``/``ltrim``/``rtrim``/``instr``/``replace`` are SQLite's own, with every string
   and blob of the statement limited to that many bytes (their work grows with the product
   of their operands' lengths: at most milliseconds then); a ``printf``/``format`` call whose
   format is a literal without ``*`` and whose widths and precisions stay within the limit is
   SQLite's own, every other call keeps the Python guard (:func:`guard_printf_calls`). Such a
   guarded call that gets text that is not valid UTF-8 is refused ("printf()/format()
   refused: ..."), and a value above the limit fails with "string or blob too big: text that
   is not valid UTF-8 ..." -- refusals by the guard, in milliseconds, never left to the worker
   kill. Otherwise the results are SQLite's (invalid bytes read back as U+FFFD); statements on
   valid UTF-8 never take this path.
   ``json_patch`` is SQLite's built-in (exact semantics); its quadratic worst case, like
   any other single-instruction or prepare-time work, is bounded by layer 6.
6. **Worker process** (the bound that holds whatever SQLite does inside one call: while
   preparing, inside one VM instruction or inside a function): the statement runs in a
   long-lived child interpreter (``python -I -S``, standard library only) whose address
   space is limited to :data:`MAX_WORKER_MEMORY_BYTES` (``RLIMIT_AS``). The caller waits
   at most ``timeout_s`` + :data:`KILL_GRACE_S` for the reply; past that it SIGKILLs the
   worker, returns a ``timeout`` error, and starts a replacement at once. A worker that
   dies (e.g. out of memory) yields an ``other`` error and is replaced the same way. One
   that died before it read the statement (killed while idle, by the OOM killer say, even
   one still exiting when the statement is sent) costs nothing: the statement is sent to
   its replacement.
7. **Row and byte caps**: at most ``max_rows`` rows (``truncated`` flag), and the values
   returned sum to at most ``max_result_bytes`` (checked row by row; see :func:`execute_sql`).

Deadline semantics: ``timeout_s`` runs from the moment the statement is handed to a ready
worker; the call returns by ``timeout_s + KILL_GRACE_S`` plus the time to kill a process
(milliseconds). Starting a worker (the first call of a concurrent caller, or right after a
kill, where the replacement is usually ready before the next call) is not counted; it is
bounded by :data:`WORKER_START_TIMEOUT_S`.

Memory bound: each worker's address space is at most :data:`MAX_WORKER_MEMORY_BYTES`; a
worker whose peak resident memory is above :data:`WORKER_RECYCLE_BYTES` after a statement is
replaced, so memory a hostile statement made SQLite or the allocator keep is given back.
The calling process only receives the reply: at most ``max_result_bytes`` of values plus
Python's per-object overhead.

Workers are pooled: a call takes an idle worker or starts one (so concurrent threads never
wait for each other), and gives it back afterwards; at most :data:`MAX_IDLE_WORKERS` idle
ones are kept. They are started lazily, killed at interpreter exit, exit by themselves
within a fraction of a second when the calling process dies, and are never shared with a
forked child (the child starts its own). Setting :data:`USE_WORKERS` to False runs
statements in the calling process with layers 1-5 and 7 only (benchmarks and equivalence
tests; not for untrusted SQL).

Only one statement per call: ``sqlite3`` refuses a second statement (category
``forbidden``); a trailing ``;`` and comments are fine. Connections are opened per
(process, thread, database file) and reused.

Known limits: table-valued functions (``json_each``, ``pragma_table_info``) are refused
with the rest (SQLite authorizes them as schema writes); large sorts spill to SQLite's
temporary files, which SQLite deletes.
"""

from __future__ import annotations

import atexit
import hashlib
import marshal
import math
import os
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

#: Default cap on any single string/blob value, in bytes (SQLITE_LIMIT_LENGTH).
#: Spider's longest stored value is 213 bytes; 256 KiB leaves ample room while keeping
#: single-instruction work on one value (e.g. a 100-byte LIKE pattern) short.
MAX_VALUE_BYTES = 256 * 1024
#: Longest LIKE/GLOB pattern, in bytes (SQLITE_LIMIT_LIKE_PATTERN_LENGTH; SQLite's default is 50,000).
MAX_LIKE_PATTERN_BYTES = 100
#: Longest SQL text, in bytes (SQLITE_LIMIT_SQL_LENGTH).
MAX_SQL_BYTES = 100_000
#: Default cap on the summed size of returned values, in bytes (text counted as UTF-8,
#: numbers and NULL as 8 bytes each).
MAX_RESULT_BYTES = 32 * 1024 * 1024
#: VDBE instructions between two progress-handler calls (timeout granularity).
PROGRESS_STEPS = 2_000
#: Connections kept per thread (least recently used ones are closed).
CONNECTIONS_PER_THREAD = 16
#: Address-space limit of each worker process, in bytes (``RLIMIT_AS``, set in the worker).
MAX_WORKER_MEMORY_BYTES = 1024 * 1024 * 1024
#: SQLite's hard heap limit inside a worker, in bytes (allocations past it fail with "out of memory").
WORKER_SQLITE_HEAP_BYTES = 256 * 1024 * 1024
#: A worker whose peak resident set exceeds this many bytes after a statement is replaced.
WORKER_RECYCLE_BYTES = 256 * 1024 * 1024
#: Seconds past ``timeout_s`` that the caller waits for a worker's reply before killing it.
KILL_GRACE_S = 0.1
#: Seconds a new worker may take to start before the call fails (category ``other``).
WORKER_START_TIMEOUT_S = 10.0
#: Idle workers kept for reuse per process (more are started while more threads call at once).
MAX_IDLE_WORKERS = 4
#: Run statements in worker processes (True, the default) or in the calling process (False:
#: no hard deadline and no memory bound; for benchmarks and tests only).
USE_WORKERS = True
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
    wall-clock milliseconds of the whole call (worker hand-off + open + run + fetch)."""

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
    "may not be modified",  # "table sqlite_master may not be modified"
    "vtable constructor failed",  # table-valued functions and eponymous virtual tables (json_each, dbstat)
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
        deadline), ``forbidden`` (authorizer denials, read-only writes, a second statement, writes to
        ``sqlite_master``, refused virtual tables),
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


# --------------------------------------------------------------------------- function overrides

_SMALL_OPERANDS = 1024  # total chars/bytes up to which the built-in (quadratic worst case) is used
#: Longest string or blob (bytes) of a statement rerun because text that is not valid UTF-8 reached
#: an override (module docstring, layer 5): SQLite's own ``trim`` then costs at most 4096 x 4096
#: comparisons (about 40 ms), its ``instr``/``replace`` less.
UTF8_RERUN_MAX_BYTES = 4096
_ALL_OVERRIDES = ("trim", "ltrim", "rtrim", "instr", "replace", "printf", "format")
#: Name the rerun gives a ``printf``/``format`` call it keeps guarded (:func:`guard_printf_calls`), + ``<k>_``.
_GUARDED_PRINTF = "sqlsociety_guarded_printf_"
_INT31 = 1 << 31  # SQLite reads printf widths and precisions as C ints
#: Characters SQLite's printf accepts between ``%`` and the conversion (flags, width, precision, ``l``).
_PRINTF_SPEC_CHARS = frozenset("-+ #!0,l.*123456789")
#: Conversions whose precision only shortens the output (it bounds how much input is read).
_PRECISION_SHORTENS = frozenset("sSzqQwT")
_LEADING_NUMBER = re.compile(r"\s*[+-]?(\d*)(\.\d*)?(?:[eE][+-]?\d+)?")


class _TooBig(Exception):
    """A replacement would build a value above the length limit."""


def _digits_bound(digits: str) -> int:
    """Value of a run of ASCII digits as SQLite's printf would use it, capped at 2**31."""
    return _INT31 if len(digits) > 10 else min(int(digits), _INT31)


def _int_arg_bound(v: Any) -> int:
    """Upper bound of ``abs(sqlite3_value_int64(v))`` truncated to a C int, for any SQL value.

    SQLite reads text (and blobs, as text) by their leading integer; a leading real
    (``'2e9'``) is counted too, so the bound holds whichever reading a version uses.
    """
    if v is None:
        return 0
    if isinstance(v, int):
        return min(abs(v), _INT31)
    if isinstance(v, float):
        return min(abs(int(v)), _INT31) if math.isfinite(v) else _INT31
    text = v.decode("latin-1") if isinstance(v, bytes) else str(v)
    m = _LEADING_NUMBER.match(text[:400])
    if m is None or not (m.group(1) or (m.group(2) or "").strip(".")):
        return 0
    bound = _digits_bound(m.group(1)) if m.group(1) else 0
    try:
        f = float(m.group(0))
    except (ValueError, OverflowError):
        return max(bound, _INT31)
    return max(bound, min(abs(int(f)), _INT31) if math.isfinite(f) else _INT31)


def printf_width_bound(fmt: Any, args: tuple) -> int:
    """Upper bound on the characters ``printf(fmt, *args)`` pads or repeats, as SQLite 3.40 reads it.

    Adds every width, and every precision except those of string conversions (where it only
    shortens). ``*`` counts as the largest value any argument could give (SQLite converts
    integers, reals and numeric text alike). ``fmt`` may be text or a blob (read as text);
    numbers and NULL contain no ``%``. Over-estimates rather than under-estimates.

    Returns:
        a non-negative int (at most ``2**31`` per width or precision).
    """
    if isinstance(fmt, bytes):
        text = fmt.decode("latin-1")
    elif isinstance(fmt, str):
        text = fmt
    else:
        return 0
    star = max((_int_arg_bound(a) for a in args), default=0)
    total, i, n = 0, 0, len(text)
    while True:
        i = text.find("%", i)
        if i < 0:
            return total
        i += 1
        width = precision = 0
        in_precision = False
        while i < n and text[i] in _PRINTF_SPEC_CHARS:
            c = text[i]
            if c == ".":
                in_precision = True
                i += 1
                continue
            if c == "*":
                value = star
                i += 1
            elif c.isdigit():
                j = i
                while j < n and "0" <= text[j] <= "9":
                    j += 1
                value = _digits_bound(text[i:j])
                i = j
            else:
                i += 1
                continue
            if in_precision:
                precision = max(precision, value)
            else:
                width = max(width, value)
        conversion = text[i] if i < n else ""
        total += width + (0 if conversion in _PRECISION_SHORTENS and conversion else precision)
        i += 1


_SQL_TOKEN = re.compile(
    r"""(?P<skip>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<str>'(?:[^']|'')*'?)"""
    r"""|(?P<qid>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)"""
    r"""|(?P<id>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)"""
    r"""|(?P<other>.)""",
    re.S,
)


def guard_printf_calls(sql: str, max_chars: int) -> tuple[str, dict[str, str]]:
    """Rename the ``printf``/``format`` calls of ``sql`` that SQLite's own printf could spin on.

    A call stays as it is when its format is a string literal with no ``*`` whose widths and
    precisions add up to at most ``max_chars`` (:func:`printf_width_bound`): whatever its other
    arguments, SQLite's printf is then bounded. Every other call is renamed
    ``sqlsociety_guarded_printf_<k>_`` (k = 0, 1, ...), a name the rerun registers as the Python
    guard. The SQL is tokenized as SQLite does for this purpose (comments, ``'...'`` literals,
    ``"..."``, ````...```` and ``[...]`` identifiers, which may name the function too); a
    ``printf``/``format`` name not followed by ``(`` is a column, not a call, and is left alone.

    Returns:
        ``(rewritten sql, {new name: the call's name as written})``; the SQL unchanged and ``{}``
        when every call is bounded (or there is none).
    """
    tokens = []
    for m in _SQL_TOKEN.finditer(sql):
        if m.lastgroup != "skip":
            kind, value = m.lastgroup, m.group()
            name = value[1:-1] if kind == "qid" and len(value) >= 2 else value
            tokens.append((kind, name, m.start(), m.end()))
    renames: list[tuple[int, int, str]] = []
    for i, (kind, name, start, end) in enumerate(tokens):
        if kind not in ("id", "qid") or not name.isascii() or name.lower() not in ("printf", "format"):
            continue
        if i + 1 >= len(tokens) or tokens[i + 1][:2] != ("other", "("):
            continue  # a column or table called printf/format
        fmt = tokens[i + 2] if i + 2 < len(tokens) else None
        after = tokens[i + 3][:2] if i + 3 < len(tokens) else None
        if (fmt is not None and fmt[0] == "str" and len(fmt[1]) >= 2 and fmt[1].endswith("'")
                and after in (("other", ","), ("other", ")"))
                and printf_width_bound(fmt[1][1:-1].replace("''", "'"), (_INT31,)) <= max_chars):
            continue  # a '*' counts as 2**31 above: only literal widths pass
        renames.append((start, end, f"{_GUARDED_PRINTF}{len(renames)}_"))
    names = {new: sql[start:end] for start, end, new in renames}
    for start, end, new in reversed(renames):
        sql = sql[:start] + new + sql[end:]
    return sql, names


def _recording(method: Callable) -> Callable:
    """Wrap an override so that any exception it raises is recorded in ``self.last_error``.

    A "user-defined function raised exception" with nothing recorded therefore means that
    ``sqlite3`` could not convert an argument or the result (e.g. text with invalid UTF-8).
    """

    def wrapper(self: _StringFunctions, *args: Any) -> Any:
        try:
            return method(self, *args)
        except BaseException as e:
            if self.last_error is None:
                self.last_error = str(e) or type(e).__name__
            raise

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class _StringFunctions:
    """Replacements for ``trim``/``ltrim``/``rtrim``/``instr``/``replace``/``printf``/``format``
    (see the module docstring, layer 5).

    Small operands go to the built-in on a private in-memory connection (identical
    results); large ones use Python's linear-time ``str``/``bytes`` operations. Every
    failure is recorded in ``last_error`` (the message the caller reports).
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
        return self.mem.execute(sql, args).fetchone()[0]

    def _text(self, v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        return self._builtin("SELECT CAST(? AS TEXT)", (v,))  # SQLite's own number rendering

    def _fail(self, what: str) -> None:
        self.last_error = f"string or blob too big (result of {what} exceeds {self.max_chars} bytes)"
        raise _TooBig(self.last_error)

    @_recording
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

    @_recording
    def instr(self, x: Any, y: Any) -> Any:
        if self._size((x, y)) <= _SMALL_OPERANDS:
            return self._builtin("SELECT instr(?, ?)", (x, y))
        if x is None or y is None:
            return None
        if isinstance(x, bytes) and isinstance(y, bytes):
            return x.find(y) + 1
        return self._text(x).find(self._text(y)) + 1

    @_recording
    def strip(self, name: str, x: Any, y: Any, left: bool, right: bool) -> Any:
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

    @_recording
    def printf(self, fmt: Any, *args: Any) -> Any:
        # SQLite 3.40's printf loops once per padded/repeated character even after its buffer
        # is full ("%.2000000000c": seconds inside one instruction). Refuse any call whose
        # widths and precisions may add up past the value cap; run the others with the built-in.
        if printf_width_bound(fmt, args) > self.max_chars:
            self._fail("printf()/format()")
        return self._builtin(f"SELECT printf({', '.join('?' * (1 + len(args)))})", (fmt, *args))

    def install(self, conn: sqlite3.Connection, names: tuple[str, ...] = _ALL_OVERRIDES) -> None:
        """Register the replacements named in ``names`` on ``conn`` (1- and 2-argument trims, instr,
        replace, printf/format, and the guarded printf names of :func:`guard_printf_calls`; the
        functions not named stay SQLite's)."""
        for name, left, right in (("trim", True, True), ("ltrim", True, False), ("rtrim", False, True)):
            if name not in names:
                continue
            conn.create_function(
                name, 2, (lambda x, y, _n=name, _l=left, _r=right: self.strip(_n, x, y, _l, _r)), deterministic=True
            )
            conn.create_function(
                name, 1, (lambda x, _n=name, _l=left, _r=right: self.strip(_n, x, " ", _l, _r)), deterministic=True
            )
        if "instr" in names:
            conn.create_function("instr", 2, self.instr, deterministic=True)
        if "replace" in names:
            conn.create_function("replace", 3, self.replace, deterministic=True)
        for name in names:
            if name in ("printf", "format") or name.startswith(_GUARDED_PRINTF):
                conn.create_function(name, -1, self.printf, deterministic=True)


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
    statement whose arguments the Python overrides cannot receive (module docstring, layer 5),
    the guarded printf names of :func:`guard_printf_calls` (the only overrides then), with every
    string and blob limited to :data:`UTF8_RERUN_MAX_BYTES` (or ``max_value_bytes`` when smaller).
    """

    def __init__(self, path: Path, max_value_bytes: int, guarded: tuple[str, ...] | None = None) -> None:
        self.deadline = math.inf
        limit = max_value_bytes if guarded is None else min(max_value_bytes, UTF8_RERUN_MAX_BYTES)
        self.conn = open_readonly(path, max_value_bytes=limit)
        self.funcs = _StringFunctions(limit)
        self.funcs.install(self.conn, _ALL_OVERRIDES if guarded is None else guarded)
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


def close_connections() -> None:
    """Close this thread's cached in-process connections and stop this process's idle workers.

    Both come back on demand; use it to release file handles (e.g. before deleting a database).
    """
    while _cache.conns:
        _cache.conns.popitem()[1].close()
    pool = _pools.get(os.getpid())
    if pool is not None:
        pool.close_idle()


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


def _run_statement(
    path: Path, sql: str, timeout_s: float, max_rows: int, max_value_bytes: int, max_result_bytes: int, reuse: bool
) -> tuple:
    """Run ``sql`` on ``path`` in this process (layers 1-5 and 7 of the module docstring).

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
    """One pass of :func:`_run_statement` on one connection (see there). ``rerun``: None on the
    first pass; on the rerun the renamed printf calls (:func:`guard_printf_calls`), whose names are
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


# --------------------------------------------------------------------------- worker processes

_FRAME = struct.Struct("!Q")
#: Exceptions a worker may ask the caller to raise (anything else becomes ValueError).
_RAISABLE: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
    "PermissionError": PermissionError,
    "IsADirectoryError": IsADirectoryError,
    "TypeError": TypeError,
    "OSError": OSError,
}
_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_sqlsociety_executor_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod._worker_main()\n"
)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_frame(fd: int, obj: Any) -> None:
    payload = marshal.dumps(obj, 4)
    _write_all(fd, _FRAME.pack(len(payload)) + payload)


def _frame_need(buf: bytearray) -> int:
    """Bytes the frame at the start of ``buf`` needs in all: the header's size until the header is
    in, then header + payload (so ``len(buf) >= _frame_need(buf)`` means a whole frame is there)."""
    return _FRAME.size if len(buf) < _FRAME.size else _FRAME.size + _FRAME.unpack_from(buf)[0]


def _read_frame_blocking(fd: int, buf: bytearray) -> Any:
    """Read one frame from ``fd`` (bytes beyond it stay in ``buf``); None at end of file."""
    while True:
        need = _frame_need(buf)
        if len(buf) >= need:
            payload = bytes(buf[_FRAME.size : need])
            del buf[:need]
            return marshal.loads(payload)
        chunk = os.read(fd, max(need - len(buf), 1 << 16))
        if not chunk:
            return None
        buf += chunk


def _peak_resident_bytes() -> int:
    """This process's peak resident set size in bytes (0 where ``resource`` is unavailable).

    The peak, not the current size: memory a statement made the allocator keep shows in it.
    """
    try:  # Linux: the peak of this process image (ru_maxrss would keep the pre-exec parent's peak)
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _watch_parent(ppid: int) -> None:
    """Worker thread: exit the worker as soon as the process that started it is gone."""
    while True:
        time.sleep(0.2)
        if os.getppid() != ppid:
            os._exit(0)


def _worker_main() -> None:
    """Body of a worker process: read requests on stdin, answer on stdout, until stdin closes.

    Request: ``(path, sql, timeout_s, max_rows, max_value_bytes, max_result_bytes, reuse)``.
    Reply: ``(reply, peak resident bytes)`` where ``reply`` is what :func:`_run_statement` returns
    or ``("raise", exception name, message)``. Frames are an 8-byte length plus ``marshal`` data.
    """
    rfd, wfd = 0, os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing else may write into the reply channel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MAX_WORKER_MEMORY_BYTES, MAX_WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not on this platform: the deadline still holds
        pass
    heap = sqlite3.connect(":memory:")
    heap.execute(f"PRAGMA hard_heap_limit = {int(WORKER_SQLITE_HEAP_BYTES)}")  # process-wide
    heap.close()
    threading.stack_size(256 * 1024)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    _write_frame(wfd, ("ready", os.getpid()))
    pending = bytearray()
    while True:
        request = _read_frame_blocking(rfd, pending)
        if request is None:
            os._exit(0)
        try:
            path, sql, timeout_s, max_rows, mvb, mrb, reuse = request
            reply: tuple = _run_statement(Path(path), sql, timeout_s, max_rows, mvb, mrb, reuse)
        except (ValueError, OSError, TypeError) as e:
            reply = ("raise", type(e).__name__, str(e))
        except MemoryError as e:
            reply = ("error", ErrorCategory.OTHER.value, f"out of memory ({e})" if str(e) else "out of memory")
        except BaseException as e:  # noqa: BLE001 -- a bug here must not kill the worker silently
            reply = ("error", ErrorCategory.OTHER.value, f"{type(e).__name__}: {e}")
        try:
            _write_frame(wfd, (reply, _peak_resident_bytes()))
        except MemoryError:
            del reply
            _write_frame(wfd, (("error", ErrorCategory.OTHER.value, "out of memory (result too large to send)"), 0))


class _WorkerDied(Exception):
    """The worker's pipe closed (the process exited or was killed)."""


class _Worker:
    """One worker process (see the module docstring, layer 6) seen from the calling process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in a terminal reaches the caller, not the workers
        )
        self.started = time.monotonic()
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def dying(self) -> bool:
        """Whether this idle worker is on its way out though not yet reaped: a SIGKILL pending, or
        exiting, or a zombie (Linux ``/proc/<pid>/stat``; False where that cannot be read).

        A killed process is still "running" to ``poll()`` until it has torn down its address space
        and closed its files, and a statement written to it then would be lost with it."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()  # fields 3 (state) onwards
            state, flags, pending = fields[0], int(fields[6]), int(fields[28])
        except (OSError, ValueError, IndexError):
            return False
        return state in (b"Z", b"X") or bool(flags & 0x4) or bool(pending & (1 << (signal.SIGKILL - 1)))  # PF_EXITING

    def hung_up(self) -> bool:
        """Whether the reply pipe of this idle worker is already at end of file or holds bytes
        nobody asked for (either way the worker cannot take a statement)."""
        return bool(self.poller.poll(0))

    def unread_request_bytes(self) -> int | None:
        """Bytes of the last request still in the worker's stdin pipe (the worker did not read all
        of it), or None where the platform cannot tell (``FIONREAD`` on a pipe's write end is Linux's)."""
        try:
            import fcntl
            import termios

            return struct.unpack("i", fcntl.ioctl(self.wfd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except (ImportError, OSError, ValueError, struct.error):
            return None

    def _read_frame(self, deadline: float) -> Any:
        """One reply frame, read by ``deadline`` (raises TimeoutError, or _WorkerDied at end of file)."""
        buf = bytearray()
        while True:
            need = _frame_need(buf)
            if len(buf) >= need:
                return marshal.loads(memoryview(buf)[_FRAME.size : need])
            left = deadline - time.monotonic()
            # past the deadline, what is already in the pipe still counts (a worker that became
            # ready long ago and sat idle has its "ready" frame waiting there)
            if not self.poller.poll(max(1, math.ceil(left * 1000)) if left > 0 else 0):
                if left <= 0:
                    raise TimeoutError
                continue
            chunk = os.read(self.rfd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise _WorkerDied
            buf += chunk

    def wait_ready(self) -> bool:
        """Wait (at most :data:`WORKER_START_TIMEOUT_S` from its start) until the worker is ready."""
        if not self.ready:
            try:
                msg = self._read_frame(self.started + WORKER_START_TIMEOUT_S)
            except (TimeoutError, _WorkerDied, ValueError, EOFError):
                return False
            self.ready = isinstance(msg, tuple) and msg[:1] == ("ready",)
        return self.ready

    def request(self, req: tuple, deadline: float) -> tuple:
        """Send one request; return ``(reply, peak resident bytes of the worker)``.

        Raises:
            TimeoutError: no complete reply by ``deadline`` (``time.monotonic()`` seconds).
            _WorkerDied: the worker exited before replying (or before it could be sent the request).
        """
        payload = marshal.dumps(req, 4)
        try:
            _write_all(self.wfd, _FRAME.pack(len(payload)) + payload)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _WorkerDied("unsent") from e
        try:
            out = self._read_frame(deadline)
        except _WorkerDied:
            # The pipe closed. If the request is still (partly) in the worker's stdin pipe, the
            # worker died before it read the statement -- killed while idle and still exiting
            # when the request was written (the write succeeds until its pipe closes) -- so the
            # statement never ran.
            if self.unread_request_bytes():
                raise _WorkerDied("unsent") from None
            raise
        except (ValueError, EOFError, TypeError) as e:  # garbled reply: treat the worker as lost
            raise _WorkerDied from e
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], tuple)):
            raise _WorkerDied
        return out

    def reap(self) -> str:
        """Wait (up to 1 s) for a worker whose pipe closed to exit; return how it ended."""
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        return self.kill()

    def kill(self) -> str:
        """SIGKILL the worker (if still running) and close the pipes; return how it ended.

        The process is reaped by a background thread (tearing down a large address space
        can take tens of milliseconds), so the caller does not wait for it.
        """
        code = self.proc.poll()
        if code is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            threading.Thread(target=self.proc.wait, daemon=True).start()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if code is None:
            return "killed by the executor"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _Pool:
    """Idle workers of one process; a call takes one (or starts one) and gives it back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.closed = False

    def take(self) -> _Worker:
        with self.lock:
            if self.idle:
                return self.idle.pop()  # one that died while idle fails to take the request: retried
        return _Worker()

    def give(self, w: _Worker) -> None:
        with self.lock:
            if not self.closed and len(self.idle) < MAX_IDLE_WORKERS:
                self.idle.append(w)
                return
        w.kill()

    def replace(self, w: _Worker) -> str:
        """Kill ``w`` and start its replacement now, so that the next call finds it ready."""
        how = w.kill()
        with self.lock:
            if self.closed or len(self.idle) >= MAX_IDLE_WORKERS:
                return how
        try:
            self.give(_Worker())
        except OSError:
            pass  # the next call starts one (and reports if it cannot)
        return how

    def close_idle(self, final: bool = False) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
            self.closed = self.closed or final
        for w in idle:
            w.kill()


_pools: dict[int, _Pool] = {}
_pools_lock = threading.Lock()


def _pool() -> _Pool:
    """This process's pool (a forked child gets its own; the parent's workers are left alone)."""
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        with _pools_lock:
            pool = _pools.setdefault(pid, _Pool())
    return pool


@atexit.register
def _stop_workers() -> None:
    pool = _pools.get(os.getpid())
    if pool is not None:
        pool.close_idle(final=True)


def worker_pids() -> list[int]:
    """Process ids of this process's idle workers (for tests and monitoring)."""
    pool = _pools.get(os.getpid())
    if pool is None:
        return []
    with pool.lock:
        return [w.pid for w in pool.idle]


def _in_worker(path: Path, sql: str, timeout_s: float, max_rows: int, mvb: int, mrb: int) -> tuple:
    """Run the statement in a pooled worker under the hard deadline; return a reply tuple."""
    pool = _pool()
    req = (str(path), sql, float(timeout_s), int(max_rows), int(mvb), int(mrb), bool(REUSE_CONNECTIONS))
    # workers found dead before they read the statement (killed from outside while idle): each
    # replaced and the statement sent to the next, at most a pool's worth and a fresh one
    lost = 0
    while True:
        w = pool.take()
        if w.ready and (not w.alive() or w.dying() or w.hung_up()) and lost <= MAX_IDLE_WORKERS:  # died while idle
            w.kill()
            lost += 1
            continue
        try:
            if not w.wait_ready():
                died = not w.alive()
                how = w.kill()
                if died and lost <= MAX_IDLE_WORKERS:
                    lost += 1
                    continue  # killed before it was ready (e.g. while idle): try the next / a fresh worker
                return ("error", ErrorCategory.OTHER.value,
                        f"executor worker did not start within {WORKER_START_TIMEOUT_S} s ({how})")
            reply, resident = w.request(req, time.monotonic() + timeout_s + KILL_GRACE_S)
        except TimeoutError:
            pool.replace(w)
            return ("error", ErrorCategory.TIMEOUT.value,
                    f"interrupted: the statement ran past timeout_s={timeout_s} s and its worker process was killed")
        except _WorkerDied as e:
            if e.args == ("unsent",) and lost <= MAX_IDLE_WORKERS:
                pool.replace(w)  # no wait for its exit: how it ended is reported to nobody
                lost += 1
                continue  # lost before it read the statement (e.g. killed while idle): the next / a fresh worker
            how = w.reap()
            pool.replace(w)
            return ("error", ErrorCategory.OTHER.value, f"executor worker died while running the statement ({how})")
        except BaseException:
            w.kill()  # e.g. KeyboardInterrupt: a reply may still be pending, never reuse the worker
            raise
        if resident > WORKER_RECYCLE_BYTES:
            pool.replace(w)
        else:
            pool.give(w)
        return reply


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
        timeout_s: wall-clock budget in seconds (> 0) for preparing, running and fetching; the
            call returns within ``timeout_s`` + :data:`KILL_GRACE_S` (+ milliseconds to kill a
            worker) once a worker is ready (see the module docstring on deadlines).
        max_rows: most rows returned (>= 1); ``truncated`` is True when there were more.
        max_value_bytes: longest string/blob any expression may build (SQLITE_LIMIT_LENGTH).
        max_result_bytes: cap on the summed size of returned values in bytes (text as UTF-8,
            blobs as is, numbers and NULL 8 each). Rows are kept while the sum stays within
            the cap; the first row that would pass it is dropped and ``truncated`` is set (so a
            single row larger than the cap gives no rows and ``truncated``).

    Returns:
        :class:`ExecutionResult` (``rows`` as tuples of ``int``/``float``/``str``/``bytes``/``None``,
        BLOBs returned as ``bytes`` unchanged; invalid UTF-8 text is decoded with U+FFFD) or
        :class:`ExecutionError` with a :class:`ErrorCategory`: ``timeout`` when the deadline
        passed (interrupted, or the worker killed), ``other`` with "out of memory" when a
        memory bound was hit or "executor worker died" when the worker was lost.

    Raises:
        FileNotFoundError: ``db_path`` does not exist.
        ValueError: ``db_path`` is a directory or not an SQLite database; a limit is out of range.
        TypeError: ``sql`` is not a string.
    """
    t0 = time.perf_counter()
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, got {type(sql).__name__}; pass the statement text")
    if not timeout_s > 0 or not math.isfinite(timeout_s):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows!r}")
    if max_value_bytes < 1 or max_result_bytes < 1:
        raise ValueError(
            f"max_value_bytes and max_result_bytes must be >= 1, got {max_value_bytes!r} and {max_result_bytes!r}"
        )
    path = _check_path(db_path)
    if USE_WORKERS:
        reply = _in_worker(path, sql, timeout_s, max_rows, max_value_bytes, max_result_bytes)
    else:
        reply = _run_statement(path, sql, timeout_s, max_rows, max_value_bytes, max_result_bytes, REUSE_CONNECTIONS)
    ms = (time.perf_counter() - t0) * 1000.0
    kind = reply[0]
    if kind == "ok":
        return ExecutionResult(list(reply[1]), list(reply[2]), bool(reply[3]), ms)
    if kind == "error":
        return ExecutionError(ErrorCategory(reply[1]), str(reply[2]), ms)
    raise _RAISABLE.get(reply[1], ValueError)(reply[2])


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
    "printf_width_bound",
    "guard_printf_calls",
    "worker_pids",
    "DENIED_FUNCTIONS",
    "MAX_VALUE_BYTES",
    "MAX_RESULT_BYTES",
    "MAX_WORKER_MEMORY_BYTES",
    "UTF8_RERUN_MAX_BYTES",
]
