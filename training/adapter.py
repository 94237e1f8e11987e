"""One trace adapter, four views of the same spans: SFT for the juniors, repair pairs and RL for the senior, a
bandit log for the supervisor.

:class:`HierarchicalTraceAdapter` is an Agent Lightning ``TraceAdapter``: ``adapt(spans)`` turns
the spans of one society rollout (as :class:`training.agent.SocietyAgent` leaves them in the
store) into a :class:`SocietyTrace`; the views work over many rollouts:

* :meth:`~HierarchicalTraceAdapter.to_sft` -- each junior's conversation (system, user,
  assistant draft, execution feedback, assistant fix...) whose *own* final SQL matched gold
  (per-junior credit: the society's reward orders and deduplicates, it never admits), as a Hugging
  Face ``datasets.Dataset`` with a ``messages`` column (TRL ``SFTTrainer``'s conversational
  format); :meth:`~HierarchicalTraceAdapter.select_sft` adds the counts of the phase-2 dataset card
  (per source and persona, and what the old reward-or-correct rule would have let in).
* :meth:`~HierarchicalTraceAdapter.to_rl` -- the senior's decision points (each ``senior_check``
  / ``senior_rewrite`` LLM call: prompt = question, schema, the chosen candidate, its execution
  feedback; response; reward) as Agent Lightning ``Triplet`` objects (what verl consumes) and
  as a prompt dataset for TRL ``GRPOTrainer`` (``prompt`` + ``gold_sql`` + ``db_path`` columns
  for an execution reward function).
* :meth:`~HierarchicalTraceAdapter.select_repair` -- the senior's warm-start data: each wrong query
  of the train rollouts (a logged senior input, or a junior's wrong candidate posed as the senior
  would see it) with a rewrite whose result matches gold by EX -- the senior's own reply first,
  then fresh draws, then STaR-style hinted draws with the hint removed -- as SFT conversations, and
  every case as a GRPO prompt.
* :meth:`~HierarchicalTraceAdapter.to_bandit` -- the supervisor's decision: context = the
  candidates with execution features, action = chosen index, reward = whether the chosen
  candidate matched gold, the logging propensity, and every candidate's own EX.

How spans map to roles: the LangChain chat-model spans carry ``langchain.metadata.role`` /
``role_instance`` / ``node`` (added by ``training.agent.named_langchain_handler``) and the prompt
messages as ``gen_ai.prompt`` (JSON) with the reply in ``gen_ai.completion``; the child
``openai.chat.completion`` span (``gen_ai.prompt.<i>.role/content``,
``gen_ai.completion.0.content``) is the fallback. Per-role credit comes from the
``role_outcomes`` annotation; candidates come from the ``society_run`` object span; the reward is
Agent Lightning's final reward span.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault(
    "LITELLM_LOCAL_MODEL_COST_MAP", "True"
)  # litellm (imported by agl) stalls on the network otherwise

import agentlightning as agl
from agentlightning.emitter import find_final_reward
from agentlightning.types import Span, Triplet

from evaluation.metrics.ex import execution_match
from evaluation.metrics.sql_text import extract_sql, normalize_sql
from evaluation.tracing.store import RolloutArchive
from evaluation.tracing.trace_records import indexed_messages
from society.candidate import candidate_context
from society.llm import cut_at_stop, message_dicts, restore_stop
from society.prompts import PROMPTS, PromptTemplate, hint_block, hint_remnants, strip_hint
from society.roles import SENIOR_TRIGGERS, repair_messages, senior_triggers
from society.toolkit import execute_summary
from tools.sampling import sample_examples
from tools.spider import recorded_database
from training.agent import (
    ATTR,
    KIND_ROLE_OUTCOMES,
    KIND_SOCIETY_RUN,
    LC_METADATA,
    LC_RUN_NAME,
    MISSED_SOURCES,
    SOURCES,
    rollout_source,
)
from training.gather_config import question_of

#: The span names the adapter reads (chat-model spans, their OpenAI children, annotations, objects);
#: reading a store skips the others (graph/node/tool spans), which are most of the bytes.
SPAN_NAMES = ("chat_model.llm", "openai.chat.completion", "agentlightning.annotation", "agentlightning.object")
#: Graph nodes of the senior whose LLM calls are RL decision points.
SENIOR_NODES = ("senior_check", "senior_rewrite")

#: The one SFT admission rule: a junior's conversation enters SFT only when its own final SQL
#: matched gold (``junior.<J>.ex == 1``). The rules that admitted on the society's reward
#: (``reward``, ``either``, ``both``) were removed (issue 20): they let wrong drafts be imitated.
SFT_RULE = "own_correct"
#: A word an assistant reply of a rationalized rollout must not contain (it would not read as unhinted).
_HINT_WORD = re.compile(r"\bhint", re.IGNORECASE)


def unhinted(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]] | None:
    """A conversation of a hinted (STaR rationalization) call as if no hint had been given: every
    hint block removed (:func:`society.prompts.strip_hint`); None when a trace of the hint remains
    (a :data:`society.prompts.HINT_PHRASES` phrase anywhere, or an assistant reply that mentions a
    hint), since it would not read as unhinted. The one rule for the juniors' rationalized SFT rows
    and the senior's hinted repairs.

    >>> from society.prompts import hint_block
    >>> unhinted([{"role": "user", "content": hint_block("SELECT 1") + "Q?"},
    ...           {"role": "assistant", "content": "SELECT 1"}])
    [{'role': 'user', 'content': 'Q?'}, {'role': 'assistant', 'content': 'SELECT 1'}]
    >>> unhinted([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "As the hint says: SELECT 1"}])
    """
    out = [{"role": str(m["role"]), "content": strip_hint(str(m["content"]))} for m in messages]
    if any(hint_remnants(m["content"]) or (m["role"] == "assistant" and _HINT_WORD.search(m["content"]))
           for m in out):
        return None
    return out


@dataclass(frozen=True)
class LLMCall:
    """One LLM call of one role, read from its chat-model span.

    Attributes:
        span_id, sequence_id: the span's identity and order in the rollout.
        role: ``junior``, ``supervisor``, ``senior`` or ``reviewer``.
        role_instance: e.g. ``junior_direct``, ``senior``.
        node: the graph node that made the call, e.g. ``draft``, ``fix``, ``senior_check``.
        label: the run name, e.g. ``junior:direct``.
        messages: the prompt as ``[{"role", "content"}]`` (OpenAI roles).
        response: the completion text ("" when the call failed).
        model: the served model name.
        prompt_tokens, completion_tokens: usage when the server reported it, else 0.
    """

    span_id: str
    sequence_id: int
    role: str
    role_instance: str
    node: str
    label: str
    messages: list[dict[str, str]]
    response: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def conversation(self) -> list[dict[str, str]]:
        """The prompt plus the reply as the final assistant message."""
        return [*self.messages, {"role": "assistant", "content": self.response}]


@dataclass
class SocietyTrace:
    """The structured view of one society rollout (what :meth:`HierarchicalTraceAdapter.adapt` returns).

    Attributes:
        rollout_id, attempt_id: Agent Lightning ids (from the spans).
        task_id: the task id (e.g. ``train-12``), or None when the rollout left no outcome span.
        reward: the rollout's final reward, or None.
        outcomes: the ``role_outcomes`` annotation with the ``sqlsociety.`` prefix stripped
            (``final.ex``, ``junior.<J>.ex``, ``supervisor.index``, ``senior.before_ex``, ...).
        run: the ``SocietyRun.to_record()`` dict of the ``society_run`` object span ({} if absent).
        llm_calls: every LLM call in span order.
        n_spans: spans given to ``adapt`` (from a store: only the :data:`SPAN_NAMES` ones).
    """

    rollout_id: str
    attempt_id: str
    task_id: str | None
    reward: float | None
    outcomes: dict[str, Any]
    run: dict[str, Any]
    llm_calls: list[LLMCall]
    n_spans: int

    def calls(self, *, role: str | None = None, role_instance: str | None = None,
              nodes: Sequence[str] | None = None) -> list[LLMCall]:
        """LLM calls filtered by role, role instance and/or graph nodes."""
        return [c for c in self.llm_calls
                if (role is None or c.role == role) and (role_instance is None or c.role_instance == role_instance)
                and (nodes is None or c.node in nodes)]


@dataclass(frozen=True)
class BanditSample:
    """One supervisor decision for an off-policy contextual bandit.

    Attributes:
        rollout_id, task_id, question: where it came from.
        candidates: per candidate (in the supervisor's order) ``junior``, ``persona``, ``sql``,
            ``executes`` (0/1), ``empty`` (0/1: executed, zero rows), ``row_count``,
            ``agreement`` (share of the *other* executed candidates with the same result, [0, 1]),
            ``error_category`` ("" when it ran), ``fixed`` (0/1), ``result_digest``.
        action: the chosen index (>= 0).
        reward: 1.0 if the chosen candidate matched gold (EX), else 0.0.
        candidate_rewards: each candidate's own EX (0/1): full-information feedback.
        propensity: probability the logging policy had of this action (1.0 when it did not explore).
        policy: the logging policy name.
        rollout_reward: the whole rollout's reward (after the senior), for reference.
    """

    rollout_id: str
    task_id: str
    question: str
    candidates: list[dict[str, Any]]
    action: int
    reward: float
    candidate_rewards: list[float]
    propensity: float
    policy: str
    rollout_reward: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SftSelection:
    """What :meth:`HierarchicalTraceAdapter.select_sft` returns: the SFT rows and their dataset card.

    Attributes:
        dataset: the ``datasets.Dataset`` of :meth:`HierarchicalTraceAdapter.to_sft`.
        summary: JSON-able counts (written to ``phases/2-sft/sft_selection.json`` by the pipeline):

            * ``rule``: ``own_correct``; ``ranking``: how the society's reward is used;
            * ``conversations``: junior conversations read; ``kept``: rows in ``dataset``;
            * ``own_sql_wrong``: left out because the junior's own SQL did not match gold;
            * ``duplicates``: left out as the same conversation as a better-ranked row;
            * ``hint_left``: rationalized conversations left out because a trace of the hint stayed
              after the block was removed (the reply mentions it);
            * ``old_rule``: ``{"rule": "either", "min_reward", "admitted",
              "admitted_with_wrong_own_sql"}`` -- what the removed rule (reward >= ``min_reward`` OR
              own SQL correct; rejection-sampling draws own SQL correct only) would have admitted,
              and how many of those had a wrong own SQL;
            * ``by_source``: source (:data:`training.agent.SOURCES`) -> persona ->
              ``{"conversations", "kept"}``.
    """

    dataset: Any
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RepairCase:
    """A wrong query the senior is asked to repair, from one train rollout.

    Attributes:
        task_id: the Spider question id (``train-12``; a rollout suffix such as ``/juniors`` dropped).
        origin: ``senior`` (the input of a logged ``senior_rewrite`` call: its exact prompt) or
            ``junior`` (a junior's wrong candidate, posed as :func:`society.roles.repair_messages`).
        sql: the wrong query (EX 0 against ``gold_sql``).
        prompt: the senior's rewrite messages (``[{"role", "content"}]``, no reply).
        triggers: the :data:`society.roles.SENIOR_TRIGGERS` conditions that hold for it (``always``
            left out), among the candidates of its junior round.
        gold_sql, db_path: the reference query and the database.
        own: the senior's logged replies to this prompt (``origin == "senior"``), in rollout order.
    """

    task_id: str
    origin: str
    sql: str
    prompt: list[dict[str, str]]
    triggers: list[str]
    gold_sql: str
    db_path: str
    own: list[str] = field(default_factory=list)


@dataclass
class RepairSelection:
    """What :meth:`HierarchicalTraceAdapter.select_repair` returns: the senior's repair conversations,
    the prompts they came from, and their dataset card.

    Attributes:
        dataset: ``datasets.Dataset``: ``messages`` (the senior's rewrite prompt + a reply whose SQL
            matches gold by EX), ``task_id``, ``origin`` (``senior`` / ``junior``), ``source``
            (``own``: a logged senior reply; ``sampled``: a fresh unhinted draw of the senior;
            ``hinted``: a draw with the gold SQL shown as a hint, hint removed), ``triggers``
            (comma-separated).
        prompts: every case as a GRPO prompt row (``prompt``, ``gold_sql``, ``db_path``,
            ``task_id``, ``node`` = ``senior_rewrite``, ``reward`` None) -- the
            ``HierarchicalTraceAdapter.to_rl`` columns.
        summary: JSON-able counts: ``cases`` (by ``origin`` and by trigger), ``kept`` (by
            ``source``), ``unsolved`` (no correct reply in any draw), ``hint_left`` (a correct
            hinted reply left out because a trace of the hint stayed), ``draws`` (sampler calls'
            completions, unhinted and hinted), ``k``.
    """

    dataset: Any
    prompts: Any
    summary: dict[str, Any] = field(default_factory=dict)


def trace_source(t: SocietyTrace) -> str:
    """The source of a rollout (:data:`training.agent.SOURCES`): its ``source`` outcome, else (stores
    written before that key) from its ``agent``, ``resample`` and ``rationalized`` outcomes."""
    src = t.outcomes.get("source")
    if src in SOURCES:
        return str(src)
    return rollout_source("juniors" if t.outcomes.get("agent") == "juniors" else "society",
                          resample=bool(t.outcomes.get("resample")), rationalized=bool(t.outcomes.get("rationalized")))


def draw_repair_cases(cases: Sequence[RepairCase], n: int, seed: int = 0) -> list[RepairCase]:
    """At most ``n`` of ``cases``: the ``senior`` cases first (the senior's logged inputs, the prompts
    it really sees: all of them, or a random draw of ``n`` when there are more), then the rest
    filled by a uniform random draw of the ``junior`` cases (:func:`tools.sampling.sample_examples`,
    ``seed``); returned in the order given.

    Raises:
        ValueError: ``n`` < 1.

    >>> c = [RepairCase(f"train-{i}", "junior" if i % 3 else "senior", "SELECT 1", [], [], "SELECT 2", "db")
    ...      for i in range(9)]
    >>> [x.task_id for x in draw_repair_cases(c, 5, seed=1)][:1], len(draw_repair_cases(c, 5, seed=1))
    (['train-0'], 5)
    >>> sum(x.origin == "senior" for x in draw_repair_cases(c, 5, seed=1))
    3
    >>> draw_repair_cases(c, 5, seed=1) == draw_repair_cases(c, 5, seed=1), len(draw_repair_cases(c, 99))
    (True, 9)
    """
    if n < 1:
        raise ValueError(f"a draw of repair cases needs n >= 1, got {n}")
    if n >= len(cases):
        return list(cases)
    senior = [i for i, c in enumerate(cases) if c.origin == "senior"]
    senior = sample_examples(senior, n, seed) if len(senior) > n else senior
    junior = [i for i, c in enumerate(cases) if c.origin != "senior"]
    keep = set(senior) | set(sample_examples(junior, n - len(senior), seed) if n > len(senior) else [])
    return [c for i, c in enumerate(cases) if i in keep]


@dataclass
class RLData:
    """The senior's decision points in the two shapes the RL trainers take.

    Attributes:
        triplets: Agent Lightning ``Triplet`` (prompt ``{"messages": [...]}``, response
            ``{"content": ...}``, reward, metadata with ``rollout_id``, ``task_id``, ``node``,
            ``before_ex``, ``after_ex``); verl's ``agent_match`` path consumes this shape.
        prompts: ``datasets.Dataset`` for TRL ``GRPOTrainer``: ``prompt`` (messages without the
            reply), ``gold_sql``, ``db_path``, ``task_id``, ``node``, ``reward`` (the logged one).
    """

    triplets: list[Triplet]
    prompts: Any


def _json(value: Any, default: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return default if value is None else value


class HierarchicalTraceAdapter(agl.TraceAdapter[SocietyTrace]):
    """Reads society rollouts from spans; builds the SFT, RL and bandit views.

    Args:
        outcome_prefix: attribute prefix of the project's spans (default ``sqlsociety``).

    ``adapt(spans)`` never raises for missing parts: a rollout without an outcome span gets
    ``task_id=None`` and empty ``outcomes`` (the views skip it).
    """

    def __init__(self, outcome_prefix: str = ATTR) -> None:
        self.prefix = outcome_prefix

    # ----------------------------------------------------------------- one rollout

    def adapt(self, source: Sequence[Span], /) -> SocietyTrace:
        """Structure one rollout's spans (any order; ``sequence_id`` sorts them)."""
        spans = sorted(source, key=lambda s: s.sequence_id)
        if not spans:
            return SocietyTrace("", "", None, None, {}, {}, [], 0)
        children: dict[str | None, list[Span]] = {}
        for s in spans:
            children.setdefault(s.parent_id, []).append(s)
        outcomes: dict[str, Any] = {}
        run: dict[str, Any] = {}
        calls: list[LLMCall] = []
        pre = self.prefix + "."
        for s in spans:
            a = s.attributes
            kind = a.get(f"{self.prefix}.kind")
            if kind == KIND_ROLE_OUTCOMES:
                outcomes = {k[len(pre):]: v for k, v in a.items() if k.startswith(pre)}
            elif kind == KIND_SOCIETY_RUN:
                run = _json(a.get("agentlightning.object.json"), {}) or {}
            elif s.name == "chat_model.llm" or (a.get(f"{LC_METADATA}.role_instance") and "gen_ai.request.model" in a):
                calls.append(self._llm_call(s, children.get(s.span_id, [])))
        reward = find_final_reward(spans)
        task_id = outcomes.get("task_id") or run.get("question_id") or None
        return SocietyTrace(
            rollout_id=spans[0].rollout_id, attempt_id=spans[0].attempt_id, task_id=task_id,
            reward=None if reward is None else float(reward), outcomes=outcomes, run=run, llm_calls=calls,
            n_spans=len(spans),
        )

    @staticmethod
    def _llm_call(span: Span, kids: Sequence[Span]) -> LLMCall:
        a = span.attributes
        messages = _json(a.get("gen_ai.prompt"), [])
        completion = _json(a.get("gen_ai.completion"), [])
        response = completion[0] if isinstance(completion, list) and completion else (
            completion if isinstance(completion, str) else "")
        openai_span = next((k for k in kids if k.name.startswith("openai.")), None)
        if openai_span is not None:
            oa = openai_span.attributes
            if not messages:
                messages = indexed_messages(oa, "gen_ai.prompt", default_role="user")
            if not response:
                response = str(oa.get("gen_ai.completion.0.content", ""))
            usage_in = int(oa.get("gen_ai.usage.prompt_tokens", 0) or 0)
            usage_out = int(oa.get("gen_ai.usage.completion_tokens", 0) or 0)
        else:
            usage_in = int(a.get("gen_ai.usage.prompt_tokens", 0) or 0)
            usage_out = int(a.get("gen_ai.usage.completion_tokens", 0) or 0)
        return LLMCall(
            span_id=span.span_id, sequence_id=span.sequence_id,
            role=str(a.get(f"{LC_METADATA}.role", "")), role_instance=str(a.get(f"{LC_METADATA}.role_instance", "")),
            node=str(a.get(f"{LC_METADATA}.node", "")), label=str(a.get(LC_RUN_NAME, "")),
            messages=[{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in messages
                      if isinstance(m, Mapping)],
            response=str(response), model=str(a.get("gen_ai.request.model", "")),
            prompt_tokens=usage_in, completion_tokens=usage_out,
        )

    # ----------------------------------------------------------------- many rollouts

    def traces(self, source: Any, *, status: str | Sequence[str] = "succeeded") -> Iterator[SocietyTrace]:
        """Adapted rollouts from a :class:`evaluation.tracing.store.RolloutArchive` (rollouts with ``status``),
        a path to a store file, or an iterable of span lists / already-adapted traces."""
        if isinstance(source, (str, Path)):
            with RolloutArchive(source) as arc:
                yield from self.traces(arc, status=status)
            return
        if isinstance(source, RolloutArchive):
            for _, spans in source.iter_spans(status=status, names=SPAN_NAMES):
                yield self.adapt(spans)
            return
        for item in source:
            yield item if isinstance(item, SocietyTrace) else self.adapt(item)

    def to_sft(self, source: Any, *, min_reward: float = 0.5, roles: Sequence[str] = ("junior",)) -> Any:
        """The juniors' conversations worth imitating, as a ``datasets.Dataset`` (the ``dataset`` of
        :meth:`select_sft`; see there for the rule, the arguments and the columns)."""
        return self.select_sft(source, min_reward=min_reward, roles=roles).dataset

    def select_sft(self, source: Any, *, min_reward: float = 0.5, roles: Sequence[str] = ("junior",)) -> SftSelection:
        """The juniors' conversations worth imitating, with the counts of their dataset card.

        Per-junior credit: a junior's conversation -- its last LLM call's prompt plus reply, so a
        draft, the execution feedback and the fix form one conversation -- is kept only when that
        junior's own final SQL matched gold by EX (``junior.<J>.ex == 1``), in every kind of rollout
        (society, juniors-only, rejection-sampling draw, rationalization). The society's reward
        never admits a conversation: it only ranks the kept ones (highest first, ties in rollout
        and junior order; None last), and of two identical conversations the better-ranked one is
        kept. A rationalization rollout's conversation loses its hint block
        (:func:`society.prompts.strip_hint`), so it reads as if no hint had been given; one in which
        a trace of the hint remains (a reply that mentions it) is left out. STaR: Zelikman et al.
        2022, "STaR: Bootstrapping Reasoning With Reasoning" (rejection sampling, section 3.1;
        rationalization, section 3.2).

        Args:
            source: see :meth:`traces`.
            min_reward: the threshold of the removed ``either`` rule, used only to count what it
                would have admitted with a wrong own SQL (``summary["old_rule"]``).
            roles: the roles whose conversations are read (``junior``).

        Returns:
            :class:`SftSelection`. Columns of its dataset: ``messages`` (list of ``{"role",
            "content"}``), ``rollout_id``, ``task_id``, ``role_instance``, ``persona``, ``reward``
            (the rollout's, may be None), ``own_ex`` (always 1), ``source`` (one of
            :data:`training.agent.SOURCES`).
        """
        import datasets

        cand: list[tuple[float, int, dict[str, Any]]] = []
        by_source: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SOURCES}
        n_read = n_wrong = n_hint = old_admitted = old_wrong = 0
        for order, t in enumerate(self.traces(source)):
            if t.task_id is None:
                continue
            src = trace_source(t)
            last: dict[str, LLMCall] = {}
            for c in t.llm_calls:
                if c.role in roles and c.response:
                    last[c.role_instance] = c
            for inst, call in last.items():
                own = t.outcomes.get(f"junior.{inst}.ex")
                own_ok = own == 1
                persona = str(t.outcomes.get(f"junior.{inst}.persona", ""))
                counts = by_source[src].setdefault(persona, {"conversations": 0, "kept": 0})
                counts["conversations"] += 1
                n_read += 1
                # the removed rule: reward >= min_reward OR own correct (its draws: own correct only)
                old = own_ok if src in MISSED_SOURCES else (
                    own_ok or (t.reward is not None and t.reward >= min_reward))
                old_admitted += int(old)
                old_wrong += int(old and not own_ok)
                if not own_ok:
                    n_wrong += 1
                    continue
                messages = call.conversation()
                if src == "rationalized":
                    messages = unhinted(messages)
                    if messages is None:
                        n_hint += 1
                        continue
                rank = -t.reward if t.reward is not None else float("inf")
                cand.append((rank, order, {
                    "messages": messages, "rollout_id": t.rollout_id, "task_id": t.task_id, "role_instance": inst,
                    "persona": persona, "reward": t.reward, "own_ex": 1, "source": src,
                }))
        cand.sort(key=lambda x: (x[0], x[1]))  # stable: junior order within a rollout
        rows: dict[str, list[Any]] = {k: [] for k in _sft_features()}
        seen: set[str] = set()
        for _, _, row in cand:
            key = json.dumps(row["messages"], sort_keys=True, ensure_ascii=False)
            if key in seen:
                continue
            seen.add(key)
            by_source[row["source"]][row["persona"]]["kept"] += 1
            for k, v in row.items():
                rows[k].append(v)
        summary = {
            "rule": SFT_RULE,
            "ranking": "society reward, highest first; of identical conversations the highest-ranked is kept",
            "conversations": n_read, "kept": len(rows["messages"]), "own_sql_wrong": n_wrong,
            "duplicates": len(cand) - len(rows["messages"]), "hint_left": n_hint,
            "old_rule": {"rule": "either", "min_reward": min_reward, "admitted": old_admitted,
                         "admitted_with_wrong_own_sql": old_wrong},
            "by_source": by_source,
        }
        return SftSelection(datasets.Dataset.from_dict(rows, features=_sft_features()), summary)

    def repair_cases(self, source: Any, *, prompt: PromptTemplate | None = None,
                     max_cases: int | None = None, seed: int = 0) -> list[RepairCase]:
        """The wrong queries of the train rollouts, each posed to the senior as a repair.

        Read from every succeeded rollout but rationalization ones (their candidates were drafted
        with the gold SQL in view): the input of each logged ``senior_rewrite`` call whose query does
        not match gold (its prompt as logged, its reply kept in ``own``), then each junior candidate
        with SQL whose own EX is 0 (``junior.<J>.ex``), posed as a ``check: execution`` senior would
        pose it (:func:`society.roles.repair_messages`: the system message of that junior's call,
        which carries the same schema, and the query's execution re-run on the database). A query
        that matches gold is never a case, so a right -> right pair never becomes a repair target.
        One case per (question, query as :func:`evaluation.metrics.sql_text.normalize_sql`), the first met;
        a logged senior prompt wins over a junior's, and every logged reply to it is kept.

        Args:
            source: see :meth:`traces`.
            prompt: the senior's rewrite prompt (default ``PROMPTS["senior_rewrite"]``).
            max_cases: keep at most this many (:func:`draw_repair_cases`: the logged senior inputs
                first, then a random draw of the juniors' wrong candidates across the rollouts --
                the store holds them grouped by database, so its first ones would cover few); None = all.
            seed: the draw's seed.

        Returns:
            :class:`RepairCase` list, in reading order.
        """
        tmpl = prompt or PROMPTS["senior_rewrite"]
        ex_cache: dict[tuple[str, str, str], bool] = {}

        def right(db: str, sql: str | None, gold: str) -> bool:
            key = (db, sql or "", gold)
            if key not in ex_cache:
                ex_cache[key] = bool(sql) and execution_match(db, sql, gold).match
            return ex_cache[key]

        cases: dict[tuple[str, str], RepairCase] = {}
        for t in self.traces(source):
            if t.task_id is None or trace_source(t) == "rationalized":
                continue
            gold = str(t.outcomes.get("gold_sql") or "")
            db = _db_path(t)
            if not gold or not Path(db).is_file():
                continue
            base = question_of(t.task_id)
            choices = t.run.get("choices") or []
            cands = (choices[-1].get("candidates") if choices else None) or t.run.get("candidates") or []
            turns = [x for x in t.run.get("senior_turns") or [] if x.get("kind") == "rewrite"]
            for i, call in enumerate(t.calls(role="senior", nodes=("senior_rewrite",))):
                before = turns[i].get("sql_before") if i < len(turns) else _shown_sql(call.messages)
                if not before or right(db, before, gold):
                    continue
                key = (base, normalize_sql(before))
                case = cases.get(key)
                if case is None or case.origin != "senior":
                    ex = execute_summary(db, before)
                    case = RepairCase(base, "senior", before, [dict(m) for m in call.messages],
                                      _case_triggers(ex, cands), gold, db)
                    cases[key] = case
                if call.response:
                    case.own.append(call.response)
            systems = {c.role_instance: c.messages[0] for c in t.llm_calls
                       if c.role == "junior" and c.messages and c.messages[0]["role"] == "system"}
            for c in cands:
                sql, inst = c.get("sql"), str(c.get("junior") or "")
                if not sql or t.outcomes.get(f"junior.{inst}.ex") != 0 or inst not in systems:
                    continue
                key = (base, normalize_sql(sql))
                if key in cases:
                    continue
                ex = execute_summary(db, sql)
                user = message_dicts(repair_messages(tmpl, str(t.run.get("question", "")), "", ex))[-1]
                cases[key] = RepairCase(base, "junior", sql, [dict(systems[inst]), user], _case_triggers(ex, cands),
                                        gold, db)
        out = list(cases.values())
        return out if max_cases is None else draw_repair_cases(out, max_cases, seed)

    def select_repair(self, source: Any, *, sample: Any = None, k: int = 2, hints: bool = True,
                      stop: Sequence[str] | None = None, prompt: PromptTemplate | None = None,
                      max_cases: int | None = None, seed: int = 0) -> RepairSelection:
        """The senior's repair conversations: for each :meth:`repair_cases` case, a reply whose SQL
        matches gold by EX (:func:`evaluation.metrics.ex.execution_match`), found in this order:

        1. ``own``: the senior's first logged reply to that prompt that matches gold;
        2. ``sampled``: else, with ``sample``, the first of ``k`` fresh unhinted draws that matches
           (rejection sampling, STaR section 3.1);
        3. ``hinted``: else, with ``sample`` and ``hints``, the first of ``k`` draws on the prompt
           with the gold SQL put before the last user message (:func:`society.prompts.hint_block`,
           as the juniors' rationalization does) that matches, its conversation taken without the
           hint (:func:`unhinted`; left out, as ``hint_left``, when a trace of the hint stays) --
           STaR rationalization, Zelikman et al. 2022, section 3.2.

        A case with none stays out of the dataset (``unsolved``) but is still a GRPO prompt.
        Replies are read as the society reads the served senior's: cut at the first of ``stop`` with
        the closing marker put back (:func:`society.llm.restore_stop`).

        Args:
            source: see :meth:`traces`.
            sample: ``sample(prompt, k) -> list[str]`` (:func:`training.senior_reward.openai_sampler` on the
                served senior); None: logged replies only.
            k: draws per case and per kind (unhinted, hinted), >= 1.
            hints: try hinted draws where no unhinted one matched.
            stop: the senior's stop strings.
            prompt, max_cases, seed: see :meth:`repair_cases`.

        Returns:
            :class:`RepairSelection`.

        Raises:
            ValueError: ``k`` < 1.
        """
        import datasets

        if k < 1:
            raise ValueError(f"select_repair needs k >= 1 draws per case, got {k}")
        cases = self.repair_cases(source, prompt=prompt, max_cases=max_cases, seed=seed)
        rows: dict[str, list[Any]] = {c: [] for c in ("messages", "task_id", "origin", "source", "triggers")}
        kept = {"own": 0, "sampled": 0, "hinted": 0}
        draws = {"unhinted": 0, "hinted": 0}
        unsolved = hint_left = 0

        def read(text: str) -> str:
            return restore_stop(cut_at_stop(text, stop), stop, "stop") if stop else text

        def matches(case: RepairCase, text: str) -> bool:
            return execution_match(case.db_path, extract_sql(text), case.gold_sql).match

        for case in cases:
            found: tuple[str, list[dict[str, str]]] | None = None
            for text in case.own:
                if matches(case, read(text)):
                    found = ("own", [*case.prompt, {"role": "assistant", "content": read(text)}])
                    break
            if found is None and sample is not None:
                texts = [read(x) for x in sample(case.prompt, k)]
                draws["unhinted"] += len(texts)
                hit = next((x for x in texts if matches(case, x)), None)
                if hit is not None:
                    found = ("sampled", [*case.prompt, {"role": "assistant", "content": hit}])
            if found is None and sample is not None and hints:
                hinted = [*case.prompt[:-1], {"role": case.prompt[-1]["role"],
                                              "content": hint_block(case.gold_sql) + case.prompt[-1]["content"]}]
                texts = [read(x) for x in sample(hinted, k)]
                draws["hinted"] += len(texts)
                hits = [x for x in texts if matches(case, x)]
                clean = next((m for m in (unhinted([*hinted, {"role": "assistant", "content": x}]) for x in hits)
                              if m is not None), None)
                if clean is not None:
                    found = ("hinted", clean)
                elif hits:
                    hint_left += 1
            if found is None:
                unsolved += 1
                continue
            kept[found[0]] += 1
            for col, v in (("messages", found[1]), ("task_id", case.task_id), ("origin", case.origin),
                           ("source", found[0]), ("triggers", ",".join(case.triggers))):
                rows[col].append(v)
        by_trigger = {tr: sum(tr in c.triggers for c in cases) for tr in SENIOR_TRIGGERS if tr != "always"}
        summary = {
            "cases": {"total": len(cases), "senior": sum(c.origin == "senior" for c in cases),
                      "junior": sum(c.origin == "junior" for c in cases), "by_trigger": by_trigger,
                      "no_trigger": sum(not c.triggers for c in cases)},
            "kept": {"total": len(rows["messages"]), **kept},
            "unsolved": unsolved, "hint_left": hint_left, "draws": draws, "k": k,
        }
        msg = {"role": datasets.Value("string"), "content": datasets.Value("string")}
        feats = datasets.Features({"messages": datasets.List(msg), "task_id": datasets.Value("string"),
                                   "origin": datasets.Value("string"), "source": datasets.Value("string"),
                                   "triggers": datasets.Value("string")})
        prompts = {"prompt": [c.prompt for c in cases], "gold_sql": [c.gold_sql for c in cases],
                   "db_path": [c.db_path for c in cases], "task_id": [c.task_id for c in cases],
                   "node": ["senior_rewrite"] * len(cases), "reward": [None] * len(cases)}
        return RepairSelection(datasets.Dataset.from_dict(rows, features=feats),
                               datasets.Dataset.from_dict(prompts, features=_rl_features()), summary)

    def to_rl(self, source: Any, *, reward: Literal["rollout", "senior_gain"] = "rollout") -> RLData:
        """The senior's decision points as verl-style triplets and a TRL GRPO prompt dataset.

        Args:
            source: see :meth:`traces`.
            reward: ``rollout``: the rollout's reward; ``senior_gain``: the senior's own credit,
                ``after_ex - before_ex`` in {-1, 0, 1} (did its check/rewrite turn a wrong
                candidate right, or a right one wrong).

        Raises:
            ValueError: unknown ``reward``.
        """
        import datasets

        if reward not in ("rollout", "senior_gain"):
            raise ValueError(f"reward={reward!r}; use 'rollout' or 'senior_gain'")
        triplets: list[Triplet] = []
        cols: dict[str, list[Any]] = {k: [] for k in ("prompt", "gold_sql", "db_path", "task_id", "node", "reward")}
        for t in self.traces(source):
            if t.task_id is None:
                continue
            before, after = t.outcomes.get("senior.before_ex"), t.outcomes.get("senior.after_ex")
            if reward == "senior_gain":
                if before is None or after is None:
                    continue
                value: float | None = float(after) - float(before)
            else:
                value = t.reward
            for c in t.calls(role="senior", nodes=SENIOR_NODES):
                meta = {"rollout_id": t.rollout_id, "task_id": t.task_id, "node": c.node, "span_id": c.span_id,
                        "before_ex": before, "after_ex": after, "model": c.model}
                triplets.append(Triplet(prompt={"messages": c.messages}, response={"content": c.response},
                                        reward=value, metadata=meta))
                cols["prompt"].append(c.messages)
                cols["gold_sql"].append(str(t.outcomes.get("gold_sql", "")))
                cols["db_path"].append(_db_path(t))
                cols["task_id"].append(t.task_id)
                cols["node"].append(c.node)
                cols["reward"].append(value)
        return RLData(triplets=triplets, prompts=datasets.Dataset.from_dict(cols, features=_rl_features()))

    def to_bandit(self, source: Any) -> list[BanditSample]:
        """The supervisor's last decision of every rollout that had at least one usable candidate.

        Rationalization rollouts are left out: their juniors saw the gold SQL, so their candidates
        are not what the supervisor faces."""
        out: list[BanditSample] = []
        for t in self.traces(source):
            choices = t.run.get("choices") or []
            if t.task_id is None or not choices or trace_source(t) == "rationalized":
                continue
            ch = choices[-1]
            action = int(ch.get("index", -1))
            cands = ch.get("candidates") or []
            if action < 0 or action >= len(cands):
                continue
            feats = candidate_features(cands)
            own = [float(t.outcomes.get(f"junior.{c.get('junior')}.ex", 0) or 0) for c in cands]
            info = ch.get("info") or {}
            out.append(BanditSample(
                rollout_id=t.rollout_id, task_id=t.task_id, question=str(t.run.get("question", "")),
                candidates=feats, action=action, reward=own[action], candidate_rewards=own,
                propensity=float(info.get("propensity", 1.0)), policy=str(ch.get("policy", "")),
                rollout_reward=t.reward,
            ))
        return out


def _shown_sql(messages: Sequence[Mapping[str, str]]) -> str | None:
    """The query a senior prompt shows (the first SQL block of its last user message)."""
    users = [m for m in messages if m.get("role") == "user"]
    return extract_sql(str(users[-1].get("content", ""))) if users else None


def _case_triggers(ex: Any, candidates: Sequence[Any]) -> list[str]:
    """The senior triggers but ``always`` that hold for a query (see :func:`society.roles.senior_triggers`)."""
    return senior_triggers(ex, candidates, [t for t in SENIOR_TRIGGERS if t != "always"])


def _db_path(t: SocietyTrace) -> str:
    """The rollout's database: the recorded path when it exists here, else ``db_id`` under the data dir."""
    return recorded_database(t.outcomes.get("db_path") or t.run.get("db_path"),
                             t.outcomes.get("db_id") or t.run.get("db_id"))


#: The execution features of each candidate: society's one definition (``agreement`` is the share of
#: the other executed candidates whose result digest equals this one's, 0 if it did not run).
candidate_features = candidate_context


def _sft_features() -> Any:
    import datasets

    msg = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Features({
        "messages": datasets.List(msg), "rollout_id": datasets.Value("string"), "task_id": datasets.Value("string"),
        "role_instance": datasets.Value("string"), "persona": datasets.Value("string"),
        "reward": datasets.Value("float64"), "own_ex": datasets.Value("int64"), "source": datasets.Value("string"),
    })


def _rl_features() -> Any:
    import datasets

    msg = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    return datasets.Features({
        "prompt": datasets.List(msg), "gold_sql": datasets.Value("string"), "db_path": datasets.Value("string"),
        "task_id": datasets.Value("string"), "node": datasets.Value("string"), "reward": datasets.Value("float64"),
    })


# --------------------------------------------------------------------------------------------
# Recorded traces (test fixtures, benchmarks)
# --------------------------------------------------------------------------------------------


def _open_text(path: str | Path, mode: str) -> Any:
    """Open a text file, gzip-compressed when the name ends in ``.gz``."""
    if str(path).endswith(".gz"):
        import gzip

        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def export_traces(archive: Any, path: str | Path, *, status: str | Sequence[str] = "succeeded",
                  limit: int | None = None) -> int:
    """Write rollouts and their spans as JSON lines (``{"rollout": {...}, "spans": [...]}``; gzip if ``path``
    ends in ``.gz``).

    Used to save real society rollouts as test fixtures. Returns the number of rollouts written.
    """
    n = 0
    with _open_text(path, "w") as f:
        for rec, spans in archive.iter_spans(status=status):
            if limit is not None and n >= limit:
                break
            row = {
                "rollout": {k: v for k, v in asdict(rec).items()},
                "spans": [s.model_dump(mode="json") for s in spans],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def load_traces(path: str | Path) -> list[tuple[dict[str, Any], list[Span]]]:
    """Read :func:`export_traces` output: ``(rollout dict, spans)`` per line.

    Raises:
        FileNotFoundError: no such file.
    """
    out = []
    with _open_text(path, "r") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append((row["rollout"], [Span.model_validate(s) for s in row["spans"]]))
    return out


__all__ = [
    "BanditSample",
    "HierarchicalTraceAdapter",
    "LLMCall",
    "RLData",
    "RepairCase",
    "RepairSelection",
    "SFT_RULE",
    "SftSelection",
    "SocietyTrace",
    "candidate_features",
    "draw_repair_cases",
    "export_traces",
    "load_traces",
    "trace_source",
    "unhinted",
]
