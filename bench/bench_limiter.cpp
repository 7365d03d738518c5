// The SM limiter's launch path: one admission check on the fast path (tokens available), and
// the same with 1..8 threads launching through one shared bucket. Baselines in the same run:
// the reference controller's check (one compare_exchange on a block counter) and a bucket
// behind a std::mutex.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "gpuslice/rate/limiter.hpp"
#include "gpuslice/rate/reference_controller.hpp"
#include "gpuslice/rate/token_bucket.hpp"

namespace {
using gpuslice::task_priority;
using gpuslice::utilization_policy;
using gpuslice::rate::limiter_settings;
using gpuslice::rate::local_rate_words;
using gpuslice::rate::reference_controller;
using gpuslice::rate::sm_limiter;
using gpuslice::rate::steady_clock_ns;

/// Cost of the benchmarked kernel: small enough that 8 threads never drain the bucket.
constexpr std::int64_t k_kernel_ns = 1;
/// Share of the benchmarked tenant (force policy: always capped).
constexpr double k_share_percent = 90.0;
constexpr std::uint64_t k_function = 0xABCDEF;

struct limiter_fixture {
  local_rate_words words;
  sm_limiter<> limiter{words.words,
                       limiter_settings{k_share_percent, utilization_policy::force,
                                        task_priority::low}};
  limiter_fixture() { limiter.observe(k_function, k_kernel_ns); }
};

/// One admission on the fast path, time passed in (no clock read).
void BM_admit_fast_path(benchmark::State& state) {
  limiter_fixture f;
  std::int64_t now = steady_clock_ns{}.now();
  for (auto _ : state) {
    now += 2 * k_kernel_ns;  // tokens always there
    benchmark::DoNotOptimize(f.limiter.admit(k_function, now));
  }
}
BENCHMARK(BM_admit_fast_path);

/// Baseline: the reference controller's launch check.
void BM_reference_check(benchmark::State& state) {
  reference_controller r(132, 50);
  for (auto _ : state) benchmark::DoNotOptimize(r.try_launch(0));  // 0 blocks: never runs dry
}
BENCHMARK(BM_reference_check);

/// Threads launching through one limiter; each admission reads the real clock, as the shim's.
std::unique_ptr<limiter_fixture> g_shared;
void BM_admit_threads(benchmark::State& state) {
  if (state.thread_index() == 0) g_shared = std::make_unique<limiter_fixture>();
  for (auto _ : state) benchmark::DoNotOptimize(g_shared->limiter.admit(k_function));
}
BENCHMARK(BM_admit_threads)->ThreadRange(1, 8)->UseRealTime();

/// Baseline: the same bucket arithmetic under a std::mutex.
struct mutex_bucket {
  std::mutex m;
  std::int64_t zero_time = 0;
  std::int64_t consume(std::int64_t cost, std::int64_t now) {
    std::lock_guard<std::mutex> lock(m);
    constexpr std::int64_t k_full = 10'000'000;
    zero_time = std::max(zero_time, now - k_full) + cost;
    return std::max<std::int64_t>(zero_time - now, 0);
  }
};
mutex_bucket g_mutex_bucket;
void BM_mutex_bucket_threads(benchmark::State& state) {
  const steady_clock_ns clock;
  for (auto _ : state) benchmark::DoNotOptimize(g_mutex_bucket.consume(k_kernel_ns, clock.now()));
}
BENCHMARK(BM_mutex_bucket_threads)->ThreadRange(1, 8)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
