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

Reward (:class:`SeniorReward`, verifiable -- computed by executing SQL on the real database):

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
(:func:`prefilter_prompts`) reports how many prompts have a pass rate strictly between 0 and 1,
before and after the warm start. Recipe: SFT then RL, as SLM-SQL (Sheng & Xu 2025) for 0.5B models.

Backends:

* CPU (``backend="trl"``): TRL ``GRPOTrainer`` + PEFT LoRA on the dequantised GGUF base
  (:func:`training.checkpoints.hf_checkpoint`), generation with transformers.
* GPU (``backend="verl"``, :func:`train_senior_verl`): Agent Lightning's ``VERL`` algorithm (GRPO
  advantage estimator, vLLM rollouts, FSDP full-parameter actor: see :func:`refuse_adapter_rollouts`
  for why not LoRA, and :class:`ServedPolicyGuard` for the check) drives the *whole society* as the
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from evaluation.metrics.ex import execution_match
from evaluation.metrics.rewards import RewardConfig, compute_reward
from evaluation.metrics.sql_text import extract_sql
from tools.value_types import SettingProblems, section_problems
from training.lora_training import LoraTrainingConfig
from training.sft import (
    JuniorSFTConfig,
    JuniorSFTTrainer,
    SFTResult,
    StepTimer,
    save_adapter,
    torch_threads,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SeniorGRPOConfig",
    "SeniorGRPOTrainer",
    "GRPOResult",
    "SeniorReward",
    "PrefilterResult",
    "prefilter_prompts",
    "openai_sampler",
    "warm_start_sft_config",
    "warm_start_senior",
    "load_verl_config",
    "senior_verl_agent",
    "bind_policy_resource",
    "senior_verl_adapter",
    "build_senior_verl",
    "train_senior_verl",
    "resolve_backend",
    "DEFAULT_VERL_CONFIG",
    "refuse_adapter_rollouts",
    "ServedPolicyGuard",
    "PolicyNotSyncedError",
    "sync_checked_trainer_cls",
    "verl_trained_model",
    "openai_prompt_logprobs",
    "completion_prompt_logprobs",
    "logprob_shift",
    "SYNC_PROBE_PROMPT",
]

#: The shipped VERL settings for the GPU path.
DEFAULT_VERL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "verl_senior.yaml"

NODES = ("senior_rewrite", "senior_check")


class SeniorGRPOConfig(LoraTrainingConfig):
    """Settings of :class:`SeniorGRPOTrainer` (and of :func:`train_senior_verl`): the ``grpo:``
    section of a training profile. The shared LoRA-training fields are
    :class:`training.lora_training.LoraTrainingConfig`'s (``trl_args``: TRL's ``GRPOConfig``).

    Attributes:
        model: base model (embedded alias, ``.gguf`` path or HF directory).
        output_dir: adapter + metrics directory (created).
        max_steps: optimizer steps (each step = ``prompts_per_step`` prompts x ``num_generations``).
        learning_rate: AdamW learning rate for the LoRA weights.
        num_generations: completions sampled per prompt (the GRPO group, >= 2).
        prompts_per_step: prompts per optimizer step.
        max_completion_length: new tokens per completion.
        max_prompt_length: prompts longer than this (tokens, after the chat template) are dropped
            with a warning rather than truncated (a cut schema makes the reward meaningless).
        temperature, top_p: sampling of the group (diversity is what GRPO learns from).
        beta: KL coefficient to the base (0 = no reference model).
        epsilon: PPO clip range of the token ratio.
        num_iterations: optimisation passes per generated batch (mu in the GRPO paper).
        scale_rewards: TRL's reward scaling (``"group"`` std, ``"batch"`` or ``"none"``).
        lora_r, lora_alpha, lora_dropout, target_modules: PEFT LoRA.
        logging_steps: log every N steps (1 = per-step rewards).
        num_threads: CPU threads for torch; None -> ``training.sft.torch_threads`` (load-adaptive).
        gradient_checkpointing: recompute activations in the backward pass (saves memory on a
            GPU; off by default: on the CPU it only costs time for these small models).
        seed: sampling/data/LoRA-init seed.
        backend: ``"auto"`` (``verl`` when CUDA and verl are present, else ``trl``; see
            :func:`resolve_backend`), ``"trl"`` (CPU/GPU, this process: :class:`SeniorGRPOTrainer`
            runs ``auto`` as ``trl``) or ``"verl"`` (GPU, see :func:`train_senior_verl`).
        verl_config: YAML of the VERL path (default ``configs/verl_senior.yaml``).
        agent_match: regex on agent (LangGraph node) names whose LLM calls VERL trains on.
        senior_alias: the society's model alias of the senior (bound to VERL's served policy).
        n_runners: Agent Lightning runners for the VERL path.
        prefilter_samples: k > 1 -- before training, sample k completions per prompt with the
            served base model and keep only prompts whose rewards differ (:func:`prefilter_prompts`,
            DAPO's dynamic sampling done up front; the pipeline runs it); 0 = train on every prompt.
        stop: the served senior's stop strings (its role's ``sampling.stop``). Generation stops at
            them (transformers' ``stop_strings``, or vLLM's ``stop`` with TRL's ``use_vllm``), so
            tokens after the SQL block are never sampled and stay out of the loss; the reward also
            cuts each completion before the first of them, as the served senior's reply is cut.
            None or empty: completions run to EOS or ``max_completion_length``.
        trl_args: any other keyword argument of TRL's ``GRPOConfig`` (e.g. ``optim``,
            ``max_grad_norm``, ``loss_type``), applied over what the fields above set (TRL backend);
            checked against ``GRPOConfig`` when given (see :func:`training.lora_training.check_trl_args`).
        warm_start: None (off) or keyword arguments of :class:`training.sft.JuniorSFTConfig` for a
            supervised warm start of the senior on repair pairs before GRPO
            (``HierarchicalTraceAdapter.select_repair``, :func:`warm_start_senior`; the pipeline
            runs it); ``{}`` takes the SFT defaults. The LoRA settings default to this config's
            (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``seed``), so GRPO
            continues the same adapter. SLM-SQL's recipe: SFT, then GRPO (Sheng & Xu 2025).
        warm_start_samples: k >= 1 -- draws of the served senior per wrong query that no logged
            senior reply fixed: k unhinted, then (if none matched) k with the gold SQL as a hint.
        init_adapter: a PEFT LoRA directory GRPO starts from and trains further (e.g. the warm
            start's); its own LoRA settings then apply and the ``lora_*`` fields are not used.
            None: a fresh LoRA.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): an unknown or wrongly typed key, a
    value out of range, a ``warm_start`` key :class:`training.sft.JuniorSFTConfig` does not take,
    or a bad ``trl_args``.
    """

    TRL_CLASS: ClassVar[str] = "GRPOConfig"

    output_dir: str = "runs/grpo/senior"
    max_steps: int = 4
    learning_rate: float = 5e-5
    num_generations: int = 2
    prompts_per_step: int = 1
    max_completion_length: int = 96
    max_prompt_length: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    num_iterations: int = 1
    scale_rewards: Literal["group", "batch", "none"] = "group"
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
    init_adapter: str | None = None

    @model_validator(mode="after")
    def _grpo_ranges(self) -> SeniorGRPOConfig:
        if self.warm_start is not None:
            wrong = section_problems(JuniorSFTConfig, self.warm_start, "warm_start.", fixed=("model", "output_dir"))
            if wrong:
                raise SettingProblems(wrong)
        if self.warm_start_samples < 1:
            raise ValueError(f"SeniorGRPOConfig.warm_start_samples = {self.warm_start_samples}; use k >= 1")
        if self.init_adapter is not None and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            raise ValueError(f"SeniorGRPOConfig.init_adapter = {self.init_adapter!r} holds no adapter_config.json; "
                             "point it at a PEFT LoRA directory (e.g. the warm start's) or leave it out")
        if self.prefilter_samples == 1 or self.prefilter_samples < 0:
            raise ValueError(f"SeniorGRPOConfig.prefilter_samples = {self.prefilter_samples}; use 0 (off) or k >= 2")
        if self.num_generations < 2:
            raise ValueError(
                f"SeniorGRPOConfig.num_generations = {self.num_generations}; GRPO needs >= 2 completions per prompt"
            )
        for k in ("max_steps", "prompts_per_step", "max_completion_length", "max_prompt_length", "num_iterations"):
            if getattr(self, k) < 1:
                raise ValueError(f"SeniorGRPOConfig.{k} must be >= 1, got {getattr(self, k)}")
        if not self.temperature > 0:
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


def _text(completion: Any) -> str:
    """A TRL completion (message list for chat prompts, string otherwise) -> its text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def _checked_sql(prompt: Any) -> str | None:
    """The query a ``senior_check`` prompt shows (its last user message's SQL block)."""
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        text = str(users[-1].get("content", "")) if users else ""
    else:
        text = str(prompt)
    return extract_sql(text)


class SeniorReward:
    """The senior's verifiable reward, as a TRL reward function.

    Called by TRL as ``reward(prompts=..., completions=..., gold_sql=[...], db_path=[...],
    node=[...], **kw)``, one entry per completion; returns one float per completion (see the module
    docstring for the two node types). ``records`` keeps every scored completion
    (``node``, ``reward``, ``ex``) for the metrics file.

    Args:
        reward_config: :class:`evaluation.metrics.rewards.RewardConfig` for rewrite decisions
            (default: unit-normalised EX + partial credit, range [0, 1]).
        stop: stop strings; each completion is cut before the first one before scoring
            (see :attr:`SeniorGRPOConfig.stop`).
    """

    __name__ = "senior_execution_reward"

    def __init__(self, reward_config: Any = None, stop: Sequence[str] | None = None) -> None:
        self.reward_config = reward_config or RewardConfig()
        self.stop = tuple(stop or ())
        self.records: list[dict[str, Any]] = []

    def score(
        self, prompt: Any, completion: Any, gold_sql: str, db_path: str, node: str | None = None
    ) -> tuple[float, float | None]:
        """(reward, ex) of one completion; ``ex`` is None for check decisions."""
        # society.llm / society.roles import LangChain: only when stop strings or check decisions
        # need them, so the reward also runs where only the training stack is installed.
        node = node or "senior_rewrite"
        text = _text(completion)
        if self.stop:
            from society.llm import cut_at_stop

            text = cut_at_stop(text, self.stop)  # as the served senior's reply
        if node == "senior_check":
            from society.roles import parse_check

            verdict = parse_check(text)
            if verdict is None:
                return 0.0, None
            truth = execution_match(db_path, _checked_sql(prompt), gold_sql).match
            return (1.0 if (verdict == "correct") == truth else 0.0), None
        rb = compute_reward(text, gold_sql, db_path, self.reward_config)
        return float(rb.total), float(rb.ex)

    def __call__(self, prompts: list[Any], completions: list[Any], gold_sql: list[str], db_path: list[str],
                 node: list[str] | None = None, **kwargs: Any) -> list[float]:
        out: list[float] = []
        exs: list[float] = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            n = node[i] if node is not None else None
            r, ex = self.score(p, c, gold_sql[i], db_path[i], n)
            out.append(r)
            if ex is not None:
                exs.append(ex)
            self.records.append({"node": n or "senior_rewrite", "reward": r, "ex": ex,
                                 "after_stop_chars": chars_after_stop(_text(c), self.stop)})
        log_metric = kwargs.get("log_metric")
        if exs and callable(log_metric):
            log_metric("rewrite_ex", sum(exs) / len(exs))
        return out


@dataclass
class PrefilterResult:
    """What :func:`prefilter_prompts` kept.

    Attributes:
        dataset: the prompts whose sampled rewards differ (a ``datasets.Dataset``, same columns).
        n_in / n_kept: prompts before / after the filter.
        k: completions sampled per prompt.
        seconds: wall time of the sampling.
        mean_reward: mean reward of all sampled completions, in the reward's range ([0, 1] by default).
        kept_ids: row indices (into the input) of the kept prompts.
        pass_rates: per input prompt, the share of its k completions that pass: a rewrite whose SQL
            matches gold by EX, a check whose verdict is right (reward 1).
        n_pass_band: prompts whose pass rate is strictly between 0 and 1 (some completions pass,
            some do not): the prompts with an EX advantage to follow. A subset of the kept ones
            (a pass and a fail always differ in reward); the rest of the kept ones differ only in
            partial credit.
        mean_pass: mean of ``pass_rates``.
    """

    dataset: Any
    n_in: int
    n_kept: int
    k: int
    seconds: float
    mean_reward: float
    kept_ids: list[int]
    pass_rates: list[float] = field(default_factory=list)

    @property
    def n_pass_band(self) -> int:
        return sum(0.0 < r < 1.0 for r in self.pass_rates)

    @property
    def mean_pass(self) -> float:
        return sum(self.pass_rates) / len(self.pass_rates) if self.pass_rates else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"n_in": self.n_in, "n_kept": self.n_kept, "n_pass_band": self.n_pass_band, "k": self.k,
                "seconds": round(self.seconds, 1), "mean_reward": self.mean_reward,
                "mean_pass": round(self.mean_pass, 4),
                "n_never_pass": sum(r == 0.0 for r in self.pass_rates),
                "n_always_pass": sum(r == 1.0 for r in self.pass_rates)}


def prefilter_prompts(
    dataset: Any, sample: Any, reward: SeniorReward, k: int, *, max_workers: int = 4
) -> PrefilterResult:
    """Dynamic sampling done before training: draw ``k`` completions per prompt with the served
    policy and keep only the prompts whose rewards differ.

    A GRPO group whose completions all get the same reward has zero advantage and contributes no
    gradient (with ``scale_rewards: group`` a tiny spread is even blown up to full size); DAPO
    (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", dynamic
    sampling) drops such groups during training. TRL's ``GRPOTrainer`` has no hook for that, so
    here the base policy (the model the senior starts from, as served) is sampled up front and the
    prompts that are always right or always wrong for it are dropped.

    Args:
        dataset: ``datasets.Dataset`` with ``prompt`` (chat messages or text), ``gold_sql``,
            ``db_path`` and optionally ``node`` (see :class:`SeniorGRPOTrainer`).
        sample: ``sample(prompt, k) -> list[str]``: ``k`` completions of one prompt (see
            :func:`openai_sampler`).
        reward: the reward that GRPO will optimise (:class:`SeniorReward`).
        k: completions per prompt, >= 2.
        max_workers: prompts sampled at once (the server's parallel slots decode them together).

    Returns:
        :class:`PrefilterResult`; its ``dataset`` may be empty (every group had equal rewards).

    Raises:
        ValueError: ``k`` < 2.
    """
    from concurrent.futures import ThreadPoolExecutor

    if k < 2:
        raise ValueError(f"prefilter needs k >= 2 completions per prompt to compare rewards, got {k}")
    rows = list(dataset)
    t0 = time.monotonic()

    def one(row: dict[str, Any]) -> list[tuple[float, float | None]]:
        texts = sample(row["prompt"], k)
        return [reward.score(row["prompt"], t, row["gold_sql"], row["db_path"], row.get("node")) for t in texts]

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        scored = list(pool.map(one, rows))
    scores = [[r for r, _ in sc] for sc in scored]
    passes = [[(ex == 1.0) if ex is not None else (r == 1.0) for r, ex in sc] for sc in scored]
    kept = [i for i, sc in enumerate(scores) if len(sc) >= 2 and max(sc) - min(sc) > 1e-9]
    flat = [x for sc in scores for x in sc]
    return PrefilterResult(
        dataset=dataset.select(kept), n_in=len(rows), n_kept=len(kept), k=k, seconds=time.monotonic() - t0,
        mean_reward=sum(flat) / len(flat) if flat else 0.0, kept_ids=kept,
        pass_rates=[sum(p) / len(p) if p else 0.0 for p in passes],
    )


def openai_sampler(endpoint: Any, *, temperature: float, top_p: float, max_tokens: int,
                   stop: Sequence[str] | None = None, seed: int = 0, timeout_s: float = 300.0) -> Any:
    """A ``sample(prompt, k)`` for :func:`prefilter_prompts` over an OpenAI-compatible endpoint.

    Args:
        endpoint: anything with ``base_url``, ``model``, ``api_key`` and ``extra_body`` (a
            ``society.llm.Endpoint``; ``extra_body`` carries e.g. llama-server's LoRA choice).
        temperature, top_p, max_tokens: sampling, as GRPO samples its group.
        stop: stop strings (the served senior's).
        seed: base seed; completion ``j`` of a prompt uses ``seed + j`` (distinct, reproducible draws).
        timeout_s: per request, seconds.

    Returns:
        ``sample(prompt, k) -> list[str]``; ``prompt`` is a list of chat messages or a string.
    """
    from openai import OpenAI

    client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or "sk-no-key", timeout=timeout_s,
                    max_retries=2)

    def sample(prompt: Any, k: int) -> list[str]:
        msgs = ([{"role": m["role"], "content": m["content"]} for m in prompt] if isinstance(prompt, list)
                else [{"role": "user", "content": str(prompt)}])
        out = []
        for j in range(k):
            r = client.chat.completions.create(
                model=endpoint.model, messages=msgs, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                stop=list(stop) if stop else None, seed=seed + j, extra_body=dict(endpoint.extra_body or {}),
            )
            out.append(r.choices[0].message.content or "")
        return out

    return sample


class SeniorGRPOTrainer:
    """GRPO with LoRA for the senior, on its logged decision points.

    Args:
        config: :class:`SeniorGRPOConfig` (``backend="trl"``; for VERL use :func:`train_senior_verl`).
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
                "SeniorGRPOTrainer runs TRL GRPO; for backend='verl' call training.grpo.train_senior_verl"
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
        import torch
        from trl import GRPOConfig

        cfg = self.config
        cuda = torch.cuda.is_available()
        kw = dict(
            output_dir=cfg.output_dir,
            max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
            gradient_accumulation_steps=1,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            beta=cfg.beta,
            epsilon=cfg.epsilon,
            num_iterations=cfg.num_iterations,
            scale_rewards=cfg.scale_rewards,
            logging_steps=cfg.logging_steps,
            save_strategy="no",
            report_to="none",
            seed=cfg.seed,
            bf16=bool(cuda and torch.cuda.is_bf16_supported()),
            fp16=False,
            use_cpu=not cuda,
            lr_scheduler_type="constant",
            gradient_checkpointing=cfg.gradient_checkpointing,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trl_args = dict(cfg.trl_args)
        if cfg.stop:  # generation stops at the senior's stop strings; trl_args' own generation_kwargs win
            key = "stop" if trl_args.get("use_vllm") else "stop_strings"
            kw["generation_kwargs"] = {key: list(cfg.stop), **(trl_args.pop("generation_kwargs", None) or {})}
        return GRPOConfig(**{**kw, **trl_args})  # the profile's trl_args win

    def train(self) -> GRPOResult:
        """Run GRPO, save the adapter and ``grpo_metrics.json``; return a :class:`GRPOResult`.

        Raises:
            RuntimeError: no optimizer step was taken.
        """
        from peft import LoraConfig
        from trl import GRPOTrainer

        from training.checkpoints import load_for_training

        cfg = self.config
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model, tok = load_for_training(cfg.model)
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
            args=self._args(),
            train_dataset=data,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[timer],
        )
        if cfg.stop and not trainer.args.use_vllm:
            _stop_at_strings(trainer, tok)
        import torch

        prev_threads = torch.get_num_threads()
        threads = torch_threads(cfg.num_threads) if not torch.cuda.is_available() else prev_threads
        torch.set_num_threads(threads)
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
            "config": cfg.model_dump(mode="json"),
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
            "log_history": trainer.state.log_history,
        }, indent=1, default=str))
        return result


def chars_after_stop(text: str, stop: Sequence[str]) -> int:
    """How many characters ``text`` has after the earliest of the ``stop`` strings (0 when none occurs).

    A completion generated with stop strings ends at one, so this is 0 for every such completion;
    text after it would be tokens sampled, and trained on, past the served reply's end.

    >>> chars_after_stop("SELECT 1</sql>", ["</sql>"])
    0
    >>> chars_after_stop("SELECT 1</sql>\\nThe end", ["</sql>", "```"])
    8
    >>> chars_after_stop("SELECT 1", ["</sql>"])
    0
    """
    hits = [(i, len(x)) for x in stop if (i := text.find(x)) >= 0]
    if not hits:
        return 0
    i, n = min(hits)
    return len(text) - i - n


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
    res = JuniorSFTTrainer(warm_start_sft_config(config, output_dir), repairs).train()
    card = Path(res.adapter_dir) / "sqlsociety_adapter.json"
    if card.is_file():
        meta = json.loads(card.read_text())
        card.write_text(json.dumps({**meta, "role": "senior", "method": "sft-warm-start"}, indent=1))
    return res


# ============================================================================ GPU: Agent Lightning VERL


def resolve_backend(backend: str) -> str:
    """The GRPO backend to run: ``"auto"`` -> ``"verl"`` when ``torch.cuda.is_available()`` and the
    ``verl`` package is importable, else ``"trl"``; ``"trl"`` as is.

    Raises:
        ValueError: ``backend`` is not ``trl`` / ``verl`` / ``auto``, or ``verl`` is asked for on a
            machine without CUDA or without verl (install ``.[gpu]`` on a GPU machine, or use ``trl``).
    """
    import importlib.util

    if backend not in ("trl", "verl", "auto"):
        raise ValueError(f"grpo backend {backend!r}: use 'trl', 'verl' or 'auto'")
    if backend == "trl":
        return "trl"
    import torch

    cuda = torch.cuda.is_available()
    has_verl = importlib.util.find_spec("verl") is not None
    if backend == "auto":
        return "verl" if cuda and has_verl else "trl"
    if not cuda or not has_verl:
        raise ValueError(f"grpo backend 'verl' needs a CUDA GPU and the verl package (CUDA available: {cuda}, "
                         f"verl installed: {has_verl}); install '.[gpu]' on a GPU machine or set grpo.backend: trl")
    return "verl"


def load_verl_config(
    path: str | Path | None = None,
    *,
    model_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The VERL override dict for ``agl.VERL(config)`` from a YAML file.

    Args:
        path: YAML (default ``configs/verl_senior.yaml``); its keys mirror VERL's
            ``ppo_trainer`` config (``algorithm``, ``data``, ``actor_rollout_ref``, ``trainer``) and
            are merged over Agent Lightning's packaged defaults by ``agl.VERL``.
        model_path: sets ``actor_rollout_ref.model.path`` (a HF directory; use
            :func:`training.checkpoints.hf_checkpoint` to get one from the embedded GGUF).
        overrides: nested dict merged last.

    Raises:
        FileNotFoundError / ValueError: missing file, or a file whose top level is not a mapping,
            or whose ``algorithm.adv_estimator`` is not ``grpo``.
    """
    import yaml

    p = Path(path) if path is not None else DEFAULT_VERL_CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"VERL config {p} does not exist; copy {DEFAULT_VERL_CONFIG}")
    cfg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: the top level must be a mapping of VERL config sections")

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for k, v in b.items():
            a[k] = merge(dict(a.get(k) or {}), v) if isinstance(v, dict) else v
        return a

    if model_path is not None:
        merge(cfg, {"actor_rollout_ref": {"model": {"path": str(model_path)}}})
    if overrides:
        merge(cfg, overrides)
    if (cfg.get("algorithm") or {}).get("adv_estimator") != "grpo":
        raise ValueError(
            f"{p}: algorithm.adv_estimator must be 'grpo' for the senior (got "
            f"{(cfg.get('algorithm') or {}).get('adv_estimator')!r})"
        )
    return cfg


def bind_policy_resource(resources: Any, senior_alias: str) -> dict[str, Any]:
    """Resources with VERL's served policy (``main_llm``) also named ``senior_alias``, so the
    society's senior calls the model being trained; unchanged when there is no ``main_llm``."""
    res = dict(resources or {})
    if "main_llm" in res:
        res[senior_alias] = res["main_llm"]
    return res


def senior_verl_agent(
    society_config: Any,
    *,
    senior_alias: str,
    endpoints: dict[str, tuple[str, str]] | None = None,
    reward: Any = None,
) -> Any:
    """The LitAgent of the VERL path: ``training.agent.SocietyAgent`` with VERL's policy model
    bound to the senior's alias.

    VERL publishes the model it is training as the ``main_llm`` resource (an OpenAI endpoint in
    front of its vLLM workers); the society reads one ``agl.LLM`` resource per model alias, so the
    senior alias is mapped to ``main_llm`` while the juniors/supervisor keep their own servers
    (``endpoints``).
    """
    from training.agent import SocietyAgent

    class SeniorVERLAgent(SocietyAgent):
        def rollout(self, task, resources, rollout):  # noqa: ANN001
            return super().rollout(task, bind_policy_resource(resources, senior_alias), rollout)

    return SeniorVERLAgent(society_config, endpoints=endpoints, reward=reward)


def senior_verl_adapter(agent_match: str | None) -> Any:
    """The trace adapter of the VERL path: Agent Lightning's ``TracerTraceToTriplet`` that keeps
    only the LLM calls made inside agent spans whose name matches ``agent_match`` (a regex; the
    society's LangGraph nodes are the agent spans, so ``"senior"`` keeps ``senior_rewrite`` /
    ``senior_check``; None keeps every call) -- what ``agl.Trainer(adapter={"agent_match": ...})``
    builds. VERL's daemon calls ``adapter.adapt(spans)`` on each finished rollout's spans."""
    from agentlightning.adapter import TracerTraceToTriplet

    return TracerTraceToTriplet(agent_match=agent_match)


# ---------------------------------------------------------------- VERL: rollouts from the policy being trained

#: The fixed prompt whose log-probs under the served policy :class:`ServedPolicyGuard` compares across weight
#: syncs (a senior-style rewrite request; any fixed text works, it only has to stay the same).
SYNC_PROBE_PROMPT = (
    "Rewrite the SQL so that it answers the question.\nQuestion: How many singers are older than 30?\n"
    "SQL: SELECT count(*) FROM singer WHERE age > 30"
)


class PolicyNotSyncedError(RuntimeError):
    """The policy the rollouts are sampled from did not change after a weight sync that followed an
    update of the trained policy: training would go on while every rollout comes from old weights."""


def refuse_adapter_rollouts(cfg: dict[str, Any]) -> None:
    """Refuse a VERL config that would train a LoRA adapter the rollouts never use.

    Agent Lightning 0.3.0's daemon samples every rollout through vLLM's OpenAI server, naming the
    model by ``actor_rollout_ref.model.path`` (``agentlightning/verl/trainer.py``, ``fit``); verl
    0.6.1 gives the adapter to the engine only (``vllm_rollout_spmd.py``: ``add_lora`` under a
    numeric name; ``vllm_async_server.py``: a ``LoRARequest`` only inside its own ``generate``),
    so with ``lora_rank > 0`` the OpenAI requests are answered by the base weights while the adapter
    trains. The GPU path therefore trains the senior with all its parameters (``lora_rank: 0``).

    Raises:
        ValueError: ``actor_rollout_ref.model.lora_rank`` > 0 or ``lora_adapter_path`` is set.

    >>> refuse_adapter_rollouts({"actor_rollout_ref": {"model": {"lora_rank": 0}}})
    >>> refuse_adapter_rollouts({"actor_rollout_ref": {"model": {"lora_rank": 32}}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: actor_rollout_ref.model.lora_rank = 32: Agent Lightning 0.3 samples rollouts ...
    """
    model = (cfg.get("actor_rollout_ref") or {}).get("model") or {}
    rank, adapter = int(model.get("lora_rank") or 0), model.get("lora_adapter_path")
    if rank > 0 or adapter:
        what = f"lora_rank = {rank}" if rank > 0 else f"lora_adapter_path = {adapter!r}"
        raise ValueError(
            f"actor_rollout_ref.model.{what}: Agent Lightning 0.3 samples rollouts through vLLM's OpenAI server "
            "under the base model's name and verl 0.6.1 attaches a LoRA adapter only inside its own generate(), "
            "so the rollouts would come from the base weights while the adapter trains; set "
            "actor_rollout_ref.model.lora_rank: 0 (full-parameter training of the senior, configs/verl_senior.yaml)"
        )


def completion_prompt_logprobs(body: dict[str, Any]) -> list[float]:
    """The prompt tokens' log-probs (natural log, one per token after the first, each <= 0) from an
    OpenAI ``/v1/completions`` answer to ``echo: true, logprobs: 0, max_tokens: 1`` (vLLM's
    shape: ``choices[0].logprobs.token_logprobs`` = prompt tokens, the first ``None``, then the one
    generated token, which is dropped).

    Raises:
        ValueError: the answer carries no prompt log-probs (a server without ``echo`` support).

    >>> completion_prompt_logprobs({"choices": [{"logprobs": {"token_logprobs": [None, -1.5, -0.25, -3.0]}}]})
    [-1.5, -0.25]
    """
    try:
        values = body["choices"][0]["logprobs"]["token_logprobs"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"no prompt log-probs in the completion answer ({type(e).__name__}: {e})") from e
    prompt = [float(v) for v in (values or [])[:-1] if v is not None]
    if not prompt:
        raise ValueError("the completion answer has no prompt log-probs (does the server support echo?)")
    return prompt


def openai_prompt_logprobs(base_url: str, model: str, prompt: str, *, timeout_s: float = 60.0) -> list[float]:
    """Log-probs of ``prompt``'s tokens under the policy an OpenAI-compatible server (vLLM) serves as
    ``model``: one ``POST {base_url}/completions`` with ``echo``, ``logprobs: 0``, ``max_tokens: 1``,
    ``temperature: 0`` (see :func:`completion_prompt_logprobs`). Not run here: no vLLM on the CPU
    machine (its answer's shape is taken from vLLM's OpenAI completions API).

    Raises:
        requests.HTTPError / requests.ConnectionError: the server did not answer with 2xx.
        ValueError: the answer has no prompt log-probs.
    """
    import requests

    r = requests.post(f"{base_url.rstrip('/')}/completions", timeout=timeout_s, json={
        "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0})
    r.raise_for_status()
    return completion_prompt_logprobs(r.json())


def logprob_shift(before: Sequence[float], after: Sequence[float]) -> float:
    """The largest absolute change of a token's log-prob between two probes of the same prompt
    (nats, >= 0; 0.0 means the served policy gave bit-identical log-probs).

    Raises:
        ValueError: the probes are empty or of different lengths (different prompts or tokenisers).

    >>> logprob_shift([-1.0, -2.0], [-1.0, -2.5])
    0.5
    >>> logprob_shift([-1.0, -2.0], [-1.0, -2.0])
    0.0
    """
    if not before or len(before) != len(after):
        raise ValueError(f"log-prob probes of {len(before)} and {len(after)} tokens: not the same prompt")
    return max(abs(float(a) - float(b)) for a, b in zip(before, after))


class ServedPolicyGuard:
    """Refuses to go on when the served policy did not change after a weight sync that followed an
    update (:class:`PolicyNotSyncedError`): the silent case of training one set of weights while
    the rollouts come from another.

    ``probe()`` returns the log-probs of a fixed prompt under the policy the rollouts are sampled
    from (on the GPU path :func:`openai_prompt_logprobs` against VERL's vLLM server). The trainer
    calls :meth:`note_update` after each optimiser step and :meth:`after_sync` after each weight
    sync (:meth:`wrap` does the latter around a ``wake_up``). A sync with no update since the last
    probe only sets the reference; after an update the probe must differ from it by more than
    ``min_shift`` nats (default 0: any change passes, only bit-identical log-probs are refused -- a
    sync that reached the server changes at least some logits; a sync that was dropped changes none,
    as long as the server answers one fixed request deterministically).

    Attributes:
        shifts: ``logprob_shift`` of each checked sync, in order.
    """

    def __init__(self, probe: Any, *, min_shift: float = 0.0) -> None:
        if min_shift < 0:
            raise ValueError(f"min_shift = {min_shift}: must be >= 0 (nats)")
        self.probe, self.min_shift = probe, float(min_shift)
        self.shifts: list[float] = []
        self._reference: list[float] | None = None
        self._updates = 0

    def note_update(self) -> None:
        """The trained policy took an optimiser step (its weights changed since the last sync)."""
        self._updates += 1

    def after_sync(self) -> float | None:
        """Probe the served policy after a weight sync; the shift since the reference, or None when
        no update came between (the probe becomes the new reference).

        Raises:
            PolicyNotSyncedError: an update came between and the shift is <= ``min_shift``.
        """
        now = list(self.probe())
        updates, self._updates = self._updates, 0
        shift = None
        if self._reference is not None and updates:
            shift = logprob_shift(self._reference, now)
            self.shifts.append(shift)
            if shift <= self.min_shift:
                raise PolicyNotSyncedError(
                    f"after {updates} update(s) of the trained policy and a weight sync, the served policy's "
                    f"log-probs of a fixed prompt moved by {shift:.3g} nats (<= {self.min_shift:g}): the rollouts "
                    "are not sampled from the weights being trained (a LoRA adapter the server does not apply, or "
                    "a sync that did not reach it); stopping instead of training on them"
                )
        self._reference = now
        return shift

    def wrap(self, wake_up: Any) -> Any:
        """``wake_up`` (a weight sync: verl's ``AgentLoopManager.wake_up``) followed by :meth:`after_sync`."""

        def synced(*args: Any, **kwargs: Any) -> Any:
            out = wake_up(*args, **kwargs)
            self.after_sync()
            return out

        return synced


def sync_checked_trainer_cls(prompt: str = SYNC_PROBE_PROMPT, *, min_shift: float = 0.0) -> type:
    """Agent Lightning's ``AgentLightningTrainer`` with a :class:`ServedPolicyGuard`: after every
    ``async_rollout_manager.wake_up()`` (verl 0.6.1 syncs the actor's weights into its vLLM servers
    there) the first server is probed with ``prompt`` under the model name Agent Lightning's
    rollouts use (``actor_rollout_ref.model.path``), and each ``_train_step`` counts as an update.
    Given to ``agl.VERL(config, trainer_cls=...)`` by :func:`build_senior_verl`.

    Raises:
        ImportError: agentlightning's VERL integration cannot import (verl, ray, ... missing).
    """
    from agentlightning.verl.trainer import AgentLightningTrainer

    class SyncCheckedTrainer(AgentLightningTrainer):
        """``AgentLightningTrainer`` that stops when the served policy did not follow the trained one."""

        def fit(self) -> Any:
            manager, model = self.async_rollout_manager, str(self.config.actor_rollout_ref.model.path)

            def probe() -> list[float]:
                return openai_prompt_logprobs(f"http://{manager.server_addresses[0]}/v1", model, prompt)

            self.policy_guard = ServedPolicyGuard(probe, min_shift=min_shift)
            manager.wake_up = self.policy_guard.wrap(manager.wake_up)
            return super().fit()

        def _train_step(self, batch_dict: dict) -> dict:
            out = super()._train_step(batch_dict)
            self.policy_guard.note_update()
            return out

    return SyncCheckedTrainer


def verl_trained_model(checkpoint_dir: str | Path) -> Path:
    """The trained senior as a Hugging Face model directory: ``global_step_<N>/actor/huggingface`` of
    the highest ``N`` under ``checkpoint_dir`` (verl 0.6's FSDP checkpoint layout, ``trainer.
    default_local_dir``) that holds weights -- verl writes them there only when
    ``actor.checkpoint.save_contents`` includes ``hf_model`` (``configs/verl_senior.yaml`` does);
    otherwise that directory has only the config and tokenizer.

    Raises:
        FileNotFoundError: no step directory with Hugging Face weights (``*.safetensors`` or
            ``pytorch_model*.bin``) under ``checkpoint_dir``; the message says what was found.
    """
    import re

    root = Path(checkpoint_dir)
    steps = []
    for d in root.glob("global_step_*/actor/huggingface"):
        m = re.fullmatch(r"global_step_(\d+)", d.parent.parent.name)
        if m and (d / "config.json").is_file():
            steps.append((int(m.group(1)), d))
    with_weights = [(n, d) for n, d in sorted(steps)
                    if any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))]
    if not with_weights:
        seen = ", ".join(str(d) for _, d in sorted(steps)) or "no global_step_*/actor/huggingface directory"
        raise FileNotFoundError(
            f"no trained senior with Hugging Face weights under {root} ({seen}); verl saves them only with "
            "actor_rollout_ref.actor.checkpoint.save_contents including hf_model (configs/verl_senior.yaml)"
        )
    return with_weights[-1][1]


def build_senior_verl(
    config: SeniorGRPOConfig,
    *,
    model_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything :func:`train_senior_verl` gives ``agl.Trainer``, built without starting Ray or
    touching CUDA (``agl.VERL`` composes its config when constructed; Ray starts in ``fit``).

    Returns ``agl.Trainer`` keyword arguments: ``algorithm`` (``agl.VERL`` on
    :func:`load_verl_config` of ``config.verl_config``, with :func:`sync_checked_trainer_cls` as its
    trainer: it stops when the served policy does not follow the trained one), ``adapter``
    (:func:`senior_verl_adapter` of ``config.agent_match``), ``tracer``
    (``training.agent.StoreTracer``: spans reach the store through its span processor -- with the
    client-server strategy the plain ``AgentOpsTracer`` exports over OTLP and loses them, see its
    docstring -- and carry the role/node attributes) and ``n_runners``.

    Args:
        model_path: the policy's HF directory; None -> :func:`training.checkpoints.hf_checkpoint` of
            ``config.model`` (dequantises the embedded GGUF once).
        overrides: nested VERL config keys merged over the YAML.

    Raises:
        ImportError: agentlightning's VERL integration cannot import (verl, ray, ... missing or
            of a version it does not support).
        ValueError: the config trains a LoRA adapter (:func:`refuse_adapter_rollouts`).
    """
    import agentlightning as agl

    from training.agent import StoreTracer

    if model_path is None:
        from training.checkpoints import hf_checkpoint

        model_path = str(hf_checkpoint(config.model))
    cfg = load_verl_config(config.verl_config, model_path=model_path, overrides=overrides)
    refuse_adapter_rollouts(cfg)
    return {
        "algorithm": agl.VERL(cfg, trainer_cls=sync_checked_trainer_cls()),
        "adapter": senior_verl_adapter(config.agent_match),
        "tracer": StoreTracer(),
        "n_runners": config.n_runners,
    }


def train_senior_verl(  # pragma: no cover - needs a GPU, verl and vLLM
    society_config: Any,
    train_tasks: list[dict[str, Any]],
    val_tasks: list[dict[str, Any]] | None,
    config: SeniorGRPOConfig,
    *,
    endpoints: dict[str, tuple[str, ...]] | None = None,
    reward_config: Any = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """GRPO of the senior with Agent Lightning's VERL algorithm (GPU).

    Args:
        society_config: the society config whose senior uses ``config.senior_alias``.
        train_tasks / val_tasks: Spider tasks (``training.agent.task_from_example``).
        config: ``verl_config`` (YAML), ``agent_match`` (regex on agent/node names whose LLM calls
            become training transitions: the senior's ``senior_check`` / ``senior_rewrite``),
            ``n_runners`` and ``model``.
        endpoints: alias -> (base_url, model[, api_key]) for the other roles' servers.
        overrides: nested VERL config keys merged over the YAML (e.g. ``trainer.default_local_dir``).

    The policy weights come from :func:`training.checkpoints.hf_checkpoint` (the embedded GGUF,
    dequantised), so no hub download is needed. All of the senior's parameters are trained
    (``lora_rank: 0``, :func:`refuse_adapter_rollouts`); checkpoints, with the full Hugging Face model
    (``save_contents`` includes ``hf_model``), go where ``trainer.default_local_dir`` says.
    The part before Ray starts is :func:`build_senior_verl` (checked on the CPU by
    ``tests/test_verl_config.py``).
    """
    import agentlightning as agl

    parts = build_senior_verl(config, overrides=overrides)
    agent = senior_verl_agent(
        society_config, senior_alias=config.senior_alias, endpoints=endpoints, reward=reward_config
    )
    trainer = agl.Trainer(**parts)
    trainer.fit(agent, train_dataset=train_tasks, val_dataset=val_tasks)
