#pragma once
/// \file
/// The scheduler extender's verbs, without the HTTP server: each takes a request body in
/// kube-scheduler's JSON (k8s.io/kube-scheduler/extender/v1) and returns a status and a body.
///   filter      ExtenderArgs -> ExtenderFilterResult: every node whose GPUs can take the pod
///               (not only the best one, so kube-scheduler's own scoring still applies), and a
///               reason per failed node; nodes that no eviction could make fit go to
///               FailedAndUnresolvableNodes, so kube-scheduler does not preempt for them.
///   prioritize  ExtenderArgs -> HostPriorityList: the fit engine's node score of each node,
///               scaled to 0..10 (MaxExtenderPriority) over the feasible candidates.
///   bind        ExtenderBindingArgs -> ExtenderBindingResult: places the pod's GPUs on the
///               chosen node, reserves them in memory, and hands the binding (with HAMi's
///               annotations) to the binder, which a deployment points at the API server.
///   release     {"PodUID": ...}: returns a bound pod's GPUs (call it when the pod is deleted).
///   metrics     Prometheus text: filter/bind latency, failures by reason, and HAMi's scheduler
///               families (hami_gpu_memory_allocated_bytes, ...).
/// Malformed JSON, or JSON of the wrong shape, is a 400 whose body says what was expected.
///
/// State follows the cluster: nodes (HAMi's registration annotation, the device cordon) and the
/// pods that hold GPUs are given as objects (from a file at start, or an API-server list+watch)
/// through replace_nodes/upsert_node/delete_node and replace_pods/upsert_pod/delete_pod; the fit
/// cluster is rebuilt from them when they change. A node whose annotation does not parse, or a
/// pod that names a GPU its node lacks, is skipped with its reason (in FailedNodes, /state and
/// the metrics), never aborting anything. Bindings made here count at once, before the watch
/// reports them; deleting the pod gives its share back.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "gpuslice/result.hpp"
#include "kube.hpp"
#include "metrics.hpp"

namespace gpuslice::extender {

using json = nlohmann::json;

/// kube-scheduler's MaxExtenderPriority: extender scores are 0..10.
inline constexpr std::int64_t k_max_priority = 10;
/// Pods remembered between filter and bind (oldest forgotten first).
inline constexpr std::size_t k_default_pod_cache = 4096;
/// Bindings remembered for state() (oldest forgotten first; their GPUs stay held until the pod
/// is deleted or released).
inline constexpr std::size_t k_max_bindings = 65536;
/// HTTP status of a request whose body is not what the verb expects.
inline constexpr int k_bad_request = 400;
/// HTTP status of a verb that answered (its body may still carry an Error).
inline constexpr int k_ok = 200;

/// A verb's answer: an HTTP status and a JSON body.
struct reply {
  int status = k_ok;
  std::string body;
};

/// A placement made by bind: what the API server must be told.
struct binding {
  kube::pod_ref pod;
  std::string node;
  std::string devices;  ///< HAMi's devices annotation value (empty for a pod without GPUs)
};

/// Makes the binding real (annotations and v1.Binding through the API server). Returns an error
/// message, or nothing on success. Called without the extender's locks held.
using binder = std::function<std::optional<std::string>(const binding&)>;

/// Looks up an object the extender has not seen (a pod bound without filter, a node that
/// joined after the last list): the JSON object, or nullopt when there is none or no API server.
using fetcher = std::function<std::optional<json>(const std::string& ns, const std::string& name)>;

/// The extender's state and verbs. Every public method is thread-safe: filter, prioritize,
/// state and metrics share a lock; bind, release and the state updates take it exclusively for
/// the moment they change usage (never while calling the binder or a fetcher).
class service {
 public:
  /// A service over \p nodes (with their usage: validated as fit::cluster::make does) and
  /// \p scorer as the default policy, with \p cfg's request rules.
  static result<std::unique_ptr<service>> make(std::vector<fit::node> nodes,
                                               fit::hami_scorer scorer,
                                               std::size_t pod_cache = k_default_pod_cache,
                                               kube::config cfg = {}) {
    for (const auto& n : nodes) {
      if (auto e = fit::validate(n)) return std::move(*e);
    }
    auto svc = std::unique_ptr<service>(new service(scorer, pod_cache, std::move(cfg)));
    for (auto& n : nodes) {
      std::string name = n.name;
      svc->nodes_.insert_or_assign(std::move(name), node_entry{std::move(n), {}});
    }
    svc->rebuild();
    return svc;
  }

  /// Sets the binder bind() calls after reserving. Not thread-safe: call before serving.
  void set_binder(binder b) { binder_ = std::move(b); }
  /// Sets how unknown pods and nodes are looked up. Not thread-safe: call before serving.
  void set_pod_fetcher(fetcher f) { pod_fetcher_ = std::move(f); }
  void set_node_fetcher(fetcher f) { node_fetcher_ = std::move(f); }

  // ---- state updates ---------------------------------------------------------------------

  /// Replaces every node with the Node objects of \p items (a list's items). Thread-safe.
  void replace_nodes(const json& items) {
    std::unique_lock lock(mu_);
    nodes_.clear();
    if (items.is_array()) {
      for (const json& n : items) upsert_node_locked(n);
    }
    dirty_ = true;
  }
  /// Adds or updates one Node object (a malformed one is kept as skipped, with its reason).
  /// Thread-safe.
  void upsert_node(const json& node) {
    std::unique_lock lock(mu_);
    upsert_node_locked(node);
    dirty_ = true;
  }
  /// Removes a node. Thread-safe.
  void delete_node(const std::string& name) {
    std::unique_lock lock(mu_);
    nodes_.erase(name);
    dirty_ = true;
  }
  /// Replaces every pod holding GPUs with those of \p items, keeping bindings made here whose
  /// pods the list does not show bound yet. Thread-safe.
  void replace_pods(const json& items) {
    std::unique_lock lock(mu_);
    std::unordered_map<std::string, held_entry> kept;
    for (auto& [uid, h] : held_) {
      if (h.own) kept.emplace(uid, std::move(h));
    }
    held_ = std::move(kept);
    std::unordered_map<std::string, bool> listed;
    if (items.is_array()) {
      for (const json& p : items) {
        upsert_pod_locked(p);
        listed[kube::pod_identity(p).uid] = true;
      }
    }
    // A pod bound here that the list no longer shows was deleted meanwhile.
    for (auto it = held_.begin(); it != held_.end();) {
      it = it->second.own && listed.count(it->first) == 0 ? held_.erase(it) : std::next(it);
    }
    dirty_ = true;
  }
  /// Adds or updates one Pod object: a bound pod with HAMi's devices annotation holds its GPUs;
  /// a finished pod, or a bound one without the annotation, holds none. Thread-safe.
  void upsert_pod(const json& pod) {
    std::unique_lock lock(mu_);
    upsert_pod_locked(pod);
    dirty_ = true;
  }
  /// A deleted pod gives its GPUs back. Thread-safe.
  void delete_pod(const json& pod) {
    const std::string uid = kube::pod_identity(pod).uid;
    std::unique_lock lock(mu_);
    if (held_.erase(uid) != 0) dirty_ = true;
    pod_skips_.erase(uid);
  }

  /// Adds or updates a ResourceQuota: its `limits.<gpumem>` and `limits.<gpucores>` hard limits
  /// bound what the namespace's pods hold (in gpumem units, times memoryFactor, and percent).
  /// A quota without those keys limits nothing here. Thread-safe.
  void upsert_quota(const json& quota) {
    const json* meta = kube::detail::member(quota, "metadata");
    if (meta == nullptr) return;
    const std::string ns = kube::detail::string_at(*meta, "namespace", "default");
    const std::string name = kube::detail::string_at(*meta, "name");
    quota_entry q;
    const json* spec = kube::detail::member(quota, "spec");
    const json* hard = spec != nullptr ? kube::detail::member(*spec, "hard") : nullptr;
    auto limit = [&](const std::string& resource, std::optional<std::uint64_t>& out) {
      const json* v = hard != nullptr ? kube::detail::member(
                                            *hard, std::string(kube::k_quota_prefix) + resource)
                                      : nullptr;
      if (v == nullptr) return;
      auto n = v->is_string() ? kube::parse_quantity(v->get<std::string>())
                              : kube::parse_quantity(v->dump());
      if (n) out = static_cast<std::uint64_t>(*n);
    };
    limit(cfg_.resource_memory, q.memory_mib);
    limit(cfg_.resource_cores, q.cores);
    if (q.memory_mib) *q.memory_mib *= std::max<std::uint32_t>(cfg_.memory_factor, 1);
    std::unique_lock lock(mu_);
    quotas_[ns][name] = q;
  }
  /// Removes a ResourceQuota. Thread-safe.
  void delete_quota(const json& quota) {
    const json* meta = kube::detail::member(quota, "metadata");
    if (meta == nullptr) return;
    std::unique_lock lock(mu_);
    const auto it = quotas_.find(kube::detail::string_at(*meta, "namespace", "default"));
    if (it != quotas_.end()) it->second.erase(kube::detail::string_at(*meta, "name"));
  }
  /// Replaces every ResourceQuota with the items of a list. Thread-safe.
  void replace_quotas(const json& items) {
    {
      std::unique_lock lock(mu_);
      quotas_.clear();
    }
    if (items.is_array()) {
      for (const json& q : items) upsert_quota(q);
    }
  }

  // ---- verbs -----------------------------------------------------------------------------

  /// The filter verb. Thread-safe.
  reply filter(std::string_view body) {
    const auto start = std::chrono::steady_clock::now();
    auto a = parse_args(body);
    if (!a) {
      failures_.add("bad_request");
      return bad_request(a.message());
    }
    adopt_nodes(*a);
    json out = json::object();
    json passed = json::array();
    json failed = json::object(), unresolvable = json::object();
    auto pass = [&](std::size_t i) {
      if (a->nodes != nullptr) {
        passed.push_back((*a->nodes)[i]);
      } else {
        passed.push_back(a->names[i]);
      }
    };
    if (!a->request) {
      failures_.add("invalid_request");
      for (const auto& n : a->names) unresolvable[n] = "gpuslice: " + a->request.message();
    } else if (!kube::wants_gpu(*a->request)) {
      remember(a->pod, *a->request, a->scorer);
      for (std::size_t i = 0; i < a->names.size(); ++i) pass(i);
    } else {
      remember(a->pod, *a->request, a->scorer);
      const evaluation ev = evaluate(*a);
      for (std::size_t i = 0; i < a->names.size(); ++i) {
        const candidate_result& c = ev.candidates[i];
        if (c.feasible) {
          pass(i);
        } else {
          (c.unresolvable ? unresolvable : failed)[a->names[i]] = "gpuslice: " + c.why;
        }
      }
      if (passed.empty()) failures_.add("unschedulable");
    }
    if (a->nodes != nullptr) {
      out["Nodes"] = json{{"apiVersion", "v1"}, {"kind", "NodeList"}, {"items", passed}};
    } else {
      out["NodeNames"] = passed;
    }
    out["FailedNodes"] = failed;
    out["FailedAndUnresolvableNodes"] = unresolvable;
    out["Error"] = "";
    filter_latency_.observe(seconds_since(start));
    return {k_ok, out.dump()};
  }

  /// The prioritize verb. Thread-safe.
  reply prioritize(std::string_view body) {
    auto a = parse_args(body);
    if (!a) {
      failures_.add("bad_request");
      return bad_request(a.message());
    }
    adopt_nodes(*a);
    json out = json::array();
    std::vector<std::int64_t> scores(a->names.size(), 0);
    if (a->request && kube::wants_gpu(*a->request)) {
      remember(a->pod, *a->request, a->scorer);
      const evaluation ev = evaluate(*a);
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (const auto& c : ev.candidates) {
        if (!c.feasible) continue;
        lo = std::min(lo, c.score);
        hi = std::max(hi, c.score);
      }
      for (std::size_t i = 0; i < scores.size(); ++i) {
        const auto& c = ev.candidates[i];
        if (!c.feasible) continue;
        scores[i] = hi > lo ? static_cast<std::int64_t>(
                                  (c.score - lo) * static_cast<double>(k_max_priority) / (hi - lo))
                            : k_max_priority;
      }
    }
    for (std::size_t i = 0; i < scores.size(); ++i) {
      out.push_back(json{{"Host", a->names[i]}, {"Score", scores[i]}});
    }
    return {k_ok, out.dump()};
  }

  /// The bind verb. Thread-safe.
  reply bind(std::string_view body) {
    const auto start = std::chrono::steady_clock::now();
    reply r = bind_inner(body);
    bind_latency_.observe(seconds_since(start));
    return r;
  }

  /// Returns the GPUs of a bound pod (body {"PodUID": "..."}). Thread-safe.
  reply release(std::string_view body) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    const std::string uid = j.is_discarded() ? "" : kube::detail::string_at(j, "PodUID");
    if (uid.empty()) return bad_request("release: expected {\"PodUID\": \"...\"}");
    std::unique_lock lock(mu_);
    if (held_.count(uid) == 0) {
      return {k_ok, json{{"Error", "pod uid " + uid + ": not bound here"}}.dump()};
    }
    unreserve_locked(uid);
    return {k_ok, json{{"Error", ""}}.dump()};
  }

  /// Every node's device usage, the skipped nodes and pods, and the recorded bindings, as JSON.
  /// Thread-safe.
  std::string state() {
    ensure_built();
    std::shared_lock lock(mu_);
    json nodes = json::array();
    for (const auto& n : cluster_.nodes()) {
      json devices = json::array();
      for (const auto& d : n.devices) {
        devices.push_back(json{{"uuid", d.uuid},
                               {"slots_used", d.slots_used},
                               {"memory_used_mib", d.memory_used / fit::k_bytes_per_mib},
                               {"cores_used_percent", milli_to_cores(d.cores_used)}});
      }
      nodes.push_back(json{{"name", n.name}, {"devices", devices}});
    }
    json skipped_nodes = json::object();
    for (const auto& [name, e] : nodes_) {
      if (!e.skip.empty()) skipped_nodes[name] = e.skip;
    }
    json skipped_pods = json::object();
    for (const auto& [uid, why] : pod_skips_) skipped_pods[uid] = why;
    json bound = json::array();
    for (const auto& uid : binding_order_) {
      const auto it = bindings_.find(uid);
      if (it == bindings_.end()) continue;
      bound.push_back(json{{"pod", it->second.pod.key()},
                           {"uid", uid},
                           {"node", it->second.node},
                           {std::string(kube::k_devices_to_allocate), it->second.devices}});
    }
    return json{{"nodes", nodes},
                {"skipped_nodes", skipped_nodes},
                {"skipped_pods", skipped_pods},
                {"bindings", bound}}
        .dump();
  }

  /// The Prometheus text exposition. Thread-safe.
  std::string metrics() {
    ensure_built();
    std::string out;
    metrics::header(out, "gpuslice_extender_filter_duration_seconds", "histogram",
                    "Time to answer a filter request.");
    filter_latency_.render(out, "gpuslice_extender_filter_duration_seconds", "");
    metrics::header(out, "gpuslice_extender_bind_duration_seconds", "histogram",
                    "Time to answer a bind request, API-server calls included.");
    bind_latency_.render(out, "gpuslice_extender_bind_duration_seconds", "");
    metrics::header(out, "gpuslice_extender_failures_total", "counter",
                    "Requests that failed or pods that fit nowhere, by reason.");
    failures_.render(out, "gpuslice_extender_failures_total", "reason");
    std::shared_lock lock(mu_);
    std::size_t skipped = 0;
    for (const auto& [name, e] : nodes_) skipped += e.skip.empty() ? 0 : 1;
    metrics::header(out, "gpuslice_extender_skipped_nodes", "gauge",
                    "Nodes whose registration does not parse.");
    out += "gpuslice_extender_skipped_nodes " + std::to_string(skipped) + "\n";
    metrics::header(out, "gpuslice_extender_skipped_pods", "gauge",
                    "Pods whose devices their node lacks.");
    out += "gpuslice_extender_skipped_pods " + std::to_string(pod_skips_.size()) + "\n";
    // HAMi's scheduler families, with its label names, so its dashboards work unchanged.
    struct family {
      const char* name;
      const char* help;
    };
    const family fam[] = {
        {"hami_gpu_memory_limit_bytes", "Device memory limit for a certain GPU"},
        {"hami_gpu_core_limit_ratio", "Device core limit for a certain GPU"},
        {"hami_gpu_memory_allocated_bytes", "Device memory allocated for a certain GPU"},
        {"hami_gpu_shared_count", "Number of containers sharing this GPU"},
        {"hami_gpu_core_allocated_ratio", "Device core allocated for a certain GPU"},
    };
    for (std::size_t f = 0; f < std::size(fam); ++f) {
      metrics::header(out, fam[f].name, "gauge", fam[f].help);
      for (const auto& n : cluster_.nodes()) {
        for (const auto& d : n.devices) {
          const std::string base = "node=\"" + metrics::escape_label(n.name) + "\",device_uuid=\"" +
                                   metrics::escape_label(d.uuid) + "\",device_index=\"" +
                                   std::to_string(d.index) + "\"";
          const std::string type = ",device_type=\"" + metrics::escape_label(d.type) + "\"";
          const std::string cores =
              ",device_cores=\"" + std::to_string(milli_to_cores(d.cores_total)) + "\"";
          std::string labels = base + type, value;
          switch (f) {
            case 0:
              value = std::to_string(d.memory_total);
              break;
            case 1:
              value = std::to_string(milli_to_cores(d.cores_total));
              break;
            case 2:
              labels = base + cores + type;
              value = std::to_string(d.memory_used);
              break;
            case 3:
              value = std::to_string(d.slots_used);
              break;
            default:
              value = std::to_string(milli_to_cores(d.cores_used));
              break;
          }
          out += std::string(fam[f].name) + "{" + labels + "} " + value + "\n";
        }
      }
    }
    return out;
  }

  /// Number of nodes served (skipped ones excluded). Thread-safe.
  std::size_t size() {
    ensure_built();
    std::shared_lock lock(mu_);
    return cluster_.size();
  }

 private:
  struct args {
    kube::pod_ref pod;
    result<fit::pod_request> request = fit::pod_request{};
    fit::hami_scorer scorer;
    std::vector<std::string> names;  ///< candidate node names, in request order
    json body;
    const json* nodes = nullptr;  ///< Nodes.items when the request carried node objects
  };

  struct candidate_result {
    bool feasible = false;
    bool unresolvable = false;
    double score = 0;
    std::string why;
  };

  struct evaluation {
    std::vector<candidate_result> candidates;
  };

  struct node_entry {
    fit::node node;    ///< capacity (and any usage given at make)
    std::string skip;  ///< why the node is skipped; empty when it is served
  };

  struct held_entry {
    kube::bound_pod pod;
    bool own = false;  ///< bound here (kept until the API server shows it, deleted or released)
  };

  struct remembered {
    fit::pod_request request;
    fit::hami_scorer scorer;
  };

  /// One ResourceQuota's GPU limits.
  struct quota_entry {
    std::optional<std::uint64_t> memory_mib;  ///< limits.<gpumem>, times memoryFactor
    std::optional<std::uint64_t> cores;       ///< limits.<gpucores>, percent
  };

  /// Why \p ns cannot take \p req on node \p n under its quotas, or "" when it can. HAMi's
  /// FitQuota: the namespace's held memory and cores plus the request within every limit. A
  /// percentage counts on the node's largest GPU; init containers as their peak. Caller holds
  /// mu_ (shared or exclusive).
  std::string quota_excess(const std::string& ns, const fit::pod_request& req,
                           const fit::node& n) const {
    const auto it = quotas_.find(ns);
    if (it == quotas_.end() || it->second.empty()) return {};
    std::uint64_t device_mem = 0;
    for (const auto& d : n.devices) device_mem = std::max(device_mem, d.memory_total);
    std::uint64_t app_mem = 0, app_cores = 0, init_mem = 0, init_cores = 0;
    for (const auto& c : req.containers) {
      if (c.count == 0) continue;
      const fit::share sh = fit::resolve(c, device_mem, k_milli_per_gpu);
      const std::uint64_t mem = sh.memory / fit::k_bytes_per_mib * c.count;
      const std::uint64_t cores = std::uint64_t{milli_to_cores(sh.cores)} * c.count;
      if (c.init) {
        init_mem = std::max(init_mem, mem);
        init_cores = std::max(init_cores, cores);
      } else {
        app_mem += mem;
        app_cores += cores;
      }
    }
    const std::uint64_t want_mem = std::max(app_mem, init_mem);
    const std::uint64_t want_cores = std::max(app_cores, init_cores);
    std::uint64_t used_mem = 0, used_cores = 0;
    for (const auto& [uid, h] : held_) {
      if (h.pod.ref.name_space != ns) continue;
      for (const auto& d : h.pod.devices) {
        used_mem += d.memory / fit::k_bytes_per_mib;
        used_cores += milli_to_cores(d.cores);
      }
    }
    for (const auto& [name, q] : it->second) {
      if (q.memory_mib && used_mem + want_mem > *q.memory_mib) {
        return "namespace " + ns + " quota " + name + ": " + cfg_.resource_memory + " " +
               std::to_string(used_mem) + " held + " + std::to_string(want_mem) +
               " asked > limit " + std::to_string(*q.memory_mib);
      }
      if (q.cores && used_cores + want_cores > *q.cores) {
        return "namespace " + ns + " quota " + name + ": " + cfg_.resource_cores + " " +
               std::to_string(used_cores) + " held + " + std::to_string(want_cores) +
               " asked > limit " + std::to_string(*q.cores);
      }
    }
    return {};
  }

  service(fit::hami_scorer scorer, std::size_t pod_cache, kube::config cfg)
      : cluster_(*fit::cluster::make({})),
        scorer_(scorer),
        cfg_(std::move(cfg)),
        pod_cache_(pod_cache) {}

  static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }

  static reply bad_request(const std::string& message) {
    return {k_bad_request, json{{"Error", message}}.dump()};
  }

  /// Caller holds mu_ exclusively.
  void upsert_node_locked(const json& node) {
    auto n = kube::node_from_json(node);
    const json* meta = kube::detail::member(node, "metadata");
    const std::string name = meta != nullptr ? kube::detail::string_at(*meta, "name") : "";
    if (name.empty()) return;  // nothing to key it by
    if (!n) {
      nodes_.insert_or_assign(name, node_entry{fit::node{name, 0, 0, 0, 0, {}, {}}, n.message()});
      return;
    }
    if (auto e = fit::validate(*n)) {
      nodes_.insert_or_assign(name, node_entry{fit::node{name, 0, 0, 0, 0, {}, {}}, e->message});
      return;
    }
    nodes_.insert_or_assign(name, node_entry{std::move(*n), {}});
  }

  /// Caller holds mu_ exclusively.
  void upsert_pod_locked(const json& pod) {
    const kube::pod_ref ref = kube::pod_identity(pod);
    if (ref.uid.empty()) return;
    auto held = kube::bound_pod_from_json(pod);
    if (!held) {
      pod_skips_[ref.uid] = held.message();
      held_.erase(ref.uid);
      return;
    }
    if (*held) {
      held_.insert_or_assign(ref.uid, held_entry{std::move(**held), false});
      return;
    }
    // Holds nothing: finished, or bound without devices. A pod still waiting for its node keeps
    // what a bind here reserved (the watch shows the annotations before the binding).
    const json* spec = kube::detail::member(pod, "spec");
    const bool bound = spec != nullptr && !kube::detail::string_at(*spec, "nodeName").empty();
    const json* status = kube::detail::member(pod, "status");
    const std::string phase = status != nullptr ? kube::detail::string_at(*status, "phase") : "";
    if (bound || phase == "Succeeded" || phase == "Failed") {
      held_.erase(ref.uid);
      pod_skips_.erase(ref.uid);
    }
  }

  /// Rebuilds the cluster from the nodes and held pods when they changed.
  void ensure_built() {
    {
      std::shared_lock lock(mu_);
      if (!dirty_) return;
    }
    std::unique_lock lock(mu_);
    if (dirty_) rebuild();
  }

  /// Caller holds mu_ exclusively (or is the constructor).
  void rebuild() {
    std::vector<fit::node> nodes;
    for (const auto& [name, e] : nodes_) {
      if (e.skip.empty()) nodes.push_back(e.node);
    }
    for (auto it = pod_skips_.begin(); it != pod_skips_.end();) {
      it = held_.count(it->first) != 0 ? pod_skips_.erase(it) : std::next(it);
    }
    for (const auto& [uid, h] : held_) {
      auto charged = kube::charge(nodes, h.pod);
      if (!charged) pod_skips_[uid] = charged.message();
    }
    auto c = fit::cluster::make(std::move(nodes));
    if (!c) {  // validated node by node above; charge() keeps usage within totals
      failures_.add("internal");
      return;
    }
    cluster_ = std::move(*c);
    index_.clear();
    for (std::size_t i = 0; i < cluster_.size(); ++i) index_.emplace(cluster_.nodes()[i].name, i);
    dirty_ = false;
  }

  /// Nodes that came as objects in the request (nodeCacheCapable: false) and are new, or were
  /// changed, are taken from the request: a node that joined after the last list is served.
  void adopt_nodes(const args& a) {
    if (a.nodes == nullptr) return;
    std::vector<const json*> fresh;
    {
      std::shared_lock lock(mu_);
      for (const json& n : *a.nodes) {
        const std::string name = kube::detail::string_at(n["metadata"], "name");
        const auto it = nodes_.find(name);
        if (it == nodes_.end()) fresh.push_back(&n);
      }
    }
    if (fresh.empty()) return;
    std::unique_lock lock(mu_);
    for (const json* n : fresh) upsert_node_locked(*n);
    dirty_ = true;
  }

  result<args> parse_args(std::string_view body) const {
    args a;
    a.body = json::parse(body, nullptr, /*allow_exceptions=*/false);
    auto fail = [](const std::string& m) {
      return make_error(errc::invalid_value, "ExtenderArgs: " + m);
    };
    if (a.body.is_discarded()) return fail("malformed JSON; expected an object");
    if (!a.body.is_object()) return fail("expected a JSON object");
    const json* pod = kube::detail::member(a.body, "Pod");
    if (pod == nullptr || !pod->is_object()) return fail("expected a Pod object");
    a.pod = kube::pod_identity(*pod);
    a.request = kube::pod_request_from_json(*pod, cfg_);
    auto scorer = kube::pod_scorer(*pod, scorer_);
    if (scorer) {
      a.scorer = *scorer;
    } else if (a.request) {
      a.request = std::move(scorer).err();
    }
    const json* names = kube::detail::member(a.body, "NodeNames");
    const json* nodes = kube::detail::member(a.body, "Nodes");
    if (names != nullptr && names->is_array()) {
      for (const auto& n : *names) {
        if (!n.is_string()) return fail("NodeNames: expected an array of strings");
        a.names.push_back(n.get<std::string>());
      }
    } else if (nodes != nullptr && nodes->is_object()) {
      const json* items = kube::items(*nodes);
      if (items == nullptr) return fail("Nodes: expected a NodeList with items");
      for (const auto& n : *items) {
        const json* meta = kube::detail::member(n, "metadata");
        std::string name = meta != nullptr ? kube::detail::string_at(*meta, "name") : "";
        if (name.empty()) return fail("Nodes.items: expected metadata.name in every node");
        a.names.push_back(std::move(name));
      }
      a.nodes = kube::detail::member(a.body, "Nodes");
      a.nodes = kube::items(*a.nodes);
    } else {
      return fail("expected NodeNames (nodeCacheCapable) or Nodes");
    }
    return a;
  }

  /// The fit report restricted to the request's candidates, in request order.
  evaluation evaluate(const args& a) {
    ensure_built();
    evaluation ev;
    ev.candidates.resize(a.names.size());
    fit::fit_options opt;
    opt.report_nodes = true;
    std::shared_lock lock(mu_);
    auto d = cluster_.fit(*a.request, a.scorer, opt);
    for (std::size_t i = 0; i < a.names.size(); ++i) {
      candidate_result& c = ev.candidates[i];
      const auto at = index_.find(a.names[i]);
      if (at == index_.end()) {
        c.unresolvable = true;
        const auto skipped = nodes_.find(a.names[i]);
        c.why = skipped != nodes_.end() && !skipped->second.skip.empty()
                    ? "node skipped: " + skipped->second.skip
                    : "node not registered with the extender";
        continue;
      }
      if (!d) {  // pod_request_from_json validated it; kept for safety
        c.unresolvable = true;
        c.why = d.message();
        continue;
      }
      const fit::node_report& r = d->nodes[at->second];
      const fit::node& n = cluster_.nodes()[at->second];
      c.feasible = r.feasible;
      c.score = r.score;
      if (c.feasible) {
        const std::string over = quota_excess(a.pod.name_space, *a.request, n);
        if (!over.empty()) {
          c.feasible = false;
          c.why = over;
        }
      } else {
        c.why = kube::describe_rejection(n, r.reasons);
        const std::uint32_t fixed =
            r.reasons[fit::reason::unhealthy] + r.reasons[fit::reason::cordoned] +
            r.reasons[fit::reason::type_mismatch] + r.reasons[fit::reason::uuid_mismatch];
        c.unresolvable = n.devices.empty() || fixed == n.devices.size();
      }
    }
    return ev;
  }

  void remember(const kube::pod_ref& pod, const fit::pod_request& req,
                const fit::hami_scorer& scorer) {
    if (pod.uid.empty()) return;
    std::lock_guard lock(cache_mu_);
    auto [it, added] = pods_.insert_or_assign(pod.uid, remembered{req, scorer});
    (void)it;
    if (!added) return;
    pod_order_.push_back(pod.uid);
    while (pod_order_.size() > pod_cache_) {
      pods_.erase(pod_order_.front());
      pod_order_.pop_front();
    }
  }

  std::optional<remembered> recall(const std::string& uid) const {
    std::lock_guard lock(cache_mu_);
    const auto it = pods_.find(uid);
    if (it == pods_.end()) return std::nullopt;
    return it->second;
  }

  void forget(const std::string& uid) {
    std::lock_guard lock(cache_mu_);
    pods_.erase(uid);  // its entry in pod_order_ ages out; erase of a missing key is a no-op
  }

  reply bind_inner(std::string_view body) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      failures_.add("bad_request");
      return bad_request("ExtenderBindingArgs: expected a JSON object");
    }
    binding b;
    b.pod.name = kube::detail::string_at(j, "PodName");
    b.pod.name_space = kube::detail::string_at(j, "PodNamespace", "default");
    b.pod.uid = kube::detail::string_at(j, "PodUID");
    b.node = kube::detail::string_at(j, "Node");
    if (b.pod.name.empty() || b.pod.uid.empty() || b.node.empty()) {
      failures_.add("bad_request");
      return bad_request("ExtenderBindingArgs: expected non-empty PodName, PodUID and Node");
    }
    auto result_error = [this](std::string_view reason, const std::string& e) {
      failures_.add(std::string(reason));
      return reply{k_ok, json{{"Error", e}}.dump()};
    };
    auto req = recall(b.pod.uid);
    if (!req && pod_fetcher_) {
      // Not seen by filter here (another replica filtered it, or it aged out): read the pod.
      if (auto pod = pod_fetcher_(b.pod.name_space, b.pod.name)) {
        auto r = kube::pod_request_from_json(*pod, cfg_);
        auto sc = kube::pod_scorer(*pod, scorer_);
        if (!r) return result_error("invalid_request", "pod " + b.pod.key() + ": " + r.message());
        if (!sc) return result_error("invalid_request", sc.message());
        req = remembered{std::move(*r), *sc};
      }
    }
    if (!req) {
      return result_error("not_filtered", "pod " + b.pod.key() + " (uid " + b.pod.uid +
                                              "): not seen by filter; expected filter before bind");
    }
    if (kube::wants_gpu(req->request)) {
      ensure_built();
      bool known = false;
      {
        std::shared_lock lock(mu_);
        known = index_.count(b.node) != 0;
      }
      if (!known && node_fetcher_) {
        if (auto node = node_fetcher_("", b.node)) {
          upsert_node(*node);
          ensure_built();
        }
      }
    }
    {
      std::unique_lock lock(mu_);
      if (dirty_) rebuild();
      if (const auto it = held_.find(b.pod.uid); it != held_.end() && it->second.own) {
        return result_error("already_bound",
                            "pod " + b.pod.key() + ": already bound to " + it->second.pod.node);
      }
      if (kube::wants_gpu(req->request)) {
        const auto at = index_.find(b.node);
        if (at == index_.end()) {
          const auto skipped = nodes_.find(b.node);
          return result_error("node_unknown",
                              "node " + b.node + ": " +
                                  (skipped != nodes_.end() && !skipped->second.skip.empty()
                                       ? "skipped: " + skipped->second.skip
                                       : std::string("not registered")));
        }
        const fit::node& n = cluster_.nodes()[at->second];
        if (const std::string over = quota_excess(b.pod.name_space, req->request, n);
            !over.empty()) {
          return result_error("quota", "pod " + b.pod.key() + ": " + over);
        }
        auto d = fit::fit(std::vector<fit::node>{n}, req->request, req->scorer);
        if (!d) return result_error("invalid_request", "pod " + b.pod.key() + ": " + d.message());
        if (!d->placed) {
          return result_error("no_longer_fits", "pod " + b.pod.key() + " no longer fits node " +
                                                    b.node + ": " +
                                                    fit::format_reasons(d->reasons));
        }
        d->node = at->second;
        auto devices = kube::devices_annotation(n, *d);
        if (!devices) return result_error("encode", devices.message());
        if (auto r = cluster_.reserve(*d); !r) return result_error("reserve", r.message());
        b.devices = std::move(*devices);
        kube::bound_pod held;
        held.ref = b.pod;
        held.node = b.node;
        for (const auto& [pos, t] : fit::cluster::collapse(d->containers, n.devices.size())) {
          held.devices.push_back({n.devices[pos].uuid, t.slots, t.memory, t.cores});
        }
        held_.insert_or_assign(b.pod.uid, held_entry{std::move(held), true});
      }
      record(b);
    }
    if (binder_) {
      if (auto e = binder_(b)) {
        std::unique_lock lock(mu_);
        unreserve_locked(b.pod.uid);
        return result_error("binding_failed", "pod " + b.pod.key() + ": binding failed: " + *e);
      }
    }
    forget(b.pod.uid);
    return {k_ok, json{{"Error", ""}}.dump()};
  }

  /// Records a binding for state(). Caller holds mu_ exclusively.
  void record(const binding& b) {
    if (bindings_.insert_or_assign(b.pod.uid, b).second) binding_order_.push_back(b.pod.uid);
    while (binding_order_.size() > k_max_bindings) {
      bindings_.erase(binding_order_.front());
      binding_order_.pop_front();
    }
  }

  /// Returns a pod's GPUs and forgets its binding. Caller holds mu_ exclusively.
  void unreserve_locked(const std::string& uid) {
    if (held_.erase(uid) != 0) dirty_ = true;
    if (bindings_.erase(uid) != 0) {
      const auto it = std::find(binding_order_.begin(), binding_order_.end(), uid);
      if (it != binding_order_.end()) binding_order_.erase(it);
    }
  }

  mutable std::shared_mutex mu_;             ///< guards everything below up to the pod cache
  std::map<std::string, node_entry> nodes_;  ///< by name
  std::unordered_map<std::string, held_entry> held_;  ///< pods holding GPUs, by uid
  std::map<std::string, std::string> pod_skips_;      ///< uid -> why it is not charged
  std::map<std::string, std::map<std::string, quota_entry>> quotas_;  ///< namespace -> name ->
  bool dirty_ = false;  ///< cluster_ is older than the above
  fit::cluster cluster_;
  std::unordered_map<std::string, std::size_t> index_;  ///< node name -> position in cluster_
  std::unordered_map<std::string, binding> bindings_;   ///< by pod uid, for state()
  std::deque<std::string> binding_order_;

  const fit::hami_scorer scorer_;
  const kube::config cfg_;
  binder binder_;
  fetcher pod_fetcher_, node_fetcher_;

  std::size_t pod_cache_;
  mutable std::mutex cache_mu_;                       ///< guards pods_ and pod_order_
  std::unordered_map<std::string, remembered> pods_;  ///< by pod uid
  std::deque<std::string> pod_order_;

  metrics::histogram filter_latency_, bind_latency_;
  metrics::labelled_counter failures_;
};

}  // namespace gpuslice::extender
