"""``sqlsociety eval-predictions``: execution accuracy of a prediction file on a Spider-format split.

Prediction file format: UTF-8 text, one SQL query per line, in the split file's order
(``dev.json`` order, the order of the official ``dev_gold.sql``). Two lengths are accepted:

* **full** — one line per question of the split file (Spider dev: 1034 lines, like
  ``dev_gold.sql``); line ``SpiderExample.index`` is used, and lines of questions whose database
  is missing (wta_1) are skipped;
* **executable** — one line per executable question (Spider dev here: 972 lines), in the same order
  with those questions left out.

A line may end with ``<TAB>db_id`` as in the official gold files; the db_id is then checked against
the question's. An empty line is an empty prediction (scores 0). Any other line count is an error.
Lines are separated by ``\n`` only (a trailing ``\r`` is dropped), so a form feed or U+2028 inside
a query does not split it.

Bad input ends with a one-paragraph message and exit code 2, before any query runs: a missing or
non-UTF-8 prediction file, a malformed split file, an output path that is a directory, cannot be
created or is the prediction file itself, a non-finite or non-positive ``--timeout``, or no usable
database at all. A single unusable database (empty, not SQLite, corrupt) costs only its own
questions: they score 0 with reason ``db_error`` and one warning counts them. Outputs are written
atomically: a failed run leaves no half-written file and never touches the prediction file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluation.metrics.ex import DEFAULT_TIMEOUT_S, EvaluationReport, database_problems, evaluate_predictions
from tools.files import OutputPathError, atomic_write_text, check_output_path, same_file
from tools.spider import DataError, SpiderExample, default_data_dir, load_examples, split_file

__all__ = ["read_predictions", "register", "print_report"]


class PredictionFileError(ValueError):
    """The prediction file cannot be used; the message names the file and the fix."""


def read_predictions(path: str | Path, examples: list[SpiderExample], n_split: int) -> list[str]:
    """Read ``path`` and align its lines with ``examples`` (see the module docstring).

    Args:
        path: prediction file.
        examples: executable examples of the split, in file order.
        n_split: number of questions in the split file (including non-executable ones).

    Returns:
        One prediction per example (``""`` for an empty line).

    Raises:
        PredictionFileError: missing file, a directory, unreadable or non-UTF-8 file, wrong line
            count, or a ``<TAB>db_id`` suffix that disagrees with the question's database.
    """
    path = Path(path)
    if path.is_dir():
        raise PredictionFileError(f"prediction file {path} is a directory; pass --pred with the file inside it "
                                  "(one SQL query per line)")
    if not path.is_file():
        raise PredictionFileError(f"prediction file {path} does not exist; pass --pred with one SQL query per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PredictionFileError(f"prediction file {path} is not UTF-8 text ({e}); re-save it as UTF-8") from e
    except OSError as e:
        raise PredictionFileError(f"prediction file {path} cannot be read ({e.strerror or e}); "
                                  "check its permissions") from e
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    n_exec = len(examples)
    allowed = {n_split, n_exec}
    while len(lines) not in allowed and lines and not lines[-1].strip():
        lines.pop()  # tolerate trailing blank lines
    if len(lines) == n_split:
        picked = [(lines[ex.index], ex) for ex in examples]
        mode = "full"
    elif len(lines) == n_exec:
        picked = list(zip(lines, examples))
        mode = "executable"
    else:
        counts = f"{n_split} (every question of the split file)"
        if n_exec != n_split:
            counts += f" or {n_exec} (only the questions whose database exists)"
        raise PredictionFileError(
            f"prediction file {path} has {len(lines)} lines; expected {counts}, one SQL query per line "
            f"in the split file's order — regenerate it for this --split/--data-dir"
        )
    known_dbs = {ex.db_id for ex in examples}
    preds: list[str] = []
    for lineno, (line, ex) in enumerate(picked, start=1):
        sql = line
        head, tab, tail = line.rpartition("\t")
        if tab and tail.strip() in known_dbs:  # official gold-file style "SQL<TAB>db_id"
            if tail.strip() != ex.db_id:
                real_line = ex.index + 1 if mode == "full" else lineno
                raise PredictionFileError(
                    f"prediction file {path} line {real_line} ends with db_id '{tail.strip()}' but question "
                    f"{ex.id} is on '{ex.db_id}'; the lines are out of order for this split"
                )
            sql = head
        preds.append(sql.strip())
    return preds


def print_report(
    report: EvaluationReport, console: Console | None = None, *, title: str = "Execution accuracy"
) -> None:
    """Print per-database and overall EX (percent) as a Rich table, then the failure reasons."""
    console = console or Console()
    table = Table(title=title)
    table.add_column("database")
    table.add_column("questions", justify="right")
    table.add_column("matched", justify="right")
    table.add_column("EX %", justify="right")
    for db, s in report.per_db.items():
        table.add_row(db, str(s.n), str(s.matched), f"{100 * s.ex:.2f}")
    table.add_section()
    table.add_row("[bold]all[/bold]", str(report.n), str(report.matched), f"[bold]{100 * report.ex:.2f}[/bold]")
    console.print(table)
    failures = {k: v for k, v in report.reasons.items() if k != "match"}
    if failures:
        console.print("failures: " + ", ".join(f"{k} {v}" for k, v in failures.items()))
    for db_id, problem in report.unusable_dbs.items():
        n = report.per_db[db_id].n if db_id in report.per_db else 0
        console.print(f"[yellow]warning:[/] {escape(problem)}; its {n} question(s) scored 0 (reason db_error)",
                      soft_wrap=True)
    console.print(
        f"EX = {100 * report.ex:.2f}% ({report.matched}/{report.n}) in {report.elapsed_s:.1f} s "
        f"(workers={report.workers}, keep_distinct={report.keep_distinct}, timeout={report.timeout_s:g} s)"
    )


def _check_timeout(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(
            f"{value!r} is not a number of seconds above 0; pass e.g. --timeout {DEFAULT_TIMEOUT_S:g}"
        )
    return value


def eval_predictions(
    pred: Path = typer.Option(..., "--pred", help="Prediction file: one SQL per line in the split file's order."),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="Spider-format data directory.",
        show_default="bundled data/spider, or $SQLSOCIETY_DATA_DIR",
    ),
    split: str = typer.Option("dev", "--split", help="Split name (dev, train, ...)."),
    keep_distinct: bool = typer.Option(
        False, "--keep-distinct", help="Keep DISTINCT in both queries (official default removes it)."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Per-question JSONL (replaced atomically; never the --pred file).",
        show_default="<pred>.eval.jsonl",
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Worker processes (a pool pays ~1.5 s start-up; worth it for slow predictions)."
    ),
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT_S, "--timeout", callback=_check_timeout, help="Seconds per query (a finite number above 0)."
    ),
    summary_json: Path = typer.Option(None, "--summary-json", help="Also write overall/per-db figures as JSON here."),
) -> None:
    """Execution accuracy (Spider test-suite rule) of a prediction file; prints EX per database and
    writes one JSON line per question (id, db_id, question, pred, gold, match, reason).

    Raises:
        typer.BadParameter: unusable data directory, split, prediction file or output path, or no
            usable database (exit code 2; nothing is written).
    """
    d = data_dir if data_dir is not None else default_data_dir()
    try:
        examples = load_examples(d, split)
        n_split = len(json.loads(split_file(d, split).read_text(encoding="utf-8")))
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="'--data-dir' / '--split'") from e
    if not examples:
        raise typer.BadParameter(f"split '{split}' in {d} has no executable question", param_hint="'--split'")
    try:
        preds = read_predictions(pred, examples, n_split)
    except PredictionFileError as e:
        raise typer.BadParameter(str(e), param_hint="'--pred'") from e
    out_path = out if out is not None else pred.with_name(pred.name + ".eval.jsonl")
    inputs = [pred, split_file(d, split)]
    try:
        check_output_path(out_path, what="--out", inputs=inputs)
    except OutputPathError as e:
        raise typer.BadParameter(str(e), param_hint="'--out'") from e
    if summary_json is not None:
        if same_file(summary_json, out_path):
            raise typer.BadParameter(f"--summary-json {summary_json} is the --out file too; pass two different paths",
                                     param_hint="'--summary-json'")
        try:
            check_output_path(summary_json, what="--summary-json", inputs=inputs)
        except OutputPathError as e:
            raise typer.BadParameter(str(e), param_hint="'--summary-json'") from e
    problems = database_problems(examples)
    if len(problems) == len({str(ex.db_path) for ex in examples}):
        listed = "; ".join(f"{db} {why}" for db, why in list(problems.items())[:5])
        raise typer.BadParameter(f"no usable database for split '{split}' in {d}: {listed}", param_hint="'--data-dir'")
    report = evaluate_predictions(examples, preds, keep_distinct=keep_distinct, workers=workers, timeout_s=timeout,
                                  db_problems=problems)
    try:
        report.write_jsonl(out_path)
        if summary_json is not None:
            atomic_write_text(summary_json, json.dumps(report.summary(), indent=2))
    except OSError as e:
        raise typer.BadParameter(f"cannot write {e.filename or out_path} ({e.strerror or e}); pass another path",
                                 param_hint="'--out' / '--summary-json'") from e
    print_report(report, title=f"Execution accuracy — {split} ({report.n} questions)")
    Console().print(f"per-question results: {out_path}")


def register(app: typer.Typer) -> None:
    """Add ``eval-predictions`` to the root ``sqlsociety`` app."""
    app.command("eval-predictions")(eval_predictions)
