"""Phase 2: a tiny real SFT run of a junior on Spider conversations, then serving its adapter.

The conversations are what ``HierarchicalTraceAdapter.to_sft`` yields for a junior: the society's
own junior prompt (``society.prompts``) with the real database schema (``tools.schema``) and a
real Spider train question, answered with that question's gold SQL in a ```sql block.
"""

from __future__ import annotations

import doctest
import json
import math

import pytest
from datasets import Dataset

from society.prompts import PROMPTS
from tools.schema import schema_prompt
from tools.spider import load_examples
from training import sft as sft_module
from training.adapter_serving import check_served_equals_peft
from training.checkpoints import load_for_training
from training.export import read_adapter_info
from training.sft import JuniorSFTConfig, JuniorSFTTrainer, bf16_support, split_conversation

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


def test_sft_doctests():
    assert doctest.testmod(sft_module).failed == 0


def test_bf16_is_decided_from_the_cpu_flags_read_at_run_time(tmp_path):
    """bf16 only where /proc/cpuinfo-style text names a native bf16 instruction set (read when asked)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")
    assert bf16_support(cpuinfo) == (False, "CPU reports none of avx512_bf16, amx_bf16")
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    ok, why = bf16_support(cpuinfo)
    # torch's oneDNN decides the rest: bf16 on this build only where it says it can
    import torch

    assert ok == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and "avx512_bf16" in why
    assert bf16_support(tmp_path / "missing")[0] is False


def _one_step(tmp_path, rows, name, head_on_loss_tokens_only=True, **trl_args):
    cfg = JuniorSFTConfig(model=SMOL, output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=3,
                          max_length=768, learning_rate=5e-4, head_on_loss_tokens_only=head_on_loss_tokens_only,
                          trl_args={"bf16": False, **trl_args})
    return JuniorSFTTrainer(cfg, rows).train()


def test_padding_free_batches_train_like_padded_ones(tmp_path):
    """Padding-free batches (one row, restarting position_ids, SDPA attention) give the padded batch's
    loss: no conversation attends to another. Same rows, same order, float32 both."""
    rows = junior_conversations(6)
    lengths = {len(str(r["messages"])) for r in rows}
    assert len(lengths) > 1  # padding happens in the padded arm
    padded = _one_step(tmp_path, rows, "padded", padding_free=False)
    free = _one_step(tmp_path, rows, "free")
    assert (padded.padding_free, free.padding_free) == (False, True)
    assert padded.precision == free.precision == "fp32"
    assert padded.num_tokens == free.num_tokens and free.num_tokens[-1][1] > 0  # the same conversations per step
    (_, p1), (_, p2) = padded.losses
    (_, f1), (_, f2) = free.losses
    assert f1 == pytest.approx(p1, rel=1e-4), (padded.losses, free.losses)  # step 1: the untouched base model
    assert f2 == pytest.approx(p2, rel=1e-3), (padded.losses, free.losses)  # after one identical update


def test_padding_free_leaves_out_conversations_longer_than_max_length(tmp_path):
    rows = junior_conversations(4)
    long = dict(rows[0], messages=rows[0]["messages"][:-1] + [
        {"role": "assistant", "content": "```sql\n" + " UNION ALL ".join(["SELECT 1"] * 200) + "\n```"}])
    cfg = JuniorSFTConfig(model=SMOL, output_dir=str(tmp_path / "a"), max_steps=1, per_device_train_batch_size=2,
                          max_length=512, trl_args={"bf16": False})
    res = JuniorSFTTrainer(cfg, [long, *rows[1:]]).train()
    assert (res.rows, res.rows_over_max_length) == (4, 1)
    assert json.loads(res.metrics_path.read_text())["rows_over_max_length"] == 1
    with pytest.raises(ValueError, match="all 1 conversations are longer than max_length = 512"):
        JuniorSFTTrainer(JuniorSFTConfig(model=SMOL, output_dir=str(tmp_path / "b"), max_steps=1, max_length=512),
                         [long]).train()


def test_head_on_loss_tokens_only_trains_like_the_head_on_every_token(tmp_path):
    """Scoring the LM head on the loss positions only (TRL's compact branch, on the CPU too) changes
    no loss; TRL's own switch is back in place after training."""
    import torch
    from trl.trainer import utils as trl_utils

    rows = junior_conversations(6)
    every = _one_step(tmp_path, rows, "every", head_on_loss_tokens_only=False)
    compact = _one_step(tmp_path, rows, "compact")
    assert (every.head_on_loss_tokens_only, compact.head_on_loss_tokens_only) == (False, True)
    assert every.num_tokens == compact.num_tokens
    (_, e1), (_, e2) = every.losses
    (_, c1), (_, c2) = compact.losses
    assert c1 == pytest.approx(e1, rel=1e-4), (every.losses, compact.losses)  # step 1: the untouched base model
    assert c2 == pytest.approx(e2, rel=1e-3), (every.losses, compact.losses)  # after one identical update
    assert trl_utils._use_triton(torch.device("cpu")) is False
