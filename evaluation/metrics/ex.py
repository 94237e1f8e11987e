"""Execution accuracy (EX) with the execution-match rule of the Spider test-suite evaluator.

Source of the rule: Zhong, Yu & Klein, "Semantic Evaluation for Text-to-SQL with Distilled Test
Suites" (EMNLP 2020), reference code taoyds/test-suite-sql-eval ``exec_eval.py``
(``eval_exec_match`` / ``result_eq``). Re-implemented here from its description:

* both queries get ``> =`` -> ``>=`` (etc.) and ``YEAR(CURDATE())`` -> ``2020``;
* unless ``keep_distinct``, every ``DISTINCT`` keyword is removed from **both** queries before they
  run — including the one in ``COUNT(DISTINCT x)``, exactly like the official token filter
  (see :func:`evaluation.metrics.sql_text.remove_distinct`);
* the prediction scores 0 when it errors or times out (or is empty);
* results are compared as **bags** (multisets) of rows; row order matters only when the gold query
  contains ``ORDER BY``; column order never matters (a column permutation is searched for);
  two empty results match; different row or column counts do not.

One database per question: the official script also runs on every other ``*.sqlite`` beside the
database (the distilled test suite); the bundled Spider has one file per folder, where the two agree.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import re
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluation.metrics.sql_text import normalize_operators, remove_distinct, replace_cur_year
from tools.executor import execute_sql
from tools.files import atomic_writer
from tools.sandbox import MAX_SQL_BYTES
from tools.spider import database_problem
from tools.sql_results import ErrorCategory, ExecutionError, ExecutionResult

logger = logging.getLogger(__name__)

#: Default wall-clock limit per query for evaluation, seconds (the official script allows 60 s).
DEFAULT_TIMEOUT_S = 30.0
#: Default row cap per query for evaluation; a result cut at the cap is compared only if the other
#: side is not cut (then the row counts differ and the pair cannot match).
DEFAULT_MAX_ROWS = 200_000
#: Longest SQL text (characters) copied into a :class:`QuestionRecord`; longer text is cut and ends
#: with a ``[... N more characters]`` marker (the per-question JSONL stays readable).
MAX_RECORD_SQL_CHARS = 10_000
#: Longest error detail (characters) kept in a :class:`QuestionRecord`.
MAX_RECORD_DETAIL_CHARS = 2_000

__all__ = [
    "ExMatch",
    "QuestionRecord",
    "DbScore",
    "EvaluationReport",
    "prepare_sql",
    "order_matters",
    "run_query",
    "compare_results",
    "results_match",
    "execution_match",
    "evaluate_predictions",
    "clear_gold_cache",
    "clip_text",
    "database_problems",
]


# --------------------------------------------------------------------------------------------
# the comparison rule (pure)
# --------------------------------------------------------------------------------------------


def _value_key(v: Any) -> tuple:
    """Total order over SQLite values: NULL < numbers < text < blobs < anything else.

    Equal numbers of different types (``1`` and ``1.0``) sort together, so equal rows sort equally.
    """
    if v is None:
        return (0, 0)
    if isinstance(v, (int, float)):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return (3, bytes(v))
    return (4, repr(v))


def _unordered(row: tuple) -> tuple:
    """The row's values as a sorted tuple: equal for two rows that differ only in column order."""
    return tuple(sorted(row, key=_value_key))


def results_match(
    gold_rows: Sequence[Sequence[Any]], pred_rows: Sequence[Sequence[Any]], *, order_matters: bool
) -> bool:
    """Whether two query results denote the same answer under the Spider test-suite rule.

    Args:
        gold_rows, pred_rows: result rows (tuples or lists of SQLite values).
        order_matters: compare row sequences (the gold query has ``ORDER BY``) instead of bags.

    Returns:
        True iff both are empty, or they have the same number of rows and columns and some
        permutation of the prediction's columns makes the predicted rows equal to the gold rows —
        as sequences when ``order_matters``, else as multisets (duplicates count). Values compare
        with Python equality (``1 == 1.0``; ``'1' != 1``; ``None == None``).

    The permutation search is exact. It is pruned first by a bag-of-sorted-rows test (the official
    ``quick_rej``, here with multiplicities), then by per-column value multisets: prediction column j
    can stand for gold column i only if both hold the same multiset of values (necessary, so no
    match is lost); identical prediction columns are tried once; and each partial assignment must
    already agree on the projected rows. Wide results therefore stay fast.
    """
    gold = [tuple(r) for r in gold_rows]
    pred = [tuple(r) for r in pred_rows]
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    ncol = len(gold[0])
    if len(pred[0]) != ncol:
        return False

    gold_un = [_unordered(r) for r in gold]
    pred_un = [_unordered(r) for r in pred]
    if order_matters:
        if gold_un != pred_un:
            return False
    elif Counter(gold_un) != Counter(pred_un):
        return False
    if ncol <= 1:
        return True  # with one column the sorted rows are the rows

    gcols = list(zip(*gold))
    pcols = list(zip(*pred))
    if order_matters:
        # rows keep their order, so gold column i must equal some prediction column as a sequence;
        # equality is transitive, so a permutation exists iff the column vectors agree as a bag.
        return Counter(gcols) == Counter(pcols)

    gsig = [Counter(c) for c in gcols]
    psig = [Counter(c) for c in pcols]
    first_same: dict[tuple, int] = {}
    col_class = [first_same.setdefault(c, j) for j, c in enumerate(pcols)]
    candidates = [[j for j in range(ncol) if psig[j] == gsig[i]] for i in range(ncol)]
    if any(not c for c in candidates):
        return False
    order = sorted(range(ncol), key=lambda i: len(candidates[i]))
    assign: dict[int, int] = {}
    used: set[int] = set()

    def consistent() -> bool:
        gi = list(assign)
        pj = [assign[i] for i in gi]
        return Counter(tuple(r[i] for i in gi) for r in gold) == Counter(tuple(r[j] for j in pj) for r in pred)

    def search(depth: int) -> bool:
        if depth == ncol:
            return True
        i = order[depth]
        tried: set[int] = set()
        for j in candidates[i]:
            if j in used or col_class[j] in tried:
                continue
            tried.add(col_class[j])
            assign[i] = j
            used.add(j)
            if (depth == 0 or consistent()) and search(depth + 1):
                return True
            del assign[i]
            used.discard(j)
        return False

    return search(0)


_ORDER_BY = re.compile(r"\border\s+by\b", re.I)


def order_matters(gold_sql: str) -> bool:
    """True when the gold query contains ``ORDER BY`` (anywhere, as in the official ``'order by' in
    g_str.lower()``; here any whitespace between the two words counts)."""
    return bool(_ORDER_BY.search(gold_sql))


def prepare_sql(sql: str, *, keep_distinct: bool = False) -> str:
    """The text actually executed: operators joined, ``YEAR(CURDATE())`` -> 2020, DISTINCT removed
    unless ``keep_distinct`` (see :mod:`evaluation.metrics.sql_text`)."""
    sql = replace_cur_year(normalize_operators(sql))
    return sql if keep_distinct else remove_distinct(sql)


# --------------------------------------------------------------------------------------------
# running queries (gold results cached)
# --------------------------------------------------------------------------------------------

_GOLD_CACHE: OrderedDict[tuple, ExecutionResult | ExecutionError] = OrderedDict()
_GOLD_CACHE_SIZE = 4096
_GOLD_CACHE_MAX_ROWS = 50_000  # bigger gold results are not kept
#: Errors that depend only on the query and the file, so a cached one stays true. Timeouts and
#: ``other`` (out of memory, a lost or late executor worker: the machine, not the query) are not kept.
_CACHED_ERRORS = frozenset({ErrorCategory.SYNTAX, ErrorCategory.NO_SUCH_TABLE, ErrorCategory.NO_SUCH_COLUMN,
                            ErrorCategory.AMBIGUOUS_COLUMN, ErrorCategory.FORBIDDEN})


def clear_gold_cache() -> None:
    """Forget cached gold results (they are keyed by file path, size and mtime, so a changed
    database is noticed anyway)."""
    _GOLD_CACHE.clear()


def run_query(
    db_path: str | Path,
    sql: str,
    *,
    keep_distinct: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    cache: bool = False,
) -> ExecutionResult | ExecutionError:
    """Execute ``sql`` as EX does (after :func:`prepare_sql`) with the safe executor.

    Args:
        cache: keep the result in a process-local LRU (for gold queries, which repeat across
            questions and epochs); keyed by (path, file size, mtime, prepared SQL, timeout, max_rows).
            Results up to 50,000 rows and errors that depend only on the query (syntax, no such
            table/column, ambiguous column, forbidden) are kept; timeouts and ``other`` errors
            (out of memory, a lost executor worker) are run again next time.

    Returns:
        :class:`tools.sql_results.ExecutionResult` or :class:`tools.sql_results.ExecutionError`; never raises
        for bad SQL.
    """
    prepared = prepare_sql(sql, keep_distinct=keep_distinct)
    if not cache:
        return execute_sql(db_path, prepared, timeout_s=timeout_s, max_rows=max_rows)
    try:
        st = os.stat(db_path)
        key = (str(db_path), st.st_size, st.st_mtime_ns, prepared, timeout_s, max_rows)
    except OSError:
        return execute_sql(db_path, prepared, timeout_s=timeout_s, max_rows=max_rows)
    hit = _GOLD_CACHE.get(key)
    if hit is not None:
        _GOLD_CACHE.move_to_end(key)
        return hit
    res = execute_sql(db_path, prepared, timeout_s=timeout_s, max_rows=max_rows)
    if res.ok and len(res.rows) <= _GOLD_CACHE_MAX_ROWS or not res.ok and res.category in _CACHED_ERRORS:
        _GOLD_CACHE[key] = res
        if len(_GOLD_CACHE) > _GOLD_CACHE_SIZE:
            _GOLD_CACHE.popitem(last=False)
    return res


@dataclass(frozen=True)
class ExMatch:
    """Outcome of one execution-match test.

    Attributes:
        match: True iff the prediction's result equals the gold result under the EX rule.
        reason: ``"match"``; ``"no_prediction"`` (empty/None SQL); ``"pred_error:<category>"``
            (category from :class:`tools.sql_results.ErrorCategory`, e.g. ``pred_error:timeout``);
            ``"gold_error:<category>"``; ``"truncated"`` (both hit the row cap: undecidable, scored
            0); ``"row_count"``; ``"column_count"``; ``"row_order"`` (same bag,
            wrong order, gold has ORDER BY); ``"values"`` (anything else); ``"db_error"`` (the
            question's database file is unusable: empty, not SQLite, corrupt, a directory; set by
            :func:`evaluate_predictions`).
        detail: the executor's error message when a query failed, else ``""``.
        pred_ms, gold_ms: execution wall time in milliseconds (0.0 when not run).
    """

    match: bool
    reason: str
    detail: str = ""
    pred_ms: float = 0.0
    gold_ms: float = 0.0


def compare_results(
    gold: ExecutionResult | ExecutionError,
    pred: ExecutionResult | ExecutionError | None,
    *,
    order_matters: bool,
) -> ExMatch:
    """Apply the EX rule to two execution outcomes (``pred=None``: no prediction). Pure."""
    gold_ms = gold.elapsed_ms
    pred_ms = pred.elapsed_ms if pred is not None else 0.0
    if not gold.ok:
        return ExMatch(False, f"gold_error:{gold.category.value}", gold.message, pred_ms, gold_ms)
    if pred is None:
        return ExMatch(False, "no_prediction", "", 0.0, gold_ms)
    if not pred.ok:
        return ExMatch(False, f"pred_error:{pred.category.value}", pred.message, pred_ms, gold_ms)
    g, p = gold.rows, pred.rows
    if gold.truncated and pred.truncated:
        return ExMatch(False, "truncated", "both results hit the row cap; raise max_rows", pred_ms, gold_ms)
    if gold.truncated != pred.truncated or len(g) != len(p):
        more = " or more" if pred.truncated else ""
        return ExMatch(False, "row_count", f"gold {len(g)} rows, pred {len(p)}{more} rows", pred_ms, gold_ms)
    if g and p and len(g[0]) != len(p[0]):
        return ExMatch(False, "column_count", f"gold {len(g[0])} columns, pred {len(p[0])}", pred_ms, gold_ms)
    if results_match(g, p, order_matters=order_matters):
        return ExMatch(True, "match", "", pred_ms, gold_ms)
    if order_matters and results_match(g, p, order_matters=False):
        return ExMatch(False, "row_order", "", pred_ms, gold_ms)
    return ExMatch(False, "values", "", pred_ms, gold_ms)


def execution_match(
    db_path: str | Path,
    pred_sql: str | None,
    gold_sql: str,
    *,
    keep_distinct: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ExMatch:
    """Execution match of one prediction against the gold query on one SQLite database.

    Args:
        db_path: the SQLite file (opened read-only by :func:`tools.executor.execute_sql`).
        pred_sql: predicted SQL; ``None`` or blank scores 0 (``reason="no_prediction"``).
        gold_sql: reference SQL; its result is cached (see :func:`run_query`).
        keep_distinct: keep DISTINCT in both queries (official flag ``--keep_distinct``).
        timeout_s: wall-clock limit per query; a prediction that runs longer scores 0.
        max_rows: row cap per query.

    Returns:
        :class:`ExMatch`. Never raises for bad SQL; a gold query that fails gives
        ``reason="gold_error:..."`` and ``match=False`` (the official script aborts instead).

    Raises:
        FileNotFoundError: ``db_path`` does not exist (from the executor).
    """
    gold = run_query(
        db_path, gold_sql, keep_distinct=keep_distinct, timeout_s=timeout_s, max_rows=max_rows, cache=True
    )
    if pred_sql is None or not str(pred_sql).strip():
        pred = None
    elif len(str(pred_sql)) > MAX_SQL_BYTES:  # the executor would refuse it; do not lex megabytes first
        pred = ExecutionError(
            ErrorCategory.OTHER,
            f"prediction is {len(str(pred_sql))} characters; SQL longer than {MAX_SQL_BYTES} bytes is not run",
            0.0,
        )
    else:
        pred = run_query(db_path, str(pred_sql), keep_distinct=keep_distinct, timeout_s=timeout_s, max_rows=max_rows)
    return compare_results(gold, pred, order_matters=order_matters(gold_sql))


# --------------------------------------------------------------------------------------------
# a whole split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionRecord:
    """One evaluated question (one line of the per-question JSONL)."""

    id: str
    index: int
    db_id: str
    question: str
    pred: str
    gold: str
    match: bool
    reason: str
    detail: str = ""
    pred_ms: float = 0.0
    gold_ms: float = 0.0


@dataclass(frozen=True)
class DbScore:
    """EX of one database: ``matched`` of ``n`` questions, ``ex = matched / n`` in [0, 1]."""

    db_id: str
    n: int
    matched: int

    @property
    def ex(self) -> float:
        return self.matched / self.n if self.n else 0.0


@dataclass
class EvaluationReport:
    """EX over a list of questions.

    Attributes:
        ex: matched / n in [0, 1] (0.0 for no questions).
        n, matched: question counts.
        per_db: db_id -> :class:`DbScore`, sorted by db_id.
        reasons: reason -> count (see :class:`ExMatch`).
        records: one :class:`QuestionRecord` per question, in input order.
        keep_distinct, timeout_s, workers: the settings used.
        elapsed_s: wall time of the evaluation, seconds.
        extra: free-form metadata a caller may attach (model name, run id, ...).
        unusable_dbs: db_id -> why its database could not be used (its questions have
            ``reason="db_error"`` and score 0).
    """

    ex: float
    n: int
    matched: int
    per_db: dict[str, DbScore]
    reasons: dict[str, int]
    records: list[QuestionRecord]
    keep_distinct: bool
    timeout_s: float
    workers: int
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    unusable_dbs: dict[str, str] = field(default_factory=dict)

    def write_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per question (fields of :class:`QuestionRecord`) to ``path``,
        atomically: ``path`` is replaced only once every line is written.

        Raises:
            OSError: ``path`` cannot be written (it is then left as it was).
        """
        path = Path(path)
        with atomic_writer(path) as f:
            for r in self.records:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        return path

    def summary(self) -> dict[str, Any]:
        """Plain-dict figures: ex, n, matched, per-db EX, reason counts, settings, elapsed_s."""
        return {
            "ex": self.ex,
            "n": self.n,
            "matched": self.matched,
            "per_db": {k: {"n": v.n, "matched": v.matched, "ex": v.ex} for k, v in self.per_db.items()},
            "reasons": dict(self.reasons),
            "keep_distinct": self.keep_distinct,
            "timeout_s": self.timeout_s,
            "workers": self.workers,
            "elapsed_s": self.elapsed_s,
            "unusable_dbs": dict(self.unusable_dbs),
        }


def _pool_context() -> mp.context.BaseContext:
    """``fork`` when this process runs a single thread (cheap start, no re-import of ``__main__``),
    else ``spawn`` (forking a multi-threaded process can deadlock on locks held by other threads).
    The executor drops connections inherited through a fork."""
    if threading.active_count() == 1 and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _eval_chunk(
    items: list[tuple[int, str, str | None, str]], keep_distinct: bool, timeout_s: float, max_rows: int
) -> list[tuple[int, ExMatch]]:
    """Worker: ``(position, db_path, pred, gold)`` items -> ``(position, ExMatch)``.

    A database the executor cannot open (a directory, not SQLite, gone since the check) costs only
    its own questions: they get ``reason="db_error"`` with the executor's message."""
    out: list[tuple[int, ExMatch]] = []
    broken: dict[str, str] = {}
    for k, db, pred, gold in items:
        if db not in broken:
            try:
                out.append((k, execution_match(db, pred, gold, keep_distinct=keep_distinct, timeout_s=timeout_s,
                                               max_rows=max_rows)))
                continue
            except (OSError, ValueError) as e:
                broken[db] = str(e) or type(e).__name__
        out.append((k, ExMatch(False, "db_error", broken[db])))
    return out


def database_problems(examples: Sequence[Any]) -> dict[str, str]:
    """The unusable databases among ``examples``' ``db_path`` values: path -> problem (see
    :func:`tools.spider.database_problem`); each distinct file is checked once. Never raises."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for ex in examples:
        db = str(ex.db_path)
        if db in seen:
            continue
        seen.add(db)
        problem = database_problem(db)
        if problem:
            out[db] = problem
    return out


def clip_text(text: str, limit: int = MAX_RECORD_SQL_CHARS) -> str:
    """``text`` itself when at most ``limit`` characters, else its first ``limit`` characters
    followed by `` [... N more characters]``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [... {len(text) - limit} more characters]"


def evaluate_predictions(
    examples: Sequence[Any],
    predictions: Sequence[str | None],
    *,
    keep_distinct: bool = False,
    workers: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    db_problems: dict[str, str] | None = None,
) -> EvaluationReport:
    """EX of ``predictions[i]`` against ``examples[i]`` for every i.

    Args:
        examples: :class:`tools.spider.SpiderExample`-like objects (``id``, ``index``, ``question``,
            ``gold_sql``, ``db_id``, ``db_path``).
        predictions: predicted SQL, aligned with ``examples``; ``None``/blank scores 0.
        keep_distinct: see :func:`execution_match`.
        workers: processes; 1 runs in this process, >1 uses a process pool (fork when this process
            is single-threaded, else spawn) with the questions grouped by database (so each
            worker's gold cache is reused). Worth it when predictions are slow; a pool costs start-up.
        timeout_s, max_rows: per query, see :func:`execution_match`.
        db_problems: unusable databases, path -> problem, as :func:`database_problems` returns
            (computed here when None). Their questions are not run: they score 0 with
            ``reason="db_error"``, and one warning per database counts them.

    Returns:
        :class:`EvaluationReport`; ``unusable_dbs`` maps each unusable db_id to its problem.
        SQL longer than :data:`MAX_RECORD_SQL_CHARS` is cut in the records (see :func:`clip_text`).

    Raises:
        ValueError: the two sequences differ in length, or ``workers < 1``.
    """
    if len(examples) != len(predictions):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(examples)} examples; pass one prediction per example, in "
            "order"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    if db_problems is None:
        db_problems = database_problems(examples)
    results: dict[int, ExMatch] = {}
    items = []
    for k, ex in enumerate(examples):
        problem = db_problems.get(str(ex.db_path))
        if problem:
            results[k] = ExMatch(False, "db_error", f"database {ex.db_path} {problem}")
        else:
            items.append((k, str(ex.db_path), predictions[k], ex.gold_sql))
    workers = min(workers, max(1, len(items)))
    if not items:
        pass
    elif workers == 1:
        results.update(_eval_chunk(items, keep_distinct, timeout_s, max_rows))
    else:
        by_db: dict[str, list] = defaultdict(list)
        for it in items:
            by_db[it[1]].append(it)
        ordered = [it for db in sorted(by_db, key=lambda d: -len(by_db[d])) for it in by_db[db]]
        size = max(1, math.ceil(len(ordered) / (workers * 4)))
        chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            futs = [pool.submit(_eval_chunk, c, keep_distinct, timeout_s, max_rows) for c in chunks]
            for f in futs:
                results.update(f.result())

    records: list[QuestionRecord] = []
    per_db_n: Counter[str] = Counter()
    per_db_m: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    unusable: dict[str, str] = {}
    unusable_n: Counter[str] = Counter()
    for k, ex in enumerate(examples):
        m = results[k]
        pred = predictions[k]
        records.append(
            QuestionRecord(
                id=ex.id, index=ex.index, db_id=ex.db_id, question=clip_text(ex.question),
                pred=clip_text("" if pred is None else str(pred)), gold=clip_text(ex.gold_sql), match=m.match,
                reason=m.reason, detail=clip_text(m.detail, MAX_RECORD_DETAIL_CHARS), pred_ms=round(m.pred_ms, 3),
                gold_ms=round(m.gold_ms, 3),
            )
        )
        per_db_n[ex.db_id] += 1
        per_db_m[ex.db_id] += int(m.match)
        reasons[m.reason] += 1
        if m.reason == "db_error":
            unusable.setdefault(ex.db_id, m.detail)
            unusable_n[ex.db_id] += 1
        elif m.reason.startswith("gold_error"):
            logger.warning("gold query of %s fails on %s: %s", ex.id, ex.db_id, m.detail)
    for db_id, problem in unusable.items():
        logger.warning("%s; its %d question(s) score 0 (reason db_error)", problem, unusable_n[db_id])
    n = len(records)
    matched = sum(r.match for r in records)
    return EvaluationReport(
        ex=matched / n if n else 0.0,
        n=n,
        matched=matched,
        per_db={d: DbScore(d, per_db_n[d], per_db_m[d]) for d in sorted(per_db_n)},
        reasons=dict(reasons.most_common()),
        records=records,
        keep_distinct=keep_distinct,
        timeout_s=timeout_s,
        workers=workers,
        elapsed_s=time.perf_counter() - t0,
        unusable_dbs=unusable,
    )
