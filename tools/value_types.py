"""Check values read from YAML against the annotated types of the settings they fill.

A training profile's sections are keyword arguments of settings classes (``training.sft.JuniorSFTConfig``,
``society.bandit.BanditConfig``, ...), and TRL's settings keyword arguments of TRL's config classes,
dataclasses that do not check their annotations: ``max_steps: two`` used to fail much later as "'<='
not supported between instances of 'str' and 'int'", and pydantic would read ``"5"`` as 5.
:func:`type_problems` compares each value with its field's annotation first and says which key
wants what: ``max_steps: expected an integer, got 'two'``.

Understood annotations: ``Any``, ``None``, ``bool``, ``int``, ``float`` (an int is accepted),
``str``, ``Literal[...]``, unions (``X | Y``, ``Optional``), ``list``/``tuple``/``Sequence`` of
one element type (a YAML list either way), fixed ``tuple[X, Y]``, ``dict``/``Mapping`` of key
and value types, and their bare forms. Any other class (an Enum, ``ParallelismConfig``...) is
accepted as it is: the class it belongs to converts or refuses it itself.

:class:`TypedSettings` is the pydantic base of such settings classes: unknown keys refused, each value
checked here before pydantic converts it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["SettingProblems", "TypedSettings", "describe", "field_names", "problems_of", "section_problems",
           "type_problem", "type_problems"]

#: What YAML 1.1 (PyYAML) reads as text although it looks like a number: ``1e-4`` (no dot).
_NUMBERISH = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*\Z")
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, set, frozenset)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_SIMPLE = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def describe(tp: Any) -> str:
    """The expected type in words: ``int`` -> ``"an integer"``, ``tuple[str, ...] | None`` ->
    ``"a list of strings or null"``, ``Literal["a", "b"]`` -> ``"one of 'a', 'b'"``."""
    if tp is Any:
        return "any value"
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        parts = [describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp in _SEQUENCES or origin in _SEQUENCES:
        elem = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else None
        if elem is None or elem is Any:
            return "a list"
        return f"a list of {_PLURAL.get(elem) or '(' + describe(elem) + ') items'}"
    if tp in _MAPPINGS or origin in _MAPPINGS:
        if len(args) == 2 and args[1] is not Any:
            keys = describe(args[0]).split(" ", 1)[-1]
            return f"a mapping of {keys} keys to {_PLURAL.get(args[1], describe(args[1]))}"
        return "a mapping"
    name = getattr(tp, "__name__", str(tp))
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _fits(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 1 or args[-1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if tp in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(value, Mapping):
            return False
        if len(args) != 2:
            return True
        return all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return True  # another class: its owner converts or refuses the value


def type_problem(value: Any, tp: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``tp``, or None when it does.

    Returns:
        None, or ``"expected <type in words>, got <repr of value, at most 80 characters>"``, with a
        hint when the value is YAML text that looks like a number (``1e-4`` -> write ``1.0e-4``).
    """
    if _fits(value, tp):
        return None
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    msg = f"expected {describe(tp)}, got {shown}"
    if isinstance(value, str) and _NUMBERISH.match(value) and (_fits(1.5, tp) or _fits(1, tp)):
        if "." not in value and "e" in value.lower():
            msg += f" (YAML reads {value.strip()} as text: write the mantissa with a dot, e.g. 1.0e-4)"
        else:
            msg += " (text: write the number without quotes)"
    return msg


def type_problems(cls: type, values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(prefix + key, message)`` for each value of ``values`` whose type does not fit the
    annotation of the dataclass field ``key`` of ``cls`` (see :func:`type_problem`). Keys that are
    not fields of ``cls`` are left to the caller (they are not type problems).

    Args:
        cls: a dataclass or a pydantic model; its annotations are resolved with
            :func:`typing.get_type_hints` (so ``from __future__ import annotations`` modules work).
        values: key -> value, e.g. a YAML section.
        prefix: put before each key, e.g. ``"sft."``.

    Returns:
        a list, empty when every value fits, in the order of ``values``.

    Raises:
        TypeError: ``cls`` is neither a dataclass nor a pydantic model.
    """
    fields = field_names(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for key, value in values.items():
        if key in fields and key in hints:
            problem = type_problem(value, hints[key])
            if problem:
                out.append((f"{prefix}{key}", problem))
    return out


def field_names(cls: type) -> list[str]:
    """The settings ``cls`` takes by keyword: a dataclass's fields or a pydantic model's fields, in
    declaration order.

    Raises:
        TypeError: ``cls`` is neither.
    """
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, dict):
        return list(model_fields)
    raise TypeError(f"{cls!r} is neither a dataclass nor a pydantic model")


def section_problems(cls: type, values: Any, prefix: str = "", *, section: str = "",
                     fixed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Everything wrong with ``values`` as the keyword arguments of ``cls`` before ``cls`` sees them:
    not a mapping, unknown keys (one entry ``(section, "unknown key(s) [...]; known: [...]")``) and
    wrongly typed values (:func:`type_problems`, one entry per key).

    A class with a ``settings_problems`` classmethod of this signature (one that takes settings beyond
    its fields, :class:`training.lora_training.LoraTrainingConfig`) answers for itself.

    Args:
        cls: a dataclass or a pydantic model.
        values: the section as read (a YAML mapping).
        prefix: put before each key of a type problem, e.g. ``"sft."``.
        section: where an unknown key or a non-mapping is reported (default: ``prefix`` without its dot).
        fixed: fields the caller sets itself, left out of the ``known`` list.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     steps: int = 1
    >>> section_problems(C, {"steps": "two", "stpes": 3}, "c.")
    [('c', "unknown key(s) ['stpes']; known: ['steps']"), ('c.steps', "expected an integer, got 'two'")]
    """
    own = getattr(cls, "settings_problems", None)
    if own is not None:  # a class that takes more settings than its fields (e.g. TRL's): it knows them
        return own(values, prefix, section=section, fixed=fixed)
    where = section or prefix.rstrip(".")
    if not isinstance(values, Mapping):
        return [(where, f"expected a mapping of settings, got {values!r}"[:200])]
    names = field_names(cls)
    unknown = sorted(set(values) - set(names))
    out = [(where, f"unknown key(s) {unknown}; known: {sorted(set(names) - set(fixed))}")] if unknown else []
    return out + type_problems(cls, values, prefix)


class TypedSettings(BaseModel):
    """A pydantic settings model read from YAML: unknown keys refused (``extra="forbid"``) and every
    given value checked against its field's annotation before pydantic converts it
    (:func:`type_problems`): ``"5"`` for a number is refused with a hint rather than read as 5, and
    the message names the key and the type it wants. Each default is written once, as the field's.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): :class:`SettingProblems` listing
    each wrongly typed key.
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


class SettingProblems(ValueError):
    """Settings refused before their class was built: ``problems`` is ``[(key, message)]`` (the
    ``key`` relative to where the settings sit, as :func:`section_problems` gives it)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in self.problems))


def problems_of(error: Exception, prefix: str = "") -> list[tuple[str, str]]:
    """``[(dotted place, message)]`` of a pydantic ``ValidationError`` (or any other error): each
    error's location joined with dots (``sft.lora_r``), pydantic's ``"Value error, "`` prefix
    dropped, and the problems of a :class:`SettingProblems` raised inside a validator listed one by
    one under its location; ``prefix`` goes before every place (``grpo.warm_start.``)."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return [(prefix.rstrip("."), str(error))]
    out: list[tuple[str, str]] = []
    for e in errors():
        loc = prefix + ".".join(str(x) for x in e.get("loc", ()))
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, SettingProblems):
            for key, msg in inner.problems:
                out.append((f"{loc}.{key}" if loc and key else loc or key, msg))
            continue
        if e.get("type") in ("extra_forbidden", "unexpected_keyword_argument"):
            *parent, key = loc.split(".")
            out.append((".".join(parent), f"unknown key(s) [{key!r}]"))
            continue
        msg = str(e.get("msg", ""))
        out.append((loc, msg[len("Value error, "):] if msg.startswith("Value error, ") else msg))
    return out
