"""LLM-as-a-judge scores for a run's answers, recorded beside EX (never instead of it).

For every question of a run directory (``questions.jsonl``, see :mod:`society.run`) a judge model
is shown the question, the database schema (compact, capped), the reference (gold) query, the
answer text (the reasoning and SQL of the role whose query became the answer) and the first rows
its query returned, and asked for a JSON object with three scores from 1 (bad) to 5 (good) and one
error type:

* ``sql_correctness`` -- does the query answer the question (the gold query is a reference: other
  correct formulations are fine);
* ``reasoning`` -- is the reasoning relevant, grounded in the schema and consistent with the SQL
  (1 when there is none);
* ``format`` -- one clean, runnable SQL statement in the expected answer format;
* ``error_type`` -- one of :data:`ERROR_TYPES` (``"none"`` for a correct answer).

The reply is parsed leniently (:func:`parse_judge_reply`: Markdown fences, prose around the object,
Python-style quotes, ``"4"`` or ``"4/5"`` scores, common key aliases); a reply that still has no
valid object is recorded with ``parsed: false`` and the reason, never as scores. An endpoint that
cannot be reached is :class:`JudgeEndpointError` and nothing is written: unreachable is not a score.

Everything here is pure given the ``complete`` function (messages -> reply text);
:func:`openai_completer` builds one for an OpenAI-compatible endpoint. ``sqlsociety judge`` is in
:mod:`evaluation.judge_cli`.

LLM-as-a-judge: Zheng et al., "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena",
NeurIPS 2023 Datasets and Benchmarks (arXiv:2306.05685) -- single-answer grading with a
reference answer, which is the setting used here.

Files written into the run directory:

* ``judge.jsonl`` -- one line per answer, in ``questions.jsonl`` order (:class:`JudgeRecord`);
* ``judge_summary.json`` -- :class:`JudgeSummary`: mean scores overall and split by EX.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.files import atomic_write_text, read_jsonl
from tools.schema import load_schema

__all__ = [
    "ERROR_TYPES",
    "SCORE_KEYS",
    "VERDICT_SCHEMA",
    "JudgeEndpointError",
    "JudgeParseError",
    "JudgeRecord",
    "JudgeSummary",
    "JudgeVerdict",
    "answer_text",
    "build_messages",
    "judge_answers",
    "judge_run",
    "load_answers",
    "openai_completer",
    "parse_judge_reply",
    "summarize",
]

#: The error types a judge may name; ``"none"`` for a correct answer, ``"other"`` for anything else.
ERROR_TYPES: tuple[str, ...] = (
    "none",
    "wrong_table",
    "wrong_column",
    "wrong_join",
    "wrong_filter",
    "wrong_aggregation",
    "wrong_grouping",
    "wrong_ordering",
    "missing_sql",
    "syntax",
    "other",
)

#: The three 1-5 scores, in the order they are reported.
SCORE_KEYS: tuple[str, ...] = ("sql_correctness", "reasoning", "format")

#: Key spellings a judge model tends to use -> the canonical key.
_KEY_ALIASES: dict[str, str] = {
    "sql_correctness": "sql_correctness", "correctness": "sql_correctness", "sql": "sql_correctness",
    "sql_score": "sql_correctness", "correct": "sql_correctness", "sql_correctness_score": "sql_correctness",
    "reasoning": "reasoning", "reasoning_score": "reasoning", "reasoning_quality": "reasoning",
    "format": "format", "format_score": "format", "formatting": "format",
    "error_type": "error_type", "error": "error_type", "error_category": "error_type", "errortype": "error_type",
}

#: JSON Schema of a verdict, sent as the OpenAI ``response_format`` (``json_schema``) so servers
#: that constrain decoding to a schema (llama-server, vLLM, OpenAI) can only return a valid verdict.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{k: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for k in ("sql_correctness", "reasoning", "format")},
        "error_type": {"type": "string", "enum": list(ERROR_TYPES)},
    },
    "required": ["sql_correctness", "reasoning", "format", "error_type"],
    "additionalProperties": False,
}

#: Characters of the schema shown to the judge (small judge models have small contexts).
SCHEMA_CHARS = 2500
#: Result rows of the answer's query shown to the judge.
RESULT_ROWS = 5


class JudgeEndpointError(RuntimeError):
    """The judge endpoint cannot be reached or refuses every request (connection refused, timeout,
    5xx after retries, authentication, unknown model). Nothing is recorded."""


class JudgeParseError(ValueError):
    """A judge reply holds no valid verdict object; the message says what is missing."""


@dataclass(frozen=True)
class JudgeVerdict:
    """A parsed judge reply: three scores in 1..5 and an error type from :data:`ERROR_TYPES`.

    ``error_type_raw`` keeps the judge's own word when it was not in the list (then
    ``error_type`` is ``"other"``)."""

    sql_correctness: int
    reasoning: int
    format: int
    error_type: str
    error_type_raw: str | None = None


# ------------------------------------------------------------------------------ parsing


def _candidate_objects(text: str) -> Iterable[Any]:
    """Every JSON (or Python-literal) object found in ``text``, first to last."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        start = m.start()
        try:
            obj, _ = decoder.raw_decode(text, start)
            yield obj
            continue
        except json.JSONDecodeError:
            pass
        depth, end = 0, None
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        if end is None:
            continue
        chunk = text[start:end]
        try:
            yield ast.literal_eval(chunk)  # {'sql_correctness': 4, ...}
            continue
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
        try:  # trailing commas, true/false written as in JSON inside a Python-ish dict
            yield json.loads(re.sub(r",\s*}", "}", chunk.replace("'", '"')))
        except json.JSONDecodeError:
            pass


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _score(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise JudgeParseError(f"{key} is a boolean ({value!r}); need an integer from 1 to 5")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*", value)
        if not m:
            raise JudgeParseError(f"{key} = {value!r} is not a number; need an integer from 1 to 5")
        value = float(m.group(1))
    if isinstance(value, float):
        if not value.is_integer():
            raise JudgeParseError(f"{key} = {value!r} is not a whole number; need an integer from 1 to 5")
        value = int(value)
    if not isinstance(value, int):
        raise JudgeParseError(f"{key} = {value!r}; need an integer from 1 to 5")
    if not 1 <= value <= 5:
        raise JudgeParseError(f"{key} = {value} is outside 1..5")
    return value


def _verdict_from(obj: dict[str, Any]) -> JudgeVerdict:
    canon: dict[str, Any] = {}
    # top-level keys first, then those of nested objects ({"scores": {...}, "error_type": ...})
    items = list(obj.items()) + [kv for v in obj.values() if isinstance(v, dict) for kv in v.items()]
    for k, v in items:
        c = _KEY_ALIASES.get(_norm_key(k))
        if c is not None and c not in canon:
            canon[c] = v
    missing = [k for k in (*SCORE_KEYS, "error_type") if k not in canon]
    if missing:
        raise JudgeParseError(
            f"the reply's object lacks {', '.join(missing)} (has {', '.join(map(str, obj)) or 'no keys'})"
        )
    scores = {k: _score(canon[k], k) for k in SCORE_KEYS}
    raw = canon["error_type"]
    if isinstance(raw, list):
        raw = raw[0] if raw else "none"
    et = _norm_key(raw if raw is not None else "none")
    if et in ("", "null", "no_error", "correct", "n/a", "na"):
        et = "none"
    if et in ERROR_TYPES:
        return JudgeVerdict(**scores, error_type=et)
    return JudgeVerdict(**scores, error_type="other", error_type_raw=str(raw))


def parse_judge_reply(text: str | None) -> JudgeVerdict:
    """The verdict in a judge model's reply.

    Looks at every ``{...}`` in the reply (Markdown fences and prose around it are ignored), as
    JSON, then as a Python literal (single quotes), and returns the first one that is a valid
    verdict (one holding nested objects is searched too). Keys are matched case-insensitively with
    common aliases (``correctness``, ``reasoning_score``, ``error``...); scores may be integers,
    integral floats or strings like ``"4"`` / ``"4/5"`` and must be within 1..5; an error type not in
    :data:`ERROR_TYPES` becomes ``"other"`` (the judge's word kept in ``error_type_raw``).

    >>> reply = '{"sql_correctness": 4, "reasoning": "3", "format": 5, "error_type": "none"}'
    >>> parse_judge_reply('Sure! ```json\\n' + reply + '\\n```')
    JudgeVerdict(sql_correctness=4, reasoning=3, format=5, error_type='none', error_type_raw=None)

    Raises:
        JudgeParseError: no object, or none with all four keys and scores in 1..5; the message
            gives the first problem found.
    """
    if text is None or not str(text).strip():
        raise JudgeParseError("empty reply")
    first_problem: str | None = None
    stack = list(_candidate_objects(str(text)))
    seen = 0
    while stack and seen < 100:
        obj = stack.pop(0)
        seen += 1
        if not isinstance(obj, dict):
            continue
        try:
            return _verdict_from(obj)
        except JudgeParseError as e:
            first_problem = first_problem or str(e)
            stack.extend(v for v in obj.values() if isinstance(v, dict))
    if first_problem:
        raise JudgeParseError(first_problem)
    raise JudgeParseError("no JSON object in the reply")


# ------------------------------------------------------------------------------ inputs


def load_answers(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/questions.jsonl`` (one per answered question), in file order.

    Raises:
        ValueError: ``run_dir`` is not a directory, has no ``questions.jsonl``, a line is not a
            JSON object, or the file is empty. The message names the file and line.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory; pass a run directory of `sqlsociety ask/eval` (under runs/)")
    path = run_dir / "questions.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no questions.jsonl; pass a run directory of `sqlsociety ask/eval`")
    out = read_jsonl(path, drop_truncated_tail=False)
    if not out:
        raise ValueError(f"{path} is empty: the run answered no question")
    return out


def answer_text(rec: dict[str, Any]) -> tuple[str, str]:
    """The text of the answer in a ``questions.jsonl`` record and where it came from.

    The final SQL's own output is preferred: the last senior turn that produced it, else a junior
    candidate with that SQL (one with a ``<reasoning>`` section first); ``("", "none")`` when the run
    has no SQL; the bare SQL (source ``"sql"``) when no role's raw output holds it.
    """
    final = rec.get("pred_sql") or rec.get("final_sql")
    if not final:
        return ("", "none")
    for t in reversed(rec.get("senior_turns") or []):
        if t.get("raw") and t.get("sql_after") == final:
            return (t["raw"], "senior")
    cands = [c for c in rec.get("candidates") or [] if c.get("raw") and c.get("sql") == final]
    cands.sort(key=lambda c: "<reasoning>" not in c["raw"])
    if cands:
        return (cands[0]["raw"], str(cands[0].get("junior") or "junior"))
    return (final, "sql")


def _schema_text(db_path: str | None) -> str:
    if not db_path:
        return "(schema not available)"
    try:
        return load_schema(Path(db_path), sample_rows=0).to_prompt(compact=True, max_chars=SCHEMA_CHARS)
    except Exception as e:  # noqa: BLE001 - the judge can still grade without the schema
        return f"(schema not available: {type(e).__name__})"


def _result_text(rec: dict[str, Any]) -> str:
    res = rec.get("result")
    if not isinstance(res, dict):
        return "(not executed)"
    if not res.get("ok"):
        return f"error: {res.get('error') or res.get('error_category') or 'unknown'}"
    rows = (res.get("rows") or [])[:RESULT_ROWS]
    cols = res.get("columns") or []
    lines = [" | ".join(map(str, cols))] + [" | ".join(map(str, r)) for r in rows]
    more = res.get("row_count", len(rows))
    return "\n".join(lines) + (f"\n({more} rows in all)" if isinstance(more, int) and more > len(rows) else "")


JUDGE_SYSTEM = (
    "You grade answers to text-to-SQL questions. Reply with one JSON object and nothing else:\n"
    '{"sql_correctness": <1-5>, "reasoning": <1-5>, "format": <1-5>, "error_type": "<type>"}\n'
    "sql_correctness: 5 = the query answers the question exactly, 1 = unrelated or missing.\n"
    "reasoning: 5 = relevant, uses the right tables and columns, consistent with the SQL; 1 = none or wrong.\n"
    "format: 5 = one clean SQL statement in the requested format, 1 = no usable SQL.\n"
    f"error_type: one of {', '.join(ERROR_TYPES)} (none when the query is correct).\n"
    "The reference query is one correct answer; other queries returning the same rows are also correct."
)


def build_messages(rec: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages asking the judge about one ``questions.jsonl`` record (system + user)."""
    text, _ = answer_text(rec)
    user = (
        f"Question: {rec.get('question', '')}\n\n"
        f"Database schema:\n{_schema_text(rec.get('db_path'))}\n\n"
        f"Reference query:\n{rec.get('gold_sql') or '(none given)'}\n\n"
        f"Answer to grade:\n{text or '(no answer)'}\n\n"
        f"Its query returned:\n{_result_text(rec) if text else '(nothing)'}\n\n"
        "Grade the answer. Reply with the JSON object only."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------ judging


@dataclass
class JudgeRecord:
    """One line of ``judge.jsonl``.

    Attributes:
        index: position in ``questions.jsonl`` (0-based); question_id / db_id / question: the task.
        pred_sql / gold_sql: the answer's query and the reference (None when absent).
        ex: the run's EX verdict for this question (``match``), None when the run did not score EX.
        answer_source: where the graded text came from (see :func:`answer_text`).
        parsed: True when the reply held a valid verdict; then the three scores (1..5) and
            ``error_type`` are set, else they are None and ``parse_error`` says why.
        reply: the judge's raw reply; model: the judge model; latency_s: seconds for the call.
    """

    index: int
    question_id: str
    db_id: str
    question: str
    pred_sql: str | None
    gold_sql: str | None
    ex: bool | None
    answer_source: str
    parsed: bool
    sql_correctness: int | None = None
    reasoning: int | None = None
    format: int | None = None
    error_type: str | None = None
    error_type_raw: str | None = None
    parse_error: str | None = None
    reply: str = ""
    model: str = ""
    latency_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Completer = Callable[[Sequence[dict[str, str]]], str]


def _ex_of(rec: dict[str, Any]) -> bool | None:
    m = rec.get("match")
    return None if m is None else bool(m)


def judge_answers(
    records: Sequence[dict[str, Any]],
    complete: Completer,
    *,
    model: str = "",
    on_result: Callable[[JudgeRecord], None] | None = None,
) -> list[JudgeRecord]:
    """Ask the judge about each record; one :class:`JudgeRecord` per record, in order.

    Args:
        records: ``questions.jsonl`` records (see :func:`load_answers`).
        complete: messages -> reply text (e.g. :func:`openai_completer`). It raises
            :class:`JudgeEndpointError` when the endpoint is unusable; that propagates (nothing
            is scored). A :class:`JudgeParseError` or ``ValueError`` from it (a request refused
            for this answer only) is recorded as unparsed.
        model: recorded in each line.
        on_result: called with each record as it is done (progress).
    """
    out: list[JudgeRecord] = []
    for i, rec in enumerate(records):
        _, source = answer_text(rec)
        jr = JudgeRecord(
            index=i, question_id=str(rec.get("question_id") or ""), db_id=str(rec.get("db_id") or ""),
            question=str(rec.get("question") or ""), pred_sql=rec.get("pred_sql") or rec.get("final_sql"),
            gold_sql=rec.get("gold_sql"), ex=_ex_of(rec), answer_source=source, parsed=False, model=model,
        )
        t0 = time.perf_counter()
        try:
            reply = complete(build_messages(rec))
        except JudgeEndpointError:
            raise
        except ValueError as e:  # this request refused (e.g. too long for the judge's context)
            jr.parse_error = f"request refused: {e}"
            reply = None
        jr.latency_s = time.perf_counter() - t0
        if reply is not None:
            jr.reply = reply
            try:
                v = parse_judge_reply(reply)
            except JudgeParseError as e:
                jr.parse_error = str(e)
            else:
                jr.parsed = True
                jr.sql_correctness, jr.reasoning, jr.format = v.sql_correctness, v.reasoning, v.format
                jr.error_type, jr.error_type_raw = v.error_type, v.error_type_raw
        out.append(jr)
        if on_result is not None:
            on_result(jr)
    return out


@dataclass
class JudgeGroup:
    """Means over one group of answers: ``n`` answers, ``parsed`` with a verdict, ``ex`` (EX mean
    over answers with an EX verdict, None if none), and the mean of each score over parsed ones
    (None when none parsed)."""

    n: int = 0
    parsed: int = 0
    ex: float | None = None
    sql_correctness: float | None = None
    reasoning: float | None = None
    format: float | None = None


@dataclass
class JudgeSummary:
    """``judge_summary.json``: the judge model, groups ``all`` / ``ex_correct`` / ``ex_incorrect`` /
    ``ex_unknown`` (:class:`JudgeGroup`), the error-type counts over parsed answers, and how many
    replies could not be parsed. EX stays the metric; the scores are beside it."""

    model: str
    n: int
    unparsed: int
    groups: dict[str, JudgeGroup] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group(recs: list[JudgeRecord]) -> JudgeGroup:
    g = JudgeGroup(n=len(recs))
    scored = [r for r in recs if r.parsed]
    g.parsed = len(scored)
    with_ex = [r for r in recs if r.ex is not None]
    g.ex = sum(bool(r.ex) for r in with_ex) / len(with_ex) if with_ex else None
    for k in SCORE_KEYS:
        setattr(g, k, sum(getattr(r, k) for r in scored) / len(scored) if scored else None)
    return g


def summarize(records: Sequence[JudgeRecord], *, model: str = "") -> JudgeSummary:
    """Mean scores overall and split by the run's EX verdict (correct / incorrect / unknown).

    >>> r = JudgeRecord(0, "q", "db", "?", "SELECT 1", "SELECT 1", True, "sql", True, 5, 4, 5, "none")
    >>> s = summarize([r])
    >>> (s.n, s.unparsed, s.groups["all"].sql_correctness, s.groups["ex_correct"].n, s.groups["ex_incorrect"].n)
    (1, 0, 5.0, 1, 0)
    """
    recs = list(records)
    groups = {
        "all": _group(recs),
        "ex_correct": _group([r for r in recs if r.ex is True]),
        "ex_incorrect": _group([r for r in recs if r.ex is False]),
        "ex_unknown": _group([r for r in recs if r.ex is None]),
    }
    errors = Counter(r.error_type for r in recs if r.parsed and r.error_type)
    return JudgeSummary(model=model, n=len(recs), unparsed=sum(not r.parsed for r in recs), groups=groups,
                        error_types=dict(errors.most_common()))


def judge_run(
    run_dir: str | Path,
    complete: Completer,
    *,
    model: str = "",
    limit: int | None = None,
    on_result: Callable[[JudgeRecord], None] | None = None,
) -> tuple[list[JudgeRecord], JudgeSummary]:
    """Judge the answers of a run directory and write ``judge.jsonl`` and ``judge_summary.json`` there.

    Both files are written atomically after every answer was judged: an endpoint failure
    (:class:`JudgeEndpointError`, propagated) or Ctrl-C leaves no (or the previous) judge files.

    Args:
        run_dir: a run directory of ``sqlsociety ask/eval``.
        complete: messages -> reply text (see :func:`judge_answers`).
        model: the judge model's name, recorded.
        limit: only the first ``limit`` answers.

    Raises:
        ValueError: not a run directory (see :func:`load_answers`) or ``limit`` < 1.
        JudgeEndpointError: the endpoint is unusable.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit = {limit}; must be >= 1")
    run_dir = Path(run_dir)
    records = load_answers(run_dir)[:limit]
    judged = judge_answers(records, complete, model=model, on_result=on_result)
    summary = summarize(judged, model=model)
    atomic_write_text(run_dir / "judge.jsonl", "".join(json.dumps(r.as_dict(), default=str) + "\n" for r in judged))
    atomic_write_text(run_dir / "judge_summary.json", json.dumps(summary.as_dict(), indent=2))
    return judged, summary


# ------------------------------------------------------------------------------ endpoints


def openai_completer(
    base_url: str,
    model: str | None = None,
    *,
    api_key: str = "sk-no-key",
    max_tokens: int = 256,
    timeout_s: float = 120.0,
    retries: int = 2,
    json_schema: bool = True,
) -> tuple[Completer, str]:
    """A :data:`Completer` for an OpenAI-compatible endpoint, and the model name it uses.

    Checks the endpoint first (``GET /models``): ``model`` None takes the first model it lists.
    Calls use temperature 0. With ``json_schema`` the request carries :data:`VERDICT_SCHEMA` as
    ``response_format``; an endpoint that rejects it (HTTP 400) is asked again without it, and
    from then on never with it. The reply is parsed by :func:`parse_judge_reply` either way.
    Connection errors, timeouts, 5xx and 429 (after ``retries`` retries
    with the client's backoff), authentication and unknown-model errors raise
    :class:`JudgeEndpointError`; any other 4xx (e.g. a prompt longer than the judge's context) is a
    ``ValueError`` that :func:`judge_answers` records for that answer.

    Raises:
        JudgeEndpointError: the endpoint does not answer ``/models`` or lists no model.
    """
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or "sk-no-key", timeout=timeout_s, max_retries=retries)
    fatal = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError, openai.RateLimitError,
             openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
    try:
        listed = [m.id for m in client.models.list()]
    except fatal as e:
        raise JudgeEndpointError(f"no usable OpenAI-compatible endpoint at {base_url}: {type(e).__name__}: {e}") from e
    except openai.APIError as e:
        raise JudgeEndpointError(f"the endpoint at {base_url} failed on GET /models: {type(e).__name__}: {e}") from e
    if model is None:
        if not listed:
            raise JudgeEndpointError(f"the endpoint at {base_url} lists no model; pass --model")
        model = listed[0]
    name = model
    use_schema = {"on": json_schema}
    response_format = {"type": "json_schema", "json_schema": {"name": "judge_verdict", "schema": VERDICT_SCHEMA}}

    def create(messages: Sequence[dict[str, str]], schema: bool) -> Any:
        extra: dict[str, Any] = {"response_format": response_format} if schema else {}
        return client.chat.completions.create(
            model=name, messages=list(messages), temperature=0.0, max_tokens=max_tokens, **extra,  # type: ignore[arg-type]
        )

    def complete(messages: Sequence[dict[str, str]]) -> str:
        try:
            try:
                resp = create(messages, use_schema["on"])
            except openai.BadRequestError:
                if not use_schema["on"]:
                    raise
                resp = create(messages, False)  # maybe the endpoint does not take response_format
                use_schema["on"] = False
        except fatal as e:
            raise JudgeEndpointError(f"judge endpoint {base_url} ({name}) failed: {type(e).__name__}: {e}") from e
        except openai.APIStatusError as e:
            raise ValueError(f"{e.status_code}: {e.message}") from e
        choice = resp.choices[0] if resp.choices else None
        return (choice.message.content or "") if choice is not None else ""

    return complete, name
