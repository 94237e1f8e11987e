"""The figures of README.md from the committed records: `python3 bench/results/shared-confirm-2026-12-07/analyze.py`.

Per the plan: each junior's own EX and the pick, paired by question (evaluation.candidates.against_before:
McNemar exact, paired bootstrap 95 % CI, seed 0), Holm over the 4 rows of each comparison (the oracle,
an upper bound, left out of the family); Wilson 95 % intervals per EX. The pick of every arm is the
majority vote recomputed from the candidates (society.candidate.majority_vote, the untrained
supervisor's rule), so that the per-persona arm, served with the export's bandit supervisor, is judged
by the same rule as the others; its bandit pick is printed beside.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from evaluation.candidates import against_before, against_control, read_control, read_records  # noqa: E402
from evaluation.stats import holm_adjust, paired_effect, paired_records, wilson_ci  # noqa: E402
from society.candidate import majority_vote  # noqa: E402


def voted(records: list[dict]) -> list[dict]:
    """The records with the supervisor's choice replaced by the majority vote over their candidates."""
    out = []
    for r in records:
        cands = r.get("candidates") or []
        i, _, _ = majority_vote(cands)
        roles = dict(r["roles"])
        roles["supervisor"] = {"choice": cands[i]["junior"] if i >= 0 else None, "policy": "majority_vote"}
        out.append({**r, "roles": roles})
    return out


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
    print(f"  oracle (any candidate right) {100 * o.before:.1f} -> {100 * o.after:.1f}")


def control(title: str, records: list[dict], single: Path) -> None:
    c = against_control(records, read_control(single))
    e = next(e for e in c.effects if e.role == "pick")
    print(f"{title}: single {100 * e.before:.1f} -> pick {100 * e.after:.1f}  {100 * e.delta:+.1f} "
          f"[{100 * e.ci_low:+.1f}, {100 * e.ci_high:+.1f}]  {e.fixed}/{e.broken}  p {e.p:.4f}")


def main() -> None:
    arms = {name: HERE / name / "questions.jsonl.xz" for name in
            ("juniors_untrained", "juniors_shared", "juniors_per_persona", "single_untrained", "single_shared")}
    untrained, shared = voted(read_records(arms["juniors_untrained"])), voted(read_records(arms["juniors_shared"]))
    show("untrained -> shared adapter", shared, untrained)
    if arms["juniors_per_persona"].is_file():
        raw = read_records(arms["juniors_per_persona"])
        per = voted(raw)
        bandit = sum(bool(r.get("match")) for r in raw)
        print(f"\nper-persona arm: the export's bandit pick {bandit}/{len(raw)}; majority vote used below")
        show("untrained -> per-persona adapters", per, untrained)
        show("shared adapter -> per-persona adapters (positive favours per persona)", per, shared)
    print()
    control("untrained", untrained, arms["single_untrained"])
    if arms["single_shared"].is_file():
        control("shared adapter (the writer junior on it)", shared, arms["single_shared"])
        a, b = read_control(arms["single_untrained"]), read_control(arms["single_shared"])
        pairs, _ = paired_records(a, b)
        e = paired_effect([bool(x.get("match")) for x, _ in pairs], [bool(y.get("match")) for _, y in pairs])
        print(f"one-shot, untrained -> the writer junior on the shared adapter: {100 * e.before:.1f} -> "
              f"{100 * e.after:.1f}  {100 * e.delta:+.1f} [{100 * e.ci_low:+.1f}, {100 * e.ci_high:+.1f}]  "
              f"{e.fixed}/{e.broken}  p {e.p:.4f}")


if __name__ == "__main__":
    main()
