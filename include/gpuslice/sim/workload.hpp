#pragma once
/// \file
/// A trace (nodes and pods of the openb format) validated and prepared once for many runs:
/// nodes and pods sorted by name, GPU models interned, type constraints as masks, pod classes
/// for score caches and the typical pods (PLACEMENT-SPEC §1, §3, §7 steps 1-2).
/// A prepared_workload is immutable: concurrent runs may share it.

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gpuslice/fit/frag.hpp"
#include "gpuslice/fit/openb.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::sim {

/// A node row: sn, cpu_milli, memory_mib, gpu, model.
struct trace_node {
  std::string name;      ///< sn
  std::int64_t cpu = 0;  ///< cpu_milli
  std::int64_t mem = 0;  ///< memory_mib
  int gpus = 0;          ///< gpu
  std::string model;     ///< model, empty for CPU-only nodes
};

/// A pod row: name, cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec and, when the trace
/// has them, creation_time and deletion_time (-1 = absent).
struct trace_pod {
  std::string name;            ///< name
  std::int64_t cpu = 0;        ///< cpu_milli
  std::int64_t mem = 0;        ///< memory_mib
  int num_gpu = 0;             ///< num_gpu
  int gpu_milli = 0;           ///< gpu_milli (per GPU)
  std::string gpu_spec;        ///< allowed models separated by '|', empty = any
  std::int64_t creation = -1;  ///< creation_time in seconds, -1 = absent
  std::int64_t deletion = -1;  ///< deletion_time in seconds, -1 = absent
};

/// The validated, name-sorted trace. Immutable after make(): thread-safe to share.
class prepared_workload {
 public:
  /// Validates and prepares a trace; an error names the row and the expectation.
  static result<prepared_workload> make(std::vector<trace_node> nodes,
                                        std::vector<trace_pod> pods) {
    prepared_workload w;
    std::sort(nodes.begin(), nodes.end(),
              [](const trace_node& a, const trace_node& b) { return a.name < b.name; });
    std::sort(pods.begin(), pods.end(),
              [](const trace_pod& a, const trace_pod& b) { return a.name < b.name; });
    for (const auto& n : nodes) {
      if (n.gpus < 0 || n.gpus > fit::k_openb_max_gpus) {
        return make_error(errc::out_of_range, "node " + n.name + ": gpu=" + std::to_string(n.gpus) +
                                                  ": expected 0.." +
                                                  std::to_string(fit::k_openb_max_gpus));
      }
      if (n.cpu < 0 || n.mem < 0) {
        return make_error(errc::out_of_range,
                          "node " + n.name + ": cpu_milli and memory_mib must be non-negative");
      }
      fit::openb_node_spec spec{n.cpu, n.mem, n.gpus, fit::k_openb_no_model};
      if (!n.model.empty()) {
        auto it = std::find(w.models_.begin(), w.models_.end(), n.model);
        if (it == w.models_.end()) {
          if (w.models_.size() >= static_cast<std::size_t>(fit::k_openb_max_models)) {
            return make_error(errc::capacity, "node " + n.name + ": model " + n.model +
                                                  ": more than 64 distinct GPU models");
          }
          w.models_.push_back(n.model);
          it = w.models_.end() - 1;
        }
        spec.model = static_cast<int>(it - w.models_.begin());
      }
      w.node_names_.push_back(n.name);
      w.nodes_.push_back(spec);
    }
    std::map<std::tuple<std::int64_t, int, int>, std::int32_t> classes;
    for (const auto& p : pods) {
      if (p.cpu < 0 || p.mem < 0 || p.num_gpu < 0) {
        return make_error(errc::out_of_range, "pod " + p.name +
                                                  ": cpu_milli, memory_mib and num_gpu must be "
                                                  "non-negative");
      }
      if (p.num_gpu > fit::k_openb_max_gpus) {
        return make_error(errc::out_of_range, "pod " + p.name + ": num_gpu=" +
                                                  std::to_string(p.num_gpu) + ": expected 0..8");
      }
      fit::openb_pod q;
      q.cpu = p.cpu;
      q.mem = p.mem;
      if (p.num_gpu > 0) {
        q.n = p.num_gpu;
        q.m = std::clamp(p.gpu_milli, 0, fit::k_openb_gpu_milli);
        if (q.n >= 2 && q.m < fit::k_openb_gpu_milli) {
          return make_error(errc::unsupported,
                            "pod " + p.name + ": num_gpu=" + std::to_string(p.num_gpu) +
                                " with gpu_milli=" + std::to_string(p.gpu_milli) +
                                ": a multi-GPU pod must request whole GPUs (gpu_milli >= 1000)");
        }
      }
      std::string spec = fit::openb_normalise_spec(p.gpu_spec);
      q.typed = q.n > 0 && !spec.empty();
      q.types = q.typed ? fit::openb_spec_mask(spec, w.models_) : 0;
      const auto key = std::make_tuple(q.cpu, q.m, q.n);
      auto it = classes.find(key);
      if (it == classes.end())
        it = classes.emplace(key, static_cast<std::int32_t>(classes.size())).first;
      w.classes_.push_back(it->second);
      w.pods_.push_back(q);
      w.specs_.push_back(std::move(spec));
      w.pod_names_.push_back(p.name);
      w.creation_.push_back(p.creation);
      w.deletion_.push_back(p.deletion);
      w.has_times_ = w.has_times_ && p.creation >= 0 && p.deletion >= 0;
    }
    w.class_count_ = classes.size();
    w.typical_ = fit::openb_typical_pods(w.pods_, w.specs_);
    return w;
  }

  /// Node specs sorted by name.
  const std::vector<fit::openb_node_spec>& nodes() const noexcept { return nodes_; }
  /// Node names, sorted.
  const std::vector<std::string>& node_names() const noexcept { return node_names_; }
  /// GPU model names; a model id indexes this list.
  const std::vector<std::string>& models() const noexcept { return models_; }
  /// Pods sorted by name (W of §7).
  const std::vector<fit::openb_pod>& pods() const noexcept { return pods_; }
  /// Pod names, sorted.
  const std::vector<std::string>& pod_names() const noexcept { return pod_names_; }
  /// Normalised gpu_spec per pod.
  const std::vector<std::string>& specs() const noexcept { return specs_; }
  /// Pod class (cpu, m, n) ids per pod, 0..class_count()-1.
  const std::vector<std::int32_t>& classes() const noexcept { return classes_; }
  /// Number of distinct pod classes.
  std::size_t class_count() const noexcept { return class_count_; }
  /// creation_time per pod (-1 = absent).
  const std::vector<std::int64_t>& creation() const noexcept { return creation_; }
  /// deletion_time per pod (-1 = absent).
  const std::vector<std::int64_t>& deletion() const noexcept { return deletion_; }
  /// True when every pod has creation and deletion times (replay possible).
  bool has_times() const noexcept { return has_times_; }
  /// The typical pods of the trace (§3).
  const fit::typical_pods& typical() const noexcept { return typical_; }
  /// Sum of G over nodes.
  std::int64_t total_gpus() const noexcept {
    std::int64_t g = 0;
    for (const auto& n : nodes_) g += n.gpus;
    return g;
  }

 private:
  prepared_workload() = default;

  std::vector<fit::openb_node_spec> nodes_;
  std::vector<std::string> node_names_;
  std::vector<std::string> models_;
  std::vector<fit::openb_pod> pods_;
  std::vector<std::string> pod_names_;
  std::vector<std::string> specs_;
  std::vector<std::int32_t> classes_;
  std::vector<std::int64_t> creation_;
  std::vector<std::int64_t> deletion_;
  std::size_t class_count_ = 0;
  bool has_times_ = true;
  fit::typical_pods typical_;
};

}  // namespace gpuslice::sim
