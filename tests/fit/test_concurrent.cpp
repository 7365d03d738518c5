// cluster::fit is const and may run on many threads at once over the same cluster: every thread
// gets the decision a single thread gets.
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "fixtures.hpp"
#include "gpuslice/fit/fit.hpp"

using namespace gpuslice::fit;

TEST_CASE("concurrent fit() calls on one cluster agree with a serial run", "[fit][concurrent]") {
  std::vector<node> nodes;
  for (int i = 0; i < 16; ++i) {
    auto n = fixtures::node_of("n" + std::to_string(i), 1 + i % 8, 16 + 16 * (i % 3));
    n.devices[0].slots_used = static_cast<std::uint32_t>(i % 3);
    n.devices[0].memory_used = static_cast<std::uint64_t>(i % 3) * fixtures::k_gib;
    nodes.push_back(n);
  }
  auto made = cluster::make(nodes);
  REQUIRE(made.ok());
  const cluster& c = *made;
  std::vector<pod_request> pods;
  for (std::uint32_t k = 0; k < 32; ++k) {
    pods.push_back(fixtures::pod({fixtures::req(1 + k % 4, 1 + k % 7, (k * 13) % 90)}));
  }
  auto decide = [&](std::size_t k) {
    fit_options o;
    o.backtrack = true;
    return c.fit(pods[k], hami_scorer(hami_policy::spread, gpu_policy::topology), o);
  };
  std::vector<std::pair<std::size_t, std::vector<container_allocation>>> serial;
  for (std::size_t k = 0; k < pods.size(); ++k) {
    auto d = decide(k);
    REQUIRE(d.ok());
    serial.emplace_back(d->node, d->containers);
  }
  constexpr int k_threads = 4;
  std::vector<int> mismatches(k_threads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (std::size_t k = 0; k < pods.size(); ++k) {
          auto d = decide(k);
          if (!d.ok() || d->node != serial[k].first || !(d->containers == serial[k].second)) {
            ++mismatches[static_cast<std::size_t>(t)];
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int m : mismatches) CHECK(m == 0);
}
