"""Paired before/after statistics (evaluation.stats): exact McNemar, paired bootstrap, Wilson CI."""

from __future__ import annotations

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
