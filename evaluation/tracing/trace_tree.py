"""A rollout's span records as a tree::

    rollout → node (LangGraph node / role) → LLM call (prompt, response, tokens, latency)
            → tool call (SQL, result or error) … → reward, plus a per-role credit branch.

:func:`build_tree` builds it from span records (:mod:`evaluation.tracing.trace_records`), leaving out the
wrapper spans of LangChain/LangGraph internals; :class:`RolloutTrace` holds it with the reward and
per-role credit it carries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.tracing.trace_records import (
    classify,
    llm_usage,
    node_name,
    record_rollout_id,
    reward_value,
    role_credit_from_attributes,
    span_attributes,
    span_role,
)

#: Wrapper spans of LangChain/LangGraph internals that carry no information of their own; their
#: children are lifted to their parent when the tree is built (``prune=True``).
NOISE_NAME_PREFIXES = (
    "RunnableSequence",
    "RunnableLambda",
    "RunnableParallel",
    "RunnableAssign",
    "ChannelWrite",
    "ChannelRead",
    "_write",
    "_route",
    "Branch",
    "branch:",
    "__start__",
    "StrOutputParser",
    "ChatPromptTemplate",
    "PromptTemplate",
    "after_",
)


@dataclass
class TraceNode:
    """One span in a rollout's tree.

    Attributes:
        record: the span record.
        kind: :func:`evaluation.tracing.trace_records.classify` result.
        children: child nodes in start-time order.
    """

    record: dict[str, Any]
    kind: str
    children: list[TraceNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.record.get("name", "?"))

    @property
    def latency_s(self) -> float | None:
        s, e = self.record.get("start_time_unix_nano"), self.record.get("end_time_unix_nano")
        return None if s is None or e is None else (e - s) / 1e9

    def walk(self) -> Iterator[TraceNode]:
        """This node, then its descendants depth-first."""
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class RolloutTrace:
    """A rollout's spans as a forest, plus what the tree summarises.

    Attributes:
        rollout_id: the rollout id ("" when unknown).
        roots: top-level nodes (spans whose parent is not in the rollout) in start order.
        reward: the final reward (last reward span, Agent Lightning's ``find_final_reward``
            convention), or None.
        role_credit: role -> outcome dict from annotation spans (``role_outcomes.<role>.<k>``
            or ``roles.<role>.<k>`` attributes), e.g. ``{"junior_direct": {"ex": 1.0}}``.
        annotations: every non-reward annotation attribute, merged in span order.
        info: rollout facts from the store (task id, status, phase, ...), when known.
    """

    rollout_id: str
    roots: list[TraceNode]
    reward: float | None
    role_credit: dict[str, dict[str, Any]]
    annotations: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def nodes(self) -> Iterator[TraceNode]:
        """All nodes depth-first."""
        for r in self.roots:
            yield from r.walk()

    def node_names(self) -> list[str]:
        """Names of the node (LangGraph node / role) spans, in visit order, with repeats."""
        return [node_name(n.record) for n in self.nodes() if n.kind == "node"]

    def visits(self) -> list[str]:
        """Graph node visits, ``"node"`` or ``"node/subnode"`` for subgraph nodes (the society's
        ``SocietyRun.path`` format), in start-time order; the graph's own root span is not a visit."""
        out: list[str] = []

        def rec(n: TraceNode, prefix: str) -> None:
            for c in n.children:
                if c.kind != "node":
                    continue
                name = node_name(c.record)
                if any(g.kind == "node" for g in c.children):
                    rec(c, f"{prefix}{name}/")
                else:
                    out.append(prefix + name)

        for r in self.roots:
            if r.kind == "node":
                rec(r, "")
        return out

    def llm_calls(self) -> int:
        """Number of LLM-call spans."""
        return sum(1 for n in self.nodes() if n.kind == "llm")

    def tokens(self) -> int:
        """Prompt + completion tokens summed over LLM-call spans (missing counts as 0)."""
        total = 0
        for n in self.nodes():
            if n.kind == "llm":
                p, c = llm_usage(n.record)
                total += (p or 0) + (c or 0)
        return total


def _is_noise(record: Mapping[str, Any]) -> bool:
    if str(span_attributes(record).get("agentops.span.kind", "")).lower() == "session":  # AgentOps' per-trace wrappers
        return True
    name = node_name(record)
    return any(name.startswith(p) for p in NOISE_NAME_PREFIXES)


def node_role(node: TraceNode) -> str | None:
    """The role instance a node acted as: the one role every LLM/tool call under it belongs to
    (from the calls' ``role_instance``/``role`` metadata), else None."""
    roles = {span_role(n.record) for n in node.walk() if n.kind in ("llm", "tool")}
    roles.discard(None)
    return roles.pop() if len(roles) == 1 else None


def build_tree(records: Sequence[Mapping[str, Any]], *, prune: bool = True, rollout_id: str = "") -> RolloutTrace:
    """Build a rollout's tree from its span records.

    Args:
        records: span records of one rollout (any order).
        prune: lift the children of LangChain/LangGraph wrapper spans (:data:`NOISE_NAME_PREFIXES`)
            and drop those wrappers.
        rollout_id: id to report; default: taken from the records.

    Returns:
        A :class:`RolloutTrace`; the reward is the last reward span's value in start order.
    """
    recs = sorted(
        (dict(r) for r in records),
        key=lambda r: (r.get("start_time_unix_nano") or 0, r.get("end_time_unix_nano") or 0),
    )
    nodes = {r["span_id"]: TraceNode(r, classify(r)) for r in recs}
    parent_of = {r["span_id"]: r.get("parent_span_id") for r in recs}

    def dropped(sid: str) -> bool:
        """Spans left out of the pruned tree: wrappers, a node repeated as its own child (a
        LangGraph subgraph inside the node of the same name), and the client-library span of an
        LLM call nested in the framework's LLM span (same call, counted once)."""
        if not prune:
            return False
        node = nodes[sid]
        p = parent_of.get(sid)
        parent = nodes.get(p) if p else None
        if node.kind in ("node", "other") and _is_noise(node.record):
            return True
        if node.kind == "node" and parent is not None and parent.kind == "node":
            if node_name(parent.record) == node_name(node.record):
                return True
        return node.kind == "llm" and parent is not None and parent.kind == "llm"

    def effective_parent(sid: str) -> str | None:
        p = parent_of.get(sid)
        while p is not None and p in nodes and dropped(p):
            p = parent_of.get(p)
        return p if p in nodes else None

    roots: list[TraceNode] = []
    for r in recs:
        sid = r["span_id"]
        if dropped(sid):
            continue
        p = effective_parent(sid)
        (nodes[p].children if p else roots).append(nodes[sid])

    reward = None
    annotations: dict[str, Any] = {}
    for r in recs:
        kind = nodes[r["span_id"]].kind
        if kind == "reward":
            reward = reward_value(r)
        elif kind == "annotation":
            annotations.update(span_attributes(r))
    rid = rollout_id or next((x for x in (record_rollout_id(r) for r in recs) if x), "")
    return RolloutTrace(
        rollout_id=rid,
        roots=roots,
        reward=reward,
        role_credit=role_credit_from_attributes(annotations),
        annotations=annotations,
    )
