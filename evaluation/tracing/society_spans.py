"""Span records made from a society run directory's trace file (``sqlsociety ask`` / ``eval``),
so ``traces show`` renders those runs like rollouts of a training store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from evaluation.tracing.trace_records import AGL_ANNOTATION, ROLLOUT_ID_ATTR, attribute_value, unix_nano


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
            "start_time_unix_nano": unix_nano(start),
            "end_time_unix_nano": unix_nano(end),
            "attributes": {k: attribute_value(v) for k, v in attrs.items() if v is not None},
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
            g["start_time_unix_nano"] = min(g["start_time_unix_nano"], unix_nano(start))
            g["end_time_unix_nano"] = max(g["end_time_unix_nano"], unix_nano(end))
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
