/* Library launches on a real GPU (tests/gpu/run.sh): a compute-bound kernel loaded with
 * cuLibraryLoadData (PTX, compiled by the driver), taken with cuLibraryGetKernel, and launched
 * back to back as a CUkernel passed where a CUfunction is expected (cuda.h allows it; the CUDA
 * runtime launches this way), or as the function cuKernelGetFunction gives in the context.
 * One "key=value" per line.
 *
 *   launch_library calibrate           iterations for a kernel of about 2 ms (median of five
 *                                      timed launches after an untimed one, which loads it)
 *   launch_library kernel|function ITERS S
 *                                      kernels per second over S seconds after a 1 s warm-up
 */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TARGET_MS 2.0    /* kernel length the calibration aims for */
#define TIMINGS 5        /* timed launches whose median sizes the kernel */
#define WARMUP_S 1.0     /* launches before the window (the limiter learns) */
#define SYNC_EVERY 16    /* bounds the queue an uncapped host builds */
#define THREADS 256

#define CHECK(x)                                                                  \
  do {                                                                            \
    CUresult r_ = (x);                                                            \
    if (r_ != CUDA_SUCCESS) {                                                     \
      fprintf(stderr, "%s:%d: %s failed (%d)\n", __FILE__, __LINE__, #x, (int)r_); \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

/* Dependent multiply-adds, a fixed amount per launch; the store (never taken) keeps the loop. */
static const char k_ptx[] =
    ".version 7.0\n"
    ".target sm_70\n"
    ".address_size 64\n"
    ".visible .entry spin(.param .u64 iters, .param .u64 sink)\n"
    "{\n"
    "  .reg .pred p;\n"
    "  .reg .u64 i, n, s;\n"
    "  .reg .f32 x;\n"
    "  ld.param.u64 n, [iters];\n"
    "  ld.param.u64 s, [sink];\n"
    "  mov.u64 i, 0;\n"
    "  mov.f32 x, 0f3A83126F;\n"
    "LOOP:\n"
    "  setp.ge.u64 p, i, n;\n"
    "  @p bra DONE;\n"
    "  fma.rn.f32 x, x, 0f3F7FBE77, 0f38D1B717;\n"
    "  add.u64 i, i, 1;\n"
    "  bra LOOP;\n"
    "DONE:\n"
    "  setp.eq.f32 p, x, 0fBF800000;\n"
    "  @p st.global.f32 [s], x;\n"
    "  ret;\n"
    "}\n";

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static CUkernel g_kernel;
static CUfunction g_function; /* null: launch the CUkernel itself */
static CUstream g_stream;
static int g_sms;
static CUdeviceptr g_sink;

static CUresult launch(unsigned long long iters) {
  void* args[] = {&iters, &g_sink};
  CUfunction f = g_function != NULL ? g_function : (CUfunction)g_kernel;
  return cuLaunchKernel(f, (unsigned)g_sms, 1, 1, THREADS, 1, 1, 0, g_stream, args, NULL);
}

static int by_value(const void* a, const void* b) {
  const float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}

static double median_ms(unsigned long long iters) {
  CUevent a, b;
  float ms[TIMINGS];
  CHECK(cuEventCreate(&a, CU_EVENT_DEFAULT));
  CHECK(cuEventCreate(&b, CU_EVENT_DEFAULT));
  CHECK(launch(iters)); /* loads the kernel in the context */
  CHECK(cuStreamSynchronize(g_stream));
  for (int i = 0; i < TIMINGS; ++i) {
    CHECK(cuEventRecord(a, g_stream));
    CHECK(launch(iters));
    CHECK(cuEventRecord(b, g_stream));
    CHECK(cuEventSynchronize(b));
    CHECK(cuEventElapsedTime(&ms[i], a, b));
  }
  CHECK(cuEventDestroy(a));
  CHECK(cuEventDestroy(b));
  qsort(ms, TIMINGS, sizeof ms[0], by_value);
  return ms[TIMINGS / 2];
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  CUdevice dev;
  CUcontext ctx;
  CUlibrary lib;
  CHECK(cuInit(0));
  CHECK(cuDeviceGet(&dev, 0));
  CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
  CHECK(cuCtxSetCurrent(ctx));
  CHECK(cuDeviceGetAttribute(&g_sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  CHECK(cuStreamCreate(&g_stream, CU_STREAM_NON_BLOCKING));
  CHECK(cuMemAlloc(&g_sink, sizeof(float)));
  CHECK(cuLibraryLoadData(&lib, k_ptx, NULL, NULL, 0, NULL, NULL, 0));
  CHECK(cuLibraryGetKernel(&g_kernel, lib, "spin"));

  if (strcmp(argv[1], "calibrate") == 0) {
    unsigned long long iters = 1ULL << 16;
    double ms = median_ms(iters);
    while (ms < TARGET_MS / 4) {
      iters *= 4;
      ms = median_ms(iters);
    }
    iters = (unsigned long long)((double)iters * TARGET_MS / ms);
    printf("iters=%llu\nkernel_ms=%.3f\n", iters, median_ms(iters));
    return 0;
  }
  if (argc != 4) return 2;
  if (strcmp(argv[1], "function") == 0) {
    CHECK(cuKernelGetFunction(&g_function, g_kernel));
  } else if (strcmp(argv[1], "kernel") != 0) {
    return 2;
  }
  const unsigned long long iters = strtoull(argv[2], NULL, 10);
  const double window_s = atof(argv[3]);
  const double start = now_s();
  double t0 = 0;
  long long launched = 0, counted0 = 0;
  int measuring = 0;
  for (;;) {
    CHECK(launch(iters));
    if (++launched % SYNC_EVERY != 0) continue;
    CHECK(cuStreamSynchronize(g_stream));
    if (!measuring && now_s() - start >= WARMUP_S) {
      measuring = 1;
      counted0 = launched;
      t0 = now_s();
    }
    if (measuring && now_s() - t0 >= window_s) break;
  }
  const double elapsed = now_s() - t0;
  printf("kernels=%lld\nseconds=%.3f\nrate=%.3f\n", launched - counted0, elapsed,
         (double)(launched - counted0) / elapsed);
  CHECK(cuLibraryUnload(lib));
  return 0;
}
