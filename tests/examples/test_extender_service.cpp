// The extender's verbs in process, on kube-scheduler's recorded request bodies
// (tests/examples/data): what passes, what fails and why, the scores, the bind and its usage.
#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>

#include "service_fixture.hpp"

using namespace gpuslice;
using example_tests::data;
using example_tests::read_file;
using kube::json;

namespace {
json body(const extender::reply& r) {
  REQUIRE(r.status == extender::k_ok);
  return json::parse(r.body);
}

/// The device at position \p i of the state's node named \p node.
json device_state(extender::service& s, const std::string& node, int i) {
  const json st = json::parse(s.state());
  for (const json& n : st["nodes"]) {
    if (n["name"] == node) return n["devices"][i];
  }
  return nullptr;
}
}  // namespace

TEST_CASE("filter returns every node that fits, and why the others do not", "[examples]") {
  auto s = example_tests::sample_service();
  const json r = body(s->filter(read_file(data("filter_names.json"))));
  CHECK(r["NodeNames"] == json::array({"gpu-a", "gpu-b"}));
  CHECK(r["FailedNodes"].empty());
  CHECK(r["FailedAndUnresolvableNodes"] == json{{"cpu-c", "gpuslice: no GPUs registered"}});
  CHECK(r["Error"] == "");
  CHECK_FALSE(r.contains("Nodes"));

  // Too big for every GPU: capacity (preemption could help) versus no GPUs at all.
  const json big = body(s->filter(read_file(data("filter_too_big.json"))));
  CHECK(big["NodeNames"].empty());
  CHECK(big["FailedNodes"]["gpu-a"] ==
        "gpuslice: too few suitable GPUs (4 devices: insufficient GPU memory)");
  CHECK(big["FailedNodes"]["gpu-b"] ==
        "gpuslice: too few suitable GPUs (2 devices: insufficient GPU memory)");
  CHECK(big["FailedAndUnresolvableNodes"].size() == 1);
}

TEST_CASE("filter with node objects (nodeCacheCapable: false) returns node objects", "[examples]") {
  auto s = example_tests::sample_service();
  const json r = body(s->filter(read_file(data("filter_nodes.json"))));
  REQUIRE(r["Nodes"]["items"].size() == 1);
  const json& passed = r["Nodes"]["items"][0];
  CHECK(passed["metadata"]["name"] == "gpu-b");
  // The whole object comes back, annotations included.
  CHECK(passed["metadata"]["annotations"].contains("hami.io/node-nvidia-register"));
  // Type mismatch on every GPU: no eviction could help.
  CHECK(r["FailedAndUnresolvableNodes"]["gpu-a"] ==
        "gpuslice: too few suitable GPUs (4 devices: GPU type mismatch)");
  CHECK_FALSE(r.contains("NodeNames"));
}

TEST_CASE("prioritize scores the fit engine's choice 10 and the others below", "[examples]") {
  auto s = example_tests::sample_service();
  const json r = body(s->prioritize(read_file(data("prioritize_names.json"))));
  // Binpack: gpu-a already holds a pod, so it is the fuller node after placement.
  CHECK(r == json::parse(R"([{"Host":"gpu-a","Score":10},{"Host":"gpu-b","Score":0}])"));

  auto spread = extender::service::make(
      [] {
        const json list = example_tests::read_json(example_tests::sample("nodes.json"));
        std::vector<fit::node> nodes;
        for (const auto& n : *kube::items(list)) nodes.push_back(*kube::node_from_json(n));
        return nodes;
      }(),
      fit::hami_scorer(fit::hami_policy::spread, fit::gpu_policy::spread));
  REQUIRE(spread);
  // Nothing charged: with spread the larger, emptier node wins.
  const json rs = body((*spread)->prioritize(read_file(data("prioritize_names.json"))));
  CHECK(rs[0]["Score"] == 10);
  CHECK(rs[1]["Score"] == 0);
}

TEST_CASE("bind reserves the pod's GPUs in memory; release returns them", "[examples]") {
  auto s = example_tests::sample_service();
  // bind before filter: the extender has not seen the pod.
  CHECK(body(s->bind(read_file(data("bind.json"))))["Error"].get<std::string>().find(
            "not seen by filter") != std::string::npos);
  body(s->filter(read_file(data("filter_names.json"))));
  CHECK(body(s->bind(read_file(data("bind.json"))))["Error"] == "");

  const json st = json::parse(s->state());
  REQUIRE(st["bindings"].size() == 1);
  CHECK(st["bindings"][0]["pod"] == "default/infer-small");
  CHECK(st["bindings"][0]["node"] == "gpu-a");
  // GPU spread: the emptiest V100, GPU-a1 (GPU-a0 holds the running pod).
  CHECK(st["bindings"][0]["hami.io/vgpu-devices-to-allocate"] == "GPU-a1,NVIDIA,4000,25:;");
  CHECK(device_state(*s, "gpu-a", 1) ==
        json::parse(
            R"({"uuid":"GPU-a1","slots_used":1,"memory_used_mib":4000,"cores_used_percent":25})"));

  // The same pod twice is refused; the usage is unchanged.
  CHECK(body(s->bind(read_file(data("bind.json"))))["Error"] != "");
  CHECK(device_state(*s, "gpu-a", 1)["slots_used"] == 1);

  const std::string uid = json::parse(read_file(data("bind.json")))["PodUID"];
  CHECK(body(s->release(json{{"PodUID", uid}}.dump()))["Error"] == "");
  CHECK(device_state(*s, "gpu-a", 1)["slots_used"] == 0);
  CHECK(device_state(*s, "gpu-a", 1)["memory_used_mib"] == 0);
  CHECK(json::parse(s->state())["bindings"].empty());
  CHECK(body(s->release(json{{"PodUID", uid}}.dump()))["Error"] != "");
}

TEST_CASE("a failed binding through the binder undoes the reservation", "[examples]") {
  auto s = example_tests::sample_service();
  std::optional<extender::binding> seen;
  s->set_binder([&](const extender::binding& b) -> std::optional<std::string> {
    seen = b;
    return std::string("apiserver said no");
  });
  body(s->filter(read_file(data("filter_names.json"))));
  const json r = body(s->bind(read_file(data("bind.json"))));
  CHECK(r["Error"] == "pod default/infer-small: binding failed: apiserver said no");
  REQUIRE(seen);
  CHECK(seen->node == "gpu-a");
  CHECK(seen->devices == "GPU-a1,NVIDIA,4000,25:;");
  CHECK(device_state(*s, "gpu-a", 1)["slots_used"] == 0);
  CHECK(json::parse(s->state())["bindings"].empty());
}

TEST_CASE("an invalid GPU request fails every node as unresolvable, with the reason",
          "[examples]") {
  auto s = example_tests::sample_service();
  const json r = body(s->filter(read_file(data("filter_invalid.json"))));
  CHECK(r["NodeNames"].empty());
  REQUIRE(r["FailedAndUnresolvableNodes"].size() == 3);
  CHECK(r["FailedAndUnresolvableNodes"]["gpu-b"] ==
        "gpuslice: pod default/bad-memory: container \"main\": nvidia.com/gpumem 3000000000: "
        "expected at most 2147483647");
}

TEST_CASE("a pod without GPUs passes every node with the CPU for it, scored by the policy",
          "[examples]") {
  auto s = example_tests::sample_service();
  json args = json::parse(read_file(data("filter_names.json")));
  args["Pod"]["spec"]["containers"][0]["resources"] = {{"limits", {{"cpu", "2"}}}};
  args["NodeNames"].push_back("unknown-node");
  const json r = body(s->filter(args.dump()));
  CHECK(r["NodeNames"] == json::array({"gpu-a", "gpu-b", "cpu-c", "unknown-node"}));
  // Binpack: gpu-a, whose GPU holds a pod, is the fit engine's choice; a node the extender does
  // not know passes (kube-scheduler checked its CPU) and scores nothing.
  const json p = body(s->prioritize(args.dump()));
  REQUIRE(p.size() == 4);
  CHECK(p[0] == json{{"Host", "gpu-a"}, {"Score", 10}});
  for (std::size_t i = 1; i < 4; ++i) CHECK(p[i]["Score"].get<int>() < 10);
  CHECK(p[3]["Score"] == 0);
}

TEST_CASE("malformed bodies get a 400 with a message, never a crash", "[examples]") {
  auto s = example_tests::sample_service();
  const std::string deep(100000, '[');
  const std::vector<std::string> bodies = {
      "",
      "{",
      "null",
      "[]",
      "\"Pod\"",
      deep,
      R"({"NodeNames":["gpu-a"]})",
      R"({"Pod":[],"NodeNames":["gpu-a"]})",
      R"({"Pod":{"metadata":{"name":"p"}}})",
      R"({"Pod":{"metadata":{"name":"p"}},"NodeNames":[1,2]})",
      R"({"Pod":{"metadata":{"name":"p"}},"Nodes":{"items":[{"metadata":{}}]}})",
      std::string("{\"Pod\":{\"metadata\":{\"name\":\"\xff\xfe\"}}}"),
  };
  for (const auto& b : bodies) {
    INFO(b.substr(0, 80));
    for (const auto& r : {s->filter(b), s->prioritize(b)}) {
      CHECK(r.status == extender::k_bad_request);
      const json e = json::parse(r.body);
      CHECK(e["Error"].get<std::string>().rfind("ExtenderArgs: ", 0) == 0);
    }
  }
  for (const std::string b : {"", "{}", "[1]", R"({"PodName":"p","Node":"gpu-a"})"}) {
    INFO(b);
    CHECK(s->bind(b).status == extender::k_bad_request);
    CHECK(s->release(b).status == extender::k_bad_request);
  }
}

TEST_CASE("ResourceQuota on gpumem and gpucores bounds a namespace, as HAMi's FitQuota",
          "[examples]") {
  auto s = example_tests::sample_service();
  json args = json::parse(read_file(data("filter_names.json")));
  const std::string ns = args["Pod"]["metadata"].value("namespace", "default");
  // infer-small asks for one GPU of 4000 MiB and 25% cores.
  const json quota = {
      {"metadata", {{"name", "gpu"}, {"namespace", ns}}},
      {"spec",
       {{"hard", {{"limits.nvidia.com/gpumem", "7000"}, {"limits.nvidia.com/gpucores", "100"}}}}}};
  s->upsert_quota(quota);
  CHECK(body(s->filter(args.dump()))["NodeNames"] == json::array({"gpu-a", "gpu-b"}));
  CHECK(body(s->bind(read_file(data("bind.json"))))["Error"] == "");
  // 4000 held + 4000 asked > 7000: every GPU node fails (resolvable: evicting frees quota).
  args["Pod"]["metadata"]["uid"] = "second";
  args["Pod"]["metadata"]["name"] = "second";
  const json r = body(s->filter(args.dump()));
  CHECK(r["NodeNames"].empty());
  CHECK(r["FailedNodes"]["gpu-a"] == "gpuslice: namespace " + ns +
                                         " quota gpu: nvidia.com/gpumem 4000 held + 4000 asked > "
                                         "limit 7000");
  const json b = {
      {"PodName", "second"}, {"PodNamespace", ns}, {"PodUID", "second"}, {"Node", "gpu-b"}};
  CHECK_THAT(body(s->bind(b.dump()))["Error"].get<std::string>(), Catch::Contains("quota gpu"));
  // Another namespace is not limited; without the quota the namespace is free again.
  json other = args;
  other["Pod"]["metadata"]["namespace"] = "elsewhere";
  CHECK(body(s->filter(other.dump()))["NodeNames"].size() == 2);
  s->delete_quota(quota);
  CHECK(body(s->filter(args.dump()))["NodeNames"].size() == 2);
  // Cores count too: 25 held + 25 asked > 40.
  json cores = quota;
  cores["spec"]["hard"] = {{"limits.nvidia.com/gpucores", "40"}};
  s->upsert_quota(cores);
  CHECK_THAT(body(s->filter(args.dump()))["FailedNodes"]["gpu-b"].get<std::string>(),
             Catch::Contains("nvidia.com/gpucores 25 held + 25 asked > limit 40"));
}

namespace {

/// A Node object named \p name with HAMi's registration of \p gpus GPUs of \p mib MiB; GPU k's
/// uuid is "<name>-g<first + k>" (a shifted first uuid drops GPUs pods may hold).
json gpu_node(const std::string& name, int gpus, int mib, int first = 0) {
  json reg = json::array();
  for (int k = 0; k < gpus; ++k) {
    reg.push_back({{"id", name + "-g" + std::to_string(first + k)},
                   {"index", k},
                   {"count", 4},
                   {"devmem", mib},
                   {"devcore", 100},
                   {"type", "NVIDIA-T" + std::to_string(mib)},
                   {"numa", k % 2},
                   {"mode", "hami-core"},
                   {"health", true}});
  }
  return {{"metadata",
           {{"name", name}, {"annotations", {{"hami.io/node-nvidia-register", reg.dump()}}}}}};
}

/// A Pod object bound to \p node holding \p devices (HAMi's annotation value), or pending when
/// \p node is empty.
json held_pod(const std::string& uid, const std::string& node, const std::string& devices,
              const std::string& phase = "Running") {
  json p = {{"metadata",
             {{"name", uid},
              {"namespace", "default"},
              {"uid", uid},
              {"annotations", {{"hami.io/vgpu-devices-allocated", devices}}}}},
            {"spec", {{"containers", json::array()}}},
            {"status", {{"phase", phase}}}};
  if (!node.empty()) p["spec"]["nodeName"] = node;
  return p;
}

/// The state without the bindings list (a service rebuilt from lists has made none).
json usage_state(extender::service& s) {
  json st = json::parse(s.state());
  st.erase("bindings");
  return st;
}

}  // namespace

TEST_CASE("state kept by events equals a rebuild from the same objects, for random events",
          "[examples]") {
  const json probe_args = json::parse(read_file(data("filter_names.json")));
  constexpr int k_nodes = 7, k_pods = 24, k_steps = 400;
  for (const std::uint32_t seed : {1u, 2u, 3u, 42u}) {
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<std::uint32_t>(n)); };
    auto made = extender::service::make({}, fit::hami_scorer{});
    REQUIRE(made);
    auto& live = *made;
    std::map<std::string, json> nodes, pods;  // what the API server holds now
    auto node_name = [&](int i) { return "n" + std::to_string(i); };
    auto random_devices = [&](const std::string& node) {
      std::string out;
      const int gpus = 1 + pick(2);
      for (int g = 0; g < gpus; ++g) {
        out += node + "-g" + std::to_string(pick(4)) + ",NVIDIA," +
               std::to_string(1000 * (1 + pick(12))) + "," + std::to_string(10 * pick(6)) + ":";
      }
      return out + ";";
    };
    for (int step = 0; step < k_steps; ++step) {
      const int what = pick(10);
      INFO("step " << step << " event " << what);
      if (what <= 1) {  // a node joins or changes: size, memory, GPUs renamed, or malformed
        const std::string name = node_name(pick(k_nodes));
        json n = gpu_node(name, 1 + pick(4), pick(2) == 0 ? 16384 : 32768, pick(3) == 0 ? 1 : 0);
        if (pick(2) == 0) n["status"] = {{"allocatable", {{"cpu", std::to_string(2 + pick(6))}}}};
        if (pick(8) == 0) n["metadata"]["annotations"]["hami.io/node-nvidia-register"] = "[{";
        if (pick(6) == 0 && nodes.count(name) != 0) n = nodes[name];  // unchanged (handshake)
        nodes[name] = n;
        live->upsert_node(n);
      } else if (what == 2) {
        const std::string name = node_name(pick(k_nodes));
        nodes.erase(name);
        live->delete_node(name);
      } else if (what <= 6) {  // a pod is bound, changes, finishes, or is malformed
        const std::string uid = "p" + std::to_string(pick(k_pods));
        const std::string node = pick(9) == 0 ? "ghost" : node_name(pick(k_nodes));
        json p = held_pod(uid, node, pick(5) == 0 ? "" : random_devices(node));
        if (pick(2) == 0) {  // its CPU: held too, GPUs or not
          p["spec"]["containers"] = json::array(
              {{{"name", "main"},
                {"resources", {{"requests", {{"cpu", std::to_string(500 * pick(5)) + "m"}}}}}}});
        }
        if (pick(8) == 0) p["status"]["phase"] = "Succeeded";
        if (pick(10) == 0) p["metadata"]["annotations"]["hami.io/vgpu-devices-allocated"] = "x,";
        // Still pending (nodeName is set once and never changes, so only a pod not bound yet).
        const auto was = pods.find(uid);
        const bool bound = was != pods.end() && was->second["spec"].contains("nodeName");
        if (!bound && pick(10) == 0) p["spec"].erase("nodeName");
        pods[uid] = p;
        live->upsert_pod(p);
      } else if (what <= 8) {
        const std::string uid = "p" + std::to_string(pick(k_pods));
        const auto it = pods.find(uid);
        if (it != pods.end()) {
          live->delete_pod(it->second);
          pods.erase(it);
        }
      } else {  // the extender places a pod, and the watch then shows it bound
        const std::string uid = "b" + std::to_string(step);
        json a = probe_args;
        a["Pod"]["metadata"]["uid"] = uid;
        a["Pod"]["metadata"]["name"] = uid;
        a["Pod"]["metadata"]["namespace"] = "default";
        a["NodeNames"] = json::array();
        for (const auto& [name, n] : nodes) a["NodeNames"].push_back(name);
        const json passed = body(live->filter(a.dump()))["NodeNames"];
        if (passed.empty()) continue;
        const json b = {{"PodName", uid},
                        {"PodNamespace", "default"},
                        {"PodUID", uid},
                        {"Node", passed[pick(static_cast<int>(passed.size()))]}};
        REQUIRE(body(live->bind(b.dump()))["Error"] == "");
        std::string devices;
        const json state = json::parse(live->state());  // alive for the loop below
        for (const auto& x : state["bindings"]) {
          if (x["uid"] == uid) devices = x["hami.io/vgpu-devices-to-allocate"];
        }
        json p = held_pod(uid, b["Node"], devices);
        pods[uid] = p;
        live->upsert_pod(p);
      }
      auto fresh = extender::service::make({}, fit::hami_scorer{});
      REQUIRE(fresh);
      json node_items = json::array(), pod_items = json::array();
      for (const auto& [name, n] : nodes) node_items.push_back(n);
      for (const auto& [uid, p] : pods) pod_items.push_back(p);
      (*fresh)->replace_nodes(node_items);
      (*fresh)->replace_pods(pod_items);
      const json kept = usage_state(*live), rebuilt = usage_state(**fresh);
      INFO("patch from the kept state to the rebuilt one: " << json::diff(kept, rebuilt).dump());
      REQUIRE(kept == rebuilt);
      json probe = probe_args;  // asks for CPU too, so the nodes' CPU sums count
      probe["Pod"]["spec"]["containers"][0]["resources"]["requests"] = {{"cpu", "1500m"}};
      probe["NodeNames"] = json::array();
      for (const auto& [name, n] : nodes) probe["NodeNames"].push_back(name);
      REQUIRE(body(live->filter(probe.dump())) == body((*fresh)->filter(probe.dump())));
      REQUIRE(body(live->prioritize(probe.dump())) == body((*fresh)->prioritize(probe.dump())));
    }
    // A restart's lists replace everything the events built.
    json node_items = json::array(), pod_items = json::array();
    for (const auto& [name, n] : nodes) node_items.push_back(n);
    for (const auto& [uid, p] : pods) pod_items.push_back(p);
    const json before = usage_state(*live);
    live->replace_nodes(node_items);
    live->replace_pods(pod_items);
    CHECK(usage_state(*live) == before);
  }
}

TEST_CASE("prioritize gives 10 to the fit engine's choice alone, ties broken by name",
          "[examples]") {
  auto s = extender::service::make({}, fit::hami_scorer{});
  REQUIRE(s);
  // Three equal empty nodes and one fuller: binpack prefers the fuller (n3); with it gone the
  // three tie, and the fit engine takes the first name.
  for (const char* name : {"n1", "n2", "n0", "n3"}) (*s)->upsert_node(gpu_node(name, 2, 16384));
  (*s)->upsert_pod(held_pod("held", "n3", "n3-g0,NVIDIA,8000,30:;"));
  json args = json::parse(read_file(data("filter_names.json")));
  args["NodeNames"] = json::array({"n2", "n3", "n0", "n1"});
  json r = body((*s)->prioritize(args.dump()));
  CHECK(r == json::parse(
                 R"([{"Host":"n2","Score":0},{"Host":"n3","Score":10},{"Host":"n0","Score":0},
                     {"Host":"n1","Score":0}])"));
  args["NodeNames"] = json::array({"n2", "n1", "n0"});
  r = body((*s)->prioritize(args.dump()));
  CHECK(r == json::parse(
                 R"([{"Host":"n2","Score":9},{"Host":"n1","Score":9},{"Host":"n0","Score":10}])"));
}

TEST_CASE("under sfgd the extender places by the fragment and learns the workload it serves",
          "[examples]") {
  auto made = extender::service::make({}, fit::hami_scorer{});
  REQUIRE(made);
  auto& s = *made;
  s->set_frag_policy(fit::frag_policy::sfgd);
  // Cold start (one whole GPU): nothing learned yet, so /metrics shows the bare class.
  CHECK_THAT(s->metrics(),
             Catch::Contains("gpuslice_extender_workload_class_weight{policy=\"sfgd\""));
  // n0 has one GPU half used, n1 two empty ones: a half-GPU pod on n0's free half leaves both of
  // n1's GPUs whole, which every other placement would not.
  s->upsert_node(gpu_node("n0", 1, 16384));
  s->upsert_node(gpu_node("n1", 2, 16384));
  s->upsert_pod(held_pod("held", "n0", "n0-g0,NVIDIA,8192,50:;"));
  json args = json::parse(read_file(data("filter_names.json")));
  args["Pod"]["spec"]["containers"][0]["resources"]["limits"] = {
      {"nvidia.com/gpu", "1"}, {"nvidia.com/gpumem", "8192"}, {"nvidia.com/gpucores", "50"}};
  args["NodeNames"] = json::array({"n1", "n0"});
  const json r = body(s->prioritize(args.dump()));
  CHECK(r == json::parse(R"([{"Host":"n1","Score":0},{"Host":"n0","Score":10}])"));
  REQUIRE(body(s->filter(args.dump()))["NodeNames"].size() == 2);
  const std::string uid = args["Pod"]["metadata"]["uid"];
  const json b = {{"PodName", "p"}, {"PodNamespace", "default"}, {"PodUID", uid}, {"Node", "n0"}};
  CHECK(body(s->bind(b.dump()))["Error"] == "");
  // The bound pod was learned (the watched one names no request): 8192 MiB and 50%, and the
  // cold start's whole-GPU class is gone.
  const std::string m = s->metrics();
  CHECK_THAT(m, Catch::Contains("class=\"1,8192,500m,0,\"} 1"));
  CHECK_THAT(m, !Catch::Contains("class=\"1,,,0,\""));
}

TEST_CASE("pods hold their node's CPU and memory, CPU-only ones included", "[examples]") {
  auto made = extender::service::make({}, fit::hami_scorer{});
  REQUIRE(made);
  auto& s = *made;
  json small = gpu_node("small", 1, 16384);
  small["status"] = {{"allocatable", {{"cpu", "4"}, {"memory", "8Gi"}}}};
  s->upsert_node(small);
  s->upsert_node(gpu_node("big", 1, 16384));  // no allocatable: CPU not checked
  json cpu_pod = held_pod("cpu-only", "small", "");
  cpu_pod["metadata"]["annotations"] = json::object();
  cpu_pod["spec"]["containers"] = json::array(
      {{{"name", "main"}, {"resources", {{"requests", {{"cpu", "3500m"}, {"memory", "1Gi"}}}}}}});
  s->upsert_pod(cpu_pod);
  json args = json::parse(read_file(data("filter_names.json")));
  args["Pod"]["spec"]["containers"][0]["resources"]["requests"] = {{"cpu", "1"}};
  args["NodeNames"] = json::array({"small", "big"});
  json r = body(s->filter(args.dump()));
  CHECK(r["NodeNames"] == json::array({"big"}));
  CHECK_THAT(r["FailedNodes"]["small"].get<std::string>(), Catch::Contains("CPU"));
  // The pod finishes: its CPU is free again, for GPU pods and CPU-only ones alike.
  cpu_pod["status"]["phase"] = "Succeeded";
  s->upsert_pod(cpu_pod);
  CHECK(body(s->filter(args.dump()))["NodeNames"] == json::array({"small", "big"}));
  json cpu_args = args;
  cpu_args["Pod"]["spec"]["containers"][0]["resources"] = {{"requests", {{"cpu", "3"}}}};
  cpu_args["Pod"]["metadata"]["uid"] = "cpu-2";
  CHECK(body(s->filter(cpu_args.dump()))["NodeNames"] == json::array({"small", "big"}));
  const json b = {
      {"PodName", "cpu-2"}, {"PodNamespace", "default"}, {"PodUID", "cpu-2"}, {"Node", "small"}};
  CHECK(body(s->bind(b.dump()))["Error"] == "");
  CHECK(json::parse(s->state())["bindings"][0]["hami.io/vgpu-devices-to-allocate"] == "");
  // 3 of 4 CPUs held by the bind: the GPU pod asking 1 still fits, a second one would not.
  CHECK(body(s->filter(args.dump()))["NodeNames"] == json::array({"small", "big"}));
  cpu_args["Pod"]["metadata"]["uid"] = "cpu-3";
  CHECK(body(s->filter(cpu_args.dump()))["NodeNames"] == json::array({"big"}));
}

TEST_CASE("answers written directly are JSON that reads back every name as it was", "[examples]") {
  const std::vector<std::string> names = {
      "plain-node", "quote\"d", "back\\slash", "tab\there", "nul\x01x", "ünïcode-é", ""};
  std::string out = "[";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    extender::detail::append_json_string(out, names[i]);
  }
  out += ']';
  const json parsed = json::parse(out, nullptr, /*allow_exceptions=*/false);
  REQUIRE_FALSE(parsed.is_discarded());
  REQUIRE(parsed.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) CHECK(parsed[i].get<std::string>() == names[i]);
}
