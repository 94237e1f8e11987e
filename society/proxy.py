"""Route model aliases through Agent Lightning's ``LLMProxy`` (a LiteLLM proxy on loopback).

The society resolves each role's model alias to an OpenAI-compatible :class:`~society.llm.Endpoint`.
By default an alias points straight at a server's base URL. :func:`llm_proxy` puts one
Agent Lightning ``LLMProxy`` in front of a set of such endpoints instead: every alias becomes a
LiteLLM ``model_name`` on the same proxy URL, and the proxy forwards to the backend that alias is
bound to. Re-binding an alias (the juniors to their SFT adapter after phase 2, the senior to its
GRPO adapter after phase 3) is then one ``model_list`` entry, and every role keeps one base URL.

The proxy runs in a thread of the calling process on ``127.0.0.1`` with a random master key
(LiteLLM refuses to start without one); it is only a router here: Agent Lightning's span
middleware and callbacks are off because the society's own LangChain tracer already records
every call as a span (see :mod:`training.agent`), so nothing is recorded twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import portpicker

from society.llm import Endpoint

__all__ = ["ProxyStartError", "llm_proxy", "proxy_model_list"]


class ProxyStartError(RuntimeError):
    """The LLMProxy did not become healthy (the message carries the cause)."""


def proxy_model_list(endpoints: Mapping[str, Endpoint]) -> list[dict]:
    """LiteLLM ``model_list`` entries, one per alias: ``{"model_name": alias, "litellm_params":
    {"model": "openai/<backend model>", "api_base": <backend base_url>, "api_key": <key>[, "extra_body": ...]}}``
    (the endpoint's ``extra_body``, e.g. a LoRA choice, is sent with every forwarded request).

    Raises:
        ValueError: an endpoint without ``base_url`` or ``model`` (name the alias to fix).
    """
    out = []
    for alias, ep in endpoints.items():
        if not ep.base_url or not ep.model:
            raise ValueError(f"model alias {alias!r}: endpoint needs base_url and model to be proxied, got {ep}")
        params = {"model": f"openai/{ep.model}", "api_base": ep.base_url, "api_key": ep.api_key or "sk-no-key"}
        if ep.extra_body:
            params["extra_body"] = dict(ep.extra_body)  # e.g. llama-server's per-request LoRA choice
        out.append({"model_name": alias, "litellm_params": params})
    return out


def _run(coro_or_none: object) -> None:
    if asyncio.iscoroutine(coro_or_none):
        asyncio.run(coro_or_none)


def _reset_litellm_shutdown_flag() -> None:
    """LiteLLM marks its (process-global) proxy app as shutting down when a proxy stops, and a
    later proxy in the same process then answers 503 to health checks; clear that flag so the
    pipeline can start one proxy per stage."""
    try:
        from litellm.proxy.shutdown.graceful_shutdown_manager import GracefulShutdownManager
    except ImportError:  # older LiteLLM: no such state
        return
    GracefulShutdownManager.reset()


@contextmanager
def llm_proxy(endpoints: Mapping[str, Endpoint], *, startup_timeout_s: float = 120.0,
              quiet: bool = True) -> Iterator[dict[str, Endpoint]]:
    """Serve ``endpoints`` behind one Agent Lightning ``LLMProxy``; yield alias -> proxied endpoint.

    Args:
        endpoints: alias -> backend endpoint (e.g. from :func:`society.serving.serve_config`).
        startup_timeout_s: seconds to wait for the proxy's liveliness check.
        quiet: lower LiteLLM's and uvicorn's log level to WARNING.

    Yields:
        alias -> ``Endpoint("http://127.0.0.1:<port>/v1", model=alias, api_key=<master key>)``, each
        keeping its endpoint's ``weights`` identity (the proxy routes to the same weights).
        The proxy stops when the context exits (normally, on error or on Ctrl-C).

    Raises:
        ProxyStartError: the proxy did not start (port taken, LiteLLM error).
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import agentlightning as agl
    from agentlightning.utils.server_launcher import PythonServerLauncherArgs

    if not endpoints:
        yield {}
        return
    if quiet:
        for name in ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router", "uvicorn", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # LiteLLM's feedback box and "Give Feedback / Get Help" lines on every start and every
        # retried error; the errors themselves still reach the log.
        os.environ.setdefault("LITELLM_DONT_SHOW_FEEDBACK_BOX", "true")
        import litellm

        litellm.suppress_debug_info = True
    key = "sk-" + secrets.token_hex(16)
    port = int(portpicker.pick_unused_port())
    proxy = agl.LLMProxy(
        launcher_args=PythonServerLauncherArgs(port=port, host="127.0.0.1", launch_mode="thread",
                                               healthcheck_url="/health/liveliness",
                                               startup_timeout=startup_timeout_s),
        model_list=proxy_model_list(endpoints),  # type: ignore[arg-type]
        store=agl.LightningStoreThreaded(agl.InMemoryLightningStore()),
        # clients connect directly on loopback: no proxy ranges to trust (silences LiteLLM's
        # Admin-UI login-throttle warning; the Admin UI is not used)
        litellm_config={"general_settings": {"master_key": key, "trusted_proxy_ranges": []}},
        middlewares=[], callbacks=[],
    )
    _reset_litellm_shutdown_flag()
    try:
        _run(proxy.start())
    except Exception as e:  # noqa: BLE001 - surfaced with the cause
        raise ProxyStartError(f"Agent Lightning LLMProxy did not start on 127.0.0.1:{port}: {e}") from e
    try:
        yield {alias: Endpoint(f"http://127.0.0.1:{port}/v1", alias, key, weights=ep.weights)
               for alias, ep in endpoints.items()}
    finally:
        try:
            _run(proxy.stop())
        except Exception:  # noqa: BLE001 - stopping is best effort; the thread is a daemon
            pass
