"""What every validation check records: :class:`Check`, and the names of the two engines.

A check computed by Great Expectations and one computed in pandas have the same fields, so the
report, the command line and the governed run read them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

GX: Final = "great_expectations"
PANDAS: Final = "pandas"
PANDAS_NOTE = "computed in pandas: Great Expectations has no expectation for this"


@dataclass
class Check:
    """One check's outcome, whatever computed it."""

    rule: str  # columns, type, not_null, range, allowed, records_per_patient, identifiers, ...
    name: str  # one readable line
    table: str  # source, train, test, prepared, policy
    column: str | None
    engine: Literal["great_expectations", "pandas"]
    expectation: str | None  # the GX expectation type, or what pandas computed
    success: bool
    observed: Any = None
    expected: Any = None
    detail: str = ""
    severity: Literal["error", "warning"] = "error"

    @property
    def failed(self) -> bool:
        return not self.success and self.severity == "error"
