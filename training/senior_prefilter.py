"""Phase 3's prefilter on the senior as served now (:func:`prefilter_senior`): the GRPO prompts sampled
by the base senior or by a LoRA on it (the warm start's), and the warm start's repair pairs selected on
the same server; what :func:`training.phase_grpo.grpo_phase` trains on is decided from it.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from training.grpo import SeniorGRPOConfig
from training.role_aliases import SENIOR_ALIAS
from training.run_plan import RunPlan

__all__ = ["prefilter_senior"]


def prefilter_senior(plan: RunPlan, prompts: Any, cfg: SeniorGRPOConfig, *, adapter: str | Path | None = None,
                     repairs: bool = False, need: int | None = None) -> tuple[Any, Any, Any]:
    """:func:`training.senior_reward.prefilter_prompts` with the senior as served now, sampled as GRPO samples
    (temperature, top_p, completion length, the senior's stop strings): the base model (phase 3
    has not trained it yet), or with ``adapter`` (a PEFT LoRA, e.g. the warm start's) on it.

    With ``repairs``, on the same server and first, the warm start's repair pairs are selected
    (``HierarchicalTraceAdapter.select_repair`` with ``k = warm_start_samples`` on at most
    ``warm_start_cases`` wrong queries) and their
    prompts added to ``prompts`` (those with the same messages are not added twice).

    ``need``: the prefilter stops once it has kept this many prompts, tried in a random order
    (``cfg.seed``); None tries them all (:func:`training.senior_reward.prefilter_prompts`).

    Returns:
        ``(prefilter, repairs, prompts)``: the :class:`training.senior_reward.PrefilterResult` (None when
        ``prefilter_samples`` is 0), the ``RepairSelection`` (None without ``repairs``), and the
        prompts the prefilter ran on.
    """
    import datasets

    from training.adapter import HierarchicalTraceAdapter
    from training.senior_reward import SeniorReward, openai_sampler, prefilter_prompts

    with ExitStack() as stack:
        eps = plan.serve(stack, plan.society, senior_adapter=adapter)
        ep = eps[plan.senior_alias if adapter is None else SENIOR_ALIAS]
        sample = openai_sampler(ep, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_completion_length, stop=cfg.stop, seed=cfg.seed)
        sel = None
        if repairs:
            with plan.run_dir.archive() as archive:
                sel = HierarchicalTraceAdapter().select_repair(archive, sample=sample, k=cfg.warm_start_samples,
                                                               stop=cfg.stop, max_cases=cfg.warm_start_cases,
                                                               seed=cfg.seed)
            seen = {json.dumps(p, sort_keys=True) for p in prompts["prompt"]}
            extra = [i for i, p in enumerate(sel.prompts["prompt"]) if json.dumps(p, sort_keys=True) not in seen]
            prompts = datasets.concatenate_datasets([prompts.cast(sel.prompts.features),
                                                     sel.prompts.select(extra)])
        pf = None
        if cfg.prefilter_samples and len(prompts):
            pf = prefilter_prompts(prompts, sample, SeniorReward(plan.cfg.reward, stop=cfg.stop),
                                   cfg.prefilter_samples, need=need, seed=cfg.seed)
        return pf, sel, prompts
