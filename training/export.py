"""LoRA adapter export: a trained PEFT adapter -> the forms it is served in.

================================  ==============================================================
function                          what it does
================================  ==============================================================
:func:`read_adapter_info`         a PEFT LoRA adapter directory -> :class:`AdapterInfo` (config +
                                  tensors)
:func:`export_lora_gguf`          PEFT LoRA adapter -> llama.cpp GGUF LoRA adapter (``gguf`` lib)
:func:`adapter_gguf`              the GGUF LoRA file of an adapter, exported when missing or older
:func:`merge_adapter`             PEFT adapter merged into the base -> HF directory (for
                                  ``transformers serve`` and for vLLM/verl without LoRA)
:func:`served_weights`            the files a training run's servers load, resolved once
                                  (:class:`ServedWeights`)
================================  ==============================================================

The base models come from :mod:`training.checkpoints`; serving an adapter and checking what is
served against transformers + PEFT is :mod:`training.adapter_serving`.

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
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.checkpoints import ExportError, finish_gguf, gguf_field, hf_checkpoint, load_for_training, resolve_gguf

__all__ = [
    "AdapterInfo",
    "read_adapter_info",
    "export_lora_gguf",
    "adapter_gguf",
    "merge_adapter",
    "ServedWeights",
    "served_weights",
]

#: Architectures whose GGUF stores attn_q / attn_k rows permuted for llama.cpp's rope layout
#: (convert_hf_to_gguf.py applies ``LlamaModel.permute`` for these model classes).
_PERMUTED_QK_ARCHS = frozenset({"llama"})


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
    *,
    dtype: str = "f32",
) -> Path:
    """Convert a PEFT LoRA adapter into a llama.cpp GGUF LoRA adapter for ``base_gguf``.

    Args:
        adapter_dir: PEFT output (``adapter_config.json`` + ``adapter_model.safetensors``) trained on
            the model of :func:`hf_checkpoint` (``base_gguf``).
        base_gguf: the GGUF the adapter will be applied to (alias or path); gives the architecture,
            tensor names, head counts and shapes to check against.
        out_path: default ``<adapter_dir>/adapter.gguf``.
        dtype: ``f32`` (what training serves) or ``f16`` (half the size, for an export: llama.cpp's
            own converter writes LoRA tensors in F16 by default; the product ``B @ A`` then carries
            F16's rounding, a relative 2**-11 per weight).

    Returns:
        The written file: ``lora_a``/``lora_b`` pairs in ``dtype`` (4.4 M weights for rank 8 on all
        projections of a 0.5B Qwen2: 17.6 MB in F32, 8.8 MB in F16), loadable with
        ``llama-server -m base --lora file`` (``society.llama_server.LlamaServer(..., loras={name: file})``).

    Raises:
        ExportError: a tensor that is not LoRA A/B (e.g. trained embeddings or ``modules_to_save``),
            a module with no GGUF counterpart, or a shape that does not fit the base tensor.
        ValueError: ``dtype`` is neither ``f32`` nor ``f16``.
    """
    import gguf
    import numpy as np
    import torch

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    np_dtype = np.float16 if dtype == "f16" else np.float32

    info = read_adapter_info(adapter_dir)
    base = resolve_gguf(base_gguf)
    reader = gguf.GGUFReader(str(base))
    arch = str(gguf_field(reader, "general.architecture"))
    n_blocks = int(gguf_field(reader, f"{arch}.block_count"))
    n_head = int(gguf_field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(gguf_field(reader, f"{arch}.attention.head_count_kv", n_head))
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
        writer.add_tensor(gname + ".lora_a", np.ascontiguousarray(a.numpy().astype(np_dtype)))
        writer.add_tensor(gname + ".lora_b", np.ascontiguousarray(b.numpy().astype(np_dtype)))
    return finish_gguf(writer, tmp, out)


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


@dataclass(frozen=True)
class ServedWeights:
    """The files the servers of a training run's stage load (:func:`served_weights`).

    Attributes:
        base: the base model as the engine loads it: a GGUF file (llama.cpp) or a Hugging Face
            directory (vLLM, :func:`training.checkpoints.hf_checkpoint`).
        loras: role alias -> adapter served on its role model's server, chosen per request by
            the alias: a GGUF LoRA file (llama.cpp) or a PEFT directory (vLLM).
        own: role alias -> GGUF LoRA whose base model is not its role's model (llama.cpp): it
            gets a llama-server of its own on ``base``. Always empty with vLLM.
    """

    base: Path
    loras: dict[str, Path]
    own: dict[str, Path]


def served_weights(engine: str, base_model: str | os.PathLike[str], adapters: dict[str, Path],
                   role_models: dict[str, str]) -> ServedWeights:
    """Resolve, once per stage, every file its servers load: the base model and each trained adapter
    in the engine's form (a PEFT adapter is exported to GGUF here when its ``adapter.gguf`` is
    missing or older, :func:`adapter_gguf`).

    Args:
        engine: ``"llama.cpp"`` or ``"vllm"`` (the profile's ``serving.engine``).
        base_model: the model the adapters were trained on (alias, GGUF path or HF directory).
        adapters: role alias -> PEFT adapter directory (or a GGUF LoRA file, llama.cpp).
        role_models: role alias -> the embedded model alias its role is served by (an adapter whose
            model resolves to another GGUF than ``base_model`` goes to :attr:`ServedWeights.own`).

    Raises:
        FileNotFoundError, ValueError: a model or an adapter cannot be found
            (:func:`training.checkpoints.resolve_gguf`, :func:`adapter_gguf`).
        training.checkpoints.ExportError: an adapter cannot be exported.
    """
    if engine == "vllm":
        return ServedWeights(base=hf_checkpoint(base_model), loras={a: Path(p) for a, p in adapters.items()}, own={})
    base = resolve_gguf(base_model)
    loras: dict[str, Path] = {}
    own: dict[str, Path] = {}
    for alias, adapter in adapters.items():
        gguf = adapter_gguf(adapter, base)
        (loras if resolve_gguf(role_models.get(alias, base_model)) == base else own)[alias] = gguf
    return ServedWeights(base=base, loras=loras, own=own)

