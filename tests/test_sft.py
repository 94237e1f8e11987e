"""Phase 2: a tiny real SFT run of a junior on Spider conversations, then serving its adapter.

The conversations are what ``HierarchicalTraceAdapter.to_sft`` yields for a junior: the society's
own junior prompt (``society.prompts``) with the real database schema (``tools.schema``) and a
real Spider train question, answered with that question's gold SQL in a ```sql block.
"""

from __future__ import annotations

import json
import math

import pytest
from datasets import Dataset

from society.prompts import PROMPTS
from tools.schema import schema_prompt
from tools.spider import load_examples
from training.adapter_serving import check_served_equals_peft
from training.checkpoints import load_for_training
from training.export import read_adapter_info
from training.sft import JuniorSFTConfig, JuniorSFTTrainer, split_conversation

SMOL = "smollm2-135m"


def junior_conversations(n: int, max_schema_chars: int = 700) -> list[dict]:
    rows = []
    for e in load_examples(split="train", limit=400):
        schema = schema_prompt(e.db_path, compact=True, sample_rows=0)
        if len(schema) > max_schema_chars:
            continue
        msgs = PROMPTS["junior_direct"].render(question=e.question, schema=schema, feedback="")
        conv = [{"role": "system" if m.type == "system" else "user", "content": str(m.content)} for m in msgs]
        conv.append({"role": "assistant", "content": f"```sql\n{e.gold_sql}\n```"})
        rows.append({"messages": conv, "task_id": e.id})
        if len(rows) >= n:
            break
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rows = junior_conversations(6)
    assert len(rows) == 6
    cfg = JuniorSFTConfig(model=SMOL, output_dir=str(tmp_path_factory.mktemp("sft")), max_steps=2,
                          per_device_train_batch_size=1, max_length=384, learning_rate=5e-4)
    return JuniorSFTTrainer(cfg, Dataset.from_list(rows)).train(), rows


def test_sft_leaves_adapter_and_metrics(trained):
    res, rows = trained
    assert res.rows == len(rows) and res.steps == 2 and res.backend == "trl"
    assert (res.adapter_dir / "adapter_config.json").is_file()
    assert (res.adapter_dir / "adapter_model.safetensors").stat().st_size > 100_000
    info = read_adapter_info(res.adapter_dir)
    assert info.r == 8 and any(k.endswith("lora_B.weight") for k in info.tensors)
    # training moved the zero-initialised B matrices
    assert max(float(t.abs().max()) for k, t in info.tensors.items() if "lora_B" in k) > 0
    m = json.loads(res.metrics_path.read_text())
    assert m["steps"] == 2 and len(m["losses"]) == 2 and len(m["step_seconds"]) == 2
    assert all(math.isfinite(loss) and loss > 0 for _, loss in res.losses)
    meta = json.loads((res.adapter_dir / "sqlsociety_adapter.json").read_text())
    assert meta["method"] == "sft" and meta["base_gguf"].endswith(".gguf")


@pytest.mark.model
def test_sft_adapter_served_by_llama_cpp_equals_transformers(trained):
    """The trained junior adapter as a GGUF LoRA on the llama.cpp server (F32 base) answers the
    junior's own prompts exactly as transformers + PEFT does (greedy)."""
    res, rows = trained
    convs = [split_conversation(r["messages"])["prompt"] for r in rows[:2]]
    check = check_served_equals_peft(res.adapter_dir, convs, base_model=SMOL, max_tokens=16,
                                     model_and_tokenizer=load_for_training(SMOL))
    assert check.prompt_tokens_equal
    assert check.served == check.peft, (check.served, check.peft)
    assert all(s.strip() for s in check.served)


def test_completion_only_split():
    conv = junior_conversations(1)[0]["messages"]
    split = split_conversation(conv)
    assert [m["role"] for m in split["prompt"]] == ["system", "user"]
    assert split["completion"][0]["content"].startswith("```sql")


def test_sft_input_errors(tmp_path):
    cfg = JuniorSFTConfig(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'messages' column"):
        JuniorSFTTrainer(cfg, Dataset.from_list([{"text": "x"}]))
    with pytest.raises(ValueError, match="empty"):
        JuniorSFTTrainer(cfg, Dataset.from_dict({"messages": []}))
    with pytest.raises(ValueError, match="row 0: the last message must be the assistant"):
        JuniorSFTTrainer(cfg, [{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]}])
    with pytest.raises(ValueError, match="loss_on"):
        JuniorSFTConfig(loss_on="everything")
