#pragma once
/// \file
/// Fakes for the seams of shared state (the Liveness seam of liveness.hpp, used by the memory
/// ledger, the node region and the claims of claim.hpp; and the ledger's clock), for users' own
/// tests: a liveness check whose processes a test starts, kills, obscures ("unknown": alive
/// to every judge) and re-creates with a new start time (a reused pid), and a clock the test
/// steps by hand (claims and the ledger wait on it). Both are cheap handles to shared state, so the
/// test keeps a copy and drives the one the ledger holds.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "gpuslice/liveness.hpp"
#include "gpuslice/memory/platform.hpp"

namespace gpuslice::testing {

/// A process table the test controls. Copies share one table. Thread-safe.
class fake_liveness {
 public:
  /// A table where only \p self_pid (started at \p self_start) runs.
  explicit fake_liveness(std::int32_t self_pid = 1, std::uint64_t self_start = 1)
      : state_(std::make_shared<state>()) {
    state_->self = self_pid;
    state_->table[self_pid] = self_start;
  }
  /// Marks \p pid as running, started at \p start_time (replacing any earlier process with
  /// that pid: a reused pid). Thread-safe.
  void start(std::int32_t pid, std::uint64_t start_time) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->table[pid] = start_time;
  }
  /// Marks \p pid as gone. Thread-safe.
  void kill(std::int32_t pid) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->table.erase(pid);
  }
  /// Makes probes of \p pid answer "unknown" (an unreadable /proc) until start() or kill().
  /// Thread-safe.
  void obscure(std::int32_t pid) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->table[pid] = k_unknown;
  }
  /// What the ledger's liveness seam answers for \p pid. Thread-safe.
  memory::liveness_probe probe(std::int32_t pid) const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    auto it = state_->table.find(pid);
    if (it == state_->table.end()) return {memory::liveness_probe::status::gone, 0};
    if (it->second == k_unknown) return {memory::liveness_probe::status::unknown, 0};
    return {memory::liveness_probe::status::running, it->second};
  }
  /// The pid the ledger takes for the calling process. Thread-safe.
  std::int32_t self_pid() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->self;
  }

 private:
  static constexpr std::uint64_t k_unknown = ~std::uint64_t{0};  // marks an obscured pid
  struct state {
    mutable std::mutex mutex;
    std::int32_t self = 1;
    std::map<std::int32_t, std::uint64_t> table;
  };
  std::shared_ptr<state> state_;
};

/// A nanosecond clock that moves only when told. Copies share one reading. Thread-safe.
class stepped_clock {
 public:
  /// A clock reading \p start_ns.
  explicit stepped_clock(std::uint64_t start_ns = 0)
      : now_(std::make_shared<std::atomic<std::uint64_t>>(start_ns)) {}
  /// The current reading. Thread-safe.
  std::uint64_t now_ns() const noexcept { return now_->load(std::memory_order_acquire); }
  /// Moves the clock forward by \p ns. Thread-safe.
  void advance(std::uint64_t ns) noexcept { now_->fetch_add(ns, std::memory_order_acq_rel); }

 private:
  std::shared_ptr<std::atomic<std::uint64_t>> now_;
};

}  // namespace gpuslice::testing
