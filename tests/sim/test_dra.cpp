// The dra policy (fit/dra_sched.hpp): request-policy rounding, kube-scheduler's node scoring
// and node sampling, first fit over devices, on hand-made clusters whose placements are known.
#include <catch2/catch.hpp>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "gpuslice/fit/dra_sched.hpp"
#include "gpuslice/sim/experiment.hpp"

using namespace gpuslice::fit;
using fixtures::pod;

namespace {

constexpr std::int64_t gib_mib = 1024;

std::vector<std::int32_t> identity_ranks(std::size_t n) {
  std::vector<std::int32_t> r(n);
  std::iota(r.begin(), r.end(), 0);
  return r;
}

// Model 0 is a 16 GiB card, model 1 a T4 (15 GiB), model 2 a V100M32.
dra_options three_models(int nodes_pct = 0) {
  dra_options o;
  o.card_mib = {dra_card_mib("V100M16"), dra_card_mib("T4"), dra_card_mib("V100M32")};
  o.nodes_pct = nodes_pct;
  return o;
}

// Schedules pod and binds it where the scheduler chose; returns the placement.
openb_placement place(dra_scheduler& s, openb_cluster& c, const openb_pod& p) {
  const openb_placement out = s.schedule(c, p);
  if (out.node >= 0) {
    const auto i = static_cast<std::size_t>(out.node);
    c.bind(i, p, out.gpus);
    s.bound(i, p, out.gpus, c.node(i));
  }
  return out;
}

openb_pod typed(openb_pod p, std::uint64_t models) {
  p.typed = true;
  p.types = models;
  return p;
}

}  // namespace

TEST_CASE("request policy rounding, node sampling and kube-scheduler's formulas", "[sim][dra]") {
  CHECK(dra_round_up(0, 1, 1) == 1);  // below the minimum: the minimum
  CHECK(dra_round_up(5407, 1, 1) == 5407);
  CHECK(dra_round_up(1500, 1024, 512) == 1536);  // steps count from the minimum
  CHECK(dra_round_up(1024, 1024, 512) == 1024);
  CHECK(dra_round_up(2049, 1000, 1000) == 3000);
  // percentageOfNodesToScore's adaptive default: 50 - n/125 percent, at least 5%, at least
  // 100 nodes, every node below 100.
  CHECK(kube_nodes_to_find(0, 50) == 50);
  CHECK(kube_nodes_to_find(0, 150) == 100);     // 49% of 150 = 73, raised to 100
  CHECK(kube_nodes_to_find(0, 1213) == 497);    // 41%
  CHECK(kube_nodes_to_find(0, 5000) == 500);    // 10%
  CHECK(kube_nodes_to_find(0, 20000) == 1000);  // the 5% floor
  CHECK(kube_nodes_to_find(100, 1213) == 1213);
  CHECK(kube_nodes_to_find(20, 1000) == 200);
  CHECK(kube_least_requested(25, 100) == 75);
  CHECK(kube_least_requested(1, 3) == 66);  // integer division
  CHECK(kube_least_requested(101, 100) == 0);
  CHECK(kube_balanced(0.5, 0.1) == 80);
  CHECK(kube_balanced(0.3, 2.0) == 65);  // fractions capped at 1
}

TEST_CASE("claims consume what the plugin's request policy rounds them to", "[sim][dra]") {
  openb_cluster c({openb_node_spec{64000, 256 * gib_mib, 1, 1},    // a T4 node
                   openb_node_spec{64000, 256 * gib_mib, 1, 2}});  // a V100M32 node
  const dra_scheduler s(identity_ranks(2), three_models(), c);
  // An untyped share asks m/1000 of the cluster's smallest card (15360 MiB), on any card.
  CHECK(s.memory_consumed(pod(0, 1, 500), 1) == 7680);
  CHECK(s.memory_consumed(pod(0, 1, 500), 2) == 7680);
  CHECK(s.memory_consumed(pod(0, 1, 10), 1) == 154);  // 153.6 MiB rounds up to the step
  // A typed share: the smallest card among its models.
  CHECK(s.memory_consumed(typed(pod(0, 1, 500), 0b100), 2) == 16 * gib_mib);
  // A whole GPU takes the request policy's default: all of the card.
  CHECK(s.memory_consumed(pod(0, 1, 1000), 2) == 32 * gib_mib);
  CHECK(dra_scheduler::cores_consumed(pod(0, 1, 250)) == 25);
  CHECK(dra_scheduler::cores_consumed(pod(0, 1, 5)) == 1);     // the minimum
  CHECK(dra_scheduler::cores_consumed(pod(0, 1, 255)) == 26);  // 25.5 rounds up
  CHECK(dra_scheduler::cores_consumed(pod(0, 2, 1000)) == 100);
}

TEST_CASE("rounding makes a T4 refuse the hundredth 10-milli share", "[sim][dra]") {
  openb_cluster c({openb_node_spec{640000, 1024 * gib_mib, 1, 1}});
  dra_scheduler s(identity_ranks(1), three_models(), c);
  // 154 MiB each: 99 fit in 15360 MiB, although 100 x 10 milli is exactly one GPU.
  for (int k = 0; k < 99; ++k) REQUIRE(place(s, c, pod(1000, 1, 10)).node == 0);
  CHECK(s.memory_used(0, 0) == 99 * 154);
  CHECK(s.cores_used(0, 0) == 99);
  CHECK(openb_feasible(c.node(0), pod(1000, 1, 10)));  // the milli-GPU model would take it
  CHECK(s.schedule(c, pod(1000, 1, 10)).node == -1);
}

TEST_CASE("devices are taken first fit in index order", "[sim][dra]") {
  openb_cluster c({openb_node_spec{640000, 1024 * gib_mib, 4, 0}});
  dra_scheduler s(identity_ranks(1), three_models(), c);
  CHECK(place(s, c, pod(1000, 1, 250)).gpus == 0b0001);
  CHECK(place(s, c, pod(1000, 1, 500)).gpus == 0b0001);  // 75 cores on GPU 0
  CHECK(place(s, c, pod(1000, 1, 400)).gpus == 0b0010);  // 115 would pass 100
  CHECK(place(s, c, pod(1000, 1, 250)).gpus == 0b0001);  // fills GPU 0, not the best fit
  CHECK(s.memory_used(0, 0) == 16 * gib_mib);
  // Two whole GPUs: the first two with nothing consumed.
  CHECK(place(s, c, pod(1000, 2, 1000)).gpus == 0b1100);
  CHECK(s.schedule(c, pod(1000, 1, 1000)).node == -1);
  // A departure gives its capacity back.
  c.unbind(0, pod(1000, 1, 400), 0b0010);
  s.unbound(0, pod(1000, 1, 400), 0b0010, c.node(0));
  CHECK(s.cores_used(0, 1) == 0);
  CHECK(s.memory_used(0, 1) == 0);
  CHECK(s.schedule(c, pod(1000, 1, 1000)).gpus == 0b0010);
}

TEST_CASE("nodes are scored by CPU and memory only, so shares spread and strand a GPU",
          "[sim][dra]") {
  // Two equal one-GPU nodes. kube-scheduler puts the second half-GPU pod on the node with
  // more CPU and memory free, the other one; the whole-GPU pod then fits nowhere. Binpack
  // stacks both halves on one GPU and places all three.
  const std::vector<openb_node_spec> specs = {openb_node_spec{32000, 128 * gib_mib, 1, 0},
                                              openb_node_spec{32000, 128 * gib_mib, 1, 0}};
  const std::vector<openb_pod> pods = {pod(4000, 1, 500, 8 * gib_mib),
                                       pod(4000, 1, 500, 8 * gib_mib),
                                       pod(4000, 1, 1000, 8 * gib_mib)};
  openb_cluster c(specs);
  dra_scheduler s(identity_ranks(2), three_models(), c);
  CHECK(place(s, c, pods[0]).node == 0);  // equal scores: the smaller rank
  CHECK(place(s, c, pods[1]).node == 1);
  CHECK(place(s, c, pods[2]).node == -1);
  CHECK(c.allocated_milli() == 1000);

  openb_cluster b(specs);
  gpuslice::sim::go_rand rng(1);
  openb_scheduler<gpuslice::sim::go_rand> bin(openb_policy::binpack, identity_ranks(2), nullptr,
                                              &rng);
  for (const auto& p : pods) {
    const openb_placement out = bin.schedule(b, p);
    REQUIRE(out.node >= 0);
    b.bind(static_cast<std::size_t>(out.node), p, out.gpus);
  }
  CHECK(b.allocated_milli() == 2000);
}

TEST_CASE("the score is LeastAllocated plus BalancedAllocation, whatever the GPUs hold",
          "[sim][dra]") {
  openb_cluster c(
      {openb_node_spec{64000, 256 * gib_mib, 1, 0}, openb_node_spec{32000, 128 * gib_mib, 8, 0}});
  dra_scheduler s(identity_ranks(2), three_models(), c);
  const openb_pod p = pod(4000, 1, 500, 8 * gib_mib);
  // Node 0: cpu (60000 * 100) / 64000 = 93, memory 248/256 -> 96, mean 94; balanced
  // fractions 0.0625 and 0.03125 -> trunc(98.4375) = 98.
  CHECK(s.score(c.node(0), 0, p) == 94 + 98);
  // Node 1: 87 and 93, mean 90; fractions 0.125 and 0.0625 -> 96.
  CHECK(s.score(c.node(1), 1, p) == 90 + 96);
  CHECK(s.schedule(c, p).node == 0);  // the bigger host wins, its single GPU notwithstanding
  // A pod that requests no CPU counts as 100 milli-CPU and 200 MiB in LeastAllocated, and
  // BalancedAllocation skips it.
  const openb_pod none = pod(0, 0, 0, 0);
  CHECK(s.score(c.node(0), 0, none) == (99 + 99) / 2);
}

TEST_CASE("the filter stops after percentageOfNodesToScore and resumes where it stopped",
          "[sim][dra]") {
  // 200 equal CPU-only nodes: the adaptive default looks for 100 feasible nodes (48% is 96).
  const std::vector<openb_node_spec> specs(200, openb_node_spec{32000, 128 * gib_mib, 0, -1});
  openb_cluster c(specs);
  dra_scheduler s(identity_ranks(200), three_models(), c);
  CHECK(place(s, c, pod(1000, 0, 0, 1024)).node == 0);
  CHECK(place(s, c, pod(1000, 0, 0, 1024)).node == 100);  // only nodes 100..199 looked at
  CHECK(place(s, c, pod(1000, 0, 0, 1024)).node == 1);
  // Scoring every node, the second pod goes to the best free node of all, node 1.
  openb_cluster all(specs);
  dra_scheduler every(identity_ranks(200), three_models(100), all);
  CHECK(place(every, all, pod(1000, 0, 0, 1024)).node == 0);
  CHECK(place(every, all, pod(1000, 0, 0, 1024)).node == 1);
  // The list follows the ranks: with reversed ranks the first pod lands on node 199.
  std::vector<std::int32_t> reversed(200);
  for (std::size_t i = 0; i < 200; ++i) reversed[i] = static_cast<std::int32_t>(199 - i);
  openb_cluster r(specs);
  dra_scheduler rev(reversed, three_models(), r);
  CHECK(place(rev, r, pod(1000, 0, 0, 1024)).node == 199);
  CHECK(place(rev, r, pod(1000, 0, 0, 1024)).node == 99);
}

TEST_CASE("the dra policy in the fill-up and the replay", "[sim][dra]") {
  using namespace gpuslice::sim;
  std::vector<trace_node> nodes;
  for (int i = 0; i < 6; ++i) {
    nodes.push_back(trace_node{"n" + std::to_string(i), 32000, 128 * gib_mib, 2,
                               i % 2 == 0 ? "T4" : "V100M32"});
  }
  std::vector<trace_pod> pods;
  for (int i = 0; i < 40; ++i) {
    trace_pod p;
    p.name = "p" + std::to_string(100 + i);
    p.cpu = 2000;
    p.mem = 4096;
    p.num_gpu = 1;
    p.gpu_milli = i % 5 == 0 ? 1000 : 100 * (1 + i % 7);
    p.gpu_spec = i % 9 == 0 ? "T4" : "";
    p.creation = 10 * i;
    p.deletion = 10 * i + 200;
    pods.push_back(p);
  }
  auto w = prepared_workload::make(nodes, pods);
  REQUIRE(w.ok());
  run_options o;
  o.policy = openb_policy::dra;
  const auto a = run_fillup(*w, o);
  const auto b = run_fillup(*w, o);
  CHECK(a.node == b.node);
  CHECK(a.gpus == b.gpus);
  const std::int64_t capacity = w->total_gpus() * k_openb_gpu_milli;
  for (std::size_t k = 0; k < a.node.size(); ++k) CHECK(a.allocated[k] <= capacity);
  std::int64_t failed = 0;
  for (auto f : a.failed) failed += f;
  CHECK(failed > 0);  // 130% of capacity
  const auto r = run_replay(*w, o);
  REQUIRE(r.ok());
  CHECK(r->departures > 0);
  // Every pod that started departed: the capacity kept by the scheduler came back.
  CHECK(r->allocated.back() == 0);
}
