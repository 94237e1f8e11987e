"""The ``sqlsociety`` command line (Typer + Rich): the root, above every other package (society/cli/).

Each package contributes its commands through a ``register(app)`` function so the
root stays readable: evaluation (eval-predictions), society (ask, eval, roles),
training (train), observability (traces, report), judging (judge), the juniors' candidates
(candidates).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm otherwise stalls ~10 s on the network

import typer

from evaluation import candidates_cli, judge_cli, obs_cli
from evaluation import cli as evaluation_cli
from society import commands as society_commands
from training import cli as training_cli

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


for _module in (evaluation_cli, society_commands, training_cli, obs_cli, judge_cli, candidates_cli):
    _module.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
