"""``dpgov run --dry-run``: everything a governed run checks before budget moves, and its price,
with nothing charged, reserved or tracked.

The same steps as :func:`dpgov.training.governed.run_governed` up to the plan, called as they
are: the policy in force, the validate step (GX and pandas checks; a passing result is written
to the validation folder as a real run would, which charges nothing), the prepared data, the
plan (blocks, σ calibrated against what their patients already spent, the mechanism). Then the
model is built and run forward on one batch of training inputs (images read from disk as
training would), and Opacus's validator is asked whether it can make the model private. The
ledger is only read: its entries are the same before and after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dpgov.errors import UsageError
from dpgov.training.governed import enforced_policy, validate_for
from dpgov.training.inputs import load_data
from dpgov.training.models import build_model, input_spec
from dpgov.training.params import prepared_path
from dpgov.training.planning import plan

if TYPE_CHECKING:  # pragma: no cover
    from dpgov.ledger import Ledger
    from dpgov.policy import LoadedPolicy
    from dpgov.training.params import RunParams

FORWARD_BATCH = 8


@dataclass
class DryRun:
    """What ``dpgov run --dry-run`` reports (``to_dict()`` is its ``--json``)."""

    dataset: str
    data_version: str
    mechanism: dict[str, Any]
    blocks: list[dict[str, Any]]
    plan: dict[str, Any]
    validation: dict[str, Any]
    model: dict[str, Any]
    charged: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model(
    params: RunParams,
    meta: dict[str, Any],
    x: Any,
    *,
    allowed_factories: Any = None,
) -> dict[str, Any]:
    """Build the run's model, run it forward on the first rows of ``x`` (one logit per
    example, finite), and ask Opacus's validator whether it can be made private. UsageError
    (exit 2) naming what failed."""
    import torch
    from opacus.validators import ModuleValidator

    # built as the train step builds it (a model.factory only where the policy lists it)
    model = build_model(params.model, input_spec(meta), allowed_factories=allowed_factories)
    n = min(FORWARD_BATCH, len(x))
    batch = torch.as_tensor(np.ascontiguousarray(x[0:n]), dtype=torch.float32)
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as err:  # a shape mismatch, a layer that cannot take this input
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(
            f"model {params.model.name!r}: forward pass on a batch of {list(batch.shape)} "
            f"failed ({first})"
        ) from err
    if tuple(out.shape) != (n,):
        raise UsageError(
            f"model {params.model.name!r}: returns shape {list(out.shape)} for a batch of {n}; "
            f"expected [{n}] (one logit per example)"
        )
    if not torch.isfinite(out).all():
        raise UsageError(f"model {params.model.name!r}: non-finite logits on the first batch")
    model.train()  # Opacus validates a model in training mode, as DP-SGD runs it
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise UsageError(
            f"model {params.model.name!r}: Opacus cannot make it private ({errors[0]})"
        )
    return {
        "name": params.model.name,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "forward_batch": list(batch.shape),
        "output_shape": list(out.shape),
        "opacus_compatible": True,
    }


def dry_run(params: RunParams, policy: LoadedPolicy | None = None, *, ledger: Ledger) -> DryRun:
    """Check params, data and model, plan σ and price each block; charge nothing."""
    policy = enforced_policy(ledger, params, policy)
    validated = validate_for(params, policy)
    data, version = load_data(str(prepared_path(params)))
    p = plan(params, policy, data, ledger=ledger, data_version=version)
    model = check_model(
        params,
        p.meta,
        p.train.x,
        allowed_factories=policy.policy.release.allowed_model_factories,
    )
    budget = policy.policy.budget
    status = {b.block: b for b in ledger.budget(budget, dataset=p.dataset)}
    rows = []
    for block in p.blocks:
        st = status.get(block)
        rows.append(
            {
                "block": block,
                "patients": p.block_patients[block],
                "registered": st is not None,
                "epsilon_spent": st.epsilon_spent if st else 0.0,
                "epsilon_run": p.epsilon_run,
                "epsilon_limit": st.epsilon_limit if st else float(budget.epsilon_per_block),
            }
        )
    summary = p.summary()
    # records per patient in the training data (the plan's, when it says: patient-level
    # DP-SGD samples patients), else the contract's bound recorded at prepare
    bound = (p.meta.get("privacy_unit") or {}).get("max_records_per_patient", 1)
    mechanism = {
        "kind": "poisson-subsampled gaussian (DP-SGD)",
        "unit_of_privacy": str(summary.get("unit_of_privacy", "patient")),
        "patient_level": bool(summary.get("patient_level", False)),
        "max_records_per_patient": int(summary.get("max_records_per_patient", bound)),
        "noise_multiplier": p.noise_multiplier,
        "sample_rate": p.sampling.sample_rate,
        "steps": p.sampling.steps,
        "max_grad_norm": float(params.train.max_grad_norm),
        "epsilon_run": p.epsilon_run,
        "delta": p.delta,
        "accountant": p.accountant,
        "calibrated": p.calibrated,
    }
    return DryRun(
        dataset=p.dataset,
        data_version=p.data_version,
        mechanism=mechanism,
        blocks=rows,
        plan=summary,
        validation=validated.to_dict(),
        model=model,
    )
