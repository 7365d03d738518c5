#pragma once
/// \file
/// Codecs for HAMi's annotations, so a controller built on gpuslice interoperates with HAMi's
/// device plugin and scheduler:
///   - pod devices (`hami.io/vgpu-devices-allocated`, `...-to-allocate`): per device
///     `UUID,TYPE,MEM_MIB,CORES:`, each container closed by `;`, containers without devices kept
///     as an empty entry (`GPU-a,NVIDIA,1024,30:;;GPU-b,NVIDIA,2048,0:GPU-c,NVIDIA,2048,0:;`).
///     `;` closes a container, so N containers give N entries; HAMi's own decoder also appends
///     an empty container after the last `;`. Input without the final `;` (older encoders
///     joined containers with `;`) is read the same way.
///   - node registration (`hami.io/node-nvidia-register`): the JSON array HAMi writes
///     (`[{"id":..,"index":..,"count":..,"devmem":..,"devcore":..,"type":..,"numa":..,
///     "mode":..,"health":..}]`, missing fields are zero as with Go's omitempty, unknown fields
///     skipped) or the older colon form `ID,COUNT,DEVMEM,DEVCORE,TYPE,NUMA,HEALTH[,INDEX,MODE]:`.
///   - device pair scores (`[{"uuid":..,"score":{"<uuid>":N,..}},..]`) into a link_matrix.
/// Malformed input is a result error with one line naming the place and the expectation; no
/// input crashes or hangs (fuzzed). Pure functions, thread-safe.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "gpuslice/fit/model.hpp"
#include "gpuslice/quantity.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::fit {

/// Bytes per MiB: HAMi's annotations count device memory in MiB.
inline constexpr std::uint64_t k_bytes_per_mib = std::uint64_t{1} << 20;
/// HAMi's fields are Go int32.
inline constexpr std::uint64_t k_int32_max = 2147483647;
/// Deepest JSON nesting accepted (bounds recursion on hostile input).
inline constexpr int k_max_json_depth = 32;

/// One device of a container in HAMi's pod annotation.
struct annotated_device {
  std::string uuid;
  std::string type;  ///< "NVIDIA"
  std::uint64_t memory_mib = 0;
  std::uint32_t cores = 0;  ///< HAMi cores percent (0..100)
  friend bool operator==(const annotated_device& a, const annotated_device& b) {
    return a.uuid == b.uuid && a.type == b.type && a.memory_mib == b.memory_mib &&
           a.cores == b.cores;
  }
};

/// The devices of one container (empty for a container without GPUs).
using annotated_container = std::vector<annotated_device>;

namespace detail {

using ::gpuslice::detail::is_digit;
using ::gpuslice::detail::is_space;
using ::gpuslice::detail::quoted;

/// At most this many input characters are quoted in an error message.
inline constexpr std::size_t k_excerpt_chars = 40;

inline std::string excerpt(std::string_view s) {
  if (s.size() <= k_excerpt_chars) return quoted(s);
  return quoted(s.substr(0, k_excerpt_chars)) + "...";
}

/// Parses a decimal integer of at most \p max; false on anything else.
inline bool parse_uint(std::string_view s, std::uint64_t max, std::uint64_t& out) {
  if (s.empty()) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) return false;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
    if (v > max) return false;
  }
  out = v;
  return true;
}

inline bool parse_int(std::string_view s, std::int64_t min, std::int64_t max, std::int64_t& out) {
  const bool neg = !s.empty() && s[0] == '-';
  std::uint64_t mag = 0;
  const std::uint64_t lim =
      neg ? static_cast<std::uint64_t>(-min) : static_cast<std::uint64_t>(max);
  if (!parse_uint(neg ? s.substr(1) : s, lim, mag)) return false;
  out = neg ? -static_cast<std::int64_t>(mag) : static_cast<std::int64_t>(mag);
  return true;
}

inline bool has_separator(std::string_view s) {
  return s.find_first_of(",:;") != std::string_view::npos;
}

inline error codec_error(std::string_view what, std::string message) {
  return make_error(errc::invalid_value, std::string(what) + ": " + std::move(message));
}

// ---- a small strict JSON reader ---------------------------------------------------------------

/// Reads RFC 8259 JSON from a string, token by token. Not thread-safe (a cursor).
class json_reader {
 public:
  explicit json_reader(std::string_view s) : s_(s) {}

  void ws() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool eat(char c) {
    ws();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool at_end() {
    ws();
    return i_ == s_.size();
  }
  char peek() {
    ws();
    return i_ < s_.size() ? s_[i_] : '\0';
  }
  std::size_t offset() const { return i_; }

  /// A string value (escapes decoded to UTF-8).
  bool string(std::string& out) {
    out.clear();
    if (!eat('"')) return false;
    while (i_ < s_.size()) {
      const char c = s_[i_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) return false;
      const char e = s_[i_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            std::uint32_t lo = 0;
            if (i_ + 1 >= s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') return false;
            i_ += 2;
            if (!hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;
          }
          utf8(cp, out);
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }

  /// The text of a number token (JSON grammar).
  bool number(std::string_view& out) {
    ws();
    const std::size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (i_ >= s_.size() || !is_digit(s_[i_])) return false;
    if (s_[i_] == '0') {
      ++i_;
    } else {
      while (i_ < s_.size() && is_digit(s_[i_])) ++i_;
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (i_ >= s_.size() || !is_digit(s_[i_])) return false;
      while (i_ < s_.size() && is_digit(s_[i_])) ++i_;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (i_ >= s_.size() || !is_digit(s_[i_])) return false;
      while (i_ < s_.size() && is_digit(s_[i_])) ++i_;
    }
    out = s_.substr(start, i_ - start);
    return true;
  }

  bool literal(std::string_view word) {
    ws();
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }

  /// Skips any value, nested up to k_max_json_depth.
  bool skip(int depth = 0) {
    if (depth > k_max_json_depth) return false;
    const char c = peek();
    if (c == '"') {
      std::string ignored;
      return string(ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++i_;
      if (eat(close)) return true;
      do {
        if (c == '{') {
          std::string key;
          if (!string(key) || !eat(':')) return false;
        }
        if (!skip(depth + 1)) return false;
      } while (eat(','));
      return eat(close);
    }
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    std::string_view num;
    return number(num);
  }

 private:
  bool hex4(std::uint32_t& out) {
    if (s_.size() - i_ < 4) return false;
    out = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = s_[i_++];
      out <<= 4;
      if (h >= '0' && h <= '9') {
        out |= static_cast<std::uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        out |= static_cast<std::uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        out |= static_cast<std::uint32_t>(h - 'A' + 10);
      } else {
        return false;
      }
    }
    return true;
  }
  static void utf8(std::uint32_t cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

/// Appends \p s as a JSON string literal.
inline void json_string(std::string_view s, std::string& out) {
  static constexpr char k_hex[] = "0123456789abcdef";
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      out += "\\u00";
      out += k_hex[u >> 4];
      out += k_hex[u & 0xF];
    } else {
      out += c;
    }
  }
  out += '"';
}

}  // namespace detail

// ---- pod devices -------------------------------------------------------------------------------

/// Encodes a pod's devices in HAMi's annotation form. Fails when a uuid or type is empty or
/// holds one of `,:;`, or a number exceeds HAMi's int32 fields. Pure, thread-safe.
inline result<std::string> encode_pod_devices(const std::vector<annotated_container>& pod) {
  std::string out;
  for (std::size_t c = 0; c < pod.size(); ++c) {
    for (std::size_t d = 0; d < pod[c].size(); ++d) {
      const auto& dev = pod[c][d];
      const std::string where =
          "pod devices: container " + std::to_string(c) + ", device " + std::to_string(d);
      if (dev.uuid.empty() || dev.type.empty() || detail::has_separator(dev.uuid) ||
          detail::has_separator(dev.type)) {
        return detail::codec_error(where, "uuid " + detail::excerpt(dev.uuid) + " / type " +
                                              detail::excerpt(dev.type) +
                                              ": expected non-empty values without , : or ;");
      }
      if (dev.memory_mib > k_int32_max || dev.cores > k_max_percent) {
        return detail::codec_error(where, "memory " + std::to_string(dev.memory_mib) +
                                              " MiB / cores " + std::to_string(dev.cores) +
                                              ": expected memory < 2^31 MiB and cores 0..100");
      }
      out += dev.uuid + ',' + dev.type + ',' + std::to_string(dev.memory_mib) + ',' +
             std::to_string(dev.cores) + ':';
    }
    out += ';';
  }
  return out;
}

/// Decodes HAMi's pod devices annotation (see the file comment). Pure, thread-safe.
inline result<std::vector<annotated_container>> decode_pod_devices(std::string_view text) {
  std::vector<annotated_container> pod;
  if (text.empty()) return pod;
  std::string_view rest = text;
  if (rest.back() == ';') rest.remove_suffix(1);
  std::size_t c = 0;
  while (true) {
    const std::size_t semi = rest.find(';');
    std::string_view ctr = rest.substr(0, semi);
    annotated_container devs;
    std::size_t d = 0;
    while (!ctr.empty()) {
      // The last device of a container may omit its ':' (HAMi's decoder accepts that too).
      const std::size_t colon = ctr.find(':');
      const std::string_view item = ctr.substr(0, colon);
      ctr.remove_prefix(colon == std::string_view::npos ? ctr.size() : colon + 1);
      const std::string where =
          "pod devices: container " + std::to_string(c) + ", device " + std::to_string(d);
      if (std::count(item.begin(), item.end(), ',') != 3) {
        return detail::codec_error(
            where, detail::excerpt(item) + ": expected 4 fields UUID,TYPE,MEM_MIB,CORES");
      }
      std::string_view f[4];
      std::string_view it = item;
      for (auto& field : f) {
        const std::size_t comma = it.find(',');
        field = it.substr(0, comma);
        it.remove_prefix(comma == std::string_view::npos ? it.size() : comma + 1);
      }
      annotated_device dev;
      std::uint64_t mem = 0, cores = 0;
      if (f[0].empty() || f[1].empty()) {
        return detail::codec_error(where,
                                   detail::excerpt(item) + ": expected a non-empty uuid and type");
      }
      if (!detail::parse_uint(f[2], k_int32_max, mem)) {
        return detail::codec_error(where, "memory " + detail::excerpt(f[2]) +
                                              ": expected an integer number of MiB below 2^31");
      }
      if (!detail::parse_uint(f[3], k_max_percent, cores)) {
        return detail::codec_error(
            where, "cores " + detail::excerpt(f[3]) + ": expected an integer percent 0..100");
      }
      dev.uuid = std::string(f[0]);
      dev.type = std::string(f[1]);
      dev.memory_mib = mem;
      dev.cores = static_cast<std::uint32_t>(cores);
      devs.push_back(std::move(dev));
      ++d;
    }
    pod.push_back(std::move(devs));
    ++c;
    if (semi == std::string_view::npos) break;
    rest.remove_prefix(semi + 1);
  }
  return pod;
}

// ---- node registration --------------------------------------------------------------------------

/// Encodes devices as HAMi's registration JSON (memory in MiB, rounded down; cores as percent,
/// rounded down: a registration never claims more than the device has). Pure, thread-safe.
inline std::string encode_node_devices(const std::vector<device>& devices) {
  std::string out = "[";
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const auto& d = devices[i];
    if (i != 0) out += ',';
    out += "{\"id\":";
    detail::json_string(d.uuid, out);
    out += ",\"index\":" + std::to_string(d.index);
    out += ",\"count\":" + std::to_string(d.slots_total);
    out += ",\"devmem\":" + std::to_string(d.memory_total / k_bytes_per_mib);
    out += ",\"devcore\":" + std::to_string(d.cores_total / (k_milli_per_gpu / k_cores_per_gpu));
    out += ",\"type\":";
    detail::json_string(d.type, out);
    out += ",\"numa\":" + std::to_string(d.numa);
    out += ",\"mode\":";
    detail::json_string(d.mode, out);
    out += std::string(",\"health\":") + (d.healthy ? "true" : "false") + "}";
  }
  out += ']';
  return out;
}

/// Encodes devices in the colon form HAMi's device plugins wrote, and its schedulers read,
/// before HAMi 2.8 (`ID,COUNT,DEVMEM,DEVCORE,TYPE,NUMA,HEALTH,INDEX,MODE:` per device; the
/// numbers as in encode_node_devices). Fails when a uuid, type or mode is empty where HAMi needs
/// it, or holds `,` or `:`. Pure, thread-safe.
inline result<std::string> encode_node_devices_legacy(const std::vector<device>& devices) {
  std::string out;
  for (const auto& d : devices) {
    for (const auto& [field, value] : {std::pair<const char*, const std::string*>{"uuid", &d.uuid},
                                       {"type", &d.type},
                                       {"mode", &d.mode}}) {
      if ((value->empty() && value != &d.mode) || value->find_first_of(",:") != std::string::npos) {
        return detail::codec_error("node registration (legacy form)",
                                   std::string("device ") + std::to_string(d.index) + " " + field +
                                       " " + detail::excerpt(*value) +
                                       ": expected a non-empty value without , or :");
      }
    }
    out += d.uuid + ',' + std::to_string(d.slots_total) + ',' +
           std::to_string(d.memory_total / k_bytes_per_mib) + ',' +
           std::to_string(d.cores_total / (k_milli_per_gpu / k_cores_per_gpu)) + ',' + d.type +
           ',' + std::to_string(d.numa) + ',' + (d.healthy ? "true" : "false") + ',' +
           std::to_string(d.index) + ',' + d.mode + ':';
  }
  return out;
}

namespace detail {

inline result<std::vector<device>> decode_node_json(std::string_view text) {
  const std::string what = "node registration";
  json_reader r(text);
  std::vector<device> out;
  auto fail = [&](std::size_t elem, const std::string& msg) {
    return codec_error(what, "element " + std::to_string(elem) + " (offset " +
                                 std::to_string(r.offset()) + "): " + msg);
  };
  if (!r.eat('[')) return codec_error(what, "expected a JSON array");
  if (!r.eat(']')) {
    do {
      const std::size_t elem = out.size();
      device d;
      d.slots_total = 0;
      d.cores_total = 0;
      d.mode.clear();
      d.healthy = false;
      if (!r.eat('{')) return fail(elem, "expected an object");
      if (!r.eat('}')) {
        do {
          std::string key;
          if (!r.string(key) || !r.eat(':')) return fail(elem, "expected \"key\": value");
          auto integer = [&](std::int64_t min, std::int64_t max, std::int64_t& v) {
            std::string_view num;
            return r.number(num) && parse_int(num, min, max, v);
          };
          std::int64_t v = 0;
          const auto i32 = static_cast<std::int64_t>(k_int32_max);
          if (key == "id" || key == "type" || key == "mode") {
            std::string s;
            if (!r.string(s)) return fail(elem, "field " + excerpt(key) + ": expected a string");
            (key == "id" ? d.uuid : key == "type" ? d.type : d.mode) = std::move(s);
          } else if (key == "index" || key == "count" || key == "devcore") {
            if (!integer(0, key == "devcore" ? k_max_registered_cores : i32, v)) {
              return fail(elem, "field " + excerpt(key) + ": expected an integer 0.." +
                                    (key == "devcore" ? std::to_string(k_max_registered_cores)
                                                      : std::string("2^31-1")));
            }
            if (key == "index") d.index = static_cast<std::uint32_t>(v);
            if (key == "count") d.slots_total = static_cast<std::uint32_t>(v);
            if (key == "devcore") d.cores_total = cores_to_milli(static_cast<std::uint32_t>(v));
          } else if (key == "devmem") {
            if (!integer(0, i32, v)) {
              return fail(elem, "field \"devmem\": expected an integer number of MiB 0..2^31-1");
            }
            d.memory_total = static_cast<std::uint64_t>(v) * k_bytes_per_mib;
          } else if (key == "numa") {
            if (!integer(-i32 - 1, i32, v)) return fail(elem, "field \"numa\": expected an int32");
            d.numa = static_cast<std::int32_t>(v);
          } else if (key == "health") {
            if (r.literal("true")) {
              d.healthy = true;
            } else if (r.literal("false")) {
              d.healthy = false;
            } else {
              return fail(elem, "field \"health\": expected true or false");
            }
          } else if (!r.skip()) {
            return fail(elem, "field " + excerpt(key) + ": malformed JSON value");
          }
        } while (r.eat(','));
        if (!r.eat('}')) return fail(elem, "expected , or } in the object");
      }
      if (d.uuid.empty()) return fail(elem, "missing \"id\"; expected a device uuid");
      if (d.mode.empty()) d.mode = std::string(k_default_mode);
      out.push_back(std::move(d));
    } while (r.eat(','));
    if (!r.eat(']'))
      return codec_error(what, "expected , or ] after element " + std::to_string(out.size() - 1));
  }
  if (!r.at_end()) return codec_error(what, "trailing characters after the JSON array");
  return out;
}

inline result<std::vector<device>> decode_node_legacy(std::string_view text) {
  const std::string what = "node registration";
  std::vector<device> out;
  if (text.find(':') == std::string_view::npos) {
    return codec_error(what,
                       "expected a JSON array or ID,COUNT,DEVMEM,DEVCORE,TYPE,NUMA,HEALTH: "
                       "entries, got " +
                           excerpt(text));
  }
  std::string_view rest = text;
  while (!rest.empty()) {
    const std::size_t colon = rest.find(':');
    const std::string_view item = rest.substr(0, colon);
    rest.remove_prefix(colon == std::string_view::npos ? rest.size() : colon + 1);
    if (item.empty()) continue;
    const std::string where = what + ": device " + std::to_string(out.size());
    std::vector<std::string_view> f;
    std::string_view it = item;
    while (f.size() <= 9) {
      const std::size_t comma = it.find(',');
      f.push_back(it.substr(0, comma));
      if (comma == std::string_view::npos) break;
      it.remove_prefix(comma + 1);
    }
    if (f.size() != 7 && f.size() != 9) {
      return codec_error(
          where,
          excerpt(item) + ": expected ID,COUNT,DEVMEM,DEVCORE,TYPE,NUMA,HEALTH[,INDEX,MODE]");
    }
    device d;
    std::uint64_t count = 0, mem = 0, core = 0, index = 0;
    std::int64_t numa = 0;
    if (f[0].empty()) return codec_error(where, "empty device id");
    if (!parse_uint(f[1], k_int32_max, count) || !parse_uint(f[2], k_int32_max, mem) ||
        !parse_uint(f[3], k_max_registered_cores, core) ||
        !parse_int(f[5], -static_cast<std::int64_t>(k_int32_max) - 1,
                   static_cast<std::int64_t>(k_int32_max), numa)) {
      return codec_error(where, excerpt(item) +
                                    ": expected integers COUNT, DEVMEM (MiB), DEVCORE (0.." +
                                    std::to_string(k_max_registered_cores) + "), NUMA");
    }
    if (f[6] != "true" && f[6] != "false") {
      return codec_error(where, "health " + excerpt(f[6]) + ": expected true or false");
    }
    d.uuid = std::string(f[0]);
    d.slots_total = static_cast<std::uint32_t>(count);
    d.memory_total = mem * k_bytes_per_mib;
    d.cores_total = cores_to_milli(static_cast<std::uint32_t>(core));
    d.type = std::string(f[4]);
    d.numa = static_cast<std::int32_t>(numa);
    d.healthy = f[6] == "true";
    if (f.size() == 9) {
      if (!parse_uint(f[7], k_int32_max, index)) {
        return codec_error(where, "index " + excerpt(f[7]) + ": expected a non-negative integer");
      }
      d.index = static_cast<std::uint32_t>(index);
      d.mode = std::string(f[8]);
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace detail

/// Decodes a node registration annotation: HAMi's JSON array, or the older colon form.
/// Devices come back with no usage. Pure, thread-safe.
inline result<std::vector<device>> decode_node_devices(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && detail::is_space(text[i])) ++i;
  if (i < text.size() && text[i] == '[') return detail::decode_node_json(text);
  return detail::decode_node_legacy(text);
}

/// Decodes HAMi's device pair scores (`[{"uuid":"GPU-a","score":{"GPU-b":100}}]`) into a link
/// matrix over \p devices (by uuid). Unknown uuids are an error; pairs not named score 0; a
/// pair named twice keeps the larger score. Pure, thread-safe.
inline result<link_matrix> decode_pair_scores(std::string_view text,
                                              const std::vector<device>& devices) {
  const std::string what = "pair scores";
  auto position = [&](const std::string& uuid) -> std::size_t {
    for (std::size_t i = 0; i < devices.size(); ++i) {
      if (devices[i].uuid == uuid) return i;
    }
    return devices.size();
  };
  link_matrix m(devices.size());
  detail::json_reader r(text);
  if (!r.eat('[')) return detail::codec_error(what, "expected a JSON array");
  std::size_t elem = 0;
  auto fail = [&](const std::string& msg) {
    return detail::codec_error(what, "element " + std::to_string(elem) + ": " + msg);
  };
  if (!r.eat(']')) {
    do {
      if (!r.eat('{')) return fail("expected an object");
      std::size_t from = devices.size();
      std::vector<std::pair<std::size_t, std::int32_t>> scores;
      if (!r.eat('}')) {
        do {
          std::string key;
          if (!r.string(key) || !r.eat(':')) return fail("expected \"key\": value");
          if (key == "uuid") {
            std::string u;
            if (!r.string(u)) return fail("field \"uuid\": expected a string");
            from = position(u);
            if (from == devices.size()) return fail("unknown device " + detail::excerpt(u));
          } else if (key == "score") {
            if (!r.eat('{')) return fail("field \"score\": expected an object");
            if (!r.eat('}')) {
              do {
                std::string u;
                std::string_view num;
                std::int64_t v = 0;
                if (!r.string(u) || !r.eat(':') || !r.number(num) ||
                    !detail::parse_int(num, -static_cast<std::int64_t>(k_int32_max),
                                       static_cast<std::int64_t>(k_int32_max), v)) {
                  return fail("field \"score\": expected \"uuid\": integer pairs");
                }
                const std::size_t to = position(u);
                if (to == devices.size()) return fail("unknown device " + detail::excerpt(u));
                scores.emplace_back(to, static_cast<std::int32_t>(v));
              } while (r.eat(','));
              if (!r.eat('}')) return fail("field \"score\": expected , or }");
            }
          } else if (!r.skip()) {
            return fail("field " + detail::excerpt(key) + ": malformed JSON value");
          }
        } while (r.eat(','));
        if (!r.eat('}')) return fail("expected , or } in the object");
      }
      if (from == devices.size()) return fail("missing \"uuid\"");
      for (const auto& [to, v] : scores) {
        if (to != from && (m.at(from, to) == 0 || v > m.at(from, to))) m.set(from, to, v);
      }
      ++elem;
    } while (r.eat(','));
    if (!r.eat(']')) return detail::codec_error(what, "expected , or ] after an element");
  }
  if (!r.at_end()) return detail::codec_error(what, "trailing characters after the JSON array");
  return m;
}

/// The pod annotation entries of a placed allocation on \p n: memory in MiB (rounded up, so
/// the plugin's limit is never below the reservation) and cores in percent (rounded up).
/// \p type is the vendor word HAMi writes ("NVIDIA"). Pure, thread-safe.
template <class Allocation>
std::vector<annotated_container> to_annotation(const node& n, const Allocation& containers,
                                               std::string_view type = "NVIDIA") {
  std::vector<annotated_container> out;
  for (const auto& c : containers) {
    annotated_container ac;
    for (const auto& g : c.devices) {
      annotated_device d;
      d.uuid = n.devices[g.device].uuid;
      d.type = std::string(type);
      d.memory_mib = (g.memory + k_bytes_per_mib - 1) / k_bytes_per_mib;
      d.cores = milli_to_cores(g.cores);
      ac.push_back(std::move(d));
    }
    out.push_back(std::move(ac));
  }
  return out;
}

}  // namespace gpuslice::fit
