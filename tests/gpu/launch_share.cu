// SM-limiter checks on a real GPU (tests/gpu/run.sh): a compute-bound kernel launched back to
// back through one launch path, its throughput over a window of wall time; and the host-side
// cost of one cuLaunchKernel. One "key=value" per line.
//
//   launch_share calibrate                 iterations for a kernel of about k_target_ms, from the
//                                          median of several timed launches after a warm-up
//                                          (the first launch loads the module lazily)
//   launch_share loop|graph|coop|grid ITERS S
//                                          kernels per second over S seconds after a warm-up
//                                          (grid: the legacy cuLaunchGridAsync)
//   launch_share cost N [symbol|proc|runtime]
//                                          host ns per launch of an empty kernel, the first
//                                          batch (module load, the shim's set-up) left out:
//                                          symbol calls cuLaunchKernel as linked, proc the
//                                          pointer cuGetProcAddress resolves (the runtime's
//                                          route), runtime cudaLaunchKernel
//   launch_share procinfo                  whether cuGetProcAddress and dlsym agree on
//                                          cuLaunchKernel (run without the shim)
#include <cuda.h>
#include <dlfcn.h>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // the legacy launch API
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr double k_target_ms = 2.0;     // kernel length the calibration aims for
constexpr int k_calibration_timings = 5;  // timed launches whose median sizes the kernel
constexpr double k_warmup_s = 1.0;      // launches before the window (the limiter learns)
constexpr int k_sync_every = 16;        // bounds the queue an uncapped host builds
constexpr int k_cost_batch = 256;       // launches timed between two synchronisations
constexpr int k_threads = 256;

using clock_type = std::chrono::steady_clock;

#define CHECK(x)                                                              \
  do {                                                                        \
    if ((x) != 0) {                                                           \
      std::fprintf(stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, #x);     \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

/// Dependent multiply-adds: compute-bound, a fixed amount of work per launch.
__global__ void spin(long long iters, float* sink) {
  float x = threadIdx.x * 1e-3f, a = 0.999f, b = 1e-4f;
  for (long long i = 0; i < iters; ++i) x = x * a + b;
  if (x == -1.0f) *sink = x;  // never true; keeps the loop
}

__global__ void empty() {}

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

int sms() {
  int n = 0;
  CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0));
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const char* mode = argv[1];
  float* sink = nullptr;
  CHECK(cudaMalloc(&sink, sizeof(float)));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const int grid = sms();  // one block per SM: each kernel occupies the whole GPU

  if (std::strcmp(mode, "calibrate") == 0) {
    // The median of several launches of the same size, after an untimed one: the first launch
    // of a kernel loads its module (CUDA_MODULE_LOADING=LAZY is the default) and would make
    // the kernel look far longer than it is.
    auto median_ms = [&](long long iters) {
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      spin<<<grid, k_threads, 0, stream>>>(iters, sink);
      CHECK(cudaStreamSynchronize(stream));
      std::vector<float> ms(k_calibration_timings);
      for (float& m : ms) {
        CHECK(cudaEventRecord(a, stream));
        spin<<<grid, k_threads, 0, stream>>>(iters, sink);
        CHECK(cudaEventRecord(b, stream));
        CHECK(cudaEventSynchronize(b));
        CHECK(cudaEventElapsedTime(&m, a, b));
      }
      CHECK(cudaEventDestroy(a));
      CHECK(cudaEventDestroy(b));
      std::sort(ms.begin(), ms.end());
      return static_cast<double>(ms[ms.size() / 2]);
    };
    long long iters = 1 << 16;
    double ms = median_ms(iters);
    while (ms < k_target_ms / 4) {
      iters *= 4;
      ms = median_ms(iters);
    }
    iters = static_cast<long long>(static_cast<double>(iters) * k_target_ms / ms);
    const double check = median_ms(iters);  // the kernel as sized, measured again
    std::printf("iters=%lld\nkernel_ms=%.3f\n", iters, check);
    return 0;
  }

  if (std::strcmp(mode, "procinfo") == 0) {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    void* by_symbol = lib != nullptr ? dlsym(lib, "cuLaunchKernel") : nullptr;
    void* by_proc = nullptr;
    CUdriverProcAddressQueryResult q{};
    CHECK(cuGetProcAddress("cuLaunchKernel", &by_proc, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT,
                           &q));
    void* by_proc_ptds = nullptr;
    CHECK(cuGetProcAddress("cuLaunchKernel", &by_proc_ptds, CUDA_VERSION,
                           CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q));
    void* ptsz = lib != nullptr ? dlsym(lib, "cuLaunchKernel_ptsz") : nullptr;
    std::printf("dlsym=%p\nproc=%p\nsame_pointer=%d\nproc_ptds=%p\ndlsym_ptsz=%p\n"
                "same_pointer_ptds=%d\n",
                by_symbol, by_proc, by_symbol == by_proc ? 1 : 0, by_proc_ptds, ptsz,
                by_proc_ptds == ptsz ? 1 : 0);
    return 0;
  }

  if (std::strcmp(mode, "cost") == 0 && (argc == 3 || argc == 4)) {
    const long n = std::atol(argv[2]);
    const char* how = argc == 4 ? argv[3] : "symbol";
    cudaFunction_t f;
    CHECK(cudaGetFuncBySymbol(&f, reinterpret_cast<const void*>(&empty)));
    CUfunction cf = reinterpret_cast<CUfunction>(f);
    CUstream cs = reinterpret_cast<CUstream>(stream);
    using launch_fn = CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   unsigned, unsigned, CUstream, void**, void**);
    launch_fn fn = &cuLaunchKernel;
    if (std::strcmp(how, "proc") == 0) {
      void* p = nullptr;
      CUdriverProcAddressQueryResult q{};
      CHECK(cuGetProcAddress("cuLaunchKernel", &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &q));
      fn = reinterpret_cast<launch_fn>(p);
    }
    const bool runtime = std::strcmp(how, "runtime") == 0;
    auto one = [&] {
      if (runtime) {
        return static_cast<int>(cudaLaunchKernel(reinterpret_cast<const void*>(&empty), dim3(1),
                                                 dim3(1), nullptr, 0, stream));
      }
      return static_cast<int>(fn(cf, 1, 1, 1, 1, 1, 1, 0, cs, nullptr, nullptr));
    };
    double launch_s = 0, first_s = 0;
    long timed = 0;
    for (long done = 0; done < n; done += k_cost_batch) {
      const auto t = clock_type::now();
      for (int i = 0; i < k_cost_batch; ++i) CHECK(one());
      const double s = seconds_since(t);
      if (done == 0) {
        first_s = s;  // module load, the shim's first-use set-up: not the per-launch cost
      } else {
        launch_s += s;
        timed += k_cost_batch;
      }
      CHECK(cudaStreamSynchronize(stream));
    }
    std::printf("launches=%ld\nhow=%s\nns_per_launch=%.2f\nfirst_batch_us=%.1f\n", timed, how,
                launch_s * 1e9 / static_cast<double>(timed > 0 ? timed : 1), first_s * 1e6);
    return 0;
  }

  if (argc != 4) return 2;
  const long long iters = std::atoll(argv[2]);
  const double window_s = std::atof(argv[3]);
  void* args[] = {const_cast<long long*>(&iters), &sink};
  cudaGraphExec_t exec = nullptr;
  if (std::strcmp(mode, "graph") == 0) {
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    spin<<<grid, k_threads, 0, stream>>>(iters, sink);
    CHECK(cudaStreamEndCapture(stream, &g));
    CHECK(cudaGraphInstantiate(&exec, g, 0));
  }
  CUfunction legacy = nullptr;
  if (std::strcmp(mode, "grid") == 0) {
    // The legacy API: parameters and block shape set on the function, then a 2D grid.
    cudaFunction_t f;
    CHECK(cudaGetFuncBySymbol(&f, reinterpret_cast<const void*>(&spin)));
    legacy = reinterpret_cast<CUfunction>(f);
    long long it = iters;
    float* sk = sink;
    CHECK(cuParamSetSize(legacy, sizeof it + sizeof sk));
    CHECK(cuParamSetv(legacy, 0, &it, sizeof it));
    CHECK(cuParamSetv(legacy, sizeof it, &sk, sizeof sk));
    CHECK(cuFuncSetBlockShape(legacy, k_threads, 1, 1));
  }
  auto launch = [&] {
    if (exec != nullptr) return cudaGraphLaunch(exec, stream);
    if (legacy != nullptr) {
      return cuLaunchGridAsync(legacy, grid, 1, reinterpret_cast<CUstream>(stream)) == CUDA_SUCCESS
                 ? cudaSuccess
                 : cudaErrorLaunchFailure;
    }
    if (std::strcmp(mode, "coop") == 0) {
      return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&spin), grid, k_threads,
                                         args, 0, stream);
    }
    spin<<<grid, k_threads, 0, stream>>>(iters, sink);
    return cudaGetLastError();
  };
  const auto start = clock_type::now();
  long long launched = 0, counted0 = 0;
  clock_type::time_point t0{};
  bool measuring = false;
  for (;;) {
    CHECK(launch());
    ++launched;
    if (launched % k_sync_every != 0) continue;
    CHECK(cudaStreamSynchronize(stream));
    const double s = seconds_since(start);
    if (!measuring && s >= k_warmup_s) {
      measuring = true;
      counted0 = launched;
      t0 = clock_type::now();
    }
    if (measuring && seconds_since(t0) >= window_s) break;
  }
  const double elapsed = seconds_since(t0);
  std::printf("kernels=%lld\nseconds=%.3f\nrate=%.3f\n", launched - counted0, elapsed,
              (launched - counted0) / elapsed);
  return 0;
}
