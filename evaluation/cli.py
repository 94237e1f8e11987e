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
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from evaluation.ex import DEFAULT_TIMEOUT_S, EvaluationReport, evaluate_predictions
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
        PredictionFileError: missing/unreadable file, wrong line count, or a ``<TAB>db_id`` suffix
            that disagrees with the question's database.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"prediction file {path} does not exist; pass --pred with one SQL query per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PredictionFileError(f"prediction file {path} is not UTF-8 text ({e}); re-save it as UTF-8") from e
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


def print_report(report: EvaluationReport, console: Console | None = None, *, title: str = "Execution accuracy") -> None:
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
    console.print(
        f"EX = {100 * report.ex:.2f}% ({report.matched}/{report.n}) in {report.elapsed_s:.1f} s "
        f"(workers={report.workers}, keep_distinct={report.keep_distinct}, timeout={report.timeout_s:g} s)"
    )


def eval_predictions(
    pred: Path = typer.Option(..., "--pred", help="Prediction file: one SQL per line in the split file's order."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Spider-format data directory [default: bundled data/spider or $SQLSOCIETY_DATA_DIR]."),
    split: str = typer.Option("dev", "--split", help="Split name (dev, train, ...)."),
    keep_distinct: bool = typer.Option(False, "--keep-distinct", help="Keep DISTINCT in both queries (official default removes it)."),
    out: Path = typer.Option(None, "--out", help="Per-question JSONL [default: <pred>.eval.jsonl]."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (a pool pays ~1.5 s start-up; worth it for slow predictions)."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", min=0.001, help="Seconds per query."),
    summary_json: Path = typer.Option(None, "--summary-json", help="Also write overall/per-db figures as JSON here."),
) -> None:
    """Execution accuracy (Spider test-suite rule) of a prediction file; prints EX per database and
    writes one JSON line per question (id, db_id, question, pred, gold, match, reason)."""
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
    report = evaluate_predictions(examples, preds, keep_distinct=keep_distinct, workers=workers, timeout_s=timeout)
    out_path = out if out is not None else pred.with_name(pred.name + ".eval.jsonl")
    report.write_jsonl(out_path)
    print_report(report, title=f"Execution accuracy — {split} ({report.n} questions)")
    Console().print(f"per-question results: {out_path}")
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(report.summary(), indent=2), encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Add ``eval-predictions`` to the root ``sqlsociety`` app."""
    app.command("eval-predictions")(eval_predictions)
