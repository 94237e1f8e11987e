"""Safe execution of untrusted, model-written SQL against SQLite.

INTERFACE CONTRACT (implementation in progress by the tools helper — keep these names and shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


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
    ``truncated`` True when more rows existed, ``elapsed_ms`` wall-clock milliseconds."""

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


def execute_sql(
    db_path: str | Path,
    sql: str,
    *,
    timeout_s: float = 5.0,
    max_rows: int = 10_000,
) -> ExecutionResult | ExecutionError:
    """Run one read-only statement; never raises for bad SQL, never writes, never hangs past ``timeout_s``."""
    raise NotImplementedError("being implemented by the tools helper")
