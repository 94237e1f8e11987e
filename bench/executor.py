"""Throughput and latency of the safe SQL executor, and EX evaluation time, on Spider dev.

Measures, over ALL executable Spider dev gold queries (972 with the bundled data):

* 1 caller, before/after worker isolation: queries/s with statements run in the calling
  process (``tools.executor.USE_WORKERS = False``, the executor before worker processes)
  and in a pooled worker process (the default); connections reused per thread, plus a
  fresh connection per call (``REUSE_CONNECTIONS = False``) in the worker; p50/p95/max
  latency from the executor's own ``elapsed_ms``;
* N callers (processes, N = ``os.cpu_count()`` unless ``--workers``), each with its own
  worker: queries/s on an already-started pool (start-up reported separately);
* worker start-up (first call after the idle workers were stopped);
* timeout precision: overshoot past ``timeout_s`` for a never-ending recursive CTE, and the
  wall time and outcome of statements that SQLite runs inside one VM instruction or while
  preparing (trim/instr/LIKE/json_patch/printf, an exponential CTE chain), which end by an
  override, a memory bound, or the worker being killed at ``timeout_s`` + ``KILL_GRACE_S``;
* progress-handler overhead: one CPU-bound query through the executor vs a bare connection;
* EX evaluation time of gold-vs-gold (``evaluation.metrics.ex.evaluate_predictions``), 1 and N workers.

The load average (``os.getloadavg``) is printed before and after: the figures depend on it.

Usage::

    python bench/executor.py                 # all of it (about a minute on 2 cores)
    python bench/executor.py --repeat 3      # best of 3 passes for the throughput figures
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import executor as ex  # noqa: E402
from tools import sandbox, sql_results  # noqa: E402
from tools.spider import load_examples  # noqa: E402

_INF = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
_BIG_A = "replace(hex(zeroblob(100000)), '0', 'a')"
_BOMBS = {
    "trim 200k x 200k": f"SELECT length(trim({_BIG_A}, replace(hex(zeroblob(100000)), '0', 'b') || 'a'))",
    "instr 200k / 100k": f"SELECT instr({_BIG_A}, substr({_BIG_A}, 1, 100000) || 'b')",
    "LIKE 200k x 100B": f"SELECT {_BIG_A} LIKE '%' || substr({_BIG_A}, 1, 98) || 'b'",
    "json_patch 10k keys": (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 10000), "
        "a AS MATERIALIZED (SELECT json_group_object('k' || i, i) AS o FROM r), "
        "b AS MATERIALIZED (SELECT json_group_object('j' || i, i) AS o FROM r) "
        "SELECT length(json_patch(a.o, b.o)) FROM a, b"
    ),
    "printf %.2e9c": "SELECT printf('%.*c', 2000000000, 'x')",
    "printf %.2e9c, text arg": "SELECT printf('%.*c', '2000000000', 'x')",
    "printf, invalid UTF-8": "SELECT printf('%.*c', 2000000000, CAST(x'ff' AS TEXT))",
    "CTE chain x2 ^ 20": "WITH c0(x) AS NOT MATERIALIZED (SELECT 1), " + ", ".join(
        f"c{i}(x) AS NOT MATERIALIZED (SELECT a.x FROM c{i - 1} a, c{i - 1} b)" for i in range(1, 21)
    ) + " SELECT count(*) FROM c20",
}


def _run_all(items: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """Execute ``(db_path, sql)`` items in order; return ``(elapsed_ms, ok)`` per item."""
    out = []
    for db, sql in items:
        r = ex.execute_sql(db, sql)
        out.append((r.elapsed_ms, r.ok))
    return out


def _warm(db: str) -> int:
    ex.execute_sql(db, "SELECT 1")  # starts this process's executor worker
    return os.getpid()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench_serial(
    items: list[tuple[str, str]], repeat: int, reuse: bool, workers: bool = True
) -> tuple[float, list[float], int]:
    """Best-of-``repeat`` queries/s from this process; latencies (ms) and errors of the best pass.

    ``workers`` False runs the statements in this process (``USE_WORKERS = False``)."""
    sandbox.REUSE_CONNECTIONS = reuse
    ex.USE_WORKERS = workers
    ex.close_connections()
    _run_all(items[:50])  # start the worker and open the first connections outside the timing
    best = (0.0, [], 0)
    for _ in range(repeat):
        t = time.perf_counter()
        res = _run_all(items)
        qps = len(items) / (time.perf_counter() - t)
        if qps > best[0]:
            best = (qps, [ms for ms, _ in res], sum(not ok for _, ok in res))
    sandbox.REUSE_CONNECTIONS = True
    ex.USE_WORKERS = True
    return best


def bench_parallel(items: list[tuple[str, str]], workers: int, repeat: int) -> tuple[float, float]:
    """(start-up seconds, best queries/s) with ``workers`` processes; items grouped by database."""
    by_db: dict[str, list] = {}
    for it in items:
        by_db.setdefault(it[0], []).append(it)
    ordered = [it for db in sorted(by_db, key=lambda d: -len(by_db[d])) for it in by_db[db]]
    size = max(1, len(ordered) // (workers * 4))
    chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_warm, [items[0][0]] * (workers * 2)))
        startup = time.perf_counter() - t
        best = 0.0
        for _ in range(repeat):
            t = time.perf_counter()
            list(pool.map(_run_all, chunks))
            best = max(best, len(items) / (time.perf_counter() - t))
    return startup, best


def bench_timeouts(db: str) -> None:
    over = []
    for _ in range(10):
        r = ex.execute_sql(db, _INF, timeout_s=0.1)
        assert r.category == sql_results.ErrorCategory.TIMEOUT, r
        over.append(r.elapsed_ms - 100.0)
    print(f"timeout overshoot (never-ending CTE, timeout 100 ms, 10 runs): "
          f"median {statistics.median(over):.2f} ms, max {max(over):.2f} ms")
    for name, sql in _BOMBS.items():
        t = time.perf_counter()
        r = ex.execute_sql(db, sql, timeout_s=0.5)
        wall = (time.perf_counter() - t) * 1000
        outcome = "ok" if r.ok else r.category.value
        how = "" if r.ok else f"  ({r.message[:60]})"
        print(f"  one-instruction/prepare bomb {name:24s} -> {outcome:7s} in {wall:7.1f} ms (timeout 500 ms){how}")


def bench_worker_start(db: str) -> None:
    starts = []
    for _ in range(5):
        ex.close_connections()  # stops the idle workers
        t = time.perf_counter()
        assert ex.execute_sql(db, "SELECT 1").ok
        starts.append((time.perf_counter() - t) * 1000)
    print(f"worker start-up (first call with no idle worker, 5 runs): median {statistics.median(starts):.1f} ms, "
          f"max {max(starts):.1f} ms")


def bench_handler_overhead(db: str) -> None:
    q = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000) SELECT sum(i) FROM r"
    bare = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    t_bare, t_exec = [], []
    for _ in range(3):
        t = time.perf_counter()
        bare.execute(q).fetchall()
        t_bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert ex.execute_sql(db, q, timeout_s=60).ok
        t_exec.append(time.perf_counter() - t)
    bare.close()
    b, e = min(t_bare), min(t_exec)
    print(f"progress handler every {sandbox.PROGRESS_STEPS} instructions: 1M-row CTE {b*1000:.0f} ms bare vs "
          f"{e*1000:.0f} ms via executor ({(e / b - 1) * 100:+.1f}%)")


def bench_ex(examples: list, workers: int) -> None:
    try:
        from evaluation.metrics.ex import evaluate_predictions
    except ImportError as e:  # evaluation/metrics/ex.py not there yet
        print(f"EX evaluation: skipped, evaluation.metrics.ex.evaluate_predictions is not importable ({e})")
        return
    golds = [e.gold_sql for e in examples]
    for w in sorted({1, workers}):
        t = time.perf_counter()
        rep = evaluate_predictions(examples, golds, workers=w)
        dt = time.perf_counter() - t
        print(f"EX evaluation gold-vs-gold on dev ({rep.n} questions), workers={w}: "
              f"EX = {rep.ex * 100:.2f}% in {dt:.2f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="Spider-format directory (default: bundled data/spider)")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the parallel figures")
    ap.add_argument("--repeat", type=int, default=2, help="passes per throughput figure (best is reported)")
    ap.add_argument("--skip-ex", action="store_true", help="do not time EX evaluation")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    examples = load_examples(args.data_dir, split=args.split)
    items = [(str(e.db_path), e.gold_sql) for e in examples]
    print(f"sqlite {sqlite3.sqlite_version}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{len(items)} {args.split} gold queries over {len({d for d, _ in items})} databases")

    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for label, reuse, workers in (
        ("before: in-process, connection reused   ", True, False),
        ("after:  worker process, connection reused", True, True),
        ("after:  worker process, new conn per call", False, True),
    ):
        qps, lat, errors = bench_serial(items, args.repeat, reuse=reuse, workers=workers)
        print(f"1 caller, {label}: {qps:8.1f} queries/s  p50 {_pct(lat, 0.5):.3f} ms  "
              f"p95 {_pct(lat, 0.95):.3f} ms  max {max(lat):.1f} ms  errors {errors}")
    startup, qpsn = bench_parallel(items, args.workers, args.repeat)
    print(f"{args.workers} callers (processes), one worker each:        {qpsn:8.1f} queries/s  "
          f"(pool start-up {startup * 1000:.0f} ms, not counted)")

    db = str(examples[0].db_path)
    bench_worker_start(db)
    bench_timeouts(db)
    bench_handler_overhead(db)
    if not args.skip_ex:
        bench_ex(examples, args.workers)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
