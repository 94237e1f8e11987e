"""The figures of README.md from committed records: `python3 bench/results/hybrid-revote-2026-12-08/analyze.py`.

Per PLAN.md: the hybrid juniors (direct and decompose on their per-persona adapters, step-by-step on the
shared adapter) made from two juniors-only evaluations of the same questions -- each junior answers
alone there, so swapping one junior's answers for another evaluation's is what that society would
have answered -- and the pick voted again by the supervisor's rule (society.candidate.majority_vote),
the candidates in the society's junior order. Every arm's pick is the recomputed vote. Paired by
question (evaluation.candidates.against_before: McNemar exact, paired bootstrap 95 % CI, seed 0), Holm
over the 4 rows of each comparison (the oracle, an upper bound, printed outside the family); Wilson 95 %
intervals per EX. Reads only; writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
sys.path.insert(0, str(RESULTS.parents[1]))

from evaluation.candidates import against_before, read_records  # noqa: E402
from evaluation.stats import holm_adjust, wilson_ci  # noqa: E402
from society.candidate import majority_vote  # noqa: E402

SWAPPED = "junior_step_by_step"
DRAWS = {
    "seed 0 (the profile's draw)": (
        RESULTS / "long-2026-12-06-partial/eval/roles/juniors_baseline.jsonl",
        RESULTS / "long-2026-12-06-juniors/eval/roles/juniors_sft.jsonl.xz",
        RESULTS / "long-2026-12-06-juniors/eval/roles/juniors_sft_shared.jsonl.xz"),
    "seed 1 (300 outside seed 0's)": (
        RESULTS / "shared-confirm-2026-12-07/juniors_untrained/questions.jsonl.xz",
        RESULTS / "shared-confirm-2026-12-07/juniors_per_persona/questions.jsonl.xz",
        RESULTS / "shared-confirm-2026-12-07/juniors_shared/questions.jsonl.xz"),
}


def voted(records: list[dict]) -> list[dict]:
    """The records with the supervisor's choice replaced by the majority vote over their candidates.

    Compact records (no candidate list: the long run's untrained stage) keep their recorded choice, which
    the untrained supervisor made by the same majority vote (checked: ``policy``)."""
    out = []
    for r in records:
        if "candidates" not in r:
            assert r["roles"]["supervisor"]["policy"] == "majority_vote", r["question_id"]
            out.append(r)
            continue
        cands = r["candidates"]
        i, _, _ = majority_vote(cands)
        roles = {**r["roles"], "supervisor": {"choice": cands[i]["junior"] if i >= 0 else None,
                                              "policy": "majority_vote"}}
        out.append({**r, "roles": roles})
    return out


def hybrid(per: list[dict], shared: list[dict], junior: str = SWAPPED) -> list[dict]:
    """``per``'s records with ``junior``'s role and candidate taken from ``shared`` (same question, same
    slot in the candidate list), the pick voted again."""
    by_id = {r["question_id"]: r for r in shared}
    out = []
    for r in per:
        s = by_id[r["question_id"]]
        theirs = next(c for c in s["candidates"] if c["junior"] == junior)
        cands = [theirs if c["junior"] == junior else c for c in r["candidates"]]
        out.append({**r, "candidates": cands, "roles": {**r["roles"], junior: s["roles"][junior]}})
    return voted(out)


def show(title: str, after: list[dict], before: list[dict]) -> None:
    cmp = against_before(after, before)
    rows = [e for e in cmp.effects if e.role != "oracle"]
    print(f"\n{title} (paired {cmp.paired})")
    for e, h in zip(rows, holm_adjust([e.p for e in rows])):
        kb, ka = round(e.before * e.n), round(e.after * e.n)
        wb, wa = wilson_ci(kb, e.n), wilson_ci(ka, e.n)
        print(f"  {e.role:20s} {100 * e.before:5.1f} [{100 * wb[0]:.1f}, {100 * wb[1]:.1f}] -> {100 * e.after:5.1f} "
              f"[{100 * wa[0]:.1f}, {100 * wa[1]:.1f}]  {100 * e.delta:+5.1f} [{100 * e.ci_low:+.1f}, "
              f"{100 * e.ci_high:+.1f}]  {e.fixed}/{e.broken}  p {e.p:.4f}  Holm(4) {h:.4f}")
    o = next(e for e in cmp.effects if e.role == "oracle")
    print(f"  {'oracle':20s} {100 * o.before:5.1f} -> {100 * o.after:5.1f}  {100 * o.delta:+5.1f} "
          f"[{100 * o.ci_low:+.1f}, {100 * o.ci_high:+.1f}]  {o.fixed}/{o.broken}  p {o.p:.4f}")


def agree(records: list[dict]) -> int | str:
    """Questions on which all three candidates ran and returned the same rows ("n/a": compact records)."""
    if any("candidates" not in r for r in records):
        return "n/a"
    n = 0
    for r in records:
        c = r["candidates"]
        n += all(x.get("ok") for x in c) and len({x.get("result_digest") for x in c}) == 1
    return n


def main() -> None:
    for name, (u, p, s) in DRAWS.items():
        untrained, per = voted(read_records(u)), voted(read_records(p))
        hyb = hybrid(read_records(p), read_records(s))
        print(f"\n=== {name}; all three return the same rows: untrained {agree(untrained)}, "
              f"per persona {agree(per)}, hybrid {agree(hyb)} of {len(hyb)}")
        show("untrained -> hybrid", hyb, untrained)
        show("untrained -> per persona", per, untrained)
        show("per persona -> hybrid (positive favours the hybrid)", hyb, per)


if __name__ == "__main__":
    main()
