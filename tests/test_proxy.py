"""Model aliases routed through Agent Lightning's LLMProxy (a real LiteLLM proxy on loopback)
in front of a real llama.cpp server with SmolLM2-135M."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import pytest
from openai import APIStatusError, OpenAI

from society.config import SocietyConfig
from society.llm import Endpoint
from society.proxy import llm_proxy, proxy_model_list
from society.run import run_society
from tools.spider import resolve_database

pytestmark = pytest.mark.model

PROMPT = [{"role": "user", "content": "Write the SQL that counts the rows of table singer."}]


def _greedy(ep: Endpoint) -> tuple[str, int]:
    r = OpenAI(base_url=ep.base_url, api_key=ep.api_key).chat.completions.create(
        model=ep.model, messages=PROMPT, temperature=0, max_tokens=24, seed=0)
    return r.choices[0].message.content or "", r.usage.completion_tokens


def _port_open(url: str) -> bool:
    u = urlparse(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((u.hostname, u.port)) == 0


def test_aliases_resolve_through_the_proxy_to_the_bound_server(smol_server):
    direct = Endpoint(smol_server.base_url, smol_server.model)
    with llm_proxy({"junior_policy": direct, "senior_policy": direct}) as eps:
        assert set(eps) == {"junior_policy", "senior_policy"}
        proxied = eps["junior_policy"]
        assert proxied.base_url != direct.base_url and proxied.model == "junior_policy"
        assert eps["senior_policy"].base_url == proxied.base_url  # one proxy URL for every alias
        # the same greedy completion as asking the server directly
        assert _greedy(proxied) == _greedy(direct)
        # the proxy has a master key: a client without it is refused (LiteLLM answers 400 "No
        # connected db" for an unknown key when it has no key database, 401 with one)
        with pytest.raises(APIStatusError):
            _greedy(Endpoint(proxied.base_url, proxied.model, "sk-wrong"))
        # the society runs end to end with every alias resolved through the proxy
        cfg = SocietyConfig.load("configs/smoke.yaml")
        run = run_society("How many singers are there?", resolve_database("concert_singer"), cfg,
                          endpoints={a: proxied for a in cfg.models})
        assert run.llm_calls >= 3 and run.error is None and not run.errors
        assert run.tokens > 0  # usage flows back through LiteLLM
    assert not _port_open(proxied.base_url)  # stopped on exit
    # a second proxy in the same process (the pipeline starts one per stage) serves again
    with llm_proxy({"senior_policy": direct}) as eps2:
        assert _greedy(eps2["senior_policy"]) == _greedy(direct)


def test_model_list_names_the_alias_without_an_endpoint():
    assert proxy_model_list({"a": Endpoint("http://127.0.0.1:1/v1", "m", "k")}) == [
        {
            "model_name": "a",
            "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:1/v1", "api_key": "k"},
        }
    ]
    with pytest.raises(ValueError, match="'b'"):
        proxy_model_list({"b": Endpoint("", "m")})
