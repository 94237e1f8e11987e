"""HierarchicalTraceAdapter (training/adapter.py) on traces recorded from real society rollouts.

Fixture ``tests/fixtures/society_traces.jsonl.gz``: spans of real rollouts, produced by
``training.gather.gather`` (the default society config on the embedded Qwen2.5-Coder-0.5B
llama.cpp server, Spider train tasks, supervisor exploration epsilon=0.3, two runners) and
exported unchanged with ``training.adapter.export_traces`` -- nothing in it is hand-written.
Expected values are recomputed here independently: EX by executing SQL on the Spider
databases, counts from the raw span attributes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("agentlightning")
pytest.importorskip("datasets")

from evaluation.metrics.ex import execution_match  # noqa: E402
from evaluation.tracing.store import RolloutArchive, SqliteLightningStore  # noqa: E402
from tools.spider import database_path, default_data_dir  # noqa: E402
from training.adapter import HierarchicalTraceAdapter, load_traces  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "society_traces.jsonl.gz"


@pytest.fixture(scope="module")
def recorded() -> list:
    rows = load_traces(FIXTURE)
    assert len(rows) >= 6
    return rows


@pytest.fixture(scope="module")
def traces(recorded) -> list:
    ad = HierarchicalTraceAdapter()
    return [ad.adapt(spans) for _, spans in recorded]


def _db(t) -> Path:
    return database_path(default_data_dir(), t.outcomes["db_id"])


def test_adapt_structures_each_rollout(recorded, traces) -> None:
    for (rec, spans), t in zip(recorded, traces):
        assert t.rollout_id == rec["rollout_id"] and t.task_id == rec["task_id"]
        assert t.reward == pytest.approx(rec["reward"])
        assert t.n_spans == len(spans)
        chat_spans = [s for s in spans if s.name == "chat_model.llm"]
        assert len(t.llm_calls) == len(chat_spans) > 0
        assert {c.role for c in t.llm_calls} >= {"junior", "senior"}
        for c in t.llm_calls:
            assert c.messages and c.messages[0]["role"] == "system"
            assert c.role_instance and c.node and c.model
        juniors = set(t.outcomes["juniors"])
        assert {c.role_instance for c in t.calls(role="junior")} == juniors
        assert t.run["question_id"] == t.task_id


def test_adapt_is_order_independent_and_total(recorded) -> None:
    ad = HierarchicalTraceAdapter()
    _, spans = recorded[0]
    shuffled = list(spans)
    random.Random(0).shuffle(shuffled)
    assert ad.adapt(shuffled) == ad.adapt(spans)
    empty = ad.adapt([])
    assert empty.task_id is None and empty.llm_calls == []
    # a rollout whose outcome spans are missing is skipped by the views, not an error
    bare = [s for s in spans if "sqlsociety.kind" not in s.attributes]
    assert len(ad.to_sft([bare], min_reward=0.0)) == 0
    assert ad.to_bandit([bare]) == []


def test_to_sft_keeps_the_juniors_whose_own_sql_matched_gold(traces) -> None:
    """Per-junior credit: a junior's conversation is kept only when its own SQL matched gold; the
    society's reward orders the rows (and picks among identical ones), it admits none."""
    ad = HierarchicalTraceAdapter()
    # expected rows recomputed from the candidates' SQL executed against gold
    own_correct = set()
    for t in traces:
        for c in t.run["candidates"]:
            if execution_match(_db(t), c["sql"], t.outcomes["gold_sql"]).match:
                own_correct.add((t.rollout_id, c["junior"]))
    sel = ad.select_sft(traces, min_reward=0.5)
    ds = sel.dataset
    kept = {(r, j) for r, j in zip(ds["rollout_id"], ds["role_instance"])}
    assert kept <= own_correct and len(kept) + sel.summary["duplicates"] == len(own_correct) > 0
    assert all(v == 1 for v in ds["own_ex"]) and set(ds["source"]) == {"society"}
    assert ds["reward"] == sorted(ds["reward"], reverse=True)
    assert len(ad.to_sft(traces, min_reward=float("-inf"))) == len(ds)  # the threshold admits nothing
    n_conv = sum(len(t.outcomes["juniors"]) for t in traces)
    assert sel.summary["conversations"] == n_conv and sel.summary["own_sql_wrong"] == n_conv - len(own_correct)
    # what the removed reward-or-correct rule would have let in with a wrong own SQL
    wrong_high = sum(1 for t in traces if t.reward >= 0.5 for j in t.outcomes["juniors"]
                     if (t.rollout_id, j) not in own_correct)
    assert sel.summary["old_rule"]["admitted_with_wrong_own_sql"] == wrong_high

    row = ds[0]
    roles = [m["role"] for m in row["messages"]]
    assert roles[0] == "system" and roles[-1] == "assistant" and "user" in roles
    # a junior that fixed its draft keeps the whole dialogue: draft, execution feedback, fix
    fixed = [r for r in ds if len(r["messages"]) > 3]
    for r in fixed:
        assert [m["role"] for m in r["messages"][:5]] == ["system", "user", "assistant", "user", "assistant"]


def test_to_rl_senior_decision_points(traces) -> None:
    ad = HierarchicalTraceAdapter()
    rl = ad.to_rl(traces)
    n_senior = sum(len(t.calls(role="senior", nodes=("senior_check", "senior_rewrite"))) for t in traces)
    assert len(rl.triplets) == len(rl.prompts) == n_senior > 0
    by_id = {t.rollout_id: t for t in traces}
    first_seen: set[str] = set()
    for tr, row in zip(rl.triplets, rl.prompts):
        t = by_id[tr.metadata["rollout_id"]]
        assert tr.reward == pytest.approx(t.reward)
        assert tr.prompt["messages"] == row["prompt"]
        text = "\n".join(m["content"] for m in row["prompt"])
        assert t.run["question"] in text  # the question
        assert "CREATE TABLE" in text  # the schema
        if t.rollout_id not in first_seen:  # the senior's first decision sees the supervisor's pick
            first_seen.add(t.rollout_id)
            assert t.outcomes["senior.before_sql"] and t.outcomes["senior.before_sql"] in text
            assert "Execution result" in text  # and its execution feedback
        assert Path(row["db_path"]).is_file() and row["gold_sql"] == t.outcomes["gold_sql"]
        assert isinstance(tr.response["content"], str)
    gains = ad.to_rl(traces, reward="senior_gain")
    assert {tr.reward for tr in gains.triplets} <= {-1.0, 0.0, 1.0}
    for tr in gains.triplets:
        t = by_id[tr.metadata["rollout_id"]]
        after = execution_match(_db(t), t.outcomes["senior.after_sql"] or None, t.outcomes["gold_sql"]).match
        before = execution_match(_db(t), t.outcomes["senior.before_sql"] or None, t.outcomes["gold_sql"]).match
        assert tr.reward == float(after) - float(before)


def test_to_bandit_supervisor_samples(traces) -> None:
    ad = HierarchicalTraceAdapter()
    samples = ad.to_bandit(traces)
    with_choice = [t for t in traces if t.outcomes.get("supervisor.index", -1) >= 0]
    assert len(samples) == len(with_choice) > 0
    explored = 0
    for s in samples:
        t = next(t for t in traces if t.rollout_id == s.rollout_id)
        assert s.action == t.outcomes["supervisor.index"]
        assert s.candidates[s.action]["junior"] == t.outcomes["supervisor.choice"]
        assert s.reward == t.outcomes["supervisor.chosen_ex"]
        assert sum(s.candidate_rewards) == t.outcomes["juniors_correct"]
        for c, own in zip(s.candidates, s.candidate_rewards):
            assert own == float(execution_match(_db(t), c["sql"] or None, t.outcomes["gold_sql"]).match)
            assert 0.0 <= c["agreement"] <= 1.0 and c["executes"] in (0, 1)
            assert c["empty"] <= c["executes"]
        assert 0.0 < s.propensity <= 1.0
        explored += int(t.outcomes.get("supervisor.explored", 0))
        json.dumps(s.to_dict())  # JSON-able for the bandit trainer's logs
    assert samples[0].policy


def test_adapter_reads_a_store(tmp_path: Path, recorded, traces) -> None:
    """The same rollouts written through the SQLite LightningStore come back identical."""
    path = tmp_path / "store.sqlite"

    async def write() -> list[str]:
        store = SqliteLightningStore(path)
        ids = []
        try:
            for rec, spans in recorded:
                await store.enqueue_rollout(input={"task_id": rec["task_id"]}, mode="train")
                ar = await store.dequeue_rollout(worker_id="w")
                moved = [s.model_copy(update={"rollout_id": ar.rollout_id, "attempt_id": ar.attempt.attempt_id})
                         for s in spans]
                await store.add_many_spans(moved)
                await store.update_attempt(ar.rollout_id, ar.attempt.attempt_id, status="succeeded")
                ids.append(ar.rollout_id)
        finally:
            store.close()
        return ids

    ids = asyncio.run(write())
    ad = HierarchicalTraceAdapter()
    again = list(ad.traces(path))
    assert [t.rollout_id for t in again] == ids
    with RolloutArchive(path) as arc:
        assert [r.reward for r in arc.rollouts()] == pytest.approx([t.reward for t in traces])
    assert [(t.task_id, t.reward, t.outcomes, len(t.llm_calls)) for t in again] == [
        (t.task_id, t.reward, t.outcomes, len(t.llm_calls)) for t in traces]
    def rows(ds) -> list:
        return [(r["messages"], r["role_instance"], r["reward"]) for r in ds]

    assert rows(ad.to_sft(path)) == rows(ad.to_sft(traces))


def test_to_sft_keeps_only_correct_juniors_of_a_rejection_sampling_draw(traces) -> None:
    """A draw marked ``resample`` (the marker a juniors-only resampling gather records) keeps a
    junior only when its own candidate matched gold, like every other rollout. The real traces are
    copied and marked here; the gather that writes the marker is tested in test_gather."""
    import dataclasses

    ad = HierarchicalTraceAdapter()
    marked = [dataclasses.replace(t, outcomes={**t.outcomes, "resample": 1, "agent": "juniors"}) for t in traces]
    sel = ad.select_sft(marked, min_reward=float("-inf"))
    rows = sel.dataset
    assert all(v == 1 for v in rows["own_ex"]) and set(rows["source"]) == {"resample"}
    assert len(rows) == len(ad.to_sft(traces))
    assert sel.summary["old_rule"]["admitted_with_wrong_own_sql"] == 0  # draws were own-correct only before too
