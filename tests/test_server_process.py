"""The server process's start-up: the health wait and the port-clash retry (society/server_process.py,
society/health.py), with a real llama-server (SmolLM2-135M) on loopback.

A port another process holds is a real socket bound here. Only *when* the port gets taken is
arranged: the race the retry is for (another process binds the port between ``free_port``
choosing it and the server binding it) cannot be caused on demand, so those tests make
``free_port`` return the held port -- the server's bind failure and its exit are real.
"""

from __future__ import annotations

import doctest
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from society import health, llama_server, server_process
from society.server_process import PORT_TRIES, ServerStartError
from society.serving import serve_embedded

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another socket is listening on for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_doctests() -> None:
    for mod in (health, server_process, llama_server):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_poll_until_answers_when_the_route_turns_200() -> None:
    """A real HTTP server whose /health says 503 twice, then 200: the wait returns True after the
    third GET; one that never says 200 makes it return False once the time is up."""
    answers = iter([503, 503, 200])
    seen: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            code = next(answers, 503)
            seen.append(code)
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/health"
        assert health.poll_until(lambda: health.http_ok(url), timeout_s=30, poll_s=0.01)
        assert seen == [503, 503, 200]
        assert not health.poll_until(lambda: health.http_ok(url), timeout_s=0.3, poll_s=0.05)
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.model
def test_a_fixed_port_in_use_is_named_with_what_to_do(held_port: int) -> None:
    srv = serve_embedded("smollm2-135m", n_ctx=256, n_threads=1, port=held_port)
    with pytest.raises(ServerStartError) as err:
        srv.start(timeout_s=60)
    assert err.value.port_in_use
    msg = str(err.value)
    assert msg.startswith(f"{srv.name} exited during start-up: exit code 1 -- port {held_port} on 127.0.0.1 is in use")
    assert "stop the process listening there or pass another port" in msg
    assert not srv.running


@pytest.mark.model
def test_a_chosen_port_taken_before_binding_is_tried_again_on_a_new_one(held_port, monkeypatch) -> None:
    real = server_process.free_port
    chosen: list[int] = []

    def first_taken() -> int:
        chosen.append(held_port if not chosen else real())
        return chosen[-1]

    monkeypatch.setattr(server_process, "free_port", first_taken)
    with serve_embedded("smollm2-135m", n_ctx=256, n_threads=1) as srv:
        assert len(chosen) == 2 and srv.port == chosen[1] != held_port
        assert health.http_ok(f"http://127.0.0.1:{srv.port}/health")


@pytest.mark.model
def test_every_chosen_port_taken_gives_up_after_the_tries(held_port, monkeypatch) -> None:
    chosen: list[int] = []
    monkeypatch.setattr(server_process, "free_port", lambda: chosen.append(held_port) or held_port)
    srv = serve_embedded("smollm2-135m", n_ctx=256, n_threads=1)
    with pytest.raises(ServerStartError, match=rf"port {held_port} on 127.0.0.1 is in use; another process took "
                       rf"each free port chosen \({PORT_TRIES} tries\); start it again") as err:
        srv.start(timeout_s=60)
    assert err.value.port_in_use and len(chosen) == PORT_TRIES and not srv.running


@pytest.mark.model
def test_a_server_that_exits_for_another_reason_is_not_retried(tmp_path, monkeypatch) -> None:
    """A broken model file: one start, the exit named, no port hint."""
    chosen: list[int] = []
    real = server_process.free_port
    monkeypatch.setattr(server_process, "free_port", lambda: chosen.append(real()) or chosen[-1])
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 1024)
    srv = llama_server.LlamaServer(bad, model_alias="broken", n_threads=1)
    with pytest.raises(ServerStartError, match="exited during start-up: exit code") as err:
        srv.start(timeout_s=60)
    assert not err.value.port_in_use and "in use" not in str(err.value).splitlines()[0] and len(chosen) == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", COLUMNS="400")  # Rich: no wrapped messages
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.model
def test_serving_check_cli_answers_and_refuses_nothing_to_do() -> None:
    """``python -m society.serving --check ALIAS`` (install.sh runs it): exit 0 with the answer line;
    without --check: exit 2 naming the option."""
    r = _cli("society.serving", "--check", "smollm2-135m")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("llama-server smollm2-135m (") and "answered" in r.stdout
    r = _cli("society.serving", "smollm2-135m")
    assert r.returncode == 2 and "pass --check" in r.stderr


def test_remote_worker_cli_needs_its_flag() -> None:
    r = _cli("training.remote", "--store-url", "http://127.0.0.1:1", "--config", "x.yaml", "--worker-id", "w")
    assert r.returncode == 2 and "pass --worker" in r.stderr
