"""The society: a LangGraph graph of junior drafters, a supervisor, a senior refiner and reviewers."""
