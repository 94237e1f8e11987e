"""Chat models for the roles, one retrying call path, and the per-run call log.

* :class:`Endpoint` / :class:`ChatModels`: resolve a role's model alias (config ``models:``,
  optionally overridden at run time, e.g. by the trainer) to a ``langchain_openai.ChatOpenAI``
  with the role's sampling settings; clients are cached per (endpoint, sampling), and given a
  :class:`society.response_cache.ResponseCache` they answer a repeated deterministic request from it.
* :func:`invoke_llm`: every LLM call of every role goes through here. It invokes the model with
  a LangChain config carrying ``run_name`` (e.g. ``junior:step_by_step``), ``tags`` ``[role, node]``
  and ``metadata`` ``{role, role_instance, node, question_id, db_id, run_id, ...}`` on top of the
  caller's callbacks (so LangSmith runs and Agent Lightning spans are named and attributable),
  retries connection errors, timeouts, HTTP 5xx and 429 with exponential backoff, and logs the
  call (prompt, response, tokens from ``usage_metadata``, latency) in a :class:`CallLog`.
* :class:`CallLog`: thread-safe record of LLM and tool calls of one run (parallel juniors write
  to it from LangGraph's worker threads).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from society.response_cache import HIT, ResponseCache, scope_key
from society.settings import ConfigError, LLMSettings, Sampling

if TYPE_CHECKING:  # annotations only: society.config sits above the roles, which sit above this module
    from society.config import SocietyConfig
from society.infra import dead_servers, interruptible


class LLMError(RuntimeError):
    """An LLM call failed. ``retryable`` tells whether the endpoint itself was the problem."""

    retryable = False


class EndpointUnavailable(LLMError):
    """The endpoint kept failing (connection refused, timeout, 5xx/429) after all retries, or its
    server died (then at once, with the :class:`society.infra.ServerDied` as ``__cause__``).
    An infrastructure failure: evaluations and gathers stop rather than score the question."""

    retryable = True


class LLMRequestError(LLMError):
    """The endpoint rejected the request (4xx, e.g. the prompt exceeds the context window); not retried."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint: ``base_url`` (ending in ``/v1``), ``model`` name, ``api_key``,
    and ``extra_body``: request fields sent with every call (e.g. llama-server's per-request
    ``lora`` choice, see :meth:`society.llama_server.LlamaServer.endpoint`), or None; ``weights``: a
    content identity of what answers under it (the trainer's: sha256 of the GGUF model file and of
    the LoRA adapter served for the alias), or None when unknown: then its replies are never kept in a
    :class:`society.response_cache.ResponseCache`."""

    base_url: str
    model: str
    api_key: str = "sk-no-key"
    extra_body: Mapping[str, Any] | None = field(default=None, hash=False)
    weights: str | None = field(default=None, hash=False)


def as_endpoint(value: Endpoint | Sequence[str] | Mapping[str, Any]) -> Endpoint:
    """An :class:`Endpoint` from an ``Endpoint``, a ``(base_url, model[, api_key])`` sequence or a
    mapping of its fields.

    Raises:
        ValueError: anything else (the message shows the value).
    """
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, Mapping):
        return Endpoint(**value)
    if isinstance(value, Sequence) and not isinstance(value, str) and 2 <= len(value) <= 3:
        return Endpoint(*value)
    raise ValueError(f"an endpoint is an Endpoint, (base_url, model[, api_key]) or a mapping; got {value!r}")


@dataclass
class LLMCallRecord:
    """One LLM call as recorded in the run's trace.

    Attributes:
        role / label / node: role instance (``junior_direct``), run name (``junior:direct``), graph node.
        alias / model / base_url: which model served it.
        messages: the prompt as ``[{"role": "system"|"user"|"assistant", "content": str}]``.
        response: the reply text (None when the call failed).
        input_tokens / output_tokens: from the response's ``usage_metadata`` (0 when absent).
        started / latency_s: wall-clock start (epoch seconds) and duration of all attempts (seconds).
        attempts: attempts made (1 + retries used).
        error: the final error, or None.
        cached: the reply came from the run's response cache (:mod:`society.response_cache`): the
            same request was answered earlier; its tokens are that call's, its latency the lookup's.
    """

    role: str
    label: str
    node: str
    alias: str
    model: str
    base_url: str
    messages: list[dict[str, str]]
    response: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    started: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None
    cached: bool = False


@dataclass
class ToolCallRecord:
    """One tool call: ``tool`` name, calling ``role``/``node``, ``args``, ``output`` text (truncated),
    ``ok``, ``error``, ``started`` (epoch s) and ``latency_s``."""

    tool: str
    role: str
    node: str
    args: dict[str, Any]
    output: str = ""
    ok: bool = True
    error: str | None = None
    started: float = 0.0
    latency_s: float = 0.0


@dataclass
class CallLog:
    """Thread-safe log of one run's LLM and tool calls, plus per-role totals."""

    llm_calls: list[LLMCallRecord] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_llm(self, rec: LLMCallRecord) -> None:
        with self._lock:
            self.llm_calls.append(rec)

    def asked(self, role: str, alias: str, messages: list[dict[str, str]]) -> bool:
        """Whether ``role`` already sent ``messages`` to ``alias`` in this log (one question): such a
        repeat is not answered from the response cache (:func:`invoke_llm`)."""
        with self._lock:
            return any(c.role == role and c.alias == alias and c.messages == messages for c in self.llm_calls)

    def add_tool(self, rec: ToolCallRecord) -> None:
        with self._lock:
            self.tool_calls.append(rec)

    def per_role(self) -> dict[str, dict[str, Any]]:
        """Role instance -> ``{"llm_calls", "input_tokens", "output_tokens", "tokens"}`` (ints),
        ``"model_s"`` (seconds inside its LLM calls) and, when some of its calls were answered from the
        response cache, ``"cached_calls"`` (how many; counted in ``llm_calls`` and the tokens)."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for c in self.llm_calls:
                d = out.setdefault(
                    c.role, {"llm_calls": 0, "input_tokens": 0, "output_tokens": 0, "tokens": 0, "model_s": 0.0}
                )
                d["llm_calls"] += 1
                if c.cached:
                    d["cached_calls"] = d.get("cached_calls", 0) + 1
                d["input_tokens"] += c.input_tokens
                d["output_tokens"] += c.output_tokens
                d["tokens"] += c.input_tokens + c.output_tokens
                d["model_s"] = round(d["model_s"] + c.latency_s, 4)
        return out

    def model_busy_seconds(self) -> float:
        """Wall-clock seconds during which at least one LLM call was in flight (union of call
        intervals, so parallel juniors are not double-counted)."""
        with self._lock:
            spans = sorted((c.started, c.started + c.latency_s) for c in self.llm_calls)
        total, cur_s, cur_e = 0.0, None, None
        for s, e in spans:
            if cur_e is None or s > cur_e:
                if cur_e is not None:
                    total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            total += cur_e - cur_s
        return total

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "llm_calls": [asdict(c) for c in self.llm_calls],
                "tool_calls": [asdict(t) for t in self.tool_calls],
            }


class ChatModels:
    """Resolves model aliases to ``ChatOpenAI`` clients.

    Args:
        config: the society config (its ``models:`` and ``llm:`` sections).
        endpoints: run-time overrides, alias -> :class:`Endpoint` (e.g. the embedded server the CLI
            started, or the trainer's LoRA-served model). They win over ``models:``.
        cache: replies of deterministic requests to endpoints with a ``weights`` identity are kept
            here and answer repeats (:mod:`society.response_cache`); None (default): every call is live.

    Raises (from :meth:`endpoint`):
        ConfigError: an alias is embedded but no endpoint for it was given.
    """

    def __init__(self, config: SocietyConfig, endpoints: dict[str, Endpoint] | None = None,
                 cache: ResponseCache | None = None) -> None:
        self.config = config
        self.endpoints = dict(endpoints or {})
        self.cache = cache
        self._clients: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def endpoint(self, alias: str) -> Endpoint:
        """The endpoint serving ``alias``."""
        if alias in self.endpoints:
            return self.endpoints[alias]
        spec = self.config.models.get(alias)
        if spec is None:
            raise ConfigError(f"model alias {alias!r} is not in the config's models ({sorted(self.config.models)})")
        if spec.embedded:
            raise ConfigError(
                f"model alias {alias!r} is the embedded model {spec.embedded!r} but no server was started for it; "
                "run through `sqlsociety ask/eval` (which start it), pass endpoints={alias: Endpoint(...)}, "
                "or give the alias a base_url in the config"
            )
        return Endpoint(spec.base_url or "", spec.model or "", spec.resolved_api_key(), spec.extra_body)

    def chat(self, alias: str, sampling: Sampling) -> Any:
        """A cached ``ChatOpenAI`` for ``alias`` with ``sampling``; the client does no retries itself
        (:func:`invoke_llm` does) and times out after ``llm.timeout_s`` seconds. With :attr:`cache`,
        an endpoint with ``weights`` and deterministic sampling, its replies go through the cache
        (:func:`society.response_cache.scope_key`); otherwise no LangChain cache is used at all."""
        from langchain_openai import ChatOpenAI

        ep = self.endpoint(alias)
        extra = dict(ep.extra_body or {})
        key = (
            ep.base_url,
            ep.model,
            ep.api_key,
            sampling.temperature,
            sampling.max_tokens,
            sampling.seed,
            sampling.top_p,
            tuple(sampling.stop or ()),
            json.dumps(extra, sort_keys=True),
            ep.weights,
        )
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                kwargs: dict[str, Any] = dict(
                    model=ep.model,
                    base_url=ep.base_url,
                    api_key=ep.api_key,
                    temperature=sampling.temperature,
                    max_tokens=sampling.max_tokens,
                    timeout=self.config.llm.timeout_s,
                    max_retries=0,
                    # ChatOpenAI sends `max_completion_tokens`; servers that only read the older
                    # `max_tokens` (older llama.cpp servers) would otherwise generate until the context fills.
                    extra_body={**extra, "max_tokens": sampling.max_tokens},
                )
                if sampling.seed is not None:
                    kwargs["seed"] = sampling.seed
                if sampling.top_p is not None:
                    kwargs["top_p"] = sampling.top_p
                if sampling.stop:
                    kwargs["stop"] = list(sampling.stop)
                scope = None if self.cache is None else scope_key(
                    ep.weights, temperature=sampling.temperature, max_tokens=sampling.max_tokens,
                    seed=sampling.seed, top_p=sampling.top_p, stop=sampling.stop, extra_body=extra)
                kwargs["cache"] = self.cache.scoped(scope) if self.cache is not None and scope else False
                client = ChatOpenAI(**kwargs)
                self._clients[key] = client
        return client


def is_retryable(exc: BaseException) -> bool:
    """Whether a model call's exception says the endpoint failed (connection, timeout, 429, 5xx, a
    transport error) rather than the request (a 4xx such as a prompt over the context): the former
    is retried, and once retries are spent is an infrastructure failure, never a result.

    >>> import openai, httpx
    >>> req = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    >>> is_retryable(openai.APIConnectionError(request=req)), is_retryable(ValueError("bad reply"))
    (True, False)
    """
    try:
        import httpx
        import openai
    except ImportError:  # pragma: no cover
        return False
    if isinstance(
        exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)
    ):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, (httpx.TransportError, TimeoutError, ConnectionError))


def restore_stop(text: str, stop: Sequence[str] | str | None, finish_reason: str | None) -> str:
    """Put back the closing marker a stop sequence removed: OpenAI-style servers drop the matched
    stop string, so a reply stopped at ``</sql>`` lacks it (and fails the SQL-R1 format check) and one
    stopped at a fence's end lacks the closing fence. Only when the reply ended on a stop
    (``finish_reason == "stop"``) and the marker is open: ``<sql>`` without ``</sql>``, or an odd
    number of ```` ``` ````."""
    if finish_reason != "stop" or not stop:
        return text
    stops = [stop] if isinstance(stop, str) else list(stop)
    if "</sql>" in stops and text.count("<sql>") > text.count("</sql>"):
        return text + "</sql>"
    if any(s.startswith("```") for s in stops) and text.count("```") % 2 == 1:
        return text.rstrip("\n") + "\n```"
    return text


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` as a role would receive it had the server applied ``stop``: cut before the earliest
    stop string (what an OpenAI-compatible server returns), then :func:`restore_stop` as the
    society does. For text generated without stop strings (e.g. TRL's GRPO samples), so it is
    scored like the served reply. ``stop`` None/empty or no stop string found -> ``text``."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else restore_stop(text[:cut], stop, "stop")


def message_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """Chat messages as ``[{"role", "content"}]`` (OpenAI roles)."""
    names = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
    return [
        {"role": names.get(m.type, m.type), "content": m.content if isinstance(m.content, str) else str(m.content)}
        for m in messages
    ]


def child_config(
    config: RunnableConfig | None,
    *,
    run_name: str,
    tags: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
) -> RunnableConfig:
    """``config`` (the node's config, holding the caller's callbacks) with a run name, extra tags
    and metadata for one child call (LLM or tool), so its span nests under the node's span."""
    cfg: dict[str, Any] = dict(config or {})
    cfg["run_name"] = run_name
    cfg["tags"] = list(dict.fromkeys([*(cfg.get("tags") or []), *tags]))
    cfg["metadata"] = {**(cfg.get("metadata") or {}), **(metadata or {})}
    cfg.pop("run_id", None)
    return cfg  # type: ignore[return-value]


def invoke_llm(
    chat: Any,
    messages: Sequence[BaseMessage],
    *,
    config: RunnableConfig | None,
    settings: LLMSettings,
    log: CallLog | None,
    role: str,
    label: str,
    node: str,
    alias: str,
    metadata: dict[str, Any] | None = None,
) -> AIMessage:
    """Call ``chat`` with ``messages``, retrying endpoint failures, and log the call.

    A connection error, timeout, HTTP 5xx or 429 is retried up to ``settings.retries`` times, waiting
    ``backoff_s``, ``2 * backoff_s``, ``4 * backoff_s``, ... seconds, each capped at ``backoff_max_s``;
    the log record's ``attempts`` counts the attempts made (1 to ``1 + settings.retries``).

    Args:
        chat: a ``ChatOpenAI`` (from :meth:`ChatModels.chat`).
        config: the calling node's ``RunnableConfig`` (callbacks, tags, metadata are kept).
        settings: retries / backoff (see :class:`society.config.LLMSettings`).
        role / label / node / alias: attribution: role instance, run name, graph node, model alias.
        metadata: extra metadata for the run (merged over ``{role, role_instance, node, model_alias}``).

    A ``chat`` with a response cache (:meth:`ChatModels.chat`) answers a request this run sent before
    from it, unless ``role`` sent the same messages to ``alias`` earlier in ``log`` (the same question,
    e.g. a junior round started over without feedback): that repeat goes live, as it would uncached.

    Returns:
        The model's ``AIMessage`` (``usage_metadata`` holds token counts when the server reports them).

    Raises:
        EndpointUnavailable: after ``1 + settings.retries`` failed attempts on retryable errors (the
            message names the count), or at the first retryable failure once a model server this
            process started has exited (its headline; the ``ServerDied`` as ``__cause__``).
        LLMRequestError: the endpoint rejected the request (not retried).
    """
    md = {"role": label.split(":")[0], "role_instance": role, "node": node, "model_alias": alias, **(metadata or {})}
    cfg = child_config(config, run_name=label, tags=[md["role"], node], metadata=md)
    rec = LLMCallRecord(
        role=role, label=label, node=node, alias=alias,
        model=str(getattr(chat, "model_name", "")), base_url=str(getattr(chat, "openai_api_base", "") or ""),
        messages=message_dicts(messages), started=time.time(),
    )
    if log is not None and getattr(chat, "cache", None) not in (None, False) and log.asked(role, alias, rec.messages):
        chat = chat.model_copy(update={"cache": False})  # asked again within the question: live, as uncached
    t0 = time.perf_counter()

    def attempt() -> AIMessage:
        # One call; an error that is not worth retrying leaves as an LLMError, which ends the retries.
        try:
            return chat.invoke(list(messages), config=cfg)
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_retryable(exc):
                raise LLMRequestError(f"{label}: {alias} rejected the request: {type(exc).__name__}: {exc}") from exc
            dead = dead_servers()
            if dead:  # no point retrying against a server that has exited
                raise EndpointUnavailable(
                    f"{label}: endpoint for {alias} ({rec.base_url}): {dead[0].headline}"
                ) from dead[0]
            raise

    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(1 + settings.retries),
        wait=wait_exponential(multiplier=settings.backoff_s, max=settings.backoff_max_s),
    )
    attempts = {"n": 0}

    def run_attempts() -> AIMessage:
        # tenacity keeps its statistics per thread: read them in the thread that retried
        try:
            return retrying(attempt)
        finally:
            attempts["n"] = int(retrying.statistics.get("attempt_number", 1))

    try:
        try:
            msg = interruptible(run_attempts)  # Ctrl-C is seen while a request is held
        except RetryError as e:
            last = e.last_attempt.exception()
            raise EndpointUnavailable(
                f"{label}: endpoint for {alias} ({rec.base_url}) failed {e.last_attempt.attempt_number} times: "
                f"{type(last).__name__}: {last}"
            ) from last
    except LLMError as e:
        rec.error = str(e)
        rec.attempts = attempts["n"]
        rec.latency_s = time.perf_counter() - t0
        if log is not None:
            log.add_llm(rec)
        raise
    rec.attempts = attempts["n"]
    rec.latency_s = time.perf_counter() - t0
    text = msg.content if isinstance(msg.content, str) else str(msg.content)
    restored = restore_stop(text, getattr(chat, "stop", None), (msg.response_metadata or {}).get("finish_reason"))
    if restored != text:
        msg = msg.model_copy(update={"content": restored})
    rec.response = restored
    rec.cached = (msg.response_metadata or {}).get("response_cache") == HIT
    usage = getattr(msg, "usage_metadata", None) or {}
    rec.input_tokens = int(usage.get("input_tokens", 0) or 0)
    rec.output_tokens = int(usage.get("output_tokens", 0) or 0)
    if log is not None:
        log.add_llm(rec)
    return msg
