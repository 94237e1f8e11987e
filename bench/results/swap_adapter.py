"""One step the direct-junior trials share: a copy of the long run's export with one adapter replaced.

Used by ``direct-missed-first-2026-12-07/train_direct.py``, ``direct-dose-2026-12-08/train_direct.py`` and
``direct-gold-2026-12-08/train_gold.py``: copies ``long-2026-12-06-export`` to ``dst``, exports the PEFT
adapter to an F16 GGUF LoRA over it (``training.export.export_lora_gguf``) and writes the new file's sha256
into the copy's manifest, so ``sqlsociety eval --run dst`` serves it. The three scripts ran with this step
written out in each (their recorded commits); moved here afterwards and checked on each trial's adapter:
the same GGUF sha256 as the trial recorded and a manifest byte-equal to the export the trial served.

    python3 swap_adapter.py ADAPTER_DIR DST   # prints the sha256
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from training.export import export_lora_gguf

LONG_EXPORT = Path(__file__).resolve().parent / "long-2026-12-06-export"


def export_copy(adapter_dir: str | Path, base_model: str, dst: str | Path,
                alias: str = "junior_policy_direct") -> str:
    """Copy the long run's export to ``dst`` (must not exist) with ``alias``'s adapter replaced by
    ``adapter_dir`` (a PEFT LoRA of ``base_model``); returns the new GGUF's sha256 (64 hex digits).

    Raises:
        FileExistsError: ``dst`` exists.
        KeyError: ``alias`` is not an adapter of the export.
        ValueError: from ``export_lora_gguf`` (an adapter of another base model, or not a LoRA).
    """
    dst = Path(dst)
    shutil.copytree(LONG_EXPORT, dst)
    manifest_path = dst / "sqlsociety-export.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["adapters"][alias]
    gguf = export_lora_gguf(adapter_dir, base_model, dst / entry["file"], dtype="f16")
    entry["sha256"] = hashlib.sha256(gguf.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return entry["sha256"]


if __name__ == "__main__":
    print(export_copy(sys.argv[1], "qwen2.5-coder-0.5b", sys.argv[2]))
