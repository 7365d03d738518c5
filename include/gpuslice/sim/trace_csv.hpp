#pragma once
/// \file
/// Readers of the Alibaba cluster-trace-gpu-v2023 ("openb") CSV files. Columns are found by
/// the header's names; extra columns are ignored. Node lists need sn, cpu_milli, memory_mib,
/// gpu, model; pod lists need name, cpu_milli, memory_mib, num_gpu, gpu_milli and may carry
/// gpu_spec, creation_time and deletion_time (the multigpu variants have the first five only).
/// A malformed row is an error naming the file, the line and the column. Pure functions:
/// thread-safe.

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "gpuslice/result.hpp"
#include "gpuslice/sim/workload.hpp"

namespace gpuslice::sim {

namespace detail {

/// Longest cell value quoted back in an error message.
inline constexpr std::size_t k_csv_quote_max = 40;

/// Splits one line on ',' (the traces never quote). Strips one trailing '\r'.
inline void csv_split(std::string_view line, std::vector<std::string_view>& out) {
  out.clear();
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = line.find(',', start);
    if (comma == std::string_view::npos) {
      out.push_back(line.substr(start));
      return;
    }
    out.push_back(line.substr(start, comma - start));
    start = comma + 1;
  }
}

/// Shows a cell in an error message: quoted, shortened, control bytes escaped.
inline std::string csv_show(std::string_view v) {
  std::string s = "'";
  for (std::size_t i = 0; i < v.size() && i < k_csv_quote_max; ++i) {
    const auto c = static_cast<unsigned char>(v[i]);
    constexpr unsigned char printable_min = 0x20;
    constexpr unsigned char del = 0x7f;
    if (c < printable_min || c == del) {
      constexpr char hex[] = "0123456789abcdef";
      constexpr int nibble = 4;
      constexpr unsigned low = 0xf;
      s += "\\x";
      s += hex[c >> nibble];
      s += hex[c & low];
    } else {
      s += static_cast<char>(c);
    }
  }
  if (v.size() > k_csv_quote_max) s += "...";
  return s + "'";
}

/// Parses a non-negative decimal integer (no sign, no spaces) up to max; false otherwise.
inline bool csv_uint(std::string_view v, std::int64_t max, std::int64_t& out) noexcept {
  if (v.empty()) return false;
  constexpr int base = 10;
  std::int64_t x = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    const int d = c - '0';
    if (x > max / base) return false;
    x *= base;
    if (x > max - d) return false;
    x += d;
  }
  out = x;
  return true;
}

/// A cursor over the lines of a CSV text with its header's column positions.
class csv_table {
 public:
  csv_table(std::string_view text, std::string_view file) : text_(text), file_(file) {}

  /// Reads the header and finds the columns; required ones must exist.
  template <std::size_t N>
  result<bool> header(const std::array<std::string_view, N>& names, std::size_t required,
                      std::array<int, N>& pos) {
    std::string_view line;
    if (!next(line))
      return make_error(errc::invalid_value,
                        std::string(file_) + ": empty file, expected a CSV header");
    csv_split(line, cells_);
    columns_ = cells_.size();
    for (std::size_t k = 0; k < N; ++k) {
      pos[k] = -1;
      for (std::size_t c = 0; c < cells_.size(); ++c) {
        if (cells_[c] == names[k]) pos[k] = static_cast<int>(c);
      }
      if (k < required && pos[k] < 0) {
        return make_error(errc::invalid_value, std::string(file_) + ":1: header lacks column '" +
                                                   std::string(names[k]) + "'");
      }
    }
    return true;
  }

  /// Advances to the next non-empty data row; false at the end. Errors on a wrong cell count.
  result<bool> row() {
    std::string_view line;
    for (;;) {
      if (!next(line)) return false;
      if (!line.empty() && line != "\r") break;
    }
    csv_split(line, cells_);
    if (cells_.size() != columns_) {
      return make_error(errc::invalid_value, where() + ": expected " + std::to_string(columns_) +
                                                 " columns as in the header, got " +
                                                 std::to_string(cells_.size()));
    }
    return true;
  }

  /// Cell at position p of the current row.
  std::string_view cell(int p) const { return cells_[static_cast<std::size_t>(p)]; }

  /// An integer cell in 0..max, or an error naming file, line and column.
  result<std::int64_t> integer(int p, std::string_view column, std::int64_t max) const {
    std::int64_t v = 0;
    if (!csv_uint(cell(p), max, v)) {
      return make_error(errc::invalid_value, where() + ": column '" + std::string(column) +
                                                 "': expected an integer in 0.." +
                                                 std::to_string(max) + ", got " +
                                                 csv_show(cell(p)));
    }
    return v;
  }

  /// "file:line" of the current row.
  std::string where() const { return std::string(file_) + ":" + std::to_string(line_); }

 private:
  bool next(std::string_view& line) {
    if (at_ >= text_.size()) return false;
    const std::size_t nl = text_.find('\n', at_);
    const std::size_t end = nl == std::string_view::npos ? text_.size() : nl;
    line = text_.substr(at_, end - at_);
    at_ = end + 1;
    ++line_;
    return true;
  }

  std::string_view text_;
  std::string_view file_;
  std::size_t at_ = 0;
  std::size_t line_ = 0;
  std::size_t columns_ = 0;
  std::vector<std::string_view> cells_;
};

/// Largest milli-CPU or MiB value accepted (far above any real node).
inline constexpr std::int64_t k_csv_max_amount = std::int64_t{1} << 40;
/// Largest timestamp accepted, in seconds.
inline constexpr std::int64_t k_csv_max_time = std::int64_t{1} << 50;
/// Largest num_gpu accepted.
inline constexpr std::int64_t k_csv_max_gpus = fit::k_openb_max_gpus;
/// Largest gpu_milli accepted before clamping to 1000.
inline constexpr std::int64_t k_csv_max_milli = std::numeric_limits<int>::max();

}  // namespace detail

/// Parses a node list (sn,cpu_milli,memory_mib,gpu,model). file names the input in errors.
inline result<std::vector<trace_node>> parse_nodes_csv(std::string_view text,
                                                       std::string_view file) {
  static constexpr std::array<std::string_view, 5> names = {"sn", "cpu_milli", "memory_mib", "gpu",
                                                            "model"};
  detail::csv_table t(text, file);
  std::array<int, 5> pos{};
  auto h = t.header(names, names.size(), pos);
  if (!h) return std::move(h).err();
  std::vector<trace_node> out;
  for (;;) {
    auto r = t.row();
    if (!r) return std::move(r).err();
    if (!*r) break;
    trace_node n;
    n.name = std::string(t.cell(pos[0]));
    if (n.name.empty()) {
      return make_error(errc::invalid_value,
                        t.where() + ": column 'sn': expected a node name, got ''");
    }
    auto cpu = t.integer(pos[1], names[1], detail::k_csv_max_amount);
    if (!cpu) return std::move(cpu).err();
    auto mem = t.integer(pos[2], names[2], detail::k_csv_max_amount);
    if (!mem) return std::move(mem).err();
    auto gpu = t.integer(pos[3], names[3], detail::k_csv_max_gpus);
    if (!gpu) return std::move(gpu).err();
    n.cpu = *cpu;
    n.mem = *mem;
    n.gpus = static_cast<int>(*gpu);
    n.model = std::string(t.cell(pos[4]));
    if (n.gpus > 0 && n.model.empty()) {
      return make_error(errc::invalid_value,
                        t.where() + ": column 'model': expected a GPU model for a node with " +
                            std::to_string(n.gpus) + " GPUs, got ''");
    }
    out.push_back(std::move(n));
  }
  if (out.empty()) return make_error(errc::invalid_value, std::string(file) + ": no node rows");
  return out;
}

/// Parses a pod list (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...,creation_time,
/// deletion_time,...]). file names the input in errors.
inline result<std::vector<trace_pod>> parse_pods_csv(std::string_view text, std::string_view file) {
  static constexpr std::array<std::string_view, 8> names = {
      "name",      "cpu_milli", "memory_mib",    "num_gpu",
      "gpu_milli", "gpu_spec",  "creation_time", "deletion_time"};
  constexpr std::size_t required = 5;
  detail::csv_table t(text, file);
  std::array<int, 8> pos{};
  auto h = t.header(names, required, pos);
  if (!h) return std::move(h).err();
  const bool times = pos[6] >= 0 && pos[7] >= 0;
  std::vector<trace_pod> out;
  for (;;) {
    auto r = t.row();
    if (!r) return std::move(r).err();
    if (!*r) break;
    trace_pod p;
    p.name = std::string(t.cell(pos[0]));
    if (p.name.empty()) {
      return make_error(errc::invalid_value,
                        t.where() + ": column 'name': expected a pod name, got ''");
    }
    auto cpu = t.integer(pos[1], names[1], detail::k_csv_max_amount);
    if (!cpu) return std::move(cpu).err();
    auto mem = t.integer(pos[2], names[2], detail::k_csv_max_amount);
    if (!mem) return std::move(mem).err();
    auto n = t.integer(pos[3], names[3], detail::k_csv_max_gpus);
    if (!n) return std::move(n).err();
    auto m = t.integer(pos[4], names[4], detail::k_csv_max_milli);
    if (!m) return std::move(m).err();
    p.cpu = *cpu;
    p.mem = *mem;
    p.num_gpu = static_cast<int>(*n);
    p.gpu_milli = static_cast<int>(*m);
    if (p.num_gpu >= 2 && p.gpu_milli < fit::k_openb_gpu_milli) {
      return make_error(errc::unsupported,
                        t.where() + ": column 'gpu_milli': expected 1000 or more for num_gpu=" +
                            std::to_string(p.num_gpu) + " (multi-GPU pods take whole GPUs), got " +
                            detail::csv_show(t.cell(pos[4])));
    }
    if (pos[5] >= 0) p.gpu_spec = std::string(t.cell(pos[5]));
    if (times) {
      auto c = t.integer(pos[6], names[6], detail::k_csv_max_time);
      if (!c) return std::move(c).err();
      auto d = t.integer(pos[7], names[7], detail::k_csv_max_time);
      if (!d) return std::move(d).err();
      p.creation = *c;
      p.deletion = *d;
    }
    out.push_back(std::move(p));
  }
  if (out.empty()) return make_error(errc::invalid_value, std::string(file) + ": no pod rows");
  return out;
}

}  // namespace gpuslice::sim
