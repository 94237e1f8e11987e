"""Paired before/after statistics (evaluation.stats): exact McNemar, paired bootstrap, Wilson CI."""

from __future__ import annotations

import dataclasses
import doctest
from math import comb

import numpy as np
import pytest

from evaluation import stats
from evaluation.stats import (
    Effect,
    describe_effects,
    discordant_counts,
    effects_table_markdown,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_effect,
    wilson_ci,
)


def test_doctests() -> None:
    result = doctest.testmod(stats)
    assert result.attempted > 0 and result.failed == 0


def test_mcnemar_by_hand() -> None:
    # b=1 broken, c=6 fixed: n=7, p = 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)  # two-sided: symmetric
    # b=2, c=8: p = 2 * sum_{k<=2} C(10,k) / 2^10 = 2 * 56 / 1024
    assert mcnemar_exact(2, 8) == pytest.approx(2 * sum(comb(10, k) for k in range(3)) / 2**10)
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence of change
    assert mcnemar_exact(5, 5) == 1.0  # balanced: capped at 1
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)


def test_mcnemar_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="integers >= 0"):
        mcnemar_exact(-1, 3)
    with pytest.raises(ValueError, match="integers >= 0"):
        mcnemar_exact(1.5, 3)  # type: ignore[arg-type]


def test_discordant_counts_and_effect_fields() -> None:
    before = [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    after = [1, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert discordant_counts(before, after) == (1, 6)
    e = paired_effect(before, after, phase="grpo", role="senior", metric="EX", seed=1)
    assert (e.n, e.fixed, e.broken) == (10, 6, 1)
    assert e.before == pytest.approx(0.4) and e.after == pytest.approx(0.9) and e.delta == pytest.approx(0.5)
    assert e.p == pytest.approx(0.125)
    assert e.ci_low <= e.delta <= e.ci_high


def test_bootstrap_seeded_and_covers_true_difference() -> None:
    rng = np.random.default_rng(42)
    n = 400
    before = (rng.random(n) < 0.40).astype(int)
    # after: a success stays one with prob. 0.95, a failure is fixed with prob. 0.30
    after = np.where(before == 1, (rng.random(n) < 0.95).astype(int), (rng.random(n) < 0.30).astype(int))
    true_diff = 0.95 * 0.40 + 0.30 * 0.60 - 0.40  # population difference of the generating process
    a = paired_bootstrap_ci(before.tolist(), after.tolist(), seed=7, n_resamples=4000)
    b = paired_bootstrap_ci(before.tolist(), after.tolist(), seed=7, n_resamples=4000)
    assert a == b  # same seed -> same interval
    assert a[0] < true_diff < a[1]
    assert a[0] < float(after.mean() - before.mean()) < a[1]
    c = paired_bootstrap_ci(before.tolist(), after.tolist(), seed=8, n_resamples=4000)
    assert c != a  # a different seed resamples differently
    assert -1.0 <= a[0] <= a[1] <= 1.0


def test_bootstrap_degenerate_is_a_point() -> None:
    assert paired_bootstrap_ci([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)
    assert paired_bootstrap_ci([0, 0], [1, 1]) == (1.0, 1.0)


@pytest.mark.parametrize(
    "before, after, msg",
    [
        ([], [], "empty"),
        ([1, 0], [1], "aligned"),
        ([1, 2], [1, 0], "0/1"),
    ],
)
def test_bad_input_is_a_clear_value_error(before: list, after: list, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        paired_effect(before, after)
    with pytest.raises(ValueError, match=msg):
        paired_bootstrap_ci(before, after)


def test_bootstrap_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([0, 1], [1, 1], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap_ci([0, 1], [1, 1], n_resamples=0)


def test_wilson_ci() -> None:
    lo, hi = wilson_ci(5, 10)
    assert lo < 0.5 < hi and 0.0 <= lo and hi <= 1.0
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(
        0.7634, abs=1e-4
    )  # Wilson 1927 formula, z=1.96
    assert wilson_ci(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_ci(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_ci(11, 10)


def test_table_and_words() -> None:
    strong = paired_effect([0] * 30 + [1] * 10, [1] * 20 + [0] * 10 + [1] * 10, phase="sft", role="junior", seed=0)
    null = paired_effect([0, 1] * 10, [1, 0] * 10, phase="grpo", role="senior", seed=0)
    md = effects_table_markdown([strong, null])
    lines = md.splitlines()
    assert lines[0].startswith("| phase") and "McNemar p" in lines[0] and "95% CI pts" in lines[0]
    assert len(lines) == 4 and "sft" in lines[2] and "+50.0" in lines[2]
    words = describe_effects([strong, null])
    assert words[0].endswith("distinguishable from zero.") and "not" not in words[0]
    assert "not distinguishable from zero" in words[1]
    assert strong.significant() and not null.significant()
    assert isinstance(strong, Effect) and strong.as_dict()["fixed"] == 20


def _cells(md: str) -> list[list[str]]:
    """A Markdown table's rows (header first, separator left out) as stripped cells."""
    lines = md.splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[:1] + lines[2:]]


def _holm_by_steps(ps: list[float], alpha: float) -> set[int]:
    """Holm (1979) as first written: sort ascending, reject while p_(i) <= alpha / (m - i + 1), then stop."""
    m = len(ps)
    rejected: set[int] = set()
    for rank, i in enumerate(sorted(range(m), key=lambda k: ps[k])):
        if ps[i] >= alpha / (m - rank):  # < alpha on the adjusted scale <=> p < alpha / (m - rank)
            break
        rejected.add(i)
    return rejected


def test_holm_adjust_by_hand_and_against_the_step_down_procedure() -> None:
    # m = 4: sorted 0.001 (x4), 0.01 (x3), 0.02 (x2 = 0.04 -> max 0.04), 0.5 (x1 = 0.5)
    assert stats.holm_adjust([0.5, 0.01, 0.001, 0.02]) == pytest.approx([0.5, 0.03, 0.004, 0.04])
    assert stats.holm_adjust([0.3, 0.3]) == pytest.approx([0.6, 0.6])
    assert stats.holm_adjust([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    rng = np.random.default_rng(7)
    for _ in range(200):
        ps = list(rng.uniform(0, 0.2, size=int(rng.integers(1, 9))))
        adj = stats.holm_adjust(ps)
        assert all(p <= a <= min(1.0, len(ps) * p) + 1e-12 for p, a in zip(ps, adj))  # between raw and Bonferroni
        ranked = sorted(range(len(ps)), key=lambda k: ps[k])
        assert all(adj[i] <= adj[j] for i, j in zip(ranked, ranked[1:]))  # monotone in the raw order
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adj) if a < alpha} == _holm_by_steps(ps, alpha)


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1, "0.1", True, None])
def test_holm_adjust_rejects_what_is_not_a_p_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"pvalues\[1\]"):
        stats.holm_adjust([0.1, bad])  # type: ignore[list-item]


def test_verdict_uses_the_holm_adjusted_p() -> None:
    # 6 fixed, 0 broken of 20: McNemar p = 2 / 2^6 = 0.03125, CI excludes 0
    rows = [paired_effect([0] * 20, [1] * 6 + [0] * 14, phase="sft", role=f"junior_{k}", seed=0) for k in range(3)]
    assert all(e.p == pytest.approx(0.03125) and e.ci_excludes_zero for e in rows)
    alone = describe_effects(rows[:1])[0]
    assert alone.endswith("distinguishable from zero.") and "Holm-adjusted p = 0.031 over 1 row;" in alone
    three = describe_effects(rows)  # 3 x 0.03125 = 0.094 for the smallest: none survives
    assert all("Holm-adjusted p = 0.094 over 3 rows" in t and "borderline (the CI excludes 0 but the Holm-adjusted "
               "p >= 0.05)" in t for t in three)
    adjusted = stats.holm_effects(rows)
    assert [e.p_holm for e in adjusted] == pytest.approx([0.09375] * 3) and not any(e.called() for e in adjusted)
    assert all(e.significant() for e in adjusted)  # the raw rule would have called all three
    md = effects_table_markdown(rows)
    head = _cells(md)[0]
    assert head[8:11] == ["McNemar p", "Holm p", "noise Δ pts"] and head[-1] == "verdict"
    assert all(c[8:11] == ["0.031", "0.094", "–"] and c[-1] == "not called" for c in _cells(md)[1:])


def test_noise_rows_are_controls_and_set_the_floor() -> None:
    strong = paired_effect([0] * 40, [1] * 8 + [0] * 32, phase="2 SFT", role="junior_a", seed=0)  # +20 pts, p=0.008
    noise_small = paired_effect([0] * 40, [1] * 2 + [0] * 38, phase="noise", role="junior_a", seed=0)
    noise_big = paired_effect([0] * 40, [1] * 9 + [0] * 31, phase="noise", role="junior_a", seed=0)
    noise_small, noise_big = (dataclasses.replace(n, kind="noise") for n in (noise_small, noise_big))

    def floor(n: Effect) -> Effect:
        return dataclasses.replace(strong, noise_delta=n.delta, noise_p=n.p)

    rows = stats.holm_effects([floor(noise_small), noise_small])
    assert rows[1].p_holm is None and rows[0].p_holm == pytest.approx(strong.p)  # a family of one
    assert rows[0].above_noise() is True and rows[0].called() and not rows[1].called()
    words = describe_effects(rows)
    assert words[0].endswith("distinguishable from zero.") and "noise floor Δ +5.0 pts" in words[0]
    assert words[1].startswith("noise junior_a") and "noise control" in words[1]
    # the untrained repeat moved as much as training did (+22.5 > +20): not called
    big = stats.holm_effects([floor(noise_big), noise_big])
    assert big[0].above_noise() is False and not big[0].called()
    assert "within the noise floor, not called (the untrained role differs from itself" in describe_effects(big)[0]
    # a noise row whose own Δ is small but whose p < 0.05 still blocks the call
    odd = dataclasses.replace(strong, noise_delta=0.0, noise_p=0.01)
    assert odd.above_noise() is False and not stats.holm_effects([odd])[0].called()
    cells = stats.effect_cells(big[1])
    assert cells[9] == "–" and cells[-1] == "noise control"  # no Holm p for a control


def test_missing_and_unpaired_counts_are_shown() -> None:
    e = dataclasses.replace(paired_effect([0, 1, 0], [1, 1, 0], role="junior_a"), missing_before=1, missing_after=2,
                            unpaired=3)
    assert stats.missing_text(e) == "1/2; 3 unpaired"
    assert "1 before / 2 after with no outcome counted as failures; 3 questions held by one stage only left out" \
        in describe_effects([e])[0]
    assert _cells(effects_table_markdown([e]))[1][13] == "1/2; 3 unpaired"
