// gpuslice_extender: a Kubernetes scheduler extender over HTTP that places pods' HAMi GPU
// requests with gpuslice's fit engine. See extender.hpp for the verbs and README.md for the
// KubeSchedulerConfiguration that wires it in.
//
//   gpuslice_extender [--nodes nodes.json [--pods pods.json]]
//                     [--apiserver URL | --in-cluster | --kubeconfig FILE [--context NAME]]
//                     [--listen 127.0.0.1] [--port 8888]
//                     [--node-policy binpack|spread|fgd|sfgd|sim-binpack|sim-spread
//                      [--workload FILE]]
//                     [--gpu-policy spread|binpack|topology-aware[,mutex,numa]]
//                     [--bind-timeout-ms 3000] [HAMi chart keys] [--verbose]
//
// ResourceQuotas limiting gpumem and gpucores come from --quotas FILE or, with --watch-quotas,
// from the API server. Where the cluster comes from: --nodes/--pods read files once (a node or pod
// that does not map is skipped with a line on stderr); without --nodes, --apiserver (e.g. `kubectl
// proxy`) or
// --in-cluster (the pod's service account) lists and watches nodes and pods. --port 0 picks a
// free port; the first line on stdout names the address served. SIGINT and SIGTERM stop the
// server after the requests in flight. --kubeconfig runs it outside the cluster with a kubeconfig's
// context (server, CA, client certificate and key, or token). Without an API server bind reserves
// the GPUs in memory and reports success (a dry run); with one it also writes HAMi's annotations on
// the pod and creates its v1.Binding, within --bind-timeout-ms in all (below kube-scheduler's
// httpTimeout).
//
// --tls-cert/--tls-key serve HTTPS (kube-scheduler's enableHTTPS with tlsConfig.caFile), which
// keeps the token off the wire. --auth-token-file FILE: every verb needs the file's token, as the
// URL prefix kube-scheduler's extender urlPrefix sends (https://svc:8888/TOKEN) or as a bearer
// header; GET /state, /metrics, /healthz and /readyz stay open. --leader-elect: replicas share a
// coordination.k8s.io/v1 Lease
// (--lease-namespace, --lease-name, --lease-duration-s); only the holder binds and releases, and
// only its /readyz answers 200, so a Service routes to it. With an API server, a pod that no node
// fits or whose bind fails gets a Warning Event (reasons FilteringFailed, BindingFailed, as HAMi).
// A node whose allocatable --resource-name is 0 (its device plugin gone) offers no GPUs.
#include <fmt/core.h>
#include <httplib.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "apiserver.hpp"
#include "cli.hpp"
#include "extender.hpp"
#include "gpuslice/version.hpp"
#include "http.hpp"
#include "json_file.hpp"
#include "kube.hpp"
#include "kubeconfig.hpp"

namespace {

namespace fit = gpuslice::fit;
namespace kube = gpuslice::kube;
namespace ext = gpuslice::extender;
namespace api = gpuslice::kube;
namespace cli = gpuslice::cli;

constexpr std::string_view k_program = "gpuslice_extender";
using kube::json;
using kube::read_json;

constexpr int k_exit_input = 1;
constexpr int k_exit_usage = 2;
constexpr int k_default_port = 8888;
constexpr int k_max_port = 65535;
/// Bind's whole budget for the API server (patch and binding together): below the 5 s
/// httpTimeout of examples/extender/scheduler-config.yaml, so the extender answers first.
constexpr long k_default_bind_timeout_ms = 3000;
/// Longest wait at start for the first node and pod lists before serving anyway.
constexpr auto k_initial_list_wait = std::chrono::seconds(10);
/// How often the signal waiter checks whether the server stopped on its own.
constexpr long k_signal_poll_ns = 100000000;

/// The node policies that place as the simulator's binpack and spread (docs/placement.md).
constexpr std::string_view k_sim_binpack = "sim-binpack";
constexpr std::string_view k_sim_spread = "sim-spread";

constexpr std::string_view k_usage =
    "usage: gpuslice_extender [--nodes NODES.json [--pods PODS.json]] "
    "[--apiserver URL | --in-cluster | --kubeconfig FILE [--context NAME]] [--listen ADDR] "
    "[--port N] "
    "[--node-policy binpack|spread|fgd|sfgd|sim-binpack|sim-spread] [--workload FILE] "
    "[--gpu-policy binpack|spread|topology-aware[,mutex][,numa]] "
    "[--bind-timeout-ms MS] [--quotas QUOTAS.json] [--watch-quotas] [--resource-name NAME] "
    "[--resource-mem NAME] "
    "[--resource-mem-percentage NAME] [--resource-cores NAME] [--default-gpu-num N] "
    "[--default-mem MIB] [--default-cores PERCENT] [--memory-factor N] "
    "[--auth-token-file FILE] [--tls-cert FILE --tls-key FILE] [--leader-elect [--lease-namespace "
    "NS] [--lease-name NAME] "
    "[--lease-duration-s S] [--identity ID]] [--verbose]\n";

/// Leader election defaults: client-go's lease duration, and its retry period as a fraction.
constexpr long k_default_lease_duration_s = 15;
constexpr long k_max_lease_duration_s = 3600;
/// The lease is tried (acquired or renewed) this many times per lease duration.
constexpr long k_lease_tries_per_duration = 5;
/// A leader that could not renew for this fraction of the duration stops acting as the leader
/// (client-go's renewDeadline is 10 s of 15 s), before another replica may take the lease.
constexpr double k_renew_deadline_fraction = 2.0 / 3.0;
/// Events waiting to be posted; more are dropped (counted on stderr), so a flood of failing
/// pods never grows memory or delays the verbs.
constexpr std::size_t k_max_pending_events = 1000;
/// An Event repeated (same pod, reason and message) within this window is not posted again
/// (client-go's event correlator aggregates within 10 minutes).
constexpr auto k_event_repeat_window = std::chrono::minutes(10);
/// Events remembered for that; the memory is cleared when it fills.
constexpr std::size_t k_max_recent_events = 10000;
/// The component named as the source of Events.
constexpr std::string_view k_component = "gpuslice-extender";
/// Longest Event message (the API server refuses messages over 1 KiB in events.k8s.io).
constexpr std::size_t k_max_event_message = 1024;

int fail(const std::string& message) {
  fmt::print(stderr, "gpuslice_extender: {}\n", message);
  return k_exit_input;
}

/// A binder that patches HAMi's annotations onto the pod and creates its v1.Binding through
/// \p api, both within \p budget.
ext::binder apiserver_binder(std::shared_ptr<api::api_client> api,
                             std::chrono::milliseconds budget) {
  return [api, budget](const ext::binding& b) -> std::optional<std::string> {
    const auto end = std::chrono::steady_clock::now() + budget;
    auto left = [&] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
    };
    if (!b.devices.empty()) {
      json ann = {{std::string(kube::k_assigned_node), b.node},
                  {std::string(kube::k_devices_to_allocate), b.devices},
                  {std::string(kube::k_devices_allocated), b.devices},
                  {std::string(kube::k_bind_phase), std::string(kube::k_bind_allocating)},
                  {std::string(kube::k_bind_time), std::to_string(std::time(nullptr))}};
      json patch = {{"metadata", {{"annotations", ann}}}};
      if (left().count() <= 0) return "no time left for PATCH";
      auto r = api->merge_patch(api::pod_path(b.pod.name_space, b.pod.name), patch, left());
      if (!r) return r.message();
    }
    json binding = {
        {"apiVersion", "v1"},
        {"kind", "Binding"},
        {"metadata", {{"name", b.pod.name}, {"namespace", b.pod.name_space}, {"uid", b.pod.uid}}},
        {"target", {{"apiVersion", "v1"}, {"kind", "Node"}, {"name", b.node}}}};
    if (left().count() <= 0) return "no time left for the Binding";
    auto r = api->post(api::binding_path(b.pod.name_space, b.pod.name), binding, left());
    if (!r) return r.message();
    return std::nullopt;
  };
}

/// Kubernetes' MicroTime of now ("2026-01-02T15:04:05.000000Z"). Thread-safe.
std::string micro_time_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                          now.time_since_epoch() - std::chrono::seconds(secs))
                          .count();
  std::tm utc{};
  gmtime_r(&secs, &utc);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:06d}Z", buf, micros);
}

/// Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does: the
/// holder renews it every duration / k_lease_tries_per_duration; another replica takes it once
/// it has seen the same record unchanged for the lease's duration (its own clock, never the
/// holder's). Thread-safe: run() on one thread, is_leader() from any.
class lease_elector {
 public:
  lease_elector(std::shared_ptr<api::api_client> api, std::string ns, std::string name,
                std::string identity, long duration_s)
      : api_(std::move(api)),
        path_(api::lease_path(ns, name)),
        ns_(std::move(ns)),
        name_(std::move(name)),
        identity_(std::move(identity)),
        duration_(std::chrono::seconds(duration_s)) {}

  /// True while this replica holds the lease and renewed it within the renew deadline.
  bool is_leader() const {
    if (!leader_.load()) return false;
    const auto renewed =
        std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(renewed_.load()));
    return std::chrono::steady_clock::now() - renewed <
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(
               duration_ * k_renew_deadline_fraction);
  }

  /// Tries the lease until \p stop fires; then gives it up when held (so a follower takes over
  /// at once rather than after the duration). Blocks the calling thread.
  void run(api::canceller& stop) {
    const auto period = std::max(std::chrono::milliseconds(100),
                                 std::chrono::duration_cast<std::chrono::milliseconds>(duration_) /
                                     k_lease_tries_per_duration);
    while (!stop.cancelled()) {
      const bool held = try_acquire_or_renew(period);
      if (held != leader_.load()) {
        fmt::print(stderr, "gpuslice_extender: leader election: {} the lease {}/{} as {}\n",
                   held ? "holds" : "lost", ns_, name_, identity_);
      }
      leader_.store(held);
      if (stop.sleep_for(period)) break;
    }
    if (leader_.exchange(false)) release();
  }

 private:
  using clock = std::chrono::steady_clock;

  /// One try: create the lease, renew it, or take it over when expired. True when held.
  bool try_acquire_or_renew(std::chrono::milliseconds deadline) {
    const std::string now = micro_time_now();
    auto cur = api_->get(path_, deadline);
    if (!cur) {
      if (api::http_status(cur.err()) != 404) {
        fmt::print(stderr, "gpuslice_extender: leader election: {}\n", cur.message());
        return false;
      }
      json lease = {{"apiVersion", "coordination.k8s.io/v1"},
                    {"kind", "Lease"},
                    {"metadata", {{"name", name_}, {"namespace", ns_}}},
                    {"spec", spec(now, now, 0)}};
      auto made = api_->post(collection_path(), lease, deadline);
      if (made) renewed_.store(clock::now().time_since_epoch().count());
      return static_cast<bool>(made);
    }
    json& lease = *cur;
    const json* sp = kube::detail::member(lease, "spec");
    const json record = sp != nullptr ? *sp : json::object();
    const std::string holder = kube::detail::string_at(record, "holderIdentity");
    if (record != observed_) {
      observed_ = record;
      observed_at_ = clock::now();
    }
    long held_for_s = duration_.count();
    if (const json* d = kube::detail::member(record, "leaseDurationSeconds");
        d != nullptr && d->is_number_integer()) {
      held_for_s = d->get<long>();
    }
    const bool mine = holder == identity_;
    if (!holder.empty() && !mine &&
        clock::now() < observed_at_ + std::chrono::seconds(held_for_s)) {
      return false;  // another replica holds it and renews it
    }
    std::int64_t transitions = 0;
    if (const json* t = kube::detail::member(record, "leaseTransitions");
        t != nullptr && t->is_number_integer()) {
      transitions = t->get<std::int64_t>();
    }
    const std::string acquired = mine ? kube::detail::string_at(record, "acquireTime", now) : now;
    lease["spec"] = spec(acquired, now, mine ? transitions : transitions + 1);
    auto put = api_->put(path_, lease, deadline);  // carries the resourceVersion read: 409 if stale
    if (!put) {
      if (api::http_status(put.err()) != 409) {
        fmt::print(stderr, "gpuslice_extender: leader election: {}\n", put.message());
      }
      return false;
    }
    const json* new_spec = kube::detail::member(*put, "spec");
    observed_ = new_spec != nullptr ? *new_spec : json::object();
    observed_at_ = clock::now();
    renewed_.store(observed_at_.time_since_epoch().count());
    return true;
  }

  /// Empties the holder, so that another replica need not wait for the lease to expire.
  void release() {
    auto cur = api_->get(path_);
    if (!cur || kube::detail::string_at((*cur)["spec"], "holderIdentity") != identity_) return;
    (*cur)["spec"]["holderIdentity"] = "";
    (*cur)["spec"]["leaseDurationSeconds"] = 1;
    auto r = api_->put(path_, *cur);
    fmt::print(stderr, "gpuslice_extender: leader election: {}\n",
               r ? "released the lease" : r.message());
  }

  json spec(const std::string& acquired, const std::string& renewed,
            std::int64_t transitions) const {
    return {{"holderIdentity", identity_},
            {"leaseDurationSeconds", duration_.count()},
            {"acquireTime", acquired},
            {"renewTime", renewed},
            {"leaseTransitions", transitions}};
  }

  std::string collection_path() const { return path_.substr(0, path_.rfind('/')); }

  const std::shared_ptr<api::api_client> api_;
  const std::string path_, ns_, name_, identity_;
  const std::chrono::seconds duration_;
  std::atomic<bool> leader_{false};
  std::atomic<clock::rep> renewed_{0};  ///< steady-clock ticks of the last renewal
  json observed_;                       ///< run()'s thread only
  clock::time_point observed_at_;       ///< run()'s thread only
};

/// Posts core/v1 Events about pods from one thread, so a verb never waits for the API server.
/// Thread-safe.
class event_recorder {
 public:
  explicit event_recorder(std::shared_ptr<api::api_client> api)
      : api_(std::move(api)), worker_([this] { loop(); }) {}
  ~event_recorder() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  event_recorder(const event_recorder&) = delete;
  event_recorder& operator=(const event_recorder&) = delete;

  /// Queues a Warning Event with \p reason and \p message about \p pod (dropped when the queue
  /// is full).
  void warn(const kube::pod_ref& pod, std::string_view reason, std::string message) {
    if (pod.name.empty()) return;
    if (message.size() > k_max_event_message) message.resize(k_max_event_message);
    const std::string now = micro_time_now();
    const std::string stamp = now.substr(0, now.find('.')) + "Z";
    const auto nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    json ev = {{"apiVersion", "v1"},
               {"kind", "Event"},
               {"metadata",
                {{"name", fmt::format("{}.{:x}", pod.name, nanos)}, {"namespace", pod.name_space}}},
               {"involvedObject",
                {{"apiVersion", "v1"},
                 {"kind", "Pod"},
                 {"namespace", pod.name_space},
                 {"name", pod.name},
                 {"uid", pod.uid}}},
               {"reason", reason},
               {"message", message},
               {"type", "Warning"},
               {"count", 1},
               {"firstTimestamp", stamp},
               {"lastTimestamp", stamp},
               {"eventTime", nullptr},
               {"source", {{"component", k_component}}},
               {"reportingComponent", k_component},
               {"reportingInstance", k_component}};
    std::lock_guard lock(mu_);
    // The same reason and message about the same pod again within the window is not posted:
    // kube-scheduler retries an unschedulable pod, and each retry would add an Event.
    const auto now_steady = std::chrono::steady_clock::now();
    const std::string key = pod.uid + '\n' + pod.key() + '\n' + std::string(reason) + '\n' +
                            ev["message"].get_ref<const std::string&>();
    if (const auto seen = recent_.find(key);
        seen != recent_.end() && now_steady - seen->second < k_event_repeat_window) {
      return;
    }
    if (recent_.size() >= k_max_recent_events) recent_.clear();
    recent_[key] = now_steady;
    if (queue_.size() >= k_max_pending_events) {
      ++dropped_;
      return;
    }
    queue_.emplace_back(pod.name_space, std::move(ev));
    cv_.notify_one();
  }

 private:
  void loop() {
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return done_ || !queue_.empty(); });
      if (done_) return;  // events still queued at exit are dropped: they are advisory
      auto [ns, ev] = std::move(queue_.front());
      queue_.pop_front();
      const std::size_t dropped = std::exchange(dropped_, 0);
      lock.unlock();
      if (dropped != 0) {
        fmt::print(stderr, "gpuslice_extender: {} events dropped (queue full)\n", dropped);
      }
      auto r = api_->post(api::events_path(ns), ev);
      if (!r) fmt::print(stderr, "gpuslice_extender: event: {}\n", r.message());
      lock.lock();
    }
  }

  const std::shared_ptr<api::api_client> api_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::string, json>> queue_;
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> recent_;
  std::size_t dropped_ = 0;
  bool done_ = false;
  std::thread worker_;
};

/// Records HAMi's Warning Events from the verbs' replies: FilteringFailed when no node is left
/// for a pod (with each node's reason), BindingFailed when bind answers an error.
void record_events(event_recorder& events, std::string_view verb, const std::string& body,
                   const ext::reply& r) {
  if (r.status != ext::k_ok || (verb != "filter" && verb != "bind")) return;
  const json args = json::parse(body, nullptr, false);
  const json out = json::parse(r.body, nullptr, false);
  if (!args.is_object() || !out.is_object()) return;
  if (verb == "bind") {
    const std::string err = kube::detail::string_at(out, "Error");
    if (err.empty()) return;
    kube::pod_ref pod{kube::detail::string_at(args, "PodNamespace", "default"),
                      kube::detail::string_at(args, "PodName"),
                      kube::detail::string_at(args, "PodUID")};
    events.warn(pod, "BindingFailed", err);
    return;
  }
  const json* names = kube::detail::member(out, "NodeNames");
  const json* nodes = kube::detail::member(out, "Nodes");
  const json* items = nodes != nullptr ? kube::detail::member(*nodes, "items") : nullptr;
  const bool none_left = (names != nullptr && names->is_array() && names->empty()) ||
                         (items != nullptr && items->is_array() && items->empty());
  if (!none_left || !kube::detail::member(args, "Pod")) return;
  std::string message;
  std::size_t failed = 0;
  for (const char* key : {"FailedNodes", "FailedAndUnresolvableNodes"}) {
    const json* f = kube::detail::member(out, key);
    if (f == nullptr || !f->is_object()) continue;
    for (const auto& [node, why] : f->items()) {
      ++failed;
      message += (message.empty() ? "" : "; ") + node + ": " +
                 (why.is_string() ? why.get<std::string>() : why.dump());
    }
  }
  events.warn(kube::pod_identity(args["Pod"]), "FilteringFailed",
              fmt::format("no available node, {} nodes do not meet: {}", failed, message));
}

/// \p node as the service reads it: with a --resource-name other than nvidia.com/gpu, that
/// resource's allocatable stands in for nvidia.com/gpu's (the service checks the default name).
json node_for_service(const json& node, const kube::config& cfg) {
  if (cfg.resource_count == kube::k_resource_gpu) return node;
  json n = node;
  const json* status = kube::detail::member(n, "status");
  const json* alloc = status != nullptr ? kube::detail::member(*status, "allocatable") : nullptr;
  if (alloc == nullptr || !alloc->is_object()) return n;
  json& a = n["status"]["allocatable"];
  a.erase(std::string(kube::k_resource_gpu));
  if (a.contains(cfg.resource_count)) a[std::string(kube::k_resource_gpu)] = a[cfg.resource_count];
  return n;
}

/// Every node of \p items as node_for_service() gives it.
json nodes_for_service(const json& items, const kube::config& cfg) {
  if (cfg.resource_count == kube::k_resource_gpu) return items;
  json out = json::array();
  for (const json& n : items) out.push_back(node_for_service(n, cfg));
  return out;
}

/// The token in \p path (surrounding whitespace dropped): characters safe in a URL path
/// segment only, so kube-scheduler's urlPrefix carries it unchanged.
gpuslice::result<std::string> read_token(const std::string& path) {
  std::ifstream f(path);
  if (!f) return gpuslice::make_error(gpuslice::errc::not_found, path + ": cannot read the token");
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string t = ss.str();
  const auto first = t.find_first_not_of(" \t\r\n");
  const auto last = t.find_last_not_of(" \t\r\n");
  t = first == std::string::npos ? std::string() : t.substr(first, last - first + 1);
  constexpr std::size_t k_min_token = 16;
  const bool safe = std::all_of(t.begin(), t.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.' ||
           c == '~';
  });
  if (t.size() < k_min_token || !safe) {
    return gpuslice::make_error(gpuslice::errc::invalid_value,
                                path + ": expected a token of at least " +
                                    std::to_string(k_min_token) +
                                    " characters from A-Z a-z 0-9 - _ . ~");
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string nodes_path, pods_path, quotas_path, listen = "127.0.0.1", apiserver;
  std::string workload_path;  // --workload: seeds fgd/sfgd's target workload
  bool watch_quotas = false;
  bool in_cluster = false;
  int port = k_default_port;
  bool verbose = false;
  long bind_timeout_ms = k_default_bind_timeout_ms;
  std::string kubeconfig, kube_context, tls_cert, tls_key;
  std::string token_file, lease_ns = "kube-system", lease_name = "gpuslice-extender", identity;
  bool leader_elect = false;
  long lease_duration_s = k_default_lease_duration_s;
  kube::policy_names policy;
  kube::config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      fmt::print("{}", k_usage);
      return 0;
    }
    if (arg == "--verbose") {
      verbose = true;
      continue;
    }
    if (arg == "--in-cluster" || arg == "--watch-quotas") {
      (arg == "--in-cluster" ? in_cluster : watch_quotas) = true;
      continue;
    }
    if (arg == "--leader-elect") {
      leader_elect = true;
      continue;
    }
    if (i + 1 >= argc) {
      fmt::print(stderr, "gpuslice_extender: {} needs a value\n{}", arg, k_usage);
      return k_exit_usage;
    }
    const std::string value = argv[++i];
    if (auto applied = cli::config_flag(k_program, arg, value, cfg)) {
      if (!*applied) return k_exit_usage;
      continue;
    }
    std::uint64_t n = 0;
    if (arg == "--nodes") {
      nodes_path = value;
    } else if (arg == "--pods") {
      pods_path = value;
    } else if (arg == "--quotas") {
      quotas_path = value;
    } else if (arg == "--listen") {
      listen = value;
    } else if (arg == "--port") {
      if (!cli::number(k_program, arg, value, k_max_port, n)) return k_exit_usage;
      port = static_cast<int>(n);
    } else if (arg == "--node-policy") {
      policy.node = value;
    } else if (arg == "--gpu-policy") {
      policy.gpu = value;
    } else if (arg == "--workload") {
      workload_path = value;
    } else if (arg == "--apiserver") {
      apiserver = value;
    } else if (arg == "--bind-timeout-ms") {
      constexpr std::uint64_t k_max_ms = 60000;
      if (!cli::number(k_program, arg, value, k_max_ms, n) || n == 0) return k_exit_usage;
      bind_timeout_ms = static_cast<long>(n);
    } else if (arg == "--kubeconfig") {
      kubeconfig = value;
    } else if (arg == "--context") {
      kube_context = value;
    } else if (arg == "--tls-cert") {
      tls_cert = value;
    } else if (arg == "--tls-key") {
      tls_key = value;
    } else if (arg == "--auth-token-file") {
      token_file = value;
    } else if (arg == "--lease-namespace") {
      lease_ns = value;
    } else if (arg == "--lease-name") {
      lease_name = value;
    } else if (arg == "--identity") {
      identity = value;
    } else if (arg == "--lease-duration-s") {
      if (!cli::number(k_program, arg, value, k_max_lease_duration_s, n) || n == 0) {
        return k_exit_usage;
      }
      lease_duration_s = static_cast<long>(n);
    } else if (arg == "--memory-factor") {
      if (!cli::number(k_program, arg, value, fit::k_int32_max, n) || n == 0) return k_exit_usage;
      cfg.memory_factor = static_cast<std::uint32_t>(n);
    } else {
      fmt::print(stderr, "gpuslice_extender: unknown option {}\n{}", arg, k_usage);
      return k_exit_usage;
    }
  }
  if (nodes_path.empty() && apiserver.empty() && !in_cluster && kubeconfig.empty()) {
    fmt::print(stderr,
               "gpuslice_extender: expected --nodes, --apiserver, --in-cluster or --kubeconfig\n{}",
               k_usage);
    return k_exit_usage;
  }
  if (static_cast<int>(!apiserver.empty()) + static_cast<int>(in_cluster) +
          static_cast<int>(!kubeconfig.empty()) >
      1) {
    fmt::print(stderr,
               "gpuslice_extender: expected one of --apiserver, --in-cluster, --kubeconfig\n{}",
               k_usage);
    return k_exit_usage;
  }
  // fgd and sfgd place by fit/hami_frag.hpp; HAMi's scorer (binpack nodes) stays for pods
  // that name a node policy.
  // sim-binpack and sim-spread place by the simulator's binpack and spread
  // (fit::spec_usage_scorer), which choose the GPUs themselves.
  const std::optional<fit::frag_policy> frag = kube::frag_policy_of(policy.node);
  std::optional<fit::hami_policy> spec;
  if (policy.node == k_sim_binpack) spec = fit::hami_policy::binpack;
  if (policy.node == k_sim_spread) spec = fit::hami_policy::spread;
  if (!frag && !spec && policy.node != "binpack" && policy.node != "spread") {
    return fail("--node-policy " + policy.node + ": expected " +
                std::string(kube::k_node_policy_choices) + ", or " + std::string(k_sim_binpack) +
                " or " + std::string(k_sim_spread));
  }
  if (!workload_path.empty() && !frag) return fail("--workload needs --node-policy fgd or sfgd");
  auto scorer =
      kube::scorer_from_names(frag || spec ? kube::policy_names{"binpack", policy.gpu} : policy);
  if (!scorer) return fail(scorer.message());
  cfg.mutex = kube::parse_gpu_policy(policy.gpu)->mutex;  // valid: scorer_from_names read it

  std::shared_ptr<api::api_client> client;
  // Certificates embedded in a kubeconfig go to a private directory, removed at exit.
  std::string kube_data_dir;
  struct remove_dir {
    std::string& dir;
    ~remove_dir() {
      if (dir.empty()) return;
      for (const char* f : {"ca.crt", "client.crt", "client.key"}) {
        std::remove((dir + "/" + f).c_str());
      }
      rmdir(dir.c_str());
    }
  } remove_kube_data{kube_data_dir};
  if (!kubeconfig.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/gpuslice-extender-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return fail(tmpl + ": cannot make a private directory: " + std::strerror(errno));
    }
    kube_data_dir = tmpl;
    auto c = api::load_kubeconfig(kubeconfig, kube_data_dir, kube_context);
    if (!c) return fail(c.message());
    apiserver = c->url;
    client = std::make_shared<api::api_client>(std::move(*c));
  } else if (in_cluster || !apiserver.empty()) {
    auto c = in_cluster ? api::in_cluster_config() : api::config_from_url(apiserver);
    if (!c) return fail(c.message());
    client = std::make_shared<api::api_client>(std::move(*c));
  }
  if (leader_elect && !client) {
    fmt::print(stderr, "gpuslice_extender: --leader-elect needs an API server\n{}", k_usage);
    return k_exit_usage;
  }
  ext::route_options routes;
  if (!token_file.empty()) {
    auto t = read_token(token_file);
    if (!t) return fail(t.message());
    routes.token = std::move(*t);
  }
  // The serving certificate and key are checked before the cluster is read.
  std::unique_ptr<httplib::Server> server;
  if (!tls_cert.empty() || !tls_key.empty()) {
    if (tls_cert.empty() || tls_key.empty()) {
      fmt::print(stderr, "gpuslice_extender: expected --tls-cert and --tls-key together\n{}",
                 k_usage);
      return k_exit_usage;
    }
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
    auto tls = std::make_unique<httplib::SSLServer>(tls_cert.c_str(), tls_key.c_str());
    if (!tls->is_valid()) {
      return fail(tls_cert + ", " + tls_key +
                  ": cannot load the certificate and its key (expected PEM files that match)");
    }
    server = std::move(tls);
#else
    return fail("--tls-cert: HTTPS needs cpp-httplib built with OpenSSL");
#endif
  } else {
    server = std::make_unique<httplib::Server>();
  }
  if (identity.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    identity = std::string(host) + "_" + std::to_string(getpid());
  }

  auto svc = ext::service::make({}, *scorer, ext::k_default_pod_cache, cfg);
  if (!svc) return fail(svc.message());
  ext::service& service = **svc;
  if (frag) {
    std::vector<fit::weighted_class> seed;
    if (!workload_path.empty()) {
      auto w = fit::read_workload(workload_path);
      if (!w) return fail(w.message());
      seed = std::move(*w);
    }
    service.set_frag_policy(*frag, std::move(seed));
  }
  if (spec) service.set_spec_policy(*spec);
  if (!nodes_path.empty()) {
    auto node_doc = read_json(nodes_path);
    if (!node_doc) return fail(node_doc.message());
    const json* node_items = kube::items(*node_doc);
    if (node_items == nullptr) return fail(nodes_path + ": expected a NodeList or a JSON array");
    const json served_nodes = nodes_for_service(*node_items, cfg);
    for (const auto& why : kube::nodes_from_items(served_nodes, nodes_path).skipped) {
      fmt::print(stderr, "gpuslice_extender: {}\n", why);
    }
    service.replace_nodes(served_nodes);
    if (!pods_path.empty()) {
      auto pod_doc = read_json(pods_path);
      if (!pod_doc) return fail(pod_doc.message());
      const json* pod_items = kube::items(*pod_doc);
      if (pod_items == nullptr) return fail(pods_path + ": expected a PodList or a JSON array");
      service.replace_pods(*pod_items);
      const json st = json::parse(service.state());
      for (const auto& [uid, why] : st["skipped_pods"].items()) {
        fmt::print(stderr, "gpuslice_extender: {}: pod uid {}: {} (pod not charged)\n", pods_path,
                   uid, why.get<std::string>());
      }
    }
  }
  if (!quotas_path.empty()) {
    auto doc = read_json(quotas_path);
    if (!doc) return fail(doc.message());
    const json* items = kube::items(*doc);
    if (items == nullptr) return fail(quotas_path + ": expected a ResourceQuotaList or an array");
    service.replace_quotas(*items);
  }
  const std::chrono::milliseconds bind_budget(bind_timeout_ms);
  if (client) {
    service.set_binder(apiserver_binder(client, bind_budget));
    service.set_pod_fetcher([client, bind_budget](const std::string& ns,
                                                  const std::string& name) -> std::optional<json> {
      auto p = client->get(api::pod_path(ns, name), bind_budget / 2);
      if (!p) return std::nullopt;
      return std::move(*p);
    });
    service.set_node_fetcher(
        [client, bind_budget, cfg](const std::string&,
                                   const std::string& name) -> std::optional<json> {
          auto n = client->get(api::node_path(name), bind_budget / 2);
          if (!n) return std::nullopt;
          return node_for_service(*n, cfg);
        });
  }

  // Stop on SIGINT/SIGTERM: blocked in every thread, taken by one waiter with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // List and watch nodes and pods when no file gives them.
  // One canceller per informer: a canceller stops the one watch attached to it.
  api::canceller cancel_nodes, cancel_pods, cancel_quotas;
  std::vector<std::thread> informers;
  std::mutex listed_mu;
  std::condition_variable listed_cv;
  int listed = 0;
  const bool watch = client && nodes_path.empty();
  if (watch) {
    enum class kind { nodes, pods, quotas };
    auto informer = [&](std::string path, kind k, api::canceller& cancel) {
      return std::thread([&, path, k] {
        const bool nodes = k == kind::nodes;
        bool first = true;
        client->list_and_watch(
            path, {},
            [&](api::list_result& l) {
              if (nodes) {
                const json served_nodes = nodes_for_service(l.items, cfg);
                for (const auto& why : kube::nodes_from_items(served_nodes, path).skipped) {
                  fmt::print(stderr, "gpuslice_extender: {}\n", why);
                }
                service.replace_nodes(served_nodes);
              } else if (k == kind::pods) {
                service.replace_pods(l.items);
              } else {
                service.replace_quotas(l.items);
              }
              if (first && k != kind::quotas) {
                first = false;
                std::lock_guard lock(listed_mu);
                ++listed;
                listed_cv.notify_all();
              }
              return true;
            },
            [&](const api::watch_event& e) {
              const bool gone = e.type == "DELETED";
              if (!gone && e.type != "ADDED" && e.type != "MODIFIED") return true;
              if (nodes) {
                if (gone) {
                  service.delete_node(kube::detail::string_at(e.object["metadata"], "name"));
                } else {
                  service.upsert_node(node_for_service(e.object, cfg));
                }
              } else if (k == kind::pods) {
                gone ? service.delete_pod(e.object) : service.upsert_pod(e.object);
              } else {
                gone ? service.delete_quota(e.object) : service.upsert_quota(e.object);
              }
              return true;
            },
            cancel,
            [&](const gpuslice::error& err) {
              fmt::print(stderr, "gpuslice_extender: watch {}: {}\n", path, err.message);
            });
      });
    };
    informers.push_back(informer(api::nodes_path(), kind::nodes, cancel_nodes));
    informers.push_back(informer(api::pods_path(), kind::pods, cancel_pods));
    if (watch_quotas) {
      informers.push_back(informer("/api/v1/resourcequotas", kind::quotas, cancel_quotas));
    }
    std::unique_lock lock(listed_mu);
    if (!listed_cv.wait_for(lock, k_initial_list_wait, [&] { return listed == 2; })) {
      fmt::print(stderr, "gpuslice_extender: nodes and pods not listed yet; serving anyway\n");
    }
  }

  std::unique_ptr<event_recorder> events;
  if (client) {
    events = std::make_unique<event_recorder>(client);
    routes.on_reply = [rec = events.get()](std::string_view verb, const std::string& body,
                                           const ext::reply& r) {
      record_events(*rec, verb, body, r);
    };
  }
  api::canceller cancel_election;
  std::unique_ptr<lease_elector> elector;
  if (leader_elect) {
    elector =
        std::make_unique<lease_elector>(client, lease_ns, lease_name, identity, lease_duration_s);
    routes.is_leader = [e = elector.get()] { return e->is_leader(); };
    informers.emplace_back([&] { elector->run(cancel_election); });
  }

  httplib::Server& svr = *server;
  ext::configure(svr);
  ext::install_routes(svr, service, verbose, routes);

  auto stop_informers = [&] {
    cancel_nodes.cancel();
    cancel_pods.cancel();
    cancel_quotas.cancel();
    cancel_election.cancel();
    for (auto& t : informers) t.join();
  };
  if (port == 0) {
    port = svr.bind_to_any_port(listen);
    if (port < 0) {
      stop_informers();
      return fail("cannot listen on " + listen + ": " + std::strerror(errno));
    }
  } else if (!svr.bind_to_port(listen, port)) {
    stop_informers();
    return fail("cannot listen on " + listen + ":" + std::to_string(port) + ": " +
                std::strerror(errno));
  }
  const std::string source =
      watch
          ? "watched through " + (in_cluster ? std::string("the in-cluster API server") : apiserver)
          : "from " + nodes_path;
  fmt::print(
      "gpuslice {} extender: serving {} nodes on {}://{}:{} (node policy {}, GPU "
      "policy {}, nodes {}, bind {}{}{})\n",
      GPUSLICE_VERSION_STRING, service.size(), tls_cert.empty() ? "http" : "https", listen, port,
      policy.node, policy.gpu, source, client ? "through the API server" : "in memory only",
      routes.token.empty() ? "" : ", verbs need the token",
      leader_elect ? ", leader election on lease " + lease_ns + "/" + lease_name + " as " + identity
                   : std::string());
  std::fflush(stdout);

  std::atomic<bool> done{false};
  std::thread waiter([&] {
    const timespec poll{0, k_signal_poll_ns};
    while (!done.load()) {
      if (sigtimedwait(&stop_signals, nullptr, &poll) > 0) {
        svr.stop();
        return;
      }
    }
  });
  const bool served = svr.listen_after_bind();
  done.store(true);
  waiter.join();
  stop_informers();
  fmt::print("gpuslice_extender: stopped\n");
  return served ? 0 : k_exit_input;
}
