#pragma once
/// \file
/// The memory figures the shim reports in place of the driver's (cuMemGetInfo_v2,
/// cuDeviceTotalMem_v2, nvmlDeviceGetMemoryInfo[_v2]). Pure functions of the limit, the ledger's
/// use and what the card really has, so they are tested without a driver. Standard library only.

#include <algorithm>
#include <cstdint>

namespace gpuslice::shim {

/// A device's memory as the tenant sees it.
struct memory_view {
  std::uint64_t total = 0;  ///< the limit, never more than the card has
  std::uint64_t free = 0;   ///< limit - use, never below 0 and never more than the card has free
  std::uint64_t used = 0;   ///< the ledger's use of the device, never more than total
};

/// The view of a device with \p limit bytes of quota of which \p used are in use, on a card with
/// \p card_total bytes of which \p card_free are free. Use above the limit (a limit lowered
/// under running processes, or memory counted after the fact) reads as full, never as an error
/// and never as an underflowed huge free figure. Pure, thread-safe.
constexpr memory_view make_view(std::uint64_t limit, std::uint64_t used, std::uint64_t card_total,
                                std::uint64_t card_free) noexcept {
  memory_view v;
  v.total = std::min(limit, card_total);
  v.used = std::min(used, v.total);
  v.free = std::min(v.total - v.used, card_free);
  return v;
}

/// The view when the shim fails closed (bad configuration, unusable ledger): the card's real
/// size, nothing free. Pure, thread-safe.
constexpr memory_view closed_view(std::uint64_t card_total) noexcept {
  return memory_view{card_total, 0, card_total};
}

/// Bytes to add to (positive) or return from (negative) a charge of \p charged bytes so that it
/// equals \p actual, as a pair {more, less}; one of them is 0. Pure, thread-safe.
struct settle_delta {
  std::uint64_t more = 0;
  std::uint64_t less = 0;
};
/// See settle_delta.
constexpr settle_delta settle(std::uint64_t charged, std::uint64_t actual) noexcept {
  return actual >= charged ? settle_delta{actual - charged, 0} : settle_delta{0, charged - actual};
}

/// Bytes of driver memory this process holds that no counted call showed: the driver's
/// per-process figure minus what was counted, or 0 when the counted figure is higher (memory
/// reserved but not yet taken by the driver). Pure, thread-safe.
constexpr std::uint64_t uncounted_overhead(std::uint64_t driver_figure,
                                           std::uint64_t counted) noexcept {
  return driver_figure > counted ? driver_figure - counted : 0;
}

}  // namespace gpuslice::shim
