"""Phase 1 of ``sqlsociety train`` (:func:`gather_phase`): the untrained society's rollouts on the
gather split's train tasks into the run's persistent store (``RUN_DIR/store.sqlite``), through
:func:`training.gather.gather` -- the society on ``gather.limit`` tasks, the juniors alone on
``gather.junior_limit`` more (on each task, the juniors that got it wrong drawn again
``gather.junior_resamples`` times), and with ``gather.rationalize`` the questions no junior solved
asked again with the gold SQL as a hint. With ``reuse_from`` a matching run's store is copied first
(:attr:`training.run_plan.RunPlan.gather_reuse`) and every task it holds is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from tools.files import atomic_write_text
from training.gather_config import JUNIORS_SUFFIX, question_of
from training.reuse import copy_store, gather_files
from training.run_plan import RunPlan

__all__ = ["gather_phase"]


def gather_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 1: the society over the plan's train tasks (:attr:`training.run_plan.RunPlan.gather`) into
    the store; writes ``phases/1-gather/fingerprint.json`` when the rollouts were gathered here from
    the untrained model.

    Returns:
        ``done.json``'s fields: ``store``, the society run's summary (``training.gather``), ``stored_succeeded``,
        the juniors-only runs' summaries, ``reused_from`` when a store was copied.
    """
    from training.gather import GatherRun, gather
    from training.hooks import MetricsHook

    cfg, d = plan.cfg, plan.run_dir
    g = cfg.gather
    assert plan.gather is not None, "resolve_run draws phase 1's train tasks whenever phase 1 runs"
    tasks, jtasks = plan.gather
    society = plan.society
    juniors: dict[str, Any] = {}
    fp, reused = plan.gather_fp, None
    if fp is not None and cfg.reuse_from and not d.store.exists():
        if plan.gather_reuse is not None:
            reused = copy_store(plan.gather_reuse, d.root)
            echo(f"phase 1: the store of {plan.gather_reuse.run_dir} reused (model, config, prompts, sampling and "
                 "train questions hashes all match); its tasks are skipped below")
        else:
            echo("phase 1: no run in reuse_from has a finished phase 1; gathering here")
    with ExitStack() as stack:
        eps = plan.serve(stack, society)
        hook = stack.enter_context(MetricsHook(d.metrics, phase="1-gather", run_id=d.root.name))

        def run(task_ids: list[str], **kw: Any) -> Any:
            return gather(g, GatherRun(run_dir=d.root, task_ids=task_ids, society_config=society,
                                       data_dir=cfg.data_dir, reward=cfg.reward, endpoints=eps, hooks=[hook], **kw))

        summary = run([t.id for t in tasks])
        if g.junior_limit:
            js = run([t.id for t in jtasks], agent="juniors", task_suffix=JUNIORS_SUFFIX)
            juniors["juniors_only"] = js.to_json()
            wrong = _tasks_with_a_wrong_junior(plan, JUNIORS_SUFFIX) if g.junior_resamples else {}
            juniors["resampled_tasks"] = len(wrong)
            juniors["resampled_juniors"] = sum(len(v) for v in wrong.values())
            for j in range(1, g.junior_resamples + 1):
                rs = run(list(wrong), agent="juniors", task_suffix=f"{JUNIORS_SUFFIX}#{j}", task_juniors=wrong,
                         junior_sampling={"temperature": g.junior_temperature, "seed": 1000 * j})
                juniors[f"resample_{j}"] = rs.to_json()
        if g.rationalize:
            unsolved = _unsolved_tasks(plan)
            juniors["rationalized_tasks"] = len(unsolved)
            hook.set_phase("1-gather-rationalized")  # hinted rollouts: their rewards are not the policy's
            rz = run(unsolved, agent="juniors", task_suffix="/rationalized", gold_hint=True)
            juniors["rationalize"] = rz.to_json()
    with plan.run_dir.archive() as archive:
        stored = len(archive.rollouts(status="succeeded"))
    extra = []
    if g.junior_limit:
        extra.append(f"juniors only on {g.junior_limit} more tasks, {juniors['resampled_tasks']} of them "
                     f"resampled {g.junior_resamples}x at temperature {g.junior_temperature} (the "
                     f"{juniors['resampled_juniors']} wrong juniors only)")
    if g.rationalize:
        extra.append(f"{juniors['rationalized_tasks']} questions no junior solved asked again with the gold SQL "
                     "as a hint (rationalization)")
    echo(f"phase 1 gather: {stored} rollouts in the store ({summary.skipped} society rollouts resumed, "
         f"{summary.run} run now, mean reward {summary.mean_reward})" + "".join(f"; {x}" for x in extra))
    if fp is not None and reused is None:
        d.phase_dir(1)
        atomic_write_text(gather_files(d.root)[2], json.dumps(fp.to_json(), indent=2) + "\n")
    return {"store": str(d.store), **summary.to_json(), "stored_succeeded": stored, **juniors,
            **({"reused_from": reused["source_run"]} if reused else {})}


def _unsolved_tasks(plan: RunPlan) -> list[str]:
    """Spider ids of the train questions phase 1 drew (society rollouts, juniors-only first draws,
    rejection-sampling draws; succeeded rollouts only) on which no junior's own SQL matched gold
    in any draw: the questions STaR rationalization asks again with the gold SQL as a hint.
    Rationalization rollouts themselves are not counted, so a resumed phase 1 asks the same ones."""
    from training.adapter import HierarchicalTraceAdapter, trace_source

    seen: set[str] = set()
    solved: set[str] = set()
    with plan.run_dir.archive() as archive:
        for t in HierarchicalTraceAdapter().traces(archive):
            if t.task_id is None or trace_source(t) == "rationalized":
                continue
            base = question_of(t.task_id)
            seen.add(base)
            if any(t.outcomes.get(f"junior.{j}.ex") == 1 for j in t.outcomes.get("juniors") or []):
                solved.add(base)
    return sorted(seen - solved, key=lambda x: (len(x), x))


def _tasks_with_a_wrong_junior(plan: RunPlan, suffix: str) -> dict[str, list[str]]:
    """Spider id -> the junior roles (config names) whose own candidate did not match gold in the
    ``suffix`` rollout (e.g. the juniors-only one) of that task: what rejection sampling draws again,
    only where some junior was wrong."""
    from training.adapter import HierarchicalTraceAdapter

    role_of = {i.name: i.config.name for i in plan.society.instances("junior")}
    out: dict[str, set[str]] = {}
    with plan.run_dir.archive() as archive:
        for t in HierarchicalTraceAdapter().traces(archive):
            tid = str(t.task_id or "")
            wrong = [j for j in t.outcomes.get("juniors") or [] if t.outcomes.get(f"junior.{j}.ex") != 1]
            if tid.endswith(suffix) and wrong:
                out.setdefault(tid[: -len(suffix)], set()).update(role_of.get(j, j) for j in wrong)
    return {k: sorted(out[k]) for k in sorted(out)}
