"""A persistent Agent Lightning store on one SQLite file (``RUN_DIR/store.sqlite``).

Agent Lightning 0.3.0 ships an in-memory store and a MongoDB one; its ``store/sqlite.py`` is an
empty TODO. This module fills that gap at the layer Agent Lightning designed for it, the
collection interface (:class:`agentlightning.store.collection.LightningCollections`), the same
layer :class:`agentlightning.store.mongo.MongoLightningStore` plugs into:

* :class:`SqliteLightningCollections` keeps Agent Lightning's in-memory collections for every
  read (so filtering, sorting and locking behave exactly as in ``InMemoryLightningStore``) and
  writes every mutation through to SQLite *in the same call*: each ``insert``/``update``/
  ``upsert``/``delete`` of rollouts, attempts, spans, resources and workers, each queue
  ``enqueue``/``dequeue`` and each span-sequence counter change is one SQLite transaction,
  committed before the store call returns. SQLite runs in WAL mode with
  ``synchronous=NORMAL``: a killed process (SIGKILL, OOM) loses nothing that was committed; a
  power cut may lose the last transactions (pass ``synchronous="FULL"`` to close that too).
* :class:`SqliteLightningStore` is ``InMemoryLightningStore`` on those collections, reloaded
  from the file when it exists, so ``agl.Trainer(store=SqliteLightningStore(path))`` works and
  a run killed at any point resumes with every finished rollout, its spans and its reward.
* :class:`RolloutArchive` reads the same file without Agent Lightning's machinery (read-only,
  safe while a trainer writes): rollouts with status and reward, spans per rollout, the task
  ids already done. Adapters, reports and resume logic use it.

Concurrency: Agent Lightning's default ``ClientServerExecutionStrategy`` keeps the store in the
trainer's main process behind an HTTP server thread; runner processes (``n_runners``) reach it
through ``LightningStoreClient``. So exactly one process writes, from several threads: the
store is created thread-safe and all SQLite access goes through one connection under a lock.
A second process opening the same file for writing gets :class:`StoreLockedError` (a POSIX
record lock, released by the kernel when the holder dies, not inherited by forked runners).

Many machines: SQLite is for one machine. For runners on several hosts use Agent Lightning's
``MongoLightningStore`` (``pip install 'agentlightning[mongo]'``, a MongoDB replica set), which
implements the same collection interface with MongoDB as the source of truth.

Schema (one table per collection; ``data`` holds the pydantic model as JSON, the other columns
are indexed copies of fields for SQL queries)::

    rollouts(rollout_id PK, status, mode, task_id, start_time, end_time, data)
    attempts(rollout_id, attempt_id, sequence_id, status, start_time, end_time, data)
    spans(rollout_id, attempt_id, span_id, sequence_id, name, start_time, end_time, data)
    resources(resources_id PK, update_time, data)      workers(worker_id PK, status, data)
    rollout_queue(pos PK autoincrement, item)          span_sequence_ids(key PK, value)
    rewards(rollout_id, attempt_id, span_id PK, sequence_id, value)   -- one row per reward span
    meta(key PK, value)                                -- schema version
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

os.environ.setdefault(
    "LITELLM_LOCAL_MODEL_COST_MAP", "True"
)  # litellm (imported by agl) stalls on the network otherwise

from agentlightning.emitter.reward import get_reward_value
from agentlightning.store.collection.memory import (
    DequeBasedQueue,
    DictBasedKeyValue,
    InMemoryLightningCollections,
    ListBasedCollection,
)
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.types import Attempt, PaginatedResult, ResourcesUpdate, Rollout, Span, Worker
from pydantic import BaseModel

from tools.sqlite_files import read_only_uri

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Rollout statuses that mean "will not change any more" (Agent Lightning's ``is_finished``).
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
#: Rollout statuses that mean "was still queued or running".
UNFINISHED_STATUSES = ("queuing", "preparing", "running", "requeuing")
#: Attempt statuses of an attempt that a live worker still owned.
LIVE_ATTEMPT_STATUSES = ("preparing", "running")

RecoverMode = Literal["cancel", "requeue", "keep"]

T = TypeVar("T", bound=BaseModel)


class StoreError(RuntimeError):
    """Base class of this module's errors; the message names the file and the fix."""


class StoreLockedError(StoreError):
    """Another live process holds the store file open for writing."""


def task_id_of(rollout: Rollout) -> str | None:
    """The task id of a rollout: ``input["task_id"]`` if the input is a mapping with one, else
    ``metadata["task_id"]``, else None. Gather enqueues Spider tasks as ``{"task_id": "train-12", ...}``."""
    inp = rollout.input
    if isinstance(inp, Mapping) and inp.get("task_id") is not None:
        return str(inp["task_id"])
    if rollout.metadata and rollout.metadata.get("task_id") is not None:
        return str(rollout.metadata["task_id"])
    return None


# --------------------------------------------------------------------------------------------
# The SQLite file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """How one collection maps to a table: primary-key fields and indexed copies of fields."""

    name: str
    model: type[BaseModel]
    primary_keys: tuple[str, ...]
    columns: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    indexes: tuple[tuple[str, ...], ...] = ()


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda item: getattr(item, name, None)


_TABLES: dict[str, _Table] = {
    "rollouts": _Table(
        "rollouts",
        Rollout,
        ("rollout_id",),
        {
            "status": _attr("status"),
            "mode": _attr("mode"),
            "task_id": task_id_of,
            "start_time": _attr("start_time"),
            "end_time": _attr("end_time"),
        },
        (("status",), ("task_id",)),
    ),
    "attempts": _Table(
        "attempts",
        Attempt,
        ("rollout_id", "attempt_id"),
        {
            "sequence_id": _attr("sequence_id"),
            "status": _attr("status"),
            "start_time": _attr("start_time"),
            "end_time": _attr("end_time"),
        },
    ),
    "spans": _Table(
        "spans",
        Span,
        ("rollout_id", "attempt_id", "span_id"),
        {
            "sequence_id": _attr("sequence_id"),
            "name": _attr("name"),
            "start_time": _attr("start_time"),
            "end_time": _attr("end_time"),
        },
        (("rollout_id", "sequence_id"), ("name",)),
    ),
    "resources": _Table("resources", ResourcesUpdate, ("resources_id",), {"update_time": _attr("update_time")}),
    "workers": _Table("workers", Worker, ("worker_id",), {"status": _attr("status")}),
}


def _connect(path: Path, *, readonly: bool, synchronous: str = "NORMAL", snapshot: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(read_only_uri(path, snapshot=snapshot), uri=True, check_same_thread=False,
                               isolation_level=None)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _SqliteFile:
    """One writable SQLite connection shared by all threads of the owning process.

    Every write is a short ``BEGIN IMMEDIATE ... COMMIT`` under a process-local lock. A forked
    child (an Agent Lightning runner) must not use the inherited connection; it gets a clear
    error instead of a corrupted file.
    """

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in {"NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous!r}: use 'NORMAL', 'FULL' or 'EXTRA'")
        self.path = path
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._lock_fd = self._acquire_process_lock(path)
        self.conn = _connect(path, readonly=False, synchronous=synchronous.upper())
        self._create_schema()

    @staticmethod
    def _acquire_process_lock(path: Path) -> int:
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # lockf = POSIX record lock: owned by this process only (forked runners do not inherit it),
            # dropped by the kernel when the process dies, however it dies.
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            raise StoreLockedError(
                f"{path} is open for writing by another process{f' (pid {holder})' if holder else ''}; "
                "stop that run first, or read it with evaluation.tracing.store.RolloutArchive (read-only)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _create_schema(self) -> None:
        stmts = ["CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"]
        for t in _TABLES.values():
            cols = [f"{k} TEXT NOT NULL" for k in t.primary_keys] + list(t.columns) + ["data TEXT NOT NULL"]
            stmts.append(
                f"CREATE TABLE IF NOT EXISTS {t.name} ({', '.join(cols)}, PRIMARY KEY ({', '.join(t.primary_keys)}))"
            )
            for idx in t.indexes:
                stmts.append(f"CREATE INDEX IF NOT EXISTS ix_{t.name}_{'_'.join(idx)} ON {t.name} ({', '.join(idx)})")
        stmts += [
            "CREATE TABLE IF NOT EXISTS rollout_queue (pos INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS span_sequence_ids (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS rewards (rollout_id TEXT NOT NULL, attempt_id TEXT NOT NULL, "
            "span_id TEXT NOT NULL, sequence_id INTEGER, value REAL, PRIMARY KEY (rollout_id, attempt_id, span_id))",
        ]
        with self.transaction() as cur:
            for s in stmts:
                cur.execute(s)
            row = cur.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                cur.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has store schema {row[0]}, this code reads schema {SCHEMA_VERSION}; "
                    "use a new run directory"
                )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the process lock."""
        if os.getpid() != self._pid:
            raise StoreError(
                f"{self.path}: the store's SQLite connection belongs to pid {self._pid}, not this forked "
                f"process {os.getpid()}; runner processes must reach the store through LightningStoreClient"
            )
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def upsert_rows(self, cur: sqlite3.Cursor, table: _Table, items: Iterable[BaseModel]) -> None:
        names = list(table.primary_keys) + list(table.columns) + ["data"]
        sql = f"INSERT OR REPLACE INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        rows = [
            tuple(str(getattr(it, k)) for k in table.primary_keys)
            + tuple(fn(it) for fn in table.columns.values())
            + (it.model_dump_json(),)
            for it in items
        ]
        cur.executemany(sql, rows)

    def delete_rows(self, cur: sqlite3.Cursor, table: _Table, items: Iterable[BaseModel]) -> None:
        where = " AND ".join(f"{k}=?" for k in table.primary_keys)
        cur.executemany(
            f"DELETE FROM {table.name} WHERE {where}",
            [tuple(str(getattr(it, k)) for k in table.primary_keys) for it in items],
        )

    def load(self, table: _Table, where: str = "", params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            rows = self.conn.execute(f"SELECT data FROM {table.name} {where}", params).fetchall()
        return [table.model.model_validate_json(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.conn.close()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)


# --------------------------------------------------------------------------------------------
# Write-through collections
# --------------------------------------------------------------------------------------------


class SqliteCollection(ListBasedCollection[T], Generic[T]):
    """Agent Lightning's in-memory ``ListBasedCollection`` whose mutations are also committed to SQLite.

    Reads (``query``/``get``/``size``) are the in-memory ones. Each mutating call commits the
    resulting items (after ``update_fields`` merging) in one transaction before returning; if
    the SQLite write fails the call raises ``sqlite3.Error``.
    """

    def __init__(self, db: _SqliteFile, table: _Table, items: list[T], tracker: Any = None) -> None:
        super().__init__(
            items=items, item_type=table.model, primary_keys=list(table.primary_keys), id=table.name, tracker=tracker
        )
        self._db = db
        self._table = table

    def _persist(self, items: Sequence[T]) -> None:
        with self._db.transaction() as cur:
            self._db.upsert_rows(cur, self._table, items)
            self._after_persist(cur, items)

    def _after_persist(self, cur: sqlite3.Cursor, items: Sequence[T]) -> None:
        """Hook for derived tables (the spans collection fills ``rewards``)."""

    async def insert(self, items: Sequence[T]) -> None:
        await super().insert(items)
        self._persist(items)

    async def update(self, items: Sequence[T], update_fields: Sequence[str] | None = None) -> Sequence[T]:
        updated = await super().update(items, update_fields)
        self._persist(updated)
        return updated

    async def upsert(self, items: Sequence[T], update_fields: Sequence[str] | None = None) -> Sequence[T]:
        upserted = await super().upsert(items, update_fields)
        self._persist(upserted)
        return upserted

    async def delete(self, items: Sequence[T]) -> None:
        await super().delete(items)
        with self._db.transaction() as cur:
            self._db.delete_rows(cur, self._table, items)

    def cache_items(self, items: Iterable[T]) -> None:
        """Put already-persisted items into memory only (used to reload evicted spans)."""
        for item in items:
            self._mutate_single(item, mode="upsert")


class _SqliteSpanCollection(SqliteCollection[Span]):
    def _after_persist(self, cur: sqlite3.Cursor, items: Sequence[Span]) -> None:
        rows = []
        for span in items:
            value = get_reward_value(span)
            if value is not None:
                rows.append((span.rollout_id, span.attempt_id, span.span_id, span.sequence_id, float(value)))
        if rows:
            cur.executemany("INSERT OR REPLACE INTO rewards VALUES (?, ?, ?, ?, ?)", rows)


class SqliteQueue(DequeBasedQueue[str]):
    """The rollout queue (a deque of rollout ids) mirrored to the ``rollout_queue`` table."""

    def __init__(self, db: _SqliteFile, items: list[str], tracker: Any = None) -> None:
        super().__init__(item_type=str, items=items, id="rollout_queue", tracker=tracker)
        self._db = db

    async def enqueue(self, items: Sequence[str]) -> Sequence[str]:
        out = await super().enqueue(items)
        with self._db.transaction() as cur:
            cur.executemany("INSERT INTO rollout_queue (item) VALUES (?)", [(i,) for i in items])
        return out

    async def dequeue(self, limit: int = 1) -> Sequence[str]:
        out = await super().dequeue(limit)
        if out:
            with self._db.transaction() as cur:
                cur.execute(
                    "DELETE FROM rollout_queue WHERE pos IN (SELECT pos FROM rollout_queue ORDER BY pos LIMIT ?)",
                    (len(out),),
                )
        return out


class SqliteKeyValue(DictBasedKeyValue[str, int]):
    """The per-rollout span sequence counters mirrored to the ``span_sequence_ids`` table."""

    def __init__(self, db: _SqliteFile, data: Mapping[str, int], tracker: Any = None) -> None:
        super().__init__(data=data, id="span_sequence_ids", tracker=tracker)
        self._db = db

    def _write(self, key: str) -> None:
        with self._db.transaction() as cur:
            if key in self._values:
                cur.execute("INSERT OR REPLACE INTO span_sequence_ids VALUES (?, ?)", (key, self._values[key]))
            else:
                cur.execute("DELETE FROM span_sequence_ids WHERE key=?", (key,))

    async def set(self, key: str, value: int) -> None:
        await super().set(key, value)
        self._write(key)

    async def inc(self, key: str, amount: int) -> int:
        out = await super().inc(key, amount)
        self._write(key)
        return out

    async def chmax(self, key: str, value: int) -> int:
        before = self._values.get(key)
        out = await super().chmax(key, value)
        if out != before:
            self._write(key)
        return out

    async def pop(self, key: str, default: int | None = None) -> int | None:
        out = await super().pop(key, default)
        self._write(key)
        return out


class SqliteLightningCollections(InMemoryLightningCollections):
    """``LightningCollections`` backed by one SQLite file, with Agent Lightning's in-memory collections as the
    read path.

    Locking (``atomic()``) is the in-memory implementation's, thread-safe variant. On open,
    rollouts, attempts, resources, workers, the queue and the counters are loaded; spans are
    loaded only for unfinished rollouts (spans of finished rollouts stay on disk and are read on
    demand by :meth:`SqliteLightningStore.query_spans`).

    Args:
        db: the open file (see :class:`SqliteLightningStore`, which creates it).
        finished_rollout_ids: rollouts whose spans are not loaded into memory.
        tracker: Agent Lightning metrics backend, or None.
    """

    def __init__(self, db: _SqliteFile, *, finished_rollout_ids: set[str], tracker: Any = None) -> None:
        super().__init__(lock_type="thread", tracker=tracker)
        self.db = db
        self._rollouts = SqliteCollection(db, _TABLES["rollouts"], db.load(_TABLES["rollouts"]), tracker)
        self._attempts = SqliteCollection(db, _TABLES["attempts"], db.load(_TABLES["attempts"]), tracker)
        live_spans = [s for s in db.load(_TABLES["spans"], "WHERE rollout_id NOT IN (SELECT rollout_id FROM rollouts "
                                         f"WHERE status IN {FINISHED_STATUSES!r})")]
        self._spans = _SqliteSpanCollection(db, _TABLES["spans"], live_spans, tracker)
        self._resources = SqliteCollection(db, _TABLES["resources"], db.load(_TABLES["resources"]), tracker)
        self._workers = SqliteCollection(db, _TABLES["workers"], db.load(_TABLES["workers"]), tracker)
        with db._lock:
            queue = [r[0] for r in db.conn.execute("SELECT item FROM rollout_queue ORDER BY pos")]
            counters = dict(db.conn.execute("SELECT key, value FROM span_sequence_ids").fetchall())
        self._rollout_queue = SqliteQueue(db, queue, tracker)
        self._span_sequence_ids = SqliteKeyValue(db, counters, tracker)
        self._finished_rollout_ids = finished_rollout_ids

    def load_spans(self, rollout_id: str) -> list[Span]:
        """All persisted spans of one rollout, in sequence order (read from SQLite)."""
        return self.db.load(_TABLES["spans"], "WHERE rollout_id=? ORDER BY sequence_id", (rollout_id,))


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class SqliteLightningStore(InMemoryLightningStore):
    """A persistent ``LightningStore``: Agent Lightning's in-memory store writing through to SQLite.

    Use it wherever Agent Lightning takes a store::

        store = SqliteLightningStore(run_dir / "store.sqlite")
        agl.Trainer(n_runners=2, store=store, ...).dev(agent, tasks)

    Opening an existing file reloads it. Rollouts that were still queued or running when the
    previous process died are handled by ``recover``:

    * ``"cancel"`` (default): they become ``cancelled`` (their live attempts ``unresponsive``)
      and the queue is emptied; the caller enqueues the unfinished work again (what
      :func:`training.gather.gather` does).
    * ``"requeue"``: they become ``requeuing`` and go back in the queue; runners retry them
      with a new attempt.
    * ``"keep"``: left as they were (for read-mostly use).

    Args:
        path: the SQLite file; its parent directory is created. Conventionally ``RUN_DIR/store.sqlite``.
        recover: see above.
        synchronous: SQLite ``synchronous`` pragma: ``"NORMAL"`` (survives process kills) or
            ``"FULL"`` (also survives power loss, slower).
        tracker: Agent Lightning metrics backend, or None.
        **memory_kwargs: passed to ``InMemoryLightningStore`` (``eviction_memory_threshold``,
            ``safe_memory_threshold``, ``scan_debounce_seconds``...). Span eviction only frees
            memory here: evicted spans are reread from the file.

    Raises:
        StoreLockedError: another live process has this file open for writing.
        StoreError: the file has another schema version.
        ValueError: bad ``recover`` or ``synchronous`` value.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recover: RecoverMode = "cancel",
        synchronous: str = "NORMAL",
        tracker: Any = None,
        **memory_kwargs: Any,
    ) -> None:
        if recover not in ("cancel", "requeue", "keep"):
            raise ValueError(f"recover={recover!r}: use 'cancel', 'requeue' or 'keep'")
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(thread_safe=True, tracker=tracker, **memory_kwargs)
        db = _SqliteFile(self.path, synchronous=synchronous)
        try:
            self.recovered = _recover_unfinished(db, recover)
            with db._lock:
                finished = {
                    r[0]
                    for r in db.conn.execute(
                        f"SELECT rollout_id FROM rollouts WHERE status IN {FINISHED_STATUSES!r}"
                    )
                }
            self.collections = SqliteLightningCollections(db, finished_rollout_ids=finished, tracker=tracker)
        except BaseException:
            db.close()
            raise
        # Spans of finished rollouts were not loaded: treat them like evicted ones (read back on demand).
        self._evicted_rollout_span_sets.update(finished)
        for rollout in self.collections.rollouts._iter_items():  # noqa: SLF001 - same package family
            self._start_time_by_rollout[rollout.rollout_id] = rollout.start_time
            if rollout.status in ("preparing", "running"):
                self._running_rollout_ids.add(rollout.rollout_id)
        if self.recovered:
            logger.info("%s: %s %d unfinished rollout(s) of the previous run", self.path, recover, len(self.recovered))

    @property
    def archive(self) -> RolloutArchive:
        """A read-only view of the same file (see :class:`RolloutArchive`)."""
        return RolloutArchive(self.path)

    async def query_spans(
        self, rollout_id: str, attempt_id: str | None = None, **kwargs: Any
    ) -> PaginatedResult[Span]:
        """``LightningStore.query_spans``; spans that are only on disk are read back into memory first."""
        if rollout_id in self._evicted_rollout_span_sets:
            async with self.collections.atomic(mode="rw", labels=["spans"]) as collections:
                if rollout_id in self._evicted_rollout_span_sets:
                    spans = collections.load_spans(rollout_id)
                    collections.spans.cache_items(spans)
                    self._evicted_rollout_span_sets.discard(rollout_id)
                    for span in spans:
                        await self._account_span_size(span)
        return await super().query_spans(rollout_id, attempt_id, **kwargs)

    def close(self) -> None:  # type: ignore[override]
        """Close the SQLite connection and release the writer lock (the store is unusable afterwards)."""
        self.collections.db.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "SqliteLightningStore cannot be pickled: it owns a SQLite connection and a writer lock. "
            "Use the default client-server execution strategy (runners reach it over HTTP)."
        )


def _recover_unfinished(db: _SqliteFile, mode: RecoverMode) -> list[str]:
    """Apply ``recover`` to rollouts left unfinished by a dead process; returns their ids."""
    if mode == "keep":
        return []
    rollouts: list[Rollout] = db.load(_TABLES["rollouts"], f"WHERE status IN {UNFINISHED_STATUSES!r}")
    if not rollouts:
        if mode == "cancel":
            with db.transaction() as cur:
                cur.execute("DELETE FROM rollout_queue")
        return []
    now = time.time()
    ids = [r.rollout_id for r in rollouts]
    marks = ",".join("?" * len(ids))
    attempts: list[Attempt] = db.load(
        _TABLES["attempts"], f"WHERE rollout_id IN ({marks}) AND status IN {LIVE_ATTEMPT_STATUSES!r}", ids
    )
    for a in attempts:
        a.status = "unresponsive"
        a.end_time = a.end_time or now
    note = {"recovered": mode, "recovered_at": now}
    for r in rollouts:
        r.metadata = {**(r.metadata or {}), **note}
        if mode == "cancel":
            r.status, r.end_time = "cancelled", now
        else:
            r.status = "requeuing"
    with db.transaction() as cur:
        db.upsert_rows(cur, _TABLES["attempts"], attempts)
        db.upsert_rows(cur, _TABLES["rollouts"], rollouts)
        if mode == "cancel":
            cur.execute("DELETE FROM rollout_queue")
        else:
            queued = {r[0] for r in cur.execute("SELECT item FROM rollout_queue")}
            cur.executemany("INSERT INTO rollout_queue (item) VALUES (?)", [(i,) for i in ids if i not in queued])
    return ids


# --------------------------------------------------------------------------------------------
# Read-only access
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout as listed by :meth:`RolloutArchive.rollouts`.

    Attributes:
        rollout_id: Agent Lightning rollout id (``ro-...``).
        task_id: the task id (``input["task_id"]``), or None.
        status: ``succeeded``, ``failed``, ``cancelled`` or an unfinished status.
        mode: ``train``/``val``/``test`` or None.
        reward: the last reward emitted in the latest attempt (Agent Lightning's
            ``find_final_reward`` convention), or None when none was emitted.
        start_time, end_time: Unix seconds (end None while unfinished).
        n_attempts: attempts made.
        n_spans: spans stored for the rollout (all attempts).
        input: the task input as enqueued.
        metadata: the rollout metadata.
    """

    rollout_id: str
    task_id: str | None
    status: str
    mode: str | None
    reward: float | None
    start_time: float
    end_time: float | None
    n_attempts: int
    n_spans: int
    input: Any
    metadata: dict[str, Any] | None


class RolloutArchive:
    """Read-only access to a store file, usable while a trainer writes to it (WAL readers never block).

    Args:
        path: ``RUN_DIR/store.sqlite``.
        snapshot: for a short read that must leave the run directory as it was (``sqlsociety traces
            list|show|export``): when no writer has the store open (no ``store.sqlite-wal`` beside
            it) the file is opened ``immutable`` and no ``-wal``/``-shm`` file is created
            (:func:`tools.sqlite_files.read_only_uri`); with a writer running, the ordinary
            read-only open. Close such an archive before a writer opens the store. False (the
            default): always the ordinary read-only open, which on a WAL file without a writer
            leaves ``-wal``/``-shm`` behind.

    Raises:
        FileNotFoundError: no such file (names the path).
        StoreError: the file is not a rollout store (empty, not SQLite, unreadable schema, or an
            SQLite file without the ``rollouts``/``attempts``/``spans``/``rewards`` tables).
    """

    def __init__(self, path: str | os.PathLike[str], *, snapshot: bool = False) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no rollout store at {self.path}; run phase 1 (gather) first or check the run dir"
            )
        if self.path.stat().st_size == 0:
            raise StoreError(f"{self.path} is empty (0 bytes), not a rollout store; check the run dir")
        self._conn = _connect(self.path, readonly=True, snapshot=snapshot)
        self._lock = threading.Lock()
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(f"{self.path} is not a readable rollout store ({e}); check the run dir") from e
        missing = [t for t in ("rollouts", "attempts", "spans", "rewards") if t not in tables]
        if missing:
            self._conn.close()
            raise StoreError(f"{self.path} is an SQLite file but not a rollout store (no table {', '.join(missing)}); "
                             "check the run dir")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RolloutArchive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def rollouts(
        self,
        *,
        status: str | Sequence[str] | None = None,
        mode: str | None = None,
        task_ids: Iterable[str] | None = None,
        rollout_ids: Iterable[str] | None = None,
    ) -> list[RolloutRecord]:
        """Rollouts in start-time order, optionally filtered by status(es), mode, task ids and rollout ids."""
        where, params = [], []
        if rollout_ids is not None:
            rids = list(rollout_ids)
            where.append(f"r.rollout_id IN ({','.join('?' * len(rids))})")
            params += rids
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"r.status IN ({','.join('?' * len(statuses))})")
            params += statuses
        if mode is not None:
            where.append("r.mode = ?")
            params.append(mode)
        if task_ids is not None:
            ids = list(task_ids)
            where.append(f"r.task_id IN ({','.join('?' * len(ids))})")
            params += ids
        sql = f"""
            SELECT r.rollout_id, r.data,
              (SELECT COUNT(*) FROM attempts a WHERE a.rollout_id = r.rollout_id),
              (SELECT COUNT(*) FROM spans s WHERE s.rollout_id = r.rollout_id),
              (SELECT w.value FROM rewards w
                 WHERE w.rollout_id = r.rollout_id AND w.attempt_id = (
                   SELECT a.attempt_id FROM attempts a WHERE a.rollout_id = r.rollout_id
                   ORDER BY a.sequence_id DESC LIMIT 1)
                 ORDER BY w.sequence_id DESC LIMIT 1)
            FROM rollouts r {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY r.start_time, r.rollout_id"""
        out = []
        for rollout_id, data, n_att, n_spans, reward in self._rows(sql, params):
            r = Rollout.model_validate_json(data)
            out.append(
                RolloutRecord(
                    rollout_id=rollout_id,
                    task_id=task_id_of(r),
                    status=r.status,
                    mode=r.mode,
                    reward=reward,
                    start_time=r.start_time,
                    end_time=r.end_time,
                    n_attempts=n_att,
                    n_spans=n_spans,
                    input=r.input,
                    metadata=r.metadata,
                )
            )
        return out

    def rollout(self, rollout_id: str) -> RolloutRecord:
        """One rollout by id. Raises KeyError naming the id when absent."""
        for rec in self.rollouts(rollout_ids=[rollout_id]):
            return rec
        raise KeyError(f"no rollout {rollout_id!r} in {self.path}")

    def spans(
        self,
        rollout_id: str,
        attempt_id: str | Literal["latest"] | None = "latest",
        *,
        names: Sequence[str] | None = None,
    ) -> list[Span]:
        """Spans of one rollout in ``sequence_id`` order: of its latest attempt (default), of one
        attempt, or of all (None); only spans named in ``names`` when given (skips parsing the rest)."""
        where, params = ["rollout_id=?"], [rollout_id]
        if attempt_id == "latest":
            row = self._rows(
                "SELECT attempt_id FROM attempts WHERE rollout_id=? ORDER BY sequence_id DESC LIMIT 1", (rollout_id,)
            )
            if not row:
                return []
            attempt_id = row[0][0]
        if attempt_id is not None:
            where.append("attempt_id=?")
            params.append(attempt_id)
        if names is not None:
            where.append(f"name IN ({','.join('?' * len(names))})")
            params += list(names)
        rows = self._rows(f"SELECT data FROM spans WHERE {' AND '.join(where)} ORDER BY sequence_id", params)
        return [Span.model_validate_json(r[0]) for r in rows]

    def iter_spans(
        self, *, status: str | Sequence[str] | None = "succeeded", names: Sequence[str] | None = None
    ) -> Iterator[tuple[RolloutRecord, list[Span]]]:
        """``(rollout, spans of its latest attempt)`` for every rollout with the given status(es),
        optionally only the spans named in ``names``."""
        for rec in self.rollouts(status=status):
            yield rec, self.spans(rec.rollout_id, names=names)

    def done_task_ids(self, statuses: Sequence[str] = ("succeeded",)) -> set[str]:
        """Task ids having at least one rollout in one of ``statuses`` (default: succeeded)."""
        marks = ",".join("?" * len(statuses))
        rows = self._rows(f"SELECT DISTINCT task_id FROM rollouts WHERE status IN ({marks}) AND task_id IS NOT NULL",
                          list(statuses))
        return {r[0] for r in rows}

    def counts(self) -> dict[str, int]:
        """Number of rollouts per status, plus ``spans``: total spans stored."""
        out = {s: n for s, n in self._rows("SELECT status, COUNT(*) FROM rollouts GROUP BY status")}
        out["spans"] = self._rows("SELECT COUNT(*) FROM spans")[0][0]
        return out
