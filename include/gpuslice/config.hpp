#pragma once
/// \file
/// The environment contract of the shim, parsed into a plain struct by a pure function over a
/// name -> value map (tests never touch the real environment). Variable names are HAMi's, so
/// the shim can replace libvgpu.so without changing the device plugin.
///
/// Failing closed: any value that does not parse makes parse_config return an error naming the
/// variable, the value and the accepted forms. The caller (the shim) must then refuse every
/// allocation; a typo never grants the whole GPU.

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "gpuslice/quantity.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice {

/// Most devices one container may see (HAMi's limit as well).
inline constexpr int k_max_devices = 16;

/// How the SM limit applies (GPU_CORE_UTILIZATION_POLICY).
enum class utilization_policy : std::uint8_t {
  default_policy,  ///< capped while another tenant is active on the device
  force,           ///< always capped
  disable,         ///< never capped
};

/// Launch priority (CUDA_TASK_PRIORITY): a high-priority tenant is never throttled by a low one.
enum class task_priority : std::uint8_t { high = 0, low = 1 };

/// Log verbosity, from LIBCUDA_LOG_LEVEL (0..4) or GPUSLICE_LOG (a name or 0..4).
enum class log_level : std::uint8_t { error = 0, warn = 1, info = 2, debug = 3, trace = 4 };

/// Names of the variables of the contract.
namespace env {
inline constexpr std::string_view memory_limit = "CUDA_DEVICE_MEMORY_LIMIT";
inline constexpr std::string_view sm_limit = "CUDA_DEVICE_SM_LIMIT";
inline constexpr std::string_view shared_cache = "CUDA_DEVICE_MEMORY_SHARED_CACHE";
inline constexpr std::string_view policy = "GPU_CORE_UTILIZATION_POLICY";
inline constexpr std::string_view priority = "CUDA_TASK_PRIORITY";
inline constexpr std::string_view oversubscribe = "CUDA_OVERSUBSCRIBE";
inline constexpr std::string_view oom_killer = "ACTIVE_OOM_KILLER";
inline constexpr std::string_view libcuda_log = "LIBCUDA_LOG_LEVEL";
inline constexpr std::string_view gpuslice_log = "GPUSLICE_LOG";
inline constexpr std::string_view node_region = "GPUSLICE_NODE_REGION";
}  // namespace env

/// The parsed contract. A plain value type.
struct config {
  /// Per-device memory limit after the `_<i>` overrides were applied (i = visible ordinal).
  std::array<memory_limit, k_max_devices> memory{};
  /// Per-device SM percent; 0 means no limit (100 is normalised to 0).
  std::array<std::uint32_t, k_max_devices> sm_percent{};
  /// Ledger file shared by the container's processes; empty = in-process only.
  std::string shared_cache;
  utilization_policy policy = utilization_policy::default_policy;
  task_priority priority = task_priority::low;
  bool oversubscribe = false;
  bool active_oom_killer = false;
  log_level log = log_level::warn;
  /// Node-wide region path; empty = none.
  std::string node_region;

  /// True when device \p i has an SM cap.
  bool sm_limited(int i) const noexcept { return sm_percent.at(static_cast<std::size_t>(i)) != 0; }
};

/// The environment as a sorted map, so errors are reported in a stable order.
using env_map = std::map<std::string, std::string, std::less<>>;

namespace detail {

inline error var_error(std::string_view var, std::string_view value, const std::string& inner) {
  // inner reads 'invalid quantity "x": why; expected forms' - re-head it with the variable.
  std::string why = inner;
  const std::string head = "invalid quantity " + quoted(value) + ": ";
  if (why.rfind(head, 0) == 0) why.erase(0, head.size());
  return make_error(errc::invalid_value,
                    escaped(var) + "=" + quoted(value) + ": " + why);
}

inline error choice_error(std::string_view var, std::string_view value, std::string_view forms) {
  return make_error(errc::invalid_value, escaped(var) + "=" + quoted(value) +
                                             ": unknown value; expected " + std::string(forms));
}

inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

inline std::optional<bool> parse_bool(std::string_view raw) {
  const std::string v = lower(trim(raw));
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  return std::nullopt;
}

/// For NAME_<i>: the device index, or an error when the suffix is not 0..15.
inline result<int> device_suffix(std::string_view name, std::string_view base) {
  std::string_view suffix = name.substr(base.size() + 1);
  int index = 0;
  // One or two digits, no leading zero: "3", "15"; never "03", "a", "" or "123".
  bool ok = !suffix.empty() && suffix.size() <= 2 && !(suffix.size() == 2 && suffix[0] == '0');
  for (std::size_t i = 0; ok && i < suffix.size(); ++i) {
    if (!is_digit(suffix[i])) ok = false;
    index = index * 10 + (suffix[i] - '0');
  }
  if (!ok || index >= k_max_devices) {
    return make_error(errc::invalid_value,
                      escaped(name) + ": the device suffix must be an index from 0 to " +
                          std::to_string(k_max_devices - 1));
  }
  return index;
}

inline bool has_prefix(std::string_view s, std::string_view p) {
  return s.size() > p.size() && s.substr(0, p.size()) == p && s[p.size()] == '_';
}

}  // namespace detail

/// Parses the contract from \p vars (only the contract's names are read; others are ignored).
/// Unset or empty-string-free values fall back to defaults; an empty value is an error.
/// Pure and thread-safe.
inline result<config> parse_config(const env_map& vars) {
  using detail::var_error;
  config cfg;

  auto get = [&](std::string_view name) -> const std::string* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : &it->second;
  };

  // Memory: the plain variable, then the per-device overrides.
  if (const std::string* v = get(env::memory_limit)) {
    auto lim = parse_memory_limit(*v);
    if (!lim) return var_error(env::memory_limit, *v, lim.message());
    cfg.memory.fill(*lim);
  }
  // SM percent, the same way.
  auto parse_sm = [](std::string_view var, const std::string& v) -> result<std::uint32_t> {
    auto pct = parse_percent(v);
    if (!pct) return var_error(var, v, pct.message());
    return *pct == 100 ? 0u : *pct;
  };
  if (const std::string* v = get(env::sm_limit)) {
    auto pct = parse_sm(env::sm_limit, *v);
    if (!pct) return std::move(pct).err();
    cfg.sm_percent.fill(*pct);
  }
  for (const auto& [name, value] : vars) {
    if (detail::has_prefix(name, env::memory_limit)) {
      auto idx = detail::device_suffix(name, env::memory_limit);
      if (!idx) return std::move(idx).err();
      auto lim = parse_memory_limit(value);
      if (!lim) return var_error(name, value, lim.message());
      cfg.memory[static_cast<std::size_t>(*idx)] = *lim;
    } else if (detail::has_prefix(name, env::sm_limit)) {
      auto idx = detail::device_suffix(name, env::sm_limit);
      if (!idx) return std::move(idx).err();
      auto pct = parse_sm(name, value);
      if (!pct) return std::move(pct).err();
      cfg.sm_percent[static_cast<std::size_t>(*idx)] = *pct;
    }
  }

  if (const std::string* v = get(env::shared_cache)) {
    if (v->empty() || detail::trim(*v) != *v) {
      return make_error(errc::invalid_value, std::string(env::shared_cache) + "=" +
                                                 detail::quoted(*v) +
                                                 ": expected a file path without surrounding "
                                                 "whitespace");
    }
    cfg.shared_cache = *v;
  }
  if (const std::string* v = get(env::node_region)) {
    if (v->empty() || detail::trim(*v) != *v) {
      return make_error(errc::invalid_value, std::string(env::node_region) + "=" +
                                                 detail::quoted(*v) +
                                                 ": expected a file path without surrounding "
                                                 "whitespace");
    }
    cfg.node_region = *v;
  }
  if (const std::string* v = get(env::policy)) {
    const std::string p = detail::lower(detail::trim(*v));
    if (p == "default") {
      cfg.policy = utilization_policy::default_policy;
    } else if (p == "force") {
      cfg.policy = utilization_policy::force;
    } else if (p == "disable") {
      cfg.policy = utilization_policy::disable;
    } else {
      return detail::choice_error(env::policy, *v, "default, force or disable");
    }
  }
  if (const std::string* v = get(env::priority)) {
    const std::string_view p = detail::trim(*v);
    if (p == "0") {
      cfg.priority = task_priority::high;
    } else if (p == "1") {
      cfg.priority = task_priority::low;
    } else {
      return detail::choice_error(env::priority, *v, "0 (high) or 1 (low)");
    }
  }
  for (auto [name, field] : {std::pair{env::oversubscribe, &config::oversubscribe},
                             std::pair{env::oom_killer, &config::active_oom_killer}}) {
    if (const std::string* v = get(name)) {
      auto b = detail::parse_bool(*v);
      if (!b) return detail::choice_error(name, *v, "true or false (also 1/0, yes/no, on/off)");
      cfg.*field = *b;
    }
  }
  // GPUSLICE_LOG wins over LIBCUDA_LOG_LEVEL when both are set.
  for (std::string_view name : {env::gpuslice_log, env::libcuda_log}) {
    const std::string* v = get(name);
    if (v == nullptr) continue;
    const std::string l = detail::lower(detail::trim(*v));
    static constexpr std::array<std::string_view, 5> k_names = {"error", "warn", "info", "debug",
                                                                "trace"};
    int level = -1;
    for (std::size_t i = 0; i < k_names.size(); ++i) {
      if (l == k_names[i] || (l.size() == 1 && l[0] == static_cast<char>('0' + i))) {
        level = static_cast<int>(i);
      }
    }
    if (l == "warning") level = static_cast<int>(log_level::warn);
    if (level < 0) {
      return detail::choice_error(name, *v, "0-4 or error, warn, info, debug, trace");
    }
    cfg.log = static_cast<log_level>(level);
    break;
  }
  return cfg;
}

/// Names of the policy values, for messages.
inline std::string_view to_string(utilization_policy p) noexcept {
  switch (p) {
    case utilization_policy::default_policy: return "default";
    case utilization_policy::force: return "force";
    case utilization_policy::disable: return "disable";
  }
  return "?";
}

}  // namespace gpuslice
