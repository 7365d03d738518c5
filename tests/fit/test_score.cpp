// Scorers: HAMi's formula with the request included, GPU and node policies, deterministic ties,
// a user-defined scorer as a template parameter.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "gpuslice/fit/fit.hpp"

using namespace gpuslice::fit;
using fixtures::k_gib;
using fixtures::make_cluster;

namespace {
decision run(const cluster& c, const pod_request& p, const hami_scorer& s) {
  auto d = c.fit(p, s);
  REQUIRE(d.ok());
  return std::move(d).value();
}
}  // namespace

TEST_CASE("gpu_score is HAMi's formula with the request added", "[fit][score]") {
  device_state d;
  d.memory_total = 16 * k_gib;
  d.cores_total = 1000;
  d.slots_total = 10;
  d.slots_used = 1;
  d.cores_used = 200;
  d.memory_used = 4 * k_gib;
  const share s{4 * k_gib, 300, false};
  // 10 * ((1+1)/10 + (200+300)/1000 + (4+4)/16) = 10 * (0.2 + 0.5 + 0.5) = 12
  CHECK(hami_scorer(hami_policy::binpack, gpu_policy::binpack).gpu_score(node{}, d, s) ==
        Approx(12.0));
  CHECK(hami_scorer(hami_policy::binpack, gpu_policy::spread).gpu_score(node{}, d, s) ==
        Approx(30 - 12.0));
  // Weights scale each dimension.
  const usage_weights w{2.0, 0.0, 1.0};
  CHECK(hami_scorer(hami_policy::binpack, gpu_policy::binpack, w).gpu_score(node{}, d, s) ==
        Approx(10 * (2 * 0.2 + 0.5)));
}

TEST_CASE("node score includes the request (HAMi leaves it out)", "[fit][score]") {
  // Two nodes with equal usage but different sizes: the request weighs more on the small one.
  auto small = fixtures::node_of("small", 1);
  auto big = fixtures::node_of("big", 4);
  auto c = make_cluster({small, big});
  const auto p = fixtures::pod({fixtures::req(1, 8, 50)});
  const auto bin = run(c, p, hami_scorer(hami_policy::binpack, gpu_policy::spread));
  CHECK(c.nodes()[bin.node].name == "small");
  // small after: slots 1/10, cores 500/1000, mem 8/16 -> 10*(0.1+0.5+0.5) = 11
  CHECK(bin.score == Approx(11.0));
  const auto spr = run(c, p, hami_scorer(hami_policy::spread, gpu_policy::spread));
  CHECK(c.nodes()[spr.node].name == "big");
  // big after: slots 1/40, cores 500/4000, mem 8/64 -> 30 - 10*(0.025+0.125+0.125)
  CHECK(spr.score == Approx(30 - 2.75));
}

TEST_CASE("GPU policy: binpack takes the fullest card, spread the emptiest", "[fit][score]") {
  auto n = fixtures::node_of("n", 3);
  n.devices[0].slots_used = 1;
  n.devices[0].memory_used = 2 * k_gib;
  n.devices[2].slots_used = 1;
  n.devices[2].memory_used = 8 * k_gib;
  auto c = make_cluster({n});
  const auto p = fixtures::pod({fixtures::req(1, 4)});
  CHECK(run(c, p, {hami_policy::binpack, gpu_policy::binpack}).containers[0].devices[0].device ==
        2);
  CHECK(run(c, p, {hami_policy::binpack, gpu_policy::spread}).containers[0].devices[0].device == 1);
  const auto two = fixtures::pod({fixtures::req(2, 4)});
  const auto d = run(c, two, {hami_policy::binpack, gpu_policy::binpack});
  REQUIRE(d.containers[0].devices.size() == 2);
  CHECK(d.containers[0].devices[0].device == 0);
  CHECK(d.containers[0].devices[1].device == 2);
}

TEST_CASE("ties: lowest device index, then node name, whatever the input order", "[fit][score]") {
  auto n = fixtures::node_of("n", 4);
  std::swap(n.devices[0].index, n.devices[3].index);  // position 3 now has driver index 0
  auto c = make_cluster({n});
  const auto p = fixtures::pod({fixtures::req(1, 4)});
  CHECK(run(c, p, {}).containers[0].devices[0].device == 3);

  auto c2 = make_cluster(
      {fixtures::node_of("b", 2), fixtures::node_of("a", 2), fixtures::node_of("c", 2)});
  const auto d = run(c2, p, {});
  CHECK(c2.nodes()[d.node].name == "a");
}

namespace {
// A user-defined policy: prefer the node with the most free CPU, GPUs in reverse index order.
struct most_cpu_scorer {
  static constexpr bool k_needs_allocation = true;
  mutable int calls = 0;
  double node_score(const candidate& c) const {
    ++calls;
    REQUIRE(c.allocation != nullptr);
    return static_cast<double>(c.target.cpu_total - c.target.cpu_used);
  }
  double gpu_score(const node&, const device_state& d, const share&) const { return d.index; }
  bool topology() const { return false; }
};
}  // namespace

TEST_CASE("a user-defined scorer is a template parameter", "[fit][score]") {
  auto a = fixtures::node_of("a", 2);
  auto b = fixtures::node_of("b", 2);
  b.cpu_used = 1000;
  auto full = fixtures::node_of("full", 2);
  full.cpu_used = full.cpu_total;
  auto c = make_cluster({b, a, full});
  most_cpu_scorer s;
  auto p = fixtures::pod({fixtures::req(1, 1)});
  p.containers[0].cpu = 500;
  auto d = c.fit(p, s);
  REQUIRE(d.ok());
  CHECK(c.nodes()[d->node].name == "a");
  CHECK(d->containers[0].devices[0].device == 1);
  CHECK(s.calls == 2);  // only feasible nodes are scored
  CHECK(d->reasons[reason::insufficient_cpu] == 1);
}

// ---- spec_usage_scorer: the simulator's binpack and spread on the fit engine's state ----------

#include <random>

#include "gpuslice/fit/openb_score.hpp"

namespace {
constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;
// A card of a whole number of hundreds of MiB: a percentage of it is whole MiB, so its memory
// stays in proportion to its compute, as openb's single milli-GPU dimension assumes.
constexpr std::uint64_t k_card_mib = 16000;
constexpr int k_slots = 10;
constexpr int k_share_step = 10;  // openb's shares are multiples of 10 milli

struct twin {
  openb_node sim;
  node live;
};

// The same random state in the simulator's model and in the fit engine's.
twin random_node(std::mt19937& rng, const std::string& name) {
  std::uniform_int_distribution<int> gpus_of(0, 3), slots(0, k_slots - 1), step(1, 100);
  std::uniform_int_distribution<std::int64_t> mem_alloc(64 * 1024, 512 * 1024);
  twin t;
  const int g = 1 << gpus_of(rng);
  t.sim.gpus = static_cast<std::int8_t>(g);
  t.sim.cpu_alloc = 96000;
  t.sim.mem_alloc = mem_alloc(rng);
  t.sim.mem_used = std::uniform_int_distribution<std::int64_t>(0, t.sim.mem_alloc / 2)(rng);
  t.live = fixtures::node_of(name, static_cast<std::size_t>(g));
  t.live.cpu_total = static_cast<std::uint64_t>(t.sim.cpu_alloc);
  t.live.memory_total = static_cast<std::uint64_t>(t.sim.mem_alloc) * k_mib;
  t.live.memory_used = static_cast<std::uint64_t>(t.sim.mem_used) * k_mib;
  for (int i = 0; i < g; ++i) {
    const int b = slots(rng);
    const int used = b == 0 ? 0 : std::min(step(rng) * k_share_step, k_openb_gpu_milli);
    t.sim.free[static_cast<std::size_t>(i)] = static_cast<std::int16_t>(k_openb_gpu_milli - used);
    t.sim.free_total += k_openb_gpu_milli - used;
    t.sim.gpu_bindings += b;
    device& d = t.live.devices[static_cast<std::size_t>(i)];
    d.memory_total = k_card_mib * k_mib;
    d.memory_used = k_card_mib * k_mib / k_openb_gpu_milli * static_cast<std::uint64_t>(used);
    d.cores_used = static_cast<std::uint32_t>(used);
    d.slots_used = static_cast<std::uint32_t>(b);
  }
  return t;
}
}  // namespace

TEST_CASE("spec_usage_scorer scores and chooses GPUs as the simulator's binpack and spread",
          "[fit][score]") {
  std::mt19937 rng(42);
  constexpr int k_trials = 300;
  constexpr int k_nodes = 6;
  int compared = 0;
  for (int trial = 0; trial < k_trials; ++trial) {
    std::vector<twin> nodes;
    std::vector<node> live;
    for (int i = 0; i < k_nodes; ++i) {
      nodes.push_back(random_node(rng, "n" + std::to_string(i)));
      live.push_back(nodes.back().live);
    }
    openb_pod p;
    p.cpu = 1000;
    p.mem = std::uniform_int_distribution<std::int64_t>(0, 32 * 1024)(rng);
    switch (trial % 3) {
      case 0:  // CPU-only
        break;
      case 1:  // a share of one GPU
        p.n = 1;
        p.m = std::uniform_int_distribution<int>(1, 99)(rng) * k_share_step;
        break;
      default:  // whole GPUs
        p.n = std::uniform_int_distribution<int>(1, 2)(rng);
        p.m = k_openb_gpu_milli;
        break;
    }
    container_request c;
    c.cpu = static_cast<std::uint64_t>(p.cpu);
    c.host_memory = static_cast<std::uint64_t>(p.mem) * k_mib;
    if (p.n > 0) {
      c.count = static_cast<std::uint32_t>(p.n);
      c.memory_percent = static_cast<std::uint32_t>(p.m / k_share_step);
      c.cores = static_cast<std::uint32_t>(p.m);
    }
    const pod_request pod{{c}};
    const cluster cl = make_cluster(live);
    for (const hami_policy policy : {hami_policy::binpack, hami_policy::spread}) {
      fit_options opt;
      opt.report_nodes = true;
      auto d = cl.fit(pod, spec_usage_scorer(policy).for_pod(pod), opt);
      REQUIRE(d.ok());
      int best = -1;
      int best_score = -1;
      for (int i = 0; i < k_nodes; ++i) {
        const openb_node& s = nodes[static_cast<std::size_t>(i)].sim;
        const bool feasible = openb_feasible(s, p);
        REQUIRE(d->nodes[static_cast<std::size_t>(i)].feasible == feasible);
        if (!feasible) continue;
        const int want = openb_score_hami(s, p, policy);
        CHECK(d->nodes[static_cast<std::size_t>(i)].score == want);
        if (want > best_score) {
          best_score = want;
          best = i;
        }
        ++compared;
      }
      REQUIRE(d->placed == (best >= 0));
      if (best < 0) continue;
      CHECK(d->node == static_cast<std::size_t>(best));
      const openb_node& s = nodes[static_cast<std::size_t>(best)].sim;
      const gpu_mask want =
          policy == hami_policy::binpack ? openb_select_best(s, p) : openb_select_worst(s, p);
      gpu_mask got = 0;
      for (const auto& g : d->containers.at(0).devices) {
        got = static_cast<gpu_mask>(got | (1U << g.device));
      }
      CHECK(got == want);
    }
  }
  CHECK(compared > k_trials);  // the states were not all infeasible
}
