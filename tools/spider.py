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
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tools.sqlite_files import read_error_problem

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


#: What a db_id may look like: a plain folder name (no path separators, not ``.``/``..``, no NUL).
_DB_ID = re.compile(r"(?!\.\.?$)[^/\\\x00]+")


class DataError(ValueError):
    """Raised when a data directory or split cannot be read; the message names the path and the fix."""


class SplitNameError(DataError):
    """A split name that is not a plain name of the data directory (it holds a path separator, is
    empty, ``.``/``..`` or holds a NUL): it would read a file outside ``--data-dir``."""


def check_split_name(split: str, data_dir: str | Path | None = None) -> None:
    """Refuse a split name that could name a file outside the data directory.

    A split is ``dev``, ``train``, ``train_others``, ``test`` or any plain ``<name>`` whose
    ``<name>.json`` lies in the data directory itself.

    Raises:
        SplitNameError: ``split`` is not a str, is empty or only spaces, is ``.`` or ``..``, or holds
            ``/``, ``\\``, the OS separator or NUL; the message names the split, what a split may
            be, and that another folder is chosen with ``--data-dir``.
    """
    seps = {"/", "\\", os.sep, os.altsep or "/", "\x00"}
    if isinstance(split, str) and split.strip() and split not in (".", "..") and not any(c in split for c in seps):
        return
    where = f" {data_dir}" if data_dir is not None else ""
    why = ("holds a path separator" if isinstance(split, str) and any(c in split for c in seps - {"\x00"})
           else "is not a plain name")
    raise SplitNameError(
        f"split {split!r} {why}: a split names a file in the data directory{where} itself "
        f"({', '.join(SPLIT_FILES)}, or NAME for NAME.json there); to read another folder's split, pass "
        "that folder as --data-dir and the plain split name as --split"
    )


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


#: Files up to this size get SQLite's ``PRAGMA quick_check`` in :func:`database_problem` (Spider's
#: largest database is 3.7 MB; all 163 check in about 0.2 s). Larger files only get their schema read.
QUICK_CHECK_MAX_BYTES = 64 * 1024 * 1024


def recorded_database(db_path: str | Path | None, db_id: str | None, data_dir: str | Path | None = None) -> str:
    """The database of a record written maybe on another machine: ``db_path`` when that file exists
    here, else ``db_id``'s file under ``data_dir`` (default :func:`default_data_dir`), else
    ``db_path`` as given (``""`` when neither is known); the caller checks the file.

    >>> recorded_database("/nowhere/x.sqlite", None)
    '/nowhere/x.sqlite'
    >>> recorded_database("/nowhere/concert_singer.sqlite", "concert_singer", "/data").endswith(
    ...     "database/concert_singer/concert_singer.sqlite")
    True
    """
    p = str(db_path or "")
    if p and Path(p).is_file():
        return p
    if db_id:
        return str(database_path(data_dir if data_dir is not None else default_data_dir(), str(db_id)))
    return p


def database_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot serve as a question's database, or None when it can.

    Opens the file read-only (never creates or changes it), reads its schema and, for files up to
    :data:`QUICK_CHECK_MAX_BYTES`, runs ``PRAGMA quick_check``. Never raises.

    Returns:
        None for a readable SQLite database; otherwise a phrase that completes "database <path> ...",
        e.g. ``"does not exist"``, ``"is a directory, not a file"``, ``"is empty (0 bytes)"``,
        ``"is not an SQLite database (file is not a database)"``, ``"is corrupt (...)"``,
        ``"has no tables"``.
    """
    p = Path(path)
    try:
        if not p.exists():
            return "does not exist"
        if p.is_dir():
            return "is a directory, not a file; pass the .sqlite file inside it"
        if not p.is_file():
            return "is not a regular file"
        size = p.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty (0 bytes); re-copy the database file"
    try:
        conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as e:
        return f"cannot be opened read-only ({e})"
    try:
        n_tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if size <= QUICK_CHECK_MAX_BYTES:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                verdict_text = " ".join(str(verdict).split())[:200]
                return f"is corrupt (SQLite quick_check: {verdict_text}); re-copy the database file"
    except sqlite3.Error as e:
        return read_error_problem(e, not_a_database="pass a .sqlite file", corrupt="re-copy the database file")
    finally:
        conn.close()
    if n_tables == 0:
        return "has no tables; re-copy the database file"
    return None


def resolve_database(db: str | Path, data_dir: str | Path | None = None) -> Path:
    """Resolve ``db`` — a db_id of the data directory or a path to any SQLite file — to a file path.

    Raises:
        DataError: if neither a file at that path nor a database with that id exists, or the file
            found is not a usable SQLite database (directory, empty, not SQLite, corrupt; see
            :func:`database_problem`).
    """
    p = Path(db).expanduser()
    if p.suffix in {".sqlite", ".db", ".sqlite3"} or p.exists():
        if p.is_dir():
            raise DataError(f"database path {p} is a directory; pass the .sqlite file inside it or a db_id")
        if not p.is_file():
            raise DataError(f"database file {p} does not exist; pass an existing SQLite file or a db_id")
        path = p.resolve()
    else:
        d = Path(data_dir) if data_dir else default_data_dir()
        path = database_path(d, str(db))
        if not path.exists():
            known = sorted(x.name for x in (d / "database").iterdir()) if (d / "database").is_dir() else []
            hint = f" (known ids include: {', '.join(known[:8])}, ...)" if known else ""
            raise DataError(f"no database '{db}' under {d}{hint}; pass a db_id or the path of a .sqlite file")
    problem = database_problem(path)
    if problem:
        raise DataError(f"database {path} {problem}")
    return path


def split_file(data_dir: str | Path, split: str) -> Path:
    """The JSON file holding ``split`` in ``data_dir`` (always directly inside it).

    Raises:
        SplitNameError: ``split`` holds a path separator or is not a plain name (:func:`check_split_name`).
        DataError: unknown split or no file for it.
    """
    check_split_name(split, data_dir)
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
        raise DataError(
            f"data directory {data_dir} does not exist; pass --data-dir pointing at a Spider-format folder"
        )
    path = split_file(data_dir, split)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-copy the dataset file or re-save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-copy the dataset file") from e
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); check the file and its permissions") from e
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of questions")

    out: list[SpiderExample] = []
    missing: Counter[str] = Counter()
    db_cache: dict[str, Path] = {}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i} is a JSON {type(r).__name__}, not an object with "
                            "question, query (or SQL), db_id; fix or re-copy the dataset file")
        try:
            db_id = r["db_id"]
            question = r["question"]
        except KeyError as e:
            raise DataError(f"{path}: record {i} lacks field {e}; expected question, query (or SQL), db_id") from e
        gold = r.get("query", r.get("SQL"))
        if gold is None:
            raise DataError(f"{path}: record {i} has no 'query' (Spider) or 'SQL' (BIRD) field")
        for name, value in (("db_id", db_id), ("question", question), ("query", gold)):
            if not isinstance(value, str) or (name == "db_id" and not _DB_ID.fullmatch(value)):
                shown = json.dumps(value)[:80]
                what = "a folder name under database/" if name == "db_id" else "a string"
                raise DataError(
                    f"{path}: record {i} has {name} {shown}; it must be {what} — fix or re-copy the dataset file"
                )
        evidence = r.get("evidence", "") or ""
        if not isinstance(evidence, str):
            raise DataError(
                f"{path}: record {i} has a non-string 'evidence'; it must be a string — fix the dataset file"
            )
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
                evidence=evidence,
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
