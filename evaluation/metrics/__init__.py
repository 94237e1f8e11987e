"""SQL text, execution accuracy (EX) and rewards: the lowest evaluation layer, on tools only.

The society (the senior's SQL extraction), training (rewards, EX labels) and the reports import it;
it imports nothing of theirs (tests/test_layers.py).
"""
