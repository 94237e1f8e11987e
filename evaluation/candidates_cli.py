"""``sqlsociety candidates RECORDS... [--control CONTROL] [--before BEFORE] [--markdown]``: how the juniors differ.

Reads the per-question records of a juniors-only evaluation (a training run's
``eval/roles/juniors_<stage>.jsonl``, or ``questions.jsonl`` of ``sqlsociety eval --agent
juniors``) and prints, with :mod:`evaluation.candidates`: each junior's and persona's EX with a
Wilson interval, pass@k per persona, the oracle (any candidate right) and the supervisor's pick,
how often the candidates return the same rows, how often each junior is picked, and the pick
against each junior on the same questions (paired bootstrap CI, exact McNemar p, Holm p). With
``--control`` (e.g. ``questions.jsonl`` of ``sqlsociety eval --agent single``), also the pick, the
oracle and each junior against the control on the questions both files hold; questions held by
one file only are counted and printed. With ``--before`` (another juniors-only evaluation of the
same questions, e.g. the untrained juniors when RECORDS are the trained ones), each junior, the pick
and the oracle against the same row of BEFORE (:func:`evaluation.candidates.against_before`): the
training effect per junior, paired, Holm over the rows.

Several RECORDS files, evaluations of the same questions, are pooled
(:func:`evaluation.candidates.pool_records`): their juniors as the candidates of one society, the
pick voted again by majority vote on the results -- what adding a junior (or another draw of a
persona) would give, without running the others again. Only questions in every file are pooled.

Compact records (``roles`` without ``candidates``, e.g. the committed
``bench/results/default-2026-12-05-partial/eval/roles/juniors_baseline.jsonl``)
give everything but the agreement of the candidates' results.

Read-only: writes nothing. Bad input (a missing file, not JSON lines, records without a junior in
``roles``, a control without ``match`` or without a question in common) ends with a message
naming the file and what to pass, and exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluation.candidates import (
    CandidatesInputError,
    CandidatesSummary,
    ControlComparison,
    Rate,
    read_summary,
)
from evaluation.stats import Effect, effect_cells, effect_headers, holm_effects

err_console = Console(stderr=True)

#: Columns of :func:`evaluation.stats.effect_cells` left out here: the table's title says the phase,
#: every row's metric is EX, and these rows have no noise control.
_DROP = ("phase", "metric", "noise Δ pts")


def _fail(msg: str) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(msg)}", soft_wrap=True)  # no hard wraps: paths stay copyable
    raise typer.Exit(code=2)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _rate_cells(r: Rate, picked: str = "") -> list[str]:
    return [r.label, r.persona, str(r.draws), f"{r.k}/{r.n}", _pct(r.rate), f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]",
            str(r.missing), picked]


_RATE_HEAD = ["row", "persona", "draws", "right/n", "EX %", "95% CI (Wilson) %", "missing → 0", "picked"]


def _rate_rows(s: CandidatesSummary) -> list[list[str]]:
    rows = [_rate_cells(r, str(s.picks.get(r.label, 0))) for r in s.juniors]
    none = s.picks.get("(none)")
    rows.append(_rate_cells(s.oracle))
    rows.append(_rate_cells(s.pick, f"{none} without a choice" if none else ""))
    return rows


def _persona_rows(s: CandidatesSummary) -> tuple[list[str], list[list[str]]]:
    kmax = max(len(v) for v in s.pass_at_k.values())
    head = ["persona", "draws", "right/draws", "EX % (pass@1)", "95% CI (Wilson) %"] + [
        f"pass@{k} %" for k in range(2, kmax + 1)]
    rows = []
    for r in s.personas:
        p = s.pass_at_k[r.label]
        rows.append([r.label, str(r.draws), f"{r.k}/{r.n}", _pct(r.rate), f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]"]
                    + [_pct(p[k - 1]) if k <= len(p) else "–" for k in range(2, kmax + 1)])
    return head, rows


def _effect_table(effects: Sequence[Effect]) -> tuple[list[str], list[list[str]]]:
    effects = holm_effects(effects) if any(e.p_holm is None for e in effects) else list(effects)
    head = effect_headers(effects)
    keep = [i for i, h in enumerate(head) if h not in _DROP]
    return [head[i] for i in keep], [[effect_cells(e)[i] for i in keep] for e in effects]


def _agreement_text(s: CandidatesSummary) -> str:
    failed = (f"; {s.without_juniors} records without any junior (failed runs) count as failures of every row"
              if s.without_juniors else "")
    failed += f"; {s.pooled}" if s.pooled else ""
    if s.agreement is None:
        return ("agreement of the candidates' results: not measured, the records hold no candidates list (compact "
                f"records; pass the evaluation's full records for it){failed}")
    dist = ", ".join(f"{k} → {v}" for k, v in s.agreement.items())
    return (f"distinct results among the executed candidates of a question (results → questions): {dist}; "
            f"every candidate executed and all returned the same rows on {s.all_agree} of {s.n} questions{failed}")


def _pairing_text(c: ControlComparison) -> str:
    return (f"{c.paired} questions in both files; left out: {c.only_records} only in the records, "
            f"{c.only_control} only in the control" + (f"; {c.control_missing} control questions without an outcome "
                                                        "counted as failures" if c.control_missing else ""))


def _before_text(c: ControlComparison) -> str:
    return (f"{c.paired} questions in both files; left out: {c.only_records} only in the records, "
            f"{c.only_control} only in the before file")


def _print_rich(records: str, control: Path | None, s: CandidatesSummary, c: ControlComparison | None,
                before: Path | None = None, b: ControlComparison | None = None) -> None:
    console = Console()  # made here: the terminal's width (or COLUMNS) when the command runs

    def table(title: str, head: list[str], rows: list[list[str]], section_before: int | None = None) -> None:
        t = Table(title=title, box=box.SIMPLE_HEAD)
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 or h == "persona" else "right", overflow="fold",
                         no_wrap=i == 0)
        for i, row in enumerate(rows):
            if section_before is not None and i == section_before:
                t.add_section()
            t.add_row(*(escape(x) for x in row))
        console.print(t)

    table(f"candidates · {records} ({s.n} questions)", _RATE_HEAD, _rate_rows(s), section_before=len(s.juniors))
    table("pass@k per persona (Chen et al. 2021, eq. 1)", *_persona_rows(s))
    if any(r.draws > 1 for r in s.personas):
        console.print("[yellow]note:[/] a persona with several draws pools them; its Wilson interval assumes "
                      "independent draws and is too narrow (the junior rows' intervals are exact)")
    console.print(escape(_agreement_text(s)), soft_wrap=True)
    table("the supervisor's pick (after) vs each junior's own candidate (before), same questions",
          *_effect_table(s.within))
    if c is not None:
        table(f"each row (after) vs the control (before) · {control}", *_effect_table(c.effects))
        console.print(escape(_pairing_text(c)) + "; the oracle row is an upper bound chosen with the gold answer",
                      soft_wrap=True)
    if b is not None:
        table(f"each row (after) vs the same row of {before} (before)", *_effect_table(b.effects))
        console.print(escape(_before_text(b)), soft_wrap=True)


def _print_markdown(records: str, control: Path | None, s: CandidatesSummary, c: ControlComparison | None,
                    before: Path | None = None, b: ControlComparison | None = None) -> None:
    from tabulate import tabulate

    def md(head: list[str], rows: list[list[str]]) -> str:
        return tabulate(rows, headers=head, tablefmt="github", disable_numparse=True)

    out = [f"### Candidates: `{records}` ({s.n} questions)", "", md(_RATE_HEAD, _rate_rows(s)), "",
           md(*_persona_rows(s)), "", _agreement_text(s) + ".", "",
           "The supervisor's pick (after) vs each junior's own candidate (before), same questions:", "",
           md(*_effect_table(s.within))]
    if c is not None:
        out += ["", f"Each row (after) against the control `{control}` (before) ({_pairing_text(c)}; the oracle is "
                "an upper bound chosen with the gold answer):", "", md(*_effect_table(c.effects))]
    if b is not None:
        out += ["", f"Each row (after) against the same row of `{before}` (before) ({_before_text(b)}):", "",
                md(*_effect_table(b.effects))]
    typer.echo("\n".join(out))


def candidates(
    records: list[Path] = typer.Argument(
        ..., help="Per-question records of a juniors-only evaluation (JSON lines); several evaluations of the "
        "same questions are pooled: their juniors side by side as one society's, the pick voted again."),
    control: Path | None = typer.Option(
        None, "--control", help="Per-question records of a control evaluation (question_id, match), e.g. the "
        "one-shot `single` agent's questions.jsonl."),
    before: Path | None = typer.Option(
        None, "--before", help="Per-question records of another juniors-only evaluation of the same questions "
        "(e.g. the untrained juniors): each junior, the pick and the oracle against the same row there."),
    markdown: bool = typer.Option(False, "--markdown", help="Print GitHub Markdown tables instead of Rich tables."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (the same seed gives the same CIs)."),
) -> None:
    """How much the juniors' candidates differ: EX per junior and persona, pass@k, oracle, the pick,
    agreement, and (with --control) all of them against a control on the same questions, (with --before)
    each against itself in another evaluation of them. Writes nothing."""
    try:
        summary, comparison, vs_before = read_summary(records, control, before=before, seed=seed)
    except CandidatesInputError as e:
        _fail(str(e))
    name = " + ".join(map(str, records))
    if len(records) > 1:
        name += " (pooled, the pick voted again)"
    (_print_markdown if markdown else _print_rich)(name, control, summary, comparison, before, vs_before)


def register(app: typer.Typer) -> None:
    """Add ``candidates`` to the root ``sqlsociety`` app."""
    app.command("candidates")(candidates)
