"""Thread counts of the llama.cpp servers and torch: the cores busy now, not a lagging load average."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from society.cpu_threads import busy_cores, idle_threads

CORES = len(os.sched_getaffinity(0))


def test_a_load_average_left_by_a_stopped_server_does_not_cost_threads(monkeypatch) -> None:
    """A load average cannot be set for real: os.getloadavg is replaced by one reporting every core
    busy, as in the minute after a pipeline stopped a model server.

    The cores' sample is first the real one (psutil), recorded as busy_cores takes it: the busy
    cores are that sample, not the load average, whatever else this machine runs now (the suite
    may run beside CPU-bound jobs, so the cores cannot be assumed idle and no bound on the real
    sample is asserted). Then the sample reads idle cores (psutil's reading replaced by 0 %, the
    state after the server stopped), and no thread is lost to the load average."""
    import psutil

    monkeypatch.setattr(os, "getloadavg", lambda: (float(CORES),) * 3)
    monkeypatch.delenv("SQLSOCIETY_TEST_THREADS", raising=False)
    real, seen = psutil.cpu_percent, []

    def recorded(*args, **kwargs):
        seen.append((args, kwargs, real(*args, **kwargs)))
        return seen[-1][2]

    monkeypatch.setattr(psutil, "cpu_percent", recorded)
    busy = busy_cores(CORES, 0.5)
    ((args, kwargs, percent),) = seen
    assert (args, kwargs) in (((), {"interval": 0.5}), ((0.5,), {}))  # a sample over the next 0.5 s
    assert busy == pytest.approx(min(float(CORES), percent / 100.0 * CORES))  # the sample decides, not the load

    monkeypatch.setattr(psutil, "cpu_percent", lambda *args, **kwargs: 0.0)
    assert busy_cores(CORES, 0.5) == 0.0
    assert idle_threads("SQLSOCIETY_TEST_THREADS", sample_s=0.5) == CORES


def test_a_process_busy_now_is_counted(monkeypatch) -> None:
    """A real CPU-bound child process; the load average is again replaced (every core busy) so the
    measured sample decides. The sample starts once the child says it is spinning (an event, not a
    fixed wait); other load on the machine can only add to the count."""
    monkeypatch.setattr(os, "getloadavg", lambda: (float(CORES),) * 3)
    burner = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nprint('spinning', flush=True)\n"
                               "while time.time() - t < 60: pass"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert burner.stdout.readline() == "spinning\n"
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
