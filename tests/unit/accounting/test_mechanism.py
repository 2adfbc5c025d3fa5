import json

import pytest

from dpgov.accounting import AccountingInputError, DpSgdMechanism, mechanism_from_dict


def test_mechanism_round_trips_through_json_exactly():
    m = DpSgdMechanism(noise_multiplier=1.0000000000000002, sample_rate=256 / 60000, steps=2345)
    back = mechanism_from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    assert back.noise_multiplier == m.noise_multiplier
    assert back.sample_rate == m.sample_rate


def test_mechanism_is_frozen_and_keyword_only():
    m = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.1, steps=3)
    with pytest.raises(AttributeError):
        m.steps = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        DpSgdMechanism(1.0, 0.1, 3)  # type: ignore[misc]


def test_integer_and_float_parameters_give_equal_mechanisms():
    a = DpSgdMechanism(noise_multiplier=1, sample_rate=1, steps=3)
    b = DpSgdMechanism(noise_multiplier=1.0, sample_rate=1.0, steps=3)
    assert a == b and hash(a) == hash(b) and a.to_dict() == b.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier must be > 0"),
        ({"noise_multiplier": -1.0}, "noise_multiplier must be > 0"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier must be > 0"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\]"),
        ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\]"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"neighbouring": "replace_one"}, "neighbouring must be 'add_remove'"),
    ],
)
def test_out_of_domain_parameters_are_refused_with_the_value(kwargs, message):
    args = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10, **kwargs}
    with pytest.raises(AccountingInputError, match=message):
        DpSgdMechanism(**args)


def test_unknown_mechanism_kind_is_refused():
    with pytest.raises(AccountingInputError, match="unknown mechanism kind 'laplace'"):
        mechanism_from_dict({"kind": "laplace", "scale": 1.0})


def test_unknown_mechanism_key_is_refused():
    d = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.1, steps=3).to_dict()
    with pytest.raises(AccountingInputError, match="unknown mechanism keys"):
        mechanism_from_dict({**d, "clip": 1.0})


def test_mechanism_maps_to_the_dp_accounting_event():
    from dp_accounting import dp_event

    event = DpSgdMechanism(noise_multiplier=1.3, sample_rate=0.02, steps=7).to_dp_event()
    assert event == dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(0.02, dp_event.GaussianDpEvent(1.3)), 7
    )
