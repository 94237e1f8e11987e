"""Training profiles: every section is built as its class when the profile loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from society.cli.root import app
from training.profile import PROFILE_DIR, PROFILES, TrainConfig, TrainConfigError
from training.role_aliases import NOISE_SEED_OFFSET, role_kind, with_junior_seed_offset


def _profile(tmp_path: Path, **changes: dict) -> Path:
    cfg = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    for section, values in changes.items():
        cfg.setdefault(section, {}).update(values)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_build_every_section(name: str) -> None:
    from evaluation.metrics.rewards import RewardConfig
    from society.bandit import BanditConfig
    from training.grpo import SeniorGRPOConfig
    from training.profile import AdapterSection
    from training.sft import JuniorSFTConfig

    cfg = TrainConfig.load(name)
    assert cfg.section_problems == []
    assert (type(cfg.sft), type(cfg.grpo), type(cfg.bandit), type(cfg.reward), type(cfg.adapter)) == \
        (JuniorSFTConfig, SeniorGRPOConfig, BanditConfig, RewardConfig, AdapterSection)


@pytest.mark.parametrize(
    ("section", "values", "words"),
    [
        ("grpo", {"num_generatons": 4}, "grpo: unknown key(s) ['num_generatons']"),
        ("sft", {"lora_rank": 4}, "sft: unknown key(s) ['lora_rank']"),
        ("bandit", {"epsilon_": 0.1}, "bandit: unknown key(s) ['epsilon_']"),
        ("adapter", {"rl_rewards": "x"}, "adapter: unknown key(s) ['rl_rewards']"),
        ("gather", {"limt": 3}, "gather: unknown key(s) ['limt']"),
        ("eval", {"limt": 3}, "eval: unknown key(s) ['limt']"),
        ("serving", {"engien": "vllm"}, "serving: unknown key(s) ['engien']"),
        ("grpo", {"warm_start": {"max_step": 2}}, "grpo.warm_start: unknown key(s) ['max_step']"),
        ("grpo", {"num_generations": 1}, "num_generations"),
        ("sft", {"lora_r": 0}, "lora_r"),
        ("bandit", {"epsilon": 2.0}, "epsilon"),
        ("reward", {"weigths": {}}, "reward: unknown key(s) ['weigths']"),
        ("adapter", {"sft_min_rewad": 0.5}, "sft_min_rewad"),
        ("adapter", {"sft_min_reward": "high"}, "adapter.sft_min_reward"),
        ("adapter", {"sft_fill": "hardest"}, "adapter.sft_fill"),
    ],
)
def test_a_typo_in_a_section_fails_at_load(tmp_path: Path, section: str, values: dict, words: str) -> None:
    p = _profile(tmp_path, **{section: values})
    with pytest.raises(TrainConfigError) as e:
        TrainConfig.load(p)
    assert words in str(e.value)
    if section in ("gather", "eval", "serving"):  # not a trainer's section: --dry-run stops on it too
        with pytest.raises(TrainConfigError):
            TrainConfig.load(p, check_sections=False)
        return
    cfg = TrainConfig.load(p, check_sections=False)  # what --dry-run loads, to list every problem
    assert any(words.split(":")[0].split(" ")[0] in f"{w}: {m}" for w, m in cfg.section_problems)


def test_retired_bandit_holdout_is_dropped_with_a_warning_and_read_nowhere(tmp_path: Path, caplog) -> None:
    """``adapter.bandit_holdout`` was validated and never read (phase 4 is judged on held-out dev
    decisions and whole held-out train questions, ``bandit.held_out_contested``, not a random share):
    no shipped profile has it, an older profile or run directory that does still loads (with a
    warning), and the key is not part of the schema."""
    assert all("bandit_holdout" not in (PROFILE_DIR / f"{n}.yaml").read_text() for n in PROFILES)
    with caplog.at_level("WARNING", logger="training.pipeline"):
        cfg = TrainConfig.load(_profile(tmp_path, adapter={"bandit_holdout": 0.3}))
    assert "bandit_holdout" not in cfg.as_written("adapter") and "adapter.bandit_holdout is ignored" in caplog.text
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bandit_holdout'\]"):  # not through load: unknown
        TrainConfig.model_validate({"adapter": {"bandit_holdout": 0.3}})


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
    assert SeniorGRPOConfig(trl_args={"max_steps": 3}).max_steps == 3  # TRL's setting, wherever it is written
    with pytest.raises(ValueError, match=r"set \['lora_r'\] in the section, not in trl_args"):
        SeniorGRPOConfig(trl_args={"lora_r": 4})
    with pytest.raises(ValueError, match=r"\['max_steps'\] given both in the section and in trl_args"):
        SeniorGRPOConfig(max_steps=2, trl_args={"max_steps": 3})
    with pytest.raises(TrainConfigError, match="max_grad_nrom"):
        TrainConfig.load(_profile(tmp_path, grpo={"trl_args": {"max_grad_nrom": 1.0}}))


def test_trl_owns_trl_settings_and_the_project_writes_its_values_once(tmp_path: Path) -> None:
    """A TRL setting has TRL's name only (no trainer config declares a field of TRL's class); the
    project's value for one is written once (``TRL_DEFAULTS``) and only where TRL's default differs
    (or, named here, where it is pinned on purpose)."""
    import dataclasses

    from trl import GRPOConfig, SFTConfig

    from training.grpo import SeniorGRPOConfig
    from training.sft import JuniorSFTConfig

    pinned = {"report_to": "transformers 4 (the GPU extra) logs to every installed logger by default",
              "beta": "the CPU run keeps one model in memory (no reference model)"}
    for ours, theirs in ((JuniorSFTConfig, SFTConfig), (SeniorGRPOConfig, GRPOConfig)):
        trl_fields = {f.name: f for f in dataclasses.fields(theirs)}
        assert set(ours.model_fields) & set(trl_fields) == set(), ours
        assert set(ours.TRL_DEFAULTS) <= set(trl_fields) and set(ours.TRL_SHOWN) <= set(trl_fields)
        same = {k for k, v in ours.TRL_DEFAULTS.items() if v == trl_fields[k].default}
        assert same <= set(pinned), (ours, same)


def test_a_trl_setting_in_the_section_reaches_trl_and_the_project_value_applies_otherwise(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from trl import GRPOConfig, SFTConfig

    from training.grpo import SeniorGRPOTrainer
    from training.sft import JuniorSFTTrainer

    cfg = TrainConfig.load(_profile(tmp_path, sft={"max_grad_norm": 0.5, "warmup_steps": 3},
                                    grpo={"temperature": 0.7, "loss_type": "dr_grpo", "trl_args": {"optim": "sgd"}}))
    sft = JuniorSFTTrainer._args(SimpleNamespace(config=cfg.sft.with_values(output_dir=str(tmp_path / "s"))))
    assert (sft.max_grad_norm, sft.warmup_steps, sft.max_steps) == (0.5, 3, 2)  # given (max_steps: smoke's 2)
    assert (sft.learning_rate, sft.num_train_epochs, sft.lr_scheduler_type, sft.save_strategy) == \
        (2e-4, 1.0, "constant", "no")  # the project's values (JuniorSFTConfig.TRL_DEFAULTS)
    assert sft.adam_beta1 == SFTConfig.adam_beta1 and cfg.sft.adam_beta1 == SFTConfig.adam_beta1  # TRL's own
    grpo_cfg = cfg.grpo.with_values(output_dir=str(tmp_path / "g"))
    grpo = SeniorGRPOTrainer._args(SimpleNamespace(config=grpo_cfg))
    assert (grpo.temperature, grpo.loss_type, grpo.optim) == (0.7, "dr_grpo", "sgd")
    assert (grpo.beta, grpo.learning_rate, grpo.num_generations) == (0.0, 5e-5, 2)
    assert grpo.top_p == GRPOConfig.top_p and grpo_cfg.top_p == GRPOConfig.top_p
    assert grpo.per_device_train_batch_size == grpo_cfg.prompts_per_step * 2  # derived by the trainer
    assert (cfg.sft.max_steps, cfg.sft.max_length, cfg.grpo.temperature) == (2, 384, 0.7)  # read as attributes
    shown = cfg.resolved()
    assert shown["sft"]["max_grad_norm"] == 0.5 and shown["grpo"]["top_p"] == GRPOConfig.top_p
    assert "trl_args" not in shown["sft"]
    with pytest.raises(TrainConfigError, match=r"grpo: unknown key\(s\) \['num_generatons'\].*did you mean "
                                               r"'num_generations'"):
        TrainConfig.load(_profile(tmp_path, grpo={"num_generatons": 4}))
    with pytest.raises(TrainConfigError, match=r"sft.max_grad_norm: expected a number, got 'big'"):
        TrainConfig.load(_profile(tmp_path, sft={"max_grad_norm": "big"}))


def test_grpo_scale_rewards_takes_only_the_values_trl_reads(tmp_path: Path) -> None:
    """TRL annotates ``GRPOConfig.scale_rewards`` as ``str`` but reads only ``group``, ``batch``, ``none``
    and true / false (as ``group`` / ``none``); its trainer refuses another value only when it first
    scales rewards, in phase 3. The profile refuses one at load, naming the key and the values."""
    from types import SimpleNamespace

    from training.grpo import SeniorGRPOTrainer

    for bad in ("grup", 1, None):  # 1 == True in Python, but YAML's 1 is no boolean
        with pytest.raises(TrainConfigError, match=r"grpo.scale_rewards: expected one of 'group', 'batch', "
                                                   r"'none', true, false; got "):
            TrainConfig.load(_profile(tmp_path, grpo={"scale_rewards": bad}))
    with pytest.raises(TrainConfigError, match=r"grpo.trl_args.scale_rewards: expected one of 'group'"):
        TrainConfig.load(_profile(tmp_path, grpo={"trl_args": {"scale_rewards": "Group"}}))
    for given, read in (("batch", "batch"), ("none", "none"), (True, "group"), (False, "none")):
        cfg = TrainConfig.load(_profile(tmp_path, grpo={"scale_rewards": given}))
        grpo = cfg.grpo.with_values(output_dir=str(tmp_path / "g"))
        assert SeniorGRPOTrainer._args(SimpleNamespace(config=grpo)).scale_rewards == read


def test_the_bandit_and_reward_sections_are_typed_settings_models() -> None:
    """``BanditConfig`` and ``RewardConfig`` check themselves, not only inside a profile: an unknown key
    and a wrongly typed value (named with the type it wants) are refused; defaults and attributes are as
    they were, and a bandit policy's config round-trips."""
    from pydantic import ValidationError

    from evaluation.metrics.rewards import DEFAULT_WEIGHTS, RewardConfig
    from society.bandit import BanditConfig
    from tools.value_types import TypedSettings

    for cls, wrong, words, unknown in ((BanditConfig, {"epochs": "5"}, "epochs: expected an integer, got '5'",
                                        {"epsilon_": 0.1}),
                                       (RewardConfig, {"timeout_s": "5"}, "timeout_s: expected a number, got '5'",
                                        {"weigths": {}})):
        assert issubclass(cls, TypedSettings)
        with pytest.raises(ValidationError, match=words):
            cls(**wrong)
        with pytest.raises(ValidationError, match=next(iter(unknown))):
            cls(**unknown)
    assert RewardConfig().weights == DEFAULT_WEIGHTS and RewardConfig(timeout_s=2).timeout_s == 2.0
    with pytest.raises(ValidationError, match="RewardConfig.timeout_s = 0"):
        RewardConfig(timeout_s=0)
    bandit = BanditConfig(epsilon=0.2, n_bootstrap=3)
    assert (bandit.epsilon, bandit.feedback, bandit.sql_hash_bits) == (0.2, "auto", 12)
    assert BanditConfig(**bandit.model_dump()) == bandit


RUN_CONFIG = Path(__file__).resolve().parent / "fixtures" / "run_config_2026-12-05.yaml"


def test_a_run_written_before_trl_owned_its_settings_loads_as_it_was(tmp_path: Path) -> None:
    """The ``config.yaml`` of the 2026-12-05 default run (written while ``max_steps``, ``num_generations``
    ... were fields of the project's classes): it loads, the file it would write differs only by the
    ``eval.single``, ``eval.response_cache`` and ``compare_shared_adapter`` defaults added since, every
    typed section is kept as written (what the gather fingerprint hashes for ``reward``), and the
    trainers see the values the run was started with."""
    text = RUN_CONFIG.read_text()
    raw = yaml.safe_load(text)
    cfg = TrainConfig.load(_written(tmp_path, text))
    assert yaml.safe_load(cfg.to_yaml()) == {**raw, "eval": {**raw["eval"], "single": True, "response_cache": True},
                                             "compare_shared_adapter": False}
    assert {k: cfg.as_written(k) for k in ("sft", "grpo", "bandit", "adapter", "reward")} == \
        {k: raw[k] for k in ("sft", "grpo", "bandit", "adapter", "reward")}
    assert (cfg.sft.max_steps, cfg.sft.per_device_train_batch_size, cfg.sft.max_length, cfg.sft.learning_rate) == \
        (180, 2, 768, 2e-4)
    assert (cfg.grpo.max_steps, cfg.grpo.num_generations, cfg.grpo.max_completion_length, cfg.grpo.scale_rewards,
            cfg.grpo.prefilter_samples, cfg.grpo.learning_rate, cfg.grpo.beta) == (12, 4, 160, "none", 4, 5e-5, 0.0)


def test_a_profile_that_gathers_on_its_evaluation_split_is_refused(tmp_path: Path) -> None:
    p = _profile(tmp_path, gather={"split": "dev"})  # eval.split is dev too
    with pytest.raises(TrainConfigError) as e:
        TrainConfig.load(p)
    msg = str(e.value)
    assert "gather.split and eval.split are both 'dev'" in msg and "Set gather.split to the training split" in msg
    r = CliRunner().invoke(app, ["train", "--config", str(p), "--dry-run"])
    assert r.exit_code == 2 and "gather.split and eval.split" in r.output
    with pytest.raises(ValueError, match="gather.split and eval.split"):  # not only through load: the schema
        TrainConfig.model_validate({"gather": {"split": "Train"}, "eval": {"split": "train "}})
    assert TrainConfig.model_validate({"gather": {"split": "train"}, "eval": {"split": "dev"}}).eval.split == "dev"


def test_the_shared_adapter_comparison_needs_per_persona_adapters_and_the_juniors_evaluation() -> None:
    assert {n: TrainConfig.load(n).compare_shared_adapter for n in ("smoke", "default", "long")} == \
        {"smoke": False, "default": False, "long": True}
    base = {"gather": {"split": "train"}, "eval": {"split": "dev", "junior_limit": 10}}
    assert TrainConfig.model_validate({**base, "junior_adapters": "per_persona", "compare_shared_adapter": True})
    with pytest.raises(ValueError, match="needs junior_adapters: per_persona"):
        TrainConfig.model_validate({**base, "junior_adapters": "shared", "compare_shared_adapter": True})
    with pytest.raises(ValueError, match="eval.junior_limit > 0"):
        TrainConfig.model_validate({**base, "eval": {"split": "dev", "junior_limit": 0},
                                    "junior_adapters": "per_persona", "compare_shared_adapter": True})
    plan = CliRunner().invoke(app, ["train", "--profile", "long", "--dry-run"]).output
    assert "one shared adapter" in plan and "juniors_sft_shared" in plan


def test_noise_repeat_is_on_where_juniors_sample_and_needs_the_juniors_evaluation(tmp_path: Path) -> None:
    assert {n: TrainConfig.load(n).eval.noise_repeat for n in ("smoke", "default", "long")} == \
        {"smoke": False, "default": True, "long": True}
    with pytest.raises(TrainConfigError, match="eval.noise_repeat needs eval.junior_limit > 0"):
        TrainConfig.load(_profile(tmp_path, eval={"noise_repeat": True, "junior_limit": 0, "senior_limit": 0}))


def test_the_noise_repeat_shifts_every_junior_seed_and_nothing_else() -> None:
    from society.config import SocietyConfig

    sc = SocietyConfig.load(PROFILE_DIR.parent / "society.yaml")
    juniors = [r for r in sc.roles if role_kind(r.type) == "junior"]
    unseeded = juniors[0].model_copy(update={"sampling": juniors[0].sampling.model_copy(update={"seed": None})})
    sc = sc.model_copy(update={"roles": [*sc.roles, unseeded.model_copy(update={"name": "junior_unseeded"})]})
    out = with_junior_seed_offset(sc)
    for before, after in zip(sc.roles, out.roles):
        if role_kind(before.type) == "junior" and before.sampling.seed is not None:
            assert after.sampling.seed == before.sampling.seed + NOISE_SEED_OFFSET
            assert after.sampling.model_dump(exclude={"seed"}) == before.sampling.model_dump(exclude={"seed"})
        else:  # other roles, and a junior without a seed (the server draws a random one per request)
            assert after == before
    assert [r.sampling.seed for r in sc.roles if role_kind(r.type) == "junior"] == [11, 12, 13, None]  # input kept


def test_the_noise_repeat_is_a_resumable_stage_run_with_the_shifted_seeds(tmp_path: Path, monkeypatch) -> None:
    """The juniors-only baseline, then its repeat on the same questions with shifted seeds; no model server
    (``evaluate`` and the endpoints are replaced: what is checked is what the pipeline asks for and writes)."""
    import training.stages as ts
    from evaluation.role_effects import NOISE_STAGE
    from tools.files import read_jsonl
    from training.pipeline import TrainingPipeline
    from training.run_plan import RunPlan

    cfg = yaml.safe_load((PROFILE_DIR / "smoke.yaml").read_text())
    cfg["society_config"] = str(PROFILE_DIR.parent / "smoke.yaml")
    cfg["eval"].update(junior_limit=3, senior_limit=0, noise_repeat=True, single=False)
    calls: list[tuple[list[str], dict[str, int | None]]] = []
    cached: list[bool] = []

    def fake_evaluate(todo, society, *, agent, on_result, **kw):
        assert agent == "juniors"
        seeds = {r.name: r.sampling.seed for r in society.roles if role_kind(r.type) == "junior"}
        calls.append(([e.id for e in todo], seeds))
        cached.append(kw.get("response_cache") is not None)
        for e in todo:
            on_result({"question_id": e.id, "match": False, "roles": {j: {"ex": False} for j in seeds}})

    monkeypatch.setattr(ts, "evaluate", fake_evaluate)
    monkeypatch.setattr(RunPlan, "serve", lambda self, stack, society, **kw: {})
    msgs: list[str] = []
    plan = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "run", echo=msgs.append).resolve()
    ts.evaluate_roles(plan, "baseline", msgs.append)
    (ids, base_seeds), (rep_ids, rep_seeds) = calls
    assert rep_ids == ids and len(ids) == 3  # the same questions
    assert rep_seeds == {j: s + NOISE_SEED_OFFSET for j, s in base_seeds.items()}
    assert cached == [True, False]  # the repeat is a live second draw, never answered from the response cache
    recs = read_jsonl(plan.run_dir.role_eval_path(NOISE_STAGE))
    assert [r["question_id"] for r in recs] == ids and {r["stage"] for r in recs} == {NOISE_STAGE}
    assert ts.evaluate_noise_repeat(plan, msgs.append)["n"] == 3 and len(calls) == 2  # finished: kept, not run again
    late = TrainingPipeline(TrainConfig.model_validate(cfg), tmp_path / "late", echo=msgs.append)
    late.dir.mark_done(2, {})  # a resumed run whose profile gained the repeat after phase 2: not run
    assert ts.evaluate_noise_repeat(late.resolve(), msgs.append) is None and len(calls) == 2
    assert any("no noise control" in m for m in msgs)


def test_dry_run_shows_the_noise_repeat_and_its_cost() -> None:
    from training.plan import plan_profile

    plan = plan_profile(TrainConfig.load("default"), source="default")
    base = next(p["what"] for p in plan.phases if p["step"] == "eval baseline roles")
    assert "noise control: juniors only again on the same 300 questions, each junior's sampling seed + 1000" in base
    assert "juniors only 300 questions x 3 (one is the noise control)" in plan.budgets["eval"]
    off = plan_profile(TrainConfig.model_validate({**TrainConfig.load("default").model_dump(),
                                                    "eval": {"junior_limit": 300, "noise_repeat": False}}))
    assert any(f.where == "eval.noise_repeat" and "without a noise floor" in f.message for f in off.findings)


def test_sections_are_kept_as_written_for_config_yaml_and_the_gather_hash(tmp_path: Path) -> None:
    """``config.yaml`` and the gather fingerprint see a typed section as the profile wrote it (a run made
    before the sections were typed resumes with the same file and hashes); a section replaced in code
    is taken as it is now."""
    from evaluation.metrics.rewards import RewardConfig

    p = _profile(tmp_path, reward={"timeout_s": 5}, sft={"max_steps": 3})
    cfg = TrainConfig.load(p)
    assert cfg.reward.timeout_s == 5.0 and cfg.as_written("reward") == {"timeout_s": 5}  # an int, as written
    assert yaml.safe_load(cfg.to_yaml())["sft"] == {**yaml.safe_load(p.read_text())["sft"], "max_steps": 3}
    again = TrainConfig.load(_written(tmp_path, cfg.to_yaml()))
    assert again.to_yaml() == cfg.to_yaml() and again.resolved() == cfg.resolved()
    changed = cfg.model_copy(update={"reward": RewardConfig(timeout_s=9.0)})
    assert changed.as_written("reward") == {"timeout_s": 9.0}
    # what the run reads (config.yaml, the gather hash's reward) is made once per config, a copy's its own
    assert cfg.record.written["reward"] == {"timeout_s": 5} and cfg.record.yaml == cfg.to_yaml()
    assert changed.record.written["reward"] == {"timeout_s": 9.0} and changed.record.yaml == changed.to_yaml()
    with pytest.raises(ValueError, match="frozen"):
        cfg.reward = RewardConfig(timeout_s=9.0)  # a field is not set in place: the record would go stale


def _written(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_default_and_long_train_phase_1_and_3_alike_so_a_default_run_can_reuse_a_long_runs_work() -> None:
    """``long`` is ``default`` judged on more questions: the gather and grpo sections (and the reward)
    must stay equal, or a default run with ``reuse_from: [a long run]`` could not take that run's store
    (phase 1's hash) nor its phase-3 repair selection (``training.phase_grpo.reused_select``: the same
    phase-3 key)."""
    d, lg = (TrainConfig.load(PROFILE_DIR / f"{n}.yaml") for n in ("default", "long"))
    assert d.gather.model_dump() == lg.gather.model_dump()
    assert d.grpo.settings() == lg.grpo.settings() and d.grpo.warm_start is not None
    assert d.reward.model_dump() == lg.reward.model_dump() and d.sft.model_dump() == lg.sft.model_dump()
    assert d.eval.limit < lg.eval.limit and d.eval.junior_limit == lg.eval.junior_limit
