"""Runners on separate hosts: phase 1's store server and its runners in different network namespaces.

The trainer (``training.gather.gather`` in its own process, ``n_runners=0``, ``remote_runners=2``)
serves its SQLite store with Agent Lightning's ``LightningStoreServer`` in this test's network
namespace. Each of the two ``sqlsociety runner`` processes runs in a network namespace of its own --
its own interfaces, routes and loopback, as on another machine -- joined to the trainer's namespace
only by a veth pair this test creates (``10.213.N.1`` here, ``10.213.N.2`` there) and removes. The
runners reach the store and the model only over those links, with Agent Lightning's client-server
mode (``LightningStoreClient``); nothing of the protocol is this project's.

The model is a fixed-answer OpenAI-compatible server in this test process (every chat completion is
``SELECT count(*) FROM head``) that holds every call until the test releases it: a stand-in, because
the test is about the store and the runners -- every task stored once, the killed rollout retried --
not about answers, and because holding the replies makes the kill provably mid-rollout on any
machine's speed (as in ``tests/test_remote_runners.py``, which runs the same protocol over loopback).

Needs root (``CAP_SYS_ADMIN``, ``CAP_NET_ADMIN``) and iproute2's ``ip``: elsewhere it is skipped,
naming the command that failed and its words.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from runner_processes import children, running_attempt_of

from evaluation.tracing.store import RolloutArchive
from society.config import SMOKE_CONFIG, SocietyConfig
from society.server_process import free_port

REPO = Path(__file__).resolve().parent.parent
TASKS = ["train-0", "train-1", "train-2", "train-3"]
ENV = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(REPO))
TIMEOUT_S = 600
ANSWER = "```sql\nSELECT count(*) FROM head\n```"  # the stand-in model's every reply


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


class Hosts:
    """Two network namespaces, each linked to this one by a veth pair; :meth:`close` removes them."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.subnet = 10 + tag % 200  # 10.213.<subnet + i>.0/24
        self.names = [f"sqls{tag}r{i}" for i in (1, 2)]
        self.links = [f"sqv{tag}h{i}" for i in (1, 2)]
        self.made: list[tuple[str, str]] = []

    def host_ip(self, i: int) -> str:
        """This namespace's address on runner host ``i``'s link."""
        return f"10.213.{self.subnet + i}.1"

    def create(self) -> None:
        """Create both; on the first failing command, undo and raise RuntimeError with its words."""
        taken = _ip("-4", "addr").stdout
        if any(f"10.213.{self.subnet + i}." in taken for i in (1, 2)):
            raise RuntimeError(f"10.213.{self.subnet + 1}-{self.subnet + 2}.0/24 are in use on this machine")
        for i, (ns, link) in enumerate(zip(self.names, self.links), start=1):
            peer = link.replace("h", "n")
            steps = [
                ("netns", "add", ns),
                ("link", "add", link, "type", "veth", "peer", "name", peer),
                ("link", "set", peer, "netns", ns),
                ("addr", "add", f"{self.host_ip(i)}/24", "dev", link),
                ("link", "set", link, "up"),
                ("-n", ns, "addr", "add", f"10.213.{self.subnet + i}.2/24", "dev", peer),
                ("-n", ns, "link", "set", peer, "up"),
                ("-n", ns, "link", "set", "lo", "up"),
            ]
            for n, step in enumerate(steps):
                r = _ip(*step)
                if n == 0 and r.returncode == 0:
                    self.made.append((ns, link))
                if r.returncode != 0:
                    self.close()
                    raise RuntimeError(f"`ip {' '.join(step)}` failed: {(r.stderr or r.stdout).strip()}")

    def close(self) -> None:
        for ns, link in self.made:
            _ip("link", "del", link)  # also removes its peer inside the namespace
            _ip("netns", "del", ns)
        self.made = []

    def exec(self, i: int, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[i - 1], *cmd]


@pytest.fixture
def hosts():
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed: network namespaces cannot be made here")
    h = Hosts()
    try:
        h.create()
    except RuntimeError as e:
        pytest.skip(f"network namespaces cannot be made here ({e}); needs root with CAP_SYS_ADMIN/CAP_NET_ADMIN")
    try:
        yield h
    finally:
        h.close()
        left = _ip("netns", "list").stdout
        assert not any(ns in left for ns in h.names), f"namespaces left behind: {left}"


class HeldModel:
    """A fixed-answer OpenAI chat endpoint on every interface of this namespace, holding each call
    until :meth:`release` (then answering at once). ``received`` / ``answered`` count the calls."""

    def __init__(self) -> None:
        self.received = self.answered = 0
        self.gate = threading.Event()
        model = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model.received += 1
                model.gate.wait(TIMEOUT_S)
                model.answered += 1
                out = json.dumps({
                    "id": f"c{model.answered}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": ANSWER}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("0.0.0.0", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()


GATHER = r"""
import json, sys
from society.config import SocietyConfig
from training.gather import GatherRun, gather
from training.gather_config import GatherConfig
cfg, run_dir, port, model, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
eps = {a: (model, "stub") for a in SocietyConfig.load(cfg).models}
s = gather(GatherConfig(n_runners=0, remote_runners=2, epsilon=0.0, store_port=port, store_host="0.0.0.0",
                        max_attempts=2, unresponsive_s=6, rollout_timeout_s=150),
           GatherRun(run_dir=run_dir, society_config=cfg, task_ids=tasks, endpoints=eps, progress=False))
print("SUMMARY", json.dumps(s.to_json()))
"""

CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("reached")
except OSError as e:
    print("unreachable", type(e).__name__)
"""






@pytest.mark.timeout(TIMEOUT_S)
def test_runners_in_other_network_namespaces_one_killed_mid_rollout(tmp_path, hosts):
    end = time.monotonic() + TIMEOUT_S - 60  # every wait below shares one budget, inside pytest's timeout

    def left() -> float:
        return max(1.0, end - time.monotonic())

    cfg = SocietyConfig.load(SMOKE_CONFIG)
    cfg = cfg.model_copy(update={"limits": cfg.limits.model_copy(update={"max_turns": 1, "max_junior_rounds": 1})})
    cfg_path = tmp_path / "quick.yaml"
    cfg_path.write_text(cfg.to_yaml())
    model = HeldModel()
    run, port = tmp_path / "run", free_port()
    procs: list[subprocess.Popen[str]] = []
    try:
        trainer = subprocess.Popen(
            [sys.executable, "-c", GATHER, str(cfg_path), str(run), str(port),
             f"http://127.0.0.1:{model.port}/v1", ",".join(TASKS)],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        procs.append(trainer)
        while not (run / "runner_society.yaml").is_file():
            assert trainer.poll() is None, trainer.stdout.read()[-4000:]
            assert time.monotonic() < end, "the trainer never published its runner invitation"
            time.sleep(0.5)
        # a runner host has its own network stack: the store is not on its loopback, only over its link
        for i in (1, 2):
            seen = subprocess.run(hosts.exec(i, sys.executable, "-c", CONNECT, "127.0.0.1", str(port)),
                                  capture_output=True, text=True, timeout=60).stdout.strip()
            assert seen.startswith("unreachable"), seen
            seen = subprocess.run(hosts.exec(i, sys.executable, "-c", CONNECT, hosts.host_ip(i), str(port)),
                                  capture_output=True, text=True, timeout=60).stdout.strip()
            assert seen == "reached", seen
        aliases = SocietyConfig.load(run / "runner_society.yaml").models
        runners = []
        for i in (1, 2):
            ip = hosts.host_ip(i)
            endpoints = [x for a in aliases for x in ("--endpoint", f"{a}=http://{ip}:{model.port}/v1,stub")]
            runners.append(subprocess.Popen(
                hosts.exec(i, sys.executable, "-m", "society.cli", "runner", "--store-url", f"http://{ip}:{port}",
                           "--config", str(run / "runner_society.yaml"), "--runners", "1", "--exit-after-s", "3",
                           *endpoints),
                cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            ))
        procs += runners
        victim, survivor = runners  # `ip netns exec` execs the command: these pids are the runner processes
        killed_rollout = None
        while killed_rollout is None:  # the victim's own attempt is running: kill its worker now
            assert time.monotonic() < end, "the victim runner never ran a rollout"
            assert trainer.poll() is None, trainer.stdout.read()[-4000:]
            assert victim.poll() is None, victim.stdout.read()[-4000:]
            killed_rollout = running_attempt_of(run / "store.sqlite", f"-{victim.pid}-0")
            if killed_rollout is None:
                time.sleep(0.3)
        workers = children(victim.pid)
        assert len(workers) == 1
        assert model.answered == 0  # no call answered yet: no rollout can have finished
        os.kill(workers[0], signal.SIGKILL)
        model.release()
        out, _ = trainer.communicate(timeout=left())
        assert trainer.returncode == 0, out[-5000:]
        summary = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
        assert summary["run"] == len(TASKS) and summary["succeeded"] == len(TASKS) and summary["failed"] == 0
        s_out, _ = survivor.communicate(timeout=left())
        assert survivor.returncode == 0, s_out[-3000:]
        victim.wait(timeout=left())
        assert victim.returncode != 0  # its only worker was killed
        assert model.received >= model.answered > 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        model.close()
    with RolloutArchive(run / "store.sqlite") as archive:
        rollouts = archive.rollouts()
        assert sorted(r.task_id for r in rollouts) == sorted(TASKS)  # every task stored once, nothing lost
        assert all(r.status == "succeeded" and r.n_spans > 0 for r in rollouts)
        killed = archive.rollout(killed_rollout)
        assert killed.status == "succeeded" and killed.n_attempts == 2  # retried after the kill
        assert sum(r.n_attempts for r in rollouts) == len(TASKS) + 1
    con = sqlite3.connect(run / "store.sqlite")
    rows = con.execute("SELECT rollout_id, status, data FROM attempts").fetchall()
    con.close()
    assert sorted(s for r, s, _ in rows if r == killed_rollout) == ["succeeded", "unresponsive"]
    workers_by_status = {(s, str(json.loads(d).get("worker_id"))) for r, s, d in rows if r == killed_rollout}
    assert any(s == "unresponsive" and f"-{victim.pid}-" in w for s, w in workers_by_status)
    assert any(s == "succeeded" and f"-{survivor.pid}-" in w for s, w in workers_by_status)  # the other host
