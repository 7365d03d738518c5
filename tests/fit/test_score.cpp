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
