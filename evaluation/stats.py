"""Statistics for paired before/after comparisons of 0/1 outcomes (e.g. EX per question before
and after a training phase, on the same questions).

* :func:`mcnemar_exact` -- exact McNemar test on the discordant pairs (McNemar 1947), two-sided
  exact binomial test with ``scipy.stats.binomtest``.
* :func:`paired_bootstrap_ci` -- seeded percentile bootstrap CI of ``mean(after) - mean(before)``,
  resampling questions (pairs) with replacement (Efron & Tibshirani 1993), with
  ``scipy.stats.bootstrap(..., paired=True, method="percentile")``.
* :func:`wilson_ci` -- Wilson score interval for one proportion (Wilson 1927), via
  ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
* :func:`holm_adjust` -- Holm's step-down adjustment of a family of p-values (Holm 1979), which
  controls the family-wise error rate: the chance that *any* row of a report is called by luck.
  :func:`holm_effects` applies it to the effect rows of one report.
* :class:`Effect` / :func:`paired_effect` -- one row of an effects table built from two aligned
  lists of outcomes; :func:`effects_table_markdown` renders rows as Markdown (``tabulate``);
  :func:`describe_effects` says in words which effects are *called* (see :meth:`Effect.called`).

When an effect is called (the rule of :meth:`Effect.called`, used by every table and sentence of
the report): at ``alpha`` = 0.05, all of

1. its Holm-adjusted McNemar p < ``alpha`` (the family: the report's effect rows, noise rows
   excluded; comparison rows form a family of their own);
2. its paired-bootstrap CI excludes 0;
3. where the row has a noise control (the untrained role evaluated twice on the same questions
   with different sampling seeds, see :mod:`evaluation.role_effects`): ``|delta| > |noise delta|``
   and the noise row's own raw McNemar p >= ``alpha`` (two untrained evaluations that differ
   "significantly" mean the test's p-values are not calibrated for this evaluation, so no effect
   of that role is called).

Noise rows (``kind="noise"``) are controls, not claims: they carry their raw p only. Comparison
rows (``kind="comparison"``: two trained variants side by side, e.g. one adapter per persona
against one shared adapter) are claims of a secondary question, Holm-adjusted among themselves so
that they do not weaken the effect rows' family.

References:
    McNemar, Q. (1947). "Note on the sampling error of the difference between correlated
    proportions or percentages." Psychometrika 12(2):153-157.
    Efron, B. & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*. Chapman & Hall,
    ch. 13 (percentile intervals).
    Wilson, E. B. (1927). "Probable inference, the law of succession, and statistical
    inference." JASA 22(158):209-212.
    Holm, S. (1979). "A simple sequentially rejective multiple test procedure." Scandinavian
    Journal of Statistics 6(2):65-70.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES",
    "paired_records",
    "Effect",
    "check_paired",
    "describe_effects",
    "discordant_counts",
    "effect_cells",
    "effect_headers",
    "effects_table_markdown",
    "holm_adjust",
    "holm_effects",
    "mcnemar_exact",
    "missing_text",
    "paired_bootstrap_ci",
    "paired_effect",
    "wilson_ci",
]

#: Default number of bootstrap resamples and confidence level.
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
#: Significance level of the report's verdicts.
DEFAULT_ALPHA = 0.05

#: The kinds of :class:`Effect` rows that are claims, each its own Holm family (:func:`holm_effects`).
FAMILIES = ("effect", "comparison")


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


def paired_records(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
                   ) -> tuple[list[tuple[Mapping[str, Any], Mapping[str, Any]]], int]:
    """The records of the questions both stages hold, paired by ``question_id`` (sorted), and how many
    questions only one of them holds.

    >>> pairs, unpaired = paired_records([{"question_id": "q2"}, {"question_id": "q1"}],
    ...                                  [{"question_id": "q1", "match": True}, {"question_id": "q3"}])
    >>> [(x["question_id"], y.get("match")) for x, y in pairs], unpaired
    ([('q1', True)], 2)
    """
    qa = {str(r["question_id"]): r for r in a if r.get("question_id") is not None}
    qb = {str(r["question_id"]): r for r in b if r.get("question_id") is not None}
    return [(qa[q], qb[q]) for q in sorted(set(qa) & set(qb))], len(set(qa) ^ set(qb))


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


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (Holm 1979), in the input order. Each in [0, 1], each >= its raw p.

    With the ``m`` raw p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    the ``i``-th smallest is ``max_{j <= i} min(1, (m - j + 1) * p_(j))`` (the step-down procedure
    written as adjusted p-values). Rejecting every hypothesis whose adjusted p is < ``alpha`` is
    Holm's procedure at level ``alpha``: the family-wise error rate is at most ``alpha`` under any
    dependence between the tests. It is uniformly more powerful than Bonferroni (``m * p``).
    ``scipy.stats.false_discovery_control`` does Benjamini-Hochberg/-Yekutieli (FDR) only, and
    statsmodels' ``multipletests(method="holm")`` is not a dependency, hence this function. Ties
    keep their input order (the result does not depend on it).

    >>> [round(p, 10) for p in holm_adjust([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    >>> holm_adjust([0.5, 0.001])
    [0.5, 0.002]
    >>> holm_adjust([])
    []

    Raises:
        ValueError: a p-value that is not a number in [0, 1] (NaN included).
    """
    ps = []
    for i, p in enumerate(pvalues):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"pvalues[{i}] = {p!r}; p-values must be numbers in [0, 1]")
        ps.append(float(p))
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):  # rank 0 is the smallest p: multiplier m
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


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
        p_holm: ``p`` Holm-adjusted over the effect rows of one report (:func:`holm_effects`), in
            [p, 1]; None for a noise row and before adjustment.
        missing_before / missing_after: questions counted as a failure (0) of the role because the
            stage's record held no outcome for it (e.g. the junior raised or produced no SQL);
            already included in ``n``, ``before``, ``after``.
        unpaired: questions held by only one of the two stages' records, left out of ``n``
            (e.g. a stage that did not finish).
        kind: ``"effect"`` (a claim: a phase's effect on its role), ``"noise"`` (a control: the
            untrained role evaluated twice on the same questions with different sampling seeds;
            ``before``/``after`` are the two untrained evaluations) or ``"comparison"`` (a claim
            of a secondary question, two trained variants; its own Holm family).
        noise_delta / noise_p: ``delta`` and raw ``p`` of this row's noise control; None when the
            run has none for it.
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
    p_holm: float | None = None
    missing_before: int = 0
    missing_after: int = 0
    unpaired: int = 0
    kind: str = "effect"
    noise_delta: float | None = None
    noise_p: float | None = None

    @property
    def ci_excludes_zero(self) -> bool:
        """True when the whole CI lies on one side of 0."""
        return self.ci_low > 0.0 or self.ci_high < 0.0

    @property
    def p_verdict(self) -> float:
        """The p the verdict uses: ``p_holm`` when adjusted, else the raw ``p``."""
        return self.p if self.p_holm is None else self.p_holm

    def significant(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """True when the CI excludes 0 and McNemar's *raw* p < ``alpha`` (both must agree); the
        report's rule is :meth:`called`."""
        return self.ci_excludes_zero and self.p < alpha

    def above_noise(self, alpha: float = DEFAULT_ALPHA) -> bool | None:
        """Whether the effect clears its noise control: ``|delta| > |noise_delta|`` and the noise row's
        raw p >= ``alpha``. None when the row has no noise control (or is one)."""
        if self.kind != "effect" or self.noise_delta is None:
            return None
        calm = self.noise_p is None or self.noise_p >= alpha
        return calm and abs(self.delta) > abs(self.noise_delta) + 1e-12

    def called(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """The report's rule (module docstring): an effect row whose Holm-adjusted p (raw p when not
        adjusted) < ``alpha``, whose CI excludes 0 and that clears its noise control when it has one.
        Always False for a noise row."""
        if self.kind not in FAMILIES:
            return False
        return self.ci_excludes_zero and self.p_verdict < alpha and self.above_noise(alpha) is not False

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


def holm_effects(effects: Iterable[Effect]) -> list[Effect]:
    """The effects with ``p_holm`` set: Holm (:func:`holm_adjust`) over the raw p of the rows of
    each kind of :data:`FAMILIES` apart (``effect``: the family of one report; ``comparison``: its
    own); noise rows are returned with ``p_holm=None``. Order and every other field are kept.

    >>> a = paired_effect([0] * 10, [1] * 10, role="a")
    >>> b = paired_effect([0, 1] * 5, [1, 0] * 5, role="b")
    >>> [(e.role, round(e.p, 4), round(e.p_holm, 4)) for e in holm_effects([a, b])]
    [('a', 0.002, 0.0039), ('b', 1.0, 1.0)]
    >>> c = dataclasses.replace(b, role="c", kind="comparison")  # its own family: a keeps p_holm = p
    >>> [(e.role, round(e.p_holm, 4)) for e in holm_effects([a, c])]
    [('a', 0.002), ('c', 1.0)]
    """
    effects = list(effects)
    adjusted: dict[int, float] = {}
    for kind in FAMILIES:
        idx = [i for i, e in enumerate(effects) if e.kind == kind]
        adjusted.update(zip(idx, holm_adjust([effects[i].p for i in idx])))
    return [dataclasses.replace(e, p_holm=adjusted.get(i)) for i, e in enumerate(effects)]


def _with_holm(effects: Iterable[Effect]) -> list[Effect]:
    """``effects`` as given when every effect row is already adjusted, else :func:`holm_effects` over them."""
    effects = list(effects)
    if all(e.p_holm is not None for e in effects if e.kind in FAMILIES):
        return effects
    return holm_effects(effects)


def _pct(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def missing_text(e: Effect) -> str:
    """The ``missing → 0`` cell: ``"<before>/<after>"`` questions counted as failures, plus
    ``"; <k> unpaired"`` when questions were held by one stage only; ``"0/0"`` when none."""
    out = f"{e.missing_before}/{e.missing_after}"
    return out + (f"; {e.unpaired} unpaired" if e.unpaired else "")


def effect_cells(e: Effect) -> list[str]:
    """One table row of strings: phase, role, metric, n, before %, after %, Δ pts, CI pts, McNemar p,
    Holm p (– for a noise row), noise Δ pts (– without a noise control), fixed, broken, missing → 0
    (see :func:`missing_text`), verdict (``called`` / ``not called`` / ``noise control``)."""
    verdict = "noise control" if e.kind == "noise" else ("called" if e.called() else "not called")
    return [
        e.phase, e.role, e.metric, str(e.n), _pct(e.before), _pct(e.after), _pct(e.delta, True),
        f"[{_pct(e.ci_low, True)}, {_pct(e.ci_high, True)}]", _p_text(e.p),
        _p_text(e.p_holm) if e.kind in FAMILIES else "–",
        "–" if e.noise_delta is None else _pct(e.noise_delta, True), str(e.fixed), str(e.broken), missing_text(e),
        verdict,
    ]


def effect_headers(effects: Sequence[Effect]) -> list[str]:
    """Headers of :func:`effect_cells` (the CI's level in its header when every row shares it)."""
    levels = {round(100 * e.confidence) for e in effects}
    ci_head = f"{levels.pop()}% CI pts" if len(levels) == 1 else "CI pts"
    return ["phase", "role", "metric", "n", "before %", "after %", "Δ pts", ci_head, "McNemar p", "Holm p",
            "noise Δ pts", "fixed", "broken", "missing → 0 (before/after)", "verdict"]


def effects_table_markdown(effects: Iterable[Effect]) -> str:
    """The effects as a GitHub Markdown table (percentages for means, delta and CI; via ``tabulate``).

    Columns: see :func:`effect_cells` (raw and Holm-adjusted McNemar p side by side, the noise
    control's Δ, the questions counted as failures, the verdict of :meth:`Effect.called`). Rows not
    yet Holm-adjusted are adjusted here, the rows given being the family.
    """
    from tabulate import tabulate

    effects = _with_holm(effects)
    return tabulate([effect_cells(e) for e in effects], headers=effect_headers(effects), tablefmt="github",
                    disable_numparse=True)


def describe_effects(effects: Iterable[Effect], *, alpha: float = DEFAULT_ALPHA) -> list[str]:
    """One sentence per row: for an effect row whether it is called (:meth:`Effect.called`), for a
    noise row what the untrained role's two evaluations differ by.

    Effect rows: *distinguishable from zero* when called; *within the noise floor* when the CI
    and the Holm-adjusted p agree but the noise control does not clear (``|Δ| <= |noise Δ|``, or
    the noise row's own p < ``alpha``); *borderline* when only one of CI and adjusted p says so;
    otherwise *not distinguishable from zero*. Rows not yet Holm-adjusted are adjusted here, the
    rows given being the family. Questions counted as failures and unpaired questions are named.

    >>> e = paired_effect([0] * 10, [1] * 10, phase="sft", role="junior")
    >>> print(describe_effects([e])[0])  # doctest: +NORMALIZE_WHITESPACE
    sft junior EX: +100.0 pts (95% CI +100.0 to +100.0, McNemar p = 0.002, Holm-adjusted p = 0.002 over 1 row;
    10 fixed, 0 broken): distinguishable from zero.
    """
    effects = _with_holm(effects)
    family = {k: sum(e.kind == k for e in effects) for k in FAMILIES}
    out = []
    for e in effects:
        label = " ".join(x for x in (e.phase, e.role, e.metric) if x)
        conf = f"{round(100 * e.confidence):d}%"
        ps = f"McNemar p = {_p_text(e.p)}"
        if e.kind in FAMILIES:
            m = family[e.kind]
            ps += (f", Holm-adjusted p = {_p_text(e.p_verdict)} over {m} {'comparison ' if e.kind != 'effect' else ''}"
                   f"row{'s' if m != 1 else ''}")
        if e.noise_delta is not None:
            ps += f"; noise floor Δ {_pct(e.noise_delta, True)} pts (p = {_p_text(e.noise_p)})"
        head = (f"{label}: {_pct(e.delta, True)} pts ({conf} CI {_pct(e.ci_low, True)} to {_pct(e.ci_high, True)}, "
                f"{ps}; {e.fixed} fixed, {e.broken} broken"
                + (f"; {e.missing_before} before / {e.missing_after} after with no outcome counted as failures"
                   if e.missing_before or e.missing_after else "")
                + (f"; {e.unpaired} questions held by one stage only left out" if e.unpaired else "") + ")")
        if e.kind == "noise":
            verdict = ("noise control: the untrained role evaluated twice with different sampling seeds"
                       + (f"; it differs from itself (p < {alpha}), so the p-values of this role's effects are not "
                          "trusted and none is called." if e.p < alpha else
                          "; an effect of this role is called only when its |Δ| is larger."))
        else:
            by_ci, by_p = e.ci_excludes_zero, e.p_verdict < alpha
            if by_ci and by_p and e.above_noise(alpha) is False:
                floor = abs(100 * (e.noise_delta or 0.0))
                why = (f"the untrained role differs from itself, noise p = {_p_text(e.noise_p)} < {alpha}"
                       if e.noise_p is not None and e.noise_p < alpha else
                       f"|Δ| is not larger than the untrained repeat's |Δ| = {floor:.1f} pts")
                verdict = f"within the noise floor, not called ({why})."
            elif by_ci and by_p:
                verdict = "distinguishable from zero."
            elif by_ci or by_p:
                why = ("the CI excludes 0 but the Holm-adjusted p >= {a}" if by_ci else
                       "the Holm-adjusted p < {a} but the CI includes 0")
                verdict = f"borderline ({why.format(a=alpha)})."
            else:
                verdict = "not distinguishable from zero (the CI includes 0)."
        out.append(f"{head}: {verdict}")
    return out
