"""Federated DP across hospitals: Flower rounds, each site charging its own privacy ledger.

A layer of its own, above training, data and tracking and below the pipelines: it reuses the
governed run's pieces (validation, blocks, ledgers, the gate) per site and adds the rounds.
Heavy imports (Flower, Ray, torch, Opacus) stay inside the functions that need them.
"""
