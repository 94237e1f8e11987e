"""Re-key the long run's phase-3 repair selection under the path-free ``phase3_key`` (2026-12-07).

Before commit "phase3_key without the checkout path", the key hashed ``grpo.verl_config``, an absolute
path into the checkout (``/work/runs/src-fe969bd/configs/verl_senior.yaml`` in the long run), so no
other checkout could reuse the selection. This recomputes the old key for RUN_DIR's plan with the
source's path put back; only if it equals the key stored in SOURCE's ``warm_select_done.json`` (the
settings, reward and senior prompts are then the same but for the path) is the record re-keyed with the
new key (the old one kept as ``legacy_key``). Usage: ``python3 rekey.py PROFILE RUN_DIR SOURCE_RUN OLD_PATH``.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
from training.phase_grpo import STEP_FILES, phase3_key, senior_decisions  # noqa: E402
from training.pipeline import TrainingPipeline  # noqa: E402
from training.profile import TrainConfig  # noqa: E402
from training.reuse import sha256_json  # noqa: E402

profile, run_dir, source, old_path = sys.argv[1:5]
plan = TrainingPipeline(TrainConfig.load(profile), Path(run_dir), phases={3}).resolve()
_, rl = senior_decisions(plan, print)
cfg = plan.cfg.grpo.with_values(stop=plan.senior_stop, backend="trl", model=plan.cfg.base_model,
                                output_dir="unused")
settings = {k: v for k, v in cfg.settings().items() if k not in ("output_dir", "init_adapter")}
settings["verl_config"] = old_path
old = sha256_json({"grpo": settings, "reward": plan.cfg.reward.model_dump(mode="json"),
                   "prompts": list(rl.prompts["prompt"])})
step = Path(source) / "phases" / "3-grpo" / STEP_FILES["select"]
rec = json.loads(step.read_text())
print("stored", rec["key"], "\nold formula with the source's path", old)
if rec["key"] != old:
    sys.exit("not equal: the selection differs in more than the path; not re-keyed")
new = phase3_key(plan, cfg, rl)
step.write_text(json.dumps({**rec, "key": new, "legacy_key": old}))
print("re-keyed:", new)
