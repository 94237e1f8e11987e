"""`sqlsociety ask` / `sqlsociety eval` as a user runs them: a subprocess that starts its own
embedded llama.cpp server (SmolLM2-135M via ``--model-alias``) and must always stop it, also on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.spider import resolve_database

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"SQLSOCIETY_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT), "COLUMNS": "160",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    env.pop("LANGSMITH_TRACING", None)
    return env


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _server_port(text: str) -> int:
    m = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", text)
    assert m, text[-2000:]
    return int(m.group(1))


def test_ask_on_a_sqlite_path_prints_sql_result_and_path_and_stops_the_server(tmp_path):
    db = resolve_database("concert_singer")
    proc = subprocess.run(
        [sys.executable, "-m", "society.cli", "ask", "--db", str(db), "--model-alias", "smollm2-135m",
         "How many singers are there?"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for text in ("path", "prepare →", "junior_direct/draft", "supervisor", "candidates (round 0)", "finalize",
                 "LLM calls", "run directory"):
        assert text in out
    assert "final SQL" in out or "no SQL" in out
    assert not _port_open(_server_port(out))
    run_dir = next((tmp_path / "runs").iterdir())
    rec = json.loads((run_dir / "questions.jsonl").read_text().splitlines()[0])
    assert rec["db_path"] == str(db) and rec["path"][-1] == "finalize"
    assert "smollm2-135m" in (run_dir / "config.yaml").read_text()  # --model-alias re-bound the embedded model
    assert (run_dir / "traces" / "ask.json").is_file()


def test_ask_with_llm_proxy_routes_every_call_through_the_proxy_and_stops_both(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "society.cli", "ask", "--db", "concert_singer", "--model-alias", "smollm2-135m",
         "--llm-proxy", "How many singers are there?"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"routed through Agent Lightning's LLMProxy at http://127\.0\.0\.1:(\d+)/v1", out)
    assert m, out[-3000:]
    proxy_port, server_port = int(m.group(1)), _server_port(out)
    assert proxy_port != server_port
    trace = json.loads(next((tmp_path / "runs").glob("*/traces/ask.json")).read_text())
    urls = {c["base_url"] for c in trace["trace"]["llm_calls"]}
    assert urls == {f"http://127.0.0.1:{proxy_port}/v1"}  # every role's call went through the proxy
    assert not _port_open(proxy_port) and not _port_open(server_port)


def test_eval_ctrl_c_stops_the_server_and_keeps_finished_questions(tmp_path):
    proc = subprocess.Popen(
        # 300 questions: the run cannot finish between "2 questions done" and the signal (SmolLM2
        # answers one in ~0.3 s), which is what made this test race under load before
        [sys.executable, "-m", "society.cli", "eval", "--split", "dev", "--limit", "300", "--agent", "single",
         "--model-alias", "smollm2-135m"],
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 300
        qfile = None
        while time.time() < deadline:
            runs = list((tmp_path / "runs").glob("*/questions.jsonl"))
            if runs and len(runs[0].read_text().splitlines()) >= 2:
                qfile = runs[0]
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert qfile is not None, "no question finished in time"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out + err)[-3000:]
    assert "interrupted" in out + err
    assert not _port_open(_server_port(out + err))
    lines = [json.loads(x) for x in qfile.read_text().splitlines() if x.strip()]
    assert 2 <= len(lines) < 300 and all("match" in x for x in lines)
    assert (qfile.parent / "summary.json").is_file() and (qfile.parent / "predictions.sql").is_file()
