"""Phase 4 of ``sqlsociety train`` (:func:`bandit_phase`): the supervisor's (context, action, reward)
samples from the train rollouts (``training.adapter.HierarchicalTraceAdapter.to_bandit``) -> a
contextual bandit (:class:`training.bandit.SupervisorBandit`, joblib), compared offline on held-out
*dev* decisions (:func:`dev_decisions`) with random choice, majority vote, the logged policy and the
LLM supervisor asked live on the same candidates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from society.candidate import Candidate
from society.policies import LLMPolicy, PolicyContext
from society.prompts import get_prompt
from tools.files import read_jsonl
from tools.schema import schema_prompt
from training.profile import TrainConfigError
from training.role_aliases import role_kind
from training.run_plan import RunPlan

__all__ = ["bandit_phase", "dev_decisions"]

logger = logging.getLogger(__name__)


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


def bandit_phase(plan: RunPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Phase 4: supervisor (context, action, reward) samples from the train rollouts -> contextual
    bandit (joblib). Compared offline on held-out *dev* decisions (the baseline evaluation's
    logged candidates, never trained on) with random choice, majority vote, the logged policy
    and the LLM supervisor (asked live on the same candidates)."""
    from training.adapter import HierarchicalTraceAdapter
    from training.bandit import SupervisorBandit, compare_policies, replay_outcomes

    d = plan.run_dir.phase_dir(4)
    with plan.run_dir.archive() as archive:
        samples = HierarchicalTraceAdapter().to_bandit(archive)
    with (d / "bandit_samples.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps(s.to_dict(), default=str) + "\n")
    if not samples:
        raise TrainConfigError("phase 4: no supervisor decision with usable candidates in the store; gather more")
    bandit = SupervisorBandit(plan.cfg.bandit).fit(samples)
    path = bandit.save(d / "policy.joblib")
    # held-out dev decisions: the juniors-only baseline's (its own larger sample) when it ran,
    # else the society baseline's; never trained on
    roles_base = plan.run_dir.role_eval_path("juniors_baseline")
    held = dev_decisions(roles_base if roles_base.is_file() else plan.run_dir.eval_path("baseline"))
    table = compare_policies(held, bandit) if held else []
    if held:
        with (d / "replay.jsonl").open("w") as f:
            for row in replay_outcomes(held, bandit):
                f.write(json.dumps(row) + "\n")
    if held:
        llm = _llm_supervisor_replay(plan, held)
        if llm is not None:
            table.insert(3, llm)
    (plan.run_dir.root / "bandit_comparison.json").write_text(json.dumps(table, indent=2, default=str))
    echo(f"phase 4 bandit: fitted on {len(samples)} train decisions -> {path.name}; held-out dev replay on "
              f"{len(held)}: " + ", ".join(f"{r['policy']} EX {100 * r['ex']:.0f}%" for r in table))
    return {"policy": str(path), "samples": len(samples), "held_out": len(held), "comparison": table}


def _llm_supervisor_replay(plan: RunPlan, held: list[dict[str, Any]]) -> dict[str, Any] | None:
    """EX of the LLM supervisor policy choosing among the same held-out candidates (one model
    call per decision with more than one distinct candidate), on the base model."""
    from langchain_openai import ChatOpenAI

    society = plan.society
    sup = next((r for r in society.roles if role_kind(r.type) == "supervisor"), None)
    alias = (sup.model if sup and sup.model else None) or next(iter(society.models))
    prompt = get_prompt(sup.prompt if sup else None, "supervisor")
    vals = []
    with ExitStack() as stack:
        ep = plan.serve(stack, society).get(alias)
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

