// gpuslice_webhook: a mutating admission webhook (AdmissionReview v1 or v1beta1 over HTTPS) that
// gives GPU pods the gpuslice scheduler and HAMi's defaults. See webhook.hpp for the rules and
// examples/deploy/base/webhook.yaml for the Service and MutatingWebhookConfiguration.
//
//   gpuslice_webhook --cert tls.crt --key tls.key [--listen 0.0.0.0] [--port 8443]
//                    [--scheduler-name gpuslice-scheduler] [--fail-open]
//                    [--default-gpu-num 1] [--default-mem MIB] [--default-cores PERCENT]
//                    [--resource-name NAME] [--resource-mem NAME] [--resource-mem-percentage NAME]
//                    [--resource-cores NAME] [--resource-priority NAME] [--verbose]
//                    [--dra off|annotated|all --apiserver URL | --in-cluster]
//                    [--dra-device-class NAME] [--dra-driver NAME]
//
// POST /mutate (or /webhook, HAMi's path) answers an AdmissionReview; GET /healthz "ok". --port 0
// picks a free port; the first line on stdout names the address served. SIGINT and SIGTERM stop it.
//
// --dra annotated|all turns the GPU requests of the pods it selects into ResourceClaims (dra.hpp):
// before answering, the webhook creates the ResourceClaimTemplates they name (an existing one is
// kept; nothing on a dry run), and refuses the pod if it cannot, so no pod names a template that
// does not exist.
#include <fmt/core.h>
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "apiserver.hpp"
#include "cli.hpp"
#include "gpuslice/version.hpp"
#include "webhook.hpp"

namespace {

namespace wh = gpuslice::webhook;
namespace cli = gpuslice::cli;
namespace api = gpuslice::kube;

constexpr std::string_view k_program = "gpuslice_webhook";

constexpr int k_exit_input = 1;
constexpr int k_exit_usage = 2;
constexpr int k_default_port = 8443;
constexpr int k_max_port = 65535;
/// The API server's webhook timeout is at most 30 s (10 s by default); reads stall no longer.
constexpr time_t k_io_timeout_s = 10;
/// An AdmissionReview of a Pod is small; anything larger is refused by the server.
constexpr std::size_t k_max_body_bytes = std::size_t{8} << 20;
constexpr long k_signal_poll_ns = 100000000;
constexpr int k_http_bad_request = 400;

constexpr std::string_view k_usage =
    "usage: gpuslice_webhook --cert TLS.crt --key TLS.key [--listen ADDR] [--port N] "
    "[--scheduler-name NAME] [--fail-open] [--default-gpu-num N] [--default-mem MIB] "
    "[--default-cores PERCENT] [--resource-name NAME] [--resource-mem NAME] "
    "[--resource-mem-percentage NAME] [--resource-cores NAME] [--resource-priority NAME] "
    "[--verbose] [--dra off|annotated|all (--apiserver URL | --in-cluster)] "
    "[--dra-device-class NAME] [--dra-driver NAME]\n";
/// HTTP 409: the template exists already (same name, same content: names derive from it).
constexpr int k_http_conflict = 409;

/// Creates the templates a review's pod names; an error names the first that failed.
gpuslice::result<bool> create_templates(api::api_client& client, const wh::outcome& out) {
  for (const wh::json& t : out.templates) {
    const std::string ns = t["metadata"]["namespace"].get<std::string>();
    const std::string path =
        "/apis/resource.k8s.io/v1/namespaces/" + api::url_encode(ns) + "/resourceclaimtemplates";
    auto made = client.post(path, t);
    if (!made && api::http_status(made.err()) != k_http_conflict) {
      return gpuslice::make_error(gpuslice::errc::io_error,
                                  "ResourceClaimTemplate " + ns + "/" +
                                      t["metadata"]["name"].get<std::string>() + ": " +
                                      made.message());
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string cert, key, listen = "0.0.0.0";
  int port = k_default_port;
  bool verbose = false;
  bool in_cluster = false;
  std::string apiserver;
  wh::settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      fmt::print("{}", k_usage);
      return 0;
    }
    if (arg == "--verbose" || arg == "--fail-open" || arg == "--in-cluster") {
      (arg == "--verbose" ? verbose : arg == "--fail-open" ? s.fail_open : in_cluster) = true;
      continue;
    }
    if (i + 1 >= argc) {
      fmt::print(stderr, "gpuslice_webhook: {} needs a value\n{}", arg, k_usage);
      return k_exit_usage;
    }
    const std::string value = argv[++i];
    if (auto applied = cli::config_flag(k_program, arg, value, s.cfg)) {
      if (!*applied) return k_exit_usage;
      continue;
    }
    std::uint64_t n = 0;
    if (arg == "--cert") {
      cert = value;
    } else if (arg == "--key") {
      key = value;
    } else if (arg == "--listen") {
      listen = value;
    } else if (arg == "--port") {
      if (!cli::number(k_program, arg, value, k_max_port, n)) return k_exit_usage;
      port = static_cast<int>(n);
    } else if (arg == "--scheduler-name") {
      s.scheduler_name = value;
    } else if (arg == "--resource-priority") {
      s.cfg.resource_priority = value;
    } else if (arg == "--dra") {
      if (!wh::dra::mode_from_name(value, s.dra.which)) {
        fmt::print(stderr, "gpuslice_webhook: --dra {}: expected off, annotated or all\n{}", value,
                   k_usage);
        return k_exit_usage;
      }
    } else if (arg == "--dra-device-class") {
      s.dra.device_class = value;
    } else if (arg == "--dra-driver") {
      s.dra.driver = value;
    } else if (arg == "--apiserver") {
      apiserver = value;
    } else {
      fmt::print(stderr, "gpuslice_webhook: unknown option {}\n{}", arg, k_usage);
      return k_exit_usage;
    }
  }
  if (cert.empty() || key.empty()) {
    fmt::print(stderr,
               "gpuslice_webhook: --cert and --key are required (the API server calls "
               "webhooks over HTTPS only)\n{}",
               k_usage);
    return k_exit_usage;
  }

  std::shared_ptr<api::api_client> client;
  if (s.dra.which != wh::dra::mode::off) {
    if (apiserver.empty() == !in_cluster) {
      fmt::print(stderr,
                 "gpuslice_webhook: --dra {} creates ResourceClaimTemplates: expected one of "
                 "--apiserver URL or --in-cluster\n{}",
                 s.dra.which == wh::dra::mode::all ? "all" : "annotated", k_usage);
      return k_exit_usage;
    }
    auto c = in_cluster ? api::in_cluster_config() : api::config_from_url(apiserver);
    if (!c) {
      fmt::print(stderr, "gpuslice_webhook: {}\n", c.message());
      return k_exit_input;
    }
    client = std::make_shared<api::api_client>(std::move(*c));
  }
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  httplib::SSLServer svr(cert.c_str(), key.c_str());
  if (!svr.is_valid()) {
    fmt::print(stderr, "gpuslice_webhook: {} / {}: cannot load the certificate and key\n", cert,
               key);
    return k_exit_input;
  }
  svr.set_payload_max_length(k_max_body_bytes);
  svr.set_read_timeout(k_io_timeout_s, 0);
  svr.set_write_timeout(k_io_timeout_s, 0);
  auto mutate = [&s, &client, verbose](const httplib::Request& req, httplib::Response& res) {
    auto out = wh::review(req.body, s);
    if (!out) {
      res.status = k_http_bad_request;
      res.set_content(wh::json{{"error", out.message()}}.dump(), "application/json");
      fmt::print(stderr, "gpuslice_webhook: {}\n", out.message());
      return;
    }
    if (out->allowed && !out->templates.empty() && !out->dry_run && client) {
      // Fail closed: a pod naming a template that does not exist would wait forever.
      if (auto made = create_templates(*client, *out); !made) {
        wh::json& r = out->review["response"];
        r.erase("patch");
        r.erase("patchType");
        r["allowed"] = false;
        out->allowed = false;
        out->message = "gpuslice webhook: " + made.message();
        r["status"] = {{"code", k_http_bad_request}, {"message", out->message}};
      }
    }
    if (verbose || !out->allowed || !out->message.empty()) {
      fmt::print(stderr, "gpuslice_webhook: {} {}{}\n",
                 out->review["response"]["uid"].get<std::string>(),
                 out->allowed ? (out->mutated ? "mutated" : "allowed") : "refused",
                 out->message.empty() ? "" : ": " + out->message);
    }
    res.set_content(out->review.dump(), "application/json");
  };
  svr.Post("/mutate", mutate);
  svr.Post("/webhook", mutate);  // HAMi's path, for a configuration written for HAMi
  svr.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
  if (port == 0) {
    port = svr.bind_to_any_port(listen);
    if (port < 0) {
      fmt::print(stderr, "gpuslice_webhook: cannot listen on {}\n", listen);
      return k_exit_input;
    }
  } else if (!svr.bind_to_port(listen, port)) {
    fmt::print(stderr, "gpuslice_webhook: cannot listen on {}:{}\n", listen, port);
    return k_exit_input;
  }
  fmt::print("gpuslice {} webhook: serving on https://{}:{} (scheduler {}, fail {})\n",
             GPUSLICE_VERSION_STRING, listen, port, s.scheduler_name,
             s.fail_open ? "open" : "closed");
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
  fmt::print("gpuslice_webhook: stopped\n");
  return served ? 0 : k_exit_input;
}
