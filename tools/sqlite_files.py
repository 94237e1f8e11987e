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
from pathlib import Path

__all__ = ["read_only_uri", "side_files"]

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
