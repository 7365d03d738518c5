// gpuslice_extender: a Kubernetes scheduler extender over HTTP that places pods' HAMi GPU
// requests with gpuslice's fit engine. See extender.hpp for the verbs and README.md for the
// KubeSchedulerConfiguration that wires it in.
//
//   gpuslice_extender [--nodes nodes.json [--pods pods.json]] [--apiserver URL | --in-cluster]
//                     [--listen 127.0.0.1] [--port 8888]
//                     [--node-policy binpack|spread|fgd|sfgd [--workload FILE]]
//                     [--gpu-policy spread|binpack|topology-aware[,mutex,numa]]
//                     [--bind-timeout-ms 3000] [HAMi chart keys] [--verbose]
//
// ResourceQuotas limiting gpumem and gpucores come from --quotas FILE or, with --watch-quotas,
// from the API server. Where the cluster comes from: --nodes/--pods read files once (a node or pod
// that does not map is skipped with a line on stderr); without --nodes, --apiserver (e.g. `kubectl
// proxy`) or
// --in-cluster (the pod's service account) lists and watches nodes and pods. --port 0 picks a
// free port; the first line on stdout names the address served. SIGINT and SIGTERM stop the
// server after the requests in flight. Without an API server bind reserves the GPUs in memory
// and reports success (a dry run); with one it also writes HAMi's annotations on the pod and
// creates its v1.Binding, within --bind-timeout-ms in all (below kube-scheduler's httpTimeout).
#include <fmt/core.h>
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "apiserver.hpp"
#include "cli.hpp"
#include "extender.hpp"
#include "gpuslice/version.hpp"
#include "http.hpp"
#include "json_file.hpp"
#include "kube.hpp"

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

constexpr std::string_view k_usage =
    "usage: gpuslice_extender [--nodes NODES.json [--pods PODS.json]] "
    "[--apiserver URL | --in-cluster] [--listen ADDR] [--port N] "
    "[--node-policy binpack|spread|fgd|sfgd] [--workload FILE] "
    "[--gpu-policy binpack|spread|topology-aware[,mutex][,numa]] "
    "[--bind-timeout-ms MS] [--quotas QUOTAS.json] [--watch-quotas] [--resource-name NAME] "
    "[--resource-mem NAME] "
    "[--resource-mem-percentage NAME] [--resource-cores NAME] [--default-gpu-num N] "
    "[--default-mem MIB] [--default-cores PERCENT] [--memory-factor N] [--verbose]\n";

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

}  // namespace

int main(int argc, char** argv) {
  std::string nodes_path, pods_path, quotas_path, listen = "127.0.0.1", apiserver;
  std::string workload_path;  // --workload: seeds fgd/sfgd's target workload
  bool watch_quotas = false;
  bool in_cluster = false;
  int port = k_default_port;
  bool verbose = false;
  long bind_timeout_ms = k_default_bind_timeout_ms;
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
    } else if (arg == "--memory-factor") {
      if (!cli::number(k_program, arg, value, fit::k_int32_max, n) || n == 0) return k_exit_usage;
      cfg.memory_factor = static_cast<std::uint32_t>(n);
    } else {
      fmt::print(stderr, "gpuslice_extender: unknown option {}\n{}", arg, k_usage);
      return k_exit_usage;
    }
  }
  if (nodes_path.empty() && apiserver.empty() && !in_cluster) {
    fmt::print(stderr, "gpuslice_extender: expected --nodes, --apiserver or --in-cluster\n{}",
               k_usage);
    return k_exit_usage;
  }
  // fgd and sfgd place by fit/hami_frag.hpp; HAMi's scorer (binpack nodes) stays for pods
  // that name a node policy.
  const std::optional<fit::frag_policy> frag = kube::frag_policy_of(policy.node);
  if (!frag && policy.node != "binpack" && policy.node != "spread") {
    return fail("--node-policy " + policy.node + ": expected " +
                std::string(kube::k_node_policy_choices));
  }
  if (!workload_path.empty() && !frag) return fail("--workload needs --node-policy fgd or sfgd");
  auto scorer = kube::scorer_from_names(frag ? kube::policy_names{"binpack", policy.gpu} : policy);
  if (!scorer) return fail(scorer.message());
  cfg.mutex = kube::parse_gpu_policy(policy.gpu)->mutex;  // valid: scorer_from_names read it

  std::shared_ptr<api::api_client> client;
  if (in_cluster || !apiserver.empty()) {
    auto c = in_cluster ? api::in_cluster_config() : api::config_from_url(apiserver);
    if (!c) return fail(c.message());
    client = std::make_shared<api::api_client>(std::move(*c));
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
  if (!nodes_path.empty()) {
    auto node_doc = read_json(nodes_path);
    if (!node_doc) return fail(node_doc.message());
    const json* node_items = kube::items(*node_doc);
    if (node_items == nullptr) return fail(nodes_path + ": expected a NodeList or a JSON array");
    for (const auto& why : kube::nodes_from_items(*node_items, nodes_path).skipped) {
      fmt::print(stderr, "gpuslice_extender: {}\n", why);
    }
    service.replace_nodes(*node_items);
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
        [client, bind_budget](const std::string&, const std::string& name) -> std::optional<json> {
          auto n = client->get(api::node_path(name), bind_budget / 2);
          if (!n) return std::nullopt;
          return std::move(*n);
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
                for (const auto& why : kube::nodes_from_items(l.items, path).skipped) {
                  fmt::print(stderr, "gpuslice_extender: {}\n", why);
                }
                service.replace_nodes(l.items);
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
                  service.upsert_node(e.object);
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

  httplib::Server svr;
  ext::configure(svr);
  ext::install_routes(svr, service, verbose);

  auto stop_informers = [&] {
    cancel_nodes.cancel();
    cancel_pods.cancel();
    cancel_quotas.cancel();
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
      "gpuslice {} extender: serving {} nodes on http://{}:{} (node policy {}, GPU "
      "policy {}, nodes {}, bind {})\n",
      GPUSLICE_VERSION_STRING, service.size(), listen, port, policy.node, policy.gpu, source,
      client ? "through the API server" : "in memory only");
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
