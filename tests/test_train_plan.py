"""``sqlsociety train --dry-run`` (training.plan) and the gpu profile, on this CPU machine.

This machine has no CUDA device and neither vLLM, verl nor unsloth installed: the gpu profile is
valid but not runnable here, which the dry run must say (exit 0, a NOT RUNNABLE HERE block naming
what to install) and a real run must refuse before writing anything (exit 2).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from society.cli.root import app
from training.gpu_stack import INSTALL_GPU, gpu_stack_needs
from training.plan import plan_profile
from training.profile import TrainConfig, TrainConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
runner = CliRunner()

GPU_STACK_ABSENT = not any(importlib.util.find_spec(m) for m in ("vllm", "verl", "unsloth"))


def train(*args: str):
    return runner.invoke(app, ["train", *args], env=ENV)


def profile(tmp_path: Path, **changes) -> Path:
    """The smoke profile with ``changes`` merged at the top level (dicts merged one level deep)."""
    data = yaml.safe_load((ROOT / "configs/train/smoke.yaml").read_text())
    data["society_config"] = str(ROOT / data["society_config"])
    for k, v in changes.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_cpu_profiles_are_valid_and_runnable_here(name, tmp_path):
    out = tmp_path / "run"
    r = train("--profile", name, "--dry-run", "--run-dir", str(out))
    assert r.exit_code == 0, r.output
    for section in ("Phases:", "Roles -> models / adapters:", "Servers:", "Budgets:", "GPU stack:"):
        assert section in r.output
    assert "valid profile, runnable here" in r.output
    assert "llama.cpp llama-server" in r.output and "junior_policy" in r.output
    assert "NOT RUNNABLE HERE" not in r.output
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.skipif(not GPU_STACK_ABSENT, reason="this test is about a machine without the GPU stack")
def test_gpu_profile_dry_run_prints_the_plan_and_what_to_install(tmp_path):
    assert importlib.util.find_spec("vllm") is None  # vLLM is absent here
    out = tmp_path / "run"
    r = train("--profile", "gpu", "--dry-run", "--run-dir", str(out))
    assert r.exit_code == 0, r.output
    text = r.output
    assert "Training plan: profile gpu" in text
    assert "vLLM OpenAI server" in text and "--enable-lora" in text and "senior_policy" in text
    assert "through Agent Lightning's VERL" in text and "VERL: 1 epoch(s)" in text
    assert "loaded by name into vLLM" in text
    assert "NOT RUNNABLE HERE" in text and INSTALL_GPU in text
    assert "vllm is not installed" in text and "verl is not installed" in text and "no CUDA device" in text
    assert "valid profile" in text and "runnable here" not in text.splitlines()[-1]
    assert not out.exists()


@pytest.mark.skipif(not GPU_STACK_ABSENT, reason="this test is about a machine without the GPU stack")
def test_gpu_profile_real_run_refuses_before_writing(tmp_path):
    out = tmp_path / "run"
    r = train("--profile", "gpu", "--run-dir", str(out))
    assert r.exit_code == 2, r.output
    assert "missing on this machine" in r.output and "SQLSOCIETY_GPU=1" in r.output
    assert not out.exists()


def test_gpu_profile_plan_object():
    cfg = TrainConfig.load("gpu")
    assert cfg.serving.engine == "vllm" and cfg.base_model == "./models/Qwen2.5-Coder-1.5B-Instruct"
    needs = gpu_stack_needs(cfg)
    assert needs == {"cuda": "required", "vllm": "required", "verl": "required", "unsloth": "optional"}
    plan = plan_profile(cfg, source="gpu")
    assert not plan.errors, plan.errors
    assert [p["step"] for p in plan.phases] == [
        "eval baseline",
        "eval baseline roles",  # the one-shot control (eval.single) on the society's questions
        "1 gather",
        "2 sft",
        "eval sft roles",
        "eval sft",
        "3 grpo",
        "eval grpo",
        "4 bandit",
        "eval bandit",
        "report",
    ]
    kinds = {r["kind"] for r in plan.roles}
    assert {"junior", "senior", "supervisor", "reviewer"} <= kinds
    assert all(r["alias"] == "junior_policy" for r in plan.roles if r["kind"] == "junior")
    assert set(plan.budgets) == {"gather", "eval", "sft", "grpo", "bandit"}
    assert plan.to_json()["runnable_here"] is (not GPU_STACK_ABSENT)


@pytest.mark.parametrize(
    ("changes", "where", "words"),
    [
        ({"sft": {"bogus_key": 1}}, "sft", "bogus_key"),
        ({"grpo": {"num_generations": 1}}, "grpo", "num_generations"),
        ({"bandit": {"nope": True}}, "bandit", "nope"),
        ({"adapter": {"sft_min_rewad": 0.5}}, "adapter", "sft_min_rewad"),
        ({"base_model": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}, "base_model", "huggingface-cli download"),
        ({"base_model": "/no/such/model.gguf"}, "base_model", "does not exist"),
        ({"base_model": "not-a-model"}, "base_model", "not an embedded alias"),
        ({"grpo": {"backend": "verl", "verl_config": "/no/such/verl.yaml"}}, "grpo.verl_config", "does not exist"),
        ({"society_config": "/no/such/society.yaml"}, "society_config", "does not exist"),
        ({"eval": {"split": "no_such_split"}}, "eval.split", "no_such_split"),
        ({"gather": {"n_runners": 0}}, "gather.n_runners", "remote_runners >= 1"),
    ],
)
def test_profile_errors_exit_2_naming_the_field(tmp_path, changes, where, words):
    r = train("--config", str(profile(tmp_path, **changes)), "--dry-run")
    assert r.exit_code == 2, r.output
    tail = r.output[r.output.index("ERRORS") :]
    assert f"- {where}:" in tail and words in tail, tail


def test_endpoint_host_and_key_checked_without_calling(tmp_path, monkeypatch):
    soc = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    alias = next(iter(soc["models"]))
    soc["models"][alias] = {
        "base_url": "http://no-such-host.invalid/v1",
        "model": "m",
        "api_key_env": "SQLSOCIETY_TEST_UNSET",
    }
    p = tmp_path / "society.yaml"
    p.write_text(yaml.safe_dump(soc))
    monkeypatch.delenv("SQLSOCIETY_TEST_UNSET", raising=False)
    r = train("--config", str(profile(tmp_path, society_config=str(p))), "--dry-run")
    assert r.exit_code == 2, r.output
    assert "does not resolve" in r.output and "SQLSOCIETY_TEST_UNSET is not set" in r.output


def test_hub_id_is_refused_with_the_download_command(tmp_path):
    cfg = TrainConfig.load(
        profile(tmp_path, base_model="Qwen/Qwen2.5-Coder-1.5B-Instruct", serving={"engine": "vllm"})
    )
    plan = plan_profile(cfg)
    (err,) = [f for f in plan.errors if f.where == "base_model"]
    assert "huggingface-cli download Qwen/Qwen2.5-Coder-1.5B-Instruct --local-dir DIR" in err.message
    assert any(f.where == "vllm" for f in plan.missing) == (importlib.util.find_spec("vllm") is None)


def test_hf_directory_base_model_with_vllm(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    plan = plan_profile(TrainConfig.load(profile(tmp_path, base_model=str(d), serving={"engine": "vllm"})))
    assert not plan.errors, plan.errors
    assert "Hugging Face directory" in plan.servers[0]["detail"]
    plan = plan_profile(TrainConfig.load(profile(tmp_path, base_model=str(d))))
    assert any(f.where == "base_model" and "serving.engine: vllm" in f.message for f in plan.errors)


def test_serving_section_is_typed(tmp_path):
    with pytest.raises(TrainConfigError, match="engine"):
        TrainConfig.load(profile(tmp_path, serving={"engine": "tgi"}))
    with pytest.raises(TrainConfigError, match="gpu_memory_utilization"):
        TrainConfig.load(profile(tmp_path, serving={"gpu_memory_utilization": 1.5}))
    assert TrainConfig.load("smoke").serving.engine == "llama.cpp"


def test_dry_run_of_a_resumed_run_reads_its_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(TrainConfig.load("smoke").model_dump()))
    before = sorted(os.listdir(run))
    r = train("--resume", str(run), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "profile smoke" in r.output and sorted(os.listdir(run)) == before


def test_remote_runners_in_the_plan(tmp_path):
    cfg = TrainConfig.load(
        profile(tmp_path, gather={"n_runners": 0, "remote_runners": 4, "store_host": "0.0.0.0", "store_port": 4747})
    )
    plan = plan_profile(cfg)
    assert not plan.errors, plan.errors
    store = next(s for s in plan.servers if s["server"] == "rollout store")
    assert "0.0.0.0:4747" in store["detail"] and "4 remote runner(s)" in store["detail"]
    assert "sqlsociety runner --store-url http://0.0.0.0:4747" in store["detail"]
    assert "0 runner(s) + 4 remote" in plan.budgets["gather"]


def test_per_persona_adapters_in_the_plan(tmp_path):
    """``junior_adapters: per_persona``: each junior on its own alias and adapter, the SFT budget per adapter."""
    per = plan_profile(TrainConfig.load(profile(tmp_path, junior_adapters="per_persona")))
    juniors = [r for r in per.roles if r["kind"] == "junior"]
    assert len({r["alias"] for r in juniors}) == len(juniors) >= 2
    assert all(r["alias"] in r["adapter"] and "adapters/" in r["adapter"] for r in juniors)
    assert "for each of the" in per.budgets["sft"]
    shared = plan_profile(TrainConfig.load(profile(tmp_path, junior_adapters="shared")))
    assert {r["alias"] for r in shared.roles if r["kind"] == "junior"} == {"junior_policy"}
    assert "for each of the" not in shared.budgets["sft"]


def test_the_run_plan_resolves_personas_senior_and_backend_once(tmp_path):
    """What the phases used to work out on the way (personas and their aliases, the senior's alias and
    stop strings, the GRPO backend) is in the plan, resolved from the society config and the profile."""
    from training.run_dir import RunDir
    from training.run_plan import resolve_run

    cfg = TrainConfig.load(profile(tmp_path, society_config=str(ROOT / "configs/society.yaml"),
                                   junior_adapters="per_persona", grpo={"backend": "trl"}))
    plan = resolve_run(cfg, RunDir(tmp_path / "run"), phases={2, 3}, echo=lambda _: None)
    assert plan.personas == {"direct": "junior_policy_direct", "step_by_step": "junior_policy_step_by_step",
                             "decompose": "junior_policy_decompose"}
    assert plan.persona_of == {"junior_direct": "direct", "junior_step_by_step": "step_by_step",
                               "junior_decompose": "decompose"}
    senior = next(r for r in plan.society.roles if r.type == "senior")
    assert plan.senior_alias == senior.model == "senior_policy"
    assert plan.senior_stop == (list(senior.sampling.stop) if senior.sampling.stop else None)
    assert plan.grpo_backend == "trl"
    assert resolve_run(cfg, RunDir(tmp_path / "run"), phases={2}, echo=lambda _: None).grpo_backend is None


@pytest.mark.skipif(importlib.util.find_spec("verl") is not None, reason="verl is installed: it may run here")
def test_a_verl_backend_that_cannot_run_here_stops_the_run_before_any_evaluation(tmp_path):
    from training.run_dir import RunDir
    from training.run_plan import resolve_run

    cfg = TrainConfig.load(profile(tmp_path, grpo={"backend": "verl"}))
    run = tmp_path / "run"
    with pytest.raises(TrainConfigError, match=r"grpo.backend 'verl' needs a CUDA GPU and the verl package"):
        resolve_run(cfg, RunDir(run), phases={1, 2, 3, 4}, echo=lambda _: None)
    assert not list((run / "eval").iterdir())  # nothing evaluated, nothing written


def test_a_run_without_a_store_says_to_run_phase_1_first(tmp_path):
    from training.run_dir import RunDir

    with pytest.raises(TrainConfigError, match=r"store.sqlite does not exist: run phase 1 \(gather\) first"):
        RunDir(tmp_path / "run").archive()
