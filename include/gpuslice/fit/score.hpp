#pragma once
/// \file
/// The Score step. A scorer is a policy type with this shape (a user-defined one is a template
/// argument of cluster::fit; see hami_scorer for a complete example):
///
///   struct my_scorer {
///     static constexpr bool k_needs_allocation = ...;  // node_score reads c.allocation
///     double node_score(const candidate& c) const;     // larger is preferred
///     double gpu_score(const node& n, const device_state& d, const share& s) const;  // larger
///                                                                   // is preferred
///     bool topology() const;  // choose multi-GPU sets by link score (gpu_score breaks ties)
///   };
///
/// Scores are doubles; equal node scores go to the node whose name sorts first (then the lower
/// position), equal GPU scores to the lower device index. Scorers are called concurrently only
/// if the caller does so; the built-in ones are immutable and thread-safe.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gpuslice/fit/hami_score.hpp"
#include "gpuslice/fit/model.hpp"

namespace gpuslice::fit {

/// A device's capacity and usage at the moment of a choice (while the containers of one pod are
/// placed it includes the earlier containers' shares). node::devices[position] has the rest.
struct device_state {
  std::size_t position = 0;  ///< in node::devices
  std::uint32_t index = 0;   ///< the driver's index
  std::int32_t numa = 0;
  std::uint32_t type = 0;  ///< interned type id (cluster-internal)
  bool healthy = true;
  bool cordoned = false;
  std::uint32_t slots_used = 0, slots_total = 0;
  std::uint64_t memory_used = 0, memory_total = 0;
  std::uint32_t cores_used = 0, cores_total = 0;
};

/// One device's part of an allocation.
struct device_grant {
  std::size_t device = 0;    ///< position in node::devices
  std::uint64_t memory = 0;  ///< bytes reserved on it
  std::uint32_t cores = 0;   ///< milli-GPU reserved on it
  friend bool operator==(const device_grant& a, const device_grant& b) {
    return a.device == b.device && a.memory == b.memory && a.cores == b.cores;
  }
};

/// The devices one container gets (empty for a container that asks for no GPU).
struct container_allocation {
  std::vector<device_grant> devices;
  bool init = false;  ///< an init container's: counted per device as max(init peak, app sum)
  friend bool operator==(const container_allocation& a, const container_allocation& b) {
    return a.devices == b.devices;
  }
};

/// What a node scorer sees about one feasible node.
struct candidate {
  const node& target;    ///< the node, in its state before the placement
  std::size_t position;  ///< its position in the cluster
  usage after;           ///< the node's summed GPU usage with the pod's request included
  /// The devices the pod would get; null unless the scorer sets k_needs_allocation.
  const std::vector<container_allocation>* allocation;
};

/// How the GPUs of a node are chosen.
enum class gpu_policy : std::uint8_t {
  binpack,   ///< fullest GPU first (HAMi's binpack)
  spread,    ///< emptiest GPU first (HAMi's spread)
  topology,  ///< best-linked GPU set (falls back to spread on nodes without a link matrix)
};

/// HAMi's policies: a node policy (binpack or spread over the node's summed usage, request
/// included) and a GPU policy, with weights for the three usage dimensions. Immutable after
/// construction; thread-safe.
class hami_scorer {
 public:
  static constexpr bool k_needs_allocation = false;

  hami_scorer() = default;
  /// A scorer with the given node policy, GPU policy and weights.
  hami_scorer(hami_policy node, gpu_policy gpu, usage_weights w = {})
      : node_(node), gpu_(gpu), weights_(w) {}

  /// HAMi's node score of the node's usage after the placement (binpack: fuller is better).
  double node_score(const candidate& c) const noexcept {
    return hami_policy_score(node_, c.after, weights_);
  }
  /// HAMi's device score with the share added (binpack: fuller is better; topology uses the
  /// spread order to break ties).
  double gpu_score(const node& /*n*/, const device_state& d, const share& s) const noexcept {
    usage u;
    u.slots_used = d.slots_used + 1.0;
    u.slots_total = d.slots_total;
    u.cores_used = static_cast<double>(d.cores_used) + s.cores;
    u.cores_total = d.cores_total;
    u.memory_used = static_cast<double>(d.memory_used) + static_cast<double>(s.memory);
    u.memory_total = static_cast<double>(d.memory_total);
    return hami_policy_score(
        gpu_ == gpu_policy::binpack ? hami_policy::binpack : hami_policy::spread, u, weights_);
  }
  /// True for gpu_policy::topology.
  bool topology() const noexcept { return gpu_ == gpu_policy::topology; }

  hami_policy node_policy() const noexcept { return node_; }
  gpu_policy device_policy() const noexcept { return gpu_; }
  const usage_weights& weights() const noexcept { return weights_; }

 private:
  hami_policy node_ = hami_policy::binpack;
  gpu_policy gpu_ = gpu_policy::spread;
  usage_weights weights_{};
};

/// The simulator's binpack and spread (PLACEMENT-SPEC, fit/openb_score.hpp) on the fit engine's
/// state, so that a live scheduler places as the simulator reports. A node scores HAMi's usage
/// formula over its GPU slots, its GPU cores and its *host* memory (HAMi's own policy weighs GPU
/// memory), the pod's request included, truncated to a whole percent (hami_percent_score); the
/// many equal percents go to the first name, the simulator's node rank. On the node a sharing
/// pod takes the GPU with the least compute left (binpack, the simulator's "best") or the most
/// (spread, "worst"), the lower index on ties; a whole-GPU pod the lowest idle GPUs. The pod's
/// host memory is part of the score, so use for_pod() per pod. Immutable; thread-safe.
class spec_usage_scorer {
 public:
  static constexpr bool k_needs_allocation = false;

  spec_usage_scorer() = default;
  /// \p p over nodes, for a pod asking \p pod_host_memory bytes of node memory.
  explicit spec_usage_scorer(hami_policy p, std::uint64_t pod_host_memory = 0) noexcept
      : policy_(p), host_memory_(pod_host_memory) {}

  /// This scorer for \p pod (its node memory summed over containers, as the filter sums it).
  spec_usage_scorer for_pod(const pod_request& pod) const noexcept {
    std::uint64_t mem = 0;
    for (const auto& c : pod.containers) mem += c.host_memory;
    return spec_usage_scorer(policy_, mem);
  }

  /// The whole percent of HAMi's usage score over slots, cores and host memory after placement.
  double node_score(const candidate& c) const noexcept {
    usage u = c.after;
    u.memory_used = static_cast<double>(c.target.memory_used + host_memory_);
    u.memory_total = static_cast<double>(c.target.memory_total);
    return hami_percent_score(policy_, u);
  }
  /// Binpack: minus the compute left on the GPU after the share; spread: that compute.
  double gpu_score(const node& /*n*/, const device_state& d, const share& s) const noexcept {
    const double left = static_cast<double>(d.cores_total) - static_cast<double>(d.cores_used) -
                        static_cast<double>(s.cores);
    return policy_ == hami_policy::binpack ? -left : left;
  }
  bool topology() const noexcept { return false; }

  hami_policy policy() const noexcept { return policy_; }
  std::uint64_t pod_host_memory() const noexcept { return host_memory_; }

 private:
  hami_policy policy_ = hami_policy::binpack;
  std::uint64_t host_memory_ = 0;
};

/// Topology-aware placement: GPUs by link score, nodes by the link score of the GPUs they would
/// give (then by HAMi's node policy). Immutable; thread-safe.
class topology_scorer {
 public:
  static constexpr bool k_needs_allocation = true;

  /// Weight of the link sum relative to HAMi's node score (which only breaks near-ties).
  static constexpr double k_link_weight = 1000.0;

  topology_scorer() = default;
  /// A scorer whose node-level tie-break is \p node.
  explicit topology_scorer(hami_policy node, usage_weights w = {})
      : hami_(node, gpu_policy::topology, w) {}

  /// k_link_weight * (summed pair score of each container's GPUs) + HAMi's node score.
  double node_score(const candidate& c) const noexcept {
    std::int64_t links = 0;
    if (c.allocation != nullptr && !c.target.links.empty()) {
      for (const auto& ca : *c.allocation) {
        for (std::size_t i = 0; i < ca.devices.size(); ++i) {
          for (std::size_t j = i + 1; j < ca.devices.size(); ++j) {
            links += c.target.links.at(ca.devices[i].device, ca.devices[j].device);
          }
        }
      }
    }
    return k_link_weight * static_cast<double>(links) + hami_.node_score(c);
  }
  double gpu_score(const node& n, const device_state& d, const share& s) const noexcept {
    return hami_.gpu_score(n, d, s);
  }
  bool topology() const noexcept { return true; }

 private:
  hami_scorer hami_{hami_policy::binpack, gpu_policy::topology};
};

}  // namespace gpuslice::fit
