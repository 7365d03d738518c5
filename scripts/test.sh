#!/usr/bin/env bash
# Every test: installs dependencies, builds with warnings as errors, runs ctest (consumer
# projects included), pytest, builds the image and runs the end-to-end flow from it, the
# ASan+UBSan build, the TSan build of the concurrent tests and a short libFuzzer run. Exits
# non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/deps.sh
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
export CTEST_OUTPUT_ON_FAILURE=1
step() { printf '\n=== %s (%ss)\n' "$1" "$SECONDS"; }

step "build (warnings as errors)"
cmake -S . -B build/ci -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPUSLICE_WERROR=ON >/dev/null
cmake --build build/ci -j "$JOBS"

step "ctest"
# The node programs' pytest suite writes ledgers through the installed package: it runs after
# `pip install .` below.
ctest --test-dir build/ci -j "$JOBS" --timeout 600 -E '^k8s:pytest$'

step "python package and pytest"
PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check \
  --no-build-isolation .
(cd "$root" && "$PY" -m pytest -q -p no:cacheprovider)
ctest --test-dir build/ci -R '^k8s:pytest$' --timeout 600

step "image: scripts/image.sh, then the end-to-end flow with the programs from the image"
# The pod asking for nvidia.com/gpumem 3000, from admission to a process that sees 3000 MiB, with
# the webhook, extender, device plugin, exporter and shim of the image (a library missing from
# it fails here); only the fake driver comes from build/ci, as ctest's e2e test names it.
scripts/image.sh
fake_nvml=$(ctest --test-dir build/ci -R '^examples:scheduler:e2e$' --show-only=json-v1 |
  "$PY" -c 'import json, sys
for t in json.load(sys.stdin)["tests"]:
    for p in t.get("properties", []):
        if p["name"] == "ENVIRONMENT":
            print(*[e.split("=", 1)[1] for e in p["value"] if e.startswith("GPUSLICE_FAKE_NVML_DIR=")])')
[ -n "$fake_nvml" ] || { echo "test.sh: no GPUSLICE_FAKE_NVML_DIR in build/ci's examples:scheduler:e2e: expected the fake driver to be built" >&2; exit 1; }
GPUSLICE_IMAGE=$(scripts/image.sh --print-tag) GPUSLICE_FAKE_NVML_DIR=$fake_nvml \
  "$PY" -m pytest -q -p no:cacheprovider -c pyproject.toml --rootdir . \
  tests/k8s/test_e2e_scheduling.py

step "ASan+UBSan build and ctest"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DGPUSLICE_WERROR=ON \
  -DGPUSLICE_SANITIZE=address -DGPUSLICE_BUILD_BENCH=OFF >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan -j "$JOBS" --timeout 600

step "TSan build and ctest (concurrent tests)"
cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DGPUSLICE_WERROR=ON \
  -DGPUSLICE_SANITIZE=thread -DGPUSLICE_BUILD_BENCH=OFF -DGPUSLICE_BUILD_EXAMPLES=OFF \
  -DGPUSLICE_BUILD_SHIM=OFF >/dev/null
cmake --build build/tsan -j "$JOBS"
if [ -n "$(ctest --test-dir build/tsan -N | grep -E '^ *Test +#')" ]; then
  TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/tsan -j "$JOBS" --timeout 600
fi

step "libFuzzer (clang), a short run of each target"
cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DGPUSLICE_BUILD_FUZZERS=ON -DGPUSLICE_BUILD_TESTS=OFF -DGPUSLICE_BUILD_SHIM=OFF \
  -DGPUSLICE_BUILD_BENCH=OFF -DGPUSLICE_BUILD_EXAMPLES=OFF -DGPUSLICE_WERROR=ON >/dev/null
cmake --build build/fuzz -j "$JOBS"
for f in build/fuzz/tests/fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  # New inputs go to the build tree; the checked-in seeds are only read.
  mkdir -p "build/fuzz/corpus/$name"
  "$f" -max_total_time="${FUZZ_SECONDS:-10}" -artifact_prefix=build/fuzz/ \
    "build/fuzz/corpus/$name" "tests/fuzz/corpus/$name" >"build/fuzz/$name.log" 2>&1 \
    || { tail -n 40 "build/fuzz/$name.log"; exit 1; }
  echo "$name: $(grep -Eo 'Done [0-9]+ runs' "build/fuzz/$name.log"), no crash"
done

step "done"
echo "all test suites passed in ${SECONDS}s"
