#pragma once
/// \file
/// The scheduler extender's verbs, without the HTTP server: each takes a request body in
/// kube-scheduler's JSON (k8s.io/kube-scheduler/extender/v1) and returns a status and a body.
///   filter      ExtenderArgs -> ExtenderFilterResult: every node whose GPUs can take the pod
///               (not only the best one, so kube-scheduler's own scoring still applies), and a
///               reason per failed node; nodes that no eviction could make fit go to
///               FailedAndUnresolvableNodes, so kube-scheduler does not preempt for them.
///   prioritize  ExtenderArgs -> HostPriorityList: the fit engine's choice among the feasible
///               candidates gets 10 (MaxExtenderPriority), every other node 0..9 by its node
///               score, so kube-scheduler's argmax is the fit engine's (see prioritize()).
///   bind        ExtenderBindingArgs -> ExtenderBindingResult: places the pod's GPUs on the
///               chosen node, reserves them in memory, and hands the binding (with HAMi's
///               annotations) to the binder, which a deployment points at the API server.
///   release     {"PodUID": ...}: returns a bound pod's GPUs (call it when the pod is deleted).
///   metrics     Prometheus text: filter/bind latency, failures by reason, and HAMi's scheduler
///               families (hami_gpu_memory_allocated_bytes, ...).
/// Malformed JSON, or JSON of the wrong shape, is a 400 whose body says what was expected.
///
/// State follows the cluster: nodes (HAMi's registration annotation, the device cordon, the
/// allocatable CPU and memory) and the bound pods (their GPUs, CPU and memory) are given as objects
/// (from a file at start, or an API-server list+watch) through
/// replace_nodes/upsert_node/delete_node and replace_pods/upsert_pod/delete_pod. Each event changes
/// only what it touches: a pod event the devices of its node, a node event that node (and the pods
/// bound to it); a filter or prioritize then costs what the fit engine costs, whatever the
/// cluster's history. A list (replace_*) replaces everything. A node whose annotation does not
/// parse, or a pod that names a GPU its node lacks, is skipped with its reason (in FailedNodes,
/// /state and the metrics), never aborting anything. Bindings made here count at once, before the
/// watch reports them; deleting the pod gives its share back.

#include <algorithm>
#include <atomic>
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
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/hami_frag.hpp"
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

/// The scorers a pod can be placed by, visited in every fit call: a new policy is one more
/// alternative here (and where scorer_for() picks it).
using node_scorer = std::variant<fit::hami_scorer, fit::hami_frag_scorer, fit::spec_usage_scorer>;

/// CPU (milli-CPU) or memory (bytes) a node or pod is taken to have when it does not say: so
/// much that it never limits (a node listed without status.allocatable, or given with 0).
inline constexpr std::uint64_t k_unbounded = std::uint64_t{1} << 62;

namespace detail {

/// A CPU quantity in milli-CPU ("4", "1.5", "250m"), as resource.Quantity.MilliValue(); nullopt
/// when it does not parse. Pure, thread-safe.
inline std::optional<std::uint64_t> cpu_milli(const json& v) {
  std::string text = v.is_string() ? v.get<std::string>() : v.dump();
  if (text.empty()) return std::nullopt;
  if (text.back() == 'm') {
    text.pop_back();
  } else if (::gpuslice::detail::is_digit(text.back()) || text.back() == '.') {
    text += 'k';  // thousands of cores are milli-cores, fractions included
  } else {
    auto q = kube::parse_quantity(text);
    if (!q) return std::nullopt;
    constexpr std::uint64_t k_milli = 1000;
    return static_cast<std::uint64_t>(*q) * k_milli;
  }
  auto q = kube::parse_quantity(text);
  if (!q) return std::nullopt;
  return static_cast<std::uint64_t>(*q);
}

/// A memory quantity in bytes; nullopt when it does not parse. Pure, thread-safe.
inline std::optional<std::uint64_t> memory_bytes(const json& v) {
  auto q = kube::parse_quantity(v.is_string() ? v.get<std::string>() : v.dump());
  if (!q) return std::nullopt;
  return static_cast<std::uint64_t>(*q);
}

/// A Node's status.allocatable CPU and memory (k_unbounded for what it does not give).
inline std::pair<std::uint64_t, std::uint64_t> allocatable(const json& node) {
  const json* status = kube::detail::member(node, "status");
  const json* alloc = status != nullptr ? kube::detail::member(*status, "allocatable") : nullptr;
  std::uint64_t cpu = k_unbounded, mem = k_unbounded;
  if (alloc != nullptr) {
    if (const json* c = kube::detail::member(*alloc, "cpu")) cpu = cpu_milli(*c).value_or(cpu);
    if (const json* m = kube::detail::member(*alloc, "memory")) {
      mem = memory_bytes(*m).value_or(mem);
    }
  }
  return {cpu == 0 ? k_unbounded : cpu, mem == 0 ? k_unbounded : mem};
}

/// What a Pod asks of its node's CPU (milli) and memory (bytes), as kube-scheduler counts it:
/// the app containers' requests (their limits where a request is absent, as the API server
/// defaults them) added up, or the largest init container's, whichever is larger. Pure,
/// thread-safe.
inline std::pair<std::uint64_t, std::uint64_t> pod_cpu_memory(const json& pod) {
  const json* spec = kube::detail::member(pod, "spec");
  auto of = [](const json& c) {
    std::uint64_t cpu = 0, mem = 0;
    const json* res = kube::detail::member(c, "resources");
    for (const char* kind : {"limits", "requests"}) {  // requests win over limits
      const json* r = res != nullptr ? kube::detail::member(*res, kind) : nullptr;
      if (r == nullptr || !r->is_object()) continue;
      if (const json* v = kube::detail::member(*r, "cpu")) cpu = cpu_milli(*v).value_or(cpu);
      if (const json* v = kube::detail::member(*r, "memory")) {
        mem = memory_bytes(*v).value_or(mem);
      }
    }
    return std::pair<std::uint64_t, std::uint64_t>{cpu, mem};
  };
  std::uint64_t cpu = 0, mem = 0, init_cpu = 0, init_mem = 0;
  if (spec != nullptr) {
    if (const json* cs = kube::detail::member(*spec, "containers"); cs && cs->is_array()) {
      for (const json& c : *cs) {
        const auto [c_cpu, c_mem] = of(c);
        cpu += c_cpu;
        mem += c_mem;
      }
    }
    if (const json* cs = kube::detail::member(*spec, "initContainers"); cs && cs->is_array()) {
      for (const json& c : *cs) {
        const auto [c_cpu, c_mem] = of(c);
        init_cpu = std::max(init_cpu, c_cpu);
        init_mem = std::max(init_mem, c_mem);
      }
    }
  }
  return {std::max(cpu, init_cpu), std::max(mem, init_mem)};
}

/// Adds \p pod's CPU and memory to its request (the fit engine sums them over containers).
inline void add_cpu_memory(const json& pod, fit::pod_request& req) {
  if (req.containers.empty()) return;
  const auto [cpu, mem] = pod_cpu_memory(pod);
  req.containers.front().cpu += cpu;
  req.containers.front().host_memory += mem;
}

/// Appends \p s to \p out as a JSON string literal (quotes, backslashes and control characters
/// escaped; other bytes as they are). The verbs write their answers with it rather than through
/// json values: at thousands of nodes the answer's tree of small allocations cost more than the
/// fit itself. Pure, thread-safe.
inline void append_json_string(std::string& out, std::string_view s) {
  constexpr unsigned char k_first_printable = 0x20;
  constexpr std::string_view k_hex = "0123456789abcdef";
  constexpr unsigned k_nibble = 4, k_low = 0xF;
  out += '"';
  std::size_t run = 0;  // start of the bytes not yet copied: copied in one append each
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c != '"' && c != '\\' && c >= k_first_printable) continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else {
      out += "\\u00";
      out += k_hex[c >> k_nibble];
      out += k_hex[c & k_low];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

}  // namespace detail

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
    std::unique_lock lock(svc->mu_);
    for (auto& n : nodes) {
      std::string name = n.name;
      node_entry e;
      e.node = std::move(n);
      if (e.node.cpu_total == 0) e.node.cpu_total = k_unbounded;  // not given: not checked
      if (e.node.memory_total == 0) e.node.memory_total = k_unbounded;
      svc->set_node_locked(name, std::move(e));
    }
    return svc;
  }

  /// Sets the binder bind() calls after reserving. Not thread-safe: call before serving.
  void set_binder(binder b) { binder_ = std::move(b); }
  /// Sets how unknown pods and nodes are looked up. Not thread-safe: call before serving.
  void set_pod_fetcher(fetcher f) { pod_fetcher_ = std::move(f); }
  void set_node_fetcher(fetcher f) { node_fetcher_ = std::move(f); }
  /// Places pods by FGD or sfgd (fit/hami_frag.hpp) against the workload learned from the pods
  /// seen (bound ones from the watch, and each bind here), seeded by \p seed when given; a pod
  /// whose annotation names a node policy keeps HAMi's scorer. Not thread-safe: call before
  /// serving.
  void set_frag_policy(fit::frag_policy p, std::vector<fit::weighted_class> seed = {}) {
    frag_ = p;
    if (!seed.empty()) workload_.seed(std::move(seed));
  }
  /// Places pods by the simulator's binpack or spread (fit::spec_usage_scorer: slots, GPU
  /// cores and host memory as a whole percent, GPUs best or worst fit), so that the cluster
  /// allocates what the simulator reports for that policy; a pod whose annotation names a node
  /// policy keeps HAMi's scorer. Not thread-safe: call before serving.
  void set_spec_policy(fit::hami_policy p) { spec_ = p; }

  // ---- state updates ---------------------------------------------------------------------

  /// Replaces every node with the Node objects of \p items (a list's items). Thread-safe.
  void replace_nodes(const json& items) {
    std::unique_lock lock(mu_);
    std::map<std::string, bool> listed;
    if (items.is_array()) {
      for (const json& n : items) listed[upsert_node_locked(n)] = true;
    }
    std::vector<std::string> gone;
    for (const auto& [name, e] : nodes_) {
      if (listed.count(name) == 0) gone.push_back(name);
    }
    for (const auto& name : gone) erase_node_locked(name);
  }
  /// Adds or updates one Node object (a malformed one is kept as skipped, with its reason).
  /// Thread-safe.
  void upsert_node(const json& node) {
    std::unique_lock lock(mu_);
    upsert_node_locked(node);
  }
  /// Removes a node. Thread-safe.
  void delete_node(const std::string& name) {
    std::unique_lock lock(mu_);
    erase_node_locked(name);
  }
  /// Replaces every pod holding GPUs with those of \p items, keeping bindings made here whose
  /// pods the list does not show bound yet. Thread-safe.
  void replace_pods(const json& items) {
    std::unique_lock lock(mu_);
    std::vector<std::string> dropped;
    std::unordered_set<std::string> known;  // learned from already
    for (const auto& [uid, h] : held_) {
      known.insert(uid);
      if (!h.own) dropped.push_back(uid);
    }
    for (const auto& uid : dropped) drop_locked(uid);
    for (auto it = pod_skips_.begin(); it != pod_skips_.end();) {
      it = held_.count(it->first) == 0 ? pod_skips_.erase(it) : std::next(it);
    }
    std::unordered_map<std::string, bool> listed;
    if (items.is_array()) {
      for (const json& p : items) {
        const std::string uid = kube::pod_identity(p).uid;
        upsert_pod_locked(p, known.count(uid) == 0);
        listed[uid] = true;
      }
    }
    // A pod bound here that the list no longer shows was deleted meanwhile.
    dropped.clear();
    for (const auto& [uid, h] : held_) {
      if (h.own && listed.count(uid) == 0) dropped.push_back(uid);
    }
    for (const auto& uid : dropped) drop_locked(uid);
  }
  /// Adds or updates one Pod object: a bound pod with HAMi's devices annotation holds its GPUs;
  /// a finished pod, or a bound one without the annotation, holds none. Thread-safe.
  void upsert_pod(const json& pod) {
    std::unique_lock lock(mu_);
    upsert_pod_locked(pod);
  }
  /// A deleted pod gives its GPUs back. Thread-safe.
  void delete_pod(const json& pod) {
    const std::string uid = kube::pod_identity(pod).uid;
    std::unique_lock lock(mu_);
    drop_locked(uid);
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
    // The answer is written directly (detail::append_json_string): NodeNames (or Nodes), then
    // FailedNodes and FailedAndUnresolvableNodes, each a member per node.
    std::string passed, failed, unresolvable;
    std::size_t passed_count = 0;
    auto pass = [&](std::size_t i) {
      if (passed_count++ > 0) passed += ',';
      if (a->nodes != nullptr) {
        passed += (*a->nodes)[i].dump();
      } else {
        detail::append_json_string(passed, a->names[i]);
      }
    };
    auto reject = [](std::string& into, std::string_view name, std::string_view why) {
      if (!into.empty()) into += ',';
      detail::append_json_string(into, name);
      into += ':';
      detail::append_json_string(into, why);
    };
    constexpr std::string_view k_prefix = "gpuslice: ";
    if (!a->request) {
      failures_.add("invalid_request");
      const std::string why = std::string(k_prefix) + a->request.message();
      for (const auto& n : a->names) reject(unresolvable, n, why);
    } else {
      remember(a->pod, *a->request, a->scorer);
      const evaluation ev = evaluate(*a);
      std::string why;
      for (std::size_t i = 0; i < a->names.size(); ++i) {
        const candidate_result& c = ev.candidates[i];
        if (c.feasible) {
          pass(i);
        } else {
          why.assign(k_prefix);
          why += c.why;
          reject(c.unresolvable ? unresolvable : failed, a->names[i], why);
        }
      }
      if (passed_count == 0) failures_.add("unschedulable");
    }
    constexpr std::size_t k_framing = 128;
    std::string out;
    out.reserve(passed.size() + failed.size() + unresolvable.size() + k_framing);
    if (a->nodes != nullptr) {
      out += R"({"Nodes":{"apiVersion":"v1","kind":"NodeList","items":[)";
      out += passed;
      out += "]},";
    } else {
      out += R"({"NodeNames":[)";
      out += passed;
      out += "],";
    }
    out += R"("FailedNodes":{)";
    out += failed;
    out += R"(},"FailedAndUnresolvableNodes":{)";
    out += unresolvable;
    out += R"(},"Error":""})";
    filter_latency_.observe(seconds_since(start));
    return {k_ok, std::move(out)};
  }

  /// The prioritize verb. The fit engine's choice among the feasible candidates (the best node
  /// score; on a tie, the first name, as the fit engine breaks ties) gets k_max_priority; every
  /// other feasible node gets 0..k_max_priority - 1 by its score, linearly from the worst to the
  /// best. A plain 0..10 rescale would round nodes within a tenth of the range of the best to 10
  /// too, and kube-scheduler picks at random among equal totals, so it would often not place as
  /// the fit engine does. kube-scheduler adds extender scores times weight * 10 to its plugins'
  /// scores, so with the other scores equal on the candidates (docs/placement.md says how to
  /// deploy) its choice is the fit engine's. Thread-safe.
  reply prioritize(std::string_view body) {
    auto a = parse_args(body);
    if (!a) {
      failures_.add("bad_request");
      return bad_request(a.message());
    }
    adopt_nodes(*a);
    std::vector<std::int64_t> scores(a->names.size(), 0);
    if (a->request) {
      remember(a->pod, *a->request, a->scorer);
      const evaluation ev = evaluate(*a);
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      std::size_t best = scores.size();
      for (std::size_t i = 0; i < scores.size(); ++i) {
        const auto& c = ev.candidates[i];
        if (!c.feasible) continue;
        lo = std::min(lo, c.score);
        hi = std::max(hi, c.score);
        if (best == scores.size() || c.score > ev.candidates[best].score ||
            (c.score == ev.candidates[best].score && a->names[i] < a->names[best])) {
          best = i;
        }
      }
      constexpr std::int64_t k_runner_up = k_max_priority - 1;
      for (std::size_t i = 0; i < scores.size(); ++i) {
        const auto& c = ev.candidates[i];
        if (!c.feasible) continue;
        if (i == best) {
          scores[i] = k_max_priority;
        } else {
          scores[i] = hi > lo ? static_cast<std::int64_t>(
                                    (c.score - lo) * static_cast<double>(k_runner_up) / (hi - lo))
                              : k_runner_up;
        }
      }
    }
    // A HostPriorityList, written directly (detail::append_json_string).
    constexpr std::size_t k_per_host = 48;
    std::string out;
    out.reserve(2 + scores.size() * k_per_host);
    out += '[';
    for (std::size_t i = 0; i < scores.size(); ++i) {
      if (i > 0) out += ',';
      out += R"({"Host":)";
      detail::append_json_string(out, a->names[i]);
      out += R"(,"Score":)";
      out += std::to_string(scores[i]);
      out += '}';
    }
    out += ']';
    return {k_ok, std::move(out)};
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
    std::shared_lock lock(mu_);
    json nodes = json::array();
    for (const auto& [name, e] : nodes_) {
      const auto at = index_.find(name);
      if (at == index_.end()) continue;
      const fit::node& n = cluster_.nodes()[at->second];
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
    std::string out;
    if (frag_) {
      // The learned target workload: one sample per request class, its weight as the value.
      metrics::header(out, "gpuslice_extender_workload_class_weight", "gauge",
                      "Weight of each request class in the target workload fgd/sfgd place "
                      "against (line of the --workload format: weight,gpus,memory,cores,cpu,"
                      "types).");
      const auto w = workload_.snapshot();
      for (const auto& c : w->classes()) {
        std::string line = fit::format_workload({c});
        while (!line.empty() && line.front() == '#') line.erase(0, line.find('\n') + 1);
        while (!line.empty() && (line.back() == '\n')) line.pop_back();
        const auto comma = line.find(',');
        const std::string cls = comma == std::string::npos ? line : line.substr(comma + 1);
        out += "gpuslice_extender_workload_class_weight{policy=\"" +
               std::string(fit::frag_policy_name(*frag_)) + "\",class=\"" +
               metrics::escape_label(cls) + "\"} " + std::to_string(c.weight) + "\n";
      }
    }
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
      for (const auto& [name, e] : nodes_) {
        const auto at = index_.find(name);
        if (at == index_.end()) continue;
        const fit::node& n = cluster_.nodes()[at->second];
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
    std::shared_lock lock(mu_);
    return cluster_.size();
  }

 private:
  struct args {
    kube::pod_ref pod;
    result<fit::pod_request> request = fit::pod_request{};
    node_scorer scorer;
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

  /// What the held pods charged to one device add up to (uncapped, so taking one off is exact).
  struct held_sum {
    std::uint64_t slots = 0, memory = 0, cores = 0;
  };

  struct node_entry {
    fit::node node;                     ///< capacity (and any usage given at make)
    std::string skip;                   ///< why the node is skipped; empty when it is served
    std::vector<held_sum> held;         ///< per device position: the charged pods' sums
    std::uint64_t cpu = 0, memory = 0;  ///< the charged pods' CPU (milli) and memory (bytes)
  };

  struct held_entry {
    kube::bound_pod pod;
    std::uint64_t cpu = 0, memory = 0;  ///< what the pod asks of its node's CPU and memory
    bool own = false;      ///< bound here (kept until the API server shows it, deleted or released)
    bool charged = false;  ///< counted in its node's sums (else it is in pod_skips_)
    std::vector<std::size_t> positions;  ///< per pod.devices: the device position charged
  };

  /// What a namespace's held pods hold, for its quotas.
  struct ns_use {
    std::uint64_t memory_mib = 0, cores = 0;
  };

  struct remembered {
    fit::pod_request request;
    node_scorer scorer;
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
    if (const auto u = ns_used_.find(ns); u != ns_used_.end()) {
      used_mem = u->second.memory_mib;
      used_cores = u->second.cores;
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

  /// Adds or updates the Node object \p node; returns its name ("" when it has none).
  /// Caller holds mu_ exclusively.
  std::string upsert_node_locked(const json& node) {
    auto n = kube::node_from_json(node);
    const json* meta = kube::detail::member(node, "metadata");
    std::string name = meta != nullptr ? kube::detail::string_at(*meta, "name") : "";
    if (name.empty()) return name;  // nothing to key it by
    node_entry e;
    if (!n) {
      e.node = fit::node{name, 0, 0, 0, 0, {}, {}};
      e.skip = n.message();
    } else if (auto bad = fit::validate(*n)) {
      e.node = fit::node{name, 0, 0, 0, 0, {}, {}};
      e.skip = bad->message;
    } else {
      e.node = std::move(*n);
      std::tie(e.node.cpu_total, e.node.memory_total) = detail::allocatable(node);
    }
    set_node_locked(name, std::move(e));
    return name;
  }

  static bool same_devices(const fit::device& a, const fit::device& b) {
    return a.uuid == b.uuid && a.index == b.index && a.type == b.type && a.numa == b.numa &&
           a.healthy == b.healthy && a.cordoned == b.cordoned && a.slots_total == b.slots_total &&
           a.slots_used == b.slots_used && a.memory_total == b.memory_total &&
           a.memory_used == b.memory_used && a.cores_total == b.cores_total &&
           a.cores_used == b.cores_used && a.mode == b.mode;
  }
  static bool same_node(const fit::node& a, const fit::node& b) {
    if (a.cpu_total != b.cpu_total || a.cpu_used != b.cpu_used ||
        a.memory_total != b.memory_total || a.memory_used != b.memory_used ||
        a.devices.size() != b.devices.size() || !(a.links == b.links)) {
      return false;
    }
    for (std::size_t i = 0; i < a.devices.size(); ++i) {
      if (!same_devices(a.devices[i], b.devices[i])) return false;
    }
    return true;
  }

  /// Sets node \p name to \p e (served when e.skip is empty): a node that did not change is left
  /// as it is (HAMi's device plugin rewrites its handshake annotation every few seconds); one
  /// that did is replaced in the fit cluster at its position and the pods bound to it are
  /// charged again. Costs what the node and its pods cost. Caller holds mu_ exclusively.
  void set_node_locked(const std::string& name, node_entry e) {
    const auto it = nodes_.find(name);
    const bool was_served = it != nodes_.end() && it->second.skip.empty();
    const bool served = e.skip.empty();
    if (was_served && served && same_node(it->second.node, e.node)) return;
    inventory_stale_ = true;
    if (it != nodes_.end() && !was_served && !served) {
      it->second.skip = std::move(e.skip);
      return;
    }
    if (was_served) uncharge_node_locked(name);
    node_entry& slot = nodes_.insert_or_assign(name, std::move(e)).first->second;
    const auto at = index_.find(name);
    if (!served) {
      if (at != index_.end()) remove_position_locked(at->second);
      charge_node_locked(name);  // marks its pods skipped, with the reason
      return;
    }
    slot.held.assign(slot.node.devices.size(), held_sum{});
    slot.cpu = slot.memory = 0;
    charge_node_locked(name);
    if (at == index_.end()) {
      auto pos = cluster_.add_node(usage_of(slot));
      if (!pos) {  // validated above; kept for safety
        failures_.add("internal");
        slot.skip = pos.message();
        return;
      }
      index_.emplace(name, *pos);
    } else {
      write_node_locked(name, slot, at->second);
    }
  }

  /// Removes node \p name: its pods stay held but uncharged (skipped until it comes back).
  /// Caller holds mu_ exclusively.
  void erase_node_locked(const std::string& name) {
    const auto it = nodes_.find(name);
    if (it == nodes_.end()) return;
    if (it->second.skip.empty()) uncharge_node_locked(name);
    nodes_.erase(it);
    if (const auto at = index_.find(name); at != index_.end()) remove_position_locked(at->second);
    charge_node_locked(name);  // marks its pods skipped, with the reason
  }

  /// Removes the cluster's node at \p pos, keeping index_ right for the node that moves there.
  /// Caller holds mu_ exclusively.
  void remove_position_locked(std::size_t pos) {
    inventory_stale_ = true;
    index_.erase(cluster_.nodes()[pos].name);
    cluster_.remove_node(pos);
    if (pos < cluster_.size()) index_[cluster_.nodes()[pos].name] = pos;
  }

  /// The node of entry \p e with its held pods charged: per device, the given usage plus what
  /// the pods hold, capped at the total (kube::charge's rule: an over-reported card is full).
  static fit::node usage_of(const node_entry& e) {
    fit::node n = e.node;
    n.cpu_used = std::min(n.cpu_total, n.cpu_used + e.cpu);
    n.memory_used = std::min(n.memory_total, n.memory_used + e.memory);
    for (std::size_t p = 0; p < n.devices.size() && p < e.held.size(); ++p) {
      fit::device& d = n.devices[p];
      const held_sum& h = e.held[p];
      d.slots_used = static_cast<std::uint32_t>(
          std::min<std::uint64_t>(d.slots_total, std::uint64_t{d.slots_used} + h.slots));
      d.memory_used = std::min<std::uint64_t>(d.memory_total, d.memory_used + h.memory);
      d.cores_used = static_cast<std::uint32_t>(
          std::min<std::uint64_t>(d.cores_total, std::uint64_t{d.cores_used} + h.cores));
    }
    return n;
  }

  /// Writes node \p name's usage into the fit cluster at \p pos. Caller holds mu_ exclusively.
  void write_node_locked(const std::string& name, const node_entry& e, std::size_t pos) {
    if (auto r = cluster_.replace_node(pos, usage_of(e)); !r) {  // validated; kept for safety
      failures_.add("internal");
      (void)name;
    }
  }

  /// Writes the served node \p name's usage into the fit cluster. Caller holds mu_ exclusively.
  void refresh_node_locked(const std::string& name) {
    const auto it = nodes_.find(name);
    const auto at = index_.find(name);
    if (it == nodes_.end() || at == index_.end()) return;
    write_node_locked(name, it->second, at->second);
  }

  /// Charges held pod \p uid to its node's sums when the node is served and has its GPUs;
  /// otherwise records why it is skipped (kube::charge's words). Does not write the fit cluster.
  /// Caller holds mu_ exclusively.
  void charge_locked(const std::string& uid, held_entry& h) {
    h.charged = false;
    h.positions.clear();
    const auto it = nodes_.find(h.pod.node);
    if (it == nodes_.end() || !it->second.skip.empty()) {
      std::vector<fit::node> none;
      pod_skips_[uid] = kube::charge(none, h.pod).message();
      return;
    }
    node_entry& e = it->second;
    for (const auto& d : h.pod.devices) {
      std::size_t p = 0;
      while (p < e.node.devices.size() && e.node.devices[p].uuid != d.uuid) ++p;
      if (p == e.node.devices.size()) {
        std::vector<fit::node> one{fit::node{e.node.name, 0, 0, 0, 0, e.node.devices, {}}};
        pod_skips_[uid] = kube::charge(one, h.pod).message();
        h.positions.clear();
        return;
      }
      h.positions.push_back(p);
    }
    for (std::size_t i = 0; i < h.positions.size(); ++i) {
      held_sum& s = e.held[h.positions[i]];
      s.slots += h.pod.devices[i].slots;
      s.memory += h.pod.devices[i].memory;
      s.cores += h.pod.devices[i].cores;
    }
    e.cpu += h.cpu;
    e.memory += h.memory;
    h.charged = true;
    pod_skips_.erase(uid);
  }

  /// Takes held pod \p uid off its node's sums (when charged). Does not write the fit cluster.
  /// Caller holds mu_ exclusively.
  void uncharge_locked(held_entry& h) {
    if (!h.charged) return;
    h.charged = false;
    const auto it = nodes_.find(h.pod.node);
    if (it == nodes_.end()) return;
    node_entry& e = it->second;
    for (std::size_t i = 0; i < h.positions.size(); ++i) {
      if (h.positions[i] >= e.held.size()) continue;
      held_sum& s = e.held[h.positions[i]];
      s.slots -= h.pod.devices[i].slots;
      s.memory -= h.pod.devices[i].memory;
      s.cores -= h.pod.devices[i].cores;
    }
    e.cpu -= h.cpu;
    e.memory -= h.memory;
    h.positions.clear();
  }

  /// Charges every pod bound to node \p name (after the node changed). Caller holds mu_
  /// exclusively.
  void charge_node_locked(const std::string& name) {
    const auto on = pods_on_.find(name);
    if (on == pods_on_.end()) return;
    for (const auto& uid : on->second) {
      const auto h = held_.find(uid);
      if (h != held_.end()) charge_locked(uid, h->second);
    }
  }

  /// Takes every pod bound to node \p name off it (before the node changes). Caller holds mu_
  /// exclusively.
  void uncharge_node_locked(const std::string& name) {
    const auto on = pods_on_.find(name);
    if (on == pods_on_.end()) return;
    for (const auto& uid : on->second) {
      const auto h = held_.find(uid);
      if (h != held_.end()) uncharge_locked(h->second);
    }
  }

  /// Holds pod \p uid as \p h (replacing what it held): charges its node, its namespace's quota
  /// use, and writes the node. Caller holds mu_ exclusively.
  void hold_locked(const std::string& uid, held_entry h) {
    drop_locked(uid);
    held_entry& slot = held_.emplace(uid, std::move(h)).first->second;
    pods_on_[slot.pod.node].insert(uid);
    account_locked(slot.pod, true);
    charge_locked(uid, slot);
    if (slot.charged) refresh_node_locked(slot.pod.node);
  }

  /// Stops holding pod \p uid: its node and namespace get its share back. Returns whether it
  /// was held. Caller holds mu_ exclusively.
  bool drop_locked(const std::string& uid) {
    const auto it = held_.find(uid);
    if (it == held_.end()) return false;
    held_entry& h = it->second;
    const bool charged = h.charged;
    uncharge_locked(h);
    if (charged) refresh_node_locked(h.pod.node);
    account_locked(h.pod, false);
    if (const auto on = pods_on_.find(h.pod.node); on != pods_on_.end()) {
      on->second.erase(uid);
      if (on->second.empty()) pods_on_.erase(on);
    }
    pod_skips_.erase(uid);
    held_.erase(it);
    return true;
  }

  /// Adds (or takes back) what \p pod holds to its namespace's quota use. Caller holds mu_
  /// exclusively.
  void account_locked(const kube::bound_pod& pod, bool add) {
    std::uint64_t mem = 0, cores = 0;
    for (const auto& d : pod.devices) {
      mem += d.memory / fit::k_bytes_per_mib;
      cores += milli_to_cores(d.cores);
    }
    ns_use& u = ns_used_[pod.ref.name_space];
    if (add) {
      u.memory_mib += mem;
      u.cores += cores;
    } else {
      u.memory_mib -= mem;
      u.cores -= cores;
      if (u.memory_mib == 0 && u.cores == 0) ns_used_.erase(pod.ref.name_space);
    }
  }

  /// Caller holds mu_ exclusively. A bound pod not held before teaches the fgd/sfgd workload
  /// when \p learn.
  void upsert_pod_locked(const json& pod, bool learn = true) {
    const kube::pod_ref ref = kube::pod_identity(pod);
    if (ref.uid.empty()) return;
    auto held = kube::bound_pod_from_json(pod);
    if (!held) {
      drop_locked(ref.uid);
      pod_skips_[ref.uid] = held.message();
      return;
    }
    const json* spec = kube::detail::member(pod, "spec");
    const std::string node = spec != nullptr ? kube::detail::string_at(*spec, "nodeName") : "";
    const json* status = kube::detail::member(pod, "status");
    const std::string phase = status != nullptr ? kube::detail::string_at(*status, "phase") : "";
    const bool finished = phase == "Succeeded" || phase == "Failed";
    const auto [cpu, memory] = detail::pod_cpu_memory(pod);
    if (*held || (!node.empty() && !finished && (cpu != 0 || memory != 0))) {
      if (*held && frag_ && learn && held_.count(ref.uid) == 0) {
        if (auto r = kube::pod_request_from_json(pod, cfg_); r && kube::wants_gpu(*r)) {
          workload_.observe(*r);
        }
      }
      held_entry h;
      if (*held) {
        h.pod = std::move(**held);
      } else {  // bound without GPUs: it holds its node's CPU and memory
        h.pod.ref = ref;
        h.pod.node = node;
      }
      h.cpu = cpu;
      h.memory = memory;
      hold_locked(ref.uid, std::move(h));
      return;
    }
    // Holds nothing: finished, or bound without devices. A pod still waiting for its node keeps
    // what a bind here reserved (the watch shows the annotations before the binding).
    if (!node.empty() || finished) {
      drop_locked(ref.uid);
      pod_skips_.erase(ref.uid);
    }
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
  }

  /// The scorer of Pod \p pod: FGD/sfgd against the learned workload under set_frag_policy, or
  /// the simulator's binpack/spread under set_spec_policy (unless the pod names a node policy),
  /// else HAMi's, with the pod's annotations.
  result<node_scorer> scorer_for(const json& pod, const result<fit::pod_request>& request) const {
    if (frag_ && request && !kube::names_node_policy(pod)) {
      return node_scorer{
          fit::hami_frag_scorer(workload_.snapshot(), *frag_, 0,
                                *frag_ == fit::frag_policy::sfgd ? inventory() : nullptr)
              .for_pod(*request)};
    }
    if (spec_ && request && !kube::names_node_policy(pod)) {
      return node_scorer{fit::spec_usage_scorer(*spec_).for_pod(*request)};
    }
    auto sc = kube::pod_scorer(pod, scorer_);
    if (!sc) return std::move(sc).err();
    return node_scorer{*sc};
  }

  /// The served nodes' GPUs for sfgd's host pressure, rebuilt after a node was added, changed or
  /// removed. Takes mu_ shared: the caller must not hold it.
  std::shared_ptr<const fit::gpu_inventory> inventory() const {
    std::lock_guard<std::mutex> guard(inventory_mu_);
    if (inventory_stale_.exchange(false) || !inventory_) {
      std::shared_lock lock(mu_);
      inventory_ = fit::gpu_inventory::of(cluster_.nodes());
    }
    return inventory_;
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
    if (a.request) detail::add_cpu_memory(*pod, *a.request);
    auto scorer = scorer_for(*pod, a.request);
    if (scorer) {
      a.scorer = std::move(*scorer);
    } else if (a.request) {
      a.request = std::move(scorer).err();
    }
    const json* names = kube::detail::member(a.body, "NodeNames");
    const json* nodes = kube::detail::member(a.body, "Nodes");
    if (names != nullptr && names->is_array()) {
      a.names.reserve(names->size());
      // The names move out of the body, which nothing reads them from again.
      for (auto& n : a.body["NodeNames"]) {
        if (!n.is_string()) return fail("NodeNames: expected an array of strings");
        a.names.push_back(std::move(n.get_ref<std::string&>()));
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
    evaluation ev;
    ev.candidates.resize(a.names.size());
    fit::fit_options opt;
    opt.report_nodes = true;
    std::shared_lock lock(mu_);
    auto d =
        std::visit([&](const auto& sc) { return cluster_.fit(*a.request, sc, opt); }, a.scorer);
    for (std::size_t i = 0; i < a.names.size(); ++i) {
      candidate_result& c = ev.candidates[i];
      const auto at = index_.find(a.names[i]);
      if (at == index_.end()) {
        if (a.request && !kube::wants_gpu(*a.request)) {  // kube-scheduler checked its CPU
          c.feasible = true;
          continue;
        }
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

  void remember(const kube::pod_ref& pod, const fit::pod_request& req, const node_scorer& scorer) {
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
        if (!r) return result_error("invalid_request", "pod " + b.pod.key() + ": " + r.message());
        detail::add_cpu_memory(*pod, *r);
        auto sc = scorer_for(*pod, r);
        if (!sc) return result_error("invalid_request", sc.message());
        req = remembered{std::move(*r), std::move(*sc)};
      }
    }
    if (!req) {
      return result_error("not_filtered", "pod " + b.pod.key() + " (uid " + b.pod.uid +
                                              "): not seen by filter; expected filter before bind");
    }
    if (kube::wants_gpu(req->request)) {
      bool known = false;
      {
        std::shared_lock lock(mu_);
        known = index_.count(b.node) != 0;
      }
      if (!known && node_fetcher_) {
        if (auto node = node_fetcher_("", b.node)) {
          upsert_node(*node);
        }
      }
    }
    {
      std::unique_lock lock(mu_);
      if (const auto it = held_.find(b.pod.uid); it != held_.end() && it->second.own) {
        return result_error("already_bound",
                            "pod " + b.pod.key() + ": already bound to " + it->second.pod.node);
      }
      const bool gpu = kube::wants_gpu(req->request);
      const auto at = index_.find(b.node);
      // A pod without GPUs on a node the extender knows holds its CPU and memory there.
      if (gpu || at != index_.end()) {
        if (at == index_.end()) {
          const auto skipped = nodes_.find(b.node);
          return result_error("node_unknown",
                              "node " + b.node + ": " +
                                  (skipped != nodes_.end() && !skipped->second.skip.empty()
                                       ? "skipped: " + skipped->second.skip
                                       : std::string("not registered")));
        }
        const fit::node& n = cluster_.nodes()[at->second];
        if (const std::string over = gpu ? quota_excess(b.pod.name_space, req->request, n) : "";
            !over.empty()) {
          return result_error("quota", "pod " + b.pod.key() + ": " + over);
        }
        auto d = std::visit(
            [&](const auto& sc) { return fit::fit(std::vector<fit::node>{n}, req->request, sc); },
            req->scorer);
        if (!d) return result_error("invalid_request", "pod " + b.pod.key() + ": " + d.message());
        if (!d->placed) {
          return result_error("no_longer_fits", "pod " + b.pod.key() + " no longer fits node " +
                                                    b.node + ": " +
                                                    fit::format_reasons(d->reasons));
        }
        d->node = at->second;
        if (gpu) {
          auto devices = kube::devices_annotation(n, *d);
          if (!devices) return result_error("encode", devices.message());
          b.devices = std::move(*devices);
        }
        held_entry held;
        held.cpu = d->cpu;
        held.memory = d->host_memory;
        held.pod.ref = b.pod;
        held.pod.node = b.node;
        held.own = true;
        for (const auto& [pos, t] : fit::cluster::collapse(d->containers, n.devices.size())) {
          held.pod.devices.push_back({n.devices[pos].uuid, t.slots, t.memory, t.cores});
        }
        // The decision fits the node's current usage, so charging it is what reserve() does.
        hold_locked(b.pod.uid, std::move(held));
        if (frag_ && gpu) workload_.observe(req->request);
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
    drop_locked(uid);
    if (bindings_.erase(uid) != 0) {
      const auto it = std::find(binding_order_.begin(), binding_order_.end(), uid);
      if (it != binding_order_.end()) binding_order_.erase(it);
    }
  }

  mutable std::shared_mutex mu_;             ///< guards everything below up to the pod cache
  std::map<std::string, node_entry> nodes_;  ///< by name
  std::unordered_map<std::string, held_entry> held_;  ///< pods holding GPUs, by uid
  /// node name -> uids of the held pods bound to it (the node may be unknown or skipped)
  std::unordered_map<std::string, std::unordered_set<std::string>> pods_on_;
  std::unordered_map<std::string, ns_use> ns_used_;  ///< namespace -> what its pods hold
  std::map<std::string, std::string> pod_skips_;     ///< uid -> why it is not charged
  std::map<std::string, std::map<std::string, quota_entry>> quotas_;  ///< namespace -> name ->
  fit::cluster cluster_;
  std::unordered_map<std::string, std::size_t> index_;  ///< node name -> position in cluster_
  std::unordered_map<std::string, binding> bindings_;   ///< by pod uid, for state()
  std::deque<std::string> binding_order_;

  const fit::hami_scorer scorer_;
  std::optional<fit::frag_policy> frag_;  ///< set: pods are placed by FGD or sfgd
  std::optional<fit::hami_policy> spec_;  ///< set: by the simulator's binpack or spread
  fit::workload_histogram workload_;      ///< the target workload (thread-safe itself)
  mutable std::mutex inventory_mu_;       ///< guards inventory_ (taken before mu_, never after)
  mutable std::shared_ptr<const fit::gpu_inventory> inventory_;
  mutable std::atomic<bool> inventory_stale_{true};  ///< set under mu_ when the nodes change
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
