"""The worker process's side of layer 6 of :mod:`tools.executor`: read statements on stdin, run each with
:func:`tools.sandbox.run_statement`, answer on stdout.

A worker is a child interpreter (``python -I -S``: isolated, no site packages) that
:mod:`tools.worker_pool` starts with :func:`worker_main`; it imports only the standard library and the
executor's own stdlib-only modules (:mod:`tools.sandbox`, :mod:`tools.sql_functions`,
:mod:`tools.sql_results`). Its address space is limited to :data:`MAX_WORKER_MEMORY_BYTES` and SQLite's
heap to :data:`WORKER_SQLITE_HEAP_BYTES`; it exits when the process that started it is gone.

Frames, both ways: an 8-byte big-endian length (:data:`FRAME`) then ``marshal`` data.
"""

from __future__ import annotations

import marshal
import os
import signal
import sqlite3
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tools.sandbox import run_statement
from tools.sql_results import ErrorCategory

#: Address-space limit of each worker process, in bytes (``RLIMIT_AS``, set in the worker).
MAX_WORKER_MEMORY_BYTES = 1024 * 1024 * 1024
#: SQLite's hard heap limit inside a worker, in bytes (allocations past it fail with "out of memory").
WORKER_SQLITE_HEAP_BYTES = 256 * 1024 * 1024

#: A frame's header: the payload's length in bytes, 8 bytes big-endian.
FRAME = struct.Struct("!Q")


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the file descriptor ``fd`` (``os.write`` may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_frame(fd: int, obj: Any) -> None:
    payload = marshal.dumps(obj, 4)
    write_all(fd, FRAME.pack(len(payload)) + payload)


def frame_need(buf: bytearray) -> int:
    """Bytes the frame at the start of ``buf`` needs in all: the header's size until the header is
    in, then header + payload (so ``len(buf) >= frame_need(buf)`` means a whole frame is there)."""
    return FRAME.size if len(buf) < FRAME.size else FRAME.size + FRAME.unpack_from(buf)[0]


def _read_frame_blocking(fd: int, buf: bytearray) -> Any:
    """Read one frame from ``fd`` (bytes beyond it stay in ``buf``); None at end of file."""
    while True:
        need = frame_need(buf)
        if len(buf) >= need:
            payload = bytes(buf[FRAME.size : need])
            del buf[:need]
            return marshal.loads(payload)
        chunk = os.read(fd, max(need - len(buf), 1 << 16))
        if not chunk:
            return None
        buf += chunk


def _peak_resident_bytes() -> int:
    """This process's peak resident set size in bytes (0 where ``resource`` is unavailable).

    The peak, not the current size: memory a statement made the allocator keep shows in it.
    """
    try:  # Linux: the peak of this process image (ru_maxrss would keep the pre-exec parent's peak)
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _watch_parent(ppid: int) -> None:
    """Worker thread: exit the worker as soon as the process that started it is gone."""
    while True:
        time.sleep(0.2)
        if os.getppid() != ppid:
            os._exit(0)


def worker_main() -> None:
    """Body of a worker process: read requests on stdin, answer on stdout, until stdin closes.

    Request: ``(path, sql, timeout_s, max_rows, max_value_bytes, max_result_bytes, reuse)``.
    Reply: ``(reply, peak resident bytes)`` where ``reply`` is what :func:`tools.sandbox.run_statement` returns
    or ``("raise", exception name, message)``. Frames are an 8-byte length plus ``marshal`` data.
    """
    rfd, wfd = 0, os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing else may write into the reply channel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MAX_WORKER_MEMORY_BYTES, MAX_WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not on this platform: the deadline still holds
        pass
    heap = sqlite3.connect(":memory:")
    heap.execute(f"PRAGMA hard_heap_limit = {int(WORKER_SQLITE_HEAP_BYTES)}")  # process-wide
    heap.close()
    threading.stack_size(256 * 1024)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    _write_frame(wfd, ("ready", os.getpid()))
    pending = bytearray()
    while True:
        request = _read_frame_blocking(rfd, pending)
        if request is None:
            os._exit(0)
        try:
            path, sql, timeout_s, max_rows, mvb, mrb, reuse = request
            reply: tuple = run_statement(Path(path), sql, timeout_s, max_rows, mvb, mrb, reuse)
        except (ValueError, OSError, TypeError) as e:
            reply = ("raise", type(e).__name__, str(e))
        except MemoryError as e:
            reply = ("error", ErrorCategory.OTHER.value, f"out of memory ({e})" if str(e) else "out of memory")
        except BaseException as e:  # noqa: BLE001 -- a bug here must not kill the worker silently
            reply = ("error", ErrorCategory.OTHER.value, f"{type(e).__name__}: {e}")
        try:
            _write_frame(wfd, (reply, _peak_resident_bytes()))
        except MemoryError:
            del reply
            _write_frame(wfd, (("error", ErrorCategory.OTHER.value, "out of memory (result too large to send)"), 0))
