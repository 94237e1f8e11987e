"""The figures of README.md from committed records: `python3 bench/results/direct-dose-2026-12-08/analyze.py`.

Per PLAN.md: the one-shot agent (the direct junior's prompt, one call) untrained (A), on the default
180-step direct adapter (B) and on the 540-step one (C), paired by question on all 972 executable dev
questions (three recorded pieces for A and B, one evaluation for C) and per draw. McNemar exact p,
paired bootstrap 95 % CI (seed 0), Holm over the plan's two rows (C − B, C − A); Wilson 95 % per EX.
Reads only; writes nothing. ``analyze.py RECORDS`` judges another arm's one-shot records on the same 972
questions in C's place (``../direct-gold-2026-12-08``: the adapter trained on gold SQL).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
sys.path.insert(0, str(RESULTS.parents[1]))

from evaluation.candidates import read_control  # noqa: E402
from evaluation.stats import holm_adjust, paired_effect, paired_records, wilson_ci  # noqa: E402

DRAWS = ("seed 0", "seed 1", "other 372")
A = (RESULTS / "long-2026-12-06-partial/eval/roles/single_baseline.jsonl",
     RESULTS / "shared-confirm-2026-12-07/single_untrained/questions.jsonl.xz",
     RESULTS / "direct-missed-first-2026-12-07/single_untrained/questions.jsonl.xz")
B = (RESULTS / "long-2026-12-06-juniors/eval/roles/single_trained.jsonl.xz",
     HERE / "single_180_seed1/questions.jsonl.xz",
     RESULTS / "direct-missed-first-2026-12-07/single_long/questions.jsonl.xz")
C = HERE / "single_540_all/questions.jsonl.xz"


def ex(title: str, records: list[dict]) -> str:
    k, n = sum(bool(r["match"]) for r in records), len(records)
    lo, hi = wilson_ci(k, n)
    return f"{title} {100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n {n})"


def effect(before: list[dict], after: list[dict]):
    pairs, unpaired = paired_records(before, after)
    if unpaired:
        raise SystemExit(f"{unpaired} questions are not in both arms")
    return paired_effect([bool(x["match"]) for x, _ in pairs], [bool(y["match"]) for _, y in pairs])


def line(name: str, e, holm: float | None = None) -> str:
    h = f"  Holm(2) {holm:.4f}" if holm is not None else ""
    return (f"  {name:8s} {100 * e.before:5.1f} -> {100 * e.after:5.1f}  {100 * e.delta:+5.1f} "
            f"[{100 * e.ci_low:+.1f}, {100 * e.ci_high:+.1f}]  {e.fixed}/{e.broken}  p {e.p:.4f}{h}")


def main() -> None:
    a = [read_control(p) for p in A]
    b = [read_control(p) for p in B]
    arm = Path(sys.argv[1]) if len(sys.argv) > 1 else C
    c_all = read_control(arm) if arm.is_file() else None
    whole_a, whole_b = [r for x in a for r in x], [r for x in b for r in x]
    print(ex("A untrained", whole_a), "|", ex("B 180 steps", whole_b),
          "|", ex(f"C {arm.parent.name}", c_all) if c_all else "C not run yet")
    print(f"\nall {len(whole_a)} executable dev questions")
    if c_all:
        cb, ca = effect(whole_b, c_all), effect(whole_a, c_all)
        hb, ha = holm_adjust([cb.p, ca.p])
        print(line("C - B", cb, hb))
        print(line("C - A", ca, ha))
    print(line("B - A", effect(whole_a, whole_b)))
    for name, xa, xb in zip(DRAWS, a, b):
        print(f"\n{name} (n {len(xa)})")
        if c_all:
            ids = {r["question_id"] for r in xa}
            xc = [r for r in c_all if r["question_id"] in ids]
            print(line("C - B", effect(xb, xc)))
            print(line("C - A", effect(xa, xc)))
        print(line("B - A", effect(xa, xb)))


if __name__ == "__main__":
    main()
