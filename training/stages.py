"""The evaluation stages of a training run, from its plan (:class:`training.run_plan.RunPlan`): one
stage (:func:`evaluate_stage`: a :class:`training.stage_plan.Stage` -- the society or a role-level agent
on its fixed questions -- evaluated, resumed or reused, into ``RUN_DIR/eval/<stage>.jsonl``, role-level
agents ``RUN_DIR/eval/roles/<stage>.jsonl``), the society's stage (:func:`evaluate_society`) and the
role-level stages that judge each phase on its own role (:func:`evaluate_roles`: the juniors, their
noise repeat, the juniors on one shared adapter beside their own, the senior, the one-shot control).

Files beside ``<stage>.jsonl``:

=========================  ==========================================================================
``<stage>.partial.jsonl``  each question's record as it finishes (a stage stopped part-way keeps them;
                           removed when the stage finishes)
``<stage>.summary.json``   the stage's summary; once there the stage is finished and is not run again
``.fingerprint.json``      an untrained-model stage's content hashes (:mod:`training.reuse`)
``<stage>.reused.json``    where a reused stage came from (:func:`training.reuse.copy_stage`, or
                           :func:`training.reuse.copy_questions` for a stage taken in part)
=========================  ==========================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from evaluation.control_effects import SINGLE_BASELINE, SINGLE_TRAINED
from evaluation.role_effects import NOISE_STAGE, SHARED_STAGE
from society.evaluate import evaluate, summarise_records
from society.response_cache import ResponseCache
from tools.files import atomic_write_text, atomic_writer, read_jsonl
from training.phase_sft import SHARED_COMPARISON
from training.reuse import copy_questions, copy_stage, fingerprint_path
from training.role_aliases import JUNIOR_ALIAS, role_split_config, with_junior_seed_offset
from training.run_plan import RunPlan, stage_path
from training.stage_plan import Stage

__all__ = ["evaluate_noise_repeat", "evaluate_roles", "evaluate_single", "evaluate_society", "evaluate_stage",
           "senior_inputs"]


def evaluate_stage(stage: Stage, plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``stage`` (``society.evaluate.evaluate`` of its agent on its examples, the servers its
    society needs started from ``plan``, :meth:`training.run_plan.RunPlan.serve`), unless it finished
    before (its summary is returned) or ``plan``'s ``reuse_from`` has it (:attr:`Stage.reuse`: copied,
    :func:`training.reuse.copy_stage`; or, when a source stage holds its questions among more, their
    records taken as an earlier attempt's, :func:`training.reuse.copy_questions`).

    Each question's record is appended to ``<stage>.partial.jsonl`` as it finishes, so a stage
    stopped part-way (a dead server, Ctrl-C, a killed process) keeps its finished questions: the
    resumed stage runs only the others, and the summary covers all of them (its ``seconds`` adds
    up the attempts; ``resumed`` counts the questions taken from earlier attempts). A fingerprinted
    stage writes ``<stage>.fingerprint.json``.

    Returns:
        The summary: ``stage``, ``ex`` (0-1), ``n`` (questions), ``seconds`` (the source's when copied
        whole; this run's, about 0, when taken in part), ``resumed`` and the agent's own fields
        (``society.evaluate.summarise_records``); ``reused_from`` when copied, and ``reused`` (questions
        taken) when taken in part.
    """
    path = stage_path(plan.run_dir, stage.name, stage.role_level)
    summary_path = path.with_suffix(".summary.json")
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    name, fp = stage.name, stage.fingerprint
    reused_from = None
    if fp is not None and plan.cfg.reuse_from:
        if stage.reuse is not None and stage.reuse.questions is not None:  # part of a larger stage
            info = copy_questions(stage.reuse, path, path.with_suffix(".partial.jsonl"))
            reused_from = str(stage.reuse.run_dir)
            echo(f"eval ({name}): {info['n']} of the {info['source_n']} questions of that stage in {reused_from} "
                 f"are this stage's (model, config, prompts and sampling hashes match, and each question's id, "
                 f"database, text and gold SQL); their records are taken from there")
        elif stage.reuse is not None:
            out = copy_stage(stage.reuse, path)
            path.with_suffix(".partial.jsonl").unlink(missing_ok=True)
            echo(f"EX ({name}) = {100 * out['ex']:.2f}% on {out['n']} dev questions, reused from "
                 f"{stage.reuse.run_dir} (model, config, prompts, sampling and questions hashes all match)")
            return out
        else:
            echo(f"eval ({name}): no run in reuse_from has this stage; evaluating it here")
    examples = stage.examples
    partial = path.with_suffix(".partial.jsonl")
    wanted = {str(e.id) for e in examples}
    earlier = list({str(r["question_id"]): r for r in (read_jsonl(partial) if partial.is_file() else [])
                    if str(r.get("question_id")) in wanted}.values())
    done_ids = {str(r["question_id"]) for r in earlier}
    earlier_seconds = max((float(r.get("stage_seconds") or 0) for r in earlier), default=0.0)
    todo = [e for e in examples if str(e.id) not in done_ids]
    recs: list[dict[str, Any]] = list(earlier)
    t0 = time.perf_counter()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if earlier and not reused_from:
        echo(f"eval ({name}): {len(earlier)} of {len(examples)} questions kept from an earlier attempt "
             f"({partial.name}); running the other {len(todo)}")
    with ExitStack() as stack:
        eps = plan.serve(stack, stage.society, adapters=stage.adapters) if todo else {}  # none when all are kept
        bar = stack.enter_context(
            Progress(
                TextColumn(f"[bold]eval ({name})[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[ex]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
        )
        task = bar.add_task(name, total=len(examples), completed=len(earlier), ex="")
        out_f = stack.enter_context(partial.open("a", encoding="utf-8"))

        def on_result(r: dict[str, Any]) -> None:
            line = {**r, "stage": name, "stage_seconds": earlier_seconds + time.perf_counter() - t0}
            out_f.write(json.dumps(line, default=str) + "\n")
            out_f.flush()
            recs.append(r)
            ex = sum(bool(x.get("match")) for x in recs) / len(recs)
            bar.update(task, advance=1, ex=f"EX {100 * ex:.1f}%")

        if todo:
            # the noise repeat measures a live second draw: never answered from the cache
            use_cache = plan.cfg.eval.response_cache and name != NOISE_STAGE
            cache = ResponseCache(plan.run_dir.response_cache) if use_cache else None
            if cache is not None:
                stack.callback(cache.close)
            evaluate(todo, stage.society, agent=stage.agent, concurrency=plan.cfg.eval.concurrency, endpoints=eps,
                     on_result=on_result, given_sql=stage.given_sql, response_cache=cache)
    order = {str(e.id): i for i, e in enumerate(examples)}
    recs.sort(key=lambda r: order[str(r["question_id"])])
    seconds = earlier_seconds + time.perf_counter() - t0
    summary = summarise_records(stage.agent, recs, seconds)
    with atomic_writer(path) as f:
        for r in recs:
            r = {k: v for k, v in r.items() if k != "stage_seconds"}
            f.write(json.dumps({**r, "stage": name}, default=str) + "\n")
    out = {"stage": name, "ex": summary.ex, "n": len(recs), "seconds": seconds,
           "resumed": 0 if reused_from else len(earlier),
           **{k: v for k, v in summary.model_dump().items() if k not in {"ex", "run_dir"}},
           **({"reused_from": reused_from, "reused": len(earlier)} if reused_from else {})}
    if fp is not None:
        atomic_write_text(fingerprint_path(path), json.dumps(fp.to_json(), indent=2) + "\n")
    atomic_write_text(summary_path, json.dumps(out, indent=2, default=str))
    partial.unlink(missing_ok=True)
    what = "dev questions" if stage.agent == "society" else f"dev questions ({stage.agent} only)"
    echo(f"EX ({name}) = {100 * summary.ex:.2f}% on {len(recs)} {what}")
    return out


def evaluate_society(plan: RunPlan, name: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The society stage ``name`` (``baseline``, or the phase after which it runs: ``sft``, ``grpo``,
    ``bandit``) on the dev subset, with the society as the plan routes it now; its summary
    (:func:`evaluate_stage`)."""
    return evaluate_stage(plan.stage(name, echo=echo), plan, echo)


def senior_inputs(juniors_records: Iterable[dict[str, Any]], examples: list[Any],
                  limit: int) -> tuple[list[Any], dict[str, str | None]]:
    """The senior-only evaluation's fixed inputs: the first ``limit`` of ``examples`` (the juniors'
    sample) whose baseline juniors produced a chosen candidate (``pred_sql`` of their records), with
    that candidate's SQL by question id.

    >>> from types import SimpleNamespace as E
    >>> recs = [{"question_id": "b", "pred_sql": "SELECT 2"}, {"question_id": "a", "pred_sql": None}]
    >>> senior_inputs(recs, [E(id="a"), E(id="b"), E(id="c")], 5)
    ([namespace(id='b')], {'b': 'SELECT 2'})
    """
    chosen = {str(r["question_id"]): r["pred_sql"] for r in juniors_records if r.get("pred_sql")}
    pool = [e for e in examples if e.id in chosen][:limit]
    return pool, {e.id: chosen[e.id] for e in pool}


def evaluate_roles(plan: RunPlan, stage: str, echo: Callable[[str], None] = print) -> None:
    """The role-level evaluations of ``stage`` (``baseline``: juniors, their noise-control repeat
    when ``eval.noise_repeat``, senior, then the one-shot control when ``eval.single``; ``sft``: the
    juniors, then the one-shot control; ``grpo``: the senior), each on its own fixed sample; nothing
    when its limit is 0 (or ``eval.single`` is false)."""
    e, d = plan.cfg.eval, plan.run_dir
    if stage == "baseline":
        # a resumed run whose profile gained a role evaluation after the phase it judges: the
        # "baseline" role would already be the trained one, so it is not evaluated (said once)
        for k, name, limit in ((2, "juniors", e.junior_limit), (3, "senior", e.senior_limit)):
            if limit and plan.done[k] and not d.role_eval_path(f"{name}_baseline").is_file():
                echo(f"eval: no {name}-only baseline: phase {k} finished before it was evaluated; start a "
                     "new run to judge that phase on its role")
                return
    if e.junior_limit and stage in ("baseline", "sft"):
        evaluate_stage(plan.stage(f"juniors_{stage}", "juniors", plan.juniors, echo=echo), plan, echo)
    if e.junior_limit and stage == "sft":
        evaluate_shared_comparison(plan, echo)
    if e.noise_repeat and stage == "baseline":
        evaluate_noise_repeat(plan, echo)
    if e.senior_limit and stage in ("baseline", "grpo"):
        path = d.role_eval_path("juniors_baseline")
        examples, given = senior_inputs(read_jsonl(path) if path.is_file() else [], plan.juniors, e.senior_limit)
        if examples:
            evaluate_stage(plan.stage(f"senior_{stage}", "senior", examples, given_sql=given, echo=echo), plan, echo)
    if e.single and stage in ("baseline", "sft"):
        evaluate_single(plan, stage, echo)


def evaluate_shared_comparison(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """``compare_shared_adapter``: the juniors-only evaluation after phase 2 again, every junior on the
    one shared adapter phase 2 trained beside the per-persona ones (``done.json``'s
    :data:`training.phase_sft.SHARED_COMPARISON`), as role-level stage
    :data:`evaluation.role_effects.SHARED_STAGE` on the same questions. The routed society keeps the
    per-persona adapters; only this stage serves the shared one (alias
    :data:`training.role_aliases.JUNIOR_ALIAS`). Returns its summary, or None when phase 2 trained no
    shared adapter (the profile does not ask for it)."""
    info = (plan.done.get(2) or {}).get(SHARED_COMPARISON) or {}
    if not info.get("adapter"):
        if plan.cfg.compare_shared_adapter and plan.done.get(2) is not None:
            echo(f"eval ({SHARED_STAGE}): phase 2 finished without a shared adapter (before the profile asked for "
                 "compare_shared_adapter); this run has no shared-adapter comparison")
        return None
    society = role_split_config(plan.society, per_persona=False)
    stage = plan.stage(SHARED_STAGE, "juniors", plan.juniors, society=society,
                       adapters={JUNIOR_ALIAS: Path(info["adapter"])}, echo=echo)
    return evaluate_stage(stage, plan, echo)


def evaluate_single(plan: RunPlan, stage: str, echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The one-shot control (``eval.single``): :mod:`society.baselines`' ``single`` agent -- the
    writer junior (:attr:`training.run_plan.RunPlan.writer`) drafts once, one LLM call per question
    -- on the juniors' questions, as role-level stage :data:`evaluation.control_effects.SINGLE_BASELINE`
    (``stage="baseline"``: the untrained model, fingerprinted and reusable like every stage of
    :data:`training.stage_plan.BASE_STAGES`) or :data:`evaluation.control_effects.SINGLE_TRAINED`
    (``stage="sft"``: after phase 2, the writer on its trained adapter, routed as the plan routes
    it: what a user who wants one call per question gets from this run). Resumable like every stage.

    Returns:
        The stage summary (:func:`evaluate_stage`), or None (said once) for the baseline when phase
        2 finished before it ran: the writer would be the trained one.

    Raises:
        ValueError: ``stage`` is neither ``baseline`` nor ``sft``, or the profile has ``eval.single: false``.
    """
    if stage not in ("baseline", "sft"):
        raise ValueError(f"the one-shot control is evaluated at stage 'baseline' or 'sft', not {stage!r}")
    if plan.writer is None:
        raise ValueError("eval.single is false: this run has no one-shot control")
    name = SINGLE_BASELINE if stage == "baseline" else SINGLE_TRAINED
    finished = plan.run_dir.role_eval_path(name).with_suffix(".summary.json").is_file()
    if stage == "baseline" and plan.done[2] is not None and not finished:
        echo(f"eval: no one-shot baseline ({SINGLE_BASELINE}): phase 2 finished before it was evaluated; "
             "start a new run (or reuse_from a run that has it) to have one")
        return None
    writer, alias = plan.writer
    if stage == "sft" and not finished:
        adapter = plan.trained.get(alias or "")
        echo(f"eval ({name}): the one-shot agent writes with {writer} on {alias}, "
             + (f"its phase-2 adapter {adapter}" if adapter else
                "which phase 2 gave no adapter (no admitted conversation of its persona): the base model"))
    return evaluate_stage(plan.stage(name, "single", plan.juniors, echo=echo), plan, echo)


def evaluate_noise_repeat(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The noise control (``eval.noise_repeat``): the untrained juniors on the questions of
    ``juniors_baseline`` again, every junior's sampling seed + :data:`training.role_aliases.NOISE_SEED_OFFSET`
    (:func:`training.role_aliases.with_junior_seed_offset`), as role-level stage
    :data:`evaluation.role_effects.NOISE_STAGE`; resumable like every stage. Returns its summary,
    or None (said once) when phase 2 finished before it ran: the juniors would be the trained ones."""
    finished = plan.run_dir.role_eval_path(NOISE_STAGE).with_suffix(".summary.json").is_file()
    if plan.done[2] is not None and not finished:
        echo(f"eval: no noise control ({NOISE_STAGE}): phase 2 finished before it was evaluated; start a new "
             "run to have one")
        return None
    stage = plan.stage(NOISE_STAGE, "juniors", plan.juniors, society=with_junior_seed_offset(plan.society), echo=echo)
    return evaluate_stage(stage, plan, echo)
