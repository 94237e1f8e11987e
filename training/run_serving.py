"""The servers a training run's stage needs (``sqlsociety train``): the roles' base model served by
llama.cpp (one llama-server per embedded GGUF, the trained LoRA adapters exported to GGUF and
chosen per request by role alias) or by vLLM (``serving.engine: vllm``, PEFT adapters by name),
optionally all behind one Agent Lightning ``LLMProxy``; or a senior adapter served on its own for
the GRPO prefilter. Every server is entered on the caller's ``ExitStack`` and stops with it.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from society.llama_server import LlamaServer
from society.models import embedded_spec
from society.proxy import llm_proxy
from society.serving import serve_config
from society.vllm_serving import VLLMServer
from training.checkpoints import resolve_gguf
from training.export import ServedWeights, served_weights
from training.profile import TrainConfig
from training.reuse import file_sha256, sha256_json
from training.role_aliases import SENIOR_ALIAS

__all__ = ["export_gguf", "serve_roles", "served_identity"]


def serve_roles(stack: ExitStack, society: Any, cfg: TrainConfig, run_root: Path, trained: dict[str, Path],
                senior_model: str | None = None, *, senior_adapter: str | Path | None = None) -> dict[str, Any]:
    """Start the servers a stage needs and return alias -> ``Endpoint``.

    llama.cpp (``serving.engine``'s default): the society's servers, one llama-server per embedded
    model, with each trained LoRA adapter (``trained``: role alias -> PEFT adapter directory; the
    juniors' after phase 2, the senior's after phase 3) exported to GGUF on the llama-server of its
    role's model and chosen per request by the role's alias; an adapter whose ``base_model`` is not
    its role's model gets a llama-server of its own. ``serving.engine: vllm``: one vLLM server on the
    Hugging Face checkpoint of ``base_model`` serves every embedded alias whose model is
    ``base_model`` (every embedded alias when ``base_model`` is a Hugging Face directory) and the
    trained aliases, each adapter by its alias name; aliases of other embedded models stay on
    llama.cpp; VERL's trained senior (``senior_model``, full weights) gets a second vLLM server
    (``RUN_DIR/vllm-senior.log``; the first logs to ``RUN_DIR/vllm.log``). Not run on a GPU here
    (see the README). With ``llm_proxy`` every alias is then served through one Agent Lightning
    ``LLMProxy``.

    With ``senior_adapter`` (a PEFT LoRA directory, e.g. phase 3's warm start) only
    :data:`~training.role_aliases.SENIOR_ALIAS` is served: the base model with that adapter, alone
    (llama.cpp with 4 slots, as the prefilter samples 4 prompts at once), no proxy.

    Every file the servers load is resolved first, once (:func:`training.export.served_weights`).
    On llama.cpp each endpoint carries the content identity of its weights (:func:`served_identity`),
    so an evaluation's response cache can tell them apart; vLLM's endpoints carry none (not cached).
    """
    engine = cfg.serving.engine
    embedded = society.embedded_aliases()
    if senior_adapter is not None:
        adapters = {SENIOR_ALIAS: Path(senior_adapter)}
        role_models = {SENIOR_ALIAS: str(cfg.base_model)}
    else:
        adapters = {a: p for a, p in trained.items() if a in embedded}
        role_models = {a: embedded_spec(embedded[a]).alias for a in adapters}
    weights = served_weights(engine, cfg.base_model, adapters, role_models)
    s = cfg.serving
    vllm_kw = {"gpu_memory_utilization": s.gpu_memory_utilization, "max_model_len": s.max_model_len,
               "dtype": s.dtype, "tensor_parallel_size": s.tensor_parallel_size, "extra_args": s.extra_args,
               "startup_timeout_s": s.startup_timeout_s,
               "command_prefix": os.environ.get("SQLSOCIETY_VLLM_COMMAND", "").split() or None}
    eps: dict[str, Any] = {}
    if senior_adapter is not None:
        if engine == "vllm":  # pragma: no cover - GPU only, not run here
            srv = stack.enter_context(VLLMServer(
                weights.base, log_path=run_root / "vllm.log", served_model_name="base", adapters=weights.loras,
                max_lora_rank=s.max_lora_rank, max_loras=s.max_loras, **vllm_kw))
        else:
            srv = stack.enter_context(LlamaServer(weights.base, model_alias=f"{SENIOR_ALIAS}-base",
                                                  loras=weights.loras, parallel=4))
        return {SENIOR_ALIAS: srv.endpoint(SENIOR_ALIAS)}
    if engine == "vllm":  # on a GPU; tested here with a stand-in server (tests/test_vllm_serving.py)
        # a Hugging Face directory as base_model stands in for every embedded alias (their names say what
        # runs on the CPU); VERL's phase 3 leaves the senior as a full model, served on its own
        hf_base = (Path(cfg.base_model).expanduser() / "config.json").is_file()
        senior_model = senior_model if SENIOR_ALIAS in embedded else None
        alone = {SENIOR_ALIAS} if senior_model else set()
        on_vllm = ({a for a, m in embedded.items() if m == cfg.base_model or hf_base} | set(weights.loras)) - alone
        rest = society.model_copy(update={"models": {a: m for a, m in society.models.items()
                                                     if a not in on_vllm | alone}})
        if rest.embedded_aliases():
            eps.update(stack.enter_context(serve_config(rest)))
        if on_vllm:
            srv = stack.enter_context(VLLMServer(
                weights.base, log_path=run_root / "vllm.log", served_model_name="base", adapters=weights.loras,
                max_lora_rank=s.max_lora_rank, max_loras=s.max_loras, **vllm_kw))
            for alias in sorted(on_vllm):
                eps[alias] = srv.endpoint(alias if alias in weights.loras else None)
        if senior_model:
            srv = stack.enter_context(VLLMServer(senior_model, log_path=run_root / "vllm-senior.log",
                                                 served_model_name=SENIOR_ALIAS, **vllm_kw))
            eps[SENIOR_ALIAS] = srv.endpoint(None)
    else:
        eps.update(stack.enter_context(serve_config(society, adapters=weights.loras)))
        for alias, gguf in weights.own.items():  # base_model differs from the role's embedded model
            srv = stack.enter_context(LlamaServer(weights.base, model_alias=f"{alias}-base", loras={alias: gguf}))
            eps[alias] = srv.endpoint(alias)
        eps = {a: replace(e, weights=served_identity(a, embedded, weights)) for a, e in eps.items()}
    if cfg.llm_proxy:
        eps = stack.enter_context(llm_proxy(eps))
    return eps


def served_identity(alias: str, embedded: dict[str, Any], weights: ServedWeights) -> str | None:
    """The content identity of what llama.cpp answers ``alias`` with: sha256 of
    ``{"gguf": sha256 of the model file, "lora": sha256 of the alias's GGUF LoRA or None}`` (file hashes
    by :func:`training.reuse.file_sha256`, remembered per path, size and mtime); None for an alias that
    is not an embedded model here. The response cache keys replies by it
    (:attr:`society.llm.Endpoint.weights`), so a new adapter file is never answered from an old one's
    replies.

    Args:
        alias: a role alias.
        embedded: the society's embedded aliases (alias -> model name).
        weights: the stage's :class:`training.export.ServedWeights`.

    Raises:
        FileNotFoundError: a served file is gone (:func:`training.reuse.file_sha256`).
        society.models.UnknownModelError, ModelNotInstalledError, ModelIntegrityError: an embedded model
            cannot be resolved (:func:`training.checkpoints.resolve_gguf`).
    """
    if alias in weights.own:
        model, lora = weights.base, weights.own[alias]
    elif alias in embedded:
        model = resolve_gguf(embedded_spec(embedded[alias]).alias)
        lora = weights.loras.get(alias) if model == weights.base else None
    else:
        return None
    return sha256_json({"gguf": file_sha256(model), "lora": None if lora is None else file_sha256(lora)})


def export_gguf(cfg: TrainConfig, adapter_dir: Path, out: Path) -> Path | None:
    """The adapter as a GGUF LoRA for llama.cpp; None with ``serving.engine: vllm`` (vLLM serves
    the PEFT directory itself)."""
    if cfg.serving.engine == "vllm":
        return None
    from training.export import export_lora_gguf

    return export_lora_gguf(adapter_dir, cfg.base_model, out)
