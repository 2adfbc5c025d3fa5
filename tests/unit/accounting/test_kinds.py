"""The registry of mechanism kinds: (de)serialisation, events, PLD and RDP in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from dpgov.accounting import (
    KINDS,
    AccountingInputError,
    DpSgdMechanism,
    MechanismKind,
    build_pld,
    dp_event,
    epsilon,
    kind_named,
    kind_of,
    mechanism_from_dict,
    mechanism_to_dict,
    rdp_vector,
    register,
)

M = DpSgdMechanism(noise_multiplier=1.3, sample_rate=0.02, steps=70)


def test_dp_sgd_is_registered_under_the_kind_its_entries_carry():
    assert kind_named("dp_sgd").cls is DpSgdMechanism
    assert kind_of(M) is KINDS["dp_sgd"]
    assert mechanism_to_dict(M)["kind"] == "dp_sgd"


def test_a_mechanism_round_trips_through_the_registry_and_json():
    back = mechanism_from_dict(json.loads(json.dumps(mechanism_to_dict(M))))
    assert back == M and type(back) is DpSgdMechanism


def test_an_entry_written_by_the_first_ledger_still_reads_the_same():
    stored = {
        "kind": "dp_sgd",
        "noise_multiplier": 1.1,
        "sample_rate": 0.004,
        "steps": 2345,
        "neighbouring": "add_remove",
    }
    assert mechanism_from_dict(stored) == DpSgdMechanism(
        noise_multiplier=1.1, sample_rate=0.004, steps=2345
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "laplace", "scale": 1.0}, "unknown mechanism kind 'laplace'"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3}, "unknown mechanism kind None"),
        ({"kind": ["dp_sgd"]}, r"unknown mechanism kind \['dp_sgd'\]"),
        ("dp_sgd", "unknown mechanism kind None"),
    ],
)
def test_an_unknown_or_missing_kind_is_refused_by_name(data, message):
    with pytest.raises(AccountingInputError, match=message):
        mechanism_from_dict(data)


def test_an_object_of_no_registered_kind_is_refused():
    with pytest.raises(AccountingInputError, match="not a mechanism of a registered kind"):
        kind_of((1.0, 0.1, 3))


def test_a_kind_is_registered_once_so_stored_meanings_never_change():
    with pytest.raises(ValueError, match="'dp_sgd' is registered already"):
        register(KINDS["dp_sgd"])


def test_the_event_is_the_dp_sgd_event():
    assert dp_event(M) == M.to_dp_event()


def test_the_rdp_vector_is_dp_accountings_for_the_same_event():
    from dp_accounting import rdp

    orders = [1.5, 2.0, 8.0, 64.0]
    acc = rdp.RdpAccountant(orders=orders)
    acc.compose(M.to_dp_event(), 3)
    assert rdp_vector(M, orders, count=3) == [float(x) for x in acc.rdp]


def test_the_pld_is_dp_accountings_for_the_same_event():
    from dp_accounting import pld

    acc = pld.PLDAccountant(value_discretization_interval=2e-4)
    acc.compose(M.to_dp_event(), 2)
    ours = build_pld(M, count=2).get_epsilon_for_delta(1e-5)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)


# A new kind is one class and one registration; every accountant but PRV then composes it.


@dataclass(frozen=True, kw_only=True)
class GaussianRelease:
    """A Gaussian release of a statistic of sensitivity 1 with noise σ (for this test)."""

    kind: ClassVar[str] = "test_gaussian_release"
    noise_multiplier: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "noise_multiplier": self.noise_multiplier}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GaussianRelease:
        return cls(noise_multiplier=data["noise_multiplier"])

    def to_dp_event(self) -> Any:
        from dp_accounting import dp_event as events

        return events.GaussianDpEvent(self.noise_multiplier)


def _gaussian_pld(m: GaussianRelease, discretization: float, count: int) -> Any:
    from dp_accounting.pld import privacy_loss_distribution as pld

    one = pld.from_gaussian_mechanism(
        m.noise_multiplier, value_discretization_interval=discretization
    )
    return one.self_compose(count)


@pytest.fixture
def gaussian_kind(monkeypatch):
    kind = MechanismKind(
        name=GaussianRelease.kind,
        cls=GaussianRelease,
        from_dict=GaussianRelease.from_dict,
        dp_event=GaussianRelease.to_dp_event,
        pld=_gaussian_pld,
    )
    monkeypatch.delitem(KINDS, kind.name, raising=False)
    register(kind)
    yield kind
    KINDS.pop(kind.name, None)


def test_a_registered_kind_is_read_back_and_composed_with_dp_sgd(gaussian_kind):
    release = GaussianRelease(noise_multiplier=8.0)
    assert mechanism_from_dict(release.to_dict()) == release
    alone = epsilon([M], delta=1e-5)
    both = epsilon([M, release], delta=1e-5)
    assert both > alone
    # RDP comes from the kind's event when the kind gives no RDP of its own
    assert epsilon([M, release], delta=1e-5, accountant="rdp") > both
