// Threads and processes sharing one bucket: the state is one word updated by
// compare_exchange, so no charge is ever lost and every waiter gets a distinct slot of time.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <new>
#include <thread>
#include <vector>

#include "gpuslice/rate/limiter.hpp"
#include "gpuslice/rate/token_bucket.hpp"
#include "gpuslice/testing/manual_clock.hpp"
#include "gpuslice/testing/scripted_utilization.hpp"

using gpuslice::task_priority;
using gpuslice::utilization_policy;
using gpuslice::rate::k_rate_words;
using gpuslice::rate::launch_gate;
using gpuslice::rate::limiter_params;
using gpuslice::rate::local_rate_words;
using gpuslice::rate::shared_token_bucket;
using gpuslice::testing::manual_clock;
using gpuslice::testing::scripted_utilization;

namespace {
constexpr std::int64_t k_us = 1'000, k_ms = 1'000'000;
constexpr int k_threads = 8;
}  // namespace

TEST_CASE("threads borrowing at one instant queue up without losing a charge",
          "[rate][concurrent]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(500'000, 10 * k_ms, 0).ok());
  constexpr int k_per_thread = 2000;
  std::vector<std::vector<std::int64_t>> waits(k_threads);
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_per_thread; ++i) waits[t].push_back(b.consume(10 * k_us, 0));
    });
  }
  for (auto& th : threads) th.join();
  // Every consumer got a distinct end of debt: 20 us apart (10 us at 50%), none lost.
  std::vector<std::int64_t> all;
  for (auto& v : waits) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  for (std::size_t i = 0; i < all.size(); ++i) {
    REQUIRE(all[i] == static_cast<std::int64_t>(i + 1) * 20 * k_us);
  }
  CHECK(b.charged_ns() == k_threads * k_per_thread * 10 * k_us);
}

TEST_CASE("forked processes share one bucket through shared memory", "[rate][concurrent]") {
  void* mem = mmap(nullptr, sizeof(std::atomic<std::uint64_t>) * k_rate_words,
                   PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* words = new (mem) std::atomic<std::uint64_t>[k_rate_words]();
  constexpr int k_children = 4, k_per_child = 5000;
  std::vector<pid_t> kids;
  for (int c = 0; c < k_children; ++c) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      shared_token_bucket<> b(words);
      // Every process attaches; one initialises, the others join.
      if (!b.attach(250'000, 10 * k_ms, 0).ok()) _exit(2);
      for (int i = 0; i < k_per_child; ++i) b.consume(k_us, 0);
      _exit(0);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  shared_token_bucket<> b(words);
  CHECK(b.ready());
  CHECK(b.charged_ns() == k_children * k_per_child * k_us);
  // All debt in one place: 20'000 us charged at 25% ends 80 ms after t = 0.
  CHECK(b.available(80 * k_ms) == 0);
  CHECK(b.available(0) == -20 * k_ms);
  munmap(mem, sizeof(std::atomic<std::uint64_t>) * k_rate_words);
}

TEST_CASE("eight launching threads through one limiter keep the share", "[rate][concurrent]") {
  manual_clock clock;
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 100 * k_us;
  using limiter = gpuslice::rate::sm_limiter<manual_clock>;
  limiter l(w.words, {40, utilization_policy::force, task_priority::low}, p, clock);
  scripted_utilization source;
  struct sink_t {
    std::atomic<std::int64_t> waited{0};
    std::atomic<int> launches{0};
    void wait(std::int64_t ns) { waited.fetch_add(ns); }
    void launch() { launches.fetch_add(1); }
  } sink;
  launch_gate<limiter, scripted_utilization, sink_t> gate(l, source, sink);
  constexpr int k_per_thread = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_per_thread; ++i) {
        gate.launch(static_cast<std::uint64_t>(t % 2));
        if (i % 50 == 0) l.observe(static_cast<std::uint64_t>(t % 2), 100 * k_us);
      }
    });
  }
  // Time stands still, so every wait is the deficit: the total handed out covers the charges.
  for (auto& th : threads) th.join();
  CHECK(sink.launches.load() == k_threads * k_per_thread);
  CHECK(l.bucket().charged_ns() == k_threads * k_per_thread * 100 * k_us);
  // The last waiter waits for the whole debt: charged / share (40%), less waits deferred.
  CHECK(l.bucket().available(0) == -k_threads * k_per_thread * 100 * k_us);
}

TEST_CASE("utilization feedback runs beside eight launching threads", "[rate][concurrent]") {
  manual_clock clock;
  local_rate_words w;
  limiter_params p;
  using limiter = gpuslice::rate::sm_limiter<manual_clock>;
  limiter l(w.words, {60, utilization_policy::force, task_priority::low}, p, clock);
  l.observe(1, 50 * k_us);
  scripted_utilization source;
  constexpr std::int64_t k_period = 10 * k_ms;
  source.add_constant(0, 2'000 * k_ms, k_period, 0.9);  // busier than charged: correction > 1
  struct sink_t {
    std::atomic<int> launches{0};
    void wait(std::int64_t) {}
    void launch() { launches.fetch_add(1); }
  } sink;
  launch_gate<limiter, scripted_utilization, sink_t> gate(l, source, sink);
  std::atomic<bool> done{false};
  std::thread ticker([&] {
    while (!done.load()) {
      clock.advance(100 * k_us);
      std::this_thread::yield();
    }
  });
  constexpr int k_per_thread = 3000;
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < k_per_thread; ++i) {
        gate.launch(1);
        if (i % 64 == 0) l.observe(1, 50 * k_us);
        if (i % 256 == 0) l.set_others_active(i % 512 == 0);
      }
    });
  }
  for (auto& th : threads) th.join();
  done = true;
  ticker.join();
  CHECK(sink.launches.load() == k_threads * k_per_thread);
  CHECK(l.correction() >= p.min_correction);
  CHECK(l.correction() <= p.max_correction);
  CHECK(l.estimate_ns(1) == 50 * k_us);
}
