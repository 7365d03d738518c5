// go_rand against values printed by Go 1.19's math/rand (rand.New(rand.NewSource(seed))).
#include <catch2/catch.hpp>
#include <cstdint>
#include <numeric>
#include <vector>

#include "gpuslice/sim/go_rand.hpp"

using gpuslice::sim::go_rand;

TEST_CASE("go_rand Int63 matches Go for several seeds", "[sim][go_rand]") {
  struct expected {
    std::int64_t seed;
    std::vector<std::int64_t> values;
  };
  const std::vector<expected> cases = {
      {42,
       {3440579354231278675, 608747136543856411, 5571782338101878760, 1926012586526624009,
        404153945743547657}},
      {1,
       {5577006791947779410, 8674665223082153551, 6129484611666145821, 4037200794235010051,
        3916589616287113937}},
      {0,
       {8717895732742165505, 2259404117704393152, 6050128673802995827, 501233450539197794,
        3390393562759376202}},
      {-5,
       {1811683815564572222, 4427849682616757295, 188166459856594692, 3720612653564574438,
        4799732044643461975}},
      // Seeds are taken modulo 2^31 - 1: these equal seeds 0 and 1.
      {2147483647, {8717895732742165505, 2259404117704393152}},
      {2147483648, {5577006791947779410, 8674665223082153551}},
  };
  for (const auto& c : cases) {
    go_rand r(c.seed);
    for (std::int64_t v : c.values) CHECK(r.int63() == v);
  }
}

TEST_CASE("go_rand Intn, Int31n, Uint32, Uint64 match Go", "[sim][go_rand]") {
  go_rand r(42);
  const std::vector<std::pair<std::int64_t, std::int64_t>> intn = {{1, 0},
                                                                   {2, 1},
                                                                   {3, 2},
                                                                   {7, 1},
                                                                   {10, 3},
                                                                   {100, 45},
                                                                   {1000, 357},
                                                                   {1 << 20, 361864},
                                                                   {1213, 734},
                                                                   {8152, 843},
                                                                   {2147483647, 1579751929}};
  for (const auto& [n, v] : intn) CHECK(r.intn(n) == v);

  go_rand s(7);
  const std::vector<std::uint64_t> want = {3946611772U, 497157870,  853, 8407677068955557379ULL,
                                           2998898825U, 313867508,  272, 3160684052629424482ULL,
                                           95617904,    1420705596, 268, 12810886412440093990ULL};
  for (std::size_t i = 0; i < want.size(); i += 4) {
    CHECK(s.uint32() == want[i]);
    CHECK(static_cast<std::uint64_t>(s.int31()) == want[i + 1]);
    CHECK(static_cast<std::uint64_t>(s.int31n(1000)) == want[i + 2]);
    CHECK(s.uint64() == want[i + 3]);
  }
}

TEST_CASE("go_rand Shuffle and Perm match Go", "[sim][go_rand]") {
  go_rand r(42);
  std::vector<int> v(20);
  std::iota(v.begin(), v.end(), 0);
  r.shuffle(20, [&](std::int64_t i, std::int64_t j) {
    std::swap(v[static_cast<std::size_t>(i)], v[static_cast<std::size_t>(j)]);
  });
  CHECK(v ==
        std::vector<int>{6, 8, 14, 13, 9, 16, 15, 2, 18, 17, 19, 12, 4, 11, 5, 0, 3, 10, 1, 7});
  CHECK(r.perm(10) == std::vector<std::int64_t>{6, 8, 7, 2, 5, 3, 4, 9, 0, 1});

  // rand.Seed(43); rand.Int(); rand.Shuffle(8152, ...); rand.Intn(8152); rand.Perm(1213).
  go_rand g(43);
  (void)g.int63();
  std::vector<int> p(8152);
  std::iota(p.begin(), p.end(), 0);
  g.shuffle(8152, [&](std::int64_t i, std::int64_t j) {
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
  });
  CHECK(p[0] == 2283);
  CHECK(p[1] == 7248);
  CHECK(p[2] == 5897);
  CHECK(p[8151] == 4205);
  CHECK(g.intn(8152) == 7760);
  const auto perm = g.perm(1213);
  CHECK(std::vector<std::int64_t>(perm.begin(), perm.begin() + 5) ==
        std::vector<std::int64_t>{907, 622, 973, 742, 128});
}

TEST_CASE("go_rand rejects a non-positive bound", "[sim][go_rand]") {
  go_rand r(1);
  CHECK_THROWS_AS(r.intn(0), std::invalid_argument);
  CHECK_THROWS_AS(r.int31n(-3), std::invalid_argument);
  CHECK(r.perm(0).empty());
}
