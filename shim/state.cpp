/// \file
/// The shim's state: configuration, the ledger, the devices by UUID, the allocation tables,
/// reservations and views. Identification (identify.cpp), reconciliation (reconcile.cpp) and
/// pools and VMM handles (pools.cpp) live beside it. See shim.hpp for each member's contract.

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "state_internal.hpp"

extern char** environ;

namespace gpuslice::shim::detail {

namespace {

/// Names of the driver libraries, opened at run time (never linked).
constexpr const char* k_libcuda = "libcuda.so.1";
constexpr const char* k_libnvml = "libnvidia-ml.so.1";
/// The ledger of a container whose environment names none (as HAMi's libvgpu.so uses
/// /tmp/cudevshr.cache): every process of the container sees the container's own /tmp.
constexpr const char* k_default_ledger = "/tmp/gpuslice.ledger";
/// Prefixes of the environment variables the configuration may read.
constexpr std::string_view k_env_prefixes[] = {"CUDA_", "GPU_", "ACTIVE_", "LIBCUDA_", "GPUSLICE_"};
/// Group and other write bits a ledger file needs so every user of the container can use it.
constexpr mode_t k_shared_write_bits = S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH;
constexpr double k_mib = 1024.0 * 1024.0;

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

std::uint64_t coarse_now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  constexpr std::uint64_t k_ns_per_s = 1'000'000'000;
  return static_cast<std::uint64_t>(ts.tv_sec) * k_ns_per_s +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string human(std::uint64_t bytes) {
  return fmt::format("{:.1f} MiB ({} bytes)", static_cast<double>(bytes) / k_mib, bytes);
}

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
  if (s.spares == 0) {
    auto [it, fresh] = s.map.try_emplace(key, c);
    if (fresh) return std::nullopt;
    const charge displaced = it->second;
    it->second = c;
    return displaced;
  }
  map_type::node_type& node = s.spare[--s.spares];
  node.key() = key;
  node.mapped() = c;
  auto r = s.map.insert(std::move(node));
  if (r.inserted) return std::nullopt;
  s.spare[s.spares++] = std::move(r.node);  // not used: kept for the next insert
  const charge displaced = r.position->second;
  r.position->second = c;
  return displaced;
}

std::optional<charge> alloc_table::take(std::uint64_t key) noexcept {
  shard& s = pick(key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return std::nullopt;
  charge c = it->second;
  if (s.spares < k_spare_nodes) {
    s.spare[s.spares++] = s.map.extract(it);
  } else {
    s.map.erase(it);
  }
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
    for (auto& node : s.spare) node = map_type::node_type{};
    s.spares = 0;
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
    if (graph_trim != nullptr && graph_trim(ordinal) == CUDA_SUCCESS) {
      driver_memory_changed(ordinal);  // the graph allocator gave memory back: read it now
      reconcile(d, false);
    }
  };
  reconcile_due(d);
  if (d.pending.load(std::memory_order_relaxed) != 0) {
    retry_pending(d);  // other processes may have freed room: no NVML reading needed
    if (d.pending.load(std::memory_order_relaxed) != 0) reconcile(d, true);
    if (d.pending.load(std::memory_order_relaxed) != 0) trim_driver_caches();
    if (d.pending.load(std::memory_order_relaxed) != 0) {
      return refuse(refusal::over_limit, ordinal, bytes, call), false;
    }
  }
  auto attempt = [&] {
    // The ledger's limit is the one in force: `gpuslice set-limit` changes it in a running
    // container (a tenant that can write the file could as well forge its use, so taking the
    // limit from the environment here would protect nothing).
    change_begin(ordinal);
    const bool granted = with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, bytes); });
    if (!granted) change_end(ordinal);  // refusal paths below take readings
    return granted;
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
  c.bytes += more;
  return true;
}

void state::retry_pending(device_info& d) noexcept {
  std::lock_guard<std::mutex> lock(devices_mu_);
  const std::uint64_t more = d.pending.load(std::memory_order_relaxed);
  auto sl = slot();
  if (more == 0 || !sl) return;
  if (with_ledger([&](auto& l) { return l.try_reserve(*sl, d.index, more); })) {
    d.overhead += more;
    d.pending.store(0, std::memory_order_relaxed);
  }
}

// A reading of NVML is used against the counted bytes, so it must not be taken while a counted
// change is half done (charged and not yet made by the driver, or freed by the driver and not
// yet given back). Dekker's handshake on two words, both sides sequentially consistent: a change
// counts itself in, then looks for a reading; a reading raises its flag, then looks for changes.
// At least one of them sees the other, so a reading never overlaps a change, and the hot path
// pays two uncontended atomic operations.
void state::change_begin(int ordinal) noexcept {
  if (ordinal < 0 || ordinal >= gpuslice::k_max_devices) return;
  device_info& d = devices_[static_cast<std::size_t>(ordinal)];
  for (;;) {
    d.in_flight.fetch_add(1, std::memory_order_seq_cst);
    if (!d.reading.load(std::memory_order_seq_cst)) return;
    d.in_flight.fetch_sub(1, std::memory_order_seq_cst);
    while (d.reading.load(std::memory_order_acquire)) sched_yield();
  }
}

void state::change_end(int ordinal) noexcept {
  if (ordinal < 0 || ordinal >= gpuslice::k_max_devices) return;
  devices_[static_cast<std::size_t>(ordinal)].in_flight.fetch_sub(1, std::memory_order_seq_cst);
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
  pool_count_.store(0, std::memory_order_relaxed);
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
    d.last_read_ns.store(0, std::memory_order_relaxed);
    d.in_flight.store(0, std::memory_order_relaxed);  // the parent's threads are not here
    d.reading.store(false, std::memory_order_relaxed);
  }
  identify_backoff_ns_ = 0;
  slot_mu_.unlock();
  devices_mu_.unlock();
}

}  // namespace gpuslice::shim::detail
