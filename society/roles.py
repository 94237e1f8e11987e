"""Role types and their node functions; the registry :data:`ROLE_TYPES` maps a config ``type:``
to the class that builds the role's nodes.

A role type is one class: subclass :class:`Role` (or :class:`Junior` / :class:`Reviewer`), set
``type_name`` and ``kind`` (``junior``, ``supervisor``, ``senior`` or ``reviewer`` -- where the graph
puts it), optionally an ``Options`` pydantic model for its ``options:`` in the YAML, and decorate it
with :func:`register`. ``society.graph`` wires the roles by kind, so e.g. a new reviewer type joins
the review chain without touching the graph.

Every LLM call goes through :meth:`Role.llm` (retries, run name, tags, metadata, accounting), every
execution through :meth:`Role.execute` (the ``sql_db_query`` tool). Node functions take the graph
state and the node's ``RunnableConfig`` and return a partial state update; the per-run
:class:`RunContext` travels in ``config["configurable"]["society"]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evaluation.metrics.sql_text import extract_sql, normalize_sql
from society.candidate import Candidate
from society.llm import CallLog, ChatModels, EndpointUnavailable, LLMError, invoke_llm
from society.policies import MajorityVotePolicy, PolicyContext, make_policy
from society.prompts import PERSONA_PROMPTS, PROMPTS, PromptTemplate, feedback_section, get_prompt, hint_block
from society.settings import Sampling, renamed_keys
from society.state import (
    ExecSummary,
    JuniorState,
    Review,
    SeniorTurn,
    Severity,
    SocietyState,
    SupervisorChoice,
    Verdict,
)
from society.toolkit import call_tool, sql_db_query, tools_for
from tools.examples import bank_for
from tools.spider import DataError

if TYPE_CHECKING:  # annotations only: society.config validates against ROLE_TYPES defined here
    from society.config import RoleInstance, SocietyConfig

#: Prefix of an ``errors`` entry that marks the question failed (endpoint down after retries).
ENDPOINT_FAILURE = "endpoint"


@dataclass
class RunContext:
    """Per-run resources, passed to nodes and tools as ``config["configurable"]["society"]``.

    Attributes:
        config: the society config.
        models: resolves model aliases to chat clients (with run-time endpoint overrides).
        db_path / db_id / question_id / run_id: the task and run identity (also put in metadata).
        log: the run's LLM/tool call log.
        metadata: extra metadata added to every LLM and tool run (e.g. the trainer's rollout id).
    """

    config: SocietyConfig
    models: ChatModels
    db_path: str
    db_id: str = ""
    question_id: str = ""
    run_id: str = ""
    log: CallLog = field(default_factory=CallLog)
    metadata: dict[str, Any] = field(default_factory=dict)

    def meta(self, **extra: Any) -> dict[str, Any]:
        """Metadata for one run: ``question_id``, ``db_id``, ``run_id``, the caller's metadata, ``extra``."""
        return {"question_id": self.question_id, "db_id": self.db_id, "run_id": self.run_id, **self.metadata, **extra}


def run_context(config: RunnableConfig | None) -> RunContext:
    """The :class:`RunContext` of the current run.

    Raises:
        RuntimeError: the graph was invoked without one (use ``society.run.run_society``).
    """
    ctx = ((config or {}).get("configurable") or {}).get("society")
    if not isinstance(ctx, RunContext):
        raise RuntimeError(
            "the society graph needs configurable['society'] = RunContext(...); call society.run.run_society"
        )
    return ctx


def failed(state: dict) -> bool:
    """True when an endpoint failure marked the question failed."""
    return any(str(e).startswith(ENDPOINT_FAILURE + ":") for e in state.get("errors") or [])


def _error_entry(role: str, exc: Exception) -> str:
    kind = ENDPOINT_FAILURE if isinstance(exc, EndpointUnavailable) else "llm"
    return f"{kind}: {role}: {exc}"


def _extract_sql(text: str | None) -> str | None:
    return extract_sql(text)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Role type name -> class.
ROLE_TYPES: dict[str, type[Role]] = {}


def register(cls: type[Role]) -> type[Role]:
    """Class decorator adding a role type to :data:`ROLE_TYPES` under ``cls.type_name``."""
    if not cls.type_name or cls.kind not in {"junior", "supervisor", "senior", "reviewer"}:
        raise ValueError(f"{cls.__name__}: set type_name and kind (junior|supervisor|senior|reviewer)")
    ROLE_TYPES[cls.type_name] = cls
    return cls


class Role:
    """Base of every role type.

    Class attributes:
        type_name: the config ``type:`` value.
        kind: where the graph places it: ``junior`` | ``supervisor`` | ``senior`` | ``reviewer``.
        needs_model: whether the role calls an LLM (then ``model:`` is required).
        default_prompt: prompt name used when the config gives none.
        Options: pydantic model validating the role's ``options:``.
    """

    type_name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True
    default_prompt: ClassVar[str | None] = None
    Options: ClassVar[type[BaseModel]] = _Options

    def __init__(self, instance: RoleInstance) -> None:
        self.instance = instance
        self.name = instance.name
        self.label = instance.label
        self.options = self.Options.model_validate(instance.config.options)
        default = self.default_prompt_for(instance.config)
        self.prompt: PromptTemplate | None = (
            get_prompt(instance.config.prompt, default) if (instance.config.prompt or default) else None
        )

    @classmethod
    def default_prompt_for(cls, rc: Any) -> str | None:
        """The prompt name used when the role config ``rc`` gives none."""
        return cls.default_prompt

    # ------------------------------------------------------------------ shared helpers

    def metadata(self, ctx: RunContext) -> dict[str, Any]:
        md = ctx.meta()
        if self.instance.config.persona:
            md["persona"] = self.instance.config.persona
        return md

    def llm(self, ctx: RunContext, messages: list[BaseMessage], config: RunnableConfig, node: str,
            sampling: Sampling | None = None) -> AIMessage:
        """One LLM call of this role (see :func:`society.llm.invoke_llm`; raises its errors), with the
        role's sampling settings or ``sampling`` when given."""
        alias = self.instance.config.model
        if not alias:
            raise LLMError(f"role {self.name} has no model alias")
        chat = ctx.models.chat(alias, sampling or self.instance.sampling)
        return invoke_llm(
            chat, messages, config=config, settings=ctx.config.llm, log=ctx.log, role=self.name,
            label=self.label, node=node, alias=alias, metadata=self.metadata(ctx),
        )

    def execute(self, ctx: RunContext, sql: str | None, config: RunnableConfig, node: str) -> ExecSummary:
        """Execute ``sql`` through the ``sql_db_query`` tool (a traced tool call)."""
        if not sql:
            return ExecSummary(sql="", ok=False, error_category="none", error="no SQL")
        msg = call_tool(sql_db_query, {"sql": sql}, config=config, role=self.name, label=self.label, node=node,
                        log=ctx.log, metadata=self.metadata(ctx))
        art = getattr(msg, "artifact", None)
        if isinstance(art, ExecSummary):
            return art
        return ExecSummary(sql=sql, ok=False, error_category="other", error=str(msg.content))

    def outside_knowledge(self, ctx: RunContext, question: str, config: RunnableConfig, node: str) -> str:
        """Web-search context for the prompt when the role has the ``web_search`` tool, else ''."""
        tools = tools_for(self.instance.config.tools)
        if "web_search" not in tools:
            return ""
        msg = call_tool(tools["web_search"], {"query": question}, config=config, role=self.name, label=self.label,
                        node=node, log=ctx.log, metadata=self.metadata(ctx))
        return feedback_section(str(msg.content)[:800], "Outside knowledge")


# ====================================================================== juniors


@register
class Junior(Role):
    """A junior drafter with a persona; its subgraph (see ``society.graph.build_junior_graph``) is
    draft -> execute -> [fix -> execute] -> finish, the execution result routed back to it once.

    Options:
        fix_on_error: try once more when executing the draft fails (default True).
        on_error: how: ``"fix"`` (default) shows the junior the execution error in its own
            conversation and asks for a corrected query (ReAct-style observation); ``"resample"``
            draws a new answer to the original prompt at ``resample_temperature`` with the next
            seed, the failed draft left out (execution-guided rejection sampling: a draft that does
            not run is replaced by a fresh sample, as in execution-guided decoding, Wang et al.
            2018). A small model often repeats its failed query when shown the error (measured in
            docs/results.md); a fresh sample does not depend on it reading the feedback.
        resample_temperature: in (0, 2], the temperature of that draw (default 0.8).
        examples_k: with ``examples`` in the role's ``tools:``, how many worked examples start its
            draft prompt (0..8, default 3): the questions of ``examples_split`` most similar to
            the question, with their gold SQL, never from the question's own database
            (:mod:`tools.examples`, after DAIL-SQL's example selection).
        examples_split: the gold split they come from (default ``train``, read from
            :func:`tools.spider.default_data_dir`); checked when the role is built.
    """

    type_name = "junior"
    kind = "junior"

    class Options(_Options):
        fix_on_error: bool = True
        on_error: Literal["fix", "resample"] = "fix"
        resample_temperature: float = Field(default=0.8, gt=0.0, le=2.0)
        examples_k: int = Field(default=3, ge=0, le=8)
        examples_split: str = "train"

    def __init__(self, instance: RoleInstance) -> None:
        super().__init__(instance)
        if "examples" in self.instance.config.tools and self.options.examples_k > 0:
            try:
                bank_for(self.options.examples_split)
            except DataError as e:
                raise ValueError(
                    f"role {self.name!r} lists the examples tool, but its examples_split "
                    f"{self.options.examples_split!r} cannot be read: {e}"
                ) from e

    @classmethod
    def default_prompt_for(cls, rc: Any) -> str:
        return PERSONA_PROMPTS.get(rc.persona or "direct", "junior_direct")

    def _node(self, step: str) -> str:
        return f"{self.name}/{step}"

    def draft(self, state: JuniorState, config: RunnableConfig) -> dict:
        """The junior's first answer: its persona's prompt (with the reviewer's feedback of a new
        round, and outside knowledge when it has the tool) -> one LLM call -> the SQL it wrote.

        With ``junior_hint`` in the state (a STaR rationalization rollout) the gold SQL is put in
        a delimited block (:func:`society.prompts.hint_block`) *before* the user message, so that
        :func:`society.prompts.strip_hint` gives back exactly the unhinted message.
        """
        ctx = run_context(config)
        fb = feedback_section(state.get("junior_feedback"), "A reviewer rejected the previous answer")
        fb += self.outside_knowledge(ctx, state["question"], config, "draft")
        fb = self.worked_examples(ctx, state["question"], config) + fb
        assert self.prompt is not None
        msgs = self.prompt.render(question=state["question"], schema=state.get("schema_text", ""), feedback=fb)
        if state.get("junior_hint"):
            msgs = [*msgs[:-1], HumanMessage(hint_block(state["junior_hint"]) + str(msgs[-1].content))]
        upd: dict[str, Any] = {"visits": [self._node("draft")], "messages": msgs, "llm_calls": 1, "fixed": False}
        try:
            ai = self.llm(ctx, msgs, config, "draft")
        except LLMError as e:
            return {**upd, "draft_sql": None, "draft_raw": "", "errors": [_error_entry(self.name, e)]}
        raw = str(ai.content)
        return {**upd, "messages": [*msgs, AIMessage(raw)], "draft_raw": raw, "draft_sql": _extract_sql(raw)}

    def worked_examples(self, ctx: RunContext, question: str, config: RunnableConfig) -> str:
        """The worked-examples section of the draft prompt ('' without the ``examples`` tool): one
        traced ``sql_examples`` tool call (:func:`society.toolkit.sql_examples`)."""
        tools = tools_for(self.instance.config.tools)
        if "sql_examples" not in tools or self.options.examples_k == 0:
            return ""
        msg = call_tool(tools["sql_examples"],
                        {"question": question, "k": self.options.examples_k, "split": self.options.examples_split},
                        config=config, role=self.name, label=self.label, node="draft", log=ctx.log,
                        metadata=self.metadata(ctx))
        return "" if msg.status == "error" else str(msg.content)

    def execute_draft(self, state: JuniorState, config: RunnableConfig) -> dict:
        ctx = run_context(config)
        return {
            "visits": [self._node("execute")],
            "exec": self.execute(ctx, state.get("draft_sql"), config, "execute"),
        }

    def after_execute(self, state: JuniorState) -> Literal["fix", "finish"]:
        ex = state.get("exec")
        if (self.options.fix_on_error and not state.get("fixed") and state.get("draft_sql")
                and ex is not None and not ex.ok and not failed(state)):
            return "fix"
        return "finish"

    def fix(self, state: JuniorState, config: RunnableConfig) -> dict:
        """The one retry after a failed draft: with ``on_error: fix`` (a ReAct step) the executor's
        observation goes back into this junior's own conversation; with ``on_error: resample`` the
        original prompt is sampled again (:meth:`resample_settings`) and the failed draft is dropped
        from the conversation."""
        ctx = run_context(config)
        sampling = None
        if self.options.on_error == "resample":
            msgs = [m for m in state.get("messages", []) if not isinstance(m, AIMessage)]
            sampling = self.resample_settings()
        else:
            obs = HumanMessage(PROMPTS["junior_fix"].user.format(execution=state["exec"].as_text()))
            msgs = [*state.get("messages", []), obs]
        upd: dict[str, Any] = {
            "visits": [self._node("fix")],
            "fixed": True,
            "llm_calls": state.get("llm_calls", 0) + 1,
        }
        try:
            ai = self.llm(ctx, msgs, config, "fix", sampling=sampling)
        except LLMError as e:
            return {**upd, "errors": [_error_entry(self.name, e)]}
        raw = str(ai.content)
        sql = _extract_sql(raw)
        return {
            **upd,
            "messages": [*msgs, AIMessage(raw)],
            "draft_raw": raw,
            "draft_sql": sql or state.get("draft_sql"),
        }

    def resample_settings(self) -> Sampling:
        """The sampling of an ``on_error: resample`` draw: the role's own, at
        ``resample_temperature``, with the next seed (``seed + 1``; no seed stays none), so the new
        draw differs from the greedy or seeded draft it replaces."""
        s = self.instance.sampling
        seed = None if s.seed is None else s.seed + 1
        return s.model_copy(update={"temperature": self.options.resample_temperature, "seed": seed})

    def finish(self, state: JuniorState, config: RunnableConfig) -> dict:
        sql = state.get("draft_sql")
        ex = state.get("exec")
        cand = Candidate(
            junior=self.name,
            persona=self.instance.config.persona or self.name,
            sql=sql,
            raw=state.get("draft_raw", ""),
            ok=bool(ex and ex.ok and sql),
            error_category=(ex.error_category if ex and not ex.ok and sql else None),
            error=(ex.error if ex and not ex.ok and sql else (None if sql else "no SQL in the model output")),
            row_count=ex.row_count if ex and ex.ok else 0,
            columns=list(ex.columns) if ex and ex.ok else [],
            result_digest=ex.digest if ex and ex.ok else "",
            fixed=bool(state.get("fixed")) and state.get("llm_calls", 0) > 1,
            llm_calls=state.get("llm_calls", 0),
        )
        return {"candidates": [cand], "visits": [self._node("finish")]}


# ====================================================================== supervisor


@register
class Supervisor(Role):
    """Picks one candidate with a pluggable policy (``policy:`` in the config, options = policy kwargs).

    On a policy error (e.g. a missing bandit file) it records the error and falls back to majority vote.
    """

    type_name = "supervisor"
    kind = "supervisor"
    needs_model = False
    default_prompt = "supervisor"

    class Options(BaseModel):
        model_config = ConfigDict(extra="allow")

    def __init__(self, instance: RoleInstance) -> None:
        super().__init__(instance)
        self.policy_name = instance.config.policy or "majority_vote"
        self.policy = make_policy(self.policy_name, dict(instance.config.options))

    def node(self, state: SocietyState, config: RunnableConfig) -> dict:
        ctx = run_context(config)
        order = {j.name: i for i, j in enumerate(ctx.config.instances("junior"))}
        cands = sorted(state.get("candidates") or [], key=lambda c: order.get(c.junior, len(order)))
        assert self.prompt is not None
        prompt = self.prompt
        pctx = PolicyContext(
            schema_text=state.get("schema_text", ""),
            ask_llm=lambda msgs: str(self.llm(ctx, msgs, config, "supervisor").content),
            render_prompt=lambda text: prompt.render(
                question=state["question"], schema=state.get("schema_text", ""), candidates=text
            ),
        )
        errors: list[str] = []
        try:
            pc = self.policy.choose(state["question"], cands, pctx)
            policy = self.policy_name
        except LLMError as e:
            errors.append(_error_entry(self.name, e))
            pc = MajorityVotePolicy().choose(state["question"], cands, pctx)
            pc.info["fallback"] = f"{self.policy_name} failed: {e}"
            policy = "majority_vote"
        except Exception as e:  # noqa: BLE001 - e.g. a missing/invalid bandit file: fall back, record
            errors.append(f"policy: {self.name}: {type(e).__name__}: {e}")
            pc = MajorityVotePolicy().choose(state["question"], cands, pctx)
            pc.info["fallback"] = f"{self.policy_name} failed: {type(e).__name__}: {e}"
            policy = "majority_vote"
        if not (-1 <= pc.index < len(cands)):
            errors.append(f"policy: {self.name}: index {pc.index} out of range for {len(cands)} candidates")
            pc.index = -1
        choice = SupervisorChoice(
            round=state.get("junior_round", 0), policy=policy, candidates=cands, index=pc.index,
            scores=pc.scores, info={**pc.info, "configured_policy": self.policy_name},
        )
        chosen = choice.chosen
        return {
            "visits": ["supervisor"],
            "choices": [choice],
            "chosen": chosen,
            "current_sql": chosen.sql if chosen else None,
            "current_exec": None,
            "senior_visit_rewrites": 0,
            "feedback": "",
            "errors": errors,
        }


# ====================================================================== senior


@register
class Senior(Role):
    """The senior refiner: execute -> check -> rewrite on the chosen SQL (Agent Lightning's Spider
    write/check/rewrite loop, starting from the supervisor's pick instead of writing from scratch).

    Options:
        max_rewrites: rewrites per senior visit (>= 0; 0 = only check). Old name ``max_turns``
            (deprecated, still read).
        check: ``llm`` (the model checks a query that executed, and its result; a failing query is
            incorrect without asking) or ``execution`` (deterministic: incorrect iff one of the
            ``trigger`` conditions holds; saves one LLM call per visit).
        trigger: with ``check: execution``, when the senior rewrites (:data:`SENIOR_TRIGGERS`, see
            :func:`senior_triggers`): any of ``error`` (the query fails), ``empty`` (it returns no
            rows), ``disagree`` (the juniors' candidates that ran returned more than one distinct
            result), or ``always``. Default ``[error, empty]``: the behaviour before the option
            existed. ``check: llm`` ignores it (the model is asked on every query that runs).
        check_prompt: prompt name for the check (the role's ``prompt:`` is the rewrite prompt).
    """

    type_name = "senior"
    kind = "senior"
    default_prompt = "senior_rewrite"

    class Options(_Options):
        max_rewrites: int = Field(default=1, ge=0, le=20)
        check: Literal["llm", "execution"] = "llm"
        trigger: list[Literal["error", "empty", "disagree", "always"]] = Field(
            default_factory=lambda: list(DEFAULT_TRIGGER), min_length=1)
        check_prompt: str = "senior_check"

        @model_validator(mode="before")
        @classmethod
        def _old_names(cls, data: Any) -> Any:
            return renamed_keys(data, {"max_turns": "max_rewrites"}, "senior options")

    def __init__(self, instance: RoleInstance) -> None:
        super().__init__(instance)
        self.check_prompt = get_prompt(self.options.check_prompt, "senior_check")

    def execute_node(self, state: SocietyState, config: RunnableConfig) -> dict:
        ctx = run_context(config)
        sql = state.get("current_sql")
        ex = self.execute(ctx, sql, config, "senior_execute")
        upd: dict[str, Any] = {"visits": ["senior_execute"], "current_exec": ex}
        if ex.ok:
            upd["best_sql"] = sql
        return upd

    def needs_check(self, state: SocietyState) -> bool:
        """Whether the loop may still rewrite in this visit (otherwise go straight to review)."""
        return state.get("senior_visit_rewrites", 0) < self.options.max_rewrites

    def check_node(self, state: SocietyState, config: RunnableConfig) -> dict:
        ctx = run_context(config)
        ex: ExecSummary = state.get("current_exec") or ExecSummary()
        sql = state.get("current_sql")
        upd: dict[str, Any] = {"visits": ["senior_check"]}
        if self.options.check == "execution":
            fired = senior_triggers(ex, _seen_candidates(state), self.options.trigger)
            deterministic = "incorrect" if fired else "correct"
        else:  # also the verdict when the model's check fails
            deterministic = "correct" if ex.ok and ex.row_count > 0 else "incorrect"
        if self.options.check == "execution" or not ex.ok:
            # a query that fails is incorrect whatever a model would say: no LLM call needed
            verdict, text, raw = deterministic, ex.as_text(), ""
        else:
            msgs = self.check_prompt.render(
                question=state["question"], schema=state.get("schema_text", ""), sql=sql or "",
                execution=ex.as_text(), feedback=feedback_section(state.get("feedback"), "Reviewer feedback"),
            )
            try:
                raw = str(self.llm(ctx, msgs, config, "senior_check").content)
            except LLMError as e:
                return {**upd, "errors": [_error_entry(self.name, e)], "senior_verdict": deterministic}
            verdict = parse_check(raw) or deterministic
            text = re.sub(r"THE QUERY IS (IN)?CORRECT\.?", "", raw).strip() or ex.as_text()
        turn = SeniorTurn(
            kind="check",
            sql_before=sql,
            sql_after=sql,
            execution_before=ex,
            verdict=verdict,
            feedback=text[:1000],
            raw=raw,
        )
        upd.update({"senior_turns": [turn], "senior_verdict": verdict})
        if verdict == "incorrect":
            upd["feedback"] = "\n".join(x for x in (state.get("feedback", ""), text[:600]) if x)
        return upd

    def after_check(self, state: SocietyState) -> Literal["rewrite", "review"]:
        return "rewrite" if state.get("senior_verdict") == "incorrect" and self.needs_check(state) else "review"

    def rewrite_node(self, state: SocietyState, config: RunnableConfig) -> dict:
        ctx = run_context(config)
        ex: ExecSummary = state.get("current_exec") or ExecSummary()
        sql = state.get("current_sql")
        feedback = state.get("feedback", "")
        upd: dict[str, Any] = {
            "visits": ["senior_rewrite"],
            "senior_visit_rewrites": state.get("senior_visit_rewrites", 0) + 1,
            "feedback": "",
        }
        assert self.prompt is not None
        msgs = self.prompt.render(
            question=state["question"], schema=state.get("schema_text", ""), sql=sql or "",
            execution=ex.as_text(), feedback=feedback_section(feedback, "Feedback")
            + self.outside_knowledge(ctx, state["question"], config, "senior_rewrite"),
        )
        try:
            raw = str(self.llm(ctx, msgs, config, "senior_rewrite").content)
        except LLMError as e:
            return {**upd, "errors": [_error_entry(self.name, e)]}
        new = _extract_sql(raw)
        verdict = "no_sql" if not new else ("unchanged" if same_sql(new, sql) else "rewritten")
        turn = SeniorTurn(kind="rewrite", sql_before=sql, sql_after=new or sql, execution_before=ex,
                          verdict=verdict, feedback=feedback[:1000], raw=raw)
        return {**upd, "senior_turns": [turn], "current_sql": new or sql}

    @staticmethod
    def converged(state: dict) -> bool:
        """True when the senior's last rewrite gave back the same SQL: at temperature 0 the same
        feedback would give the same rewrite again, so further turns cannot change the answer."""
        turns = state.get("senior_turns") or []
        return bool(turns) and turns[-1].kind == "rewrite" and turns[-1].verdict in ("unchanged", "no_sql")


#: The conditions a senior with ``check: execution`` can be asked to rewrite on (``options.trigger``).
SENIOR_TRIGGERS: tuple[str, ...] = ("error", "empty", "disagree", "always")
#: The default trigger: the senior rewrites a query that fails or returns no rows.
DEFAULT_TRIGGER: tuple[str, ...] = ("error", "empty")


def senior_triggers(ex: Any, candidates: Sequence[Any] = (), trigger: Sequence[str] = SENIOR_TRIGGERS) -> list[str]:
    """Which of the ``trigger`` conditions hold for a query about to be handed on (in the order of
    :data:`SENIOR_TRIGGERS`); the senior (``check: execution``) rewrites when this is not empty.

    Conditions:
        ``error``: the query has no SQL or fails (``ex.ok`` false); ``empty``: it ran and returned
        no rows; ``disagree``: the ``candidates`` the supervisor chose among that ran (with SQL)
        returned more than one distinct result (by ``result_digest``; candidates that failed do not
        count); ``always``: holds for every query.

    Args:
        ex: an :class:`~society.state.ExecSummary` (or anything with ``sql``, ``ok``, ``row_count``).
        candidates: :class:`~society.candidate.Candidate` objects or dicts with ``sql``, ``ok``,
            ``result_digest`` (the juniors' round the query came from); () when unknown.
        trigger: the conditions to test (a subset of :data:`SENIOR_TRIGGERS`).

    Raises:
        ValueError: an unknown condition in ``trigger``.

    >>> from society.state import ExecSummary
    >>> ok = ExecSummary(sql="SELECT 1", ok=True, row_count=1, digest="a")
    >>> two = [{"sql": "x", "ok": True, "result_digest": "a"}, {"sql": "y", "ok": True, "result_digest": "b"}]
    >>> senior_triggers(ok, two, ["error", "empty", "disagree"])
    ['disagree']
    >>> senior_triggers(ok, two[:1], ["error", "empty", "disagree"])
    []
    >>> senior_triggers(ExecSummary(sql="SELECT", ok=False), (), ["error", "empty"])
    ['error']
    >>> senior_triggers(ExecSummary(sql="SELECT 1 WHERE 0", ok=True, row_count=0), (), ["error"])
    []
    """
    bad = sorted(set(trigger) - set(SENIOR_TRIGGERS))
    if bad:
        raise ValueError(f"unknown senior trigger(s) {bad}; use any of {list(SENIOR_TRIGGERS)}")
    ran = {str(_field(c, "result_digest") or "") for c in candidates if _field(c, "ok") and _field(c, "sql")}
    holds = {
        "error": not (getattr(ex, "sql", "") and getattr(ex, "ok", False)),
        "empty": bool(getattr(ex, "sql", "")) and bool(getattr(ex, "ok", False)) and getattr(ex, "row_count", 0) == 0,
        "disagree": len(ran) > 1,
        "always": True,
    }
    return [t for t in SENIOR_TRIGGERS if t in trigger and holds[t]]


def _field(c: Any, key: str) -> Any:
    return c.get(key) if isinstance(c, dict) else getattr(c, key, None)


def _seen_candidates(state: dict) -> list[Any]:
    """The candidates of the supervisor's last decision ([] before one, e.g. the senior-only agent's
    handover of one given query: nothing to disagree with)."""
    choices = state.get("choices") or []
    return list(choices[-1].candidates) if choices else []


def repair_messages(prompt: PromptTemplate, question: str, schema_text: str, ex: ExecSummary) -> list[BaseMessage]:
    """The messages a senior with ``check: execution`` sends for its first rewrite of the query that
    ``ex`` ran (no reviewer feedback yet): its rewrite ``prompt`` filled with the query and its
    execution text, and the same text as the check's feedback (what :meth:`Senior.check_node` hands
    :meth:`Senior.rewrite_node`, cut to 600 characters). Used to pose a junior's wrong candidate to
    the senior as a repair (``training.adapter``); a real run's prompt equals it
    (``tests/test_repair.py``)."""
    text = ex.as_text()
    return prompt.render(question=question, schema=schema_text, sql=ex.sql or "", execution=text,
                         feedback=feedback_section(text[:600], "Feedback"))


def same_sql(a: str | None, b: str | None) -> bool:
    """Equal as :func:`evaluation.metrics.sql_text.normalize_sql` (white space between tokens, trailing
    semicolons); case counts, and string literals and quoted names must match exactly. False when
    either is None or empty."""
    return bool(a) and bool(b) and normalize_sql(a) == normalize_sql(b)


def parse_check(text: str) -> str | None:
    """``correct`` / ``incorrect`` from the last verdict phrase in a check reply, or None when absent."""
    up = (text or "").upper()
    c, i = up.rfind("THE QUERY IS CORRECT"), up.rfind("THE QUERY IS INCORRECT")
    if c < 0 and i < 0:
        return None
    return "correct" if c > i else "incorrect"


# ====================================================================== reviewers


class Reviewer(Role):
    """Base of reviewers: :meth:`review` returns one :class:`Review` of the current SQL."""

    kind = "reviewer"

    def review(self, state: SocietyState, ctx: RunContext, config: RunnableConfig) -> tuple[Review, list[str]]:
        raise NotImplementedError

    def node(self, state: SocietyState, config: RunnableConfig) -> dict:
        """Review the current SQL; a SQL this reviewer already judged gets the same verdict again
        without a new model call (the review is a function of the SQL and its result)."""
        ctx = run_context(config)
        sql = state.get("current_sql")
        prev = next(
            (r for r in reversed(state.get("reviews") or []) if r.reviewer == self.name and same_sql(r.sql, sql)), None
        )
        if prev is not None:
            review = prev.model_copy(
                update={"turn": state.get("turn", 0) + 1, "raw": f"(same SQL as reviewed in turn {prev.turn})"}
            )
            return {"visits": [self.name], "reviews": [review]}
        review, errors = self.review(state, ctx, config)
        return {"visits": [self.name], "reviews": [review], "errors": errors}


#: Words that mark a question as asking for a single value.
_SINGLE_VALUE = re.compile(r"^\s*(how many|what is the (total|average|number|maximum|minimum|count)|count\b)", re.I)
_PER_GROUP = re.compile(r"\b(each|every|per|for all|by each|respectively)\b", re.I)
_MAY_BE_EMPTY = re.compile(r"\b(if any|whether|is there|are there)\b", re.I)


class SeverityMap(_Options):
    """Severity per execution problem (see :class:`ExecutionReviewer`)."""

    no_sql: Severity = Severity.CRITICAL
    error: Severity = Severity.MAJOR
    error_by_category: dict[str, Severity] = Field(default_factory=dict)
    empty: Severity = Severity.MINOR
    too_many_rows: Severity = Severity.MINOR
    truncated: Severity = Severity.MINOR


@register
class ExecutionReviewer(Reviewer):
    """Deterministic reviewer of the execution result.

    REVISE when: there is no SQL (``no_sql``, default CRITICAL); it errors (``error``, default MAJOR,
    per category overridable in ``error_by_category``, e.g. ``{no_such_table: CRITICAL}``); it returns
    no rows although the question implies rows (``empty``, MINOR; questions with "if any", "whether",
    "is there" may be empty); the question asks for one value ("how many", "what is the total/average...",
    without "each/per/...") but several rows came back (``too_many_rows``, MINOR); the row cap was hit
    (``truncated``, MINOR). Otherwise APPROVE.
    """

    type_name = "execution_reviewer"
    needs_model = False

    class Options(_Options):
        severity: SeverityMap = Field(default_factory=SeverityMap)

    def review(self, state: SocietyState, ctx: RunContext, config: RunnableConfig) -> tuple[Review, list[str]]:
        sql = state.get("current_sql")
        ex: ExecSummary | None = state.get("current_exec")
        if ex is None or (sql and ex.sql != sql):
            ex = self.execute(ctx, sql, config, self.name)
        q = state["question"]
        sev = self.options.severity
        base = dict(reviewer=self.name, kind="execution", turn=state.get("turn", 0) + 1, sql=sql)
        if not sql:
            return Review(
                **base, verdict=Verdict.REVISE, severity=sev.no_sql, feedback="There is no SQL query; write one."
            ), []
        if not ex.ok:
            s = sev.error_by_category.get(ex.error_category or "", sev.error)
            return Review(**base, verdict=Verdict.REVISE, severity=s, feedback=f"The query fails: {ex.error}"), []
        if ex.truncated:
            return Review(
                **base,
                verdict=Verdict.REVISE,
                severity=sev.truncated,
                feedback=f"The result hit the row cap ({ex.row_count} rows); add filters or aggregation.",
            ), []
        if ex.row_count == 0 and not _MAY_BE_EMPTY.search(q):
            return Review(
                **base,
                verdict=Verdict.REVISE,
                severity=sev.empty,
                feedback="The query returns no rows; check filter values, joins and spelling against the data.",
            ), []
        if ex.row_count > 1 and _SINGLE_VALUE.search(q) and not _PER_GROUP.search(q):
            return Review(**base, verdict=Verdict.REVISE, severity=sev.too_many_rows,
                          feedback=f"The question asks for one value but the query returns {ex.row_count} rows."), []
        return Review(**base, verdict=Verdict.APPROVE), []


def parse_review(text: str) -> tuple[Verdict, Severity | None, str] | None:
    """Parse ``VERDICT: ...`` / ``SEVERITY: ...`` / ``FEEDBACK: ...`` (case-insensitive, any order).

    Returns ``(verdict, severity, feedback)`` -- a REVISE without a valid severity is MAJOR -- or None
    when no verdict word is found.
    """
    t = text or ""
    m = re.search(r"VERDICT\s*[:\-]?\s*\**\s*(APPROVE|REVISE)", t, re.I) or re.search(r"\b(APPROVE|REVISE)\b", t, re.I)
    if not m:
        return None
    verdict = Verdict(m.group(1).upper())
    if verdict is Verdict.APPROVE:
        return verdict, None, ""
    s = re.search(r"SEVERITY\s*[:\-]?\s*\**\s*(MINOR|MAJOR|CRITICAL)", t, re.I)
    f = re.search(r"FEEDBACK\s*[:\-]?\s*(.+)", t, re.I | re.S)
    feedback = (f.group(1).strip() if f else t.strip())[:600]
    return verdict, Severity(s.group(1).upper()) if s else Severity.MAJOR, feedback


@register
class SemanticReviewer(Reviewer):
    """LLM reviewer: does the query answer the question? Replies are parsed by :func:`parse_review`.

    Options:
        unparsed: the verdict when the reply holds none (default APPROVE, so a rambling small model
            cannot loop the run; the raw reply is kept in the review).
    """

    type_name = "semantic_reviewer"
    default_prompt = "reviewer_semantic"

    class Options(_Options):
        unparsed: Verdict = Verdict.APPROVE

    def review(self, state: SocietyState, ctx: RunContext, config: RunnableConfig) -> tuple[Review, list[str]]:
        sql = state.get("current_sql")
        ex: ExecSummary = state.get("current_exec") or ExecSummary()
        base = dict(reviewer=self.name, kind="semantic", turn=state.get("turn", 0) + 1, sql=sql)
        assert self.prompt is not None
        msgs = self.prompt.render(
            question=state["question"], schema=state.get("schema_text", ""), sql=sql or "", execution=ex.as_text()
        )
        try:
            raw = str(self.llm(ctx, msgs, config, self.name).content)
        except LLMError as e:
            return Review(**base, verdict=Verdict.APPROVE, feedback=f"review failed: {e}"), [
                _error_entry(self.name, e)
            ]
        parsed = parse_review(raw)
        if parsed is None:
            v = self.options.unparsed
            return Review(**base, verdict=v, severity=None if v is Verdict.APPROVE else Severity.MINOR,
                          feedback="(unparsed reply)", raw=raw), []
        verdict, severity, feedback = parsed
        return Review(**base, verdict=verdict, severity=severity, feedback=feedback, raw=raw), []


def build_roles(config: SocietyConfig) -> dict[str, list[Role]]:
    """Instantiate the enabled roles, grouped by kind (``junior`` list in config order, etc.)."""
    out: dict[str, list[Role]] = {"junior": [], "supervisor": [], "senior": [], "reviewer": []}
    for inst in config.instances():
        cls = ROLE_TYPES[inst.type]
        out[cls.kind].append(cls(inst))
    return out
