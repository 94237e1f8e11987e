"""Execution accuracy (EX, Spider test-suite semantics), rewards, reports and plots."""
