"""Test data generators (tests and benchmarks only; nothing in dpgov's layers imports this).

- :mod:`dpgov.testing.memory`: small prepared data held in memory, in the shape of
  ``dpgov.data.PreparedData`` (tabular and images).
- :mod:`dpgov.testing.sources`: raw sources with their data contracts written to disk.
- :mod:`dpgov.testing.runs`: :func:`~dpgov.testing.runs.governed_data` writes a source and
  its contract and runs the real preparation on them: data a governed run can validate.
"""
