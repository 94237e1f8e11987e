"""Phase 2: supervised fine-tuning of the juniors on their own successful conversations.

TRL style: :class:`JuniorSFTConfig` (the knobs) beside :class:`JuniorSFTTrainer` (one method).

Input: the ``HierarchicalTraceAdapter.to_sft(...)`` dataset -- a ``datasets.Dataset`` with a
``messages`` column, each row one junior conversation in OpenAI chat form::

    [{"role": "system", "content": "You translate questions into SQL ..."},
     {"role": "user", "content": "Schema: ...\\nQuestion: How many singers do we have?"},
     {"role": "assistant", "content": "```sql\\nSELECT count(*) FROM singer\\n```"}]

(possibly longer: draft -> execution error -> fixed draft). Rows are already filtered by reward
(the adapter's job). Each conversation is split into ``prompt`` = every message before the last
and ``completion`` = the last (assistant) message, so the loss is taken on the junior's final
answer only (TRL's prompt-completion format, ``completion_only_loss``); set
``loss_on="all"`` to train on every token of the conversation instead.

Backends:

* CPU (``backend="trl"``, the default without CUDA): the GGUF base is dequantised once into a
  float32 HF checkpoint (:func:`training.checkpoints.hf_checkpoint`), then TRL ``SFTTrainer`` + a PEFT
  LoRA, at the machine's speed (``bench/sft.py`` measures it against the old settings):

  - **bf16** where the CPU has native bf16 dot products (``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``, read at run time) and torch's oneDNN does bf16 (:func:`bf16_support`): TRL's
    ``bf16`` (autocast) is on and the frozen base is loaded in bfloat16; the LoRA weights stay
    float32 (PEFT's ``autocast_adapter_dtype``), as does the optimizer. Elsewhere float32. The choice
    and its reason are logged and written to ``sft_metrics.json``; ``sft: {bf16: false}`` forces
    float32.
  - **padding-free batches** (TRL's ``padding_free``): the conversations of a step are concatenated
    into one row with restarting ``position_ids`` instead of being padded to the longest; transformers
    (>= 5) builds the block-diagonal causal mask from the ``position_ids`` for SDPA/eager attention
    (``masking_utils.find_packed_sequence_indices``), so no token sees another conversation and the
    loss equals the padded batch's (``tests/test_sft.py`` checks it). TRL then does not truncate, so a
    conversation longer than ``max_length`` is left out (counted in the metrics): cut at ``max_length``
    from the right it would lose the answer it is trained on. ``sft: {padding_free: false}``
    restores padded batches with truncation.
  - **completion-only loss** (TRL's ``completion_only_loss``, from ``loss_on``), and the LM head
    scored on the loss positions only (``head_on_loss_tokens_only``, :func:`head_on_loss_tokens`):
    TRL's fused head (``trl.trainer.utils.add_fused_lm_head``) projects only the positions with a
    label on CUDA, but every position elsewhere (its reason: a changing number of positions would
    recompile on compiling backends such as Neuron). Eager CPU training does not compile, and a
    junior's answer is ~5 % of its conversation, so the head's ``vocab x d_model`` product and its
    softmax statistics over ~150k logits per token were ~40 % of a step for nothing. The loss, its
    gradient and TRL's metrics are the same either way (``tests/test_sft.py`` checks the loss);
  - torch threads = the idle cores now (:func:`training.threads.torch_threads`).
* CUDA (``backend="unsloth"``, chosen by ``"auto"`` when ``torch.cuda.is_available()`` and
  unsloth is installed): unsloth's ``FastLanguageModel`` loads the same HF checkpoint (optionally
  4-bit) and adds the LoRA with its fused kernels; training is still TRL ``SFTTrainer``.
  Unverified here (no GPU on the build machine).

Output (``output_dir``): a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``),
``sqlsociety_adapter.json`` (base model, method, rows) and ``sft_metrics.json`` (steps, loss and
tokens per logged step, seconds per step, precision, threads). Serve it with
:func:`training.adapter_serving.serve_adapter`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from training.lora_training import LoraTrainingConfig
from training.threads import torch_threads

__all__ = [
    "JuniorSFTConfig",
    "JuniorSFTTrainer",
    "SFTResult",
    "StepTimer",
    "bf16_support",
    "trainer_precision",
    "cpu_flags",
    "head_on_loss_tokens",
    "split_conversation",
    "pick_backend",
    "torch_threads",
]

logger = logging.getLogger(__name__)

#: ``/proc/cpuinfo`` flags of native bf16 dot products (AVX512-BF16: ``VDPBF16PS``; AMX: tile bf16 matmul).
CPU_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")

class JuniorSFTConfig(LoraTrainingConfig):
    """Settings of :class:`JuniorSFTTrainer` (the ``sft:`` section of a training profile): the
    project's own fields below and the shared LoRA ones (``model``, ``lora_*``, ``target_modules``,
    ``num_threads``) of :class:`training.lora_training.LoraTrainingConfig`, and every setting of
    TRL's ``SFTConfig`` under its own name (``max_steps``, ``learning_rate``, ``max_length``,
    ``optim``, ...), read as attributes.

    Attributes:
        loss_on: ``"completion"`` (last assistant message only) or ``"all"``.
        backend: ``"auto"`` (unsloth on CUDA if installed, else TRL), ``"trl"`` or ``"unsloth"``.
        load_in_4bit: unsloth only: QLoRA on a 4-bit base.
        head_on_loss_tokens_only: on the CPU, project the LM head only at the positions that have a
            label (:func:`head_on_loss_tokens`); False -> every position, as TRL does off CUDA.

    TRL settings with a project value (:attr:`TRL_DEFAULTS`, besides the base's): ``output_dir``
    ``runs/sft/junior`` (the pipeline sets it), ``max_steps`` 20 (``<= 0``: ``num_train_epochs``
    over the data instead), ``num_train_epochs`` 1, ``learning_rate`` 2e-4 (the LoRA weights),
    ``per_device_train_batch_size`` 2 (a step trains ``per_device_train_batch_size x
    gradient_accumulation_steps`` conversations), ``max_length`` 512 tokens per conversation after
    the chat template (>= 32: longer ones are left out with padding-free batches, the default,
    truncated from the right with padded ones -- keep schemas compact). The trainer derives
    ``completion_only_loss`` (from ``loss_on``), ``padding_free`` (true with the TRL backend),
    ``bf16`` (:func:`bf16_support`) and ``use_cpu``; a TRL setting given in the section wins over
    all of these (``bf16: false`` forces float32, ``padding_free: false`` restores padded batches);
    see the module docstring.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): an unknown or wrongly typed key,
    or a value out of range (above; ``max_steps <= 0`` with ``num_train_epochs <= 0``, a batch size
    below 1).
    """

    TRL_CLASS: ClassVar[str] = "SFTConfig"
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "output_dir": "runs/sft/junior",
        "max_steps": 20,
        "num_train_epochs": 1.0,
        "learning_rate": 2e-4,
        "per_device_train_batch_size": 2,
        "max_length": 512,
        **LoraTrainingConfig.TRL_DEFAULTS,
    }
    TRL_SHOWN: ClassVar[tuple[str, ...]] = ("gradient_accumulation_steps", "warmup_steps", "weight_decay")

    loss_on: Literal["completion", "all"] = "completion"
    backend: Literal["auto", "trl", "unsloth"] = "auto"
    load_in_4bit: bool = False
    head_on_loss_tokens_only: bool = True

    @model_validator(mode="after")
    def _sft_ranges(self) -> JuniorSFTConfig:
        steps, epochs = self.set_value("max_steps"), self.set_value("num_train_epochs")
        if steps is not None and steps <= 0 and not (epochs is None or epochs > 0):
            raise ValueError("JuniorSFTConfig: set max_steps > 0 or num_train_epochs > 0")
        if not isinstance(self.set_value("max_length"), int) or self.set_value("max_length") < 32:
            raise ValueError(f"JuniorSFTConfig.max_length = {self.set_value('max_length')}; must be >= 32 tokens "
                             "(conversations longer than it are left out)")
        for k in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            value = self.set_value(k)
            if value is not None and value < 1:
                raise ValueError(f"JuniorSFTConfig.{k} must be >= 1, got {value}")
        return self


@dataclass
class SFTResult:
    """What a training run left behind.

    Attributes:
        adapter_dir: the PEFT adapter directory (= ``config.output_dir``).
        metrics_path: ``sft_metrics.json`` in it.
        rows: training conversations given (``rows - rows_over_max_length`` of them trained on).
        steps: optimizer steps taken (> 0 after a successful run).
        losses: ``[(step, loss)]`` as logged (every ``logging_steps``).
        step_seconds: wall seconds of each optimizer step.
        train_seconds: wall seconds of ``trainer.train()``.
        backend: ``"trl"`` or ``"unsloth"``.
        num_tokens: ``[(step, tokens)]``: tokens trained so far (prompt and completion, no padding;
            TRL's ``num_tokens``) at each logged step.
        precision: ``"bf16"`` (autocast, see the module docstring) or ``"fp32"``.
        precision_reason: why (:func:`bf16_support`, or ``"the profile sets bf16: ..."``).
        padding_free: whether the batches were padding-free (TRL's ``padding_free``).
        rows_over_max_length: conversations left out as longer than ``max_length`` (padding-free only).
        head_on_loss_tokens_only: whether the LM head scored only the loss positions
            (:func:`head_on_loss_tokens`).
        threads: torch threads during training.
    """

    adapter_dir: Path
    metrics_path: Path
    rows: int
    steps: int
    losses: list[tuple[int, float]]
    step_seconds: list[float]
    train_seconds: float
    backend: str
    num_tokens: list[tuple[int, int]] = field(default_factory=list)
    precision: str = "fp32"
    precision_reason: str = ""
    padding_free: bool = False
    rows_over_max_length: int = 0
    head_on_loss_tokens_only: bool = False
    threads: int = 0

    @property
    def mean_step_seconds(self) -> float:
        """Mean wall seconds per optimizer step (NaN if no step)."""
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else math.nan

    @property
    def tokens_per_second(self) -> float:
        """Tokens trained (last logged ``num_tokens``) per wall second of ``trainer.train()``; NaN
        when nothing was logged."""
        return self.num_tokens[-1][1] / self.train_seconds if self.num_tokens and self.train_seconds > 0 else math.nan


def split_conversation(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """``messages`` -> ``{"prompt": messages[:-1], "completion": [messages[-1]]}``.

    Raises:
        ValueError: fewer than two messages, a message without ``role``/``content``, or a last
            message that is not the assistant's (nothing to learn).
    """
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError(f"a conversation needs at least a user and an assistant message, got {messages!r:.200}")
    clean = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"each message must be a dict with 'role' and 'content', got {m!r:.200}")
        clean.append({"role": str(m["role"]), "content": str(m["content"] or "")})
    if clean[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be the assistant's answer, got role {clean[-1]['role']!r}")
    return {"prompt": clean[:-1], "completion": clean[-1:]}


def pick_backend(requested: str = "auto") -> str:
    """``"unsloth"`` when requested or (``"auto"``) when CUDA and unsloth are both available, else ``"trl"``.

    Raises:
        RuntimeError: ``"unsloth"`` requested without CUDA or without the package.
    """
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth":
        if not (cuda and has_unsloth):
            raise RuntimeError(
                "backend='unsloth' needs a CUDA GPU and `pip install unsloth`; use backend='trl' on the CPU"
            )
        return "unsloth"
    if requested == "auto" and cuda and has_unsloth:
        return "unsloth"
    return "trl"


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    r"""The feature flags of the first ``flags`` line of ``/proc/cpuinfo`` text (empty when there is none,
    e.g. on a non-x86 kernel, which names them ``Features``).

    >>> sorted(cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"))
    ['avx2', 'avx512_bf16', 'fpu']
    >>> cpu_flags("processor : 0\n")
    frozenset()
    """
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_support(cpuinfo_path: str | Path = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether SFT should train in bf16 here, and why, decided at run time.

    * CUDA: ``torch.cuda.is_bf16_supported()``.
    * CPU: the CPU reports native bf16 dot products (:data:`CPU_BF16_FLAGS` in ``cpuinfo_path``) and
      torch's oneDNN does bf16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``). oneDNN alone is not
      enough: it says yes on any AVX-512 CPU and then emulates bf16, which is slower than float32.

    Returns:
        ``(use_bf16, reason)``, the reason one line for the log, e.g. ``"CPU reports avx512_bf16 and
        torch's oneDNN does bf16"`` or ``"CPU reports none of avx512_bf16, amx_bf16"``.
    """
    import torch

    if torch.cuda.is_available():
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, f"CUDA device {'supports' if ok else 'does not support'} bf16"
    try:
        flags = cpu_flags(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError as e:
        return False, f"cannot read {cpuinfo_path} ({e.strerror})"
    native = [f for f in CPU_BF16_FLAGS if f in flags]
    if not native:
        return False, f"CPU reports none of {', '.join(CPU_BF16_FLAGS)}"
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False, f"CPU reports {', '.join(native)} but this torch build's oneDNN does not do bf16"
    return True, f"CPU reports {', '.join(native)} and torch's oneDNN does bf16"


def trainer_precision(bf16: bool, given: Any) -> tuple[str, str, Any]:
    """How a TRL trainer here trains, for the SFT and the GRPO trainer alike: its ``bf16`` argument
    (derived from :func:`bf16_support`, or given in the profile's section), ``given`` the section's
    TRL settings (``trl_args``).

    Returns:
        ``(precision, reason, base_dtype)``: ``"bf16"`` or ``"fp32"``; why (:func:`bf16_support`'s
        reason, or ``"the profile sets bf16: ..."``); ``torch.bfloat16`` for the frozen base on the
        CPU under bf16 (no float32 copy to cast from at every matmul; PEFT keeps the LoRA weights and
        the optimizer float32), else None (the loader's float32).
    """
    import torch

    reason = bf16_support()[1]
    if "bf16" in given:
        reason = f"the profile sets bf16: {bf16} ({reason})"
    base = torch.bfloat16 if bf16 and not torch.cuda.is_available() else None
    return ("bf16" if bf16 else "fp32"), reason, base


@contextmanager
def head_on_loss_tokens(enabled: bool = True) -> Iterator[bool]:
    """While open, TRL's fused LM head takes its own compact branch on the CPU too: it projects and
    scores only the positions whose next-token label is not -100 (``hidden_states[mask]``) instead of
    every position. Yields whether the branch is on.

    Where: ``trl.trainer.utils.add_fused_lm_head`` decides ``compact = _use_triton(device)``, True on
    CUDA/XPU only; this swaps that module's ``_use_triton`` for one that also says True for ``cpu``
    and puts it back on exit. The kernels themselves still run TRL's torch path on the CPU
    (``trl.kernels.chunked_logprob`` keeps its own ``_use_triton``). Yields False, changing nothing,
    when ``enabled`` is False or this TRL has no such hook (logged).

    Why it is sound here: the result differs only at positions without a label, which are zero in
    both branches and not in the loss or TRL's metrics; TRL's reason to score every position off
    CUDA is recompilation on compiling backends, and CPU training here is eager.
    """
    if not enabled:
        yield False
        return
    try:
        from trl.trainer import utils as trl_utils

        original = trl_utils._use_triton
    except (ImportError, AttributeError):
        logger.info("SFT: this TRL has no trl.trainer.utils._use_triton; the LM head scores every position")
        yield False
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield True
    finally:
        trl_utils._use_triton = original


class StepTimer:
    """A ``transformers.TrainerCallback`` factory recording wall seconds per optimizer step."""

    @staticmethod
    def make() -> Any:
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self) -> None:
                self.seconds: list[float] = []
                self._t0 = 0.0

            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
                self._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                self.seconds.append(time.perf_counter() - self._t0)

        return _Timer()


class JuniorSFTTrainer:
    """LoRA SFT of a junior's model on its filtered conversations.

    Args:
        config: :class:`JuniorSFTConfig`.
        train_dataset: ``datasets.Dataset`` (or a list of dicts) with a ``messages`` column (see the
            module docstring); other columns are ignored.

    Raises:
        ValueError: no ``messages`` column, zero rows, or a malformed conversation (the message
            names the row).

    Example::

        result = JuniorSFTTrainer(JuniorSFTConfig(output_dir="run/phase2"), ds).train()
        result.adapter_dir  # -> PEFT adapter; serve with training.adapter_serving.serve_adapter
    """

    def __init__(self, config: JuniorSFTConfig, train_dataset: Any) -> None:
        from datasets import Dataset

        self.config = config
        if isinstance(train_dataset, list):
            train_dataset = Dataset.from_list(train_dataset)
        if not isinstance(train_dataset, Dataset):
            raise ValueError(
                f"train_dataset must be a datasets.Dataset or a list of dicts, got {type(train_dataset).__name__}"
            )
        if "messages" not in train_dataset.column_names:
            raise ValueError(
                f"train_dataset has columns {train_dataset.column_names}; it needs a 'messages' column of chat "
                "conversations (HierarchicalTraceAdapter.to_sft output)"
            )
        if len(train_dataset) == 0:
            raise ValueError(
                "train_dataset is empty: no junior conversation passed the reward filter; lower the threshold or "
                "gather more rollouts"
            )
        rows = []
        for i, msgs in enumerate(train_dataset["messages"]):
            try:
                rows.append(self._row(msgs))
            except ValueError as e:
                raise ValueError(f"train_dataset row {i}: {e}") from e
        self.dataset = Dataset.from_list(rows)
        self.backend = pick_backend(config.backend)

    def _row(self, msgs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.config.loss_on == "all":
            split = split_conversation(msgs)
            return {"messages": split["prompt"] + split["completion"]}
        return split_conversation(msgs)

    # ------------------------------------------------------------------------------ models

    def _load_trl(self, dtype: Any = None) -> tuple[Any, Any, Any]:
        from peft import LoraConfig

        from training.checkpoints import load_for_training

        model, tok = load_for_training(self.config.model, dtype=dtype)
        peft_config = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        return model, tok, peft_config

    def _load_unsloth(self) -> tuple[Any, Any, Any]:  # pragma: no cover - needs CUDA
        from unsloth import FastLanguageModel  # imported first so it can patch transformers

        from training.checkpoints import hf_checkpoint

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(hf_checkpoint(self.config.model)),
            max_seq_length=self.config.max_length,
            dtype=None,
            load_in_4bit=self.config.load_in_4bit,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth" if self.config.gradient_checkpointing else False,
            random_state=self.config.seed,
        )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok, None

    def _args(self) -> Any:
        """TRL's ``SFTConfig``: the project's values for TRL settings (``TRL_DEFAULTS``), what this
        trainer derives (completion-only loss from ``loss_on``, bf16 where :func:`bf16_support` says
        so, padding-free batches with the TRL backend, ``use_cpu``), then the TRL settings the config
        was given over all of it. With padding-free batches and no packing, TRL's ``max_length`` is
        None (TRL refuses it there); :meth:`train` leaves out the conversations longer than
        ``config.max_length`` instead."""
        import torch
        from trl import SFTConfig

        cfg = self.config
        cuda = torch.cuda.is_available()
        bf16, _ = bf16_support()
        kw = {
            **cfg.TRL_DEFAULTS,
            "completion_only_loss": cfg.loss_on == "completion",
            # unsloth's own kernels are not checked with padding-free batches here (no GPU): padded there
            "padding_free": pick_backend(cfg.backend) == "trl",
            "bf16": bf16,
            "use_cpu": not cuda,
            **cfg.trl_args,  # the profile's TRL settings win
        }
        if kw["padding_free"] and not kw.get("packing"):
            kw["max_length"] = None
        return SFTConfig(**kw)

    # ------------------------------------------------------------------------------ train

    def train(self) -> SFTResult:
        """Train, save the adapter and the metrics, return an :class:`SFTResult`.

        Raises:
            RuntimeError: training finished without a single optimizer step.
            ValueError: with padding-free batches, every conversation is longer than ``max_length``.
        """
        import torch
        from trl import SFTTrainer

        cfg = self.config
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        args = self._args()
        precision, reason, base_dtype = trainer_precision(args.bf16, cfg.trl_args)
        cuda = torch.cuda.is_available()
        if self.backend == "unsloth":  # pragma: no cover - needs CUDA
            model, tok, peft_config = self._load_unsloth()
        else:
            model, tok, peft_config = self._load_trl(base_dtype)
        timer = StepTimer.make()
        prev_threads = torch.get_num_threads()
        threads = torch_threads(cfg.num_threads) if self.backend == "trl" else prev_threads
        torch.set_num_threads(threads)
        logger.info("SFT: %s (%s), %s batches, %d torch threads", precision, reason,
                    "padding-free" if args.padding_free else "padded", threads)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=self.dataset,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[timer],
        )
        over = 0
        if args.padding_free and not args.packing:
            lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
            keep = [i for i, n in enumerate(lengths) if n <= cfg.max_length]
            over = len(lengths) - len(keep)
            if not keep:
                raise ValueError(
                    f"all {len(lengths)} conversations are longer than max_length = {cfg.max_length} tokens "
                    f"(shortest {min(lengths)}); raise sft.max_length or shorten the prompts")
            if over:
                logger.warning("SFT: %d of %d conversations are longer than max_length = %d tokens and are left out",
                               over, len(lengths), cfg.max_length)
                trainer.train_dataset = trainer.train_dataset.select(keep)
        rows = len(self.dataset)
        t0 = time.perf_counter()
        try:
            with head_on_loss_tokens(cfg.head_on_loss_tokens_only and not cuda) as compact_head:
                trainer.train()
        finally:
            torch.set_num_threads(prev_threads)
        train_s = time.perf_counter() - t0
        steps = save_adapter(
            trainer, out, {"method": "sft", "role": "junior", "base_model": cfg.model},
            {"rows": rows, "backend": self.backend},
            no_step="SFT took no optimizer step; check max_steps / num_train_epochs and the dataset size",
        )
        logs = trainer.state.log_history
        result = SFTResult(
            adapter_dir=out,
            metrics_path=out / "sft_metrics.json",
            rows=rows,
            steps=steps,
            losses=[(int(h["step"]), float(h["loss"])) for h in logs if "loss" in h and "step" in h],
            step_seconds=[round(s, 4) for s in timer.seconds],
            train_seconds=round(train_s, 3),
            backend=self.backend,
            num_tokens=[(int(h["step"]), int(h["num_tokens"])) for h in logs if "num_tokens" in h and "step" in h],
            precision=precision,
            precision_reason=reason,
            padding_free=bool(args.padding_free),
            rows_over_max_length=over,
            head_on_loss_tokens_only=compact_head,
            threads=threads,
        )
        metrics = {
            "config": cfg.settings(),
            "rows": result.rows,
            "rows_over_max_length": over,
            "steps": result.steps,
            "losses": result.losses,
            "num_tokens": result.num_tokens,
            "step_seconds": result.step_seconds,
            "mean_step_seconds": result.mean_step_seconds,
            "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second,
            "backend": result.backend,
            "precision": precision,
            "precision_reason": reason,
            "bf16_supported": bf16_support()[0],
            "padding_free": result.padding_free,
            "head_on_loss_tokens_only": compact_head,
            "threads": threads,
        }
        result.metrics_path.write_text(json.dumps(metrics, indent=1, default=str))
        return result


def save_adapter(trainer: Any, out: Path, meta: dict[str, Any], extra: dict[str, Any], *, no_step: str) -> int:
    """The common tail of the trainers' ``train()``: refuse a run that took no optimizer step, save
    the PEFT adapter in ``out`` and write ``sqlsociety_adapter.json`` (``meta``, the base model's
    GGUF when it resolves to one, then ``extra``); returns the optimizer steps taken.

    Raises:
        RuntimeError: ``no_step``, when the trainer took no step.
    """
    from training.checkpoints import resolve_gguf

    steps = int(trainer.state.global_step)
    if steps <= 0:
        raise RuntimeError(no_step)
    trainer.model.save_pretrained(str(out))
    try:
        base_gguf: str | None = str(resolve_gguf(meta["base_model"]))
    except (ValueError, FileNotFoundError, RuntimeError):
        base_gguf = None
    (out / "sqlsociety_adapter.json").write_text(json.dumps({**meta, "base_gguf": base_gguf, **extra}, indent=1))
    return steps

