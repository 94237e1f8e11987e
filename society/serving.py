"""Serving the embedded models: llama.cpp's own HTTP server (``llama-server``) as a managed subprocess.

One :class:`LlamaServer` process serves one base GGUF model and any number of GGUF LoRA adapters
to many clients at once:

* ``--parallel N`` slots with continuous batching: requests from the parallel juniors and from
  ``eval --concurrency K`` are decoded together instead of queueing;
* the prompt cache: each slot keeps the KV cache of its last prompt and a new request is sent to
  the slot whose cached prompt shares the longest prefix (``--slot-prompt-similarity``), so
  questions over the same database reuse the processed schema prompt;
* LoRA adapters loaded at start with scale 0 (``--lora-init-without-apply``) and chosen per request
  (request field ``lora: [{"id", "scale"}]``); :meth:`LlamaServer.endpoint` returns an
  :class:`society.llm.Endpoint` whose ``extra_body`` selects the base model or one adapter, so the
  base model, the juniors' adapter and the senior's adapter are served by **one** process.

The server runs on a free loopback port behind a small Python launcher that (a) kills the server
when the launcher dies (``PR_SET_PDEATHSIG``), (b) kills it when this process dies (even by
SIGKILL), and (c) exits with the server's own status or signal. Everything is always stopped
(context manager, ``atexit``). When the server exits unexpectedly, :class:`ServerDied` names the
server, its model, the exit status or signal (``SIGILL`` comes with the hint that the build does
not match this CPU) and the last lines of its log; :func:`dead_servers` lets callers that saw a
failed request tell a dead server (an infrastructure failure) from a bad answer.

The binary is built by ``scripts/install.sh`` (portable flags, see
``scripts/build-llama-server.sh``) and found by :func:`find_llama_server`.

Sources: llama.cpp ``tools/server/README.md`` (command-line options, ``/health``, ``/tokenize``,
per-request ``lora``, ``timings`` in responses); Linux ``prctl(2)`` (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import portpicker

from society.infra import InfrastructureError, ServerDied, dead_servers, describe_exit, track_server, untrack_server
from society.llm import Endpoint
from society.models import DEFAULT_MODEL_ALIAS, embedded_spec, ensure_model

__all__ = [
    "LLAMA_SERVER_ENV",
    "LlamaServer",
    "LoraAdapter",
    "ServerDied",
    "ServerNotInstalledError",
    "ServerStartError",
    "dead_servers",
    "default_threads",
    "describe_exit",
    "find_llama_server",
    "free_port",
    "idle_threads",
    "serve_config",
    "serve_embedded",
]

#: Environment variable naming the llama-server executable (overrides the installed one).
LLAMA_SERVER_ENV = "SQLSOCIETY_LLAMA_SERVER"
#: Name under which scripts/install.sh installs the portable build into the environment's bin dir.
INSTALLED_NAME = "sqlsociety-llama-server"


# ---------------------------------------------------------------------------- errors


class ServerNotInstalledError(RuntimeError):
    """No llama-server executable was found; the message says how to build one."""


class ServerStartError(InfrastructureError):
    """The server process exited during start-up or did not answer in time; the message carries
    the exit status or signal and the tail of the server log."""


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no process is bound to now (``portpicker``)."""
    return int(portpicker.pick_unused_port())


def default_threads() -> int:
    """CPU threads for a new llama.cpp server: ``$SQLSOCIETY_LLAMA_THREADS`` if set, else the idle
    cores at start-up (:func:`idle_threads`), clamped to 1..8.

    llama.cpp's CPU threads spin on barriers, so on a busy 2-core box 1 thread is faster than 2.

    Raises:
        ValueError: ``$SQLSOCIETY_LLAMA_THREADS`` is not a positive integer.
    """
    return idle_threads("SQLSOCIETY_LLAMA_THREADS", cap=8)


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
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
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


def find_llama_server() -> Path:
    """The llama-server executable: ``$SQLSOCIETY_LLAMA_SERVER``, else the portable build that
    ``scripts/install.sh`` put in this Python environment's bin directory
    (``sqlsociety-llama-server``), else one of that name on ``PATH``.

    Raises:
        ServerNotInstalledError: none found, or ``$SQLSOCIETY_LLAMA_SERVER`` is not an executable file.
    """
    env = os.environ.get(LLAMA_SERVER_ENV, "").strip()
    if env:
        p = Path(env).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ServerNotInstalledError(f"{LLAMA_SERVER_ENV}={env} is not an executable file; unset it or point it "
                                          "at a llama-server binary")
        return p
    here = Path(sysconfig.get_path("scripts")) / INSTALLED_NAME
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(INSTALLED_NAME)
    if found:
        return Path(found)
    raise ServerNotInstalledError(
        f"llama-server is not installed ({here} is missing); run `bash scripts/install.sh`, which builds a portable "
        f"llama-server, or set {LLAMA_SERVER_ENV} to a llama-server executable")


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

# ---------------------------------------------------------------------------- the server


class ManagedServer:
    """An OpenAI-compatible model server run as a managed subprocess on a loopback port.

    The process lifecycle shared by :class:`LlamaServer` and ``society.vllm_serving.VLLMServer``:
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
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 180) -> ManagedServer:
        """Start the server and wait until ``GET /health`` answers 200 (model loaded).

        Idempotent while running. A port taken between choosing and binding is retried (up to 3
        times) on a new free port unless a fixed ``port`` was given.

        Returns:
            self.

        Raises:
            ServerStartError: the process exited (the message names the status or signal) or did
                not answer within ``timeout_s``; the message ends with the server log's last lines.
        """
        with self._lock:
            if self.running:
                return self
            attempts = 1 if self._fixed_port is not None else 3
            for attempt in range(attempts):
                try:
                    self._start_once(timeout_s)
                    track_server(self)
                    return self
                except ServerStartError as e:
                    if attempt + 1 < attempts and "address already in use" in str(e).lower():
                        continue
                    raise
            raise AssertionError("unreachable")

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
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.child_env(), start_new_session=True)
        atexit.register(self.stop)
        deadline = t0 + timeout_s
        url = f"http://{self.host}:{self.port}/health"
        try:
            while True:
                rc = self._proc.poll()
                if rc is not None:
                    raise ServerStartError(
                        f"{self.name} exited during start-up: {describe_exit(rc)}\n{self._log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, OSError):
                    pass
                if time.perf_counter() > deadline:
                    raise ServerStartError(
                        f"{self.name} did not answer {url} within {timeout_s:.0f} s.\n{self._log_tail()}"
                    )
                time.sleep(self.poll_s)
        except BaseException:  # including KeyboardInterrupt: never leave the child behind
            self._terminate(keep_log=True)
            raise
        self.startup_s = time.perf_counter() - t0

    def failure(self) -> ServerDied | None:
        """:class:`ServerDied` if the server was started and has exited without :meth:`stop`; else None."""
        proc = self._proc
        if proc is None:
            return None
        rc = proc.poll()
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


@dataclass(frozen=True)
class LoraAdapter:
    """A GGUF LoRA adapter served by a :class:`LlamaServer`.

    Attributes:
        name: what clients choose it by (:meth:`LlamaServer.endpoint`), e.g. ``"junior-sft"``.
        path: the llama.cpp GGUF LoRA file (``training.export.export_lora_gguf`` writes one).
        scale: the adapter's scale when chosen (1.0 = as trained).
    """

    name: str
    path: Path
    scale: float = 1.0


class LlamaServer(ManagedServer):
    """llama.cpp's ``llama-server`` for one GGUF model (plus LoRA adapters) on a loopback port.

    Args:
        model_path: the GGUF model file (see :func:`society.models.ensure_model`).
        model_alias: the name the server answers to (``model`` in ``/v1/models``; requests may send
            any name).
        n_ctx: context window per slot, in tokens (prompt + completion); 64..model's trained length.
        parallel: slots decoded together (continuous batching); the KV cache holds
            ``n_ctx * parallel`` tokens.
        n_threads: CPU threads for generation; default :func:`default_threads`.
        n_threads_batch: CPU threads for prompt processing; default ``n_threads``.
        port: TCP port on 127.0.0.1; default a free one.
        loras: adapters loaded at start with scale 0, chosen per request (:meth:`endpoint`);
            a mapping ``name -> path`` or :class:`LoraAdapter` entries.
        seed: the sampler seed (>= 0); with temperature 0 decoding is greedy regardless.
        kv_cache_type: ``None`` (llama.cpp's default F16) or ``"f32"`` (exact comparisons with
            transformers, see ``training.adapter_serving.check_served_equals_peft``).
        extra_args: further llama-server command-line arguments.
        log_path: file receiving the server's output; default a temp file removed by :meth:`stop`
            (kept when start-up fails so it can be read).
        n_batch: logical and physical batch size for prompt processing (tokens).
        executable: the llama-server binary; default :func:`find_llama_server`.

    Raises:
        FileNotFoundError: ``model_path`` or an adapter file does not exist.
        ValueError: a setting out of range, or adapter names not unique.
        ServerNotInstalledError: no llama-server executable (see :func:`find_llama_server`).
    """

    log_prefix = "sqlsociety-llama"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        model_alias: str,
        n_ctx: int = 4096,
        parallel: int = 1,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        port: int | None = None,
        loras: Mapping[str, str | os.PathLike[str]] | Sequence[LoraAdapter] = (),
        seed: int = 0,
        kv_cache_type: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        n_batch: int = 512,
        executable: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file {model_path} (alias {model_alias!r}) does not exist; "
                                    "use society.models.ensure_model(alias) for the embedded models")
        if not model_alias:
            raise ValueError("model_alias must be a non-empty name")
        if isinstance(loras, Mapping):
            adapters = [LoraAdapter(n, Path(p)) for n, p in loras.items()]
        else:
            adapters = [a if isinstance(a, LoraAdapter) else LoraAdapter(*a) for a in loras]
        names = [a.name for a in adapters]
        if len(set(names)) != len(names) or not all(names) or model_alias in names:
            raise ValueError(f"adapter names must be non-empty, unique and differ from the model alias, got {names}")
        for a in adapters:
            if not Path(a.path).is_file():
                raise FileNotFoundError(f"LoRA adapter {a.path} ({a.name!r}) does not exist; export one with "
                                        "training.export.export_lora_gguf")
        if not isinstance(n_ctx, int) or n_ctx < 64:
            raise ValueError(f"n_ctx must be an int >= 64 (tokens), got {n_ctx!r}")
        if not isinstance(parallel, int) or not 1 <= parallel <= 64:
            raise ValueError(f"parallel must be an int in 1..64 (slots), got {parallel!r}")
        self.n_threads = n_threads if n_threads is not None else default_threads()
        self.n_threads_batch = n_threads_batch if n_threads_batch is not None else self.n_threads
        for name, v in (("n_threads", self.n_threads), ("n_threads_batch", self.n_threads_batch)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if kv_cache_type not in (None, "f32", "f16"):
            raise ValueError(f"kv_cache_type must be None, 'f16' or 'f32', got {kv_cache_type!r}")
        self.executable = Path(executable) if executable is not None else find_llama_server()
        self.alias = model_alias
        self.adapters: tuple[LoraAdapter, ...] = tuple(adapters)
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.n_batch = n_batch
        self.seed = seed
        self.kv_cache_type = kv_cache_type
        self.extra_args = tuple(str(a) for a in extra_args)
        self._init_process(port, log_path)

    # -- properties -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``llama-server <alias>`` (pid), for messages."""
        return f"llama-server {self.alias} ({self.model_path.name})"

    @property
    def model(self) -> str:
        """The model name the server answers to."""
        return self.alias

    @property
    def models(self) -> list[str]:
        """The base alias followed by the adapter names (what :meth:`endpoint` accepts)."""
        return [self.alias, *(a.name for a in self.adapters)]

    def __repr__(self) -> str:
        state = f"running pid={self.pid} at {self.base_url}" if self.running else "stopped"
        return f"LlamaServer({', '.join(self.models)}; {state})"

    def lora_field(self, adapter: str | None) -> list[dict[str, float]]:
        """The request's ``lora`` field choosing ``adapter`` (None or the alias: the base model).

        Raises:
            KeyError: ``adapter`` is not served here.
        """
        if adapter is None or adapter == self.alias:
            return [{"id": i, "scale": 0.0} for i in range(len(self.adapters))]
        for i, a in enumerate(self.adapters):
            if a.name == adapter:
                return [{"id": j, "scale": a.scale if j == i else 0.0} for j in range(len(self.adapters))]
        raise KeyError(f"adapter {adapter!r} is not served by {self.name}; served: {self.models}")

    def endpoint(self, adapter: str | None = None) -> Endpoint:
        """An :class:`Endpoint` for the base model (``adapter`` None) or one adapter by name; its
        ``extra_body`` carries the per-request ``lora`` choice.

        Raises:
            KeyError: unknown adapter name.
            RuntimeError: not started.
        """
        extra = {"lora": self.lora_field(adapter)} if self.adapters else None
        return Endpoint(self.base_url, adapter or self.alias, extra_body=extra)

    # -- command line -----------------------------------------------------------------------

    def command(self) -> list[str]:
        """The llama-server command line (without the launcher)."""
        cmd = [
            str(self.executable), "-m", str(self.model_path.resolve()), "--alias", self.alias,
            "--host", self.host, "--port", str(self.port),
            "-c", str(self.n_ctx * self.parallel), "-np", str(self.parallel), "-cb",
            "-t", str(self.n_threads), "-tb", str(self.n_threads_batch),
            "-b", str(self.n_batch), "-ub", str(self.n_batch),
            "--seed", str(self.seed), "--jinja", "--no-webui", "--metrics",
        ]
        for a in self.adapters:
            cmd += ["--lora", str(Path(a.path).resolve())]
        if self.adapters:
            cmd.append("--lora-init-without-apply")
        if self.kv_cache_type:
            cmd += ["-ctk", self.kv_cache_type, "-ctv", self.kv_cache_type]
        return cmd + list(self.extra_args)

    def child_env(self) -> dict[str, str]:
        # llama-server reads LLAMA_ARG_* variables as defaults for its options; the command line is
        # the whole configuration here.
        return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``/metrics``), e.g. ``llamacpp:prompt_tokens_total``,
        ``llamacpp:prompt_seconds_total``, ``llamacpp:tokens_predicted_total``,
        ``llamacpp:tokens_predicted_seconds_total`` (tokens, seconds since start)."""
        url = f"http://{self.host}:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[k.strip()] = float(v)
        return out

    def post(self, path: str, payload: Mapping[str, Any], timeout: float = 600) -> dict[str, Any]:
        """POST JSON to ``http://127.0.0.1:<port><path>`` and return the JSON reply (native API,
        e.g. ``/tokenize``, ``/completion``)."""
        req = urllib.request.Request(f"http://{self.host}:{self.port}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the server's process group (it runs in its own session), falling back to the pid."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def serve_embedded(alias: str = DEFAULT_MODEL_ALIAS, *, cache_dir: Path | None = None, **kw: Any) -> LlamaServer:
    """An (unstarted) :class:`LlamaServer` for an embedded model; use it as a context manager.

    Args:
        alias: a key of :data:`society.models.EMBEDDED_MODELS`; the server answers to this name
            unless ``model_alias`` is given.
        cache_dir: passed to :func:`society.models.ensure_model`.
        **kw: :class:`LlamaServer` settings (``n_ctx`` is capped at the model's trained context).

    Raises:
        UnknownModelError, ModelNotInstalledError, ModelIntegrityError: see ``ensure_model``.
        ServerNotInstalledError: no llama-server executable.
    """
    spec = embedded_spec(alias)
    path = ensure_model(alias, cache_dir)
    kw["n_ctx"] = min(int(kw.get("n_ctx", 4096)), spec.n_ctx_train)
    kw.setdefault("model_alias", alias)
    return LlamaServer(path, **kw)


#: Slots per embedded server when the caller does not say (the three juniors of one question
#: decode together; more slots only help with ``eval --concurrency`` > 1).
DEFAULT_PARALLEL = 4


@contextlib.contextmanager
def serve_config(
    config: Any,
    *,
    adapters: Mapping[str, str | os.PathLike[str]] | None = None,
    parallel: int | None = None,
    proxy: bool = False,
    on_start: Any = None,
    **server_kw: Any,
) -> Iterator[dict[str, Endpoint]]:
    """Serve every embedded model a society config uses; yield alias -> :class:`Endpoint`.

    One :class:`LlamaServer` per embedded model, however many aliases use it; an alias named in
    ``adapters`` is served by the same process with its LoRA adapter chosen per request. Every
    server is stopped on exit (normally, on error, on Ctrl-C).

    Args:
        config: a :class:`society.config.SocietyConfig`.
        adapters: model alias -> GGUF LoRA adapter for that alias (trained on the alias's
            embedded model); aliases must be embedded ones of ``config``.
        parallel: slots per server (default :data:`DEFAULT_PARALLEL`).
        proxy: route every alias through Agent Lightning's ``LLMProxy``
            (:func:`society.proxy.llm_proxy`); the proxied endpoints keep each alias's adapter.
        on_start: called with each started :class:`LlamaServer` (progress messages).
        **server_kw: further :class:`LlamaServer` settings.

    Raises:
        ValueError: an adapter for an alias that is not an embedded alias of ``config``.
        ServerNotInstalledError, ServerStartError: a server could not start.
    """
    embedded = config.embedded_aliases()
    adapters = {a: Path(p) for a, p in (adapters or {}).items()}
    bad = sorted(set(adapters) - set(embedded))
    if bad:
        raise ValueError(f"adapters for {bad}: not embedded model aliases of this config ({sorted(embedded)})")
    by_model: dict[str, list[str]] = {}
    for alias, model in embedded.items():
        by_model.setdefault(model, []).append(alias)
    endpoints: dict[str, Endpoint] = {}
    with contextlib.ExitStack() as stack:
        for model, aliases in by_model.items():
            loras = [LoraAdapter(a, adapters[a]) for a in aliases if a in adapters]
            srv = stack.enter_context(serve_embedded(model, loras=loras, parallel=parallel or DEFAULT_PARALLEL,
                                                     **server_kw))
            if on_start is not None:
                on_start(srv)
            for alias in aliases:
                endpoints[alias] = srv.endpoint(alias if alias in adapters else None)
        if proxy and endpoints:
            from society.proxy import llm_proxy

            endpoints = stack.enter_context(llm_proxy(endpoints))
        yield endpoints


def check_serving(alias: str = DEFAULT_MODEL_ALIAS) -> str:
    """Serve ``alias`` and ask for one short greedy chat completion; return a one-line report.

    Raises:
        ServerNotInstalledError, ServerStartError, ServerDied: the server cannot answer (the
            message names the status or signal and holds the server's last log lines).
    """
    with serve_embedded(alias, n_ctx=512) as srv:
        t0 = time.perf_counter()
        try:
            out = srv.post("/v1/chat/completions", {
                "model": srv.model, "temperature": 0, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Reply with the single word: ready"}]})
        except OSError as e:
            srv.check()  # a dead server explains itself
            raise ServerStartError(f"{srv.name} did not answer a completion: {e}\n{srv._log_tail(20)}") from e
        text = out["choices"][0]["message"]["content"]
        return (f"{srv.name}: answered {text.strip()!r} in {time.perf_counter() - t0:.1f} s "
                f"(start-up {srv.startup_s:.1f} s) using {srv.executable}")


if __name__ == "__main__":  # python -m society.serving --check [ALIAS]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m society.serving", description=check_serving.__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="serve the embedded model and run one completion")
    ap.add_argument("alias", nargs="?", default=DEFAULT_MODEL_ALIAS)
    a = ap.parse_args()
    if not a.check:
        ap.error("nothing to do; pass --check")
    try:
        print(check_serving(a.alias))
    except (ServerNotInstalledError, ServerStartError, ServerDied) as e:
        print(f"serving check failed: {e}", file=sys.stderr)
        sys.exit(1)
