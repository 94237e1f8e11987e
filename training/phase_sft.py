"""Phase 2 of ``sqlsociety train`` (:func:`sft_phase`): the juniors' conversations whose own SQL matched
gold (``training.adapter.HierarchicalTraceAdapter.select_sft`` over the run's store) -> LoRA SFT
(:class:`training.sft.JuniorSFTTrainer`) -> a GGUF LoRA served by llama.cpp (a PEFT adapter loaded by
name with vLLM). One adapter for every junior (``junior_adapters: shared``) or one per junior persona
(``per_persona``, :func:`train_juniors_per_persona`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from tools.files import atomic_write_text
from training.agent import MISSED_SOURCES
from training.profile import SftFill, TrainConfigError
from training.reuse import sha256_json
from training.run_dir import kept_step, mark_step
from training.run_plan import RunPlan
from training.run_serving import export_gguf

__all__ = ["ADAPTER_DONE", "SHARED_COMPARISON", "adapter_key", "fill_rows", "filled", "persona_rows", "sft_phase",
           "sft_selection_lines", "step_budget", "train_junior_adapter", "train_juniors_per_persona"]

#: ``done.json`` key of phase 2's shared adapter trained beside the per-persona ones
#: (``compare_shared_adapter``; judged by ``training.stages.evaluate_shared_comparison``).
SHARED_COMPARISON = "shared_comparison"

#: The file a finished phase-2 adapter leaves in its directory (:func:`train_junior_adapter`).
ADAPTER_DONE = "sft_done.json"


def sft_selection_lines(summary: dict[str, Any]) -> list[str]:
    """The phase-2 echo of an SFT selection summary (``training.adapter.SftSelection.summary``): what
    was kept and why the rest was not, what the removed reward-or-correct rule would have admitted
    with a wrong own SQL, and the kept rows per source and persona."""
    old = summary["old_rule"]
    lines = [
        f"phase 2 SFT dataset: {summary['kept']} of {summary['conversations']} junior conversations (own SQL "
        f"matched gold; {summary['own_sql_wrong']} wrong left out, {summary['duplicates']} duplicates, "
        f"{summary['hint_left']} with a trace of the hint); the old rule (reward >= {old['min_reward']} or own SQL "
        f"correct) would have admitted {old['admitted']}, {old['admitted_with_wrong_own_sql']} of them with a wrong "
        "own SQL",
    ]
    parts = []
    for source, personas in summary["by_source"].items():
        if personas:
            parts.append(f"{source}: " + ", ".join(f"{p or '?'} {c['kept']}/{c['conversations']}"
                                                  for p, c in sorted(personas.items())))
    if parts:
        lines.append("phase 2 SFT rows kept/read by source and persona: " + "; ".join(parts))
    return lines


def sft_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 2: select the SFT rows, then train. Writes ``sft_dataset.jsonl`` and its card
    ``sft_selection.json`` (:class:`training.adapter.SftSelection`; also in ``done.json`` as
    ``selection``).

    Returns:
        ``done.json``'s fields (:func:`train_junior_adapter`'s, or :func:`train_juniors_per_persona`'s;
        with ``compare_shared_adapter`` also :data:`SHARED_COMPARISON`: one adapter trained on every
        persona's admitted rows (cut by ``adapter.sft_fill`` as one set), with the same ``sft``
        settings -- so ``sft.max_steps`` steps for all of them, where each persona's adapter has that
        many for its own --
        :func:`train_junior_adapter`'s fields).

    Raises:
        TrainConfigError: no junior conversation has an own SQL that matched gold (the message says
            what to gather more of).
    """
    from training.adapter import HierarchicalTraceAdapter

    d = plan.run_dir.phase_dir(2)
    with plan.run_dir.archive() as archive:
        sel = HierarchicalTraceAdapter().select_sft(archive, min_reward=plan.cfg.adapter.sft_min_reward)
    ds = sel.dataset
    ds.to_json(str(d / "sft_dataset.jsonl"))
    atomic_write_text(d / "sft_selection.json", json.dumps(sel.summary, indent=2) + "\n")
    for line in sft_selection_lines(sel.summary):
        echo(line)
    if len(ds) == 0:
        raise TrainConfigError(
            f"phase 2: none of the {sel.summary['conversations']} junior conversations has an own SQL that "
            "matched gold; gather more (gather.limit, gather.junior_limit, gather.junior_resamples) or set "
            "gather.rationalize: true")
    if plan.cfg.junior_adapters == "per_persona":
        out = {**train_juniors_per_persona(plan, ds, d, echo), "selection": sel.summary}
        if plan.cfg.compare_shared_adapter:  # the personas' rows, one adapter for all: judged beside, never routed
            rows, _ = persona_rows(plan, ds)
            out[SHARED_COMPARISON] = train_junior_adapter(plan, ds.select(sorted(i for r in rows.values() for i in r)),
                                                          d / "adapter_shared",
                                                          "phase 2 SFT (one shared adapter, for the comparison)", echo)
        return out
    info = train_junior_adapter(plan, ds, d / "adapter", "phase 2 SFT", echo)
    return {"junior_adapters": "shared", **info, "selection": sel.summary}


def step_budget(max_steps: int, batch: int, accumulation: int = 1) -> int | None:
    """How many rows an SFT run of ``max_steps`` optimizer steps reads: steps x per-device batch x
    gradient accumulation (one device); None when ``max_steps <= 0`` (the run is bounded by epochs,
    so it reads every row).

    >>> step_budget(180, 2)
    360
    >>> step_budget(10, 2, 4)
    80
    >>> step_budget(-1, 2) is None
    True
    """
    return max_steps * batch * accumulation if max_steps > 0 else None


def fill_rows(sources: Sequence[str], budget: int | None, rule: str = "random", seed: int = 0) -> list[int]:
    """The rows (indices into ``sources``, ascending) one SFT adapter trains on.

    ``random`` keeps every row (the trainer then draws its ``budget`` rows at random). ``missed_first``,
    when ``budget`` is smaller than the rows: the rows of questions the junior's first draft missed
    (sources in :data:`training.agent.MISSED_SOURCES`: a rejection-sampling redraw that matched gold, a
    STaR rationalization; Zelikman et al. 2022) fill the budget first -- a random ``budget`` of them when
    they are more -- and the others are drawn at random (``random.Random(seed)``) into what is left.
    A junior's own right first drafts are what its model already writes (low loss), the missed ones
    what it does not; tried on the direct junior (bench/results/direct-missed-first-2026-12-07) it was
    not better than ``random`` on 372 fresh dev questions (one-shot EX −2.7 pts, p = 0.30).

    Args:
        sources: each row's source (:data:`training.agent.SOURCES`), length n >= 0.
        budget: rows the run reads (:func:`step_budget`); None = unbounded (every row kept).
        rule: ``random`` or ``missed_first`` (``adapter.sft_fill``).
        seed: the draw's seed (the ``sft`` seed).

    Returns:
        Sorted indices: all n for ``random`` or a ``budget`` of None; else ``min(n, budget)`` of them.
        The trainer later leaves out rows longer than ``sft.max_length``; with ``missed_first`` each
        such row is a slot of the budget the trainer fills by reading other rows again
        (``rows_over_max_length`` in the adapter's record).

    Raises:
        ValueError: an unknown ``rule``.

    >>> fill_rows(["juniors", "rationalized", "juniors", "resample"], 2, "missed_first")
    [1, 3]
    >>> fill_rows(["juniors", "rationalized", "juniors", "resample"], 2)
    [0, 1, 2, 3]
    >>> len(fill_rows(["juniors", "rationalized", "juniors", "resample"], 3, "missed_first"))
    3
    >>> fill_rows(["juniors", "resample"], None, "missed_first")
    [0, 1]
    """
    if rule not in get_args(SftFill):
        raise ValueError(f"adapter.sft_fill: {rule!r}; use {' or '.join(map(repr, get_args(SftFill)))}")
    n = len(sources)
    if rule == "random" or budget is None or budget >= n:
        return list(range(n))
    rng = random.Random(seed)
    missed = [i for i, s in enumerate(sources) if s in MISSED_SOURCES]
    if len(missed) >= budget:
        return sorted(rng.sample(missed, budget))
    taken = set(missed)
    rest = [i for i in range(n) if i not in taken]
    return sorted(missed + rng.sample(rest, budget - len(missed)))


def filled(plan: RunPlan, ds: Any) -> tuple[Any, dict[str, Any]]:
    """``ds`` cut to the rows one adapter trains on (:func:`fill_rows` with the plan's ``adapter.sft_fill``,
    its ``sft`` step budget and seed), and what was done: ``fill``, ``rows_admitted``, ``rows_missed``
    (admitted rows of missed questions, before the cut)."""
    sft = plan.cfg.sft
    sources = list(ds["source"]) if "source" in ds.column_names else [""] * len(ds)
    keep = fill_rows(sources, step_budget(int(sft.max_steps), int(sft.per_device_train_batch_size),
                                          int(sft.gradient_accumulation_steps)),
                     plan.cfg.adapter.sft_fill, int(sft.seed))
    info = {"fill": plan.cfg.adapter.sft_fill, "rows_admitted": len(ds),
            "rows_missed": sum(s in MISSED_SOURCES for s in sources)}
    return (ds if len(keep) == len(ds) else ds.select(keep)), info


def adapter_key(plan: RunPlan, ds: Any) -> str:
    """What one adapter of phase 2 is trained from, as a sha256 (hex, 64 characters): the rows'
    conversations in order, the ``sft`` settings and the base model. Equal keys train the same
    adapter, so a resumed phase 2 keeps an adapter finished before the stop (:data:`ADAPTER_DONE`)."""
    return sha256_json({"messages": list(ds["messages"]), "sft": plan.cfg.sft.settings(),
                        "base_model": plan.cfg.base_model})


def train_junior_adapter(plan: RunPlan, ds: Any, out: Path, label: str,
                         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """LoRA SFT of the base model on ``ds`` (cut to the step budget by ``adapter.sft_fill``,
    :func:`filled`) into ``out``, exported to GGUF (llama.cpp); returns ``adapter``, ``adapter_gguf``,
    ``rows`` (given to the trainer, which reads ``sft.max_steps`` x batch of them), ``fill``,
    ``rows_admitted``, ``rows_missed``, ``rows_over_max_length`` (left out by the trainer), ``steps``,
    ``losses``, ``seconds_per_step``.

    A finished adapter leaves ``out/`` :data:`ADAPTER_DONE` (these fields and :func:`adapter_key`),
    written last; when the file is there with the same key, the adapter is kept and not trained
    again (phase 2 stopped between two adapters resumes after the last one finished). A file with
    another key (other rows or settings) is said and the adapter trained again."""
    from training.sft import JuniorSFTTrainer

    cfg = plan.cfg
    ds, fill = filled(plan, ds)
    key = adapter_key(plan, ds)
    kept = kept_step(out / ADAPTER_DONE, key, echo, label, "the adapter")
    if kept is not None:  # its paths as under ``out`` now (the run may have been moved since)
        info = kept["info"]
        return {**info, "adapter": str(out),
                "adapter_gguf": str(out / Path(info["adapter_gguf"]).name) if info["adapter_gguf"] else None}
    res = JuniorSFTTrainer(cfg.sft.with_values(model=cfg.base_model, output_dir=str(out)), ds).train()
    gguf = export_gguf(cfg, res.adapter_dir, res.adapter_dir / "adapter.gguf")
    cut = "" if fill["rows_admitted"] == res.rows else (
        f" ({fill['fill']}: of {fill['rows_admitted']} admitted, {fill['rows_missed']} of missed questions)")
    echo(f"{label}: {res.steps} steps on {res.rows} rows{cut}, loss {res.losses[0][1]:.3f} -> "
         f"{res.losses[-1][1]:.3f}, {res.mean_step_seconds:.1f} s/step; "
         + (f"LoRA GGUF {gguf.name}" if gguf else "PEFT adapter served by name with vLLM"))
    info = {"adapter": str(res.adapter_dir), "adapter_gguf": str(gguf) if gguf else None, "rows": res.rows,
            **fill, "rows_over_max_length": res.rows_over_max_length, "steps": res.steps, "losses": res.losses,
            "seconds_per_step": res.mean_step_seconds}
    mark_step(out / ADAPTER_DONE, key, info=info)
    return info


def persona_rows(plan: RunPlan, ds: Any) -> tuple[dict[str, list[int]], int]:
    """The rows of ``ds`` each junior persona of the plan's society trains on: persona -> row indices
    (every persona of :attr:`training.run_plan.RunPlan.personas`, maybe with none), by the row's
    ``role_instance`` (the society's junior instances), else its ``persona`` column; and how many
    rows belong to no current persona."""
    rows: dict[str, list[int]] = {p: [] for p in plan.personas}
    orphans = 0
    for i, (inst, persona) in enumerate(zip(ds["role_instance"], ds["persona"])):
        key = plan.persona_of.get(inst) or (persona if persona in rows else None)
        if key is None:
            orphans += 1
        else:
            rows[key].append(i)
    return rows, orphans


def train_juniors_per_persona(plan: RunPlan, ds: Any, d: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``junior_adapters: per_persona``: one LoRA adapter per junior persona of the plan's society
    (:attr:`training.run_plan.RunPlan.personas`), each trained (``sft`` settings, the same for every
    persona) on that persona's own rows of ``ds`` into ``d/adapters/<alias>/`` and exported to GGUF;
    the one llama-server serves them all, each persona's requests naming its own (its alias in
    ``plan.personas``). A persona with no row keeps the base model (said,
    and recorded with ``adapter: None``). A row is the persona's by its ``role_instance`` (the
    society's junior instances), else by its ``persona`` column; rows of no current persona are
    counted (``rows_of_no_persona``) and not trained on.

    Args:
        plan: the run's plan (its society and profile).
        ds: the SFT rows (:meth:`training.adapter.HierarchicalTraceAdapter.select_sft`'s dataset:
            ``messages``, ``role_instance``, ``persona``, ...).
        d: the phase directory.
        echo: called with one line per persona left on the base model and per adapter trained.

    Returns:
        ``done.json`` fields: ``junior_adapters: per_persona``, ``adapters`` (persona -> the
        fields of one adapter, or ``{"rows": 0, "adapter": None}``), ``adapter`` None, ``rows``
        and ``steps`` summed over personas, ``seconds_per_step`` their mean.

    Raises:
        TrainConfigError: no persona has a row.
    """
    rows, orphans = persona_rows(plan, ds)
    if not any(rows.values()):
        raise TrainConfigError(f"phase 2 (junior_adapters: per_persona): none of the {len(ds)} SFT rows belongs "
                               f"to a junior persona of the society ({list(plan.personas)}); check the society "
                               "config")
    adapters: dict[str, dict[str, Any]] = {}
    for p, alias in plan.personas.items():
        if not rows[p]:
            echo(f"phase 2 SFT ({p}): no conversation of this persona had its own SQL match gold; it keeps "
                 "the base model")
            adapters[p] = {"alias": alias, "rows": 0, "adapter": None, "adapter_gguf": None}
            continue
        info = train_junior_adapter(plan, ds.select(rows[p]), d / "adapters" / alias, f"phase 2 SFT ({p})", echo)
        adapters[p] = {"alias": alias, **info}
    trained = [a for a in adapters.values() if a["adapter"]]
    return {"junior_adapters": "per_persona", "adapters": adapters, "adapter": None, "adapter_gguf": None,
            "rows": sum(a["rows"] for a in trained), "steps": sum(a["steps"] for a in trained),
            "seconds_per_step": sum(a["seconds_per_step"] for a in trained) / len(trained),
            "rows_of_no_persona": orphans}
