#pragma once
/// \file
/// Command-line pieces the HTTP programs share: integer flag values, and the HAMi scheduler
/// configuration flags (kube::config) that the extender and the webhook both take.

#include <fmt/core.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>

#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/fit.hpp"
#include "kube.hpp"

namespace gpuslice::cli {

/// Parses a non-negative integer flag value of at most \p max; on failure prints one line
/// naming \p program, the flag and the expectation.
inline bool number(std::string_view program, std::string_view flag, const std::string& value,
                   std::uint64_t max, std::uint64_t& out) {
  if (fit::detail::parse_uint(value, max, out)) return true;
  fmt::print(stderr, "{}: {} {}: expected an integer 0..{}\n", program, flag, value, max);
  return false;
}

/// Applies \p arg \p value to \p cfg when \p arg is one of the configuration flags both the
/// extender and the webhook take (--resource-name, --resource-mem, --resource-mem-percentage,
/// --resource-cores, --default-gpu-num, --default-mem, --default-cores). Returns nullopt for
/// any other flag, false for a bad value (after one line on stderr), true when applied.
inline std::optional<bool> config_flag(std::string_view program, std::string_view arg,
                                       const std::string& value, kube::config& cfg) {
  constexpr std::uint64_t k_max_gpu_num = 1024;
  std::uint64_t n = 0;
  if (arg == "--resource-name") {
    cfg.resource_count = value;
  } else if (arg == "--resource-mem") {
    cfg.resource_memory = value;
  } else if (arg == "--resource-mem-percentage") {
    cfg.resource_memory_percent = value;
  } else if (arg == "--resource-cores") {
    cfg.resource_cores = value;
  } else if (arg == "--default-gpu-num") {
    if (!number(program, arg, value, k_max_gpu_num, n)) return false;
    cfg.default_gpu_num = static_cast<std::uint32_t>(n);
  } else if (arg == "--default-mem") {
    if (!number(program, arg, value, fit::k_int32_max, n)) return false;
    cfg.default_memory = n;
  } else if (arg == "--default-cores") {
    if (!number(program, arg, value, fit::k_max_percent, n)) return false;
    cfg.default_cores = static_cast<std::uint32_t>(n);
  } else {
    return std::nullopt;
  }
  return true;
}

}  // namespace gpuslice::cli
