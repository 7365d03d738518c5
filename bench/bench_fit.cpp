// Fit engine decisions on the openb GPU node list (Alibaba cluster-trace-gpu-v2023: 1,213 nodes,
// 6,212 GPUs), per policy, with a baseline measured in the same run:
//   - single-GPU fractional requests, HAMi binpack / spread / default, against the same policy
//     run in HAMi's shape (the GPUs chosen on every feasible node before nodes are scored);
//   - 8-GPU topology requests on NVLink-like boards;
//   - best-linked GPU subsets by branch-and-bound against listing every subset.
// Each decision is timed; p50/p99 (microseconds) are reported as counters.
//
// Usage: bench_fit --nodes=PATH/openb_node_list_gpu_node.csv [benchmark flags]
//        (or GPUSLICE_OPENB_NODES=PATH). The file is read at run time and never shipped.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gpuslice/fit/fit.hpp"
#include "openb_cluster.hpp"

namespace {

using namespace gpuslice::fit;

constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;
constexpr std::uint32_t k_seed = 2023;
/// Requests cycled through by the single-GPU benchmarks.
constexpr std::size_t k_request_mix = 256;
/// NVLink-like classes on an 8-GPU board: same pair, same quad, across quads.
constexpr std::int32_t k_link_pair = 100, k_link_quad = 50, k_link_far = 10;
constexpr std::size_t k_board = 8;

std::string g_nodes_path;

link_matrix nvlink_board() {
  link_matrix m(k_board);
  for (std::size_t a = 0; a < k_board; ++a) {
    for (std::size_t b = a + 1; b < k_board; ++b) {
      m.set(a, b, a / 2 == b / 2 ? k_link_pair : a / 4 == b / 4 ? k_link_quad : k_link_far);
    }
  }
  return m;
}

/// The openb cluster, half filled with random fractional pods (deterministic); 8-GPU nodes get
/// NVLink-like boards.
std::optional<cluster> make_cluster() {
  auto nodes = gpuslice_bench::openb_fit_nodes(g_nodes_path, [](node& n) {
    if (n.devices.size() == k_board) n.links = nvlink_board();
  });
  if (!nodes) return std::nullopt;
  return gpuslice_bench::half_filled(std::move(*nodes), k_seed);
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

/// HAMi's shape: the same policy, but GPUs are chosen on every feasible node before scoring.
struct allocate_everywhere {
  static constexpr bool k_needs_allocation = true;
  hami_scorer inner;
  double node_score(const candidate& c) const { return inner.node_score(c); }
  double gpu_score(const node& n, const device_state& d, const share& s) const {
    return inner.gpu_score(n, d, s);
  }
  bool topology() const { return inner.topology(); }
};

/// CPU time consumed by the calling thread, microseconds.
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  constexpr double k_us_per_s = 1e6, k_ns_per_us = 1e3;
  return static_cast<double>(ts.tv_sec) * k_us_per_s +
         static_cast<double>(ts.tv_nsec) / k_ns_per_us;
}

template <class Scorer>
void run_decisions(benchmark::State& state, const cluster& c, const std::vector<pod_request>& pods,
                   const Scorer& scorer) {
  // Wall time per decision (steady clock) and CPU time of this thread per decision: on a shared
  // machine the second excludes time the thread spent preempted.
  std::vector<double> us, cpu_us;
  us.reserve(1 << 16);
  cpu_us.reserve(1 << 16);
  std::size_t i = 0, placed = 0;
  for (auto _ : state) {
    const double c0 = thread_cpu_us();
    const auto t0 = std::chrono::steady_clock::now();
    auto d = c.fit(pods[i++ % pods.size()], scorer);
    const auto t1 = std::chrono::steady_clock::now();
    const double c1 = thread_cpu_us();
    benchmark::DoNotOptimize(d);
    placed += d && d->placed ? 1 : 0;
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    cpu_us.push_back(c1 - c0);
  }
  auto pct = [](std::vector<double>& v, double p) {
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
  };
  state.counters["p50_us"] = pct(us, 0.50);
  state.counters["p99_us"] = pct(us, 0.99);
  state.counters["p50_cpu_us"] = pct(cpu_us, 0.50);
  state.counters["p99_cpu_us"] = pct(cpu_us, 0.99);
  state.counters["placed_pct"] =
      100.0 * static_cast<double>(placed) / static_cast<double>(us.size());
  state.counters["decisions_per_s"] =
      benchmark::Counter(static_cast<double>(us.size()), benchmark::Counter::kIsRate);
}

const cluster* shared_cluster(benchmark::State& state) {
  static std::optional<cluster> c = make_cluster();
  if (!c) state.SkipWithError(gpuslice_bench::k_openb_nodes_missing);
  return c ? &*c : nullptr;
}

// arg 0: binpack/binpack, 1: spread/spread, 2: HAMi default (node binpack, GPU spread)
hami_scorer policy(std::int64_t which) {
  switch (which) {
    case 0:
      return {hami_policy::binpack, gpu_policy::binpack};
    case 1:
      return {hami_policy::spread, gpu_policy::spread};
    default:
      return {hami_policy::binpack, gpu_policy::spread};
  }
}

void BM_single_gpu(benchmark::State& state) {
  const cluster* c = shared_cluster(state);
  if (c == nullptr) return;
  static const auto pods = fractional_requests();
  run_decisions(state, *c, pods, policy(state.range(0)));
}
BENCHMARK(BM_single_gpu)->Arg(0)->Arg(1)->Arg(2)->ArgName("policy")->Unit(benchmark::kMicrosecond);

void BM_single_gpu_baseline_allocate_everywhere(benchmark::State& state) {
  const cluster* c = shared_cluster(state);
  if (c == nullptr) return;
  static const auto pods = fractional_requests();
  run_decisions(state, *c, pods, allocate_everywhere{policy(state.range(0))});
}
BENCHMARK(BM_single_gpu_baseline_allocate_everywhere)
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->ArgName("policy")
    ->Unit(benchmark::kMicrosecond);

void BM_topology_request(benchmark::State& state) {
  const cluster* c = shared_cluster(state);
  if (c == nullptr) return;
  std::vector<pod_request> pods;
  for (std::uint64_t g = 2; g <= 8; g += 2) {
    container_request r;
    r.count = static_cast<std::uint32_t>(state.range(0));
    r.memory = g * k_gib;
    pods.push_back(pod_request{{r}});
  }
  if (state.range(1) == 0) {
    run_decisions(state, *c, pods, topology_scorer{});
  } else {
    run_decisions(state, *c, pods, hami_scorer(hami_policy::binpack, gpu_policy::topology));
  }
}
// args: GPUs per request, scorer (0: topology_scorer over nodes, 1: HAMi nodes + topology GPUs)
BENCHMARK(BM_topology_request)
    ->Args({8, 0})
    ->Args({8, 1})
    ->Args({4, 0})
    ->Args({2, 0})
    ->ArgNames({"gpus", "hami_nodes"})
    ->Unit(benchmark::kMicrosecond);

// ---- branch-and-bound against listing every subset -------------------------------------------

link_matrix random_links(std::size_t m) {
  std::mt19937 rng(k_seed + 2);
  link_matrix l(m);
  for (std::size_t a = 0; a < m; ++a) {
    for (std::size_t b = a + 1; b < m; ++b) l.set(a, b, static_cast<std::int32_t>(rng() % 1000));
  }
  return l;
}

std::int64_t enumerate_all(const link_matrix& l, const std::vector<std::size_t>& cand,
                           std::size_t k) {
  std::int64_t best = -1;
  std::vector<std::size_t> pick;
  std::function<void(std::size_t, std::int64_t)> rec = [&](std::size_t i, std::int64_t s) {
    if (pick.size() == k) {
      best = std::max(best, s);
      return;
    }
    for (std::size_t j = i; j < cand.size(); ++j) {
      std::int64_t add = 0;
      for (std::size_t p : pick) add += l.at(p, cand[j]);
      pick.push_back(cand[j]);
      rec(j + 1, s + add);
      pick.pop_back();
    }
  };
  rec(0, 0);
  return best;
}

void BM_subset_branch_and_bound(benchmark::State& state) {
  const auto m = static_cast<std::size_t>(state.range(0));
  const auto l = random_links(m);
  std::vector<std::size_t> cand(m);
  for (std::size_t i = 0; i < m; ++i) cand[i] = i;
  linked_subset out;
  for (auto _ : state) {
    best_linked_subset(l, cand, m / 2, out);
    benchmark::DoNotOptimize(out);
  }
  state.counters["visited"] = static_cast<double>(out.nodes_visited);
}
BENCHMARK(BM_subset_branch_and_bound)->Arg(8)->Arg(16)->Arg(24)->Unit(benchmark::kMicrosecond);

void BM_subset_enumerate_all(benchmark::State& state) {
  const auto m = static_cast<std::size_t>(state.range(0));
  const auto l = random_links(m);
  std::vector<std::size_t> cand(m);
  for (std::size_t i = 0; i < m; ++i) cand[i] = i;
  for (auto _ : state) benchmark::DoNotOptimize(enumerate_all(l, cand, m / 2));
}
BENCHMARK(BM_subset_enumerate_all)->Arg(8)->Arg(16)->Arg(24)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  gpuslice_bench::run_benchmarks(argc, argv, g_nodes_path);
  return 0;
}
