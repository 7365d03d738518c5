// Topology: branch-and-bound equals brute force, prunes, breaks ties lexicographically.
#include <catch2/catch.hpp>
#include <functional>
#include <random>

#include "fixtures.hpp"
#include "gpuslice/fit/topology.hpp"

using namespace gpuslice::fit;
using fixtures::board8;

namespace {
// Reference: every subset of size k, the best sum, ties to the lexicographically smallest.
linked_subset brute(const link_matrix& m, const std::vector<std::size_t>& cand, std::size_t k) {
  linked_subset best;
  bool found = false;
  std::vector<std::size_t> pick;
  std::function<void(std::size_t)> rec = [&](std::size_t i) {
    if (pick.size() == k) {
      std::int64_t s = 0;
      for (std::size_t a = 0; a < k; ++a) {
        for (std::size_t b = a + 1; b < k; ++b) s += m.at(pick[a], pick[b]);
      }
      if (!found || s > best.score) {
        found = true;
        best.score = s;
        best.devices = pick;
      }
      return;
    }
    for (std::size_t j = i; j < cand.size(); ++j) {
      pick.push_back(cand[j]);
      rec(j + 1);
      pick.pop_back();
    }
  };
  rec(0);
  return best;
}

std::uint64_t choose(std::uint64_t n, std::uint64_t k) {
  std::uint64_t r = 1;
  for (std::uint64_t i = 1; i <= k; ++i) r = r * (n - k + i) / i;
  return r;
}
}  // namespace

TEST_CASE("best_linked_subset equals brute force on random matrices", "[fit][topology]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::size_t m = 2 + rng() % 9;
    link_matrix links(m);
    std::uniform_int_distribution<int> score(0, trial % 2 == 0 ? 3 : 1000);  // many ties or few
    for (std::size_t a = 0; a < m; ++a) {
      for (std::size_t b = a + 1; b < m; ++b) links.set(a, b, score(rng));
    }
    std::vector<std::size_t> cand;
    for (std::size_t i = 0; i < m; ++i) {
      if (rng() % 4 != 0) cand.push_back(i);
    }
    const std::size_t k = 1 + rng() % m;
    linked_subset got;
    const bool ok = best_linked_subset(links, cand, k, got);
    REQUIRE(ok == (cand.size() >= k));
    if (!ok) continue;
    const auto want = brute(links, cand, k);
    INFO("trial " << trial << " m=" << m << " k=" << k);
    CHECK(got.score == want.score);
    CHECK(got.devices == want.devices);
  }
}

TEST_CASE("best_linked_subset prunes instead of listing every subset", "[fit][topology]") {
  std::mt19937 rng(11);
  const std::size_t m = 16, k = 8;
  link_matrix links(m);
  for (std::size_t a = 0; a < m; ++a) {
    for (std::size_t b = a + 1; b < m; ++b) links.set(a, b, static_cast<int>(rng() % 1000));
  }
  std::vector<std::size_t> cand(m);
  for (std::size_t i = 0; i < m; ++i) cand[i] = i;
  linked_subset got;
  REQUIRE(best_linked_subset(links, cand, k, got));
  CHECK(got.score == brute(links, cand, k).score);
  // The full search tree has more than C(16, 8) = 12870 leaves.
  CHECK(got.nodes_visited < choose(m, k));
}

TEST_CASE("an NVLink board: pairs and quads are found", "[fit][topology]") {
  const auto links = board8();
  std::vector<std::size_t> all{0, 1, 2, 3, 4, 5, 6, 7};
  linked_subset got;
  REQUIRE(best_linked_subset(links, all, 2, got));
  CHECK(got.devices == std::vector<std::size_t>{0, 1});
  REQUIRE(best_linked_subset(links, all, 4, got));
  CHECK(got.devices == std::vector<std::size_t>{0, 1, 2, 3});
  // With 0 and 2 taken, the best pair is 4-5 (not the split 1,3).
  REQUIRE(best_linked_subset(links, {1, 3, 4, 5, 6, 7}, 2, got));
  CHECK(got.devices == std::vector<std::size_t>{4, 5});
  REQUIRE(best_linked_subset(links, {1, 3, 4, 5, 6, 7}, 4, got));
  CHECK(got.devices == std::vector<std::size_t>{4, 5, 6, 7});
  CHECK(got.score == 100 + 100 + 4 * 50);
  CHECK_FALSE(best_linked_subset(links, {1, 2}, 3, got));
}

TEST_CASE("links_lost: what the idle set loses", "[fit][topology]") {
  const auto links = board8();
  // Taking 1 when 0 is idle breaks a pair; taking 1 when 0 is busy costs only weak links.
  CHECK(links_lost(links, 1, {0, 1, 2, 3}) == 100 + 50 + 50);
  CHECK(links_lost(links, 1, {1, 2, 3}) == 50 + 50);
  CHECK(links_lost(links, 1, {}) == 0);
}
