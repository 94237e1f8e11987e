"""Runners in other processes or on other machines, against one trainer's store.

The trainer (phase 1, :func:`training.gather.gather`) keeps the SQLite store on its host and serves
it with Agent Lightning 0.3's ``LightningStoreServer`` (``GatherConfig.store_host`` /
``store_port``, the profile's ``gather:`` section; ``remote_runners`` deepens the queue for them).
A runner elsewhere connects with ``LightningStoreClient``, dequeues rollouts, runs
:class:`training.agent.SocietyAgent` on them and writes spans, rewards and the attempt's status back
through the same server -- the trainer's store holds everything, exactly as with its own runners::

    # trainer host: the run directory gets `store_url` and `runner_society.yaml` while phase 1 runs
    GatherConfig(n_runners=0, remote_runners=4, store_host="0.0.0.0", store_port=4747,
                 max_attempts=2, unresponsive_s=60)
    # each other host (or process): two runners
    sqlsociety runner --store-url http://TRAINER:4747 --config runner_society.yaml --runners 2

A runner killed mid-rollout loses nothing: its attempt stops sending heartbeats, the store marks it
``unresponsive`` after ``unresponsive_s`` (or ``timeout`` after ``rollout_timeout_s``) and, with
``max_attempts > 1``, the rollout is dequeued again by another runner.

The model endpoints come from the resources the trainer published (one ``agl.LLM`` per model alias);
those are loopback URLs when the trainer serves the models itself, so a runner on another machine
passes ``--endpoint ALIAS=BASE_URL[,MODEL]`` for every alias (a model server it can reach: its own,
or a shared vLLM), which replaces the published resource.

:func:`run_runners` (the ``sqlsociety runner`` command) starts ``n`` worker processes
(``python -m training.remote --worker``), each one Agent Lightning ``LitAgentRunner`` with a unique
worker id, and watches the store: when it has been unreachable for ``exit_after_s`` seconds (the
trainer finished or died) the workers are stopped and the command returns. Agent Lightning's
client returns "no rollout" on a connection error, so without this watch a runner would poll a
dead store forever.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import typer

from society.health import http_ok, poll_until

__all__ = ["RunnerError", "parse_store_url", "store_alive", "run_runners", "parse_endpoint", "HEALTH_PATH"]

#: Agent Lightning 0.3's store server health route (``API_V1_AGL_PREFIX + "/health"``).
HEALTH_PATH = "/v1/agl/health"


class RunnerError(RuntimeError):
    """The runners cannot start (bad URL, the store never answered, a bad option); the message says why."""


def parse_store_url(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> ``(host, port)``.

    Raises:
        RunnerError: not ``http://`` with a host and an explicit port, or a path/query after it.
    """
    u = urlparse(url)
    if u.scheme != "http" or not u.hostname or u.port is None or u.path not in ("", "/") or u.query:
        raise RunnerError(
            f"--store-url {url!r}: give http://HOST:PORT of the trainer's store server "
            "(the run directory's store_url file while phase 1 runs)"
        )
    return u.hostname, u.port


def store_alive(url: str, timeout_s: float = 3.0) -> bool:
    """True when the store server at ``url`` answers its health route with 200 within ``timeout_s``."""
    return http_ok(url.rstrip("/") + HEALTH_PATH, timeout_s=timeout_s)


def parse_endpoint(text: str) -> tuple[str, tuple[str, str]]:
    """``ALIAS=BASE_URL[,MODEL]`` -> ``(alias, (base_url, model))`` (model defaults to the alias).

    Raises:
        RunnerError: malformed.
    """
    alias, sep, rest = text.partition("=")
    url, _, model = rest.partition(",")
    if not sep or not alias or not url.startswith(("http://", "https://")):
        raise RunnerError(f"--endpoint {text!r}: use ALIAS=BASE_URL[,MODEL], e.g. junior_policy=http://gpu:8000/v1")
    return alias, (url, model or alias)


def _agent(config: str, endpoints: Mapping[str, Any], data_dir: str | None) -> Any:
    """A SocietyAgent whose ``endpoints`` replace the trainer's published resources of the same alias."""
    from training.agent import SocietyAgent

    class RemoteSocietyAgent(SocietyAgent):
        def config_for(self, resources: Mapping[str, Any] | None, rollout: Any = None) -> Any:
            kept = {k: v for k, v in (resources or {}).items() if k not in endpoints}
            return super().config_for(kept, rollout)

    return RemoteSocietyAgent(config, endpoints=endpoints, data_dir=data_dir)


def _worker(
    store_url: str,
    config: str,
    worker_id: str,
    endpoints: Mapping[str, Any],
    data_dir: str | None,
    heartbeat_s: float,
    poll_s: float,
) -> None:
    """One runner: dequeue, run, report -- until interrupted (SIGINT/SIGTERM) by :func:`run_runners`."""
    import agentlightning as agl
    from agentlightning.store.client_server import LightningStoreClient

    from training.agent import InterruptedRolloutGuard, StoreTracer

    agent = _agent(config, endpoints, data_dir)
    store = LightningStoreClient(store_url)
    runner = agl.LitAgentRunner(tracer=StoreTracer(), poll_interval=poll_s, heartbeat_interval=heartbeat_s)
    runner.init(agent=agent, hooks=[InterruptedRolloutGuard()])  # an interrupted rollout is not 'succeeded'
    runner.init_worker(worker_id, store)  # type: ignore[arg-type]  # a string id: unique across hosts

    async def main() -> None:
        try:
            await runner.iter()
        finally:
            await store.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        runner.teardown_worker(worker_id)  # type: ignore[arg-type]
        runner.teardown()


def run_runners(
    store_url: str,
    config: str | os.PathLike[str],
    *,
    n_runners: int = 1,
    endpoints: Mapping[str, tuple[str, str]] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    wait_s: float = 300.0,
    exit_after_s: float = 30.0,
    heartbeat_s: float = 5.0,
    poll_s: float = 1.0,
    log: Callable[[str], None] = print,
    on_start: Callable[[list[subprocess.Popen[bytes]]], None] | None = None,
) -> int:
    """Run ``n_runners`` runner processes against the store at ``store_url`` until it goes away.

    Args:
        store_url: ``http://HOST:PORT`` of the trainer's store server.
        config: the society YAML the trainer's rollouts run (its ``runner_society.yaml``).
        n_runners: worker processes (>= 1).
        endpoints: alias -> (base_url, model) replacing the trainer's published endpoints.
        data_dir: Spider-format directory on this host (a task's ``db_path`` from the trainer's
            host is used when it exists here, else ``data_dir/database/<db_id>/<db_id>.sqlite``).
        wait_s: how long to wait for the store to answer at start (the trainer may start later).
        exit_after_s: the store unreachable this long -> stop the workers and return.
        heartbeat_s / poll_s: the runners' heartbeat and empty-queue poll intervals (seconds).
        log: progress lines. on_start: called with the worker processes once started (tests).

    Returns:
        0 when the store went away (the trainer finished or stopped), else the first non-zero
        worker exit status (the workers all exited on their own).

    Raises:
        RunnerError: bad URL/config/count, or the store did not answer within ``wait_s``.
    """
    host, port = parse_store_url(store_url)
    cfg_path = Path(config)
    if not cfg_path.is_file():
        raise RunnerError(f"--config {cfg_path} does not exist; copy the trainer's runner_society.yaml")
    if n_runners < 1:
        raise RunnerError(f"--runners {n_runners}: use at least 1")
    if not poll_until(lambda: store_alive(store_url), timeout_s=wait_s, poll_s=1.0):
        raise RunnerError(
            f"the store at {store_url} did not answer {HEALTH_PATH} within {wait_s:.0f} s; "
            "is phase 1 running (its run directory has a store_url file)?"
        )
    me = f"{socket.gethostname()}-{os.getpid()}"
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP=os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "True"))
    try:
        for i in range(n_runners):
            cmd = [
                sys.executable,
                "-m",
                "training.remote",
                "--worker",
                "--store-url",
                store_url,
                "--config",
                str(cfg_path.resolve()),
                "--worker-id",
                f"{me}-{i}",
                "--heartbeat-s",
                str(heartbeat_s),
                "--poll-s",
                str(poll_s),
                "--parent-pid",  # the worker dies with this process, even when it is SIGKILLed
                str(os.getpid()),
            ]
            if data_dir is not None:
                cmd += ["--data-dir", str(data_dir)]
            for alias, (url, model) in (endpoints or {}).items():
                cmd += ["--endpoint", f"{alias}={url},{model}"]
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        log(f"{n_runners} runner(s) {me}-0..{n_runners - 1} connected to {store_url}")
        if on_start is not None:
            on_start(procs)
        down_since: float | None = None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                bad = [c for c in codes if c not in (0, -signal.SIGINT, -signal.SIGTERM)]
                log(f"every runner exited (status {codes})")
                return int(bad[0]) if bad else 0
            if store_alive(store_url):
                down_since = None
            else:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since >= exit_after_s:
                    log(
                        f"the store at {store_url} has not answered for {exit_after_s:.0f} s (trainer finished or "
                        "stopped): stopping the runners"
                    )
                    return 0
            time.sleep(1.0)
    finally:
        _stop(procs)


def _stop(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGINT each live worker's process group, then SIGKILL after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


worker_app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@worker_app.command(help="One runner process, started by `sqlsociety runner` (internal).")
def _worker_cli(
    worker: bool = typer.Option(False, "--worker", help="run one runner (required: this entry point is internal)"),
    store_url: str = typer.Option(..., "--store-url", help="http://HOST:PORT of the trainer's store server"),
    config: str = typer.Option(..., "--config", help="the society YAML the trainer's rollouts run"),
    worker_id: str = typer.Option(..., "--worker-id", help="unique across hosts"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Spider-format directory on this host"),
    endpoint: list[str] = typer.Option([], "--endpoint", help="ALIAS=BASE_URL[,MODEL]; repeatable"),
    heartbeat_s: float = typer.Option(5.0, "--heartbeat-s"),
    poll_s: float = typer.Option(1.0, "--poll-s"),
    parent_pid: int | None = typer.Option(None, "--parent-pid", help="die with this process"),
) -> None:
    """``python -m training.remote --worker ...``: one runner process of :func:`run_runners`
    (exit 0 when interrupted, 2 for bad arguments)."""
    if not worker:
        raise typer.BadParameter("this entry point runs one runner started by `sqlsociety runner`; pass --worker",
                                 param_hint="--worker")
    if parent_pid is not None:
        from training.agent import die_with_parent

        die_with_parent(parent_pid)
    endpoints = dict(parse_endpoint(e) for e in endpoint)
    _worker(store_url, config, worker_id, endpoints, data_dir, heartbeat_s, poll_s)


if __name__ == "__main__":
    worker_app(prog_name="python -m training.remote")
