// The node-wide region (include/gpuslice/rate/node_region.hpp): layout, registration, the
// peer signal, record reuse, file validation and a second process.

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <string>

#include "gpuslice/rate/node_region.hpp"

namespace {

using gpuslice::task_priority;
using namespace gpuslice::rate;

constexpr std::int64_t k_second = 1'000'000'000;

std::int32_t self_pid() { return static_cast<std::int32_t>(::getpid()); }

std::uint64_t self_start() {
  return gpuslice::memory::detail::read_proc_stat(self_pid()).start_time;
}

std::string temp_path(const char* what) {
  return "node_region_test_" + std::string(what) + "." + std::to_string(::getpid()) + ".bin";
}

/// A pid that certainly names no process: a child that has exited and been reaped.
std::int32_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return static_cast<std::int32_t>(pid);
}

}  // namespace

TEST_CASE("node region layout is pinned", "[node_region]") {
  CHECK(sizeof(node_header) == 64);
  CHECK(sizeof(node_tenant) == 64);
  CHECK(k_node_region_size == 16448);
  CHECK(offsetof(node_header, magic) == 0);
  CHECK(offsetof(node_header, layout_version) == 8);
  CHECK(offsetof(node_header, tenant_count) == 12);
  CHECK(offsetof(node_header, init) == 16);
  CHECK(offsetof(node_header, init_ident) == 24);
  CHECK(offsetof(node_header, region_size) == 32);
  CHECK(offsetof(node_header, joins) == 40);
  CHECK(offsetof(node_header, reserved) == 48);
  CHECK(k_node_layout_version == 2);
  CHECK(offsetof(node_tenant, owner) == 0);
  CHECK(offsetof(node_tenant, ident) == 8);
  CHECK(offsetof(node_tenant, device_key) == 16);
  CHECK(offsetof(node_tenant, container_key) == 24);
  CHECK(offsetof(node_tenant, last_active_ns) == 32);
  CHECK(offsetof(node_tenant, priority) == 40);
  CHECK(offsetof(node_tenant, sm_percent) == 44);
  CHECK(offsetof(node_layout, tenants) == 64);
  // "GSNODERG" in file order.
  auto r = node_region::in_memory();
  CHECK(std::string(reinterpret_cast<const char*>(&r.layout()->header.magic), 8) == "GSNODERG");
}

TEST_CASE("keys are stable and never zero", "[node_region]") {
  CHECK(device_key("GPU-a") == device_key("GPU-a"));
  CHECK(device_key("GPU-a") != device_key("GPU-b"));
  CHECK(device_key("") != 0);
  CHECK(container_key(1, 2) != container_key(2, 1));
  CHECK(container_key(0, 0) != 0);
}

TEST_CASE("peers: other containers on the same GPU, active within the window", "[node_region]") {
  auto r = node_region::in_memory();
  const std::uint64_t gpu = device_key("GPU-0");
  const std::int64_t t0 = 100 * k_second;
  auto a = r.join(gpu, 1, task_priority::low, 30, self_pid(), self_start(), t0);
  REQUIRE(a.ok());
  // Alone.
  auto p = r.peers(*a, t0);
  CHECK_FALSE(p.others_active);
  CHECK(p.active_tenants == 1);

  // Another process of the same container is not a peer.
  auto a2 = r.join(gpu, 1, task_priority::low, 30, self_pid(), self_start(), t0);
  REQUIRE(a2.ok());
  CHECK_FALSE(r.peers(*a, t0).others_active);

  // A container on another GPU is not a peer either.
  auto elsewhere =
      r.join(device_key("GPU-1"), 2, task_priority::high, 0, self_pid(), self_start(), t0);
  REQUIRE(elsewhere.ok());
  CHECK_FALSE(r.peers(*a, t0).others_active);

  // A low-priority container on the GPU is a peer, not a high-priority one.
  auto b = r.join(gpu, 3, task_priority::low, 50, self_pid(), self_start(), t0);
  REQUIRE(b.ok());
  p = r.peers(*a, t0 + 1);
  CHECK(p.others_active);
  CHECK_FALSE(p.high_others_active);
  CHECK(p.active_tenants == 3);

  // It stops being active once its stamp is older than the window; stamping revives it.
  const std::int64_t later = t0 + k_default_active_window_ns;
  r.stamp(*a, later);
  r.stamp(*a2, later);
  CHECK_FALSE(r.peers(*a, later).others_active);
  r.stamp(*b, later);
  CHECK(r.peers(*a, later).others_active);
  // A stamp never moves back.
  r.stamp(*b, t0);
  CHECK(r.peers(*a, later).others_active);

  // Priority shows to the others.
  r.update(*b, task_priority::high, 50);
  CHECK(r.peers(*a, later).high_others_active);

  // Leaving frees the record.
  const auto live = r.live_tenants();
  r.leave(*b);
  CHECK(r.live_tenants() == live - 1);
  CHECK_FALSE(r.peers(*a, later).others_active);
}

TEST_CASE("records of live processes are kept, those of dead ones reused", "[node_region]") {
  auto r = node_region::in_memory();
  const std::uint64_t gpu = device_key("GPU-0");
  for (std::size_t i = 0; i < k_node_tenants; ++i) {
    REQUIRE(r.join(gpu, i + 1, task_priority::low, 0, self_pid(), self_start(), 0).ok());
  }
  auto full = r.join(gpu, 999, task_priority::low, 0, self_pid(), self_start(), 0);
  REQUIRE_FALSE(full.ok());
  CHECK(full.code() == gpuslice::make_error_code(gpuslice::errc::capacity));
  CHECK(full.message().find("256") != std::string::npos);

  auto d = node_region::in_memory();
  const std::int32_t gone = dead_pid();
  for (std::size_t i = 0; i < k_node_tenants; ++i) {
    REQUIRE(d.join(gpu, i + 1, task_priority::low, 0, gone, 1, 0).ok());
  }
  auto reused = d.join(gpu, 999, task_priority::low, 0, self_pid(), self_start(), 0);
  REQUIRE(reused.ok());
  CHECK(reused->container_key == 999);
}

TEST_CASE("region files: created once, shared, foreign files refused", "[node_region]") {
  const std::string path = temp_path("file");
  std::remove(path.c_str());
  auto first = node_region::open(path);
  REQUIRE(first.ok());
  auto second = node_region::open(path);
  REQUIRE(second.ok());
  const std::uint64_t gpu = device_key("GPU-0");
  auto a = first->join(gpu, 1, task_priority::low, 30, self_pid(), self_start(), k_second);
  auto b = second->join(gpu, 2, task_priority::high, 0, self_pid(), self_start(), k_second);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(first->peers(*a, k_second).high_others_active);
  CHECK(second->live_tenants() == 2);

  // Another process on the same file sees and is seen.
  const pid_t child = ::fork();
  if (child == 0) {
    auto r = node_region::open(path);
    if (!r) ::_exit(2);
    auto c = r->join(gpu, 3, task_priority::low, 0, self_pid(), self_start(), k_second);
    ::_exit(c && r->peers(*c, k_second).others_active ? 0 : 1);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  CHECK(first->live_tenants() == 3);
  std::remove(path.c_str());

  const std::string foreign = temp_path("foreign");
  std::ofstream(foreign) << "not a node region\n";
  auto refused = node_region::open(foreign);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.message().find("not a gpuslice node region") != std::string::npos);
  std::remove(foreign.c_str());

  // The right size but another magic: refused, never overwritten.
  const std::string forged = temp_path("forged");
  {
    std::ofstream f(forged, std::ios::binary);
    std::string bytes(k_node_region_size, '\0');
    bytes[offsetof(node_header, init)] = 2;  // init word: ready
    f << bytes;
  }
  auto bad = node_region::open(forged);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.message().find("not a gpuslice node region") != std::string::npos);
  std::remove(forged.c_str());

  auto missing_dir = node_region::open("no-such-dir/node.bin");
  REQUIRE_FALSE(missing_dir.ok());
  CHECK(missing_dir.message().find("cannot open") != std::string::npos);
}
