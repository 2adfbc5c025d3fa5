"""Validation: the data contract as a Great Expectations suite, plus the checks GX has no
expectation for, computed in pandas and recorded in the same format (``engine: "pandas"``).

On the source table (as the contract describes it), with Great Expectations 1.x
(:mod:`.gx_suite`): columns; types; id, label, block, sensitive and non-nullable columns not
null; ranges (paired with not-null, since range expectations skip nulls); allowed sets; one
record per patient (unique id); no identifier-looking values in text columns.
In pandas (:mod:`.source_checks`): identifier-looking column names, date/time columns,
record-number-like integer columns, the per-patient bound under group privacy.
On the prepared output, in pandas (:mod:`.output_checks`): train and test patients disjoint,
every patient in one block, minimum patients per block and per subgroup (each sensitive
attribute, each split), δ of the policy below 1/(number of patients), pseudonymous ids, finite
features, both label classes.

:mod:`.run` holds :func:`validate` (what ``dpgov data validate`` runs); :mod:`.report` writes
``data/validation/<dataset>/result.json`` and ``summary.md``; :mod:`.records` is the
:class:`Check` every engine fills in. The command line exits 1 when a check fails; nothing is
reserved or charged either way.

:mod:`.ensure` is the validate *step* of a governed run (:func:`ensure_validated`): it reuses a
recorded passing validation of exactly this data version, or runs :func:`validate`.

Great Expectations and pandas are imported when a validation runs, so importing this package
stays cheap.
"""

from __future__ import annotations

from dpgov.data.validation.ensure import Validated, ensure_validated
from dpgov.data.validation.output_checks import prepared_checks
from dpgov.data.validation.records import GX, PANDAS, PANDAS_NOTE, Check
from dpgov.data.validation.report import VALIDATION_ROOT, ValidationResult
from dpgov.data.validation.run import contract_checks, validate

__all__ = [
    "GX",
    "PANDAS",
    "PANDAS_NOTE",
    "VALIDATION_ROOT",
    "Check",
    "Validated",
    "ValidationResult",
    "contract_checks",
    "ensure_validated",
    "prepared_checks",
    "validate",
]
