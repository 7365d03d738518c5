/// \file
/// The shim's state: configuration, the ledger, the devices by UUID, the allocation tables and
/// the accounting rules. See shim.hpp for the contract of each member.

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "shim.hpp"

extern char** environ;

namespace gpuslice::shim::detail {

namespace {

/// Names of the driver libraries, opened at run time (never linked).
constexpr const char* k_libcuda = "libcuda.so.1";
constexpr const char* k_libnvml = "libnvidia-ml.so.1";
/// The ledger of a container whose environment names none (as HAMi's libvgpu.so uses
/// /tmp/cudevshr.cache): every process of the container sees the container's own /tmp.
constexpr const char* k_default_ledger = "/tmp/gpuslice.ledger";
/// Reconciliation with the driver's per-process figure happens at most this often per device.
constexpr std::uint64_t k_reconcile_interval_ns = 1'000'000'000;
/// Processes read per NVML query before growing the buffer.
constexpr unsigned k_nvml_process_batch = 64;
/// Prefixes of the environment variables the configuration may read.
constexpr std::string_view k_env_prefixes[] = {"CUDA_", "GPU_", "ACTIVE_", "LIBCUDA_", "GPUSLICE_"};
/// Group and other write bits a ledger file needs so every user of the container can use it.
constexpr mode_t k_shared_write_bits = S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH;
constexpr double k_mib = 1024.0 * 1024.0;

std::uint64_t coarse_now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  constexpr std::uint64_t k_ns_per_s = 1'000'000'000;
  return static_cast<std::uint64_t>(ts.tv_sec) * k_ns_per_s +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

env_map read_environment() {
  env_map vars;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view kv(*e);
    const auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view name = kv.substr(0, eq);
    for (std::string_view p : k_env_prefixes) {
      if (name.substr(0, p.size()) == p) {
        vars.emplace(std::string(name), std::string(kv.substr(eq + 1)));
        break;
      }
    }
  }
  return vars;
}

std::string human(std::uint64_t bytes) {
  return fmt::format("{:.1f} MiB ({} bytes)", static_cast<double>(bytes) / k_mib, bytes);
}

const char* level_name(log_level l) noexcept {
  switch (l) {
    case log_level::error:
      return "error";
    case log_level::warn:
      return "warning";
    case log_level::info:
      return "info";
    case log_level::debug:
      return "debug";
    case log_level::trace:
      return "trace";
  }
  return "?";
}

void fork_prepare() { state::get().before_fork(); }
void fork_parent() { state::get().after_fork_parent(); }
void fork_child() { state::get().after_fork_child(); }

}  // namespace

thread_local bool reentry_guard::held_ = false;

std::string format_uuid(const CUuuid& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  return fmt::format(
      "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-"
      "{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
      b[15]);
}

// ---- alloc_table ---------------------------------------------------------------------------

std::optional<charge> alloc_table::insert(std::uint64_t key, const charge& c) {
  shard& s = pick(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto [it, fresh] = s.map.try_emplace(key, c);
  if (fresh) return std::nullopt;
  const charge displaced = it->second;
  it->second = c;
  return displaced;
}

std::optional<charge> alloc_table::take(std::uint64_t key) noexcept {
  shard& s = pick(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return std::nullopt;
  charge c = it->second;
  s.map.erase(it);
  return c;
}

std::vector<charge> alloc_table::take_context(CUcontext ctx) {
  std::vector<charge> out;
  for (shard& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mu);
    for (auto it = s.map.begin(); it != s.map.end();) {
      if (it->second.ctx == ctx) {
        out.push_back(it->second);
        it = s.map.erase(it);
      } else {
        ++it;
      }
    }
  }
  return out;
}

void alloc_table::lock_all() noexcept {
  for (shard& s : shards_) s.mu.lock();
}

void alloc_table::unlock_all() noexcept {
  for (shard& s : shards_) s.mu.unlock();
}

void alloc_table::reset_in_child() noexcept {
  for (shard& s : shards_) {
    s.map.clear();
    s.mu.unlock();
  }
}

// ---- state: initialisation -------------------------------------------------------------------

state& state::get() noexcept {
  // Created on first use by a hook, never by a constructor during preload. Never destroyed:
  // hooks may run from other libraries' destructors at exit.
  static state* const instance = [] {
    auto* s = new state;
    s->init();
    return s;
  }();
  return *instance;
}

void state::init() noexcept {
  try {
    auto cfg = parse_config(read_environment());
    if (cfg) {
      config_ = *cfg;
      log_level_.store(static_cast<int>(config_.log), std::memory_order_relaxed);
    } else {
      config_error_ = cfg.message();
    }
  } catch (...) {
    config_error_ = "the environment could not be read (out of memory)";
  }
  if (!config_error_.empty()) {
    log(log_level::error, "invalid configuration, failing closed (every allocation is refused): {}",
        config_error_);
  }

  libcuda_ = dlopen(k_libcuda, RTLD_NOW | RTLD_LOCAL);
  if (libcuda_ == nullptr) {
    const char* why = dlerror();
    log(log_level::info, "cannot open the CUDA driver {}: {}", k_libcuda, why ? why : "unknown");
  } else {
    for (int i = 0; i < k_hook_count; ++i) {
      if (k_hooks[i].lib == library::cuda) real_[i] = real_dlsym(libcuda_, k_hooks[i].symbol);
    }
#define GPUSLICE_X(sym, lib, type)                                        \
  if (library::lib == library::cuda) {                                    \
    helpers_[static_cast<int>(helper::sym)] = real_dlsym(libcuda_, #sym); \
  }
    GPUSLICE_HELPERS(GPUSLICE_X)
#undef GPUSLICE_X
  }

  if (config_error_.empty()) {
    try {
      // Never a ledger per process: without a path the container's processes share the
      // default one, and a ledger that cannot be opened fails closed.
      const bool named = !config_.shared_cache.empty();
      const std::string path = named ? config_.shared_cache : std::string(k_default_ledger);
      ledger_path_ = path;
      if (!named) {
        log(log_level::info, "{} is not set: the container's processes share the ledger {}",
            env::shared_cache, path);
      }
      auto opened = memory::shared_ledger::open(memory::open_or_create, path);
      if (opened) {
        shared_.emplace(std::move(*opened));
        // The ledger asks for mode 0666 but the umask trims it; the owner widens it so every
        // user of the container can open it (only the owner may, and only its own file).
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && st.st_uid == ::geteuid() &&
            (st.st_mode & k_shared_write_bits) != k_shared_write_bits) {
          ::chmod(path.c_str(), (st.st_mode & 07777) | k_shared_write_bits);
        }
      } else if (named) {
        ledger_error_ = fmt::format("{}={}: {}", env::shared_cache, path, opened.message());
      } else {
        ledger_error_ = fmt::format("{} is not set and the default ledger {} cannot be used: {}",
                                    env::shared_cache, path, opened.message());
      }
    } catch (...) {
      ledger_error_ = "the ledger could not be created (out of memory)";
    }
    if (!ledger_error_.empty()) {
      log(log_level::error, "unusable ledger, failing closed (every allocation is refused): {}",
          ledger_error_);
    }
  }
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

bool state::load_nvml() noexcept {
  std::call_once(nvml_once_, [this] {
    libnvml_ = dlopen(k_libnvml, RTLD_NOW | RTLD_LOCAL);
    if (libnvml_ == nullptr) {
      const char* why = dlerror();
      log(log_level::info, "cannot open NVML {}: {}; context memory is not reconciled", k_libnvml,
          why ? why : "unknown");
      return;
    }
    for (int i = 0; i < k_hook_count; ++i) {
      if (k_hooks[i].lib == library::nvml) real_[i] = real_dlsym(libnvml_, k_hooks[i].symbol);
    }
#define GPUSLICE_X(sym, lib, type)                                        \
  if (library::lib == library::nvml) {                                    \
    helpers_[static_cast<int>(helper::sym)] = real_dlsym(libnvml_, #sym); \
  }
    GPUSLICE_HELPERS(GPUSLICE_X)
#undef GPUSLICE_X
    auto init = helper_fn<decltype(&::nvmlInit_v2)>(helper::nvmlInit_v2);
    nvml_ok_ = init != nullptr && init() == NVML_SUCCESS;
  });
  return nvml_ok_;
}

const hook_entry* state::entry_for_real(void* fn) const noexcept {
  if (fn == nullptr) return nullptr;
  for (int i = 0; i < k_hook_count; ++i) {
    if (real_[i] == fn) return &k_hooks[i];
  }
  return nullptr;
}

bool state::ensure_devices() noexcept {
  if (devices_ready_.load(std::memory_order_acquire)) return true;
  std::lock_guard<std::mutex> lock(devices_mu_);
  if (devices_ready_.load(std::memory_order_relaxed)) return true;
  auto cu_init = helper_fn<decltype(&::cuInit)>(helper::cuInit);
  auto get_count = helper_fn<decltype(&::cuDeviceGetCount)>(helper::cuDeviceGetCount);
  auto get_device = helper_fn<decltype(&::cuDeviceGet)>(helper::cuDeviceGet);
  auto get_uuid = helper_fn<decltype(&::cuDeviceGetUuid_v2)>(helper::cuDeviceGetUuid_v2);
  auto total_mem = real<decltype(&::cuDeviceTotalMem_v2)>(hook::cuDeviceTotalMem_v2);
  int count = 0;
  if (cu_init == nullptr || get_count == nullptr || get_device == nullptr || get_uuid == nullptr ||
      total_mem == nullptr || cu_init(0) != CUDA_SUCCESS || get_count(&count) != CUDA_SUCCESS) {
    log(log_level::warn, "the CUDA driver lists no devices; allocations are refused");
    devices_ready_.store(true, std::memory_order_release);
    return false;
  }
  if (count > gpuslice::k_max_devices) {
    log(log_level::warn, "{} devices visible; only the first {} can be used under the shim", count,
        gpuslice::k_max_devices);
    count = gpuslice::k_max_devices;
  }
  for (int i = 0; i < count; ++i) {
    device_info& d = devices_[static_cast<std::size_t>(i)];
    CUdevice dev = 0;
    CUuuid uuid{};
    std::size_t total = 0;
    if (get_device(&dev, i) != CUDA_SUCCESS || get_uuid(&uuid, dev) != CUDA_SUCCESS ||
        total_mem(&total, dev) != CUDA_SUCCESS) {
      log(log_level::error, "device {}: the driver did not report its UUID and memory", i);
      continue;
    }
    try {
      d.uuid = format_uuid(uuid);
      // cuDeviceGetUuid_v2 gives a MIG device's own UUID, which NVML spells "MIG-...": the
      // ledger keys the device by NVML's spelling so NVML's views find it.
      const bool nvml = load_nvml();
      auto by_uuid =
          helper_fn<decltype(&::nvmlDeviceGetHandleByUUID)>(helper::nvmlDeviceGetHandleByUUID);
      nvmlDevice_t h = nullptr;
      if (nvml && by_uuid != nullptr && by_uuid(d.uuid.c_str(), &h) != NVML_SUCCESS) {
        std::string mig = "MIG-" + d.uuid.substr(4);
        if (by_uuid(mig.c_str(), &h) == NVML_SUCCESS) d.uuid = std::move(mig);
      }
    } catch (...) {
      continue;
    }
    d.card_total = total;
    if (!config_error_.empty()) continue;
    const memory_limit& lim = config_.memory[static_cast<std::size_t>(i)];
    // CUDA_OVERSUBSCRIBE lets a byte limit exceed the card; otherwise no limit exceeds it.
    d.limit = config_.oversubscribe && lim.type == memory_limit::kind::bytes ? lim.bytes
                                                                             : lim.resolve(total);
    if (!ledger_error_.empty()) continue;
    try {
      // A device already in the ledger keeps the limits stored there: the first process of
      // the container stored its environment's, and `gpuslice set-limit` may have changed them
      // since; a later process must not undo that change.
      const bool known = with_ledger([&](auto& l) { return l.find_device(d.uuid).ok(); });
      auto idx = with_ledger([&](auto& l) { return l.device(d.uuid, d.limit); });
      if (!idx) {
        log(log_level::error, "device {} ({}): {}; its allocations are refused", i, d.uuid,
            idx.message());
        continue;
      }
      d.index = *idx;
      with_ledger([&](auto& l) {
        const std::uint64_t stored = l.limit(d.index);
        if (known && stored != d.limit) {
          log(log_level::info,
              "device {} ({}): the ledger's limit {} applies, not {} from the "
              "environment (set by another process or gpuslice set-limit)",
              i, d.uuid, human(stored), human(d.limit));
        }
        // The SM share: 0 in the ledger means unset; the environment's cap is stored then.
        const std::uint32_t sm = config_.sm_percent[static_cast<std::size_t>(i)];
        if (l.sm_limit(d.index) == 0 && sm != 0) l.set_sm_limit(d.index, sm);
        return 0;
      });
      d.usable = true;
      log(log_level::info, "device {} ({}): limit {}, ledger index {}", i, d.uuid, human(d.limit),
          d.index);
    } catch (...) {
      log(log_level::error, "device {}: out of memory while registering it", i);
    }
  }
  device_count_ = count;
  devices_ready_.store(true, std::memory_order_release);
  return true;
}

std::optional<memory::slot_handle> state::slot() noexcept {
  if (attached_.load(std::memory_order_acquire)) return slot_;
  std::lock_guard<std::mutex> lock(slot_mu_);
  if (attached_.load(std::memory_order_relaxed)) return slot_;
  try {
    auto r = with_ledger([](auto& l) { return l.attach(); });
    if (!r) {
      log(log_level::error, "cannot take a slot in the ledger: {}", r.message());
      return std::nullopt;
    }
    slot_ = *r;
  } catch (...) {
    return std::nullopt;
  }
  attached_.store(true, std::memory_order_release);
  return slot_;
}

// ---- accounting ----------------------------------------------------------------------------

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
//
// NVML lists host pids, so inside a container's pid namespace getpid() is not NVML's name for
// this process, and may be another process's. identify() finds the name and verifies it before
// any figure is used: see there.
namespace {

/// Bytes of the probe allocation identify() makes.
constexpr std::uint64_t k_identify_probe = std::uint64_t{4} << 20;
/// Probes made before giving up (each one only when NVML's readings were ambiguous).
constexpr int k_identify_attempts = 8;
/// Delay before the next attempt while this process is not identified or not yet listed.
constexpr std::uint64_t k_retry_interval_ns = 20'000'000;

/// One reading of NVML's compute processes of a device: (pid, bytes), bytes k_not_available
/// where NVML does not know the figure (some MIG and container setups).
using process_reading = std::vector<std::pair<unsigned, std::uint64_t>>;
using processes_fn = decltype(&::nvmlDeviceGetComputeRunningProcesses_v3);
constexpr std::uint64_t k_not_available = static_cast<unsigned long long>(NVML_VALUE_NOT_AVAILABLE);

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
// device, a probe of k_identify_probe bytes is allocated and freed (reserved in the ledger first,
// so it never exceeds the quota; in relaxed capture mode, so it never disturbs a capture), with
// NVML's process list read before, during and after. Only a pid whose figure rose by the probe
// and fell back by it can be this process. The NSpid hint (the host's pid, when the host's /proc
// is visible) is taken if it is among those; otherwise the one such pid, if there is exactly one.
// Anything else (another process allocated and freed the same amount at the same moment) is
// ambiguous and tried again later: another process's memory is never charged.
state::identity state::identify(device_info& d, int ordinal) noexcept {
  auto procs = helper_fn<processes_fn>(helper::nvmlDeviceGetComputeRunningProcesses_v3);
  auto alloc = real<decltype(&::cuMemAlloc_v2)>(hook::cuMemAlloc_v2);
  auto free_fn = real<decltype(&::cuMemFree_v2)>(hook::cuMemFree_v2);
  int current = -1;
  if (procs == nullptr || alloc == nullptr || free_fn == nullptr ||
      current_device(&current) != CUDA_SUCCESS || current != ordinal) {
    return identity::not_now;  // the probe needs this device's context current
  }
  auto sl = slot();
  if (!sl || !with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, k_identify_probe); })) {
    return identity::not_now;
  }
  // Looked up here, not in the helper table: identify() runs a few times per process at most.
  auto exchange = reinterpret_cast<decltype(&::cuThreadExchangeStreamCaptureMode)>(
      libcuda_ == nullptr ? nullptr : real_dlsym(libcuda_, "cuThreadExchangeStreamCaptureMode"));
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  const bool relaxed = exchange != nullptr && exchange(&mode) == CUDA_SUCCESS;
  const auto before = read_processes(procs, d.nvml);
  CUdeviceptr probe = 0;
  const bool allocated = alloc(&probe, k_identify_probe) == CUDA_SUCCESS;
  const auto during = read_processes(procs, d.nvml);
  if (allocated) free_fn(probe);
  const auto after = read_processes(procs, d.nvml);
  if (relaxed) exchange(&mode);
  with_ledger([&](auto& l) {
    l.release(*sl, d.index, k_identify_probe);
    return 0;
  });
  if (!allocated || !before || !during || !after) return identity::not_now;
  std::vector<unsigned> movers;
  for (const auto& [pid, bytes] : *during) {
    if (bytes == k_not_available) continue;
    const std::uint64_t was = figure(*before, pid).value_or(0);
    const std::uint64_t now = figure(*after, pid).value_or(0);
    if (was == k_not_available || now == k_not_available) continue;
    if (bytes >= was + k_identify_probe && bytes >= now + k_identify_probe) movers.push_back(pid);
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
  nvml_pid_.store(found, std::memory_order_release);
  log(log_level::info, "NVML lists this process as pid {} (getpid() {}), found by {}", found,
      ::getpid(), hint_moved && found == hint.outer ? "NSpid and verified" : "a probe allocation");
  return identity::known;
}

void state::reconcile_due(device_info& d) noexcept {
  if (d.measured.load(std::memory_order_acquire) <
      d.measure_asked.load(std::memory_order_acquire)) {
    reconcile(d, true, true);
  } else {
    reconcile(d, false);
  }
}

void state::reconcile(device_info& d, bool force, bool wait) noexcept {
  const std::uint64_t now = coarse_now_ns();
  if (!force && now < d.next_reconcile_ns.load(std::memory_order_relaxed)) return;
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
  try {
    if (d.nvml == nullptr) {
      auto by_uuid =
          helper_fn<decltype(&::nvmlDeviceGetHandleByUUID)>(helper::nvmlDeviceGetHandleByUUID);
      if (by_uuid == nullptr || by_uuid(d.uuid.c_str(), &d.nvml) != NVML_SUCCESS) {
        d.nvml = nullptr;
        d.next_reconcile_ns.store(~std::uint64_t{0}, std::memory_order_relaxed);
        answered();
        log(log_level::warn, "{}: NVML does not know this device; context memory is not counted",
            d.uuid);
        return;
      }
    }
    auto procs = helper_fn<processes_fn>(helper::nvmlDeviceGetComputeRunningProcesses_v3);
    if (procs == nullptr) return answered();
    const int ordinal = static_cast<int>(&d - devices_.data());
    if (nvml_pid_.load(std::memory_order_acquire) == 0) {
      if (identify_attempts_ >= k_identify_attempts) return answered();
      const identity id = identify(d, ordinal);
      if (id != identity::known) {
        d.next_reconcile_ns.store(now + k_retry_interval_ns, std::memory_order_relaxed);
        if (id == identity::ambiguous && ++identify_attempts_ == k_identify_attempts) {
          log(log_level::warn,
              "cannot tell which of NVML's processes is this one (getpid() {}); context memory "
              "is not counted",
              ::getpid());
        }
        return;
      }
    }
    // Pools give memory back at synchronisations the shim does not see: their reserves are read
    // first, or a charge the driver no longer holds would be taken for counted memory, and the
    // driver's own memory under-charged once that charge went.
    settle_pools(ordinal);
    // A reading is used only if no counted charge changed while it was taken: the counted bytes
    // never lag what the driver holds (charged before an allocation, given back after a free),
    // so a quiet reading never takes another thread's allocation for driver memory.
    auto& churn = churn_[static_cast<std::size_t>(ordinal)];
    const std::uint64_t churn_before = churn.load(std::memory_order_acquire);
    const auto reading = read_processes(procs, d.nvml);
    if (!reading) return answered();  // NVML failed: the interval tries again
    const std::uint64_t counted = counted_[static_cast<std::size_t>(ordinal)].load();
    if (churn.load(std::memory_order_acquire) != churn_before) {
      d.next_reconcile_ns.store(now + k_retry_interval_ns, std::memory_order_relaxed);
      return;
    }
    // NVML lists a process on a device only while it has a context there: unlisted, this
    // process holds nothing on it (no context yet, or its context was torn down).
    const std::optional<std::uint64_t> measured = figure(*reading, nvml_pid()).value_or(0);
    if (*measured == k_not_available) return answered();  // listed, but NVML knows no figure
    // Without a context here, look again at the next call: a context created meanwhile counts
    // from its creation on, not from the next interval. (Unlisted while holding counted memory
    // is NVML lagging: look again shortly, not at every call.)
    if (*measured == 0) {
      d.next_reconcile_ns.store(counted != 0 ? now + k_retry_interval_ns : 0,
                                std::memory_order_relaxed);
    }
    const std::uint64_t want = uncounted_overhead(*measured, counted);
    auto sl = slot();
    if (!sl) return;
    answered();
    if (want > d.overhead) {
      const std::uint64_t more = want - d.overhead;
      if (with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, more); })) {
        d.overhead = want;
        d.pending.store(0, std::memory_order_relaxed);
        log(log_level::debug, "{}: uncounted driver memory now {}", d.uuid, human(want));
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

bool state::reserve(int ordinal, std::uint64_t bytes, const char* call, charge& out) noexcept {
  if (!config_error_.empty()) return refuse(refusal::config, ordinal, bytes, call), false;
  if (!ledger_error_.empty()) return refuse(refusal::ledger, ordinal, bytes, call), false;
  ensure_devices();
  if (ordinal < 0 || ordinal >= device_count_ ||
      !devices_[static_cast<std::size_t>(ordinal)].usable) {
    return refuse(refusal::device, ordinal, bytes, call), false;
  }
  device_info& d = devices_[static_cast<std::size_t>(ordinal)];
  auto sl = slot();
  if (!sl) return refuse(refusal::ledger, ordinal, bytes, call), false;
  // Pools keep freed memory up to their release threshold, and the graph allocator what graphs
  // reserved (kept after their frees): this process's is given back before a refusal.
  auto trim_driver_caches = [&] {
    trim_pools(ordinal);
    auto graph_trim = real<decltype(&::cuDeviceGraphMemTrim)>(hook::cuDeviceGraphMemTrim);
    if (graph_trim != nullptr && graph_trim(ordinal) == CUDA_SUCCESS) reconcile(d, true);
  };
  reconcile_due(d);
  if (d.pending.load(std::memory_order_relaxed) != 0) {
    reconcile(d, true);
    if (d.pending.load(std::memory_order_relaxed) != 0) trim_driver_caches();
    if (d.pending.load(std::memory_order_relaxed) != 0) {
      return refuse(refusal::over_limit, ordinal, bytes, call), false;
    }
  }
  auto attempt = [&] {
    // The ledger's limit is the one in force: `gpuslice set-limit` changes it in a running
    // container (a tenant that can write the file could as well forge its use, so taking the
    // limit from the environment here would protect nothing).
    return with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, bytes); });
  };
  bool ok = attempt();
  if (!ok) {
    reconcile(d, true);
    ok = attempt();
  }
  if (!ok) {
    trim_driver_caches();
    ok = attempt();
  }
  if (!ok) return refuse(refusal::over_limit, ordinal, bytes, call), false;
  counted_[static_cast<std::size_t>(ordinal)].fetch_add(bytes, std::memory_order_relaxed);
  churn_[static_cast<std::size_t>(ordinal)].fetch_add(1, std::memory_order_release);
  out = charge{ordinal, d.index, bytes};
  return true;
}

bool state::reserve_more(charge& c, std::uint64_t more, const char* call) noexcept {
  if (more == 0) return true;
  auto sl = slot();
  if (!sl) return refuse(refusal::ledger, c.ordinal, more, call), false;
  if (!with_ledger([&](auto& l) { return l.try_reserve(*sl, c.index, more); })) {
    return refuse(refusal::over_limit, c.ordinal, more, call), false;
  }
  counted_[static_cast<std::size_t>(c.ordinal)].fetch_add(more, std::memory_order_relaxed);
  churn_[static_cast<std::size_t>(c.ordinal)].fetch_add(1, std::memory_order_release);
  c.bytes += more;
  return true;
}

void state::release(const charge& c) noexcept { release(c, c.bytes); }

void state::release(const charge& c, std::uint64_t bytes) noexcept {
  if (bytes == 0 || c.index < 0) return;
  auto sl = slot();
  if (!sl) return;
  with_ledger([&](auto& l) {
    l.release(*sl, c.index, bytes);
    return 0;
  });
  counted_[static_cast<std::size_t>(c.ordinal)].fetch_sub(bytes, std::memory_order_relaxed);
  churn_[static_cast<std::size_t>(c.ordinal)].fetch_add(1, std::memory_order_release);
}

void state::refuse(refusal why, int ordinal, std::uint64_t bytes, const char* call) noexcept {
  switch (why) {
    case refusal::none:
      return;
    case refusal::config:
      log(log_level::error, "{}: {} refused on device {}: invalid configuration: {}", call,
          human(bytes), ordinal, config_error_);
      return;
    case refusal::ledger:
      log(log_level::error, "{}: {} refused on device {}: unusable ledger: {}", call, human(bytes),
          ordinal, ledger_error_.empty() ? "no process slot" : ledger_error_);
      return;
    case refusal::device:
      log(log_level::error, "{}: {} refused on device {}: the device is not registered", call,
          human(bytes), ordinal);
      return;
    case refusal::over_limit:
      break;
  }
  // Not over the limit but refused by the ledger itself: say why, and never OOM-kill for it.
  if (!with_ledger([](auto& l) { return l.usable(); })) {
    log(log_level::error, "{}: {} refused on device {}: ledger {}", call, human(bytes), ordinal,
        memory::detail::k_corrupted_advice);
    return;
  }
  if (attached_.load(std::memory_order_acquire) &&
      !with_ledger([&](auto& l) { return l.slot_current(slot_); })) {
    log(log_level::error,
        "{}: {} refused on device {}: this process's ledger slot was reclaimed (it was taken "
        "for dead), so what it holds is no longer counted; failing closed",
        call, human(bytes), ordinal);
    return;
  }
  const device_info& d = devices_[static_cast<std::size_t>(ordinal)];
  const std::uint64_t used = with_ledger([&](auto& l) { return l.used(d.index); });
  log(log_level::warn, "{}: device {} ({}): request {} refused: {} in use of limit {}", call,
      ordinal, d.uuid, human(bytes), human(used),
      human(with_ledger([&](auto& l) { return l.limit(d.index); })));
  if (config_.active_oom_killer) {
    log(log_level::error, "{}=true: ending process {} for exceeding the memory limit of device {}",
        env::oom_killer, ::getpid(), ordinal);
    ::kill(::getpid(), SIGKILL);
  }
}

// ---- stream-ordered pools -------------------------------------------------------------------

// A pool holds device memory beyond its live allocations: what they freed, up to its release
// threshold, until a synchronisation or a trim (the CUDA headers: "When more than the release
// threshold bytes of memory are held by the memory pool, the allocator will try to release
// memory back to the OS on the next call to stream, event or context synchronize"). So a pool
// is charged at its reserve (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), read after each allocation
// from it and at each view, never at the sizes of its allocations; a free gives nothing back
// until the reserve shrinks. Pools located on the host take no device memory and are never
// charged. Precondition of settle_locked: pools_mu_ held.
void state::settle_locked(CUmemoryPool pool, pool_record& rec) noexcept {
  if (rec.host || rec.destroyed || rec.held.index < 0) return;
  auto get = helper_fn<decltype(&::cuMemPoolGetAttribute)>(helper::cuMemPoolGetAttribute);
  cuuint64_t reserved = 0;
  if (get == nullptr ||
      get(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS) {
    return;
  }
  if (reserved < rec.held.bytes) {
    const std::uint64_t less = rec.held.bytes - reserved;
    release(rec.held, less);
    rec.held.bytes -= less;
  }
}

void state::settle_pools(int ordinal) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  for (auto& [pool, rec] : pools_) {
    if (rec.held.ordinal == ordinal) settle_locked(pool, rec);
  }
}

void state::pool_created(CUmemoryPool pool, const CUmemPoolProps& props) noexcept {
  const CUmemLocationType where = props.location.type;
  try {
    std::lock_guard<std::mutex> lock(pools_mu_);
    auto it = pools_.find(pool);
    if (it != pools_.end()) {
      // The handle of a pool the driver has since freed: its charge is no longer held.
      release(it->second.held);
      pools_.erase(it);
    }
    pool_record rec;
    rec.host = where != CU_MEM_LOCATION_TYPE_DEVICE;
    rec.held.ordinal = rec.host ? -1 : props.location.id;
    pools_.emplace(pool, rec);
  } catch (...) {
    // Unrecorded: charged as a device pool of the allocating stream's device.
  }
}

void state::pool_destroyed(CUmemoryPool pool) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  if (it == pools_.end()) return;
  pool_record& rec = it->second;
  // The driver frees the idle reserve now and the rest as the allocations are freed.
  if (rec.held.bytes > rec.live) {
    release(rec.held, rec.held.bytes - rec.live);
    rec.held.bytes = rec.live;
  }
  rec.destroyed = true;
  if (rec.live == 0) pools_.erase(it);
}

bool state::pool_on_host(CUmemoryPool pool) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  return it != pools_.end() && it->second.host;
}

int state::pool_ordinal(CUmemoryPool pool) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  return it == pools_.end() || it->second.host ? -1 : it->second.held.ordinal;
}

bool state::settle_pool(CUmemoryPool pool, std::uint64_t bytes, charge& inflight,
                        bool& first_use) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  pool_record* rec = nullptr;
  try {
    rec = &pools_[pool];
  } catch (...) {
    return false;
  }
  first_use = !rec->used;
  rec->used = true;
  rec->held.ordinal = inflight.ordinal;
  rec->held.index = inflight.index;
  auto get = helper_fn<decltype(&::cuMemPoolGetAttribute)>(helper::cuMemPoolGetAttribute);
  cuuint64_t reserved = 0;
  if (get == nullptr ||
      get(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS) {
    reserved = rec->held.bytes + bytes;  // unknown: assume the pool grew by the allocation
  }
  rec->live += bytes;
  bool ok = true;
  if (reserved > rec->held.bytes) {
    const std::uint64_t growth = reserved - rec->held.bytes;
    const std::uint64_t from_inflight = std::min(growth, inflight.bytes);
    inflight.bytes -= from_inflight;
    rec->held.bytes += from_inflight;
    if (growth > from_inflight)
      ok = reserve_more(rec->held, growth - from_inflight, "pool reserve");
  } else if (reserved < rec->held.bytes) {
    const std::uint64_t less = rec->held.bytes - reserved;
    release(rec->held, less);
    rec->held.bytes -= less;
  }
  release(inflight);
  inflight.bytes = 0;
  return ok;
}

void state::pool_freed(const charge& c) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(c.pool);
  if (it == pools_.end()) return;
  pool_record& rec = it->second;
  rec.live -= std::min(rec.live, c.bytes);
  if (rec.destroyed) {
    const std::uint64_t back = std::min(rec.held.bytes, c.bytes);
    release(rec.held, back);
    rec.held.bytes -= back;
    if (rec.live == 0) pools_.erase(it);
    return;
  }
  settle_locked(c.pool, rec);
}

void state::trim_pools(int ordinal) noexcept {
  auto trim = helper_fn<decltype(&::cuMemPoolTrimTo)>(helper::cuMemPoolTrimTo);
  if (trim == nullptr) return;
  std::lock_guard<std::mutex> lock(pools_mu_);
  for (auto& [pool, rec] : pools_) {
    if (rec.host || rec.destroyed || rec.held.ordinal != ordinal || rec.held.bytes == 0) continue;
    if (trim(pool, 0) == CUDA_SUCCESS) settle_locked(pool, rec);
  }
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
  if (d.pending.load(std::memory_order_relaxed) == 0) return true;
  refuse(refusal::over_limit, ordinal, bytes, call);
  return false;
}

// ---- VMM ---------------------------------------------------------------------------------

// cuMemRelease documents that "the memory allocation will be freed when all outstanding mappings
// to the memory are unmapped and when all outstanding references to the handle ... are also
// released", so a charged handle keeps its charge until both hold (NVIDIA's vectorAddMMAP
// releases its handles right after mapping them).
void state::vmm_created(CUmemGenericAllocationHandle h) noexcept {
  try {
    std::lock_guard<std::mutex> lock(vmm_mu_);
    vmm_[h] = vmm_record{};
  } catch (...) {
    // Unfollowed: the charge is given back at cuMemRelease, as before mappings were followed.
  }
}

void state::vmm_retained(CUmemGenericAllocationHandle h) noexcept {
  std::lock_guard<std::mutex> lock(vmm_mu_);
  auto it = vmm_.find(h);
  if (it != vmm_.end()) ++it->second.refs;
}

bool state::vmm_released(CUmemGenericAllocationHandle h) noexcept {
  std::lock_guard<std::mutex> lock(vmm_mu_);
  auto it = vmm_.find(h);
  if (it == vmm_.end()) return true;
  if (--it->second.refs > 0 || it->second.maps > 0) return false;
  vmm_.erase(it);
  return true;
}

void state::vmm_mapped(CUdeviceptr at, std::size_t size, CUmemGenericAllocationHandle h) noexcept {
  try {
    std::lock_guard<std::mutex> lock(vmm_mu_);
    auto it = vmm_.find(h);
    if (it == vmm_.end()) return;
    vmm_maps_[at] = {size, h};
    ++it->second.maps;
  } catch (...) {
  }
}

std::vector<CUmemGenericAllocationHandle> state::vmm_unmapped(CUdeviceptr at,
                                                              std::size_t size) noexcept {
  std::vector<CUmemGenericAllocationHandle> freed;
  try {
    std::lock_guard<std::mutex> lock(vmm_mu_);
    for (auto m = vmm_maps_.lower_bound(at); m != vmm_maps_.end() && m->first < at + size;) {
      const CUmemGenericAllocationHandle h = m->second.second;
      m = vmm_maps_.erase(m);
      auto it = vmm_.find(h);
      if (it == vmm_.end()) continue;
      if (--it->second.maps == 0 && it->second.refs == 0) {
        vmm_.erase(it);
        freed.push_back(h);
      }
    }
  } catch (...) {
  }
  return freed;
}

CUresult state::current_device(int* ordinal) noexcept {
  auto get = helper_fn<decltype(&::cuCtxGetDevice)>(helper::cuCtxGetDevice);
  if (get == nullptr) return CUDA_ERROR_NOT_FOUND;
  CUdevice dev = 0;
  const CUresult r = get(&dev);
  if (r == CUDA_SUCCESS) *ordinal = dev;
  return r;
}

CUresult state::stream_device(CUstream stream, int* ordinal) noexcept {
  auto get = helper_fn<decltype(&::cuStreamGetDevice)>(helper::cuStreamGetDevice);
  if (get == nullptr) return current_device(ordinal);
  CUdevice dev = 0;
  const CUresult r = get(stream, &dev);
  if (r == CUDA_SUCCESS) *ordinal = dev;
  return r;
}

std::optional<memory_view> state::cuda_view(int ordinal, std::uint64_t card_total,
                                            std::uint64_t card_free) noexcept {
  if (!config_error_.empty() || !ledger_error_.empty()) return closed_view(card_total);
  ensure_devices();
  if (ordinal < 0 || ordinal >= device_count_) return std::nullopt;
  device_info& d = devices_[static_cast<std::size_t>(ordinal)];
  if (!d.usable) return closed_view(card_total);
  // Pools release memory at synchronisations the shim does not see: their reserves are read, and
  // the context's memory shows before the first allocation.
  settle_pools(ordinal);
  reconcile_due(d);
  const std::uint64_t used = with_ledger([&](auto& l) { return l.used(d.index); }) +
                             d.pending.load(std::memory_order_relaxed);
  const std::uint64_t limit = with_ledger([&](auto& l) { return l.limit(d.index); });
  return make_view(limit, used, card_total, card_free);
}

std::optional<memory_view> state::nvml_view(nvmlDevice_t dev, std::uint64_t card_total,
                                            std::uint64_t card_free) noexcept {
  auto get_uuid = helper_fn<decltype(&::nvmlDeviceGetUUID)>(helper::nvmlDeviceGetUUID);
  char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE] = {};
  if (get_uuid == nullptr || get_uuid(dev, uuid, sizeof uuid) != NVML_SUCCESS) return std::nullopt;
  if (!devices_ready_.load(std::memory_order_acquire)) {
    // NVML alone (nvidia-smi, a launcher that forks CUDA workers) must not initialise CUDA: a
    // driver that answers "not initialised" is left so.
    auto get_count = helper_fn<decltype(&::cuDeviceGetCount)>(helper::cuDeviceGetCount);
    int n = 0;
    if (get_count == nullptr || get_count(&n) == CUDA_ERROR_NOT_INITIALIZED) {
      try {
        return nvml_only_view(uuid, card_total, card_free);
      } catch (...) {
        return closed_view(card_total);
      }
    }
  }
  ensure_devices();
  for (int i = 0; i < device_count_; ++i) {
    if (devices_[static_cast<std::size_t>(i)].uuid == uuid) {
      return cuda_view(i, card_total, card_free);
    }
  }
  return std::nullopt;  // not visible to this container's CUDA: the driver's figures stand
}

// Before CUDA is initialised the shim cannot map NVML's devices to CUDA ordinals, so the view is
// the ledger's record of the UUID (registered by any process of the container that used CUDA).
// A device the ledger does not know yet is registered here when one limit applies to every
// ordinal; with per-ordinal limits the view fails closed (the card's size, nothing free).
std::optional<memory_view> state::nvml_only_view(const std::string& uuid, std::uint64_t card_total,
                                                 std::uint64_t card_free) {
  if (!config_error_.empty() || !ledger_error_.empty()) return closed_view(card_total);
  auto idx = with_ledger([&](auto& l) { return l.find_device(uuid); });
  if (!idx) {
    const memory_limit& lim = config_.memory[0];
    const bool uniform =
        std::all_of(config_.memory.begin(), config_.memory.end(), [&](const auto& m) {
          return m.type == lim.type && m.bytes == lim.bytes && m.percent == lim.percent;
        });
    if (!uniform) {
      log(log_level::info,
          "{}: per-device limits and CUDA not initialised: the device's ordinal "
          "is unknown, so its NVML view is closed",
          uuid);
      return closed_view(card_total);
    }
    const std::uint64_t limit = config_.oversubscribe && lim.type == memory_limit::kind::bytes
                                    ? lim.bytes
                                    : lim.resolve(card_total);
    idx = with_ledger([&](auto& l) { return l.device(uuid, limit); });
    if (!idx) return closed_view(card_total);
  }
  const int i = *idx;
  return make_view(with_ledger([&](auto& l) { return l.limit(i); }),
                   with_ledger([&](auto& l) { return l.used(i); }), card_total, card_free);
}

std::atomic<std::uint64_t>* state::rate_words(int index) noexcept {
  return with_ledger([&](auto& l) { return l.rate_words(index); });
}

std::uint32_t state::ledger_sm_limit(int index) noexcept {
  return with_ledger([&](auto& l) { return l.sm_limit(index); });
}

void state::write_line(log_level level, const std::string& msg) const noexcept {
  try {
    const std::string line =
        fmt::format("[gpuslice {}] {}: {}\n", ::getpid(), level_name(level), msg);
    std::size_t done = 0;
    while (done < line.size()) {
      const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
  } catch (...) {
  }
}

// ---- fork --------------------------------------------------------------------------------

void state::before_fork() noexcept {
  devices_mu_.lock();
  slot_mu_.lock();
  pools_mu_.lock();
  vmm_mu_.lock();
  pointers_.lock_all();
  arrays_.lock_all();
  handles_.lock_all();
}

void state::after_fork_parent() noexcept {
  handles_.unlock_all();
  arrays_.unlock_all();
  pointers_.unlock_all();
  vmm_mu_.unlock();
  pools_mu_.unlock();
  slot_mu_.unlock();
  devices_mu_.unlock();
}

void state::after_fork_child() noexcept {
  handles_.reset_in_child();
  arrays_.reset_in_child();
  pointers_.reset_in_child();
  pools_.clear();  // the parent's pools: the child's driver starts without them
  pools_mu_.unlock();
  vmm_.clear();
  vmm_maps_.clear();
  vmm_mu_.unlock();
  attached_.store(false, std::memory_order_relaxed);
  slot_ = memory::slot_handle{};
  for (auto& c : counted_) c.store(0, std::memory_order_relaxed);
  nvml_pid_.store(0, std::memory_order_relaxed);  // the child is another process
  identify_attempts_ = 0;
  for (device_info& d : devices_) {
    d.overhead = 0;
    d.pending.store(0, std::memory_order_relaxed);
    d.next_reconcile_ns.store(0, std::memory_order_relaxed);
    d.measure_asked.store(0, std::memory_order_relaxed);
    d.measured.store(0, std::memory_order_relaxed);
  }
  slot_mu_.unlock();
  devices_mu_.unlock();
}

}  // namespace gpuslice::shim::detail
