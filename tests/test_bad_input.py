"""Bad input met as a new user would meet it (issue 22 item 6): each gives an error or a note that
names the input and what to do, and loses nothing done. Real parts only: real YAML profiles through
the real loader and ``sqlsociety train --dry-run``, the real ``sqlsociety eval`` (a subprocess with
the embedded SmolLM2 for the runs that must finish), Spider's own files, and a rollout store
recorded by a real gather (``tests/fixtures/obs/run``, see ``tests/test_traces.py``).

The executor's invalid-UTF-8 guards are in ``tests/test_executor_utf8.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from cli_text import flat

from society.cli.root import app
from tools.sampling import more_than_split
from tools.spider import BUNDLED_DATA_DIR, DataError, SplitNameError, load_examples, split_file
from tools.value_types import describe, type_problem
from training.profile import PROFILE_DIR, TrainConfig, TrainConfigError

ROOT = Path(__file__).resolve().parent.parent
STORE_FIXTURE = ROOT / "tests" / "fixtures" / "obs" / "run"


# --------------------------------------------------------------------------- 1. wrongly typed profile values


def _profile(tmp_path: Path, **changes: dict) -> Path:
    cfg = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    for section, values in changes.items():
        cfg[section] = {**(cfg.get(section) or {}), **values}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


WRONG_TYPES = [
    ("sft", {"max_steps": "two"}, "sft.max_steps: expected an integer, got 'two'"),
    ("sft", {"learning_rate": "fast"}, "sft.learning_rate: expected a number, got 'fast'"),
    ("sft", {"target_modules": "q_proj"}, "sft.target_modules: expected a list of strings, got 'q_proj'"),
    ("grpo", {"num_generations": 2.5}, "grpo.num_generations: expected an integer or null, got 2.5"),  # TRL's type
    ("sft", {"max_grad_norm": "big"}, "sft.max_grad_norm: expected a number, got 'big'"),  # trl.SFTConfig's
    ("grpo", {"gradient_checkpointing": "yes please"},
     "grpo.gradient_checkpointing: expected true or false, got 'yes please'"),
    ("grpo", {"stop": "```"}, "grpo.stop: expected a list of strings or null, got '```'"),
    ("bandit", {"epsilon": "a little"}, "bandit.epsilon: expected a number, got 'a little'"),
    ("bandit", {"epochs": True}, "bandit.epochs: expected an integer, got True"),
    ("reward", {"normalize": "max"}, "reward.normalize: expected one of 'none', 'unit', 'symmetric', got 'max'"),
    ("reward", {"weights": {"ex": "one"}}, "reward.weights: expected a mapping of string keys to numbers"),
    ("adapter", {"sft_min_reward": "high"}, "adapter.sft_min_reward: expected a number, got 'high'"),
]


@pytest.mark.parametrize(("section", "values", "words"), WRONG_TYPES,
                         ids=[f"{s}.{next(iter(v))}" for s, v, _ in WRONG_TYPES])
def test_a_wrongly_typed_value_names_its_dotted_key_and_the_type(tmp_path: Path, section: str, values: dict,
                                                                  words: str) -> None:
    p = _profile(tmp_path, **{section: values})
    with pytest.raises(TrainConfigError) as e:
        TrainConfig.load(p)
    assert words in str(e.value) and "not supported between" not in str(e.value)
    errors = TrainConfig.load(p, check_sections=False).section_problems  # what --dry-run lists
    assert any(words == f"{where}: {msg}"[: len(words)] for where, msg in errors), errors


def test_dry_run_lists_every_wrongly_typed_key_and_exits_2(tmp_path: Path) -> None:
    p = _profile(tmp_path, sft={"max_steps": "two"}, grpo={"temperature": "hot"}, bandit={"epsilon": "big"},
                 reward={"timeout_s": "5"}, adapter={"rl_reward": 3})
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--config", str(p), "--dry-run", "--run-dir", str(run_dir)])
    assert r.exit_code == 2, r.output
    for line in ("sft.max_steps: expected an integer, got 'two'",
                 "grpo.temperature: expected a number, got 'hot'",
                 "bandit.epsilon: expected a number, got 'big'",
                 "reward.timeout_s: expected a number, got '5' (text: write the number without quotes)",
                 "adapter.rl_reward: expected a string, got 3"):
        assert line in r.output, r.output
    assert "not supported between" not in r.output and not run_dir.exists()
    r = CliRunner().invoke(app, ["train", "--config", str(p), "--run-dir", str(run_dir)])  # a real start: refused
    assert r.exit_code == 2 and "sft.max_steps" in r.output and not run_dir.exists()


def test_yaml_1e_minus_4_is_explained(tmp_path: Path) -> None:
    p = _profile(tmp_path, sft={"learning_rate": "1e-4"})
    assert yaml.safe_load(p.read_text())["sft"]["learning_rate"] == "1e-4"  # PyYAML reads it as text
    with pytest.raises(TrainConfigError, match=r"sft.learning_rate: expected a number, got '1e-4' \(YAML reads 1e-4 "
                                               r"as text: write the mantissa with a dot, e.g. 1.0e-4\)"):
        TrainConfig.load(p)
    assert TrainConfig.load(_profile(tmp_path, sft={"learning_rate": 1.0e-4})).sft.learning_rate == 1e-4


def test_trl_args_values_are_checked_against_trl_types(tmp_path: Path) -> None:
    from training.sft import JuniorSFTConfig

    with pytest.raises(ValueError, match=r"trl_args.max_grad_norm: expected a number, got 'big'"):
        JuniorSFTConfig(trl_args={"max_grad_norm": "big"})
    with pytest.raises(TrainConfigError, match=r"grpo.trl_args.max_grad_norm: expected a number, got 'big'"):
        TrainConfig.load(_profile(tmp_path, grpo={"trl_args": {"max_grad_norm": "big"}}))
    # the key named with its section, also where --dry-run lists it
    problems = TrainConfig.load(_profile(tmp_path, sft={"trl_args": {"adam_beta1": "some"}}),
                                check_sections=False).section_problems
    assert ("sft.trl_args.adam_beta1", "expected a number, got 'some'") in problems, problems
    ok = JuniorSFTConfig(trl_args={"max_grad_norm": 1, "optim": "sgd", "report_to": [], "save_strategy": "no"})
    assert ok.trl_args["max_grad_norm"] == 1  # an int where TRL wants a float is fine; enums take their strings


def test_type_words() -> None:
    assert describe(int | None) == "an integer or null"
    assert describe(tuple[str, ...]) == "a list of strings"
    assert type_problem(3, float) is None and type_problem(True, int) == "expected an integer, got True"
    assert type_problem(["a", 1], list[str]) == "expected a list of strings, got ['a', 1]"


def test_shipped_profiles_have_no_type_problem() -> None:
    from training.profile import PROFILES

    for name in PROFILES:
        assert TrainConfig.load(name, check_sections=False).section_problems == [], name


# --------------------------------------------------------------------------- 2. a sample larger than its split


def _four_question_dir(tmp_path: Path) -> Path:
    d = tmp_path / "four"
    (d / "database").mkdir(parents=True)
    shutil.copytree(BUNDLED_DATA_DIR / "database" / "concert_singer", d / "database" / "concert_singer")
    dev = json.loads((BUNDLED_DATA_DIR / "dev.json").read_text(encoding="utf-8"))
    (d / "dev.json").write_text(json.dumps([r for r in dev if r["db_id"] == "concert_singer"][:4]))
    return d


def _cli(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({"SQLSOCIETY_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT), "COLUMNS": "200",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    env.pop("LANGSMITH_TRACING", None)
    return subprocess.run([sys.executable, "-m", "society.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_more_than_split_words() -> None:
    assert more_than_split("--sample", 1000, "dev", 4) == \
        "--sample 1000 asks for more questions than split 'dev' has (4); running all 4"


@pytest.mark.model
@pytest.mark.parametrize("option", ["--sample", "--limit"])
def test_eval_says_when_it_runs_fewer_questions_than_asked(tmp_path: Path, option: str) -> None:
    d = _four_question_dir(tmp_path)
    proc = _cli(tmp_path, "eval", "--data-dir", str(d), option, "1000", "--agent", "single", "--model-alias",
                "smollm2-135m")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"note: {option} 1000 asks for more questions than split 'dev' has (4); running all 4" in " ".join(
        out.split()), out[-3000:]
    run = next((tmp_path / "runs").iterdir())
    assert len((run / "questions.jsonl").read_text().splitlines()) == 4  # all four ran and were kept


# --------------------------------------------------------------------------- 3. a split outside --data-dir


def test_split_with_a_path_is_refused_and_names_the_option(tmp_path: Path) -> None:
    d = _four_question_dir(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(d / "dev.json", other / "dev.json")  # the file is there: the name alone is refused
    for split in ("../other/dev", str(other / "dev"), "..\\other\\dev"):
        r = CliRunner().invoke(app, ["eval", "--data-dir", str(d), "--split", split, "--agent", "single"],
                               terminal_width=300)
        text = flat(r.output)
        assert r.exit_code == 2, r.output
        assert "Invalid value for '--split'" in text and "holds a path separator" in text, text
        assert "pass that folder as --data-dir and the plain split name as --split" in text, text
        assert not (tmp_path / "runs").exists()
    r = CliRunner().invoke(app, ["eval-predictions", "--data-dir", str(d), "--split", "../other/dev", "--pred",
                                 str(tmp_path / "p.sql")], terminal_width=300)
    assert r.exit_code == 2 and "holds a path separator" in flat(r.output)
    with pytest.raises(SplitNameError, match=r"split '\.\./other/dev' holds a path separator"):
        load_examples(d, "../other/dev")
    for split in ("", "..", "dev\x00"):
        with pytest.raises(SplitNameError):
            split_file(d, split)
    assert issubclass(SplitNameError, DataError) and len(load_examples(d, "dev")) == 4


# --------------------------------------------------------------------------- 4. read-only trace commands


def _listing(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}


@pytest.fixture()
def gathered_run(tmp_path: Path) -> Path:
    """A copy of a run directory whose store a real gather wrote (WAL mode, closed: no -wal/-shm)."""
    dst = tmp_path / "run"
    dst.mkdir()
    for name in ("store.sqlite", "metrics.jsonl", "config.yaml"):
        shutil.copy(STORE_FIXTURE / name, dst / name)
    assert (dst / "store.sqlite").read_bytes()[18:20] == b"\x02\x02"  # WAL mode in the header
    return dst


def test_traces_list_and_show_write_nothing_beside_the_store(gathered_run: Path, tmp_path: Path) -> None:
    from evaluation.tracing.traces import list_rollouts

    before = _listing(gathered_run)
    runner = CliRunner()
    r = runner.invoke(app, ["traces", "list", str(gathered_run)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert _listing(gathered_run) == before
    rid = list_rollouts(gathered_run)[0].rollout_id
    r = runner.invoke(app, ["traces", "show", str(gathered_run), rid], terminal_width=200)
    assert r.exit_code == 0 and "final reward" in r.output, r.output
    r = runner.invoke(app, ["traces", "export", str(gathered_run), "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 0 and (tmp_path / "x.jsonl").is_file()
    assert _listing(gathered_run) == before  # no store.sqlite-wal / -shm, the store untouched


def test_a_snapshot_read_still_sees_a_running_writers_commits(gathered_run: Path) -> None:
    """With a writer holding the store (its -wal present, commits not yet checkpointed) the read is
    the ordinary read-only one: it sees them, and leaves the writer's files as they were."""
    import sqlite3

    from evaluation.tracing.store import RolloutArchive

    store = gathered_run / "store.sqlite"
    def n_rollouts(arc: RolloutArchive) -> int:
        return sum(n for status, n in arc.counts().items() if status != "spans")

    with RolloutArchive(store, snapshot=True) as arc:
        n = n_rollouts(arc)
    writer = sqlite3.connect(store, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("INSERT INTO rollouts SELECT 'ro-copy', " + ", ".join(
            [c for c in _columns(writer, "rollouts") if c != "rollout_id"]) + " FROM rollouts LIMIT 1")
        assert (gathered_run / "store.sqlite-wal").stat().st_size > 0
        files = _listing(gathered_run)
        with RolloutArchive(store, snapshot=True) as arc:
            assert n_rollouts(arc) == n + 1
        assert set(_listing(gathered_run)) == set(files)
    finally:
        writer.close()


def _columns(conn, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
