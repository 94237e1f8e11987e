"""A run directory moved after its phases finished (another disk, another machine) still names its
own files: ``RunDir.done`` reads the paths a phase recorded as under the directory's new place."""

from __future__ import annotations

import json
import shutil

from training.role_aliases import trained_adapters
from training.run_dir import RunDir


def _sft_done(root):
    a = root / "phases" / "2-sft" / "adapters" / "junior_policy_direct"
    return {"junior_adapters": "per_persona", "rows": 4,
            "adapters": {"direct": {"alias": "junior_policy_direct", "adapter": str(a),
                                    "adapter_gguf": str(a / "adapter.gguf")},
                         "decompose": {"alias": "junior_policy_decompose", "adapter": None}}}


def test_moved_run_reads_its_paths_under_the_new_place(tmp_path):
    old = tmp_path / "machine-a" / "run"
    RunDir(old).mark_done(2, _sft_done(old))
    RunDir(old).mark_done(3, {"adapter": str(old / "phases" / "3-grpo" / "adapter"), "steps": 2})
    new = tmp_path / "machine-b" / "elsewhere"
    new.parent.mkdir()
    shutil.move(str(old), str(new))

    done = {k: RunDir(new, create=False).done(k) for k in (1, 2, 3, 4)}
    assert done[1] is None and done[4] is None
    adapters = trained_adapters(done)
    new = new.resolve()
    assert adapters == {"junior_policy_direct": new / "phases" / "2-sft" / "adapters" / "junior_policy_direct",
                        "senior_policy": new / "phases" / "3-grpo" / "adapter"}
    assert done[2]["adapters"]["direct"]["adapter_gguf"] == str(adapters["junior_policy_direct"] / "adapter.gguf")
    assert done[2]["adapters"]["decompose"]["adapter"] is None and done[2]["rows"] == 4
    assert done[2]["run_dir"] == str(new)
    # what is on disk is left as written: reading does not write
    assert json.loads((new / "phases" / "3-grpo" / "done.json").read_text())["run_dir"] == str(old.resolve())


def test_unmoved_run_and_older_done_files_read_as_written(tmp_path):
    root = tmp_path / "run"
    info = {"adapter": str(root / "phases" / "3-grpo" / "adapter"), "steps": 2}
    RunDir(root).mark_done(3, info)
    assert RunDir(root).done(3) == {**info, "run_dir": str(root.resolve())}
    # a done.json written before run_dir was recorded: no rebasing, paths as they are
    older = root / "phases" / "2-sft" / "done.json"
    older.parent.mkdir(parents=True)
    older.write_text(json.dumps({"adapter": "/elsewhere/adapter", "rows": 1}))
    assert RunDir(root).done(2) == {"adapter": "/elsewhere/adapter", "rows": 1}
