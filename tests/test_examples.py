"""Worked examples for a junior's prompt (tools/examples.py) on the bundled Spider train split."""

from __future__ import annotations

import doctest

import pytest

from tools import examples
from tools.examples import ExampleBank, bank_for, examples_text
from tools.spider import DataError, load_examples


def test_doctests() -> None:
    assert doctest.testmod(examples).failed == 0


def test_the_train_bank_holds_every_executable_train_question_and_is_built_once() -> None:
    bank = bank_for("train")
    assert len(bank) == len(load_examples(None, "train"))
    assert bank_for("train") is bank


def test_a_train_question_never_gets_its_own_database_or_itself() -> None:
    bank = bank_for("train")
    for e in load_examples(None, "train")[::700]:
        shown = bank.similar(e.question, 3, exclude_db=e.db_id)
        assert len(shown) == 3
        assert all(s.db_id != e.db_id and s.question != e.question for s in shown)
        # the question itself is never returned, even without the exclusion
        assert bank.similar(e.question, 1)[0].question != e.question


def test_similarity_follows_the_question_not_its_constants() -> None:
    bank = ExampleBank([examples.Example("How many students are older than 20?", "A", "x"),
                        examples.Example("List the names of all students.", "B", "x")])
    assert [e.sql for e in bank.similar("How many students are older than 35?", 1)] == ["A"]
    assert [e.sql for e in bank.similar("list the NAMES of every student", 1)] == ["B"]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        ExampleBank([])
    with pytest.raises(ValueError, match="k = -1"):
        bank_for("train").similar("How many?", -1)
    assert bank_for("train").similar("How many?", 0) == []
    with pytest.raises(DataError, match="nosuchsplit"):
        bank_for("nosuchsplit")
    assert examples_text([]) == ""


def test_the_examples_tool_is_refused_on_a_role_that_is_not_a_junior() -> None:
    import yaml

    from society.config import SMOKE_CONFIG, SocietyConfig

    data = yaml.safe_load(SMOKE_CONFIG.read_text())
    senior = next(r for r in data["roles"] if r["type"] == "senior")
    senior["tools"] = ["schema", "executor", "examples"]
    with pytest.raises(ValueError, match=f"role {senior['name']}: the examples tool is for juniors only"):
        SocietyConfig.from_dict(data)
