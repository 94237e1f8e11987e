"""This machine's own yardstick for executor deadlines, measured inside the test that needs it.

A bound such as "the call returned within ``timeout_s`` + 0.5 s" holds on an idle machine and
fails under load, where starting a worker process alone can take longer. Tests that check how
closely the executor meets its deadline allow, past a fixed slack, a multiple of
:func:`call_cost_s` measured right then. The figures themselves: ``bench/wall_clock.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import tools.executor as ex
from tools.executor import execute_sql

__all__ = ["call_cost_s"]


def call_cost_s(db: Path, runs: int = 3) -> float:
    """The slowest of ``runs`` trivial queries on ``db``, each on a freshly started worker (seconds):
    the most a call spends besides its statement (a call after a kill waits for the replacement
    worker, whose start-up the deadline does not count). Stops the idle workers as a side effect."""
    cost = 0.0
    for _ in range(runs):
        ex.close_connections()  # stops the idle workers: the next call starts one
        t0 = time.monotonic()
        assert execute_sql(db, "SELECT 1").ok
        cost = max(cost, time.monotonic() - t0)
    return cost
