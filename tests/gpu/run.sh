#!/usr/bin/env bash
# Real-GPU checks of libgpuslice.so. Needs an NVIDIA GPU, its driver, and the CUDA toolkit
# (headers, and lib64/stubs to link the driver-API program). Takes about 7 minutes.
#
#   tests/gpu/run.sh                 builds the shim (cmake, a C++17 compiler, fmt, nvml.h)
#   GPUSLICE_SHIM=path/libgpuslice.so tests/gpu/run.sh     uses a shim built elsewhere
#
# Details of every check go to $OUT (default build/gpu-out); a summary table is printed last and
# written to $OUT/summary.txt, and everything under $OUT is packed into $OUT/all.tgz on any exit
# (a device that sends back only a few files still sends back all of it).
# Memory checks: a driver-API program is refused at the limit; the context's memory the shim
# reconciles from NVML matches what the driver reports; torch.cuda.mem_get_info() is the limit;
# PyTorch (plain, expandable segments, and the cudaMallocAsync backend's stream-ordered pool)
# allocates until OutOfMemoryError and the driver never holds more than the limit for it, context
# included, then fills again after freeing; the same in a pid namespace of its own (as in a pod,
# where NVML's pids are not the process's); nvidia-smi shows the limit. "What the driver holds" is
# read from NVML without trusting any pid: every process's figure summed, minus the sum before. SM checks: a compute-bound kernel's
# throughput at caps of 30 and 70, alone and as two co-located containers (judged against what two bare processes get together, since time-slicing two contexts costs throughput), graph launches,
# cooperative kernels and the legacy cuLaunchGridAsync capped, the kernel the calibration sized,
# the added host cost per launch with no cap (first batch left out), a torch.cuda.graph capture
# in global mode that survives the shim's watcher and whose replays are capped, and the
# end-to-end slowdown of a PyTorch training loop with no cap against the bare runs' own spread.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$root/build/gpu-out}
mkdir -p "$OUT"
# Packs $OUT into $OUT/all.tgz however the script ends (a failed command under set -e too), and
# keeps the script's exit status. The archive is written outside $OUT and moved in: GNU tar exits
# 1 ("file changed as we read it") when a file appears in the folder it is reading.
pack_out() {
  local tmp
  tmp=$(mktemp "${TMPDIR:-/tmp}/gpuslice-gpu-out.XXXXXX") || return 0
  if tar -czf "$tmp" -C "$OUT" --exclude=all.tgz . 2>/dev/null; then
    mv "$tmp" "$OUT/all.tgz"
  else
    rm -f "$tmp"
  fi
}
trap 'status=$?; pack_out || true; exit "$status"' EXIT
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
val() { { sed -n "s/^$2=//p" "$OUT/$1.out" 2>/dev/null || true; } | tail -1; }
limit=$((LIMIT_MIB * MIB))

# ---- 1. driver API: refused at the limit ----------------------------------------------------
if under_shim driver "$OUT/alloc_limit" "$CHUNK_MIB"; then
  allocated=$(val driver allocated); refusal=$(val driver refusal)
  ctx=$(val driver context_bytes); view_total=$(val driver view_total); held=$(val driver driver_held)
  # The shim charges the context, so allocations stop at limit - context, to the chunk, and the
  # driver holds no more than the limit for the process.
  if [ "$refusal" = 2 ] && [ "$view_total" = "$limit" ] && [ "$((allocated + ctx))" -le "$limit" ] \
     && [ "$((allocated + ctx + CHUNK_MIB * MIB))" -gt "$limit" ] && [ "${held:-0}" -gt 0 ] \
     && [ "$held" -le "$limit" ]; then
    record driver-api-limit PASS "allocated $((allocated / MIB)) MiB + context $((ctx / MIB)) MiB of ${LIMIT_MIB} MiB, then CUDA_ERROR_OUT_OF_MEMORY; the driver held $((held / MIB)) MiB"
  else
    record driver-api-limit FAIL "allocated=$allocated context=$ctx driver_held=$held refusal=$refusal view_total=$view_total limit=$limit"
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
# torch_check NAME: the checks of one torch_limit.py run. Refused at the limit: the driver held no
# more than the limit for the process (torch's reserve plus its context and modules, read from
# NVML) and another two chunks would not have fitted; after freeing, chunks twice as large fill
# the quota again (the allocator's cache or pool is given back first) within the limit.
torch_check() {
  local name=$1 refused reserved held refill refill_held refill_bytes first ctx
  refused=$(val "$name" refused); reserved=$(val "$name" reserved); held=$(val "$name" driver_held)
  refill=$(val "$name" refill_refused); refill_held=$(val "$name" refill_driver_held)
  refill_bytes=$(val "$name" refill_tensor_bytes); first=$(val "$name" first_tensor_bytes)
  ctx=$(( ${held:-0} - ${reserved:-0} ))
  if [ "$refused" = OutOfMemoryError ] && [ "${held:-0}" -gt 0 ] && [ "$held" -le "$limit" ] \
     && [ "$((held + 2 * CHUNK_MIB * MIB))" -gt "$limit" ] && [ "$refill" = OutOfMemoryError ] \
     && [ "${refill_held:-0}" -le "$limit" ] && [ "$((refill_bytes + 4 * CHUNK_MIB * MIB))" -ge "$first" ]; then
    record "$name" PASS "driver held $((held / MIB)) MiB of ${LIMIT_MIB} MiB (torch reserved $((reserved / MIB)) + context and modules $((ctx / MIB))), then OutOfMemoryError; refilled $((refill_bytes / MIB)) MiB holding $((refill_held / MIB)) MiB"
  else
    record "$name" FAIL "refused=$refused driver_held=$held reserved=$reserved refill=$refill refill_driver_held=$refill_held refill_bytes=$refill_bytes first=$first limit=$limit ($OUT/$name.err)"
  fi
}
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for mode in plain expandable async; do
    conf=""
    [ "$mode" = expandable ] && conf="expandable_segments:True"
    [ "$mode" = async ] && conf="backend:cudaMallocAsync"
    if PYTORCH_CUDA_ALLOC_CONF=$conf under_shim "torch-oom-$mode" "$PY" "$root/tests/gpu/torch_limit.py" "$CHUNK_MIB"; then
      total=$(val "torch-oom-$mode" mem_get_info_total)
      [ "$mode" = plain ] && { [ "$total" = "$limit" ] \
        && record torch-mem-get-info PASS "total $((total / MIB)) MiB = limit" \
        || record torch-mem-get-info FAIL "mem_get_info total $total, limit $limit"; }
      torch_check "torch-oom-$mode"
    else
      record "torch-oom-$mode" FAIL "exit status $? (see $OUT/torch-oom-$mode.err)"
    fi
  done
  # JAX-style preallocation: one allocation of all that mem_get_info() reports fits, and then
  # nothing more; a second context (cuCtxCreate_v4) is charged from its creation on.
  if under_shim torch-prealloc "$PY" "$root/tests/gpu/torch_prealloc.py"; then
    pre=$(val torch-prealloc prealloc); extra=$(val torch-prealloc extra)
    held=$(val torch-prealloc driver_held); bytes=$(val torch-prealloc prealloc_bytes)
    if [ "$pre" = ok ] && [ "$extra" = OutOfMemoryError ] && [ "${held:-0}" -gt 0 ] \
       && [ "$held" -le "$limit" ]; then
      record torch-prealloc PASS "one allocation of $((bytes / MIB)) MiB fitted, 2 MiB more refused; the driver held $((held / MIB)) of ${LIMIT_MIB} MiB"
    else
      record torch-prealloc FAIL "prealloc=$pre extra=$extra driver_held=$held bytes=$bytes ($OUT/torch-prealloc.err)"
    fi
    grew=$(val torch-prealloc second_context_bytes); drop=$(val torch-prealloc free_drop)
    if [ "$(val torch-prealloc second_context)" = 0 ] && [ "${grew:-0}" -gt 0 ] \
       && [ "$(( ${drop:-0} - grew ))" -le "$((RECONCILE_SLACK_MIB * MIB))" ] \
       && [ "$(( grew - ${drop:-0} ))" -le "$((RECONCILE_SLACK_MIB * MIB))" ]; then
      record second-context PASS "a second context took $((grew / MIB)) MiB; the view dropped $((drop / MIB)) MiB at once"
    else
      record second-context FAIL "second_context=$(val torch-prealloc second_context) grew=$grew drop=$drop ($OUT/torch-prealloc.err)"
    fi
  else
    record torch-prealloc FAIL "exit status $? (see $OUT/torch-prealloc.err)"
  fi
else
  record torch-mem-get-info SKIP "PyTorch with CUDA is not installed for $PY"
fi

# ---- 5b. pid namespace: NVML lists host pids, not the process's own -------------------------
if env -u LD_PRELOAD unshare --pid --fork --mount-proc true 2>/dev/null; then
  if under_shim pidns-driver unshare --pid --fork --mount-proc "$OUT/alloc_limit" "$CHUNK_MIB"; then
    allocated=$(val pidns-driver allocated); ctx=$(val pidns-driver context_bytes)
    held=$(val pidns-driver driver_held); refusal=$(val pidns-driver refusal)
    who=$({ grep -o 'NVML lists this process as pid [0-9]* (getpid() [0-9]*)' \
            "$OUT/pidns-driver.err" || true; } | tail -1)
    if [ "$refusal" = 2 ] && [ -n "$who" ] && [ "${held:-0}" -gt 0 ] && [ "$held" -le "$limit" ] \
       && [ "$((allocated + ctx))" -le "$limit" ] && [ "$((allocated + ctx + CHUNK_MIB * MIB))" -gt "$limit" ]; then
      record pidns-driver-api PASS "$who; allocated $((allocated / MIB)) MiB + context $((ctx / MIB)) MiB, the driver held $((held / MIB)) of ${LIMIT_MIB} MiB"
    else
      record pidns-driver-api FAIL "identity='$who' allocated=$allocated context=$ctx driver_held=$held refusal=$refusal ($OUT/pidns-driver.err)"
    fi
  else
    record pidns-driver-api FAIL "exit status $? (see $OUT/pidns-driver.err)"
  fi
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    if under_shim torch-pidns unshare --pid --fork --mount-proc "$PY" "$root/tests/gpu/torch_limit.py" "$CHUNK_MIB"; then
      torch_check torch-pidns
    else
      record torch-pidns FAIL "exit status $? (see $OUT/torch-pidns.err)"
    fi
  fi
else
  record pidns-driver-api SKIP "unshare --pid --fork --mount-proc is not permitted here"
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

# ---- 7-11. SM limiter --------------------------------------------------------------------------
# A compute-bound kernel (one block per SM, about 2 ms) launched back to back; the share is its
# throughput relative to the same program uncapped, alone. Target: within SHARE_TOL points.
SHARE_TOL=5
# The calibrated kernel must be about 2 ms: a kernel of a few us measures launch overhead, not
# the SM share (the first launch loads the module lazily; calibrate warms up and takes a median).
KERNEL_MS_MIN=1; KERNEL_MS_MAX=4
# The median of column $2 of file $1 (rows of "bare shimmed"); empty when no row is complete.
median_of() {
  awk 'NF == 2' "$1" | cut -d' ' -f"$2" | sort -g | awk '{ v[NR] = $1 } END { if (NR > 0) print v[int((NR + 1) / 2)] }'
}
# max - min of column $2 of file $1.
spread_of() {
  awk -v c="$2" 'NF == 2 { v = $c; if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++ } END { if (n > 0) printf "%.2f", hi - lo }' "$1"
}
SHARE_SECONDS=4
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
if "$NVCC" -O2 -o "$OUT/launch_share" "$root/tests/gpu/launch_share.cu" \
     -L"$CUDA_HOME/lib64/stubs" -lcuda \
     >"$OUT/nvcc.log" 2>&1; then
  # Runs launch_share under the shim as a container of its own: launch_run NAME SM ARGS...
  launch_run() {
    local name=$1 sm=$2; shift 2
    rm -f "$OUT/$name.ledger"
    env LD_PRELOAD="$SHIM" CUDA_DEVICE_SM_LIMIT="$sm" GPU_CORE_UTILIZATION_POLICY=force \
      CUDA_DEVICE_MEMORY_SHARED_CACHE="$OUT/$name.ledger" "$OUT/launch_share" "$@" \
      >"$OUT/$name.out" 2>"$OUT/$name.err"
  }
  # The share in percent of $1's rate against the uncapped rate, and its check against $2.
  share_check() {
    local check=$1 name=$2 target=$3 rate pct
    rate=$(val "$name" rate)
    if [ -z "$rate" ]; then
      record "$check" FAIL "no rate: $OUT/$name.out $OUT/$name.err"
      return
    fi
    pct=$(awk -v r="$rate" -v b="$base_rate" 'BEGIN { printf "%.1f", 100 * r / b }')
    if awk -v p="$pct" -v t="$target" -v e="$SHARE_TOL" 'BEGIN { exit !((p - t) <= e && (t - p) <= e) }'; then
      record "$check" PASS "$pct% of the uncapped throughput (target $target%)"
    else
      record "$check" FAIL "$pct% of the uncapped throughput (target $target% +- $SHARE_TOL; $OUT/$name.out)"
    fi
  }
  "$OUT/launch_share" calibrate >"$OUT/calibrate.out" 2>&1 || true
  iters=$(val calibrate iters); kernel_ms=$(val calibrate kernel_ms)
  if [ -n "$kernel_ms" ] && awk -v k="$kernel_ms" -v a="$KERNEL_MS_MIN" -v b="$KERNEL_MS_MAX" \
       'BEGIN { exit !(k >= a && k <= b) }'; then
    record sm-calibration PASS "kernel of $kernel_ms ms ($iters iterations)"
  else
    record sm-calibration FAIL "kernel of ${kernel_ms:-?} ms, expected $KERNEL_MS_MIN..$KERNEL_MS_MAX ($OUT/calibrate.out)"
  fi
  base_rate=""
  if [ -n "$iters" ]; then
    "$OUT/launch_share" loop "$iters" "$SHARE_SECONDS" >"$OUT/uncapped.out" 2>"$OUT/uncapped.err" || true
    base_rate=$(val uncapped rate)
  fi
  if [ -n "$base_rate" ]; then
    for cap in 30 70; do
      launch_run "alone-$cap" "$cap" loop "$iters" "$SHARE_SECONDS" || true
      share_check "sm-share-alone-$cap" "alone-$cap" "$cap"
    done
    # Two co-located containers, 30 and 70, at the same time. Without MPS the driver
    # time-slices two processes' contexts, and switching costs throughput: two uncapped
    # processes together get less than one alone (91% on an H200). So what the pair can get is
    # measured first, bare, in this run; each capped container must get at least its cap's
    # part of that, and never more than its cap of the uncapped rate.
    "$OUT/launch_share" loop "$iters" "$SHARE_SECONDS" >"$OUT/bare-pair-a.out" 2>&1 & pa=$!
    "$OUT/launch_share" loop "$iters" "$SHARE_SECONDS" >"$OUT/bare-pair-b.out" 2>&1 & pb=$!
    wait "$pa" || true; wait "$pb" || true
    pair_pct=$(awk -v a="$(val bare-pair-a rate)" -v b="$(val bare-pair-b rate)" -v r="$base_rate" \
      'BEGIN { if (a > 0 && b > 0) printf "%.1f", 100 * (a + b) / r }')
    launch_run pair-30 30 loop "$iters" "$SHARE_SECONDS" & p30=$!
    launch_run pair-70 70 loop "$iters" "$SHARE_SECONDS" & p70=$!
    wait "$p30" || true; wait "$p70" || true
    for cap in 30 70; do
      rate=$(val "pair-$cap" rate)
      if [ -z "$pair_pct" ] || [ -z "$rate" ]; then
        record "sm-share-pair-$cap" FAIL "no rate: $OUT/bare-pair-a.out $OUT/pair-$cap.out $OUT/pair-$cap.err"
        continue
      fi
      pct=$(awk -v r="$rate" -v b="$base_rate" 'BEGIN { printf "%.1f", 100 * r / b }')
      low=$(awk -v c="$cap" -v p="$pair_pct" -v e="$SHARE_TOL" 'BEGIN { printf "%.1f", c * p / 100 - e }')
      high=$((cap + SHARE_TOL))
      if awk -v p="$pct" -v l="$low" -v h="$high" 'BEGIN { exit !(p >= l && p <= h) }'; then
        record "sm-share-pair-$cap" PASS "$pct% of the uncapped throughput beside the other container (two bare processes together get $pair_pct%; target $low..$high%)"
      else
        record "sm-share-pair-$cap" FAIL "$pct% of the uncapped throughput beside the other container (two bare processes together get $pair_pct%; target $low..$high%; $OUT/pair-$cap.out)"
      fi
    done
    # Graph launches, cooperative kernels and the legacy cuLaunchGridAsync are capped too.
    for path in graph coop grid; do
      launch_run "$path-30" 30 "$path" "$iters" "$SHARE_SECONDS" || true
      share_check "sm-share-$path-30" "$path-30" 30
    done
    # Run-to-run stability: 50 ms kernels at a cap of 30, four runs, each within +-3 of the cap
    # (the GPU model's hardware-variation test asserts the same; tests/rate/test_gpu_model.cpp).
    LONG_FACTOR=25; LONG_RUNS=4; LONG_TOL=3
    long_iters=$((iters * LONG_FACTOR))
    "$OUT/launch_share" loop "$long_iters" "$SHARE_SECONDS" >"$OUT/long-uncapped.out" 2>&1 || true
    long_base=$(val long-uncapped rate); long_pcts=""; long_ok=1
    for run in $(seq "$LONG_RUNS"); do
      launch_run "long-30-$run" 30 loop "$long_iters" "$SHARE_SECONDS" || true
      rate=$(val "long-30-$run" rate)
      pct=$(awk -v r="${rate:-0}" -v b="${long_base:-0}" 'BEGIN { if (b > 0) printf "%.1f", 100 * r / b }')
      long_pcts="$long_pcts ${pct:-?}"
      awk -v p="${pct:-999}" -v e="$LONG_TOL" 'BEGIN { exit !((p - 30) <= e && (30 - p) <= e) }' || long_ok=0
    done
    detail="runs of 50 ms kernels at cap 30:$long_pcts% (each within 30 +- $LONG_TOL; $OUT/long-30-*.out)"
    [ "$long_ok" = 1 ] && record sm-share-long-30-runs PASS "$detail" || record sm-share-long-30-runs FAIL "$detail"
  else
    record sm-share-alone-30 FAIL "uncapped run failed: $OUT/calibrate.out $OUT/uncapped.out $OUT/uncapped.err"
  fi
  # Host cost of one launch, bare and through the shim with no cap set: cuLaunchKernel as linked
  # and cudaLaunchKernel (the runtime's route through cuGetProcAddress). The first batch (module
  # load, first-use set-up) is left out and reported apart; five alternating rounds, medians.
  # On an H200 two bare runs of 2,000,000 launches differed by 112 ns (3712 and 3600), so a
  # difference within the bare runs' own spread passes (the detail gives both).
  LAUNCHES=500000; COST_ROUNDS=5; COST_TARGET_NS=20
  for how in symbol runtime; do
    : >"$OUT/cost-$how.txt"
    for round in $(seq "$COST_ROUNDS"); do
      "$OUT/launch_share" cost "$LAUNCHES" "$how" >"$OUT/cost-bare-$how-$round.out" 2>&1 || true
      launch_run "cost-shim-$how-$round" 0 cost "$LAUNCHES" "$how" || true
      echo "$(val "cost-bare-$how-$round" ns_per_launch) $(val "cost-shim-$how-$round" ns_per_launch)" \
        >>"$OUT/cost-$how.txt"
    done
    bare=$(median_of "$OUT/cost-$how.txt" 1); shimmed=$(median_of "$OUT/cost-$how.txt" 2)
    noise=$(spread_of "$OUT/cost-$how.txt" 1)
    first=$(val "cost-shim-$how-1" first_batch_us)
    check=launch-cost; [ "$how" = runtime ] && check=launch-cost-runtime
    if [ -n "$bare" ] && [ -n "$shimmed" ]; then
      added=$(awk -v a="$shimmed" -v b="$bare" 'BEGIN { printf "%.1f", a - b }')
      detail="+$added ns per launch ($bare -> $shimmed ns, medians of $COST_ROUNDS; bare runs spread $noise ns; first batch under the shim ${first:-?} us), target <= $COST_TARGET_NS or within the bare spread"
      awk -v d="$added" -v t="$COST_TARGET_NS" -v n="${noise:-0}" 'BEGIN { exit !(d <= t || d <= n) }' \
        && record "$check" PASS "$detail" || record "$check" FAIL "$detail"
    else
      record "$check" FAIL "see $OUT/cost-bare-$how-*.out and $OUT/cost-shim-$how-*.err"
    fi
  done
else
  record sm-share-alone-30 FAIL "nvcc failed: $OUT/nvcc.log"
fi

# ---- library launches: cuLibraryLoadData (PTX), a CUkernel launched where a CUfunction is
# expected, and cuKernelGetFunction's function, each capped at 30 against its own uncapped rate.
if cc -O2 -o "$OUT/launch_library" "$root/tests/gpu/launch_library.c" -I"$CUDA_HOME/include" \
     -L"$CUDA_HOME/lib64/stubs" -lcuda >"$OUT/cc-library.log" 2>&1; then
  "$OUT/launch_library" calibrate >"$OUT/library-calibrate.out" 2>&1 || true
  lib_iters=$(val library-calibrate iters)
  for how in kernel function; do
    if [ -z "$lib_iters" ]; then
      record "sm-share-library-$how-30" FAIL "calibration failed: $OUT/library-calibrate.out"
      continue
    fi
    "$OUT/launch_library" "$how" "$lib_iters" "$SHARE_SECONDS" >"$OUT/library-$how-bare.out" 2>&1 || true
    rm -f "$OUT/library-$how.ledger"
    env LD_PRELOAD="$SHIM" CUDA_DEVICE_SM_LIMIT=30 GPU_CORE_UTILIZATION_POLICY=force \
      CUDA_DEVICE_MEMORY_SHARED_CACHE="$OUT/library-$how.ledger" \
      "$OUT/launch_library" "$how" "$lib_iters" "$SHARE_SECONDS" \
      >"$OUT/library-$how-30.out" 2>"$OUT/library-$how-30.err" || true
    lb=$(val "library-$how-bare" rate); lr=$(val "library-$how-30" rate)
    pct=$(awk -v r="${lr:-0}" -v b="${lb:-0}" 'BEGIN { if (b > 0) printf "%.1f", 100 * r / b }')
    if [ -n "$pct" ] && awk -v p="$pct" -v e="$SHARE_TOL" 'BEGIN { exit !((p - 30) <= e && (30 - p) <= e) }'; then
      record "sm-share-library-$how-30" PASS "$pct% of the bare rate (target 30%)"
    else
      record "sm-share-library-$how-30" FAIL "${pct:-?}% of the bare rate (target 30% +- $SHARE_TOL; $OUT/library-$how-*.out)"
    fi
  done
else
  record sm-share-library-kernel-30 FAIL "cc failed: $OUT/cc-library.log"
fi

# ---- 12. torch.cuda.graph under the shim: the capture survives, replays are capped -------------
GRAPH_SECONDS=3
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  "$PY" "$root/tests/gpu/launch_graph.py" "$GRAPH_SECONDS" >"$OUT/graph-bare.out" 2>&1 || true
  rm -f "$OUT/graph-shim.ledger"
  env LD_PRELOAD="$SHIM" CUDA_DEVICE_SM_LIMIT=30 GPU_CORE_UTILIZATION_POLICY=force \
    CUDA_DEVICE_MEMORY_SHARED_CACHE="$OUT/graph-shim.ledger" \
    "$PY" "$root/tests/gpu/launch_graph.py" "$GRAPH_SECONDS" >"$OUT/graph-shim.out" 2>&1 || true
  if [ "$(val graph-shim captured)" = 1 ]; then
    record torch-graph-capture PASS "global-mode capture survived the shim's watcher (cap 30)"
  else
    record torch-graph-capture FAIL "captured=$(val graph-shim captured) $(val graph-shim error) ($OUT/graph-shim.out; bare: captured=$(val graph-bare captured))"
  fi
  gb=$(val graph-bare replays_per_s); gs=$(val graph-shim replays_per_s)
  if [ -n "$gb" ] && [ -n "$gs" ]; then
    pct=$(awk -v r="$gs" -v b="$gb" 'BEGIN { printf "%.1f", 100 * r / b }')
    awk -v p="$pct" -v e="$SHARE_TOL" 'BEGIN { exit !((p - 30) <= e && (30 - p) <= e) }' \
      && record torch-graph-replay-30 PASS "$pct% of the bare replay rate (target 30%)" \
      || record torch-graph-replay-30 FAIL "$pct% of the bare replay rate (target 30% +- $SHARE_TOL)"
  else
    record torch-graph-replay-30 FAIL "no replay rate: $OUT/graph-bare.out $OUT/graph-shim.out"
  fi
else
  record torch-graph-capture SKIP "PyTorch with CUDA is not installed for $PY"
fi

# ---- 13. PyTorch training loop, no cap: end-to-end slowdown -------------------------------------
# Five alternating rounds of 1000 steps. A 600-step run varies by about 10% between two bare
# runs on an H200, so the slowdown passes when it is under 1% or under the bare runs' own
# spread (the detail says which).
E2E_ROUNDS=5; E2E_STEPS=1000
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  : >"$OUT/torch-e2e.txt"
  for round in $(seq "$E2E_ROUNDS"); do
    "$PY" "$root/tests/gpu/launch_torch.py" "$E2E_STEPS" >"$OUT/e2e-bare-$round.out" 2>&1 || true
    rm -f "$OUT/e2e.ledger"
    env LD_PRELOAD="$SHIM" CUDA_DEVICE_MEMORY_SHARED_CACHE="$OUT/e2e.ledger" \
      "$PY" "$root/tests/gpu/launch_torch.py" "$E2E_STEPS" >"$OUT/e2e-shim-$round.out" 2>&1 || true
    echo "$(val "e2e-bare-$round" seconds) $(val "e2e-shim-$round" seconds)" >>"$OUT/torch-e2e.txt"
  done
  bare=$(median_of "$OUT/torch-e2e.txt" 1); shimmed=$(median_of "$OUT/torch-e2e.txt" 2)
  slow=""; noise=""
  if [ -n "$bare" ] && [ -n "$shimmed" ]; then
    slow=$(awk -v s="$shimmed" -v b="$bare" 'BEGIN { printf "%.2f", 100 * (s - b) / b }')
    noise=$(awk -v d="$(spread_of "$OUT/torch-e2e.txt" 1)" -v b="$bare" 'BEGIN { printf "%.2f", 100 * d / b }')
  fi
  if [ -n "$slow" ] && awk -v p="$slow" -v n="$noise" 'BEGIN { exit !(p < 1 || p < n) }'; then
    record torch-e2e-slowdown PASS "$slow% slower under the shim, no cap (medians of $E2E_ROUNDS; bare runs spread $noise%; target < 1% or within that spread)"
  else
    record torch-e2e-slowdown FAIL "${slow:-?}% slower under the shim (bare runs spread ${noise:-?}%; target < 1%; $OUT/torch-e2e.txt)"
  fi
else
  record torch-e2e-slowdown SKIP "PyTorch with CUDA is not installed for $PY"
fi

# ---- VMM stacks: NCCL's host memory and llama.cpp's VMM pool ----------------------------------
# Host-located cuMemCreate (vLLM/NCCL) succeeds with the quota full and leaves the view as it was;
# a pool grown by granules (llama.cpp) stops at the limit less the context, to the granule, with
# CUDA_ERROR_OUT_OF_MEMORY (2), and its unmap gives it all back.
if cc -O2 -o "$OUT/vmm_stacks" "$root/tests/gpu/vmm_stacks.c" -I"$CUDA_HOME/include" \
     -L"$CUDA_HOME/lib64/stubs" -lcuda >>"$OUT/cc.log" 2>&1 \
   && under_shim vmm-stacks "$OUT/vmm_stacks" "$CHUNK_MIB"; then
  hc=$(val vmm-stacks host_create); hn=$(val vmm-stacks host_numa_create)
  fb=$(val vmm-stacks view_free_before); fa=$(val vmm-stacks view_free_after)
  if [ "$hc" = 0 ] && [ "$hn" = 0 ] && [ "$fb" = "$fa" ]; then
    record vmm-host-memory PASS "host and host-NUMA cuMemCreate beyond the limit with the quota full; view unchanged"
  else
    record vmm-host-memory FAIL "host_create=$hc host_numa_create=$hn view_free $fb -> $fa"
  fi
  pool=$(val vmm-stacks vmm_pool); ref=$(val vmm-stacks vmm_refusal); ctx=$(val vmm-stacks context)
  gran=$(val vmm-stacks granularity); endf=$(val vmm-stacks vmm_view_free_end)
  if [ "$ref" = 2 ] && [ "$((pool + ctx))" -le "$limit" ] \
     && [ "$((pool + ctx + gran))" -gt "$limit" ] && [ "$endf" = "$((limit - ctx))" ]; then
    record vmm-llama-pool PASS "grew $((pool / MIB)) MiB + context $((ctx / MIB)) MiB of ${LIMIT_MIB} MiB by granules, then CUDA_ERROR_OUT_OF_MEMORY"
  else
    record vmm-llama-pool FAIL "pool=$pool context=$ctx granularity=$gran refusal=$ref free_end=$endf limit=$limit"
  fi
else
  record vmm-stacks FAIL "build or run failed ($OUT/cc.log, $OUT/vmm-stacks.err)"
fi

# ---- summary (last) ----------------------------------------------------------------------------
failed=0
{
  printf '\n%-22s %-5s %s\n' check result detail
  printf '%-22s %-5s %s\n' ---------------------- ----- ------
  for i in "${!names[@]}"; do
    printf '%-22s %-5s %s\n' "${names[$i]}" "${results[$i]}" "${details[$i]}"
  done
  echo "details: $OUT (all of it packed in $OUT/all.tgz)"
} | tee "$OUT/summary.txt"
for i in "${!names[@]}"; do
  if [ "${results[$i]}" = FAIL ]; then failed=$((failed + 1)); fi
done
exit $((failed > 0))
