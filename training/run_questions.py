"""The questions of a training run, drawn from the profile: the fixed dev samples every evaluation
stage runs on (:func:`dev_subset`: ``eval.limit`` questions, or ``eval.junior_limit`` for the role-level
stages, drawn with ``eval.seed`` across all the split's databases) and phase 1's train tasks
(:func:`gather_draw`). :func:`draw_questions` reads each split once and draws them all.
"""

from __future__ import annotations

from tools.sampling import disjoint_draws, sample_examples
from tools.spider import SpiderExample, load_examples
from training.profile import TrainConfig

#: ``(society's tasks, juniors-only tasks)`` of phase 1.
Tasks = tuple[list[SpiderExample], list[SpiderExample]]

__all__ = ["dev_subset", "draw_questions", "gather_draw", "gather_tasks"]


def dev_subset(cfg: TrainConfig, limit: int | None = None) -> list[SpiderExample]:
    """The fixed dev subset: ``limit`` (default ``cfg.eval.limit``) examples sampled with
    ``cfg.eval.seed`` across the split's databases, in file order.

    Raises:
        tools.spider.DataError: the data directory or the split file cannot be read.
    """
    return sample_examples(load_examples(cfg.data_dir, cfg.eval.split), limit or cfg.eval.limit, cfg.eval.seed)


def gather_draw(cfg: TrainConfig, examples: list[SpiderExample]) -> Tasks:
    """Phase 1's train questions from the gather split's ``examples``: (the society's ``gather.limit``
    tasks, the juniors-only ``gather.junior_limit`` tasks), disjoint. In file order after
    ``gather.offset``, or with ``gather.sample_seed`` one random draw across all the split's databases
    (:func:`tools.sampling.disjoint_draws`; ``offset`` is then ignored). Either list may be shorter
    when the split runs out.

    >>> from training.profile import TrainConfig
    >>> cfg = TrainConfig.model_validate({"gather": {"split": "train", "limit": 2, "junior_limit": 3, "offset": 1}})
    >>> gather_draw(cfg, list(range(5)))
    ([1, 2], [3, 4])
    """
    g = cfg.gather
    if g.sample_seed is not None:
        tasks, jtasks = disjoint_draws(examples, [g.limit, g.junior_limit], seed=g.sample_seed)
        return tasks, jtasks
    end = g.offset + g.limit
    return examples[g.offset:end], examples[end:end + g.junior_limit]


def gather_tasks(cfg: TrainConfig) -> Tasks:
    """:func:`gather_draw` of the profile's gather split.

    Raises:
        tools.spider.DataError: the data directory or the split file cannot be read.
    """
    return gather_draw(cfg, load_examples(cfg.data_dir, cfg.gather.split))


def draw_questions(cfg: TrainConfig, *, gather: bool) -> tuple[list[SpiderExample], list[SpiderExample], Tasks | None]:
    """Every question set of a run, each split read once: ``(dev, juniors, tasks)`` -- the society
    stages' :func:`dev_subset`, the role-level stages' (``eval.junior_limit`` questions, the society's
    draw when 0), and with ``gather`` phase 1's :func:`gather_draw` (else None).

    Raises:
        tools.spider.DataError: the data directory or a split file cannot be read.
    """
    e = cfg.eval
    examples = load_examples(cfg.data_dir, e.split)
    train = load_examples(cfg.data_dir, cfg.gather.split) if gather else None
    tasks = gather_draw(cfg, train) if train is not None else None
    juniors = sample_examples(examples, e.junior_limit or e.limit, e.seed)
    return sample_examples(examples, e.limit, e.seed), juniors, tasks
