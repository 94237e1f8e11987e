"""The ``sqlsociety`` command line (Typer + Rich).

Each package contributes its commands through a ``register(app)`` function so the
root stays readable: evaluation (eval-predictions), society (ask, eval, roles),
training (train), observability (traces, report), judging (judge).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm otherwise stalls ~10 s on the network

import typer

app = typer.Typer(
    name="sqlsociety",
    help="Train and run a society of LLM agents for text-to-SQL.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """SQL Society: a LangGraph society of text-to-SQL agents, trained role by role on Agent Lightning.

    Command modules import their heavy dependencies (LangGraph, Agent Lightning, TRL) inside
    the command functions, so `sqlsociety --help` and `eval-predictions` start fast.
    """


def _register_all() -> None:
    from evaluation import cli as evaluation_cli

    evaluation_cli.register(app)
    from society import commands as society_commands

    society_commands.register(app)
    from training import cli as training_cli

    training_cli.register(app)
    from evaluation import obs_cli

    obs_cli.register(app)
    from evaluation import judge_cli

    judge_cli.register(app)


_register_all()

if __name__ == "__main__":  # pragma: no cover
    app()
