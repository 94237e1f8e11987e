"""The society as an Agent Lightning ``LitAgent``: one rollout = the society answering one Spider task.

:class:`SocietyAgent` runs :func:`society.run.run_society` on a task, with the tracer's LangChain
callback handler so every graph node, LLM call and tool call becomes a span, scores the final
SQL with the weighted reward of :func:`evaluation.metrics.rewards.compute_reward`, records per-role
outcomes as spans, and returns the reward (the runner turns it into Agent Lightning's reward
span; the reward is *returned*, never also emitted).

A rollout's input (a *task*, see :func:`task_from_example`) is a plain dict::

    {"task_id": "train-12", "question": "...", "db_id": "concert_singer",
     "db_path": "/.../concert_singer.sqlite", "gold_sql": "SELECT ..."}

Resources: every ``agl.LLM`` resource whose name is a model alias of the society config points
that alias at the resource's endpoint (``config.with_endpoint``), so an algorithm can route the
juniors or the senior to a new model between rollouts (LoRA adapters, Agent Lightning's LLMProxy).

Spans a society rollout leaves in the store (names as stored; see also ``training.adapter``):

* the AgentOps LangChain handler's spans for the graph run, each node, and each LLM / tool run
  (LLM spans carry ``gen_ai.prompt.*`` / ``gen_ai.completion.*`` and the LangChain metadata:
  ``role``, ``role_instance``, ``node``, ``model_alias``, ``question_id``, ``rollout_id``);
* ``agentlightning.object`` with ``sqlsociety.kind = "society_run"``: the whole
  ``SocietyRun.to_record()`` as JSON (candidates with execution features, supervisor choices,
  senior turns, reviews, per-role token counts);
* ``agentlightning.annotation`` with ``sqlsociety.kind = "role_outcomes"`` and flat attributes
  (see :func:`role_outcome_attributes`): each junior's EX, the supervisor's choice and whether
  the chosen candidate was correct, the senior's EX before/after, review verdicts, reward parts;
* ``agentlightning.annotation`` with ``agentlightning.reward.0.value``: the rollout's reward.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault(
    "LITELLM_LOCAL_MODEL_COST_MAP", "True"
)  # litellm (imported by agl) stalls on the network otherwise
os.environ.setdefault("AGENTOPS_LOG_LEVEL", "WARNING")  # AgentOps prints a "session replay" URL per trace otherwise

import agentlightning as agl

from evaluation.metrics.ex import execution_match
from evaluation.metrics.rewards import RewardConfig, compute_reward
from evaluation.tracing.langsmith_traces import rollout_trace
from society.config import ConfigError, SocietyConfig
from society.llm import as_endpoint, message_dicts
from society.policies import EpsilonGreedyPolicy
from society.run import endpoint_failure, run_society
from tools.spider import SpiderExample, database_path, default_data_dir

#: Attribute prefix of this project's span attributes.
ATTR = "sqlsociety"
#: ``sqlsociety.kind`` of the outcome annotation and of the run object span.
KIND_ROLE_OUTCOMES = "role_outcomes"
KIND_SOCIETY_RUN = "society_run"


def infrastructure_failure(run: Any) -> str | None:
    """Why ``run`` says nothing about the policy, or None: a model endpoint stayed down after retries
    (errors starting ``endpoint:``) or the graph crashed (``graph:``). A run that merely produced no
    usable SQL is *not* such a failure: it is a real, low-reward sample (``status == "failed"`` in
    ``SocietyRun`` covers both)."""
    return endpoint_failure(run) or next((str(e) for e in run.errors if str(e).startswith("graph:")), None)


class InterruptedRolloutGuard(agl.Hook):
    """Keeps a rollout that Ctrl-C interrupted from being stored as ``succeeded``.

    Agent Lightning 0.3's runner catches only ``Exception`` around ``rollout`` and then, in its
    ``finally``, marks the attempt ``succeeded`` unless an ``Exception`` was seen: a rollout cut
    short by ``KeyboardInterrupt`` (a ``BaseException``) was stored as a succeeded rollout with no
    reward, and a resumed gather skipped its task as done (seen in tests/test_gather.py's Ctrl-C
    test, 2026-12-05). :class:`SocietyAgent` notes the interrupt (``agent.interrupted``); this hook,
    run first in that ``finally``, raises ``KeyboardInterrupt`` again before the attempt is marked,
    so it stays unfinished and the next gather recovers it like any rollout in flight
    (``evaluation.tracing.store``: cancelled, the task run again).
    """

    async def on_rollout_end(self, *, agent: Any, runner: Any, rollout: Any, spans: Any) -> None:  # type: ignore[override]
        if getattr(agent, "interrupted", False):
            raise KeyboardInterrupt


class RolloutFailed(RuntimeError):
    """The society could not answer for infrastructure reasons (endpoint down after retries, or the
    graph crashed); see :func:`infrastructure_failure`.

    Raised from ``rollout`` so Agent Lightning marks the attempt ``failed``; the spans recorded so
    far (including the outcome annotation) stay in the store.
    """


# --------------------------------------------------------------------------------------------
# Tracer
# --------------------------------------------------------------------------------------------


class StoreTracer(agl.AgentOpsTracer):
    """``AgentOpsTracer`` that always submits spans through its ``LightningSpanProcessor``
    (``store.add_otel_span``, synchronously at span end) instead of the OTLP exporter.

    Why: with ``ClientServerExecutionStrategy`` the runner's store client advertises OTLP, and
    AgentOpsTracer then exports through AgentOps' ``AuthenticatedOTLPExporter``; with AgentOps
    0.4.21 and opentelemetry-exporter-otlp-proto-http 1.45 that exporter fails
    (``'BypassableAuthenticatedOTLPExporter' object has no attribute '_headers'``) and every span
    except the reward is lost. The span-processor path is Agent Lightning's own non-OTLP path and
    also guarantees every span is in the store before the attempt is marked finished.

    Also, in a runner process it arranges to die with the trainer's main process (see
    :func:`die_with_parent`): Agent Lightning's runners otherwise outlive a killed trainer and
    retry the dead store server forever.
    """

    def init_worker(self, worker_id: int, store: Any = None) -> None:  # type: ignore[override]
        die_with_parent()
        super().init_worker(worker_id, store)

    def _enable_native_otlp_exporter(self, store: Any, rollout_id: str, attempt_id: str) -> None:
        self._disable_native_otlp_exporter()

    def get_langchain_handler(self, tags: list[str] | None = None) -> Any:  # type: ignore[override]
        """AgentOps' LangChain handler, plus each run's name, tags and metadata as span attributes
        (see :func:`named_langchain_handler`)."""
        base = super().get_langchain_handler(tags)
        return named_langchain_handler(base)


def die_with_parent(parent_pid: int | None = None) -> bool:
    """On Linux, ask the kernel to SIGKILL this process when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``); exits at once if the parent is already gone.

    ``parent_pid``: the parent's pid, as the parent saw itself (a ``subprocess`` child gets it on
    its command line); None: this is a ``multiprocessing`` child and its parent is asked of
    ``multiprocessing``. A runner holds no state of its own (spans go to the store as they end), so
    killing it loses nothing; the store marks its unfinished rollout ``cancelled`` when the run
    resumes. Returns True when the request was made (False in a main process or off Linux).
    """
    import ctypes
    import multiprocessing
    import signal
    import sys

    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else None
    if parent_pid is None or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except OSError:
        return False
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    return True


#: Attribute names the named handler adds to every LangChain span.
LC_RUN_NAME = "langchain.run_name"
LC_TAGS = "langchain.tags"
LC_METADATA = "langchain.metadata"


def input_summary(inputs: Any, max_chars: int = 200) -> Any:
    """What a LangGraph node span records of its input: each top-level key of the state with its
    value when short (a scalar, or a string of at most ``max_chars``), else its size (``"<2,310
    chars>"``, ``"<list of 3>"``, ``"<dict of 5 keys>"``); a non-dict input as the same one summary.

    Why: AgentOps writes the whole state (schema text, candidates, every message so far) on every
    node's ``chain.inputs``; in a society rollout that was ~72 % of the store's bytes (7.5 of 10.4 MB
    over 50 rollouts), a copy of what the LLM spans and the run object already hold, read by nothing.

    >>> s = input_summary({"question": "How many singers?", "schema": "x" * 2310, "candidates": [1, 2, 3],
    ...                    "turn": 0, "run": {"a": 1}})
    >>> s["question"], s["schema"], s["candidates"], s["turn"], s["run"]
    ('How many singers?', '<2,310 chars>', '<list of 3>', 0, '<dict of 1 keys>')
    >>> input_summary("short"), input_summary(None)
    ('short', None)
    """
    def one(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float)):
            return v
        if isinstance(v, str):
            return v if len(v) <= max_chars else f"<{len(v):,} chars>"
        if isinstance(v, Mapping):
            return f"<dict of {len(v)} keys>"
        if isinstance(v, (list, tuple)):
            return f"<list of {len(v)}>"
        text = str(v)
        return text if len(text) <= max_chars else f"<{type(v).__name__}, {len(text):,} chars>"

    if isinstance(inputs, Mapping):
        return {str(k): one(v) for k, v in inputs.items()}
    return one(inputs)


def named_langchain_handler(handler: Any) -> Any:
    """Make an AgentOps ``LangchainCallbackHandler`` record who ran.

    AgentOps names every span generically (``chain.chain``, ``chat_model.llm``, ``tool.tool``)
    and drops LangChain's run name, tags and metadata, so a node span cannot be told from
    another; for chat models it also stores an empty ``gen_ai.prompt`` (it reads the nested
    message lists as flat). This adds, on every chain / chat-model / LLM / tool span:
    ``langchain.run_name`` (the graph node or the society's call label such as
    ``junior:direct``), ``langchain.tags``, ``langchain.metadata.<key>`` for each scalar metadata
    value (``role``, ``role_instance``, ``node``, ``model_alias``, ``question_id``,
    ``rollout_id``, ``langgraph_node``, ...), and for chat models ``gen_ai.prompt`` as a JSON list
    of ``{"role", "content"}`` (OpenAI role names). A node span's ``chain.inputs`` holds
    :func:`input_summary` of the state, not the state.
    """
    import json

    cls = type(handler)

    class _Named(cls):  # type: ignore[misc, valid-type]
        def _record(self, kwargs: dict[str, Any]) -> None:
            span = self.active_spans.get(kwargs.get("run_id"))
            if span is None:
                return
            if kwargs.get("name"):
                span.set_attribute(LC_RUN_NAME, str(kwargs["name"]))
            if kwargs.get("tags"):
                span.set_attribute(LC_TAGS, [str(t) for t in kwargs["tags"]])
            for k, v in (kwargs.get("metadata") or {}).items():
                if isinstance(v, (str, bool, int, float)):
                    span.set_attribute(f"{LC_METADATA}.{k}", v)

        def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
            super().on_chain_start(serialized, input_summary(inputs), **kwargs)
            self._record(kwargs)

        def on_tool_start(self, serialized: Any, input_str: Any, **kwargs: Any) -> None:
            super().on_tool_start(serialized, input_str, **kwargs)
            self._record(kwargs)

        def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
            super().on_llm_start(serialized, prompts, **kwargs)
            self._record(kwargs)

        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            super().on_chat_model_start(serialized, messages, **kwargs)
            self._record(kwargs)
            span = self.active_spans.get(kwargs.get("run_id"))
            if span is not None:
                flat = [m for batch in messages for m in (batch if isinstance(batch, list) else [batch])]
                span.set_attribute("gen_ai.prompt", json.dumps(message_dicts(flat), ensure_ascii=False))

    named = _Named.__new__(_Named)
    named.__dict__.update(handler.__dict__)
    return named


# --------------------------------------------------------------------------------------------
# Supervisor exploration (for logging bandit data during gathering)
# --------------------------------------------------------------------------------------------


def with_exploration(config: SocietyConfig, epsilon: float, seed: int = 0) -> SocietyConfig:
    """A copy of ``config`` whose supervisor explores with probability ``epsilon`` around its
    configured policy (see :class:`EpsilonGreedyPolicy`); ``epsilon == 0`` returns ``config``.

    Raises:
        ValueError: ``epsilon`` outside [0, 1].
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"exploration epsilon={epsilon!r} must be in [0, 1]")
    if epsilon == 0.0:
        return config
    roles = []
    for r in config.roles:
        if r.type == "supervisor" and r.enabled and r.policy != EpsilonGreedyPolicy.name:
            r = r.model_copy(update={
                "policy": EpsilonGreedyPolicy.name,
                "options": {"base": r.policy or "majority_vote", "base_options": dict(r.options),
                            "epsilon": epsilon, "seed": seed},
            })
        roles.append(r)
    return SocietyConfig.model_validate({**config.model_dump(by_alias=True), "roles": [r.model_dump() for r in roles],
                                         "models": config.models})


def with_junior_sampling(config: SocietyConfig, *, temperature: float, seed: int) -> SocietyConfig:
    """A copy of ``config`` whose juniors sample at ``temperature`` with seed ``seed + i`` (``i`` the
    junior's position), for rejection-sampling draws; the other roles are unchanged.

    Raises:
        ValueError: ``temperature`` < 0.
    """
    if temperature < 0:
        raise ValueError(f"junior sampling temperature={temperature!r} must be >= 0")
    roles, i = [], 0
    for r in config.roles:
        if r.type == "junior":
            r = r.model_copy(update={"sampling": r.sampling.model_copy(update={"temperature": temperature,
                                                                                "seed": seed + i})})
            i += 1
        roles.append(r)
    return config.model_copy(update={"roles": roles})


def with_only_juniors(config: SocietyConfig, names: Sequence[str]) -> SocietyConfig:
    """A copy of ``config`` in which only the junior roles named (config names) are enabled; every other
    role unchanged. Rejection sampling draws again only the juniors that were wrong on a task.

    Raises:
        ValueError: a name is not an enabled junior role of ``config`` (the message lists them).
    """
    juniors = [r.name for r in config.roles if r.type == "junior" and r.enabled]
    unknown = [n for n in names if n not in juniors]
    if unknown or not names:
        raise ValueError(f"juniors {list(names)!r}: give one or more of the enabled junior roles {juniors}")
    roles = [r.model_copy(update={"enabled": r.name in names}) if r.type == "junior" else r for r in config.roles]
    return config.model_copy(update={"roles": roles})


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def task_from_example(ex: SpiderExample) -> dict[str, Any]:
    """The rollout input for one Spider example: ``task_id``, ``question``, ``db_id``, ``db_path``, ``gold_sql``.

    Optional keys a gather may add: ``agent`` (``society``, the default, or ``juniors``),
    ``junior_sampling`` (``{"temperature", "seed"}``, see :func:`with_junior_sampling`), ``juniors``
    (the junior roles that run, by config name; :func:`with_only_juniors`) and
    ``rationalize`` (True: every junior is shown ``gold_sql`` as a hint, STaR rationalization;
    only with ``agent: juniors``)."""
    return {"task_id": ex.id, "question": ex.question, "db_id": ex.db_id, "db_path": str(ex.db_path),
            "gold_sql": ex.gold_sql}


def _task_db_path(task: Mapping[str, Any], data_dir: Path | None) -> Path:
    p = Path(str(task.get("db_path") or ""))
    if p.is_file():
        return p
    if task.get("db_id"):
        q = database_path(data_dir or default_data_dir(), str(task["db_id"]))
        if q.is_file():
            return q
    raise ValueError(f"task {task.get('task_id')!r}: no database at {p} nor for db_id {task.get('db_id')!r}; "
                     "pass db_path or set SQLSOCIETY_DATA_DIR")


#: Where a rollout's junior conversations come from (``sqlsociety.source``), in report order.
SOURCES = ("society", "juniors", "resample", "rationalized")

#: The sources of a conversation answering a question the junior's first draft missed: a
#: rejection-sampling redraw, a STaR rationalization (what ``adapter.sft_fill: missed_first`` trains on
#: first, :func:`training.phase_sft.fill_rows`).
MISSED_SOURCES = ("resample", "rationalized")


def rollout_source(agent: str, *, resample: bool = False, rationalized: bool = False) -> str:
    """The source of a rollout, one of :data:`SOURCES`: ``rationalized`` (a juniors-only rollout whose
    juniors saw the gold SQL as a hint), ``resample`` (a rejection-sampling draw of the juniors-only
    gather), ``juniors`` (the juniors-only gather's first draw) or ``society`` (a whole society run).

    Raises:
        ValueError: ``agent`` is neither ``society`` nor ``juniors``.
    """
    if agent not in ("society", "juniors"):
        raise ValueError(f"agent {agent!r}; use 'society' or 'juniors'")
    return "rationalized" if rationalized else "resample" if resample else agent


# --------------------------------------------------------------------------------------------
# Per-role outcomes
# --------------------------------------------------------------------------------------------


def role_outcome_attributes(run: Any, gold_sql: str, db_path: str | Path, reward: Any) -> dict[str, Any]:
    """Flat span attributes (prefix ``sqlsociety.``) giving each role's credit in one run.

    Keys (``J`` = a junior instance name, e.g. ``junior_direct``; ``i`` = review number)::

        task_id, db_id, db_path, gold_sql, status, final.sql, final.ex (0/1), final.ex_reason
        agent (society | juniors), resample (1: a rejection-sampling draw), rationalized (1: the
            juniors saw the gold SQL as a hint), source (see :func:`rollout_source`) -- added by the rollout
        junior.J.index, .persona, .sql, .executes, .fixed, .ex      -- EX of J's candidate vs gold
        juniors (the names in candidate order), juniors_correct (how many candidates match gold)
        supervisor.index (-1: none), .choice (junior name), .policy, .chosen_ex, .best_possible
            (1 if any candidate was correct), .explored, .propensity (when exploring)
        senior.before_sql, .before_ex, .after_sql, .after_ex, .turns, .improved (-1/0/+1)
        review.i.reviewer, .verdict, .severity
        reward.total and reward.<component> (see evaluation.metrics.rewards.COMPONENT_RANGES)

    EX is :func:`evaluation.metrics.ex.execution_match` (Spider's test-suite rule) on ``db_path``.
    """
    ex_cache: dict[str, tuple[int, str]] = {}

    def ex(sql: str | None) -> tuple[int, str]:
        key = sql or ""
        if key not in ex_cache:
            m = execution_match(db_path, sql, gold_sql)
            ex_cache[key] = (int(m.match), m.reason)
        return ex_cache[key]

    a: dict[str, Any] = {
        f"{ATTR}.kind": KIND_ROLE_OUTCOMES,
        f"{ATTR}.task_id": run.question_id,
        f"{ATTR}.db_id": run.db_id,
        f"{ATTR}.db_path": str(db_path),
        f"{ATTR}.gold_sql": gold_sql,
        f"{ATTR}.status": run.status,
        f"{ATTR}.final.sql": run.final_sql or "",
    }
    a[f"{ATTR}.final.ex"], a[f"{ATTR}.final.ex_reason"] = ex(run.final_sql)
    names, correct = [], 0
    for i, c in enumerate(run.candidates):
        p = f"{ATTR}.junior.{c.junior}"
        cex = ex(c.sql)[0]
        correct += cex
        names.append(c.junior)
        a.update({f"{p}.index": i, f"{p}.persona": c.persona, f"{p}.sql": c.sql or "", f"{p}.executes": int(c.ok),
                  f"{p}.fixed": int(c.fixed), f"{p}.ex": cex})
    a[f"{ATTR}.juniors"] = names
    a[f"{ATTR}.juniors_correct"] = correct
    ch = run.choice
    if ch is not None:
        chosen = ch.chosen
        a.update({
            f"{ATTR}.supervisor.index": ch.index,
            f"{ATTR}.supervisor.choice": chosen.junior if chosen else "",
            f"{ATTR}.supervisor.policy": ch.policy,
            f"{ATTR}.supervisor.chosen_ex": ex(chosen.sql)[0] if chosen else 0,
            f"{ATTR}.supervisor.best_possible": int(correct > 0),
        })
        if "explored" in ch.info:
            a[f"{ATTR}.supervisor.explored"] = int(bool(ch.info["explored"]))
            a[f"{ATTR}.supervisor.propensity"] = float(ch.info.get("propensity", 1.0))
    if ch is not None and run.agent != "juniors":  # a juniors-only run has no senior
        before, after = run.senior_before_after()
        bex, aex = ex(before)[0], ex(after)[0]
        a.update({
            f"{ATTR}.senior.before_sql": before or "", f"{ATTR}.senior.before_ex": bex,
            f"{ATTR}.senior.after_sql": after or "", f"{ATTR}.senior.after_ex": aex,
            f"{ATTR}.senior.turns": len(run.senior_turns), f"{ATTR}.senior.improved": aex - bex,
        })
    for i, r in enumerate(run.reviews):
        a.update({f"{ATTR}.review.{i}.reviewer": r.reviewer, f"{ATTR}.review.{i}.verdict": str(r.verdict.value),
                  f"{ATTR}.review.{i}.severity": str(r.severity.value) if r.severity else ""})
    a[f"{ATTR}.reward.total"] = float(reward.total)
    for k, v in reward.components().items():
        a[f"{ATTR}.reward.{k}"] = float(v)
    return a


# --------------------------------------------------------------------------------------------
# The LitAgent
# --------------------------------------------------------------------------------------------


class SocietyAgent(agl.LitAgent[dict]):
    """Runs the society on one task and returns its reward (Agent Lightning ``LitAgent``).

    Args:
        config: the society config (a :class:`SocietyConfig` or a YAML path). Embedded model
            aliases must be given an endpoint, either here (``endpoints``) or as ``agl.LLM``
            resources named after the alias (what :func:`training.gather.gather` does).
        endpoints: alias -> ``(base_url, model)`` or ``(base_url, model, api_key)`` applied to the
            config once.
        reward: weights of the reward (default :class:`evaluation.metrics.rewards.RewardConfig`, unit
            range [0, 1]).
        data_dir: where to find a task's database when its ``db_path`` is not a file.

    ``rollout`` returns the reward (``reward.total``) as a float -- also for a run with no usable
    SQL (a real, low-reward sample); it raises :class:`RolloutFailed` when a model endpoint stayed
    down or the graph crashed (the attempt is then ``failed``; gather redoes it on resume).
    """

    def __init__(
        self,
        config: SocietyConfig | str | os.PathLike[str],
        *,
        endpoints: Mapping[str, Any] | None = None,
        reward: RewardConfig | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        cfg = config if isinstance(config, SocietyConfig) else SocietyConfig.load(config)
        for alias, value in (endpoints or {}).items():
            e = as_endpoint(value)
            cfg = cfg.with_endpoint(alias, e.base_url, e.model, api_key=e.api_key, extra_body=e.extra_body)
        self.config = cfg
        self.reward_config = reward or RewardConfig()
        self.data_dir = Path(data_dir) if data_dir else None

    def config_for(self, resources: Mapping[str, Any] | None, rollout: Any = None) -> SocietyConfig:
        """The society config with every ``agl.LLM`` resource named after a model alias applied.

        Raises:
            ConfigError: an alias used by a role is still ``embedded`` (no server was given for it).
        """
        cfg = self.config
        for name, res in (resources or {}).items():
            if isinstance(res, agl.LLM) and name in cfg.models:
                url = (
                    res.get_base_url(rollout.rollout_id, rollout.attempt.attempt_id)
                    if rollout is not None and hasattr(rollout, "attempt")
                    else res.endpoint
                )
                extra = (res.sampling_parameters or {}).get("extra_body")
                cfg = cfg.with_endpoint(name, url, res.model, api_key=res.api_key, extra_body=extra)
        missing = cfg.embedded_aliases()
        if missing:
            raise ConfigError(
                f"model alias(es) {sorted(missing)} are embedded models with no endpoint; start their servers and "
                "pass "
                "them as agl.LLM resources named after the alias (training.gather does this) or as `endpoints=`"
            )
        return cfg

    #: Set when Ctrl-C interrupted a rollout of this runner (read by :class:`InterruptedRolloutGuard`).
    interrupted: bool = False

    def rollout(self, task: dict[str, Any], resources: agl.NamedResources, rollout: agl.Rollout) -> float:
        """Answer ``task`` with the society and return the reward in the reward config's range.

        Raises:
            ValueError: a task without ``task_id``/``question``/``gold_sql``, or a bad ``agent``.
            RolloutFailed: an infrastructure failure (the attempt is marked ``failed``).
            KeyboardInterrupt: passed through after setting :attr:`interrupted`.
        """
        try:
            return self._rollout(task, resources, rollout)
        except KeyboardInterrupt:
            self.interrupted = True
            raise

    def _rollout(self, task: dict[str, Any], resources: agl.NamedResources, rollout: agl.Rollout) -> float:
        for key in ("task_id", "question", "gold_sql"):
            if not task.get(key):
                raise ValueError(f"rollout input lacks {key!r}; build tasks with training.agent.task_from_example")
        db_path = _task_db_path(task, self.data_dir)
        cfg = self.config_for(resources, rollout)
        agent = str(task.get("agent") or "society")
        if agent not in ("society", "juniors"):
            raise ValueError(f"task {task['task_id']}: agent {agent!r}; use 'society' or 'juniors'")
        resample = task.get("junior_sampling")
        if resample:
            cfg = with_junior_sampling(cfg, temperature=float(resample["temperature"]), seed=int(resample["seed"]))
        if task.get("juniors"):  # after the sampling: a junior keeps the seed it has in a draw of all juniors
            cfg = with_only_juniors(cfg, task["juniors"])
        rationalize = bool(task.get("rationalize"))
        if rationalize and agent != "juniors":
            raise ValueError(f"task {task['task_id']}: rationalize needs agent 'juniors' (a hinted society run "
                             "would also teach the senior and the supervisor from hinted candidates)")
        tracer = self._active_tracer()
        handler = tracer.get_langchain_handler() if tracer is not None else None
        meta = dict(getattr(rollout, "metadata", None) or {})
        # One LangSmith trace per rollout when LANGSMITH_TRACING/LANGSMITH_API_KEY are set; a no-op otherwise.
        with rollout_trace(
            run_id=str(meta.get("run_id", rollout.rollout_id)),
            phase=str(meta.get("phase", rollout.mode or "gather")),
            question_id=str(task["task_id"]),
            db_id=str(task.get("db_id") or ""),
            inputs={"question": task["question"]},
        ) as trace:
            run = run_society(
                task["question"], db_path, cfg,
                question_id=str(task["task_id"]), db_id=task.get("db_id"),
                callbacks=[handler] if handler is not None else None,
                metadata={"rollout_id": rollout.rollout_id, "task_id": str(task["task_id"])}, agent=agent,
                junior_hint=task["gold_sql"] if rationalize else None,
            )
            reward = compute_reward(run.final_sql, task["gold_sql"], db_path, self.reward_config)
            trace.set_reward(reward.total)
        agl.emit_object(_jsonable(run.to_record()), attributes={f"{ATTR}.kind": KIND_SOCIETY_RUN,
                                                                f"{ATTR}.task_id": str(task["task_id"])})
        agl.emit_annotation({**role_outcome_attributes(run, task["gold_sql"], db_path, reward),
                             f"{ATTR}.agent": agent, f"{ATTR}.resample": int(bool(resample)),
                             f"{ATTR}.rationalized": int(rationalize),
                             f"{ATTR}.source": rollout_source(agent, resample=bool(resample),
                                                              rationalized=rationalize)})
        broken = infrastructure_failure(run)
        if broken:
            raise RolloutFailed(f"task {task['task_id']}: {broken}")
        return float(reward.total)

    def _active_tracer(self) -> Any:
        """The runner's tracer, or None when called outside a runner (e.g. directly in a test)."""
        try:
            return self.tracer
        except (ValueError, AttributeError):
            return None


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _jsonable(obj: Any) -> Any:
    """Drop values JSON cannot hold (bytes from SQLite BLOBs) so ``emit_object`` never fails."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, str):
        return _CTRL.sub("", obj)
    return obj
