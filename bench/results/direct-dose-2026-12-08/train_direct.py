"""The direct junior's adapter with more SFT steps on its admitted rows (PLAN.md beside this file).

Trains on the admitted direct conversations of ``SFT_DATASET`` (a run's ``phases/2-sft/sft_dataset.jsonl``)
with the default profile's ``sft`` settings and ``random`` fill, except ``max_steps = STEPS``; exports the
adapter to an F16 GGUF LoRA into a copy of the long run's export (its direct adapter replaced) and writes
``train_direct.json`` (rows, steps, losses, seconds) beside this file.

    python3 train_direct.py SFT_DATASET OUT_DIR EXPORT_COPY STEPS
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from datasets import Dataset

from training.profile import TrainConfig
from training.sft import JuniorSFTTrainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swap_adapter import export_copy  # noqa: E402  (bench/results/swap_adapter.py)


def main(dataset: str, out: str, export_copy_dir: str, steps: str) -> None:
    cfg = TrainConfig.load("default")
    direct = [r for r in map(json.loads, open(dataset, encoding="utf-8")) if r["persona"] == "direct"]
    counts = Counter(r["source"] for r in direct)
    print(f"direct rows {len(direct)} by source {dict(counts)}; max_steps {steps}", flush=True)
    ds = Dataset.from_list([{"messages": r["messages"]} for r in direct])
    res = JuniorSFTTrainer(cfg.sft.with_values(model=cfg.base_model, output_dir=out, max_steps=int(steps)), ds).train()
    print(f"{res.steps} steps on {res.rows} rows ({res.rows_over_max_length} over max_length), "
          f"{res.mean_step_seconds:.2f} s/step, {res.train_seconds / 60:.1f} min", flush=True)
    sha = export_copy(res.adapter_dir, cfg.base_model, export_copy_dir)
    json.dump({"direct_rows": len(direct), "by_source": dict(counts), "steps": res.steps, "rows": res.rows,
               "rows_over_max_length": res.rows_over_max_length, "mean_step_seconds": res.mean_step_seconds,
               "train_seconds": res.train_seconds, "losses": res.losses,
               "gguf_sha256": sha},
              open(HERE / "train_direct.json", "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:5])
