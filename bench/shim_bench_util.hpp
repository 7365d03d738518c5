#pragma once
// What bench_shim and bench_launch share: the fake libcuda.so.1 and libgpuslice.so opened side
// by side (nothing is preloaded), a current context on the fake's device 0, and the run of the
// registered benchmarks with a reporter of the program's own.
//
// Paths: GPUSLICE_SHIM_PATH and GPUSLICE_FAKE_CUDA_DIR, compiled in by bench/shim.cmake or
// given in the environment (the environment wins).
#include <benchmark/benchmark.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#ifndef GPUSLICE_SHIM_PATH
#define GPUSLICE_SHIM_PATH ""
#endif
#ifndef GPUSLICE_FAKE_CUDA_DIR
#define GPUSLICE_FAKE_CUDA_DIR ""
#endif

namespace gpuslice_bench {

// The few driver types the benchmarks need (they do not include cuda.h, so the generic bench
// build compiles them like any other program).
using cu_result = int;
using cu_context = void*;
using init_fn = cu_result (*)(unsigned);
using retain_fn = cu_result (*)(cu_context*, int);
using set_ctx_fn = cu_result (*)(cu_context);
inline constexpr cu_result k_success = 0;

/// The shim library and the directory of the fake driver.
struct library_paths {
  std::string shim;
  std::string fake_dir;
};

/// Each path from its environment variable, else the one compiled in; either may be empty.
inline library_paths find_library_paths() {
  auto path_from = [](const char* env, const char* compiled) -> std::string {
    const char* v = std::getenv(env);
    return v != nullptr ? v : compiled;
  };
  return {path_from("GPUSLICE_SHIM_PATH", GPUSLICE_SHIM_PATH),
          path_from("GPUSLICE_FAKE_CUDA_DIR", GPUSLICE_FAKE_CUDA_DIR)};
}

/// The two libraries as opened by open_libraries.
struct libraries {
  void* fake = nullptr;
  void* shim = nullptr;
};

/// Opens the fake libcuda.so.1 first, by path and RTLD_GLOBAL, so the shim's own
/// dlopen("libcuda.so.1") finds this same library; then the shim, RTLD_LOCAL. False (after
/// printing `program: dlerror()` on stderr) when either does not open.
inline bool open_libraries(const library_paths& paths, const char* program, libraries& out) {
  out.fake = dlopen((paths.fake_dir + "/libcuda.so.1").c_str(), RTLD_NOW | RTLD_GLOBAL);
  out.shim = dlopen(paths.shim.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (out.fake == nullptr || out.shim == nullptr) {
    std::fprintf(stderr, "%s: %s\n", program, dlerror());
    return false;
  }
  return true;
}

/// Through the fake's own entry points: cuInit, then device 0's primary context made current.
/// False when an entry point is missing or a call fails.
inline bool start_context(void* fake) {
  auto init = reinterpret_cast<init_fn>(dlsym(fake, "cuInit"));
  auto retain = reinterpret_cast<retain_fn>(dlsym(fake, "cuDevicePrimaryCtxRetain"));
  auto set_ctx = reinterpret_cast<set_ctx_fn>(dlsym(fake, "cuCtxSetCurrent"));
  cu_context ctx = nullptr;
  return init && retain && set_ctx && init(0) == k_success && retain(&ctx, 0) == k_success &&
         set_ctx(ctx) == k_success;
}

/// Runs the registered benchmarks with \p reporter: 0, or 1 (after saying so) when an argument
/// is not one of Google Benchmark's.
inline int run_benchmarks(int& argc, char** argv, benchmark::BenchmarkReporter& reporter) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace gpuslice_bench
