#pragma once
/// \file
/// Typical pods and GPU fragmentation of the FGD paper (PLACEMENT-SPEC §3, §4), with the
/// node-state cache that makes FGD fast.
///
/// Amounts are kept exact: with weights p_t = count_t / denom, a node's fragment times denom
/// is the integer sum over typical pods of count_t * (small_t if Q3 else L). frag_model
/// returns that integer; divide by denom() for milli-GPU. The artifact sums doubles; the exact
/// sum differs from it by rounding only.

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gpuslice/fit/openb.hpp"

namespace gpuslice::fit {

/// The artifact's podPopularityThreshold: typical pods cover 95% of the trace.
inline constexpr int k_typical_pod_threshold_pct = 95;
/// The artifact's podIncreaseStep.
inline constexpr int k_typical_pod_step = 1;

/// One typical pod (a key of §3 with its count).
struct typical_pod {
  std::int64_t cpu = 0;     ///< milli-CPU
  int m = 0;                ///< milli per GPU
  int n = 0;                ///< GPUs
  std::string spec;         ///< T, the normalised gpu_spec
  bool typed = false;       ///< T non-empty
  std::uint64_t types = 0;  ///< model ids T names
  std::int64_t count = 0;   ///< pods with this key
};

/// The target workload: the kept keys, largest count first, with weights count/denom.
struct typical_pods {
  std::vector<typical_pod> pods;  ///< kept keys in §3 order
  std::int64_t denom = 1;         ///< total (all keys kept) or cumulative count of the kept
};

/// Typical pods of a trace (§3): keys (cpu, m, n, T) counted with weight 1, sorted by count then
/// key descending, shortest prefix reaching threshold% of the total. pods[i] pairs with
/// specs[i] (normalised). Pure function, thread-safe.
inline typical_pods openb_typical_pods(const std::vector<openb_pod>& pods,
                                       const std::vector<std::string>& specs,
                                       int threshold_pct = k_typical_pod_threshold_pct,
                                       int step = k_typical_pod_step) {
  using key = std::tuple<std::int64_t, int, int, std::string>;
  std::vector<std::pair<key, std::size_t>> keyed;
  keyed.reserve(pods.size());
  for (std::size_t i = 0; i < pods.size(); ++i) {
    const auto& p = pods[i];
    keyed.emplace_back(key{p.cpu, p.m, p.n, p.n == 0 ? std::string{} : specs[i]}, i);
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<typical_pod> all;
  for (std::size_t i = 0; i < keyed.size();) {
    std::size_t j = i;
    while (j < keyed.size() && keyed[j].first == keyed[i].first) ++j;
    const auto& p = pods[keyed[i].second];
    typical_pod t;
    t.cpu = p.cpu;
    t.m = p.m;
    t.n = p.n;
    t.spec = std::get<3>(keyed[i].first);
    t.typed = p.n != 0 && p.typed;
    t.types = t.typed ? p.types : 0;
    t.count = static_cast<std::int64_t>(j - i);
    all.push_back(std::move(t));
    i = j;
  }
  // Largest count first; equal counts in descending key order (cpu, m, n, T bytewise).
  std::stable_sort(all.begin(), all.end(), [](const typical_pod& a, const typical_pod& b) {
    if (a.count != b.count) return a.count > b.count;
    return std::tie(a.cpu, a.m, a.n, a.spec) > std::tie(b.cpu, b.m, b.n, b.spec);
  });
  std::int64_t total = 0;
  for (const auto& t : all) total += t.count;
  const double target = static_cast<double>(threshold_pct) * static_cast<double>(total) / 100.0;
  std::size_t k = 0;
  std::int64_t cum = 0;
  const std::size_t stride = static_cast<std::size_t>(std::max(step, 1));
  while (static_cast<double>(cum) < target && k < all.size()) {
    for (std::size_t s = 0; s < stride && k < all.size(); ++s) cum += all[k++].count;
  }
  typical_pods out;
  if (k >= all.size()) {
    out.denom = std::max<std::int64_t>(total, 1);
  } else {
    all.resize(k);
    out.denom = std::max<std::int64_t>(cum, 1);
  }
  out.pods = std::move(all);
  return out;
}

namespace detail {
/// Bits per free-milli value in a packed node key (values 0..1000 < 2^11).
inline constexpr int k_frag_free_bits = 11;
/// Free values packed in the low word of a key.
inline constexpr int k_frag_low_values = 5;
/// Bit offset of the CPU rank in the high word.
inline constexpr int k_frag_cpu_shift = 33;
/// Bit offset of the model id in the high word.
inline constexpr int k_frag_model_shift = 49;
/// Initial slot count of the cache (a power of two).
inline constexpr std::size_t k_frag_cache_initial = 1U << 12;
/// High word of an empty slot (real keys stay below 2^57).
inline constexpr std::uint64_t k_frag_empty = ~std::uint64_t{0};
}  // namespace detail

/// Node fragmentation against a fixed set of typical pods, cached by node state. Holds a
/// cache: not thread-safe; use one per thread.
class frag_model {
 public:
  /// Prepares per-model lists of the typical GPU pods a node of that model can host.
  /// model_count = number of model ids in use (at most k_openb_max_models).
  frag_model(typical_pods typical, int model_count) : typical_(std::move(typical)) {
    for (const auto& t : typical_.pods) {
      if (t.m > 0) cpu_levels_.push_back(t.cpu);
    }
    std::sort(cpu_levels_.begin(), cpu_levels_.end());
    cpu_levels_.erase(std::unique(cpu_levels_.begin(), cpu_levels_.end()), cpu_levels_.end());
    per_model_.resize(static_cast<std::size_t>(model_count) + 1);
    for (int model = k_openb_no_model; model < model_count; ++model) {
      auto& list = per_model_[static_cast<std::size_t>(model + 1)];
      for (const auto& t : typical_.pods) {
        if (t.m <= 0 || t.n <= 0) continue;  // CPU-only typical pods count all of L
        if (t.typed && (model < 0 || ((t.types >> model) & 1U) == 0)) continue;  // NA: all of L
        const auto level = static_cast<int>(
            std::lower_bound(cpu_levels_.begin(), cpu_levels_.end(), t.cpu) - cpu_levels_.begin());
        list.push_back(entry{level, t.m, t.n, t.count});
      }
    }
    slots_.assign(detail::k_frag_cache_initial, slot{0, detail::k_frag_empty, 0});
  }

  /// The typical pods in use.
  const typical_pods& typical() const noexcept { return typical_; }
  /// Weights' common denominator: amount()/denom() is the fragment in milli-GPU.
  std::int64_t denom() const noexcept { return typical_.denom; }
  /// Cache statistics: lookups answered from the cache, and computed.
  std::uint64_t hits() const noexcept { return hits_; }
  /// Amounts computed (cache misses).
  std::uint64_t misses() const noexcept { return misses_; }

  /// denom * F(node) for a node state: cpu_left, free list of `gpus` values, model id.
  /// Not thread-safe (fills the cache).
  std::int64_t amount(std::int64_t cpu_left, const std::int16_t* free, int gpus, int model) {
    std::array<std::int16_t, k_openb_max_gpus> s{};
    for (int i = 0; i < gpus; ++i) s[static_cast<std::size_t>(i)] = free[i];
    // Sorted descending (insertion sort: at most 8 values).
    for (int i = 1; i < gpus; ++i) {
      const std::int16_t v = s[static_cast<std::size_t>(i)];
      int j = i - 1;
      while (j >= 0 && s[static_cast<std::size_t>(j)] < v) {
        s[static_cast<std::size_t>(j + 1)] = s[static_cast<std::size_t>(j)];
        --j;
      }
      s[static_cast<std::size_t>(j + 1)] = v;
    }
    const auto level = static_cast<std::uint64_t>(
        std::upper_bound(cpu_levels_.begin(), cpu_levels_.end(), cpu_left) - cpu_levels_.begin());
    std::uint64_t lo = 0;
    std::uint64_t hi = 0;
    for (int i = 0; i < detail::k_frag_low_values; ++i) {
      lo |= static_cast<std::uint64_t>(s[static_cast<std::size_t>(i)])
            << (i * detail::k_frag_free_bits);
    }
    for (int i = detail::k_frag_low_values; i < k_openb_max_gpus; ++i) {
      hi |= static_cast<std::uint64_t>(s[static_cast<std::size_t>(i)])
            << ((i - detail::k_frag_low_values) * detail::k_frag_free_bits);
    }
    hi |= level << detail::k_frag_cpu_shift;
    hi |= static_cast<std::uint64_t>(model + 1) << detail::k_frag_model_shift;
    std::size_t mask = slots_.size() - 1;
    std::size_t at = hash(lo, hi) & mask;
    while (slots_[at].hi != detail::k_frag_empty) {
      if (slots_[at].lo == lo && slots_[at].hi == hi) {
        ++hits_;
        return slots_[at].value;
      }
      at = (at + 1) & mask;
    }
    ++misses_;
    const std::int64_t value = compute(s, static_cast<int>(level), model);
    slots_[at] = slot{lo, hi, value};
    if (++used_ * 2 > slots_.size()) grow();
    return value;
  }

  /// denom * F(node) of a node's current state. Not thread-safe.
  std::int64_t amount(const openb_node& node) {
    return amount(node.cpu_left(), node.free.data(), node.gpus, node.model);
  }

 private:
  struct entry {
    int level;  ///< index of cpu_t in cpu_levels_: Q3 needs more than `level` levels <= cpu_left
    int m;
    int n;
    std::int64_t count;
  };
  struct slot {
    std::uint64_t lo;
    std::uint64_t hi;
    std::int64_t value;
  };

  static std::size_t hash(std::uint64_t lo, std::uint64_t hi) noexcept {
    constexpr std::uint64_t mul_a = 0x9E3779B97F4A7C15ULL;  // golden-ratio multiplier
    constexpr std::uint64_t mul_b = 0xC2B2AE3D27D4EB4FULL;  // xxHash prime 2
    constexpr int fold = 29;
    std::uint64_t h = lo * mul_a ^ (hi + (hi << 7)) * mul_b;
    h ^= h >> fold;
    h *= mul_a;
    h ^= h >> fold;
    return static_cast<std::size_t>(h);
  }

  // F * denom = L * denom - sum over hostable (Q3) typical pods of count_t * (L - small_t).
  std::int64_t compute(const std::array<std::int16_t, k_openb_max_gpus>& s, int level,
                       int model) const {
    std::array<std::int32_t, k_openb_max_gpus + 1> prefix{};
    for (int i = 0; i < k_openb_max_gpus; ++i) {
      prefix[static_cast<std::size_t>(i + 1)] =
          prefix[static_cast<std::size_t>(i)] + s[static_cast<std::size_t>(i)];
    }
    const std::int64_t total = prefix[k_openb_max_gpus];
    std::int64_t value = total * typical_.denom;
    for (const entry& e : per_model_[static_cast<std::size_t>(model + 1)]) {
      if (e.level >= level) continue;  // cpu_left < cpu_t
      if (e.n > k_openb_max_gpus || s[static_cast<std::size_t>(e.n - 1)] < e.m) continue;
      int big = e.n;
      while (big < k_openb_max_gpus && s[static_cast<std::size_t>(big)] >= e.m) ++big;
      value -= e.count * prefix[static_cast<std::size_t>(big)];
    }
    return value;
  }

  void grow() {
    std::vector<slot> old(slots_.size() * 2, slot{0, detail::k_frag_empty, 0});
    old.swap(slots_);
    const std::size_t mask = slots_.size() - 1;
    for (const slot& e : old) {
      if (e.hi == detail::k_frag_empty) continue;
      std::size_t at = hash(e.lo, e.hi) & mask;
      while (slots_[at].hi != detail::k_frag_empty) at = (at + 1) & mask;
      slots_[at] = e;
    }
  }

  typical_pods typical_;
  std::vector<std::int64_t> cpu_levels_;
  std::vector<std::vector<entry>> per_model_;
  std::vector<slot> slots_;
  std::size_t used_ = 0;
  std::uint64_t hits_ = 0;
  std::uint64_t misses_ = 0;
};

/// Per-node fragments of a cluster and their sum, kept current by update() after each bind or
/// unbind. Uses (and fills) a frag_model's cache: not thread-safe.
class frag_tracker {
 public:
  /// Computes every node's amount for the cluster's current state.
  frag_tracker(frag_model& model, const openb_cluster& cluster) : model_(&model) {
    amounts_.reserve(cluster.size());
    for (std::size_t i = 0; i < cluster.size(); ++i) {
      amounts_.push_back(model.amount(cluster.node(i)));
      total_ += amounts_.back();
    }
  }
  /// Recomputes node i after its state changed. Not thread-safe.
  void update(const openb_cluster& cluster, std::size_t i) {
    const std::int64_t now = model_->amount(cluster.node(i));
    total_ += now - amounts_[i];
    amounts_[i] = now;
  }
  /// denom * F of node i.
  std::int64_t node(std::size_t i) const noexcept { return amounts_[i]; }
  /// denom * cluster frag (sum over nodes).
  std::int64_t total() const noexcept { return total_; }
  /// Cluster frag in milli-GPU.
  double total_milli() const noexcept {
    return static_cast<double>(total_) / static_cast<double>(model_->denom());
  }
  /// The model (and its cache) in use.
  frag_model& model() const noexcept { return *model_; }

 private:
  frag_model* model_;
  std::vector<std::int64_t> amounts_;
  std::int64_t total_ = 0;
};

/// A node's fragment by the definition of §4, computed directly (no cache, doubles as the
/// artifact sums them): the reference for tests. Pure function, thread-safe.
inline double openb_node_frag_reference(const openb_node& node, const typical_pods& typical) {
  double frag = 0;
  const double weight_denom = static_cast<double>(typical.denom);
  const int L = node.free_total;
  for (const auto& t : typical.pods) {
    const double p = static_cast<double>(t.count) / weight_denom;
    bool q3 = false;
    int small = 0;
    if (t.m > 0 && (!t.typed || (node.model >= 0 && ((t.types >> node.model) & 1U)))) {
      int fit = 0;
      for (int i = 0; i < node.gpus; ++i) {
        const int f = node.free[static_cast<std::size_t>(i)];
        if (f >= t.m) {
          ++fit;
        } else {
          small += f;
        }
      }
      q3 = fit >= t.n && node.cpu_left() >= t.cpu;
    }
    frag += p * (q3 ? small : L);
  }
  return frag;
}

}  // namespace gpuslice::fit
