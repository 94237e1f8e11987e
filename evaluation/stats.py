"""Statistics for paired before/after comparisons of 0/1 outcomes (e.g. EX per question before
and after a training phase, on the same questions).

* :func:`mcnemar_exact` -- exact McNemar test on the discordant pairs (McNemar 1947), two-sided
  exact binomial test with ``scipy.stats.binomtest``.
* :func:`paired_bootstrap_ci` -- seeded percentile bootstrap CI of ``mean(after) - mean(before)``,
  resampling questions (pairs) with replacement (Efron & Tibshirani 1993), with
  ``scipy.stats.bootstrap(..., paired=True, method="percentile")``.
* :func:`wilson_ci` -- Wilson score interval for one proportion (Wilson 1927), via
  ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
* :class:`Effect` / :func:`paired_effect` -- one row of an effects table built from two aligned
  lists of outcomes; :func:`effects_table_markdown` renders rows as Markdown (``tabulate``);
  :func:`describe_effects` says in words which effects are distinguishable from zero.

References:
    McNemar, Q. (1947). "Note on the sampling error of the difference between correlated
    proportions or percentages." Psychometrika 12(2):153-157.
    Efron, B. & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*. Chapman & Hall,
    ch. 13 (percentile intervals).
    Wilson, E. B. (1927). "Probable inference, the law of succession, and statistical
    inference." JASA 22(158):209-212.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Effect",
    "check_paired",
    "describe_effects",
    "discordant_counts",
    "effects_table_markdown",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "paired_effect",
    "wilson_ci",
]

#: Default number of bootstrap resamples and confidence level.
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95


def _as_binary(values: Iterable[Any], name: str) -> list[int]:
    out: list[int] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or v in (0, 1):
            out.append(int(v))
        else:
            raise ValueError(f"{name}[{i}] = {v!r}; outcomes must be 0/1 or booleans")
    return out


def check_paired(before: Iterable[Any], after: Iterable[Any]) -> tuple[list[int], list[int]]:
    """``before`` and ``after`` as lists of 0/1 ints, after checking they pair up.

    Raises:
        ValueError: empty input, different lengths, or a value that is not 0/1/bool.

    >>> check_paired([True, 0], [1, False])
    ([1, 0], [1, 0])
    """
    b, a = _as_binary(before, "before"), _as_binary(after, "after")
    if not b and not a:
        raise ValueError("no paired outcomes: before and after are both empty")
    if len(b) != len(a):
        raise ValueError(
            f"before has {len(b)} outcomes but after has {len(a)}; they must be aligned question by question"
        )
    return b, a


def discordant_counts(before: Iterable[Any], after: Iterable[Any]) -> tuple[int, int]:
    """``(broken, fixed)``: pairs that went 1 -> 0 and pairs that went 0 -> 1.

    These are McNemar's off-diagonal cells ``b`` and ``c`` of the 2x2 table of (before, after).

    >>> discordant_counts([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])
    (1, 2)
    """
    b, a = check_paired(before, after)
    broken = sum(1 for x, y in zip(b, a) if x == 1 and y == 0)
    fixed = sum(1 for x, y in zip(b, a) if x == 0 and y == 1)
    return broken, fixed


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``. Range (0, 1].

    Under H0 (no change in the proportion) each of the ``n = b + c`` discordant pairs is equally
    likely to go either way, so ``min(b, c) ~ Binomial(n, 1/2)`` and
    ``p = min(1, 2 * sum_{k <= min(b, c)} C(n, k) / 2^n)`` (McNemar 1947; the exact form of the
    test). Computed with ``scipy.stats.binomtest``. No discordant pair (``b = c = 0``) gives 1.

    >>> mcnemar_exact(1, 6)
    0.125
    >>> mcnemar_exact(0, 0)
    1.0

    Raises:
        ValueError: a negative or non-integer count.
    """
    for name, v in (("b", b), ("c", c)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} = {v!r}; discordant counts must be integers >= 0")
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(int(min(b, c)), n, 0.5, alternative="two-sided").pvalue))


def paired_bootstrap_ci(
    before: Sequence[Any],
    after: Sequence[Any],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(after) - mean(before)`` over paired outcomes.

    Questions are resampled with replacement as pairs (so the correlation between before and after
    is kept), the difference of means is computed on each of ``n_resamples`` resamples, and the
    ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles are the interval (Efron &
    Tibshirani 1993, ch. 13, percentile method). Uses ``scipy.stats.bootstrap(paired=True,
    method="percentile")`` with ``numpy.random.default_rng(seed)``: the same inputs and seed give
    the same interval. Range: a sub-interval of [-1, 1] for 0/1 outcomes; when every pair has the
    same difference the interval is that single value.

    Raises:
        ValueError: empty/unaligned/non-binary input (see :func:`check_paired`), ``confidence``
            outside (0, 1) or ``n_resamples`` < 1.
    """
    b, a = check_paired(before, after)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence!r}; must be in (0, 1), e.g. 0.95")
    if n_resamples < 1:
        raise ValueError(f"n_resamples = {n_resamples!r}; must be >= 1")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.all(diffs == diffs[0]):  # degenerate: every resample has the same mean
        d = float(diffs[0])
        return (d, d)
    from scipy.stats import bootstrap

    res = bootstrap(
        (np.asarray(b, dtype=float), np.asarray(a, dtype=float)),
        lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def wilson_ci(k: int, n: int, *, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n`` (Wilson 1927). Range: within [0, 1].

    ``(p̂ + z²/2n ± z·sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile of
    ``(1 + confidence)/2``; computed by ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.

    >>> lo, hi = wilson_ci(0, 10)
    >>> (lo, round(hi, 4))
    (0.0, 0.2775)

    Raises:
        ValueError: ``n`` < 1, ``k`` outside [0, n], or ``confidence`` outside (0, 1).
    """
    if n < 1:
        raise ValueError(f"n = {n!r}; a proportion needs at least one trial")
    if not 0 <= k <= n:
        raise ValueError(f"k = {k!r} successes out of n = {n}; need 0 <= k <= n")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence!r}; must be in (0, 1), e.g. 0.95")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


@dataclass(frozen=True)
class Effect:
    """A paired before/after effect on one metric.

    Attributes:
        phase / role / metric: labels (e.g. ``"grpo"``, ``"senior"``, ``"EX"``).
        n: number of paired outcomes (questions).
        before / after: mean outcome before and after, in [0, 1].
        delta: ``after - before``, in [-1, 1].
        ci_low / ci_high: percentile bootstrap CI of ``delta`` (see :func:`paired_bootstrap_ci`).
        p: exact McNemar p-value (see :func:`mcnemar_exact`), in (0, 1].
        fixed: pairs that went 0 -> 1; broken: pairs that went 1 -> 0.
        confidence: the CI's confidence level.
    """

    phase: str
    role: str
    metric: str
    n: int
    before: float
    after: float
    delta: float
    ci_low: float
    ci_high: float
    p: float
    fixed: int
    broken: int
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def ci_excludes_zero(self) -> bool:
        """True when the whole CI lies on one side of 0."""
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def significant(self, alpha: float = 0.05) -> bool:
        """True when the CI excludes 0 and McNemar's p < ``alpha`` (both must agree)."""
        return self.ci_excludes_zero and self.p < alpha

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_effect(
    before: Sequence[Any],
    after: Sequence[Any],
    *,
    phase: str = "",
    role: str = "",
    metric: str = "EX",
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Effect:
    """An :class:`Effect` from two aligned lists of 0/1 outcomes (same questions, same order).

    >>> e = paired_effect([0, 0, 1, 1], [1, 1, 1, 1], phase="sft", role="junior")
    >>> (e.n, e.before, e.after, e.delta, e.fixed, e.broken, e.p)
    (4, 0.5, 1.0, 0.5, 2, 0, 0.5)

    Raises:
        ValueError: empty, unaligned or non-binary input.
    """
    b, a = check_paired(before, after)
    broken, fixed = discordant_counts(b, a)
    lo, hi = paired_bootstrap_ci(b, a, confidence=confidence, n_resamples=n_resamples, seed=seed)
    n = len(b)
    mb, ma = sum(b) / n, sum(a) / n
    return Effect(
        phase=phase, role=role, metric=metric, n=n, before=mb, after=ma, delta=ma - mb,
        ci_low=lo, ci_high=hi, p=mcnemar_exact(broken, fixed), fixed=fixed, broken=broken, confidence=confidence,
    )


def _pct(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def effects_table_markdown(effects: Iterable[Effect]) -> str:
    """The effects as a GitHub Markdown table (percentages for means, delta and CI; via ``tabulate``).

    Columns: phase, role, metric, n, before %, after %, Δ (pts), CI (pts), McNemar p, fixed, broken.
    """
    from tabulate import tabulate

    effects = list(effects)
    rows = []
    for e in effects:
        rows.append([
            e.phase, e.role, e.metric, e.n, _pct(e.before), _pct(e.after), _pct(e.delta, True),
            f"[{_pct(e.ci_low, True)}, {_pct(e.ci_high, True)}]", _p_text(e.p), e.fixed, e.broken,
        ])
    levels = {round(100 * e.confidence) for e in effects}
    ci_head = f"{levels.pop()}% CI pts" if len(levels) == 1 else "CI pts"
    headers = ["phase", "role", "metric", "n", "before %", "after %", "Δ pts", ci_head, "McNemar p", "fixed", "broken"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def describe_effects(effects: Iterable[Effect], *, alpha: float = 0.05) -> list[str]:
    """One sentence per effect saying whether it is distinguishable from zero.

    An effect is *distinguishable* when its bootstrap CI excludes 0 and McNemar's p < ``alpha``;
    *borderline* when only one of the two says so; otherwise *not distinguishable*.

    >>> e = paired_effect([0] * 10, [1] * 10, phase="sft", role="junior")
    >>> print(describe_effects([e])[0])  # doctest: +NORMALIZE_WHITESPACE
    sft junior EX: +100.0 pts (95% CI +100.0 to +100.0, McNemar p = 0.002; 10 fixed, 0 broken):
    distinguishable from zero.
    """
    out = []
    for e in effects:
        label = " ".join(x for x in (e.phase, e.role, e.metric) if x)
        conf = f"{round(100 * e.confidence):d}%"
        head = (f"{label}: {_pct(e.delta, True)} pts ({conf} CI {_pct(e.ci_low, True)} to {_pct(e.ci_high, True)}, "
                f"McNemar p = {_p_text(e.p)}; {e.fixed} fixed, {e.broken} broken)")
        by_ci, by_p = e.ci_excludes_zero, e.p < alpha
        if by_ci and by_p:
            verdict = "distinguishable from zero."
        elif by_ci or by_p:
            why = "the CI excludes 0 but p >= {a}" if by_ci else "p < {a} but the CI includes 0"
            verdict = f"borderline ({why.format(a=alpha)})."
        else:
            verdict = "not distinguishable from zero (the CI includes 0)."
        out.append(f"{head}: {verdict}")
    return out
