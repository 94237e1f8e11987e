"""The retrying call path of :func:`society.llm.invoke_llm` against real loopback HTTP servers (no
mocks): an endpoint that answers 500 is retried ``settings.retries`` times with capped exponential
backoff and then raises EndpointUnavailable; a 400 is not retried; a dead tracked server stops at
once; a server that recovers answers on a later attempt."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from society.infra import ServerDied, track_server, untrack_server
from society.llm import CallLog, EndpointUnavailable, LLMRequestError, invoke_llm
from society.settings import LLMSettings

REPLY = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "SELECT 1"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


@contextmanager
def serving(statuses: list[int]) -> Iterator[tuple[str, list[float]]]:
    """A loopback server answering POSTs with ``statuses`` in turn (the last one repeats; 200 sends
    :data:`REPLY`). Yields its ``/v1`` base URL and the arrival time of each request."""
    seen: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(time.monotonic())
            status = statuses[min(len(seen), len(statuses)) - 1]
            body = json.dumps(REPLY if status == 200 else {"error": {"message": f"status {status}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


#: The client's own timeout per attempt (seconds).
CLIENT_TIMEOUT_S = 10


def _call(base_url: str, settings: LLMSettings, log: CallLog):
    chat = ChatOpenAI(model="m", base_url=base_url, api_key="none", timeout=CLIENT_TIMEOUT_S, max_retries=0)
    return invoke_llm(chat, [HumanMessage("q")], config=None, settings=settings, log=log, role="junior_direct",
                      label="junior:direct", node="juniors", alias="m")


def test_a_500_endpoint_is_retried_n_times_with_capped_backoff_then_raises_endpoint_unavailable():
    settings = LLMSettings(retries=3, backoff_s=0.1, backoff_max_s=0.15)
    log = CallLog()
    with serving([500]) as (url, seen), pytest.raises(EndpointUnavailable, match="failed 4 times") as err:
        _call(url, settings, log)
    assert len(seen) == 4  # 1 + 3 retries
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    # lower bounds only: a sleep never ends early, so a slow or loaded machine cannot flip them
    assert gaps[0] >= 0.1 and gaps[1] >= 0.15 and gaps[2] >= 0.15  # 0.1, then 0.2 and 0.4 capped at 0.15
    assert "Error code: 500" in str(err.value) and err.value.__cause__ is not None
    (rec,) = log.llm_calls
    assert rec.attempts == 4 and rec.error == str(err.value) and rec.response is None


def test_a_closed_port_is_retried_without_delay_when_backoff_is_zero():
    """Three refused attempts with ``backoff_s=0`` do not wait between them. Timed against the
    alternatives, not against a fixed number of seconds: the same three attempts on the same port
    with ``backoff_s=0.5`` sleep 0.5 + 1.0 s between them (a sleep never ends early, however slow or
    loaded the machine), so the zero-backoff call must take at least 1 s less (the attempts' own
    cost, whatever it is here, is in both and cancels out); and it must take less than one client
    timeout (10 s), what a single attempt waits where nothing refuses the connection."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: every connection is refused

    def timed(settings: LLMSettings) -> float:
        log = CallLog()
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailable, match="failed 3 times: .*Connection error"):
            _call(f"http://127.0.0.1:{port}/v1", settings, log)
        assert log.llm_calls[0].attempts == 3
        return time.monotonic() - t0

    backed_off = timed(LLMSettings(retries=2, backoff_s=0.5, backoff_max_s=1.0))  # also warms the client up
    zero = timed(LLMSettings(retries=2, backoff_s=0.0))
    assert backed_off >= 1.5
    assert zero < backed_off - 1.0 and zero < CLIENT_TIMEOUT_S, (
        f"3 attempts took {zero:.2f} s with backoff 0, {backed_off:.2f} s with 1.5 s of backoff")


def test_a_rejected_request_is_not_retried():
    log = CallLog()
    with serving([400]) as (url, seen), pytest.raises(LLMRequestError, match="rejected the request: .*400"):
        _call(url, LLMSettings(retries=3, backoff_s=0.0), log)
    assert len(seen) == 1 and log.llm_calls[0].attempts == 1


def test_a_recovering_endpoint_answers_on_a_later_attempt():
    log = CallLog()
    with serving([503, 429, 200]) as (url, seen):
        msg = _call(url, LLMSettings(retries=3, backoff_s=0.0), log)
    assert msg.content == "SELECT 1" and len(seen) == 3
    (rec,) = log.llm_calls
    assert rec.attempts == 3 and rec.error is None and rec.response == "SELECT 1"
    assert (rec.input_tokens, rec.output_tokens) == (3, 2)


def test_a_dead_tracked_server_stops_the_retries_at_once():
    class Dead:
        def failure(self) -> ServerDied:
            return ServerDied("llama-server m (m.gguf)", -9, "last log line")

    dead = Dead()
    track_server(dead)
    log = CallLog()
    try:
        with serving([500]) as (url, seen), pytest.raises(EndpointUnavailable) as err:
            _call(url, LLMSettings(retries=3, backoff_s=0.0), log)
    finally:
        untrack_server(dead)
    assert len(seen) == 1 and log.llm_calls[0].attempts == 1
    assert str(err.value).endswith("model server llama-server m (m.gguf) exited: SIGKILL (Killed) — killed from "
                                   "outside (the out-of-memory killer, or a user)")
    assert isinstance(err.value.__cause__, ServerDied)
