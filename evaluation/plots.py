"""Matplotlib figures for the training report.

Every function takes plain Python data (rows read from a run directory) and returns a
``matplotlib.figure.Figure``; :func:`figure_to_png` turns one into PNG bytes so the report
can embed it as ``data:image/png;base64,...`` (no external assets). The Agg backend is
used, so no display is needed.

Figures:
    * :func:`learning_curves` -- reward per finished rollout (raw points) and its rolling
      mean, one colour per phase, x = rollout number in the order rollouts finished.
    * :func:`ex_per_stage` -- execution accuracy (EX) on the fixed dev subset after each stage.
    * :func:`role_candidate_ex` -- each role's own EX on the dev subset, per stage.
    * :func:`training_signals` -- per-phase trainer signals (SFT loss, GRPO reward per step).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Colour per phase/stage name (tab10 entries); unknown names cycle through the rest.
PHASE_COLORS: dict[str, str] = {
    "baseline": "#7f7f7f",
    "gather": "#1f77b4",
    "sft": "#2ca02c",
    "grpo": "#d62728",
    "bandit": "#9467bd",
}
_FALLBACK_COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def color_for(name: str, index: int = 0) -> str:
    """A stable colour for a phase or stage name (hex string)."""
    for key, col in PHASE_COLORS.items():
        if key in name.lower():
            return col
    return _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)]


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing rolling mean: element ``i`` is the mean of ``values[max(0, i-window+1) : i+1]``.

    Args:
        values: the series (any real numbers).
        window: window length, >= 1.

    Returns:
        A list as long as ``values``; the first ``window-1`` entries average the shorter prefix.

    Raises:
        ValueError: if ``window < 1``.
    """
    if window < 1:
        raise ValueError(f"rolling window must be >= 1, got {window}")
    out: list[float] = []
    total = 0.0
    for i, v in enumerate(values):
        total += float(v)
        if i >= window:
            total -= float(values[i - window])
        out.append(total / min(i + 1, window))
    return out


def default_window(n: int) -> int:
    """Rolling-mean window for a series of ``n`` points: about a tenth of it, between 3 and 50."""
    return max(3, min(50, n // 10 or 1))


def learning_curves(rows: Sequence[Mapping], window: int | None = None) -> Figure:
    """Reward per finished rollout, raw and rolling mean, one series per phase.

    Args:
        rows: ``metrics.jsonl`` rows, each with at least ``"phase"`` (str) and ``"reward"``
            (float, typically in [0, 1]); ``"ts"`` (unix seconds) orders them when present,
            file order otherwise.
        window: rolling-mean window; ``None`` picks :func:`default_window` per phase.

    Returns:
        A figure with one axes: x = rollout number across the whole run (1-based),
        y = reward; dots are raw rewards, lines are per-phase rolling means.

    Raises:
        ValueError: if ``rows`` is empty, no row has a reward, or a row lacks ``phase``. Rows
            without a reward (failed rollouts) are left out.
    """
    if not rows:
        raise ValueError("no metrics rows: metrics.jsonl is empty or missing; run `sqlsociety train` first")
    ordered = sorted(enumerate(rows), key=lambda ir: (ir[1].get("ts", 0.0) or 0.0, ir[0]))
    phases: dict[str, tuple[list[int], list[float]]] = {}
    ordered = [ir for ir in ordered if ir[1].get("reward") is not None]  # failed rollouts have no reward
    if not ordered:
        raise ValueError("no metrics row has a reward: every rollout so far failed; see the run's log")
    for x, (_, row) in enumerate(ordered, start=1):
        if "phase" not in row:
            raise ValueError(f"metrics row {row!r} lacks 'phase'")
        xs, ys = phases.setdefault(str(row["phase"]), ([], []))
        xs.append(x)
        ys.append(float(row["reward"]))

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=100)
    used: set[str] = set()
    for i, (phase, (xs, ys)) in enumerate(phases.items()):
        col = color_for(phase, i)
        j = i
        while col in used:  # two phases of one kind (e.g. two gathers) still get their own colour
            col = _FALLBACK_COLORS[j % len(_FALLBACK_COLORS)]
            j += 1
        used.add(col)
        w = window or default_window(len(ys))
        ax.scatter(xs, ys, s=12, alpha=0.35, color=col, label=f"{phase} (raw, n={len(ys)})")
        ax.plot(xs, rolling_mean(ys, w), color=col, linewidth=2.2, label=f"{phase} rolling mean (w={w})")
    ax.set_xlabel("rollout # (in order finished)")
    ax.set_ylabel("reward")
    ax.set_title("Reward per rollout by phase")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def ex_per_stage(stage_ex: Mapping[str, float], n: Mapping[str, int] | None = None) -> Figure:
    """Bar chart of execution accuracy per stage on the fixed dev subset.

    Args:
        stage_ex: stage name -> EX in [0, 1], in display order (e.g. baseline, sft, grpo, bandit).
        n: optional stage name -> number of questions, shown in the bar label.

    Raises:
        ValueError: if ``stage_ex`` is empty.
    """
    if not stage_ex:
        raise ValueError("no eval stages: RUN_DIR/eval/*.jsonl missing; the pipeline evaluates after each phase")
    names = list(stage_ex)
    vals = [100.0 * float(stage_ex[s]) for s in names]
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=100)
    cols = [color_for(s, i) for i, s in enumerate(names)]
    # an outline keeps a 0 % bar visible as a coloured line at the axis
    bars = ax.bar(names, vals, color=cols, edgecolor=cols, linewidth=2.5)
    for b, s, v in zip(bars, names, vals):
        label = f"{v:.1f}%" + (f"\n(n={n[s]})" if n and s in n else "")
        ax.annotate(label, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(100.0, max(vals) * 1.15) if vals else 100.0)
    ax.set_ylabel("execution accuracy (%)")
    ax.set_title("EX on the fixed dev subset after each stage")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def role_candidate_ex(table: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped bars: each role's own EX (0..1) per stage.

    Args:
        table: role -> {stage -> EX in [0, 1]}; stages absent for a role are left out.

    Raises:
        ValueError: if ``table`` is empty or holds no value.
    """
    roles = [r for r in table if table[r]]
    if not roles:
        raise ValueError("no per-role EX to plot: eval records carry no 'roles' entries")
    stages: list[str] = []
    for r in roles:
        for s in table[r]:
            if s not in stages:
                stages.append(s)
    width = 0.8 / max(1, len(stages))
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    for j, s in enumerate(stages):
        xs = [i + (j - (len(stages) - 1) / 2) * width for i in range(len(roles))]
        ys = [100.0 * table[r].get(s, float("nan")) for r in roles]
        col = color_for(s, j)
        ax.bar(xs, ys, width=width, color=col, edgecolor=col, linewidth=2.5, label=s)
    ax.set_xticks(range(len(roles)))
    ax.set_xticklabels(roles, rotation=15, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("own EX (%)")
    ax.set_title("Per-role EX on the dev subset, by stage")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def training_signals(series: Mapping[str, Sequence[tuple[float, float]]]) -> Figure:
    """One small panel per training signal (e.g. the SFT loss per step, the GRPO mean reward per
    step): the raw values joined by a line, plus a rolling mean once there are at least two
    windows of points.

    Args:
        series: label -> [(step, value)], each with at least one point; the label is the panel title.

    Raises:
        ValueError: if ``series`` is empty or a series has no point.
    """
    items = [(k, list(v)) for k, v in series.items()]
    if not items or any(not v for _, v in items):
        raise ValueError("no training signal to plot: phases/*/done.json carry no losses/rewards")
    fig, axes = plt.subplots(1, len(items), figsize=(4.6 * len(items), 3.4), dpi=100, squeeze=False)
    for i, (ax, (label, pts)) in enumerate(zip(axes[0], items)):
        xs = [float(x) for x, _ in pts]
        ys = [float(y) for _, y in pts]
        col = color_for(label, i)
        ax.plot(xs, ys, "o-", ms=4, linewidth=1, alpha=0.6, color=col, label="raw")
        w = default_window(len(ys))
        if len(ys) >= 2 * w:  # a rolling mean over fewer points than two windows says nothing more
            ax.plot(xs, rolling_mean(ys, w), color=col, linewidth=2.2, label=f"rolling mean (w={w})")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_to_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes and close it (frees the figure's memory)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
