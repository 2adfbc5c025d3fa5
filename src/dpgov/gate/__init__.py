"""The promotion gate: a pure decision, approvals, and the promotion that moves a release alias.

Import from the submodules; this package imports nothing heavy. Bottom up: ``facts`` (what
training records) and ``ports`` (the registry protocol); ``standing`` (which approvals and
refusals stand, pure) and ``candidate`` (a version's facts checked against the registry);
``decision`` (the pure gate); ``approvals`` (recording them); ``service`` (gather, evaluate,
record); ``promotion`` (the only path that moves a release alias); ``markdown`` (a decision as
Markdown).
"""
