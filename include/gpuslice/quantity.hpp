#pragma once
/// \file
/// Quantities of the environment contract: bytes ("3000m", "1.5Gi", "1024"), memory limits
/// that may be a share of the device ("50%"), SM percentages ("30") and milli-GPU shares.
///
/// Grammar (strict; anything else is an error that says what was expected):
///   quantity := number [unit]          surrounding ASCII whitespace is ignored, inner is not
///   number   := digits ["." digits]    no sign, no exponent, at most 18 fraction digits
///   unit     := k m g t | K M G T | Ki Mi Gi Ti | KiB MiB GiB TiB      (all powers of 1024)
/// No unit means bytes, and then the number must be an integer. A fractional amount of a unit
/// is rounded down to whole bytes (a limit never grows by rounding). `MB`, `GB`, `kB` ... are
/// refused as ambiguous: HAMi reads `m` as MiB, while SI readers take `MB` as 10^6.
/// All functions here are pure and thread-safe.

#include <cstdint>
#include <string>
#include <string_view>

#include "gpuslice/result.hpp"

namespace gpuslice {

/// The accepted forms, quoted in every error message.
inline constexpr std::string_view k_bytes_forms =
    "a non-negative number with an optional unit k/m/g/t, K/M/G/T, Ki/Mi/Gi/Ti or KiB/MiB/GiB/TiB "
    "(powers of 1024; no unit = bytes)";
inline constexpr std::string_view k_memory_forms =
    "a non-negative number with an optional unit k/m/g/t, K/M/G/T, Ki/Mi/Gi/Ti or KiB/MiB/GiB/TiB "
    "(powers of 1024; no unit = bytes), or an integer percentage of the device from 0% to 100%";
inline constexpr std::string_view k_percent_forms = "an integer from 0 to 100, optionally with %";

namespace detail {

/// Largest number of fraction digits kept: 10^18 still fits in 64 bits.
inline constexpr int k_max_fraction_digits = 18;
/// Binary prefix steps: 1 KiB = 2^10 bytes.
inline constexpr unsigned k_binary_step_bits = 10;

inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

/// Escapes quotes, backslashes and non-printable bytes so a message stays one printable line.
inline std::string escaped(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      static constexpr char k_hex[] = "0123456789abcdef";
      out += "\\x";
      out += k_hex[(static_cast<unsigned char>(c) >> 4) & 0xf];
      out += k_hex[static_cast<unsigned char>(c) & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

/// escaped(s) in double quotes.
inline std::string quoted(std::string_view s) { return '"' + escaped(s) + '"'; }

inline error value_error(std::string_view value, std::string_view why,
                         std::string_view forms, errc code = errc::invalid_value) {
  std::string msg = "invalid quantity " + quoted(value) + ": " + std::string(why) +
                    "; expected " + std::string(forms);
  return make_error(code, std::move(msg));
}

/// Splits "12.5Gi" into a number and a unit. Returns false on grammar errors with \p why set.
struct number_parts {
  std::uint64_t integer = 0;
  std::uint64_t fraction = 0;       ///< fraction digits as an integer
  std::uint64_t fraction_scale = 1;  ///< 10^(number of fraction digits)
  bool has_fraction = false;
  std::string_view unit;
  bool overflow = false;  ///< set when split_number failed because the number is too large
};

inline bool split_number(std::string_view s, number_parts& out, std::string& why) {
  if (s.empty()) {
    why = "the value is empty";
    return false;
  }
  for (char c : s) {
    if (is_space(c)) {
      why = "whitespace inside the value";
      return false;
    }
  }
  if (s.front() == '-' || s.front() == '+') {
    why = "a sign is not allowed";
    return false;
  }
  std::size_t i = 0;
  if (!is_digit(s[0])) {
    why = "it does not start with a digit";
    return false;
  }
  while (i < s.size() && is_digit(s[i])) {
    const auto d = static_cast<std::uint64_t>(s[i] - '0');
    if (__builtin_mul_overflow(out.integer, std::uint64_t{10}, &out.integer) ||
        __builtin_add_overflow(out.integer, d, &out.integer)) {
      why = "the number does not fit in 64 bits";
      out.overflow = true;
      return false;
    }
    ++i;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    out.has_fraction = true;
    int digits = 0;
    if (i >= s.size() || !is_digit(s[i])) {
      why = "a digit must follow the decimal point";
      return false;
    }
    while (i < s.size() && is_digit(s[i])) {
      if (digits == k_max_fraction_digits) {
        why = "more than 18 fraction digits";
        return false;
      }
      out.fraction = out.fraction * 10 + static_cast<std::uint64_t>(s[i] - '0');
      out.fraction_scale *= 10;
      ++digits;
      ++i;
    }
    if (i < s.size() && (s[i] == '.' || is_digit(s[i]))) {
      why = "more than one decimal point";
      return false;
    }
  }
  out.unit = s.substr(i);
  return true;
}

/// Bits of the binary multiplier of a unit: "" -> 0, "k"/"K"/"Ki"/"KiB" -> 10, ...
/// Returns -1 for an unknown unit, -2 for an ambiguous SI-looking one.
inline int unit_shift(std::string_view u) {
  if (u.empty()) return 0;
  static constexpr std::string_view k_letters = "KMGT";
  const char first = u[0];
  int step = -1;
  for (std::size_t j = 0; j < k_letters.size(); ++j) {
    if (first == k_letters[j] || first == k_letters[j] - 'A' + 'a') step = static_cast<int>(j) + 1;
  }
  if (step < 0) return -1;
  const std::string_view rest = u.substr(1);
  const bool lower = first >= 'a';
  if (rest.empty()) return step * static_cast<int>(k_binary_step_bits);
  if (!lower && (rest == "i" || rest == "iB")) return step * static_cast<int>(k_binary_step_bits);
  if (rest == "B" || rest == "b") return -2;
  return -1;
}

/// Scales parts by 2^shift exactly, rounding a fractional byte count down.
inline bool scale(const number_parts& p, int shift, std::uint64_t& out) {
  const std::uint64_t mult = std::uint64_t{1} << shift;
  std::uint64_t whole = 0;
  if (__builtin_mul_overflow(p.integer, mult, &whole)) return false;
  __extension__ using u128 = unsigned __int128;
  const u128 frac = static_cast<u128>(p.fraction) * mult / p.fraction_scale;
  std::uint64_t frac64 = static_cast<std::uint64_t>(frac);
  return !__builtin_add_overflow(whole, frac64, &out);
}

inline result<std::uint64_t> parse_bytes_impl(std::string_view raw, std::string_view forms) {
  const std::string_view s = trim(raw);
  number_parts p;
  std::string why;
  if (!split_number(s, p, why)) {
    return value_error(raw, why, forms, p.overflow ? errc::out_of_range : errc::invalid_value);
  }
  const int shift = unit_shift(p.unit);
  if (shift == -2) {
    return value_error(raw,
                       "unit " + quoted(p.unit) + " is ambiguous (use " +
                           std::string(1, static_cast<char>(p.unit[0] & ~0x20)) + ", " +
                           std::string(1, static_cast<char>(p.unit[0] & ~0x20)) + "i or " +
                           std::string(1, static_cast<char>(p.unit[0] & ~0x20)) +
                           "iB for a power of 1024)",
                       forms);
  }
  if (shift < 0) return value_error(raw, "unknown unit " + quoted(p.unit), forms);
  if (shift == 0 && p.has_fraction) {
    return value_error(raw, "a byte count without a unit must be an integer", forms);
  }
  std::uint64_t out = 0;
  if (!scale(p, shift, out)) {
    return value_error(raw, "the value does not fit in 64 bits", forms, errc::out_of_range);
  }
  return out;
}

}  // namespace detail

/// Parses a byte quantity ("3000m" = 3000 MiB, "1.5Gi", "4096"). Pure, thread-safe.
inline result<std::uint64_t> parse_bytes(std::string_view text) {
  return detail::parse_bytes_impl(text, k_bytes_forms);
}

/// Formats bytes in the largest binary unit that divides them exactly ("3000Mi", "1Gi", "17").
/// parse_bytes(format_bytes(n)) == n for every n. Pure, thread-safe.
inline std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* k_units[] = {"", "Ki", "Mi", "Gi", "Ti"};
  int unit = 0;
  while (unit < 4 && bytes != 0 && (bytes & ((std::uint64_t{1} << detail::k_binary_step_bits) - 1)) == 0) {
    bytes >>= detail::k_binary_step_bits;
    ++unit;
  }
  return std::to_string(bytes) + k_units[unit];
}

/// A memory limit: none, an absolute byte count, or a percentage of the device's memory.
struct memory_limit {
  enum class kind : std::uint8_t { none, bytes, percent };
  kind type = kind::none;
  std::uint64_t bytes = 0;    ///< valid when type == bytes (never 0: 0 means none)
  std::uint32_t percent = 0;  ///< valid when type == percent, 1..100

  /// True when the limit restricts anything.
  bool limited() const noexcept { return type != kind::none; }

  /// The limit in bytes on a device with \p device_total bytes; none -> device_total.
  /// A percentage rounds down. Never more than the device has.
  std::uint64_t resolve(std::uint64_t device_total) const noexcept {
    switch (type) {
      case kind::none: return device_total;
      case kind::bytes: return bytes < device_total ? bytes : device_total;
      case kind::percent: {
        __extension__ using u128 = unsigned __int128;
        return static_cast<std::uint64_t>(static_cast<u128>(device_total) * percent / 100);
      }
    }
    return 0;
  }

  friend bool operator==(const memory_limit& a, const memory_limit& b) {
    return a.type == b.type && a.bytes == b.bytes && a.percent == b.percent;
  }
  friend bool operator!=(const memory_limit& a, const memory_limit& b) { return !(a == b); }
};

namespace detail {
/// Parses an integer percentage 0..100 with an optional trailing %.
inline result<std::uint32_t> parse_percent_impl(std::string_view raw, bool require_sign,
                                                std::string_view forms) {
  std::string_view s = trim(raw);
  if (!s.empty() && s.back() == '%') {
    s.remove_suffix(1);
  } else if (require_sign) {
    return value_error(raw, "a percentage needs a trailing %", forms);
  }
  number_parts p;
  std::string why;
  if (!split_number(s, p, why)) return value_error(raw, why, forms);
  if (!p.unit.empty()) return value_error(raw, "unexpected " + quoted(p.unit), forms);
  if (p.has_fraction) return value_error(raw, "a percentage must be an integer", forms);
  if (p.integer > 100) return value_error(raw, "above 100%", forms, errc::out_of_range);
  return static_cast<std::uint32_t>(p.integer);
}
}  // namespace detail

/// Parses a memory limit: a byte quantity or "N%" (0..100). "0" and "0%" mean no limit.
/// Pure, thread-safe.
inline result<memory_limit> parse_memory_limit(std::string_view text) {
  const std::string_view s = detail::trim(text);
  memory_limit out;
  if (!s.empty() && s.back() == '%') {
    auto pct = detail::parse_percent_impl(text, true, k_memory_forms);
    if (!pct) return std::move(pct).err();
    if (*pct != 0) {
      out.type = memory_limit::kind::percent;
      out.percent = *pct;
    }
    return out;
  }
  auto b = detail::parse_bytes_impl(text, k_memory_forms);
  if (!b) return std::move(b).err();
  if (*b != 0) {
    out.type = memory_limit::kind::bytes;
    out.bytes = *b;
  }
  return out;
}

/// Parses an SM percentage "0".."100" (a trailing % is accepted). Pure, thread-safe.
inline result<std::uint32_t> parse_percent(std::string_view text) {
  return detail::parse_percent_impl(text, false, k_percent_forms);
}

/// Milli-GPU: 1000 = one whole GPU = 100 HAMi cores percent.
inline constexpr std::uint32_t k_milli_per_gpu = 1000;
/// HAMi cores percent of one whole GPU.
inline constexpr std::uint32_t k_cores_per_gpu = 100;

/// Converts HAMi cores percent to milli-GPU (exact: 1 core percent = 10 milli).
constexpr std::uint32_t cores_to_milli(std::uint32_t cores) noexcept {
  return cores * (k_milli_per_gpu / k_cores_per_gpu);
}
/// Converts milli-GPU to HAMi cores percent, rounding up so a share is never under-reserved.
constexpr std::uint32_t milli_to_cores(std::uint32_t milli) noexcept {
  constexpr std::uint32_t step = k_milli_per_gpu / k_cores_per_gpu;
  return (milli + step - 1) / step;
}

}  // namespace gpuslice
