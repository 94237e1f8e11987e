"""Safe execution of untrusted, model-written SQL against SQLite.

Model-written SQL must never change a database, never hang the caller and never blow its
memory. :func:`execute_sql` therefore runs every statement in a **worker process** under a
hard deadline and an address-space limit, and inside that worker under several in-process
layers, so that one slip does not defeat the others:

1. **Read-only open**: URI ``file:<path>?mode=ro`` (SQLite never creates or writes
   the file) and ``PRAGMA query_only=ON``.
2. **Authorizer allow-list** (``Connection.set_authorizer``): only ``SELECT``,
   column/table reads, recursive CTEs and functions other than
   :data:`tools.sandbox.DENIED_FUNCTIONS` are allowed. Everything else is denied at prepare
   time: INSERT/UPDATE/DELETE/REPLACE, CREATE/DROP/ALTER (temp objects too),
   ATTACH/DETACH (VACUUM and VACUUM INTO are authorized as ATTACH), PRAGMA,
   BEGIN/COMMIT/ROLLBACK/SAVEPOINT, REINDEX, ANALYZE, virtual-table creation.
3. **Limits** (``Connection.setlimit``): strings/blobs at most ``max_value_bytes``
   (``randomblob(2e9)``, ``zeroblob`` and doubling CTEs fail fast with "string or blob
   too big"), no attached databases, SQL text, LIKE/GLOB pattern length and program size
   bounded. In a worker SQLite's own heap is capped too (:data:`tools.sql_worker.WORKER_SQLITE_HEAP_BYTES`,
   ``sqlite3_hard_heap_limit64``), so most runaway allocations end as "out of memory".
4. **Progress handler**: checked every :data:`tools.sandbox.PROGRESS_STEPS` VDBE instructions, it
   interrupts a running statement once ``timeout_s`` has passed (category ``timeout``).
5. **Function overrides**: SQLite's ``trim``/``ltrim``/``rtrim`` (O(len(X)*len(Y))) and
   ``instr``/``replace`` (naive search) run inside one VM instruction, where no progress
   handler can stop them. They are replaced by functions that call the built-in for small
   operands (identical results) and a linear-time equivalent for large ones. ``printf``/
   ``format`` calls whose widths and precisions may add up past the value cap are refused
   ("string or blob too big"); the bound is computed from SQLite's own reading of the
   format (text or blob) and of ``*`` arguments (integers, reals, numeric text). Python
   cannot pass text that is not valid UTF-8 to an override; a statement that gives such
   text to one is rerun once with the guards in another form (:data:`tools.sql_functions.UTF8_RERUN_MAX_BYTES`):
   ``trim``/``ltrim``/``rtrim``/``instr``/``replace`` are SQLite's own, with every string
   and blob of the statement limited to that many bytes (their work grows with the product
   of their operands' lengths: at most milliseconds then); a ``printf``/``format`` call whose
   format is a literal without ``*`` and whose widths and precisions stay within the limit is
   SQLite's own, every other call keeps the Python guard (:func:`tools.sql_functions.guard_printf_calls`). Such a
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
   space is limited to :data:`tools.sql_worker.MAX_WORKER_MEMORY_BYTES` (``RLIMIT_AS``). The caller waits
   at most ``timeout_s`` + :data:`tools.worker_pool.KILL_GRACE_S` for the reply; past that it SIGKILLs the
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
bounded by :data:`tools.worker_pool.WORKER_START_TIMEOUT_S`.

Memory bound: each worker's address space is at most :data:`tools.sql_worker.MAX_WORKER_MEMORY_BYTES`; a
worker whose peak resident memory is above :data:`tools.worker_pool.WORKER_RECYCLE_BYTES` after a statement is
replaced, so memory a hostile statement made SQLite or the allocator keep is given back.
The calling process only receives the reply: at most ``max_result_bytes`` of values plus
Python's per-object overhead.

Workers are pooled: a call takes an idle worker or starts one (so concurrent threads never
wait for each other), and gives it back afterwards; at most :data:`tools.worker_pool.MAX_IDLE_WORKERS` idle
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

Files: :mod:`tools.sql_results` (what a run returns and the error categories),
:mod:`tools.sql_functions` (layer 5), :mod:`tools.sandbox` (layers 1-5 and 7: one statement on one
hardened connection, in this process), :mod:`tools.sql_worker` and :mod:`tools.worker_pool` (layer 6:
the worker process and the calling side's pool), and this module (the checks of the arguments, the choice
between a worker and this process, the result types, :func:`result_digest`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tools import sandbox, worker_pool
from tools.sandbox import MAX_VALUE_BYTES
from tools.sql_results import ErrorCategory, ExecutionError, ExecutionResult

#: Default cap on the summed size of returned values, in bytes (text counted as UTF-8,
#: numbers and NULL as 8 bytes each).
MAX_RESULT_BYTES = 32 * 1024 * 1024
#: Run statements in worker processes (True, the default) or in the calling process (False:
#: no hard deadline and no memory bound; for benchmarks and tests only).
USE_WORKERS = True
#: Exceptions a worker may ask the caller to raise (anything else becomes ValueError).
_RAISABLE: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
    "PermissionError": PermissionError,
    "IsADirectoryError": IsADirectoryError,
    "TypeError": TypeError,
    "OSError": OSError,
}


def close_connections() -> None:
    """Close this thread's cached in-process connections and stop this process's idle workers.

    Both come back on demand; use it to release file handles (e.g. before deleting a database).
    """
    sandbox.close_cached_connections()
    worker_pool.close_idle_workers()


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
            call returns within ``timeout_s`` + :data:`tools.worker_pool.KILL_GRACE_S` (+ milliseconds to kill a
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
    path = sandbox.check_path(db_path)
    if USE_WORKERS:
        reply = worker_pool.run_in_worker(path, sql, timeout_s, max_rows, max_value_bytes, max_result_bytes)
    else:
        reply = sandbox.run_statement(
            path, sql, timeout_s, max_rows, max_value_bytes, max_result_bytes, sandbox.REUSE_CONNECTIONS
        )
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


__all__ = ["execute_sql", "result_digest", "close_connections", "MAX_RESULT_BYTES", "USE_WORKERS"]
