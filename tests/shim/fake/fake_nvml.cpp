/// \file
/// A test double of NVML, built as libnvidia-ml.so.1 next to the fake libcuda.so.1. It sees the
/// same physical devices as the fake driver (in physical order: NVML ignores
/// CUDA_VISIBLE_DEVICES, as the real one does) and reports this process's memory use and kernel
/// time. Fake devices are per process, so the process lists show the calling process and, when
/// asked, neighbours that hold memory on the host.
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
///   FAKE_NVML_MIG            1: devices are MIG devices, spelled "MIG-<uuid>" by NVML
/// As with the real NVML, a process is listed on a device only while it has a context there,
/// with its context plus its live allocations as usedGpuMemory.

#include <nvml.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fake_driver.hpp"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

struct nvmlDevice_st {
  int physical = 0;
};

namespace {
constexpr int k_max_fake_devices = 4;
nvmlDevice_st g_devices[k_max_fake_devices] = {{0}, {1}, {2}, {3}};
std::atomic<int> g_init_count{0};

nvmlReturn_t check(nvmlDevice_t d) {
  if (g_init_count.load() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (d == nullptr || d->physical < 0 || d->physical >= fake_cuda_physical_count()) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
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
  const bool mig = env_u64("FAKE_NVML_MIG") == 1;
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
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char* name, unsigned int len) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (name == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  std::snprintf(name, len, "Fake GPU %d", d->physical);
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t* m) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (m == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
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
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d,
                                                                 unsigned int* count,
                                                                 nvmlProcessInfo_t* infos) {
  if (nvmlReturn_t r = check(d); r != NVML_SUCCESS) return r;
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
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
  if (neighbour != 0) add(static_cast<unsigned>(getpid()), neighbour);
  if (fake_cuda_physical_contexts(d->physical) > 0) {
    add(host_pid(), fake_cuda_physical_used(d->physical));
  }
  if (neighbour != 0) add(host_pid() + 1, neighbour);
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
