#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "gpuslice/rate/limiter.hpp"
#include "gpuslice/testing/manual_clock.hpp"
#include "gpuslice/testing/scripted_utilization.hpp"

using gpuslice::task_priority;
using gpuslice::utilization_policy;
using gpuslice::rate::admission;
using gpuslice::rate::launch_gate;
using gpuslice::rate::limiter_mode;
using gpuslice::rate::limiter_params;
using gpuslice::rate::limiter_settings;
using gpuslice::rate::local_rate_words;
using gpuslice::testing::manual_clock;
using gpuslice::testing::scripted_utilization;

namespace {
constexpr std::int64_t k_us = 1'000, k_ms = 1'000'000;
using limiter = gpuslice::rate::sm_limiter<manual_clock>;

limiter_settings force(double pct) { return {pct, utilization_policy::force, task_priority::low}; }
}  // namespace

TEST_CASE("the mode follows policy, share, priority and the peer signal", "[rate][limiter]") {
  local_rate_words w;
  limiter l(w.words, {30, utilization_policy::default_policy, task_priority::low});
  REQUIRE(l.ok());
  CHECK(l.mode() == limiter_mode::uncapped);  // default policy, alone
  l.set_others_active(true);
  CHECK(l.mode() == limiter_mode::capped);
  l.set_others_active(true, true);
  CHECK(l.mode() == limiter_mode::suspended);  // low priority yields to a high one

  l.set_settings({30, utilization_policy::default_policy, task_priority::high});
  l.set_others_active(true, false);
  CHECK(l.mode() == limiter_mode::uncapped);  // low-priority peers never throttle it
  l.set_others_active(true, true);
  CHECK(l.mode() == limiter_mode::capped);

  l.set_settings(force(30));
  l.set_others_active(false);
  CHECK(l.mode() == limiter_mode::capped);
  l.set_settings({30, utilization_policy::disable, task_priority::low});
  l.set_others_active(true, true);
  CHECK(l.mode() == limiter_mode::uncapped);
  l.set_settings(force(0));  // 0 = no limit
  l.set_others_active(true);
  CHECK(l.mode() == limiter_mode::uncapped);
  l.set_settings(force(100));
  CHECK(l.mode() == limiter_mode::uncapped);
}

TEST_CASE("uncapped launches never touch the bucket", "[rate][limiter]") {
  local_rate_words w;
  limiter l(w.words, force(0));
  const auto zero_time = w.words[1].load();
  for (int i = 0; i < 100; ++i) {
    const admission a = l.admit(7, i * k_us);
    CHECK(a.admitted);
    CHECK(a.wait_ns == 0);
  }
  CHECK(w.words[1].load() == zero_time);
}

TEST_CASE("a capped launch waits for its deficit; short waits carry as debt", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 1 * k_ms;
  p.min_wait_ns = 100 * k_us;
  limiter l(w.words, force(25), p);  // attached at t = 0, empty
  // Unknown function: charged the prior, 1 ms at 25% = 4 ms of wall time.
  admission a = l.admit(1, 0);
  CHECK(a.admitted);
  CHECK(a.wait_ns == 4 * k_ms);
  // Learn that function 2 takes 10 us: 40 us of wall time, under min_wait: no wait, but debt.
  l.observe(2, 10 * k_us, 4 * k_ms);
  CHECK(l.estimate_ns(2) == 10 * k_us);
  a = l.admit(2, 4 * k_ms);
  CHECK(a.wait_ns == 0);
  CHECK(l.bucket().available(4 * k_ms) == -10 * k_us);
  // The debt adds up until it is worth a sleep.
  std::int64_t waits = 0;
  for (int i = 0; i < 10; ++i) waits += l.admit(2, 4 * k_ms).wait_ns;
  CHECK(waits > 0);
}

TEST_CASE("observations teach the cost; the first sight is forgiven", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 100 * k_us;
  p.estimate_weight = 0.5;
  limiter l(w.words, force(50), p);
  // Launched before its cost is known: charged the prior.
  CHECK(l.admit(9, 0).wait_ns == 200 * k_us);
  // It took 10 ms. Forgiven: the bucket is not charged the difference.
  l.observe(9, 10 * k_ms, 10 * k_ms);
  CHECK(l.estimate_ns(9) == 10 * k_ms);
  CHECK(l.bucket().available(10 * k_ms) == 4'900 * k_us);
  // From now on a launch is charged 10 ms; a longer run is charged its difference.
  const std::int64_t before = l.bucket().available(10 * k_ms);
  CHECK(l.admit(9, 10 * k_ms).admitted);
  CHECK(l.bucket().available(10 * k_ms) == before - 10 * k_ms);
  l.observe(9, 14 * k_ms, 10 * k_ms);
  CHECK(l.estimate_ns(9) == 12 * k_ms);  // moving average, weight 0.5
  CHECK(l.bucket().available(10 * k_ms) == before - 14 * k_ms);
  // Functions never seen cost the typical observation, which moved toward what was seen.
  CHECK(l.estimate_ns(1234) > 100 * k_us);
}

TEST_CASE("utilization above the charges raises the correction; agreement leaves it",
          "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 1 * k_ms;
  limiter l(w.words, force(90), p);  // never short of tokens: the charges land on time
  l.observe(1, 1 * k_ms, 0);         // the cost is known: 1 ms
  constexpr std::int64_t k_period = 100 * k_ms;
  std::int64_t now = 0;
  const double busy_per_charged = GENERATE(1.0, 2.0, 0.5);
  for (int period = 0; period < 40; ++period) {
    // 40 launches per period, 40 ms charged; the GPU says it was busy busy_per_charged x that.
    for (int i = 0; i < 40; ++i) l.admit(1, now + i * (k_period / 40));
    now += k_period;
    l.utilization_sample(now - k_period, now,
                         static_cast<std::int64_t>(busy_per_charged * 40 * k_ms));
  }
  CHECK(l.correction() == Approx(busy_per_charged).epsilon(0.05));
}

TEST_CASE("busy time of launches that bypassed admit() is not read as a correction",
          "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 1 * k_ms;
  limiter l(w.words, force(90), p);
  l.observe(1, 1 * k_ms, 0);
  constexpr std::int64_t k_period = 100 * k_ms;
  std::int64_t now = 0;
  auto charged_period = [&] {
    for (int i = 0; i < 40; ++i) l.admit(1, now + i * (k_period / 40));
    now += k_period;
    l.utilization_sample(now - k_period, now, 40 * k_ms);  // busy = charged
  };
  for (int period = 0; period < 10; ++period) charged_period();
  REQUIRE(l.correction() == Approx(1.0).epsilon(0.05));
  // The caller lets launches through without admit() (no cap) for a second, then caps again.
  // The GPU was busy all that time; none of it was charged.
  const bool restarted = GENERATE(false, true);
  const std::int64_t uncapped_until = now + 10 * k_period;
  if (restarted) l.restart_feedback(uncapped_until);
  // A reading that spans the last charged period and the uncapped time: 40 ms charged, the
  // GPU busy for 40 ms and then the whole second.
  const std::int64_t charged_from = uncapped_until - 11 * k_period;
  l.utilization_sample(charged_from, uncapped_until, 40 * k_ms + 10 * k_period);
  INFO("restarted: " << restarted << ", correction " << l.correction());
  if (restarted) {
    CHECK(l.correction() == Approx(1.0).epsilon(0.05));  // the uncharged busy time is ignored
  } else {
    CHECK(l.correction() > 2.0);  // what the restart prevents: every charge inflated
  }
}

TEST_CASE("a suspended launch is not charged and asks again", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  limiter l(w.words, {50, utilization_policy::force, task_priority::low}, p);
  l.set_others_active(true, true);
  const admission a = l.admit(1, 0);
  CHECK_FALSE(a.admitted);
  CHECK(a.wait_ns == p.suspended_poll_ns);
  CHECK(l.bucket().available(0) == 0);
  CHECK(l.bucket().charged_ns() == 0);
}

TEST_CASE("a yield share caps a low-priority tenant while a high one runs", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.yield_share_percent = 5;
  p.prior_kernel_ns = 1 * k_ms;
  limiter l(w.words, {50, utilization_policy::force, task_priority::low}, p);
  l.set_others_active(true, true);
  CHECK(l.mode() == limiter_mode::capped);
  CHECK(l.admit(1, 0).wait_ns == 20 * k_ms);  // 1 ms at 5%
  l.set_others_active(true, false);
  CHECK(l.admit(1, 20 * k_ms).wait_ns == 2 * k_ms);  // back to 50%
}

TEST_CASE("turning capped drains what was saved while uncapped", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 1 * k_ms;
  limiter l(w.words, {50, utilization_policy::default_policy, task_priority::low}, p);
  l.observe(1, 1 * k_ms, 0);  // the cost is known: 1 ms
  for (int i = 0; i < 100; ++i) CHECK(l.admit(1, i * k_ms).wait_ns == 0);  // alone
  CHECK(l.bucket().available(100 * k_ms) == p.burst_ns);
  l.set_others_active(true);
  // Without the drain the first 30 launches would ride on the saved burst.
  CHECK(l.admit(1, 100 * k_ms).wait_ns == 2 * k_ms);
}

TEST_CASE("a capped tenant waits for an unlearned function's first timing", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 100 * k_us;
  limiter l(w.words, force(30), p);
  // Launches of a function never observed are flagged to be timed; two may be in flight.
  for (std::int64_t i = 0; i < p.max_unlearned_in_flight; ++i) {
    const admission a = l.admit(7, i);
    CHECK(a.admitted);
    CHECK(a.learn);
  }
  // The next waits, uncharged, for the first timing (50 ms kernels queued deep would
  // otherwise run at the prior's 100 us).
  const std::int64_t charged = l.bucket().charged_ns();
  admission held = l.admit(7, 10 * k_ms);
  CHECK_FALSE(held.admitted);
  CHECK(held.wait_ns == p.learn_poll_ns);
  CHECK(l.bucket().charged_ns() == charged);
  // Once timed, launches go ahead at the learned cost, no longer flagged.
  l.observe(7, 50 * k_ms, 60 * k_ms);
  held = l.admit(7, 60 * k_ms);
  CHECK(held.admitted);
  CHECK_FALSE(held.learn);
  CHECK(l.estimate_ns(7) == 50 * k_ms);
  // A function whose timing never comes (the caller cannot time it) goes ahead after the
  // timeout, as before.
  const std::int64_t t0 = 100 * k_ms;
  for (int i = 0; i < 2; ++i) CHECK(l.admit(8, t0).admitted);
  CHECK_FALSE(l.admit(8, t0 + p.learn_timeout_ns - 1).admitted);
  CHECK(l.admit(8, t0 + p.learn_timeout_ns).admitted);
}

TEST_CASE("refused shared words fail closed", "[rate][limiter]") {
  local_rate_words w;
  w.words[0] = 42;  // foreign
  limiter l(w.words, force(30));
  CHECK_FALSE(l.ok());
  CHECK(l.error_message().find("unknown tag") != std::string::npos);
  CHECK(l.mode() == limiter_mode::suspended);
  CHECK_FALSE(l.admit(1, 0).admitted);
}

namespace {
/// A sink that sleeps by moving the manual clock and records launches.
struct recording_sink {
  manual_clock clock;
  std::int64_t waited = 0;
  std::vector<std::int64_t> launched_at;
  void wait(std::int64_t ns) {
    waited += ns;
    clock.advance(ns);
  }
  int launch(int value) {
    launched_at.push_back(clock.now());
    return value * 2;
  }
};
}  // namespace

TEST_CASE("launch_gate feeds readings, waits as told and launches", "[rate][limiter]") {
  manual_clock clock;
  local_rate_words w;
  limiter_params p;
  p.prior_kernel_ns = 1 * k_ms;
  limiter l(w.words, force(20), p, clock);
  l.observe(1, 1 * k_ms, 0);  // the cost is known: 1 ms
  scripted_utilization source;
  source.add_constant(0, 50 * k_ms, 10 * k_ms, 0.2);
  recording_sink sink{clock, 0, {}};
  launch_gate<limiter, scripted_utilization, recording_sink> gate(l, source, sink);
  for (int i = 0; i < 10; ++i) CHECK(gate.launch(1, i) == 2 * i);
  // Ten 1 ms launches at 20%: the last may start after 9 x 5 ms of waits (the first waits 5).
  REQUIRE(sink.launched_at.size() == 10);
  CHECK(sink.launched_at.back() == 50 * k_ms);
  CHECK(sink.waited == 50 * k_ms);
  CHECK(source.consumed() == 4);  // every reading that ended by the last call was fed
}

TEST_CASE("launch_gate retries a suspended launch until the high-priority peer leaves",
          "[rate][limiter]") {
  manual_clock clock;
  local_rate_words w;
  limiter_params p;
  limiter l(w.words, {50, utilization_policy::force, task_priority::low}, p, clock);
  l.set_others_active(true, true);
  scripted_utilization source;
  struct sink_t {
    manual_clock clock;
    limiter* l;
    int polls = 0;
    void wait(std::int64_t ns) {
      clock.advance(ns);
      if (++polls == 3) l->set_others_active(false, false);  // the peer leaves
    }
    bool launch() { return true; }
  } sink{clock, &l};
  launch_gate<limiter, scripted_utilization, sink_t> gate(l, source, sink);
  CHECK(gate.launch(1));
  CHECK(sink.polls >= 3);
}

TEST_CASE("a slow launch call (a lazy module load) is taken off its timing", "[rate][limiter]") {
  local_rate_words w;
  limiter l(w.words, force(50));
  // The first launch of 1 ms kernel spent 5 ms loading its module between its events.
  l.observe(1, 6 * k_ms, 5 * k_ms, 10 * k_ms);
  CHECK(l.estimate_ns(1) == 1 * k_ms);
  // A call no slower than a submission leaves the timing as it is.
  l.observe(2, 6 * k_ms, 4 * k_us, 10 * k_ms);
  CHECK(l.estimate_ns(2) == 6 * k_ms);
  // A timing no longer than the call: the stream was busy, the load overlapped it.
  l.observe(3, 2 * k_ms, 5 * k_ms, 10 * k_ms);
  CHECK(l.estimate_ns(3) == 2 * k_ms);
}

TEST_CASE("one window of a long kernel does not set the correction", "[rate][limiter]") {
  local_rate_words w;
  limiter_params p;
  p.burst_ns = 100'000 * k_ms;  // never short of tokens: the charges land when admitted
  limiter l(w.words, force(90), p);
  l.observe(1, 100 * k_ms, 0);  // 100 ms kernels
  constexpr std::int64_t k_window = 200 * k_ms;
  std::int64_t now = 200'000 * k_ms;
  for (int i = 0; i < 2; ++i) {  // the warm-up windows
    l.admit(1, now);
    now += k_window;
    l.utilization_sample(now - k_window, now, 100 * k_ms);
  }
  // A window holds a kernel's busy time and none of its charge (filed at its start, in the
  // window before); the next holds a charge and no busy time. Averaged from the first window
  // alone, the correction read 9.5.
  l.admit(1, now - 100 * k_ms);
  now += k_window;
  l.utilization_sample(now - k_window, now, 100 * k_ms);
  l.admit(1, now);
  now += k_window;
  l.utilization_sample(now - k_window, now, 0);
  INFO("correction " << l.correction());
  CHECK(l.correction() > 0.4);
  CHECK(l.correction() < 2.5);
}
