"""The calling process's side of layer 6 of :mod:`tools.executor`: a pool of worker processes, each
statement under a hard deadline.

:func:`run_in_worker` takes an idle worker (or starts one, :mod:`tools.sql_worker`), sends it the
statement and waits at most ``timeout_s`` + :data:`KILL_GRACE_S` for the reply; past that it SIGKILLs
the worker and starts its replacement at once. A worker that dies yields an ``other`` error and is
replaced the same way; one found dead before it read the statement costs nothing (the statement goes
to the next). A worker whose peak resident memory passed :data:`WORKER_RECYCLE_BYTES` is replaced after
its statement. At most :data:`MAX_IDLE_WORKERS` idle workers are kept per process; they are killed at
interpreter exit and never shared with a forked child.
"""

from __future__ import annotations

import atexit
import marshal
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tools import sandbox
from tools.sql_results import ErrorCategory
from tools.sql_worker import FRAME, frame_need, write_all

#: A worker whose peak resident set exceeds this many bytes after a statement is replaced.
WORKER_RECYCLE_BYTES = 256 * 1024 * 1024
#: Seconds past ``timeout_s`` that the caller waits for a worker's reply before killing it.
KILL_GRACE_S = 0.1
#: Seconds a new worker may take to start before the call fails (category ``other``).
WORKER_START_TIMEOUT_S = 10.0
#: Idle workers kept for reuse per process (more are started while more threads call at once).
MAX_IDLE_WORKERS = 4
#: The worker's start-up code (``python -I -S -c _BOOT <directory holding the tools package>``).
_BOOT = "import sys\nsys.path.insert(0, sys.argv[1])\nfrom tools.sql_worker import worker_main\nworker_main()\n"
#: The directory that holds the ``tools`` package (a worker imports its modules from there only).
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class _WorkerDied(Exception):
    """The worker's pipe closed (the process exited or was killed)."""


class _Worker:
    """One worker process (:mod:`tools.executor`, layer 6) seen from the calling process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT, _PACKAGE_PARENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in a terminal reaches the caller, not the workers
        )
        self.started = time.monotonic()
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def dying(self) -> bool:
        """Whether this idle worker is on its way out though not yet reaped: a SIGKILL pending, or
        exiting, or a zombie (Linux ``/proc/<pid>/stat``; False where that cannot be read).

        A killed process is still "running" to ``poll()`` until it has torn down its address space
        and closed its files, and a statement written to it then would be lost with it."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()  # fields 3 (state) onwards
            state, flags, pending = fields[0], int(fields[6]), int(fields[28])
        except (OSError, ValueError, IndexError):
            return False
        return state in (b"Z", b"X") or bool(flags & 0x4) or bool(pending & (1 << (signal.SIGKILL - 1)))  # PF_EXITING

    def hung_up(self) -> bool:
        """Whether the reply pipe of this idle worker is already at end of file or holds bytes
        nobody asked for (either way the worker cannot take a statement)."""
        return bool(self.poller.poll(0))

    def unread_request_bytes(self) -> int | None:
        """Bytes of the last request still in the worker's stdin pipe (the worker did not read all
        of it), or None where the platform cannot tell (``FIONREAD`` on a pipe's write end is Linux's)."""
        try:
            import fcntl
            import termios

            return struct.unpack("i", fcntl.ioctl(self.wfd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except (ImportError, OSError, ValueError, struct.error):
            return None

    def _read_frame(self, deadline: float) -> Any:
        """One reply frame, read by ``deadline`` (raises TimeoutError, or _WorkerDied at end of file)."""
        buf = bytearray()
        while True:
            need = frame_need(buf)
            if len(buf) >= need:
                return marshal.loads(memoryview(buf)[FRAME.size : need])
            left = deadline - time.monotonic()
            # past the deadline, what is already in the pipe still counts (a worker that became
            # ready long ago and sat idle has its "ready" frame waiting there)
            if not self.poller.poll(max(1, math.ceil(left * 1000)) if left > 0 else 0):
                if left <= 0:
                    raise TimeoutError
                continue
            chunk = os.read(self.rfd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise _WorkerDied
            buf += chunk

    def wait_ready(self) -> bool:
        """Wait (at most :data:`WORKER_START_TIMEOUT_S` from its start) until the worker is ready."""
        if not self.ready:
            try:
                msg = self._read_frame(self.started + WORKER_START_TIMEOUT_S)
            except (TimeoutError, _WorkerDied, ValueError, EOFError):
                return False
            self.ready = isinstance(msg, tuple) and msg[:1] == ("ready",)
        return self.ready

    def request(self, req: tuple, deadline: float) -> tuple:
        """Send one request; return ``(reply, peak resident bytes of the worker)``.

        Raises:
            TimeoutError: no complete reply by ``deadline`` (``time.monotonic()`` seconds).
            _WorkerDied: the worker exited before replying (or before it could be sent the request).
        """
        payload = marshal.dumps(req, 4)
        try:
            write_all(self.wfd, FRAME.pack(len(payload)) + payload)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _WorkerDied("unsent") from e
        try:
            out = self._read_frame(deadline)
        except _WorkerDied:
            # The pipe closed. If the request is still (partly) in the worker's stdin pipe, the
            # worker died before it read the statement -- killed while idle and still exiting
            # when the request was written (the write succeeds until its pipe closes) -- so the
            # statement never ran.
            if self.unread_request_bytes():
                raise _WorkerDied("unsent") from None
            raise
        except (ValueError, EOFError, TypeError) as e:  # garbled reply: treat the worker as lost
            raise _WorkerDied from e
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], tuple)):
            raise _WorkerDied
        return out

    def reap(self) -> str:
        """Wait (up to 1 s) for a worker whose pipe closed to exit; return how it ended."""
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        return self.kill()

    def kill(self) -> str:
        """SIGKILL the worker (if still running) and close the pipes; return how it ended.

        The process is reaped by a background thread (tearing down a large address space
        can take tens of milliseconds), so the caller does not wait for it.
        """
        code = self.proc.poll()
        if code is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            threading.Thread(target=self.proc.wait, daemon=True).start()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if code is None:
            return "killed by the executor"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _Pool:
    """Idle workers of one process; a call takes one (or starts one) and gives it back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.closed = False

    def take(self) -> _Worker:
        with self.lock:
            if self.idle:
                return self.idle.pop()  # one that died while idle fails to take the request: retried
        return _Worker()

    def give(self, w: _Worker) -> None:
        with self.lock:
            if not self.closed and len(self.idle) < MAX_IDLE_WORKERS:
                self.idle.append(w)
                return
        w.kill()

    def replace(self, w: _Worker) -> str:
        """Kill ``w`` and start its replacement now, so that the next call finds it ready."""
        how = w.kill()
        with self.lock:
            if self.closed or len(self.idle) >= MAX_IDLE_WORKERS:
                return how
        try:
            self.give(_Worker())
        except OSError:
            pass  # the next call starts one (and reports if it cannot)
        return how

    def close_idle(self, final: bool = False) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
            self.closed = self.closed or final
        for w in idle:
            w.kill()


_pools: dict[int, _Pool] = {}
_pools_lock = threading.Lock()


def _pool() -> _Pool:
    """This process's pool (a forked child gets its own; the parent's workers are left alone)."""
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        with _pools_lock:
            pool = _pools.setdefault(pid, _Pool())
    return pool


@atexit.register
def _stop_workers() -> None:
    pool = _pools.get(os.getpid())
    if pool is not None:
        pool.close_idle(final=True)


def close_idle_workers() -> None:
    """Stop this process's idle workers (the next call starts one)."""
    pool = _pools.get(os.getpid())
    if pool is not None:
        pool.close_idle()


def worker_pids() -> list[int]:
    """Process ids of this process's idle workers (for tests and monitoring)."""
    pool = _pools.get(os.getpid())
    if pool is None:
        return []
    with pool.lock:
        return [w.pid for w in pool.idle]


def run_in_worker(path: Path, sql: str, timeout_s: float, max_rows: int, mvb: int, mrb: int) -> tuple:
    """Run the statement in a pooled worker under the hard deadline; return a reply tuple."""
    pool = _pool()
    req = (str(path), sql, float(timeout_s), int(max_rows), int(mvb), int(mrb), bool(sandbox.REUSE_CONNECTIONS))
    # workers found dead before they read the statement (killed from outside while idle): each
    # replaced and the statement sent to the next, at most a pool's worth and a fresh one
    lost = 0
    while True:
        w = pool.take()
        if w.ready and (not w.alive() or w.dying() or w.hung_up()) and lost <= MAX_IDLE_WORKERS:  # died while idle
            w.kill()
            lost += 1
            continue
        try:
            if not w.wait_ready():
                died = not w.alive()
                how = w.kill()
                if died and lost <= MAX_IDLE_WORKERS:
                    lost += 1
                    continue  # killed before it was ready (e.g. while idle): try the next / a fresh worker
                return ("error", ErrorCategory.OTHER.value,
                        f"executor worker did not start within {WORKER_START_TIMEOUT_S} s ({how})")
            reply, resident = w.request(req, time.monotonic() + timeout_s + KILL_GRACE_S)
        except TimeoutError:
            pool.replace(w)
            return ("error", ErrorCategory.TIMEOUT.value,
                    f"interrupted: the statement ran past timeout_s={timeout_s} s and its worker process was killed")
        except _WorkerDied as e:
            if e.args == ("unsent",) and lost <= MAX_IDLE_WORKERS:
                pool.replace(w)  # no wait for its exit: how it ended is reported to nobody
                lost += 1
                continue  # lost before it read the statement (e.g. killed while idle): the next / a fresh worker
            how = w.reap()
            pool.replace(w)
            return ("error", ErrorCategory.OTHER.value, f"executor worker died while running the statement ({how})")
        except BaseException:
            w.kill()  # e.g. KeyboardInterrupt: a reply may still be pending, never reuse the worker
            raise
        if resident > WORKER_RECYCLE_BYTES:
            pool.replace(w)
        else:
            pool.give(w)
        return reply
