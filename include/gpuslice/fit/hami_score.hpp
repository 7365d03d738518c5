#pragma once
/// \file
/// HAMi's usage score, shared by the fit engine's spread/binpack scorers and the simulator.
/// Pure functions, thread-safe.

#include <algorithm>
#include <optional>
#include <string>

#include "gpuslice/result.hpp"

namespace gpuslice::fit {

/// Weights of the three usage dimensions (HAMi uses 1, 1, 1 and a factor of 10).
struct usage_weights {
  double slots = 1.0;
  double cores = 1.0;
  double memory = 1.0;
};

/// HAMi's rule for weights (its `hami.io/device-scoring-weights`): none negative, at least one
/// positive; otherwise the error names the weights. Pure, thread-safe.
inline std::optional<error> validate(const usage_weights& w) {
  const std::string text = "slot=" + std::to_string(w.slots) + ", core=" + std::to_string(w.cores) +
                           ", memory=" + std::to_string(w.memory);
  if (!(w.slots >= 0) || !(w.cores >= 0) || !(w.memory >= 0)) {
    return make_error(errc::out_of_range,
                      "scoring weights " + text + ": expected no negative weight");
  }
  if (w.slots == 0 && w.cores == 0 && w.memory == 0) {
    return make_error(errc::invalid_value,
                      "scoring weights " + text + ": expected at least one positive weight");
  }
  return std::nullopt;
}

/// Usage of a node or GPU, each dimension as (amount used, total). For a candidate placement
/// the request is already added to the used amounts.
struct usage {
  double slots_used = 0, slots_total = 0;
  double cores_used = 0, cores_total = 0;
  double memory_used = 0, memory_total = 0;
};

/// HAMi's factor in front of the weighted sum.
inline constexpr double k_hami_score_scale = 10.0;

/// 10 * (wS*slots_used/slots_total + wC*cores_used/cores_total + wM*memory_used/memory_total).
/// A dimension whose total is 0 contributes 0.
inline double hami_usage_score(const usage& u, const usage_weights& w = {}) noexcept {
  auto ratio = [](double used, double total) { return total > 0 ? used / total : 0.0; };
  return k_hami_score_scale * (w.slots * ratio(u.slots_used, u.slots_total) +
                               w.cores * ratio(u.cores_used, u.cores_total) +
                               w.memory * ratio(u.memory_used, u.memory_total));
}

/// Which way a usage score is preferred.
enum class hami_policy { binpack, spread };

/// The score to maximise: binpack prefers the fullest candidate, spread the emptiest.
inline double hami_policy_score(hami_policy p, const usage& u,
                                const usage_weights& w = {}) noexcept {
  const double s = hami_usage_score(u, w);
  const double max = k_hami_score_scale * (w.slots + w.cores + w.memory);
  return p == hami_policy::binpack ? s : max - s;
}

/// The simulator's integer scale of node scores (PLACEMENT-SPEC: scores 0..100).
inline constexpr int k_percent_score_max = 100;

/// hami_policy_score as a whole percent of its maximum, truncated and clamped to 0..100: the
/// score the simulator's binpack and spread rank nodes by (equal percents go to the node rank).
/// Pure, thread-safe.
inline int hami_percent_score(hami_policy p, const usage& u, const usage_weights& w = {}) noexcept {
  const double max = k_hami_score_scale * (w.slots + w.cores + w.memory);
  const double s = hami_policy_score(p, u, w);
  return std::clamp(static_cast<int>(k_percent_score_max * s / max), 0, k_percent_score_max);
}

}  // namespace gpuslice::fit
