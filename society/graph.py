"""The society as a LangGraph ``StateGraph``: state, nodes and edges in one place.

::

    START -> prepare ──┬─> junior_<persona> ─┐   (parallel; each a subgraph:
                       ├─> junior_<persona> ─┤    draft -> execute -> [fix -> execute] -> finish)
                       └─> junior_<persona> ─┘
                                 │ (waits for all)
                            supervisor ───────────────(no candidate)──> new_round / finalize
                                 │
                           senior_execute <───────────────┐
                                 │ (rewrites left?)       │
                           senior_check ──(incorrect)──> senior_rewrite
                                 │ (correct / no rewrites left)  ^
                          reviewer_execution                     │ MINOR / MAJOR
                                 │ (REVISE short-circuits)       │
                          reviewer_semantic                      │
                                 │                               │
                            review_gate ─────────────────────────┤
                                 │  APPROVE or turn limit        └ CRITICAL -> new_round -> juniors
                              finalize -> END

* State: :class:`society.state.SocietyState` (juniors: :class:`society.state.JuniorState`).
* Nodes: built from the role instances of the config (``society.roles``); node names are the
  role instance names (``junior_direct``, ``reviewer_semantic``) plus the fixed control nodes
  ``prepare``, ``supervisor``, ``senior_execute``, ``senior_check``, ``senior_rewrite``,
  ``review_gate``, ``new_round``, ``finalize``.
* When the senior rewrites: ``senior_check`` says incorrect -- with ``check: execution`` when one of
  the senior's ``options.trigger`` conditions holds (``society.roles.senior_triggers``: the query
  fails, returns no rows, the juniors' results disagree, or always; default: fails or no rows),
  with ``check: llm`` when the model says so (a failing query without asking).
* Edges: every conditional edge first checks for an endpoint failure (question failed ->
  ``finalize``); the global turn limit (``limits.max_review_rounds``) always ends at
  ``finalize`` with the best SQL so far (the last SQL that executed OK, else the chosen candidate).
  A MINOR/MAJOR review of a SQL the senior just gave back unchanged ends the run as ``converged``
  (at temperature 0 another turn would repeat the same rewrite and review).
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Overwrite

from society.config import SocietyConfig
from society.roles import (
    ENDPOINT_FAILURE,
    Junior,
    Reviewer,
    Role,
    Senior,
    Supervisor,
    build_roles,
    failed,
    run_context,
)
from society.state import JuniorInput, JuniorOutput, JuniorState, Severity, SocietyState, Verdict
from society.toolkit import call_tool, execute_summary, sql_db_schema


def build_junior_graph(junior: Junior) -> Any:
    """One junior's ReAct-style subgraph: draft -> execute -> (on error, once) fix -> execute -> finish."""
    g = StateGraph(JuniorState, input_schema=JuniorInput, output_schema=JuniorOutput)
    g.add_node("draft", junior.draft)
    g.add_node("execute", junior.execute_draft)
    g.add_node("fix", junior.fix)
    g.add_node("finish", junior.finish)
    g.add_edge(START, "draft")
    g.add_edge("draft", "execute")
    g.add_conditional_edges("execute", junior.after_execute, {"fix": "fix", "finish": "finish"})
    g.add_edge("fix", "execute")
    g.add_edge("finish", END)
    return g.compile(name=junior.name)


# ---------------------------------------------------------------------- control nodes


def prepare(state: SocietyState, config: RunnableConfig) -> dict:
    """Load the schema (``sql_db_schema`` tool) and start junior round 0."""
    ctx = run_context(config)
    msg = call_tool(
        sql_db_schema,
        {},
        config=config,
        role="society",
        label="society",
        node="prepare",
        log=ctx.log,
        metadata=ctx.meta(),
    )
    upd: dict[str, Any] = {"visits": ["prepare"], "junior_round": 0, "turn": 0, "junior_feedback": ""}
    if getattr(msg, "status", "success") == "error":
        upd["schema_text"] = "(schema unavailable)"
        upd["errors"] = [f"schema: prepare: {msg.content}"]
    else:
        upd["schema_text"] = str(msg.artifact if msg.artifact is not None else msg.content)
    return upd


def new_round(state: SocietyState, config: RunnableConfig) -> dict:
    """Start another junior round (after a CRITICAL review, or when no candidate had SQL)."""
    return {"visits": ["new_round"], "junior_round": state.get("junior_round", 0) + 1, "candidates": Overwrite([])}


def make_review_gate(cfg: SocietyConfig):
    """The node that turns this turn's reviews into a route (see the module docstring)."""

    def review_gate(state: SocietyState, config: RunnableConfig) -> dict:
        turn = state.get("turn", 0) + 1
        revs = [r for r in state.get("reviews") or [] if r.turn == turn and r.verdict is Verdict.REVISE]
        upd: dict[str, Any] = {"visits": ["review_gate"], "turn": turn}
        if not revs:
            return {**upd, "route": "finalize", "status": "approved"}
        if turn >= cfg.limits.max_review_rounds:
            return {**upd, "route": "finalize", "status": "turn_limit"}
        worst = max((r.severity or Severity.MINOR for r in revs), key=lambda s: s.rank)
        feedback = " ".join(r.feedback for r in revs if r.feedback)[:800]
        if worst is Severity.CRITICAL and state.get("junior_round", 0) + 1 < cfg.limits.max_junior_rounds:
            return {**upd, "route": "juniors", "junior_feedback": feedback}
        if Senior.converged(state) and any(r.raw.startswith("(same SQL") for r in revs):
            # the senior already answered this feedback with this SQL: another turn would repeat it
            return {**upd, "route": "finalize", "status": "converged"}
        return {**upd, "route": "senior", "feedback": feedback, "senior_visit_rewrites": 0}

    return review_gate


def finalize(state: SocietyState, config: RunnableConfig) -> dict:
    """Pick the answer: the approved SQL, else the best so far (last SQL that executed OK, else the
    chosen candidate's SQL); execute it once more for the result."""
    status = "failed" if failed(state) else (state.get("status") or "turn_limit")
    chosen = state.get("chosen")
    if status == "approved":
        final = state.get("current_sql")
    else:
        final = state.get("best_sql") or (chosen.sql if chosen else None)
    if final is None:
        status = "failed"
    return final_answer(state, config, final, status, no_sql="no SQL: no junior produced a usable candidate")


def final_answer(state: dict, config: RunnableConfig, final: str | None, status: str, *, no_sql: str) -> dict:
    """The ``finalize`` update every agent ends with: ``final`` executed once more for the result,
    ``status``, and the error -- the first endpoint failure (``endpoint: ...``), else ``no_sql``
    when there is no answer, else None."""
    ctx = run_context(config)
    ex = execute_summary(
        ctx.db_path, final, timeout_s=ctx.config.execution.timeout_s, max_rows=ctx.config.execution.max_rows
    )
    err = next((e for e in state.get("errors") or [] if e.startswith(ENDPOINT_FAILURE + ":")), None)
    if err is None and not final:
        err = no_sql
    return {"visits": ["finalize"], "final_sql": final, "final_exec": ex, "status": status, "error": err}


# ---------------------------------------------------------------------- the graph


def build_graph(config: SocietyConfig) -> Any:
    """Compile the society graph for ``config`` (roles, policies and prompts bound by the config;
    endpoints, database and callbacks come per run through the ``RunnableConfig``)."""
    roles = build_roles(config)
    juniors: list[Junior] = roles["junior"]  # type: ignore[assignment]
    supervisor: Supervisor = roles["supervisor"][0]  # type: ignore[assignment]
    senior: Senior = roles["senior"][0]  # type: ignore[assignment]
    reviewers: list[Reviewer] = roles["reviewer"]  # type: ignore[assignment]
    first_review = reviewers[0].name if reviewers else "review_gate"
    limits = config.limits

    g = StateGraph(SocietyState)

    # nodes
    g.add_node("prepare", prepare)
    for j in juniors:
        g.add_node(j.name, build_junior_graph(j))
    g.add_node("supervisor", supervisor.node)
    g.add_node("senior_execute", senior.execute_node)
    g.add_node("senior_check", senior.check_node)
    g.add_node("senior_rewrite", senior.rewrite_node)
    for r in reviewers:
        g.add_node(r.name, r.node)
    g.add_node("review_gate", make_review_gate(config))
    g.add_node("new_round", new_round)
    g.add_node("finalize", finalize)

    # juniors fan out from prepare / new_round and join at the supervisor
    g.add_edge(START, "prepare")
    for j in juniors:
        g.add_edge("prepare", j.name)
        g.add_edge("new_round", j.name)
    g.add_edge([j.name for j in juniors], "supervisor")

    def after_supervisor(state: SocietyState) -> str:
        if failed(state):
            return "finalize"
        if state.get("chosen") is None:
            return "new_round" if state.get("junior_round", 0) + 1 < limits.max_junior_rounds else "finalize"
        return "senior_execute"

    def after_senior_execute(state: SocietyState) -> str:
        if failed(state):
            return "finalize"
        return "senior_check" if senior.needs_check(state) else first_review

    def after_senior_check(state: SocietyState) -> str:
        if failed(state):
            return "finalize"
        return "senior_rewrite" if senior.after_check(state) == "rewrite" else first_review

    def after_senior_rewrite(state: SocietyState) -> str:
        return "finalize" if failed(state) else "senior_execute"

    g.add_conditional_edges("supervisor", after_supervisor, ["senior_execute", "new_round", "finalize"])
    g.add_conditional_edges("senior_execute", after_senior_execute, ["senior_check", first_review, "finalize"])
    g.add_conditional_edges("senior_check", after_senior_check, ["senior_rewrite", first_review, "finalize"])
    g.add_conditional_edges("senior_rewrite", after_senior_rewrite, ["senior_execute", "finalize"])

    # reviewers in config order; a REVISE short-circuits to the gate (saves the later LLM reviews)
    for i, r in enumerate(reviewers):
        nxt = reviewers[i + 1].name if i + 1 < len(reviewers) else "review_gate"

        def after_review(state: SocietyState, _r: Role = r, _nxt: str = nxt) -> str:
            if failed(state):
                return "finalize"
            last = next((x for x in reversed(state.get("reviews") or []) if x.reviewer == _r.name), None)
            return "review_gate" if last is not None and last.verdict is Verdict.REVISE else _nxt

        g.add_conditional_edges(r.name, after_review, sorted({nxt, "review_gate", "finalize"}))

    def after_gate(state: SocietyState) -> str:
        return {"juniors": "new_round", "senior": "senior_rewrite"}.get(state.get("route", ""), "finalize")

    g.add_conditional_edges("review_gate", after_gate, ["new_round", "senior_rewrite", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(name=f"society:{config.name}")
