"""LangSmith path: what the real ``langsmith`` client sends, and pulling it back.

The HTTP server started here on 127.0.0.1 STANDS IN FOR THE HOSTED LANGSMITH SERVICE: it speaks
the subset of LangSmith's REST API that ``langsmith.Client`` 0.15 uses for tracing and reading
(``GET /info``, ``POST /runs/multipart``, ``POST /runs/batch``, ``POST|PATCH /runs``,
``GET|POST /sessions``, ``POST /feedback``, ``GET /feedback``, ``POST /runs/query``) and
records every request. The client, the tracing machinery (langsmith + langchain-core callbacks
+ LangGraph) and the SQL executed are all real; only the service is local.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import json
import os
import re
import sqlite3
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import parse_qs, urlparse

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from evaluation.tracing import langsmith_traces as lt
from evaluation.tracing.trace_records import read_records
from evaluation.tracing.trace_render import render_tree
from evaluation.tracing.trace_tree import build_tree

SPIDER_DB = (
    Path(__file__).resolve().parent.parent
    / "data"
    / "spider"
    / "database"
    / "concert_singer"
    / "concert_singer.sqlite"
)


# --------------------------------------------------------------------------- the stand-in service


class LangSmithStandIn:
    """Local stand-in for the hosted LangSmith service (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.multipart_parts: list[str] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.feedback: list[dict[str, Any]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def send_json(self, code: int, obj: Any) -> None:
                body = json.dumps(obj, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self) -> None:
                outer.dispatch(self, "GET")

            def do_POST(self) -> None:
                outer.dispatch(self, "POST")

            def do_PATCH(self) -> None:
                outer.dispatch(self, "PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- storage

    def session_for(self, name: str) -> dict[str, Any]:
        if name not in self.sessions:
            self.sessions[name] = {
                "id": str(uuid.uuid4()),
                "name": name,
                "tenant_id": str(uuid.UUID(int=1)),
                "reference_dataset_id": None,
                "start_time": dt.datetime.now(dt.UTC).isoformat(),
            }
        return self.sessions[name]

    def upsert_run(self, run: dict[str, Any]) -> None:
        rid = str(run["id"])
        cur = self.runs.setdefault(rid, {})
        for k, v in run.items():
            if v is not None:
                cur[k] = v
        name = cur.get("session_name")
        if name:
            cur["session_id"] = self.session_for(name)["id"]

    def add_feedback(self, fb: dict[str, Any]) -> None:
        now = dt.datetime.now(dt.UTC).isoformat()
        fb = {**fb, "created_at": fb.get("created_at") or now, "modified_at": fb.get("modified_at") or now}
        self.feedback.append(fb)

    # -- endpoints

    def dispatch(self, h: Any, method: str) -> None:
        u = urlparse(h.path)
        body = h.body()
        with self.lock:
            self.requests.append((method, u.path))
            path = u.path
            if method == "GET" and path == "/info":
                return h.send_json(
                    200,
                    {
                        "version": "0.10.0",
                        "instance_flags": {},
                        "batch_ingest_config": {
                            "use_multipart_endpoint": True,
                            "size_limit": 100,
                            "size_limit_bytes": 20_000_000,
                            "scale_up_nthreads_limit": 16,
                            "scale_up_qsize_trigger": 1000,
                            "scale_down_nempty_trigger": 4,
                        },
                    },
                )
            if method == "POST" and path == "/runs/multipart":
                return h.send_json(202, self.multipart(h.headers.get("Content-Type", ""), body))
            if method == "POST" and path == "/runs/batch":
                data = json.loads(body)
                for r in (data.get("post") or []) + (data.get("patch") or []):
                    self.upsert_run(r)
                return h.send_json(202, {})
            if method == "POST" and path == "/runs":
                self.upsert_run(json.loads(body))
                return h.send_json(202, {})
            if method == "PATCH" and path.startswith("/runs/"):
                self.upsert_run({**json.loads(body), "id": path.rsplit("/", 1)[1]})
                return h.send_json(202, {})
            if method == "GET" and path == "/sessions":
                name = (parse_qs(u.query).get("name") or [None])[0]
                return h.send_json(200, [self.sessions[name]] if name in self.sessions else [])
            if method == "POST" and path == "/sessions":
                return h.send_json(200, self.session_for(json.loads(body)["name"]))
            if method == "POST" and path == "/feedback":
                self.add_feedback(json.loads(body))
                return h.send_json(200, {})
            if method == "GET" and path == "/feedback":
                q = parse_qs(u.query)
                runs = set(q.get("run", []))
                offset = int((q.get("offset") or ["0"])[0])
                items = [f for f in self.feedback if not runs or str(f.get("run_id")) in runs]
                return h.send_json(200, items[offset:])
            if method == "POST" and path == "/runs/query":
                return h.send_json(200, {"runs": self.query(json.loads(body)), "cursors": {"next": None}})
            return h.send_json(404, {"detail": f"stand-in does not serve {method} {path}"})

    def multipart(self, content_type: str, body: bytes) -> dict[str, Any]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        pending: dict[str, dict[str, Any]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            self.multipart_parts.append(name)
            payload = json.loads(part.get_payload(decode=True))
            kind, _, rest = name.partition(".")
            if kind == "feedback":
                self.add_feedback(payload)
                continue
            if kind not in ("post", "patch"):
                continue
            run_id, _, fld = rest.partition(".")
            run = pending.setdefault(run_id, {"id": run_id})
            if fld:
                run[fld] = payload
            else:
                run.update(payload)
        for run in pending.values():
            self.upsert_run(run)
        return {}

    def query(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for run in self.runs.values():
            if body.get("session") and run.get("session_id") not in body["session"]:
                continue
            if body.get("trace") and str(run.get("trace_id")) != str(body["trace"]):
                continue
            if body.get("id") and str(run["id"]) not in [str(x) for x in body["id"]]:
                continue
            if body.get("is_root") is True and run.get("parent_run_id"):
                continue
            flt = body.get("filter")
            if flt:
                m = re.fullmatch(r'has\(tags, "(.*)"\)', flt)
                assert m, f"stand-in understands only has(tags, ...) filters, got {flt}"
                if m.group(1) not in (run.get("tags") or []):
                    continue
            out.append({**run, "inputs": run.get("inputs") or {}, "outputs": run.get("outputs") or {}})
        return out


@pytest.fixture()
def standin(monkeypatch: pytest.MonkeyPatch):
    s = LangSmithStandIn()
    monkeypatch.setenv("LANGSMITH_ENDPOINT", s.url)
    monkeypatch.setenv("LANGSMITH_PROJECT", "sqlsociety-test")
    for var in (
        "LANGCHAIN_API_KEY",
        "LANGCHAIN_TRACING_V2",
        "LANGCHAIN_TRACING",
        "LANGSMITH_TRACING_V2",
        "LANGCHAIN_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    lt.reset_client()
    import langsmith.utils

    langsmith.utils.get_env_var.cache_clear()
    langsmith.utils.tracing_is_enabled.cache_clear() if hasattr(
        langsmith.utils.tracing_is_enabled, "cache_clear"
    ) else None
    yield s
    lt.reset_client()
    langsmith.utils.get_env_var.cache_clear()
    s.close()


# --------------------------------------------------------------------------- a real graph


class _State(TypedDict, total=False):
    question: str
    sql: str
    rows: str


def _real_graph():
    """A two-node LangGraph graph whose second node calls a real SQL tool on a Spider database."""
    from langchain_core.tools import tool
    from langgraph.graph import END, START, StateGraph

    @tool("sql_db_query")
    def sql_db_query(sql: str) -> str:
        """Run one read-only SQL statement on concert_singer and return the rows."""
        con = sqlite3.connect(f"file:{SPIDER_DB}?mode=ro", uri=True)
        try:
            return json.dumps(con.execute(sql).fetchall())
        finally:
            con.close()

    def junior_direct(state: _State) -> _State:
        return {"sql": "SELECT count(*) FROM singer WHERE country = 'France'"}

    def senior(state: _State) -> _State:
        return {"rows": sql_db_query.invoke({"sql": state["sql"]})}

    g = StateGraph(_State)
    g.add_node("junior_direct", junior_direct)
    g.add_node("senior", senior)
    g.add_edge(START, "junior_direct")
    g.add_edge("junior_direct", "senior")
    g.add_edge("senior", END)
    return g.compile()


def _one_rollout(run_id: str = "run-test-1", question_id: str = "dev-7") -> tuple[lt.RolloutHandle, dict]:
    graph = _real_graph()
    question = "How many singers are from France?"
    with lt.rollout_trace(
        run_id=run_id, phase="1-gather", question_id=question_id, db_id="concert_singer", inputs={"question": question}
    ) as handle:
        out = graph.invoke({"question": question})
        handle.end({"final_sql": out["sql"]})
        handle.set_reward(0.75, ex=1.0)
    lt.flush()
    return handle, out


def _french_singers() -> str:
    con = sqlite3.connect(f"file:{SPIDER_DB}?mode=ro", uri=True)
    try:
        return json.dumps(con.execute("SELECT count(*) FROM singer WHERE country = 'France'").fetchall())
    finally:
        con.close()


# --------------------------------------------------------------------------- tests


def test_without_key_nothing_is_created_or_sent(standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    assert not lt.tracing_enabled()
    handle, out = _one_rollout()
    assert out["rows"] == _french_singers()  # the graph really ran
    assert handle.enabled is False and handle.trace_id is None
    assert lt._client is None, "a langsmith.Client was created without an API key"
    assert standin.requests == [], f"requests were sent without a key: {standin.requests}"


def test_key_without_tracing_flag_sends_nothing(standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGSMITH_API_KEY", "test-key")
    monkeypatch.delenv("LANGSMITH_TRACING", raising=False)
    handle, _ = _one_rollout()
    assert handle.enabled is False
    assert lt._client is None
    assert standin.requests == []


def test_rollout_wire_format(standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGSMITH_API_KEY", "test-key")
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    handle, out = _one_rollout()
    assert handle.enabled and handle.trace_id

    paths = {p for _, p in standin.requests}
    assert "/runs/multipart" in paths, f"client did not use the multipart ingest endpoint: {standin.requests}"
    # runs and feedback travel as parts of the multipart batches
    assert any(n.startswith("post.") for n in standin.multipart_parts)
    assert any(n.startswith("feedback.") for n in standin.multipart_parts) or ("POST", "/feedback") in standin.requests

    runs = standin.runs
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert len(roots) == 1
    root = roots[0]
    assert root["name"] == "rollout" and root["run_type"] == "chain"
    assert str(root["trace_id"]) == handle.trace_id
    assert set(root["tags"]) >= {"run:run-test-1", "phase:1-gather", "question:dev-7", "db:concert_singer"}
    md = root["extra"]["metadata"]
    assert md["sqlsociety_run_id"] == "run-test-1" and md["phase"] == "1-gather"
    assert md["question_id"] == "dev-7" and md["db_id"] == "concert_singer"
    assert root["inputs"] == {"question": "How many singers are from France?"}
    assert root["outputs"]["final_sql"] == out["sql"] and root["outputs"]["reward"] == 0.75
    assert root["session_id"] == standin.sessions["sqlsociety-test"]["id"]

    # every other run belongs to the same trace and nests under the root
    by_name = {r["name"]: r for r in runs.values()}
    for name in ("junior_direct", "senior", "sql_db_query"):
        assert name in by_name, f"no {name} run; got {sorted(by_name)}"
        assert str(by_name[name]["trace_id"]) == handle.trace_id
    assert by_name["sql_db_query"]["run_type"] == "tool"
    assert by_name["sql_db_query"]["outputs"]["output"] == _french_singers()
    assert str(by_name["sql_db_query"]["parent_run_id"]) == str(by_name["senior"]["id"])
    chain = by_name["senior"]
    while chain.get("parent_run_id"):
        chain = runs[str(chain["parent_run_id"])]
    assert chain is root

    fb = {f["key"]: f for f in standin.feedback}
    assert fb["reward"]["score"] == 0.75 and str(fb["reward"]["run_id"]) == str(root["id"])
    assert fb["ex"]["score"] == 1.0
    assert str(fb["reward"]["session_id"]) == standin.sessions["sqlsociety-test"]["id"]


def test_pull_reads_the_trace_back_into_the_local_format(
    standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LANGSMITH_API_KEY", "test-key")
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    handle, _ = _one_rollout(run_id="run-pull", question_id="dev-3")
    _one_rollout(run_id="other-run", question_id="dev-4")  # must not be pulled

    groups = lt.pull_traces("sqlsociety-test", "run-pull")
    assert len(groups) == 1
    records = next(iter(groups.values()))
    assert ("POST", "/runs/query") in standin.requests and ("GET", "/feedback") in standin.requests
    assert {r["trace_id"] for r in records} == {uuid.UUID(handle.trace_id).hex}

    trace = build_tree(records)
    assert trace.reward == 0.75
    names = trace.node_names()
    assert "rollout" in names and "junior_direct" in names and "senior" in names
    tools = [n for n in trace.nodes() if n.kind == "tool"]
    assert len(tools) == 1 and "France" in str(tools[0].record["attributes"]["langchain.tool.input"])

    # by trace UUID as well
    assert list(lt.pull_traces("sqlsociety-test", handle.trace_id)) == list(groups)

    out = tmp_path / "pulled.jsonl"
    assert lt.write_records(groups, out) == len(records)
    again = build_tree(read_records(out))
    assert again.reward == 0.75 and again.node_names() == names

    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(render_tree(again))
    text = console.export_text()
    assert "junior_direct" in text and "sql_db_query" in text and "reward = 0.750" in text

    # the command line does the same
    from typer.testing import CliRunner

    from society.cli.root import app

    cli_out = tmp_path / "cli.jsonl"
    res = CliRunner().invoke(app, ["traces", "pull", "--project", "sqlsociety-test", "--run-id", "run-pull",
                                   "-o", str(cli_out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "pulled 1 rollout(s)" in res.output and "final reward = 0.750" in res.output
    assert read_records(cli_out) == read_records(out)


def test_pull_unknown_run_id_is_a_clear_error(standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGSMITH_API_KEY", "test-key")
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    _one_rollout()
    with pytest.raises(LookupError, match="no-such-run"):
        lt.pull_traces("sqlsociety-test", "no-such-run")


def test_guard_stops_langchain_tracing_without_key(standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a rollout (e.g. `sqlsociety ask`), LANGSMITH_TRACING=true without a key must send nothing either."""
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    assert lt.disable_tracing_without_key() is True
    assert os.environ["LANGSMITH_TRACING"] == "false"
    import langsmith.utils

    langsmith.utils.get_env_var.cache_clear()
    _real_graph().invoke({"question": "How many singers are from France?"})
    assert standin.requests == []
    monkeypatch.setenv("LANGSMITH_API_KEY", "k")
    assert lt.disable_tracing_without_key() is False


@pytest.mark.model
def test_real_society_rollout_nests_nodes_llm_and_tool_runs(
    standin: LangSmithStandIn, monkeypatch: pytest.MonkeyPatch, smol_server, tmp_path: Path
) -> None:
    """The real society (SmolLM2 on llama.cpp) inside rollout_trace: one trace with node, LLM and
    tool runs carrying the role metadata, and the reward as feedback; then pulled back."""
    from evaluation.metrics.rewards import compute_reward
    from society.config import SocietyConfig
    from society.run import run_society

    monkeypatch.setenv("LANGSMITH_API_KEY", "test-key")
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    repo = Path(__file__).resolve().parent.parent
    cfg = SocietyConfig.load(repo / "configs" / "smoke.yaml")
    for alias in cfg.embedded_aliases():  # the one server serves every embedded alias
        cfg = cfg.with_endpoint(alias, smol_server.base_url, smol_server.model)
    gold = "SELECT count(*) FROM singer"
    with lt.rollout_trace(run_id="run-model", phase="eval-baseline", question_id="dev-0", db_id="concert_singer",
                          inputs={"question": "How many singers do we have?"}) as handle:
        run = run_society("How many singers do we have?", SPIDER_DB, cfg, question_id="dev-0", db_id="concert_singer")
        reward = compute_reward(run.final_sql, gold, SPIDER_DB).total
        handle.end({"final_sql": run.final_sql})
        handle.set_reward(reward)
    lt.flush()

    runs = list(standin.runs.values())
    assert {str(r["trace_id"]) for r in runs} == {handle.trace_id}
    llm = [r for r in runs if r["run_type"] == "llm"]
    assert len(llm) == run.llm_calls
    roles = {r["extra"]["metadata"].get("role_instance") for r in llm}
    assert {c.junior for c in run.candidates} <= roles
    assert any(r["run_type"] == "tool" and r["name"] == "sql_db_query" for r in runs)
    names = {r["name"] for r in runs}
    assert {"rollout", "society", "supervisor", "finalize"} <= names
    # the langsmith client sends feedback scores rounded to 4 decimals
    assert {f["key"]: f["score"] for f in standin.feedback}["reward"] == pytest.approx(reward, abs=1e-4)

    trace = build_tree(next(iter(lt.pull_traces("sqlsociety-test", "run-model").values())))
    assert trace.reward == pytest.approx(reward, abs=1e-4)
    assert trace.llm_calls() == run.llm_calls
