"""The training report (evaluation.run_data, evaluation.report_content, evaluation.report, evaluation.plots,
``sqlsociety report``) on a real run.

``tests/fixtures/obs/run`` holds what the real system wrote (see ``tests/fixtures/obs/make_fixtures.py``):
``metrics.jsonl`` from ``training.hooks.MetricsHook`` during real society rollouts on
``agl.Trainer``, and ``eval/<stage>.jsonl`` from ``society.evaluate.evaluate`` on Spider dev questions,
in the format ``training.pipeline`` writes. Nothing in it is typed by hand; the tests check the
report against independent recomputation (re-executing the SQL on the Spider databases).
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import matplotlib.image as mpimg
import numpy as np

from evaluation import plots
from evaluation.metrics.ex import execution_match
from evaluation.metrics.sql_text import normalize_sql
from evaluation.report import build_report
from evaluation.report_content import compute_report, differing_examples, phase_summary, role_breakdown, stage_summary
from evaluation.run_data import ReportError, load_run
from tools.spider import database_path, default_data_dir

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "obs" / "run"


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    if not (FIXTURE / "metrics.jsonl").is_file():
        pytest.fail(f"missing fixture {FIXTURE}; build it with tests/fixtures/obs/make_fixtures.py")
    dst = tmp_path / "run"
    dst.mkdir()
    for name in ("metrics.jsonl", "config.yaml"):
        shutil.copy(FIXTURE / name, dst / name)
    shutil.copytree(FIXTURE / "eval", dst / "eval")
    if (FIXTURE / "bandit_comparison.json").is_file():
        shutil.copy(FIXTURE / "bandit_comparison.json", dst / "bandit_comparison.json")
    return dst


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Tags:
    p = _Tags()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _pngs(doc: _Tags) -> list[bytes]:
    out = []
    for tag, attrs in doc.tags:
        if tag == "img":
            m = re.fullmatch(r"data:image/png;base64,(.+)", attrs["src"], re.S)
            assert m, f"image not embedded: {attrs['src'][:60]}"
            out.append(base64.b64decode(m.group(1)))
    return out


def test_report_is_self_contained_with_every_section(run_dir: Path) -> None:
    paths = build_report(run_dir)
    assert paths.html == run_dir / "report.html" and paths.markdown.is_file()
    doc = _parse(paths.html)
    assert not [t for t, _ in doc.tags if t in ("script", "link", "iframe")]
    for tag, attrs in doc.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith("data:"), f"external asset <{tag} {key}={attrs[key][:60]}>"
    text = " ".join(doc.text)
    for title in ("Learning curves", "EX per stage", "All metrics", "bandit comparison", "Per-role breakdown",
                  "answers differently from the baseline"):
        assert title in text, title
    assert len(_pngs(doc)) >= 3  # learning curves, EX per stage, per-role EX


def test_embedded_pngs_are_not_empty_plots(run_dir: Path) -> None:
    """Axes, ticks, text and grid are drawn in black/grey; only data (points, lines, bars) is in
    colour. An axes without data has no coloured pixel at all (checked on an empty figure here),
    so every embedded plot must have some."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=100)
    ax.set_title("title")
    ax.set_ylabel("label")
    ax.grid(alpha=0.3)
    empty = mpimg.imread(io.BytesIO(plots.figure_to_png(fig)))[..., :3]

    def coloured(img: np.ndarray) -> float:
        return float((img.max(-1) - img.min(-1) > 0.15).mean())

    assert coloured(empty) == 0.0
    doc = _parse(build_report(run_dir).html)
    pngs = _pngs(doc)
    assert len(pngs) >= 3
    for png in pngs:
        img = mpimg.imread(io.BytesIO(png))[..., :3]
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert np.any(img < 0.9, axis=-1).mean() > 0.02  # axes and labels are drawn
        assert coloured(img) > 0.0005, f"no data drawn ({coloured(img):.5f} coloured)"


def test_figures_carry_the_data(run_dir: Path) -> None:
    run = load_run(run_dir)
    fig = plots.learning_curves(run.metrics)
    ax = fig.axes[0]
    phases = {r["phase"] for r in run.metrics}
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(run.metrics)  # every rollout plotted
    assert len(ax.lines) == len(phases)  # one rolling mean per phase
    plotted = sorted(float(y) for c in ax.collections for _, y in c.get_offsets())
    assert plotted == pytest.approx(sorted(float(r["reward"]) for r in run.metrics))
    ex = {s: stage_summary(r)["ex"] for s, r in run.evals.items()}
    fig = plots.ex_per_stage(ex)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([100 * v for v in ex.values()])


def test_metrics_table_agrees_with_re_executing_the_sql(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert len(run.evals) >= 2
    for stage, recs in run.evals.items():
        row = stage_summary(recs)
        assert row["n"] == len(recs) > 0
        ex = [execution_match(database_path(default_data_dir(), r["db_id"]), r["pred_sql"], r["gold_sql"]).match
              for r in recs]
        assert row["ex"] == pytest.approx(sum(ex) / len(ex)), stage
        assert row["exec_success"] == pytest.approx(sum(bool(r["executed_ok"]) for r in recs) / len(recs))
        assert row["mean_reward"] is not None and 0.0 <= row["mean_reward"] <= 1.0
        for k in ("turns", "llm_calls", "tokens", "seconds"):
            assert row[k] == pytest.approx(sum(float(r[k]) for r in recs) / len(recs))


def test_role_breakdown_matches_the_records(run_dir: Path) -> None:
    run = load_run(run_dir)
    rows = {r["role"]: r for r in role_breakdown(run.evals)}
    last = list(run.evals)[-1]
    recs = run.evals[last]
    juniors = [k for k, v in recs[0]["roles"].items() if "sql" in v]
    assert juniors and "supervisor" in rows and "senior" in rows
    for j in juniors:
        for stage, srecs in run.evals.items():
            own = [bool(r["roles"][j]["ex"]) for r in srecs if j in r["roles"]]
            assert rows[j]["own_ex"][stage] == pytest.approx(sum(own) / len(own))
        assert rows[j]["trained_in"] == "sft"
    # the supervisor picks exactly one junior per decided question
    chosen = sum(rows[j]["chosen"] for j in juniors)
    decided = sum(1 for r in recs if r["roles"].get("supervisor", {}).get("choice")) / len(recs)
    assert chosen == pytest.approx(decided)
    picked_ex = [
        bool(r["roles"][r["roles"]["supervisor"]["choice"]]["ex"])
        for r in recs
        if r["roles"].get("supervisor", {}).get("choice")
    ]
    assert rows["supervisor"]["own_ex"][last] == pytest.approx(sum(picked_ex) / len(picked_ex))
    after = [bool(r["roles"]["senior"]["after_ex"]) for r in recs if "senior" in r["roles"]]
    assert rows["senior"]["own_ex"][last] == pytest.approx(sum(after) / len(after))


def test_examples_are_real_differences(run_dir: Path) -> None:
    run = load_run(run_dir)
    stages = list(run.evals)
    ex = differing_examples(run.evals[stages[0]], run.evals[stages[-1]])
    base = {r["id"]: r for r in run.evals[stages[0]]}
    n_diff = sum(
        normalize_sql(base[r["id"]]["pred_sql"], lower=True) != normalize_sql(r["pred_sql"], lower=True)
        for r in run.evals[stages[-1]]
    )
    assert len(ex) == min(n_diff, 8)
    for e in ex:
        before, after = (normalize_sql(e[k]["pred_sql"], lower=True) for k in ("baseline", "trained"))
        assert before != after
        want = {(False, True): "fixed", (True, False): "broken"}.get(
            (bool(e["baseline"]["match"]), bool(e["trained"]["match"])), "changed")
        assert e["kind"] == want
        assert e["gold_sql"] and e["question"]


def test_phase_summary_and_markdown(run_dir: Path) -> None:
    run = load_run(run_dir)
    summary = {p["phase"]: p for p in phase_summary(run.metrics)}
    for phase, p in summary.items():
        rows = [r for r in run.metrics if r["phase"] == phase]
        assert p["n"] == len(rows)
        assert p["mean_reward"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows))
    md = build_report(run_dir).markdown.read_text()
    assert "| stage | n | EX |" in md and "| phase | rollouts |" in md and "## Per-role breakdown" in md
    for stage, recs in run.evals.items():
        assert re.search(rf"\| {re.escape(stage)} \| {len(recs)} \| \d+\.\d%", md)


def test_content_without_bandit_or_metrics_still_renders(run_dir: Path) -> None:
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "bandit_comparison.json").unlink(missing_ok=True)
    c = compute_report(load_run(run_dir))
    assert "learning_curves" not in c.pngs and "ex_per_stage" in c.pngs
    text = " ".join(_parse(build_report(run_dir).html).text)
    assert "no metrics.jsonl rows yet" in text and "phase 4 not run" in text


def test_bad_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "missing")
    with pytest.raises(ReportError, match="neither metrics.jsonl nor eval"):
        build_report(tmp_path)


def test_cli_report(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from society.cli.root import app

    res = CliRunner().invoke(
        app, ["report", str(run_dir), "--html", str(tmp_path / "r.html"), "--md", str(tmp_path / "r.md")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").stat().st_size > 10_000 and (tmp_path / "r.md").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the Debian chromium package")
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    page = build_report(run_dir).html
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2400", f"--screenshot={shot}", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1200)
    # the plots are drawn: a share of the page is neither white nor near-white
    assert np.any(img < 0.9, axis=-1).mean() > 0.05


PIPELINE_RUN = Path(__file__).resolve().parent / "fixtures" / "obs" / "pipeline_smoke"


def test_report_on_a_real_pipeline_run(tmp_path: Path) -> None:
    """A run directory written by `sqlsociety train --profile smoke` itself (phases 1-2): eval records in
    the pipeline's format, the SFT phase's done.json with its loss log."""
    if not (PIPELINE_RUN / "eval" / "baseline.jsonl").is_file():
        pytest.fail(f"missing fixture {PIPELINE_RUN}")
    run_dir = tmp_path / "run"
    shutil.copytree(PIPELINE_RUN, run_dir)
    run = load_run(run_dir)
    assert list(run.evals) == ["baseline", "sft"]
    c = compute_report(run)
    # the SFT loss log is plotted, point for point
    from evaluation.report_content import training_signals

    losses = json.loads((run_dir / "phases" / "2-sft" / "done.json").read_text())["losses"]
    sig = training_signals(run.phases)
    assert sig == {"2-sft: loss": [(float(s), float(v)) for s, v in losses]}
    fig = plots.training_signals(sig)
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx([v for _, v in losses])
    assert "training_signals" in c.pngs
    # EX per stage = the pipeline's own summaries
    for stage in run.evals:
        summary = json.loads((run_dir / "eval" / f"{stage}.summary.json").read_text())
        assert c.stages[stage]["ex"] == pytest.approx(summary["ex"])
        assert c.stages[stage]["n"] == summary["n"]
    # juniors are trained by SFT: their change is measured baseline -> sft
    for row in c.roles:
        if row["family"] == "junior":
            assert row["trained_in"] == "sft" and row["delta"] == pytest.approx(row["after"] - row["before"])
    html = build_report(run_dir).html.read_text()
    assert "Trainer signals per phase" in html and "2-sft" in html
