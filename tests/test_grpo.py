"""Phase 3: the senior's verifiable reward on real databases, and a tiny real GRPO run.

Senior prompts are built the way the society builds them (``society.prompts`` senior_rewrite /
senior_check, real schema, real execution feedback of a real wrong query), on Spider train
questions; the reward executes SQL on the question's SQLite database.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from society.llm import cut_at_stop
from society.prompts import PROMPTS
from society.toolkit import execute_summary
from tools.schema import schema_prompt
from tools.spider import load_examples
from training.grpo import SeniorGRPOConfig, SeniorGRPOTrainer
from training.grpo_verl import load_verl_config
from training.senior_reward import SeniorReward
from training.sft import bf16_support

SMOL = "smollm2-135m"


def _wrong(gold: str) -> str:
    return gold + " LIMIT 0"  # runs, returns nothing: wrong unless gold is empty too


def senior_rows(n: int, max_schema_chars: int = 600) -> list[dict]:
    rows = []
    for e in load_examples(split="train", limit=400):
        schema = schema_prompt(e.db_path, compact=True, sample_rows=0)
        if len(schema) > max_schema_chars:
            continue
        wrong = _wrong(e.gold_sql)
        es = execute_summary(str(e.db_path), wrong)
        for node in ("senior_rewrite", "senior_check"):
            msgs = PROMPTS[node].render(
                question=e.question, schema=schema, sql=wrong, execution=es.as_text(), feedback=""
            )
            prompt = [{"role": "system" if m.type == "system" else "user", "content": str(m.content)} for m in msgs]
            rows.append({"prompt": prompt, "gold_sql": e.gold_sql, "db_path": str(e.db_path), "node": node,
                         "question": e.question, "task_id": e.id})
        if len(rows) >= 2 * n:
            break
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    r = senior_rows(3)
    assert len(r) == 6
    return r


def test_reward_rewrite_and_check(rows):
    reward = SeniorReward()
    rw = next(r for r in rows if r["node"] == "senior_rewrite")
    ck = next(r for r in rows if r["node"] == "senior_check")
    good = f"```sql\n{rw['gold_sql']}\n```"
    bad = f"```sql\n{_wrong(rw['gold_sql'])}\n```"
    vals = reward(
        prompts=[rw["prompt"]] * 3,
        completions=[[{"role": "assistant", "content": t}] for t in (good, bad, "no idea")],
        gold_sql=[rw["gold_sql"]] * 3,
        db_path=[rw["db_path"]] * 3,
        node=["senior_rewrite"] * 3,
    )
    assert vals[0] == pytest.approx(1.0) and vals[1] < 1.0 and vals[2] < vals[1]
    assert [r["ex"] for r in reward.records] == [1.0, 0.0, 0.0]
    # the check prompt shows the wrong query: INCORRECT is the right verdict
    verdicts = ["The filter empties the result. THE QUERY IS INCORRECT.", "Looks fine. THE QUERY IS CORRECT.", "maybe"]
    vals = reward(prompts=[ck["prompt"]] * 3, completions=verdicts, gold_sql=[ck["gold_sql"]] * 3,
                  db_path=[ck["db_path"]] * 3, node=["senior_check"] * 3)
    assert vals == [1.0, 0.0, 0.0]


def test_reward_scores_the_text_the_served_senior_would_return(rows):
    """TRL samples past the senior's stop strings; with ``stop`` the reward reads what the served
    senior (llama.cpp, stop=["</sql>", "```\\n\\n"]) would have returned: the first block."""
    rw = next(r for r in rows if r["node"] == "senior_rewrite")
    text = f"```sql\n{rw['gold_sql']}\n```\n\nAlternatively:\n```sql\n{_wrong(rw['gold_sql'])}\n```"
    args = dict(prompts=[rw["prompt"]], completions=[text], gold_sql=[rw["gold_sql"]], db_path=[rw["db_path"]],
                node=["senior_rewrite"])
    assert SeniorReward()(**args)[0] < 1.0  # whole text: the last block (wrong) is scored
    assert SeniorReward(stop=["</sql>", "```\n\n"])(**args)[0] == pytest.approx(1.0)
    assert cut_at_stop("a</sql>b```\n\nc", ["```\n\n", "</sql>"]) == "a"
    assert cut_at_stop("abc", None) == "abc" and cut_at_stop("abc", ["x"]) == "abc"
    # the closing marker the server drops is put back, as the society does for served replies
    assert cut_at_stop("<sql>SELECT 1</sql> because", ["</sql>"]) == "<sql>SELECT 1</sql>"
    with pytest.raises(ValueError, match="stop"):
        SeniorGRPOConfig(stop="</sql>")


def test_grpo_tiny_real_run(rows, tmp_path):
    """One real GRPO step trains the adapter exactly when its group has an advantage to follow.

    PEFT starts every ``lora_B`` at zero (the adapter is a no-op until a step moves it). GRPO's
    advantage is each reward minus the group's mean, so a group of equal rewards gives no gradient
    (beta = 0: no KL term). Whether SmolLM2's sampled rewrites earn different partial credit depends
    on the CPU build's sampling, so the step is tried with up to three seeds and the first group with
    a spread is judged: its saved ``lora_B`` weights must have moved and the loaded adapter must change
    the base model's logits. If no seed gave a spread, the converse must hold: nothing moved. (On this
    project's 2-core AMD build seed 0 gives a spread, so the first branch is what runs here.)
    """
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from training.checkpoints import load_for_training

    for seed in range(3):
        cfg = SeniorGRPOConfig(model=SMOL, output_dir=str(tmp_path / f"grpo{seed}"), max_steps=1, num_generations=4,
                               max_completion_length=48, max_prompt_length=640, learning_rate=1e-4, seed=seed)
        res = SeniorGRPOTrainer(cfg, rows[:2]).train()
        assert res.steps == 1 and len(res.rewards) == 1 and math.isfinite(res.rewards[0])
        assert 0.0 <= res.rewards[0] <= 1.0
        assert (res.adapter_dir / "adapter_config.json").is_file()
        assert (res.adapter_dir / "adapter_model.safetensors").is_file()
        m = json.loads(res.metrics_path.read_text())
        assert m["steps"] == 1 and m["completions_scored"] == 4 and m["prompts"] == 2
        # the CPU's native bf16 is used where it has it (read at run time), as in SFT
        assert m["precision"] == ("bf16" if bf16_support()[0] else "fp32") and m["precision_reason"]
        if res.reward_std[0] > 0:
            break

    saved = load_file(str(res.adapter_dir / "adapter_model.safetensors"))
    b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert b and {k.replace("lora_B", "lora_A") for k in b} <= set(saved)
    moved = max(float(v.abs().max()) for v in b.values())
    if res.reward_std[0] == 0:
        assert moved == 0, "equal rewards (no advantage) still moved the adapter"
        return
    assert moved > 0, "every lora_B is still 0: a group with an advantage changed nothing"

    base, tok = load_for_training(SMOL)
    ids = tok("SELECT count(*) FROM singer WHERE", return_tensors="pt")
    with torch.no_grad():
        before = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, str(res.adapter_dir))
        after = tuned(**ids).logits
        with tuned.disable_adapter():
            assert torch.equal(tuned(**ids).logits, before)  # the same base underneath
    assert not torch.equal(after, before)  # the saved adapter is not the no-op it started as


def test_grpo_generation_stops_at_the_stop_strings(rows, tmp_path):
    """With ``stop``, TRL's sampling ends at the first stop string: no completion runs on past it.

    The stop string is a newline, which the senior's reply (a fenced SQL block) reaches within its
    first tokens; without stopping, 32 tokens run several lines further. At most one character may
    follow it, from a token holding two newlines.
    """
    cfg = SeniorGRPOConfig(model=SMOL, output_dir=str(tmp_path / "grpo"), max_steps=1, num_generations=4,
                           max_completion_length=32, max_prompt_length=640, learning_rate=1e-4, stop=("\n",),
                           bf16=False)
    trainer = SeniorGRPOTrainer(cfg, rows[:1])
    trainer.train()
    recs = trainer.reward.records
    assert len(recs) == 4
    assert max(r["after_stop_chars"] for r in recs) <= 1, recs
    m = json.loads((tmp_path / "grpo" / "grpo_metrics.json").read_text())
    assert m["precision"] == "fp32" and m["precision_reason"].startswith("the profile sets bf16: False")
    assert m["completions_with_text_after_stop"] == sum(r["after_stop_chars"] > 0 for r in recs)
    logged = next(h for h in m["log_history"] if "completions/min_length" in h)
    assert logged["completions/min_length"] < 32  # a completion stopped before the length limit: not vacuous


def test_grpo_input_errors(rows, tmp_path):
    cfg = SeniorGRPOConfig(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="lacks column"):
        SeniorGRPOTrainer(cfg, [{"prompt": "p", "gold_sql": "SELECT 1"}])
    with pytest.raises(ValueError, match="does not exist"):
        SeniorGRPOTrainer(cfg, [dict(rows[0], db_path=str(tmp_path / "nope.sqlite"))])
    with pytest.raises(ValueError, match="node value"):
        SeniorGRPOTrainer(cfg, [dict(rows[0], node="junior_draft")])
    with pytest.raises(ValueError, match="num_generations"):
        SeniorGRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match=r"warm_start: unknown key\(s\) \['max_stepz'\]"):
        SeniorGRPOConfig(warm_start={"max_stepz": 2})
    with pytest.raises(ValueError, match="warm_start.max_steps: expected an integer, got 'two'"):
        SeniorGRPOConfig(warm_start={"max_steps": "two"})
    with pytest.raises(ValueError, match="warm_start_samples"):
        SeniorGRPOConfig(warm_start={}, warm_start_samples=0)
    with pytest.raises(ValueError, match="warm_start_cases = 0"):
        SeniorGRPOConfig(warm_start={}, warm_start_cases=0)
    with pytest.raises(ValueError, match="adapter_config.json"):
        SeniorGRPOConfig(init_adapter=str(tmp_path))
    from training.grpo import warm_start_sft_config

    sft = warm_start_sft_config(SeniorGRPOConfig(lora_r=4, warm_start={"max_steps": 3}), tmp_path / "w")
    assert (sft.lora_r, sft.max_steps, sft.output_dir) == (4, 3, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="no warm start"):
        warm_start_sft_config(SeniorGRPOConfig(), tmp_path / "w")
    with pytest.raises(ValueError, match="longer than max_prompt_length"):
        SeniorGRPOTrainer(
            SeniorGRPOConfig(output_dir=str(tmp_path), max_prompt_length=8, max_steps=1), rows[:2]
        ).train()


def test_verl_config_file(tmp_path):
    cfg = load_verl_config(model_path="/models/qwen", overrides={"trainer": {"total_epochs": 2}})
    assert cfg["algorithm"]["adv_estimator"] == "grpo"
    assert cfg["actor_rollout_ref"]["model"]["path"] == "/models/qwen"
    assert cfg["actor_rollout_ref"]["model"]["lora_rank"] == 0  # full-parameter: see refuse_adapter_rollouts
    assert cfg["trainer"]["total_epochs"] == 2 and cfg["trainer"]["n_gpus_per_node"] == 1
    bad = tmp_path / "ppo.yaml"
    bad.write_text("algorithm:\n  adv_estimator: gae\n")
    with pytest.raises(ValueError, match="grpo"):
        load_verl_config(bad)


def test_verl_agent_routes_the_senior_to_the_policy_model():
    """The GPU path's wiring, checked on the CPU: VERL's ``main_llm`` resource becomes the
    endpoint of the senior's alias only (other aliases keep theirs)."""
    import agentlightning as agl

    from society.config import SocietyConfig
    from training.grpo_verl import bind_policy_resource, senior_verl_agent

    cfg = SocietyConfig.load("configs/society.yaml")
    others = {a: ("http://127.0.0.1:9/v1", "base") for a in cfg.models}
    agent = senior_verl_agent(cfg, senior_alias="senior", endpoints=others)
    assert isinstance(agent, agl.LitAgent)
    main = agl.LLM(endpoint="http://127.0.0.1:7777/v1", model="policy")
    bound = agent.config_for(bind_policy_resource({"main_llm": main}, "senior"))
    assert bound.models["senior"].base_url == "http://127.0.0.1:7777/v1" and bound.models["senior"].model == "policy"
    assert bound.models["juniors"].base_url == "http://127.0.0.1:9/v1"


def test_backend_auto_picks_verl_only_with_cuda_and_verl():
    import importlib.util

    import torch

    from training.run_plan import resolve_backend

    gpu = torch.cuda.is_available() and importlib.util.find_spec("verl") is not None
    assert resolve_backend("auto") == ("verl" if gpu else "trl")
    assert resolve_backend("trl") == "trl"
    if not gpu:
        with pytest.raises(ValueError, match="CUDA"):
            resolve_backend("verl")
    with pytest.raises(ValueError, match="'ppo'"):
        resolve_backend("ppo")


def test_prefilter_keeps_only_prompts_whose_rewards_differ(rows):
    """Dynamic sampling up front: a deterministic policy (its completions fixed per prompt, so the
    kept set is known) scored by the real reward on the real databases."""
    from datasets import Dataset

    from training.senior_reward import prefilter_prompts

    rewrites = [r for r in rows if r["node"] == "senior_rewrite"]
    ds = Dataset.from_list(rewrites)
    answers = {r["task_id"]: r["gold_sql"] for r in rewrites}
    mixed = rewrites[0]["task_id"]  # gets one right and one wrong rewrite: rewards differ -> kept

    def sample(prompt, k):
        task = next(r["task_id"] for r in rewrites if r["prompt"] == prompt)
        gold = answers[task]
        good, bad = f"<sql>{gold}</sql>", f"<sql>{_wrong(gold)}</sql>"
        return [good, bad][:k] if task == mixed else [bad] * k  # always wrong elsewhere: dropped

    res = prefilter_prompts(ds, sample, SeniorReward(), k=2)
    assert (res.n_in, res.n_kept, res.kept_ids) == (len(rewrites), 1, [0])
    assert res.dataset[0]["task_id"] == mixed and 0.0 <= res.mean_reward <= 1.0
    # pass rate (EX of the rewrites): 1/2 on the mixed prompt -> the one prompt in the band (0, 1)
    assert res.pass_rates == [0.5] + [0.0] * (len(rewrites) - 1) and res.n_pass_band == 1
    assert res.to_json()["n_pass_band"] == 1 and res.to_json()["n_never_pass"] == len(rewrites) - 1
    with pytest.raises(ValueError, match="k >= 2"):
        prefilter_prompts(ds, sample, SeniorReward(), k=1)
    with pytest.raises(ValueError, match="prefilter_samples"):
        SeniorGRPOConfig(prefilter_samples=1)


def test_prefilter_stops_once_it_has_kept_what_grpo_needs(rows):
    """With ``need``, prompts are tried in a seeded random order and sampling stops once ``need`` are
    kept: the prompts never tried are not sampled at all. A deterministic policy (right then wrong on
    every second prompt of the list, always wrong on the others) scored by the real reward."""
    from datasets import Dataset

    from training.senior_reward import PrefilterResult, prefilter_prompts

    def copy(r: dict, j: int) -> dict:  # the same case asked again, its prompt told apart
        last = {**r["prompt"][-1], "content": f"{r['prompt'][-1]['content']} (copy {j})"}
        return {**r, "task_id": f"{r['task_id']}-{j}", "prompt": [*r["prompt"][:-1], last]}

    many = [copy(r, j) for j in range(4) for r in rows if r["node"] == "senior_rewrite"]
    ds = Dataset.from_list(many)
    mixed = {i for i in range(len(many)) if i % 2 == 0}
    asked: list[int] = []

    def sample(prompt, k):
        i = next(i for i, r in enumerate(many) if r["prompt"] == prompt)
        asked.append(i)
        good, bad = f"<sql>{many[i]['gold_sql']}</sql>", f"<sql>{_wrong(many[i]['gold_sql'])}</sql>"
        return [good, bad][:k] if i in mixed else [bad] * k

    full = prefilter_prompts(ds, sample, SeniorReward(), k=2, max_workers=1)
    assert full.tried_ids is None and full.n_tried == len(many) and set(full.kept_ids) == mixed
    asked.clear()
    res = prefilter_prompts(ds, sample, SeniorReward(), k=2, max_workers=1, need=2, seed=3)
    assert res.n_kept == 2 and set(res.kept_ids) <= mixed and res.n_in == len(many)
    assert res.n_tried == len(asked) < len(many) and res.tried_ids == asked  # the rest never sampled
    assert len(res.pass_rates) == res.n_tried and res.to_json()["n_tried"] == res.n_tried
    again = PrefilterResult.from_record(res.to_record(), ds)  # a resumed phase 3 rebuilds it
    assert again.tried_ids == res.tried_ids and again.dataset["task_id"] == res.dataset["task_id"]
    asked.clear()
    assert prefilter_prompts(ds, sample, SeniorReward(), k=2, max_workers=1, need=2, seed=3).tried_ids == res.tried_ids
    with pytest.raises(ValueError, match="need = 0"):
        prefilter_prompts(ds, sample, SeniorReward(), k=2, need=0)
    empty = prefilter_prompts(ds.select([]), sample, SeniorReward(), k=2)
    assert (empty.n_in, empty.n_kept, empty.n_tried) == (0, 0, 0)


def test_grpo_prompts_needed_doctests():
    """How many prompts the prefilter looks for: ``training.phase_grpo.grpo_prompts_needed``'s examples."""
    import doctest

    from training import phase_grpo

    assert doctest.testmod(phase_grpo).attempted >= 2 and doctest.testmod(phase_grpo).failed == 0


@pytest.mark.model
def test_openai_sampler_draws_k_completions_from_the_served_model(rows, smol_server):
    from training.senior_reward import openai_sampler

    sample = openai_sampler(smol_server.endpoint(), temperature=1.0, top_p=1.0, max_tokens=16, stop=["</sql>"])
    texts = sample(rows[0]["prompt"], 3)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert all("</sql>" not in t for t in texts)  # the server stopped at the stop string


def test_phase3_key_does_not_depend_on_the_checkout_path(tmp_path):
    """The key of phase 3's steps before GRPO is the same from any checkout (``verl_config`` is an
    absolute path into it) and wherever the steps write; a setting the steps read changes it."""
    from types import SimpleNamespace

    from evaluation.metrics.rewards import RewardConfig
    from training.phase_grpo import phase3_key

    plan = SimpleNamespace(cfg=SimpleNamespace(reward=RewardConfig()))
    rl = SimpleNamespace(prompts={"prompt": [[{"role": "user", "content": "Rewrite: SELECT 1"}]]})
    here = SeniorGRPOConfig(max_steps=12, output_dir=str(tmp_path / "a"))
    elsewhere = SeniorGRPOConfig(max_steps=12, output_dir=str(tmp_path / "b"),
                                 verl_config="/elsewhere/configs/verl_senior.yaml", n_runners=8)
    assert phase3_key(plan, here, rl) == phase3_key(plan, elsewhere, rl)
    assert phase3_key(plan, here, rl) != phase3_key(plan, SeniorGRPOConfig(max_steps=12, warm_start_samples=3), rl)


def test_databases_here_points_another_machines_paths_at_this_data_dir(rows):
    """A repair selection taken from another run holds that machine's absolute database paths; each
    is pointed at the database of the same name here, and a path that exists is kept."""
    from datasets import Dataset

    from training.phase_grpo import databases_here

    here = rows[0]["db_path"]
    name = Path(here).stem
    ds = Dataset.from_list([{"db_path": f"/elsewhere/src-0/data/spider/database/{name}/{name}.sqlite"},
                            {"db_path": here}])
    out = databases_here(ds)["db_path"]
    assert all(Path(p).is_file() for p in out) and out[1] == here and Path(out[0]).stem == name
    assert databases_here(Dataset.from_list([{"messages": "x"}]))["messages"] == ["x"]
