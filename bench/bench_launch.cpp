// The cost the shim's launch path adds to cuLaunchKernel, measured in one run against the same
// fake driver called directly. As bench_shim does, the program opens the fake libcuda.so.1 and
// libgpuslice.so side by side (nothing is preloaded) and takes cuLaunchKernel from both. The
// kernel is the fake's `fake_null`, which queues nothing, so the baseline is the driver entry
// alone and the difference is the shim's.
//
// A real program reaches the shim's cuLaunchKernel hook through the pointer cuGetProcAddress
// resolves (the CUDA runtime's route; the shim answers with its hook, and on an H200 the
// driver's cuGetProcAddress and dlsym give the same cuLaunchKernel), so taking both functions
// with dlsym measures the same code. (Not cuGetProcAddress here: with the shim dlopen'd after
// the fake, its hook table's own addresses bind to the fake's earlier global definitions.)
// The hook reads no thread-local on the fast path, so the TLS model of a preloaded library
// and of this dlopen'd one cannot differ there. The fake shows GPUSLICE_BENCH_DEVICES GPUs
// (default 2): the launch path must not ask the driver which device a stream is on. The first
// launch through the shim (its set-up: device registration, gates, the watcher thread) is
// timed apart and printed: a real-GPU check that divides a set-up of milliseconds over a few
// hundred thousand launches reads it as a per-launch cost.
//
// Cases, all in one process (the ledger's SM field selects the path, as `gpuslice set-limit`
// would):
//   launch/direct        the fake's cuLaunchKernel
//   launch/shim_no_cap   through the shim, no SM cap on any device: the fast path (target
//                        <= 10 ns added)
//   launch/shim_alone    through the shim, a 50% cap under the default policy with a node
//                        region where this tenant is alone: admitted by the limiter, uncapped
//                        (every launch is charged and one in 32 is timed with two events)
//
// Paths: GPUSLICE_SHIM_PATH and GPUSLICE_FAKE_CUDA_DIR, compiled in by bench/shim.cmake or
// given in the environment.

#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <cstdlib>
#include <map>
#include <string>

#include "gpuslice/memory/ledger.hpp"
#include "shim_bench_util.hpp"

namespace {

using gpuslice_bench::k_success;
// The driver types the benchmark needs beyond the shared ones (it does not include cuda.h).
using cu_result = gpuslice_bench::cu_result;
using cu_module = void*;
using cu_function = void*;
using cu_stream = void*;
using load_fn = cu_result (*)(cu_module*, const void*);
using get_function_fn = cu_result (*)(cu_function*, cu_module, const char*);
using launch_fn = cu_result (*)(cu_function, unsigned, unsigned, unsigned, unsigned, unsigned,
                                unsigned, unsigned, cu_stream, void**, void**);
/// Visible fake GPUs unless GPUSLICE_BENCH_DEVICES says otherwise.
constexpr const char* k_default_devices = "2";
/// How long the watcher needs to see a change of the ledger's SM field (a few of its ticks).
constexpr auto k_settle = std::chrono::milliseconds(50);
/// The ledger's SM field for "explicitly no cap" and for the cap of the limiter case.
constexpr std::uint32_t k_no_cap = 100;
constexpr std::uint32_t k_cap = 50;

struct setup {
  launch_fn direct = nullptr;
  launch_fn shim = nullptr;
  cu_function null_kernel = nullptr;
  std::string ledger;
  std::string node;
  double first_launch_us = 0;  ///< the first launch through the shim, set-up included
  bool ok = false;
};

setup& the_setup() {
  static setup s = [] {
    setup out;
    const gpuslice_bench::library_paths paths = gpuslice_bench::find_library_paths();
    if (paths.shim.empty() || paths.fake_dir.empty()) return out;
    out.ledger = "bench_launch_ledger." + std::to_string(getpid()) + ".bin";
    out.node = "bench_launch_node." + std::to_string(getpid()) + ".bin";
    setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", out.ledger.c_str(), 1);
    setenv("GPUSLICE_NODE_REGION", out.node.c_str(), 1);
    setenv("GPU_CORE_UTILIZATION_POLICY", "default", 1);
    const char* devices = std::getenv("GPUSLICE_BENCH_DEVICES");
    setenv("FAKE_CUDA_DEVICES", devices != nullptr ? devices : k_default_devices, 1);
    gpuslice_bench::libraries libs;
    if (!gpuslice_bench::open_libraries(paths, "bench_launch", libs)) return out;
    void* fake = libs.fake;
    auto load = reinterpret_cast<load_fn>(dlsym(fake, "cuModuleLoadData"));
    auto get_function = reinterpret_cast<get_function_fn>(dlsym(fake, "cuModuleGetFunction"));
    out.direct = reinterpret_cast<launch_fn>(dlsym(fake, "cuLaunchKernel"));
    out.shim = reinterpret_cast<launch_fn>(dlsym(libs.shim, "cuLaunchKernel"));
    cu_module module = nullptr;
    static const char k_image[] = "bench module";
    out.ok = load && get_function && out.direct && out.shim && out.direct != out.shim &&
             gpuslice_bench::start_context(fake) && load(&module, k_image) == k_success &&
             get_function(&out.null_kernel, module, "fake_null") == k_success;
    // One launch through the shim registers the devices in the ledger and starts the watcher.
    const auto t0 = std::chrono::steady_clock::now();
    out.ok = out.ok &&
             out.shim(out.null_kernel, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, nullptr) == k_success;
    out.first_launch_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }();
  return s;
}

/// Stores \p percent as the ledger's SM field of device 0 (what `gpuslice set-limit` does),
/// then gives the shim's watcher time to see it.
bool set_sm_field(const setup& s, std::uint32_t percent) {
  auto l = gpuslice::memory::shared_ledger::open(gpuslice::memory::open_only, s.ledger);
  const bool ok = l.ok() && l->device_count() > 0 && l->set_sm_limit(0, percent);
  std::this_thread::sleep_for(k_settle);
  return ok;
}

void launch(benchmark::State& state, int which) {
  setup& s = the_setup();
  if (!s.ok) {
    state.SkipWithError("the shim or the fake driver could not be loaded");
    return;
  }
  if (which > 0 && !set_sm_field(s, which == 1 ? k_no_cap : k_cap)) {
    state.SkipWithError("the ledger's SM field could not be set");
    return;
  }
  const launch_fn fn = which == 0 ? s.direct : s.shim;
  for (auto _ : state) {
    if (fn(s.null_kernel, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, nullptr) != k_success) {
      state.SkipWithError("cuLaunchKernel failed");
      return;
    }
  }
}

BENCHMARK_CAPTURE(launch, direct, 0);
BENCHMARK_CAPTURE(launch, shim_no_cap, 1);
BENCHMARK_CAPTURE(launch, shim_alone, 2);

/// Prints, after the usual table, what the shim adds per launch and the ratio to the baseline.
class added_cost_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type == Run::RT_Iteration || median) ns_[r.run_name.str()] = r.GetAdjustedCPUTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    const auto d = ns_.find("launch/direct");
    if (d == ns_.end()) return;
    std::printf("first launch through the shim (set-up included): %.0f us\n",
                the_setup().first_launch_us);
    for (const char* name : {"launch/shim_no_cap", "launch/shim_alone"}) {
      const auto s = ns_.find(name);
      if (s == ns_.end()) continue;
      std::printf("%-20s direct %7.1f ns, through the shim %7.1f ns: +%.1f ns per launch (x%.2f)\n",
                  name, d->second, s->second, s->second - d->second, s->second / d->second);
    }
  }

 private:
  std::map<std::string, double> ns_;
};

}  // namespace

int main(int argc, char** argv) {
  added_cost_reporter reporter;
  if (const int rc = gpuslice_bench::run_benchmarks(argc, argv, reporter); rc != 0) return rc;
  for (const std::string& f : {the_setup().ledger, the_setup().node}) {
    if (!f.empty()) unlink(f.c_str());
  }
  return 0;
}
