"""The class structure against brute force: patients grouped by the exact set of blocks that
hold them (more than 64 blocks: several bitmask words; pseudonyms differing only in their last
bytes: the two sort keys)."""

from __future__ import annotations

import random
from collections import Counter

from dpgov.accounting import DpSgdMechanism, group
from dpgov.ledger import membership
from dpgov.ledger.classes import Structure, compute_structure, maximal


def test_structure_groups_patients_by_the_exact_set_of_blocks_holding_them():
    rng = random.Random(7)
    # 300 patients, some differing only in the low 2 bytes, some only in the high 8
    patients = [f"{i:020x}" for i in range(150)] + [f"{i:04x}" + "0" * 16 for i in range(1, 151)]
    blocks = {("d", f"b{j:03d}"): rng.sample(patients, rng.randint(1, 40)) for j in range(70)}
    found = compute_structure({k: membership.pack(v) for k, v in blocks.items()})
    keys = sorted(blocks)
    holding = Counter(
        tuple(i for i, k in enumerate(keys) if p in blocks[k])
        for p in patients
        if any(p in blocks[k] for k in keys)
    )
    assert found.blocks == tuple(keys)
    assert dict(found.classes) == dict(holding)
    assert sum(n for _, n in found.classes) == len({p for v in blocks.values() for p in v})
    assert Structure.from_bytes(found.to_bytes()) == found


def test_only_maximal_histories_bind():
    a = DpSgdMechanism(noise_multiplier=1.0, sample_rate=0.01, steps=10)
    b = a.with_steps(20)
    small, big, other = group([a]), group([a, b]), group([b, b])
    kept = [ms for _, ms in maximal([(None, small), (None, big), (None, other)])]  # type: ignore[list-item]
    assert kept == [big, other]
