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
/// Malformed JSON, or JSON of the wrong shape, is a 400 whose body says what was expected.
/// Node device usage lives in memory; the node list is given at start.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
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

namespace gpuslice::extender {

using json = nlohmann::json;

/// kube-scheduler's MaxExtenderPriority: extender scores are 0..10.
inline constexpr std::int64_t k_max_priority = 10;
/// Pods remembered between filter and bind (oldest forgotten first).
inline constexpr std::size_t k_default_pod_cache = 4096;
/// Bindings remembered for release() and state() (oldest forgotten first; its GPUs stay
/// reserved until released by uid).
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

/// The extender's state and verbs. filter, prioritize and state may run concurrently with each
/// other and with bind/release; bind and release serialise on the usage they change.
class service {
 public:
  /// A service over \p nodes (validated as fit::cluster::make does) with \p scorer.
  static result<std::unique_ptr<service>> make(std::vector<fit::node> nodes,
                                               fit::hami_scorer scorer,
                                               std::size_t pod_cache = k_default_pod_cache) {
    auto c = fit::cluster::make(std::move(nodes));
    if (!c) return std::move(c).err();
    return std::unique_ptr<service>(new service(std::move(*c), scorer, pod_cache));
  }

  /// Sets the binder bind() calls after reserving. Not thread-safe: call before serving.
  void set_binder(binder b) { binder_ = std::move(b); }

  /// The filter verb. Thread-safe.
  reply filter(std::string_view body) const {
    auto a = parse_args(body);
    if (!a) return bad_request(a.message());
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
      for (const auto& n : a->names) unresolvable[n] = "gpuslice: " + a->request.message();
    } else if (!kube::wants_gpu(*a->request)) {
      for (std::size_t i = 0; i < a->names.size(); ++i) pass(i);
    } else {
      remember(a->pod, *a->request);
      const evaluation ev = evaluate(*a);
      for (std::size_t i = 0; i < a->names.size(); ++i) {
        const candidate_result& c = ev.candidates[i];
        if (c.feasible) {
          pass(i);
        } else {
          (c.unresolvable ? unresolvable : failed)[a->names[i]] = "gpuslice: " + c.why;
        }
      }
    }
    if (a->nodes != nullptr) {
      out["Nodes"] = json{{"apiVersion", "v1"}, {"kind", "NodeList"}, {"items", passed}};
    } else {
      out["NodeNames"] = passed;
    }
    out["FailedNodes"] = failed;
    out["FailedAndUnresolvableNodes"] = unresolvable;
    out["Error"] = "";
    return {k_ok, out.dump()};
  }

  /// The prioritize verb. Thread-safe.
  reply prioritize(std::string_view body) const {
    auto a = parse_args(body);
    if (!a) return bad_request(a.message());
    json out = json::array();
    std::vector<std::int64_t> scores(a->names.size(), 0);
    if (a->request && kube::wants_gpu(*a->request)) {
      remember(a->pod, *a->request);
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
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return bad_request("ExtenderBindingArgs: expected a JSON object");
    }
    binding b;
    b.pod.name = kube::detail::string_at(j, "PodName");
    b.pod.name_space = kube::detail::string_at(j, "PodNamespace", "default");
    b.pod.uid = kube::detail::string_at(j, "PodUID");
    b.node = kube::detail::string_at(j, "Node");
    if (b.pod.name.empty() || b.pod.uid.empty() || b.node.empty()) {
      return bad_request("ExtenderBindingArgs: expected non-empty PodName, PodUID and Node");
    }
    auto result_error = [](const std::string& e) { return reply{k_ok, json{{"Error", e}}.dump()}; };
    const auto req = recall(b.pod.uid);
    if (!req) {
      return result_error("pod " + b.pod.key() + " (uid " + b.pod.uid +
                          "): not seen by filter; expected filter before bind");
    }
    std::optional<fit::decision> reserved;
    {
      std::unique_lock lock(mu_);
      if (bindings_.count(b.pod.uid) != 0) {
        return result_error("pod " + b.pod.key() + ": already bound to " +
                            bindings_.at(b.pod.uid).b.node);
      }
      const auto at = index_.find(b.node);
      if (at == index_.end()) return result_error("node " + b.node + ": not registered");
      if (kube::wants_gpu(*req)) {
        const fit::node& n = cluster_.nodes()[at->second];
        auto d = fit::fit(std::vector<fit::node>{n}, *req, scorer_);
        if (!d) return result_error("pod " + b.pod.key() + ": " + d.message());
        if (!d->placed) {
          return result_error("pod " + b.pod.key() + " no longer fits node " + b.node + ": " +
                              fit::format_reasons(d->reasons));
        }
        d->node = at->second;
        auto devices = kube::devices_annotation(n, *d);
        if (!devices) return result_error(devices.message());
        if (auto r = cluster_.reserve(*d); !r) return result_error(r.message());
        b.devices = std::move(*devices);
        reserved = std::move(*d);
      }
      record(b, reserved);
    }
    if (binder_) {
      if (auto e = binder_(b)) {
        std::unique_lock lock(mu_);
        unrecord(b.pod.uid);
        return result_error("pod " + b.pod.key() + ": binding failed: " + *e);
      }
    }
    forget(b.pod.uid);
    return {k_ok, json{{"Error", ""}}.dump()};
  }

  /// Returns the GPUs of a bound pod (body {"PodUID": "..."}). Thread-safe.
  reply release(std::string_view body) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    const std::string uid = j.is_discarded() ? "" : kube::detail::string_at(j, "PodUID");
    if (uid.empty()) return bad_request("release: expected {\"PodUID\": \"...\"}");
    std::unique_lock lock(mu_);
    if (bindings_.count(uid) == 0) {
      return {k_ok, json{{"Error", "pod uid " + uid + ": not bound here"}}.dump()};
    }
    unrecord(uid);
    return {k_ok, json{{"Error", ""}}.dump()};
  }

  /// Every node's device usage and the recorded bindings, as JSON. Thread-safe.
  std::string state() const {
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
    json bound = json::array();
    for (const auto& uid : binding_order_) {
      const auto& r = bindings_.at(uid);
      bound.push_back(json{{"pod", r.b.pod.key()},
                           {"uid", uid},
                           {"node", r.b.node},
                           {std::string(kube::k_devices_to_allocate), r.b.devices}});
    }
    return json{{"nodes", nodes}, {"bindings", bound}}.dump();
  }

  /// Number of nodes served.
  std::size_t size() const noexcept { return cluster_.size(); }

 private:
  struct args {
    kube::pod_ref pod;
    result<fit::pod_request> request = fit::pod_request{};
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

  struct record_entry {
    binding b;
    std::optional<fit::decision> reserved;
  };

  service(fit::cluster c, fit::hami_scorer scorer, std::size_t pod_cache)
      : cluster_(std::move(c)), scorer_(scorer), pod_cache_(pod_cache) {
    for (std::size_t i = 0; i < cluster_.size(); ++i) index_.emplace(cluster_.nodes()[i].name, i);
  }

  static reply bad_request(const std::string& message) {
    return {k_bad_request, json{{"Error", message}}.dump()};
  }

  static result<args> parse_args(std::string_view body) {
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
    a.request = kube::pod_request_from_json(*pod);
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
  evaluation evaluate(const args& a) const {
    evaluation ev;
    ev.candidates.resize(a.names.size());
    fit::fit_options opt;
    opt.report_nodes = true;
    std::shared_lock lock(mu_);
    auto d = cluster_.fit(*a.request, scorer_, opt);
    for (std::size_t i = 0; i < a.names.size(); ++i) {
      candidate_result& c = ev.candidates[i];
      const auto at = index_.find(a.names[i]);
      if (at == index_.end()) {
        c.unresolvable = true;
        c.why = "node not registered with the extender";
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
      if (!c.feasible) {
        c.why = kube::describe_rejection(n, r.reasons);
        const std::uint32_t fixed = r.reasons[fit::reason::unhealthy] +
                                    r.reasons[fit::reason::type_mismatch] +
                                    r.reasons[fit::reason::uuid_mismatch];
        c.unresolvable = n.devices.empty() || fixed == n.devices.size();
      }
    }
    return ev;
  }

  void remember(const kube::pod_ref& pod, const fit::pod_request& req) const {
    if (pod.uid.empty()) return;
    std::lock_guard lock(cache_mu_);
    auto [it, added] = pods_.insert_or_assign(pod.uid, req);
    (void)it;
    if (!added) return;
    pod_order_.push_back(pod.uid);
    while (pod_order_.size() > pod_cache_) {
      pods_.erase(pod_order_.front());
      pod_order_.pop_front();
    }
  }

  std::optional<fit::pod_request> recall(const std::string& uid) const {
    std::lock_guard lock(cache_mu_);
    const auto it = pods_.find(uid);
    if (it == pods_.end()) return std::nullopt;
    return it->second;
  }

  void forget(const std::string& uid) const {
    std::lock_guard lock(cache_mu_);
    pods_.erase(uid);  // its entry in pod_order_ ages out; erase of a missing key is a no-op
  }

  /// Records a binding. Caller holds mu_ exclusively.
  void record(const binding& b, std::optional<fit::decision> reserved) {
    bindings_.emplace(b.pod.uid, record_entry{b, std::move(reserved)});
    binding_order_.push_back(b.pod.uid);
    while (binding_order_.size() > k_max_bindings) {
      bindings_.erase(binding_order_.front());
      binding_order_.pop_front();
    }
  }

  /// Undoes record() and the reservation. Caller holds mu_ exclusively.
  void unrecord(const std::string& uid) {
    const auto it = bindings_.find(uid);
    if (it == bindings_.end()) return;
    if (it->second.reserved) (void)cluster_.release(*it->second.reserved);
    bindings_.erase(it);
    for (auto o = binding_order_.begin(); o != binding_order_.end(); ++o) {
      if (*o == uid) {
        binding_order_.erase(o);
        break;
      }
    }
  }

  mutable std::shared_mutex mu_;  ///< guards cluster_ usage and the bindings
  fit::cluster cluster_;
  std::unordered_map<std::string, std::size_t> index_;  ///< node name -> position (immutable)
  fit::hami_scorer scorer_;
  binder binder_;
  std::unordered_map<std::string, record_entry> bindings_;  ///< by pod uid
  std::deque<std::string> binding_order_;

  std::size_t pod_cache_;
  mutable std::mutex cache_mu_;                                     ///< guards pods_ and pod_order_
  mutable std::unordered_map<std::string, fit::pod_request> pods_;  ///< by pod uid
  mutable std::deque<std::string> pod_order_;
};

}  // namespace gpuslice::extender
