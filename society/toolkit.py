"""The tools every role may use, as LangChain tools (so each call is a traced tool run/span).

=================  ===========================================================================
tool               what it does
=================  ===========================================================================
``sql_db_schema``  prompt-ready schema of the run's database (``tools.schema``; cached)
``sql_db_query``   runs one read-only statement with the safe executor (``tools.executor``);
                   content = short text for the model, artifact = :class:`society.state.ExecSummary`
``sql_examples``   worked examples: the gold split's questions most similar to the question, with
                   their SQL, from other databases (``tools.examples``); for a role whose config
                   lists ``examples`` in ``tools:``
``web_search``     Tavily web search (``tavily-python``); present only when ``TAVILY_API_KEY``
                   is set **and** the role's config lists ``web_search`` in ``tools:``
=================  ===========================================================================

The tools are module-level objects; the database and limits of the current run come from the
``RunnableConfig`` they are invoked with (``configurable["society"]``, a
:class:`society.roles.RunContext`), so no tool is rebuilt per question.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool

from society.llm import ToolCallRecord, child_config
from society.state import ExecSummary
from tools.error_hints import name_hint
from tools.examples import as_dicts, examples_text, shown_for
from tools.executor import execute_sql, result_digest
from tools.schema import load_schema, schema_prompt

#: Rows of a result kept in an :class:`ExecSummary` (the digest and row count cover all rows).
PREVIEW_ROWS = 20


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return str(v)


def execute_summary(db_path: str, sql: str | None, *, timeout_s: float = 5.0, max_rows: int = 10_000,
                    hints: bool = False) -> ExecSummary:
    """Execute ``sql`` with the safe executor and summarise the outcome (never raises for bad SQL).

    ``sql`` None or blank gives ``ExecSummary(sql="", ok=False, error="no SQL")``. With ``hints``, a
    ``no such column`` / ``no such table`` error carries what the schema knows about the name
    (:func:`tools.error_hints.name_hint`) in ``hint``.
    """
    if not sql or not sql.strip():
        return ExecSummary(sql="", ok=False, error_category="none", error="no SQL")
    res = execute_sql(db_path, sql, timeout_s=timeout_s, max_rows=max_rows)
    if not res.ok:
        hint = name_hint(sql, res.message, load_schema(db_path, sample_rows=0)) if hints else None
        return ExecSummary(sql=sql, ok=False, error_category=res.category.value, error=res.message,
                           elapsed_ms=res.elapsed_ms, hint=hint)
    return ExecSummary(
        sql=sql,
        ok=True,
        columns=list(res.columns),
        rows=[[_json_value(v) for v in r] for r in res.rows[:PREVIEW_ROWS]],
        row_count=len(res.rows),
        truncated=res.truncated,
        digest=result_digest(res.rows),
        elapsed_ms=res.elapsed_ms,
    )


def schema_text(db_path: str, *, compact: bool = True, sample_rows: int = 0, max_chars: int | None = None) -> str:
    """Prompt-ready schema of ``db_path`` (``tools.schema.schema_prompt``, cached there).

    Raises:
        whatever ``tools.schema`` raises for an unreadable database (the tool call records it).
    """
    return schema_prompt(db_path, compact=compact, sample_rows=sample_rows, max_chars=max_chars)


def _ctx(config: RunnableConfig | None) -> Any:
    ctx = ((config or {}).get("configurable") or {}).get("society")
    if ctx is None:
        raise RuntimeError(
            "society tools need configurable['society'] (a RunContext); run them through the society graph"
        )
    return ctx


@tool("sql_db_schema", response_format="content_and_artifact")
def sql_db_schema(config: RunnableConfig) -> tuple[str, str]:
    """Return the schema (tables, columns, keys) of the database the question is about."""
    ctx = _ctx(config)
    s = ctx.config.schema_
    text = schema_text(ctx.db_path, compact=s.compact, sample_rows=s.sample_rows, max_chars=s.max_chars)
    return text, text


@tool("sql_db_query", response_format="content_and_artifact")
def sql_db_query(sql: str, config: RunnableConfig) -> tuple[str, ExecSummary]:
    """Run one read-only SQLite query on the question's database and return its result or error."""
    ctx = _ctx(config)
    ex = ctx.config.execution
    summary = execute_summary(ctx.db_path, sql, timeout_s=ex.timeout_s, max_rows=ex.max_rows, hints=ex.error_hints)
    return summary.as_text(), summary


@tool("sql_examples", response_format="content_and_artifact")
def sql_examples(question: str, k: int, split: str, config: RunnableConfig) -> tuple[str, list[dict[str, Any]]]:
    """Return up to k worked examples (similar questions of the gold split, with their SQL) from
    databases other than the question's: a prompt section and the examples as dicts."""
    ctx = _ctx(config)
    found = shown_for(question, ctx.db_id, k=k, split=split)
    return examples_text(found), as_dicts(found)


def web_search_available(role_tools: list[str]) -> bool:
    """True when the role asks for ``web_search`` and ``TAVILY_API_KEY`` is set."""
    return "web_search" in role_tools and bool(os.environ.get("TAVILY_API_KEY"))


def make_web_search() -> BaseTool:
    """A Tavily search tool (top 3 results' content, 1,000 characters at most).

    Raises:
        RuntimeError: ``TAVILY_API_KEY`` is not set.
    """
    key = os.environ.get("TAVILY_API_KEY")
    if not key:
        raise RuntimeError("web_search needs TAVILY_API_KEY; export it or drop web_search from the role's tools")
    from tavily import TavilyClient

    client = TavilyClient(api_key=key)

    @tool("web_search")
    def web_search(query: str) -> str:
        """Search the web for outside knowledge (definitions, facts) the database does not hold."""
        res = client.search(query=query, max_results=3)
        text = "\n".join(r.get("content", "") for r in res.get("results", []))
        return text[:1000]

    return web_search


def tools_for(role_tools: list[str]) -> dict[str, BaseTool]:
    """The tools a role with ``tools: role_tools`` gets: name -> tool (web search only when available)."""
    out: dict[str, BaseTool] = {}
    if "schema" in role_tools:
        out["sql_db_schema"] = sql_db_schema
    if "executor" in role_tools:
        out["sql_db_query"] = sql_db_query
    if "examples" in role_tools:
        out["sql_examples"] = sql_examples
    if web_search_available(role_tools):
        out["web_search"] = make_web_search()
    return out


def call_tool(
    t: BaseTool,
    args: dict[str, Any],
    *,
    config: RunnableConfig | None,
    role: str,
    label: str,
    node: str,
    log: Any = None,
    metadata: dict[str, Any] | None = None,
) -> ToolMessage:
    """Invoke tool ``t`` as a tool call (so it nests under the node's run and yields a ToolMessage
    with the artifact), and log it.

    Returns:
        The ``ToolMessage`` (``.content`` text, ``.artifact`` structured result, ``.status``
        ``"error"`` when the tool raised; tool errors are returned, not raised).
    """
    md = {"role": label.split(":")[0], "role_instance": role, "node": node, **(metadata or {})}
    cfg = child_config(config, run_name=t.name, tags=[md["role"], node, "tool"], metadata=md)
    call = {"type": "tool_call", "name": t.name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}"}
    started, t0 = time.time(), time.perf_counter()
    try:
        msg = t.invoke(call, config=cfg)
        err = None
    except Exception as e:  # noqa: BLE001 - a tool failure is an observation, not a crash
        msg = ToolMessage(content=f"tool error: {type(e).__name__}: {e}", tool_call_id=call["id"], status="error")
        err = f"{type(e).__name__}: {e}"
    if log is not None:
        art = getattr(msg, "artifact", None)
        ok = err is None and (not isinstance(art, ExecSummary) or art.ok)
        log.add_tool(
            ToolCallRecord(
                tool=t.name, role=role, node=node, args=args, output=str(msg.content)[:2000], ok=ok,
                error=err or (art.error if isinstance(art, ExecSummary) and not art.ok else None),
                started=started, latency_s=time.perf_counter() - t0,
            )
        )
    return msg
