"""The senior's warm start on repair pairs, measured: how many GRPO prompts have a pass rate strictly
between 0 and 1 under the base senior and under the warm-started one.

On recorded train rollouts (an exported traces file, ``training.adapter.export_traces``, or a run's
``store.sqlite``), with the senior's model served by llama.cpp:

1. ``repairs``: ``HierarchicalTraceAdapter.select_repair`` -- every wrong query of the rollouts
   with a rewrite that matches gold by EX (the senior's logged reply, else ``--k`` fresh draws of
   the served senior, else ``--k`` draws with the gold SQL as a hint, hint removed);
2. ``base``: :func:`training.senior_reward.prefilter_prompts` on every repair prompt, ``--prefilter-k``
   draws each of the base senior (temperature 1, as GRPO samples);
3. ``sft``: :func:`training.grpo.warm_start_senior` (LoRA SFT, ``--sft-steps`` steps) on the pairs;
4. ``warm``: the prefilter again with the warm start's LoRA served on the same base.

Each stage's result is written to ``OUT`` and a rerun skips finished stages, so the work can be done
in pieces (``--stages``). Prints the pass-rate band before and after, with Wilson 95% intervals of
the share of prompts in it. GRPO itself is not run here (``tests/test_repair.py`` and the pipeline
run it from the warm start). The same prompts are in both prefilters; the draws use the same
seeds, so the only difference is the adapter.

Usage::

    python bench/senior_warm_start.py --traces tests/fixtures/society_traces.jsonl.gz \\
        --model qwen2.5-coder-0.5b --out runs/senior_warm_start --stages repairs,base
    python bench/senior_warm_start.py ... --stages sft,warm        # later, same --out
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.stats import wilson_ci  # noqa: E402
from training.adapter import HierarchicalTraceAdapter, load_traces  # noqa: E402
from training.grpo import SeniorGRPOConfig, warm_start_senior  # noqa: E402
from training.senior_reward import SeniorReward, openai_sampler, prefilter_prompts  # noqa: E402

STAGES = ("repairs", "base", "sft", "warm")
STOP = ("</sql>", "```\n\n")  # the default senior's stop strings (configs/society.yaml)


def _sampler(endpoint: Any, cfg: SeniorGRPOConfig) -> Any:
    return openai_sampler(endpoint, temperature=cfg.temperature, top_p=cfg.top_p,
                          max_tokens=cfg.max_completion_length, stop=cfg.stop, seed=cfg.seed)


def _band(pf: dict[str, Any]) -> str:
    lo, hi = wilson_ci(pf["n_pass_band"], pf["n_in"])
    return (f"{pf['n_pass_band']} of {pf['n_in']} ({100 * pf['n_pass_band'] / pf['n_in']:.1f}%, "
            f"95% CI {100 * lo:.1f}-{100 * hi:.1f}); never pass {pf['n_never_pass']}, always {pf['n_always_pass']}, "
            f"mean pass {pf['mean_pass']:.3f}, rewards differ {pf['n_kept']}")


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    traces: str = typer.Option(..., "--traces", help="traces file (.jsonl[.gz]) or a run's store.sqlite"),
    model: str = typer.Option("qwen2.5-coder-0.5b", "--model", help="the senior's embedded model"),
    out_dir: Path = typer.Option(Path("runs/senior_warm_start"), "--out"),
    stages_text: str = typer.Option(",".join(STAGES), "--stages", help=f"comma list of {STAGES}"),
    k: int = typer.Option(2, "--k", help="draws per case (unhinted, then hinted)"),
    prefilter_k: int = typer.Option(4, "--prefilter-k", help="draws per prompt in the prefilter"),
    sft_steps: int = typer.Option(8, "--sft-steps"),
    max_tokens: int = typer.Option(200, "--max-tokens", help="completion tokens (the senior's max_tokens)"),
    max_cases: int | None = typer.Option(None, "--max-cases"),
) -> None:
    stages = set(stages_text.split(","))
    out: Path = out_dir
    out.mkdir(parents=True, exist_ok=True)
    cfg = SeniorGRPOConfig(model=model, output_dir=str(out / "grpo"), stop=STOP,
                           max_completion_length=max_tokens,
                           warm_start={"max_steps": sft_steps, "max_length": 1536, "learning_rate": 2e-4},
                           warm_start_samples=k)
    reward = SeniorReward(stop=STOP)
    from datasets import Dataset, load_from_disk

    from society.serving import serve_embedded
    from training.adapter_serving import serve_adapter

    adapter = HierarchicalTraceAdapter()
    t0 = time.perf_counter()
    if "repairs" in stages and not (out / "repairs").is_dir():
        source: Any = traces
        if not str(traces).endswith(".sqlite"):
            source = [adapter.adapt(spans) for _, spans in load_traces(traces)]
        with serve_embedded(model, n_ctx=4096, parallel=4) as srv:
            sel = adapter.select_repair(source, sample=_sampler(srv.endpoint(), cfg), k=k, stop=STOP,
                                        max_cases=max_cases)
        sel.dataset.save_to_disk(str(out / "repairs" / "pairs"))
        sel.prompts.save_to_disk(str(out / "repairs" / "prompts"))
        (out / "repairs" / "summary.json").write_text(json.dumps(sel.summary, indent=1))
        print(f"repairs: {json.dumps(sel.summary)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    prompts = load_from_disk(str(out / "repairs" / "prompts")) if (out / "repairs").is_dir() else None
    if "base" in stages and prompts is not None and not (out / "prefilter_base.json").is_file():
        with serve_embedded(model, n_ctx=4096, parallel=4) as srv:
            pf = prefilter_prompts(prompts, _sampler(srv.endpoint(), cfg), reward, prefilter_k)
        (out / "prefilter_base.json").write_text(json.dumps({**pf.to_json(), "pass_rates": pf.pass_rates}))
        print(f"base: {pf.to_json()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if "sft" in stages and (out / "repairs").is_dir() and not (out / "warm" / "adapter_model.safetensors").is_file():
        pairs: Dataset = load_from_disk(str(out / "repairs" / "pairs"))
        if len(pairs) == 0:
            raise SystemExit("no repair pair to train on")
        res = warm_start_senior(pairs, cfg, out / "warm")
        print(f"sft: {res.steps} steps on {res.rows} pairs, loss {res.losses[0][1]:.3f} -> {res.losses[-1][1]:.3f}, "
              f"{res.train_seconds:.0f} s", flush=True)
    if "warm" in stages and prompts is not None and (out / "warm" / "adapter_model.safetensors").is_file() \
            and not (out / "prefilter_warm.json").is_file():
        with serve_adapter(out / "warm", model, model_alias="senior_policy", parallel=4, n_ctx=4096) as srv:
            pf = prefilter_prompts(prompts, _sampler(srv.endpoint("senior_policy"), cfg), reward, prefilter_k)
        (out / "prefilter_warm.json").write_text(json.dumps({**pf.to_json(), "pass_rates": pf.pass_rates}))
        print(f"warm: {pf.to_json()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for name in ("base", "warm"):
        f = out / f"prefilter_{name}.json"
        if f.is_file():
            print(f"{name}: prompts with a pass rate strictly between 0 and 1: {_band(json.loads(f.read_text()))}")


if __name__ == "__main__":
    app()
