// Python bindings of include/gpuslice/sim and the FGD policies of include/gpuslice/fit:
// trace readers, a prepared workload, and one run of an experiment with the GIL released.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "gpuslice/fit/openb_score.hpp"
#include "gpuslice/sim/experiment.hpp"
#include "gpuslice/sim/trace_csv.hpp"

using namespace pybind11::literals;

namespace gpuslice::py {

namespace {

template <class T>
::pybind11::array_t<T> to_numpy(const std::vector<T>& v) {
  ::pybind11::array_t<T> a(static_cast<::pybind11::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

template <class T, class F>
::pybind11::array_t<T> column(std::size_t n, F&& f) {
  ::pybind11::array_t<T> a(static_cast<::pybind11::ssize_t>(n));
  T* out = a.mutable_data();
  for (std::size_t i = 0; i < n; ++i) out[i] = f(i);
  return a;
}

::pybind11::list strings(std::size_t n, const std::function<const std::string&(std::size_t)>& f) {
  ::pybind11::list l(n);
  for (std::size_t i = 0; i < n; ++i) l[i] = ::pybind11::str(f(i));
  return l;
}

using i64_array =
    ::pybind11::array_t<std::int64_t, ::pybind11::array::c_style | ::pybind11::array::forcecast>;

std::vector<std::int64_t> ints(const i64_array& a, std::size_t n, const char* what) {
  if (static_cast<std::size_t>(a.size()) != n) {
    throw ::pybind11::value_error(std::string(what) + ": expected " + std::to_string(n) +
                                  " values, got " + std::to_string(a.size()));
  }
  return std::vector<std::int64_t>(a.data(), a.data() + n);
}

::pybind11::dict nodes_dict(const std::vector<sim::trace_node>& v) {
  ::pybind11::dict d;
  d["sn"] = strings(v.size(), [&](std::size_t i) -> const std::string& { return v[i].name; });
  d["cpu_milli"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].cpu; });
  d["memory_mib"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].mem; });
  d["gpu"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].gpus; });
  d["model"] = strings(v.size(), [&](std::size_t i) -> const std::string& { return v[i].model; });
  return d;
}

::pybind11::dict pods_dict(const std::vector<sim::trace_pod>& v) {
  ::pybind11::dict d;
  d["name"] = strings(v.size(), [&](std::size_t i) -> const std::string& { return v[i].name; });
  d["cpu_milli"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].cpu; });
  d["memory_mib"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].mem; });
  d["num_gpu"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].num_gpu; });
  d["gpu_milli"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].gpu_milli; });
  d["gpu_spec"] =
      strings(v.size(), [&](std::size_t i) -> const std::string& { return v[i].gpu_spec; });
  d["creation_time"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].creation; });
  d["deletion_time"] = column<std::int64_t>(v.size(), [&](std::size_t i) { return v[i].deletion; });
  return d;
}

// The cluster as numpy arrays, for a Python scorer.
::pybind11::dict cluster_dict(const fit::openb_cluster& c) {
  const auto& n = c.nodes();
  ::pybind11::dict d;
  d["cpu_left"] = column<std::int64_t>(n.size(), [&](std::size_t i) { return n[i].cpu_left(); });
  d["memory_left"] =
      column<std::int64_t>(n.size(), [&](std::size_t i) { return n[i].mem_alloc - n[i].mem_used; });
  d["gpus"] = column<std::int64_t>(n.size(), [&](std::size_t i) { return n[i].gpus; });
  d["model"] = column<std::int64_t>(n.size(), [&](std::size_t i) { return n[i].model; });
  d["pods"] = column<std::int64_t>(n.size(), [&](std::size_t i) { return n[i].pods; });
  d["gpu_free_total"] =
      column<std::int64_t>(n.size(), [&](std::size_t i) { return n[i].free_total; });
  ::pybind11::array_t<std::int64_t> free({static_cast<::pybind11::ssize_t>(n.size()),
                                          static_cast<::pybind11::ssize_t>(fit::k_openb_max_gpus)});
  auto f = free.mutable_unchecked<2>();
  for (std::size_t i = 0; i < n.size(); ++i) {
    for (int g = 0; g < fit::k_openb_max_gpus; ++g) {
      f(static_cast<::pybind11::ssize_t>(i), g) =
          g < n[i].gpus ? n[i].free[static_cast<std::size_t>(g)] : -1;
    }
  }
  d["gpu_free"] = free;
  return d;
}

fit::openb_custom_scorer wrap_scorer(::pybind11::object scorer) {
  return [scorer](const fit::openb_cluster& c, const fit::openb_pod& pod,
                  const std::vector<std::uint32_t>& feasible, std::vector<std::int64_t>& out) {
    ::pybind11::gil_scoped_acquire gil;
    ::pybind11::dict p;
    p["cpu_milli"] = pod.cpu;
    p["memory_mib"] = pod.mem;
    p["num_gpu"] = pod.n;
    p["gpu_milli"] = pod.m;
    static constexpr const char* kinds[] = {"cpu", "sharing", "whole", "multi"};
    p["kind"] = kinds[static_cast<int>(pod.kind())];
    ::pybind11::array_t<std::int64_t> idx(static_cast<::pybind11::ssize_t>(feasible.size()));
    std::copy(feasible.begin(), feasible.end(), idx.mutable_data());
    ::pybind11::object r = scorer(p, cluster_dict(c), idx);
    auto scores = ::pybind11::cast<i64_array>(r);
    if (static_cast<std::size_t>(scores.size()) != feasible.size()) {
      throw ::pybind11::value_error("custom scorer: expected " + std::to_string(feasible.size()) +
                                    " scores (one per feasible node), got " +
                                    std::to_string(scores.size()));
    }
    std::copy(scores.data(), scores.data() + feasible.size(), out.begin());
  };
}

::pybind11::dict run(const std::shared_ptr<sim::prepared_workload>& w, const std::string& policy,
                     const std::string& experiment, std::int64_t seed, double load,
                     ::pybind11::object scorer, const ::pybind11::dict& knobs, double compress,
                     bool node_index) {
  sim::run_options opt;
  opt.seed = seed;
  opt.load = load;
  constexpr double max_compress = 1e9;
  if (!(compress > 0) || compress > max_compress) {
    throw ::pybind11::value_error("compress " + std::to_string(compress) +
                                  ": expected a factor in (0, 1e9]");
  }
  opt.compress = compress;
  opt.node_index = node_index;
  for (const auto& kv : knobs) {
    const auto key = ::pybind11::cast<std::string>(kv.first);
    double* weight = key == "strand"         ? &opt.knobs.strand
                     : key == "host"         ? &opt.knobs.host
                     : key == "reserve"      ? &opt.knobs.reserve
                     : key == "reserve_fill" ? &opt.knobs.reserve_fill
                     : key == "reserve_big"  ? &opt.knobs.reserve_big
                     : key == "reserve_cpu"  ? &opt.knobs.reserve_cpu
                                             : nullptr;
    if (key == "dra_nodes_pct") {
      constexpr int all_pct = 100;
      const int pct = ::pybind11::cast<int>(kv.second);
      if (pct < 0 || pct > all_pct) {
        throw ::pybind11::value_error("knob dra_nodes_pct " + std::to_string(pct) +
                                      ": expected 0 (kube-scheduler's adaptive default) to 100");
      }
      opt.dra_nodes_pct = pct;
      continue;
    }
    if (key == "host_all") {
      opt.host_all_classes = ::pybind11::cast<bool>(kv.second);
      continue;
    }
    if (weight != nullptr) {
      *weight = ::pybind11::cast<double>(kv.second);
      continue;
    }
    const bool on = ::pybind11::cast<bool>(kv.second);
    if (key == "exact") {
      opt.knobs.exact = on;
    } else if (key == "pack") {
      opt.knobs.pack = on;
    } else if (key == "cpu_fit") {
      opt.knobs.cpu_fit = on;
    } else {
      throw ::pybind11::value_error(
          "knob '" + key +
          "': expected exact, pack, cpu_fit, host_all, strand, host, reserve, "
          "reserve_fill, reserve_big, reserve_cpu or dra_nodes_pct");
    }
  }
  if (!scorer.is_none()) {
    opt.policy = fit::openb_policy::custom;
    opt.custom = wrap_scorer(scorer);
  } else if (!fit::openb_policy_from_name(policy, opt.policy)) {
    std::string names;
    for (auto n : fit::k_openb_policy_names) names += (names.empty() ? "" : ", ") + std::string(n);
    throw ::pybind11::value_error("policy '" + policy + "': expected one of " + names);
  }
  if (experiment != "fillup" && experiment != "replay") {
    throw ::pybind11::value_error("experiment '" + experiment + "': expected fillup or replay");
  }
  constexpr double max_load = 10.0;  // ten times capacity: far beyond any useful experiment
  if (!(load > 0) || load > max_load) {
    throw ::pybind11::value_error("load " + std::to_string(load) +
                                  ": expected a multiple of GPU capacity in (0, 10]");
  }
  sim::run_record rec;
  {
    // A Python scorer takes the GIL back for each call; built-in policies never touch Python.
    ::pybind11::gil_scoped_release release;
    if (experiment == "fillup") {
      rec = sim::run_fillup(*w, opt);
    } else {
      auto r = sim::run_replay(*w, opt);
      if (!r) {
        ::pybind11::gil_scoped_acquire gil;
        throw ::pybind11::value_error(r.message());
      }
      rec = std::move(r).value();
    }
  }
  const sim::milestones ms = sim::discretise(rec);
  ::pybind11::dict events;
  events["pod"] = to_numpy(rec.pod);
  events["node"] = to_numpy(rec.node);
  events["gpus"] = to_numpy(rec.gpus);
  events["arrived_milli"] = to_numpy(rec.arrived);
  events["allocated_milli"] = to_numpy(rec.allocated);
  events["frag_milli"] = to_numpy(rec.frag_milli);
  events["frag_rate_pct"] = to_numpy(rec.frag_rate);
  events["time_s"] = to_numpy(rec.time);
  events["kind"] = to_numpy(rec.kind);
  ::pybind11::dict m;
  m["present"] = column<bool>(ms.present.size(), [&](std::size_t i) { return ms.present[i]; });
  m["alloc_ratio_pct"] = to_numpy(ms.alloc_pct);
  m["frag_amount_milli"] = to_numpy(ms.frag_milli);
  m["frag_amount_pct"] = to_numpy(ms.frag_amount_pct);
  m["frag_rate_pct"] = to_numpy(ms.frag_rate_pct);
  m["unallocated_gpus"] = to_numpy(ms.unallocated_gpus);
  // Counts by pod kind under the names the Python side uses (fit::openb_pod_kind order).
  const auto by_kind = [](const std::array<std::int64_t, 4>& v) {
    ::pybind11::dict d;
    d["cpu"] = v[0];
    d["sharing"] = v[1];
    d["whole"] = v[2];
    d["multi"] = v[3];
    return d;
  };
  ::pybind11::dict failed = by_kind(rec.failed);
  ::pybind11::dict out;
  out["events"] = events;
  out["milestones"] = m;
  out["failed_pods"] = failed;
  out["total_gpus"] = rec.total_gpus;
  out["trace_pods"] = rec.trace_pods;
  out["tuned_pods"] = rec.tuned_pods;
  out["removed_pods"] = rec.removed_pods;
  out["departures"] = rec.departures;
  out["held_back"] = rec.held_back;
  out["first_held_back_arrived"] = rec.first_held_back_arrived;
  out["attempted_pods"] = by_kind(rec.attempted);
  out["refused_fitting"] = rec.refused_fitting;
  out["first_failed_arrived"] = rec.first_failed_arrived;
  out["first_failed_arrived_by_kind"] = by_kind(rec.first_failed_arrived_by_kind);
  if (experiment == "replay") {
    const sim::replay_measures rm = sim::measure_replay(rec);
    ::pybind11::dict d;
    d["alloc_mean_pct"] = rm.alloc_mean_pct;
    d["alloc_peak_pct"] = rm.alloc_peak_pct;
    d["frag_rate_mean_pct"] = rm.frag_rate_mean_pct;
    d["frag_rate_peak_pct"] = rm.frag_rate_peak_pct;
    d["waited_pods"] = rm.waited;
    d["wait_mean_s"] = rm.wait_mean_s;
    d["failed_pods"] = rm.failed;
    d["span_s"] = rm.span_s;
    d["compress"] = compress;
    out["replay"] = d;
  }
  return out;
}

}  // namespace

void bind_sim(::pybind11::module_& m) {
  m.def(
      "read_nodes_csv",
      [](const std::string& text, const std::string& file) {
        auto r = sim::parse_nodes_csv(text, file);
        if (!r) throw ::pybind11::value_error(r.message());
        return nodes_dict(*r);
      },
      "text"_a, "file"_a,
      "Parse an openb node list; columns as numpy arrays (names and models as lists).");
  m.def(
      "read_pods_csv",
      [](const std::string& text, const std::string& file) {
        auto r = sim::parse_pods_csv(text, file);
        if (!r) throw ::pybind11::value_error(r.message());
        return pods_dict(*r);
      },
      "text"_a, "file"_a,
      "Parse an openb pod list; absent times are -1. Raises ValueError naming file:line.");

  ::pybind11::class_<sim::prepared_workload, std::shared_ptr<sim::prepared_workload>>(
      m, "Workload", "A validated trace, prepared once and shared by runs (immutable).")
      .def(::pybind11::init([](const std::vector<std::string>& node_name, const i64_array& node_cpu,
                               const i64_array& node_mem, const i64_array& node_gpu,
                               const std::vector<std::string>& node_model,
                               const std::vector<std::string>& pod_name, const i64_array& pod_cpu,
                               const i64_array& pod_mem, const i64_array& pod_num_gpu,
                               const i64_array& pod_gpu_milli,
                               const std::vector<std::string>& pod_gpu_spec,
                               const i64_array& pod_creation, const i64_array& pod_deletion) {
             const std::size_t nn = node_name.size();
             const std::size_t np = pod_name.size();
             const auto ncpu = ints(node_cpu, nn, "node cpu_milli");
             const auto nmem = ints(node_mem, nn, "node memory_mib");
             const auto ngpu = ints(node_gpu, nn, "node gpu");
             const auto pcpu = ints(pod_cpu, np, "pod cpu_milli");
             const auto pmem = ints(pod_mem, np, "pod memory_mib");
             const auto pn = ints(pod_num_gpu, np, "pod num_gpu");
             const auto pm = ints(pod_gpu_milli, np, "pod gpu_milli");
             const auto pc = ints(pod_creation, np, "pod creation_time");
             const auto pd = ints(pod_deletion, np, "pod deletion_time");
             if (node_model.size() != nn || pod_gpu_spec.size() != np) {
               throw ::pybind11::value_error(
                   "node model and pod gpu_spec: one value per row expected");
             }
             std::vector<sim::trace_node> nodes(nn);
             for (std::size_t i = 0; i < nn; ++i) {
               if (ngpu[i] < 0 || ngpu[i] > fit::k_openb_max_gpus) {
                 throw ::pybind11::value_error("node " + node_name[i] + ": gpu=" +
                                               std::to_string(ngpu[i]) + ": expected 0..8");
               }
               nodes[i] = sim::trace_node{node_name[i], ncpu[i], nmem[i], static_cast<int>(ngpu[i]),
                                          node_model[i]};
             }
             std::vector<sim::trace_pod> pods(np);
             constexpr std::int64_t max_milli = 1 << 30;
             for (std::size_t i = 0; i < np; ++i) {
               if (pm[i] < 0 || pm[i] > max_milli) {
                 throw ::pybind11::value_error("pod " + pod_name[i] + ": gpu_milli=" +
                                               std::to_string(pm[i]) + ": expected 0..2^30");
               }
               if (pn[i] < 0 || pn[i] > fit::k_openb_max_gpus) {
                 throw ::pybind11::value_error("pod " + pod_name[i] + ": num_gpu=" +
                                               std::to_string(pn[i]) + ": expected 0..8");
               }
               pods[i] = sim::trace_pod{pod_name[i],
                                        pcpu[i],
                                        pmem[i],
                                        static_cast<int>(pn[i]),
                                        static_cast<int>(pm[i]),
                                        pod_gpu_spec[i],
                                        pc[i],
                                        pd[i]};
             }
             auto w = sim::prepared_workload::make(std::move(nodes), std::move(pods));
             if (!w) throw ::pybind11::value_error(w.message());
             return std::make_shared<sim::prepared_workload>(std::move(w).value());
           }),
           "node_name"_a, "node_cpu"_a, "node_mem"_a, "node_gpu"_a, "node_model"_a, "pod_name"_a,
           "pod_cpu"_a, "pod_mem"_a, "pod_num_gpu"_a, "pod_gpu_milli"_a, "pod_gpu_spec"_a,
           "pod_creation"_a, "pod_deletion"_a)
      .def_property_readonly("total_gpus", &sim::prepared_workload::total_gpus,
                             "GPUs in the cluster.")
      .def_property_readonly(
          "node_count", [](const sim::prepared_workload& w) { return w.nodes().size(); },
          "Nodes in the cluster.")
      .def_property_readonly(
          "pod_count", [](const sim::prepared_workload& w) { return w.pods().size(); },
          "Pods in the trace.")
      .def_property_readonly("has_times", &sim::prepared_workload::has_times,
                             "True when every pod has creation and deletion times.")
      .def_property_readonly("models", &sim::prepared_workload::models, "GPU model names by id.")
      .def_property_readonly(
          "typical_pod_count",
          [](const sim::prepared_workload& w) { return w.typical().pods.size(); },
          "Typical pods the fragmentation measure uses (PLACEMENT-SPEC §3).");

  m.def(
      "run_experiment", &run, "workload"_a, "policy"_a, "experiment"_a = "fillup", "seed"_a = 42,
      "load"_a = sim::k_default_load, "scorer"_a = ::pybind11::none(),
      "knobs"_a = ::pybind11::dict(), "compress"_a = 1.0, "node_index"_a = true,
      "Run one experiment; knobs switch parts of sfgd and rsfgd (exact, pack, cpu_fit, host_all: "
      "bool; "
      "strand, host, reserve, reserve_fill, reserve_big, reserve_cpu: numbers); compress divides a "
      "replay's inter-arrival times; node_index=False scores every "
      "node in every decision (fgd, sfgd, dotprod, gpuclustering, gpupacking: same "
      "placements); the GIL is released for the "
      "built-in policies. scorer(pod, cluster, "
      "feasible) -> one integer score per feasible node replaces the policy.");
  m.def(
      "fillup_plan",
      [](const std::shared_ptr<sim::prepared_workload>& w, std::int64_t seed, double load) {
        sim::go_rand rng;
        const sim::fillup_plan plan = sim::plan_fillup(*w, seed, load, rng);
        ::pybind11::dict d;
        d["order"] = to_numpy(plan.order);
        d["ranks"] = to_numpy(plan.ranks);
        d["trace_pods"] = plan.trace_pods;
        d["tuned_pods"] = plan.tuned_pods;
        d["removed_pods"] = plan.removed_pods;
        d["pod_names"] = w->pod_names();
        d["node_names"] = w->node_names();
        return d;
      },
      "workload"_a, "seed"_a = 42, "load"_a = sim::k_default_load,
      "The fill-up submission order (indices into the name-sorted pods) and the node ranks "
      "(nodes sorted by name) that a seed draws, as Go's math/rand draws them.");
  m.attr("policy_names") = ::pybind11::cast(
      std::vector<std::string>(fit::k_openb_policy_names.begin(), fit::k_openb_policy_names.end()));
}

}  // namespace gpuslice::py
