#pragma once
/// \file
/// Per-event metrics of a simulation run and their discretisation to integer arrived-load
/// points (PLACEMENT-SPEC §8). Pure functions over plain values: thread-safe.

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gpuslice/fit/openb.hpp"

namespace gpuslice::sim {

/// Highest arrived-load point reported, in percent of GPU capacity.
inline constexpr int k_max_arrived_pct = 130;
/// Decimal places the artifact keeps when it logs and analyses values.
inline constexpr double k_two_decimals = 100.0;

/// Rounds half to even at two decimals, as numpy's round(x, 2) does.
inline double round2(double x) noexcept {
  return std::nearbyint(x * k_two_decimals) / k_two_decimals;
}

/// What a replay event was (run_record::kind).
enum class replay_event : std::uint8_t {
  arrived_started = 0,     ///< arrived and was placed at once
  arrived_waiting = 1,     ///< arrived and fit nowhere: waits
  started_after_wait = 2,  ///< placed after waiting
  departed = 3,            ///< finished and freed its resources
  gave_up = 4,             ///< waited until it would have finished: failed
};

/// Everything recorded after each pod's attempt (one entry per event k).
struct run_record {
  std::vector<std::int32_t> pod;         ///< index of the pod in the prepared workload
  std::vector<std::int32_t> node;        ///< node it went to, -1 = failed
  std::vector<std::uint8_t> gpus;        ///< GPUs (bit i = GPU i) that each got m milli
  std::vector<std::int64_t> arrived;     ///< A_k: sum of n*m over attempted pods
  std::vector<std::int64_t> allocated;   ///< U_k: allocated milli-GPU
  std::vector<double> frag_milli;        ///< F_k in milli-GPU, rounded to 2 decimals
  std::vector<double> frag_rate;         ///< 100 F_k / idle_k, rounded to 2 decimals; NaN if idle 0
  std::array<std::int64_t, 4> failed{};  ///< failed (fill-up) or gave-up (replay) pods by kind
  /// Pods attempted, by kind (fit::openb_pod_kind): every pod of the fill-up once, every
  /// arrival of the replay once. Acceptance of a kind = 1 - failed / attempted.
  std::array<std::int64_t, 4> attempted{};
  /// Pods refused while some node could hold them, by the filter alone, checked independently
  /// of the policy: failed (fill-up) or sent to wait on arrival (replay) although a node was
  /// feasible. A placement policy refuses none; admission control (rsfgd) does.
  std::int64_t refused_fitting = 0;
  /// Fill-up: A_k at the first failed pod, overall and by kind; -1 = none failed.
  std::int64_t first_failed_arrived = -1;
  std::array<std::int64_t, 4> first_failed_arrived_by_kind{-1, -1, -1, -1};
  std::int64_t total_gpus = 0;    ///< GPUs in the cluster
  std::int64_t trace_pods = 0;    ///< pods taken from the trace
  std::int64_t tuned_pods = 0;    ///< pods added by sampling (fill-up)
  std::int64_t removed_pods = 0;  ///< pods removed by tune-down (fill-up)
  std::int64_t departures = 0;    ///< pods that departed (replay)
  /// Pods the policy held back although a node could hold them (rsfgd's reservation): they
  /// fail in the fill-up, and wait in the replay (counted at arrival).
  std::int64_t held_back = 0;
  std::int64_t first_held_back_arrived = -1;  ///< fill-up: A_k at the first one; -1 = none
  std::vector<double> time;                   ///< replay: event time in seconds (empty in fill-up)
  std::vector<std::uint8_t> kind;             ///< replay: replay_event of each event
  std::int64_t waited = 0;                    ///< replay: pods placed after waiting
  double wait_total_s = 0;                    ///< replay: their summed wait
  double first_arrival_s = 0;                 ///< replay: time of the first arrival
  double last_arrival_s = 0;                  ///< replay: time of the last arrival

  /// Reserves room for n events.
  void reserve(std::size_t n) {
    pod.reserve(n);
    node.reserve(n);
    gpus.reserve(n);
    arrived.reserve(n);
    allocated.reserve(n);
    frag_milli.reserve(n);
    frag_rate.reserve(n);
  }
};

/// Metrics at integer arrived-load points 0..max_pct; present[X] false where no event is near X.
struct milestones {
  std::vector<bool> present;             ///< X has a value
  std::vector<double> alloc_pct;         ///< GPU allocation ratio in percent, 2 decimals
  std::vector<double> frag_milli;        ///< mean cluster fragment in milli-GPU, 2 decimals
  std::vector<double> frag_amount_pct;   ///< fragment in percent of GPU capacity, 2 decimals
  std::vector<double> frag_rate_pct;     ///< mean fragmentation rate (NaN skipped; NaN if none)
  std::vector<double> unallocated_gpus;  ///< mean unallocated GPUs (capacity - U_k) / 1000
};

/// Discretises a run (§8): a_k = round(A_k / (10 G)), u_k = round(U_k / (10 G), 2); each X
/// averages the events with a_k == X, or those with |a_k - X| <= 1 when there are none.
inline milestones discretise(const run_record& r, int max_pct = k_max_arrived_pct) {
  struct bucket {
    std::int64_t count = 0;
    double u = 0;
    double frag = 0;
    double rate = 0;
    std::int64_t rate_count = 0;
    double unalloc = 0;
  };
  const auto points = static_cast<std::size_t>(max_pct) + 1;
  std::vector<bucket> b(points + 1);  // one extra for X + 1 of the last point
  const double pct_unit = 10.0 * static_cast<double>(r.total_gpus);
  const double capacity = static_cast<double>(r.total_gpus) * fit::k_openb_gpu_milli;
  for (std::size_t k = 0; k < r.arrived.size(); ++k) {
    if (r.total_gpus <= 0) break;
    const double a = std::nearbyint(static_cast<double>(r.arrived[k]) / pct_unit);
    if (a < 0 || a > static_cast<double>(points)) continue;
    bucket& e = b[static_cast<std::size_t>(a)];
    ++e.count;
    e.u += round2(static_cast<double>(r.allocated[k]) / pct_unit);
    e.frag += r.frag_milli[k];
    if (!std::isnan(r.frag_rate[k])) {
      e.rate += r.frag_rate[k];
      ++e.rate_count;
    }
    e.unalloc += (capacity - static_cast<double>(r.allocated[k])) / fit::k_openb_gpu_milli;
  }
  milestones out;
  out.present.assign(points, false);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out.alloc_pct.assign(points, nan);
  out.frag_milli.assign(points, nan);
  out.frag_amount_pct.assign(points, nan);
  out.frag_rate_pct.assign(points, nan);
  out.unallocated_gpus.assign(points, nan);
  for (std::size_t x = 0; x < points; ++x) {
    bucket s = b[x];
    if (s.count == 0) {
      const std::size_t lo = x == 0 ? 0 : x - 1;
      for (std::size_t y = lo; y <= x + 1 && y < b.size(); ++y) {
        s.count += b[y].count;
        s.u += b[y].u;
        s.frag += b[y].frag;
        s.rate += b[y].rate;
        s.rate_count += b[y].rate_count;
        s.unalloc += b[y].unalloc;
      }
    }
    if (s.count == 0) continue;
    const double n = static_cast<double>(s.count);
    out.present[x] = true;
    out.alloc_pct[x] = round2(s.u / n);
    out.frag_milli[x] = round2(s.frag / n);
    constexpr double percent = 100.0;
    out.frag_amount_pct[x] =
        round2(percent * (s.frag / n) / fit::k_openb_gpu_milli / static_cast<double>(r.total_gpus));
    out.frag_rate_pct[x] = s.rate_count > 0 ? s.rate / static_cast<double>(s.rate_count) : nan;
    out.unallocated_gpus[x] = round2(s.unalloc / n);
  }
  return out;
}

}  // namespace gpuslice::sim
