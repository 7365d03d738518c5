#pragma once
/// \file
/// A faithful model of the reference interposer's SM limiter (HAMi-core's
/// multiprocess_utilization_watcher), kept as the baseline our controller is measured against
/// in the GPU model and the benchmarks. Its four traits, as the design describes them:
///  1. each launch is charged its grid size in blocks;
///  2. a watcher refills the bucket every 120 ms by a `share` that it adjusts from NVML's
///     per-process utilization (itself a 1/6 s to 1 s average);
///  3. a launch that finds the bucket negative sleeps 10 ms and looks again;
///  4. the adjustment step is sm_count^2 * max_threads_per_sm * diff / 2560, so it grows with
///     the square of the SM count; the bucket is capped at max_threads_per_sm * sm_count * 32.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>

namespace gpuslice::rate {

/// The reference controller's constants, named.
struct reference_params {
  /// Watcher period (HAMi-core's g_wait).
  std::int64_t refill_period_ns = 120'000'000;
  /// Sleep of a launch that finds no tokens (g_cycle).
  std::int64_t sleep_ns = 10'000'000;
  /// CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR of the modelled GPU.
  std::int64_t max_threads_per_sm = 2048;
  /// Bucket capacity multiplier (FACTOR).
  std::int64_t capacity_factor = 32;
  /// Smallest utilization difference the step uses, in percent.
  std::int64_t min_diff_percent = 5;
  /// Divisor of the step (sm^2 * threads * diff / 2560).
  std::int64_t step_divisor = 2560;
};

/// The reference controller for one device of one process.
/// try_launch() is thread-safe (compare_exchange on the bucket, as the original);
/// tick() is for the single watcher thread.
class reference_controller {
 public:
  /// A controller for a GPU of \p sm_count SMs and a limit of \p limit_percent (1..100).
  reference_controller(std::int64_t sm_count, std::int64_t limit_percent,
                       reference_params params = {}) noexcept
      : params_(params),
        sm_count_(sm_count),
        limit_(limit_percent),
        total_(params.max_threads_per_sm * sm_count * params.capacity_factor) {}

  /// The launch check: charges \p grid_blocks and returns true, or returns false when the
  /// bucket is negative (the caller sleeps params().sleep_ns and calls again). Thread-safe.
  bool try_launch(std::int64_t grid_blocks) noexcept {
    std::int64_t before = tokens_.load(std::memory_order_relaxed);
    do {
      if (before < 0) return false;
    } while (
        !tokens_.compare_exchange_weak(before, before - grid_blocks, std::memory_order_relaxed));
    return true;
  }

  /// One watcher period: \p user_util_percent is the process's latest NVML SM utilization
  /// (out-of-range values are ignored, as the original does). Single watcher thread only.
  void tick(std::int64_t user_util_percent) noexcept {
    if (share_ == total_ && tokens_.load(std::memory_order_relaxed) < 0) {
      total_ *= 2;  // the original doubles its ceiling when a full share still ran dry
      share_ = total_;
    }
    if (user_util_percent < 0 || user_util_percent > 100) return;
    share_ = delta(user_util_percent, share_);
    std::int64_t before = tokens_.load(std::memory_order_relaxed);
    std::int64_t after = 0;
    do {
      after = std::min(before + share_, total_);
    } while (!tokens_.compare_exchange_weak(before, after, std::memory_order_relaxed));
  }

  /// Tokens (blocks) in the bucket. Thread-safe.
  std::int64_t tokens() const noexcept { return tokens_.load(std::memory_order_relaxed); }
  /// The refill per period. Watcher thread only.
  std::int64_t share() const noexcept { return share_; }
  /// The constants.
  const reference_params& params() const noexcept { return params_; }

 private:
  std::int64_t delta(std::int64_t user_current, std::int64_t share) const noexcept {
    const std::int64_t diff = std::max(std::llabs(limit_ - user_current),
                                       static_cast<long long>(params_.min_diff_percent));
    std::int64_t increment =
        sm_count_ * sm_count_ * params_.max_threads_per_sm * diff / params_.step_divisor;
    if (diff > limit_ / 2) increment = increment * diff * 2 / (limit_ + 1);
    if (user_current <= limit_) return std::min(share + increment, total_);
    return std::max<std::int64_t>(share - increment, 0);
  }

  reference_params params_;
  std::int64_t sm_count_;
  std::int64_t limit_;
  std::int64_t total_;
  std::int64_t share_ = 0;
  std::atomic<std::int64_t> tokens_{0};
};

}  // namespace gpuslice::rate
