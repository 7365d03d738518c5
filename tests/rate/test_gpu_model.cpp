// The acceptance of the SM limiter, in the GPU model (virtual time, fixed seeds).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "gpuslice/rate/gpu_model.hpp"

using gpuslice::task_priority;
using gpuslice::utilization_policy;
using gpuslice::rate::controller_kind;
using gpuslice::rate::gpu_spec;
using gpuslice::rate::kernel_spec;
using gpuslice::rate::model_options;
using gpuslice::rate::model_result;
using gpuslice::rate::run_gpu_model;
using gpuslice::rate::tenant_spec;

namespace {
constexpr std::int64_t k_us = 1'000, k_ms = 1'000'000, k_s = 1'000'000'000;

tenant_spec saturating(double pct, std::vector<kernel_spec> kernels) {
  tenant_spec t;
  t.share_percent = pct;
  t.kernels = std::move(kernels);
  return t;
}

model_result run(const std::vector<tenant_spec>& tenants, std::int64_t seconds,
                 controller_kind c = controller_kind::gpuslice, gpu_spec gpu = {},
                 std::uint64_t seed = model_options{}.seed) {
  model_options o;
  o.duration_ns = seconds * k_s;
  o.controller = c;
  o.seed = seed;
  auto r = run_gpu_model(gpu, tenants, o);
  REQUIRE(r.ok());
  return std::move(r).value();
}

/// The GPU as the shim sees it: kernels timed by events, NVML sampled every \p nvml_ns.
gpu_spec event_timed(std::int64_t nvml_ns) {
  gpu_spec gpu;
  gpu.event_timing = true;
  gpu.nvml_period_ns = nvml_ns;
  return gpu;
}

/// A tenant of 50 ms kernels, and one mixing 1 ms and 50 ms kernels; both time one launch in
/// 32, as the shim does.
tenant_spec long_kernels(double pct) {
  auto t = saturating(pct, {{50 * k_ms, 0.0, 1.0, 0}});
  t.observe_every = 32;
  return t;
}
tenant_spec mixed_long_kernels(double pct) {
  auto t = saturating(pct, {{1 * k_ms, 0.0, 3.0, 0}, {50 * k_ms, 0.0, 1.0, 0}});
  t.observe_every = 32;
  return t;
}

/// Smallest and largest share (percent) of tenant t over windows of \p window that start at
/// or after \p from.
std::pair<double, double> window_range(const model_result& r, std::size_t t, std::int64_t window,
                                       std::int64_t from) {
  const auto w = r.window_shares(t, window);
  const auto skip = static_cast<std::size_t>(from / r.step_ns);
  REQUIRE(w.size() > skip);
  const auto [lo, hi] = std::minmax_element(w.begin() + static_cast<std::ptrdiff_t>(skip), w.end());
  return {*lo * 100, *hi * 100};
}
}  // namespace

TEST_CASE("one saturating tenant holds its target with tiny, medium and long kernels",
          "[rate][model]") {
  const double target = GENERATE(10.0, 30.0, 50.0, 70.0, 90.0);
  const std::int64_t kernel = GENERATE(20 * k_us, 1 * k_ms, 50 * k_ms);
  const std::int64_t sms = GENERATE(16, 132);  // one set of gains for a slice and an H200
  gpu_spec gpu;
  gpu.sm_count = sms;
  const auto r =
      run({saturating(target, {{kernel, 0.0, 1.0, 0}})}, 4, controller_kind::gpuslice, gpu);
  const auto [lo, hi] = window_range(r, 0, k_s, 500 * k_ms);
  INFO("target " << target << "% kernel " << kernel << " ns, " << sms << " SMs: " << lo << ".."
                 << hi);
  CHECK(lo >= target - 2);
  CHECK(hi <= target + 2);
}

TEST_CASE("jittered kernels, sampled timing: the target still holds", "[rate][model]") {
  auto t = saturating(30, {{300 * k_us, 0.3, 3.0, 0}, {8 * k_ms, 0.3, 1.0, 0}});
  t.observe_every = 8;  // the shim times one launch in eight
  t.streams_in_flight = 4;
  const auto r = run({t}, 4);
  const auto [lo, hi] = window_range(r, 0, k_s, 500 * k_ms);
  INFO(lo << ".." << hi);
  // The untimed launches' jitter is seen only through the utilization signal, a window late.
  CHECK(lo >= 27);
  CHECK(hi <= 33);
}

TEST_CASE("two saturating tenants at 30 and 70", "[rate][model]") {
  const auto a = saturating(30, {{1 * k_ms, 0.3, 1.0, 0}});
  const auto b = saturating(70, {{200 * k_us, 0.5, 3.0, 0}, {5 * k_ms, 0.5, 1.0, 0}});
  const auto r = run({a, b}, 5);
  const auto [alo, ahi] = window_range(r, 0, k_s, 500 * k_ms);
  const auto [blo, bhi] = window_range(r, 1, k_s, 500 * k_ms);
  INFO("30: " << alo << ".." << ahi << "  70: " << blo << ".." << bhi);
  CHECK(alo >= 28);
  CHECK(ahi <= 32);
  CHECK(blo >= 68);
  CHECK(bhi <= 72);
}

TEST_CASE("three tenants at 20, 30 and 50, one bursty", "[rate][model]") {
  auto x = saturating(20, {{200 * k_us, 0.2, 1.0, 0}});
  x.burst_kernels = 100;  // 100 launches back to back, then 20 ms of host work
  x.burst_gap_ns = 20 * k_ms;
  const auto y = saturating(30, {{1 * k_ms, 0.5, 1.0, 0}});
  const auto z = saturating(50, {{3 * k_ms, 0.5, 1.0, 0}, {100 * k_us, 0.5, 4.0, 0}});
  const auto r = run({x, y, z}, 5);
  const double targets[] = {20, 30, 50};
  for (std::size_t i = 0; i < 3; ++i) {
    const auto [lo, hi] = window_range(r, i, k_s, 500 * k_ms);
    INFO("tenant " << i << ": " << lo << ".." << hi);
    CHECK(lo >= targets[i] - 3);
    CHECK(hi <= targets[i] + 3);
  }
}

TEST_CASE("5 us kernels timed by events are not charged double", "[rate][model]") {
  // A host-bound launcher of tiny kernels: each timed launch's start event completes on an idle
  // stream 3 us before its kernel is even submitted, so events read 8 us for a 5 us kernel.
  // Charged at face value the tenant gets 30 * 5 / 8 = 19% (19.5 in this model with the
  // correction switched off); the utilization correction must bring it back to its cap.
  gpu_spec gpu;
  gpu.event_timing = true;
  gpu.event_lead_ns = 3 * k_us;
  gpu.launch_overhead_ns = 3 * k_us;
  auto t = saturating(30, {{5 * k_us, 0.0, 1.0, 0}});
  t.observe_every = 32;
  t.streams_in_flight = 1;  // the launcher waits for each kernel: its stream is idle at launch
  const auto r = run({t}, 4, controller_kind::gpuslice, gpu);
  const auto [lo, hi] = window_range(r, 0, k_s, 1 * k_s);
  INFO("30% with 5 us kernels: " << lo << ".." << hi);
  CHECK(lo >= 27);
  CHECK(hi <= 33);
}

TEST_CASE("50 ms kernels: co-located tenants at 30 and 70 hold from 3 s on, NVML once a second",
          "[rate][model]") {
  // Both time-sliced on one GPU, timed by events as the shim does (one launch in 32, and each
  // unlearned one), NVML sampled once a second (and six times). Time-sliced behind the other's
  // long kernels, each banks refill it must keep for when the other waits: the bucket holds
  // two of its longest kernels while another tenant is active.
  const std::uint64_t seed = GENERATE(1, 2, 3, 4);
  const std::int64_t nvml = GENERATE(as<std::int64_t>{}, 1'000'000'000, 166'666'667);
  const auto r = run({long_kernels(30), mixed_long_kernels(70)}, 9, controller_kind::gpuslice,
                     event_timed(nvml), seed);
  const auto [alo, ahi] = window_range(r, 0, k_s, 3 * k_s);
  const auto [blo, bhi] = window_range(r, 1, k_s, 3 * k_s);
  INFO("seed " << seed << ", NVML every " << nvml / k_ms << " ms: 30: " << alo << ".." << ahi
               << "  70: " << blo << ".." << bhi);
  CHECK(alo >= 27);
  CHECK(ahi <= 33);
  CHECK(blo >= 67);
  CHECK(bhi <= 73);
  // Work-conserving: the two caps add up to the whole GPU, and it is kept busy.
  CHECK(r.share_between(0, 3 * k_s, 9 * k_s) + r.share_between(1, 3 * k_s, 9 * k_s) >= 0.97);
}

TEST_CASE("50 ms kernels: a capped 30% tenant beside an uncapped one holds from 3 s on",
          "[rate][model]") {
  // Its events read its kernels at twice their length (the uncapped tenant's slices between);
  // the utilization correction halves them by the second NVML sample, and the integral term
  // must not then pay back the first seconds' shortfall on top of it.
  const std::uint64_t seed = GENERATE(1, 2, 3, 4);
  const auto r = run({long_kernels(30), mixed_long_kernels(0)}, 9, controller_kind::gpuslice,
                     event_timed(k_s), seed);
  const auto [lo, hi] = window_range(r, 0, k_s, 3 * k_s);
  INFO("seed " << seed << ": " << lo << ".." << hi);
  CHECK(lo >= 27);
  CHECK(hi <= 33);
}

TEST_CASE("50 ms kernels in company: what a tenant saved while idle is not spent over its cap",
          "[rate][model]") {
  // The bucket holds two long kernels while another tenant is active; a tenant back from an
  // idle spell keeps only burst_ns of it (unclipped: 40% in its worst 1 s window).
  const std::uint64_t seed = GENERATE(1, 2, 3, 4);
  auto a = long_kernels(30);
  a.burst_kernels = 8;  // 8 launches, then 1.5 s idle
  a.burst_gap_ns = 1500 * k_ms;
  const auto r =
      run({a, mixed_long_kernels(70)}, 12, controller_kind::gpuslice, event_timed(k_s), seed);
  const auto [lo, hi] = window_range(r, 0, k_s, 3 * k_s);
  INFO("seed " << seed << ": " << lo << ".." << hi);
  CHECK(hi <= 33);
}

TEST_CASE("default policy: alone it takes the GPU, with company it is back at its cap",
          "[rate][model]") {
  auto a = saturating(30, {{1 * k_ms, 0.3, 1.0, 0}});
  a.policy = utilization_policy::default_policy;
  auto b = saturating(50, {{2 * k_ms, 0.3, 1.0, 0}});
  b.policy = utilization_policy::default_policy;
  b.start_ns = 2 * k_s;
  const auto r = run({a, b}, 5);
  CHECK(r.share_between(0, 0, 2 * k_s) >= 0.95);
  // Capped within 0.1 s of the second tenant's arrival...
  CHECK(r.share_between(0, 2100 * k_ms, 2500 * k_ms) == Approx(0.30).margin(0.03));
  // ...and from 0.5 s after it, every 1 s window is at the cap.
  const auto [lo, hi] = window_range(r, 0, k_s, 2 * k_s + 500 * k_ms);
  INFO("after the second tenant: " << lo << ".." << hi);
  CHECK(lo >= 28);
  CHECK(hi <= 32);
}

TEST_CASE("a high-priority tenant is never throttled by a low one", "[rate][model]") {
  auto high = saturating(50, {{1 * k_ms, 0.3, 1.0, 0}});
  high.policy = utilization_policy::default_policy;
  high.priority = task_priority::high;
  high.stop_ns = 3 * k_s;
  auto low = saturating(50, {{1 * k_ms, 0.3, 1.0, 0}});
  low.policy = utilization_policy::default_policy;
  const auto r = run({high, low}, 5);
  CHECK(r.share_between(0, 500 * k_ms, 3 * k_s) >= 0.95);   // the low one yields
  CHECK(r.share_between(1, 3500 * k_ms, 5 * k_s) >= 0.95);  // and resumes, alone
}

TEST_CASE("the reference controller, modelled faithfully, misses the same targets",
          "[rate][model][reference]") {
  // A 50% cap with 1 ms kernels on a 132-SM GPU: the reference barely throttles.
  const auto t = saturating(50, {{1 * k_ms, 0.0, 1.0, 0}});
  const auto ref = run({t}, 4, controller_kind::reference);
  const auto ours = run({t}, 4, controller_kind::gpuslice);
  const double ref_share = ref.share_between(0, k_s, 4 * k_s);
  const double our_share = ours.share_between(0, k_s, 4 * k_s);
  INFO("reference " << ref_share * 100 << "%, gpuslice " << our_share * 100 << "%");
  CHECK(ref_share > 0.9);
  CHECK(our_share == Approx(0.5).margin(0.01));
  // It cannot see a long kernel: 50 ms kernels under a 10% cap run unthrottled.
  const auto longk = saturating(10, {{50 * k_ms, 0.0, 1.0, 0}});
  CHECK(run({longk}, 3, controller_kind::reference).share_between(0, k_s, 3 * k_s) > 0.9);
}

TEST_CASE("the model conserves work and is deterministic", "[rate][model]") {
  auto t = saturating(0, {{1 * k_ms, 0.5, 1.0, 0}});
  SECTION("a free tenant keeps the GPU busy") {
    const auto r = run({t}, 1, controller_kind::none);
    CHECK(r.share_between(0, 0, k_s) > 0.99);
  }
  SECTION("two free tenants share round-robin") {
    const auto r = run({t, t}, 2, controller_kind::none);
    CHECK(r.share_between(0, 0, 2 * k_s) + r.share_between(1, 0, 2 * k_s) > 0.99);
    CHECK(r.share_between(0, 0, 2 * k_s) == Approx(0.5).margin(0.02));
  }
  SECTION("same seed, same run; another seed, another run") {
    t.share_percent = 40;
    model_options o;
    o.duration_ns = k_s;
    const auto a = run_gpu_model({}, {t}, o);
    const auto b = run_gpu_model({}, {t}, o);
    o.seed = 2;
    const auto c = run_gpu_model({}, {t}, o);
    REQUIRE((a.ok() && b.ok() && c.ok()));
    CHECK(a->busy_ns == b->busy_ns);
    CHECK(a->launches != c->launches);
  }
}

TEST_CASE("bad model input is one line naming the field", "[rate][model]") {
  model_options o;
  tenant_spec t;
  auto msg = [&](const gpu_spec& g, const std::vector<tenant_spec>& ts) {
    auto r = run_gpu_model(g, ts, o);
    REQUIRE_FALSE(r.ok());
    CHECK(r.message().find('\n') == std::string::npos);
    return r.message();
  };
  gpu_spec bad_gpu;
  bad_gpu.sm_count = 0;
  CHECK(msg(bad_gpu, {t}) == "sm_count=0: expected >= 1");
  CHECK(msg({}, {}) == "tenants: expected at least one tenant");
  t.name = "web";
  t.share_percent = 120;
  CHECK(msg({}, {t}) == "tenant 0 (web) share_percent=120.000000: expected 0..100");
  t.share_percent = 30;
  t.kernels = {{0, 0.0, 1.0, 0}};
  CHECK(msg({}, {t}).find("tenant 0 (web) kernel: expected duration_ns >= 1") == 0);
  t.kernels = {{1000, 0.0, 0.0, 0}};
  CHECK(msg({}, {t}) == "tenant 0 (web) kernel weights: expected a positive sum");
  t.kernels = {{1000, 0.0, 1.0, 0}};
  t.streams_in_flight = 0;
  CHECK(msg({}, {t}) == "tenant 0 (web) streams_in_flight=0: expected >= 1");
  t.streams_in_flight = 1;
  o.sample_step_ns = 0;
  CHECK(msg({}, {t}).find("expected 0 < sample_step_ns <= duration_ns") != std::string::npos);
}

namespace {
/// The launch_share check of tests/gpu/run.sh as the hardware runs it, varied per \p seed the
/// way two runs on one idle GPU differ: the phase of NVML's sampling against the program's
/// start, the time the first launch spends loading its module (inside the timed events), launch
/// and sleep jitter, and kernel durations within 2%. The host launches back to back and
/// synchronises every 16 launches; one launch in 32 (and each unlearned one) is timed by
/// events; the shim's watcher polls NVML every 200 ms. \p company: as run.sh runs it, with no
/// node region (the shim cannot tell it is alone); otherwise alone in a node region.
struct hardware_run {
  gpu_spec gpu;
  tenant_spec tenant;
  std::int64_t window_from_ns = 0;  ///< the measurement window's start (warm-up plus a phase)
};
constexpr std::int64_t k_hw_window_ns = 4 * k_s;  // launch_share's SHARE_SECONDS
hardware_run hardware_like(double cap, std::int64_t kernel_ns, std::uint64_t seed, bool company) {
  gpuslice::rate::detail::model_rng rng(seed * 0x5851F42D4C957F2DULL + 1);
  gpu_spec gpu = gpuslice::rate::hardware_like_gpu(rng);
  tenant_spec t = saturating(cap, {{kernel_ns, 0.02, 1.0, 0}});
  t.observe_every = 32;
  t.streams_in_flight = 16;
  t.sync_every = 16;
  t.assume_company = company;
  // One second of warm-up, then the window starts at the next synchronisation: anywhere in
  // the following 16 kernels' time (the model records every 10 ms).
  const double batch_s = 16.0 * static_cast<double>(kernel_ns) / 1e9 * 100.0 / cap;
  const auto phase = static_cast<std::int64_t>(rng.uniform() * std::min(batch_s, 1.0) * 100) * 10;
  return hardware_run{gpu, std::move(t), k_s + phase * k_ms};
}
}  // namespace

TEST_CASE("every run lands within 3 points: caps 10-70, kernels 1-100 ms, hardware variation",
          "[rate][model][stability]") {
  // At a cap of 30, 50 ms kernels read 33.0, 29.5, 33.0 and 26.2 over four runs on an H200.
  // Before the fixes this model read 27.6..31.0 for that case, 22.6..31.0 with 100 ms kernels
  // and up to 35.9 with 1 ms kernels (the first timing held the module's load), worse with the
  // NVML window stamped at the read (gpu_spec::nvml_window_at_poll).
  const double cap = GENERATE(10.0, 30.0, 50.0, 70.0);
  const std::int64_t kernel = GENERATE(1 * k_ms, 10 * k_ms, 50 * k_ms, 100 * k_ms);
  const bool company = GENERATE(true, false);
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    const hardware_run h = hardware_like(cap, kernel, seed, company);
    const std::int64_t to = h.window_from_ns + k_hw_window_ns;
    const auto r = run({h.tenant}, to / k_s + 1, controller_kind::gpuslice, h.gpu, seed);
    const double share = 100 * r.share_between(0, h.window_from_ns, to);
    INFO("cap " << cap << "%, " << kernel / k_ms << " ms kernels, "
                << (company ? "no node region" : "alone in a node region") << ", seed " << seed
                << ": " << share << "% over " << h.window_from_ns / k_ms << ".." << to / k_ms
                << " ms");
    CHECK(share >= cap - 3);
    CHECK(share <= cap + 3);
  }
}

TEST_CASE("one container's processes of 50 ms and 1 ms kernels keep one capacity and the share",
          "[rate][model][container]") {
  // Two processes of one container at a 30% cap draw from one bucket (the ledger's rate words),
  // beside a 70% tenant. Each claims the capacity its own kernels need (two of its longest in
  // company): the container's is the largest claimed, so the 1 ms process no longer sets it
  // back to 30 ms between the 50 ms process's launches, which lost what that one banked.
  const std::uint64_t seed = GENERATE(1, 2, 3, 4);
  auto a = long_kernels(30);
  a.container = 1;
  auto b = saturating(30, {{1 * k_ms, 0.2, 1.0, 0}});
  b.observe_every = 32;
  b.container = 1;
  const auto r = run({a, b, mixed_long_kernels(70)}, 9, controller_kind::gpuslice,
                     event_timed(166'666'667), seed);
  // Never back at the 1 ms process's 30 ms from 2 s on (a timing inflated by the other's time
  // slices may raise it at first: a lapsed claim comes down by a quarter per stale period),
  // and from 5 s on one capacity: two of the container's longest kernels, corrected.
  const auto range_from = [&](std::int64_t t) {
    const auto& c = r.capacity_ns[0];
    return std::minmax_element(c.begin() + static_cast<std::ptrdiff_t>(t / r.step_ns), c.end());
  };
  const auto [lo2, hi2] = range_from(2 * k_s);
  const auto [lo5, hi5] = range_from(5 * k_s);
  INFO("seed " << seed << ": capacity from 2 s " << *lo2 / k_ms << ".." << *hi2 / k_ms
               << " ms, from 5 s " << *lo5 / k_ms << ".." << *hi5 / k_ms << " ms");
  CHECK(*lo2 >= 2 * 45 * k_ms);
  CHECK(*hi5 <= *lo5 + *lo5 / 20);  // within 5%: the correction moves it a little
  CHECK(*hi5 <= 2 * 60 * k_ms);
  CHECK(r.capacity_ns[1] == r.capacity_ns[0]);  // one bucket
  // The share over 3..9 s: the container's two processes together, and the other tenant.
  const double container =
      100 * (r.share_between(0, 3 * k_s, 9 * k_s) + r.share_between(1, 3 * k_s, 9 * k_s));
  const double other = 100 * r.share_between(2, 3 * k_s, 9 * k_s);
  INFO("container " << container << "%, other " << other << "%");
  CHECK(container == Approx(30).margin(1.5));
  CHECK(other == Approx(70).margin(1.5));
}
