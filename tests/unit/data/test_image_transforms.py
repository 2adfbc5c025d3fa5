"""The image transform (dpgov.data.image_store) and the contract's images: section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpgov.data.image_store import Transform, apply_transform, load_image
from dpgov.errors import UsageError


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(4, 40),
    w=st.integers(4, 40),
    n=st.integers(2, 24),
    channels=st.sampled_from([1, 3]),
)
def test_output_shape_is_the_shape_the_transform_makes(h: int, w: int, n: int, channels: int):
    from PIL import Image

    im = Image.fromarray(np.zeros((h, w), dtype=np.uint8), mode="L")
    t = Transform(channels=channels, resize=(n,))
    x = apply_transform(im, t)
    assert x.shape == t.output_shape(h, w)
    assert min(x.shape[1:]) == n  # the shorter side becomes n (torchvision's Resize(int))
    crop = Transform(channels=channels, resize=(n,), center_crop=(n, n))
    assert apply_transform(im, crop).shape == (channels, n, n) == crop.output_shape(h, w)


def test_normalisation_crop_and_flip_against_numpy(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.png")
    t = Transform(channels=1, center_crop=(4, 4), mean=(0.2,), std=(0.5,))
    x = load_image(tmp_path / "a.png", t)
    want = (pixels[1:5, 2:6].astype(np.float32) / 255.0 - 0.2) / 0.5
    np.testing.assert_allclose(x[0], want, rtol=1e-6, atol=1e-6)
    flipped = load_image(tmp_path / "a.png", t, flip=True)
    np.testing.assert_allclose(flipped[0], want[:, ::-1], rtol=1e-6, atol=1e-6)


def test_rgb_jpeg_and_sixteen_bit_png(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "a.jpg", quality=100)
    x = load_image(tmp_path / "a.jpg", Transform(channels=3, mean=(0, 0, 0), std=(1, 1, 1)))
    assert x.shape == (3, 8, 8) and x[0].mean() > 0.95 and x[1].mean() < 0.05
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    y = load_image(tmp_path / "w.png", Transform())
    np.testing.assert_allclose(y[0], wide / 65535.0, rtol=1e-5, atol=1e-6)


def test_undecodable_file_is_one_usage_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nshort")
    with pytest.raises(UsageError, match=r"x\.png: cannot decode"):
        load_image(tmp_path / "x.png", Transform())


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"kind": "tabular"}, "images: applies to contracts with kind: image"),
        ({"images": {"path": "file"}}, "images.path column 'file' is not listed"),
        ({"images": {"path": "age"}}, "must be a string"),
        ({"images": {"transform": {"channels": 3, "mean": [0.1, 0.2]}}}, "1 or 3 values"),
        ({"images": {"min_size": 10, "max_size": 5}}, "min_size 10 is above max_size 5"),
        ({"images": {"transform": {"resize": [1, 2, 3]}}}, "positive size or"),
    ],
)
def test_contract_images_section_refuses_inconsistent_keys(edit: dict, said: str) -> None:
    import yaml

    from dpgov.data.contract import parse_contract
    from dpgov.testing.image_files import manifest_contract

    data = yaml.safe_load(manifest_contract())
    if edit.get("kind") == "tabular":
        data["kind"] = "tabular"
    for key, value in (edit.get("images") or {}).items():
        data["images"][key] = value
    with pytest.raises(UsageError, match=said):
        parse_contract(yaml.safe_dump(data), "c.yaml")


def test_image_paths_are_not_checked_for_identifiers_other_text_columns_are() -> None:
    """Paths (often holding dates or ids) never reach prepared data (content addresses)."""
    import pandas as pd
    import yaml

    from dpgov.data.contract import parse_contract
    from dpgov.data.validation.gx_suite import plan_expectations
    from dpgov.testing.image_files import manifest_contract

    c = parse_contract(manifest_contract(), "c.yaml").contract
    frame = pd.DataFrame(
        {"path": ["2019-03-04/a.png"], "patient_id": ["P1"], "sex": ["F"], "site": ["a"]}
    ).astype(object)
    checked = {
        kw["column"]
        for cls, kw, meta in plan_expectations(frame, c)
        if meta["rule"] == "identifiers"
    }
    assert checked == {"sex", "site"}
    assert yaml.safe_load(manifest_contract())["images"]["path"] == "path"
