"""Direct identifiers: names, record numbers, national ids, phone numbers, e-mail and street
addresses, exact dates (of birth). Found by column name and by value.

These are heuristics in the spirit of the HIPAA Safe Harbor list: they catch the usual ways an
identifier slips into a table, not every conceivable one. A person's name written as a plain
"Given Surname" cannot be told from other text by pattern and is caught by column name only.
"""

from __future__ import annotations

import re

# Column names (normalised: lower case, runs of other characters as "_").
NAME_PATTERNS: dict[str, str] = {
    "name": r"^names?$|(^|_)(first|last|given|family|middle|full|maiden|patient|person|"
    r"contact|mother|father|parent|kin|nok|guardian|birth)_?names?($|_)|"
    r"(^|_)(surname|forename|initials)($|_)",
    "record number": r"(^|_)(mrn|medical_record|record_(no|num|number|id)|chart_(no|num|number)|"
    r"hospital_(no|number|id)|account_(no|num|number)|case_(no|number))($|_)",
    "national id": r"(^|_)(ssn|social_security|national_(id|insurance|number)|nhs_(no|number)|"
    r"nino|passport|driver_?s?_licen[cs]e|tax_id|insurance_(no|number|id)|"
    r"health_card|aadhaar|bsn|personnummer)($|_)",
    "phone number": r"(^|_)(phone|telephone|tel|mobile|fax)(_?(no|num|number))?($|_)|"
    r"(^|_)cell_?(phone|no|num|number)($|_)",
    "e-mail address": r"(^|_)e_?mail(_address)?($|_)",
    "street address": r"(^|_)(address|street|addr|postcode|post_code|postal_code|zip|zip_code|"
    r"zipcode|city|house_(no|number))($|_)",
    "date of birth": r"(^|_)(dob|birth_?date|date_of_birth|birthday|born(_on)?)($|_)",
    "ip address": r"(^|_)(ip|ip_address|ipv4|ipv6)($|_)",
}

# Values (searched anywhere in a text value).
VALUE_PATTERNS: dict[str, str] = {
    "e-mail address": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "national id": r"\b\d{3}-\d{2}-\d{4}\b|\b[A-CEGHJ-PR-TW-Z]{2}\d{6}[A-D]\b|"
    r"\b\d{3}[ -]\d{3}[ -]\d{4}\b",
    "phone number": r"(?:\+\d{1,3}[\s.-]?)?\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}|"
    r"\+\d{1,3}[\s.-]?\d{2,4}[\s.-]?\d{3,4}[\s.-]?\d{3,4}|"
    r"\b\d{3}[.-]\d{3}[.-]\d{4}\b",
    "record number": r"\b(?:MRN|MR|PID|NHS|HOSP|ACC)[\s:#-]*\d{4,}\b|\b\d{9,12}\b",
    "street address": r"(?i)\b\d{1,5}\s+(?:[A-Za-z]+\s){1,3}(?:street|st|avenue|ave|road|rd|"
    r"lane|ln|drive|dr|boulevard|blvd|way|court|ct|place|pl|terrace|close|"
    r"crescent|square|sq)\b",
    "exact date": r"\b(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])\b|"
    r"\b(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)\d{2}\b|"
    r"\b(?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)\d{2}\b",
    "name": r"^\s*(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+[A-Z][a-z]+|^[A-Z][a-z]+,\s*[A-Z][a-z]+$",
    "ip address": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
}
_COMPILED = {kind: re.compile(p) for kind, p in VALUE_PATTERNS.items()}


def normalise(column: str) -> str:
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", column)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def column_name_kind(column: str) -> str | None:
    """The kind of identifier a column's name suggests, or None."""
    norm = normalise(column)
    for kind, pattern in NAME_PATTERNS.items():
        if re.search(pattern, norm):
            return kind
    return None


def value_kinds(values: list[object]) -> list[str]:
    """Kinds of identifier matched by any of ``values`` (used to name what a check found,
    without storing the values themselves)."""
    kinds: list[str] = []
    for kind, regex in _COMPILED.items():
        if any(isinstance(v, str) and regex.search(v) for v in values):
            kinds.append(kind)
    return kinds
