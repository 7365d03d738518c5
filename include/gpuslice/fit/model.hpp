#pragma once
/// \file
/// The fit engine's model: a GPU (device), a node that holds GPUs (and CPU, host memory and an
/// optional pairwise link score matrix), and a pod's per-container requests, with HAMi's rules
/// for turning a request into the share it takes on one particular device.
///
/// Units. Memory is bytes everywhere (HAMi's annotations speak MiB; the codecs convert). Compute
/// shares are milli-GPU: 1000 = one whole GPU = HAMi's cores 100, so the trace's `gpu_milli` and
/// HAMi's `gpucores` percent are one quantity (cores_to_milli in quantity.hpp). Node CPU is
/// milli-CPU, node memory bytes.
///
/// HAMi semantics implemented by resolve():
///   - a memory percentage is resolved per device in whole MiB, as HAMi counts device memory
///     (floor(device MiB * percent / 100) MiB), so two 50% pods on a 1001 MiB card take 500 MiB
///     each and their annotations read back after a restart;
///   - memory given both as an amount and as a percentage: the amount wins (HAMi reads gpumem
///     first);
///   - no memory amount at all means 100% of the device (HAMi's default memory percentage);
///   - cores above 100% are clamped to 100% (HAMi logs and clamps), and cores 100% (1000 milli,
///     the device's whole compute) needs a device nobody uses (exclusive);
///   - a bare request (a GPU count with neither memory nor cores) takes the whole card;
///   - idle_only (HAMi's `mutex` GPU policy) needs a device nobody uses, keeping its share;
///   - type include/exclude lists match case-insensitive substrings of the device type;
///   - uuid include/exclude lists match exactly.
/// All functions here are pure and thread-safe; the structs are plain values.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gpuslice/quantity.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::fit {

/// HAMi's default number of tasks that may share one GPU (its `deviceSplitCount`).
inline constexpr std::uint32_t k_default_slots = 10;
/// The mode HAMi's device plugin reports for a GPU shared through its interposer.
inline constexpr std::string_view k_default_mode = "hami-core";
/// Largest percentage a request may name.
inline constexpr std::uint32_t k_max_percent = 100;
/// Largest compute a registration may give one GPU, in percent: HAMi's device plugin registers
/// `deviceCoreScaling * 100` (150 with a scaling of 1.5), and no scaling beyond 100 is sane.
inline constexpr std::uint32_t k_max_registered_cores = 10000;
/// HAMi counts device memory in whole MiB; a percentage resolves to whole MiB.
inline constexpr std::uint64_t k_memory_unit = std::uint64_t{1} << 20;

/// One GPU of a node and its current usage. A plain value; not thread-safe to mutate.
struct device {
  std::string uuid;         ///< e.g. "GPU-8f3c..."; unique on the node
  std::uint32_t index = 0;  ///< the driver's device index
  std::string type;         ///< e.g. "NVIDIA-Tesla V100-PCIE-32GB"
  std::int32_t numa = 0;    ///< NUMA node the GPU is attached to
  bool healthy = true;      ///< false: never chosen
  bool cordoned = false;    ///< listed in the node's `hami.io/device-cordon`: no new tasks
  std::uint32_t slots_total = k_default_slots;     ///< how many tasks may share it
  std::uint32_t slots_used = 0;                    ///< tasks placed on it
  std::uint64_t memory_total = 0;                  ///< device memory, bytes
  std::uint64_t memory_used = 0;                   ///< reserved device memory, bytes
  std::uint32_t cores_total = k_milli_per_gpu;     ///< compute, milli-GPU (1000 = the whole GPU)
  std::uint32_t cores_used = 0;                    ///< reserved compute, milli-GPU
  std::string mode = std::string(k_default_mode);  ///< sharing mode ("hami-core", "mig", "mps")
};

/// Symmetric pairwise link scores between a node's devices (by position in node::devices),
/// e.g. NVLink bandwidth classes. Larger = better linked. Empty = no topology information.
class link_matrix {
 public:
  link_matrix() = default;
  /// An n x n matrix of zeros.
  explicit link_matrix(std::size_t n) : n_(n), scores_(n * n, 0) {}

  /// Number of devices covered (0 = no matrix).
  std::size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  /// The score between devices a and b (0 on the diagonal unless set). Precondition a, b < size.
  std::int32_t at(std::size_t a, std::size_t b) const noexcept { return scores_[a * n_ + b]; }
  /// Sets the score of the pair (a, b) in both directions. Not thread-safe.
  void set(std::size_t a, std::size_t b, std::int32_t score) noexcept {
    scores_[a * n_ + b] = score;
    scores_[b * n_ + a] = score;
  }
  friend bool operator==(const link_matrix& x, const link_matrix& y) {
    return x.n_ == y.n_ && x.scores_ == y.scores_;
  }

 private:
  std::size_t n_ = 0;
  std::vector<std::int32_t> scores_;
};

/// A node: CPU and host memory, its GPUs and their links. A plain value.
struct node {
  std::string name;
  std::uint64_t cpu_total = 0;     ///< milli-CPU allocatable
  std::uint64_t cpu_used = 0;      ///< milli-CPU requested by placed pods
  std::uint64_t memory_total = 0;  ///< host memory allocatable, bytes
  std::uint64_t memory_used = 0;   ///< host memory requested by placed pods, bytes
  std::vector<device> devices;
  link_matrix links;  ///< empty, or devices.size() x devices.size()
};

/// What one container asks for. HAMi's resource names in brackets.
struct container_request {
  std::uint32_t count = 0;               ///< GPUs [nvidia.com/gpu]; 0 = no GPU
  std::uint64_t memory = 0;              ///< per-GPU bytes [nvidia.com/gpumem]; 0 = unset
  std::uint32_t memory_percent = 0;      ///< per-GPU share of memory [gpumem-percentage]; 0 = unset
  std::uint32_t cores = 0;               ///< per-GPU compute, milli-GPU [gpucores * 10]; 0 = unset
  std::vector<std::string> use_types;    ///< [nvidia.com/use-gputype]: any substring must match
  std::vector<std::string> nouse_types;  ///< [nvidia.com/nouse-gputype]: no substring may match
  std::vector<std::string> use_uuids;    ///< [nvidia.com/use-gpuuuid]: exact match required
  std::vector<std::string> nouse_uuids;  ///< [nvidia.com/nouse-gpuuuid]: exact match refused
  bool numa_bind = false;                ///< [nvidia.com/numa-bind]: all GPUs on one NUMA node
  bool exclusive = false;  ///< the whole card: all its memory and compute, nobody else on it
  bool idle_only = false;  ///< [gpu policy `mutex`]: only a device with no task, share unchanged
  std::string modes;       ///< [nvidia.com/vgpu-mode]: a device's mode must be a substring; "" any
  bool init = false;       ///< an init container: runs before the others, alone (HAMi collapses
                           ///< its usage: per device the larger of init peak and app sum)
  std::uint64_t cpu = 0;   ///< node CPU, milli-CPU
  std::uint64_t host_memory = 0;  ///< node memory, bytes

  /// A request in HAMi's cores percent (0..100) instead of milli-GPU.
  container_request& cores_percent(std::uint32_t percent) noexcept {
    cores = cores_to_milli(percent);
    return *this;
  }
};

/// A pod: its containers in order (init containers first, as HAMi counts them).
struct pod_request {
  std::vector<container_request> containers;
};

/// The share a container takes on one device, after HAMi's rules (see the file comment).
struct share {
  std::uint64_t memory = 0;  ///< bytes
  std::uint32_t cores = 0;   ///< milli-GPU
  bool needs_idle = false;   ///< the device must have no other task (exclusive / cores 100%)
};

/// True when a request names neither memory nor cores: HAMi gives it the whole card.
inline bool is_bare(const container_request& r) noexcept {
  return r.memory == 0 && r.memory_percent == 0 && r.cores == 0;
}

/// The share \p r takes on a device with \p memory_total bytes and \p cores_total milli.
/// Pure, thread-safe. Precondition: validate() accepted the request.
inline share resolve(const container_request& r, std::uint64_t memory_total,
                     std::uint32_t cores_total) noexcept {
  share s;
  if (r.exclusive || is_bare(r)) {
    s.memory = memory_total;
    s.cores = cores_total;
    s.needs_idle = true;
    return s;
  }
  if (r.memory != 0) {
    s.memory = r.memory;
  } else {
    const std::uint32_t pct =
        r.memory_percent != 0 ? std::min(r.memory_percent, k_max_percent) : k_max_percent;
    // HAMi: Totalmem (MiB) * percent / 100, in integers; a device of whole MiB at 100% is whole.
    s.memory = memory_total / k_memory_unit * pct / k_max_percent * k_memory_unit;
    if (pct == k_max_percent) s.memory = memory_total;
  }
  s.cores = std::min(r.cores, k_milli_per_gpu);
  // HAMi: a request of a whole card's compute is exclusive on a card registered with exactly
  // 100 (Totalcore == 100 && Coresreq == 100); on a scaled card it is a share like any other.
  s.needs_idle = r.idle_only || (s.cores == k_milli_per_gpu && cores_total == k_milli_per_gpu);
  return s;
}

namespace detail {
inline char ascii_upper(char c) noexcept { return (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c; }

/// Case-insensitive (ASCII) substring test; an empty needle never matches.
inline bool contains_icase(std::string_view hay, std::string_view needle) noexcept {
  if (needle.empty() || needle.size() > hay.size()) return false;
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    std::size_t j = 0;
    while (j < needle.size() && ascii_upper(hay[i + j]) == ascii_upper(needle[j])) ++j;
    if (j == needle.size()) return true;
  }
  return false;
}
}  // namespace detail

/// Splits an annotation value such as `nvidia.com/use-gputype: "A100, V100"` into names the
/// way HAMi reads it: comma-separated, surrounding spaces trimmed, empty entries dropped (so an
/// empty value is no constraint). Pure, thread-safe.
inline std::vector<std::string> split_names(std::string_view value) {
  std::vector<std::string> out;
  while (true) {
    const std::size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return out;
}

/// HAMi's type rule: with a non-empty include list some entry must be a substring of \p type;
/// no exclude entry may be. Case-insensitive. Pure, thread-safe.
inline bool type_allowed(const container_request& r, std::string_view type) noexcept {
  auto any = [&](const std::vector<std::string>& list) {
    return std::any_of(list.begin(), list.end(),
                       [&](const std::string& t) { return detail::contains_icase(type, t); });
  };
  if (!r.use_types.empty() && !any(r.use_types)) return false;
  return !any(r.nouse_types);
}

/// HAMi's uuid rule: exact matches against the include and exclude lists. Pure, thread-safe.
inline bool uuid_allowed(const container_request& r, std::string_view uuid) noexcept {
  auto in = [&](const std::vector<std::string>& list) {
    return std::find(list.begin(), list.end(), uuid) != list.end();
  };
  if (!r.use_uuids.empty() && !in(r.use_uuids)) return false;
  return !in(r.nouse_uuids);
}

/// HAMi's `nvidia.com/vgpu-mode` rule: the device's mode must be a substring of the pod's value
/// (so "hami-core,mps" admits both); an empty value admits any. Pure, thread-safe.
inline bool mode_allowed(const container_request& r, std::string_view mode) noexcept {
  return r.modes.empty() || std::string_view(r.modes).find(mode) != std::string_view::npos;
}

/// Checks a request against the model's rules; the error names the container and the field.
/// Memory given as bytes and as a percentage is accepted (bytes win) and cores above 1000 milli
/// are clamped by resolve(), as HAMi does. Pure, thread-safe.
inline std::optional<error> validate(const pod_request& pod) {
  for (std::size_t i = 0; i < pod.containers.size(); ++i) {
    const auto& c = pod.containers[i];
    const std::string where = "container " + std::to_string(i) + ": ";
    if (c.memory_percent > k_max_percent) {
      return make_error(errc::out_of_range, where + "memory_percent " +
                                                std::to_string(c.memory_percent) +
                                                " is invalid; expected 0 (unset) to 100");
    }
    if (c.count == 0 &&
        (c.memory != 0 || c.memory_percent != 0 || c.cores != 0 || c.exclusive || c.idle_only)) {
      return make_error(errc::invalid_value,
                        where +
                            "GPU memory or cores requested with a GPU count of 0; expected "
                            "count >= 1");
    }
  }
  return std::nullopt;
}

/// Checks a node: used amounts within totals, a link matrix that matches the devices, unique
/// device uuids. Pure, thread-safe.
inline std::optional<error> validate(const node& n) {
  const std::string where = "node \"" + n.name + "\": ";
  if (n.cpu_used > n.cpu_total || n.memory_used > n.memory_total) {
    return make_error(errc::out_of_range, where + "CPU or memory used exceeds the total");
  }
  if (!n.links.empty() && n.links.size() != n.devices.size()) {
    return make_error(errc::invalid_value, where + "link matrix is " +
                                               std::to_string(n.links.size()) + " wide for " +
                                               std::to_string(n.devices.size()) +
                                               " devices; expected one row per device");
  }
  for (std::size_t i = 0; i < n.devices.size(); ++i) {
    const auto& d = n.devices[i];
    const std::string dw = where + "device " + std::to_string(i) + " (\"" + d.uuid + "\"): ";
    if (d.slots_used > d.slots_total || d.memory_used > d.memory_total ||
        d.cores_used > d.cores_total) {
      return make_error(
          errc::out_of_range,
          dw + "slots, memory or cores used exceed the total; expected used <= total");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (n.devices[j].uuid == d.uuid) {
        return make_error(errc::invalid_value, dw + "duplicate uuid; expected unique uuids");
      }
    }
  }
  return std::nullopt;
}

}  // namespace gpuslice::fit
