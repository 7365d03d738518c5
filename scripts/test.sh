#!/usr/bin/env bash
# Every test: installs dependencies, builds with warnings as errors, runs ctest (consumer
# projects included), pytest, builds the image (while the ASan+UBSan build compiles) and runs the
# end-to-end flow from it, the ASan+UBSan ctest, the TSan build of the concurrent tests and a
# short libFuzzer run. Exits non-zero on the first failure. Each stage's wall and CPU seconds are
# tabled at the end (bench/README.md, "The test command's time").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
export CTEST_OUTPUT_ON_FAILURE=1

# Each stage's wall seconds and CPU seconds (user+sys of the commands it ran and waited for, as
# bash's `times` counts them), printed as it ends and in a table at the end.
mkdir -p build
times_file=build/test-times.txt
stage="" stage_start=0 stage_cpu=0 table=""
cpu_now() {
  times >"$times_file"  # a builtin in this shell: a subshell would not count its children
  cpu=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } }
             END { printf "%d", s }' "$times_file")
}
step() {
  cpu_now
  if [ -n "$stage" ]; then
    local line
    line=$(printf '%6d s wall %6d s CPU  %s' $((SECONDS - stage_start)) $((cpu - stage_cpu)) \
           "$stage")
    echo "--- $line"
    table+="$line"$'\n'
  fi
  stage=$1 stage_start=$SECONDS stage_cpu=$cpu
  printf '\n=== %s (%ss)\n' "$1" "$SECONDS"
}

step "dependencies"
scripts/deps.sh

# ccache, where it is installed, for every build below (CMake takes the launcher from the
# environment; pip's build of the module and ctest's consumer projects included), in its usual
# directory, so a later run on the same machine reuses what is unchanged. Never required: without
# it every build compiles from scratch. CCACHE_BASEDIR keeps this checkout's path out of the keys.
if [ "${GPUSLICE_CCACHE:-1}" != 0 ] && command -v ccache >/dev/null; then
  export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=$root
fi

# What the image needs from the network (the base made from Debian's packages, the CUDA headers'
# wheels, the builder's packages), fetched while the first build compiles; waited for at the
# image stage, which fails here if it failed.
scripts/image.sh --prepare >build/image-prepare.log 2>&1 &
prepare_pid=$!

step "build (warnings as errors)"
# RelWithDebInfo's optimisation (-O2 -DNDEBUG) without its debug information, which nothing here
# reads: 730 CPU s for this build instead of 928 (bench/README.md). The sanitizer builds keep
# line tables.
cmake -S . -B build/ci -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" -DGPUSLICE_WERROR=ON >/dev/null
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

step "image: scripts/image.sh in the background, while the ASan+UBSan build compiles"
# Building the image is downloading, copying layers (vfs) and compiling the programs without
# debug information, beside a build that keeps both cores busy. Its output goes to build/image.log;
# its CPU seconds (and --prepare's) count in the stage that waits for it.
wait "$prepare_pid" ||
  { tail -n 40 build/image-prepare.log; echo "test.sh: scripts/image.sh --prepare failed (above)" >&2; exit 1; }
scripts/image.sh >build/image.log 2>&1 &
image_pid=$!
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DGPUSLICE_WERROR=ON \
  -DGPUSLICE_SANITIZE=address -DGPUSLICE_BUILD_BENCH=OFF >/dev/null
cmake --build build/asan -j "$JOBS"

step "the end-to-end flow with the programs from the image"
wait "$image_pid" ||
  { tail -n 60 build/image.log; echo "test.sh: scripts/image.sh failed (above; all of it in build/image.log)" >&2; exit 1; }
grep -E '^(image\.sh:|ccache:|runtime packages:)' build/image.log
# The pod asking for nvidia.com/gpumem 3000, from admission to a process that sees 3000 MiB, with
# the webhook, extender, device plugin, exporter and shim of the image (a library missing from
# it fails here); only the fake driver comes from build/ci, as ctest's e2e test names it.
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

step "ASan+UBSan ctest"
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
# $JOBS targets at a time, each for its own FUZZ_SECONDS on a core of its own.
names=() pids=()
fuzz_wait() {
  local i
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" ||
      { tail -n 40 "build/fuzz/${names[$i]}.log"; echo "test.sh: ${names[$i]} failed (above)" >&2; exit 1; }
    echo "${names[$i]}: $(grep -Eo 'Done [0-9]+ runs' "build/fuzz/${names[$i]}.log"), no crash"
  done
  names=() pids=()
}
for f in build/fuzz/tests/fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  # New inputs go to the build tree; the checked-in seeds are only read.
  mkdir -p "build/fuzz/corpus/$name"
  "$f" -max_total_time="${FUZZ_SECONDS:-10}" -artifact_prefix="build/fuzz/$name-" \
    "build/fuzz/corpus/$name" "tests/fuzz/corpus/$name" >"build/fuzz/$name.log" 2>&1 &
  names+=("$name") pids+=($!)
  [ ${#pids[@]} -lt "$JOBS" ] || fuzz_wait
done
fuzz_wait

step "done"
printf '%s' "$table"
echo "all test suites passed in ${SECONDS}s"
