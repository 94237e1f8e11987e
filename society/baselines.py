"""Single-agent baselines on the same model and prompts as the society, for side-by-side EX.

* ``single``: one-shot -- the writer (``baselines.writer``, a junior role; default
  ``junior_direct``) drafts once; its SQL is the answer. One LLM call.
* ``write-check-rewrite``: the self-correction loop of Agent Lightning's Spider example
  (write -> execute -> check -> rewrite -> execute -> check ...), here the writer's draft followed
  by the senior refiner's execute/check/rewrite nodes with ``baselines.max_rewrites`` rewrites.

Both are LangGraph graphs over :class:`BaselineState`, run by ``society.run.run_society(...,
agent=...)`` so they produce the same :class:`society.run.SocietyRun` records, traces and metadata.

Role-level agents (:func:`build_role_graph`): one part of the society on its own, with the
society's own nodes, so that a training phase can be judged on the role it trains over many
questions at a fraction of a full society run's cost (``training.pipeline``):

* ``juniors``: every junior drafts (and may fix) its candidate, the supervisor picks one; the
  answer is the chosen candidate. No senior, no reviewers.
* ``senior``: the senior's first visit (execute -> check -> rewrite, ``max_rewrites`` times) on a
  given SQL (``run_society(..., given_sql=...)``, e.g. the chosen candidate of a ``juniors`` run);
  the answer is the SQL the senior hands on. No reviewers.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from society.candidate import Candidate
from society.config import ConfigError, SocietyConfig
from society.graph import build_junior_graph, final_answer, prepare
from society.roles import ROLE_TYPES, Junior, Senior, build_roles, failed
from society.state import ExecSummary, SocietyState, SupervisorChoice

#: Baseline agent names.
BASELINES = ("single", "write-check-rewrite")

#: Role-level agent names (see the module docstring).
ROLE_AGENTS = ("juniors", "senior")


class BaselineState(SocietyState, total=False):
    """The society state plus the writer's draft keys (see :class:`society.state.JuniorState`)."""

    messages: list[Any]
    draft_sql: str | None
    draft_raw: str
    exec: ExecSummary | None
    fixed: bool
    llm_calls: int


def _writer(config: SocietyConfig) -> Junior:
    name = config.baselines.writer
    insts = [i for i in config.instances("junior") if i.name == name or i.config.name == name]
    if not insts:
        raise ConfigError(f"baselines.writer {name!r} is not an enabled junior role; set it to one of "
                          f"{[i.name for i in config.instances('junior')]}")
    inst = insts[0]
    # the baseline writer drafts only (no execution feedback): that is what makes it one-shot
    inst = inst.model_copy(
        update={"config": inst.config.model_copy(update={"options": {**inst.config.options, "fix_on_error": False}})}
    )
    return Junior(inst)


def _refiner(config: SocietyConfig) -> Senior:
    name = config.baselines.refiner
    insts = [i for i in config.instances("senior") if i.name == name]
    if not insts:
        raise ConfigError(f"baselines.refiner {name!r} is not an enabled senior role")
    inst = insts[0]
    opts = {k: v for k, v in inst.config.options.items() if k != "max_turns"}  # the old name of max_rewrites
    opts = {**opts, "max_rewrites": config.baselines.max_rewrites, "check": config.baselines.check}
    return ROLE_TYPES[inst.type](inst.model_copy(update={"config": inst.config.model_copy(update={"options": opts})}))  # type: ignore[return-value]


def build_baseline_graph(config: SocietyConfig, agent: str) -> Any:
    """Compile the ``single`` or ``write-check-rewrite`` graph for ``config``.

    Raises:
        ValueError: unknown ``agent``; ConfigError: the writer/refiner role is missing.
    """
    if agent not in BASELINES:
        raise ValueError(f"unknown baseline {agent!r}; choose one of {BASELINES}")
    writer = _writer(config)
    senior = _refiner(config) if agent != "single" else None

    def finalize(state: BaselineState, config: RunnableConfig) -> dict:  # noqa: F811 - LangGraph injects by name
        if agent == "single":
            final, status = state.get("draft_sql"), "single"
        else:
            correct = state.get("senior_verdict") == "correct"
            final = state.get("current_sql") if correct else (state.get("best_sql") or state.get("current_sql"))
            status = "approved" if correct else ("converged" if Senior.converged(state) else "turn_limit")
        if failed(state):
            status = "failed"
        return {**final_answer(state, config, final, status, no_sql="no SQL in the model output"),
                "turn": rewrites(state)}

    g = StateGraph(BaselineState)
    g.add_node("prepare", prepare)
    g.add_node("write", writer.draft)
    g.add_node("finalize", finalize)
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "write")
    if agent == "single":
        g.add_edge("write", "finalize")
    else:
        assert senior is not None

        def handover(state: BaselineState) -> dict:
            return {"visits": ["handover"], "current_sql": state.get("draft_sql"), "senior_visit_rewrites": 0}

        g.add_node("handover", handover)
        g.add_node("senior_execute", senior.execute_node)
        g.add_node("senior_check", senior.check_node)
        g.add_node("senior_rewrite", senior.rewrite_node)
        g.add_conditional_edges("write", lambda s: "finalize" if failed(s) or not s.get("draft_sql") else "handover",
                                ["handover", "finalize"])
        g.add_edge("handover", "senior_execute")
        # AL's loop checks every query, including the last rewrite (the verdict picks the answer)
        g.add_edge("senior_execute", "senior_check")
        g.add_conditional_edges(
            "senior_check",
            lambda s: (
                "finalize" if failed(s) else ("senior_rewrite" if senior.after_check(s) == "rewrite" else "finalize")
            ),
            ["senior_rewrite", "finalize"],
        )
        # a rewrite that gives back the same SQL is a fixed point at temperature 0 (same check, same
        # rewrite again): stop there instead of spending the remaining turns
        g.add_conditional_edges(
            "senior_rewrite",
            lambda s: "finalize" if failed(s) or Senior.converged(s) else "senior_execute",
            ["senior_execute", "finalize"],
        )
    g.add_edge("finalize", END)
    return g.compile(name=agent)


def rewrites(state: dict) -> int:
    """The senior's rewrites in this run (the ``turn`` a baseline or role-level agent reports)."""
    return sum(1 for t in state.get("senior_turns") or [] if t.kind == "rewrite")


# ---------------------------------------------------------------------- role-level agents


class RoleState(SocietyState, total=False):
    """The society state plus ``given_sql``: the SQL the ``senior`` agent starts from."""

    given_sql: str | None


def _finalize_role(agent: str) -> Any:
    """The ``finalize`` node of a role-level agent: the answer is ``current_sql`` (the supervisor's
    pick for ``juniors``; what the senior hands on for ``senior``), executed once more."""

    def finalize(state: RoleState, config: RunnableConfig) -> dict:
        final = state.get("current_sql")
        status = "failed" if failed(state) or final is None else agent
        no_sql = "no SQL: no junior produced a usable candidate" if agent == "juniors" else "no SQL given"
        return {**final_answer(state, config, final, status, no_sql=no_sql), "turn": rewrites(state)}

    return finalize


def _handover(state: RoleState) -> dict:
    """Hand ``given_sql`` to the senior as if a supervisor had chosen it (policy ``given``)."""
    sql = state.get("given_sql")
    cand = Candidate(junior="given", persona="given", sql=sql)
    choice = SupervisorChoice(policy="given", candidates=[cand], index=0 if sql else -1, scores=[1.0])
    return {"visits": ["handover"], "choices": [choice], "chosen": cand if sql else None, "current_sql": sql,
            "current_exec": None, "senior_visit_rewrites": 0, "feedback": ""}


def build_role_graph(config: SocietyConfig, agent: str) -> Any:
    """Compile the role-level ``juniors`` or ``senior`` graph for ``config`` (module docstring).

    ``juniors``: ``prepare -> junior_<persona> (parallel subgraphs) -> supervisor -> finalize``.
    ``senior``: ``prepare -> handover -> senior_execute -> [senior_check -> senior_rewrite ->
    senior_execute]* -> finalize`` (the loop ends when the senior's ``max_rewrites`` are spent or
    its check says correct).

    Raises:
        ValueError: unknown ``agent``; ConfigError: the config has no junior / supervisor / senior.
    """
    if agent not in ROLE_AGENTS:
        raise ValueError(f"unknown role-level agent {agent!r}; choose one of {ROLE_AGENTS}")
    roles = build_roles(config)
    g = StateGraph(RoleState)
    g.add_node("prepare", prepare)
    g.add_node("finalize", _finalize_role(agent))
    g.add_edge(START, "prepare")
    if agent == "juniors":
        juniors: list[Junior] = roles["junior"]  # type: ignore[assignment]
        if not juniors or not roles["supervisor"]:
            raise ConfigError("the juniors agent needs at least one enabled junior and a supervisor role")
        for j in juniors:
            g.add_node(j.name, build_junior_graph(j))
            g.add_edge("prepare", j.name)
        g.add_node("supervisor", roles["supervisor"][0].node)  # type: ignore[attr-defined]
        g.add_edge([j.name for j in juniors], "supervisor")
        g.add_edge("supervisor", "finalize")
    else:
        if not roles["senior"]:
            raise ConfigError("the senior agent needs an enabled senior role")
        senior: Senior = roles["senior"][0]  # type: ignore[assignment]
        g.add_node("handover", _handover)
        g.add_node("senior_execute", senior.execute_node)
        g.add_node("senior_check", senior.check_node)
        g.add_node("senior_rewrite", senior.rewrite_node)
        g.add_edge("prepare", "handover")
        g.add_conditional_edges("handover", lambda s: "senior_execute" if s.get("current_sql") else "finalize",
                                ["senior_execute", "finalize"])
        g.add_conditional_edges(
            "senior_execute",
            lambda s: "finalize" if failed(s) or not senior.needs_check(s) else "senior_check",
            ["senior_check", "finalize"],
        )
        g.add_conditional_edges(
            "senior_check",
            lambda s: "finalize" if failed(s) or senior.after_check(s) != "rewrite" else "senior_rewrite",
            ["senior_rewrite", "finalize"],
        )
        g.add_conditional_edges("senior_rewrite", lambda s: "finalize" if failed(s) else "senior_execute",
                                ["senior_execute", "finalize"])
    g.add_edge("finalize", END)
    return g.compile(name=agent)
