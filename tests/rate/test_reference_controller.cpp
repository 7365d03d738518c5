#include <catch2/catch.hpp>

#include "gpuslice/rate/reference_controller.hpp"

using gpuslice::rate::reference_controller;

TEST_CASE("the reference charges grid blocks and refuses while negative", "[rate][reference]") {
  reference_controller r(132, 50);
  CHECK(r.tokens() == 0);
  CHECK(r.try_launch(264));  // zero is not negative: the original lets it through
  CHECK(r.tokens() == -264);
  CHECK_FALSE(r.try_launch(264));
  CHECK(r.tokens() == -264);
}

TEST_CASE("the reference step grows with the square of the SM count", "[rate][reference]") {
  // Utilization 0 against a 50% limit: diff 50 > 25, so the step is boosted by 2*50/51.
  reference_controller small(16, 50), large(132, 50);
  small.tick(0);
  large.tick(0);
  const std::int64_t s16 = 16 * 16 * 2048 * 50 / 2560 * 50 * 2 / 51;
  const std::int64_t s132 = 132 * 132 * 2048 * 50 / 2560 * 50 * 2 / 51;
  CHECK(small.share() == s16);
  CHECK(large.share() == s132);
  CHECK(large.share() / small.share() == (132 * 132) / (16 * 16));
  CHECK(large.tokens() == s132);
}

TEST_CASE("the reference keeps refilling while over its limit until share reaches 0",
          "[rate][reference]") {
  reference_controller r(132, 50);
  r.tick(0);
  const std::int64_t first = r.share();
  r.tick(60);  // over the limit: share shrinks, but the bucket still grows by it
  CHECK(r.share() < first);
  CHECK(r.tokens() == first + r.share());
  r.tick(-1);  // an invalid reading changes nothing
  CHECK(r.tokens() == first + r.share());
  // The bucket is capped at threads * SMs * 32.
  for (int i = 0; i < 1000; ++i) r.tick(0);
  CHECK(r.tokens() == 2048 * 132 * 32);
}
