"""The settings every LoRA trainer here shares: :class:`LoraTrainingConfig`, the base of
:class:`training.sft.JuniorSFTConfig` (phase 2, TRL ``SFTTrainer``) and
:class:`training.grpo.SeniorGRPOConfig` (phase 3, TRL ``GRPOTrainer``).

One config system, TRL owning TRL's settings: a training profile's ``sft:`` / ``grpo:`` section
*is* the trainer's config (``training.profile.TrainConfig``). Its keys are of two kinds:

* the project's own settings (the base model, the PEFT LoRA, the backend, the CPU threads, ...):
  pydantic fields of the config class, each default written once there;
* TRL's settings: any field of TRL's config class (``trl.SFTConfig`` / ``trl.GRPOConfig``, so every
  transformers ``TrainingArguments`` option too), under TRL's own name and checked against TRL's own
  annotation (``sft.max_steps: two`` reads ``max_steps: expected an integer, got 'two'``). The
  project's value for one, where it differs from TRL's default, is written once, in the class's
  :attr:`LoraTrainingConfig.TRL_DEFAULTS`; every other one is TRL's default. They are read as
  attributes (``config.max_steps``) and handed to TRL's class as they are.

TRL's settings may be written in the section itself (``sft: {max_steps: 180}``) or, as older
profiles do, under ``trl_args`` (``sft: {trl_args: {max_grad_norm: 1.0}}``); the model keeps them
all in :attr:`LoraTrainingConfig.trl_args`. TRL (with torch, ~5 s) is imported only when a section
gives a TRL setting, or when an attribute asks for a TRL default the project does not set.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator
from pydantic_core import to_jsonable_python

from tools.value_types import SettingProblems, TypedSettings, field_names, type_problems

__all__ = ["DEFAULT_TARGET_MODULES", "LoraTrainingConfig", "choice_problem", "trl_config_class", "trl_default"]

#: The linear layers of llama/qwen2 blocks a LoRA adapts (all of them: attention and MLP).
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@functools.cache
def trl_config_class(name: str) -> type:
    """TRL's config class ``name`` (``"SFTConfig"``, ``"GRPOConfig"``); imports TRL (~5 s, once).

    Raises:
        ImportError: TRL is not installed.
        AttributeError: this TRL has no such class.
    """
    import trl

    return getattr(trl, name)


def trl_default(trl_class: str, key: str) -> Any:
    """The default of the field ``key`` of TRL's ``trl_class``, as TRL declares it (a fresh copy of
    a mutable one).

    Raises:
        KeyError: ``key`` is not a field of that class.
    """
    for f in dataclasses.fields(trl_config_class(trl_class)):
        if f.name == key:
            return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    raise KeyError(f"{key!r} is not a setting of trl.{trl_class}")


def _listed(keys: Any) -> str:
    return str(sorted(keys))


def choice_problem(value: Any, choices: tuple[Any, ...]) -> str | None:
    """Why ``value`` is none of ``choices`` (compared with their types: ``1`` is not ``True``), or None
    when it is one; strings shown quoted, booleans as YAML writes them.

    >>> choice_problem("grup", ("group", "none", True, False))
    "expected one of 'group', 'none', true, false; got 'grup'"
    >>> choice_problem(1, ("group", True)), choice_problem(True, ("group", True))
    ("expected one of 'group', true; got 1", None)
    """
    if any(type(value) is type(c) and value == c for c in choices):
        return None
    shown = ", ".join(str(c).lower() if isinstance(c, bool) else repr(c) for c in choices)
    return f"expected one of {shown}; got {value!r}"[:200]


class LoraTrainingConfig(TypedSettings):
    """What SFT and GRPO both set: the base model, the PEFT LoRA, torch's CPU threads, and TRL's
    settings.

    Attributes:
        model: base model: embedded alias (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``), a
            ``.gguf`` path or a HF directory (the pipeline sets it from the profile's ``base_model``).
        lora_r, lora_alpha, lora_dropout, target_modules: PEFT ``LoraConfig`` (scale = alpha / r;
            r >= 1, alpha > 0).
        num_threads: CPU threads for torch; None -> :func:`training.threads.torch_threads`
            (load-adaptive).
        trl_args: the TRL settings this config was given (:attr:`TRL_CLASS` fields: written in the
            section or under ``trl_args``), applied over :attr:`TRL_DEFAULTS` and what the trainer
            derives itself. Read any TRL setting as an attribute instead (``config.max_steps``): the
            given value, else the project's (:attr:`TRL_DEFAULTS`), else TRL's default.

    TRL settings with a project value here (:attr:`TRL_DEFAULTS`): ``logging_steps`` 1 (a full
    curve), ``gradient_checkpointing`` false (on the CPU it only costs time for these small models),
    ``seed`` 0, ``lr_scheduler_type`` constant, ``save_strategy`` no (the trainer saves the adapter
    itself), ``report_to`` none (transformers 4's default, which the GPU extra pins, is every
    installed logger), ``disable_tqdm`` true.

    Raises (as a pydantic ``ValidationError``): :class:`tools.value_types.SettingProblems` for a key
    that is neither a field nor a TRL setting, a wrongly typed value (a TRL setting checked against
    TRL's annotation; one of :attr:`TRL_CHOICES` against the values TRL reads), a TRL setting given
    both in the section and in ``trl_args``; ``lora_r < 1``, ``lora_alpha <= 0``, ``logging_steps < 1``.
    """

    #: The TRL config class whose settings the section also takes.
    TRL_CLASS: ClassVar[str] = ""
    #: The project's value of each TRL setting where it is not TRL's default (the one place it is written).
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "logging_steps": 1,
        "gradient_checkpointing": False,
        "seed": 0,
        "lr_scheduler_type": "constant",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    #: TRL settings :meth:`settings` (so ``--dry-run``) lists at TRL's default too: the knobs worth seeing.
    TRL_SHOWN: ClassVar[tuple[str, ...]] = ()
    #: TRL settings whose annotation takes more than TRL reads: name -> every value TRL takes, checked
    #: (type and value, :func:`choice_problem`) instead of the annotation.
    TRL_CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {}

    model: str = "smollm2-135m"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    num_threads: int | None = None
    trl_args: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def settings_problems(cls, values: Any, prefix: str = "", *, section: str = "",
                          fixed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """Everything wrong with ``values`` as this config's settings (the
        :func:`tools.value_types.section_problems` of this class): not a mapping, a key that is
        neither a field nor a setting of TRL's :attr:`TRL_CLASS` (one entry under ``section``), a
        wrongly typed value (``prefix + key``; TRL settings against TRL's annotation, those under
        ``trl_args`` as ``trl_args.<key>``), a ``trl_args`` key that is a field here, and a TRL
        setting given twice. Imports TRL only when ``values`` holds a TRL setting; without TRL they
        are refused as unchecked.

        Returns:
            ``[(dotted key, message)]``, empty when the settings are fine.
        """
        where = section or prefix.rstrip(".")
        if not isinstance(values, Mapping):
            return [(where, f"expected a mapping of settings, got {values!r}"[:200])]
        own = field_names(cls)
        out = type_problems(cls, values, prefix)
        flat = {k: v for k, v in values.items() if k not in own}
        nested = values.get("trl_args")
        nested = nested if isinstance(nested, Mapping) else {}
        if not (flat or nested):
            return out
        try:
            trl_cls = trl_config_class(cls.TRL_CLASS)
        except (ImportError, AttributeError) as e:
            return out + [(where, f"cannot check the TRL settings {_listed({*flat, *nested})} against "
                                  f"trl.{cls.TRL_CLASS}: {e} (install the project's trl dependency)")]
        trl_names = field_names(trl_cls)
        unknown = sorted(set(flat) - set(trl_names))
        if unknown:
            near = {k: difflib.get_close_matches(k, [*own, *trl_names], n=1) for k in unknown}
            hint = "; ".join(f"did you mean {m[0]!r} for {k!r}?" for k, m in near.items() if m)
            out.insert(0, (where, f"unknown key(s) {unknown}; known: {_listed(set(own) - set(fixed))} and the "
                                  f"settings of trl.{cls.TRL_CLASS}" + (f" ({hint})" if hint else "")))
        out += cls._trl_value_problems(trl_cls, flat, prefix)
        mine = sorted(set(nested) & set(own))
        if mine:
            out.append((f"{prefix}trl_args", f"{cls.__name__}: set {mine} in the section, not in trl_args "
                                             f"(they are not settings of trl.{cls.TRL_CLASS})"))
        strange = sorted(set(nested) - set(trl_names) - set(own))
        if strange:
            out.append((f"{prefix}trl_args", f"{cls.__name__}: {strange} are not options of trl.{cls.TRL_CLASS}"))
        twice = sorted(set(flat) & set(nested))
        if twice:
            out.append((f"{prefix}trl_args", f"{cls.__name__}: {twice} given both in the section and in trl_args; "
                                             "keep one"))
        return out + cls._trl_value_problems(trl_cls, nested, f"{prefix}trl_args.")

    @classmethod
    def _trl_value_problems(cls, trl_cls: type, values: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
        """TRL settings of ``values`` checked against TRL's annotations, those of :attr:`TRL_CHOICES`
        against their values instead; ``(prefix + key, message)`` in the order of ``values``."""
        wrong = dict(type_problems(trl_cls, {k: v for k, v in values.items() if k not in cls.TRL_CHOICES}, prefix))
        out = []
        for key, value in values.items():
            choices = cls.TRL_CHOICES.get(key)
            problem = wrong.get(prefix + key) if choices is None else choice_problem(value, choices)
            if problem:
                out.append((prefix + key, problem))
        return out

    @model_validator(mode="before")
    @classmethod
    def _typed_input(cls, data: Any) -> Any:
        """Check every setting (:meth:`settings_problems`), then gather TRL's into ``trl_args``."""
        if not isinstance(data, Mapping):
            return data
        wrong = cls.settings_problems(data)
        if wrong:
            raise SettingProblems(wrong)
        own = field_names(cls)
        flat = {k: v for k, v in data.items() if k not in own}
        if not flat:
            return data
        return {**{k: v for k, v in data.items() if k in own}, "trl_args": {**flat, **(data.get("trl_args") or {})}}

    def __getattr__(self, name: str) -> Any:
        """A TRL setting read as an attribute: the given value, else :attr:`TRL_DEFAULTS`', else
        TRL's default (imports TRL). Raises ``AttributeError`` for anything else."""
        if not name.startswith("_"):
            given = self.__dict__.get("trl_args") or {}
            if name in given:
                return given[name]
            cls = type(self)
            if name in cls.TRL_DEFAULTS:
                return cls.TRL_DEFAULTS[name]
            if cls.TRL_CLASS and name in field_names(trl_config_class(cls.TRL_CLASS)):
                return trl_default(cls.TRL_CLASS, name)
        return super().__getattr__(name)  # type: ignore[misc]

    def set_value(self, name: str) -> Any:
        """A TRL setting's value when the section or :attr:`TRL_DEFAULTS` sets it, else None (TRL's
        own default, not looked up: no TRL import). What the range checks read."""
        return self.trl_args.get(name, type(self).TRL_DEFAULTS.get(name))

    def trl_settings(self) -> dict[str, Any]:
        """The TRL settings this config sets: :attr:`TRL_DEFAULTS`, then the given ones over them;
        what the trainer hands TRL's class (with what it derives itself)."""
        return {**type(self).TRL_DEFAULTS, **self.trl_args}

    def settings(self, *, given_only: bool = False) -> dict[str, Any]:
        """The config flat, JSON-ready, as a section would write it: the fields, then the TRL
        settings (:meth:`trl_settings`, then those of :attr:`TRL_SHOWN` at TRL's default, which
        imports TRL). ``given_only``: only what was given (the fields set and ``trl_args``; no TRL
        import). ``type(self)(**config.settings())`` is the same config."""
        own = self.model_dump(mode="json", exclude={"trl_args"}, exclude_unset=given_only)
        if given_only:
            return {**own, **to_jsonable_python(self.trl_args)}
        trl = self.trl_settings()
        shown = {k: trl_default(self.TRL_CLASS, k) for k in self.TRL_SHOWN if k not in trl}
        return {**own, **to_jsonable_python({**trl, **shown})}

    @model_validator(mode="after")
    def _lora_ranges(self) -> LoraTrainingConfig:
        name = type(self).__name__
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError(f"{name}: lora_r must be >= 1 and lora_alpha > 0 (got {self.lora_r}, {self.lora_alpha})")
        steps = self.set_value("logging_steps")
        if steps is not None and steps < 1:
            raise ValueError(f"{name}.logging_steps must be >= 1, got {steps}")
        return self

    def with_values(self, **changes: Any) -> LoraTrainingConfig:
        """A copy with ``changes`` (fields or TRL settings, by name) applied and validated again
        (``model_copy`` would not check them).

        Raises:
            pydantic.ValidationError: a change the class refuses.
        """
        given = {k: getattr(self, k) for k in type(self).model_fields if k != "trl_args"}
        trl = {**self.trl_args, **changes.pop("trl_args", {})}
        return type(self).model_validate({**given, **trl, **changes})
