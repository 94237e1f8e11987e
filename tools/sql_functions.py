"""SQLite's string functions that one VM instruction can spend seconds in, replaced or guarded (layer 5
of :mod:`tools.executor`).

``trim``/``ltrim``/``rtrim`` (O(len(X)*len(Y))) and ``instr``/``replace`` (naive search) run inside one
VM instruction, where no progress handler can stop them: :class:`StringFunctions` calls the built-in
for small operands (identical results) and a linear-time equivalent for large ones. ``printf``/``format``
calls whose widths and precisions may add up past the value cap are refused
(:func:`printf_width_bound`, read the way SQLite 3.40 reads a format). A statement whose text is not
valid UTF-8 cannot reach a Python override; its rerun keeps only the ``printf`` calls that need the guard
(:func:`guard_printf_calls`) and limits every value to :data:`UTF8_RERUN_MAX_BYTES`.

Standard library only: the executor's worker processes (:mod:`tools.sql_worker`) import it.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable
from typing import Any

_SMALL_OPERANDS = 1024  # total chars/bytes up to which the built-in (quadratic worst case) is used
#: Longest string or blob (bytes) of a statement rerun because text that is not valid UTF-8 reached
#: an override (:mod:`tools.executor`, layer 5): SQLite's own ``trim`` then costs at most 4096 x 4096
#: comparisons (about 40 ms), its ``instr``/``replace`` less.
UTF8_RERUN_MAX_BYTES = 4096
#: The SQLite functions :class:`StringFunctions` replaces on a connection's first run of a statement.
ALL_OVERRIDES = ("trim", "ltrim", "rtrim", "instr", "replace", "printf", "format")
#: Name the rerun gives a ``printf``/``format`` call it keeps guarded (:func:`guard_printf_calls`), + ``<k>_``.
_GUARDED_PRINTF = "sqlsociety_guarded_printf_"
_INT31 = 1 << 31  # SQLite reads printf widths and precisions as C ints
#: Characters SQLite's printf accepts between ``%`` and the conversion (flags, width, precision, ``l``).
_PRINTF_SPEC_CHARS = frozenset("-+ #!0,l.*123456789")
#: Conversions whose precision only shortens the output (it bounds how much input is read).
_PRECISION_SHORTENS = frozenset("sSzqQwT")
_LEADING_NUMBER = re.compile(r"\s*[+-]?(\d*)(\.\d*)?(?:[eE][+-]?\d+)?")


class _TooBig(Exception):
    """A replacement would build a value above the length limit."""


def _digits_bound(digits: str) -> int:
    """Value of a run of ASCII digits as SQLite's printf would use it, capped at 2**31."""
    return _INT31 if len(digits) > 10 else min(int(digits), _INT31)


def _int_arg_bound(v: Any) -> int:
    """Upper bound of ``abs(sqlite3_value_int64(v))`` truncated to a C int, for any SQL value.

    SQLite reads text (and blobs, as text) by their leading integer; a leading real
    (``'2e9'``) is counted too, so the bound holds whichever reading a version uses.
    """
    if v is None:
        return 0
    if isinstance(v, int):
        return min(abs(v), _INT31)
    if isinstance(v, float):
        return min(abs(int(v)), _INT31) if math.isfinite(v) else _INT31
    text = v.decode("latin-1") if isinstance(v, bytes) else str(v)
    m = _LEADING_NUMBER.match(text[:400])
    if m is None or not (m.group(1) or (m.group(2) or "").strip(".")):
        return 0
    bound = _digits_bound(m.group(1)) if m.group(1) else 0
    try:
        f = float(m.group(0))
    except (ValueError, OverflowError):
        return max(bound, _INT31)
    return max(bound, min(abs(int(f)), _INT31) if math.isfinite(f) else _INT31)


def printf_width_bound(fmt: Any, args: tuple) -> int:
    """Upper bound on the characters ``printf(fmt, *args)`` pads or repeats, as SQLite 3.40 reads it.

    Adds every width, and every precision except those of string conversions (where it only
    shortens). ``*`` counts as the largest value any argument could give (SQLite converts
    integers, reals and numeric text alike). ``fmt`` may be text or a blob (read as text);
    numbers and NULL contain no ``%``. Over-estimates rather than under-estimates.

    Returns:
        a non-negative int (at most ``2**31`` per width or precision).
    """
    if isinstance(fmt, bytes):
        text = fmt.decode("latin-1")
    elif isinstance(fmt, str):
        text = fmt
    else:
        return 0
    star = max((_int_arg_bound(a) for a in args), default=0)
    total, i, n = 0, 0, len(text)
    while True:
        i = text.find("%", i)
        if i < 0:
            return total
        i += 1
        width = precision = 0
        in_precision = False
        while i < n and text[i] in _PRINTF_SPEC_CHARS:
            c = text[i]
            if c == ".":
                in_precision = True
                i += 1
                continue
            if c == "*":
                value = star
                i += 1
            elif c.isdigit():
                j = i
                while j < n and "0" <= text[j] <= "9":
                    j += 1
                value = _digits_bound(text[i:j])
                i = j
            else:
                i += 1
                continue
            if in_precision:
                precision = max(precision, value)
            else:
                width = max(width, value)
        conversion = text[i] if i < n else ""
        total += width + (0 if conversion in _PRECISION_SHORTENS and conversion else precision)
        i += 1


_SQL_TOKEN = re.compile(
    r"""(?P<skip>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))"""
    r"""|(?P<str>'(?:[^']|'')*'?)"""
    r"""|(?P<qid>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)"""
    r"""|(?P<id>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)"""
    r"""|(?P<other>.)""",
    re.S,
)


def guard_printf_calls(sql: str, max_chars: int) -> tuple[str, dict[str, str]]:
    """Rename the ``printf``/``format`` calls of ``sql`` that SQLite's own printf could spin on.

    A call stays as it is when its format is a string literal with no ``*`` whose widths and
    precisions add up to at most ``max_chars`` (:func:`printf_width_bound`): whatever its other
    arguments, SQLite's printf is then bounded. Every other call is renamed
    ``sqlsociety_guarded_printf_<k>_`` (k = 0, 1, ...), a name the rerun registers as the Python
    guard. The SQL is tokenized as SQLite does for this purpose (comments, ``'...'`` literals,
    ``"..."``, ````...```` and ``[...]`` identifiers, which may name the function too); a
    ``printf``/``format`` name not followed by ``(`` is a column, not a call, and is left alone.

    Returns:
        ``(rewritten sql, {new name: the call's name as written})``; the SQL unchanged and ``{}``
        when every call is bounded (or there is none).
    """
    tokens = []
    for m in _SQL_TOKEN.finditer(sql):
        if m.lastgroup != "skip":
            kind, value = m.lastgroup, m.group()
            name = value[1:-1] if kind == "qid" and len(value) >= 2 else value
            tokens.append((kind, name, m.start(), m.end()))
    renames: list[tuple[int, int, str]] = []
    for i, (kind, name, start, end) in enumerate(tokens):
        if kind not in ("id", "qid") or not name.isascii() or name.lower() not in ("printf", "format"):
            continue
        if i + 1 >= len(tokens) or tokens[i + 1][:2] != ("other", "("):
            continue  # a column or table called printf/format
        fmt = tokens[i + 2] if i + 2 < len(tokens) else None
        after = tokens[i + 3][:2] if i + 3 < len(tokens) else None
        if (fmt is not None and fmt[0] == "str" and len(fmt[1]) >= 2 and fmt[1].endswith("'")
                and after in (("other", ","), ("other", ")"))
                and printf_width_bound(fmt[1][1:-1].replace("''", "'"), (_INT31,)) <= max_chars):
            continue  # a '*' counts as 2**31 above: only literal widths pass
        renames.append((start, end, f"{_GUARDED_PRINTF}{len(renames)}_"))
    names = {new: sql[start:end] for start, end, new in renames}
    for start, end, new in reversed(renames):
        sql = sql[:start] + new + sql[end:]
    return sql, names


def _recording(method: Callable) -> Callable:
    """Wrap an override so that any exception it raises is recorded in ``self.last_error``.

    A "user-defined function raised exception" with nothing recorded therefore means that
    ``sqlite3`` could not convert an argument or the result (e.g. text with invalid UTF-8).
    """

    def wrapper(self: StringFunctions, *args: Any) -> Any:
        try:
            return method(self, *args)
        except BaseException as e:
            if self.last_error is None:
                self.last_error = str(e) or type(e).__name__
            raise

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class StringFunctions:
    """Replacements for ``trim``/``ltrim``/``rtrim``/``instr``/``replace``/``printf``/``format``
    (:mod:`tools.executor`, layer 5).

    Small operands go to the built-in on a private in-memory connection (identical
    results); large ones use Python's linear-time ``str``/``bytes`` operations. Every
    failure is recorded in ``last_error`` (the message the caller reports).
    """

    def __init__(self, max_value_bytes: int) -> None:
        self.max_chars = max_value_bytes
        self.mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.mem.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        self.last_error: str | None = None

    def close(self) -> None:
        self.mem.close()

    @staticmethod
    def _size(args: tuple) -> int:
        return sum(len(a) for a in args if isinstance(a, (str, bytes)))

    def _builtin(self, sql: str, args: tuple) -> Any:
        return self.mem.execute(sql, args).fetchone()[0]

    def _text(self, v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        return self._builtin("SELECT CAST(? AS TEXT)", (v,))  # SQLite's own number rendering

    def _fail(self, what: str) -> None:
        self.last_error = f"string or blob too big (result of {what} exceeds {self.max_chars} bytes)"
        raise _TooBig(self.last_error)

    @_recording
    def replace(self, x: Any, y: Any, z: Any) -> Any:
        if self._size((x, y, z)) <= _SMALL_OPERANDS:
            return self._builtin("SELECT replace(?, ?, ?)", (x, y, z))
        xs = self._text(x)
        if xs is None:
            return None
        ys = self._text(y)
        if ys is None:
            return None
        if ys == "":
            return x
        zs = self._text(z)
        if zs is None:
            return None
        n = xs.count(ys)
        if len(xs) + n * (len(zs) - len(ys)) > self.max_chars:
            self._fail("replace()")
        return xs.replace(ys, zs)

    @_recording
    def instr(self, x: Any, y: Any) -> Any:
        if self._size((x, y)) <= _SMALL_OPERANDS:
            return self._builtin("SELECT instr(?, ?)", (x, y))
        if x is None or y is None:
            return None
        if isinstance(x, bytes) and isinstance(y, bytes):
            return x.find(y) + 1
        return self._text(x).find(self._text(y)) + 1

    @_recording
    def strip(self, name: str, x: Any, y: Any, left: bool, right: bool) -> Any:
        if self._size((x, y)) <= _SMALL_OPERANDS:
            return self._builtin(f"SELECT {name}(?, ?)", (x, y))
        xs = self._text(x)
        ys = self._text(y)
        if xs is None or ys is None:
            return None
        chars = set(ys)
        i, j = 0, len(xs)
        if left:
            while i < j and xs[i] in chars:
                i += 1
        if right:
            while j > i and xs[j - 1] in chars:
                j -= 1
        return xs[i:j]

    @_recording
    def printf(self, fmt: Any, *args: Any) -> Any:
        # SQLite 3.40's printf loops once per padded/repeated character even after its buffer
        # is full ("%.2000000000c": seconds inside one instruction). Refuse any call whose
        # widths and precisions may add up past the value cap; run the others with the built-in.
        if printf_width_bound(fmt, args) > self.max_chars:
            self._fail("printf()/format()")
        return self._builtin(f"SELECT printf({', '.join('?' * (1 + len(args)))})", (fmt, *args))

    def install(self, conn: sqlite3.Connection, names: tuple[str, ...] = ALL_OVERRIDES) -> None:
        """Register the replacements named in ``names`` on ``conn`` (1- and 2-argument trims, instr,
        replace, printf/format, and the guarded printf names of :func:`guard_printf_calls`; the
        functions not named stay SQLite's)."""
        for name, left, right in (("trim", True, True), ("ltrim", True, False), ("rtrim", False, True)):
            if name not in names:
                continue
            conn.create_function(
                name, 2, (lambda x, y, _n=name, _l=left, _r=right: self.strip(_n, x, y, _l, _r)), deterministic=True
            )
            conn.create_function(
                name, 1, (lambda x, _n=name, _l=left, _r=right: self.strip(_n, x, " ", _l, _r)), deterministic=True
            )
        if "instr" in names:
            conn.create_function("instr", 2, self.instr, deterministic=True)
        if "replace" in names:
            conn.create_function("replace", 3, self.replace, deterministic=True)
        for name in names:
            if name in ("printf", "format") or name.startswith(_GUARDED_PRINTF):
                conn.create_function(name, -1, self.printf, deterministic=True)

