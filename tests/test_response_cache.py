"""The response cache (``society.response_cache``): a repeated deterministic request is answered
once per run, keyed by the served weights' identity, the sampling and the prompt.

The store is a real SQLite file; the model is a real llama.cpp server (SmolLM2-135M, the
``smol_server`` fixture) answering the society's roles on real Spider databases.
"""

from __future__ import annotations

import pytest
import yaml
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from society.config import SMOKE_CONFIG, SocietyConfig
from society.llm import Endpoint
from society.response_cache import HIT, ResponseCache, ScopedResponseCache, scope_key
from society.run import run_society
from tools.spider import load_examples

JUNIORS = ("junior_direct", "junior_step_by_step", "junior_decompose")


def _reply(text: str) -> list[ChatGeneration]:
    msg = AIMessage(content=text, response_metadata={"finish_reason": "stop"},
                    usage_metadata={"input_tokens": 7, "output_tokens": 2, "total_tokens": 9})
    return [ChatGeneration(message=msg)]


def test_a_reply_is_kept_per_scope_and_prompt_across_instances(tmp_path):
    path = tmp_path / "eval" / "responses.sqlite"
    cache = ResponseCache(path)
    a, b = cache.scoped("scope-a"), cache.scoped("scope-b")
    a.update("prompt-1", "llm-string", _reply("SELECT 1"))
    assert b.lookup("prompt-1", "llm-string") is None  # another scope: other weights or sampling
    assert a.lookup("prompt-2", "llm-string") is None  # another prompt
    a.update("prompt-1", "llm-string", _reply("SELECT 2"))  # the first reply stays
    cache.close()

    again = ResponseCache(path)  # a resumed run opens the same file
    (gen,) = again.scoped("scope-a").lookup("prompt-1", "another url and port")
    assert gen.message.content == "SELECT 1"
    assert gen.message.response_metadata == {"finish_reason": "stop", "response_cache": HIT}
    assert gen.message.usage_metadata["input_tokens"] == 7 and gen.message.usage_metadata["output_tokens"] == 2
    assert (again.hits, again.misses, len(again)) == (1, 0, 1)


def test_what_is_not_one_chat_reply_is_not_stored(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    scoped = ScopedResponseCache(cache, "s")
    scoped.update("p", "l", [Generation(text="plain completion")])
    scoped.update("p", "l", _reply("a") + _reply("b"))
    scoped.update("p", "l", [ChatGeneration(message=AIMessage(content="", tool_calls=[
        {"name": "sql_db_query", "args": {"query": "SELECT 1"}, "id": "t1"}]))])
    assert len(cache) == 0
    with pytest.raises(NotImplementedError, match="delete"):
        scoped.clear()


def test_an_unreadable_cache_file_is_named(tmp_path):
    bad = tmp_path / "responses.sqlite"
    bad.write_bytes(b"not an sqlite file at all" * 200)
    with pytest.raises(Exception, match="responses.sqlite"):
        ResponseCache(bad)


def test_the_scope_needs_weights_and_deterministic_sampling():
    kw = dict(max_tokens=96, top_p=None, stop=["</sql>"], extra_body=None)
    assert scope_key("w", temperature=0.0, seed=None, **kw) is not None
    assert scope_key("w", temperature=0.3, seed=12, **kw) is not None
    assert scope_key("w", temperature=0.3, seed=None, **kw) is None  # independent draws stay independent
    assert scope_key(None, temperature=0.0, seed=11, **kw) is None  # weights unknown
    assert scope_key("w", temperature=0.0, seed=11, **kw) != scope_key("w", temperature=0.0, seed=12, **kw)
    assert scope_key("w", temperature=0.0, seed=11, **kw) != scope_key("w", temperature=0.0, seed=11,
                                                                         **{**kw, "max_tokens": 97})


class _Calls(BaseCallbackHandler):
    """Counts the chat-model runs the caller's callbacks see (a tracer's view)."""

    def __init__(self) -> None:
        self.n = 0

    def on_chat_model_start(self, serialized, messages, **kw):
        self.n += 1


def _config(server, *, junior_temperature: float | None = None) -> SocietyConfig:
    raw = yaml.safe_load(SMOKE_CONFIG.read_text())
    if junior_temperature is not None:
        for r in raw["roles"]:
            if r["type"] == "junior":
                r["sampling"] = {**r["sampling"], "temperature": junior_temperature, "seed": None}
    cfg = SocietyConfig.from_dict(raw).with_endpoint_for_all(server.base_url, server.model)
    return cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"timeout_s": 120})})


def _endpoints(cfg: SocietyConfig, server, weights: str | None) -> dict[str, Endpoint]:
    return {alias: Endpoint(server.base_url, server.model, weights=weights) for alias in cfg.models}


@pytest.mark.model
def test_the_society_takes_the_juniors_stage_replies_and_nothing_else(smol_server, tmp_path):
    cfg = _config(smol_server)
    cache = ResponseCache(tmp_path / "responses.sqlite")
    ex = load_examples(split="dev", limit=1)[0]
    eps = _endpoints(cfg, smol_server, "weights-a")

    def run(agent: str, endpoints=eps, callbacks=None):
        return run_society(ex.question, ex.db_path, cfg, question_id=ex.id, db_id=ex.db_id, agent=agent,
                           endpoints=endpoints, response_cache=cache, callbacks=callbacks)

    first = run("juniors")
    assert first.cached_calls == 0 and first.llm_calls >= 3 and len(cache) == first.llm_calls
    calls = _Calls()
    again = run("juniors", callbacks=[calls])
    # every junior request repeated: answered from the cache, same replies, same token counts
    assert again.cached_calls == again.llm_calls == first.llm_calls
    assert [c.raw for c in again.candidates] == [c.raw for c in first.candidates]
    assert (again.input_tokens, again.output_tokens) == (first.input_tokens, first.output_tokens)
    assert all(c["cached"] for c in again.trace["llm_calls"])
    assert calls.n == again.llm_calls  # cached calls still reach the caller's callbacks (traces)

    society = run("society")
    junior_calls = [c for c in society.trace["llm_calls"] if c["role"] in JUNIORS]
    first_drafts = {c["role"]: c for c in reversed(junior_calls)}  # a junior's first call of the question
    assert set(first_drafts) == set(JUNIORS) and all(c["cached"] for c in first_drafts.values())
    assert all(not c["cached"] for c in society.trace["llm_calls"] if c["role"] not in JUNIORS)
    assert society.cached_calls == sum(v.get("cached_calls", 0) for v in society.per_role.values()) >= 3

    # other weights (a trained adapter): nothing is taken
    other = run("juniors", endpoints=_endpoints(cfg, smol_server, "weights-b"))
    assert other.cached_calls == 0


@pytest.mark.model
def test_unidentified_weights_and_unseeded_draws_are_never_cached(smol_server, tmp_path):
    ex = load_examples(split="dev", limit=1)[0]
    cache = ResponseCache(tmp_path / "responses.sqlite")
    cfg = _config(smol_server)
    run = run_society(ex.question, ex.db_path, cfg, agent="juniors", response_cache=cache,
                      endpoints=_endpoints(cfg, smol_server, None))
    assert run.llm_calls >= 3 and len(cache) == 0  # a URL alone does not say which weights answer

    hot = _config(smol_server, junior_temperature=0.8)
    for _ in range(2):
        run = run_society(ex.question, ex.db_path, hot, agent="juniors", response_cache=cache,
                          endpoints=_endpoints(hot, smol_server, "weights-a"))
        assert run.cached_calls == 0
    assert len(cache) == 0


def test_served_identity_names_the_model_and_the_adapter_by_content(tmp_path):
    from training.checkpoints import resolve_gguf
    from training.export import ServedWeights
    from training.run_serving import served_identity

    base = resolve_gguf("smollm2-135m")
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    one.write_bytes(b"adapter one")
    two.write_bytes(b"adapter two")
    embedded = {"juniors": "smollm2-135m", "senior": "smollm2-135m"}
    trained = ServedWeights(base=base, loras={"juniors": one}, own={})
    ids = {a: served_identity(a, embedded, trained) for a in ("juniors", "senior", "not-embedded")}
    assert ids["not-embedded"] is None
    assert ids["juniors"] and ids["senior"] and ids["juniors"] != ids["senior"]  # adapter vs the base model
    retrained = ServedWeights(base=base, loras={"juniors": two}, own={})
    assert served_identity("juniors", embedded, retrained) != ids["juniors"]  # a new adapter file
    two.write_bytes(b"adapter one")  # the same bytes at another path (another run's export)
    assert served_identity("juniors", embedded, retrained) == ids["juniors"]
    alone = ServedWeights(base=base, loras={}, own={"senior": one})  # an adapter on a server of its own
    assert served_identity("senior", embedded, alone) == ids["juniors"]


def test_an_adapter_scale_other_than_one_is_another_scope():
    kw = dict(temperature=0.0, max_tokens=96, seed=11, top_p=None, stop=None)
    full = scope_key("w", extra_body={"lora": [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]}, **kw)
    assert full == scope_key("w", extra_body={"lora": [{"id": 1, "scale": 1.0}, {"id": 0, "scale": 0.0}]}, **kw)
    assert full != scope_key("w", extra_body={"lora": [{"id": 0, "scale": 0.5}]}, **kw)


@pytest.mark.model
def test_a_cache_that_cannot_be_read_sends_the_call_live(smol_server, tmp_path):
    ex = load_examples(split="dev", limit=1)[0]
    cfg = _config(smol_server)
    cache = ResponseCache(tmp_path / "responses.sqlite")
    cache.close()  # every read and write now raises sqlite3.ProgrammingError
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        run = run_society(ex.question, ex.db_path, cfg, agent="juniors", response_cache=cache,
                          endpoints=_endpoints(cfg, smol_server, "weights-a"))
    assert run.cached_calls == 0 and run.llm_calls >= 3 and not run.errors
    assert len(run.candidates) == 3 and all(c.raw for c in run.candidates)  # answered live, not failed


@pytest.mark.model
def test_a_request_repeated_within_one_question_goes_live(smol_server, tmp_path):
    from langchain_core.messages import HumanMessage

    from society.llm import CallLog, ChatModels, invoke_llm

    cfg = _config(smol_server)
    models = ChatModels(cfg, _endpoints(cfg, smol_server, "weights-a"), ResponseCache(tmp_path / "r.sqlite"))
    sampling = next(r.sampling for r in cfg.roles if r.name == "junior_direct")
    chat = models.chat("juniors", sampling)
    msgs = [HumanMessage("Write SQL that counts the rows of table singer.")]
    kw = dict(config=None, settings=cfg.llm, role="junior_direct", label="junior:direct", node="draft",
              alias="juniors")
    question = CallLog()
    invoke_llm(chat, msgs, log=question, **kw)
    invoke_llm(chat, msgs, log=question, **kw)  # the same question asks again: live
    assert [c.cached for c in question.llm_calls] == [False, False]
    other = CallLog()  # another question (or stage) sending the same request: answered from the cache
    invoke_llm(chat, msgs, log=other, **kw)
    assert [c.cached for c in other.llm_calls] == [True]
