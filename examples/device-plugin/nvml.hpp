#pragma once
/// \file
/// NVML through dlopen, as the shim reads it: the node's GPUs (index, UUID, name, memory, NUMA
/// node), a health probe, and XID events where the library has them. Shared by the device plugin
/// and the monitor. Nothing links libnvidia-ml: a node without the driver gets a clear error, and
/// the tests load the fake NVML (tests/shim/fake) by the library search path.

#include <dlfcn.h>
#include <nvml.h>

#include <cctype>
#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gpuslice/result.hpp"

namespace gpuslice::node {

/// The library name the driver installs.
inline constexpr const char* k_nvml_library = "libnvidia-ml.so.1";

/// XIDs caused by applications, not by the GPU (NVIDIA's device plugin skips the same ones):
/// 13 graphics engine exception, 31 memory page fault, 43 stopped processing, 45 preemptive
/// cleanup, 68 video processor exception, 109 context switch timeout.
inline bool application_xid(unsigned long long xid) {
  switch (xid) {
    case 13:
    case 31:
    case 43:
    case 45:
    case 68:
    case 109:
      return true;
    default:
      return false;
  }
}

/// One MIG device of a GPU in MIG mode.
struct mig_info {
  unsigned index = 0;   ///< its index under the parent GPU
  std::string uuid;     ///< "MIG-..."
  std::string profile;  ///< "1g.5gb": what follows " MIG " in NVML's name
  std::uint64_t memory_total = 0;
};

/// One physical GPU as NVML reports it.
struct gpu_info {
  unsigned index = 0;
  std::string uuid;
  std::string name;
  std::uint64_t memory_total = 0;  ///< bytes
  std::uint64_t memory_used = 0;   ///< bytes
  int numa = 0;                    ///< from sysfs by PCI bus id; 0 when unknown
  int utilization = -1;            ///< percent of time busy, -1 when NVML does not say
  bool healthy = true;
  std::string why_unhealthy;   ///< the failing call or the XID
  bool mig_enabled = false;    ///< MIG mode is on (current mode)
  std::vector<mig_info> migs;  ///< its MIG devices, when MIG mode is on
};

/// A loaded NVML. Thread-safe: every method takes the instance's lock (NVML calls are
/// thread-safe, the lock guards the event set).
class nvml {
 public:
  /// Loads \p library and calls nvmlInit_v2. Errors name the library and dlerror or NVML's text.
  static result<std::unique_ptr<nvml>> load(const std::string& library = k_nvml_library) {
    void* h = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* e = dlerror();
      return make_error(errc::not_found, "NVML: cannot load " + library + ": " +
                                             (e != nullptr ? e : "unknown error"));
    }
    std::unique_ptr<nvml> n(new nvml(h));
    if (!n->init_ || !n->count_ || !n->by_index_ || !n->uuid_ || !n->name_ || !n->memory_) {
      return make_error(errc::unsupported,
                        "NVML: " + library + " lacks nvmlInit_v2/nvmlDeviceGet* functions");
    }
    if (const nvmlReturn_t r = n->init_(); r != NVML_SUCCESS) {
      return make_error(errc::io_error, "NVML: nvmlInit_v2: " + n->text(r));
    }
    n->initialised_ = true;
    n->open_events();
    return n;
  }

  ~nvml() {
    if (events_ != nullptr && event_free_) event_free_(events_);
    if (initialised_ && shutdown_) shutdown_();
    dlclose(handle_);
  }
  nvml(const nvml&) = delete;
  nvml& operator=(const nvml&) = delete;

  /// Whether XID events are available (the library has the event API and registration worked).
  bool has_events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_ != nullptr;
  }

  /// Every GPU with its current state. A GPU whose probe fails is listed unhealthy (with the
  /// failing call) as long as its index answers; an error only when the count itself fails.
  result<std::vector<gpu_info>> gpus() const {
    std::lock_guard<std::mutex> lock(mu_);
    unsigned count = 0;
    if (const nvmlReturn_t r = count_(&count); r != NVML_SUCCESS) {
      return make_error(errc::io_error, "NVML: nvmlDeviceGetCount_v2: " + text(r));
    }
    std::vector<gpu_info> out;
    for (unsigned i = 0; i < count; ++i) {
      gpu_info g;
      g.index = i;
      nvmlDevice_t d = nullptr;
      auto fail = [&](const char* call, nvmlReturn_t r) {
        g.healthy = false;
        g.why_unhealthy = std::string(call) + ": " + text(r);
      };
      if (const nvmlReturn_t r = by_index_(i, &d); r != NVML_SUCCESS) {
        fail("nvmlDeviceGetHandleByIndex_v2", r);
        out.push_back(std::move(g));
        continue;
      }
      char buf[NVML_DEVICE_NAME_V2_BUFFER_SIZE] = {};
      if (const nvmlReturn_t r = uuid_(d, buf, sizeof buf); r != NVML_SUCCESS) {
        fail("nvmlDeviceGetUUID", r);
      } else {
        g.uuid = buf;
      }
      char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE] = {};
      if (const nvmlReturn_t r = name_(d, name, sizeof name); r != NVML_SUCCESS) {
        if (g.healthy) fail("nvmlDeviceGetName", r);
      } else {
        g.name = name;
      }
      nvmlMemory_t m{};
      if (const nvmlReturn_t r = memory_(d, &m); r == NVML_ERROR_NOT_SUPPORTED) {
        // Unified memory (GB10 and the like): NVML cannot size it; memory_total stays 0 and the
        // device plugin registers its preconfigured figure, as HAMi's does.
      } else if (r != NVML_SUCCESS) {
        if (g.healthy) fail("nvmlDeviceGetMemoryInfo", r);
      } else {
        g.memory_total = m.total;
        g.memory_used = m.used;
      }
      if (utilization_) {
        nvmlUtilization_t u{};
        if (utilization_(d, &u) == NVML_SUCCESS) g.utilization = static_cast<int>(u.gpu);
      }
      if (pci_) {
        nvmlPciInfo_t p{};
        if (pci_(d, &p) == NVML_SUCCESS) g.numa = numa_of(p.busId);
      }
      if (g.healthy) list_migs(d, g);
      auto x = xid_.find_unhealthy(i);
      if (!x.empty() && g.healthy) {
        g.healthy = false;
        g.why_unhealthy = x;
      }
      out.push_back(std::move(g));
    }
    return out;
  }

  /// Waits up to \p timeout_ms for an XID event and records a critical one against its GPU
  /// (it stays unhealthy until the plugin restarts, as NVIDIA's plugin does). Returns true when
  /// a critical XID was recorded. Without events, sleeps nothing and returns false.
  bool wait_xid(unsigned timeout_ms) {
    nvmlEventSet_t set = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      set = events_;
    }
    if (set == nullptr) return false;
    nvmlEventData_t e{};
    if (event_wait_(set, &e, timeout_ms) != NVML_SUCCESS) return false;
    if (e.eventType != nvmlEventTypeXidCriticalError || application_xid(e.eventData)) {
      return false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    unsigned idx = 0;
    if (index_ && index_(e.device, &idx) == NVML_SUCCESS) {
      xid_.record(idx, "XID " + std::to_string(e.eventData));
    } else {
      xid_.record_all("XID " + std::to_string(e.eventData));
    }
    return true;
  }

 private:
  /// Critical XIDs seen, per GPU index.
  struct xid_log {
    std::vector<std::string> by_index;
    std::string all;
    void record(unsigned i, std::string why) {
      if (by_index.size() <= i) by_index.resize(i + 1);
      if (by_index[i].empty()) by_index[i] = std::move(why);
    }
    void record_all(std::string why) {
      if (all.empty()) all = std::move(why);
    }
    std::string find_unhealthy(unsigned i) const {
      if (!all.empty()) return all;
      return i < by_index.size() ? by_index[i] : std::string();
    }
  };

  /// Fills g.mig_enabled and g.migs. NVML's maximum count is an upper bound: empty indices
  /// answer NVML_ERROR_NOT_FOUND and are skipped.
  void list_migs(nvmlDevice_t d, gpu_info& g) const {
    if (!mig_mode_ || !mig_count_ || !mig_by_index_) return;
    unsigned current = 0, pending = 0;
    if (mig_mode_(d, &current, &pending) != NVML_SUCCESS || current != NVML_DEVICE_MIG_ENABLE) {
      return;
    }
    g.mig_enabled = true;
    unsigned max = 0;
    if (mig_count_(d, &max) != NVML_SUCCESS) return;
    for (unsigned i = 0; i < max; ++i) {
      nvmlDevice_t m = nullptr;
      if (mig_by_index_(d, i, &m) != NVML_SUCCESS) continue;
      mig_info mi;
      mi.index = i;
      char buf[NVML_DEVICE_NAME_V2_BUFFER_SIZE] = {};
      if (uuid_(m, buf, sizeof buf) != NVML_SUCCESS) continue;
      mi.uuid = buf;
      char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE] = {};
      if (name_(m, name, sizeof name) != NVML_SUCCESS) continue;
      const std::string n(name);
      const std::size_t at = n.rfind(" MIG ");
      if (at == std::string::npos) continue;
      mi.profile = n.substr(at + 5);
      nvmlMemory_t mem{};
      if (memory_(m, &mem) == NVML_SUCCESS) mi.memory_total = mem.total;
      g.migs.push_back(std::move(mi));
    }
  }

  template <class F>
  F sym(const char* name) {
    return reinterpret_cast<F>(dlsym(handle_, name));
  }

  explicit nvml(void* h) : handle_(h) {
    init_ = sym<decltype(&nvmlInit_v2)>("nvmlInit_v2");
    shutdown_ = sym<decltype(&nvmlShutdown)>("nvmlShutdown");
    error_string_ = sym<decltype(&nvmlErrorString)>("nvmlErrorString");
    count_ = sym<decltype(&nvmlDeviceGetCount_v2)>("nvmlDeviceGetCount_v2");
    by_index_ = sym<decltype(&nvmlDeviceGetHandleByIndex_v2)>("nvmlDeviceGetHandleByIndex_v2");
    index_ = sym<decltype(&nvmlDeviceGetIndex)>("nvmlDeviceGetIndex");
    uuid_ = sym<decltype(&nvmlDeviceGetUUID)>("nvmlDeviceGetUUID");
    name_ = sym<decltype(&nvmlDeviceGetName)>("nvmlDeviceGetName");
    memory_ = sym<decltype(&nvmlDeviceGetMemoryInfo)>("nvmlDeviceGetMemoryInfo");
    utilization_ = sym<decltype(&nvmlDeviceGetUtilizationRates)>("nvmlDeviceGetUtilizationRates");
    pci_ = sym<decltype(&nvmlDeviceGetPciInfo_v3)>("nvmlDeviceGetPciInfo_v3");
    event_create_ = sym<decltype(&nvmlEventSetCreate)>("nvmlEventSetCreate");
    event_register_ = sym<decltype(&nvmlDeviceRegisterEvents)>("nvmlDeviceRegisterEvents");
    event_wait_ = sym<decltype(&nvmlEventSetWait_v2)>("nvmlEventSetWait_v2");
    event_free_ = sym<decltype(&nvmlEventSetFree)>("nvmlEventSetFree");
    mig_mode_ = sym<decltype(&nvmlDeviceGetMigMode)>("nvmlDeviceGetMigMode");
    mig_count_ = sym<decltype(&nvmlDeviceGetMaxMigDeviceCount)>("nvmlDeviceGetMaxMigDeviceCount");
    mig_by_index_ =
        sym<decltype(&nvmlDeviceGetMigDeviceHandleByIndex)>("nvmlDeviceGetMigDeviceHandleByIndex");
  }

  /// Creates the event set and registers every GPU for critical XIDs; leaves events_ null when
  /// the library or a GPU does not support it (health then rests on the probe alone).
  void open_events() {
    if (!event_create_ || !event_register_ || !event_wait_ || !event_free_) return;
    nvmlEventSet_t set = nullptr;
    if (event_create_(&set) != NVML_SUCCESS) return;
    unsigned count = 0;
    bool any = false;
    if (count_(&count) == NVML_SUCCESS) {
      for (unsigned i = 0; i < count; ++i) {
        nvmlDevice_t d = nullptr;
        if (by_index_(i, &d) != NVML_SUCCESS) continue;
        any |= event_register_(d, nvmlEventTypeXidCriticalError, set) == NVML_SUCCESS;
      }
    }
    if (!any) {
      event_free_(set);
      return;
    }
    events_ = set;
  }

  std::string text(nvmlReturn_t r) const {
    const char* s = error_string_ ? error_string_(r) : nullptr;
    return (s != nullptr ? std::string(s) : std::string("error")) + " (" + std::to_string(r) + ")";
  }

  /// The NUMA node of the PCI device \p bus_id from sysfs; 0 when unknown (-1 there too).
  static int numa_of(const char* bus_id) {
    std::string id(bus_id);
    for (char& c : id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    // NVML writes an 8-digit domain ("00000000:3B:00.0"); sysfs uses 4 ("0000:3b:00.0").
    constexpr std::size_t k_nvml_domain_digits = 8, k_sysfs_domain_digits = 4;
    if (id.size() > k_nvml_domain_digits && id[k_nvml_domain_digits] == ':') {
      id = id.substr(k_nvml_domain_digits - k_sysfs_domain_digits);
    }
    std::ifstream f("/sys/bus/pci/devices/" + id + "/numa_node");
    int n = 0;
    if (!(f >> n) || n < 0) return 0;
    return n;
  }

  void* handle_;
  mutable std::mutex mu_;
  bool initialised_ = false;
  nvmlEventSet_t events_ = nullptr;
  xid_log xid_;
  decltype(&nvmlInit_v2) init_ = nullptr;
  decltype(&nvmlShutdown) shutdown_ = nullptr;
  decltype(&nvmlErrorString) error_string_ = nullptr;
  decltype(&nvmlDeviceGetCount_v2) count_ = nullptr;
  decltype(&nvmlDeviceGetHandleByIndex_v2) by_index_ = nullptr;
  decltype(&nvmlDeviceGetIndex) index_ = nullptr;
  decltype(&nvmlDeviceGetUUID) uuid_ = nullptr;
  decltype(&nvmlDeviceGetName) name_ = nullptr;
  decltype(&nvmlDeviceGetMemoryInfo) memory_ = nullptr;
  decltype(&nvmlDeviceGetUtilizationRates) utilization_ = nullptr;
  decltype(&nvmlDeviceGetPciInfo_v3) pci_ = nullptr;
  decltype(&nvmlEventSetCreate) event_create_ = nullptr;
  decltype(&nvmlDeviceRegisterEvents) event_register_ = nullptr;
  decltype(&nvmlEventSetWait_v2) event_wait_ = nullptr;
  decltype(&nvmlEventSetFree) event_free_ = nullptr;
  decltype(&nvmlDeviceGetMigMode) mig_mode_ = nullptr;
  decltype(&nvmlDeviceGetMaxMigDeviceCount) mig_count_ = nullptr;
  decltype(&nvmlDeviceGetMigDeviceHandleByIndex) mig_by_index_ = nullptr;
};

}  // namespace gpuslice::node
