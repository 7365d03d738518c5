#pragma once
/// \file
/// Kubernetes objects (as `kubectl get -o json` and kube-scheduler write them) mapped onto
/// gpuslice's fit model, with HAMi's resource names and annotations:
///   - a Node carries its GPUs in the `hami.io/node-nvidia-register` annotation (HAMi's device
///     plugin writes it; fit::decode_node_devices reads it);
///   - a Pod asks for GPUs in its containers' resource limits (`nvidia.com/gpu`, `gpumem` in
///     MiB, `gpumem-percentage`, `gpucores` in percent) and restricts them with annotations
///     (`nvidia.com/use-gputype`, `nouse-gputype`, `use-gpuuuid`, `nouse-gpuuuid`, `numa-bind`);
///   - a placed Pod carries `hami.io/vgpu-node` and its devices in
///     `hami.io/vgpu-devices-to-allocate` / `hami.io/vgpu-devices-allocated`.
///   - HAMi's chart keys (resource names, defaultGPUNum, defaultMem, defaultCores, memoryFactor,
///     the scheduler policies) live in kube::config; the mapping applies them as HAMi's webhook
///     and scheduler do together (docs/hami-compatibility.md lists each rule).
/// Shared by the controller, the scheduler extender and the webhook examples. Every function is
/// pure and thread-safe; malformed input is an error naming the object and the field, never a
/// throw.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/fit.hpp"
#include "gpuslice/fit/hami_frag.hpp"
#include "gpuslice/fit/model.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::kube {

using json = nlohmann::json;

/// Node annotation with the GPUs HAMi's device plugin registered.
inline constexpr std::string_view k_node_register = "hami.io/node-nvidia-register";
/// Pod annotation: the node the scheduler chose.
inline constexpr std::string_view k_assigned_node = "hami.io/vgpu-node";
/// Pod annotation: the devices the device plugin is to allocate.
inline constexpr std::string_view k_devices_to_allocate = "hami.io/vgpu-devices-to-allocate";
/// Pod annotation: the devices allocated (what a bound pod holds).
inline constexpr std::string_view k_devices_allocated = "hami.io/vgpu-devices-allocated";
/// Pod annotation HAMi's device plugin looks for: "allocating" while devices are handed out.
inline constexpr std::string_view k_bind_phase = "hami.io/bind-phase";
/// The bind phase of a pod whose devices the device plugin is to allocate.
inline constexpr std::string_view k_bind_allocating = "allocating";
/// Pod annotation: when the pod was bound, Unix seconds.
inline constexpr std::string_view k_bind_time = "hami.io/bind-time";

/// Resource: number of GPUs.
inline constexpr std::string_view k_resource_gpu = "nvidia.com/gpu";
/// Resource: device memory per GPU, MiB.
inline constexpr std::string_view k_resource_memory = "nvidia.com/gpumem";
/// Resource: device memory per GPU, percent of the device.
inline constexpr std::string_view k_resource_memory_percent = "nvidia.com/gpumem-percentage";
/// Resource: compute per GPU, percent.
inline constexpr std::string_view k_resource_cores = "nvidia.com/gpucores";

/// Annotation: comma-separated GPU type substrings the pod accepts.
inline constexpr std::string_view k_use_type = "nvidia.com/use-gputype";
/// Annotation: comma-separated GPU type substrings the pod refuses.
inline constexpr std::string_view k_nouse_type = "nvidia.com/nouse-gputype";
/// Annotation: comma-separated GPU uuids the pod accepts.
inline constexpr std::string_view k_use_uuid = "nvidia.com/use-gpuuuid";
/// Annotation: comma-separated GPU uuids the pod refuses.
inline constexpr std::string_view k_nouse_uuid = "nvidia.com/nouse-gpuuuid";
/// Annotation: "true" puts all of a container's GPUs on one NUMA node.
inline constexpr std::string_view k_numa_bind = "nvidia.com/numa-bind";
/// Annotation: the device modes a pod accepts ("hami-core", "mig", "mps"; a device's mode must
/// be a substring of the value).
inline constexpr std::string_view k_vgpu_mode = "nvidia.com/vgpu-mode";
/// Node annotation: comma-separated GPU uuids that take no new tasks.
inline constexpr std::string_view k_device_cordon = "hami.io/device-cordon";
/// Pod annotation: the node policy for this pod (binpack | spread).
inline constexpr std::string_view k_node_policy = "hami.io/node-scheduler-policy";
/// Pod annotation: the GPU policy chain for this pod ("binpack", "spread,numa", "mutex",
/// "topology-aware").
inline constexpr std::string_view k_gpu_policy = "hami.io/gpu-scheduler-policy";
/// Pod annotation: scoring weights, "slot=1,core=1,memory=1".
inline constexpr std::string_view k_scoring_weights = "hami.io/device-scoring-weights";
/// ResourceQuota keys are the resource names with this prefix (limits.nvidia.com/gpumem).
inline constexpr std::string_view k_quota_prefix = "limits.";

/// HAMi's chart keys (values.yaml `scheduler` and `devices.nvidia` sections) that change how a
/// pod's request is read. A plain value.
struct config {
  std::string resource_count = "nvidia.com/gpu";                         ///< resourceName
  std::string resource_memory = "nvidia.com/gpumem";                     ///< resourceMem
  std::string resource_memory_percent = "nvidia.com/gpumem-percentage";  ///< resourceMemPercentage
  std::string resource_cores = "nvidia.com/gpucores";                    ///< resourceCores
  std::string resource_priority = "nvidia.com/priority";                 ///< resourcePriority
  std::uint32_t default_gpu_num = 1;  ///< defaultGPUNum: GPUs when only memory/cores are named
  std::uint64_t default_memory = 0;   ///< defaultMem, MiB; 0 = 100% of the device
  std::uint32_t default_cores = 0;    ///< defaultCores, percent
  std::uint32_t memory_factor = 1;    ///< memoryFactor: gpumem is counted in this many MiB
  bool mutex = false;  ///< the default GPU policy chain names `mutex` (a pod's annotation wins)
  /// Apply HAMi's webhook rules too (a count with no memory, or gpumem-percentage 100, and no
  /// cores asks for the card exclusively). On: pods here never skipped HAMi's webhook.
  bool admission_rules = true;
};

/// The vendor word HAMi writes in the pod devices annotation.
inline constexpr std::string_view k_vendor = "NVIDIA";

/// A pod's identity as kube-scheduler names it.
struct pod_ref {
  std::string name_space;  ///< metadata.namespace ("default" when absent)
  std::string name;        ///< metadata.name
  std::string uid;         ///< metadata.uid (may be empty in hand-written files)
  /// "namespace/name".
  std::string key() const { return name_space + "/" + name; }
};

namespace detail {

/// Decimal digits kept of a quantity's mantissa: 10^18 still fits in 64 bits.
inline constexpr int k_max_mantissa_digits = 18;
/// Largest decimal exponent accepted (10^18 with any mantissa exceeds int64 anyway).
inline constexpr int k_max_exponent = 18;

/// The member \p key of object \p j, or null when j is not an object or has no such member.
inline const json* member(const json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

/// The string member \p key of \p j, or \p fallback when absent or not a string.
inline std::string string_at(const json& j, std::string_view key, std::string fallback = {}) {
  const json* v = member(j, key);
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::move(fallback);
}

/// metadata.annotations[key] of \p object, or null.
inline const json* annotation(const json& object, std::string_view key) {
  const json* meta = member(object, "metadata");
  const json* ann = meta != nullptr ? member(*meta, "annotations") : nullptr;
  return ann != nullptr ? member(*ann, key) : nullptr;
}

/// Splits a comma-separated annotation value, dropping surrounding spaces and empty entries.
inline std::vector<std::string> split_list(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const std::size_t comma = s.find(',');
    std::string_view item = s.substr(0, comma);
    s.remove_prefix(comma == std::string_view::npos ? s.size() : comma + 1);
    while (!item.empty() && ::gpuslice::detail::is_space(item.front())) item.remove_prefix(1);
    while (!item.empty() && ::gpuslice::detail::is_space(item.back())) item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
  }
  return out;
}

}  // namespace detail

/// Parses a Kubernetes resource quantity ("3", "3k", "1.5Gi", "2e3", "500m") and returns its
/// value rounded up to an integer, as Go's resource.Quantity.Value() does. kube-scheduler sends
/// quantities in canonical form, so a limit of 3000 arrives as "3k". Negative quantities are
/// refused (a GPU request is never negative). Pure, thread-safe.
inline result<std::int64_t> parse_quantity(std::string_view text) {
  auto fail = [&](std::string_view why) {
    return make_error(errc::invalid_value, ::gpuslice::detail::quoted(text) + ": " +
                                               std::string(why) +
                                               "; expected a Kubernetes quantity such as 3, "
                                               "3k, 1.5Gi or 2e3");
  };
  std::string_view s = text;
  if (s.empty()) return fail("empty");
  if (s.front() == '+') s.remove_prefix(1);
  if (!s.empty() && s.front() == '-') return fail("negative");
  __extension__ using u128 = unsigned __int128;
  u128 mantissa = 0;
  int digits = 0, fraction = 0;
  bool seen_point = false, any = false;
  while (!s.empty() && (::gpuslice::detail::is_digit(s.front()) || s.front() == '.')) {
    const char c = s.front();
    s.remove_prefix(1);
    if (c == '.') {
      if (seen_point) return fail("two decimal points");
      seen_point = true;
      continue;
    }
    any = true;
    if (mantissa == 0 && c == '0') {
      if (seen_point) ++fraction;
      continue;
    }
    if (++digits > detail::k_max_mantissa_digits) return fail("too many digits");
    mantissa = mantissa * 10 + static_cast<unsigned>(c - '0');
    if (seen_point) ++fraction;
  }
  if (!any) return fail("no digits");
  // value = mantissa * 2^shift * 10^exp10, rounded up.
  int shift = 0, exp10 = -fraction;
  if (s == "Ki" || s == "Mi" || s == "Gi" || s == "Ti" || s == "Pi" || s == "Ei") {
    static constexpr std::string_view k_binary = "KMGTPE";
    constexpr int k_bits_per_step = 10;
    shift = k_bits_per_step * (static_cast<int>(k_binary.find(s.front())) + 1);
  } else if (s.size() == 1 &&
             std::string_view("numkMGTPE").find(s.front()) != std::string_view::npos) {
    static constexpr std::string_view k_decimal = "num kMGTPE";
    constexpr int k_digits_per_step = 3, k_unit_step = 3;
    exp10 += k_digits_per_step * (static_cast<int>(k_decimal.find(s.front())) - k_unit_step);
  } else if (!s.empty() && (s.front() == 'e' || s.front() == 'E')) {
    std::string_view e = s.substr(1);
    const bool neg = !e.empty() && e.front() == '-';
    if (!e.empty() && (e.front() == '-' || e.front() == '+')) e.remove_prefix(1);
    std::uint64_t v = 0;
    if (!fit::detail::parse_uint(e, detail::k_max_exponent, v)) return fail("bad exponent");
    exp10 += neg ? -static_cast<int>(v) : static_cast<int>(v);
  } else if (!s.empty()) {
    return fail("unknown suffix " + ::gpuslice::detail::quoted(s));
  }
  constexpr u128 k_limit = static_cast<u128>(std::numeric_limits<std::int64_t>::max());
  u128 value = mantissa << shift;  // mantissa < 10^18 < 2^60, shift <= 60: fits in 128 bits
  if (exp10 > 0) {
    for (int i = 0; i < exp10; ++i) {
      value *= 10;
      if (value > k_limit) return fail("too large");
    }
  } else {
    u128 div = 1;
    for (int i = 0; i < -exp10 && div <= k_limit; ++i) div *= 10;
    value = (value + div - 1) / div;
  }
  if (value > k_limit) return fail("too large");
  return static_cast<std::int64_t>(value);
}

/// The pod's identity. Pure, thread-safe.
inline pod_ref pod_identity(const json& pod) {
  const json* meta = detail::member(pod, "metadata");
  pod_ref r;
  if (meta != nullptr) {
    r.name_space = detail::string_at(*meta, "namespace", "default");
    r.name = detail::string_at(*meta, "name");
    r.uid = detail::string_at(*meta, "uid");
  } else {
    r.name_space = "default";
  }
  return r;
}

/// Go's strconv.ParseBool, which HAMi uses for `nvidia.com/numa-bind`: 1 t T TRUE true True,
/// 0 f F FALSE false False. Anything else is nullopt. Pure, thread-safe.
inline std::optional<bool> parse_go_bool(std::string_view s) {
  for (std::string_view t : {"1", "t", "T", "TRUE", "true", "True"}) {
    if (s == t) return true;
  }
  for (std::string_view f : {"0", "f", "F", "FALSE", "false", "False"}) {
    if (s == f) return false;
  }
  return std::nullopt;
}

/// A GPU policy chain as HAMi reads `hami.io/gpu-scheduler-policy`: comma-separated names;
/// binpack or spread (the first named) orders the GPUs, topology-aware chooses linked sets,
/// mutex takes only idle GPUs, numa (a sort key in HAMi) is what numa-bind already does here.
struct gpu_policy_chain {
  fit::gpu_policy order = fit::gpu_policy::spread;
  bool mutex = false;
};

/// Parses a GPU policy chain; an unknown name is an error naming it. Pure, thread-safe.
inline result<gpu_policy_chain> parse_gpu_policy(std::string_view text) {
  gpu_policy_chain out;
  bool ordered = false, topology = false;
  const auto names = detail::split_list(text);
  if (names.empty()) {
    return make_error(errc::invalid_value, "GPU policy " + ::gpuslice::detail::quoted(text) +
                                               ": expected binpack, spread, topology-aware, "
                                               "mutex or numa, comma-separated");
  }
  for (const auto& n : names) {
    if (n == "binpack" || n == "spread") {
      if (!ordered) out.order = n == "binpack" ? fit::gpu_policy::binpack : fit::gpu_policy::spread;
      ordered = true;
    } else if (n == "topology-aware" || n == "topology") {
      topology = true;
    } else if (n == "mutex") {
      out.mutex = true;
    } else if (n != "numa") {
      return make_error(errc::invalid_value,
                        "GPU policy " + ::gpuslice::detail::quoted(n) +
                            ": expected binpack, spread, topology-aware, mutex or numa");
    }
  }
  if (topology) out.order = fit::gpu_policy::topology;
  return out;
}

/// HAMi's `hami.io/device-scoring-weights`: exactly slot=, core= and memory= integers, none
/// negative, at least one positive. Pure, thread-safe.
inline result<fit::usage_weights> parse_scoring_weights(std::string_view text) {
  auto fail = [&](const std::string& why) {
    return make_error(errc::invalid_value, std::string(k_scoring_weights) + " " +
                                               ::gpuslice::detail::quoted(text) + ": " + why);
  };
  std::vector<std::string_view> parts;
  std::string_view rest = text;
  while (true) {
    const std::size_t comma = rest.find(',');
    parts.push_back(rest.substr(0, comma));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (parts.size() != 3) return fail("expected slot, core and memory weights");
  fit::usage_weights w{-1, -1, -1};
  for (std::string_view part : parts) {
    auto trim = [](std::string_view v) {
      while (!v.empty() && ::gpuslice::detail::is_space(v.front())) v.remove_prefix(1);
      while (!v.empty() && ::gpuslice::detail::is_space(v.back())) v.remove_suffix(1);
      return v;
    };
    part = trim(part);
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos) return fail("expected key=value entries");
    const std::string_view key = trim(part.substr(0, eq));
    const std::string_view value = trim(part.substr(eq + 1));
    std::int64_t v = 0;
    if (!fit::detail::parse_int(value, -static_cast<std::int64_t>(fit::k_int32_max),
                                static_cast<std::int64_t>(fit::k_int32_max), v)) {
      return fail(::gpuslice::detail::quoted(key) + " weight must be an integer");
    }
    double* slot = key == "slot"     ? &w.slots
                   : key == "core"   ? &w.cores
                   : key == "memory" ? &w.memory
                                     : nullptr;
    if (slot == nullptr) return fail("unknown weight " + ::gpuslice::detail::quoted(key));
    if (*slot != -1) return fail("duplicate " + ::gpuslice::detail::quoted(key) + " weight");
    if (v < 0) return fail(::gpuslice::detail::quoted(key) + " weight must not be negative");
    *slot = static_cast<double>(v);
  }
  if (auto e = fit::validate(w)) return fail(e->message);
  return w;
}

/// True for an init container that keeps running beside the app containers (a sidecar:
/// restartPolicy Always); its GPUs are held for the pod's life, as an app container's.
inline bool is_sidecar(const json& container) {
  return detail::string_at(container, "restartPolicy") == "Always";
}

/// The GPU request of a Pod object: init containers first, then containers (each container's
/// `resources.limits`, falling back to `requests`), with the pod's type, uuid, mode, NUMA and
/// mutex annotations applied to every container, and \p cfg's names and defaults. HAMi's rules
/// (docs/hami-compatibility.md): only memory or cores named -> defaultGPUNum GPUs (0: no GPU);
/// gpumem counts memoryFactor MiB; gpumem wins over gpumem-percentage; a percentage above 100
/// is 100 and 0 is unset; neither -> defaultMem MiB, or 100%; cores default to defaultCores,
/// above 100 are 100; with admission_rules, no cores and (no memory, or a percentage of 100)
/// is exclusive (cores 100). Errors name the pod, the container and the field.
/// Pure, thread-safe.
inline result<fit::pod_request> pod_request_from_json(const json& pod, const config& cfg = {}) {
  const pod_ref ref = pod_identity(pod);
  const std::string where = "pod " + ref.key();
  if (!pod.is_object()) return make_error(errc::invalid_value, "pod: expected a JSON object");
  if (ref.name.empty()) {
    return make_error(errc::invalid_value, where + ": metadata.name: expected a non-empty string");
  }
  fit::container_request base;
  auto text_annotation = [&](std::string_view key, std::string& out) -> std::optional<error> {
    const json* v = detail::annotation(pod, key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) {
      return make_error(errc::invalid_value,
                        where + ": annotation " + std::string(key) + ": expected a string");
    }
    out = v->get<std::string>();
    return std::nullopt;
  };
  auto list = [&](std::string_view key, std::vector<std::string>& out) -> std::optional<error> {
    std::string v;
    if (auto e = text_annotation(key, v)) return e;
    out = detail::split_list(v);
    return std::nullopt;
  };
  if (auto e = list(k_use_type, base.use_types)) return std::move(*e);
  if (auto e = list(k_nouse_type, base.nouse_types)) return std::move(*e);
  if (auto e = list(k_use_uuid, base.use_uuids)) return std::move(*e);
  if (auto e = list(k_nouse_uuid, base.nouse_uuids)) return std::move(*e);
  if (auto e = text_annotation(k_vgpu_mode, base.modes)) return std::move(*e);
  std::string numa;
  if (auto e = text_annotation(k_numa_bind, numa)) return std::move(*e);
  if (detail::annotation(pod, k_numa_bind) != nullptr) {
    const auto b = parse_go_bool(numa);
    if (!b) {
      return make_error(errc::invalid_value,
                        where + ": annotation " + std::string(k_numa_bind) + " " +
                            ::gpuslice::detail::quoted(numa) +
                            ": expected a boolean (true, false, 1, 0, t, f, TRUE, ...)");
    }
    base.numa_bind = *b;
  }
  std::string gpu_policy;
  if (auto e = text_annotation(k_gpu_policy, gpu_policy)) return std::move(*e);
  base.idle_only = cfg.mutex;
  if (detail::annotation(pod, k_gpu_policy) != nullptr) {
    auto chain = parse_gpu_policy(gpu_policy);
    if (!chain)
      return error{chain.code(),
                   where + ": annotation " + std::string(k_gpu_policy) + ": " + chain.message()};
    base.idle_only = chain->mutex;
  }

  fit::pod_request out;
  const json* spec = detail::member(pod, "spec");
  if (spec == nullptr || !spec->is_object()) {
    return make_error(errc::invalid_value, where + ": spec: expected an object");
  }
  for (const char* field : {"initContainers", "containers"}) {
    const json* cs = detail::member(*spec, field);
    if (cs == nullptr) continue;
    if (!cs->is_array()) {
      return make_error(errc::invalid_value,
                        where + ": spec." + field + ": expected an array of containers");
    }
    const bool init_list = std::string_view(field) == "initContainers";
    for (const json& c : *cs) {
      const std::string cw =
          where + ": container " + ::gpuslice::detail::quoted(detail::string_at(c, "name", "?"));
      const json* res = detail::member(c, "resources");
      const json* limits = res != nullptr ? detail::member(*res, "limits") : nullptr;
      const json* requests = res != nullptr ? detail::member(*res, "requests") : nullptr;
      auto amount = [&](std::string_view name, std::int64_t max, std::int64_t& value,
                        bool& present) -> std::optional<error> {
        present = false;
        if (name.empty()) return std::nullopt;
        const json* v = limits != nullptr ? detail::member(*limits, name) : nullptr;
        if (v == nullptr && requests != nullptr) v = detail::member(*requests, name);
        if (v == nullptr) return std::nullopt;
        std::string text;
        if (v->is_string()) {
          text = v->get<std::string>();
        } else if (v->is_number_unsigned()) {
          text = std::to_string(v->get<std::uint64_t>());
        } else if (v->is_number_integer()) {
          text = std::to_string(v->get<std::int64_t>());
        } else {
          return make_error(
              errc::invalid_value,
              cw + ": " + std::string(name) + ": expected a quantity (a string or an integer)");
        }
        auto q = parse_quantity(text);
        if (!q) {
          return make_error(errc::invalid_value, cw + ": " + std::string(name) + " " + q.message());
        }
        if (*q > max) {
          return make_error(errc::out_of_range, cw + ": " + std::string(name) + " " +
                                                    std::to_string(*q) + ": expected at most " +
                                                    std::to_string(max));
        }
        value = *q;
        present = true;
        return std::nullopt;
      };
      constexpr std::int64_t k_max_gpus_per_container = 1024;
      const std::int64_t max_mib = static_cast<std::int64_t>(fit::k_int32_max) /
                                   std::max<std::uint32_t>(cfg.memory_factor, 1);
      // Percentages and cores above 100 are clamped below, as HAMi's scheduler does; the cap
      // here only bounds the arithmetic.
      constexpr std::int64_t k_max_read = fit::k_int32_max;
      std::int64_t count = 0, mem = 0, pct = 0, cores = 0;
      bool has_count = false, has_mem = false, has_pct = false, has_cores = false;
      if (auto e = amount(cfg.resource_count, k_max_gpus_per_container, count, has_count)) {
        return std::move(*e);
      }
      if (auto e = amount(cfg.resource_memory, max_mib, mem, has_mem)) return std::move(*e);
      if (auto e = amount(cfg.resource_memory_percent, k_max_read, pct, has_pct)) {
        return std::move(*e);
      }
      if (auto e = amount(cfg.resource_cores, k_max_read, cores, has_cores)) return std::move(*e);
      if (!has_count && (has_mem || has_pct || has_cores)) {
        count = cfg.default_gpu_num;  // HAMi's webhook adds defaultGPUNum (0: it adds nothing)
      }
      fit::container_request r;
      if (count > 0) {
        r = base;
        r.init = init_list && !is_sidecar(c);
        r.count = static_cast<std::uint32_t>(count);
        constexpr auto k_pct = static_cast<std::int64_t>(fit::k_max_percent);
        if (pct > k_pct) pct = k_pct;
        r.memory = static_cast<std::uint64_t>(mem) * std::max<std::uint32_t>(cfg.memory_factor, 1) *
                   fit::k_bytes_per_mib;
        r.memory_percent = static_cast<std::uint32_t>(pct);
        if (r.memory == 0 && r.memory_percent == 0 && cfg.default_memory != 0) {
          r.memory = cfg.default_memory * fit::k_bytes_per_mib;
        }
        std::int64_t core_pct = has_cores ? cores : cfg.default_cores;
        if (!has_cores && cfg.admission_rules &&
            ((has_pct && pct == k_pct) || (!has_pct && !has_mem))) {
          core_pct = k_pct;  // HAMi's webhook: the card exclusively
        }
        r.cores_percent(static_cast<std::uint32_t>(std::min(core_pct, k_pct)));
      }
      out.containers.push_back(std::move(r));
    }
  }
  if (auto e = fit::validate(out)) return error{e->code, where + ": " + e->message};
  return out;
}

/// True when some container of \p pod asks for a GPU.
inline bool wants_gpu(const fit::pod_request& pod) noexcept {
  for (const auto& c : pod.containers) {
    if (c.count != 0) return true;
  }
  return false;
}

/// A Node object as a fit::node: its name and the GPUs of its registration annotation (none
/// when the annotation is absent: not a GPU node). CPU and host memory are left at 0, so the
/// fit engine only judges GPUs (kube-scheduler checks CPU and memory itself). Pure, thread-safe.
inline result<fit::node> node_from_json(const json& node) {
  fit::node n;
  const json* meta = detail::member(node, "metadata");
  n.name = meta != nullptr ? detail::string_at(*meta, "name") : std::string();
  if (n.name.empty()) {
    return make_error(errc::invalid_value, "node: metadata.name: expected a non-empty string");
  }
  const json* reg = detail::annotation(node, k_node_register);
  if (reg == nullptr) return n;
  if (!reg->is_string()) {
    return make_error(
        errc::invalid_value,
        "node " + n.name + ": annotation " + std::string(k_node_register) + ": expected a string");
  }
  auto devices = fit::decode_node_devices(reg->get_ref<const std::string&>());
  if (!devices) {
    return error{devices.code(), "node " + n.name + ": " + devices.message()};
  }
  n.devices = std::move(*devices);
  if (const json* cordon = detail::annotation(node, k_device_cordon)) {
    if (!cordon->is_string()) {
      return make_error(errc::invalid_value, "node " + n.name + ": annotation " +
                                                 std::string(k_device_cordon) +
                                                 ": expected a comma-separated string of uuids");
    }
    for (const auto& uuid : detail::split_list(cordon->get_ref<const std::string&>())) {
      for (auto& d : n.devices) {
        if (d.uuid == uuid) d.cordoned = true;
      }
    }
  }
  return n;
}

/// The items of a List object (`{"kind":"NodeList","items":[...]}`) or a bare JSON array.
/// Null when \p j is neither.
inline const json* items(const json& j) {
  if (j.is_array()) return &j;
  const json* it = detail::member(j, "items");
  return it != nullptr && it->is_array() ? it : nullptr;
}

/// Nodes read from a list, and those skipped.
struct node_list {
  std::vector<fit::node> nodes;      ///< the nodes that map, in order
  std::vector<std::string> skipped;  ///< one line per node that does not, naming it and why
};

/// Each Node of \p node_items (a NodeList's items) as a fit::node, in order. A Node that does
/// not map (a malformed registration) is skipped, its reason prefixed by \p source (the file the
/// list came from), so one bad node never leaves every GPU pod unschedulable. Pure, thread-safe.
inline node_list nodes_from_items(const json& node_items, const std::string& source) {
  node_list out;
  for (const json& n : node_items) {
    auto node = node_from_json(n);
    if (!node) {
      out.skipped.push_back(source + ": " + node.message() + " (node skipped)");
      continue;
    }
    out.nodes.push_back(std::move(*node));
  }
  return out;
}

/// True when the pod waits for a node: no spec.nodeName, and phase Pending (or no status).
inline bool is_pending(const json& pod) {
  const json* spec = detail::member(pod, "spec");
  if (spec != nullptr && !detail::string_at(*spec, "nodeName").empty()) return false;
  const json* status = detail::member(pod, "status");
  const std::string phase = status != nullptr ? detail::string_at(*status, "phase") : "";
  return phase.empty() || phase == "Pending";
}

/// What a bound pod holds on one GPU (after collapsing its init containers).
struct held_device {
  std::string uuid;
  std::uint32_t slots = 0;
  std::uint64_t memory = 0;  ///< bytes
  std::uint32_t cores = 0;   ///< milli-GPU
};

/// A pod that holds GPUs: bound (spec.nodeName), not finished, with HAMi's devices annotation.
struct bound_pod {
  pod_ref ref;
  std::string node;
  std::vector<held_device> devices;  ///< per GPU: max(init peak, app sum), as HAMi counts
};

/// The GPUs a Pod object holds, or nullopt for a pod that holds none (no node, Succeeded or
/// Failed, no devices annotation). A malformed annotation is an error naming the pod.
/// Init containers (not sidecars) are the first annotation entries; per GPU they count as the
/// larger of their peak and the app containers' sum. Pure, thread-safe.
inline result<std::optional<bound_pod>> bound_pod_from_json(const json& pod) {
  const json* spec = detail::member(pod, "spec");
  const std::string node_name = spec != nullptr ? detail::string_at(*spec, "nodeName") : "";
  const json* status = detail::member(pod, "status");
  const std::string phase = status != nullptr ? detail::string_at(*status, "phase") : "";
  if (node_name.empty() || phase == "Succeeded" || phase == "Failed") {
    return std::optional<bound_pod>{};
  }
  const json* ann = detail::annotation(pod, k_devices_allocated);
  if (ann == nullptr) ann = detail::annotation(pod, k_devices_to_allocate);
  if (ann == nullptr) return std::optional<bound_pod>{};
  bound_pod out;
  out.ref = pod_identity(pod);
  out.node = node_name;
  const std::string where = "pod " + out.ref.key();
  if (!ann->is_string()) {
    return make_error(errc::invalid_value, where + ": devices annotation: expected a string");
  }
  auto decoded = fit::decode_pod_devices(ann->get_ref<const std::string&>());
  if (!decoded) return error{decoded.code(), where + ": " + decoded.message()};
  std::size_t init_count = 0;
  if (const json* inits = spec != nullptr ? detail::member(*spec, "initContainers") : nullptr) {
    if (inits->is_array()) {
      for (const json& c : *inits) {
        if (is_sidecar(c)) break;  // sidecars are held like app containers
        ++init_count;
      }
    }
  }
  std::vector<fit::container_allocation> alloc;
  std::vector<std::string> uuids;
  for (std::size_t ci = 0; ci < decoded->size(); ++ci) {
    fit::container_allocation a;
    a.init = ci < init_count;
    for (const auto& d : (*decoded)[ci]) {
      std::size_t pos = 0;
      while (pos < uuids.size() && uuids[pos] != d.uuid) ++pos;
      if (pos == uuids.size()) uuids.push_back(d.uuid);
      a.devices.push_back({pos, d.memory_mib * fit::k_bytes_per_mib, cores_to_milli(d.cores)});
    }
    alloc.push_back(std::move(a));
  }
  for (const auto& [pos, t] : fit::cluster::collapse(alloc, uuids.size())) {
    out.devices.push_back({uuids[pos], t.slots, t.memory, t.cores});
  }
  return std::optional<bound_pod>{std::move(out)};
}

/// Charges \p held to \p nodes. A device used beyond a total (a card reporting more tasks than
/// its split count, or less memory than before) stays at its total: full, as HAMi treats it.
/// A node or GPU the list lacks is an error naming the pod, and nothing is charged.
/// Not thread-safe on \p nodes.
inline result<bool> charge(std::vector<fit::node>& nodes, const bound_pod& held) {
  const std::string where = "pod " + held.ref.key();
  fit::node* n = nullptr;
  for (auto& candidate : nodes) {
    if (candidate.name == held.node) n = &candidate;
  }
  if (n == nullptr) {
    return make_error(errc::invalid_value,
                      where + ": bound to node " + held.node + ", which the node list lacks");
  }
  std::vector<fit::device*> devs;
  for (const auto& h : held.devices) {
    fit::device* dev = nullptr;
    for (auto& candidate : n->devices) {
      if (candidate.uuid == h.uuid) dev = &candidate;
    }
    if (dev == nullptr) {
      return make_error(errc::invalid_value, where + ": device " +
                                                 ::gpuslice::detail::quoted(h.uuid) + " on node " +
                                                 held.node + " is not registered there");
    }
    devs.push_back(dev);
  }
  for (std::size_t i = 0; i < devs.size(); ++i) {
    fit::device& d = *devs[i];
    const held_device& h = held.devices[i];
    d.slots_used = std::min<std::uint64_t>(d.slots_total, std::uint64_t{d.slots_used} + h.slots);
    d.memory_used = std::min(d.memory_total, d.memory_used + h.memory);
    d.cores_used = std::min<std::uint64_t>(d.cores_total, std::uint64_t{d.cores_used} + h.cores);
  }
  return true;
}

/// Charges the devices a bound pod holds (see bound_pod_from_json and charge) to \p nodes.
/// Pods that hold nothing return false. Not thread-safe on \p nodes.
inline result<bool> charge_bound_pod(std::vector<fit::node>& nodes, const json& pod) {
  auto held = bound_pod_from_json(pod);
  if (!held) return std::move(held).err();
  if (!*held) return false;
  return charge(nodes, **held);
}

/// HAMi's devices annotation value of a placed decision on \p n. Pure, thread-safe.
inline result<std::string> devices_annotation(const fit::node& n, const fit::decision& d) {
  return fit::encode_pod_devices(fit::to_annotation(n, d.containers, k_vendor));
}

/// Why node \p n cannot take a pod, from its reasons in a fit report: the node-level reasons,
/// then how many devices failed for each device reason ("too few suitable GPUs (4 devices:
/// insufficient GPU memory)"), or "no GPUs registered". Pure, thread-safe.
inline std::string describe_rejection(const fit::node& n, const fit::reason_counts& reasons) {
  if (n.devices.empty()) return "no GPUs registered";
  fit::reason_counts devices;
  std::string out;
  for (std::size_t i = 0; i < fit::k_reason_count; ++i) {
    const auto r = static_cast<fit::reason>(i);
    if (reasons[r] == 0) continue;
    if (r < fit::reason::insufficient_cpu) {
      devices.add(r, reasons[r]);
    } else {
      if (!out.empty()) out += ", ";
      out += std::string(fit::describe(r));
    }
  }
  const std::string per_device = fit::format_reasons(devices, "device");
  if (per_device.empty()) return out;
  return out.empty() ? per_device : out + " (" + per_device + ")";
}

/// Names HAMi's node and GPU policies, as its scheduler config spells them.
struct policy_names {
  std::string node = "binpack";  ///< binpack | spread
  std::string gpu = "spread";    ///< a GPU policy chain (parse_gpu_policy)
};

/// The scorer for a node and GPU policy by name, with \p weights; an error names the unknown
/// policy or the bad weights.
inline result<fit::hami_scorer> scorer_from_names(const policy_names& p,
                                                  const fit::usage_weights& weights = {}) {
  fit::hami_policy node{};
  if (p.node == "binpack") {
    node = fit::hami_policy::binpack;
  } else if (p.node == "spread") {
    node = fit::hami_policy::spread;
  } else {
    return make_error(errc::invalid_value, "node policy " + ::gpuslice::detail::quoted(p.node) +
                                               ": expected binpack or spread");
  }
  auto gpu = parse_gpu_policy(p.gpu);
  if (!gpu) return std::move(gpu).err();
  if (auto e = fit::validate(weights)) return std::move(*e);
  return fit::hami_scorer(node, gpu->order, weights);
}

/// The scorer for \p pod: \p defaults, with the parts its `hami.io/node-scheduler-policy`,
/// `hami.io/gpu-scheduler-policy` and `hami.io/device-scoring-weights` annotations name
/// replaced. An annotation HAMi would refuse is an error naming the pod. Pure, thread-safe.
inline result<fit::hami_scorer> pod_scorer(const json& pod, const fit::hami_scorer& defaults) {
  const json* meta = detail::member(pod, "metadata");
  const json* ann = meta != nullptr ? detail::member(*meta, "annotations") : nullptr;
  if (ann == nullptr || (!ann->contains(k_node_policy) && !ann->contains(k_gpu_policy) &&
                         !ann->contains(k_scoring_weights))) {
    return defaults;
  }
  const std::string where = "pod " + pod_identity(pod).key() + ": annotation ";
  auto text = [&](std::string_view key, std::string& out) -> std::optional<error> {
    const json* v = detail::member(*ann, key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) {
      return make_error(errc::invalid_value, where + std::string(key) + ": expected a string");
    }
    out = v->get<std::string>();
    return std::nullopt;
  };
  std::string node, gpu, weights;
  if (auto e = text(k_node_policy, node)) return std::move(*e);
  if (auto e = text(k_gpu_policy, gpu)) return std::move(*e);
  if (auto e = text(k_scoring_weights, weights)) return std::move(*e);
  fit::hami_policy node_policy = defaults.node_policy();
  if (ann->contains(k_node_policy)) {
    if (node == "binpack" || node == "spread") {
      node_policy = node == "binpack" ? fit::hami_policy::binpack : fit::hami_policy::spread;
    } else {
      return make_error(errc::invalid_value, where + std::string(k_node_policy) + " " +
                                                 ::gpuslice::detail::quoted(node) +
                                                 ": expected binpack or spread");
    }
  }
  fit::gpu_policy gpu_policy = defaults.device_policy();
  if (ann->contains(k_gpu_policy)) {
    auto chain = parse_gpu_policy(gpu);
    if (!chain)
      return error{chain.code(), where + std::string(k_gpu_policy) + ": " + chain.message()};
    gpu_policy = chain->order;
  }
  fit::usage_weights w = defaults.weights();
  if (ann->contains(k_scoring_weights)) {
    auto parsed = parse_scoring_weights(weights);
    if (!parsed) return error{parsed.code(), where + parsed.message()};
    w = *parsed;
  }
  return fit::hami_scorer(node_policy, gpu_policy, w);
}

/// Every node policy a program accepts: HAMi's two and the fragmentation policies.
inline constexpr std::string_view k_node_policy_choices = "binpack, spread, fgd or sfgd";

/// The fragmentation policy (fit/hami_frag.hpp) a node policy name names: "fgd" or "sfgd";
/// none for HAMi's binpack and spread and for unknown names. Pure, thread-safe.
inline std::optional<fit::frag_policy> frag_policy_of(std::string_view node_policy) noexcept {
  fit::frag_policy p{};
  if (fit::frag_policy_from_name(node_policy, p)) return p;
  return std::nullopt;
}

/// True when \p pod's annotations name a node policy (`hami.io/node-scheduler-policy`). Under
/// fgd or sfgd such a pod is placed by the HAMi policy it names. Pure, thread-safe.
inline bool names_node_policy(const json& pod) {
  const json* meta = detail::member(pod, "metadata");
  const json* ann = meta != nullptr ? detail::member(*meta, "annotations") : nullptr;
  return ann != nullptr && ann->contains(k_node_policy);
}

}  // namespace gpuslice::kube
