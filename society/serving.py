"""Serving a society's embedded models: one llama.cpp server per model, adapters chosen per request.

* :func:`serve_embedded` -- an (unstarted) :class:`society.llama_server.LlamaServer` for one of
  the embedded models (:mod:`society.models`);
* :func:`serve_config` -- every embedded model a society config uses, each alias's LoRA adapter
  served by its model's process, all stopped on exit; yields alias -> :class:`Endpoint`;
* :func:`check_serving` and ``python -m society.serving --check [ALIAS]`` (run by
  ``scripts/install.sh``): one greedy completion from a freshly started server.

The pieces below: the server process (:mod:`society.server_process`), llama.cpp's command line
and per-request adapters (:mod:`society.llama_server`), the health wait (:mod:`society.health`),
thread counts (:mod:`society.cpu_threads`), and failures (:mod:`society.infra`: a dead server is
an infrastructure failure, never a bad answer).

Sources: llama.cpp ``tools/server/README.md`` (``/v1/chat/completions``, ``timings``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import typer

from society.infra import ServerDied
from society.llama_server import LlamaServer, LoraAdapter, ServerNotInstalledError
from society.llm import Endpoint
from society.models import DEFAULT_MODEL_ALIAS, embedded_spec, ensure_model
from society.server_process import ServerStartError

__all__ = ["DEFAULT_PARALLEL", "check_serving", "serve_config", "serve_embedded"]



def serve_embedded(alias: str = DEFAULT_MODEL_ALIAS, *, cache_dir: Path | None = None, **kw: Any) -> LlamaServer:
    """An (unstarted) :class:`LlamaServer` for an embedded model; use it as a context manager.

    Args:
        alias: a key of :data:`society.models.EMBEDDED_MODELS`; the server answers to this name
            unless ``model_alias`` is given.
        cache_dir: passed to :func:`society.models.ensure_model`.
        **kw: :class:`LlamaServer` settings (``n_ctx`` is capped at the model's trained context).

    Raises:
        UnknownModelError, ModelNotInstalledError, ModelIntegrityError: see ``ensure_model``.
        ServerNotInstalledError: no llama-server executable.
    """
    spec = embedded_spec(alias)
    path = ensure_model(alias, cache_dir)
    kw["n_ctx"] = min(int(kw.get("n_ctx", 4096)), spec.n_ctx_train)
    kw.setdefault("model_alias", alias)
    return LlamaServer(path, **kw)


#: Slots per embedded server when the caller does not say (the three juniors of one question
#: decode together; more slots only help with ``eval --concurrency`` > 1).
DEFAULT_PARALLEL = 4


@contextlib.contextmanager
def serve_config(
    config: Any,
    *,
    adapters: Mapping[str, str | os.PathLike[str]] | None = None,
    parallel: int | None = None,
    proxy: bool = False,
    on_start: Any = None,
    **server_kw: Any,
) -> Iterator[dict[str, Endpoint]]:
    """Serve every embedded model a society config uses; yield alias -> :class:`Endpoint`.

    One :class:`LlamaServer` per embedded model, however many aliases use it; an alias named in
    ``adapters`` is served by the same process with its LoRA adapter chosen per request. Every
    server is stopped on exit (normally, on error, on Ctrl-C).

    Args:
        config: a :class:`society.config.SocietyConfig`.
        adapters: model alias -> GGUF LoRA adapter for that alias (trained on the alias's
            embedded model); aliases must be embedded ones of ``config``.
        parallel: slots per server (default :data:`DEFAULT_PARALLEL`).
        proxy: route every alias through Agent Lightning's ``LLMProxy``
            (:func:`society.proxy.llm_proxy`); the proxied endpoints keep each alias's adapter.
        on_start: called with each started :class:`LlamaServer` (progress messages).
        **server_kw: further :class:`LlamaServer` settings.

    Raises:
        ValueError: an adapter for an alias that is not an embedded alias of ``config``.
        ServerNotInstalledError, ServerStartError: a server could not start.
    """
    embedded = config.embedded_aliases()
    adapters = {a: Path(p) for a, p in (adapters or {}).items()}
    bad = sorted(set(adapters) - set(embedded))
    if bad:
        raise ValueError(f"adapters for {bad}: not embedded model aliases of this config ({sorted(embedded)})")
    by_model: dict[str, list[str]] = {}
    for alias, model in embedded.items():
        by_model.setdefault(model, []).append(alias)
    endpoints: dict[str, Endpoint] = {}
    with contextlib.ExitStack() as stack:
        for model, aliases in by_model.items():
            loras = [LoraAdapter(a, adapters[a]) for a in aliases if a in adapters]
            srv = stack.enter_context(serve_embedded(model, loras=loras, parallel=parallel or DEFAULT_PARALLEL,
                                                     **server_kw))
            if on_start is not None:
                on_start(srv)
            for alias in aliases:
                endpoints[alias] = srv.endpoint(alias if alias in adapters else None)
        if proxy and endpoints:
            from society.proxy import llm_proxy

            endpoints = stack.enter_context(llm_proxy(endpoints))
        yield endpoints


def check_serving(alias: str = DEFAULT_MODEL_ALIAS) -> str:
    """Serve ``alias`` and ask for one short greedy chat completion; return a one-line report.

    Raises:
        ServerNotInstalledError, ServerStartError, ServerDied: the server cannot answer (the
            message names the status or signal and holds the server's last log lines).
    """
    with serve_embedded(alias, n_ctx=512) as srv:
        t0 = time.perf_counter()
        try:
            out = srv.post("/v1/chat/completions", {
                "model": srv.model, "temperature": 0, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Reply with the single word: ready"}]})
        except OSError as e:
            srv.check()  # a dead server explains itself
            raise ServerStartError(f"{srv.name} did not answer a completion: {e}\n{srv._log_tail(20)}") from e
        text = out["choices"][0]["message"]["content"]
        return (f"{srv.name}: answered {text.strip()!r} in {time.perf_counter() - t0:.1f} s "
                f"(start-up {srv.startup_s:.1f} s) using {srv.executable}")




app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=(check_serving.__doc__ or "").splitlines()[0])
def _main(
    check: bool = typer.Option(False, "--check", help="serve the embedded model and run one completion"),
    alias: str = typer.Argument(DEFAULT_MODEL_ALIAS, help="embedded model alias (society.models)"),
) -> None:
    """``python -m society.serving --check [ALIAS]``: exit 0 when the server answered, 1 when it
    could not (the reason on stderr), 2 for bad arguments (nothing to do)."""
    if not check:
        raise typer.BadParameter("nothing to do; pass --check", param_hint="--check")
    try:
        print(check_serving(alias))
    except (ServerNotInstalledError, ServerStartError, ServerDied) as e:
        print(f"serving check failed: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


if __name__ == "__main__":  # python -m society.serving --check [ALIAS]
    app(prog_name="python -m society.serving")
