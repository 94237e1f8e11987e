"""Local traces (evaluation.tracing.traces, trace_records, trace_tree, trace_render; ``sqlsociety traces ...``)
on a real recorded run.

``tests/fixtures/obs/run`` was produced by ``tests/fixtures/obs/make_fixtures.py``: the real society
(SmolLM2-135M on llama.cpp, ``configs/smoke.yaml``) as the training LitAgent through
``agl.Trainer`` into the persistent SQLite store, with ``training.hooks.MetricsHook`` writing
``metrics.jsonl``. Each test works on a copy. The ``model`` test at the end records a fresh rollout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rich.console import Console
from typer.testing import CliRunner

from evaluation.tracing.store import RolloutArchive
from evaluation.tracing.trace_records import TraceError, group_by_rollout, read_records
from evaluation.tracing.trace_render import render_tree
from evaluation.tracing.trace_tree import build_tree
from evaluation.tracing.traces import export_jsonl, list_rollouts, load_rollout_trace

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "obs" / "run"


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    if not (FIXTURE / "store.sqlite").is_file():
        pytest.fail(f"missing fixture {FIXTURE}; build it with tests/fixtures/obs/make_fixtures.py")
    dst = tmp_path / "run"
    dst.mkdir()
    for name in ("store.sqlite", "metrics.jsonl", "config.yaml"):
        shutil.copy(FIXTURE / name, dst / name)
    return dst


def _society_runs(run_dir: Path) -> dict[str, dict]:
    """rollout id -> the SocietyRun record the LitAgent stored (its own account of the run)."""
    out = {}
    with RolloutArchive(run_dir / "store.sqlite") as arc:
        for rec in arc.rollouts():
            for s in arc.spans(rec.rollout_id):
                if s.name == "agentlightning.object" and s.attributes.get("sqlsociety.kind") == "society_run":
                    out[rec.rollout_id] = json.loads(s.attributes["agentlightning.object.json"])
    return out


def _text(renderable, width: int = 200) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_tree_holds_every_visited_node_and_the_reward(run_dir: Path) -> None:
    runs = _society_runs(run_dir)
    with RolloutArchive(run_dir / "store.sqlite") as arc:
        rewards = {r.rollout_id: r.reward for r in arc.rollouts()}
    assert runs and set(runs) == set(rewards)
    for rid, run in runs.items():
        trace = load_rollout_trace(run_dir, rid)
        # the same node visits, as a multiset (parallel juniors interleave in time)
        assert Counter(trace.visits()) == Counter(run["path"]), rid
        assert trace.reward == pytest.approx(rewards[rid])
        assert trace.llm_calls() == run["llm_calls"]
        assert trace.tokens() == run["tokens"]
        text = _text(render_tree(trace))
        for visit in set(run["path"]):
            assert f"◆ {visit.rsplit('/', 1)[-1]}" in text
        assert f"final reward = {rewards[rid]:.3f}" in text
        # per-role credit: every junior and the senior, with their EX
        for c in run["candidates"]:
            assert re.search(rf"{c['junior']} .*ex=[01]", text), c["junior"]
        assert "senior before_ex=" in text


def test_tree_shows_llm_calls_and_tool_calls_with_their_content(run_dir: Path) -> None:
    rid = next(iter(_society_runs(run_dir)))
    trace = load_rollout_trace(run_dir, rid)
    llm = [n for n in trace.nodes() if n.kind == "llm"]
    tools = [n for n in trace.nodes() if n.kind == "tool"]
    assert llm and tools
    text = _text(render_tree(trace, full=True), width=400)
    assert "prompt (system):" in text and "response:" in text
    assert re.search(r"LLM call smollm2-135m \d+→\d+ tok", text)
    assert "tool sql_db_query" in text and "input: " in text
    # every query tool call shows a result or an error
    for t in tools:
        sub = _text(render_tree(type(trace)(trace.rollout_id, [t], None, {}, {})))
        assert "result:" in sub or "error:" in sub


def test_list_filters(run_dir: Path) -> None:
    rows = list_rollouts(run_dir)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(metrics)
    assert {r.rollout_id: r.phase for r in rows} == {m["rollout_id"]: m["phase"] for m in metrics}
    phases = {r.phase for r in rows}
    assert len(phases) == 2
    one = sorted(phases)[0]
    assert all(r.phase == one for r in list_rollouts(run_dir, phase=one))
    rewards = sorted(r.reward for r in rows)
    cut = rewards[len(rewards) // 2]
    assert {r.rollout_id for r in list_rollouts(run_dir, min_reward=cut)} == {
        r.rollout_id for r in rows if r.reward >= cut
    }
    assert list_rollouts(run_dir, failed=True) == [r for r in rows if r.status != "succeeded" or r.reward is None]


def test_export_has_opentelemetry_fields_and_round_trips(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    n = export_jsonl(run_dir, out)
    with RolloutArchive(run_dir / "store.sqlite") as arc:
        assert n == sum(len(arc.spans(r.rollout_id)) for r in arc.rollouts())
    records = read_records(out)
    ids = {r["span_id"] for r in records}
    for r in records:
        assert re.fullmatch(r"[0-9a-f]{32}", r["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", r["span_id"])
        assert r["parent_span_id"] is None or re.fullmatch(r"[0-9a-f]{16}", r["parent_span_id"])
        assert isinstance(r["start_time_unix_nano"], int) and r["end_time_unix_nano"] >= r["start_time_unix_nano"]
        assert r["status"]["code"] in ("STATUS_CODE_OK", "STATUS_CODE_ERROR", "STATUS_CODE_UNSET")
        assert r["resource"]["attributes"]["agentlightning.rollout_id"].startswith("ro-")
    # parents resolve (AgentOps' per-trace session root has no parent in the store)
    dangling = [r for r in records if r["parent_span_id"] and r["parent_span_id"] not in ids]
    assert len(dangling) <= len({r["trace_id"] for r in records}) * 2
    groups = group_by_rollout(records)
    for rid, recs in groups.items():
        assert build_tree(recs).visits() == load_rollout_trace(run_dir, rid).visits()


def test_errors_name_what_to_do(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(TraceError, match="store.sqlite"):
        list_rollouts(tmp_path / "nowhere")
    with pytest.raises(TraceError, match="ids there include: ro-"):
        load_rollout_trace(run_dir, "ro-doesnotexist")


def test_cli_list_show_export(run_dir: Path, tmp_path: Path) -> None:
    from society.cli.root import app

    runner = CliRunner()
    res = runner.invoke(app, ["traces", "list", str(run_dir)], terminal_width=200)
    assert res.exit_code == 0, res.output
    rid = list_rollouts(run_dir)[0].rollout_id
    assert rid[:8] in res.output
    res = runner.invoke(app, ["traces", "show", str(run_dir), rid[:9]], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "final reward" in res.output and "per-role credit" in res.output
    out = tmp_path / "x.jsonl"
    res = runner.invoke(app, ["traces", "export", str(run_dir), "-o", str(out), "--rollout", rid])
    assert res.exit_code == 0 and out.is_file()
    res = runner.invoke(app, ["traces", "show", str(out)], terminal_width=200)
    assert res.exit_code == 0 and "final reward" in res.output
    res = runner.invoke(app, ["traces", "show", str(run_dir), "ro-nope"])
    assert res.exit_code == 2 and "no rollout" in res.output


@pytest.mark.model
def test_fresh_rollout_renders(smol_server, tmp_path: Path) -> None:
    """Record one rollout now with the current society and LitAgent, and render it."""
    from society.config import SocietyConfig
    from training.gather import GatherRun, gather
    from training.gather_config import GatherConfig

    cfg_path = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"
    endpoints = {a: (smol_server.base_url, smol_server.model) for a in SocietyConfig.load(cfg_path).embedded_aliases()}
    gather(GatherConfig(n_runners=1, epsilon=0.0, rollout_timeout_s=None),
           GatherRun(run_dir=tmp_path, society_config=cfg_path, task_ids=["train-3"], endpoints=endpoints,
                     progress=False))
    runs = _society_runs(tmp_path)
    (rid, run), = runs.items()
    trace = load_rollout_trace(tmp_path, rid)
    assert Counter(trace.visits()) == Counter(run["path"])
    assert trace.reward is not None
    assert "final reward" in _text(render_tree(trace))


SOCIETY_RUN = Path(__file__).resolve().parent / "fixtures" / "obs" / "society_run"


def test_society_run_directory_renders_like_a_rollout() -> None:
    """``sqlsociety eval``/``ask`` run directories (no store: traces/<qid>.json) show as trees too."""
    files = sorted((SOCIETY_RUN / "traces").glob("*.json"))
    assert files, f"missing fixture {SOCIETY_RUN}; build it with tests/fixtures/obs/make_fixtures.py"
    rows = {r.rollout_id: r for r in list_rollouts(SOCIETY_RUN)}
    assert set(rows) == {f.stem for f in files}
    for f in files:
        run = json.loads(f.read_text())
        trace = load_rollout_trace(SOCIETY_RUN, f.stem)
        assert Counter(trace.visits()) == Counter(run["path"]), f.stem
        assert trace.llm_calls() == run["llm_calls"] and trace.tokens() == run["tokens"]
        assert rows[f.stem].ex == float(bool(run["match"]))
        text = _text(render_tree(trace))
        assert f"ex={int(bool(run['match']))}" in text
        for c in run["candidates"]:
            assert c["junior"] in text
        for call in run["trace"]["tool_calls"]:
            if call["tool"] == "sql_db_query":
                assert "tool sql_db_query" in text
    with pytest.raises(TraceError, match="no question"):
        load_rollout_trace(SOCIETY_RUN, "dev-99999")
