"""Phase 3 of ``sqlsociety train`` (:func:`grpo_phase`): the senior's decision points in the run's store
(``training.adapter.HierarchicalTraceAdapter.to_rl``) -> GRPO -> a LoRA adapter served for the senior's
alias. On the CPU TRL trains a LoRA (:class:`training.grpo.SeniorGRPOTrainer`; optionally warm-started on
repair pairs and trained on the prompts a prefilter keeps); on a GPU Agent Lightning's VERL trains all of
the senior's weights live (``grpo.backend``, :func:`training.grpo_verl.resolve_backend`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from society.config import SocietyConfig
from tools.files import atomic_write_text
from training.grpo import SeniorGRPOConfig
from training.profile import TrainConfigError
from training.role_aliases import SENIOR_ALIAS, role_kind
from training.run_plan import RunPlan
from training.run_questions import gather_tasks
from training.run_serving import export_gguf, serve_senior_adapter

__all__ = ["grpo_phase", "senior_stop"]


def senior_stop(society: SocietyConfig) -> list[str] | None:
    """The stop strings of the society's (first enabled) senior role, or None."""
    for r in society.roles:
        if role_kind(r.type) == "senior" and r.enabled:
            return list(r.sampling.stop) if r.sampling.stop else None
    return None


def grpo_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 3: the senior's decision points -> GRPO (TRL on the CPU, VERL on a GPU) -> LoRA served.

    With ``grpo.warm_start`` (TRL path) the senior is first fine-tuned on repair pairs
    (``HierarchicalTraceAdapter.select_repair``: each wrong query of the train rollouts with a
    rewrite that matches gold -- the senior's own, else a fresh draw, else a hinted draw with
    the hint removed; :func:`training.grpo.warm_start_senior`), the repair prompts join the
    GRPO prompts, the prefilter runs before and after the warm start (``prefilter_base.json``,
    ``prefilter.json``: how many prompts have a pass rate strictly between 0 and 1 under each),
    and GRPO trains the warm start's adapter further on the prompts kept after it."""
    from training.adapter import HierarchicalTraceAdapter
    from training.grpo import SeniorGRPOTrainer, warm_start_senior
    from training.grpo_verl import resolve_backend

    d = plan.run_dir.phase_dir(3)
    with plan.archive() as archive:
        rl = HierarchicalTraceAdapter().to_rl(archive, reward=plan.cfg.adapter.rl_reward)
    rl.prompts.to_json(str(d / "senior_prompts.jsonl"))
    with (d / "senior_triplets.jsonl").open("w") as f:
        for t in rl.triplets:
            f.write(json.dumps(t.model_dump(), default=str) + "\n")
    echo(f"phase 3 GRPO: {len(rl.prompts)} senior prompts, {len(rl.triplets)} triplets")
    warm_on = plan.cfg.grpo.warm_start is not None
    if len(rl.prompts) == 0 and not warm_on:
        raise TrainConfigError("phase 3: the store holds no senior LLM call; check that the society config has a "
                               "senior role and that phase 1 rollouts succeeded")
    backend = resolve_backend(plan.cfg.grpo.backend)
    if backend == "verl":  # pragma: no cover - needs a GPU, verl and vLLM
        return _verl_phase(plan, d, len(rl.prompts), echo)
    stop = plan.cfg.grpo.stop if "stop" in plan.cfg.grpo.model_fields_set else senior_stop(plan.society)
    cfg = plan.cfg.grpo.with_values(stop=stop, backend="trl", model=plan.cfg.base_model,
                                    output_dir=str(d / "adapter"))
    prompts, prefilter, warm, base_pf = rl.prompts, None, None, None
    if warm_on:
        base_pf, sel, prompts = _prefilter(plan, rl.prompts, cfg, repairs=True)
        sel.dataset.to_json(str(d / "repair_dataset.jsonl"))
        atomic_write_text(d / "repair_selection.json", json.dumps(sel.summary, indent=2) + "\n")
        c, k = sel.summary["cases"], sel.summary["kept"]
        echo(f"phase 3 warm start: {c['total']} wrong queries to repair ({c['senior']} the senior's inputs, "
                  f"{c['junior']} juniors' candidates); {k['total']} repaired ({k['own']} by the senior's own "
                  f"reply, {k['sampled']} by a fresh draw, {k['hinted']} by a hinted draw, hint removed), "
                  f"{sel.summary['unsolved']} not")
        warm = {"selection": sel.summary, "prompts": len(prompts)}
        if base_pf is not None:
            (d / "prefilter_base.json").write_text(json.dumps(base_pf.to_json(), indent=2))
            warm["prefilter_base"] = base_pf.to_json()
        if len(prompts) == 0:
            raise TrainConfigError("phase 3: no senior prompt and no wrong query to repair in the store; gather "
                                   "more rollouts")
        if len(sel.dataset) == 0:
            echo("phase 3 warm start: no repair pair, so GRPO starts from a fresh LoRA (raise "
                      "grpo.warm_start_samples or gather more rollouts)")
        else:
            ws = warm_start_senior(sel.dataset, cfg, d / "warm_start")
            warm.update({"adapter": str(ws.adapter_dir), "rows": ws.rows, "steps": ws.steps, "losses": ws.losses,
                         "seconds_per_step": ws.mean_step_seconds})
            echo(f"phase 3 warm start: SFT {ws.steps} steps on {ws.rows} repair pairs, loss "
                      f"{ws.losses[0][1]:.3f} -> {ws.losses[-1][1]:.3f}")
            cfg = cfg.with_values(init_adapter=str(ws.adapter_dir))
    if cfg.prefilter_samples:
        if warm is not None and not cfg.init_adapter:  # no warm start trained: the base senior's, measured above
            prefilter = base_pf
        else:
            prefilter = _prefilter(plan, prompts, cfg, adapter=cfg.init_adapter)[0]
        assert prefilter is not None
        (d / "prefilter.json").write_text(json.dumps(prefilter.to_json(), indent=2))
        who = "the warm-started senior" if cfg.init_adapter else "the base senior"
        echo(f"phase 3 prefilter: {prefilter.n_kept} of {prefilter.n_in} senior prompts have rewards that "
                  f"differ over {prefilter.k} samples of {who}, {prefilter.n_pass_band} a pass rate strictly "
                  f"between 0 and 1 ({prefilter.seconds:.0f} s)"
                  + ("; training on those" if prefilter.n_kept else
                     "; none does, so GRPO trains on every prompt (expect steps without advantage: gather "
                     "more rollouts or raise grpo.temperature)"))
        if warm is not None:
            warm["prefilter_warm"] = prefilter.to_json() if cfg.init_adapter else None
            before = (warm.get("prefilter_base") or {}).get("n_pass_band")
            echo(f"phase 3 warm start: prompts with a pass rate strictly between 0 and 1: {before} before, "
                      + (f"{prefilter.n_pass_band} after (of {prefilter.n_in})" if cfg.init_adapter else
                         f"no warm start trained (of {prefilter.n_in})"))
        if prefilter.n_kept:
            prompts = prefilter.dataset
    res = SeniorGRPOTrainer(cfg, prompts, reward_config=plan.cfg.reward).train()
    gguf = export_gguf(plan.cfg, Path(res.adapter_dir), Path(res.adapter_dir) / "adapter.gguf")
    echo(f"phase 3 GRPO: {res.steps} steps, mean reward per step {res.rewards}")
    return {"adapter": str(res.adapter_dir), "adapter_gguf": str(gguf) if gguf else None,
            "prompts": len(rl.prompts), "prefilter": prefilter.to_json() if prefilter else None,
            "steps": res.steps, "rewards": res.rewards, "warm_start": warm}


def _prefilter(plan: RunPlan, prompts: Any, cfg: SeniorGRPOConfig, *, adapter: str | Path | None = None,
               repairs: bool = False) -> tuple[Any, Any, Any]:
    """:func:`training.senior_reward.prefilter_prompts` with the senior as served now, sampled as GRPO samples
    (temperature, top_p, completion length, the senior's stop strings): the base model (phase 3
    has not trained it yet), or with ``adapter`` (a PEFT LoRA, e.g. the warm start's) on it.

    With ``repairs``, on the same server and first, the warm start's repair pairs are selected
    (``HierarchicalTraceAdapter.select_repair`` with ``k = warm_start_samples``) and their
    prompts added to ``prompts`` (those with the same messages are not added twice).

    Returns:
        ``(prefilter, repairs, prompts)``: the :class:`training.grpo.PrefilterResult` (None when
        ``prefilter_samples`` is 0), the ``RepairSelection`` (None without ``repairs``), and the
        prompts the prefilter ran on.
    """
    import datasets

    from training.adapter import HierarchicalTraceAdapter
    from training.senior_reward import SeniorReward, openai_sampler, prefilter_prompts

    society = plan.society
    senior = next(r for r in society.roles if role_kind(r.type) == "senior" and r.enabled)
    with ExitStack() as stack:
        if adapter is None:
            ep = plan.serve(stack, society)[senior.model]
        else:
            ep = serve_senior_adapter(stack, plan.cfg, plan.run_dir.root, adapter)
        sample = openai_sampler(ep, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_completion_length, stop=cfg.stop, seed=cfg.seed)
        sel = None
        if repairs:
            with plan.archive() as archive:
                sel = HierarchicalTraceAdapter().select_repair(archive, sample=sample, k=cfg.warm_start_samples,
                                                               stop=cfg.stop)
            seen = {json.dumps(p, sort_keys=True) for p in prompts["prompt"]}
            extra = [i for i, p in enumerate(sel.prompts["prompt"]) if json.dumps(p, sort_keys=True) not in seen]
            prompts = datasets.concatenate_datasets([prompts.cast(sel.prompts.features),
                                                     sel.prompts.select(extra)])
        pf = None
        if cfg.prefilter_samples and len(prompts):
            pf = prefilter_prompts(prompts, sample, SeniorReward(plan.cfg.reward, stop=cfg.stop),
                                   cfg.prefilter_samples)
        return pf, sel, prompts


def _verl_phase(plan: RunPlan, d: Path, n_prompts: int,  # pragma: no cover - GPU only
                echo: Callable[[str], None]) -> dict[str, Any]:
    """Phase 3 on a GPU: Agent Lightning's VERL trains all of the senior's weights live on the
    gather split's tasks (the whole society runs; ``agent_match`` keeps the senior's calls),
    validated on the dev subset; the newest step's Hugging Face weights
    (:func:`training.grpo_verl.verl_trained_model`) are then served for the senior's alias by their own
    vLLM server (:meth:`training.run_plan.RunPlan.serve`). UNVERIFIED: never run on a GPU (see the README)."""
    from training.agent import task_from_example
    from training.grpo_verl import train_senior_verl, verl_trained_model

    if plan.cfg.serving.engine != "vllm":
        raise TrainConfigError("phase 3 (VERL) trains all of the senior's weights (configs/verl_senior.yaml, "
                               "lora_rank: 0) and vLLM serves them after the phase: set serving.engine: vllm")

    train = [task_from_example(e) for e in (plan.gather or gather_tasks(plan.cfg))[0]]
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
    return {"adapter": None, "adapter_gguf": None, "model": str(model), "prompts": n_prompts, "backend": "verl"}
