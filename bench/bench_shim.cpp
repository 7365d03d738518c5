// The cost the shim adds to a driver call, measured in one run against the same fake driver
// called directly. The program opens the fake libcuda.so.1 and libgpuslice.so side by side
// (nothing is preloaded) and takes each entry point from both: the fake's own function is the
// baseline, the shim's function (which then calls the fake's) is what a program under
// LD_PRELOAD calls. After the run it prints the added nanoseconds per call and the ratio.
//
// Paths: GPUSLICE_SHIM_PATH and GPUSLICE_FAKE_CUDA_DIR, compiled in by bench/shim.cmake or
// given in the environment. The shim runs with a shared ledger file, as in a container.

#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace {

// The few driver types the benchmark needs (it does not include cuda.h, so the generic bench
// build compiles it like any other).
using cu_result = int;
using cu_deviceptr = unsigned long long;
using cu_context = void*;
using init_fn = cu_result (*)(unsigned);
using retain_fn = cu_result (*)(cu_context*, int);
using set_ctx_fn = cu_result (*)(cu_context);
using alloc_fn = cu_result (*)(cu_deviceptr*, std::size_t);
using free_fn = cu_result (*)(cu_deviceptr);
using info_fn = cu_result (*)(std::size_t*, std::size_t*);
constexpr cu_result k_success = 0;

/// Bytes per allocation: small enough that the fake's heap serves it quickly.
constexpr std::size_t k_alloc_bytes = 4096;

struct entry_points {
  alloc_fn alloc = nullptr;
  free_fn free = nullptr;
  info_fn info = nullptr;
};

struct setup {
  entry_points direct;
  entry_points shim;
  bool ok = false;
  std::string ledger;
};

std::string path_from(const char* env, const char* compiled) {
  const char* v = std::getenv(env);
  return v != nullptr ? v : compiled;
}

#ifndef GPUSLICE_SHIM_PATH
#define GPUSLICE_SHIM_PATH ""
#endif
#ifndef GPUSLICE_FAKE_CUDA_DIR
#define GPUSLICE_FAKE_CUDA_DIR ""
#endif

setup& the_setup() {
  static setup s = [] {
    setup out;
    const std::string shim = path_from("GPUSLICE_SHIM_PATH", GPUSLICE_SHIM_PATH);
    const std::string fake_dir = path_from("GPUSLICE_FAKE_CUDA_DIR", GPUSLICE_FAKE_CUDA_DIR);
    if (shim.empty() || fake_dir.empty()) return out;
    // The fake serves small allocations from the heap, so the baseline is not a system call.
    setenv("FAKE_CUDA_HOST_HEAP", "1", 1);
    setenv("FAKE_CUDA_MEMORY", "64Gi", 1);
    setenv("CUDA_DEVICE_MEMORY_LIMIT", "32Gi", 1);
    out.ledger = "bench_shim_ledger." + std::to_string(getpid()) + ".bin";
    setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", out.ledger.c_str(), 1);
    // Loaded first by path, so the shim's own dlopen("libcuda.so.1") finds this same library.
    void* fake = dlopen((fake_dir + "/libcuda.so.1").c_str(), RTLD_NOW | RTLD_GLOBAL);
    void* lib = dlopen(shim.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (fake == nullptr || lib == nullptr) {
      std::fprintf(stderr, "bench_shim: %s\n", dlerror());
      return out;
    }
    auto get = [](void* h, const char* name) { return dlsym(h, name); };
    auto init = reinterpret_cast<init_fn>(get(fake, "cuInit"));
    auto retain = reinterpret_cast<retain_fn>(get(fake, "cuDevicePrimaryCtxRetain"));
    auto set_ctx = reinterpret_cast<set_ctx_fn>(get(fake, "cuCtxSetCurrent"));
    for (auto [h, ep] : {std::pair{fake, &out.direct}, std::pair{lib, &out.shim}}) {
      ep->alloc = reinterpret_cast<alloc_fn>(get(h, "cuMemAlloc_v2"));
      ep->free = reinterpret_cast<free_fn>(get(h, "cuMemFree_v2"));
      ep->info = reinterpret_cast<info_fn>(get(h, "cuMemGetInfo_v2"));
    }
    cu_context ctx = nullptr;
    out.ok = init && retain && set_ctx && out.direct.alloc && out.shim.alloc &&
             out.direct.alloc != out.shim.alloc && init(0) == k_success &&
             retain(&ctx, 0) == k_success && set_ctx(ctx) == k_success;
    return out;
  }();
  return s;
}

void alloc_free(benchmark::State& state, bool through_shim) {
  setup& s = the_setup();
  if (!s.ok) {
    state.SkipWithError("the shim or the fake driver could not be loaded");
    return;
  }
  const entry_points& ep = through_shim ? s.shim : s.direct;
  for (auto _ : state) {
    cu_deviceptr p = 0;
    if (ep.alloc(&p, k_alloc_bytes) != k_success || ep.free(p) != k_success) {
      state.SkipWithError("allocation failed");
      return;
    }
    benchmark::DoNotOptimize(p);
  }
}

void mem_get_info(benchmark::State& state, bool through_shim) {
  setup& s = the_setup();
  if (!s.ok) {
    state.SkipWithError("the shim or the fake driver could not be loaded");
    return;
  }
  const entry_points& ep = through_shim ? s.shim : s.direct;
  for (auto _ : state) {
    std::size_t free_b = 0, total_b = 0;
    if (ep.info(&free_b, &total_b) != k_success) {
      state.SkipWithError("cuMemGetInfo_v2 failed");
      return;
    }
    benchmark::DoNotOptimize(free_b);
  }
}

BENCHMARK_CAPTURE(alloc_free, direct, false);
BENCHMARK_CAPTURE(alloc_free, shim, true);
BENCHMARK_CAPTURE(mem_get_info, direct, false);
BENCHMARK_CAPTURE(mem_get_info, shim, true);

/// Prints, after the usual table, what the shim adds per call and the ratio to the baseline.
class added_cost_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (!r.error_occurred && r.run_type == Run::RT_Iteration) {
        ns_[r.benchmark_name()] = r.GetAdjustedCPUTime();
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    for (const char* base : {"alloc_free", "mem_get_info"}) {
      const auto d = ns_.find(std::string(base) + "/direct");
      const auto s = ns_.find(std::string(base) + "/shim");
      if (d == ns_.end() || s == ns_.end()) continue;
      std::printf("%-14s direct %8.1f ns, through the shim %8.1f ns: +%.1f ns per call (x%.2f)\n",
                  base, d->second, s->second, s->second - d->second, s->second / d->second);
    }
  }

 private:
  std::map<std::string, double> ns_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  added_cost_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  if (!the_setup().ledger.empty()) unlink(the_setup().ledger.c_str());
  return 0;
}
