"""The gpu profile as planned for one H200 (``configs/train/gpu.yaml``), read through ``training.plan``.

Nothing here runs on a GPU: these are the plan's statements about the profile (what model serves each
role, which servers, what is missing here, that the time per phase is unmeasured) and the planned memory
shares checked against each other. The numbers themselves are planned, not measured (the profile's header).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from training.grpo import DEFAULT_VERL_CONFIG
from training.grpo_verl import load_verl_config
from training.plan import base_is_hf_directory, plan_profile
from training.profile import TrainConfig
from training.role_aliases import SENIOR_ALIAS

BASE = "./models/Qwen2.5-Coder-1.5B-Instruct"


def test_every_role_with_a_model_is_the_1_5b_model_on_vllm():
    cfg = TrainConfig.load("gpu")
    assert cfg.base_model == BASE and base_is_hf_directory(cfg)
    plan = plan_profile(cfg, source="gpu")
    assert not plan.errors, plan.errors
    with_model = [r for r in plan.roles if r["alias"]]
    assert {r["kind"] for r in with_model} == {"junior", "supervisor", "senior", "reviewer"}
    assert all(r["served_by"].startswith(f"vLLM server (base model {BASE}") for r in with_model), with_model
    assert not any("llama.cpp" in s["server"] for s in plan.servers)  # nothing left on the CPU server


def test_the_absent_model_directory_is_missing_with_its_download_command():
    plan = plan_profile(TrainConfig.load("gpu"), source="gpu")
    (miss,) = [f for f in plan.missing if f.where == "base_model"]
    assert f"huggingface-cli download Qwen/Qwen2.5-Coder-1.5B-Instruct --local-dir {BASE}" in miss.message
    assert "valid profile" in plan.render().splitlines()[-1]


def test_verl_senior_is_full_parameter_and_served_by_a_second_server_after_phase_3():
    plan = plan_profile(TrainConfig.load("gpu"), source="gpu")
    (senior,) = [r for r in plan.roles if r["kind"] == "senior"]
    assert "VERL trains all its weights live" in senior["adapter"] and "LoRA" not in senior["adapter"]
    servers = {s["server"]: s["detail"] for s in plan.servers}
    assert f"as {SENIOR_ALIAS}" in servers["vLLM OpenAI server for the trained senior (after phase 3)"]
    base = servers["vLLM OpenAI server (society.vllm_serving.VLLMServer)"]
    assert "adapters by name junior_policy (" in base  # the senior is not an adapter there


def test_expected_time_per_phase_is_stated_as_unmeasured():
    plan = plan_profile(TrainConfig.load("gpu"), source="gpu")
    t = plan.expected_time
    assert t.startswith("unmeasured for every phase") and "never run on a GPU" in t
    assert f"Expected time per phase: {t}" in plan.render()
    for step in ("eval baseline", "1 gather", "2 sft", "3 grpo", "4 bandit"):
        assert step in t
    assert json.loads(json.dumps(plan.to_json()))["expected_time"] == t
    assert plan_profile(TrainConfig.load("default"), source="default").expected_time == ""  # a CPU profile


def test_planned_gpu_memory_shares_leave_room_for_the_actor():
    """At phase 3's peak the profile's vLLM server and VERL's rollout vLLM are both resident; the FSDP
    actor (full-parameter 1.5B, ~30 GB planned) needs at least a fifth of the H200's 141 GB."""
    cfg = TrainConfig.load("gpu")
    verl = load_verl_config(DEFAULT_VERL_CONFIG)
    rollout = verl["actor_rollout_ref"]["rollout"]
    assert cfg.serving.gpu_memory_utilization + rollout["gpu_memory_utilization"] <= 0.8
    assert verl["actor_rollout_ref"]["model"]["lora_rank"] == 0
    assert max(cfg.sft.lora_r, cfg.grpo.lora_r) <= cfg.serving.max_lora_rank
    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs/train/gpu.yaml").read_text())
    assert raw["grpo"]["backend"] == "verl" and raw["serving"]["engine"] == "vllm"
