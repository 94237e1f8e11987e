"""Phase 1 -- gather: the baseline society over a training split fills the persistent store.

:func:`gather` runs :class:`training.agent.SocietyAgent` on Spider tasks through
``agl.Trainer(n_runners=..., store=SqliteLightningStore(RUN_DIR/store.sqlite))``; the
algorithm is :class:`GatherAlgorithm`, an Agent Lightning ``FastAlgorithm`` that only streams
tasks through the rollout queue and waits for them (no learning; the later phases learn from
what it stored). Every finished rollout -- spans, reward, per-role outcomes -- is committed to
SQLite the moment it finishes, so a run killed at any point resumes: tasks with a succeeded
rollout in the store are skipped (``redo_failed`` decides for failed ones), nothing stored is
lost, and rollouts left running by the dead process are marked ``cancelled``.

Usage::

    from training.gather import GatherRun, gather
    from training.gather_config import GatherConfig
    summary = gather(GatherConfig(n_runners=2), GatherRun(run_dir="runs/train-1", task_ids=["train-0", "train-1"],
                                                          society_config="configs/smoke.yaml"))
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import agentlightning as agl
from agentlightning.execution import ClientServerExecutionStrategy
from agentlightning.types import RolloutConfig

from evaluation.metrics.rewards import RewardConfig
from evaluation.tracing.store import SqliteLightningStore
from society.config import SocietyConfig
from society.infra import InfrastructureError, ctrl_c_noted, dead_servers
from society.llm import Endpoint, as_endpoint
from society.server_process import free_port
from society.serving import serve_config
from tools.spider import load_examples
from training.agent import (
    InterruptedRolloutGuard,
    SocietyAgent,
    StoreTracer,
    task_from_example,
    with_exploration,
)
from training.gather_config import GatherConfig

logger = logging.getLogger(__name__)

#: File name of the store inside a run directory.
STORE_FILE = "store.sqlite"


@dataclass
class GatherRun:
    """What one :func:`gather` call runs, besides its settings (:class:`training.gather_config.GatherConfig`,
    the profile's ``gather:`` section: split, runners, exploration rate, timeouts, store server); no
    setting is in both.

    Attributes:
        run_dir: the run directory; the store is ``run_dir/store.sqlite`` (created or resumed).
        task_ids: the Spider ids of the tasks to run, in order (e.g. ``["train-0", "train-5"]``; ids
            repeated are run once); phase 1 draws them from the profile's ``limit`` / ``offset`` /
            ``sample_seed`` (:func:`training.run_questions.gather_draw`).
        society_config: the society YAML (or a loaded :class:`SocietyConfig`); default the
            package default (``configs/society.yaml``).
        data_dir: Spider-format directory; default ``tools.spider.default_data_dir()``.
        exploration_seed: seed of the supervisor's exploration draws (``GatherConfig.epsilon``).
        reward: reward weights (default ``RewardConfig()``, range [0, 1]).
        redo_failed: on resume, run again tasks whose rollouts all failed (endpoint down, crash).
        endpoints: model alias -> ``Endpoint`` or ``(base_url, model[, api_key])``; aliases not given and
            marked ``embedded`` get a llama.cpp server started for the run (``society.serving.serve_config``).
        poll_interval_s: how often (seconds) the algorithm checks for finished rollouts.
        progress: show a Rich progress bar on stderr.
        hooks: Agent Lightning hooks for the trainer (e.g. ``training.hooks.MetricsHook`` for
            ``metrics.jsonl``); they run in the runner processes.
        agent: what a rollout runs: ``society`` (the whole society) or ``juniors`` (the junior
            round and the supervisor's pick only: a few short calls per task, for junior SFT data
            and supervisor decisions; ``society.baselines``).
        task_suffix: appended to every task id (e.g. ``/juniors``), so rollouts of another kind
            or another draw on the same Spider question are stored as tasks of their own.
        junior_sampling: ``{"temperature": t, "seed": s}``: the juniors sample with these instead of
            their configured sampling (rejection sampling draws); their rollouts are marked
            ``resample`` and SFT keeps only the juniors that got the answer right there.
        task_juniors: Spider id -> the junior roles (their config names) that run on that task, the
            others left out (rejection sampling draws again only the juniors that were wrong there);
            tasks not named run every junior. Needs ``agent="juniors"``.
        gold_hint: every junior is shown the task's gold SQL as a hint before its own prompt
            (STaR rationalization, Zelikman et al. 2022, section 3.2; the round the profile's
            ``gather.rationalize`` asks for); the rollouts are marked ``rationalized`` and SFT keeps
            only the juniors whose own SQL then matched gold, with the hint removed. Needs
            ``agent="juniors"``.

    Raises:
        ValueError: ``task_ids`` given as one string, an unknown ``agent``, ``gold_hint`` or
            ``task_juniors`` without ``agent="juniors"``, or ``junior_sampling`` without
            ``temperature`` and ``seed``.
    """

    run_dir: str | os.PathLike[str]
    task_ids: Sequence[str]
    society_config: str | os.PathLike[str] | SocietyConfig | None = None
    data_dir: str | os.PathLike[str] | None = None
    exploration_seed: int = 0
    reward: RewardConfig | None = None
    redo_failed: bool = True
    endpoints: Mapping[str, Any] | None = None
    poll_interval_s: float = 0.5
    progress: bool = True
    hooks: Sequence[agl.Hook] = ()
    agent: str = "society"
    task_suffix: str = ""
    junior_sampling: Mapping[str, Any] | None = None
    task_juniors: Mapping[str, Sequence[str]] | None = None
    gold_hint: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.task_ids, str):
            raise ValueError(f"GatherRun.task_ids={self.task_ids!r}; give a list of ids, e.g. [{self.task_ids!r}]")
        if self.agent not in ("society", "juniors"):
            raise ValueError(f"GatherRun.agent={self.agent!r}; use 'society' or 'juniors'")
        if self.gold_hint and self.agent != "juniors":
            raise ValueError("GatherRun.gold_hint needs agent='juniors': only the juniors are shown the gold SQL")
        if self.task_juniors and self.agent != "juniors":
            raise ValueError("GatherRun.task_juniors needs agent='juniors': it chooses which juniors run on a task")
        if self.junior_sampling is not None and not {"temperature", "seed"} <= set(self.junior_sampling):
            raise ValueError(f"GatherRun.junior_sampling={dict(self.junior_sampling)!r}; give temperature and seed")

    @property
    def store_path(self) -> Path:
        """``run_dir/store.sqlite``."""
        return Path(self.run_dir) / STORE_FILE


@dataclass
class GatherSummary:
    """What one :func:`gather` call did.

    Attributes:
        store_path: the SQLite store.
        tasks: tasks the run names (:func:`select_tasks`).
        skipped: tasks already done in the store (resume), not run again.
        recovered: rollouts left unfinished by a previous process and marked cancelled.
        run: tasks enqueued by this call.
        succeeded / failed: outcomes of this call's rollouts (failed includes cancelled).
        mean_reward: mean reward of this call's succeeded rollouts (None if none).
        stored_succeeded: succeeded rollouts in the store after the call (all calls).
        seconds: wall time of the call.
    """

    store_path: str
    tasks: int
    skipped: int
    recovered: int
    run: int
    succeeded: int
    failed: int
    mean_reward: float | None
    stored_succeeded: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class GatherAlgorithm(agl.FastAlgorithm):
    """Streams tasks through the store's rollout queue and waits for them; learns nothing.

    Keeps at most ``max_in_flight`` rollouts queued or running, publishes ``resources`` once
    (model endpoints as ``agl.LLM`` named by alias), and calls ``on_finished(rollout)`` for each
    finished rollout (from the algorithm's event loop).

    Args:
        resources: named resources published before the first rollout.
        max_in_flight: queue depth (>= 1); ``n_runners + 1`` keeps every runner busy.
        rollout_config: retries / timeouts of each rollout.
        poll_interval_s: wait granularity in seconds.
        on_finished: callback per finished rollout.
        should_stop: called after each poll with the rollouts that just finished; an exception it
            returns stops the gather: nothing more is enqueued, :attr:`error` holds it and
            :meth:`run` returns (the caller raises it). Used to stop on an infrastructure failure.
        interrupted: an event set by the caller's Ctrl-C handler (:func:`society.infra.ctrl_c_noted`);
            once set, nothing more is enqueued and :meth:`run` returns at the next poll, so the
            execution strategy stops its runners even when the ``KeyboardInterrupt`` itself was
            swallowed on the way (seen 2026-12-05: a gather whose model calls hung was still running
            117 s after SIGINT, its runners heart-beating).
    """

    def __init__(
        self,
        resources: agl.NamedResources,
        *,
        max_in_flight: int,
        rollout_config: RolloutConfig | None = None,
        poll_interval_s: float = 0.5,
        on_finished: Callable[[agl.Rollout], None] | None = None,
        should_stop: Callable[[list[agl.Rollout]], BaseException | None] | None = None,
        interrupted: threading.Event | None = None,
    ) -> None:
        super().__init__()
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}; must be >= 1")
        self.resources = resources
        self.max_in_flight = max_in_flight
        self.rollout_config = rollout_config
        self.poll_interval_s = poll_interval_s
        self.on_finished = on_finished
        self.should_stop = should_stop
        self.interrupted = interrupted
        self.error: BaseException | None = None
        self.finished: list[agl.Rollout] = []

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:  # type: ignore[override]
        store = self.get_store()
        tasks = [train_dataset[i] for i in range(len(train_dataset))] if train_dataset is not None else []
        if not tasks:
            return
        update = await store.add_resources(self.resources)
        pending: set[str] = set()
        next_task = 0
        while next_task < len(tasks) or pending:
            if self.interrupted is not None and self.interrupted.is_set():
                return
            while next_task < len(tasks) and len(pending) < self.max_in_flight:
                task = tasks[next_task]
                r = await store.enqueue_rollout(
                    input=task, mode="train", resources_id=update.resources_id, config=self.rollout_config,
                    metadata={"task_id": task.get("task_id"), "phase": "gather"},
                )
                pending.add(r.rollout_id)
                next_task += 1
            done = await store.wait_for_rollouts(rollout_ids=sorted(pending), timeout=self.poll_interval_s)
            new = [r for r in done if r.rollout_id in pending]
            for r in new:
                pending.discard(r.rollout_id)
                self.finished.append(r)
                if self.on_finished is not None:
                    self.on_finished(r)
            if self.should_stop is not None:
                self.error = self.should_stop(new)
                if self.error is not None:
                    return
            if not done:
                await asyncio.sleep(0.05)


class GatherStopped(InfrastructureError):
    """A rollout failed for infrastructure reasons (its model endpoint stayed down, the graph crashed)
    and the gather stopped; the failed rollouts are re-run by the next gather into the same store."""


def _infrastructure_stop(finished: list[agl.Rollout]) -> BaseException | None:
    """Why the gather must stop now, or None: a model server this process started has died (its
    :class:`~society.infra.ServerDied`), or a rollout ended ``failed`` after its attempts (the agent
    raises ``RolloutFailed`` only for infrastructure failures; a wrong answer is a low reward)."""
    dead = dead_servers()
    if dead:
        return dead[0]
    failed = [r for r in finished if r.status != "succeeded"]
    if failed:
        tasks = ", ".join(str((r.metadata or {}).get("task_id", r.rollout_id)) for r in failed[:3])
        return GatherStopped(f"rollout(s) for task(s) {tasks} failed (status {failed[0].status}): a model endpoint "
                             "stayed down or the graph crashed; see the run's log. Fix it and resume: the failed "
                             "tasks are run again")
    return None


def select_tasks(config: GatherConfig, run: GatherRun) -> list[dict[str, Any]]:
    """The tasks ``run.task_ids`` names in ``config.split``, in the order given (repeats once), as
    ``training.agent.task_from_example`` dicts marked with the run's suffix, agent, junior sampling,
    the juniors that run (``run.task_juniors``) and gold hint.

    Raises:
        ValueError: ``task_ids`` names ids not in the split.
        tools.spider.DataError: the split cannot be read.
    """
    examples = load_examples(run.data_dir, config.split)
    wanted = list(dict.fromkeys(run.task_ids))
    by_id = {e.id: e for e in examples}
    missing = [t for t in wanted if t not in by_id]
    if missing:
        raise ValueError(
            f"task ids {missing[:5]} are not in split {config.split!r} (ids look like '{config.split}-0')"
        )
    tasks = [task_from_example(by_id[t]) for t in wanted]
    for t in tasks:
        if run.task_juniors and t["task_id"] in run.task_juniors:
            t["juniors"] = list(run.task_juniors[t["task_id"]])
        t["task_id"] += run.task_suffix
        if run.agent != "society":
            t["agent"] = run.agent
        if run.junior_sampling is not None:
            t["junior_sampling"] = dict(run.junior_sampling)
        if run.gold_hint:
            t["rationalize"] = True
    return tasks


def _llm_resource(endpoint: Any) -> agl.LLM:
    """An ``agl.LLM`` resource for an endpoint; its ``extra_body`` (e.g. a LoRA choice) travels in
    ``sampling_parameters["extra_body"]`` (read back by ``SocietyAgent.config_for``)."""
    e = as_endpoint(endpoint)
    return agl.LLM(endpoint=e.base_url, model=e.model, api_key=e.api_key,
                   sampling_parameters={"extra_body": dict(e.extra_body)} if e.extra_body else {})


@contextmanager
def _model_endpoints(cfg: SocietyConfig, given: Mapping[str, Any] | None) -> Iterator[dict[str, Endpoint]]:
    """Alias -> ``Endpoint`` for every alias a role uses; embedded ones not in ``given`` are served here."""
    given = {a: as_endpoint(e) for a, e in (given or {}).items()}
    for alias in given:
        if alias not in cfg.models:
            raise ValueError(f"endpoints names model alias {alias!r}, not in the config's models {sorted(cfg.models)}")
    need = {a for a in cfg.embedded_aliases() if a not in given}
    if not need:
        yield given
        return
    sub = cfg.model_copy(update={"models": {a: m for a, m in cfg.models.items() if a in need}})
    sub = sub.model_copy(update={"roles": [r for r in cfg.roles if r.model in need]})
    with serve_config(sub) as eps:
        yield {**given, **eps}


def _progress(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]phase 1 gather[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


#: Files a running gather leaves in its run directory for ``sqlsociety runner``: the store's URL and
#: the society config the rollouts run (exploration included); removed when the gather ends.
STORE_URL_FILE = "store_url"
RUNNER_CONFIG_FILE = "runner_society.yaml"


@contextmanager
def _runner_invitation(run_dir: Path, cfg: SocietyConfig, host: str, port: int) -> Iterator[None]:
    """Write ``store_url`` and ``runner_society.yaml`` into ``run_dir`` for the gather's duration."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    url_file, cfg_file = run_dir / STORE_URL_FILE, run_dir / RUNNER_CONFIG_FILE
    cfg_file.write_text(cfg.to_yaml())
    url_file.write_text(f"http://{shown}:{port}\n")
    try:
        yield
    finally:
        url_file.unlink(missing_ok=True)


def gather(config: GatherConfig, run: GatherRun) -> GatherSummary:
    """Run phase 1's rollouts: the society (or the juniors, ``run.agent``) on every task of ``run``
    not yet done, through ``agl.Trainer``, with the settings of ``config``.

    Resumable: call it again with the same ``run.run_dir`` after a crash or kill; finished rollouts
    are kept and their tasks skipped.

    Returns:
        :class:`GatherSummary` (also written to ``run_dir/gather.json``).

    Raises:
        evaluation.tracing.store.StoreLockedError: another process is gathering into the same run dir.
        society.config.ConfigError: unusable society config.
        ValueError: no runner (``n_runners`` and ``remote_runners`` both 0), bad task ids or endpoints.
    """
    problem = config.runners_problem()
    if problem is not None:
        raise ValueError(f"gather.n_runners={config.n_runners}: {problem}")
    t0 = time.perf_counter()
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sc = run.society_config
    cfg = sc if isinstance(sc, SocietyConfig) else SocietyConfig.load(sc)
    cfg = with_exploration(cfg, config.epsilon, run.exploration_seed)
    tasks = select_tasks(config, run)

    store = SqliteLightningStore(run.store_path, recover="cancel")
    with ExitStack() as stack0:
        stack0.callback(store.close)
        archive = store.archive
        stack0.callback(archive.close)
        statuses = ("succeeded",) if run.redo_failed else ("succeeded", "failed")
        done = archive.done_task_ids(statuses)
        todo = [t for t in tasks if t["task_id"] not in done]
        skipped = len(tasks) - len(todo)
        finished: list[agl.Rollout] = []
        rewards: dict[str, float | None] = {}

        with ExitStack() as stack:
            progress = stack.enter_context(_progress(run.progress))
            bar = progress.add_task("gather", total=len(tasks), completed=skipped, info="") if progress else None

            def on_finished(r: agl.Rollout) -> None:
                finished.append(r)
                if r.status == "succeeded":
                    rewards[r.rollout_id] = archive.rollout(r.rollout_id).reward
                if progress is not None:
                    ok = [v for v in rewards.values() if v is not None]
                    info = f"ok {len(ok)} failed {len(finished) - len(rewards)}" + (
                        f" mean reward {sum(ok) / len(ok):.3f}" if ok else "")
                    progress.update(bar, advance=1, info=info)

            if todo:
                endpoints = stack.enter_context(_model_endpoints(cfg, run.endpoints))
                resources = {alias: _llm_resource(e) for alias, e in endpoints.items()}
                agent = SocietyAgent(cfg, reward=run.reward, data_dir=run.data_dir)
                interrupted = threading.Event()  # set by Ctrl-C; the algorithm stops on it too
                algorithm = GatherAlgorithm(
                    resources,
                    max_in_flight=config.n_runners + config.remote_runners + 1,
                    rollout_config=RolloutConfig(
                        timeout_seconds=config.rollout_timeout_s, max_attempts=config.max_attempts,
                        unresponsive_seconds=config.unresponsive_s,
                        retry_condition=["failed", "timeout", "unresponsive"] if config.max_attempts > 1 else [],
                    ),
                    poll_interval_s=run.poll_interval_s,
                    on_finished=on_finished,
                    should_stop=_infrastructure_stop,
                    interrupted=interrupted,
                )
                port = config.store_port or free_port()
                strategy = ClientServerExecutionStrategy(
                    role="both" if config.n_runners > 0 else "algorithm", n_runners=max(config.n_runners, 1),
                    server_host=config.store_host, server_port=port,
                )
                trainer = agl.Trainer(
                    n_runners=max(config.n_runners, 1), store=store, algorithm=algorithm, tracer=StoreTracer(),
                    strategy=strategy, hooks=[InterruptedRolloutGuard(), *run.hooks],
                )
                stack.enter_context(_runner_invitation(run_dir, cfg, config.store_host, port))
                with ctrl_c_noted(interrupted):
                    trainer.fit(agent, train_dataset=todo)
                if interrupted.is_set():
                    raise KeyboardInterrupt  # the execution strategy swallows it and returns normally
                if algorithm.error is not None:
                    raise algorithm.error

        ok = [v for v in rewards.values() if v is not None]
        summary = GatherSummary(
            store_path=str(run.store_path),
            tasks=len(tasks),
            skipped=skipped,
            recovered=len(store.recovered),
            run=len(todo),
            succeeded=sum(1 for r in finished if r.status == "succeeded"),
            failed=sum(1 for r in finished if r.status != "succeeded"),
            mean_reward=(sum(ok) / len(ok)) if ok else None,
            stored_succeeded=len(archive.rollouts(status="succeeded")),
            seconds=time.perf_counter() - t0,
        )
    (run_dir / "gather.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
