"""The bundled dataset: flchain (scikit-survival), as a 5-year mortality task.

7,874 subjects of a serum free light chain study (Dispenzieri et al. 2012; Kyle et al. 2006),
enrolled 1995-2003. The task: death within ``horizon_years`` of enrollment. Subjects censored
alive before the horizon have an unknown label and are dropped (7,679 remain at 5 years, 12%
positive). ``chapter`` (cause of death) is known only for the dead: it would leak the label and is
never used. The row number stands in for a patient id; prepare replaces it by a keyed hash.
"""

from __future__ import annotations

from typing import Any

from dpgov.errors import UsageError

SOURCE = "bundled:flchain"

# The same text as contracts/flchain.yaml (a test keeps them equal): used when dpgov runs
# outside the project tree.
CONTRACT_YAML = """\
# Data contract of the bundled flchain cohort (scikit-survival), as dpgov builds it for a
# 5-year mortality task. Every key is explained in docs/data.md.
version: 1
dataset: flchain
kind: tabular
patient_id: patient_id        # row number of the source table; prepare replaces it by a keyed hash
patient_id_domain: flchain     # where the ids come from: the pseudonym is keyed on (domain, id)
label: death_5y               # 1: died within 5 years of enrollment; censored-alive rows dropped
block:
  column: sample_yr           # enrollment year: the natural arrival blocks
  edges: [1996, 1997, 1998]   # fixed blocks: 1995, 1996, 1997, 1998-2003 (docs/data.md)
sensitive:
  sex: sex
  age: age
  age_bands: [60, 70, 80]     # age_band: <60, 60-69, 70-79, 80+
features: [age, sex, kappa, lambda, flc_grp, creatinine, mgus]
columns:
  patient_id: {type: string}
  sample_yr: {type: integer, min: 1995, max: 2003}
  death_5y: {type: integer, allowed: [0, 1]}
  sex: {type: string, allowed: [F, M]}
  age: {type: float, min: 18, max: 110}
  kappa: {type: float, min: 0, max: 100}
  lambda: {type: float, min: 0, max: 100}
  flc_grp: {type: integer, min: 1, max: 10}
  creatinine: {type: float, min: 0.1, max: 20, nullable: true}   # 1,350 missing in the source
  mgus: {type: boolean}
privacy:
  max_records_per_patient: 1
  group_privacy: false
minimum:
  patients_per_block: 600
  patients_per_subgroup: 50
"""


def load_task_table(horizon_years: float = 5.0) -> Any:
    """The flchain cohort as the table its contract describes (a pandas DataFrame)."""
    import numpy as np
    import pandas as pd

    try:
        from sksurv.datasets import load_flchain
    except ImportError as err:
        raise UsageError(
            "the bundled flchain dataset needs scikit-survival: pip install 'dpgov[demo]'"
        ) from err
    if not 0 < horizon_years <= 12:
        raise UsageError(f"horizon_years must be in (0, 12], found {horizon_years!r}")
    x, y = load_flchain()
    horizon = horizon_years * 365.25
    died = np.asarray(y["death"], dtype=bool)
    time = np.asarray(y["futime"], dtype=float)
    label = np.where(died & (time <= horizon), 1, np.where(time > horizon, 0, -1))
    keep = label >= 0
    x = x.reset_index(drop=True)
    table = pd.DataFrame(
        {
            "patient_id": pd.Series(np.arange(len(x)).astype(str), dtype=object),
            "sample_yr": x["sample.yr"].astype(int),
            "death_5y": label.astype("int64"),
            "sex": x["sex"].astype(str).astype(object),
            "age": x["age"].astype(float),
            "kappa": x["kappa"].astype(float),
            "lambda": x["lambda"].astype(float),
            "flc_grp": x["flc.grp"].astype(int),
            "creatinine": x["creatinine"].astype(float),
            "mgus": x["mgus"].astype(str).eq("yes"),
        }
    )
    return table[keep].reset_index(drop=True)
