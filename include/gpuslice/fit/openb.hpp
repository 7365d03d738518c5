#pragma once
/// \file
/// The FGD paper's cluster model in milli-GPU (PLACEMENT-SPEC §1, §2, §5): pods and nodes of
/// the Alibaba openb traces, the feasibility filter, the GPU selectors and the bind/unbind
/// steps. Standard library only. Plain value types: not thread-safe to mutate concurrently.

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gpuslice::fit {

/// Capacity of one GPU in milli-GPU.
inline constexpr int k_openb_gpu_milli = 1000;
/// Most GPUs one node may hold (the free list is a fixed array of this size).
inline constexpr int k_openb_max_gpus = 8;
/// Kubernetes' pod limit per node in the artifact's node YAML.
inline constexpr int k_openb_max_pods_per_node = 1001;
/// MaxSpecCpu of the artifact (const.go), the CPU normaliser of DotProd and BestFit.
inline constexpr double k_openb_max_spec_cpu = 128000.0;
/// MaxSpecGpu of the artifact (const.go), the GPU normaliser of DotProd, BestFit, clustering.
inline constexpr double k_openb_max_spec_gpu = 8000.0;
/// Most distinct GPU models (a type constraint is a 64-bit mask of model ids).
inline constexpr int k_openb_max_models = 64;
/// Model id of a node without a GPU model.
inline constexpr int k_openb_no_model = -1;
/// Number of GpuClustering tags: share-gpu plus 1-gpu .. 8-gpu.
inline constexpr int k_openb_tag_count = k_openb_max_gpus + 1;

/// A bit set of GPU indices on one node (bit i = GPU i).
using gpu_mask = std::uint8_t;

/// The four kinds of pod the metrics count separately (§1 table; multi = whole with n >= 2).
enum class openb_pod_kind : std::uint8_t { cpu_only = 0, sharing = 1, whole = 2, multi = 3 };

/// A pod's request (§1): milli-CPU, MiB, GPU count n, milli per GPU m and a GPU-type
/// constraint as a mask of model ids.
struct openb_pod {
  std::int64_t cpu = 0;     ///< milli-CPU
  std::int64_t mem = 0;     ///< memory in MiB
  int n = 0;                ///< GPUs (0 for CPU-only pods)
  int m = 0;                ///< milli-GPU per GPU, clamped to 0..1000
  bool typed = false;       ///< true when gpu_spec names at least one model
  std::uint64_t types = 0;  ///< mask of the node model ids that gpu_spec names

  /// The pod's kind for failure counts.
  openb_pod_kind kind() const noexcept {
    if (n == 0) return openb_pod_kind::cpu_only;
    if (m < k_openb_gpu_milli) return openb_pod_kind::sharing;
    return n == 1 ? openb_pod_kind::whole : openb_pod_kind::multi;
  }
  /// The GPU request n*m in milli-GPU.
  std::int64_t gpu_request() const noexcept { return std::int64_t{n} * m; }
  /// GpuClustering's tag: 0 = share-gpu, k = k-gpu; -1 for CPU-only pods.
  int tag() const noexcept {
    if (n == 0 || m == 0) return -1;
    return m < k_openb_gpu_milli ? 0 : std::min(n, k_openb_max_gpus);
  }
};

/// A node of the trace: allocatable milli-CPU and MiB, its GPU count and model id.
struct openb_node_spec {
  std::int64_t cpu = 0;          ///< allocatable milli-CPU
  std::int64_t mem = 0;          ///< allocatable MiB
  int gpus = 0;                  ///< 0..8 GPUs of 1000 milli each
  int model = k_openb_no_model;  ///< model id, or k_openb_no_model
};

/// One node's state. Plain value: not thread-safe to mutate concurrently.
struct openb_node {
  std::int64_t cpu_alloc = 0;     ///< allocatable milli-CPU
  std::int64_t mem_alloc = 0;     ///< allocatable MiB
  std::int64_t cpu_used = 0;      ///< milli-CPU of bound pods
  std::int64_t mem_used = 0;      ///< MiB of bound pods
  std::int32_t pods = 0;          ///< bound pods
  std::int32_t gpu_bindings = 0;  ///< (pod, GPU) pairs bound, HAMi's used slots
  std::int32_t free_total = 0;    ///< L: free milli-GPU over all GPUs
  std::uint32_t version = 0;      ///< bumped on every bind and unbind (score caches key on it)
  std::array<std::int16_t, k_openb_max_gpus> free{};    ///< f[i], 0 for absent GPUs
  std::array<std::uint16_t, k_openb_tag_count> tags{};  ///< GPU pods bound per tag
  std::int8_t gpus = 0;                                 ///< G
  std::int8_t model = k_openb_no_model;                 ///< model id or k_openb_no_model

  /// cpu_alloc - cpu_used.
  std::int64_t cpu_left() const noexcept { return cpu_alloc - cpu_used; }
  /// True when every GPU is fully free.
  bool all_free() const noexcept { return free_total == std::int32_t{gpus} * k_openb_gpu_milli; }
  /// Number of fully free GPUs.
  int full_count() const noexcept {
    int c = 0;
    for (int i = 0; i < gpus; ++i) c += free[static_cast<std::size_t>(i)] == k_openb_gpu_milli;
    return c;
  }
};

/// True when node's model satisfies pod's type constraint (§1, "GPU type matching").
inline bool openb_accessible(const openb_node& node, const openb_pod& pod) noexcept {
  if (!pod.typed) return true;
  return node.model >= 0 && ((pod.types >> node.model) & 1U) != 0;
}

/// True when n shares of m milli fit, greedily per GPU in index order (§2 rule 3).
inline bool openb_gpu_fits(const openb_node& node, int n, int m) noexcept {
  if (m <= 0) return true;
  if (n == 1 || m >= k_openb_gpu_milli) {
    // One share per GPU at most (a single share, or whole GPUs): count GPUs with f >= m.
    int fit = 0;
    for (int i = 0; i < node.gpus; ++i) fit += node.free[static_cast<std::size_t>(i)] >= m;
    return fit >= n;
  }
  int placed = 0;
  for (int i = 0; i < node.gpus && placed < n; ++i) {
    placed += node.free[static_cast<std::size_t>(i)] / m;
  }
  return placed >= n;
}

/// The feasibility filter (§2): pod count, CPU and memory, then GPU count and type.
inline bool openb_feasible(const openb_node& node, const openb_pod& pod) noexcept {
  if (node.pods + 1 > k_openb_max_pods_per_node) return false;
  if (pod.cpu + node.cpu_used > node.cpu_alloc || pod.mem + node.mem_used > node.mem_alloc) {
    return false;
  }
  if (pod.m > 0) {
    if (node.gpus <= 0 || !openb_accessible(node, pod)) return false;
    if (!openb_gpu_fits(node, pod.n, pod.m)) return false;
  }
  return true;
}

/// The n lowest-index GPUs with f >= m taken greedily in index order (whole-GPU pods of every
/// selector: with m = 1000 these are the n lowest-index fully free GPUs). 0 if they do not fit.
inline gpu_mask openb_select_lowest(const openb_node& node, const openb_pod& pod) noexcept {
  gpu_mask mask = 0;
  int placed = 0;
  for (int i = 0; i < node.gpus && placed < pod.n; ++i) {
    if (node.free[static_cast<std::size_t>(i)] >= pod.m) {
      mask = static_cast<gpu_mask>(mask | (1U << i));
      ++placed;
    }
  }
  return placed == pod.n ? mask : gpu_mask{0};
}

/// The "best" selector (§5): a sharing pod takes the smallest f >= m (lowest index on ties);
/// whole-GPU pods take the lowest-index fully free GPUs. 0 for CPU-only pods.
inline gpu_mask openb_select_best(const openb_node& node, const openb_pod& pod) noexcept {
  if (pod.n == 0 || pod.m == 0) return 0;
  if (pod.kind() != openb_pod_kind::sharing) return openb_select_lowest(node, pod);
  int best = -1;
  for (int i = 0; i < node.gpus; ++i) {
    const int f = node.free[static_cast<std::size_t>(i)];
    if (f >= pod.m && (best < 0 || f < node.free[static_cast<std::size_t>(best)])) best = i;
  }
  return best < 0 ? gpu_mask{0} : static_cast<gpu_mask>(1U << best);
}

/// The "worst" selector (§5): a sharing pod takes the largest f >= m (lowest index on ties);
/// whole-GPU pods as for best.
inline gpu_mask openb_select_worst(const openb_node& node, const openb_pod& pod) noexcept {
  if (pod.n == 0 || pod.m == 0) return 0;
  if (pod.kind() != openb_pod_kind::sharing) return openb_select_lowest(node, pod);
  int best = -1;
  for (int i = 0; i < node.gpus; ++i) {
    const int f = node.free[static_cast<std::size_t>(i)];
    if (f >= pod.m && (best < 0 || f > node.free[static_cast<std::size_t>(best)])) best = i;
  }
  return best < 0 ? gpu_mask{0} : static_cast<gpu_mask>(1U << best);
}

/// The "random" selector (§5): reservoir sampling over GPUs with f >= m, one Intn(k) draw per
/// eligible GPU; whole-GPU pods as for best. Rng needs intn(int64). Advances rng.
template <class Rng>
gpu_mask openb_select_random(const openb_node& node, const openb_pod& pod, Rng& rng) {
  if (pod.n == 0 || pod.m == 0) return 0;
  if (pod.kind() != openb_pod_kind::sharing) return openb_select_lowest(node, pod);
  int chosen = -1;
  std::int64_t k = 0;
  for (int i = 0; i < node.gpus; ++i) {
    if (node.free[static_cast<std::size_t>(i)] >= pod.m) {
      ++k;
      if (rng.intn(k) == 0) chosen = i;
    }
  }
  return chosen < 0 ? gpu_mask{0} : static_cast<gpu_mask>(1U << chosen);
}

/// The cluster: every node's state plus totals. Not thread-safe to mutate concurrently;
/// concurrent reads of an unchanging cluster are safe.
class openb_cluster {
 public:
  /// An empty cluster of the given nodes (GPU counts above 8 must be rejected by the caller).
  explicit openb_cluster(const std::vector<openb_node_spec>& specs) {
    nodes_.reserve(specs.size());
    for (const auto& s : specs) {
      openb_node n;
      n.cpu_alloc = s.cpu;
      n.mem_alloc = s.mem;
      n.gpus = static_cast<std::int8_t>(std::clamp(s.gpus, 0, k_openb_max_gpus));
      n.model = static_cast<std::int8_t>(s.model);
      for (int i = 0; i < n.gpus; ++i) n.free[static_cast<std::size_t>(i)] = k_openb_gpu_milli;
      n.free_total = n.gpus * k_openb_gpu_milli;
      total_gpus_ += n.gpus;
      whole_free_ += n.gpus;
      if (s.model >= 0 && s.model < k_openb_max_models) {
        const auto k = static_cast<std::size_t>(s.model);
        if (model_gpus_.size() <= k) {
          model_gpus_.resize(k + 1, 0);
          model_whole_free_.resize(k + 1, 0);
        }
        model_gpus_[k] += n.gpus;
        model_whole_free_[k] += n.gpus;
      }
      cpu_left_ += n.cpu_left();
      nodes_.push_back(n);
    }
  }

  /// The nodes, in the order given.
  const std::vector<openb_node>& nodes() const noexcept { return nodes_; }
  /// Node i.
  const openb_node& node(std::size_t i) const noexcept { return nodes_[i]; }
  /// Number of nodes.
  std::size_t size() const noexcept { return nodes_.size(); }
  /// Sum of G over nodes.
  std::int64_t total_gpus() const noexcept { return total_gpus_; }
  /// Sum of allocated milli-GPU (U in §8).
  std::int64_t allocated_milli() const noexcept { return allocated_; }
  /// Sum of the nodes' free milli-CPU.
  std::int64_t cpu_left() const noexcept { return cpu_left_; }
  /// GPUs with nothing allocated on them.
  std::int64_t whole_free_gpus() const noexcept { return whole_free_; }
  /// GPUs with nothing allocated on them, and all GPUs, on the nodes whose model is in the mask.
  std::pair<std::int64_t, std::int64_t> whole_free_gpus(std::uint64_t models) const noexcept {
    std::pair<std::int64_t, std::int64_t> out{0, 0};
    for (std::size_t k = 0; k < model_gpus_.size(); ++k) {
      if ((models >> k) & 1U) {
        out.first += model_whole_free_[k];
        out.second += model_gpus_[k];
      }
    }
    return out;
  }

  /// Binds pod to node i on the GPUs of mask (each loses m milli). Precondition: feasible and
  /// mask valid for the pod. Not thread-safe.
  void bind(std::size_t i, const openb_pod& pod, gpu_mask mask) noexcept {
    apply(i, pod, mask, +1);
  }
  /// Undoes bind(i, pod, mask) (a departure in replay). Not thread-safe.
  void unbind(std::size_t i, const openb_pod& pod, gpu_mask mask) noexcept {
    apply(i, pod, mask, -1);
  }

 private:
  void apply(std::size_t i, const openb_pod& pod, gpu_mask mask, int sign) noexcept {
    openb_node& n = nodes_[i];
    n.cpu_used += sign * pod.cpu;
    cpu_left_ -= sign * pod.cpu;
    n.mem_used += sign * pod.mem;
    n.pods += sign;
    for (int g = 0; g < n.gpus; ++g) {
      if ((mask >> g) & 1U) {
        const int was = n.free[static_cast<std::size_t>(g)] == k_openb_gpu_milli;
        n.free[static_cast<std::size_t>(g)] =
            static_cast<std::int16_t>(n.free[static_cast<std::size_t>(g)] - sign * pod.m);
        const int is = n.free[static_cast<std::size_t>(g)] == k_openb_gpu_milli;
        whole_free_ += is - was;
        if (n.model >= 0 && static_cast<std::size_t>(n.model) < model_whole_free_.size())
          model_whole_free_[static_cast<std::size_t>(n.model)] += is - was;
        n.free_total -= sign * pod.m;
        n.gpu_bindings += sign;
        allocated_ += sign * pod.m;
      }
    }
    const int tag = pod.tag();
    if (tag >= 0 && mask != 0) {
      n.tags[static_cast<std::size_t>(tag)] =
          static_cast<std::uint16_t>(n.tags[static_cast<std::size_t>(tag)] + sign);
    }
    ++n.version;
  }

  std::vector<openb_node> nodes_;
  std::int64_t total_gpus_ = 0;
  std::int64_t allocated_ = 0;
  std::int64_t whole_free_ = 0;
  std::int64_t cpu_left_ = 0;
  std::vector<std::int64_t> model_gpus_;        // GPUs per model id
  std::vector<std::int64_t> model_whole_free_;  // GPUs with nothing allocated, per model id
};

/// Splits a gpu_spec on '|', drops empty tokens and re-joins with '|' (§1: T kept verbatim).
inline std::string openb_normalise_spec(std::string_view spec) {
  std::string out;
  std::size_t start = 0;
  while (start <= spec.size()) {
    std::size_t bar = spec.find('|', start);
    if (bar == std::string_view::npos) bar = spec.size();
    if (bar > start) {
      if (!out.empty()) out += '|';
      out.append(spec.substr(start, bar - start));
    }
    start = bar + 1;
  }
  return out;
}

/// The mask of the model ids (index into models) that a normalised spec names.
inline std::uint64_t openb_spec_mask(std::string_view spec,
                                     const std::vector<std::string>& models) {
  std::uint64_t mask = 0;
  std::size_t start = 0;
  while (start <= spec.size()) {
    std::size_t bar = spec.find('|', start);
    if (bar == std::string_view::npos) bar = spec.size();
    const std::string_view token = spec.substr(start, bar - start);
    for (std::size_t k = 0; k < models.size() && k < static_cast<std::size_t>(k_openb_max_models);
         ++k) {
      if (!token.empty() && models[k] == token) mask |= std::uint64_t{1} << k;
    }
    start = bar + 1;
  }
  return mask;
}

}  // namespace gpuslice::fit
