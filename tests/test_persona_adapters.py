"""One LoRA adapter per junior persona (``junior_adapters: per_persona``, training/phase_sft.py).

Phase 2 trains one adapter per persona on that persona's own admitted conversations; the one
llama-server of the juniors' base model serves every adapter, each junior's requests naming its
own. The SFT rows come from hand-built traces through the real trace adapter's selection
(:meth:`HierarchicalTraceAdapter.select_sft`); the training (TRL LoRA SFT on SmolLM2-135M), the
GGUF export, the llama-server and its per-request LoRA choice are real.
"""

from __future__ import annotations

import json
import os
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("agentlightning")
pytest.importorskip("datasets")

from training.adapter import HierarchicalTraceAdapter, LLMCall, SocietyTrace  # noqa: E402
from training.phase_sft import train_junior_adapter, train_juniors_per_persona  # noqa: E402
from training.pipeline import TrainingPipeline  # noqa: E402
from training.profile import TrainConfig  # noqa: E402
from training.role_aliases import (  # noqa: E402
    JUNIOR_ALIAS,
    junior_mode,
    junior_personas,
    persona_alias,
    role_split_config,
    route_society,
    trained_adapters,
)

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "You are an expert on SQLite. Schema:\nCREATE TABLE head (head_id INT, name TEXT, age INT)"
QUESTION = "How many heads are older than 56?"
#: what each persona is trained to answer (its own format), so the adapters differ
REPLIES = {
    "direct": "```sql\nSELECT count(*) FROM head WHERE age > 56\n```",
    "step_by_step": "<reasoning>Filter head by age, then count.</reasoning>\n<sql>SELECT count(head_id) FROM head "
                    "WHERE head.age > 56</sql>",
}


def _profile(mode: str, **over) -> TrainConfig:
    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(REPO / "configs" / "smoke.yaml")
    cfg["junior_adapters"] = mode
    cfg["sft"] = {"max_steps": 8, "per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 5e-3,
                  "lora_r": 8, "lora_alpha": 16}
    cfg.update(over)
    return TrainConfig.model_validate(cfg)


def _traces() -> list[SocietyTrace]:
    """Four rollouts: junior_direct and junior_step_by_step each right on their own (own EX 1) with
    their persona's reply; junior_decompose always wrong (so it has no row)."""
    out = []
    for k in range(4):
        calls, outcomes = [], {"task_id": f"train-{k}", "juniors": [], "source": "society", "agent": "society"}
        for i, (inst, reply, ex) in enumerate((("junior_direct", REPLIES["direct"], 1),
                                               ("junior_step_by_step", REPLIES["step_by_step"], 1),
                                               ("junior_decompose", "SELECT 1", 0))):
            persona = inst.removeprefix("junior_")
            outcomes["juniors"].append(inst)
            outcomes[f"junior.{inst}.ex"] = ex
            outcomes[f"junior.{inst}.persona"] = persona
            calls.append(LLMCall(span_id=f"s{k}{i}", sequence_id=i, role="junior", role_instance=inst, node="draft",
                                 label=f"junior:{persona}", model="m", response=reply + " " * k,
                                 messages=[{"role": "system", "content": SYSTEM},
                                           {"role": "user", "content": f"Question: {QUESTION}"}]))
        out.append(SocietyTrace(rollout_id=f"r{k}", attempt_id="a", task_id=f"train-{k}", reward=1.0,
                                outcomes=outcomes, run={}, llm_calls=calls, n_spans=len(calls)))
    return out


def test_per_persona_aliases_and_the_mode_a_finished_phase_2_recorded(tmp_path: Path) -> None:
    from society.config import SocietyConfig

    society = SocietyConfig.load(REPO / "configs" / "smoke.yaml")
    per = role_split_config(society, per_persona=True)
    juniors = {r.name: r.model for r in per.roles if r.type == "junior"}
    assert juniors == {f"junior_{p}": persona_alias(p) for p in ("direct", "step_by_step", "decompose")}
    assert all(per.models[a] == society.models["juniors"] for a in juniors.values())
    assert role_split_config(per, per_persona=True) == per  # idempotent
    shared = role_split_config(society)
    assert {r.model for r in shared.roles if r.type == "junior"} == {JUNIOR_ALIAS}
    assert junior_personas(per) == ["direct", "step_by_step", "decompose"]

    profile = _profile("per_persona")
    routed = route_society(society, {2: None}, profile.junior_adapters)
    assert junior_mode({2: None}, profile.junior_adapters) == "per_persona"
    assert {r.model for r in routed.roles if r.type == "junior"} == {persona_alias(p) for p in REPLIES} | {
        persona_alias("decompose")}
    # a resumed run follows what phase 2 trained, whatever the profile says now
    done = {2: {"adapter": str(tmp_path / "a"), "rows": 3}}  # written before the choice existed
    assert junior_mode(done, profile.junior_adapters) == "shared"
    assert trained_adapters(done) == {JUNIOR_ALIAS: tmp_path / "a"}
    assert {r.model for r in route_society(society, done, profile.junior_adapters).roles
            if r.type == "junior"} == {JUNIOR_ALIAS}
    done = {2: {"junior_adapters": "per_persona", "adapter": None, "adapters": {
        "direct": {"adapter": str(tmp_path / "d")}, "decompose": {"adapter": None, "rows": 0}}}}
    assert trained_adapters(done) == {persona_alias("direct"): tmp_path / "d"}


def _chat(ep, max_tokens: int = 24) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question: {QUESTION}"}]
    payload = {"model": ep.model, "temperature": 0, "max_tokens": max_tokens, "repeat_penalty": 1.0,
               "messages": messages, **dict(ep.extra_body or {})}
    req = urllib.request.Request(ep.base_url + "/chat/completions", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {ep.api_key}"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


@pytest.mark.model
def test_each_persona_is_trained_and_served_its_own_adapter_and_shared_still_works(tmp_path: Path) -> None:
    sel = HierarchicalTraceAdapter().select_sft(_traces())
    assert sorted(set(sel.dataset["persona"])) == ["direct", "step_by_step"]
    msgs: list[str] = []
    pipe = TrainingPipeline(_profile("per_persona", llm_proxy=False), tmp_path / "per", phases={2}, echo=msgs.append)
    info = train_juniors_per_persona(pipe.resolve(), sel.dataset, pipe.dir.phase_dir(2), msgs.append)
    ad = info["adapters"]
    assert (ad["direct"]["rows"], ad["step_by_step"]["rows"], ad["decompose"]["rows"]) == (4, 4, 0)
    assert ad["decompose"]["adapter"] is None and any("(decompose): no conversation" in m for m in msgs)
    assert ad["direct"]["adapter"] != ad["step_by_step"]["adapter"]
    assert all(Path(ad[p]["adapter_gguf"]).is_file() for p in REPLIES)
    # phase 2 stopped after its adapters finished: a resumed one keeps each adapter (same rows and
    # settings) untouched; other rows into the same directory are trained again
    stamps = {p: Path(ad[p]["adapter_gguf"]).stat().st_mtime_ns for p in REPLIES}
    said: list[str] = []
    kept = train_juniors_per_persona(pipe.resolve(), sel.dataset, pipe.dir.phase_dir(2), said.append)
    assert kept == json.loads(json.dumps(info))  # as recorded (JSON: tuples read back as lists)
    assert sum("kept the adapter finished before the stop" in m for m in said) == 2, said
    assert {p: Path(ad[p]["adapter_gguf"]).stat().st_mtime_ns for p in REPLIES} == stamps
    direct_rows = [i for i, p in enumerate(sel.dataset["persona"]) if p == "direct"]
    fewer = train_junior_adapter(pipe.resolve(), sel.dataset.select(direct_rows[1:]),
                                 Path(ad["direct"]["adapter"]), "phase 2 SFT (direct)", said.append)
    assert fewer["rows"] == 3, fewer
    assert any("was made from other settings or data; the adapter runs again" in m for m in said), said
    info = train_juniors_per_persona(pipe.resolve(), sel.dataset, pipe.dir.phase_dir(2), said.append)
    assert info["adapters"]["direct"]["rows"] == 4  # the first rows again: trained again, not kept
    pipe.dir.mark_done(2, {**info, "selection": sel.summary})

    plan = pipe.resolve().with_done(2, pipe.dir.done(2))
    with ExitStack() as stack:
        eps = plan.serve(stack, plan.society)
        aliases = {p: persona_alias(p) for p in ("direct", "step_by_step", "decompose")}
        assert len({eps[a].base_url for a in aliases.values()}) == 1  # one llama-server serves every junior
        loaded = json.loads(urllib.request.urlopen(eps[aliases["direct"]].base_url[:-3] + "/lora-adapters").read())
        path_of = {a["id"]: a["path"] for a in loaded}
        chosen = {}
        for p, alias in aliases.items():
            scales = {x["id"]: x["scale"] for x in eps[alias].extra_body["lora"]}
            on = [i for i, s in scales.items() if s > 0]
            chosen[p] = path_of[on[0]] if on else None
            assert len(on) <= 1
        # each trained persona's requests apply its own GGUF and no other; the untrained persona the base
        assert chosen == {"direct": str(Path(ad["direct"]["adapter_gguf"]).resolve()),
                          "step_by_step": str(Path(ad["step_by_step"]["adapter_gguf"]).resolve()),
                          "decompose": None}
        outs = {p: _chat(eps[a]) for p, a in aliases.items()}
    # ... and answer differently: each its own trained format, the base model neither
    assert outs["direct"].startswith("```sql"), outs
    assert outs["step_by_step"].startswith("<reasoning>"), outs
    assert not outs["decompose"].startswith(("```sql\nSELECT count(*) FROM head", "<reasoning>Filter")), outs

    # shared: one adapter on every junior's rows, every junior's requests name the same one
    shared = TrainingPipeline(_profile("shared", llm_proxy=False), tmp_path / "shared", phases={2},
                              echo=msgs.append)
    one = train_junior_adapter(shared.resolve(), sel.dataset, shared.dir.phase_dir(2) / "adapter", "phase 2 SFT",
                               msgs.append)
    assert one["rows"] == 8
    shared.dir.mark_done(2, {"junior_adapters": "shared", **one})
    plan = shared.resolve().with_done(2, shared.dir.done(2))
    assert {r.model for r in plan.society.roles if r.type == "junior"} == {JUNIOR_ALIAS}
    with ExitStack() as stack:
        eps = plan.serve(stack, plan.society)
        loaded = json.loads(urllib.request.urlopen(eps[JUNIOR_ALIAS].base_url[:-3] + "/lora-adapters").read())
        assert [a["path"] for a in loaded] == [str(Path(one["adapter_gguf"]).resolve())]
        assert [x["scale"] for x in eps[JUNIOR_ALIAS].extra_body["lora"]] == [1.0]
        out = _chat(eps[JUNIOR_ALIAS])
    assert out.startswith(("```sql", "<reasoning>")), out

    # compare_shared_adapter: the per-persona run's juniors judged once more, all on the shared adapter
    # (the same rows); the routed society keeps its per-persona adapters
    from evaluation.role_effects import SHARED_STAGE, role_effects
    from training.phase_sft import SHARED_COMPARISON
    from training.stages import evaluate_shared_comparison

    per = pipe.resolve()
    assert evaluate_shared_comparison(per.with_done(2, pipe.dir.done(2)), msgs.append) is None  # none trained
    plan = per.with_done(2, {**pipe.dir.done(2), SHARED_COMPARISON: one})
    assert {r.model for r in plan.society.roles if r.type == "junior"} == set(aliases.values())
    summary = evaluate_shared_comparison(plan, msgs.append)
    recs = [json.loads(x) for x in pipe.dir.role_eval_path(SHARED_STAGE).read_text().splitlines()]
    assert summary["n"] == len(recs) == len(plan.juniors) > 0
    assert all(r["agent"] == "juniors" and {"junior_direct", "junior_step_by_step"} <= set(r["roles"]) for r in recs)
    with ExitStack() as stack:  # what that stage served: every junior on junior_policy, the shared GGUF
        society = role_split_config(plan.society, per_persona=False)
        assert {r.model for r in society.roles if r.type == "junior"} == {JUNIOR_ALIAS}
        eps = plan.serve(stack, society, adapters={JUNIOR_ALIAS: Path(one["adapter"])})
        loaded = json.loads(urllib.request.urlopen(eps[JUNIOR_ALIAS].base_url[:-3] + "/lora-adapters").read())
        on = [x["id"] for x in eps[JUNIOR_ALIAS].extra_body["lora"] if x["scale"] > 0]
        assert [a["path"] for a in loaded if a["id"] in on] == [str(Path(one["adapter_gguf"]).resolve())]
    rows = [e for e in role_effects({}, role_evals={"juniors_sft": recs, SHARED_STAGE: recs})
            if "shared adapter" in e.metric]
    assert {e.role for e in rows} >= {"junior_direct", "junior_step_by_step"} and all(e.delta == 0 for e in rows)
    assert all(e.kind == "comparison" for e in rows)  # its own Holm family, beside the phases' effects


def test_the_report_lists_each_personas_adapter_and_its_loss_curve(tmp_path: Path) -> None:
    from evaluation.report import build_report
    from evaluation.report_content import training_signals

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "baseline.jsonl").write_text(json.dumps({"question_id": "dev-1", "match": True}) + "\n")
    done = {"junior_adapters": "per_persona", "adapter": None, "adapters": {
        "direct": {"alias": persona_alias("direct"), "rows": 4, "steps": 2, "losses": [[1, 2.0], [2, 1.5]],
                   "adapter": "a"},
        "decompose": {"alias": persona_alias("decompose"), "rows": 0, "adapter": None}}}
    (run / "phases" / "2-sft").mkdir(parents=True)
    (run / "phases" / "2-sft" / "done.json").write_text(json.dumps(done))
    paths = build_report(run)
    md = paths.markdown.read_text()
    assert "| direct | junior_policy_direct | 4 | 2 | 2.000 → 1.500 |" in md
    assert "| decompose | junior_policy_decompose | 0 | – | not trained: base model |" in md
    assert "junior_policy_decompose" in paths.html.read_text()
    assert list(training_signals({"2-sft": done})) == ["2-sft (direct): loss"]


@pytest.mark.model
def test_missed_first_spends_the_step_budget_on_the_questions_the_first_draft_missed(tmp_path: Path) -> None:
    from datasets import Dataset

    sources = ["juniors"] * 5 + ["rationalized", "resample", "rationalized"]
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question: {QUESTION}"},
                          {"role": "assistant", "content": REPLIES["direct"] + " " * k}],
             "source": s, "persona": "direct", "role_instance": "junior_direct"} for k, s in enumerate(sources)]
    ds = Dataset.from_list(rows)
    sft = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 5e-3, "lora_r": 8,
           "lora_alpha": 16}  # a budget of 4 rows for 8 admitted
    said: list[str] = []
    out = {}
    for fill in ("missed_first", "random"):
        pipe = TrainingPipeline(_profile("per_persona", llm_proxy=False, sft=sft,
                                         adapter={"sft_min_reward": 0.0, "sft_fill": fill}),
                                tmp_path / fill, phases={2}, echo=said.append)
        out[fill] = train_junior_adapter(pipe.resolve(), ds, tmp_path / "adapter", f"phase 2 SFT ({fill})",
                                         said.append)
    first, every = out["missed_first"], out["random"]
    assert (first["fill"], first["rows"], first["rows_admitted"], first["rows_missed"]) == ("missed_first", 4, 8, 3)
    assert (every["fill"], every["rows"], every["rows_admitted"]) == ("random", 8, 8)
    assert first["steps"] == every["steps"] == 2  # the same compute, other rows
    assert any("on 4 rows (missed_first: of 8 admitted, 3 of missed questions)" in m for m in said), said
    # the same directory, other rows: the random fill's adapter was trained, not the first one kept
    assert any("was made from other settings or data; the adapter runs again" in m for m in said), said
    assert Path(every["adapter_gguf"]).is_file()
