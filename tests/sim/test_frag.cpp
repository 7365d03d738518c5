// Typical pods (§3) and fragmentation (§4): a worked example, the cache against the
// definition on random states, and the tracker.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "gpuslice/fit/frag.hpp"
#include "gpuslice/sim/go_rand.hpp"

using namespace gpuslice::fit;
using fixtures::pod;

namespace {
void add(std::vector<openb_pod>& pods, std::vector<std::string>& specs, const openb_pod& p,
         int times, const std::string& spec = "") {
  for (int i = 0; i < times; ++i) {
    pods.push_back(p);
    specs.push_back(spec);
  }
}
}  // namespace

TEST_CASE("typical pods: count order, key order on ties, all kept below the threshold",
          "[sim][frag]") {
  std::vector<openb_pod> pods;
  std::vector<std::string> specs;
  add(pods, specs, pod(1000, 1, 500), 2);
  add(pods, specs, pod(0, 0, 0), 1);
  add(pods, specs, pod(1000, 1, 1000), 1);
  const auto t = openb_typical_pods(pods, specs);
  REQUIRE(t.pods.size() == 3);
  CHECK(t.denom == 4);
  CHECK(t.pods[0].m == 500);
  CHECK(t.pods[1].m == 1000);  // equal counts: the larger key first
  CHECK(t.pods[2].n == 0);
}

TEST_CASE("typical pods: the shortest prefix reaching 95% and its own weights", "[sim][frag]") {
  std::vector<openb_pod> pods;
  std::vector<std::string> specs;
  add(pods, specs, pod(1000, 1, 100), 50);
  add(pods, specs, pod(2000, 1, 200), 30);
  add(pods, specs, pod(3000, 1, 300), 15);
  add(pods, specs, pod(4000, 1, 400), 5);
  const auto t = openb_typical_pods(pods, specs);
  REQUIRE(t.pods.size() == 3);
  CHECK(t.denom == 95);
  // T is part of the key: the same request with two specs gives two keys.
  std::vector<openb_pod> typed;
  std::vector<std::string> typed_specs;
  add(typed, typed_specs, pod(1000, 1, 100), 3, "T4");
  add(typed, typed_specs, pod(1000, 1, 100), 3, "");
  CHECK(openb_typical_pods(typed, typed_specs).pods.size() == 2);
}

TEST_CASE("node fragment: worked example", "[sim][frag]") {
  std::vector<openb_pod> pods;
  std::vector<std::string> specs;
  add(pods, specs, pod(1000, 1, 500), 2);
  add(pods, specs, pod(0, 0, 0), 1);
  add(pods, specs, pod(1000, 1, 1000), 1);
  frag_model model(openb_typical_pods(pods, specs), 1);
  openb_cluster c({openb_node_spec{8000, 100, 2, 0}});
  c.bind(0, pod(0, 1, 700), 0b10);  // free = [1000, 300]
  // Q3 pods count only the GPUs too small for them; the CPU-only pod counts all of L.
  CHECK(model.amount(c.node(0)) == 2 * 300 + 1 * 300 + 1 * 1300);
  CHECK(openb_node_frag_reference(c.node(0), model.typical()) == Approx(2200.0 / 4));
  c.bind(0, pod(7500, 0, 0), 0);  // cpu_left 500: no GPU pod fits on CPU
  CHECK(model.amount(c.node(0)) == 4 * 1300);
  CHECK(model.misses() == 2);
  CHECK(model.amount(c.node(0)) == 4 * 1300);
  CHECK(model.hits() == 1);
}

TEST_CASE("cached amounts equal the definition on random node states", "[sim][frag]") {
  gpuslice::sim::go_rand rng(7);
  std::vector<openb_pod> pods;
  std::vector<std::string> specs;
  const std::vector<std::string> models = {"A", "B", "C"};
  const std::vector<std::string> spec_choices = {"", "A", "B|C", "A|C", "X"};
  for (int i = 0; i < 400; ++i) {
    const int kind = static_cast<int>(rng.intn(4));
    const std::int64_t cpu = 1000 * rng.intn(12);
    openb_pod p = kind == 0   ? pod(cpu, 0, 0)
                  : kind == 1 ? pod(cpu, 1, 50 * static_cast<int>(1 + rng.intn(19)))
                              : pod(cpu, static_cast<int>(1 + rng.intn(kind == 2 ? 1 : 8)), 1000);
    const std::string spec = p.n == 0 ? "" : spec_choices[static_cast<std::size_t>(rng.intn(5))];
    p.typed = !spec.empty();
    p.types = openb_spec_mask(spec, models);
    pods.push_back(p);
    specs.push_back(spec);
  }
  frag_model model(openb_typical_pods(pods, specs), 3);
  REQUIRE(model.typical().pods.size() > 10);
  for (int trial = 0; trial < 3000; ++trial) {
    const int gpus = static_cast<int>(rng.intn(9));
    const int node_model = static_cast<int>(rng.intn(4)) - 1;
    openb_cluster c({openb_node_spec{12000, 100, gpus, node_model}});
    c.bind(0, pod(1000 * rng.intn(13), 0, 0), 0);
    for (int g = 0; g < gpus; ++g) {
      const int used = 50 * static_cast<int>(rng.intn(21));
      if (used > 0) c.bind(0, pod(0, 1, used), static_cast<gpu_mask>(1U << g));
    }
    const double exact =
        static_cast<double>(model.amount(c.node(0))) / static_cast<double>(model.denom());
    CHECK(exact == Approx(openb_node_frag_reference(c.node(0), model.typical())).margin(1e-6));
  }
  CHECK(model.hits() > 0);
}

TEST_CASE("the tracker keeps the cluster sum current", "[sim][frag]") {
  std::vector<openb_pod> pods;
  std::vector<std::string> specs;
  add(pods, specs, pod(1000, 1, 500), 3);
  add(pods, specs, pod(1000, 1, 1000), 2);
  frag_model model(openb_typical_pods(pods, specs), 1);
  openb_cluster c({openb_node_spec{8000, 100, 2, 0}, openb_node_spec{8000, 100, 4, 0}});
  frag_tracker t(model, c);
  CHECK(t.total() == 0);  // empty GPUs host every typical pod whole
  c.bind(1, pod(0, 1, 700), 0b1);
  t.update(c, 1);
  CHECK(t.node(0) == 0);
  CHECK(t.total() == t.node(1));
  CHECK(t.total_milli() == Approx(300.0));  // no typical pod can use the 300 left on GPU 0
  c.unbind(1, pod(0, 1, 700), 0b1);
  t.update(c, 1);
  CHECK(t.total() == 0);
}
