#pragma once
/// \file
/// kube-scheduler's default placement of pods whose GPUs come through Dynamic Resource
/// Allocation with consumable capacity (Kubernetes 1.34+, DRAConsumableCapacity), on the openb
/// cluster model, as `gpuslice-dra-plugin` publishes the GPUs (docs/dra.md):
///
/// - every GPU is one device with `allowMultipleAllocations` and two capacities: `memory`
///   (the card's memory, rounded down to the step; requestPolicy default = all of it,
///   validRange min = step = 1 MiB) and `cores` (100; default 100, min 1, step 1);
/// - a sharing pod (m < 1000 milli-GPU) holds a claim of one device asking for m/10 cores and
///   m/1000 of the memory of the smallest card it may use (so that it gets its share on any of
///   them); a whole-GPU pod a claim of n devices asking for no capacity, which takes the
///   request policy's default, the whole device; gpu_spec becomes a selector on the model;
/// - the structured-parameters allocator takes devices first fit, in slice order (index order
///   here), and consumes each request rounded up by the request policy: min + ceil((request -
///   min) / step) * step, the minimum when below it;
/// - the node is chosen by the plugins that score it: NodeResourcesFit (LeastAllocated on CPU
///   and memory, requests of zero counted as 100 milli-CPU and 200 MiB) and
///   NodeResourcesBalancedAllocation (on CPU and memory, actual requests), weight 1 each. The
///   DynamicResources plugin scores only claims with prioritized alternatives (firstAvailable);
///   for these claims it gives every node 0. The other default plugins see nothing that tells
///   the openb nodes apart. Ties go to the smaller node rank (kube-scheduler draws at random
///   among them; the rank is the simulator's per-run draw);
/// - percentageOfNodesToScore: the filter stops once it has found max(100, n x p%) feasible
///   nodes, p = max(5, 50 - n / 125) by default, starting where the last cycle stopped, in the
///   scheduler's node order (the rank order here). Only those are scored.
///
/// Standard library only. Not thread-safe: one scheduler per run.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "gpuslice/fit/openb.hpp"
#include "gpuslice/fit/openb_score.hpp"

namespace gpuslice::fit {

/// The cores capacity of a device, in percent (the plugin's default core scaling).
inline constexpr int k_dra_cores = 100;
/// The cores request policy's minimum and step, in percent.
inline constexpr int k_dra_cores_step = 1;
/// The memory request policy's minimum and step, in MiB (the plugin's --memory-step default).
inline constexpr std::int64_t k_dra_memory_step_mib = 1;
/// Memory of a card whose model has no known figure, MiB.
inline constexpr std::int64_t k_dra_default_card_mib = 16384;
/// NodeResourcesFit's milli-CPU for a pod that requests none (DefaultMilliCPURequest).
inline constexpr std::int64_t k_kube_nonzero_cpu = 100;
/// NodeResourcesFit's memory for a pod that requests none (DefaultMemoryRequest), MiB.
inline constexpr std::int64_t k_kube_nonzero_mem_mib = 200;
/// kube-scheduler's floor on the feasible nodes it looks for (minFeasibleNodesToFind).
inline constexpr std::size_t k_kube_min_feasible_nodes = 100;
/// The adaptive percentage's floor (minFeasibleNodesPercentageToFind).
inline constexpr int k_kube_min_feasible_pct = 5;
/// The adaptive percentage's base, from which one point is taken per 125 nodes.
inline constexpr int k_kube_adaptive_base_pct = 50;
/// Nodes per point the adaptive percentage loses.
inline constexpr std::size_t k_kube_adaptive_nodes_per_pct = 125;

/// Memory of one card of an openb model, MiB (the mapping of bench/README.md, "The live
/// extender at cluster scale"); k_dra_default_card_mib for any other name.
inline std::int64_t dra_card_mib(std::string_view model) noexcept {
  constexpr std::int64_t gib = 1024;
  if (model == "V100M32") return 32 * gib;
  if (model == "T4") return 15 * gib;
  if (model == "A10") return 24 * gib;
  return k_dra_default_card_mib;  // V100M16, P100, G2, G3: 16 GiB
}

/// A capacity request rounded up by a validRange request policy (min, step), as the
/// allocator consumes it: the minimum when below it, else min + ceil((request - min) / step)
/// * step. Pure; step > 0.
inline std::int64_t dra_round_up(std::int64_t request, std::int64_t min,
                                 std::int64_t step) noexcept {
  if (request < min) return min;
  const std::int64_t added = request - min;
  return min + (added / step + (added % step != 0 ? 1 : 0)) * step;
}

/// The feasible nodes kube-scheduler looks for among all_nodes (numFeasibleNodesToFind):
/// pct = percentageOfNodesToScore, 0 = adaptive (max(5, 50 - all_nodes / 125)); at least 100,
/// and all nodes for 100 or more percent or fewer than 100 nodes. Pure.
inline std::size_t kube_nodes_to_find(int pct, std::size_t all_nodes) noexcept {
  constexpr int all_pct = 100;
  if (all_nodes < k_kube_min_feasible_nodes || pct >= all_pct) return all_nodes;
  if (pct <= 0) {
    const auto lost = static_cast<int>(all_nodes / k_kube_adaptive_nodes_per_pct);
    pct = std::max(k_kube_adaptive_base_pct - lost, k_kube_min_feasible_pct);
  }
  const std::size_t n = all_nodes * static_cast<std::size_t>(pct) / all_pct;
  return std::max(n, k_kube_min_feasible_nodes);
}

/// NodeResourcesFit's LeastAllocated score of one resource: (capacity - requested) * 100 /
/// capacity in integers, 0 when over or without capacity. Pure.
inline std::int64_t kube_least_requested(std::int64_t requested, std::int64_t capacity) noexcept {
  if (capacity <= 0 || requested > capacity) return 0;
  return (capacity - requested) * k_openb_max_score / capacity;
}

/// NodeResourcesBalancedAllocation's score for CPU and memory fractions (each capped at 1):
/// trunc((1 - |f_cpu - f_mem| / 2) * 100). Pure.
inline std::int64_t kube_balanced(double f_cpu, double f_mem) noexcept {
  const double std_dev = std::abs(std::min(f_cpu, 1.0) - std::min(f_mem, 1.0)) / 2.0;
  return static_cast<std::int64_t>((1.0 - std_dev) * k_openb_max_score);
}

/// The rules of the dra policy beyond the file comment's defaults.
struct dra_options {
  /// Memory of one card per model id, MiB (dra_card_mib of each name).
  std::vector<std::int64_t> card_mib;
  /// The memory request policy's minimum and step, MiB.
  std::int64_t memory_step_mib = k_dra_memory_step_mib;
  /// percentageOfNodesToScore: 0 = kube-scheduler's adaptive default, 100 = every node.
  int nodes_pct = 0;
};

/// kube-scheduler with DRA's default placement over an openb_cluster (file comment). The
/// capacity consumed on each device is kept here: report every bind and unbind through
/// bound() and unbound(). Not thread-safe.
class dra_scheduler {
 public:
  /// ranks[i]: node i's rank (its place in the scheduler's node list and the tie-break);
  /// cluster: the nodes, empty.
  dra_scheduler(const std::vector<std::int32_t>& ranks, dra_options opt,
                const openb_cluster& cluster)
      : opt_(std::move(opt)), ranks_(ranks) {
    const std::size_t n = cluster.size();
    order_.resize(n);
    for (std::size_t i = 0; i < n; ++i) order_[i] = static_cast<std::uint32_t>(i);
    std::sort(order_.begin(), order_.end(), [&](std::uint32_t a, std::uint32_t b) {
      return ranks_[a] != ranks_[b] ? ranks_[a] < ranks_[b] : a < b;
    });
    devices_.assign(n, node_devices{});
    cpu_nz_.assign(n, 0);
    mem_nz_.assign(n, 0);
    for (std::size_t i = 0; i < n; ++i) {
      const auto model = cluster.node(i).model;
      if (model < 0) continue;
      const std::int64_t mib = card_mib(model);
      if (min_card_mib_ < 0 || mib < min_card_mib_) min_card_mib_ = mib;
    }
  }

  /// The memory a device of model id publishes, MiB: the card's, rounded down to the step.
  std::int64_t card_mib(int model) const noexcept {
    const std::int64_t mib = model >= 0 && static_cast<std::size_t>(model) < opt_.card_mib.size()
                                 ? opt_.card_mib[static_cast<std::size_t>(model)]
                                 : k_dra_default_card_mib;
    return mib / opt_.memory_step_mib * opt_.memory_step_mib;
  }

  /// The memory one device of pod's claim consumes on a card of model id, MiB: a sharing
  /// pod's request rounded up by the request policy, or the whole card.
  std::int64_t memory_consumed(const openb_pod& pod, int model) const noexcept {
    if (pod.kind() != openb_pod_kind::sharing) return card_mib(model);
    const std::int64_t smallest = smallest_card_mib(pod);
    // The request, m/1000 of the smallest card, as a whole number of bytes rounds up to the
    // MiB; rounding up by a step of whole MiB then takes ceil over the step.
    const std::int64_t mib = (pod.m * smallest + k_openb_gpu_milli - 1) / k_openb_gpu_milli;
    return dra_round_up(mib, opt_.memory_step_mib, opt_.memory_step_mib);
  }

  /// The cores one device of pod's claim consumes, percent.
  static int cores_consumed(const openb_pod& pod) noexcept {
    if (pod.kind() != openb_pod_kind::sharing) return k_dra_cores;
    constexpr int milli_per_pct = k_openb_gpu_milli / k_dra_cores;
    const int pct = (pod.m + milli_per_pct - 1) / milli_per_pct;
    return static_cast<int>(dra_round_up(pct, k_dra_cores_step, k_dra_cores_step));
  }

  /// True when node i passes the filter for pod (pod count, CPU, memory, model, device
  /// capacity), with mask the devices the allocator gives its claim there: first fit in index
  /// order, n distinct devices (0 for a pod without GPUs).
  bool allocate(const openb_node& node, std::size_t i, const openb_pod& pod,
                gpu_mask& mask) const noexcept {
    mask = 0;
    if (node.pods + 1 > k_openb_max_pods_per_node) return false;
    if (pod.cpu + node.cpu_used > node.cpu_alloc || pod.mem + node.mem_used > node.mem_alloc) {
      return false;
    }
    if (pod.n <= 0 || pod.m <= 0) return true;
    if (node.gpus <= 0 || !openb_accessible(node, pod)) return false;
    const std::int64_t mem = memory_consumed(pod, node.model);
    const std::int64_t cap = card_mib(node.model);
    const int cores = cores_consumed(pod);
    const node_devices& d = devices_[i];
    int taken = 0;
    for (int g = 0; g < node.gpus && taken < pod.n; ++g) {
      const auto gi = static_cast<std::size_t>(g);
      if (d.mem[gi] + mem <= cap && d.cores[gi] + cores <= k_dra_cores) {
        mask = static_cast<gpu_mask>(mask | (1U << g));
        ++taken;
      }
    }
    if (taken == pod.n) return true;
    mask = 0;
    return false;
  }

  /// The node's score: LeastAllocated plus BalancedAllocation on CPU and memory with the pod
  /// added (file comment).
  std::int64_t score(const openb_node& node, std::size_t i, const openb_pod& pod) const noexcept {
    const std::int64_t cpu = cpu_nz_[i] + nonzero_cpu(pod);
    const std::int64_t mem = mem_nz_[i] + nonzero_mem(pod);
    constexpr std::int64_t resources = 2;
    const std::int64_t least =
        (kube_least_requested(cpu, node.cpu_alloc) + kube_least_requested(mem, node.mem_alloc)) /
        resources;
    std::int64_t balanced = 0;
    // BalancedAllocation skips a pod that requests neither resource.
    if (pod.cpu > 0 || pod.mem > 0) {
      const bool has_cpu = node.cpu_alloc > 0;
      const bool has_mem = node.mem_alloc > 0;
      const double f_cpu = has_cpu ? static_cast<double>(node.cpu_used + pod.cpu) /
                                         static_cast<double>(node.cpu_alloc)
                                   : 0.0;
      const double f_mem = has_mem ? static_cast<double>(node.mem_used + pod.mem) /
                                         static_cast<double>(node.mem_alloc)
                                   : 0.0;
      // With one resource the deviation is 0.
      balanced = has_cpu && has_mem ? kube_balanced(f_cpu, f_mem)
                 : has_cpu          ? kube_balanced(f_cpu, f_cpu)
                                    : kube_balanced(f_mem, f_mem);
    }
    return least + balanced;
  }

  /// One scheduling cycle for pod against the cluster's state; binds nothing. node < 0 when no
  /// node passes the filter. Advances where the next cycle's filter starts.
  openb_placement schedule(const openb_cluster& cluster, const openb_pod& pod) {
    const std::size_t n = cluster.size();
    openb_placement out;
    if (n == 0) return out;
    const std::size_t want = kube_nodes_to_find(opt_.nodes_pct, n);
    std::size_t found = 0;
    std::size_t processed = 0;
    std::int64_t best = -1;
    for (; processed < n && found < want; ++processed) {
      const std::uint32_t i = order_[(start_ + processed) % n];
      const openb_node& node = cluster.node(i);
      gpu_mask mask = 0;
      if (!allocate(node, i, pod, mask)) continue;
      ++found;
      const std::int64_t s = score(node, i, pod);
      if (s > best || (s == best && ranks_[i] < ranks_[static_cast<std::size_t>(out.node)])) {
        best = s;
        out.node = static_cast<std::int32_t>(i);
        out.gpus = mask;
      }
    }
    start_ = (start_ + processed) % n;
    return out;
  }

  /// Records that pod was bound to node i on the devices of mask. Not thread-safe.
  void bound(std::size_t i, const openb_pod& pod, gpu_mask mask, const openb_node& node) noexcept {
    apply(i, pod, mask, node.model, +1);
  }
  /// Records that pod left node i's devices of mask. Not thread-safe.
  void unbound(std::size_t i, const openb_pod& pod, gpu_mask mask,
               const openb_node& node) noexcept {
    apply(i, pod, mask, node.model, -1);
  }

  /// Memory consumed on node i's GPU g, MiB.
  std::int64_t memory_used(std::size_t i, int g) const noexcept {
    return devices_[i].mem[static_cast<std::size_t>(g)];
  }
  /// Cores consumed on node i's GPU g, percent.
  int cores_used(std::size_t i, int g) const noexcept {
    return devices_[i].cores[static_cast<std::size_t>(g)];
  }

 private:
  struct node_devices {
    std::array<std::int64_t, k_openb_max_gpus> mem{};
    std::array<int, k_openb_max_gpus> cores{};
  };

  static std::int64_t nonzero_cpu(const openb_pod& pod) noexcept {
    return pod.cpu > 0 ? pod.cpu : k_kube_nonzero_cpu;
  }
  static std::int64_t nonzero_mem(const openb_pod& pod) noexcept {
    return pod.mem > 0 ? pod.mem : k_kube_nonzero_mem_mib;
  }

  // The smallest card the pod may use, MiB: of the models it names, or of every node's.
  std::int64_t smallest_card_mib(const openb_pod& pod) const noexcept {
    if (!pod.typed) return min_card_mib_ > 0 ? min_card_mib_ : k_dra_default_card_mib;
    std::int64_t m = -1;
    for (int k = 0; k < k_openb_max_models; ++k) {
      if (((pod.types >> k) & 1U) == 0) continue;
      const std::int64_t c = card_mib(k);
      if (m < 0 || c < m) m = c;
    }
    return m > 0 ? m : k_dra_default_card_mib;
  }

  void apply(std::size_t i, const openb_pod& pod, gpu_mask mask, int model, int sign) noexcept {
    cpu_nz_[i] += sign * nonzero_cpu(pod);
    mem_nz_[i] += sign * nonzero_mem(pod);
    if (pod.n <= 0 || pod.m <= 0) return;
    const std::int64_t mem = memory_consumed(pod, model);
    const int cores = cores_consumed(pod);
    node_devices& d = devices_[i];
    for (int g = 0; g < k_openb_max_gpus; ++g) {
      if (((mask >> g) & 1U) == 0) continue;
      d.mem[static_cast<std::size_t>(g)] += sign * mem;
      d.cores[static_cast<std::size_t>(g)] += sign * cores;
    }
  }

  dra_options opt_;
  std::vector<std::int32_t> ranks_;
  std::vector<std::uint32_t> order_;  // nodes in the scheduler's list order (by rank)
  std::vector<node_devices> devices_;
  std::vector<std::int64_t> cpu_nz_;  // NodeResourcesFit's non-zero milli-CPU of bound pods
  std::vector<std::int64_t> mem_nz_;  // ... and MiB
  std::int64_t min_card_mib_ = -1;    // the smallest card of the cluster
  std::size_t start_ = 0;             // where the next cycle's filter starts
};

}  // namespace gpuslice::fit
