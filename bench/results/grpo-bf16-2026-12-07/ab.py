"""A/B: GRPO step time fp32 vs bf16 on the long run's real senior prompts (base senior, fresh LoRA).

Usage (repository root): ``python3 bench/results/grpo-bf16-2026-12-07/ab.py bf16|fp32 STEPS``.
"""
import json
import lzma
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
from datasets import Dataset  # noqa: E402

from training.grpo import SeniorGRPOConfig, SeniorGRPOTrainer  # noqa: E402

PROMPTS = "bench/results/long-2026-12-06-trained/phases/3-grpo/warm_prompts.jsonl.xz"
arm, steps = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in lzma.open(PROMPTS, "rt")]
for r in rows:  # the run's database paths, pointed at the bundled Spider
    r["db_path"] = "/work/shared/data/spider/database/" + r["db_path"].split("/database/")[1]
ds = Dataset.from_list(rows[:steps])
kw = dict(model="qwen2.5-coder-0.5b", max_steps=steps, num_generations=4, max_completion_length=160,
          scale_rewards="none", stop=("</sql>", "```\n\n"), output_dir=f"/tmp/grpo_ab/{arm}", seed=0,
          shuffle_dataset=False)
if arm == "fp32":
    kw["bf16"] = False
res = SeniorGRPOTrainer(SeniorGRPOConfig(**kw), ds).train()
m = json.loads(res.metrics_path.read_text())
print(json.dumps({"arm": arm, "precision": m["precision"], "reason": m["precision_reason"],
                  "step_seconds": m["step_seconds"], "rewards": m["rewards"],
                  "lens": [h.get("completions/mean_length") for h in m["log_history"] if "reward" in h],
                  "train_seconds": m["train_seconds"]}))
