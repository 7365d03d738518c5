#pragma once
/// \file
/// The scheduling cycle over a cluster, in the Kubernetes scheduling framework's shape:
///   PreFilter  validate the pod, sum its CPU and memory, resolve type rules per distinct type;
///   Filter     per node: CPU and memory, then every device in HAMi's order, with a reason for
///              each rejection; a node is feasible when every container gets its GPUs;
///   Score      the scorer's node score (request included), for every feasible node;
///   Normalize  scores mapped to 0..100 over the feasible nodes (in the per-node report);
///   Reserve    the GPUs of the chosen node, by the scorer's GPU order or link search;
///              cluster::reserve applies a decision to the cluster's state.
/// Per-cycle state (the `cycle` struct below) is explicit and lives on the caller's stack.
///
/// Multi-GPU and multi-container pods: every chosen GPU holds the per-GPU memory and cores; a
/// container never gets the same GPU twice, but two containers may share one; containers are
/// placed in order, each seeing the previous ones' reservations. With numa_bind all of a
/// container's GPUs come from one NUMA node, and the best group is chosen. When the greedy
/// order fails, fit_options::backtrack searches all assignments (bounded by backtrack_limit).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gpuslice/fit/filter.hpp"
#include "gpuslice/fit/hami_score.hpp"
#include "gpuslice/fit/model.hpp"
#include "gpuslice/fit/score.hpp"
#include "gpuslice/fit/topology.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::fit {

/// Options of one scheduling cycle.
struct fit_options {
  bool backtrack = false;  ///< search all assignments when the greedy order fails
  /// Most search steps per node when backtracking (a step places one container's GPUs).
  std::uint64_t backtrack_limit = 100000;
  bool report_nodes = false;  ///< fill decision::nodes with one report per node
};

/// One node's outcome in a cycle (decision::nodes).
struct node_report {
  std::size_t node = 0;  ///< position in the cluster
  bool feasible = false;
  double score = 0;       ///< the scorer's node score (feasible nodes)
  int normalized = 0;     ///< 0..100 over the feasible nodes
  reason_counts reasons;  ///< devices per device reason, 1 per node-level reason
};

/// The outcome of a cycle: where the pod goes, or why it goes nowhere.
struct decision {
  bool placed = false;
  std::size_t node = 0;                          ///< position of the chosen node (when placed)
  double score = 0;                              ///< its node score
  std::vector<container_allocation> containers;  ///< one per container of the pod
  std::uint64_t cpu = 0;                         ///< the pod's node CPU, milli (for reserve)
  std::uint64_t host_memory = 0;                 ///< the pod's node memory, bytes (for reserve)
  std::size_t total_nodes = 0;
  std::size_t feasible_nodes = 0;
  reason_counts reasons;           ///< rejected nodes per reason (a node counts once per reason)
  std::vector<node_report> nodes;  ///< with fit_options::report_nodes

  /// kube-scheduler's style: "0/5 nodes are available: 3 nodes: insufficient GPU memory; ...".
  std::string message() const {
    std::string out =
        std::to_string(feasible_nodes) + "/" + std::to_string(total_nodes) + " nodes are available";
    const std::string why = format_reasons(reasons);
    if (!why.empty()) out += ": " + why;
    return out;
  }
};

namespace detail {

/// Per-node state kept compact (and sums kept current) so the filter and node scores touch
/// little memory: the hot loop never reads node or device structs.
struct node_hot {
  std::uint64_t cpu_free = 0, memory_free = 0;
  std::size_t first = 0, count = 0;  ///< the node's devices in cluster::hot_
  std::size_t rank = 0;              ///< position in (name, position) order
  double slots_used = 0, slots_total = 0;
  double cores_used = 0, cores_total = 0;
  double memory_used = 0, memory_total = 0;
  bool uniform = true;  ///< every device has the same memory and cores totals
};

/// Per-container state of one cycle.
struct container_cycle {
  const container_request* req = nullptr;
  std::vector<char> type_ok;    ///< by interned type id
  bool uuid_rules = false;      ///< include/exclude uuid lists present
  bool mode_rules = false;      ///< a vgpu-mode list present
  bool percent_memory = false;  ///< share depends on the device's totals
};

/// Per-cycle state (PreFilter's output).
struct cycle {
  std::vector<container_cycle> gpu;    ///< containers that ask for GPUs, in order
  std::vector<std::size_t> gpu_index;  ///< their positions in pod.containers
  std::size_t containers = 0;
  std::uint64_t cpu = 0, host_memory = 0;
  bool simple = false;  ///< one GPU container, no numa_bind: feasibility is a device count
};

}  // namespace detail

/// A set of nodes and their usage: the state the scheduling cycle reads and reserve() writes.
/// fit() is const and may run concurrently with other fit() calls; reserve()/release() must not
/// run concurrently with anything else on the same cluster.
class cluster {
 public:
  /// Checks every node (see validate(node)) and builds the cluster.
  static result<cluster> make(std::vector<node> nodes) {
    for (const auto& n : nodes) {
      if (auto e = validate(n)) return std::move(*e);
    }
    return cluster(std::move(nodes));
  }

  /// The nodes in their current state.
  const std::vector<node>& nodes() const noexcept { return nodes_; }
  std::size_t size() const noexcept { return nodes_.size(); }

  /// Runs one scheduling cycle for \p pod with \p scorer. An invalid pod is an error; a pod that
  /// fits nowhere is a decision with placed == false and the reasons. Thread-safe (const).
  template <class Scorer>
  result<decision> fit(const pod_request& pod, const Scorer& scorer,
                       const fit_options& opt = {}) const;

  /// HAMi's default policies (node binpack, GPU spread).
  result<decision> fit(const pod_request& pod, const fit_options& opt = {}) const {
    return fit(pod, hami_scorer{}, opt);
  }

  /// Applies a placed decision to the node's usage. Returns an error, changing nothing, when the
  /// decision does not fit the current state (e.g. it was made against an older state).
  /// Not thread-safe.
  result<bool> reserve(const decision& d) { return apply(d, true); }
  /// Undoes reserve() of the same decision. Not thread-safe.
  result<bool> release(const decision& d) { return apply(d, false); }

  // ---- incremental changes (a live scheduler follows its cluster node by node) ---------------
  // Each costs what the node costs (plus one pass over the nodes' ranks when the set of names
  // changes), never a rebuild; decisions stay as a rebuild from the same nodes would make them,
  // since ties are broken by name, not by position.

  /// Appends \p n (checked as make does) at position size(). Not thread-safe.
  result<std::size_t> add_node(node n) {
    if (auto e = validate(n)) return std::move(*e);
    std::size_t rank = 0;  // (name, position) order: the new node is last among equal names
    for (const auto& other : nodes_) rank += other.name <= n.name ? 1 : 0;
    for (auto& t : node_hot_) t.rank += t.rank >= rank ? 1 : 0;
    nodes_.push_back(std::move(n));
    node_hot_.emplace_back();
    node_hot_.back().rank = rank;
    lay_out(nodes_.size() - 1);
    return nodes_.size() - 1;
  }

  /// Replaces the node at position \p i (capacity, devices and usage) with \p n, checked as
  /// make does; its position and rank stay (the name is expected to stay too). A refused node
  /// changes nothing. Not thread-safe.
  result<bool> replace_node(std::size_t i, node n) {
    if (i >= nodes_.size()) return make_error(errc::out_of_range, "no node at that position");
    if (auto e = validate(n)) return std::move(*e);
    const bool same_layout = n.devices.size() == node_hot_[i].count;
    nodes_[i] = std::move(n);
    if (same_layout) {
      write_devices(i);
    } else {
      garbage_ += node_hot_[i].count;
      lay_out(i);
    }
    return true;
  }

  /// Removes the node at position \p i; the last node moves to position i (callers that map
  /// names to positions update the moved one). Not thread-safe.
  void remove_node(std::size_t i) {
    if (i >= nodes_.size()) return;
    const std::size_t rank = node_hot_[i].rank;
    garbage_ += node_hot_[i].count;
    const std::size_t last = nodes_.size() - 1;
    if (i != last) {
      nodes_[i] = std::move(nodes_[last]);
      node_hot_[i] = node_hot_[last];
    }
    nodes_.pop_back();
    node_hot_.pop_back();
    for (auto& t : node_hot_) t.rank -= t.rank > rank ? 1 : 0;
    if (garbage_ > hot_.size() / 2) compact();
  }

 private:
  explicit cluster(std::vector<node> nodes) : nodes_(std::move(nodes)) {
    std::map<std::string, std::uint32_t> ids;
    node_hot_.resize(nodes_.size());
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      node_hot_[i].first = hot_.size();
      node_hot_[i].count = nodes_[i].devices.size();
      for (std::size_t p = 0; p < nodes_[i].devices.size(); ++p) {
        const auto& d = nodes_[i].devices[p];
        auto [it, added] = ids.emplace(d.type, static_cast<std::uint32_t>(types_.size()));
        if (added) types_.push_back(d.type);
        device_state h;
        h.position = p;
        h.index = d.index;
        h.numa = d.numa;
        h.type = it->second;
        h.healthy = d.healthy;
        h.cordoned = d.cordoned;
        h.slots_total = d.slots_total;
        h.memory_total = d.memory_total;
        h.cores_total = d.cores_total;
        hot_.push_back(h);
      }
      recompute(i);
    }
    std::vector<std::size_t> order(nodes_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return nodes_[a].name != nodes_[b].name ? nodes_[a].name < nodes_[b].name : a < b;
    });
    for (std::size_t r = 0; r < order.size(); ++r) node_hot_[order[r]].rank = r;
  }

  /// Interned id of device type \p type (types are few; a new one is appended).
  std::uint32_t intern(const std::string& type) {
    for (std::size_t t = 0; t < types_.size(); ++t) {
      if (types_[t] == type) return static_cast<std::uint32_t>(t);
    }
    types_.push_back(type);
    return static_cast<std::uint32_t>(types_.size() - 1);
  }

  /// Gives node \p i a fresh range at the end of hot_ and fills it.
  void lay_out(std::size_t i) {
    node_hot_[i].first = hot_.size();
    node_hot_[i].count = nodes_[i].devices.size();
    hot_.resize(hot_.size() + nodes_[i].devices.size());
    write_devices(i);
    if (garbage_ > hot_.size() / 2) compact();
  }

  /// Copies node \p i's devices (capacity and usage) into its range of hot_.
  void write_devices(std::size_t i) {
    const node& n = nodes_[i];
    for (std::size_t p = 0; p < n.devices.size(); ++p) {
      const auto& d = n.devices[p];
      device_state& h = hot_[node_hot_[i].first + p];
      h = device_state{};
      h.position = p;
      h.index = d.index;
      h.numa = d.numa;
      h.type = intern(d.type);
      h.healthy = d.healthy;
      h.cordoned = d.cordoned;
      h.slots_total = d.slots_total;
      h.memory_total = d.memory_total;
      h.cores_total = d.cores_total;
    }
    recompute(i);
  }

  /// Drops the ranges of removed or relaid nodes from hot_, keeping node order.
  void compact() {
    std::vector<device_state> packed;
    packed.reserve(hot_.size() - garbage_);
    for (auto& t : node_hot_) {
      const auto first = hot_.begin() + static_cast<std::ptrdiff_t>(t.first);
      t.first = packed.size();
      packed.insert(packed.end(), first, first + static_cast<std::ptrdiff_t>(t.count));
    }
    hot_ = std::move(packed);
    garbage_ = 0;
  }

  /// Copies node \p i's usage into the compact state and recomputes its sums.
  void recompute(std::size_t i) {
    const node& n = nodes_[i];
    detail::node_hot& t = node_hot_[i];
    t.cpu_free = n.cpu_total - n.cpu_used;
    t.memory_free = n.memory_total - n.memory_used;
    t.slots_used = t.slots_total = t.cores_used = t.cores_total = 0;
    t.memory_used = t.memory_total = 0;
    t.uniform = true;
    for (std::size_t p = 0; p < n.devices.size(); ++p) {
      const auto& d = n.devices[p];
      device_state& h = hot_[t.first + p];
      h.slots_used = d.slots_used;
      h.memory_used = d.memory_used;
      h.cores_used = d.cores_used;
      t.slots_used += d.slots_used;
      t.slots_total += d.slots_total;
      t.cores_used += d.cores_used;
      t.cores_total += d.cores_total;
      t.memory_used += static_cast<double>(d.memory_used);
      t.memory_total += static_cast<double>(d.memory_total);
      if (d.memory_total != n.devices.front().memory_total ||
          d.cores_total != n.devices.front().cores_total) {
        t.uniform = false;
      }
    }
  }

  /// What a pod's containers take from each device they use: app containers add up; init
  /// containers run one at a time before them, so per device the larger of the init peak and
  /// the app sum (HAMi's CollapseInitContainerUsage). Device positions ascending.
 public:
  struct device_take {
    std::uint32_t slots = 0;
    std::uint64_t memory = 0;
    std::uint32_t cores = 0;
  };
  static std::vector<std::pair<std::size_t, device_take>> collapse(
      const std::vector<container_allocation>& containers, std::size_t devices) {
    std::vector<device_take> peak(devices), sum(devices);
    std::vector<char> used(devices, 0);
    for (const auto& c : containers) {
      for (const auto& g : c.devices) {
        if (g.device >= devices) continue;
        used[g.device] = 1;
        if (c.init) {
          device_take& p = peak[g.device];
          p.slots = 1;
          p.memory = std::max(p.memory, g.memory);
          p.cores = std::max(p.cores, g.cores);
        } else {
          device_take& a = sum[g.device];
          a.slots += 1;
          a.memory += g.memory;
          a.cores += g.cores;
        }
      }
    }
    std::vector<std::pair<std::size_t, device_take>> out;
    for (std::size_t p = 0; p < devices; ++p) {
      if (used[p] == 0) continue;
      out.push_back({p, device_take{std::max(peak[p].slots, sum[p].slots),
                                    std::max(peak[p].memory, sum[p].memory),
                                    std::max(peak[p].cores, sum[p].cores)}});
    }
    return out;
  }

 private:
  result<bool> apply(const decision& d, bool add) {
    if (!d.placed || d.node >= nodes_.size()) {
      return make_error(errc::invalid_value, "decision is not a placement on this cluster");
    }
    node& n = nodes_[d.node];
    // Check the whole decision on a copy so a refused one changes nothing.
    node trial = n;
    auto fail = [&](const std::string& what) {
      return make_error(errc::out_of_range, "decision does not fit node \"" + n.name +
                                                "\" in its current state: " + what);
    };
    if (add) {
      if (trial.cpu_total - trial.cpu_used < d.cpu) return fail("CPU");
      if (trial.memory_total - trial.memory_used < d.host_memory) return fail("host memory");
      trial.cpu_used += d.cpu;
      trial.memory_used += d.host_memory;
    } else {
      if (trial.cpu_used < d.cpu || trial.memory_used < d.host_memory) return fail("CPU/memory");
      trial.cpu_used -= d.cpu;
      trial.memory_used -= d.host_memory;
    }
    for (const auto& c : d.containers) {
      for (const auto& g : c.devices) {
        if (g.device >= trial.devices.size()) return fail("no such device");
      }
    }
    for (const auto& [position, g] : collapse(d.containers, trial.devices.size())) {
      device& dv = trial.devices[position];
      if (add) {
        if (dv.slots_used > dv.slots_total || dv.slots_total - dv.slots_used < g.slots ||
            dv.memory_used > dv.memory_total || dv.memory_total - dv.memory_used < g.memory ||
            dv.cores_used > dv.cores_total || dv.cores_total - dv.cores_used < g.cores) {
          return fail("device \"" + dv.uuid + "\"");
        }
        dv.slots_used += g.slots;
        dv.memory_used += g.memory;
        dv.cores_used += g.cores;
      } else {
        if (dv.slots_used < g.slots || dv.memory_used < g.memory || dv.cores_used < g.cores) {
          return fail("device \"" + dv.uuid + "\" was not reserved");
        }
        dv.slots_used -= g.slots;
        dv.memory_used -= g.memory;
        dv.cores_used -= g.cores;
      }
    }
    n = std::move(trial);
    recompute(d.node);
    return true;
  }

  // ---- the cycle ----------------------------------------------------------------------------

  detail::cycle prefilter(const pod_request& pod) const {
    detail::cycle cy;
    cy.containers = pod.containers.size();
    bool numa = false;
    for (std::size_t i = 0; i < pod.containers.size(); ++i) {
      const auto& c = pod.containers[i];
      cy.cpu += c.cpu;
      cy.host_memory += c.host_memory;
      if (c.count == 0) continue;
      detail::container_cycle cc;
      cc.req = &c;
      cc.type_ok.resize(types_.size());
      for (std::size_t t = 0; t < types_.size(); ++t) cc.type_ok[t] = type_allowed(c, types_[t]);
      cc.uuid_rules = !c.use_uuids.empty() || !c.nouse_uuids.empty();
      cc.mode_rules = !c.modes.empty();
      cc.percent_memory = c.memory == 0 || c.exclusive;
      numa = numa || c.numa_bind;
      cy.gpu.push_back(std::move(cc));
      cy.gpu_index.push_back(i);
    }
    cy.simple = cy.gpu.size() == 1 && !numa;
    return cy;
  }

  /// The type (and vgpu-mode) rule of container \p cc for device \p position of node \p ni.
  bool type_ok(std::size_t ni, std::size_t position, std::uint32_t type,
               const detail::container_cycle& cc) const {
    return cc.type_ok[type] != 0 &&
           (!cc.mode_rules || mode_allowed(*cc.req, nodes_[ni].devices[position].mode));
  }
  /// The uuid rule of container \p cc for device \p position of node \p ni.
  bool uuid_ok(std::size_t ni, std::size_t position, const detail::container_cycle& cc) const {
    return !cc.uuid_rules || uuid_allowed(*cc.req, nodes_[ni].devices[position].uuid);
  }

  /// Whether device state \p d of node \p ni can take container \p cc; sets its share.
  bool check(std::size_t ni, const device_state& d, const detail::container_cycle& cc, share& s,
             reason& why) const {
    const share sh = resolve(*cc.req, d.memory_total, d.cores_total);
    const bool ok =
        device_fits(d, sh, type_ok(ni, d.position, d.type, cc), uuid_ok(ni, d.position, cc), why);
    s = sh;
    return ok;
  }

  struct ranked {
    std::size_t device;
    double score;
    share s;
  };

  /// Buffers reused across the nodes of one cycle, so a warm cycle allocates little per node.
  struct scratch {
    std::vector<device_state> use;
    std::vector<ranked> cand, chosen, pick, group;
    std::vector<std::size_t> ids, idle;
    std::vector<std::int32_t> numas;
    linked_subset best;
    detail::subset_workspace links;
  };

  /// Best first: larger score, then lower driver index, then lower position.
  static void sort_ranked(const std::vector<device_state>& use, std::vector<ranked>& r) {
    std::sort(r.begin(), r.end(), [&](const ranked& a, const ranked& b) {
      if (a.score != b.score) return a.score > b.score;
      if (use[a.device].index != use[b.device].index) {
        return use[a.device].index < use[b.device].index;
      }
      return a.device < b.device;
    });
  }

  /// Devices of node \p ni that can take container \p cc on usage \p use, best first.
  template <class Scorer>
  void candidates(std::size_t ni, const detail::container_cycle& cc,
                  const std::vector<device_state>& use, const Scorer& scorer,
                  std::vector<ranked>& cand, reason_counts* why) const {
    cand.clear();
    for (const auto& d : use) {
      share s;
      reason r{};
      if (check(ni, d, cc, s, r)) {
        cand.push_back({d.position, scorer.gpu_score(nodes_[ni], d, s), s});
      } else if (why != nullptr) {
        why->add(r);
      }
    }
    sort_ranked(use, cand);
  }

  /// Chooses \p count devices among ranked candidates (best first) of one group, and the value
  /// of the choice (larger is better).
  template <class Scorer>
  bool choose_in_group(const node& n, const std::vector<ranked>& group, std::size_t count,
                       const std::vector<device_state>& use, const Scorer& scorer,
                       std::vector<ranked>& out, double& value, scratch& ws) const {
    out.clear();
    if (group.size() < count) return false;
    const bool links = scorer.topology() && !n.links.empty();
    if (links && count >= 2) {
      std::vector<std::size_t>& cand = ws.ids;
      cand.clear();
      for (const auto& g : group) cand.push_back(g.device);
      std::sort(cand.begin(), cand.end());
      linked_subset& best = ws.best;
      best_linked_subset(n.links, cand, count, best, ws.links);
      double tie = 0;
      for (std::size_t dvi : best.devices) {
        for (const auto& g : group) {
          if (g.device == dvi) {
            out.push_back(g);
            tie += g.score;
          }
        }
      }
      // The link sum dominates; the GPU scores only separate equal link sums.
      value = static_cast<double>(best.score) * topology_scorer::k_link_weight + tie;
      return true;
    }
    if (links && count == 1) {
      std::vector<std::size_t>& idle = ws.idle;
      idle.clear();
      for (const auto& d : use) {
        if (d.slots_used == 0 && d.healthy) idle.push_back(d.position);
      }
      // First what the idle set loses (a shared card loses it nothing); then, as HAMi's
      // computeWorstSingleCard, the card least linked to the other candidates, so a node whose
      // cards are all shared still keeps its best-linked cards together.
      std::vector<std::size_t>& others = ws.ids;
      others.clear();
      for (const auto& g : group) others.push_back(g.device);
      const ranked* best = nullptr;
      std::int64_t best_lost = 0, best_linked = 0;
      for (const auto& g : group) {  // already best first, so ties keep the better score
        const std::int64_t lost =
            use[g.device].slots_used == 0 ? links_lost(n.links, g.device, idle) : 0;
        const std::int64_t linked = links_lost(n.links, g.device, others);
        if (best == nullptr || lost < best_lost || (lost == best_lost && linked < best_linked)) {
          best = &g;
          best_lost = lost;
          best_linked = linked;
        }
      }
      out.push_back(*best);
      value = -static_cast<double>(best_lost) * topology_scorer::k_link_weight + best->score;
      return true;
    }
    value = 0;
    for (std::size_t i = 0; i < count; ++i) {
      out.push_back(group[i]);
      value += group[i].score;
    }
    return true;
  }

  static void take(std::vector<device_state>& use, const device_grant& g, bool add) {
    auto& d = use[g.device];
    if (add) {
      d.slots_used += 1;
      d.memory_used += g.memory;
      d.cores_used += g.cores;
    } else {
      d.slots_used -= 1;
      d.memory_used -= g.memory;
      d.cores_used -= g.cores;
    }
  }

  /// Greedy choice for one container on usage \p use; records reasons when it fails.
  template <class Scorer>
  bool place_container(std::size_t ni, const detail::container_cycle& cc,
                       std::vector<device_state>& use, const Scorer& scorer,
                       container_allocation& out, reason_counts& why, scratch& ws) const {
    const node& n = nodes_[ni];
    std::vector<ranked>& cand = ws.cand;
    candidates(ni, cc, use, scorer, cand, &why);
    const std::size_t count = cc.req->count;
    if (cand.size() < count) {
      why.add(reason::insufficient_devices);
      return false;
    }
    std::vector<ranked>& chosen = ws.chosen;
    if (!cc.req->numa_bind) {
      double value = 0;
      choose_in_group(n, cand, count, use, scorer, chosen, value, ws);
    } else {
      // One group per NUMA node, in ascending NUMA order (ties keep the lower one); each
      // group keeps the candidates' best-first order.
      ws.numas.clear();
      for (const auto& c : cand) ws.numas.push_back(use[c.device].numa);
      std::sort(ws.numas.begin(), ws.numas.end());
      ws.numas.erase(std::unique(ws.numas.begin(), ws.numas.end()), ws.numas.end());
      bool found = false;
      double best_value = 0;
      for (const std::int32_t numa : ws.numas) {
        ws.group.clear();
        for (const auto& c : cand) {
          if (use[c.device].numa == numa) ws.group.push_back(c);
        }
        double value = 0;
        if (!choose_in_group(n, ws.group, count, use, scorer, ws.pick, value, ws)) continue;
        if (!found || value > best_value) {
          found = true;
          best_value = value;
          chosen = ws.pick;
        }
      }
      if (!found) {
        why.add(reason::numa_mismatch);
        return false;
      }
    }
    out.devices.clear();
    out.init = cc.req->init;
    for (const auto& c : chosen) {
      out.devices.push_back({c.device, c.s.memory, c.s.cores});
      // An init container has finished before the next container starts: the others never
      // see its share (apply() charges the larger of init peak and app sum per device).
      if (!out.init) take(use, out.devices.back(), true);
    }
    std::sort(out.devices.begin(), out.devices.end(),
              [](const device_grant& a, const device_grant& b) { return a.device < b.device; });
    return true;
  }

  /// Exhaustive search over every container's device sets (in score order), bounded by
  /// \p limit steps.
  template <class Scorer>
  bool search(std::size_t ni, const detail::cycle& cy, std::size_t k,
              std::vector<device_state>& use, const Scorer& scorer,
              std::vector<container_allocation>& out, std::uint64_t& steps,
              std::uint64_t limit) const {
    if (k == cy.gpu.size()) return true;
    const auto& cc = cy.gpu[k];
    std::vector<ranked> cand;
    candidates(ni, cc, use, scorer, cand, nullptr);
    const std::size_t count = cc.req->count;
    if (cand.size() < count) return false;
    std::vector<std::size_t> pick(count);
    for (std::size_t i = 0; i < count; ++i) pick[i] = i;
    auto& alloc = out[cy.gpu_index[k]];
    alloc.init = cc.req->init;
    while (true) {
      if (++steps > limit) return false;
      bool same_numa = true;
      for (std::size_t i = 1; cc.req->numa_bind && i < count; ++i) {
        same_numa = same_numa && use[cand[pick[i]].device].numa == use[cand[pick[0]].device].numa;
      }
      if (same_numa) {
        alloc.devices.clear();
        for (std::size_t i : pick) {
          alloc.devices.push_back({cand[i].device, cand[i].s.memory, cand[i].s.cores});
          take(use, alloc.devices.back(), true);
        }
        if (alloc.init) {
          for (const auto& g : alloc.devices) take(use, g, false);
        }
        if (search(ni, cy, k + 1, use, scorer, out, steps, limit)) {
          std::sort(
              alloc.devices.begin(), alloc.devices.end(),
              [](const device_grant& a, const device_grant& b) { return a.device < b.device; });
          return true;
        }
        if (!alloc.init) {
          for (const auto& g : alloc.devices) take(use, g, false);
        }
        alloc.devices.clear();
      }
      // Next combination of `count` out of cand.size(), in lexicographic order.
      std::size_t i = count;
      while (i > 0 && pick[i - 1] == cand.size() - count + (i - 1)) --i;
      if (i == 0) return false;
      ++pick[i - 1];
      for (std::size_t j = i; j < count; ++j) pick[j] = pick[j - 1] + 1;
    }
  }

  /// Places every GPU container of the pod on node \p ni (greedy, then search if allowed).
  template <class Scorer>
  bool allocate(std::size_t ni, const detail::cycle& cy, const Scorer& scorer,
                const fit_options& opt, std::vector<container_allocation>& out, reason_counts& why,
                scratch& ws) const {
    const auto& t = node_hot_[ni];
    const auto first = hot_.begin() + static_cast<std::ptrdiff_t>(t.first);
    const auto last = first + static_cast<std::ptrdiff_t>(t.count);
    std::vector<device_state>& use = ws.use;
    use.assign(first, last);
    out.resize(cy.containers);
    for (auto& c : out) c.devices.clear();
    for (std::size_t k = 0; k < cy.gpu.size(); ++k) {
      reason_counts local;
      if (place_container(ni, cy.gpu[k], use, scorer, out[cy.gpu_index[k]], local, ws)) continue;
      if (opt.backtrack && k > 0) {
        use.assign(first, last);
        for (auto& c : out) c.devices.clear();
        std::uint64_t steps = 0;
        if (search(ni, cy, 0, use, scorer, out, steps, opt.backtrack_limit)) return true;
      }
      why = local;
      if (k > 0) why.add(reason::no_assignment);
      return false;
    }
    return true;
  }

  /// The node's usage after \p alloc (or after count x share when alloc is null).
  usage after(std::size_t ni, const detail::cycle& cy,
              const std::vector<container_allocation>* alloc) const {
    const auto& t = node_hot_[ni];
    usage u{t.slots_used,  t.slots_total, t.cores_used,
            t.cores_total, t.memory_used, t.memory_total};
    if (alloc != nullptr) {
      for (const auto& [position, g] : collapse(*alloc, t.count)) {
        (void)position;
        u.slots_used += g.slots;
        u.cores_used += g.cores;
        u.memory_used += static_cast<double>(g.memory);
      }
      return u;
    }
    for (const auto& cc : cy.gpu) {
      const auto& front = hot_[t.first];
      const share s = resolve(*cc.req, front.memory_total, front.cores_total);
      u.slots_used += cc.req->count;
      u.cores_used += static_cast<double>(cc.req->count) * s.cores;
      u.memory_used += static_cast<double>(cc.req->count) * static_cast<double>(s.memory);
    }
    return u;
  }

  std::vector<node> nodes_;
  std::vector<detail::node_hot> node_hot_;
  std::vector<device_state> hot_;   ///< every device's state, node after node
  std::vector<std::string> types_;  ///< interned device types
  std::size_t garbage_ = 0;         ///< entries of hot_ no node uses (until compact())
};

template <class Scorer>
result<decision> cluster::fit(const pod_request& pod, const Scorer& scorer,
                              const fit_options& opt) const {
  if (auto e = validate(pod)) return std::move(*e);
  const detail::cycle cy = prefilter(pod);
  decision out;
  out.cpu = cy.cpu;
  out.host_memory = cy.host_memory;
  out.total_nodes = nodes_.size();
  bool have = false;
  std::size_t best_rank = 0;
  std::vector<container_allocation> alloc, best_alloc;
  scratch ws;
  for (std::size_t ni = 0; ni < nodes_.size(); ++ni) {
    const auto& t = node_hot_[ni];
    reason_counts why;
    bool feasible = true;
    if (t.cpu_free < cy.cpu) {
      why.add(reason::insufficient_cpu);
      feasible = false;
    } else if (t.memory_free < cy.host_memory) {
      why.add(reason::insufficient_host_memory);
      feasible = false;
    }
    bool have_alloc = false;
    if (feasible && !cy.gpu.empty()) {
      const bool fast =
          cy.simple && !Scorer::k_needs_allocation && (t.uniform || !cy.gpu[0].percent_memory);
      if (fast) {
        // Feasibility is a count of passing devices; stop at `count` unless reasons are needed.
        const auto& cc = cy.gpu[0];
        std::uint32_t pass = 0;
        for (std::size_t p = 0; p < t.count; ++p) {
          const device_state& d = hot_[t.first + p];
          const share s = resolve(*cc.req, d.memory_total, d.cores_total);
          reason r{};
          if (device_fits(d, s, type_ok(ni, p, d.type, cc), uuid_ok(ni, p, cc), r)) {
            if (++pass == cc.req->count && !opt.report_nodes) break;
          } else {
            why.add(r);
          }
        }
        feasible = pass >= cc.req->count;
        if (!feasible) why.add(reason::insufficient_devices);
      } else {
        feasible = allocate(ni, cy, scorer, opt, alloc, why, ws);
        have_alloc = feasible;
      }
    }
    double score = 0;
    if (feasible) {
      ++out.feasible_nodes;
      const std::vector<container_allocation>* ap = have_alloc ? &alloc : nullptr;
      const candidate c{nodes_[ni], ni, after(ni, cy, ap),
                        Scorer::k_needs_allocation ? ap : nullptr};
      score = scorer.node_score(c);
      if (!have || score > out.score || (score == out.score && t.rank < best_rank)) {
        have = true;
        out.score = score;
        out.node = ni;
        best_rank = t.rank;
        if (have_alloc) {
          best_alloc.swap(alloc);
        } else {
          best_alloc.clear();
        }
      }
    } else {
      out.reasons.add_presence(why);
    }
    if (opt.report_nodes) out.nodes.push_back({ni, feasible, score, 0, why});
  }
  if (!have) return out;
  out.placed = true;
  if (best_alloc.empty() && !cy.gpu.empty()) {
    reason_counts ignored;
    allocate(out.node, cy, scorer, opt, best_alloc, ignored, ws);
  }
  if (best_alloc.empty()) best_alloc.assign(cy.containers, container_allocation{});
  out.containers = std::move(best_alloc);
  if (opt.report_nodes) {
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& r : out.nodes) {
      if (!r.feasible) continue;
      lo = std::min(lo, r.score);
      hi = std::max(hi, r.score);
    }
    constexpr double k_normalized_max = 100.0;
    for (auto& r : out.nodes) {
      if (!r.feasible) continue;
      r.normalized = hi > lo ? static_cast<int>((r.score - lo) * k_normalized_max / (hi - lo))
                             : static_cast<int>(k_normalized_max);
    }
  }
  return out;
}

/// One cycle over a list of nodes (copied into a cluster): validation errors of nodes or pod
/// are returned as errors. Thread-safe.
template <class Scorer = hami_scorer>
result<decision> fit(std::vector<node> nodes, const pod_request& pod, const Scorer& scorer = {},
                     const fit_options& opt = {}) {
  auto c = cluster::make(std::move(nodes));
  if (!c) return std::move(c).err();
  return c->fit(pod, scorer, opt);
}

}  // namespace gpuslice::fit
