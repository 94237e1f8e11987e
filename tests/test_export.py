"""GGUF <-> HF bridge: the dequantised checkpoint, the GGUF LoRA format, and serving equality.

The served-equality test runs the real llama.cpp server (llama-server) with the real SmolLM2 weights
(dequantised to an F32 GGUF so llama.cpp and transformers compute on the same numbers) and a
LoRA adapter with random A *and* B (PEFT ``init_lora_weights=False``), which changes the model's
greedy output completely -- so a wrong tensor name, transposition, rotary permutation or scale in
the export makes the test fail. Greedy tokens must be identical.

A second adapter uses rsLoRA and a per-module ``alpha_pattern`` (the scale folding). Its effect on
the logits is so large that the model emits near-ties, where float32 summation order alone can
flip an argmax, so it is compared on log-probabilities: the server's top 10 at each greedy step
(F32 KV cache, flash attention off: it reorders the sums, 0.3 % measured) against
transformers+PEFT on the same tokens, error < 0.2 % of the adapter's own effect (a wrong scale or layout
gives errors of the order of the effect).
"""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from training.adapter_serving import check_served_equals_peft
from training.checkpoints import (
    ExportError,
    dequantized_gguf,
    gguf_architecture,
    hf_checkpoint,
    load_for_training,
    resolve_gguf,
)
from training.export import _permute_rows, export_lora_gguf

SMOL = "smollm2-135m"
PROMPTS = [
    "List the names of all singers.",
    "How many concerts were held in 2014?",
    "Write one SQLite query that counts the rows of table stadium.",
]
N_TOKENS = 12


@pytest.fixture(scope="module")
def smol() -> tuple:
    return load_for_training(SMOL)


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, smol) -> tuple:
    return _make_adapter(tmp_path_factory.mktemp("rand_lora"), smol[0])


@pytest.fixture(scope="module")
def rs_adapter(tmp_path_factory, smol) -> tuple:
    return _make_adapter(tmp_path_factory.mktemp("rs_lora"), smol[0], use_rslora=True, alpha_pattern={"down_proj": 8})


def _make_adapter(d, model, b_scale: float = 1.0, **extra) -> tuple:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
        **extra,
    )
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    pm.save_pretrained(str(d))
    pm.unload()  # give the base model back unmodified to other tests
    return d, cfg


def test_hf_checkpoint_is_the_gguf_dequantised():
    """Every HF weight equals the GGUF tensor (dequantised with the gguf library), q/k rows in
    llama.cpp's rotary order: this pins the permutation rule the exporter relies on."""
    d = hf_checkpoint(SMOL)
    assert hf_checkpoint(SMOL) == d  # cached
    assert gguf_architecture(resolve_gguf(SMOL)) == "llama"
    sd = load_file(str(d / "model.safetensors"))
    reader = gguf.GGUFReader(str(resolve_gguf(SMOL)))
    t = {x.name: x for x in reader.tensors}

    def deq(name: str) -> np.ndarray:
        return gguf.quants.dequantize(t[name].data, t[name].tensor_type)

    for layer in (0, 17):
        q = sd[f"model.layers.{layer}.self_attn.q_proj.weight"].numpy()
        k = sd[f"model.layers.{layer}.self_attn.k_proj.weight"].numpy()
        assert np.array_equal(_permute_rows(q, 9), deq(f"blk.{layer}.attn_q.weight"))
        assert np.array_equal(_permute_rows(k, 3), deq(f"blk.{layer}.attn_k.weight"))
        assert not np.array_equal(q, deq(f"blk.{layer}.attn_q.weight"))  # the permutation matters
        assert np.array_equal(
            sd[f"model.layers.{layer}.mlp.down_proj.weight"].numpy(), deq(f"blk.{layer}.ffn_down.weight")
        )


def test_dequantized_gguf_keeps_metadata_and_values():
    f32 = dequantized_gguf(SMOL)
    r = gguf.GGUFReader(str(f32))
    src = gguf.GGUFReader(str(resolve_gguf(SMOL)))
    assert r.fields["tokenizer.chat_template"].contents() == src.fields["tokenizer.chat_template"].contents()
    assert r.fields["llama.attention.head_count_kv"].contents() == 3
    tensors = {x.name: x for x in r.tensors}
    s = {x.name: x for x in src.tensors}
    assert set(tensors) == set(s)
    name = "blk.5.ffn_up.weight"
    assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(np.asarray(tensors[name].data), gguf.quants.dequantize(s[name].data, s[name].tensor_type))


def test_lora_gguf_layout(random_adapter):
    adir, cfg = random_adapter
    out = export_lora_gguf(adir, SMOL)
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == pytest.approx(16.0)
    assert r.fields["general.architecture"].contents() == "llama"
    base = {x.name: [int(v) for v in x.shape] for x in gguf.GGUFReader(str(resolve_gguf(SMOL))).tensors}
    names = {x.name: [int(v) for v in x.shape] for x in r.tensors}
    assert len(names) == 30 * 7 * 2
    for n, shape in names.items():
        w = n.rsplit(".", 1)[0]
        if n.endswith(".lora_a"):
            assert shape == [base[w][0], 8]  # ne = [in, r]
        else:
            assert shape == [8, base[w][1]]  # ne = [r, out]


@pytest.mark.model
def test_served_lora_equals_transformers_peft(random_adapter, smol):
    adir, _ = random_adapter
    convs = [[{"role": "user", "content": q}] for q in PROMPTS]
    check = check_served_equals_peft(adir, convs, base_model=SMOL, max_tokens=N_TOKENS, model_and_tokenizer=smol)
    assert check.adapter_changes_output  # the adapter really changes the model
    assert check.prompt_tokens_equal  # same prompt tokens on both sides
    assert check.served == check.peft


@pytest.mark.model
def test_scale_folding_logprobs(rs_adapter, smol):
    """rsLoRA + alpha_pattern: llama-server's log-probabilities (F32 base + GGUF LoRA, F32 KV cache,
    top 10 at each of 4 greedy positions) vs transformers + PEFT teacher-forced on the same tokens."""
    from peft import PeftModel

    from training.adapter_serving import serve_adapter

    adir, _ = rs_adapter
    model, tok = smol
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with serve_adapter(adir, dequantized_gguf(SMOL), model_alias="rs", n_ctx=256, kv_cache_type="f32",
                       n_threads=1, extra_args=("-fa", "off")) as srv:
        out = srv.post("/completion", {"prompt": ids[0].tolist(), "n_predict": 4, "temperature": 0, "n_probs": 10,
                                       "cache_prompt": False, "lora": srv.lora_field("rs")})
    steps = out["completion_probabilities"]
    gen = [s["id"] for s in steps]
    full = torch.tensor([ids[0].tolist() + gen])
    pm = PeftModel.from_pretrained(model, str(adir)).eval()
    with torch.no_grad():
        hf = torch.log_softmax(pm(input_ids=full).logits[0].double(), -1).numpy()
        with pm.disable_adapter():
            base = torch.log_softmax(pm(input_ids=full).logits[0].double(), -1).numpy()
    pm.unload()
    n = ids.shape[1]
    err, effect = 0.0, 0.0
    for k, step in enumerate(steps):
        pos = n - 1 + k
        effect = max(effect, float(np.abs(hf[pos] - base[pos]).max()))
        for top in step["top_logprobs"]:
            err = max(err, abs(hf[pos, top["id"]] - top["logprob"]))
    assert effect > 5.0  # the adapter matters
    assert err < 0.002 * effect, (err, effect)


def test_export_rejects_bad_adapters(tmp_path, random_adapter):
    adir, _ = random_adapter
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((adir / "adapter_config.json").read_text())
    tensors = load_file(str(adir / "adapter_model.safetensors"))
    tensors["base_model.model.lm_head.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="modules_to_save"):
        export_lora_gguf(bad, SMOL)
    with pytest.raises(ExportError, match="not a PEFT adapter"):
        export_lora_gguf(tmp_path, SMOL)
    with pytest.raises(FileNotFoundError):
        resolve_gguf(tmp_path / "missing.gguf")


def test_export_rejects_other_base(random_adapter):
    """An adapter trained on SmolLM2 does not fit the Qwen2.5 GGUF (shapes checked against the base)."""
    try:
        qwen = resolve_gguf("qwen2.5-coder-0.5b")
    except Exception as e:  # the data wheels are part of the install; skip only if absent
        pytest.skip(f"Qwen GGUF not installed: {e}")
    adir, _ = random_adapter
    with pytest.raises(ExportError, match="another base model"):
        export_lora_gguf(adir, qwen, adir / "wrong.gguf")


@pytest.mark.model
@pytest.mark.skipif(not os.environ.get("SQLSOCIETY_TEST_QWEN"), reason="opt-in (SQLSOCIETY_TEST_QWEN=1): converts the "
                    "0.5B model once (~2 min, 5 GB in ~/.cache/sqlsociety/hf)")
def test_qwen2_served_lora_equals_transformers_peft(tmp_path):
    """Qwen2 GGUFs keep q/k rows unpermuted (unlike llama): a strong random adapter on every
    projection, served on the F32 Qwen2.5-Coder-0.5B base, matches transformers+PEFT greedily."""
    qwen = "qwen2.5-coder-0.5b"
    mt = load_for_training(qwen)
    d, _ = _make_adapter(tmp_path, mt[0])
    convs = [[{"role": "user", "content": q}] for q in PROMPTS]
    check = check_served_equals_peft(d, convs, base_model=qwen, max_tokens=N_TOKENS, model_and_tokenizer=mt)
    assert check.adapter_changes_output and check.prompt_tokens_equal
    assert check.served == check.peft
