"""tools.files.read_jsonl: the one JSON-lines reader of run records, metrics and span exports."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from tools import files
from tools.files import read_jsonl


class MyError(ValueError):
    pass


def test_doctests() -> None:
    assert doctest.testmod(files).failed == 0


def test_a_bad_line_before_the_last_is_an_error_of_the_callers_class_naming_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(MyError, match=r"r\.jsonl line 2 is not JSON"):
        read_jsonl(p, error=MyError)


def test_a_line_that_is_not_an_object_missing_and_non_utf8_files(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(MyError, match="line 2 is not a JSON object"):
        read_jsonl(p, error=MyError)
    with pytest.raises(MyError, match="does not exist"):
        read_jsonl(tmp_path / "none.jsonl", error=MyError)
    p.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(MyError, match="not UTF-8"):
        read_jsonl(p, error=MyError)


def test_a_truncated_tail_followed_by_blank_lines_is_still_the_last_line(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n{"a"\n\n')
    assert read_jsonl(p) == [{"a": 1}]
