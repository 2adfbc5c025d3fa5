"""Own images (issue 19): a generated folder of tiny PNGs (and DICOMs when pydicom is
installed) with a CSV and a Parquet manifest: prepare → validate (Great Expectations on the
prepared image files) → a batch read from disk; each bad-input case exits 2 with one line and
registers nothing; ``dpgov run --dry-run`` (images and tabular) charges nothing."""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from tests.cli import run_dpgov

SIZE = 16
REPO = Path(__file__).resolve().parents[3]


def docs_manifest_contract() -> str:
    """The manifest contract example of docs/data.md (the first test prepares under it)."""
    text = (REPO / "docs" / "data.md").read_text()
    found = re.search(r"<!-- manifest-contract -->\n```yaml\n(.*?)```", text, re.S)
    assert found, "docs/data.md has no manifest contract example"
    return found.group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 patients with 1-3 PNG images each; manifest.csv and manifest.parquet; contracts."""
    from dpgov.testing.image_files import make_image_folder, manifest_contract

    root = tmp_path_factory.mktemp("scans")
    manifest = make_image_folder(root, n_patients=24, size=SIZE)
    manifest.to_csv(root / "manifest.csv", index=False)
    manifest.to_parquet(root / "manifest.parquet", index=False)
    (root / "scans.yaml").write_text(docs_manifest_contract())  # 16 px, 3 per patient
    (root / "one_each.yaml").write_text(manifest_contract(size=SIZE, max_records=1))
    (root / "large_only.yaml").write_text(manifest_contract(size=SIZE, min_size=32))
    return root


def _entries() -> int:
    from dpgov.ledger import Ledger

    led = Ledger.open()
    try:
        return len(led.entries())
    finally:
        led.close()


def test_csv_and_parquet_manifests_prepare_validate_and_read_from_disk(
    world: Path, tmp_path: Path, dpgov_home: Path
) -> None:
    from PIL import Image

    from dpgov.data import load_prepared, prepare, validate
    from dpgov.data.image_store import DiskImages
    from dpgov.data.manifest import file_sha256
    from dpgov.training.inputs import arrays

    contract = world / "scans.yaml"
    res = prepare(world / "manifest.csv", contract, out=tmp_path / "csv", register=False)
    assert res.kind == "image" and sorted(res.blocks) == ["site-a", "site-b"]
    checked = validate(
        world / "manifest.csv", contract, prepared=tmp_path / "csv", out=tmp_path / "v"
    )
    assert checked.ok, [(c.name, c.detail) for c in checked.failed]
    image_rules = {c.rule for c in checked.checks if c.table == "images"}
    assert image_rules == {"image_exists", "image_content", "image_decodes", "image_size"}

    prep = load_prepared(tmp_path / "csv")
    assert "path" not in prep.train.columns  # source paths never reach prepared data
    a = arrays(prep, "train")
    assert isinstance(a.x, DiskImages) and a.x.shape == (len(a.y), 1, SIZE, SIZE)
    batch = a.x[0:4]
    assert batch.shape == (4, 1, SIZE, SIZE) and batch.dtype == np.float32
    # the first row's image: decoded, /255, normalised with the contract's mean 0.5, std 0.25
    rel = str(prep.train["image_file"].iloc[0])
    assert Path(rel).stem == file_sha256(tmp_path / "csv" / rel)  # content-addressed copy
    raw = np.asarray(Image.open(tmp_path / "csv" / rel), dtype=np.float32) / 255.0
    np.testing.assert_allclose(batch[0, 0], (raw - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    item, label = a.x.torch_dataset(a.y)[3]
    assert tuple(item.shape) == (1, SIZE, SIZE) and float(label) == a.y[3]
    # a boolean mask is a lazy subset: nothing read until a batch is asked for
    half = a.x[np.arange(len(a.y)) % 2 == 0]
    assert isinstance(half, DiskImages) and len(half) == (len(a.y) + 1) // 2

    pq = prepare(world / "manifest.parquet", contract, out=tmp_path / "pq", register=False)
    assert (pq.n_train, pq.n_test, pq.blocks) == (res.n_train, res.n_test, res.blocks)
    other = load_prepared(tmp_path / "pq")
    assert sorted(other.train["image_file"]) == sorted(prep.train["image_file"])


@pytest.mark.skipif(find_spec("pydicom") is None, reason="pydicom not installed (imaging extra)")
def test_a_dicom_manifest_prepares_and_reads(tmp_path: Path, dpgov_home: Path) -> None:
    from dpgov.data import load_prepared, prepare
    from dpgov.testing.image_files import make_image_folder, manifest_contract
    from dpgov.training.inputs import arrays

    manifest = make_image_folder(tmp_path, n_patients=12, size=SIZE, fmt="dcm")
    manifest.to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "c.yaml").write_text(manifest_contract(size=8, max_records=3))
    prepare(tmp_path / "m.csv", tmp_path / "c.yaml", out=tmp_path / "p", register=False)
    x = arrays(load_prepared(tmp_path / "p"), "train").x[0:3]
    # resized 16 → 8; DICOM scaled by its own min and max, then (x - 0.5) / 0.25
    assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all()
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6 and x.max() > x.min()


def test_validation_fails_on_a_damaged_copy_and_on_small_images(
    world: Path, tmp_path: Path, dpgov_home: Path
) -> None:
    from dpgov.data import load_prepared, prepare, validate

    contract = world / "large_only.yaml"  # min_size 32: the 16-pixel images are too small
    prepare(world / "manifest.csv", contract, out=tmp_path / "p", register=False)
    rel = str(load_prepared(tmp_path / "p").train["image_file"].iloc[0])
    (tmp_path / "p" / rel).write_bytes(b"not a png any more")
    checked = validate(world / "manifest.csv", contract, prepared=tmp_path / "p", out=tmp_path)
    assert not checked.ok
    failed = {c.name: c.observed for c in checked.failed if c.table == "images"}
    assert set(failed) == {
        "every image's bytes match its content address (SHA-256)",
        "every image decodes",
        "image height: known",
        "image width: known",
        "image height: within [32, 4096] pixels",
        "image width: within [32, 4096] pixels",
    }
    assert failed["every image decodes"]["unexpected"] == 1


def _bad_world(root: Path, case: str) -> tuple[Path, Path]:
    """A copy of the manifest (and contract) broken in one way."""
    import pandas as pd

    out = root / case
    out.mkdir()
    m = pd.read_csv(root / "manifest.csv")
    contract = root / "scans.yaml"
    if case == "unreadable":
        (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        m.loc[2, "path"] = "images/broken.png"
    elif case == "missing_file":
        m.loc[2, "path"] = "images/nowhere.png"
    elif case == "missing_column":
        m = m.drop(columns=["site"])
    elif case == "too_many_images":
        contract = root / "one_each.yaml"
    m["path"] = [str(root / p) for p in m["path"]]
    m.to_csv(out / "manifest.csv", index=False)
    return out / "manifest.csv", contract


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("unreadable", "images/broken.png: cannot decode"),
        ("missing_file", "images/nowhere.png: no such file"),
        ("missing_column", "column 'site' named in the contract is missing"),
        ("too_many_images", "allows 1 per patient at image level"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_registers_nothing(
    world: Path,
    tmp_path: Path,
    dpgov_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    said: str,
) -> None:
    import shutil

    root = tmp_path / "w"
    shutil.copytree(world, root)
    manifest, contract = _bad_world(root, case)
    before = _entries()
    code, out, err = run_dpgov(
        monkeypatch,
        capsys,
        "data",
        "prepare",
        "--data",
        str(manifest),
        "--contract",
        str(contract),
        "--out",
        str(tmp_path / "prepared"),
        "--no-dvc",
    )
    assert code == 2, (out, err)
    assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _entries() == before and not (tmp_path / "prepared").exists()


def _dry_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], params: Path
) -> dict:
    before = _entries()
    code, out, err = run_dpgov(monkeypatch, capsys, "run", "--dry-run", "--params", str(params))
    assert code == 0, err
    assert "nothing charged" in out and "cost per block" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    code, out, err = run_dpgov(
        monkeypatch, capsys, "run", "--dry-run", "--params", str(params), "--json"
    )
    assert code == 0, err
    assert _entries() == before  # nothing charged, reserved or recorded
    return json.loads(out)


def _params(tmp_path: Path, source: Path, contract: Path, prepared: Path, model: str) -> Path:
    extra = "  channels: [4, 8]\n  groups: 2\n" if model == "cnn" else ""
    file = tmp_path / "params.yaml"
    file.write_text(
        f"data:\n  source: {source}\n  contract: {contract}\n"
        f"train:\n  data: {prepared}\n  epochs: 1\n  batch_size: 8\n  reference: false\n"
        f"model:\n  name: {model}\n{extra}"
    )
    return file


def test_dry_run_on_images_checks_plans_and_charges_nothing(
    world: Path,
    tmp_path: Path,
    dpgov_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpgov.data import prepare
    from dpgov.testing.image_files import make_image_folder, manifest_contract

    monkeypatch.chdir(tmp_path)
    manifest = make_image_folder(tmp_path / "d", n_patients=30, images_per_patient=(1,))
    manifest.to_csv(tmp_path / "d" / "m.csv", index=False)
    (tmp_path / "c.yaml").write_text(manifest_contract(size=SIZE, max_records=1))
    prepare(tmp_path / "d" / "m.csv", tmp_path / "c.yaml", out=tmp_path / "p")
    params = _params(tmp_path, tmp_path / "d" / "m.csv", tmp_path / "c.yaml", tmp_path / "p", "cnn")
    found = _dry_run(monkeypatch, capsys, params)
    m = found["mechanism"]
    assert found["charged"] is False and m["unit_of_privacy"] == "patient"
    assert m["noise_multiplier"] > 0 and 0 < m["epsilon_run"] <= 2.0 + 1e-9  # target ε 2
    assert [b["block"] for b in found["blocks"]] == ["site-a", "site-b"]
    assert all(b["epsilon_spent"] == 0.0 and b["registered"] for b in found["blocks"])
    assert found["model"]["forward_batch"] == [8, 1, SIZE, SIZE]
    assert found["model"]["output_shape"] == [8]
    # a model.factory the policy in force does not list: exit 2, one line, nothing charged
    text = params.read_text().replace(
        "  name: cnn\n", "  name: factory\n  factory: dpgov.testing.models:tiny_bn_net\n"
    )
    params.write_text(text)
    before = _entries()
    code, _, err = run_dpgov(monkeypatch, capsys, "run", "--dry-run", "--params", str(params))
    assert code == 2 and "factory" in err and len(err.strip().splitlines()) == 1, err
    assert _entries() == before


def test_dry_run_on_tabular_data_and_a_model_that_cannot_take_it(
    tmp_path: Path,
    dpgov_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dpgov.data import prepare
    from dpgov.testing.sources import write_tabular

    monkeypatch.chdir(tmp_path)
    data, contract = write_tabular(tmp_path / "t", 400, min_block=5, min_subgroup=5)
    prepare(data, contract, out=tmp_path / "p")
    params = _params(tmp_path, data, contract, tmp_path / "p", "logreg")
    found = _dry_run(monkeypatch, capsys, params)
    assert found["blocks"] and found["model"]["output_shape"] == [8]
    assert found["mechanism"]["steps"] == found["plan"]["steps"]
    bad = _params(tmp_path, data, contract, tmp_path / "p", "cnn")  # tabular: no images
    before = _entries()
    code, _, err = run_dpgov(monkeypatch, capsys, "run", "--dry-run", "--params", str(bad))
    assert code == 2 and "cnn" in err and _entries() == before


def test_dp_sgd_reads_its_batches_from_disk(world: Path, tmp_path: Path, dpgov_home: Path) -> None:
    """The trainer takes the lazy images as a map-style dataset (no array in memory)."""
    import torch

    from dpgov.data import load_prepared, prepare
    from dpgov.training.inputs import arrays
    from dpgov.training.models import build_model, input_spec
    from dpgov.training.params import ModelParams, TrainParams
    from dpgov.training.trainer import sampling_plan, train_private

    prepare(world / "manifest.csv", world / "scans.yaml", out=tmp_path / "p", register=False)
    prep = load_prepared(tmp_path / "p")
    a = arrays(prep, "train")
    model = build_model(ModelParams(name="cnn", channels=[4], groups=2), input_spec(prep.meta))
    before = [p.detach().clone() for p in model.parameters()]
    plan = sampling_plan(n=len(a.y), batch_size=8, epochs=1)
    result = train_private(
        model,
        a.x,
        a.y,
        plan=plan,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        cfg=TrainParams(),
        device=torch.device("cpu"),
        grad_sample_mode="hooks",
    )
    assert result.steps == plan.steps > 0
    after = list(result.model.parameters())
    assert any(not torch.equal(b, c.detach()) for b, c in zip(before, after, strict=True))
