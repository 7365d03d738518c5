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
/// Shared by the controller and the scheduler extender examples. Every function is pure and
/// thread-safe; malformed input is an error naming the object and the field, never a throw.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/fit.hpp"
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

/// The GPU request of a Pod object: init containers first, then containers (each container's
/// `resources.limits`, falling back to `requests`), with the pod's type, uuid and NUMA
/// annotations applied to every container. Errors name the pod, the container and the field.
/// Pure, thread-safe.
inline result<fit::pod_request> pod_request_from_json(const json& pod) {
  const pod_ref ref = pod_identity(pod);
  const std::string where = "pod " + ref.key();
  if (!pod.is_object()) return make_error(errc::invalid_value, "pod: expected a JSON object");
  if (ref.name.empty()) {
    return make_error(errc::invalid_value, where + ": metadata.name: expected a non-empty string");
  }
  fit::container_request base;
  auto list = [&](std::string_view key, std::vector<std::string>& out) -> std::optional<error> {
    const json* v = detail::annotation(pod, key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) {
      return make_error(errc::invalid_value,
                        where + ": annotation " + std::string(key) + ": expected a string");
    }
    out = detail::split_list(v->get_ref<const std::string&>());
    return std::nullopt;
  };
  if (auto e = list(k_use_type, base.use_types)) return std::move(*e);
  if (auto e = list(k_nouse_type, base.nouse_types)) return std::move(*e);
  if (auto e = list(k_use_uuid, base.use_uuids)) return std::move(*e);
  if (auto e = list(k_nouse_uuid, base.nouse_uuids)) return std::move(*e);
  if (const json* v = detail::annotation(pod, k_numa_bind)) {
    if (!v->is_string() || (*v != "true" && *v != "false")) {
      return make_error(errc::invalid_value, where + ": annotation " + std::string(k_numa_bind) +
                                                 ": expected \"true\" or \"false\"");
    }
    base.numa_bind = *v == "true";
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
    for (const json& c : *cs) {
      const std::string cw =
          where + ": container " + ::gpuslice::detail::quoted(detail::string_at(c, "name", "?"));
      const json* res = detail::member(c, "resources");
      const json* limits = res != nullptr ? detail::member(*res, "limits") : nullptr;
      const json* requests = res != nullptr ? detail::member(*res, "requests") : nullptr;
      auto amount = [&](std::string_view name, std::int64_t max,
                        std::int64_t& value) -> std::optional<error> {
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
        return std::nullopt;
      };
      constexpr std::int64_t k_max_gpus_per_container = 1024;
      constexpr auto k_max_mib = static_cast<std::int64_t>(fit::k_int32_max);
      constexpr auto k_max_pct = static_cast<std::int64_t>(fit::k_max_percent);
      std::int64_t count = 0, mem = 0, pct = 0, cores = 0;
      if (auto e = amount(k_resource_gpu, k_max_gpus_per_container, count)) return std::move(*e);
      if (auto e = amount(k_resource_memory, k_max_mib, mem)) return std::move(*e);
      if (auto e = amount(k_resource_memory_percent, k_max_pct, pct)) return std::move(*e);
      if (auto e = amount(k_resource_cores, k_max_pct, cores)) return std::move(*e);
      fit::container_request r;
      if (count > 0) {
        r = base;
        r.count = static_cast<std::uint32_t>(count);
        r.memory = static_cast<std::uint64_t>(mem) * fit::k_bytes_per_mib;
        r.memory_percent = static_cast<std::uint32_t>(pct);
        r.cores_percent(static_cast<std::uint32_t>(cores));
      } else if (mem != 0 || pct != 0 || cores != 0) {
        return make_error(errc::invalid_value, cw + ": GPU memory or cores without " +
                                                   std::string(k_resource_gpu) +
                                                   "; expected nvidia.com/gpu >= 1");
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
  return n;
}

/// The items of a List object (`{"kind":"NodeList","items":[...]}`) or a bare JSON array.
/// Null when \p j is neither.
inline const json* items(const json& j) {
  if (j.is_array()) return &j;
  const json* it = detail::member(j, "items");
  return it != nullptr && it->is_array() ? it : nullptr;
}

/// Each Node of \p node_items (a NodeList's items) as a fit::node, in order. The first Node
/// that does not map is the error, its message prefixed by \p source (the file the list came
/// from). Pure, thread-safe.
inline result<std::vector<fit::node>> nodes_from_items(const json& node_items,
                                                       const std::string& source) {
  std::vector<fit::node> nodes;
  for (const json& n : node_items) {
    auto node = node_from_json(n);
    if (!node) return error{node.code(), source + ": " + node.message()};
    nodes.push_back(std::move(*node));
  }
  return nodes;
}

/// True when the pod waits for a node: no spec.nodeName, and phase Pending (or no status).
inline bool is_pending(const json& pod) {
  const json* spec = detail::member(pod, "spec");
  if (spec != nullptr && !detail::string_at(*spec, "nodeName").empty()) return false;
  const json* status = detail::member(pod, "status");
  const std::string phase = status != nullptr ? detail::string_at(*status, "phase") : "";
  return phase.empty() || phase == "Pending";
}

/// Charges the devices a bound pod holds (its allocated or to-allocate annotation on
/// spec.nodeName) to \p nodes. Pods without a node, finished pods (Succeeded, Failed) and pods
/// without the annotation charge nothing and return false. An annotation naming a device the
/// node does not have, or exceeding a device's totals, is an error naming the pod.
/// Pure apart from \p nodes; not thread-safe on \p nodes.
inline result<bool> charge_bound_pod(std::vector<fit::node>& nodes, const json& pod) {
  const json* spec = detail::member(pod, "spec");
  const std::string node_name = spec != nullptr ? detail::string_at(*spec, "nodeName") : "";
  const json* status = detail::member(pod, "status");
  const std::string phase = status != nullptr ? detail::string_at(*status, "phase") : "";
  if (node_name.empty() || phase == "Succeeded" || phase == "Failed") return false;
  const json* ann = detail::annotation(pod, k_devices_allocated);
  if (ann == nullptr) ann = detail::annotation(pod, k_devices_to_allocate);
  if (ann == nullptr) return false;
  const std::string where = "pod " + pod_identity(pod).key();
  if (!ann->is_string()) {
    return make_error(errc::invalid_value, where + ": devices annotation: expected a string");
  }
  auto decoded = fit::decode_pod_devices(ann->get_ref<const std::string&>());
  if (!decoded) return error{decoded.code(), where + ": " + decoded.message()};
  fit::node* n = nullptr;
  for (auto& candidate : nodes) {
    if (candidate.name == node_name) n = &candidate;
  }
  if (n == nullptr) {
    return make_error(errc::invalid_value,
                      where + ": bound to node " + node_name + ", which the node list lacks");
  }
  for (const auto& container : *decoded) {
    for (const auto& d : container) {
      fit::device* dev = nullptr;
      for (auto& candidate : n->devices) {
        if (candidate.uuid == d.uuid) dev = &candidate;
      }
      const std::uint64_t bytes = d.memory_mib * fit::k_bytes_per_mib;
      const std::uint32_t milli = cores_to_milli(d.cores);
      if (dev == nullptr || dev->slots_used >= dev->slots_total ||
          dev->memory_total - dev->memory_used < bytes ||
          dev->cores_total - dev->cores_used < milli) {
        return make_error(errc::out_of_range,
                          where + ": device " + ::gpuslice::detail::quoted(d.uuid) + " on node " +
                              node_name + " is unknown or cannot hold what the pod holds");
      }
      dev->slots_used += 1;
      dev->memory_used += bytes;
      dev->cores_used += milli;
    }
  }
  return true;
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
  std::string gpu = "spread";    ///< binpack | spread | topology
};

/// The scorer for a node and GPU policy by name; an error names the unknown one.
inline result<fit::hami_scorer> scorer_from_names(const policy_names& p) {
  fit::hami_policy node{};
  fit::gpu_policy gpu{};
  if (p.node == "binpack") {
    node = fit::hami_policy::binpack;
  } else if (p.node == "spread") {
    node = fit::hami_policy::spread;
  } else {
    return make_error(errc::invalid_value, "node policy " + ::gpuslice::detail::quoted(p.node) +
                                               ": expected binpack or spread");
  }
  if (p.gpu == "binpack") {
    gpu = fit::gpu_policy::binpack;
  } else if (p.gpu == "spread") {
    gpu = fit::gpu_policy::spread;
  } else if (p.gpu == "topology") {
    gpu = fit::gpu_policy::topology;
  } else {
    return make_error(errc::invalid_value, "GPU policy " + ::gpuslice::detail::quoted(p.gpu) +
                                               ": expected binpack, spread or topology");
  }
  return fit::hami_scorer(node, gpu);
}

}  // namespace gpuslice::kube
