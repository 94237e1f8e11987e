"""What serving a trained LoRA adapter costs on the CPU, and how faithful each route is.

Routes, all on the same junior prompts (society junior prompt + real schema + Spider dev question):

* ``gguf``        the production GGUF alone on the llama.cpp server (no adapter): the baseline;
* ``gguf+lora``   the production GGUF + the adapter as a GGUF LoRA (``training.export``);
* ``f32+lora``    the dequantised F32 GGUF + the GGUF LoRA (exactly transformers' weights);
* ``hf merged``   the adapter merged into the float32 HF model, greedy ``generate`` in process
  (the compute of the ``transformers serve`` fallback route, without its HTTP overhead).

For each: completion tokens per second (greedy, ``--max-tokens`` per prompt, requests one at a
time, after one warm-up request), and how many prompts give exactly transformers + PEFT's greedy
continuation. The adapter is ``--adapter DIR`` or, without it, a fresh 8-step SFT adapter trained
on Spider train conversations. Prints a Markdown table and the 1-min load average (other
processes on the box slow every route alike). Usage::

    python bench/lora_serving.py [--model smollm2-135m] [--adapter DIR] [--prompts 6] [--max-tokens 48]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import typer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from society.prompts import PROMPTS  # noqa: E402
from tools.schema import schema_prompt  # noqa: E402
from tools.spider import load_examples  # noqa: E402
from training.adapter_serving import greedy_completion, serve_adapter  # noqa: E402
from training.checkpoints import dequantized_gguf, load_for_training, resolve_gguf  # noqa: E402
from training.sft import torch_threads  # noqa: E402


def junior_prompt(e) -> list[dict]:
    msgs = PROMPTS["junior_direct"].render(
        question=e.question, schema=schema_prompt(e.db_path, compact=True, sample_rows=0), feedback=""
    )
    return [{"role": "system" if m.type == "system" else "user", "content": str(m.content)} for m in msgs]


def train_adapter(model: str, out: Path) -> Path:
    from datasets import Dataset

    from training.sft import JuniorSFTConfig, JuniorSFTTrainer

    rows = []
    for e in load_examples(split="train", limit=16):
        rows.append({"messages": junior_prompt(e) + [{"role": "assistant", "content": f"```sql\n{e.gold_sql}\n```"}]})
    res = JuniorSFTTrainer(
        JuniorSFTConfig(model=model, output_dir=str(out), max_steps=8, per_device_train_batch_size=2, max_length=768),
        Dataset.from_list(rows),
    ).train()
    print(f"trained a fresh adapter: {res.steps} steps, {res.mean_step_seconds:.1f} s/step, loss "
          f"{res.losses[0][1]:.2f} -> {res.losses[-1][1]:.2f}")
    return res.adapter_dir


def run_server(adapter: Path | None, base: Path, texts: list[str], max_tokens: int) -> tuple[list[str], float, int]:
    from society.llama_server import LlamaServer

    srv = (
        serve_adapter(adapter, base, model_alias="bench", n_ctx=4096)
        if adapter
        else LlamaServer(base, model_alias="bench", n_ctx=4096)
    )
    with srv:
        greedy_completion(srv, texts[0], 4)  # warm-up
        outs, toks = [], 0
        t0 = time.perf_counter()
        for t in texts:
            s, k = greedy_completion(srv, t, max_tokens, adapter="bench" if adapter else None)
            outs.append(s)
            toks += k
        return outs, time.perf_counter() - t0, toks


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    model_alias: str = typer.Option("smollm2-135m", "--model"),
    adapter_dir: str | None = typer.Option(None, "--adapter",
                                           help="PEFT adapter dir trained on --model (default: train one)"),
    prompts: int = typer.Option(6, "--prompts"),
    max_tokens: int = typer.Option(48, "--max-tokens"),
) -> None:
    import torch
    from peft import PeftModel

    adapter = (
        Path(adapter_dir) if adapter_dir else train_adapter(model_alias, Path(tempfile.mkdtemp(prefix="lora-bench-")))
    )
    examples = load_examples(split="dev", limit=prompts)
    model, tok = load_for_training(model_alias)
    texts = [tok.apply_chat_template(junior_prompt(e), add_generation_prompt=True, tokenize=False) for e in examples]

    torch.set_num_threads(torch_threads())
    pm = PeftModel.from_pretrained(model, str(adapter)).eval()
    ref = []
    for t in texts:
        ids = tok(t, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = pm.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        ref.append(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True))
    merged = pm.merge_and_unload().eval()
    t0 = time.perf_counter()
    hf_out, hf_tok = [], 0
    for t in texts:
        ids = tok(t, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = merged.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        new = out[0][ids["input_ids"].shape[1]:]
        hf_tok += int(new.shape[0])
        hf_out.append(tok.decode(new, skip_special_tokens=True))
    hf_s = time.perf_counter() - t0

    q = resolve_gguf(model_alias)
    rows = []
    for name, base, ad in (
        ("gguf", q, None),
        ("gguf+lora", q, adapter),
        ("f32+lora", dequantized_gguf(model_alias), adapter),
    ):
        outs, secs, toks = run_server(ad, base, texts, max_tokens)
        same = sum(a == b for a, b in zip(outs, ref)) if ad else None
        rows.append((name, toks, secs, same))
    rows.append(("hf merged", hf_tok, hf_s, sum(a == b for a, b in zip(hf_out, ref))))

    print(f"\nmodel {model_alias} ({q.name}), {len(texts)} junior prompts, <= {max_tokens} new tokens each, "
          f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}\n")
    print("| route | tokens | seconds | tokens/s | = transformers+PEFT greedy |")
    print("|---|---:|---:|---:|---|")
    for name, toks, secs, same in rows:
        eq = "-" if same is None else f"{same}/{len(texts)}"
        print(f"| {name} | {toks} | {secs:.1f} | {toks / secs:.1f} | {eq} |")


if __name__ == "__main__":
    app()
