"""Bad params are found before any server starts: ``dpgov run`` and ``dpgov schedule`` with a
params file whose ``data:`` section or data contract is wrong exit 2 with one line, and leave
no Prefect state, MLflow store or ledger behind (nothing was started)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DPGOV = Path(sys.executable).parent / "dpgov"


def bad_params(folder: Path, case: str) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    contract = folder / "broken-contract.yaml"
    contract.write_text("version: 1\nkind: tabular\n")  # no dataset, label, ...
    params["data"].update(
        {
            "unknown_key": {"bogus": 1},
            "bad_type": {"test_fraction": "lots"},
            "missing_contract": {"contract": str(folder / "absent.yaml")},
            "invalid_contract": {"contract": str(contract)},
        }[case]
    )
    path = folder / f"{case}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


EXPECTED = {
    "unknown_key": "data.bogus: unknown key",
    "bad_type": "data.test_fraction: Input should be a valid number",
    "missing_contract": "absent.yaml: cannot read",
    "invalid_contract": "broken-contract.yaml: dataset: Field required",
}


@pytest.mark.parametrize(
    ("command", "case"),
    [("run", case) for case in sorted(EXPECTED)] + [("schedule", "invalid_contract")],
)
def test_bad_params_exit_2_before_any_server_starts(
    tmp_path: Path, case: str, command: str
) -> None:
    home, prefect_home, work = tmp_path / "home", tmp_path / "prefect", tmp_path / "work"
    for folder in (home, prefect_home, work):
        folder.mkdir()
    (work / "data" / "prepared" / "flchain").mkdir(parents=True)
    (work / "data" / "prepared" / "flchain" / "meta.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(DPGOV_HOME=str(home), PREFECT_HOME=str(prefect_home))
    env.pop("DPGOV_LEDGER_URL", None)
    params = bad_params(tmp_path, case)
    args = ["run", "--params", str(params)]
    if command == "schedule":
        args = ["schedule", "--cron", "0 3 * * *", "--params", str(params)]
    proc = subprocess.run(
        [str(DPGOV), *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and EXPECTED[case] in lines[0]
    assert "orchestration" not in proc.stdout + proc.stderr  # no API was started or checked
    assert list(home.iterdir()) == []  # no ledger, MLflow store, Prefect state, key
    assert list(prefect_home.iterdir()) == []
