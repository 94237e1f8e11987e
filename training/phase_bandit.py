"""Phase 4 of ``sqlsociety train`` (:func:`bandit_phase`): the supervisor's (context, action, reward)
samples from the train rollouts (``training.adapter.HierarchicalTraceAdapter.to_bandit``) -> a
contextual bandit (:class:`training.bandit.SupervisorBandit`, joblib), compared offline on decisions
it never trained on -- the untrained juniors' *dev* decisions (:func:`dev_decisions`) and, where
those hold too few contested ones, whole train questions held out of the fit -- with random
choice, majority vote, the logged policy and the LLM supervisor asked live on the same candidates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from society.candidate import Candidate
from society.infra import InfrastructureError, dead_servers
from society.llm import is_retryable
from society.models import ensure_model
from society.policies import LLMPolicy, PolicyContext
from society.prompts import PromptTemplate, get_prompt
from tools.files import atomic_write_text, read_jsonl
from tools.schema import schema_prompt
from tools.spider import recorded_database
from training.profile import TrainConfigError
from training.reuse import file_sha256, reused_path, sha256_json
from training.role_aliases import role_kind
from training.run_plan import RunPlan, stage_path

__all__ = ["DEV_DECISION_STAGES", "LLM_REPLAY_FILE", "LLM_REPLAY_REQUEST", "LLM_REPLAY_ROW_FIELDS", "bandit_phase",
           "dev_decisions", "held_out_dev", "llm_replay_key", "llm_replay_sources", "reused_llm_replay"]

logger = logging.getLogger(__name__)


def dev_decisions(eval_jsonl: Path) -> list[dict[str, Any]]:
    """Held-out supervisor decisions from a dev-subset evaluation file (``eval/<stage>.jsonl``):
    per question the last round's candidates (features of ``training.adapter.candidate_features``),
    the logged action and each candidate's own EX as ``candidate_rewards`` (full information, so
    any policy's choice is scored exactly). Questions with no candidate are left out; a record
    written on another machine finds its database by ``db_id`` here
    (:func:`tools.spider.recorded_database`)."""
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
            "task_id": r.get("question_id"), "question": r["question"],
            "db_path": recorded_database(r.get("db_path"), r.get("db_id")),
            "candidates": candidate_features(cands), "raw_candidates": cands,
            "action": action, "policy": ch.get("policy", ""), "candidate_rewards": own,
            "propensity": float((ch.get("info") or {}).get("propensity", 1.0) or 1.0), "reward": own[action],
        })
    return out


#: The evaluation stages whose records can hold the untrained juniors' dev decisions, in the order
#: phase 4 looks: the juniors-only baseline (its own larger sample), its noise repeat (the same
#: questions, other seeds: used when the baseline's records were kept without their candidates),
#: the society baseline.
DEV_DECISION_STAGES = (("juniors_baseline", True), ("juniors_baseline_repeat", True), ("baseline", False))


def held_out_dev(plan: RunPlan) -> tuple[str | None, list[dict[str, Any]]]:
    """The first of :data:`DEV_DECISION_STAGES` whose records yield decisions (:func:`dev_decisions`):
    ``(stage name, decisions)``; ``(None, [])`` when none does."""
    for stage, role_level in DEV_DECISION_STAGES:
        held = dev_decisions(stage_path(plan.run_dir, stage, role_level))
        if held:
            return stage, held
    return None, []


def bandit_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 4: supervisor (context, action, reward) samples from the train rollouts -> contextual
    bandit (joblib), judged offline on held-out decisions it never trained on: the untrained
    juniors' *dev* decisions (:func:`held_out_dev`) and, when those hold fewer than
    ``bandit.held_out_contested`` contested ones, whole *train* questions held out of the fit (at
    most ``bandit.held_out_max_share`` of them; :func:`training.bandit.hold_out_contested`). Each
    is scored against random choice, majority vote, the logged policy and the oracle
    (``bandit_comparison.json``: all held-out decisions; ``done.json``'s ``comparison_by_split``:
    dev and train apart); the LLM supervisor, asked live, on the dev decisions (they keep the
    candidates' full records), or its row taken from an earlier run that asked the same model the
    same things (:func:`reused_llm_replay`; ``phases/4-bandit/reused.json`` says from where).

    Raises:
        TrainConfigError: the store holds no supervisor decision with usable candidates.
    """
    from training.adapter import HierarchicalTraceAdapter
    from training.bandit import (
        SupervisorBandit,
        compare_policies,
        hold_out_contested,
        is_contested,
        replay_outcomes,
    )
    from training.gather_config import question_of

    d = plan.run_dir.phase_dir(4)
    with plan.run_dir.archive() as archive:
        samples = HierarchicalTraceAdapter().to_bandit(archive)
    if not samples:
        raise TrainConfigError("phase 4: no supervisor decision with usable candidates in the store; gather more")
    cfg = plan.cfg.bandit
    dev_stage, dev = held_out_dev(plan)
    dev_contested = sum(is_contested(s) for s in dev)
    train, held_train = hold_out_contested(samples, max(0, cfg.held_out_contested - dev_contested), seed=cfg.seed,
                                           max_share=cfg.held_out_max_share)
    held_q = {question_of(s["task_id"]) for s in held_train}
    judged = {s["task_id"] for s in held_train}
    with (d / "bandit_samples.jsonl").open("w") as f:  # every decision: trained on, judged, or neither
        for s in samples:
            split = ("train" if question_of(s.task_id) not in held_q else
                     "held_out" if s.task_id in judged else "left_out")
            f.write(json.dumps({**s.to_dict(), "split": split}, default=str) + "\n")
    if not train:
        raise TrainConfigError("phase 4: every train decision was held out; lower bandit.held_out_contested")
    bandit = SupervisorBandit(cfg).fit(train)
    path = bandit.save(d / "policy.joblib")
    held = [*({**s, "split": "dev"} for s in dev), *({**s, "split": "train"} for s in held_train)]
    table = compare_policies(held, bandit) if held else []
    by_split = {name: compare_policies(part, bandit) for name, part in (("dev", dev), ("train", held_train)) if part}
    if held:
        with (d / "replay.jsonl").open("w") as f:
            for row, s in zip(replay_outcomes(held, bandit), held):
                f.write(json.dumps({**row, "split": s["split"]}) + "\n")
    if dev:
        llm = _llm_supervisor_replay(plan, dev, dev_stage, echo)
        if llm is not None:
            by_split["dev"].insert(3, llm)
            table.insert(3, llm if not held_train else
                         {**llm, "note": f"{llm['note']}; on the {len(dev)} dev decisions only"})
    (plan.run_dir.root / "bandit_comparison.json").write_text(json.dumps(table, indent=2, default=str))
    n_contested = sum(is_contested(s) for s in held)
    echo(f"phase 4 bandit: fitted on {len(train)} train decisions -> {path.name}; held out {len(held)} decisions "
         f"({n_contested} contested): {len(dev)} dev from {dev_stage or 'no stage'} ({dev_contested} contested), "
         f"{len(held_train)} on {len({s['task_id'] for s in held_train})} train questions left out of the fit; "
         + ", ".join(f"{r['policy']} EX {100 * r['ex']:.0f}%" for r in table))
    return {"policy": str(path), "samples": len(train), "held_out": len(held), "held_out_contested": n_contested,
            "held_out_dev": len(dev), "held_out_dev_stage": dev_stage, "held_out_train": len(held_train),
            "comparison": table, "comparison_by_split": by_split}


#: Phase 4's record of the LLM supervisor's replay (in ``phases/4-bandit``): ``key``
#: (:func:`llm_replay_key`, None when the model cannot be hashed), ``row`` (the comparison row),
#: ``choices`` (per decision: ``task_id``, the chosen ``index``, -1 when refused, and its ``reward``),
#: ``seconds``; ``reused_from`` when it was taken from another run.
LLM_REPLAY_FILE = "llm_replay.json"

#: The request settings of the LLM supervisor's replay (greedy, a short answer: the candidate's number).
LLM_REPLAY_REQUEST = {"temperature": 0.0, "max_tokens": 8}


def llm_replay_key(model: Mapping[str, Any], prompt: PromptTemplate, decisions: Sequence[Mapping[str, Any]],
                   schemas: Mapping[str, str]) -> str:
    """What the LLM supervisor's replay depends on, as a sha256 (hex): the served model (``model``:
    engine and the GGUF file's sha256), the supervisor's prompt texts, :data:`LLM_REPLAY_REQUEST`,
    and per decision in order its task id, question, the schema text shown (``schemas``: database
    path -> text; the text is hashed, not the path) and the candidates as logged with each one's
    reward. Database paths are left out, so a run on another machine or checkout gets the same key.
    Not hashed, as the answer-parsing code of the reused stages (:mod:`training.reuse`): the code
    that formats the candidates into the prompt and reads the model's answer (``LLMPolicy``).

    Args:
        model: ``{"engine": ..., "sha256": ...}`` of what serves the supervisor's alias.
        prompt: the supervisor's prompt template.
        decisions: :func:`dev_decisions` rows (``task_id``, ``question``, ``db_path``,
            ``raw_candidates``, ``candidate_rewards``).
        schemas: database path (each decision's ``db_path``) -> the schema text the replay shows.

    Raises:
        KeyError: a decision's database has no schema text in ``schemas``.

    >>> d = [{"task_id": "dev-1", "question": "How many?", "db_path": "/a/concert_singer.sqlite",
    ...       "raw_candidates": [{"sql": "SELECT 1"}], "candidate_rewards": [1.0]}]
    >>> m, p = {"engine": "llama.cpp", "sha256": "ab"}, PromptTemplate("s", "u")
    >>> sch = {"/a/concert_singer.sqlite": "t(a)", "/b/concert_singer.sqlite": "t(a)"}
    >>> k = llm_replay_key(m, p, d, sch)
    >>> k == llm_replay_key(m, p, [{**d[0], "db_path": "/b/concert_singer.sqlite"}], sch)  # another machine
    True
    >>> k == llm_replay_key({**m, "sha256": "cd"}, p, d, sch), k == llm_replay_key(m, PromptTemplate("s", "v"), d, sch)
    (False, False)
    >>> k == llm_replay_key(m, p, [{**d[0], "raw_candidates": [{"sql": "SELECT 2"}]}], sch)
    False
    """
    rows = [[str(s["task_id"]), str(s["question"]), sha256_json(schemas[s["db_path"]]),
             list(s["raw_candidates"]), list(s["candidate_rewards"])] for s in decisions]
    return sha256_json({"model": dict(model), "prompt": [prompt.system, prompt.user],
                        "request": LLM_REPLAY_REQUEST, "decisions": rows})


def llm_replay_sources(run_root: Path, reuse_from: Sequence[str | Path], dev_stage_file: Path | None) -> list[Path]:
    """Where phase 4 looks for an LLM-supervisor replay record to keep or take, in order: this run
    (a phase 4 resumed after its replay finished), each ``reuse_from`` run, and the run the dev
    decisions' stage was taken from (its ``<stage>.reused.json``'s ``source_run``); each once.

    Args:
        run_root: this run's directory.
        reuse_from: the profile's ``reuse_from`` runs.
        dev_stage_file: the records the dev decisions were read from (:func:`held_out_dev`), or None.

    Returns:
        Run directories in the order they are looked in.

    >>> llm_replay_sources(Path("/r/new"), ["/r/a", "/r/new"], None)
    [PosixPath('/r/new'), PosixPath('/r/a')]
    """
    out = [Path(run_root), *(Path(p) for p in reuse_from)]
    info = reused_path(dev_stage_file) if dev_stage_file is not None else None
    if info is not None and info.is_file():
        try:
            src = json.loads(info.read_text()).get("source_run")
        except (OSError, ValueError, AttributeError):
            src = None
        if src:
            out.append(Path(src))
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


#: The fields a recorded replay's comparison row must have to be taken.
LLM_REPLAY_ROW_FIELDS = ("policy", "n", "mean_reward", "ex", "note")


def reused_llm_replay(sources: Sequence[Path], key: str) -> tuple[Path, dict[str, Any]] | None:
    """The first :data:`LLM_REPLAY_FILE` under ``<source>/phases/4-bandit`` made with ``key``.

    Args:
        sources: run directories in order (:func:`llm_replay_sources`).
        key: this run's :func:`llm_replay_key`.

    Returns:
        ``(its path, the record)``, or None when no source has one: unreadable records, records made
        with another key and rows lacking one of :data:`LLM_REPLAY_ROW_FIELDS` are passed over, and
        the replay then runs here.
    """
    for src in sources:
        f = Path(src) / "phases" / "4-bandit" / LLM_REPLAY_FILE
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        row = rec.get("row") if isinstance(rec, dict) else None
        if isinstance(row, dict) and rec.get("key") == key and all(k in row for k in LLM_REPLAY_ROW_FIELDS):
            return f, rec
    return None


def _served_model(plan: RunPlan, alias: str) -> dict[str, Any] | None:
    """``{"engine", "sha256"}`` of the GGUF file serving ``alias`` on llama.cpp; None when it cannot
    be hashed (another engine, a remote endpoint) or a trained adapter is routed to it (not the base
    model)."""
    spec = plan.society.models.get(alias)
    if plan.cfg.serving.engine != "llama.cpp" or spec is None or not spec.embedded or alias in plan.trained:
        return None
    return {"engine": "llama.cpp", "sha256": file_sha256(ensure_model(spec.embedded))}


def _llm_supervisor_replay(plan: RunPlan, held: list[dict[str, Any]], dev_stage: str | None,
                           echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """EX of the LLM supervisor policy choosing among the same held-out candidates (one model
    call per decision with more than one distinct candidate), on the base model; kept from this run
    or taken from an earlier one when its :func:`llm_replay_key` is equal (:func:`reused_llm_replay`),
    else asked and recorded in :data:`LLM_REPLAY_FILE`."""
    from langchain_openai import ChatOpenAI

    society = plan.society
    sup = next((r for r in society.roles if role_kind(r.type) == "supervisor"), None)
    alias = (sup.model if sup and sup.model else None) or next(iter(society.models))
    prompt = get_prompt(sup.prompt if sup else None, "supervisor")
    d = plan.run_dir.phase_dir(4)
    schemas: dict[str, str] = {}
    for s in held:
        if s["db_path"] not in schemas:
            schemas[s["db_path"]] = schema_prompt(s["db_path"], compact=True, sample_rows=0)
    model = _served_model(plan, alias)
    key = llm_replay_key(model, prompt, held, schemas) if model is not None else None
    role_level = dict(DEV_DECISION_STAGES).get(dev_stage or "")
    stage_file = None if role_level is None else stage_path(plan.run_dir, dev_stage, role_level)
    found = reused_llm_replay(llm_replay_sources(plan.run_dir.root, plan.cfg.reuse_from, stage_file), key) \
        if key is not None else None
    if found is not None:
        path, rec = found
        if path.parent == d:
            echo(f"phase 4: kept the LLM supervisor's replay finished before the stop ({LLM_REPLAY_FILE})")
        else:
            src_run = path.parent.parent.parent
            rec = {**rec, "reused_from": str(src_run),
                   "row": {**rec["row"], "note": f"{rec['row']['note']}; recorded in {src_run}, not asked again"}}
            atomic_write_text(d / LLM_REPLAY_FILE, json.dumps(rec, indent=2) + "\n")
            atomic_write_text(d / "reused.json", json.dumps({
                "stage": "phase 4 LLM supervisor replay", "source_run": str(src_run), "source_file": str(path),
                "n": rec["row"].get("n"), "unit": "decisions", "source_seconds": rec.get("seconds")}, indent=2) + "\n")
            echo(f"phase 4: the LLM supervisor's replay on {rec['row'].get('n')} dev decisions taken from {src_run} "
                 "(same model file, prompt and decisions); not asked again")
        return rec["row"]
    (d / "reused.json").unlink(missing_ok=True)  # an earlier attempt's, taken under another key
    t0 = time.perf_counter()
    choices: list[dict[str, Any]] = []
    refused = 0
    with ExitStack() as stack:
        ep = plan.serve(stack, society).get(alias)
        if ep is None:
            return None
        chat = ChatOpenAI(base_url=ep.base_url, model=ep.model, api_key=ep.api_key, **LLM_REPLAY_REQUEST)
        for s in held:
            cands = [Candidate(**c) for c in s["raw_candidates"]]
            schema = schemas[s["db_path"]]
            ctx = PolicyContext(
                schema_text=schema,
                ask_llm=lambda msgs: str(chat.invoke(msgs).content),
                render_prompt=lambda text, q=s["question"], sc=schema: prompt.render(
                    question=q, schema=sc, candidates=text
                ),
            )
            try:
                idx = LLMPolicy().choose(s["question"], cands, ctx).index
            except Exception as e:  # noqa: BLE001 - sorted below: the endpoint's failure or the request's
                dead = dead_servers()
                if dead or is_retryable(e):  # the endpoint, not the policy: stop (resumable), score nothing
                    raise (dead[0] if dead else InfrastructureError(
                        f"phase 4, LLM supervisor replay on {s['task_id']}: the endpoint failed ({e}); nothing "
                        "was recorded; check the server and resume")) from e
                logger.warning("LLM supervisor replay: the request for %s was refused (%s); scored 0", s["task_id"], e)
                refused += 1
                idx = -1
            choices.append({"task_id": s["task_id"], "index": idx,
                            "reward": s["candidate_rewards"][idx] if idx >= 0 else 0.0})
    vals = [c["reward"] for c in choices]
    n = len(vals)
    row = {"policy": "llm", "n": n, "mean_reward": sum(vals) / n, "ex": sum(v >= 1.0 for v in vals) / n,
           "note": "LLM supervisor asked live on the logged candidates (base model)"
                   + (f"; {refused} requests refused by the server (e.g. over the context), scored 0"
                      if refused else "")}
    atomic_write_text(d / LLM_REPLAY_FILE, json.dumps({"key": key, "row": row, "dev_stage": dev_stage,
                                                       "seconds": round(time.perf_counter() - t0, 1),
                                                       "choices": choices}, indent=2) + "\n")
    return row
