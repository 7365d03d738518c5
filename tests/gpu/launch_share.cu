// SM-limiter checks on a real GPU (tests/gpu/run.sh): a compute-bound kernel launched back to
// back through one launch path, its throughput over a window of wall time; and the host-side
// cost of one cuLaunchKernel. One "key=value" per line.
//
//   launch_share calibrate                 iterations for a kernel of about k_target_ms
//   launch_share loop|graph|coop ITERS S   kernels per second over S seconds after a warm-up
//   launch_share cost N                    host ns per cuLaunchKernel of an empty kernel
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr double k_target_ms = 2.0;     // kernel length the calibration aims for
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
    long long iters = 1 << 16;
    for (;;) {
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      CHECK(cudaEventRecord(a, stream));
      spin<<<grid, k_threads, 0, stream>>>(iters, sink);
      CHECK(cudaEventRecord(b, stream));
      CHECK(cudaEventSynchronize(b));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      if (ms >= k_target_ms / 2) {
        std::printf("iters=%lld\nkernel_ms=%.3f\n", (long long)(iters * k_target_ms / ms),
                    k_target_ms);
        return 0;
      }
      iters *= 2;
    }
  }

  if (std::strcmp(mode, "cost") == 0 && argc == 3) {
    const long n = std::atol(argv[2]);
    cudaFunction_t f;
    CHECK(cudaGetFuncBySymbol(&f, reinterpret_cast<const void*>(&empty)));
    CUfunction cf = reinterpret_cast<CUfunction>(f);
    CUstream cs = reinterpret_cast<CUstream>(stream);
    double launch_s = 0;
    for (long done = 0; done < n; done += k_cost_batch) {
      const auto t = clock_type::now();
      for (int i = 0; i < k_cost_batch; ++i) {
        CHECK(cuLaunchKernel(cf, 1, 1, 1, 1, 1, 1, 0, cs, nullptr, nullptr));
      }
      launch_s += seconds_since(t);
      CHECK(cudaStreamSynchronize(stream));
    }
    std::printf("launches=%ld\nns_per_launch=%.2f\n", n, launch_s * 1e9 / n);
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
  auto launch = [&] {
    if (exec != nullptr) return cudaGraphLaunch(exec, stream);
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
