"""A loopback HTTP proxy in front of a real model server that holds chosen requests until released.

Tests that interrupt or kill a run "mid-way" used to wait until one question or rollout had
finished and then act, hoping the rest were still running: on a fast machine they were not
(tests/test_gather.py once saw all 16 tasks finish before the interrupt). With this proxy the
test decides what can finish: requests for which ``passes(body)`` is true are forwarded to the
real server at once; every other request is held, its client waiting for the reply, until
:meth:`HoldingProxy.release`. So "the run is mid-way" is a fact the test can wait for
(:meth:`HoldingProxy.wait_held`), not a race with the machine's speed.

Only the model server's reply is delayed; nothing is faked: a forwarded request gets the real
server's status and body, byte for byte.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HoldingProxy", "message_text"]


def message_text(body: dict[str, Any]) -> str:
    """All message contents of an OpenAI chat request body, joined by newlines ('' if none)."""
    parts = []
    for m in body.get("messages") or []:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
    if isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\n".join(parts)


class HoldingProxy:
    """Forward ``POST``/``GET`` to ``upstream`` (``http://127.0.0.1:PORT/v1``); hold the POSTs that
    ``passes`` rejects until :meth:`release`.

    Args:
        upstream: base URL of the real server, ending in ``/v1``.
        passes: called with the parsed JSON body of each POST; True forwards it at once.

    Attributes:
        base_url: this proxy's ``http://127.0.0.1:<port>/v1``.
        forwarded: POSTs forwarded so far (held ones count once released).
        seen: the message text (:func:`message_text`) of every POST, in arrival order.
    """

    def __init__(self, upstream: str, passes: Callable[[dict[str, Any]], bool]) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.passes = passes
        self.forwarded = 0
        self.seen: list[str] = []
        self._held = 0
        self._cond = threading.Condition()
        self._released = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self, data: bytes | None) -> None:
                req = urllib.request.Request(proxy.upstream + self.path, data=data, method=self.command)
                for k in ("Content-Type", "Authorization"):
                    if self.headers.get(k):
                        req.add_header(k, self.headers[k])
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        status, ctype, payload = resp.status, resp.headers.get("Content-Type", ""), resp.read()
                except urllib.error.HTTPError as e:
                    status, ctype, payload = e.code, e.headers.get("Content-Type", ""), e.read()
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._forward(None)

            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(data or b"{}")
                except ValueError:
                    body = {}
                with proxy._cond:
                    proxy.seen.append(message_text(body))
                if not proxy.passes(body):
                    with proxy._cond:
                        proxy._held += 1
                        proxy._cond.notify_all()
                    proxy._released.wait()
                    with proxy._cond:
                        proxy._held -= 1
                with proxy._cond:
                    proxy.forwarded += 1
                try:
                    self._forward(data)
                except (OSError, urllib.error.URLError):  # the client or the server went away meanwhile
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def held(self) -> int:
        """Requests being held right now."""
        with self._cond:
            return self._held

    def wait_held(self, n: int = 1, timeout: float = 600.0) -> bool:
        """Block until at least ``n`` requests are held (True) or ``timeout`` seconds passed (False)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._held < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def release(self) -> None:
        """Forward every held request and every later one."""
        self._released.set()

    def close(self) -> None:
        """Release what is held and stop listening."""
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
