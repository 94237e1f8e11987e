"""A trained society outside `sqlsociety train`: `--run` on ask/eval/roles and `sqlsociety export`.

The run directory is the smallest real one: the pipeline's own layout and ``done.json`` files
(written as :class:`training.pipeline.TrainingPipeline` writes it), a real PEFT LoRA adapter on SmolLM2-135M
for one junior persona (random A and B, ``init_lora_weights=False``, so it changes what the model
says; exported to GGUF by ``training.export``), no phase 3 (the senior stays untrained), and a real
bandit policy fitted on a few real decisions (Spider dev questions, the gold query and a wrong one,
executed on their SQLite database). The servers are real llama.cpp servers on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("peft")

from cli_text import flat
from typer.testing import CliRunner  # noqa: E402

from evaluation.metrics.ex import execution_match  # noqa: E402
from society.bandit import BanditConfig, SupervisorBandit  # noqa: E402
from society.candidate import Candidate  # noqa: E402
from society.cli.root import app  # noqa: E402
from society.toolkit import execute_summary  # noqa: E402
from tools.spider import default_data_dir, load_examples  # noqa: E402
from training.checkpoints import resolve_gguf  # noqa: E402
from training.pipeline import TrainingPipeline  # noqa: E402
from training.profile import TrainConfig  # noqa: E402
from training.reuse import file_sha256  # noqa: E402
from training.role_aliases import persona_alias  # noqa: E402
from training.trained import EXPORT_MANIFEST, load_trained  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMOL = "smollm2-135m"
DIRECT = persona_alias("direct")  # the one persona with an adapter
REPORT_TABLE = ("## Per-role breakdown\n\n| role | trained in | chosen |\n|---|---|---|\n"
                "| junior_direct | sft | 50.0% |\n\nchosen: share of questions.")


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart already
        return CliRunner()


def _bandit_samples(n: int = 8) -> list[dict]:
    """Real supervisor decisions: per question the gold query and a wrong one, executed for real."""
    out = []
    for k, e in enumerate(load_examples(split="dev", limit=n)):
        sqls = [e.gold_sql, "SELECT 1"] if k % 2 else ["SELECT 1", e.gold_sql]
        cands, rewards = [], []
        for persona, sql in zip(("direct", "step_by_step"), sqls, strict=True):
            es = execute_summary(str(e.db_path), sql)
            cands.append(Candidate(junior=f"junior_{persona}", persona=persona, sql=sql, raw=sql, ok=es.ok,
                                   row_count=es.row_count, columns=es.columns, result_digest=es.digest))
            rewards.append(1.0 if execution_match(e.db_path, sql, e.gold_sql).match else 0.0)
        out.append({"task_id": e.id, "question": e.question, "candidates": [c.model_dump() for c in cands],
                    "action": k % 2, "reward": rewards[k % 2], "candidate_rewards": rewards, "propensity": 0.5,
                    "policy": "random"})
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory after phases 2 (per persona: only ``direct`` has an adapter) and 4."""
    import torch
    from peft import LoraConfig, get_peft_model

    from training.checkpoints import load_for_training
    from training.export import export_lora_gguf

    root = tmp_path_factory.mktemp("trained") / "run"
    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg.update(society_config=str(REPO / "configs" / "smoke.yaml"), junior_adapters="per_persona", llm_proxy=False)
    pipe = TrainingPipeline(TrainConfig.model_validate(cfg), root, echo=lambda _m: None)
    d2 = pipe.dir.phase_dir(2)
    adapter = d2 / "adapters" / DIRECT
    model, _tok = load_for_training(SMOL)
    torch.manual_seed(0)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False, lora_dropout=0.0))
    pm.save_pretrained(str(adapter))
    pm.unload()
    gguf = export_lora_gguf(adapter, SMOL, adapter / "adapter.gguf")
    pipe.dir.mark_done(2, {"junior_adapters": "per_persona", "adapter": None, "adapters": {
        "direct": {"alias": DIRECT, "adapter": str(adapter), "adapter_gguf": str(gguf), "rows": 4},
        "step_by_step": {"alias": persona_alias("step_by_step"), "adapter": None, "rows": 0},
        "decompose": {"alias": persona_alias("decompose"), "adapter": None, "rows": 0}}})
    bandit = SupervisorBandit(BanditConfig(seed=0)).fit(_bandit_samples())
    policy = bandit.save(pipe.dir.phase_dir(4) / "policy.joblib")
    pipe.dir.mark_done(4, {"policy": str(policy), "samples": 8})
    (root / "report.md").write_text(f"# SQL Society training report\n\n{REPORT_TABLE}\n\n## Where ...\n")
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A Spider-format folder: two dev questions on concert_singer and that database."""
    src = default_data_dir()
    d = tmp_path_factory.mktemp("tiny_spider")
    dev = [r for r in json.loads((src / "dev.json").read_text()) if r["db_id"] == "concert_singer"][:2]
    (d / "dev.json").write_text(json.dumps(dev))
    shutil.copyfile(src / "tables.json", d / "tables.json")
    shutil.copytree(src / "database" / "concert_singer", d / "database" / "concert_singer")
    return d


def test_a_run_binds_what_exists_and_names_the_untrained_roles(trained_run: Path) -> None:
    t = load_trained(trained_run)
    by_role = {r.role: r for r in t.roles}
    assert by_role["junior_direct"].alias == DIRECT and "phase 2 SFT" in by_role["junior_direct"].trained
    assert by_role["junior_step_by_step"].trained is None
    assert "'step_by_step'" in by_role["junior_step_by_step"].why_untrained
    assert by_role["senior"].trained is None and "no phase 3 (grpo) output" in by_role["senior"].why_untrained
    assert by_role["supervisor"].trained == "bandit policy (phase 4)"
    assert set(t.adapters) == {DIRECT}
    sup = t.society.role("supervisor")
    assert sup.policy == "bandit" and Path(sup.options["path"]).is_file()

    res = _runner().invoke(app, ["roles", "--run", str(trained_run)])
    assert res.exit_code == 0, res.output
    assert "  junior_direct: LoRA junior_policy_direct (phase 2 SFT, per_persona)\n" in res.stdout
    assert "  junior_step_by_step: untrained (phase 2 trained no adapter for persona 'step_by_step'" in res.stdout
    assert f"  senior: untrained (no phase 3 (grpo) output in {trained_run})\n" in res.stdout
    assert "  supervisor: bandit policy (phase 4)\n" in res.stdout
    assert "  reviewer_semantic: untrained (no phase trains this role)\n" in res.stdout


def test_loading_a_run_writes_nothing_in_it(trained_run: Path, tmp_path: Path) -> None:
    """`roles --run` only reads: a run directory without eval/ (a run stopped before its first
    evaluation) keeps exactly its files, each with its modification time."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "eval", ignore_errors=True)

    def files() -> dict[str, float]:
        return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("*"))}

    before = files()
    load_trained(run)
    res = _runner().invoke(app, ["roles", "--run", str(run)])
    assert res.exit_code == 0, res.output
    assert files() == before


def test_not_a_run_is_refused_naming_it_and_what_to_pass(tmp_path: Path, trained_run: Path, tiny_data: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    r = _runner()
    for args in (["eval", "--run", str(plain), "--data-dir", str(tiny_data), "--limit", "1"],
                 ["roles", "--run", str(tmp_path / "missing")]):
        res = r.invoke(app, args)
        assert res.exit_code == 2, res.output
        err = flat(res.stderr)
        assert "not a trained society" in err or "does not exist" in err, err
        assert "sqlsociety export" in err and "sqlsociety train" in err, err
    res = r.invoke(app, ["export", str(plain), str(tmp_path / "out")])
    assert res.exit_code == 2 and "not a trained society" in flat(res.stdout), res.output
    assert not (tmp_path / "out").exists()
    res = r.invoke(app, ["roles", "--run", str(trained_run), "--config", str(REPO / "configs" / "smoke.yaml")])
    assert res.exit_code == 2 and "drop --config" in flat(res.stderr), res.output


@pytest.mark.model
def test_export_then_eval_run_serves_the_adapters_and_the_bandit(trained_run: Path, tiny_data: Path,
                                                                 tmp_path: Path, monkeypatch) -> None:
    from society.serving import serve_config

    out = tmp_path / "export"
    r = _runner()
    res = r.invoke(app, ["export", str(trained_run), str(out)])
    assert res.exit_code == 0, res.output
    # the folder: compact (no base model inside), the base named by id and hash
    m = json.loads((out / EXPORT_MANIFEST).read_text())
    base_sha = file_sha256(resolve_gguf(SMOL))
    assert m["base_model"]["id"] == SMOL and m["base_model"]["sha256"] == base_sha
    assert set(m["adapters"]) == {DIRECT} and (out / "adapters" / f"{DIRECT}.gguf").is_file()
    # compact by default: the run's F32 adapter re-exported in F16 (half the bytes); --dtype f32 copies it
    import gguf

    run_gguf = load_trained(trained_run).gguf_adapters()[DIRECT]
    lora = [t for t in gguf.GGUFReader(str(out / "adapters" / f"{DIRECT}.gguf")).tensors if ".lora_" in t.name]
    assert lora and {t.tensor_type for t in lora} == {gguf.GGMLQuantizationType.F16}
    assert m["adapters"][DIRECT]["dtype"] == "f16" and "(F16)" in (out / "card.md").read_text()
    f32 = tmp_path / "export-f32"
    assert r.invoke(app, ["export", "--dtype", "f32", str(trained_run), str(f32)]).exit_code == 0
    assert (f32 / "adapters" / f"{DIRECT}.gguf").read_bytes() == run_gguf.read_bytes()
    assert (out / "adapters" / f"{DIRECT}.gguf").stat().st_size < 0.6 * run_gguf.stat().st_size
    assert r.invoke(app, ["export", "--dtype", "q4", str(trained_run), str(tmp_path / "x")]).exit_code == 2
    files = [f for f in out.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 5_000_000
    assert base_sha not in {file_sha256(f, cache=tmp_path / "h.json") for f in files}
    card = (out / "card.md").read_text()
    assert "`smoke`" in card and base_sha in card and REPORT_TABLE.split("\n\n")[1] in card
    society = yaml.safe_load((out / "society.yaml").read_text())
    sup = next(x for x in society["roles"] if x["type"] == "supervisor")
    assert sup["policy"] == "bandit" and sup["options"]["path"] == "policy.joblib"

    # served from the export: llama-server loads the exported GGUF; the direct junior's requests
    # choose it, the untrained persona's the base model -- and the adapter changes the answer
    t = load_trained(out)
    with serve_config(t.society, adapters=t.gguf_adapters()) as eps:
        loaded = json.loads(urllib.request.urlopen(eps[DIRECT].base_url[:-3] + "/lora-adapters").read())
        assert [a["path"] for a in loaded] == [str((out / "adapters" / f"{DIRECT}.gguf").resolve())]
        assert [x["scale"] for x in eps[DIRECT].extra_body["lora"]] == [1.0]
        assert [x["scale"] for x in eps[persona_alias("step_by_step")].extra_body["lora"]] == [0.0]
        replies = {a: _chat(eps[a]) for a in (DIRECT, persona_alias("step_by_step"))}
    assert replies[DIRECT] != replies[persona_alias("step_by_step")], replies

    # `sqlsociety eval --run <export>`: the same binding through the CLI
    runs = tmp_path / "runs"
    monkeypatch.setenv("SQLSOCIETY_RUNS_DIR", str(runs))
    res = r.invoke(app, ["eval", "--run", str(out), "--data-dir", str(tiny_data), "--split", "dev", "--limit", "2"])
    assert res.exit_code == 0, res.output
    (rundir,) = list(runs.iterdir())
    meta = json.loads((rundir / "meta.json").read_text())
    assert meta["trained"]["adapters"] == {DIRECT: str(out / "adapters" / f"{DIRECT}.gguf")}
    recs = [json.loads(x) for x in (rundir / "questions.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    models = {}
    for f in (rundir / "traces").glob("*.json"):
        trace = json.loads(f.read_text())
        assert trace["choices"] and all(ch["policy"] == "bandit" for ch in trace["choices"]), trace["choices"]
        for call in trace["trace"]["llm_calls"]:
            models.setdefault(call["role"], set()).add(call["model"])
    # every request of junior_direct named its adapter; the untrained junior's named the base model
    assert models["junior_direct"] == {DIRECT}, models
    assert models["junior_step_by_step"] == {SMOL}, models


@pytest.mark.model
def test_eval_run_agent_single_writes_with_the_writers_trained_adapter(trained_run: Path, tiny_data: Path,
                                                                      tmp_path: Path, monkeypatch) -> None:
    """`sqlsociety eval --run RUN --agent single`: the one-shot agent's writer (``baselines.writer``,
    junior_direct) calls its trained adapter's alias, once per question -- what a user who wants one
    call per question gets from the run."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("SQLSOCIETY_RUNS_DIR", str(runs))
    res = _runner().invoke(app, ["eval", "--run", str(trained_run), "--agent", "single", "--data-dir",
                                 str(tiny_data), "--split", "dev", "--limit", "2"])
    assert res.exit_code == 0, res.output
    (rundir,) = list(runs.iterdir())
    meta = json.loads((rundir / "meta.json").read_text())
    assert meta["agent"] == "single" and set(meta["trained"]["adapters"]) == {DIRECT}
    recs = [json.loads(x) for x in (rundir / "questions.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["agent"] == "single" and r["llm_calls"] == 1 for r in recs)
    calls = [call for f in (rundir / "traces").glob("*.json")
             for call in json.loads(f.read_text())["trace"]["llm_calls"]]
    assert len(calls) == 2 and {(c["role"], c["model"]) for c in calls} == {("junior_direct", DIRECT)}, calls


@pytest.mark.model
def test_an_adapter_is_refused_on_another_base_model(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    r = _runner()
    assert r.invoke(app, ["export", str(trained_run), str(out)]).exit_code == 0
    # 1. --model-alias would serve the adapter's alias another base model file
    res = r.invoke(app, ["eval", "--run", str(out), "--data-dir", str(tiny_data), "--limit", "1",
                         "--model-alias", "qwen2.5-coder-0.5b"])
    assert res.exit_code == 2, res.output
    err = flat(res.stderr)
    assert f"was trained on {SMOL}" in err and "qwen2.5-coder-0.5b" in err and "sha256" in err, err
    # 2. the base file the export names is not the file this machine has under that id
    m = json.loads((out / EXPORT_MANIFEST).read_text())
    m["base_model"]["sha256"] = "0" * 64
    (out / EXPORT_MANIFEST).write_text(json.dumps(m))
    res = r.invoke(app, ["eval", "--run", str(out), "--data-dir", str(tiny_data), "--limit", "1"])
    assert res.exit_code == 2, res.output
    err = flat(res.stderr)
    assert "000000000000" in err and f"would be served {SMOL}" in err, err


def _chat(ep, max_tokens: int = 16) -> str:
    payload = {"model": ep.model, "temperature": 0, "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": "How many singers are there? Answer with SQL."}],
               **dict(ep.extra_body or {})}
    req = urllib.request.Request(ep.base_url + "/chat/completions", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]


def test_the_committed_proof_run_export_loads_with_every_trained_role_and_intact_files() -> None:
    """The export of the `long` run (bench/results/long-2026-12-06-export, what the README tells a
    user to try) loads as it is committed: every junior, the senior and the supervisor bound, each
    adapter's bytes equal to the sha256 its manifest recorded at export (a broken or re-encoded file
    fails here), the supervisor on the bandit policy that ships beside it."""
    root = Path(__file__).resolve().parents[1] / "bench" / "results" / "long-2026-12-06-export"
    t = load_trained(root)
    assert t.kind == "export" and t.profile == "long"
    bound = {r.role: r.trained for r in t.roles}
    assert all(bound[r] for r in ("junior_direct", "junior_step_by_step", "junior_decompose", "senior", "supervisor"))
    assert not bound["reviewer_semantic"]
    manifest = json.loads((root / EXPORT_MANIFEST).read_text())
    assert set(t.adapters) == set(manifest["adapters"]) and len(t.adapters) == 4
    for alias, info in manifest["adapters"].items():
        assert file_sha256(t.adapters[alias]) == info["sha256"], alias
    assert t.society.role("supervisor").policy == "bandit"
