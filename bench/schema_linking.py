"""Recall of lexical schema linking (``tools.schema_linking.link_tables``) on a Spider split.

For every question of ``--split`` (default ``train``, all of it unless ``--limit``): the tables and
columns its gold SQL reads (``sql_tables_columns``, sqlglot), the tables ``link_tables`` keeps
(``neighbours`` 0 and 1), and the compact schema text the junior would see (``render_prompt``,
no sample rows) with every table and with the kept ones only. Printed per setting:

* table recall: gold tables kept / gold tables (micro average);
* column recall: gold columns (those the database has) whose table was kept (an unqualified
  column: some kept table has it);
* questions fully covered: every gold table kept;
* schema characters kept: pruned / full compact schema text (mean over questions).

The threshold for putting linking into the prompts is a table recall of 0.98 on train (issue 20);
below it linking stays out. Usage::

    python bench/schema_linking.py [--split train] [--limit N] [--out bench/results/schema-linking.json]
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import typer

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/society.py shadows the package
sys.path.insert(0, str(_HERE.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tools.schema import load_schema, render_prompt  # noqa: E402
from tools.schema_linking import link_tables, sql_tables_columns  # noqa: E402
from tools.spider import load_examples  # noqa: E402

THRESHOLD = 0.98


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    split: str = typer.Option("train", "--split"),
    limit: int | None = typer.Option(None, "--limit"),
    out_path: Path | None = typer.Option(None, "--out", help="write the figures as JSON here"),
) -> None:
    t0 = time.perf_counter()
    examples = load_examples(split=split, limit=limit)
    settings = (0, 1)
    acc = {n: {"gold_t": 0, "kept_t": 0, "gold_c": 0, "kept_c": 0, "covered": 0, "share": []} for n in settings}
    unparsed = 0
    full_chars = []
    for e in examples:
        try:
            gold_t, gold_c = sql_tables_columns(e.gold_sql)
        except Exception:  # noqa: BLE001 - sqlglot's ParseError/TokenError: counted and skipped
            unparsed += 1
            continue
        schema = load_schema(e.db_path, sample_rows=0)
        tables = {t.name: t.column_names for t in schema.tables}
        # sqlglot reads Spider's double-quoted strings ("T") as columns: keep the columns the database has
        has = {(t.name.lower(), c.lower()) for t in schema.tables for c in t.column_names}
        gold_c = {(t, c) for t, c in gold_c if ((t, c) in has if t else any(c == hc for _, hc in has))}
        full = len(render_prompt(schema, sample_rows=0, compact=True))
        full_chars.append(full)
        for n in settings:
            kept = link_tables(e.question, tables, schema.foreign_keys, neighbours=n)
            low = {t.lower() for t in kept}
            cols = {c.lower() for t in schema.tables if t.name in kept for c in t.column_names}
            r = acc[n]
            r["gold_t"] += len(gold_t)
            r["kept_t"] += len(gold_t & low)
            r["gold_c"] += len(gold_c)
            r["kept_c"] += sum(1 for t, c in gold_c if (t in low if t else c in cols))
            r["covered"] += gold_t <= low
            pruned = dataclasses.replace(schema, tables=tuple(t for t in schema.tables if t.name in kept))
            r["share"].append(len(render_prompt(pruned, sample_rows=0, compact=True)) / full)
    n_q = len(examples) - unparsed
    print(f"{split}: {len(examples)} questions, {unparsed} gold queries sqlglot could not parse (left out), "
          f"{n_q} measured; full compact schema {statistics.fmean(full_chars):.0f} characters on average; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| neighbours | table recall | column recall | questions fully covered | schema characters kept |")
    print("|---:|---:|---:|---:|---:|")
    out = {"split": split, "questions": len(examples), "unparsed": unparsed, "threshold": THRESHOLD, "settings": {}}
    for n in settings:
        r = acc[n]
        row = {"table_recall": r["kept_t"] / r["gold_t"], "column_recall": r["kept_c"] / r["gold_c"],
               "covered": r["covered"] / n_q, "chars_kept": statistics.fmean(r["share"])}
        out["settings"][n] = row
        print(f"| {n} | {row['table_recall']:.4f} | {row['column_recall']:.4f} | {row['covered']:.4f} | "
              f"{row['chars_kept']:.1%} |")
    best = max(out["settings"].values(), key=lambda x: x["table_recall"])
    verdict = "meets" if best["table_recall"] >= THRESHOLD else "is below"
    print(f"\nbest table recall {best['table_recall']:.4f} {verdict} the {THRESHOLD} needed to shorten the prompts")
    if out_path:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=1))
        print(f"wrote {out_path}")


if __name__ == "__main__":
    app()
