/* quota_demo: what a container sees of its GPU through the driver API, and where its memory
 * quota stops it. Run it plain and under libgpuslice.so with a limit, and compare:
 *
 *   ./gpuslice_quota_demo                  the whole device
 *   LD_PRELOAD=libgpuslice.so CUDA_DEVICE_MEMORY_LIMIT=1g ./gpuslice_quota_demo
 *
 * It prints the device memory cuDeviceTotalMem and cuMemGetInfo report (under the shim both
 * show the limit), then allocates CHUNK_MIB (default 64) at a time until cuMemAlloc refuses,
 * and shows the view again before and after freeing everything. One "key: value" line per fact; exit status 0 when the
 * refusal was CUDA_ERROR_OUT_OF_MEMORY, 1 on any other failure. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>

#define MIB ((size_t)1024 * 1024)
#define DEFAULT_CHUNK_MIB 64ull
#define MAX_CHUNK_MIB (1024ull * 1024ull)
#define NAME_LEN 256
/* Allocations are bounded: a device of 1 TiB in 64 MiB chunks is 16384 of them. */
#define MAX_CHUNKS 65536

static const char* error_name(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS:
      return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE:
      return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY:
      return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED:
      return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_NO_DEVICE:
      return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE:
      return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_CONTEXT:
      return "CUDA_ERROR_INVALID_CONTEXT";
    default:
      return "another CUresult";
  }
}

static int check(CUresult r, const char* call) {
  if (r == CUDA_SUCCESS) return 1;
  printf("error: %s returned %s (%d)\n", call, error_name(r), (int)r);
  return 0;
}

int main(int argc, char** argv) {
  unsigned long long chunk_mib = DEFAULT_CHUNK_MIB;
  if (argc > 1) {
    char* end = NULL;
    chunk_mib = strtoull(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || chunk_mib == 0 || chunk_mib > MAX_CHUNK_MIB) {
      fprintf(stderr, "quota_demo: CHUNK_MIB \"%s\": expected an integer from 1 to %llu\n", argv[1],
              MAX_CHUNK_MIB);
      return 2;
    }
  }
  const size_t chunk = (size_t)chunk_mib * MIB;
  CUdevice dev;
  CUcontext ctx;
  char name[NAME_LEN] = {0};
  size_t physical = 0, free_b = 0, total_b = 0;
  if (!check(cuInit(0), "cuInit") || !check(cuDeviceGet(&dev, 0), "cuDeviceGet") ||
      !check(cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain") ||
      !check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent")) {
    return 1;
  }
  cuDeviceGetName(name, NAME_LEN, dev);
  if (!check(cuDeviceTotalMem(&physical, dev), "cuDeviceTotalMem") ||
      !check(cuMemGetInfo(&free_b, &total_b), "cuMemGetInfo")) {
    return 1;
  }
  printf("device: %s\n", name);
  printf("cuDeviceTotalMem: %zu MiB\n", physical / MIB);
  printf("cuMemGetInfo before: free %zu MiB of %zu MiB\n", free_b / MIB, total_b / MIB);

  static CUdeviceptr ptrs[MAX_CHUNKS];
  int n = 0;
  CUresult refusal = CUDA_SUCCESS;
  while (n < MAX_CHUNKS) {
    refusal = cuMemAlloc(&ptrs[n], chunk);
    if (refusal != CUDA_SUCCESS) break;
    ++n;
  }
  printf("allocated: %d x %llu MiB = %llu MiB\n", n, chunk_mib, (unsigned long long)n * chunk_mib);
  printf("next cuMemAlloc: %s (%d)\n", error_name(refusal), (int)refusal);
  if (!check(cuMemGetInfo(&free_b, &total_b), "cuMemGetInfo")) return 1;
  printf("cuMemGetInfo at refusal: free %zu MiB of %zu MiB\n", free_b / MIB, total_b / MIB);
  for (int i = 0; i < n; ++i) cuMemFree(ptrs[i]);
  if (!check(cuMemGetInfo(&free_b, &total_b), "cuMemGetInfo")) return 1;
  printf("cuMemGetInfo after freeing: free %zu MiB of %zu MiB\n", free_b / MIB, total_b / MIB);
  cuDevicePrimaryCtxRelease(dev);
  return refusal == CUDA_ERROR_OUT_OF_MEMORY ? 0 : 1;
}
