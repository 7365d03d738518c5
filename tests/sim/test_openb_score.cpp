// The scorers' formulas (§6), the tie-break by rank (§5) and the scheduling cycle.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "gpuslice/fit/openb_score.hpp"
#include "gpuslice/sim/go_rand.hpp"

using namespace gpuslice::fit;
using fixtures::pod;
using gpuslice::sim::go_rand;

namespace {
openb_node fresh(int gpus, std::int64_t cpu = 96000, std::int64_t mem = 1000) {
  return openb_cluster({openb_node_spec{cpu, mem, gpus, 0}}).node(0);
}
frag_model typical_of(const std::vector<openb_pod>& pods) {
  return frag_model(openb_typical_pods(pods, std::vector<std::string>(pods.size())), 1);
}
}  // namespace

TEST_CASE("DotProd and BestFit formulas", "[sim][score]") {
  const auto n = fresh(8);
  // d = 0.75 * 0.0625 + 1 * 0.0625; trunc(100 * (1 - d / 2)) = trunc(94.53)
  CHECK(openb_score_dotprod(n, pod(8000, 1, 500)) == 94);
  CHECK(openb_score_dotprod(fresh(8, 4000), pod(8000, 1, 500)) == 0);
  // u = 0.5 * 88000 / 128000 + 0.5 * 7500 / 8000 = 0.8125
  CHECK(openb_score_bestfit_raw(n, pod(8000, 1, 500)) == 18);
}

TEST_CASE("GpuClustering and GpuPacking formulas", "[sim][score]") {
  openb_cluster c({openb_node_spec{96000, 1000, 8, 0}});
  CHECK(openb_score_gpuclustering(c.node(0), pod(0, 1, 500)) == 25);
  CHECK(openb_score_gpuclustering(c.node(0), pod(0, 0, 0)) == 0);
  CHECK(openb_score_gpupacking(c.node(0), pod(0, 1, 500)) == 25);  // max(33 - 8, 8)
  CHECK(openb_score_gpupacking(fresh(2), pod(0, 1, 500)) == 31);
  c.bind(0, pod(0, 1, 500), 0b1);
  // base = 25 * 500 / 8000 = 1
  CHECK(openb_score_gpuclustering(c.node(0), pod(0, 1, 300)) == 1 + 75);
  CHECK(openb_score_gpuclustering(c.node(0), pod(0, 1, 1000)) == 1);
  c.bind(0, pod(0, 1, 1000), 0b10);
  CHECK(openb_score_gpuclustering(c.node(0), pod(0, 1, 300)) == 4 + 50);  // base 25*1500/8000
  // Smallest f >= m is the 500 GPU: r = 50, 100 - 5.
  CHECK(openb_score_gpupacking(c.node(0), pod(0, 1, 300)) == 95);
  CHECK(openb_score_gpupacking(c.node(0), pod(0, 1, 1000)) == 49);
  CHECK(openb_score_gpupacking(c.node(0), pod(0, 2, 1000)) == 48);
  CHECK(openb_score_gpupacking(c.node(0), pod(0, 0, 0)) == 0);
}

TEST_CASE("spread and binpack use HAMi's usage formula with the request", "[sim][score]") {
  const auto n = fresh(8);
  // slots 1/80 + cores 500/8000 + memory 100/1000 = 0.175, times 10 = 1.75 of 30
  CHECK(openb_score_hami(n, pod(8000, 1, 500, 100), hami_policy::binpack) == 5);
  CHECK(openb_score_hami(n, pod(8000, 1, 500, 100), hami_policy::spread) == 94);
  CHECK(openb_score_hami(fresh(0), pod(8000, 0, 0, 0), hami_policy::spread) == 100);
}

TEST_CASE("ties go to the node with the smallest rank", "[sim][score]") {
  openb_cluster c({openb_node_spec{8000, 100, 1, 0}, openb_node_spec{8000, 100, 1, 0}});
  go_rand rng(1);
  for (const auto& [ranks, want] :
       std::vector<std::pair<std::vector<std::int32_t>, int>>{{{1, 0}, 1}, {{0, 1}, 0}}) {
    for (auto policy : {openb_policy::dotprod, openb_policy::bestfit, openb_policy::gpupacking,
                        openb_policy::gpuclustering, openb_policy::binpack}) {
      openb_scheduler<go_rand> s(policy, ranks, nullptr, &rng);
      CHECK(s.schedule(c, pod(1000, 1, 500)).node == want);
    }
  }
}

TEST_CASE("the cycle: no feasible node fails, one feasible node draws nothing", "[sim][score]") {
  openb_cluster c({openb_node_spec{8000, 100, 1, 0}, openb_node_spec{1000, 100, 1, 0}});
  go_rand a(3);
  go_rand b(3);
  openb_scheduler<go_rand> s(openb_policy::random, {0, 1}, nullptr, &a);
  CHECK(s.schedule(c, pod(9000, 0, 0)).node == -1);
  const auto p = s.schedule(c, pod(4000, 1, 500));
  CHECK(p.node == 0);
  CHECK(p.gpus == 0b1);
  CHECK(s.feasible().size() == 1);
  (void)b.intn(1);  // the random GPU selector's one draw, Intn(1)
  CHECK(a.int63() == b.int63());
}

TEST_CASE("Random picks feasible[Intn(count)]", "[sim][score]") {
  std::vector<openb_node_spec> specs(10, openb_node_spec{8000, 100, 2, 0});
  openb_cluster c(specs);
  go_rand a(11);
  go_rand b(11);
  std::vector<std::int32_t> ranks(10);
  openb_scheduler<go_rand> s(openb_policy::random, ranks, nullptr, &a);
  for (int i = 0; i < 20; ++i) {
    const auto p = s.schedule(c, pod(100, 0, 0));
    CHECK(p.node == b.intn(10));
  }
}

TEST_CASE("FGD picks the GPU and node that add the least fragmentation", "[sim][score]") {
  auto model = typical_of(std::vector<openb_pod>(10, pod(0, 1, 500)));
  openb_cluster c({openb_node_spec{8000, 100, 2, 0}, openb_node_spec{8000, 100, 2, 0}});
  c.bind(0, pod(0, 1, 600), 0b10);  // node 0 free [1000, 400]
  frag_tracker t(model, c);
  go_rand rng(1);
  openb_scheduler<go_rand> s(openb_policy::fgd, {0, 1}, &t, &rng, 1);
  // Node 0: GPU 1 to 0 leaves [1000, 0], fragment 400 -> 0: trunc(100 * sigmoid(0.4)) = 59.
  // GPU 0 to 600 leaves [600, 400]: no change, 50. Node 1: [1000, 600] from [1000, 1000]:
  // 0 -> 0, 50.
  CHECK(s.fgd_score(c.node(0), 0, pod(0, 1, 400)) == std::pair<int, int>{59, 1});
  CHECK(s.fgd_score(c.node(1), 1, pod(0, 1, 400)) == std::pair<int, int>{50, 0});
  const auto p = s.schedule(c, pod(0, 1, 400), 0);
  CHECK(p.node == 0);
  CHECK(p.gpus == 0b10);
  // The cached answer is reused until the node changes.
  CHECK(s.fgd_score(c.node(0), 0, pod(0, 1, 400), 0) == std::pair<int, int>{59, 1});
  c.bind(0, pod(0, 1, 400), p.gpus);
  t.update(c, 0);
  CHECK(s.fgd_score(c.node(0), 0, pod(0, 1, 400), 0).second == 0);
}

TEST_CASE("a custom scorer decides, ties still by rank", "[sim][score]") {
  std::vector<openb_node_spec> specs(4, openb_node_spec{8000, 100, 1, 0});
  openb_cluster c(specs);
  go_rand rng(1);
  openb_scheduler<go_rand> s(openb_policy::custom, {3, 2, 1, 0}, nullptr, &rng);
  s.set_custom([](const openb_cluster&, const openb_pod&, const std::vector<std::uint32_t>& f,
                  std::vector<std::int64_t>& out) {
    for (std::size_t k = 0; k < f.size(); ++k) out[k] = f[k] <= 1 ? 7 : 3;
  });
  CHECK(s.schedule(c, pod(0, 1, 100)).node == 1);
}

TEST_CASE("sfgd keeps CPU where GPUs still need it; FGD sees no difference", "[sim][score]") {
  // Typical GPU pods ask 2000 milli-CPU per GPU: r = 2 milli-CPU per milli-GPU.
  auto model = typical_of(std::vector<openb_pod>(4, pod(2000, 1, 1000)));
  // Node 0 has just the CPU its two GPUs need (4000); node 1 has plenty.
  openb_cluster c({openb_node_spec{4000, 100, 2, 0}, openb_node_spec{64000, 100, 2, 0}});
  frag_tracker t(model, c);
  go_rand rng(1);
  const openb_pod cpu_pod = pod(1000, 0, 0);
  // Both nodes stay Q3 for the typical pod (3000 >= 2000): FGD's fragment does not move, so the
  // rank decides and node 0 (rank 0) wins.
  openb_scheduler<go_rand> fgd(openb_policy::fgd, {0, 1}, &t, &rng, 1);
  CHECK(fgd.schedule(c, cpu_pod).node == 0);
  // sfgd: node 0 left with 3000 milli-CPU feeds 1500 of its 2000 free milli-GPU and strands 500;
  // node 1 strands nothing.
  openb_scheduler<go_rand> s(openb_policy::sfgd, {0, 1}, &t, &rng, 1);
  CHECK(s.sfgd_delta(c.node(0), 0, cpu_pod).first == -500 * model.denom());
  CHECK(s.sfgd_delta(c.node(1), 1, cpu_pod).first == 0);
  CHECK(s.schedule(c, cpu_pod).node == 1);
  // With the stranding term off and FGD's sigmoid back, it chooses as FGD.
  sfgd_knobs as_fgd;
  as_fgd.exact = false;
  as_fgd.strand = 0;
  as_fgd.host = 0;
  s.set_sfgd_knobs(as_fgd);
  CHECK(s.schedule(c, cpu_pod).node == 0);
}

TEST_CASE("sfgd ranks by the exact fragment change, not the truncated sigmoid", "[sim][score]") {
  auto model = typical_of(std::vector<openb_pod>(10, pod(0, 1, 500)));
  openb_cluster c({openb_node_spec{8000, 100, 1, 0}, openb_node_spec{8000, 100, 1, 0}});
  c.bind(0, pod(0, 1, 520), 0b1);  // node 0 free [480]: all fragment for a 500 pod
  c.bind(1, pod(0, 1, 490), 0b1);  // node 1 free [510]
  frag_tracker t(model, c);
  go_rand rng(1);
  sfgd_knobs exact_only;
  exact_only.strand = 0;
  // A 10 milli pod: node 0 loses 10 of fragment (480 -> 470); node 1 turns 510 (usable) into
  // 500 (still usable): no change. FGD's sigmoid scores both 50, so the rank (node 1) wins.
  openb_scheduler<go_rand> fgd(openb_policy::fgd, {1, 0}, &t, &rng, 1);
  CHECK(fgd.schedule(c, pod(0, 1, 10)).node == 1);
  openb_scheduler<go_rand> s(openb_policy::sfgd, {1, 0}, &t, &rng, 1);
  s.set_sfgd_knobs(exact_only);
  CHECK(s.sfgd_delta(c.node(0), 0, pod(0, 1, 10)).first == 10 * model.denom());
  CHECK(s.schedule(c, pod(0, 1, 10)).node == 0);
}

namespace {
/// A cluster of one-GPU nodes with `cpu` milli-CPU each, all but the last `whole` GPUs taken by
/// whole-GPU pods of 2000 milli-CPU.
openb_cluster mostly_full(int nodes, int whole, std::int64_t cpu) {
  openb_cluster c(std::vector<openb_node_spec>(static_cast<std::size_t>(nodes),
                                               openb_node_spec{cpu, 1000, 1, 0}));
  for (int i = 0; i < nodes - whole; ++i)
    c.bind(static_cast<std::size_t>(i), pod(2000, 1, 1000), 1);
  return c;
}
std::vector<std::int32_t> identity_ranks(std::size_t n) {
  std::vector<std::int32_t> r(n);
  for (std::size_t i = 0; i < n; ++i) r[i] = static_cast<std::int32_t>(i);
  return r;
}
/// Typical pods: mostly whole GPUs, then 810-milli pods (nothing fits their 190 sliver), and
/// 470-milli pods (which fit the 530 a 470 pod leaves).
std::vector<openb_pod> whole_and_slivers() {
  std::vector<openb_pod> kinds(6, pod(2000, 1, 1000));
  kinds.insert(kinds.end(), 3, pod(2000, 1, 810));
  kinds.insert(kinds.end(), 2, pod(2000, 1, 470));
  return kinds;
}
}  // namespace

TEST_CASE("rsfgd keeps the last whole GPUs from pods that would leave an unusable sliver",
          "[sim][score]") {
  auto model = typical_of(whole_and_slivers());
  const openb_pod sliver = pod(2000, 1, 810);
  // 8 GPUs, 1 whole (12.5% < 25%), CPU to spare.
  openb_cluster c = mostly_full(8, 1, 64000);
  REQUIRE(c.whole_free_gpus() == 1);
  frag_tracker t(model, c);
  go_rand rng(1);
  openb_scheduler<go_rand> sfgd(openb_policy::sfgd, identity_ranks(8), &t, &rng, 1);
  CHECK(sfgd.schedule(c, sliver).node == 7);
  CHECK_FALSE(sfgd.last_held_back());
  openb_scheduler<go_rand> r(openb_policy::rsfgd, identity_ranks(8), &t, &rng, 1);
  CHECK(r.schedule(c, sliver).node < 0);
  CHECK(r.last_held_back());
  CHECK(r.held_back() == 1);
  // Whole-GPU pods and pods whose remainder typical pods fill are never held back.
  CHECK(r.schedule(c, pod(2000, 1, 1000)).node == 7);
  CHECK(r.schedule(c, pod(2000, 1, 470)).node == 7);
  CHECK_FALSE(r.last_held_back());
  CHECK(r.held_back() == 1);
  // Enough whole GPUs (1 of 8 is at least 10%): placed.
  sfgd_knobs k;
  k.reserve = 0.1;
  r.set_sfgd_knobs(k);
  CHECK(r.schedule(c, sliver).node == 7);
  // reserve 0 is sfgd.
  k.reserve = 0;
  r.set_sfgd_knobs(k);
  CHECK(r.schedule(c, sliver).node == 7);
  // sfgd holds back when given a reserve.
  k.reserve = 0.25;
  sfgd.set_sfgd_knobs(k);
  CHECK(sfgd.schedule(c, sliver).node < 0);
  CHECK(sfgd.last_held_back());
}

TEST_CASE("rsfgd places the pod where holding the GPU back would gain nothing", "[sim][score]") {
  const openb_pod sliver = pod(2000, 1, 810);
  go_rand rng(1);
  SECTION("a GPU that is not whole takes it: nothing to keep") {
    auto model = typical_of(whole_and_slivers());
    openb_cluster c = mostly_full(8, 1, 64000);
    c.unbind(0, pod(2000, 1, 1000), 1);
    c.bind(0, pod(2000, 1, 100), 1);  // node 0: 900 free, not whole
    frag_tracker t(model, c);
    openb_scheduler<go_rand> r(openb_policy::rsfgd, identity_ranks(8), &t, &rng, 1);
    CHECK(r.schedule(c, sliver).node == 0);
    CHECK_FALSE(r.last_held_back());
  }
  SECTION("no typical pod would use the whole GPU better") {
    std::vector<openb_pod> kinds(6, pod(2000, 1, 810));
    kinds.insert(kinds.end(), 2, pod(2000, 1, 470));
    auto model = typical_of(kinds);
    openb_cluster c = mostly_full(8, 1, 64000);
    frag_tracker t(model, c);
    openb_scheduler<go_rand> r(openb_policy::rsfgd, identity_ranks(8), &t, &rng, 1);
    CHECK(r.schedule(c, sliver).node == 7);
  }
  SECTION("the node's CPU could not feed the pods that would use the GPU better") {
    auto model = typical_of(whole_and_slivers());
    std::vector<openb_node_spec> specs(8, openb_node_spec{64000, 1000, 1, 0});
    specs[7].cpu = 2000;  // the whole GPU's node: after no pod, 2000 left; whole pods need 2000
    openb_cluster c(specs);
    for (std::size_t i = 0; i < 7; ++i) c.bind(i, pod(2000, 1, 1000), 1);
    frag_tracker t(model, c);
    openb_scheduler<go_rand> r(openb_policy::rsfgd, identity_ranks(8), &t, &rng, 1);
    // 2000 left: the whole-GPU typical pods (2000) fit, so it is held back ...
    CHECK(r.schedule(c, sliver).node < 0);
    // ... but not once a CPU-only pod has taken some of it.
    c.bind(7, pod(500, 0, 0), 0);
    t.update(c, 7);
    CHECK(r.schedule(c, pod(1500, 1, 810)).node == 7);
  }
  SECTION("the cluster runs short of CPU, not GPU") {
    auto model = typical_of(whole_and_slivers());
    // Free GPU 1000 milli needs 2 x 2 x 1000 = 4000 milli-CPU free in the cluster to hold back.
    openb_cluster c = mostly_full(8, 1, 2000);
    REQUIRE(c.cpu_left() == 2000);
    frag_tracker t(model, c);
    openb_scheduler<go_rand> r(openb_policy::rsfgd, identity_ranks(8), &t, &rng, 1);
    CHECK(r.schedule(c, sliver).node == 7);
  }
  SECTION("a typed pod counts the whole GPUs of its models only") {
    auto model =
        frag_model(openb_typical_pods(whole_and_slivers(), std::vector<std::string>(11)), 2);
    // Model 0: 8 GPUs, 1 whole (12.5%); model 1: 8 GPUs, all whole.
    std::vector<openb_node_spec> specs(16, openb_node_spec{64000, 1000, 1, 0});
    for (std::size_t i = 8; i < 16; ++i) specs[i].model = 1;
    openb_cluster c(specs);
    for (std::size_t i = 0; i < 7; ++i) c.bind(i, pod(2000, 1, 1000), 1);
    CHECK(c.whole_free_gpus(1U) == std::pair<std::int64_t, std::int64_t>{1, 8});
    CHECK(c.whole_free_gpus(2U) == std::pair<std::int64_t, std::int64_t>{8, 8});
    frag_tracker t(model, c);
    openb_scheduler<go_rand> r(openb_policy::rsfgd, identity_ranks(16), &t, &rng, 1);
    openb_pod typed = sliver;
    typed.typed = true;
    typed.types = 1U;  // model 0 only: its last whole GPU is kept
    CHECK(r.schedule(c, typed).node < 0);
    CHECK(r.last_held_back());
    // Untyped: 9 of 16 whole, no reservation in force.
    CHECK(r.schedule(c, sliver).node >= 0);
  }
}

TEST_CASE("the cluster's whole-GPU and free-CPU counts follow every bind and unbind",
          "[sim][score]") {
  std::vector<openb_node_spec> specs = {
      {32000, 1000, 4, 0}, {16000, 1000, 2, 1}, {8000, 1000, 0, -1}, {64000, 1000, 8, 1}};
  openb_cluster c(specs);
  go_rand rng(5);
  struct bound {
    std::size_t node;
    openb_pod p;
    gpu_mask mask;
  };
  std::vector<bound> live;
  for (int step = 0; step < 400; ++step) {
    if (!live.empty() && rng.intn(3) == 0) {
      const auto k = static_cast<std::size_t>(rng.intn(static_cast<std::int64_t>(live.size())));
      c.unbind(live[k].node, live[k].p, live[k].mask);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      const auto i = static_cast<std::size_t>(rng.intn(4));
      const openb_node& n = c.node(i);
      const int gpus = n.gpus > 0 ? 1 : 0;
      const openb_pod p =
          pod(100 * (1 + rng.intn(10)), gpus, gpus * 50 * (1 + static_cast<int>(rng.intn(20))));
      if (!openb_feasible(n, p)) continue;
      const gpu_mask mask = p.n > 0 ? openb_select_best(n, p) : gpu_mask{0};
      c.bind(i, p, mask);
      live.push_back({i, p, mask});
    }
    std::int64_t whole = 0, cpu = 0;
    std::array<std::int64_t, 2> by_model{};
    for (const auto& n : c.nodes()) {
      cpu += n.cpu_left();
      for (int g = 0; g < n.gpus; ++g) {
        const bool w = n.free[static_cast<std::size_t>(g)] == k_openb_gpu_milli;
        whole += w;
        if (w) by_model[static_cast<std::size_t>(n.model)] += 1;
      }
    }
    REQUIRE(c.whole_free_gpus() == whole);
    REQUIRE(c.cpu_left() == cpu);
    REQUIRE(c.whole_free_gpus(1U).first == by_model[0]);
    REQUIRE(c.whole_free_gpus(2U).first == by_model[1]);
    REQUIRE(c.whole_free_gpus(3U) == std::pair<std::int64_t, std::int64_t>{whole, 14});
  }
}

namespace {
/// The same scheduler twice over two copies of one cluster: one scoring every node, the other
/// through the node index (every class above a 1/n share indexed, n the node count).
struct scan_beside_index {
  openb_cluster a, b;
  std::vector<std::string> no_specs;
  frag_model model_a, model_b;
  frag_tracker ta, tb;
  go_rand ra, rb;
  openb_scheduler<go_rand> scan, indexed;

  scan_beside_index(const std::vector<openb_node_spec>& specs, const std::vector<openb_pod>& kinds,
                    int model_count, std::int64_t seed, openb_policy policy, sfgd_knobs knobs = {})
      : a(specs),
        b(specs),
        no_specs(kinds.size()),
        model_a(openb_typical_pods(kinds, no_specs), model_count),
        model_b(openb_typical_pods(kinds, no_specs), model_count),
        ta(model_a, a),
        tb(model_b, b),
        ra(seed),
        rb(seed),
        scan(policy, ranks(specs.size()), &ta, &ra, kinds.size()),
        indexed(policy, ranks(specs.size()), &tb, &rb, kinds.size()) {
    scan.set_sfgd_knobs(knobs);
    indexed.set_sfgd_knobs(knobs);
    indexed.enable_index(1);  // the default share needs more nodes
  }

  /// Node ranks in a fixed shuffled order.
  static std::vector<std::int32_t> ranks(std::size_t n) {
    std::vector<std::int32_t> r(n);
    for (std::size_t i = 0; i < n; ++i) r[i] = static_cast<std::int32_t>((i * 7) % n);
    return r;
  }

  /// Decides pod p of class c both ways, requires the same node and GPUs, and binds it in both
  /// when it fits somewhere.
  openb_placement place(const openb_pod& p, std::int32_t c) {
    const auto x = scan.schedule(a, p, c);
    const auto y = indexed.schedule(b, p, c);
    REQUIRE(x.node == y.node);
    REQUIRE(x.gpus == y.gpus);
    if (x.node >= 0) {
      const auto node = static_cast<std::size_t>(x.node);
      a.bind(node, p, x.gpus);
      b.bind(node, p, y.gpus);
      changed(node);
    }
    return x;
  }

  /// Removes a running pod from both copies.
  void remove(std::size_t node, const openb_pod& p, gpu_mask gpus) {
    a.unbind(node, p, gpus);
    b.unbind(node, p, gpus);
    changed(node);
  }

 private:
  void changed(std::size_t node) {
    ta.update(a, node);
    tb.update(b, node);
    indexed.node_changed(node);
  }
};
}  // namespace

TEST_CASE("the node index chooses exactly as scoring every node", "[sim][score]") {
  // 40 nodes of four shapes; pods of five classes (one typed to model 1, one memory-heavy), so
  // the index must skip nodes that fail the full filter.
  std::vector<openb_node_spec> specs;
  for (int i = 0; i < 40; ++i) {
    specs.push_back(openb_node_spec{16000 + 16000 * (i % 3), 64 + 64 * (i % 2), 1 + i % 8, i % 2});
  }
  std::vector<openb_pod> kinds = {pod(2000, 1, 500, 8), pod(4000, 1, 1000, 16), pod(1000, 0, 0, 4),
                                  pod(3000, 2, 1000, 100), pod(2000, 1, 250, 8)};
  kinds[4].typed = true;
  kinds[4].types = 0b10;
  for (auto policy : {openb_policy::fgd, openb_policy::sfgd, openb_policy::dotprod,
                      openb_policy::gpuclustering, openb_policy::gpupacking}) {
    scan_beside_index t(specs, kinds, 2, 3, policy);
    go_rand pick(11);
    int placed = 0;
    for (int k = 0; k < 600; ++k) {
      const auto c = static_cast<std::int32_t>(pick.intn(static_cast<std::int64_t>(kinds.size())));
      INFO("decision " << k << " class " << c);
      if (t.place(kinds[static_cast<std::size_t>(c)], c).node >= 0) ++placed;
    }
    CHECK(placed > 100);
    CHECK(t.indexed.indexed_classes() >= 3);
    CHECK(t.scan.indexed_classes() == 0);
  }
}

TEST_CASE("the node index chooses exactly as scoring every node under departures", "[sim][score]") {
  // 300 nodes of three models and none, with memory that binds: each pod of a class draws its
  // own memory and, for one class, one of two type masks, so the index must search past nodes
  // that fail the full filter; a third of the steps remove a running pod instead.
  std::vector<openb_node_spec> specs;
  for (int i = 0; i < 300; ++i) {
    const int gpus = i % 10 == 9 ? 0 : 1 + (i * 5) % 8;
    specs.push_back(openb_node_spec{32000 + 16000 * (i % 4), 96 + 32 * (i % 5), gpus,
                                    gpus == 0 ? k_openb_no_model : i % 3});
  }
  const std::vector<openb_pod> kinds = {pod(2000, 1, 500),  pod(4000, 1, 1000), pod(1000, 0, 0),
                                        pod(3000, 2, 1000), pod(2000, 1, 250),  pod(6000, 1, 300)};
  struct variant {
    openb_policy policy;
    sfgd_knobs knobs;
  };
  sfgd_knobs ties;
  ties.pack = true;
  ties.cpu_fit = true;
  for (const variant& v :
       {variant{openb_policy::fgd, {}}, variant{openb_policy::sfgd, {}},
        variant{openb_policy::sfgd, ties}, variant{openb_policy::dotprod, {}},
        variant{openb_policy::gpuclustering, {}}, variant{openb_policy::gpupacking, {}}}) {
    INFO("policy " << openb_policy_name(v.policy) << " pack " << v.knobs.pack);
    scan_beside_index t(specs, kinds, 3, 5, v.policy, v.knobs);
    struct running {
      std::size_t node;
      openb_pod pod;
      gpu_mask gpus;
    };
    std::vector<running> live;
    go_rand pick(17);
    int placed = 0;
    int departed = 0;
    for (int k = 0; k < 3000; ++k) {
      if (!live.empty() && pick.intn(3) == 0) {
        const auto at = static_cast<std::size_t>(pick.intn(static_cast<std::int64_t>(live.size())));
        const running r = live[at];
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(at));
        t.remove(r.node, r.pod, r.gpus);
        ++departed;
        continue;
      }
      const auto c = static_cast<std::int32_t>(pick.intn(static_cast<std::int64_t>(kinds.size())));
      openb_pod p = kinds[static_cast<std::size_t>(c)];
      p.mem = 4 + pick.intn(60);
      if (c == 4) {
        p.typed = true;
        p.types = pick.intn(2) == 0 ? 0b010 : 0b101;
      }
      INFO("step " << k << " class " << c);
      const auto x = t.place(p, c);
      if (x.node < 0) continue;
      ++placed;
      live.push_back(running{static_cast<std::size_t>(x.node), p, x.gpus});
    }
    CHECK(placed > 1000);
    CHECK(departed > 500);
    CHECK(t.indexed.indexed_classes() == kinds.size());
  }
}

TEST_CASE("sfgd's host pressure keeps a scarce model's GPUs for the pods typed to it",
          "[sim][score]") {
  // Model 0 (X) has one GPU, model 1 (Y) four. Typical pods: four untyped, one typed to X and
  // two typed to Y, all 500 milli. FGD's measure counts a node's free GPU as fragment for the
  // typed pods that cannot use its model: two Y-typed against X's GPU, one X-typed against
  // each Y GPU, so filling X looks like the larger decrease. X's pods have one GPU to go to,
  // Y's four: per GPU, X is the dearer.
  std::vector<openb_pod> pods(4, pod(0, 1, 500));
  std::vector<std::string> specs(4);
  openb_pod on_x = pod(0, 1, 500);
  on_x.typed = true;
  on_x.types = 0b01;
  openb_pod on_y = pod(0, 1, 500);
  on_y.typed = true;
  on_y.types = 0b10;
  pods.push_back(on_x);
  specs.emplace_back("X");
  pods.insert(pods.end(), 2, on_y);
  specs.insert(specs.end(), 2, "Y");
  frag_model model(openb_typical_pods(pods, specs), 2);
  REQUIRE(model.typical().pods.size() == 3);
  std::vector<openb_node_spec> nodes = {openb_node_spec{8000, 100, 1, 0}};
  nodes.insert(nodes.end(), 4, openb_node_spec{8000, 100, 1, 1});
  openb_cluster c(nodes);
  frag_tracker t(model, c);
  go_rand rng(1);
  const std::vector<std::int32_t> ranks = {0, 1, 2, 3, 4};
  // Without the term, sfgd fills X first: its decrease is 500 x 2 against Y's 500 x 1.
  openb_scheduler<go_rand> plain(openb_policy::sfgd, ranks, &t, &rng);
  sfgd_knobs off;
  off.host = 0;
  plain.set_sfgd_knobs(off);
  CHECK(plain.schedule(c, pod(0, 1, 500)).node == 0);
  // Demand shares 4/7, 1/7, 2/7 of 5 GPUs; capacities 5, 1 and 4 GPUs. Per milli, X's GPU
  // weighs 4/7 + 5/7 and a Y GPU 4/7 + 5/14 (times denom 7): X costs 2.5 denominators more
  // than Y per milli, which outweighs FGD's one.
  openb_scheduler<go_rand> s(openb_policy::sfgd, ranks, &t, &rng);
  sfgd_knobs on;
  on.host = 1;
  s.set_sfgd_knobs(on);
  CHECK(s.schedule(c, pod(0, 1, 500)).node == 1);
  CHECK(s.sfgd_delta(c.node(0), 0, pod(0, 1, 500)).first == 2 * 500 - (4 + 5) * 500);
  CHECK(s.sfgd_delta(c.node(1), 1, pod(0, 1, 500)).first == 1 * 500 - (8 + 5) * 500 / 2);
  // A pod typed to X has only X: the term never refuses it.
  CHECK(s.schedule(c, on_x).node == 0);
}

TEST_CASE("sfgd's host pressure can weigh the rare pod classes the typical pods leave out",
          "[sim][score]") {
  // Two 8-GPU nodes, 128 and 96 cores; the typical pods are one-GPU pods that both can host,
  // so their pressure is the same on both and the rank decides.
  auto model = typical_of(std::vector<openb_pod>(10, pod(0, 1, 1000)));
  openb_cluster c({openb_node_spec{128000, 100, 8, 0}, openb_node_spec{96000, 100, 8, 0}});
  frag_tracker t(model, c);
  go_rand rng(1);
  openb_scheduler<go_rand> typical_only(openb_policy::sfgd, {0, 1}, &t, &rng, 1);
  CHECK(typical_only.schedule(c, pod(0, 1, 1000)).node == 0);
  // One 8-GPU pod asking 120,000 milli-CPU, too rare to be typical, fits only the first node:
  // counted among the host classes, it makes that node's GPUs dearer.
  std::vector<openb_pod> all(10, pod(0, 1, 1000));
  all.push_back(pod(120000, 8, 1000));
  openb_scheduler<go_rand> s(openb_policy::sfgd, {0, 1}, &t, &rng, 1);
  s.set_host_classes(openb_typical_pods(all, std::vector<std::string>(all.size()), 100));
  CHECK(s.schedule(c, pod(0, 1, 1000)).node == 1);
}
