"""Rollouts from the policy being trained: ``training.grpo_verl.ServedPolicyGuard`` and
``refuse_adapter_rollouts`` on the CPU.

What is real here: a small causal language model (transformers' ``Qwen2ForCausalLM``, 2 layers, hidden
size 32, vocabulary 64, random weights from a fixed seed) trained by real AdamW steps on a real loss
(the negative log-likelihood of a fixed token sequence), a real PEFT LoRA adapter on it, and a "served"
copy of the model whose weights change only through the sync under test, probed by its own forward pass
(the log-probs of a fixed prompt, as ``openai_prompt_logprobs`` reads them from vLLM).

What stands in, because it needs a GPU and Ray: verl's weight sync and vLLM's server. The two syncs
below do what verl 0.6.1's does in each case, read from its source: with full parameters the actor's
state dict is loaded into the serving engine's weights (``fsdp_workers.rollout_mode`` ->
``update_weights``); with LoRA only the adapter goes to the engine (``add_lora``), while Agent
Lightning's OpenAI requests name the base model and so are answered by the base weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from training.grpo import DEFAULT_VERL_CONFIG
from training.grpo_verl import (
    PolicyNotSyncedError,
    ServedPolicyGuard,
    load_verl_config,
    logprob_shift,
    refuse_adapter_rollouts,
)

PROMPT = torch.tensor([[3, 17, 5, 42, 8, 23, 11, 60, 2, 9]])  # the fixed probe prompt, as token ids
TARGET = torch.tensor([[7, 7, 31, 12, 50, 4, 19, 33, 6, 1]])  # what the "rewarded" rollouts say


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


def prompt_logprobs(model: torch.nn.Module) -> list[float]:
    """Log-probs of PROMPT's tokens after the first under ``model`` (what vLLM's echo gives)."""
    with torch.no_grad():
        logits = model(input_ids=PROMPT).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, PROMPT[0, 1:, None])[:, 0].tolist()


def update(model: torch.nn.Module, lr: float = 1e-3) -> None:
    """One real AdamW step on the trainable parameters (raising TARGET's likelihood)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    loss = model(input_ids=TARGET, labels=TARGET).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()


def run(actor: torch.nn.Module, served: torch.nn.Module, sync, steps: int = 3) -> ServedPolicyGuard:
    """Agent Lightning's loop as the guard sees it: a validation sync, then per step a sync
    (``wake_up``), rollouts, an update."""
    guard = ServedPolicyGuard(lambda: prompt_logprobs(served))
    wake_up = guard.wrap(sync)
    wake_up()  # _validate before training: a reference, nothing trained yet
    for _ in range(steps):
        wake_up()
        update(actor)
        guard.note_update()
    wake_up()  # the next step's (or the final validation's) sync
    return guard


def full_parameter_sync(actor: torch.nn.Module, served: torch.nn.Module):
    def sync() -> None:
        served.load_state_dict(actor.state_dict())

    return sync


def test_full_parameter_sync_passes_and_the_served_policy_follows_the_actor():
    actor = tiny_model()
    served = copy.deepcopy(actor)
    guard = run(actor, served, full_parameter_sync(actor, served))
    assert len(guard.shifts) == 3 and all(s > 0 for s in guard.shifts)
    assert logprob_shift(prompt_logprobs(served), prompt_logprobs(actor)) == 0.0  # serving the trained weights


def test_lora_adapter_beside_the_served_base_is_refused():
    """verl 0.6.1 with lora_rank > 0 under Agent Lightning: the adapter trains (for real, PEFT), the
    engine receives it, and the requests naming the base model are answered by the base weights."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model()
    served = copy.deepcopy(base)
    actor = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    engine_loras: dict[str, dict[str, torch.Tensor]] = {}

    def sync() -> None:  # add_lora: the adapter reaches the engine, not the base model the requests name
        engine_loras["1"] = {k: v.detach().clone() for k, v in actor.state_dict().items() if "lora_" in k}

    with pytest.raises(PolicyNotSyncedError, match="not sampled from the weights being trained"):
        run(actor, served, sync)
    assert engine_loras["1"]  # the adapter did train and did reach the engine
    before = prompt_logprobs(base)
    assert logprob_shift(before, prompt_logprobs(actor)) > 0  # the adapter changes the policy ...
    assert logprob_shift(before, prompt_logprobs(served)) == 0.0  # ... that the rollouts never see


def test_a_dropped_full_parameter_sync_is_refused():
    actor = tiny_model()
    served = copy.deepcopy(actor)
    with pytest.raises(PolicyNotSyncedError, match=r"after 1 update\(s\)"):
        run(actor, served, lambda: None)


def test_syncs_without_an_update_between_only_set_the_reference():
    model = tiny_model()
    guard = ServedPolicyGuard(lambda: prompt_logprobs(model))
    for _ in range(3):
        assert guard.after_sync() is None  # validation-only syncs: identical log-probs are expected
    assert guard.shifts == []


def test_min_shift_is_a_floor_in_nats():
    actor = tiny_model()
    served = copy.deepcopy(actor)
    guard = ServedPolicyGuard(lambda: prompt_logprobs(served), min_shift=100.0)
    guard.after_sync()
    update(actor)
    guard.note_update()
    served.load_state_dict(actor.state_dict())
    with pytest.raises(PolicyNotSyncedError):
        guard.after_sync()
    with pytest.raises(ValueError, match="min_shift"):
        ServedPolicyGuard(lambda: [0.0], min_shift=-1)


def test_probes_of_different_prompts_are_an_error():
    with pytest.raises(ValueError, match="not the same prompt"):
        logprob_shift([-1.0, -2.0], [-1.0])


def test_the_shipped_verl_config_trains_all_parameters_and_lora_is_refused():
    cfg = load_verl_config(DEFAULT_VERL_CONFIG, model_path="/models/senior")
    assert cfg["actor_rollout_ref"]["model"]["lora_rank"] == 0
    refuse_adapter_rollouts(cfg)  # passes
    for model in ({"lora_rank": 32}, {"lora_adapter_path": "/adapters/senior"}):
        bad = load_verl_config(DEFAULT_VERL_CONFIG, model_path="/models/senior",
                               overrides={"actor_rollout_ref": {"model": model}})
        with pytest.raises(ValueError, match="rollouts would come from the base weights"):
            refuse_adapter_rollouts(bad)


def test_the_trained_senior_is_the_newest_step_with_weights(tmp_path):
    """verl 0.6's checkpoint layout: ``global_step_N/actor/huggingface`` always holds the config and
    tokenizer; the weights only with ``save_contents: [..., hf_model]``. Real files written by
    transformers' ``save_pretrained`` of the tiny model."""
    from training.grpo_verl import verl_trained_model

    with pytest.raises(FileNotFoundError, match="no global_step"):
        verl_trained_model(tmp_path)
    model = tiny_model()
    for step, weights in ((2, True), (10, True), (12, False)):  # step 12: config only (no hf_model)
        d = tmp_path / f"global_step_{step}" / "actor" / "huggingface"
        d.mkdir(parents=True)
        if weights:
            model.save_pretrained(d)
        else:
            model.config.save_pretrained(d)
    assert verl_trained_model(tmp_path) == tmp_path / "global_step_10" / "actor" / "huggingface"  # 10 > 2 numerically
    for step in (2, 10):
        for f in (tmp_path / f"global_step_{step}" / "actor" / "huggingface").glob("*.safetensors"):
            f.unlink()
    with pytest.raises(FileNotFoundError, match="save_contents including hf_model"):
        verl_trained_model(tmp_path)
