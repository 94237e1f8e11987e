"""Each phase judged on its own role (evaluation/role_effects.py), from stage evaluation records."""

from __future__ import annotations

import pytest

from evaluation.report import compute_report, load_run, render_markdown
from evaluation.role_effects import role_effects


def _rec(q: str, juniors: dict[str, bool], choice: str, before: bool, after: bool) -> dict:
    roles = {j: {"ex": ex} for j, ex in juniors.items()}
    roles["supervisor"] = {"choice": choice}
    roles["senior"] = {"before_ex": before, "after_ex": after}
    return {"question_id": q, "roles": roles, "match": after}


def test_rows_pair_questions_and_count_fixed_and_broken():
    qs = [f"dev-{i}" for i in range(10)]
    base = [_rec(q, {"junior_a": i < 2, "junior_b": True}, "junior_a", i < 2, i < 2) for i, q in enumerate(qs)]
    # after SFT junior_a is right on 8 of 10 (6 fixed, 0 broken); junior_b breaks one
    sft = [_rec(q, {"junior_a": i < 8, "junior_b": i != 0}, "junior_a", i < 8, i < 8) for i, q in enumerate(qs)]
    # in the grpo stage the senior fixes questions 8 and 9 and breaks 0
    grpo = [_rec(q, {"junior_a": i < 8, "junior_b": True}, "junior_a", i < 8, i != 0) for i, q in enumerate(qs)]
    rows = {(e.phase, e.role, e.metric): e for e in role_effects({"baseline": base, "sft": sft, "grpo": grpo[:9]})}
    a = rows[("2 SFT", "junior_a", "own candidate EX")]
    assert (a.n, a.before, a.after, a.fixed, a.broken) == (10, 0.2, 0.8, 6, 0)
    assert a.p == pytest.approx(2 / 2**6) and a.ci_low > 0  # exact McNemar: 2 * 0.5^6
    b = rows[("2 SFT", "junior_b", "own candidate EX")]
    assert (b.fixed, b.broken, b.p) == (0, 1, 1.0)
    s = rows[("3 GRPO", "senior", "EX of output vs its input")]
    assert s.n == 9 and (s.fixed, s.broken) == (1, 1)  # question 8 fixed, question 0 broken
    society = rows[("all", "society", "end-to-end EX")]
    assert society.n == 9  # paired on the questions both stages hold
    assert ("4 bandit", "supervisor", "EX of the chosen candidate") not in rows  # no bandit stage


def test_report_shows_the_table_for_a_recorded_run():
    c = compute_report(load_run("tests/fixtures/obs/pipeline_smoke"))
    md = render_markdown(c)
    assert "## Each phase on the role it trains" in md and "McNemar p" in md
    assert {e.role for e in c.effects} >= {"junior_direct", "society"}
    assert "not distinguishable from zero" in md
