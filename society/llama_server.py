"""llama.cpp's own HTTP server (``llama-server``) for one GGUF model and its LoRA adapters.

One :class:`LlamaServer` process serves one base GGUF model and any number of GGUF LoRA adapters
to many clients at once:

* ``--parallel N`` slots with continuous batching: requests from the parallel juniors and from
  ``eval --concurrency K`` are decoded together instead of queueing;
* the prompt cache: each slot keeps the KV cache of its last prompt and a new request is sent to
  the slot whose cached prompt shares the longest prefix (``--slot-prompt-similarity``), so
  questions over the same database reuse the processed schema prompt;
* LoRA adapters loaded at start with scale 0 (``--lora-init-without-apply``) and chosen per request
  (request field ``lora: [{"id", "scale"}]``, :func:`lora_field`); :meth:`LlamaServer.endpoint`
  returns an :class:`society.llm.Endpoint` whose ``extra_body`` selects the base model or one
  adapter, so the base model, the juniors' adapter and the senior's adapter are served by **one**
  process.

The process itself (launcher, free port, health wait, log, stop) is
:class:`society.server_process.ManagedServer`'s job. The binary is built by
``scripts/install.sh`` (portable flags, see ``scripts/build-llama-server.sh``) and found by
:func:`find_llama_server`.

Sources: llama.cpp ``tools/server/README.md`` (command-line options, ``/health``, ``/tokenize``,
per-request ``lora``, ``timings`` in responses, ``/metrics``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sysconfig
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from society.cpu_threads import default_threads
from society.llm import Endpoint
from society.server_process import ManagedServer

__all__ = [
    "INSTALLED_NAME",
    "LLAMA_SERVER_ENV",
    "LlamaServer",
    "LoraAdapter",
    "ServerNotInstalledError",
    "find_llama_server",
    "lora_field",
]

#: Environment variable naming the llama-server executable (overrides the installed one).
LLAMA_SERVER_ENV = "SQLSOCIETY_LLAMA_SERVER"
#: Name under which scripts/install.sh installs the portable build into the environment's bin dir.
INSTALLED_NAME = "sqlsociety-llama-server"


class ServerNotInstalledError(RuntimeError):
    """No llama-server executable was found; the message says how to build one."""


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


def lora_field(adapters: Sequence[LoraAdapter], adapter: str | None) -> list[dict[str, float]]:
    """llama-server's per-request ``lora`` field that applies ``adapter`` alone (None: the base
    model, every adapter at scale 0). ``id`` is the adapter's position in ``--lora`` order.

    >>> ads = [LoraAdapter("junior", Path("j.gguf")), LoraAdapter("senior", Path("s.gguf"), 0.5)]
    >>> lora_field(ads, "senior")
    [{'id': 0, 'scale': 0.0}, {'id': 1, 'scale': 0.5}]
    >>> lora_field(ads, None)
    [{'id': 0, 'scale': 0.0}, {'id': 1, 'scale': 0.0}]

    Raises:
        KeyError: no adapter of that name.
    """
    if adapter is None:
        return [{"id": i, "scale": 0.0} for i in range(len(adapters))]
    for i, a in enumerate(adapters):
        if a.name == adapter:
            return [{"id": j, "scale": a.scale if j == i else 0.0} for j in range(len(adapters))]
    raise KeyError(adapter)


class LlamaServer(ManagedServer):
    """llama.cpp's ``llama-server`` for one GGUF model (plus LoRA adapters) on a loopback port.

    Args:
        model_path: the GGUF model file (see :func:`society.models.ensure_model`).
        model_alias: the name the server answers to (``model`` in ``/v1/models``; requests may send
            any name).
        n_ctx: context window per slot, in tokens (prompt + completion); 64..model's trained length.
        parallel: slots decoded together (continuous batching); the KV cache holds
            ``n_ctx * parallel`` tokens.
        n_threads: CPU threads for generation; default :func:`society.cpu_threads.default_threads`.
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
        """The request's ``lora`` field choosing ``adapter`` (None or the alias: the base model);
        see :func:`lora_field`.

        Raises:
            KeyError: ``adapter`` is not served here.
        """
        try:
            return lora_field(self.adapters, None if adapter == self.alias else adapter)
        except KeyError:
            raise KeyError(f"adapter {adapter!r} is not served by {self.name}; served: {self.models}") from None

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


