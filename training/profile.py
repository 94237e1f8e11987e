"""A training profile (``configs/train/<profile>.yaml``) as one pydantic model, :class:`TrainConfig`.

Every section is the model it feeds: ``gather`` is :class:`training.gather_config.GatherConfig`,
``eval`` / ``serving`` / ``adapter`` are sections of their own here, ``sft`` is
:class:`training.sft.JuniorSFTConfig`, ``grpo`` :class:`training.grpo.SeniorGRPOConfig` (both on
:class:`training.lora_training.LoraTrainingConfig`; TRL's settings under TRL's own names, checked
against TRL's ``SFTConfig`` / ``GRPOConfig``), ``bandit``
:class:`society.bandit.BanditConfig` and ``reward`` :class:`evaluation.metrics.rewards.RewardConfig`.
Each default is written once, in its model. A key no model takes is refused naming the section and
the keys it knows; a wrongly typed value names its dotted key and the type it wants
(``sft.max_steps: expected an integer, got 'two'``, :func:`tools.value_types.section_problems`),
before the class sees it.

The ``model`` / ``output_dir`` of ``sft`` and ``grpo`` are set by the pipeline (``base_model``, the
phase directory); a profile need not give them.

Compatibility with run directories written before the sections were typed: the ``config.yaml`` a
run writes (:meth:`TrainConfig.to_yaml`) keeps those five sections as the profile wrote them, and
the gather fingerprint hashes the ``reward`` section as written (:meth:`TrainConfig.as_written`),
so a run started by older code resumes with the same file and the same content hashes.

A :class:`TrainConfig` is frozen; what a run takes from it besides its settings -- the society file,
the sections as written, the ``config.yaml`` text -- is worked out once, when the config is built,
into :attr:`TrainConfig.record` (a :class:`ProfileRecord`), which the run and ``--dry-run`` read.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from evaluation.metrics.rewards import RewardConfig
from society.bandit import BanditConfig
from tools.value_types import SettingProblems, TypedSettings, problems_of, section_problems
from training.gather_config import GatherConfig
from training.grpo import SeniorGRPOConfig
from training.sft import JuniorSFTConfig

__all__ = ["PROFILE_DIR", "PROFILES", "AdapterSection", "EvalSection", "ProfileRecord", "ServingSection", "SftFill",
           "TrainConfig", "TrainConfigError", "RETIRED_ADAPTER_KEYS", "TYPED_SECTIONS"]

logger = logging.getLogger(__name__)

#: Shipped training profiles (copy one and edit it).
PROFILE_DIR = Path(__file__).resolve().parent.parent / "configs" / "train"
PROFILES = ("smoke", "default", "long", "gpu")

#: The sections that configure a class of their own (the trainers, the bandit, the reward, the
#: adapter's views): kept as written in ``config.yaml`` (:meth:`TrainConfig.to_yaml`).
TYPED_SECTIONS = ("sft", "grpo", "bandit", "adapter", "reward")

#: Sections that were dataclasses before they were typed: one built in code is written as its values that
#: differ from the defaults (what the gather fingerprint hashed for a ``reward`` built in code then).
WRITTEN_AS_CHANGES = ("bandit", "reward")

#: Fields of a section the pipeline sets itself (a profile need not give them).
PIPELINE_SET = {"sft": ("model", "output_dir"), "grpo": ("model", "output_dir")}

#: Where the pipeline puts the trained adapters (``output_dir``), as ``--dry-run`` shows it.
PHASE_OUTPUT: dict[str, Any] = {
    "sft": {"shared": "RUN_DIR/phases/2-sft/adapter", "per_persona": "RUN_DIR/phases/2-sft/adapters/<alias>"},
    "grpo": "RUN_DIR/phases/3-grpo/adapter",
}


class TrainConfigError(ValueError):
    """An unusable training profile; the message names the file/field and the fix."""


#: ``adapter:`` keys older profiles and run directories carry that nothing reads any more: dropped on
#: :meth:`TrainConfig.load` with a warning, so those files still load and resume.
RETIRED_ADAPTER_KEYS: dict[str, str] = {
    "bandit_holdout": "phase 4 judges the bandit on the untrained juniors' dev decisions and, where those hold "
                      "fewer than bandit.held_out_contested contested ones, on whole train questions it holds out "
                      "of the fit; there is no random share of decisions to set",
    "sft_select": "a junior's conversation enters SFT only when its own final SQL matches gold (per-junior "
                  "credit); the society's reward only ranks and deduplicates, the modes that admitted on it are gone",
}


class EvalSection(TypedSettings):
    """The fixed dev samples, drawn with ``seed`` from ``split`` across all its databases (the same
    draw at every stage; :func:`tools.sampling.sample_examples`).

    Attributes:
        limit: questions of the society's end-to-end evaluation (>= 1).
        society_stages: ``every`` -- the society after every phase (baseline, sft, grpo, bandit);
            ``ends`` -- only the baseline and after the last phase this run runs (the role-level
            evaluations below judge the phases in between, far more cheaply).
        junior_limit: questions of the juniors-only evaluation (each junior's own candidate and the
            supervisor's pick; ``juniors`` agent) at the baseline and after phase 2; 0 = off.
        senior_limit: inputs of the senior-only evaluation (``senior`` agent on the baseline
            juniors' chosen candidates, the first ``senior_limit`` questions of the juniors'
            sample that have one) at the baseline and after phase 3; 0 = off. Needs ``junior_limit``.
        noise_repeat: the noise control: right after the juniors-only baseline, evaluate the
            untrained juniors once more on the same ``junior_limit`` questions with every junior's
            sampling seed shifted by :data:`NOISE_SEED_OFFSET` (stage ``juniors_baseline_repeat``,
            :data:`evaluation.role_effects.NOISE_STAGE`); the report shows, beside each junior's
            SFT effect, the Δ between the two untrained evaluations, and calls the effect only when
            it is larger. Worth its cost (one more juniors-only evaluation) when a junior samples at
            temperature > 0. Needs ``junior_limit``.
        single: the one-shot control (default on): the ``single`` agent of ``society.baselines`` (the
            writer junior, ``baselines.writer``, drafts once: one LLM call per question) on the
            juniors-only evaluation's questions (the society's when ``junior_limit`` is 0), untrained
            before phase 1 (stage ``single_baseline``) and with the writer's trained adapter after
            phase 2 (``single_trained``); the report sets the juniors' pick and the society beside it
            (:mod:`evaluation.control_effects`). Costs one call per question per stage.
        concurrency: questions run at once (threads).
        response_cache: the run's evaluation stages answer a request they sent before -- the same
            served weights (sha256 of the model and adapter files), prompt and greedy or seeded
            sampling -- from ``RUN_DIR/eval/responses.sqlite`` (:mod:`society.response_cache`): the
            society's juniors repeat the juniors-only stage's requests on the questions both run,
            the one-shot's writer the direct junior's first one. Default on; their tokens count as
            live, their seconds do not (the report says which stages had such calls).
    """

    split: str = "dev"
    limit: int = Field(10, ge=1)
    seed: int = 0
    concurrency: int = Field(1, ge=1)
    society_stages: Literal["every", "ends"] = "every"
    junior_limit: int = Field(0, ge=0)
    senior_limit: int = Field(0, ge=0)
    noise_repeat: bool = False
    single: bool = True
    response_cache: bool = True

    @model_validator(mode="after")
    def _senior_needs_juniors(self) -> EvalSection:
        if self.senior_limit and not self.junior_limit:
            raise ValueError("eval.senior_limit needs eval.junior_limit > 0: the senior is judged on the baseline "
                             "juniors' chosen candidates")
        if self.noise_repeat and not self.junior_limit:
            raise ValueError("eval.noise_repeat needs eval.junior_limit > 0: it repeats the juniors-only baseline "
                             "evaluation")
        return self


class ServingSection(TypedSettings):
    """How the roles' base model (and the trained LoRA adapters) are served.

    Attributes:
        engine: ``"llama.cpp"`` (default: one llama-server per embedded GGUF, CPU; adapters exported
            to GGUF LoRA) or ``"vllm"`` (GPU: vLLM's OpenAI server on the HF checkpoint of
            ``base_model`` with ``--enable-lora``; the juniors' and the senior's PEFT adapters are
            served by name, see :class:`society.vllm_serving.VLLMServer`).
        gpu_memory_utilization: vLLM: fraction of the GPU's memory vLLM may take, (0, 1] -- leave
            room for the trainers (SFT/GRPO share the GPU with the server).
        max_lora_rank: vLLM ``--max-lora-rank``: at least the adapters' ``r`` (SFT/GRPO ``lora_r``,
            VERL ``lora_rank``).
        max_loras: vLLM ``--max-loras``: adapters resident in one batch (juniors + senior = 2).
        max_model_len: vLLM ``--max-model-len`` in tokens (prompt + completion); None = the model's.
        dtype: vLLM ``--dtype`` (``auto``, ``bfloat16``, ``float16``).
        tensor_parallel_size: vLLM ``--tensor-parallel-size`` (GPUs per server).
        startup_timeout_s: seconds to wait for the server's health check.
        extra_args: more command-line arguments passed to the server as they are.
    """

    engine: Literal["llama.cpp", "vllm"] = "llama.cpp"
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    max_lora_rank: int = Field(32, ge=1)
    max_loras: int = Field(2, ge=1)
    max_model_len: int | None = Field(4096, ge=256)
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    startup_timeout_s: float = Field(900.0, gt=0.0)
    extra_args: list[str] = Field(default_factory=list)


#: ``adapter.sft_fill``'s choices (:func:`training.phase_sft.fill_rows`).
SftFill = Literal["random", "missed_first"]


class AdapterSection(TypedSettings):
    """Selection thresholds of the :class:`training.adapter.HierarchicalTraceAdapter` views.

    Attributes:
        sft_min_reward: admits nothing (a junior's conversation enters SFT only when its own SQL
            matched gold): the threshold of the removed reward-or-correct rule, whose wrongly
            admitted conversations phase 2 counts (``phases/2-sft/sft_selection.json``).
        rl_reward: the reward of the senior's GRPO triplets (``to_rl(reward=...)``).
        sft_fill: which admitted rows an SFT adapter trains on when its step budget
            (``sft.max_steps`` x batch x accumulation) holds fewer rows than it has:
            ``random`` -- all of them, the trainer drawing its batches at random (what ran before
            this setting existed); ``missed_first`` -- the rows of questions the junior's first
            draft missed (redraws that matched gold, STaR rationalizations) first, the rest drawn
            at random into what is left (:func:`training.phase_sft.fill_rows`).
    """

    sft_min_reward: float = 0.5
    rl_reward: str = "rollout"
    sft_fill: SftFill = "random"


@dataclass(frozen=True)
class ProfileRecord:
    """What a run takes from its profile besides the settings, worked out once when the
    :class:`TrainConfig` is built (loaded, validated or copied) and read from
    :attr:`TrainConfig.record` by the run (``config.yaml``, :func:`training.run_plan.resolve_run`)
    and by ``--dry-run`` (:func:`training.plan.plan_profile`).

    Attributes:
        society_file: the society YAML (:meth:`TrainConfig.society_path`: a relative ``society_config``
            taken from the repository root).
        written: each typed section (:data:`TYPED_SECTIONS`) as the profile wrote it
            (:meth:`TrainConfig.as_written`): what ``config.yaml`` keeps and, for ``reward``, what the
            gather fingerprint hashes. Read it, do not change it (the record is shared).
        yaml: the text of ``RUN_DIR/config.yaml`` (:meth:`TrainConfig.to_yaml`).
    """

    society_file: Path
    written: Mapping[str, dict[str, Any]]
    yaml: str


class TrainConfig(TypedSettings):
    """A training profile (``configs/train/<profile>.yaml``), validated.

    Attributes:
        name: profile name (shown in reports).
        society_config: society YAML (relative paths resolve against the repo root).
        base_model: embedded alias or GGUF path the juniors and the senior are fine-tuned from
            (must be the model the society's junior/senior aliases serve); with
            ``serving.engine: vllm`` also a Hugging Face model directory.
        data_dir: Spider-format directory (None: the bundled copy).
        gather: :class:`training.gather_config.GatherConfig` (phase 1; its gather calls take it as it is).
        eval: :class:`EvalSection`.
        sft / grpo / bandit: :class:`training.sft.JuniorSFTConfig`,
            :class:`training.grpo.SeniorGRPOConfig`, :class:`society.bandit.BanditConfig`
            (``model`` and ``output_dir`` are set by the pipeline).
        adapter: :class:`AdapterSection`.
        reward: :class:`evaluation.metrics.rewards.RewardConfig`.
        llm_proxy: route every model alias through Agent Lightning's ``LLMProxy``
            (:func:`society.proxy.llm_proxy`); False: roles call the servers' base URLs directly.
        serving: :class:`ServingSection` (engine and its settings).
        junior_adapters: ``shared`` (one LoRA for all juniors) or ``per_persona`` (one per junior
            persona, each trained on that persona's own admitted conversations;
            :data:`JUNIOR_ADAPTER_MODES`).
        compare_shared_adapter: with ``per_persona``, phase 2 also trains one shared adapter on all
            the personas' rows (the same ``sft`` settings), and after phase 2 the juniors are
            evaluated on it too (``eval/roles/juniors_sft_shared``, the juniors-only questions), so
            the report compares one adapter per persona with one for all on the same questions. The
            society keeps the per-persona adapters. Costs one more SFT and one more juniors-only
            evaluation.
        reuse_from: earlier run directories whose untrained-model stages (:data:`BASE_STAGES`)
            this run takes instead of evaluating them again, when their content hashes match, or
            when a source stage holds this one's questions among more and matches on those
            (:mod:`training.reuse`; a source whose stage differs in any hash stops the run with
            :class:`training.reuse.ReuseRefused` naming the hash). Relative paths are taken from
            the working directory.

    Frozen (a field cannot be set): change one with ``model_copy(update=...)``; the copy makes its
    own :attr:`record`.

    Raises (as a ``ValidationError``; :meth:`load` raises :class:`TrainConfigError`):
        an unknown key or a wrongly typed value in any section (:func:`tools.value_types.section_problems`);
        a value a section's class refuses;
        ``gather.split`` equal to ``eval.split``: phase 1 would gather (and phases 2-4 train on)
        the questions every evaluation scores, so no before/after effect would be measured on
        held-out questions (:meth:`_held_out_evaluation`).
    """

    name: str = "custom"
    society_config: str = "configs/smoke.yaml"
    base_model: str = "smollm2-135m"
    data_dir: str | None = None
    gather: GatherConfig = Field(default_factory=GatherConfig)
    eval: EvalSection = Field(default_factory=EvalSection)
    sft: JuniorSFTConfig = Field(default_factory=JuniorSFTConfig)
    grpo: SeniorGRPOConfig = Field(default_factory=SeniorGRPOConfig)
    bandit: BanditConfig = Field(default_factory=BanditConfig)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    llm_proxy: bool = True
    serving: ServingSection = Field(default_factory=ServingSection)
    junior_adapters: Literal["shared", "per_persona"] = "shared"
    compare_shared_adapter: bool = False
    reuse_from: list[str] = Field(default_factory=list)

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _held_out_evaluation(self) -> TrainConfig:
        """Refuse a profile whose gather split (phase-1 rollouts: the questions phases 2-4 train on)
        is its evaluation split (the dev samples every effect is measured on). Compared as names,
        stripped and case-folded (``split`` names the file ``<split>.json``)."""
        if self.gather.split.strip().casefold() == self.eval.split.strip().casefold():
            raise ValueError(
                f"gather.split and eval.split are both {self.eval.split!r}: phase 1 would gather the questions the "
                "evaluations score, and phases 2-4 would train on them, so every before/after effect would be "
                "measured on training questions. Set gather.split to the training split (e.g. train) and eval.split "
                "to a held-out split (e.g. dev)")
        return self

    @model_validator(mode="after")
    def _shared_comparison(self) -> TrainConfig:
        """Refuse ``compare_shared_adapter`` where there is nothing to compare it with."""
        if self.compare_shared_adapter and (self.junior_adapters != "per_persona" or not self.eval.junior_limit):
            raise ValueError(
                "compare_shared_adapter compares one adapter per persona with one shared adapter on the juniors-only "
                f"questions; it needs junior_adapters: per_persona (got {self.junior_adapters}) and eval.junior_limit "
                f"> 0 (got {self.eval.junior_limit}). Set both, or remove compare_shared_adapter")
        return self

    _written: dict[str, tuple[int, Any]] = PrivateAttr(default_factory=dict)
    _problems: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _record: ProfileRecord | None = PrivateAttr(default=None)

    @field_validator(*TYPED_SECTIONS, mode="before")
    @classmethod
    def _section_keys_and_types(cls, value: Any, info: Any) -> Any:
        """Unknown keys and wrongly typed values of a section, all of them, before its class is built."""
        if isinstance(value, dict):
            target = cls.model_fields[info.field_name].annotation
            problems = section_problems(target, value, section="", fixed=PIPELINE_SET.get(info.field_name, ()))
            if problems:
                raise SettingProblems(problems)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _keep_as_written(cls, data: Any, handler: Any) -> TrainConfig:
        cfg = handler(data)
        if isinstance(data, dict):
            cfg._written = {k: (id(getattr(cfg, k)), copy.deepcopy(data[k]))
                            for k in TYPED_SECTIONS if isinstance(data.get(k), dict)}
        cfg._record = cfg._make_record()
        return cfg

    def _make_record(self) -> ProfileRecord:
        return ProfileRecord(society_file=self.society_path(),
                             written={k: self.as_written(k) for k in TYPED_SECTIONS},
                             yaml=self.to_yaml())

    @property
    def record(self) -> ProfileRecord:
        """The society file, the sections as written and the ``config.yaml`` text of this profile
        (:class:`ProfileRecord`), worked out when the config was built (or copied)."""
        if self._record is None:  # a copy, or built without validation (model_construct)
            self._record = self._make_record()
        return self._record

    def __copy__(self) -> TrainConfig:
        """pydantic's shallow copy, without :attr:`record`: ``model_copy(update=...)`` sets the new
        fields after copying, so the copy makes its own record when it is first read (a section
        replaced by ``update`` counts as built in code, :meth:`as_written`)."""
        copied = super().__copy__()
        copied._record = None
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> TrainConfig:
        """pydantic's deep copy (``model_copy(deep=True)``), without :attr:`record`, as :meth:`__copy__`."""
        copied = super().__deepcopy__(memo)
        copied._record = None
        return copied

    def as_written(self, section: str) -> dict[str, Any]:
        """A typed section as the profile wrote it: the keys it gave with their values as read (a
        section built in code: its fields that differ from their defaults). What ``config.yaml``
        keeps and the gather fingerprint hashes (``reward``), as before the sections were typed. A
        section replaced since (``model_copy(update=...)``) counts as built in code."""
        value = getattr(self, section)
        built, written = self._written.get(section, (None, None))
        if built == id(value):  # still the section built from that mapping (not replaced by model_copy)
            return copy.deepcopy(written)
        if section in WRITTEN_AS_CHANGES:
            default = type(value)().model_dump()
            return {k: v for k, v in value.model_dump().items() if v != default[k]}
        if hasattr(value, "settings"):
            return value.settings(given_only=True)
        return value.model_dump(mode="json", exclude_unset=True)

    def to_yaml(self) -> str:
        """The profile as ``RUN_DIR/config.yaml`` holds it: every field, the typed sections as written
        (:meth:`as_written`); :meth:`load` reads it back to the same config."""
        data = self.model_dump(mode="json", exclude=set(TYPED_SECTIONS))
        out = {}
        for name in type(self).model_fields:
            out[name] = self.as_written(name) if name in TYPED_SECTIONS else data[name]
        return yaml.safe_dump(out, sort_keys=False)

    def resolved(self) -> dict[str, Any]:
        """Every setting with its default filled in (what ``--dry-run`` shows); ``sft`` / ``grpo``
        with the ``model`` and ``output_dir`` the pipeline gives them, then their own fields, then
        the TRL settings they set (:meth:`training.lora_training.LoraTrainingConfig.settings`: the
        project's values and the profile's; every other TRL setting is TRL's default)."""
        out = {name: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v)
               for name, v in ((n, getattr(self, n)) for n in type(self).model_fields)}
        for name, where in (("sft", PHASE_OUTPUT["sft"][self.junior_adapters]), ("grpo", PHASE_OUTPUT["grpo"])):
            rest = {k: v for k, v in getattr(self, name).settings().items() if k not in ("model", "output_dir")}
            out[name] = {"model": self.base_model, "output_dir": where, **rest}
        return out

    @property
    def section_problems(self) -> list[tuple[str, str]]:
        """``(dotted key, message)`` of each section :meth:`load` with ``check_sections=False`` could
        not build (it holds its defaults instead); empty otherwise."""
        return list(self._problems)

    @classmethod
    def load(cls, path_or_profile: str | Path | None = None, *, check_sections: bool = True) -> TrainConfig:
        """Load a profile name (``smoke``, ``default``) or a YAML path (a run's ``config.yaml`` too).

        Retired ``adapter`` keys (:data:`RETIRED_ADAPTER_KEYS`) are dropped with a warning. With
        ``check_sections=False`` (``--dry-run``) a section with problems does not stop the load:
        it takes its defaults and its problems are listed in :attr:`section_problems`, so the plan
        shows every one of them.

        Raises:
            TrainConfigError: unknown profile, unreadable file or invalid fields, each problem as
                ``<dotted key>: <message>``.
        """
        p = path_or_profile or "default"
        path = PROFILE_DIR / f"{p}.yaml" if str(p) in PROFILES else Path(p)
        if not path.is_file():
            raise TrainConfigError(f"training profile {p!r} not found (looked at {path}); use one of "
                                   f"{', '.join(PROFILES)} or a YAML path (copy {PROFILE_DIR}/default.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: invalid training profile: {e}") from e
        if isinstance(data, dict) and isinstance(data.get("adapter"), dict):
            for key in sorted(set(data["adapter"]) & set(RETIRED_ADAPTER_KEYS)):
                data["adapter"].pop(key)
                logger.warning("%s: adapter.%s is ignored (%s); delete it", path, key, RETIRED_ADAPTER_KEYS[key])
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = problems_of(e)
        bad = {where.split(".")[0] for where, _ in problems}
        if not check_sections and isinstance(data, dict) and bad <= set(TYPED_SECTIONS):
            try:
                cfg = cls.model_validate({k: v for k, v in data.items() if k not in bad})
            except ValidationError as e:
                problems += problems_of(e)
            else:
                cfg._problems = problems
                return cfg
        raise TrainConfigError(f"{path}: invalid training profile: "
                               + "; ".join(f"{where}: {msg}" if where else msg for where, msg in problems))

    def society_path(self) -> Path:
        p = Path(self.society_config)
        return p if p.is_absolute() else Path(__file__).resolve().parent.parent / p
