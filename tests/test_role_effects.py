"""Each phase judged on its own role (evaluation/role_effects.py), from stage evaluation records."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.report import render_markdown
from evaluation.report_content import ReportContent, compute_report
from evaluation.role_effects import NOISE_STAGE, role_effects
from evaluation.run_data import RunData, load_run
from evaluation.stats import holm_adjust


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


def _junior_recs(qs: list[str], ex: dict[str, object]) -> list[dict]:
    """Juniors-only records; ``ex[q]`` None: the junior has no outcome (its entry has no ``ex``);
    ``"absent"``: the record holds no entry for it at all (the run raised before any candidate)."""
    out = []
    for q in qs:
        v = ex[q]
        roles = {} if v == "absent" else {"junior_a": {"sql": None} if v is None else {"ex": v}}
        out.append({"question_id": q, "roles": roles})
    return out


def test_a_junior_with_no_outcome_counts_as_a_failure_and_is_counted():
    qs = [f"dev-{i}" for i in range(10)]
    jb = _junior_recs(qs, {q: i < 5 for i, q in enumerate(qs)})  # right on 0-4
    # after SFT: right on 0-3 and 5-7; question 4 raised (no entry), question 8 produced no SQL (no ex)
    after = {q: (i < 4 or 5 <= i < 8) for i, q in enumerate(qs)}
    after.update({"dev-4": "absent", "dev-8": None})
    js = _junior_recs(qs[:9] + ["dev-99"], {**after, "dev-99": True})  # dev-9 unfinished, dev-99 extra
    (a,) = role_effects({}, role_evals={"juniors_baseline": jb, "juniors_sft": js})
    assert (a.n, a.missing_before, a.missing_after, a.unpaired) == (9, 0, 2, 2)
    # dev-4 went 1 -> 0 (counted as a failure, not dropped); 5, 6, 7 went 0 -> 1
    assert (a.before, a.after, a.fixed, a.broken) == (5 / 9, 7 / 9, 3, 1)
    md = _markdown_for({"juniors_baseline": jb, "juniors_sft": js})
    assert "0/2; 2 unpaired" in md and "0 before / 2 after with no outcome counted as failures" in md


def _markdown_for(role_evals: dict, evals: dict | None = None) -> str:
    """The report's Markdown (effects section only) for constructed records."""
    effects = role_effects(evals or {}, role_evals=role_evals)
    run = RunData(run_dir=Path("run"), role_evals=role_evals)
    return render_markdown(ReportContent(run=run, stages={}, phases=[], roles=[], examples=[], trained_stage=None,
                                         pngs={}, effects=effects))


def test_noise_rows_sit_under_their_junior_and_set_its_floor():
    qs = [f"dev-{i}" for i in range(40)]
    base = {"junior_a": set(range(10)), "junior_b": set(range(10))}
    sft = {"junior_a": set(range(20)), "junior_b": set(range(20))}  # +25 pts each (10 fixed, 0 broken)
    # the untrained repeat: junior_a moves by 2 questions, junior_b by 11 (more than its SFT effect)
    rep = {"junior_a": set(range(12)), "junior_b": set(range(21))}

    def recs(right: dict[str, set[int]]) -> list[dict]:
        return [{"question_id": q, "roles": {j: {"ex": i in right[j]} for j in right}} for i, q in enumerate(qs)]

    role_evals = {"juniors_baseline": recs(base), "juniors_sft": recs(sft), NOISE_STAGE: recs(rep)}
    soc = [_rec(q, {"junior_a": True}, "junior_a", True, i < 20) for i, q in enumerate(qs)]
    rows = role_effects({"baseline": soc, "bandit": soc}, role_evals=role_evals)
    assert [(e.phase, e.role, e.kind) for e in rows] == [
        ("2 SFT", "junior_a", "effect"), ("noise", "junior_a", "noise"),
        ("2 SFT", "junior_b", "effect"), ("noise", "junior_b", "noise"), ("all", "society", "effect")]
    a, na, b, nb, society = rows
    assert (na.delta, nb.delta) == (pytest.approx(2 / 40), pytest.approx(11 / 40))
    assert (a.noise_delta, a.noise_p, b.noise_delta) == (na.delta, na.p, nb.delta)
    # Holm over the three effect rows only; the controls carry their raw p
    effect_ps = [e.p for e in rows if e.kind == "effect"]
    assert [e.p_holm for e in rows if e.kind == "effect"] == pytest.approx(holm_adjust(effect_ps))
    assert na.p_holm is None and nb.p_holm is None
    # a and b tie at p = 2^-9: both get 3 p (m = 3); the society row (no change) p = 1
    assert a.p_holm == b.p_holm == pytest.approx(3 * a.p) and a.p_holm < 0.05 and a.called()  # +25 > +5 pts
    assert b.p_holm < 0.05 and b.ci_excludes_zero and not b.called()  # +25 pts is within its +27.5-pt noise
    md = _markdown_for(role_evals, {"baseline": soc, "bandit": soc})
    assert "Holm p" in md and "noise Δ pts" in md and "| noise " in md
    assert "within the noise floor, not called" in md and "An effect is called when its Holm p < 0.05" in md


def test_noise_rows_without_an_sft_stage_yet():
    qs = [f"dev-{i}" for i in range(6)]
    jb = [{"question_id": q, "roles": {"junior_a": {"ex": i < 3}}} for i, q in enumerate(qs)]
    jr = [{"question_id": q, "roles": {"junior_a": {"ex": i < 2}}} for i, q in enumerate(qs[:5])]
    (n,) = role_effects({}, role_evals={"juniors_baseline": jb, NOISE_STAGE: jr})
    assert (n.kind, n.n, n.broken, n.unpaired, n.p_holm) == ("noise", 5, 1, 1, None)


def test_the_juniors_pick_has_its_own_sft_row_with_its_noise_floor():
    # juniors-only records carry the pick's EX as ``match``: 10 of 40 right before, 20 after, 12 on the repeat
    qs = [f"dev-{i}" for i in range(40)]

    def recs(right: int) -> list[dict]:
        return [{"question_id": q, "match": i < right, "roles": {"junior_a": {"ex": i < 10}}}
                for i, q in enumerate(qs)]

    rows = role_effects({}, role_evals={"juniors_baseline": recs(10), "juniors_sft": recs(20), NOISE_STAGE: recs(12)})
    by = {(e.phase, e.role): e for e in rows}
    pick, floor = by[("2 SFT", "juniors' pick")], by[("noise", "juniors' pick")]
    assert (pick.before, pick.after, pick.fixed, pick.broken) == (0.25, 0.5, 10, 0)
    assert (floor.kind, floor.delta, floor.p_holm) == ("noise", pytest.approx(2 / 40), None)
    assert (pick.noise_delta, pick.noise_p) == (floor.delta, floor.p) and pick.called()
    assert [e.role for e in rows].index("juniors' pick") == [e.role for e in rows].index("junior_a") + 2
    # in the Holm family with the junior's row (the junior did not move: p = 1)
    assert pick.p_holm == pytest.approx(min(1.0, 2 * pick.p))
    # records without the pick's outcome (constructed, or another agent's) get no such row
    bare = [{k: v for k, v in r.items() if k != "match"} for r in recs(10)]
    assert all(e.role != "juniors' pick" for e in role_effects({}, role_evals={"juniors_baseline": bare,
                                                                               "juniors_sft": recs(20)}))
