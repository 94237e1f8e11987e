"""A model server run as a managed subprocess on a loopback port: launch, wait, watch, stop.

:class:`ManagedServer` is the process lifecycle shared by the llama.cpp server
(:class:`society.llama_server.LlamaServer`) and vLLM's (``society.vllm_serving.VLLMServer``):

* a small Python launcher runs the server as its child and (a) kills the server when the launcher
  dies (``PR_SET_PDEATHSIG``), (b) kills it when this process dies (even by SIGKILL), and (c) exits
  with the server's own status or signal;
* a free loopback port (:func:`free_port`), tried again on a new one (tenacity) when another
  process takes it between choosing and binding;
* ``GET /health`` polled until 200 (:func:`society.health.poll_until`);
* a log file, the :mod:`society.infra` watch (:class:`ServerDied` names the status or signal and
  the log's last lines), and always stopping (context manager, ``atexit``).

Sources: Linux ``prctl(2)`` (``PR_SET_PDEATHSIG``); tenacity's ``Retrying``
(``retry_if_exception``, ``stop_after_attempt``, ``reraise``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import portpicker
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from society.health import http_ok, poll_until
from society.infra import STATUS_UNKNOWN, InfrastructureError, ServerDied, describe_exit, track_server, untrack_server

__all__ = ["PORT_TRIES", "ManagedServer", "ServerStartError", "free_port", "port_clash",
           "process_start"]

#: Start-up tries on a fresh free port when the chosen one was taken before the server bound it.
PORT_TRIES = 3
#: What a server's log says when its port is taken (uvicorn/vLLM: errno 98; llama-server: its own words).
_PORT_CLASH_MARKS = ("address already in use", "couldn't bind http server socket")


class ServerStartError(InfrastructureError):
    """The server process exited during start-up or did not answer in time; the message carries
    the exit status or signal and the tail of the server log.

    Attributes:
        port_in_use: the server could not bind its port (another process holds it).
    """

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def port_clash(log_text: str) -> bool:
    """Whether a server log says the server could not bind its port because it is taken.

    >>> port_clash("E srv start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080")
    True
    >>> port_clash("ERROR: [Errno 98] error while attempting to bind on address: address already in use")
    True
    >>> port_clash("error loading model")
    False
    """
    low = log_text.lower()
    return any(m in low for m in _PORT_CLASH_MARKS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no process is bound to now (``portpicker``)."""
    return int(portpicker.pick_unused_port())


def process_start(pid: int) -> int | None:
    """The start time of the live process ``pid`` (clock ticks since boot, field 22 of Linux
    ``/proc/<pid>/stat``, proc(5)), or None when no such process runs: it never existed, it exited
    (a zombie, state ``Z``/``X``, counts as exited), or ``/proc`` cannot be read. With the start
    time a process is told from a later one that got the same pid.

    >>> process_start(os.getpid()) is not None
    True
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime 22
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _server_pids(launcher_pid: int) -> list[int]:
    """Child pids of ``launcher_pid`` (Linux ``/proc/<pid>/task/<pid>/children``)."""
    try:
        text = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


# The launcher: runs the server as its child with PR_SET_PDEATHSIG=SIGKILL (the launcher is
# single-threaded, so "parent thread dies" means "launcher dies"), forwards SIGTERM/SIGINT, kills
# the server when the Python process that started it disappears (re-parenting), and finally exits
# with the server's own status -- dying of the same signal when the server died of one.
_LAUNCHER = r"""
import ctypes, os, signal, subprocess, sys, time
parent = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def _pdeathsig():
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
child = subprocess.Popen(sys.argv[2:], preexec_fn=_pdeathsig)
def _forward(sig, frame):
    try:
        child.send_signal(sig)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGTERM, _forward)
signal.signal(signal.SIGINT, _forward)
while True:
    try:
        rc = child.wait(timeout=0.5)
        break
    except subprocess.TimeoutExpired:
        if os.getppid() != parent:
            child.kill()
            rc = child.wait()
            break
if rc < 0:
    try:
        signal.signal(-rc, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL/SIGSTOP have no handler to reset
        pass
    os.kill(os.getpid(), -rc)
    time.sleep(5)
sys.exit(rc if 0 <= rc < 256 else 1)
"""


class ManagedServer:
    """An OpenAI-compatible model server run as a managed subprocess on a loopback port.

    The process lifecycle shared by :class:`society.llama_server.LlamaServer` and
    ``society.vllm_serving.VLLMServer``:
    the launcher (dies with its parent, exits with the server's own status), a free port (retried
    when taken between choosing and binding), waiting for ``GET /health`` = 200, a log file, the
    :mod:`society.infra` watch, naming an exit (:meth:`failure`), and always stopping. Subclasses
    give :attr:`name`, :meth:`command` and :meth:`child_env`, and call :meth:`_init_process`.
    """

    host = "127.0.0.1"
    #: prefix of the automatic log file's name; seconds between two health checks while starting.
    log_prefix = "sqlsociety-server"
    poll_s = 0.1

    def _init_process(self, port: int | None, log_path: str | os.PathLike[str] | None) -> None:
        if port is not None and not (1 <= int(port) <= 65535):
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        self._fixed_port = int(port) if port is not None else None
        self.port: int | None = self._fixed_port
        self._user_log = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = self._user_log
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None  # the process that started the launcher (only it can wait for it)
        self._launcher_start: int | None = None
        self._lock = threading.RLock()
        self.startup_s: float | None = None

    @property
    def name(self) -> str:  # pragma: no cover - every subclass names itself
        raise NotImplementedError

    def command(self) -> list[str]:  # pragma: no cover
        """The server's command line (without the launcher)."""
        raise NotImplementedError

    def child_env(self) -> dict[str, str]:
        """The server process's environment (default: this process's)."""
        return dict(os.environ)

    @property
    def base_url(self) -> str:
        """OpenAI base URL, ``http://127.0.0.1:<port>/v1``.

        Raises:
            RuntimeError: the server has no port yet (call :meth:`start` first).
        """
        if self.port is None:
            raise RuntimeError("the server has no port yet; call start() (or use it as a context manager)")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Process id of the launcher (the process group leader), or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def server_pid(self) -> int | None:
        """Process id of the server process itself, or None."""
        if self._proc is None:
            return None
        pids = _server_pids(self._proc.pid)
        return pids[0] if pids else None

    @property
    def running(self) -> bool:
        """True while the server process is alive (:meth:`_exit_status`)."""
        return self._proc is not None and self._exit_status(self._proc) is None

    def _exit_status(self, proc: subprocess.Popen[bytes]) -> int | None:
        """None while the launcher runs, else its status (negative: the signal it died of) -- or
        :data:`society.infra.STATUS_UNKNOWN` in another process than the one that started it.

        Only the starting process can wait for the launcher. In a forked child (an Agent Lightning
        runner, which inherits this object) ``Popen.poll`` gets ``ECHILD`` and reports exit code 0 for
        a server that is alive and well; there the launcher's ``/proc`` entry is read instead
        (:func:`process_start`: gone, a zombie, or another process under the same pid = exited)."""
        if os.getpid() == self._owner_pid:
            return proc.poll()
        start = process_start(proc.pid)
        return None if start is not None and start == self._launcher_start else STATUS_UNKNOWN

    def start(self, timeout_s: float = 180) -> ManagedServer:
        """Start the server and wait until ``GET /health`` answers 200 (model loaded).

        Idempotent while running. When the server cannot bind its port because another process
        took it between choosing and binding, it is started again on a new free port (tenacity, up
        to :data:`PORT_TRIES` starts) unless a fixed ``port`` was given.

        Returns:
            self.

        Raises:
            ServerStartError: the process exited (the message names the status or signal, and a
                port in use with what to do) or did not answer within ``timeout_s``; the message
                ends with the server log's last lines.
        """
        with self._lock:
            if self.running:
                return self
            retrying = Retrying(
                retry=retry_if_exception(lambda e: isinstance(e, ServerStartError) and e.port_in_use),
                stop=stop_after_attempt(1 if self._fixed_port is not None else PORT_TRIES),
                reraise=True,  # giving up raises the last start's own ServerStartError
            )
            retrying(self._start_once, timeout_s)
            track_server(self)
            return self

    def _start_once(self, timeout_s: float) -> None:
        self.port = self._fixed_port if self._fixed_port is not None else free_port()
        if self._user_log is not None:
            self.log_path = self._user_log
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix=f"{self.log_prefix}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *self.command()]
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            log_start = log.tell()  # a user's log file keeps earlier starts: read this one's part only
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.child_env(), start_new_session=True)
        self._owner_pid, self._launcher_start = os.getpid(), process_start(self._proc.pid)
        atexit.register(self.stop)
        url = f"http://{self.host}:{self.port}/health"
        proc = self._proc

        def healthy() -> bool:
            rc = proc.poll()
            if rc is not None:
                raise self._exit_error(rc, log_start)
            return http_ok(url, timeout_s=2)

        try:
            if not poll_until(healthy, timeout_s=timeout_s, poll_s=self.poll_s):
                raise ServerStartError(
                    f"{self.name} did not answer {url} within {timeout_s:.0f} s; its log below says how far it "
                    f"got (start it with a longer timeout_s if it was still loading).\n{self._log_tail()}"
                )
        except BaseException:  # including KeyboardInterrupt: never leave the child behind
            self._terminate(keep_log=True)
            raise
        self.startup_s = time.perf_counter() - t0

    def _exit_error(self, rc: int, log_start: int) -> ServerStartError:
        """The error for a server that exited with status ``rc`` while starting; its log from byte
        ``log_start`` on says whether the port was taken."""
        try:
            with open(self.log_path, "rb") as fh:  # type: ignore[arg-type]  # set before the start
                fh.seek(log_start)
                clash = port_clash(fh.read().decode(errors="replace"))
        except OSError:
            clash = False
        hint = ""
        if clash:
            hint = (f" -- port {self.port} on {self.host} is in use; "
                    + ("stop the process listening there or pass another port (or none: a free one is chosen)"
                       if self._fixed_port is not None else
                       f"another process took each free port chosen ({PORT_TRIES} tries); start it again"))
        return ServerStartError(f"{self.name} exited during start-up: {describe_exit(rc)}{hint}\n{self._log_tail()}",
                                port_in_use=clash)

    def failure(self) -> ServerDied | None:
        """:class:`ServerDied` if the server was started and has exited without :meth:`stop`; else None.
        Right in any process, also one forked after the start (:meth:`_exit_status`)."""
        proc = self._proc
        if proc is None:
            return None
        rc = self._exit_status(proc)
        return None if rc is None else ServerDied(self.name, rc, self._log_tail(20))

    def check(self) -> None:
        """Raise :class:`ServerDied` if the server has exited (see :meth:`failure`)."""
        err = self.failure()
        if err is not None:
            raise err

    def _log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def log_text(self) -> str:
        """The server log so far ("" if none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout_s``, then SIGKILL. Idempotent, safe from
        ``atexit``, ``finally`` or after Ctrl-C; removes an automatic log file."""
        self._terminate(keep_log=False, timeout_s=timeout_s)

    def _terminate(self, *, keep_log: bool, timeout_s: float = 10) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            untrack_server(self)
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            if proc is not None and proc.poll() is None:
                try:
                    _signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(timeout=timeout_s)
                    except subprocess.TimeoutExpired:
                        _signal_group(proc, signal.SIGKILL)
                        proc.wait(timeout=10)
                except KeyboardInterrupt:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=10)
                    raise
            elif proc is not None:
                proc.wait()
            if not keep_log and self._user_log is None and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)

    def __enter__(self):  # returns the subclass instance
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; normal paths are stop()/atexit
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                _signal_group(self._proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the server's process group (it runs in its own session), falling back to the pid."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

