"""Gate check ``secret_noise``: a release's DP noise must not be derivable from a logged value.

DP-SGD's guarantee assumes the Gaussian noise and the Poisson masks are secret. Training records
where they came from as ``noise_source`` (candidate facts, MLflow param and tag
:data:`TAG_NOISE_SOURCE`):

- ``os_entropy`` (the default): two generators seeded with fresh bits from the operating
  system, kept nowhere. Secret, not cryptographically secure (``release.require_secure_rng``
  is the check for that).
- ``csprng``: Opacus's ``secure_mode`` with torchcsprng.
- ``seed``: derived from ``train.seed`` (``train.reproducible_noise: true``): anyone who reads
  the run can regenerate the noise. Refused unless ``release.allow_reproducible_noise``.

Facts without a noise source were written before sources were recorded, when the noise was
derived from the seed: they count as ``seed``. A run that asks for reproducible noise under a
policy that forbids it is refused before anything is charged (:func:`refuse_reproducible_noise`).
"""

from __future__ import annotations

from dpgov.errors import Refused
from dpgov.gate.facts import CandidateFacts
from dpgov.policy.schema import Policy

TAG_NOISE_SOURCE = "dpgov.noise_source"
NOISE_OS_ENTROPY = "os_entropy"
NOISE_SEED = "seed"
NOISE_CSPRNG = "csprng"
NOISE_SOURCES = (NOISE_OS_ENTROPY, NOISE_SEED, NOISE_CSPRNG)
SECRET_SOURCES = frozenset({NOISE_OS_ENTROPY, NOISE_CSPRNG})

Line = tuple[str, str | None, str | None, bool, str]  # a Check's (name, observed, limit, …)


def secret_noise_check(policy: Policy, facts: CandidateFacts) -> Line:
    """The ``secret_noise`` line of a decision (see the module docstring)."""
    allowed = policy.release.allow_reproducible_noise
    limit = "secret or reproducible" if allowed else "secret"
    if not facts.private:
        return ("secret_noise", None, limit, False, "the non-private reference adds no noise")
    source = facts.noise_source or NOISE_SEED
    recorded = facts.noise_source is not None
    if source in SECRET_SOURCES:
        how = "Opacus secure mode (torchcsprng)" if source == NOISE_CSPRNG else "OS entropy"
        return ("secret_noise", source, limit, True, f"noise and sampling drawn from {how}")
    if source != NOISE_SEED:
        return ("secret_noise", source, limit, False, f"unknown noise source {source!r}")
    why = (
        "noise and sampling derived from train.seed (train.reproducible_noise: true)"
        if recorded
        else "no noise source recorded (facts older than noise sources: derived from the seed)"
    )
    if allowed:
        return ("secret_noise", source, limit, True, f"{why}; allowed by the policy")
    return (
        "secret_noise",
        source,
        limit,
        False,
        f"{why}: anyone who reads the run can regenerate the noise; "
        "release.allow_reproducible_noise is false",
    )


def refuse_reproducible_noise(policy: Policy, *, reproducible: bool, where: str) -> None:
    """Refuse (exit 1) a run asking for reproducible noise that ``policy`` would not release."""
    if reproducible and not policy.release.allow_reproducible_noise:
        raise Refused(
            f"{where}: train.reproducible_noise is true but the policy in force has "
            "release.allow_reproducible_noise: false (its gate would refuse the model); "
            "nothing was charged"
        )
