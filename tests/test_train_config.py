"""Training profiles: every section is built as its class when the profile loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from society.cli import app
from training.pipeline import PROFILE_DIR, PROFILES, TrainConfig, TrainConfigError


def _profile(tmp_path: Path, **changes: dict) -> Path:
    cfg = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    for section, values in changes.items():
        cfg.setdefault(section, {}).update(values)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_build_every_section(name: str) -> None:
    built, errors = TrainConfig.load(name).typed_sections()
    assert errors == []
    assert set(built) == {"sft", "grpo", "bandit", "reward"}


@pytest.mark.parametrize(
    ("section", "values", "words"),
    [
        ("grpo", {"num_generatons": 4}, "grpo: unknown key(s) ['num_generatons']"),
        ("grpo", {"num_generations": 1}, "num_generations"),
        ("sft", {"lora_r": 0}, "lora_r"),
        ("bandit", {"epsilon": 2.0}, "epsilon"),
        ("reward", {"weigths": {}}, "reward: unknown key(s) ['weigths']"),
        ("adapter", {"sft_min_rewad": 0.5}, "sft_min_rewad"),
        ("adapter", {"sft_min_reward": "high"}, "adapter.sft_min_reward"),
    ],
)
def test_a_typo_in_a_section_fails_at_load(tmp_path: Path, section: str, values: dict, words: str) -> None:
    p = _profile(tmp_path, **{section: values})
    with pytest.raises(TrainConfigError) as e:
        TrainConfig.load(p)
    assert words in str(e.value)
    cfg = TrainConfig.load(p, check_sections=False)  # what --dry-run loads, to list every problem
    assert any(words.split(":")[0].split(" ")[0] in f"{w}: {m}" for w, m in cfg.typed_sections()[1])


def test_train_with_a_typo_exits_2_before_anything_runs(tmp_path: Path) -> None:
    p = _profile(tmp_path, grpo={"num_generatons": 4})
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--config", str(p), "--run-dir", str(run_dir)])
    assert r.exit_code == 2, r.output
    assert "num_generatons" in r.output and not run_dir.exists()


def test_trl_args_reach_trl_and_typos_fail_at_load(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from training.grpo import SeniorGRPOConfig, SeniorGRPOTrainer
    from training.sft import JuniorSFTConfig, JuniorSFTTrainer

    sft = JuniorSFTConfig(output_dir=str(tmp_path), trl_args={"optim": "sgd", "max_grad_norm": 0.5, "report_to": []})
    args = JuniorSFTTrainer._args(SimpleNamespace(config=sft))
    assert (args.optim, args.max_grad_norm, args.report_to) == ("sgd", 0.5, [])
    grpo = SeniorGRPOConfig(output_dir=str(tmp_path), trl_args={"max_grad_norm": 0.25})
    assert SeniorGRPOTrainer._args(SimpleNamespace(config=grpo)).max_grad_norm == 0.25
    with pytest.raises(ValueError, match=r"\['max_grad_nrom'\] are not options of trl.SFTConfig"):
        JuniorSFTConfig(trl_args={"max_grad_nrom": 1.0})
    with pytest.raises(ValueError, match=r"set \['max_steps'\] as fields"):
        SeniorGRPOConfig(trl_args={"max_steps": 3})
    with pytest.raises(TrainConfigError, match="max_grad_nrom"):
        TrainConfig.load(_profile(tmp_path, grpo={"trl_args": {"max_grad_nrom": 1.0}}))
