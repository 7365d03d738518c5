#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>

#include "gpuslice/rate/token_bucket.hpp"

using gpuslice::errc;
using gpuslice::rate::k_rate_tag_ready;
using gpuslice::rate::local_rate_words;
using gpuslice::rate::shared_token_bucket;

namespace {
constexpr std::int64_t k_ms = 1'000'000;
constexpr std::int64_t k_us = 1'000;
constexpr std::int64_t k_half = 500'000;     // 50% in ppm
constexpr std::int64_t k_quarter = 250'000;  // 25% in ppm
}  // namespace

TEST_CASE("attach initialises fresh words once and joins initialised ones", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> a(w.words);
  auto first = a.attach(k_half, 10 * k_ms, 1000);
  REQUIRE(first.ok());
  CHECK(*first);
  CHECK(a.ready());
  CHECK(w.words[7].load() == k_rate_tag_ready);
  CHECK(gpuslice::claim_state(w.words[0].load()) == gpuslice::rate::k_rate_ready);
  CHECK(gpuslice::claim_pid(w.words[0].load()) == ::getpid());  // who initialised them
  CHECK(a.share_ppm() == k_half);
  CHECK(a.burst_ns() == 10 * k_ms);
  CHECK(a.available(1000) == 0);  // starts empty

  shared_token_bucket<> b(w.words);
  auto second = b.attach(k_quarter, 20 * k_ms, 5000);
  REQUIRE(second.ok());
  CHECK_FALSE(*second);
  CHECK(a.share_ppm() == k_quarter);  // the same words: the container's latest configuration
  CHECK(a.burst_ns() == 20 * k_ms);
}

TEST_CASE("attach refuses foreign words, other versions and bad settings", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  SECTION("foreign claim word") {
    w.words[0] = 0x1234;
    auto r = b.attach(k_half, k_ms, 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == errc::corrupt);
    CHECK(w.words[0].load() == 0x1234);  // never taken over
  }
  SECTION("foreign tag") {
    w.words[7] = 0x1234;
    auto r = b.attach(k_half, k_ms, 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == errc::corrupt);
    CHECK(r.message().find("unknown tag") != std::string::npos);
  }
  SECTION("another layout version") {
    w.words[7] = k_rate_tag_ready + 1;
    auto r = b.attach(k_half, k_ms, 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == errc::version_mismatch);
  }
  SECTION("share out of range") {
    auto r = b.attach(0, k_ms, 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.code() == errc::out_of_range);
    CHECK(r.message() == "share_ppm=0: expected 1..1000000 parts per million");
    CHECK(w.words[0].load() == 0);  // nothing written
  }
  SECTION("negative burst") {
    auto r = b.attach(k_half, -1, 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.message() == "burst_ns=-1: expected >= 0");
  }
}

TEST_CASE("tokens accrue at the share and stop at the capacity", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(k_half, 10 * k_ms, 0).ok());
  CHECK(b.available(4 * k_ms) == 2 * k_ms);
  CHECK(b.available(20 * k_ms) == 10 * k_ms);
  CHECK(b.available(1000 * k_ms) == 10 * k_ms);
}

TEST_CASE("consume borrows and the wait is exactly the deficit", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(k_quarter, 10 * k_ms, 0).ok());
  // 2 ms accrued at 25% = 0.5 ms of tokens.
  CHECK(b.consume(k_ms / 2, 2 * k_ms) == 0);
  CHECK(b.available(2 * k_ms) == 0);
  // 1 ms more with an empty bucket: 4 ms of wall time at 25%.
  CHECK(b.consume(k_ms, 2 * k_ms) == 4 * k_ms);
  CHECK(b.available(2 * k_ms) == -k_ms);
  // A second borrower queues behind the first.
  CHECK(b.consume(k_ms, 2 * k_ms) == 8 * k_ms);
  CHECK(b.available(10 * k_ms) == 0);
  CHECK(b.charged_ns() == k_ms / 2 + 2 * k_ms);
  CHECK(b.waited_ns() == 12 * k_ms);
}

TEST_CASE("adjust charges after the fact; refunds never exceed the capacity", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(k_half, 4 * k_ms, 0).ok());
  b.adjust(3 * k_ms, 0);
  CHECK(b.available(0) == -3 * k_ms);
  b.adjust(-k_ms, 0);
  CHECK(b.available(0) == -2 * k_ms);
  b.adjust(-100 * k_ms, 0);
  CHECK(b.available(0) == 4 * k_ms);
  // A refund to a full bucket changes nothing.
  b.adjust(-k_ms, 100 * k_ms);
  CHECK(b.available(100 * k_ms) == 4 * k_ms);
}

TEST_CASE("drain empties the bucket and keeps a debt", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(k_half, 10 * k_ms, 0).ok());
  CHECK(b.available(50 * k_ms) == 10 * k_ms);
  b.drain(50 * k_ms);
  CHECK(b.available(50 * k_ms) == 0);
  CHECK(b.consume(k_ms, 50 * k_ms) == 2 * k_ms);
  b.drain(50 * k_ms);
  CHECK(b.available(50 * k_ms) == -k_ms);
}

TEST_CASE("a caller that honours the waits gets exactly the share", "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  const std::int64_t ppm = GENERATE(100'000, 300'000, 900'000);
  const std::int64_t cost = GENERATE(20'000, 1'000'000, 50'000'000);
  REQUIRE(b.attach(ppm, 10 * k_ms, 0).ok());
  std::int64_t now = 0, used = 0, calls = 0;
  constexpr std::int64_t k_horizon = 10'000 * k_ms;
  while (now < k_horizon) {
    now += b.consume(cost, now);
    used += cost;
    ++calls;
  }
  // Over 10 s the tokens used equal share x time, within one kernel and the rounding up of
  // each wait to a whole ns (never in the caller's favour).
  const double expected = static_cast<double>(ppm) / 1e6 * static_cast<double>(now);
  CHECK(static_cast<double>(used) <= expected + static_cast<double>(cost));
  CHECK(static_cast<double>(used) >= expected - static_cast<double>(calls));
}

TEST_CASE("a larger capacity keeps more; clip keeps at most a given amount and any debt",
          "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(k_half, 10 * k_ms, 0).ok());
  // Idle for 1 s at 50%: 500 ms earned, 10 ms kept.
  CHECK(b.available(1000 * k_ms) == 10 * k_ms);
  b.set_burst_ns(100 * k_ms);
  CHECK(b.burst_ns() == 100 * k_ms);
  CHECK(b.available(1000 * k_ms) == 100 * k_ms);
  b.set_burst_ns(-5);
  CHECK(b.burst_ns() == 0);
  b.set_burst_ns(100 * k_ms);
  // Back from idle: keep at most 10 ms of the 100 saved.
  b.clip(10 * k_ms, 1000 * k_ms);
  CHECK(b.available(1000 * k_ms) == 10 * k_ms);
  // Clipping above what it holds changes nothing.
  b.clip(50 * k_ms, 1000 * k_ms);
  CHECK(b.available(1000 * k_ms) == 10 * k_ms);
  // A debt is kept: 30 ms charged with 10 held leaves 20 owed (40 ms of wall at 50%).
  CHECK(b.consume(30 * k_ms, 1000 * k_ms) == 40 * k_ms);
  b.clip(10 * k_ms, 1000 * k_ms);
  CHECK(b.available(1000 * k_ms) == -20 * k_ms);
}

TEST_CASE("the capacity is the largest a process still claims; a lapsed claim steps down",
          "[rate][bucket]") {
  local_rate_words w;
  shared_token_bucket<> b(w.words);
  REQUIRE(b.attach(k_half, 30 * k_ms, 0).ok());
  const std::int64_t stale = 1000 * k_ms, refresh = 250 * k_ms;
  // A process of 50 ms kernels claims 100 ms; one of 1 ms kernels offers 30 ms in between.
  CHECK(b.offer_burst_ns(100 * k_ms, 10 * k_ms, stale, refresh) == 100 * k_ms);
  CHECK(b.offer_burst_ns(30 * k_ms, 20 * k_ms, stale, refresh) == 100 * k_ms);
  CHECK(b.burst_ns() == 100 * k_ms);
  // The long-kernel process renews its claim (its own, moved a little by the correction).
  CHECK(b.offer_burst_ns(95 * k_ms, 900 * k_ms, stale, refresh) == 100 * k_ms);
  CHECK(b.offer_burst_ns(30 * k_ms, 1800 * k_ms, stale, refresh) == 100 * k_ms);  // renewed
  // It stops launching: after a stale period the claim steps down by a quarter per period,
  // never under the offer.
  CHECK(b.offer_burst_ns(30 * k_ms, 2000 * k_ms, stale, refresh) == 75 * k_ms);
  CHECK(b.offer_burst_ns(30 * k_ms, 2500 * k_ms, stale, refresh) == 75 * k_ms);
  CHECK(b.offer_burst_ns(30 * k_ms, 3100 * k_ms, stale, refresh) == 56'250 * k_us);
  CHECK(b.offer_burst_ns(30 * k_ms, 4200 * k_ms, stale, refresh) == 42'187 * k_us);
  CHECK(b.offer_burst_ns(30 * k_ms, 5300 * k_ms, stale, refresh) == 31'640 * k_us);
  // Within 10% of the offer, the offer renews the claim and keeps it.
  CHECK(b.offer_burst_ns(30 * k_ms, 6400 * k_ms, stale, refresh) == 31'640 * k_us);
  // A joining process never lowers it; a larger claim takes over at once.
  REQUIRE(b.attach(k_half, 10 * k_ms, 6500 * k_ms).ok());
  CHECK(b.burst_ns() == 31'640 * k_us);
  CHECK(b.offer_burst_ns(200 * k_ms, 6600 * k_ms, stale, refresh) == 200 * k_ms);
  // The word holds whole microseconds, up to k_max_capacity_ns.
  b.set_burst_ns(gpuslice::rate::k_max_capacity_ns + k_ms, 0);
  CHECK(b.burst_ns() == gpuslice::rate::k_max_capacity_ns);
}
