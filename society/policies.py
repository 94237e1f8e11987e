"""Supervisor policies: how the supervisor picks one junior candidate.

Registry :data:`POLICIES` maps a config name to a policy class; each class takes its
``options`` (the supervisor role's ``options:`` mapping) as keyword arguments and offers
``choose(question, candidates, context) -> PolicyChoice``.

==================  ============================================================================
name                rule
==================  ============================================================================
``first``           the first candidate that executed (else the first with SQL)
``random``          uniform among candidates that executed (else among those with SQL); ``seed``
``majority_vote``   the largest group of executed candidates with equal result digests (ties: a
                    non-empty result, then junior order) -- self-consistency over execution results
                    (Wang et al., 2023, "Self-Consistency Improves Chain of Thought Reasoning")
``llm``             the supervisor's model reads the numbered candidates and names one; falls back
                    to ``majority_vote`` when the reply has no valid number; skips the call when
                    only one candidate has SQL or all executed candidates agree
``bandit``          a trained contextual bandit, loaded once per path with ``society.bandit.load_policy``
                    (``options: {path: ...}``); its ``choose(question, candidates) -> (index, info)``
``epsilon_greedy``  exploration around a ``base`` policy while gathering bandit data (``epsilon``,
                    ``seed``); records the propensity of each pick
==================  ============================================================================
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from society.bandit import load_policy
from society.candidate import Candidate, candidate_context, epsilon_greedy, majority_vote, usable


@dataclass
class PolicyContext:
    """What a policy may use besides the question and candidates.

    Attributes:
        schema_text: the prompt-ready schema.
        ask_llm: for the ``llm`` policy: sends chat messages through the supervisor's model
            (with retries, tracing and accounting) and returns the reply text.
        render_prompt: builds the supervisor's chat messages from ``candidates`` text.
    """

    schema_text: str = ""
    ask_llm: Callable[[list[Any]], str] | None = None
    render_prompt: Callable[[str], list[Any]] | None = None


@dataclass
class PolicyChoice:
    """A policy's decision: ``index`` into the candidates (-1: none usable), one ``score`` per
    candidate (policy-specific, higher is better) and ``info`` for the trace."""

    index: int
    scores: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class SupervisorPolicy:
    """Base class: subclasses set ``name`` and implement :meth:`choose`."""

    name: ClassVar[str] = ""
    needs_llm: ClassVar[bool] = False

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        """Pick a candidate. Never raises for odd candidates: returns index -1 when none has SQL."""
        raise NotImplementedError


class FirstPolicy(SupervisorPolicy):
    """The first usable candidate (baseline)."""

    name = "first"

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        idx = usable(candidates)
        pick = idx[0] if idx else -1
        return PolicyChoice(pick, [1.0 if i == pick else 0.0 for i in range(len(candidates))])


class RandomPolicy(SupervisorPolicy):
    """Uniform among usable candidates (baseline); ``seed`` makes it reproducible."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        idx = usable(candidates)
        pick = self._rng.choice(idx) if idx else -1
        p = 1.0 / len(idx) if idx else 0.0
        return PolicyChoice(pick, [p if i in idx else 0.0 for i in range(len(candidates))])


class MajorityVotePolicy(SupervisorPolicy):
    """Largest agreement group over execution-result digests; score = the candidate's vote share."""

    name = "majority_vote"

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        pick, votes, ok = majority_vote(candidates)
        if not ok:
            return PolicyChoice(pick, [0.0] * len(candidates), {"fallback": "no candidate executed"})
        digests = [str(c["result_digest"]) for c in candidate_context(candidates)]
        scores = [votes[d] / len(ok) if i in ok else 0.0 for i, d in enumerate(digests)]
        return PolicyChoice(pick, scores, {"groups": len(votes), "votes": votes[digests[pick]]})


class LLMPolicy(SupervisorPolicy):
    """The supervisor model names the best candidate (1-based number in its reply).

    Options:
        skip_when_unanimous: don't call the model when every executed candidate has the same result.
    """

    name = "llm"
    needs_llm = True

    def __init__(self, skip_when_unanimous: bool = True) -> None:
        self.skip_when_unanimous = skip_when_unanimous

    @staticmethod
    def render_candidates(candidates: Sequence[Candidate], shown: Sequence[int]) -> str:
        """Numbered list, e.g. ``"1. SELECT ...\\n   -> 3 rows"``; only ``shown`` candidates, numbered 1..k."""
        lines = []
        for k, i in enumerate(shown, 1):
            c = candidates[i]
            outcome = f"{c.row_count} rows" if c.ok else f"error: {(c.error or '')[:80]}"
            lines.append(f"{k}. {c.sql}\n   -> {outcome}")
        return "\n".join(lines)

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        shown = [i for i, c in enumerate(candidates) if c.sql]
        if len(shown) <= 1:
            pick = shown[0] if shown else -1
            return PolicyChoice(
                pick, [1.0 if i == pick else 0.0 for i in range(len(candidates))], {"skipped": "single candidate"}
            )
        digests = {candidates[i].result_digest for i in shown if candidates[i].ok}
        if self.skip_when_unanimous and len(digests) == 1 and all(candidates[i].ok for i in shown):
            return PolicyChoice(shown[0], [1.0] * len(candidates), {"skipped": "unanimous"})
        if context.ask_llm is None or context.render_prompt is None:
            raise ValueError(
                "the llm policy needs PolicyContext.ask_llm and render_prompt (set by the supervisor node)"
            )
        reply = context.ask_llm(context.render_prompt(self.render_candidates(candidates, shown)))
        m = re.search(r"\b(\d+)\b", reply or "")
        k = int(m.group(1)) if m else 0
        if 1 <= k <= len(shown):
            pick = shown[k - 1]
            return PolicyChoice(pick, [1.0 if i == pick else 0.0 for i in range(len(candidates))], {"reply": reply})
        fb = MajorityVotePolicy().choose(question, candidates, context)
        fb.info.update({"reply": reply, "fallback": "no valid candidate number in the reply; used majority_vote"})
        return fb


class BanditPolicy(SupervisorPolicy):
    """A trained contextual bandit (the training pipeline's phase 4), loaded once per path.

    Options:
        path: the joblib file written by ``training.bandit`` (required).

    Raises (on first use):
        FileNotFoundError: ``path`` does not exist (train phase 4 first or fix the path).
    """

    name = "bandit"
    _cache: ClassVar[dict[str, Any]] = {}

    def __init__(self, path: str | None = None) -> None:
        if not path:
            raise ValueError("the bandit policy needs `options: {path: <policy.joblib>}` on the supervisor role")
        self.path = str(Path(path).expanduser())

    def _policy(self) -> Any:
        if self.path not in self._cache:
            if not Path(self.path).is_file():
                raise FileNotFoundError(
                    f"bandit policy {self.path} does not exist; run `sqlsociety train --phases 4` or fix options.path"
                )
            self._cache[self.path] = load_policy(self.path)
        return self._cache[self.path]

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        if not usable(candidates):
            return PolicyChoice(-1, [0.0] * len(candidates), {"fallback": "no candidate has SQL"})
        index, info = self._policy().choose(question, list(candidates))
        info = dict(info or {})
        scores = (
            info.get("scores") or info.get("probs") or [1.0 if i == index else 0.0 for i in range(len(candidates))]
        )
        return PolicyChoice(int(index), [float(s) for s in scores], info)


class EpsilonGreedyPolicy(SupervisorPolicy):
    """Explores around a base policy: with probability ``epsilon`` a uniformly random usable
    candidate, else the base policy's pick.

    The draw is seeded by ``(seed, question, candidate SQL)``, so a task replays identically on
    resume and different runner processes do not share one random stream.

    ``info`` records ``base_index``, ``explored`` and ``propensity``: the probability this policy
    had of choosing the returned index, ``(1 - ε)·[index == base] + ε / |usable|``, which the
    off-policy bandit estimators (inverse propensity scoring) need.

    Options (the supervisor role's ``options:``): ``base`` (policy name, default
    ``majority_vote``), ``base_options`` (its options), ``epsilon`` in [0, 1], ``seed``.
    """

    name = "epsilon_greedy"

    def __init__(
        self,
        base: str = "majority_vote",
        base_options: Mapping[str, Any] | None = None,
        epsilon: float = 0.1,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon={epsilon!r}: the exploration rate must be in [0, 1]")
        if base == self.name:
            raise ValueError("epsilon_greedy cannot wrap itself; set `base` to another policy")
        self.base_name = base
        self.base = make_policy(base, dict(base_options or {}))
        self.needs_llm = self.base.needs_llm  # type: ignore[misc]
        self.epsilon = float(epsilon)
        self.seed = int(seed)

    def choose(self, question: str, candidates: Sequence[Candidate], context: PolicyContext) -> PolicyChoice:
        base = self.base.choose(question, candidates, context)
        idx = usable(candidates)
        if not idx:
            return base
        rng = random.Random(f"{self.seed}|{question}|" + "|".join(c.sql or "" for c in candidates))
        pick, prop, explored = epsilon_greedy(rng, idx, base.index, self.epsilon)
        info = {**base.info, "base_policy": self.base_name, "base_index": base.index, "explored": explored,
                "epsilon": self.epsilon, "propensity": prop}
        return PolicyChoice(pick, base.scores, info)


#: Policy name -> class.
POLICIES: dict[str, type[SupervisorPolicy]] = {
    p.name: p for p in (FirstPolicy, RandomPolicy, MajorityVotePolicy, LLMPolicy, BanditPolicy, EpsilonGreedyPolicy)
}


def make_policy(name: str, options: dict[str, Any] | None = None) -> SupervisorPolicy:
    """Instantiate the policy ``name`` with ``options`` as keyword arguments.

    Raises:
        ValueError: unknown name, or options the policy does not take.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown supervisor policy {name!r}; known: {sorted(POLICIES)}")
    try:
        return POLICIES[name](**(options or {}))
    except TypeError as e:
        raise ValueError(f"bad options for supervisor policy {name!r}: {e}") from e
