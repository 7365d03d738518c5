#pragma once
/// \file
/// The one claim primitive of shared state: how a process takes a piece of a region other
/// processes map (a region's initialisation, a device record, a bucket's words, a node-region
/// record, a ledger slot, the reap gate), and how the others recover when it dies.
///
/// A claim lives in two 64-bit words:
///   word   [63:32] pid of the holder, [31:8] generation, [7:0] state
///   ident  [63:40] generation, [39:0] the holder's start time (low 40 bits; 0 = not known)
/// State 0 is free and 1 is claiming; each user gives its own meaning to the states above
/// (ready, live, reaping, corrupted...). The generation counts the claims of this word: each
/// claim takes the previous generation plus one, so the same holder word never comes back
/// within 2^24 claims and a stale holder cannot mistake a later claim for its own.
///
/// Protocol:
///   1. Claim: a compare-and-swap from the observed word to (my pid, generation + 1,
///      claiming). The pid is in the word the CAS writes: there is no moment when the claim is
///      held by nobody one could name.
///   2. Then ident := (generation, my start time). A judge trusts the start time only when the
///      generations agree; before that the holder is judged by its pid alone.
///   3. Finish: a CAS from my claiming word to (my pid, generation, final state), never a plain
///      store: a claimer that was taken over learns it here, and touches nothing more.
/// A waiter that finds the word claiming waits, bounded by the injected clock, while the
/// holder lives (liveness.hpp: only the kernel's word makes it dead), and takes over (step 1
/// from the observed word) as soon as the holder is dead. Takeover tells the caller, which
/// then redoes the whole of the dead claimer's work.
///
/// Word: a std::atomic<std::uint64_t>-like type. Liveness: see liveness.hpp. All functions are
/// thread- and process-safe (lock-free on the words).

#include <chrono>
#include <cstdint>
#include <thread>

#include "gpuslice/liveness.hpp"

namespace gpuslice {

/// State of a free claim word.
inline constexpr std::uint8_t k_claim_free = 0;
/// State of a claim being worked on by its holder.
inline constexpr std::uint8_t k_claim_claiming = 1;
/// Bits of the generation in a claim word and in its ident word.
inline constexpr unsigned k_claim_generation_bits = 24;
/// Mask of a generation.
inline constexpr std::uint32_t k_claim_generation_mask = (1u << k_claim_generation_bits) - 1;
/// Bits of the start time kept in an ident word (2^40 clock ticks: centuries at 100 Hz).
inline constexpr unsigned k_claim_start_bits = 64 - k_claim_generation_bits;
/// Mask of the start time in an ident word.
inline constexpr std::uint64_t k_claim_start_mask = (std::uint64_t{1} << k_claim_start_bits) - 1;
/// Largest pid Linux hands out (PID_MAX_LIMIT); a word naming a larger one is foreign.
inline constexpr std::uint32_t k_max_pid = 4u << 20;
/// Sleep between two looks at a claim another process holds.
inline constexpr std::chrono::microseconds k_claim_poll{50};

static_assert(k_claim_generation_bits + 8 + 32 == 64, "a claim word is pid, generation, state");

/// Packs a claim word. Pure.
constexpr std::uint64_t claim_word(std::int32_t pid, std::uint32_t generation,
                                   std::uint8_t state) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid)) << 32) |
         (static_cast<std::uint64_t>(generation & k_claim_generation_mask) << 8) | state;
}
/// The holder's pid. Pure.
constexpr std::int32_t claim_pid(std::uint64_t w) noexcept {
  return static_cast<std::int32_t>(static_cast<std::uint32_t>(w >> 32));
}
/// The generation. Pure.
constexpr std::uint32_t claim_generation(std::uint64_t w) noexcept {
  return static_cast<std::uint32_t>(w >> 8) & k_claim_generation_mask;
}
/// The state. Pure.
constexpr std::uint8_t claim_state(std::uint64_t w) noexcept {
  return static_cast<std::uint8_t>(w & 0xffu);
}
/// The same word in another state. Pure.
constexpr std::uint64_t with_claim_state(std::uint64_t w, std::uint8_t state) noexcept {
  return (w & ~std::uint64_t{0xff}) | state;
}
/// The ident word of a holder word. Pure.
constexpr std::uint64_t claim_ident(std::uint64_t w, std::uint64_t start_time) noexcept {
  return (static_cast<std::uint64_t>(claim_generation(w)) << k_claim_start_bits) |
         (start_time & k_claim_start_mask);
}
/// The start time an ident word records for holder word \p w (0 when it is another
/// generation's, or not known). Pure.
constexpr std::uint64_t claim_start(std::uint64_t w, std::uint64_t ident) noexcept {
  return (ident >> k_claim_start_bits) == claim_generation(w) ? ident & k_claim_start_mask : 0;
}

/// Who claims: a process and its start time (0 = not known: it may still claim, and is then
/// judged by its pid alone, but it never takes the reap gate, see memory/ledger.hpp).
struct claim_identity {
  std::int32_t pid = 0;
  std::uint64_t start_time = 0;
  /// True when the start time is known.
  bool complete() const noexcept { return pid > 0 && start_time != 0; }
};

/// The calling process's identity as \p live sees it. Thread-safe.
template <class Liveness>
claim_identity self_identity(const Liveness& live) noexcept {
  const std::int32_t pid = live.self_pid();
  const liveness_probe p = live.probe(pid);
  return {pid, p.what == liveness_probe::status::running ? p.start_time & k_claim_start_mask : 0};
}

/// True only when the holder named by \p w (with \p ident) is certainly dead. A word naming no
/// process, or a pid Linux never hands out, names nobody alive. Thread-safe.
template <class Liveness>
bool claim_holder_dead(const Liveness& live, std::uint64_t w, std::uint64_t ident) noexcept {
  const std::int32_t pid = claim_pid(w);
  if (pid <= 0 || static_cast<std::uint32_t>(pid) > k_max_pid) return true;
  return proves_dead(live.probe(pid), claim_start(w, ident), k_claim_start_mask);
}

/// What try_claim and claim found.
struct claim_result {
  enum class kind : std::uint8_t {
    won,        ///< the word was free and is now mine (word)
    took_over,  ///< its holder was dead; now mine (word): redo the dead holder's work
    held,       ///< a live holder has it claiming (word is theirs)
    settled,    ///< it is in another state (>= 2), left to the caller (word)
    busy,       ///< claim(): the live holder did not finish within the wait
  };
  kind what = kind::busy;
  std::uint64_t word = 0;  ///< mine when won or took_over, else the word observed
  /// True when the caller now holds the claim.
  bool mine() const noexcept { return what == kind::won || what == kind::took_over; }
};

namespace detail {
/// Step 1 and 2 from observed word \p seen; false when another process moved it first.
template <class Word>
bool claim_from(Word& word, Word& ident, std::uint64_t seen, const claim_identity& me,
                std::uint64_t& mine) noexcept {
  mine = claim_word(me.pid, claim_generation(seen) + 1, k_claim_claiming);
  if (!word.compare_exchange_strong(seen, mine, std::memory_order_acq_rel)) return false;
  ident.store(claim_ident(mine, me.start_time), std::memory_order_release);
  return true;
}
}  // namespace detail

/// One attempt: claims a free word, takes over a claiming word whose holder is dead (and, when
/// \p take_dead_settled, a settled one whose holder is dead: a record of a dead process), or
/// reports what holds it. Never waits. Thread- and process-safe.
template <class Word, class Liveness>
claim_result try_claim(Word& word, Word& ident, const claim_identity& me, const Liveness& live,
                       bool take_dead_settled = false) noexcept {
  for (;;) {
    const std::uint64_t seen = word.load(std::memory_order_acquire);
    const std::uint8_t st = claim_state(seen);
    std::uint64_t mine = 0;
    if (st == k_claim_free) {
      if (detail::claim_from(word, ident, seen, me, mine)) {
        return {claim_result::kind::won, mine};
      }
      continue;
    }
    if (st != k_claim_claiming && !take_dead_settled) return {claim_result::kind::settled, seen};
    if (!claim_holder_dead(live, seen, ident.load(std::memory_order_acquire))) {
      return {st == k_claim_claiming ? claim_result::kind::held : claim_result::kind::settled,
              seen};
    }
    if (detail::claim_from(word, ident, seen, me, mine)) {
      return {claim_result::kind::took_over, mine};
    }
  }
}

/// Claims \p word: like try_claim, but waits while a live holder is claiming, until it
/// finishes (settled), dies (took_over) or \p wait_ns pass on \p now_ns() (busy). Thread- and
/// process-safe.
template <class Word, class Liveness, class Now>
claim_result claim(Word& word, Word& ident, const claim_identity& me, const Liveness& live,
                   Now&& now_ns, std::uint64_t wait_ns, bool take_dead_settled = false) {
  const std::uint64_t start = now_ns();
  for (;;) {
    const claim_result r = try_claim(word, ident, me, live, take_dead_settled);
    if (r.what != claim_result::kind::held) return r;
    if (now_ns() - start > wait_ns) return {claim_result::kind::busy, r.word};
    std::this_thread::sleep_for(k_claim_poll);
  }
}

/// Step 3: moves my claim \p mine to \p state. False when it is no longer mine (taken over).
/// Thread- and process-safe.
template <class Word>
bool finish_claim(Word& word, std::uint64_t mine, std::uint8_t state) noexcept {
  return word.compare_exchange_strong(mine, with_claim_state(mine, state),
                                      std::memory_order_acq_rel);
}

/// Gives my claim \p mine (in any state) back: the word becomes free, keeping its generation.
/// False when it is no longer mine. Thread- and process-safe.
template <class Word>
bool release_claim(Word& word, std::uint64_t mine) noexcept {
  return word.compare_exchange_strong(mine, claim_word(0, claim_generation(mine), k_claim_free),
                                      std::memory_order_acq_rel);
}

}  // namespace gpuslice
