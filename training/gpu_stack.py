"""The GPU stack a training profile needs (:func:`gpu_stack_needs`) and what of it this machine lacks
(:func:`missing_gpu_stack`): CUDA, ``vllm``, ``verl`` and ``unsloth``, each ``required`` when the
profile names it, ``optional`` for an ``auto`` backend (used when present, else the TRL fallback).
``sqlsociety train`` refuses to start when a required part is missing; ``--dry-run`` reports it in
its ``NOT RUNNABLE HERE`` block (:mod:`training.plan`).
"""

from __future__ import annotations

import importlib.util

from training.profile import TrainConfig

__all__ = ["INSTALL_GPU", "gpu_stack_needs", "missing_gpu_stack"]

#: What installs the GPU stack (the ``gpu`` extra) on a CUDA machine.
INSTALL_GPU = "SQLSOCIETY_GPU=1 bash scripts/install.sh"


def gpu_stack_needs(cfg: TrainConfig) -> dict[str, str]:
    """Component -> ``"required"`` / ``"optional"`` / ``"no"`` for ``cuda``, ``vllm``, ``verl``,
    ``unsloth``: required when the profile names it (``serving.engine: vllm``, ``grpo.backend: verl``
    -- which also rolls out with vLLM --, ``sft.backend: unsloth``), optional for ``auto`` backends
    (used when present, else the TRL fallback)."""
    sft_b = cfg.sft.backend
    grpo_b = cfg.grpo.backend
    needs = {"vllm": "no", "verl": "no", "unsloth": "no"}
    if cfg.serving.engine == "vllm" or grpo_b == "verl":
        needs["vllm"] = "required"
    if grpo_b == "verl":
        needs["verl"] = "required"
    elif grpo_b == "auto":
        needs["verl"] = "optional"
    if sft_b == "unsloth":
        needs["unsloth"] = "required"
    elif sft_b == "auto":
        needs["unsloth"] = "optional"
    cuda = "required" if "required" in needs.values() else "optional"
    return {"cuda": cuda, **needs}


def missing_gpu_stack(cfg: TrainConfig) -> list[str]:
    """The required GPU components (:func:`gpu_stack_needs`) this machine lacks, as named to the user
    (``CUDA``: ``torch.cuda.is_available()`` is False; a package: ``importlib.util.find_spec`` finds
    none); empty when the profile can run here."""
    missing = []
    for comp, need in gpu_stack_needs(cfg).items():
        if need != "required":
            continue
        if comp == "cuda":
            import torch

            ok = torch.cuda.is_available()
        else:
            ok = importlib.util.find_spec(comp) is not None
        if not ok:
            missing.append("CUDA" if comp == "cuda" else comp)
    return missing
