"""The phase-3 VERL path (GPU), checked as far as a CPU machine goes.

* ``configs/verl_senior.yaml`` (through ``training.grpo_verl.load_verl_config``) is merged over Agent
  Lightning's packaged VERL config composed with verl's own defaults -- the real files of the verl
  release the ``gpu`` extra pins -- in OmegaConf struct mode, so a key verl does not have fails here,
  naming itself. (``agl.VERL`` merges with struct mode off: there a misspelt key is silently added and
  only fails, if at all, inside a Ray worker on the GPU machine.)
* verl's own start-up validation (``verl.utils.config.validate_config``, what verl's ``main_ppo``
  calls) and its config dataclasses (``omega_conf_to_dataclass``) on that config.
* Agent Lightning's VERL integration against that verl: every name its modules import from verl
  exists there (read from the sources), its four ``agentlightning.verl`` modules import, and the verl
  calls they make have the signatures they are made with (``load_reward_manager(num_examine=)``,
  the trainer's ``reward_fn=`` / ``val_reward_fn=``, the rollout manager's ``wake_up`` / ``sleep`` /
  ``server_addresses``).
* ``training.grpo_verl.build_senior_verl`` -- the part of ``train_senior_verl`` before Ray starts:
  ``agl.VERL`` on our config (with the ``ServedPolicyGuard`` trainer), the trace adapter, the tracer --
  built for real, without Ray or CUDA; and Agent Lightning's ``TaskRunner.run`` body on it (tokenizer,
  worker classes, reward managers, datasets, sampler, the trainer with its dataloaders) up to
  ``trainer.init_workers()``, its first Ray call.
* Recorded senior spans become triplets through that adapter and ``agent_match``: a real stored
  rollout store (``tests/fixtures/obs/run/store.sqlite``, written by ``agl.Trainer`` with
  ``StoreTracer``), read with ``query_spans(rollout_id, attempt_id="latest")`` as VERL's daemon reads.

Where verl comes from: an importable ``verl`` (a GPU machine with the gpu extra), else the venv
``scripts/verl-cpu-env.sh`` builds (``scripts/install.sh`` runs it; ``~/.cache/sqlsociety/verl-env`` or
``SQLSOCIETY_VERL_ENV``): the gpu extra's verl and transformers, ray, tensordict, torchdata, codetiming,
over this environment's packages. The verl tests run in child processes of that venv's Python; in this
process ``verl`` stays unimportable, as ``training.plan`` expects on a machine without the GPU stack.
What differs from the GPU set there: torch is this environment's CPU build (not 2.8.0), numpy is 2.x
(verl 0.6.1 asks for < 2), and vLLM, flash-attn and CUDA are absent -- none of them is imported before
``init_workers``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
agentlightning = pytest.importorskip("agentlightning")
pytest.importorskip("hydra", reason="hydra-core composes verl's config (scripts/install.sh installs it)")
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import ConfigKeyError  # noqa: E402

from training.grpo import DEFAULT_VERL_CONFIG, SeniorGRPOConfig  # noqa: E402
from training.grpo_verl import load_verl_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AGL_VERL = Path(agentlightning.__file__).parent / "verl"
STORE_FIXTURE = REPO / "tests" / "fixtures" / "obs" / "run" / "store.sqlite"
MODEL_PATH = "/models/senior-policy"  # agl.VERL and verl's config checks do not open it


def _gpu_pin(name: str = "verl") -> str | None:
    """The version the gpu extra pins ``name`` to (``name==X``), or None."""
    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for req in map(Requirement, extras.get("gpu", [])):
        if req.name == name:
            exact = [s.version for s in req.specifier if s.operator == "=="]
            return exact[0] if exact else None
    return None


def _verl_importable() -> bool:
    return importlib.util.find_spec("verl") is not None  # a top-level name: finds, does not import


VERL_ENV = Path(os.environ.get("SQLSOCIETY_VERL_ENV") or Path.home() / ".cache" / "sqlsociety" / "verl-env")


def _verl_python() -> str:
    """The Python the verl children run in: this one where verl imports, else the verl CPU venv's."""
    return sys.executable if _verl_importable() else str(VERL_ENV / "bin" / "python")


@pytest.fixture(scope="module")
def verl_root() -> Path:
    """The directory holding verl's package (``verl/trainer/config/...``), of the pinned version."""
    if _verl_importable():
        root = Path(next(iter(importlib.util.find_spec("verl").submodule_search_locations))).parent
    else:
        found = sorted(VERL_ENV.glob("lib/python*/site-packages/verl/trainer/config/ppo_trainer.yaml"))
        if not found:
            pytest.skip(f"no verl CPU environment in {VERL_ENV}: run scripts/install.sh (scripts/verl-cpu-env.sh "
                        "builds it) or set SQLSOCIETY_VERL_ENV")
        root = found[0].parents[3]
    version = (root / "verl" / "version" / "version").read_text().strip()
    assert version == _gpu_pin(), (
        f"verl {version} in {root}, but the gpu extra pins verl=={_gpu_pin()}: re-run scripts/install.sh")
    return root


def compose_agl_base(verl_root: Path) -> Any:
    """What ``agl.VERL.__init__`` composes -- ``compose("config")`` of ``pkg://agentlightning/verl``
    (its ``config.yaml`` over verl's ``ppo_trainer``) -- in struct mode. The search path names verl's
    config directory as a file path instead of ``pkg://verl/trainer/config``, which would import verl."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(AGL_VERL), version_base=None):
        cfg = compose(config_name="config",
                      overrides=[f"hydra.searchpath=[file://{verl_root / 'verl' / 'trainer' / 'config'}]"])
    assert OmegaConf.is_struct(cfg)
    return cfg


@pytest.fixture(scope="module")
def base(verl_root) -> Any:
    return compose_agl_base(verl_root)


def _leaves(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _leaves(v, key + ".") if isinstance(v, dict) and v else [(key, v)]
    return out


def test_verl_senior_yaml_composes_over_verl_defaults(base):
    ours = load_verl_config(model_path=MODEL_PATH)
    merged = OmegaConf.merge(base, OmegaConf.create(ours))  # struct: a key verl lacks raises
    # every setting of the YAML arrived, at the key it names (nothing dropped or renamed)
    for key, value in _leaves(ours):
        got = OmegaConf.select(merged, key)
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, key
    yml = yaml.safe_load(DEFAULT_VERL_CONFIG.read_text())
    arr = merged.actor_rollout_ref
    assert merged.algorithm.adv_estimator == "grpo"
    assert arr.model.path == MODEL_PATH and yml["actor_rollout_ref"]["model"]["path"] is None
    assert merged.data.train_batch_size == yml["data"]["train_batch_size"] == 16
    assert arr.actor.ppo_mini_batch_size == 16 and arr.actor.ppo_micro_batch_size_per_gpu == 8
    assert arr.rollout.n == 4 and arr.rollout.name == "vllm" and arr.rollout.gpu_memory_utilization == 0.45
    assert arr.model.lora_rank == 0  # full-parameter: the rollouts use the trained weights (test_verl_policy_sync)
    assert "hf_model" in arr.actor.checkpoint.save_contents and arr.actor.optim.lr == pytest.approx(1e-6)
    # Agent Lightning's own layer survived ours, and verl's defaults fill what we leave out
    assert merged.agentlightning.trace_aggregator.level == "transition" and arr.rollout.mode == "async"
    assert arr.actor.strategy in ("fsdp", "fsdp2")  # agl's TaskRunner runs fsdp (or megatron) only
    assert merged.trainer.total_epochs == 1 and merged.trainer.n_gpus_per_node == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"actor_rollout_ref": {"actor": {"ppo_mini_bach_size": 8}}}, "actor_rollout_ref.actor.ppo_mini_bach_size"),
        ({"actor_rollout_ref": {"model": {"lora_rnak": 16}}}, "actor_rollout_ref.model.lora_rnak"),
        ({"actor_rollout_ref": {"actor": {"checkpoint": {"save_content": ["hf_model"]}}}},
         "actor_rollout_ref.actor.checkpoint.save_content"),
        ({"trainer": {"total_epoch": 2}}, "trainer.total_epoch"),
        ({"data": {"train_bacth_size": 8}}, "data.train_bacth_size"),
    ],
)
def test_a_misspelt_key_fails_naming_it(base, override, key):
    cfg = load_verl_config(model_path=MODEL_PATH, overrides=override)
    with pytest.raises(ConfigKeyError) as e:
        OmegaConf.merge(base, OmegaConf.create(cfg))
    assert key.rsplit(".", 1)[1] in str(e.value) and f"full_key: {key}" in str(e.value)


def test_a_misspelt_key_in_the_yaml_file_fails(base, tmp_path):
    text = DEFAULT_VERL_CONFIG.read_text().replace("ppo_mini_batch_size:", "ppo_mini_bach_size:")
    assert "ppo_mini_bach_size" in text
    bad = tmp_path / "verl_senior.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigKeyError, match="ppo_mini_bach_size"):
        OmegaConf.merge(base, OmegaConf.create(load_verl_config(bad, model_path=MODEL_PATH)))


# ------------------------------------------------------------------ Agent Lightning's imports from verl

# The modules `agl.VERL` imports (agentlightning/verl/__init__.py imports these four), and on the path
# `fit` takes: entrypoint's TaskRunner.run (FSDP strategy, no reward model). Imports inside `try` blocks
# are version fallbacks; async_server.py is loaded only by verl 0.5's custom async server.
AGL_MODULES = ("__init__", "daemon", "dataset", "entrypoint", "trainer")


def _agl_verl_imports() -> list[tuple[str, str, str]]:
    """(where, verl module, name) of each name Agent Lightning's VERL integration imports from verl."""
    found = []
    for mod in AGL_MODULES:
        path = AGL_VERL / f"{mod}.py"
        tree = ast.parse(path.read_text())
        nodes = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        if mod == "entrypoint":
            run = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "TaskRunner"
                       for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "run")
            skip = set()
            for n in ast.walk(run):
                if isinstance(n, ast.Try):
                    skip |= {id(x) for b in n.body for x in ast.walk(b)}
                if isinstance(n, ast.If) and re.search(r"megatron|reward_model", ast.unparse(n.test)):
                    skip |= {id(x) for b in n.body for x in ast.walk(b)}
            nodes += [n for n in ast.walk(run) if isinstance(n, ast.ImportFrom) and id(n) not in skip]
        for n in nodes:
            if n.level == 0 and n.module and (n.module == "verl" or n.module.startswith("verl.")):
                found += [(f"agentlightning/verl/{mod}.py:{n.lineno}", n.module, a.name) for a in n.names]
    return found


def _defined(verl_root: Path, module: str, name: str) -> bool | None:
    """Whether verl's ``module`` binds ``name`` at its top level (or has it as a submodule); None when
    it cannot be told from the source (a star import or a module ``__getattr__``)."""
    base = verl_root.joinpath(*module.split("."))
    if (base / name / "__init__.py").is_file() or (base / f"{name}.py").is_file():
        return True
    src = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not src.is_file():
        return False
    names: set[str] = set()
    unknown = False

    def scan(body: list[ast.stmt]) -> None:
        nonlocal unknown
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
                unknown |= n.name == "__getattr__"
            elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                    names.update(x.id for x in ast.walk(t) if isinstance(x, ast.Name))
            elif isinstance(n, ast.Import):
                names.update((a.asname or a.name).split(".")[0] for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                unknown |= any(a.name == "*" for a in n.names)
                names.update(a.asname or a.name for a in n.names)
            elif isinstance(n, ast.If):
                scan(n.body), scan(n.orelse)
            elif isinstance(n, ast.Try):
                scan(n.body), scan(n.orelse), scan(n.finalbody)
                for h in n.handlers:
                    scan(h.body)

    scan(ast.parse(src.read_text()).body)
    return True if name in names else (None if unknown else False)


def test_agentlightning_verl_integration_imports_resolve_in_this_verl(verl_root):
    needed = _agl_verl_imports()
    assert len(needed) >= 15 and ("verl.trainer.main_ppo", "create_rl_sampler") in [n[1:] for n in needed]
    version = (verl_root / "verl" / "version" / "version").read_text().strip()
    missing = [f"{where}: from {module} import {name}" for where, module, name in needed
               if _defined(verl_root, module, name) is False]
    assert not missing, (
        f"agentlightning {agentlightning.__version__}'s VERL integration imports names that verl {version} "
        f"(gpu extra: verl=={_gpu_pin()}) does not have -- agl.VERL(...) or its Ray TaskRunner fails with "
        "ImportError before any GPU work:\n  " + "\n  ".join(missing))


# ------------------------------------------------------------------ verl's Python side, in a child process


def _child(code: str, verl_root: Path, *args: str, timeout: int = 600) -> dict[str, Any]:
    """Run ``code`` in the verl Python (:func:`_verl_python`); its last stdout line is JSON. A failure,
    a missing module included, fails the test: that environment is built to import verl."""
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    r = subprocess.run([_verl_python(), "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        pytest.fail(f"child process ({_verl_python()}, verl in {verl_root}) failed (rc {r.returncode}):\n"
                    f"{r.stderr[-6000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


VALIDATE = r"""
import json, sys
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic
from verl.utils.config import omega_conf_to_dataclass, validate_config

cfg = OmegaConf.load(sys.argv[1])
# verl 0.6's main_ppo adds the reference worker (and so validates for it) when a KL term is on;
# Agent Lightning's TaskRunner decides the same way
ref = bool(cfg.algorithm.use_kl_in_reward or cfg.actor_rollout_ref.actor.use_kl_loss)
out = {}
try:
    validate_config(cfg, use_reference_policy=ref, use_critic=need_critic(cfg))
    out["validate"] = "passed"
except Exception as e:
    out["validate"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out)); sys.exit(0)
actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
algo = omega_conf_to_dataclass(cfg.algorithm)
out.update(actor=type(actor).__name__, rollout=type(rollout).__name__, algorithm=type(algo).__name__,
           mini=actor.ppo_mini_batch_size, micro=actor.ppo_micro_batch_size_per_gpu, lr=actor.optim.lr,
           n=rollout.n, rollout_name=rollout.name, adv=str(algo.adv_estimator),
           save=list(actor.checkpoint.save_contents), critic=need_critic(cfg), ref=ref)
print(json.dumps(out))
"""


def _agl_style(base: Any, cfg: dict[str, Any]) -> Any:
    """``agl.VERL``'s merge: struct mode off, the user dict over the composed base."""
    b = base.copy()
    OmegaConf.set_struct(b, False)
    return OmegaConf.merge(b, OmegaConf.create(cfg))


def test_verl_validates_and_instantiates_our_config(base, verl_root, tmp_path):
    path = tmp_path / "ppo.yaml"
    OmegaConf.save(_agl_style(base, load_verl_config(model_path=MODEL_PATH)), path)
    out = _child(VALIDATE, verl_root, str(path))
    assert out["validate"] == "passed", out  # every check of verl's start-up validation
    assert out["actor"].endswith("ActorConfig") and out["rollout"] == "RolloutConfig"
    assert out["algorithm"] == "AlgoConfig" and out["adv"].lower().endswith("grpo")
    assert (out["mini"], out["micro"], out["n"], out["rollout_name"]) == (16, 8, 4, "vllm")
    assert out["lr"] == pytest.approx(1e-6) and out["save"] == ["model", "optimizer", "extra", "hf_model"]
    assert out["critic"] is False and out["ref"] is False  # GRPO: no value model; no KL term: no reference


def test_verl_rejects_a_misspelt_key_that_agl_lets_through(base, verl_root, tmp_path):
    typo = {"actor_rollout_ref": {"actor": {"ppo_mini_bach_size": 8}}}
    bad = load_verl_config(model_path=MODEL_PATH, overrides=typo)
    merged = _agl_style(base, bad)  # agl.VERL's merge accepts it silently
    assert merged.actor_rollout_ref.actor.ppo_mini_bach_size == 8
    path = tmp_path / "ppo.yaml"
    OmegaConf.save(merged, path)
    out = _child(VALIDATE, verl_root, str(path))
    assert "ppo_mini_bach_size" in out["validate"], out


BUILD = r"""
import asyncio, inspect, json, sys
from pathlib import Path

import ray, torch, verl
from agentlightning.store import InMemoryLightningStore
from agentlightning.verl.daemon import AgentModeDaemon
from agentlightning.verl.entrypoint import TaskRunner
from training.grpo import SeniorGRPOConfig
from training.grpo_verl import build_senior_verl
from evaluation.tracing.store import SqliteLightningStore

# The policy directory: TaskRunner.run reads only its tokenizer before Ray (hf_tokenizer, hf_processor) -- a
# word-level tokenizer built here and saved as a transformers fast tokenizer; no weights are loaded before Ray.
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

model_dir = Path(sys.argv[1])
words = ["<pad>", "<eos>", "<unk>"] + "select count from singer where age how many".split()
tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
                        ).save_pretrained(model_dir)

parts = build_senior_verl(SeniorGRPOConfig(), model_path=str(model_dir))
algo, adapter, cfg = parts["algorithm"], parts["adapter"], parts["algorithm"].config
store = SqliteLightningStore(sys.argv[2])

async def triplets():
    rollouts = await store.query_rollouts()
    return [len(adapter.adapt(await store.query_spans(r.rollout_id, attempt_id="latest"))) for r in rollouts]

out = {
    "verl": verl.__version__,
    "algorithm": type(algo).__module__ + "." + type(algo).__name__, "trainer_cls": algo.trainer_cls.__name__,
    "adapter": type(adapter).__name__, "agent_match": adapter.agent_match,
    "tracer": type(parts["tracer"]).__name__, "n_runners": parts["n_runners"],
    "adv": cfg.algorithm.adv_estimator, "path": cfg.actor_rollout_ref.model.path,
    "lora_rank": cfg.actor_rollout_ref.model.lora_rank, "n": cfg.actor_rollout_ref.rollout.n,
    "agl_port": cfg.agentlightning.port, "triplets": asyncio.run(triplets()),
}
store.close()

# Agent Lightning's TaskRunner.run -- the body its Ray actor runs -- called in this process on agl.VERL's config,
# with our trainer class stopped at its first Ray call (init_workers: resource pools, worker groups, vLLM).
class StopAtRay(Exception):
    pass

built = {}

class UpToRay(algo.trainer_cls):
    def init_workers(self):
        built["trainer"] = self
        raise StopAtRay

runner_cls = TaskRunner.__ray_metadata__.modified_class  # the class ray.remote wrapped
tasks = [{"question_id": f"q{i}", "question": "how many singer", "db_id": "concert_singer"} for i in range(40)]
try:
    runner_cls().run(config=cfg, train_dataset=tasks, val_dataset=tasks[:8], store=InMemoryLightningStore(),
                     llm_proxy=None, adapter=adapter, trainer_cls=UpToRay, daemon_cls=AgentModeDaemon)
    out["stopped_at_ray"] = False
except StopAtRay:
    out["stopped_at_ray"] = True
t = built["trainer"]
from verl.trainer.ppo.utils import Role
actor_cls = t.role_worker_mapping[Role.ActorRollout].__ray_metadata__.modified_class
out.update(
    trainer_bases=[c.__name__ for c in type(t).__mro__[1:4]],
    reward_fn=type(t.reward_fn).__name__, val_reward_fn=type(t.val_reward_fn).__name__,
    train_batches=len(t.train_dataloader), val_batches=len(t.val_dataloader), total_steps=t.total_training_steps,
    roles=sorted(r.name for r in t.role_worker_mapping), actor_worker=actor_cls.__mro__[1].__module__ + "." +
    actor_cls.__mro__[1].__name__, ref_in_actor=t.ref_in_actor, use_critic=t.use_critic,
    use_reference_policy=t.use_reference_policy, pool=t.resource_pool_manager.resource_pool_spec,
    store=type(t.store).__name__, adapter_kept=t.adapter is adapter, daemon=t.daemon_cls.__name__,
    pad_token_id=t.tokenizer.pad_token_id,
)
# what fit() calls on verl after Ray starts: the rollout manager init_workers builds, and the verl calls
# TaskRunner made above with these keywords
from verl.experimental.agent_loop import AgentLoopManager
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import load_reward_manager
out.update(
    manager_api=[callable(getattr(AgentLoopManager, name, None)) for name in ("wake_up", "sleep")]
    + ["self.server_addresses =" in inspect.getsource(AgentLoopManager)],
    reward_manager_params=list(inspect.signature(load_reward_manager).parameters),
    trainer_params=list(inspect.signature(RayPPOTrainer.__init__).parameters),
    ray_started=ray.is_initialized(), cuda_initialized=torch.cuda.is_initialized(),
)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def built(verl_root, tmp_path_factory) -> dict[str, Any]:
    """One child run of :data:`BUILD` (about a minute: importing verl, ray and Agent Lightning is most of it)."""
    d = tmp_path_factory.mktemp("verl-build")
    shutil.copy(STORE_FIXTURE, d / "store.sqlite")
    return _child(BUILD, verl_root, str(d / "policy"), str(d / "store.sqlite"))


def test_build_senior_verl_runs_on_the_cpu_up_to_ray(built):
    """``train_senior_verl`` minus ``fit``: the real ``agl.VERL`` (its hydra compose over verl's
    packaged defaults included), adapter and tracer; Ray not started, CUDA not initialised."""
    out = built
    assert out["verl"] == _gpu_pin()
    assert out["algorithm"] == "agentlightning.algorithm.verl.interface.VERL"
    assert out["trainer_cls"] == "SyncCheckedTrainer"  # training.grpo_verl.sync_checked_trainer_cls
    assert (out["adapter"], out["agent_match"]) == ("TracerTraceToTriplet", SeniorGRPOConfig().agent_match)
    assert out["tracer"] == "StoreTracer" and out["n_runners"] == SeniorGRPOConfig().n_runners
    assert (out["adv"], out["lora_rank"], out["n"]) == ("grpo", 0, 4) and out["path"].endswith("policy")
    assert out["agl_port"] == 9999
    assert out["triplets"] and all(n > 0 for n in out["triplets"])
    assert out["ray_started"] is False and out["cuda_initialized"] is False


def test_agentlightning_task_runner_builds_the_trainer_up_to_ray(built):
    """Agent Lightning's ``TaskRunner.run`` against the pinned verl: worker classes from
    ``verl.workers.fsdp_workers``, ``load_reward_manager(..., num_examine=)``, ``create_rl_sampler``, the
    trainer constructed with ``reward_fn=`` / ``val_reward_fn=`` and its dataloaders -- every call before
    ``init_workers`` -- then the verl API ``fit`` uses after Ray starts."""
    out = built
    assert out["stopped_at_ray"] is True  # reached init_workers: everything before it ran
    assert out["trainer_bases"] == ["SyncCheckedTrainer", "AgentLightningTrainer", "RayPPOTrainer"]
    assert out["reward_fn"] == out["val_reward_fn"] == "NaiveRewardManager"
    assert (out["train_batches"], out["val_batches"], out["total_steps"]) == (40 // 16, 1, 40 // 16)  # drop_last
    assert out["roles"] == ["ActorRollout", "Critic"]  # no reference worker: no KL term
    assert out["actor_worker"] == "verl.workers.fsdp_workers.AsyncActorRolloutRefWorker"  # rollout.mode: async
    assert out["ref_in_actor"] is False and out["use_critic"] is False and out["use_reference_policy"] is False
    assert out["pool"] == {"global_pool": [1]}
    assert (out["store"], out["adapter_kept"], out["daemon"]) == ("InMemoryLightningStore", True, "AgentModeDaemon")
    assert out["pad_token_id"] == 0
    assert out["manager_api"] == [True, True, True]  # wake_up / sleep (gone in verl 0.7.1) / server_addresses
    assert "num_examine" in out["reward_manager_params"]  # removed in verl 0.7.1
    assert {"reward_fn", "val_reward_fn"} <= set(out["trainer_params"])  # removed in verl 0.7.1
    assert out["ray_started"] is False and out["cuda_initialized"] is False


# ------------------------------------------------------------------ recorded senior spans -> triplets


def test_recorded_senior_spans_become_triplets_through_agent_match(tmp_path):
    """VERL's daemon, per finished rollout: ``spans = store.query_spans(rollout_id, attempt_id="latest")``,
    ``triplets = adapter.adapt(spans)``, final reward = the last triplet reward that is not None. Here with
    the adapter ``build_senior_verl`` gives ``agl.Trainer``, on real stored rollouts; expected values come
    from the project's own span reader (``HierarchicalTraceAdapter``, which reads the chat-model spans)."""
    from evaluation.tracing.store import SqliteLightningStore
    from training.adapter import HierarchicalTraceAdapter
    from training.grpo_verl import senior_verl_adapter
    from training.senior_reward import NODES

    store_path = tmp_path / "store.sqlite"
    shutil.copy(STORE_FIXTURE, store_path)
    agent_match = SeniorGRPOConfig().agent_match
    adapter = senior_verl_adapter(agent_match)
    everything = senior_verl_adapter(None)  # agent_match=None: every LLM call of the society
    store = SqliteLightningStore(store_path)

    async def read() -> list[tuple[Any, list[Any]]]:
        rollouts = await store.query_rollouts()
        return [(r, list(await store.query_spans(r.rollout_id, attempt_id="latest"))) for r in rollouts]

    try:
        rows = asyncio.run(read())
    finally:
        store.close()
    assert len(rows) >= 4
    for rollout, spans in rows:
        triplets = adapter.adapt(spans)
        trace = HierarchicalTraceAdapter().adapt(spans)
        senior = trace.calls(role="senior")
        assert senior and len(trace.llm_calls) > len(senior)  # juniors spoke too
        assert len(everything.adapt(spans)) == len(trace.llm_calls)
        # exactly the senior's calls, in order, prompt and reply as sent and received
        assert len(triplets) == len(senior), rollout.rollout_id
        for t, call in zip(triplets, senior, strict=True):
            assert re.search(agent_match, t.metadata["agent_name"]) and t.metadata["agent_name"] in NODES
            assert t.metadata["agent_name"] == call.node
            assert [(m["role"], m["content"]) for m in t.prompt["raw_content"]] == \
                [(m["role"], m["content"]) for m in call.messages]
            assert t.response["raw_content"][0]["content"] == call.response
            # llama.cpp returns no token ids; on the GPU VERL's vLLM server supplies them
            assert t.prompt["token_ids"] == [] and t.response["token_ids"] == []
        final = next((t.reward for t in reversed(triplets) if t.reward is not None), None)
        assert final == pytest.approx(trace.reward), rollout.rollout_id
