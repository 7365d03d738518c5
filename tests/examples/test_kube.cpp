// Kubernetes objects -> fit model (examples/common/kube.hpp): quantities, pods, nodes, bound
// pods, and the words of a rejection.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "kube.hpp"

using namespace gpuslice;
using kube::json;

namespace {
constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;

json gpu_pod(json limits, json annotations = json::object()) {
  return json{
      {"metadata", {{"name", "p"}, {"namespace", "ns"}, {"annotations", annotations}}},
      {"spec",
       {{"containers", json::array({{{"name", "main"}, {"resources", {{"limits", limits}}}}})}}}};
}
}  // namespace

TEST_CASE("Kubernetes quantities round up to integers as Quantity.Value() does", "[examples]") {
  const std::vector<std::pair<std::string, std::int64_t>> ok = {{"3", 3},
                                                                {"3k", 3000},
                                                                {"4k", 4000},
                                                                {"1.5Gi", 1610612736},
                                                                {"2e3", 2000},
                                                                {"1E3", 1000},
                                                                {"500m", 1},
                                                                {"0.1", 1},
                                                                {"1Mi", 1048576},
                                                                {"+5", 5},
                                                                {"0", 0},
                                                                {"2M", 2000000},
                                                                {"1E", 1000000000000000000},
                                                                {"1500u", 1},
                                                                {"007", 7},
                                                                {"1.0005k", 1001},
                                                                {"9E", 9000000000000000000}};
  for (const auto& [text, value] : ok) {
    INFO(text);
    auto q = kube::parse_quantity(text);
    REQUIRE(q);
    CHECK(*q == value);
  }
  for (const std::string bad : {"", "-1", "abc", "1.2.3", "3MB", "1e99", "99999999999999999999",
                                "10E", "3 k", "k", ".", "1ki"}) {
    INFO(bad);
    auto q = kube::parse_quantity(bad);
    REQUIRE_FALSE(q);
    CHECK(q.message().find("expected a Kubernetes quantity") != std::string::npos);
  }
}

TEST_CASE("A pod's HAMi limits become container requests", "[examples]") {
  json pod = gpu_pod({{"nvidia.com/gpu", "2"},
                      {"nvidia.com/gpumem", "3k"},
                      {"nvidia.com/gpucores", "30"},
                      {"cpu", "4"}},
                     {{"nvidia.com/use-gputype", "A100, H100"},
                      {"nvidia.com/nouse-gpuuuid", "GPU-x"},
                      {"nvidia.com/numa-bind", "true"}});
  // An init container (placed first) asking for a percentage of memory, through requests.
  pod["spec"]["initContainers"] = json::array(
      {{{"name", "warm"},
        {"resources",
         {{"requests", {{"nvidia.com/gpu", 1}, {"nvidia.com/gpumem-percentage", "25"}}}}}}});
  auto r = kube::pod_request_from_json(pod);
  REQUIRE(r);
  REQUIRE(r->containers.size() == 2);
  const auto& init = r->containers[0];
  CHECK(init.count == 1);
  CHECK(init.memory_percent == 25);
  CHECK(init.memory == 0);
  const auto& main = r->containers[1];
  CHECK(main.count == 2);
  CHECK(main.memory == 3000 * k_mib);
  CHECK(main.cores == 300);
  CHECK(main.use_types == std::vector<std::string>{"A100", "H100"});
  CHECK(main.nouse_uuids == std::vector<std::string>{"GPU-x"});
  CHECK(main.numa_bind);
  CHECK(kube::wants_gpu(*r));

  auto plain = kube::pod_request_from_json(gpu_pod({{"cpu", "1"}}));
  REQUIRE(plain);
  CHECK_FALSE(kube::wants_gpu(*plain));
}

TEST_CASE("A bad GPU request is one line naming the pod, the container and the field",
          "[examples]") {
  struct bad_case {
    json pod;
    std::string fragment;
  };
  const std::vector<bad_case> cases = {
      {gpu_pod({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpucores", "150"}}),
       "pod ns/p: container \"main\": nvidia.com/gpucores 150: expected at most 100"},
      {gpu_pod({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "lots"}}),
       "nvidia.com/gpumem \"lots\": no digits"},
      {gpu_pod({{"nvidia.com/gpumem", "1k"}}), "without nvidia.com/gpu"},
      {gpu_pod({{"nvidia.com/gpu", "1"},
                {"nvidia.com/gpumem", "1k"},
                {"nvidia.com/gpumem-percentage", "50"}}),
       "both memory and memory_percent"},
      {gpu_pod({{"nvidia.com/gpu", -1}}), "nvidia.com/gpu \"-1\": negative"},
      {gpu_pod({{"nvidia.com/gpu", 1.5}}), "expected a quantity (a string or an integer)"},
      {gpu_pod({{"nvidia.com/gpu", "1"}}, {{"nvidia.com/numa-bind", "yes"}}),
       "expected \"true\" or \"false\""},
      {json{{"metadata", {{"name", "p"}}}}, "spec: expected an object"},
      {json{{"spec", json::object()}}, "metadata.name"},
  };
  for (const auto& c : cases) {
    INFO(c.pod.dump());
    auto r = kube::pod_request_from_json(c.pod);
    REQUIRE_FALSE(r);
    CHECK(r.message().find(c.fragment) != std::string::npos);
    CHECK(r.message().find('\n') == std::string::npos);
  }
}

TEST_CASE("Nodes come from HAMi's registration annotation; bound pods charge their GPUs",
          "[examples]") {
  const json nodes = example_tests::read_json(example_tests::sample("nodes.json"));
  std::vector<fit::node> parsed;
  for (const auto& n : *kube::items(nodes)) {
    auto node = kube::node_from_json(n);
    REQUIRE(node);
    parsed.push_back(*node);
  }
  REQUIRE(parsed.size() == 3);
  CHECK(parsed[0].name == "gpu-a");
  REQUIRE(parsed[0].devices.size() == 4);
  CHECK(parsed[0].devices[3].numa == 1);
  CHECK(parsed[0].devices[0].memory_total == 32768 * k_mib);
  CHECK(parsed[1].devices[0].type == "NVIDIA-Tesla T4");
  CHECK(parsed[2].devices.empty());  // no annotation: a CPU node

  const json pods = example_tests::read_json(example_tests::sample("pods.json"));
  int charged = 0, pending = 0;
  for (const auto& p : *kube::items(pods)) {
    auto c = kube::charge_bound_pod(parsed, p);
    REQUIRE(c);
    charged += *c ? 1 : 0;
    pending += kube::is_pending(p) ? 1 : 0;
  }
  CHECK(charged == 1);  // running-train; finished-job has Succeeded
  CHECK(pending == 6);
  CHECK(parsed[0].devices[0].memory_used == 16384 * k_mib);
  CHECK(parsed[0].devices[0].cores_used == 500);
  CHECK(parsed[0].devices[0].slots_used == 1);
  CHECK(parsed[1].devices[0].slots_used == 0);

  json stray = pods["items"][0];
  stray["metadata"]["annotations"]["hami.io/vgpu-devices-allocated"] = "GPU-zz,NVIDIA,1,0:;";
  auto bad = kube::charge_bound_pod(parsed, stray);
  REQUIRE_FALSE(bad);
  CHECK(bad.message().find("\"GPU-zz\" on node gpu-a") != std::string::npos);

  json broken = nodes["items"][0];
  broken["metadata"]["annotations"]["hami.io/node-nvidia-register"] = "[{\"id\":";
  auto node = kube::node_from_json(broken);
  REQUIRE_FALSE(node);
  CHECK(node.message().rfind("node gpu-a: node registration", 0) == 0);
}

TEST_CASE("A rejection names node-level reasons and device counts", "[examples]") {
  fit::node n;
  n.name = "n";
  CHECK(kube::describe_rejection(n, {}) == "no GPUs registered");
  n.devices.resize(3);
  fit::reason_counts r;
  r.add(fit::reason::insufficient_memory, 2);
  r.add(fit::reason::type_mismatch, 1);
  r.add(fit::reason::insufficient_devices);
  CHECK(kube::describe_rejection(n, r) ==
        "too few suitable GPUs (2 devices: insufficient GPU memory; 1 device: GPU type mismatch)");
}

TEST_CASE("Policies by name, and unknown names refused", "[examples]") {
  auto s = kube::scorer_from_names({"spread", "topology"});
  REQUIRE(s);
  CHECK(s->node_policy() == fit::hami_policy::spread);
  CHECK(s->topology());
  auto bad = kube::scorer_from_names({"packed", "spread"});
  REQUIRE_FALSE(bad);
  CHECK(bad.message() == "node policy \"packed\": expected binpack or spread");
  CHECK_FALSE(kube::scorer_from_names({"binpack", "fgd"}));
}
