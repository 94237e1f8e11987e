"""Phase 1 (training/gather.py) and the society LitAgent (training/agent.py).

The model tests run the real society on real Spider train tasks against the SmolLM2 llama.cpp
server, through agl.Trainer with two runner processes, into the real SQLite store; the resume
test SIGKILLs the whole gather process group mid-phase and resumes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

agl = pytest.importorskip("agentlightning")

from holding_proxy import HoldingProxy, message_text  # noqa: E402

from evaluation.metrics.rewards import compute_reward  # noqa: E402
from evaluation.tracing.store import RolloutArchive  # noqa: E402
from society.candidate import Candidate  # noqa: E402
from society.config import SMOKE_CONFIG, SocietyConfig  # noqa: E402
from society.policies import PolicyContext  # noqa: E402
from training.agent import ATTR, EpsilonGreedyPolicy, with_exploration  # noqa: E402
from training.gather import GatherRun, gather, select_tasks  # noqa: E402
from training.gather_config import GatherConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: Three train tasks (one small database).
TASKS = ["train-0", "train-1", "train-2"]


def _quick_config(tmp_path: Path) -> Path:
    """The smoke society with one junior round and one review turn (fewer SmolLM2 calls per rollout)."""
    cfg = SocietyConfig.load(SMOKE_CONFIG)
    limits = cfg.limits.model_copy(update={"max_review_rounds": 1, "max_junior_rounds": 1})
    cfg = cfg.model_copy(update={"limits": limits})
    path = tmp_path / "quick.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _cands() -> list[Candidate]:
    return [
        Candidate(junior="junior_a", persona="a", sql="SELECT 1", ok=True, result_digest="x", row_count=1),
        Candidate(junior="junior_b", persona="b", sql="SELECT 2", ok=True, result_digest="y", row_count=1),
        Candidate(junior="junior_c", persona="c", sql="SELECT 1 ", ok=True, result_digest="x", row_count=1),
        Candidate(junior="junior_d", persona="d", sql=None, ok=False),
    ]


def test_epsilon_greedy_propensities() -> None:
    greedy = EpsilonGreedyPolicy(base="majority_vote", epsilon=0.0).choose("q", _cands(), PolicyContext())
    assert greedy.index == 0 and greedy.info["propensity"] == 1.0 and not greedy.info["explored"]

    always = EpsilonGreedyPolicy(base="majority_vote", epsilon=1.0, seed=3)
    picks = set()
    for k in range(40):
        ch = always.choose(f"q{k}", _cands(), PolicyContext())
        assert ch.index in (0, 1, 2)  # never the candidate without SQL
        assert ch.info["propensity"] == pytest.approx(1 / 3)
        assert ch.info["base_index"] == 0
        picks.add(ch.index)
    assert picks == {0, 1, 2}

    half = EpsilonGreedyPolicy(base="majority_vote", epsilon=0.5, seed=1)
    ch = half.choose("same question", _cands(), PolicyContext())
    again = EpsilonGreedyPolicy(base="majority_vote", epsilon=0.5, seed=1).choose(
        "same question", _cands(), PolicyContext()
    )
    assert (ch.index, ch.info["explored"]) == (again.index, again.info["explored"])  # replays identically on resume
    expected = 0.5 / 3 + (0.5 if ch.index == 0 else 0.0)
    assert ch.info["propensity"] == pytest.approx(expected)

    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedyPolicy(epsilon=1.5)


def test_with_exploration_rewrites_the_supervisor_only() -> None:
    cfg = SocietyConfig.load(SMOKE_CONFIG)
    assert with_exploration(cfg, 0.0) is cfg
    ex = with_exploration(cfg, 0.2, seed=7)
    sup = ex.role("supervisor")
    assert sup.policy == "epsilon_greedy"
    assert sup.options == {"base": cfg.role("supervisor").policy, "base_options": dict(cfg.role("supervisor").options),
                           "epsilon": 0.2, "seed": 7}
    assert [r.name for r in ex.roles] == [r.name for r in cfg.roles]
    assert ex.role("senior") == cfg.role("senior")
    with pytest.raises(ValueError, match="epsilon"):
        with_exploration(cfg, -0.1)


def test_select_tasks(tmp_path: Path) -> None:
    settings = GatherConfig()
    tasks = select_tasks(settings, GatherRun(run_dir=tmp_path, task_ids=["train-3", "train-1", "train-3"]))
    assert [t["task_id"] for t in tasks] == ["train-3", "train-1"]
    assert set(tasks[0]) == {"task_id", "question", "db_id", "db_path", "gold_sql"}
    assert Path(tasks[0]["db_path"]).is_file()
    with pytest.raises(ValueError, match="train-99999"):
        select_tasks(settings, GatherRun(run_dir=tmp_path, task_ids=["train-99999"]))
    with pytest.raises(ValueError, match="n_runners"):
        gather(GatherConfig(n_runners=0), GatherRun(run_dir=tmp_path / "none", task_ids=["train-0"]))
    assert not (tmp_path / "none").exists()  # refused before anything is written
    with pytest.raises(ValueError, match=r"give a list of ids, e.g. \['train-0'\]"):
        GatherRun(run_dir=tmp_path, task_ids="train-0")  # one string would be read as 7 ids of one character


_GATHER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    from training.gather import GatherRun, gather
    from training.gather_config import GatherConfig
    s = gather(GatherConfig(n_runners=2, epsilon=0.3, rollout_timeout_s=None),
               GatherRun(run_dir={run_dir!r}, society_config={config!r}, task_ids={tasks!r}, endpoints={endpoints!r},
                         progress=False))
    print("SUMMARY " + json.dumps(s.to_json()), flush=True)
    """
)


class _RecordingHook(agl.Hook):
    """Appends each finished rollout id to a file (hooks run in the runner processes)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)

    async def on_rollout_end(self, *, agent, runner, rollout, spans) -> None:  # type: ignore[override]
        with open(self.path, "a") as f:
            f.write(rollout.rollout_id + "\n")


def _succeeded(store: Path) -> dict[str, tuple[str | None, float | None]]:
    if not store.exists():
        return {}
    try:
        with RolloutArchive(store) as arc:
            return {r.rollout_id: (r.task_id, r.reward) for r in arc.rollouts(status="succeeded")}
    except Exception:  # noqa: BLE001 - the writer may be creating the schema right now
        return {}


@pytest.mark.model
def test_gather_killed_and_resumed(tmp_path: Path, smol_server) -> None:
    run_dir = tmp_path / "run"
    store = run_dir / "store.sqlite"
    config = _quick_config(tmp_path)
    aliases = SocietyConfig.load(config).embedded_aliases()
    # every model alias of the config (the smoke profile binds each role to its own alias) -> the SmolLM2 server
    endpoints = {a: (smol_server.base_url, smol_server.model) for a in aliases}
    first = select_tasks(GatherConfig(), GatherRun(run_dir=tmp_path / "unused", task_ids=TASKS[:1]))[0]["question"]
    # the first run's calls go through a proxy that answers TASKS[0] only and holds the others, so the
    # kill lands while the other rollouts are provably in flight, however fast the machine is
    with HoldingProxy(smol_server.base_url, lambda body: first in message_text(body)) as gate:
        gated = {a: (gate.base_url, smol_server.model) for a in aliases}
        script = _GATHER_SCRIPT.format(repo=str(REPO), run_dir=str(run_dir), config=str(config), tasks=TASKS,
                                       endpoints=gated)

        # 1. start phase 1 in its own process group and SIGKILL all of it once TASKS[0] finished
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
        before = _wait_stored_while_held(proc, store, gate)
        runners = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(runners) >= 2  # the two runner processes
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 of the trainer only: its runners must not outlive it
        proc.wait()
        t_kill = time.time()
        while time.time() - t_kill < 60 and any(Path(f"/proc/{r}").exists() for r in runners):
            time.sleep(0.2)
        alive = [r for r in runners if Path(f"/proc/{r}").exists()]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # clean up whatever is left before asserting
        assert not alive, f"runner processes {alive} outlived the killed trainer"
    after_kill = _succeeded(store)
    assert set(before) <= set(after_kill)
    assert {t for t, _ in after_kill.values()} == {TASKS[0]}  # the held rollouts never finished

    # 2. resume in-process: nothing lost, finished tasks not redone, the rest completed
    hook_log = tmp_path / "hook.log"
    summary = gather(GatherConfig(n_runners=2, epsilon=0.3, rollout_timeout_s=None),
                     GatherRun(run_dir=run_dir, society_config=config, task_ids=TASKS, endpoints=endpoints,
                               progress=False, hooks=[_RecordingHook(hook_log)]))
    final = _succeeded(store)
    for rid, (task, reward) in after_kill.items():
        assert final[rid] == (task, reward)  # same ids, same rewards
    done_before = {t for t, _ in after_kill.values()}
    assert summary.skipped == len(done_before)
    assert summary.run == len(TASKS) - len(done_before)
    assert summary.succeeded == summary.run and summary.failed == 0
    assert sorted(t for t, _ in final.values()) == sorted(TASKS)  # each task exactly once
    assert json.loads((run_dir / "gather.json").read_text())["stored_succeeded"] == len(TASKS)
    new_ids = set(final) - set(after_kill)
    assert set(hook_log.read_text().split()) == new_ids  # the trainer's hooks saw exactly this call's rollouts

    # 3. the killed run's in-flight rollouts were kept, marked cancelled, not counted as done
    with RolloutArchive(store) as arc:
        cancelled = arc.rollouts(status="cancelled")
        assert summary.recovered == len(cancelled)
        assert all(r.metadata["recovered"] == "cancel" for r in cancelled)
        _check_society_spans(arc)

    # 4. a third call has nothing left to do
    again = gather(GatherConfig(n_runners=2, epsilon=0.0, rollout_timeout_s=None),
                   GatherRun(run_dir=run_dir, society_config=config, task_ids=TASKS, endpoints=endpoints,
                             progress=False))
    assert (again.skipped, again.run) == (len(TASKS), 0)


_INTERRUPTIBLE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    from training.gather import GatherRun, gather
    from training.gather_config import GatherConfig
    try:
        s = gather(GatherConfig(n_runners=2, epsilon=0.0, rollout_timeout_s=None),
                   GatherRun(run_dir={run_dir!r}, society_config={config!r}, task_ids={tasks!r},
                             endpoints={endpoints!r}, progress=False))
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
    print("SUMMARY " + json.dumps(s.to_json()), flush=True)
    """
)


def _wait_stored_while_held(proc: subprocess.Popen, store: Path, gate: HoldingProxy,
                            ) -> dict[str, tuple[str | None, float | None]]:
    """Wait until one rollout is stored and another rollout's model call is held by ``gate``: the
    gather is then provably mid-way (finished work exists, started work cannot finish)."""
    deadline = time.monotonic() + 600
    stored: dict[str, tuple[str | None, float | None]] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        stored = _succeeded(store)
        if stored and gate.held:
            return stored
        time.sleep(0.3)
    out = proc.stdout.read()[-3000:] if proc.poll() is not None else ""
    raise AssertionError(f"no stored rollout with another one held within 10 minutes "
                         f"(stored {len(stored)}, held {gate.held}, exit {proc.poll()}):\n{out}")


@pytest.mark.model
def test_gather_ctrl_c_stops_and_is_not_summarised(tmp_path: Path, smol_server) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group) while the gather is provably mid-way
    (one rollout stored, the others' model calls held by a :class:`HoldingProxy` that answers only the
    first task): the gather raises KeyboardInterrupt (Agent Lightning's strategy swallows it and would
    return as if done) within a bound, writes no summary, and its runners are gone; the finished
    rollout stays in the store; the tasks still queued were never started."""
    run_dir = tmp_path / "run"
    store = run_dir / "store.sqlite"
    config = _quick_config(tmp_path)
    tasks = [f"train-{i}" for i in range(8)]
    first = select_tasks(GatherConfig(), GatherRun(run_dir=tmp_path / "unused", task_ids=tasks[:1]))[0]["question"]
    with HoldingProxy(smol_server.base_url, lambda body: first in message_text(body)) as gate:
        endpoints = {a: (gate.base_url, smol_server.model) for a in SocietyConfig.load(config).embedded_aliases()}
        script = _INTERRUPTIBLE_SCRIPT.format(repo=str(REPO), run_dir=str(run_dir), config=str(config), tasks=tasks,
                                              endpoints=endpoints)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
        try:
            before = _wait_stored_while_held(proc, store, gate)
            runners = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            t_int = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=120)  # the held replies never come: only the interrupt ends it
            stopped_s = time.monotonic() - t_int
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "INTERRUPTED" in out and "SUMMARY" not in out, out[-3000:]
    assert stopped_s < 60, f"the gather took {stopped_s:.0f} s to stop after Ctrl-C"
    assert not (run_dir / "gather.json").exists()
    assert set(before) <= set(_succeeded(store))
    assert {t for t, _ in _succeeded(store).values()} == {tasks[0]}  # the held rollouts did not finish
    with RolloutArchive(store) as arc:
        started = {r.task_id for r in arc.rollouts() if r.n_attempts > 0}
    assert len(started) <= 3, started  # the finished task and at most one rollout in flight per runner
    assert not [r for r in runners if Path(f"/proc/{r}").exists()]


def _check_society_spans(arc: RolloutArchive) -> None:
    """The span tree of real society rollouts: LangChain node/LLM spans, the run object, per-role outcomes, reward."""
    for rec in arc.rollouts(status="succeeded"):
        spans = arc.spans(rec.rollout_id)
        outcome = [s for s in spans if s.attributes.get(f"{ATTR}.kind") == "role_outcomes"]
        assert len(outcome) == 1, [s.name for s in spans]
        a = outcome[0].attributes
        assert a[f"{ATTR}.task_id"] == rec.task_id
        juniors = list(a[f"{ATTR}.juniors"])
        assert juniors and all(a[f"{ATTR}.junior.{j}.ex"] in (0, 1) for j in juniors)
        assert a[f"{ATTR}.juniors_correct"] == sum(a[f"{ATTR}.junior.{j}.ex"] for j in juniors)
        assert a[f"{ATTR}.reward.total"] == pytest.approx(rec.reward)
        # the reward is the weighted reward of the final SQL against gold, recomputed here
        task = rec.input
        expect = compute_reward(a[f"{ATTR}.final.sql"] or None, task["gold_sql"], task["db_path"]).total
        assert rec.reward == pytest.approx(expect)
        if f"{ATTR}.supervisor.index" in a:
            assert 0.0 < a[f"{ATTR}.supervisor.propensity"] <= 1.0  # epsilon=0.3 exploration logged
        assert any(s.attributes.get(f"{ATTR}.kind") == "society_run" for s in spans)
        llm = [s for s in spans if any(k.startswith("gen_ai.prompt") for k in s.attributes)]
        assert llm, "no LLM span reached the store"
        nodes = [s for s in spans if s.name == "chain.chain"]
        assert nodes and all(s.attributes.get("langchain.run_name") for s in nodes)
        # a node records a summary of the state it got, not the state (schema text, messages, candidates)
        for s in nodes:
            got = json.loads(s.attributes["chain.inputs"])
            values = got.values() if isinstance(got, dict) else [got]
            assert all(v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200)
                       for v in values), s.attributes["chain.inputs"][:300]
        assert spans[-1].attributes.get("agentlightning.reward.0.value") == pytest.approx(rec.reward)


def test_only_infrastructure_failures_fail_a_rollout() -> None:
    """A dead endpoint (caused for real: nothing listens on the port) fails the rollout; a run that
    merely found no usable SQL is a real sample."""
    from society.run import SocietyRun, run_society
    from tools.spider import load_examples
    from training.agent import infrastructure_failure
    from training.gather import free_port

    cfg = SocietyConfig.load(SMOKE_CONFIG)
    cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"retries": 0, "timeout_s": 5})})
    dead = f"http://127.0.0.1:{free_port()}/v1"
    for alias in cfg.embedded_aliases():
        cfg = cfg.with_endpoint(alias, dead, "none")
    ex = load_examples(None, "train")[0]
    run = run_society(ex.question, ex.db_path, cfg, question_id=ex.id)
    assert run.failed and infrastructure_failure(run) and infrastructure_failure(run).startswith("endpoint:")

    no_sql = SocietyRun(question="q", status="failed", error="no SQL: no junior produced a usable candidate")
    assert infrastructure_failure(no_sql) is None
    crashed = SocietyRun(question="q", status="failed", errors=["graph: RuntimeError: boom"])
    assert infrastructure_failure(crashed) == "graph: RuntimeError: boom"


def test_juniors_only_gather_and_rejection_sampling_draws(tmp_path: Path, smol_server) -> None:
    """Juniors-only rollouts and resampled draws land in the same store as tasks of their own."""
    from training.adapter import HierarchicalTraceAdapter

    config = _quick_config(tmp_path)
    endpoints = {a: (smol_server.base_url, smol_server.model) for a in SocietyConfig.load(config).embedded_aliases()}
    run_dir = tmp_path / "run"
    settings = GatherConfig(n_runners=1, epsilon=0.0, rollout_timeout_s=None)
    common = dict(run_dir=run_dir, society_config=config, task_ids=TASKS[:2], endpoints=endpoints, progress=False)
    first = gather(settings, GatherRun(**common, agent="juniors", task_suffix="/juniors"))
    # rejection sampling draws again only the juniors that were wrong: on the first task one junior
    # here (whichever it was), on the second every junior (the task is not named)
    draw = gather(settings, GatherRun(**common, agent="juniors", task_suffix="/juniors#1",
                               task_juniors={TASKS[0]: ["junior_decompose"]},
                               junior_sampling={"temperature": 0.8, "seed": 1000}))
    assert first.succeeded == draw.succeeded == 2
    again = gather(settings, GatherRun(**common, agent="juniors", task_suffix="/juniors"))
    assert again.run == 0 and again.skipped == 2  # resumable per suffix: nothing redone
    with RolloutArchive(run_dir / "store.sqlite") as arc:
        traces = list(HierarchicalTraceAdapter().traces(arc))
    by_task = {t.task_id: t for t in traces}
    assert set(by_task) == {f"{t}/juniors" for t in TASKS[:2]} | {f"{t}/juniors#1" for t in TASKS[:2]}
    every = ["junior_decompose", "junior_direct", "junior_step_by_step"]
    assert sorted(by_task[f"{TASKS[1]}/juniors#1"].outcomes["juniors"]) == sorted(by_task[f"{TASKS[0]}/juniors"]
                                                                                   .outcomes["juniors"]) == every
    assert by_task[f"{TASKS[0]}/juniors#1"].outcomes["juniors"] == ["junior_decompose"]
    assert {c.role_instance for c in by_task[f"{TASKS[0]}/juniors#1"].llm_calls} == {"junior_decompose"}
    for tid, t in by_task.items():
        assert t.outcomes["agent"] == "juniors" and t.outcomes["resample"] == int("#" in tid)
        assert {c.role for c in t.llm_calls} == {"junior"}  # no senior, no reviewer
        assert not any(k.startswith("senior.") for k in t.outcomes)
    with pytest.raises(ValueError, match="agent"):
        GatherRun(run_dir=run_dir, task_ids=TASKS[:1], agent="senior")
    with pytest.raises(ValueError, match="task_juniors needs agent='juniors'"):
        GatherRun(run_dir=run_dir, task_ids=TASKS[:1], task_juniors={TASKS[0]: ["junior_direct"]})


def test_a_junior_drawn_alone_keeps_the_seed_it_has_in_a_draw_of_all() -> None:
    from training.agent import with_junior_sampling, with_only_juniors

    full = with_junior_sampling(SocietyConfig.load(SMOKE_CONFIG), temperature=0.8, seed=1000)
    alone = with_only_juniors(full, ["junior_decompose"])
    juniors = {r.name: r for r in alone.roles if r.type == "junior"}
    assert [n for n, r in juniors.items() if r.enabled] == ["junior_decompose"]
    assert {n: r.sampling for n, r in juniors.items()} == {r.name: r.sampling for r in full.roles
                                                           if r.type == "junior"}
    assert [r for r in alone.roles if r.type != "junior"] == [r for r in full.roles if r.type != "junior"]
    with pytest.raises(ValueError, match=r"give one or more of the enabled junior roles \['junior_direct'"):
        with_only_juniors(full, ["junior_nobody"])


_INTERRUPTED_ROLLOUT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {repo!r})
    import agentlightning as agl
    from society.config import SMOKE_CONFIG, SocietyConfig
    from training.agent import InterruptedRolloutGuard, SocietyAgent, StoreTracer
    from training.gather import GatherRun, select_tasks
    from training.gather_config import GatherConfig
    from evaluation.tracing.store import RolloutArchive, SqliteLightningStore

    class Interrupted(SocietyAgent):
        def _rollout(self, task, resources, rollout):
            raise KeyboardInterrupt

    path = {path!r}
    store = SqliteLightningStore(path)
    runner = agl.LitAgentRunner(tracer=StoreTracer())
    hooks = [InterruptedRolloutGuard()] if {guard!r} else []
    runner.init(agent=Interrupted(SocietyConfig.load(SMOKE_CONFIG)), hooks=hooks)
    runner.init_worker(0, store)
    task = select_tasks(GatherConfig(), GatherRun(run_dir={unused!r}, task_ids=["train-0"]))[0]
    unused = {{"unused": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="none")}}  # the runner needs resources
    try:
        asyncio.run(runner.step(task, resources=unused))
        raised = False
    except KeyboardInterrupt:
        raised = True
    store.close()
    with RolloutArchive(path) as arc:
        print("STATUSES " + json.dumps([[r.task_id, r.status] for r in arc.rollouts()] + [raised]), flush=True)
    """
)


def test_an_interrupted_rollout_is_not_stored_as_succeeded(tmp_path: Path) -> None:
    """Ctrl-C inside a rollout: Agent Lightning 0.3's runner catches only ``Exception`` and then marks
    the attempt ``succeeded`` (no reward), so a resumed gather skipped the task as done. Found by the
    Ctrl-C gather test above (2026-12-05, 1 run in 6 under load). With the gather's
    :class:`InterruptedRolloutGuard` the attempt stays unfinished, which the next gather recovers and
    runs again; without it the runner's own behaviour is asserted too, so an Agent Lightning release
    that fixes it is noticed. A real runner and a real SQLite store, in a child process (the runner's
    tracer is process-wide state); the agent's rollout raises ``KeyboardInterrupt`` itself (a
    signal's arrival inside a rollout cannot be timed from a test)."""

    def statuses(name: str, guard: bool) -> list:
        script = _INTERRUPTED_ROLLOUT_SCRIPT.format(repo=str(REPO), path=str(tmp_path / f"{name}.sqlite"), guard=guard,
                                                    unused=str(tmp_path / "unused"))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        line = next((x for x in out.stdout.splitlines() if x.startswith("STATUSES ")), None)
        assert line, out.stdout[-2000:] + out.stderr[-3000:]
        return json.loads(line.removeprefix("STATUSES "))

    assert statuses("guarded", True) == [["train-0", "running"], True]
    assert statuses("unguarded", False) == [["train-0", "succeeded"], True]  # Agent Lightning 0.3's own marking
