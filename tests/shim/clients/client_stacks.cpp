/// \file
/// The memory patterns of the stacks people serve models with, on the fake driver (linked against
/// the fake libcuda.so.1), under LD_PRELOAD=libgpuslice.so. Each checks the physical invariant:
/// what the fake driver holds for this process never exceeds the limit, and the ledger charges
/// exactly what it holds. Modes (argv[1]):
///   host_vmm      NCCL's cuMem path (vLLM with tensor parallelism): cuMemCreate with HOST and
///                 HOST_NUMA locations while the quota is full succeeds, is never charged, and
///                 its map, access, unmap and release leave the ledger as it was; HOST_NUMA_CURRENT
///                 gets the driver's own answer (cuda.h: INVALID_VALUE), never INVALID_DEVICE
///   llama_vmm     llama.cpp's VMM pool: one large address reservation, grown by cuMemCreate +
///                 cuMemMap + cuMemRelease + cuMemSetAccess chunks of the granularity the driver
///                 recommends, up to the quota exactly, refused past it, freed at the end
///   primary_reset cuDevicePrimaryCtxReset with references held, and another thread retaining
///                 the primary again right after (FAKE_CUDA_RESET_RETAINED=1): the reset destroyed
///                 every allocation, so every charge is given back although the state reads active
///   jax_prealloc  one first allocation sized from cuMemGetInfo (XLA's 75% of the total, then 90%
///                 and all of the free) fits the quota exactly; one byte more is refused

#include <string_view>
#include <vector>

#include "client.hpp"
#include "fake_driver.hpp"
#include "gpuslice/memory/ledger.hpp"

namespace {

constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;

std::uint64_t limit_bytes() { return client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0); }

/// Bytes the ledger charges device 0 now.
std::uint64_t ledger_used() {
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  CLIENT_REQUIRE(path != nullptr);
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok() && !snap->devices.empty());
  return snap->devices[0].used;
}

std::uint64_t free_now() {
  std::size_t free_b = 0, total_b = 0;
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  return free_b;
}

CUcontext start() {
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext ctx = nullptr;
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
  return ctx;
}

/// Allocates \p chunk blocks until refused (with OUT_OF_MEMORY); returns them.
std::vector<CUdeviceptr> fill(std::uint64_t chunk) {
  std::vector<CUdeviceptr> held;
  for (;;) {
    CUdeviceptr p = 0;
    const CUresult r = cuMemAlloc_v2(&p, chunk);
    if (r != CUDA_SUCCESS) {
      CLIENT_CHECK_EQ(r, CUDA_ERROR_OUT_OF_MEMORY);
      break;
    }
    held.push_back(p);
    CLIENT_REQUIRE(held.size() < 100000);
  }
  return held;
}

void free_all(std::vector<CUdeviceptr>& held) {
  for (CUdeviceptr p : held) CLIENT_CHECK(cuMemFree_v2(p) == CUDA_SUCCESS);
  held.clear();
}

CUmemAllocationProp prop_at(CUmemLocationType type, int id) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = type;
  prop.location.id = id;
  return prop;
}

int host_vmm() {
  const std::uint64_t limit = limit_bytes();
  start();
  // The quota full of device memory first: host memory must not need any of it.
  std::vector<CUdeviceptr> held = fill(4 * k_mib);
  CLIENT_REQUIRE(!held.empty());
  const std::uint64_t charged = ledger_used();
  const std::uint64_t physical = fake_cuda_physical_used(0);
  const std::uint64_t free_before = free_now();
  CLIENT_CHECK(physical <= limit);
  CLIENT_CHECK_EQ(charged, physical);

  CUmemAllocationProp host = prop_at(CU_MEM_LOCATION_TYPE_HOST, 0);
  std::size_t gran = 0;
  CLIENT_REQUIRE(cuMemGetAllocationGranularity(
                     &gran, &host, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) == CUDA_SUCCESS);
  // NCCL's buffers: together twice the limit, so a charge could not hide.
  const std::size_t bytes = ((limit / gran) + 1) * gran;
  const CUmemAllocationProp props[] = {host, prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA, 0)};
  CUdeviceptr va = 0;
  CLIENT_REQUIRE(cuMemAddressReserve(&va, 2 * bytes, 0, 0, 0) == CUDA_SUCCESS);
  CUmemGenericAllocationHandle h[2] = {};
  for (int i = 0; i < 2; ++i) {
    CLIENT_CHECK_EQ(cuMemCreate(&h[i], bytes, &props[i], 0), CUDA_SUCCESS);
    CLIENT_CHECK_EQ(ledger_used(), charged);
    CLIENT_CHECK_EQ(cuMemMap(va + i * bytes, bytes, 0, h[i], 0), CUDA_SUCCESS);
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = 0;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CLIENT_CHECK_EQ(cuMemSetAccess(va + i * bytes, bytes, &access, 1), CUDA_SUCCESS);
  }
  CLIENT_CHECK_EQ(ledger_used(), charged);
  CLIENT_CHECK_EQ(fake_cuda_physical_used(0), physical);
  CLIENT_CHECK_EQ(free_now(), free_before);

  // HOST_NUMA_CURRENT: whatever the driver answers, never the shim's refusal, and no charge.
  CUmemAllocationProp current = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, 0);
  CUmemGenericAllocationHandle h_current = 0;
  const CUresult r_current = cuMemCreate(&h_current, gran, &current, 0);
  CLIENT_CHECK(r_current != CUDA_ERROR_INVALID_DEVICE && r_current != CUDA_ERROR_OUT_OF_MEMORY);
  if (r_current == CUDA_SUCCESS) CLIENT_CHECK(cuMemRelease(h_current) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(ledger_used(), charged);

  // NCCL releases its handles once mapped and unmaps at the end: the ledger never moves.
  for (auto& handle : h) CLIENT_CHECK(cuMemRelease(handle) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(ledger_used(), charged);
  CLIENT_CHECK(cuMemUnmap(va, 2 * bytes) == CUDA_SUCCESS);
  CLIENT_CHECK(cuMemAddressFree(va, 2 * bytes) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(ledger_used(), charged);
  CLIENT_CHECK_EQ(free_now(), free_before);
  free_all(held);
  CLIENT_CHECK_EQ(ledger_used(), fake_cuda_physical_used(0));
  return client::finish("client_stacks host_vmm");
}

int llama_vmm() {
  const std::uint64_t limit = limit_bytes();
  start();
  const std::uint64_t context = limit - free_now();  // the view measures the context first
  CLIENT_CHECK_EQ(context, fake_cuda_physical_used(0));
  CLIENT_CHECK_EQ(ledger_used(), context);
  CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
  std::size_t gran = 0;
  CLIENT_REQUIRE(cuMemGetAllocationGranularity(
                     &gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) == CUDA_SUCCESS);
  CLIENT_REQUIRE(gran > 0 && limit % gran == 0 && context % gran == 0);
  // llama.cpp reserves 32 GiB of addresses up front, far beyond the quota.
  const std::size_t k_reserve = std::size_t{32} << 30;
  CUdeviceptr base = 0;
  CLIENT_REQUIRE(cuMemAddressReserve(&base, k_reserve, 0, 0, 0) == CUDA_SUCCESS);
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  std::size_t pool_size = 0;
  const auto grow = [&](std::size_t bytes) {
    CUmemGenericAllocationHandle h = 0;
    const CUresult r = cuMemCreate(&h, bytes, &prop, 0);
    if (r != CUDA_SUCCESS) return r;
    CLIENT_CHECK(cuMemMap(base + pool_size, bytes, 0, h, 0) == CUDA_SUCCESS);
    CLIENT_CHECK(cuMemRelease(h) == CUDA_SUCCESS);  // the mapping keeps the memory
    CLIENT_CHECK(cuMemSetAccess(base + pool_size, bytes, &access, 1) == CUDA_SUCCESS);
    pool_size += bytes;
    CLIENT_CHECK(fake_cuda_physical_used(0) <= limit);
    CLIENT_CHECK_EQ(ledger_used(), fake_cuda_physical_used(0));
    return r;
  };
  // Growth by requests of varying size, each rounded up to the granularity, as the pool does.
  std::size_t request = 3 * k_mib;
  CUresult r = CUDA_SUCCESS;
  while ((r = grow((request + gran - 1) / gran * gran)) == CUDA_SUCCESS) {
    request = request * 3 / 2;
  }
  CLIENT_CHECK_EQ(r, CUDA_ERROR_OUT_OF_MEMORY);
  // Then by single granules: up to the quota exactly, and not one granule past it.
  while ((r = grow(gran)) == CUDA_SUCCESS) {
  }
  CLIENT_CHECK_EQ(r, CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK_EQ(pool_size + context, limit);
  CLIENT_CHECK_EQ(fake_cuda_physical_used(0), limit);
  CLIENT_CHECK_EQ(free_now(), 0u);
  // Freed at the end: one unmap of the whole pool, then the addresses.
  CLIENT_CHECK(cuMemUnmap(base, pool_size) == CUDA_SUCCESS);
  CLIENT_CHECK(cuMemAddressFree(base, k_reserve) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(ledger_used(), context);
  CLIENT_CHECK_EQ(fake_cuda_physical_used(0), context);
  CLIENT_CHECK_EQ(free_now(), limit - context);
  return client::finish("client_stacks llama_vmm");
}

int primary_reset() {
  const std::uint64_t limit = limit_bytes();
  constexpr std::uint64_t k_chunk = 4 * k_mib;
  CUcontext ctx = start();
  CUcontext extra = nullptr;
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&extra, 0) == CUDA_SUCCESS);  // two references
  std::vector<CUdeviceptr> held = fill(k_chunk);
  const std::uint64_t context = fake_cuda_physical_used(0) - held.size() * k_chunk;
  CLIENT_CHECK_EQ(ledger_used(), fake_cuda_physical_used(0));
  CLIENT_CHECK(cuDevicePrimaryCtxReset_v2(0) == CUDA_SUCCESS);
  unsigned flags = 0;
  int active = 0;
  CLIENT_REQUIRE(cuDevicePrimaryCtxGetState(0, &flags, &active) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(active, 1);  // retained again meanwhile: the state reads active
  // The allocations went with the context; only the new context's memory is held.
  CLIENT_CHECK_EQ(fake_cuda_physical_used(0), context);
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
  std::vector<CUdeviceptr> again = fill(k_chunk);
  CLIENT_CHECK_EQ(again.size(), (limit - context) / k_chunk);
  CLIENT_CHECK(fake_cuda_physical_used(0) <= limit);
  CLIENT_CHECK_EQ(ledger_used(), fake_cuda_physical_used(0));
  free_all(again);
  return client::finish("client_stacks primary_reset");
}

int jax_prealloc() {
  const std::uint64_t limit = limit_bytes();
  start();
  std::size_t free_b = 0, total_b = 0;
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(total_b, limit);
  const std::uint64_t context = limit - free_b;
  CLIENT_CHECK_EQ(context, fake_cuda_physical_used(0));
  // XLA's default: 75% of the total; XLA_PYTHON_CLIENT_MEM_FRACTION=.9 of the free; then all.
  const std::size_t sizes[] = {total_b / 4 * 3, free_b / 10 * 9, free_b};
  for (std::size_t bytes : sizes) {
    CUdeviceptr p = 0;
    CLIENT_CHECK_EQ(cuMemAlloc_v2(&p, bytes), CUDA_SUCCESS);
    CLIENT_CHECK(fake_cuda_physical_used(0) <= limit);
    CLIENT_CHECK_EQ(ledger_used(), fake_cuda_physical_used(0));
    // The rest of what the view says is free is granted too; past it, refused.
    const std::size_t rest = free_now();
    CUdeviceptr q = 0;
    if (rest > 0) CLIENT_CHECK_EQ(cuMemAlloc_v2(&q, rest), CUDA_SUCCESS);
    CLIENT_CHECK(fake_cuda_physical_used(0) <= limit);
    CUdeviceptr r = 0;
    CLIENT_CHECK_EQ(cuMemAlloc_v2(&r, 1), CUDA_ERROR_OUT_OF_MEMORY);
    if (q != 0) CLIENT_CHECK(cuMemFree_v2(q) == CUDA_SUCCESS);
    CLIENT_CHECK(cuMemFree_v2(p) == CUDA_SUCCESS);
    CLIENT_CHECK_EQ(free_now(), free_b);
  }
  return client::finish("client_stacks jax_prealloc");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view mode = argc > 1 ? argv[1] : "";
  if (mode == "host_vmm") return host_vmm();
  if (mode == "llama_vmm") return llama_vmm();
  if (mode == "primary_reset") return primary_reset();
  if (mode == "jax_prealloc") return jax_prealloc();
  std::fprintf(stderr,
               "client_stacks: mode '%s': expected host_vmm, llama_vmm, primary_reset or "
               "jax_prealloc\n",
               argv[argc > 1 ? 1 : 0]);
  return 2;
}
