#!/usr/bin/env bash
# Set up the environment (idempotent) and run the offline quickstart sweep: all four architectures
# x the three training modes on scikit-learn's bundled digits, on this machine's CPUs.
# State goes to $SDN_HOME (default ./sdn-home). Extra arguments go to `sdn sweep launch`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# Ray's token authentication stays on and the local Ray listens on 127.0.0.1 only: `sdn sweep
# launch` sets both up (token in $SDN_HOME/ray/auth_token, mode 0600). See README, Security.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # idle OpenMP threads would spin on the shared cores
exec .venv/bin/sdn sweep launch --preset quickstart "$@"
