"""Each phase judged on its own role (evaluation/role_effects.py), from stage evaluation records."""

from __future__ import annotations

import pytest

from evaluation.report import render_markdown
from evaluation.report_content import compute_report
from evaluation.role_effects import role_effects
from evaluation.run_data import load_run


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


def test_role_level_evaluations_and_the_replay_replace_the_society_rows():
    qs = [f"dev-{i}" for i in range(12)]
    jb = [{"question_id": q, "roles": {"junior_a": {"ex": i < 3}}} for i, q in enumerate(qs)]
    js = [{"question_id": q, "roles": {"junior_a": {"ex": i < 9}}} for i, q in enumerate(qs)]  # 6 fixed
    # senior on 8 fixed inputs (input right on 0-3): the base senior breaks 3, the trained one fixes 4-5
    def senior(q: str, before: bool, after: bool) -> dict:
        return {"question_id": q, "roles": {"senior": {"before_ex": before, "after_ex": after}}}

    sb = [senior(q, i < 4, i < 1) for i, q in enumerate(qs[:8])]
    sg = [senior(q, i < 4, i < 6) for i, q in enumerate(qs[:8])]
    replay = [{"task_id": q, "contested": i < 4, "majority_vote": int(i in (0, 5)), "bandit": int(i in (0, 1, 2, 5))}
              for i, q in enumerate(qs[:6])]
    soc = [_rec(q, {"junior_a": False}, "junior_a", False, i < 5) for i, q in enumerate(qs[:5])]
    soc_after = [_rec(q, {"junior_a": False}, "junior_a", False, i < 4) for i, q in enumerate(qs[:5])]
    rows = {(e.phase, e.role, e.metric): e for e in role_effects(
        {"baseline": soc, "bandit": soc_after},
        role_evals={"juniors_baseline": jb, "juniors_sft": js, "senior_baseline": sb, "senior_grpo": sg},
        replay=replay)}
    j = rows[("2 SFT", "junior_a", "own candidate EX")]
    assert (j.n, j.fixed, j.broken) == (12, 6, 0) and j.p == pytest.approx(2 / 2**6)
    s = rows[("3 GRPO", "senior", "EX of its output on fixed inputs (base -> trained)")]
    assert (s.n, s.before, s.after, s.fixed, s.broken) == (8, 1 / 8, 6 / 8, 5, 0)
    base = rows[("3 GRPO", "senior", "EX of output vs its input (base senior)")]
    trained = rows[("3 GRPO", "senior", "EX of output vs its input (trained senior)")]
    assert (base.fixed, base.broken) == (0, 3) and (trained.fixed, trained.broken) == (2, 0)
    all_ = rows[("4 bandit", "supervisor",
                 "EX of the chosen candidate, all held-out decisions (majority vote -> bandit, offline replay)")]
    contested = rows[("4 bandit", "supervisor",
                      "EX of the chosen candidate, contested decisions (majority vote -> bandit, offline replay)")]
    assert (all_.n, all_.fixed, all_.broken) == (6, 2, 0) and (contested.n, contested.fixed) == (4, 2)
    society = rows[("all", "society", "end-to-end EX")]
    assert (society.n, society.broken) == (5, 1)
    assert not any(m == "questions fixed by the senior" for _, _, m in rows)  # no society sft/grpo stage


def test_report_shows_the_table_for_a_recorded_run():
    c = compute_report(load_run("tests/fixtures/obs/pipeline_smoke"))
    md = render_markdown(c)
    assert "## Each phase on the role it trains" in md and "McNemar p" in md
    assert {e.role for e in c.effects} >= {"junior_direct", "society"}
    assert "not distinguishable from zero" in md
