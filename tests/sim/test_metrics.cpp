// Discretisation of per-event metrics to integer arrived-load points (§8).
#include <catch2/catch.hpp>
#include <cmath>

#include "gpuslice/sim/metrics.hpp"

using namespace gpuslice::sim;

TEST_CASE("round2 rounds half to even like numpy", "[sim][metrics]") {
  CHECK(round2(0.125) == 0.12);
  CHECK(round2(0.375) == 0.38);
  CHECK(round2(2.5) == 2.5);
}

TEST_CASE("milestones average exact points, else the neighbours", "[sim][metrics]") {
  run_record r;
  r.total_gpus = 10;  // 10 000 milli; one percent = 100 milli
  auto ev = [&](std::int64_t arrived, std::int64_t alloc, double frag, double rate) {
    r.arrived.push_back(arrived);
    r.allocated.push_back(alloc);
    r.frag_milli.push_back(frag);
    r.frag_rate.push_back(rate);
  };
  ev(0, 0, 0, 0);          // a = 0
  ev(100, 100, 50, 2.0);   // a = 1
  ev(140, 140, 70, 4.0);   // a = 1 (1.4 rounds down)
  ev(250, 200, 100, NAN);  // a = 2 (2.5 rounds half to even)
  ev(500, 400, 1000, 50);  // a = 5
  const auto m = discretise(r, 6);
  CHECK(m.present[0]);
  CHECK(m.alloc_pct[1] == Approx(1.2));  // mean of 1.0 and 1.4
  CHECK(m.frag_rate_pct[1] == Approx(3.0));
  CHECK(m.frag_milli[1] == Approx(60.0));
  CHECK(m.frag_amount_pct[1] == Approx(0.6));  // 100 * 60 / 1000 / 10
  CHECK(m.alloc_pct[2] == Approx(2.0));
  CHECK(std::isnan(m.frag_rate_pct[2]));  // its only rate is NaN
  CHECK(m.alloc_pct[3] == Approx(2.0));   // none at 3: its neighbour at 2
  CHECK(m.present[4]);                    // neighbours 3..5: the event at 5
  CHECK(m.alloc_pct[4] == Approx(4.0));
  CHECK(m.unallocated_gpus[5] == Approx(9.6));
  CHECK(m.present[6]);
  CHECK(m.alloc_pct.size() == 7);

  run_record early;
  early.total_gpus = 10;
  early.arrived = {0};
  early.allocated = {0};
  early.frag_milli = {0};
  early.frag_rate = {0};
  const auto e = discretise(early, 3);
  CHECK(e.present[1]);
  CHECK_FALSE(e.present[2]);
  CHECK(std::isnan(e.alloc_pct[2]));
}
