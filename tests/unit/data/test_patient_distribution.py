"""`dpgov budget --patients`: the distribution of per-patient ε from history classes."""

from __future__ import annotations

from dpgov.cli.patients import distribution
from dpgov.ledger.records import PatientClass


def _cls(domain: str, count: int, eps: float, n_charges: int = 1) -> PatientClass:
    return PatientClass(domain, count, [f"r{i}" for i in range(n_charges)], eps, [])


def test_min_median_max_are_over_patients_not_classes() -> None:
    # 1 patient at 9, 2 at 1, 3 at 0: the median patient (of 6) is between 0 and 1
    (d,) = distribution([_cls("a", 1, 9.0), _cls("a", 2, 1.0), _cls("a", 3, 0.0, 0)], limit=8)
    assert (d["patients"], d["classes"]) == (6, 3)
    assert (d["epsilon_min"], d["epsilon_median"], d["epsilon_max"]) == (0.0, 0.5, 9.0)
    assert d["patients_over_limit"] == 1
    assert [c["patients"] for c in d["history_classes"]] == [1, 2, 3]  # worst first
    (odd,) = distribution([_cls("a", 1, 9.0), _cls("a", 2, 1.0)], limit=8)
    assert odd["epsilon_median"] == 1.0


def test_domains_are_reported_apart() -> None:
    out = distribution([_cls("b", 5, 2.0), _cls("a", 1, 3.0)], limit=2)
    assert [d["domain"] for d in out] == ["a", "b"]
    assert [d["patients_over_limit"] for d in out] == [1, 0]  # 2.0 is within a limit of 2
