"""Test data generators (tests and benchmarks only; nothing in dpgov's layers imports this).

- :mod:`dpgov.testing.memory`: small prepared data held in memory, in the shape of
  ``dpgov.data.PreparedData`` (tabular and images).
- :mod:`dpgov.testing.sources`: raw sources with their data contracts written to disk, and
  :func:`~dpgov.testing.sources.make_prepared`, which runs the real preparation on them.
"""
