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
      {gpu_pod({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "lots"}}),
       "pod ns/p: container \"main\": nvidia.com/gpumem \"lots\": no digits"},
      {gpu_pod({{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "3000000000"}}),
       "nvidia.com/gpumem 3000000000: expected at most 2147483647"},
      {gpu_pod({{"nvidia.com/gpu", -1}}), "nvidia.com/gpu \"-1\": negative"},
      {gpu_pod({{"nvidia.com/gpu", 1.5}}), "expected a quantity (a string or an integer)"},
      {gpu_pod({{"nvidia.com/gpu", "1"}}, {{"nvidia.com/numa-bind", "yes"}}),
       "nvidia.com/numa-bind \"yes\": expected a boolean"},
      {gpu_pod({{"nvidia.com/gpu", "1"}}, {{"hami.io/gpu-scheduler-policy", "fastest"}}),
       "GPU policy \"fastest\": expected binpack, spread, topology-aware, mutex or numa"},
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

namespace {

/// One container's request after the mapping, in HAMi's units (MiB, percent).
struct hami_view {
  std::uint32_t count = 0;
  std::uint64_t memory_mib = 0;
  std::uint32_t memory_percent = 0;
  std::uint32_t cores = 0;  ///< percent
};

hami_view view(const fit::container_request& r) {
  return {r.count, r.memory / k_mib, r.memory_percent, gpuslice::milli_to_cores(r.cores)};
}

}  // namespace

TEST_CASE("HAMi's request table: what each resource form asks for", "[examples][hami]") {
  // Rows transcribed from HAMi's GenerateResourceRequests and MutateAdmission tests (webhook
  // defaults applied first, as HAMi's deployment always runs its webhook).
  struct row {
    const char* hami_case;
    json limits;
    kube::config cfg;
    hami_view want;
  };
  kube::config dflt;
  kube::config no_default_num;
  no_default_num.default_gpu_num = 0;
  kube::config default_mem;
  default_mem.default_memory = 2048;
  default_mem.default_cores = 20;
  kube::config factor;
  factor.memory_factor = 4;
  kube::config renamed;
  renamed.resource_count = "example.com/vgpu";
  renamed.resource_memory = "example.com/vmem";
  const std::vector<row> rows = {
      {"gpu count only: 100% memory, exclusive cores",
       {{"nvidia.com/gpu", "1"}},
       dflt,
       {1, 0, 0, 100}},
      {"gpu count + explicit memory: shareable, cores unset",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "3000"}},
       dflt,
       {1, 3000, 0, 0}},
      {"gpu count + memory percentage",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "40"}},
       dflt,
       {1, 0, 40, 0}},
      {"memory percentage 100 without cores: exclusive",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "100"}},
       dflt,
       {1, 0, 100, 100}},
      {"memory percentage above 100: clamped to 100",
       {{"nvidia.com/gpu", "1"},
        {"nvidia.com/gpumem-percentage", "150"},
        {"nvidia.com/gpucores", "10"}},
       dflt,
       {1, 0, 100, 10}},
      {"memory percentage 0: unset (100%)",
       {{"nvidia.com/gpu", "1"},
        {"nvidia.com/gpumem-percentage", "0"},
        {"nvidia.com/gpucores", "10"}},
       dflt,
       {1, 0, 0, 10}},
      {"gpumem and percentage together: both kept, gpumem wins at resolve",
       {{"nvidia.com/gpu", "1"},
        {"nvidia.com/gpumem", "1k"},
        {"nvidia.com/gpumem-percentage", "50"}},
       dflt,
       {1, 1000, 50, 0}},
      {"explicit cores stay",
       {{"nvidia.com/gpu", "2"}, {"nvidia.com/gpucores", "30"}},
       dflt,
       {2, 0, 0, 30}},
      {"cores above 100: clamped to 100 (exclusive)",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "512"}, {"nvidia.com/gpucores", "150"}},
       dflt,
       {1, 512, 0, 100}},
      {"gpumem without nvidia.com/gpu: defaultGPUNum (1)",
       {{"nvidia.com/gpumem", "1024"}},
       dflt,
       {1, 1024, 0, 0}},
      {"gpucores without nvidia.com/gpu: defaultGPUNum (1)",
       {{"nvidia.com/gpucores", "25"}},
       dflt,
       {1, 0, 0, 25}},
      {"percentage without nvidia.com/gpu: defaultGPUNum (1)",
       {{"nvidia.com/gpumem-percentage", "30"}},
       dflt,
       {1, 0, 30, 0}},
      {"defaultGPUNum 0: no GPU at all",
       {{"nvidia.com/gpumem", "1024"}},
       no_default_num,
       {0, 0, 0, 0}},
      {"defaultMem and defaultCores apply to a shareable request",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem-percentage", "0"}},
       default_mem,
       {1, 2048, 0, 20}},
      {"count only with defaultMem: webhook still makes it exclusive",
       {{"nvidia.com/gpu", "1"}},
       default_mem,
       {1, 2048, 0, 100}},
      {"memoryFactor: gpumem counts that many MiB",
       {{"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "1000"}},
       factor,
       {1, 4000, 0, 0}},
      {"configurable resource names",
       {{"example.com/vgpu", "1"}, {"example.com/vmem", "500"}},
       renamed,
       {1, 500, 0, 0}},
      {"default names ignored when renamed", {{"nvidia.com/gpu", "1"}}, renamed, {0, 0, 0, 0}},
  };
  for (const auto& r : rows) {
    INFO(r.hami_case);
    auto req = kube::pod_request_from_json(gpu_pod(r.limits), r.cfg);
    REQUIRE(req);
    REQUIRE(req->containers.size() == 1);
    const hami_view got = view(req->containers[0]);
    CHECK(got.count == r.want.count);
    CHECK(got.memory_mib == r.want.memory_mib);
    CHECK(got.memory_percent == r.want.memory_percent);
    CHECK(got.cores == r.want.cores);
  }
}

TEST_CASE("HAMi's annotation table: numa-bind, vgpu-mode, mutex, cordon", "[examples][hami]") {
  struct row {
    const char* value;
    bool numa;
  };
  // Go's strconv.ParseBool, as HAMi's assertNuma reads the annotation.
  const std::vector<row> rows = {{"true", true},   {"True", true},   {"TRUE", true},
                                 {"1", true},      {"t", true},      {"T", true},
                                 {"false", false}, {"False", false}, {"FALSE", false},
                                 {"0", false},     {"f", false},     {"F", false}};
  for (const auto& r : rows) {
    INFO(r.value);
    auto req = kube::pod_request_from_json(
        gpu_pod({{"nvidia.com/gpu", "1"}}, {{"nvidia.com/numa-bind", r.value}}));
    REQUIRE(req);
    CHECK(req->containers[0].numa_bind == r.numa);
  }
  auto mode = kube::pod_request_from_json(gpu_pod(
      {{"nvidia.com/gpu", "1"}},
      {{"nvidia.com/vgpu-mode", "mig"}, {"hami.io/gpu-scheduler-policy", "binpack, mutex"}}));
  REQUIRE(mode);
  CHECK(mode->containers[0].modes == "mig");
  CHECK(mode->containers[0].idle_only);

  json node = example_tests::read_json(example_tests::sample("nodes.json"))["items"][0];
  node["metadata"]["annotations"]["hami.io/device-cordon"] = " GPU-a1 ,, GPU-a3";
  auto n = kube::node_from_json(node);
  REQUIRE(n);
  std::vector<bool> cordoned;
  for (const auto& d : n->devices) cordoned.push_back(d.cordoned);
  CHECK(cordoned == std::vector<bool>{false, true, false, true});
}

TEST_CASE("HAMi's policy and weights annotations choose the pod's scorer", "[examples][hami]") {
  const fit::hami_scorer dflt;  // binpack nodes, spread GPUs
  struct row {
    json annotations;
    fit::hami_policy node;
    fit::gpu_policy gpu;
    double slot, core, memory;
  };
  const std::vector<row> rows = {
      {json::object(), fit::hami_policy::binpack, fit::gpu_policy::spread, 1, 1, 1},
      {{{"hami.io/node-scheduler-policy", "spread"}},
       fit::hami_policy::spread,
       fit::gpu_policy::spread,
       1,
       1,
       1},
      {{{"hami.io/gpu-scheduler-policy", "binpack,numa"}},
       fit::hami_policy::binpack,
       fit::gpu_policy::binpack,
       1,
       1,
       1},
      {{{"hami.io/gpu-scheduler-policy", "numa, spread, binpack"}},
       fit::hami_policy::binpack,
       fit::gpu_policy::spread,
       1,
       1,
       1},
      {{{"hami.io/gpu-scheduler-policy", "topology-aware"}},
       fit::hami_policy::binpack,
       fit::gpu_policy::topology,
       1,
       1,
       1},
      {{{"hami.io/device-scoring-weights", "slot=0, core=2, memory=5"}},
       fit::hami_policy::binpack,
       fit::gpu_policy::spread,
       0,
       2,
       5},
  };
  for (const auto& r : rows) {
    INFO(r.annotations.dump());
    auto s = kube::pod_scorer(gpu_pod({{"nvidia.com/gpu", "1"}}, r.annotations), dflt);
    REQUIRE(s);
    CHECK(s->node_policy() == r.node);
    CHECK(s->device_policy() == r.gpu);
    CHECK(s->weights().slots == r.slot);
    CHECK(s->weights().cores == r.core);
    CHECK(s->weights().memory == r.memory);
  }
  // HAMi's ParseDeviceScoringWeights refusals.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"slot=1,core=1", "expected slot, core and memory weights"},
      {"slot=1,core=1,memory=-1", "\"memory\" weight must not be negative"},
      {"slot=0,core=0,memory=0", "at least one positive weight"},
      {"slot=1,core=1,slot=1", "duplicate \"slot\" weight"},
      {"slot=1,core=1,gpu=1", "unknown weight \"gpu\""},
      {"slot=1,core=x,memory=1", "\"core\" weight must be an integer"},
      {"slot=1,core,memory=1", "expected key=value entries"},
  };
  for (const auto& [value, fragment] : bad) {
    INFO(value);
    auto s = kube::pod_scorer(
        gpu_pod({{"nvidia.com/gpu", "1"}}, {{"hami.io/device-scoring-weights", value}}), dflt);
    REQUIRE_FALSE(s);
    CHECK_THAT(s.message(), Catch::Contains(fragment) && Catch::Contains("pod ns/p"));
  }
  CHECK_FALSE(kube::pod_scorer(
      gpu_pod({{"nvidia.com/gpu", "1"}}, {{"hami.io/node-scheduler-policy", "random"}}), dflt));
}

TEST_CASE("Bound pods: init containers collapse, over-count is full, missing GPUs skipped",
          "[examples][hami]") {
  const json nodes = example_tests::read_json(example_tests::sample("nodes.json"));
  std::vector<fit::node> parsed;
  for (const auto& n : *kube::items(nodes)) parsed.push_back(*kube::node_from_json(n));
  json pod = gpu_pod({{"nvidia.com/gpu", "1"}});
  pod["metadata"]["uid"] = "u1";
  pod["spec"]["nodeName"] = "gpu-a";
  pod["status"]["phase"] = "Running";
  pod["spec"]["initContainers"] = json::array({{{"name", "i1"}}, {{"name", "i2"}}});
  // Two init containers on GPU-a1 (8000 and 12000 MiB), the app on GPU-a1 (6000) and GPU-a2.
  pod["metadata"]["annotations"]["hami.io/vgpu-devices-allocated"] =
      "GPU-a1,NVIDIA,8000,10:;GPU-a1,NVIDIA,12000,40:;GPU-a1,NVIDIA,6000,30:GPU-a2,NVIDIA,6000,30:"
      ";";
  auto held = kube::bound_pod_from_json(pod);
  REQUIRE(held);
  REQUIRE(held->has_value());
  const auto& devs = (*held)->devices;
  REQUIRE(devs.size() == 2);
  CHECK(devs[0].uuid == "GPU-a1");
  CHECK(devs[0].memory == 12000 * k_mib);  // max(8000, 12000) > 6000
  CHECK(devs[0].cores == 400);             // max(10, 40) > 30
  CHECK(devs[0].slots == 1);
  CHECK(devs[1].memory == 6000 * k_mib);

  // A card reporting more tasks than its split count: charged up to its totals, then full.
  fit::node& a = parsed[0];
  a.devices[1].slots_total = 1;
  REQUIRE(kube::charge(parsed, **held));
  pod["metadata"]["uid"] = "u2";
  auto again = kube::bound_pod_from_json(pod);
  REQUIRE(kube::charge(parsed, **again));
  CHECK(a.devices[1].slots_used == 1);
  CHECK(a.devices[1].memory_used == 24000 * k_mib);
  CHECK_FALSE(fit::validate(a).has_value());
  fit::container_request small;
  small.count = 1;
  small.memory = k_mib;
  small.use_uuids = {"GPU-a1"};
  auto c = fit::cluster::make(parsed);
  REQUIRE(c);
  auto d = c->fit(fit::pod_request{{small}});
  REQUIRE(d);
  CHECK_FALSE(d->placed);
}

TEST_CASE("A default GPU policy of mutex applies to pods that name none", "[examples][hami]") {
  kube::config cfg;
  cfg.mutex = kube::parse_gpu_policy("binpack,mutex")->mutex;
  REQUIRE(cfg.mutex);
  auto plain = kube::pod_request_from_json(gpu_pod({{"nvidia.com/gpu", "1"}}), cfg);
  REQUIRE(plain);
  CHECK(plain->containers[0].idle_only);
  auto own = kube::pod_request_from_json(
      gpu_pod({{"nvidia.com/gpu", "1"}}, {{"hami.io/gpu-scheduler-policy", "spread"}}), cfg);
  REQUIRE(own);
  CHECK_FALSE(own->containers[0].idle_only);
}
