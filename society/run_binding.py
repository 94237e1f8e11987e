"""``--run RUN_DIR`` of ``sqlsociety ask`` / ``eval`` / ``roles``: a trained society to run.

The society commands do not import the training package (imports point down, tests/test_layers.py);
the package that can read a training run registers a loader here (:func:`set_run_loader`; the
training CLI does, ``training.trained_cli``), and the commands call :func:`bound_run`. What comes back
is a :class:`BoundRun`: the society config with every role on its bound alias, the GGUF LoRA adapters
to serve for those aliases (``society.serving.serve_config(..., adapters=...)``), and one line per
role saying what it is bound to or why it stays untrained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from society.config import SocietyConfig

__all__ = ["BoundRun", "RunLoader", "bound_run", "set_run_loader"]


@dataclass(frozen=True)
class BoundRun:
    """A trained society, ready to serve.

    Attributes:
        society: the society config, every role on its bound model alias, the supervisor on its
            fitted policy when there is one.
        adapters: model alias -> GGUF LoRA adapter file served for it (empty for ``roles``, which
            serves nothing).
        notes: one line per role: ``"<role>: <what it is bound to>"`` or ``"<role>: untrained (<why>)"``.
        role_notes: role name -> the same text without the role name.
        meta: JSON-able facts for the run directory's ``meta.json`` (``trained``): source, adapters,
            policy, bindings.
    """

    society: SocietyConfig
    adapters: dict[str, Path]
    notes: list[str]
    role_notes: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


#: ``(path, model_alias, serve) -> BoundRun``; raises ``typer.BadParameter`` naming ``--run`` (or
#: ``--model-alias``) for input it cannot use. ``serve=False``: only the binding (no adapter
#: conversion, no base-model hashing), for ``roles``.
RunLoader = Callable[[Path, "str | None", bool], BoundRun]

_loader: RunLoader | None = None


def set_run_loader(loader: RunLoader | None) -> None:
    """Register the function that reads ``--run PATH`` (None unregisters it)."""
    global _loader
    _loader = loader


def bound_run(run: Path, config: Path | None, model_alias: str | None = None, *, serve: bool = True) -> BoundRun:
    """The trained society ``--run`` names, through the registered loader.

    Args:
        run: a training run directory or an exported folder.
        config: the command's ``--config`` (must be None: the run brings its society config).
        model_alias: ``--model-alias``: re-point the embedded aliases (the loader refuses it when an
            adapter would then be served another base model).
        serve: False for a command that serves nothing (``roles``).

    Raises:
        typer.BadParameter: ``--config`` given with ``--run``, no loader registered, or what the
            loader refuses (not a run, a missing file, a mismatched base model).
    """
    if config is not None:
        raise typer.BadParameter(f"--run {run} brings its own society config (every role bound to its trained "
                                 "part); drop --config", param_hint="'--config' / '--run'")
    if _loader is None:
        raise typer.BadParameter("--run needs the training package's loader, registered by the `sqlsociety` "
                                 "command (society.cli); run the command through `sqlsociety`", param_hint="'--run'")
    return _loader(run, model_alias, serve)
