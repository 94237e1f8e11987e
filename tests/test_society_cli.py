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
from foreground import sigint_as_in_a_terminal
from holding_proxy import HoldingProxy, message_text

from tools.sampling import select_ids
from tools.spider import default_data_dir, load_examples, resolve_database

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


def test_eval_ctrl_c_stops_the_server_and_keeps_finished_questions(tmp_path, smol_server):
    """Ctrl-C while a question's model call is provably in flight: the eval exits 130 without waiting
    for that reply, keeps the questions finished before it, never starts a later one, and stops the
    server it started.

    The writer's calls go through a :class:`HoldingProxy` in front of the session's SmolLM2 server that
    answers the first two questions and holds every other request, so the interrupt always lands while
    question 3 waits for its reply, however fast the machine is. The config keeps the other roles on
    the embedded model, so the eval still starts (and must stop) a llama-server of its own."""
    import yaml

    from society.config import SMOKE_CONFIG

    examples = select_ids(load_examples(default_data_dir(), "dev"), [f"dev-{i}" for i in range(8)])
    assert {e.db_id for e in examples} == {"concert_singer"}  # one database: evaluated in this order
    ids, questions = [e.id for e in examples], [e.question for e in examples]
    answered = questions[:2]
    with HoldingProxy(smol_server.base_url, lambda body: any(q in message_text(body) for q in answered)) as gate:
        cfg = yaml.safe_load(Path(SMOKE_CONFIG).read_text())
        cfg["models"]["juniors"] = {"base_url": gate.base_url, "model": smol_server.model}
        config = tmp_path / "gated.yaml"
        config.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "society.cli", "eval", "--split", "dev", "--ids", ",".join(ids), "--agent",
             "single", "--config", str(config)],
            # PYTHONFAULTHANDLER: a hang after the interrupt ends with every thread's stack (SIGABRT below)
            cwd=tmp_path, env={**_env(tmp_path), "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal,
        )
        try:
            assert gate.wait_held(1, timeout=600), "no question reached the model"
            qfile = next((tmp_path / "runs").glob("*/questions.jsonl"))
            assert [json.loads(x)["question_id"] for x in qfile.read_text().splitlines()] == ids[:2]
            assert proc.poll() is None, proc.communicate()
            t_int = time.monotonic()
            proc.send_signal(signal.SIGINT)
            try:  # the held reply never comes: only the interrupt ends it
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, then the process dies
                out, err = proc.communicate(timeout=60)
                pytest.fail(f"the eval was still running 120 s after Ctrl-C; its threads:\n{err[-8000:]}")
            stopped_s = time.monotonic() - t_int
        finally:
            if proc.poll() is None:
                proc.kill()
        assert gate.held >= 1  # still waiting for question 3's reply when the eval had gone
        seen = list(gate.seen)
    assert proc.returncode == 130, (out + err)[-3000:]
    assert stopped_s < 60, f"the eval took {stopped_s:.0f} s to stop after Ctrl-C"
    assert "interrupted after 2 questions" in out + err, (out + err)[-3000:]
    assert not _port_open(_server_port(out + err))
    lines = [json.loads(x) for x in qfile.read_text().splitlines() if x.strip()]
    assert [x["question_id"] for x in lines] == ids[:2] and all("match" in x for x in lines)
    assert not any(q in text for q in questions[3:] for text in seen)  # no later question was started
    assert (qfile.parent / "summary.json").is_file() and (qfile.parent / "predictions.sql").is_file()
