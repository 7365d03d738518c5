#!/usr/bin/env bash
# Real-GPU checks of libgpuslice.so. Needs an NVIDIA GPU, its driver, and the CUDA toolkit
# (headers, and lib64/stubs to link the driver-API program). Takes under 5 minutes.
#
#   tests/gpu/run.sh                 builds the shim (cmake, a C++17 compiler, fmt, nvml.h)
#   GPUSLICE_SHIM=path/libgpuslice.so tests/gpu/run.sh     uses a shim built elsewhere
#
# Details of every check go to $OUT (default build/gpu-out); a summary table is printed last.
# Memory checks: a driver-API program is refused at the limit; the context's memory the shim
# reconciles from NVML matches what the driver reports; torch.cuda.mem_get_info() is the limit;
# PyTorch (plain and expandable segments) allocates until OutOfMemoryError at the limit, within
# the counted context memory; nvidia-smi shows the limit. The SM checks are added after them.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$root/build/gpu-out}
mkdir -p "$OUT"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=${PYTHON:-python3}
MIB=$((1024 * 1024))
LIMIT_MIB=${GPUSLICE_GPU_LIMIT_MIB:-4096}     # the quota under test
CHUNK_MIB=64                                  # allocation size of the test programs
# Tolerance of the context reconciliation: NVML rounds per-process figures to whole MiB and the
# driver grows the context lazily between two readings.
RECONCILE_SLACK_MIB=16

declare -a names=() results=() details=()
record() { names+=("$1"); results+=("$2"); details+=("$3"); echo "[$2] $1: $3"; }

# ---- build -----------------------------------------------------------------------------------
if [ -z "${GPUSLICE_SHIM:-}" ]; then
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S "$root" -B "$root/build/gpu" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGPUSLICE_BUILD_TESTS=OFF -DGPUSLICE_BUILD_BENCH=OFF -DGPUSLICE_BUILD_EXAMPLES=OFF \
    -DGPUSLICE_BUILD_SHIM=ON >"$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 1; }
  cmake --build "$root/build/gpu" --target gpuslice_shim -j "$(nproc)" >>"$OUT/cmake.log" 2>&1 \
    || { tail -40 "$OUT/cmake.log"; exit 1; }
  GPUSLICE_SHIM=$root/build/gpu/shim/libgpuslice.so
fi
SHIM=$(readlink -f "$GPUSLICE_SHIM")
nvml_inc=$CUDA_HOME/include
[ -f "$nvml_inc/nvml.h" ] || nvml_inc=$("$PY" -c \
  'import nvidia,os;print(os.path.join(nvidia.__path__[0],"cu13","include"))' 2>/dev/null || true)
cc -O2 -o "$OUT/alloc_limit" "$root/tests/gpu/alloc_limit.c" -I"$CUDA_HOME/include" \
  -I"$nvml_inc" -L"$CUDA_HOME/lib64/stubs" -lcuda -ldl >"$OUT/cc.log" 2>&1 \
  || { cat "$OUT/cc.log"; exit 1; }

# Runs a command under the shim with a fresh ledger and the limit; stdout to $OUT/$1.out.
under_shim() {
  local name=$1; shift
  rm -f "$OUT/$name.ledger"
  env LD_PRELOAD="$SHIM" CUDA_DEVICE_MEMORY_LIMIT="${LIMIT_MIB}m" \
    CUDA_DEVICE_MEMORY_SHARED_CACHE="$OUT/$name.ledger" GPUSLICE_LOG=debug "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.err"
}
val() { sed -n "s/^$2=//p" "$OUT/$1.out" | tail -1; }
limit=$((LIMIT_MIB * MIB))

# ---- 1. driver API: refused at the limit ----------------------------------------------------
if under_shim driver "$OUT/alloc_limit" "$CHUNK_MIB"; then
  allocated=$(val driver allocated); refusal=$(val driver refusal)
  ctx=$(val driver context_bytes); view_total=$(val driver view_total)
  # The shim charges the context, so allocations stop at limit - context, to the chunk.
  if [ "$refusal" = 2 ] && [ "$view_total" = "$limit" ] && [ "$((allocated + ctx))" -le "$limit" ] \
     && [ "$((allocated + ctx + CHUNK_MIB * MIB))" -gt "$limit" ]; then
    record driver-api-limit PASS "allocated $((allocated / MIB)) MiB + context $((ctx / MIB)) MiB of ${LIMIT_MIB} MiB, then CUDA_ERROR_OUT_OF_MEMORY"
  else
    record driver-api-limit FAIL "allocated=$allocated context=$ctx refusal=$refusal view_total=$view_total limit=$limit"
  fi
else
  record driver-api-limit FAIL "exit status $? (see $OUT/driver.err)"
fi

# ---- 2. context memory: what the shim reconciled equals what the driver reports --------------
# Method (shim/state.cpp, state::reconcile): NVML's per-process usedGpuMemory minus the bytes
# the process allocated through counted calls is charged as overhead. Here: the shim's view
# right after the context (limit - free) must equal the context bytes NVML reports, unshimmed.
"$OUT/alloc_limit" "$CHUNK_MIB" >"$OUT/bare.out" 2>"$OUT/bare.err" || true
bare_ctx=$(val bare context_bytes)
if [ -s "$OUT/driver.out" ] && [ -n "$bare_ctx" ] && [ "$bare_ctx" != 0 ]; then
  charged=$(( $(val driver view_total) - $(val driver view_free) ))
  diff=$(( charged > bare_ctx ? charged - bare_ctx : bare_ctx - charged ))
  if [ "$diff" -le $((RECONCILE_SLACK_MIB * MIB)) ]; then
    record context-reconciled PASS "driver reports $((bare_ctx / MIB)) MiB per context; shim charged $((charged / MIB)) MiB"
  else
    record context-reconciled FAIL "driver reports $bare_ctx bytes, shim charged $charged (log: $OUT/driver.err)"
  fi
else
  record context-reconciled FAIL "NVML did not report this process (pid namespace?): $OUT/bare.out"
fi

# ---- 3-5. PyTorch ------------------------------------------------------------------------------
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for mode in plain expandable; do
    conf=""; [ "$mode" = expandable ] && conf="expandable_segments:True"
    if PYTORCH_CUDA_ALLOC_CONF=$conf under_shim "torch-$mode" "$PY" "$root/tests/gpu/torch_limit.py" "$CHUNK_MIB"; then
      total=$(val "torch-$mode" mem_get_info_total); refused=$(val "torch-$mode" refused)
      reserved=$(val "torch-$mode" reserved)
      ctx=$(sed -n 's/.*uncounted driver memory now [0-9.]* MiB (\([0-9]*\) bytes).*/\1/p' \
            "$OUT/torch-$mode.err" | tail -1); ctx=${ctx:-0}
      [ "$mode" = plain ] && { [ "$total" = "$limit" ] \
        && record torch-mem-get-info PASS "total $((total / MIB)) MiB = limit" \
        || record torch-mem-get-info FAIL "mem_get_info total $total, limit $limit"; }
      # Refused at the limit: what torch reserved plus the counted context memory fits the limit
      # and another chunk would not have.
      if [ "$refused" = OutOfMemoryError ] && [ "$((reserved + ctx))" -le "$limit" ] \
         && [ "$((reserved + ctx + 2 * CHUNK_MIB * MIB))" -gt "$limit" ]; then
        record "torch-oom-$mode" PASS "reserved $((reserved / MIB)) MiB + context $((ctx / MIB)) MiB of ${LIMIT_MIB} MiB, then OutOfMemoryError"
      else
        record "torch-oom-$mode" FAIL "refused=$refused reserved=$reserved context=$ctx limit=$limit"
      fi
    else
      record "torch-oom-$mode" FAIL "exit status $? (see $OUT/torch-$mode.err)"
    fi
  done
else
  record torch-mem-get-info SKIP "PyTorch with CUDA is not installed for $PY"
fi

# ---- 6. nvidia-smi shows the limit -------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  if under_shim smi nvidia-smi -i 0 --query-gpu=memory.total,memory.used --format=csv,noheader,nounits; then
    smi_total=$(cut -d, -f1 "$OUT/smi.out" | tr -d ' ')
    [ "$smi_total" = "$LIMIT_MIB" ] \
      && record nvidia-smi-limit PASS "memory.total $smi_total MiB" \
      || record nvidia-smi-limit FAIL "memory.total $smi_total MiB, expected $LIMIT_MIB"
  else
    record nvidia-smi-limit FAIL "nvidia-smi failed under the shim ($OUT/smi.err)"
  fi
else
  record nvidia-smi-limit SKIP "nvidia-smi not found"
fi

# ---- summary (last) ----------------------------------------------------------------------------
failed=0
printf '\n%-22s %-5s %s\n' check result detail
printf '%-22s %-5s %s\n' ---------------------- ----- ------
for i in "${!names[@]}"; do
  printf '%-22s %-5s %s\n' "${names[$i]}" "${results[$i]}" "${details[$i]}"
  [ "${results[$i]}" = FAIL ] && failed=$((failed + 1))
done
echo "details: $OUT"
exit $((failed > 0))
