"""Adapter throughput on a store of >= 1,000 recorded society rollouts.

Builds ``--rollouts`` rollouts in a fresh :class:`evaluation.tracing.store.SqliteLightningStore` by
replaying the real rollouts of ``tests/fixtures/society_traces.jsonl.gz`` (each copy gets a new
rollout id through the store's own API: enqueue, dequeue, ``add_many_spans``, ``update_attempt``),
then times the :class:`training.adapter.HierarchicalTraceAdapter`:

* read: spans loaded from SQLite (``RolloutArchive.iter_spans``), no adapting;
* adapt: ``adapter.adapt(spans)`` on spans already in memory;
* end to end: ``to_sft`` + ``to_rl`` + ``to_bandit`` straight from the store file.

Prints spans/s and rollouts/s for each, and the store write rate. Usage::

    python bench/adapter.py [--rollouts 1000] [--keep DIR]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import typer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.tracing.store import RolloutArchive, SqliteLightningStore  # noqa: E402
from training.adapter import SPAN_NAMES, HierarchicalTraceAdapter, load_traces  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "society_traces.jsonl.gz"


async def build_store(path: Path, n: int) -> tuple[int, float]:
    """Replay the recorded rollouts until ``n`` exist; returns (spans written, seconds)."""
    recorded = load_traces(FIXTURE)
    store = SqliteLightningStore(path, eviction_memory_threshold=512 * 2**20)  # spans stay on disk past 512 MiB
    t0 = time.perf_counter()
    n_spans = 0
    try:
        for i in range(n):
            rec, spans = recorded[i % len(recorded)]
            await store.enqueue_rollout(input={"task_id": f"{rec['task_id']}#{i}"}, mode="train")
            ar = await store.dequeue_rollout(worker_id="bench")
            await store.add_many_spans([
                s.model_copy(update={"rollout_id": ar.rollout_id, "attempt_id": ar.attempt.attempt_id}) for s in spans
            ])
            await store.update_attempt(ar.rollout_id, ar.attempt.attempt_id, status="succeeded")
            n_spans += len(spans)
    finally:
        store.close()
    return n_spans, time.perf_counter() - t0


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    rollouts: int = typer.Option(1000, "--rollouts", min=1, help="rollouts in the store"),
    keep: Path | None = typer.Option(None, "--keep", help="build the store in this directory and keep it"),
) -> None:
    tmp = None if keep else tempfile.TemporaryDirectory()
    root = keep or Path(tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "store.sqlite"
    if path.exists():
        path.unlink()

    n_spans, build_s = asyncio.run(build_store(path, rollouts))
    mb = path.stat().st_size / 2**20
    print(f"store: {rollouts} rollouts, {n_spans} spans, {mb:.1f} MiB; written through the store API "
          f"in {build_s:.1f} s ({n_spans / build_s:,.0f} spans/s, {rollouts / build_s:,.1f} rollouts/s)")

    ad = HierarchicalTraceAdapter()
    with RolloutArchive(path) as arc:
        t0 = time.perf_counter()
        loaded_all = [spans for _, spans in arc.iter_spans(status="succeeded")]
        read_all_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = [spans for _, spans in arc.iter_spans(status="succeeded", names=SPAN_NAMES)]
        read_s = time.perf_counter() - t0
    n_read = sum(len(x) for x in loaded)
    del loaded_all
    t0 = time.perf_counter()
    traces = [ad.adapt(spans) for spans in loaded]
    adapt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sft = ad.to_sft(path)
    rl = ad.to_rl(path)
    bandit = ad.to_bandit(path)
    e2e_s = time.perf_counter() - t0

    def rate(seconds: float, reads: int = 1) -> str:
        return (
            f"{reads * n_spans / seconds:>10,.0f} spans/s  "
            f"{reads * rollouts / seconds:>8,.1f} rollouts/s  ({seconds:.2f} s)"
        )

    print("spans/s counts every span of the rollouts covered (the adapter reads only the "
          f"{n_read / rollouts:.0f} per rollout named in SPAN_NAMES)")
    print(f"read all spans from SQLite  {rate(read_all_s)}")
    print(f"read adapter's spans        {rate(read_s)}")
    print(f"adapt (in memory)           {rate(adapt_s)}")
    print(f"to_sft+to_rl+to_bandit      {rate(e2e_s, reads=3)}   [3 passes over the store, read + adapt]")
    print(f"views: sft rows {len(sft)}, senior triplets {len(rl.triplets)}, bandit samples {len(bandit)}, "
          f"LLM calls {sum(len(t.llm_calls) for t in traces)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    app()
