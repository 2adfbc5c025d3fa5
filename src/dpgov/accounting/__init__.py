"""Privacy accounting: mechanisms as value objects, tight composition, calibration.

Pure: imports nothing else from dpgov but the error base (:mod:`dpgov.errors`). dp_accounting
and Opacus are imported lazily.

Mechanism kinds and their accounting are registered in :mod:`dpgov.accounting.kinds`; the one
PLD builder is :func:`build_pld`, cross-checked by :func:`check_pld_epsilon`. Accounting is
bounded (:mod:`dpgov.accounting.bounded`): out-of-domain σ or q raise
:class:`AccountingInputError` (exit 2), and work beyond what one charge may cost raises
:class:`AccountingTooCostly` (exit 1) before it starts.
"""

from dpgov.accounting.accountants import (
    ACCOUNTANTS,
    compose,
    epsilon,
    get_accountant,
    group,
)
from dpgov.accounting.calibrate import calibrate_against_states, calibrate_noise_multiplier
from dpgov.accounting.crosscheck import check_pld_epsilon, over_limit_by_lower_bound
from dpgov.accounting.errors import (
    AccountantFailed,
    AccountingInputError,
    AccountingTooCostly,
    InfeasibleBudget,
)
from dpgov.accounting.federated import (
    FedSiteMechanism,
    effective_noise_multiplier,
    site_round_mechanism,
)
from dpgov.accounting.kinds import (
    KINDS,
    MechanismKind,
    build_pld,
    check_domain,
    dp_event,
    is_mechanism,
    kind_named,
    kind_of,
    mechanism_from_dict,
    mechanism_to_dict,
    mechanism_type_names,
    rdp_vector,
    register,
)
from dpgov.accounting.mechanism import DpSgdMechanism
from dpgov.accounting.pld import PLD_DISCRETIZATION

__all__ = [
    "ACCOUNTANTS",
    "KINDS",
    "PLD_DISCRETIZATION",
    "AccountantFailed",
    "AccountingInputError",
    "AccountingTooCostly",
    "DpSgdMechanism",
    "FedSiteMechanism",
    "InfeasibleBudget",
    "MechanismKind",
    "build_pld",
    "calibrate_against_states",
    "calibrate_noise_multiplier",
    "check_domain",
    "check_pld_epsilon",
    "compose",
    "dp_event",
    "effective_noise_multiplier",
    "epsilon",
    "get_accountant",
    "group",
    "is_mechanism",
    "kind_named",
    "kind_of",
    "mechanism_from_dict",
    "mechanism_to_dict",
    "mechanism_type_names",
    "over_limit_by_lower_bound",
    "rdp_vector",
    "register",
    "site_round_mechanism",
]
