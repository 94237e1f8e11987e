"""Which questions to run, and in which order: honest samples, cache-friendly order.

* :func:`sample_examples` draws ``n`` questions at random across **all** databases of a split
  (the first 100 Spider dev questions cover only 3 of its 19 databases, and their cached schema
  prompt makes every figure measured on them optimistic); the same ``seed`` gives the same draw.
* :func:`disjoint_draws` splits one random draw into disjoint parts (e.g. the society's train
  tasks and the juniors-only ones), each across all databases.
* :func:`select_ids` keeps given question ids, in the order given.
* :func:`more_than_split` words the note for a sample larger than its split (all of it runs).
* :func:`group_by_database` orders work so that questions over one database run back to back
  (the model server then processes each schema prompt once per database, not once per question).

The others take and return any objects with ``id`` and ``db_id`` attributes
(``tools.spider.SpiderExample``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["disjoint_draws", "group_by_database", "more_than_split", "sample_examples", "select_ids"]

T = TypeVar("T")


def sample_examples(examples: Sequence[T], n: int, seed: int = 0) -> list[T]:
    """``n`` examples drawn uniformly at random without replacement (``random.Random(seed).sample``),
    returned in their original order; all of them when ``n >= len(examples)``.

    Raises:
        ValueError: ``n < 1``.

    >>> sample_examples(list(range(10)), 3, seed=1) == sample_examples(list(range(10)), 3, seed=1)
    True
    >>> sample_examples([5, 6], 9)
    [5, 6]
    """
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    if n >= len(examples):
        return list(examples)
    picked = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in picked]


def disjoint_draws(examples: Sequence[T], sizes: Sequence[int], seed: int = 0) -> list[list[T]]:
    """Disjoint random parts of ``examples``, of ``sizes`` each: one permutation
    (``random.Random(seed).shuffle`` of the indices) cut into consecutive slices, each slice returned
    in the examples' original order (questions of one database stay together). Parts come out
    shorter, last ones first, when the sizes add up to more than there are examples.

    Raises:
        ValueError: a negative size.

    >>> disjoint_draws(list(range(10)), [3, 4], seed=1) == disjoint_draws(list(range(10)), [3, 4], seed=1)
    True
    >>> a, b = disjoint_draws(list(range(10)), [3, 4], seed=1)
    >>> len(a), len(b), set(a) & set(b), a == sorted(a)
    (3, 4, set(), True)
    >>> [len(p) for p in disjoint_draws(list(range(5)), [3, 4])]
    [3, 2]
    """
    if any(n < 0 for n in sizes):
        raise ValueError(f"part sizes must be >= 0, got {list(sizes)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for n in sizes:
        parts.append([examples[i] for i in sorted(order[start:start + n])])
        start += n
    return parts


def more_than_split(option: str, asked: int, split: str, available: int) -> str:
    """The note printed when ``option`` (``--limit``, ``--sample``) asks for more questions than the
    split has: :func:`sample_examples` (and ``load_examples(limit=...)``) then return all of them.

    >>> more_than_split("--sample", 1000, "dev", 4)
    "--sample 1000 asks for more questions than split 'dev' has (4); running all 4"
    """
    return f"{option} {asked} asks for more questions than split {split!r} has ({available}); running all {available}"


def select_ids(examples: Sequence[Any], ids: Sequence[str]) -> list[Any]:
    """The examples whose ``id`` is in ``ids``, in the order of ``ids`` (duplicates dropped).

    Raises:
        ValueError: an id that is not among ``examples`` (the message lists up to five and the id form).
    """
    by_id = {e.id: e for e in examples}
    wanted = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    missing = [i for i in wanted if i not in by_id]
    if missing:
        form = next(iter(by_id), "dev-0")
        raise ValueError(f"question id(s) {missing[:5]} are not among the executable questions of this split "
                         f"(ids look like {form!r})")
    return [by_id[i] for i in wanted]


def group_by_database(examples: Sequence[Any]) -> list[list[int]]:
    """Indices of ``examples`` grouped by ``db_id``: groups in order of first appearance, indices in
    input order inside each group.

    >>> from types import SimpleNamespace as E
    >>> group_by_database([E(db_id="a"), E(db_id="b"), E(db_id="a")])
    [[0, 2], [1]]
    """
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(str(e.db_id), []).append(i)
    return list(groups.values())
