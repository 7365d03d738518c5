// The cost the shim adds to a driver call, measured in one run against the same fake driver
// called directly. The program opens the fake libcuda.so.1 and libgpuslice.so side by side
// (nothing is preloaded) and takes each entry point from both: the fake's own function is the
// baseline, the shim's function (which then calls the fake's) is what a program under
// LD_PRELOAD calls. After the run it prints the added nanoseconds per call and the ratio.
//
// Paths: GPUSLICE_SHIM_PATH and GPUSLICE_FAKE_CUDA_DIR, compiled in by bench/shim.cmake or
// given in the environment. The shim runs with a shared ledger file, as in a container.
//
// GPUSLICE_BENCH_NVML says how NVML is there for the shim: unset or "none", absent; "listed",
// the fake NVML lists this process with its figure; "no_figure", "unlisted" and
// "no_permission", the fake answers so (FAKE_NVML_PROCESSES): the shim must not read NVML on
// the counted calls whatever it answers. A "_later" suffix ("unlisted_later") lets the fake list
// this process with its figure until the shim has identified and measured it, then answer so.

#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "shim_bench_util.hpp"

namespace {

using gpuslice_bench::k_success;
// The driver types the benchmark needs beyond the shared ones (it does not include cuda.h).
using cu_result = gpuslice_bench::cu_result;
using cu_deviceptr = unsigned long long;
using alloc_fn = cu_result (*)(cu_deviceptr*, std::size_t);
using free_fn = cu_result (*)(cu_deviceptr);
using info_fn = cu_result (*)(std::size_t*, std::size_t*);

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

setup& the_setup() {
  static setup s = [] {
    setup out;
    const gpuslice_bench::library_paths paths = gpuslice_bench::find_library_paths();
    if (paths.shim.empty() || paths.fake_dir.empty()) return out;
    // The fake serves small allocations from the heap, so the baseline is not a system call.
    setenv("FAKE_CUDA_HOST_HEAP", "1", 1);
    setenv("FAKE_CUDA_MEMORY", "64Gi", 1);
    setenv("CUDA_DEVICE_MEMORY_LIMIT", "32Gi", 1);
    out.ledger = "bench_shim_ledger." + std::to_string(getpid()) + ".bin";
    setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", out.ledger.c_str(), 1);
    gpuslice_bench::libraries libs;
    if (!gpuslice_bench::open_libraries(paths, "bench_shim", libs)) return out;
    const char* nvml = std::getenv("GPUSLICE_BENCH_NVML");
    const std::string answer = nvml == nullptr ? "none" : nvml;
    const std::string k_later = "_later";
    const bool later = answer.size() > k_later.size() &&
                       answer.compare(answer.size() - k_later.size(), k_later.size(), k_later) == 0;
    const std::string how = later ? answer.substr(0, answer.size() - k_later.size()) : answer;
    if (answer != "none") {
      if (how != "listed" && !later) setenv("FAKE_NVML_PROCESSES", how.c_str(), 1);
      // Loaded by path before the shim's first call: the shim's dlopen("libnvidia-ml.so.1")
      // then finds this one.
      if (dlopen((paths.fake_dir + "/libnvidia-ml.so.1").c_str(), RTLD_NOW | RTLD_GLOBAL) ==
          nullptr) {
        std::fprintf(stderr, "bench_shim: %s\n", dlerror());
        return out;
      }
    }
    std::printf("NVML for the shim: %s\n", answer.c_str());
    for (auto [h, ep] : {std::pair{libs.fake, &out.direct}, std::pair{libs.shim, &out.shim}}) {
      ep->alloc = reinterpret_cast<alloc_fn>(dlsym(h, "cuMemAlloc_v2"));
      ep->free = reinterpret_cast<free_fn>(dlsym(h, "cuMemFree_v2"));
      ep->info = reinterpret_cast<info_fn>(dlsym(h, "cuMemGetInfo_v2"));
    }
    out.ok = out.direct.alloc && out.shim.alloc && out.direct.alloc != out.shim.alloc &&
             gpuslice_bench::start_context(libs.fake);
    if (out.ok && later) {
      // Identified and measured while listed; NVML answers the other way from then on.
      cu_deviceptr p = 0;
      std::size_t free_b = 0, total_b = 0;
      out.ok = out.shim.alloc(&p, k_alloc_bytes) == k_success && out.shim.free(p) == k_success &&
               out.shim.info(&free_b, &total_b) == k_success;
      setenv("FAKE_NVML_PROCESSES", how.c_str(), 1);
    }
    return out;
  }();
  return s;
}

/// The entry points a case calls, or null (the case skipped) when the setup failed.
const entry_points* entry_points_for(benchmark::State& state, bool through_shim) {
  setup& s = the_setup();
  if (!s.ok) {
    state.SkipWithError("the shim or the fake driver could not be loaded");
    return nullptr;
  }
  return through_shim ? &s.shim : &s.direct;
}

void alloc_free(benchmark::State& state, bool through_shim) {
  const entry_points* eps = entry_points_for(state, through_shim);
  if (eps == nullptr) return;
  const entry_points& ep = *eps;
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
  const entry_points* eps = entry_points_for(state, through_shim);
  if (eps == nullptr) return;
  const entry_points& ep = *eps;
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
  added_cost_reporter reporter;
  if (const int rc = gpuslice_bench::run_benchmarks(argc, argv, reporter); rc != 0) return rc;
  if (!the_setup().ledger.empty()) unlink(the_setup().ledger.c_str());
  return 0;
}
