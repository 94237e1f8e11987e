"""The ``sqlsociety`` command line: the root (:mod:`society.cli.root`) above every other package.

A package of its own so that its folder shows its layer: the root imports the commands of society,
evaluation and training, and nothing imports it (tests/test_layers.py). ``python -m society.cli`` runs it.
"""
