"""Many runners, one store: phase 1 with runners in other processes, over loopback.

The trainer (``training.gather.gather`` in its own process, ``n_runners=0``, ``remote_runners=2``)
serves its SQLite store with Agent Lightning's ``LightningStoreServer``; two ``sqlsociety runner``
processes connect with ``LightningStoreClient`` and run the real society (graph, roles, SQL
execution on the real Spider train databases, spans, rewards) on real Spider train tasks.

The model is :class:`StubLLM`, a fixed-answer OpenAI-compatible server in this test process: every
chat completion is the same SQL block (``SELECT count(*) FROM head``). It stands in for a model
because this test is about the store/runner protocol -- which runner ran what, an attempt marked
unresponsive and retried, every task stored once -- not about answers; a real model's speed and
words would only add time and variance. It sits behind a ``tests/holding_proxy.HoldingProxy``
that holds every call until released: no society rollout can finish without a model reply, so
when the victim runner's attempt is running and no call has been answered yet, killing that
runner's worker is provably a kill in the middle of a rollout, on any machine's speed.

One runner's worker is SIGKILLed then; the store marks the attempt unresponsive and the other
runner runs the rollout again. Checked: every task stored once as succeeded, the killed task
retried, spans for every rollout in the trainer's store, both runner commands ended (the survivor
with status 0 once the store went away).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from holding_proxy import HoldingProxy
from runner_processes import alive, children, running_attempt_of

from evaluation.tracing.store import RolloutArchive
from society.config import SMOKE_CONFIG, SocietyConfig
from society.server_process import free_port
from training.remote import RunnerError, parse_endpoint, parse_store_url, run_runners, store_alive

REPO = Path(__file__).resolve().parent.parent
TASKS = ["train-0", "train-1", "train-2", "train-3"]
ENV = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(REPO))


class StubLLM:
    """A fixed-answer model: an OpenAI-compatible chat endpoint that answers every request with the
    same SQL block after ``delay_s`` seconds; counts calls. (Why a stand-in: see the module docstring.)"""

    def __init__(self, delay_s: float) -> None:
        self.calls = 0
        stub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.calls += 1
                time.sleep(delay_s)
                out = json.dumps(
                    {
                        "id": f"c{stub.calls}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "stub"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "```sql\nSELECT count(*) FROM head\n```"},
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _quick_config(tmp_path: Path) -> Path:
    cfg = SocietyConfig.load(SMOKE_CONFIG)
    cfg = cfg.model_copy(update={"limits": cfg.limits.model_copy(update={"max_turns": 1, "max_junior_rounds": 1})})
    path = tmp_path / "quick.yaml"
    path.write_text(cfg.to_yaml())
    return path


GATHER = r"""
import json, sys
from society.config import SocietyConfig
from training.gather import GatherRun, gather
from training.gather_config import GatherConfig
cfg, run_dir, port, stub, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
eps = {a: (stub, "stub") for a in SocietyConfig.load(cfg).models}
s = gather(GatherConfig(n_runners=0, remote_runners=2, epsilon=0.0, store_port=port, store_host="127.0.0.1",
                        max_attempts=2, unresponsive_s=6, rollout_timeout_s=150),
           GatherRun(run_dir=run_dir, society_config=cfg, task_ids=tasks, endpoints=eps, progress=False))
print("SUMMARY", json.dumps(s.to_json()))
"""








def _start_trainer(tmp_path: Path, model_url: str, tasks: list[str], port: int, end: float,
                   procs: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], str]:
    """Phase 1's gather in its own process (:data:`GATHER`, no runner of its own) on ``tasks``, every
    alias on ``model_url``; added to ``procs`` at once; returns it and the store URL it published."""
    run = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, "-c", GATHER, str(_quick_config(tmp_path)), str(run), str(port), model_url, ",".join(tasks)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs.append(trainer)
    while not (run / "store_url").is_file():
        assert trainer.poll() is None, trainer.stdout.read()[-4000:]
        assert time.monotonic() < end, "the trainer never published store_url"
        time.sleep(0.5)
    return trainer, (run / "store_url").read_text().strip()


def _stop_all(procs: list[subprocess.Popen[str]], gate: HoldingProxy, stub: StubLLM) -> None:
    """Kill what a test started (each process's whole group) and close its model endpoints."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    gate.close()
    stub.close()


TIMEOUT_S = 600


@pytest.mark.timeout(TIMEOUT_S)
def test_two_remote_runners_one_killed_mid_rollout(tmp_path):
    end = time.monotonic() + TIMEOUT_S - 60  # every wait below shares one budget, inside pytest's timeout

    def left() -> float:
        return max(1.0, end - time.monotonic())

    stub = StubLLM(delay_s=0.0)
    gate = HoldingProxy(stub.url, lambda body: False)  # every model call waits until gate.release()
    run = tmp_path / "run"
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    try:
        trainer, url = _start_trainer(tmp_path, gate.base_url, TASKS, port, end, procs)
        assert url == f"http://127.0.0.1:{port}" and (run / "runner_society.yaml").is_file()
        runners = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "society.cli",
                    "runner",
                    "--store-url",
                    url,
                    "--config",
                    str(run / "runner_society.yaml"),
                    "--runners",
                    "1",
                    "--exit-after-s",
                    "3",
                ],
                cwd=REPO,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            for _ in range(2)
        ]
        procs += runners
        victim, survivor = runners
        killed_rollout = None
        while killed_rollout is None:  # the victim's own attempt is running: kill its worker now
            assert time.monotonic() < end, "the victim runner never ran a rollout"
            assert trainer.poll() is None, trainer.stdout.read()[-4000:]
            killed_rollout = running_attempt_of(run / "store.sqlite", f"-{victim.pid}-0")
            if killed_rollout is None:
                time.sleep(0.3)
        workers = children(victim.pid)
        assert len(workers) == 1
        assert gate.forwarded == 0 and stub.calls == 0  # no call answered yet: no rollout can have finished
        os.kill(workers[0], signal.SIGKILL)
        gate.release()
        out, _ = trainer.communicate(timeout=left())
        assert trainer.returncode == 0, out[-5000:]
        summary = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
        assert summary["run"] == len(TASKS) and summary["succeeded"] == len(TASKS) and summary["failed"] == 0
        assert not (run / "store_url").exists()  # removed when the gather ended
        s_out, _ = survivor.communicate(timeout=left())
        assert survivor.returncode == 0, s_out[-3000:]
        assert "has not answered" in s_out
        victim.wait(timeout=left())
        assert victim.returncode != 0  # its only worker was killed
    finally:
        _stop_all(procs, gate, stub)
    with RolloutArchive(run / "store.sqlite") as archive:
        rollouts = archive.rollouts()
        assert sorted(r.task_id for r in rollouts) == sorted(TASKS)  # every task stored once
        assert all(r.status == "succeeded" and r.n_spans > 0 for r in rollouts)
        killed = archive.rollout(killed_rollout)
        assert killed.status == "succeeded" and killed.n_attempts == 2  # retried after the kill
        assert sum(r.n_attempts for r in rollouts) == len(TASKS) + 1
        assert all(archive.spans(r.rollout_id) for r in rollouts)
    con = sqlite3.connect(run / "store.sqlite")
    statuses = dict(con.execute("SELECT attempt_id, status FROM attempts WHERE rollout_id = ?", (killed_rollout,)))
    con.close()
    assert sorted(statuses.values()) == ["succeeded", "unresponsive"]


def test_runner_arguments(tmp_path):
    assert parse_store_url("http://10.0.0.2:4747") == ("10.0.0.2", 4747)
    for bad in ("10.0.0.2:4747", "http://host", "https://h:1", "http://h:1/v1"):
        with pytest.raises(RunnerError, match="--store-url"):
            parse_store_url(bad)
    assert parse_endpoint("junior_policy=http://gpu:8000/v1") == (
        "junior_policy",
        ("http://gpu:8000/v1", "junior_policy"),
    )
    assert parse_endpoint("senior=http://g:1/v1,base") == ("senior", ("http://g:1/v1", "base"))
    with pytest.raises(RunnerError, match="ALIAS=BASE_URL"):
        parse_endpoint("junior_policy")
    dead = f"http://127.0.0.1:{free_port()}"
    assert not store_alive(dead)
    cfg = _quick_config(tmp_path)
    with pytest.raises(RunnerError, match="did not answer /v1/agl/health within 1 s"):
        run_runners(dead, cfg, wait_s=1)
    with pytest.raises(RunnerError, match="does not exist"):
        run_runners(dead, tmp_path / "nope.yaml", wait_s=1)
    r = subprocess.run(
        [sys.executable, "-m", "society.cli", "runner", "--store-url", "nope", "--config", str(cfg)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and "--store-url" in r.stdout


def test_a_runner_killed_takes_its_workers_with_it(tmp_path):
    """``sqlsociety runner`` SIGKILLed while its worker is mid-rollout: the worker (its own session,
    so not in the runner's process group) exits too, instead of polling a store forever. Before
    ``die_with_parent`` such workers were found still running 40-50 min after their runner died."""
    end = time.monotonic() + TIMEOUT_S - 60
    stub = StubLLM(delay_s=0.0)
    gate = HoldingProxy(stub.url, lambda body: False)  # the rollout waits on its model call: mid-rollout
    run = tmp_path / "run"
    procs: list[subprocess.Popen[str]] = []
    worker = None
    try:
        _, url = _start_trainer(tmp_path, gate.base_url, ["train-0"], free_port(), end, procs)
        runner = subprocess.Popen(
            [sys.executable, "-m", "society.cli", "runner", "--store-url", url,
             "--config", str(run / "runner_society.yaml"), "--runners", "1"],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(runner)
        assert gate.wait_held(1, timeout=max(1.0, end - time.monotonic())), "the runner never called the model"
        (worker,) = children(runner.pid)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        while alive(worker) and time.monotonic() < end:
            time.sleep(0.2)
        assert not alive(worker), f"worker {worker} outlived its runner"
    finally:
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)
        _stop_all(procs, gate, stub)
