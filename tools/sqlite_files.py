"""Open an SQLite file for reading without leaving anything beside it.

A ``mode=ro`` open of a database in WAL mode (the rollout store, ``RUN_DIR/store.sqlite``) still
creates ``<file>-wal`` and ``<file>-shm`` when no writer has them open, and, being read-only,
cannot remove them when it closes: a command that only reads would change the run directory.
:func:`read_only_uri` with ``snapshot=True`` opens such a file ``immutable`` instead when that is
safe -- no ``-wal`` and no ``-journal`` beside it, so every committed transaction is in the main
file and no writer has it open -- and SQLite then creates no file and takes no lock. With a
``-wal`` present (a writer is running, or one stopped without a checkpoint) the ordinary read-only
open is used: it sees the writer's commits and shares the side files that already exist.

``immutable`` promises SQLite that the file does not change while it is open: a snapshot
connection is for a short read (a command that lists or shows), not for a reader that stays open
while a writer starts.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["read_error_problem", "read_only_uri", "side_files"]

#: Suffixes of the files SQLite keeps beside a database (WAL, its shared-memory index, a rollback journal).
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def side_files(path: str | os.PathLike[str]) -> list[Path]:
    """``<path>-wal``, ``<path>-shm`` and ``<path>-journal`` (whether they exist or not)."""
    p = Path(path)
    return [p.with_name(p.name + suffix) for suffix in SIDE_SUFFIXES]


def read_only_uri(path: str | os.PathLike[str], *, snapshot: bool = False) -> str:
    """The URI (for ``sqlite3.connect(uri, uri=True)``) that opens ``path`` read-only.

    Args:
        path: the database file (made absolute; characters such as ``?`` and ``#`` are escaped).
        snapshot: also add ``immutable=1`` when neither ``<path>-wal`` nor ``<path>-journal``
            exists (see the module docstring): the open then writes nothing, not even ``-wal`` /
            ``-shm``, and sees the file as it is now. False: plain ``mode=ro`` (sees a writer's
            later commits; on a WAL-mode file it creates ``-wal``/``-shm`` when they are absent).

    Returns:
        ``file:///abs/path?mode=ro`` or ``file:///abs/path?mode=ro&immutable=1``.
    """
    p = Path(path).expanduser().absolute()
    uri = p.as_uri() + "?mode=ro"
    wal, _shm, journal = side_files(p)
    if snapshot and not wal.exists() and not journal.exists():
        uri += "&immutable=1"
    return uri


def read_error_problem(e: sqlite3.Error, *, not_a_database: str, corrupt: str) -> str:
    """What a failed read of an SQLite file says about the file, as the tail of a message that
    begins with its path: not a database, corrupt, or unreadable; ``not_a_database`` and
    ``corrupt`` say what to do in each case.

    >>> read_error_problem(sqlite3.DatabaseError("file is not a database"), not_a_database="pass a .sqlite file",
    ...                    corrupt="re-copy it")
    'is not an SQLite database (file is not a database); pass a .sqlite file'
    >>> read_error_problem(sqlite3.DatabaseError("database disk image is malformed"), not_a_database="-",
    ...                    corrupt="re-copy it")
    'is corrupt (database disk image is malformed); re-copy it'
    >>> read_error_problem(sqlite3.InterfaceError("bad parameter"), not_a_database="-", corrupt="-")
    'cannot be read (bad parameter)'
    """
    if isinstance(e, sqlite3.DatabaseError):
        if "not a database" in str(e).lower():
            return f"is not an SQLite database ({e}); {not_a_database}"
        return f"is corrupt ({e}); {corrupt}"
    return f"cannot be read ({e})"
