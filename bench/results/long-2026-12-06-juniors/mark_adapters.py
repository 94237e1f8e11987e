"""One-off for the live long run: write sft_done.json for the three persona adapters that finished
(log lines 'phase 2 SFT (<persona>): 180 steps ...') before the process died, after checking that the
rows phase 2 selects now are those it trained on (sft_dataset.jsonl written at 17:42)."""
import json
import sys
from pathlib import Path

import yaml

from training.adapter import HierarchicalTraceAdapter
from training.phase_sft import ADAPTER_DONE, adapter_key, persona_rows
from training.pipeline import TrainingPipeline
from training.profile import TrainConfig

run = Path("/work/runs/default-2026-12-06")
cfg = TrainConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
pipe = TrainingPipeline(cfg, run, echo=print)
plan = pipe.resolve()
with plan.run_dir.archive() as archive:
    sel = HierarchicalTraceAdapter().select_sft(archive, min_reward=plan.cfg.adapter.sft_min_reward)
ds = sel.dataset
old = [json.loads(line) for line in (run / "phases/2-sft/sft_dataset.jsonl").read_text().splitlines()]
assert len(old) == len(ds), (len(old), len(ds))
assert [o["messages"] for o in old] == list(ds["messages"]), "selection differs"
rows, _ = persona_rows(plan, ds)
log = Path("/work/runs/default-2026-12-06.log").read_text()
for p, alias in plan.personas.items():
    d = run / "phases/2-sft/adapters" / alias
    m = json.loads((d / "sft_metrics.json").read_text())
    assert f"phase 2 SFT ({p}): 180 steps on {len(rows[p])} rows" in log, p
    assert m["rows"] == len(rows[p]) and m["steps"] == 180 and (d / "adapter.gguf").stat().st_size > 0
    info = {"adapter": str(d), "adapter_gguf": str(d / "adapter.gguf"), "rows": m["rows"], "steps": m["steps"],
            "losses": m["losses"], "seconds_per_step": m["mean_step_seconds"]}
    key = adapter_key(plan, ds.select(rows[p]))
    if "--write" in sys.argv:
        (d / ADAPTER_DONE).write_text(json.dumps({"key": key, "info": info}) + "\n")
    print(p, alias, m["rows"], key[:12])
