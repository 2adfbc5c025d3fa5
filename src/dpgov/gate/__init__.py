"""The promotion gate: a pure decision, approvals, and the promotion that moves a release alias.

Import from the submodules (``dpgov.gate.decision``, ``.approvals``, ``.promotion``,
``.service``, ``.facts``); this package imports nothing heavy.
"""
