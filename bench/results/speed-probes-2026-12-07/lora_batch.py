"""Probe (what ran, reformatted for the linter afterwards): decode throughput of 3 concurrent requests:
base x3, the same LoRA x3, 3 different LoRAs, and the 3 LoRAs one at a time.

Usage: python lora_batch.py RUN_DIR [TOKENS=96] [ROUNDS=4]
"""

import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, "/work/main")
from society.prompts import PROMPTS  # noqa: E402
from society.serving import serve_embedded  # noqa: E402
from tools.schema import schema_prompt  # noqa: E402
from tools.spider import load_examples  # noqa: E402

run = Path(sys.argv[1])
ntok = int(sys.argv[2]) if len(sys.argv) > 2 else 96
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
personas = ("direct", "step_by_step", "decompose")
ads = {p: run / f"phases/2-sft/adapters/junior_policy_{p}/adapter.gguf" for p in personas}
exs = load_examples(split="dev", limit=40)[::10][:rounds]


def msgs(e):
    m = PROMPTS["junior_direct"].render(question=e.question, feedback="",
                                        schema=schema_prompt(e.db_path, compact=True, sample_rows=0))
    return [{"role": "system" if x.type == "system" else "user", "content": str(x.content)} for x in m]


with serve_embedded("qwen2.5-coder-0.5b", loras=ads, parallel=4, n_threads=2) as srv:
    def call(e, ad):
        body = {"model": "m", "messages": msgs(e), "max_tokens": ntok, "temperature": 0.0, "ignore_eos": True,
                "lora": srv.lora_field(ad), "cache_prompt": False}
        req = urllib.request.Request(srv.base_url.rstrip("/") + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        r = json.loads(urllib.request.urlopen(req, timeout=600).read())
        return r["usage"]["completion_tokens"], r.get("timings", {})

    call(exs[0], None)
    arms = {"base x3": [None] * 3, "same lora x3": ["direct"] * 3,
            "3 different loras": ["direct", "step_by_step", "decompose"]}
    for name, trio in arms.items():
        t, toks = time.perf_counter(), 0
        for e in exs:
            with ThreadPoolExecutor(3) as ex:
                for n, _ in ex.map(lambda a, e=e: call(e, a), trio):
                    toks += n
        dt = time.perf_counter() - t
        print(f"{name:20s} concurrent: {toks} tokens in {dt:.1f} s = {toks / dt:.1f} tok/s", flush=True)
    t, toks = time.perf_counter(), 0
    for e in exs:
        for a in ["direct", "step_by_step", "decompose"]:
            toks += call(e, a)[0]
    dt = time.perf_counter() - t
    print(f"{'3 loras one at a time':20s}: {toks} tokens in {dt:.1f} s = {toks / dt:.1f} tok/s", flush=True)
print("load avg", os.getloadavg())
