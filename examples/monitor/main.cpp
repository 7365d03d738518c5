/// \file
/// gpuslice's node metrics exporter: GET /metrics in Prometheus' text format over the node's
/// ledger directory (monitor.hpp), with the host GPUs from NVML when it loads, and pod names
/// from the API server when one is configured (else the pod uid of the directory name).
///   gpuslice-monitor --ledger-dir DIR [--listen HOST:PORT] [--node-name NAME]
///                    [--api-server URL | in cluster] [--legacy-metrics] [--nvml-library LIB]

#include <fmt/core.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apiserver.hpp"
#include "monitor.hpp"
#include "nvml.hpp"

namespace {

namespace kube = gpuslice::kube;
namespace mon = gpuslice::monitor;

/// How long a pod-name map from the API server is reused.
constexpr auto k_pod_cache = std::chrono::seconds(10);
/// Deadline of the API server's pod list (a scrape must not hang on it).
constexpr auto k_pod_list_deadline = std::chrono::milliseconds(2000);

httplib::Server* g_server = nullptr;
extern "C" void on_signal(int) {
  if (g_server != nullptr) g_server->stop();
}

void log_line(const std::string& s) { fmt::print(stderr, "gpuslice-monitor: {}\n", s); }

struct options {
  std::string ledger_dir = "/usr/local/vgpu/containers";
  std::string listen = "0.0.0.0:9394";
  std::string node_name;
  std::string api_server;
  std::string nvml_library = gpuslice::node::k_nvml_library;
  bool legacy = false;
  bool no_nvml = false;
};

std::optional<options> parse(int argc, char** argv) {
  options o;
  if (const char* n = std::getenv("NODE_NAME")) o.node_name = n;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) {
        log_line(a + ": expected a value");
        return false;
      }
      out = argv[++i];
      return true;
    };
    if (a == "--ledger-dir") {
      if (!value(o.ledger_dir)) return std::nullopt;
    } else if (a == "--listen") {
      if (!value(o.listen)) return std::nullopt;
    } else if (a == "--node-name") {
      if (!value(o.node_name)) return std::nullopt;
    } else if (a == "--api-server") {
      if (!value(o.api_server)) return std::nullopt;
    } else if (a == "--nvml-library") {
      if (!value(o.nvml_library)) return std::nullopt;
    } else if (a == "--no-nvml") {
      o.no_nvml = true;
    } else if (a == "--legacy-metrics") {
      o.legacy = true;
    } else if (a == "--help" || a == "-h") {
      fmt::print(
          "usage: gpuslice-monitor [--ledger-dir DIR] [--listen HOST:PORT] [--node-name NAME]\n"
          "                        [--api-server URL] [--legacy-metrics] [--nvml-library LIB]"
          " [--no-nvml]\n");
      std::exit(0);
    } else {
      log_line("\"" + a + "\": unknown flag; see --help");
      return std::nullopt;
    }
  }
  const std::size_t colon = o.listen.rfind(':');
  if (colon == std::string::npos || colon + 1 >= o.listen.size() ||
      o.listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    log_line("--listen \"" + o.listen + "\": expected HOST:PORT such as 0.0.0.0:9394");
    return std::nullopt;
  }
  if (o.node_name.empty()) {
    log_line("node name: expected --node-name or NODE_NAME");
    return std::nullopt;
  }
  return o;
}

/// Pod uid -> name for this node's pods, from the API server, cached for k_pod_cache.
class pod_names {
 public:
  pod_names(std::optional<kube::api_client> api, std::string node)
      : api_(std::move(api)), node_(std::move(node)) {}

  std::map<std::string, mon::pod_name> get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!api_) return {};
    const auto now = std::chrono::steady_clock::now();
    if (fetched_ && now - at_ < k_pod_cache) return names_;
    auto l = api_->list(kube::pods_path(), {"", "spec.nodeName=" + node_, ""},
                        std::chrono::duration_cast<std::chrono::milliseconds>(k_pod_list_deadline));
    at_ = now;
    if (!l) {
      if (l.message() != last_error_) log_line("pod names: " + l.message());
      last_error_ = l.message();
      return names_;  // the last good map
    }
    last_error_.clear();
    fetched_ = true;
    names_.clear();
    for (const auto& p : l->items) {
      const auto meta = p.find("metadata");
      if (meta == p.end() || !meta->is_object()) continue;
      const std::string uid = meta->value("uid", "");
      if (!uid.empty())
        names_[uid] = {meta->value("namespace", "default"), meta->value("name", "")};
    }
    return names_;
  }

 private:
  std::mutex mu_;
  std::optional<kube::api_client> api_;
  std::string node_;
  std::map<std::string, mon::pod_name> names_;
  std::chrono::steady_clock::time_point at_{};
  bool fetched_ = false;
  std::string last_error_;
};

}  // namespace

int main(int argc, char** argv) {
  auto o = parse(argc, argv);
  if (!o) return 2;
  std::optional<kube::api_client> api;
  if (!o->api_server.empty()) {
    auto c = kube::config_from_url(o->api_server);
    if (!c) {
      log_line(c.message());
      return 2;
    }
    api.emplace(*c);
  } else if (std::getenv("KUBERNETES_SERVICE_HOST") != nullptr) {
    auto c = kube::in_cluster_config();
    if (!c) {
      log_line(c.message());
      return 2;
    }
    api.emplace(*c);
  }
  std::unique_ptr<gpuslice::node::nvml> nv;
  if (!o->no_nvml) {
    auto n = gpuslice::node::nvml::load(o->nvml_library);
    if (n) {
      nv = std::move(*n);
    } else {
      log_line(n.message() + "; host GPU metrics are left out");
    }
  }
  mon::exporter ex(o->ledger_dir, o->node_name, o->legacy, &log_line);
  pod_names names(std::move(api), o->node_name);

  httplib::Server svr;
  svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    std::optional<std::vector<gpuslice::node::gpu_info>> gpus;
    if (nv) {
      if (auto g = nv->gpus()) gpus = std::move(*g);
    }
    const double now =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    res.set_content(ex.scrape(names.get(), gpus ? &*gpus : nullptr, now),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  svr.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
  g_server = &svr;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  const std::size_t colon = o->listen.rfind(':');
  const std::string host = o->listen.substr(0, colon);
  const int port = std::stoi(o->listen.substr(colon + 1));
  int bound = port;
  if (port == 0) {
    bound = svr.bind_to_any_port(host);
  } else if (!svr.bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound < 0) {
    log_line("--listen " + o->listen + ": cannot bind");
    return 1;
  }
  // The port on stdout, so a test that asked for port 0 learns it.
  fmt::print("{}\n", bound);
  std::fflush(stdout);
  log_line("serving /metrics on " + host + ":" + std::to_string(bound) + " over " + o->ledger_dir);
  svr.listen_after_bind();
  g_server = nullptr;
  return 0;
}
