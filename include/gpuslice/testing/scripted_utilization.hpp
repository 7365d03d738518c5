#pragma once
/// \file
/// A utilization source that replays scripted readings, for tests of the SM limiter's
/// correction and of launch_gate (it has the UtilizationSource shape: poll(now, reading)).

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "gpuslice/rate/limiter.hpp"

namespace gpuslice::testing {

/// Replays readings in order; each becomes visible once `now` reaches its end_ns.
/// Thread-safe (a mutex; tests only).
class scripted_utilization {
 public:
  /// The script; readings must be in increasing end_ns order.
  explicit scripted_utilization(std::vector<rate::utilization_reading> script = {})
      : script_(std::move(script)) {}

  /// Appends a reading to the script.
  void add(rate::utilization_reading r) {
    std::lock_guard<std::mutex> lock(mutex_);
    script_.push_back(r);
  }
  /// Appends readings of \p period_ns each, from \p start_ns to \p end_ns, every one
  /// reporting \p fraction of its period busy.
  void add_constant(std::int64_t start_ns, std::int64_t end_ns, std::int64_t period_ns,
                    double fraction) {
    for (std::int64_t t = start_ns; t + period_ns <= end_ns; t += period_ns) {
      add({t, t + period_ns, static_cast<std::int64_t>(fraction * static_cast<double>(period_ns))});
    }
  }
  /// The next reading whose end is at or before \p now, if any.
  bool poll(std::int64_t now, rate::utilization_reading& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (next_ >= script_.size() || script_[next_].end_ns > now) return false;
    out = script_[next_++];
    return true;
  }
  /// Readings handed out so far.
  std::size_t consumed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return next_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<rate::utilization_reading> script_;
  std::size_t next_ = 0;
};

}  // namespace gpuslice::testing
