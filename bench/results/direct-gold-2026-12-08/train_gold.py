"""The direct junior's adapter trained on Spider's gold SQL of train questions phase 1 never drew (PLAN.md).

Draws ``N`` train questions outside the default profile's phase-1 draw (its 60 society and 1,000
juniors-only tasks; ``tools.sampling.sample_examples``, seed 0, across all train databases), renders each
as the direct junior's conversation exactly as the society serves it (the system prompt with the schema
text, the direct persona's user prompt, the gold SQL in a ```sql block as the reply), checks the rendering
against the long run's recorded direct rows, trains with the default ``sft`` settings (``random`` fill,
``max_steps`` as the profile), exports F16 into a copy of the long run's export with the direct adapter
replaced, and writes ``train_gold.json`` and the rows (``gold_rows.jsonl.xz``) beside this file.

    python3 train_gold.py RECORDED_SFT_DATASET OUT_DIR EXPORT_COPY N
"""

from __future__ import annotations

import json
import lzma
import sys
from pathlib import Path

from datasets import Dataset

from society.commands import load_config
from society.prompts import PROMPTS
from society.toolkit import schema_text
from tools.sampling import sample_examples
from tools.spider import load_examples
from training.profile import TrainConfig
from training.reuse import schema_settings
from training.run_questions import gather_draw
from training.sft import JuniorSFTTrainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swap_adapter import export_copy  # noqa: E402  (bench/results/swap_adapter.py)


def conversation(question: str, db_path: str, sql: str, schema: dict) -> list[dict[str, str]]:
    """The direct junior's first turn for ``question`` with ``sql`` as its reply (OpenAI message dicts);
    ``schema``: how the society shows a schema (``training.reuse.schema_settings``)."""
    p = PROMPTS["junior_direct"]
    return [{"role": "system", "content": p.system.format(schema=schema_text(db_path, **schema))},
            {"role": "user", "content": p.user.format(feedback="", question=question)},
            {"role": "assistant", "content": f"```sql\n{sql}\n```"}]


def main(recorded: str, out: str, export_copy_dir: str, n: str) -> None:
    cfg = TrainConfig.load("default")
    schema = schema_settings(load_config(Path(cfg.society_config)))
    train = load_examples(cfg.data_dir, "train")
    tasks, jtasks = gather_draw(cfg, train)
    used = {e.id for e in tasks + jtasks}
    by_id = {e.id: e for e in train}
    checked = 0
    for r in map(json.loads, open(recorded, encoding="utf-8")):
        if r["persona"] == "direct" and r["source"] == "juniors" and len(r["messages"]) == 3:
            e = by_id[r["task_id"].split("/")[0]]
            mine = conversation(e.question, e.db_path, "", schema)
            assert [m["content"] for m in mine[:2]] == [m["content"] for m in r["messages"][:2]], r["task_id"]
            checked += 1
    assert checked > 100, checked
    rest = [e for e in train if e.id not in used]
    picked = sample_examples(rest, int(n), 0)
    rows = [{"task_id": e.id, "db_id": e.db_id,
             "messages": conversation(e.question, e.db_path, e.gold_sql.strip(), schema)} for e in picked]
    print(f"rendering checked on {checked} recorded direct rows; {len(rest)} train questions outside phase 1's "
          f"{len(used)}; {len(rows)} drawn over {len({e.db_id for e in picked})} databases", flush=True)
    with lzma.open(HERE / "gold_rows.jsonl.xz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    ds = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    res = JuniorSFTTrainer(cfg.sft.with_values(model=cfg.base_model, output_dir=out), ds).train()
    print(f"{res.steps} steps on {res.rows} rows ({res.rows_over_max_length} over max_length), "
          f"{res.mean_step_seconds:.2f} s/step, {res.train_seconds / 60:.1f} min", flush=True)
    sha = export_copy(res.adapter_dir, cfg.base_model, export_copy_dir)
    json.dump({"rendering_checked": checked, "outside_phase1": len(rest), "rows": len(rows), "steps": res.steps,
               "rows_trained": res.rows, "rows_over_max_length": res.rows_over_max_length,
               "mean_step_seconds": res.mean_step_seconds, "train_seconds": res.train_seconds,
               "losses": res.losses, "gguf_sha256": sha},
              open(HERE / "train_gold.json", "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:5])
