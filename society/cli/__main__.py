"""``python -m society.cli``: the ``sqlsociety`` command line (:mod:`society.cli.root`)."""

from society.cli.root import app

app(prog_name="sqlsociety")
