"""scripts/pack-run.sh: a stopped run directory packed small and unpacked whole, and a running one refused."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pack-run.sh"


def _run_dir(root: Path) -> Path:
    run = root / "run"
    (run / "eval" / "roles").mkdir(parents=True)
    (run / "phases" / "1-gather").mkdir(parents=True)
    con = sqlite3.connect(run / "store.sqlite")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE rollouts (rollout_id TEXT, status TEXT)")
    con.executemany("INSERT INTO rollouts VALUES (?, ?)",
                    [(f"ro-{i}", "succeeded" if i % 4 else "cancelled") for i in range(40)])
    con.commit()
    con.close()
    (run / "config.yaml").write_text("name: smoke\n")
    (run / "metrics.jsonl").write_text('{"reward": 1.0}\n' * 50)
    (run / "eval" / "roles" / "juniors_baseline.jsonl").write_text('{"question_id": "dev-1"}\n')
    (run / "phases" / "1-gather" / "done.json").write_text("{}")
    adapter = run / "phases" / "2-sft" / "adapters" / "junior_policy_direct"
    (adapter / "checkpoint-2").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter.gguf").write_bytes(b"GGUF")
    (adapter / "checkpoint-2" / "optimizer.pt").write_bytes(b"\x00")
    (run / "phases" / "2-sft" / "done.json").write_text("{}")
    return run


def _sh(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_a_packed_run_unpacks_with_every_rollout_and_record(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    packed = _sh("pack", run, tmp_path / "packed")
    assert packed.returncode == 0, packed.stderr
    stopped = json.loads((tmp_path / "packed" / "stopped.json").read_text())
    assert stopped["rollouts_by_status"] == {"succeeded": 30, "cancelled": 10}
    assert not (tmp_path / "packed" / "store.sqlite").exists()  # only the compressed copy is kept
    out = _sh("unpack", tmp_path / "packed", tmp_path / "again")
    assert out.returncode == 0, out.stderr
    again = tmp_path / "again"
    rows = sqlite3.connect(again / "store.sqlite").execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]
    assert rows == 40
    ad = "phases/2-sft/adapters/junior_policy_direct"
    for f in ("config.yaml", "metrics.jsonl", "eval/roles/juniors_baseline.jsonl", "phases/1-gather/done.json",
              "phases/2-sft/done.json", f"{ad}/adapter_model.safetensors", f"{ad}/adapter_config.json"):
        assert (again / f).read_bytes() == (run / f).read_bytes(), f
    # a trained adapter travels as its PEFT files: the GGUF export is made again where a server needs
    # it, trainer checkpoints stay behind
    assert not (again / ad / "adapter.gguf").exists() and not (again / ad / "checkpoint-2").exists()
    assert _sh("unpack", tmp_path / "packed", again).returncode == 2  # never over an existing store
    assert "already holds" in _sh("pack", run, tmp_path / "packed").stderr


def test_an_untrained_pack_keeps_phase_1_and_the_untrained_stages_only(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    rows = [{"phase": "1-gather", "reward": 1.0}, {"phase": "2-sft", "loss": 0.5},
            {"phase": "1-gather-rationalized", "reward": 0.0}, {"reward": 2.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    for f in ("eval/baseline.jsonl", "eval/baseline.summary.json", "eval/sft.jsonl", "eval/sft.summary.json",
              "eval/roles/juniors_baseline_repeat.summary.json", "eval/roles/single_baseline.jsonl",
              "eval/roles/juniors_sft.partial.jsonl", "eval/roles/juniors_sft_shared.jsonl", "report.md"):
        (run / f).write_text("{}\n")
    packed = _sh("pack", run, tmp_path / "packed", "--untrained")
    assert packed.returncode == 0, packed.stderr
    assert json.loads((tmp_path / "packed" / "stopped.json").read_text())["untrained_only"] is True
    assert _sh("unpack", tmp_path / "packed", tmp_path / "again").returncode == 0
    again = tmp_path / "again"
    kept = sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    assert kept == ["config.yaml", "eval/baseline.jsonl", "eval/baseline.summary.json",
                    "eval/roles/juniors_baseline.jsonl", "eval/roles/juniors_baseline_repeat.summary.json",
                    "eval/roles/single_baseline.jsonl", "metrics.jsonl", "phases/1-gather/done.json", "store.sqlite"]
    assert [json.loads(x)["phase"] for x in (again / "metrics.jsonl").read_text().splitlines()] == \
        ["1-gather", "1-gather-rationalized"]
    assert sqlite3.connect(again / "store.sqlite").execute("SELECT COUNT(*) FROM rollouts").fetchone()[0] == 40
    assert _sh("pack", run, tmp_path / "p2", "--everything").returncode == 2  # an unknown option is refused


def test_a_run_in_use_is_refused_and_left_alone(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    # a process whose command line names the CLI holds the run's lock, as `sqlsociety train` does
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "society.cli"])
    try:
        (run / "store.sqlite.lock").write_text(str(holder.pid))
        out = _sh("pack", run, tmp_path / "packed")
        assert out.returncode == 2 and f"in use by process {holder.pid}" in out.stderr
        assert not (tmp_path / "packed").exists()
        # its untrained part may be packed while the run is between phases 1 and 3 (nothing writes the store)
        live = _sh("pack", run, tmp_path / "live", "--untrained")
        assert live.returncode == 0 and "between phase 1 and phase 3" in live.stderr, live.stderr
        assert not (tmp_path / "live" / "phases" / "2-sft").exists()
        (run / "phases" / "3-grpo").mkdir()
        assert _sh("pack", run, tmp_path / "live3", "--untrained").returncode == 2  # phase 3 writes rollouts
        (run / "phases" / "3-grpo").rmdir()
    finally:
        holder.kill()
        holder.wait()
    os.remove(run / "store.sqlite.lock")
    assert _sh("pack", run, tmp_path / "packed").returncode == 0


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    out = _sh("pack", tmp_path, tmp_path / "p")
    assert out.returncode == 2 and "no config.yaml" in out.stderr
    out = _sh("unpack", tmp_path, tmp_path / "r")
    assert out.returncode == 2 and "no store.sqlite.xz" in out.stderr


@pytest.fixture(autouse=True)
def _needs_xz() -> None:
    if subprocess.run(["which", "xz"], capture_output=True).returncode:
        pytest.skip("xz is not installed")
