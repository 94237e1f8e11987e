"""training.hooks: per-rollout metrics from a real Agent Lightning run.

The rollouts are real Agent Lightning rollouts (``agl.Trainer``, the persistent
``SqliteLightningStore``, the AgentOps tracer with its LangChain handler) of a small LangGraph agent
that needs no model: its ``junior_direct`` node drafts SQL (the task's gold SQL for even task
indices, a query on the wrong table for odd ones), its ``senior`` node runs the SQL through a
LangChain tool on the real Spider database, and the reward is the project's reward function
(``evaluation.metrics.rewards.compute_reward``) on that execution. The model-backed society is covered by
the ``model`` test at the end.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, TypedDict

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AGENTOPS_LOG_LEVEL", "WARNING")

import agentlightning as agl

from evaluation.metrics.ex import execution_match
from evaluation.metrics.rewards import compute_reward
from evaluation.tracing.store import RolloutArchive, SqliteLightningStore
from tools.spider import load_examples
from training.hooks import MetricsHook, MetricsWriter, wandb_configured


class _S(TypedDict, total=False):
    task: dict
    sql: str
    rows: str


def _graph():
    from langchain_core.tools import tool
    from langgraph.graph import END, START, StateGraph

    from tools.executor import execute_sql

    @tool("sql_db_query")
    def sql_db_query(sql: str, db_path: str) -> str:
        """Execute one read-only SQL statement on the task's database."""
        res = execute_sql(db_path, sql)
        return json.dumps(res.rows[:5], default=str) if res.ok else f"error: {res.message}"

    def junior_direct(state: _S) -> _S:
        t = state["task"]
        return {"sql": t["gold_sql"] if t["index"] % 2 == 0 else "SELECT count(*) FROM sqlite_master"}

    def senior(state: _S) -> _S:
        return {"rows": sql_db_query.invoke({"sql": state["sql"], "db_path": state["task"]["db_path"]})}

    g = StateGraph(_S)
    g.add_node("junior_direct", junior_direct)
    g.add_node("senior", senior)
    g.add_edge(START, "junior_direct")
    g.add_edge("junior_direct", "senior")
    g.add_edge("senior", END)
    return g.compile()


class SqlAgent(agl.LitAgent):
    """Runs the graph under the tracer's LangChain handler, annotates outcomes like the society's LitAgent."""

    def rollout(self, task: dict, resources: Any, rollout: Any) -> float:
        out = _graph().invoke({"task": task}, {"callbacks": [self.tracer.get_langchain_handler()]})
        m = execution_match(task["db_path"], out["sql"], task["gold_sql"])
        agl.emit_annotation({
            "sqlsociety.kind": "role_outcomes",
            "sqlsociety.final.ex": int(m.match),
            "sqlsociety.junior.junior_direct.ex": int(m.match),
            "sqlsociety.junior.junior_direct.sql": out["sql"],
            "sqlsociety.senior.after_ex": int(m.match),
        })
        return float(compute_reward(out["sql"], task["gold_sql"], task["db_path"]).total)


def _tasks(n: int) -> list[dict]:
    return [
        {"task_id": ex.id, "index": ex.index, "question": ex.question, "db_id": ex.db_id,
         "db_path": str(ex.db_path), "gold_sql": ex.gold_sql}
        for ex in load_examples(split="dev", limit=n)
    ]


def _run(run_dir: Path, tasks: list[dict], hook: MetricsHook, *, n_runners: int = 2) -> None:
    """Agent Lightning's default client-server strategy: the store in this process, ``n_runners``
    runner processes (so the AgentOps instrumentation stays out of the test process)."""
    from training.agent import StoreTracer
    from training.gather import free_port

    store = SqliteLightningStore(run_dir / "store.sqlite")
    try:
        trainer = agl.Trainer(n_runners=n_runners, store=store, hooks=[hook], algorithm=agl.Baseline(),
                              tracer=StoreTracer(), port=free_port(),
                              initial_resources={"llm": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="unused")})
        trainer.dev(SqlAgent(), tasks)
    finally:
        store.close()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], MetricsHook]:
    """Six real rollouts by two runner processes, W&B in offline mode (no network)."""
    run_dir = tmp_path_factory.mktemp("hooks") / "run"
    tasks = _tasks(6)
    os.environ["WANDB_MODE"] = "offline"
    try:
        hook = MetricsHook(run_dir / "metrics.jsonl", phase="1-gather", run_id="run-hooks", poll_s=0.2)
        with hook:
            _run(run_dir, tasks, hook)
    finally:
        os.environ.pop("WANDB_MODE", None)
    return run_dir, tasks, hook


def test_one_row_per_rollout_matching_the_store(recorded: tuple[Path, list[dict], MetricsHook]) -> None:
    run_dir, tasks, _ = recorded
    rows = _rows(run_dir / "metrics.jsonl")  # every line parses: two runner processes never interleave
    with RolloutArchive(run_dir / "store.sqlite") as arc:
        stored = {r.rollout_id: r for r in arc.rollouts()}
    assert len(rows) == len(tasks) == len(stored)
    assert {r["rollout_id"] for r in rows} == set(stored)
    assert sorted(r["task_id"] for r in rows) == sorted(t["task_id"] for t in tasks)
    for row in rows:
        rec = stored[row["rollout_id"]]
        assert row["phase"] == "1-gather" and row["task_id"] == rec.task_id
        assert row["reward"] == pytest.approx(rec.reward)  # the reward span the store holds
        assert row["status"] == "ok"
        assert row["latency_s"] > 0
        assert set(row) >= {"ts", "ex", "turns", "llm_calls", "tokens", "role_outcomes"}
        task = next(t for t in tasks if t["task_id"] == row["task_id"])
        assert row["ex"] == (1.0 if task["index"] % 2 == 0 else 0.0)
        assert row["role_outcomes"]["junior_direct"]["ex"] == row["ex"]
        assert row["role_outcomes"]["senior"]["after_ex"] == row["ex"]
    # gold SQL earns more than the wrong-table query, on every database
    good = [r["reward"] for r in rows if r["ex"] == 1.0]
    bad = [r["reward"] for r in rows if r["ex"] == 0.0]
    assert good and bad and min(good) > max(bad)


def _wandb_history(run_root: Path) -> list[dict]:
    """History rows of the offline W&B run under ``run_root/wandb``, read from its ``.wandb`` file
    (a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs: 7-byte file header, 32 KiB
    blocks, 7-byte chunk headers crc32/length/type), so the test sees what W&B would sync."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list(run_root.glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, chunks = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            chunks.append(buf)
    rows = []
    for c in chunks:
        rec = pb.Record.FromString(c)
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_wandb_offline_run_holds_every_row(recorded: tuple[Path, list[dict], MetricsHook]) -> None:
    """Rows written by the runner processes are logged to W&B by this process, which follows the file."""
    pytest.importorskip("wandb")
    run_dir, _, hook = recorded
    assert hook.use_wandb
    rows = _rows(run_dir / "metrics.jsonl")
    hist = _wandb_history(run_dir)
    assert hook.rows_logged == len(hist) == len(rows)
    assert [h["rollouts"] for h in hist] == list(range(1, len(rows) + 1))
    assert [h["1-gather/reward"] for h in hist] == pytest.approx([r["reward"] for r in rows])
    assert [h["1-gather/ex"] for h in hist] == [r["ex"] for r in rows]


def _append_many(path: str, worker: int, n: int) -> None:
    w = MetricsWriter(path)
    for i in range(n):
        w.write({"worker": worker, "i": i, "pad": "x" * 3000})


def test_writer_lines_never_interleave_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    procs = [mp.get_context("fork").Process(target=_append_many, args=(str(path), k, 200)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    rows = _rows(path)
    assert len(rows) == 800
    assert {(r["worker"], r["i"]) for r in rows} == {(k, i) for k in range(4) for i in range(200)}


def test_wandb_off_when_disabled_or_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_configured("proj") is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # as if not installed
    assert wandb_configured("proj") is False
    assert MetricsHook(tmp_path / "m.jsonl", phase="p").use_wandb is False


def test_phase_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="phase"):
        MetricsHook(tmp_path / "m.jsonl", phase="")
