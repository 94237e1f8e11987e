"""Evaluating an agent of the society over a set of questions: :func:`evaluate` runs each question
through :func:`society.run.run_society`, scores execution accuracy (:mod:`evaluation.metrics.ex`) and writes
the run directory's ``predictions.sql`` and ``summary.json`` (:class:`EvalSummary`); the per-question
records go to ``questions.jsonl`` through :class:`society.run.RunRecorder` (layout in :mod:`society.run`).

``sqlsociety eval``, the training pipeline's per-stage evaluation and the benchmarks call it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pydantic import BaseModel

from evaluation.metrics.ex import execution_match
from evaluation.metrics.sql_text import single_line
from society.config import SocietyConfig
from society.infra import InfrastructureError, dead_servers
from society.response_cache import ResponseCache, cached_calls
from society.run import RunRecorder, SocietyRun, endpoint_failure, run_society
from tools.sampling import group_by_database


class EvalSummary(BaseModel):
    """EX and cost of one agent over a set of questions.

    Attributes:
        agent, n: the agent and number of questions run.
        ex: execution accuracy in [0, 1] (Yu et al., Spider, EMNLP 2018; rule in ``evaluation.metrics.ex``).
        executed_ok: share whose final SQL executed without error.
        failed: questions marked failed (endpoint down / graph error).
        seconds_per_q / llm_calls_per_q / tokens_per_q / turns_per_q: per-question means.
        wall_seconds: wall time of the whole evaluation.
        cached_calls: LLM calls answered from the response cache, over all questions (counted in
            ``llm_calls_per_q`` and the tokens; their seconds are almost none).
        run_dir: the run directory.
    """

    agent: str
    n: int
    ex: float
    executed_ok: float
    failed: int
    seconds_per_q: float
    llm_calls_per_q: float
    tokens_per_q: float
    turns_per_q: float
    wall_seconds: float
    cached_calls: int = 0
    run_dir: str = ""


def evaluate(
    examples: Iterable[Any],
    config: SocietyConfig,
    *,
    agent: str = "society",
    concurrency: int = 1,
    endpoints: dict[str, Any] | None = None,
    recorder: RunRecorder | None = None,
    callbacks: Sequence[Any] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    given_sql: Mapping[str, str | None] | None = None,
    response_cache: ResponseCache | None = None,
) -> EvalSummary:
    """Run ``agent`` on each example (``tools.spider.SpiderExample``) and score EX.

    Work is ordered by database (:func:`tools.sampling.group_by_database`): questions over one
    database run back to back, and with ``concurrency`` > 1 each worker takes a whole database at
    a time, so the model server processes each schema prompt once per database. Records and
    ``predictions.sql`` keep the input order.

    Each question's record (``questions.jsonl``) holds the SocietyRun fields plus ``match``,
    ``reason`` (see ``evaluation.metrics.ex.ExMatch``), ``gold_sql``, and for the society the EX of each
    junior's candidate under ``roles[<junior>]["ex"]`` and the senior's ``before_ex``/``after_ex``.
    ``predictions.sql`` gets one line per question in input order.

    Args:
        concurrency: questions run at once (threads); the juniors inside a question run in
            parallel anyway. The embedded llama-server decodes requests of its parallel slots
            together (continuous batching).
        on_result: called with each record as it finishes (progress bars).
        stop: when set (e.g. by a Ctrl-C handler), no new question starts and ``KeyboardInterrupt``
            is raised once the questions in hand finish; finished ones are kept.
        given_sql: question id -> the SQL the ``senior`` agent refines (required for that agent;
            a question missing from it runs with nothing to refine).
        response_cache: repeated deterministic requests are answered from it (``run_society``'s
            argument; each record's ``cached_calls`` counts them).

    Raises:
        society.infra.InfrastructureError: a model server died or an endpoint stayed down; the
            question in flight is not recorded, the ones finished before are (``questions.jsonl``).
        KeyboardInterrupt: ``stop`` was set or Ctrl-C.
    """
    examples = list(examples)
    if agent == "senior" and given_sql is None:
        raise ValueError("agent 'senior' refines given SQL: pass given_sql={question_id: sql} (e.g. the chosen "
                         "candidates of a 'juniors' evaluation)")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
    results: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()

    def one(i: int, ex: Any) -> dict[str, Any]:
        try:
            run = run_society(ex.question, ex.db_path, config, question_id=ex.id, db_id=ex.db_id, endpoints=endpoints,
                              agent=agent, callbacks=callbacks, given_sql=(given_sql or {}).get(ex.id),
                              response_cache=response_cache)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a missing database: mark this question failed, go on
            run = SocietyRun(
                agent=agent,
                question=ex.question,
                question_id=ex.id,
                db_id=ex.db_id,
                db_path=str(ex.db_path),
                status="failed",
                error=f"{type(e).__name__}: {e}",
            )
        why = endpoint_failure(run)
        if why:  # infrastructure, not this question's answer: stop, record nothing for it
            dead = dead_servers()
            raise dead[0] if dead else InfrastructureError(
                f"question {ex.id}: a model endpoint stayed down after all retries ({why}); nothing was recorded for "
                "it. Check the endpoint and run the evaluation again")
        m = execution_match(ex.db_path, run.final_sql, ex.gold_sql)
        extra: dict[str, Any] = {"match": m.match, "reason": m.reason, "gold_sql": ex.gold_sql, "index": ex.index}
        rec = run.to_record()
        roles = rec["roles"]
        for c in run.candidates:
            roles[c.junior]["ex"] = execution_match(ex.db_path, c.sql, ex.gold_sql).match if c.sql else False
        if "senior" in roles:
            before = roles["senior"]["before_sql"]
            roles["senior"]["before_ex"] = execution_match(ex.db_path, before, ex.gold_sql).match if before else False
            roles["senior"]["after_ex"] = m.match
        extra["roles"] = roles
        if recorder is not None:
            rec = recorder.record(run, extra)
        else:
            rec = {**rec, **extra}
        return rec

    groups = group_by_database(examples)
    lock = threading.Lock()

    def work_on(group: list[int]) -> None:
        for i in group:
            if stop is not None and stop.is_set():
                return
            r = one(i, examples[i])
            with lock:
                results[i] = r
            if on_result:
                on_result(r)

    try:
        if concurrency == 1:
            for group in groups:
                work_on(group)
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
        else:
            # each worker takes one database at a time, so a server slot keeps one schema prompt cached
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval")
            try:
                futs = [pool.submit(work_on, g) for g in groups]
                for f in as_completed(futs):
                    f.result()
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
            except BaseException:
                if stop is not None:
                    stop.set()  # workers finish the question in hand, start no other
                raise
            finally:
                # on Ctrl-C or a dead server don't wait for queued databases
                pool.shutdown(wait=False, cancel_futures=True)
    finally:
        wall = time.perf_counter() - t0
        recs = [results[i] for i in sorted(results)]
        summary = summarise_records(agent, recs, wall, run_dir=str(recorder.dir) if recorder else "")
        if recorder is not None:
            with (recorder.dir / "predictions.sql").open("w", encoding="utf-8") as f:
                for i in range(len(examples)):
                    sql = (results.get(i) or {}).get("pred_sql") or ""
                    f.write(single_line(sql) + "\n")
            recorder.write_json("summary.json", summary.model_dump())
    return summary


def summarise_records(agent: str, recs: list[dict[str, Any]], wall: float, *, run_dir: str = "") -> EvalSummary:
    """The :class:`EvalSummary` of per-question records (``questions.jsonl`` lines) of ``agent``.

    Per-question means over the records of ``recs`` that hold the key (0 when none does: a record
    kept from an older, smaller format lacks e.g. ``turns`` and is not counted as 0); ``wall``
    (seconds) is taken as given, so a caller that evaluated in several attempts passes their total.

    >>> s = summarise_records("juniors", [{"match": True, "seconds": 2.0}, {"match": False, "seconds": 4.0}], 6.5)
    >>> (s.n, s.ex, s.seconds_per_q, s.wall_seconds)
    (2, 0.5, 3.0, 6.5)
    >>> summarise_records("society", [{"match": True, "turns": 2}, {"match": True}], 1.0).turns_per_q
    2.0
    """
    n = len(recs)

    def mean(key: str) -> float:
        have = [float(r[key] or 0) for r in recs if r.get(key) is not None]
        return sum(have) / len(have) if have else 0.0

    return EvalSummary(
        agent=agent, n=n, ex=mean("match"), executed_ok=mean("executed_ok"),
        failed=sum(r.get("status") == "failed" for r in recs), seconds_per_q=mean("seconds"),
        llm_calls_per_q=mean("llm_calls"), tokens_per_q=mean("tokens"), turns_per_q=mean("turns"),
        wall_seconds=wall, cached_calls=cached_calls(recs), run_dir=run_dir,
    )
