"""The figures of README.md from the committed records:
`python3 bench/results/direct-missed-first-2026-12-07/analyze.py`.

Per PLAN.md: each junior's own EX and the pick (the majority vote recomputed from the candidates in
every arm), paired by question (McNemar exact, paired bootstrap 95 % CI, seed 0), Holm over the 4 rows;
Wilson 95 % per EX. The helpers are the confirmatory test's (../shared-confirm-2026-12-07/analyze.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from evaluation.candidates import read_control, read_records  # noqa: E402
from evaluation.stats import paired_effect, paired_records  # noqa: E402

_spec = importlib.util.spec_from_file_location("confirm", HERE.parent / "shared-confirm-2026-12-07" / "analyze.py")
confirm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(confirm)


def one_shot(title: str, before: Path, after: Path) -> None:
    """The one-shot control (``single``) of two arms, paired by question."""
    pairs, _ = paired_records(read_control(before), read_control(after))
    e = paired_effect([bool(x.get("match")) for x, _ in pairs], [bool(y.get("match")) for _, y in pairs])
    print(f"{title}: {100 * e.before:.1f} -> {100 * e.after:.1f}  {100 * e.delta:+.1f} [{100 * e.ci_low:+.1f}, "
          f"{100 * e.ci_high:+.1f}]  {e.fixed}/{e.broken}  p {e.p:.4f}  (n {e.n})")


def main() -> None:
    arm = {name: HERE / name / "questions.jsonl.xz" for name in
           ("juniors_untrained", "juniors_missed_first", "single_untrained", "single_long", "single_missed_first")}
    untrained = confirm.voted(read_records(arm["juniors_untrained"]))
    if arm["juniors_missed_first"].is_file():
        raw = read_records(arm["juniors_missed_first"])
        print(f"arm 2: the export's bandit pick {sum(bool(r.get('match')) for r in raw)}/{len(raw)}; "
              "majority vote used below")
        trained = confirm.voted(raw)
        confirm.show("untrained -> per persona, direct on the missed_first adapter", trained, untrained)
        print()
        if arm["single_untrained"].is_file():
            confirm.control("untrained", untrained, arm["single_untrained"])
        if arm["single_missed_first"].is_file():
            confirm.control("per persona, missed_first direct (the one-shot on it)", trained,
                            arm["single_missed_first"])
    for name in ("single_long", "single_missed_first"):
        if arm[name].is_file() and arm["single_untrained"].is_file():
            one_shot(f"one-shot, untrained -> {name}", arm["single_untrained"], arm[name])
    if arm["single_long"].is_file() and arm["single_missed_first"].is_file():
        one_shot("one-shot, long run's direct adapter -> missed_first adapter", arm["single_long"],
                 arm["single_missed_first"])


def pooled() -> None:
    """Post hoc, decided after all three draws were seen: the three planned untrained -> per-persona
    comparisons pooled, which together cover every executable dev question (972). The direct adapter
    differs by draw (random fill on the first 600, missed_first on these 372). Draw 1's records are the
    long run's stages, whose pick already was the majority vote."""
    base = HERE.parent
    before = (read_records(base / "long-2026-12-06-partial/eval/roles/juniors_baseline.jsonl")
              + confirm.voted(read_records(base / "shared-confirm-2026-12-07/juniors_untrained/questions.jsonl.xz"))
              + confirm.voted(read_records(HERE / "juniors_untrained/questions.jsonl.xz")))
    after = (read_records(base / "long-2026-12-06-juniors/eval/roles/juniors_sft.jsonl.xz")
             + confirm.voted(read_records(base / "shared-confirm-2026-12-07/juniors_per_persona/questions.jsonl.xz"))
             + confirm.voted(read_records(HERE / "juniors_missed_first/questions.jsonl.xz")))
    confirm.show("post hoc: the three draws pooled (every executable dev question)", after, before)


if __name__ == "__main__":
    main()
    pooled()
