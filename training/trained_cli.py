"""``sqlsociety export`` and the ``--run`` loader of ``ask`` / ``eval`` / ``roles`` (:mod:`training.trained`).

:mod:`training.trained` (and with it the pipeline) is imported inside the functions, so
``sqlsociety --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from society.run_binding import BoundRun, set_run_loader

console = Console()


def load_for_cli(path: Path, model_alias: str | None, serve: bool) -> BoundRun:
    """``--run PATH`` as a :class:`society.run_binding.BoundRun` (the loader ``ask``, ``eval`` and
    ``roles`` call through :func:`society.run_binding.bound_run`).

    With ``serve``, the adapters are checked against their base model
    (:meth:`training.trained.TrainedSociety.check_base`, after ``model_alias`` re-pointed the
    embedded aliases) and given as GGUF files.

    Raises:
        typer.BadParameter: ``path`` is not a run or an export, a file it needs is missing, or an
            adapter would be served another base model (the message names the path and the fix).
    """
    from training.trained import TrainedRunError, load_trained

    try:
        t = load_trained(path)
        society = t.society.with_embedded(model_alias) if model_alias else t.society
        adapters = {}
        if serve:
            t.check_base(society)
            adapters = t.gguf_adapters()
    except TrainedRunError as e:
        raise typer.BadParameter(str(e), param_hint="'--run'") from None
    role_notes = {r.role: (r.trained or f"untrained ({r.why_untrained})") for r in t.roles}
    return BoundRun(society=society, adapters=adapters, notes=t.notes(), role_notes=role_notes, meta=t.summary())


def export_cmd(
    run_dir: Path = typer.Argument(..., help="A training run directory (or an exported folder)."),
    out: Path = typer.Argument(..., help="The folder to write (must not exist, or be empty)."),
    dtype: str = typer.Option("f16", "--dtype", help="The adapters' tensors: f16 (half the size of what "
                              "training served) or f32 (the run's own GGUF files, byte for byte)."),
) -> None:
    """Export a trained society as a self-contained folder: the society YAML with every role bound,
    the GGUF LoRA adapters, the bandit policy and a card. The base model is named (id + sha256), not
    copied. Run it with `sqlsociety eval --run OUT`. Exit 2: not a run, or OUT not empty."""
    from training.trained import TrainedRunError, export_trained, load_trained

    if dtype not in ("f16", "f32"):
        console.print(f"[red]error:[/red] --dtype {escape(dtype)}: use f16 or f32", highlight=False)
        raise typer.Exit(2)
    try:
        written = export_trained(run_dir, out, dtype=dtype)  # type: ignore[arg-type]
    except (TrainedRunError, FileExistsError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    size = sum(f.stat().st_size for f in written.rglob("*") if f.is_file())
    console.print(f"exported {run_dir} -> {written} ({size / 1e6:.1f} MB); run it with "
                  f"`sqlsociety eval --run {written}`", highlight=False, soft_wrap=True)
    for line in load_trained(written).notes():
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``export`` to the root app and let ``ask`` / ``eval`` / ``roles`` read ``--run``."""
    app.command("export")(export_cmd)
    set_run_loader(load_for_cli)
