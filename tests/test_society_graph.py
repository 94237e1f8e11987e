"""The society graph end to end against a real llama.cpp server (llama-server; SmolLM2-135M, the
``smol_server`` fixture) on real Spider databases.

Routing is driven deterministically without mocks: a real SQLite database whose only table is a
view that raises at run time (``abs(-9223372036854775808)`` is SQLite's integer-overflow error)
makes every query the model writes fail, so the deterministic execution reviewer's verdict is
known in advance whatever the small model writes; its severities come from config.
"""

from __future__ import annotations

import sqlite3

import pytest
import yaml
from langchain_core.callbacks import BaseCallbackHandler

from society.config import SMOKE_CONFIG, SocietyConfig
from society.run import run_society
from tools.spider import load_examples, resolve_database

pytestmark = pytest.mark.model

CONCERT = resolve_database("concert_singer")


def _raw() -> dict:
    return yaml.safe_load(SMOKE_CONFIG.read_text())


def _no_fixes(d: dict) -> dict:
    """Juniors skip their rewrite-on-error (fewer model calls where every query fails anyway)."""
    for r in d["roles"]:
        if r["type"] == "junior":
            r["options"] = {"fix_on_error": False}
    return d


def _cfg(server, data: dict | None = None) -> SocietyConfig:
    cfg = SocietyConfig.from_dict(data or _raw())
    cfg = cfg.with_endpoint_for_all(server.base_url, server.model)
    return cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"timeout_s": 120})})


@pytest.fixture(scope="module")
def failing_db(tmp_path_factory) -> str:
    """A real SQLite file with a `singer` view that errors whenever it is read."""
    path = tmp_path_factory.mktemp("db") / "broken_singer.sqlite"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE VIEW singer AS WITH t(Singer_ID, Name, Country, Age) AS (VALUES (1, 'Joe', 'France', 52)) "
        "SELECT * FROM t WHERE abs(-9223372036854775808) > 0"
    )
    con.commit()
    con.close()
    with pytest.raises(sqlite3.OperationalError, match="integer overflow"):
        sqlite3.connect(path).execute("SELECT count(*) FROM singer").fetchall()
    return str(path)


class Recorder(BaseCallbackHandler):
    """Collects the LangChain runs the graph emits (as a tracer such as Agent Lightning's would)."""

    def __init__(self) -> None:
        self.llm: list[dict] = []
        self.tools: list[dict] = []
        self.chains: dict = {}

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, tags=None, metadata=None, **kw):
        self.chains[run_id] = {"name": kw.get("name"), "parent": parent_run_id}

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, tags=None, metadata=None, **kw):
        self.llm.append(
            {"name": kw.get("name"), "parent": parent_run_id, "tags": tags or [], "metadata": metadata or {}}
        )

    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, tags=None, metadata=None, **kw):
        self.tools.append({"name": kw.get("name") or (serialized or {}).get("name"), "parent": parent_run_id,
                           "metadata": metadata or {}})


def test_society_end_to_end_on_spider_questions(smol_server):
    cfg = _cfg(smol_server)
    for ex in load_examples(split="dev", limit=2):
        cb = Recorder()
        run = run_society(ex.question, ex.db_path, cfg, question_id=ex.id, db_id=ex.db_id, callbacks=[cb],
                          metadata={"rollout_id": "ro-test"})
        assert run.status in {"approved", "turn_limit"}, run.error
        assert run.path[0] == "prepare" and run.path[-1] == "finalize"
        for node in ("junior_direct/draft", "junior_step_by_step/draft", "junior_decompose/draft", "supervisor",
                     "senior_execute", "reviewer_execution", "review_gate"):
            assert node in run.path
        assert [c.junior for c in run.candidates] == ["junior_direct", "junior_step_by_step", "junior_decompose"]
        choice = run.choice
        assert choice is not None and choice.policy == "majority_vote" and len(choice.candidates) == 3
        assert len(choice.scores) == 3 and -1 <= choice.index < 3
        assert run.reviews and all(r.turn >= 1 for r in run.reviews) and run.turns >= 1
        assert run.final_sql is None or run.result is not None
        # accounting and the local trace agree, per role
        assert run.llm_calls == len(run.trace["llm_calls"]) >= 3 and run.tokens > 0
        assert {"junior_direct", "junior_step_by_step", "junior_decompose"} <= set(run.per_role)
        assert sum(v["llm_calls"] for v in run.per_role.values()) == run.llm_calls
        assert all(c["messages"] and c["response"] is not None and c["latency_s"] > 0 for c in run.trace["llm_calls"])
        assert any(t["tool"] == "sql_db_query" for t in run.trace["tool_calls"])
        # every LLM/tool run reached the caller's callbacks, named, tagged and attributable
        assert len(cb.llm) == run.llm_calls
        for call in cb.llm:
            md = call["metadata"]
            assert call["name"] in {
                "junior:direct",
                "junior:step_by_step",
                "junior:decompose",
                "supervisor",
                "senior",
                "reviewer:semantic",
            }
            assert md["question_id"] == ex.id and md["db_id"] == ex.db_id and md["run_id"] == run.run_id
            assert (
                md["rollout_id"] == "ro-test"
                and md["role"] == call["name"].split(":")[0]
                and md["node"] in call["tags"]
            )
            assert call["parent"] in cb.chains  # nested under a graph node's run
        assert {"sql_db_schema", "sql_db_query"} <= {t["name"] for t in cb.tools}
        assert all(t["parent"] in cb.chains for t in cb.tools)
        assert any(c["name"] == "society" and c["parent"] is None for c in cb.chains.values())


def test_critical_review_sends_the_question_back_to_the_juniors(smol_server, failing_db):
    d = _no_fixes(_raw())
    for r in d["roles"]:
        if r["type"] == "execution_reviewer":
            r["options"] = {"severity": {"error": "CRITICAL", "no_sql": "CRITICAL"}}
    d["limits"] = {"max_review_rounds": 2, "max_junior_rounds": 2}
    run = run_society("How many singers are there?", failing_db, _cfg(smol_server, d))
    assert run.status == "turn_limit", (run.status, run.error, run.path)
    assert run.junior_rounds == 2 and [c.round for c in run.choices] == [0, 1]
    assert run.path.count("junior_direct/draft") == 2 and run.path.count("new_round") == 1
    first_gate = run.path.index("review_gate")
    assert run.path[first_gate + 1] == "new_round"
    assert [r.severity.value for r in run.reviews if r.reviewer == "reviewer_execution"] == ["CRITICAL", "CRITICAL"]
    gates = [i for i, n in enumerate(run.path) if n == "review_gate"]
    assert [run.path[i + 1] for i in gates] == ["new_round", "finalize"]  # never back to the senior
    # nothing executed OK, so the answer is the last chosen candidate's SQL
    assert run.final_sql == run.choices[-1].chosen.sql and not run.result.ok


def test_major_review_goes_to_the_senior_until_the_turn_limit(smol_server, failing_db):
    d = _no_fixes(_raw())
    d["limits"] = {"max_review_rounds": 3, "max_junior_rounds": 2}
    for r in d["roles"]:
        if r["type"] == "execution_reviewer":
            r["options"] = {"severity": {"error": "MAJOR", "no_sql": "MAJOR"}}
        if r["type"] == "senior":
            r["options"] = {"max_rewrites": 1, "check": "execution"}
    run = run_society("How many singers are there?", failing_db, _cfg(smol_server, d))
    assert "new_round" not in run.path and run.path.count("junior_direct/draft") == 1
    assert {r.severity.value for r in run.reviews} == {"MAJOR"}
    gates = [i for i, n in enumerate(run.path) if n == "review_gate"]
    assert len(gates) == run.turns and all(run.path[i + 1] == "senior_rewrite" for i in gates[:-1])
    assert run.path[gates[-1] + 1] == "finalize"
    rewrites = [t for t in run.senior_turns if t.kind == "rewrite"]
    assert len(rewrites) == 1 + (run.turns - 1)  # one in the first visit (the query failed) + one per MAJOR review
    assert all(t.feedback for t in rewrites)
    if run.status == "turn_limit":
        assert run.turns == 3
    else:  # the senior gave the same SQL back for the same feedback: a fixed point, stop early
        assert run.status == "converged" and rewrites[-1].verdict in ("unchanged", "no_sql")
        assert run.reviews[-1].raw.startswith("(same SQL")


def test_swapping_roles_by_config_only(smol_server):
    d = _raw()
    d["roles"].insert(3, {"name": "junior_sketch", "type": "junior", "persona": "sketch", "model": "juniors",
                          "prompt": {"system": "Write one SQLite query for the question. Reply with SQL only.",
                                     "user": "{schema}\n{feedback}\nQ: {question}"},
                          "sampling": {"temperature": 0.0, "max_tokens": 64}})
    sup = next(r for r in d["roles"] if r["type"] == "supervisor")
    sup.update(policy="llm", options={"skip_when_unanimous": False})
    cb = Recorder()
    run = run_society("How many singers are there?", CONCERT, _cfg(smol_server, d), callbacks=[cb])
    assert "junior_sketch/draft" in run.path
    assert [c.junior for c in run.candidates][-1] == "junior_sketch" and len(run.candidates) == 4
    sketch = [c for c in cb.llm if c["name"] == "junior:sketch"]
    assert sketch and sketch[0]["metadata"]["persona"] == "sketch"
    assert run.choice.info["configured_policy"] == "llm"
    if run.choice.policy == "llm" and "skipped" not in run.choice.info:
        assert any(c["name"] == "supervisor" for c in cb.llm) and "reply" in run.choice.info


def test_malformed_output_fails_only_that_candidate(smol_server):
    d = _raw()
    d["roles"][0]["sampling"] = {"temperature": 0.0, "max_tokens": 1}  # one token: never a query
    run = run_society("How many singers are there?", CONCERT, _cfg(smol_server, d))
    direct = run.choices[0].candidates[0]
    assert direct.junior == "junior_direct" and direct.sql is None and not direct.ok
    assert direct.error == "no SQL in the model output" and direct.raw is not None
    assert run.status in {"approved", "turn_limit", "failed"} and "finalize" in run.path
    assert run.status != "failed" or run.error  # never crashes; a failure says why


def test_senior_on_a_dead_endpoint_fails_the_question_but_keeps_the_candidates(smol_server):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = _raw()
    d["models"]["senior_model"] = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "gone"}
    for r in d["roles"]:
        if r["type"] == "senior":
            r["model"] = "senior_model"
    d["llm"] = {"retries": 1, "backoff_s": 0.05, "timeout_s": 120}
    cfg = SocietyConfig.from_dict(d)
    for alias in ("juniors", "supervisor", "reviewers"):
        cfg = cfg.with_endpoint(alias, smol_server.base_url, smol_server.model)
    run = run_society("How many singers are there?", CONCERT, cfg)
    assert len(run.candidates) == 3 and run.choice is not None
    if run.choice.chosen is not None:
        assert run.status == "failed" and run.error.startswith("endpoint: senior")
        senior_calls = [c for c in run.trace["llm_calls"] if c["role"] == "senior"]
        assert len(senior_calls) == 1 and senior_calls[0]["attempts"] == 2
        assert run.final_sql == run.choice.chosen.sql  # the best so far: the chosen candidate


@pytest.mark.parametrize("agent", ["single", "write-check-rewrite"])
def test_baselines(smol_server, agent):
    run = run_society("How many singers are there?", CONCERT, _cfg(smol_server), agent=agent)
    assert run.agent == agent and run.path[0] == "prepare" and run.path[-1] == "finalize"
    assert "supervisor" not in run.path and not run.candidates
    if agent == "single":
        assert (
            run.llm_calls == 1
            and run.path == ["prepare", "junior_direct/draft", "finalize"]
            and run.status == "single"
        )
    else:
        assert 1 <= run.llm_calls <= 1 + 2 * 3 + 1
        if run.path[2] == "handover":
            assert "senior_check" in run.path and run.status in {"approved", "turn_limit", "converged"}


def test_juniors_agent_runs_the_junior_round_and_the_supervisor_only(smol_server):
    run = run_society("How many singers are there?", CONCERT, _cfg(smol_server), agent="juniors")
    juniors = [i.name for i in _cfg(smol_server).instances("junior")]
    assert run.path[0] == "prepare" and run.path[-2:] == ["supervisor", "finalize"]
    assert not any(v.startswith(("senior", "reviewer")) for v in run.path)
    assert sorted(c.junior for c in run.candidates) == sorted(juniors)
    rec = run.to_record()
    assert "senior" not in rec["roles"] and rec["roles"]["supervisor"]["policy"] == "majority_vote"
    chosen = run.choice.chosen
    # the answer is the supervisor's pick, and the status says which agent produced it
    assert run.final_sql == (chosen.sql if chosen else None)
    assert run.status == ("juniors" if chosen else "failed")


def test_senior_agent_refines_the_given_sql_and_stops_after_its_visit(smol_server, failing_db):
    # on a database where every query fails the execution check says "incorrect": one rewrite
    # (max_rewrites 1 in the smoke config), executed, then the answer -- no reviewers
    run = run_society("How many singers are there?", failing_db, _cfg(smol_server), agent="senior",
                      given_sql="SELECT count(*) FROM singer")
    assert run.path[:3] == ["prepare", "handover", "senior_execute"] and run.path[-1] == "finalize"
    assert "senior_rewrite" in run.path and not any(v.startswith("reviewer") for v in run.path)
    assert run.llm_calls == 1 and run.status in {"senior", "failed"}
    before, after = run.senior_before_after()
    assert before == "SELECT count(*) FROM singer" and after == run.final_sql
    assert "supervisor" not in run.to_record()["roles"]
    # on the real database the given SQL runs and returns rows: the execution check passes, no call
    ok = run_society("How many singers are there?", CONCERT, _cfg(smol_server), agent="senior",
                     given_sql="SELECT count(*) FROM singer")
    assert ok.llm_calls == 0 and ok.final_sql == "SELECT count(*) FROM singer" and ok.status == "senior"


def test_senior_agent_needs_given_sql_in_an_evaluation(smol_server):
    from society.evaluate import evaluate

    ex = load_examples(None, "dev", limit=1)
    with pytest.raises(ValueError, match="given_sql"):
        evaluate(ex, _cfg(smol_server), agent="senior")


def test_the_senior_trigger_is_a_config_choice(smol_server):
    """``options.trigger`` of the senior (default ``[error, empty]``: no call on a query that runs and
    returns rows, as the test above shows) set to ``[always]``: the same query is rewritten once."""
    d = _raw()
    next(r for r in d["roles"] if r["type"] == "senior")["options"]["trigger"] = ["always"]
    run = run_society("How many singers are there?", CONCERT, _cfg(smol_server, d), agent="senior",
                      given_sql="SELECT count(*) FROM singer")
    assert run.path.count("senior_rewrite") == 1 and run.llm_calls == 1
    assert [t.kind for t in run.senior_turns] == ["check", "rewrite"] and run.senior_turns[0].verdict == "incorrect"


class SamplingRecorder(BaseCallbackHandler):
    """Each chat call's role, node and the sampling the client sent (LangChain's invocation params)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, tags=None, metadata=None, **kw):
        params = kw.get("invocation_params") or {}
        self.calls.append({"name": kw.get("name"), "node": (metadata or {}).get("node"),
                           "temperature": params.get("temperature"), "seed": params.get("seed")})


@pytest.mark.parametrize("on_error", ["fix", "resample"])
def test_a_failed_draft_is_fixed_in_the_conversation_or_resampled_from_the_prompt(smol_server, failing_db,
                                                                                   on_error):
    """Every query on ``failing_db`` fails, so each junior that wrote SQL retries once. ``fix`` shows it
    the error after its own draft; ``resample`` asks the original prompt again at the resample
    temperature with the next seed, the failed draft left out."""
    d = _raw()
    for r in d["roles"]:
        if r["type"] == "junior":
            r["options"] = {"on_error": on_error, "resample_temperature": 0.9}
    cfg = _cfg(smol_server, d)
    rec = SamplingRecorder()
    run = run_society("How many singers are there?", failing_db, cfg, agent="juniors", callbacks=[rec])
    calls = run.trace["llm_calls"]
    retried = [c.junior for c in run.candidates if c.fixed]
    assert retried, [(c.junior, c.sql) for c in run.candidates]  # SmolLM2 wrote SQL reading `singer`
    for name in retried:
        draft, retry = ([c for c in calls if c["role"] == name and c["node"] == node][0] for node in ("draft", "fix"))
        inst = next(i for i in cfg.instances("junior") if i.name == name)
        if on_error == "resample":
            assert retry["messages"] == draft["messages"]  # the same prompt, the failed draft not shown
        else:
            assert retry["messages"][: len(draft["messages"])] == draft["messages"]
            assert "Running that query gave" in str(retry["messages"][-1]) and len(retry["messages"]) == len(
                draft["messages"]) + 2
        sent = [(c["temperature"], c["seed"]) for c in rec.calls if c["name"] == retry["label"] and c["node"] == "fix"]
        own = (inst.sampling.temperature, inst.sampling.seed)
        assert sent == [(0.9, inst.sampling.seed + 1) if on_error == "resample" else own], (sent, own)


def test_a_junior_with_the_examples_tool_drafts_after_worked_examples_from_other_databases(smol_server):
    """The ``examples`` tool puts the gold train split's most similar questions, with their SQL, at
    the start of that junior's draft prompt (a traced ``sql_examples`` call); never from the
    question's own database (here a train database, whose paraphrases are in the bank); the other
    juniors' prompts are unchanged."""
    d = _raw()
    d["roles"][0].update(tools=["schema", "executor", "examples"], options={"examples_k": 2})
    cfg = _cfg(smol_server, d)
    db = resolve_database("department_management")
    run = run_society("How many heads of the departments are older than 56?", db, cfg, agent="juniors")
    calls = run.trace["llm_calls"]
    drafts = {c["role"]: c["messages"][-1]["content"] for c in calls if c["node"] == "draft"}
    assert "Worked examples from other databases:" in drafts["junior_direct"]
    assert drafts["junior_direct"].count("\nSQL: ") == 2
    assert not any("Worked examples" in text for role, text in drafts.items() if role != "junior_direct")
    tool = [t for t in run.trace["tool_calls"] if t["tool"] == "sql_examples"]
    assert [(t["role"], t["node"], t["args"]["k"], t["ok"]) for t in tool] == [
        ("junior_direct", "draft", 2, True)]
    # the examples shown are exactly the bank's nearest questions outside department_management
    from tools.examples import bank_for

    shown = bank_for("train").similar("How many heads of the departments are older than 56?", 2,
                                      exclude_db="department_management")
    assert all(e.db_id != "department_management" for e in shown)
    for e in shown:
        assert f"Question: {e.question}\nSQL: {' '.join(e.sql.split())}" in drafts["junior_direct"]


def test_an_unreadable_examples_split_is_refused_when_the_society_is_built(smol_server):
    from society.graph import build_graph

    d = _raw()
    d["roles"][0].update(tools=["schema", "executor", "examples"], options={"examples_split": "nosuchsplit"})
    with pytest.raises(ValueError, match="junior_direct.*examples_split 'nosuchsplit'"):
        build_graph(_cfg(smol_server, d))
