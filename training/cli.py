"""``sqlsociety train``: the four-phase pipeline from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from society.infra import InfrastructureError

console = Console()


def _phases(text: str) -> set[int]:
    try:
        out = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise typer.BadParameter(f"--phases {text!r}: use a comma list of 1,2,3,4") from None
    if not out or not out <= {1, 2, 3, 4}:
        raise typer.BadParameter(f"--phases {text!r}: use a comma list of 1,2,3,4")
    return out


def train(
    config: Path | None = typer.Option(None, "--config", help="Training profile YAML (overrides --profile)."),
    profile: str = typer.Option(
        "default", "--profile", help="Shipped profile: smoke (SmolLM2-135M, minutes) or default (Qwen2.5-Coder-0.5B)."
    ),
    phases: str = typer.Option("1,2,3,4", "--phases", help="Comma list of phases: 1 gather, 2 SFT, 3 GRPO, 4 bandit."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Resume this run directory (finished phases are skipped)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Where to write a new run (default runs/train-<profile>-<time>)."
    ),
) -> None:
    """Train the society role by role: gather rollouts, SFT the juniors, GRPO the senior, fit the
    supervisor's bandit; evaluates on a fixed dev subset after each phase and writes a report."""
    from training.pipeline import TrainConfig, TrainConfigError, TrainingPipeline

    root = resume or run_dir
    try:
        if resume is not None:
            if not (resume / "config.yaml").is_file():
                raise TrainConfigError(
                    f"--resume {resume}: no config.yaml there; pass a run directory made by sqlsociety train"
                )
            cfg = TrainConfig.load(resume / "config.yaml")
            root = resume
        else:
            cfg = TrainConfig.load(config or profile)
            root = run_dir or Path("runs") / f"train-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        console.print(f"[bold]sqlsociety train[/bold] profile [cyan]{cfg.name}[/cyan] -> {root}")
        pipe = TrainingPipeline(cfg, root, phases=_phases(phases), echo=lambda m: console.print(m))
        pipe.run()
    except TrainConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    except InfrastructureError as e:
        console.print(f"[red]stopped:[/red] {escape(str(e))}", highlight=False)
        console.print(f"nothing of the failed step was recorded as a result; fix the cause, then resume with "
                      f"`sqlsociety train --resume {root}`")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: everything finished so far is kept; resume with "
                      f"`sqlsociety train --resume {root}`")
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Add ``train`` to the root app."""
    app.command("train")(train)
