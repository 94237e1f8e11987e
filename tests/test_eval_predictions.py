"""`sqlsociety eval-predictions` on a small real Spider-format directory (questions copied from the
bundled dev set, databases linked in, one database missing on purpose)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from cli_text import flat
from typer.testing import CliRunner

from evaluation import cli as evaluation_cli
from tools.spider import BUNDLED_DATA_DIR

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # keeps sub-command mode with a single command
        pass

    evaluation_cli.register(app)
    return app


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dev.json with 6 concert_singer questions, 2 on a missing database in between, 2 on pets_1."""
    d = tmp_path_factory.mktemp("spider_slice")
    dev = json.loads((BUNDLED_DATA_DIR / "dev.json").read_text())
    concert = [r for r in dev if r["db_id"] == "concert_singer"][:6]
    pets = [r for r in dev if r["db_id"] == "pets_1"][:2]
    missing = [dict(concert[0], db_id="no_such_db"), dict(concert[1], db_id="no_such_db")]
    records = concert[:3] + missing + concert[3:] + pets
    (d / "dev.json").write_text(json.dumps(records))
    (d / "database").mkdir()
    for db_id in ("concert_singer", "pets_1"):
        (d / "database" / db_id).symlink_to(BUNDLED_DATA_DIR / "database" / db_id)
    return d


def _records(data_dir: Path) -> list[dict]:
    return json.loads((data_dir / "dev.json").read_text())


def _run(*args: str):
    # wide terminal so Rich does not wrap the error text inside its box
    return runner.invoke(_app(), ["eval-predictions", *args], env={"COLUMNS": "400"})


def test_full_order_file_with_skipped_lines(data_dir, tmp_path):
    recs = _records(data_dir)  # 10 lines, 8 executable
    lines = [r["query"] for r in recs]
    lines[0] = "SELECT 'wrong'"  # first concert_singer question wrong
    lines[3] = "this line belongs to a missing database and is ignored"
    pred = tmp_path / "preds.sql"
    pred.write_text("\n".join(lines) + "\n")
    out = tmp_path / "res.jsonl"
    res = _run("--data-dir", str(data_dir), "--pred", str(pred), "--out", str(out), "--workers", "1")
    assert res.exit_code == 0, res.output
    assert "87.50" in res.output  # 7 of 8
    assert "concert_singer" in res.output and "pets_1" in res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 8
    assert {"id", "db_id", "question", "pred", "gold", "match", "reason"} <= set(rows[0])
    assert rows[0]["match"] is False and rows[0]["pred"] == "SELECT 'wrong'"
    assert all(r["match"] for r in rows[1:])
    assert [r["id"] for r in rows] == [f"dev-{i}" for i in (0, 1, 2, 5, 6, 7, 8, 9)]


def test_executable_order_file_with_db_id_suffix(data_dir, tmp_path):
    recs = [r for r in _records(data_dir) if r["db_id"] != "no_such_db"]
    pred = tmp_path / "preds.sql"
    pred.write_text("".join(f"{r['query']}\t{r['db_id']}\n" for r in recs))
    out = tmp_path / "res.jsonl"
    summary = tmp_path / "summary.json"
    res = _run("--data-dir", str(data_dir), "--pred", str(pred), "--out", str(out), "--summary-json", str(summary))
    assert res.exit_code == 0, res.output
    assert "EX = 100.00%" in res.output
    s = json.loads(summary.read_text())
    assert s["ex"] == 1.0 and s["n"] == 8 and s["per_db"]["pets_1"]["n"] == 2


def test_distinct_matters_only_without_keep_distinct(tmp_path):
    """A prediction that adds DISTINCT to a gold with duplicate rows: match by default, not with
    --keep-distinct (Spider dev question whose gold lists countries with repeats)."""
    d = tmp_path / "d"
    d.mkdir()
    rec = {
        "db_id": "concert_singer",
        "question": "List every singer's country.",
        "query": "SELECT country FROM singer",
    }
    (d / "dev.json").write_text(json.dumps([rec]))
    (d / "database").mkdir()
    (d / "database" / "concert_singer").symlink_to(BUNDLED_DATA_DIR / "database" / "concert_singer")
    pred = tmp_path / "p.sql"
    pred.write_text("SELECT DISTINCT country FROM singer\n")
    out = tmp_path / "o.jsonl"
    r1 = _run("--data-dir", str(d), "--pred", str(pred), "--out", str(out))
    assert r1.exit_code == 0 and json.loads(out.read_text())["match"] is True
    r2 = _run("--data-dir", str(d), "--pred", str(pred), "--out", str(out), "--keep-distinct")
    assert r2.exit_code == 0 and json.loads(out.read_text())["reason"] == "row_count"


def test_wrong_line_count_is_a_clear_error(data_dir, tmp_path):
    pred = tmp_path / "short.sql"
    pred.write_text("SELECT 1\nSELECT 2\nSELECT 3\n")
    res = _run("--data-dir", str(data_dir), "--pred", str(pred))
    assert res.exit_code == 2
    text = flat(res.output)
    assert "short.sql" in text and "3 lines" in text and "10" in text and "8" in text


def test_missing_prediction_file_is_a_clear_error(data_dir, tmp_path):
    res = _run("--data-dir", str(data_dir), "--pred", str(tmp_path / "nope.sql"))
    assert res.exit_code == 2
    text = flat(res.output)
    assert "nope.sql" in text and "does not exist" in text


def test_misaligned_db_id_suffix_is_a_clear_error(data_dir, tmp_path):
    recs = [r for r in _records(data_dir) if r["db_id"] != "no_such_db"]
    lines = [f"{r['query']}\t{r['db_id']}" for r in recs]
    lines[0], lines[-1] = lines[-1], lines[0]  # a pets_1 line first
    pred = tmp_path / "swapped.sql"
    pred.write_text("\n".join(lines))
    res = _run("--data-dir", str(data_dir), "--pred", str(pred))
    assert res.exit_code == 2
    text = flat(res.output)
    assert "out of order" in text and "pets_1" in text


def test_bad_data_dir_is_a_clear_error(tmp_path):
    pred = tmp_path / "p.sql"
    pred.write_text("SELECT 1\n")
    res = _run("--data-dir", str(tmp_path / "nowhere"), "--pred", str(pred))
    assert res.exit_code == 2
    assert "does not exist" in flat(res.output)


def test_root_cli_registers_the_command():
    from society.cli.root import app

    names = {c.name for c in app.registered_commands}
    assert "eval-predictions" in names


def test_society_evaluate_doctests() -> None:
    import doctest

    from society import evaluate

    assert doctest.testmod(evaluate).failed == 0
