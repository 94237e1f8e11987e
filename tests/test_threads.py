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


@pytest.fixture
def every_core_busy(monkeypatch):
    """Real CPU-bound children, one per core, each spinning (it said so) for at most 60 s; the load
    average replaced by one reporting every core busy, so the measured sample decides."""
    monkeypatch.setattr(os, "getloadavg", lambda: (float(CORES),) * 3)
    burners = [subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nprint('spinning', flush=True)\n"
                               "while time.time() - t < 60: pass"],
        stdout=subprocess.PIPE, text=True) for _ in range(CORES)]
    try:
        assert all(b.stdout.readline() == "spinning\n" for b in burners)
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


def _logged(caplog, fn):
    """``fn()`` and the messages it logged on society.cpu_threads (WARNING and above)."""
    caplog.clear()
    with caplog.at_level("WARNING", logger="society.cpu_threads"):
        value = fn()
    return value, [r.getMessage() for r in caplog.records if r.name == "society.cpu_threads"]


@pytest.mark.skipif(CORES < 2, reason="one core: a server can never get fewer threads than cores")
def test_a_server_started_beside_a_busy_job_says_it_keeps_fewer_threads(monkeypatch, caplog, every_core_busy) -> None:
    """Real CPU-bound children, one per core (the load average replaced, every core busy, as above).
    A llama-server keeps the threads it starts with; one started beside a passing job stayed at 1 of 2
    threads for a whole phase on 2026-12-06 (195 against 249 tokens/s once idle). The choice is logged
    with the variable that overrides it; a thread count set by that variable is not."""
    from society.cpu_threads import default_threads

    monkeypatch.delenv("SQLSOCIETY_LLAMA_THREADS", raising=False)
    n, (msg,) = _logged(caplog, default_threads)
    assert n < min(CORES, 8)
    assert f"gets {n} CPU thread(s) of {CORES}" in msg and f"SQLSOCIETY_LLAMA_THREADS={min(CORES, 8)}" in msg
    monkeypatch.setenv("SQLSOCIETY_LLAMA_THREADS", "1")
    assert _logged(caplog, default_threads) == (1, [])


@pytest.mark.skipif(CORES < 2, reason="one core: a training run can never get fewer threads than cores")
def test_a_torch_run_started_beside_a_busy_job_says_it_keeps_fewer_threads(
        monkeypatch, caplog, every_core_busy) -> None:
    """As above for torch training (training.threads.torch_threads): on 2026-12-07 a junior adapter
    started while a test ran took 1 thread for its 180 SFT steps (about 14 s each against 8.4 on 2),
    with no word of it. Now the choice is logged with SQLSOCIETY_TORCH_THREADS; an explicit count
    (the argument or the variable) is taken as given, silently."""
    from training.threads import torch_threads

    monkeypatch.delenv("SQLSOCIETY_TORCH_THREADS", raising=False)
    n, (msg,) = _logged(caplog, torch_threads)
    assert 1 <= n < CORES
    assert msg.startswith(f"a torch training run gets {n} CPU thread(s) of {CORES}")
    assert f"SQLSOCIETY_TORCH_THREADS={CORES}" in msg
    assert _logged(caplog, lambda: torch_threads(2)) == (2, [])
    monkeypatch.setenv("SQLSOCIETY_TORCH_THREADS", "1")
    assert _logged(caplog, torch_threads) == (1, [])
