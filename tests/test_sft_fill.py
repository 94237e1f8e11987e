"""Which admitted rows an SFT adapter trains on when its step budget is smaller than its rows
(``adapter.sft_fill``, :func:`training.phase_sft.fill_rows`)."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import pytest

from training import phase_sft
from training.agent import MISSED_SOURCES, SOURCES
from training.phase_sft import fill_rows, filled, step_budget

#: a persona's admitted rows as the long run had them, in store order: mostly right first drafts
ROWS = ["juniors"] * 12 + ["society"] * 3 + ["resample"] * 2 + ["rationalized"] * 4 + ["juniors"] * 5


def test_missed_rows_fill_the_budget_first_and_the_rest_is_drawn() -> None:
    keep = fill_rows(ROWS, 10, "missed_first", seed=0)
    assert len(keep) == 10 and keep == sorted(set(keep))
    missed = [i for i, s in enumerate(ROWS) if s in MISSED_SOURCES]
    assert set(missed) <= set(keep)  # all 6 missed rows, then 4 of the 20 others
    others = [i for i in keep if i not in missed]
    assert len(others) == 4 and all(ROWS[i] in ("juniors", "society") for i in others)
    assert fill_rows(ROWS, 10, "missed_first", seed=0) == keep  # the seed fixes the draw
    draws = {tuple(fill_rows(ROWS, 10, "missed_first", seed=s)) for s in range(8)}
    assert len(draws) > 1 and all(set(missed) <= set(d) for d in draws)


def test_more_missed_rows_than_the_budget_are_drawn_among_themselves() -> None:
    keep = fill_rows(ROWS, 4, "missed_first", seed=3)
    assert len(keep) == 4 and all(ROWS[i] in MISSED_SOURCES for i in keep)


def test_random_and_an_unbounded_budget_keep_every_row() -> None:
    assert fill_rows(ROWS, 10) == list(range(len(ROWS)))
    assert fill_rows(ROWS, None, "missed_first") == list(range(len(ROWS)))
    assert fill_rows(ROWS, len(ROWS), "missed_first") == list(range(len(ROWS)))
    assert fill_rows([], 4, "missed_first") == []


def test_the_budget_is_steps_times_rows_per_step_and_bad_rules_are_named() -> None:
    assert step_budget(180, 2) == 360 and step_budget(0, 2) is None
    with pytest.raises(ValueError, match="adapter.sft_fill: 'hardest'; use 'random' or 'missed_first'"):
        fill_rows(ROWS, 4, "hardest")
    assert set(MISSED_SOURCES) < set(SOURCES)


def _plan(fill: str, steps: int, batch: int, accumulation: int = 1) -> SimpleNamespace:
    """The two profile sections :func:`filled` reads (a plan stands in; the trainer is not involved)."""
    sft = SimpleNamespace(max_steps=steps, per_device_train_batch_size=batch,
                          gradient_accumulation_steps=accumulation, seed=0)
    return SimpleNamespace(cfg=SimpleNamespace(sft=sft, adapter=SimpleNamespace(sft_fill=fill)))


def test_an_adapters_rows_are_cut_to_its_budget_by_the_profile() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": str(i)}], "source": s}
                                     for i, s in enumerate(ROWS)])
    cut, info = filled(_plan("missed_first", 2, 2, 2), ds)  # 2 steps x 2 rows x 2 accumulated = 8
    assert len(cut) == 8 and info == {"fill": "missed_first", "rows_admitted": 26, "rows_missed": 6}
    assert sorted(cut["source"]).count("rationalized") == 4 and cut["source"].count("resample") == 2
    same, info = filled(_plan("random", 2, 2, 2), ds)
    assert same is ds and info["fill"] == "random"  # nothing cut: the adapter's resume key is unchanged
    bare = ds.remove_columns("source")  # rows from before sources were recorded: none counts as missed
    cut, info = filled(_plan("missed_first", 1, 3), bare)
    assert len(cut) == 3 and info["rows_missed"] == 0


def test_doctests() -> None:
    assert doctest.testmod(phase_sft).failed == 0
