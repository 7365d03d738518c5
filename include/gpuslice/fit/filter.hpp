#pragma once
/// \file
/// The Filter step: why a device or a node cannot take a request. Every rejection carries a
/// reason code; a node's reasons and the cluster's per-reason node counts make messages like
/// "0/5 nodes are available: 3 nodes: insufficient GPU memory; 2 nodes: GPU type mismatch".
/// Device checks run in HAMi's order (health, cordon, type and mode, uuid, slots, memory, cores,
/// exclusive, compute exhausted); the first failing check is the device's reason. Pure,
/// thread-safe.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "gpuslice/fit/model.hpp"

namespace gpuslice::fit {

/// Why a device or a node was rejected.
enum class reason : std::uint8_t {
  unhealthy,                 ///< device: reported unhealthy
  cordoned,                  ///< device: named in the node's hami.io/device-cordon annotation
  type_mismatch,             ///< device: type excluded or not included
  uuid_mismatch,             ///< device: uuid excluded or not included
  slots_exhausted,           ///< device: every sharing slot is taken
  insufficient_memory,       ///< device: not enough free device memory
  insufficient_cores,        ///< device: not enough free compute
  exclusive_conflict,        ///< device: the request needs an idle device and it has tasks
  compute_exhausted,         ///< device: all compute is reserved and the request names none
  insufficient_cpu,          ///< node: not enough CPU
  insufficient_host_memory,  ///< node: not enough host memory
  insufficient_devices,      ///< node: fewer suitable devices than the request's count
  numa_mismatch,             ///< node: enough devices, but not on one NUMA node
  no_assignment,             ///< node: containers fit one by one but not all together
};

/// Number of reason codes.
inline constexpr std::size_t k_reason_count = static_cast<std::size_t>(reason::no_assignment) + 1;

/// A short human phrase for a reason. Pure, thread-safe.
constexpr std::string_view describe(reason r) noexcept {
  switch (r) {
    case reason::unhealthy:
      return "GPU unhealthy";
    case reason::cordoned:
      return "GPU cordoned";
    case reason::type_mismatch:
      return "GPU type mismatch";
    case reason::uuid_mismatch:
      return "GPU uuid mismatch";
    case reason::slots_exhausted:
      return "GPU sharing slots exhausted";
    case reason::insufficient_memory:
      return "insufficient GPU memory";
    case reason::insufficient_cores:
      return "insufficient GPU cores";
    case reason::exclusive_conflict:
      return "GPU in use, exclusive access required";
    case reason::compute_exhausted:
      return "GPU compute exhausted";
    case reason::insufficient_cpu:
      return "insufficient CPU";
    case reason::insufficient_host_memory:
      return "insufficient memory";
    case reason::insufficient_devices:
      return "too few suitable GPUs";
    case reason::numa_mismatch:
      return "suitable GPUs not on one NUMA node";
    case reason::no_assignment:
      return "containers do not fit together";
  }
  return "unknown";
}

/// The snake_case name of a reason (as in the enum), for machine-readable output.
constexpr std::string_view name_of(reason r) noexcept {
  switch (r) {
    case reason::unhealthy:
      return "unhealthy";
    case reason::cordoned:
      return "cordoned";
    case reason::type_mismatch:
      return "type_mismatch";
    case reason::uuid_mismatch:
      return "uuid_mismatch";
    case reason::slots_exhausted:
      return "slots_exhausted";
    case reason::insufficient_memory:
      return "insufficient_memory";
    case reason::insufficient_cores:
      return "insufficient_cores";
    case reason::exclusive_conflict:
      return "exclusive_conflict";
    case reason::compute_exhausted:
      return "compute_exhausted";
    case reason::insufficient_cpu:
      return "insufficient_cpu";
    case reason::insufficient_host_memory:
      return "insufficient_host_memory";
    case reason::insufficient_devices:
      return "insufficient_devices";
    case reason::numa_mismatch:
      return "numa_mismatch";
    case reason::no_assignment:
      return "no_assignment";
  }
  return "unknown";
}

/// A count per reason: devices per reason on one node, or nodes per reason in a cluster.
/// A plain value; not thread-safe to mutate.
class reason_counts {
 public:
  /// Adds \p n to reason \p r.
  void add(reason r, std::uint32_t n = 1) noexcept { counts_[static_cast<std::size_t>(r)] += n; }
  /// The count of reason \p r.
  std::uint32_t operator[](reason r) const noexcept { return counts_[static_cast<std::size_t>(r)]; }
  /// True when every count is 0.
  bool empty() const noexcept {
    for (auto c : counts_) {
      if (c != 0) return false;
    }
    return true;
  }
  /// Adds 1 to each reason that is non-zero in \p other (a node's reasons into a cluster's).
  void add_presence(const reason_counts& other) noexcept {
    for (std::size_t i = 0; i < k_reason_count; ++i) counts_[i] += other.counts_[i] != 0 ? 1 : 0;
  }
  friend bool operator==(const reason_counts& a, const reason_counts& b) {
    return a.counts_ == b.counts_;
  }

 private:
  std::array<std::uint32_t, k_reason_count> counts_{};
};

/// "3 nodes: insufficient GPU memory; 2 nodes: GPU type mismatch", largest count first, ties in
/// reason order. \p unit names what is counted ("node" or "device"). Pure, thread-safe.
inline std::string format_reasons(const reason_counts& counts, std::string_view unit = "node") {
  std::array<reason, k_reason_count> order{};
  for (std::size_t i = 0; i < k_reason_count; ++i) order[i] = static_cast<reason>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](reason a, reason b) { return counts[a] > counts[b]; });
  std::string out;
  for (reason r : order) {
    if (counts[r] == 0) continue;
    if (!out.empty()) out += "; ";
    out += std::to_string(counts[r]) + " " + std::string(unit) + (counts[r] == 1 ? "" : "s") +
           ": " + std::string(describe(r));
  }
  return out;
}

/// The device checks of a request, in HAMi's order. \p type_ok and \p uuid_ok are the results
/// of type_allowed (and mode_allowed) / uuid_allowed (computed once per distinct type by the
/// caller). Returns true and leaves \p why untouched when the device can take \p s. \p Device
/// is fit::device or fit::device_state (anything with their usage fields). Usage above a total
/// (a card reporting more tasks than its split count) makes the device full, as in HAMi.
/// Pure, thread-safe.
template <class Device>
bool device_fits(const Device& d, const share& s, bool type_ok, bool uuid_ok,
                 reason& why) noexcept {
  if (!d.healthy) return why = reason::unhealthy, false;
  if (d.cordoned) return why = reason::cordoned, false;
  if (!type_ok) return why = reason::type_mismatch, false;
  if (!uuid_ok) return why = reason::uuid_mismatch, false;
  if (d.slots_used >= d.slots_total) return why = reason::slots_exhausted, false;
  if (d.memory_used > d.memory_total || d.memory_total - d.memory_used < s.memory) {
    return why = reason::insufficient_memory, false;
  }
  if (d.cores_used > d.cores_total || d.cores_total - d.cores_used < s.cores) {
    return why = reason::insufficient_cores, false;
  }
  if (s.needs_idle && d.slots_used > 0) return why = reason::exclusive_conflict, false;
  if (s.cores == 0 && d.cores_total != 0 && d.cores_used >= d.cores_total) {
    return why = reason::compute_exhausted, false;
  }
  return true;
}

/// The node checks (CPU, host memory) of a whole pod. Returns true when they pass.
/// Pure, thread-safe.
inline bool node_fits(const node& n, std::uint64_t cpu, std::uint64_t host_memory,
                      reason& why) noexcept {
  if (n.cpu_total - n.cpu_used < cpu) return why = reason::insufficient_cpu, false;
  if (n.memory_total - n.memory_used < host_memory) {
    return why = reason::insufficient_host_memory, false;
  }
  return true;
}

}  // namespace gpuslice::fit
