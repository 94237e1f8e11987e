"""Spider-format task loader (also reads BIRD's layout).

A *task* is one natural-language question over one SQLite database with its gold
SQL. The loader reads any directory laid out like Spider 1.0 (Yu et al., EMNLP
2018)::

    D/dev.json | D/train_spider.json | D/train_spider_min.json | D/train_others.json
    D/tables.json
    D/database/<db_id>/<db_id>.sqlite

or like BIRD (Li et al., NeurIPS 2023)::

    D/dev.json (fields question, SQL, db_id, evidence)
    D/dev_databases/<db_id>/<db_id>.sqlite

Questions whose database file is missing are skipped with **one** warning that
counts them (Spider dev here: wta_1, 62 questions), never an exception.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Repository-relative location of the bundled Spider copy (CC BY-SA 4.0, see data/spider/PROVENANCE.md).
BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "spider"

#: Split name -> candidate file names, first existing wins.
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "dev": ("dev.json",),
    "train": ("train_spider.json", "train_spider_min.json", "train.json"),
    "train_others": ("train_others.json",),
    "test": ("test.json",),
}


class DataError(ValueError):
    """Raised when a data directory or split cannot be read; the message names the path and the fix."""


@dataclass(frozen=True)
class SpiderExample:
    """One text-to-SQL task.

    Attributes:
        id: stable identifier ``"<split>-<index>"``, e.g. ``"dev-0"``; ``index`` is the
            position in the split's JSON file (so it lines up with ``dev_gold.sql``).
        index: 0-based position in the split file, including skipped questions.
        question: the natural-language question.
        gold_sql: the reference SQL query.
        db_id: database identifier (folder name under ``database/``).
        db_path: absolute path of the SQLite file.
        evidence: BIRD's external-knowledge hint; empty for Spider.
    """

    id: str
    index: int
    question: str
    gold_sql: str
    db_id: str
    db_path: Path
    evidence: str = ""


def default_data_dir() -> Path:
    """The data directory: ``$SQLSOCIETY_DATA_DIR`` if set, else the bundled ``data/spider``."""
    env = os.environ.get("SQLSOCIETY_DATA_DIR")
    return Path(env).expanduser().resolve() if env else BUNDLED_DATA_DIR


def database_path(data_dir: str | Path, db_id: str) -> Path:
    """Path of ``db_id``'s SQLite file under ``data_dir`` (Spider ``database/`` or BIRD ``*_databases/``).

    Returns the Spider location when no file exists anywhere (the caller checks ``exists()``).
    """
    data_dir = Path(data_dir)
    candidates = [data_dir / "database" / db_id / f"{db_id}.sqlite"]
    candidates += sorted(p / db_id / f"{db_id}.sqlite" for p in data_dir.glob("*_databases"))
    for c in candidates:
        if c.exists():
            return c.resolve()
    return candidates[0]


def resolve_database(db: str | Path, data_dir: str | Path | None = None) -> Path:
    """Resolve ``db`` — a db_id of the data directory or a path to any SQLite file — to a file path.

    Raises:
        DataError: if neither a file at that path nor a database with that id exists.
    """
    p = Path(db).expanduser()
    if p.suffix in {".sqlite", ".db", ".sqlite3"} or p.exists():
        if not p.is_file():
            raise DataError(f"database file {p} does not exist; pass an existing SQLite file or a db_id")
        return p.resolve()
    d = Path(data_dir) if data_dir else default_data_dir()
    path = database_path(d, str(db))
    if not path.exists():
        known = sorted(x.name for x in (d / "database").iterdir()) if (d / "database").is_dir() else []
        hint = f" (known ids include: {', '.join(known[:8])}, ...)" if known else ""
        raise DataError(f"no database '{db}' under {d}{hint}; pass a db_id or the path of a .sqlite file")
    return path


def split_file(data_dir: str | Path, split: str) -> Path:
    """The JSON file holding ``split`` in ``data_dir``.

    Raises:
        DataError: unknown split or no file for it.
    """
    data_dir = Path(data_dir)
    names = SPLIT_FILES.get(split, (f"{split}.json",))
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(
        f"no file for split '{split}' in {data_dir} (looked for {', '.join(names)}); "
        f"check --data-dir or --split (known splits: {', '.join(SPLIT_FILES)})"
    )


def load_examples(
    data_dir: str | Path | None = None,
    split: str = "dev",
    *,
    limit: int | None = None,
    db_ids: set[str] | None = None,
) -> list[SpiderExample]:
    """Load the executable examples of one split, in file order.

    Args:
        data_dir: a Spider- or BIRD-format directory; default :func:`default_data_dir`.
        split: ``dev``, ``train``, ``train_others``, ``test`` or any ``<name>`` with ``<name>.json``.
        limit: keep at most this many (after skipping missing databases).
        db_ids: keep only these databases.

    Returns:
        Examples whose database file exists. Missing databases are counted in one
        ``logging.WARNING`` (e.g. "skipped 62 of 1034 questions: database missing: wta_1 (62)").

    Raises:
        DataError: the directory, split file or its JSON is unusable.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; pass --data-dir pointing at a Spider-format folder")
    path = split_file(data_dir, split)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-copy the dataset file") from e
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of questions")

    out: list[SpiderExample] = []
    missing: Counter[str] = Counter()
    db_cache: dict[str, Path] = {}
    for i, r in enumerate(records):
        try:
            db_id = r["db_id"]
            question = r["question"]
            gold = r.get("query", r.get("SQL"))
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: record {i} lacks field {e}; expected question, query (or SQL), db_id") from e
        if gold is None:
            raise DataError(f"{path}: record {i} has no 'query' (Spider) or 'SQL' (BIRD) field")
        if db_ids is not None and db_id not in db_ids:
            continue
        if db_id not in db_cache:
            db_cache[db_id] = database_path(data_dir, db_id)
        db_path = db_cache[db_id]
        if not db_path.exists():
            missing[db_id] += 1
            continue
        out.append(
            SpiderExample(
                id=f"{split}-{i}",
                index=i,
                question=question.strip(),
                gold_sql=gold.strip(),
                db_id=db_id,
                db_path=db_path,
                evidence=r.get("evidence", "") or "",
            )
        )
        if limit is not None and len(out) >= limit:
            break
    if missing:
        detail = ", ".join(f"{k} ({v})" for k, v in sorted(missing.items()))
        logger.warning(
            "skipped %d of %d questions in %s: database missing: %s",
            sum(missing.values()), len(records), path.name, detail,
        )
    return out
