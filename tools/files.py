"""Output files written by the command line: checked before the work starts, written atomically.

* :func:`check_output_path` refuses, before any work, an output path that is a directory, whose
  folder cannot be created (a parent is a file) or written, or that is one of the command's inputs
  (writing there would destroy the input).
* :func:`atomic_writer` writes to a temporary file beside the target and renames it over the target
  only when the whole content was written: a failure or Ctrl-C leaves the target as it was (absent
  or the previous version) and no temporary file behind.
* :func:`read_jsonl` reads the JSON-lines files the runs write (records, metrics, span exports).
"""

from __future__ import annotations

import json
import logging
import lzma
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["OutputPathError", "atomic_write_text", "atomic_writer", "check_output_path", "read_jsonl", "same_file"]

logger = logging.getLogger(__name__)


class OutputPathError(ValueError):
    """An output path cannot be used; the message names the path and what to pass instead."""


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file (by inode when both exist, else by resolved path)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | Path, *, what: str = "output file", inputs: Iterable[str | Path] = ()) -> Path:
    """Check that ``path`` can be written as a file, without creating anything.

    Args:
        path: the output file (it may exist: it will be replaced; its folder may be missing: it
            will be created when written).
        what: how the message names the file, e.g. ``"--out"``.
        inputs: files the command reads; the output must be none of them.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        OutputPathError: ``path`` is a directory or another non-file; it is one of ``inputs``; a
            parent is an existing non-directory (the folder cannot be created); or the nearest
            existing folder is not writable.
    """
    p = Path(path).expanduser()
    for inp in inputs:
        if same_file(p, inp):
            raise OutputPathError(f"{what} {p} is the input file {inp}; writing it would destroy the input — "
                                  "pass another path")
    if p.is_dir():
        raise OutputPathError(f"{what} {p} is a directory; pass a file path (e.g. {p / 'out.jsonl'})")
    if p.exists() and not p.is_file():
        raise OutputPathError(f"{what} {p} exists and is not a regular file; pass another path")
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail
            raise OutputPathError(f"{what} {p} cannot be created: {parent} is a broken symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what} {p} cannot be created: {parent} is a file, not a folder; pass another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {p} cannot be created: folder {parent} is not writable; pass another path")
    return p


@contextmanager
def atomic_writer(path: str | Path, *, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """Open a text file that replaces ``path`` only when the ``with`` block finishes without error.

    Missing parent folders are created. The data goes to a hidden temporary file in the same
    folder (so the final rename is atomic), is flushed and fsynced, then renamed over ``path``;
    on any exception the temporary file and the folders created for it are deleted and ``path``
    is untouched.

    Raises:
        OSError: the folder cannot be created or written (``path`` is then untouched).
    """
    p = Path(path)
    created: list[Path] = []  # folders made here, removed again (if still empty) on failure
    d = p.parent
    while not d.exists():
        created.append(d)
        d = d.parent
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if p.exists():
            try:
                os.chmod(tmp, p.stat().st_mode & 0o7777)
            except OSError:
                pass
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_writer`).

    Raises:
        OSError: the folder cannot be created or written (``path`` is then untouched).
    """
    with atomic_writer(path, encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def read_jsonl(path: str | Path, *, error: type[Exception] = ValueError, drop_truncated_tail: bool = True,
               skip_bad: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (xz-compressed when its name ends in ``.xz``), one per
    non-blank line, in file order.

    A run killed while appending leaves a truncated last line: with ``drop_truncated_tail`` (the
    default) that line is dropped with a warning; every other bad line is an error, unless
    ``skip_bad``: then every line that is not a JSON object is left out, with one warning naming
    how many and the first (for a viewer of a file another process may be writing).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "r.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n\\n{"a": 2}\\n{"a": ')
    >>> read_jsonl(p)
    [{'a': 1}, {'a': 2}]
    >>> read_jsonl(p, drop_truncated_tail=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ... line 4 is not JSON (Expecting value); fix or remove that line
    >>> _ = p.write_text('{"a": 1}\\n[2]\\nnot json\\n{"a": 3}\\n')
    >>> read_jsonl(p, skip_bad=True)
    [{'a': 1}, {'a': 3}]
    >>> import lzma
    >>> x = p.with_suffix(".jsonl.xz")
    >>> _ = x.write_bytes(lzma.compress(b'{"a": 1}\\n'))  # ".xz": read through lzma
    >>> read_jsonl(x)
    [{'a': 1}]

    Raises:
        error (ValueError unless given): the file is missing, unreadable or not UTF-8, or a line
            is not JSON or not a JSON object; the message names the file and the line.
    """
    p = Path(path)
    try:
        if p.suffix == ".xz":  # committed records are xz-compressed JSON lines
            with lzma.open(p, "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
        else:
            lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise error(f"{p} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{p} is not UTF-8 text ({exc}); pass a JSON-lines file") from exc
    except EOFError as exc:
        raise error(f"{p} is a truncated xz file ({exc}); copy it again or decompress what is left with xz") from exc
    except lzma.LZMAError as exc:
        raise error(f"{p} is named .xz but is not xz data ({exc}); rename it or pass the uncompressed file") from exc
    except OSError as exc:
        raise error(f"{p} cannot be read ({exc.strerror or exc}); check its permissions") from exc
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if drop_truncated_tail and i == last:
                logger.warning("%s: dropping truncated last line", p)
                continue
            if skip_bad:
                skipped.append(i + 1)
                continue
            raise error(f"{p} line {i + 1} is not JSON ({exc.msg}); fix or remove that line") from exc
        if not isinstance(row, dict):
            if skip_bad:
                skipped.append(i + 1)
                continue
            raise error(f"{p} line {i + 1} is not a JSON object; fix or remove that line")
        rows.append(row)
    if skipped:
        logger.warning("%s: skipped %d line(s) that are not JSON objects (first: line %d)", p, len(skipped),
                       skipped[0])
    return rows
