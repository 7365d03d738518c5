/// \file
/// Reconciliation: the driver's own memory on a device (contexts, modules, the first use of a
/// pool), measured from NVML's per-process figure and charged as overhead. See shim.hpp.

#include <sched.h>

#include <algorithm>

#include "state_internal.hpp"

namespace gpuslice::shim::detail {

// Context and module memory. The driver takes device memory that no allocation call shows: the
// context (created by the runtime on first use), loaded modules, its own memory for a pool's
// first use in a context, and slack kept by memory pools.
// Method: NVML's per-process figure for this process on the device (usedGpuMemory from
// nvmlDeviceGetComputeRunningProcesses) minus the bytes this process charged through counted
// calls (pool reserves read just before) is that uncounted memory. It is charged to this
// process's slot as "overhead", measured at the first counted call or view on a device with a
// context, at most once per k_reconcile_interval_ns after that, at once after a pool's first
// allocation in a context (measure_now), and again before a reservation is refused (the overhead
// may have shrunk). Overhead that does not fit the limit is held as pending: reservations are
// refused until it fits, since the driver holds that memory whether the ledger can or not.

void state::reconcile_due(device_info& d) noexcept {
  if (d.measured.load(std::memory_order_acquire) <
      d.measure_asked.load(std::memory_order_acquire)) {
    reconcile(d, true, true);
  } else {
    reconcile(d, false);
  }
}

namespace {
/// Longest a reading waits for this process's counted changes in flight to end (a large
/// allocation takes milliseconds on a real driver); past it the reading is tried again later.
constexpr std::uint64_t k_quiet_wait_ns = 50'000'000;
}  // namespace

bool state::quiesce(device_info& d) noexcept {
  d.reading.store(true, std::memory_order_seq_cst);
  const std::uint64_t until = coarse_now_ns() + k_quiet_wait_ns;
  while (d.in_flight.load(std::memory_order_seq_cst) != 0) {
    if (coarse_now_ns() > until) {
      unquiesce(d);
      return false;
    }
    sched_yield();
  }
  return true;
}

void state::unquiesce(device_info& d) noexcept {
  d.reading.store(false, std::memory_order_release);
}

// NVML is read at most once per device per k_reconcile_interval_ns whatever it answers (a figure,
// none, this process not listed, an error): each reading moves the next one an interval on
// before NVML is asked. Earlier readings happen only on events (a context made or torn down, a
// module loaded, a pool's first use, a refusal, at most one per k_retry_interval_ns) and while
// this process is still to be identified, with a delay that doubles up to the interval. No
// counted call reads NVML or looks a symbol up otherwise: its cost is two loads and a compare.
void state::reconcile(device_info& d, bool force, bool wait) noexcept {
  const std::uint64_t now = coarse_now_ns();
  if (!force && now < d.next_reconcile_ns.load(std::memory_order_relaxed)) return;
  // A refusal asks for a reading at once, but a process refused in a loop does not read NVML
  // at every call.
  if (force && !wait &&
      now < d.last_read_ns.load(std::memory_order_relaxed) + k_retry_interval_ns) {
    return;
  }
  if (!load_nvml()) {
    d.next_reconcile_ns.store(~std::uint64_t{0}, std::memory_order_relaxed);
    d.measured.store(d.measure_asked.load(std::memory_order_acquire), std::memory_order_release);
    return;
  }
  std::unique_lock<std::mutex> lock(devices_mu_, std::defer_lock);
  if (wait) {
    lock.lock();
  } else if (!lock.try_lock()) {
    return;  // another thread is reconciling
  }
  // A measurement asked for before this point is answered by a reading taken after it; one
  // that cannot be taken at all (no NVML figure for this process) is answered by giving up.
  const std::uint64_t asked = d.measure_asked.load(std::memory_order_acquire);
  if (wait && d.measured.load(std::memory_order_relaxed) >= asked) return;  // read meanwhile
  const auto answered = [&] { d.measured.store(asked, std::memory_order_release); };
  d.next_reconcile_ns.store(now + k_reconcile_interval_ns, std::memory_order_relaxed);
  d.last_read_ns.store(now, std::memory_order_relaxed);
  try {
    if (nvml_handle(d) == nullptr) {
      d.next_reconcile_ns.store(~std::uint64_t{0}, std::memory_order_relaxed);
      answered();
      log(log_level::warn, "{}: NVML does not know this device; context memory is not counted",
          d.uuid);
      return;
    }
    auto procs = helper_fn<processes_fn>(helper::nvmlDeviceGetComputeRunningProcesses_v3);
    if (procs == nullptr) return answered();
    const int ordinal = static_cast<int>(&d - devices_.data());
    // Nothing this process counts changes while the reading is taken: a reservation charged
    // but not yet made by the driver (a module load during a large cuMemAlloc in another
    // thread) would otherwise be taken for memory the driver gave back.
    if (!quiesce(d)) {
      d.next_reconcile_ns.store(now + k_retry_interval_ns, std::memory_order_relaxed);
      return;
    }
    struct reopen {
      state* s;
      device_info* d;
      ~reopen() { s->unquiesce(*d); }
    } reopen_on_exit{this, &d};
    const auto retry_later = [&] {
      identify_backoff_ns_ = identify_backoff_ns_ == 0
                                 ? k_retry_interval_ns
                                 : std::min(identify_backoff_ns_ * 2, k_reconcile_interval_ns);
      d.next_reconcile_ns.store(now + identify_backoff_ns_, std::memory_order_relaxed);
    };
    if (nvml_pid_.load(std::memory_order_acquire) == 0) {
      const identity id = identify(d, ordinal);
      if (id != identity::known) {
        retry_later();
        if (id == identity::ambiguous && ++identify_attempts_ == k_identify_attempts) {
          log(log_level::warn,
              "cannot tell yet which of NVML's processes is this one (getpid() {}); context "
              "memory is not counted until it can (trying again every {} ms at most)",
              ::getpid(), k_reconcile_interval_ns / 1'000'000);
        }
        return answered();
      }
      identify_backoff_ns_ = 0;
    }
    // Pools give memory back at synchronisations the shim does not see: their reserves are read
    // first, or a charge the driver no longer holds would be taken for counted memory, and the
    // driver's own memory under-charged once that charge went.
    settle_pools(ordinal);
    const auto reading = read_processes(procs, d.nvml);
    if (!reading) return answered();  // NVML failed: the interval tries again
    const std::uint64_t counted = counted_[static_cast<std::size_t>(ordinal)].load();
    // NVML lists a process on a device only while it has a context there: unlisted, this
    // process holds nothing on it (no context yet, or its context was torn down). A context
    // made later asks for a reading itself (context_made).
    const std::optional<std::uint64_t> listed = figure(*reading, nvml_pid());
    std::uint64_t measured = listed.value_or(0);
    if (measured == k_not_available) return answered();  // listed, but NVML knows no figure
    // Quiet, the driver holds at least what this process counted. A reading below that is
    // not this process's: the pid is verified again with the probe, and the figures taken
    // under a wrong pid are dropped.
    if (counted != 0 && measured < counted) {
      const unsigned was = nvml_pid();
      const identity id = identify(d, ordinal);
      if (id != identity::known || nvml_pid() == was) {
        nvml_pid_.store(0, std::memory_order_release);
        log(log_level::warn,
            "{}: NVML's figure for pid {} ({}) is below what this process counts ({}): it is "
            "not this process; identifying again",
            d.uuid, was, human(measured), human(counted));
        drop_overhead(d);
        retry_later();
        return answered();
      }
      const auto again = read_processes(procs, d.nvml);
      if (!again) return answered();
      measured = figure(*again, nvml_pid()).value_or(0);
      if (measured == k_not_available) return answered();
    }
    const std::uint64_t want = uncounted_overhead(measured, counted);
    auto sl = slot();
    if (!sl) return;
    answered();
    if (want > d.overhead) {
      const std::uint64_t more = want - d.overhead;
      if (with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, more); })) {
        d.overhead = want;
        d.pending.store(0, std::memory_order_relaxed);
        log(log_level::debug, "{}: uncounted driver memory now {}", d.uuid, human(want));
      } else if (with_ledger([&](auto& l) { return l.charge_held(*sl, d.index, more); })) {
        // The driver holds it whether or not it fits: charged where the container's other
        // processes see it, so none of them is granted this memory again.
        d.overhead = want;
        d.pending.store(0, std::memory_order_relaxed);
        log(log_level::warn,
            "{}: {} of driver memory (context, modules, pools) does not fit the limit; it is "
            "charged, and allocations on the device are refused until it fits",
            d.uuid, human(more));
      } else {
        if (d.pending.exchange(more, std::memory_order_relaxed) != more) {
          log(log_level::warn,
              "{}: {} of driver memory (context, modules, pools) does not fit the limit; "
              "allocations are refused until it does",
              d.uuid, human(more));
        }
      }
    } else {
      d.pending.store(0, std::memory_order_relaxed);
      if (want < d.overhead) {
        const std::uint64_t less = d.overhead - want;
        with_ledger([&](auto& l) {
          l.release(*sl, d.index, less);
          return 0;
        });
        d.overhead = want;
      }
    }
  } catch (...) {
    // Reconciliation is best effort; the counted calls stay enforced.
  }
}

void state::drop_overhead(device_info& d) noexcept {
  d.pending.store(0, std::memory_order_relaxed);
  if (d.overhead == 0) return;
  if (auto sl = slot()) {
    with_ledger([&](auto& l) {
      l.release(*sl, d.index, d.overhead);
      return 0;
    });
  }
  d.overhead = 0;
}

void state::context_made(int ordinal) noexcept {
  if (ordinal < 0 || ordinal >= gpuslice::k_max_devices) return;
  device_info& d = devices_[static_cast<std::size_t>(ordinal)];
  d.measure_asked.fetch_add(1, std::memory_order_acq_rel);
  d.next_reconcile_ns.store(0, std::memory_order_relaxed);
}

void state::driver_memory_changed(int ordinal) noexcept {
  for (int i = 0; i < device_count_; ++i) {
    if (ordinal < 0 || ordinal == i) {
      devices_[static_cast<std::size_t>(i)].next_reconcile_ns.store(0, std::memory_order_relaxed);
    }
  }
}

void state::context_gone(CUcontext ctx, int ordinal) noexcept {
  if (ctx == nullptr) return;
  try {
    for (alloc_table* t : {&pointers_, &arrays_}) {
      for (const charge& c : t->take_context(ctx)) release(c);
    }
  } catch (...) {
    log(log_level::error, "out of memory while giving back a destroyed context's charges");
  }
  if (ordinal >= 0 && ordinal < device_count_) {
    devices_[static_cast<std::size_t>(ordinal)].next_reconcile_ns.store(0,
                                                                        std::memory_order_relaxed);
    // The driver gave back what it took for its pools in the context: a new one takes it again.
    std::lock_guard<std::mutex> lock(pools_mu_);
    for (auto& [pool, rec] : pools_) {
      if (rec.held.ordinal == ordinal) rec.used = false;
    }
  }
}

// The driver takes memory of its own, outside every pool's reserve, the first time a pool backs
// an allocation in a context: measured on an H200 (driver 580, CUDA 13) as 70 MiB beside a 518
// MiB context at the first cuMemAllocAsync of PyTorch's cudaMallocAsync backend, kept for the
// life of the context. A program that fills its quota within the reconciliation interval would
// otherwise go over the limit by that much before the next reading, so the first allocation
// from each pool in a context measures at once, before its call returns; later ones cost no
// NVML call.
bool state::measure_now(int ordinal, std::uint64_t bytes, const char* call) noexcept {
  if (ordinal < 0 || ordinal >= device_count_) return true;
  device_info& d = devices_[static_cast<std::size_t>(ordinal)];
  if (!d.usable) return true;
  d.measure_asked.fetch_add(1, std::memory_order_acq_rel);
  reconcile(d, true, true);
  // Over the limit (driver memory charged although it did not fit, or held as pending).
  const bool over = with_ledger([&](auto& l) { return l.used(d.index) > l.limit(d.index); });
  if (d.pending.load(std::memory_order_relaxed) == 0 && !over) return true;
  refuse(refusal::over_limit, ordinal, bytes, call);
  return false;
}

}  // namespace gpuslice::shim::detail
