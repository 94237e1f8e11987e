"""Worked examples for a prompt: the questions of a gold split most similar to a new question.

A junior that sees a few (question, gold SQL) pairs of similar questions writes different SQL from
one that sees none: example selection by question similarity is the core of DAIL-SQL (Gao et al.
2023, "Text-to-SQL Empowered by Large Language Models: A Benchmark Evaluation", arXiv:2308.15363,
section 3.2), and it brings Spider's 7,000 gold train queries to a junior at inference time without
any training.

Similarity here is the cosine of TF-IDF vectors of the questions' word uni- and bigrams (Salton &
Buckley 1988; scikit-learn's ``TfidfVectorizer`` with sub-linear term frequency), after
:func:`mask_question` replaces quoted values and numbers by placeholders. DAIL-SQL also masks the
words that name tables and columns (its "masked question similarity"); that is not done here, so
two questions about the same kind of entity look alike even when their SQL differs. Spider's dev
databases are not in its train split, so on dev every example comes from another database; on the
train split itself the question's own database must be left out (its paraphrases would hand the
junior the gold answer): :meth:`ExampleBank.similar` does so when given ``exclude_db``, as the
society's ``sql_examples`` tool always does.

:class:`ExampleBank` is immutable once built; :func:`bank_for` builds one per split file and caches it
(the TF-IDF fit over 7,000 questions takes about a second).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.spider import default_data_dir, load_examples, split_file

__all__ = ["Example", "ExampleBank", "as_dicts", "bank_for", "examples_text", "mask_question", "shown_for"]

_QUOTED = re.compile(r"\"[^\"]*\"|(?<!\w)'[^']*'(?!\w)|“[^”]*”|‘[^’]*’")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)*\b")


@dataclass(frozen=True)
class Example:
    """One worked example: a question, its gold SQL and its database id."""

    question: str
    sql: str
    db_id: str


def mask_question(question: str) -> str:
    """The question with quoted values replaced by ``value`` and numbers by ``number`` (so the
    similarity follows the question's shape, not its constants).

    >>> mask_question('Which singers are older than 40 and from "France"?')
    'Which singers are older than number and from value?'
    >>> mask_question("Show names with code 'A1' or 2,000.5 items")
    'Show names with code value or number items'
    >>> mask_question("the student's name and the teacher's id")
    "the student's name and the teacher's id"
    """
    return _NUMBER.sub("number", _QUOTED.sub("value", question))


class ExampleBank:
    """Nearest-neighbour retrieval of worked examples by question similarity (module docstring).

    Args:
        examples: the bank, in a fixed order (ties in similarity keep it). Must not be empty.

    Raises:
        ValueError: ``examples`` is empty.
    """

    def __init__(self, examples: Sequence[Example]) -> None:
        if not examples:
            raise ValueError("an example bank needs at least one example; check the split it is built from")
        from sklearn.feature_extraction.text import TfidfVectorizer  # heavy import, only where used

        self.examples: tuple[Example, ...] = tuple(examples)
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        self._matrix = self._vectorizer.fit_transform([mask_question(e.question) for e in self.examples])

    def __len__(self) -> int:
        return len(self.examples)

    def similar(self, question: str, k: int = 3, *, exclude_db: str | None = None) -> list[Example]:
        """The ``k`` examples most similar to ``question``, most similar first.

        Args:
            question: the new question (any text; an empty one matches nothing and gives the first
                ``k`` examples of the bank in order).
            k: how many, >= 0 (fewer when the bank holds fewer eligible examples).
            exclude_db: leave out the examples of this database (the question's own, so that no
                paraphrase of it is shown); None keeps all.

        Returns:
            Up to ``k`` examples; an example whose question equals ``question`` is never returned.

        Raises:
            ValueError: ``k`` < 0.

        >>> bank = ExampleBank([Example("How many singers are there?", "SELECT count(*) FROM singer", "a"),
        ...                     Example("List the names of all pets.", "SELECT name FROM pets", "b"),
        ...                     Example("How many pets are there?", "SELECT count(*) FROM pets", "b")])
        >>> [e.sql for e in bank.similar("How many cars are there?", 2)]
        ['SELECT count(*) FROM pets', 'SELECT count(*) FROM singer']
        >>> [e.sql for e in bank.similar("How many cars are there?", 2, exclude_db="a")]
        ['SELECT count(*) FROM pets', 'SELECT name FROM pets']
        """
        if k < 0:
            raise ValueError(f"k = {k}; the number of examples must be >= 0")
        if k == 0:
            return []
        scores = (self._matrix @ self._vectorizer.transform([mask_question(question)]).T).toarray().ravel()
        order = sorted(range(len(self.examples)), key=lambda i: (-scores[i], i))
        out: list[Example] = []
        for i in order:
            e = self.examples[i]
            if (exclude_db is not None and e.db_id == exclude_db) or e.question.strip() == question.strip():
                continue
            out.append(e)
            if len(out) == k:
                break
        return out


@functools.lru_cache(maxsize=4)
def _bank(path: str, split: str, mtime_ns: int) -> ExampleBank:
    rows = load_examples(path, split)
    return ExampleBank([Example(e.question, e.gold_sql, e.db_id) for e in rows])


def bank_for(split: str = "train", data_dir: str | Path | None = None) -> ExampleBank:
    """The example bank of ``split`` in ``data_dir`` (default :func:`tools.spider.default_data_dir`),
    built once per split file (cached; a changed file is read again).

    Raises:
        tools.spider.DataError: no such directory or split file, or the file is unusable (the
            message names it and what to pass instead).
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    f = split_file(root, split)
    return _bank(str(root), split, f.stat().st_mtime_ns)


def shown_for(question: str, db_id: str | None, *, k: int = 3, split: str = "train") -> list[Example]:
    """The worked examples a junior is shown for ``question`` on database ``db_id``: the ``k`` most
    similar of ``split``'s bank (:func:`bank_for`), none from ``db_id`` (None or '' leaves none out).
    The one rule both the society's ``sql_examples`` tool and the reuse fingerprint apply.

    Raises:
        tools.spider.DataError: ``split`` cannot be read; ValueError: ``k`` < 0.
    """
    return bank_for(split).similar(question, k, exclude_db=db_id or None)


def examples_text(examples: Sequence[Example]) -> str:
    """The examples as a prompt section ('' when there are none), ending in a blank line.

    >>> print(examples_text([Example("How many pets?", "SELECT count(*) FROM pets", "b")]), end="")
    Worked examples from other databases:
    Question: How many pets?
    SQL: SELECT count(*) FROM pets
    <BLANKLINE>
    """
    if not examples:
        return ""
    lines = ["Worked examples from other databases:"]
    for e in examples:
        lines += [f"Question: {e.question}", f"SQL: {' '.join(e.sql.split())}"]
    return "\n".join(lines) + "\n\n"


def as_dicts(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """The examples as JSON-ready dicts (a tool call's artifact)."""
    return [{"question": e.question, "sql": e.sql, "db_id": e.db_id} for e in examples]
