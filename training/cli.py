"""``sqlsociety train``: the four-phase pipeline from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from society.infra import InfrastructureError
from training import trained_cli

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
        "default",
        "--profile",
        help="Shipped profile: smoke (SmolLM2-135M, minutes), default (Qwen2.5-Coder-0.5B, CPU) or gpu "
        "(vLLM serving, VERL, unsloth; needs the gpu extra on a CUDA machine).",
    ),
    phases: str = typer.Option("1,2,3,4", "--phases", help="Comma list of phases: 1 gather, 2 SFT, 3 GRPO, 4 bandit."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Resume this run directory (finished phases are skipped)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Where to write a new run (default runs/train-<profile>-<time>)."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate the whole profile (sections, models, endpoints, files, the GPU stack it needs) and print the "
        "plan without running or writing anything. Exit 2: the profile has an error; 0: valid (a missing GPU "
        "stack is reported in a NOT RUNNABLE HERE block).",
    ),
) -> None:
    """Train the society role by role: gather rollouts, SFT the juniors, GRPO the senior, fit the
    supervisor's bandit; evaluates on a fixed dev subset after each phase and writes a report."""
    from training.pipeline import TrainingPipeline
    from training.profile import TrainConfig, TrainConfigError

    root = resume or run_dir
    try:
        if resume is not None:
            if not (resume / "config.yaml").is_file():
                raise TrainConfigError(
                    f"--resume {resume}: no config.yaml there; pass a run directory made by sqlsociety train"
                )
            cfg = TrainConfig.load(resume / "config.yaml", check_sections=not dry_run)
            root = resume
        else:
            cfg = TrainConfig.load(config or profile, check_sections=not dry_run)
            root = run_dir or Path("runs") / f"train-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if dry_run:
            from training.plan import plan_profile

            plan = plan_profile(cfg, source=str(resume / "config.yaml" if resume else config or profile),
                                phases=_phases(phases))
            typer.echo(plan.render())  # plain text, not wrapped to the terminal
            raise typer.Exit(2 if plan.errors else 0)
        from training.gpu_stack import INSTALL_GPU, missing_gpu_stack

        gpu_missing = missing_gpu_stack(cfg)
        if gpu_missing:
            raise TrainConfigError(
                f"profile {cfg.name!r} needs {', '.join(gpu_missing)}, missing on this machine; install the GPU "
                f"stack on a CUDA machine ({INSTALL_GPU}), or check with `sqlsociety train --profile ... --dry-run`"
            )
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


def runner(
    store_url: str = typer.Option(..., "--store-url", help="http://HOST:PORT of the trainer's store server (the run "
                                  "directory's store_url file while phase 1 runs)."),
    config: Path = typer.Option(..., "--config", help="The society YAML the trainer runs (its run directory's "
                                "runner_society.yaml)."),
    runners: int = typer.Option(1, "--runners", help="Runner processes on this host."),
    endpoint: list[str] = typer.Option([], "--endpoint", help="ALIAS=BASE_URL[,MODEL]: a model server this host "
                                       "reaches, replacing the trainer's published endpoint (repeat per alias)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Spider-format directory on this host."),
    wait_s: float = typer.Option(300.0, "--wait-s", help="Seconds to wait for the store at start."),
    exit_after_s: float = typer.Option(30.0, "--exit-after-s", help="Stop once the store has not answered this long."),
) -> None:
    """Run rollouts for a trainer on another process or machine: connect to its store server, run the
    society on the rollouts it queues, write spans and rewards back; exit when the store goes away.
    Exit 0 then, 2 for a bad option or a store that never answered."""
    from training.remote import RunnerError, parse_endpoint, run_runners

    try:
        eps = dict(parse_endpoint(e) for e in endpoint)
        rc = run_runners(store_url, config, n_runners=runners, endpoints=eps, data_dir=data_dir, wait_s=wait_s,
                         exit_after_s=exit_after_s, log=lambda m: console.print(escape(m), highlight=False))
    except RunnerError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``runner`` and ``export`` to the root app; ``--run`` of ``ask`` / ``eval`` / ``roles``
    reads trained runs through :mod:`training.trained_cli`."""
    app.command("train")(train)
    app.command("runner")(runner)
    trained_cli.register(app)
