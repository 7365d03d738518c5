// Run-to-run stability of the SM limiter in the GPU model: launch_share's check of
// tests/gpu/run.sh (a host launching back to back, synchronising every 16 launches, one launch
// in 32 timed by events) with the variation two runs on one idle GPU show: the first launch's
// module load inside its timed call (0.2..5.2 ms), the phase of NVML's sampling, launch and
// sleep jitter, kernel durations within 2%, and the 4 s window's start anywhere in the 16
// kernels after a 1 s warm-up. For caps 10/30/50/70 and kernels of 1/10/50/100 ms, the share of
// each of 8 seeded runs, as the shim runs without a node region (the limiter assumes company)
// and alone in a node region; the worst deviation from the cap last.
//
//   bench_limiter_stability [--window-at-poll]
//
// --window-at-poll: the NVML window ends when the watcher reads it (the shim before it
// converted NVML's timestamps), instead of at the samples' own time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "gpuslice/rate/gpu_model.hpp"

namespace {
using gpuslice::rate::gpu_spec;
using gpuslice::rate::model_options;
using gpuslice::rate::run_gpu_model;
using gpuslice::rate::tenant_spec;

constexpr std::int64_t k_ms = 1'000'000, k_s = 1'000'000'000;
constexpr int k_seeds = 8;
constexpr std::int64_t k_window_ns = 4 * k_s;

/// The share (percent) of one run; mirrors hardware_like() in tests/rate/test_gpu_model.cpp.
double one_run(double cap, std::int64_t kernel_ns, std::uint64_t seed, bool company,
               bool window_at_poll) {
  gpuslice::rate::detail::model_rng rng(seed * 0x5851F42D4C957F2DULL + 1);
  gpu_spec gpu = gpuslice::rate::hardware_like_gpu(rng);
  gpu.nvml_window_at_poll = window_at_poll;
  tenant_spec t;
  t.share_percent = cap;
  t.kernels = {{kernel_ns, 0.02, 1.0, 0}};
  t.observe_every = 32;
  t.streams_in_flight = 16;
  t.sync_every = 16;
  t.assume_company = company;
  const double batch_s = 16.0 * static_cast<double>(kernel_ns) / 1e9 * 100.0 / cap;
  const auto phase = static_cast<std::int64_t>(rng.uniform() * std::min(batch_s, 1.0) * 100) * 10;
  const std::int64_t from = k_s + phase * k_ms;
  const std::int64_t to = from + k_window_ns;
  model_options o;
  o.duration_ns = (to / k_s + 1) * k_s;
  o.seed = seed;
  auto r = run_gpu_model(gpu, {t}, o);
  if (!r) {
    std::fprintf(stderr, "%s\n", r.message().c_str());
    std::exit(1);
  }
  return 100 * r->share_between(0, from, to);
}
}  // namespace

int main(int argc, char** argv) {
  const bool at_poll = argc > 1 && std::strcmp(argv[1], "--window-at-poll") == 0;
  for (const bool company : {true, false}) {
    std::printf("%s\n",
                company ? "no node region (the shim assumes company)" : "alone in a node region");
    double worst = 0;
    for (const double cap : {10.0, 30.0, 50.0, 70.0}) {
      for (const std::int64_t kernel : {1 * k_ms, 10 * k_ms, 50 * k_ms, 100 * k_ms}) {
        std::printf("  cap %2.0f, %3lld ms kernels:", cap, static_cast<long long>(kernel / k_ms));
        for (std::uint64_t seed = 1; seed <= k_seeds; ++seed) {
          const double s = one_run(cap, kernel, seed, company, at_poll);
          worst = std::max(worst, std::fabs(s - cap));
          std::printf(" %5.1f", s);
        }
        std::printf("\n");
      }
    }
    std::printf("  worst deviation %.2f points\n", worst);
  }
  return 0;
}
