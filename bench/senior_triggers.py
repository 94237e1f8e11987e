"""When should the senior be asked? Each candidate trigger on recorded junior rounds, and the senior on them.

1. Trigger table (no model): for every per-question record given (``questions.jsonl`` of
   ``sqlsociety eval`` / the pipeline's ``eval/*.jsonl`` and ``eval/roles/juniors_*.jsonl``, or
   ``bench/bandit_replay.py``'s records; ``.gz`` read too), the candidate the supervisor picks
   from the first junior round (``--pick majority_vote``, the default society's policy, recomputed
   from the candidates; or ``logged``, the recorded pick) is scored against gold by EX
   (:func:`evaluation.metrics.ex.execution_match`, run here). For each trigger -- ``error`` (the pick fails
   or has no SQL), ``empty`` (it runs and returns no rows), ``disagree`` (the candidates that ran
   returned more than one distinct result), the default ``error|empty``, their union, and each
   reviewer's doubt (a REVISE of the picked SQL itself, where the record holds one: the records of
   a juniors-only agent have none) -- the table gives how often it fires and how often the pick is
   wrong when it fires and when it does not, with Wilson 95% intervals (Wilson 1927;
   :func:`evaluation.stats.wilson_ci`), and the share of all wrong picks it catches. The trigger
   conditions are the society's own (:func:`society.roles.senior_triggers`).

2. ``--senior OUT.jsonl``: the senior (``configs/society.yaml`` unless ``--config``; ``check:
   execution`` with ``trigger: [always]``, one rewrite) refines every pick once (the ``senior``
   agent, ``given_sql``), each record appended to OUT as it finishes, so a stopped run resumes;
   ``--budget-s`` stops starting new questions after that many seconds. Then for each trigger the
   senior-only metric on every pick it would see: EX of the answer (the senior's output where the
   trigger fires, the pick elsewhere) against the picks' EX, with fixes (wrong -> right) and breaks
   (right -> wrong), the paired bootstrap 95% CI of the difference and the exact McNemar p
   (:mod:`evaluation.stats`), on the questions the senior has run on.

Usage::

    python bench/senior_triggers.py                                    # the committed records
    python bench/senior_triggers.py run/eval/roles/juniors_baseline.jsonl --pick logged
    python bench/senior_triggers.py --senior bench/results/senior_triggers/senior.jsonl --budget-s 540

The committed inputs by default: ``bench/results/bandit_replay/{train,dev}.jsonl.gz`` (70 Spider
train + 50 dev questions, Qwen2.5-Coder-0.5B juniors, 2026-11-22; the recorded reviews are the
execution reviewer's only: that run had no semantic reviewer and its senior did not rewrite).
``bench/results/senior_triggers/senior_qwen.jsonl.gz``: the senior's runs on those 120 picks
(Qwen2.5-Coder-0.5B, 2026-12-05, about 6 min on the 2-core box); ``table.md`` / ``table.json``
beside it were printed by ``--senior bench/results/senior_triggers/senior_qwen.jsonl.gz --no-run``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.metrics.ex import execution_match  # noqa: E402
from evaluation.stats import mcnemar_exact, paired_bootstrap_ci, wilson_ci  # noqa: E402
from society.candidate import majority_vote  # noqa: E402
from society.roles import same_sql, senior_triggers  # noqa: E402
from society.state import ExecSummary  # noqa: E402
from tools.spider import recorded_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECORDS = [ROOT / "bench/results/bandit_replay/train.jsonl.gz",
                   ROOT / "bench/results/bandit_replay/dev.jsonl.gz"]
#: Triggers of the table: name -> the senior_triggers conditions whose union it is.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "error": ("error",), "empty": ("empty",), "disagree": ("disagree",),
    "error or empty (default)": ("error", "empty"), "error, empty or disagree": ("error", "empty", "disagree"),
    "always": ("always",),
}


def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON lines of ``path`` (gzip when it ends in ``.gz``)."""
    raw = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _db(rec: dict[str, Any]) -> str:
    return recorded_database(rec.get("db_path"), rec.get("db_id"))


def pick_view(rec: dict[str, Any], pick: str = "majority_vote") -> dict[str, Any] | None:
    """One question's first junior round seen from the senior's seat: the picked candidate, whether it
    is right (EX, run now), the triggers that hold for it, and the reviewers' verdicts on that SQL
    (``None`` where the record holds no review of it). None when the round has no candidate with SQL.

    Raises:
        ValueError: ``pick`` is not ``majority_vote`` or ``logged``.
    """
    if pick not in ("majority_vote", "logged"):
        raise ValueError(f"--pick {pick!r}: use majority_vote or logged")
    choices = rec.get("choices") or []
    cands = (choices[0].get("candidates") if choices else None) or rec.get("candidates") or []
    if not cands:
        return None
    idx = majority_vote(cands)[0] if pick == "majority_vote" else int(choices[0].get("index", -1)) if choices else -1
    if not 0 <= idx < len(cands) or not cands[idx].get("sql"):
        return None
    c = cands[idx]
    ex = ExecSummary(sql=c["sql"], ok=bool(c.get("ok")), row_count=int(c.get("row_count") or 0),
                     digest=str(c.get("result_digest") or ""))
    fired = set(senior_triggers(ex, cands, ["error", "empty", "disagree", "always"]))
    gold = str(rec.get("gold_sql") or "")
    right = bool(gold) and execution_match(_db(rec), c["sql"], gold).match
    reviews: dict[str, bool | None] = {"execution": None, "semantic": None}
    for r in rec.get("reviews") or []:
        kind = str(r.get("kind") or "")
        if kind in reviews and reviews[kind] is None and same_sql(r.get("sql"), c["sql"]):
            reviews[kind] = r.get("verdict") == "REVISE"
    return {"question_id": str(rec.get("question_id")), "question": rec.get("question"), "db_id": rec.get("db_id"),
            "db_path": _db(rec), "gold_sql": gold, "sql": c["sql"], "right": right, "fired": fired,
            "review": reviews}


def _rate(k: int, n: int) -> str:
    if n == 0:
        return "–"
    lo, hi = wilson_ci(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def trigger_rows(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trigger: fires (k of n), wrong picks when it fires / when it does not, recall of
    the wrong picks; the reviewers' doubt only over the questions whose record holds that review."""
    rows = []
    tests: dict[str, Any] = {name: (lambda v, c=conds: bool(v["fired"] & set(c))) for name, conds in TRIGGERS.items()}
    for kind in ("execution", "semantic"):
        tests[f"{kind} reviewer doubt"] = lambda v, k=kind: v["review"][k]
    for name, test in tests.items():
        vs = [(bool(test(v)), v) for v in views if test(v) is not None]
        on = [v for f, v in vs if f]
        off = [v for f, v in vs if not f]
        wrong = [v for _, v in vs if not v["right"]]
        rows.append({
            "trigger": name, "n": len(vs), "fires": len(on), "wrong_when_fires": sum(not v["right"] for v in on),
            "not_fires": len(off), "wrong_when_not": sum(not v["right"] for v in off),
            "wrong_total": len(wrong), "wrong_caught": sum(not v["right"] for v in on),
        })
    return rows


def trigger_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`trigger_rows`."""
    out = ["| trigger | n | fires | pick wrong when it fires | pick wrong when it does not | wrong picks caught |",
           "|---|---:|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['trigger']} | {r['n']} | {_rate(r['fires'], r['n'])} | "
                   f"{_rate(r['wrong_when_fires'], r['fires'])} | {_rate(r['wrong_when_not'], r['not_fires'])} | "
                   f"{_rate(r['wrong_caught'], r['wrong_total'])} |")
    return "\n".join(out)


def senior_rows(views: list[dict[str, Any]], after: dict[str, bool]) -> list[dict[str, Any]]:
    """Per trigger, over the questions the senior ran on: the picks' EX, the answer's EX (the senior's
    output where the trigger fires), fixes, breaks, the bootstrap CI of the difference and McNemar p."""
    vs = [v for v in views if v["question_id"] in after]
    rows = []
    for name, conds in TRIGGERS.items():
        before = [int(v["right"]) for v in vs]
        ans = [int(after[v["question_id"]]) if v["fired"] & set(conds) else int(v["right"]) for v in vs]
        fixes = sum(a > b for a, b in zip(ans, before, strict=True))
        breaks = sum(a < b for a, b in zip(ans, before, strict=True))
        fires = sum(bool(v["fired"] & set(conds)) for v in vs)
        ci = paired_bootstrap_ci(before, ans) if vs and (fixes or breaks) else (0.0, 0.0)
        rows.append({"trigger": name, "n": len(vs), "senior_calls": fires, "before": sum(before), "after": sum(ans),
                     "fixes": fixes, "breaks": breaks, "ci": ci, "p": mcnemar_exact(fixes, breaks)})
    return rows


def senior_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`senior_rows`."""
    out = ["| trigger | n | senior calls | EX of picks | EX of answers | Δ pts [95% CI] | fixes | breaks "
           "| McNemar p |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        n = max(r["n"], 1)
        d = 100 * (r["after"] - r["before"]) / n
        out.append(f"| {r['trigger']} | {r['n']} | {r['senior_calls']} | {100 * r['before'] / n:.1f}% | "
                   f"{100 * r['after'] / n:.1f}% | {d:+.1f} [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}] | "
                   f"{r['fixes']} | {r['breaks']} | {r['p']:.3f} |")
    return "\n".join(out)


def run_senior(views: list[dict[str, Any]], out: Path, config: str | None, budget_s: float | None) -> None:
    """The senior (``trigger: [always]``, one rewrite) on every pick not yet in ``out``; records appended."""
    from society.commands import serving
    from society.config import SocietyConfig
    from society.evaluate import evaluate
    from tools.spider import SpiderExample

    cfg = SocietyConfig.load(config or ROOT / "configs" / "society.yaml")
    senior = next(r for r in cfg.roles if r.type == "senior" and r.enabled)
    cfg = cfg.with_role_options(senior.name, check="execution", trigger=["always"], max_rewrites=1)
    done = {json.loads(line)["question_id"] for line in out.read_text().splitlines() if line.strip()} \
        if out.is_file() else set()
    todo = [v for v in views if v["question_id"] not in done]
    if not todo:
        return
    examples = [SpiderExample(id=v["question_id"], index=int(v["question_id"].rsplit("-", 1)[-1]),
                              question=str(v["question"]), gold_sql=v["gold_sql"], db_id=str(v["db_id"]),
                              db_path=Path(v["db_path"])) for v in todo]
    stop = threading.Event()
    timer = threading.Timer(budget_s, stop.set) if budget_s else None
    if timer is not None:
        timer.start()
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with serving(cfg, quiet=True) as eps, out.open("a") as f:
            def keep(rec: dict[str, Any]) -> None:
                f.write(json.dumps(rec, default=str) + "\n")
                f.flush()

            evaluate(examples, cfg, agent="senior", endpoints=eps, on_result=keep, stop=stop, concurrency=2,
                     given_sql={v["question_id"]: v["sql"] for v in todo})
    except KeyboardInterrupt:
        print(f"stopped after {time.perf_counter() - t0:.0f} s (budget); run again to go on", file=sys.stderr)
    finally:
        if timer is not None:
            timer.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", nargs="*", type=Path, help="per-question JSONL(.gz) files (default: committed)")
    ap.add_argument("--pick", default="majority_vote", choices=["majority_vote", "logged"])
    ap.add_argument("--senior", type=Path, default=None, help="JSONL of the senior's runs (created/resumed)")
    ap.add_argument("--no-run", action="store_true", help="with --senior: only read the senior records")
    ap.add_argument("--config", default=None, help="society config of the senior (default configs/society.yaml)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting senior runs after this many s")
    ap.add_argument("--json", type=Path, default=None, help="write the tables' rows here")
    args = ap.parse_args()

    paths = args.records or DEFAULT_RECORDS
    views = [v for p in paths for v in (pick_view(r, args.pick) for r in read_records(p)) if v is not None]
    rows = trigger_rows(views)
    names = ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths)
    print(f"{len(views)} picks ({args.pick}) from {names}; {sum(not v['right'] for v in views)} wrong by EX\n")
    print(trigger_table(rows))
    result: dict[str, Any] = {"pick": args.pick, "records": names, "triggers": rows}
    if args.senior is not None:
        if not args.no_run:
            run_senior(views, args.senior, args.config, args.budget_s)
        after = {str(r["question_id"]): bool(r.get("match")) for r in read_records(args.senior)} \
            if args.senior.is_file() else {}
        srows = senior_rows(views, after)
        print(f"\nThe senior (trigger: always, one rewrite) on {len(after)} of the picks; the answer is its output "
              "where the trigger fires, the pick elsewhere:\n")
        print(senior_table(srows))
        result["senior"] = srows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
