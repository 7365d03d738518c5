/// \file
/// This process's pid in NVML's lists (the host's pid inside a container's pid namespace), found
/// by a probe allocation and verified before any NVML figure is used. See shim.hpp.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "state_internal.hpp"

namespace gpuslice::shim::detail {

// NVML lists host pids, so inside a container's pid namespace getpid() is not NVML's name for
// this process, and may be another process's. identify() finds the name and verifies it before
// any figure is used: see there.
namespace {

/// Processes read per NVML query before growing the buffer.
constexpr unsigned k_nvml_process_batch = 64;
/// Bytes of the probe allocations identify() makes: the first, then the second beside it (two
/// sizes, each a whole number of the driver's 2 MiB granules, so each step is exact).
constexpr std::uint64_t k_identify_probe = std::uint64_t{4} << 20;
constexpr std::uint64_t k_identify_second_probe = std::uint64_t{2} << 20;

}  // namespace

std::optional<process_reading> read_processes(processes_fn procs, nvmlDevice_t dev) {
  std::vector<nvmlProcessInfo_t> infos(k_nvml_process_batch);
  unsigned n = static_cast<unsigned>(infos.size());
  nvmlReturn_t r = procs(dev, &n, infos.data());
  if (r == NVML_ERROR_INSUFFICIENT_SIZE) {
    infos.resize(n + k_nvml_process_batch);  // room for processes that start meanwhile
    n = static_cast<unsigned>(infos.size());
    r = procs(dev, &n, infos.data());
  }
  if (r != NVML_SUCCESS) return std::nullopt;
  process_reading out;
  for (unsigned i = 0; i < n && i < infos.size(); ++i) {
    out.emplace_back(infos[i].pid, infos[i].usedGpuMemory);
  }
  return out;
}

/// \p pid's bytes in \p r, or nullopt when NVML does not list it.
std::optional<std::uint64_t> figure(const process_reading& r, unsigned pid) {
  for (const auto& [p, bytes] : r) {
    if (p == pid) return bytes;
  }
  return std::nullopt;
}

namespace {

/// The outermost pid of this process in /proc/self/status's NSpid line when that line ends with
/// getpid() (the /proc this process sees is consistent with it), and how many levels the line
/// has; {0, 0} otherwise. With the host's /proc (several levels) it is the host's pid; with a
/// container's own /proc (one level) it is getpid() itself, which is only a guess.
struct nspid {
  unsigned outer = 0;
  std::size_t levels = 0;
};
nspid nspid_hint() {
  FILE* f = std::fopen("/proc/self/status", "re");
  if (f == nullptr) return {};
  char line[512];
  std::vector<unsigned long> pids;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "NSpid:", 6) != 0) continue;
    char* at = line + 6;
    for (;;) {
      char* end = nullptr;
      const unsigned long v = std::strtoul(at, &end, 10);
      if (end == at) break;
      pids.push_back(v);
      at = end;
    }
    break;
  }
  std::fclose(f);
  if (pids.empty() || pids.back() != static_cast<unsigned long>(::getpid())) return {};
  return {static_cast<unsigned>(pids.front()), pids.size()};
}

}  // namespace

// How this process's NVML pid is found, in any pid namespace: with a context current on the
// device and no counted change of this process in flight (reconcile() holds them off), two probes
// are allocated one after the other and both freed (reserved in the ledger first, so they never
// exceed the quota; in relaxed capture mode, so they never disturb a capture), with NVML's process
// list read before, after each allocation and after the frees. Only a pid whose figure rose by
// exactly the first probe, then by exactly both, and fell back exactly to where it was can be this
// process: a neighbour that allocates and frees the probe's size at the same moment still fails
// the second step. The NSpid hint (the host's pid, when the host's /proc is visible) is taken if
// it is among those; otherwise the one such pid, if there is exactly one. Anything else is
// ambiguous and tried again later, with backoff: another process's memory is never charged.
// The pid is verified again whenever a reading contradicts this process's counted bytes
// (reconcile()).
state::identity state::identify(device_info& d, int ordinal) noexcept {
  auto procs = helper_fn<processes_fn>(helper::nvmlDeviceGetComputeRunningProcesses_v3);
  auto alloc = real<decltype(&::cuMemAlloc_v2)>(hook::cuMemAlloc_v2);
  auto free_fn = real<decltype(&::cuMemFree_v2)>(hook::cuMemFree_v2);
  int current = -1;
  if (procs == nullptr || alloc == nullptr || free_fn == nullptr ||
      current_device(&current) != CUDA_SUCCESS || current != ordinal) {
    return identity::not_now;  // the probe needs this device's context current
  }
  constexpr std::uint64_t k_both = k_identify_probe + k_identify_second_probe;
  auto sl = slot();
  if (!sl || !with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, k_both); })) {
    return identity::not_now;
  }
  auto exchange = helper_fn<decltype(&::cuThreadExchangeStreamCaptureMode)>(
      helper::cuThreadExchangeStreamCaptureMode);
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  const bool relaxed = exchange != nullptr && exchange(&mode) == CUDA_SUCCESS;
  const auto before = read_processes(procs, d.nvml);
  CUdeviceptr first = 0, second = 0;
  const bool first_made = alloc(&first, k_identify_probe) == CUDA_SUCCESS;
  const auto during_first = read_processes(procs, d.nvml);
  const bool second_made = first_made && alloc(&second, k_identify_second_probe) == CUDA_SUCCESS;
  const auto during_both = read_processes(procs, d.nvml);
  if (second_made) free_fn(second);
  if (first_made) free_fn(first);
  const auto after = read_processes(procs, d.nvml);
  if (relaxed) exchange(&mode);
  with_ledger([&](auto& l) {
    l.release(*sl, d.index, k_both);
    return 0;
  });
  if (!second_made || !before || !during_first || !during_both || !after) {
    return identity::not_now;
  }
  std::vector<unsigned> movers;
  for (const auto& [pid, was] : *before) {
    if (was == k_not_available) continue;
    const auto one = figure(*during_first, pid);
    const auto two = figure(*during_both, pid);
    const auto now = figure(*after, pid);
    if (one && two && now && *one == was + k_identify_probe && *two == was + k_both &&
        *now == was) {
      movers.push_back(pid);
    }
  }
  // The host's pid from NSpid settles a tie between movers; getpid() (a one-level NSpid) never
  // does, since in a pid namespace it may be another process's host pid.
  const nspid hint = nspid_hint();
  const bool hint_moved =
      hint.outer != 0 && std::find(movers.begin(), movers.end(), hint.outer) != movers.end();
  unsigned found = 0;
  if (hint_moved && (hint.levels > 1 || movers.size() == 1)) {
    found = hint.outer;
  } else if (movers.size() == 1) {
    found = movers.front();
  }
  if (found == 0) return identity::ambiguous;
  const unsigned was = nvml_pid_.exchange(found, std::memory_order_acq_rel);
  if (was != found) {
    log(log_level::info, "NVML lists this process as pid {} (getpid() {}), found by {}", found,
        ::getpid(),
        hint_moved && found == hint.outer ? "NSpid and verified" : "a probe allocation");
  }
  return identity::known;
}

nvmlDevice_t state::nvml_handle(device_info& d) noexcept {
  if (d.nvml != nullptr) return d.nvml;
  auto by_uuid =
      helper_fn<decltype(&::nvmlDeviceGetHandleByUUID)>(helper::nvmlDeviceGetHandleByUUID);
  if (by_uuid == nullptr || by_uuid(d.uuid.c_str(), &d.nvml) != NVML_SUCCESS) d.nvml = nullptr;
  return d.nvml;
}

// A process that has no context on a device is not in NVML's list of it; making its first
// context there adds it. A pid that appears across the call is this process's when it is the
// only one (or the NSpid hint's host pid): no probe allocation is needed, so a process that
// starts while the container's quota is full is identified too. Processes that start at the
// same moment make it ambiguous, and the probe is left to do it.
std::optional<process_reading> state::processes_before_context(int ordinal) noexcept {
  if (nvml_pid() != 0 || !load_nvml() || !ensure_devices() || ordinal < 0 ||
      ordinal >= device_count_) {
    return std::nullopt;
  }
  auto procs = helper_fn<processes_fn>(helper::nvmlDeviceGetComputeRunningProcesses_v3);
  if (procs == nullptr) return std::nullopt;
  try {
    std::lock_guard<std::mutex> lock(devices_mu_);
    device_info& d = devices_[static_cast<std::size_t>(ordinal)];
    if (!d.usable || nvml_handle(d) == nullptr) return std::nullopt;
    return read_processes(procs, d.nvml);
  } catch (...) {
    return std::nullopt;
  }
}

void state::context_made_after(int ordinal, const std::optional<process_reading>& before) noexcept {
  context_made(ordinal);
  if (!before || nvml_pid() != 0) return;
  auto procs = helper_fn<processes_fn>(helper::nvmlDeviceGetComputeRunningProcesses_v3);
  try {
    std::lock_guard<std::mutex> lock(devices_mu_);
    device_info& d = devices_[static_cast<std::size_t>(ordinal)];
    if (procs == nullptr || d.nvml == nullptr) return;
    const auto after = read_processes(procs, d.nvml);
    if (!after) return;
    std::vector<unsigned> added;
    for (const auto& [pid, bytes] : *after) {
      if (!figure(*before, pid)) added.push_back(pid);
    }
    const nspid hint = nspid_hint();
    const bool hint_added =
        hint.outer != 0 && std::find(added.begin(), added.end(), hint.outer) != added.end();
    unsigned found = 0;
    if (hint_added && (hint.levels > 1 || added.size() == 1)) {
      found = hint.outer;
    } else if (added.size() == 1) {
      found = added.front();
    }
    unsigned none = 0;
    if (found != 0 && nvml_pid_.compare_exchange_strong(none, found, std::memory_order_acq_rel)) {
      identify_backoff_ns_ = 0;
      log(log_level::info, "NVML lists this process as pid {} (getpid() {}), found by {}", found,
          ::getpid(),
          hint_added && found == hint.outer ? "NSpid and verified as its first context appeared"
                                            : "its first context appearing in NVML's list");
    }
  } catch (...) {
    // The probe identifies the process later.
  }
}

}  // namespace gpuslice::shim::detail
