"""Prefect flows of dpgov: wiring only, each task one call into ``dpgov``.

- ``pipelines.governed``: validate → plan → reserve → train → commit → evaluate → track → gate
- ``pipelines.retraining``: newest data, blocks with budget left, retirement, or a recorded skip
- ``pipelines.ingest``: newly arrived raw data → DVC version (add, commit, push) → new blocks
- ``pipelines.approval``: pause for an approver's typed answer, then promote or record a refusal
- ``pipelines.audit``: the audit, on a schedule
- ``pipelines.demo``: ``dpgov demo`` (one run, or enrollment waves)
- ``pipelines.deployments``: serving, work pools, triggering deployments
- ``pipelines.runtime``: where Prefect keeps its state, the API it talks to (no Prefect import)

Nothing is imported here, so ``import pipelines.runtime`` stays cheap.
"""
