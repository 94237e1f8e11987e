"""Serving a Hugging Face model and its LoRA adapters with vLLM's OpenAI server (the GPU engine).

The second engine beside :mod:`society.serving` (llama.cpp): one :class:`VLLMServer` process
serves one base model (a Hugging Face directory -- e.g. :func:`training.checkpoints.hf_checkpoint` of an
embedded GGUF -- or a hub id) and PEFT LoRA adapters **by name**:

* adapters given at start are passed as ``--lora-modules name=dir ...`` (``--enable-lora`` is
  always on, ``--max-lora-rank`` / ``--max-loras`` bound them);
* adapters trained later are hot-loaded with ``POST /v1/load_lora_adapter``
  (``{"lora_name", "lora_path"}``; the server runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``)
  and dropped with ``POST /v1/unload_lora_adapter``;
* a request chooses the base model or an adapter by its ``model`` field, so
  :meth:`VLLMServer.endpoint` returns an :class:`society.llm.Endpoint` whose ``model`` is the
  adapter's name (no ``extra_body``, unlike llama.cpp's per-request ``lora`` field).

Lifecycle as for :class:`society.llama_server.LlamaServer`: a free loopback port
(:func:`society.server_process.free_port`), the same launcher (the server dies with the process that
started it, even by SIGKILL), ``GET /health`` until 200, always stopped (context manager,
``atexit``), tracked so that :func:`society.infra.dead_servers` reports it; an exit during start-up
is a :class:`society.server_process.ServerStartError` and an exit while serving a
:class:`society.infra.ServerDied`, both naming the status or signal
(:func:`society.infra.describe_exit`) and the log's last lines.

``--generation-config vllm`` makes vLLM ignore the checkpoint's ``generation_config.json`` sampling
defaults (e.g. a repetition penalty), so a request with temperature 0 is plain greedy decoding, as
the llama.cpp engine is run.

vLLM is not a dependency of the CPU install (``SQLSOCIETY_GPU=1 bash scripts/install.sh`` adds it);
the command line, validation and error paths run anywhere (``tests/test_vllm_serving.py`` drives a
stand-in server), :meth:`VLLMServer.start` with the real vLLM needs it installed.

Sources: vLLM docs "OpenAI-Compatible Server" (``--served-model-name``, ``/health``) and "LoRA
Adapters" (``--enable-lora``, ``--lora-modules``, ``--max-lora-rank``, ``--max-loras``, dynamic
loading with ``/v1/load_lora_adapter``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from society.infra import InfrastructureError
from society.llm import Endpoint
from society.server_process import ManagedServer

__all__ = ["VLLMServer", "VLLMNotInstalledError", "AdapterLoadError", "VLLM_MODULE", "INSTALL_HINT"]

#: The module run as the server (``python -m vllm.entrypoints.openai.api_server``).
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
#: What installs vLLM with the rest of the GPU stack.
INSTALL_HINT = "SQLSOCIETY_GPU=1 bash scripts/install.sh"

_NAME = re.compile(r"^[A-Za-z0-9][\w.:-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class VLLMNotInstalledError(RuntimeError):
    """vLLM is not importable here; the message says how to install it."""


class AdapterLoadError(InfrastructureError):
    """The server refused to load or unload an adapter (its reply is in the message), or did not
    answer; the adapter is not served."""


def _adapter_rank(path: Path) -> int | None:
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    r = cfg.get("r")
    return int(r) if isinstance(r, int) else None


def _check_adapter(name: str, path: Path, max_lora_rank: int) -> Path:
    if not _NAME.match(name):
        raise ValueError(
            f"adapter name {name!r}: use letters, digits, '_', '.', ':' or '-' (it is the request's model)"
        )
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"LoRA adapter {name!r}: {path} is not a PEFT adapter directory (no adapter_config.json)"
        )
    rank = _adapter_rank(path)
    if rank is not None and rank > max_lora_rank:
        raise ValueError(
            f"LoRA adapter {name!r} has rank r={rank} > max_lora_rank={max_lora_rank}; raise max_lora_rank"
        )
    return path.resolve()


class VLLMServer(ManagedServer):
    """vLLM's OpenAI-compatible server for one base model plus named LoRA adapters, on loopback.

    Args:
        model: a Hugging Face model directory (with ``config.json``) or a hub id ``owner/name``.
        served_model_name: the name requests use for the base model (``--served-model-name``).
        adapters: name -> PEFT adapter directory, loaded at start (``--lora-modules``).
        port: TCP port on 127.0.0.1; default a free one (:func:`society.server_process.free_port`).
        max_lora_rank: ``--max-lora-rank``; every adapter's ``r`` must be <= it.
        max_loras: ``--max-loras``: adapters in one batch (>= 1).
        gpu_memory_utilization: ``--gpu-memory-utilization``, in (0, 1].
        max_model_len: ``--max-model-len`` in tokens, or None (the model's).
        dtype: ``--dtype`` (``auto``, ``bfloat16``, ``float16``, ``float32``).
        tensor_parallel_size: ``--tensor-parallel-size`` (GPUs).
        seed: ``--seed`` (>= 0).
        allow_runtime_lora: set ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so :meth:`load_adapter`
            works (vLLM only mounts the endpoint then).
        extra_args: more command-line arguments, appended as given.
        log_path: file receiving the server's output; default a temp file removed by :meth:`stop`
            (kept when start-up fails).
        command_prefix: what runs the server; default ``[sys.executable, "-m", VLLM_MODULE]``
            (tests pass a stand-in).
        startup_timeout_s: default wait for ``/health`` in :meth:`start` (vLLM loads weights,
            profiles memory and may compile CUDA graphs: minutes).

    Raises:
        ValueError: a setting out of range, a bad or duplicate name, an adapter rank above
            ``max_lora_rank``, or ``model`` neither a HF directory nor a hub id.
        FileNotFoundError: an adapter directory without ``adapter_config.json``.
    """

    log_prefix = "sqlsociety-vllm"
    poll_s = 0.2

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        served_model_name: str,
        adapters: Mapping[str, str | os.PathLike[str]] | None = None,
        port: int | None = None,
        max_lora_rank: int = 32,
        max_loras: int = 2,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        seed: int = 0,
        allow_runtime_lora: bool = True,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        command_prefix: Sequence[str] | None = None,
        startup_timeout_s: float = 900.0,
    ) -> None:
        p = Path(str(model)).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ValueError(
                    f"model {p} is a directory without config.json; pass a Hugging Face model directory "
                    "(training.checkpoints.hf_checkpoint makes one from a GGUF) or a hub id owner/name"
                )
            self.model_path = str(p.resolve())
        elif _HUB_ID.match(str(model)) and not p.exists():
            self.model_path = str(model)
        else:
            raise ValueError(f"model {model!r} is neither a Hugging Face model directory nor a hub id owner/name")
        if not _NAME.match(served_model_name or ""):
            raise ValueError(f"served_model_name {served_model_name!r}: use letters, digits, '_', '.', ':' or '-'")
        if not isinstance(max_lora_rank, int) or max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be an int >= 1, got {max_lora_rank!r}")
        if not isinstance(max_loras, int) or max_loras < 1:
            raise ValueError(f"max_loras must be an int >= 1, got {max_loras!r}")
        if not 0.0 < float(gpu_memory_utilization) <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 16):
            raise ValueError(f"max_model_len must be None or an int >= 16 (tokens), got {max_model_len!r}")
        if dtype not in ("auto", "bfloat16", "float16", "half", "float32", "float"):
            raise ValueError(f"dtype {dtype!r}: use auto, bfloat16, float16 or float32")
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be an int >= 1, got {tensor_parallel_size!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.alias = served_model_name
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, Path] = {}
        for name, path in (adapters or {}).items():
            if name == self.alias or name in self.adapters:
                raise ValueError(f"adapter name {name!r} repeats the served model name or another adapter")
            self.adapters[name] = _check_adapter(name, Path(path), max_lora_rank)
        self._start_adapters = dict(self.adapters)
        self.max_loras = max_loras
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.tensor_parallel_size = tensor_parallel_size
        self.seed = seed
        self.allow_runtime_lora = allow_runtime_lora
        self.extra_args = tuple(str(a) for a in extra_args)
        self.command_prefix = list(command_prefix) if command_prefix is not None else None
        self.startup_timeout_s = float(startup_timeout_s)
        self._init_process(port, log_path)

    # -- names and endpoints ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``vllm <served name> (<model>)``, for messages."""
        return f"vllm {self.alias} ({Path(self.model_path).name})"

    @property
    def model(self) -> str:
        """The base model's served name."""
        return self.alias

    @property
    def models(self) -> list[str]:
        """The served name followed by the adapter names (what :meth:`endpoint` accepts)."""
        return [self.alias, *self.adapters]

    def __repr__(self) -> str:
        state = f"running pid={self.pid} at {self.base_url}" if self.running else "stopped"
        return f"VLLMServer({', '.join(self.models)}; {state})"

    def endpoint(self, adapter: str | None = None) -> Endpoint:
        """An :class:`Endpoint` for the base model (``adapter`` None or the served name) or one
        adapter by name (its ``model`` is the adapter name; no ``extra_body``).

        Raises:
            KeyError: ``adapter`` is not served here (load it with :meth:`load_adapter`).
            RuntimeError: not started.
        """
        if adapter is not None and adapter != self.alias and adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not served by {self.name}; served: {self.models}")
        return Endpoint(self.base_url, adapter or self.alias)

    # -- command line -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The server's command line (without the launcher); ``port`` must be set (fixed or started)."""
        prefix = self.command_prefix if self.command_prefix is not None else [sys.executable, "-m", VLLM_MODULE]
        cmd = [
            *prefix,
            "--model",
            self.model_path,
            "--served-model-name",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--seed",
            str(self.seed),
            "--gpu-memory-utilization",
            str(self.gpu_memory_utilization),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--generation-config",
            "vllm",
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
        ]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self._start_adapters:
            cmd += ["--lora-modules", *(f"{n}={p}" for n, p in self._start_adapters.items())]
        return cmd + list(self.extra_args)

    def child_env(self) -> dict[str, str]:
        """The server's environment: this one, plus ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` when
        runtime loading is allowed (else that variable removed)."""
        env = dict(os.environ)
        if self.allow_runtime_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        else:
            env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
        return env

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout_s: float | None = None) -> VLLMServer:
        """Start the server and wait for ``GET /health`` = 200 (see :meth:`ManagedServer.start`);
        ``timeout_s`` defaults to ``startup_timeout_s``. The adapters given at construction are the
        served ones again after a (re)start.

        Raises:
            VLLMNotInstalledError: the default command and vLLM is not importable here.
            ServerStartError: the process exited during start-up (status or signal named) or did
                not answer in time; with the log tail.
        """
        if self.command_prefix is None and importlib.util.find_spec("vllm") is None:
            raise VLLMNotInstalledError(
                f"vLLM is not installed in {sys.executable}; on a CUDA machine run {INSTALL_HINT} "
                "(the gpu extra), or serve with the llama.cpp engine"
            )
        with self._lock:
            if self.running:
                return self
            super().start(self.startup_timeout_s if timeout_s is None else timeout_s)
            self.adapters = dict(self._start_adapters)
        return self

    # -- adapters at run time -----------------------------------------------------------------------

    def _post(self, path: str, payload: Mapping[str, Any], timeout: float) -> tuple[int, str]:
        req = urllib.request.Request(
            f"http://{self.host}:{self.port}{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def load_adapter(self, name: str, path: str | os.PathLike[str], *, timeout_s: float = 300) -> Endpoint:
        """Hot-load a PEFT adapter under ``name`` (``POST /v1/load_lora_adapter``); returns its endpoint.

        Loading a name that is already served with the same directory is a no-op; with another
        directory the old one is unloaded first (a newer checkpoint of the same role).

        Raises:
            ValueError / FileNotFoundError: as for adapters given at construction.
            RuntimeError: not running.
            AdapterLoadError: the server answered with an error (its text included), e.g. runtime
                loading disabled (404), or did not answer in ``timeout_s``.
            ServerDied: the server has exited.
        """
        if name == self.alias:
            raise ValueError(f"adapter name {name!r} is the served model name")
        resolved = _check_adapter(name, Path(path), self.max_lora_rank)
        with self._lock:
            if not self.running:
                self.check()
                raise RuntimeError(f"{self.name} is not running; start() it first")
            if self.adapters.get(name) == resolved:
                return self.endpoint(name)
            if name in self.adapters:
                self.unload_adapter(name, timeout_s=timeout_s)
            try:
                status, body = self._post(
                    "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(resolved)}, timeout_s
                )
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                self.check()
                raise AdapterLoadError(
                    f"{self.name}: loading adapter {name!r} from {resolved} got no answer ({e})"
                ) from e
            if status != 200:
                hint = " -- runtime loading is off (start with allow_runtime_lora=True)" if status == 404 else ""
                raise AdapterLoadError(
                    f"{self.name} refused adapter {name!r} from {resolved}: HTTP {status}: {body.strip()[:500]}{hint}"
                )
            self.adapters[name] = resolved
        return self.endpoint(name)

    def unload_adapter(self, name: str, *, timeout_s: float = 60) -> None:
        """Drop adapter ``name`` (``POST /v1/unload_lora_adapter``).

        Raises:
            KeyError: not served here. AdapterLoadError: the server refused or did not answer.
        """
        with self._lock:
            if name not in self.adapters:
                raise KeyError(f"adapter {name!r} is not served by {self.name}; served: {self.models}")
            try:
                status, body = self._post("/v1/unload_lora_adapter", {"lora_name": name}, timeout_s)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                self.check()
                raise AdapterLoadError(f"{self.name}: unloading adapter {name!r} got no answer ({e})") from e
            if status != 200:
                raise AdapterLoadError(f"{self.name} refused to unload {name!r}: HTTP {status}: {body.strip()[:500]}")
            del self.adapters[name]

    def served_models(self, timeout_s: float = 10) -> list[str]:
        """The ids ``GET /v1/models`` lists (base and adapters), as the server sees them."""
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=timeout_s) as r:
            return [m["id"] for m in json.loads(r.read()).get("data", [])]

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM, wait up to ``timeout_s`` (vLLM frees GPU memory on exit), then SIGKILL."""
        super().stop(timeout_s)
