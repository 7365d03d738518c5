#pragma once
/// \file
/// A clock that moves only when told to, for tests of code that takes a Clock parameter.

#include <atomic>
#include <cstdint>
#include <memory>

namespace gpuslice::testing {

/// A manual clock in ns. Copies share one time, so a test can keep a copy and advance the
/// clock that a component holds. now() and advance() are thread-safe.
class manual_clock {
 public:
  /// Starts at \p start_ns.
  explicit manual_clock(std::int64_t start_ns = 0)
      : now_(std::make_shared<std::atomic<std::int64_t>>(start_ns)) {}

  /// The current time.
  std::int64_t now() const noexcept { return now_->load(std::memory_order_acquire); }
  /// Moves time forward by \p ns (>= 0); returns the new time.
  std::int64_t advance(std::int64_t ns) noexcept {
    return now_->fetch_add(ns, std::memory_order_acq_rel) + ns;
  }
  /// Sets the time (never backwards: a smaller value is ignored).
  void set(std::int64_t t) noexcept {
    std::int64_t cur = now_->load(std::memory_order_relaxed);
    while (cur < t && !now_->compare_exchange_weak(cur, t, std::memory_order_acq_rel)) {
    }
  }

 private:
  std::shared_ptr<std::atomic<std::int64_t>> now_;
};

}  // namespace gpuslice::testing
