"""What the runner tests read about processes and the store while a gather runs: a process's
children and liveness from ``/proc`` (Linux), and which rollout a given worker is running (the
store's SQLite file, opened read-only)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (empty when it is gone)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit may wait for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def running_attempt_of(store: Path, marker: str) -> str | None:
    """The rollout id of a running attempt whose worker id contains ``marker`` (read-only SQLite)."""
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute("SELECT rollout_id, data FROM attempts WHERE status = 'running'").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    for rollout_id, data in rows:
        if marker in str(json.loads(data).get("worker_id") or ""):
            return rollout_id
    return None
