"""Phase 1's settings, :class:`GatherConfig`: the training profile's ``gather:`` section, and what
:func:`training.gather.gather` runs its rollouts with.

One model, each default written once (TRL style: the config beside its trainer, no heavy import here,
so loading a profile does not import Agent Lightning). What one gather call is given besides these
settings -- its run directory, society, task ids, endpoints, hooks, the kind of rollout -- is
:class:`training.gather.GatherRun`; no setting is in both.

>>> GatherConfig().n_runners, GatherConfig().epsilon, GatherConfig().rollout_timeout_s
(1, 0.2, 900.0)
>>> GatherConfig(n_runners=0).runners_problem()
'0 runners here needs gather.remote_runners >= 1 (sqlsociety runner)'
>>> GatherConfig(n_runners=0, remote_runners=2).runners_problem() is None
True
"""

from __future__ import annotations

from pydantic import Field

from tools.value_types import TypedSettings

__all__ = ["JUNIORS_SUFFIX", "GatherConfig", "question_of"]

#: Task-id suffix of a juniors-only first draw (``train-12/juniors``); its rejection-sampling draws
#: are ``/juniors#<k>``, rationalization ``/rationalized`` (``training.phase_gather``).
JUNIORS_SUFFIX = "/juniors"


def question_of(task_id: str) -> str:
    """The Spider question a rollout's task id names, without its rollout-kind suffix (``/juniors``,
    ``/juniors#1``, ``/rationalized``).

    >>> question_of("train-12/juniors#1"), question_of("train-12")
    ('train-12', 'train-12')
    """
    return str(task_id).split("/")[0]


class GatherConfig(TypedSettings):
    """Phase 1's settings (the profile's ``gather:`` section).

    Attributes:
        split: Spider split phase 1 gathers on (``train``; never the evaluation split,
            :class:`training.profile.TrainConfig` refuses that).
        limit: the society's train tasks (>= 1): the first ``limit`` in file order after ``offset``, or with
            ``sample_seed`` drawn at random across all the split's databases
            (:func:`tools.sampling.disjoint_draws`; ``offset`` is then ignored).
        offset / sample_seed: see ``limit``.
        n_runners: Agent Lightning runner processes on this host (>= 0; 0 needs ``remote_runners``).
        epsilon: supervisor exploration rate in [0, 1] (``training.agent.EpsilonGreedyPolicy`` around the
            configured policy), so the bandit of phase 4 gets logged propensities.
        rollout_timeout_s: wall-clock limit of one attempt in seconds (None: no limit).
        store_host: interface the store server (Agent Lightning's ``LightningStoreServer`` in front of the
            SQLite store) binds to: ``localhost``; ``0.0.0.0`` or the host's address lets runners on other
            machines connect (``sqlsociety runner --store-url http://HOST:PORT``, :mod:`training.remote`).
        store_port: its port in [1, 65535] (None: a free one, written to ``RUN_DIR/store_url``).
        remote_runners: runners expected in other processes or on other hosts (>= 0); they deepen the
            rollout queue (``n_runners + remote_runners + 1`` in flight).
        max_attempts: attempts per rollout (>= 1; Agent Lightning retries failed, timed-out and
            unresponsive attempts when > 1).
        unresponsive_s: an attempt whose runner sent no heartbeat for this many seconds (> 0; its process
            or host died) becomes ``unresponsive``; None: only ``rollout_timeout_s`` ends it.
        junior_limit: more junior data per CPU-hour: juniors-only rollouts (the junior round and the
            supervisor's pick, a few short calls per task) on this many more train tasks (>= 0).
        junior_resamples: k more draws (>= 0) at ``junior_temperature`` (in [0, 2]) of each junior that
            was wrong on one of those tasks (only those juniors run again), whose correct answers only go
            to SFT (rejection sampling, STaR: Zelikman et al. 2022). All land in the same store: one
            ``to_sft`` view, and more supervisor decisions for the bandit.
        rationalize: then every train question gathered above on which no junior's own SQL matched gold
            in any draw is asked once more, juniors only, with the gold SQL shown to the juniors as a hint
            (STaR rationalization, Zelikman et al. 2022, section 3.2; tasks ``train-N/rationalized``,
            metrics phase ``1-gather-rationalized``); SFT keeps a junior's answer only when its own SQL
            matches gold, with the hint removed. Not used for the bandit.

    Who reads what: :func:`training.gather.gather` reads ``split``, the runners, ``epsilon``, the timeouts,
    the attempts and the store server's address; phase 1 of :class:`training.pipeline.TrainingPipeline`
    reads the task draw (``limit``, ``offset``, ``sample_seed``) and the junior rounds (``junior_*``,
    ``rationalize``) and makes one gather call per round.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): an unknown key, a wrongly typed value
    or one out of its range. ``n_runners: 0`` without ``remote_runners`` is allowed here (``--dry-run``
    lists it as an error, :meth:`runners_problem`) and refused by :func:`training.gather.gather`.
    """

    split: str = "train"
    limit: int = Field(8, ge=1)
    offset: int = Field(0, ge=0)
    sample_seed: int | None = None
    n_runners: int = Field(1, ge=0)
    epsilon: float = Field(0.2, ge=0.0, le=1.0)
    rollout_timeout_s: float | None = 900.0
    store_host: str = "localhost"
    store_port: int | None = Field(None, ge=1, le=65535)
    remote_runners: int = Field(0, ge=0)
    max_attempts: int = Field(1, ge=1)
    unresponsive_s: float | None = Field(None, gt=0)
    junior_limit: int = Field(0, ge=0)
    junior_resamples: int = Field(0, ge=0)
    junior_temperature: float = Field(0.8, ge=0.0, le=2.0)
    rationalize: bool = False

    def runners_problem(self) -> str | None:
        """Why no rollout could run (``n_runners + remote_runners < 1``), or None."""
        if self.n_runners + self.remote_runners < 1:
            return "0 runners here needs gather.remote_runners >= 1 (sqlsociety runner)"
        return None
