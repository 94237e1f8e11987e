"""CPU threads for torch training runs (shared by SFT, GRPO and the export checks)."""

from __future__ import annotations

__all__ = ["torch_threads"]


def torch_threads(requested: int | None = None) -> int:
    """CPU threads for a torch training run: ``requested`` if given, else ``$SQLSOCIETY_TORCH_THREADS``,
    else the idle cores now (``society.cpu_threads.idle_threads``: cores minus the busy ones, at least 1),
    with a warning when that is fewer than the cores (``society.cpu_threads.chosen_threads``): the run
    keeps its threads to the end.

    Why: torch's OpenMP workers spin-wait at every parallel region, so on a box whose cores are
    busy (llama.cpp servers, another run) more threads than idle cores are slower than fewer (the
    README's "Training" section has the figures). On an idle box all cores are used.

    Raises:
        ValueError: a non-positive request or environment value.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"num_threads must be >= 1, got {requested}")
        return int(requested)
    # society.cpu_threads is absent where only the training stack is installed (the GPU check): asked
    # only when no thread count is given
    from society.cpu_threads import chosen_threads

    return chosen_threads("SQLSOCIETY_TORCH_THREADS", "a torch training run", cost=(
        "measured 2026-12-07 on a 2-core machine: one junior adapter's 180 SFT steps at about 14 s each on 1 "
        "thread, 8.4 s on 2"))
