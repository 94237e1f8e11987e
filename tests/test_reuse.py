"""Reusing the untrained-model stages across runs (training/reuse.py, wired into training/pipeline.py).

A stage of the untrained model is taken from an earlier run only when the content hashes of the
model file, the society config, the prompts, the sampling settings and the questions all match;
one differing part refuses the reuse, naming the part, and nothing is evaluated or mixed. The
pipeline tests evaluate for real on SmolLM2-135M (llama.cpp server, Spider databases) and then
reuse; the refusals change one real setting each (the society YAML, a prompt, the question draw).
The model part is checked on two real files: its hash follows the file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from training.reuse import (  # noqa: E402
    PARTS,
    Fingerprint,
    ReuseRefused,
    copy_questions,
    copy_stage,
    file_sha256,
    find_reusable,
    fingerprint_path,
    model_part,
    reused_path,
)

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the module


def test_file_hash_is_the_sha256_of_the_bytes_and_cached_by_path_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"weights" * 1000)
    cache = tmp_path / "cache.json"
    assert file_sha256(f, cache=cache) == hashlib.sha256(f.read_bytes()).hexdigest()
    (key, value), = json.loads(cache.read_text()).items()
    st = f.stat()
    assert key == f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    assert value == hashlib.sha256(f.read_bytes()).hexdigest()
    # the cached value is what a second call returns (the file is not read again while unchanged) ...
    cache.write_text(json.dumps({key: "cached"}))
    assert file_sha256(f, cache=cache) == "cached"
    # ... and a changed file (new size and mtime) is hashed again
    f.write_bytes(b"other weights")
    assert file_sha256(f, cache=cache) == hashlib.sha256(b"other weights").hexdigest()
    with pytest.raises(FileNotFoundError, match="not a file"):
        file_sha256(tmp_path / "missing.gguf", cache=cache)


def test_model_part_follows_the_model_files_bytes(tmp_path: Path) -> None:
    from society.config import SocietyConfig

    society = SocietyConfig.load(REPO / "configs" / "smoke.yaml")
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"one model")
    b.write_bytes(b"another model")
    cache = tmp_path / "cache.json"
    pa = model_part(society, model_files={"smollm2-135m": a}, cache=cache)
    pb = model_part(society, model_files={"smollm2-135m": b}, cache=cache)
    assert pa == {"engine": "llama.cpp", "files": {"smollm2-135m": hashlib.sha256(b"one model").hexdigest()}}
    assert pa != pb
    from training.reuse import NotReusable

    with pytest.raises(NotReusable, match="vllm"):
        model_part(society, engine="vllm", model_files={"smollm2-135m": a}, cache=cache)
    remote = society.with_endpoint("juniors", "http://127.0.0.1:9/v1", "m")
    with pytest.raises(NotReusable, match="remote endpoint"):
        model_part(remote, model_files={"smollm2-135m": a}, cache=cache)


def _source(root: Path, stage: str, fp: Fingerprint | None, *, role_level: bool = False) -> Path:
    d = root / "eval" / ("roles" if role_level else "")
    d.mkdir(parents=True, exist_ok=True)
    recs = d / f"{stage}.jsonl"
    recs.write_text(json.dumps({"question_id": "dev-1", "match": True}) + "\n")
    recs.with_suffix(".summary.json").write_text(json.dumps({"stage": stage, "ex": 1.0, "n": 1, "seconds": 12.5}))
    if fp is not None:
        fingerprint_path(recs).write_text(json.dumps(fp.to_json()))
    return root


@pytest.mark.parametrize("part", PARTS)
def test_a_source_differing_in_any_one_part_is_refused_naming_it(tmp_path: Path, part: str) -> None:
    want = Fingerprint.of("baseline", "society", {p: f"value of {p}" for p in PARTS})
    have = Fingerprint.of("baseline", "society", {p: f"value of {p}" + (", changed" if p == part else "")
                                                  for p in PARTS})
    src = _source(tmp_path / "old", "baseline", have)
    with pytest.raises(ReuseRefused) as e:
        find_reusable(want, [src], role_level=False)
    msg = str(e.value)
    assert f"{part} hash differs (here {want.parts[part][:12]}, there {have.parts[part][:12]})" in msg
    assert [p for p in PARTS if f"{p} hash differs" in msg] == [part]  # only the differing part is named
    assert str(src) in msg and "'baseline'" in msg


def test_a_source_without_the_stage_is_passed_over_and_one_without_a_fingerprint_refused(tmp_path: Path) -> None:
    want = Fingerprint.of("juniors_baseline", "juniors", {p: p for p in PARTS})
    empty = tmp_path / "empty"
    (empty / "eval").mkdir(parents=True)
    match_src = _source(tmp_path / "match", "juniors_baseline", want, role_level=True)
    m = find_reusable(want, [empty, match_src], role_level=True)
    assert m is not None and m.run_dir == match_src
    assert find_reusable(want, [empty], role_level=True) is None
    old = _source(tmp_path / "old", "juniors_baseline", None, role_level=True)
    with pytest.raises(ReuseRefused, match="has no fingerprint"):
        find_reusable(want, [old, match_src], role_level=True)
    other_agent = Fingerprint("juniors_baseline", "society", want.parts)
    with pytest.raises(ReuseRefused, match="agent differs"):
        find_reusable(other_agent, [match_src], role_level=True)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        find_reusable(want, [tmp_path / "nowhere"], role_level=True)


def test_copy_stage_says_where_the_records_came_from(tmp_path: Path) -> None:
    fp = Fingerprint.of("baseline", "society", {p: p for p in PARTS})
    src = _source(tmp_path / "old", "baseline", fp)
    m = find_reusable(fp, [src], role_level=False)
    dest = tmp_path / "new" / "eval" / "baseline.jsonl"
    out = copy_stage(m, dest)
    assert dest.read_text() == (src / "eval" / "baseline.jsonl").read_text()
    assert out["reused_from"] == str(src) and json.loads(dest.with_suffix(".summary.json").read_text()) == out
    info = json.loads(reused_path(dest).read_text())
    assert info["source_run"] == str(src) and info["parts"] == fp.parts and info["source_seconds"] == 12.5
    assert Fingerprint.from_json(json.loads(fingerprint_path(dest).read_text())) == fp


def test_the_report_says_when_a_reused_stage_was_widened_here(tmp_path: Path) -> None:
    from evaluation.report_content import reused_stages

    fp = Fingerprint.of("baseline", "society", {p: p for p in PARTS})
    src = _source(tmp_path / "old", "baseline", fp)
    dest = tmp_path / "new" / "eval" / "baseline.jsonl"
    copy_stage(find_reusable(fp, [src], role_level=False), dest)
    (got,) = reused_stages(tmp_path / "new")
    assert got["n"] == got["of"]  # taken whole
    summary = json.loads(dest.with_suffix(".summary.json").read_text())
    dest.with_suffix(".summary.json").write_text(json.dumps({**summary, "n": summary["n"] + 200}))
    (got,) = reused_stages(tmp_path / "new")  # the run evaluated 200 more questions itself
    assert got["of"] == got["n"] + 200 and got["source_run"] == str(src)


def test_a_stage_takes_its_questions_from_a_source_stage_that_holds_them_among_more(tmp_path: Path) -> None:
    """A source stage on 5 questions whose fingerprint is what this run's settings give on those 5
    (``rebuild``) lends its records of the 2 this stage asks; one made with other settings, or one
    that does not hold the questions, is refused."""
    ids = [f"dev-{i}" for i in range(5)]

    def fp(qs: list[str], **changed: str) -> Fingerprint:
        return Fingerprint.of("baseline", "society", {**{p: p for p in PARTS}, "questions": qs, **changed})

    src = tmp_path / "old"
    recs = src / "eval" / "baseline.jsonl"
    recs.parent.mkdir(parents=True)
    recs.write_text("".join(json.dumps({"question_id": q, "match": i % 2 == 0, "seconds": 10.0 + i}) + "\n"
                            for i, q in enumerate(ids)))
    recs.with_suffix(".summary.json").write_text(json.dumps({"stage": "baseline", "n": 5, "seconds": 99.0}))
    fingerprint_path(recs).write_text(json.dumps(fp(ids).to_json()))
    want = fp(["dev-1", "dev-3"])
    asked: list[list[str]] = []

    def rebuild(qs: list[str]) -> Fingerprint:
        asked.append(qs)
        return fp(qs)

    m = find_reusable(want, [src], want_ids=["dev-1", "dev-3"], rebuild=rebuild)
    assert m is not None and m.questions == ("dev-1", "dev-3") and m.want == want and asked == [ids]
    with pytest.raises(ReuseRefused, match="questions hash differs"):  # a caller that cannot rebuild: whole only
        find_reusable(want, [src])
    dest = tmp_path / "new" / "eval" / "baseline.jsonl"
    partial = dest.with_suffix(".partial.jsonl")
    info = copy_questions(m, dest, partial)
    taken = [json.loads(x) for x in partial.read_text().splitlines()]
    assert [(r["question_id"], r["seconds"]) for r in taken] == [("dev-1", 11.0), ("dev-3", 13.0)]
    assert all(r["stage_seconds"] == 0.0 for r in taken)  # they cost nothing in this run
    assert (info["n"], info["source_n"], info["source_question_seconds"], info["parts"]) == (2, 5, 24.0, want.parts)
    assert json.loads(reused_path(dest).read_text()) == info
    whole = find_reusable(fp(ids), [src])
    assert whole is not None and whole.questions is None
    with pytest.raises(ValueError, match="use copy_stage"):
        copy_questions(whole, dest, partial)

    other = fp(["dev-1"], sampling="other")  # this run's sampling differs: refused on the source's questions
    with pytest.raises(ReuseRefused, match=r"sampling hash differs .*compared on its 5 questions, which hold this "
                                           r"stage's 1"):
        find_reusable(other, [src], want_ids=["dev-1"], rebuild=lambda qs: fp(qs, sampling="other"))
    with pytest.raises(ReuseRefused, match="its 5 questions do not hold all of this stage's 1"):  # not held
        find_reusable(fp(["dev-9"]), [src], want_ids=["dev-9"], rebuild=rebuild)
    with pytest.raises(ReuseRefused, match="questions hash differs"):  # a source question not in this run's split
        find_reusable(want, [src], want_ids=["dev-1", "dev-3"], rebuild=lambda qs: None)


# ----------------------------------------------------------------------------- the pipeline, for real


def _profile(tmp_path: Path, name: str, *, society: Path | None = None, reuse_from: list[Path] = (),
             seed: int = 0) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "train" / "smoke.yaml").read_text())
    cfg["society_config"] = str(society or REPO / "configs" / "smoke.yaml")
    cfg["eval"].update(limit=2, junior_limit=3, senior_limit=0, noise_repeat=False, seed=seed)
    cfg["reuse_from"] = [str(p) for p in reuse_from]
    cfg["name"] = name
    return cfg


def _pipeline(cfg: dict, run: Path, msgs: list[str]):
    from training.pipeline import TrainingPipeline
    from training.profile import TrainConfig

    return TrainingPipeline(TrainConfig.model_validate(cfg), run, phases={1}, echo=msgs.append)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    """A run whose society baseline (2 dev questions), juniors-only baseline (3) and one-shot baseline
    (``single``, on the juniors' 3 questions) were evaluated for real on SmolLM2-135M."""
    tmp = tmp_path_factory.mktemp("reuse")
    run = tmp / "first"
    msgs: list[str] = []
    from training.stages import evaluate_roles, evaluate_society

    plan = _pipeline(_profile(tmp, "first"), run, msgs).resolve()
    evaluate_society(plan, "baseline", msgs.append)
    evaluate_roles(plan, "baseline", msgs.append)
    return run


@pytest.mark.model
def test_a_run_with_the_same_settings_reuses_the_baselines_and_the_report_names_the_source(
        evaluated_run: Path, tmp_path: Path, monkeypatch) -> None:
    from evaluation.report import build_report
    from society.llama_server import LLAMA_SERVER_ENV
    from tools.files import read_jsonl
    from training.stages import evaluate_roles, evaluate_society

    stages = (("baseline", ""), ("juniors_baseline", "roles"), ("single_baseline", "roles"))
    for stage, sub in stages:
        fp = json.loads((evaluated_run / "eval" / sub / f"{stage}.fingerprint.json").read_text())
        assert sorted(fp["parts"]) == sorted(PARTS) and fp["stage"] == stage
    # no model server can start in the second run: what it reports was not evaluated again
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path / "no-llama-server"))
    msgs: list[str] = []
    run = tmp_path / "second"
    plan = _pipeline(_profile(tmp_path, "second", reuse_from=[evaluated_run]), run, msgs).resolve()
    base = evaluate_society(plan, "baseline", msgs.append)
    evaluate_roles(plan, "baseline", msgs.append)
    for stage, sub in stages:
        src = read_jsonl(evaluated_run / "eval" / sub / f"{stage}.jsonl")
        assert read_jsonl(run / "eval" / sub / f"{stage}.jsonl") == src
        reused = json.loads((run / "eval" / sub / f"{stage}.reused.json").read_text())
        assert reused["source_run"] == str(evaluated_run)
    assert base["reused_from"] == str(evaluated_run) and base["n"] == 2
    assert sum(f"reused from {evaluated_run}" in m for m in msgs) == 3
    md = build_report(run).markdown.read_text()
    assert "## Reused from an earlier run" in md
    assert f"baseline (2 questions): reused from {evaluated_run}" in md
    assert f"juniors_baseline (3 questions): reused from {evaluated_run}" in md
    assert f"single_baseline (3 questions): reused from {evaluated_run}" in md


def test_the_stages_of_a_run_made_before_the_one_shot_control_keep_their_hashes(tmp_path: Path) -> None:
    """Adding the one-shot stages changes no other stage's fingerprint: the 2026-12-05 default run (made
    before them; its profile, records and fingerprints are committed under bench/results, laid out as a
    run directory) is a ``reuse_from`` source for its society and juniors-only baselines. Its profile
    loads with the control on (``eval.single`` defaults to true) and the control gets a fingerprint of
    its own.

    Hashes the real Qwen2.5-Coder GGUF (cached by path, size and mtime), the real schemas and the
    questions drawn; nothing is evaluated. If this fails after a deliberate change of
    configs/society.yaml, a prompt or the draw, that run can no longer be reused: say so where it is
    used, and regenerate the committed fingerprints only from a run made with the new settings."""
    from society.config import SocietyConfig
    from society.models import ModelNotInstalledError
    from training.profile import TrainConfig
    from training.role_aliases import route_society
    from training.run_questions import draw_questions
    from training.stage_plan import Stage, fingerprint_run

    old = REPO / "bench" / "results" / "default-2026-12-05-partial"
    cfg = TrainConfig.load(old / "profile.yaml")
    assert cfg.eval.single and cfg.eval.limit == 100 and cfg.eval.junior_limit == 300
    society = route_society(SocietyConfig.load(cfg.society_path()), {}, cfg.junior_adapters)
    dev, juniors, _ = draw_questions(cfg, gather=False)
    stages = [Stage(name="baseline", examples=dev, society=society),
              Stage(name="juniors_baseline", agent="juniors", examples=juniors, society=society),
              Stage(name="single_baseline", agent="single", examples=juniors, society=society)]
    try:
        got = {name: s.fingerprint for name, s in fingerprint_run(cfg, society, stages).stages.items()}
    except ModelNotInstalledError as e:
        pytest.skip(f"the default model is not installed here: {e}")
    # the committed folder is laid out as a run directory: `reuse_from: [<that folder>]` takes both stages
    for stage, role_level in (("baseline", False), ("juniors_baseline", True)):
        match = find_reusable(got[stage], [old], role_level=role_level)  # ReuseRefused names a differing hash
        assert match is not None, f"{stage}: not found in {old}"
        assert match.fingerprint == got[stage] and match.records.is_file() and match.summary.is_file()
    single = got["single_baseline"]
    assert single is not None and single.agent == "single"
    assert single.parts["questions"] == got["juniors_baseline"].parts["questions"]  # the juniors' questions
    assert not (tmp_path / "run").exists()


def _society_copy(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    edit(data)
    p = tmp_path / "society.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _refused(cfg: dict, run: Path, part: str) -> str:
    from training.profile import TrainConfigError
    from training.stage_plan import StageReuseRefused

    msgs: list[str] = []
    pipe = _pipeline(cfg, run, msgs)
    with pytest.raises(StageReuseRefused) as e:
        pipe.resolve()
    assert isinstance(e.value, TrainConfigError) and isinstance(e.value, ReuseRefused)
    assert f"{part} hash differs" in str(e.value)
    assert not list((run / "eval").rglob("*.jsonl"))  # nothing evaluated, nothing copied
    return str(e.value)


@pytest.mark.model
def test_a_changed_sampling_setting_is_refused(evaluated_run: Path, tmp_path: Path) -> None:
    def seed(d: dict) -> None:
        next(r for r in d["roles"] if r["name"] == "junior_direct")["sampling"]["seed"] = 99

    society = _society_copy(tmp_path, seed)
    msg = _refused(_profile(tmp_path, "x", society=society, reuse_from=[evaluated_run]), tmp_path / "run", "sampling")
    assert "config hash differs" not in msg and "prompts hash differs" not in msg


@pytest.mark.model
def test_a_changed_society_config_is_refused(evaluated_run: Path, tmp_path: Path) -> None:
    society = _society_copy(tmp_path, lambda d: d["limits"].update(max_review_rounds=1))
    msg = _refused(_profile(tmp_path, "x", society=society, reuse_from=[evaluated_run]), tmp_path / "run", "config")
    assert "sampling hash differs" not in msg


@pytest.mark.model
def test_a_changed_prompt_is_refused(evaluated_run: Path, tmp_path: Path, monkeypatch) -> None:
    from society import prompts

    old = prompts.PROMPTS["junior_direct"]
    monkeypatch.setitem(prompts.PROMPTS, "junior_direct",
                        prompts.PromptTemplate(old.system, old.user.replace("nothing else", "nothing more")))
    msg = _refused(_profile(tmp_path, "x", reuse_from=[evaluated_run]), tmp_path / "run", "prompts")
    assert "config hash differs" not in msg


@pytest.mark.model
def test_another_model_file_is_refused(evaluated_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Every role on Qwen2.5-Coder-0.5B instead of SmolLM2: the model part (the GGUF's sha256) differs;
    the config part too, since it names what each alias serves."""
    from training.reuse import HASH_CACHE_ENV

    monkeypatch.setenv(HASH_CACHE_ENV, str(tmp_path / "sha256.json"))  # hash the real file here, not a cached value
    society = _society_copy(tmp_path, lambda d: d["models"].update(
        {a: {"embedded": "qwen2.5-coder-0.5b"} for a in d["models"]}))
    msg = _refused(_profile(tmp_path, "x", society=society, reuse_from=[evaluated_run]), tmp_path / "run", "model")
    assert "sampling hash differs" not in msg and "questions hash differs" not in msg


@pytest.mark.model
def test_other_questions_are_refused(evaluated_run: Path, tmp_path: Path) -> None:
    msg = _refused(_profile(tmp_path, "x", reuse_from=[evaluated_run], seed=1), tmp_path / "run", "questions")
    assert "model hash differs" not in msg and "sampling hash differs" not in msg


@pytest.mark.model
def test_a_smaller_society_sample_takes_its_questions_from_the_larger_one(evaluated_run: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """A run drawing 1 dev question with the same seed as a run that drew 2 (``random.Random(seed)
    .sample`` draws the smaller sample first) takes that question's record, with no model server."""
    from evaluation.report import build_report
    from society.llama_server import LLAMA_SERVER_ENV
    from tools.files import read_jsonl
    from training.stages import evaluate_roles, evaluate_society

    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path / "no-llama-server"))
    cfg = _profile(tmp_path, "smaller", reuse_from=[evaluated_run])
    cfg["eval"]["limit"] = 1
    msgs: list[str] = []
    run = tmp_path / "smaller"
    plan = _pipeline(cfg, run, msgs).resolve()
    base = evaluate_society(plan, "baseline", msgs.append)
    evaluate_roles(plan, "baseline", msgs.append)  # the juniors' 3 questions: taken whole
    src = {r["question_id"]: r for r in read_jsonl(evaluated_run / "eval" / "baseline.jsonl")}
    (got,) = read_jsonl(run / "eval" / "baseline.jsonl")
    assert {k: v for k, v in got.items() if k != "stage"} == {k: v for k, v in src[got["question_id"]].items()
                                                             if k != "stage"}
    assert base["n"] == 1 and base["reused_from"] == str(evaluated_run) and base["ex"] == float(got["match"])
    assert (base["reused"], base["resumed"]) == (1, 0)
    assert base["seconds"] < 5 and any("1 of the 2 questions" in m for m in msgs)
    fp = json.loads((run / "eval" / "baseline.fingerprint.json").read_text())
    assert fp == plan.stage("baseline").fingerprint.to_json()  # this stage's own hashes, not the source's
    md = build_report(run).markdown.read_text()
    assert f"baseline (1 questions, among the 2 of its stage there): reused from {evaluated_run}" in md


@pytest.mark.model
def test_juniors_routed_per_persona_reuse_the_shared_runs_baseline(evaluated_run: Path, tmp_path: Path) -> None:
    """The baseline does not depend on which alias a junior calls while every alias serves the base
    model: a per-persona run reuses a shared run's untrained stages."""
    cfg = _profile(tmp_path, "x", reuse_from=[evaluated_run])
    cfg["junior_adapters"] = "per_persona"
    _pipeline(cfg, tmp_path / "run", []).resolve()  # does not raise


@pytest.mark.model
def test_phase1_rollouts_are_reused_when_every_hash_matches_and_refused_when_the_gather_differs(
        tmp_path: Path) -> None:
    """Phase 1 (society rollouts on SmolLM2, a real LightningStore) once; a second run with the same
    settings copies its store and gathers nothing again; one whose exploration rate differs is refused."""
    from evaluation.report import build_report
    from evaluation.tracing.store import RolloutArchive
    from training.phase_gather import gather_phase
    from training.stage_plan import StageReuseRefused

    def profile(name: str, **gather) -> dict:
        cfg = _profile(tmp_path, name)
        cfg["gather"].update(limit=2, junior_limit=0, rationalize=False, **gather)
        return cfg

    first = tmp_path / "first"
    p1 = _pipeline(profile("first"), first, [])
    info1 = gather_phase(p1.resolve(), lambda _: None)
    p1.dir.mark_done(1, {**info1, "seconds": 42.0})
    assert (first / "phases" / "1-gather" / "fingerprint.json").is_file()

    msgs: list[str] = []
    second = tmp_path / "second"
    cfg = profile("second")
    cfg["reuse_from"] = [str(first)]
    p2 = _pipeline(cfg, second, msgs)
    info2 = gather_phase(p2.resolve(), msgs.append)
    p2.dir.mark_done(1, {**info2, "seconds": 1.0})
    assert info2["run"] == 0 and info2["reused_from"] == str(first)  # every task found in the copied store
    with RolloutArchive(first / "store.sqlite") as a, RolloutArchive(second / "store.sqlite") as b:
        assert sorted((r.rollout_id, r.task_id, r.reward) for r in a.rollouts(status="succeeded")) == \
            sorted((r.rollout_id, r.task_id, r.reward) for r in b.rollouts(status="succeeded"))
    rows1 = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert rows2 == rows1 and len(rows1) == 2
    assert any(f"the store of {first} reused" in m for m in msgs)
    reused = json.loads((second / "phases" / "1-gather" / "reused.json").read_text())
    assert (reused["source_run"], reused["n"], reused["source_seconds"]) == (str(first), 2, 42.0)
    md = build_report(second).markdown.read_text()
    assert f"gather (2 rollouts): reused from {first}, where it took 0.7 min; not gathered again" in md

    cfg = profile("third", epsilon=0.9)
    cfg["reuse_from"] = [str(first)]
    with pytest.raises(StageReuseRefused, match=r"stage 'gather' of .* config hash differs") as e:
        _pipeline(cfg, tmp_path / "third", []).resolve()
    assert "questions hash differs" not in str(e.value) and not (tmp_path / "third" / "store.sqlite").exists()


def test_what_the_example_juniors_are_shown_is_part_of_the_prompts_hash(tmp_path: Path, monkeypatch) -> None:
    """A junior with the ``examples`` tool adds the worked examples each question is shown to the
    ``prompts`` part; a society without one keeps its part as before (no key added); another example
    bank (here a data directory whose train split holds a tenth of the questions) changes it."""
    from society.config import SocietyConfig
    from tools.spider import BUNDLED_DATA_DIR, load_examples
    from training.reuse import worked_examples_part

    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    plain = SocietyConfig.from_dict(data)
    data["roles"][0].update(tools=["schema", "executor", "examples"], options={"examples_k": 2})
    with_examples = SocietyConfig.from_dict(data)
    dev = load_examples(None, "dev", limit=3)
    assert worked_examples_part(plain, dev) == {}
    shown = worked_examples_part(with_examples, dev)
    assert list(shown) == [data["roles"][0]["name"]]
    part = shown[data["roles"][0]["name"]]
    assert list(part) == [e.id for e in dev] and all(len(v) == 2 for v in part.values())
    assert all(db != e.db_id for e in dev for _, _, db in part[e.id])

    small = tmp_path / "spider"
    small.mkdir()
    rows = json.loads((BUNDLED_DATA_DIR / "train_spider_min.json").read_text())[::10]
    (small / "train_spider_min.json").write_text(json.dumps(rows))
    (small / "database").symlink_to(BUNDLED_DATA_DIR / "database")
    monkeypatch.setenv("SQLSOCIETY_DATA_DIR", str(small))
    assert worked_examples_part(with_examples, dev) != shown
