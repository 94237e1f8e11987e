"""The candidate: one junior's SQL draft plus what executing it showed.

CONTRACT shared by the graph (society/), the supervisor policies and the bandit
(training/bandit.py). Keep field names stable; add fields only with defaults.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Candidate(BaseModel):
    """One candidate SQL query drafted by a junior.

    Attributes:
        junior: the junior role instance that drafted it, e.g. ``"junior_direct"``.
        persona: the persona/strategy name, e.g. ``"direct"``, ``"step_by_step"``, ``"decompose"``.
        sql: the extracted SQL statement, or None when the model output held no usable SQL.
        raw: the raw model output (for SFT and inspection).
        ok: True when ``sql`` executed without error.
        error_category: executor error category (see ``tools.executor.ErrorCategory``) or None.
        error: the executor's error message, or None.
        row_count: rows returned (capped by the executor's row cap); 0 on error.
        columns: result column names.
        result_digest: order-insensitive hash of the result rows ("" on error); equal digests
            mean equal result multisets, used for agreement/majority vote.
        fixed: True when the junior rewrote its draft once after an execution error.
        llm_calls: model calls this junior made for this candidate.
    """

    junior: str
    persona: str
    sql: str | None = None
    raw: str = ""
    ok: bool = False
    error_category: str | None = None
    error: str | None = None
    row_count: int = 0
    columns: list[str] = Field(default_factory=list)
    result_digest: str = ""
    fixed: bool = False
    llm_calls: int = 0
