"""The training report: one self-contained HTML page plus a Markdown summary for a run directory.

Reads the run directory written by ``sqlsociety train`` (:mod:`evaluation.run_data`: layout and
:func:`~evaluation.run_data.load_run`), computes its tables and figures
(:mod:`evaluation.report_content`: :func:`~evaluation.report_content.compute_report`, metric definitions)
and writes ``RUN_DIR/report.html`` (matplotlib PNGs embedded as base64 ``data:`` URIs, inline
CSS, no scripts, no external assets) and ``RUN_DIR/report.md``. The HTML page is the Jinja2 template
``evaluation/templates/report.html.j2`` (autoescaped) filled with values computed here; the Markdown
tables are made by ``tabulate``.
"""

from __future__ import annotations

import base64
import functools
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from tabulate import tabulate

from evaluation.report_content import ReportContent, compute_report
from evaluation.run_data import load_run
from evaluation.stats import describe_effects, effect_cells, effect_headers, effects_table_markdown
from society.response_cache import cached_calls
from tools.files import atomic_write_text  # a failure leaves no half-written report

# --------------------------------------------------------------------------- rendering


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:.1f}%"


def _num(v: float | int | None, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return f"{int(round(v)):,}"
    return f"{v:,.{digits}f}"


def _signed_pct(v: float | None) -> str:
    return "–" if v is None else f"{100.0 * v:+.1f} pt"


def _preview(value: Any, limit: int = 300) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_STAGE_HEADERS = ["stage", "n", "EX", "exec. success", "mean reward", "turns", "LLM calls", "tokens", "s / question"]


def _stage_rows(c: ReportContent) -> list[list[str]]:
    return [
        [
            s,
            str(v["n"]),
            _pct(v["ex"]),
            _pct(v["exec_success"]),
            _num(v["mean_reward"], 3),
            _num(v["turns"]),
            _num(v["llm_calls"]),
            _num(v["tokens"], 0),
            _seconds(v["seconds"], int(v.get("cached_calls") or 0)),
        ]
        for s, v in c.stages.items()
    ]


CACHED_MARK = "‡"


def _seconds(value: float | None, cached_calls: int) -> str:
    """A seconds cell, marked :data:`CACHED_MARK` when some of its calls came from the response cache.

    >>> _seconds(2.345, 0), _seconds(0.4, 3)
    ('2.35', '0.40 ‡')
    """
    return _num(value) + (f" {CACHED_MARK}" if cached_calls else "")


def cache_note(c: ReportContent) -> str:
    """The sentence under the tables for the stages (society and role-level) whose seconds count calls
    answered from the run's response cache (``eval.response_cache``), with how many; empty when none.

    >>> from types import SimpleNamespace as NS
    >>> cache_note(NS(run=NS(evals={"sft": [{"llm_calls": 4, "cached_calls": 0}]}, role_evals={})))
    ''
    >>> print(cache_note(NS(run=NS(evals={"sft": [{"llm_calls": 4, "cached_calls": 3}] * 2},
    ...                            role_evals={"single_trained": [{"llm_calls": 1, "cached_calls": 1}]}))))
    ... # doctest: +ELLIPSIS
    ‡ Seconds that count LLM calls answered from the run's response cache: sft 6 of 8 calls, single_trained 1 of 1. ...
    """
    parts = []
    for name, recs in {**c.run.evals, **c.run.role_evals}.items():
        cached = cached_calls(recs)
        if cached:
            calls = sum(int(r.get("llm_calls") or 0) for r in recs)
            parts.append(f"{name} {cached} of {calls}" + (" calls" if not parts else ""))
    if not parts:
        return ""
    return (f"{CACHED_MARK} Seconds that count LLM calls answered from the run's response cache: {', '.join(parts)}. "
            "Such a call repeated a request this run had sent before (the same model and adapter files by sha256, "
            "prompt and greedy or seeded sampling) and got that call's reply and token counts: the stage's EX takes "
            "that earlier draw, not an independent one, and its seconds, almost none for such a call, understate "
            "what the stage costs live. Its tokens and LLM calls count as live.")


_PHASE_HEADERS = ["phase", "rollouts", "mean reward", "first fifth", "last fifth", "EX", "tokens", "latency s"]


def _phase_rows(c: ReportContent) -> list[list[str]]:
    return [
        [
            p["phase"],
            str(p["n"]),
            _num(p["mean_reward"], 3),
            _num(p["first_fifth"], 3),
            _num(p["last_fifth"], 3),
            _pct(p["ex"]),
            _num(p["tokens"], 0),
            _num(p["latency_s"]),
        ]
        for p in c.phases
    ]


_BANDIT_HEADERS = ["policy", "n", "EX", "mean reward", "note"]


def _bandit_rows(c: ReportContent) -> list[list[str]]:
    """Rows in the order ``compare_policies`` gives them (bandit, baselines, logged policies, oracle)."""
    return [
        [
            str(r.get("policy", "?")),
            str(r.get("n", "–")),
            _pct(r.get("ex")),
            _num(r.get("mean_reward"), 3),
            str(r.get("note") or ""),
        ]
        for r in c.run.bandit
    ]


def _role_headers(c: ReportContent) -> list[str]:
    return ["role", "trained in", "chosen", "survived to final"] + [f"own EX {s}" for s in c.stages] + [
        "Δ after its phase"
    ]


def _role_rows(c: ReportContent) -> list[list[str]]:
    out = []
    for r in c.roles:
        chosen = _pct(r["chosen"]) if r["chosen"] is not None else (
            f"best pick {_pct(r['best_pick'])}" if r["best_pick"] is not None else "–"
        )
        survived = _signed_pct(r["survived"]) if r["role"] == "senior" else _pct(r["survived"])
        out.append(
            [r["role"], r["trained_in"] or "–", chosen, survived]
            + [_pct(r["own_ex"].get(s)) for s in c.stages]
            + [_signed_pct(r["delta"])]
        )
    return out


_ROLE_NOTE = (
    "chosen: share of questions where the supervisor picked this junior's candidate "
    "(for the supervisor: among questions with at least one correct candidate, the share where it "
    "picked a correct one). survived to final: share where the role's SQL is the final answer unchanged "
    "(for the senior: net EX its refinement added, fixed − broken). own EX: the junior's own candidate, "
    "the candidate the supervisor picked, the senior's refined SQL. Δ after its phase: own EX on the stage "
    "that trains the role minus the stage before it. Columns 'chosen' and 'survived' are for the last stage."
)


_ADAPTER_HEADERS = ["persona", "model alias", "rows", "steps", "loss first → last"]


def _adapter_rows(c: ReportContent) -> list[list[str]]:
    """Phase 2's junior adapters (:func:`evaluation.report_content.junior_adapter_rows`)."""
    return [
        [
            str(r["persona"]),
            str(r["alias"] or "–"),
            str(r["rows"] if r["rows"] is not None else "–"),
            str(r["steps"] if r["steps"] is not None else "–"),
            f"{_num(r['first_loss'], 3)} → {_num(r['last_loss'], 3)}" if r["trained"] else "not trained: base model",
        ]
        for r in c.junior_adapters
    ]


_ADAPTER_NOTE = (
    "One LoRA adapter per junior persona (junior_adapters: per_persona), each trained on that persona's own "
    "conversations whose SQL matched gold, or one shared by every junior (shared); one llama-server serves them "
    "all and each junior's requests name its own adapter (model alias), so the juniors-only and society stages "
    "after phase 2 run each persona on its own adapter.")


def reuse_lines(c: ReportContent) -> list[str]:
    """One sentence per stage taken from an earlier run (:func:`evaluation.report_content.reused_stages`):
    the stage, its questions, the source run and what the stage cost there.

    >>> from types import SimpleNamespace as NS
    >>> reuse_lines(NS(reused=[{"stage": "baseline", "n": 100, "source_run": "runs/a", "source_seconds": 3600.0},
    ...                        {"stage": "gather", "n": 60, "unit": "rollouts", "source_run": "runs/a"},
    ...                        {"stage": "baseline", "n": 100, "of": 300, "source_run": "runs/b"},
    ...                        {"stage": "baseline", "n": 100, "of": 100, "source_n": 300, "source_run": "runs/c"},
    ...                        {"stage": "phase 3 repair selection", "n": 100, "unit": "wrong queries",
    ...                         "source_run": "runs/a"},
    ...                        {"stage": "phase 4 LLM supervisor replay", "n": 300, "unit": "decisions",
    ...                         "source_run": "runs/a"},
    ...                        {"stage": "single_baseline", "n": 300, "source_run": "runs/d", "source_seconds": 6.0,
    ...                         "source_cached_calls": 300}]))
    ... # doctest: +NORMALIZE_WHITESPACE
    ['baseline (100 questions): reused from runs/a, where it took 60.0 min; not evaluated in this run',
     'gather (60 rollouts): reused from runs/a; not gathered again',
     'baseline (100 of 300 questions): reused from runs/b; the other 200 evaluated in this run',
     'baseline (100 questions, among the 300 of its stage there): reused from runs/c; not evaluated in this run',
     'phase 3 repair selection (100 wrong queries): reused from runs/a; not drawn again',
     'phase 4 LLM supervisor replay (300 decisions): reused from runs/a; not asked again',
     "single_baseline (300 questions): reused from runs/d, where it took 0.1 min (300 of its calls answered from
      that run's response cache); not evaluated in this run"]
    """
    out = []
    for r in c.reused:
        cost = f", where it took {r['source_seconds'] / 60:.1f} min" if r.get("source_seconds") is not None else ""
        if cost and r.get("source_cached_calls"):
            cost += f" ({r['source_cached_calls']} of its calls answered from that run's response cache)"
        what = {"rollouts": "not gathered again", "wrong queries": "not drawn again",
                "decisions": "not asked again"}.get(
            r.get("unit"), "not evaluated in this run")
        n, of = r.get("n"), r.get("of")
        count = f"{n if n is not None else '?'} {r.get('unit', 'questions')}"
        if isinstance(n, int) and isinstance(of, int) and of > n:
            count, what = f"{n} of {of} {r.get('unit', 'questions')}", f"the other {of - n} evaluated in this run"
        if isinstance(n, int) and isinstance(r.get("source_n"), int) and r["source_n"] > n:
            count += f", among the {r['source_n']} of its stage there"
        out.append(f"{r['stage']} ({count}): reused from {r['source_run']}{cost}; {what}")
    return out


_REUSE_NOTE = (
    "Phase 1's rollouts and the stages of the untrained model are reused from an earlier run only when the "
    "sha256 hashes of the model file, the resolved society config, every prompt text and schema text, the roles' "
    "sampling settings and the questions (ids, databases, gold SQL, given SQL) all equal this run's; a stage taken "
    "from a larger one (\"among the N of its stage there\") matched on all of that stage's questions with this run's "
    "settings, and only this stage's questions were taken. Phase 1 also hashes its gather and reward settings "
    "(training.reuse; the hashes are in eval/<stage>.reused.json and phases/1-gather/reused.json). Phase 3's repair "
    "selection and base-senior prefilter (untrained senior only) are taken from the run whose store was copied, when "
    "its grpo settings, reward and senior prompts hash alike (phases/3-grpo/reused.json); phase 4's replay of the "
    "LLM supervisor (the base model) when the model file, the supervisor's prompt and the decisions with their "
    "schema texts hash alike (phases/4-bandit/reused.json). Not hashed: the "
    "answer-parsing and scoring code, the llama-server build and its batching (a question taken from a larger stage "
    "ran among other neighbours).")


_CONTROL_HEADERS = ["comparison", "n", "control", "EX", "tokens / q", "s / q", "LLM calls / q", "compared", "EX",
                    "tokens / q", "s / q", "LLM calls / q", "Δ EX pts", "Holm p", "verdict"]


def _control_rows(c: ReportContent) -> list[list[str]]:
    """The one-shot control beside the society's figures (:func:`evaluation.control_effects.control_rows`):
    per row the comparison, the paired questions, each agent's EX and cost per question on them, Δ, the
    Holm-adjusted p and the verdict of :meth:`evaluation.stats.Effect.called`."""
    out = []
    for r in c.controls:
        e = r.effect
        cost = [[a.label, _pct(ex), _num(a.tokens, 0), _seconds(a.seconds, a.cached_calls), _num(a.llm_calls)]
                for a, ex in ((r.control, e.before), (r.compared, e.after))]
        out.append([f"{e.phase} · {e.role}: {e.metric}", str(e.n), *cost[0], *cost[1], _signed_pct(e.delta),
                    "–" if e.p_holm is None else f"{e.p_holm:.3f}", "called" if e.called() else "not called"])
    return out


_CONTROL_NOTE = (
    "The control is the one-shot agent a user would pick instead of the society (society.baselines 'single': the "
    "writer junior, baselines.writer, drafts once; one LLM call), evaluated untrained (single_baseline) and with the "
    "writer's phase-2 adapter (single_trained) on the juniors-only stages' questions. Each row pairs two agents by "
    "question on the questions both ran (n; the society runs eval.limit questions, so its rows pair on the "
    "intersection); Δ = compared − control; the costs are per-question means on those same questions: tokens "
    "(prompt + completion, all LLM calls), wall seconds (machine load moves them) and LLM calls. The rows' "
    "statistics are in the effects table above, Holm-adjusted with its other rows.")


def _failure(rec: Mapping) -> str:
    """What to show when a record has no result: why the question failed, if recorded."""
    if rec.get("error"):
        return f"(no result: {rec['error']})"
    return "(no result)" if not rec.get("pred_sql") else ""


def _example_view(e: Mapping, trained_stage: str) -> dict[str, Any]:
    """One :func:`differing_examples` row as the template shows it: ``{"kind", "id", "db_id", "question",
    "gold_sql", "sides"}`` with ``sides`` = baseline then ``trained_stage``, each ``{"label", "correct" (bool),
    "sql", "result"}`` (plain strings; the template escapes them)."""

    def side(label: str, rec: Mapping) -> dict[str, Any]:
        return {
            "label": label,
            "correct": bool(rec.get("match")),
            "sql": rec.get("pred_sql") or "(no SQL)",
            "result": _preview(rec.get("result_preview")) or _failure(rec),
        }

    return {
        "kind": e["kind"],
        "id": e["id"],
        "db_id": e["db_id"],
        "question": e["question"],
        "gold_sql": e["gold_sql"] or "",
        "sides": [side("baseline", e["baseline"]), side(trained_stage, e["trained"])],
    }


#: The HTML report's Jinja2 template, in ``evaluation/templates/`` (shipped as package data).
REPORT_TEMPLATE = "report.html.j2"


@functools.cache
def _html_template() -> jinja2.Template:
    """The report template, loaded once; autoescaped (every value is HTML-escaped unless marked safe) and strict
    (an undefined name raises :class:`jinja2.UndefinedError` instead of rendering as "").

    Raises:
        ValueError: when the package has no ``evaluation/templates/`` directory (installed without its package data).
        jinja2.TemplateNotFound: when that directory lacks ``report.html.j2``.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evaluation", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["png_tag"] = _png_tag
    return env.get_template(REPORT_TEMPLATE)


def render_html(c: ReportContent) -> str:
    """The report as one self-contained HTML document (str), rendered from :data:`REPORT_TEMPLATE`.

    Python computes every value (table rows as strings, notes, example texts); the template holds the
    structure. Values are HTML-escaped by Jinja2's autoescaping; the only markup passed through unescaped is the
    ``<img>`` tags :func:`_png_tag` builds (alt text escaped there, PNG as a base64 ``data:`` URI).

    Raises:
        ValueError, jinja2.TemplateNotFound: when the template is not installed with the package (see
            :func:`_html_template`).
    """
    run = c.run
    return _html_template().render(
        run_name=run.run_dir.name,
        run_dir=str(run.run_dir),
        n_rollouts=len(run.metrics),
        stages=list(c.stages),
        phases=[(name, done is not None) for name, done in run.phases.items()],
        pngs=c.pngs,
        phase_headers=_PHASE_HEADERS,
        phase_rows=_phase_rows(c),
        stage_headers=_STAGE_HEADERS,
        stage_rows=_stage_rows(c),
        cache_note=cache_note(c),
        reward_computed=any(r.get("reward_source") for recs in run.evals.values() for r in recs),
        effect_headers=effect_headers(c.effects),
        effect_rows=_effect_rows(c),
        effect_sentences=describe_effects(c.effects) if c.effects else [],
        effect_note=_EFFECT_NOTE,
        reuse_lines=reuse_lines(c),
        reuse_note=_REUSE_NOTE,
        control_headers=_CONTROL_HEADERS,
        control_rows=_control_rows(c),
        control_note=_CONTROL_NOTE,
        adapter_headers=_ADAPTER_HEADERS,
        adapter_rows=_adapter_rows(c),
        adapter_note=_ADAPTER_NOTE,
        bandit_headers=_BANDIT_HEADERS,
        bandit_rows=_bandit_rows(c),
        role_headers=_role_headers(c),
        role_rows=_role_rows(c),
        role_note=_ROLE_NOTE,
        trained_stage=c.trained_stage,
        kinds={k: sum(e["kind"] == k for e in c.examples) for k in ("fixed", "broken", "changed")},
        examples=[_example_view(e, c.trained_stage) for e in c.examples] if c.trained_stage else [],
        config_text=run.config_text,
    )


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    r"""A GitHub Markdown table of string cells through ``tabulate`` (``tablefmt="github"``).

    Cells are kept as given: ``disable_numparse`` ("1,234" or "0.0%" stay strings), ``stralign=None`` (no
    padding, so a row reads ``| baseline | 8 | 62.5% |``). A ``|`` in a header or cell is escaped as ``\|`` and a
    newline becomes a space, so each row stays one table row. ``rows`` may be empty (header and separator only).
    """

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    return tabulate(
        [[cell(x) for x in r] for r in rows],
        headers=[cell(h) for h in headers],
        tablefmt="github",
        disable_numparse=True,
        stralign=None,
    )


_EFFECT_NOTE = (
    "Paired on the same dev questions: Δ = after − before; CI: percentile bootstrap of the paired difference "
    "(Efron & Tibshirani 1993); McNemar p: exact McNemar test on the discordant pairs (McNemar 1947); "
    "Holm p: that p adjusted by Holm's step-down procedure (Holm 1979) over the effect rows of this table, "
    "so the chance that any row is called by luck is at most 5%. Noise rows (phase \"noise\") evaluate the "
    "untrained juniors twice on the same questions with every junior's sampling seed shifted: their Δ is what "
    "sampling alone moves (noise Δ beside the junior's SFT row); they are controls, not claims, and not in the "
    "Holm family. An effect is called when its Holm p < 0.05, its CI excludes 0 and, where it has a noise row, "
    "|Δ| > |noise Δ| and the noise row's own p >= 0.05. missing → 0: questions whose record held no outcome for "
    "the role (it raised or produced no SQL), counted as its failures before / after; unpaired questions (held "
    "by one stage only) are left out and counted.")


def _effect_rows(c: ReportContent) -> list[list[str]]:
    """The effects table's rows as strings (:func:`evaluation.stats.effect_cells`)."""
    return [effect_cells(e) for e in c.effects]


def render_markdown(c: ReportContent) -> str:
    """A Markdown summary: the same tables as the HTML, without images and with examples abridged."""
    out = [f"# SQL Society training report — `{c.run.run_dir.name}`", ""]
    if c.phases:
        out += ["## Learning curves (rollouts per phase)", "", _md_table(_PHASE_HEADERS, _phase_rows(c)), ""]
    if c.stages:
        out += ["## Metrics per stage (fixed dev subset)", "", _md_table(_STAGE_HEADERS, _stage_rows(c)), ""]
        out += [note, ""] if (note := cache_note(c)) else []
    if c.effects:
        out += ["## Each phase on the role it trains (paired, same questions)", "",
                effects_table_markdown(c.effects), "",
                *[f"- {t}" for t in describe_effects(c.effects)], "", _EFFECT_NOTE, ""]
    if c.controls:
        out += ["## What the society's extra calls buy (the one-shot control, same questions)", "",
                _md_table(_CONTROL_HEADERS, _control_rows(c)), "", _CONTROL_NOTE, "",
                *([cache_note(c), ""] if any(r.control.cached_calls or r.compared.cached_calls for r in c.controls)
                  else [])]
    if c.reused:
        out += ["## Reused from an earlier run", "", *[f"- {t}" for t in reuse_lines(c)], "", _REUSE_NOTE, ""]
    if c.junior_adapters:
        out += ["## Junior adapters (phase 2)", "", _md_table(_ADAPTER_HEADERS, _adapter_rows(c)), "", _ADAPTER_NOTE,
                ""]
    if c.run.bandit:
        out += ["## Supervisor policies (bandit comparison)", "", _md_table(_BANDIT_HEADERS, _bandit_rows(c)), ""]
    if c.roles:
        out += ["## Per-role breakdown", "", _md_table(_role_headers(c), _role_rows(c)), "", _ROLE_NOTE, ""]
    if c.examples and c.trained_stage:
        out += [f"## Where the answer differs from the baseline (baseline vs {c.trained_stage})", ""]
        for e in c.examples:
            out += [
                f"- **{e['id']}** ({e['db_id']}, {e['kind']}): {e['question']}",
                f"  - baseline ({'correct' if e['baseline'].get('match') else 'wrong'}): "
                f"`{_preview(e['baseline'].get('pred_sql'), 200)}`",
                f"  - {c.trained_stage} ({'correct' if e['trained'].get('match') else 'wrong'}): "
                f"`{_preview(e['trained'].get('pred_sql'), 200)}`",
                f"  - gold: `{_preview(e['gold_sql'], 200)}`",
            ]
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`build_report` wrote the report: ``html`` and ``markdown`` paths."""

    html: Path
    markdown: Path


def build_report(
    run_dir: str | Path, out_html: str | Path | None = None, out_md: str | Path | None = None
) -> ReportPaths:
    """Write the HTML report and the Markdown summary for ``run_dir``.

    Args:
        run_dir: a ``sqlsociety train`` run directory (may be partial: mid-run reports work).
        out_html: HTML path; default ``RUN_DIR/report.html``.
        out_md: Markdown path; default ``RUN_DIR/report.md``.

    Returns:
        The paths written.

    Raises:
        evaluation.run_data.ReportError: see :func:`evaluation.run_data.load_run`.
    """
    run = load_run(run_dir)
    content = compute_report(run)
    html_path = Path(out_html) if out_html else run.run_dir / "report.html"
    md_path = Path(out_md) if out_md else run.run_dir / "report.md"
    atomic_write_text(html_path, render_html(content))
    atomic_write_text(md_path, render_markdown(content))
    return ReportPaths(html=html_path, markdown=md_path)


def write_report(run_dir: str | Path) -> Path:
    """:func:`build_report` with the default paths; returns ``RUN_DIR/report.html`` (what
    ``training.pipeline`` calls at the end of ``sqlsociety train``)."""
    return build_report(run_dir).html
