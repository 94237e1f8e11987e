"""``traces show``: a rollout's tree (:mod:`evaluation.tracing.trace_tree`) as a Rich tree."""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from evaluation.tracing.trace_records import (
    first_attribute,
    llm_io,
    llm_usage,
    node_name,
    reward_value,
    span_attributes,
    span_error,
    span_role,
    tool_io,
)
from evaluation.tracing.trace_tree import RolloutTrace, TraceNode, node_role

#: Characters of prompt/response/result text shown per line in ``traces show``.
PREVIEW_CHARS = 240


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
    err = span_error(r)
    if node.kind == "node":
        role = span_role(r) or node_role(node)
        name = node_name(r)
        extra = f" [dim](role {escape(role)})[/]" if role and role != name else ""
        return f"[bold cyan]◆ {escape(name)}[/]{extra} [dim]{lat}[/]" + (
            f" [red]error: {escape(_clip(err))}[/]" if err else ""
        )
    if node.kind == "llm":
        a = span_attributes(r)
        model = first_attribute(a, "gen_ai.request.model", "gen_ai.response.model", "langchain.llm.model") or ""
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
        a = span_attributes(r)
        what = a.get("sqlsociety.kind") or ", ".join(sorted(a)[:4])
        return f"[dim]annotation: {escape(str(what))} ({len(a)} attributes)[/]"
    if r.get("name") == "agentlightning.object":
        a = span_attributes(r)
        what = a.get("sqlsociety.kind") or a.get("agentlightning.object.type") or "object"
        return f"[dim]object: {escape(str(what))}[/]"
    return f"{escape(node.name)} [dim]{lat}[/]" + (f" [red]error: {escape(_clip(err))}[/]" if err else "")


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
        err = span_error(node.record)
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
