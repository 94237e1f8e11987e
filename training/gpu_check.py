"""The project's own training paths on a tiny model, on ``cuda`` (a GPU check) or ``cpu`` (its test).

Run through ``scripts/gpu-check.sh`` (which can first install carried wheels) or directly::

    python -m training.gpu_check --device cuda --out runs/gpu-check

Nothing is downloaded: the model is a randomly initialised Qwen2-architecture causal LM
(:func:`build_tiny_model`, 2 layers, hidden 128, head dim 64, a byte-level BPE tokenizer of a few hundred tokens
trained here on a few SQL sentences, ChatML chat template), and the GRPO reward runs on a SQLite
file the check writes (:func:`build_tiny_database`). The steps, in order (a failed step skips the
ones that need its output):

==================  =================================================================================
step                passes when
==================  =================================================================================
``environment``     the stack imports (torch, transformers, peft, trl, datasets); on ``cuda``:
                    ``torch.cuda.is_available()``
``tiny_model``      model + tokenizer built, saved, reloaded by ``AutoModelForCausalLM`` /
                    ``AutoTokenizer``
``sft``             :class:`training.sft.JuniorSFTTrainer` (TRL backend, LoRA) takes ``sft_steps``
                    optimizer steps with finite losses; on ``cuda`` with ``bf16=True`` when the GPU
                    supports it and CUDA memory was allocated (the run was on the GPU)
``sft_reload``      the saved adapter loads twice onto a fresh base; greedy output (token ids) is
                    equal between the two loads and some ``lora_B`` weight is non-zero (trained)
``grpo``            :class:`training.grpo.SeniorGRPOTrainer` (TRL GRPO, LoRA, the project's
                    execution reward on the SQLite file) takes ``grpo_steps`` steps, rewards finite
``grpo_reload``     as ``sft_reload`` for the senior's adapter
``gpu_stack``       ``--full`` only: vllm, verl, unsloth and agentlightning import (their versions)
``unsloth_sft``     ``--full``: the SFT trainer with ``backend="unsloth"`` takes its steps (CUDA)
``vllm_lora``       ``--full``: :class:`society.vllm_serving.VLLMServer` serves the tiny model with
                    the junior adapter by name (and hot-loads the senior's); both answer a greedy
                    completion; ``equal_to_peft`` in the detail says whether vLLM's greedy text
                    equals transformers + PEFT's (informative: a random model's near-ties may differ)
``gpu_profile``     ``--full``: ``sqlsociety train --profile gpu --dry-run``'s checks find no error
                    and nothing missing
==================  =================================================================================

``--full`` imports the project's serving and pipeline modules too: it needs the whole project
installed with the gpu extra (``SQLSOCIETY_GPU=1 bash scripts/install.sh``).

Output (``--out``): ``gpu_check.json`` (``{"device", "ok", "steps": [{"step", "seconds", "ok",
"error", "detail"}], "versions"}``) and ``gpu_check.md`` (the same table in Markdown, printed too);
the tiny model, the adapters and the database beside them. Exit status 0 when every step passed,
1 otherwise, 2 for bad arguments.

Imports: only the standard library at module level; the steps import torch, transformers, peft,
trl, datasets and the project's trainers, the command line imports Typer (transformers 5 requires
it; :data:`WHEEL_ROOTS` carries it where the machine lacks it) -- never Agent Lightning, LangGraph,
LangChain, LiteLLM or the serving modules, so the check runs on a machine that has only the
training stack.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = [
    "StepResult",
    "build_tiny_model",
    "build_tiny_database",
    "greedy_twice",
    "run_checks",
    "main",
    "wheel_pins",
    "TRAINING_STACK",
]

#: The packages the trainers need (and all the check imports besides the project itself).
TRAINING_STACK = ("torch", "transformers", "peft", "trl", "datasets")

#: The GPU stack of the ``gpu`` extra, imported by ``--full`` only.
GPU_STACK = ("vllm", "verl", "unsloth", "agentlightning")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SYSTEM = "You translate questions into SQLite SQL. Answer with one ```sql block."
SCHEMA = "singer(singer_id, name, country, age)"
QA = [
    ("How many singers are there?", "SELECT count(*) FROM singer"),
    ("List the names of all singers.", "SELECT name FROM singer"),
    ("What is the average age of singers?", "SELECT avg(age) FROM singer"),
    ("Which singers are from France?", "SELECT name FROM singer WHERE country = 'France'"),
    ("What is the age of the oldest singer?", "SELECT max(age) FROM singer"),
    ("How many singers are older than 30?", "SELECT count(*) FROM singer WHERE age > 30"),
    ("List the countries of singers without repeats.", "SELECT DISTINCT country FROM singer"),
    ("Show names of singers ordered by age.", "SELECT name FROM singer ORDER BY age"),
]


@dataclass
class StepResult:
    """One row of the table: ``seconds`` wall time, ``ok`` passed, ``error`` the first line of the
    failure (``"skipped: ..."`` when an earlier step it needs failed), ``detail`` what was measured."""

    step: str
    seconds: float
    ok: bool
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class CheckFailed(AssertionError):
    """A step ran but its result is wrong (the message says what was expected)."""


# ============================================================================ inputs


def _user(question: str) -> str:
    return f"Schema: {SCHEMA}\nQuestion: {question}"


def _answer(sql: str) -> str:
    return f"```sql\n{sql}\n```"


def sft_rows() -> list[dict[str, Any]]:
    """Junior conversations in the shape ``HierarchicalTraceAdapter.to_sft`` gives (``messages``)."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": _user(q)},
                {"role": "assistant", "content": _answer(s)},
            ]
        }
        for q, s in QA
    ]


def grpo_rows(db_path: Path) -> list[dict[str, Any]]:
    """Senior rewrite prompts in the shape ``HierarchicalTraceAdapter.to_rl(...).prompts`` gives."""
    return [
        {
            "prompt": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": _user(q) + f"\nDraft: {_answer(s + ' LIMIT 0')}\nFix the draft."},
            ],
            "gold_sql": s,
            "db_path": str(db_path),
            "node": "senior_rewrite",
        }
        for q, s in QA[:4]
    ]


def build_tiny_database(path: Path) -> Path:
    """A SQLite file with one ``singer`` table (6 rows) -- the database of the GRPO prompts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER)")
        con.executemany(
            "INSERT INTO singer VALUES (?, ?, ?, ?)",
            [
                (1, "Joe Sharp", "Netherlands", 52),
                (2, "Timbaland", "United States", 32),
                (3, "Justin Brown", "France", 29),
                (4, "Rose White", "France", 41),
                (5, "John Nizinik", "France", 43),
                (6, "Tribal King", "France", 25),
            ],
        )
    con.close()
    return path


def build_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
) -> Path:
    """Write a randomly initialised Qwen2 causal LM and its tokenizer to ``out_dir`` (float32).

    The tokenizer is a byte-level BPE (any text encodes) trained on this module's SQL sentences up
    to ``vocab_size`` tokens (fewer when the corpus has fewer merges), with ``<|endoftext|>`` (pad),
    ``<|im_start|>``, ``<|im_end|>`` (eos) and a ChatML template -- the special tokens of Qwen2.5.
    Head dim ``hidden_size / heads`` = 64 by default (Qwen2.5-0.5B's; GPU attention kernels support
    it). Size: about 0.3 M parameters, about 1.5 MB on disk.

    Returns:
        ``out_dir`` (a Hugging Face model directory the trainers take as ``model``).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    out_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [SYSTEM, SCHEMA, "system user assistant Schema Question Draft Fix the draft."]
    corpus += [t for q, s in QA for t in (q, _answer(s))]
    bpe.train_from_iterator(
        corpus * 4,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out_dir))
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(str(out_dir))
    return out_dir


# ============================================================================ checks


def greedy_twice(
    base_dir: Path, adapter_dir: Path, prompts: list[list[dict[str, str]]], *, device: str, max_new_tokens: int = 12
) -> dict[str, Any]:
    """Load base + PEFT adapter twice (fresh each time), decode greedily, compare.

    Args:
        base_dir / adapter_dir: the tiny model and a trained adapter.
        prompts: chat prompts (the generation prompt is added).
        device: ``"cuda"`` (bf16 weights when supported) or ``"cpu"`` (float32).

    Returns:
        ``{"equal": bool (token ids equal for every prompt), "tokens": new tokens per prompt of the
        first load, "lora_b_abs_sum": sum |lora_B| over the adapter (0 = untrained), "dtype",
        "texts": the first load's new text per prompt, special tokens skipped}``.
    """
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    runs = []
    for _ in range(2):
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype).to(device)
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        outs = []
        for p in prompts:
            ids = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            ids = {k: v.to(device) for k, v in ids.items()}
            with torch.no_grad():
                gen = model.generate(
                    **ids,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            outs.append(gen[0, ids["input_ids"].shape[1] :].tolist())
        runs.append(outs)
        del model, base
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora_b = sum(float(v.float().abs().sum()) for k, v in weights.items() if "lora_B" in k)
    return {
        "equal": runs[0] == runs[1],
        "tokens": [len(o) for o in runs[0]],
        "lora_b_abs_sum": lora_b,
        "dtype": str(dtype).removeprefix("torch."),
        "first_output": tok.decode(runs[0][0]),
        "texts": [tok.decode(o, skip_special_tokens=True) for o in runs[0]],
    }


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


@dataclass
class _CheckRun:
    """One :func:`run_checks` call: its arguments and what the steps that passed left for the later ones.

    Attributes:
        device: ``"cuda"`` or ``"cpu"``.
        out: output directory.
        sft_steps / grpo_steps: optimizer steps of each trainer (>= 1).
        threads: CPU threads for torch in the trainers.
        ctx: step name -> its detail (for each step that passed), and ``model_dir``, ``junior_adapter``,
            ``senior_adapter`` (paths) once the step that makes them passed.
    """

    device: str
    out: Path
    sft_steps: int
    grpo_steps: int
    threads: int
    ctx: dict[str, Any] = field(default_factory=dict)


def run_checks(
    device: str,
    out: Path,
    *,
    sft_steps: int = 3,
    grpo_steps: int = 2,
    threads: int = 1,
    full: bool = False,
    log: Callable[[str], None] = print,
) -> list[StepResult]:
    """Run the steps of the module docstring; never raises for a failing step (it is recorded).

    Args:
        device: ``"cuda"`` or ``"cpu"`` (on ``cpu`` CUDA must already be hidden, see :func:`main`).
        out: output directory (created).
        sft_steps / grpo_steps: optimizer steps of each trainer (>= 1).
        threads: CPU threads for torch in the trainers.
        full: also check the GPU stack imports.
        log: called with one line as each step starts and ends.

    Returns:
        one :class:`StepResult` per step, in the order they ran.
    """
    out.mkdir(parents=True, exist_ok=True)
    run = _CheckRun(device, out, sft_steps, grpo_steps, threads)
    return [_run_step(run, name, needs, fn, log) for name, needs, fn in _steps(run, full)]


def _steps(run: _CheckRun, full: bool) -> list[tuple[str, tuple[str, ...], Callable[[], dict[str, Any]]]]:
    """``(name, the steps it needs, what it runs)`` of every step, in order (``full``: the GPU stack's too)."""
    prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": _user(q)}] for q, _ in QA[:2]]
    steps: list[tuple[str, tuple[str, ...], Callable[[], dict[str, Any]]]] = [
        ("environment", (), lambda: _environment(run)),
        ("tiny_model", ("environment",), lambda: _tiny_model(run)),
        ("sft", ("tiny_model",), lambda: _sft(run)),
        ("sft_reload", ("sft",), lambda: _reload(run, "junior_adapter", prompts, trained=True)),
        ("grpo", ("tiny_model",), lambda: _grpo(run)),
        # GRPO moves the weights only on a step whose group rewards differ (zero advantage otherwise):
        # lora_B must be non-zero only when some logged step had reward_std > 0.
        ("grpo_reload", ("grpo",), lambda: _reload(
            run, "senior_adapter", [r["prompt"] for r in grpo_rows(run.out / "singer.sqlite")[:2]],
            trained=any(s > 0 for s in run.ctx["grpo"]["reward_std"]))),
    ]
    if full:
        steps += [
            ("gpu_stack", (), _gpu_stack),
            ("unsloth_sft", ("tiny_model", "gpu_stack"), lambda: _unsloth_sft(run)),
            ("vllm_lora", ("sft", "gpu_stack"), lambda: _vllm_lora(run, prompts)),
            ("gpu_profile", ("gpu_stack",), _gpu_profile),
        ]
    return steps


def _run_step(run: _CheckRun, name: str, needs: tuple[str, ...], fn: Callable[[], dict[str, Any]],
              log: Callable[[str], None]) -> StepResult:
    """Run one step, timed (seconds, rounded to ms): skipped when a step it needs did not pass; any
    exception becomes a failed result with the first line of its message and the traceback's tail.
    A step that passes records its detail in ``run.ctx[name]``."""
    missing = [n for n in needs if n not in run.ctx]
    if missing:
        log(f"[gpu-check] {name}: skipped (needs {', '.join(missing)})")
        return StepResult(name, 0.0, False, f"skipped: needs {', '.join(missing)}")
    log(f"[gpu-check] {name} ...")
    t0 = time.perf_counter()
    try:
        detail = fn() or {}
        r = StepResult(name, round(time.perf_counter() - t0, 3), True, "", detail)
        run.ctx[name] = detail
    except Exception as e:  # noqa: BLE001 - every failure becomes a table row
        first = (str(e).strip().splitlines() or [""])[0]
        r = StepResult(
            name,
            round(time.perf_counter() - t0, 3),
            False,
            f"{type(e).__name__}: {first}"[:300],
            {"traceback": traceback.format_exc()[-4000:]},
        )
    log(f"[gpu-check] {name}: {'pass' if r.ok else 'FAIL ' + r.error} ({r.seconds:.1f} s)")
    return r


# ============================================================================ steps


def _environment(run: _CheckRun) -> dict[str, Any]:
    """The training stack imports; the versions, Python, and on ``cuda`` the GPU's name, CUDA and bf16.

    Raises:
        CheckFailed: ``cuda`` without a CUDA device, or ``cpu`` with CUDA visible.
    """
    import torch

    for n in TRAINING_STACK[1:]:
        __import__(n)
    d: dict[str, Any] = {
        "versions": _versions(TRAINING_STACK),
        "python": sys.version.split()[0],
        "cuda_available": torch.cuda.is_available(),
    }
    if run.device == "cuda":
        if not torch.cuda.is_available():
            raise CheckFailed(
                "--device cuda but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"
            )
        d.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    elif torch.cuda.is_available():
        raise CheckFailed("--device cpu but CUDA is visible; run through main() (it hides CUDA first)")
    return d


def _tiny_model(run: _CheckRun) -> dict[str, Any]:
    """:func:`build_tiny_model` under ``out/tiny-qwen2``, reloaded by transformers; its directory,
    parameter count and vocabulary size. Raises :class:`CheckFailed` when it does not load as qwen2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = build_tiny_model(run.out / "tiny-qwen2")
    m = AutoModelForCausalLM.from_pretrained(str(d))
    tok = AutoTokenizer.from_pretrained(str(d))
    if m.config.model_type != "qwen2":
        raise CheckFailed(f"model_type {m.config.model_type!r}, expected 'qwen2'")
    run.ctx["model_dir"] = d
    return {"dir": str(d), "parameters": sum(p.numel() for p in m.parameters()), "vocab": len(tok)}


def _cuda_reset(device: str) -> None:
    """Reset CUDA's peak-memory counter before a trainer runs (``cuda`` only)."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _cuda_used(device: str, d: dict[str, Any], args: Any) -> None:
    """Add the trainer's ``bf16`` / ``use_cpu`` (TRL arguments ``args``) and, on ``cuda``, its peak CUDA
    memory in MiB to ``d``.

    Raises:
        CheckFailed: on ``cuda``, the trainer allocated no CUDA memory or ran with ``use_cpu``, or
            left ``bf16`` off on a GPU that supports it.
    """
    import torch

    d.update(bf16=bool(args.bf16), use_cpu=bool(args.use_cpu))
    if device == "cuda":
        d["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if d["peak_cuda_mib"] <= 0 or args.use_cpu:
            raise CheckFailed(f"trained without CUDA memory (use_cpu={args.use_cpu})")
        if torch.cuda.is_bf16_supported() and not args.bf16:
            raise CheckFailed("bf16 is supported by the GPU but the trainer's arguments have bf16=False")


def _sft_config(run: _CheckRun, backend: str, subdir: str) -> Any:
    """The tiny junior SFT run of the check, on ``backend`` (``trl`` or ``unsloth``), into ``out/subdir``."""
    from training.sft import JuniorSFTConfig

    return JuniorSFTConfig(model=str(run.ctx["model_dir"]), output_dir=str(run.out / subdir),
                           max_steps=run.sft_steps, per_device_train_batch_size=2, max_length=128,
                           learning_rate=1e-3, backend=backend, num_threads=run.threads, seed=0)


def _sft(run: _CheckRun) -> dict[str, Any]:
    """:class:`training.sft.JuniorSFTTrainer` (TRL) for ``sft_steps`` steps; steps, losses, seconds per
    step. Raises :class:`CheckFailed` for another step count or a non-finite loss."""
    from training.sft import JuniorSFTTrainer

    cfg = _sft_config(run, "trl", "junior-adapter")
    trainer = JuniorSFTTrainer(cfg, sft_rows())
    args = trainer._args()
    _cuda_reset(run.device)
    res = trainer.train()
    d = {
        "steps": res.steps,
        "losses": [round(v, 4) for _, v in res.losses],
        "mean_step_s": round(res.mean_step_seconds, 4),
        "backend": res.backend,
    }
    _cuda_used(run.device, d, args)
    if res.steps != run.sft_steps or not res.losses or not all(math.isfinite(v) for _, v in res.losses):
        raise CheckFailed(
            f"expected {run.sft_steps} steps with finite losses, got {res.steps} steps, losses {res.losses}"
        )
    run.ctx["junior_adapter"] = res.adapter_dir
    return d


def _reload(run: _CheckRun, key: str, prompts: list[list[dict[str, str]]], *, trained: bool) -> dict[str, Any]:
    """:func:`greedy_twice` with the adapter ``run.ctx[key]`` on ``prompts``.

    Raises:
        CheckFailed: the two loads' greedy outputs differ, or ``trained`` and every ``lora_B`` weight is 0.
    """
    d = greedy_twice(run.ctx["model_dir"], Path(run.ctx[key]), prompts, device=run.device)
    if not d["equal"]:
        raise CheckFailed("greedy output differs between two loads of the same adapter")
    if trained and not d["lora_b_abs_sum"] > 0:
        raise CheckFailed("every lora_B weight is 0: the adapter was not trained")
    return d


def _grpo(run: _CheckRun) -> dict[str, Any]:
    """:class:`training.grpo.SeniorGRPOTrainer` (TRL GRPO) for ``grpo_steps`` steps on the SQLite file
    of :func:`build_tiny_database`; steps, rewards, reward std per step, completions scored.

    Raises:
        CheckFailed: another step count, a non-finite reward, or no completion scored.
    """
    from training.grpo import SeniorGRPOConfig, SeniorGRPOTrainer

    db = build_tiny_database(run.out / "singer.sqlite")
    cfg = SeniorGRPOConfig(
        model=str(run.ctx["model_dir"]),
        output_dir=str(run.out / "senior-adapter"),
        max_steps=run.grpo_steps,
        num_generations=4,
        prompts_per_step=1,
        max_completion_length=16,
        max_prompt_length=256,
        learning_rate=1e-3,
        num_threads=run.threads,
        seed=0,
        backend="trl",
    )
    trainer = SeniorGRPOTrainer(cfg, grpo_rows(db))
    args = trainer._args()
    _cuda_reset(run.device)
    res = trainer.train()
    d = {
        "steps": res.steps,
        "rewards": [round(r, 4) for r in res.rewards],
        "reward_std": res.reward_std,
        "mean_step_s": round(res.mean_step_seconds, 4),
        "completions_scored": len(trainer.reward.records),
    }
    _cuda_used(run.device, d, args)
    if res.steps != run.grpo_steps or not res.rewards or not all(math.isfinite(r) for r in res.rewards):
        raise CheckFailed(
            f"expected {run.grpo_steps} steps with finite rewards, got {res.steps} steps, rewards {res.rewards}"
        )
    if not trainer.reward.records:
        raise CheckFailed("the execution reward scored no completion")
    run.ctx["senior_adapter"] = res.adapter_dir
    return d


def _gpu_stack() -> dict[str, Any]:
    """The versions of :data:`GPU_STACK`. Raises :class:`CheckFailed` naming each that does not import."""
    bad = []
    for n in GPU_STACK:
        try:
            __import__(n)
        except Exception as e:  # noqa: BLE001 - reported as the step's error
            bad.append(f"{n} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if bad:
        raise CheckFailed(
            "does not import: " + "; ".join(bad) + " -- install with SQLSOCIETY_GPU=1 bash scripts/install.sh"
        )
    return {"versions": _versions(GPU_STACK)}


def _unsloth_sft(run: _CheckRun) -> dict[str, Any]:
    """The junior SFT on ``backend="unsloth"``. Raises :class:`CheckFailed` for another step count or backend."""
    from training.sft import JuniorSFTTrainer

    cfg = _sft_config(run, "unsloth", "junior-adapter-unsloth")
    res = JuniorSFTTrainer(cfg, sft_rows()).train()
    if res.steps != run.sft_steps or res.backend != "unsloth":
        raise CheckFailed(f"expected {run.sft_steps} unsloth steps, got {res.steps} with backend {res.backend}")
    return {"steps": res.steps, "losses": [round(v, 4) for _, v in res.losses], "backend": res.backend}


def _vllm_lora(run: _CheckRun, prompts: list[list[dict[str, str]]]) -> dict[str, Any]:
    """:class:`society.vllm_serving.VLLMServer` on the tiny model with the junior adapter by name (and
    the senior's hot-loaded when it was trained): greedy completions of ``prompts`` beside
    transformers + PEFT's. Raises :class:`CheckFailed` when vLLM does not list the adapter."""
    import torch
    from transformers import AutoTokenizer

    from society.vllm_serving import VLLMServer

    ctx = run.ctx
    tok = AutoTokenizer.from_pretrained(str(ctx["model_dir"]))
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    peft = greedy_twice(ctx["model_dir"], Path(ctx["junior_adapter"]), prompts, device=run.device)
    bf16 = run.device == "cuda" and torch.cuda.is_bf16_supported()
    srv = VLLMServer(
        ctx["model_dir"],
        served_model_name="tiny",
        adapters={"junior_policy": ctx["junior_adapter"]},
        max_lora_rank=16,
        gpu_memory_utilization=0.2,
        max_model_len=512,
        dtype="bfloat16" if bf16 else "float32",
        log_path=run.out / "vllm.log",
    )
    with srv:
        served = [_complete(srv.base_url, "junior_policy", t) for t in texts]
        detail: dict[str, Any] = {
            "startup_s": round(srv.startup_s or 0.0, 1),
            "models": srv.served_models(),
            "vllm": served,
            "peft": peft["texts"],
            "equal_to_peft": served == peft["texts"],
        }
        if "senior_adapter" in ctx:
            srv.load_adapter("senior_policy", ctx["senior_adapter"])
            detail["hot_loaded"] = _complete(srv.base_url, "senior_policy", texts[0])
    if "junior_policy" not in detail["models"]:
        raise CheckFailed(f"vLLM does not list the adapter: {detail['models']}")
    return detail


def _complete(base_url: str, model: str, text: str) -> str:
    """A greedy completion (12 tokens at most) of ``text`` by ``model`` at the OpenAI server ``base_url``."""
    import urllib.request

    body = json.dumps({"model": model, "prompt": text, "max_tokens": 12, "temperature": 0.0}).encode()
    req = urllib.request.Request(
        f"{base_url}/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["choices"][0]["text"]


def _gpu_profile() -> dict[str, Any]:
    """``sqlsociety train --profile gpu --dry-run``'s checks; its budgets. Raises :class:`CheckFailed`
    listing each error and missing piece."""
    from training.plan import plan_profile
    from training.profile import TrainConfig

    plan = plan_profile(TrainConfig.load("gpu"), source="gpu")
    problems = [f"{f.where}: {f.message}" for f in plan.errors + plan.missing]
    if problems:
        raise CheckFailed("; ".join(problems))
    return {"budgets": plan.budgets}


#: Packages the GPU machine is known to have (their dependencies too): the wheel list leaves them out.
PREINSTALLED = ("torch", "transformers", "peft", "accelerate", "pyarrow", "scikit-learn")

#: What the check needs beyond :data:`PREINSTALLED`: the trainers' TRL and datasets, sqlglot for the reward,
#: Typer for the command line.
WHEEL_ROOTS = ("trl", "datasets", "sqlglot", "typer")


def wheel_pins(
    roots: tuple[str, ...] = WHEEL_ROOTS, preinstalled: tuple[str, ...] = PREINSTALLED, python_version: str = "3.12"
) -> list[str]:
    """``name==version`` pins of the packages to carry: the dependency closure of ``roots`` minus
    that of ``preinstalled``, read from the distributions installed here (the versions the tests pass
    with), markers evaluated for CPython ``python_version`` on x86-64 Linux, no extras.

    Raises:
        LookupError: a root is not installed here (``pip install -e .[dev]`` first).
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }

    def closure(names: tuple[str, ...], strict: bool) -> dict[str, str | None]:
        seen: dict[str, str | None] = {}
        todo = list(names)
        while todo:
            n = canonicalize_name(todo.pop())
            if n in seen:
                continue
            try:
                dist = metadata.distribution(n)
            except metadata.PackageNotFoundError:
                if strict and n in {canonicalize_name(r) for r in names}:
                    raise LookupError(
                        f"{n} is not installed here; install the project with its dev extra first"
                    ) from None
                seen[n] = None
                continue
            seen[n] = dist.version
            for r in dist.requires or []:
                req = Requirement(r)
                if req.marker is None or req.marker.evaluate(env):
                    todo.append(req.name)
        return seen

    have = closure(preinstalled, strict=False)
    need = closure(roots, strict=True)
    return sorted(f"{n}=={v}" for n, v in need.items() if n not in have and v is not None)


def markdown_table(results: list[StepResult]) -> str:
    """The results as a Markdown table: step | seconds | result | error."""
    lines = ["| step | seconds | result | error |", "|---|---:|---|---|"]
    for r in results:
        err = r.error.replace("|", "\\|")
        lines.append(f"| {r.step} | {r.seconds:.2f} | {'pass' if r.ok else 'FAIL'} | {err} |")
    return "\n".join(lines)


class Device(str, Enum):
    """Where the check runs."""

    cuda = "cuda"
    cpu = "cpu"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the exit status: 0 every step passed,
    1 a step failed, 2 bad arguments."""
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)

    @app.command(help=__doc__.split("\n\n")[0])
    def _check(
        device: Device = typer.Option(Device.cuda, "--device", help="cuda (the GPU check) or cpu (its test)"),
        out: str = typer.Option("runs/gpu-check", "--out", help="output directory"),
        sft_steps: int = typer.Option(3, "--sft-steps", min=1, help="SFT optimizer steps (>= 1)"),
        grpo_steps: int = typer.Option(2, "--grpo-steps", min=1, help="GRPO steps (>= 1)"),
        threads: int = typer.Option(max(1, min(4, os.cpu_count() or 1)), "--threads", min=1,
                                    help="CPU threads for torch (>= 1)"),
        full: bool = typer.Option(False, "--full",
                                  help="also check that the GPU stack (vllm, verl, unsloth, agentlightning) imports"),
        pins: bool = typer.Option(False, "--wheel-pins",
                                  help="print the name==version pins of the wheels to carry to a machine that has "
                                  f"only {', '.join(PREINSTALLED)} (one a line) and exit"),
    ) -> None:
        if pins:
            print("\n".join(wheel_pins()))
            return
        raise typer.Exit(_run(device.value, Path(out), sft_steps=sft_steps, grpo_steps=grpo_steps, threads=threads,
                              full=full))

    try:
        app(args=argv, prog_name="python -m training.gpu_check")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _run(device: str, out: Path, *, sft_steps: int, grpo_steps: int, threads: int, full: bool) -> int:
    """Run the steps, write ``gpu_check.json`` and ``gpu_check.md`` under ``out``, print the table;
    returns 0 when every step passed, else 1."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the cpu run never touches a GPU
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    results = run_checks(
        device,
        out,
        sft_steps=sft_steps,
        grpo_steps=grpo_steps,
        threads=threads,
        full=full,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    ok = all(r.ok for r in results)
    env = next((r.detail for r in results if r.step == "environment"), {})
    report = {
        "device": device,
        "ok": ok,
        "total_seconds": round(time.perf_counter() - t0, 2),
        "versions": env.get("versions", {}),
        "gpu": env.get("gpu"),
        "steps": [asdict(r) for r in results],
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    md = (
        f"gpu-check on `{device}`{' (' + str(env['gpu']) + ')' if env.get('gpu') else ''}: "
        f"{'all steps passed' if ok else 'FAILED'} in {report['total_seconds']} s\n\n" + markdown_table(results) + "\n"
    )
    (out / "gpu_check.md").write_text(md)
    print(md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
