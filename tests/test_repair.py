"""The senior's warm start on repair pairs (issue 21, item 1) and its trigger.

* Repair cases on constructed traces over a real Spider database: a wrong query is a case, a right
  one never is (a right -> right senior call is no repair target), one case per question and
  query; the senior's own correct reply is used first; a hinted draw enters without its hint, and
  one that still mentions the hint is left out. The samplers here are deterministic policies (a
  reply fixed per prompt), so each outcome is known; the real model is in the last test.
* On the recorded real rollouts (``tests/fixtures/society_traces.jsonl.gz``): a junior's wrong
  candidate is posed exactly as a real senior posed its first rewrite.
* Warm start then GRPO on SmolLM2 (real llama.cpp server, real SFT, real GRPO step): the repair
  pairs found by the served senior, SFT, the prefilter's band before and after, GRPO from the
  warm start's adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("agentlightning")
pytest.importorskip("datasets")

from evaluation.metrics.ex import execution_match  # noqa: E402
from society.llm import message_dicts  # noqa: E402
from society.prompts import HINT_PHRASES, PROMPTS, hint_block  # noqa: E402
from society.roles import repair_messages  # noqa: E402
from society.toolkit import execute_summary  # noqa: E402
from tools.spider import database_path, default_data_dir  # noqa: E402
from training.adapter import HierarchicalTraceAdapter, LLMCall, SocietyTrace, load_traces  # noqa: E402

DB = str(database_path(default_data_dir(), "department_management"))
QUESTION = "How many heads of the departments are older than 56 ?"
GOLD = "SELECT count(*) FROM head WHERE age > 56"
RIGHT = "SELECT COUNT(*) FROM head WHERE age > 56"          # another spelling, same result
WRONG = "SELECT count(*) FROM head"                          # runs, wrong count
EMPTY = "SELECT name FROM head WHERE age > 156"              # runs, no rows
BROKEN = "SELECT count(*) FROM heads WHERE age > 56"         # no such table
SYSTEM = {"role": "system", "content": "You are an expert on SQLite ... Schema:\nhead(head_id, name, age)"}
FIXTURE = Path(__file__).parent / "fixtures" / "society_traces.jsonl.gz"


def _cand(junior: str, sql: str) -> dict:
    ex = execute_summary(DB, sql)
    return {"junior": junior, "persona": junior.removeprefix("junior_"), "sql": sql, "ok": ex.ok,
            "row_count": ex.row_count, "result_digest": ex.digest}


def _senior_prompt(sql: str) -> list[dict]:
    msgs = repair_messages(PROMPTS["senior_rewrite"], QUESTION, "", execute_summary(DB, sql))
    return [SYSTEM, message_dicts(msgs)[-1]]


def _trace(rid: str, task: str, juniors: dict[str, str], senior: list[tuple[str, str]] = (), *,
           source: str = "society") -> SocietyTrace:
    """A rollout: ``juniors`` maps an instance to its SQL (own EX computed for real), ``senior`` lists
    (input SQL, reply) of its rewrite calls."""
    cands = [_cand(j, s) for j, s in juniors.items()]
    outcomes = {"task_id": task, "gold_sql": GOLD, "db_path": DB, "juniors": list(juniors), "source": source}
    calls = []
    for i, (j, s) in enumerate(juniors.items()):
        outcomes[f"junior.{j}.ex"] = int(execution_match(DB, s, GOLD).match)
        calls.append(LLMCall(f"j{i}", i, "junior", j, "draft", f"junior:{j}",
                             [SYSTEM, {"role": "user", "content": f"Question: {QUESTION}"}], f"```sql\n{s}\n```", "m"))
    turns = []
    for i, (before, reply) in enumerate(senior):
        calls.append(LLMCall(f"s{i}", 10 + i, "senior", "senior", "senior_rewrite", "senior", _senior_prompt(before),
                             reply, "m"))
        turns.append({"kind": "rewrite", "sql_before": before})
    run = {"question": QUESTION, "choices": [{"candidates": cands, "index": 0}], "senior_turns": turns}
    return SocietyTrace(rid, "a", task, 0.0, outcomes, run, calls, len(calls))


@pytest.fixture(scope="module")
def traces() -> list[SocietyTrace]:
    return [
        # society rollout: one right junior, one wrong, one failing; the senior repaired an empty
        # query (own correct reply) and was also handed a right query (right -> right)
        _trace("r1", "train-0", {"junior_direct": RIGHT, "junior_step_by_step": WRONG, "junior_decompose": BROKEN},
               [(EMPTY, f"```sql\n{RIGHT}\n```"), (RIGHT, f"```sql\n{GOLD}\n```")]),
        # a juniors-only draw of the same question repeating the wrong query: no second case
        _trace("r2", "train-0/juniors", {"junior_direct": WRONG}, source="juniors"),
        # a rationalization rollout: its candidates were drafted with the gold SQL in view
        _trace("r3", "train-0/rationalized", {"junior_direct": "SELECT 1"}, source="rationalized"),
    ]


def test_a_wrong_query_is_a_repair_case_and_a_right_one_never_is(traces) -> None:
    cases = HierarchicalTraceAdapter().repair_cases(traces)
    by_sql = {c.sql: c for c in cases}
    assert set(by_sql) == {EMPTY, WRONG, BROKEN}  # RIGHT (a junior's, and the senior's right -> right) is absent
    assert all(not execution_match(DB, c.sql, GOLD).match for c in cases)
    assert by_sql[EMPTY].origin == "senior" and by_sql[EMPTY].own == [f"```sql\n{RIGHT}\n```"]
    assert by_sql[EMPTY].prompt == _senior_prompt(EMPTY)  # the logged prompt, as the senior saw it
    assert by_sql[WRONG].origin == by_sql[BROKEN].origin == "junior"
    assert by_sql[WRONG].prompt == _senior_prompt(WRONG)  # posed as a check: execution senior poses it
    assert by_sql[EMPTY].triggers == ["empty", "disagree"] and by_sql[BROKEN].triggers == ["error", "disagree"]
    assert by_sql[WRONG].triggers == ["disagree"]
    assert {c.task_id for c in cases} == {"train-0"}


def test_a_capped_draw_of_cases_keeps_the_seniors_inputs_and_draws_the_rest(traces) -> None:
    adapter = HierarchicalTraceAdapter()
    full = adapter.repair_cases(traces)
    one = adapter.repair_cases(traces, max_cases=1, seed=3)
    assert [c.sql for c in one] == [EMPTY]  # the senior's logged input before any junior candidate
    two = [c.sql for c in adapter.repair_cases(traces, max_cases=2, seed=3)]
    assert len(two) == 2 and two[0] == EMPTY and set(two) < {c.sql for c in full}
    assert two == [c.sql for c in adapter.repair_cases(traces, max_cases=2, seed=3)]  # the same draw again
    picked = {adapter.repair_cases(traces, max_cases=2, seed=s)[1].sql for s in range(20)}
    assert picked == {WRONG, BROKEN}  # the seed draws among the juniors' wrong candidates
    with pytest.raises(ValueError, match="n >= 1"):
        adapter.repair_cases(traces, max_cases=0)


def test_select_repair_uses_own_replies_then_draws_then_hints_and_drops_the_hint(traces) -> None:
    """Deterministic policy: unhinted draws are wrong; hinted draws give the gold query, for the
    failing query with a reply that mentions the hint (which must then stay out)."""
    seen: list[list[dict]] = []

    def sample(prompt: list[dict], k: int) -> list[str]:
        seen.append(prompt)
        user = prompt[-1]["content"]
        if "<hint>" not in user:
            return [f"```sql\n{WRONG}\n```"] * k
        if BROKEN in user:
            return [f"Using the hint: ```sql\n{GOLD}\n```"] * k
        return ["```sql\nSELECT 1\n```", f"```sql\n{GOLD}\n```"][:k]

    sel = HierarchicalTraceAdapter().select_repair(traces, sample=sample, k=2, stop=["```\n\n"])
    rows = {r["messages"][1]["content"]: r for r in sel.dataset}
    assert sel.summary["kept"] == {"total": 2, "own": 1, "sampled": 0, "hinted": 1}
    assert sel.summary["unsolved"] == 1 and sel.summary["hint_left"] == 1
    assert sel.summary["draws"] == {"unhinted": 4, "hinted": 4}  # the own-repaired case is never sampled
    own = rows[_senior_prompt(EMPTY)[1]["content"]]
    hinted = rows[_senior_prompt(WRONG)[1]["content"]]
    assert own["source"] == "own" and hinted["source"] == "hinted"
    assert hinted["messages"][:2] == _senior_prompt(WRONG)  # the prompt without its hint
    assert execution_match(DB, hinted["messages"][-1]["content"].split("```sql\n")[1].split("\n```")[0], GOLD).match
    for r in sel.dataset:
        assert not any(p.lower() in m["content"].lower() for m in r["messages"] for p in HINT_PHRASES)
    # the hinted prompt the senior was shown: the gold SQL block before its own user message
    shown = next(p for p in seen if "<hint>" in p[-1]["content"] and WRONG in p[-1]["content"])
    assert shown[-1]["content"] == hint_block(GOLD) + _senior_prompt(WRONG)[1]["content"]
    # every case is a GRPO prompt (the unsolved one too)
    assert len(sel.prompts) == 3 and set(sel.prompts["node"]) == {"senior_rewrite"}
    assert set(sel.prompts["gold_sql"]) == {GOLD} and set(sel.prompts["db_path"]) == {DB}
    with pytest.raises(ValueError, match="k >= 1"):
        HierarchicalTraceAdapter().select_repair(traces, k=0)


def test_a_juniors_candidate_is_posed_as_a_real_senior_posed_its_first_rewrite() -> None:
    """On recorded real rollouts: :func:`society.roles.repair_messages` (how a junior's wrong
    candidate is posed) gives exactly the prompt of the senior's logged first rewrites."""
    adapter = HierarchicalTraceAdapter()
    traces = [adapter.adapt(s) for _, s in load_traces(FIXTURE)]
    cases = adapter.repair_cases(traces)
    assert any(c.origin == "junior" for c in cases)
    first = 0
    for c in (c for c in cases if c.origin == "senior"):
        question = next(t.run["question"] for t in traces if t.task_id == c.task_id)
        ex = execute_summary(c.db_path, c.sql)
        posed = message_dicts(repair_messages(PROMPTS["senior_rewrite"], question, "", ex))
        if c.prompt[-1]["content"] == posed[-1]["content"]:
            first += 1
        else:  # a later visit: the reviewer's feedback, not the execution text, follows the result
            assert "Feedback: The query fails" in c.prompt[-1]["content"]
    assert first >= 1


@pytest.mark.model
def test_warm_start_then_grpo_on_smollm2(tmp_path: Path, smol_server) -> None:
    """The real chain on SmolLM2: repair pairs found by the served senior (own draws, then hinted
    draws, EX-checked), SFT of the senior's adapter on them, the prefilter's pass-rate band before
    (base) and after (warm start served as a LoRA), then one GRPO step that starts from the warm
    start's adapter: with no reward spread it must leave that adapter exactly as it was; with one,
    move it."""
    import torch
    from safetensors.torch import load_file

    from training.adapter_serving import serve_adapter
    from training.grpo import SeniorGRPOConfig, SeniorGRPOTrainer, warm_start_senior
    from training.senior_reward import SeniorReward, openai_sampler, prefilter_prompts

    adapter = HierarchicalTraceAdapter()
    traces = [adapter.adapt(s) for _, s in load_traces(FIXTURE)]
    stop = ("</sql>", "```\n\n")
    cfg = SeniorGRPOConfig(model="smollm2-135m", output_dir=str(tmp_path / "grpo"), max_steps=1, num_generations=2,
                           max_completion_length=64, max_prompt_length=1024, learning_rate=1e-4, stop=stop,
                           warm_start={"max_steps": 4, "learning_rate": 5e-4, "max_length": 1024},
                           warm_start_samples=3)

    def sampler(ep):
        return openai_sampler(ep, temperature=1.0, top_p=1.0, max_tokens=cfg.max_completion_length, stop=stop, seed=0)

    sel = adapter.select_repair(traces, sample=sampler(smol_server.endpoint()), k=cfg.warm_start_samples, stop=stop)
    print("repair selection:", json.dumps(sel.summary))
    assert sel.summary["cases"]["total"] == len(sel.prompts) >= 10
    if len(sel.dataset) == 0:
        pytest.fail(f"SmolLM2 repaired none of {len(sel.prompts)} cases even with the gold SQL shown: {sel.summary}")
    for r in sel.dataset:
        assert r["messages"][-1]["role"] == "assistant" and "<hint>" not in r["messages"][-2]["content"]
    reward = SeniorReward(stop=stop)
    before = prefilter_prompts(sel.prompts, sampler(smol_server.endpoint()), reward, 4)

    ws = warm_start_senior(sel.dataset, cfg, tmp_path / "warm")
    card = json.loads((ws.adapter_dir / "sqlsociety_adapter.json").read_text())
    assert ws.steps == 4 and card["role"] == "senior" and card["method"] == "sft-warm-start"
    warm = load_file(str(ws.adapter_dir / "adapter_model.safetensors"))
    assert max(float(v.abs().max()) for k, v in warm.items() if "lora_B" in k) > 0  # SFT moved it
    assert json.loads((ws.adapter_dir / "adapter_config.json").read_text())["r"] == cfg.lora_r
    with serve_adapter(ws.adapter_dir, "smollm2-135m", model_alias="senior_policy", parallel=4) as srv:
        after = prefilter_prompts(sel.prompts, sampler(srv.endpoint("senior_policy")), reward, 4)
    print(f"prompts with a pass rate strictly between 0 and 1 (k=4, n={before.n_in}): base {before.n_pass_band}, "
          f"warm start {after.n_pass_band}; mean pass {before.mean_pass:.3f} -> {after.mean_pass:.3f}; "
          f"rewards differ: {before.n_kept} -> {after.n_kept}")
    assert before.n_in == after.n_in == len(sel.prompts) and len(after.pass_rates) == after.n_in

    grpo_cfg = SeniorGRPOConfig(**{**cfg.__dict__, "init_adapter": str(ws.adapter_dir), "warm_start": None})
    data = after.dataset if after.n_kept else sel.prompts
    res = SeniorGRPOTrainer(grpo_cfg, data).train()
    assert res.steps == 1
    meta = json.loads((res.adapter_dir / "sqlsociety_adapter.json").read_text())
    assert meta["init_adapter"] == str(ws.adapter_dir)
    out = load_file(str(res.adapter_dir / "adapter_model.safetensors"))
    assert set(out) == set(warm)  # the same adapter, trained further
    same = all(torch.equal(out[k], warm[k]) for k in warm)
    if res.reward_std[0] == 0:
        assert same, "a group without reward spread still moved the warm-start adapter"
    else:
        assert not same, "a group with a reward spread left the warm-start adapter unchanged"


@pytest.mark.model
def test_pipeline_phase3_warm_starts_the_senior_then_runs_grpo(tmp_path: Path) -> None:
    """``sqlsociety train``'s phases 1 and 3 on the smoke profile with ``grpo.warm_start``: real
    rollouts, repair pairs from them, SFT, the prefilter before and after, GRPO from the warm start."""
    import yaml

    from training.phase_gather import gather_phase
    from training.phase_grpo import grpo_phase
    from training.pipeline import TrainingPipeline
    from training.profile import TrainConfig

    repo = Path(__file__).resolve().parent.parent
    raw = yaml.safe_load((repo / "configs" / "train" / "smoke.yaml").read_text())
    raw["society_config"] = str(repo / "configs" / "smoke.yaml")
    raw["gather"].update(limit=4, n_runners=1, rationalize=False)
    raw["eval"].update(limit=1, junior_limit=0, senior_limit=0)
    # room for a copied gold query (SmolLM2 repairs by copying the hint) and k=5 draws; on this smoke
    # gather SmolLM2 still repaired none of 9 queries (2026-12-05, at temperature 1.0 and at 0.5), so
    # the run took the fallback branch: the SFT branch is exercised by test_warm_start_then_grpo_on_smollm2
    raw["grpo"].update(backend="trl", max_steps=1, num_generations=2, max_completion_length=96, prefilter_samples=2,
                       temperature=0.5, warm_start={"max_steps": 2, "max_length": 1024}, warm_start_samples=5,
                       warm_start_cases=6)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    lines: list[str] = []
    pipe = TrainingPipeline(TrainConfig.load(tmp_path / "p.yaml"), tmp_path / "run", phases={1, 3},
                            echo=lines.append)
    gather_phase(pipe.resolve(), lines.append)
    out = grpo_phase(pipe.resolve(), lines.append)
    print("\n".join(lines))
    d = tmp_path / "run" / "phases" / "3-grpo"
    warm = out["warm_start"]
    sel = json.loads((d / "repair_selection.json").read_text())
    assert warm["selection"] == sel and 1 <= sel["cases"]["total"] <= 6  # warm_start_cases caps the draw
    assert warm["prompts"] >= sel["cases"]["total"]  # the repair prompts joined the GRPO prompts
    base = json.loads((d / "prefilter_base.json").read_text())
    assert base["n_in"] == warm["prompts"] and 0 <= base["n_pass_band"] <= base["n_kept"] <= base["n_in"]
    meta = json.loads((d / "adapter" / "sqlsociety_adapter.json").read_text())
    if sel["kept"]["total"]:
        assert warm["steps"] == 2 and Path(warm["adapter"]).is_dir()
        assert meta["init_adapter"] == warm["adapter"]
        assert out["prefilter"] == warm["prefilter_warm"] and out["prefilter"]["n_in"] == base["n_in"]
        assert any("before," in line and "after" in line for line in lines)
    else:  # nothing repaired: GRPO starts from a fresh LoRA, as the log says
        assert meta["init_adapter"] is None and any("no repair pair" in line for line in lines)
    assert out["steps"] == 1 and (d / "adapter" / "adapter_model.safetensors").is_file()

    # resumed after it stopped: the repair selection and the base prefilter are kept, not redrawn
    from training.phase_grpo import STEP_FILES

    lines.clear()
    again = grpo_phase(pipe.resolve(), lines.append)
    assert any("kept the repair selection and the base senior's prefilter" in line for line in lines), lines
    assert again["warm_start"]["selection"] == warm["selection"]
    assert again["warm_start"]["prefilter_base"] == warm["prefilter_base"]
    # a run stopped after a selection that repaired one query (SmolLM2 repairs none here, so the pair
    # is written by hand, in the selection's own columns): the warm start and the prefilter after it
    # run, then a second resume keeps both (the adapter's file untouched)
    import datasets

    from training.phase_grpo import _save_dataset

    reply = "```sql\nSELECT count(*) FROM singer\n```"
    messages = [{"role": "user", "content": "Rewrite: SELECT count(*) FROM singr"},
                {"role": "assistant", "content": reply}]
    pair = datasets.Dataset.from_list([{"messages": messages, "task_id": "t0", "origin": "senior", "source": "own",
                                        "triggers": ["error"]}])
    _save_dataset(pair, d / "repair_dataset.jsonl")
    lines.clear()
    third = grpo_phase(pipe.resolve(), lines.append)
    ws = third["warm_start"]
    assert ws["rows"] == 1 and ws["steps"] == 2 and (d / "warm_start" / STEP_FILES["warm_start"]).is_file()
    assert (d / STEP_FILES["prefilter"]).is_file() and third["prefilter"] == ws["prefilter_warm"]
    stamp = (d / "warm_start" / "adapter_model.safetensors").stat().st_mtime_ns
    lines.clear()
    fourth = grpo_phase(pipe.resolve(), lines.append)
    assert sum("phase 3: kept" in line for line in lines) == 3, lines
    assert (d / "warm_start" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert fourth["warm_start"]["losses"] == json.loads(json.dumps(ws["losses"]))
    assert fourth["prefilter"] == third["prefilter"]
    # a second run whose phase-1 store was copied from this one (as training.reuse.copy_store leaves it):
    # the repair selection and the base prefilter are taken from here, not drawn again, and the report
    # lists them; another key (other grpo settings) takes nothing
    import sqlite3

    from evaluation.report_content import reused_stages
    from training.phase_grpo import reused_select

    run2 = tmp_path / "run2"
    (run2 / "phases" / "1-gather").mkdir(parents=True)
    src, dst = sqlite3.connect(tmp_path / "run" / "store.sqlite"), sqlite3.connect(run2 / "store.sqlite")
    src.backup(dst)
    src.close(), dst.close()
    copied = {"source_run": str(tmp_path / "run"), "n": 4}
    (run2 / "phases" / "1-gather" / "reused.json").write_text(json.dumps(copied))
    source_key = json.loads((d / STEP_FILES["select"]).read_text())["key"]
    assert reused_select(run2, run2 / "phases" / "3-grpo", "another key") is None
    # a phase 1 that stored more rollouts than it copied has other wrong queries: nothing taken
    (run2 / "phases" / "1-gather" / "done.json").write_text(json.dumps({"stored_succeeded": 5}))
    assert reused_select(run2, run2 / "phases" / "3-grpo", source_key) is None
    (run2 / "phases" / "1-gather" / "done.json").unlink()  # phase 1 not marked done here: no count to compare
    lines.clear()
    second = grpo_phase(TrainingPipeline(TrainConfig.load(tmp_path / "p.yaml"), run2, phases={1, 3},
                                         echo=lines.append).resolve(), lines.append)
    assert any("prefilter reused from" in line for line in lines), lines
    assert not any("phase 3: kept" in line for line in lines), lines
    assert second["warm_start"]["reused_from"] == str(tmp_path / "run")
    assert second["warm_start"]["selection"] == warm["selection"]
    assert second["warm_start"]["prefilter_base"] == warm["prefilter_base"]
    assert second["warm_start"]["rows"] == 1  # the source's repair pair, copied
    [listed] = [r for r in reused_stages(run2) if r["unit"] == "wrong queries"]
    assert listed["source_run"] == str(tmp_path / "run") and listed["n"] == sel["cases"]["total"]
    # other settings: nothing kept, the selection runs again
    raw["grpo"]["temperature"] = 0.6
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    lines.clear()
    grpo_phase(TrainingPipeline(TrainConfig.load(tmp_path / "p.yaml"), tmp_path / "run", phases={1, 3},
                                echo=lines.append).resolve(), lines.append)
    assert any("was made from other settings or data" in line for line in lines), lines
    assert not any("phase 3: kept" in line for line in lines), lines
