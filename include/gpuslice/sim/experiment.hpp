#pragma once
/// \file
/// The two experiments: the FGD paper's fill-up (PLACEMENT-SPEC §7) and a time-driven replay
/// with departures. Each run is a pure function of (workload, options): runs on different
/// threads may share one prepared_workload.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <queue>
#include <utility>
#include <vector>

#include "gpuslice/fit/dra_sched.hpp"
#include "gpuslice/fit/frag.hpp"
#include "gpuslice/fit/openb.hpp"
#include "gpuslice/fit/openb_score.hpp"
#include "gpuslice/result.hpp"
#include "gpuslice/sim/go_rand.hpp"
#include "gpuslice/sim/metrics.hpp"
#include "gpuslice/sim/workload.hpp"

namespace gpuslice::sim {

/// The paper's tuning ratio: pods are added until requests reach 1.3 x GPU capacity.
inline constexpr double k_default_load = 1.3;

/// Options of one run.
struct run_options {
  fit::openb_policy policy = fit::openb_policy::fgd;  ///< the scorer
  std::int64_t seed = 42;                             ///< seeds every random draw
  double load = k_default_load;                       ///< fill-up target, x GPU capacity
  fit::openb_custom_scorer custom;                    ///< scorer of openb_policy::custom
  fit::sfgd_knobs knobs;                              ///< parts of sfgd in use
  /// Replay only: inter-arrival times are divided by this (durations are kept), so that a
  /// trace spread over months loads the cluster. 1 = the trace's own times.
  double compress = 1.0;
  /// fgd, sfgd, dotprod, gpuclustering and gpupacking: answer frequent pod classes from a
  /// per-class node index (identical placements; see openb_scheduler::enable_index). Off:
  /// score every node every time.
  bool node_index = true;
  /// sfgd and rsfgd: the host pressure weighs every pod class of the workload, rare ones too,
  /// instead of the typical pods only.
  bool host_all_classes = true;
  /// dra: kube-scheduler's percentageOfNodesToScore (0 = its adaptive default, 100 = all).
  int dra_nodes_pct = 0;
};

/// Every pod class (cpu, m, n, gpu_spec) of the workload with its count. Pure.
inline fit::typical_pods all_classes(const prepared_workload& w) {
  constexpr int every_class_pct = 100;
  return fit::openb_typical_pods(w.pods(), w.specs(), every_class_pct);
}

/// The fill-up submission order and node ranks (§7 steps 3-7), drawn from one Go source.
struct fillup_plan {
  std::vector<std::int32_t> order;  ///< pod indices (into the workload) in submission order
  std::vector<std::int32_t> ranks;  ///< tie-break rank of each node (smaller wins)
  std::int64_t trace_pods = 0;      ///< pods from the trace kept in order
  std::int64_t tuned_pods = 0;      ///< sampled pods appended
  std::int64_t removed_pods = 0;    ///< pods removed by tune-down
};

/// Draws the fill-up plan: Seed, one Int63, Shuffle, tune up (Intn per sample, stop at the
/// first candidate whose m would cross the target) or down (remove S[Intn(|S|)]), Perm(N).
/// rng is left where the scheduling draws of Random continue. Pure apart from rng.
inline fillup_plan plan_fillup(const prepared_workload& w, std::int64_t seed, double load,
                               go_rand& rng) {
  fillup_plan plan;
  rng.seed(seed);
  (void)rng.int63();  // the artifact evaluates rand.Int() in a debug log call
  const auto& pods = w.pods();
  const auto count = static_cast<std::int64_t>(pods.size());
  plan.order.resize(pods.size());
  std::iota(plan.order.begin(), plan.order.end(), 0);
  rng.shuffle(count, [&](std::int64_t i, std::int64_t j) {
    std::swap(plan.order[static_cast<std::size_t>(i)], plan.order[static_cast<std::size_t>(j)]);
  });
  plan.trace_pods = count;
  const double capacity = static_cast<double>(w.total_gpus()) * fit::k_openb_gpu_milli;
  const double target = load * capacity;
  std::int64_t requested = 0;
  bool any_gpu = false;
  for (const auto& p : pods) {
    requested += p.gpu_request();
    any_gpu = any_gpu || p.gpu_request() > 0;
  }
  if (static_cast<double>(requested) < target && count > 0 && any_gpu) {
    for (;;) {
      const auto idx = static_cast<std::size_t>(rng.intn(count));
      const auto& cand = pods[idx];
      if (static_cast<double>(requested + cand.m) > target) break;
      requested += cand.gpu_request();
      plan.order.push_back(static_cast<std::int32_t>(idx));
      ++plan.tuned_pods;
    }
  } else if (static_cast<double>(requested) > target) {
    while (static_cast<double>(requested) > target && !plan.order.empty()) {
      const auto k =
          static_cast<std::size_t>(rng.intn(static_cast<std::int64_t>(plan.order.size())));
      requested -= pods[static_cast<std::size_t>(plan.order[k])].gpu_request();
      plan.order.erase(plan.order.begin() + static_cast<std::ptrdiff_t>(k));
      ++plan.removed_pods;
    }
  }
  const auto perm = rng.perm(static_cast<std::int64_t>(w.nodes().size()));
  plan.ranks.assign(perm.begin(), perm.end());
  return plan;
}

namespace detail {

/// Appends event metrics after one pod's attempt.
inline void record_event(run_record& r, const fit::openb_cluster& cluster,
                         const fit::frag_tracker& frag, std::int32_t pod, std::int32_t node,
                         fit::gpu_mask gpus, std::int64_t arrived) {
  r.pod.push_back(pod);
  r.node.push_back(node);
  r.gpus.push_back(gpus);
  r.arrived.push_back(arrived);
  const std::int64_t alloc = cluster.allocated_milli();
  r.allocated.push_back(alloc);
  const double f = frag.total_milli();
  r.frag_milli.push_back(round2(f));
  const double idle = static_cast<double>(cluster.total_gpus() * fit::k_openb_gpu_milli - alloc);
  constexpr double percent = 100.0;
  r.frag_rate.push_back(idle > 0 ? round2(percent * f / idle)
                                 : std::numeric_limits<double>::quiet_NaN());
}

/// The dra policy's scheduler for a run, empty for every other policy.
inline std::optional<fit::dra_scheduler> make_dra(const prepared_workload& w,
                                                  const run_options& opt,
                                                  const std::vector<std::int32_t>& ranks,
                                                  const fit::openb_cluster& cluster) {
  if (opt.policy != fit::openb_policy::dra) return std::nullopt;
  fit::dra_options d;
  for (const auto& m : w.models()) d.card_mib.push_back(fit::dra_card_mib(m));
  d.nodes_pct = opt.dra_nodes_pct;
  return fit::dra_scheduler(ranks, std::move(d), cluster);
}

/// True when some node of the cluster passes the filter for pod (whatever a policy chose).
inline bool any_node_fits(const fit::openb_cluster& cluster, const fit::openb_pod& pod) noexcept {
  const auto& nodes = cluster.nodes();
  return std::any_of(nodes.begin(), nodes.end(),
                     [&](const fit::openb_node& n) { return fit::openb_feasible(n, pod); });
}

}  // namespace detail

/// Runs the fill-up experiment (§7, §8 per-event metrics). Pods never depart; failed pods are
/// dropped and still count in the arrived load. Thread-safe for distinct options (w is shared
/// read-only); a custom scorer runs on the calling thread.
inline run_record run_fillup(const prepared_workload& w, const run_options& opt) {
  go_rand rng;
  fillup_plan plan = plan_fillup(w, opt.seed, opt.load, rng);
  fit::openb_cluster cluster(w.nodes());
  fit::frag_model model(w.typical(), static_cast<int>(w.models().size()));
  fit::frag_tracker frag(model, cluster);
  fit::openb_scheduler<go_rand> sched(opt.policy, plan.ranks, &frag, &rng, w.class_count());
  if (opt.custom) sched.set_custom(opt.custom);
  sched.set_sfgd_knobs(opt.knobs);
  if (opt.host_all_classes) sched.set_host_classes(all_classes(w));
  if (opt.node_index) sched.enable_index();
  auto dra = detail::make_dra(w, opt, plan.ranks, cluster);
  run_record r;
  r.total_gpus = cluster.total_gpus();
  r.trace_pods = plan.trace_pods;
  r.tuned_pods = plan.tuned_pods;
  r.removed_pods = plan.removed_pods;
  r.reserve(plan.order.size());
  std::int64_t arrived = 0;
  const auto& pods = w.pods();
  const auto& classes = w.classes();
  for (const std::int32_t idx : plan.order) {
    const auto& pod = pods[static_cast<std::size_t>(idx)];
    arrived += pod.gpu_request();
    const auto kind = static_cast<std::size_t>(pod.kind());
    ++r.attempted[kind];
    const fit::openb_placement p =
        dra ? dra->schedule(cluster, pod)
            : sched.schedule(cluster, pod, classes[static_cast<std::size_t>(idx)]);
    if (p.node >= 0) {
      cluster.bind(static_cast<std::size_t>(p.node), pod, p.gpus);
      if (dra) {
        dra->bound(static_cast<std::size_t>(p.node), pod, p.gpus,
                   cluster.node(static_cast<std::size_t>(p.node)));
      }
      frag.update(cluster, static_cast<std::size_t>(p.node));
      sched.node_changed(static_cast<std::size_t>(p.node));
    } else {
      ++r.failed[kind];
      if (r.first_failed_arrived < 0) r.first_failed_arrived = arrived;
      if (r.first_failed_arrived_by_kind[kind] < 0) r.first_failed_arrived_by_kind[kind] = arrived;
      if (detail::any_node_fits(cluster, pod)) ++r.refused_fitting;
      if (sched.last_held_back()) {
        if (r.held_back++ == 0) r.first_held_back_arrived = arrived;
      }
    }
    detail::record_event(r, cluster, frag, idx, p.node, p.gpus, arrived);
  }
  return r;
}

/// Runs a time-driven replay. Pods arrive in creation_time order (name order among equals), at
/// first + (creation - first) / opt.compress, and run for their own deletion - creation. A pod
/// that fits nowhere, or that the policy holds back on arrival (rsfgd), waits; it is retried,
/// in arrival order with the other waiting pods, whenever a pod departs from a node it would
/// fit on (and is then never held back again), and gives up (fails) at the time it would have
/// finished. Departures due at or before an arrival happen first. An event is
/// recorded at every arrival, start after waiting, departure and give-up (run_record::time and
/// ::kind). Node ranks come from Seed(seed) then Perm(N). Fails when a pod has no times or
/// compress is not positive. Thread-safe as run_fillup.
inline result<run_record> run_replay(const prepared_workload& w, const run_options& opt) {
  if (!w.has_times()) {
    return make_error(errc::invalid_value,
                      "replay needs creation_time and deletion_time for every pod; this trace "
                      "has none (use the fill-up experiment)");
  }
  if (!(opt.compress > 0) || !std::isfinite(opt.compress)) {
    return make_error(errc::invalid_value, "replay: compress must be a positive factor");
  }
  go_rand rng(opt.seed);
  const auto perm = rng.perm(static_cast<std::int64_t>(w.nodes().size()));
  std::vector<std::int32_t> ranks(perm.begin(), perm.end());
  const auto& pods = w.pods();
  std::vector<std::int32_t> order(pods.size());
  std::iota(order.begin(), order.end(), 0);
  const auto& creation = w.creation();
  const auto& deletion = w.deletion();
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return creation[static_cast<std::size_t>(a)] < creation[static_cast<std::size_t>(b)];
  });
  fit::openb_cluster cluster(w.nodes());
  fit::frag_model model(w.typical(), static_cast<int>(w.models().size()));
  fit::frag_tracker frag(model, cluster);
  fit::openb_scheduler<go_rand> sched(opt.policy, ranks, &frag, &rng, w.class_count());
  if (opt.custom) sched.set_custom(opt.custom);
  sched.set_sfgd_knobs(opt.knobs);
  if (opt.host_all_classes) sched.set_host_classes(all_classes(w));
  if (opt.node_index) sched.enable_index();
  auto dra = detail::make_dra(w, opt, ranks, cluster);
  run_record r;
  r.total_gpus = cluster.total_gpus();
  r.trace_pods = static_cast<std::int64_t>(pods.size());
  r.reserve(order.size() * 2);
  const double first =
      order.empty() ? 0.0 : static_cast<double>(creation[static_cast<std::size_t>(order[0])]);
  const auto arrival = [&](std::size_t i) {
    return first + (static_cast<double>(creation[i]) - first) / opt.compress;
  };
  const auto duration = [&](std::size_t i) {
    return static_cast<double>(std::max<std::int64_t>(deletion[i] - creation[i], 0));
  };
  struct live {
    double end;
    std::int32_t pod;
    std::int32_t node;
    fit::gpu_mask gpus;
    bool operator>(const live& o) const noexcept {
      return end != o.end ? end > o.end : pod > o.pod;
    }
  };
  struct waiting {
    std::int32_t pod;
    double since;
    double give_up;
  };
  std::priority_queue<live, std::vector<live>, std::greater<>> running;
  std::vector<waiting> queue;  // in arrival order
  std::int64_t arrived = 0;
  const auto& classes = w.classes();
  const auto record = [&](std::int32_t pod, std::int32_t node, fit::gpu_mask gpus, double t,
                          replay_event kind) {
    detail::record_event(r, cluster, frag, pod, node, gpus, arrived);
    r.time.push_back(t);
    r.kind.push_back(static_cast<std::uint8_t>(kind));
  };
  const auto start = [&](std::int32_t idx, const fit::openb_placement& p, double t) {
    const auto i = static_cast<std::size_t>(idx);
    cluster.bind(static_cast<std::size_t>(p.node), pods[i], p.gpus);
    if (dra) {
      dra->bound(static_cast<std::size_t>(p.node), pods[i], p.gpus,
                 cluster.node(static_cast<std::size_t>(p.node)));
    }
    frag.update(cluster, static_cast<std::size_t>(p.node));
    sched.node_changed(static_cast<std::size_t>(p.node));
    running.push(live{t + duration(i), idx, p.node, p.gpus});
  };
  // Waiting pods whose time is up fail, in arrival order.
  const auto expire = [&](double now) {
    std::size_t kept = 0;
    for (const waiting& q : queue) {
      if (q.give_up <= now) {
        const auto& pod = pods[static_cast<std::size_t>(q.pod)];
        ++r.failed[static_cast<std::size_t>(pod.kind())];
        record(q.pod, -1, 0, q.give_up, replay_event::gave_up);
      } else {
        queue[kept++] = q;
      }
    }
    queue.resize(kept);
  };
  // Departures due at or before `until`, each followed by retries of the waiting pods that
  // would fit on the node it freed.
  const auto depart_until = [&](double until) {
    while (!running.empty() && running.top().end <= until) {
      const live d = running.top();
      running.pop();
      expire(d.end);
      cluster.unbind(static_cast<std::size_t>(d.node), pods[static_cast<std::size_t>(d.pod)],
                     d.gpus);
      if (dra) {
        dra->unbound(static_cast<std::size_t>(d.node), pods[static_cast<std::size_t>(d.pod)],
                     d.gpus, cluster.node(static_cast<std::size_t>(d.node)));
      }
      frag.update(cluster, static_cast<std::size_t>(d.node));
      sched.node_changed(static_cast<std::size_t>(d.node));
      ++r.departures;
      record(d.pod, d.node, d.gpus, d.end, replay_event::departed);
      std::size_t kept = 0;
      for (std::size_t k = 0; k < queue.size(); ++k) {
        const waiting q = queue[k];
        const auto i = static_cast<std::size_t>(q.pod);
        if (fit::openb_feasible(cluster.node(static_cast<std::size_t>(d.node)), pods[i])) {
          const fit::openb_placement p = dra ? dra->schedule(cluster, pods[i])
                                             : sched.schedule(cluster, pods[i], classes[i], false);
          if (p.node >= 0) {
            start(q.pod, p, d.end);
            ++r.waited;
            r.wait_total_s += d.end - q.since;
            record(q.pod, p.node, p.gpus, d.end, replay_event::started_after_wait);
            continue;
          }
        }
        queue[kept++] = q;
      }
      queue.resize(kept);
    }
  };
  for (const std::int32_t idx : order) {
    const auto i = static_cast<std::size_t>(idx);
    const double t = arrival(i);
    depart_until(t);
    expire(t);
    const auto& pod = pods[i];
    arrived += pod.gpu_request();
    ++r.attempted[static_cast<std::size_t>(pod.kind())];
    const fit::openb_placement p =
        dra ? dra->schedule(cluster, pod) : sched.schedule(cluster, pod, classes[i]);
    if (p.node >= 0) {
      start(idx, p, t);
      record(idx, p.node, p.gpus, t, replay_event::arrived_started);
    } else {
      r.held_back += sched.last_held_back() ? 1 : 0;
      if (detail::any_node_fits(cluster, pod)) ++r.refused_fitting;
      queue.push_back(waiting{idx, t, t + duration(i)});
      record(idx, -1, 0, t, replay_event::arrived_waiting);
    }
  }
  r.last_arrival_s = order.empty() ? 0.0 : arrival(static_cast<std::size_t>(order.back()));
  r.first_arrival_s = first;
  depart_until(std::numeric_limits<double>::infinity());
  expire(std::numeric_limits<double>::infinity());
  return r;
}

/// Measures of a replay over its load phase, first to last arrival: the GPU allocation ratio
/// and fragmentation rate averaged over time (each state weighted by how long it lasted) and
/// at their peak, and the pods that waited or failed.
struct replay_measures {
  double alloc_mean_pct = 0;      ///< time-weighted mean allocated share of GPU capacity
  double alloc_peak_pct = 0;      ///< highest allocated share
  double frag_rate_mean_pct = 0;  ///< time-weighted mean fragmentation rate (NaN states skipped)
  double frag_rate_peak_pct = 0;  ///< highest fragmentation rate
  std::int64_t waited = 0;        ///< pods that started after waiting
  double wait_mean_s = 0;         ///< their mean wait in (compressed) seconds
  std::int64_t failed = 0;        ///< pods that gave up
  double span_s = 0;              ///< first to last arrival, seconds
};

/// The measures of a replay record (see replay_measures). Pure.
inline replay_measures measure_replay(const run_record& r) {
  replay_measures m;
  m.waited = r.waited;
  m.wait_mean_s = r.waited > 0 ? r.wait_total_s / static_cast<double>(r.waited) : 0.0;
  for (auto f : r.failed) m.failed += f;
  m.span_s = r.last_arrival_s - r.first_arrival_s;
  const double capacity = static_cast<double>(r.total_gpus) * fit::k_openb_gpu_milli;
  if (capacity <= 0) return m;
  constexpr double percent = 100.0;
  double alloc_area = 0;
  double frag_area = 0;
  double frag_time = 0;
  for (std::size_t k = 0; k < r.time.size(); ++k) {
    if (r.time[k] > r.last_arrival_s) break;
    const double alloc = percent * static_cast<double>(r.allocated[k]) / capacity;
    m.alloc_peak_pct = std::max(m.alloc_peak_pct, alloc);
    if (!std::isnan(r.frag_rate[k]))
      m.frag_rate_peak_pct = std::max(m.frag_rate_peak_pct, r.frag_rate[k]);
    const double next =
        k + 1 < r.time.size() ? std::min(r.time[k + 1], r.last_arrival_s) : r.last_arrival_s;
    const double dt = std::max(0.0, next - r.time[k]);
    alloc_area += alloc * dt;
    if (!std::isnan(r.frag_rate[k])) {
      frag_area += r.frag_rate[k] * dt;
      frag_time += dt;
    }
  }
  if (m.span_s > 0) {
    m.alloc_mean_pct = alloc_area / m.span_s;
  } else if (!r.allocated.empty()) {
    m.alloc_mean_pct = m.alloc_peak_pct;
  }
  m.frag_rate_mean_pct = frag_time > 0 ? frag_area / frag_time : m.frag_rate_peak_pct;
  return m;
}

}  // namespace gpuslice::sim
