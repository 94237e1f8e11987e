"""Probe (what ran, reformatted for the linter afterwards): SFT steps with and without TRL's torch_compile.

Usage: python sft_compile.py STEPS {plain,compile}
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, "/work/main")
from training.sft import JuniorSFTConfig, JuniorSFTTrainer  # noqa: E402

with open("/work/runs/default-reuse-b/phases/2-sft/sft_dataset.jsonl") as f:
    rows = [{"messages": json.loads(line)["messages"]} for line in f][:40]
steps, arm = int(sys.argv[1]), sys.argv[2]
trl = {"torch_compile": True} if arm == "compile" else {}
with tempfile.TemporaryDirectory() as d:
    cfg = JuniorSFTConfig(model="qwen2.5-coder-0.5b", output_dir=d, max_steps=steps, per_device_train_batch_size=2,
                          max_length=768, num_threads=2, logging_steps=1, trl_args=trl)
    t = time.perf_counter()
    res = JuniorSFTTrainer(cfg, rows).train()
    print(arm, "total", round(time.perf_counter() - t, 1), "steps", [round(s, 2) for s in res.step_seconds],
          "mean after 3", round(statistics.fmean(res.step_seconds[3:]), 2),
          "losses", [round(loss, 3) for _, loss in res.losses], flush=True)
