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
