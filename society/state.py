"""The typed state the society graph passes between nodes, and the records it keeps.

The graph state (:class:`SocietyState`) is a ``TypedDict`` as in the LangGraph
examples; list-valued keys that several nodes (or the parallel juniors) write carry
a reducer in ``Annotated[...]`` so writes append instead of overwrite. The records
kept in it are pydantic models so a finished state serialises to JSON for the run
directory and for the trainer's per-role credit:

* juniors -> ``candidates`` (:class:`society.candidate.Candidate`, one per junior per round)
* supervisor -> ``choices`` (:class:`SupervisorChoice`: what it saw, what it chose, with which policy)
* senior -> ``senior_turns`` (:class:`SeniorTurn`: SQL before/after each check/rewrite)
* reviewers -> ``reviews`` (:class:`Review`: verdict, severity, feedback)
"""

from __future__ import annotations

import operator
from enum import Enum
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, Field

from society.candidate import Candidate


class Verdict(str, Enum):
    """A reviewer's decision."""

    APPROVE = "APPROVE"
    REVISE = "REVISE"


class Severity(str, Enum):
    """How bad a REVISE is, and so where the graph goes next.

    MINOR and MAJOR go back to the senior (fix the chosen query); CRITICAL goes back
    to the juniors (draft again from scratch). Ordered: ``rank`` MINOR=1 < MAJOR=2 < CRITICAL=3.
    """

    MINOR = "MINOR"
    MAJOR = "MAJOR"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return {"MINOR": 1, "MAJOR": 2, "CRITICAL": 3}[self.value]


class ExecSummary(BaseModel):
    """What executing one SQL statement showed (a compact, JSON-able view of the executor's result).

    Attributes:
        sql: the statement executed ('' when there was none).
        ok: True when it ran without error.
        columns: result column names.
        rows: the first ``preview`` rows (lists of JSON-able values).
        row_count: rows returned (capped by the executor's ``max_rows``).
        truncated: True when the executor cut the result at ``max_rows``.
        digest: order-insensitive hash of all returned rows ("" on error).
        error_category: executor error category (``tools.sql_results.ErrorCategory`` value) or None.
        error: the error message, or None.
        elapsed_ms: execution wall time in milliseconds.
        hint: what the schema says about a name the query used and the database lacks
            (:func:`tools.error_hints.name_hint`; only with ``execution.error_hints``), or None.
    """

    sql: str = ""
    ok: bool = False
    columns: list[str] = Field(default_factory=list)
    rows: list[list[Any]] = Field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    digest: str = ""
    error_category: str | None = None
    error: str | None = None
    elapsed_ms: float = 0.0
    hint: str | None = None

    def as_text(self, max_rows: int = 5, max_chars: int = 600) -> str:
        """A short text for prompts: the error, or the columns and first rows, e.g.
        ``"3 rows; columns: name, age\\n('Joe', 52)\\n..."``; at most ``max_chars`` characters (an
        error is given whole, with its schema hint on a second line when there is one)."""
        if not self.sql:
            return "no SQL to execute"
        if not self.ok:
            return f"ERROR ({self.error_category}): {self.error}" + (f"\n{self.hint}" if self.hint else "")
        head = f"{self.row_count}{'+' if self.truncated else ''} rows; columns: {', '.join(self.columns)}"
        lines = [head] + [str(tuple(r)) for r in self.rows[:max_rows]]
        if self.row_count > max_rows:
            lines.append("...")
        text = "\n".join(lines)
        return text if len(text) <= max_chars else text[: max_chars - 15] + "\n...(truncated)"


class SupervisorChoice(BaseModel):
    """One supervisor decision.

    Attributes:
        round: the junior round (0 first, +1 after each CRITICAL review).
        policy: the policy's registry name (``llm``, ``majority_vote``, ``bandit``, ``first``, ``random``).
        candidates: the candidates it saw, in junior order.
        index: the chosen position in ``candidates`` (-1 when no candidate had SQL).
        scores: one score per candidate (policy-specific: vote share, probability, LLM pick 1/0).
        info: policy details (e.g. the LLM's raw reply, a fallback reason, the bandit's features).
    """

    round: int = 0
    policy: str
    candidates: list[Candidate] = Field(default_factory=list)
    index: int = -1
    scores: list[float] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)

    @property
    def chosen(self) -> Candidate | None:
        """The chosen candidate, or None when ``index`` is -1."""
        return self.candidates[self.index] if 0 <= self.index < len(self.candidates) else None


class SeniorTurn(BaseModel):
    """One step of the senior's write -> execute -> check -> rewrite loop.

    Attributes:
        kind: ``check`` (verdict on the current SQL) or ``rewrite`` (a new SQL).
        sql_before: the SQL the step started from.
        sql_after: the SQL after the step (== ``sql_before`` for a check, or when a rewrite held no SQL).
        execution_before: the execution summary shown to the model.
        verdict: for a check, ``correct`` / ``incorrect``; for a rewrite, ``rewritten``, ``unchanged``
            (the same SQL came back) or ``no_sql``.
        feedback: the checker's or reviewer's feedback the step used.
        raw: the raw model output.
    """

    kind: Literal["check", "rewrite"]
    sql_before: str | None = None
    sql_after: str | None = None
    execution_before: ExecSummary | None = None
    verdict: str = ""
    feedback: str = ""
    raw: str = ""


class Review(BaseModel):
    """One reviewer's decision on the current SQL.

    Attributes:
        reviewer: the reviewer role instance, e.g. ``reviewer_execution``.
        kind: ``execution`` (deterministic) or ``semantic`` (LLM).
        turn: the global turn it belongs to (1-based).
        sql: the SQL reviewed.
        verdict: APPROVE or REVISE.
        severity: for REVISE, how bad (routes the graph); None for APPROVE.
        feedback: what to fix (fed to the senior or the juniors).
        raw: the LLM's raw output ('' for the execution reviewer).
    """

    reviewer: str
    kind: str
    turn: int
    sql: str | None = None
    verdict: Verdict
    severity: Severity | None = None
    feedback: str = ""
    raw: str = ""


class SocietyState(TypedDict, total=False):
    """The graph state. Inputs are set by :func:`society.run.run_society`; nodes fill the rest.

    Inputs:
        question, question_id, db_id, db_path: the task.
        schema_text: prompt-ready schema of the database (filled by ``prepare``).
    Juniors:
        junior_round: 0 for the first drafts, +1 after each CRITICAL review.
        junior_feedback: the CRITICAL review's feedback shown to the juniors on a new round.
        junior_hint: the gold SQL shown to every junior as a hint (a STaR rationalization rollout,
            ``run_society(..., junior_hint=...)``); absent or '' otherwise.
        candidates: this round's candidates (reducer appends; a new round overwrites it with
            ``langgraph.types.Overwrite([])``).
    Supervisor:
        choices: every supervisor decision (reducer appends).
        chosen: the candidate picked last.
    Senior:
        current_sql / current_exec: the SQL being refined and what executing it showed.
        senior_turns: every check/rewrite (reducer appends).
        senior_visit_rewrites: rewrites done in the current senior visit (bounded by the senior's max_rewrites).
        senior_verdict: the last check's verdict (``correct``/``incorrect``), routes the loop.
        feedback: reviewer feedback the senior must address next.
    Reviews:
        reviews: every review (reducer appends).
        turn: global turn counter (one per review round); the run ends at ``limits.max_review_rounds``.
        route: the review gate's decision: ``finalize``, ``senior`` or ``juniors``.
    Bookkeeping:
        visits: ordered node visits (reducer appends), e.g. ``["prepare", "junior:direct", ...]``.
        errors: non-fatal problems and failures, ``"<kind>: <role>: <message>"``; kind ``endpoint``
            (after retries) marks the question failed and ends the run.
        best_sql: the last SQL that executed OK (the answer at a turn limit; else the chosen candidate's).
        final_sql / final_exec: the answer; status ``approved`` / ``turn_limit`` / ``failed``; error text.
    """

    question: str
    question_id: str
    db_id: str
    db_path: str
    schema_text: str

    junior_round: int
    junior_feedback: str
    junior_hint: str
    candidates: Annotated[list[Candidate], operator.add]

    choices: Annotated[list[SupervisorChoice], operator.add]
    chosen: Candidate | None

    current_sql: str | None
    current_exec: ExecSummary | None
    senior_turns: Annotated[list[SeniorTurn], operator.add]
    senior_visit_rewrites: int
    senior_verdict: str
    feedback: str

    reviews: Annotated[list[Review], operator.add]
    turn: int
    route: str

    visits: Annotated[list[str], operator.add]
    errors: Annotated[list[str], operator.add]
    best_sql: str | None
    final_sql: str | None
    final_exec: ExecSummary | None
    status: str
    error: str | None


class JuniorState(TypedDict, total=False):
    """Private state of one junior's draft -> execute -> (fix -> execute) subgraph, sent by ``Send``.

    ``junior`` names the role instance (e.g. ``junior_direct``); ``messages`` holds the junior's
    own conversation (chat messages and tool results routed back to it); the subgraph's output is
    one :class:`~society.candidate.Candidate` appended to the parent's ``candidates``.
    """

    junior: str
    question: str
    question_id: str
    db_id: str
    db_path: str
    schema_text: str
    junior_round: int
    junior_feedback: str
    junior_hint: str
    messages: list[Any]
    draft_sql: str | None
    draft_raw: str
    exec: ExecSummary | None
    fixed: bool
    llm_calls: int
    candidates: Annotated[list[Candidate], operator.add]
    visits: Annotated[list[str], operator.add]
    errors: Annotated[list[str], operator.add]


class JuniorInput(TypedDict, total=False):
    """What the parent graph hands a junior subgraph (reducer keys excluded, so they start empty)."""

    question: str
    question_id: str
    db_id: str
    db_path: str
    schema_text: str
    junior_round: int
    junior_feedback: str
    junior_hint: str


class JuniorOutput(TypedDict, total=False):
    """What a junior subgraph hands back to the parent graph."""

    candidates: Annotated[list[Candidate], operator.add]
    visits: Annotated[list[str], operator.add]
    errors: Annotated[list[str], operator.add]
