"""Phase 3 of ``sqlsociety train`` on a GPU (:func:`verl_grpo_phase`, ``grpo.backend: verl``): Agent
Lightning's VERL trains all of the senior's weights live, and vLLM serves them after the phase. The
pipeline runs it for phase 3 when ``grpo.backend`` resolves to ``verl``
(:attr:`training.run_plan.RunPlan.grpo_backend`); TRL's phase 3 is :func:`training.phase_grpo.grpo_phase`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from training.phase_grpo import senior_decisions
from training.profile import TrainConfigError
from training.role_aliases import SENIOR_ALIAS
from training.run_plan import RunPlan

__all__ = ["verl_grpo_phase"]


def verl_grpo_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:  # pragma: no cover
    """Phase 3 on a GPU: Agent Lightning's VERL trains all of the senior's weights live on the gather
    split's tasks (:attr:`training.run_plan.RunPlan.gather`; the whole society runs; ``agent_match`` keeps
    the senior's calls), validated on the dev subset; the newest step's Hugging Face weights
    (:func:`training.grpo_verl.verl_trained_model`) are then served for the senior's alias by their own
    vLLM server (:meth:`training.run_plan.RunPlan.serve`). UNVERIFIED: never run on a GPU (see the README).

    Returns:
        ``done.json``'s fields: ``model`` (the trained senior's HF directory), ``prompts`` (the senior's
        decision points in the store), ``backend: verl``; ``adapter`` and ``adapter_gguf`` None.

    Raises:
        TrainConfigError: ``serving.engine`` is not ``vllm``, or VERL left no checkpoint.
    """
    from training.agent import task_from_example
    from training.grpo_verl import train_senior_verl, verl_trained_model

    d, rl = senior_decisions(plan, echo)
    if plan.cfg.serving.engine != "vllm":
        raise TrainConfigError("phase 3 (VERL) trains all of the senior's weights (configs/verl_senior.yaml, "
                               "lora_rank: 0) and vLLM serves them after the phase: set serving.engine: vllm")

    assert plan.gather is not None, "resolve_run draws the train tasks when phase 3 runs with VERL"
    train = [task_from_example(e) for e in plan.gather[0]]
    val = [task_from_example(e) for e in plan.dev]
    ckpt = d / "verl_checkpoints"
    society = plan.society
    with ExitStack() as stack:
        eps = {a: (e.base_url, e.model, e.api_key) for a, e in plan.serve(stack, society).items()
               if a != SENIOR_ALIAS}
        train_senior_verl(society, train, val,
                          plan.cfg.grpo.with_values(backend="verl", model=plan.cfg.base_model,
                                                    output_dir=str(d / "adapter")),
                          endpoints=eps, reward_config=plan.cfg.reward,
                          overrides={"trainer": {"default_local_dir": str(ckpt)}})
    try:
        model = verl_trained_model(ckpt)
    except FileNotFoundError as e:
        raise TrainConfigError(f"phase 3 (VERL): {e}") from e
    echo(f"phase 3 VERL: the trained senior {model}")
    return {"adapter": None, "adapter_gguf": None, "model": str(model), "prompts": len(rl.prompts), "backend": "verl"}
