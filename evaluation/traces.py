"""Local traces: list, show and export the rollouts a run recorded.

The source of truth is the run's persistent LightningStore (``RUN_DIR/store.sqlite``, read with
:class:`training.store.RolloutArchive`, safe while a trainer writes). Every span is first turned
into one *span record*, a plain dict with the OpenTelemetry span data-model fields
(https://opentelemetry.io/docs/specs/otel/trace/api/#span, names as in OTLP/JSON in snake_case)::

    {"trace_id": 32 hex, "span_id": 16 hex, "parent_span_id": 16 hex | None, "name": str,
     "kind": "SPAN_KIND_INTERNAL", "start_time_unix_nano": int, "end_time_unix_nano": int,
     "attributes": {flat key -> scalar or list}, "events": [{"name", "time_unix_nano", "attributes"}],
     "links": [...], "status": {"code": "STATUS_CODE_OK|ERROR|UNSET", "message": str},
     "resource": {"attributes": {"agentlightning.rollout_id", "agentlightning.attempt_id", ...}}}

Span records are what ``traces export`` writes (one JSON per line), what ``traces pull`` produces
from LangSmith, and what :func:`build_tree` turns into the tree ``traces show`` prints:

    rollout → node (LangGraph node / role) → LLM call (prompt, response, tokens, latency)
            → tool call (SQL, result or error) … → reward, plus a per-role credit branch.

How a span is classified (:func:`classify`), from the conventions the tracers really write:
    * reward -- Agent Lightning reward spans (name ``agentlightning.reward`` or an annotation
      carrying ``agentlightning.reward.*`` attributes);
    * annotation -- other ``agentlightning.annotation`` spans (e.g. per-role outcomes);
    * llm -- spans with ``gen_ai.*`` request/usage attributes (OpenAI instrumentation,
      AgentOps' LangChain handler) or LangSmith ``llm`` runs;
    * tool -- AgentOps ``tool`` spans (``langchain.tool.*``), LangSmith ``tool`` runs, or spans
      with a ``sql`` attribute recorded by the executor tool;
    * node -- AgentOps ``chain``/``agent`` spans and LangSmith ``chain`` runs (LangGraph nodes);
    * other -- anything else (kept in the tree under its name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from tools.files import atomic_writer

logger = logging.getLogger(__name__)

#: Span names Agent Lightning uses (agentlightning.semconv), kept as literals so reading a
#: trace does not need Agent Lightning imported.
AGL_REWARD = "agentlightning.reward"
AGL_ANNOTATION = "agentlightning.annotation"
ROLLOUT_ID_ATTR = "agentlightning.rollout_id"
ATTEMPT_ID_ATTR = "agentlightning.attempt_id"

#: Wrapper spans of LangChain/LangGraph internals that carry no information of their own; their
#: children are lifted to their parent when the tree is built (``prune=True``).
NOISE_NAME_PREFIXES = (
    "RunnableSequence",
    "RunnableLambda",
    "RunnableParallel",
    "RunnableAssign",
    "ChannelWrite",
    "ChannelRead",
    "_write",
    "_route",
    "Branch",
    "branch:",
    "__start__",
    "StrOutputParser",
    "ChatPromptTemplate",
    "PromptTemplate",
    "after_",
)

#: Characters of prompt/response/result text shown per line in ``traces show``.
PREVIEW_CHARS = 240


class TraceError(ValueError):
    """Raised for a missing run directory, store, rollout or malformed trace file; the message says what to do."""


# --------------------------------------------------------------------------- span records


def _hex(value: Any, width: int) -> str:
    if value is None:
        return ""
    s = str(value)
    if s.startswith("0x"):
        s = s[2:]
    return s.zfill(width) if all(c in "0123456789abcdefABCDEF" for c in s) else s


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(float(seconds) * 1e9))


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_scalar(v) for v in value]
    return str(value)


def span_to_record(span: Any) -> dict[str, Any]:
    """Turn an Agent Lightning :class:`agentlightning.Span` (or its ``model_dump()``) into a span record.

    Raises:
        TraceError: if the object has no ``span_id``/``name``.
    """
    d = span.model_dump() if hasattr(span, "model_dump") else dict(span)
    if "span_id" not in d or "name" not in d:
        raise TraceError(f"not a span (no span_id/name): {str(d)[:200]}")
    status = d.get("status") or {}
    code = str(status.get("status_code", "UNSET")).upper()
    resource_attrs = dict((d.get("resource") or {}).get("attributes") or {})
    # The Span's own fields are authoritative (tracer resources may carry empty placeholders).
    if d.get("rollout_id"):
        resource_attrs[ROLLOUT_ID_ATTR] = d["rollout_id"]
    if d.get("attempt_id"):
        resource_attrs[ATTEMPT_ID_ATTR] = d["attempt_id"]
    if d.get("sequence_id") is not None:
        resource_attrs["agentlightning.span_sequence_id"] = d["sequence_id"]
    return {
        "trace_id": _hex(d.get("trace_id"), 32),
        "span_id": _hex(d.get("span_id"), 16),
        "parent_span_id": _hex(d["parent_id"], 16) if d.get("parent_id") else None,
        "name": d["name"],
        "kind": "SPAN_KIND_INTERNAL",
        "start_time_unix_nano": _ns(d.get("start_time")),
        "end_time_unix_nano": _ns(d.get("end_time")),
        "attributes": {k: _scalar(v) for k, v in (d.get("attributes") or {}).items()},
        "events": [
            {
                "name": e.get("name"),
                "time_unix_nano": _ns(e.get("timestamp")),
                "attributes": {k: _scalar(v) for k, v in (e.get("attributes") or {}).items()},
            }
            for e in d.get("events") or []
        ],
        "links": [
            {
                "trace_id": _hex((ln.get("context") or {}).get("trace_id"), 32),
                "span_id": _hex((ln.get("context") or {}).get("span_id"), 16),
                "attributes": {k: _scalar(v) for k, v in (ln.get("attributes") or {}).items()},
            }
            for ln in d.get("links") or []
        ],
        "status": {"code": f"STATUS_CODE_{code}", "message": status.get("description") or ""},
        "resource": {"attributes": {k: _scalar(v) for k, v in resource_attrs.items()}},
    }


def record_rollout_id(record: Mapping[str, Any]) -> str | None:
    """The rollout id a span record belongs to (resource attribute), or None."""
    rid = ((record.get("resource") or {}).get("attributes") or {}).get(ROLLOUT_ID_ATTR)
    return None if rid is None else str(rid)


# --------------------------------------------------------------------------- classification


def _attrs(record: Mapping[str, Any]) -> Mapping[str, Any]:
    return record.get("attributes") or {}


def reward_value(record: Mapping[str, Any]) -> float | None:
    """The primary reward a span carries (``agentlightning.reward.0.value`` or the legacy
    ``reward`` attribute of a reward span), or None."""
    a = _attrs(record)
    for key in ("agentlightning.reward.0.value", "agentlightning.reward"):
        if key in a and a[key] is not None:
            try:
                return float(a[key])
            except (TypeError, ValueError):
                return None
    if record.get("name") == AGL_REWARD and a.get("reward") is not None:
        try:
            return float(a["reward"])
        except (TypeError, ValueError):
            return None
    return None


def classify(record: Mapping[str, Any]) -> str:
    """Kind of a span record: ``reward``, ``annotation``, ``llm``, ``tool``, ``node`` or ``other``
    (rules in the module docstring)."""
    name = str(record.get("name", ""))
    a = _attrs(record)
    if name == AGL_REWARD or (name == AGL_ANNOTATION and reward_value(record) is not None):
        return "reward"
    if name == AGL_ANNOTATION:
        return "annotation"
    kind = str(a.get("agentops.span.kind", a.get("langsmith.run_type", ""))).lower()
    if kind in ("llm", "chat", "llm_call") or any(
        k.startswith(("gen_ai.usage.", "gen_ai.request.", "gen_ai.prompt", "gen_ai.completion", "llm.request"))
        for k in a
    ):
        return "llm"
    if kind == "tool" or "langchain.tool.name" in a or "sql" in a or "tool.name" in a:
        return "tool"
    if kind in ("chain", "agent", "workflow", "task") or "langchain.chain.type" in a:
        return "node"
    return "other"


def _first(a: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in a and a[k] not in (None, ""):
            return a[k]
    return None


def _int(v: Any) -> int | None:
    try:
        return None if v is None else int(float(v))
    except (TypeError, ValueError):
        return None


def llm_usage(record: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(prompt tokens, completion tokens) of an LLM span record; either may be None."""
    a = _attrs(record)
    p = _first(a, "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens", "llm.usage.prompt_tokens")
    c = _first(a, "gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens", "llm.usage.completion_tokens")
    return _int(p), _int(c)


def indexed_messages(a: Mapping[str, Any], prefix: str, *, default_role: str = "?") -> list[dict[str, str]]:
    """Chat messages flattened into span attributes as ``prefix.<i>.role`` / ``prefix.<i>.content``
    (OpenTelemetry GenAI / OpenLLMetry convention), in index order, as ``{"role", "content"}`` dicts;
    a missing role is ``default_role``, a missing content ''. The one reader of that layout (the
    trace viewer and the training adapter). Agent Lightning's ``utils.otel.unflatten_attributes``
    does the same but needs Agent Lightning imported (about 15 s), which reading a trace avoids.
    """
    out: dict[int, dict[str, str]] = {}
    for k, v in a.items():
        if not k.startswith(prefix + "."):
            continue
        rest = k[len(prefix) + 1 :].split(".", 1)
        if len(rest) == 2 and rest[0].isdigit() and rest[1] in ("role", "content"):
            out.setdefault(int(rest[0]), {})[rest[1]] = str(v)
    return [{"role": m.get("role", default_role), "content": m.get("content", "")} for _, m in sorted(out.items())]


def _indexed_messages(a: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in indexed_messages(a, prefix)]


def llm_io(record: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    """(prompt messages as (role, content), response text) of an LLM span record, best effort."""
    a = _attrs(record)
    prompt = _indexed_messages(a, "gen_ai.prompt")
    if not prompt:
        raw = _first(a, "gen_ai.prompt", "llm.prompts", "input.value")
        parsed = _json_list(raw)
        if parsed is not None:
            prompt = [
                (str(m.get("role", "?")), str(m.get("content", ""))) if isinstance(m, dict) else ("input", str(m))
                for m in parsed
            ]
        elif raw is not None:
            prompt = [("input", raw if isinstance(raw, str) else json.dumps(raw))]
    completion = _indexed_messages(a, "gen_ai.completion")
    response = "\n".join(c for _, c in completion)
    if not response:
        raw = _first(a, "gen_ai.completion", "llm.completions", "output.value")
        parsed = _json_list(raw)
        if parsed is not None:
            response = "\n".join(str(x.get("content", x)) if isinstance(x, dict) else str(x) for x in parsed)
        else:
            response = "" if raw is None else raw if isinstance(raw, str) else json.dumps(raw)
    return prompt, response


def _json_list(raw: Any) -> list | None:
    """``raw`` parsed as a JSON list when it is one (AgentOps/LangChain store message lists as JSON text)."""
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str) and raw.startswith("["):
        try:
            v = json.loads(raw)
        except ValueError:
            return None
        return v if isinstance(v, list) else None
    return None


def tool_io(record: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(tool name, input such as the SQL, output or None) of a tool span record."""
    a = _attrs(record)
    name = str(_first(a, "langchain.tool.name", "tool.name") or record.get("name", "tool"))
    inp = _first(a, "sql", "langchain.tool.input", "tool.input", "input.value") or ""
    if isinstance(inp, str) and inp[:1] == "{":
        inp = _sql_of(inp)
    out = _first(a, "langchain.tool.output", "tool.output", "result", "output.value")
    if isinstance(out, str) and out[:1] == "{":
        try:  # LangChain records a ToolMessage as JSON; its content is what the model saw
            obj = json.loads(out)
            if isinstance(obj, dict) and isinstance(obj.get("content"), str):
                out = obj["content"]
        except ValueError:
            pass
    return name, str(inp), None if out is None else str(out)


def _sql_of(text: str) -> str:
    """The ``sql`` argument of a tool input written as a JSON object or a Python dict repr
    (AgentOps records ``str(dict)``); ``text`` unchanged when there is none."""
    import ast

    for parse in (json.loads, ast.literal_eval):
        try:
            obj = parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("sql"), str):
            return obj["sql"]
    return text


def _error(record: Mapping[str, Any]) -> str | None:
    a = _attrs(record)
    err = _first(a, "langchain.tool.error", "error.message", "error", "exception.message")
    if err is True:
        err = None
    st = record.get("status") or {}
    if st.get("code") == "STATUS_CODE_ERROR":
        err = err or st.get("message") or "error"
    for e in record.get("events") or []:
        if e.get("name") == "exception":
            err = err or (e.get("attributes") or {}).get("exception.message")
    return None if err in (None, "", False) else str(err)


def _node_name(record: Mapping[str, Any]) -> str:
    a = _attrs(record)
    # AgentOps' LangChain handler names every chain span "chain.chain" and keeps the run name
    # (the LangGraph node, or the graph's run name) in langchain.chain.type.
    name = _first(a, "langgraph.node", "langchain.run_name", "langchain.chain.type") or record.get("name", "?")
    name = str(name)
    for suffix in (".chain", ".agent", ".workflow", ".task"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _role(record: Mapping[str, Any]) -> str | None:
    a = _attrs(record)
    r = _first(
        a,
        "sqlsociety.role",
        "langchain.metadata.role_instance",
        "langchain.metadata.role",
        "langsmith.metadata.role_instance",
        "langsmith.metadata.role",
        "role",
    )
    return None if r is None else str(r)


# --------------------------------------------------------------------------- the tree


@dataclass
class TraceNode:
    """One span in a rollout's tree.

    Attributes:
        record: the span record.
        kind: :func:`classify` result.
        children: child nodes in start-time order.
    """

    record: dict[str, Any]
    kind: str
    children: list[TraceNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.record.get("name", "?"))

    @property
    def latency_s(self) -> float | None:
        s, e = self.record.get("start_time_unix_nano"), self.record.get("end_time_unix_nano")
        return None if s is None or e is None else (e - s) / 1e9

    def walk(self) -> Iterator[TraceNode]:
        """This node, then its descendants depth-first."""
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class RolloutTrace:
    """A rollout's spans as a forest, plus what the tree summarises.

    Attributes:
        rollout_id: the rollout id ("" when unknown).
        roots: top-level nodes (spans whose parent is not in the rollout) in start order.
        reward: the final reward (last reward span, Agent Lightning's ``find_final_reward``
            convention), or None.
        role_credit: role -> outcome dict from annotation spans (``role_outcomes.<role>.<k>``
            or ``roles.<role>.<k>`` attributes), e.g. ``{"junior_direct": {"ex": 1.0}}``.
        annotations: every non-reward annotation attribute, merged in span order.
        info: rollout facts from the store (task id, status, phase, ...), when known.
    """

    rollout_id: str
    roots: list[TraceNode]
    reward: float | None
    role_credit: dict[str, dict[str, Any]]
    annotations: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def nodes(self) -> Iterator[TraceNode]:
        """All nodes depth-first."""
        for r in self.roots:
            yield from r.walk()

    def node_names(self) -> list[str]:
        """Names of the node (LangGraph node / role) spans, in visit order, with repeats."""
        return [_node_name(n.record) for n in self.nodes() if n.kind == "node"]

    def visits(self) -> list[str]:
        """Graph node visits, ``"node"`` or ``"node/subnode"`` for subgraph nodes (the society's
        ``SocietyRun.path`` format), in start-time order; the graph's own root span is not a visit."""
        out: list[str] = []

        def rec(n: TraceNode, prefix: str) -> None:
            for c in n.children:
                if c.kind != "node":
                    continue
                name = _node_name(c.record)
                if any(g.kind == "node" for g in c.children):
                    rec(c, f"{prefix}{name}/")
                else:
                    out.append(prefix + name)

        for r in self.roots:
            if r.kind == "node":
                rec(r, "")
        return out

    def llm_calls(self) -> int:
        """Number of LLM-call spans."""
        return sum(1 for n in self.nodes() if n.kind == "llm")

    def tokens(self) -> int:
        """Prompt + completion tokens summed over LLM-call spans (missing counts as 0)."""
        total = 0
        for n in self.nodes():
            if n.kind == "llm":
                p, c = llm_usage(n.record)
                total += (p or 0) + (c or 0)
        return total


def _is_noise(record: Mapping[str, Any]) -> bool:
    if str(_attrs(record).get("agentops.span.kind", "")).lower() == "session":  # AgentOps' per-trace wrappers
        return True
    name = _node_name(record)
    return any(name.startswith(p) for p in NOISE_NAME_PREFIXES)


def role_credit_from_attributes(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-role outcomes from flat annotation attributes.

    Understands the LitAgent's keys (training/agent.py ``role_outcome_attributes``):
    ``sqlsociety.junior.<J>.<k>`` (role ``J``), ``sqlsociety.supervisor.<k>``,
    ``sqlsociety.senior.<k>``; and the generic ``role_outcomes.<role>.<k>`` /
    ``roles.<role>.<k>``.

    Returns:
        role -> {key: value}, roles in first-seen order.
    """
    out: dict[str, dict[str, Any]] = {}
    for k, v in attrs.items():
        role = field_ = None
        for prefix in (
            "role_outcomes.",
            "roles.",
            "sqlsociety.roles.",
            "sqlsociety.role_outcomes.",
            "sqlsociety.junior.",
        ):
            if k.startswith(prefix):
                role, _, field_ = k[len(prefix) :].partition(".")
                break
        else:
            for fixed in ("supervisor", "senior"):
                if k.startswith(f"sqlsociety.{fixed}."):
                    role, field_ = fixed, k[len(f"sqlsociety.{fixed}.") :]
        if role and field_:
            out.setdefault(role, {})[field_] = v
    return out


_unflatten_role_credit = role_credit_from_attributes


def build_tree(records: Sequence[Mapping[str, Any]], *, prune: bool = True, rollout_id: str = "") -> RolloutTrace:
    """Build a rollout's tree from its span records.

    Args:
        records: span records of one rollout (any order).
        prune: lift the children of LangChain/LangGraph wrapper spans (:data:`NOISE_NAME_PREFIXES`)
            and drop those wrappers.
        rollout_id: id to report; default: taken from the records.

    Returns:
        A :class:`RolloutTrace`; the reward is the last reward span's value in start order.
    """
    recs = sorted(
        (dict(r) for r in records),
        key=lambda r: (r.get("start_time_unix_nano") or 0, r.get("end_time_unix_nano") or 0),
    )
    nodes = {r["span_id"]: TraceNode(r, classify(r)) for r in recs}
    parent_of = {r["span_id"]: r.get("parent_span_id") for r in recs}

    def dropped(sid: str) -> bool:
        """Spans left out of the pruned tree: wrappers, a node repeated as its own child (a
        LangGraph subgraph inside the node of the same name), and the client-library span of an
        LLM call nested in the framework's LLM span (same call, counted once)."""
        if not prune:
            return False
        node = nodes[sid]
        p = parent_of.get(sid)
        parent = nodes.get(p) if p else None
        if node.kind in ("node", "other") and _is_noise(node.record):
            return True
        if node.kind == "node" and parent is not None and parent.kind == "node":
            if _node_name(parent.record) == _node_name(node.record):
                return True
        return node.kind == "llm" and parent is not None and parent.kind == "llm"

    def effective_parent(sid: str) -> str | None:
        p = parent_of.get(sid)
        while p is not None and p in nodes and dropped(p):
            p = parent_of.get(p)
        return p if p in nodes else None

    roots: list[TraceNode] = []
    for r in recs:
        sid = r["span_id"]
        if dropped(sid):
            continue
        p = effective_parent(sid)
        (nodes[p].children if p else roots).append(nodes[sid])

    reward = None
    annotations: dict[str, Any] = {}
    for r in recs:
        kind = nodes[r["span_id"]].kind
        if kind == "reward":
            reward = reward_value(r)
        elif kind == "annotation":
            annotations.update(_attrs(r))
    rid = rollout_id or next((x for x in (record_rollout_id(r) for r in recs) if x), "")
    return RolloutTrace(
        rollout_id=rid,
        roots=roots,
        reward=reward,
        role_credit=_unflatten_role_credit(annotations),
        annotations=annotations,
    )


# --------------------------------------------------------------------------- rendering


def _clip(text: Any, n: int = PREVIEW_CHARS) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt_latency(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_reward(v: float | None) -> str:
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _label(node: TraceNode, full: bool) -> Text | str:
    r = node.record
    lat = _fmt_latency(node.latency_s)
    err = _error(r)
    if node.kind == "node":
        role = _role(r) or node_role(node)
        name = _node_name(r)
        extra = f" [dim](role {escape(role)})[/]" if role and role != name else ""
        return f"[bold cyan]◆ {escape(name)}[/]{extra} [dim]{lat}[/]" + (
            f" [red]error: {escape(_clip(err))}[/]" if err else ""
        )
    if node.kind == "llm":
        a = _attrs(r)
        model = _first(a, "gen_ai.request.model", "gen_ai.response.model", "langchain.llm.model") or ""
        p, c = llm_usage(r)
        toks = f"{p if p is not None else '?'}→{c if c is not None else '?'} tok"
        return f"[bold magenta]LLM call[/] {escape(str(model))} [dim]{toks}, {lat}[/]" + (
            f" [red]error: {escape(_clip(err))}[/]" if err else ""
        )
    if node.kind == "tool":
        name, inp, out = tool_io(r)
        return f"[bold yellow]tool {escape(name)}[/] [dim]{lat}[/]"
    if node.kind == "reward":
        return f"[bold green]reward = {_fmt_reward(reward_value(r))}[/]"
    if node.kind == "annotation":
        a = _attrs(r)
        what = a.get("sqlsociety.kind") or ", ".join(sorted(a)[:4])
        return f"[dim]annotation: {escape(str(what))} ({len(a)} attributes)[/]"
    if r.get("name") == "agentlightning.object":
        what = _attrs(r).get("sqlsociety.kind") or _attrs(r).get("agentlightning.object.type") or "object"
        return f"[dim]object: {escape(str(what))}[/]"
    return f"{escape(node.name)} [dim]{lat}[/]" + (f" [red]error: {escape(_clip(err))}[/]" if err else "")


def node_role(node: TraceNode) -> str | None:
    """The role instance a node acted as: the one role every LLM/tool call under it belongs to
    (from the calls' ``role_instance``/``role`` metadata), else None."""
    roles = {_role(n.record) for n in node.walk() if n.kind in ("llm", "tool")}
    roles.discard(None)
    return roles.pop() if len(roles) == 1 else None


def _add(tree: Tree, node: TraceNode, full: bool) -> None:
    branch = tree.add(_label(node, full))
    n = 10_000 if full else PREVIEW_CHARS
    if node.kind == "llm":
        prompt, response = llm_io(node.record)
        if prompt:
            last_role, last = prompt[-1]
            shown = prompt if full else [(last_role, last)]
            for role, content in shown:
                branch.add(f"[dim]prompt ({escape(role)}):[/] {escape(_clip(content, n))}")
        if response:
            branch.add(f"[dim]response:[/] {escape(_clip(response, n))}")
    elif node.kind == "tool":
        _, inp, out = tool_io(node.record)
        if inp:
            branch.add(f"[dim]input:[/] [green]{escape(_clip(inp, n))}[/]")
        err = _error(node.record)
        if err:
            branch.add(f"[red]error: {escape(_clip(err, n))}[/]")
        elif out is not None:
            branch.add(f"[dim]result:[/] {escape(_clip(out, n))}")
    for c in node.children:
        _add(branch, c, full)


def render_tree(trace: RolloutTrace, *, full: bool = False) -> Tree:
    """A Rich tree of the rollout: nodes, LLM calls (prompt/response, tokens, latency), tool calls
    (input SQL, result or error), the reward, and per-role credit.

    Args:
        trace: from :func:`build_tree`.
        full: show whole prompts/responses instead of the last prompt message clipped to
            :data:`PREVIEW_CHARS`.
    """
    info = trace.info
    head = f"[bold]rollout {escape(trace.rollout_id or '?')}[/]"
    for key in ("task_id", "db_id", "phase", "status", "ex"):
        if info.get(key) not in (None, ""):
            head += f"  {key}=[cyan]{escape(str(info[key]))}[/]"
    head += f"  reward=[bold green]{_fmt_reward(trace.reward)}[/]"
    tree = Tree(head)
    if info.get("question"):
        tree.add(f"[dim]question:[/] {escape(str(info['question']))}")
    for r in trace.roots:
        _add(tree, r, full)
    if trace.role_credit:
        credit = tree.add("[bold]per-role credit[/]")
        for role, vals in trace.role_credit.items():
            shown = ", ".join(f"{k}={_clip(v, 80)}" for k, v in vals.items() if not k.endswith(("sql", "raw")))
            leaf = credit.add(f"[cyan]{escape(role)}[/] {escape(shown)}")
            for k, v in vals.items():
                if k.endswith("sql") and v:
                    leaf.add(f"[dim]{escape(k)}:[/] [green]{escape(str(v) if full else _clip(v, 160))}[/]")
    tree.add(f"[bold green]final reward = {_fmt_reward(trace.reward)}[/]")
    return tree


# --------------------------------------------------------------------------- society run directories


def _f(v: Any, default: float = 0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def society_run_records(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Span records for one question of a society run directory (``runs/<stamp>-<name>/traces/<qid>.json``,
    written by ``society.run.RunRecorder`` for ``sqlsociety ask`` / ``eval``), so ``traces show``
    renders those runs like rollouts of a training store.

    The file holds the node visits (``path``: ``"node"`` or ``"junior/subnode"``), every LLM call
    (role, node, messages, response, tokens, start, latency) and tool call (role, node, args,
    output, error) with their times, and per-role outcomes (``roles``). Each visit becomes a node
    span under a ``society`` root (a junior's subgraph visits under one span per junior), each
    call a child of the visit it ran in (the k-th call of a node goes to the k-th visit of that
    node), and ``roles`` an annotation span (``role_outcomes.<role>.<key>``). Visits without a
    call get the time of the visit before them.
    """
    key = str(run.get("run_id") or run.get("question_id") or "run")
    trace_id = hashlib.md5(key.encode()).hexdigest()
    qid = str(run.get("question_id") or key)
    counter = iter(range(1, 1_000_000))

    def sid() -> str:
        return hashlib.md5(f"{key}/{next(counter)}".encode()).hexdigest()[:16]

    resource = {"attributes": {ROLLOUT_ID_ATTR: qid, "service.name": "sqlsociety"}}

    def rec(
        name: str, parent: str | None, start: float, end: float, attrs: dict[str, Any], error: Any = None
    ) -> dict[str, Any]:
        return {
            "trace_id": trace_id,
            "span_id": sid(),
            "parent_span_id": parent,
            "name": name,
            "kind": "SPAN_KIND_INTERNAL",
            "start_time_unix_nano": _ns(start),
            "end_time_unix_nano": _ns(end),
            "attributes": {k: _scalar(v) for k, v in attrs.items() if v is not None},
            "events": [],
            "links": [],
            "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": str(error or "")},
            "resource": resource,
        }

    trace = run.get("trace") or {}
    calls: list[tuple[str, dict]] = [("llm", c) for c in trace.get("llm_calls") or []]
    calls += [("tool", c) for c in trace.get("tool_calls") or []]
    calls.sort(key=lambda kc: _f(kc[1].get("started")))
    t0 = min((_f(c.get("started")) for _, c in calls), default=0.0)
    out: list[dict[str, Any]] = []
    root = rec(
        str(run.get("agent") or "society"), None, t0, t0 + _f(run.get("seconds")), {"agentops.span.kind": "chain"}
    )
    out.append(root)

    def visit_key(role: str, node: str) -> str:
        return (
            f"{role}/{node}" if role.startswith("junior") and node in {"draft", "execute", "fix", "finish"} else node
        )

    visits = [str(v) for v in run.get("path") or []]
    by_key: dict[str, list[int]] = {}
    for i, v in enumerate(visits):
        by_key.setdefault(v, []).append(i)
    assigned: dict[int, list[tuple[str, dict]]] = {}
    seen: dict[str, int] = {}
    for kind, c in calls:
        k = visit_key(str(c.get("role", "")), str(c.get("node", "")))
        idxs = by_key.get(k)
        if not idxs:
            continue
        n = seen.get(k, 0)
        seen[k] = n + 1
        assigned.setdefault(idxs[min(n, len(idxs) - 1)], []).append((kind, c))
    groups: dict[str, dict[str, Any]] = {}
    last = t0
    for i, v in enumerate(visits):
        mine = assigned.get(i, [])
        start = min((_f(c.get("started")) for _, c in mine), default=last)
        end = max((_f(c.get("started")) + _f(c.get("latency_s")) for _, c in mine), default=start)
        parent = root["span_id"]
        if "/" in v:
            group, v_name = v.split("/", 1)
            g = groups.get(group)
            if g is None:
                g = groups[group] = rec(
                    group, root["span_id"], start, end, {"langgraph.node": group, "agentops.span.kind": "chain"}
                )
                out.append(g)
            g["start_time_unix_nano"] = min(g["start_time_unix_nano"], _ns(start))
            g["end_time_unix_nano"] = max(g["end_time_unix_nano"], _ns(end))
            parent = g["span_id"]
        else:
            v_name = v
        node = rec(v_name, parent, start, end, {"langgraph.node": v_name, "agentops.span.kind": "chain"})
        out.append(node)
        for kind, c in mine:
            cs, ce = _f(c.get("started")), _f(c.get("started")) + _f(c.get("latency_s"))
            if kind == "llm":
                attrs: dict[str, Any] = {"agentops.span.kind": "llm", "gen_ai.request.model": c.get("model"),
                                         "sqlsociety.role": c.get("role"), "langchain.run_name": c.get("label"),
                                         "gen_ai.usage.prompt_tokens": c.get("input_tokens"),
                                         "gen_ai.usage.completion_tokens": c.get("output_tokens")}
                for j, m in enumerate(c.get("messages") or []):
                    attrs[f"gen_ai.prompt.{j}.role"] = m.get("role")
                    attrs[f"gen_ai.prompt.{j}.content"] = m.get("content")
                if c.get("response") is not None:
                    attrs["gen_ai.completion.0.role"] = "assistant"
                    attrs["gen_ai.completion.0.content"] = c.get("response")
                out.append(rec(str(c.get("label") or "llm"), node["span_id"], cs, ce, attrs, c.get("error")))
            else:
                args = c.get("args") or {}
                out.append(
                    rec(
                        str(c.get("tool")),
                        node["span_id"],
                        cs,
                        ce,
                        {
                            "agentops.span.kind": "tool",
                            "langchain.tool.name": c.get("tool"),
                            "sqlsociety.role": c.get("role"),
                            "langchain.tool.input": args.get("sql")
                            if isinstance(args, Mapping) and "sql" in args
                            else json.dumps(args),
                            "langchain.tool.output": c.get("output"),
                            "langchain.tool.error": c.get("error"),
                        },
                        c.get("error"),
                    )
                )
        last = end
    roles = run.get("roles") or {}
    if roles:
        attrs = {f"role_outcomes.{r}.{k}": v for r, d in roles.items() if isinstance(d, Mapping)
                 for k, v in d.items() if isinstance(v, (str, int, float, bool))}
        out.append(rec(AGL_ANNOTATION, root["span_id"], last, last, attrs))
    return out


def _society_trace_file(run_dir: Path, question_id: str) -> Path:
    files = sorted((run_dir / "traces").glob("*.json"))
    match = [f for f in files if f.stem == question_id] or [f for f in files if f.stem.startswith(question_id)]
    if len(match) != 1:
        some = ", ".join(f.stem for f in files[:5])
        what = "several questions start with" if match else "no question"
        raise TraceError(f"{what} {question_id!r} in {run_dir / 'traces'}; ids there include: {some or '(none)'}")
    return match[0]


def load_society_trace(run_dir: str | Path, question_id: str, *, prune: bool = True) -> RolloutTrace:
    """A question of a society run directory (``sqlsociety ask`` / ``eval``) as a tree; ``info``
    carries the question, db, status and (for eval) EX as ``match``.

    Raises:
        TraceError: no such question (the message lists some that exist).
    """
    run_dir = Path(run_dir)
    f = _society_trace_file(run_dir, question_id)
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise TraceError(
            f"trace file {f} cannot be read as JSON ({e}); it is not one `sqlsociety ask/eval` wrote"
        ) from e
    if not isinstance(d, dict):
        raise TraceError(f"trace file {f} holds a JSON {type(d).__name__}, not a society run record")
    trace = build_tree(society_run_records(d), prune=prune, rollout_id=str(d.get("question_id") or question_id))
    trace.info = {"task_id": d.get("question_id"), "db_id": d.get("db_id"), "status": d.get("status"),
                  "phase": d.get("agent"), "question": d.get("question")}
    if "match" in d:
        trace.info["ex"] = int(bool(d["match"]))
    return trace


# --------------------------------------------------------------------------- run directories


def is_society_run_dir(run_dir: str | Path) -> bool:
    """True for a society run directory (``traces/*.json`` and no ``store.sqlite``)."""
    p = Path(run_dir)
    return p.is_dir() and not (p / "store.sqlite").exists() and (p / "traces").is_dir()


#: Tables every rollout store has (``training.store``'s schema); checked before the store is read.
STORE_TABLES = ("rollouts", "attempts", "spans", "rewards")


def store_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable rollout store, or None when it is. Plain ``sqlite3``, read-only
    (Agent Lightning is not imported, nothing is created or changed). Never raises.

    Returns:
        None, or a phrase completing "store <path> ...": ``"is empty (0 bytes)"``, ``"is not an SQLite
        database (...)"``, ``"is corrupt (...)"``, ``"is an SQLite file but not a rollout store
        (no table ...)"``.
    """
    p = Path(path)
    with _no_new_sidecars(p, always=False) as outcome:
        outcome.append(_store_problem(p))
    return outcome[0]


def _sidecars(p: Path) -> list[Path]:
    return [p.with_name(p.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


@contextmanager
def _no_new_sidecars(p: Path, *, always: bool) -> Iterator[list]:
    """Remove the ``-wal``/``-shm``/``-journal`` files that SQLite creates when it reads a WAL-mode
    file and that were not there before, after the block: always (``always``), else only when the
    block raised or yielded a problem (its list's first item is not None). A read that fails
    leaves the run directory as it was."""
    before = {s for s in _sidecars(p) if s.exists()}
    outcome: list = []
    failed = True
    try:
        yield outcome
        failed = bool(outcome) and outcome[0] is not None
    finally:
        if always or failed:
            for s in _sidecars(p):
                if s not in before and s.exists() and (s.name.endswith("-shm") or s.stat().st_size == 0):
                    try:
                        s.unlink()
                    except OSError:
                        pass


def _store_problem(p: Path) -> str | None:
    try:
        size = p.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return (
            "is empty (0 bytes); it is not a rollout store — pass the run directory of a finished `sqlsociety train`"
        )
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as e:
        return f"cannot be opened read-only ({e})"
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e).lower():
            return f"is not an SQLite database ({e}); pass the run directory of `sqlsociety train`"
        return f"is corrupt ({e}); the run's traces cannot be read"
    except sqlite3.Error as e:
        return f"cannot be read ({e})"
    finally:
        conn.close()
    missing = [t for t in STORE_TABLES if t not in tables]
    if missing:
        return (f"is an SQLite file but not a rollout store (no table {', '.join(missing)}); "
                "pass the run directory of `sqlsociety train`")
    return None


def store_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/store.sqlite``, or ``run_dir`` itself when it is a ``.sqlite`` file; checked to be a
    readable rollout store (:func:`store_problem`).

    Raises:
        TraceError: when neither exists, or the file is not a readable rollout store (empty, not
            SQLite, corrupt, or another SQLite file).
    """
    p = Path(run_dir).expanduser()
    if p.is_file() and p.suffix in (".sqlite", ".db", ".sqlite3"):
        s = p
    else:
        if not p.exists():
            raise TraceError(f"run directory {p} does not exist; pass a run directory made by `sqlsociety train` "
                             "(it holds store.sqlite)")
        s = p / "store.sqlite"
        if not s.is_file():
            raise TraceError(
                f"no store at {s}; pass a run directory made by `sqlsociety train` (it holds store.sqlite)"
            )
    problem = store_problem(s)
    if problem:
        raise TraceError(f"store {s} {problem}")
    return s


@contextmanager
def _reading(spath: Path) -> Iterator[None]:
    """Turn errors met while reading a store that passed :func:`store_problem` (pages corrupt
    further in, rows that are not Agent Lightning records) into :class:`TraceError`; the read
    then leaves no SQLite side files behind that were not there before."""
    try:
        with _no_new_sidecars(spath, always=False):
            yield
    except sqlite3.DatabaseError as e:
        raise TraceError(f"store {spath} is corrupt ({e}); the run's traces cannot be read") from e
    except ValueError as e:  # pydantic ValidationError / JSONDecodeError of a stored row
        if isinstance(e, TraceError):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TraceError(f"store {spath} holds a row that is not an Agent Lightning record ({first[:200]})") from e


def _metrics_by_rollout(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "metrics.jsonl"
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        logger.warning("ignoring %s: %s", path, e)
        return out
    for line in text.split("\n"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("rollout_id"):
            out[str(row["rollout_id"])] = row
    return out


@dataclass(frozen=True)
class RolloutSummary:
    """One line of ``traces list``.

    Attributes:
        rollout_id, task_id, status, phase, db_id, question: as recorded (phase/db_id/question
            from the rollout input or metadata, else from ``metrics.jsonl``; None when unknown).
        reward: final reward or None; ex: the rollout's EX from metrics.jsonl or None.
        n_spans: spans stored; duration_s: end - start in seconds or None.
    """

    rollout_id: str
    task_id: str | None
    status: str
    phase: str | None
    db_id: str | None
    question: str | None
    reward: float | None
    ex: float | None
    n_spans: int
    duration_s: float | None


def _lookup(rec: Any, key: str) -> Any:
    for src in (rec.input if isinstance(rec.input, Mapping) else {}, rec.metadata or {}):
        if src.get(key) is not None:
            return src[key]
    return None


def list_rollouts(
    run_dir: str | Path,
    *,
    phase: str | None = None,
    min_reward: float | None = None,
    failed: bool = False,
) -> list[RolloutSummary]:
    """Rollouts of a run in start order, filtered.

    Args:
        run_dir: run directory (or the store file).
        phase: keep rollouts of this phase only (matched as a substring, so ``sft`` matches ``2-sft``).
        min_reward: keep rollouts with reward >= this.
        failed: keep only rollouts that failed (status failed/cancelled, or no reward emitted).

    Raises:
        TraceError: no store, or the store is not a readable rollout store.
    """
    if is_society_run_dir(run_dir):
        return _list_society_run(Path(run_dir), phase=phase, min_reward=min_reward, failed=failed)
    spath = store_path(run_dir)  # checked before Agent Lightning is imported (seconds)
    from training.store import RolloutArchive  # the store module owns the file format

    metrics = _metrics_by_rollout(spath.parent)
    out = []
    with _reading(spath), RolloutArchive(spath) as arch:
        for rec in arch.rollouts():
            m = metrics.get(rec.rollout_id, {})
            ph = m.get("phase") or _lookup(rec, "phase")
            reward = rec.reward if rec.reward is not None else m.get("reward")
            summary = RolloutSummary(
                rollout_id=rec.rollout_id,
                task_id=rec.task_id or m.get("task_id"),
                status=rec.status,
                phase=None if ph is None else str(ph),
                db_id=_lookup(rec, "db_id"),
                question=_lookup(rec, "question"),
                reward=None if reward is None else float(reward),
                ex=None if m.get("ex") is None else float(m["ex"]),
                n_spans=rec.n_spans,
                duration_s=None if rec.end_time is None else rec.end_time - rec.start_time,
            )
            if phase and (summary.phase is None or phase not in summary.phase):
                continue
            if min_reward is not None and (summary.reward is None or summary.reward < min_reward):
                continue
            if failed and not (summary.status in ("failed", "cancelled") or summary.reward is None):
                continue
            out.append(summary)
    return out


def _society_span_count(run_dir: Path, question_id: str) -> int:
    f = run_dir / "traces" / f"{question_id}.json"
    try:
        return len(society_run_records(json.loads(f.read_text(encoding="utf-8"))))
    except (OSError, ValueError):
        return 0


def _list_society_run(
    run_dir: Path, *, phase: str | None, min_reward: float | None, failed: bool
) -> list[RolloutSummary]:
    """``list_rollouts`` for a society run directory: one row per ``questions.jsonl`` line (phase =
    the agent; EX = ``match`` when the run was an eval; no reward is recorded there; spans = the
    records :func:`society_run_records` makes of the question's trace file)."""
    out = []
    qpath = run_dir / "questions.jsonl"
    try:
        lines = qpath.read_text(encoding="utf-8").split("\n") if qpath.is_file() else []
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{qpath} cannot be read as UTF-8 text ({e}); it is not one `sqlsociety eval` wrote") from e
    for line in lines:
        try:
            q = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(q, dict):
            continue
        row = RolloutSummary(
            rollout_id=str(q.get("question_id") or q.get("run_id")), task_id=q.get("question_id"),
            status=str(q.get("status") or "?"), phase=q.get("agent"), db_id=q.get("db_id"), question=q.get("question"),
            reward=None, ex=None if q.get("match") is None else float(bool(q["match"])),
            n_spans=_society_span_count(run_dir, str(q.get("question_id") or "")), duration_s=q.get("seconds"),
        )
        if phase and (row.phase is None or phase not in row.phase):
            continue
        if min_reward is not None:
            continue  # society runs record no reward
        if failed and row.status != "failed":
            continue
        out.append(row)
    return out


def load_rollout_trace(run_dir: str | Path, rollout_id: str, *, prune: bool = True) -> RolloutTrace:
    """A rollout's tree from the run's store (its latest attempt), with the rollout's facts in ``info``.

    Raises:
        TraceError: no store, an unreadable store, or no such rollout (the message lists a few ids
            that exist).
    """
    if is_society_run_dir(run_dir):
        return load_society_trace(run_dir, rollout_id, prune=prune)
    spath = store_path(run_dir)
    from training.store import RolloutArchive

    with _reading(spath), RolloutArchive(spath) as arch:
        recs = arch.rollouts()
        match = [r for r in recs if r.rollout_id == rollout_id] or [
            r for r in recs if r.rollout_id.startswith(rollout_id)
        ]
        if len(match) != 1:
            some = ", ".join(r.rollout_id for r in recs[:5])
            what = "several rollouts start with" if match else "no rollout"
            raise TraceError(f"{what} {rollout_id!r} in {spath}; ids there include: {some or '(none)'}")
        rec = match[0]
        spans = arch.spans(rec.rollout_id)
    trace = build_tree([span_to_record(s) for s in spans], prune=prune, rollout_id=rec.rollout_id)
    m = _metrics_by_rollout(spath.parent).get(rec.rollout_id, {})
    trace.info = {
        "task_id": rec.task_id,
        "status": rec.status,
        "phase": m.get("phase") or _lookup(rec, "phase"),
        "db_id": _lookup(rec, "db_id"),
        "question": _lookup(rec, "question"),
    }
    if trace.reward is None and rec.reward is not None:
        trace.reward = rec.reward
    if not trace.role_credit and m.get("role_outcomes"):
        trace.role_credit = {
            k: dict(v) if isinstance(v, Mapping) else {"value": v} for k, v in m["role_outcomes"].items()
        }
    return trace


def iter_records(run_dir: str | Path, rollout_ids: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Span records of the run's rollouts (latest attempt each), rollout by rollout in start order.

    Args:
        run_dir: run directory or store file.
        rollout_ids: restrict to these ids (None: all rollouts).

    Raises:
        TraceError: no store, or the store is not a readable rollout store.
    """
    spath = store_path(run_dir)
    from training.store import RolloutArchive

    wanted = None if rollout_ids is None else set(rollout_ids)
    with _reading(spath), RolloutArchive(spath) as arch:
        for rec in arch.rollouts():
            if wanted is not None and rec.rollout_id not in wanted:
                continue
            for span in arch.spans(rec.rollout_id):
                yield span_to_record(span)


def export_jsonl(
    run_dir: str | Path, out: str | Path, rollout_ids: Iterable[str] | None = None
) -> int:
    """Write the run's spans as JSON lines of span records (OpenTelemetry fields).

    The file is written atomically: on any error nothing is created (or an existing ``out`` is
    left as it was). The store is checked before ``out`` is touched.

    Returns:
        Number of spans written.

    Raises:
        TraceError: no store or an unreadable one (nothing written).
        OSError: ``out`` cannot be written.
    """
    n = 0
    out = Path(out)
    store_path(run_dir)  # fail before creating anything
    with atomic_writer(out) as fh:
        for rec in iter_records(run_dir, rollout_ids):
            fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Span records from a JSONL file written by ``traces export`` or ``traces pull``.

    Raises:
        TraceError: missing, unreadable or non-UTF-8 file, or a line that is not a span record.
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"no trace file {p}; write one with `sqlsociety traces export` or `traces pull`")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(
            f"{p} is not UTF-8 text ({exc}); pass a JSONL file written by `traces export` or `traces pull`"
        ) from exc
    except OSError as exc:
        raise TraceError(f"{p} cannot be read ({exc.strerror or exc}); check its permissions") from exc
    out = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{p} line {i} is not JSON: {exc}") from exc
        if not isinstance(rec, dict) or "span_id" not in rec or "name" not in rec:
            raise TraceError(f"{p} line {i} is not a span record (needs span_id and name)")
        out.append(rec)
    return out


def group_by_rollout(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Span records grouped by rollout id (falling back to trace id), in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        key = record_rollout_id(r) or str(r.get("trace_id", ""))
        out.setdefault(key, []).append(dict(r))
    return out
