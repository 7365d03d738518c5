#include <catch2/catch.hpp>

#include "gpuslice/testing/manual_clock.hpp"
#include "gpuslice/testing/scripted_utilization.hpp"

using gpuslice::rate::utilization_reading;
using gpuslice::testing::manual_clock;
using gpuslice::testing::scripted_utilization;

TEST_CASE("manual_clock copies share one time that only moves forward", "[rate][testing]") {
  manual_clock c(100);
  manual_clock copy = c;
  CHECK(c.advance(50) == 150);
  CHECK(copy.now() == 150);
  copy.set(120);  // never backwards
  CHECK(c.now() == 150);
  copy.set(400);
  CHECK(c.now() == 400);
}

TEST_CASE("scripted_utilization hands out readings once their window has ended",
          "[rate][testing]") {
  scripted_utilization s;
  s.add_constant(0, 300, 100, 0.5);
  utilization_reading r;
  CHECK_FALSE(s.poll(99, r));
  REQUIRE(s.poll(100, r));
  CHECK(r.start_ns == 0);
  CHECK(r.end_ns == 100);
  CHECK(r.busy_ns == 50);
  CHECK_FALSE(s.poll(150, r));
  REQUIRE(s.poll(1000, r));
  REQUIRE(s.poll(1000, r));
  CHECK(r.end_ns == 300);
  CHECK_FALSE(s.poll(1000, r));
  CHECK(s.consumed() == 3);
}
