/// \file
/// Library launches through the SM limiter, end to end on the fake driver. cuda.h (CUDA 12.0 and
/// later): cuLibraryLoadData loads a library whose kernels (CUkernel) belong to no context,
/// cuKernelGetFunction gives a kernel's function in the current context, and cuLaunchKernel,
/// cuLaunchKernelEx and cuLaunchCooperativeKernel take a CUkernel where they take a CUfunction.
/// The CUDA runtime launches its kernels this way. Each path must be limited exactly like
/// cuLaunchKernel of a module's function: a storm through it gets the cap's share of the fake
/// device's busy time, and its launches are charged to the container's bucket.
///
///   share PERCENT   every library path in turn (the CUkernel through cuLaunchKernel,
///                   cuLaunchKernelEx and cuLaunchCooperativeKernel, the function from
///                   cuKernelGetFunction, and the CUkernel through the pointers cuGetProcAddress
///                   gives for cuLaunchKernel and cuLaunchKernelEx at this CUDA version) gets
///                   PERCENT +- 3 points of the device's busy time, and the container's bucket
///                   is charged PERCENT +- 3 points of the window (each launch is counted)

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>

#include "../fake/fake_driver.hpp"
#include "client.hpp"
#include "gpuslice/memory/ledger.hpp"
#include "gpuslice/rate/token_bucket.hpp"

namespace {

/// Duration of each storm kernel (fake_sleep_us's parameter).
constexpr std::uint64_t k_kernel_us = 1000;
/// A storm syncs its stream every this many launches (bounds an uncapped storm's queue).
constexpr int k_sync_every = 32;
/// Tolerance of a share, in percentage points.
constexpr double k_tolerance = 3.0;
/// Warm-up before a measurement (the limiter learns the kernel's cost), and the window.
constexpr auto k_warmup = std::chrono::milliseconds(400);
constexpr auto k_window = std::chrono::milliseconds(1500);
constexpr double k_us_per_ns = 1e-3;

using clock_type = std::chrono::steady_clock;
using launch_fn = CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                               unsigned, unsigned, CUstream, void**, void**);
using launch_ex_fn = CUresult (*)(const CUlaunchConfig*, CUfunction, void**, void**);

struct library_setup {
  CUcontext ctx = nullptr;
  CUkernel kernel = nullptr;
  CUfunction function = nullptr;  ///< the kernel's function in ctx, once the kernel was launched
  CUstream stream = nullptr;
  launch_fn proc_launch = nullptr;        ///< cuGetProcAddress("cuLaunchKernel")
  launch_ex_fn proc_launch_ex = nullptr;  ///< cuGetProcAddress("cuLaunchKernelEx")
};

library_setup setup() {
  library_setup d;
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&d.ctx, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(d.ctx) == CUDA_SUCCESS);
  static const char k_image[] = "fake library";
  CUlibrary lib = nullptr;
  CLIENT_REQUIRE(cuLibraryLoadData(&lib, k_image, nullptr, nullptr, 0, nullptr, nullptr, 0) ==
                 CUDA_SUCCESS);
  CLIENT_REQUIRE(cuLibraryGetKernel(&d.kernel, lib, "fake_sleep_us") == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuStreamCreate(&d.stream, 0) == CUDA_SUCCESS);
  void* p = nullptr;
  CUdriverProcAddressQueryResult q{};
  CLIENT_REQUIRE(cuGetProcAddress("cuLaunchKernel", &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT,
                                  &q) == CUDA_SUCCESS);
  d.proc_launch = reinterpret_cast<launch_fn>(p);
  CLIENT_REQUIRE(cuGetProcAddress("cuLaunchKernelEx", &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT,
                                  &q) == CUDA_SUCCESS);
  d.proc_launch_ex = reinterpret_cast<launch_ex_fn>(p);
  return d;
}

/// One storm kernel through \p path.
CUresult launch(const library_setup& d, const std::string& path) {
  std::uint64_t us = k_kernel_us;
  void* params[1] = {&us};
  // cuda.h: a CUkernel may be passed where a CUfunction is expected.
  const auto as_function = reinterpret_cast<CUfunction>(d.kernel);
  CUlaunchConfig cfg{};
  cfg.gridDimX = cfg.gridDimY = cfg.gridDimZ = 1;
  cfg.blockDimX = cfg.blockDimY = cfg.blockDimZ = 1;
  cfg.hStream = d.stream;
  if (path == "kernel")
    return cuLaunchKernel(as_function, 1, 1, 1, 1, 1, 1, 0, d.stream, params, nullptr);
  if (path == "kernel_ex") return cuLaunchKernelEx(&cfg, as_function, params, nullptr);
  if (path == "kernel_coop") {
    return cuLaunchCooperativeKernel(as_function, 1, 1, 1, 1, 1, 1, 0, d.stream, params);
  }
  if (path == "function") {
    return cuLaunchKernel(d.function, 1, 1, 1, 1, 1, 1, 0, d.stream, params, nullptr);
  }
  if (path == "proc_kernel") {
    return d.proc_launch(as_function, 1, 1, 1, 1, 1, 1, 0, d.stream, params, nullptr);
  }
  if (path == "proc_kernel_ex") return d.proc_launch_ex(&cfg, as_function, params, nullptr);
  std::fprintf(stdout, "unknown launch path %s\n", path.c_str());
  std::_Exit(2);
}

/// The container's bucket (the ledger's rate words of device 0), as another process reads it.
std::int64_t charged_ns() {
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  if (path == nullptr) return 0;
  auto l = gpuslice::memory::shared_ledger::open(gpuslice::memory::open_only, path);
  if (!l.ok()) return 0;
  gpuslice::rate::shared_token_bucket<> b(l->rate_words(0));
  return b.ready() ? b.charged_ns() : 0;
}

/// Storms through \p path on another thread while this one measures, after a warm-up, the
/// share of busy time (percent) over a fixed window; \p charged is what the bucket was charged
/// during the window, in percent of it.
double measured_share(const library_setup& d, const std::string& path, double& charged) {
  std::atomic<bool> stop{false};
  std::atomic<bool> failed{false};
  std::thread storm([&] {
    cuCtxSetCurrent(d.ctx);
    int n = 0;
    while (!stop.load()) {
      if (launch(d, path) != CUDA_SUCCESS) {
        failed.store(true);
        break;
      }
      if (++n % k_sync_every == 0) cuStreamSynchronize(d.stream);
    }
    cuStreamSynchronize(d.stream);
  });
  std::this_thread::sleep_for(k_warmup);
  const std::uint64_t busy0 = fake_cuda_physical_busy_us(0);
  const std::int64_t charged0 = charged_ns();
  const auto t0 = clock_type::now();
  std::this_thread::sleep_for(k_window);
  const std::uint64_t busy1 = fake_cuda_physical_busy_us(0);
  const std::int64_t charged1 = charged_ns();
  const auto t1 = clock_type::now();
  stop.store(true);
  storm.join();
  CLIENT_REQUIRE(!failed.load());
  const double wall_us =
      static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(t1 - t0).count());
  const double share = 100.0 * static_cast<double>(busy1 - busy0) / wall_us;
  charged = 100.0 * static_cast<double>(charged1 - charged0) * k_us_per_ns / wall_us;
  std::fprintf(stdout, "%s: share %.2f%% of the device's busy time, charged %.2f%% of the window\n",
               path.c_str(), share, charged);
  std::fflush(stdout);
  return share;
}

int scenario_share(double expected) {
  library_setup d = setup();
  for (const char* path :
       {"kernel", "kernel_ex", "kernel_coop", "function", "proc_kernel", "proc_kernel_ex"}) {
    // The first launch of the kernel loaded it in the context (FAKE_CUDA_LAZY_LOAD_US).
    if (d.function == nullptr) {
      CLIENT_REQUIRE(cuKernelGetFunction(&d.function, d.kernel) == CUDA_SUCCESS);
    }
    double charged = 0;
    const double share = measured_share(d, path, charged);
    std::fprintf(stdout, "  expected %.0f%% +- %.0f\n", expected, k_tolerance);
    CLIENT_CHECK(std::fabs(share - expected) <= k_tolerance);
    // Counted: the container's bucket was charged its share of the window.
    CLIENT_CHECK(std::fabs(charged - expected) <= k_tolerance);
  }
  cuStreamSynchronize(d.stream);
  CLIENT_CHECK(cuStreamDestroy(d.stream) == CUDA_SUCCESS);
  return client::finish("library launches");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string verb = argc > 1 ? argv[1] : "";
  if (verb == "share" && argc == 3) return scenario_share(std::atof(argv[2]));
  std::fprintf(stdout, "usage: %s share PERCENT\n", argv[0]);
  return 2;
}
