#pragma once
/// \file
/// Constants that two shared layouts must agree on, defined once. The memory ledger's device
/// record reserves k_rate_words words that the SM limiter's token bucket lays out; both
/// re-export this one definition (memory::k_rate_words, rate::k_rate_words) and assert their
/// use of it.

#include <cstddef>

namespace gpuslice {

/// 64-bit words per device that the ledger reserves for the SM limiter's shared token bucket.
inline constexpr std::size_t k_rate_words = 8;

}  // namespace gpuslice
