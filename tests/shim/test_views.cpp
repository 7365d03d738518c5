// Tests of shim/views.hpp: the figures the shim reports and how it settles charges.
#include <catch2/catch.hpp>

#include "views.hpp"

using gpuslice::shim::array_bytes;
using gpuslice::shim::closed_view;
using gpuslice::shim::level_bytes;
using gpuslice::shim::make_view;
using gpuslice::shim::settle;
using gpuslice::shim::texel_layout;
using gpuslice::shim::uncounted_overhead;

namespace {
constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;
}

TEST_CASE("the view reports the limit as total and limit - used as free", "[shim][views]") {
  const auto v = make_view(4 * k_gib, k_gib, 80 * k_gib, 70 * k_gib);
  CHECK(v.total == 4 * k_gib);
  CHECK(v.used == k_gib);
  CHECK(v.free == 3 * k_gib);
}

TEST_CASE("the view never reports more than the card has", "[shim][views]") {
  // A limit above the card (no limit, or CUDA_OVERSUBSCRIBE) is clamped to the card.
  const auto big = make_view(100 * k_gib, 0, 80 * k_gib, 80 * k_gib);
  CHECK(big.total == 80 * k_gib);
  CHECK(big.free == 80 * k_gib);
  // Other tenants hold memory: free is what the card really has free.
  const auto busy = make_view(4 * k_gib, k_gib, 80 * k_gib, k_gib / 2);
  CHECK(busy.total == 4 * k_gib);
  CHECK(busy.free == k_gib / 2);
}

TEST_CASE("use above the limit reads as full, never underflows", "[shim][views]") {
  const auto v = make_view(k_gib, 3 * k_gib, 80 * k_gib, 70 * k_gib);
  CHECK(v.total == k_gib);
  CHECK(v.free == 0);
  CHECK(v.used == k_gib);
  const auto zero = make_view(0, 0, 80 * k_gib, 70 * k_gib);
  CHECK(zero.total == 0);
  CHECK(zero.free == 0);
}

TEST_CASE("the closed view has nothing free", "[shim][views]") {
  const auto v = closed_view(80 * k_gib);
  CHECK(v.total == 80 * k_gib);
  CHECK(v.free == 0);
}

TEST_CASE("settling a charge to the driver's size", "[shim][views]") {
  CHECK(settle(100, 150).more == 50);
  CHECK(settle(100, 150).less == 0);
  CHECK(settle(150, 100).less == 50);
  CHECK(settle(150, 100).more == 0);
  CHECK(settle(7, 7).more == 0);
  CHECK(settle(7, 7).less == 0);
}

TEST_CASE("uncounted driver memory is the driver's figure minus the counted bytes",
          "[shim][views]") {
  CHECK(uncounted_overhead(300, 200) == 100);
  CHECK(uncounted_overhead(200, 300) == 0);  // reservations the driver has not taken yet
  CHECK(uncounted_overhead(0, 0) == 0);
}

TEST_CASE("an array's footprint pads rows and counts blocks, planes, levels and layers",
          "[shim][views]") {
  constexpr texel_layout float4{16};
  // 100 texels of 16 bytes = 1600 bytes, padded to 2048; 10 rows.
  CHECK(level_bytes(float4, 100, 10, 0, 512) == 2048 * 10);
  // 1D: one row.
  CHECK(level_bytes(float4, 100, 0, 0, 512) == 2048);
  // BC1: 8 bytes per 4x4 block; 10x10 texels are 3x3 blocks.
  constexpr texel_layout bc1{8, 4, 4};
  CHECK(level_bytes(bc1, 10, 10, 0, 1) == 8 * 3 * 3);
  // NV12: a luma plane and a chroma plane of half the rows.
  constexpr texel_layout nv12{1, 1, 1, 3, 2};
  CHECK(level_bytes(nv12, 512, 64, 0, 512) == 512 * 96);
  // A mip chain halves every dimension down to 1; a layered one keeps its layers.
  constexpr texel_layout r8{1};
  CHECK(array_bytes(r8, 1024, 1024, 8, 3, false, 1) ==
        1024 * 1024 * 8 + 512 * 512 * 4 + 256 * 256 * 2);
  CHECK(array_bytes(r8, 1024, 1024, 8, 3, true, 1) == (1024 * 1024 + 512 * 512 + 256 * 256) * 8);
  CHECK(array_bytes(r8, 4, 4, 0, 5, false, 1) == 16 + 4 + 1 + 1 + 1);
  // Zero levels means one.
  CHECK(array_bytes(r8, 4, 4, 0, 0, false, 1) == 16);
}
