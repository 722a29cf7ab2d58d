"""Benchmarks that compare infer-run with the ways people run batch inference without it."""
