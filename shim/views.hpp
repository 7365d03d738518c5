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

/// How an array format lays its texels out: \p block_bytes per block of \p block_w x \p block_h
/// texels (1 x 1 for plain formats, 4 x 4 for BC compression), and the further planes of video
/// formats as a factor \p rows_num / \p rows_den over the rows of the first (NV12: 3/2).
struct texel_layout {
  std::uint32_t block_bytes = 0;
  std::uint32_t block_w = 1;
  std::uint32_t block_h = 1;
  std::uint32_t rows_num = 1;
  std::uint32_t rows_den = 1;
};

/// Bytes of one level of \p w x \p h x \p d texels (0 for h or d: a 1D or 2D array) with every
/// row of blocks padded to \p row_align bytes. Pure, thread-safe.
constexpr std::uint64_t level_bytes(const texel_layout& t, std::uint64_t w, std::uint64_t h,
                                    std::uint64_t d, std::uint64_t row_align) noexcept {
  const std::uint64_t bw = (std::max<std::uint64_t>(w, 1) + t.block_w - 1) / t.block_w;
  const std::uint64_t bh = (std::max<std::uint64_t>(h, 1) + t.block_h - 1) / t.block_h;
  const std::uint64_t align = std::max<std::uint64_t>(row_align, 1);
  const std::uint64_t row = (bw * t.block_bytes + align - 1) / align * align;
  const std::uint64_t rows = (bh * t.rows_num + t.rows_den - 1) / t.rows_den;
  return row * rows * std::max<std::uint64_t>(d, 1);
}

/// An array's footprint over its whole mip chain of \p levels (at least 1): each level halves
/// width, height and depth, never below 1, except that the depth of a \p layered array (its
/// layers, or cubemap faces) keeps its count. Pure, thread-safe.
constexpr std::uint64_t array_bytes(const texel_layout& t, std::uint64_t w, std::uint64_t h,
                                    std::uint64_t d, unsigned levels, bool layered,
                                    std::uint64_t row_align) noexcept {
  std::uint64_t total = 0;
  for (unsigned l = 0; l < std::max(levels, 1u); ++l) {
    total += level_bytes(t, w, h, d, row_align);
    w = std::max<std::uint64_t>(w / 2, 1);
    h = h == 0 ? 0 : std::max<std::uint64_t>(h / 2, 1);
    if (!layered) d = d == 0 ? 0 : std::max<std::uint64_t>(d / 2, 1);
  }
  return total;
}

}  // namespace gpuslice::shim
