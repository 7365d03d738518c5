// The extender under concurrent verbs (run under TSan): filters and prioritizes from several
// threads while binds and releases change the usage they read.
#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "service_fixture.hpp"

using namespace gpuslice;
using kube::json;

TEST_CASE("filter, prioritize, bind and release concurrently", "[examples][concurrent]") {
  auto s = example_tests::sample_service();
  constexpr int k_readers = 3, k_rounds = 60, k_pods = 8;
  const json args = json::parse(example_tests::read_file(example_tests::data("filter_names.json")));
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < k_readers; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_rounds; ++i) {
        json a = args;
        a["Pod"]["metadata"]["uid"] = "reader-" + std::to_string(t) + "-" + std::to_string(i);
        const auto f = s->filter(a.dump());
        const auto p = s->prioritize(a.dump());
        if (f.status != extender::k_ok || p.status != extender::k_ok) ++bad;
        // gpu-a always has room for one more small pod (4 x 32 GiB, at most 8 x 4000 MiB).
        if (json::parse(f.body)["NodeNames"].size() < 1) ++bad;
        (void)s->state();
      }
    });
  }
  threads.emplace_back([&] {
    for (int round = 0; round < k_rounds / 6; ++round) {
      for (int i = 0; i < k_pods; ++i) {
        json a = args;
        a["Pod"]["metadata"]["uid"] = "pod-" + std::to_string(i);
        a["Pod"]["metadata"]["name"] = "pod-" + std::to_string(i);
        if (s->filter(a.dump()).status != extender::k_ok) ++bad;
        const json b = {{"PodName", "pod-" + std::to_string(i)},
                        {"PodNamespace", "default"},
                        {"PodUID", "pod-" + std::to_string(i)},
                        {"Node", i % 2 == 0 ? "gpu-a" : "gpu-b"}};
        if (json::parse(s->bind(b.dump()).body)["Error"] != "") ++bad;
      }
      for (int i = 0; i < k_pods; ++i) {
        const json r = {{"PodUID", "pod-" + std::to_string(i)}};
        if (json::parse(s->release(r.dump()).body)["Error"] != "") ++bad;
      }
    }
  });
  for (auto& t : threads) t.join();
  CHECK(bad == 0);
  // Everything bound was released: only the running sample pod's usage is left.
  const json st = json::parse(s->state());
  CHECK(st["bindings"].empty());
  int slots = 0;
  for (const auto& n : st["nodes"]) {
    for (const auto& d : n["devices"]) slots += d["slots_used"].get<int>();
  }
  CHECK(slots == 1);
}

TEST_CASE("watch events, filters and binds concurrently never over-commit a GPU",
          "[examples][concurrent]") {
  auto s = example_tests::sample_service();
  const json args = json::parse(example_tests::read_file(example_tests::data("filter_names.json")));
  const json node_b = example_tests::read_json(example_tests::sample("nodes.json"))["items"][1];
  constexpr int k_rounds = 40, k_pods = 6;
  std::atomic<int> bad{0};
  std::atomic<bool> stop{false};
  // A watch: bound pods appear on gpu-a (GPU-a2, 8000 MiB each) and are deleted; gpu-b is
  // updated and deleted and added back.
  std::thread watcher([&] {
    for (int round = 0; round < k_rounds; ++round) {
      for (int i = 0; i < 2; ++i) {
        json pod = args["Pod"];
        pod["metadata"]["uid"] = "watched-" + std::to_string(i);
        pod["metadata"]["name"] = "watched-" + std::to_string(i);
        pod["spec"]["nodeName"] = "gpu-a";
        pod["status"]["phase"] = "Running";
        pod["metadata"]["annotations"]["hami.io/vgpu-devices-allocated"] =
            "GPU-a2,NVIDIA,8000,10:;";
        s->upsert_pod(pod);
        if (round % 2 == 1) s->delete_pod(pod);
      }
      s->upsert_node(node_b);
      if (round % 5 == 4) s->delete_node("gpu-b");
    }
    s->upsert_node(node_b);
    stop = true;
  });
  std::thread binder([&] {
    for (int round = 0; !stop.load() || round < 2; ++round) {
      for (int i = 0; i < k_pods; ++i) {
        json a = args;
        const std::string uid = "b-" + std::to_string(round) + "-" + std::to_string(i);
        a["Pod"]["metadata"]["uid"] = uid;
        a["Pod"]["metadata"]["name"] = uid;
        if (s->filter(a.dump()).status != extender::k_ok) ++bad;
        const json b = {
            {"PodName", uid}, {"PodNamespace", "default"}, {"PodUID", uid}, {"Node", "gpu-a"}};
        (void)s->bind(b.dump());  // may fail when full: never over-commit
        if (i % 2 == 0) (void)s->release(json{{"PodUID", uid}}.dump());
      }
    }
  });
  std::thread reader([&] {
    while (!stop.load()) {
      const json st = json::parse(s->state());
      for (const auto& n : st["nodes"]) {
        for (const auto& d : n["devices"]) {
          // gpu-a's V100s hold 32768 MiB and 10 tasks; gpu-b's T4s 15360 MiB.
          if (d["memory_used_mib"].get<int>() > 32768 || d["slots_used"].get<int>() > 10) ++bad;
          if (d["cores_used_percent"].get<int>() > 100) ++bad;
        }
      }
      (void)s->metrics();
    }
  });
  watcher.join();
  binder.join();
  reader.join();
  CHECK(bad == 0);
  // The survivors: the sample's running pod, the last round's watched pods are deleted (round 39
  // is odd), and every bind not released holds 4000 MiB on some gpu-a GPU.
  const json st = json::parse(s->state());
  CHECK(st["skipped_pods"].empty());
  for (const auto& n : st["nodes"]) {
    if (n["name"] != "gpu-a") continue;
    int memory = 0;
    for (const auto& d : n["devices"]) memory += d["memory_used_mib"].get<int>();
    CHECK(memory == 16384 + 4000 * static_cast<int>(st["bindings"].size()));
  }
}
