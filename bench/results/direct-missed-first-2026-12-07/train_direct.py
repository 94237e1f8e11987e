"""The direct junior's adapter with the ``missed_first`` fill (PLAN.md beside this file).

Trains on the long run's admitted direct conversations (``phases/2-sft/sft_dataset.jsonl`` of a run
that reused the long run's phase 1: the same 2,133 rows), cut by ``training.phase_sft.fill_rows`` to
the default profile's step budget, with the default profile's ``sft`` settings; exports the adapter
to an F16 GGUF LoRA and writes a copy of the long run's export whose direct adapter is the new one.

    python3 train_direct.py SFT_DATASET OUT_DIR EXPORT_COPY
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from datasets import Dataset

from training.phase_sft import fill_rows, step_budget
from training.profile import TrainConfig
from training.sft import JuniorSFTTrainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swap_adapter import export_copy  # noqa: E402  (bench/results/swap_adapter.py)


def main(dataset: str, out: str, export_copy_dir: str) -> None:
    cfg = TrainConfig.load("default")
    rows = [json.loads(line) for line in open(dataset, encoding="utf-8")]
    direct = [r for r in rows if r["persona"] == "direct"]
    sft = cfg.sft
    budget = step_budget(int(sft.max_steps), int(sft.per_device_train_batch_size),
                         int(sft.gradient_accumulation_steps))
    keep = fill_rows([r["source"] for r in direct], budget, "missed_first", int(sft.seed))
    picked = [direct[i] for i in keep]
    counts: dict[str, int] = {}
    for r in picked:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    print(f"direct rows {len(direct)}, budget {budget}, kept {len(picked)} by source {counts}", flush=True)
    ds = Dataset.from_list([{"messages": r["messages"]} for r in picked])
    res = JuniorSFTTrainer(sft.with_values(model=cfg.base_model, output_dir=out), ds).train()
    print(f"{res.steps} steps on {res.rows} rows ({res.rows_over_max_length} over max_length), "
          f"{res.mean_step_seconds:.2f} s/step, {res.train_seconds / 60:.1f} min", flush=True)
    sha = export_copy(res.adapter_dir, cfg.base_model, export_copy_dir)
    json.dump({"direct_rows": len(direct), "budget": budget, "kept": len(picked), "kept_by_source": counts,
               "steps": res.steps, "rows_over_max_length": res.rows_over_max_length,
               "mean_step_seconds": res.mean_step_seconds, "train_seconds": res.train_seconds,
               "losses": res.losses, "gguf_sha256": sha},
              open(HERE / "train_direct.json", "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
