"""The persistent SQLite LightningStore (evaluation/tracing/store.py).

Everything is real: Agent Lightning's store API and Trainer, SQLite files, OS processes killed
with SIGKILL. The agent in the Trainer test does no LLM call (the store is what is under test;
LLM rollouts are covered by tests/test_gather.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

agl = pytest.importorskip("agentlightning")

from agentlightning.emitter import emit_annotation, emit_reward  # noqa: E402
from agentlightning.types import Span  # noqa: E402

from evaluation.tracing.store import (  # noqa: E402
    RolloutArchive,
    SqliteLightningStore,
    StoreError,
    StoreLockedError,
)

REPO = Path(__file__).resolve().parent.parent


def _span(core, rollout_id: str, attempt_id: str, seq: int) -> Span:
    return Span.from_core_fields(core, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq)


async def _finish_one(store, task_id: str, reward: float, n_notes: int = 2) -> str:
    """Enqueue, claim, add spans + reward, mark succeeded. Returns the rollout id."""
    await store.enqueue_rollout(input={"task_id": task_id, "question": "q"}, mode="train")
    ar = await store.dequeue_rollout(worker_id="w0")
    rid, aid = ar.rollout_id, ar.attempt.attempt_id
    for k in range(n_notes):
        seq = await store.get_next_span_sequence_id(rid, aid)
        await store.add_span(_span(emit_annotation({"sqlsociety.note": k}, propagate=False), rid, aid, seq))
    seq = await store.get_next_span_sequence_id(rid, aid)
    await store.add_span(_span(emit_reward(reward, propagate=False), rid, aid, seq))
    await store.update_attempt(rid, aid, status="succeeded")
    return rid


def test_roundtrip_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "run" / "store.sqlite"

    async def first() -> list[str]:
        store = SqliteLightningStore(path)
        try:
            ids = [await _finish_one(store, f"train-{i}", reward=i / 4) for i in range(3)]
            # one more left queued (never claimed)
            await store.enqueue_rollout(input={"task_id": "train-9"}, mode="train")
            return ids
        finally:
            store.close()

    ids = asyncio.run(first())
    with RolloutArchive(path) as arc:
        recs = arc.rollouts(status="succeeded")
        assert [r.rollout_id for r in recs] == ids
        assert [r.task_id for r in recs] == ["train-0", "train-1", "train-2"]
        assert [r.reward for r in recs] == [0.0, 0.25, 0.5]
        assert all(r.n_spans == 3 and r.n_attempts == 1 for r in recs)
        spans = arc.spans(ids[1])
        assert [s.sequence_id for s in spans] == [1, 2, 3]
        assert spans[0].attributes["sqlsociety.note"] == 0
        assert arc.done_task_ids() == {"train-0", "train-1", "train-2"}

    async def second() -> None:
        # reopen: finished rollouts, their spans (read back from disk) and counters survive;
        # the queued one was left by a dead process and is cancelled (recover="cancel").
        store = SqliteLightningStore(path)
        try:
            assert len(store.recovered) == 1
            got = await store.query_rollouts(status_in=["succeeded"])
            assert sorted(r.rollout_id for r in got) == sorted(ids)
            spans = await store.query_spans(ids[2], "latest")
            assert [s.sequence_id for s in spans] == [1, 2, 3]
            assert agl.find_final_reward(list(spans)) == 0.5
            assert await store.dequeue_rollout(worker_id="w1") is None  # queue emptied
            # new work continues after the old rollouts, sequence ids keep growing per rollout
            rid = await _finish_one(store, "train-3", reward=1.0)
            assert rid not in ids
        finally:
            store.close()

    asyncio.run(second())
    with RolloutArchive(path) as arc:
        assert arc.counts()["succeeded"] == 4
        assert arc.counts()["cancelled"] == 1
        cancelled = arc.rollouts(status="cancelled")[0]
        assert cancelled.task_id == "train-9" and cancelled.metadata["recovered"] == "cancel"


_KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    sys.path.insert(0, {repo!r})
    from agentlightning.emitter import emit_annotation, emit_reward
    from agentlightning.types import Span
    from evaluation.tracing.store import SqliteLightningStore

    def span(core, rid, aid, seq):
        return Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq)

    async def main():
        store = SqliteLightningStore({path!r})
        for i in range(2):
            await store.enqueue_rollout(input={{"task_id": f"t{{i}}"}}, mode="train")
        a = await store.dequeue_rollout(worker_id="w")
        await store.add_span(span(emit_reward(0.75, propagate=False), a.rollout_id, a.attempt.attempt_id, 1))
        await store.update_attempt(a.rollout_id, a.attempt.attempt_id, status="succeeded")
        b = await store.dequeue_rollout(worker_id="w")
        await store.add_span(
            span(emit_annotation({{"half": 1}}, propagate=False), b.rollout_id, b.attempt.attempt_id, 1)
        )
        print(a.rollout_id, b.rollout_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-rollout b, without closing anything

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("recover", ["cancel", "requeue"])
def test_sigkill_loses_nothing_committed(tmp_path: Path, recover: str) -> None:
    path = tmp_path / "store.sqlite"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER.format(repo=str(REPO), path=str(path))],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    done_id, half_id = proc.stdout.split()

    async def check() -> None:
        store = SqliteLightningStore(path, recover=recover)
        try:
            assert store.recovered == [half_id]
            done = await store.get_rollout_by_id(done_id)
            assert done.status == "succeeded"
            assert agl.find_final_reward(list(await store.query_spans(done_id))) == 0.75
            half = await store.get_rollout_by_id(half_id)
            # the half-done rollout's span survived too
            assert [s.attributes.get("half") for s in await store.query_spans(half_id)] == [1]
            if recover == "cancel":
                assert half.status == "cancelled"
                assert await store.dequeue_rollout(worker_id="w2") is None
            else:
                assert half.status == "requeuing"
                again = await store.dequeue_rollout(worker_id="w2")
                assert again.rollout_id == half_id and again.attempt.sequence_id == 2
                attempts = await store.query_attempts(half_id)
                assert [a.status for a in attempts][:1] == ["unresponsive"]
        finally:
            store.close()

    asyncio.run(check())


def test_second_writer_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import sys,time; sys.path.insert(0,{str(REPO)!r}); "
         "from evaluation.tracing.store import SqliteLightningStore; "
         f"s=SqliteLightningStore({str(path)!r}); print('open', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match=str(holder.pid)):
            SqliteLightningStore(path)
        # readers are never blocked
        with RolloutArchive(path) as arc:
            assert arc.counts() == {"spans": 0}
    finally:
        holder.kill()
        holder.wait()
    SqliteLightningStore(path).close()  # the kernel released the lock with the dead process


def test_concurrent_threads_all_persisted(tmp_path: Path) -> None:
    """The client-server strategy calls the store from the HTTP server thread and the algorithm's loop."""
    path = tmp_path / "store.sqlite"
    store = SqliteLightningStore(path)
    n_threads, n_spans = 4, 40

    async def setup() -> list[tuple[str, str]]:
        out = []
        for i in range(n_threads):
            await store.enqueue_rollout(input={"task_id": f"t{i}"})
            a = await store.dequeue_rollout(worker_id=f"w{i}")
            out.append((a.rollout_id, a.attempt.attempt_id))
        return out

    pairs = asyncio.run(setup())
    errors: list[BaseException] = []

    def worker(rid: str, aid: str) -> None:
        async def go() -> None:
            for k in range(n_spans):
                seq = await store.get_next_span_sequence_id(rid, aid)
                await store.add_span(_span(emit_annotation({"k": k}, propagate=False), rid, aid, seq))
        try:
            asyncio.run(go())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=p) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert not errors
    with RolloutArchive(path) as arc:
        assert arc.counts()["spans"] == n_threads * n_spans
        for rid, _ in pairs:
            seqs = [s.sequence_id for s in arc.spans(rid)]
            assert seqs == list(range(1, n_spans + 1))
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_forked_child_cannot_write(tmp_path: Path) -> None:
    store = SqliteLightningStore(tmp_path / "store.sqlite")
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: must get a clear error, not corrupt the parent's connection
            try:
                with store.collections.db.transaction():
                    pass
                os.write(w, b"no error")
            except StoreError as e:
                os.write(w, str(e).encode()[:1000])
            os._exit(0)
        os.waitpid(pid, 0)
        msg = os.read(r, 2000).decode()
        assert "LightningStoreClient" in msg
        asyncio.run(store.enqueue_rollout(input={"task_id": "x"}))  # parent still fine
    finally:
        store.close()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recover"):
        SqliteLightningStore(tmp_path / "a.sqlite", recover="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="synchronous"):
        SqliteLightningStore(tmp_path / "b.sqlite", synchronous="OFF")
    with pytest.raises(FileNotFoundError, match="gather"):
        RolloutArchive(tmp_path / "missing.sqlite")


class _EchoAgent(agl.LitAgent):
    """No model: records an operation span and an annotation, returns a task-derived reward."""

    def rollout(self, task, resources, rollout):  # type: ignore[override]
        with agl.operation(name="double") as op:
            op.set_input(x=task["x"])
            op.set_output(task["x"] * 2)
        agl.emit_annotation({"sqlsociety.x": task["x"]})
        return task["x"] / 10


def test_trainer_with_two_runner_processes(tmp_path: Path) -> None:
    from training.agent import StoreTracer
    from training.gather import free_port

    path = tmp_path / "store.sqlite"
    store = SqliteLightningStore(path)
    trainer = agl.Trainer(
        n_runners=2, store=store, tracer=StoreTracer(), port=free_port(),
        algorithm=agl.Baseline(polling_interval=0.2, span_verbosity="none"),
        initial_resources={"unused": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="none")},
    )
    # How long this takes is a speed (bench/wall_clock.py prints it; it was asserted < 120 s here):
    # the subject is what the store holds afterwards. A hang is cut by pytest-timeout (pyproject).
    trainer.dev(_EchoAgent(), [{"task_id": f"t{i}", "x": i} for i in range(4)])
    store.close()
    with RolloutArchive(path) as arc:
        recs = arc.rollouts()
        assert sorted((r.task_id, r.status, r.reward) for r in recs) == [
            ("t0", "succeeded", 0.0), ("t1", "succeeded", 0.1), ("t2", "succeeded", 0.2), ("t3", "succeeded", 0.3)]
        workers = {arc.spans(r.rollout_id)[0].attributes.get("agentlightning.operation.name") for r in recs}
        assert workers == {"double"}
        for r in recs:
            names = [s.name for s in arc.spans(r.rollout_id)]
            assert names.count("agentlightning.operation") == 1
            assert names[-1] == "agentlightning.annotation"  # the reward span comes last
            x = [s.attributes["sqlsociety.x"] for s in arc.spans(r.rollout_id) if "sqlsociety.x" in s.attributes]
            assert x == [int(r.task_id[1:])]
