// gpuslice_extender: a Kubernetes scheduler extender over HTTP that places pods' HAMi GPU
// requests with gpuslice's fit engine. See extender.hpp for the verbs and README.md for the
// KubeSchedulerConfiguration that wires it in.
//
//   gpuslice_extender --nodes nodes.json [--pods pods.json] [--listen 127.0.0.1] [--port 8888]
//                     [--node-policy binpack|spread] [--gpu-policy spread|binpack|topology]
//                     [--apiserver http://127.0.0.1:8001] [--verbose]
//
// --port 0 picks a free port; the first line on stdout names the address served. SIGINT and
// SIGTERM stop the server after the requests in flight. Without --apiserver, bind reserves the
// GPUs in memory and reports success (a dry run); with it (e.g. `kubectl proxy`), bind also
// writes HAMi's annotations on the pod and creates its v1.Binding.
#include <fmt/core.h>
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <thread>

#include "extender.hpp"
#include "gpuslice/version.hpp"
#include "http.hpp"
#include "json_file.hpp"
#include "kube.hpp"

namespace {

namespace fit = gpuslice::fit;
namespace kube = gpuslice::kube;
namespace ext = gpuslice::extender;
using kube::json;
using kube::read_json;

constexpr int k_exit_input = 1;
constexpr int k_exit_usage = 2;
constexpr int k_default_port = 8888;
constexpr int k_max_port = 65535;
/// Seconds to connect to, and to wait for, the API server in bind.
constexpr time_t k_apiserver_timeout_s = 5;
/// How often the signal waiter checks whether the server stopped on its own.
constexpr long k_signal_poll_ns = 100000000;
/// HTTP status classes.
constexpr int k_http_ok_min = 200, k_http_ok_max = 299;

constexpr std::string_view k_usage =
    "usage: gpuslice_extender --nodes NODES.json [--pods PODS.json] [--listen ADDR] "
    "[--port N] [--node-policy binpack|spread] [--gpu-policy spread|binpack|topology] "
    "[--apiserver URL] [--verbose]\n";

int fail(const std::string& message) {
  fmt::print(stderr, "gpuslice_extender: {}\n", message);
  return k_exit_input;
}

/// A binder that patches HAMi's annotations onto the pod and creates its v1.Binding through
/// the API server at \p url (no credentials: point it at `kubectl proxy`).
ext::binder apiserver_binder(const std::string& url) {
  return [url](const ext::binding& b) -> std::optional<std::string> {
    httplib::Client cli(url);
    cli.set_connection_timeout(k_apiserver_timeout_s, 0);
    cli.set_read_timeout(k_apiserver_timeout_s, 0);
    cli.set_write_timeout(k_apiserver_timeout_s, 0);
    cli.set_tcp_nodelay(true);
    const std::string pod_path = "/api/v1/namespaces/" + b.pod.name_space + "/pods/" + b.pod.name;
    if (!b.devices.empty()) {
      json ann = {{std::string(kube::k_assigned_node), b.node},
                  {std::string(kube::k_devices_to_allocate), b.devices},
                  {std::string(kube::k_devices_allocated), b.devices},
                  {std::string(kube::k_bind_phase), std::string(kube::k_bind_allocating)},
                  {std::string(kube::k_bind_time), std::to_string(std::time(nullptr))}};
      json patch = {{"metadata", {{"annotations", ann}}}};
      auto r = cli.Patch(pod_path, patch.dump(), "application/merge-patch+json");
      if (!r) return "PATCH " + pod_path + ": " + httplib::to_string(r.error());
      if (r->status < k_http_ok_min || r->status > k_http_ok_max) {
        return "PATCH " + pod_path + ": HTTP " + std::to_string(r->status);
      }
    }
    json binding = {
        {"apiVersion", "v1"},
        {"kind", "Binding"},
        {"metadata", {{"name", b.pod.name}, {"namespace", b.pod.name_space}, {"uid", b.pod.uid}}},
        {"target", {{"apiVersion", "v1"}, {"kind", "Node"}, {"name", b.node}}}};
    auto r = cli.Post(pod_path + "/binding", binding.dump(), "application/json");
    if (!r) return "POST " + pod_path + "/binding: " + httplib::to_string(r.error());
    if (r->status < k_http_ok_min || r->status > k_http_ok_max) {
      return "POST " + pod_path + "/binding: HTTP " + std::to_string(r->status);
    }
    return std::nullopt;
  };
}

}  // namespace

int main(int argc, char** argv) {
  std::string nodes_path, pods_path, listen = "127.0.0.1", apiserver;
  int port = k_default_port;
  bool verbose = false;
  kube::policy_names policy;
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
    if (i + 1 >= argc) {
      fmt::print(stderr, "gpuslice_extender: {} needs a value\n{}", arg, k_usage);
      return k_exit_usage;
    }
    const std::string value = argv[++i];
    if (arg == "--nodes") {
      nodes_path = value;
    } else if (arg == "--pods") {
      pods_path = value;
    } else if (arg == "--listen") {
      listen = value;
    } else if (arg == "--port") {
      std::uint64_t p = 0;
      if (!fit::detail::parse_uint(value, k_max_port, p)) {
        fmt::print(stderr, "gpuslice_extender: --port {}: expected 0..65535\n", value);
        return k_exit_usage;
      }
      port = static_cast<int>(p);
    } else if (arg == "--node-policy") {
      policy.node = value;
    } else if (arg == "--gpu-policy") {
      policy.gpu = value;
    } else if (arg == "--apiserver") {
      apiserver = value;
    } else {
      fmt::print(stderr, "gpuslice_extender: unknown option {}\n{}", arg, k_usage);
      return k_exit_usage;
    }
  }
  if (nodes_path.empty()) {
    fmt::print(stderr, "gpuslice_extender: --nodes is required\n{}", k_usage);
    return k_exit_usage;
  }
  auto scorer = kube::scorer_from_names(policy);
  if (!scorer) return fail(scorer.message());

  auto node_doc = read_json(nodes_path);
  if (!node_doc) return fail(node_doc.message());
  const json* node_items = kube::items(*node_doc);
  if (node_items == nullptr) return fail(nodes_path + ": expected a NodeList or a JSON array");
  auto parsed = kube::nodes_from_items(*node_items, nodes_path);
  if (!parsed) return fail(parsed.message());
  std::vector<fit::node> nodes = std::move(*parsed);
  if (!pods_path.empty()) {
    auto pod_doc = read_json(pods_path);
    if (!pod_doc) return fail(pod_doc.message());
    const json* pod_items = kube::items(*pod_doc);
    if (pod_items == nullptr) return fail(pods_path + ": expected a PodList or a JSON array");
    for (const json& p : *pod_items) {
      auto charged = kube::charge_bound_pod(nodes, p);
      if (!charged) return fail(pods_path + ": " + charged.message());
    }
  }
  auto svc = ext::service::make(std::move(nodes), *scorer);
  if (!svc) return fail(nodes_path + ": " + svc.message());
  ext::service& service = **svc;
  if (!apiserver.empty()) service.set_binder(apiserver_binder(apiserver));

  // Stop on SIGINT/SIGTERM: blocked in every thread, taken by one waiter with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  httplib::Server svr;
  ext::configure(svr);
  ext::install_routes(svr, service, verbose);

  if (port == 0) {
    port = svr.bind_to_any_port(listen);
    if (port < 0) return fail("cannot listen on " + listen + ": " + std::strerror(errno));
  } else if (!svr.bind_to_port(listen, port)) {
    return fail("cannot listen on " + listen + ":" + std::to_string(port) + ": " +
                std::strerror(errno));
  }
  fmt::print(
      "gpuslice {} extender: serving {} nodes on http://{}:{} (node policy {}, GPU "
      "policy {}, bind {})\n",
      GPUSLICE_VERSION_STRING, service.size(), listen, port, policy.node, policy.gpu,
      apiserver.empty() ? "in memory only" : "through " + apiserver);
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
  fmt::print("gpuslice_extender: stopped\n");
  return served ? 0 : k_exit_input;
}
