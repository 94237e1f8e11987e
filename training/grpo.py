"""Phase 3: GRPO of the senior refiner with an execution reward.

TRL style: :class:`SeniorGRPOConfig` beside :class:`SeniorGRPOTrainer`.

Input: the ``prompts`` dataset of ``HierarchicalTraceAdapter.to_rl(...)`` -- a
``datasets.Dataset`` with

=============  =====================================================================================
column         meaning
=============  =====================================================================================
``prompt``     the senior's chat messages up to (not including) its reply (list of
               ``{"role", "content"}``), or a plain text prompt
``gold_sql``   reference SQL of the task
``db_path``    SQLite file the task runs on
``node``       optional: ``"senior_rewrite"`` (default when absent) or ``"senior_check"``
``question``,  optional, ignored by the trainer (kept for logs)
``task_id``...
=============  =====================================================================================

Reward (:class:`training.senior_reward.SeniorReward`, verifiable -- computed by executing SQL on the real
database):

* ``senior_rewrite`` decisions: ``evaluation.metrics.rewards.compute_reward(completion, gold_sql, db_path,
  reward_config).total`` -- the extracted SQL is executed and compared with the gold result (unit
  range [0, 1] with the default :class:`~evaluation.metrics.rewards.RewardConfig`: EX plus partial credit).
* ``senior_check`` decisions (the senior judges the query shown in its prompt): 1.0 when its
  verdict (``society.roles.parse_check``: "THE QUERY IS CORRECT/INCORRECT") agrees with the truth
  -- whether that query's execution matches gold (``evaluation.metrics.ex.execution_match``) -- else 0.0
  (also 0.0 when the reply has no verdict).

GRPO (Shao et al. 2024, "DeepSeekMath", §4.1) samples ``num_generations`` completions per prompt
and uses the group-normalised reward as the advantage; no value model. ``beta=0`` (no KL term,
no reference model: as in DAPO / Dr. GRPO) keeps the CPU run to one model in memory.

Warm start (``warm_start``, :func:`warm_start_senior`): GRPO learns nothing from a group whose
completions all fail, and the base senior rarely repairs a query. So the senior's LoRA is first
fine-tuned (the one SFT trainer, :class:`training.sft.JuniorSFTTrainer`) on repair pairs --
``HierarchicalTraceAdapter.select_repair``: each wrong query of the train rollouts with a rewrite
whose result matches gold (the senior's own, else a fresh draw, else a draw with the gold SQL as a
STaR-style hint, hint removed) -- and GRPO continues that adapter (``init_adapter``). The prefilter
(:func:`training.senior_reward.prefilter_prompts`) reports how many prompts have a pass rate strictly between 0 and 1,
before and after the warm start. Recipe: SFT then RL, as SLM-SQL (Sheng & Xu 2025) for 0.5B models.

Backends:

* CPU (``backend="trl"``): TRL ``GRPOTrainer`` + PEFT LoRA on the dequantised GGUF base
  (:func:`training.checkpoints.hf_checkpoint`), generation with transformers.
* GPU (``backend="verl"``, :func:`training.grpo_verl.train_senior_verl`): Agent Lightning's ``VERL`` algorithm (GRPO
  advantage estimator, vLLM rollouts, FSDP full-parameter actor: see :func:`training.grpo_verl.refuse_adapter_rollouts`
  for why not LoRA, and :class:`training.grpo_verl.ServedPolicyGuard` for the check) drives the *whole society* as the
  LitAgent, and ``agent_match`` keeps only the senior's LLM calls as training transitions; its
  settings are ``configs/verl_senior.yaml``. Not run on the CPU build machine; what runs before Ray
  starts (:func:`build_senior_verl`) and the config against verl's own are checked there by
  ``tests/test_verl_config.py``.

Output (``output_dir``): PEFT adapter, ``sqlsociety_adapter.json``, ``grpo_metrics.json`` (steps,
mean reward and reward std per step, EX of the rewrite completions, seconds per step).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from tools.value_types import SettingProblems, section_problems
from training.lora_training import LoraTrainingConfig
from training.senior_reward import NODES, SeniorReward
from training.sft import (
    JuniorSFTConfig,
    JuniorSFTTrainer,
    SFTResult,
    StepTimer,
    bf16_support,
    save_adapter,
    torch_threads,
    trainer_precision,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VERL_CONFIG",
    "GRPOResult",
    "SeniorGRPOConfig",
    "SeniorGRPOTrainer",
    "warm_start_senior",
    "warm_start_sft_config",
]

#: The shipped VERL settings for the GPU path.
DEFAULT_VERL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "verl_senior.yaml"


class SeniorGRPOConfig(LoraTrainingConfig):
    """Settings of :class:`SeniorGRPOTrainer` (and of :func:`training.grpo_verl.train_senior_verl`): the ``grpo:``
    section of a training profile: the project's own fields below and the shared LoRA ones
    (``model``, ``lora_*``, ``target_modules``, ``num_threads``) of
    :class:`training.lora_training.LoraTrainingConfig`, and every setting of TRL's ``GRPOConfig``
    under its own name (``max_steps``, ``num_generations``, ``temperature``, ``beta``,
    ``loss_type``, ...), read as attributes.

    TRL settings with a project value (:attr:`TRL_DEFAULTS`, besides the base's): ``output_dir``
    ``runs/grpo/senior`` (the pipeline sets it), ``max_steps`` 4 (each step = ``prompts_per_step``
    prompts x ``num_generations``), ``learning_rate`` 5e-5 (the LoRA weights), ``num_generations``
    2 (the GRPO group, >= 2), ``max_completion_length`` 96 new tokens, ``beta`` 0 (no KL term, no
    reference model: the CPU run keeps one model in memory). The others are TRL's (``temperature``,
    ``top_p``, ``epsilon``, ``num_iterations``, ``scale_rewards``, ...). The trainer derives
    ``per_device_train_batch_size`` (``prompts_per_step x num_generations``), ``bf16`` (where
    :func:`training.sft.bf16_support` says so: a CUDA GPU that has it, a CPU with native bf16 dot
    products), ``use_cpu`` and, with ``stop``, ``generation_kwargs``; a TRL setting given in the
    section wins over them.

    Attributes:
        prompts_per_step: prompts per optimizer step.
        max_prompt_length: prompts longer than this (tokens, after the chat template) are dropped
            with a warning rather than truncated (a cut schema makes the reward meaningless).
        lora_dropout: PEFT LoRA dropout (0 here; the other LoRA fields are the base's).
        backend: ``"auto"`` (``verl`` when CUDA and verl are present, else ``trl``; see
            :func:`training.run_plan.resolve_backend`), ``"trl"`` (CPU/GPU, this process:
            :class:`SeniorGRPOTrainer` runs ``auto`` as ``trl``) or ``"verl"`` (GPU, see
            :func:`training.grpo_verl.train_senior_verl`).
        verl_config: YAML of the VERL path (default ``configs/verl_senior.yaml``).
        agent_match: regex on agent (LangGraph node) names whose LLM calls VERL trains on.
        senior_alias: the society's model alias of the senior (bound to VERL's served policy).
        n_runners: Agent Lightning runners for the VERL path.
        prefilter_samples: k > 1 -- before training, sample k completions per prompt with the
            served base model and keep only prompts whose rewards differ
            (:func:`training.senior_reward.prefilter_prompts`, DAPO's dynamic sampling done up front;
            the pipeline runs it, and stops sampling the policy GRPO starts from once it has the
            ``max_steps x prompts_per_step`` prompts GRPO trains on); 0 = train on every prompt.
        stop: the served senior's stop strings (its role's ``sampling.stop``). Generation stops at
            them (transformers' ``stop_strings``, or vLLM's ``stop`` with TRL's ``use_vllm``), so
            tokens after the SQL block are never sampled and stay out of the loss; the reward also
            cuts each completion before the first of them, as the served senior's reply is cut.
            None or empty: completions run to EOS or ``max_completion_length``.
        warm_start: None (off) or settings of :class:`training.sft.JuniorSFTConfig` for a
            supervised warm start of the senior on repair pairs before GRPO
            (``HierarchicalTraceAdapter.select_repair``, :func:`warm_start_senior`; the pipeline
            runs it, TRL's ``SFTConfig`` settings included); ``{}`` takes the SFT defaults. The
            LoRA settings default to this config's (``lora_r``, ``lora_alpha``, ``lora_dropout``,
            ``target_modules``, ``seed``), so GRPO continues the same adapter. SLM-SQL's recipe:
            SFT, then GRPO (Sheng & Xu 2025).
        warm_start_samples: k >= 1 -- draws of the served senior per wrong query that no logged
            senior reply fixed: k unhinted, then (if none matched) k with the gold SQL as a hint.
        warm_start_cases: at most this many wrong queries become repair cases (and GRPO prompts):
            the logged senior inputs first, then a random draw (``seed``) of the juniors' wrong candidates
            (:func:`training.adapter.draw_repair_cases`); None = all of them. A store of 1,000
            juniors-only rollouts holds ~1,500 (~13 s each to repair on 2 CPU cores, and the
            prefilter samples each again before and after the warm start), so a CPU profile caps it.
        init_adapter: a PEFT LoRA directory GRPO starts from and trains further (e.g. the warm
            start's); its own LoRA settings then apply and the ``lora_*`` fields are not used.
            None: a fresh LoRA.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): an unknown or wrongly typed key, a
    value out of range (``num_generations < 2``, a ``max_steps``, ``max_completion_length``,
    ``num_iterations``, ``prompts_per_step`` or ``max_prompt_length`` below 1, ``temperature <= 0``),
    a ``scale_rewards`` TRL does not read (:attr:`TRL_CHOICES`: ``group``, ``batch``, ``none``, true,
    false), a ``warm_start`` setting :class:`training.sft.JuniorSFTConfig` refuses.
    """

    TRL_CLASS: ClassVar[str] = "GRPOConfig"
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "output_dir": "runs/grpo/senior",
        "max_steps": 4,
        "learning_rate": 5e-5,
        "num_generations": 2,
        "max_completion_length": 96,
        "beta": 0.0,
        **LoraTrainingConfig.TRL_DEFAULTS,
    }
    TRL_SHOWN: ClassVar[tuple[str, ...]] = ("temperature", "top_p", "epsilon", "num_iterations", "scale_rewards")
    #: TRL annotates ``scale_rewards`` as ``str``; ``GRPOConfig`` reads these (True as ``"group"``, False as
    #: ``"none"``, in its ``__post_init__``), and ``GRPOTrainer`` refuses any other only when it first
    #: scales rewards (trl 1.16).
    TRL_CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {"scale_rewards": ("group", "batch", "none", True, False)}

    prompts_per_step: int = 1
    max_prompt_length: int = 1024
    lora_dropout: float = 0.0
    backend: Literal["auto", "trl", "verl"] = "auto"
    verl_config: str = str(DEFAULT_VERL_CONFIG)
    agent_match: str = "senior"
    senior_alias: str = "senior_policy"
    n_runners: int = 4
    stop: tuple[str, ...] | None = None
    prefilter_samples: int = 0
    warm_start: dict[str, Any] | None = None
    warm_start_samples: int = 2
    warm_start_cases: int | None = None
    init_adapter: str | None = None

    @model_validator(mode="after")
    def _grpo_ranges(self) -> SeniorGRPOConfig:
        if self.warm_start is not None:
            wrong = section_problems(JuniorSFTConfig, self.warm_start, "warm_start.", fixed=("model", "output_dir"))
            if wrong:
                raise SettingProblems(wrong)
        if self.warm_start_samples < 1:
            raise ValueError(f"SeniorGRPOConfig.warm_start_samples = {self.warm_start_samples}; use k >= 1")
        if self.warm_start_cases is not None and self.warm_start_cases < 1:
            raise ValueError(f"SeniorGRPOConfig.warm_start_cases = {self.warm_start_cases}; use n >= 1 wrong "
                             "queries, or leave it out for all of them")
        if self.init_adapter is not None and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            raise ValueError(f"SeniorGRPOConfig.init_adapter = {self.init_adapter!r} holds no adapter_config.json; "
                             "point it at a PEFT LoRA directory (e.g. the warm start's) or leave it out")
        if self.prefilter_samples == 1 or self.prefilter_samples < 0:
            raise ValueError(f"SeniorGRPOConfig.prefilter_samples = {self.prefilter_samples}; use 0 (off) or k >= 2")
        generations = self.set_value("num_generations")
        if generations is not None and generations < 2:
            raise ValueError(
                f"SeniorGRPOConfig.num_generations = {generations}; GRPO needs >= 2 completions per prompt"
            )
        for k in ("max_steps", "prompts_per_step", "max_completion_length", "max_prompt_length", "num_iterations"):
            value = getattr(self, k) if k in type(self).model_fields else self.set_value(k)
            if value is not None and value < 1:
                raise ValueError(f"SeniorGRPOConfig.{k} must be >= 1, got {value}")
        temperature = self.set_value("temperature")
        if temperature is not None and not temperature > 0:
            raise ValueError("SeniorGRPOConfig.temperature must be > 0 (GRPO needs diverse samples)")
        if self.stop is not None and not all(self.stop):
            raise ValueError(f"SeniorGRPOConfig.stop = {self.stop!r}; give a list of non-empty strings")
        return self


@dataclass
class GRPOResult:
    """What a GRPO run left behind.

    Attributes:
        adapter_dir: the PEFT adapter directory.
        metrics_path: ``grpo_metrics.json``.
        prompts: prompts trained on (after the length filter).
        steps: optimizer steps (> 0).
        rewards: mean reward of each logged step's completions (in the reward's range).
        reward_std: the matching within-batch standard deviations.
        rewrite_ex: EX (0/1 mean) of the ``senior_rewrite`` completions scored, in order of scoring.
        step_seconds: wall seconds per optimizer step; train_seconds: of the whole ``train()``.
    """

    adapter_dir: Path
    metrics_path: Path
    prompts: int
    steps: int
    rewards: list[float]
    reward_std: list[float]
    rewrite_ex: list[float]
    step_seconds: list[float]
    train_seconds: float

    @property
    def mean_step_seconds(self) -> float:
        """Mean wall seconds per optimizer step."""
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else math.nan


class SeniorGRPOTrainer:
    """GRPO with LoRA for the senior, on its logged decision points.

    Args:
        config: :class:`SeniorGRPOConfig` (``backend="trl"`` or ``"auto"``; for VERL use
            :func:`training.grpo_verl.train_senior_verl`).
        train_dataset: ``datasets.Dataset`` / list of dicts with ``prompt``, ``gold_sql``, ``db_path``
            (and optionally ``node``) -- see the module docstring.
        reward_config: :class:`evaluation.metrics.rewards.RewardConfig` of the rewrite reward.

    Raises:
        ValueError: missing columns, no rows, a database file that does not exist, an unknown
            ``node`` value, or every prompt longer than ``max_prompt_length``.
    """

    def __init__(self, config: SeniorGRPOConfig, train_dataset: Any, *, reward_config: Any = None) -> None:
        from datasets import Dataset

        self.config = config
        if config.backend == "verl":
            raise ValueError(
                "SeniorGRPOTrainer runs TRL GRPO; for backend='verl' call training.grpo_verl.train_senior_verl"
            )
        if isinstance(train_dataset, list):
            train_dataset = Dataset.from_list(train_dataset)
        if not isinstance(train_dataset, Dataset):
            raise ValueError(
                f"train_dataset must be a datasets.Dataset or a list of dicts, got {type(train_dataset).__name__}"
            )
        missing = {"prompt", "gold_sql", "db_path"} - set(train_dataset.column_names)
        if missing:
            raise ValueError(
                f"train_dataset lacks column(s) {sorted(missing)} (has {train_dataset.column_names}); build it with "
                "HierarchicalTraceAdapter.to_rl(...).prompts"
            )
        if len(train_dataset) == 0:
            raise ValueError(
                "train_dataset is empty: the store holds no senior decision; gather rollouts with a senior role first"
            )
        for i, p in enumerate(train_dataset["db_path"]):
            if not Path(p).is_file():
                raise ValueError(
                    f"train_dataset row {i}: db_path {p!r} does not exist; point db_path at the task's SQLite file"
                )
        if "node" in train_dataset.column_names:
            bad = sorted({n for n in train_dataset["node"] if n not in NODES})
            if bad:
                raise ValueError(f"train_dataset has node value(s) {bad}; expected one of {NODES}")
        keep = [c for c in ("prompt", "gold_sql", "db_path", "node") if c in train_dataset.column_names]
        self.dataset = train_dataset.select_columns(keep)
        self.reward = SeniorReward(reward_config, stop=config.stop)
        self.dropped_long = 0

    def _filter_long(self, tok: Any) -> Any:
        limit = self.config.max_prompt_length

        def n_tokens(p: Any) -> int:
            if isinstance(p, list):
                ids = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            return len(tok(str(p))["input_ids"])

        keep = [i for i, p in enumerate(self.dataset["prompt"]) if n_tokens(p) <= limit]
        self.dropped_long = len(self.dataset) - len(keep)
        if not keep:
            raise ValueError(
                f"every senior prompt is longer than max_prompt_length={limit} tokens; raise it or use a compact "
                "schema"
            )
        if self.dropped_long:
            logger.warning(
                "GRPO: dropped %d of %d senior prompts longer than %d tokens",
                self.dropped_long,
                len(self.dataset),
                limit,
            )
        return self.dataset.select(keep)

    def _args(self) -> Any:
        """TRL's ``GRPOConfig``: the project's values for TRL settings (``TRL_DEFAULTS``), what this
        trainer derives (one step's batch = ``prompts_per_step x num_generations`` completions,
        bf16 where :func:`training.sft.bf16_support` says so -- a CUDA GPU that has it, or a CPU with
        native bf16 dot products --, ``use_cpu``, generation stopping at ``stop``), then the TRL
        settings the config was given over all of it."""
        import torch
        from trl import GRPOConfig

        cfg = self.config
        cuda = torch.cuda.is_available()
        bf16, _ = bf16_support()
        kw = {
            **cfg.TRL_DEFAULTS,
            "per_device_train_batch_size": cfg.prompts_per_step * cfg.num_generations,
            "bf16": bf16,
            "use_cpu": not cuda,
        }
        trl_args = dict(cfg.trl_args)
        if cfg.stop:  # generation stops at the senior's stop strings; the profile's own generation_kwargs win
            key = "stop" if trl_args.get("use_vllm") else "stop_strings"
            kw["generation_kwargs"] = {key: list(cfg.stop), **(trl_args.pop("generation_kwargs", None) or {})}
        return GRPOConfig(**{**kw, **trl_args})  # the profile's TRL settings win

    def train(self) -> GRPOResult:
        """Run GRPO, save the adapter and ``grpo_metrics.json``; return a :class:`GRPOResult`.

        Raises:
            RuntimeError: no optimizer step was taken.
        """
        import torch
        from peft import LoraConfig
        from trl import GRPOTrainer

        from training.checkpoints import load_for_training

        cfg = self.config
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        args = self._args()
        precision, reason, base_dtype = trainer_precision(args.bf16, cfg.trl_args)  # as the SFT trainer
        cuda = torch.cuda.is_available()
        model, tok = load_for_training(cfg.model, dtype=base_dtype)  # a LoRA from init_adapter stays float32
        tok.padding_side = "left"  # generation pads on the left
        data = self._filter_long(tok)
        peft_config: Any = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
        )
        if cfg.init_adapter:  # continue a trained LoRA (TRL takes a PeftModel without a peft_config)
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
            peft_config = None
        timer = StepTimer.make()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[self.reward],
            args=args,
            train_dataset=data,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[timer],
        )
        if cfg.stop and not trainer.args.use_vllm:
            _stop_at_strings(trainer, tok)
        prev_threads = torch.get_num_threads()
        threads = torch_threads(cfg.num_threads) if not cuda else prev_threads
        torch.set_num_threads(threads)
        logger.info("GRPO: %s (%s), %d torch threads", precision, reason, threads)
        t0 = time.perf_counter()
        try:
            trainer.train()
        finally:
            torch.set_num_threads(prev_threads)
        train_s = time.perf_counter() - t0
        steps = save_adapter(
            trainer, out, {"method": "grpo", "role": "senior", "base_model": cfg.model},
            {"prompts": len(data), "init_adapter": cfg.init_adapter},
            no_step="GRPO took no optimizer step; check max_steps and the dataset",
        )
        hist = [h for h in trainer.state.log_history if "reward" in h]
        rewards = [float(h["reward"]) for h in hist]
        reward_std = [float(h.get("reward_std", float("nan"))) for h in hist]
        rewrite_ex = [r["ex"] for r in self.reward.records if r["ex"] is not None]
        result = GRPOResult(
            adapter_dir=out,
            metrics_path=out / "grpo_metrics.json",
            prompts=len(data),
            steps=steps,
            rewards=rewards,
            reward_std=reward_std,
            rewrite_ex=rewrite_ex,
            step_seconds=[round(s, 4) for s in timer.seconds],
            train_seconds=round(train_s, 3),
        )
        result.metrics_path.write_text(json.dumps({
            "config": cfg.settings(),
            "prompts": result.prompts,
            "dropped_long_prompts": self.dropped_long,
            "steps": steps,
            "rewards": rewards,
            "reward_std": reward_std,
            "completions_scored": len(self.reward.records),
            "completions_with_text_after_stop": sum(bool(r.get("after_stop_chars")) for r in self.reward.records),
            "rewrite_ex_mean": (sum(rewrite_ex) / len(rewrite_ex)) if rewrite_ex else None,
            "step_seconds": result.step_seconds,
            "mean_step_seconds": result.mean_step_seconds,
            "train_seconds": result.train_seconds,
            "threads": threads,
            "precision": precision,
            "precision_reason": reason,
            "log_history": trainer.state.log_history,
        }, indent=1, default=str))
        return result


def _stop_at_strings(trainer: Any, tok: Any) -> None:
    """Make TRL's transformers generation honour ``generation_kwargs["stop_strings"]``.

    transformers' ``generate`` builds its stop-string criterion only when it is handed the
    tokenizer, which TRL's GRPOTrainer does not pass; the policy model's ``generate`` gets it bound
    here. A sequence that stopped is padded to the batch's length; TRL masks a completion after its
    first EOS id, so the pad id is added to the trainer's EOS ids when it is not one already (it
    is for Qwen2.5 and SmolLM2).
    """
    import functools

    model = trainer.model
    model.generate = functools.partial(model.generate, tokenizer=tok)
    pad = tok.pad_token_id
    ids = list(getattr(trainer, "eos_token_ids", None) or [])
    if pad is not None and ids and pad not in ids:
        trainer.eos_token_ids = [*ids, pad]


# ============================================================================ warm start (SFT on repair pairs)


def warm_start_sft_config(config: SeniorGRPOConfig, output_dir: str | Path) -> JuniorSFTConfig:
    """The SFT settings of the senior's warm start: this GRPO config's LoRA shape and seed
    (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``seed``), then
    ``config.warm_start`` over them, with ``model`` and ``output_dir`` set here.

    Raises:
        ValueError: ``config.warm_start`` is None (no warm start configured), or a setting
            :class:`training.sft.JuniorSFTConfig` refuses.
    """
    if config.warm_start is None:
        raise ValueError("SeniorGRPOConfig.warm_start is None: no warm start is configured (set grpo.warm_start: {})")
    lora = {"lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": config.target_modules, "seed": config.seed}
    return JuniorSFTConfig(**{**lora, **config.warm_start, "model": config.model, "output_dir": str(output_dir)})


def warm_start_senior(repairs: Any, config: SeniorGRPOConfig, output_dir: str | Path) -> SFTResult:
    """Supervised warm start of the senior: LoRA SFT (:class:`training.sft.JuniorSFTTrainer`, the
    one SFT trainer, loss on the reply only) on its repair conversations, so that GRPO starts from a
    policy that sometimes succeeds (GRPO's advantage is zero on a group that never does). The
    adapter's ``sqlsociety_adapter.json`` is marked ``role: senior``, ``method: sft-warm-start``.

    Args:
        repairs: the ``dataset`` of ``HierarchicalTraceAdapter.select_repair`` (a ``messages``
            column: the senior's rewrite prompt and a reply that matches gold by EX), or a list of
            such rows.
        config: the GRPO config (its ``warm_start`` settings and LoRA shape, see
            :func:`warm_start_sft_config`).
        output_dir: where the adapter goes; pass it on as ``SeniorGRPOConfig.init_adapter``.

    Returns:
        :class:`training.sft.SFTResult`.

    Raises:
        ValueError: no warm start configured, or no repair rows (the trainer's message).
    """
    sft_config = warm_start_sft_config(config, output_dir)
    res = JuniorSFTTrainer(sft_config, repairs).train()
    card = Path(res.adapter_dir) / "sqlsociety_adapter.json"
    if card.is_file():
        meta = json.loads(card.read_text())
        card.write_text(json.dumps({**meta, "role": "senior", "method": "sft-warm-start"}, indent=1))
    return res
