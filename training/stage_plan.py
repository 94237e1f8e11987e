"""One evaluation stage of a training run as planned (:class:`Stage`), and the content hashes of the
untrained-model ones (:data:`BASE_STAGES`) with the ``reuse_from`` run each is taken from.

:func:`fingerprint_run` does it for a whole run at once: it finds the model files
(``society.models.ensure_model``) and reads every database's schema text once
(``society.toolkit.schema_text``), then hashes with :mod:`training.reuse` -- the model part once
(:func:`training.reuse.model_part`), each stage still to evaluate (:func:`training.reuse.society_parts`)
and phase 1's store when phase 1 runs -- and finds each in ``reuse_from``
(:func:`training.reuse.find_reusable`; a source stage on more questions of the evaluation split is
compared with this run's settings on its questions, and holds this stage's among them). A source that
has a stage made with other settings stops the run before anything is evaluated (:class:`StageReuseRefused`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluation.control_effects import SINGLE_BASELINE
from evaluation.role_effects import NOISE_STAGE
from society.config import SocietyConfig
from society.models import ensure_model
from society.toolkit import schema_text
from tools.spider import SpiderExample, load_examples
from training.profile import TrainConfig, TrainConfigError
from training.reuse import (
    Fingerprint,
    NotReusable,
    ReuseMatch,
    ReuseRefused,
    find_reusable,
    gather_files,
    model_part,
    question_rows,
    schema_settings,
    society_parts,
    used_models,
)

__all__ = ["BASE_STAGES", "RunHashes", "Stage", "StageReuseRefused", "fingerprint_run"]

#: Role-level and society stages that run the untrained model only: reusable across runs
#: (``reuse_from``, :mod:`training.reuse`).
BASE_STAGES = ("baseline", "juniors_baseline", NOISE_STAGE, "senior_baseline", SINGLE_BASELINE)


class StageReuseRefused(TrainConfigError, ReuseRefused):
    """A ``reuse_from`` run holds a stage made with other settings (:class:`training.reuse.ReuseRefused`;
    the message names the stage, the run and each differing hash); the run stops before evaluating."""


class Stage(BaseModel):
    """One evaluation stage of a run: ``name`` (``baseline``, ``juniors_sft``, ...), the ``agent``
    evaluated (``society``, ``juniors``, ``senior``, ``single``), its ``examples`` in order, the
    ``society`` config it runs, the SQL a senior stage gives per question id (``given_sql``), adapters
    served beside the finished phases' ones (``adapters``: alias -> PEFT directory, e.g. the shared
    adapter phase 2 trains for a comparison), and for an untrained-model stage its ``fingerprint``
    and the ``reuse_from`` run it is taken from (``reuse``; None: evaluated here)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    agent: str = "society"
    examples: list[SpiderExample]
    society: SocietyConfig
    given_sql: dict[str, str | None] | None = None
    adapters: dict[str, Path] | None = None
    fingerprint: Fingerprint | None = None
    reuse: ReuseMatch | None = None

    @property
    def role_level(self) -> bool:
        """A role-level stage (kept under ``eval/roles/``): every agent but the whole society."""
        return self.agent != "society"


class RunHashes(BaseModel):
    """What :func:`fingerprint_run` found: the ``model`` part (None: not hashed, ``model_problem`` says
    why when it could not be), the ``stages`` it was given with their fingerprints and sources, and
    phase 1's fingerprint ``gather_fp`` and source ``gather_reuse``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    model: dict[str, Any] | None = None
    model_problem: str = ""
    stages: dict[str, Stage] = Field(default_factory=dict)
    gather_fp: Fingerprint | None = None
    gather_reuse: ReuseMatch | None = None


def fingerprint_run(cfg: TrainConfig, society: SocietyConfig, stages: list[Stage], *,
                    gather: tuple[list[SpiderExample], list[SpiderExample]] | None = None,
                    reward: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                    hash_model: bool = True, store_exists: bool = False,
                    echo: Callable[[str], None] = print) -> RunHashes:
    """Fingerprint the untrained-model ``stages`` (those of :data:`BASE_STAGES`; others are kept as
    given) and, with ``gather`` (phase 1's tasks), the phase-1 store, then find each in ``reuse_from``
    (:func:`training.reuse.find_reusable`, in that order; a source stage that holds all of a stage's
    questions among more is used for those questions).

    Phase 1's fingerprint hashes the model, the society config with the gather settings that change
    what is drawn (``epsilon``, ``junior_resamples``, ``junior_temperature``, ``rationalize``) and the
    reward settings as the profile wrote them (``reward``), the prompts, the sampling, and the train
    questions (the society's tasks and the juniors-only tasks, in order).

    Args:
        cfg: the training profile (its engine, ``reuse_from`` and gather settings).
        society: the society config the stages and phase 1 run (its models are hashed).
        stages: the stages still to evaluate.
        gather: ``(society's tasks, juniors-only tasks)`` when phase 1 runs, else None.
        reward: ``cfg.as_written("reward")`` (needed with ``gather``).
        model: the model part hashed before (:attr:`RunHashes.model`); None: hashed here when ``hash_model``.
        hash_model: False when a trained part is routed in: nothing is fingerprinted.
        store_exists: the run has a store already (phase 1's source is then not looked up).
        echo: called with one line per stage that cannot be fingerprinted while ``reuse_from`` is set.

    Raises:
        StageReuseRefused: the first ``reuse_from`` run that has a stage made it with other settings.
        TrainConfigError: a ``reuse_from`` entry is not a directory.
    """
    why, files, schemas = "", None, {}
    if model is None and hash_model:
        try:
            files = {m: ensure_model(m) for m in used_models(society, engine=cfg.serving.engine)}
        except NotReusable as e:
            why = str(e)
    if model is not None or files is not None:  # the schema text of every database, read once
        settings = schema_settings(society)
        for e in [e for s in stages for e in s.examples] + [e for part in gather or () for e in part]:
            if str(e.db_id) not in schemas:
                schemas[str(e.db_id)] = schema_text(str(e.db_path), **settings)
    if files is not None:
        model = model_part(society, engine=cfg.serving.engine, model_files=files)
    fps: dict[str, Fingerprint] = {}
    for s in stages:
        if s.name in BASE_STAGES and model is not None:
            fps[s.name] = Fingerprint.of(s.name, s.agent, society_parts(s.society, s.examples, schemas=schemas,
                                                                        given_sql=s.given_sql, model=model))
        elif s.name in BASE_STAGES and why and cfg.reuse_from:
            echo(f"eval ({s.name}): not reusable ({why}); evaluating it here")
    gather_fp = None
    if gather is not None and model is not None:
        g, (tasks, jtasks) = cfg.gather, gather
        parts = society_parts(society, tasks + jtasks, schemas=schemas, model=model)
        parts["config"] = {"society": parts["config"], "reward": reward,
                           "gather": {"epsilon": g.epsilon, "junior_resamples": g.junior_resamples,
                                      "junior_temperature": g.junior_temperature, "rationalize": g.rationalize}}
        parts["questions"] = {"society": question_rows(tasks), "juniors_only": question_rows(jtasks)}
        gather_fp = Fingerprint.of("gather", "society+juniors", parts)
    elif gather is not None and why and cfg.reuse_from:
        echo(f"phase 1: not reusable ({why}); gathering here")
    split: dict[str, SpiderExample] = {}

    def rebuild(s: Stage) -> Callable[[list[str]], Fingerprint | None]:
        """This run's fingerprint of stage ``s`` on other questions of the evaluation split (a source
        stage's, to take this stage's questions from it)."""
        def on(ids: list[str]) -> Fingerprint | None:
            if not split:
                split.update((str(e.id), e) for e in load_examples(cfg.data_dir, cfg.eval.split))
            if any(i not in split for i in ids):
                return None
            exs = [split[i] for i in ids]
            for e in exs:
                if str(e.db_id) not in schemas:
                    schemas[str(e.db_id)] = schema_text(str(e.db_path), **settings)
            return Fingerprint.of(s.name, s.agent, society_parts(s.society, exs, schemas=schemas,
                                                                 given_sql=s.given_sql, model=model))
        return on

    found: dict[str, ReuseMatch | None] = {}
    gather_reuse = None
    try:
        for s in stages:
            if s.name in fps and cfg.reuse_from:
                found[s.name] = find_reusable(fps[s.name], cfg.reuse_from, role_level=s.role_level,
                                              want_ids=[str(e.id) for e in s.examples],
                                              rebuild=None if s.given_sql is not None else rebuild(s))
        if gather_fp is not None and cfg.reuse_from and not store_exists:
            gather_reuse = find_reusable(gather_fp, cfg.reuse_from, where=gather_files)
    except ReuseRefused as e:
        raise StageReuseRefused(str(e)) from None
    except FileNotFoundError as e:
        raise TrainConfigError(f"{e}; fix reuse_from in the profile") from None
    out = {s.name: s.model_copy(update={"fingerprint": fps.get(s.name), "reuse": found.get(s.name)}) for s in stages}
    return RunHashes(model=model, model_problem=why, stages=out, gather_fp=gather_fp, gather_reuse=gather_reuse)
