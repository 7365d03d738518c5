// Filter: one reason per rejected device in HAMi's order, node checks, message formatting.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "gpuslice/fit/filter.hpp"

using namespace gpuslice::fit;
using fixtures::k_gib;

TEST_CASE("device_fits: the first failing check is the reason", "[fit][filter]") {
  struct row {
    const char* what;
    device d;
    share s;
    bool type_ok, uuid_ok;
    bool fits;
    reason why;
  };
  device base = fixtures::gpu("GPU-a", 16);
  device sick = base;
  sick.healthy = false;
  device full_slots = base;
  full_slots.slots_used = full_slots.slots_total;
  device used_mem = base;
  used_mem.memory_used = 12 * k_gib;
  used_mem.slots_used = 1;
  device used_cores = base;
  used_cores.cores_used = 800;
  used_cores.slots_used = 1;
  device busy = base;
  busy.slots_used = 1;
  device all_cores = base;
  all_cores.cores_used = 1000;
  all_cores.slots_used = 1;
  const share small{4 * k_gib, 300, false};
  const share idle{4 * k_gib, 1000, true};
  const share no_cores{1 * k_gib, 0, false};
  const std::vector<row> rows = {
      {"fits", base, small, true, true, true, reason{}},
      {"unhealthy beats everything", sick, small, false, false, false, reason::unhealthy},
      {"type", base, small, false, false, false, reason::type_mismatch},
      {"uuid", base, small, true, false, false, reason::uuid_mismatch},
      {"slots", full_slots, small, true, true, false, reason::slots_exhausted},
      {"memory", used_mem, share{5 * k_gib, 0, false}, true, true, false,
       reason::insufficient_memory},
      {"cores", used_cores, small, true, true, false, reason::insufficient_cores},
      {"exclusive on a busy card", busy, idle, true, true, false, reason::exclusive_conflict},
      {"exclusive on an idle card", base, idle, true, true, true, reason{}},
      {"no cores asked, none left", all_cores, no_cores, true, true, false,
       reason::compute_exhausted},
      {"memory exactly fits", used_mem, share{4 * k_gib, 0, false}, true, true, true, reason{}},
  };
  for (const auto& r : rows) {
    INFO(r.what);
    reason why{};
    CHECK(device_fits(r.d, r.s, r.type_ok, r.uuid_ok, why) == r.fits);
    if (!r.fits) CHECK(why == r.why);
  }
}

TEST_CASE("node_fits: CPU then memory", "[fit][filter]") {
  auto n = fixtures::node_of("n", 1);
  n.cpu_used = 63000;
  reason why{};
  CHECK(node_fits(n, 1000, 0, why));
  CHECK_FALSE(node_fits(n, 1001, 0, why));
  CHECK(why == reason::insufficient_cpu);
  CHECK_FALSE(node_fits(n, 0, 257 * k_gib, why));
  CHECK(why == reason::insufficient_host_memory);
}

TEST_CASE("format_reasons: largest count first, plural aware", "[fit][filter]") {
  reason_counts c;
  CHECK(format_reasons(c).empty());
  c.add(reason::type_mismatch, 2);
  c.add(reason::insufficient_memory, 3);
  c.add(reason::unhealthy, 1);
  CHECK(format_reasons(c) ==
        "3 nodes: insufficient GPU memory; 2 nodes: GPU type mismatch; 1 node: GPU unhealthy");
  CHECK(format_reasons(c, "device").rfind("3 devices: ", 0) == 0);
  reason_counts cluster;
  cluster.add_presence(c);
  cluster.add_presence(c);
  CHECK(cluster[reason::insufficient_memory] == 2);
  CHECK(cluster[reason::insufficient_cpu] == 0);
}

TEST_CASE("every reason has a name and a phrase", "[fit][filter]") {
  for (std::size_t i = 0; i < k_reason_count; ++i) {
    const auto r = static_cast<reason>(i);
    CHECK(name_of(r) != "unknown");
    CHECK(describe(r) != "unknown");
  }
}
