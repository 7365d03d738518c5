#pragma once
/// \file
/// The FGD paper's six placement policies (PLACEMENT-SPEC §5, §6) plus HAMi's spread and
/// binpack on the same milli-GPU state, and the scheduling cycle that runs them: filter every
/// node, score the feasible ones with integer scores, break ties by a per-run node rank,
/// select GPUs.
///
/// Spread and binpack use hami_score.hpp's usage formula on the whole node:
/// slots = (pod, GPU) bindings over G * 10 (HAMi's default split count per GPU),
/// cores = allocated milli-GPU over G * 1000, memory = node memory used over allocatable,
/// each with the request added; the score is trunc(100 * score / max score). Binpack selects
/// GPUs with "best", spread with "worst".

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "gpuslice/fit/frag.hpp"
#include "gpuslice/fit/hami_score.hpp"
#include "gpuslice/fit/openb.hpp"

namespace gpuslice::fit {

/// The policies by name.
enum class openb_policy : std::uint8_t {
  random,
  dotprod,
  gpuclustering,
  gpupacking,
  bestfit,
  fgd,
  spread,
  binpack,
  sfgd,    ///< stranding-aware FGD: exact fragment change plus GPU stranded by lack of CPU
  rsfgd,   ///< sfgd that holds whole GPUs back from sharing pods that would strand a sliver
  dra,     ///< kube-scheduler's default placement of DRA claims (fit/dra_sched.hpp)
  custom,  ///< scores from a user-supplied function, GPUs by "best"
};

/// Names of the built-in policies, in enum order.
inline constexpr std::array<std::string_view, 11> k_openb_policy_names = {
    "random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd",
    "spread", "binpack", "sfgd",          "rsfgd",      "dra"};

/// rsfgd's reservation threshold (sfgd_knobs::reserve): a quarter of the GPUs a pod may use.
inline constexpr double k_rsfgd_reserve = 0.25;

/// The parts of sfgd (stranding-aware FGD), each of which can be switched for its ablation.
/// The defaults are the policy; {exact=false, pack=false, cpu_fit=false, strand=0, host=0}
/// chooses exactly as FGD does.
struct sfgd_knobs {
  /// Rank nodes by the exact change of the fragment amount (an integer in units of 1/denom
  /// milli-GPU) instead of FGD's trunc(100 * sigmoid(change / 1000)), which ties every change
  /// within about 40 milli-GPU of another and leaves the choice to the random node rank.
  bool exact = true;
  /// Among equal keys, prefer the node left with the least free GPU milli (packing), and for a
  /// sharing pod the GPU with the least free milli (best fit). Measured to cost allocation:
  /// off in the policy.
  bool pack = false;
  /// Among equal keys and equal free GPU, prefer the node left with the least free CPU. Off in
  /// the policy.
  bool cpu_fit = false;
  /// Weight of the stranded-GPU term added to each node's fragment: the free GPU milli that
  /// the node's free CPU cannot feed at the typical GPU pods' mean milli-CPU per milli-GPU,
  /// max(0, L - cpu_left / r). FGD's measure sees a node's lack of CPU only when it drops
  /// below one typical pod's request; this term sees it as soon as the CPU left cannot fill
  /// the GPUs left.
  double strand = 1.0;
  /// Weight of the host-pressure term: each node's free GPU counts, in its fragment, with a
  /// negative weight: the sum over the typical GPU pods the empty node could host (model, GPU
  /// count, and CPU for multi-GPU pods) of each one's share of the typical GPU demand over its
  /// hosts' share of the cluster's GPUs, times denom. A class every node can host adds the
  /// same to every node and changes no choice; one that few nodes can host (typed to a scarce
  /// model, or a multi-GPU pod that needs more CPU than most nodes have) makes its hosts' GPUs
  /// dearer, so that other pods fill them last. FGD's measure sees such a class only through
  /// its weight, not through how few GPUs can serve it. 0 = off; 1 in the policy.
  double host = 1.0;
  /// The reservation (rsfgd): while fewer than this fraction of the GPUs a sharing pod may use
  /// (all of them, or the models its gpu_spec names) are entirely free, the pod is not placed
  /// on an entirely free GPU if the sliver it would leave there is one that few typical pods
  /// fit (reserve_fill), pods that would use the whole GPU better are common (reserve_big) and
  /// GPU, not CPU, is what the cluster runs short of (reserve_cpu). It is held back instead
  /// (fails in the fill-up, waits in the replay), so that the GPU stays whole for a pod that
  /// uses all of it. Negative: the policy's default (0 for sfgd, k_rsfgd_reserve for rsfgd);
  /// 0 = never hold back.
  double reserve = -1.0;
  /// A sliver of w milli is one that few typical pods fit when the typical GPU pods with at
  /// most w milli per GPU weigh less than this fraction of all typical GPU pods.
  double reserve_fill = 0.05;
  /// Hold back only when the typical one-GPU pods that need more than the pod and fit the
  /// node's free CPU and model weigh at least this fraction of all typical GPU pods.
  double reserve_big = 0.3;
  /// Hold back only while the cluster's free CPU could feed this multiple of its free GPU
  /// milli at the typical GPU pods' milli-CPU per milli-GPU.
  double reserve_cpu = 2.0;
};

/// The policy's name ("custom" for custom).
inline std::string_view openb_policy_name(openb_policy p) noexcept {
  const auto i = static_cast<std::size_t>(p);
  return i < k_openb_policy_names.size() ? k_openb_policy_names[i] : std::string_view{"custom"};
}

/// Parses a built-in policy name; false when unknown.
inline bool openb_policy_from_name(std::string_view name, openb_policy& out) noexcept {
  for (std::size_t i = 0; i < k_openb_policy_names.size(); ++i) {
    if (k_openb_policy_names[i] == name) {
      out = static_cast<openb_policy>(i);
      return true;
    }
  }
  return false;
}

/// HAMi's default number of tasks that may share one GPU (deviceSplitCount), the slot total.
inline constexpr int k_hami_default_split = 10;
/// Default of openb_scheduler::enable_index: a pod class is indexed when its share of
/// decisions times the node count exceeds this (measured best on the openb list, 1x to 8x).
inline constexpr std::uint64_t k_index_nodes_per_update = 16;
/// Highest integer score of a node.
inline constexpr int k_openb_max_score = 100;

/// DotProd (§6.2): trunc(100 * (1 - d/2)), d the dot product of the node's free resources and
/// the request, both normalised by MaxSpec. Pure.
inline int openb_score_dotprod(const openb_node& node, const openb_pod& pod) noexcept {
  const std::int64_t cpu_left = node.cpu_left();
  if (cpu_left < pod.cpu) return 0;
  const double d = (static_cast<double>(cpu_left) / k_openb_max_spec_cpu) *
                       (static_cast<double>(pod.cpu) / k_openb_max_spec_cpu) +
                   (static_cast<double>(node.free_total) / k_openb_max_spec_gpu) *
                       (static_cast<double>(pod.gpu_request()) / k_openb_max_spec_gpu);
  return static_cast<int>(k_openb_max_score * (1.0 - d / 2.0));
}

/// GpuClustering (§6.3): prefers nodes that already hold pods with the pod's tag only. Pure.
inline int openb_score_gpuclustering(const openb_node& node, const openb_pod& pod) noexcept {
  const int tag = pod.tag();
  if (tag < 0) return 0;
  constexpr int spec_gpu = static_cast<int>(k_openb_max_spec_gpu);
  constexpr int span = 25;  // the free-capacity term ranges over 0..25
  const int base = (span * (spec_gpu - node.free_total)) / spec_gpu;
  int distinct = 0;
  for (auto c : node.tags) distinct += c > 0;
  constexpr int only_same = 75;
  constexpr int with_same = 50;
  constexpr int empty_node = 25;
  if (node.tags[static_cast<std::size_t>(tag)] > 0) {
    return base + (distinct == 1 ? only_same : with_same);
  }
  return base + (distinct == 0 ? empty_node : 0);
}

/// GpuPacking (§6.4): prefers used GPUs, then partly used nodes, then empty nodes. Pure.
inline int openb_score_gpupacking(const openb_node& node, const openb_pod& pod) noexcept {
  if (pod.n == 0 || pod.m == 0) return 0;
  const int g = node.gpus;
  constexpr int empty_bias = 33;
  constexpr int free_gpu_base = 50;
  constexpr int used_gpu_floor = 50;
  constexpr int percent = 100;
  constexpr int tenth = 10;
  if (node.all_free()) return std::max(empty_bias - g, g);
  // GPUs by free milli ascending, index order among equals (insertion sort is stable).
  std::array<int, k_openb_max_gpus> order{};
  for (int i = 0; i < g; ++i) order[static_cast<std::size_t>(i)] = i;
  for (int i = 1; i < g; ++i) {
    const int v = order[static_cast<std::size_t>(i)];
    int j = i - 1;
    while (j >= 0 && node.free[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] >
                         node.free[static_cast<std::size_t>(v)]) {
      order[static_cast<std::size_t>(j + 1)] = order[static_cast<std::size_t>(j)];
      --j;
    }
    order[static_cast<std::size_t>(j + 1)] = v;
  }
  int taken = 0;
  int fully_free = 0;
  int r = 0;
  for (int k = 0; k < g && taken < pod.n; ++k) {
    const int f = node.free[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])];
    if (f < pod.m) continue;
    ++taken;
    fully_free += f == k_openb_gpu_milli;
    r += (f * percent) / k_openb_gpu_milli;
  }
  if (fully_free > 0) return std::max(free_gpu_base - fully_free, empty_bias);
  return std::max(percent - r / tenth, used_gpu_floor);
}

/// BestFit's raw score (§6.5): trunc(100 * (1 - u)), u the mean leftover share after placing.
/// Pure.
inline int openb_score_bestfit_raw(const openb_node& node, const openb_pod& pod) noexcept {
  const double u =
      0.5 * static_cast<double>(node.cpu_left() - pod.cpu) / k_openb_max_spec_cpu +
      0.5 * static_cast<double>(node.free_total - pod.gpu_request()) / k_openb_max_spec_gpu;
  return static_cast<int>(k_openb_max_score * (1.0 - u));
}

/// Spread or binpack by HAMi's usage formula on the node, request included (file comment).
/// Pure.
inline int openb_score_hami(const openb_node& node, const openb_pod& pod, hami_policy p) noexcept {
  usage u;
  const bool gpu = pod.n > 0 && pod.m > 0;
  u.slots_used = node.gpu_bindings + (gpu ? pod.n : 0);
  u.slots_total = static_cast<double>(node.gpus) * k_hami_default_split;
  u.cores_used = static_cast<double>(node.gpus) * k_openb_gpu_milli - node.free_total +
                 (gpu ? static_cast<double>(pod.gpu_request()) : 0.0);
  u.cores_total = static_cast<double>(node.gpus) * k_openb_gpu_milli;
  u.memory_used = static_cast<double>(node.mem_used + pod.mem);
  u.memory_total = static_cast<double>(node.mem_alloc);
  const usage_weights w;
  const double max = k_hami_score_scale * (w.slots + w.cores + w.memory);
  const double s = hami_policy_score(p, u, w);
  return std::clamp(static_cast<int>(k_openb_max_score * s / max), 0, k_openb_max_score);
}

/// The result of one scheduling cycle: the node (-1 when none is feasible) and its GPUs.
struct openb_placement {
  std::int32_t node = -1;  ///< index into the cluster, -1 = unschedulable
  gpu_mask gpus = 0;       ///< GPUs that each receive m milli
};

/// A user scorer: fills scores[k] for the node feasible[k]; larger wins, ties by rank.
using openb_custom_scorer =
    std::function<void(const openb_cluster&, const openb_pod&, const std::vector<std::uint32_t>&,
                       std::vector<std::int64_t>&)>;

/// The scheduling cycle (§5) of one policy over one cluster. Holds per-run state (ranks, score
/// cache, buffers): not thread-safe; one per run. Rng: go_rand or anything with intn(int64).
template <class Rng>
class openb_scheduler {
 public:
  /// policy: which scorer; ranks[i]: node i's tie-break rank (smaller wins); frag: the
  /// cluster's fragment tracker (FGD reads it; must be updated after each bind); rng: draws of
  /// Random; class_count: number of distinct pod classes (cpu, m, n) for the score caches of
  /// fgd and sfgd and the node index.
  openb_scheduler(openb_policy policy, std::vector<std::int32_t> ranks, frag_tracker* frag,
                  Rng* rng, std::size_t class_count = 0)
      : policy_(policy), ranks_(std::move(ranks)), frag_(frag), rng_(rng) {
    class_count_ = class_count;
    if (policy_ == openb_policy::fgd && class_count > 0) {
      cache_.assign(class_count * ranks_.size(), cached{});
    }
    if (sfgd_like() && class_count > 0) {
      fp_cache_.assign(class_count * ranks_.size(), fp_cached{});
    }
  }

  /// Sets the scorer of openb_policy::custom.
  void set_custom(openb_custom_scorer scorer) { custom_ = std::move(scorer); }
  /// Turns on the node index of the policies whose score depends on the node's state and the
  /// pod's class (cpu, m, n) only: fgd, sfgd, dotprod, gpuclustering and gpupacking. For each
  /// frequent pod class it keeps, per GPU model, a tournament tree over the nodes that could
  /// hold such a pod (memory and GPU type aside) with the policy's key, brought up to date
  /// from the log of changed nodes when the class is next scheduled. A decision then searches
  /// the trees of the models the pod may use for the first node in (key, rank) order that
  /// passes the full filter, instead of scoring every node; choices are identical. A class is
  /// indexed once it has been scheduled 4 times and its share of decisions times the node
  /// count exceeds nodes_per_update (each indexed class costs about one node update per
  /// decision; scanning costs one score per node). The caller must report every bind and
  /// unbind through node_changed(). No effect for other policies (their scores depend on the
  /// pod's memory, on the feasible set or on random draws) or without pod classes. Not
  /// thread-safe.
  void enable_index(std::uint64_t nodes_per_update = k_index_nodes_per_update) {
    index_on_ = (policy_ == openb_policy::fgd || sfgd_like() || policy_ == openb_policy::dotprod ||
                 policy_ == openb_policy::gpuclustering || policy_ == openb_policy::gpupacking) &&
                class_count_ > 0;
    nodes_per_update_ = nodes_per_update;
    if (index_on_) index_.assign(class_count_, class_index{});
  }
  /// Reports that node i's state changed (bind or unbind); needed when the index is on.
  void node_changed(std::size_t i) {
    if (index_on_) changed_.push_back(static_cast<std::uint32_t>(i));
  }
  /// Pod classes the index keeps (for tests and benchmarks).
  std::size_t indexed_classes() const noexcept {
    std::size_t n = 0;
    for (const auto& c : index_) n += c.built;
    return n;
  }

  /// Sets the parts of sfgd in use (its ablation); the defaults are the policy.
  void set_sfgd_knobs(const sfgd_knobs& k) noexcept { knobs_ = k; }
  /// Sets the pod classes the host pressure weighs (sfgd_knobs::host): every class of the
  /// workload with its count, where the typical pods (the default) leave out the rare ones
  /// (openb_typical_pods with threshold 100 gives them all). Call before the first schedule().
  void set_host_classes(typical_pods classes) { host_classes_ = std::move(classes); }

  /// One cycle for pod against the cluster's current state; binds nothing. pod_class indexes
  /// the FGD score cache (-1: no caching). node < 0 when no node can hold the pod, or when
  /// the reservation holds it back (last_held_back()); may_hold_back = false turns the
  /// reservation off for this cycle (a replay's retry of a pod that already waited). Not
  /// thread-safe.
  openb_placement schedule(const openb_cluster& cluster, const openb_pod& pod,
                           std::int32_t pod_class = -1, bool may_hold_back = true) {
    last_held_back_ = false;
    openb_placement out = schedule_unreserved(cluster, pod, pod_class);
    if (out.node >= 0 && may_hold_back && holds_back(cluster, pod, out)) {
      last_held_back_ = true;
      ++held_back_;
      return {};
    }
    return out;
  }

  /// True when the last schedule() found a node but the reservation held the pod back.
  bool last_held_back() const noexcept { return last_held_back_; }
  /// Pods the reservation held back so far.
  std::uint64_t held_back() const noexcept { return held_back_; }
  /// The feasible nodes of the last cycle (not filled by a decision the index answered).
  const std::vector<std::uint32_t>& feasible() const noexcept { return feasible_; }

 private:
  // The reservation (sfgd_knobs::reserve) applied to the placement out the policy chose.
  bool holds_back(const openb_cluster& cluster, const openb_pod& pod, const openb_placement& out) {
    if (!sfgd_like() || pod.kind() != openb_pod_kind::sharing || pod.m <= 0) return false;
    const double reserve = knobs_.reserve >= 0              ? knobs_.reserve
                           : policy_ == openb_policy::rsfgd ? k_rsfgd_reserve
                                                            : 0.0;
    if (reserve <= 0) return false;
    // An untyped pod may use every GPU, those of nodes with no model too.
    const auto [whole, all] = pod.typed ? cluster.whole_free_gpus(pod.types)
                                        : std::pair<std::int64_t, std::int64_t>{
                                              cluster.whole_free_gpus(), cluster.total_gpus()};
    if (static_cast<double>(whole) >= reserve * static_cast<double>(all)) return false;
    const openb_node& node = cluster.node(static_cast<std::size_t>(out.node));
    int g = 0;
    while (g < node.gpus && ((out.gpus >> g) & 1U) == 0) ++g;
    if (g >= node.gpus || node.free[static_cast<std::size_t>(g)] != k_openb_gpu_milli) return false;
    if (fill_share(k_openb_gpu_milli - pod.m) >= knobs_.reserve_fill) return false;
    if (big_share(pod.m, node.cpu_left(), node.model) < knobs_.reserve_big) return false;
    const auto free_gpu =
        static_cast<double>(cluster.total_gpus() * k_openb_gpu_milli - cluster.allocated_milli());
    return static_cast<double>(cluster.cpu_left()) >=
           knobs_.reserve_cpu * cpu_per_milli() * free_gpu;
  }

  // Weight share of the typical GPU pods whose per-GPU request fits a sliver of w milli.
  double fill_share(int w) {
    if (fill_share_.empty()) {
      fill_share_.assign(k_openb_gpu_milli + 1, 0.0);
      double all = 0;
      for (const auto& t : frag_->model().typical().pods) {
        if (t.m <= 0 || t.n <= 0) continue;
        all += static_cast<double>(t.count);
        fill_share_[static_cast<std::size_t>(t.m)] += static_cast<double>(t.count);
      }
      double run = 0;
      for (auto& v : fill_share_) {
        run += v;
        v = all > 0 ? run / all : 0;
      }
    }
    return fill_share_[static_cast<std::size_t>(std::clamp(w, 0, k_openb_gpu_milli))];
  }

  // Weight share of the typical GPU pods that would use a whole GPU of this node better than a
  // pod of m milli: one GPU of more than m milli, at most cpu_left milli-CPU, the node's model.
  double big_share(int m, std::int64_t cpu_left, int model) const {
    double all = 0;
    double big = 0;
    for (const auto& t : frag_->model().typical().pods) {
      if (t.m <= 0 || t.n <= 0) continue;
      all += static_cast<double>(t.count);
      const bool model_ok = !t.typed || (model >= 0 && ((t.types >> model) & 1U) != 0);
      if (t.n == 1 && t.m > m && t.cpu <= cpu_left && model_ok) big += static_cast<double>(t.count);
    }
    return all > 0 ? big / all : 0;
  }

  bool sfgd_like() const noexcept {
    return policy_ == openb_policy::sfgd || policy_ == openb_policy::rsfgd;
  }

  // Host pressure of every node (sfgd_knobs::host), in units of 1/denom per milli-GPU; once.
  void host_pressure_init(const openb_cluster& cluster) {
    if (!host_pressure_.empty() || knobs_.host <= 0 || !sfgd_like()) return;
    const auto& nodes = cluster.nodes();
    const auto& typical =
        host_classes_.pods.empty() ? frag_->model().typical().pods : host_classes_.pods;
    // Could the empty node host a pod of class t? Its model and GPU count, and for a
    // multi-GPU class its CPU, which must come from that one node. A one-GPU class's CPU is
    // left out: counting it made the CPU-rich nodes dear and cost allocation on the cpu lists.
    const auto hosts = [](const typical_pod& t, const openb_node& n) {
      if (n.gpus < t.n || (t.n > 1 && t.cpu > n.cpu_alloc)) return false;
      return !t.typed || (n.model >= 0 && ((t.types >> n.model) & 1U) != 0);
    };
    std::vector<double> capacity(typical.size(), 0.0);
    for (std::size_t k = 0; k < typical.size(); ++k) {
      const auto& t = typical[k];
      if (t.m <= 0 || t.n <= 0) continue;
      for (const auto& n : nodes) {
        if (hosts(t, n)) capacity[k] += static_cast<double>(n.gpus) * k_openb_gpu_milli;
      }
    }
    // Class k's share of the typical GPU demand over its hosts' share of the GPUs: 1 when its
    // hosts can take it in proportion, more when they are few for it.
    double demand = 0;
    for (const auto& t : typical) demand += static_cast<double>(t.count) * t.n * std::max(t.m, 0);
    const double total = static_cast<double>(cluster.total_gpus()) * k_openb_gpu_milli;
    host_pressure_.assign(nodes.size(), 0.0);
    if (demand <= 0) return;
    const auto denom = static_cast<double>(frag_->model().denom());
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      double p = 0;
      for (std::size_t k = 0; k < typical.size(); ++k) {
        const auto& t = typical[k];
        if (capacity[k] <= 0 || !hosts(t, nodes[i])) continue;
        p += static_cast<double>(t.count) * t.n * t.m / demand * total / capacity[k];
      }
      host_pressure_[i] = knobs_.host * denom * p;
    }
  }

  // The host-pressure term of node i with `free_total` milli-GPU free (0 when off).
  std::int64_t host_term(std::size_t i, std::int64_t free_total) const noexcept {
    if (host_pressure_.empty()) return 0;
    return -std::llround(host_pressure_[i] * static_cast<double>(free_total));
  }

  // The policy's choice, before the reservation.
  openb_placement schedule_unreserved(const openb_cluster& cluster, const openb_pod& pod,
                                      std::int32_t pod_class) {
    host_pressure_init(cluster);
    if (index_on_ && pod_class >= 0 && static_cast<std::size_t>(pod_class) < class_count_) {
      std::int32_t pick = -1;
      if (indexed_choice(cluster, pod, pod_class, pick))
        return place(cluster, pod, pod_class, pick, -1);
    }
    feasible_.clear();
    const auto& nodes = cluster.nodes();
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (openb_feasible(nodes[i], pod)) feasible_.push_back(static_cast<std::uint32_t>(i));
    }
    if (feasible_.empty()) return {};
    std::uint32_t pick = feasible_.front();
    int fgd_gpu = -1;
    if (feasible_.size() > 1) {
      switch (policy_) {
        case openb_policy::random:
          pick = feasible_[static_cast<std::size_t>(
              rng_->intn(static_cast<std::int64_t>(feasible_.size())))];
          break;
        case openb_policy::bestfit:
          pick = choose_bestfit(nodes, pod);
          break;
        case openb_policy::custom:
          pick = choose_custom(cluster, pod);
          break;
        case openb_policy::sfgd:
        case openb_policy::rsfgd:
          pick = choose_sfgd(nodes, pod, pod_class, fgd_gpu);
          break;
        default:
          pick = choose_scored(nodes, pod, pod_class, fgd_gpu);
          break;
      }
    }
    return place(cluster, pod, pod_class, static_cast<std::int32_t>(pick), fgd_gpu);
  }

  // The GPUs of the chosen node (pick < 0: unschedulable).
  openb_placement place(const openb_cluster& cluster, const openb_pod& pod, std::int32_t pod_class,
                        std::int32_t pick, int fgd_gpu) {
    if (pick < 0) return {};
    const openb_node& node = cluster.node(static_cast<std::size_t>(pick));
    openb_placement out;
    out.node = pick;
    switch (policy_) {
      case openb_policy::random:
        out.gpus = openb_select_random(node, pod, *rng_);
        break;
      case openb_policy::spread:
        out.gpus = openb_select_worst(node, pod);
        break;
      case openb_policy::fgd:
        if (pod.kind() == openb_pod_kind::sharing && pod.m > 0) {
          if (fgd_gpu < 0)
            fgd_gpu = fgd_score(node, static_cast<std::size_t>(pick), pod, pod_class).second;
          out.gpus = static_cast<gpu_mask>(1U << fgd_gpu);
        } else {
          out.gpus = openb_select_best(node, pod);
        }
        break;
      case openb_policy::sfgd:
      case openb_policy::rsfgd:
        if (pod.kind() == openb_pod_kind::sharing && pod.m > 0) {
          if (fgd_gpu < 0)
            fgd_gpu = sfgd_delta(node, static_cast<std::size_t>(pick), pod, pod_class).second;
          out.gpus = static_cast<gpu_mask>(1U << fgd_gpu);
        } else {
          out.gpus = openb_select_best(node, pod);
        }
        break;
      default:
        out.gpus = openb_select_best(node, pod);
        break;
    }
    return out;
  }

 public:
  /// sfgd's primary key of node i: the fragment decrease F(N) - F(N') in units of
  /// 1/denom milli-GPU (FGD's truncated sigmoid score when knobs.exact is off), and for a
  /// sharing pod the GPU it chose. Uses the cache when pod_class >= 0. Not thread-safe.
  std::pair<std::int64_t, int> sfgd_delta(const openb_node& node, std::size_t i,
                                          const openb_pod& pod, std::int32_t pod_class = -1) {
    fp_cached* slot = nullptr;
    if (pod_class >= 0 && static_cast<std::size_t>(pod_class) < class_count_ &&
        !fp_cache_.empty()) {
      slot = &fp_cache_[static_cast<std::size_t>(pod_class) * ranks_.size() + i];
      if (slot->version == node.version + 1) return {slot->delta, slot->gpu};
    }
    const auto r = sfgd_compute(node, i, pod);
    if (slot != nullptr)
      *slot = fp_cached{node.version + 1, static_cast<std::int16_t>(r.second), r.first};
    return r;
  }

  /// FGD's score of node i (§6.6) and, for a sharing pod, the GPU it chose. Uses the cache
  /// when pod_class >= 0. Not thread-safe.
  std::pair<int, int> fgd_score(const openb_node& node, std::size_t i, const openb_pod& pod,
                                std::int32_t pod_class = -1) {
    cached* slot = nullptr;
    if (pod_class >= 0 && static_cast<std::size_t>(pod_class) < class_count_ && !cache_.empty()) {
      slot = &cache_[static_cast<std::size_t>(pod_class) * ranks_.size() + i];
      if (slot->version == node.version + 1) return {slot->score, slot->gpu};
    }
    const auto r = fgd_compute(node, i, pod);
    if (slot != nullptr)
      *slot = cached{node.version + 1, static_cast<std::int16_t>(r.first),
                     static_cast<std::int16_t>(r.second)};
    return r;
  }

 private:
  struct cached {
    std::uint32_t version = 0;  ///< node version + 1; 0 = empty
    std::int16_t score = 0;
    std::int16_t gpu = -1;
  };

  // A pod class's index: each node's key under the policy (a larger first, then smaller b, c;
  // fgd: a = score; sfgd: a = decrease, b = free GPU left with pack, c = CPU left with
  // cpu_fit), and per GPU model a tournament tree over that model's nodes in rank order whose
  // inner entries hold the best node below them (ties to the smaller rank). Flat arrays: an
  // update rewrites one leaf-to-root path and stops where the winner no longer changes.
  struct index_key {
    std::int64_t a = 0;
    std::int64_t b = 0;
    std::int64_t c = 0;
  };
  // A tree entry: the winner's primary key and rank inline, so that a match reads one pair of
  // adjacent entries, and the most free memory (MiB, capped at k_mem_cap) of a node of the
  // class below it. node == k_none: no node. A leaf also holds its node's version + 1 at the
  // last update (0 = never), which saves a separate array's cache miss per update.
  struct index_slot {
    std::int64_t a;
    std::int32_t rank;
    std::uint32_t node;
    std::int32_t mem;
    std::uint32_t synced;
  };
  struct class_index {
    bool built = false;
    std::uint64_t queries = 0;
    std::size_t cursor = 0;        // next entry of changed_ to apply
    std::vector<index_key> key;    // each node's full key (only with sfgd's tie-breaks)
    std::vector<index_slot> tree;  // per group: winners (see groups_)
  };
  // The nodes of one GPU model (or of none) in rank order: leaf k of its tree is node[k].
  struct index_group {
    int model = k_openb_no_model;
    std::size_t base = 0;   // offset of this group's tree in class_index::tree (2 * width)
    std::size_t width = 0;  // leaves, a power of two
    std::vector<std::uint32_t> node;
  };

  static constexpr std::uint32_t k_none = ~std::uint32_t{0};
  static constexpr index_slot k_empty{0, 0, k_none, -1, 0};
  static constexpr std::int64_t k_mem_cap = std::numeric_limits<std::int32_t>::max();
  // A class is indexed once it has been scheduled this many times (see enable_index).
  static constexpr std::uint64_t k_index_min_queries = 4;

  // Could a pod of this class fit, memory and GPU type aside?
  static bool class_feasible(const openb_node& n, const openb_pod& pod) noexcept {
    if (n.pods + 1 > k_openb_max_pods_per_node) return false;
    if (pod.cpu + n.cpu_used > n.cpu_alloc) return false;
    if (pod.m > 0 && (n.gpus <= 0 || !openb_gpu_fits(n, pod.n, pod.m))) return false;
    return true;
  }

  // sfgd's pack and cpu_fit knobs break ties of a by b and c.
  bool index_ties() const noexcept { return sfgd_like() && (knobs_.pack || knobs_.cpu_fit); }

  // Does x come before y in a class's order? An empty entry comes last.
  bool index_before(const class_index& ci, const index_slot& x,
                    const index_slot& y) const noexcept {
    if (y.node == k_none) return x.node != k_none;
    if (x.node == k_none) return false;
    if (x.a != y.a) return x.a > y.a;
    if (index_ties()) {
      const index_key& p = ci.key[x.node];
      const index_key& q = ci.key[y.node];
      if (p.b != q.b) return p.b < q.b;
      if (p.c != q.c) return p.c < q.c;
    }
    return x.rank < y.rank;
  }

  // Sets node j's leaf and replays the matches above it.
  void index_set_leaf(class_index& ci, std::uint32_t j, const index_slot& leaf) {
    const index_group& g = groups_[group_of_[j]];
    index_slot* t = ci.tree.data() + g.base;
    std::size_t at = g.width + leaf_of_[j];
    t[at] = leaf;
    for (at >>= 1; at >= 1; at >>= 1) {
      const index_slot& l = t[2 * at];
      const index_slot& r = t[2 * at + 1];
      const index_slot& w = index_before(ci, r, l) ? r : l;
      const std::int32_t mem = std::max(l.mem, r.mem);
      if (w.node == t[at].node && w.node != j && mem == t[at].mem) break;  // nothing above changes
      t[at] = index_slot{w.a, w.rank, w.node, mem, 0};
    }
  }

  // The groups (once): nodes by GPU model, each in rank order.
  void index_groups(const openb_cluster& cluster) {
    if (!groups_.empty()) return;
    const std::size_t n = cluster.size();
    std::vector<std::uint32_t> by_rank(n);
    for (std::uint32_t j = 0; j < n; ++j) by_rank[static_cast<std::size_t>(ranks_[j])] = j;
    group_of_.assign(n, 0);
    leaf_of_.assign(n, 0);
    std::vector<int> group_of_model(k_openb_max_models + 1, -1);
    for (const std::uint32_t j : by_rank) {
      const int model = cluster.node(j).model;
      int& gi = group_of_model[static_cast<std::size_t>(model + 1)];
      if (gi < 0) {
        gi = static_cast<int>(groups_.size());
        groups_.push_back(index_group{model, 0, 0, {}});
      }
      index_group& g = groups_[static_cast<std::size_t>(gi)];
      group_of_[j] = static_cast<std::uint32_t>(gi);
      leaf_of_[j] = static_cast<std::uint32_t>(g.node.size());
      g.node.push_back(j);
    }
    std::size_t base = 0;
    for (index_group& g : groups_) {
      g.width = 1;
      while (g.width < g.node.size()) g.width *= 2;
      g.base = base;
      base += 2 * g.width;
    }
    tree_size_ = base;
    // Nodes never bound share their state with every node of the same spec (index_build).
    std::map<std::tuple<std::int64_t, std::int64_t, int, int>, std::uint32_t> specs;
    spec_of_.assign(n, 0);
    for (std::uint32_t j = 0; j < n; ++j) {
      const openb_node& x = cluster.node(j);
      const auto key = std::make_tuple(x.cpu_alloc, x.mem_alloc, int{x.gpus}, int{x.model});
      spec_of_[j] = specs.emplace(key, static_cast<std::uint32_t>(specs.size())).first->second;
    }
    spec_count_ = specs.size();
  }

  // Node j's key for the class, or false when a pod of the class cannot fit there.
  bool index_key_of(const openb_node& n, std::uint32_t j, const openb_pod& pod,
                    std::int32_t pod_class, index_key& k) {
    if (!class_feasible(n, pod)) return false;
    // Straight from the fragment measure: once a class is indexed its cache slots are rarely
    // read again before the node changes.
    (void)pod_class;
    switch (policy_) {
      case openb_policy::fgd:
        k.a = fgd_compute(n, j, pod).first;
        break;
      case openb_policy::sfgd:
      case openb_policy::rsfgd:
        k.a = sfgd_compute(n, j, pod).first;
        k.b = knobs_.pack ? n.free_total - pod.gpu_request() : 0;
        k.c = knobs_.cpu_fit ? n.cpu_left() - pod.cpu : 0;
        break;
      default: {
        int gpu = -1;
        k.a = score_of(n, j, pod, -1, gpu);
        break;
      }
    }
    return true;
  }

  // Keys of every node and the trees bottom-up. A node never bound has its spec's initial
  // state, whose key is computed once per spec.
  void index_build(class_index& ci, const openb_cluster& cluster, const openb_pod& pod,
                   std::int32_t pod_class) {
    const std::size_t n = cluster.size();
    const bool ties = index_ties();
    if (ties) ci.key.assign(n, index_key{});
    ci.tree.assign(tree_size_, k_empty);
    std::vector<index_key> memo(spec_count_);         // a spec's key when never bound
    std::vector<std::int8_t> known(spec_count_, -1);  // -1: not yet, 0: no fit, 1: memo holds it
    for (std::uint32_t j = 0; j < n; ++j) {
      const openb_node& x = cluster.node(j);
      index_key k;
      bool fits = false;
      const std::uint32_t spec = spec_of_[j];
      if (x.version == 0 && known[spec] >= 0) {
        fits = known[spec] == 1;
        k = memo[spec];
      } else {
        fits = index_key_of(x, j, pod, pod_class, k);
        if (x.version == 0) {
          known[spec] = fits ? 1 : 0;
          memo[spec] = k;
        }
      }
      const index_group& g = groups_[group_of_[j]];
      index_slot& leaf = ci.tree[g.base + g.width + leaf_of_[j]];
      if (!fits) {
        leaf.synced = x.version + 1;
        continue;
      }
      if (ties) ci.key[j] = k;
      leaf = index_slot{k.a, ranks_[j], j, free_mem(x), x.version + 1};
    }
    for (const index_group& g : groups_) {
      index_slot* t = ci.tree.data() + g.base;
      for (std::size_t at = g.width - 1; at >= 1; --at) {
        t[at] = index_before(ci, t[2 * at + 1], t[2 * at]) ? t[2 * at + 1] : t[2 * at];
        t[at].mem = std::max(t[2 * at].mem, t[2 * at + 1].mem);
      }
    }
  }

  void index_update(class_index& ci, const openb_cluster& cluster, const openb_pod& pod,
                    std::int32_t pod_class, std::uint32_t j) {
    const openb_node& n = cluster.node(j);
    const index_group& g = groups_[group_of_[j]];
    index_slot& leaf = ci.tree[g.base + g.width + leaf_of_[j]];
    const std::uint32_t synced = n.version + 1;
    if (leaf.synced == synced) return;
    index_key k;
    if (!index_key_of(n, j, pod, pod_class, k)) {
      if (leaf.node == k_none) {
        leaf.synced = synced;
      } else {
        index_set_leaf(ci, j, index_slot{0, 0, k_none, -1, synced});
      }
      return;
    }
    if (index_ties()) ci.key[j] = k;
    index_set_leaf(ci, j, index_slot{k.a, ranks_[j], j, free_mem(n), synced});
  }

  // A node's free memory for the trees, capped at k_mem_cap.
  static std::int32_t free_mem(const openb_node& n) noexcept {
    return static_cast<std::int32_t>(
        std::clamp<std::int64_t>(n.mem_alloc - n.mem_used, 0, k_mem_cap));
  }

  // The first node of the subtree at `at` of group g, in the class's order, that passes the
  // full filter, if it comes before best (then it replaces best). A subtree is left out when
  // its winner does not come before best or none of its nodes has the pod's memory free (a
  // capped maximum proves nothing).
  void index_search(const class_index& ci, const openb_cluster& cluster, const openb_pod& pod,
                    const index_group& g, std::size_t at, index_slot& best) const {
    const index_slot& w = ci.tree[g.base + at];
    if (!index_before(ci, w, best) || w.mem < std::min(pod.mem, k_mem_cap)) return;
    if (openb_feasible(cluster.node(w.node), pod)) {
      best = w;  // the subtree's best node fits: nothing below can come before it
      return;
    }
    if (at >= g.width) return;
    // The child holding w first: its other nodes may still come before the sibling's winner.
    const std::size_t first = ci.tree[g.base + 2 * at].node == w.node ? 2 * at : 2 * at + 1;
    index_search(ci, cluster, pod, g, first, best);
    index_search(ci, cluster, pod, g, first ^ 1U, best);
  }

  // Answers a decision from the index when the class is indexed: true with pick (-1: no node
  // fits), false when the caller must scan.
  bool indexed_choice(const openb_cluster& cluster, const openb_pod& pod, std::int32_t pod_class,
                      std::int32_t& pick) {
    class_index& ci = index_[static_cast<std::size_t>(pod_class)];
    ++decisions_;
    ++ci.queries;
    const std::size_t n = cluster.size();
    if (!ci.built) {
      if (ci.queries < k_index_min_queries || ci.queries * n <= nodes_per_update_ * decisions_) {
        return false;
      }
      ci.built = true;
      index_groups(cluster);
      index_build(ci, cluster, pod, pod_class);
      ci.cursor = changed_.size();
    }
    for (; ci.cursor < changed_.size(); ++ci.cursor) {
      index_update(ci, cluster, pod, pod_class, changed_[ci.cursor]);
    }
    index_slot best = k_empty;
    for (const index_group& g : groups_) {
      if (pod.typed && pod.m > 0 && (g.model < 0 || ((pod.types >> g.model) & 1U) == 0)) continue;
      index_search(ci, cluster, pod, g, 1, best);
    }
    pick = best.node == k_none ? -1 : static_cast<std::int32_t>(best.node);
    return true;
  }

  struct fp_cached {
    std::uint32_t version = 0;  ///< node version + 1; 0 = empty
    std::int16_t gpu = -1;
    std::int64_t delta = 0;
  };

  bool better(int score, std::uint32_t node, int best, std::uint32_t best_node) const noexcept {
    return score > best || (score == best && ranks_[node] < ranks_[best_node]);
  }

  int score_of(const openb_node& node, std::size_t i, const openb_pod& pod, std::int32_t pod_class,
               int& gpu) {
    switch (policy_) {
      case openb_policy::dotprod:
        return openb_score_dotprod(node, pod);
      case openb_policy::gpuclustering:
        return openb_score_gpuclustering(node, pod);
      case openb_policy::gpupacking:
        return openb_score_gpupacking(node, pod);
      case openb_policy::spread:
        return openb_score_hami(node, pod, hami_policy::spread);
      case openb_policy::binpack:
        return openb_score_hami(node, pod, hami_policy::binpack);
      case openb_policy::fgd: {
        const auto r = fgd_score(node, i, pod, pod_class);
        gpu = r.second;
        return r.first;
      }
      default:
        return 0;
    }
  }

  std::uint32_t choose_scored(const std::vector<openb_node>& nodes, const openb_pod& pod,
                              std::int32_t pod_class, int& best_gpu) {
    int best = -1;
    std::uint32_t best_node = feasible_.front();
    for (std::uint32_t i : feasible_) {
      int gpu = -1;
      const int s = score_of(nodes[i], i, pod, pod_class, gpu);
      if (best < 0 || better(s, i, best, best_node)) {
        best = s;
        best_node = i;
        best_gpu = gpu;
      }
    }
    return best_node;
  }

  // Lexicographic: larger fragment decrease, then (pack) less free GPU left, then (cpu_fit)
  // less CPU left, then the smaller rank.
  std::uint32_t choose_sfgd(const std::vector<openb_node>& nodes, const openb_pod& pod,
                            std::int32_t pod_class, int& best_gpu) {
    std::uint32_t best_node = feasible_.front();
    std::int64_t best_delta = 0;
    std::int64_t best_free = 0;
    std::int64_t best_cpu = 0;
    bool first = true;
    for (std::uint32_t i : feasible_) {
      const openb_node& n = nodes[i];
      const auto r = sfgd_delta(n, i, pod, pod_class);
      const std::int64_t free_after = knobs_.pack ? n.free_total - pod.gpu_request() : 0;
      const std::int64_t cpu_after = knobs_.cpu_fit ? n.cpu_left() - pod.cpu : 0;
      bool take = first;
      if (!take) {
        if (r.first != best_delta) {
          take = r.first > best_delta;
        } else if (free_after != best_free) {
          take = free_after < best_free;
        } else if (cpu_after != best_cpu) {
          take = cpu_after < best_cpu;
        } else {
          take = ranks_[i] < ranks_[best_node];
        }
      }
      if (take) {
        first = false;
        best_node = i;
        best_delta = r.first;
        best_free = free_after;
        best_cpu = cpu_after;
        best_gpu = r.second;
      }
    }
    return best_node;
  }

  std::uint32_t choose_bestfit(const std::vector<openb_node>& nodes, const openb_pod& pod) {
    scores_.resize(feasible_.size());
    std::int64_t lo = 0;
    std::int64_t hi = 0;
    for (std::size_t k = 0; k < feasible_.size(); ++k) {
      scores_[k] = openb_score_bestfit_raw(nodes[feasible_[k]], pod);
      lo = k == 0 ? scores_[k] : std::min(lo, scores_[k]);
      hi = k == 0 ? scores_[k] : std::max(hi, scores_[k]);
    }
    // NormalizeScore: (raw - min) * 100 / (max - min); all 0 when max == min.
    for (auto& s : scores_) s = hi == lo ? 0 : (s - lo) * k_openb_max_score / (hi - lo);
    return argmax();
  }

  std::uint32_t choose_custom(const openb_cluster& cluster, const openb_pod& pod) {
    scores_.assign(feasible_.size(), 0);
    if (custom_) custom_(cluster, pod, feasible_, scores_);
    return argmax();
  }

  std::uint32_t argmax() const noexcept {
    std::size_t best = 0;
    for (std::size_t k = 1; k < feasible_.size(); ++k) {
      if (scores_[k] > scores_[best] ||
          (scores_[k] == scores_[best] && ranks_[feasible_[k]] < ranks_[feasible_[best]])) {
        best = k;
      }
    }
    return feasible_[best];
  }

  static int sigmoid_score(std::int64_t before, std::int64_t after, std::int64_t denom) noexcept {
    constexpr double milli_per_gpu = 1000.0;
    const double x =
        static_cast<double>(before - after) / static_cast<double>(denom) / milli_per_gpu;
    return static_cast<int>(k_openb_max_score * (1.0 / (1.0 + std::exp(-x))));
  }

  std::pair<int, int> fgd_compute(const openb_node& node, std::size_t i, const openb_pod& pod) {
    frag_model& model = frag_->model();
    const std::int64_t before = frag_->node(i);
    const std::int64_t cpu_after = node.cpu_left() - pod.cpu;
    std::array<std::int16_t, k_openb_max_gpus> f = node.free;
    if (pod.n == 0 || pod.m == 0) {
      return {sigmoid_score(before, model.amount(cpu_after, f.data(), node.gpus, node.model),
                            model.denom()),
              -1};
    }
    if (pod.kind() != openb_pod_kind::sharing) {
      // The first n GPUs in ascending-f order with f >= m, index order among equals.
      std::array<bool, k_openb_max_gpus> used{};
      for (int taken = 0; taken < pod.n; ++taken) {
        int pick = -1;
        for (int g = 0; g < node.gpus; ++g) {
          const auto gi = static_cast<std::size_t>(g);
          if (!used[gi] && f[gi] >= pod.m &&
              (pick < 0 || f[gi] < f[static_cast<std::size_t>(pick)])) {
            pick = g;
          }
        }
        if (pick < 0) break;
        used[static_cast<std::size_t>(pick)] = true;
      }
      for (int g = 0; g < node.gpus; ++g) {
        if (used[static_cast<std::size_t>(g)]) {
          f[static_cast<std::size_t>(g)] =
              static_cast<std::int16_t>(f[static_cast<std::size_t>(g)] - pod.m);
        }
      }
      return {sigmoid_score(before, model.amount(cpu_after, f.data(), node.gpus, node.model),
                            model.denom()),
              -1};
    }
    // Sharing pod: every GPU with f >= m, first strictly best in index order. GPUs with equal
    // free milli give the same node state after placement, so each value is scored once.
    std::array<std::int16_t, k_openb_max_gpus> seen_free{};
    std::array<int, k_openb_max_gpus> seen_score{};
    int seen = 0;
    int best = -1;
    int best_gpu = -1;
    for (int g = 0; g < node.gpus; ++g) {
      const auto gi = static_cast<std::size_t>(g);
      const std::int16_t v = node.free[gi];
      if (v < pod.m) continue;
      int s = -1;
      for (int k = 0; k < seen; ++k) {
        if (seen_free[static_cast<std::size_t>(k)] == v)
          s = seen_score[static_cast<std::size_t>(k)];
      }
      if (s < 0) {
        f[gi] = static_cast<std::int16_t>(v - pod.m);
        s = sigmoid_score(before, model.amount(cpu_after, f.data(), node.gpus, node.model),
                          model.denom());
        f[gi] = v;
        seen_free[static_cast<std::size_t>(seen)] = v;
        seen_score[static_cast<std::size_t>(seen)] = s;
        ++seen;
      }
      if (s > best) {
        best = s;
        best_gpu = g;
      }
    }
    return {best, best_gpu};
  }

  // sfgd's key before ranking: the exact decrease, or FGD's sigmoid score.
  std::int64_t sfgd_key(std::int64_t before, std::int64_t after) const noexcept {
    return knobs_.exact ? before - after : sigmoid_score(before, after, frag_->model().denom());
  }

  // The typical GPU pods' mean milli-CPU per milli-GPU (computed once).
  double cpu_per_milli() {
    if (cpu_per_milli_ < 0) {
      double cpu = 0;
      double gpu = 0;
      for (const auto& t : frag_->model().typical().pods) {
        if (t.m <= 0 || t.n <= 0) continue;
        cpu += static_cast<double>(t.count) * static_cast<double>(t.cpu);
        gpu += static_cast<double>(t.count) * t.n * t.m;
      }
      cpu_per_milli_ = gpu > 0 ? cpu / gpu : 0;
    }
    return cpu_per_milli_;
  }

  // denom x the GPU milli a node strands: free GPU beyond what its free CPU can feed.
  std::int64_t stranded(std::int64_t cpu_left, std::int64_t free_total) {
    if (cpu_per_milli() <= 0) return 0;
    const double fed = static_cast<double>(std::max<std::int64_t>(cpu_left, 0)) / cpu_per_milli_;
    const double s = std::max(0.0, static_cast<double>(free_total) - fed);
    return static_cast<std::int64_t>(knobs_.strand * s *
                                     static_cast<double>(frag_->model().denom()));
  }

  std::int64_t sfgd_amount(std::int64_t cpu_left, const std::int16_t* f, const openb_node& node,
                           std::size_t i) {
    std::int64_t a = frag_->model().amount(cpu_left, f, node.gpus, node.model);
    std::int64_t total = 0;
    for (int g = 0; g < node.gpus; ++g) total += f[g];
    if (knobs_.strand > 0) a += stranded(cpu_left, total);
    return a + host_term(i, total);
  }

  std::pair<std::int64_t, int> sfgd_compute(const openb_node& node, std::size_t i,
                                            const openb_pod& pod) {
    std::int64_t before = frag_->node(i) + host_term(i, node.free_total);
    if (knobs_.strand > 0) before += stranded(node.cpu_left(), node.free_total);
    const std::int64_t cpu_after = node.cpu_left() - pod.cpu;
    std::array<std::int16_t, k_openb_max_gpus> f = node.free;
    if (pod.kind() != openb_pod_kind::sharing || pod.m == 0) {
      // CPU-only and whole-GPU pods: whole GPUs are the lowest-index fully free ones, which
      // leave the same sorted free list as any other fully free ones.
      if (pod.n > 0 && pod.m > 0) {
        const gpu_mask mask = openb_select_lowest(node, pod);
        for (int g = 0; g < node.gpus; ++g) {
          if ((mask >> g) & 1U) {
            f[static_cast<std::size_t>(g)] =
                static_cast<std::int16_t>(f[static_cast<std::size_t>(g)] - pod.m);
          }
        }
      }
      return {sfgd_key(before, sfgd_amount(cpu_after, f.data(), node, i)), -1};
    }
    // Sharing pod: the GPU with the best key; ties to the least free milli (pack) or the
    // lowest index. Equal free values leave equal states, so each value is scored once.
    std::int64_t best = 0;
    int best_gpu = -1;
    for (int g = 0; g < node.gpus; ++g) {
      const auto gi = static_cast<std::size_t>(g);
      const std::int16_t v = node.free[gi];
      if (v < pod.m) continue;
      bool seen = false;
      for (int k = 0; k < g; ++k) seen = seen || node.free[static_cast<std::size_t>(k)] == v;
      if (seen) continue;
      f[gi] = static_cast<std::int16_t>(v - pod.m);
      const std::int64_t key = sfgd_key(before, sfgd_amount(cpu_after, f.data(), node, i));
      f[gi] = v;
      if (best_gpu < 0 || key > best ||
          (key == best && knobs_.pack && v < node.free[static_cast<std::size_t>(best_gpu)])) {
        best = key;
        best_gpu = g;
      }
    }
    return {best, best_gpu};
  }

  openb_policy policy_;
  bool index_on_ = false;
  std::uint64_t nodes_per_update_ = k_index_nodes_per_update;
  std::uint64_t decisions_ = 0;
  std::vector<std::uint32_t> changed_;  // nodes changed, in order (the index's log)
  std::vector<class_index> index_;
  std::vector<index_group> groups_;      // the index's node groups (one per GPU model)
  std::vector<std::uint32_t> group_of_;  // each node's group
  std::vector<std::uint32_t> leaf_of_;   // each node's leaf in its group
  std::vector<std::uint32_t> spec_of_;   // each node's spec (allocatable CPU, memory, GPUs, model)
  std::size_t spec_count_ = 0;
  std::size_t tree_size_ = 0;
  sfgd_knobs knobs_;
  double cpu_per_milli_ = -1;          ///< typical GPU pods' milli-CPU per milli-GPU; -1 = not yet
  std::vector<double> fill_share_;     ///< fill_share(w) by w; empty = not yet
  std::vector<double> host_pressure_;  ///< host x pressure by node; empty = off
  typical_pods host_classes_;          ///< classes the host pressure weighs; empty = typical
  bool last_held_back_ = false;
  std::uint64_t held_back_ = 0;
  std::vector<fp_cached> fp_cache_;
  std::vector<std::int32_t> ranks_;
  frag_tracker* frag_;
  Rng* rng_;
  openb_custom_scorer custom_;
  std::vector<cached> cache_;
  std::size_t class_count_ = 0;
  std::vector<std::uint32_t> feasible_;
  std::vector<std::int64_t> scores_;
};

}  // namespace gpuslice::fit
