#!/usr/bin/env bash
# The main job: install gpuslice's Python package and run the placement simulator
# (`gpuslice simulate`) on the embedded openb-shaped workload, printing one row per policy.
# Extra arguments go to `gpuslice simulate` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
PY=${PYTHON:-python3}
PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check \
  --no-build-isolation .
exec "$PY" -m gpuslice simulate "$@"
