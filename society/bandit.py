"""The supervisor's contextual bandit: the model that picks a junior candidate (trained in phase 4).

TRL style: :class:`BanditConfig` beside :class:`SupervisorBandit`; :func:`load_policy` gives the
object the supervisor role calls (``society.policies.BanditPolicy``). Phase 4 (``training.bandit``)
builds the samples, fits it and replays logged decisions offline (``compare_policies``).

Design
------
Each decision has a *context* (the question and its K candidates), an *action* (the chosen index)
and a *reward* (the chosen candidate's EX against gold). We model, per candidate,

    P(candidate is correct | its features)   -- scikit-learn ``SGDClassifier(loss="log_loss")``

and choose the candidate with the highest probability (a per-arm logistic model with shared
weights, as in LinUCB-style "disjoint features, shared parameters" bandits; the arms of one decision
compete through the argmax). Features of one candidate (:func:`featurize`):

* the SQL text: ``HashingVectorizer`` over SQL tokens, unigrams + bigrams (2**12 buckets);
* execution: ``executes``, ``empty`` (ran, 0 rows), ``log1p(row_count)`` scaled to [0, 1],
  ``single_row``, ``agreement`` = share of the *other* executed candidates with the same result
  digest (the self-consistency signal), ``plurality`` (its result group is the largest),
  ``fixed`` (rewritten after an error), SQL length;
* one-hot (hashed) tokens: ``persona=...``, ``junior=...``, ``error=...`` (error category), and
  question x SQL cross tokens (e.g. question says "how many" and the SQL has COUNT).

Learning from logs (:meth:`SupervisorBandit.fit`, incremental ``partial_fit``):

* full information (``feedback="full"``, used when each sample carries ``candidate_rewards``,
  i.e. every candidate's own EX was measured): one example per candidate, label
  ``reward >= threshold``; weight 1 in decisions where the choice matters (the usable
  candidates' rewards differ) and ``uncontested_weight`` (default 0.1) in the others. A decision
  whose candidates are all right or all wrong says nothing about *which* candidate to pick; in a
  pointwise model it mostly teaches question difficulty. Measured over 10 task-disjoint 70/30
  splits, as EX on the held-out contested decisions: 120 real Qwen2.5-Coder-0.5B society
  decisions -- weight 1.0: 76 %, 0.1: 85 % (= majority vote), 0.0: 85 %; 120 synthetic
  decisions of ``tests/test_bandit.py`` (gold vs mutated SQL) -- 1.0: 77 %, 0.1: 70 %, 0.0: 66 %
  (majority vote 43 %);
* bandit feedback (``feedback="bandit"``, only the chosen action's reward is known): one
  example for the chosen candidate, label ``reward >= threshold``, reward-weighted by the inverse
  propensity of the logging policy, ``w = min(1/p, max_importance_weight)`` (importance-weighted
  classification, the IPS reduction of off-policy learning: Bietti, Agarwal & Langford 2021,
  "A Contextual Bandit Bake-off", JMLR 22(133), §2).

Exploration while gathering (:meth:`SupervisorBandit.choose` with ``explore=True``):
epsilon-greedy (uniform among usable candidates with probability ``epsilon``), or Thompson-style
sampling through a bootstrap ensemble (``n_bootstrap`` heads trained with Poisson(1) weights,
Osband et al. 2016, "Deep Exploration via Bootstrapped DQN"; one head drawn per decision).
Either way ``info["propensity"]`` is the exact probability of the returned action, so the
logs can be learned from with IPS.

Samples (:func:`as_sample`) are ``training.adapter.BanditSample`` objects or their dicts:
``question``, ``candidates`` (feature dicts from ``training.adapter.candidate_features`` *or*
``society.candidate.Candidate`` objects/dicts), ``action``, ``reward``, optional
``candidate_rewards`` (one per candidate), ``propensity``, ``policy`` (logging policy name).
"""


from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import model_validator

from society.candidate import candidate_context, epsilon_greedy, usable
from tools.value_types import TypedSettings

__all__ = ["BanditConfig", "SupervisorBandit", "as_sample", "featurize", "load_policy"]

_FORMAT_VERSION = 1

#: Question keyword -> regex; SQL keyword -> regex (for the cross tokens).
_Q_CUES = {
    "howmany": r"\bhow many\b|\bnumber of\b|\bcount\b",
    "avg": r"\baverage\b|\bmean\b",
    "max": r"\bmaximum\b|\bhighest\b|\blargest\b|\bmost\b|\boldest\b|\blongest\b",
    "min": r"\bminimum\b|\blowest\b|\bsmallest\b|\bleast\b|\byoungest\b|\bshortest\b",
    "sum": r"\btotal\b|\bsum\b",
    "order": r"\border\b|\bsorted\b|\bdescending\b|\bascending\b|\balphabetical",
    "each": r"\beach\b|\bevery\b|\bper\b|\bfor all\b",
    "distinct": r"\bdistinct\b|\bdifferent\b|\bunique\b",
    "not": r"\bnot\b|\bwithout\b|\bnever\b|\bno\b",
    "top1": r"\bthe (most|least|highest|lowest|largest|smallest|oldest|youngest)\b",
}
_S_CUES = {
    "count": r"\bcount\s*\(",
    "avg": r"\bavg\s*\(",
    "max": r"\bmax\s*\(",
    "min": r"\bmin\s*\(",
    "sum": r"\bsum\s*\(",
    "orderby": r"\border\s+by\b",
    "limit": r"\blimit\b",
    "groupby": r"\bgroup\s+by\b",
    "distinct": r"\bdistinct\b",
    "not": r"\bnot\b|!=|<>|\bexcept\b",
    "join": r"\bjoin\b",
}


class BanditConfig(TypedSettings):
    """Settings of :class:`SupervisorBandit` (the ``bandit:`` section of a training profile): a
    pydantic model, so an unknown key is refused and a wrongly typed value named with the type it
    wants (:class:`tools.value_types.TypedSettings`).

    Attributes:
        feedback: ``"auto"`` (full information when samples carry ``candidate_rewards``, else
            bandit), ``"full"`` or ``"bandit"`` (see the module docstring).
        threshold: a reward >= this counts as a success label (EX rewards: 1.0 vs 0.0).
        uncontested_weight: full-information feedback: sample weight of the candidates of a
            decision whose usable candidates all have the same label (0 skips them; see the
            module docstring for the measurements behind the default).
        epochs: passes of ``partial_fit`` over the samples in :meth:`SupervisorBandit.fit`.
        alpha: L2 regularisation of the SGD classifier.
        max_importance_weight: clip of ``1/propensity`` in bandit feedback.
        exploration: ``"epsilon"`` or ``"thompson"`` (bootstrap heads), used when
            :meth:`~SupervisorBandit.choose` is called with ``explore=True``.
        epsilon: exploration rate of epsilon-greedy, in [0, 1].
        n_bootstrap: heads of the bootstrap ensemble (0: none; needed >= 2 for ``"thompson"``).
        sql_hash_bits / token_hash_bits: log2 of the hashed feature spaces.
        seed: SGD shuffling, bootstrap weights and exploration draws.
        held_out_contested: training (phase 4): contested decisions the bandit is judged on, >= 0.
            When the dev decisions of the untrained juniors hold fewer, whole train questions are
            held out of the fit until their first-draw decisions make up the rest
            (``training.bandit.hold_out_contested``, seeded with ``seed``); 0: dev decisions only.
        held_out_max_share: training: at most this share of the juniors-only train questions is held
            out for that, in (0, 1]. The default, 0.7, leaves 300 of 1,000 questions (with their
            rejection-sampling draws, ~600 decisions) to fit on, when ~16 % of first draws are
            contested and the dev decisions hold ~40 of the 150.

    Raises (as a pydantic ``ValidationError``, a ``ValueError``): an unknown or wrongly typed key, or
    a value out of the ranges above.
    """

    feedback: str = "auto"
    threshold: float = 0.5
    uncontested_weight: float = 0.1
    epochs: int = 5
    alpha: float = 1e-4
    max_importance_weight: float = 10.0
    exploration: str = "epsilon"
    epsilon: float = 0.1
    n_bootstrap: int = 0
    sql_hash_bits: int = 12
    token_hash_bits: int = 8
    seed: int = 0
    held_out_contested: int = 150
    held_out_max_share: float = 0.7

    @model_validator(mode="after")
    def _ranges(self) -> BanditConfig:
        if self.held_out_contested < 0:
            raise ValueError(f"BanditConfig.held_out_contested = {self.held_out_contested}; use a count >= 0")
        if not 0.0 < self.held_out_max_share <= 1.0:
            raise ValueError(f"BanditConfig.held_out_max_share = {self.held_out_max_share}; use a share in (0, 1]")
        if self.feedback not in ("auto", "full", "bandit"):
            raise ValueError(f"BanditConfig.feedback = {self.feedback!r}; use 'auto', 'full' or 'bandit'")
        if self.exploration not in ("epsilon", "thompson"):
            raise ValueError(f"BanditConfig.exploration = {self.exploration!r}; use 'epsilon' or 'thompson'")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"BanditConfig.epsilon = {self.epsilon}; must be in [0, 1]")
        if self.exploration == "thompson" and self.n_bootstrap < 2:
            raise ValueError("BanditConfig: exploration='thompson' needs n_bootstrap >= 2 heads")
        if not 0.0 <= self.uncontested_weight <= 1.0:
            raise ValueError(f"BanditConfig.uncontested_weight = {self.uncontested_weight}; must be in [0, 1]")
        if self.epochs < 1 or self.max_importance_weight < 1 or self.alpha <= 0:
            raise ValueError("BanditConfig: epochs >= 1, max_importance_weight >= 1 and alpha > 0 are required")
        if not (4 <= self.sql_hash_bits <= 20 and 4 <= self.token_hash_bits <= 16):
            raise ValueError("BanditConfig: sql_hash_bits in [4, 20] and token_hash_bits in [4, 16]")
        return self


# ============================================================================ features


def _plurality(ctx: Sequence[Mapping[str, Any]]) -> list[int]:
    votes = Counter(c.get("result_digest") for c in ctx if c.get("executes"))
    top = max(votes.values()) if votes else 0
    return [int(bool(c.get("executes")) and votes[c.get("result_digest")] == top and top > 1) for c in ctx]


_SQL_TOKEN = r"(?u)[A-Za-z_][A-Za-z0-9_]*|\*|[<>=!]+|\d+(?:\.\d+)?"


class _Featurizer:
    """Candidate contexts -> sparse feature rows (stateless: hashing, no vocabulary to fit)."""

    N_DENSE = 9

    def __init__(self, sql_bits: int, token_bits: int) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.sql = HashingVectorizer(
            n_features=2**sql_bits, ngram_range=(1, 2), lowercase=True, token_pattern=_SQL_TOKEN,
            alternate_sign=False, norm="l2",
        )
        self.tok = HashingVectorizer(
            n_features=2**token_bits, analyzer=lambda s: s.split(" ") if s else [], alternate_sign=False, norm=None,
        )

    @staticmethod
    def tokens(question: str, c: Mapping[str, Any]) -> str:
        q = (question or "").lower()
        s = (c.get("sql") or "").lower()
        toks = [f"persona={c.get('persona', '')}", f"junior={c.get('junior', '')}"]
        if not c.get("executes"):
            toks.append(f"error={c.get('error_category') or 'none'}")
        qs = [k for k, rx in _Q_CUES.items() if re.search(rx, q)]
        ss = [k for k, rx in _S_CUES.items() if re.search(rx, s)]
        toks += [f"q={k}" for k in qs] + [f"x={a}:{b}" for a in qs for b in ss]
        toks += [f"nx={a}:{b}" for a in qs for b in _S_CUES if b not in ss and a == b]
        return " ".join(t.replace(" ", "_") for t in toks)

    def transform(self, question: str, ctx: Sequence[Mapping[str, Any]]) -> Any:
        import numpy as np
        from scipy import sparse

        plural = _plurality(ctx)
        dense = np.array([
            [
                float(c.get("executes", 0)),
                float(c.get("empty", 0)),
                min(1.0, math.log1p(max(0, int(c.get("row_count", 0)))) / math.log1p(10_000)),
                float(bool(c.get("executes")) and int(c.get("row_count", 0)) == 1),
                float(c.get("agreement", 0.0)),
                float(plural[i]),
                float(c.get("fixed", 0)),
                min(1.0, len(c.get("sql") or "") / 400.0),
                float(bool(c.get("sql"))),
            ]
            for i, c in enumerate(ctx)
        ], dtype=np.float64).reshape(len(ctx), self.N_DENSE)
        xs = self.sql.transform([c.get("sql") or "" for c in ctx])
        xt = self.tok.transform([self.tokens(question, c) for c in ctx])
        return sparse.hstack([sparse.csr_matrix(dense), xs, xt], format="csr")


def featurize(question: str, candidates: Sequence[Any], config: BanditConfig | None = None) -> Any:
    """Sparse feature matrix (one row per candidate) as the bandit sees it (see the module docstring).

    Shape ``(len(candidates), 9 + 2**sql_hash_bits + 2**token_hash_bits)``.
    """
    cfg = config or BanditConfig()
    return _Featurizer(cfg.sql_hash_bits, cfg.token_hash_bits).transform(question, candidate_context(candidates))


# ============================================================================ samples


def as_sample(s: Any) -> dict[str, Any]:
    """Normalise one logged decision (``BanditSample`` or dict) to a dict with ``question``,
    ``candidates`` (context dicts), ``action``, ``reward``, ``candidate_rewards`` (list or None),
    ``propensity`` (default 1.0), ``policy`` (default ``""``), ``task_id``.

    Raises:
        ValueError: no candidates, an action out of range, a propensity outside (0, 1], or
            ``candidate_rewards`` of the wrong length.
    """
    d = asdict(s) if is_dataclass(s) and not isinstance(s, type) else dict(s) if isinstance(s, Mapping) else None
    if d is None:
        raise ValueError(f"a bandit sample must be a BanditSample or a mapping, got {type(s).__name__}")
    cands = candidate_context(d.get("candidates") or [])
    if not cands:
        raise ValueError(f"bandit sample {d.get('task_id', '?')} has no candidates")
    action = int(d.get("action", -1))
    if not 0 <= action < len(cands):
        raise ValueError(
            f"bandit sample {d.get('task_id', '?')}: action {action} is not an index of its {len(cands)} candidates"
        )
    prop = float(d.get("propensity", 1.0) or 1.0)
    if not 0.0 < prop <= 1.0:
        raise ValueError(f"bandit sample {d.get('task_id', '?')}: propensity {prop} must be in (0, 1]")
    cr = d.get("candidate_rewards")
    if cr is not None:
        cr = [float(x) for x in cr]
        if len(cr) != len(cands):
            raise ValueError(
                f"bandit sample {d.get('task_id', '?')}: {len(cr)} candidate_rewards for {len(cands)} candidates"
            )
    return {
        "task_id": str(d.get("task_id", "")),
        "question": str(d.get("question", "")),
        "candidates": cands,
        "action": action,
        "reward": float(d.get("reward", 0.0)),
        "candidate_rewards": cr,
        "propensity": prop,
        "policy": str(d.get("policy", "") or ""),
    }


# ============================================================================ the bandit


class SupervisorBandit:
    """Contextual bandit over junior candidates (see the module docstring).

    Args:
        config: :class:`BanditConfig`.

    Example::

        bandit = SupervisorBandit(BanditConfig())
        bandit.fit(adapter.to_bandit(archive))
        bandit.save("run/phases/4-bandit/policy.joblib")
        index, info = load_policy("run/.../policy.joblib").choose(question, candidates)
    """

    def __init__(self, config: BanditConfig | None = None) -> None:
        self.config = config or BanditConfig()
        self._feat = _Featurizer(self.config.sql_hash_bits, self.config.token_hash_bits)
        self.model: Any = self._new_model(self.config.seed)
        self.heads: list[Any] = [self._new_model(self.config.seed + 1 + k) for k in range(self.config.n_bootstrap)]
        self.n_updates = 0
        self.n_examples = 0
        self._rng = random.Random(self.config.seed)

    def _new_model(self, seed: int) -> Any:
        from sklearn.linear_model import SGDClassifier

        return SGDClassifier(loss="log_loss", alpha=self.config.alpha, random_state=seed)

    @property
    def fitted(self) -> bool:
        """True once :meth:`partial_fit` / :meth:`fit` has seen at least one example."""
        return self.n_examples > 0

    # ---------------------------------------------------------------------------- learning

    def _examples(self, samples: Sequence[Any]) -> tuple[Any, Any, Any]:
        import numpy as np
        from scipy import sparse

        xs, ys, ws = [], [], []
        for raw in samples:
            s = as_sample(raw)
            mode = self.config.feedback
            if mode == "auto":
                mode = "full" if s["candidate_rewards"] is not None else "bandit"
            if mode == "full" and s["candidate_rewards"] is None:
                raise ValueError(f"feedback='full' needs candidate_rewards; sample {s['task_id']} has none")
            w_dec = 1.0
            if mode == "full":
                labels = {int(s["candidate_rewards"][i] >= self.config.threshold) for i in usable(s["candidates"])}
                w_dec = 1.0 if len(labels) > 1 else self.config.uncontested_weight
                if w_dec <= 0:
                    continue
            x = self._feat.transform(s["question"], s["candidates"])
            if mode == "full":
                xs.append(x)
                ys += [int(r >= self.config.threshold) for r in s["candidate_rewards"]]
                ws += [w_dec] * x.shape[0]
            else:
                a = s["action"]
                xs.append(x[a])
                ys.append(int(s["reward"] >= self.config.threshold))
                ws.append(min(1.0 / s["propensity"], self.config.max_importance_weight))
        if not xs:
            return None, None, None
        return sparse.vstack(xs, format="csr"), np.asarray(ys, dtype=int), np.asarray(ws, dtype=float)

    def partial_fit(self, samples: Sequence[Any]) -> SupervisorBandit:
        """One incremental update (``SGDClassifier.partial_fit``) on ``samples``; returns self.

        Bootstrap heads get the same examples with Poisson(1) weights.
        """
        import numpy as np

        X, y, w = self._examples(samples)
        if X is None:
            return self
        self.model.partial_fit(X, y, classes=np.array([0, 1]), sample_weight=w)
        rng = np.random.default_rng(self.config.seed + self.n_updates)
        for h in self.heads:
            bw = w * rng.poisson(1.0, size=len(w))
            h.partial_fit(X, y, classes=np.array([0, 1]), sample_weight=bw)
        self.n_updates += 1
        self.n_examples += int(X.shape[0])
        return self

    def fit(self, samples: Sequence[Any]) -> SupervisorBandit:
        """``epochs`` passes of :meth:`partial_fit`, samples shuffled each pass (seeded).

        Raises:
            ValueError: ``samples`` is empty or holds a malformed sample.
        """
        items = [as_sample(s) for s in samples]
        if not items:
            raise ValueError("no bandit samples to fit; gather rollouts with a supervisor first")
        rng = random.Random(self.config.seed)
        for _ in range(self.config.epochs):
            order = items[:]
            rng.shuffle(order)
            self.partial_fit(order)
        return self

    # ---------------------------------------------------------------------------- acting

    def scores(self, question: str, candidates: Sequence[Any], *, head: int | None = None) -> list[float]:
        """P(correct) per candidate in [0, 1] (``head``: a bootstrap head instead of the main
        model). Before any training: each candidate's majority-vote share (``agreement`` of the
        executed ones, plus one vote for itself, normalised), i.e. the majority-vote policy."""
        ctx = candidate_context(candidates)
        if not ctx:
            return []
        if not self.fitted:
            votes = [
                (c["agreement"] * max(1, sum(d["executes"] for d in ctx) - 1) + 1) if c["executes"] else 0.0
                for c in ctx
            ]
            total = sum(votes) or 1.0
            return [v / total for v in votes]
        model = self.model if head is None else self.heads[head]
        p = model.predict_proba(self._feat.transform(question, ctx))[:, 1]
        return [float(v) for v in p]

    @staticmethod
    def _argmax(scores: Sequence[float], ctx: Sequence[Mapping[str, Any]], allowed: Sequence[int]) -> int:
        # highest score, then more agreement, then a non-empty result, then junior order
        return min(
            allowed, key=lambda i: (-round(scores[i], 12), -ctx[i].get("agreement", 0.0), ctx[i].get("empty", 0), i)
        )

    def choose(self, question: str, candidates: Sequence[Any], *, explore: bool = False) -> tuple[int, dict[str, Any]]:
        """Pick a candidate.

        Args:
            question: the natural-language question.
            candidates: ``society.candidate.Candidate`` objects (or context dicts), in junior order.
            explore: gathering mode: epsilon-greedy or Thompson (bootstrap) exploration per the
                config; False (the default, evaluation/serving) is greedy.

        Returns:
            ``(index, info)``; ``index`` is -1 when no candidate has SQL. ``info`` has ``scores``
            (P(correct) per candidate, 0 for unusable ones), ``greedy`` (the greedy index),
            ``explored`` (bool), ``propensity`` (probability of this index under the acting
            policy) and ``policy`` = ``"bandit"``.
        """
        ctx = candidate_context(candidates)
        allowed = usable(ctx)
        if not allowed:
            return -1, {
                "policy": "bandit",
                "scores": [0.0] * len(ctx),
                "fallback": "no candidate has SQL",
                "propensity": 1.0,
            }
        scores = self.scores(question, ctx)
        shown = [s if i in allowed else 0.0 for i, s in enumerate(scores)]
        greedy = self._argmax(scores, ctx, allowed)
        info: dict[str, Any] = {"policy": "bandit", "scores": shown, "greedy": greedy, "explored": False,
                                "propensity": 1.0, "fitted": self.fitted}
        if not explore:
            return greedy, info
        if self.config.exploration == "thompson" and self.fitted:
            picks = [self._argmax(self.scores(question, ctx, head=h), ctx, allowed) for h in range(len(self.heads))]
            pick = picks[self._rng.randrange(len(picks))]
            info.update(explored=pick != greedy, propensity=picks.count(pick) / len(picks), exploration="thompson")
            return pick, info
        pick, prop, _ = epsilon_greedy(self._rng, allowed, greedy, self.config.epsilon)
        info.update(explored=pick != greedy, propensity=prop, exploration="epsilon")
        return pick, info

    # ---------------------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> Path:
        """Write the policy with joblib (config, classifier, bootstrap heads, counters); returns the path."""
        import joblib

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({
            "format": "sqlsociety.bandit", "version": _FORMAT_VERSION, "config": self.config.model_dump(),
            "model": self.model, "heads": self.heads, "n_updates": self.n_updates, "n_examples": self.n_examples,
        }, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> SupervisorBandit:
        """Inverse of :meth:`save`.

        Raises:
            FileNotFoundError: no such file. ValueError: not a bandit policy file of this version.
        """
        import joblib

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"bandit policy {p} does not exist; train it with `sqlsociety train --phases 4`")
        blob = joblib.load(p)
        if not isinstance(blob, dict) or blob.get("format") != "sqlsociety.bandit":
            raise ValueError(f"{p} is not a SupervisorBandit policy file (written by SupervisorBandit.save)")
        if blob.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{p} has bandit format version {blob.get('version')}, this code reads {_FORMAT_VERSION}; retrain "
                "phase 4"
            )
        obj = cls(BanditConfig(**blob["config"]))
        obj.model, obj.heads = blob["model"], list(blob["heads"])
        obj.n_updates, obj.n_examples = int(blob["n_updates"]), int(blob["n_examples"])
        return obj


def load_policy(path: str | Path) -> SupervisorBandit:
    """The trained supervisor policy at ``path``: an object with
    ``choose(question: str, candidates: list[Candidate]) -> (index, info)`` (greedy by default).

    Raises:
        FileNotFoundError / ValueError: see :meth:`SupervisorBandit.load`.
    """
    return SupervisorBandit.load(path)
