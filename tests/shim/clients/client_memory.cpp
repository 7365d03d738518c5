/// \file
/// The memory-quota scenario, run under LD_PRELOAD=libgpuslice.so on the fake driver. Built
/// three times, differing only in how the driver's entry points are reached:
///   CLIENT_LOAD_DIRECT   linked against libcuda.so.1 (symbols resolved by the loader)
///   CLIENT_LOAD_DLOPEN   dlopen("libcuda.so.1") + dlsym
///   CLIENT_LOAD_PROC     dlsym of cuGetProcAddress_v2 only, everything else through it, as the
///                        CUDA 12/13 runtime does (per-thread-stream variants included)
/// Modes (argv[1]): quota (default), visible P0 P1, overhead, bad_config, bad_ledger,
/// oom_killer, legacy, over_limit_view, nvml_only, mig, pools, vmm, arrays, teardown, capture,
/// graph_memory, modules, pool_first_use. The limit is CUDA_DEVICE_MEMORY_LIMIT;
/// the fake's size FAKE_CUDA_MEMORY. The physical invariant is read from the fake itself
/// (fake_cuda_physical_used: what the fake driver really holds for this process).

#include <nvml.h>
#include <sys/wait.h>

#include <string_view>
#include <vector>

#include "client.hpp"
#include "gpuslice/memory/ledger.hpp"

namespace {

using client::driver;

constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;
constexpr std::uint64_t k_chunk = 4 * k_mib;
/// VMM granularity the fake reports (2 MiB), so cuMemCreate sizes are valid.
constexpr std::size_t k_vmm_granularity = 2 * k_mib;
/// Row alignment of the fake's pitched allocations and arrays.
constexpr std::size_t k_fake_pitch = 512;

#if defined(CLIENT_LOAD_DIRECT)
constexpr const char* k_name = "client_direct";
driver load() {
  driver d;
  d.init = &cuInit;
  d.device_get = &cuDeviceGet;
  d.device_count = &cuDeviceGetCount;
  d.device_uuid = &cuDeviceGetUuid_v2;
  d.total_mem = &cuDeviceTotalMem_v2;
  d.ctx_retain = &cuDevicePrimaryCtxRetain;
  d.ctx_set = &cuCtxSetCurrent;
  d.mem_info = &cuMemGetInfo_v2;
  d.alloc = &cuMemAlloc_v2;
  d.free = &cuMemFree_v2;
  d.alloc_pitch = &cuMemAllocPitch_v2;
  d.alloc_managed = &cuMemAllocManaged;
  d.alloc_async = &cuMemAllocAsync;
  d.free_async = &cuMemFreeAsync;
  d.alloc_pool = &cuMemAllocFromPoolAsync;
  d.pool_create = &cuMemPoolCreate;
  d.pool_destroy = &cuMemPoolDestroy;
  d.stream_create = &cuStreamCreate;
  d.stream_destroy = &cuStreamDestroy_v2;
  d.stream_sync = &cuStreamSynchronize;
  d.mem_create = &cuMemCreate;
  d.mem_release = &cuMemRelease;
  d.array_create = &cuArrayCreate_v2;
  d.array3d_create = &cuArray3DCreate_v2;
  d.array_destroy = &cuArrayDestroy;
  d.mipmap_create = &cuMipmappedArrayCreate;
  d.mipmap_destroy = &cuMipmappedArrayDestroy;
  d.get_proc = &cuGetProcAddress_v2;
  return d;
}
#elif defined(CLIENT_LOAD_DLOPEN)
constexpr const char* k_name = "client_dlopen";
driver load() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  driver d;
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)> >(dlsym(h, name));
  };
  sym(d.init, "cuInit");
  sym(d.device_get, "cuDeviceGet");
  sym(d.device_count, "cuDeviceGetCount");
  sym(d.device_uuid, "cuDeviceGetUuid_v2");
  sym(d.total_mem, "cuDeviceTotalMem_v2");
  sym(d.ctx_retain, "cuDevicePrimaryCtxRetain");
  sym(d.ctx_set, "cuCtxSetCurrent");
  sym(d.mem_info, "cuMemGetInfo_v2");
  sym(d.alloc, "cuMemAlloc_v2");
  sym(d.free, "cuMemFree_v2");
  sym(d.alloc_pitch, "cuMemAllocPitch_v2");
  sym(d.alloc_managed, "cuMemAllocManaged");
  sym(d.alloc_async, "cuMemAllocAsync");
  sym(d.free_async, "cuMemFreeAsync");
  sym(d.alloc_pool, "cuMemAllocFromPoolAsync");
  sym(d.pool_create, "cuMemPoolCreate");
  sym(d.pool_destroy, "cuMemPoolDestroy");
  sym(d.stream_create, "cuStreamCreate");
  sym(d.stream_destroy, "cuStreamDestroy_v2");
  sym(d.stream_sync, "cuStreamSynchronize");
  sym(d.mem_create, "cuMemCreate");
  sym(d.mem_release, "cuMemRelease");
  sym(d.array_create, "cuArrayCreate_v2");
  sym(d.array3d_create, "cuArray3DCreate_v2");
  sym(d.array_destroy, "cuArrayDestroy");
  sym(d.mipmap_create, "cuMipmappedArrayCreate");
  sym(d.mipmap_destroy, "cuMipmappedArrayDestroy");
  sym(d.get_proc, "cuGetProcAddress_v2");
  return d;
}
#elif defined(CLIENT_LOAD_PROC)
constexpr const char* k_name = "client_procaddr";
driver load() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  driver d;
  d.get_proc = reinterpret_cast<decltype(d.get_proc)>(dlsym(h, "cuGetProcAddress_v2"));
  CLIENT_REQUIRE(d.get_proc != nullptr);
  // The runtime asks for cuGetProcAddress itself too, and uses what it gets from then on.
  void* gp = nullptr;
  CUdriverProcAddressQueryResult st{};
  CLIENT_REQUIRE(d.get_proc("cuGetProcAddress", &gp, client::k_runtime_version, 0, &st) ==
                 CUDA_SUCCESS);
  d.get_proc = reinterpret_cast<decltype(d.get_proc)>(gp);
  auto sym = [&](auto& fn, const char* base, cuuint64_t flags) {
    void* p = nullptr;
    CUdriverProcAddressQueryResult status{};
    if (d.get_proc(base, &p, client::k_runtime_version, flags, &status) == CUDA_SUCCESS &&
        status == CU_GET_PROC_ADDRESS_SUCCESS) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)> >(p);
    }
  };
  constexpr cuuint64_t k_legacy = CU_GET_PROC_ADDRESS_DEFAULT;
  // Stream-ordered calls through their per-thread-default-stream (_ptsz) variants.
  constexpr cuuint64_t k_ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  sym(d.init, "cuInit", k_legacy);
  sym(d.device_get, "cuDeviceGet", k_legacy);
  sym(d.device_count, "cuDeviceGetCount", k_legacy);
  sym(d.device_uuid, "cuDeviceGetUuid", k_legacy);
  sym(d.total_mem, "cuDeviceTotalMem", k_legacy);
  sym(d.ctx_retain, "cuDevicePrimaryCtxRetain", k_legacy);
  sym(d.ctx_set, "cuCtxSetCurrent", k_legacy);
  sym(d.mem_info, "cuMemGetInfo", k_legacy);
  sym(d.alloc, "cuMemAlloc", k_legacy);
  sym(d.free, "cuMemFree", k_legacy);
  sym(d.alloc_pitch, "cuMemAllocPitch", k_legacy);
  sym(d.alloc_managed, "cuMemAllocManaged", k_legacy);
  sym(d.alloc_async, "cuMemAllocAsync", k_ptds);
  sym(d.free_async, "cuMemFreeAsync", k_ptds);
  sym(d.alloc_pool, "cuMemAllocFromPoolAsync", k_ptds);
  sym(d.pool_create, "cuMemPoolCreate", k_legacy);
  sym(d.pool_destroy, "cuMemPoolDestroy", k_legacy);
  sym(d.stream_create, "cuStreamCreate", k_legacy);
  sym(d.stream_destroy, "cuStreamDestroy", k_legacy);
  sym(d.stream_sync, "cuStreamSynchronize", k_ptds);
  sym(d.mem_create, "cuMemCreate", k_legacy);
  sym(d.mem_release, "cuMemRelease", k_legacy);
  sym(d.array_create, "cuArrayCreate", k_legacy);
  sym(d.array3d_create, "cuArray3DCreate", k_legacy);
  sym(d.array_destroy, "cuArrayDestroy", k_legacy);
  sym(d.mipmap_create, "cuMipmappedArrayCreate", k_legacy);
  sym(d.mipmap_destroy, "cuMipmappedArrayDestroy", k_legacy);
  return d;
}
#else
#error "define CLIENT_LOAD_DIRECT, CLIENT_LOAD_DLOPEN or CLIENT_LOAD_PROC"
#endif

/// What the fake driver really holds on physical device \p p for this process (context and
/// allocations), read from the fake, not through the shim.
std::uint64_t physical_used(int p) {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  auto used = reinterpret_cast<std::uint64_t (*)(int)>(dlsym(h, "fake_cuda_physical_used"));
  CLIENT_REQUIRE(used != nullptr);
  return used(p);
}

/// This process's pid in the outermost namespace its /proc shows (NSpid's first field).
std::uint64_t outer_pid() {
  FILE* f = std::fopen("/proc/self/status", "re");
  CLIENT_REQUIRE(f != nullptr);
  char line[512];
  std::uint64_t outer = static_cast<std::uint64_t>(getpid());
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "NSpid:", 6) == 0) outer = std::strtoull(line + 6, nullptr, 10);
  }
  std::fclose(f);
  return outer;
}

/// True when the fake driver's cuInit ran in this process.
bool cuda_initialised() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  auto init = reinterpret_cast<int (*)()>(dlsym(h, "fake_cuda_initialised"));
  CLIENT_REQUIRE(init != nullptr);
  return init() != 0;
}

std::uint64_t limit_bytes() {
  const std::uint64_t l = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  CLIENT_REQUIRE(l != 0);
  return l;
}

void use_device(const driver& d, int ordinal) {
  CUcontext ctx = nullptr;
  CLIENT_REQUIRE(d.ctx_retain(&ctx, ordinal) == CUDA_SUCCESS);
  CLIENT_REQUIRE(d.ctx_set(ctx) == CUDA_SUCCESS);
}

std::uint64_t free_now(const driver& d) {
  size_t free_b = 0, total_b = 0;
  CLIENT_CHECK(d.mem_info(&free_b, &total_b) == CUDA_SUCCESS);
  return free_b;
}

std::uint64_t total_now(const driver& d) {
  size_t free_b = 0, total_b = 0;
  CLIENT_CHECK(d.mem_info(&free_b, &total_b) == CUDA_SUCCESS);
  return total_b;
}

/// NVML's view of physical device \p index (through dlopen + dlsym, as nvidia-smi does).
nvmlMemory_v2_t nvml_memory(unsigned index) {
  void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  auto init = reinterpret_cast<decltype(&nvmlInit_v2)>(dlsym(h, "nvmlInit_v2"));
  auto by_index = reinterpret_cast<decltype(&nvmlDeviceGetHandleByIndex_v2)>(
      dlsym(h, "nvmlDeviceGetHandleByIndex_v2"));
  auto info_v1 =
      reinterpret_cast<decltype(&nvmlDeviceGetMemoryInfo)>(dlsym(h, "nvmlDeviceGetMemoryInfo"));
  auto info_v2 = reinterpret_cast<decltype(&nvmlDeviceGetMemoryInfo_v2)>(
      dlsym(h, "nvmlDeviceGetMemoryInfo_v2"));
  CLIENT_REQUIRE(init && by_index && info_v1 && info_v2);
  CLIENT_REQUIRE(init() == NVML_SUCCESS);
  nvmlDevice_t dev = nullptr;
  CLIENT_REQUIRE(by_index(index, &dev) == NVML_SUCCESS);
  nvmlMemory_t v1{};
  CLIENT_CHECK(info_v1(dev, &v1) == NVML_SUCCESS);
  nvmlMemory_v2_t v2{};
  v2.version = nvmlMemory_v2;
  CLIENT_CHECK(info_v2(dev, &v2) == NVML_SUCCESS);
  CLIENT_CHECK_EQ(v1.total, v2.total);
  CLIENT_CHECK_EQ(v1.free, v2.free);
  CLIENT_CHECK_EQ(v1.used, v2.used);
  return v2;
}

/// Allocates k_chunk blocks until refused; returns them. The refusal must be OUT_OF_MEMORY.
std::vector<CUdeviceptr> fill(const driver& d) {
  std::vector<CUdeviceptr> held;
  for (;;) {
    CUdeviceptr p = 0;
    const CUresult r = d.alloc(&p, k_chunk);
    if (r != CUDA_SUCCESS) {
      CLIENT_CHECK_EQ(r, CUDA_ERROR_OUT_OF_MEMORY);
      break;
    }
    held.push_back(p);
    CLIENT_REQUIRE(held.size() < 100000);
  }
  return held;
}

void check_ledger(std::uint64_t limit, std::uint64_t used) {
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  if (path == nullptr) return;
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok());
  CLIENT_REQUIRE(!snap->devices.empty());
  CLIENT_CHECK_EQ(snap->devices[0].limit, limit);
  CLIENT_CHECK_EQ(snap->devices[0].used, used);
}

int quota(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);

  // Views report the limit.
  size_t total = 0;
  CLIENT_CHECK(d.total_mem(&total, 0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(total, limit);
  CLIENT_CHECK_EQ(total_now(d), limit);
  CLIENT_CHECK_EQ(free_now(d), limit);
  const nvmlMemory_v2_t before = nvml_memory(0);
  CLIENT_CHECK_EQ(before.total, limit);
  CLIENT_CHECK_EQ(before.free, limit);
  CLIENT_CHECK_EQ(before.used, 0u);

  // Allocation until refused: never over the limit, refused with OUT_OF_MEMORY, one log line.
  client::stderr_capture log;
  std::vector<CUdeviceptr> held = fill(d);
  const std::string lines = log.take();
  CLIENT_CHECK_EQ(held.size(), limit / k_chunk);
  CLIENT_CHECK(held.size() * k_chunk <= limit);
  CLIENT_CHECK_EQ(free_now(d), limit - held.size() * k_chunk);
  CLIENT_CHECK(lines.find("cuMemAlloc_v2: device 0 (GPU-5a1ce000-0000-4000-8000-0000000000a0)") !=
               std::string::npos);
  CLIENT_CHECK(lines.find("refused") != std::string::npos);
  CLIENT_CHECK(lines.find("of limit") != std::string::npos);
  const nvmlMemory_v2_t full = nvml_memory(0);
  CLIENT_CHECK_EQ(full.used, held.size() * k_chunk);
  check_ledger(limit, held.size() * k_chunk);

  // Frees give the quota back.
  CLIENT_CHECK(d.free(held.back()) == CUDA_SUCCESS);
  held.pop_back();
  CUdeviceptr again = 0;
  CLIENT_CHECK(d.alloc(&again, k_chunk) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free(again) == CUDA_SUCCESS);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(free_now(d), limit);

  // Pitched: charged at the pitch the driver chose, times the height.
  {
    CUdeviceptr p = 0;
    size_t pitch = 0;
    constexpr size_t k_width = 1000, k_height = 100;
    CLIENT_CHECK(d.alloc_pitch(&p, &pitch, k_width, k_height, 4) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(pitch, (k_width + k_fake_pitch - 1) / k_fake_pitch * k_fake_pitch);
    CLIENT_CHECK_EQ(free_now(d), limit - pitch * k_height);
    CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
    CLIENT_CHECK(d.alloc_pitch(&p, &pitch, limit, 2, 4) == CUDA_ERROR_OUT_OF_MEMORY);
  }
  // Managed.
  {
    CUdeviceptr p = 0;
    CLIENT_CHECK(d.alloc_managed(&p, k_mib, CU_MEM_ATTACH_GLOBAL) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit - k_mib);
    CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
    CLIENT_CHECK(d.alloc_managed(&p, limit + 1, CU_MEM_ATTACH_GLOBAL) == CUDA_ERROR_OUT_OF_MEMORY);
  }
  // Stream-ordered, from the default pool and from an explicit pool.
  {
    CUstream stream = nullptr;
    CLIENT_REQUIRE(d.stream_create(&stream, 0) == CUDA_SUCCESS);
    CUdeviceptr p = 0;
    CLIENT_CHECK(d.alloc_async(&p, 2 * k_mib, stream) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit - 2 * k_mib);
    CUdeviceptr q = 0;
    CLIENT_CHECK(d.alloc_async(&q, limit, stream) == CUDA_ERROR_OUT_OF_MEMORY);
    CLIENT_CHECK(d.free_async(p, stream) == CUDA_SUCCESS);
    // The pool keeps the freed memory until a synchronisation (release threshold 0).
    CLIENT_CHECK_EQ(physical_used(0), 2 * k_mib);
    CLIENT_CHECK_EQ(free_now(d), limit - 2 * k_mib);
    CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(physical_used(0), 0u);
    CLIENT_CHECK_EQ(free_now(d), limit);

    CUmemPoolProps props{};
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    CUmemoryPool pool = nullptr;
    CLIENT_REQUIRE(d.pool_create(&pool, &props) == CUDA_SUCCESS);
    CLIENT_CHECK(d.alloc_pool(&p, 3 * k_mib, pool, stream) == CUDA_SUCCESS);
    // The pool reserves whole 2 MiB granules: 4 MiB are held, and charged.
    CLIENT_CHECK_EQ(physical_used(0), 4 * k_mib);
    CLIENT_CHECK_EQ(free_now(d), limit - 4 * k_mib);
    CLIENT_CHECK(d.alloc_pool(&q, limit, pool, stream) == CUDA_ERROR_OUT_OF_MEMORY);
    CLIENT_CHECK(d.free_async(p, stream) == CUDA_SUCCESS);
    CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit);
    CLIENT_CHECK(d.pool_destroy(pool) == CUDA_SUCCESS);
    CLIENT_CHECK(d.stream_destroy(stream) == CUDA_SUCCESS);
  }
  // VMM physical memory (PyTorch expandable segments, NCCL).
  {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUmemGenericAllocationHandle h = 0;
    CLIENT_CHECK(d.mem_create(&h, k_vmm_granularity, &prop, 0) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit - k_vmm_granularity);
    CUmemGenericAllocationHandle big = 0;
    const size_t over = (limit / k_vmm_granularity + 1) * k_vmm_granularity;
    CLIENT_CHECK(d.mem_create(&big, over, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY);
    CLIENT_CHECK(d.mem_release(h) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit);
    // Host-located physical memory takes no device memory and is not charged.
    prop.location.type = CU_MEM_LOCATION_TYPE_HOST;
    CLIENT_CHECK(d.mem_create(&h, k_vmm_granularity, &prop, 0) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit);
    CLIENT_CHECK(d.mem_release(h) == CUDA_SUCCESS);
  }
  // Arrays: charged at the driver's memory requirement (rows padded), not the descriptor.
  {
    CUDA_ARRAY_DESCRIPTOR a{};
    a.Width = 100;
    a.Height = 10;
    a.Format = CU_AD_FORMAT_FLOAT;
    a.NumChannels = 1;
    CUarray arr = nullptr;
    CLIENT_CHECK(d.array_create(&arr, &a) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit - k_fake_pitch * 10);
    CLIENT_CHECK(d.array_destroy(arr) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit);

    CUDA_ARRAY3D_DESCRIPTOR b{};
    b.Width = 64;
    b.Height = 64;
    b.Depth = 4;
    b.Format = CU_AD_FORMAT_FLOAT;
    b.NumChannels = 1;
    CLIENT_CHECK(d.array3d_create(&arr, &b) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit - k_fake_pitch * 64 * 4);
    CLIENT_CHECK(d.array_destroy(arr) == CUDA_SUCCESS);

    CUmipmappedArray mip = nullptr;
    b.Depth = 0;
    CLIENT_CHECK(d.mipmap_create(&mip, &b, 3) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit - k_fake_pitch * (64 + 32 + 16));
    CLIENT_CHECK(d.mipmap_destroy(mip) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(d), limit);

    b.Width = limit;  // the descriptor alone is over the limit
    b.Height = 2;
    CLIENT_CHECK(d.array3d_create(&arr, &b) == CUDA_ERROR_OUT_OF_MEMORY);
  }
  CLIENT_CHECK_EQ(free_now(d), limit);
  check_ledger(limit, 0);
  return client::finish(k_name);
}

/// CUDA_VISIBLE_DEVICES reorders devices: ordinal 0 is physical P0, ordinal 1 physical P1.
/// CUDA_DEVICE_MEMORY_LIMIT_0 follows ordinal 0, whatever its physical index.
int visible(const driver& d, int p0, int p1) {
  const std::uint64_t limit = limit_bytes();
  const std::uint64_t limit0 = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT_0", 0);
  CLIENT_REQUIRE(limit0 != 0 && limit0 != limit);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  int count = 0;
  CLIENT_CHECK(d.device_count(&count) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(count, 2);
  CUuuid u{};
  CLIENT_CHECK(d.device_uuid(&u, 0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(static_cast<unsigned char>(u.bytes[15]), 0xa0u + static_cast<unsigned>(p0));
  CLIENT_CHECK(d.device_uuid(&u, 1) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(static_cast<unsigned char>(u.bytes[15]), 0xa0u + static_cast<unsigned>(p1));
  size_t total = 0;
  CLIENT_CHECK(d.total_mem(&total, 0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(total, limit0);
  CLIENT_CHECK(d.total_mem(&total, 1) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(total, limit);

  // Allocations on each ordinal stop at that ordinal's limit.
  use_device(d, 0);
  std::vector<CUdeviceptr> on0 = fill(d);
  CLIENT_CHECK_EQ(on0.size(), limit0 / k_chunk);
  use_device(d, 1);
  std::vector<CUdeviceptr> on1 = fill(d);
  CLIENT_CHECK_EQ(on1.size(), limit / k_chunk);
  CLIENT_CHECK_EQ(free_now(d), 0u);

  // NVML (physical order) sees the same limits on the same physical devices.
  CLIENT_CHECK_EQ(nvml_memory(static_cast<unsigned>(p0)).total, limit0);
  CLIENT_CHECK_EQ(nvml_memory(static_cast<unsigned>(p0)).used, on0.size() * k_chunk);
  CLIENT_CHECK_EQ(nvml_memory(static_cast<unsigned>(p1)).total, limit);
  // The ledger is keyed by UUID: the record of P0's UUID holds ordinal 0's limit.
  if (const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE")) {
    auto snap = gpuslice::memory::read_snapshot(path);
    CLIENT_REQUIRE(snap.ok());
    char want[64];
    std::snprintf(want, sizeof want, "GPU-5a1ce000-0000-4000-8000-0000000000a%d", p0);
    bool found = false;
    for (const auto& dev : snap->devices) {
      if (dev.uuid == want) {
        found = true;
        CLIENT_CHECK_EQ(dev.limit, limit0);
        CLIENT_CHECK_EQ(dev.used, on0.size() * k_chunk);
      }
    }
    CLIENT_CHECK(found);
  }
  for (CUdeviceptr p : on1) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  use_device(d, 0);
  for (CUdeviceptr p : on0) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(free_now(d), limit0);
  return client::finish(k_name);
}

/// Context memory (FAKE_CUDA_CONTEXT_BYTES) is reconciled from NVML and charged from the
/// context's creation on, whatever pid NVML lists this process under (FAKE_NVML_PID_OFFSET), and
/// never a neighbour's memory (FAKE_NVML_NEIGHBOUR_BYTES, one of them listed under this process's
/// own getpid()). Physically: the fake never holds more than the limit, and what fits succeeds.
int overhead(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const std::uint64_t ctx = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  CLIENT_REQUIRE(ctx != 0 && ctx % k_chunk == 0);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  client::stderr_capture log;
  use_device(d, 0);
  // Shown as used from the context on, before any allocation, in both views.
  CLIENT_CHECK_EQ(free_now(d), limit - ctx);
  CLIENT_CHECK_EQ(nvml_memory(0).used, ctx);
  std::vector<CUdeviceptr> held = fill(d);
  const std::string lines = log.take();
  CLIENT_CHECK_EQ(held.size(), (limit - ctx) / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  CLIENT_CHECK_EQ(physical_used(0), ctx + held.size() * k_chunk);
  CLIENT_CHECK_EQ(nvml_memory(0).used, ctx + held.size() * k_chunk);
  const std::uint64_t host = outer_pid() + client::env_bytes("FAKE_NVML_PID_OFFSET", 0);
  if (host != static_cast<std::uint64_t>(getpid())) {
    // Identified under the host's pid, not getpid(); by NSpid when the host's /proc shows it.
    const std::string want = "NVML lists this process as pid " + std::to_string(host) + " ";
    CLIENT_CHECK(lines.find(want) != std::string::npos);
    if (std::getenv("EXPECT_NSPID") != nullptr) {
      CLIENT_CHECK(lines.find("found by NSpid and verified") != std::string::npos);
    }
  }
  check_ledger(limit, ctx + held.size() * k_chunk);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(free_now(d), limit - ctx);
  return client::finish(k_name);
}

/// Stream-ordered pools that keep what they free (a release threshold as high as PyTorch's
/// cudaMallocAsync backend and RMM set): the pool's reserve stays charged until the pool gives it
/// back; a refused reservation trims this process's pools first, so what fits still succeeds;
/// pools located on the host are never charged. Physically: the fake never holds more than the
/// limit at any step.
int pools(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  auto set_attr =
      reinterpret_cast<decltype(&cuMemPoolSetAttribute)>(dlsym(h, "cuMemPoolSetAttribute"));
  auto default_pool =
      reinterpret_cast<decltype(&cuDeviceGetDefaultMemPool)>(dlsym(h, "cuDeviceGetDefaultMemPool"));
  CLIENT_REQUIRE(set_attr != nullptr && default_pool != nullptr);
  CUmemoryPool pool = nullptr;
  CLIENT_REQUIRE(default_pool(&pool, 0) == CUDA_SUCCESS);
  cuuint64_t keep_all = ~cuuint64_t{0};
  CLIENT_REQUIRE(set_attr(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all) == CUDA_SUCCESS);
  CUstream stream = nullptr;
  CLIENT_REQUIRE(d.stream_create(&stream, 0) == CUDA_SUCCESS);

  // Fill the quota through the pool, free everything, synchronise: the pool keeps it all.
  std::vector<CUdeviceptr> held;
  for (;;) {
    CUdeviceptr p = 0;
    if (d.alloc_async(&p, k_chunk, stream) != CUDA_SUCCESS) break;
    held.push_back(p);
    CLIENT_REQUIRE(held.size() < 100000);
  }
  CLIENT_CHECK_EQ(held.size(), limit / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free_async(p, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), held.size() * k_chunk);  // kept by the pool
  CLIENT_CHECK_EQ(free_now(d), limit - held.size() * k_chunk);

  // Plain allocations now: the first refusal trims the pool, then all that fits succeeds.
  std::vector<CUdeviceptr> plain;
  for (;;) {
    CUdeviceptr p = 0;
    if (d.alloc(&p, k_chunk) != CUDA_SUCCESS) break;
    plain.push_back(p);
    CLIENT_CHECK(physical_used(0) <= limit);
    CLIENT_REQUIRE(plain.size() < 100000);
  }
  CLIENT_CHECK_EQ(plain.size(), limit / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr p : plain) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);

  // Reused from the pool's reserve after a partial trim, the pool again fills the quota.
  held.clear();
  for (;;) {
    CUdeviceptr p = 0;
    if (d.alloc_async(&p, k_chunk, stream) != CUDA_SUCCESS) break;
    held.push_back(p);
    CLIENT_CHECK(physical_used(0) <= limit);
    CLIENT_REQUIRE(held.size() < 100000);
  }
  CLIENT_CHECK_EQ(held.size(), limit / k_chunk);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free_async(p, stream) == CUDA_SUCCESS);

  // A pool on the host takes no device memory and is never charged.
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_HOST;
  CUmemoryPool host_pool = nullptr;
  CLIENT_REQUIRE(d.pool_create(&host_pool, &props) == CUDA_SUCCESS);
  const std::uint64_t before = physical_used(0);
  const std::uint64_t free_before = free_now(d);
  CUdeviceptr hp = 0;
  CLIENT_CHECK(d.alloc_pool(&hp, 2 * limit, host_pool, stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), before);
  CLIENT_CHECK_EQ(free_now(d), free_before);
  CLIENT_CHECK(d.free_async(hp, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.pool_destroy(host_pool) == CUDA_SUCCESS);

  // A created device pool: destroyed, its reserve is given back.
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool mine = nullptr;
  CLIENT_REQUIRE(d.pool_create(&mine, &props) == CUDA_SUCCESS);
  CLIENT_REQUIRE(set_attr(mine, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all) == CUDA_SUCCESS);
  CUdeviceptr mp = 0;
  CLIENT_CHECK(d.alloc_pool(&mp, k_chunk, mine, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(physical_used(0) <= limit);
  CLIENT_CHECK(d.free_async(mp, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.pool_destroy(mine) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_destroy(stream) == CUDA_SUCCESS);
  // Only the default pool's reserve is held and charged.
  CLIENT_CHECK_EQ(limit - free_now(d), physical_used(0));
  CLIENT_CHECK(physical_used(0) <= limit);
  return client::finish(k_name);
}

/// VMM as NVIDIA's vectorAddMMAP sample uses it: handles released right after they are mapped
/// keep their memory, and their charge, until unmapped; a handle retained from a mapping keeps it
/// past the unmap until released again. Physically: the fake never holds more than the limit.
int vmm(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto reserve =
      reinterpret_cast<decltype(&cuMemAddressReserve)>(dlsym(lib, "cuMemAddressReserve"));
  auto addr_free = reinterpret_cast<decltype(&cuMemAddressFree)>(dlsym(lib, "cuMemAddressFree"));
  auto map = reinterpret_cast<decltype(&cuMemMap)>(dlsym(lib, "cuMemMap"));
  auto unmap = reinterpret_cast<decltype(&cuMemUnmap)>(dlsym(lib, "cuMemUnmap"));
  auto retain = reinterpret_cast<decltype(&cuMemRetainAllocationHandle)>(
      dlsym(lib, "cuMemRetainAllocationHandle"));
  CLIENT_REQUIRE(reserve && addr_free && map && unmap && retain);
  constexpr std::size_t k_piece = 4 * k_vmm_granularity;  // 8 MiB
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  CUdeviceptr va = 0;
  CLIENT_REQUIRE(reserve(&va, 2 * k_piece, 0, 0, 0) == CUDA_SUCCESS);
  CUmemGenericAllocationHandle h[2] = {};
  for (int i = 0; i < 2; ++i) {
    CLIENT_REQUIRE(d.mem_create(&h[i], k_piece, &prop, 0) == CUDA_SUCCESS);
    CLIENT_REQUIRE(map(va + i * k_piece, k_piece, 0, h[i], 0) == CUDA_SUCCESS);
    CLIENT_CHECK(d.mem_release(h[i]) == CUDA_SUCCESS);  // still mapped: the memory stays
  }
  CLIENT_CHECK_EQ(physical_used(0), 2 * k_piece);
  CLIENT_CHECK_EQ(free_now(d), limit - 2 * k_piece);
  std::vector<CUdeviceptr> held = fill(d);
  CLIENT_CHECK_EQ(held.size(), (limit - 2 * k_piece) / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);

  // A handle retained from the second mapping outlives the unmap.
  CUmemGenericAllocationHandle again = 0;
  CLIENT_CHECK(retain(&again, reinterpret_cast<void*>(va + k_piece)) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(again, h[1]);
  CLIENT_CHECK(unmap(va, 2 * k_piece) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), k_piece);
  CLIENT_CHECK_EQ(free_now(d), limit - k_piece);
  held = fill(d);
  CLIENT_CHECK_EQ(held.size(), (limit - k_piece) / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK(d.mem_release(again) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), 0u);
  CLIENT_CHECK_EQ(free_now(d), limit);
  CLIENT_CHECK(addr_free(va, 2 * k_piece) == CUDA_SUCCESS);
  check_ledger(limit, 0);
  return client::finish(k_name);
}

/// Arrays of every kind of format (normalised, block-compressed, video), layered mip chains and
/// deferred-mapping arrays: what the shim charges is what the fake driver really holds for each,
/// and arrays fill the quota exactly. The real driver's requirement query answers only for
/// deferred-mapping arrays, as the fake's does.
int arrays(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  const auto charged = [&] { return limit - free_now(d); };
  const auto check_3d = [&](CUarray_format f, unsigned channels, size_t w, size_t h, size_t depth,
                            unsigned flags, unsigned levels) {
    CUDA_ARRAY3D_DESCRIPTOR desc{};
    desc.Width = w;
    desc.Height = h;
    desc.Depth = depth;
    desc.Format = f;
    desc.NumChannels = channels;
    desc.Flags = flags;
    if (levels == 0) {
      CUarray a = nullptr;
      CLIENT_CHECK(d.array3d_create(&a, &desc) == CUDA_SUCCESS);
      CLIENT_CHECK_EQ(charged(), physical_used(0));
      CLIENT_CHECK(physical_used(0) != 0);
      CLIENT_CHECK(d.array_destroy(a) == CUDA_SUCCESS);
    } else {
      CUmipmappedArray m = nullptr;
      CLIENT_CHECK(d.mipmap_create(&m, &desc, levels) == CUDA_SUCCESS);
      CLIENT_CHECK_EQ(charged(), physical_used(0));
      CLIENT_CHECK(physical_used(0) != 0);
      CLIENT_CHECK(d.mipmap_destroy(m) == CUDA_SUCCESS);
    }
    CLIENT_CHECK_EQ(charged(), 0u);
  };
  check_3d(CU_AD_FORMAT_UNORM_INT8X4, 1, 100, 10, 0, 0, 0);
  check_3d(CU_AD_FORMAT_SNORM_INT16X2, 1, 300, 7, 5, 0, 0);
  check_3d(CU_AD_FORMAT_BC1_UNORM, 1, 256, 256, 0, 0, 0);
  check_3d(CU_AD_FORMAT_BC7_UNORM, 1, 1024, 1024, 0, 0, 9);
  check_3d(CU_AD_FORMAT_NV12, 1, 640, 480, 0, 0, 0);
  check_3d(CU_AD_FORMAT_FLOAT, 4, 64, 64, 6, CUDA_ARRAY3D_LAYERED, 7);  // 6 layers, full chain
  check_3d(CU_AD_FORMAT_HALF, 2, 128, 128, 6, CUDA_ARRAY3D_CUBEMAP, 3);

  // Deferred mapping: no memory of its own; only then does the requirement query answer.
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto requirements = reinterpret_cast<decltype(&cuArrayGetMemoryRequirements)>(
      dlsym(lib, "cuArrayGetMemoryRequirements"));
  CLIENT_REQUIRE(requirements != nullptr);
  CUDA_ARRAY3D_DESCRIPTOR desc{};
  desc.Width = 512;
  desc.Height = 512;
  desc.Format = CU_AD_FORMAT_UNORM_INT8X4;
  desc.NumChannels = 1;
  desc.Flags = CUDA_ARRAY3D_DEFERRED_MAPPING;
  CUarray deferred = nullptr;
  CLIENT_CHECK(d.array3d_create(&deferred, &desc) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), 0u);
  CLIENT_CHECK_EQ(charged(), 0u);
  CUDA_ARRAY_MEMORY_REQUIREMENTS req{};
  CLIENT_CHECK(requirements(&req, deferred, 0) == CUDA_SUCCESS);
  CLIENT_CHECK(req.size >= 512 * 512 * 4);
  CLIENT_CHECK(d.array_destroy(deferred) == CUDA_SUCCESS);

  // 1 MiB arrays (rows of 2048 bytes, 512 rows) fill the quota exactly.
  desc.Flags = 0;
  std::vector<CUarray> held;
  for (;;) {
    CUarray a = nullptr;
    if (d.array3d_create(&a, &desc) != CUDA_SUCCESS) break;
    held.push_back(a);
    CLIENT_REQUIRE(held.size() < 100000);
  }
  CLIENT_CHECK_EQ(held.size(), limit / k_mib);
  CLIENT_CHECK(physical_used(0) <= limit);
  CLIENT_CHECK(requirements(&req, held.front(), 0) == CUDA_ERROR_INVALID_VALUE);
  for (CUarray a : held) CLIENT_CHECK(d.array_destroy(a) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(charged(), 0u);
  return client::finish(k_name);
}

/// Context teardown (the last primary release, a primary reset, cuCtxDestroy) frees the
/// context's memory in the driver: the charges go with it, so the next context gets the whole
/// quota again, and its context memory is counted afresh.
int teardown(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const std::uint64_t ctx_bytes = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  CLIENT_REQUIRE(ctx_bytes % k_chunk == 0);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto release = reinterpret_cast<decltype(&cuDevicePrimaryCtxRelease_v2)>(
      dlsym(lib, "cuDevicePrimaryCtxRelease_v2"));
  auto reset = reinterpret_cast<decltype(&cuDevicePrimaryCtxReset_v2)>(
      dlsym(lib, "cuDevicePrimaryCtxReset_v2"));
  auto create = reinterpret_cast<decltype(&cuCtxCreate_v4)>(dlsym(lib, "cuCtxCreate_v4"));
  auto destroy = reinterpret_cast<decltype(&cuCtxDestroy_v2)>(dlsym(lib, "cuCtxDestroy_v2"));
  CLIENT_REQUIRE(release && reset && create && destroy);
  const auto round = [&](const char* how) {
    std::vector<CUdeviceptr> held = fill(d);
    if (held.size() != (limit - ctx_bytes) / k_chunk) std::fprintf(stdout, "round: %s\n", how);
    CLIENT_CHECK_EQ(held.size(), (limit - ctx_bytes) / k_chunk);
    CLIENT_CHECK(physical_used(0) <= limit);
    return held.size();
  };
  // The last primary release, with an array made in the context.
  use_device(d, 0);
  CUDA_ARRAY_DESCRIPTOR desc{};
  desc.Width = 1024;
  desc.Height = 1024;
  desc.Format = CU_AD_FORMAT_UNSIGNED_INT8;
  desc.NumChannels = 4;
  CUarray array = nullptr;
  CLIENT_REQUIRE(d.array_create(&array, &desc) == CUDA_SUCCESS);  // 4 MiB
  std::vector<CUdeviceptr> first = fill(d);
  CLIENT_CHECK_EQ(first.size() + 1, (limit - ctx_bytes) / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  CLIENT_CHECK(release(0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), 0u);
  CLIENT_CHECK_EQ(nvml_memory(0).used, 0u);
  CLIENT_CHECK(d.array_destroy(array) == CUDA_SUCCESS);  // its memory went with the context
  // A primary reset, with references still held.
  use_device(d, 0);
  round("after the last primary release");
  CUcontext extra = nullptr;
  CLIENT_REQUIRE(d.ctx_retain(&extra, 0) == CUDA_SUCCESS);  // two references now
  CLIENT_CHECK(reset(0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), 0u);
  CLIENT_CHECK_EQ(nvml_memory(0).used, 0u);
  // cuCtxDestroy of a context of its own.
  CUcontext own = nullptr;
  CLIENT_REQUIRE(create(&own, nullptr, 0, 0) == CUDA_SUCCESS);
  round("after a primary reset");
  CLIENT_CHECK(destroy(own) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), 0u);
  CLIENT_CHECK_EQ(nvml_memory(0).used, 0u);
  use_device(d, 0);
  round("after cuCtxDestroy");
  return client::finish(k_name);
}

/// Stream capture: cuMemAllocAsync on a capturing stream makes a graph memory node, not memory
/// (the graph allocator reserves it when the graph runs), so nothing is charged at capture and a
/// capture that is never launched leaves no charge behind; a captured free of real memory keeps
/// its charge, since the memory goes only when the graph runs. Charged = held, throughout.
int capture(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto begin =
      reinterpret_cast<decltype(&cuStreamBeginCapture_v2)>(dlsym(lib, "cuStreamBeginCapture_v2"));
  auto end = reinterpret_cast<decltype(&cuStreamEndCapture)>(dlsym(lib, "cuStreamEndCapture"));
  auto destroy = reinterpret_cast<decltype(&cuGraphDestroy)>(dlsym(lib, "cuGraphDestroy"));
  CLIENT_REQUIRE(begin && end && destroy);
  const auto charged = [&] { return limit - free_now(d); };
  CUstream stream = nullptr;
  CLIENT_REQUIRE(d.stream_create(&stream, 0) == CUDA_SUCCESS);
  CUdeviceptr real_mem = 0;
  CLIENT_REQUIRE(d.alloc(&real_mem, k_chunk) == CUDA_SUCCESS);

  CLIENT_REQUIRE(begin(stream, CU_STREAM_CAPTURE_MODE_RELAXED) == CUDA_SUCCESS);
  CUdeviceptr node = 0, scratch = 0;
  CLIENT_CHECK(d.alloc_async(&node, 2 * limit, stream) == CUDA_SUCCESS);  // a node, not memory
  CLIENT_CHECK(d.alloc_async(&scratch, k_chunk, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free_async(scratch, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free_async(real_mem, stream) == CUDA_SUCCESS);  // freed when the graph runs
  CLIENT_CHECK_EQ(physical_used(0), k_chunk);
  CLIENT_CHECK_EQ(charged(), k_chunk);
  CUgraph graph = nullptr;
  CLIENT_CHECK(end(stream, &graph) == CUDA_SUCCESS);
  CLIENT_CHECK(destroy(graph) == CUDA_SUCCESS);  // never launched
  CLIENT_CHECK_EQ(physical_used(0), k_chunk);
  CLIENT_CHECK_EQ(charged(), k_chunk);

  // What fits still fits: nothing of the capture is charged.
  std::vector<CUdeviceptr> held = fill(d);
  CLIENT_CHECK_EQ(held.size(), limit / k_chunk - 1);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free(real_mem) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(charged(), 0u);
  CLIENT_CHECK(d.stream_destroy(stream) == CUDA_SUCCESS);
  return client::finish(k_name);
}

/// Graph memory, as cuda.h documents it: a graph's allocation nodes get their memory from the
/// graph allocator when the graph is uploaded or launched; the driver keeps that reserve after
/// the graph's frees, for later launches, and gives it back only on cuDeviceGraphMemTrim. The
/// shim counts it from the upload or launch on (context included): what the driver holds for
/// this process never exceeds the limit, an allocation that would put it over beside the
/// reserve is refused (after the shim trimmed what no live graph allocation uses), and after
/// cuDeviceGraphMemTrim the memory is usable again.
int graph_memory(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const std::uint64_t ctx = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  CLIENT_REQUIRE(limit == 64 * k_mib && ctx == 8 * k_mib);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto fn = [&](auto& f, const char* name) {
    f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(lib, name));
    CLIENT_REQUIRE(f != nullptr);
  };
  decltype(&cuStreamBeginCapture_v2) begin = nullptr;
  decltype(&cuStreamEndCapture) end = nullptr;
  decltype(&cuGraphInstantiateWithFlags) instantiate = nullptr;
  decltype(&cuGraphDestroy) graph_destroy = nullptr;
  decltype(&cuGraphExecDestroy) exec_destroy = nullptr;
  decltype(&cuGraphLaunch) launch = nullptr;
  decltype(&cuGraphUpload) upload = nullptr;
  decltype(&cuDeviceGraphMemTrim) trim = nullptr;
  decltype(&cuDeviceGetGraphMemAttribute) attribute = nullptr;
  fn(begin, "cuStreamBeginCapture_v2");
  fn(end, "cuStreamEndCapture");
  fn(instantiate, "cuGraphInstantiateWithFlags");
  fn(graph_destroy, "cuGraphDestroy");
  fn(exec_destroy, "cuGraphExecDestroy");
  fn(launch, "cuGraphLaunch");
  fn(upload, "cuGraphUpload");
  fn(trim, "cuDeviceGraphMemTrim");
  fn(attribute, "cuDeviceGetGraphMemAttribute");
  const auto graph_mem = [&](CUgraphMem_attribute a) {
    cuuint64_t v = 0;
    CLIENT_CHECK(attribute(0, a, &v) == CUDA_SUCCESS);
    return static_cast<std::uint64_t>(v);
  };
  const auto reserved = [&] { return graph_mem(CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT); };
  const auto charged = [&] { return limit - free_now(d); };
  const auto held_ok = [&](const char* when) {
    const std::uint64_t held = physical_used(0);
    std::fprintf(stdout, "%s: driver holds %llu MiB, charged %llu MiB, graph reserve %llu MiB\n",
                 when, static_cast<unsigned long long>(held / k_mib),
                 static_cast<unsigned long long>(charged() / k_mib),
                 static_cast<unsigned long long>(reserved() / k_mib));
    CLIENT_CHECK(held <= limit);
  };
  CUstream stream = nullptr;
  CLIENT_REQUIRE(d.stream_create(&stream, 0) == CUDA_SUCCESS);
  CUdeviceptr first = 0;
  CLIENT_REQUIRE(d.alloc(&first, k_chunk) == CUDA_SUCCESS);  // the context is measured

  // A graph that allocates 32 MiB it leaves live and 8 MiB it frees itself: 40 MiB of reserve.
  CLIENT_REQUIRE(begin(stream, CU_STREAM_CAPTURE_MODE_RELAXED) == CUDA_SUCCESS);
  CUdeviceptr kept = 0, scratch = 0;
  CLIENT_CHECK(d.alloc_async(&kept, 32 * k_mib, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.alloc_async(&scratch, 8 * k_mib, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free_async(scratch, stream) == CUDA_SUCCESS);
  CUgraph graph = nullptr;
  CLIENT_REQUIRE(end(stream, &graph) == CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  CLIENT_REQUIRE(instantiate(&exec, graph, 0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), ctx + k_chunk);  // nothing reserved before upload
  CLIENT_CHECK_EQ(reserved(), 0u);

  // Uploaded: the reserve is held and charged from the next call on.
  CLIENT_REQUIRE(upload(exec, stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(reserved(), 40 * k_mib);
  CLIENT_CHECK_EQ(physical_used(0), ctx + k_chunk + 40 * k_mib);
  CLIENT_CHECK_EQ(charged(), physical_used(0));
  held_ok("uploaded");
  // No graph allocation is live: the shim trims the reserve to make room rather than refuse.
  CUdeviceptr big = 0;
  CLIENT_CHECK(d.alloc(&big, 24 * k_mib) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(reserved(), 0u);
  held_ok("24 MiB beside an upload");
  CLIENT_CHECK(d.free(big) == CUDA_SUCCESS);

  // Launched: the graph's 32 MiB allocation is live, its reserve 40 MiB.
  CLIENT_REQUIRE(launch(exec, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(reserved(), 40 * k_mib);
  CLIENT_CHECK_EQ(graph_mem(CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT), 32 * k_mib);
  CLIENT_CHECK_EQ(physical_used(0), ctx + k_chunk + 40 * k_mib);
  CLIENT_CHECK_EQ(charged(), physical_used(0));
  held_ok("launched");
  // 24 MiB more cannot fit beside the live 32 MiB: refused, the unused 8 MiB trimmed.
  CLIENT_CHECK_EQ(d.alloc(&big, 24 * k_mib), CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK_EQ(reserved(), 32 * k_mib);
  held_ok("24 MiB refused beside a live graph allocation");
  std::vector<CUdeviceptr> held = fill(d);
  CLIENT_CHECK_EQ(held.size(), (limit - ctx - k_chunk - 32 * k_mib) / k_chunk);
  held_ok("filled beside a live graph allocation");
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);

  // Freed after the graph: the driver keeps the reserve, and the shim keeps counting it.
  CLIENT_CHECK(d.free_async(kept, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(graph_mem(CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT), 0u);
  CLIENT_CHECK_EQ(reserved(), 32 * k_mib);
  CLIENT_CHECK_EQ(physical_used(0), ctx + k_chunk + 32 * k_mib);
  CLIENT_CHECK_EQ(charged(), physical_used(0));
  // Trimmed: the memory is usable again.
  CLIENT_CHECK(trim(0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(reserved(), 0u);
  CLIENT_CHECK_EQ(physical_used(0), ctx + k_chunk);
  CLIENT_CHECK(d.alloc(&big, 24 * k_mib) == CUDA_SUCCESS);
  held = fill(d);
  CLIENT_CHECK_EQ(held.size(), (limit - ctx - k_chunk - 24 * k_mib) / k_chunk);
  held_ok("filled after a trim");
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free(big) == CUDA_SUCCESS);

  // A launch reserves again; a graph the device cannot hold is refused by the driver.
  CLIENT_REQUIRE(launch(exec, stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(reserved(), 40 * k_mib);
  CLIENT_CHECK_EQ(charged(), physical_used(0));
  held_ok("launched again");
  CLIENT_CHECK(d.free(kept) == CUDA_SUCCESS);  // cuMemFree frees a graph allocation too
  CLIENT_CHECK_EQ(graph_mem(CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT), 0u);
  CLIENT_CHECK_EQ(d.free(kept), CUDA_ERROR_INVALID_VALUE);  // once
  CLIENT_REQUIRE(begin(stream, CU_STREAM_CAPTURE_MODE_RELAXED) == CUDA_SUCCESS);
  CUdeviceptr huge = 0;
  CLIENT_CHECK(d.alloc_async(&huge, 2 * total_now(d) + (std::uint64_t{2} << 30), stream) ==
               CUDA_SUCCESS);
  CUgraph too_big = nullptr;
  CLIENT_REQUIRE(end(stream, &too_big) == CUDA_SUCCESS);
  CUgraphExec too_big_exec = nullptr;
  CLIENT_REQUIRE(instantiate(&too_big_exec, too_big, 0) == CUDA_SUCCESS);
  const std::uint64_t before = physical_used(0);
  CLIENT_CHECK_EQ(launch(too_big_exec, stream), CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK_EQ(physical_used(0), before);
  CLIENT_CHECK(exec_destroy(too_big_exec) == CUDA_SUCCESS);
  CLIENT_CHECK(graph_destroy(too_big) == CUDA_SUCCESS);

  CLIENT_CHECK(exec_destroy(exec) == CUDA_SUCCESS);
  CLIENT_CHECK(graph_destroy(graph) == CUDA_SUCCESS);
  CLIENT_CHECK(trim(0) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free(first) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), ctx);
  CLIENT_CHECK_EQ(charged(), ctx);
  CLIENT_CHECK(d.stream_destroy(stream) == CUDA_SUCCESS);
  return client::finish(k_name);
}

/// The driver's own memory for a pool's first use in a context (FAKE_CUDA_POOL_BYTES: outside
/// the pool's reserve, shown only by NVML and cuMemGetInfo; 70 MiB on an H200), with a context
/// the size of PyTorch's (FAKE_CUDA_CONTEXT_BYTES, 518 MiB on an H200): 64 MiB tensors in a
/// tight loop until refused, as PyTorch's cudaMallocAsync backend fills a quota, well within the
/// shim's reconciliation interval. Rounds: the default pool; after a primary reset (which gives
/// the driver's memory back), plain allocations while the shim still charges the reserve the
/// default pool released at a synchronisation (a reconciliation that took that stale charge for
/// counted memory would under-charge the context once the charge went); the default pool in the
/// new context, which takes the driver's memory again; a created pool beside the default pool's
/// kept reserve.
/// Physically, after every allocation: what the fake holds for this process never exceeds the
/// limit, and a refusal comes only when the next tensor would not fit.
int pool_first_use(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const std::uint64_t ctx = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  const std::uint64_t own = client::env_bytes("FAKE_CUDA_POOL_BYTES", 0);
  constexpr std::uint64_t k_tensor = 64 * k_mib;
  CLIENT_REQUIRE(own != 0 && ctx + own + k_tensor <= limit);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto reset = reinterpret_cast<decltype(&cuDevicePrimaryCtxReset_v2)>(
      dlsym(lib, "cuDevicePrimaryCtxReset_v2"));
  auto set_attr =
      reinterpret_cast<decltype(&cuMemPoolSetAttribute)>(dlsym(lib, "cuMemPoolSetAttribute"));
  auto default_pool = reinterpret_cast<decltype(&cuDeviceGetDefaultMemPool)>(
      dlsym(lib, "cuDeviceGetDefaultMemPool"));
  CLIENT_REQUIRE(reset != nullptr && set_attr != nullptr && default_pool != nullptr);
  // Fills through \p alloc, checking the invariant after every allocation; frees all through
  // \p release at the end. Returns how many fitted.
  const auto fill_round = [&](const char* round, auto alloc, auto release) {
    std::vector<CUdeviceptr> held;
    std::uint64_t peak = 0;
    std::size_t over = 0;  // allocations after which the driver held more than the limit
    for (;;) {
      CUdeviceptr p = 0;
      const CUresult r = alloc(&p);
      if (r != CUDA_SUCCESS) {
        CLIENT_CHECK_EQ(r, CUDA_ERROR_OUT_OF_MEMORY);
        break;
      }
      held.push_back(p);
      CLIENT_REQUIRE(held.size() < 100000);
      const std::uint64_t now = physical_used(0);
      peak = std::max(peak, now);
      if (now > limit && over++ == 0) {
        std::fprintf(stdout, "%s: after allocation %zu the driver holds %llu MiB, limit %llu MiB\n",
                     round, held.size(), static_cast<unsigned long long>(now / k_mib),
                     static_cast<unsigned long long>(limit / k_mib));
      }
    }
    const std::uint64_t at_refusal = physical_used(0);
    std::fprintf(stdout, "%s: %zu tensors, peak %llu MiB held, %llu MiB at the refusal\n", round,
                 held.size(), static_cast<unsigned long long>(peak / k_mib),
                 static_cast<unsigned long long>(at_refusal / k_mib));
    CLIENT_CHECK_EQ(over, 0u);
    CLIENT_CHECK(peak <= limit);
    CLIENT_CHECK(at_refusal + k_tensor > limit);  // what fits is not refused
    CLIENT_CHECK_EQ(nvml_memory(0).used, at_refusal);
    CLIENT_CHECK_EQ(limit - free_now(d), at_refusal);  // charged = held
    for (CUdeviceptr p : held) CLIENT_CHECK(release(p) == CUDA_SUCCESS);
    return held.size();
  };
  CUstream stream = nullptr;
  const auto from_default = [&](CUdeviceptr* p) { return d.alloc_async(p, k_tensor, stream); };
  const auto free_async = [&](CUdeviceptr p) { return d.free_async(p, stream); };
  const std::uint64_t fits = (limit - ctx - own) / k_tensor;

  // The default pool, in the primary context. It gives back what was freed at the
  // synchronisation (its release threshold is 0), which the shim does not see.
  use_device(d, 0);
  CLIENT_REQUIRE(d.stream_create(&stream, 0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(fill_round("default pool", from_default, free_async), fits);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_destroy(stream) == CUDA_SUCCESS);

  // A primary reset gives the context's memory back, the pool's own included.
  CLIENT_CHECK(reset(0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(physical_used(0), 0u);
  use_device(d, 0);
  // Each allocation followed by cuMemGetInfo, as a program watching its free memory does: the
  // view reads the pools' reserves, so the released one stops being charged there.
  const std::size_t plain = fill_round(
      "plain allocations in a new context",
      [&](CUdeviceptr* p) {
        const CUresult r = d.alloc(p, k_tensor);
        CLIENT_CHECK(free_now(d) <= limit);
        return r;
      },
      [&](CUdeviceptr p) { return d.free(p); });
  CLIENT_CHECK_EQ(plain, (limit - ctx) / k_tensor);

  // The new context's first pool use takes the driver's memory again.
  CLIENT_REQUIRE(d.stream_create(&stream, 0) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(fill_round("default pool in a new context", from_default, free_async), fits);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);

  // A created device pool, beside the default pool's kept reserve.
  CUmemoryPool def = nullptr;
  CLIENT_REQUIRE(default_pool(&def, 0) == CUDA_SUCCESS);
  cuuint64_t keep_all = ~cuuint64_t{0};
  CLIENT_REQUIRE(set_attr(def, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all) == CUDA_SUCCESS);
  CUdeviceptr kept = 0;
  CLIENT_REQUIRE(d.alloc_async(&kept, k_tensor, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free_async(kept, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool mine = nullptr;
  CLIENT_REQUIRE(d.pool_create(&mine, &props) == CUDA_SUCCESS);
  const std::size_t created = fill_round(
      "created pool", [&](CUdeviceptr* p) { return d.alloc_pool(p, k_tensor, mine, stream); },
      free_async);
  CLIENT_CHECK(created >= 1);
  CLIENT_CHECK(d.stream_sync(stream) == CUDA_SUCCESS);
  CLIENT_CHECK(d.pool_destroy(mine) == CUDA_SUCCESS);
  CLIENT_CHECK(d.stream_destroy(stream) == CUDA_SUCCESS);
  CLIENT_CHECK(physical_used(0) <= limit);
  CLIENT_CHECK_EQ(limit - free_now(d), physical_used(0));
  return client::finish(k_name);
}

/// A module's code and data take device memory (FAKE_CUDA_MODULE_BYTES) that no allocation call
/// shows: counted from its load on, given back at its unload. Charged = held, throughout.
int modules(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const std::uint64_t ctx = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  const std::uint64_t mod = client::env_bytes("FAKE_CUDA_MODULE_BYTES", 0);
  CLIENT_REQUIRE(mod != 0 && (ctx + mod) % k_chunk == 0);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(lib != nullptr);
  auto load = reinterpret_cast<decltype(&cuModuleLoadData)>(dlsym(lib, "cuModuleLoadData"));
  auto unload = reinterpret_cast<decltype(&cuModuleUnload)>(dlsym(lib, "cuModuleUnload"));
  CLIENT_REQUIRE(load && unload);
  CUdeviceptr first = 0;
  CLIENT_REQUIRE(d.alloc(&first, k_chunk) == CUDA_SUCCESS);  // the context is measured
  static const char k_image[] = "fake module";
  CUmodule m = nullptr;
  CLIENT_REQUIRE(load(&m, k_image) == CUDA_SUCCESS);
  std::vector<CUdeviceptr> held = fill(d);
  CLIENT_CHECK_EQ(held.size() + 1, (limit - ctx - mod) / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  CLIENT_CHECK_EQ(limit - free_now(d), physical_used(0));
  CLIENT_CHECK(d.free(held.back()) == CUDA_SUCCESS);
  held.pop_back();
  CLIENT_CHECK(unload(m) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(limit - free_now(d), physical_used(0));  // the module's memory is back
  std::vector<CUdeviceptr> more = fill(d);
  CLIENT_CHECK_EQ(held.size() + more.size() + 1, (limit - ctx) / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  for (CUdeviceptr p : more) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free(first) == CUDA_SUCCESS);
  return client::finish(k_name);
}

/// NVML alone never initialises CUDA, and still shows the limit; a child forked afterwards (a
/// launcher's worker) initialises CUDA and gets the same quota, shared through the ledger.
int nvml_only(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const nvmlMemory_v2_t v = nvml_memory(0);
  CLIENT_CHECK(!cuda_initialised());
  CLIENT_CHECK_EQ(v.total, limit);
  CLIENT_CHECK_EQ(v.free, limit);
  CLIENT_CHECK_EQ(v.used, 0u);
  const pid_t child = fork();
  CLIENT_REQUIRE(child >= 0);
  if (child == 0) {
    if (d.init(0) != CUDA_SUCCESS) _exit(3);
    use_device(d, 0);
    const std::vector<CUdeviceptr> held = fill(d);
    const bool ok = held.size() == limit / k_chunk && physical_used(0) <= limit &&
                    nvml_memory(0).used == held.size() * k_chunk;
    _exit(ok && client::failures() == 0 ? 0 : 4);
  }
  int status = 0;
  CLIENT_REQUIRE(waitpid(child, &status, 0) == child);
  CLIENT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CLIENT_CHECK(!cuda_initialised());
  return client::finish(k_name);
}

/// MIG devices: NVML spells their UUIDs "MIG-..." (FAKE_NVML_MIG_UUIDS=1); the ledger keys the device
/// by that spelling, and NVML's views of it show the limit and the use.
int mig(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  CUdeviceptr p = 0;
  CLIENT_REQUIRE(d.alloc(&p, k_chunk) == CUDA_SUCCESS);
  const nvmlMemory_v2_t v = nvml_memory(0);
  CLIENT_CHECK_EQ(v.total, limit);
  CLIENT_CHECK_EQ(v.used, k_chunk);
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  CLIENT_REQUIRE(path != nullptr);
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok() && !snap->devices.empty());
  CLIENT_CHECK(snap->devices[0].uuid == "MIG-5a1ce000-0000-4000-8000-0000000000a0");
  CLIENT_CHECK_EQ(snap->devices[0].used, k_chunk);
  std::vector<CUdeviceptr> held = fill(d);
  CLIENT_CHECK_EQ(held.size() + 1, limit / k_chunk);
  CLIENT_CHECK(physical_used(0) <= limit);
  for (CUdeviceptr q : held) CLIENT_CHECK(d.free(q) == CUDA_SUCCESS);
  CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  return client::finish(k_name);
}

/// A configuration or ledger the shim cannot use: every allocation is refused with a log line
/// naming \p needle (the variable at fault).
int fail_closed(const driver& d, const char* needle) {
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  client::stderr_capture log;
  use_device(d, 0);
  CUdeviceptr p = 0;
  CLIENT_CHECK_EQ(d.alloc(&p, 1), CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK_EQ(d.alloc(&p, k_chunk), CUDA_ERROR_OUT_OF_MEMORY);
  CUdeviceptr q = 0;
  CLIENT_CHECK_EQ(d.alloc_managed(&q, k_chunk, CU_MEM_ATTACH_GLOBAL), CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK_EQ(free_now(d), 0u);  // nothing may be allocated, and the view says so
  const std::string lines = log.take();
  std::size_t refusals = 0;
  for (std::size_t at = 0; (at = lines.find(needle, at)) != std::string::npos; ++at) ++refusals;
  CLIENT_CHECK(refusals >= 3);  // the start-up line and one per refused allocation
  return client::finish(k_name);
}

/// ACTIVE_OOM_KILLER=true: a child that goes over the limit is ended with a clear message.
int oom_killer(const driver& d) {
  int out[2];
  CLIENT_REQUIRE(pipe(out) == 0);
  const pid_t child = fork();
  CLIENT_REQUIRE(child >= 0);
  if (child == 0) {
    dup2(out[1], STDERR_FILENO);
    if (d.init(0) != CUDA_SUCCESS) _exit(3);
    use_device(d, 0);
    fill(d);
    _exit(0);  // not reached when the shim ends the process
  }
  close(out[1]);
  std::string text;
  char buf[1024];
  ssize_t n = 0;
  while ((n = read(out[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
  int status = 0;
  CLIENT_REQUIRE(waitpid(child, &status, 0) == child);
  std::fputs(text.c_str(), stderr);
  CLIENT_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  CLIENT_CHECK(text.find("ACTIVE_OOM_KILLER=true: ending process") != std::string::npos);
  return client::finish(k_name);
}

/// Use above the limit (the limit lowered in the ledger under a running process): the views
/// still succeed, never underflow, and allocations are refused until use is back under it.
int over_limit_view(const driver& d) {
  const std::uint64_t limit = limit_bytes();
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  CLIENT_REQUIRE(path != nullptr);
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  use_device(d, 0);
  std::vector<CUdeviceptr> held;
  for (std::uint64_t i = 0; i < limit / k_chunk / 2; ++i) {
    CUdeviceptr p = 0;
    CLIENT_REQUIRE(d.alloc(&p, k_chunk) == CUDA_SUCCESS);
    held.push_back(p);
  }
  const std::uint64_t used = held.size() * k_chunk;
  {
    auto ledger = gpuslice::memory::shared_ledger::open(gpuslice::memory::open_only, path);
    CLIENT_REQUIRE(ledger.ok());
    CLIENT_REQUIRE(ledger->set_limit(0, used / 2));
  }
  size_t free_b = 0, total_b = 0;
  CLIENT_CHECK_EQ(d.mem_info(&free_b, &total_b), CUDA_SUCCESS);
  CLIENT_CHECK(free_b <= total_b);
  CLIENT_CHECK(total_b <= limit);
  size_t dev_total = 0;
  CLIENT_CHECK_EQ(d.total_mem(&dev_total, 0), CUDA_SUCCESS);
  CLIENT_CHECK_EQ(dev_total, total_b);
  const nvmlMemory_v2_t n = nvml_memory(0);
  CLIENT_CHECK(n.free <= n.total);
  CLIENT_CHECK(n.used <= n.total);
  CUdeviceptr extra = 0;
  if (total_b == used / 2) {  // the ledger's limit is in force: full, and nothing more fits
    CLIENT_CHECK_EQ(free_b, 0u);
    CLIENT_CHECK_EQ(d.alloc(&extra, 1), CUDA_ERROR_OUT_OF_MEMORY);
  }
  for (CUdeviceptr p : held) CLIENT_CHECK(d.free(p) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(d.mem_info(&free_b, &total_b), CUDA_SUCCESS);
  CLIENT_CHECK_EQ(free_b, total_b);
  return client::finish(k_name);
}

/// A lookup that would hand out the uncounted pre-3.2 cuMemAlloc is refused.
int legacy(const driver& d) {
  CLIENT_REQUIRE(d.init(0) == CUDA_SUCCESS);
  constexpr int k_cuda_3_0 = 3000;
  void* p = nullptr;
  CUdriverProcAddressQueryResult st{};
  CLIENT_CHECK_EQ(d.get_proc("cuMemAlloc", &p, k_cuda_3_0, 0, &st), CUDA_ERROR_NOT_FOUND);
  CLIENT_CHECK(p == nullptr);
  CLIENT_CHECK_EQ(st, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(h != nullptr);
  CLIENT_CHECK(dlsym(h, "cuMemAlloc") == nullptr);
  // The current variant is still there, and is the shim's.
  CLIENT_CHECK_EQ(d.get_proc("cuMemAlloc", &p, client::k_runtime_version, 0, &st), CUDA_SUCCESS);
  CLIENT_CHECK(p == dlsym(h, "cuMemAlloc_v2"));
  CLIENT_CHECK(p == dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"));
  // A name the driver lacks stays missing: never faked.
  CLIENT_CHECK_EQ(d.get_proc("cuNoSuchEntryPoint", &p, client::k_runtime_version, 0, &st),
                  CUDA_ERROR_NOT_FOUND);
  CLIENT_CHECK_EQ(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  CLIENT_CHECK(dlsym(h, "cuNoSuchEntryPoint") == nullptr);
  return client::finish(k_name);
}

}  // namespace

int main(int argc, char** argv) {
  const driver d = load();
  CLIENT_REQUIRE(client::complete(d));
  const std::string_view mode = argc > 1 ? argv[1] : "quota";
  if (mode == "quota") return quota(d);
  if (mode == "visible" && argc == 4) return visible(d, std::atoi(argv[2]), std::atoi(argv[3]));
  if (mode == "overhead") return overhead(d);
  if (mode == "bad_config") return fail_closed(d, "CUDA_DEVICE_MEMORY_LIMIT=");
  if (mode == "bad_ledger") return fail_closed(d, "CUDA_DEVICE_MEMORY_SHARED_CACHE=");
  if (mode == "bad_default_ledger")
    return fail_closed(d, "the default ledger /tmp/gpuslice.ledger");
  if (mode == "oom_killer") return oom_killer(d);
  if (mode == "legacy") return legacy(d);
  if (mode == "over_limit_view") return over_limit_view(d);
  if (mode == "nvml_only") return nvml_only(d);
  if (mode == "pools") return pools(d);
  if (mode == "vmm") return vmm(d);
  if (mode == "arrays") return arrays(d);
  if (mode == "teardown") return teardown(d);
  if (mode == "capture") return capture(d);
  if (mode == "graph_memory") return graph_memory(d);
  if (mode == "modules") return modules(d);
  if (mode == "pool_first_use") return pool_first_use(d);
  if (mode == "mig") return mig(d);
  std::fprintf(stdout, "unknown mode %s\n", argv[1]);
  return 2;
}
