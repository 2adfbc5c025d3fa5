"""Policy schema (pydantic, strict, unknown keys rejected).

The budget section is what the ledger needs: the ε each block may spend at the policy's δ,
and the accountant that composes charges. The other sections are what the promotion gate
judges a candidate model against: per-release privacy limits, utility floors, fairness limits,
approvals, and the registry alias a release moves. Every section except ``budget`` has
defaults, so a policy holding only ``version`` and ``budget`` is complete.

Thresholds are plain numbers on the scale of the metric they bound (AUROC and rates in [0, 1]);
``null`` switches an optional check off. Meanings never change: a new kind of limit is a new key.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dpgov import names
from dpgov.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # MLflow alias / attribute names we accept


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# A probability-like threshold: finite, in [0, 1].
_Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


Composition = Literal["adaptive", "fixed"]
JudgeOn = Literal["point", "interval", "dp_interval"]

# The default grid Λ of the RDP filter (dpgov.accounting.filters.FILTER_ORDERS; the policy layer
# does not import the accounting layer's constants at class-definition time to stay light).
_DEFAULT_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
)  # fmt: skip


class Budget(_Strict):
    """What each block may spend, and how charges compose (docs/composition.md).

    ``composition`` is the enforced rule: ``adaptive`` (the RDP filter over ``orders``, valid
    under full adaptivity) or ``fixed`` (tight composition with ``accountant``, valid only for
    a schedule committed in advance with ``dpgov ledger plan``). It is set for the whole ledger
    or per id domain (``composition_by_domain``), never per dataset: a patient may span
    datasets of one domain."""

    epsilon_per_block: float = Field(gt=0, le=100, description="ε each block may spend in all")
    delta: float = Field(gt=0, lt=1, description="δ at which every ε is stated")
    accountant: Literal["pld", "prv", "rdp"] = "pld"
    composition: Composition = Field(
        default="adaptive",
        description="adaptive: RDP filter over `orders` (any retraining); fixed: tight "
        "`accountant` composition, only for a schedule committed with `dpgov ledger plan`",
    )
    composition_by_domain: dict[Annotated[str, Field(min_length=1, max_length=64)], Composition] = (
        Field(
            default_factory=dict,
            max_length=1000,
            description="the mode of named id domains (others: `composition`)",
        )
    )
    orders: tuple[float, ...] = Field(
        default=_DEFAULT_ORDERS,
        min_length=1,
        max_length=256,
        description="the grid Λ of Rényi orders of the adaptive filter: each > 1, finite, "
        "sorted, unique",
    )

    @field_validator("composition", mode="before")
    @classmethod
    def _known_mode(cls, value: Any) -> Any:
        if value not in ("adaptive", "fixed"):
            raise ValueError(f"composition must be 'adaptive' or 'fixed', found {value!r}")
        return value

    @field_validator("orders", mode="before")
    @classmethod
    def _orders_grid(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ValueError(f"orders must be a list of numbers, found {value!r}")
        out = []
        for a in value:
            if isinstance(a, bool) or not isinstance(a, int | float):
                raise ValueError(f"every order must be a number, found {a!r}")
            if not (math.isfinite(a) and a > 1):
                raise ValueError(f"every order must be finite and > 1, found {a!r}")
            out.append(float(a))
        if len(set(out)) != len(out):
            raise ValueError("orders must not repeat")
        if out != sorted(out):
            raise ValueError("orders must be sorted, smallest first")
        return tuple(out)

    @field_validator("composition_by_domain")
    @classmethod
    def _domain_names(cls, value: dict[str, str]) -> dict[str, str]:
        for d in value:
            try:
                names.name(d, argument="an id domain of budget.composition_by_domain")
            except UsageError as err:
                raise ValueError(str(err)) from err
        return value

    def mode_for(self, domain: str) -> str:
        """The composition enforced for patients of id domain ``domain``."""
        return self.composition_by_domain.get(domain, self.composition)


class Release(_Strict):
    """Limits on one released model, and how a release is made."""

    alias: str = Field(
        default="champion",
        min_length=1,
        max_length=64,
        description="registry alias that promotion moves (only the gate moves it)",
    )
    max_epsilon: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="largest ε of one model on its own (null: the block budget)",
    )
    max_delta: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="largest δ of one model (null: budget.delta)",
    )
    delta_below_inverse_patients: bool = Field(
        default=True, description="require δ < 1 / (patients the model was trained on)"
    )
    require_secure_rng: bool = Field(
        default=False,
        description="require a cryptographically secure noise generator (Opacus secure_mode)",
    )
    allow_reproducible_noise: bool = Field(
        default=False,
        description="release models whose noise was derived from train.seed "
        "(train.reproducible_noise: true); false: the gate's secret_noise check refuses them "
        "and a run asking for it is refused before anything is charged",
    )
    allow_reference: bool = Field(
        default=True,
        description="train the non-private reference and judge fairness widening against it; "
        "false: no reference is trained and the widening checks are off",
    )
    require_empirical_audit: bool = Field(
        default=False,
        description="release only models with an empirical privacy audit (dpgov audit-model) "
        "whose lower bound on ε does not exceed the claimed ε; a governed run then reserves "
        "its candidate's audit with it (calibrated together, both or neither)",
    )
    allowed_model_factories: list[str] = Field(
        default_factory=list,
        description="model.factory values a run may call ('package.module:function', shell "
        "patterns such as 'monai.networks.nets:*'); empty: only the built-in models",
    )

    @field_validator("allowed_model_factories")
    @classmethod
    def _factory_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            module, sep, attr = pattern.partition(":")
            if not sep or not module or not attr or module.startswith("*"):
                raise ValueError(
                    f"each allowed model factory is 'package.module:function' (a pattern may "
                    f"end in '*' but must name its package), found {pattern!r}"
                )
        return value

    @field_validator("alias")
    @classmethod
    def _alias_name(cls, value: str) -> str:
        problem = alias_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Utility(_Strict):
    """Utility floors on the held-out test split."""

    min_auroc: _Unit | None = Field(default=0.6, description="AUROC floor (null: off)")
    max_calibration_error: _Unit | None = Field(
        default=0.1, description="expected calibration error ceiling, 10 bins (null: off)"
    )
    judge_on: JudgeOn = Field(
        default="point",
        description="interval: the AUROC's bootstrap lower bound must meet the floor; "
        "dp_interval: the lower bound of the DP-evaluated interval (evaluation.private)",
    )
    max_auroc_drop: _Unit | None = Field(
        default=None,
        description="floor relative to the non-private reference: its AUROC minus the "
        "candidate's at most this (null: off; off where release.allow_reference is false or "
        "no reference was trained)",
    )


class Fairness(_Strict):
    """Limits on subgroup gaps (largest minus smallest subgroup value of one metric)."""

    sensitive_attributes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["sex", "age_band"],
        max_length=16,
        description="attributes whose subgroups are compared",
    )
    max_auroc_gap: _Unit | None = Field(default=0.15, description="null: off")
    max_fnr_gap: _Unit | None = Field(
        default=0.2, description="largest underdiagnosis (false-negative rate) gap; null: off"
    )
    max_auroc_gap_widening: _Unit | None = Field(
        default=0.05, description="how much wider than the non-private reference's; null: off"
    )
    max_fnr_gap_widening: _Unit | None = Field(
        default=0.05, description="how much wider than the non-private reference's; null: off"
    )
    judge_on: JudgeOn = Field(
        default="point",
        description="interval: the upper bound of the gap's bootstrap interval must be within; "
        "dp_interval: the upper bound of the DP-evaluated interval (evaluation.private)",
    )
    min_group_size: int = Field(
        default=30,
        ge=1,
        le=1_000_000_000,
        description="subgroups with fewer test patients are not judged",
    )
    min_group_positives: int = Field(
        default=10,
        ge=0,
        le=1_000_000_000,
        description="subgroups with fewer positive test patients are not judged",
    )
    require_judgeable: bool = Field(
        default=True,
        description="block when fewer than two subgroups of an attribute can be judged",
    )

    @field_validator("sensitive_attributes")
    @classmethod
    def _attributes(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"attribute {name!r} may hold only letters, digits, '_', '.', '-'")
        if len(set(value)) != len(value):
            raise ValueError("attributes must not repeat")
        return value


class Evaluation(_Strict):
    """How the held-out test split is used. Its patients are budgeted like any others (test
    blocks in the ledger). ``private: true`` releases DP-evaluated metrics (noisy score
    histograms) charged to the test blocks and judged on intervals that cover sampling and
    noise (``judge_on: dp_interval``); ``false`` releases exact test metrics, which the
    privacy statement lists as not covered."""

    private: bool = Field(
        default=False,
        description="release DP-evaluated test metrics, charged to the test blocks",
    )
    epsilon: float = Field(
        default=0.5,
        gt=0,
        le=10,
        allow_inf_nan=False,
        description="ε of one DP-evaluated release (all its metrics together), at budget.delta",
    )
    epsilon_per_block: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="extra cap on what evaluation charges may spend on one test block in all "
        "(null: only budget.epsilon_per_block)",
    )
    eta: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="false-accept probability of one release, split across its checks and retries",
    )
    bins: int = Field(
        default=20, ge=2, le=1000, description="score bins of the noisy per-class histograms"
    )


class Approvals(_Strict):
    """Who must sign a release off before promotion."""

    required: int = Field(default=1, ge=0, le=100, description="distinct approvers needed")
    approvers: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=1000, description="who may approve or refuse (null: anyone)"
    )
    allow_author: bool = Field(
        default=False, description="whether the run's author may approve their own model"
    )
    # issue 13: who an approver is, as the deployment authenticates them (dpgov.identity)
    identities: dict[str, str] = Field(
        default_factory=dict,
        max_length=1000,
        description="approver name -> the authenticated identity that acts as them (unlisted: "
        "the name itself must be the identity)",
    )
    ssh_keys: dict[str, str] = Field(
        default_factory=dict,
        max_length=1000,
        description="approver name -> SSH public key; a listed approver's approvals and "
        "refusals count only when signed with it (ssh-keygen -Y sign -n dpgov-approval)",
    )

    @field_validator("identities", "ssh_keys")
    @classmethod
    def _mapped(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key, mapped in value.items():
            try:
                names.identity(key, argument="approver name")
                if info.field_name == "identities":
                    names.identity(mapped, argument=f"the identity of approver {key!r}")
            except UsageError as err:
                raise ValueError(str(err)) from None
            if not mapped or len(mapped) > 16000:
                raise ValueError(f"approver {key!r}: the value must hold 1 to 16000 characters")
        return value

    def identity_of(self, name: str) -> str:
        """The authenticated identity that acts as approver ``name``."""
        return self.identities.get(name, name)

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        folded = [approver_key(v) for v in value]
        if any(not f for f in folded):
            raise ValueError("approver names must not be blank")
        if len(set(folded)) != len(folded):
            raise ValueError("approver names must not repeat (compared case-insensitively)")
        return value

    @model_validator(mode="after")
    def _enough_approvers(self) -> Approvals:
        if self.approvers is not None and len(self.approvers) < self.required:
            raise ValueError(
                f"required is {self.required} but only {len(self.approvers)} approvers are "
                "listed: no release could ever be approved"
            )
        for key in [*self.identities, *self.ssh_keys]:
            if self.approvers is not None and not self.may_approve(key):
                raise ValueError(f"{key!r} is mapped but is not in approvals.approvers")
        return self

    def may_approve(self, name: str) -> bool:
        """Whether ``name`` is on the list of approvers (anyone when no list is given)."""
        if self.approvers is None:
            return True
        return approver_key(name) in {approver_key(a) for a in self.approvers}


class LedgerRules(_Strict):
    """What verifying the ledger requires."""

    require_signatures: bool = Field(
        default=False,
        description="ledger verify and the audit fail unless every entry since signing was "
        "enabled is signed and its signature checked with a key at hand",
    )


class Governance(_Strict):
    """Who may change the policy in force, look patients up, and which identities never act
    as approvers (issues 13 and 15). Identities follow :func:`dpgov.names.identity`."""

    policy_setters: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=1000,
        description="who may run `dpgov policy set` after the first set (null: the identity "
        "that made the first set)",
    )
    patient_lookup: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=1000,
        description="who may look one patient's history up with `dpgov ledger patient` "
        "(null: the policy setters)",
    )
    service_identities: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=1000,
        description="identities that run shared services (workers, servers): never approvers",
    )
    separate_duties: bool = Field(
        default=False,
        description="the policy setter, the approvers and the run's author must differ",
    )


def alias_problem(alias: str) -> str | None:
    """Why ``alias`` cannot be a registry alias, or None when it can."""
    if not alias or len(alias) > 64:
        return "alias must hold 1 to 64 characters"
    if not _NAME.match(alias):
        return "alias may hold only letters, digits, '_', '.', '-'"
    if re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        return "alias may not be 'latest' or look like a version ('v3')"
    return None


def approver_key(name: str) -> str:
    """Approver identity used for comparisons: whitespace collapsed, case folded."""
    return " ".join(name.split()).casefold()


class Policy(_Strict):
    version: Literal[1]
    budget: Budget
    release: Release = Field(default_factory=Release)
    utility: Utility = Field(default_factory=Utility)
    fairness: Fairness = Field(default_factory=Fairness)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    approvals: Approvals = Field(default_factory=Approvals)
    ledger: LedgerRules = Field(default_factory=LedgerRules)
    governance: Governance = Field(default_factory=Governance)

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_int(cls, value: Any) -> Any:
        if isinstance(value, bool):  # Literal[1] would take True
            raise ValueError("version must be the integer 1")
        return value

    @model_validator(mode="after")
    def _dp_judging(self) -> Policy:
        private = self.evaluation.private
        for section, judge in (
            ("utility", self.utility.judge_on),
            ("fairness", self.fairness.judge_on),
        ):
            if private and judge != "dp_interval":
                raise ValueError(
                    f"evaluation.private is true: {section}.judge_on must be dp_interval "
                    f"(found {judge}); exact test metrics would be released beside the DP ones"
                )
            if judge == "dp_interval" and not private:
                raise ValueError(
                    f"{section}.judge_on is dp_interval: set evaluation.private: true "
                    "(there are no DP-evaluated metrics to judge)"
                )
        return self

    def release_max_epsilon(self) -> float:
        """ε limit of one model: ``release.max_epsilon``, else the block budget."""
        if self.release.max_epsilon is not None:
            return self.release.max_epsilon
        return self.budget.epsilon_per_block

    def release_max_delta(self) -> float:
        """δ limit of one model: ``release.max_delta``, else ``budget.delta``."""
        if self.release.max_delta is not None:
            return self.release.max_delta
        return self.budget.delta
