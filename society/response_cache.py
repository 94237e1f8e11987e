"""Replies to repeated model requests, answered once per run.

An evaluation often sends a request it has sent before: the society's juniors draft the same
question with the same adapter and seed as the juniors-only stage did; the one-shot control's
writer sends the direct junior's first request. When the request is deterministic (greedy, or
seeded sampling) and the weights behind the endpoint are the same files, a live repeat would be a
draw from the same distribution as the first reply, so :class:`ResponseCache` keeps the first reply
(an SQLite file) and LangChain's chat-model cache protocol (``BaseChatModel(cache=...)``) answers
the repeat from it.

A request is only cached when it can be identified by content:

* the endpoint carries ``weights``, a content identity of what answers under it (the trainer sets
  it to the sha256 of the GGUF model file and of the LoRA adapter file served for the alias;
  :attr:`society.llm.Endpoint.weights`); without it nothing is cached, as the same URL may serve
  other weights later;
* its sampling is deterministic: temperature 0 or a seed (:func:`deterministic`); two unseeded
  draws at a temperature are meant to differ (rejection sampling), so they never share a reply.

The key is ``sha256(scope, prompt)``: the scope (:func:`scope_key`) hashes the weights identity and
the sampling settings (temperature, max_tokens, seed, top_p, stop) and the request fields sent
with every call except the server's adapter slot ids (``lora``: the identity names the adapter by
content; its non-zero scales are kept); the prompt is the messages as LangChain serializes them.
The server's URL, port and model alias are not in it (a new server on another port serves the same
files). Nor is anything given at call time (bound tools, ``response_format``, a ``stop`` passed to
``invoke``): the cache is for the clients :meth:`society.llm.ChatModels.chat` makes, which
:func:`society.llm.invoke_llm` calls with the messages alone.

Within one question a request sent a second time (a junior round that starts over without
feedback) goes to the server (:func:`society.llm.invoke_llm`), as it would without the cache.
A cache that cannot be read or written (a locked or damaged file) never fails a call: the call goes
live and a warning says why.

What a hit gives back: the stored reply, its text, ``response_metadata`` (``finish_reason``) and
``usage_metadata`` (token counts, so token costs stay those of a live call), with
``response_metadata["response_cache"] = "hit"``; :func:`society.llm.invoke_llm` then marks the call
``cached`` in the run's call log. Its latency is the lookup's, so the seconds of a run with hits
understate what live calls cost (reports say so where they show seconds).

What a hit is not: an independent second draw. llama.cpp's server batches requests, and what else
is in the batch moves the numerics: a greedy reply now and then by a token, a seeded draw at a
temperature often (measured 2026-12-07, all live: the society's step-by-step junior, seeded at 0.3,
wrote the juniors-only stage's SQL on 50 of the same 100 questions, the greedy direct junior on 99).
A live repeat is another draw from the same distribution; a hit returns the first one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

__all__ = ["HIT", "ResponseCache", "ScopedResponseCache", "cached_calls", "deterministic", "scope_key"]

HIT = "hit"
"""``response_metadata["response_cache"]`` of a reply taken from the cache."""


def cached_calls(records: Iterable[Mapping[str, Any]]) -> int:
    """How many LLM calls of ``records`` (per-question records, ``SocietyRun`` fields) the response
    cache answered: the sum of their ``cached_calls`` (0 where a record has none).

    >>> cached_calls([{"cached_calls": 3}, {"cached_calls": None}, {}])
    3
    """
    return sum(int(r.get("cached_calls") or 0) for r in records)


def deterministic(temperature: float | None, seed: int | None) -> bool:
    """Whether requests with these sampling settings may share a reply: greedy (temperature 0) or
    seeded (the server is asked for the same draw; see the module's note on batching).

    >>> deterministic(0.0, None), deterministic(0.3, 12), deterministic(0.8, None), deterministic(None, None)
    (True, True, False, False)
    """
    return seed is not None or temperature == 0


def scope_key(weights: str | None, *, temperature: float | None, max_tokens: int | None, seed: int | None,
              top_p: float | None, stop: Sequence[str] | None, extra_body: Mapping[str, Any] | None) -> str | None:
    """The sha256 (hex) of what, beside the prompt, decides a reply: the endpoint's weights identity
    and the sampling; None when the reply is not to be cached (no ``weights``, or sampling that is
    not :func:`deterministic`). ``extra_body``'s ``lora`` (the server's adapter slot) is left out:
    ``weights`` names the adapter by content.

    >>> a = scope_key("w1", temperature=0.0, max_tokens=160, seed=11, top_p=None, stop=["</sql>"],
    ...               extra_body={"lora": [{"id": 0, "scale": 1.0}]})
    >>> a == scope_key("w1", temperature=0.0, max_tokens=160, seed=11, top_p=None, stop=["</sql>"],
    ...                extra_body={"lora": [{"id": 2, "scale": 1.0}]})
    True
    >>> a == scope_key("w2", temperature=0.0, max_tokens=160, seed=11, top_p=None, stop=["</sql>"], extra_body=None)
    False
    >>> scope_key(None, temperature=0.0, max_tokens=8, seed=None, top_p=None, stop=None, extra_body=None) is None
    True
    >>> scope_key("w1", temperature=0.8, max_tokens=8, seed=None, top_p=None, stop=None, extra_body=None) is None
    True
    """
    if not weights or not deterministic(temperature, seed):
        return None
    extra = {k: v for k, v in (extra_body or {}).items() if k != "lora"}
    scales = sorted(float(e.get("scale", 1.0)) for e in (extra_body or {}).get("lora") or []
                    if float(e.get("scale", 1.0)) != 0.0)
    body = {"weights": weights, "temperature": temperature, "max_tokens": max_tokens, "seed": seed,
            "top_p": top_p, "stop": list(stop or []), "extra_body": extra, "lora_scales": scales}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class ResponseCache:
    """Replies by request key, in an SQLite file (one table ``replies(key, reply)``), shared by the
    threads of one process (parallel juniors); a run's stages share one file so a later stage (or a
    resumed run) finds an earlier stage's replies.

    Args:
        path: the SQLite file (created with its folder).

    Attributes:
        hits / misses: lookups answered / not answered since this object was made.
        token: a random id of this object (callers key their clients by it).

    Raises:
        sqlite3.Error: the file cannot be opened as an SQLite database (the message names it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.Error as e:
            raise sqlite3.Error(f"the response cache {self.path} cannot be opened ({e}); delete it (it only "
                                "saves model calls) and run again") from e
        self.hits = 0
        self.misses = 0
        self.token = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}, hits={self.hits}, misses={self.misses})"

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM replies").fetchone()[0])

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reply of ``key`` (:meth:`put`'s mapping), or None.

        Raises:
            sqlite3.Error: the file cannot be read; ValueError: a stored reply is not JSON.
        """
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, reply: Mapping[str, Any]) -> None:
        """Store ``reply`` (JSON-serializable) under ``key``; an existing reply is kept (the first
        one answers every repeat).

        Raises:
            sqlite3.Error: the file cannot be written.
        """
        text = json.dumps(dict(reply), sort_keys=True, default=str)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO replies (key, reply) VALUES (?, ?)", (key, text))
            self._db.commit()

    def scoped(self, scope: str) -> ScopedResponseCache:
        """A LangChain cache over this file for the requests of one :func:`scope_key`."""
        return ScopedResponseCache(self, scope)

    def close(self) -> None:
        """Close the SQLite connection (lookups then fail and go live, see :class:`ScopedResponseCache`)."""
        with self._lock:
            self._db.close()


_WARNED: set[tuple[str, str]] = set()


def _warn_once(store: ResponseCache, kind: str, message: str) -> None:
    """Warn (``warnings.warn``, RuntimeWarning) once per cache object and ``kind`` of failure."""
    key = (store.token, kind)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _reply(gen: Generation) -> dict[str, Any] | None:
    """A generation as stored: the chat message's text and metadata; None for what is not a chat
    reply (not cached)."""
    msg = getattr(gen, "message", None)
    if not isinstance(msg, AIMessage) or not isinstance(msg.content, str) or msg.tool_calls:
        return None
    return {"content": msg.content, "response_metadata": dict(msg.response_metadata or {}),
            "usage_metadata": dict(msg.usage_metadata) if msg.usage_metadata else None,
            "generation_info": dict(gen.generation_info or {})}


class ScopedResponseCache(BaseCache):
    """LangChain's cache protocol over a :class:`ResponseCache` for one scope (:func:`scope_key`):
    ``lookup(prompt, llm_string)`` keys by ``sha256(scope, prompt)`` and ignores ``llm_string`` (it
    holds the server's URL and port; the scope holds what decides the reply)."""

    def __init__(self, store: ResponseCache, scope: str) -> None:
        self.store = store
        self.scope = scope

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.scope}\n{prompt}".encode()).hexdigest()

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        """The stored reply as one ``ChatGeneration`` marked :data:`HIT`, or None (also when the
        cache cannot be read: warned once, the call goes live)."""
        try:
            got = self.store.get(self._key(prompt))
        except (sqlite3.Error, ValueError) as e:
            _warn_once(self.store, "read", f"the response cache {self.store.path} cannot be read ({e}); calls go live")
            return None
        if got is None:
            return None
        meta = {**got.get("response_metadata", {}), "response_cache": HIT}
        msg = AIMessage(content=got["content"], response_metadata=meta,
                        usage_metadata=got.get("usage_metadata") or None)
        return [ChatGeneration(message=msg, generation_info=got.get("generation_info") or None)]

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        """Store a single chat reply (several generations, or a tool call, are not stored)."""
        if len(return_val) != 1:
            return
        reply = _reply(return_val[0])
        if reply is None:
            return
        try:
            self.store.put(self._key(prompt), reply)
        except sqlite3.Error as e:
            _warn_once(self.store, "write",
                       f"the response cache {self.store.path} cannot be written ({e}); replies not kept")

    def clear(self, **kwargs: Any) -> None:
        """Not supported per scope: delete the cache file to clear it.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"delete {self.store.path} to clear the response cache")
