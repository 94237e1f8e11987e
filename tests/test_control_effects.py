"""The one-shot control beside the society's figures (evaluation/control_effects.py), from stage records.

Constructed records stand for the stages' ``eval/roles/*.jsonl`` and ``eval/*.jsonl`` files (the
pipeline writes them for real in tests/test_train_pipeline.py); the statistics are the project's
own (evaluation.stats), checked here against hand counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.control_effects import SINGLE_BASELINE, SINGLE_TRAINED, adjust_with, control_rows
from evaluation.report import render_html, render_markdown
from evaluation.report_content import ReportContent
from evaluation.role_effects import role_effects
from evaluation.run_data import RunData
from evaluation.stats import holm_adjust


def _recs(qs: list[str], right: set[int], *, tokens: int, seconds: float, calls: int) -> list[dict]:
    """One record per question; ``right``: indexes whose SQL matched gold; the cost grows with the index
    so that a mean over a subset differs from the mean over all."""
    return [{"question_id": q, "match": i in right, "tokens": tokens + i, "seconds": seconds + i / 10,
             "llm_calls": calls} for i, q in enumerate(qs)]


QS = [f"dev-{i}" for i in range(40)]


def _stages() -> tuple[dict, dict]:
    role_evals = {
        SINGLE_BASELINE: _recs(QS, set(range(8)), tokens=300, seconds=1.0, calls=1),
        SINGLE_TRAINED: _recs(QS, set(range(18)), tokens=300, seconds=1.0, calls=1),  # 10 fixed
        "juniors_baseline": _recs(QS, set(range(9)), tokens=900, seconds=3.0, calls=3),
        "juniors_sft": _recs(QS, set(range(20)) - {0}, tokens=900, seconds=3.0, calls=3),
    }
    # the society ran 6 of the 40 questions plus one the single stages do not have
    soc = QS[:6] + ["dev-99"]
    evals = {"baseline": _recs(soc, {0, 1, 2}, tokens=2400, seconds=7.0, calls=9),
             "sft": _recs(soc, {0, 1, 2, 3, 4, 5}, tokens=2400, seconds=7.0, calls=9)}
    return evals, role_evals


def test_each_comparison_pairs_by_question_with_the_cost_on_the_same_questions() -> None:
    evals, role_evals = _stages()
    rows = {(r.effect.role, r.effect.metric): r for r in control_rows(evals, role_evals)}
    assert len(rows) == 5
    pick_u = rows[("juniors' pick", "EX, one-shot single -> juniors' pick, both untrained")]
    e = pick_u.effect
    assert (e.n, e.before, e.after, e.fixed, e.broken, e.unpaired) == (40, 8 / 40, 9 / 40, 1, 0, 0)
    assert (pick_u.control.label, pick_u.control.stage) == ("single (untrained)", SINGLE_BASELINE)
    assert pick_u.control.tokens == pytest.approx(300 + 19.5) and pick_u.compared.llm_calls == 3
    pick_t = rows[("juniors' pick", "EX, one-shot single -> juniors' pick, both trained")].effect
    assert (pick_t.fixed, pick_t.broken) == (2, 1)  # questions 18, 19 fixed, question 0 broken
    trained = rows[("one-shot single", "EX, untrained -> the writer's trained adapter")].effect
    assert (trained.phase, trained.fixed, trained.broken) == ("2 SFT", 10, 0) and trained.p < 0.01
    # the society rows pair on the 6 questions both ran; the other 34 + dev-99 are counted, not dropped
    soc_u = rows[("society", "EX, one-shot single -> society, both untrained")]
    assert (soc_u.effect.n, soc_u.effect.unpaired) == (6, 35)
    assert (soc_u.effect.before, soc_u.effect.after) == (1.0, 0.5)  # single right on 0-5, society on 0-2
    # costs on those 6 questions only: tokens 300 + mean(0..5), not the 40-question mean
    assert soc_u.control.n == soc_u.compared.n == 6
    assert soc_u.control.tokens == pytest.approx(302.5) and soc_u.compared.tokens == pytest.approx(2402.5)
    assert soc_u.control.seconds == pytest.approx(1.25) and soc_u.compared.llm_calls == 9
    soc_t = rows[("society", "EX, one-shot single -> society, both trained (society: sft)")]
    assert soc_t.compared.stage == "sft" and soc_t.effect.n == 6


def test_no_single_stage_no_row_and_a_missing_outcome_is_counted() -> None:
    evals, role_evals = _stages()
    assert control_rows(evals, {k: v for k, v in role_evals.items() if not k.startswith("single")}) == []
    assert control_rows({}, {}) == []
    only = {SINGLE_BASELINE: role_evals[SINGLE_BASELINE], "juniors_baseline": [
        {"question_id": "dev-0", "match": None}, {"question_id": "dev-1", "match": True}]}
    (row,) = control_rows({}, only)
    assert (row.effect.n, row.effect.missing_after, row.effect.unpaired, row.effect.broken) == (2, 1, 38, 1)


def test_the_control_rows_join_the_reports_holm_family() -> None:
    evals, role_evals = _stages()
    phase_rows = role_effects(evals, role_evals=role_evals)
    effects, controls = adjust_with(phase_rows, control_rows(evals, role_evals))
    assert len(effects) == len(phase_rows) + 5 and [c.effect for c in controls] == effects[len(phase_rows):]
    claims = [e for e in effects if e.kind == "effect"]
    assert [e.p_holm for e in claims] == pytest.approx(holm_adjust([e.p for e in claims]))
    alone = adjust_with([], control_rows(evals, role_evals))[0]
    assert any(a.p_holm < b.p_holm for a, b in zip(alone, effects[len(phase_rows):], strict=True))  # a larger family


def test_the_report_shows_the_control_beside_the_figures() -> None:
    evals, role_evals = _stages()
    effects, controls = adjust_with(role_effects(evals, role_evals=role_evals), control_rows(evals, role_evals))
    run = RunData(run_dir=Path("run"), evals=evals, role_evals=role_evals)
    c = ReportContent(run=run, stages={}, phases=[], roles=[], examples=[], trained_stage=None, pngs={},
                      effects=effects, controls=controls)
    md = render_markdown(c)
    section = md.split("## What the society's extra calls buy (the one-shot control, same questions)")[1]
    row = next(line for line in section.splitlines() if "society, both untrained" in line)
    cells = [x.strip() for x in row.strip("|").split("|")]
    assert cells[1:7] == ["6", "single (untrained)", "100.0%", "302", "1.25", "1.00"]
    assert cells[7:13] == ["society (untrained)", "50.0%", "2,402", "7.25", "9.00", "-50.0 pt"]
    assert any(line.startswith("| control ") and "society, both untrained" in line  # in the effects table too
               for line in md.split("## What the society's")[0].splitlines())
    html = render_html(c)
    assert "<h2>What the society's extra calls buy" in html and "<td class=\"l\">single (untrained)</td>" in html
    assert "What the society's extra calls buy" not in render_markdown(
        ReportContent(run=run, stages={}, phases=[], roles=[], examples=[], trained_stage=None, pngs={}))


def test_the_dry_run_counts_the_control_stages() -> None:
    from training.plan import plan_profile
    from training.profile import TrainConfig

    cfg = TrainConfig.load("default")
    plan = plan_profile(cfg, source="default")
    assert "one-shot control 300 questions x 2 (one LLM call each)" in plan.budgets["eval"]
    steps = {p["step"]: p["what"] for p in plan.phases}
    assert "one-shot control (single, the writer junior once) on the same 300 questions" in \
        steps["eval baseline roles"]
    assert "the writer on its trained adapter" in steps["eval sft roles"]
    off = plan_profile(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"single": False})}))
    assert "one-shot" not in off.budgets["eval"] and "one-shot" not in str(off.phases)
