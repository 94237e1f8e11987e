"""Infrastructure failures: a model server that died, an endpoint that stayed down.

Such a failure is never a question's result: evaluations stop without recording the question,
gathers stop without marking their phase done, and the message names the cause. This module is
the bottom of that chain, shared by the LLM client (:mod:`society.llm`), the servers
(:mod:`society.serving`) and the runners (:mod:`society.run`, ``training.gather``):

* :class:`InfrastructureError` -- the base class callers catch;
* :class:`ServerDied` -- a managed server process exited; names the server, the status or
  signal (:func:`describe_exit`) and the last lines of its log;
* :func:`track_server` / :func:`untrack_server` / :func:`dead_servers` -- the servers this
  process started and which of them have died, so a failed request can be explained at once
  instead of being retried against a corpse.
"""

from __future__ import annotations

import contextvars
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

__all__ = ["STATUS_UNKNOWN", "InfrastructureError", "ServerDied", "dead_servers", "describe_exit", "interruptible",
           "track_server", "untrack_server"]

T = TypeVar("T")

#: Seconds between the main thread's checks for a pending Ctrl-C while :func:`interruptible` waits.
INTERRUPT_POLL_S = 0.2


class InfrastructureError(RuntimeError):
    """A model server or endpoint failed; nothing about the question or the policy."""


#: The status of a process that exited, as seen from a process that cannot wait for it (a forked
#: child of the one that started it): no signal and no exit code has this number.
STATUS_UNKNOWN = 1 << 16


class ServerDied(InfrastructureError):
    """A model server that was serving exited.

    Attributes:
        server: the server's description (``llama-server qwen2.5-coder-0.5b (file.gguf)``).
        returncode: the process status (negative: killed by that signal; :data:`STATUS_UNKNOWN`
            when it was seen exited from a process other than the one that started it).
        log_tail: the last lines of the server's log.
    """

    def __init__(self, server: str, returncode: int, log_tail: str) -> None:
        self.server = server
        self.returncode = returncode
        self.log_tail = log_tail
        super().__init__(f"model server {server} exited: {describe_exit(returncode)}\n{log_tail}")

    @property
    def headline(self) -> str:
        """The message's first line (no log)."""
        return str(self).splitlines()[0]


def describe_exit(returncode: int) -> str:
    """One line for a process status: ``exit code N`` or the signal's name, meaning and likely cause.

    >>> describe_exit(1)
    'exit code 1'
    >>> describe_exit(-4).split(' — ')[0]
    'SIGILL (Illegal instruction)'
    >>> describe_exit(STATUS_UNKNOWN)
    'exited (its status goes to the process that started it, not this one)'
    """
    if returncode == STATUS_UNKNOWN:
        return "exited (its status goes to the process that started it, not this one)"
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"signal {-returncode}"
    text = f"{sig.name} ({signal.strsignal(sig)})"
    hints = {
        signal.SIGILL: "this llama.cpp build does not match this CPU; rerun scripts/install.sh (it checks the "
                       "server and falls back to the portable AVX2 build), or SQLSOCIETY_LLAMA_CPU=avx2 bash "
                       "scripts/install.sh",
        signal.SIGKILL: "killed from outside (the out-of-memory killer, or a user)",
        signal.SIGSEGV: "the server crashed; see its log below",
        signal.SIGBUS: "the model file changed or vanished while mapped",
    }
    return text + (f" — {hints[sig]}" if sig in hints else "")


class _Server(Protocol):
    def failure(self) -> ServerDied | None: ...


_TRACKED: weakref.WeakSet[Any] = weakref.WeakSet()
_LOCK = threading.Lock()


def track_server(server: _Server) -> None:
    """Watch ``server`` (any object with ``failure() -> ServerDied | None``) until :func:`untrack_server`."""
    with _LOCK:
        _TRACKED.add(server)


def untrack_server(server: _Server) -> None:
    """Stop watching ``server`` (it was stopped on purpose)."""
    with _LOCK:
        _TRACKED.discard(server)


def dead_servers() -> list[ServerDied]:
    """The watched servers that have exited, as errors (empty when all are alive)."""
    with _LOCK:
        servers = list(_TRACKED)
    return [e for e in (s.failure() for s in servers) if e is not None]


@contextmanager
def ctrl_c_noted(noted: threading.Event) -> Iterator[threading.Event]:
    """While active, Ctrl-C (SIGINT) sets ``noted`` and then acts as before (``KeyboardInterrupt``).

    A library may swallow the ``KeyboardInterrupt`` (in a worker thread, or Agent Lightning's
    execution strategy, which stops its runners and returns from ``Trainer.fit`` as if done); the
    event lets the caller stop its loop or raise it again. Outside the main thread (no signal
    handlers there) the event is never set. Yields ``noted``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        noted.set()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def interruptible(fn: Callable[[], T], *, poll_s: float = INTERRUPT_POLL_S) -> T:
    """``fn()``, run so that Ctrl-C stops the main thread within about ``poll_s`` seconds even while
    ``fn`` blocks in a socket read.

    CPython runs a signal handler only when the main thread is back in the interpreter. A SIGINT
    that the kernel hands to another thread, or that lands just before the main thread enters a
    blocking ``recv``, leaves the main thread in that read until it returns -- for a model call
    held by a slow or stuck server, minutes (the Python signal documentation: "a long-running
    calculation implemented purely in C ... may run uninterrupted for an arbitrary amount of
    time"). In the main thread ``fn`` therefore runs in a daemon thread (with the caller's
    ``contextvars`` copied, so tracing callbacks keep their parent span) while the main thread waits
    in slices of ``poll_s`` seconds, seeing a pending Ctrl-C at the next slice; the abandoned thread
    dies with the process. Outside the main thread ``fn`` is called as it is.

    Returns:
        What ``fn`` returns.

    Raises:
        Whatever ``fn`` raises; ``KeyboardInterrupt`` on Ctrl-C while waiting (``fn`` keeps running
        in its daemon thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    ctx = contextvars.copy_context()
    out: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            out["value"] = ctx.run(fn)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread as it is
            out["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="interruptible", daemon=True).start()
    while not done.wait(poll_s):
        pass
    if "error" in out:
        raise out["error"]
    return out["value"]
