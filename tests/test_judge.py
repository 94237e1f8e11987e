"""LLM-as-a-judge (evaluation.judge, `sqlsociety judge`): the reply parser, the summary split by EX,
a dead endpoint (a real closed port), and a real judge run with the SmolLM2-135M smoke model."""

from __future__ import annotations

import doctest
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation import judge as judge_mod
from evaluation.judge import (
    ERROR_TYPES,
    JudgeParseError,
    JudgeRecord,
    answer_text,
    build_messages,
    load_answers,
    parse_judge_reply,
    summarize,
)
from evaluation.metrics.ex import execution_match, run_query
from society.candidate import Candidate
from society.cli.root import app
from society.run import RunRecorder, SocietyRun
from society.state import ExecSummary, SeniorTurn
from tools.spider import load_examples

runner = CliRunner()


def test_doctests():
    result = doctest.testmod(judge_mod)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- the reply parser


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"sql_correctness": 4, "reasoning": 3, "format": 5, "error_type": "none"}', (4, 3, 5, "none")),
        (
            '```json\n{"sql_correctness": 2, "reasoning": 2, "format": 4, "error_type": "wrong_join"}\n```',
            (2, 2, 4, "wrong_join"),
        ),
        (
            'Here is my grade:\n{"SQL correctness": "5", "Reasoning": "4/5", "Format": 5.0, "Error type": '
            '"None"}\nThanks!',
            (5, 4, 5, "none"),
        ),
        ("{'sql_correctness': 1, 'reasoning': 1, 'format': 1, 'error_type': 'missing_sql'}", (1, 1, 1, "missing_sql")),
        (
            '{"correctness": 3, "reasoning_score": 2, "formatting": 4, "error": "wrong filter"}',
            (3, 2, 4, "wrong_filter"),
        ),
        (
            '{"scores": {"sql_correctness": 3, "reasoning": 3, "format": 3}, "error_type": "syntax"}',
            (3, 3, 3, "syntax"),
        ),
        (
            '{"note": "draft"} then {"sql_correctness": 5, "reasoning": 5, "format": 5, "error_type": "none",}',
            (5, 5, 5, "none"),
        ),
        (
            '{"sql_correctness": 2, "reasoning": 1, "format": 3, "error_type": ["wrong_column", "wrong_table"]}',
            (2, 1, 3, "wrong_column"),
        ),
    ],
)
def test_parse_valid_replies(reply, expected):
    v = parse_judge_reply(reply)
    assert (v.sql_correctness, v.reasoning, v.format, v.error_type) == expected
    assert v.error_type in ERROR_TYPES


def test_unknown_error_type_becomes_other_and_keeps_the_word():
    v = parse_judge_reply('{"sql_correctness": 2, "reasoning": 2, "format": 2, "error_type": "hallucinated value"}')
    assert v.error_type == "other" and v.error_type_raw == "hallucinated value"


@pytest.mark.parametrize(
    "reply, why",
    [
        ("", "empty"),
        (None, "empty"),
        ("The SQL looks fine, I would give it a 4.", "no JSON object"),
        ('{"sql_correctness": 4, "reasoning": 3, "format": 5}', "lacks error_type"),
        ('{"sql_correctness": 6, "reasoning": 3, "format": 5, "error_type": "none"}', "outside 1..5"),
        ('{"sql_correctness": 0, "reasoning": 3, "format": 5, "error_type": "none"}', "outside 1..5"),
        ('{"sql_correctness": 3.5, "reasoning": 3, "format": 5, "error_type": "none"}', "whole number"),
        ('{"sql_correctness": "good", "reasoning": 3, "format": 5, "error_type": "none"}', "not a number"),
        ('{"sql_correctness": true, "reasoning": 3, "format": 5, "error_type": "none"}', "boolean"),
        ('{"sql_correctness": 4, "reasoning": 3, "format": 5, "error_type": "none"', "no JSON object"),  # cut off
        ("[1, 2, 3]", "no JSON object"),
    ],
)
def test_parse_invalid_replies_say_why(reply, why):
    with pytest.raises(JudgeParseError, match=why):
        parse_judge_reply(reply)


# ---------------------------------------------------------------- inputs and summary


def test_answer_text_prefers_the_role_whose_sql_became_the_answer():
    rec = {
        "pred_sql": "SELECT count(*) FROM singer",
        "candidates": [
            {
                "junior": "junior_direct",
                "sql": "SELECT count(*) FROM singer",
                "raw": "```sql\nSELECT count(*) FROM singer\n```",
            },
            {
                "junior": "junior_step",
                "sql": "SELECT count(*) FROM singer",
                "raw": "<reasoning>count singer rows</reasoning><sql>SELECT count(*) FROM singer</sql>",
            },
        ],
        "senior_turns": [{"sql_after": "SELECT 1", "raw": "other"}],
    }
    assert answer_text(rec) == (rec["candidates"][1]["raw"], "junior_step")
    rec["senior_turns"].append(
        {"sql_after": "SELECT count(*) FROM singer", "raw": "<sql>SELECT count(*) FROM singer</sql>"}
    )
    assert answer_text(rec)[1] == "senior"
    assert answer_text({"pred_sql": None}) == ("", "none")
    assert answer_text({"pred_sql": "SELECT 2"}) == ("SELECT 2", "sql")


def test_summary_splits_by_ex_and_ignores_unparsed_in_means():
    def rec(i, ex, parsed, s=None, et=None):
        return JudgeRecord(i, f"q{i}", "db", "?", "SELECT 1", "SELECT 1", ex, "sql", parsed,
                           *((s, s, s, et) if parsed else (None, None, None, None)))

    recs = [rec(0, True, True, 5, "none"), rec(1, True, True, 3, "none"), rec(2, False, True, 1, "wrong_join"),
            rec(3, False, False), rec(4, None, True, 4, "other")]
    s = summarize(recs, model="m")
    assert (s.n, s.unparsed) == (5, 1)
    assert s.groups["all"].n == 5 and s.groups["all"].parsed == 4
    assert s.groups["all"].sql_correctness == pytest.approx((5 + 3 + 1 + 4) / 4)
    assert s.groups["all"].ex == pytest.approx(2 / 4)  # EX over the 4 answers with a verdict
    assert s.groups["ex_correct"].sql_correctness == 4.0 and s.groups["ex_correct"].ex == 1.0
    assert (
        s.groups["ex_incorrect"].n == 2
        and s.groups["ex_incorrect"].parsed == 1
        and s.groups["ex_incorrect"].format == 1.0
    )
    assert s.groups["ex_unknown"].ex is None and s.groups["ex_unknown"].reasoning == 4.0
    assert s.error_types == {"none": 2, "wrong_join": 1, "other": 1}
    empty = summarize([recs[3]])
    assert empty.groups["all"].sql_correctness is None


def test_not_a_run_directory_is_exit_2(tmp_path):
    with pytest.raises(ValueError, match="no questions.jsonl"):
        load_answers(tmp_path)
    res = runner.invoke(app, ["judge", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not a directory" in res.output
    (tmp_path / "questions.jsonl").write_text("")
    res = runner.invoke(app, ["judge", str(tmp_path)])
    assert res.exit_code == 2 and "empty" in res.output


# ---------------------------------------------------------------- a run directory like `sqlsociety eval` writes


def _make_run(root: Path, *, long_question: bool = False) -> Path:
    """A run directory written by society.run's own RunRecorder, with EX scored as evaluate() does:
    the first question answered with its gold query (EX 1), the second with a wrong query (EX 0),
    the third without SQL; optionally a fourth, answered with its gold query, whose question is
    too long for a small judge's context."""
    examples = load_examples(None, "dev", limit=4)
    rec = RunRecorder("eval-society-dev", root=root)
    answers = [examples[0].gold_sql, "SELECT 1 FROM singer LIMIT 0", None]
    if long_question:
        answers.append(examples[3].gold_sql)
    for i, (ex, sql) in enumerate(zip(examples, answers)):
        res = None
        if sql:
            out = run_query(ex.db_path, sql)
            res = ExecSummary(sql=sql, ok=out.ok, columns=list(getattr(out, "columns", []) or []),
                              rows=[list(r) for r in (getattr(out, "rows", []) or [])[:5]],
                              row_count=len(getattr(out, "rows", []) or []))
        cands = [
            Candidate(
                junior="junior_step_by_step",
                persona="step_by_step",
                sql=sql,
                ok=bool(sql),
                raw=f"<reasoning>Use the tables the question names.</reasoning><sql>{sql}</sql>" if sql else "no idea",
            )
        ]
        question = ex.question if not (long_question and i == 3) else ex.question + " Please." * 6000
        run = SocietyRun(question=question, question_id=ex.id, db_id=ex.db_id, db_path=str(ex.db_path), final_sql=sql,
                         result=res, status="approved" if sql else "failed", candidates=cands,
                         senior_turns=[SeniorTurn(kind="check", sql_before=sql, sql_after=sql, verdict="correct")])
        m = execution_match(ex.db_path, sql, ex.gold_sql)
        rec.record(run, {"match": m.match, "reason": m.reason, "gold_sql": ex.gold_sql, "index": ex.index})
    return rec.dir


def test_run_directory_records_become_judge_prompts(tmp_path):
    run_dir = _make_run(tmp_path)
    recs = load_answers(run_dir)
    assert [r["match"] for r in recs] == [True, False, False]
    msgs = build_messages(recs[0])
    assert msgs[0]["role"] == "system" and "JSON" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert recs[0]["question"] in user and recs[0]["gold_sql"] in user and "CREATE TABLE" in user
    assert "<reasoning>" in user  # the answer's own text, reasoning included
    assert "(no answer)" in build_messages(recs[2])[1]["content"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


def test_dead_endpoint_is_exit_2_and_writes_nothing(tmp_path):
    run_dir = _make_run(tmp_path)
    res = runner.invoke(
        app, ["judge", str(run_dir), "--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--model", "x"]
    )
    assert res.exit_code == 2, res.output
    assert "no usable OpenAI-compatible endpoint" in res.output and "nothing was written" in res.output
    assert not (run_dir / "judge.jsonl").exists() and not (run_dir / "judge_summary.json").exists()


# ---------------------------------------------------------------- a real judge


@pytest.mark.model
def test_judge_with_the_smoke_model_scores_or_marks_every_answer(tmp_path):
    """`sqlsociety judge RUN_DIR --model smollm2-135m` serves the embedded model itself. The fourth
    question is longer than the server's context: the server refuses that request for real, and
    that answer is recorded as unparsed, not as scores. First with free-text replies (a 135M model
    rarely writes valid JSON: lines may be unparsed), then constrained to the verdict's JSON Schema
    (every answer that fits the context gets scores)."""
    run_dir = _make_run(tmp_path, long_question=True)
    res = runner.invoke(app, ["judge", str(run_dir), "--model", "smollm2-135m", "--max-tokens", "96", "--free-text"])
    assert res.exit_code == 0, res.output
    free = [json.loads(x) for x in (run_dir / "judge.jsonl").read_text().splitlines()]
    assert len(free) == 4
    for r in free:
        assert (r["parsed"] and all(1 <= r[k] <= 5 for k in ("sql_correctness", "reasoning", "format"))) or (
            not r["parsed"] and r["parse_error"] and r["sql_correctness"] is None)

    res = runner.invoke(app, ["judge", str(run_dir), "--model", "smollm2-135m", "--max-tokens", "96"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (run_dir / "judge.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    assert [r["ex"] for r in lines] == [True, False, False, True]
    for r in lines:
        if r["parsed"]:
            assert all(1 <= r[k] <= 5 for k in ("sql_correctness", "reasoning", "format"))
            assert r["error_type"] in ERROR_TYPES
        else:
            assert r["parse_error"] and r["sql_correctness"] is None and r["reasoning"] is None and r["format"] is None
        assert r["model"] == "smollm2-135m"
    assert not lines[3]["parsed"] and lines[3]["parse_error"].startswith("request refused")
    assert all(r["parsed"] for r in lines[:3]), [r["reply"] for r in lines[:3]]  # constrained decoding
    summary = json.loads((run_dir / "judge_summary.json").read_text())
    assert summary["n"] == 4 and summary["unparsed"] == sum(not r["parsed"] for r in lines)
    assert summary["groups"]["ex_correct"]["n"] == 2 and summary["groups"]["ex_incorrect"]["n"] == 2
    assert "EX correct" in res.output and "EX incorrect" in res.output and "sql_correctness" in res.output
