// The milli-GPU cluster model: feasibility (§2), selectors and bind/unbind (§5).
#include <catch2/catch.hpp>
#include <vector>

#include "fixtures.hpp"
#include "gpuslice/fit/openb.hpp"
#include "gpuslice/sim/go_rand.hpp"

using namespace gpuslice::fit;
using fixtures::pod;

namespace {
openb_cluster one_node(int gpus, std::int64_t cpu = 64000, std::int64_t mem = 1000, int model = 0) {
  return openb_cluster({openb_node_spec{cpu, mem, gpus, model}});
}
}  // namespace

TEST_CASE("pod kinds follow num_gpu and gpu_milli", "[sim][openb]") {
  CHECK(pod(1000, 0, 0).kind() == openb_pod_kind::cpu_only);
  CHECK(pod(1000, 1, 500).kind() == openb_pod_kind::sharing);
  CHECK(pod(1000, 1, 1000).kind() == openb_pod_kind::whole);
  CHECK(pod(1000, 4, 1000).kind() == openb_pod_kind::multi);
  CHECK(pod(1000, 4, 1000).gpu_request() == 4000);
  CHECK(pod(1000, 1, 500).tag() == 0);
  CHECK(pod(1000, 2, 1000).tag() == 2);
  CHECK(pod(1000, 0, 0).tag() == -1);
}

TEST_CASE("the filter checks pods, CPU, memory, GPUs and type", "[sim][openb]") {
  auto c = one_node(2, 8000, 100);
  const auto& n = c.node(0);
  CHECK(openb_feasible(n, pod(8000, 0, 0, 100)));
  CHECK_FALSE(openb_feasible(n, pod(8001, 0, 0)));
  CHECK_FALSE(openb_feasible(n, pod(0, 0, 0, 101)));
  CHECK(openb_feasible(n, pod(0, 2, 1000)));
  CHECK_FALSE(openb_feasible(n, pod(0, 3, 1000)));
  c.bind(0, pod(0, 1, 600), 0b01);
  CHECK(openb_feasible(c.node(0), pod(0, 1, 1000)));
  CHECK_FALSE(openb_feasible(c.node(0), pod(0, 2, 1000)));
  CHECK(openb_feasible(c.node(0), pod(0, 1, 400)));
  c.bind(0, pod(0, 1, 600), 0b10);
  CHECK_FALSE(openb_feasible(c.node(0), pod(0, 1, 401)));
  // A CPU-only pod ignores GPUs and types entirely.
  auto cpu_only = pod(0, 0, 0);
  cpu_only.typed = true;
  CHECK(openb_feasible(c.node(0), cpu_only));
}

TEST_CASE("type constraints match node models exactly", "[sim][openb]") {
  const std::vector<std::string> models = {"T4", "V100M16", "V100M32"};
  CHECK(openb_normalise_spec("|V100M16||V100M32|") == "V100M16|V100M32");
  CHECK(openb_normalise_spec("") == "");
  CHECK(openb_spec_mask("V100M16|V100M32", models) == 0b110);
  CHECK(openb_spec_mask("V100", models) == 0);
  auto p = pod(0, 1, 500);
  p.typed = true;
  p.types = openb_spec_mask("T4|A10", models);
  CHECK(openb_feasible(one_node(1, 1000, 10, 0).node(0), p));
  CHECK_FALSE(openb_feasible(one_node(1, 1000, 10, 1).node(0), p));
  CHECK_FALSE(openb_feasible(one_node(1, 1000, 10, k_openb_no_model).node(0), p));
}

TEST_CASE("the pod limit is 1001 per node", "[sim][openb]") {
  auto c = one_node(0, 1 << 30, 1 << 30);
  for (int i = 0; i < k_openb_max_pods_per_node; ++i) c.bind(0, pod(1, 0, 0), 0);
  CHECK_FALSE(openb_feasible(c.node(0), pod(1, 0, 0)));
  c.unbind(0, pod(1, 0, 0), 0);
  CHECK(openb_feasible(c.node(0), pod(1, 0, 0)));
}

TEST_CASE("selectors pick GPUs as the artifact does", "[sim][openb]") {
  auto c = one_node(4);
  c.bind(0, pod(0, 1, 300), 0b0001);  // free 700
  c.bind(0, pod(0, 1, 500), 0b0100);  // free 500
  c.bind(0, pod(0, 1, 500), 0b1000);  // free 500
  const auto& n = c.node(0);
  CHECK(n.free_total == 700 + 1000 + 500 + 500);
  CHECK(openb_select_best(n, pod(0, 1, 400)) == 0b0100);   // smallest f >= m, lowest index
  CHECK(openb_select_worst(n, pod(0, 1, 400)) == 0b0010);  // largest f
  CHECK(openb_select_best(n, pod(0, 1, 600)) == 0b0001);
  CHECK(openb_select_best(n, pod(0, 1, 1000)) == 0b0010);
  CHECK(openb_select_best(n, pod(0, 0, 0)) == 0);
  CHECK(openb_select_lowest(n, pod(0, 2, 1000)) == 0);  // only one fully free GPU

  // Random: one Intn(k) per eligible GPU, keep the k-th when the draw is 0.
  gpuslice::sim::go_rand a(5);
  gpuslice::sim::go_rand b(5);
  const auto mask = openb_select_random(n, pod(0, 1, 400), a);
  int expect = -1;
  std::int64_t k = 0;
  for (int g = 0; g < 4; ++g) {
    if (n.free[static_cast<std::size_t>(g)] >= 400 && b.intn(++k) == 0) expect = g;
  }
  CHECK(mask == (1U << expect));
  CHECK(a.int63() == b.int63());  // the same number of draws
}

TEST_CASE("bind and unbind keep totals exact", "[sim][openb]") {
  auto c = one_node(8, 96000, 1000);
  const auto p = pod(4000, 2, 1000, 10);
  c.bind(0, p, 0b11);
  CHECK(c.allocated_milli() == 2000);
  CHECK(c.node(0).cpu_left() == 92000);
  CHECK(c.node(0).gpu_bindings == 2);
  CHECK(c.node(0).tags[2] == 1);
  CHECK(c.node(0).full_count() == 6);
  const auto v = c.node(0).version;
  c.unbind(0, p, 0b11);
  CHECK(c.allocated_milli() == 0);
  CHECK(c.node(0).all_free());
  CHECK(c.node(0).tags[2] == 0);
  CHECK(c.node(0).version == v + 1);
}
