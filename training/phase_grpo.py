"""Phase 3 of ``sqlsociety train`` (:func:`grpo_phase`): the senior's decision points in the run's store
(``training.adapter.HierarchicalTraceAdapter.to_rl``) -> GRPO -> a LoRA adapter served for the senior's
alias. TRL trains a LoRA (:class:`training.grpo.SeniorGRPOTrainer`; optionally warm-started on repair
pairs and trained on the prompts a prefilter keeps, :mod:`training.senior_prefilter`); on a GPU Agent
Lightning's VERL trains all of the senior's weights live instead (``grpo.backend``,
:mod:`training.phase_grpo_verl`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.files import atomic_write_text, read_jsonl
from tools.spider import recorded_database
from training.profile import TrainConfigError
from training.reuse import sha256_json
from training.run_dir import kept_step, mark_step
from training.run_plan import RunPlan
from training.run_serving import export_gguf
from training.senior_prefilter import prefilter_senior

__all__ = ["KEY_IGNORED", "SELECT_FILES", "STEP_FILES", "databases_here", "grpo_phase", "grpo_prompts_needed",
           "phase3_key", "reused_select", "senior_decisions"]

#: The record each step of phase 3 before GRPO leaves when it finishes (under the phase directory;
#: the warm start's in its adapter's directory): the repair selection with the base senior's
#: prefilter (its datasets in ``repair_dataset.jsonl`` and ``warm_prompts.jsonl``), the warm start, the
#: prefilter of the senior GRPO starts from.
STEP_FILES = {"select": "warm_select_done.json", "warm_start": "sft_done.json", "prefilter": "prefilter_done.json"}


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


def grpo_prompts_needed(cfg: Any) -> int:
    """How many distinct prompts TRL's GRPO draws in ``max_steps`` optimizer steps: each step takes
    ``prompts_per_step x gradient_accumulation_steps`` prompts' groups, and with ``num_iterations``
    = mu each generated batch serves mu steps, so ceil(max_steps x prompts_per_step x GA / mu)
    (at least 1). The prefilter stops once it has kept this many (:func:`grpo_phase`). Prompts that
    GRPO drops as longer than ``max_prompt_length`` are not allowed for (none in the 2026-12-06 run).

    >>> from training.grpo import SeniorGRPOConfig
    >>> grpo_prompts_needed(SeniorGRPOConfig(max_steps=12))
    12
    >>> grpo_prompts_needed(SeniorGRPOConfig(max_steps=12, prompts_per_step=2, gradient_accumulation_steps=3,
    ...                                      num_iterations=4))
    18
    """
    ga = cfg.set_value("gradient_accumulation_steps") or 1
    mu = cfg.set_value("num_iterations") or 1
    return max(1, math.ceil(cfg.max_steps * cfg.prompts_per_step * ga / mu))


#: ``grpo`` settings left out of :func:`phase3_key`: where the steps write (``output_dir``,
#: ``init_adapter``) and the VERL path's own settings, which the CPU steps never read -- among them
#: ``verl_config``, an absolute path into the checkout, so that before 2026-12-07 no other checkout's
#: run could reuse a repair selection (the key differed by the path alone).
KEY_IGNORED = ("output_dir", "init_adapter", "verl_config", "agent_match", "senior_alias", "n_runners")


def phase3_key(plan: RunPlan, cfg: Any, rl: Any) -> str:
    """What phase 3's steps before GRPO start from, as a sha256 (hex): the ``grpo`` settings but
    :data:`KEY_IGNORED`, the reward, and the senior's decision points. Equal keys redo the same
    steps, so a resumed phase 3 keeps those that finished (:func:`training.run_dir.kept_step`) and
    a run reusing another's store takes its selection (:func:`reused_select`)."""
    settings = {k: v for k, v in cfg.settings().items() if k not in KEY_IGNORED}
    return sha256_json({"grpo": settings, "reward": plan.cfg.reward.model_dump(mode="json"),
                        "prompts": list(rl.prompts["prompt"])})


#: What the repair selection step leaves in the phase directory besides its record: the repair pairs
#: and the GRPO prompts, each with its features file (:func:`_save_dataset`).
SELECT_FILES = ("repair_dataset.jsonl", "warm_prompts.jsonl")


def reused_select(run_root: Path, phase_dir: Path, key: str) -> dict[str, Any] | None:
    """Take the repair selection and the base senior's prefilter from the run this run's phase-1
    store was copied from (``phases/1-gather/reused.json``, :func:`training.reuse.copy_store`), when
    that run finished the step with the same :func:`phase3_key`.

    The step runs only the untrained senior (fresh and hinted draws on the store's wrong queries, the
    prefilter's draws): with the same store (its fingerprint matched: model file, society config,
    prompts, sampling, questions) and the same key (``grpo`` settings, reward, senior prompts) it
    would make the same records, so they are copied rather than drawn again (about 36 min of the
    2026-12-06 run). Copies the step's record (with ``reused_from`` added) and :data:`SELECT_FILES`
    into ``phase_dir`` and writes ``reused.json`` beside them (``stage``, ``source_run``,
    ``source_file``, ``n`` wrong queries, ``unit``, ``source_seconds``: the step's time there when
    recorded), which the report lists with the other reused work.

    Args:
        run_root: this run's directory.
        phase_dir: this run's ``phases/3-grpo``.
        key: this run's :func:`phase3_key`.

    Returns:
        The copied record (``key``, ``selection``, ``prefilter_base``, ``reused_from``), or None when
        the store was not reused, this run's phase 1 stored more rollouts than it copied, the source
        has no finished selection, or its key differs (the step then runs here).
    """
    import shutil

    info, done = (run_root / "phases" / "1-gather" / n for n in ("reused.json", "done.json"))
    if not info.is_file():
        return None
    copied = json.loads(info.read_text())
    if done.is_file() and json.loads(done.read_text()).get("stored_succeeded") != copied.get("n", -1):
        return None  # this run's phase 1 added rollouts to the copied store: other wrong queries to draw from
    src = Path(copied["source_run"]) / "phases" / "3-grpo"
    step = src / STEP_FILES["select"]
    files = [src / n for f in SELECT_FILES for n in (f, f + ".features.json")]
    if not step.is_file() or not all(f.is_file() for f in files):
        return None
    rec = json.loads(step.read_text())
    if rec.get("key") != key:
        return None
    for f in files:
        shutil.copyfile(f, phase_dir / f.name)
    rec["reused_from"] = str(src.parent.parent)
    mark_step(phase_dir / STEP_FILES["select"], key, **{k: v for k, v in rec.items() if k != "key"})
    info = {"stage": "phase 3 repair selection and base prefilter", "source_run": rec["reused_from"],
            "source_file": str(step), "n": (rec.get("selection") or {}).get("cases", {}).get("total"),
            "unit": "wrong queries", "source_seconds": rec.get("seconds")}
    atomic_write_text(phase_dir / "reused.json", json.dumps(info, indent=2) + "\n")
    return rec


def _save_dataset(ds: Any, path: Path) -> None:
    """``ds`` as JSON lines in ``path`` and its features beside (``<path>.features.json``), so
    :func:`_load_dataset` gives it back with the same columns and types, also when empty."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in ds))
    atomic_write_text(path.with_name(path.name + ".features.json"), json.dumps(ds.features.to_dict()) + "\n")


def databases_here(ds: Any) -> Any:
    """``ds`` with each ``db_path`` pointing at a file on this machine: the recorded path when it
    exists here, else the database of the same name under the data directory
    (:func:`tools.spider.recorded_database`, the file's stem as ``db_id``). A repair selection taken
    from another run (:func:`reused_select`) or resumed on another machine holds that machine's
    absolute paths. Datasets without a ``db_path`` column are returned as they are."""
    if "db_path" not in ds.column_names:
        return ds
    return ds.map(lambda r: {"db_path": recorded_database(r["db_path"], Path(r["db_path"]).stem or None)})


def _load_dataset(path: Path) -> Any:
    import datasets

    features = datasets.Features.from_dict(json.loads(path.with_name(path.name + ".features.json").read_text()))
    rows = read_jsonl(path, drop_truncated_tail=False)
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)


def grpo_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 3 with TRL (``grpo.backend`` resolved to ``trl``, :attr:`training.run_plan.RunPlan.grpo_backend`;
    the pipeline runs :func:`training.phase_grpo_verl.verl_grpo_phase` for ``verl``): the senior's
    decision points (:func:`senior_decisions`) -> GRPO on a LoRA -> exported to GGUF.

    With ``grpo.warm_start`` the senior is first fine-tuned on repair pairs
    (``HierarchicalTraceAdapter.select_repair``: each wrong query of the train rollouts with a
    rewrite that matches gold -- the senior's own, else a fresh draw, else a hinted draw with
    the hint removed; :func:`training.grpo.warm_start_senior`), the repair prompts join the
    GRPO prompts, the prefilter runs before and after the warm start (``prefilter_base.json``,
    ``prefilter.json``: how many prompts have a pass rate strictly between 0 and 1 under each;
    before on every prompt, after -- and without a warm start, the one prefilter GRPO's prompts
    come from -- on prompts tried in a random order until the prompts GRPO trains on are kept,
    :func:`grpo_prompts_needed`; the two counts are then over different prompts, so the log gives
    each as a share of its own), and GRPO trains the warm start's adapter further on the prompts
    kept after it.

    Resume: each step before GRPO leaves a record when it finishes (:data:`STEP_FILES`, keyed by
    :func:`phase3_key`), so a phase 3 stopped part-way keeps the repair selection with the base
    prefilter, the warm start's adapter and the prefilter after it, and runs from the first step
    not finished. GRPO itself runs again whole."""
    from training.grpo import SeniorGRPOTrainer, warm_start_senior
    from training.senior_reward import PrefilterResult

    d, rl = senior_decisions(plan, echo)
    warm_on = plan.cfg.grpo.warm_start is not None
    stop = plan.cfg.grpo.stop if "stop" in plan.cfg.grpo.model_fields_set else plan.senior_stop
    cfg = plan.cfg.grpo.with_values(stop=stop, backend="trl", model=plan.cfg.base_model,
                                    output_dir=str(d / "adapter"))
    key = phase3_key(plan, cfg, rl)
    prompts, prefilter, warm, base_pf = rl.prompts, None, None, None
    if warm_on:
        rec = kept_step(d / STEP_FILES["select"], key, echo, "phase 3",
                        "the repair selection and the base senior's prefilter")
        reused_from = rec.get("reused_from") if rec else None
        if rec is None:
            rec = reused_select(plan.run_dir.root, d, key)
            if rec is not None:
                reused_from = rec["reused_from"]
                echo(f"phase 3: the repair selection and the base senior's prefilter reused from {reused_from} "
                     "(its phase-1 store is this run's, and the grpo settings, reward and senior prompts hash alike)")
        if rec is None:
            t0 = time.monotonic()
            base_pf, sel, prompts = prefilter_senior(plan, rl.prompts, cfg, repairs=True)
            summary, repairs = sel.summary, sel.dataset
            _save_dataset(repairs, d / "repair_dataset.jsonl")
            _save_dataset(prompts, d / "warm_prompts.jsonl")
            mark_step(d / STEP_FILES["select"], key, selection=summary,
                      prefilter_base=base_pf.to_record() if base_pf else None, seconds=time.monotonic() - t0)
        else:
            summary, repairs = rec["selection"], databases_here(_load_dataset(d / "repair_dataset.jsonl"))
            prompts = databases_here(_load_dataset(d / "warm_prompts.jsonl"))
            base_pf = PrefilterResult.from_record(rec["prefilter_base"], prompts) if rec["prefilter_base"] else None
        atomic_write_text(d / "repair_selection.json", json.dumps(summary, indent=2) + "\n")
        c, k = summary["cases"], summary["kept"]
        echo(f"phase 3 warm start: {c['total']} wrong queries to repair ({c['senior']} the senior's inputs, "
                  f"{c['junior']} juniors' candidates); {k['total']} repaired ({k['own']} by the senior's own "
                  f"reply, {k['sampled']} by a fresh draw, {k['hinted']} by a hinted draw, hint removed), "
                  f"{summary['unsolved']} not")
        warm = {"selection": summary, "prompts": len(prompts), **({"reused_from": reused_from} if reused_from else {})}
        if base_pf is not None:
            (d / "prefilter_base.json").write_text(json.dumps(base_pf.to_json(), indent=2))
            warm["prefilter_base"] = base_pf.to_json()
        if len(prompts) == 0:
            raise TrainConfigError("phase 3: no senior prompt and no wrong query to repair in the store; gather "
                                   "more rollouts")
        if len(repairs) == 0:
            echo("phase 3 warm start: no repair pair, so GRPO starts from a fresh LoRA (raise "
                      "grpo.warm_start_samples or gather more rollouts)")
        else:
            ws_dir = d / "warm_start"
            key = sha256_json([key, list(repairs["messages"])])
            rec = kept_step(ws_dir / STEP_FILES["warm_start"], key, echo, "phase 3", "the warm start's adapter")
            if rec is None:
                ws = warm_start_senior(repairs, cfg, ws_dir)
                ws_info = {"rows": ws.rows, "steps": ws.steps, "losses": ws.losses,
                           "seconds_per_step": ws.mean_step_seconds}
                mark_step(ws_dir / STEP_FILES["warm_start"], key, info=ws_info)
            else:
                ws_info = rec["info"]
            warm.update({"adapter": str(ws_dir), **ws_info})
            echo(f"phase 3 warm start: SFT {ws_info['steps']} steps on {ws_info['rows']} repair pairs, loss "
                      f"{ws_info['losses'][0][1]:.3f} -> {ws_info['losses'][-1][1]:.3f}")
            cfg = cfg.with_values(init_adapter=str(ws_dir))
    if cfg.prefilter_samples:
        if warm is not None and not cfg.init_adapter:  # no warm start trained: the base senior's, measured above
            prefilter = base_pf
        else:
            need = grpo_prompts_needed(cfg)  # the prompts GRPO trains on: the prefilter stops once it has them
            key = sha256_json([key, "prefilter", bool(cfg.init_adapter)])
            rec = kept_step(d / STEP_FILES["prefilter"], key, echo, "phase 3", "the prefilter")
            if rec is None:
                prefilter = prefilter_senior(plan, prompts, cfg, adapter=cfg.init_adapter, need=need)[0]
                if prefilter is not None:
                    mark_step(d / STEP_FILES["prefilter"], key, prefilter=prefilter.to_record())
            else:
                prefilter = PrefilterResult.from_record(rec["prefilter"], prompts)
        assert prefilter is not None
        (d / "prefilter.json").write_text(json.dumps(prefilter.to_json(), indent=2))
        who = "the warm-started senior" if cfg.init_adapter else "the base senior"
        tried = (f" (tried in a random order until GRPO's prompts were found, of {prefilter.n_in})"
                 if prefilter.n_tried < prefilter.n_in else "")
        echo(f"phase 3 prefilter: {prefilter.n_kept} of {prefilter.n_tried} senior prompts{tried} have rewards "
                  f"that differ over {prefilter.k} samples of {who}, {prefilter.n_pass_band} a pass rate strictly "
                  f"between 0 and 1 ({prefilter.seconds:.0f} s)"
                  + ("; training on those" if prefilter.n_kept else
                     "; none does, so GRPO trains on every prompt (expect steps without advantage: gather "
                     "more rollouts or raise grpo.temperature)"))
        if warm is not None:
            warm["prefilter_warm"] = prefilter.to_json() if cfg.init_adapter else None
            base_json = warm.get("prefilter_base") or {}
            before = (f"{base_json['n_pass_band']} of {base_json['n_in']}" if base_json.get("n_in")
                      else "not measured")
            echo(f"phase 3 warm start: prompts with a pass rate strictly between 0 and 1: {before} before, "
                      + (f"{prefilter.n_pass_band} of {prefilter.n_tried} tried after" if cfg.init_adapter else
                         f"no warm start trained (of {prefilter.n_in})"))
        if prefilter.n_kept:
            prompts = prefilter.dataset
    res = SeniorGRPOTrainer(cfg, prompts, reward_config=plan.cfg.reward).train()
    gguf = export_gguf(plan.cfg, Path(res.adapter_dir), Path(res.adapter_dir) / "adapter.gguf")
    echo(f"phase 3 GRPO: {res.steps} steps, mean reward per step {res.rewards}")
    return {"adapter": str(res.adapter_dir), "adapter_gguf": str(gguf) if gguf else None,
            "prompts": len(rl.prompts), "prefilter": prefilter.to_json() if prefilter else None,
            "steps": res.steps, "rewards": res.rewards, "warm_start": warm}
