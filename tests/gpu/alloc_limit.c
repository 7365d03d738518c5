/* A driver-API program for the real-GPU checks: creates the primary context, reports the
 * driver's per-process memory after it (NVML, the context's own memory) and the shim's view,
 * then allocates fixed chunks until the driver (or the shim) refuses. One "key=value" per line.
 * Usage: alloc_limit CHUNK_MIB */
#include <cuda.h>
#include <dlfcn.h>
#include <nvml.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MIB (1024ull * 1024ull)
#define MAX_PROCESSES 256

/* NVML is opened at run time: the driver installs libnvidia-ml.so.1, not always a link name. */
static unsigned long long nvml_self_used(void) {
  typedef nvmlReturn_t (*init_fn)(void);
  typedef nvmlReturn_t (*handle_fn)(unsigned int, nvmlDevice_t*);
  typedef nvmlReturn_t (*procs_fn)(nvmlDevice_t, unsigned int*, nvmlProcessInfo_t*);
  void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
  if (h == NULL) return 0;
  init_fn init = (init_fn)dlsym(h, "nvmlInit_v2");
  handle_fn handle = (handle_fn)dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
  procs_fn procs = (procs_fn)dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
  nvmlDevice_t dev;
  nvmlProcessInfo_t infos[MAX_PROCESSES];
  unsigned int n = MAX_PROCESSES;
  if (!init || !handle || !procs || init() != NVML_SUCCESS || handle(0, &dev) != NVML_SUCCESS ||
      procs(dev, &n, infos) != NVML_SUCCESS) {
    return 0;
  }
  for (unsigned int i = 0; i < n; ++i) {
    if (infos[i].pid == (unsigned int)getpid()) return infos[i].usedGpuMemory;
  }
  return 0;
}

int main(int argc, char** argv) {
  const unsigned long long chunk = (argc > 1 ? strtoull(argv[1], NULL, 10) : 64) * MIB;
  CUcontext ctx;
  CUdevice dev;
  size_t free_b = 0, total_b = 0, card = 0;
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
      cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS || cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
    printf("error=no context\n");
    return 2;
  }
  cuDeviceTotalMem_v2(&card, dev);
  cuMemGetInfo_v2(&free_b, &total_b);
  printf("device_total=%zu\nview_total=%zu\nview_free=%zu\n", card, total_b, free_b);
  printf("context_bytes=%llu\n", nvml_self_used());
  unsigned long long allocated = 0;
  CUresult r = CUDA_SUCCESS;
  for (;;) {
    CUdeviceptr p;
    r = cuMemAlloc_v2(&p, chunk);
    if (r != CUDA_SUCCESS) break;
    allocated += chunk;
  }
  cuMemGetInfo_v2(&free_b, &total_b);
  printf("allocated=%llu\nrefusal=%d\nfree_at_refusal=%zu\nprocess_used=%llu\n", allocated, (int)r,
         free_b, nvml_self_used());
  return 0;
}
