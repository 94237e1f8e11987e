"""Phase 3 of ``sqlsociety train`` (:func:`grpo_phase`): the senior's decision points in the run's store
(``training.adapter.HierarchicalTraceAdapter.to_rl``) -> GRPO -> a LoRA adapter served for the senior's
alias. TRL trains a LoRA (:class:`training.grpo.SeniorGRPOTrainer`; optionally warm-started on repair
pairs and trained on the prompts a prefilter keeps, :mod:`training.senior_prefilter`); on a GPU Agent
Lightning's VERL trains all of the senior's weights live instead (``grpo.backend``,
:mod:`training.phase_grpo_verl`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.files import atomic_write_text
from training.profile import TrainConfigError
from training.run_plan import RunPlan
from training.run_serving import export_gguf
from training.senior_prefilter import prefilter_senior

__all__ = ["grpo_phase", "senior_decisions"]


def senior_decisions(plan: RunPlan, echo: Callable[[str], None] = print) -> tuple[Path, Any]:
    """The senior's decision points in the run's store (``HierarchicalTraceAdapter.to_rl``), written to
    ``phases/3-grpo/senior_prompts.jsonl`` and ``senior_triplets.jsonl``: what either backend of
    phase 3 starts from.

    Returns:
        ``(phase directory, the adapter's RL data: prompts dataset, triplets)``.

    Raises:
        TrainConfigError: the store holds no senior call and ``grpo.warm_start`` is off, or the run has
            no store (:meth:`training.run_dir.RunDir.archive`).
    """
    from training.adapter import HierarchicalTraceAdapter

    d = plan.run_dir.phase_dir(3)
    with plan.run_dir.archive() as archive:
        rl = HierarchicalTraceAdapter().to_rl(archive, reward=plan.cfg.adapter.rl_reward)
    rl.prompts.to_json(str(d / "senior_prompts.jsonl"))
    with (d / "senior_triplets.jsonl").open("w") as f:
        for t in rl.triplets:
            f.write(json.dumps(t.model_dump(), default=str) + "\n")
    echo(f"phase 3 GRPO: {len(rl.prompts)} senior prompts, {len(rl.triplets)} triplets")
    if len(rl.prompts) == 0 and plan.cfg.grpo.warm_start is None:
        raise TrainConfigError("phase 3: the store holds no senior LLM call; check that the society config has a "
                               "senior role and that phase 1 rollouts succeeded")
    return d, rl


def grpo_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 3 with TRL (``grpo.backend`` resolved to ``trl``, :attr:`training.run_plan.RunPlan.grpo_backend`;
    the pipeline runs :func:`training.phase_grpo_verl.verl_grpo_phase` for ``verl``): the senior's
    decision points (:func:`senior_decisions`) -> GRPO on a LoRA -> exported to GGUF.

    With ``grpo.warm_start`` the senior is first fine-tuned on repair pairs
    (``HierarchicalTraceAdapter.select_repair``: each wrong query of the train rollouts with a
    rewrite that matches gold -- the senior's own, else a fresh draw, else a hinted draw with
    the hint removed; :func:`training.grpo.warm_start_senior`), the repair prompts join the
    GRPO prompts, the prefilter runs before and after the warm start (``prefilter_base.json``,
    ``prefilter.json``: how many prompts have a pass rate strictly between 0 and 1 under each),
    and GRPO trains the warm start's adapter further on the prompts kept after it."""
    from training.grpo import SeniorGRPOTrainer, warm_start_senior

    d, rl = senior_decisions(plan, echo)
    warm_on = plan.cfg.grpo.warm_start is not None
    stop = plan.cfg.grpo.stop if "stop" in plan.cfg.grpo.model_fields_set else plan.senior_stop
    cfg = plan.cfg.grpo.with_values(stop=stop, backend="trl", model=plan.cfg.base_model,
                                    output_dir=str(d / "adapter"))
    prompts, prefilter, warm, base_pf = rl.prompts, None, None, None
    if warm_on:
        base_pf, sel, prompts = prefilter_senior(plan, rl.prompts, cfg, repairs=True)
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
            prefilter = prefilter_senior(plan, prompts, cfg, adapter=cfg.init_adapter)[0]
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
