"""bench/sft.py runs: both arms train SmolLM2 on the same Spider conversations for 2 steps, each
adapter is scored on 2 held-out conversations, and the figures it writes are real (no timing is
asserted: the speed is the bench's to print)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_sft_runs_both_arms_on_the_same_examples(tmp_path: Path) -> None:
    out = tmp_path / "sft.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sft.py"), "--model", "smollm2-135m", "--steps", "2",
         "--matmul-seconds", "0.3", "--heldout", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| limit |" in proc.stdout and "fast / baseline time" in proc.stdout
    r = json.loads(out.read_text())
    assert r["model"] == "smollm2-135m" and r["steps"] == 2 and r["batch"] == 2 and r["conversations"] == 4
    base, fast = r["arms"]
    assert (base["arm"], base["precision"], base["padding_free"]) == ("baseline", "fp32", False)
    assert fast["arm"] == "fast" and fast["padding_free"] is True
    assert fast["precision"] in ("bf16", "fp32") and fast["precision_reason"]
    for arm in (base, fast):
        assert arm["steps"] == 2 and arm["rows"] == 4 and arm["threads"] >= 1
        assert len(arm["step_seconds"]) == 2 and all(s > 0 for s in arm["step_seconds"])
        assert arm["train_seconds"] > 0 and arm["tokens_per_second"] > 0
        assert [s for s, _ in arm["losses"]] == [1, 2]
        assert all(math.isfinite(v) and v > 0 for _, v in arm["losses"])
    # the same conversations, in the same batches: TRL's token count after each step, and the prompt
    # and completion tokens the bench counted with the chat template
    assert base["num_tokens"] == fast["num_tokens"] and base["tokens"] == r["tokens"] > 0
    assert r["same_batches"] is True and 0 < r["completion_tokens"] < r["tokens"]
    # step 1 is the untouched base model in both arms: equal losses up to bf16 rounding
    assert math.isclose(base["losses"][0][1], fast["losses"][0][1], rel_tol=0.05), (base["losses"], fast["losses"])
    lim = r["limit"]
    assert lim["matmul_gflops"]["float32"] > 0 and lim["matmul_gflops"]["bfloat16"] > 0
    assert 0 < lim["flops_needed"] < lim["flops_as_computed"]
    assert lim["seconds"] > 0 and lim["tokens_per_second"] > 0 and r["lora_params"] > 0
    assert r["fast_over_baseline_time"] > 0
    # what each arm learnt, scored the same way (float32) on conversations neither trained on
    assert r["heldout_conversations"] == 2 and r["heldout_loss_untrained"] > 0
    assert all(math.isfinite(arm["heldout_loss"]) and arm["heldout_loss"] > 0 for arm in (base, fast))
