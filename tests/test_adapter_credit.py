"""Per-junior credit and STaR rationalization in the SFT view (training/adapter.py), on constructed traces.

A junior's conversation enters SFT only when its own final SQL matched gold (``junior.<J>.ex == 1``);
the society's reward ranks and deduplicates, never admits. A rationalization rollout's conversation
loses its gold-SQL hint block. The traces here are built by hand as :class:`SocietyTrace` objects
(what ``HierarchicalTraceAdapter.adapt`` returns), so each case is exact; the same rules on a real
SmolLM2 server are in ``tests/test_rationalize.py``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("agentlightning")
pytest.importorskip("datasets")

from society.prompts import HINT_PHRASES, PROMPTS, hint_block, hint_remnants, strip_hint  # noqa: E402
from training.adapter import HierarchicalTraceAdapter, LLMCall, SocietyTrace, trace_source  # noqa: E402

GOLD = "SELECT count(*)\n  FROM head WHERE age > 56"
SYSTEM = "You are an expert on SQLite ... Schema:\nCREATE TABLE head (head_id INT, age INT)"


def _user(persona: str = "direct", question: str = "How many heads are older than 56?") -> str:
    return PROMPTS[f"junior_{persona}"].render(question=question, schema="s", feedback="")[1].content


def _call(inst: str, user: str, reply: str, seq: int) -> LLMCall:
    return LLMCall(span_id=f"s{seq}", sequence_id=seq, role="junior", role_instance=inst, node="draft",
                   label=f"junior:{inst}", messages=[{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": user}],
                   response=reply, model="m")


def _trace(rid: str, reward: float | None, juniors: dict[str, tuple[int, str]], *, source: str = "society",
           task: str = "train-0", user: str | None = None, run: dict | None = None) -> SocietyTrace:
    """One rollout: ``juniors`` maps a junior instance to (own EX, reply); its persona is the name's tail."""
    outcomes: dict = {"task_id": task, "gold_sql": GOLD, "juniors": list(juniors), "source": source,
                      "agent": "society" if source == "society" else "juniors",
                      "resample": int(source == "resample"), "rationalized": int(source == "rationalized")}
    calls = []
    for i, (inst, (ex, reply)) in enumerate(juniors.items()):
        persona = inst.removeprefix("junior_")
        outcomes[f"junior.{inst}.ex"] = ex
        outcomes[f"junior.{inst}.persona"] = persona
        calls.append(_call(inst, user if user is not None else _user(persona), reply, i))
    return SocietyTrace(rollout_id=rid, attempt_id="a", task_id=task, reward=reward, outcomes=outcomes,
                        run=run or {}, llm_calls=calls, n_spans=len(calls))


RIGHT = "```sql\nSELECT count(*) FROM head WHERE age > 56\n```"
WRONG = "```sql\nSELECT count(*) FROM head\n```"


def test_only_a_juniors_own_correct_sql_admits_its_conversation_whatever_the_reward() -> None:
    ad = HierarchicalTraceAdapter()
    traces = [
        # the society got it right (reward 1.0) but junior_direct's own SQL was wrong: not imitated
        _trace("r1", 1.0, {"junior_direct": (0, WRONG), "junior_decompose": (1, RIGHT)}),
        # low society reward, junior_direct right on its own: kept
        _trace("r2", 0.1, {"junior_direct": (1, RIGHT + " "), "junior_decompose": (0, WRONG)}, task="train-1"),
        # a rejection-sampling draw with a high reward and a wrong junior: not kept, as before
        _trace("r3", 0.9, {"junior_direct": (0, WRONG)}, source="resample", task="train-2/juniors#1"),
        # no own EX recorded: never admitted
        _trace("r4", 1.0, {"junior_direct": (None, RIGHT)}, task="train-3"),  # type: ignore[dict-item]
    ]
    sel = ad.select_sft(traces, min_reward=0.5)
    ds = sel.dataset
    assert sorted(zip(ds["rollout_id"], ds["role_instance"])) == [("r1", "junior_decompose"), ("r2", "junior_direct")]
    assert set(ds["own_ex"]) == {1} and ds["source"] == ["society", "society"]
    assert ds["reward"] == [1.0, 0.1]  # ranked by the society's reward, highest first
    s = sel.summary
    assert (s["rule"], s["conversations"], s["kept"], s["own_sql_wrong"]) == ("own_correct", 6, 2, 4)
    # the removed rule (reward >= 0.5 or own correct; draws: own correct only) admitted r1's wrong
    # junior_direct and r4's junior without an EX: 2 with a wrong (or unknown) own SQL
    assert s["old_rule"] == {"rule": "either", "min_reward": 0.5, "admitted": 4, "admitted_with_wrong_own_sql": 2}
    assert ad.select_sft(traces, min_reward=0.0).summary["old_rule"]["admitted_with_wrong_own_sql"] == 3
    # the threshold never changes what is admitted
    assert ad.to_sft(traces, min_reward=float("inf"))["rollout_id"] == ad.to_sft(traces, min_reward=-1.0)["rollout_id"]
    assert s["by_source"]["society"] == {"direct": {"conversations": 3, "kept": 1},
                                         "decompose": {"conversations": 2, "kept": 1}}
    assert s["by_source"]["resample"] == {"direct": {"conversations": 1, "kept": 0}}
    assert s["by_source"]["rationalized"] == {} and s["by_source"]["juniors"] == {}
    json.dumps(s)  # written beside the dataset as JSON
    with pytest.raises(TypeError):
        ad.to_sft(traces, select="either")  # type: ignore[call-arg]  # the modes that admitted on reward are gone


def test_the_reward_ranks_and_deduplicates_identical_conversations() -> None:
    ad = HierarchicalTraceAdapter()
    traces = [
        _trace("low", 0.2, {"junior_direct": (1, RIGHT)}),
        _trace("none", None, {"junior_step_by_step": (1, "<sql>SELECT 1</sql>")}, task="train-4"),
        _trace("high", 0.9, {"junior_direct": (1, RIGHT)}, task="train-0/juniors#1", source="resample"),
        _trace("mid", 0.5, {"junior_decompose": (1, RIGHT)}, task="train-5/juniors", source="juniors"),
    ]
    sel = ad.select_sft(traces)
    # "low" and "high" hold the same conversation: the better-ranked one ("high") is kept
    assert sel.dataset["rollout_id"] == ["high", "mid", "none"]
    assert sel.summary["duplicates"] == 1 and sel.summary["kept"] == 3
    assert sel.summary["by_source"]["society"]["direct"] == {"conversations": 1, "kept": 0}
    assert sel.dataset["source"] == ["resample", "juniors", "society"]


def test_a_rationalized_conversation_keeps_no_part_of_the_hint() -> None:
    ad = HierarchicalTraceAdapter()
    plain = _user("step_by_step")
    hinted = hint_block(GOLD) + plain
    assert hinted != plain and strip_hint(hinted) == plain
    reply = "<reasoning>count the heads older than 56</reasoning>\n<sql>SELECT count(*) FROM head WHERE age > 56</sql>"
    traces = [_trace("rz", 1.0, {"junior_step_by_step": (1, reply), "junior_direct": (0, WRONG),
                                 "junior_decompose": (1, "As the hint says:\n" + RIGHT)},
                     source="rationalized", task="train-0/rationalized", user=hinted)]
    sel = ad.select_sft(traces)
    rows = sel.dataset
    assert rows["role_instance"] == ["junior_step_by_step"] and rows["source"] == ["rationalized"]
    msgs = rows[0]["messages"]
    assert msgs == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": plain},
                    {"role": "assistant", "content": reply}]  # as if no hint had been given
    text = json.dumps(msgs)
    for part in [*HINT_PHRASES, hint_block(GOLD).strip(), "as a hint", " ".join(GOLD.split()) + "\n"]:
        assert part.lower() not in text.lower()
    for line in hint_block(GOLD).splitlines():
        if line.strip():
            assert line not in msgs[1]["content"]
    # the decompose junior was right but its reply refers to the hint: it would not read as unhinted
    assert sel.summary["hint_left"] == 1 and sel.summary["own_sql_wrong"] == 1
    assert sel.summary["by_source"]["rationalized"] == {
        "step_by_step": {"conversations": 1, "kept": 1}, "direct": {"conversations": 1, "kept": 0},
        "decompose": {"conversations": 1, "kept": 0}}
    # rationalized rollouts never count against the old rule and never reach the bandit
    assert sel.summary["old_rule"]["admitted_with_wrong_own_sql"] == 0
    cands = [{"junior": "junior_step_by_step", "persona": "step_by_step", "sql": "SELECT 1", "ok": True}]
    choice = {"run": {"choices": [{"index": 0, "candidates": cands, "policy": "majority_vote"}]}}
    bandit_trace = _trace("b", 1.0, {"junior_step_by_step": (1, reply)}, **choice)
    assert len(ad.to_bandit([bandit_trace])) == 1
    assert ad.to_bandit([_trace("b", 1.0, {"junior_step_by_step": (1, reply)}, source="rationalized",
                                user=hinted, **choice)]) == []


def test_hint_block_and_strip_hint() -> None:
    block = hint_block(GOLD)
    assert block.startswith("<hint>\n") and block.endswith("</hint>\n\n")
    assert "SELECT count(*) FROM head WHERE age > 56" in block  # one line
    assert strip_hint("no hint here") == "no hint here"
    assert strip_hint("a" + block + "b" + block + "c") == "abc"
    assert strip_hint("before " + block[:20]) == "before "  # a cut-off block leaves nothing of the hint
    assert hint_remnants(block) == list(HINT_PHRASES) and hint_remnants(strip_hint(block + "x")) == []
    with pytest.raises(ValueError, match="gold SQL"):
        hint_block("  ")


def test_trace_source_of_stores_written_before_the_source_key() -> None:
    t = _trace("x", 1.0, {"junior_direct": (1, RIGHT)})
    for outcomes, want in (({"agent": "society"}, "society"), ({"agent": "juniors"}, "juniors"),
                           ({"agent": "juniors", "resample": 1}, "resample"),
                           ({"agent": "juniors", "rationalized": 1}, "rationalized")):
        t.outcomes = {"task_id": "train-0", **outcomes}
        assert trace_source(t) == want


def test_profiles_configure_rationalization_and_retire_sft_select(tmp_path: Path, caplog) -> None:
    from training.gather import GatherRun, select_tasks
    from training.gather_config import GatherConfig
    from training.phase_sft import sft_selection_lines
    from training.profile import PROFILE_DIR, TrainConfig

    for name, on in (("default", True), ("long", True), ("smoke", True), ("gpu", False)):
        cfg = TrainConfig.load(name)
        assert cfg.gather.rationalize is on and "sft_select" not in cfg.as_written("adapter")
    old = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    old["adapter"]["sft_select"] = "either"  # a profile or run directory written before the rule changed
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(old))
    with caplog.at_level(logging.WARNING, logger="training.pipeline"):
        assert "sft_select" not in TrainConfig.load(p).adapter
    assert "adapter.sft_select is ignored" in caplog.text and "own final SQL matches gold" in caplog.text

    with pytest.raises(ValueError, match="gold_hint needs agent='juniors'"):
        GatherRun(run_dir=tmp_path, task_ids=["train-0"], gold_hint=True)
    tasks = select_tasks(GatherConfig(), GatherRun(run_dir=tmp_path, task_ids=["train-0"], agent="juniors",
                                                   task_suffix="/rationalized", gold_hint=True))
    assert tasks[0]["task_id"] == "train-0/rationalized" and tasks[0]["rationalize"] is True

    ad = HierarchicalTraceAdapter()
    lines = sft_selection_lines(ad.select_sft([_trace("r1", 1.0, {"junior_direct": (0, WRONG)})]).summary)
    assert "0 of 1 junior conversations" in lines[0] and "1 of them with a wrong own SQL" in lines[0]
