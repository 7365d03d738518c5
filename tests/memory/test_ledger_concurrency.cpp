// Real processes, real threads, real signals: the ledger under contention and under SIGKILL.
// Built under TSan as well (label "concurrent"). Sanitized builds run scaled-down versions.
#include <signal.h>
#include <sys/mman.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "gpuslice/memory/ledger.hpp"
#include "test_util.hpp"

namespace m = gpuslice::memory;
using m::test::temp_path;

namespace {
constexpr std::uint64_t k_kib = 1024;
const std::string k_uuid = "GPU-11111111-2222-3333-4444-555555555555";

using gpuslice::memory::test::shared_block;

/// Per-child results written into shared memory.
struct child_report {
  std::atomic<std::uint64_t> held{0};  // bytes the child holds at quiescence
  std::atomic<std::uint64_t> ops{0};
  std::atomic<int> done{0};
};

/// One worker thread: reserve and release random sizes until \p stop; keeps what it holds.
std::uint64_t churn(m::shared_ledger& l, m::slot_handle s, int d, std::uint64_t seed,
                    const std::atomic<int>& stop, std::uint64_t max_bytes,
                    std::atomic<std::uint64_t>& ops) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> held;
  std::uint64_t n = 0;
  while (stop.load(std::memory_order_relaxed) == 0) {
    if (!held.empty() && (rng() % 2 == 0 || held.size() > 32)) {
      const std::size_t i = rng() % held.size();
      l.release(s, d, held[i]);
      held[i] = held.back();
      held.pop_back();
    } else {
      const std::uint64_t b = 1 + rng() % max_bytes;
      if (l.try_reserve(s, d, b)) held.push_back(b);
    }
    ++n;
  }
  ops.fetch_add(n, std::memory_order_relaxed);
  std::uint64_t total = 0;
  for (auto b : held) total += b;
  return total;
}
/// True if the dead process \p pid left a slot with an operation announced and unfinished.
bool died_inside_an_operation(const m::shared_ledger& l, pid_t pid) {
  for (const auto& s : l.storage().region()->slots) {
    const auto o = s.owner.load();
    if (m::owner_state(o) != m::slot_state::live || m::owner_pid(o) != pid) continue;
    for (const auto& lane : s.lanes) {
      if (lane.inflight.load() != 0) return true;
    }
  }
  return false;
}
}  // namespace

TEST_CASE("threads of one process never take the device over its limit", "[ledger][concurrent]") {
  temp_path p("threads");
  auto l = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(l.ok());
  constexpr std::uint64_t k_limit = 256 * k_kib;
  const int d = *l->device(k_uuid, k_limit);
  auto s = *l->attach();
  std::atomic<int> stop{0};
  std::atomic<std::uint64_t> ops{0};
  std::atomic<std::uint64_t> held_total{0};
  std::atomic<std::uint64_t> max_seen{0};
  std::vector<std::thread> threads;
  // More threads than private lanes: some share lane 0.
  constexpr int k_threads = static_cast<int>(m::k_lanes) + 2;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      held_total += churn(*l, s, d, 100 + static_cast<std::uint64_t>(t), stop, 16 * k_kib, ops);
    });
  }
  threads.emplace_back([&] {
    while (stop.load() == 0) {
      const auto u = l->used(d);
      auto m = max_seen.load();
      while (u > m && !max_seen.compare_exchange_weak(m, u)) {
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(m::test::sanitized() ? 300 : 1000));
  stop = 1;
  for (auto& t : threads) t.join();
  CHECK(max_seen.load() <= k_limit);
  CHECK(ops.load() > 1000);
  CHECK(l->used(d) == held_total.load());
  CHECK(l->slot_used(s, d) == held_total.load());
}

TEST_CASE("lanes of exited threads are taken over", "[ledger][concurrent]") {
  auto l = m::in_memory_ledger::create();
  const int d = *l.device(k_uuid, 1 << 20);
  auto s = *l.attach();
  constexpr int k_generations = 3 * static_cast<int>(m::k_lanes);
  for (int i = 0; i < k_generations; ++i) {
    std::thread([&] { REQUIRE(l.try_reserve(s, d, 10)); }).join();
  }
  CHECK(l.slot_used(s, d) == 10 * k_generations);
  CHECK(l.used(d) == 10 * k_generations);
  // Every thread found a private lane: none fell back to the shared one.
  const auto& slot = l.storage().region()->slots[s.index];
  CHECK(slot.lanes[m::k_shared_lane].used[d].load() == 0);
  // A thread may release what another reserved.
  std::thread([&] { l.release(s, d, 10 * k_generations); }).join();
  CHECK(l.slot_used(s, d) == 0);
  CHECK(l.used(d) == 0);
}

TEST_CASE("processes x threads: never over the limit, total = sum of slots at quiescence",
          "[ledger][concurrent]") {
  temp_path p("procs");
  constexpr std::uint64_t k_limit = 512 * k_kib;
  constexpr int k_procs = 3;
  constexpr int k_threads = 3;
  {
    auto l = m::shared_ledger::open(m::create_only, p.str());
    REQUIRE(l.ok());
    REQUIRE(*l->device(k_uuid, k_limit) == 0);
  }
  shared_block<child_report> reports(k_procs);
  shared_block<std::atomic<int>> stop;
  shared_block<std::atomic<int>> release_children;
  shared_block<std::atomic<std::uint64_t>> sampler_max;
  shared_block<std::atomic<std::uint64_t>> sampler_reads;

  std::vector<pid_t> kids;
  for (int c = 0; c < k_procs; ++c) {
    kids.push_back(m::test::fork_child([&, c] {
      auto l = m::shared_ledger::open(m::open_only, p.str());
      if (!l.ok()) return 1;
      auto s = l->attach();
      if (!s.ok()) return 2;
      std::vector<std::thread> threads;
      std::atomic<std::uint64_t> held{0};
      for (int t = 0; t < k_threads; ++t) {
        threads.emplace_back([&, t] {
          held += churn(*l, *s, 0, static_cast<std::uint64_t>(c * 100 + t), *stop.p, 32 * k_kib,
                        reports.p[c].ops);
        });
      }
      for (auto& t : threads) t.join();
      reports.p[c].held = held.load();
      if (l->slot_used(*s, 0) != held.load()) return 3;
      reports.p[c].done = 1;
      while (release_children.p->load() == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return 0;  // exits holding its bytes; the parent reaps them
    }));
  }
  const pid_t sampler = m::test::fork_child([&] {
    auto l = m::shared_ledger::open(m::open_only, p.str());
    if (!l.ok()) return 1;
    while (stop.p->load() == 0) {
      const auto u = l->used(0);
      if (u > sampler_max.p->load()) sampler_max.p->store(u);
      sampler_reads.p->fetch_add(1);
    }
    return 0;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(m::test::sanitized() ? 1000 : 3000));
  stop.p->store(1);
  for (int c = 0; c < k_procs; ++c) {
    while (reports.p[c].done.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(m::test::wait_child(sampler) == 0);
  CHECK(sampler_max.p->load() <= k_limit);
  CHECK(sampler_reads.p->load() > 1000);

  // Quiescence: children alive, holding their bytes.
  auto l = m::shared_ledger::open(m::open_only, p.str());
  REQUIRE(l.ok());
  std::uint64_t reported = 0;
  std::uint64_t ops = 0;
  for (int c = 0; c < k_procs; ++c) {
    reported += reports.p[c].held.load();
    ops += reports.p[c].ops.load();
  }
  CHECK(ops > 10000);
  const auto snap = l->snapshot();
  std::uint64_t slots = 0;
  for (const auto& pu : snap.processes) slots += pu.used[0];
  CHECK(snap.processes.size() == k_procs);
  CHECK(l->used(0) == slots);
  CHECK(l->used(0) == reported);
  CHECK(l->reap() == 0);  // all alive: nothing to reclaim

  release_children.p->store(1);
  for (pid_t k : kids) CHECK(m::test::wait_child(k) == 0);
  CHECK(l->reap() == reported);
  CHECK(l->used(0) == 0);
  CHECK(l->snapshot().processes.empty());
}

TEST_CASE("kill -9 torture: no byte leaks and the limit holds", "[ledger][concurrent]") {
  temp_path p("torture");
  constexpr std::uint64_t k_limit = 4 * 1024 * k_kib;
  constexpr std::uint64_t k_anchor = 12345;  // held by this (never killed) process
  constexpr int k_live_children = 4;
  const long kills_wanted =
      m::test::env_or("GPUSLICE_TORTURE_KILLS", m::test::sanitized() ? 150 : 1000);
  auto l = m::shared_ledger::open(m::create_only, p.str());
  REQUIRE(l.ok());
  const int d = *l->device(k_uuid, k_limit);
  auto me = *l->attach();
  REQUIRE(l->try_reserve(me, d, k_anchor));

  shared_block<std::atomic<std::uint64_t>> child_ops;
  // What each live child really holds, as it knows it: raised only after a reservation
  // succeeded and lowered before a release, so it never exceeds what the child holds. A
  // killed child holds nothing (the driver frees a dead process's memory); the parent zeroes
  // its entry once it has been waited for.
  shared_block<std::atomic<std::uint64_t>> holding(k_live_children);
  auto spawn = [&](std::size_t position, std::uint64_t seed) {
    holding.p[position].store(0);
    return m::test::fork_child([&, position, seed] {
      // The child inherits the mapping and must attach anew.
      auto s = l->attach();
      if (!s.ok()) return 1;
      std::mt19937_64 rng(seed);
      std::vector<std::uint64_t> held;
      auto& mine = holding.p[position];
      for (;;) {  // runs until SIGKILL
        if (!held.empty() && (rng() % 2 == 0 || held.size() > 16)) {
          mine.fetch_sub(held.back(), std::memory_order_seq_cst);
          l->release(*s, d, held.back());
          held.pop_back();
        } else {
          const std::uint64_t b = 1 + rng() % (64 * k_kib);
          if (l->try_reserve(*s, d, b)) {
            held.push_back(b);
            mine.fetch_add(b, std::memory_order_seq_cst);
          }
        }
        child_ops.p->fetch_add(1, std::memory_order_relaxed);
      }
    });
  };
  // The real property: the bytes the live processes hold never exceed the limit.
  std::uint64_t max_held = 0;
  long samples = 0;
  auto sample = [&] {
    std::uint64_t held = k_anchor;
    for (int i = 0; i < k_live_children; ++i) held += holding.p[i].load(std::memory_order_seq_cst);
    max_held = std::max(max_held, held);
    ++samples;
  };

  std::mt19937_64 rng(2024);
  std::vector<pid_t> kids;
  std::uint64_t seed = 1;
  for (int i = 0; i < k_live_children; ++i) kids.push_back(spawn(kids.size(), seed++));
  long kills = 0;
  long died_inside = 0;
  std::uint64_t max_used = 0;
  std::uint64_t reclaimed = 0;
  while (kills < kills_wanted) {
    const auto pause = std::chrono::microseconds(rng() % 3000);
    for (const auto until = std::chrono::steady_clock::now() + pause;
         std::chrono::steady_clock::now() < until;) {
      sample();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    const std::size_t victim = rng() % kids.size();
    ::kill(kids[victim], SIGKILL);
    REQUIRE(m::test::wait_child(kids[victim]) == 128 + SIGKILL);
    ++kills;
    if (died_inside_an_operation(*l, kids[victim])) ++died_inside;
    kids[victim] = spawn(victim, seed++);
    sample();
    max_used = std::max(max_used, l->used(d));
    if (kills % 50 == 0) reclaimed += l->reap();
  }
  for (pid_t k : kids) {
    ::kill(k, SIGKILL);
    m::test::wait_child(k);
  }
  reclaimed += l->reap();
  INFO("kills " << kills << ", inside an operation " << died_inside << ", child operations "
                << child_ops.p->load() << ", samples " << samples << ", most held " << max_held);
  CHECK(child_ops.p->load() > static_cast<std::uint64_t>(kills));
  CHECK(reclaimed > 0);
  CHECK(died_inside > 0);  // some kills landed between announcing an operation and finishing it
  CHECK(max_used <= k_limit);
  CHECK(samples >= kills);
  CHECK(max_held <= k_limit);
  CHECK(max_held > k_anchor);  // the sampler saw the children hold memory
  // Zero bytes leaked: only this process's anchor remains, in the total and in its slot.
  CHECK(l->used(d) == k_anchor);
  const auto snap = l->snapshot();
  REQUIRE(snap.processes.size() == 1);
  CHECK(snap.processes[0].pid == ::getpid());
  CHECK(snap.processes[0].used[0] == k_anchor);
  // And the whole limit is usable again.
  CHECK(l->try_reserve(me, d, k_limit - k_anchor));
  CHECK_FALSE(l->try_reserve(me, d, 1));
}
