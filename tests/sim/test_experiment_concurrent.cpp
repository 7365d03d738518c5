// Runs on several threads share one prepared workload (as the Python grid does with the GIL
// released): each thread's result equals the sequential one.
#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "gpuslice/sim/experiment.hpp"

using namespace gpuslice;
using namespace gpuslice::sim;

TEST_CASE("concurrent runs on a shared workload equal sequential runs", "[sim][concurrent]") {
  std::vector<trace_node> nodes;
  for (int i = 0; i < 40; ++i) {
    nodes.push_back(trace_node{"node-" + std::to_string(i), 64000, 1 << 20, 1 << (i % 4),
                               i % 2 ? "T4" : "V100"});
  }
  std::vector<trace_pod> pods;
  for (int i = 0; i < 300; ++i) {
    trace_pod p;
    p.name = "pod-" + std::to_string(i);
    p.cpu = 1000 * (1 + i % 6);
    p.mem = 512;
    p.num_gpu = i % 7 == 0 ? 0 : (i % 11 == 0 ? 2 : 1);
    p.gpu_milli = p.num_gpu == 1 && i % 3 ? 100 * (1 + i % 9) : 1000;
    pods.push_back(p);
  }
  auto w = prepared_workload::make(nodes, pods);
  REQUIRE(w.ok());
  constexpr int threads = 4;
  std::vector<run_options> opts(threads);
  for (int t = 0; t < threads; ++t) {
    constexpr fit::openb_policy policies[] = {fit::openb_policy::random, fit::openb_policy::fgd,
                                              fit::openb_policy::sfgd, fit::openb_policy::fgd};
    opts[static_cast<std::size_t>(t)].policy = policies[t];
    opts[static_cast<std::size_t>(t)].seed = 40 + t;
  }
  std::vector<run_record> parallel(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      parallel[static_cast<std::size_t>(t)] = run_fillup(*w, opts[static_cast<std::size_t>(t)]);
    });
  }
  for (auto& th : pool) th.join();
  for (int t = 0; t < threads; ++t) {
    const auto seq = run_fillup(*w, opts[static_cast<std::size_t>(t)]);
    CHECK(seq.node == parallel[static_cast<std::size_t>(t)].node);
    CHECK(seq.frag_milli == parallel[static_cast<std::size_t>(t)].frag_milli);
  }
}
