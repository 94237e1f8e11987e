"""LangSmith: one trace per rollout, tagged and scored, and pulling traces back into the local format.

Sending (:func:`rollout_trace`). With ``LANGSMITH_API_KEY`` set **and** ``LANGSMITH_TRACING=true``
(the ``LANGCHAIN_*`` spellings are accepted too, as by the ``langsmith`` client itself), each
rollout becomes one LangSmith trace: a root run named ``rollout`` (``run_type="chain"``) tagged
``run:<run id>``, ``phase:<phase>``, ``question:<question id>``, ``db:<db_id>``, with the same four
values as metadata (``sqlsociety_run_id``, ``phase``, ``question_id``, ``db_id``). The society's
LangGraph graph invoked inside the ``with`` block nests under that root by itself
(langchain-core reads the active LangSmith run), so nodes/roles, LLM calls and tool calls are
child runs. When the block ends the rollout's reward is attached as feedback
(``key="reward"``, ``score`` in [0, 1]; the ``langsmith`` client rounds scores to 4 decimals, the
exact value is also in the root run's outputs and metadata as ``reward``), and EX as ``key="ex"``
when given.

Without a key, or with tracing off, :func:`rollout_trace` yields a no-op handle: no
``langsmith.Client`` is created and nothing is sent.

Pulling (:func:`pull_traces`). ``sqlsociety traces pull --project P --run-id R`` asks LangSmith
(through ``langsmith.Client``, so ``LANGSMITH_ENDPOINT`` is honoured) for the root runs tagged
``run:R`` — or, when ``R`` is a LangSmith run/trace UUID, for that trace — then for every run of
each trace and the root's feedback, and turns them into span records
(:mod:`evaluation.tracing.trace_records`): the LangSmith run id is kept in ``langsmith.run_id``, the trace UUID
becomes the 32-hex ``trace_id``, each feedback becomes an ``agentlightning.reward`` span
(``key == "reward"``) or an annotation span, so ``traces show`` renders pulled traces like
local ones.

Reading uses ``Client.list_runs`` / ``Client.list_feedback`` (``POST /runs/query``,
``GET /feedback``): ``list_runs`` is marked deprecated in langsmith 0.15 in favour of
``client.runs.query_v2``, which needs a LangSmith backend >= 0.16; the classic query works on
the hosted service and older self-hosted ones, so it is used here with that warning silenced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tools.files import atomic_writer

logger = logging.getLogger(__name__)

#: Name of each rollout's root run.
ROOT_RUN_NAME = "rollout"
_TRUE = {"1", "true", "yes", "on"}


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def tracing_enabled() -> bool:
    """True when an API key is set and LangSmith tracing is switched on in the environment."""
    key = _env("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
    flag = (
        _env("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING") or ""
    ).lower()
    return bool(key) and flag in _TRUE


def disable_tracing_without_key() -> bool:
    """Switch LangSmith tracing off process-wide when the tracing flag is on but no key is set.

    langchain-core starts its LangSmith tracer from ``LANGSMITH_TRACING=true`` alone and then
    contacts the endpoint without credentials; call this once at start-up (the CLI does) so
    that "no key" really means "nothing sent". Returns True when it changed the environment.
    """
    if _env("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
        return False
    changed = False
    for name in ("LANGSMITH_TRACING", "LANGSMITH_TRACING_V2", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        if (os.environ.get(name) or "").lower() in _TRUE:
            os.environ[name] = "false"
            changed = True
    return changed


def default_project() -> str:
    """The project runs go to: ``$LANGSMITH_PROJECT`` (or ``$LANGCHAIN_PROJECT``), else ``"sqlsociety"``."""
    return _env("LANGSMITH_PROJECT", "LANGCHAIN_PROJECT") or "sqlsociety"


def rollout_tags(run_id: str, phase: str, question_id: str, db_id: str) -> list[str]:
    """The tags of a rollout's root run: ``run:<id>``, ``phase:<p>``, ``question:<q>``, ``db:<db>``."""
    return [f"run:{run_id}", f"phase:{phase}", f"question:{question_id}", f"db:{db_id}"]


_client: Any = None
_project_ids: dict[str, str] = {}


def get_client() -> Any:
    """The process's ``langsmith.Client`` (created on first use from the environment).

    Raises:
        RuntimeError: when no API key is set (nothing is created then).
    """
    global _client
    if not _env("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
        raise RuntimeError("LANGSMITH_API_KEY is not set; export it (and LANGSMITH_TRACING=true) to use LangSmith")
    if _client is None:
        import langsmith

        _client = langsmith.Client()
    return _client


def reset_client() -> None:
    """Flush and forget the cached client (tests, or after changing ``LANGSMITH_ENDPOINT``)."""
    global _client
    if _client is not None:
        with contextlib.suppress(Exception):
            _client.flush()
    _client = None
    _project_ids.clear()


def project_id(client: Any, name: str) -> str | None:
    """The id of project ``name``, created when missing (cached per process); None when LangSmith
    cannot be reached (feedback is then sent without it, as older servers accept)."""
    if name not in _project_ids:
        try:
            import langsmith.utils as ls_utils

            try:
                _project_ids[name] = str(client.read_project(project_name=name).id)
            except ls_utils.LangSmithNotFoundError:
                _project_ids[name] = str(client.create_project(name).id)
        except Exception:
            logger.warning("could not resolve LangSmith project %r; feedback goes without its id", name, exc_info=True)
            return None
    return _project_ids[name]


@dataclass
class RolloutHandle:
    """What :func:`rollout_trace` yields.

    Attributes:
        enabled: False when nothing is sent (no key / tracing off).
        run_tree: the root ``langsmith.RunTree`` (None when disabled).
        reward: set with :meth:`set_reward`; posted as feedback when the block ends.
        ex: set with :meth:`set_reward`; posted as feedback ``ex`` when not None.
    """

    enabled: bool
    run_tree: Any = None
    reward: float | None = None
    ex: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def trace_id(self) -> str | None:
        """The LangSmith trace id (UUID string) of this rollout, or None when disabled."""
        return None if self.run_tree is None else str(self.run_tree.trace_id)

    def end(self, outputs: Mapping[str, Any]) -> None:
        """Record the rollout's outputs on the root run (e.g. ``{"final_sql": ...}``)."""
        self.outputs.update(outputs)

    def set_reward(self, reward: float, *, ex: float | None = None) -> None:
        """Attach the rollout's reward (in [0, 1]) and optionally EX (0/1) as feedback on the root run.

        Raises:
            ValueError: reward not a finite number.
        """
        r = float(reward)
        if r != r or r in (float("inf"), float("-inf")):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        self.reward = r
        self.ex = None if ex is None else float(ex)


@contextlib.contextmanager
def rollout_trace(
    *,
    run_id: str,
    phase: str,
    question_id: str,
    db_id: str,
    inputs: Mapping[str, Any] | None = None,
    project: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[RolloutHandle]:
    """Make the enclosed work one LangSmith trace (see the module docstring); no-op without a key.

    Args:
        run_id: the training/eval run id (run directory name).
        phase: phase or stage name (``1-gather``, ``eval-baseline``, ...).
        question_id: task id, e.g. ``dev-17``.
        db_id: Spider database id.
        inputs: root run inputs (e.g. ``{"question": ...}``).
        project: LangSmith project; default :func:`default_project`.
        metadata: extra metadata for the root run.

    Yields:
        A :class:`RolloutHandle`; call ``set_reward`` before the block ends.
    """
    import langsmith as ls

    if not tracing_enabled():
        # langchain-core would otherwise still start its own LangSmith tracer whenever
        # LANGSMITH_TRACING=true, even with no key (it contacts the endpoint); switch it off here.
        with ls.tracing_context(enabled=False):
            yield RolloutHandle(enabled=False)
        return

    client = get_client()
    project = project or default_project()
    pid = project_id(client, project)
    md = {"sqlsociety_run_id": run_id, "phase": phase, "question_id": question_id, "db_id": db_id, **(metadata or {})}
    handle = RolloutHandle(enabled=True)
    with ls.trace(
        ROOT_RUN_NAME,
        run_type="chain",
        inputs=dict(inputs or {}),
        project_name=project,
        tags=rollout_tags(run_id, phase, question_id, db_id),
        metadata=md,
        client=client,
    ) as rt:
        handle.run_tree = rt
        try:
            yield handle
        finally:
            outputs = dict(handle.outputs)
            if handle.reward is not None:
                outputs["reward"] = handle.reward
                rt.add_metadata({"reward": handle.reward})
            rt.end(outputs=outputs)
    if handle.reward is not None:
        _post_feedback(client, rt, pid, "reward", handle.reward)
    if handle.ex is not None:
        _post_feedback(client, rt, pid, "ex", handle.ex)


def _post_feedback(client: Any, rt: Any, pid: str | None, key: str, score: float) -> None:
    try:
        with warnings.catch_warnings():
            if pid is None:  # older servers: feedback without a session id still works, with a warning
                warnings.simplefilter("ignore")
            client.create_feedback(
                run_id=rt.id, trace_id=rt.trace_id, key=key, score=score, comment="sqlsociety rollout", session_id=pid
            )
    except Exception:  # LangSmith being down must not fail a rollout
        logger.exception("could not post %s feedback to LangSmith", key)


def flush() -> None:
    """Block until queued runs are sent (call before the process exits); no-op without a client."""
    if _client is not None:
        _client.flush()


# --------------------------------------------------------------------------- pull


def _is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
        return True
    except ValueError:
        return False


def _ns(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1e9)


def _jsonish(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return json.dumps(v, ensure_ascii=False, default=str)


def _message_parts(msg: Any) -> tuple[str, str]:
    """(role, content) of a LangChain-serialised or OpenAI-style message dict."""
    if isinstance(msg, Mapping):
        kw = msg.get("kwargs") if isinstance(msg.get("kwargs"), Mapping) else msg
        role = kw.get("type") or kw.get("role") or (msg.get("id") or ["?"])[-1]
        content = kw.get("content", "")
        return str(role), content if isinstance(content, str) else json.dumps(content, default=str)
    return "?", str(msg)


def _llm_attributes(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    msgs = inputs.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[0], list):
        msgs = msgs[0]
    if isinstance(msgs, list):
        for i, m in enumerate(msgs):
            role, content = _message_parts(m)
            attrs[f"gen_ai.prompt.{i}.role"] = role
            attrs[f"gen_ai.prompt.{i}.content"] = content
    elif isinstance(inputs.get("prompts"), list):
        for i, p in enumerate(inputs["prompts"]):
            attrs[f"gen_ai.prompt.{i}.role"] = "user"
            attrs[f"gen_ai.prompt.{i}.content"] = str(p)
    gens = outputs.get("generations")
    if isinstance(gens, list) and gens and isinstance(gens[0], list):
        gens = gens[0]
    if isinstance(gens, list):
        for i, g in enumerate(gens):
            text = g.get("text") if isinstance(g, Mapping) else str(g)
            if not text and isinstance(g, Mapping) and g.get("message") is not None:
                text = _message_parts(g["message"])[1]
            attrs[f"gen_ai.completion.{i}.role"] = "assistant"
            attrs[f"gen_ai.completion.{i}.content"] = text or ""
    return attrs


def run_to_record(run: Any, project: str, rollout_key: str) -> dict[str, Any]:
    """One LangSmith ``Run`` (``langsmith.schemas.Run``) as a span record
    (see :mod:`evaluation.tracing.trace_records`).

    Args:
        run: the run.
        project: its project name (kept in the resource).
        rollout_key: value for the ``agentlightning.rollout_id`` resource attribute (the
            root's ``rollout_id`` metadata when set, else the trace id) so records group by rollout.
    """
    inputs = dict(run.inputs or {})
    outputs = dict(run.outputs or {})
    md = dict((run.extra or {}).get("metadata") or {})
    attrs: dict[str, Any] = {
        "langsmith.run_id": str(run.id),
        "langsmith.run_type": run.run_type,
        "langsmith.tags": list(run.tags or []),
        "input.value": _jsonish(inputs),
        "output.value": _jsonish(outputs),
    }
    for k, v in md.items():
        attrs[f"langsmith.metadata.{k}"] = _jsonish(v)
    if md.get("langgraph_node"):
        attrs["langgraph.node"] = str(md["langgraph_node"])
    if md.get("role"):
        attrs["sqlsociety.role"] = str(md["role"])
    if run.run_type == "llm":
        attrs.update(_llm_attributes(inputs, outputs))
        if run.prompt_tokens is not None:
            attrs["gen_ai.usage.prompt_tokens"] = int(run.prompt_tokens)
        if run.completion_tokens is not None:
            attrs["gen_ai.usage.completion_tokens"] = int(run.completion_tokens)
        model = md.get("ls_model_name")
        if model:
            attrs["gen_ai.request.model"] = str(model)
    elif run.run_type == "tool":
        attrs["langchain.tool.name"] = run.name
        tin = inputs.get("input", inputs.get("sql", inputs))
        attrs["langchain.tool.input"] = _jsonish(tin) if not isinstance(tin, str) else tin
        tout = outputs.get("output", outputs)
        attrs["langchain.tool.output"] = _jsonish(tout) if not isinstance(tout, str) else tout
    if run.error:
        attrs["error.message"] = str(run.error)
    return {
        "trace_id": uuid.UUID(str(run.trace_id)).hex,
        "span_id": uuid.UUID(str(run.id)).hex[16:],
        "parent_span_id": uuid.UUID(str(run.parent_run_id)).hex[16:] if run.parent_run_id else None,
        "name": run.name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time_unix_nano": _ns(run.start_time),
        "end_time_unix_nano": _ns(run.end_time),
        "attributes": attrs,
        "events": [],
        "links": [],
        "status": {"code": "STATUS_CODE_ERROR" if run.error else "STATUS_CODE_OK", "message": run.error or ""},
        "resource": {
            "attributes": {
                "agentlightning.rollout_id": rollout_key,
                "service.name": "langsmith",
                "langsmith.project": project,
            }
        },
    }


def feedback_to_record(fb: Any, root_record: Mapping[str, Any]) -> dict[str, Any]:
    """A LangSmith feedback on the root run as a child span record: ``agentlightning.reward``
    with ``agentlightning.reward.0.{name,value}`` for key ``reward``, else an annotation span
    with ``feedback.<key>`` = score."""
    t = _ns(fb.created_at) or root_record.get("end_time_unix_nano")
    if fb.key == "reward":
        name = "agentlightning.reward"
        attrs: dict[str, Any] = {"agentlightning.reward.0.name": "reward", "agentlightning.reward.0.value": fb.score}
    else:
        name = "agentlightning.annotation"
        attrs = {f"feedback.{fb.key}": fb.score if fb.score is not None else _jsonish(fb.value)}
    attrs["langsmith.feedback_id"] = str(fb.id)
    return {
        "trace_id": root_record["trace_id"],
        "span_id": uuid.UUID(str(fb.id)).hex[16:],
        "parent_span_id": root_record["span_id"],
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time_unix_nano": t,
        "end_time_unix_nano": t,
        "attributes": attrs,
        "events": [],
        "links": [],
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "resource": dict(root_record["resource"]),
    }


def pull_traces(
    project: str, run_id: str, *, client: Any = None, limit: int = 1000
) -> dict[str, list[dict[str, Any]]]:
    """Fetch rollouts' traces from LangSmith as span records.

    Args:
        project: LangSmith project name.
        run_id: a sqlsociety run id (roots tagged ``run:<run_id>``) or a LangSmith trace/run UUID.
        client: a ``langsmith.Client``; default :func:`get_client`.
        limit: at most this many rollouts.

    Returns:
        rollout key -> span records (runs of the trace plus its feedback), roots first.

    Raises:
        RuntimeError: no API key (and no client given).
        LookupError: nothing found (names the project and the run id).
    """
    client = client or get_client()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if _is_uuid(run_id):
            roots = list(client.list_runs(project_name=project, trace_id=run_id, is_root=True, limit=1))
            if not roots:
                roots = list(client.list_runs(project_name=project, run_ids=[run_id], limit=1))
        else:
            tag = json.dumps(f"run:{run_id}")
            roots = list(client.list_runs(project_name=project, is_root=True, filter=f"has(tags, {tag})", limit=limit))
        if not roots:
            raise LookupError(f"no LangSmith trace for run id {run_id!r} in project {project!r}")
        out: dict[str, list[dict[str, Any]]] = {}
        for root in roots:
            runs = list(client.list_runs(project_name=project, trace_id=root.trace_id))
            if not any(r.id == root.id for r in runs):
                runs.insert(0, root)
            md = dict((root.extra or {}).get("metadata") or {})
            key = str(md.get("rollout_id") or uuid.UUID(str(root.trace_id)).hex)
            records = [
                run_to_record(r, project, key)
                for r in sorted(runs, key=lambda r: (r.start_time, r.dotted_order or ""))
            ]
            root_rec = next(r for r in records if r["attributes"]["langsmith.run_id"] == str(root.id))
            for fb in client.list_feedback(run_ids=[root.id]):
                records.append(feedback_to_record(fb, root_rec))
            out[key] = records
    return out


def write_records(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike[str]) -> int:
    """Write pulled span records as JSON lines (the ``traces export`` format), atomically (the file
    appears only once complete). Returns the count.

    Raises:
        OSError: ``path`` cannot be written (it is then left as it was).
    """
    n = 0
    with atomic_writer(path) as fh:
        for records in groups.values():
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                n += 1
    return n
