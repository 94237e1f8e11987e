"""How much the juniors' candidates differ (evaluation/candidates.py, ``sqlsociety candidates``).

The fixture (tests/fixtures/candidates/README.md) is 12 real records of the 2026-12-05 run's
untrained juniors and 10 real records of their repeat with shifted seeds, used as a control. Per
question, EX of junior_direct / junior_step_by_step / junior_decompose, the pick (majority vote of
result digests), distinct results among the executed candidates, and the control's EX:

==========  ======  =========  ====  ==========  =========
question    d s c   picked     pick  distinct    control
==========  ======  =========  ====  ==========  =========
dev-1       1 1 1   direct     1     1 (all ok)  1
dev-12      1 0 0   direct     1     1           1
dev-16      0 0 0   direct     0     1 (all ok)  0
dev-23      0 0 0   direct     0     3           0
dev-33      0 0 0   direct     0     0           0
dev-37      0 0 1   direct     0     2           0
dev-39      0 0 0   step       0     1           0
dev-75      0 1 0   direct     0     2           0
dev-84      0 0 1   decompose  1     1           1
dev-135     0 0 1   decompose  1     1           --
dev-193     1 1 0   direct     1     2           --
dev-194     1 0 0   direct     1     3           --
dev-63      (not in the records)                 1
==========  ======  =========  ====  ==========  =========
"""

from __future__ import annotations

import doctest
import json
import os
from math import comb
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from cli_text import flat

from evaluation import candidates
from evaluation.candidates import (
    CandidatesInputError,
    against_control,
    pass_at_k,
    persona_pass_at_k,
    read_control,
    read_records,
    summarize,
)
from society.cli.root import app

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "candidates"
RECORDS = FIXTURES / "juniors_baseline.jsonl"
CONTROL = FIXTURES / "juniors_repeat_control.jsonl"
runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, ["candidates", *args], env={"COLUMNS": "200"})


# --------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (5, 2, 1, 2 / 5),  # pass@1 = c/n
    (5, 0, 3, 0.0),
    (5, 3, 3, 1.0),  # n - c = 2 < k: every 3 of 5 holds a right draw
    (4, 1, 4, 1.0),  # k = n: any right draw
    (10, 3, 5, 1 - comb(7, 5) / comb(10, 5)),  # 1 - 21/252
    (1, 1, 1, 1.0),
])
def test_pass_at_k_is_chen_et_al_eq_1(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_matches_counting_the_k_subsets() -> None:
    """pass@k is the share of k-subsets of the n draws that hold a right draw (the definition)."""
    from itertools import combinations

    for n in range(1, 7):
        for c in range(n + 1):
            draws = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(combinations(draws, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4), (3.0, 1, 1)])
def test_pass_at_k_refuses_impossible_counts(n, c, k) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_persona_pass_at_k_averages_over_questions_with_several_draws() -> None:
    # two juniors of persona "direct" (count: 2 in the config), one of "decompose"
    def rec(q: str, d1: bool, d2: bool, dec: bool) -> dict:
        return {"question_id": q, "candidates": [{"junior": "junior_direct_1"}],
                "roles": {"junior_direct_1": {"persona": "direct", "ex": d1},
                          "junior_direct_2": {"persona": "direct", "ex": d2},
                          "junior_decompose": {"persona": "decompose", "ex": dec},
                          "supervisor": {"choice": "junior_direct_1"}}}

    recs = [rec("a", True, True, False), rec("b", True, False, False), rec("c", False, False, True)]
    # per question pass@1 = c/2: 1, 0.5, 0 -> 0.5; pass@2 = 1, 1, 0 -> 2/3
    assert persona_pass_at_k(recs, "direct") == pytest.approx([0.5, 2 / 3])
    assert persona_pass_at_k(recs, "decompose") == pytest.approx([1 / 3])
    s = summarize(recs)
    direct = next(r for r in s.personas if r.label == "direct")
    assert (direct.k, direct.n, direct.draws) == (3, 6, 2)
    assert [r.label for r in s.juniors] == ["junior_decompose", "junior_direct_1", "junior_direct_2"]
    assert s.oracle.k == 3 and s.oracle.draws == 3
    with pytest.raises(ValueError, match="no junior with persona 'step_by_step'"):
        persona_pass_at_k(recs, "step_by_step")


def test_doctests() -> None:
    assert doctest.testmod(candidates).failed == 0


# --------------------------------------------------------------------------- the real fixture


def test_rates_oracle_pick_and_agreement_on_real_records() -> None:
    s = summarize(read_records(RECORDS))
    assert s.n == 12
    assert {r.label: (r.k, r.n, r.persona, r.missing) for r in s.juniors} == {
        "junior_decompose": (4, 12, "decompose", 0),
        "junior_direct": (4, 12, "direct", 0),
        "junior_step_by_step": (3, 12, "step_by_step", 0),
    }
    assert {r.label: (r.k, r.n, r.draws) for r in s.personas} == {
        "decompose": (4, 12, 1), "direct": (4, 12, 1), "step_by_step": (3, 12, 1)}
    assert s.pass_at_k == {"decompose": [4 / 12], "direct": [4 / 12], "step_by_step": [3 / 12]}
    assert (s.oracle.k, s.oracle.n) == (8, 12)
    assert (s.pick.k, s.pick.n, s.pick.missing) == (6, 12, 0)
    assert s.pick.k == sum(r["match"] for r in read_records(RECORDS))  # juniors-only: match is the pick's EX
    assert s.agreement == {0: 1, 1: 6, 2: 3, 3: 2}
    assert s.all_agree == 2  # dev-1 and dev-16: all three executed and returned the same rows
    assert s.picks == {"junior_direct": 9, "junior_decompose": 2, "junior_step_by_step": 1}
    lo, hi = s.oracle.ci_low, s.oracle.ci_high
    assert lo < 8 / 12 < hi and 0 < lo and hi < 1
    within = {e.role: e for e in s.within}
    d = within["pick vs junior_direct"]
    assert (d.n, d.before, d.after, d.fixed, d.broken) == (12, 4 / 12, 6 / 12, 2, 0)  # dev-84, dev-135
    assert d.p == pytest.approx(0.5)  # exact McNemar: 2 * 0.5^2
    assert all(e.p_holm is not None and e.p_holm >= e.p for e in s.within)


def test_the_pairing_counts_questions_held_by_one_file() -> None:
    cmp = against_control(read_records(RECORDS), read_control(CONTROL))
    assert (cmp.paired, cmp.only_records, cmp.only_control, cmp.control_missing) == (9, 3, 1, 0)
    rows = {e.role: e for e in cmp.effects}
    assert list(rows) == ["pick", "oracle", "junior_decompose", "junior_direct", "junior_step_by_step"]
    pick, oracle = rows["pick"], rows["oracle"]
    assert (pick.n, pick.before, pick.after, pick.fixed, pick.broken, pick.p) == (9, 3 / 9, 3 / 9, 0, 0, 1.0)
    assert (oracle.n, oracle.after, oracle.fixed, oracle.broken) == (9, 5 / 9, 2, 0)  # dev-37, dev-75
    assert all(e.unpaired == 4 for e in cmp.effects)
    assert all(e.p_holm is not None for e in cmp.effects)


def test_a_control_on_other_questions_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"question_id": "dev-999", "match": True}) + "\n")
    with pytest.raises(CandidatesInputError, match="no question in common"):
        against_control(read_records(RECORDS), read_control(other), control_name=str(other))


# --------------------------------------------------------------------------- the command


def test_cli_prints_the_tables_and_writes_nothing(tmp_path: Path) -> None:
    before = sorted(p.name for p in FIXTURES.iterdir())
    r = _cli(str(RECORDS), "--control", str(CONTROL))
    assert r.exit_code == 0, r.output
    for words in ("12 questions", "junior_direct", "4/12", "oracle", "8/12", "6/12", "pass@k per persona",
                  "0 → 1, 1 → 6, 2 → 3, 3 → 2", "same rows on 2 of 12", "pick vs junior_direct",
                  "9 questions in both files; left out: 3 only in the records, 1 only in the control", "Holm p"):
        assert words in r.output, (words, r.output)
    assert sorted(p.name for p in FIXTURES.iterdir()) == before


def test_cli_markdown() -> None:
    r = _cli(str(RECORDS), "--markdown")
    assert r.exit_code == 0, r.output
    assert "| junior_direct " in r.output and "| oracle " in r.output and "McNemar p" in r.output
    assert "control" not in r.output


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_cli_bad_input_names_the_file_and_what_to_pass(tmp_path: Path) -> None:
    line = RECORDS.read_text(encoding="utf-8").splitlines()[0]
    rec = json.loads(line)
    no_roles = {k: v for k, v in rec.items() if k != "roles"}
    single = {**rec, "roles": {"writer": {"sql": "SELECT 1"}}}  # candidates, but no role named junior_*
    control_lines = CONTROL.read_text(encoding="utf-8")
    cases = [
        (tmp_path / "missing.jsonl", "does not exist", "juniors-only evaluation"),
        (tmp_path, "is a directory", "juniors-only evaluation"),
        (_write(tmp_path, "prose.jsonl", "not json\nstill not\n"), "line 1 is not JSON", "juniors-only"),
        (_write(tmp_path, "list.jsonl", "[1, 2]\n{}\n"), "line 1 is not a JSON object", "juniors-only"),
        (_write(tmp_path, "empty.jsonl", "\n"), "holds no record", "juniors-only"),
        (_write(tmp_path, "noid.jsonl", json.dumps({"match": True}) + "\n"), "record 1 has no question_id",
         "juniors-only"),
        (_write(tmp_path, "noroles.jsonl", json.dumps(no_roles) + "\n"),
         "none of its 1 records has a junior in roles", "eval/roles/juniors_<stage>.jsonl"),
        (_write(tmp_path, "single.jsonl", json.dumps(single) + "\n"), "none of its 1 records has a junior",
         "juniors-only"),
        (_write(tmp_path, "control.jsonl", control_lines), "none of its 10 records has a junior", "juniors-only"),
        (_write(tmp_path, "cands.jsonl", json.dumps({**rec, "candidates": {"junior_direct": {}}}) + "\n"),
         "record 1 (question dev-1): candidates is dict, not a list", "juniors-only"),
        (_write(tmp_path, "rolelist.jsonl", json.dumps({**rec, "roles": ["junior_direct"]}) + "\n"),
         "record 1 (question dev-1): roles is list, not a mapping", "juniors-only"),
        (_write(tmp_path, "twice.jsonl", f"{line}\n{line}\n"), "question dev-1 appears twice", "keep one record"),
    ]
    for path, what, todo in cases:
        r = _cli(str(path))
        assert r.exit_code == 2, (path, r.output)
        text = flat(r.output)
        assert str(path) in text and what in text and todo in text, (path, text)


def test_a_failed_record_counts_as_a_failure_of_every_row(tmp_path: Path) -> None:
    # the record `sqlsociety eval` writes when a question's run raises (society.evaluate): no junior answered
    failed = {"agent": "juniors", "question_id": "dev-9999", "status": "failed", "error": "DataError: no database",
              "candidates": [], "roles": {}, "match": False}
    p = _write(tmp_path, "with_failed.jsonl", RECORDS.read_text(encoding="utf-8") + json.dumps(failed) + "\n")
    s = summarize(read_records(p))
    assert s.n == 13 and s.without_juniors == 1
    assert {r.label: (r.k, r.n, r.missing) for r in s.juniors} == {
        "junior_decompose": (4, 13, 1), "junior_direct": (4, 13, 1), "junior_step_by_step": (3, 13, 1)}
    assert (s.oracle.k, s.oracle.n, s.oracle.missing) == (8, 13, 1)
    assert (s.pick.k, s.pick.n, s.pick.missing) == (6, 13, 1)
    assert s.agreement[0] == 2 and s.picks["(none)"] == 1
    r = _cli(str(p))
    assert r.exit_code == 0, r.output
    assert "1 records without any junior (failed runs) count as failures" in r.output


def test_compact_records_without_candidates_give_all_but_the_agreement(tmp_path: Path) -> None:
    # the compact form of the records committed under bench/results: roles (sql, ok, fixed, ex), no candidates
    lines = []
    for rec in read_records(RECORDS):
        roles = {k: {f: v[f] for f in ("sql", "ok", "fixed", "ex") if f in v} if k.startswith("junior") else v
                 for k, v in rec["roles"].items()}
        lines.append(json.dumps({"question_id": rec["question_id"], "match": rec["match"], "roles": roles}))
    p = _write(tmp_path, "compact.jsonl", "\n".join(lines) + "\n")
    s, full = summarize(read_records(p)), summarize(read_records(RECORDS))
    assert s.agreement is None and s.all_agree is None
    assert [(r.label, r.k) for r in s.juniors] == [(r.label, r.k) for r in full.juniors]
    assert (s.oracle.k, s.pick.k, s.picks) == (full.oracle.k, full.pick.k, full.picks)
    assert [r.persona for r in s.juniors] == ["junior_decompose", "junior_direct", "junior_step_by_step"]
    r = _cli(str(p), "--control", str(CONTROL))
    assert r.exit_code == 0, r.output
    assert "not measured, the records hold no candidates list" in r.output and "9 questions in both" in r.output


def test_cli_bad_control_names_it(tmp_path: Path) -> None:
    no_match = _write(tmp_path, "nomatch.jsonl", json.dumps({"question_id": "dev-1"}) + "\n")
    r = _cli(str(RECORDS), "--control", str(no_match))
    assert r.exit_code == 2
    text = flat(r.output)
    assert f"{no_match}: record 1 (question dev-1) has no match" in text and "--agent single" in text
    yes = _write(tmp_path, "yes.jsonl", json.dumps({"question_id": "dev-1", "match": "yes"}) + "\n")
    r = _cli(str(RECORDS), "--control", str(yes))
    assert r.exit_code == 2
    assert f"{yes}: record 1 (question dev-1): match is 'yes', not true/false/null" in flat(r.output)
    other = _write(tmp_path, "other.jsonl", json.dumps({"question_id": "dev-999", "match": True}) + "\n")
    r = _cli(str(RECORDS), "--control", str(other))
    assert r.exit_code == 2
    text = flat(r.output)
    assert f"{other} and {RECORDS} have no question in common" in text and "same questions" in text


# --------------------------------------------------------------------------- pooling evaluations


def test_pooling_two_evaluations_sets_their_juniors_side_by_side_and_votes_again(tmp_path: Path) -> None:
    """Pooled with a copy of its first 9 records, the fixture's juniors appear twice (the copy's
    renamed ``_2``, same persona): the oracle is unchanged, each persona has 2 draws whose pass@2
    equals pass@1 (the draws are identical), and the pick voted again over 6 candidates is the same
    junior's result (every group doubles) on the 9 questions both hold."""
    lines = RECORDS.read_text(encoding="utf-8").splitlines()
    copy = _write(tmp_path, "copy.jsonl", "\n".join(lines[:9]) + "\n")
    one = summarize(read_records(RECORDS)[:9])
    s, cmp, vs_before = candidates.read_summary([RECORDS, copy], CONTROL)
    assert vs_before is None
    assert s.n == 9
    assert [r.label for r in s.juniors] == ["junior_decompose", "junior_decompose_2", "junior_direct",
                                            "junior_direct_2", "junior_step_by_step", "junior_step_by_step_2"]
    assert {r.label: r.draws for r in s.personas} == {"decompose": 2, "direct": 2, "step_by_step": 2}
    assert (s.oracle.k, s.pick.k) == (one.oracle.k, one.pick.k)
    for rates in s.pass_at_k.values():
        assert rates[1] == pytest.approx(rates[0])
    assert "pooled 2 evaluations on the 9 questions all hold; left out: 3 only in" in s.pooled
    assert "junior_direct of" in s.pooled and "→ junior_direct_2" in s.pooled
    assert cmp is not None and (cmp.paired, cmp.only_control) == (9, 1)  # the first 9 are in the control; dev-63 not


def test_pooling_votes_across_the_evaluations() -> None:
    """A question on which each evaluation's junior alone is split 1-1 is decided by the pooled vote."""
    def rec(qid, name, sql, digest, ex):
        return {"question_id": qid, "roles": {name: {"ex": ex, "persona": name[7:]}, "supervisor": {"choice": name}},
                "candidates": [{"junior": name, "persona": name[7:], "sql": sql, "ok": True,
                                "result_digest": digest, "row_count": 1}]}

    a = [rec("q", "junior_direct", "SELECT 1", "x", False)]
    b = [rec("q", "junior_decompose", "SELECT 2", "y", True)]
    c = [rec("q", "junior_examples", "SELECT 3", "y", True)]
    p = candidates.pool_records([a, b, c])
    assert p.records[0]["roles"]["supervisor"]["choice"] == "junior_decompose"  # y has 2 votes of 3
    assert candidates.pick_outcomes(p.records) == ([1], 0)
    assert candidates.pool_records([a, b]).records[0]["roles"]["supervisor"]["choice"] == "junior_direct"  # tie: order


def test_compact_records_cannot_be_pooled(tmp_path: Path) -> None:
    compact = [{k: v for k, v in json.loads(line).items() if k != "candidates"}
               for line in RECORDS.read_text(encoding="utf-8").splitlines()]
    path = _write(tmp_path, "compact.jsonl", "".join(json.dumps(r) + "\n" for r in compact))
    r = _cli(str(RECORDS), str(path))
    assert r.exit_code == 2
    assert "cannot pool" in flat(r.output) and "no candidates list (compact records)" in flat(r.output)


# --------------------------------------------------------------------------- against another evaluation (--before)

LONG_RUN = Path(__file__).resolve().parent.parent / "bench" / "results"
UNTRAINED = LONG_RUN / "long-2026-12-06-partial" / "eval" / "roles" / "juniors_baseline.jsonl"
TRAINED = LONG_RUN / "long-2026-12-06-juniors" / "eval" / "roles" / "juniors_sft.jsonl.xz"


def test_against_before_agrees_with_the_reports_role_effects_on_a_recorded_run() -> None:
    """The long run's 300 untrained -> trained juniors (committed records, the second xz-compressed):
    every junior row and the pick equal the report's phase-2 rows (evaluation.role_effects), computed apart."""
    from evaluation.candidates import against_before
    from evaluation.role_effects import role_effects

    before, after = read_records(UNTRAINED), read_records(TRAINED)
    cmp = against_before(after, before)
    assert (cmp.paired, cmp.only_records, cmp.only_control) == (300, 0, 0)
    rows = {e.role: e for e in cmp.effects}
    report = {e.role: e for e in role_effects({}, role_evals={"juniors_baseline": before, "juniors_sft": after})
              if e.phase == "2 SFT"}
    assert set(report) == {"junior_direct", "junior_step_by_step", "junior_decompose", "juniors' pick"}
    for j, e in report.items():
        mine = rows["pick" if j == "juniors' pick" else j]
        assert (mine.n, mine.before, mine.after, mine.fixed, mine.broken, mine.p) == (
            e.n, e.before, e.after, e.fixed, e.broken, e.p), j
        assert (mine.ci_low, mine.ci_high) == (e.ci_low, e.ci_high)  # same seed, same pairs
    pick = rows["pick"]  # the supervisor's majority vote, from match
    assert pick.before == sum(r["match"] for r in before) / 300 and pick.after == sum(r["match"] for r in after) / 300
    assert all(e.p_holm is not None and e.p_holm >= e.p for e in cmp.effects)


def test_against_before_refuses_files_without_a_common_question_or_junior(tmp_path: Path) -> None:
    from evaluation.candidates import against_before

    recs = read_records(RECORDS)
    with pytest.raises(CandidatesInputError, match="no question in common"):
        against_before(recs, [{"question_id": "dev-999", "roles": {}}], before_name="old.jsonl")
    renamed = [{**r, "roles": {"junior_other": {"ex": True}}} for r in recs]
    with pytest.raises(CandidatesInputError, match="no junior in common"):
        against_before(recs, renamed, before_name="old.jsonl")


def test_cli_before_prints_each_row_against_itself() -> None:
    r = _cli(str(TRAINED), "--before", str(UNTRAINED), "--markdown")
    assert r.exit_code == 0, r.output
    text = flat(r.output)
    assert "against the same row of" in text and "300 questions in both files" in text
    direct = next(line for line in r.output.splitlines() if line.startswith("| junior_direct") and "+6.7" in line)
    assert "| 31 " in direct and "| 11 " in direct  # fixed / broken of the recorded run
