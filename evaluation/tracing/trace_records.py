"""Span records: the one format every trace is read in, and what a span's attributes say.

Every span is first turned into one *span record*, a plain dict with the OpenTelemetry span data-model
fields (https://opentelemetry.io/docs/specs/otel/trace/api/#span, names as in OTLP/JSON in snake_case)::

    {"trace_id": 32 hex, "span_id": 16 hex, "parent_span_id": 16 hex | None, "name": str,
     "kind": "SPAN_KIND_INTERNAL", "start_time_unix_nano": int, "end_time_unix_nano": int,
     "attributes": {flat key -> scalar or list}, "events": [{"name", "time_unix_nano", "attributes"}],
     "links": [...], "status": {"code": "STATUS_CODE_OK|ERROR|UNSET", "message": str},
     "resource": {"attributes": {"agentlightning.rollout_id", "agentlightning.attempt_id", ...}}}

Span records are made from Agent Lightning spans (:func:`span_to_record`), from LangSmith runs
(:mod:`evaluation.tracing.langsmith_traces`) and from a society run's trace file
(:mod:`evaluation.tracing.society_spans`); they are what ``traces export`` writes (one JSON per line,
read back with :func:`read_records`), and what :func:`evaluation.tracing.trace_tree.build_tree` turns
into the tree ``traces show`` prints.

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

Nothing here imports Agent Lightning or another project module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tools.files import read_jsonl

#: Span names Agent Lightning uses (agentlightning.semconv), kept as literals so reading a
#: trace does not need Agent Lightning imported.
AGL_REWARD = "agentlightning.reward"
AGL_ANNOTATION = "agentlightning.annotation"
ROLLOUT_ID_ATTR = "agentlightning.rollout_id"
ATTEMPT_ID_ATTR = "agentlightning.attempt_id"


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


def unix_nano(seconds: float | None) -> int | None:
    """Seconds since the epoch (float) as integer nanoseconds, the record's time unit; None stays None."""
    return None if seconds is None else int(round(float(seconds) * 1e9))


def attribute_value(value: Any) -> Any:
    """``value`` as a span-record attribute value: str/int/float/bool/None as they are, a list or
    tuple as a list of such values, anything else as its ``str``."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [attribute_value(v) for v in value]
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
        "start_time_unix_nano": unix_nano(d.get("start_time")),
        "end_time_unix_nano": unix_nano(d.get("end_time")),
        "attributes": {k: attribute_value(v) for k, v in (d.get("attributes") or {}).items()},
        "events": [
            {
                "name": e.get("name"),
                "time_unix_nano": unix_nano(e.get("timestamp")),
                "attributes": {k: attribute_value(v) for k, v in (e.get("attributes") or {}).items()},
            }
            for e in d.get("events") or []
        ],
        "links": [
            {
                "trace_id": _hex((ln.get("context") or {}).get("trace_id"), 32),
                "span_id": _hex((ln.get("context") or {}).get("span_id"), 16),
                "attributes": {k: attribute_value(v) for k, v in (ln.get("attributes") or {}).items()},
            }
            for ln in d.get("links") or []
        ],
        "status": {"code": f"STATUS_CODE_{code}", "message": status.get("description") or ""},
        "resource": {"attributes": {k: attribute_value(v) for k, v in resource_attrs.items()}},
    }


def record_rollout_id(record: Mapping[str, Any]) -> str | None:
    """The rollout id a span record belongs to (resource attribute), or None."""
    rid = ((record.get("resource") or {}).get("attributes") or {}).get(ROLLOUT_ID_ATTR)
    return None if rid is None else str(rid)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Span records from a JSONL file written by ``traces export`` or ``traces pull``.

    Raises:
        TraceError: missing, unreadable or non-UTF-8 file, or a line that is not a span record.
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"no trace file {p}; write one with `sqlsociety traces export` or `traces pull`")
    out = read_jsonl(p, error=TraceError, drop_truncated_tail=False)
    for i, rec in enumerate(out, 1):
        if "span_id" not in rec or "name" not in rec:
            raise TraceError(f"{p} record {i} is not a span record (needs span_id and name)")
    return out


def group_by_rollout(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Span records grouped by rollout id (falling back to trace id), in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        key = record_rollout_id(r) or str(r.get("trace_id", ""))
        out.setdefault(key, []).append(dict(r))
    return out


# --------------------------------------------------------------------------- what a span says


def span_attributes(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The flat ``attributes`` of a span record ({} when it has none)."""
    return record.get("attributes") or {}


def reward_value(record: Mapping[str, Any]) -> float | None:
    """The primary reward a span carries (``agentlightning.reward.0.value`` or the legacy
    ``reward`` attribute of a reward span), or None."""
    a = span_attributes(record)
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
    a = span_attributes(record)
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


def first_attribute(a: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` that ``a`` holds with a value other than None or '', else None."""
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
    a = span_attributes(record)
    p = first_attribute(a, "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens", "llm.usage.prompt_tokens")
    c = first_attribute(
        a, "gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens", "llm.usage.completion_tokens"
    )
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
    a = span_attributes(record)
    prompt = _indexed_messages(a, "gen_ai.prompt")
    if not prompt:
        raw = first_attribute(a, "gen_ai.prompt", "llm.prompts", "input.value")
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
        raw = first_attribute(a, "gen_ai.completion", "llm.completions", "output.value")
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
    a = span_attributes(record)
    name = str(first_attribute(a, "langchain.tool.name", "tool.name") or record.get("name", "tool"))
    inp = first_attribute(a, "sql", "langchain.tool.input", "tool.input", "input.value") or ""
    if isinstance(inp, str) and inp[:1] == "{":
        inp = _sql_of(inp)
    out = first_attribute(a, "langchain.tool.output", "tool.output", "result", "output.value")
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


def span_error(record: Mapping[str, Any]) -> str | None:
    """The error a span record reports (an error attribute, an ERROR status's message or an
    ``exception`` event's message; ``"error"`` for an ERROR status without one), or None."""
    a = span_attributes(record)
    err = first_attribute(a, "langchain.tool.error", "error.message", "error", "exception.message")
    if err is True:
        err = None
    st = record.get("status") or {}
    if st.get("code") == "STATUS_CODE_ERROR":
        err = err or st.get("message") or "error"
    for e in record.get("events") or []:
        if e.get("name") == "exception":
            err = err or (e.get("attributes") or {}).get("exception.message")
    return None if err in (None, "", False) else str(err)


def node_name(record: Mapping[str, Any]) -> str:
    """The LangGraph node (or run) name of a span record, without the tracer's ``.chain``/``.agent``/
    ``.workflow``/``.task`` suffix; the span name when no attribute gives one."""
    a = span_attributes(record)
    # AgentOps' LangChain handler names every chain span "chain.chain" and keeps the run name
    # (the LangGraph node, or the graph's run name) in langchain.chain.type.
    name = first_attribute(a, "langgraph.node", "langchain.run_name", "langchain.chain.type")
    name = str(name or record.get("name", "?"))
    for suffix in (".chain", ".agent", ".workflow", ".task"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def span_role(record: Mapping[str, Any]) -> str | None:
    """The society role (instance) a span record was made for, from the ``sqlsociety.role`` attribute
    or the LangChain/LangSmith ``role_instance``/``role`` metadata, or None."""
    a = span_attributes(record)
    r = first_attribute(
        a,
        "sqlsociety.role",
        "langchain.metadata.role_instance",
        "langchain.metadata.role",
        "langsmith.metadata.role_instance",
        "langsmith.metadata.role",
        "role",
    )
    return None if r is None else str(r)


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
