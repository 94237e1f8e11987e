"""llama.cpp's llama-server as the embedded model server (society/serving.py).

Real servers on loopback ports with the embedded GGUF models, the ``openai`` client and
LangChain's ``ChatOpenAI``. The one stand-in is the "server that dies at once with SIGILL": a
tiny script that kills itself with that signal, because a real illegal instruction cannot be
produced on demand on a CPU that runs the portable build (the real failure is an AMX tile
instruction on a VM that traps it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from society.infra import ServerDied, dead_servers, describe_exit
from society.llama_server import LlamaServer, LoraAdapter, ServerNotInstalledError, find_llama_server
from society.models import ensure_model
from society.server_process import ServerStartError
from society.serving import serve_embedded

#: Generous bound (seconds) on waiting for an event a healthy machine sees within a second (a
#: process gone, an answer from a running server); each wait ends as soon as the event happens, so
#: only a slow or loaded machine waits longer, and a wrong outcome is still one.
EVENT_WAIT_S = 60.0


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(EVENT_WAIT_S)  # a closed port refuses at once; a listening one accepts
        return s.connect_ex(("127.0.0.1", port)) == 0


def _serves(port: int, alias: str) -> bool:
    """True if something on ``port`` answers /v1/models listing ``alias``. A slow answer (a loaded
    machine) is waited for, so it does not read as "not serving"; a closed port refuses at once."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=EVENT_WAIT_S) as r:
            return alias in {m.get("id") for m in json.load(r).get("data", [])}
    except (OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _chat(client, model: str, prompt: str, max_tokens: int = 48, **kw) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens, **kw
    )
    return r.choices[0].message.content or ""


def _sigill_stand_in(tmp_path: Path) -> Path:
    """An executable that dies at once with SIGILL (stand-in for a llama-server built for another CPU)."""
    exe = tmp_path / "llama-server-sigill"
    exe.write_text("#!/bin/sh\necho 'loading model' >&2\nkill -ILL $$\n")
    exe.chmod(0o755)
    return exe


# ------------------------------------------------------------------------ no server needed


def test_describe_exit_names_signals_and_the_fix():
    assert describe_exit(0) == "exit code 0" and describe_exit(3) == "exit code 3"
    text = describe_exit(-signal.SIGILL)
    assert text.startswith("SIGILL (Illegal instruction)") and "does not match this CPU" in text
    assert "scripts/install.sh" in text
    assert describe_exit(-signal.SIGKILL).startswith("SIGKILL")


def test_server_arguments_are_checked_before_starting(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LlamaServer(tmp_path / "nope.gguf", model_alias="x")
    smol = ensure_model("smollm2-135m")
    with pytest.raises(FileNotFoundError, match="LoRA adapter"):
        LlamaServer(smol, model_alias="x", loras={"a": tmp_path / "nope.gguf"})
    with pytest.raises(ValueError, match="n_ctx"):
        LlamaServer(smol, model_alias="x", n_ctx=0)
    with pytest.raises(ValueError, match="parallel"):
        LlamaServer(smol, model_alias="x", parallel=0)
    with pytest.raises(ValueError, match="adapter names"):
        LlamaServer(smol, model_alias="x", loras={"x": smol})
    srv = LlamaServer(smol, model_alias="x")
    with pytest.raises(RuntimeError, match="call start"):
        _ = srv.base_url
    srv.stop()  # stop before start is a no-op


def test_missing_executable_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SQLSOCIETY_LLAMA_SERVER", str(tmp_path / "nope"))
    with pytest.raises(ServerNotInstalledError, match="not an executable"):
        find_llama_server()


def _portability():
    """``scripts/objdump_portability.py``: the one portability rule, shared with the build script."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "objdump_portability.py"
    spec = importlib.util.spec_from_file_location("objdump_portability", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_installed_build_is_portable():
    """The installed server and every library beside it hold no AMX tile instruction, and AVX-512
    (any EVEX-encoded instruction, on zmm, ymm or xmm, and the opmask instructions) only in the
    AVX-512 CPU variants of ggml's runtime dispatch (objdump, read by scripts/objdump_portability.py,
    the rule scripts/build-llama-server.sh applies)."""
    exe = find_llama_server().resolve()
    if not shutil_which("objdump"):
        pytest.skip("objdump is not installed")
    rule = _portability()
    files = [exe, *sorted(p for p in exe.parent.glob("*.so*") if not p.is_symlink())]
    lines, with_avx512 = 0, set()
    for f in files:
        counts, n, problems = rule.check_file(f)
        lines += n
        assert problems == [], f
        if counts["avx512"]:
            with_avx512.add(f.name)
    assert not list(exe.parent.glob("libggml-cpu-sapphirerapids*"))  # the AMX variant is never installed
    assert lines > 100_000  # really disassembled
    if len(files) > 1:  # the dispatch build: AVX-512 is found where it is allowed, so the check can see it
        assert with_avx512 and all(rule.allowed(n) == {"avx512"} for n in with_avx512), with_avx512


# One objdump line of every form the portability rule must flag (AT&T, the default, and -M intel;
# with and without the raw bytes), and portable look-alikes it must not.
NON_PORTABLE_LINES = [
    ("  16:\t62 f1 6d 48 fe d9    \tvpaddd %zmm1,%zmm2,%zmm3", "avx512"),  # zmm
    ("   4:\t62 f1 6d 08 fe d9    \t{evex} vpaddd %xmm1,%xmm2,%xmm3", "avx512"),  # {evex} on xmm
    ("   4:\t{evex} vpaddd xmm3,xmm2,xmm1", "avx512"),  # {evex}, no raw bytes, Intel
    ("   a:\t62 f1 6d 09 fe d9    \tvpaddd %xmm1,%xmm2,%xmm3{%k1}", "avx512"),  # mask on xmm
    ("   a:\tvpaddd ymm3{k1},ymm2,ymm1", "avx512"),  # mask, Intel
    ("  10:\tvpaddd %xmm17,%xmm2,%xmm3", "avx512"),  # xmm16-31
    ("  10:\tvmovaps %ymm31,%ymm0", "avx512"),
    ("  1c:\tvpaddd (%rax){1to4},%xmm2,%xmm3", "avx512"),  # embedded broadcast
    ("  1c:\tvpaddd xmm3,xmm2,DWORD BCST [rax]", "avx512"),
    ("  1c:\tvmovdqa %xmm1,%xmm2{%k1}{z}", "avx512"),  # zeroing
    ("  22:\tvaddps {rn-sae},%ymm1,%ymm2,%ymm3", "avx512"),  # embedded rounding
    ("  22:\tvcmpps $0x1,{sae},%ymm1,%ymm2,%k1", "avx512"),
    ("  28:\tc5 f8 93 c1          \tkmovw  %k1,%eax", "avx512"),  # opmask instructions are VEX-encoded
    ("  28:\tkmovw  eax,k1", "avx512"),
    ("  28:\tc5 f4 41 c2          \tkandw  %k2,%k1,%k0", "avx512"),
    ("  2c:\tvpternlogd $0xff,%ymm1,%ymm2,%ymm3", "avx512"),  # AVX-512-only mnemonics, no other mark
    ("  2c:\tvpermt2d %ymm1,%ymm2,%ymm3", "avx512"),
    ("  2c:\tvpermi2ps %xmm1,%xmm2,%xmm3", "avx512"),
    ("  2c:\tvpcompressd %ymm1,(%rax)", "avx512"),
    ("  2c:\tvpexpandq (%rax),%ymm1", "avx512"),
    ("  2c:\tvmovdqu64 %xmm1,%xmm2", "avx512"),
    ("  2c:\tvcvtps2udq %ymm1,%ymm2", "avx512"),
    ("  2c:\tvextracti32x4 $0x1,%ymm1,%xmm2", "avx512"),
    ("  2c:\tvpmovdb %xmm1,%xmm2", "avx512"),
    ("  2c:\tvaddph %xmm1,%xmm2,%xmm3", "avx512"),  # AVX512-FP16
    ("  3f:\tvpdpbusd %ymm1,%ymm2,%ymm3", "avx512"),  # AVX512-VNNI (the AVX-VNNI one is printed {vex})
    ("  3f:\t62 f2 6d 28 50 d9    \tvpdpbusd %ymm1,%ymm2,%ymm3", "avx512"),
    ("  40:\t67 62 f1 6d 08 fe 18 \tvpaddd (%eax),%xmm2,%xmm3", "avx512"),  # EVEX after a legacy prefix
    ("  45:\tc4 e2 7b 49 c0       \ttilezero %tmm0", "amx"),
    ("  45:\ttilezero tmm0", "amx"),
    ("  4a:\tc4 e2 73 5e da       \ttdpbssd %tmm1,%tmm2,%tmm3", "amx"),
    ("  4a:\ttdpbf16ps %tmm1,%tmm2,%tmm3", "amx"),
    ("  4f:\tc4 e2 78 49 00       \tldtilecfg (%rax)", "amx"),
    ("  4f:\tsttilecfg (%rax)", "amx"),
    ("  4f:\ttileloadd (%rax,%rbx,1),%tmm1", "amx"),
    ("  4f:\ttilestored %tmm1,(%rax,%rbx,1)", "amx"),
    ("  4f:\ttilerelease", "amx"),
    ("   0:\tc5 e9 fe d9          \tvpaddd %xmm1,%xmm2,%xmm3", None),  # AVX (VEX) on xmm0-15: portable
    ("   0:\tvpaddd ymm3,ymm2,ymm15", None),
    ("  3a:\tc4 e2 6d 50 d9       \t{vex} vpdpbusd %ymm1,%ymm2,%ymm3", None),  # AVX-VNNI
    ("  54:\tc4 e3 79 1d ca 00    \tvcvtps2ph $0x0,%xmm1,%xmm2", None),  # F16C
    ("  66:\tc5 fa 6f d1          \tvmovdqu %xmm1,%xmm2", None),
    ("  70:\tvpcmpeqd %ymm1,%ymm2,%ymm3", None),
    ("  16:\te8 00 00 00 00       \tcall   1b <tile_kernel_zmm>", None),  # a symbol name is no operand
    ("  13:\t62 34 12 ", None),  # continuation bytes of a longer instruction
    ("  13:\t62                   \t(bad)", None),  # undecodable bytes
    ("000000000000001b <ggml_vec_dot_q4_k0>:", None),
]


@pytest.mark.parametrize(("line", "kind"), NON_PORTABLE_LINES)
def test_portability_rule_reads_every_avx512_and_amx_form(line, kind):
    rule = _portability()
    assert rule.classify(line) == kind
    assert rule.count([line]) == ({kind: 1} if kind else {})
    assert rule.allowed("libggml-cpu-zen4.so") == {"avx512"} and rule.allowed("libggml-cpu-haswell.so") == set()
    assert rule.allowed("libggml-cpu-sapphirerapids.so") == set() and rule.allowed("llama-server") == set()


def test_portability_rule_doctests():
    import doctest

    assert doctest.testmod(_portability()).failed == 0


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def test_server_dying_with_sigill_at_start_is_named(tmp_path):
    srv = LlamaServer(ensure_model("smollm2-135m"), model_alias="smol", executable=_sigill_stand_in(tmp_path))
    with pytest.raises(ServerStartError) as e:
        srv.start(timeout_s=EVENT_WAIT_S)  # it dies at once; the bound only caps a stuck start
    msg = str(e.value)
    assert "llama-server smol" in msg and "SIGILL" in msg and "does not match this CPU" in msg
    assert "loading model" in msg  # the server's own last log lines
    assert not srv.running


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
    replaced the slot's KV cache (so the prefix is recomputed, not reused)."""
    from openai import OpenAI

    client = OpenAI(base_url=smol_server.base_url, api_key="sk-no-key")
    prompt = "List three colours of the rainbow, comma separated."
    first = _chat(client, smol_server.model, prompt)
    again = _chat(client, smol_server.model, prompt)
    _chat(client, smol_server.model, "Say something about the sea.")
    third = _chat(client, smol_server.model, prompt)
    assert first and first == again == third


@pytest.mark.model
def test_parallel_slots_decode_requests_together(tmp_path):
    """Two requests sent at once to a 2-slot server are decoded together (continuous batching): their
    time intervals overlap and each slot served one. (Speed is measured in bench/serving.py.)"""
    from openai import OpenAI

    with serve_embedded("smollm2-135m", n_ctx=512, parallel=2) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="sk-no-key")
        prompts = ["Count from one to thirty in words.", "Name thirty animals, comma separated."]
        kw = dict(max_tokens=96, extra_body={"ignore_eos": True})
        spans: list[tuple[float, float]] = []

        def one(p: str) -> None:
            s = time.perf_counter()
            _chat(client, srv.model, p, **kw)
            spans.append((s, time.perf_counter()))

        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (a0, a1), (b0, b1) = sorted(spans)
        assert b0 < a1  # in flight together, not queued
        slots = json.loads(urllib.request.urlopen(srv.base_url[:-3] + "/slots").read())
        assert len(slots) == 2
        assert srv.metrics().get("llamacpp:tokens_predicted_total", 0) >= 2 * 96


@pytest.mark.model
def test_stop_ends_the_process_and_closes_the_port():
    alias = f"stop-test-{uuid.uuid4().hex[:8]}"
    srv = serve_embedded("smollm2-135m", n_ctx=512, model_alias=alias)
    with srv:
        pid, port, server_pid = srv.pid, srv.port, srv.server_pid
        assert srv.running and _port_open(port) and _serves(port, alias)
        assert server_pid and server_pid != pid
        log = srv.log_path
        assert log is not None and log.exists()
    assert not srv.running and srv.pid is None
    assert not _pid_alive(pid) and not _pid_alive(server_pid)
    assert not _serves(port, alias)
    assert not log.exists()  # automatic log removed
    srv.stop()  # idempotent


@pytest.mark.model
def test_server_dies_with_its_parent(tmp_path):
    """A parent killed with SIGKILL (no atexit, no finally) does not leave an orphan server."""
    code = textwrap.dedent(
        """
        import sys, time
        from society.serving import serve_embedded
        srv = serve_embedded("smollm2-135m", n_ctx=512, model_alias=sys.argv[1]).start()
        print(srv.pid, srv.server_pid, srv.port, flush=True)
        time.sleep(600)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    alias = f"orphan-test-{uuid.uuid4().hex[:8]}"
    parent = subprocess.Popen([sys.executable, "-c", code, alias], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid, server_pid, port = map(int, parent.stdout.readline().split())
        assert _pid_alive(pid) and _pid_alive(server_pid) and _serves(port, alias)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + EVENT_WAIT_S  # the event (both gone), bounded generously
    while (_pid_alive(pid) or _pid_alive(server_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(pid) and not _pid_alive(server_pid)
    assert not _serves(port, alias)


@pytest.mark.model
def test_killed_server_is_reported_with_its_signal():
    """SIGKILL on the llama-server process: the server reports it died (signal and log tail), and
    dead_servers() lists it until it is stopped."""
    with serve_embedded("smollm2-135m", n_ctx=512, model_alias="killed") as srv:
        assert srv.failure() is None and not [d for d in dead_servers() if "killed" in d.server]
        os.kill(srv.server_pid, signal.SIGKILL)
        deadline = time.monotonic() + EVENT_WAIT_S  # the event (the server seen dead), bounded generously
        while srv.running and time.monotonic() < deadline:
            time.sleep(0.1)
        err = srv.failure()
        assert isinstance(err, ServerDied) and err.returncode == -signal.SIGKILL
        assert "llama-server killed" in str(err) and "SIGKILL" in str(err) and "last" in str(err)
        assert any("killed" in d.server for d in dead_servers())
        with pytest.raises(ServerDied):
            srv.check()
    assert not any("killed" in d.server for d in dead_servers())


@pytest.mark.model
def test_start_failure_reports_the_server_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 1024)
    srv = LlamaServer(bad, model_alias="broken")
    with pytest.raises(ServerStartError, match=r"(?s)exited during start-up: exit code \d+.*last \d+ lines of"):
        srv.start(timeout_s=60)
    assert not srv.running


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
def test_one_process_serves_base_and_adapters_chosen_per_request(tmp_path, smol_server):
    """Adapters loaded at start with scale 0 and chosen per request: the base endpoint answers as a
    plain server does, a zero-B adapter leaves greedy output unchanged, a large random one changes
    it -- all from one process, interleaved. Through LangChain (the society's client) and through
    Agent Lightning's LLMProxy the same choice holds."""
    from langchain_core.messages import HumanMessage
    from openai import OpenAI

    from society.llm import Endpoint
    from society.proxy import llm_proxy

    prompt = "What is the capital of France?"
    plain = _chat(OpenAI(base_url=smol_server.base_url, api_key="sk-no-key"), smol_server.model, prompt, max_tokens=16)
    base = ensure_model("smollm2-135m")
    zero = _write_lora(base, tmp_path / "zero.gguf", scale_b=0.0)
    noisy = _write_lora(base, tmp_path / "noisy.gguf", scale_b=1.0)
    with LlamaServer(base, model_alias="smol", n_ctx=512, parallel=2,
                     loras=[LoraAdapter("zero", zero), LoraAdapter("noisy", noisy)]) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="sk-no-key")

        def ask(ep: Endpoint) -> str:
            return _chat(client, ep.model, prompt, max_tokens=16, extra_body=dict(ep.extra_body or {}))

        outs = {
            name: ask(srv.endpoint(None if name == "base" else name)) for name in ("base", "noisy", "zero", "base")
        }
        assert outs["base"] == plain and outs["zero"] == plain
        assert outs["noisy"] != plain
        assert [a["path"] for a in json.loads(urllib.request.urlopen(srv.base_url[:-3] + "/lora-adapters").read())] \
            == [str(zero.resolve()), str(noisy.resolve())]

        from langchain_openai import ChatOpenAI

        for name in ("noisy", None):
            ep = srv.endpoint(name)
            llm = ChatOpenAI(base_url=ep.base_url, model=ep.model, api_key="sk", temperature=0, max_tokens=16,
                             extra_body=dict(ep.extra_body))
            assert llm.invoke([HumanMessage(prompt)]).content == (outs["noisy"] if name else plain)
        with llm_proxy({"r_noisy": srv.endpoint("noisy"), "r_base": srv.endpoint()}) as proxied:
            pc = OpenAI(base_url=proxied["r_noisy"].base_url, api_key=proxied["r_noisy"].api_key)
            assert _chat(pc, "r_noisy", prompt, max_tokens=16) == outs["noisy"]
            assert _chat(pc, "r_base", prompt, max_tokens=16) == plain
