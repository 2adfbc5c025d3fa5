#!/usr/bin/env bash
# Lint, format check, layers, layout, type-check and run the whole test suite (real SQLite,
# PostgreSQL, MLflow, DVC, GX, Prefect, Opacus). PostgreSQL tests skip with the reason when
# none answers.
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false PREFECT_SERVER_ANALYTICS_ENABLED=false \
       DO_NOT_TRACK=1 MLFLOW_ENABLE_TELEMETRY=false
.venv/bin/ruff check src pipelines tests benchmarks scripts
.venv/bin/ruff format --check src pipelines tests benchmarks scripts
.venv/bin/lint-imports            # the layers of pyproject.toml [tool.importlinter]
.venv/bin/python scripts/check_layout.py   # ≤ 650 lines a module, imports at the top, no cycles
.venv/bin/mypy
.venv/bin/python -m pytest -n "${DPGOV_TEST_WORKERS:-2}" --dist loadgroup "$@"
