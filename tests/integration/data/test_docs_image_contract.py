"""The image contract example in docs/data.md is a working contract: it loads, and generated
images in the MedMNIST layout with their metadata CSV prepare and validate under it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def docs_image_contract() -> str:
    text = (REPO / "docs" / "data.md").read_text()
    found = re.search(r"<!-- image-contract -->\n```yaml\n(.*?)```", text, re.S)
    assert found, "docs/data.md has no image contract example"
    return found.group(1)


def test_the_image_contract_in_the_docs_loads_prepares_and_validates(
    tmp_path: Path, dpgov_home: Path
) -> None:
    from dpgov.data import prepare, validate
    from dpgov.data.contract import load_contract
    from dpgov.testing.sources import make_images

    contract = tmp_path / "scans.yaml"
    contract.write_text(docs_image_contract())
    loaded = load_contract(contract).contract
    assert (loaded.dataset, loaded.kind, loaded.patient_id) == ("scans", "image", "patient_id")
    npz, meta = make_images(tmp_path / "scans.npz", metadata=True)
    result = prepare(npz, contract, metadata=meta, out=tmp_path / "scans", register=False)
    assert result.kind == "image" and sorted(result.blocks) == ["site-a", "site-b"]
    checked = validate(
        npz, contract, metadata=meta, prepared=tmp_path / "scans", out=tmp_path / "validation"
    )
    assert checked.ok, [(c.name, c.detail) for c in checked.failed]
    sensitive = yaml.safe_load(docs_image_contract())["sensitive"]
    assert sensitive == {"sex": "sex", "age": "age", "age_bands": [30, 60]}
