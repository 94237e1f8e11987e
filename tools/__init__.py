"""Tools the agents use: the Spider/BIRD task loader, schema inspection and the safe SQL executor."""
