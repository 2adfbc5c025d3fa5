"""A site's local round (dpgov.federated.local) and the federated evaluation
(dpgov.federated.evaluation): the DP round is exactly the mechanism charged (steps and q as
Opacus's accountant recorded them, and the noise of exactly that many steps measured on the
weights), weights round-trip, site mode learns, and the evaluation's numbers match sklearn on
scores computed by hand."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dpgov.federated.evaluation import (
    SiteEvaluation,
    evaluate_site,
    federated_fairness,
    site_scores,
)
from dpgov.federated.local import (
    LocalData,
    build_site_model,
    get_arrays,
    load_site_data,
    set_arrays,
    train_local,
)
from dpgov.federated.types import FederatedSpec, SiteSpec
from dpgov.testing.memory import make_tabular, write_prepared


def _spec(**kw: object) -> FederatedSpec:
    base = FederatedSpec(sites=(SiteSpec("a", "unused"),), seed=11, hidden=16, local_steps=7)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    records = make_tabular(n_train=600, n_test=300, seed=1)
    out = {"records": write_prepared(records, root / "records")}
    patients = make_tabular(n_train=600, n_test=300, seed=2)
    # 200 patients with 3 training records each: patient-level DP-SGD
    patients.train["patient_id"] = [f"q{i // 3:05d}" for i in range(len(patients.train))]
    out["patients"] = write_prepared(patients, root / "patients")
    separable = make_tabular(n_train=400, n_test=200, seed=3, signal=6.0)
    out["separable"] = write_prepared(separable, root / "separable")
    return out


@pytest.fixture(scope="module")
def sites(folders: dict[str, Path]) -> dict[str, LocalData]:
    return {name: load_site_data(path) for name, path in folders.items()}


def test_load_site_data(sites: dict[str, LocalData]) -> None:
    rec, pat = sites["records"], sites["patients"]
    assert (len(rec.train.y), len(rec.test.y), rec.n_features) == (600, 300, 6)
    assert rec.records_per_patient == 1 and rec.units == 600 and not rec.patient_level
    assert pat.records_per_patient == 3 and pat.units == 200 and pat.patient_level
    assert rec.version.endswith(".dir") and rec.version != pat.version
    assert list(rec.test.sensitive.columns) == ["sex", "age_band"]


def test_arrays_round_trip_and_the_shared_initialisation(sites: dict[str, LocalData]) -> None:
    data = sites["records"]
    first = get_arrays(build_site_model(_spec(), data))
    again = get_arrays(build_site_model(_spec(), data))
    other = build_site_model(_spec(seed=12), data)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # same init
    assert not np.array_equal(first[0], get_arrays(other)[0])
    set_arrays(other, first)
    assert all(np.array_equal(a, b) for a, b in zip(first, get_arrays(other), strict=True))
    assert [k for k in other.state_dict()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="expected shape"):
        set_arrays(other, [first[1], first[0], *first[2:]])
    with pytest.raises(ValueError, match="4 tensors, got 3"):
        set_arrays(other, first[:3])


@pytest.mark.parametrize("site", ["records", "patients"])
def test_dp_round_is_the_mechanism_charged(sites: dict[str, LocalData], site: str) -> None:
    """Exactly local_steps Opacus steps at q = B/U, as Opacus's accountant recorded them; and
    the weights moved by the noise of exactly that many steps: with σ huge each weight
    changes by a sum of T draws of N(0, (lr·σ·C/(qU))²), so its variance over 4,097 weights
    estimates T (relative sd 2.2 %; T ± 1 is 14 % off)."""
    data = sites[site]
    sigma, clip, lr, steps, batch = 1000.0, 0.5, 0.01, 7, 50
    spec = _spec(
        hidden=512, noise_multiplier=sigma, clip=clip, lr=lr, local_steps=steps, batch_size=batch
    )
    start = get_arrays(build_site_model(spec, data))
    result = train_local(start, data, spec, private=True)
    units = 200 if site == "patients" else 600
    q = batch / units
    assert result.unit == ("patient" if site == "patients" else "record")
    assert (result.steps, result.sample_rate) == (steps, q)
    assert result.history == [(sigma, q, steps)]  # Opacus's RDP accountant's own record
    assert result.examples == 600
    assert [a.shape for a in result.arrays] == [a.shape for a in start]  # plain state_dict
    moved = np.concatenate([(b - a).ravel() for a, b in zip(start, result.arrays, strict=True)])
    assert moved.size == 6 * 512 + 512 + 512 + 1
    per_step = (lr * sigma * clip / (q * units)) ** 2
    estimated_steps = float(np.mean(moved**2)) / per_step
    assert abs(estimated_steps - steps) / steps < 0.1, estimated_steps


def test_dp_round_caps_q_at_one_and_never_touches_the_global_generator(
    sites: dict[str, LocalData],
) -> None:
    """A batch above the site's units samples everyone (q = 1); the masks and noise come from
    dpgov's own secret generators: the global torch RNG (which spec.seed seeds) is neither
    drawn from nor what decides the noise."""
    data = sites["patients"]
    spec = _spec(batch_size=5000, local_steps=3)
    start = get_arrays(build_site_model(spec, data))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    result = train_local(start, data, spec, private=True)
    assert torch.equal(torch.get_rng_state(), before)
    assert result.history == [(1.0, 1.0, 3)] and result.sample_rate == 1.0
    assert result.examples_seen == 3 * 600  # every record of every patient, each step
    torch.manual_seed(5)
    again = train_local(start, data, spec, private=True)
    assert not np.array_equal(again.arrays[0], result.arrays[0])  # fresh secret noise


@pytest.mark.parametrize("site", ["records", "patients"])
def test_steps_that_sample_no_one_are_taken_and_recorded(
    sites: dict[str, LocalData], site: str
) -> None:
    """At q = 1/U a step samples no one with probability about 0.37: over 30 steps some
    surely do (all 30 non-empty: about 1e-6). Each is still a noised step, and counted."""
    data = sites[site]
    spec = _spec(batch_size=1, local_steps=30)
    start = get_arrays(build_site_model(spec, data))
    result = train_local(start, data, spec, private=True)
    assert result.history == [(1.0, 1 / data.units, 30)] and result.steps == 30
    assert all(np.isfinite(a).all() for a in result.arrays)


def test_site_mode_trains_without_noise_and_learns(sites: dict[str, LocalData]) -> None:
    data = sites["separable"]
    spec = _spec(local_steps=10, batch_size=32, lr=0.5)
    arrays = get_arrays(build_site_model(spec, data))
    same = train_local(arrays, data, spec, private=False)
    twin = train_local(arrays, data, spec, private=False)
    # no noise: one seed, one round, the same weights
    assert all(np.array_equal(a, b) for a, b in zip(same.arrays, twin.arrays, strict=True))
    assert same.steps == 10 and same.history == [] and same.examples_seen == 320
    losses = []
    for r in range(5):
        result = train_local(arrays, data, spec, private=False, round_index=r)
        arrays = result.arrays
        losses.append(result.loss)
    assert losses[-1] < 0.6 * losses[0], losses
    assert all(b < a for a, b in itertools.pairwise(losses[:3])), losses


def _logreg_on_first_feature(data: LocalData) -> tuple[FederatedSpec, list[np.ndarray]]:
    """A logistic model whose score is sigmoid(2·x0 - 1): scores known without torch."""
    spec = _spec(model="logreg")
    model = build_site_model(spec, data)
    weight = np.zeros((1, data.n_features), dtype=np.float32)
    weight[0, 0] = 2.0
    set_arrays(model, [weight, np.array([-1.0], dtype=np.float32)])
    return spec, get_arrays(model)


def test_evaluate_site_against_sklearn(sites: dict[str, LocalData]) -> None:
    data = sites["records"]
    spec, arrays = _logreg_on_first_feature(data)
    expected = 1.0 / (1.0 + np.exp(-(2.0 * data.test.x[:, 0].astype(float) - 1.0)))
    y = data.test.y.astype(int)
    ev = evaluate_site("a", arrays, data, spec, min_group_n=30, min_group_positives=5)
    cut = float(np.mean(data.train.y))  # the site's training prevalence
    assert ev.threshold == pytest.approx(cut)
    assert (ev.n, ev.positives) == (300, int(y.sum()))
    assert ev.auroc == pytest.approx(roc_auc_score(y, expected), abs=1e-9)
    pred = expected >= cut
    assert ev.accuracy == pytest.approx(float(np.mean(pred == y)), abs=1e-9)
    assert ev.fnr == pytest.approx(float(np.mean(~pred[y == 1])), abs=1e-9)
    women = (data.test.sensitive["sex"] == "F").to_numpy()
    row = next(r for r in ev.subgroups if r["attribute"] == "sex" and r["group"] == "F")
    assert row["n"] == int(women.sum())
    assert row["auroc"] == pytest.approx(roc_auc_score(y[women], expected[women]), abs=1e-9)
    assert ev.train_patients == 600 and ev.data_version == data.version
    yy, ss, sens = site_scores(arrays, data, spec)
    assert np.allclose(ss, expected, atol=1e-6) and np.array_equal(yy, y) and len(sens) == 300


def _site(rng: np.random.Generator, n: int, separation: float) -> tuple:
    """n test rows, half positive, scores N(±separation, 1) squashed; sex alternating."""
    y = (np.arange(n) % 2 == 0).astype(int)
    raw = rng.normal(np.where(y == 1, separation, -separation), 1.0)
    scores = 1.0 / (1.0 + np.exp(-raw))
    sex = pd.DataFrame({"sex": np.where(np.arange(n) % 4 < 2, "F", "M")})
    return y, scores, sex


def _evals(scores: dict[str, tuple], sizes: dict[str, int]) -> list[SiteEvaluation]:
    return [
        SiteEvaluation(
            site=s,
            n=len(y),
            auroc=float(roc_auc_score(y, p)),
            accuracy=float(np.mean((p >= 0.5) == y)),
            positives=int(y.sum()),
            subgroups=[],
            threshold=0.5,
            train_patients=sizes[s],
        )
        for s, (y, p, _sex) in scores.items()
    ]


def test_federated_fairness_finds_the_smallest_site_worst() -> None:
    rng = np.random.default_rng(0)
    scores = {
        "big": _site(rng, 200, 1.5),
        "mid": _site(rng, 120, 1.0),
        "small": _site(rng, 60, 0.1),
    }
    out = federated_fairness(
        _evals(scores, {"big": 2000, "mid": 900, "small": 300}),
        scores,
        min_group_n=30,
        min_group_positives=5,
    )
    rows = {r["site"]: r for r in out["sites"]}
    want = {s: roc_auc_score(y, p) for s, (y, p, _x) in scores.items()}
    for s, (y, p, _x) in scores.items():
        assert rows[s]["auroc"] == pytest.approx(want[s], abs=1e-9)
        assert rows[s]["fnr"] == pytest.approx(float(np.mean(p[y == 1] < 0.5)), abs=1e-9)
        assert rows[s]["judged"] == {"auroc": True, "fnr": True}
    gap = next(g for g in out["gaps"] if g["metric"] == "auroc")
    assert gap["gap"] == pytest.approx(max(want.values()) - min(want.values()), abs=1e-9)
    assert gap["groups_judged"] == 3
    assert out["worst"]["auroc"] == {
        "site": "small",
        "value": rows["small"]["auroc"],
        "smallest": True,
    }
    assert out["smallest_site"] == "small" and out["smallest_by"] == "train_patients"
    assert out["smallest_is_worst"] is True
    # the within-site attribute, pooled over the three sites
    y_all = np.concatenate([v[0] for v in scores.values()])
    p_all = np.concatenate([v[1] for v in scores.values()])
    sex_all = np.concatenate([v[2]["sex"].to_numpy() for v in scores.values()])
    women = next(r for r in out["pooled"]["subgroups"] if r["group"] == "F")
    f = sex_all == "F"
    assert women["n"] == int(f.sum()) and out["pooled"]["n"] == 380
    assert women["auroc"] == pytest.approx(roc_auc_score(y_all[f], p_all[f]), abs=1e-9)


def test_a_site_too_small_to_judge_is_not_the_worst() -> None:
    rng = np.random.default_rng(1)
    scores = {
        "big": _site(rng, 200, 1.5),
        "mid": _site(rng, 120, 0.3),
        "tiny": _site(rng, 12, 0.0),  # below min_group_n: not judged
    }
    evals = _evals(scores, {"big": 2000, "mid": 900, "tiny": 40})
    out = federated_fairness(evals, scores, min_group_n=30, min_group_positives=5)
    rows = {r["site"]: r for r in out["sites"]}
    assert rows["tiny"]["judged"] == {"auroc": False, "fnr": False}
    assert out["worst"]["auroc"]["site"] == "mid"  # the judged worst
    assert out["smallest_site"] == "tiny" and out["smallest_judged"]["auroc"] is False
    assert out["smallest_is_worst"] is False
    gap = next(g for g in out["gaps"] if g["metric"] == "auroc")
    assert sorted(gap["groups"]) == ["big", "mid"]
    assert gap["gap"] == pytest.approx(rows["big"]["auroc"] - rows["mid"]["auroc"], abs=1e-9)
    with pytest.raises(ValueError, match="scores of"):
        federated_fairness(evals, {k: v for k, v in scores.items() if k != "mid"})
    with pytest.raises(ValueError, match="evaluated on"):
        federated_fairness([replace(evals[0], n=199), *evals[1:]], scores)
