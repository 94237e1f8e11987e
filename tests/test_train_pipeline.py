"""End to end: `sqlsociety train` on the smoke profile (SmolLM2-135M, real llama.cpp servers, real
Spider databases, a real SQLite LightningStore), killed during phase 1 and resumed.

Checks the issue's acceptance lines: no rollout lost, no phase redone, and each phase leaves a
non-empty artifact (SFT rows + adapter, GRPO steps + adapter, bandit samples + policy), then an
EX per stage on the same dev questions and a report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_text import flat

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parent.parent


def _tiny_profile(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    cfg["gather"].update(limit=4, n_runners=1)
    cfg["eval"].update(limit=2, junior_limit=3, senior_limit=2)
    cfg["sft"].update(max_steps=2)
    cfg["grpo"].update(max_steps=1, num_generations=2, max_completion_length=32, prefilter_samples=2)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "society.cli", "train", *args]


def _succeeded(store: Path) -> dict[str, tuple[str | None, float | None]]:
    from evaluation.tracing.store import RolloutArchive

    if not store.is_file():
        return {}
    with RolloutArchive(store) as arc:
        return {r.rollout_id: (r.task_id, r.reward) for r in arc.rollouts(status="succeeded")}


def test_train_smoke_killed_in_phase1_resumes_and_runs_all_phases(tmp_path: Path) -> None:
    profile = _tiny_profile(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}
    log1 = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_cmd("--config", str(profile), "--run-dir", str(run)), cwd=REPO, env=env,
                            stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    store = run / "store.sqlite"
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None and not _succeeded(store):
            time.sleep(1.0)
        assert proc.poll() is None, (
            "the first run ended before any rollout finished: " + (tmp_path / "first.log").read_text()[-3000:]
        )
        assert _succeeded(store), "no rollout finished in phase 1 within the time limit"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: CLI, Agent Lightning runners, llama.cpp servers
        proc.wait(30)
    before = _succeeded(store)
    assert 1 <= len(before) <= 4
    assert not (run / "phases" / "1-gather" / "done.json").exists()

    res = subprocess.run(_cmd("--resume", str(run)), cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]

    after = _succeeded(store)
    for rid, (task, reward) in before.items():  # no rollout lost, none rewritten
        assert after.get(rid) == (task, reward)
    tasks = [t for t, _ in after.values()]
    society_tasks = [t for t in tasks if "/" not in t]
    assert sorted(tasks) == sorted(set(tasks)) and len(society_tasks) == 4  # every task once: none redone
    gather = json.loads((run / "phases" / "1-gather" / "done.json").read_text())
    assert gather["skipped"] == len({t for t, _ in before.values()})
    # rationalization (on in the smoke profile): the questions no junior solved, asked again with a hint
    rationalized = [t for t in tasks if "/" in t]
    assert all(t.endswith("/rationalized") and t.split("/")[0] in society_tasks for t in rationalized)
    assert len(rationalized) == gather["rationalized_tasks"] == gather["rationalize"]["succeeded"]

    sft = json.loads((run / "phases" / "2-sft" / "done.json").read_text())
    assert sft["rows"] > 0 and sft["steps"] > 0
    # per-junior credit: every SFT row is a junior whose own SQL matched gold, with no hint left
    card = json.loads((run / "phases" / "2-sft" / "sft_selection.json").read_text())
    assert card == sft["selection"] and card["rule"] == "own_correct" and card["kept"] == sft["rows"]
    rows = [json.loads(line) for line in (run / "phases" / "2-sft" / "sft_dataset.jsonl").read_text().splitlines()]
    assert len(rows) == sft["rows"] and all(r["own_ex"] == 1 for r in rows)
    assert not any("<hint>" in m["content"] or "A correct query for this question" in m["content"]
                   for r in rows for m in r["messages"])
    assert "rationalized:" in out  # the phase-2 echo counts rows per source and persona
    assert (Path(sft["adapter"]) / "adapter_model.safetensors").stat().st_size > 0
    assert Path(sft["adapter_gguf"]).stat().st_size > 0
    grpo = json.loads((run / "phases" / "3-grpo" / "done.json").read_text())
    assert grpo["prompts"] > 0 and grpo["steps"] > 0
    assert (Path(grpo["adapter"]) / "adapter_model.safetensors").stat().st_size > 0
    bandit = json.loads((run / "phases" / "4-bandit" / "done.json").read_text())
    assert bandit["samples"] > 0 and Path(bandit["policy"]).stat().st_size > 0
    rows = {row["policy"]: row for row in json.loads((run / "bandit_comparison.json").read_text())}
    assert {"bandit", "random", "majority_vote"} <= set(rows)
    # the LLM supervisor's replay is recorded with its key (a later run with the same model file,
    # prompt and decisions takes it), its row the comparison's, one choice per dev decision
    replay = json.loads((run / "phases" / "4-bandit" / "llm_replay.json").read_text())
    assert len(replay["key"]) == 64 and replay["row"]["n"] == len(replay["choices"]) == bandit["held_out_dev"]
    assert "llm" in rows and rows["llm"]["ex"] == replay["row"]["ex"] == (
        sum(c["reward"] >= 1.0 for c in replay["choices"]) / len(replay["choices"]))  # the row is its choices

    ids = None
    for stage in ("baseline", "sft", "grpo", "bandit"):  # EX per stage on the same dev questions
        recs = [json.loads(line) for line in (run / "eval" / f"{stage}.jsonl").read_text().splitlines()]
        assert len(recs) == 2
        stage_ids = [r["question_id"] for r in recs]
        assert ids is None or stage_ids == ids
        ids = stage_ids
    assert (run / "report.html").stat().st_size > 0

    # each phase judged on its own role: juniors-only before/after SFT on 3 questions, the senior
    # before/after GRPO on the baseline juniors' chosen candidates, the bandit by offline replay
    def role_stage(name: str) -> list[dict]:
        return [json.loads(line) for line in (run / "eval" / "roles" / f"{name}.jsonl").read_text().splitlines()]

    jb, js = role_stage("juniors_baseline"), role_stage("juniors_sft")
    assert len(jb) == 3 and [r["question_id"] for r in jb] == [r["question_id"] for r in js]
    assert all(r["agent"] == "juniors" and "senior" not in r["roles"] for r in jb)
    chosen = {r["question_id"]: r["pred_sql"] for r in jb if r["pred_sql"]}
    # The senior stage is exercised, not skipped: on these 3 dev questions (eval seed 0) SmolLM2's
    # juniors write SQL (any SQL block is a chosen candidate, run or not), so the senior-only
    # evaluation has inputs. If this fails, the juniors' records lost their SQL -- or the model
    # wrote none, and the sample must change -- but the senior checks below never go unchecked.
    assert chosen, ("no junior SQL on the juniors-only baseline, nothing for the senior stage: "
                    f"{[(r['question_id'], r['pred_sql']) for r in jb]}")
    sb, sg = role_stage("senior_baseline"), role_stage("senior_grpo")
    senior_ids = [r["question_id"] for r in jb if r["question_id"] in chosen][:2]  # eval.senior_limit
    assert [r["question_id"] for r in sb] == senior_ids == [r["question_id"] for r in sg]
    assert all(r["agent"] == "senior" and r["roles"]["senior"]["before_sql"] == chosen[r["question_id"]]
               for r in sb + sg)
    prefilter = json.loads((run / "phases" / "3-grpo" / "prefilter.json").read_text())
    assert prefilter["k"] == 2 and prefilter["n_in"] == grpo["prompts"]
    replay = [json.loads(line) for line in (run / "phases" / "4-bandit" / "replay.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in replay} <= {r["question_id"] for r in jb}
    md = (run / "report.md").read_text()
    assert "own candidate EX" in md and "end-to-end EX" in md

    # the one-shot control (eval.single, on by default): untrained and with the writer's trained
    # adapter, on the juniors-only stages' questions, one LLM call each; only the untrained one is
    # fingerprinted (reusable across runs)
    s_base, s_trained = role_stage("single_baseline"), role_stage("single_trained")
    ids = [r["question_id"] for r in jb]
    assert [r["question_id"] for r in s_base] == ids == [r["question_id"] for r in s_trained]
    assert all(r["agent"] == "single" and r["llm_calls"] == 1 for r in s_base + s_trained)
    fp = json.loads((run / "eval" / "roles" / "single_baseline.fingerprint.json").read_text())
    assert (fp["stage"], fp["agent"]) == ("single_baseline", "single")
    assert not (run / "eval" / "roles" / "single_trained.fingerprint.json").exists()
    # the response cache (eval.response_cache, on by default): the one-shot's writer sends the direct
    # junior's first request of the juniors-only stage with the same weights, so its one call is the
    # cached reply; the society after phase 4 runs the same trained juniors as the sft stage before it
    assert (run / "eval" / "responses.sqlite").is_file()
    assert all(r["cached_calls"] == 1 for r in s_trained), [r["cached_calls"] for r in s_trained]
    last = [json.loads(line) for line in (run / "eval" / "bandit.jsonl").read_text().splitlines()]
    assert all(r["per_role"][j].get("cached_calls", 0) >= 1 for r in last
               for j in ("junior_direct", "junior_step_by_step", "junior_decompose"))
    assert not any(r.get("cached_calls") for r in js)  # the first stage of the trained adapters asks live
    # before it, only the untrained society had asked: its questions are the juniors' cached ones
    society_ids = {r["question_id"] for r in last}
    assert {r["question_id"] for r in jb if r.get("cached_calls")} <= society_ids < {r["question_id"] for r in jb}
    assert "answered from the run's response cache" in md
    text = flat(out)  # the CLI's lines are wrapped to the console width
    assert "the one-shot agent writes with junior_direct on junior_policy, its phase-2 adapter" in text
    section = md.split("## What the society's extra calls buy (the one-shot control, same questions)")[1]
    for what in ("single (untrained)", "juniors' pick (untrained)", "single (trained)", "juniors' pick (trained)",
                 "society (untrained)", "society (bandit)"):
        assert what in section, section

    # a second resume redoes nothing
    stamps = {p: p.stat().st_mtime for p in (run / "phases").glob("*/done.json")}
    res2 = subprocess.run(_cmd("--resume", str(run)), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res2.returncode == 0, (res2.stdout + res2.stderr)[-3000:]
    assert (res2.stdout + res2.stderr).count("already done") == 4
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert _succeeded(store) == after


def test_the_one_shot_control_follows_eval_single(tmp_path: Path) -> None:
    """``eval.single: false``: no single stage at the baseline or after phase 2. On, with no juniors-only
    stage: the untrained one-shot agent on the society's questions (SmolLM2, a real llama-server), kept
    when asked again; a run whose phase 2 finished first gets none (said); a writer the society does
    not have stops the run before anything is evaluated."""
    from tools.files import read_jsonl
    from training.pipeline import TrainingPipeline
    from training.profile import TrainConfig, TrainConfigError
    from training.run_questions import dev_subset
    from training.stages import evaluate_roles, evaluate_single

    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    cfg["eval"].update(limit=2, junior_limit=0, senior_limit=0, noise_repeat=False, single=False)
    off = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "off", phases={1}, echo=lambda _: None)
    evaluate_roles(off.resolve(), "baseline")
    evaluate_roles(off.resolve(), "sft")
    assert not list((tmp_path / "off" / "eval").rglob("single_*"))

    cfg["eval"]["single"] = True
    msgs: list[str] = []
    on = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "on", phases={1}, echo=msgs.append)
    evaluate_roles(on.resolve(), "baseline", msgs.append)
    recs = read_jsonl(on.dir.role_eval_path("single_baseline"))
    assert [r["question_id"] for r in recs] == [e.id for e in dev_subset(on.cfg)]  # the society's 2 questions
    assert all(r["agent"] == "single" and r["llm_calls"] == 1 for r in recs)
    assert evaluate_single(on.resolve(), "baseline", msgs.append)["n"] == 2
    assert sum("EX (single_baseline)" in m for m in msgs) == 1

    late = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "late", phases={1}, echo=msgs.append)
    late.dir.mark_done(2, {})  # phase 2 finished before the control was evaluated: the writer is trained
    assert evaluate_single(late.resolve(), "baseline", msgs.append) is None
    assert any("no one-shot baseline" in m for m in msgs)

    society = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    society["baselines"]["writer"] = "junior_nobody"
    (tmp_path / "society.yaml").write_text(yaml.safe_dump(society))
    bad = TrainingPipeline(TrainConfig.model_validate({**cfg, "society_config": str(tmp_path / "society.yaml")}),
                           tmp_path / "bad", echo=lambda _: None)
    with pytest.raises(TrainConfigError, match="baselines.writer 'junior_nobody'.*eval.single: false"):
        bad.run()
    assert not list((tmp_path / "bad" / "eval").rglob("*.jsonl"))


def test_phase1_adds_juniors_only_rollouts_and_resamples_the_tasks_a_junior_got_wrong(tmp_path: Path) -> None:
    from evaluation.tracing.store import RolloutArchive
    from training.adapter import HierarchicalTraceAdapter
    from training.phase_gather import gather_phase
    from training.pipeline import TrainingPipeline
    from training.profile import TrainConfig

    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    cfg["gather"].update(limit=1, junior_limit=2, junior_resamples=1, junior_temperature=0.9, epsilon=0.0,
                         rationalize=False)
    cfg["eval"].update(limit=1, junior_limit=0, senior_limit=0)
    pipe = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "run", phases={1}, echo=lambda _: None)
    info = gather_phase(pipe.resolve(), lambda _: None)
    with RolloutArchive(tmp_path / "run" / "store.sqlite") as arc:
        traces = list(HierarchicalTraceAdapter().traces(arc))
    ids = sorted(str(t.task_id) for t in traces)
    first = [f"train-{i}/juniors" for i in (1, 2)]  # the two tasks after the society's one
    wrong = sorted(t.task_id[: -len("/juniors")] for t in traces if t.task_id in first
                   and any(t.outcomes.get(f"junior.{j}.ex") != 1 for j in t.outcomes["juniors"]))
    assert ids == sorted(["train-0", *first, *[f"{w}/juniors#1" for w in wrong]])
    assert info["resampled_tasks"] == len(wrong) and info["stored_succeeded"] == len(ids)
    by_id = {str(t.task_id): t for t in traces}
    for w in wrong:  # each draw again is of the juniors that were wrong on that task, and of them only
        o = by_id[f"{w}/juniors"].outcomes
        assert sorted(by_id[f"{w}/juniors#1"].outcomes["juniors"]) == sorted(
            j for j in o["juniors"] if o.get(f"junior.{j}.ex") != 1)
    assert info["resampled_juniors"] == sum(len(by_id[f"{w}/juniors#1"].outcomes["juniors"]) for w in wrong)


def test_an_evaluation_stage_stopped_part_way_keeps_its_finished_questions(tmp_path: Path, monkeypatch) -> None:
    """A role-level evaluation interrupted after 2 of 3 questions, then run again, runs only the third.

    The interrupt is a KeyboardInterrupt raised from the progress callback after the second record
    (Ctrl-C at a chosen moment cannot be caused for real in a test); everything else is real: the
    SmolLM2 server, the Spider databases, the juniors agent and the records it writes.
    """
    import training.stages as ts
    from evaluation.run_data import ReportError, load_run
    from tools.files import read_jsonl
    from training.pipeline import TrainingPipeline
    from training.profile import TrainConfig
    from training.run_questions import dev_subset

    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    msgs: list[str] = []
    pipe = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "run", phases={1}, echo=msgs.append)
    examples = dev_subset(pipe.cfg, 3)
    plan = pipe.resolve()
    stage = plan.stage("juniors_x", "juniors", examples)
    real_evaluate = ts.evaluate
    seen: list[str] = []

    def evaluate_then_ctrl_c(todo, *args, on_result, **kw):
        def on_result_stop(r):
            on_result(r)
            seen.append(r["question_id"])
            if len(seen) == 2:
                raise KeyboardInterrupt

        return real_evaluate(todo, *args, on_result=on_result_stop, **kw)

    monkeypatch.setattr(ts, "evaluate", evaluate_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ts.evaluate_stage(stage, plan, msgs.append)
    path = pipe.dir.role_eval_path("juniors_x")
    partial = path.with_suffix(".partial.jsonl")
    assert not path.exists() and not path.with_suffix(".summary.json").exists()
    kept = read_jsonl(partial)
    assert [r["question_id"] for r in kept] == seen
    with pytest.raises(ReportError, match="neither metrics.jsonl nor eval"):  # a stage stopped part-way is
        load_run(tmp_path / "run")  # not a result: the report finds nothing to show yet
    with partial.open("a") as f:
        f.write('{"question_id": "dev-')  # a writer killed mid-line
    run_again: list[str] = []
    monkeypatch.setattr(ts, "evaluate", lambda todo, *a, **k: run_again.extend(e.id for e in todo)
                        or real_evaluate(todo, *a, **k))
    out = ts.evaluate_stage(stage, plan, msgs.append)
    assert run_again == [e.id for e in examples if e.id not in seen]
    recs = read_jsonl(path)
    assert [r["question_id"] for r in recs] == [e.id for e in examples]
    by_id = {r["question_id"]: r for r in recs}
    for r in kept:  # the finished questions were kept as recorded, not run again
        assert {k: v for k, v in by_id[r["question_id"]].items() if k != "stage"} == \
            {k: v for k, v in r.items() if k not in ("stage", "stage_seconds")}
    assert out["n"] == 3 and out["resumed"] == 2
    assert out["ex"] == sum(bool(r["match"]) for r in recs) / 3
    assert not partial.exists()
    assert any("2 of 3 questions kept" in m for m in msgs)
