"""``sqlsociety train``: the four-phase pipeline, each role trained with the method that fits it.

Data flow (one run directory holds everything)::

    Spider train tasks --(phase 1: society rollouts on agl.Trainer)--> RUN_DIR/store.sqlite (spans, rewards)
    store --HierarchicalTraceAdapter.to_sft-->    juniors' conversations --(phase 2: SFT, LoRA)--> junior adapter
    store --HierarchicalTraceAdapter.to_rl-->     senior prompts         --(phase 3: GRPO, LoRA)--> senior adapter
    store --HierarchicalTraceAdapter.to_bandit--> (context, action, reward) --(phase 4: bandit)-->  supervisor policy
    adapters --> GGUF LoRA --> llama.cpp server --> the role's model alias is routed to it

Before phase 1 and after each of phases 2-4 the society is evaluated on a fixed dev subset
(``RUN_DIR/eval/<stage>.jsonl``), so every phase prints EX before/after on the same questions
(``eval.society_stages: ends``: only before phase 1 and after the last phase run). Each phase is
also judged on the role it trains, on its own larger samples (``RUN_DIR/eval/roles/<stage>.jsonl``,
role-level agents of ``society.baselines``): the juniors (``eval.junior_limit`` questions) before
and after phase 2, the senior on the juniors' chosen candidates (``eval.senior_limit``) before and
after phase 3, and the supervisor by offline replay of those held-out decisions in phase 4. With
``eval.noise_repeat`` the untrained juniors are evaluated a second time on their questions with
every junior's sampling seed + :data:`training.role_aliases.NOISE_SEED_OFFSET` (``juniors_baseline_repeat``): the noise
floor the report sets beside each junior's SFT effect. With ``eval.single`` (the default) the
one-shot control -- ``society.baselines``' ``single`` agent, the writer junior drafting once -- is
evaluated on the juniors' questions before phase 1 (``single_baseline``, the untrained model) and
after phase 2 (``single_trained``, the writer on its trained adapter), so the report sets every
society figure beside what one call per question gets (:mod:`evaluation.control_effects`). A
profile whose ``gather.split`` is its ``eval.split`` is refused (:class:`TrainConfig`).

Resume: each phase writes ``RUN_DIR/phases/<k>-<name>/done.json`` when it finishes; a run started
with ``--resume RUN_DIR`` skips finished phases (re-serving their artifacts) and phase 1 skips the
tasks already in the store, so a killed run loses no rollout and redoes no phase.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from evaluation.control_effects import SINGLE_BASELINE, SINGLE_TRAINED
from evaluation.report import write_report
from evaluation.role_effects import NOISE_STAGE
from society.candidate import Candidate
from society.config import SocietyConfig
from society.evaluate import evaluate, summarise_records
from society.policies import LLMPolicy, PolicyContext
from society.prompts import get_prompt
from tools.files import atomic_write_text, atomic_writer, read_jsonl
from tools.sampling import disjoint_draws, sample_examples
from tools.schema import schema_prompt
from tools.spider import load_examples
from training.grpo import SeniorGRPOConfig
from training.profile import TrainConfig, TrainConfigError
from training.reuse import (
    Fingerprint,
    NotReusable,
    ReuseRefused,
    copy_stage,
    copy_store,
    find_reusable,
    fingerprint_path,
    gather_files,
    model_part,
    question_rows,
    society_parts,
)
from training.role_aliases import (
    JUNIOR_ALIAS,
    SENIOR_ALIAS,
    junior_persona,
    junior_personas,
    persona_alias,
    role_kind,
    role_split_config,
    with_junior_seed_offset,
)
from training.run_dir import PHASES, STAGE_AFTER_PHASE, PhaseReport, RunDir, route_library_logs
from training.run_serving import export_gguf, serve_roles, serve_senior_adapter

logger = logging.getLogger(__name__)

#: Role-level and society stages that run the untrained model only: reusable across runs
#: (``reuse_from``, :mod:`training.reuse`).
BASE_STAGES = ("baseline", "juniors_baseline", NOISE_STAGE, "senior_baseline", SINGLE_BASELINE)


class StageReuseRefused(TrainConfigError, ReuseRefused):
    """A ``reuse_from`` run holds a stage made with other settings (:class:`training.reuse.ReuseRefused`;
    the message names the stage, the run and each differing hash); the run stops before evaluating."""


# ----------------------------------------------------------------------------- helpers


def dev_decisions(eval_jsonl: Path) -> list[dict[str, Any]]:
    """Held-out supervisor decisions from a dev-subset evaluation file (``eval/<stage>.jsonl``):
    per question the last round's candidates (features of ``training.adapter.candidate_features``),
    the logged action and each candidate's own EX as ``candidate_rewards`` (full information, so
    any policy's choice is scored exactly). Questions with no candidate are left out."""
    from training.adapter import candidate_features

    out = []
    if not eval_jsonl.is_file():
        return out
    for r in read_jsonl(eval_jsonl):
        choices = r.get("choices") or []
        if not choices or not choices[-1].get("candidates"):
            continue
        ch = choices[-1]
        cands = ch["candidates"]
        action = int(ch.get("index", -1))
        if not 0 <= action < len(cands):
            continue
        roles = r.get("roles") or {}
        own = [float(bool((roles.get(c["junior"]) or {}).get("ex"))) for c in cands]
        out.append({
            "task_id": r.get("question_id"), "question": r["question"], "db_path": r["db_path"],
            "candidates": candidate_features(cands), "raw_candidates": cands,
            "action": action, "policy": ch.get("policy", ""), "candidate_rewards": own,
            "propensity": float((ch.get("info") or {}).get("propensity", 1.0) or 1.0), "reward": own[action],
        })
    return out


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


def dev_subset(cfg: TrainConfig, limit: int | None = None) -> list[Any]:
    """The fixed dev subset: ``limit`` (default ``cfg.eval.limit``) examples sampled with
    ``cfg.eval.seed`` across the split's databases, in file order."""
    return sample_examples(load_examples(cfg.data_dir, cfg.eval.split), limit or cfg.eval.limit, cfg.eval.seed)


# ----------------------------------------------------------------------------- the pipeline


class TrainingPipeline:
    """Runs phases 1-4 of a :class:`TrainConfig` into a run directory, resumably.

    Args:
        config: the training profile.
        run_dir: the run directory (created; an existing one is resumed).
        phases: which phases to run (subset of 1-4); earlier finished phases are re-served from
            their artifacts, unfinished earlier phases needed by a later one raise.
        echo: called with one line of progress text per event (the CLI prints it with Rich).
        read_only: only read the run directory (``roles``/``eval``/``ask --run``): nothing is
            created in it and no ``config.yaml`` is written.

    Raises:
        TrainConfigError: bad profile or phase selection.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, phases: set[int] | None = None,
                 echo: Callable[[str], None] = print, read_only: bool = False) -> None:
        self.cfg = config
        self.dir = RunDir(run_dir, create=not read_only)
        self.phases = set(phases or PHASES)
        bad = self.phases - set(PHASES)
        if bad:
            raise TrainConfigError(f"--phases {sorted(bad)} unknown; use a comma list of 1,2,3,4")
        self.echo = echo
        self.reports: list[PhaseReport] = []
        cfg_file = self.dir.root / "config.yaml"
        if not read_only and not cfg_file.exists():
            cfg_file.write_text(config.to_yaml())

    # -- society with the trained parts routed in -------------------------------------------------
    def society(self) -> Any:
        """The society config as the current stage runs it: the juniors and the senior on aliases of
        their own (:func:`role_split_config`; one per junior persona when the juniors' adapters are
        per persona, :meth:`junior_mode`) and, after phase 4, the bandit supervisor."""
        sc = role_split_config(SocietyConfig.load(self.cfg.society_path()),
                               per_persona=self.junior_mode() == "per_persona")
        bandit = self.dir.done(4)
        if bandit:
            roles = [r.model_copy(update={"policy": "bandit", "options": {**r.options, "path": bandit["policy"]}})
                     if role_kind(r.type) == "supervisor" else r for r in sc.roles]
            sc = sc.model_copy(update={"roles": roles})
        return sc

    def _senior_stop(self) -> list[str] | None:
        """The stop strings of the society's (first enabled) senior role, or None."""
        for r in self.society().roles:
            if role_kind(r.type) == "senior" and r.enabled:
                return list(r.sampling.stop) if r.sampling.stop else None
        return None

    def endpoints(self, stack: ExitStack, society: Any) -> dict[str, Any]:
        """The servers the current stage needs, alias -> ``Endpoint`` (:func:`training.run_serving.serve_roles`
        with the adapters of the finished phases and VERL's trained senior)."""
        return serve_roles(stack, society, self.cfg, self.dir.root, self.trained_adapters(),
                           senior_model=(self.dir.done(3) or {}).get("model"))

    def junior_mode(self) -> str:
        """``shared`` or ``per_persona`` (:data:`training.role_aliases.JUNIOR_ADAPTER_MODES`): what a finished phase 2
        trained (its ``done.json``; one written before the choice existed: ``shared``), else the
        profile's ``junior_adapters``."""
        done = self.dir.done(2)
        if done is not None:
            return str(done.get("junior_adapters") or "shared")
        return self.cfg.junior_adapters

    def trained_adapters(self) -> dict[str, Path]:
        """Role alias -> PEFT adapter directory of the finished phases 2 (juniors: one alias, or one
        per persona that had rows to train on) and 3 (senior)."""
        out = {}
        done = self.dir.done(2)
        if done and done.get("junior_adapters") == "per_persona":
            for persona, info in (done.get("adapters") or {}).items():
                if info.get("adapter"):
                    out[persona_alias(persona)] = Path(info["adapter"])
        elif done and done.get("adapter"):
            out[JUNIOR_ALIAS] = Path(done["adapter"])
        done = self.dir.done(3)
        if done and done.get("adapter"):
            out[SENIOR_ALIAS] = Path(done["adapter"])
        return out

    # -- stages -------------------------------------------------------------------------------------
    def evaluate_stage(self, stage: str, *, agent: str = "society", examples: list[Any] | None = None,
                       given_sql: dict[str, str | None] | None = None, society: Any | None = None) -> dict[str, Any]:
        """Evaluate the current society (or a role-level ``agent``: ``juniors``, ``senior``) on the fixed
        dev subset (or ``examples``); cached in ``eval/<stage>.jsonl`` (role-level agents:
        ``eval/roles/<stage>.jsonl``) with a ``.summary.json`` beside it, so a resumed run does not
        evaluate a finished stage again. ``society``: the config to run instead of :meth:`society`
        (the noise control's shifted seeds, :func:`with_junior_seed_offset`).

        Each question's record is appended to ``<stage>.partial.jsonl`` as it finishes, so a stage
        stopped part-way (a dead server, Ctrl-C, a killed process) keeps its finished questions:
        the resumed stage runs only the others, and the summary covers all of them (its ``seconds``
        adds up the attempts; ``resumed`` counts the questions taken from earlier attempts).

        A stage of the untrained model (:data:`BASE_STAGES`, no trained part routed in) is
        fingerprinted (:meth:`stage_fingerprint`, written to ``<stage>.fingerprint.json``); with
        ``reuse_from`` it is taken from the first earlier run that has it when every hash matches
        (:func:`training.reuse.find_reusable`; ``<stage>.reused.json`` says from where).

        Raises:
            training.reuse.ReuseRefused: a ``reuse_from`` run has the stage with another hash.
        """
        path = self.dir.eval_path(stage) if agent == "society" else self.dir.role_eval_path(stage)
        summary_path = path.with_suffix(".summary.json")
        if summary_path.is_file():
            return json.loads(summary_path.read_text())
        examples = dev_subset(self.cfg) if examples is None else examples
        society = self.society() if society is None else society
        fp = self.stage_fingerprint(stage, agent, society, examples, given_sql)
        if fp is not None and self.cfg.reuse_from:
            match = self._find_reusable(fp, role_level=agent != "society")
            if match is not None:
                out = copy_stage(match, path)
                path.with_suffix(".partial.jsonl").unlink(missing_ok=True)
                self.echo(f"EX ({stage}) = {100 * out['ex']:.2f}% on {out['n']} dev questions, reused from "
                          f"{match.run_dir} (model, config, prompts, sampling and questions hashes all match)")
                return out
            self.echo(f"eval ({stage}): no run in reuse_from has this stage; evaluating it here")
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

        if earlier:
            self.echo(f"eval ({stage}): {len(earlier)} of {len(examples)} questions kept from an earlier attempt "
                      f"({partial.name}); running the other {len(todo)}")
        with ExitStack() as stack:
            eps = self.endpoints(stack, society) if todo else {}  # no server when every question is kept
            bar = stack.enter_context(
                Progress(
                    TextColumn(f"[bold]eval ({stage})[/bold]"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[ex]}"),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),
                    transient=False,
                )
            )
            task = bar.add_task(stage, total=len(examples), completed=len(earlier), ex="")
            out_f = stack.enter_context(partial.open("a", encoding="utf-8"))

            def on_result(r: dict[str, Any]) -> None:
                line = {**r, "stage": stage, "stage_seconds": earlier_seconds + time.perf_counter() - t0}
                out_f.write(json.dumps(line, default=str) + "\n")
                out_f.flush()
                recs.append(r)
                ex = sum(bool(x.get("match")) for x in recs) / len(recs)
                bar.update(task, advance=1, ex=f"EX {100 * ex:.1f}%")

            if todo:
                evaluate(todo, society, agent=agent, concurrency=self.cfg.eval.concurrency, endpoints=eps,
                         on_result=on_result, given_sql=given_sql)
        order = {str(e.id): i for i, e in enumerate(examples)}
        recs.sort(key=lambda r: order[str(r["question_id"])])
        seconds = earlier_seconds + time.perf_counter() - t0
        summary = summarise_records(agent, recs, seconds)
        with atomic_writer(path) as f:
            for r in recs:
                r = {k: v for k, v in r.items() if k != "stage_seconds"}
                f.write(json.dumps({**r, "stage": stage}, default=str) + "\n")
        out = {"stage": stage, "ex": summary.ex, "n": len(recs), "seconds": seconds, "resumed": len(earlier),
               **{k: v for k, v in summary.model_dump().items() if k not in {"ex", "run_dir"}}}
        if fp is not None:
            atomic_write_text(fingerprint_path(path), json.dumps(fp.to_json(), indent=2) + "\n")
        atomic_write_text(summary_path, json.dumps(out, indent=2, default=str))
        partial.unlink(missing_ok=True)
        what = "dev questions" if agent == "society" else f"dev questions ({agent} only)"
        self.echo(f"EX ({stage}) = {100 * summary.ex:.2f}% on {len(recs)} {what}")
        return out

    def _find_reusable(self, fp: Fingerprint, *, role_level: bool = False, where: Any = None) -> Any:
        """:func:`training.reuse.find_reusable` over ``reuse_from``, a refusal raised as
        :class:`StageReuseRefused` (a :class:`TrainConfigError`, which the CLI reports)."""
        try:
            return find_reusable(fp, self.cfg.reuse_from, role_level=role_level, where=where)
        except ReuseRefused as e:
            raise StageReuseRefused(str(e)) from None
        except FileNotFoundError as e:
            raise TrainConfigError(f"{e}; fix reuse_from in the profile") from None

    def check_reuse(self) -> None:
        """Before anything runs: refuse (:class:`StageReuseRefused`) when a ``reuse_from`` run holds a
        stage this run would evaluate on the untrained model -- the society baseline, the juniors-only
        baseline, its noise repeat and the one-shot baseline -- made with other settings, so a
        mismatch found at a later stage costs no evaluation first. (The senior-only baseline's inputs
        come from the juniors' baseline, so it is checked when it runs.) Nothing when ``reuse_from``
        is empty."""
        if not self.cfg.reuse_from:
            return
        e = self.cfg.eval
        society = self.society()
        stages: list[tuple[str, str, list[Any], Any]] = [("baseline", "society", dev_subset(self.cfg), society)]
        if e.junior_limit:
            juniors = dev_subset(self.cfg, e.junior_limit)
            stages.append(("juniors_baseline", "juniors", juniors, society))
            if e.noise_repeat:
                stages.append((NOISE_STAGE, "juniors", juniors, with_junior_seed_offset(society)))
        if e.single:
            stages.append((SINGLE_BASELINE, "single", self.single_examples(), society))
        for stage, agent, examples, soc in stages:
            path = self.dir.eval_path(stage) if agent == "society" else self.dir.role_eval_path(stage)
            if path.with_suffix(".summary.json").is_file():
                continue
            fp = self.stage_fingerprint(stage, agent, soc, examples)
            if fp is not None:
                self._find_reusable(fp, role_level=agent != "society")
        if 1 in self.phases and self.dir.done(1) is None and not self.dir.store.exists():
            fp = self.gather_fingerprint()
            if fp is not None:
                self._find_reusable(fp, where=gather_files)

    def gather_tasks(self) -> tuple[list[Any], list[Any]]:
        """Phase 1's train questions: (the society's ``gather.limit`` tasks, the juniors-only
        ``gather.junior_limit`` tasks), disjoint. In file order after ``gather.offset``, or with
        ``gather.sample_seed`` one random draw across all the split's databases
        (:func:`tools.sampling.disjoint_draws`; ``offset`` is then ignored). Either list may be
        shorter when the split runs out."""
        g = self.cfg.gather
        examples = load_examples(self.cfg.data_dir, g.split)
        if g.sample_seed is not None:
            tasks, jtasks = disjoint_draws(examples, [g.limit, g.junior_limit], seed=g.sample_seed)
            return tasks, jtasks
        end = g.offset + g.limit
        return examples[g.offset:end], examples[end:end + g.junior_limit]

    def gather_fingerprint(self) -> Fingerprint | None:
        """The content hashes phase 1's rollouts depend on (:mod:`training.reuse`): the model, the
        society config with the gather settings that change what is drawn (``epsilon``,
        ``junior_resamples``, ``junior_temperature``, ``rationalize``) and the reward settings, the
        prompts, the sampling, and the train questions (the society's tasks and the juniors-only
        tasks, in order). None when a trained part is routed in or the model cannot be hashed."""
        if self.trained_adapters() or self.dir.done(4) is not None:
            return None
        g = self.cfg.gather
        society = self.society()
        model = self._model_part(society, "phase 1", "gathering here")
        if model is None:
            return None
        tasks, jtasks = self.gather_tasks()
        parts = society_parts(society, tasks + jtasks, model=model)
        parts["config"] = {"society": parts["config"], "reward": self.cfg.as_written("reward"),
                           "gather": {"epsilon": g.epsilon, "junior_resamples": g.junior_resamples,
                                      "junior_temperature": g.junior_temperature, "rationalize": g.rationalize}}
        parts["questions"] = {"society": question_rows(tasks), "juniors_only": question_rows(jtasks)}
        return Fingerprint.of("gather", "society+juniors", parts)

    def _model_part(self, society: Any, what: str, instead: str) -> Any:
        """:func:`training.reuse.model_part` of ``society`` under this profile's engine, or None when the
        model cannot be hashed (said when ``reuse_from`` is set: ``"<what>: not reusable (...); <instead>"``)."""
        try:
            return model_part(society, engine=self.cfg.serving.engine)
        except NotReusable as e:
            if self.cfg.reuse_from:
                self.echo(f"{what}: not reusable ({e}); {instead}")
            return None

    def stage_fingerprint(self, stage: str, agent: str, society: Any, examples: list[Any],
                          given_sql: dict[str, str | None] | None = None) -> Fingerprint | None:
        """The content hashes a stage of the untrained model depends on (:mod:`training.reuse`), or
        None when the stage is not one of :data:`BASE_STAGES`, a trained part is routed in (phase 2,
        3 or 4 finished), or a part cannot be hashed (a remote model, ``serving.engine: vllm``:
        said once when ``reuse_from`` is set)."""
        if stage not in BASE_STAGES or self.trained_adapters() or self.dir.done(4) is not None:
            return None
        model = self._model_part(society, f"eval ({stage})", "evaluating it here")
        if model is None:
            return None
        return Fingerprint.of(stage, agent, society_parts(society, examples, given_sql=given_sql, model=model))

    def _senior_inputs(self) -> tuple[list[Any], dict[str, str | None]]:
        """The senior-only evaluation's fixed inputs: the first ``eval.senior_limit`` questions of the
        juniors' sample whose baseline juniors produced a chosen candidate, with that candidate's SQL."""
        chosen = {}
        path = self.dir.role_eval_path("juniors_baseline")
        for r in read_jsonl(path) if path.is_file() else []:
            if r.get("pred_sql"):
                chosen[str(r["question_id"])] = r["pred_sql"]
        pool = [e for e in dev_subset(self.cfg, self.cfg.eval.junior_limit) if e.id in chosen]
        pool = pool[: self.cfg.eval.senior_limit]
        return pool, {e.id: chosen[e.id] for e in pool}

    def evaluate_roles(self, stage: str) -> None:
        """The role-level evaluations of ``stage`` (``baseline``: juniors, their noise-control repeat
        when ``eval.noise_repeat``, senior, then the one-shot control when ``eval.single``; ``sft``: the
        juniors, then the one-shot control; ``grpo``: the senior), each on its own fixed sample; nothing
        when its limit is 0 (or ``eval.single`` is false)."""
        e = self.cfg.eval
        if stage == "baseline":
            # a resumed run whose profile gained a role evaluation after the phase it judges: the
            # "baseline" role would already be the trained one, so it is not evaluated (said once)
            for k, name, limit in ((2, "juniors", e.junior_limit), (3, "senior", e.senior_limit)):
                if limit and self.dir.done(k) and not self.dir.role_eval_path(f"{name}_baseline").is_file():
                    self.echo(f"eval: no {name}-only baseline: phase {k} finished before it was evaluated; start a "
                              "new run to judge that phase on its role")
                    return
        if e.junior_limit and stage in ("baseline", "sft"):
            self.evaluate_stage(f"juniors_{stage}", agent="juniors", examples=dev_subset(self.cfg, e.junior_limit))
        if e.noise_repeat and stage == "baseline":
            self.evaluate_noise_repeat()
        if e.senior_limit and stage in ("baseline", "grpo"):
            examples, given = self._senior_inputs()
            if examples:
                self.evaluate_stage(f"senior_{stage}", agent="senior", examples=examples, given_sql=given)
        if e.single and stage in ("baseline", "sft"):
            self.evaluate_single(stage)

    def single_examples(self) -> list[Any]:
        """The one-shot control's questions: the juniors-only stages' draw (``eval.junior_limit``
        questions, so each pairs with the juniors' pick question by question), or the society's
        ``eval.limit`` draw when the profile has no juniors-only stage."""
        return dev_subset(self.cfg, self.cfg.eval.junior_limit or None)

    def single_writer(self, society: Any | None = None) -> tuple[str, str | None]:
        """``(role, model alias)`` of the junior the one-shot ``single`` agent writes with
        (``baselines.writer`` of the society config, as :mod:`society.baselines` finds it) in
        ``society`` (default :meth:`society`: after phase 2 its alias carries the trained adapter).

        Raises:
            TrainConfigError: the writer is not an enabled junior role of the society (the message
                names the config, the junior roles it has and ``eval.single: false``).
        """
        society = self.society() if society is None else society
        name = society.baselines.writer
        insts = society.instances("junior")
        inst = next((i for i in insts if name in (i.name, i.config.name)), None)
        if inst is None:
            raise TrainConfigError(
                f"eval.single: baselines.writer {name!r} of {self.cfg.society_path()} is not an enabled junior role "
                f"(its juniors: {[i.name for i in insts]}); set baselines.writer to one of them, or eval.single: "
                "false")
        return inst.config.name, inst.config.model

    def evaluate_single(self, stage: str) -> dict[str, Any] | None:
        """The one-shot control (``eval.single``): :mod:`society.baselines`' ``single`` agent -- the
        writer junior (:meth:`single_writer`) drafts once, one LLM call per question -- on
        :meth:`single_examples`, as role-level stage :data:`evaluation.control_effects.SINGLE_BASELINE`
        (``stage="baseline"``: the untrained model, fingerprinted and reusable like every stage of
        :data:`BASE_STAGES`) or :data:`evaluation.control_effects.SINGLE_TRAINED` (``stage="sft"``:
        after phase 2, the writer on its trained adapter, routed as :meth:`society` routes it: what a
        user who wants one call per question gets from this run). Resumable like every stage.

        Returns:
            The stage summary (:meth:`evaluate_stage`), or None (said once) for the baseline when
            phase 2 finished before it ran: the writer would be the trained one.

        Raises:
            ValueError: ``stage`` is neither ``baseline`` nor ``sft``.
            TrainConfigError: the writer is not an enabled junior role (:meth:`single_writer`).
        """
        if stage not in ("baseline", "sft"):
            raise ValueError(f"the one-shot control is evaluated at stage 'baseline' or 'sft', not {stage!r}")
        name = SINGLE_BASELINE if stage == "baseline" else SINGLE_TRAINED
        finished = self.dir.role_eval_path(name).with_suffix(".summary.json").is_file()
        if stage == "baseline" and self.dir.done(2) is not None and not finished:
            self.echo(f"eval: no one-shot baseline ({SINGLE_BASELINE}): phase 2 finished before it was evaluated; "
                      "start a new run (or reuse_from a run that has it) to have one")
            return None
        society = self.society()
        writer, alias = self.single_writer(society)
        if stage == "sft" and not finished:
            adapter = self.trained_adapters().get(alias or "")
            self.echo(f"eval ({name}): the one-shot agent writes with {writer} on {alias}, "
                      + (f"its phase-2 adapter {adapter}" if adapter else
                         "which phase 2 gave no adapter (no admitted conversation of its persona): the base model"))
        return self.evaluate_stage(name, agent="single", examples=self.single_examples(), society=society)

    def evaluate_noise_repeat(self) -> dict[str, Any] | None:
        """The noise control (``eval.noise_repeat``): the untrained juniors on the questions of
        ``juniors_baseline`` again, every junior's sampling seed + :data:`training.role_aliases.NOISE_SEED_OFFSET`
        (:func:`with_junior_seed_offset`), as role-level stage
        :data:`evaluation.role_effects.NOISE_STAGE`; resumable like every stage. Returns its summary,
        or None (said once) when phase 2 finished before it ran: the juniors would be the trained ones."""
        finished = self.dir.role_eval_path(NOISE_STAGE).with_suffix(".summary.json").is_file()
        if self.dir.done(2) is not None and not finished:
            self.echo(f"eval: no noise control ({NOISE_STAGE}): phase 2 finished before it was evaluated; start a new "
                      "run to have one")
            return None
        return self.evaluate_stage(NOISE_STAGE, agent="juniors",
                                   examples=dev_subset(self.cfg, self.cfg.eval.junior_limit),
                                   society=with_junior_seed_offset(self.society()))

    # -- phases -------------------------------------------------------------------------------------
    def phase1_gather(self) -> dict[str, Any]:
        """Phase 1: the baseline society over ``gather.limit`` train tasks into the persistent store."""
        from evaluation.tracing.store import task_id_of  # noqa: F401  (documents where task ids come from)
        from training.gather import GatherRun, gather

        g = self.cfg.gather
        tasks, jtasks = self.gather_tasks()
        from training.hooks import MetricsHook

        society = self.society()
        juniors: dict[str, Any] = {}
        fp = self.gather_fingerprint()
        reused = None
        if fp is not None and self.cfg.reuse_from and not self.dir.store.exists():
            match = self._find_reusable(fp, where=gather_files)
            if match is not None:
                reused = copy_store(match, self.dir.root)
                self.echo(f"phase 1: the store of {match.run_dir} reused (model, config, prompts, sampling and train "
                          "questions hashes all match); its tasks are skipped below")
            else:
                self.echo("phase 1: no run in reuse_from has a finished phase 1; gathering here")
        with ExitStack() as stack:
            eps = self.endpoints(stack, society)
            hook = stack.enter_context(MetricsHook(self.dir.metrics, phase="1-gather", run_id=self.dir.root.name))

            def run(task_ids: list[str], **kw: Any) -> Any:
                return gather(g, GatherRun(run_dir=self.dir.root, task_ids=task_ids, society_config=society,
                                           data_dir=self.cfg.data_dir, reward=self._reward_config(), endpoints=eps,
                                           hooks=[hook], **kw))

            summary = run([t.id for t in tasks])
            if g.junior_limit:
                js = run([t.id for t in jtasks], agent="juniors", task_suffix="/juniors")
                juniors["juniors_only"] = js.to_json()
                wrong = self._tasks_with_a_wrong_junior("/juniors") if g.junior_resamples else []
                juniors["resampled_tasks"] = len(wrong)
                for j in range(1, g.junior_resamples + 1):
                    rs = run(wrong, agent="juniors", task_suffix=f"/juniors#{j}",
                             junior_sampling={"temperature": g.junior_temperature, "seed": 1000 * j})
                    juniors[f"resample_{j}"] = rs.to_json()
            if g.rationalize:
                unsolved = self._unsolved_tasks()
                juniors["rationalized_tasks"] = len(unsolved)
                hook.set_phase("1-gather-rationalized")  # hinted rollouts: their rewards are not the policy's
                rz = run(unsolved, agent="juniors", task_suffix="/rationalized", gold_hint=True)
                juniors["rationalize"] = rz.to_json()
        with self._archive() as archive:
            stored = len(archive.rollouts(status="succeeded"))
        extra = []
        if g.junior_limit:
            extra.append(f"juniors only on {g.junior_limit} more tasks, {juniors['resampled_tasks']} of them "
                         f"resampled {g.junior_resamples}x at temperature {g.junior_temperature}")
        if g.rationalize:
            extra.append(f"{juniors['rationalized_tasks']} questions no junior solved asked again with the gold SQL "
                         "as a hint (rationalization)")
        self.echo(f"phase 1 gather: {stored} rollouts in the store ({summary.skipped} society rollouts resumed, "
                  f"{summary.run} run now, mean reward {summary.mean_reward})" + "".join(f"; {x}" for x in extra))
        if fp is not None and reused is None:
            self.dir.phase_dir(1)
            atomic_write_text(gather_files(self.dir.root)[2], json.dumps(fp.to_json(), indent=2) + "\n")
        return {"store": str(self.dir.store), **summary.to_json(), "stored_succeeded": stored, **juniors,
                **({"reused_from": reused["source_run"]} if reused else {})}

    def _unsolved_tasks(self) -> list[str]:
        """Spider ids of the train questions phase 1 drew (society rollouts, juniors-only first draws,
        rejection-sampling draws; succeeded rollouts only) on which no junior's own SQL matched gold
        in any draw: the questions STaR rationalization asks again with the gold SQL as a hint.
        Rationalization rollouts themselves are not counted, so a resumed phase 1 asks the same ones."""
        from training.adapter import trace_source

        seen: set[str] = set()
        solved: set[str] = set()
        with self._archive() as archive:
            for t in self._adapter().traces(archive):
                if t.task_id is None or trace_source(t) == "rationalized":
                    continue
                base = str(t.task_id).split("/")[0]
                seen.add(base)
                if any(t.outcomes.get(f"junior.{j}.ex") == 1 for j in t.outcomes.get("juniors") or []):
                    solved.add(base)
        return sorted(seen - solved, key=lambda x: (len(x), x))

    def _tasks_with_a_wrong_junior(self, suffix: str) -> list[str]:
        """Spider ids of the ``suffix`` rollouts (e.g. the juniors-only ones) where some junior's own
        candidate did not match gold: the tasks rejection sampling draws again."""
        out = []
        with self._archive() as archive:
            for t in self._adapter().traces(archive):
                tid = str(t.task_id or "")
                juniors = t.outcomes.get("juniors") or []
                if tid.endswith(suffix) and any(t.outcomes.get(f"junior.{j}.ex") != 1 for j in juniors):
                    out.append(tid[: -len(suffix)])
        return sorted(set(out))

    def _reward_config(self) -> Any:
        return self.cfg.reward

    def _adapter(self) -> Any:
        from training.adapter import HierarchicalTraceAdapter

        return HierarchicalTraceAdapter()

    def _archive(self) -> Any:
        from evaluation.tracing.store import RolloutArchive

        if not self.dir.store.is_file():
            raise TrainConfigError(f"{self.dir.store} does not exist: run phase 1 (gather) first, e.g. --phases 1,2")
        return RolloutArchive(self.dir.store)

    def phase2_sft(self) -> dict[str, Any]:
        """Phase 2: the juniors' conversations whose own SQL matched gold -> LoRA SFT -> GGUF LoRA served
        by llama.cpp. Writes ``sft_dataset.jsonl`` and its card ``sft_selection.json``
        (:class:`training.adapter.SftSelection`; also in ``done.json`` as ``selection``).

        ``junior_adapters: shared``: one adapter on every admitted conversation (``adapter/``);
        ``per_persona``: :meth:`train_juniors_per_persona`."""
        d = self.dir.phase_dir(2)
        with self._archive() as archive:
            sel = self._adapter().select_sft(archive, min_reward=self.cfg.adapter.sft_min_reward)
        ds = sel.dataset
        ds.to_json(str(d / "sft_dataset.jsonl"))
        atomic_write_text(d / "sft_selection.json", json.dumps(sel.summary, indent=2) + "\n")
        for line in sft_selection_lines(sel.summary):
            self.echo(line)
        if len(ds) == 0:
            raise TrainConfigError(
                f"phase 2: none of the {sel.summary['conversations']} junior conversations has an own SQL that "
                "matched gold; gather more (gather.limit, gather.junior_limit, gather.junior_resamples) or set "
                "gather.rationalize: true")
        if self.cfg.junior_adapters == "per_persona":
            return {**self.train_juniors_per_persona(ds, d), "selection": sel.summary}
        info = self._train_junior_adapter(ds, d / "adapter", "phase 2 SFT")
        return {"junior_adapters": "shared", **info, "selection": sel.summary}

    def _train_junior_adapter(self, ds: Any, out: Path, label: str) -> dict[str, Any]:
        """LoRA SFT of the base model on ``ds`` into ``out``, exported to GGUF (llama.cpp); returns
        ``adapter``, ``adapter_gguf``, ``rows``, ``steps``, ``losses``, ``seconds_per_step``."""
        from training.sft import JuniorSFTTrainer

        res = JuniorSFTTrainer(self.cfg.sft.with_values(model=self.cfg.base_model, output_dir=str(out)), ds).train()
        gguf = export_gguf(self.cfg, res.adapter_dir, res.adapter_dir / "adapter.gguf")
        self.echo(f"{label}: {res.steps} steps on {res.rows} rows, loss {res.losses[0][1]:.3f} -> "
                  f"{res.losses[-1][1]:.3f}, {res.mean_step_seconds:.1f} s/step; "
                  + (f"LoRA GGUF {gguf.name}" if gguf else "PEFT adapter served by name with vLLM"))
        return {"adapter": str(res.adapter_dir), "adapter_gguf": str(gguf) if gguf else None, "rows": res.rows,
                "steps": res.steps, "losses": res.losses, "seconds_per_step": res.mean_step_seconds}

    def train_juniors_per_persona(self, ds: Any, d: Path) -> dict[str, Any]:
        """``junior_adapters: per_persona``: one LoRA adapter per junior persona of the society
        (:func:`junior_personas`), each trained (``sft`` settings, the same for every persona) on
        that persona's own rows of ``ds`` into ``d/adapters/<alias>/`` and exported to GGUF; the
        one llama-server serves them all, each persona's requests naming its own
        (:func:`persona_alias`). A persona with no row keeps the base model (said, and recorded
        with ``adapter: None``). A row is the persona's by its ``role_instance`` (the society's
        junior instances), else by its ``persona`` column; rows of no current persona are counted
        (``rows_of_no_persona``) and not trained on.

        Args:
            ds: the SFT rows (:meth:`training.adapter.HierarchicalTraceAdapter.select_sft`'s dataset:
                ``messages``, ``role_instance``, ``persona``, ...).
            d: the phase directory.

        Returns:
            ``done.json`` fields: ``junior_adapters: per_persona``, ``adapters`` (persona -> the
            fields of one adapter, or ``{"rows": 0, "adapter": None}``), ``adapter`` None, ``rows``
            and ``steps`` summed over personas, ``seconds_per_step`` their mean.

        Raises:
            TrainConfigError: no persona has a row.
        """
        society = self.society()
        personas = junior_personas(society)
        of_instance = {i.name: junior_persona(i.config) for i in society.instances("junior")}
        rows: dict[str, list[int]] = {p: [] for p in personas}
        orphans = 0
        for i, (inst, persona) in enumerate(zip(ds["role_instance"], ds["persona"])):
            key = of_instance.get(inst) or (persona if persona in rows else None)
            if key is None:
                orphans += 1
            else:
                rows[key].append(i)
        if not any(rows.values()):
            raise TrainConfigError(f"phase 2 (junior_adapters: per_persona): none of the {len(ds)} SFT rows belongs "
                                   f"to a junior persona of the society ({personas}); check the society config")
        adapters: dict[str, dict[str, Any]] = {}
        for p in personas:
            if not rows[p]:
                self.echo(f"phase 2 SFT ({p}): no conversation of this persona had its own SQL match gold; it keeps "
                          "the base model")
                adapters[p] = {"alias": persona_alias(p), "rows": 0, "adapter": None, "adapter_gguf": None}
                continue
            info = self._train_junior_adapter(ds.select(rows[p]), d / "adapters" / persona_alias(p),
                                              f"phase 2 SFT ({p})")
            adapters[p] = {"alias": persona_alias(p), **info}
        trained = [a for a in adapters.values() if a["adapter"]]
        return {"junior_adapters": "per_persona", "adapters": adapters, "adapter": None, "adapter_gguf": None,
                "rows": sum(a["rows"] for a in trained), "steps": sum(a["steps"] for a in trained),
                "seconds_per_step": sum(a["seconds_per_step"] for a in trained) / len(trained),
                "rows_of_no_persona": orphans}

    def phase3_grpo(self) -> dict[str, Any]:
        """Phase 3: the senior's decision points -> GRPO (TRL on the CPU, VERL on a GPU) -> LoRA served.

        With ``grpo.warm_start`` (TRL path) the senior is first fine-tuned on repair pairs
        (``HierarchicalTraceAdapter.select_repair``: each wrong query of the train rollouts with a
        rewrite that matches gold -- the senior's own, else a fresh draw, else a hinted draw with
        the hint removed; :func:`training.grpo.warm_start_senior`), the repair prompts join the
        GRPO prompts, the prefilter runs before and after the warm start (``prefilter_base.json``,
        ``prefilter.json``: how many prompts have a pass rate strictly between 0 and 1 under each),
        and GRPO trains the warm start's adapter further on the prompts kept after it."""
        from training.grpo import SeniorGRPOTrainer, warm_start_senior
        from training.grpo_verl import resolve_backend

        d = self.dir.phase_dir(3)
        with self._archive() as archive:
            rl = self._adapter().to_rl(archive, reward=self.cfg.adapter.rl_reward)
        rl.prompts.to_json(str(d / "senior_prompts.jsonl"))
        with (d / "senior_triplets.jsonl").open("w") as f:
            for t in rl.triplets:
                f.write(json.dumps(t.model_dump(), default=str) + "\n")
        self.echo(f"phase 3 GRPO: {len(rl.prompts)} senior prompts, {len(rl.triplets)} triplets")
        warm_on = self.cfg.grpo.warm_start is not None
        if len(rl.prompts) == 0 and not warm_on:
            raise TrainConfigError("phase 3: the store holds no senior LLM call; check that the society config has a "
                                   "senior role and that phase 1 rollouts succeeded")
        backend = resolve_backend(self.cfg.grpo.backend)
        if backend == "verl":  # pragma: no cover - needs a GPU, verl and vLLM
            return self._phase3_verl(d, len(rl.prompts))
        stop = self.cfg.grpo.stop if "stop" in self.cfg.grpo.model_fields_set else self._senior_stop()
        cfg = self.cfg.grpo.with_values(stop=stop, backend="trl", model=self.cfg.base_model,
                                        output_dir=str(d / "adapter"))
        prompts, prefilter, warm, base_pf = rl.prompts, None, None, None
        if warm_on:
            base_pf, sel, prompts = self._prefilter(rl.prompts, cfg, repairs=True)
            sel.dataset.to_json(str(d / "repair_dataset.jsonl"))
            atomic_write_text(d / "repair_selection.json", json.dumps(sel.summary, indent=2) + "\n")
            c, k = sel.summary["cases"], sel.summary["kept"]
            self.echo(f"phase 3 warm start: {c['total']} wrong queries to repair ({c['senior']} the senior's inputs, "
                      f"{c['junior']} juniors' candidates); {k['total']} repaired ({k['own']} by the senior's own "
                      f"reply, {k['sampled']} by a fresh draw, {k['hinted']} by a hinted draw, hint removed), "
                      f"{sel.summary['unsolved']} not")
            warm = {"selection": sel.summary, "prompts": len(prompts)}
            if base_pf is not None:
                (d / "prefilter_base.json").write_text(json.dumps(base_pf.to_json(), indent=2))
                warm["prefilter_base"] = base_pf.to_json()
            if len(prompts) == 0:
                raise TrainConfigError("phase 3: no senior prompt and no wrong query to repair in the store; gather "
                                       "more rollouts")
            if len(sel.dataset) == 0:
                self.echo("phase 3 warm start: no repair pair, so GRPO starts from a fresh LoRA (raise "
                          "grpo.warm_start_samples or gather more rollouts)")
            else:
                ws = warm_start_senior(sel.dataset, cfg, d / "warm_start")
                warm.update({"adapter": str(ws.adapter_dir), "rows": ws.rows, "steps": ws.steps, "losses": ws.losses,
                             "seconds_per_step": ws.mean_step_seconds})
                self.echo(f"phase 3 warm start: SFT {ws.steps} steps on {ws.rows} repair pairs, loss "
                          f"{ws.losses[0][1]:.3f} -> {ws.losses[-1][1]:.3f}")
                cfg = cfg.with_values(init_adapter=str(ws.adapter_dir))
        if cfg.prefilter_samples:
            if warm is not None and not cfg.init_adapter:  # no warm start trained: the base senior's, measured above
                prefilter = base_pf
            else:
                prefilter = self._prefilter(prompts, cfg, adapter=cfg.init_adapter)[0]
            assert prefilter is not None
            (d / "prefilter.json").write_text(json.dumps(prefilter.to_json(), indent=2))
            who = "the warm-started senior" if cfg.init_adapter else "the base senior"
            self.echo(f"phase 3 prefilter: {prefilter.n_kept} of {prefilter.n_in} senior prompts have rewards that "
                      f"differ over {prefilter.k} samples of {who}, {prefilter.n_pass_band} a pass rate strictly "
                      f"between 0 and 1 ({prefilter.seconds:.0f} s)"
                      + ("; training on those" if prefilter.n_kept else
                         "; none does, so GRPO trains on every prompt (expect steps without advantage: gather "
                         "more rollouts or raise grpo.temperature)"))
            if warm is not None:
                warm["prefilter_warm"] = prefilter.to_json() if cfg.init_adapter else None
                before = (warm.get("prefilter_base") or {}).get("n_pass_band")
                self.echo(f"phase 3 warm start: prompts with a pass rate strictly between 0 and 1: {before} before, "
                          + (f"{prefilter.n_pass_band} after (of {prefilter.n_in})" if cfg.init_adapter else
                             f"no warm start trained (of {prefilter.n_in})"))
            if prefilter.n_kept:
                prompts = prefilter.dataset
        res = SeniorGRPOTrainer(cfg, prompts, reward_config=self._reward_config()).train()
        gguf = export_gguf(self.cfg, Path(res.adapter_dir), Path(res.adapter_dir) / "adapter.gguf")
        self.echo(f"phase 3 GRPO: {res.steps} steps, mean reward per step {res.rewards}")
        return {"adapter": str(res.adapter_dir), "adapter_gguf": str(gguf) if gguf else None,
                "prompts": len(rl.prompts), "prefilter": prefilter.to_json() if prefilter else None,
                "steps": res.steps, "rewards": res.rewards, "warm_start": warm}

    def _prefilter(self, prompts: Any, cfg: SeniorGRPOConfig, *, adapter: str | Path | None = None,
                   repairs: bool = False) -> tuple[Any, Any, Any]:
        """:func:`training.senior_reward.prefilter_prompts` with the senior as served now, sampled as GRPO samples
        (temperature, top_p, completion length, the senior's stop strings): the base model (phase 3
        has not trained it yet), or with ``adapter`` (a PEFT LoRA, e.g. the warm start's) on it.

        With ``repairs``, on the same server and first, the warm start's repair pairs are selected
        (``HierarchicalTraceAdapter.select_repair`` with ``k = warm_start_samples``) and their
        prompts added to ``prompts`` (those with the same messages are not added twice).

        Returns:
            ``(prefilter, repairs, prompts)``: the :class:`training.grpo.PrefilterResult` (None when
            ``prefilter_samples`` is 0), the ``RepairSelection`` (None without ``repairs``), and the
            prompts the prefilter ran on.
        """
        import datasets

        from training.senior_reward import SeniorReward, openai_sampler, prefilter_prompts

        society = self.society()
        senior = next(r for r in society.roles if role_kind(r.type) == "senior" and r.enabled)
        with ExitStack() as stack:
            if adapter is None:
                ep = self.endpoints(stack, society)[senior.model]
            else:
                ep = serve_senior_adapter(stack, self.cfg, self.dir.root, adapter)
            sample = openai_sampler(ep, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_tokens=cfg.max_completion_length, stop=cfg.stop, seed=cfg.seed)
            sel = None
            if repairs:
                with self._archive() as archive:
                    sel = self._adapter().select_repair(archive, sample=sample, k=cfg.warm_start_samples,
                                                        stop=cfg.stop)
                seen = {json.dumps(p, sort_keys=True) for p in prompts["prompt"]}
                extra = [i for i, p in enumerate(sel.prompts["prompt"]) if json.dumps(p, sort_keys=True) not in seen]
                prompts = datasets.concatenate_datasets([prompts.cast(sel.prompts.features),
                                                         sel.prompts.select(extra)])
            pf = None
            if cfg.prefilter_samples and len(prompts):
                pf = prefilter_prompts(prompts, sample, SeniorReward(self._reward_config(), stop=cfg.stop),
                                       cfg.prefilter_samples)
            return pf, sel, prompts

    def _phase3_verl(self, d: Path, n_prompts: int) -> dict[str, Any]:  # pragma: no cover - GPU only
        """Phase 3 on a GPU: Agent Lightning's VERL trains all of the senior's weights live on the
        gather split's tasks (the whole society runs; ``agent_match`` keeps the senior's calls),
        validated on the dev subset; the newest step's Hugging Face weights
        (:func:`training.grpo_verl.verl_trained_model`) are then served for the senior's alias by their own
        vLLM server (:meth:`_vllm_endpoints`). UNVERIFIED: never run on a GPU (see the README)."""
        from training.agent import task_from_example
        from training.grpo_verl import train_senior_verl, verl_trained_model

        if self.cfg.serving.engine != "vllm":
            raise TrainConfigError("phase 3 (VERL) trains all of the senior's weights (configs/verl_senior.yaml, "
                                   "lora_rank: 0) and vLLM serves them after the phase: set serving.engine: vllm")

        train = [task_from_example(e) for e in self.gather_tasks()[0]]
        val = [task_from_example(e) for e in dev_subset(self.cfg)]
        ckpt = d / "verl_checkpoints"
        society = self.society()
        with ExitStack() as stack:
            eps = {a: (e.base_url, e.model, e.api_key) for a, e in self.endpoints(stack, society).items()
                   if a != SENIOR_ALIAS}
            train_senior_verl(society, train, val,
                              self.cfg.grpo.with_values(backend="verl", model=self.cfg.base_model,
                                                        output_dir=str(d / "adapter")),
                              endpoints=eps, reward_config=self._reward_config(),
                              overrides={"trainer": {"default_local_dir": str(ckpt)}})
        try:
            model = verl_trained_model(ckpt)
        except FileNotFoundError as e:
            raise TrainConfigError(f"phase 3 (VERL): {e}") from e
        self.echo(f"phase 3 VERL: the trained senior {model}")
        return {"adapter": None, "adapter_gguf": None, "model": str(model), "prompts": n_prompts, "backend": "verl"}

    def phase4_bandit(self) -> dict[str, Any]:
        """Phase 4: supervisor (context, action, reward) samples from the train rollouts -> contextual
        bandit (joblib). Compared offline on held-out *dev* decisions (the baseline evaluation's
        logged candidates, never trained on) with random choice, majority vote, the logged policy
        and the LLM supervisor (asked live on the same candidates)."""
        from training.bandit import SupervisorBandit, compare_policies, replay_outcomes

        d = self.dir.phase_dir(4)
        with self._archive() as archive:
            samples = self._adapter().to_bandit(archive)
        with (d / "bandit_samples.jsonl").open("w") as f:
            for s in samples:
                f.write(json.dumps(s.to_dict(), default=str) + "\n")
        if not samples:
            raise TrainConfigError("phase 4: no supervisor decision with usable candidates in the store; gather more")
        bandit = SupervisorBandit(self.cfg.bandit).fit(samples)
        path = bandit.save(d / "policy.joblib")
        # held-out dev decisions: the juniors-only baseline's (its own larger sample) when it ran,
        # else the society baseline's; never trained on
        roles_base = self.dir.role_eval_path("juniors_baseline")
        held = dev_decisions(roles_base if roles_base.is_file() else self.dir.eval_path("baseline"))
        table = compare_policies(held, bandit) if held else []
        if held:
            with (d / "replay.jsonl").open("w") as f:
                for row in replay_outcomes(held, bandit):
                    f.write(json.dumps(row) + "\n")
        if held:
            llm = self._llm_supervisor_replay(held)
            if llm is not None:
                table.insert(3, llm)
        (self.dir.root / "bandit_comparison.json").write_text(json.dumps(table, indent=2, default=str))
        self.echo(f"phase 4 bandit: fitted on {len(samples)} train decisions -> {path.name}; held-out dev replay on "
                  f"{len(held)}: " + ", ".join(f"{r['policy']} EX {100 * r['ex']:.0f}%" for r in table))
        return {"policy": str(path), "samples": len(samples), "held_out": len(held), "comparison": table}

    def _llm_supervisor_replay(self, held: list[dict[str, Any]]) -> dict[str, Any] | None:
        """EX of the LLM supervisor policy choosing among the same held-out candidates (one model
        call per decision with more than one distinct candidate), on the base model."""
        from langchain_openai import ChatOpenAI

        society = self.society()
        sup = next((r for r in society.roles if role_kind(r.type) == "supervisor"), None)
        alias = (sup.model if sup and sup.model else None) or next(iter(society.models))
        prompt = get_prompt(sup.prompt if sup else None, "supervisor")
        vals = []
        with ExitStack() as stack:
            ep = self.endpoints(stack, society).get(alias)
            if ep is None:
                return None
            chat = ChatOpenAI(base_url=ep.base_url, model=ep.model, api_key=ep.api_key, temperature=0.0, max_tokens=8)
            for s in held:
                cands = [Candidate(**c) for c in s["raw_candidates"]]
                schema = schema_prompt(s["db_path"], compact=True, sample_rows=0)
                ctx = PolicyContext(
                    schema_text=schema,
                    ask_llm=lambda msgs: str(chat.invoke(msgs).content),
                    render_prompt=lambda text, q=s["question"], sc=schema: prompt.render(
                        question=q, schema=sc, candidates=text
                    ),
                )
                try:
                    idx = LLMPolicy().choose(s["question"], cands, ctx).index
                except Exception as e:  # noqa: BLE001 - an endpoint failure scores this decision 0
                    logger.warning("LLM supervisor replay failed on %s: %s", s["task_id"], e)
                    idx = -1
                vals.append(s["candidate_rewards"][idx] if idx >= 0 else 0.0)
        n = len(vals)
        return {"policy": "llm", "n": n, "mean_reward": sum(vals) / n, "ex": sum(v >= 1.0 for v in vals) / n,
                "note": "LLM supervisor asked live on the logged candidates (base model)"}

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> list[PhaseReport]:
        """Baseline eval, then phases in order with an eval after each of 2-4, then the report.

        Returns:
            One :class:`PhaseReport` per phase/stage (``skipped`` when resumed from ``done.json``).
        """
        steps: list[tuple[int, Callable[[], dict[str, Any]]]] = [
            (1, self.phase1_gather), (2, self.phase2_sft), (3, self.phase3_grpo), (4, self.phase4_bandit)]
        t_all = time.perf_counter()
        route_library_logs(self.dir.root / "train.log")
        self.check_reuse()
        if self.cfg.eval.single:
            self.single_writer()  # a profile whose control cannot run stops here, not hours in
        base = self.evaluate_stage("baseline")
        self.evaluate_roles("baseline")
        before = base["ex"]
        last = max(self.phases)
        for k, fn in steps:
            if k not in self.phases:
                continue
            done = self.dir.done(k)
            if done is not None:
                self.echo(f"phase {k} ({PHASES[k]}) already done in {self.dir.root}: skipped")
                self.reports.append(PhaseReport(k, PHASES[k], 0.0, done, skipped=True))
            else:
                self.echo(f"phase {k} ({PHASES[k]}) ...")
                t0 = time.perf_counter()
                info = fn()
                info["seconds"] = round(time.perf_counter() - t0, 1)
                self.dir.mark_done(k, info)
                self.reports.append(PhaseReport(k, PHASES[k], info["seconds"], info))
            if k in STAGE_AFTER_PHASE:
                self.evaluate_roles(STAGE_AFTER_PHASE[k])
                if self.cfg.eval.society_stages == "every" or k == last:
                    after = self.evaluate_stage(STAGE_AFTER_PHASE[k])["ex"]
                    self.echo(f"phase {k} ({PHASES[k]}): society EX {100 * before:.2f}% -> {100 * after:.2f}% on "
                              "the dev subset")
                    before = after
        (self.dir.root / "train_summary.json").write_text(json.dumps(
            {"profile": self.cfg.name, "wall_seconds": round(time.perf_counter() - t_all, 1),
             "phases": [r.__dict__ for r in self.reports]}, indent=2, default=str))
        self.write_report()
        return self.reports

    def write_report(self) -> Path | None:
        """Write ``report.html`` / ``report.md`` (``evaluation.report``); returns the HTML path."""
        out = write_report(self.dir.root)
        self.echo(f"report: {out}")
        return out
