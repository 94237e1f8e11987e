"""CPU threads for the CPU-bound workers of a run: the llama.cpp servers and torch training.

Both spin-wait (llama.cpp's threads on barriers, torch's OpenMP workers at every parallel region),
so on a busy box fewer threads than cores are faster: :func:`idle_threads` counts the idle cores
now, :func:`default_threads` applies it to a new llama.cpp server.
"""

from __future__ import annotations

import logging
import os

__all__ = ["busy_cores", "chosen_threads", "default_threads", "idle_threads"]

_log = logging.getLogger(__name__)


def default_threads() -> int:
    """CPU threads for a new llama.cpp server: ``$SQLSOCIETY_LLAMA_THREADS`` if set, else the idle
    cores at start-up (:func:`idle_threads`), clamped to 1..8. Fewer than the cores (up to 8) without
    ``$SQLSOCIETY_LLAMA_THREADS`` is logged as a warning (:func:`chosen_threads`): the server keeps
    its threads while it runs.

    llama.cpp's CPU threads spin on barriers, so on a busy 2-core box 1 thread is faster than 2.

    Raises:
        ValueError: ``$SQLSOCIETY_LLAMA_THREADS`` is not a positive integer.
    """
    return chosen_threads("SQLSOCIETY_LLAMA_THREADS", "a new llama-server", cap=8, cost=(
        "a training phase: hours; measured 2026-12-06 on an idle 2-core machine, juniors-only rollouts: "
        "195 tokens/s on 1 thread, 249 on 2"))


def chosen_threads(env_var: str, what: str, *, cap: int | None = None, cost: str = "") -> int:
    """:func:`idle_threads` for a worker that keeps its thread count for as long as it runs (a
    llama.cpp server, a torch training run), with a warning on this module's logger when that is
    fewer than the cores (up to ``cap``) and ``env_var`` is unset: a job passing at the moment it
    starts would otherwise slow it for its whole life, silently.

    Args:
        env_var: the variable that sets the count (and silences the warning).
        what: the worker, for the message (e.g. ``"a torch training run"``).
        cap: at most this many threads.
        cost: what too few threads cost, measured, for the message.

    Returns:
        The thread count, >= 1.

    Raises:
        ValueError: ``env_var`` is set and not a positive integer.
    """
    n = idle_threads(env_var, cap=cap)
    cores = _cores()
    full = min(cores, cap) if cap else cores
    if n < full and not os.environ.get(env_var, "").strip():
        _log.warning("%s gets %d CPU thread(s) of %d: the rest were busy when it started, and it keeps that for as "
                     "long as it runs (%s); set %s=%d to use every core", what, n, cores, cost, env_var, full)
    return n


def _cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_threads(env_var: str, *, cap: int | None = None, sample_s: float = 1.0) -> int:
    """Threads for a CPU-bound worker: ``$env_var`` if set, else the idle cores now,
    ``round(cores - busy)``, clamped to ``1..cap`` (``cap`` None: the core count).

    ``busy`` is the smaller of the 1-minute load average and the busy cores measured over the
    next ``sample_s`` seconds (``psutil.cpu_percent``). The load average alone lags by about a
    minute: a training pipeline that stops one model server and starts the next would see the
    first server's load and start the second with too few threads (measured: a 2-core run's
    juniors-only stage got 1 thread and decoded at 16 instead of 30 tokens/s). The sample alone
    misses a job between its bursts; taking the smaller keeps a sustained job (a test suite, a
    second run) counted and forgets one that just ended.

    Shared by the llama.cpp servers and torch training: both spin-wait, so on a busy box fewer
    threads are faster.

    Raises:
        ValueError: ``$env_var`` is set but not a positive integer.
    """
    env = os.environ.get(env_var, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{env_var} must be a positive integer, got {env!r}")
        return int(env)
    cores = _cores()
    return max(1, min(cap or cores, cores, round(cores - busy_cores(cores, sample_s))))


def busy_cores(cores: int, sample_s: float = 1.0) -> float:
    """Busy cores now, in ``[0, cores]``: the smaller of the 1-minute load average and the cores'
    utilisation over ``sample_s`` seconds (``psutil.cpu_percent``) times ``cores`` (see
    :func:`idle_threads` for why both)."""
    import psutil

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float(cores)
    measured = psutil.cpu_percent(interval=sample_s) / 100.0 * cores
    return max(0.0, min(float(cores), load, measured))
