"""A dead model server is an infrastructure failure, never a result.

`sqlsociety train --phases 1` on a tiny smoke profile (SmolLM2-135M, real llama-server, real
Spider databases, the real SQLite LightningStore), in a subprocess:

* the llama-server process is killed with SIGKILL during the gather: the run stops with a message
  naming the server and the signal, phase 1 is not marked done, and ``--resume`` with a working
  server completes phase 1 with every task stored once and no finished rollout lost;
* the server executable dies at once with SIGILL -- a stand-in script that kills itself with that
  signal, because a real illegal instruction cannot be produced on demand on a CPU that runs the
  portable build: the run stops naming SIGILL and the fix, records no evaluation, and resumes.

And `sqlsociety eval` against a server killed mid-run stops without recording the question.

"Killed mid-way" is a fact here, not a race with the machine's speed: the run's llama-server is a
stand-in (``SQLSOCIETY_LLAMA_SERVER``, :data:`HOLDING_SERVER`) that starts the real llama-server on
another port and puts a ``tests/holding_proxy.HoldingProxy`` on the port the run chose. The proxy
answers every request about the first task (or question) it sees and holds every request about any
other one, writing which it held to a file. The test kills the stand-in with SIGKILL once the first
task is stored and another task's request is held: the run's own server process dies of SIGKILL as
before (the real server dies with it, PR_SET_PDEATHSIG), exactly one task has finished, and the
held ones provably were in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from society.roles import ENDPOINT_FAILURE

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parent.parent
N_TASKS = 4

#: The run's "llama-server" for the kill tests: the real one (``$REAL_LLAMA_SERVER``) on another
#: port behind a HoldingProxy on the run's ``--port``. Requests naming ("Question: ...") the first
#: question of ``$HOLD_QUESTIONS`` that arrives pass; those naming any other one are held until this
#: process dies; the rest (no listed question: health checks, evaluation questions) pass. What it
#: let through and held is written to ``$HOLD_STATE`` (JSON) as it happens.
HOLDING_SERVER = r"""#!__PYTHON__
import ctypes, json, os, signal, socket, subprocess, sys, threading, time, urllib.request
sys.path.insert(0, __TESTS__)
import holding_proxy
from holding_proxy import HoldingProxy, message_text

args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    inner = s.getsockname()[1]
args[args.index("--port") + 1], args[args.index("--host") + 1] = str(inner), "127.0.0.1"
libc = ctypes.CDLL(None)
child = subprocess.Popen([os.environ["REAL_LLAMA_SERVER"], *args], preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
signal.signal(signal.SIGTERM, lambda *_: (child.terminate(), child.wait(), os._exit(0)))
while child.poll() is None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{inner}/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        time.sleep(0.2)
questions = sorted(json.load(open(os.environ["HOLD_QUESTIONS"])), key=len, reverse=True)
state, lock = {"passed": None, "held": [], "n_held": 0}, threading.Lock()


def passes(body):
    text = message_text(body)
    q = next((q for q in questions if f"Question: {q}" in text), None)
    if q is None:
        return True
    with lock:
        if state["passed"] is None:
            state["passed"] = q
        ok = q == state["passed"]
        if not ok:
            state["n_held"] += 1
            state["held"] = sorted(set(state["held"]) | {q})
        with open(os.environ["HOLD_STATE"] + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(os.environ["HOLD_STATE"] + ".tmp", os.environ["HOLD_STATE"])
    return ok


class OnTheRunsPort(holding_proxy.ThreadingHTTPServer):  # HoldingProxy listens on a free port otherwise
    def __init__(self, _address, handler):
        super().__init__((host, port), handler)


holding_proxy.ThreadingHTTPServer = OnTheRunsPort
if child.poll() is None:
    proxy = HoldingProxy(f"http://127.0.0.1:{inner}/v1", passes)
rc = child.wait()
if rc < 0:
    os.kill(os.getpid(), -rc)
sys.exit(rc if 0 <= rc < 256 else 1)
"""


def _questions(split: str, limit: int) -> dict[str, str]:
    """Question text -> example id of the first ``limit`` examples of ``split`` (what the run takes)."""
    from tools.spider import load_examples

    out = {e.question.strip(): e.id for e in load_examples(split=split, limit=limit)}
    assert len(out) == limit, "two of the questions have the same text: the holding server could not tell them apart"
    return out


class Holding:
    """The :data:`HOLDING_SERVER` stand-in for one run: ``env`` to pass it, ``state()`` of its proxy,
    ``kill(pid)`` of the stand-in (and the real server under it) among the descendants of ``pid``."""

    def __init__(self, tmp_path: Path, questions: dict[str, str]) -> None:
        from society.llama_server import find_llama_server

        self.path = tmp_path / "holding" / "llama-server"
        self.path.parent.mkdir()
        self.path.write_text(HOLDING_SERVER.replace("__PYTHON__", sys.executable)
                             .replace("__TESTS__", repr(str(REPO / "tests"))))
        self.path.chmod(0o755)
        self.state_path = tmp_path / "holding" / "state.json"
        (tmp_path / "holding" / "questions.json").write_text(json.dumps(list(questions)))
        self.ids = questions
        self.env = {"SQLSOCIETY_LLAMA_SERVER": str(self.path), "REAL_LLAMA_SERVER": str(find_llama_server()),
                    "HOLD_QUESTIONS": str(tmp_path / "holding" / "questions.json"), "HOLD_STATE": str(self.state_path)}

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"n_held": 0}

    def passed_id(self) -> str:
        return self.ids[self.state()["passed"]]

    def held_ids(self) -> set[str]:
        return {self.ids[q] for q in self.state()["held"]}

    def kill(self, pid: int) -> None:
        stand_ins = []
        for c in _descendants(pid):
            try:
                argv = Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(self.path).encode() in argv[:2]:
                stand_ins.append(c)
        assert len(stand_ins) == 1, f"expected the run's one llama-server stand-in, found {stand_ins}"
        victims = [*stand_ins, *_descendants(stand_ins[0])]  # the real server dies with it anyway
        for v in victims:
            os.kill(v, signal.SIGKILL)


def _profile(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    cfg["gather"].update(limit=N_TASKS, n_runners=1)
    cfg["gather"].pop("rationalize", None)  # society rollouts only: one per task
    cfg["eval"].update(limit=1)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def _train(*args: str) -> list[str]:
    return [sys.executable, "-m", "society.cli", "train", *args]


def _stored(store: Path, *, polling: bool = False) -> dict[str, list[str]]:
    """task id -> ids of its succeeded rollouts. ``polling``: a store the run is still creating (the
    file exists, its tables not yet) reads as empty."""
    from evaluation.tracing.store import RolloutArchive, StoreError

    out: dict[str, list[str]] = {}
    if store.is_file():
        try:
            with RolloutArchive(store) as arc:
                for r in arc.rollouts(status="succeeded"):
                    out.setdefault(r.task_id, []).append(r.rollout_id)
        except StoreError:
            if not polling:
                raise
            return {}
    return out


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _server_exits(run: Path) -> str:
    """The run log's reports of a model server that exited (how, and its log's tail), for a failure message:
    the pipeline's own output cuts them, and pytest's temporary directory does not outlive three sessions."""
    log = run / "train.log"
    if not log.is_file():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    hits = [i for i, line in enumerate(lines) if "model server" in line and "exited:" in line]
    return "\n--- model server exits in train.log ---\n" + "\n".join(
        "\n".join(lines[i:i + 25]) for i in hits[:3]) if hits else "\n(no model server exit in train.log)"


def _resume_completes_phase1(run: Path, store: Path, before: dict[str, list[str]]) -> None:
    out = subprocess.run(_train("--resume", str(run), "--phases", "1"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + _server_exits(run)
    assert (run / "phases" / "1-gather" / "done.json").is_file()
    after = _stored(store)
    assert len(after) == N_TASKS and all(len(v) == 1 for v in after.values()), after  # each task once
    for task, ids in before.items():  # nothing finished before the failure was lost or redone
        assert after[task] == ids


def test_server_killed_during_gather_stops_the_run_and_resume_completes(tmp_path):
    run, store = tmp_path / "run", tmp_path / "run" / "store.sqlite"
    hold = Holding(tmp_path, _questions("train", N_TASKS))
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_train("--config", str(_profile(tmp_path)), "--run-dir", str(run), "--phases", "1"),
                            cwd=REPO, env=_env(**hold.env), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (_stored(store, polling=True) and hold.state()["n_held"] >= 1):  # a task done, another's call held
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, ("no task finished with another one held within 600 s",
                                                 hold.state(), _stored(store, polling=True))
            time.sleep(0.5)
        hold.kill(proc.pid)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "first.log").read_text()
    before = _stored(store)
    # the tasks whose calls were held when the server died were in flight: none is stored ...
    assert hold.held_ids() and not hold.held_ids() & set(before), (before, hold.state())
    # ... exactly the task the server answered is, once
    assert set(before) == {hold.passed_id()} and len(before[hold.passed_id()]) == 1, (before, hold.state())
    assert rc == 1, text[-3000:]
    assert "llama-server smollm2-135m" in text and "SIGKILL" in text, text[-3000:]
    assert "stopped: model server" in text, text[-3000:]
    assert not (run / "phases" / "1-gather" / "done.json").exists()
    _resume_completes_phase1(run, store, before)


def test_server_dying_with_sigill_stops_the_run_and_resume_completes(tmp_path):
    stand_in = tmp_path / "llama-server"
    stand_in.write_text("#!/bin/sh\necho 'load_backend: loaded CPU backend' >&2\nkill -ILL $$\n")
    stand_in.chmod(0o755)
    run = tmp_path / "run"
    out = subprocess.run(_train("--config", str(_profile(tmp_path)), "--run-dir", str(run), "--phases", "1"), cwd=REPO,
                         env=_env(SQLSOCIETY_LLAMA_SERVER=str(stand_in)), capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "SIGILL" in text and "does not match this CPU" in text and "llama-server smollm2-135m" in text, text
    assert "load_backend" in text  # the server's own last log lines
    assert "Traceback" not in text
    assert not (run / "phases" / "1-gather" / "done.json").exists()
    assert not list((run / "eval").glob("*.summary.json"))  # no evaluation recorded against it
    _resume_completes_phase1(run, run / "store.sqlite", {})


def test_eval_against_a_killed_server_records_nothing_for_the_question(tmp_path):
    """`sqlsociety eval`: the question finished before the server died is kept; the run stops with
    the server's signal; the questions in flight (their calls held) are not recorded at all."""
    out_dir = tmp_path / "runs"
    n = 30
    hold = Holding(tmp_path, _questions("dev", n))
    log = (tmp_path / "eval.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "society.cli", "eval", "--config", str(REPO / "configs" / "smoke.yaml"),
         "--limit", str(n)],
        cwd=tmp_path, env=_env(**hold.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        qfile = None
        while True:  # one question recorded, and a call of another one held
            assert proc.poll() is None, (tmp_path / "eval.log").read_text()[-3000:]
            assert time.monotonic() < deadline, ("no question finished with another one held within 600 s",
                                                 hold.state())
            files = list(out_dir.glob("*/questions.jsonl"))
            if files and files[0].read_text().count("\n") >= 1 and hold.state()["n_held"] >= 1:
                qfile = files[0]
                break
            time.sleep(0.3)
        hold.kill(proc.pid)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "eval.log").read_text()
    recs = [json.loads(x) for x in qfile.read_text().splitlines()]
    ids = [r["question_id"] for r in recs]
    # none of the questions whose calls were held when the server died is recorded ...
    assert hold.held_ids() and not hold.held_ids() & set(ids), (ids, hold.state())
    # ... what was recorded is exactly the question the server answered before it died ...
    assert ids == [hold.passed_id()], (ids, hold.state())
    # ... and no record is an endpoint failure scored as an answer
    assert not any(str(e).startswith(ENDPOINT_FAILURE + ":") for r in recs for e in r.get("errors") or [])
    assert rc == 1 and "SIGKILL" in text and "Traceback" not in text, text[-3000:]
