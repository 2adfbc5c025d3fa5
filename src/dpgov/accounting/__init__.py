"""Privacy accounting: mechanisms as value objects, tight composition, calibration.

Pure: imports nothing else from dpgov but the error base (:mod:`dpgov.errors`). dp_accounting
and Opacus are imported lazily.
"""

from dpgov.accounting.accountants import (
    ACCOUNTANTS,
    compose,
    epsilon,
    get_accountant,
    group,
)
from dpgov.accounting.calibrate import calibrate_against_states, calibrate_noise_multiplier
from dpgov.accounting.errors import AccountantFailed, AccountingInputError, InfeasibleBudget
from dpgov.accounting.mechanism import DpSgdMechanism, mechanism_from_dict

__all__ = [
    "ACCOUNTANTS",
    "AccountantFailed",
    "AccountingInputError",
    "DpSgdMechanism",
    "InfeasibleBudget",
    "calibrate_against_states",
    "calibrate_noise_multiplier",
    "compose",
    "epsilon",
    "get_accountant",
    "group",
    "mechanism_from_dict",
]
