"""Helpers the tests share (generated heads and cohorts, a tiny detector, bad inputs, geometry,
a kill switch); the benchmarks load some of them by path.

Imported as ``support.<module>``: pytest puts tests/ on ``sys.path`` (rootdir conftest, no
``__init__.py`` in tests/), and `train.py` subprocesses get it on ``PYTHONPATH``.
"""
