"""A command's console output as one line, to compare with the words a message must hold.

Typer prints an error inside a Rich box and wraps every line to the console width, so a message
longer than the width comes out split over box lines (``... is not an SQLite │\\n│ database``).
Whether it is split depends on the length of the paths in it -- a test's temporary directory
among them -- so a test that compares on whitespace alone passes or fails with where pytest puts
its files (the 2026-12-06 loaded proof run lost a test to a longer ``--basetemp``). :func:`flat`
takes the box borders and the wrapping out.
"""

from __future__ import annotations

__all__ = ["flat"]


def flat(text: str) -> str:
    """``text`` with Rich's vertical box borders removed and every run of whitespace made one space.

    Wrapping at a space is undone exactly; a single word longer than the console width (Rich folds
    it) is not, so tests keep the width large (``COLUMNS``).

    >>> flat("│ no usable database: a is not an SQLite │\\n│ database (file is not a database)  │")
    'no usable database: a is not an SQLite database (file is not a database)'
    """
    return " ".join(text.replace("│", " ").split())
