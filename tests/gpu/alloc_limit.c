/* A driver-API program for the real-GPU checks: creates the primary context, reports the
 * driver's memory for it (NVML, the context's own memory) and the shim's view, then allocates
 * fixed chunks until the driver (or the shim) refuses. One "key=value" per line.
 *
 * What the driver holds for this process is read without its pid (NVML lists host pids, which
 * differ from getpid() in a pid namespace): NVML's per-process figures summed over every process
 * on every GPU, minus the same sum before cuInit. It assumes nothing else starts or frees GPU
 * memory meanwhile. Usage: alloc_limit CHUNK_MIB */
#include <cuda.h>
#include <dlfcn.h>
#include <nvml.h>
#include <stdio.h>
#include <stdlib.h>

#define MIB (1024ull * 1024ull)
#define MAX_PROCESSES 256

/* NVML is opened at run time: the driver installs libnvidia-ml.so.1, not always a link name. */
static unsigned long long gpu_process_bytes(void) {
  typedef nvmlReturn_t (*init_fn)(void);
  typedef nvmlReturn_t (*count_fn)(unsigned int*);
  typedef nvmlReturn_t (*handle_fn)(unsigned int, nvmlDevice_t*);
  typedef nvmlReturn_t (*procs_fn)(nvmlDevice_t, unsigned int*, nvmlProcessInfo_t*);
  void* h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
  if (h == NULL) return 0;
  init_fn init = (init_fn)dlsym(h, "nvmlInit_v2");
  count_fn count = (count_fn)dlsym(h, "nvmlDeviceGetCount_v2");
  handle_fn handle = (handle_fn)dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
  procs_fn procs = (procs_fn)dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
  unsigned int devices = 0;
  if (!init || !count || !handle || !procs || init() != NVML_SUCCESS ||
      count(&devices) != NVML_SUCCESS) {
    return 0;
  }
  unsigned long long sum = 0;
  for (unsigned int d = 0; d < devices; ++d) {
    nvmlDevice_t dev;
    nvmlProcessInfo_t infos[MAX_PROCESSES];
    unsigned int n = MAX_PROCESSES;
    if (handle(d, &dev) != NVML_SUCCESS || procs(dev, &n, infos) != NVML_SUCCESS) continue;
    for (unsigned int i = 0; i < n; ++i) {
      if (infos[i].usedGpuMemory != (unsigned long long)NVML_VALUE_NOT_AVAILABLE) sum += infos[i].usedGpuMemory;
    }
  }
  return sum;
}

int main(int argc, char** argv) {
  const unsigned long long chunk = (argc > 1 ? strtoull(argv[1], NULL, 10) : 64) * MIB;
  const unsigned long long baseline = gpu_process_bytes();
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
  printf("context_bytes=%llu\n", gpu_process_bytes() - baseline);
  unsigned long long allocated = 0;
  CUresult r = CUDA_SUCCESS;
  for (;;) {
    CUdeviceptr p;
    r = cuMemAlloc_v2(&p, chunk);
    if (r != CUDA_SUCCESS) break;
    allocated += chunk;
  }
  cuMemGetInfo_v2(&free_b, &total_b);
  printf("allocated=%llu\nrefusal=%d\nfree_at_refusal=%zu\ndriver_held=%llu\n", allocated, (int)r,
         free_b, gpu_process_bytes() - baseline);
  return 0;
}
