#pragma once
/// \file
/// result<T>: a value or an error (std::error_code plus a message a person can act on).
/// Operations that can fail return it; hot paths return bool or a plain value instead.

#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace gpuslice {

/// Error conditions of gpuslice, usable with std::error_code.
enum class errc {
  invalid_value = 1,   ///< input does not match its grammar
  out_of_range,        ///< input parses but lies outside the accepted range
  io_error,            ///< an OS call on a file failed (errno detail in the message)
  corrupt,             ///< a shared structure fails validation
  version_mismatch,    ///< a shared structure of another layout version
  busy,                ///< initialisation by another process did not finish in time
  exists,              ///< create_only on something that exists
  not_found,           ///< open_only on something that does not exist
  capacity,            ///< a fixed-size table is full
  unsupported,         ///< the operation is not available in this configuration
};

namespace detail {
/// The category behind gpuslice::errc. Thread-safe (stateless).
class errc_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "gpuslice"; }
  std::string message(int c) const override {
    switch (static_cast<errc>(c)) {
      case errc::invalid_value: return "invalid value";
      case errc::out_of_range: return "value out of range";
      case errc::io_error: return "I/O error";
      case errc::corrupt: return "corrupt data";
      case errc::version_mismatch: return "layout version mismatch";
      case errc::busy: return "busy";
      case errc::exists: return "already exists";
      case errc::not_found: return "not found";
      case errc::capacity: return "capacity exhausted";
      case errc::unsupported: return "unsupported";
    }
    return "unknown gpuslice error";
  }
};
}  // namespace detail

/// The std::error_category of gpuslice errors (a single static instance).
inline const std::error_category& error_category() noexcept {
  static const detail::errc_category instance;
  return instance;
}

/// Makes std::error_code from gpuslice::errc (found by ADL).
inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// An error: a code to branch on and a one-line message that names the input and the
/// expectation.
struct error {
  std::error_code code;
  std::string message;
};

/// Either a T or an error. Not thread-safe to mutate concurrently (a plain value type).
template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit
  result(error e) : v_(std::in_place_index<1>, std::move(e)) {}      // NOLINT: implicit

  /// True when a value is held.
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  /// The value; precondition ok().
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  /// The error; precondition !ok().
  const error& err() const& { return std::get<1>(v_); }
  error&& err() && { return std::get<1>(std::move(v_)); }
  const std::string& message() const { return err().message; }
  std::error_code code() const { return ok() ? std::error_code{} : err().code; }

  /// The value, or \p fallback when an error is held.
  T value_or(T fallback) const { return ok() ? value() : std::move(fallback); }

 private:
  std::variant<T, error> v_;
};

/// Builds an error value for result<T>.
inline error make_error(errc code, std::string message) {
  return error{make_error_code(code), std::move(message)};
}

}  // namespace gpuslice

template <>
struct std::is_error_code_enum<gpuslice::errc> : std::true_type {};
