"""Prompt templates of the roles, by name.

A role's ``prompt:`` in the YAML config names one of :data:`PROMPTS` or gives an inline
``{system, user}``. Templates are ``str.format`` strings; the variables a role fills are:

* ``{question}`` the natural-language question; ``{schema}`` the prompt-ready schema text;
* ``{feedback}`` reviewer/checker feedback, already wrapped as a section ('' when none);
* ``{sql}`` / ``{execution}`` the query under review and its execution summary;
* ``{candidates}`` the numbered candidate list (supervisor).

A junior of a rationalization rollout (STaR) also sees the gold SQL in a delimited hint block
before its own user message (:func:`hint_block`); :func:`strip_hint` removes it again for SFT.

Prompts are deliberately short: every token costs about as much as a millisecond of
prompt processing for a 0.5B model on 2 CPU cores.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage


@dataclass(frozen=True)
class PromptTemplate:
    """A system + user message pair with ``{placeholders}``."""

    system: str
    user: str

    def variables(self) -> set[str]:
        """Placeholder names used by the template."""
        names: set[str] = set()
        for text in (self.system, self.user):
            names |= {f for _, f, _, _ in string.Formatter().parse(text) if f}
        return names

    def render(self, **values: Any) -> list[BaseMessage]:
        """The two chat messages with placeholders filled.

        Raises:
            KeyError: naming the placeholder that has no value and the values given.
        """
        missing = self.variables() - set(values)
        if missing:
            raise KeyError(f"prompt placeholders {sorted(missing)} have no value (given: {sorted(values)})")
        return [SystemMessage(self.system.format(**values)), HumanMessage(self.user.format(**values))]


#: One system message shared by every role: the schema comes first and is identical across the
#: calls of a question, so llama.cpp (and vLLM's prefix cache) reuse its KV cache instead of
#: re-reading the schema for each junior, the senior and the reviewers. Role instructions follow
#: in the user message.
SYSTEM = (
    "You are an expert on SQLite working in a team that answers questions about one database. "
    "Use only the tables and columns of this schema.\n\nSchema:\n{schema}"
)

PROMPTS: dict[str, PromptTemplate] = {
    # ---------------------------------------------------------------- juniors (one per persona)
    "junior_direct": PromptTemplate(
        system=SYSTEM,
        user="{feedback}Write one SQLite query that answers the question. "
        "Reply with the query in a ```sql code block and nothing else.\n\nQuestion: {question}",
    ),
    "junior_step_by_step": PromptTemplate(
        system=SYSTEM,
        # question first, then the format: Qwen2.5-Coder-0.5B kept the <reasoning>/<sql> format in 5 of 6
        # dev questions this way and in 0 of 6 with the format stated before the question
        user=(
            "{feedback}Question: {question}\n\nReply in two parts, nothing else:\n"
            "<reasoning>in one or two sentences: which tables, joins, filters and aggregates</reasoning>\n"
            "<sql>one SQLite query</sql>"
        ),
    ),
    "junior_decompose": PromptTemplate(
        system=SYSTEM,
        user=(
            "{feedback}Write one SQLite query that answers the question. First list the sub-questions (which table, "
            "which filter, which grouping or ordering), one short line each. Then compose them into one final query "
            "in a ```sql code block.\n\nQuestion: {question}"
        ),
    ),
    # the observation routed back to a junior after its draft failed (continues its own conversation)
    "junior_fix": PromptTemplate(
        system="",
        user="Running that query gave:\n{execution}\n"
        "Fix the query. Reply with the corrected query in a ```sql code block.",
    ),
    # ---------------------------------------------------------------- supervisor (policy: llm)
    "supervisor": PromptTemplate(
        system=SYSTEM,
        user=(
            "Question: {question}\n\nCandidate queries and what running them returned:\n{candidates}\n\n"
            "Which candidate answers the question best? Reply with its number only."
        ),
    ),
    # ---------------------------------------------------------------- senior refiner
    "senior_check": PromptTemplate(
        system=SYSTEM,
        user=(
            "Question: {question}\n\nQuery:\n```sql\n{sql}\n```\nExecution result:\n{execution}\n{feedback}\n"
            "Check the query: wrong tables or columns, missing joins, filters or grouping, wrong aggregates or "
            "ordering. List the problems in one or two short lines, then end with exactly one of: "
            "THE QUERY IS CORRECT. / THE QUERY IS INCORRECT."
        ),
    ),
    "senior_rewrite": PromptTemplate(
        system=SYSTEM,
        user=(
            "Question: {question}\n\nPrevious query:\n```sql\n{sql}\n```\nExecution result:\n{execution}\n{feedback}\n"
            "Rewrite the query so it answers the question and fixes these problems. Reply with the corrected query "
            "in a ```sql code block."
        ),
    ),
    # ---------------------------------------------------------------- semantic reviewer
    "reviewer_semantic": PromptTemplate(
        system=SYSTEM,
        user=(
            "Question: {question}\n\nQuery:\n```sql\n{sql}\n```\nExecution result:\n{execution}\n\n"
            "Does the query answer the question? Reply in exactly this format:\n"
            "VERDICT: APPROVE or REVISE\n"
            "SEVERITY: MINOR, MAJOR or CRITICAL (only with REVISE; CRITICAL = start again from scratch)\n"
            "FEEDBACK: one sentence"
        ),
    ),
}

#: Default prompt name per junior persona.
PERSONA_PROMPTS: dict[str, str] = {
    "direct": "junior_direct",
    "step_by_step": "junior_step_by_step",
    "decompose": "junior_decompose",
}


def get_prompt(spec: str | Any | None, default: str) -> PromptTemplate:
    """Resolve a role's ``prompt:`` value: a name of :data:`PROMPTS`, an inline object with
    ``system``/``user``, or None for ``default``.

    Raises:
        KeyError: an unknown prompt name (lists the known ones).
    """
    if spec is None:
        spec = default
    if isinstance(spec, str):
        if spec not in PROMPTS:
            raise KeyError(f"unknown prompt {spec!r}; known prompts: {sorted(PROMPTS)}")
        return PROMPTS[spec]
    return PromptTemplate(system=spec.system, user=spec.user)


def feedback_section(feedback: str | None, title: str = "Feedback") -> str:
    """``"<title>: <feedback>\\n\\n"`` or '' when there is no feedback (keeps prompts short)."""
    feedback = (feedback or "").strip()
    return f"{title}: {feedback}\n\n" if feedback else ""


# ---------------------------------------------------------------- rationalization hints (STaR)

#: The delimiters of the gold-SQL hint block a junior is shown in a rationalization rollout.
HINT_OPEN = "<hint>"
HINT_CLOSE = "</hint>"
#: The hint block, put before the junior's own user message (so removing it leaves exactly the
#: message the junior sees without a hint). ``{sql}`` is the gold query, on one line.
JUNIOR_HINT = (
    HINT_OPEN + "\nA correct query for this question is: {sql}\n"
    "Write your answer in your usual format, as if you had found it yourself; do not mention this hint.\n"
    + HINT_CLOSE + "\n\n"
)
#: Phrases of the hint block that must not remain in a conversation once the block is removed
#: (checked by ``training.adapter`` before a rationalized conversation enters SFT).
HINT_PHRASES: tuple[str, ...] = (HINT_OPEN, HINT_CLOSE, "A correct query for this question is",
                                 "as if you had found it yourself", "do not mention this hint")


def hint_block(sql: str) -> str:
    """The delimited gold-SQL hint of a rationalization rollout (STaR, Zelikman et al. 2022, section
    3.2: the answer is given as a hint and the model writes its own rationale for it).

    Args:
        sql: the gold query; newlines are folded into spaces so the block stays three lines.

    Returns:
        :data:`JUNIOR_HINT` with the query filled in, ending in a blank line.

    Raises:
        ValueError: ``sql`` is empty.
    """
    one_line = " ".join(str(sql or "").split())
    if not one_line:
        raise ValueError("hint_block needs the gold SQL; got an empty query")
    return JUNIOR_HINT.format(sql=one_line)


def strip_hint(text: str) -> str:
    """``text`` with every hint block (from :data:`HINT_OPEN` to :data:`HINT_CLOSE` and the blank
    line after it) removed; unchanged when it holds none. An opening delimiter without its closing
    one is removed with everything after it (a cut-off block must not leave half a hint).

    The inverse of putting :func:`hint_block` before a message: ``strip_hint(hint_block(g) + m) == m``.
    """
    out, rest = [], text
    while HINT_OPEN in rest:
        before, _, after = rest.partition(HINT_OPEN)
        out.append(before)
        if HINT_CLOSE not in after:
            rest = ""
            break
        rest = after.partition(HINT_CLOSE)[2]
        rest = rest[2:] if rest.startswith("\n\n") else rest.lstrip("\n")
    return "".join(out) + rest


def hint_remnants(text: str) -> list[str]:
    """The :data:`HINT_PHRASES` found in ``text`` (case-insensitive), in that order; [] when none."""
    low = text.lower()
    return [p for p in HINT_PHRASES if p.lower() in low]
