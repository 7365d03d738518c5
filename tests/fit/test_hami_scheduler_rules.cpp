// HAMi's own scheduler tests (pkg/device/nvidia/device_test.go, pkg/scheduler/score_test.go,
// pkg/scheduler/policy/node_policy_test.go) where they touch rules gpuslice might have read
// otherwise: compute registered above one card, a card reporting more used than it has, and
// NUMA groups in any device order. docs/hami-compatibility.md records each outcome.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/filter.hpp"
#include "gpuslice/fit/fit.hpp"

using namespace gpuslice::fit;
using fixtures::k_gib;

TEST_CASE("a card registered with more than 100% compute shares it out (deviceCoreScaling)",
          "[fit][hami]") {
  // HAMi's plugin registers devcore = deviceCoreScaling * 100; policy tests use Totalcore 200.
  auto reg = decode_node_devices(
      R"([{"id":"GPU-a","count":10,"devmem":16384,"devcore":200,"type":"NVIDIA-T4","health":true}])");
  REQUIRE(reg.ok());
  const device& d = (*reg)[0];
  CHECK(d.cores_total == 2000);
  container_request r = fixtures::req(1, 1, 80);
  const share s = resolve(r, d.memory_total, d.cores_total);
  reason why{};
  device used = d;
  used.slots_used = 1;
  used.cores_used = 800;  // one 80% task already there: 120% left
  CHECK(device_fits(used, s, true, true, why));
  used.cores_used = 1300;  // 70% left
  CHECK_FALSE(device_fits(used, s, true, true, why));
  CHECK(why == reason::insufficient_cores);
  // A request above 100 is one card's worth (clamped to 100). It is exclusive only on a card
  // of exactly 100 (HAMi: Totalcore == 100 && Coresreq == 100 && Used > 0); here it shares.
  container_request big = fixtures::req(1, 1, 100);
  big.cores = 2000;
  const share b = resolve(big, d.memory_total, d.cores_total);
  CHECK(b.cores == 1000);
  CHECK_FALSE(b.needs_idle);
  used.cores_used = 800;
  CHECK(device_fits(used, b, true, true, why));
  used.cores_used = 1100;
  CHECK_FALSE(device_fits(used, b, true, true, why));
  CHECK(why == reason::insufficient_cores);
  device one = used;
  one.cores_total = 1000;
  one.cores_used = 0;
  CHECK_FALSE(device_fits(one, resolve(big, one.memory_total, one.cores_total), true, true, why));
  CHECK(why == reason::exclusive_conflict);
}

TEST_CASE("a card registered with less than 100% compute: a request of all of it shares",
          "[fit][hami]") {
  // deviceCoreScaling 0.5 registers devcore 50. HAMi's exclusivity rule needs Totalcore == 100,
  // so a 50-core request fits beside a task that holds no compute; 100 cores never fit.
  device d = fixtures::gpu("GPU-a", 16);
  d.cores_total = 500;
  d.slots_used = 1;  // a task with memory only
  reason why{};
  const share half = resolve(fixtures::req(1, 1, 50), d.memory_total, d.cores_total);
  CHECK_FALSE(half.needs_idle);
  CHECK(device_fits(d, half, true, true, why));
  const share whole = resolve(fixtures::req(1, 1, 100), d.memory_total, d.cores_total);
  CHECK_FALSE(device_fits(d, whole, true, true, why));
  CHECK(why == reason::insufficient_cores);
}

TEST_CASE("a card reporting more used than it has is full; the core refuses such a node",
          "[fit][hami]") {
  // HAMi "fit fail: card overused": Used >= Count is CardTimeSlicingExhausted; memory and cores
  // used beyond the total leave nothing free.
  device d = fixtures::gpu("GPU-a", 16);
  d.slots_total = 4;
  d.slots_used = 6;
  const share s = resolve(fixtures::req(1, 1, 10), d.memory_total, d.cores_total);
  reason why{};
  CHECK_FALSE(device_fits(d, s, true, true, why));
  CHECK(why == reason::slots_exhausted);
  d.slots_used = 0;
  d.memory_used = d.memory_total + k_gib;
  CHECK_FALSE(device_fits(d, s, true, true, why));
  CHECK(why == reason::insufficient_memory);
  d.memory_used = 0;
  d.cores_used = d.cores_total + 1;
  CHECK_FALSE(device_fits(d, s, true, true, why));
  CHECK(why == reason::insufficient_cores);
  // The core's own model keeps used <= total (its scorers divide what is free): a node given
  // with more used than total is refused with one line, and callers (the extender, the
  // controller) cap usage rebuilt from bound pods at the total instead.
  auto n = fixtures::node_of("n", 1);
  n.devices[0].slots_used = n.devices[0].slots_total + 1;
  auto c = cluster::make({n});
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.message(), Catch::Contains("exceed the total"));
}

TEST_CASE("numa-bind finds a NUMA group whatever the order of the devices", "[fit][hami]") {
  // HAMi's numa-bind scan takes runs of consecutive cards on one NUMA node, which is why its
  // `numa` GPU policy sorts cards by NUMA node first. gpuslice groups by NUMA node itself.
  auto n = fixtures::node_of("n", 4, 16);
  n.devices[0].numa = n.devices[2].numa = 0;
  n.devices[1].numa = n.devices[3].numa = 1;
  auto c = fixtures::make_cluster({n});
  auto p = fixtures::pod({fixtures::req(2, 4)});
  p.containers[0].numa_bind = true;
  for (auto policy : {gpu_policy::spread, gpu_policy::binpack}) {
    auto d = c.fit(p, hami_scorer(hami_policy::binpack, policy));
    REQUIRE(d.ok());
    REQUIRE(d->placed);
    const auto& devs = d->containers[0].devices;
    REQUIRE(devs.size() == 2);
    CHECK(n.devices[devs[0].device].numa == n.devices[devs[1].device].numa);
  }
}
