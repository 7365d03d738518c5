#pragma once
/// \file
/// A few Prometheus metrics in the text exposition format (version 0.0.4), for the example
/// programs: a latency histogram with fixed buckets and a counter keyed by a label value. Enough
/// for a scrape endpoint without a client library. Thread-safe as each method says.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace gpuslice::metrics {

/// Escapes a label value (backslash, double quote, newline), as the format requires. Pure.
inline std::string escape_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

/// Writes "# HELP" and "# TYPE" lines. Pure apart from \p out.
inline void header(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help) {
  out += "# HELP " + std::string(name) + " " + std::string(help) + "\n";
  out += "# TYPE " + std::string(name) + " " + std::string(type) + "\n";
}

/// A latency histogram in seconds with buckets from 0.5 ms to 10 s. observe() is lock-free
/// and thread-safe; render() may run concurrently (it reads a consistent-enough snapshot, as
/// Prometheus client libraries do).
class histogram {
 public:
  /// Upper bounds, seconds: fine below kube-scheduler's timeouts, coarse above.
  static constexpr std::array<double, 12> k_bounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05,   0.1,   0.25,   0.5,   1.0,  10.0};

  /// Records one observation of \p seconds. Thread-safe.
  void observe(double seconds) noexcept {
    std::size_t i = 0;
    while (i < k_bounds.size() && seconds > k_bounds[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    constexpr double k_nanos = 1e9;
    sum_ns_.fetch_add(static_cast<std::uint64_t>(seconds * k_nanos), std::memory_order_relaxed);
  }

  /// Observations so far. Thread-safe.
  std::uint64_t count() const noexcept {
    std::uint64_t n = 0;
    for (const auto& c : counts_) n += c.load(std::memory_order_relaxed);
    return n;
  }

  /// Appends the series of \p name with the label set \p labels (`verb="filter"`, or empty).
  /// Thread-safe.
  void render(std::string& out, std::string_view name, std::string_view labels) const {
    const std::string sep = labels.empty() ? "" : ",";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= k_bounds.size(); ++i) {
      cumulative += counts_[i].load(std::memory_order_relaxed);
      const std::string le = i < k_bounds.size() ? number(k_bounds[i]) : "+Inf";
      out += std::string(name) + "_bucket{" + std::string(labels) + sep + "le=\"" + le + "\"} " +
             std::to_string(cumulative) + "\n";
    }
    const std::string braces = labels.empty() ? "" : "{" + std::string(labels) + "}";
    constexpr double k_nanos = 1e9;
    out += std::string(name) + "_sum" + braces + " " +
           number(static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / k_nanos) + "\n";
    out += std::string(name) + "_count" + braces + " " + std::to_string(cumulative) + "\n";
  }

  /// A number as Prometheus reads it (shortest round trip is not needed; 9 digits are).
  static std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
  }

 private:
  std::array<std::atomic<std::uint64_t>, k_bounds.size() + 1> counts_{};
  std::atomic<std::uint64_t> sum_ns_{0};
};

/// A counter per label value (e.g. failures by reason). Thread-safe (one mutex; counted on
/// failures only, never on the hot path of a success).
class labelled_counter {
 public:
  /// Adds \p n to the series of \p value. Thread-safe.
  void add(const std::string& value, std::uint64_t n = 1) {
    std::lock_guard lock(mu_);
    counts_[value] += n;
  }
  /// The count of \p value. Thread-safe.
  std::uint64_t get(const std::string& value) const {
    std::lock_guard lock(mu_);
    const auto it = counts_.find(value);
    return it == counts_.end() ? 0 : it->second;
  }
  /// Appends `name{label="value"} n` per value, in value order. Thread-safe.
  void render(std::string& out, std::string_view name, std::string_view label) const {
    std::lock_guard lock(mu_);
    for (const auto& [v, n] : counts_) {
      out += std::string(name) + "{" + std::string(label) + "=\"" + escape_label(v) + "\"} " +
             std::to_string(n) + "\n";
    }
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> counts_;
};

}  // namespace gpuslice::metrics
