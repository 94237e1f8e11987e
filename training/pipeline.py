"""``sqlsociety train``: the four-phase pipeline, each role trained with the method that fits it.

Data flow (one run directory holds everything)::

    Spider train tasks --(phase 1: society rollouts on agl.Trainer)--> RUN_DIR/store.sqlite (spans, rewards)
    store --HierarchicalTraceAdapter.to_sft-->    juniors' conversations --(phase 2: SFT, LoRA)--> junior adapter
    store --HierarchicalTraceAdapter.to_rl-->     senior prompts         --(phase 3: GRPO, LoRA)--> senior adapter
    store --HierarchicalTraceAdapter.to_bandit--> (context, action, reward) --(phase 4: bandit)-->  supervisor policy
    adapters --> GGUF LoRA --> llama.cpp server --> the role's model alias is routed to it

Before phase 1 and after each of phases 2-4 the society is evaluated on a fixed dev subset
(``RUN_DIR/eval/<stage>.jsonl``), so every phase prints EX before/after on the same questions
(``eval.society_stages: ends``: only before phase 1 and after the last phase run). Each phase is
also judged on the role it trains, on its own larger samples (``RUN_DIR/eval/roles/<stage>.jsonl``,
role-level agents of ``society.baselines``): the juniors (``eval.junior_limit`` questions) before
and after phase 2, the senior on the juniors' chosen candidates (``eval.senior_limit``) before and
after phase 3, and the supervisor by offline replay of those held-out decisions in phase 4. With
``eval.noise_repeat`` the untrained juniors are evaluated a second time on their questions with
every junior's sampling seed + :data:`training.role_aliases.NOISE_SEED_OFFSET` (``juniors_baseline_repeat``): the noise
floor the report sets beside each junior's SFT effect. With ``eval.single`` (the default) the
one-shot control -- ``society.baselines``' ``single`` agent, the writer junior drafting once -- is
evaluated on the juniors' questions before phase 1 (``single_baseline``, the untrained model) and
after phase 2 (``single_trained``, the writer on its trained adapter), so the report sets every
society figure beside what one call per question gets (:mod:`evaluation.control_effects`). A
profile whose ``gather.split`` is its ``eval.split`` is refused (:class:`TrainConfig`).

Resume: each phase writes ``RUN_DIR/phases/<k>-<name>/done.json`` when it finishes; a run started
with ``--resume RUN_DIR`` skips finished phases (re-serving their artifacts), phase 1 skips the
tasks already in the store, phase 2 keeps each adapter that finished (``sft_done.json``) and phase 3
each step before GRPO (:data:`training.phase_grpo.STEP_FILES`), so a killed run loses no rollout,
no finished adapter and no finished selection, warm start or prefilter, and redoes no phase.

The profile flows one way: :func:`training.run_plan.resolve_run` resolves it against the run
directory once (the society as routed, every stage's questions, the untrained stages' fingerprints
and ``reuse_from`` sources, checked before anything runs), then this module runs the stages
(:mod:`training.stages`) and the phases (:mod:`training.phase_gather`, :mod:`training.phase_sft`,
:mod:`training.phase_grpo`, :mod:`training.phase_bandit`) in order from that plan.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluation.report import write_report
from training.phase_bandit import bandit_phase
from training.phase_gather import gather_phase
from training.phase_grpo import grpo_phase
from training.phase_grpo_verl import verl_grpo_phase
from training.phase_sft import sft_phase
from training.profile import TrainConfig, TrainConfigError
from training.run_dir import PHASES, STAGE_AFTER_PHASE, PhaseReport, RunDir, route_library_logs
from training.run_plan import RunPlan, resolve_run
from training.stages import evaluate_roles, evaluate_society

#: Phase number -> the function that runs it on the run's plan (``done.json``'s fields returned); phase 3
#: runs :func:`training.phase_grpo_verl.verl_grpo_phase` instead when ``RunPlan.grpo_backend`` is ``verl``.
PHASE_STEPS: dict[int, Callable[[RunPlan, Callable[[str], None]], dict[str, Any]]] = {
    1: gather_phase, 2: sft_phase, 3: grpo_phase, 4: bandit_phase}


class TrainingPipeline:
    """Runs phases 1-4 of a :class:`TrainConfig` into a run directory, resumably.

    Args:
        config: the training profile.
        run_dir: the run directory (created; an existing one is resumed).
        phases: which phases to run (subset of 1-4); earlier finished phases are re-served from
            their artifacts, unfinished earlier phases needed by a later one raise.
        echo: called with one line of progress text per event (the CLI prints it with Rich).

    Raises:
        TrainConfigError: bad profile or phase selection.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, phases: set[int] | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.dir = RunDir(run_dir)
        self.phases = set(phases or PHASES)
        bad = self.phases - set(PHASES)
        if bad:
            raise TrainConfigError(f"--phases {sorted(bad)} unknown; use a comma list of 1,2,3,4")
        self.echo = echo
        self.reports: list[PhaseReport] = []
        self.plan: RunPlan | None = None
        cfg_file = self.dir.root / "config.yaml"
        if not cfg_file.exists():
            cfg_file.write_text(config.record.yaml)

    def resolve(self) -> RunPlan:
        """The run's plan (:func:`training.run_plan.resolve_run`), resolved on the first call: a
        ``reuse_from`` run with a stage made with other settings, or a one-shot writer the society
        does not have, stops the run here, before anything is evaluated.

        Raises:
            training.stage_plan.StageReuseRefused, TrainConfigError: as ``resolve_run``.
        """
        if self.plan is None:
            self.plan = resolve_run(self.cfg, self.dir, phases=self.phases, echo=self.echo)
        return self.plan

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> list[PhaseReport]:
        """Resolve the plan, the baseline eval, then phases in order with an eval after each of 2-4,
        then the report.

        Returns:
            One :class:`PhaseReport` per phase/stage (``skipped`` when resumed from ``done.json``).
        """
        t_all = time.perf_counter()
        route_library_logs(self.dir.root / "train.log")
        cfg, echo = self.cfg, self.echo
        plan = self.resolve()  # a reuse_from mismatch or a one-shot control that cannot run stops here, not hours in
        base = evaluate_society(plan, "baseline", echo)
        evaluate_roles(plan, "baseline", echo)
        before = base["ex"]
        last = max(self.phases)
        for k, step in PHASE_STEPS.items():
            if k not in self.phases:
                continue
            done = plan.done[k]
            if done is not None:
                self.echo(f"phase {k} ({PHASES[k]}) already done in {self.dir.root}: skipped")
                self.reports.append(PhaseReport(k, PHASES[k], 0.0, done, skipped=True))
            else:
                self.echo(f"phase {k} ({PHASES[k]}) ...")
                t0 = time.perf_counter()
                run_step = verl_grpo_phase if k == 3 and plan.grpo_backend == "verl" else step
                info = run_step(plan, echo)
                info["seconds"] = round(time.perf_counter() - t0, 1)
                self.dir.mark_done(k, info)
                self.plan = plan = plan.with_done(k, self.dir.done(k))
                self.reports.append(PhaseReport(k, PHASES[k], info["seconds"], info))
            if k in STAGE_AFTER_PHASE:
                evaluate_roles(plan, STAGE_AFTER_PHASE[k], echo)
                if cfg.eval.society_stages == "every" or k == last:
                    after = evaluate_society(plan, STAGE_AFTER_PHASE[k], echo)["ex"]
                    self.echo(f"phase {k} ({PHASES[k]}): society EX {100 * before:.2f}% -> {100 * after:.2f}% on "
                              "the dev subset")
                    before = after
        (self.dir.root / "train_summary.json").write_text(json.dumps(
            {"profile": cfg.name, "wall_seconds": round(time.perf_counter() - t_all, 1),
             "phases": [r.__dict__ for r in self.reports]}, indent=2, default=str))
        self.write_report()
        return self.reports

    def write_report(self) -> Path | None:
        """Write ``report.html`` / ``report.md`` (``evaluation.report``); returns the HTML path."""
        out = write_report(self.dir.root)
        self.echo(f"report: {out}")
        return out
