"""The senior's verifiable reward and the GRPO prompt prefilter (phase 3).

:class:`SeniorReward` scores a senior completion by executing SQL on the real database (a
``senior_rewrite``: :func:`evaluation.metrics.rewards.compute_reward`; a ``senior_check``: 1.0 when its
verdict agrees with whether the shown query matches gold). :func:`prefilter_prompts` samples k
completions per prompt from the served senior (:func:`openai_sampler`) and keeps the prompts whose
rewards differ (DAPO's dynamic sampling done up front), reporting the pass band.
Used by :class:`training.grpo.SeniorGRPOTrainer` and by the VERL path (:mod:`training.grpo_verl`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.metrics.ex import execution_match
from evaluation.metrics.rewards import RewardConfig, compute_reward
from evaluation.metrics.sql_text import extract_sql

logger = logging.getLogger(__name__)

__all__ = ["NODES", "PrefilterResult", "SeniorReward", "chars_after_stop", "openai_sampler", "prefilter_prompts"]

#: The senior's decision points a GRPO prompt can come from (its ``node`` column).
NODES = ("senior_rewrite", "senior_check")


def _text(completion: Any) -> str:
    """A TRL completion (message list for chat prompts, string otherwise) -> its text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def _checked_sql(prompt: Any) -> str | None:
    """The query a ``senior_check`` prompt shows (its last user message's SQL block)."""
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        text = str(users[-1].get("content", "")) if users else ""
    else:
        text = str(prompt)
    return extract_sql(text)


class SeniorReward:
    """The senior's verifiable reward, as a TRL reward function.

    Called by TRL as ``reward(prompts=..., completions=..., gold_sql=[...], db_path=[...],
    node=[...], **kw)``, one entry per completion; returns one float per completion (see the module
    docstring for the two node types). ``records`` keeps every scored completion
    (``node``, ``reward``, ``ex``) for the metrics file.

    Args:
        reward_config: :class:`evaluation.metrics.rewards.RewardConfig` for rewrite decisions
            (default: unit-normalised EX + partial credit, range [0, 1]).
        stop: stop strings; each completion is cut before the first one before scoring
            (see :attr:`SeniorGRPOConfig.stop`).
    """

    __name__ = "senior_execution_reward"

    def __init__(self, reward_config: Any = None, stop: Sequence[str] | None = None) -> None:
        self.reward_config = reward_config or RewardConfig()
        self.stop = tuple(stop or ())
        self.records: list[dict[str, Any]] = []

    def score(
        self, prompt: Any, completion: Any, gold_sql: str, db_path: str, node: str | None = None
    ) -> tuple[float, float | None]:
        """(reward, ex) of one completion; ``ex`` is None for check decisions."""
        # society.llm / society.roles import LangChain: only when stop strings or check decisions
        # need them, so the reward also runs where only the training stack is installed.
        node = node or "senior_rewrite"
        text = _text(completion)
        if self.stop:
            from society.llm import cut_at_stop

            text = cut_at_stop(text, self.stop)  # as the served senior's reply
        if node == "senior_check":
            from society.roles import parse_check

            verdict = parse_check(text)
            if verdict is None:
                return 0.0, None
            truth = execution_match(db_path, _checked_sql(prompt), gold_sql).match
            return (1.0 if (verdict == "correct") == truth else 0.0), None
        rb = compute_reward(text, gold_sql, db_path, self.reward_config)
        return float(rb.total), float(rb.ex)

    def __call__(self, prompts: list[Any], completions: list[Any], gold_sql: list[str], db_path: list[str],
                 node: list[str] | None = None, **kwargs: Any) -> list[float]:
        out: list[float] = []
        exs: list[float] = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            n = node[i] if node is not None else None
            r, ex = self.score(p, c, gold_sql[i], db_path[i], n)
            out.append(r)
            if ex is not None:
                exs.append(ex)
            self.records.append({"node": n or "senior_rewrite", "reward": r, "ex": ex,
                                 "after_stop_chars": chars_after_stop(_text(c), self.stop)})
        log_metric = kwargs.get("log_metric")
        if exs and callable(log_metric):
            log_metric("rewrite_ex", sum(exs) / len(exs))
        return out


@dataclass
class PrefilterResult:
    """What :func:`prefilter_prompts` kept.

    Attributes:
        dataset: the prompts whose sampled rewards differ (a ``datasets.Dataset``, same columns), in
            the order they were tried.
        n_in / n_kept: prompts given to the filter / kept by it (``n_tried``: sampled, ``n_in``
            unless it stopped early).
        k: completions sampled per prompt.
        seconds: wall time of the sampling.
        mean_reward: mean reward of all sampled completions, in the reward's range ([0, 1] by default).
        kept_ids: row indices (into the input) of the kept prompts, in the order they were tried.
        pass_rates: per prompt tried (in the order of ``tried_ids``), the share of its k completions
            that pass: a rewrite whose SQL matches gold by EX, a check whose verdict is right (reward 1).
        tried_ids: row indices of the prompts sampled, in the order tried, when the filter stopped
            once it had kept enough (``need``); None when it tried every prompt in input order.
        n_pass_band: prompts whose pass rate is strictly between 0 and 1 (some completions pass,
            some do not): the prompts with an EX advantage to follow. A subset of the kept ones
            (a pass and a fail always differ in reward); the rest of the kept ones differ only in
            partial credit. Like ``mean_pass`` and :meth:`to_json`'s never/always counts, over the
            prompts tried only.
        mean_pass: mean of ``pass_rates``.
    """

    dataset: Any
    n_in: int
    n_kept: int
    k: int
    seconds: float
    mean_reward: float
    kept_ids: list[int]
    pass_rates: list[float] = field(default_factory=list)
    tried_ids: list[int] | None = None

    @property
    def n_tried(self) -> int:
        """Prompts sampled (``n_in`` unless the filter stopped early)."""
        return self.n_in if self.tried_ids is None else len(self.tried_ids)

    @property
    def n_pass_band(self) -> int:
        return sum(0.0 < r < 1.0 for r in self.pass_rates)

    @property
    def mean_pass(self) -> float:
        return sum(self.pass_rates) / len(self.pass_rates) if self.pass_rates else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"n_in": self.n_in, "n_tried": self.n_tried, "n_kept": self.n_kept, "n_pass_band": self.n_pass_band,
                "k": self.k,
                "seconds": round(self.seconds, 1), "mean_reward": self.mean_reward,
                "mean_pass": round(self.mean_pass, 4),
                "n_never_pass": sum(r == 0.0 for r in self.pass_rates),
                "n_always_pass": sum(r == 1.0 for r in self.pass_rates)}

    def to_record(self) -> dict[str, Any]:
        """Everything but the dataset, as JSON: :meth:`from_record` rebuilds the result from it and
        the prompts the filter ran on (a phase 3 resumed after its prefilter)."""
        return {"n_in": self.n_in, "n_kept": self.n_kept, "k": self.k, "seconds": self.seconds,
                "mean_reward": self.mean_reward, "kept_ids": list(self.kept_ids), "pass_rates": list(self.pass_rates),
                **({"tried_ids": list(self.tried_ids)} if self.tried_ids is not None else {})}

    @classmethod
    def from_record(cls, record: dict[str, Any], prompts: Any) -> PrefilterResult:
        """The result :meth:`to_record` wrote, its ``dataset`` the kept rows of ``prompts`` (the
        prompts the filter ran on, a ``datasets.Dataset`` of ``record["n_in"]`` rows).

        Raises:
            ValueError: ``prompts`` has another number of rows than the filter ran on.
        """
        if len(prompts) != record["n_in"]:
            raise ValueError(f"the prefilter ran on {record['n_in']} prompts, {len(prompts)} given")
        return cls(dataset=prompts.select(record["kept_ids"]), **record)


def prefilter_prompts(
    dataset: Any, sample: Any, reward: SeniorReward, k: int, *, max_workers: int = 4,
    need: int | None = None, seed: int = 0,
) -> PrefilterResult:
    """Dynamic sampling done before training: draw ``k`` completions per prompt with the served
    policy and keep only the prompts whose rewards differ.

    With ``need``, the prompts are tried in a random order (``seed``), ``max_workers`` at a time, and
    sampling stops after the first such batch that brings the kept ones to ``need`` (so a few more
    may be kept; whole batches, so which prompts were tried does not depend on which request
    finished first, at the cost of slots idle at each batch's end). DAPO fills
    its batch with groups whose rewards differ and stops drawing, and GRPO trains on
    ``max_steps x prompts_per_step`` prompts, so sampling the rest would cost time for nothing
    (on 2 CPU cores ~1.5 s per completion; 112 prompts x 4 took 11 min in the 2026-12-06 run, of
    which GRPO used 12).

    A GRPO group whose completions all get the same reward has zero advantage and contributes no
    gradient (with ``scale_rewards: group`` a tiny spread is even blown up to full size); DAPO
    (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", dynamic
    sampling) drops such groups during training. TRL's ``GRPOTrainer`` has no hook for that, so
    here the base policy (the model the senior starts from, as served) is sampled up front and the
    prompts that are always right or always wrong for it are dropped.

    Args:
        dataset: ``datasets.Dataset`` with ``prompt`` (chat messages or text), ``gold_sql``,
            ``db_path`` and optionally ``node`` (see :class:`SeniorGRPOTrainer`).
        sample: ``sample(prompt, k) -> list[str]``: ``k`` completions of one prompt (see
            :func:`openai_sampler`).
        reward: the reward that GRPO will optimise (:class:`SeniorReward`).
        k: completions per prompt, >= 2.
        max_workers: prompts sampled at once (the server's parallel slots decode them together).
        need: stop once this many prompts are kept (>= 1); None tries every prompt, in input order.
        seed: the order prompts are tried in when ``need`` is given.

    Returns:
        :class:`PrefilterResult`; its ``dataset`` may be empty (every group had equal rewards).

    Raises:
        ValueError: ``k`` < 2, or ``need`` < 1.
    """
    import random
    from concurrent.futures import ThreadPoolExecutor

    if k < 2:
        raise ValueError(f"prefilter needs k >= 2 completions per prompt to compare rewards, got {k}")
    if need is not None and need < 1:
        raise ValueError(f"prefilter need = {need}; give the number of prompts to keep (>= 1) or None for all")
    rows = list(dataset)
    order = list(range(len(rows))) if need is None else random.Random(seed).sample(range(len(rows)), len(rows))
    t0 = time.monotonic()

    def one(i: int) -> list[tuple[float, float | None]]:
        row = rows[i]
        texts = sample(row["prompt"], k)
        return [reward.score(row["prompt"], t, row["gold_sql"], row["db_path"], row.get("node")) for t in texts]

    def differ(sc: list[tuple[float, float | None]]) -> bool:
        return len(sc) >= 2 and max(r for r, _ in sc) - min(r for r, _ in sc) > 1e-9

    tried: list[int] = []
    scored: list[list[tuple[float, float | None]]] = []
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        step = max(1, len(order)) if need is None else max_workers
        for start in range(0, len(order), step):
            batch = order[start:start + step]
            tried += batch
            scored += list(pool.map(one, batch))
            if need is not None and sum(map(differ, scored)) >= need:
                break
    kept = [i for i, sc in zip(tried, scored, strict=True) if differ(sc)]
    passes = [[(ex == 1.0) if ex is not None else (r == 1.0) for r, ex in sc] for sc in scored]
    flat = [r for sc in scored for r, _ in sc]
    return PrefilterResult(
        dataset=dataset.select(kept), n_in=len(rows), n_kept=len(kept), k=k, seconds=time.monotonic() - t0,
        mean_reward=sum(flat) / len(flat) if flat else 0.0, kept_ids=kept,
        pass_rates=[sum(p) / len(p) if p else 0.0 for p in passes],
        tried_ids=None if need is None else tried,
    )


def openai_sampler(endpoint: Any, *, temperature: float, top_p: float, max_tokens: int,
                   stop: Sequence[str] | None = None, seed: int = 0, timeout_s: float = 300.0) -> Any:
    """A ``sample(prompt, k)`` for :func:`prefilter_prompts` over an OpenAI-compatible endpoint.

    Args:
        endpoint: anything with ``base_url``, ``model``, ``api_key`` and ``extra_body`` (a
            ``society.llm.Endpoint``; ``extra_body`` carries e.g. llama-server's LoRA choice).
        temperature, top_p, max_tokens: sampling, as GRPO samples its group.
        stop: stop strings (the served senior's).
        seed: base seed; completion ``j`` of a prompt uses ``seed + j`` (distinct, reproducible draws).
        timeout_s: per request, seconds.

    Returns:
        ``sample(prompt, k) -> list[str]``; ``prompt`` is a list of chat messages or a string.
    """
    from openai import OpenAI

    client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or "sk-no-key", timeout=timeout_s,
                    max_retries=2)

    def sample(prompt: Any, k: int) -> list[str]:
        msgs = ([{"role": m["role"], "content": m["content"]} for m in prompt] if isinstance(prompt, list)
                else [{"role": "user", "content": str(prompt)}])
        out = []
        for j in range(k):
            r = client.chat.completions.create(
                model=endpoint.model, messages=msgs, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                stop=list(stop) if stop else None, seed=seed + j, extra_body=dict(endpoint.extra_body or {}),
            )
            out.append(r.choices[0].message.content or "")
        return out

    return sample


def chars_after_stop(text: str, stop: Sequence[str]) -> int:
    """How many characters ``text`` has after the earliest of the ``stop`` strings (0 when none occurs).

    A completion generated with stop strings ends at one, so this is 0 for every such completion;
    text after it would be tokens sampled, and trained on, past the served reply's end.

    >>> chars_after_stop("SELECT 1</sql>", ["</sql>"])
    0
    >>> chars_after_stop("SELECT 1</sql>\\nThe end", ["</sql>", "```"])
    8
    >>> chars_after_stop("SELECT 1", ["</sql>"])
    0
    """
    hits = [(i, len(x)) for x in stop if (i := text.find(x)) >= 0]
    if not hits:
        return 0
    i, n = min(hits)
    return len(text) - i - n
