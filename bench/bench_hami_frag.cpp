// fgd and sfgd (fit/hami_frag.hpp) on the openb node list: the cost of one scheduling cycle,
// beside HAMi's binpack run in the same shape (GPUs chosen on every feasible node before nodes
// are scored, which fgd and sfgd need), in the same run.
//
//   bench_hami_frag --nodes=PATH/openb_node_list_gpu_node.csv
//
// The cluster is half filled (GPU memory) with random fractional pods, as in bench_fit. The
// workload is learned from 256 fractional requests, kept to `classes` classes. `warm` = 1:
// the workload and the cluster stay fixed, so each thread's per-node memos stay valid (the
// steady state between changes); 0: every decision gets a new class list, so every node's memo
// is rebuilt (the worst case: a class added or evicted at every pod).
#include <benchmark/benchmark.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/hami_frag.hpp"
#include "openb_cluster.hpp"

namespace {

using namespace gpuslice::fit;

constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;
constexpr std::uint32_t k_seed = 2023;
/// Requests cycled through by the decisions, and observed into the workload.
constexpr std::size_t k_request_mix = 256;

std::string g_nodes_path;

std::optional<cluster> make_cluster() {
  auto nodes = gpuslice_bench::openb_fit_nodes(g_nodes_path);
  if (!nodes) return std::nullopt;
  return gpuslice_bench::half_filled(std::move(*nodes), k_seed);
}

const cluster* shared_cluster(benchmark::State& state) {
  static std::optional<cluster> c = make_cluster();
  if (!c) state.SkipWithError(gpuslice_bench::k_openb_nodes_missing);
  return c ? &*c : nullptr;
}

std::vector<pod_request> fractional_requests() {
  std::mt19937 rng(k_seed + 1);
  std::vector<pod_request> out;
  for (std::size_t i = 0; i < k_request_mix; ++i) {
    container_request r;
    r.count = 1;
    r.memory = (1 + rng() % 8) * k_gib;
    r.cores_percent(5 * (1 + rng() % 10));
    r.cpu = 1000 * (1 + rng() % 4);
    out.push_back(pod_request{{r}});
  }
  return out;
}

double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  constexpr double k_us_per_s = 1e6, k_ns_per_us = 1e3;
  return static_cast<double>(ts.tv_sec) * k_us_per_s +
         static_cast<double>(ts.tv_nsec) / k_ns_per_us;
}

/// HAMi's binpack with GPUs chosen on every feasible node (the engine's cost for fgd/sfgd).
struct binpack_allocate_everywhere {
  static constexpr bool k_needs_allocation = true;
  hami_scorer inner{hami_policy::binpack, gpu_policy::binpack};
  double node_score(const candidate& c) const { return inner.node_score(c); }
  double gpu_score(const node& n, const device_state& d, const share& s) const {
    return inner.gpu_score(n, d, s);
  }
  bool topology() const { return false; }
};

template <class MakeScorer>
void run(benchmark::State& state, MakeScorer make) {
  const cluster* c = shared_cluster(state);
  if (c == nullptr) return;
  static const auto pods = fractional_requests();
  std::vector<double> cpu_us;
  std::size_t i = 0;
  for (auto _ : state) {
    const pod_request& p = pods[i++ % pods.size()];
    const double c0 = thread_cpu_us();
    auto d = c->fit(p, make(p));
    const double c1 = thread_cpu_us();
    benchmark::DoNotOptimize(d);
    cpu_us.push_back(c1 - c0);
  }
  std::sort(cpu_us.begin(), cpu_us.end());
  auto pct = [&](double q) {
    return cpu_us[static_cast<std::size_t>(q * static_cast<double>(cpu_us.size() - 1))];
  };
  state.counters["p50_cpu_us"] = pct(0.50);
  state.counters["p99_cpu_us"] = pct(0.99);
  state.counters["decisions_per_s"] =
      benchmark::Counter(static_cast<double>(cpu_us.size()), benchmark::Counter::kIsRate);
}

/// The workload of the request mix, kept to \p classes classes.
std::shared_ptr<const target_workload> learned(std::size_t classes) {
  workload_histogram h({classes, k_default_workload_half_life});
  for (const auto& p : fractional_requests()) h.observe(p);
  return h.snapshot();
}

// args: policy (0 fgd, 1 sfgd), classes, warm (1: memos stay valid; 0: a new class list each
// decision), host (1: sfgd's host pressure over the cluster's GPU inventory)
void BM_frag(benchmark::State& state) {
  const frag_policy policy = state.range(0) == 0 ? frag_policy::fgd : frag_policy::sfgd;
  const auto w = learned(static_cast<std::size_t>(state.range(1)));
  const bool warm = state.range(2) != 0;
  const cluster* c = shared_cluster(state);
  const auto inventory =
      state.range(3) != 0 && c != nullptr ? gpu_inventory::of(c->nodes()) : nullptr;
  run(state, [&](const pod_request& p) {
    if (warm) return hami_frag_scorer(w, policy, 0, inventory).for_pod(p);
    // Same classes and weights, new class list: no memo matches.
    std::vector<double> weights;
    for (std::size_t j = 0; j < w->set().classes.size(); ++j) {
      weights.push_back(w->set_probability(j));
    }
    auto fresh = std::make_shared<const target_workload>(workload_classes::of(w->set().classes),
                                                         std::move(weights));
    return hami_frag_scorer(fresh, policy, 0, inventory).for_pod(p);
  });
}
BENCHMARK(BM_frag)
    ->Args({0, 32, 1, 0})
    ->Args({1, 32, 1, 0})
    ->Args({1, 32, 1, 1})
    ->Args({1, 8, 1, 0})
    ->Args({1, 32, 0, 0})
    ->Args({1, 32, 0, 1})
    ->ArgNames({"sfgd", "classes", "warm", "host"})
    ->Unit(benchmark::kMicrosecond);

void BM_binpack_allocate_everywhere(benchmark::State& state) {
  run(state, [](const pod_request&) { return binpack_allocate_everywhere{}; });
}
BENCHMARK(BM_binpack_allocate_everywhere)->Unit(benchmark::kMicrosecond);

void BM_binpack(benchmark::State& state) {
  run(state,
      [](const pod_request&) { return hami_scorer(hami_policy::binpack, gpu_policy::binpack); });
}
BENCHMARK(BM_binpack)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  gpuslice_bench::run_benchmarks(argc, argv, g_nodes_path);
  return 0;
}
