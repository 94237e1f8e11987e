"""Junior SFT speed on this machine: the 2026-11-29 settings against the trainer's defaults, side by side.

Both arms train a fresh LoRA on the same conversations, in the same order (same seed, one pass,
``--steps`` optimizer steps of the profile's batch), with the same torch threads, one after the
other in this process:

* ``baseline``: the settings of the 2026-11-29 default run: float32, batches padded to their
  longest conversation, the LM head scored at every position (``head_on_loss_tokens_only: false``,
  ``bf16: false``, ``padding_free: false``);
* ``fast``: :class:`training.sft.JuniorSFTTrainer`'s defaults: bf16 where the CPU has native bf16
  (:func:`training.sft.bf16_support`), padding-free batches, the head scored at the loss positions
  only (:func:`training.sft.head_on_loss_tokens`); both with completion-only loss.

The conversations are what phase 2 trains on: ``--dataset`` (a run's
``phases/2-sft/sft_dataset.jsonl``), or, without it, Spider train questions drawn across all
databases (``tools.sampling.sample_examples``) in the direct junior's own prompt (``society.prompts``,
the compact schema the society sends) answered with the gold SQL in a ```sql block; conversations
longer than the profile's ``max_length`` are skipped so both arms train exactly the same tokens.

Printed per arm: seconds per step (mean, and without the first step), tokens/s (prompt and
completion tokens, no padding, as TRL counts them), the loss at every step (as each arm computes
it: the bf16 arm's forward is bf16), the loss of ``--heldout`` conversations not trained on under
each trained adapter, all in one float32 forward (the comparison of what each arm learnt, free of
the precision each trained in), and the machine's limit
beside it: the step's FLOPs over the matmul throughput measured here (float32 and bf16, at the
same threads, on a ``[tokens, hidden] x [hidden, intermediate]`` product of the model's own
shapes). The FLOPs of a LoRA step with a frozen base (Kaplan et al. 2020, "Scaling Laws for Neural
Language Models", arXiv 2001.08361, section 2.1: forward ``2N`` per token plus ``2 n_layer n_ctx
d_attn`` for attention, backward twice the forward; full fine-tuning is ``6N``): the frozen weights
need the gradient of their input (``2N``) but not their own (``2N``), so ``4 N_layers`` per token
for the decoder's linear layers, ``6 N_lora`` for the adapter, ``3 x 2 n_layer L^2 d_attn`` per
conversation of ``L`` tokens for causal attention (``QK^T`` and ``AV`` at position ``i``: ``4 i
d_attn`` per layer), and the LM head only where the loss is taken (completion tokens): ``4 V
d_model`` each. The baseline arm scores the head on every position and recomputes its forward in
the backward (TRL's ``trl.kernels.chunked_logprob`` off CUDA), ``6 V d_model`` per token: that
count is printed too ("as computed"). The limit leaves out what is not a matmul (norms, softmax
statistics over the vocabulary, the optimizer), so no arm reaches it.

Usage::

    python bench/sft.py [--profile default] [--model ALIAS] [--steps 4] [--dataset JSONL]
                        [--threads N] [--out bench/results/sft-YYYY-MM-DD.json]

A benchmark, not a test (``tests/test_bench_sft.py`` runs it on SmolLM2 for 2 steps): on the
default model a baseline step of two conversations takes 15-35 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/society.py shadows the package
sys.path.insert(0, str(_HERE.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from society.prompts import PROMPTS  # noqa: E402
from tools.sampling import sample_examples  # noqa: E402
from tools.schema import schema_prompt  # noqa: E402
from tools.spider import load_examples  # noqa: E402
from training.profile import TrainConfig, TrainConfigError  # noqa: E402
from training.sft import JuniorSFTConfig, JuniorSFTTrainer, bf16_support, split_conversation  # noqa: E402
from training.threads import torch_threads  # noqa: E402

#: The arms: name -> settings over the profile's ``sft`` section (the baseline undoes the trainer's new
#: defaults: TRL's ``bf16`` and ``padding_free`` off).
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"head_on_loss_tokens_only": False, "bf16": False, "padding_free": False},
    "fast": {},
}


def spider_conversations(n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` direct-junior conversations on Spider train questions drawn across all databases,
    each answered with its gold SQL (the format phase 2 trains on)."""
    train = load_examples(split="train")
    rows = []
    for e in sample_examples(train, min(len(train), 4 * n), seed=seed):
        schema = schema_prompt(e.db_path, compact=True, sample_rows=0)
        msgs = PROMPTS["junior_direct"].render(question=e.question, schema=schema, feedback="")
        conv = [{"role": "system" if m.type == "system" else "user", "content": str(m.content)} for m in msgs]
        rows.append({"messages": conv + [{"role": "assistant", "content": f"```sql\n{e.gold_sql}\n```"}],
                     "task_id": e.id})
    return rows


def read_dataset(path: Path) -> list[dict[str, Any]]:
    """The rows of a phase-2 ``sft_dataset.jsonl`` (``messages`` per line)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows or "messages" not in rows[0]:
        raise SystemExit(f"{path}: expected JSON lines with a 'messages' column "
                         "(a run's phases/2-sft/sft_dataset.jsonl)")
    return rows


def token_counts(tok: Any, messages: list[dict[str, str]]) -> tuple[int, int]:
    """(all tokens, completion tokens) of one conversation under the chat template, as TRL splits it
    (prompt with the generation prompt, then the prompt and completion)."""
    split = split_conversation(messages)
    prompt = tok.apply_chat_template(split["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
    full = tok.apply_chat_template(split["prompt"] + split["completion"], tokenize=True, return_dict=True)
    return len(full["input_ids"]), len(full["input_ids"]) - len(prompt["input_ids"])


def matmul_gflops(dtype: Any, m: int, k: int, n: int, threads: int, seconds: float) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` on ``threads`` torch threads: the best of repeated
    timed products for ``seconds`` after two warm-ups (2 m k n FLOPs each)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        for _ in range(2):
            a @ b
        best, t_end = math.inf, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    return 2 * m * k * n / best / 1e9


def model_shapes(model_name: str) -> dict[str, int]:
    """From the HF checkpoint's config and weights: decoder linear parameters, vocabulary, widths, layers."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from training.checkpoints import hf_checkpoint

    d = hf_checkpoint(model_name)
    c = AutoConfig.from_pretrained(str(d))
    linear = 0
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            if ".layers." in name and name.endswith(".weight") and len(shape) == 2:
                linear += shape[0] * shape[1]
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {"linear_params": linear, "vocab": c.vocab_size, "d_model": c.hidden_size, "n_layer": c.num_hidden_layers,
            "d_attn": c.num_attention_heads * head_dim, "d_ff": c.intermediate_size}


def lora_params(shapes: dict[str, int], model_name: str, r: int, targets: tuple[str, ...]) -> int:
    """Parameters of a rank-``r`` LoRA on ``targets``: ``r (in + out)`` per adapted matrix."""
    from safetensors import safe_open

    from training.checkpoints import hf_checkpoint

    total = 0
    with safe_open(str(hf_checkpoint(model_name) / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            shape = f.get_slice(name).get_shape()
            if ".layers." in name and name.endswith(".weight") and len(shape) == 2 and name.split(".")[-2] in targets:
                total += r * (shape[0] + shape[1])
    return total


def flops(shapes: dict[str, int], lengths: list[int], completion: list[int], n_lora: int) -> dict[str, float]:
    """FLOPs of training on conversations of ``lengths`` tokens (``completion`` of them with a loss),
    LoRA on a frozen base (see the module docstring): ``needed`` (head on the loss positions only) and
    ``as_computed`` (head on every position, forward recomputed: TRL's chunked head on the CPU)."""
    tokens = sum(lengths)
    body = 4 * shapes["linear_params"] * tokens + 6 * n_lora * tokens
    attn = 6 * shapes["n_layer"] * shapes["d_attn"] * sum(L * L for L in lengths)
    vh = shapes["vocab"] * shapes["d_model"]
    return {"needed": body + attn + 4 * vh * sum(completion), "as_computed": body + attn + 6 * vh * tokens}


def run_arm(name: str, sft: dict[str, Any], model: str, rows: list[dict[str, Any]], steps: int, threads: int,
            out: Path) -> dict[str, Any]:
    arm = ARMS[name]
    cfg = JuniorSFTConfig(**{**sft, **arm, "model": model, "output_dir": str(out / name), "max_steps": steps,
                             "num_threads": threads, "logging_steps": 1})
    load0 = os.getloadavg()[0]
    res = JuniorSFTTrainer(cfg, rows).train()
    later = res.step_seconds[1:] or res.step_seconds
    return {
        "arm": name, "precision": res.precision, "precision_reason": res.precision_reason,
        "padding_free": res.padding_free, "head_on_loss_tokens_only": res.head_on_loss_tokens_only,
        "threads": res.threads, "steps": res.steps, "rows": res.rows - res.rows_over_max_length,
        "rows_over_max_length": res.rows_over_max_length,
        "train_seconds": res.train_seconds, "step_seconds": res.step_seconds,
        "mean_step_seconds": res.mean_step_seconds, "mean_step_seconds_after_first": statistics.fmean(later),
        "tokens": res.num_tokens[-1][1] if res.num_tokens else 0, "num_tokens": res.num_tokens,
        "tokens_per_second": res.tokens_per_second, "losses": res.losses,
        "load_avg_before": round(load0, 2), "load_avg_after": round(os.getloadavg()[0], 2),
    }


def heldout_loss(model_name: str, adapter: Path | None, convs: list[dict[str, Any]], tok: Any,
                 threads: int) -> float:
    """Mean negative log-likelihood per completion token (nats) of ``convs`` under the float32 base
    model plus ``adapter`` (None: the untrained base): transformers' own causal-LM loss with the
    prompt tokens masked, the same for every arm whatever precision it trained in."""
    import torch
    from peft import PeftModel

    from training.checkpoints import load_for_training

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    model, _ = load_for_training(model_name)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    nll, count = 0.0, 0
    try:
        for r in convs:
            split = split_conversation(r["messages"])
            prompt = tok.apply_chat_template(split["prompt"], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
            ids = tok.apply_chat_template(split["prompt"] + split["completion"], tokenize=True,
                                          return_dict=True)["input_ids"]
            labels = [-100] * len(prompt) + ids[len(prompt):]
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            n = len(ids) - len(prompt)
            nll += float(loss) * n
            count += n
    finally:
        torch.set_num_threads(prev)
    return nll / count


def batches(arm: dict[str, Any]) -> str:
    head = "head on loss tokens" if arm["head_on_loss_tokens_only"] else "head on all tokens"
    return ("padding-free" if arm["padding_free"] else "padded") + ", " + head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default", help="training profile whose sft section is used")
    ap.add_argument("--model", default=None, help="model alias (default: the profile's base_model)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per arm (default 4)")
    ap.add_argument("--dataset", type=Path, default=None, help="a run's phases/2-sft/sft_dataset.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="question draw (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores now)")
    ap.add_argument("--heldout", type=int, default=8,
                    help="conversations not trained on, scored in float32 after each arm (default 8; 0: none)")
    ap.add_argument("--matmul-seconds", type=float, default=3.0, help="timing of each matmul rate (default 3)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    if a.steps < 1 or a.heldout < 0:
        ap.error("--steps must be >= 1 and --heldout >= 0")
    if a.dataset is not None and not a.dataset.is_file():
        ap.error(f"--dataset {a.dataset} is not a file; give a run's phases/2-sft/sft_dataset.jsonl")

    from transformers import AutoTokenizer

    from training.checkpoints import hf_checkpoint

    try:
        profile = TrainConfig.load(a.profile)
    except TrainConfigError as e:
        ap.error(f"--profile: {e}")
    model = a.model or profile.base_model
    sft = {k: v for k, v in profile.sft.settings(given_only=True).items()
           if k not in ("max_steps", "output_dir", "num_threads", "model")}
    base = JuniorSFTConfig(**sft)
    batch = base.per_device_train_batch_size * base.gradient_accumulation_steps
    need = a.steps * batch
    tok = AutoTokenizer.from_pretrained(str(hf_checkpoint(model)))
    pool = read_dataset(a.dataset) if a.dataset else spider_conversations(need + a.heldout, a.seed)
    rows, lengths, completion, skipped, heldout = [], [], [], 0, []
    for r in pool:
        n, c = token_counts(tok, r["messages"])
        if n > base.max_length:
            skipped += 1
            continue
        if len(rows) == need:
            heldout.append({"messages": r["messages"]})
            if len(heldout) == a.heldout:
                break
            continue
        rows.append({"messages": r["messages"]})
        lengths.append(n)
        completion.append(c)
        if len(rows) == need and not a.heldout:
            break
    if len(rows) < need:
        raise SystemExit(f"only {len(rows)} conversations of <= {base.max_length} tokens; {need} needed "
                         f"({a.steps} steps x {batch}); lower --steps or give a larger --dataset")
    threads = torch_threads(a.threads)
    source = str(a.dataset) if a.dataset else f"Spider train, junior_direct prompt + gold SQL, seed {a.seed}"
    print(f"model {model}; profile {a.profile}: batch {batch}, max_length {base.max_length}, lora r {base.lora_r}; "
          f"{need} conversations ({source}; {skipped} longer than max_length skipped): {sum(lengths)} tokens, "
          f"{sum(completion)} of them completion, {min(lengths)}-{max(lengths)} per conversation; "
          f"{threads} torch threads, {os.cpu_count()} cores", flush=True)

    import torch

    shapes = model_shapes(model)
    n_lora = lora_params(shapes, model, base.lora_r, base.target_modules)
    rates = {str(dt).removeprefix("torch."): matmul_gflops(dt, 512, shapes["d_model"], shapes["d_ff"], threads,
                                                           a.matmul_seconds)
             for dt in (torch.float32, torch.bfloat16)}
    bf16_ok, bf16_why = bf16_support()
    print(f"matmul [512 x {shapes['d_model']}] @ [{shapes['d_model']} x {shapes['d_ff']}] on {threads} threads: "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()) + f"; bf16 used: {bf16_ok} ({bf16_why})",
          flush=True)

    arms = []
    untrained = None
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        for name in ARMS:
            print(f"training arm {name} ...", flush=True)
            arms.append(run_arm(name, sft, model, rows, a.steps, threads, Path(tmp)))
            r = arms[-1]
            print(f"  {r['precision']}, {batches(r)}: {r['train_seconds']:.1f} s, "
                  f"{r['mean_step_seconds']:.2f} s/step, {r['tokens_per_second']:.1f} tokens/s", flush=True)
        if heldout:
            untrained = heldout_loss(model, None, heldout, tok, threads)
            for r in arms:
                r["heldout_loss"] = heldout_loss(model, Path(tmp) / r["arm"], heldout, tok, threads)

    f = flops(shapes, lengths, completion, n_lora)
    best = rates["bfloat16"] if bf16_ok else rates["float32"]
    limit_s = f["needed"] / (best * 1e9)
    limit = {"flops_needed": f["needed"], "flops_as_computed": f["as_computed"], "matmul_gflops": rates,
             "rate_used": "bfloat16" if bf16_ok else "float32", "seconds": limit_s,
             "seconds_per_step": limit_s / a.steps, "tokens_per_second": sum(lengths) / limit_s,
             "as_computed_seconds_fp32": f["as_computed"] / (rates["float32"] * 1e9),
             "as_computed_seconds_bf16": f["as_computed"] / (rates["bfloat16"] * 1e9)}
    same = arms[0]["num_tokens"] == arms[1]["num_tokens"] and arms[0]["tokens"] == sum(lengths)

    print(f"\n{a.steps} steps x {batch} conversations per arm, {sum(lengths)} tokens; load average "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("| arm | precision | batches, LM head | s/step | s/step after the first | tokens/s | train s | of limit |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in arms:
        print(f"| {r['arm']} | {r['precision']} | {batches(r)} | {r['mean_step_seconds']:.2f} | "
              f"{r['mean_step_seconds_after_first']:.2f} | {r['tokens_per_second']:.1f} | {r['train_seconds']:.1f} | "
              f"{limit_s / r['train_seconds']:.0%} |")
    print(f"| limit | {limit['rate_used']} | - | {limit['seconds_per_step']:.2f} | - | "
          f"{limit['tokens_per_second']:.1f} | {limit_s:.1f} | 100% |")
    print(f"\nlimit = {f['needed'] / 1e12:.2f} TFLOP needed (LoRA on a frozen base, head on the {sum(completion)} "
          f"completion tokens) / {best:.0f} GFLOP/s ({limit['rate_used']} matmul); as TRL computes on the CPU "
          f"(head on every token, recomputed): {f['as_computed'] / 1e12:.2f} TFLOP = "
          f"{limit['as_computed_seconds_fp32']:.1f} s at the float32 rate, {limit['as_computed_seconds_bf16']:.1f} s "
          "at the bf16 rate")
    ratio = arms[1]["train_seconds"] / arms[0]["train_seconds"]
    print(f"fast / baseline time on the same {need} conversations: {ratio:.0%} (target <= 40 %)")
    print(f"same batches in both arms (tokens per step as TRL counted them): {same}")
    print("\nstep | loss baseline | loss fast | fast - baseline")
    for (s, l0), (_, l1) in zip(arms[0]["losses"], arms[1]["losses"]):
        print(f"{s:4d} | {l0:13.4f} | {l1:9.4f} | {l1 - l0:+.4f}")
    d = [l1 - l0 for (_, l0), (_, l1) in zip(arms[0]["losses"], arms[1]["losses"])]
    print(f"mean loss: baseline {statistics.fmean(x for _, x in arms[0]['losses']):.4f}, fast "
          f"{statistics.fmean(x for _, x in arms[1]['losses']):.4f}; mean difference {statistics.fmean(d):+.4f}, "
          f"largest |difference| {max(abs(x) for x in d):.4f}")
    if heldout:
        n_c = sum(token_counts(tok, r["messages"])[1] for r in heldout)
        print(f"held-out loss (float32 forward, {len(heldout)} conversations not trained on, {n_c} completion "
              f"tokens, nats/token): untrained {untrained:.4f}, baseline {arms[0]['heldout_loss']:.4f}, "
              f"fast {arms[1]['heldout_loss']:.4f}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({
            "model": model, "profile": a.profile, "source": source, "steps": a.steps, "batch": batch,
            "max_length": base.max_length, "conversations": need, "skipped_over_max_length": skipped,
            "tokens": sum(lengths), "completion_tokens": sum(completion), "threads": threads,
            "cores": os.cpu_count(), "model_shapes": shapes, "lora_params": n_lora, "limit": limit,
            "arms": arms, "fast_over_baseline_time": ratio, "same_batches": same,
            "heldout_conversations": len(heldout), "heldout_loss_untrained": untrained,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
