"""The settings every LoRA trainer here shares: :class:`LoraTrainingConfig`, the base of
:class:`training.sft.JuniorSFTConfig` (phase 2, TRL ``SFTTrainer``) and
:class:`training.grpo.SeniorGRPOConfig` (phase 3, TRL ``GRPOTrainer``).

One config system: these are pydantic models, so a training profile's ``sft:`` / ``grpo:`` section
*is* the trainer's config (``training.profile.TrainConfig``): unknown keys are refused, every value
is checked against its field's annotation first (:func:`tools.value_types.type_problems`, so
``max_steps: two`` reads ``max_steps: expected an integer, got 'two'``), and each default is written
once, here or in the subclass. Any other option of TRL's own config class goes in ``trl_args``,
checked against that class's fields and their types (:func:`check_trl_args`) and handed to it as
it is.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.value_types import SettingProblems, field_names, type_problems

__all__ = ["DEFAULT_TARGET_MODULES", "LoraTrainingConfig", "TypedSettings", "check_trl_args"]

#: The linear layers of llama/qwen2 blocks a LoRA adapts (all of them: attention and MLP).
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TypedSettings(BaseModel):
    """A pydantic settings model read from YAML: unknown keys refused (``extra="forbid"``) and every
    given value checked against its field's annotation before pydantic converts it
    (:func:`tools.value_types.type_problems`): ``"5"`` for a number is refused with a hint rather
    than read as 5, and the message names the key and the type it wants.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): :class:`tools.value_types.SettingProblems`
    listing each wrongly typed key.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _typed_input(cls, data: Any) -> Any:
        if isinstance(data, dict):
            wrong = type_problems(cls, data)
            if wrong:
                raise SettingProblems(wrong)
        return data


def check_trl_args(config: Any, trl_class: str) -> None:
    """Refuse ``config.trl_args`` keys that TRL's ``trl_class`` (``SFTConfig``, ``GRPOConfig``) does
    not take, or that ``config`` has as its own field (set those as the field), and values whose type
    does not fit the TRL field's annotation (:func:`tools.value_types.type_problems`; where the
    annotation names a TRL/transformers class, e.g. ``SchedulerType | str``, TRL itself converts or
    refuses the value). TRL is imported only when ``trl_args`` is not empty.

    Raises:
        SettingProblems: (a ``ValueError``) naming the keys and where they belong, or each wrongly
            typed key as ``trl_args.<key>`` and the type it wants, e.g.
            ``trl_args.max_grad_norm: expected a number, got 'big'``.
    """
    args = config.trl_args
    if not args:
        return
    name = type(config).__name__
    own = sorted(set(args) & set(field_names(type(config))))
    if own:
        raise SettingProblems([("trl_args", f"{name}: set {own} as fields of the section, not in trl_args")])
    import trl

    known = set(field_names(getattr(trl, trl_class)))
    unknown = sorted(set(args) - known)
    if unknown:
        raise SettingProblems([("trl_args", f"{name}: {unknown} are not options of trl.{trl_class}")])
    wrong = type_problems(getattr(trl, trl_class), args, prefix="trl_args.")
    if wrong:
        raise SettingProblems(wrong)


class LoraTrainingConfig(TypedSettings):
    """What SFT and GRPO both set: the base model, where the adapter goes, the optimizer budget, the
    PEFT LoRA and TRL's other options.

    Attributes:
        model: base model: embedded alias (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``), a
            ``.gguf`` path or a HF directory (the pipeline sets it from the profile's ``base_model``).
        output_dir: where the adapter and metrics are written (created; the pipeline sets it).
        max_steps: optimizer steps.
        learning_rate: AdamW learning rate of the LoRA weights.
        lora_r, lora_alpha, lora_dropout, target_modules: PEFT ``LoraConfig`` (scale = alpha / r;
            r >= 1, alpha > 0).
        logging_steps: log every this many steps (1 = a full curve), >= 1.
        gradient_checkpointing: recompute activations in the backward pass (saves GPU memory; on
            the CPU it only costs time for these small models).
        num_threads: CPU threads for torch; None -> :func:`training.threads.torch_threads`
            (load-adaptive).
        seed: data order, LoRA init, dropout and sampling.
        trl_args: any other keyword argument of the TRL config class (:attr:`TRL_CLASS`; so every
            transformers ``TrainingArguments`` option, e.g. ``optim``, ``max_grad_norm``), applied
            over what the fields set; checked against that class when given (imports TRL, ~5 s).
            A TRL option that is a field here is set as that field.

    Raises (as a pydantic ``ValidationError``): a wrongly typed or unknown key, ``lora_r < 1``,
    ``lora_alpha <= 0``, ``logging_steps < 1``, a bad ``trl_args`` (:func:`check_trl_args`).
    """

    #: The TRL config class ``trl_args`` belong to.
    TRL_CLASS: ClassVar[str] = ""

    model: str = "smollm2-135m"
    output_dir: str = "runs/lora"
    max_steps: int = 20
    learning_rate: float = 2e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    logging_steps: int = 1
    gradient_checkpointing: bool = False
    num_threads: int | None = None
    seed: int = 0
    trl_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lora_and_trl(self) -> LoraTrainingConfig:
        name = type(self).__name__
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError(f"{name}: lora_r must be >= 1 and lora_alpha > 0 (got {self.lora_r}, {self.lora_alpha})")
        if self.logging_steps < 1:
            raise ValueError(f"{name}.logging_steps must be >= 1, got {self.logging_steps}")
        if self.TRL_CLASS:
            check_trl_args(self, self.TRL_CLASS)
        return self

    def with_values(self, **changes: Any) -> LoraTrainingConfig:
        """A copy with ``changes`` applied and validated again (``model_copy`` would not check them).

        Raises:
            pydantic.ValidationError: a change the class refuses.
        """
        return type(self).model_validate({**dict(self), **changes})
