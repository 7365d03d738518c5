/// \file
/// A test double of NVML, built as libnvidia-ml.so.1 next to the fake libcuda.so.1. It sees the
/// same physical devices as the fake driver (in physical order: NVML ignores
/// CUDA_VISIBLE_DEVICES, as the real one does) and reports this process's memory use and kernel
/// time. Fake devices are per process, so the process lists show the calling process and, when
/// asked, neighbours that hold memory on the host.
///
/// FAKE_NVML_FAULTS names a file the fake re-reads on every call, so a test changes a running
/// process's GPUs by rewriting it. Each line is one fault:
///   lost <p>          physical device p has fallen off the bus: its calls answer
///                     NVML_ERROR_GPU_IS_LOST, as the real NVML's do
///   xid <p> <code>    an XID event on device p, delivered once by nvmlEventSetWait_v2 to each
///                     event set registered for nvmlEventTypeXidCriticalError on p
///
/// FAKE_NVML_MIG puts devices in MIG mode: "<p>:<profile>,<profile>;<p>:..." with profiles such
/// as 1g.5gb (5 GiB of memory); "-" leaves an index empty. As the real NVML, such a device
/// reports 7 as its maximum MIG device count and NVML_ERROR_NOT_FOUND for the empty indices;
/// a MIG device is named "<parent name> MIG <profile>" with a "MIG-" UUID.
///
/// Environment of the fake (read at each call):
///   FAKE_NVML_PID_OFFSET     NVML's pid of this process is its outermost pid in /proc (NSpid's
///                            first field: the host's pid where the host's /proc is mounted)
///                            plus this offset, which stands for the levels a container's own
///                            /proc hides (default 0)
///   FAKE_NVML_NEIGHBOUR_BYTES when NVML's pid of this process is not getpid(), two other host
///                            processes hold this many bytes on every device: one whose host pid
///                            equals this process's getpid() (pids of different namespaces
///                            collide), and the host pid after this process's
///   FAKE_NVML_NEIGHBOUR_CHURN those neighbours allocate and free this many bytes over and over:
///                            every other query shows them holding it on top (default 0)
///   FAKE_NVML_MIG_UUIDS      1: devices are MIG devices, spelled "MIG-<uuid>" by NVML
///   FAKE_NVML_PROCESSES      how nvmlDeviceGetComputeRunningProcesses_v3 answers, each way nvml.h
///                            allows: unset, this process is listed with its figure; "no_figure",
///                            listed with usedGpuMemory NVML_VALUE_NOT_AVAILABLE (as under WDDM);
///                            "unlisted", not listed although it has a context; "no_permission",
///                            NVML_ERROR_NO_PERMISSION for the whole call (MIG without privileges)
/// As with the real NVML, a process is listed on a device only while it has a context there,
/// with all the fake driver holds for it as usedGpuMemory: its context, modules, the driver's own
/// pool memory (FAKE_CUDA_POOL_BYTES) and its allocations and pool reserves.

#include <nvml.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "fake_driver.hpp"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

struct nvmlDevice_st {
  int physical = 0;
  int mig = -1;  ///< the MIG device index under `physical`; -1 for the GPU itself
};

namespace {
constexpr int k_max_fake_devices = 4;
nvmlDevice_st g_devices[k_max_fake_devices] = {{0}, {1}, {2}, {3}};
/// The most MIG devices a GPU reports (an A100's seven slices).
constexpr int k_max_mig = 7;
nvmlDevice_st g_mig[k_max_fake_devices][k_max_mig];

/// The MIG profiles of FAKE_NVML_MIG, per physical device ("" = empty index).
const std::vector<std::vector<std::string>>& mig_layout() {
  static const std::vector<std::vector<std::string>> layout = [] {
    std::vector<std::vector<std::string>> out(k_max_fake_devices);
    const char* v = std::getenv("FAKE_NVML_MIG");
    std::stringstream all(v != nullptr ? v : "");
    std::string dev;
    while (std::getline(all, dev, ';')) {
      const std::size_t colon = dev.find(':');
      if (colon == std::string::npos) continue;
      const int p = std::atoi(dev.substr(0, colon).c_str());
      if (p < 0 || p >= k_max_fake_devices) continue;
      std::stringstream list(dev.substr(colon + 1));
      std::string prof;
      while (std::getline(list, prof, ',') && static_cast<int>(out[p].size()) < k_max_mig) {
        out[p].push_back(prof == "-" ? std::string() : prof);
      }
      for (int i = 0; i < k_max_mig; ++i) g_mig[p][i] = {p, i};
    }
    return out;
  }();
  return layout;
}

/// The MIG profile of (p, i), or "" when there is no such MIG device.
std::string mig_profile(int p, int i) {
  const auto& l = mig_layout();
  if (p < 0 || p >= k_max_fake_devices || i < 0 || i >= static_cast<int>(l[p].size())) return {};
  return l[p][i];
}

/// Bytes of a profile "<n>g.<m>gb": m GiB.
std::uint64_t mig_bytes(const std::string& profile) {
  const std::size_t dot = profile.find('.');
  return dot == std::string::npos
             ? 0
             : std::strtoull(profile.c_str() + dot + 1, nullptr, 10) * (std::uint64_t{1} << 30);
}
std::atomic<int> g_init_count{0};
std::atomic<unsigned long long> g_process_queries{0};

/// One line of the FAKE_NVML_FAULTS file.
struct fault_line {
  bool xid = false;
  int physical = -1;
  unsigned long long code = 0;
};

/// The faults file's lines now (none without the variable or the file).
std::vector<fault_line> faults() {
  std::vector<fault_line> out;
  const char* path = std::getenv("FAKE_NVML_FAULTS");
  if (path == nullptr) return out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string word;
    fault_line fl;
    if (!(in >> word >> fl.physical)) continue;
    if (word == "xid") {
      fl.xid = true;
      if (!(in >> fl.code)) continue;
    } else if (word != "lost") {
      continue;
    }
    out.push_back(fl);
  }
  return out;
}

bool lost(int physical) {
  for (const auto& f : faults()) {
    if (!f.xid && f.physical == physical) return true;
  }
  return false;
}

nvmlReturn_t check(nvmlDevice_t d) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (d == nullptr || d->physical < 0 || d->physical >= fake_cuda_physical_count()) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  if (d->mig >= 0 && mig_profile(d->physical, d->mig).empty()) return NVML_ERROR_INVALID_ARGUMENT;
  if (lost(d->physical)) return NVML_ERROR_GPU_IS_LOST;
  return NVML_SUCCESS;
}

std::uint64_t env_u64(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? 0 : std::strtoull(v, nullptr, 10);
}

/// The calling process's pid in the outermost pid namespace this /proc shows: the first field of
/// /proc/self/status's NSpid line (the host's pid under the host's /proc), else getpid().
unsigned outer_pid() {
  const auto self = static_cast<unsigned long>(getpid());
  FILE* f = std::fopen("/proc/self/status", "re");
  if (f == nullptr) return static_cast<unsigned>(self);
  char line[512];
  unsigned long outer = 0, last = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "NSpid:", 6) != 0) continue;
    char* at = line + 6;
    for (bool first = true;; first = false) {
      char* end = nullptr;
      const unsigned long v = std::strtoul(at, &end, 10);
      if (end == at) break;
      if (first) outer = v;
      last = v;
      at = end;
    }
    break;
  }
  std::fclose(f);
  return static_cast<unsigned>(last == self && outer != 0 ? outer : self);
}

/// The pid NVML reports for the calling process: the host's. A /proc of the container's own
/// namespace does not show it, so tests give the difference as FAKE_NVML_PID_OFFSET.
unsigned host_pid() { return outer_pid() + static_cast<unsigned>(env_u64("FAKE_NVML_PID_OFFSET")); }

void format_uuid(int p, char* out, unsigned len) {
  unsigned char u[16];
  fake_cuda_physical_uuid(p, u);
  const bool mig = env_u64("FAKE_NVML_MIG_UUIDS") == 1;
  std::snprintf(out, len, "%s-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                mig ? "MIG" : "GPU", u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9],
                u[10], u[11], u[12], u[13], u[14], u[15]);
}
}  // namespace

FAKE_EXPORT nvmlReturn_t nvmlInit_v2() {
  g_init_count.fetch_add(1);
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int) { return nvmlInit_v2(); }
FAKE_EXPORT nvmlReturn_t nvmlShutdown() {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  g_init_count.fetch_sub(1);
  return NVML_SUCCESS;
}
FAKE_EXPORT const char* nvmlErrorString(nvmlReturn_t r) {
  switch (r) {
    case NVML_SUCCESS:
      return "Success";
    case NVML_ERROR_UNINITIALIZED:
      return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
      return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE:
      return "Insufficient Size";
    case NVML_ERROR_NOT_FOUND:
      return "Not Found";
    case NVML_ERROR_TIMEOUT:
      return "Timeout";
    case NVML_ERROR_GPU_IS_LOST:
      return "GPU is lost";
    default:
      return "Unknown Error";
  }
}
FAKE_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char* v, unsigned int len) {
  if (v == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  std::snprintf(v, len, "%s", "580.00.fake");
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* n) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (n == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *n = static_cast<unsigned>(fake_cuda_physical_count());
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t* d) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (d == nullptr || i >= static_cast<unsigned>(fake_cuda_physical_count())) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  if (lost(static_cast<int>(i))) return NVML_ERROR_GPU_IS_LOST;
  *d = &g_devices[i];
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char* uuid, nvmlDevice_t* d) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (uuid == nullptr || d == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  for (int p = 0; p < fake_cuda_physical_count(); ++p) {
    char buf[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    format_uuid(p, buf, sizeof buf);
    if (std::strcmp(buf, uuid) == 0) {
      *d = &g_devices[p];
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int* i) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (i == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *i = static_cast<unsigned>(d->physical);
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char* uuid, unsigned int len) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (uuid == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  constexpr unsigned k_uuid_chars = 41;  // "GPU-" + 36 + NUL
  if (len < k_uuid_chars) return NVML_ERROR_INSUFFICIENT_SIZE;
  format_uuid(d->physical, uuid, len);
  if (d->mig >= 0) {  // "MIG-" and the parent's digits with the last one replaced by the index
    char parent[k_uuid_chars];
    format_uuid(d->physical, parent, sizeof parent);
    std::snprintf(uuid, len, "MIG-%.35s%d", parent + 4, d->mig);
  }
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char* name, unsigned int len) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (name == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (d->mig >= 0) {
    std::snprintf(name, len, "Fake GPU %d MIG %s", d->physical,
                  mig_profile(d->physical, d->mig).c_str());
  } else {
    std::snprintf(name, len, "Fake GPU %d", d->physical);
  }
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t* m) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (m == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (d->mig >= 0) {
    m->total = mig_bytes(mig_profile(d->physical, d->mig));
    m->used = 0;
    m->free = m->total;
    return NVML_SUCCESS;
  }
  m->total = fake_cuda_physical_total(d->physical);
  m->used = fake_cuda_physical_used(d->physical);
  m->free = m->total - m->used;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t* m) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (m == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (m->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  m->total = fake_cuda_physical_total(d->physical);
  m->reserved = 0;
  m->used = fake_cuda_physical_used(d->physical);
  m->free = m->total - m->used;
  return NVML_SUCCESS;
}
/// Calls of nvmlDeviceGetComputeRunningProcesses_v3 in this process, for tests that bound how
/// often the shim reads NVML (a test-double internal, not an NVML name). Thread-safe.
FAKE_EXPORT unsigned long long fake_nvml_process_queries() { return g_process_queries.load(); }

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d,
                                                                 unsigned int* count,
                                                                 nvmlProcessInfo_t* infos) {
  g_process_queries.fetch_add(1);
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const char* mode = std::getenv("FAKE_NVML_PROCESSES");
  const std::string_view how = mode == nullptr ? "" : mode;
  if (how == "no_permission") return NVML_ERROR_NO_PERMISSION;
  nvmlProcessInfo_t rows[3] = {};
  unsigned n = 0;
  const auto add = [&](unsigned pid, std::uint64_t bytes) {
    rows[n].pid = pid;
    rows[n].usedGpuMemory = bytes;
    rows[n].gpuInstanceId = 0xFFFFFFFFu;
    rows[n].computeInstanceId = 0xFFFFFFFFu;
    ++n;
  };
  // Neighbours exist only where pids of two namespaces can collide.
  const bool namespaced = host_pid() != static_cast<unsigned>(getpid());
  const std::uint64_t neighbour = namespaced ? env_u64("FAKE_NVML_NEIGHBOUR_BYTES") : 0;
  // A churning neighbour holds its churn at every other query, in step with the calls.
  const std::uint64_t churn =
      g_process_queries.load() % 2 == 0 ? env_u64("FAKE_NVML_NEIGHBOUR_CHURN") : 0;
  if (neighbour != 0) add(static_cast<unsigned>(getpid()), neighbour + churn);
  if (fake_cuda_physical_contexts(d->physical) > 0 && how != "unlisted") {
    add(host_pid(), how == "no_figure" ? static_cast<unsigned long long>(NVML_VALUE_NOT_AVAILABLE)
                                       : fake_cuda_physical_used(d->physical));
  }
  if (neighbour != 0) add(host_pid() + 1, neighbour + churn);
  if (*count < n || (n != 0 && infos == nullptr)) {
    *count = n;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  *count = n;
  std::copy(rows, rows + n, infos);
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d,
                                                         nvmlProcessUtilizationSample_t* samples,
                                                         unsigned int* count,
                                                         unsigned long long since_us) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (samples == nullptr || *count < 1) {
    *count = 1;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  // Utilization since the previous sample of this process, in percent of wall time.
  // Per device: the previous sample of one device must not be taken for another's.
  static std::atomic<std::uint64_t> last_busy_of[k_max_fake_devices] = {};
  static std::atomic<std::int64_t> last_at_of[k_max_fake_devices] = {};
  auto& last_busy = last_busy_of[d->physical];
  auto& last_at = last_at_of[d->physical];
  const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::steady_clock::now().time_since_epoch())
                       .count();
  const std::uint64_t busy = fake_cuda_physical_busy_us(d->physical);
  const std::uint64_t prev_busy = last_busy.exchange(busy);
  const std::int64_t prev_at = last_at.exchange(now);
  const std::int64_t span = prev_at == 0 ? 0 : now - prev_at;
  constexpr unsigned k_percent = 100;
  samples[0].pid = host_pid();
  samples[0].timeStamp = static_cast<unsigned long long>(now);
  samples[0].smUtil =
      span <= 0
          ? 0
          : static_cast<unsigned>(std::min<std::uint64_t>(
                k_percent, (busy - prev_busy) * k_percent / static_cast<std::uint64_t>(span)));
  samples[0].memUtil = 0;
  samples[0].encUtil = 0;
  samples[0].decUtil = 0;
  (void)since_us;
  *count = 1;
  return NVML_SUCCESS;
}

// ---- events: XIDs from the faults file ---------------------------------------------------------

struct nvmlEventSet_st {
  std::mutex mu;
  unsigned long long types[k_max_fake_devices] = {};  ///< registered event types per device
  std::size_t delivered = 0;  ///< xid lines of the faults file already delivered
};

FAKE_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t* set) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (set == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *set = new nvmlEventSet_st;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types,
                                                  nvmlEventSet_t set) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (set == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  std::lock_guard<std::mutex> lock(set->mu);
  set->types[d->physical] |= types;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t* data,
                                             unsigned int timeout_ms) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (set == nullptr || data == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  constexpr auto k_poll = std::chrono::milliseconds(10);
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(set->mu);
      std::vector<fault_line> xids;
      for (const auto& f : faults()) {
        if (f.xid) xids.push_back(f);
      }
      while (set->delivered < xids.size()) {
        const fault_line f = xids[set->delivered++];
        if (f.physical < 0 || f.physical >= k_max_fake_devices ||
            (set->types[f.physical] & nvmlEventTypeXidCriticalError) == 0) {
          continue;
        }
        data->device = &g_devices[f.physical];
        data->eventType = nvmlEventTypeXidCriticalError;
        data->eventData = f.code;
        data->gpuInstanceId = 0xFFFFFFFFu;
        data->computeInstanceId = 0xFFFFFFFFu;
        return NVML_SUCCESS;
      }
    }
    if (std::chrono::steady_clock::now() >= until) return NVML_ERROR_TIMEOUT;
    std::this_thread::sleep_for(k_poll);
  }
}
FAKE_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
  if (set == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  delete set;
  return NVML_SUCCESS;
}

/// The device's busy time since the previous call of any process-wide caller, in percent of the
/// wall time between the calls (0 at the first call), as nvmlDeviceGetUtilizationRates' "gpu".
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t* u) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (u == nullptr || d->mig >= 0) return NVML_ERROR_INVALID_ARGUMENT;
  static std::atomic<std::uint64_t> last_busy_of[k_max_fake_devices] = {};
  static std::atomic<std::int64_t> last_at_of[k_max_fake_devices] = {};
  const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::steady_clock::now().time_since_epoch())
                       .count();
  const std::uint64_t busy = fake_cuda_physical_busy_us(d->physical);
  const std::uint64_t prev_busy = last_busy_of[d->physical].exchange(busy);
  const std::int64_t prev_at = last_at_of[d->physical].exchange(now);
  const std::int64_t span = prev_at == 0 ? 0 : now - prev_at;
  constexpr unsigned k_percent = 100;
  u->gpu = span <= 0
               ? 0
               : static_cast<unsigned>(std::min<std::uint64_t>(
                     k_percent, (busy - prev_busy) * k_percent / static_cast<std::uint64_t>(span)));
  u->memory = 0;
  return NVML_SUCCESS;
}

// ---- MIG: FAKE_NVML_MIG -------------------------------------------------------------------------

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int* current,
                                              unsigned int* pending) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (current == nullptr || pending == nullptr || d->mig >= 0) return NVML_ERROR_INVALID_ARGUMENT;
  const bool on = !mig_layout()[d->physical].empty();
  *current = *pending = on ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int* count) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (count == nullptr || d->mig >= 0) return NVML_ERROR_INVALID_ARGUMENT;
  *count = mig_layout()[d->physical].empty() ? 0 : k_max_mig;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index,
                                                             nvmlDevice_t* mig) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (mig == nullptr || d->mig >= 0 || index >= static_cast<unsigned>(k_max_mig)) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  if (mig_layout()[d->physical].empty()) return NVML_ERROR_NOT_SUPPORTED;
  if (mig_profile(d->physical, static_cast<int>(index)).empty()) return NVML_ERROR_NOT_FOUND;
  *mig = &g_mig[d->physical][index];
  return NVML_SUCCESS;
}
