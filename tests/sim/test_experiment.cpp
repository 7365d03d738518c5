// The fill-up and replay experiments: the submission order against Go's artifact procedure on
// the real trace, determinism, capacity at every step, departures.
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gpuslice/sim/experiment.hpp"
#include "gpuslice/sim/trace_csv.hpp"

using namespace gpuslice;
using namespace gpuslice::sim;

namespace {
bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream s;
  s << f.rdbuf();
  out = s.str();
  return true;
}

// The real trace, or nullptr (with a warning) where ../shared/data is absent.
const prepared_workload* real_trace(const std::string& pod_file) {
  static std::vector<std::pair<std::string, prepared_workload>> loaded;
  for (const auto& [name, w] : loaded) {
    if (name == pod_file) return &w;
  }
  const std::string dir = GPUSLICE_TRACE_DIR;
  std::string nodes_text;
  std::string pods_text;
  if (!read_file(dir + "/openb_node_list_gpu_node.csv", nodes_text) ||
      !read_file(dir + "/" + pod_file, pods_text)) {
    WARN("skipped: the openb trace is not at " << dir);
    return nullptr;
  }
  auto nodes = parse_nodes_csv(nodes_text, "nodes");
  auto pods = parse_pods_csv(pods_text, pod_file);
  REQUIRE(nodes.ok());
  REQUIRE(pods.ok());
  auto w = prepared_workload::make(*nodes, *pods);
  REQUIRE(w.ok());
  loaded.emplace_back(pod_file, std::move(w).value());
  return &loaded.back().second;
}

std::uint64_t fnv_names(const prepared_workload& w, const fillup_plan& plan) {
  constexpr std::uint64_t offset = 1469598103934665603ULL;
  constexpr std::uint64_t prime = 1099511628211ULL;
  std::uint64_t h = offset;
  const auto trace = static_cast<std::size_t>(plan.trace_pods - plan.removed_pods);
  for (std::size_t k = 0; k < plan.order.size(); ++k) {
    std::string name = w.pod_names()[static_cast<std::size_t>(plan.order[k])];
    if (k >= trace) name += "-tuned-" + std::to_string(k - trace);
    for (unsigned char c : name) h = (h ^ c) * prime;
    h = (h ^ '\n') * prime;
  }
  return h;
}

trace_pod tp(std::string name, std::int64_t cpu, int n, int m, std::int64_t c = -1,
             std::int64_t d = -1) {
  trace_pod p;
  p.name = std::move(name);
  p.cpu = cpu;
  p.mem = 1;
  p.num_gpu = n;
  p.gpu_milli = m;
  p.creation = c;
  p.deletion = d;
  return p;
}

prepared_workload small_workload() {
  std::vector<trace_node> nodes;
  for (int i = 0; i < 12; ++i) {
    nodes.push_back(trace_node{"node-" + std::to_string(i), 32000, 1 << 20, 1 << (i % 4),
                               i % 3 == 0 ? "T4" : "V100"});
  }
  std::vector<trace_pod> pods;
  for (int i = 0; i < 60; ++i) {
    const int kind = i % 5;
    const int n = kind == 0 ? 0 : kind == 4 ? 2 : 1;
    const int m = kind == 0 ? 0 : kind <= 2 ? 100 * (1 + i % 9) : 1000;
    pods.push_back(tp("pod-" + std::to_string(i), 1000 * (1 + i % 4), n, m, i, i + 30));
  }
  pods[7].gpu_spec = "T4";
  auto w = prepared_workload::make(nodes, pods);
  REQUIRE(w.ok());
  return std::move(w).value();
}
}  // namespace

TEST_CASE("fill-up submission order and ranks equal Go's on the openb traces",
          "[sim][experiment]") {
  struct expected {
    std::string file;
    std::int64_t seed;
    std::size_t pods;
    std::int64_t tuned;
    std::string first, second, last;
    std::int32_t rank0, rank1, rank_last;
    std::uint64_t hash;
  };
  // Printed by a Go 1.19 program that follows the artifact's steps (rand.Seed, rand.Int,
  // rand.Shuffle, rand.Intn per sample, rand.Perm).
  const std::vector<expected> cases = {
      {"openb_pod_list_default.csv", 42, 10866, 2714, "openb-pod-0255", "openb-pod-1685",
       "openb-pod-5877-tuned-2713", 620, 1012, 124, 3872009164593507003ULL},
      {"openb_pod_list_default.csv", 51, 10859, 2707, "openb-pod-7151", "openb-pod-7598",
       "openb-pod-1596-tuned-2706", 977, 873, 821, 12295086875460598818ULL},
      {"openb_pod_list_multigpu50.csv", 42, 6361, 0, "openb-pod-6825", "openb-pod-2707",
       "openb-pod-0598", 366, 970, 586, 16194103140848784474ULL},
  };
  for (const auto& c : cases) {
    const prepared_workload* w = real_trace(c.file);
    if (w == nullptr) return;
    go_rand rng;
    const auto plan = plan_fillup(*w, c.seed, k_default_load, rng);
    INFO(c.file << " seed " << c.seed);
    CHECK(plan.order.size() == c.pods);
    CHECK(plan.tuned_pods == c.tuned);
    CHECK(w->pod_names()[static_cast<std::size_t>(plan.order[0])] == c.first);
    CHECK(w->pod_names()[static_cast<std::size_t>(plan.order[1])] == c.second);
    CHECK(plan.ranks.front() == c.rank0);
    CHECK(plan.ranks[1] == c.rank1);
    CHECK(plan.ranks.back() == c.rank_last);
    CHECK(fnv_names(*w, plan) == c.hash);
  }
}

TEST_CASE("fill-up on the openb default trace: FGD wastes less than Random", "[sim][experiment]") {
  const prepared_workload* w = real_trace("openb_pod_list_default.csv");
  if (w == nullptr) return;
  run_options o;
  o.seed = 42;
  o.policy = fit::openb_policy::fgd;
  const auto fgd = discretise(run_fillup(*w, o));
  o.policy = fit::openb_policy::random;
  const auto random = discretise(run_fillup(*w, o));
  CHECK(fgd.alloc_pct[100] > random.alloc_pct[100]);
  CHECK(fgd.frag_rate_pct[90] < random.frag_rate_pct[90]);
  CHECK(fgd.present[130]);
}

TEST_CASE(
    "sfgd on the openb default trace: FGD's knobs give FGD's placements; the policy "
    "allocates more",
    "[sim][experiment]") {
  const prepared_workload* w = real_trace("openb_pod_list_default.csv");
  if (w == nullptr) return;
  run_options o;
  o.seed = 42;
  o.policy = fit::openb_policy::fgd;
  const auto fgd = run_fillup(*w, o);
  o.policy = fit::openb_policy::sfgd;
  o.knobs.exact = false;
  o.knobs.strand = 0;
  o.knobs.host = 0;
  const auto as_fgd = run_fillup(*w, o);
  CHECK(as_fgd.node == fgd.node);
  CHECK(as_fgd.allocated == fgd.allocated);
  o.knobs = fit::sfgd_knobs{};
  const auto sfgd = run_fillup(*w, o);
  CHECK(sfgd.node != fgd.node);
  CHECK(discretise(sfgd).alloc_pct[130] > discretise(fgd).alloc_pct[130]);
}

TEST_CASE("rsfgd on the real trace: sfgd until whole GPUs run short, then holds slivers back",
          "[sim][experiment]") {
  const prepared_workload* w = real_trace("openb_pod_list_default.csv");
  if (w == nullptr) return;
  run_options o;
  o.seed = 44;
  o.policy = fit::openb_policy::sfgd;
  const auto sfgd = run_fillup(*w, o);
  CHECK(sfgd.held_back == 0);
  o.policy = fit::openb_policy::rsfgd;
  const auto rsfgd = run_fillup(*w, o);
  // Pod for pod as sfgd up to the first hold-back, which comes once a quarter of the GPUs
  // are left whole (not before half the capacity has arrived).
  REQUIRE(rsfgd.held_back > 0);
  const std::int64_t capacity = w->total_gpus() * fit::k_openb_gpu_milli;
  CHECK(rsfgd.first_held_back_arrived > capacity / 2);
  std::size_t k = 0;
  while (rsfgd.arrived[k] < rsfgd.first_held_back_arrived) {
    REQUIRE(rsfgd.node[k] == sfgd.node[k]);
    ++k;
  }
  CHECK(rsfgd.node[k] < 0);
  // Held-back pods are failed sharing pods; they buy allocation at the end. The filter,
  // checked apart from the policy, finds a node for each of them: refused while fitting.
  CHECK(rsfgd.failed[1] >= rsfgd.held_back);
  CHECK(rsfgd.refused_fitting == rsfgd.held_back);
  CHECK(sfgd.refused_fitting == 0);
  CHECK(rsfgd.allocated.back() > sfgd.allocated.back());
  // reserve 0 is sfgd.
  o.knobs.reserve = 0;
  const auto none = run_fillup(*w, o);
  CHECK(none.node == sfgd.node);
  CHECK(none.held_back == 0);
  // In the replay a held-back pod waits instead, and starts after a departure.
  o.knobs = fit::sfgd_knobs{};
  o.compress = 30000;
  const auto replay = run_replay(*w, o);
  REQUIRE(replay.ok());
  CHECK(replay->held_back > 0);
  CHECK(replay->waited > 0);
  CHECK(replay->refused_fitting == replay->held_back);
}

TEST_CASE("fair metrics: attempts and failures by kind, first failure, fitting pods refused",
          "[sim][experiment]") {
  // Typed pods compete only within their kind, so the outcome does not depend on the order:
  // two 2-GPU pods for the one 2-GPU node of A (one fails), three 400-milli pods for the one
  // GPU of C (one fails), one whole pod for B's GPU, CPU-only pods (always fit).
  std::vector<trace_node> nodes = {trace_node{"a", 64000, 1 << 20, 2, "A"},
                                   trace_node{"b", 64000, 1 << 20, 1, "B"},
                                   trace_node{"c", 64000, 1 << 20, 1, "C"}};
  std::vector<trace_pod> pods = {tp("m1", 1000, 2, 1000), tp("m2", 1000, 2, 1000),
                                 tp("s1", 1000, 1, 400),  tp("s2", 1000, 1, 400),
                                 tp("s3", 1000, 1, 400),  tp("w1", 1000, 1, 1000),
                                 tp("c1", 1000, 0, 0)};
  for (auto& p : pods)
    p.gpu_spec = p.num_gpu == 0 ? "" : p.name[0] == 'm' ? "A" : p.name[0] == 's' ? "C" : "B";
  auto w = prepared_workload::make(nodes, pods);
  REQUIRE(w.ok());
  for (std::size_t p = 0; p < fit::k_openb_policy_names.size(); ++p) {
    run_options o;
    o.policy = static_cast<fit::openb_policy>(p);
    INFO(fit::openb_policy_name(o.policy));
    // 6200 milli requested on 4 GPUs; 1.6x leaves no room for another GPU pod, so sampling
    // adds CPU-only pods only.
    o.load = 1.6;
    for (std::int64_t seed : {1, 2, 3}) {
      o.seed = seed;
      const auto r = run_fillup(*w, o);
      const auto cpu = static_cast<std::size_t>(fit::openb_pod_kind::cpu_only);
      const auto sharing = static_cast<std::size_t>(fit::openb_pod_kind::sharing);
      const auto whole = static_cast<std::size_t>(fit::openb_pod_kind::whole);
      const auto multi = static_cast<std::size_t>(fit::openb_pod_kind::multi);
      CHECK(r.attempted[multi] == 2);
      CHECK(r.attempted[sharing] == 3);
      CHECK(r.attempted[whole] == 1);
      CHECK(r.attempted[cpu] == 1 + r.tuned_pods);
      CHECK(r.failed == std::array<std::int64_t, 4>{0, 1, 0, 1});
      CHECK(r.refused_fitting == 0);
      // The first failure is the first event without a node, by kind too.
      std::size_t k = 0;
      while (r.node[k] >= 0) ++k;
      CHECK(r.first_failed_arrived == r.arrived[k]);
      for (std::size_t kind : {sharing, multi}) {
        k = 0;
        while (r.node[k] >= 0 || static_cast<std::size_t>(
                                     w->pods()[static_cast<std::size_t>(r.pod[k])].kind()) != kind)
          ++k;
        CHECK(r.first_failed_arrived_by_kind[kind] == r.arrived[k]);
      }
      CHECK(r.first_failed_arrived_by_kind[whole] == -1);
      CHECK(r.first_failed_arrived_by_kind[cpu] == -1);
    }
  }
  // Five 500-milli pods on two GPUs: any placement holds four, so the fifth fails at 125%.
  std::vector<trace_node> two = {trace_node{"n", 64000, 1 << 20, 2, "A"}};
  std::vector<trace_pod> halves;
  for (int i = 0; i < 5; ++i) halves.push_back(tp("h" + std::to_string(i), 1000, 1, 500));
  auto h = prepared_workload::make(two, halves);
  REQUIRE(h.ok());
  for (std::size_t p = 0; p < fit::k_openb_policy_names.size(); ++p) {
    run_options o;
    o.policy = static_cast<fit::openb_policy>(p);
    INFO(fit::openb_policy_name(o.policy));
    const auto r = run_fillup(*h, o);
    CHECK(r.attempted[1] == 5);
    CHECK(r.failed[1] == 1);
    CHECK(r.first_failed_arrived == 2500);
    CHECK(r.refused_fitting == 0);
  }
}

TEST_CASE("the node index leaves fill-up and replay placements unchanged on the real trace",
          "[sim][experiment]") {
  const prepared_workload* w = real_trace("openb_pod_list_default.csv");
  if (w == nullptr) return;
  for (auto policy : {fit::openb_policy::fgd, fit::openb_policy::sfgd, fit::openb_policy::rsfgd,
                      fit::openb_policy::dotprod, fit::openb_policy::gpuclustering,
                      fit::openb_policy::gpupacking}) {
    INFO("policy " << fit::openb_policy_name(policy));
    run_options o;
    o.seed = 43;
    o.policy = policy;
    const auto indexed = run_fillup(*w, o);
    o.node_index = false;
    const auto scanned = run_fillup(*w, o);
    CHECK(indexed.node == scanned.node);
    CHECK(indexed.gpus == scanned.gpus);
    o.compress = 30000;  // saturates the cluster: waiting pods and departures change nodes
    const auto replay_scanned = run_replay(*w, o);
    o.node_index = true;
    const auto replay_indexed = run_replay(*w, o);
    REQUIRE(replay_scanned.ok());
    REQUIRE(replay_indexed.ok());
    CHECK(replay_indexed->node == replay_scanned->node);
    CHECK(replay_indexed->gpus == replay_scanned->gpus);
    CHECK(replay_indexed->waited == replay_scanned->waited);
  }
}

TEST_CASE("every policy: deterministic per seed, never over capacity", "[sim][experiment]") {
  const auto w = small_workload();
  const std::int64_t capacity = w.total_gpus() * fit::k_openb_gpu_milli;
  for (std::size_t p = 0; p < fit::k_openb_policy_names.size(); ++p) {
    run_options o;
    o.policy = static_cast<fit::openb_policy>(p);
    o.seed = 7;
    const auto a = run_fillup(w, o);
    const auto b = run_fillup(w, o);
    INFO(fit::openb_policy_name(o.policy));
    CHECK(a.node == b.node);
    CHECK(a.pod == b.pod);
    CHECK(a.frag_milli == b.frag_milli);
    REQUIRE_FALSE(a.arrived.empty());
    CHECK(static_cast<double>(a.arrived.back()) >= 1.2 * static_cast<double>(capacity));
    std::int64_t failed = 0;
    for (std::size_t k = 0; k < a.arrived.size(); ++k) {
      CHECK(a.allocated[k] <= capacity);
      CHECK(a.allocated[k] <= a.arrived[k]);
      CHECK(a.frag_milli[k] <= static_cast<double>(capacity - a.allocated[k]) + 0.01);
      failed += a.node[k] < 0;
    }
    CHECK(failed == a.failed[0] + a.failed[1] + a.failed[2] + a.failed[3]);
    CHECK(failed > 0);  // 130% of capacity cannot all fit
  }
  run_options o;
  o.seed = 8;
  const auto other = run_fillup(w, o);
  o.seed = 7;
  CHECK(run_fillup(w, o).pod != other.pod);
}

TEST_CASE("replay: departures free resources, waiting pods start when a node frees up",
          "[sim][experiment]") {
  std::vector<trace_node> nodes = {trace_node{"n", 8000, 100, 1, "T4"}};
  // One GPU. a runs 0-10; b (5-20) waits for a and starts at 10, running 15 s to 25; c (10-30)
  // waits for b and starts at 25; d (40-99, 300 milli) waits for c, which ends at 45.
  std::vector<trace_pod> pods = {tp("a", 1000, 1, 1000, 0, 10), tp("b", 1000, 1, 1000, 5, 20),
                                 tp("c", 1000, 1, 1000, 10, 30), tp("d", 1000, 1, 300, 40, 99)};
  auto w = prepared_workload::make(nodes, pods);
  REQUIRE(w.ok());
  using k = replay_event;
  const auto u8 = [](replay_event e) { return static_cast<std::uint8_t>(e); };
  for (auto policy : {fit::openb_policy::fgd, fit::openb_policy::sfgd, fit::openb_policy::random,
                      fit::openb_policy::spread}) {
    run_options o;
    o.policy = policy;
    auto r = run_replay(*w, o);
    REQUIRE(r.ok());
    CHECK(r->time == std::vector<double>{0, 5, 10, 10, 10, 25, 25, 40, 45, 45, 104});
    CHECK(r->kind == std::vector<std::uint8_t>{
                         u8(k::arrived_started), u8(k::arrived_waiting), u8(k::departed),
                         u8(k::started_after_wait), u8(k::arrived_waiting), u8(k::departed),
                         u8(k::started_after_wait), u8(k::arrived_waiting), u8(k::departed),
                         u8(k::started_after_wait), u8(k::departed)});
    CHECK(r->pod == std::vector<std::int32_t>{0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 3});
    CHECK(r->allocated ==
          std::vector<std::int64_t>{1000, 1000, 0, 1000, 1000, 0, 1000, 1000, 0, 300, 0});
    CHECK(r->departures == 4);
    CHECK(r->waited == 3);
    CHECK(r->wait_total_s == Approx(5 + 15 + 5));
    CHECK(r->failed == std::array<std::int64_t, 4>{});
    CHECK(r->attempted == std::array<std::int64_t, 4>{0, 1, 3, 0});
    CHECK(r->refused_fitting == 0);  // each waiting pod found the only GPU taken
    const replay_measures m = measure_replay(*r);
    // Load phase 0..40: full from 0 to 10 and from 10 to 25 and from 25 to 40 except the
    // instants between a departure and the start it allows.
    CHECK(m.alloc_mean_pct == Approx(100.0));
    CHECK(m.alloc_peak_pct == Approx(100.0));
    CHECK(m.waited == 3);
    CHECK(m.wait_mean_s == Approx(25.0 / 3));
    CHECK(m.failed == 0);
    CHECK(m.span_s == Approx(40.0));
  }
  std::vector<trace_pod> untimed = {tp("a", 1, 0, 0)};
  auto u = prepared_workload::make(nodes, untimed);
  REQUIRE(u.ok());
  auto r = run_replay(*u, run_options{});
  REQUIRE_FALSE(r.ok());
  CHECK(r.message().find("replay needs creation_time and deletion_time") == 0);
}

TEST_CASE("replay: a pod that waits past its own end gives up; compress brings arrivals closer",
          "[sim][experiment]") {
  std::vector<trace_node> nodes = {trace_node{"n", 8000, 100, 1, "T4"}};
  // b would run 5-8 but a holds the GPU until 100: b gives up at 8 and counts as failed.
  std::vector<trace_pod> pods = {tp("a", 1000, 1, 1000, 0, 100), tp("b", 1000, 1, 500, 5, 8),
                                 tp("c", 1000, 1, 1000, 200, 400)};
  auto w = prepared_workload::make(nodes, pods);
  REQUIRE(w.ok());
  auto r = run_replay(*w, run_options{});
  REQUIRE(r.ok());
  CHECK(r->failed[1] == 1);
  CHECK(r->waited == 0);
  CHECK(r->kind[2] == static_cast<std::uint8_t>(replay_event::gave_up));
  CHECK(r->time[2] == 8);
  // Compressed 4x, c arrives at 50 while a (still 100 s long) runs: c waits until 100.
  run_options o;
  o.compress = 4;
  auto q = run_replay(*w, o);
  REQUIRE(q.ok());
  CHECK(q->waited == 1);
  CHECK(q->wait_total_s == Approx(50.0));
  CHECK(measure_replay(*q).span_s == Approx(50.0));
  o.compress = 0;
  CHECK_FALSE(run_replay(*w, o).ok());
}

TEST_CASE("workload validation names the row", "[sim][experiment]") {
  std::vector<trace_node> nodes = {trace_node{"n", 8000, 100, 9, "T4"}};
  auto w = prepared_workload::make(nodes, {});
  REQUIRE_FALSE(w.ok());
  CHECK(w.message() == "node n: gpu=9: expected 0..8");
  nodes[0].gpus = 2;
  auto bad = prepared_workload::make(nodes, {tp("p", 1, 2, 300)});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.message().find("pod p: num_gpu=2 with gpu_milli=300") == 0);
}
