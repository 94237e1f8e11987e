"""The run store and the trace readers: below both training (which writes rollouts into the store)
and the reports and commands (which read them back).

:mod:`evaluation.tracing.store` is the persistent Agent Lightning store on one SQLite file; the other
modules turn its spans (or a society run's ``traces/*.json``, or LangSmith's export) into span records,
trees and printed traces. They import tools only (tests/test_layers.py).
"""
