#pragma once
/// \file
/// GPU fragmentation for HAMi's request model, the target workload it is measured against, and
/// the fgd and sfgd scorers built on it (docs/placement.md, "FGD and sfgd for HAMi's request
/// model").
///
/// The measure. A GPU's free capacity is one number in milli-GPU: the mean, over memory and
/// cores, of the free fraction of the card times 1000:
///     v(g) = 1000 * ((memory_total - memory_used) / memory_total
///                    + (cores_total - cores_used) / cores_total) / 2
/// (a dimension whose total is 0 is left out; an unhealthy or cordoned GPU has none). L(N), a
/// node's free capacity, is the sum over its GPUs. The target workload is a set of request
/// classes t with probabilities p_t (they sum to 1). A node hosts t when its free CPU is at
/// least t's and at least count_t of its GPUs can take t's per-GPU share by HAMi's device rule
/// (free slot, memory, cores, exclusivity, type: filter.hpp's device_fits). The fragment is
///     F(N) = sum_t p_t * (hosts(N, t) ? sum of v(g) over GPUs g that cannot take t : L(N))
/// the expected free capacity that a request drawn from the workload could not use. A class of
/// no GPU counts all of L, as FGD's CPU-only typical pods do. With memory and cores asked in
/// proportion (memory = m/1000 of the card, cores = m milli) v(g) is FGD's free milli f and
/// F(N) is FGD's measure (frag.hpp) exactly: tests/fit/test_hami_frag.cpp checks it.
///
/// sfgd adds, as openb_score.hpp's sfgd does, the GPU that the node's free CPU cannot feed:
///     S(N) = max(0, L(N) - cpu_free / r)
/// where r is the workload's mean milli-CPU per milli-GPU (GPU classes, weighted by p_t, a
/// class's milli-GPU being the value of its share on the node's first usable card).
///
/// sfgd also adds, as openb's sfgd_knobs::host, the host pressure H(N) = -P(N) * L(N): each
/// class t that the node could host when empty (count_t GPUs that take its share on an empty
/// card, of its type; for a multi-GPU class, the node's CPU too) adds its share of the GPU
/// demand over its hosts' share of the cluster's GPUs,
///     P(N) = sum over t hosted of (p_t n_t m_t / sum_u p_u n_u m_u) * (GPUs / GPUs hosting t)
/// (m_t: the value of t's share on the cards that host it). A class every node hosts adds the
/// same to every node; one that few nodes host makes their GPUs dearer, so other pods fill them
/// last. It needs the cluster's GPUs (gpu_inventory); a scorer without one leaves H out.
///
/// The scores: sfgd's node score is the decrease of F + S + H, in milli-GPU rounded to a
/// thousandth (so that equal changes reached by different sums tie, and ties go by node name as
/// the fit engine orders them); fgd's is FGD's trunc(100 * sigmoid(decrease of F / 1000)). A
/// GPU's score is the same with only that GPU taking the share. Free capacity is summed in
/// integer units of 1e-6 milli-GPU, so equal node states give bit-equal amounts.
///
/// Units: memory in request classes is MiB (HAMi's gpumem), cores milli-GPU (HAMi's gpucores
/// percent * 10), CPU milli-CPU. Standard library (and the fit engine) only.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gpuslice/fit/filter.hpp"
#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/model.hpp"
#include "gpuslice/fit/score.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::fit {

/// One class of request of the target workload: what one GPU container of a pod asks for.
/// A plain value.
struct request_class {
  std::uint32_t gpus = 1;              ///< GPUs per container; 0 = a pod that asks for no GPU
  std::uint64_t memory_mib = 0;        ///< per-GPU memory, MiB; 0 = unset
  std::uint32_t memory_percent = 0;    ///< per-GPU memory, % of the card; 0 = unset
  std::uint32_t cores = 0;             ///< per-GPU compute, milli-GPU; 0 = unset
  std::uint64_t cpu = 0;               ///< the pod's milli-CPU (its share, for a pod of several)
  std::vector<std::string> use_types;  ///< GPU type substrings, any must match; empty = any

  /// The per-container request this class stands for (HAMi's rules then resolve it per card;
  /// no memory and no cores is the whole card).
  container_request request() const {
    container_request r;
    r.count = gpus;
    r.memory = memory_mib * k_memory_unit;
    r.memory_percent = memory_percent;
    r.cores = cores;
    r.use_types = use_types;
    r.cpu = cpu;
    return r;
  }
  friend bool operator==(const request_class& a, const request_class& b) {
    return std::tie(a.gpus, a.memory_mib, a.memory_percent, a.cores, a.cpu, a.use_types) ==
           std::tie(b.gpus, b.memory_mib, b.memory_percent, b.cores, b.cpu, b.use_types);
  }
  friend bool operator!=(const request_class& a, const request_class& b) { return !(a == b); }
  friend bool operator<(const request_class& a, const request_class& b) {
    return std::tie(a.gpus, a.memory_mib, a.memory_percent, a.cores, a.cpu, a.use_types) <
           std::tie(b.gpus, b.memory_mib, b.memory_percent, b.cores, b.cpu, b.use_types);
  }
};

/// A request class and its weight (a count of pods, decayed when learned online).
struct weighted_class {
  request_class cls;
  double weight = 0;
};

/// The class of the cold start: one whole GPU (a container asking `nvidia.com/gpu: 1` and
/// nothing else). Against it a GPU is either whole and usable or a fragment, so FGD packs
/// sharing pods onto GPUs already shared and keeps whole GPUs whole until pods are seen.
inline request_class cold_start_class() { return request_class{}; }

/// The class of one container of a pod: memory rounded up to whole MiB; an exclusive or bare
/// container, or one of all the cores and no memory amount, as the whole card (the bare class);
/// \p cpu the pod's milli-CPU share. Pure, thread-safe.
inline request_class class_of(const container_request& c, std::uint64_t cpu) {
  request_class k;
  k.gpus = c.count;
  k.cpu = cpu;
  if (c.count == 0) return k;
  const bool all_cores = c.cores >= k_milli_per_gpu && c.memory == 0 && c.memory_percent == 0;
  if (!c.exclusive && !is_bare(c) && !all_cores) {
    k.memory_mib = (c.memory + k_memory_unit - 1) / k_memory_unit;
    k.memory_percent = c.memory != 0 ? 0 : std::min(c.memory_percent, k_max_percent);
    k.cores = std::min(c.cores, k_milli_per_gpu);
  }
  k.use_types = c.use_types;
  return k;
}

/// A list of request classes in a fixed order, shared by the workloads that weigh the same
/// classes (a scorer's per-node memo depends on the classes, not on their weights). Immutable.
struct workload_classes {
  std::vector<request_class> classes;
  std::vector<container_request> requests;  ///< classes[j].request()

  /// The list of \p classes.
  static std::shared_ptr<const workload_classes> of(std::vector<request_class> classes) {
    auto set = std::make_shared<workload_classes>();
    for (const auto& c : classes) set->requests.push_back(c.request());
    set->classes = std::move(classes);
    return set;
  }
};

/// The target workload at one moment: request classes with their probabilities. Immutable
/// after construction, so scorers share it across threads.
class target_workload {
 public:
  /// The workload of \p classes: those of positive weight, equal classes merged. No class of
  /// positive weight: the cold start (one whole GPU), and is_cold_start() is true.
  explicit target_workload(std::vector<weighted_class> classes) {
    std::sort(classes.begin(), classes.end(),
              [](const weighted_class& a, const weighted_class& b) { return a.cls < b.cls; });
    std::vector<request_class> kept;
    std::vector<double> weights;
    for (auto& c : classes) {
      if (!(c.weight > 0) || !std::isfinite(c.weight)) continue;
      if (!kept.empty() && kept.back() == c.cls) {
        weights.back() += c.weight;
      } else {
        kept.push_back(std::move(c.cls));
        weights.push_back(c.weight);
      }
    }
    init(workload_classes::of(std::move(kept)), std::move(weights));
  }

  /// The workload of \p set with \p weights (one per class, in the set's order; a negative or
  /// non-finite weight counts 0). All weights 0: the cold start.
  target_workload(std::shared_ptr<const workload_classes> set, std::vector<double> weights) {
    init(std::move(set), std::move(weights));
  }

  /// The cold-start workload.
  static std::shared_ptr<const target_workload> cold_start() {
    return std::make_shared<const target_workload>(std::vector<weighted_class>{});
  }

  /// The classes of positive weight, heaviest first (equal weights in the set's order).
  const std::vector<weighted_class>& classes() const noexcept { return sorted_; }
  /// Number of classes of positive weight.
  std::size_t size() const noexcept { return sorted_.size(); }
  /// The probability of classes()[i] (weights over their sum).
  double probability(std::size_t i) const noexcept { return sorted_[i].weight / total_; }
  /// The sum of the weights.
  double total_weight() const noexcept { return total_; }
  /// True when no class was given: the cold-start prior stands in.
  bool is_cold_start() const noexcept { return cold_; }

  /// The classes in the set's order (with those of weight 0), as the measure walks them.
  const workload_classes& set() const noexcept { return *set_; }
  /// The shared class list.
  const std::shared_ptr<const workload_classes>& set_ptr() const noexcept { return set_; }
  /// The probability of set().classes[j].
  double set_probability(std::size_t j) const noexcept { return p_[j]; }

 private:
  void init(std::shared_ptr<const workload_classes> set, std::vector<double> weights) {
    weights.resize(set ? set->classes.size() : 0, 0.0);
    for (double& w : weights) {
      if (!(w > 0) || !std::isfinite(w)) w = 0;
      total_ += w;
    }
    if (!(total_ > 0)) {
      cold_ = true;
      set = workload_classes::of({cold_start_class()});
      weights.assign(1, 1.0);
      total_ = 1.0;
    }
    set_ = std::move(set);
    for (std::size_t j = 0; j < weights.size(); ++j) {
      p_.push_back(weights[j] / total_);
      if (weights[j] > 0) sorted_.push_back(weighted_class{set_->classes[j], weights[j]});
    }
    std::stable_sort(
        sorted_.begin(), sorted_.end(),
        [](const weighted_class& a, const weighted_class& b) { return a.weight > b.weight; });
  }

  std::shared_ptr<const workload_classes> set_;
  std::vector<double> p_;
  std::vector<weighted_class> sorted_;
  double total_ = 0;
  bool cold_ = false;
};

// ---- the workload file --------------------------------------------------------------------

/// The first line format_workload() writes; any line starting with '#' is a comment.
inline constexpr std::string_view k_workload_header =
    "# weight,gpus,memory,cores,cpu,types  (memory: MiB or N% per GPU, empty = the whole card; "
    "cores: % or Nm milli-GPU per GPU; cpu: milli-CPU; types: A|B)";

namespace detail {

inline std::string_view frag_trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

template <class T>
bool frag_parse_uint(std::string_view s, T& out) noexcept {
  if (s.empty()) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

/// Significant digits of a weight in the workload file.
inline constexpr int k_weight_digits = 6;

inline std::string frag_format_double(double v) {
  char buf[32];
  const auto r =
      std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::general, k_weight_digits);
  return std::string(buf, r.ptr);
}

}  // namespace detail

/// Parses a workload file's text: one class a line, `weight,gpus,memory,cores,cpu[,types]`
/// (k_workload_header), '#' comments and blank lines skipped. \p source names the file in
/// errors, which are one line: "SOURCE:LINE: what was found; expected what". Pure, thread-safe.
inline result<std::vector<weighted_class>> parse_workload(std::string_view text,
                                                          std::string_view source) {
  std::vector<weighted_class> out;
  std::size_t line_no = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    const std::string_view line = detail::frag_trim(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    if (line.empty() || line.front() == '#') continue;
    const std::string where = std::string(source) + ":" + std::to_string(line_no) + ": ";
    std::vector<std::string_view> cols;
    std::string_view rest = line;
    while (true) {
      const std::size_t comma = rest.find(',');
      cols.push_back(detail::frag_trim(rest.substr(0, comma)));
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    if (cols.size() != 5 && cols.size() != 6) {
      return make_error(errc::invalid_value,
                        where + std::to_string(cols.size()) +
                            " fields; expected weight,gpus,memory,cores,cpu[,types]");
    }
    auto bad = [&](std::string_view field, std::string_view value, std::string_view expected) {
      return make_error(errc::invalid_value, where + std::string(field) + " \"" +
                                                 std::string(value) + "\"; expected " +
                                                 std::string(expected));
    };
    weighted_class w;
    double weight = 0;
    const auto wr = std::from_chars(cols[0].data(), cols[0].data() + cols[0].size(), weight);
    if (cols[0].empty() || wr.ec != std::errc{} || wr.ptr != cols[0].data() + cols[0].size() ||
        !(weight > 0) || !std::isfinite(weight)) {
      return bad("weight", cols[0], "a positive number");
    }
    w.weight = weight;
    constexpr std::uint32_t k_max_gpus_per_container = 1024;
    if (!detail::frag_parse_uint(cols[1], w.cls.gpus) || w.cls.gpus > k_max_gpus_per_container) {
      return bad("gpus", cols[1], "a GPU count from 0 to 1024");
    }
    std::string_view mem = cols[2];
    if (!mem.empty() && mem.back() == '%') {
      mem.remove_suffix(1);
      if (!detail::frag_parse_uint(mem, w.cls.memory_percent) || w.cls.memory_percent == 0 ||
          w.cls.memory_percent > k_max_percent) {
        return bad("memory", cols[2], "MiB, or a percentage from 1% to 100%");
      }
    } else if (!mem.empty() && !detail::frag_parse_uint(mem, w.cls.memory_mib)) {
      return bad("memory", cols[2], "MiB, or a percentage from 1% to 100%");
    }
    std::string_view cores = cols[3];
    if (!cores.empty() && cores.back() == 'm') {
      cores.remove_suffix(1);
      if (!detail::frag_parse_uint(cores, w.cls.cores) || w.cls.cores > k_milli_per_gpu) {
        return bad("cores", cols[3], "a percentage from 0 to 100, or 0m to 1000m");
      }
    } else if (!cores.empty()) {
      std::uint32_t pct = 0;
      if (!detail::frag_parse_uint(cores, pct) || pct > k_max_percent) {
        return bad("cores", cols[3], "a percentage from 0 to 100, or 0m to 1000m");
      }
      w.cls.cores = cores_to_milli(pct);
    }
    if (!cols[4].empty() && !detail::frag_parse_uint(cols[4], w.cls.cpu)) {
      return bad("cpu", cols[4], "milli-CPU, a whole number");
    }
    if (w.cls.gpus == 0 && (w.cls.memory_mib != 0 || w.cls.memory_percent != 0 ||
                            w.cls.cores != 0 || (cols.size() == 6 && !cols[5].empty()))) {
      return bad("gpus", cols[1], "at least 1 where memory, cores or types are given");
    }
    if (cols.size() == 6) {
      std::string_view types = cols[5];
      while (true) {
        const std::size_t bar = types.find('|');
        const std::string_view t = detail::frag_trim(types.substr(0, bar));
        if (!t.empty()) w.cls.use_types.emplace_back(t);
        if (bar == std::string_view::npos) break;
        types.remove_prefix(bar + 1);
      }
    }
    out.push_back(std::move(w));
  }
  return out;
}

/// Reads and parses a workload file (parse_workload); an unreadable file is an error naming
/// it. Thread-safe.
inline result<std::vector<weighted_class>> read_workload(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(errc::io_error,
                      path + ": cannot open the workload file; expected a readable file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return make_error(errc::io_error, path + ": read failed");
  return parse_workload(text.str(), path);
}

/// The workload in the file format (k_workload_header first): parse_workload() reads back the
/// same classes, with weights to 6 significant digits. Pure, thread-safe.
inline std::string format_workload(const std::vector<weighted_class>& classes) {
  std::string out(k_workload_header);
  out += '\n';
  for (const auto& w : classes) {
    const request_class& c = w.cls;
    out += detail::frag_format_double(w.weight);
    out += ',' + std::to_string(c.gpus) + ',';
    if (c.memory_mib != 0) {
      out += std::to_string(c.memory_mib);
    } else if (c.memory_percent != 0) {
      out += std::to_string(c.memory_percent) + '%';
    }
    out += ',';
    if (c.cores != 0) out += std::to_string(c.cores) + 'm';
    out += ',' + std::to_string(c.cpu) + ',';
    for (std::size_t i = 0; i < c.use_types.size(); ++i) {
      if (i != 0) out += '|';
      out += c.use_types[i];
    }
    out += '\n';
  }
  return out;
}

// ---- the online histogram -----------------------------------------------------------------

/// Default most classes the histogram keeps.
inline constexpr std::size_t k_default_workload_classes = 32;
/// Default half-life of an observation's weight, in observations.
inline constexpr double k_default_workload_half_life = 2000.0;

/// How the histogram learns.
struct histogram_options {
  /// Most classes kept; a new class beyond it evicts the lightest one. At least 1.
  std::size_t max_classes = k_default_workload_classes;
  /// After this many later observations a weight counts half; 0 = no decay.
  double half_life = k_default_workload_half_life;
};

/// The target workload learned online: a decayed histogram of request classes in bounded
/// memory. Every observation (a pod) multiplies every weight by the decay (2^(-1/half_life))
/// and adds 1 to the pod's class (1/k to each of a pod's k GPU containers); a new class beyond
/// max_classes replaces the lightest. Until a pod is observed or a seed given, the snapshot is
/// the cold start (one whole GPU). All methods are thread-safe (one mutex; snapshot() shares
/// an immutable copy until the next change).
class workload_histogram {
 public:
  explicit workload_histogram(histogram_options o = {}) : opt_(o) {
    opt_.max_classes = std::max<std::size_t>(opt_.max_classes, 1);
    growth_ = opt_.half_life > 0 ? std::exp2(1.0 / opt_.half_life) : 1.0;
  }

  /// The options in use.
  const histogram_options& options() const noexcept { return opt_; }

  /// Replaces the classes with \p classes (weights as pod counts); beyond max_classes the
  /// heaviest are kept. Thread-safe.
  void seed(std::vector<weighted_class> classes) {
    const target_workload merged(std::move(classes));
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    set_.reset();
    scale_ = 1.0;
    if (!merged.is_cold_start()) {
      for (const auto& c : merged.classes()) {
        if (entries_.size() == opt_.max_classes) break;
        entries_.push_back(c);
      }
    }
    cached_.reset();
  }

  /// Observes one pod: each GPU container (init containers aside) a class of weight 1/k for k
  /// such containers, each with the pod's milli-CPU / k; a pod of no GPU is a class of 0 GPUs.
  /// One observation: the other weights decay once. Thread-safe.
  void observe(const pod_request& pod) {
    std::uint64_t cpu = 0;
    std::size_t k = 0;
    for (const auto& c : pod.containers) {
      cpu += c.cpu;
      k += (c.count > 0 && !c.init) ? 1 : 0;
    }
    std::vector<request_class> seen;
    if (k == 0) {
      request_class none;
      none.gpus = 0;
      none.cpu = cpu;
      seen.push_back(std::move(none));
    }
    for (const auto& c : pod.containers) {
      if (c.count > 0 && !c.init) seen.push_back(class_of(c, cpu / k));
    }
    std::lock_guard<std::mutex> lock(mu_);
    tick();
    for (const auto& c : seen) add(c, 1.0 / static_cast<double>(seen.size()));
  }

  /// Observes \p weight pods of class \p c (one observation). Thread-safe.
  void observe(const request_class& c, double weight = 1.0) {
    if (!(weight > 0) || !std::isfinite(weight)) return;
    std::lock_guard<std::mutex> lock(mu_);
    tick();
    add(c, weight);
  }

  /// The workload now (weights decayed to the present). Thread-safe.
  std::shared_ptr<const target_workload> snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!cached_) {
      if (!set_) {
        std::vector<request_class> list;
        for (const auto& e : entries_) list.push_back(e.cls);
        set_ = workload_classes::of(std::move(list));
      }
      std::vector<double> now;
      for (const auto& e : entries_) now.push_back(e.weight / scale_);
      cached_ = std::make_shared<const target_workload>(set_, std::move(now));
    }
    return cached_;
  }

  /// Observations so far (pods, or classes observed directly). Thread-safe.
  std::uint64_t observations() const {
    std::lock_guard<std::mutex> lock(mu_);
    return observations_;
  }
  /// Classes evicted to keep within max_classes. Thread-safe.
  std::uint64_t evictions() const {
    std::lock_guard<std::mutex> lock(mu_);
    return evictions_;
  }

 private:
  // One observation: decays every stored weight at once by growing scale_ (weights are
  // stored times scale_). Caller holds mu_.
  void tick() {
    ++observations_;
    scale_ *= growth_;
    constexpr double k_rescale_at = 1e100;
    if (scale_ > k_rescale_at) {
      for (auto& e : entries_) e.weight /= scale_;
      scale_ = 1.0;
    }
  }

  // Adds \p weight to class \p c, evicting the lightest class when full. Caller holds mu_.
  void add(const request_class& c, double weight) {
    cached_.reset();
    const double stored = weight * scale_;
    for (auto& e : entries_) {
      if (e.cls == c) {
        e.weight += stored;
        return;
      }
    }
    set_.reset();  // the class list changes
    if (entries_.size() < opt_.max_classes) {
      entries_.push_back(weighted_class{c, stored});
      return;
    }
    auto lightest = std::min_element(
        entries_.begin(), entries_.end(),
        [](const weighted_class& x, const weighted_class& y) { return x.weight < y.weight; });
    *lightest = weighted_class{c, stored};
    ++evictions_;
  }

  histogram_options opt_;
  double growth_ = 1.0;
  mutable std::mutex mu_;
  std::vector<weighted_class> entries_;                  // weight * scale_
  mutable std::shared_ptr<const workload_classes> set_;  // entries_' classes, while unchanged
  double scale_ = 1.0;
  std::uint64_t observations_ = 0;
  std::uint64_t evictions_ = 0;
  mutable std::shared_ptr<const target_workload> cached_;
};

// ---- the measure --------------------------------------------------------------------------

/// Milli-GPU in one whole GPU, the unit of the measure.
inline constexpr double k_frag_gpu_milli = 1000.0;
/// The measure's integer unit: free capacity is counted in millionths of a milli-GPU, so that
/// sums are exact and equal node states give bit-equal amounts (FGD's ties depend on it).
inline constexpr double k_frag_units_per_milli = 1e6;

namespace detail {

/// A GPU's state as the measure reads it (the fields device_fits reads, and the type).
struct frag_gpu {
  bool healthy = true;
  bool cordoned = false;
  std::uint32_t slots_used = 0, slots_total = 0;
  std::uint64_t memory_used = 0, memory_total = 0;
  std::uint32_t cores_used = 0, cores_total = 0;
  const std::string* type = nullptr;
};

inline frag_gpu frag_view(const device& d) noexcept {
  frag_gpu g;
  g.healthy = d.healthy;
  g.cordoned = d.cordoned;
  g.slots_used = d.slots_used;
  g.slots_total = d.slots_total;
  g.memory_used = d.memory_used;
  g.memory_total = d.memory_total;
  g.cores_used = d.cores_used;
  g.cores_total = d.cores_total;
  g.type = &d.type;
  return g;
}

/// v(g) of the file comment, in k_frag_units_per_milli units.
inline std::int64_t frag_free(const frag_gpu& g) noexcept {
  if (!g.healthy || g.cordoned) return 0;
  double sum = 0;
  int dims = 0;
  if (g.memory_total > 0) {
    const std::uint64_t used = std::min(g.memory_used, g.memory_total);
    sum += static_cast<double>(g.memory_total - used) / static_cast<double>(g.memory_total);
    ++dims;
  }
  if (g.cores_total > 0) {
    const std::uint32_t used = std::min(g.cores_used, g.cores_total);
    sum += static_cast<double>(g.cores_total - used) / static_cast<double>(g.cores_total);
    ++dims;
  }
  return dims == 0 ? 0 : std::llround(k_frag_units_per_milli * k_frag_gpu_milli * sum / dims);
}

/// The value in milli-GPU of share \p s on a card like \p g: the mean of its memory and cores
/// fractions of the card (each capped at the card), over the dimensions the card has.
inline double share_milli(const share& s, const frag_gpu& g) noexcept {
  double sum = 0;
  int dims = 0;
  if (g.memory_total > 0) {
    sum += static_cast<double>(std::min(s.memory, g.memory_total)) /
           static_cast<double>(g.memory_total);
    ++dims;
  }
  if (g.cores_total > 0) {
    sum +=
        static_cast<double>(std::min(s.cores, g.cores_total)) / static_cast<double>(g.cores_total);
    ++dims;
  }
  return dims == 0 ? 0.0 : k_frag_gpu_milli * sum / dims;
}

/// The value in milli-GPU of set class i's share on a card like \p g.
inline double frag_share_value(const target_workload& w, std::size_t i,
                               const frag_gpu& g) noexcept {
  return share_milli(resolve(w.set().requests[i], g.memory_total, g.cores_total), g);
}

/// F and L of GPUs \p g[0..n) with \p cpu_free milli-CPU, against \p w.
struct frag_parts {
  double frag = 0;        ///< F, units
  std::int64_t free = 0;  ///< L, units
};

inline frag_parts frag_amount(const frag_gpu* g, std::size_t n, std::uint64_t cpu_free,
                              const target_workload& w, std::int64_t* value_scratch) {
  frag_parts out;
  for (std::size_t i = 0; i < n; ++i) {
    value_scratch[i] = frag_free(g[i]);
    out.free += value_scratch[i];
  }
  double usable = 0;  // sum over hosted classes of p_t * (free capacity t can use)
  const workload_classes& set = w.set();
  for (std::size_t t = 0; t < set.requests.size(); ++t) {
    const container_request& r = set.requests[t];
    if (r.count == 0 || cpu_free < r.cpu) continue;  // a class of no GPU uses none of L
    std::uint32_t fit = 0;
    std::int64_t used = 0;
    const bool any_type = r.use_types.empty();
    for (std::size_t i = 0; i < n; ++i) {
      if (!g[i].healthy || g[i].cordoned) continue;
      const share s = resolve(r, g[i].memory_total, g[i].cores_total);
      reason why{};
      const bool type_ok = any_type || type_allowed(r, *g[i].type);
      if (device_fits(g[i], s, type_ok, true, why)) {
        ++fit;
        used += value_scratch[i];
      }
    }
    if (fit >= r.count) usable += w.set_probability(t) * static_cast<double>(used);
  }
  out.frag = static_cast<double>(out.free) - usable;
  return out;
}

/// r of the file comment for a node whose first usable card is \p card: milli-CPU per
/// milli-GPU of the workload's GPU classes; 0 when it has none.
inline double frag_cpu_per_milli(const target_workload& w, const frag_gpu& card) noexcept {
  double cpu = 0;
  double gpu = 0;
  for (std::size_t t = 0; t < w.set().requests.size(); ++t) {
    const container_request& r = w.set().requests[t];
    if (r.count == 0) continue;
    const double m = frag_share_value(w, t, card);
    if (m <= 0) continue;
    cpu += w.set_probability(t) * static_cast<double>(r.cpu);
    gpu += w.set_probability(t) * r.count * m;
  }
  return gpu > 0 ? cpu / gpu : 0.0;
}

/// Could node \p n, empty, host a pod of request \p r (the host pressure's test)? \p fitting
/// receives the GPUs that take its share on an empty card and \p value the sum of the share's
/// value on them (milli-GPU). Pure, thread-safe.
inline bool frag_hosts(const container_request& r, const node& n, std::uint32_t& fitting,
                       double& value) {
  fitting = 0;
  value = 0;
  if (r.count == 0) return false;
  for (const device& d : n.devices) {
    if (!d.healthy || d.cordoned) continue;
    frag_gpu g = frag_view(d);
    g.slots_used = 0;
    g.memory_used = 0;
    g.cores_used = 0;
    const share s = resolve(r, g.memory_total, g.cores_total);
    const bool type_ok = r.use_types.empty() || type_allowed(r, d.type);
    reason why{};
    if (!device_fits(g, s, type_ok, true, why)) continue;
    ++fitting;
    value += share_milli(s, g);
  }
  return fitting >= r.count && (r.count <= 1 || r.cpu <= n.cpu_total);
}

/// What the host pressure needs of the cluster for one class list: per class, the milli-GPU of
/// the GPUs that host it and the mean value of its share there; and all GPUs' milli-GPU.
struct host_capacity {
  std::vector<double> capacity;  ///< [t] milli-GPU of the GPUs hosting class t
  std::vector<double> milli;     ///< [t] value of t's share on them (0: no host)
  double total = 0;              ///< milli-GPU of every usable GPU
};

}  // namespace detail

/// The cluster's GPUs as sfgd's host pressure weighs them: nodes grouped by what decides which
/// request classes an empty node could host (its CPU and, per usable GPU, type and totals).
/// Immutable apart from a cache of the last class list's capacities: thread-safe to share.
class gpu_inventory {
 public:
  /// The inventory of \p nodes (their usage is ignored).
  explicit gpu_inventory(const std::vector<node>& nodes) {
    std::map<std::string, std::size_t> at;
    for (const node& n : nodes) {
      node empty;
      empty.cpu_total = n.cpu_total;
      std::string key = std::to_string(n.cpu_total);
      for (const device& d : n.devices) {
        if (!d.healthy || d.cordoned) continue;
        device e;
        e.type = d.type;
        e.slots_total = d.slots_total;
        e.memory_total = d.memory_total;
        e.cores_total = d.cores_total;
        e.mode = d.mode;
        key += '|' + d.type + ',' + d.mode + ',' + std::to_string(d.slots_total) + ',' +
               std::to_string(d.memory_total) + ',' + std::to_string(d.cores_total);
        empty.devices.push_back(std::move(e));
        gpus_ += 1;
      }
      const auto [it, fresh] = at.emplace(std::move(key), kinds_.size());
      if (fresh) kinds_.push_back({std::move(empty), 0});
      kinds_[it->second].nodes += 1;
    }
  }
  /// The shared inventory of \p nodes.
  static std::shared_ptr<const gpu_inventory> of(const std::vector<node>& nodes) {
    return std::make_shared<const gpu_inventory>(nodes);
  }

  /// Usable GPUs (healthy, not cordoned) of all nodes.
  std::uint64_t gpus() const noexcept { return gpus_; }
  /// Distinct kinds of node.
  std::size_t kinds() const noexcept { return kinds_.size(); }

  /// The capacities of \p set's classes (cached for the last set). Thread-safe.
  std::shared_ptr<const detail::host_capacity> capacity(
      const std::shared_ptr<const workload_classes>& set) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_set_ == set && cached_) return cached_;
    auto c = std::make_shared<detail::host_capacity>();
    const std::size_t k = set->requests.size();
    c->capacity.assign(k, 0.0);
    c->milli.assign(k, 0.0);
    c->total = static_cast<double>(gpus_) * k_frag_gpu_milli;
    for (std::size_t t = 0; t < k; ++t) {
      double value = 0;
      for (const kind& x : kinds_) {
        std::uint32_t fitting = 0;
        double v = 0;
        if (!detail::frag_hosts(set->requests[t], x.empty, fitting, v)) continue;
        c->capacity[t] += static_cast<double>(x.nodes) * fitting * k_frag_gpu_milli;
        value += static_cast<double>(x.nodes) * v;
      }
      if (c->capacity[t] > 0) c->milli[t] = value * k_frag_gpu_milli / c->capacity[t];
    }
    cached_set_ = set;
    cached_ = c;
    return c;
  }

  /// Per class of \p w's set, its term of P(N) for a node that hosts it: the class's share of
  /// the GPU demand over its hosts' share of the GPUs (0 for a class of no GPU or no host).
  /// Cached for the last workload, so that the scorers of one workload share it (and the
  /// per-node values computed from it). Thread-safe.
  std::shared_ptr<const std::vector<double>> coefficients(
      const std::shared_ptr<const target_workload>& w) const {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (coef_w_ == w && coef_) return coef_;
    }
    const auto cap = capacity(w->set_ptr());
    const std::size_t k = w->set().requests.size();
    double demand = 0;
    for (std::size_t t = 0; t < k; ++t) {
      demand += w->set_probability(t) * w->set().requests[t].count * cap->milli[t];
    }
    auto coef = std::make_shared<std::vector<double>>(k, 0.0);
    for (std::size_t t = 0; t < k && demand > 0; ++t) {
      if (cap->capacity[t] <= 0) continue;
      (*coef)[t] = w->set_probability(t) * w->set().requests[t].count * cap->milli[t] / demand *
                   cap->total / cap->capacity[t];
    }
    std::lock_guard<std::mutex> lock(mu_);
    coef_w_ = w;
    coef_ = coef;
    return coef;
  }

 private:
  struct kind {
    node empty;  ///< the kind's node, nothing used, usable GPUs only
    std::size_t nodes = 0;
  };
  std::vector<kind> kinds_;
  std::uint64_t gpus_ = 0;
  mutable std::mutex mu_;
  mutable std::shared_ptr<const workload_classes> cached_set_;
  mutable std::shared_ptr<const detail::host_capacity> cached_;
  mutable std::shared_ptr<const target_workload> coef_w_;
  mutable std::shared_ptr<const std::vector<double>> coef_;
};

/// A GPU's free capacity v(g) in milli-GPU (the file comment). Pure, thread-safe.
inline double gpu_free_milli(const device& d) noexcept {
  return static_cast<double>(detail::frag_free(detail::frag_view(d))) / k_frag_units_per_milli;
}

/// F(N): node \p n's fragment in milli-GPU against \p w, with \p cpu_free milli-CPU free (the
/// node's own by default). Pure, thread-safe.
inline double node_frag_milli(const node& n, const target_workload& w,
                              std::uint64_t cpu_free = std::numeric_limits<std::uint64_t>::max()) {
  if (cpu_free == std::numeric_limits<std::uint64_t>::max()) {
    cpu_free = n.cpu_total >= n.cpu_used ? n.cpu_total - n.cpu_used : 0;
  }
  std::vector<detail::frag_gpu> g;
  g.reserve(n.devices.size());
  for (const auto& d : n.devices) g.push_back(detail::frag_view(d));
  std::vector<std::int64_t> values(g.size());
  return detail::frag_amount(g.data(), g.size(), cpu_free, w, values.data()).frag /
         k_frag_units_per_milli;
}

// ---- the scorers --------------------------------------------------------------------------

/// Which fragmentation policy a hami_frag_scorer follows.
enum class frag_policy : std::uint8_t {
  /// FGD (USENIX ATC '23): trunc(100 * sigmoid(decrease of F / 1000)), as the paper scores.
  fgd,
  /// Stranding-aware FGD: the exact decrease of F + S (openb_score.hpp's sfgd).
  sfgd,
};

/// The policy's name ("fgd" or "sfgd").
inline std::string_view frag_policy_name(frag_policy p) noexcept {
  return p == frag_policy::fgd ? "fgd" : "sfgd";
}

/// Parses "fgd" or "sfgd"; false otherwise.
inline bool frag_policy_from_name(std::string_view name, frag_policy& out) noexcept {
  if (name == "fgd") {
    out = frag_policy::fgd;
    return true;
  }
  if (name == "sfgd") {
    out = frag_policy::sfgd;
    return true;
  }
  return false;
}

namespace detail {

/// One node's state against one class list, computed once and reused by every score of the
/// node in a cycle, and by later cycles while the node and the class list are unchanged (the
/// weights may change): per GPU its free value, per class its share, on which GPUs it fits,
/// how many and their free value. A score then costs O(classes x changed GPUs) instead of
/// O(classes x GPUs), and GPUs left in equal states are measured once per cycle.
struct frag_memo {
  std::shared_ptr<const workload_classes> set;  ///< held, so its address is never reused
  const node* n = nullptr;
  std::uint64_t cpu_free = 0;
  std::uint64_t cpu_total = 0;       ///< the node's (a multi-GPU class's host test reads it)
  std::vector<frag_gpu> gpus;        ///< the node's GPUs (types point into *n)
  std::vector<std::int64_t> values;  ///< v(g), units
  std::int64_t free = 0;             ///< L, units
  bool uniform = true;               ///< every GPU has the same totals and type
  std::vector<share> shares;         ///< [t] when uniform, else [t * gpus + g]
  std::vector<char> type_ok;         ///< as shares
  std::vector<char> fits;            ///< [t * gpus + g], in the node's state
  std::vector<std::uint32_t> count;  ///< [t] GPUs t fits
  std::vector<std::int64_t> usable;  ///< [t] their free value, units
  std::vector<char> hosts;           ///< [t] the node, empty, could host t (frag_hosts)

  /// Values that depend on the weights, the pod's CPU and the policy too.
  std::shared_ptr<const target_workload> w;  ///< held, as set
  double cpu_per_milli = 0;                  ///< r (0: no stranding)
  double before_fgd = 0;                     ///< F at cpu_free, units
  double before_sfgd = 0;                    ///< F + S + H at cpu_free, units
  /// The host-pressure coefficients the weight-dependent values were computed with (held, so
  /// the address is never reused), and P(N) from them (0: none).
  std::shared_ptr<const std::vector<double>> coef;
  double pressure = 0;
  /// Amounts already measured for this workload: one GPU in a given state, at a given CPU.
  struct measured {
    std::size_t position;
    frag_gpu after;
    std::uint64_t cpu_free;
    bool strand;
    double amount;
  };
  std::vector<measured> seen;
  std::size_t seen_next = 0;  ///< the ring's next slot once it is full

  std::size_t at(std::size_t t, std::size_t g) const noexcept {
    return uniform ? t : t * gpus.size() + g;
  }

  /// True when this memo is of \p nd (same object, same content) against \p s.
  bool matches(const workload_classes* s, const node& nd) const noexcept {
    if (set.get() != s || n != &nd || gpus.size() != nd.devices.size()) return false;
    if (cpu_free != (nd.cpu_total >= nd.cpu_used ? nd.cpu_total - nd.cpu_used : 0)) return false;
    if (cpu_total != nd.cpu_total) return false;
    for (std::size_t i = 0; i < gpus.size(); ++i) {
      const frag_gpu& g = gpus[i];
      const device& d = nd.devices[i];
      if (g.slots_used != d.slots_used || g.memory_used != d.memory_used ||
          g.cores_used != d.cores_used || g.slots_total != d.slots_total ||
          g.memory_total != d.memory_total || g.cores_total != d.cores_total ||
          g.healthy != d.healthy || g.cordoned != d.cordoned || g.type != &d.type ||
          *g.type != d.type) {
        return false;
      }
    }
    return true;
  }

  /// Rebuilds the memo for node \p nd against \p s.
  void build(const std::shared_ptr<const workload_classes>& s, const node& nd) {
    set = s;
    n = &nd;
    w.reset();
    seen.clear();
    seen_next = 0;
    const std::size_t G = nd.devices.size();
    const std::size_t K = s->requests.size();
    cpu_free = nd.cpu_total >= nd.cpu_used ? nd.cpu_total - nd.cpu_used : 0;
    cpu_total = nd.cpu_total;
    gpus.resize(G);
    values.resize(G);
    free = 0;
    uniform = true;
    for (std::size_t i = 0; i < G; ++i) {
      gpus[i] = frag_view(nd.devices[i]);
      values[i] = frag_free(gpus[i]);
      free += values[i];
      uniform = uniform && (i == 0 || (gpus[i].memory_total == gpus[0].memory_total &&
                                       gpus[i].cores_total == gpus[0].cores_total &&
                                       *gpus[i].type == *gpus[0].type));
    }
    const std::size_t per_class = uniform ? 1 : G;
    shares.resize(K * per_class);
    type_ok.resize(K * per_class);
    fits.resize(K * G);
    count.assign(K, 0);
    usable.assign(K, 0);
    hosts.assign(K, 0);
    for (std::size_t t = 0; t < K; ++t) {
      const container_request& r = s->requests[t];
      std::uint32_t fitting = 0;
      double value = 0;
      hosts[t] = frag_hosts(r, nd, fitting, value) ? 1 : 0;
      for (std::size_t i = 0; i < G; ++i) {
        const frag_gpu& g = gpus[i];
        if (i < per_class) {
          shares[at(t, i)] = resolve(r, g.memory_total, g.cores_total);
          type_ok[at(t, i)] = r.use_types.empty() || type_allowed(r, *g.type) ? 1 : 0;
        }
        reason why{};
        const bool ok = r.count > 0 && g.healthy && !g.cordoned &&
                        device_fits(g, shares[at(t, i)], type_ok[at(t, i)] != 0, true, why);
        fits[t * G + i] = ok ? 1 : 0;
        if (ok) {
          ++count[t];
          usable[t] += values[i];
        }
      }
    }
  }
};

/// Most nodes whose memos one thread keeps (beyond it they are all dropped and rebuilt).
inline constexpr std::size_t k_frag_memo_nodes = std::size_t{1} << 16;

}  // namespace detail

/// FGD and sfgd in the fit engine's scorer shape (score.hpp): the node whose fragment falls
/// most when the pod is placed, and on it the GPUs whose own placement makes it fall most
/// (lower index on ties). The pod's CPU is part of the measure, so use for_pod() per pod.
/// Immutable (it shares an immutable workload; each thread keeps its own memo of the last
/// node scored): thread-safe for concurrent fit() calls.
class hami_frag_scorer {
 public:
  static constexpr bool k_needs_allocation = true;
  /// sfgd's weight of S(N), as openb's sfgd_knobs::strand.
  static constexpr double k_strand = 1.0;

  /// The cold-start workload, sfgd.
  hami_frag_scorer() : hami_frag_scorer(target_workload::cold_start()) {}
  /// sfgd's weight of the host pressure H(N), as openb's sfgd_knobs::host.
  static constexpr double k_host = 1.0;

  /// A scorer against \p w (null: the cold start) for a pod of \p pod_cpu milli-CPU. sfgd
  /// weighs the host pressure of \p inventory's GPUs (null: no host pressure).
  explicit hami_frag_scorer(std::shared_ptr<const target_workload> w,
                            frag_policy p = frag_policy::sfgd, std::uint64_t pod_cpu = 0,
                            std::shared_ptr<const gpu_inventory> inventory = nullptr)
      : w_(w ? std::move(w) : target_workload::cold_start()), policy_(p), cpu_(pod_cpu) {
    if (policy_ == frag_policy::sfgd && inventory) coef_ = inventory->coefficients(w_);
  }

  /// This scorer for \p pod (its milli-CPU summed over containers, as the filter sums it).
  hami_frag_scorer for_pod(const pod_request& pod) const {
    std::uint64_t cpu = 0;
    for (const auto& c : pod.containers) cpu += c.cpu;
    hami_frag_scorer s = *this;
    s.cpu_ = cpu;
    return s;
  }

  /// True when sfgd weighs host pressure (it was given an inventory).
  bool host_pressure() const noexcept { return coef_ != nullptr; }
  /// P(N) of node \p n (0 without host pressure): H(N) = -k_host * P(N) * L(N).
  double pressure(const node& n) const {
    if (!coef_) return 0;
    double p = 0;
    for (std::size_t t = 0; t < coef_->size(); ++t) {
      std::uint32_t fitting = 0;
      double value = 0;
      if ((*coef_)[t] != 0 && detail::frag_hosts(w_->set().requests[t], n, fitting, value)) {
        p += (*coef_)[t];
      }
    }
    return p;
  }

  const target_workload& workload() const noexcept { return *w_; }
  const std::shared_ptr<const target_workload>& workload_ptr() const noexcept { return w_; }
  frag_policy policy() const noexcept { return policy_; }
  std::uint64_t pod_cpu() const noexcept { return cpu_; }

  /// The node's fragment (F, plus S for sfgd) in milli-GPU with \p cpu_free milli-CPU free,
  /// computed directly (the reference for the scores, which reuse a per-node memo).
  double amount(const node& n, std::uint64_t cpu_free) const {
    std::vector<detail::frag_gpu> g;
    for (const auto& d : n.devices) g.push_back(detail::frag_view(d));
    std::vector<std::int64_t> values(g.size());
    const detail::frag_parts p =
        detail::frag_amount(g.data(), g.size(), cpu_free, *w_, values.data());
    if (policy_ == frag_policy::fgd) return p.frag / k_frag_units_per_milli;
    double r = 0;
    for (const auto& x : g) {
      if (x.healthy && !x.cordoned) {
        r = detail::frag_cpu_per_milli(*w_, x);
        break;
      }
    }
    return (p.frag + k_strand * stranded(p.free, cpu_free, r) -
            k_host * pressure(n) * static_cast<double>(p.free)) /
           k_frag_units_per_milli;
  }

  /// The decrease of the node's fragment when the candidate's allocation is placed (fgd: its
  /// truncated sigmoid score, 0..100).
  double node_score(const candidate& c) const {
    const node& n = c.target;
    detail::frag_memo& m = memo(n);
    changes& ch = scratch();
    ch.clear();
    if (c.allocation != nullptr && c.allocation->size() == 1) {
      // One container: its GPUs, each once, one slot each (what collapse() would give).
      for (const device_grant& take : c.allocation->front().devices) {
        detail::frag_gpu g = m.gpus[take.device];
        g.slots_used += 1;
        g.memory_used += take.memory;
        g.cores_used += take.cores;
        ch.emplace_back(take.device, g);
      }
    } else if (c.allocation != nullptr) {
      for (const auto& [position, take] : cluster::collapse(*c.allocation, n.devices.size())) {
        detail::frag_gpu g = m.gpus[position];
        g.slots_used += take.slots;
        g.memory_used += take.memory;
        g.cores_used += take.cores;
        ch.emplace_back(position, g);
      }
    }
    return key(before(m), amount_with(m, cpu_after(m), ch));
  }

  /// The decrease of the node's fragment when only this GPU takes the share (fgd: its
  /// truncated sigmoid score).
  double gpu_score(const node& n, const device_state& d, const share& sh) const {
    detail::frag_memo& m = memo(n);
    detail::frag_gpu g = m.gpus[d.position];
    changes& ch = scratch();
    ch.clear();
    double was = before(m);
    if (g.slots_used != d.slots_used || g.memory_used != d.memory_used ||
        g.cores_used != d.cores_used) {
      // An earlier container of the pod took part of this GPU: measure from there.
      g.slots_used = d.slots_used;
      g.memory_used = d.memory_used;
      g.cores_used = d.cores_used;
      ch.emplace_back(d.position, g);
      was = amount_with(m, m.cpu_free, ch);
      ch.clear();
    }
    g.slots_used += 1;
    g.memory_used += sh.memory;
    g.cores_used += sh.cores;
    ch.emplace_back(d.position, g);
    return key(was, amount_with(m, cpu_after(m), ch));
  }

  bool topology() const noexcept { return false; }

 private:
  using changes = std::vector<std::pair<std::size_t, detail::frag_gpu>>;

  static changes& scratch() {
    thread_local changes c;
    return c;
  }

  /// The calling thread's memo of \p n: rebuilt when the node's state or the class list
  /// changed, its weight-dependent part when the workload changed.
  detail::frag_memo& memo(const node& n) const {
    thread_local std::unordered_map<const node*, detail::frag_memo> memos;
    thread_local detail::frag_memo* last = nullptr;  // the engine scores a node's GPUs in a row
    if (last == nullptr || last->n != &n) {
      if (memos.size() >= detail::k_frag_memo_nodes && memos.find(&n) == memos.end()) {
        memos.clear();
      }
      last = &memos[&n];  // references into an unordered_map stay valid until it is cleared
    }
    detail::frag_memo& m = *last;
    if (!m.matches(w_->set_ptr().get(), n)) m.build(w_->set_ptr(), n);
    if (m.w != w_ || m.coef != coef_) {
      m.w = w_;
      m.coef = coef_;
      m.pressure = 0;
      if (coef_) {
        for (std::size_t t = 0; t < coef_->size(); ++t) {
          if (m.hosts[t] != 0) m.pressure += (*coef_)[t];
        }
      }
      m.seen.clear();
      m.seen_next = 0;
      m.cpu_per_milli = 0;
      for (const auto& g : m.gpus) {
        if (g.healthy && !g.cordoned) {
          m.cpu_per_milli = detail::frag_cpu_per_milli(*w_, g);
          break;
        }
      }
      const changes none;
      m.before_fgd = measure(m, m.cpu_free, none, false);
      m.before_sfgd = measure(m, m.cpu_free, none, true);
    }
    return m;
  }

  double before(const detail::frag_memo& m) const noexcept {
    return policy_ == frag_policy::fgd ? m.before_fgd : m.before_sfgd;
  }

  std::uint64_t cpu_after(const detail::frag_memo& m) const noexcept {
    return m.cpu_free >= cpu_ ? m.cpu_free - cpu_ : 0;
  }

  static bool same_state(const detail::frag_gpu& a, const detail::frag_gpu& b) noexcept {
    return a.slots_used == b.slots_used && a.memory_used == b.memory_used &&
           a.cores_used == b.cores_used;
  }

  /// F (+ S for sfgd) of the memo's node with the GPUs in \p ch replaced and \p cpu_free. One
  /// changed GPU: GPUs of equal totals and type in equal states give equal amounts, so each
  /// state is measured once.
  double amount_with(detail::frag_memo& m, std::uint64_t cpu_free, const changes& ch) const {
    const bool strand = policy_ == frag_policy::sfgd;
    if (ch.size() != 1) return measure(m, cpu_free, ch, strand);
    const std::size_t p = ch[0].first;
    const detail::frag_gpu& g = ch[0].second;
    for (const auto& e : m.seen) {
      if (e.cpu_free == cpu_free && e.strand == strand && same_state(e.after, g) &&
          (e.position == p || (m.uniform && same_state(m.gpus[e.position], m.gpus[p]) &&
                               m.gpus[e.position].healthy == m.gpus[p].healthy &&
                               m.gpus[e.position].cordoned == m.gpus[p].cordoned))) {
        return e.amount;
      }
    }
    const double a = measure(m, cpu_free, ch, strand);
    // A short ring: one cycle scores at most a node's distinct GPU states, and the node score
    // then finds its GPU's; a long list would cost a full scan at every miss.
    constexpr std::size_t k_seen_max = 16;
    if (m.seen.size() < k_seen_max) {
      m.seen.push_back({p, g, cpu_free, strand, a});
    } else {
      m.seen[m.seen_next] = {p, g, cpu_free, strand, a};
    }
    m.seen_next = (m.seen_next + 1) % k_seen_max;
    return a;
  }

  static double measure(const detail::frag_memo& m, std::uint64_t cpu_free, const changes& ch,
                        bool strand) {
    const workload_classes& set = *m.set;
    const target_workload& w = *m.w;
    const std::size_t G = m.gpus.size();
    std::int64_t free = m.free;
    constexpr std::size_t k_inline = 16;
    std::int64_t inline_values[k_inline];
    std::vector<std::int64_t> heap_values;
    std::int64_t* values = inline_values;
    if (ch.size() > k_inline) {
      heap_values.resize(ch.size());
      values = heap_values.data();
    }
    for (std::size_t k = 0; k < ch.size(); ++k) {
      values[k] = detail::frag_free(ch[k].second);
      free += values[k] - m.values[ch[k].first];
    }
    double usable = 0;
    for (std::size_t t = 0; t < set.requests.size(); ++t) {
      const container_request& r = set.requests[t];
      if (r.count == 0 || cpu_free < r.cpu) continue;
      std::uint32_t count = m.count[t];
      std::int64_t used = m.usable[t];
      for (std::size_t k = 0; k < ch.size(); ++k) {
        const std::size_t i = ch[k].first;
        if (m.fits[t * G + i] != 0) {
          --count;
          used -= m.values[i];
        }
        const detail::frag_gpu& g = ch[k].second;
        reason why{};
        if (g.healthy && !g.cordoned &&
            device_fits(g, m.shares[m.at(t, i)], m.type_ok[m.at(t, i)] != 0, true, why)) {
          ++count;
          used += values[k];
        }
      }
      if (count >= r.count) usable += w.set_probability(t) * static_cast<double>(used);
    }
    const double frag = static_cast<double>(free) - usable;
    if (!strand) return frag;
    return frag + k_strand * stranded(free, cpu_free, m.cpu_per_milli) -
           k_host * m.pressure * static_cast<double>(free);
  }

  /// S(N) in units: free capacity beyond what \p cpu_free can feed at \p r milli-CPU per
  /// milli-GPU.
  static double stranded(std::int64_t free, std::uint64_t cpu_free, double r) noexcept {
    if (r <= 0) return 0;
    return std::max(0.0, static_cast<double>(free) -
                             static_cast<double>(cpu_free) / r * k_frag_units_per_milli);
  }

  double key(double was, double now) const noexcept {
    // Rounded to a thousandth of a milli-GPU: equal changes reached by different sums of
    // weighted amounts then compare equal, and ties go to the node name as the engine orders.
    constexpr double k_grain = 1e3;  // units
    const double milli = std::round((was - now) / k_grain) * k_grain / k_frag_units_per_milli;
    if (policy_ == frag_policy::sfgd) return milli;
    constexpr double k_max_score = 100.0;
    const double x = milli / k_frag_gpu_milli;
    return std::trunc(k_max_score * (1.0 / (1.0 + std::exp(-x))));
  }

  std::shared_ptr<const target_workload> w_;
  frag_policy policy_ = frag_policy::sfgd;
  std::uint64_t cpu_ = 0;
  std::shared_ptr<const std::vector<double>> coef_;  ///< host pressure per class; null = none
};

}  // namespace gpuslice::fit
