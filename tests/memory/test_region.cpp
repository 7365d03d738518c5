// Pins the shared layout: every field's offset and every struct's size. A failure here means
// the file format changed, which needs a new k_layout_version.
#include <catch2/catch.hpp>
#include <cstddef>

#include "gpuslice/config.hpp"
#include "gpuslice/memory/region.hpp"

namespace m = gpuslice::memory;

TEST_CASE("region constants match the contract", "[region]") {
  STATIC_REQUIRE(m::k_max_devices == gpuslice::k_max_devices);
  STATIC_REQUIRE(m::k_uuid_bytes == 96);
  STATIC_REQUIRE(m::k_slot_count >= 1024);
  STATIC_REQUIRE(m::k_rate_words == 8);
  STATIC_REQUIRE(m::k_rate_words == gpuslice::k_rate_words);
  STATIC_REQUIRE(m::k_layout_version == 2);
  STATIC_REQUIRE(m::k_region_size == 1642752);
  // "GPUSLEDG" in file order on a little-endian machine.
  const char* magic = reinterpret_cast<const char*>(&m::k_magic);
  CHECK(std::string(magic, 8) == "GPUSLEDG");
}

TEST_CASE("atomics of the region are lock-free and integer-sized", "[region]") {
  STATIC_REQUIRE(std::atomic<std::uint64_t>::is_always_lock_free);
  STATIC_REQUIRE(std::atomic<std::uint32_t>::is_always_lock_free);
  STATIC_REQUIRE(sizeof(std::atomic<std::uint64_t>) == 8);
  STATIC_REQUIRE(alignof(std::atomic<std::uint64_t>) == 8);
}

TEST_CASE("header offsets are pinned", "[region]") {
  using h = m::region_header;
  STATIC_REQUIRE(offsetof(h, magic) == 0);
  STATIC_REQUIRE(offsetof(h, layout_version) == 8);
  STATIC_REQUIRE(offsetof(h, reserved0) == 12);
  STATIC_REQUIRE(offsetof(h, init) == 16);
  STATIC_REQUIRE(offsetof(h, init_ident) == 24);
  STATIC_REQUIRE(offsetof(h, region_size) == 32);
  STATIC_REQUIRE(offsetof(h, device_count) == 40);
  STATIC_REQUIRE(offsetof(h, slot_count) == 44);
  STATIC_REQUIRE(offsetof(h, reap_gate) == 48);
  STATIC_REQUIRE(offsetof(h, reap_gate_ident) == 56);
  STATIC_REQUIRE(offsetof(h, last_reap_ns) == 64);
  STATIC_REQUIRE(offsetof(h, reap_count) == 72);
  STATIC_REQUIRE(offsetof(h, reclaimed_bytes) == 80);
  STATIC_REQUIRE(offsetof(h, reserved) == 88);
  STATIC_REQUIRE(sizeof(h) == 256);
  STATIC_REQUIRE(alignof(h) == 64);
}

TEST_CASE("device record offsets are pinned", "[region]") {
  using d = m::device_record;
  STATIC_REQUIRE(offsetof(d, uuid) == 0);
  STATIC_REQUIRE(offsetof(d, state) == 96);
  STATIC_REQUIRE(offsetof(d, state_ident) == 104);
  STATIC_REQUIRE(offsetof(d, limit) == 112);
  STATIC_REQUIRE(offsetof(d, sm_limit_percent) == 120);
  STATIC_REQUIRE(offsetof(d, reserved0) == 124);
  STATIC_REQUIRE(offsetof(d, used) == 128);
  STATIC_REQUIRE(offsetof(d, reserved1) == 136);
  STATIC_REQUIRE(offsetof(d, rate_words) == 192);
  STATIC_REQUIRE(sizeof(d::rate_words) == 8 * 8);
  STATIC_REQUIRE(sizeof(d) == 256);
}

TEST_CASE("process slot offsets are pinned", "[region]") {
  using l = m::slot_lane;
  STATIC_REQUIRE(offsetof(l, holder) == 0);
  STATIC_REQUIRE(offsetof(l, inflight) == 8);
  STATIC_REQUIRE(offsetof(l, reserved0) == 16);
  STATIC_REQUIRE(offsetof(l, used) == 64);
  STATIC_REQUIRE(sizeof(l::used) == 16 * 8);
  STATIC_REQUIRE(sizeof(l) == 192);
  using s = m::process_slot;
  STATIC_REQUIRE(offsetof(s, owner) == 0);
  STATIC_REQUIRE(offsetof(s, ident) == 8);
  STATIC_REQUIRE(offsetof(s, reserved0) == 16);
  STATIC_REQUIRE(offsetof(s, lanes) == 64);
  STATIC_REQUIRE(m::k_lanes == 8);
  STATIC_REQUIRE(m::k_shared_lane == 0);
  STATIC_REQUIRE(sizeof(s) == 64 + 8 * 192);
}

TEST_CASE("region offsets are pinned", "[region]") {
  STATIC_REQUIRE(offsetof(m::region, header) == 0);
  STATIC_REQUIRE(offsetof(m::region, devices) == 256);
  STATIC_REQUIRE(offsetof(m::region, slots) == 4352);
  STATIC_REQUIRE(sizeof(m::region) == 4352 + 1024 * 1600);
}

TEST_CASE("the device total's top bit is the reap gate", "[region]") {
  STATIC_REQUIRE(m::k_gate_bit == 0x8000000000000000ULL);
  STATIC_REQUIRE(m::k_max_bytes == 0x7fffffffffffffffULL);
}

TEST_CASE("owner words pack pid and state", "[region]") {
  const auto o = m::make_owner(123456, m::slot_state::live);
  CHECK(m::owner_pid(o) == 123456);
  CHECK(m::owner_state(o) == m::slot_state::live);
  CHECK(o == ((std::uint64_t{123456} << 32) | 2));
  CHECK(m::make_owner(7, m::slot_state::free) != 0);  // a claimed slot never reads as free
  CHECK(m::owner_state(m::make_owner(7, m::slot_state::reaping)) == m::slot_state::reaping);
}

TEST_CASE("owner words carry a generation between pid and state", "[region]") {
  const auto o = m::make_owner(123456, m::slot_state::live, 0xabcdef);
  CHECK(o == ((std::uint64_t{123456} << 32) | (std::uint64_t{0xabcdef} << 8) | 2));
  CHECK(gpuslice::claim_generation(o) == 0xabcdef);
  CHECK(m::owner_pid(o) == 123456);
  CHECK(m::owner_state(o) == m::slot_state::live);
  // The ident word records the start time under the same generation.
  const auto id = gpuslice::claim_ident(o, 987654321);
  CHECK(gpuslice::claim_start(o, id) == 987654321);
  CHECK(gpuslice::claim_start(m::make_owner(123456, m::slot_state::live, 1), id) == 0);
}
