"""dpgov: differentially private training with a governed privacy budget.

Heavy dependencies (torch, opacus, mlflow, prefect, great_expectations) are imported lazily
inside the modules that need them, so importing :mod:`dpgov` stays fast.
"""

__version__ = "0.1.0"
