"""Thread counts of the llama.cpp servers and torch: the cores busy now, not a lagging load average."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from society.serving import busy_cores, idle_threads

CORES = len(os.sched_getaffinity(0))


def test_a_load_average_left_by_a_stopped_server_does_not_cost_threads(monkeypatch) -> None:
    """A load average cannot be set for real: os.getloadavg is replaced by one reporting every core
    busy, as in the minute after a pipeline stopped a model server. The CPU sample is real (nothing
    runs here while it is taken)."""
    monkeypatch.setattr(os, "getloadavg", lambda: (float(CORES),) * 3)
    monkeypatch.delenv("SQLSOCIETY_TEST_THREADS", raising=False)
    assert busy_cores(CORES, 0.5) < CORES - 0.5
    assert idle_threads("SQLSOCIETY_TEST_THREADS", sample_s=0.5) >= max(1, CORES - 1)


def test_a_process_busy_now_is_counted(monkeypatch) -> None:
    """A real CPU-bound child process; the load average is again replaced (every core busy) so the
    measured sample decides."""
    monkeypatch.setattr(os, "getloadavg", lambda: (float(CORES),) * 3)
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(CORES, 1.0) >= 0.7
    finally:
        burner.kill()
        burner.wait()


def test_the_environment_wins_and_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("SQLSOCIETY_TEST_THREADS", "3")
    assert idle_threads("SQLSOCIETY_TEST_THREADS") == 3
    monkeypatch.setenv("SQLSOCIETY_TEST_THREADS", "zero")
    with pytest.raises(ValueError, match="SQLSOCIETY_TEST_THREADS must be a positive integer"):
        idle_threads("SQLSOCIETY_TEST_THREADS")
