"""Phase 4 bandit on real candidates: Spider dev questions, the gold query and mutations of it
(sqlglot rewrites: dropped WHERE, flipped comparison/order, swapped aggregate, LIMIT 1, a
misspelt column), each executed for real on the question's SQLite database with the society's
executor, labelled with the real execution-match rule. No numbers are hand-written."""

from __future__ import annotations

import random

import pytest
import sqlglot
from sqlglot import exp

from evaluation.metrics.ex import execution_match
from society.candidate import Candidate, majority_vote
from society.policies import MajorityVotePolicy, PolicyContext
from society.toolkit import execute_summary
from tools.spider import load_examples
from training.bandit import (
    BanditConfig,
    SupervisorBandit,
    as_sample,
    candidate_context,
    compare_policies,
    featurize,
    format_table,
    load_policy,
    split_samples,
)

PERSONAS = ("direct", "step_by_step", "decompose")


def _mutations(gold: str) -> list[str]:
    """Wrong-ish variants of a gold query (some still match gold on the data: the label decides)."""
    try:
        tree = sqlglot.parse_one(gold, read="sqlite")
    except sqlglot.errors.ParseError:
        return []
    out: list[str] = []

    def emit(t: exp.Expression) -> None:
        s = t.sql(dialect="sqlite")
        if s and s not in out:
            out.append(s)

    if tree.find(exp.Where):
        t = tree.copy()
        t.find(exp.Where).pop()
        emit(t)
    swaps = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE, exp.EQ: exp.NEQ}
    t = tree.copy()
    changed = False
    for node in list(t.find_all(*swaps)):
        node.replace(swaps[type(node)](this=node.this, expression=node.expression))
        changed = True
    if changed:
        emit(t)
    if tree.find(exp.Ordered):
        t = tree.copy()
        for o in t.find_all(exp.Ordered):
            o.set("desc", not o.args.get("desc"))
        emit(t)
    aggs = {exp.Max: exp.Min, exp.Min: exp.Max, exp.Avg: exp.Sum, exp.Sum: exp.Avg}
    t = tree.copy()
    changed = False
    for node in list(t.find_all(*aggs)):
        node.replace(aggs[type(node)](this=node.this))
        changed = True
    if changed:
        emit(t)
    if isinstance(tree, exp.Select) and not tree.args.get("limit"):
        emit(tree.copy().limit(1))
    col = tree.find(exp.Column)
    if col is not None:
        t = tree.copy()
        c = t.find(exp.Column)
        c.set("this", exp.to_identifier(c.name + "_x"))
        emit(t)
    return out


def build_samples(n_questions: int, seed: int = 0) -> list[dict]:
    """Logged supervisor decisions over real candidates; the logging policy is uniform random."""
    rng = random.Random(seed)
    samples = []
    for e in load_examples(split="dev", limit=n_questions * 2):
        muts = _mutations(e.gold_sql)
        if len(muts) < 2:
            continue
        cands, rewards = [], []
        for persona in PERSONAS:
            sql = e.gold_sql if rng.random() < 0.4 else rng.choice(muts)
            es = execute_summary(str(e.db_path), sql)
            cands.append(Candidate(
                junior=f"junior_{persona}", persona=persona, sql=sql, raw=f"```sql\n{sql}\n```", ok=es.ok,
                error_category=es.error_category if not es.ok else None, error=es.error,
                row_count=es.row_count, columns=es.columns, result_digest=es.digest,
            ))
            rewards.append(1.0 if execution_match(e.db_path, sql, e.gold_sql).match else 0.0)
        usable = [i for i, c in enumerate(cands) if c.ok] or list(range(len(cands)))
        action = rng.choice(usable)
        samples.append({
            "task_id": e.id, "question": e.question, "candidates": [c.model_dump() for c in cands],
            "action": action, "reward": rewards[action], "candidate_rewards": rewards,
            "propensity": 1.0 / len(usable), "policy": "random",
        })
        if len(samples) >= n_questions:
            break
    return samples


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    s = build_samples(120)
    assert len(s) >= 100
    return s


def test_samples_are_real_and_mixed(samples):
    rewards = [r for s in samples for r in s["candidate_rewards"]]
    errors = [c for s in samples for c in s["candidates"] if not c["ok"]]
    assert 0.2 < sum(rewards) / len(rewards) < 0.9  # both correct and wrong candidates
    assert errors and all(c["error_category"] for c in errors)  # misspelt columns really fail


def test_context_matches_society_majority_vote_and_adapter(samples):
    from training.adapter import candidate_features  # the adapter's own feature definition

    for s in samples[:30]:
        cands = [Candidate(**c) for c in s["candidates"]]
        ctx = candidate_context(cands)
        assert ctx == candidate_features(s["candidates"])
        assert majority_vote(ctx)[0] == MajorityVotePolicy().choose(s["question"], cands, PolicyContext()).index


def test_featurize_shape_and_cross_tokens():
    cands = [
        Candidate(
            junior="j", persona="direct", sql="SELECT count(*) FROM singer", ok=True, row_count=1, result_digest="a"
        )
    ]
    x = featurize("How many singers are there?", cands, BanditConfig(sql_hash_bits=10, token_hash_bits=6))
    assert x.shape == (1, 9 + 2**10 + 2**6)
    assert x.nnz > 9


def test_fit_beats_random_and_saves(samples, tmp_path):
    train, held = split_samples(samples, holdout=0.3, seed=0)
    assert {s["task_id"] for s in train}.isdisjoint({s["task_id"] for s in held})
    bandit = SupervisorBandit(BanditConfig(seed=0)).fit(train)
    assert bandit.fitted and bandit.n_updates == BanditConfig().epochs
    rows = {r["policy"]: r for r in compare_policies(held, bandit)}
    assert set(rows) == {"bandit", "random", "majority_vote", "logged:random", "oracle"}
    assert rows["bandit"]["ex"] > rows["random"]["ex"]
    assert rows["bandit"]["ex"] <= rows["oracle"]["ex"]
    # where the choice matters the oracle is always right and unanimous decisions are excluded
    assert rows["oracle"]["ex_contested"] == 1.0 and 0 < rows["bandit"]["n_contested"] <= len(held)
    assert rows["bandit"]["ex_contested"] > rows["random"]["ex_contested"]
    path = bandit.save(tmp_path / "policy.joblib")
    policy = load_policy(path)
    s = held[0]
    cands = [Candidate(**c) for c in s["candidates"]]
    i1, info1 = policy.choose(s["question"], cands)
    i2, info2 = bandit.choose(s["question"], cands)
    assert (i1, info1["scores"]) == (i2, info2["scores"])
    assert 0 <= i1 < len(cands) and cands[i1].sql
    print("\n" + format_table(compare_policies(held, bandit)))


def test_bandit_feedback_ips_learns(samples):
    """Only the logged action's reward (uniform-random logging, IPS weights) -- still beats random."""
    train, held = split_samples(samples, holdout=0.3, seed=1)
    bandit = SupervisorBandit(BanditConfig(feedback="bandit", epochs=10, seed=0)).fit(train)
    rows = {r["policy"]: r for r in compare_policies(held, bandit)}
    assert rows["bandit"]["ex"] > rows["random"]["ex"]


def test_exploration_propensities(samples):
    s = as_sample(samples[0])
    eps = SupervisorBandit(BanditConfig(epsilon=0.5, seed=3)).fit(samples[:40])
    usable = [i for i, c in enumerate(s["candidates"]) if c["executes"]]
    seen = set()
    for _ in range(60):
        i, info = eps.choose(s["question"], s["candidates"], explore=True)
        seen.add(i)
        expected = 0.5 * (i == info["greedy"]) + 0.5 / len(usable)
        assert info["propensity"] == pytest.approx(expected)
    assert seen == set(usable) or len(usable) == 1
    ts = SupervisorBandit(BanditConfig(exploration="thompson", n_bootstrap=8, seed=0)).fit(samples[:60])
    i, info = ts.choose(s["question"], s["candidates"], explore=True)
    assert info["exploration"] == "thompson" and 0 < info["propensity"] <= 1


def test_unfitted_policy_is_majority_vote(samples):
    fresh = SupervisorBandit()
    for s in samples[:20]:
        cands = [Candidate(**c) for c in s["candidates"]]
        mv = MajorityVotePolicy().choose(s["question"], cands, PolicyContext()).index
        assert fresh.choose(s["question"], cands)[0] == mv


def test_bad_input_errors(tmp_path, samples):
    bad = dict(samples[0], action=7)
    with pytest.raises(ValueError, match="action 7"):
        as_sample(bad)
    with pytest.raises(ValueError, match="no bandit samples"):
        SupervisorBandit().fit([])
    with pytest.raises(FileNotFoundError, match="phases 4"):
        load_policy(tmp_path / "missing.joblib")
    (tmp_path / "x.joblib").write_bytes(b"not a policy")
    with pytest.raises(Exception):  # noqa: B017 -- joblib raises whatever unpickling a non-pickle raises
        load_policy(tmp_path / "x.joblib")
    no_sql = [Candidate(junior="j", persona="direct", sql=None)]
    assert SupervisorBandit().choose("q", no_sql)[0] == -1


def test_samples_from_real_society_records():
    """Run records of the real society (Qwen2.5-Coder-0.5B eval fixture) -> scored bandit samples."""
    import json
    from pathlib import Path

    from training.bandit import samples_from_records

    path = Path(__file__).parent / "fixtures" / "obs" / "run" / "eval" / "qwen2.5-coder-0.5b.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    samples = samples_from_records(records)
    assert samples and len(samples) <= len(records)
    for s, r in zip(samples, (r for r in records if r.get("choices"))):
        assert len(s["candidate_rewards"]) == len(s["candidates"])
        # the chosen candidate's reward agrees with the recorded EX of that junior
        junior = s["candidates"][s["action"]]["junior"]
        assert s["reward"] == float(bool(r["roles"][junior]["ex"]))
    rows = {row["policy"]: row for row in compare_policies(samples, SupervisorBandit().fit(samples))}
    assert rows["oracle"]["ex"] >= rows["majority_vote"]["ex"]


def test_held_out_train_questions_are_deterministic_disjoint_and_hold_enough_contested() -> None:
    from training.bandit import hold_out_contested, is_contested
    from training.gather_config import question_of

    ran = {"sql": "SELECT 1", "executes": 1}
    rng = random.Random(7)

    def decision(task: str) -> dict:
        rewards = [float(rng.random() < 0.5) for _ in range(3)]
        return {"task_id": task, "question": task, "candidates": [dict(ran) for _ in range(3)], "action": 0,
                "reward": rewards[0], "candidate_rewards": rewards}

    samples = ([decision(f"train-{i}/juniors") for i in range(200)]       # first draws: all three juniors
               + [decision(f"train-{i}/juniors#1") for i in range(0, 200, 3)]  # rejection-sampling draws
               + [decision(f"train-{i}") for i in range(500, 540)])         # society rollouts, other questions
    train, held = hold_out_contested(samples, 30, seed=1)
    assert (train, held) == hold_out_contested(samples, 30, seed=1)  # the same split every time
    assert sum(is_contested(s) for s in held) == 30  # stops at the question that makes up the need
    held_q = {question_of(s["task_id"]) for s in held}
    assert all(s["task_id"].endswith("/juniors") for s in held)  # judged on first draws only
    assert not held_q & {question_of(s["task_id"]) for s in train}  # no held-out question is trained on
    assert len(train) + len(held) + sum(question_of(s["task_id"]) in held_q for s in samples
                                        if s["task_id"].endswith("#1")) == len(samples)
    other = {question_of(s["task_id"]) for s in hold_out_contested(samples, 30, seed=2)[1]}
    assert other != held_q  # the seed draws the questions
    _, capped = hold_out_contested(samples, 10_000, seed=1)
    assert len({question_of(s["task_id"]) for s in capped}) == 100  # never more than half of the questions
    with pytest.raises(ValueError, match="need >= 0"):
        hold_out_contested(samples, -1)


def test_held_out_dev_decisions_written_on_another_machine_find_their_database_here(tmp_path) -> None:
    import json
    from pathlib import Path

    from training.phase_bandit import dev_decisions

    fixture = Path(__file__).parent / "fixtures" / "obs" / "run" / "eval" / "baseline.jsonl"
    recs = [json.loads(line) for line in fixture.read_text().splitlines() if line.strip()]
    moved = tmp_path / "baseline.jsonl"
    moved.write_text("".join(json.dumps({**r, "db_path": f"/gone/{r['db_id']}.sqlite"}) + "\n" for r in recs))
    held = dev_decisions(moved)
    assert held and len(held) == len(dev_decisions(fixture))
    from tools.spider import database_path, default_data_dir
    here = {r["question_id"]: str(database_path(default_data_dir(), r["db_id"])) for r in recs}
    assert all(d["db_path"] == here[d["task_id"]] and Path(d["db_path"]).is_file() for d in held)
    # a record kept without its candidates (the compact form committed under bench/results) is no decision
    compact = tmp_path / "compact.jsonl"
    compact.write_text("".join(json.dumps({k: r[k] for k in ("question_id", "db_id", "match", "roles")}) + "\n"
                               for r in recs))
    assert dev_decisions(compact) == []


def test_the_llm_supervisor_replay_is_taken_only_from_a_record_with_the_same_key(tmp_path) -> None:
    import json
    from pathlib import Path

    from society.prompts import PROMPTS
    from training.phase_bandit import (
        LLM_REPLAY_FILE,
        dev_decisions,
        llm_replay_key,
        llm_replay_sources,
        reused_llm_replay,
    )

    fixture = Path(__file__).parent / "fixtures" / "obs" / "run" / "eval" / "baseline.jsonl"
    held = dev_decisions(fixture)
    assert held
    from tools.schema import schema_prompt
    schemas = {s["db_path"]: schema_prompt(s["db_path"], compact=True, sample_rows=0) for s in held}
    model = {"engine": "llama.cpp", "sha256": "0" * 64}
    key = llm_replay_key(model, PROMPTS["supervisor"], held, schemas)
    # each input moves the key: the model file, the prompt, a candidate, a reward, the schema shown
    moved = [{**c, "sql": (c.get("sql") or "") + " "} for c in held[0]["raw_candidates"]]
    other_cands = [{**held[0], "raw_candidates": moved}]
    variants = [llm_replay_key({**model, "sha256": "1" * 64}, PROMPTS["supervisor"], held, schemas),
                llm_replay_key(model, PROMPTS["junior_direct"], held, schemas),
                llm_replay_key(model, PROMPTS["supervisor"], other_cands + held[1:], schemas),
                llm_replay_key(model, PROMPTS["supervisor"], [{**held[0], "candidate_rewards": [
                    1.0 - r for r in held[0]["candidate_rewards"]]}] + held[1:], schemas),
                llm_replay_key(model, PROMPTS["supervisor"], held, {k: v + "\n" for k, v in schemas.items()})]
    assert key not in variants and len(set(variants)) == len(variants)

    def record(run: Path, k: str | None, ex: float, **drop: bool) -> None:
        d = run / "phases" / "4-bandit"
        d.mkdir(parents=True, exist_ok=True)
        row = {"policy": "llm", "n": len(held), "mean_reward": ex, "ex": ex, "note": "asked live"}
        kept = {f: v for f, v in row.items() if f not in drop}
        (d / LLM_REPLAY_FILE).write_text(json.dumps({"key": k, "row": kept}))

    here, a, b, c = (tmp_path / n for n in ("here", "a", "b", "c"))
    record(a, variants[0], 0.1)  # another model file: passed over
    (b / "phases" / "4-bandit").mkdir(parents=True)
    (b / "phases" / "4-bandit" / LLM_REPLAY_FILE).write_text("{not json")  # unreadable: passed over
    assert reused_llm_replay([b], key) is None
    record(c, key, 0.5)
    stage = here / "eval" / "roles" / "juniors_baseline_repeat.jsonl"
    stage.parent.mkdir(parents=True)
    (stage.parent / "juniors_baseline_repeat.reused.json").write_text(json.dumps({"source_run": str(c)}))
    sources = llm_replay_sources(here, [a, b], stage)
    assert sources == [here, a, b, c]  # this run, reuse_from in order, the dev stage's source run
    path, rec = reused_llm_replay(sources, key)
    assert path.parent.parent.parent == c and rec["row"]["ex"] == 0.5
    assert reused_llm_replay(sources[:3], key) is None  # no source with this key: asked again
    record(b, key, 0.9, note=True)  # the right key but a row without its note: passed over
    assert reused_llm_replay(sources, key)[1]["row"]["ex"] == 0.5
    record(here, key, 0.7)  # a resumed phase 4 keeps its own first
    assert reused_llm_replay(sources, key)[1]["row"]["ex"] == 0.7
