"""A training profile resolved once against its run directory: :class:`RunPlan`, what every stage and
phase of ``sqlsociety train`` reads.

:func:`resolve_run` turns a :class:`training.profile.TrainConfig` and a run directory into the plan in
one pass, before anything is evaluated or trained:

=================  ===================================================================================
field              what it holds
=================  ===================================================================================
``done``           phase -> its ``done.json`` (None: not finished), read once; a phase the run
                   finishes is added by :meth:`RunPlan.with_done`
``society``        the society config as the run routes it
                   (:func:`training.role_aliases.route_society`: the juniors and
                   the senior on aliases of their own, one per junior persona with
                   ``junior_adapters: per_persona``, the bandit supervisor after phase 4)
``dev``            the society stages' questions (``eval.limit`` drawn with ``eval.seed``)
``juniors``        the juniors-only, noise-control, senior pool and one-shot stages' questions
                   (``eval.junior_limit``, the society's draw when 0)
``gather``         phase 1's train tasks, ``(society, juniors-only)``, when phase 1 runs or phase
                   3 runs with VERL (it trains live on the society's tasks;
                   :func:`training.run_questions.gather_draw`)
``stages``         the untrained-model stages still to evaluate (``BASE_STAGES`` but the
                   senior's, whose inputs come from the juniors' baseline), each a
                   :class:`training.stage_plan.Stage` with its fingerprint and the ``reuse_from``
                   run it is taken from (:func:`training.stage_plan.fingerprint_run`)
``model``          the model part the fingerprints hash (:func:`training.reuse.model_part`; None when
                   nothing is hashed, ``model_problem`` says why when the model cannot be)
``gather_fp``      phase 1's fingerprint and ``gather_reuse`` the run whose store is copied
``writer``         ``(role, alias)`` of the one-shot control's writer (``eval.single``)
``personas``       junior persona -> its model alias (:func:`training.role_aliases.persona_alias`),
                   in the society config's order, and ``persona_of`` junior instance -> persona:
                   what phase 2 splits its rows by with ``junior_adapters: per_persona``
``grpo_backend``   ``trl`` or ``verl``: what phase 3 runs with (``grpo.backend`` resolved once,
                   :func:`resolve_backend`); None when phase 3 does not run
``senior_alias``   the senior role's model alias as routed (None: no enabled senior) and
                   ``senior_stop`` its stop strings: what phase 3 serves and samples
=================  ===================================================================================

The one-shot control's writer and every ``reuse_from`` run are checked here, so a writer the society
lacks or a mismatch (:class:`training.stage_plan.StageReuseRefused`) stops the run before any
evaluation costs CPU. A stage that is already finished in the run directory (its
``.summary.json`` is there) is neither fingerprinted nor looked up.

The servers a stage needs are started from the plan (:meth:`RunPlan.serve`); the stages are run by
:mod:`training.stages`, the phases by ``training.phase_*``, in the order :mod:`training.pipeline`
gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluation.control_effects import SINGLE_BASELINE
from evaluation.role_effects import NOISE_STAGE
from society.config import SocietyConfig
from tools.spider import SpiderExample
from training.profile import TrainConfig, TrainConfigError
from training.reuse import Fingerprint, ReuseMatch
from training.role_aliases import (
    junior_persona,
    junior_personas,
    persona_alias,
    route_society,
    senior_role,
    single_writer,
    trained_adapters,
    with_junior_seed_offset,
)
from training.run_dir import PHASES, RunDir
from training.run_questions import draw_questions
from training.run_serving import serve_roles
from training.stage_plan import BASE_STAGES, Stage, fingerprint_run

__all__ = ["RunPlan", "resolve_backend", "resolve_run", "stage_path"]


class RunPlan(BaseModel):
    """A profile resolved against its run directory (:func:`resolve_run`; the fields are described in
    the module docstring). Frozen: a finished phase gives a new plan (:meth:`with_done`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    cfg: TrainConfig
    run_dir: RunDir
    phases: set[int]
    done: dict[int, dict[str, Any] | None]
    society: SocietyConfig
    dev: list[SpiderExample]
    juniors: list[SpiderExample]
    gather: tuple[list[SpiderExample], list[SpiderExample]] | None = None
    model: dict[str, Any] | None = None
    model_problem: str = ""
    stages: dict[str, Stage] = Field(default_factory=dict)
    gather_fp: Fingerprint | None = None
    gather_reuse: ReuseMatch | None = None
    writer: tuple[str, str | None] | None = None
    personas: dict[str, str] = Field(default_factory=dict)
    persona_of: dict[str, str] = Field(default_factory=dict)
    grpo_backend: str | None = None
    senior_alias: str | None = None
    senior_stop: list[str] | None = None

    @property
    def trained(self) -> dict[str, Path]:
        """Role alias -> adapter directory of the finished phases
        (:func:`training.role_aliases.trained_adapters`)."""
        return trained_adapters(self.done)

    @property
    def untrained(self) -> bool:
        """No trained part is routed in yet: no adapter of phase 2 or 3, phase 4 not finished."""
        return not self.trained and self.done.get(4) is None

    def with_done(self, k: int, info: dict[str, Any] | None) -> RunPlan:
        """The plan once phase ``k`` finished with ``done.json`` ``info``: its adapters routed in, the
        bandit supervisor after phase 4 (:func:`training.role_aliases.route_society`)."""
        done = {**self.done, k: info}
        return self.model_copy(update={"done": done,
                                       "society": route_society(self.society, done, self.cfg.junior_adapters)})

    def serve(self, stack: ExitStack, society: SocietyConfig, *, senior_adapter: str | Path | None = None,
              adapters: dict[str, Path] | None = None) -> dict[str, Any]:
        """Start the servers ``society`` needs now on ``stack``: alias -> ``Endpoint``
        (:func:`training.run_serving.serve_roles` with the finished phases' adapters, and ``adapters``
        beside them, and VERL's trained senior); with ``senior_adapter`` only the senior's alias, the
        base model with that LoRA on it (phase 3's prefilter of the warm-started senior)."""
        return serve_roles(stack, society, self.cfg, self.run_dir.root, {**self.trained, **(adapters or {})},
                           senior_model=(self.done.get(3) or {}).get("model"), senior_adapter=senior_adapter)

    def stage(self, name: str, agent: str = "society", examples: Sequence[SpiderExample] | None = None, *,
              society: SocietyConfig | None = None, given_sql: dict[str, str | None] | None = None,
              adapters: dict[str, Path] | None = None, echo: Callable[[str], None] = print) -> Stage:
        """The stage ``name`` as this run evaluates it: the one resolved in :attr:`stages`, else ``agent``
        on ``examples`` (default :attr:`dev`) with the society as routed now (or ``society``) --
        fingerprinted and looked up in ``reuse_from`` (:func:`training.stage_plan.fingerprint_run`)
        when it runs the untrained model and has not finished (the senior's baseline, whose inputs
        come from the juniors' baseline).

        Raises:
            training.stage_plan.StageReuseRefused, TrainConfigError: as ``fingerprint_run``.
        """
        if name in self.stages:
            return self.stages[name]
        stage = Stage(name=name, agent=agent, examples=list(self.dev if examples is None else examples),
                      society=society or self.society, given_sql=given_sql, adapters=adapters)
        if name not in BASE_STAGES or not self.untrained or _finished(self.run_dir, name, stage.role_level):
            return stage
        if self.model is None:
            if self.model_problem and self.cfg.reuse_from:
                echo(f"eval ({name}): not reusable ({self.model_problem}); evaluating it here")
            return stage
        return fingerprint_run(self.cfg, stage.society, [stage], model=self.model, echo=echo).stages[name]


def resolve_backend(backend: str) -> str:
    """The GRPO backend to run: ``"auto"`` -> ``"verl"`` when ``torch.cuda.is_available()`` and the
    ``verl`` package is importable, else ``"trl"``; ``"trl"`` as is.

    Raises:
        TrainConfigError: ``backend`` is not ``trl`` / ``verl`` / ``auto``, or ``verl`` is asked for on a
            machine without CUDA or without verl (install ``.[gpu]`` on a GPU machine, or use ``trl``).
    """
    import importlib.util

    if backend not in ("trl", "verl", "auto"):
        raise TrainConfigError(f"grpo.backend {backend!r}: use 'trl', 'verl' or 'auto'")
    if backend == "trl":
        return "trl"
    import torch

    cuda = torch.cuda.is_available()
    has_verl = importlib.util.find_spec("verl") is not None
    if backend == "auto":
        return "verl" if cuda and has_verl else "trl"
    if not cuda or not has_verl:
        raise TrainConfigError(f"grpo.backend 'verl' needs a CUDA GPU and the verl package (CUDA available: "
                               f"{cuda}, verl installed: {has_verl}); install '.[gpu]' on a GPU machine or set "
                               "grpo.backend: trl")
    return "verl"


def stage_path(run_dir: RunDir, name: str, role_level: bool) -> Path:
    """``eval/<name>.jsonl`` of the run, or ``eval/roles/<name>.jsonl`` for a role-level stage."""
    return run_dir.role_eval_path(name) if role_level else run_dir.eval_path(name)


def _finished(run_dir: RunDir, name: str, role_level: bool) -> bool:
    """Stage ``name``'s ``<stage>.summary.json`` is there: it finished in this run directory."""
    return stage_path(run_dir, name, role_level).with_suffix(".summary.json").is_file()


def resolve_run(cfg: TrainConfig, run_dir: RunDir, *, phases: set[int] | None = None,
                echo: Callable[[str], None] = print) -> RunPlan:
    """Resolve ``cfg`` against ``run_dir`` once (see the module docstring): read the finished phases,
    load and route the society and find the one-shot control's writer, draw every stage's questions,
    then fingerprint the untrained-model stages still to evaluate (and phase 1 when it runs) and find
    each in ``reuse_from``.

    Args:
        cfg: the training profile.
        run_dir: the run directory (its ``done.json`` files and finished stages are read).
        phases: the phases this run runs (default all); phase 1 is planned only when it is among them.
        echo: called with one line per stage that cannot be fingerprinted while ``reuse_from`` is set.

    Raises:
        training.stage_plan.StageReuseRefused: a ``reuse_from`` run holds a stage (or phase 1's store)
            made with other settings.
        TrainConfigError: a ``reuse_from`` entry is not a directory; the one-shot writer is not a junior;
            ``grpo.backend`` cannot run here (:func:`resolve_backend`).
        society.config.ConfigError, tools.spider.DataError: the society config or a split cannot be read.
    """
    phases = set(phases or PHASES)
    e = cfg.eval
    society_file, reward = cfg.record.society_file, cfg.record.written["reward"]
    done = {k: run_dir.done(k) for k in PHASES}
    backend = resolve_backend(cfg.grpo.backend) if 3 in phases and done[3] is None else None
    loaded = SocietyConfig.load(society_file)
    society = route_society(loaded, done, cfg.junior_adapters)
    writer = single_writer(society, society_file) if e.single else None
    noisy = with_junior_seed_offset(society)
    senior = senior_role(society)
    personas = {p: persona_alias(p) for p in junior_personas(society)}
    persona_of = {i.name: junior_persona(i.config) for i in society.instances("junior")}
    untrained = not trained_adapters(done) and done[4] is None
    gathering = 1 in phases and done[1] is None
    dev, juniors, gather = draw_questions(cfg, gather=gathering or backend == "verl")
    base = [Stage(name="baseline", examples=dev, society=society)]
    if e.junior_limit:
        base.append(Stage(name="juniors_baseline", agent="juniors", examples=juniors, society=society))
    if e.noise_repeat:
        base.append(Stage(name=NOISE_STAGE, agent="juniors", examples=juniors, society=noisy))
    if e.single:
        base.append(Stage(name=SINGLE_BASELINE, agent="single", examples=juniors, society=society))
    pending = [s for s in base if not _finished(run_dir, s.name, s.role_level)]
    senior_pending = e.senior_limit and not _finished(run_dir, "senior_baseline", True)
    hashes = fingerprint_run(cfg, society, pending, gather=gather if gathering else None, reward=reward,
                             hash_model=untrained and bool(pending or gathering or senior_pending),
                             store_exists=run_dir.store.exists(), echo=echo)
    return RunPlan(cfg=cfg, run_dir=run_dir, phases=phases, done=done, society=society, dev=dev, juniors=juniors,
                   gather=gather, model=hashes.model, model_problem=hashes.model_problem, stages=hashes.stages,
                   gather_fp=hashes.gather_fp, gather_reuse=hashes.gather_reuse, writer=writer,
                   personas=personas, persona_of=persona_of, grpo_backend=backend,
                   senior_alias=senior.model if senior else None,
                   senior_stop=list(senior.sampling.stop) if senior and senior.sampling.stop else None)
