"""The supervisor bandit vs random choice, majority vote and the LLM supervisor, on real rollouts.

1. Runs the society (every role on the embedded Qwen2.5-Coder-0.5B unless ``--config`` says
   otherwise) with the supervisor set to the ``llm`` policy, on ``--train`` Spider train questions
   and ``--dev`` Spider dev questions, appending each run record to ``OUT/{train,dev}.jsonl``
   (re-running skips questions already recorded, so a killed run resumes). ``--fast`` (default)
   keeps what the supervisor's decision depends on -- the juniors and the supervisor -- and makes
   the later roles cheap (senior: check by execution, no rewrite; no semantic reviewer); the
   decision and the candidates are the same as in the full society.
2. Turns the records into bandit samples (``training.bandit.samples_from_records``: every
   candidate's execution match with gold, computed for real).
3. Fits :class:`training.bandit.SupervisorBandit` on the train samples and replays the dev samples
   with :func:`training.bandit.compare_policies`: bandit (greedy) / random (expectation) /
   majority vote / ``logged:llm`` (the LLM supervisor's actual pick) / oracle.

Prints the Markdown table and writes ``OUT/bandit_table.md`` and ``OUT/bandit_table.json``.
Usage::

    python bench/bandit_replay.py --train 60 --dev 40 --out runs/bandit_replay
    python bench/bandit_replay.py --out runs/bandit_replay --no-run   # table from existing records
    python bench/bandit_replay.py --out bench/results/bandit_replay --no-run   # the recorded run below

``bench/results/bandit_replay/{train,dev}.jsonl.gz`` are the records of the run behind the README
table (70 train + 50 dev questions, Qwen2.5-Coder-0.5B, 2026-11-22, about 45 min on the 2-core box).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from society.config import SocietyConfig  # noqa: E402
from tools.spider import load_examples  # noqa: E402
from training.bandit import BanditConfig, SupervisorBandit, compare_policies, format_table, samples_from_records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def bench_config(path: str | None, fast: bool) -> SocietyConfig:
    """The society config with the ``llm`` supervisor (and, with ``fast``, cheap later roles)."""
    cfg = SocietyConfig.load(path or ROOT / "configs" / "society.yaml")
    roles = []
    for r in cfg.roles:
        kind = r.type
        if kind == "supervisor":
            r = r.model_copy(update={"policy": "llm"})
        if fast and kind == "senior":
            r = r.model_copy(update={"options": {**r.options, "max_rewrites": 0, "check": "execution"}})
        if fast and kind == "semantic_reviewer":
            continue
        roles.append(r)
    upd: dict = {"roles": roles}
    if fast:
        upd["limits"] = cfg.limits.model_copy(update={"max_review_rounds": 1, "max_junior_rounds": 1})
    return cfg.model_copy(update=upd)


def read_records(path: Path) -> list[dict]:
    """JSON lines of ``path``, or of ``path.gz`` when only the compressed copy exists."""
    import gzip

    if path.is_file():
        text = path.read_text()
    elif path.with_name(path.name + ".gz").is_file():
        text = gzip.decompress(path.with_name(path.name + ".gz").read_bytes()).decode()
    else:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def gather(cfg: SocietyConfig, split: str, n: int, out: Path) -> None:
    """Run the society on the first ``n`` questions of ``split`` not yet in ``out``."""
    from society.commands import serving
    from society.evaluate import evaluate

    done = {r.get("question_id") for r in read_records(out)}
    todo = [e for e in load_examples(split=split, limit=n) if e.id not in done]
    if not todo:
        return
    t0 = time.perf_counter()
    with serving(cfg, quiet=True) as eps, out.open("a") as f:
        def keep(rec: dict) -> None:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            print(f"  {split} {rec.get('question_id')}: EX {int(bool(rec.get('match')))} "
                  f"({rec.get('seconds', 0):.0f} s)", flush=True)

        evaluate(todo, cfg, endpoints=eps, on_result=keep)
    print(f"{split}: {len(todo)} questions in {time.perf_counter() - t0:.0f} s", flush=True)


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command(help=__doc__.split("\n")[0])
def main(
    train_n: int = typer.Option(60, "--train", help="Spider train questions for fitting the bandit"),
    dev_n: int = typer.Option(40, "--dev", help="Spider dev questions for the held-out replay"),
    out_dir: str = typer.Option("runs/bandit_replay", "--out", help="directory for records and the table"),
    config: str | None = typer.Option(None, "--config", help="society config (default configs/society.yaml)"),
    full: bool = typer.Option(False, "--full", help="run the full society (senior rewrites, all reviewers)"),
    no_run: bool = typer.Option(False, "--no-run", help="only build the table from existing records"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not no_run:
        cfg = bench_config(config, fast=not full)
        gather(cfg, "train", train_n, out / "train.jsonl")
        gather(cfg, "dev", dev_n, out / "dev.jsonl")
    train = samples_from_records(read_records(out / "train.jsonl"))
    dev = samples_from_records(read_records(out / "dev.jsonl"))
    if not train or not dev:
        raise SystemExit(
            f"need records in {out}/train.jsonl and {out}/dev.jsonl (got {len(train)} / {len(dev)} samples)"
        )
    t0 = time.perf_counter()
    bandit = SupervisorBandit(BanditConfig(seed=seed)).fit(train)
    fit_s = time.perf_counter() - t0
    bandit.save(out / "policy.joblib")
    rows = compare_policies(dev, bandit)
    disagree = sum(len({c["result_digest"] for c in s["candidates"] if c["executes"]}) > 1 for s in dev)
    table = format_table(rows)
    header = (f"Bandit fitted on {len(train)} train decisions ({fit_s:.2f} s), replayed on {len(dev)} held-out dev "
              f"decisions ({disagree} with disagreeing executed candidates).")
    print(header + "\n\n" + table)
    (out / "bandit_table.md").write_text(header + "\n\n" + table + "\n")
    (out / "bandit_table.json").write_text(json.dumps({"train": len(train), "dev": len(dev), "disagree": disagree,
                                                       "rows": rows}, indent=1))


if __name__ == "__main__":
    app()
