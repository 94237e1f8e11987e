"""Shared pytest fixtures.

Model servers are real llama.cpp servers (llama-server) on loopback ports (``society.llama_server.LlamaServer``),
session-scoped so a test run starts each at most once, and started only when a test asks for
them. Tests that use them carry ``@pytest.mark.model`` (deselect with ``-m "not model"``).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm otherwise stalls on the network

from collections.abc import Iterator

import pytest

from society.llama_server import LlamaServer
from society.models import DEFAULT_MODEL_ALIAS
from society.serving import serve_embedded


@pytest.fixture(scope="session")
def smol_server() -> Iterator[LlamaServer]:
    """A running llama.cpp server with SmolLM2-135M-Instruct (Q4_1), answering to ``smollm2-135m``.

    Use ``smol_server.base_url`` (``http://127.0.0.1:<port>/v1``) and ``smol_server.model``.
    Stopped at the end of the session.
    """
    with serve_embedded("smollm2-135m", n_ctx=4096) as srv:
        yield srv


@pytest.fixture(scope="session")
def qwen_server() -> Iterator[LlamaServer]:
    """A running llama.cpp server with the default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M),
    answering to ``qwen2.5-coder-0.5b``. Started on first use; stopped at the end of the session."""
    with serve_embedded(DEFAULT_MODEL_ALIAS, n_ctx=4096) as srv:
        yield srv
