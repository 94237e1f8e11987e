"""Society parts that need no model server: config validation and role swaps, supervisor policies
and the deterministic reviewer on real Spider executions, tools present/absent, the `roles`
command, the run directory, and an endpoint that is down (a real closed port)."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from typer.testing import CliRunner

from society.candidate import Candidate
from society.config import DEFAULT_CONFIG, SMOKE_CONFIG, ConfigError, SocietyConfig
from society.llm import ChatModels
from society.policies import POLICIES, BanditPolicy, PolicyContext, make_policy
from society.roles import ExecutionReviewer, RunContext, Supervisor, build_roles, parse_check, parse_review
from society.state import Severity, Verdict
from society.toolkit import execute_summary, tools_for
from tools.spider import resolve_database

CONCERT = str(resolve_database("concert_singer"))


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


# ---------------------------------------------------------------------- config


def test_shipped_configs_load_and_expand_roles():
    for path in (DEFAULT_CONFIG, SMOKE_CONFIG):
        cfg = SocietyConfig.load(path)
        labels = [i.label for i in cfg.instances()]
        assert labels[:3] == ["junior:direct", "junior:step_by_step", "junior:decompose"]
        assert {"supervisor", "senior", "reviewer:execution", "reviewer:semantic"} <= set(labels)
    aliases = ("juniors", "supervisor", "senior", "reviewers")
    assert SocietyConfig.load(SMOKE_CONFIG).embedded_aliases() == {a: "smollm2-135m" for a in aliases}
    assert set(SocietyConfig.load(DEFAULT_CONFIG).embedded_aliases().values()) == {"qwen2.5-coder-0.5b"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["roles"][0].update(model="nope"), "model alias 'nope'"),
        (lambda d: d["roles"][0].update(type="wizard"), "unknown type 'wizard'"),
        (lambda d: d["roles"][3].update(policy="coinflip"), "unknown policy 'coinflip'"),
        (lambda d: d["roles"][1].update(name="junior_direct"), "used twice"),
        (lambda d: d.update(roles=[r for r in d["roles"] if r["type"] != "senior"]), "senior role"),
        (lambda d: d["roles"][4]["options"].update(check="vibes"), "bad options"),
        (lambda d: d["roles"][4]["options"].update(trigger=["sometimes"]), "trigger"),
        (lambda d: d["roles"][4]["options"].update(trigger=[]), "trigger"),
        (lambda d: d["roles"][0].update(prompt="no_such_prompt"), "unknown prompt"),
        (lambda d: d["models"].update(juniors={"base_url": "http://x/v1"}), "`model:` is required"),
        (lambda d: d["roles"][0]["sampling"].update(temperature=5), "temperature"),
    ],
)
def test_invalid_configs_name_the_problem(mutate, message):
    d = _raw()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        SocietyConfig.from_dict(d, source="test.yaml")


def test_count_expands_juniors_with_seed_offsets():
    d = _raw()
    d["roles"][0]["count"] = 3
    cfg = SocietyConfig.from_dict(d)
    js = cfg.instances("junior")
    assert [j.name for j in js[:3]] == ["junior_direct_1", "junior_direct_2", "junior_direct_3"]
    assert [j.sampling.seed for j in js[:3]] == [11, 12, 13]
    assert js[0].label == "junior:direct:1"


def test_with_endpoint_overrides_a_copy_and_never_writes_the_key():
    cfg = SocietyConfig.load(DEFAULT_CONFIG)
    new = cfg.with_endpoint("juniors", "http://127.0.0.1:8000/v1", "lora-juniors", api_key="secret-key")
    assert cfg.models["juniors"].embedded == "qwen2.5-coder-0.5b"
    assert new.models["juniors"].base_url == "http://127.0.0.1:8000/v1"
    assert "juniors" not in new.embedded_aliases() and "senior" in new.embedded_aliases()
    ep = ChatModels(new).endpoint("juniors")
    assert (ep.base_url, ep.model, ep.api_key) == ("http://127.0.0.1:8000/v1", "lora-juniors", "secret-key")
    assert "secret-key" not in new.to_yaml()
    with pytest.raises(ConfigError, match="not in the config"):
        cfg.with_endpoint("nope", "http://x/v1", "m")
    with pytest.raises(ConfigError, match="no server was started"):
        ChatModels(new).endpoint("senior")
    assert set(new.with_endpoint_for_all("http://h/v1", "m").models) == set(cfg.models)


# ---------------------------------------------------------------------- policies on real executions


def _candidate(junior: str, sql: str | None) -> Candidate:
    ex = execute_summary(CONCERT, sql)
    return Candidate(junior=junior, persona=junior, sql=sql, ok=ex.ok, error_category=ex.error_category,
                     error=ex.error, row_count=ex.row_count, columns=ex.columns, result_digest=ex.digest)


@pytest.fixture(scope="module")
def candidates() -> list[Candidate]:
    return [
        _candidate("a", "SELECT Name FROM singer WHERE Age > 40"),  # differs
        _candidate("b", "SELECT count(*) FROM singer"),
        _candidate("c", "SELECT COUNT(Singer_ID) FROM singer"),  # same result as b
        _candidate("d", "SELECT count(*) FROM singers"),  # no such table
        _candidate("e", None),
    ]


def test_majority_vote_picks_the_agreeing_results(candidates):
    pc = make_policy("majority_vote").choose("How many singers?", candidates, PolicyContext())
    assert pc.index == 1
    assert pc.scores[1] == pc.scores[2] == pytest.approx(2 / 3)
    assert pc.scores[3] == pc.scores[4] == 0.0


def test_first_random_and_llm_shortcuts(candidates):
    assert make_policy("first").choose("q", candidates, PolicyContext()).index == 0
    picks = {make_policy("random", {"seed": s}).choose("q", candidates, PolicyContext()).index for s in range(20)}
    assert picks <= {0, 1, 2} and len(picks) > 1  # only executed candidates
    one = make_policy("llm").choose("q", [candidates[4], candidates[1]], PolicyContext())
    assert one.index == 1 and one.info["skipped"] == "single candidate"
    same = make_policy("llm").choose("q", [candidates[1], candidates[2]], PolicyContext())
    assert same.index == 0 and same.info["skipped"] == "unanimous"
    none = make_policy("majority_vote").choose("q", [candidates[4]], PolicyContext())
    assert none.index == -1
    assert {"first", "random", "majority_vote", "llm", "bandit", "epsilon_greedy"} <= set(POLICIES)


def test_bandit_policy_loads_lazily_and_the_supervisor_falls_back(tmp_path, candidates):
    with pytest.raises(ValueError, match="path"):
        BanditPolicy()
    pol = BanditPolicy(path=str(tmp_path / "missing.joblib"))  # constructing does not touch the file
    with pytest.raises(FileNotFoundError, match="missing.joblib"):
        pol.choose("q", candidates, PolicyContext())
    d = _raw()
    d["roles"][3].update(policy="bandit", options={"path": str(tmp_path / "missing.joblib")})
    cfg = SocietyConfig.from_dict(d)
    sup = Supervisor(cfg.instances("supervisor")[0])
    ctx = RunContext(config=cfg, models=ChatModels(cfg), db_path=CONCERT)
    out = sup.node(
        {"question": "How many singers are there?", "candidates": candidates}, {"configurable": {"society": ctx}}
    )
    choice = out["choices"][0]
    assert choice.policy == "majority_vote" and choice.info["configured_policy"] == "bandit"
    assert "missing.joblib" in choice.info["fallback"] and out["errors"]
    assert out["chosen"].junior == "b"


# ---------------------------------------------------------------------- deterministic reviewer


@pytest.mark.parametrize(
    "question, sql, verdict, severity",
    [
        ("How many singers are there?", "SELECT count(*) FROM singer", Verdict.APPROVE, None),
        ("How many singers are there?", "SELECT count(*) FROM singers", Verdict.REVISE, Severity.MAJOR),
        ("How many singers are there?", None, Verdict.REVISE, Severity.CRITICAL),
        (
            "List the names of singers from Mars.",
            "SELECT Name FROM singer WHERE Country = 'Mars'",
            Verdict.REVISE,
            Severity.MINOR,
        ),
        (
            "Are there singers from Mars, if any?",
            "SELECT Name FROM singer WHERE Country = 'Mars'",
            Verdict.APPROVE,
            None,
        ),
        ("How many singers are there?", "SELECT Name FROM singer", Verdict.REVISE, Severity.MINOR),
        (
            "How many singers are there for each country?",
            "SELECT Country, count(*) FROM singer GROUP BY Country",
            Verdict.APPROVE,
            None,
        ),
    ],
)
def test_execution_reviewer_on_real_results(question, sql, verdict, severity):
    cfg = SocietyConfig.load(DEFAULT_CONFIG)
    rev = ExecutionReviewer(next(i for i in cfg.instances("reviewer") if i.type == "execution_reviewer"))
    ctx = RunContext(config=cfg, models=ChatModels(cfg), db_path=CONCERT)
    state = {"question": question, "current_sql": sql, "current_exec": execute_summary(CONCERT, sql), "turn": 0}
    review, _ = rev.review(state, ctx, {"configurable": {"society": ctx}})
    assert (review.verdict, review.severity) == (verdict, severity)
    assert review.turn == 1


def test_parsers():
    assert parse_review("VERDICT: APPROVE") == (Verdict.APPROVE, None, "")
    v, s, f = parse_review("VERDICT: REVISE\nSEVERITY: critical\nFEEDBACK: wrong table")
    assert (v, s, f) == (Verdict.REVISE, Severity.CRITICAL, "wrong table")
    assert parse_review("I think we should REVISE this.")[1] == Severity.MAJOR
    assert parse_review("Looks fine to me") is None
    assert parse_check("...THE QUERY IS INCORRECT. Actually THE QUERY IS CORRECT.") == "correct"
    assert parse_check("THE QUERY IS INCORRECT.") == "incorrect"
    assert parse_check("no verdict") is None


# ---------------------------------------------------------------------- tools


def test_web_search_tool_only_with_key_and_when_asked(monkeypatch):
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    assert set(tools_for(["schema", "executor", "web_search"])) == {"sql_db_schema", "sql_db_query"}
    monkeypatch.setenv("TAVILY_API_KEY", "tvly-test-not-used")  # building the client does no request
    assert "web_search" in tools_for(["schema", "executor", "web_search"])
    assert "web_search" not in tools_for(["schema", "executor"])


# ---------------------------------------------------------------------- roles command


def test_roles_command_shows_bindings_and_a_config_swap(tmp_path):
    from society.cli.root import app

    runner = CliRunner()
    res = runner.invoke(app, ["roles"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in ("junior_direct", "junior_step_by_step", "junior_decompose", "policy: majority_vote",
                 "embedded qwen2.5-coder-0.5b", "reviewer_semantic", "max_review_rounds=2"):
        assert text in res.output
    d = _raw()
    d["roles"][3]["policy"] = "llm"
    d["roles"].insert(3, {"name": "junior_sketch", "type": "junior", "persona": "sketch", "model": "remote",
                          "prompt": "junior_direct", "sampling": {"temperature": 0.7, "max_tokens": 99}})
    d["models"]["remote"] = {"base_url": "http://10.0.0.5:8000/v1", "model": "my-model"}
    p = tmp_path / "swap.yaml"
    p.write_text(yaml.safe_dump(d))
    res = runner.invoke(app, ["roles", "--config", str(p)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "policy: llm" in res.output and "junior_sketch" in res.output
    assert "my-model @ http://10.0.0.5:8000/v1" in res.output and "max_tokens=99" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\nroles: []\n")
    res = runner.invoke(app, ["roles", "--config", str(bad)])
    assert res.exit_code != 0 and "needs at least one enabled junior role" in res.output


# ---------------------------------------------------------------------- endpoint down


def test_endpoint_down_is_retried_then_the_evaluation_stops_without_scoring_the_question(tmp_path):
    """A real closed loopback port: every attempt is refused (1 + 2 retries per call); the run of the
    question ends `failed` with its partial state, and the evaluation stops with an
    InfrastructureError instead of scoring it 0 -- an endpoint failure is not the model's answer."""
    from society.evaluate import evaluate
    from society.infra import InfrastructureError
    from society.run import RunRecorder, run_society
    from tools.spider import load_examples

    cfg = SocietyConfig.load(SMOKE_CONFIG).with_endpoint_for_all(f"http://127.0.0.1:{_closed_port()}/v1", "none")
    cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"retries": 2, "backoff_s": 0.05})})
    examples = load_examples(split="dev", limit=2)
    run = run_society(examples[0].question, examples[0].db_path, cfg, question_id=examples[0].id)
    assert run.status == "failed" and run.error.startswith("endpoint:")
    assert run.path[0] == "prepare" and run.path[-1] == "finalize"
    assert "supervisor" in run.path and "senior_execute" not in run.path
    calls = run.trace["llm_calls"]
    assert len(calls) == 3 and all(c["attempts"] == 3 and c["error"] for c in calls)  # 1 + 2 retries each
    assert {c["label"] for c in calls} == {"junior:direct", "junior:step_by_step", "junior:decompose"}

    rec = RunRecorder("test-down", cfg, root=tmp_path)
    with pytest.raises(InfrastructureError, match=r"stayed down after all retries.*nothing was recorded"):
        evaluate(examples, cfg, recorder=rec)
    assert not rec.questions_path.exists() or rec.questions_path.read_text() == ""
    assert json.loads((rec.dir / "summary.json").read_text())["n"] == 0


def test_restore_stop_puts_back_the_closing_marker_a_stop_sequence_removed():
    from evaluation.metrics.rewards import format_ok
    from society.llm import restore_stop

    stops = ["</sql>", "```\n\n"]
    text = "<reasoning>count singers</reasoning>\n<sql>SELECT count(*) FROM singer"
    assert not format_ok(text) and format_ok(restore_stop(text, stops, "stop"))
    assert restore_stop("```sql\nSELECT 1\n", stops, "stop") == "```sql\nSELECT 1\n```"
    assert restore_stop("```sql\nSELECT 1\n```", stops, "stop") == "```sql\nSELECT 1\n```"
    assert restore_stop(text, stops, "length") == text  # cut by max_tokens: nothing to restore
    assert restore_stop(text, None, "stop") == text


def test_old_max_turns_keys_are_read_with_a_deprecation_warning():
    d = yaml.safe_load(SMOKE_CONFIG.read_text())
    d["limits"]["max_turns"] = d["limits"].pop("max_review_rounds")
    d["baselines"]["max_turns"] = d["baselines"].pop("max_rewrites")
    senior = next(r for r in d["roles"] if r["type"] == "senior")
    senior["options"]["max_turns"] = senior["options"].pop("max_rewrites")
    with pytest.warns(DeprecationWarning, match="max_turns") as caught:
        cfg = SocietyConfig.model_validate(d)
        roles = build_roles(cfg)
    assert {"limits", "baselines", "senior options"} <= {str(w.message).split(":")[0] for w in caught}
    new = SocietyConfig.load(SMOKE_CONFIG)
    assert cfg.limits == new.limits and cfg.baselines == new.baselines
    assert roles["senior"][0].options.max_rewrites == build_roles(new)["senior"][0].options.max_rewrites
    d["limits"]["max_review_rounds"] = 3  # both names: refused
    with pytest.raises(ValueError, match="give `max_review_rounds` only"), pytest.warns(DeprecationWarning):
        SocietyConfig.model_validate(d)


def _senior_check(cfg: SocietyConfig, sql: str, others: list[str]) -> dict:
    """The senior's check node, run for real (``check: execution`` makes no model call) on ``sql`` as
    the supervisor's pick among ``[sql, *others]`` on the real concert_singer database."""
    from society.state import SupervisorChoice

    senior = build_roles(cfg)["senior"][0]
    cands = []
    for i, q in enumerate([sql, *others]):
        ex = execute_summary(CONCERT, q)
        cands.append(Candidate(junior=f"j{i}", persona="p", sql=q, ok=ex.ok, row_count=ex.row_count,
                               result_digest=ex.digest))
    state = {"question": "How many singers are there?", "current_sql": sql,
             "current_exec": execute_summary(CONCERT, sql),
             "choices": [SupervisorChoice(policy="majority_vote", candidates=cands, index=0)]}
    ctx = RunContext(config=cfg, models=ChatModels(cfg), db_path=CONCERT)
    return senior.check_node(state, {"configurable": {"society": ctx}})


def test_the_senior_trigger_decides_when_the_execution_check_asks_for_a_rewrite():
    cfg = SocietyConfig.load(DEFAULT_CONFIG)
    assert build_roles(cfg)["senior"][0].options.trigger == ["error", "empty"]  # the default: unchanged
    ok, other, broken = "SELECT count(*) FROM singer", "SELECT count(*) FROM stadium", "SELECT count(*) FROM singers"
    # default: a query that runs and returns rows passes, even when another junior's result differs
    assert _senior_check(cfg, ok, [other])["senior_verdict"] == "correct"
    assert _senior_check(cfg, broken, [ok])["senior_verdict"] == "incorrect"
    wide = cfg.with_role_options("senior", trigger=["error", "empty", "disagree"])
    upd = _senior_check(wide, ok, [other])
    assert upd["senior_verdict"] == "incorrect" and upd["senior_turns"][0].verdict == "incorrect"
    assert upd["feedback"].startswith("1 rows")  # the rewrite is shown the execution result
    assert _senior_check(wide, ok, [ok])["senior_verdict"] == "correct"  # the juniors agree
    only = cfg.with_role_options("senior", trigger=["disagree"])
    assert _senior_check(only, broken, [])["senior_verdict"] == "correct"  # the trigger is the whole rule
    assert _senior_check(cfg.with_role_options("senior", trigger=["always"]), ok, [])["senior_verdict"] == "incorrect"
    with pytest.raises(ConfigError, match="trigger"):
        cfg.with_role_options("senior", trigger=["never"])
    with pytest.raises(ConfigError, match="no role named"):
        cfg.with_role_options("chief", trigger=["always"])
