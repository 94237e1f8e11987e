"""STaR rationalization (Zelikman et al. 2022, section 3.2) with the real SmolLM2 server.

A juniors-only gather with ``rationalize=True`` shows every junior the task's gold SQL in a
delimited hint block before its own prompt; the rollouts are marked ``rationalized`` in their
outcome span; the SFT view keeps a junior's conversation only when its own SQL matched gold (EX,
recomputed here by executing every candidate against gold) and removes the hint block, so the
conversation reads as if no hint had been given. Three Spider train tasks, one runner.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("agentlightning")

from evaluation.metrics.ex import execution_match  # noqa: E402
from evaluation.tracing.store import RolloutArchive  # noqa: E402
from society.config import SMOKE_CONFIG, SocietyConfig  # noqa: E402
from society.prompts import HINT_OPEN, PERSONA_PROMPTS, PROMPTS, hint_block, hint_remnants, strip_hint  # noqa: E402
from training.adapter import HierarchicalTraceAdapter  # noqa: E402
from training.gather import GatherRun, gather  # noqa: E402
from training.gather_config import GatherConfig  # noqa: E402

pytestmark = pytest.mark.model

TASKS = ["train-0", "train-1", "train-2"]


def test_rationalization_keeps_only_ex_correct_juniors_and_no_hint(tmp_path: Path, smol_server) -> None:
    cfg = SocietyConfig.load(SMOKE_CONFIG)
    endpoints = {a: (smol_server.base_url, smol_server.model) for a in cfg.embedded_aliases()}
    run_dir = tmp_path / "run"
    summary = gather(GatherConfig(n_runners=1, epsilon=0.0, rollout_timeout_s=None),
                     GatherRun(run_dir=run_dir, society_config=SMOKE_CONFIG, task_ids=TASKS, endpoints=endpoints,
                               progress=False, agent="juniors", task_suffix="/rationalized", gold_hint=True))
    assert summary.succeeded == len(TASKS)
    ad = HierarchicalTraceAdapter()
    with RolloutArchive(run_dir / "store.sqlite") as arc:
        traces = list(ad.traces(arc))
        sel = ad.select_sft(arc)
        assert ad.to_bandit(arc) == []  # hinted candidates are not the supervisor's decisions
    assert sorted(t.task_id for t in traces) == sorted(f"{t}/rationalized" for t in TASKS)

    expected = set()
    n_conv = 0
    for t in traces:
        o = t.outcomes
        assert (o["rationalized"], o["source"], o["agent"], o["resample"]) == (1, "rationalized", "juniors", 0)
        assert {c.role for c in t.llm_calls} == {"junior"}
        gold = o["gold_sql"]
        for c in t.calls(role="junior", nodes=("draft",)):  # the junior was shown the hint, then its own prompt
            user = c.messages[-1]["content"]
            assert user.startswith(hint_block(gold))
            plain = PROMPTS[PERSONA_PROMPTS[o[f"junior.{c.role_instance}.persona"]]].render(
                question=t.run["question"], schema="", feedback="")[1].content
            assert strip_hint(user) == plain
        for cand in t.run["candidates"]:
            n_conv += 1
            if execution_match(o["db_path"], cand["sql"], gold).match:  # own EX recomputed
                expected.add((t.rollout_id, cand["junior"]))

    ds = sel.dataset
    kept = set(zip(ds["rollout_id"], ds["role_instance"]))
    assert kept <= expected
    assert len(kept) + sel.summary["duplicates"] + sel.summary["hint_left"] == len(expected)
    assert sel.summary["own_sql_wrong"] == n_conv - len(expected)
    assert len(kept) > 0, "SmolLM2 copied no hinted gold query: the smoke profile's SFT phase would have no rows"
    assert set(ds["source"]) == {"rationalized"} and set(ds["own_ex"]) == {1}
    for row in ds:
        msgs = row["messages"]
        for m in msgs:
            assert hint_remnants(m["content"]) == [] and HINT_OPEN not in m["content"]
        gold = next(t.outcomes["gold_sql"] for t in traces if t.rollout_id == row["rollout_id"])
        assert hint_block(gold) not in msgs[1]["content"]
        assert msgs[1]["content"].startswith(("Write one SQLite", "Question:"))  # the persona's own prompt
    rz = sel.summary["by_source"]["rationalized"]
    assert sum(c["conversations"] for c in rz.values()) == n_conv
    assert sum(c["kept"] for c in rz.values()) == len(ds)
    print("rationalization kept", len(ds), "of", n_conv, "junior conversations:", rz)
