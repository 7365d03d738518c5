// Load test of the scheduler extender (examples/extender) on the openb GPU node list (Alibaba
// cluster-trace-gpu-v2023: 1,213 nodes, 6,212 GPUs, registered as HAMi would and half filled):
// 10,000 filter + prioritize request pairs over loopback, bodies shaped like kube-scheduler's
// (a full Pod and all 1,213 NodeNames), each timed; p50 and p99 in milliseconds are counters.
// Baselines measured in the same run:
//   - BM_http_floor: the same request and reply bytes over the same server and connection, to
//     a route that neither parses nor places: the cost of HTTP on loopback alone;
//   - BM_inprocess_filter_prioritize: the two verbs called directly, without HTTP.
//
// Usage: bench_extender --nodes=PATH/openb_node_list_gpu_node.csv [benchmark flags]
//        (or GPUSLICE_OPENB_NODES=PATH). The file is read at run time and never shipped.
#include <benchmark/benchmark.h>

#ifdef GPUSLICE_BENCH_EXTENDER

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "extender.hpp"
#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/fit.hpp"
#include "http.hpp"
#include "kube.hpp"
#include "openb_nodes.hpp"

namespace {

namespace fit = gpuslice::fit;
namespace kube = gpuslice::kube;
namespace ext = gpuslice::extender;
using kube::json;

constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;
constexpr std::uint32_t k_seed = 2023;
/// The acceptance run: this many filter + prioritize pairs.
constexpr int k_requests = 10000;
/// Distinct pods cycled through by the requests.
constexpr std::size_t k_pod_mix = 64;
/// Share of GPU memory pre-filled before measuring, so nodes are neither empty nor full.
constexpr double k_prefill_fraction = 0.5;
/// Client timeouts, seconds.
constexpr time_t k_client_timeout_s = 10;
constexpr double k_ms_per_ns = 1e-6;
constexpr double k_p50 = 0.50, k_p99 = 0.99;

std::string g_nodes_path;

/// The openb node list as a Kubernetes NodeList whose nodes carry HAMi's registration.
std::optional<json> openb_node_list(const std::string& path) {
  auto rows = gpuslice_bench::read_openb_rows(path);
  if (!rows) return std::nullopt;
  json items = json::array();
  for (const auto& row : *rows) {
    std::vector<fit::device> devices(row.gpus);
    for (std::size_t i = 0; i < devices.size(); ++i) {
      devices[i].uuid = "GPU-" + row.sn + "-" + std::to_string(i);
      devices[i].index = static_cast<std::uint32_t>(i);
      devices[i].type = "NVIDIA-" + row.model;
      devices[i].numa = static_cast<std::int32_t>(i * 2 / devices.size());
      devices[i].memory_total = gpuslice_bench::model_memory(row.model);
    }
    items.push_back(
        {{"metadata",
          {{"name", row.sn},
           {"annotations",
            {{std::string(kube::k_node_register), fit::encode_node_devices(devices)}}}}}});
  }
  return json{{"apiVersion", "v1"}, {"kind", "NodeList"}, {"items", items}};
}

/// A pending pod as kube-scheduler sends it, asking for one GPU share.
json pod_json(std::size_t i, std::uint64_t mem_mib, std::uint32_t cores) {
  const json limits = {{"nvidia.com/gpu", "1"},
                       {"nvidia.com/gpumem", std::to_string(mem_mib)},
                       {"nvidia.com/gpucores", std::to_string(cores)}};
  return {{"metadata",
           {{"name", "load-" + std::to_string(i)},
            {"namespace", "default"},
            {"uid", "00000000-0000-4000-8000-" + std::to_string(100000000000 + i)},
            {"creationTimestamp", "2026-11-28T09:14:03Z"}}},
          {"spec",
           {{"containers", json::array({{{"name", "main"},
                                         {"image", "registry.example/infer:2.1"},
                                         {"resources", {{"limits", limits}, {"requests", limits}}},
                                         {"terminationMessagePath", "/dev/termination-log"},
                                         {"imagePullPolicy", "IfNotPresent"}}})},
            {"restartPolicy", "Always"},
            {"schedulerName", "gpuslice-scheduler"},
            {"priority", 0}}},
          {"status", {{"phase", "Pending"}, {"qosClass", "BestEffort"}}}};
}

/// Everything the benchmarks share: the half-filled cluster's service, the request bodies,
/// and a server on 127.0.0.1 with an ephemeral port.
struct fixture {
  std::unique_ptr<ext::service> service;
  std::vector<std::string> bodies;  ///< ExtenderArgs with all node names, one per pod
  std::string floor_reply;          ///< a filter reply's bytes, for the floor route
  httplib::Server server;
  std::thread thread;
  int port = -1;

  ~fixture() {
    server.stop();
    if (thread.joinable()) thread.join();
  }
};

fixture* g_fixture = nullptr;

fixture* get_fixture() {
  if (g_fixture != nullptr) return g_fixture;
  auto nodes_json = openb_node_list(g_nodes_path);
  if (!nodes_json) return nullptr;
  std::vector<fit::node> nodes;
  json names = json::array();
  for (const auto& n : (*nodes_json)["items"]) {
    nodes.push_back(*kube::node_from_json(n));
    names.push_back(nodes.back().name);
  }
  // Half fill the GPUs' memory with random shares (deterministic), as bench_fit does.
  auto c = fit::cluster::make(std::move(nodes));
  if (!c) return nullptr;
  std::mt19937 rng(k_seed);
  double total = 0, used = 0;
  for (const auto& n : c->nodes()) {
    for (const auto& d : n.devices) total += static_cast<double>(d.memory_total);
  }
  while (used < k_prefill_fraction * total) {
    fit::container_request r;
    r.count = 1;
    r.memory = (1 + rng() % 12) * k_gib;
    r.cores_percent(10 * (1 + rng() % 5));
    auto d = c->fit(fit::pod_request{{r}},
                    fit::hami_scorer(fit::hami_policy::spread, fit::gpu_policy::spread));
    if (!d || !d->placed) break;
    (void)c->reserve(*d);
    used += static_cast<double>(r.memory);
  }
  auto svc = ext::service::make(c->nodes(), fit::hami_scorer{});
  if (!svc) return nullptr;
  auto* f = new fixture;
  f->service = std::move(*svc);
  std::mt19937 req_rng(k_seed + 1);
  for (std::size_t i = 0; i < k_pod_mix; ++i) {
    const std::uint64_t mem_mib = 1024 * (1 + req_rng() % 8);
    const std::uint32_t cores = 5 * (1 + req_rng() % 10);
    f->bodies.push_back(
        json{{"Pod", pod_json(i, mem_mib, cores)}, {"Nodes", nullptr}, {"NodeNames", names}}
            .dump());
  }
  f->floor_reply = f->service->filter(f->bodies[0]).body;
  ext::configure(f->server);
  ext::install_routes(f->server, *f->service, /*verbose=*/false);
  f->server.Post("/floor", [f](const httplib::Request&, httplib::Response& res) {
    res.set_content(f->floor_reply, "application/json");
  });
  f->port = f->server.bind_to_any_port("127.0.0.1");
  if (f->port < 0) return nullptr;
  f->thread = std::thread([f] { f->server.listen_after_bind(); });
  g_fixture = f;
  return f;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

void report(benchmark::State& state, const std::string& name, const std::vector<double>& ms) {
  state.counters[name + "_p50_ms"] = percentile(ms, k_p50);
  state.counters[name + "_p99_ms"] = percentile(ms, k_p99);
}

double now_ms() {
  return static_cast<double>(std::chrono::steady_clock::now().time_since_epoch().count()) *
         k_ms_per_ns;
}

httplib::Client make_client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_keep_alive(true);
  c.set_connection_timeout(k_client_timeout_s, 0);
  c.set_read_timeout(k_client_timeout_s, 0);
  c.set_write_timeout(k_client_timeout_s, 0);
  c.set_tcp_nodelay(true);
  return c;
}

bool skip_without_nodes(benchmark::State& state, fixture* f) {
  if (f != nullptr) return false;
  state.SkipWithError(gpuslice_bench::k_openb_nodes_missing);
  return true;
}

/// The acceptance run: filter then prioritize, over HTTP, every node a candidate.
void BM_http_filter_prioritize(benchmark::State& state) {
  fixture* f = get_fixture();
  if (skip_without_nodes(state, f)) return;
  auto client = make_client(f->port);
  std::vector<double> filter_ms, prioritize_ms, pair_ms;
  std::size_t i = 0, feasible = 0;
  for (auto _ : state) {
    const std::string& body = f->bodies[i++ % f->bodies.size()];
    const double t0 = now_ms();
    auto fr = client.Post("/filter", body, "application/json");
    const double t1 = now_ms();
    auto pr = client.Post("/prioritize", body, "application/json");
    const double t2 = now_ms();
    if (!fr || !pr || fr->status != ext::k_ok || pr->status != ext::k_ok) {
      state.SkipWithError("a request failed");
      return;
    }
    filter_ms.push_back(t1 - t0);
    prioritize_ms.push_back(t2 - t1);
    pair_ms.push_back(t2 - t0);
    if (i == 1) feasible = json::parse(fr->body)["NodeNames"].size();
  }
  report(state, "filter", filter_ms);
  report(state, "prioritize", prioritize_ms);
  report(state, "pair", pair_ms);
  state.counters["nodes"] = static_cast<double>(f->service->size());
  state.counters["feasible_first"] = static_cast<double>(feasible);
}
BENCHMARK(BM_http_filter_prioritize)
    ->Iterations(k_requests)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// Baseline: the same bytes both ways over the same server, no parsing or placement.
void BM_http_floor(benchmark::State& state) {
  fixture* f = get_fixture();
  if (skip_without_nodes(state, f)) return;
  auto client = make_client(f->port);
  std::vector<double> ms;
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& body = f->bodies[i++ % f->bodies.size()];
    const double t0 = now_ms();
    auto r = client.Post("/floor", body, "application/json");
    ms.push_back(now_ms() - t0);
    if (!r || r->status != ext::k_ok) {
      state.SkipWithError("a request failed");
      return;
    }
  }
  report(state, "floor", ms);
}
BENCHMARK(BM_http_floor)->Iterations(k_requests)->UseRealTime()->Unit(benchmark::kMillisecond);

/// Baseline: the two verbs in process (JSON in and out, the fit over all nodes), no HTTP.
void BM_inprocess_filter_prioritize(benchmark::State& state) {
  fixture* f = get_fixture();
  if (skip_without_nodes(state, f)) return;
  std::vector<double> filter_ms, prioritize_ms;
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& body = f->bodies[i++ % f->bodies.size()];
    const double t0 = now_ms();
    auto fr = f->service->filter(body);
    const double t1 = now_ms();
    auto pr = f->service->prioritize(body);
    const double t2 = now_ms();
    benchmark::DoNotOptimize(fr);
    benchmark::DoNotOptimize(pr);
    filter_ms.push_back(t1 - t0);
    prioritize_ms.push_back(t2 - t1);
  }
  report(state, "filter", filter_ms);
  report(state, "prioritize", prioritize_ms);
}
BENCHMARK(BM_inprocess_filter_prioritize)
    ->Iterations(k_requests / 10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  gpuslice_bench::run_benchmarks(argc, argv, g_nodes_path);
  delete g_fixture;
  return 0;
}

#else  // built without cpp-httplib or nlohmann_json

#include <cstdio>

int main() {
  std::puts("bench_extender: built without cpp-httplib or nlohmann_json; nothing to measure");
  return 0;
}

#endif
