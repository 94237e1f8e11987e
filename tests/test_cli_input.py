"""Bad command-line input ends in a clear message and exit code 2 (or a counted warning where
skipping is right), never in a Python traceback, never in lost or half-written files.

Every case works on real files made in ``tmp_path``: Spider-format slices with real SQLite
databases copied from the bundled data, real (corrupted) stores, real config files. No model server.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest
from cli_text import flat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from society.cli.root import app
from tools.spider import BUNDLED_DATA_DIR

REPO = Path(__file__).resolve().parent.parent
STORE_FIXTURE = REPO / "tests" / "fixtures" / "obs" / "run" / "store.sqlite"
runner = CliRunner()
ENV = {"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}  # wide: Rich must not wrap the messages


def _run(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def _assert_clean(res, code: int) -> str:
    """The command ended with ``code`` and no traceback; returns its whole output (stdout + stderr)."""
    out = res.output  # stdout and stderr, interleaved
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, out
    return flat(out)


# ------------------------------------------------------------------------------- data slices

DEV = json.loads((BUNDLED_DATA_DIR / "dev.json").read_text(encoding="utf-8"))


def _slice(d: Path, per_db: dict[str, int], *, records: list | None = None) -> list[dict]:
    """``d/dev.json`` with the first questions of each db in ``per_db``, their databases copied in."""
    recs = records
    if recs is None:
        recs = []
        for db_id, n in per_db.items():
            recs += [dict(r) for r in DEV if r["db_id"] == db_id][:n]
    d.mkdir(parents=True, exist_ok=True)
    (d / "dev.json").write_text(json.dumps(recs), encoding="utf-8")
    for db_id in per_db:
        (d / "database" / db_id).mkdir(parents=True, exist_ok=True)
        shutil.copy(
            BUNDLED_DATA_DIR / "database" / db_id / f"{db_id}.sqlite", d / "database" / db_id / f"{db_id}.sqlite"
        )
    return recs


@pytest.fixture()
def spider(tmp_path: Path) -> tuple[Path, list[dict]]:
    """3 concert_singer + 2 pets_1 questions, real copied databases."""
    d = tmp_path / "spider"
    return d, _slice(d, {"concert_singer": 3, "pets_1": 2})


def _gold_preds(tmp_path: Path, recs: list[dict], name: str = "preds.sql") -> Path:
    p = tmp_path / name
    p.write_text("".join(r["query"] + "\n" for r in recs), encoding="utf-8")
    return p


def _eval(data_dir: Path, pred: Path, *extra: str):
    return _run("eval-predictions", "--data-dir", str(data_dir), "--pred", str(pred), *extra)


# ------------------------------------------------------------------------------- split file records


def test_question_null_in_split_file(tmp_path, spider):
    d, recs = spider
    recs[1]["question"] = None
    (d / "dev.json").write_text(json.dumps(recs))
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs)), 2)
    assert "record 1 has question null" in out and "dev.json" in out


def test_integer_db_id_in_split_file(tmp_path, spider):
    d, recs = spider
    recs[0]["db_id"] = 17
    (d / "dev.json").write_text(json.dumps(recs))
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs)), 2)
    assert "record 0 has db_id 17" in out and "folder name" in out


def test_split_file_not_utf8(tmp_path, spider):
    d, recs = spider
    (d / "dev.json").write_bytes(b'[{"question": "caf\xe9"}]')
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs)), 2)
    assert "is not UTF-8 text" in out and "dev.json" in out


# ------------------------------------------------------------------------------- unusable databases


def _corrupt(path: Path, kind: str) -> None:
    good = path.read_bytes()
    if kind == "not_sqlite":
        path.write_bytes(b"this is a text file, not a database\n" * 200)
    elif kind == "random_after_header":
        path.write_bytes(good[:100] + os.urandom(len(good) - 100))
    elif kind == "random_after_first_page":  # schema readable, tables not
        path.write_bytes(good[:4096] + bytes((i * 37 + 11) % 256 for i in range(len(good) - 4096)))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 3])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("not_sqlite", "is not an SQLite database"),
        ("random_after_header", "concert_singer.sqlite is"),  # not a database / corrupt, by SQLite's reading
        ("random_after_first_page", "is corrupt"),
        ("truncated", "is corrupt"),
        ("zero_bytes", "is empty (0 bytes)"),
        ("directory", "is a directory"),
    ],
)
def test_one_bad_database_costs_only_its_questions(tmp_path, spider, kind, says):
    d, recs = spider
    _corrupt(d / "database" / "concert_singer" / "concert_singer.sqlite", kind)
    out_file = tmp_path / "res.jsonl"
    res = _eval(d, _gold_preds(tmp_path, recs), "--out", str(out_file))
    out = _assert_clean(res, 0)
    assert says in out and "its 3 question(s) scored 0" in out, out
    rows = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["db_error"] * 3 + ["match"] * 2
    assert says in rows[0]["detail"]


def test_no_usable_database_is_an_error(tmp_path, spider):
    d, recs = spider
    _corrupt(d / "database" / "concert_singer" / "concert_singer.sqlite", "zero_bytes")
    _corrupt(d / "database" / "pets_1" / "pets_1.sqlite", "not_sqlite")
    out_file = tmp_path / "res.jsonl"
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs), "--out", str(out_file)), 2)
    assert "no usable database" in out and "is empty (0 bytes)" in out and "not an SQLite database" in out
    assert not out_file.exists()


def test_ask_database_path_is_a_directory(tmp_path):
    folder = tmp_path / "db.sqlite"
    folder.mkdir()
    out = _assert_clean(_run("ask", "How many singers?", "--db", str(folder)), 2)
    assert "is a directory" in out


def test_ask_database_file_is_empty(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    out = _assert_clean(_run("ask", "How many singers?", "--db", str(empty)), 2)
    assert "is empty (0 bytes)" in out


# ------------------------------------------------------------------------------- output paths


def test_out_is_a_directory(tmp_path, spider):
    d, recs = spider
    (tmp_path / "outdir").mkdir()
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs), "--out", str(tmp_path / "outdir")), 2)
    assert "--out" in out and "is a directory" in out


def test_summary_json_is_a_directory(tmp_path, spider):
    d, recs = spider
    (tmp_path / "sumdir").mkdir()
    out_file = tmp_path / "res.jsonl"
    res = _eval(d, _gold_preds(tmp_path, recs), "--out", str(out_file), "--summary-json", str(tmp_path / "sumdir"))
    out = _assert_clean(res, 2)
    assert "--summary-json" in out and "is a directory" in out
    assert not out_file.exists()  # checked before any work: nothing written


@pytest.mark.parametrize("option", ["--out", "--summary-json"])
def test_output_cannot_be_created(tmp_path, spider, option):
    d, recs = spider
    (tmp_path / "plainfile").write_text("x")
    target = tmp_path / "plainfile" / "sub" / "res.json"
    extra = [option, str(target)] + (["--out", str(tmp_path / "r.jsonl")] if option == "--summary-json" else [])
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs), *extra), 2)
    assert "cannot be created" in out and "plainfile is a file" in out
    assert (tmp_path / "plainfile").read_text() == "x"
    assert not (tmp_path / "r.jsonl").exists()


def test_out_equal_to_pred_is_refused(tmp_path, spider):
    d, recs = spider
    pred = _gold_preds(tmp_path, recs)
    before = pred.read_bytes()
    out = _assert_clean(_eval(d, pred, "--out", str(pred)), 2)
    assert "is the input file" in out
    assert pred.read_bytes() == before
    # also through another spelling of the same path
    out = _assert_clean(_eval(d, pred, "--summary-json", str(tmp_path / "." / pred.name)), 2)
    assert pred.read_bytes() == before


def test_pred_is_a_directory(tmp_path, spider):
    d, _ = spider
    (tmp_path / "preds").mkdir()
    out = _assert_clean(_eval(d, tmp_path / "preds"), 2)
    assert "is a directory" in out and "does not exist" not in out


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1"])
def test_timeout_must_be_finite_and_positive(tmp_path, spider, value):
    d, recs = spider
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs), "--timeout", value), 2)
    assert "--timeout" in out and "above 0" in out


def test_long_prediction_is_cut_in_the_records(tmp_path, spider):
    d, recs = spider
    pred = tmp_path / "preds.sql"
    long_sql = "SELECT " + "1 + " * 1_250_000 + "1"  # 5 MB on one line
    pred.write_text(long_sql + "\n" + "".join(r["query"] + "\n" for r in recs[1:]), encoding="utf-8")
    out_file = tmp_path / "res.jsonl"
    _assert_clean(_eval(d, pred, "--out", str(out_file)), 0)
    assert out_file.stat().st_size < 100_000
    first = json.loads(out_file.read_text().splitlines()[0])
    assert first["match"] is False and first["reason"].startswith("pred_error")
    assert first["pred"].startswith("SELECT 1 + 1 +") and first["pred"].endswith("more characters]")
    assert len(first["pred"]) < 10_100


def test_help_shows_defaults():
    out = flat(_run("eval-predictions", "--help").output)
    assert "[default: (bundled data/spider, or $SQLSOCIETY_DATA_DIR)]" in out
    assert "[default: (<pred>.eval.jsonl)]" in out
    for command in ("roles", "ask", "eval"):
        out = flat(_run(command, "--help").output)
        assert "[default: (configs/society.yaml)]" in out, command


# ------------------------------------------------------------------------------- society config


def _config_text() -> str:
    return (REPO / "configs" / "smoke.yaml").read_text(encoding="utf-8")


def test_config_not_utf8(tmp_path):
    cfg = tmp_path / "society.yaml"
    cfg.write_bytes(_config_text().encode() + b"\n# caf\xe9\n")
    out = _assert_clean(_run("roles", "--config", str(cfg)), 2)
    assert "is not UTF-8 text" in out


def test_config_is_a_directory(tmp_path):
    out = _assert_clean(_run("roles", "--config", str(tmp_path)), 2)
    assert "is a directory" in out and "does not exist" not in out


def test_config_unknown_embedded_alias(tmp_path):
    cfg = tmp_path / "society.yaml"
    cfg.write_text(_config_text().replace("embedded: smollm2-135m", "embedded: gpt-17", 1), encoding="utf-8")
    assert "gpt-17" in cfg.read_text()
    out = _assert_clean(_run("roles", "--config", str(cfg)), 2)
    assert "'gpt-17'" in out and "smollm2-135m" in out and "qwen2.5-coder-0.5b" in out


# ------------------------------------------------------------------------------- traces


def _bad_store(run_dir: Path, kind: str) -> Path:
    run_dir.mkdir()
    store = run_dir / "store.sqlite"
    good = STORE_FIXTURE.read_bytes()
    if kind == "truncated":
        store.write_bytes(good[: len(good) // 3])
    elif kind == "random_bytes":
        store.write_bytes(os.urandom(8192))
    elif kind == "zero_bytes":
        store.write_bytes(b"")
    elif kind == "unrelated_sqlite":
        with sqlite3.connect(store) as conn:
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
            conn.execute("INSERT INTO notes (text) VALUES ('mine')")
        conn.close()
    return store


STORE_KINDS = {
    "truncated": "is corrupt",
    "random_bytes": "is not an SQLite database",
    "zero_bytes": "is empty (0 bytes)",
    "unrelated_sqlite": "not a rollout store (no table rollouts",
}


@pytest.mark.parametrize("kind", list(STORE_KINDS))
@pytest.mark.parametrize("command", ["list", "show", "export"])
def test_traces_on_a_bad_store(tmp_path, kind, command):
    run_dir = tmp_path / "run"
    store = _bad_store(run_dir, kind)
    before = store.read_bytes()
    args = {"list": ["traces", "list", str(run_dir)], "show": ["traces", "show", str(run_dir), "ro-1"],
            "export": ["traces", "export", str(run_dir)]}[command]
    out = _assert_clean(_run(*args), 2)
    assert STORE_KINDS[kind] in out and "store.sqlite" in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["store.sqlite"]  # no traces.jsonl, no journal
    assert store.read_bytes() == before


def test_traces_export_missing_directory_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _assert_clean(_run("traces", "export", "no_run"), 2)
    assert "no_run" in out and "does not exist" in out
    assert not (tmp_path / "no_run").exists()


def test_traces_export_out_is_the_store(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(STORE_FIXTURE, run_dir / "store.sqlite")
    before = (run_dir / "store.sqlite").read_bytes()
    out = _assert_clean(_run("traces", "export", str(run_dir), "--out", str(run_dir / "store.sqlite")), 2)
    assert "is the input file" in out
    assert (run_dir / "store.sqlite").read_bytes() == before


def test_traces_jsonl_not_utf8(tmp_path):
    f = tmp_path / "traces.jsonl"
    f.write_bytes(b'{"span_id": "1", "name": "caf\xe9"}\n')
    out = _assert_clean(_run("traces", "show", str(f)), 2)
    assert "is not UTF-8 text" in out


@pytest.mark.parametrize("setup", ["missing", "zero_bytes"])
def test_traces_report_bad_input_before_heavy_imports(tmp_path, setup):
    """A missing run directory or a bad store is reported without importing Agent Lightning
    (which alone takes seconds), in a fresh interpreter."""
    run_dir = tmp_path / "run"
    if setup == "zero_bytes":
        _bad_store(run_dir, "zero_bytes")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from society.cli.root import app\n"
        f"res = CliRunner().invoke(app, ['traces', 'list', {str(run_dir)!r}])\n"
        "print('EXIT', res.exit_code, 'AGL', 'agentlightning' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert "EXIT 2 AGL False" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------- property: prediction lines


@pytest.fixture(scope="module")
def small_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("prop") / "spider"
    return d, _slice(d, {"concert_singer": 2, "pets_1": 2})


def _mutate(sql: str, data: st.DataObject) -> str:
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["del", "ins", "dup"]), st.integers(0, 10_000),
                                       st.text(max_size=6)), max_size=4))
    for op, pos, text in ops:
        i = pos % (len(sql) + 1)
        if op == "del":
            sql = sql[:i] + sql[i + len(text) + 1:]
        elif op == "ins":
            sql = sql[:i] + text + sql[i:]
        else:
            sql = sql[:i] + sql[i:] + sql[i:]
    return sql


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_prediction_lines_never_traceback(tmp_path_factory, small_split, data):
    d, recs = small_split
    lines = []
    for r in recs:
        kind = data.draw(st.sampled_from(["bytes", "text", "mutated", "gold"]))
        if kind == "bytes":
            lines.append(data.draw(st.binary(max_size=60)).replace(b"\n", b" "))
        elif kind == "text":
            lines.append(data.draw(st.text(max_size=60)).replace("\n", " ").encode("utf-8", "surrogatepass"))
        elif kind == "mutated":
            lines.append(_mutate(r["query"], data).encode("utf-8", "surrogatepass"))
        else:
            lines.append(r["query"].encode())
    work = tmp_path_factory.mktemp("case")
    pred = work / "preds.sql"
    pred.write_bytes(b"\n".join(lines) + b"\n")
    res = _eval(d, pred, "--out", str(work / "res.jsonl"), "--timeout", "2")
    out = res.output
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 2), out
    if res.exit_code == 0:
        rows = [json.loads(x) for x in (work / "res.jsonl").read_text(encoding="utf-8").split("\n") if x]
        assert len(rows) == len(recs)
    else:
        assert not (work / "res.jsonl").exists()


def test_traces_list_society_run_with_non_utf8_questions(tmp_path):
    run_dir = tmp_path / "eval-run"
    (run_dir / "traces").mkdir(parents=True)
    (run_dir / "questions.jsonl").write_bytes(b'{"question_id": "dev-0", "question": "caf\xe9"}\n')
    out = _assert_clean(_run("traces", "list", str(run_dir)), 2)
    assert "questions.jsonl" in out and "UTF-8" in out


def test_summary_json_equal_to_out_is_refused(tmp_path, spider):
    d, recs = spider
    target = tmp_path / "res.json"
    out = _assert_clean(_eval(d, _gold_preds(tmp_path, recs), "--out", str(target), "--summary-json", str(target)), 2)
    assert "is the --out file too" in out and not target.exists()


def test_traces_show_missing_source(tmp_path):
    out = _assert_clean(_run("traces", "show", str(tmp_path / "nofile.jsonl")), 2)
    assert "nofile.jsonl does not exist" in out


@pytest.mark.parametrize("kind", ["random_bytes", "zero_bytes", "unrelated_sqlite"])
def test_rollout_archive_refuses_a_file_that_is_not_a_store(tmp_path, kind):
    from evaluation.tracing.store import RolloutArchive, StoreError

    store = _bad_store(tmp_path / "run", kind)
    with pytest.raises(StoreError, match="rollout store"):
        RolloutArchive(store)
