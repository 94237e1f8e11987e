"""Waiting for a server to answer: ``GET`` its health route until it says 200, polled with tenacity.

Used while a model server starts (:class:`society.server_process.ManagedServer`, ``GET /health``)
and while a remote runner waits for the trainer's store server (``training.remote``).

Sources: tenacity's ``Retrying`` (``retry_if_result``, ``stop_after_delay``, ``wait_fixed``,
``retry_error_callback``), https://tenacity.readthedocs.io.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

__all__ = ["http_ok", "poll_until"]


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET url`` answers with status 200 within ``timeout_s`` seconds; False when the
    connection is refused, times out, breaks, or the answer is another status (e.g. 503 while a
    model loads) or not HTTP.

    >>> http_ok("http://127.0.0.1:1/health", timeout_s=1)  # nothing listens on port 1
    False
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError, OSError):
        return False


def poll_until(check: Callable[[], bool], *, timeout_s: float, poll_s: float) -> bool:
    """Call ``check`` every ``poll_s`` seconds until it returns True or ``timeout_s`` seconds have
    passed since the first call (the last call starts before that).

    Returns:
        True as soon as ``check`` does; False when the time ran out.

    Raises:
        whatever ``check`` raises: an exception is not retried (e.g. the server process exited
        while starting: waiting longer cannot help).

    >>> calls = []
    >>> poll_until(lambda: calls.append(1) or len(calls) == 3, timeout_s=10, poll_s=0.01), len(calls)
    (True, 3)
    >>> poll_until(lambda: False, timeout_s=0.05, poll_s=0.01)
    False
    """
    retrying = Retrying(
        retry=retry_if_result(lambda ok: not ok),
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(poll_s),
        retry_error_callback=lambda _state: False,
    )
    return bool(retrying(check))
