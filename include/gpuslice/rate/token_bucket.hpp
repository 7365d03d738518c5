#pragma once
/// \file
/// A token bucket of GPU busy time (nanoseconds) whose whole state lives in caller-provided
/// 64-bit atomic words, so one bucket per device per container can sit in the memory ledger's
/// shared region (its `rate_words(device)`) and be used by all the container's processes, or in
/// a plain in-process array in tests and in the GPU model.
///
/// The bucket is folly's TokenBucket in units of time: its state is the moment it was
/// notionally empty ("zero time"). Tokens accrue at `share` GPU-ns per wall-ns, so at `now` it
/// holds min(burst, (now - zero_time) * share). Consuming c tokens moves zero time forward by
/// c / share; a compare_exchange on that one word is the whole update. Consumption may borrow:
/// zero time may pass `now`, and the caller waits exactly `zero_time - now`, the deficit. All
/// processes must use one clock (CLOCK_MONOTONIC is system-wide, so steady_clock qualifies).
///
/// Layout of the words (k_rate_words, each naturally aligned, little-endian host order):
///   [0] claim       the initialisation claim (claim.hpp): free, claiming, ready
///   [1] zero_time   int64 ns, the moment the bucket was notionally empty
///   [2] share_ppm   refill rate in parts per million of GPU time, 1..1'000'000
///   [3] capacity    the most a tenant can save up while idle, shared by the container's
///                   processes: the capacity in us in the high 26 bits (k_capacity_unit_ns,
///                   at most 67 s), and in the low 38 bits the time in ms (mod 2^38, 8.7
///                   years) when the process whose capacity it is last claimed it
///                   (offer_burst_ns)
///   [4] charged_ns  total GPU-ns ever charged (statistics; wraps after 292 years)
///   [5] waited_ns   total wall-ns of waits handed out (statistics)
///   [6] ident       the initialiser's start time (claim.hpp)
///   [7] tag         k_rate_tag_ready (magic and layout version) once initialised; 0 before
/// Any change to this layout bumps k_rate_layout_version.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "gpuslice/claim.hpp"
#include "gpuslice/liveness.hpp"
#include "gpuslice/result.hpp"
#include "gpuslice/shared_words.hpp"

namespace gpuslice::rate {

/// Number of 64-bit words the shared bucket needs (the ledger reserves as many per device).
inline constexpr std::size_t k_rate_words = gpuslice::k_rate_words;
/// Layout version of the words; bumped on any change.
inline constexpr std::uint64_t k_rate_layout_version = 3;
/// Parts per million: the unit of share_ppm (1'000'000 = the whole GPU).
inline constexpr std::int64_t k_ppm = 1'000'000;
/// "GSRB" in the high half, then a state byte and the layout version.
inline constexpr std::uint64_t k_rate_magic = 0x47535242'00000000ULL;
/// Tag of initialised words.
inline constexpr std::uint64_t k_rate_tag_ready =
    k_rate_magic | 0x0200'0000ULL | k_rate_layout_version;

/// Indices of the words (see the file comment).
enum class rate_word : std::size_t {
  claim = 0,
  zero_time = 1,
  share_ppm = 2,
  burst_ns = 3,
  charged_ns = 4,
  waited_ns = 5,
  ident = 6,
  tag = 7,
};
static_assert(static_cast<std::size_t>(rate_word::tag) < k_rate_words,
              "the bucket's words fit in what the ledger reserves");
/// State of initialised words: the claim word's state (claim.hpp).
inline constexpr std::uint8_t k_rate_ready = 2;

/// Unit of the capacity in its word (1 us) and the bits it takes there.
inline constexpr std::int64_t k_capacity_unit_ns = 1'000;
inline constexpr unsigned k_capacity_bits = 26;
/// Unit of the capacity's claim time (1 ms) and the bits it takes (the rest of the word).
inline constexpr std::int64_t k_capacity_stamp_unit_ns = 1'000'000;
inline constexpr unsigned k_capacity_stamp_bits = 64 - k_capacity_bits;
/// An offer of at least this percent of the container's capacity renews its claim (see
/// shared_token_bucket::offer_burst_ns).
inline constexpr std::int64_t k_capacity_renew_percent = 90;
/// A lapsed claim is lowered to this percent of itself per stale period (or to the offer).
inline constexpr std::int64_t k_capacity_decay_percent = 75;
inline constexpr std::int64_t k_percent_of_capacity = 100;
/// Largest capacity the word holds.
inline constexpr std::int64_t k_max_capacity_ns =
    ((std::int64_t{1} << k_capacity_bits) - 1) * k_capacity_unit_ns;

/// Largest amount (ns) one conversion handles: 1000 s, so ns * k_ppm stays inside int64.
inline constexpr std::int64_t k_max_tokens_ns = 1'000'000'000'000;

/// How long attach() waits for a live process that is initialising the words.
inline constexpr std::uint64_t k_rate_claim_wait_ns = 2'000'000'000;

/// A view of a token bucket whose state is k_rate_words atomic words owned by the caller.
/// Word: a std::atomic<std::uint64_t>-like type (the ledger's shared words, or in-process).
/// All methods are thread-safe and process-safe (lock-free compare_exchange on the words);
/// the view itself is a trivially copyable pointer.
template <class Word = std::atomic<std::uint64_t>>
class shared_token_bucket {
  static_assert(sizeof(Word) == sizeof(std::uint64_t), "rate words are 64-bit");

 public:
  /// Binds to \p words without touching them; call attach() before use.
  explicit shared_token_bucket(Word* words) noexcept : w_(words) {}

  /// Initialises fresh (all-zero) words with \p share_ppm and \p burst_ns, or joins words that
  /// another process initialised (then the share and burst given here are stored too, as
  /// every process of a container reads the same configuration). Initialisation is the claim
  /// of claim.hpp: a live initialiser is waited for up to k_rate_claim_wait_ns on the steady
  /// clock, a dead one taken over. Refuses words that carry a foreign tag or another layout
  /// version. Thread- and process-safe.
  result<bool> attach(std::int64_t share_ppm, std::int64_t burst_ns, std::int64_t now) noexcept {
    const auto steady = [] {
      return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                            std::chrono::steady_clock::now().time_since_epoch())
                                            .count());
    };
    return attach(share_ppm, burst_ns, now, proc_liveness{}, steady, k_rate_claim_wait_ns);
  }

  /// attach() with the seams: \p live judges an initialiser, \p now_ns() (nanoseconds)
  /// bounds the wait of \p wait_ns. Thread- and process-safe.
  template <class Liveness, class Now>
  result<bool> attach(std::int64_t share_ppm, std::int64_t burst_ns, std::int64_t now,
                      const Liveness& live, Now&& now_ns, std::uint64_t wait_ns) noexcept {
    if (share_ppm < 1 || share_ppm > k_ppm) {
      return make_error(errc::out_of_range, "share_ppm=" + std::to_string(share_ppm) +
                                                ": expected 1..1000000 parts per million");
    }
    if (burst_ns < 0) {
      return make_error(errc::out_of_range,
                        "burst_ns=" + std::to_string(burst_ns) + ": expected >= 0");
    }
    const claim_identity me = self_identity(live);
    for (;;) {
      if (auto e = foreign()) return std::move(*e);
      const claim_result r =
          claim(word(rate_word::claim), word(rate_word::ident), me, live, now_ns, wait_ns);
      if (r.mine()) {
        store(rate_word::share_ppm, share_ppm);
        word(rate_word::burst_ns).store(encode_capacity(burst_ns, now), std::memory_order_relaxed);
        store(rate_word::zero_time, now);  // starts empty: no credit before the first launch
        store(rate_word::charged_ns, 0);
        store(rate_word::waited_ns, 0);
        word(rate_word::tag).store(k_rate_tag_ready, std::memory_order_relaxed);
        if (finish_claim(word(rate_word::claim), r.word, k_rate_ready)) return true;
        continue;  // taken over from us: look again
      }
      if (r.what == claim_result::kind::busy) {
        return make_error(errc::busy, "rate words: process " + std::to_string(claim_pid(r.word)) +
                                          " did not finish initialising them within " +
                                          std::to_string(wait_ns / 1'000'000) + " ms");
      }
      if (claim_state(r.word) != k_rate_ready ||
          word(rate_word::tag).load(std::memory_order_acquire) != k_rate_tag_ready) {
        return make_error(errc::corrupt, "rate words: unknown state, expected gpuslice rate words");
      }
      set_share_ppm(share_ppm);
      // A larger capacity is claimed; a smaller one never lowers the container's on joining.
      offer_burst_ns(burst_ns, now, std::numeric_limits<std::int64_t>::max(), 0);
      return false;
    }
  }

  /// True once attach() succeeded here or in another process. Thread-safe.
  bool ready() const noexcept {
    return claim_state(word(rate_word::claim).load(std::memory_order_acquire)) == k_rate_ready &&
           word(rate_word::tag).load(std::memory_order_relaxed) == k_rate_tag_ready;
  }

  /// Sets the refill rate (clamped to 1..k_ppm). Thread-safe.
  void set_share_ppm(std::int64_t ppm) noexcept {
    store(rate_word::share_ppm, std::clamp<std::int64_t>(ppm, 1, k_ppm));
  }
  /// The refill rate in parts per million. Thread-safe.
  std::int64_t share_ppm() const noexcept { return load(rate_word::share_ppm); }
  /// Sets the capacity (clamped to 0..k_max_capacity_ns, in whole us) as claimed at \p now;
  /// tokens above a smaller one are lost at the next use. Thread-safe.
  void set_burst_ns(std::int64_t burst, std::int64_t now = 0) noexcept {
    word(rate_word::burst_ns).store(encode_capacity(burst, now), std::memory_order_relaxed);
  }
  /// The capacity in GPU-ns. Thread-safe.
  std::int64_t burst_ns() const noexcept {
    return capacity_of(word(rate_word::burst_ns).load(std::memory_order_relaxed));
  }

  /// One process's capacity \p mine_ns offered at \p now to the container's: the capacity is
  /// the largest that a process still claims. A larger offer takes over; one within
  /// k_capacity_renew_percent of it (the claimant's own, its correction moved) renews the
  /// claim, keeping it, once the claim is \p refresh_ns old; a smaller one lowers it only
  /// from a claim not renewed for \p stale_ns (its process stopped launching: exited, killed
  /// or idle), by a quarter per stale period down to the offer, so the container's processes
  /// that launch different kernels never set it in turn. Returns the capacity in force. Thread- and
  /// process-safe; lock-free; no write on the usual path.
  std::int64_t offer_burst_ns(std::int64_t mine_ns, std::int64_t now, std::int64_t stale_ns,
                              std::int64_t refresh_ns) noexcept {
    const std::uint64_t mine = encode_capacity(mine_ns, now);
    const std::int64_t want = capacity_of(mine);
    auto& w = word(rate_word::burst_ns);
    std::uint64_t old = w.load(std::memory_order_relaxed);
    for (;;) {
      const std::int64_t cap = capacity_of(old);
      const std::int64_t age = claim_age_ns(old, now);
      std::uint64_t next = mine;
      if (want <= cap && want * k_percent_of_capacity >= cap * k_capacity_renew_percent) {
        if (age < refresh_ns) return cap;
        next = encode_capacity(cap, now);  // renewed, kept
      } else if (want < cap) {
        if (age <= stale_ns) return cap;
        // A lapsed claim steps down by a quarter per stale period, never below this offer: its
        // process, if it still launches, renews it on the way down (a claim raised by one
        // inflated timing comes down to its renewed size without dropping under it).
        next = encode_capacity(
            std::max(want, cap * k_capacity_decay_percent / k_percent_of_capacity), now);
      }
      if (w.compare_exchange_weak(old, next, std::memory_order_relaxed)) return capacity_of(next);
    }
  }

  /// Takes \p cost_ns tokens, borrowing if needed, and returns how long the caller must wait
  /// before using them (0 when they were there). Thread- and process-safe; lock-free.
  std::int64_t consume(std::int64_t cost_ns, std::int64_t now) noexcept {
    const std::int64_t ppm = share_ppm();
    const std::int64_t full = to_wall(burst_ns(), ppm);
    const std::int64_t cost = to_wall(std::max<std::int64_t>(cost_ns, 0), ppm);
    auto& zt = word(rate_word::zero_time);
    std::uint64_t old = zt.load(std::memory_order_relaxed);
    std::int64_t next = 0;
    do {
      next = sat_add(std::max(as_signed(old), now - full), cost);
    } while (!zt.compare_exchange_weak(old, as_unsigned(next), std::memory_order_relaxed));
    const std::int64_t wait = std::max<std::int64_t>(next - now, 0);
    word(rate_word::charged_ns).fetch_add(as_unsigned(cost_ns), std::memory_order_relaxed);
    if (wait > 0)
      word(rate_word::waited_ns).fetch_add(as_unsigned(wait), std::memory_order_relaxed);
    return wait;
  }

  /// Adds (\p delta_ns > 0) or gives back (< 0) tokens after the fact, e.g. when a kernel's
  /// measured time differs from what it was charged. A refund never lifts the bucket above
  /// its capacity. Thread- and process-safe; lock-free.
  void adjust(std::int64_t delta_ns, std::int64_t now) noexcept {
    if (delta_ns == 0) return;
    const std::int64_t ppm = share_ppm();
    const std::int64_t full = to_wall(burst_ns(), ppm);
    auto& zt = word(rate_word::zero_time);
    std::uint64_t old = zt.load(std::memory_order_relaxed);
    std::int64_t next = 0;
    do {
      const std::int64_t z = as_signed(old);
      if (delta_ns > 0) {
        next = sat_add(std::max(z, now - full), to_wall(delta_ns, ppm));
      } else {
        next = std::max(z - to_wall(-delta_ns, ppm), std::min(z, now - full));
      }
    } while (!zt.compare_exchange_weak(old, as_unsigned(next), std::memory_order_relaxed));
    word(rate_word::charged_ns).fetch_add(as_unsigned(delta_ns), std::memory_order_relaxed);
  }

  /// Empties the bucket (keeps a debt): used when a tenant goes from uncapped to capped so
  /// nothing saved while uncapped is spent on top of the cap. Thread- and process-safe.
  void drain(std::int64_t now) noexcept {
    auto& zt = word(rate_word::zero_time);
    std::uint64_t old = zt.load(std::memory_order_relaxed);
    while (as_signed(old) < now &&
           !zt.compare_exchange_weak(old, as_unsigned(now), std::memory_order_relaxed)) {
    }
  }

  /// Keeps at most \p tokens_ns of what the bucket holds at \p now (a debt is kept). Thread-
  /// and process-safe.
  void clip(std::int64_t tokens_ns, std::int64_t now) noexcept {
    const std::int64_t floor = now - to_wall(std::max<std::int64_t>(tokens_ns, 0), share_ppm());
    auto& zt = word(rate_word::zero_time);
    std::uint64_t old = zt.load(std::memory_order_relaxed);
    while (as_signed(old) < floor &&
           !zt.compare_exchange_weak(old, as_unsigned(floor), std::memory_order_relaxed)) {
    }
  }

  /// Tokens available at \p now (negative while in debt). Thread-safe.
  std::int64_t available(std::int64_t now) const noexcept {
    const std::int64_t ppm = share_ppm();
    const std::int64_t z = load(rate_word::zero_time);
    const std::int64_t elapsed = std::min(now - z, to_wall(burst_ns(), ppm));
    return elapsed >= 0 ? to_tokens(elapsed, ppm) : -to_tokens(-elapsed, ppm);
  }

  /// Total GPU-ns charged so far by all processes. Thread-safe.
  std::int64_t charged_ns() const noexcept { return load(rate_word::charged_ns); }
  /// Total wall-ns of waits handed out so far. Thread-safe.
  std::int64_t waited_ns() const noexcept { return load(rate_word::waited_ns); }

 private:
  static std::int64_t as_signed(std::uint64_t v) noexcept { return static_cast<std::int64_t>(v); }
  static constexpr std::uint64_t k_stamp_mask = (std::uint64_t{1} << k_capacity_stamp_bits) - 1;
  /// The capacity word for \p burst_ns (clamped, whole us) claimed at \p now.
  static std::uint64_t encode_capacity(std::int64_t burst_ns, std::int64_t now) noexcept {
    const auto units = static_cast<std::uint64_t>(
        std::clamp<std::int64_t>(burst_ns, 0, k_max_capacity_ns) / k_capacity_unit_ns);
    const auto stamp =
        static_cast<std::uint64_t>(std::max<std::int64_t>(now, 0) / k_capacity_stamp_unit_ns);
    return (units << k_capacity_stamp_bits) | (stamp & k_stamp_mask);
  }
  static std::int64_t capacity_of(std::uint64_t v) noexcept {
    return static_cast<std::int64_t>(v >> k_capacity_stamp_bits) * k_capacity_unit_ns;
  }
  /// How long ago (ns, whole ms) the capacity word \p v was claimed, as seen at \p now.
  static std::int64_t claim_age_ns(std::uint64_t v, std::int64_t now) noexcept {
    const auto stamp =
        static_cast<std::uint64_t>(std::max<std::int64_t>(now, 0) / k_capacity_stamp_unit_ns);
    return static_cast<std::int64_t>((stamp - v) & k_stamp_mask) * k_capacity_stamp_unit_ns;
  }
  static std::uint64_t as_unsigned(std::int64_t v) noexcept {
    return static_cast<std::uint64_t>(v);
  }
  /// Wall time that earns \p tokens at \p ppm (rounded up so borrowing never undercharges).
  static std::int64_t to_wall(std::int64_t tokens, std::int64_t ppm) noexcept {
    const std::int64_t t = std::clamp<std::int64_t>(tokens, -k_max_tokens_ns, k_max_tokens_ns);
    return (t * k_ppm + ppm - 1) / ppm;
  }
  /// Tokens earned over \p wall ns at \p ppm.
  static std::int64_t to_tokens(std::int64_t wall, std::int64_t ppm) noexcept {
    const std::int64_t w = std::clamp<std::int64_t>(wall, -k_max_tokens_ns, k_max_tokens_ns);
    return w * ppm / k_ppm;
  }
  static std::int64_t sat_add(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t r = 0;
    return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<std::int64_t>::max() : r;
  }
  Word& word(rate_word i) const noexcept { return w_[static_cast<std::size_t>(i)]; }

  /// An error when the words are not gpuslice rate words of this version (never claimed).
  std::optional<error> foreign() const {
    const std::uint64_t tag = word(rate_word::tag).load(std::memory_order_acquire);
    const std::uint64_t c = word(rate_word::claim).load(std::memory_order_acquire);
    if (tag != 0 && tag != k_rate_tag_ready) {
      const bool ours = (tag & 0xFFFFFFFF'00000000ULL) == k_rate_magic;
      if (ours) {
        return make_error(errc::version_mismatch,
                          "rate words: layout version " + std::to_string(tag & 0xFFFFFF) +
                              ", expected " + std::to_string(k_rate_layout_version));
      }
      return make_error(errc::corrupt, "rate words: unknown tag, expected gpuslice rate words");
    }
    if (claim_state(c) > k_rate_ready || static_cast<std::uint32_t>(claim_pid(c)) > k_max_pid) {
      return make_error(errc::corrupt, "rate words: unknown tag, expected gpuslice rate words");
    }
    return std::nullopt;
  }
  std::int64_t load(rate_word i) const noexcept {
    return as_signed(word(i).load(std::memory_order_relaxed));
  }
  void store(rate_word i, std::int64_t v) noexcept {
    word(i).store(as_unsigned(v), std::memory_order_relaxed);
  }

  Word* w_;
};

/// In-process storage for a bucket (tests, the GPU model, a process without a ledger).
/// Not copyable: the bucket views point into it.
struct local_rate_words {
  /// The words, zeroed ("fresh").
  std::atomic<std::uint64_t> words[k_rate_words] = {};
  static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "rate words must be lock-free");
};

}  // namespace gpuslice::rate
