"""scripts/gpu-check.sh and training.gpu_check on the CPU: the same steps the GPU check runs.

The GPU machine the check is written for has torch, transformers, peft, accelerate (and the
carried trl/datasets/sqlglot) but no Agent Lightning, LangGraph, LangChain, LiteLLM or serving
stack. The subprocesses here run with those modules blocked (``sys.modules[name] = None`` from a
``sitecustomize`` on PYTHONPATH: ``import`` raises ImportError, ``importlib.util.find_spec``
returns None), so a module-level import of any of them in the trainers fails these tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Absent on the GPU machine: blocked in the subprocesses below.
BLOCKED = (
    "agentlightning",
    "langgraph",
    "langchain",
    "langchain_core",
    "langchain_openai",
    "litellm",
    "openai",
    "vllm",
    "verl",
    "unsloth",
    "portpicker",
    "gguf",
    "society.llm",
    "society.serving",
    "society.llama_server",
    "society.server_process",
    "society.cpu_threads",
    "society.roles",
)


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("block")
    (d / "sitecustomize.py").write_text(
        f"import sys\nfor _n in {BLOCKED!r}:\n    sys.modules[_n] = None  # import -> ImportError, find_spec -> None\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(d), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def _py(code: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_blocker_blocks(blocked_env):
    """The control: in these subprocesses the agent/serving stack really is unimportable."""
    r = _py(
        "import importlib.util as u\n"
        "assert u.find_spec('agentlightning') is None\n"
        "for n in ('agentlightning', 'langgraph', 'litellm', 'langchain_core', 'society.llm'):\n"
        "    try:\n        __import__(n)\n    except ImportError:\n        pass\n"
        "    else:\n        raise SystemExit(n + ' imported')\n",
        blocked_env,
    )
    assert r.returncode == 0, r.stderr


def test_trainers_import_and_reward_runs_with_only_the_training_stack(blocked_env, tmp_path):
    """training.sft / training.grpo / training.gpu_check import, and the senior's execution reward
    scores a rewrite, with Agent Lightning, LangGraph, LangChain, LiteLLM and serving blocked."""
    db = tmp_path / "s.sqlite"
    code = (
        "import sys\n"
        "import training.sft, training.grpo, training.gpu_check\n"
        "from training.gpu_check import build_tiny_database\n"
        "from training.senior_reward import SeniorReward\n"
        f"db = str(build_tiny_database(__import__('pathlib').Path({str(db)!r})))\n"
        "r = SeniorReward()\n"
        "v = r(prompts=['q', 'q'], completions=['```sql\\nSELECT count(*) FROM singer\\n```', 'no sql'],\n"
        "      gold_sql=['SELECT count(*) FROM singer'] * 2, db_path=[db] * 2, node=['senior_rewrite'] * 2)\n"
        "assert v[0] == 1.0 and v[1] < 1.0, v\n"
        "top = ('agentlightning', 'langgraph', 'litellm', 'langchain_core')\n"
        "bad = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in top)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = _py(code, blocked_env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_gpu_check_script_runs_end_to_end_on_cpu(blocked_env, tmp_path):
    """scripts/gpu-check.sh --device cpu: every step passes (tiny Qwen2, SFT 3 steps, GRPO 2 steps,
    adapters reloaded twice with equal greedy output); JSON + Markdown written and printed. ~40 s."""
    out = tmp_path / "gc"
    r = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--device", "cpu", "--out", str(out), "--threads", "1"],
        cwd=ROOT,
        env=blocked_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "tiny_model", "sft", "sft_reload", "grpo", "grpo_reload"]
    assert report["ok"] and report["device"] == "cpu" and all(s["ok"] and not s["error"] for s in steps.values())
    assert steps["environment"]["detail"]["cuda_available"] is False
    assert steps["tiny_model"]["detail"]["parameters"] < 1_000_000
    sft = steps["sft"]["detail"]
    from training.sft import bf16_support  # bf16 on the CPU where it has native bf16 (read at run time)

    assert sft["steps"] == 3 and len(sft["losses"]) == 3 and sft["use_cpu"] is True
    assert sft["bf16"] is bf16_support()[0]
    assert steps["sft_reload"]["detail"]["equal"] and steps["sft_reload"]["detail"]["lora_b_abs_sum"] > 0
    assert steps["sft_reload"]["detail"]["dtype"] == "float32"
    assert steps["grpo"]["detail"]["steps"] == 2 and steps["grpo"]["detail"]["completions_scored"] >= 8
    assert steps["grpo"]["detail"]["bf16"] is bf16_support()[0]  # GRPO too (2026-12-07)
    assert steps["grpo_reload"]["detail"]["equal"]
    for name in ("junior-adapter", "senior-adapter"):
        assert (out / name / "adapter_config.json").is_file() and (out / name / "adapter_model.safetensors").is_file()
    md = (out / "gpu_check.md").read_text()
    assert "| step | seconds | result | error |" in md and md.count("| pass |") == 6
    assert "| sft_reload |" in r.stdout


def test_cuda_requested_without_a_gpu_fails_as_a_row(blocked_env, tmp_path):
    """--device cuda on this CPU machine: the environment row fails naming the cause, the others are
    skipped rows, the exit status is 1 and the table is still written."""
    out = tmp_path / "gc"
    r = subprocess.run(
        [sys.executable, "-m", "training.gpu_check", "--device", "cuda", "--out", str(out)],
        cwd=ROOT,
        env=blocked_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert steps[0]["step"] == "environment" and not steps[0]["ok"]
    assert "torch.cuda.is_available() is False" in steps[0]["error"]
    assert all(s["error"].startswith("skipped: needs") for s in steps[1:])
    assert "FAIL" in (out / "gpu_check.md").read_text()


def test_script_arguments(tmp_path):
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "scripts/gpu-check.sh", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    r = sh("--device", "tpu")
    assert r.returncode == 2 and "--device must be cuda or cpu" in r.stderr
    r = sh("--bogus")
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
    (tmp_path / "empty").mkdir()
    r = sh("--wheels", str(tmp_path / "empty"), "--device", "cpu")
    assert r.returncode == 2 and "no wheels in" in r.stderr
    r = sh("--help")
    assert r.returncode == 0 and "--download-wheels" in r.stdout and "--wheels" in r.stdout


def test_wheel_pins_leave_out_the_preinstalled_stack():
    from training.gpu_check import wheel_pins

    pins = wheel_pins()
    names = {p.split("==")[0] for p in pins}
    assert {"trl", "datasets", "sqlglot"} <= names
    assert not names & {
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "pyarrow",
        "numpy",
        "scikit-learn",
        "safetensors",
    }
    assert all("==" in p for p in pins)


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("vllm", "verl", "unsloth")),
    reason="about a machine without the GPU stack",
)
def test_full_without_the_gpu_stack_names_it_and_skips_its_steps(tmp_path):
    """--full on this machine: the six training steps pass, gpu_stack fails naming the missing
    packages and the install command, the steps that need it are skipped rows; exit 1."""
    out = tmp_path / "gc"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.gpu_check",
            "--device",
            "cpu",
            "--full",
            "--out",
            str(out),
            "--sft-steps",
            "1",
            "--grpo-steps",
            "1",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    steps = {s["step"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    assert all(steps[k]["ok"] for k in ("environment", "tiny_model", "sft", "sft_reload", "grpo", "grpo_reload"))
    err = steps["gpu_stack"]["error"]
    assert not steps["gpu_stack"]["ok"] and "vllm" in err and "SQLSOCIETY_GPU=1 bash scripts/install.sh" in err
    for k in ("unsloth_sft", "vllm_lora", "gpu_profile"):
        assert steps[k]["error"] == "skipped: needs gpu_stack"
