/* A driver-API program for the real-GPU checks of the VMM patterns people run. One "key=value"
 * per line. Usage: vmm_stacks CHUNK_MIB
 *   NCCL's cuMem path (vLLM with tensor parallelism): with the quota filled by CHUNK_MIB
 *   allocations, cuMemCreate of host memory (CU_MEM_LOCATION_TYPE_HOST, then HOST_NUMA on node
 *   0) of one granule more than the limit, mapped and given device access: host_create=<result>
 *   host_numa_create=<result>, and the shim's view of free memory before and after
 *   (view_free_before, view_free_after: equal when host memory is not charged).
 *   llama.cpp's VMM pool: a 32 GiB address reservation grown by granules of device memory
 *   (cuMemCreate + cuMemMap + cuMemRelease + cuMemSetAccess) until refused: vmm_pool=<bytes>
 *   vmm_refusal=<result>, context=<bytes charged before the pool> and, after the unmap,
 *   vmm_view_free_end. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>

#define MIB (1024ull * 1024ull)
#define MAX_CHUNKS 4096

static CUmemAllocationProp prop_at(CUmemLocationType type, int id) {
  CUmemAllocationProp p = {0};
  p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.location.type = type;
  p.location.id = id;
  return p;
}

static size_t view_free(void) {
  size_t f = 0, t = 0;
  cuMemGetInfo(&f, &t);
  return f;
}

/* cuMemCreate of host memory at \p type, mapped with device 0's access; 0 on success. */
static int host_buffer(CUmemLocationType type, size_t bytes) {
  CUmemAllocationProp p = prop_at(type, 0);
  CUmemGenericAllocationHandle h;
  CUdeviceptr va = 0;
  CUmemAccessDesc access = {0};
  int r = cuMemCreate(&h, bytes, &p, 0);
  if (r != CUDA_SUCCESS) return r;
  if (cuMemAddressReserve(&va, bytes, 0, 0, 0) == CUDA_SUCCESS &&
      cuMemMap(va, bytes, 0, h, 0) == CUDA_SUCCESS) {
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = 0;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    r = cuMemSetAccess(va, bytes, &access, 1);
    cuMemUnmap(va, bytes);
  }
  if (va != 0) cuMemAddressFree(va, bytes);
  cuMemRelease(h);
  return r;
}

int main(int argc, char** argv) {
  const size_t chunk = (size_t)(argc > 1 ? atoi(argv[1]) : 64) * MIB;
  static CUdeviceptr held[MAX_CHUNKS];
  CUdevice dev;
  CUcontext ctx;
  size_t gran = 0, total = 0, n = 0, pool = 0;
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
      cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS || cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
    printf("error=init\n");
    return 1;
  }
  CUmemAllocationProp dp = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
  cuMemGetAllocationGranularity(&gran, &dp, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
  { size_t f; cuMemGetInfo(&f, &total); }
  printf("granularity=%zu\nview_total=%zu\n", gran, total);

  /* NCCL: host memory while the quota is full. */
  while (n < MAX_CHUNKS && cuMemAlloc(&held[n], chunk) == CUDA_SUCCESS) ++n;
  const size_t before = view_free();
  const size_t host_bytes = (total / gran + 1) * gran;
  printf("host_create=%d\n", host_buffer(CU_MEM_LOCATION_TYPE_HOST, host_bytes));
  printf("host_numa_create=%d\n", host_buffer(CU_MEM_LOCATION_TYPE_HOST_NUMA, host_bytes));
  printf("view_free_before=%zu\nview_free_after=%zu\n", before, view_free());
  while (n > 0) cuMemFree(held[--n]);

  /* llama.cpp: a pool grown by granules up to the refusal. */
  const size_t reserve = (size_t)32 << 30;
  CUdeviceptr base = 0;
  CUmemAccessDesc access = {0};
  access.location = dp.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  printf("context=%zu\n", total - view_free());
  if (cuMemAddressReserve(&base, reserve, 0, 0, 0) != CUDA_SUCCESS) {
    printf("error=reserve\n");
    return 1;
  }
  int r = CUDA_SUCCESS;
  for (;;) {
    CUmemGenericAllocationHandle h;
    r = cuMemCreate(&h, gran, &dp, 0);
    if (r != CUDA_SUCCESS) break;
    if (cuMemMap(base + pool, gran, 0, h, 0) != CUDA_SUCCESS) { r = -1; cuMemRelease(h); break; }
    cuMemRelease(h);
    if (cuMemSetAccess(base + pool, gran, &access, 1) != CUDA_SUCCESS) { r = -2; break; }
    pool += gran;
  }
  printf("vmm_pool=%zu\nvmm_refusal=%d\n", pool, r);
  if (pool > 0) cuMemUnmap(base, pool);
  cuMemAddressFree(base, reserve);
  printf("vmm_view_free_end=%zu\n", view_free());
  return 0;
}
