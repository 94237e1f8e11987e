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

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parent.parent
N_TASKS = 4


def _profile(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    cfg["gather"].update(limit=N_TASKS, n_runners=1)
    cfg["eval"].update(limit=1)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def _train(*args: str) -> list[str]:
    return [sys.executable, "-m", "society.cli", "train", *args]


def _stored(store: Path) -> dict[str, list[str]]:
    """task id -> ids of its succeeded rollouts."""
    from training.store import RolloutArchive

    out: dict[str, list[str]] = {}
    if store.is_file():
        with RolloutArchive(store) as arc:
            for r in arc.rollouts(status="succeeded"):
                out.setdefault(r.task_id, []).append(r.rollout_id)
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


def _llama_servers(pid: int) -> list[int]:
    found = []
    for c in _descendants(pid):
        try:
            exe = Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if exe.endswith(b"llama-server"):
            found.append(c)
    return found


def _resume_completes_phase1(run: Path, store: Path, before: dict[str, list[str]]) -> None:
    out = subprocess.run(_train("--resume", str(run), "--phases", "1"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (run / "phases" / "1-gather" / "done.json").is_file()
    after = _stored(store)
    assert len(after) == N_TASKS and all(len(v) == 1 for v in after.values()), after  # each task once
    for task, ids in before.items():  # nothing finished before the failure was lost or redone
        assert after[task] == ids


def test_server_killed_during_gather_stops_the_run_and_resume_completes(tmp_path):
    run, store = tmp_path / "run", tmp_path / "run" / "store.sqlite"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_train("--config", str(_profile(tmp_path)), "--run-dir", str(run), "--phases", "1"),
                            cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not _stored(store):  # one rollout finished
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        servers = _llama_servers(proc.pid)
        assert servers, "no llama-server under the run"
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "first.log").read_text()
    assert rc == 1, text[-3000:]
    assert "llama-server smollm2-135m" in text and "SIGKILL" in text, text[-3000:]
    assert "stopped: model server" in text, text[-3000:]
    assert not (run / "phases" / "1-gather" / "done.json").exists()
    before = _stored(store)
    assert 1 <= len(before) < N_TASKS
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
    """`sqlsociety eval`: questions finished before the server died are kept; the run stops with
    the server's signal; the question in flight is not scored."""
    out_dir = tmp_path / "runs"
    log = (tmp_path / "eval.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "society.cli",
            "eval",
            "--config",
            str(REPO / "configs" / "smoke.yaml"),
            "--limit",
            "30",
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        qfile = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "eval.log").read_text()[-3000:]
            files = list(out_dir.glob("*/questions.jsonl"))
            if files and files[0].read_text().count("\n") >= 1:
                qfile = files[0]
                break
            time.sleep(0.3)
        assert qfile is not None
        for pid in _llama_servers(proc.pid):
            os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "eval.log").read_text()
    assert rc == 1 and "SIGKILL" in text and "Traceback" not in text, text[-3000:]
    recs = [json.loads(x) for x in qfile.read_text().splitlines()]
    assert 1 <= len(recs) < 30
    assert not any("endpoint" in " ".join(r.get("errors") or []) for r in recs)  # no infrastructure failure scored

