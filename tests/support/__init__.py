"""Helpers shared by the tests (and the benchmarks, which load them by path)."""
