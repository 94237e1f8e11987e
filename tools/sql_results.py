"""What running one statement gives: :class:`ExecutionResult` or :class:`ExecutionError`, and the
error's :class:`ErrorCategory` read from SQLite's message (:func:`categorize_error`).

Standard library only: the executor's worker processes (:mod:`tools.sql_worker`) import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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
