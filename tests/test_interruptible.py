"""Ctrl-C reaches a main thread that is blocked in a socket read (society.infra.interruptible).

The race behind a lost Ctrl-C, made deterministic: SIGINT is handed to another thread with
``signal.pthread_kill`` while the main thread waits in ``recv`` on a real loopback socket that never
answers -- the same as a SIGINT the kernel delivers elsewhere, or one landing just before the read
starts. A bare ``recv`` stays blocked (CPython runs handlers only in the main thread, between
bytecodes); through ``interruptible`` the main thread raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from foreground import sigint_as_in_a_terminal

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import signal, socket, sys, threading, time
    from society.infra import interruptible

    server = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(server.getsockname())   # accepted by the kernel, never answered

    def poke():
        time.sleep(1.0)                                      # the main thread is in recv by now
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)   # the signal lands on this thread

    threading.Thread(target=poke, daemon=True).start()
    t0 = time.monotonic()
    try:
        if sys.argv[1] == "bare":
            conn.recv(1)
        else:
            interruptible(lambda: conn.recv(1))
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - t0:.1f} s", flush=True)
        sys.exit(130)
    print("read returned", flush=True)
""")


def _run(mode: str, timeout: float) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run([sys.executable, "-c", CHILD, mode], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                              preexec_fn=sigint_as_in_a_terminal)
    except subprocess.TimeoutExpired:
        return None


def test_ctrl_c_on_another_thread_stops_a_main_thread_blocked_in_recv() -> None:
    t0 = time.monotonic()
    done = _run("interruptible", timeout=120)
    assert done is not None, "Ctrl-C was not seen while the main thread waited for the reply"
    assert done.returncode == 130 and "interrupted after" in done.stdout, done.stdout + done.stderr
    assert time.monotonic() - t0 < 120


@pytest.mark.parametrize("value", [7, ValueError("bad")])
def test_interruptible_returns_or_raises_what_the_call_does(value) -> None:
    from society.infra import interruptible

    def fn():
        if isinstance(value, Exception):
            raise value
        return value

    if isinstance(value, Exception):
        with pytest.raises(ValueError, match="bad"):
            interruptible(fn)
    else:
        assert interruptible(fn) == 7


def test_the_bare_read_is_the_race_this_guards_against() -> None:
    """The control: the same child with a bare recv is still blocked 10 s after the signal."""
    assert _run("bare", timeout=11) is None
