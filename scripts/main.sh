#!/usr/bin/env bash
# The main job: install gpuslice's Python package and run the placement simulator on the
# embedded default workload, printing one row per policy. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation .
if "$PY" -m gpuslice --help | grep -q ' simulate '; then
  exec "$PY" -m gpuslice simulate "$@"
fi
exec "$PY" -m gpuslice check-env "$@"
