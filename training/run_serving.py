"""The servers a training run's stage needs (``sqlsociety train``): the roles' base model served by
llama.cpp (one llama-server per embedded GGUF, the trained LoRA adapters exported to GGUF and
chosen per request by role alias) or by vLLM (``serving.engine: vllm``, PEFT adapters by name),
optionally all behind one Agent Lightning ``LLMProxy``; and a senior adapter served on its own for
the GRPO prefilter. Every server is entered on the caller's ``ExitStack`` and stops with it.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from society.models import embedded_spec
from society.proxy import llm_proxy
from society.serving import serve_config
from society.vllm_serving import VLLMServer
from training.profile import TrainConfig
from training.role_aliases import SENIOR_ALIAS

__all__ = ["export_gguf", "llama_endpoints", "serve_roles", "serve_senior_adapter", "vllm_endpoints"]


def serve_roles(stack: ExitStack, society: Any, cfg: TrainConfig, run_root: Path, trained: dict[str, Path],
                senior_model: str | None = None) -> dict[str, Any]:
    """Start the servers a stage needs and return alias -> ``Endpoint``: one llama-server per embedded
    base model, serving the trained LoRA adapters too (``trained``: role alias -> PEFT adapter
    directory; the juniors' after phase 2, the senior's after phase 3), each chosen per request by
    its role alias -- or, with ``serving.engine: vllm``, one vLLM server (:func:`vllm_endpoints`;
    ``senior_model``: VERL's trained senior, served on its own); with ``llm_proxy`` every alias is
    then served through one Agent Lightning ``LLMProxy``."""
    if cfg.serving.engine == "vllm":
        eps = vllm_endpoints(stack, society, cfg, run_root, trained, senior_model)
    else:
        eps = llama_endpoints(stack, society, cfg, trained)
    if cfg.llm_proxy:
        eps = stack.enter_context(llm_proxy(eps))
    return eps


def _vllm_server(cfg: TrainConfig, model: Any, log_path: Path, **kw: Any) -> VLLMServer:
    s = cfg.serving
    return VLLMServer(model, gpu_memory_utilization=s.gpu_memory_utilization, max_model_len=s.max_model_len,
                      dtype=s.dtype, tensor_parallel_size=s.tensor_parallel_size, extra_args=s.extra_args,
                      log_path=log_path, startup_timeout_s=s.startup_timeout_s, **kw)


def vllm_endpoints(stack: ExitStack, society: Any, cfg: TrainConfig, run_root: Path, trained: dict[str, Path],
                   senior_model: str | None = None) -> dict[str, Any]:
    """``serving.engine: vllm``: one :class:`society.vllm_serving.VLLMServer` on the HF checkpoint
    of ``base_model`` serves every embedded alias whose model is ``base_model`` (every embedded
    alias when ``base_model`` is a Hugging Face directory) and the juniors' / senior's aliases once
    their adapter is trained, each adapter by its alias name (``junior_policy``,
    ``senior_policy``); aliases of other embedded models stay on llama.cpp. After VERL's phase 3
    (``senior_model``) the senior's full weights get a second server (``RUN_DIR/vllm-senior.log``,
    same memory share). The server's log is ``RUN_DIR/vllm.log``. Not run on a GPU here (see the README)."""
    from training.checkpoints import hf_checkpoint

    embedded = society.embedded_aliases()
    trained = {a: p for a, p in trained.items() if a in embedded}
    # a Hugging Face directory as base_model stands in for every embedded alias (their names say what
    # runs on the CPU); VERL's phase 3 leaves the senior as a full model, served on its own
    hf_base = (Path(cfg.base_model).expanduser() / "config.json").is_file()
    senior_model = senior_model if SENIOR_ALIAS in embedded else None
    own = {SENIOR_ALIAS} if senior_model else set()
    on_vllm = ({a for a, m in embedded.items() if m == cfg.base_model or hf_base} | set(trained)) - own
    rest = society.model_copy(update={"models": {a: m for a, m in society.models.items()
                                                 if a not in on_vllm | own}})
    eps: dict[str, Any] = {}
    prefix = os.environ.get("SQLSOCIETY_VLLM_COMMAND", "").split() or None
    if rest.embedded_aliases():
        eps.update(stack.enter_context(serve_config(rest)))
    if on_vllm:
        s = cfg.serving
        srv = stack.enter_context(_vllm_server(
            cfg, hf_checkpoint(cfg.base_model), run_root / "vllm.log", served_model_name="base", adapters=trained,
            max_lora_rank=s.max_lora_rank, max_loras=s.max_loras, command_prefix=prefix))
        for alias in sorted(on_vllm):
            eps[alias] = srv.endpoint(alias if alias in trained else None)
    if senior_model:
        srv = stack.enter_context(_vllm_server(cfg, senior_model, run_root / "vllm-senior.log",
                                               served_model_name=SENIOR_ALIAS, command_prefix=prefix))
        eps[SENIOR_ALIAS] = srv.endpoint(None)
    return eps


def llama_endpoints(stack: ExitStack, society: Any, cfg: TrainConfig, trained: dict[str, Path]) -> dict[str, Any]:
    """llama.cpp serving (see :func:`serve_roles`): the society's servers with each trained adapter
    (exported to GGUF) on the llama-server of its role's model; an adapter whose ``base_model`` is
    not that model gets a llama-server of its own."""
    from training.adapter_serving import serve_adapter
    from training.checkpoints import resolve_gguf
    from training.export import adapter_gguf

    adapters: dict[str, Path] = {}
    separate: dict[str, Path] = {}
    embedded = society.embedded_aliases()
    for alias, adapter in trained.items():
        if alias in embedded:
            gguf = adapter_gguf(adapter, cfg.base_model)
            same_base = resolve_gguf(cfg.base_model) == resolve_gguf(embedded_spec(embedded[alias]).alias)
            (adapters if same_base else separate)[alias] = gguf
    eps = dict(stack.enter_context(serve_config(society, adapters=adapters)))
    for alias, gguf in separate.items():  # base_model differs from the role's embedded model
        srv = stack.enter_context(serve_adapter(gguf, cfg.base_model, model_alias=alias))
        eps[alias] = srv.endpoint(alias)
    return eps


def serve_senior_adapter(stack: ExitStack, cfg: TrainConfig, run_root: Path, adapter: str | Path) -> Any:
    """The base model with one senior LoRA (e.g. the warm start's) on it, served alone as
    :data:`~training.role_aliases.SENIOR_ALIAS`: by vLLM (PEFT directory) or by a llama-server with
    4 slots (the prefilter samples 4 prompts at once, as on the society's servers). Returns its
    ``Endpoint``."""
    if cfg.serving.engine == "vllm":  # pragma: no cover - GPU only, not run here
        from training.checkpoints import hf_checkpoint

        s = cfg.serving
        srv = stack.enter_context(_vllm_server(
            cfg, hf_checkpoint(cfg.base_model), run_root / "vllm.log", served_model_name="base",
            adapters={SENIOR_ALIAS: Path(adapter)}, max_lora_rank=s.max_lora_rank, max_loras=s.max_loras))
        return srv.endpoint(SENIOR_ALIAS)
    from training.adapter_serving import serve_adapter

    srv = stack.enter_context(serve_adapter(adapter, cfg.base_model, model_alias=SENIOR_ALIAS, parallel=4))
    return srv.endpoint(SENIOR_ALIAS)


def export_gguf(cfg: TrainConfig, adapter_dir: Path, out: Path) -> Path | None:
    """The adapter as a GGUF LoRA for llama.cpp; None with ``serving.engine: vllm`` (vLLM serves
    the PEFT directory itself)."""
    if cfg.serving.engine == "vllm":
        return None
    from training.export import export_lora_gguf

    return export_lora_gguf(adapter_dir, cfg.base_model, out)
