// The scheduling cycle: reasons per node, multi-GPU, multi-container, NUMA, backtracking,
// topology, reserve/release, determinism.
#include <catch2/catch.hpp>
#include <random>

#include "fixtures.hpp"
#include "gpuslice/fit/fit.hpp"

using namespace gpuslice::fit;
using fixtures::board8;
using fixtures::k_gib;
using fixtures::make_cluster;

namespace {
template <class Scorer = hami_scorer>
decision run(const cluster& c, const pod_request& p, const Scorer& s = {},
             const fit_options& o = {}) {
  auto d = c.fit(p, s, o);
  REQUIRE(d.ok());
  return std::move(d).value();
}
}  // namespace

TEST_CASE("reasons are counted per node across the cluster", "[fit][cycle]") {
  std::vector<node> nodes;
  for (int i = 0; i < 3; ++i) {  // 3 nodes: memory too small
    nodes.push_back(fixtures::node_of("mem" + std::to_string(i), 2, 4));
  }
  for (int i = 0; i < 2; ++i) {  // 2 nodes: wrong type
    nodes.push_back(fixtures::node_of("t4-" + std::to_string(i), 2, 16, "NVIDIA-Tesla T4"));
  }
  auto c = make_cluster(nodes);
  auto p = fixtures::pod({fixtures::req(1, 8)});
  p.containers[0].use_types = {"v100"};
  const auto d = run(c, p);
  CHECK_FALSE(d.placed);
  CHECK(d.reasons[reason::insufficient_memory] == 3);
  CHECK(d.reasons[reason::type_mismatch] == 2);
  CHECK(d.reasons[reason::insufficient_devices] == 5);
  CHECK(d.message() ==
        "0/5 nodes are available: 5 nodes: too few suitable GPUs; 3 nodes: insufficient GPU "
        "memory; 2 nodes: GPU type mismatch");
  fit_options o;
  o.report_nodes = true;
  const auto r = run(c, p, hami_scorer{}, o);
  REQUIRE(r.nodes.size() == 5);
  CHECK(r.nodes[0].reasons[reason::insufficient_memory] == 2);  // devices on the node
  CHECK(r.nodes[4].reasons[reason::type_mismatch] == 2);
}

TEST_CASE("node-level checks: CPU and host memory", "[fit][cycle]") {
  auto a = fixtures::node_of("a", 1);
  a.cpu_used = a.cpu_total;
  auto b = fixtures::node_of("b", 1);
  b.memory_used = b.memory_total;
  auto c = make_cluster({a, b});
  auto p = fixtures::pod({fixtures::req(1, 1)});
  p.containers[0].cpu = 1;
  p.containers[0].host_memory = 1;
  const auto d = run(c, p);
  CHECK_FALSE(d.placed);
  CHECK(d.reasons[reason::insufficient_cpu] == 1);
  CHECK(d.reasons[reason::insufficient_host_memory] == 1);
  // A CPU-only pod needs no GPU at all.
  container_request cpu_only;
  cpu_only.cpu = 1000;
  auto e = fixtures::node_of("e", 0);
  auto c2 = make_cluster({e});
  const auto ok = run(c2, pod_request{{cpu_only}});
  CHECK(ok.placed);
  REQUIRE(ok.containers.size() == 1);
  CHECK(ok.containers[0].devices.empty());
}

TEST_CASE("HAMi semantics through the cycle", "[fit][cycle]") {
  auto n = fixtures::node_of("n", 2, 16);
  n.devices[0].slots_used = 1;
  n.devices[0].memory_used = 1 * k_gib;
  n.devices[0].cores_used = 100;
  auto c = make_cluster({n});
  SECTION("a bare request takes a whole idle card") {
    container_request bare;
    bare.count = 1;
    const auto d = run(c, pod_request{{bare}});
    REQUIRE(d.placed);
    CHECK(d.containers[0].devices[0].device == 1);
    CHECK(d.containers[0].devices[0].memory == 16 * k_gib);
    CHECK(d.containers[0].devices[0].cores == 1000);
  }
  SECTION("cores 100 is exclusive: the busy card is refused") {
    auto m = n;
    m.devices[0].cores_used = 0;  // a task without a core limit still makes the card busy
    auto cm = make_cluster({m});
    auto p = fixtures::pod({fixtures::req(2, 1, 100)});
    fit_options o;
    o.report_nodes = true;
    const auto d = run(cm, p, hami_scorer{}, o);
    CHECK_FALSE(d.placed);
    CHECK(d.nodes[0].reasons[reason::exclusive_conflict] == 1);
    CHECK(run(cm, fixtures::pod({fixtures::req(1, 1, 100)})).containers[0].devices[0].device == 1);
  }
  SECTION("a percentage resolves on each card") {
    auto m = fixtures::node_of("m", 2, 16);
    m.devices[1].memory_total = 32 * k_gib;
    auto cm = make_cluster({m});
    container_request pct;
    pct.count = 2;
    pct.memory_percent = 25;
    const auto d = run(cm, pod_request{{pct}});
    REQUIRE(d.placed);
    CHECK(d.containers[0].devices[0].memory == 4 * k_gib);
    CHECK(d.containers[0].devices[1].memory == 8 * k_gib);
  }
  SECTION("uuid include list") {
    auto p = fixtures::pod({fixtures::req(1, 1)});
    p.containers[0].use_uuids = {"n-gpu0"};
    const auto d = run(c, p);
    REQUIRE(d.placed);
    CHECK(d.containers[0].devices[0].device == 0);
  }
}

TEST_CASE("multi-GPU: every chosen GPU holds the per-GPU share", "[fit][cycle]") {
  auto n = fixtures::node_of("n", 4, 16);
  n.devices[1].memory_used = 10 * k_gib;
  n.devices[1].slots_used = 1;
  auto c = make_cluster({n});
  const auto d = run(c, fixtures::pod({fixtures::req(3, 8, 20)}));
  REQUIRE(d.placed);
  REQUIRE(d.containers[0].devices.size() == 3);
  for (const auto& g : d.containers[0].devices) {
    CHECK(g.device != 1);
    CHECK(g.memory == 8 * k_gib);
    CHECK(g.cores == 200);
  }
  CHECK_FALSE(run(c, fixtures::pod({fixtures::req(4, 8)})).placed);
}

TEST_CASE("numa-bind chooses the best NUMA group, not the first", "[fit][cycle]") {
  auto n = fixtures::node_of("n", 4, 16);
  n.devices[0].numa = n.devices[1].numa = 0;
  n.devices[2].numa = n.devices[3].numa = 1;
  n.devices[0].memory_used = n.devices[1].memory_used = 6 * k_gib;
  n.devices[0].slots_used = n.devices[1].slots_used = 1;
  auto c = make_cluster({n});
  auto p = fixtures::pod({fixtures::req(2, 4)});
  p.containers[0].numa_bind = true;
  // Spread: the idle group (NUMA 1) is better; binpack: the used group (NUMA 0).
  const auto spread = run(c, p, hami_scorer(hami_policy::binpack, gpu_policy::spread));
  REQUIRE(spread.placed);
  CHECK(spread.containers[0].devices[0].device == 2);
  CHECK(spread.containers[0].devices[1].device == 3);
  const auto pack = run(c, p, hami_scorer(hami_policy::binpack, gpu_policy::binpack));
  CHECK(pack.containers[0].devices[0].device == 0);
  CHECK(pack.containers[0].devices[1].device == 1);
  // Three GPUs exist but no NUMA node has three.
  auto p3 = fixtures::pod({fixtures::req(3, 1)});
  p3.containers[0].numa_bind = true;
  const auto no = run(c, p3);
  CHECK_FALSE(no.placed);
  CHECK(no.reasons[reason::numa_mismatch] == 1);
  p3.containers[0].numa_bind = false;
  CHECK(run(c, p3).placed);
}

TEST_CASE("multi-container: containers see each other; backtracking finds what greedy misses",
          "[fit][cycle]") {
  // GPU 0 has 10 GiB free, GPU 1 has 6 GiB free. Container A (4 GiB) goes to the emptiest by
  // spread (GPU 0), leaving 6 and 6: container B (8 GiB) then fails. A on GPU 1 works.
  auto n = fixtures::node_of("n", 2, 16);
  n.devices[0].memory_used = 6 * k_gib;
  n.devices[1].memory_used = 10 * k_gib;
  auto c = make_cluster({n});
  const auto p = fixtures::pod({fixtures::req(1, 4), fixtures::req(1, 8)});
  const auto greedy = run(c, p);
  CHECK_FALSE(greedy.placed);
  CHECK(greedy.reasons[reason::no_assignment] == 1);
  fit_options o;
  o.backtrack = true;
  const auto bt = run(c, p, hami_scorer{}, o);
  REQUIRE(bt.placed);
  CHECK(bt.containers[0].devices[0].device == 1);
  CHECK(bt.containers[1].devices[0].device == 0);
  // Two containers may share one GPU.
  const auto share2 = run(c, fixtures::pod({fixtures::req(1, 2), fixtures::req(1, 2)}),
                          hami_scorer(hami_policy::binpack, gpu_policy::binpack));
  REQUIRE(share2.placed);
  CHECK(share2.containers[0].devices[0].device == share2.containers[1].devices[0].device);
  // A search limit of 0 steps finds nothing.
  o.backtrack_limit = 0;
  CHECK_FALSE(run(c, p, hami_scorer{}, o).placed);
}

TEST_CASE("containers without GPUs keep their place in the allocation", "[fit][cycle]") {
  auto c = make_cluster({fixtures::node_of("n", 2)});
  container_request sidecar;
  sidecar.cpu = 100;
  const auto d = run(c, pod_request{{sidecar, fixtures::req(1, 1), sidecar}});
  REQUIRE(d.placed);
  REQUIRE(d.containers.size() == 3);
  CHECK(d.containers[0].devices.empty());
  CHECK(d.containers[1].devices.size() == 1);
  CHECK(d.containers[2].devices.empty());
  CHECK(d.cpu == 200);
}

TEST_CASE("topology: N GPUs by summed link score, one GPU keeps pairs whole", "[fit][cycle]") {
  auto n = fixtures::node_of("n", 8, 80, "NVIDIA-A100");
  n.links = board8();
  n.devices[0].slots_used = 1;  // GPU 0 is busy (its pair partner 1 is idle)
  n.devices[0].memory_used = 1 * k_gib;
  auto c = make_cluster({n});
  const hami_scorer topo(hami_policy::binpack, gpu_policy::topology);
  const auto four = run(c, fixtures::pod({fixtures::req(4, 8)}), topo);
  REQUIRE(four.placed);
  std::vector<std::size_t> got;
  for (const auto& g : four.containers[0].devices) got.push_back(g.device);
  CHECK(got == std::vector<std::size_t>{0, 1, 2, 3});  // 0 still has room: the quad wins
  const auto one = run(c, fixtures::pod({fixtures::req(1, 8)}), topo);
  // GPU 0 is already used, so taking it breaks no idle pair.
  CHECK(one.containers[0].devices[0].device == 0);
  auto n2 = n;
  n2.devices[0].slots_used = 0;
  n2.devices[0].memory_used = 0;
  n2.devices[2].slots_used = 1;
  n2.devices[2].memory_used = 79 * k_gib;  // busy and nearly full: 3 is a lonely idle GPU
  auto c2 = make_cluster({n2});
  const auto lone = run(c2, fixtures::pod({fixtures::req(1, 8)}), topo);
  CHECK(lone.containers[0].devices[0].device == 3);
  // The topology scorer picks the node whose GPUs link best.
  auto flat = fixtures::node_of("a-flat", 8, 80, "NVIDIA-A100");
  flat.links = link_matrix(8);
  auto linked = fixtures::node_of("b-linked", 8, 80, "NVIDIA-A100");
  linked.links = board8();
  auto c3 = make_cluster({flat, linked});
  const auto best = run(c3, fixtures::pod({fixtures::req(2, 8)}), topology_scorer{});
  CHECK(c3.nodes()[best.node].name == "b-linked");
}

TEST_CASE("reserve applies a decision, release undoes it, stale ones are refused", "[fit][cycle]") {
  auto c = make_cluster({fixtures::node_of("n", 1, 16)});
  const auto p = fixtures::pod({fixtures::req(1, 10, 50)});
  const auto d = run(c, p);
  REQUIRE(d.placed);
  REQUIRE(c.reserve(d).ok());
  const auto& dev = c.nodes()[0].devices[0];
  CHECK(dev.memory_used == 10 * k_gib);
  CHECK(dev.cores_used == 500);
  CHECK(dev.slots_used == 1);
  const auto again = run(c, p);
  CHECK_FALSE(again.placed);
  auto stale = c.reserve(d);
  REQUIRE_FALSE(stale.ok());
  CHECK_THAT(stale.message(), Catch::Contains("node \"n\""));
  CHECK(c.nodes()[0].devices[0].memory_used == 10 * k_gib);  // unchanged by the refusal
  REQUIRE(c.release(d).ok());
  CHECK(c.nodes()[0].devices[0].memory_used == 0);
  CHECK_FALSE(c.release(d).ok());
}

TEST_CASE("invalid input is an error, not a decision", "[fit][cycle]") {
  auto bad = fixtures::node_of("bad", 1);
  bad.devices[0].cores_used = 2000;
  auto r = cluster::make({bad});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.message(), Catch::Contains("node \"bad\""));
  auto c = make_cluster({fixtures::node_of("n", 1)});
  container_request q;
  q.count = 1;
  q.memory_percent = 150;
  auto d = c.fit(pod_request{{q}});
  REQUIRE_FALSE(d.ok());
  CHECK_THAT(d.message(), Catch::Contains("memory_percent 150"));
}

TEST_CASE("a filled cluster never exceeds any device, and runs repeat exactly", "[fit][cycle]") {
  auto build = [] {
    std::vector<node> nodes;
    for (int i = 0; i < 6; ++i) nodes.push_back(fixtures::node_of("n" + std::to_string(i), 4));
    return make_cluster(nodes);
  };
  auto fill = [](cluster& c, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::size_t> placed;
    for (int i = 0; i < 300; ++i) {
      auto p = fixtures::pod({fixtures::req(1 + rng() % 2, 1 + rng() % 6, rng() % 60)});
      auto d = c.fit(p);
      REQUIRE(d.ok());
      if (!d->placed) continue;
      REQUIRE(c.reserve(*d).ok());
      placed.push_back(d->node);
    }
    return placed;
  };
  auto a = build();
  auto b = build();
  const auto pa = fill(a, 3);
  CHECK(pa == fill(b, 3));
  CHECK(pa.size() > 20);
  for (const auto& n : a.nodes()) {
    for (const auto& d : n.devices) {
      CHECK(d.memory_used <= d.memory_total);
      CHECK(d.cores_used <= d.cores_total);
      CHECK(d.slots_used <= d.slots_total);
    }
  }
}

TEST_CASE("the free fit() function validates and decides", "[fit][cycle]") {
  auto d = fit({fixtures::node_of("n", 2)}, fixtures::pod({fixtures::req(2, 1)}));
  REQUIRE(d.ok());
  CHECK(d->placed);
  CHECK(d->message() == "1/1 nodes are available");
}
