"""dpgov.training.distributed.patient_shards: disjoint, covering, whole patients (property)."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dpgov.training.distributed import patient_shards


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=120),
    world_size=st.integers(min_value=1, max_value=8),
)
def test_shards_are_disjoint_cover_every_row_and_never_split_a_patient(
    ids: list[int], world_size: int
) -> None:
    pid = np.array([f"p{i}" for i in ids])
    patients = len(set(ids))
    assume(patients >= world_size)  # fewer is refused (tested in the integration module)
    shards = patient_shards(pid, world_size)
    assert len(shards) == world_size
    rows = np.concatenate(shards)
    assert sorted(rows.tolist()) == list(range(len(pid)))  # every row once
    owners = [{str(p) for p in pid[s]} for s in shards]
    for a in range(world_size):
        assert owners[a]  # no rank without patients
        for b in range(a + 1, world_size):
            assert not owners[a] & owners[b]  # a patient's records on one rank only
    sizes = [len(o) for o in owners]
    assert max(sizes) - min(sizes) <= 1  # patients dealt evenly
