#!/usr/bin/env bash
# Set up the environment (idempotent) and run the linter and the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` or `scripts/test.sh tests/test_models.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# Idle OpenMP threads spin by default and starve the other processes on shared cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check sdn storage workflows tests bench
.venv/bin/python -m pytest "$@"
