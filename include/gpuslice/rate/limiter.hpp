#pragma once
/// \file
/// The SM limiter: admission of kernel launches against a shared token bucket of GPU time,
/// with the cost of each kernel learned from completion timings and corrected slowly from a
/// utilization signal (NVML in the shim).
///
/// The launch path, per device, for the shim (or any caller):
///   auto a = limiter.admit(function_id, now);   // a few atomic operations
///   if (!a.admitted) { sleep(a.wait_ns); retry; }  // suspended, or waiting for a first timing
///   sleep(a.wait_ns); launch();                  // wait_ns == 0 on the fast path
///   ... later, for a sample of launches and every one flagged a.learn:
///       limiter.observe(function_id, measured_ns, now);
///   ... periodically: limiter.utilization_sample(start_ns, end_ns, busy_ns);
///   ... when the node region changes: limiter.set_others_active(others, high_priority_others);
/// launch_gate below does the first three lines for blocking callers. Every entry point that
/// puts work on the GPU goes through admit: cuLaunchKernel(Ex), cuLaunchCooperativeKernel(...)
/// and cuGraphLaunch, whose function id is the graph exec handle (a graph is learned and
/// charged as one unit), so no launch kind bypasses the share.
///
/// Why this holds its target where a grid-size charge does not: tokens are GPU-ns, so the
/// refill (share x elapsed) and the charge (the kernel's learned time) are in one unit, and
/// the bucket's average rate is the share by construction. A long kernel is charged its length
/// from the first completion on; a waiting launch waits exactly its deficit. The controller's
/// gains are times and ratios, so the same settings hold on a 16-SM slice and a 132-SM GPU.
///
/// Learning, in three layers: (1) each function's cost is a moving average of its timed
/// completions, and a timed launch's difference from its charge is charged to the bucket;
/// (2) a correction factor, the ratio of busy time (utilization) to charged time averaged
/// over correction_horizon_ns, scales every charge (timings inflated by other contexts' time
/// slices are corrected here); (3) an integral term charges the bucket the accumulated gap
/// between utilization and charges, so the share holds over any window longer than the
/// utilization signal's lag; its gap is taken against the updated correction, so nothing is
/// paid back twice. While another tenant is active the bucket holds two of the tenant's
/// longest kernels (time-sliced, it banks refill it spends when the other waits); the bucket is
/// the container's, so its capacity is the largest its launching processes claim (one process
/// of long kernels and one of short ones do not set it in turn). Launches of
/// a function charged before its first observation are forgiven in the bucket (no hole opens in the
/// share while learning); so that they cannot be many long kernels queued at once, a capped tenant
/// has at most max_unlearned_in_flight of them admitted (flagged admission::learn, to be timed) and
/// holds the next until the first timing arrives. A caller that let launches through without
/// admit() (no cap) calls restart_feedback() when the cap returns, so the busy time of those
/// uncharged launches is not taken for a correction.
///
/// Policies: `force` is always capped; `default` is capped while another tenant is active on
/// the device (set_others_active) and uncapped alone, draining the bucket on the way back
/// so nothing saved while alone is spent over the cap; `disable` never caps. Priority: a
/// high-priority tenant counts only high-priority peers as company, so a low one never caps
/// it; a low-priority tenant is suspended while a high-priority one is active (HAMi's
/// behaviour), or capped at yield_share_percent when that is set.
///
/// Memory: about 100 KiB per limiter (the function table), one limiter per device and process.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <limits>
#include <mutex>
#include <string>
#include <utility>

#include "gpuslice/config.hpp"
#include "gpuslice/rate/token_bucket.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::rate {

/// The real clock: CLOCK_MONOTONIC in ns (system-wide, so all processes agree).
struct steady_clock_ns {
  /// Now, in ns since an unspecified epoch. Thread-safe.
  std::int64_t now() const noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

/// The controller's named parameters. Times in ns, the rest dimensionless, so one setting
/// serves any GPU size.
struct limiter_params {
  /// Bucket capacity: GPU time a tenant may save up while idle or while its launches queue
  /// behind other tenants' kernels (at most +3 pp on a 1 s window after an idle spell).
  std::int64_t burst_ns = 30'000'000;
  /// While another tenant is active, the capacity is at least this many of the tenant's longest
  /// kernel (its learned cost, corrected). Time-sliced behind the other's long kernels, a
  /// tenant's own run at half speed and it banks refill, which it spends when the other waits
  /// for its tokens; a bucket shorter than those spells loses it, and the GPU idles while both
  /// wait (a 70% tenant beside a 30% one with 50 ms kernels got 54%). The price: after an idle
  /// spell in company, a tenant may spend that much at once (two 50 ms kernels: +10 pp on a
  /// 1 s window).
  double burst_kernels = 2.0;
  /// A capped tenant that launched nothing for this many of its longest kernels was idle: on
  /// its next launch it keeps at most burst_ns of what it saved. Its launches can wait for
  /// in-flight kernels time-sliced with others' for a few kernels' length, never this long.
  double idle_kernels = 8.0;
  /// The bucket's capacity is the container's: the largest that one of its processes claims
  /// (each claims its own, as above, at every launch). A claim not renewed for this long, and
  /// for capacity_stale_refills of the time the claimed capacity takes to refill at the share,
  /// lapses (its process exited or stopped launching), and a smaller one takes over. A process
  /// launching its longest kernels back to back renews its claim at every launch: at most
  /// one per kernel/share, half the refill time of two kernels.
  std::int64_t capacity_stale_ns = 1'000'000'000;
  double capacity_stale_refills = 4.0;
  /// Waits shorter than this are not handed out; the debt carries to the next launch, so the
  /// average is kept and nobody sleeps for less than a scheduler quantum.
  std::int64_t min_wait_ns = 100'000;
  /// Cost charged for a function before any kernel of the process was observed.
  std::int64_t prior_kernel_ns = 100'000;
  /// Weight of one observation in a function's moving average.
  double estimate_weight = 0.125;
  /// A launch call that took longer than this on the host did more than submit its kernel
  /// (observe() with the call's time; a submission takes a few microseconds).
  std::int64_t slow_call_ns = 100'000;
  /// Time constant of the utilization correction (how slowly it moves).
  std::int64_t correction_horizon_ns = 250'000'000;
  /// The correction's time constant is at least this many of the longest kernel (corrected):
  /// a window's edges split a long kernel differently in charges (filed when it may start) and
  /// busy time (when it runs), so one window's ratio is off by up to a kernel.
  double horizon_kernels = 40.0;
  /// The correction is first taken once the samples averaged span this many of the longest
  /// kernel (corrected). A 100 ms kernel's window holds its busy time and (filed at its start,
  /// one window earlier) none of its charge: one such window read 21x, and the launch admitted
  /// then was charged 2.1 s.
  double correction_min_kernels = 4.0;
  /// Charge the bucket the difference between a timed launch's measured time and what it was
  /// charged (exact for timed launches; off when timings include other tenants' slices and
  /// the utilization correction alone should fix the scale).
  bool charge_observed_difference = true;
  /// Fraction of the accumulated gap between the utilization signal and the charges that is
  /// charged to (or refunded from) the bucket at each sample (integral gain, 0..1).
  double utilization_gain = 0.5;
  /// Bounds of the utilization correction factor.
  double min_correction = 1.0 / 64;
  double max_correction = 64.0;
  /// Resolution of the utilization signal as a fraction of its window (NVML reports whole
  /// percents): a sample within half of it of the charges agrees with them, so rounding
  /// never drifts the correction.
  double utilization_resolution = 0.01;
  /// A utilization sample is used only when the charges or the busy time in its window reach
  /// this fraction of the window (below it, quantisation noise dominates).
  double min_sample_fraction = 0.005;
  /// Launches of a function not yet observed that a capped tenant may have in flight; more
  /// wait, uncharged, for its first timing (each is flagged admission::learn, to be timed).
  /// Without it, kernels queued deep before the first one completes run at the prior's
  /// charge: 32 launches of a 50 ms kernel are 1.6 s of GPU charged 3.2 ms.
  std::int64_t max_unlearned_in_flight = 2;
  /// How long launches wait for a function's first timing before going ahead anyway (the
  /// caller may be unable to time any launch).
  std::int64_t learn_timeout_ns = 1'000'000'000;
  /// Wait handed to a launch that waits for its function's first timing before it asks again.
  std::int64_t learn_poll_ns = 1'000'000;
  /// Wait handed to a suspended (low-priority, yielding) tenant before it asks again.
  std::int64_t suspended_poll_ns = 10'000'000;
  /// Share of a low-priority tenant while a high-priority one is active: 0 suspends it
  /// (HAMi's behaviour); a small share avoids starving it.
  double yield_share_percent = 0.0;
};

/// What a tenant is entitled to on one device.
struct limiter_settings {
  /// Target share of GPU time in percent; 0 or >= 100 = no limit (the config's convention).
  double share_percent = 0.0;
  utilization_policy policy = utilization_policy::default_policy;
  task_priority priority = task_priority::low;
};

/// The answer to admit().
struct admission {
  /// How long to wait before launching (or, when not admitted, before asking again).
  std::int64_t wait_ns = 0;
  /// True: launch after wait_ns. False: suspended, nothing was charged, ask again.
  bool admitted = true;
  /// The launch's function has no learned cost yet: time this launch if you can.
  bool learn = false;
};

/// How the limiter treats launches right now.
enum class limiter_mode : std::uint8_t {
  uncapped,   ///< no limit, disabled policy, or alone under the default policy
  capped,     ///< charged against the shared bucket
  suspended,  ///< low priority while a high-priority tenant is active (yield share 0)
};

/// Renewals of a capacity claim per stale period (sm_limiter::admit; limiter_params).
inline constexpr std::int64_t k_capacity_renewals = 4;

/// Parts per million in one percent.
inline constexpr double k_ppm_per_percent = 10'000.0;

namespace detail {
/// Slots of the charge timeline (each k_charge_slot_ns long): charges are filed at the time
/// their kernel may start, so they line up with the utilization that kernel causes.
inline constexpr std::size_t k_charge_slots = 512;
inline constexpr std::int64_t k_charge_slot_ns = 4'000'000;
/// A long kernel's charge is spread over at most this many slots from its start.
inline constexpr std::int64_t k_charge_spread_slots = 16;
/// Size of the per-process table of function estimates (open addressing).
inline constexpr std::size_t k_function_slots = 4096;
/// How far back swept charge slots are kept to match utilization windows.
inline constexpr std::int64_t k_charge_history_ns = 4'000'000'000;
/// Key used for function id 0 (0 marks an empty table slot).
inline constexpr std::uint64_t k_zero_function_key = ~std::uint64_t{0};
/// Flags of the peer signal.
inline constexpr std::uint8_t k_others_active = 1;
inline constexpr std::uint8_t k_high_others_active = 2;

/// Fibonacci hashing of a function id into the table.
inline std::size_t function_slot(std::uint64_t key) noexcept {
  constexpr std::uint64_t k_golden = 0x9E3779B97F4A7C15ULL;
  return static_cast<std::size_t>((key * k_golden) >> 52) % k_function_slots;
}
}  // namespace detail

/// Per-device, per-process SM limiter over a shared token bucket.
/// Clock: a type with `std::int64_t now() const` (steady_clock_ns, testing::manual_clock).
/// Word: the 64-bit atomic word type of the shared bucket.
/// admit/observe/set_* are thread-safe and lock-free; utilization_sample takes a mutex (slow
/// path, a watcher thread calls it a few times a second).
template <class Clock = steady_clock_ns, class Word = std::atomic<std::uint64_t>>
class sm_limiter {
 public:
  /// Binds to a bucket over \p words (k_rate_words of them: the ledger's rate_words(device)
  /// or local_rate_words) and initialises or joins it. Check ok() before use: a refused
  /// bucket (foreign or other-version words) leaves every launch suspended, failing closed.
  sm_limiter(Word* words, limiter_settings settings, limiter_params params = {},
             Clock clock = Clock{})
      : bucket_(words), params_(params), clock_(std::move(clock)) {
    set_settings(settings);
    auto r = bucket_.attach(std::max<std::int64_t>(share_ppm(), 1), params_.burst_ns, clock_.now());
    if (!r) error_ = r.message();
  }
  sm_limiter(const sm_limiter&) = delete;
  sm_limiter& operator=(const sm_limiter&) = delete;

  /// True when the shared words were accepted. Thread-safe.
  bool ok() const noexcept { return error_.empty(); }
  /// Why the shared words were refused (empty when ok()).
  const std::string& error_message() const noexcept { return error_; }

  /// Changes the share, policy or priority. Thread-safe.
  void set_settings(limiter_settings s) noexcept {
    const double pct = s.share_percent;
    const bool limited = pct > 0.0 && pct < 100.0;
    share_ppm_ = limited
                     ? std::clamp<std::int64_t>(
                           static_cast<std::int64_t>(pct * k_ppm_per_percent + 0.5), 1, k_ppm - 1)
                     : k_ppm;
    yield_ppm_ = std::clamp<std::int64_t>(
        static_cast<std::int64_t>(params_.yield_share_percent * k_ppm_per_percent + 0.5), 0, k_ppm);
    policy_.store(static_cast<std::uint8_t>(s.policy), std::memory_order_relaxed);
    priority_.store(static_cast<std::uint8_t>(s.priority), std::memory_order_relaxed);
    if (bucket_.ready()) bucket_.set_share_ppm(capped_ppm());
  }

  /// The peer signal: \p others (another tenant is active on the device) and
  /// \p high_priority_others (another high-priority tenant is). Thread-safe.
  void set_others_active(bool others, bool high_priority_others = false) noexcept {
    peers_.store(
        static_cast<std::uint8_t>((others ? detail::k_others_active : 0) |
                                  (high_priority_others ? detail::k_high_others_active : 0)),
        std::memory_order_relaxed);
  }

  /// The mode launches get now. Thread-safe.
  limiter_mode mode() const noexcept {
    if (!ok()) return limiter_mode::suspended;
    const auto policy = static_cast<utilization_policy>(policy_.load(std::memory_order_relaxed));
    const auto priority = static_cast<task_priority>(priority_.load(std::memory_order_relaxed));
    const std::uint8_t peers = peers_.load(std::memory_order_relaxed);
    if (policy == utilization_policy::disable) return limiter_mode::uncapped;
    if (priority == task_priority::low && (peers & detail::k_high_others_active) != 0) {
      return yield_ppm() > 0 ? limiter_mode::capped : limiter_mode::suspended;
    }
    if (share_ppm() >= k_ppm) return limiter_mode::uncapped;
    if (policy == utilization_policy::force) return limiter_mode::capped;
    // default: capped while someone else is active; a high-priority tenant counts only its
    // peers of high priority, so a low-priority tenant never throttles it.
    const std::uint8_t mask =
        priority == task_priority::high ? detail::k_high_others_active : detail::k_others_active;
    return (peers & mask) != 0 ? limiter_mode::capped : limiter_mode::uncapped;
  }

  /// Asks to launch a kernel of \p function_id at \p now: charges its learned cost and says how
  /// long to wait first. Thread-safe; lock-free; a few atomic operations on the fast path.
  admission admit(std::uint64_t function_id, std::int64_t now) noexcept {
    const limiter_mode m = mode();
    if (m == limiter_mode::suspended) {
      note_mode(m, now);
      return {params_.suspended_poll_ns, false};
    }
    auto* e = entry(function_id);
    const bool learn = e != nullptr && e->estimate_ns.load(std::memory_order_relaxed) <= 0;
    if (learn && m == limiter_mode::capped &&
        e->unlearned.load(std::memory_order_relaxed) >= params_.max_unlearned_in_flight) {
      const std::int64_t since = e->unlearned_since_ns.load(std::memory_order_relaxed);
      if (since != 0 && now - since < params_.learn_timeout_ns) {
        note_mode(m, now);
        return {params_.learn_poll_ns, false, true};  // wait for its first timing
      }
    }
    const std::int64_t raw = charge_estimate(e, now);
    if (m == limiter_mode::uncapped) {
      note_mode(m, now);
      file_charge(raw, now, now);
      return {0, true, learn};
    }
    note_mode(m, now);
    const std::int64_t ppm = capped_ppm();
    if (bucket_.share_ppm() != ppm) bucket_.set_share_ppm(ppm);  // priority peers changed
    // The capacity is the container's: the largest its launching processes claim.
    const std::int64_t mine = capacity();
    const double refill_ns =
        static_cast<double>(mine) * static_cast<double>(k_ppm) / static_cast<double>(ppm);
    const auto stale =
        static_cast<std::int64_t>(std::max(static_cast<double>(params_.capacity_stale_ns),
                                           params_.capacity_stale_refills * refill_ns));
    const std::int64_t burst =
        bucket_.offer_burst_ns(mine, now, stale, stale / k_capacity_renewals);
    // Back from an idle spell (no launch for idle_kernels of the longest kernel: longer than
    // its launches wait behind others'), it keeps no more than burst_ns of what it saved.
    const std::int64_t last = last_admit_ns_.exchange(now, std::memory_order_relaxed);
    if (burst > params_.burst_ns &&
        static_cast<double>(now - last) >
            params_.idle_kernels * static_cast<double>(burst) / params_.burst_kernels) {
      bucket_.clip(params_.burst_ns, now);
    }
    std::int64_t wait = bucket_.consume(scaled(raw), now);
    file_charge(raw, now + wait, now);
    if (wait < params_.min_wait_ns) wait = 0;  // the debt stays in the bucket
    return {wait, true, learn};
  }
  /// admit() at the clock's now.
  admission admit(std::uint64_t function_id) noexcept { return admit(function_id, clock_.now()); }

  /// Reports that a kernel of \p function_id took \p measured_ns on the GPU (from events or
  /// host callbacks, on a sample of launches). Updates the function's estimate and charges
  /// the difference from what it was charged; the first observation of a function is not
  /// charged back, so learning never opens a hole in the share. Thread-safe; lock-free
  /// (concurrent observations of one function may lose one of the two updates).
  void observe(std::uint64_t function_id, std::int64_t measured_ns, std::int64_t now) noexcept {
    if (measured_ns < 0) return;
    auto* e = entry(function_id);
    const std::int64_t old = e != nullptr ? e->estimate_ns.load(std::memory_order_relaxed) : 0;
    std::int64_t next = measured_ns;
    if (old > 0) {
      next = old + static_cast<std::int64_t>(params_.estimate_weight *
                                             static_cast<double>(measured_ns - old));
      next = std::max<std::int64_t>(next, 1);
    }
    if (e != nullptr) e->estimate_ns.store(next, std::memory_order_relaxed);
    if (next > longest_ns_.load(std::memory_order_relaxed)) {
      longest_ns_.store(next, std::memory_order_relaxed);
    }
    // The cost charged to functions not in the table follows all observations.
    const std::int64_t typical_before = typical_ns_.load(std::memory_order_relaxed);
    typical_ns_.store(typical_before + static_cast<std::int64_t>(
                                           params_.estimate_weight *
                                           static_cast<double>(measured_ns - typical_before)),
                      std::memory_order_relaxed);
    // Launches charged the prior before the function's first observation are forgiven (the
    // bucket is not charged back, so learning never opens a hole in the share); the charge
    // timeline still records them, as the utilization they caused is real.
    // The first observation settles every launch charged the prior, however many there were.
    std::int64_t unlearned = 0;
    if (e != nullptr && old <= 0) {
      unlearned = e->unlearned.exchange(0, std::memory_order_relaxed);
      e->unlearned_since_ns.store(0, std::memory_order_relaxed);
    }
    const std::int64_t charged = old > 0 ? old : typical_before;
    const std::int64_t delta = measured_ns - charged;
    file_charge(delta * std::max<std::int64_t>(unlearned, 1), now, now, false);
    if (old <= 0 || !params_.charge_observed_difference) return;
    if (last_mode_.load(std::memory_order_relaxed) == limiter_mode::capped) {
      bucket_.adjust(scaled(delta), now);
    }
  }
  /// observe() of a launch timed by events recorded before and after its launch call, which
  /// took \p call_ns on the host. A call slower than slow_call_ns did more than submit: the
  /// first launch of a function loads its module inside the call (lazy loading, CUDA's
  /// default), and on an idle stream the events hold that load (a 1 ms kernel whose load took
  /// 5 ms read 6 ms; charged that while the average moved, with the utilization correction
  /// lagging the move, its tenant overshot a 30% cap by up to 4 pp in the GPU model). Such a call's
  /// time is taken off a timing longer than it. A timing no longer than the call is kept: the
  /// stream was busy until after the call (an idle one reads the call plus the kernel), so the
  /// start event completed when the kernel could start. Thread-safe.
  void observe(std::uint64_t function_id, std::int64_t measured_ns, std::int64_t call_ns,
               std::int64_t now) noexcept {
    if (call_ns > params_.slow_call_ns && measured_ns > call_ns) measured_ns -= call_ns;
    observe(function_id, measured_ns, now);
  }
  /// observe() at the clock's now.
  void observe(std::uint64_t function_id, std::int64_t measured_ns) noexcept {
    observe(function_id, measured_ns, clock_.now());
  }

  /// Feeds one utilization reading: this process kept the GPU busy \p busy_ns during
  /// [\p start_ns, \p end_ns) (NVML's per-process SM utilization times its sample period).
  /// The ratio of busy time to charged time, averaged over correction_horizon_ns, corrects
  /// every charge. Thread-safe (takes a mutex); call it from one watcher thread.
  void utilization_sample(std::int64_t start_ns, std::int64_t end_ns, std::int64_t busy_ns) {
    if (end_ns <= start_ns || busy_ns < 0) return;
    std::lock_guard<std::mutex> lock(feedback_mutex_);
    sweep_charges(end_ns);
    if (start_ns < feedback_from_ns_) return;  // launches then were not charged
    std::int64_t charged = 0;
    for (const auto& [slot, raw] : history_) {
      const std::int64_t slot_end = (slot + 1) * detail::k_charge_slot_ns;
      if (slot_end > start_ns && slot_end <= end_ns) charged += raw;
    }
    if (!history_.empty() && history_.front().first * detail::k_charge_slot_ns > start_ns) {
      return;  // the window reaches back before the charges we hold
    }
    const double window = static_cast<double>(end_ns - start_ns);
    const double floor = params_.min_sample_fraction * window;
    if (static_cast<double>(charged) < floor && static_cast<double>(busy_ns) < floor) return;
    if (skipped_ns_ < k_warmup_ns) {
      skipped_ns_ += end_ns - start_ns;  // these windows hold launches charged at the prior
      return;
    }
    double busy = static_cast<double>(busy_ns);
    const double tolerance = 0.5 * params_.utilization_resolution * window;
    if (std::abs(busy - static_cast<double>(charged)) <= tolerance) {
      busy = static_cast<double>(charged);
    }
    // The correction: busy time over charged time, averaged over the horizon (at least
    // horizon_kernels of the longest kernel: see the parameter).
    const double longest_scaled = static_cast<double>(longest_ns_.load(std::memory_order_relaxed)) *
                                  correction_.load(std::memory_order_relaxed);
    const double horizon = std::max(static_cast<double>(params_.correction_horizon_ns),
                                    params_.horizon_kernels * longest_scaled);
    // Until the samples span a horizon the average is their plain mean (each window weighs its
    // length), then an exponential one: one window of a long kernel holds its busy time with
    // none of its charge (or the reverse), and an average started from it alone read 8x.
    averaged_ns_ = std::min(averaged_ns_ + window, horizon);
    const double weight = std::min(1.0, window / averaged_ns_);
    busy_avg_ += weight * (busy - busy_avg_);
    charged_avg_ +=
        weight * (static_cast<double>(std::max<std::int64_t>(charged, 0)) - charged_avg_);
    // The ratio is taken once the samples span enough kernels to agree (see
    // correction_min_kernels); until then the timings stand and the integral term below acts.
    const double min_span = std::min(horizon, params_.correction_min_kernels * longest_scaled);
    if (charged_avg_ > 0.0 && averaged_ns_ >= min_span) {
      correction_.store(
          std::clamp(busy_avg_ / charged_avg_, params_.min_correction, params_.max_correction),
          std::memory_order_relaxed);
    }
    // Integral action: what the utilization says this process used beyond (or short of)
    // what it was charged accumulates, and a fraction of the accumulated gap is charged to
    // (or refunded from) the bucket at each sample. Over windows longer than the signal's lag
    // the share holds even when the timings are off (inflated by other tenants' time
    // slices, say); window-edge noise, which cancels, is smoothed away. The gap is taken
    // against the correction just updated: what the new correction explains is not also paid
    // back (a tenant whose events read double for its first seconds would otherwise be
    // refunded those seconds on top of the correction, and overshoot its cap by 5 pp).
    const double error = static_cast<double>(busy_ns) -
                         static_cast<double>(charged) * correction_.load(std::memory_order_relaxed);
    if (std::abs(error) > tolerance) pending_error_ += error;
    if (last_mode_.load(std::memory_order_relaxed) == limiter_mode::capped) {
      const double applied = params_.utilization_gain * pending_error_;
      bucket_.adjust(static_cast<std::int64_t>(applied), end_ns);
      pending_error_ -= applied;
    } else {
      pending_error_ = 0.0;  // uncapped: nothing to make up
    }
  }

  /// Restarts the utilization feedback at \p now: readings whose window begins earlier are
  /// ignored and the integral term starts from zero; the learned costs and the correction
  /// factor are kept. For a caller that let launches through without admit() (the shim with no
  /// cap), whose busy time in those windows was never charged and would read as a huge
  /// correction. Thread-safe (takes the feedback mutex).
  void restart_feedback(std::int64_t now) {
    std::lock_guard<std::mutex> lock(feedback_mutex_);
    feedback_from_ns_ = std::max(feedback_from_ns_, now);
    pending_error_ = 0.0;
  }

  /// The current correction factor (1 = the observed timings are right). Thread-safe.
  double correction() const noexcept { return correction_.load(std::memory_order_relaxed); }
  /// The cost admit() charges for \p function_id before correction. Thread-safe.
  std::int64_t estimate_ns(std::uint64_t function_id) noexcept {
    auto* e = entry(function_id);
    const std::int64_t v = e != nullptr ? e->estimate_ns.load(std::memory_order_relaxed) : 0;
    return v > 0 ? v : typical_ns_.load(std::memory_order_relaxed);
  }

 private:
  struct function_entry;
  /// The cost to charge a launch of the function of entry \p e (null: not in the table) at
  /// \p now; counts launches charged the prior, and when the first of them was.
  std::int64_t charge_estimate(function_entry* e, std::int64_t now) noexcept {
    const std::int64_t v = e != nullptr ? e->estimate_ns.load(std::memory_order_relaxed) : 0;
    if (v > 0) return v;
    if (e != nullptr && e->unlearned.fetch_add(1, std::memory_order_relaxed) == 0) {
      e->unlearned_since_ns.store(std::max<std::int64_t>(now, 1), std::memory_order_relaxed);
    }
    return typical_ns_.load(std::memory_order_relaxed);
  }

 public:
  /// The shared bucket. Thread-safe.
  shared_token_bucket<Word>& bucket() noexcept { return bucket_; }
  /// The parameters in force.
  const limiter_params& params() const noexcept { return params_; }
  /// The clock.
  const Clock& clock() const noexcept { return clock_; }

 private:
  struct function_entry {
    std::atomic<std::uint64_t> key{0};
    std::atomic<std::int64_t> estimate_ns{0};
    /// Launches charged the prior (before the first observation) not yet observed.
    std::atomic<std::int64_t> unlearned{0};
    /// When the first of them was admitted (0: none).
    std::atomic<std::int64_t> unlearned_since_ns{0};
  };

  std::int64_t capped_ppm() const noexcept {
    const auto priority = static_cast<task_priority>(priority_.load(std::memory_order_relaxed));
    if (priority == task_priority::low &&
        (peers_.load(std::memory_order_relaxed) & detail::k_high_others_active) != 0 &&
        yield_ppm() > 0) {
      return std::min(yield_ppm(), share_ppm());
    }
    return share_ppm();
  }

  std::int64_t share_ppm() const noexcept { return share_ppm_.load(std::memory_order_relaxed); }

  /// The bucket's capacity now: burst_ns, or burst_kernels of the longest kernel while another
  /// tenant is active.
  std::int64_t capacity() const noexcept {
    if ((peers_.load(std::memory_order_relaxed) & detail::k_others_active) == 0) {
      return params_.burst_ns;
    }
    const double longest = params_.burst_kernels *
                           static_cast<double>(scaled(longest_ns_.load(std::memory_order_relaxed)));
    return std::max(params_.burst_ns, static_cast<std::int64_t>(longest));
  }
  std::int64_t yield_ppm() const noexcept { return yield_ppm_.load(std::memory_order_relaxed); }

  std::int64_t scaled(std::int64_t raw) const noexcept {
    return static_cast<std::int64_t>(static_cast<double>(raw) *
                                     correction_.load(std::memory_order_relaxed));
  }

  /// Records the mode; entering `capped` drains the bucket and sets its rate (slow path, on
  /// transitions only).
  void note_mode(limiter_mode m, std::int64_t now) noexcept {
    if (last_mode_.load(std::memory_order_relaxed) == m) return;
    if (last_mode_.exchange(m, std::memory_order_relaxed) != m && m == limiter_mode::capped) {
      bucket_.set_share_ppm(capped_ppm());
      bucket_.drain(now);
    }
  }

  /// Files \p raw charged GPU-ns on the charge timeline as a kernel starting at \p at
  /// (>= \p now) and running \p raw ns, so the charges line up with the busy time they cause.
  void file_charge(std::int64_t raw, std::int64_t at, std::int64_t now,
                   bool spread = true) noexcept {
    // Far-future starts are filed at the horizon so they never wrap onto unswept slots.
    const std::int64_t horizon =
        static_cast<std::int64_t>(detail::k_charge_slots / 2) * detail::k_charge_slot_ns;
    const std::int64_t t = std::max<std::int64_t>(std::min(at, now + horizon), 0);
    const std::int64_t first = t / detail::k_charge_slot_ns;
    const std::int64_t spans =
        spread ? std::clamp<std::int64_t>(std::abs(raw) / detail::k_charge_slot_ns, 1,
                                          detail::k_charge_spread_slots)
               : 1;
    std::int64_t left = raw;
    for (std::int64_t s = first; s < first + spans; ++s) {
      const std::int64_t part = s + 1 == first + spans ? left : raw / spans;
      left -= part;
      charges_[static_cast<std::size_t>(s) % detail::k_charge_slots].fetch_add(
          part, std::memory_order_relaxed);
    }
  }

  /// Moves charge slots that lie wholly before \p end_ns into history_. Holds the mutex.
  void sweep_charges(std::int64_t end_ns) {
    const std::int64_t last = end_ns / detail::k_charge_slot_ns;  // slot holding end_ns
    // Slots more than half the ring back may hold future charges (they wrap): never sweep them.
    const std::int64_t oldest = last - static_cast<std::int64_t>(detail::k_charge_slots / 2) + 1;
    const std::int64_t from = std::max({next_slot_, oldest, std::int64_t{0}});
    for (std::int64_t s = from; s < last; ++s) {
      const std::int64_t raw =
          charges_[static_cast<std::size_t>(s) % detail::k_charge_slots].exchange(
              0, std::memory_order_relaxed);
      history_.emplace_back(s, raw);
    }
    next_slot_ = std::max(next_slot_, last);
    const std::int64_t keep = (end_ns - detail::k_charge_history_ns) / detail::k_charge_slot_ns;
    while (!history_.empty() && history_.front().first < keep) history_.pop_front();
  }

  function_entry* entry(std::uint64_t function_id) noexcept {
    const std::uint64_t key = function_id == 0 ? detail::k_zero_function_key : function_id;
    std::size_t i = detail::function_slot(key);
    for (std::size_t probe = 0; probe < k_max_probes; ++probe) {
      auto& e = functions_[(i + probe) % detail::k_function_slots];
      std::uint64_t k = e.key.load(std::memory_order_acquire);
      if (k == key) return &e;
      if (k == 0) {
        if (e.key.compare_exchange_strong(k, key, std::memory_order_acq_rel) || k == key) {
          return &e;
        }
      }
    }
    return nullptr;  // table full around here: the typical cost stands in
  }

  /// Slots probed before giving up on a function id.
  static constexpr std::size_t k_max_probes = 16;

  shared_token_bucket<Word> bucket_;
  limiter_params params_;
  Clock clock_;
  std::string error_;
  std::atomic<std::int64_t> share_ppm_{k_ppm};
  std::atomic<std::int64_t> yield_ppm_{0};
  std::atomic<std::uint8_t> policy_{0};
  std::atomic<std::uint8_t> priority_{0};
  std::atomic<std::uint8_t> peers_{0};
  std::atomic<limiter_mode> last_mode_{limiter_mode::uncapped};
  std::atomic<double> correction_{1.0};
  static_assert(std::atomic<double>::is_always_lock_free, "the correction is read per launch");
  std::atomic<std::int64_t> typical_ns_{params_.prior_kernel_ns};
  /// The longest learned cost of any function (before correction).
  std::atomic<std::int64_t> longest_ns_{0};
  /// When the last capped launch was admitted.
  std::atomic<std::int64_t> last_admit_ns_{0};
  std::array<function_entry, detail::k_function_slots> functions_{};
  std::array<std::atomic<std::int64_t>, detail::k_charge_slots> charges_{};

  std::mutex feedback_mutex_;
  std::int64_t next_slot_ = -1;
  std::deque<std::pair<std::int64_t, std::int64_t>> history_;
  double pending_error_ = 0.0;
  std::int64_t feedback_from_ns_ = std::numeric_limits<std::int64_t>::min();
  double busy_avg_ = 0.0;
  double charged_avg_ = 0.0;
  /// Length of the windows averaged so far, up to the horizon.
  double averaged_ns_ = 0.0;
  std::int64_t skipped_ns_ = 0;
  /// Active utilization time ignored at the start (two NVML samples of 1/6 s, one of more).
  static constexpr std::int64_t k_warmup_ns = 300'000'000;
};

/// A reading of a utilization source: the process was busy busy_ns during [start_ns, end_ns).
struct utilization_reading {
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
  std::int64_t busy_ns = 0;
};

/// The blocking launch path for callers that may sleep (the shim): feeds new utilization
/// readings, waits as the limiter says, then launches.
/// Limiter: sm_limiter<...>. UtilizationSource: `bool poll(std::int64_t now,
/// utilization_reading&)` returns true with a new reading. LaunchSink: `void wait(std::int64_t
/// ns)` (sleeps, never spins) and `R launch(Args...)`. Thread-safe when the source and the
/// sink are (launch() serialises only the source poll).
template <class Limiter, class UtilizationSource, class LaunchSink>
class launch_gate {
 public:
  /// Binds the gate to its parts (held by reference; they must outlive the gate).
  launch_gate(Limiter& limiter, UtilizationSource& source, LaunchSink& sink) noexcept
      : limiter_(limiter), source_(source), sink_(sink) {}

  /// Admits, waits and launches one kernel of \p function_id; returns what the sink returns.
  template <class... Args>
  decltype(auto) launch(std::uint64_t function_id, Args&&... args) {
    poll_source();
    for (;;) {
      const admission a = limiter_.admit(function_id, limiter_.clock().now());
      if (a.wait_ns > 0) sink_.wait(a.wait_ns);
      if (a.admitted) break;
    }
    return sink_.launch(std::forward<Args>(args)...);
  }

 private:
  void poll_source() {
    std::unique_lock<std::mutex> lock(poll_mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return;  // another thread is polling; nothing to add
    utilization_reading r;
    while (source_.poll(limiter_.clock().now(), r)) {
      limiter_.utilization_sample(r.start_ns, r.end_ns, r.busy_ns);
    }
  }

  Limiter& limiter_;
  UtilizationSource& source_;
  LaunchSink& sink_;
  std::mutex poll_mutex_;
};

}  // namespace gpuslice::rate
