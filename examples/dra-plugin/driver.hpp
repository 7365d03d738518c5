#pragma once
/// \file
/// The decisions of gpuslice's DRA driver, apart from the protocol (main.cpp): its settings,
/// the ResourceSlices that publish the node's GPUs with consumable `memory` and `cores`
/// capacity, the reading of a ResourceClaim's allocation, the CDI spec that turns a claim's
/// share into the shim's environment contract, and the checkpoint of what was prepared.
/// Every function is pure (or touches only the files it names) and thread-safe; bad input is a
/// message naming the object, the field and what was expected, never a throw.
///
/// The objects follow the resource.k8s.io/v1 types (staging/src/k8s.io/api/resource/v1/types.go):
/// ResourceSlice.spec {driver, pool {name, generation, resourceSliceCount}, nodeName, devices[]},
/// Device {name, attributes, capacity {value, requestPolicy {default, validRange {min, step}}},
/// allowMultipleAllocations}, and ResourceClaim.status.allocation.devices.results[] {request,
/// driver, pool, device, shareID, consumedCapacity}.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "gpuslice/result.hpp"
#include "kube.hpp"

namespace gpuslice::dra {

using json = nlohmann::json;

/// The driver's default name (a DNS subdomain: DeviceClasses select it, CDI kinds carry it).
inline constexpr std::string_view k_default_driver = "gpu.gpuslice.dev";
/// The resource.k8s.io API group and version the driver speaks.
inline constexpr std::string_view k_api_version = "resource.k8s.io/v1";
/// The ResourceSlice API's limit of devices in one slice.
inline constexpr std::size_t k_max_devices_per_slice = 128;
/// The ResourceSlice API's limit of attributes plus capacities of one device.
inline constexpr std::size_t k_max_attributes_and_capacities = 32;
/// The capacity names a claim asks for.
inline constexpr std::string_view k_memory = "memory";
inline constexpr std::string_view k_cores = "cores";
/// Bytes per MiB: the memory limit is written in MiB, as the shim's contract reads "3000m".
inline constexpr std::int64_t k_mib = std::int64_t{1} << 20;
/// Percent of a whole GPU's cores.
inline constexpr std::int64_t k_full_cores = 100;
/// The checkpoint's layout version; a checkpoint of another version is refused.
inline constexpr int k_checkpoint_version = 1;
/// The CDI specification version the spec files declare (env, mounts).
inline constexpr std::string_view k_cdi_version = "0.6.0";
/// The ledger file name inside a claim's ledger directory (the shim's contract).
inline constexpr std::string_view k_ledger_file = "gpuslice.cache";
/// The node region file, shared with the device plugin's containers.
inline constexpr std::string_view k_region_file = "node.region";
/// Largest memory or core scaling factor accepted.
inline constexpr double k_max_scaling = 100.0;

/// What the driver runs with. A plain value.
struct settings {
  std::string driver = std::string(k_default_driver);
  std::string node_name;   ///< --node-name or NODE_NAME
  std::string api_server;  ///< --api-server URL; empty: in-cluster configuration
  std::string registry_dir = "/var/lib/kubelet/plugins_registry";
  std::string plugin_dir;  ///< default /var/lib/kubelet/plugins/<driver>
  std::string cdi_dir = "/var/run/cdi";
  std::string host_hook_path = "/usr/local/vgpu";       ///< on the host (and in this pod)
  std::string container_hook_path = "/usr/local/vgpu";  ///< where containers see it
  std::string nvml_library = "libnvidia-ml.so.1";
  std::string mig_strategy = "none";  ///< none: MIG-mode GPUs are not published; mixed: their MIGs
  double memory_scaling = 1.0;        ///< memory published = physical x this (> 1: oversubscribe)
  double core_scaling = 1.0;          ///< cores published = 100 x this
  std::int64_t memory_step = k_mib;   ///< the memory requestPolicy's minimum and step, bytes
  int health_interval_ms = 5000;      ///< how often NVML is probed
  int resync_interval_ms = 30000;     ///< how often the slices are checked against the wanted
  int watch_interval_ms = 1000;       ///< how often the sockets are checked
};

/// The usage text.
inline std::string usage() {
  return "usage: gpuslice-dra-plugin [flags]\n"
         "  --driver-name NAME          the DRA driver name (gpu.gpuslice.dev)\n"
         "  --node-name NAME            this node (default: $NODE_NAME)\n"
         "  --api-server URL            the API server (default: in-cluster configuration)\n"
         "  --registry-dir DIR          kubelet's plugins_registry directory\n"
         "  --plugin-dir DIR            where dra.sock and the checkpoint live\n"
         "                              (/var/lib/kubelet/plugins/<driver>)\n"
         "  --cdi-dir DIR               where CDI spec files are written (/var/run/cdi)\n"
         "  --host-hook-path DIR        libgpuslice.so and the ledgers on the host "
         "(/usr/local/vgpu)\n"
         "  --container-hook-path DIR   where containers see it (/usr/local/vgpu)\n"
         "  --nvml-library PATH         NVML to dlopen (libnvidia-ml.so.1)\n"
         "  --mig-strategy none|mixed   publish the MIG devices of MIG-mode GPUs (mixed)\n"
         "  --device-memory-scaling X   memory published per GPU, as a multiple of its own (1)\n"
         "  --device-core-scaling X     cores published per GPU, as a multiple of 100% (1)\n"
         "  --memory-step QUANTITY      the smallest memory share and its step (1Mi)\n"
         "  --health-interval-ms N      NVML probe period (5000)\n"
         "  --resync-interval-ms N      ResourceSlice check period (30000)\n"
         "  --watch-interval-ms N       socket check period (1000)\n";
}

namespace detail {

/// Parses a decimal double in (0, max]; nullopt otherwise.
inline std::optional<double> parse_scaling(const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size() || errno != 0 || !(d > 0) || d > k_max_scaling) {
    return std::nullopt;
  }
  return d;
}

/// "ns/name" of an object's metadata (or just the name).
inline std::string object_key(const std::string& ns, const std::string& name) {
  return ns.empty() ? name : ns + "/" + name;
}

/// Writes \p text to \p path through a temporary file and a rename, so a reader (the container
/// runtime, a restarted plugin) never sees half of it. An error message, or nullopt.
inline std::optional<std::string> write_atomically(const std::string& path,
                                                   const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return tmp + ": cannot write";
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return "rename " + tmp + " to " + path + ": " + why;
  }
  return std::nullopt;
}

}  // namespace detail

/// Parses the flags \p args (a NODE_NAME from \p env_node_name when --node-name is absent).
/// Errors are one line naming the flag and what it takes. Pure, thread-safe.
inline result<settings> parse_settings(const std::vector<std::string>& args,
                                       const char* env_node_name) {
  settings s;
  auto bad = [](const std::string& flag, const std::string& v, const std::string& expected) {
    return make_error(errc::invalid_value,
                      flag + " " + ::gpuslice::detail::quoted(v) + ": expected " + expected);
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (i + 1 >= args.size()) return bad(a, "", "a flag with a value (see --help)");
    const std::string& v = args[++i];
    auto millis = [&](int& out) -> bool {
      std::uint64_t n = 0;
      constexpr std::uint64_t k_max_ms = 3600000;
      if (!fit::detail::parse_uint(v, k_max_ms, n) || n == 0) return false;
      out = static_cast<int>(n);
      return true;
    };
    if (a == "--driver-name") {
      s.driver = v;
    } else if (a == "--node-name") {
      s.node_name = v;
    } else if (a == "--api-server") {
      s.api_server = v;
    } else if (a == "--registry-dir") {
      s.registry_dir = v;
    } else if (a == "--plugin-dir") {
      s.plugin_dir = v;
    } else if (a == "--cdi-dir") {
      s.cdi_dir = v;
    } else if (a == "--host-hook-path") {
      s.host_hook_path = v;
    } else if (a == "--container-hook-path") {
      s.container_hook_path = v;
    } else if (a == "--nvml-library") {
      s.nvml_library = v;
    } else if (a == "--mig-strategy") {
      if (v != "none" && v != "mixed") return bad(a, v, "none or mixed");
      s.mig_strategy = v;
    } else if (a == "--device-memory-scaling" || a == "--device-core-scaling") {
      auto d = detail::parse_scaling(v);
      if (!d) return bad(a, v, "a number in (0, 100]");
      (a == "--device-memory-scaling" ? s.memory_scaling : s.core_scaling) = *d;
    } else if (a == "--memory-step") {
      auto q = kube::parse_quantity(v);
      if (!q || *q <= 0) return bad(a, v, "a positive quantity such as 1Mi");
      s.memory_step = *q;
    } else if (a == "--health-interval-ms") {
      if (!millis(s.health_interval_ms)) return bad(a, v, "milliseconds, 1..3600000");
    } else if (a == "--resync-interval-ms") {
      if (!millis(s.resync_interval_ms)) return bad(a, v, "milliseconds, 1..3600000");
    } else if (a == "--watch-interval-ms") {
      if (!millis(s.watch_interval_ms)) return bad(a, v, "milliseconds, 1..3600000");
    } else {
      return make_error(errc::invalid_value,
                        "unknown flag " + ::gpuslice::detail::quoted(a) + " (see --help)");
    }
  }
  if (s.node_name.empty() && env_node_name != nullptr) s.node_name = env_node_name;
  if (s.node_name.empty()) {
    return make_error(errc::invalid_value, "no node name: pass --node-name or set NODE_NAME");
  }
  if (s.driver.empty() || s.driver.find('/') != std::string::npos) {
    return bad("--driver-name", s.driver, "a DNS subdomain such as gpu.gpuslice.dev");
  }
  if (s.plugin_dir.empty()) s.plugin_dir = "/var/lib/kubelet/plugins/" + s.driver;
  return s;
}

/// One device the driver publishes: a whole GPU, or a MIG device of a GPU in MIG mode.
struct gpu {
  std::string name;  ///< the device's name in the slice: "gpu-<index>", "gpu-<index>-mig-<i>"
  std::string uuid;  ///< what NVIDIA_VISIBLE_DEVICES names
  std::string product;
  unsigned index = 0;  ///< the physical GPU's index
  std::uint64_t memory_total = 0;
  std::string compute_capability;  ///< "8.0", empty when NVML does not say
  std::string parent_uuid;         ///< a MIG device's GPU
  std::string profile;             ///< a MIG device's profile, "1g.5gb"
  bool healthy = true;
  std::string why_unhealthy;
};

/// Quantities published for a device: its memory (scaled, rounded down to the step) and cores.
struct device_capacity {
  std::int64_t memory = 0;
  std::int64_t cores = 0;
};

/// The capacity \p g publishes under \p s. Pure.
inline device_capacity capacity_of(const gpu& g, const settings& s) {
  const auto scaled =
      static_cast<std::int64_t>(static_cast<double>(g.memory_total) * s.memory_scaling);
  return {scaled / s.memory_step * s.memory_step,
          static_cast<std::int64_t>(static_cast<double>(k_full_cores) * s.core_scaling)};
}

/// A "MAJOR.MINOR.PATCH" semantic version of a dotted number ("550.54.15", "8.0" -> "8.0.0"),
/// leading zeros dropped; nullopt when \p v is not one to three dot-separated numbers. Pure.
inline std::optional<std::string> semver_of(std::string_view v) {
  std::vector<std::uint64_t> parts;
  std::string cur;
  constexpr std::size_t k_semver_parts = 3;
  for (std::size_t i = 0; i <= v.size(); ++i) {
    if (i == v.size() || v[i] == '.') {
      std::uint64_t n = 0;
      constexpr std::uint64_t k_max_part = 1000000000;
      if (cur.empty() || !fit::detail::parse_uint(cur, k_max_part, n)) return std::nullopt;
      parts.push_back(n);
      cur.clear();
      continue;
    }
    cur += v[i];
  }
  if (parts.size() > k_semver_parts) return std::nullopt;
  while (parts.size() < k_semver_parts) parts.push_back(0);
  return std::to_string(parts[0]) + "." + std::to_string(parts[1]) + "." + std::to_string(parts[2]);
}

/// The slice Device of \p g (attributes and consumable capacities). Pure.
inline json slice_device(const gpu& g, const settings& s, const std::string& driver_version) {
  json attrs = {{"uuid", {{"string", g.uuid}}},
                {"productName", {{"string", g.product}}},
                {"index", {{"int", g.index}}},
                {"type", {{"string", g.profile.empty() ? "gpu" : "mig"}}}};
  if (auto v = semver_of(driver_version)) {
    attrs["driverVersion"] = {{"version", *v}};
  } else if (!driver_version.empty()) {
    attrs["driverVersion"] = {{"string", driver_version}};
  }
  if (auto v = semver_of(g.compute_capability)) attrs["cudaComputeCapability"] = {{"version", *v}};
  if (!g.parent_uuid.empty()) attrs["parentUUID"] = {{"string", g.parent_uuid}};
  if (!g.profile.empty()) attrs["profile"] = {{"string", g.profile}};
  const device_capacity c = capacity_of(g, s);
  // Each capacity: the whole device when a claim does not say, else any multiple of the step
  // from the step up (the scheduler rounds a request up to the next one).
  json cap = {
      {std::string(k_memory),
       {{"value", std::to_string(c.memory)},
        {"requestPolicy",
         {{"default", std::to_string(c.memory)},
          {"validRange",
           {{"min", std::to_string(s.memory_step)}, {"step", std::to_string(s.memory_step)}}}}}}},
      {std::string(k_cores),
       {{"value", std::to_string(c.cores)},
        {"requestPolicy",
         {{"default", std::to_string(c.cores)}, {"validRange", {{"min", "1"}, {"step", "1"}}}}}}}};
  return {{"name", g.name},
          {"attributes", attrs},
          {"capacity", cap},
          {"allowMultipleAllocations", true}};
}

/// The name of the node's \p i-th slice. Pure.
inline std::string slice_name(const settings& s, std::size_t i) {
  return s.node_name + "-" + s.driver + "-" + std::to_string(i);
}

/// The ResourceSlices publishing the healthy devices of \p gpus: one pool named after the node,
/// in slices of at most k_max_devices_per_slice devices (one slice, empty, when there is none:
/// the pool then says the node has no device). \p owner, when not null, is the Node object
/// (its name and uid make it the slices' owner, so they go with the node). Pure.
inline std::vector<json> resource_slices(const std::vector<gpu>& gpus, const settings& s,
                                         const std::string& driver_version, std::int64_t generation,
                                         const json* owner) {
  std::vector<json> devices;
  for (const auto& g : gpus) {
    if (g.healthy) devices.push_back(slice_device(g, s, driver_version));
  }
  const std::size_t count = std::max<std::size_t>(
      1, (devices.size() + k_max_devices_per_slice - 1) / k_max_devices_per_slice);
  std::vector<json> out;
  for (std::size_t i = 0; i < count; ++i) {
    json part = json::array();
    for (std::size_t d = i * k_max_devices_per_slice;
         d < devices.size() && d < (i + 1) * k_max_devices_per_slice; ++d) {
      part.push_back(devices[d]);
    }
    json meta = {{"name", slice_name(s, i)}};
    if (owner != nullptr) {
      meta["ownerReferences"] = json::array({{{"apiVersion", "v1"},
                                              {"kind", "Node"},
                                              {"name", kube::detail::string_at(*owner, "name")},
                                              {"uid", kube::detail::string_at(*owner, "uid")},
                                              {"controller", true}}});
    }
    out.push_back(
        {{"apiVersion", std::string(k_api_version)},
         {"kind", "ResourceSlice"},
         {"metadata", meta},
         {"spec",
          {{"driver", s.driver},
           {"nodeName", s.node_name},
           {"pool",
            {{"name", s.node_name}, {"generation", generation}, {"resourceSliceCount", count}}},
           {"devices", part}}}});
  }
  return out;
}

/// The collection path of ResourceSlices.
inline std::string slices_path() {
  return "/apis/" + std::string(k_api_version) + "/resourceslices";
}
/// One ResourceClaim.
inline std::string claim_path(const std::string& ns, const std::string& name) {
  return "/apis/" + std::string(k_api_version) + "/namespaces/" + ns + "/resourceclaims/" + name;
}

/// A claim as kubelet names it.
struct claim_ref {
  std::string name_space;
  std::string uid;
  std::string name;
  std::string key() const { return detail::object_key(name_space, name); }
};

/// One share of a device that a claim holds on this node.
struct share {
  std::string request;          ///< the claim's request it serves
  std::string pool;             ///< the pool (the node)
  std::string device;           ///< the device's name in the slice
  std::string share_id;         ///< the scheduler's shareID; empty for an exclusive allocation
  std::string uuid;             ///< the device's UUID
  std::int64_t memory_mib = 0;  ///< the memory limit
  std::int64_t cores = 0;       ///< the SM limit in percent; 0 = none
};

/// What preparing a claim makes, as the checkpoint records it.
struct prepared_claim {
  claim_ref ref;
  std::vector<share> shares;
  std::string cdi_spec;    ///< the spec file
  std::string ledger_dir;  ///< the host directory of the claim's ledger
};

/// The CDI kind of the driver's devices, "<driver>/gpu".
inline std::string cdi_kind(const settings& s) { return s.driver + "/gpu"; }

/// The CDI device name of \p sh of claim \p uid: unique per share, so two shares of one GPU
/// never collide.
inline std::string cdi_name(const std::string& uid, const share& sh) {
  return uid + "-" + (sh.share_id.empty() ? sh.device : sh.share_id);
}

/// The fully qualified CDI device id of \p sh.
inline std::string cdi_id(const settings& s, const std::string& uid, const share& sh) {
  return cdi_kind(s) + "=" + cdi_name(uid, sh);
}

namespace detail {

/// The consumed amount of capacity \p name in \p result, or an error naming what is wrong.
inline std::variant<std::int64_t, std::string> consumed(const json& result, std::string_view name) {
  constexpr std::string_view k_expected = ": expected the memory and cores the scheduler took";
  const json* cc = kube::detail::member(result, "consumedCapacity");
  if (cc == nullptr || !cc->is_object()) return "no consumedCapacity" + std::string(k_expected);
  const json* q = kube::detail::member(*cc, name);
  if (q == nullptr) return "consumedCapacity has no " + std::string(name) + std::string(k_expected);
  const std::string text = q->is_string() ? q->get<std::string>() : q->dump();
  auto v = kube::parse_quantity(text);
  if (!v) return "consumedCapacity." + std::string(name) + " " + v.message();
  return *v;
}

}  // namespace detail

/// The shares claim \p claim (the ResourceClaim object) holds on this node for this driver, read
/// from status.allocation.devices.results[], checked against \p gpus; or one line saying why
/// the claim cannot be prepared. Pure, thread-safe.
inline std::variant<std::vector<share>, std::string> claim_shares(const json& claim,
                                                                  const claim_ref& ref,
                                                                  const std::vector<gpu>& gpus,
                                                                  const settings& s) {
  const std::string who = "claim " + ref.key();
  auto fail = [&](const std::string& why) { return who + ": " + why; };
  const json* meta = kube::detail::member(claim, "metadata");
  const std::string uid = meta != nullptr ? kube::detail::string_at(*meta, "uid") : "";
  if (uid != ref.uid) {
    return fail("the API server has uid " + ::gpuslice::detail::quoted(uid) +
                ", kubelet asked for " + ::gpuslice::detail::quoted(ref.uid) +
                " (the claim was deleted and created again)");
  }
  const json* status = kube::detail::member(claim, "status");
  const json* alloc = status != nullptr ? kube::detail::member(*status, "allocation") : nullptr;
  if (alloc == nullptr || alloc->is_null()) return fail("not allocated (no status.allocation)");
  const json* devices = kube::detail::member(*alloc, "devices");
  const json* results = devices != nullptr ? kube::detail::member(*devices, "results") : nullptr;
  if (results == nullptr || !results->is_array()) {
    return fail("status.allocation.devices.results: expected an array");
  }
  std::vector<share> out;
  for (std::size_t i = 0; i < results->size(); ++i) {
    const json& r = (*results)[i];
    const std::string at = "status.allocation.devices.results[" + std::to_string(i) + "]";
    if (!r.is_object()) return fail(at + ": expected an object");
    if (kube::detail::string_at(r, "driver") != s.driver) continue;
    share sh;
    sh.request = kube::detail::string_at(r, "request");
    sh.pool = kube::detail::string_at(r, "pool");
    sh.device = kube::detail::string_at(r, "device");
    sh.share_id = kube::detail::string_at(r, "shareID");
    if (sh.pool != s.node_name) {
      return fail(at + ": pool " + ::gpuslice::detail::quoted(sh.pool) + " is not this node's (" +
                  s.node_name + ")");
    }
    const auto it =
        std::find_if(gpus.begin(), gpus.end(), [&](const gpu& g) { return g.name == sh.device; });
    if (it == gpus.end()) {
      return fail(at + ": device " + ::gpuslice::detail::quoted(sh.device) +
                  " is not a device of node " + s.node_name);
    }
    if (!it->healthy) {
      return fail(at + ": device " + sh.device + " (" + it->uuid + ") is unhealthy (" +
                  it->why_unhealthy + ")");
    }
    sh.uuid = it->uuid;
    const device_capacity cap = capacity_of(*it, s);
    const json* cc = kube::detail::member(r, "consumedCapacity");
    if (sh.share_id.empty() && cc == nullptr) {
      // An exclusive allocation (a cluster without consumable capacity): the whole device.
      sh.memory_mib = cap.memory / k_mib;
      sh.cores = 0;
    } else {
      auto mem = detail::consumed(r, k_memory);
      if (auto* e = std::get_if<std::string>(&mem)) return fail(at + ": " + *e);
      auto cores = detail::consumed(r, k_cores);
      if (auto* e = std::get_if<std::string>(&cores)) return fail(at + ": " + *e);
      const std::int64_t bytes = std::get<std::int64_t>(mem);
      const std::int64_t pct = std::get<std::int64_t>(cores);
      if (bytes <= 0 || bytes > cap.memory) {
        return fail(at + ": consumed memory " + std::to_string(bytes) + " bytes: expected 1.." +
                    std::to_string(cap.memory) + " (device " + sh.device + ")");
      }
      if (pct <= 0 || pct > cap.cores) {
        return fail(at + ": consumed cores " + std::to_string(pct) + ": expected 1.." +
                    std::to_string(cap.cores) + " (device " + sh.device + ")");
      }
      // The limit is whole MiB, rounded down: never more than the scheduler accounted for.
      sh.memory_mib = bytes / k_mib;
      if (sh.memory_mib == 0) {
        return fail(at + ": consumed memory " + std::to_string(bytes) +
                    " bytes is under 1 MiB, the smallest limit the shim takes");
      }
      // Cores above 100% (core scaling) mean the whole GPU's SMs.
      sh.cores = pct >= k_full_cores ? 0 : pct;
    }
    out.push_back(std::move(sh));
  }
  if (out.empty()) return fail("no device of driver " + s.driver + " is allocated to it");
  return out;
}

/// The host directory of claim \p uid's ledger. Pure.
inline std::string ledger_dir(const settings& s, const std::string& uid) {
  return s.host_hook_path + "/containers/" + uid + "_claim";
}

/// The CDI spec file of claim \p uid. Pure.
inline std::string cdi_spec_path(const settings& s, const std::string& uid) {
  return s.cdi_dir + "/" + s.driver + "-" + uid + ".json";
}

/// The environment of claim \p c's containers (the shim's contract), in a stable order: the
/// claim's devices are indexed as NVIDIA_VISIBLE_DEVICES lists them. Pure.
inline std::vector<std::pair<std::string, std::string>> claim_env(const prepared_claim& c,
                                                                  const settings& s) {
  std::vector<std::pair<std::string, std::string>> env;
  std::string visible;
  for (std::size_t i = 0; i < c.shares.size(); ++i) {
    const share& sh = c.shares[i];
    env.emplace_back("CUDA_DEVICE_MEMORY_LIMIT_" + std::to_string(i),
                     std::to_string(sh.memory_mib) + "m");
    env.emplace_back("CUDA_DEVICE_SM_LIMIT_" + std::to_string(i), std::to_string(sh.cores));
    visible += (visible.empty() ? "" : ",") + sh.uuid;
  }
  env.emplace_back("NVIDIA_VISIBLE_DEVICES", visible);
  env.emplace_back("CUDA_DEVICE_MEMORY_SHARED_CACHE",
                   s.container_hook_path + "/cache/" + std::string(k_ledger_file));
  env.emplace_back("GPUSLICE_NODE_REGION",
                   s.container_hook_path + "/region/" + std::string(k_region_file));
  if (s.memory_scaling > 1.0) env.emplace_back("CUDA_OVERSUBSCRIBE", "true");
  return env;
}

/// A CDI mount entry.
inline json cdi_mount(const std::string& host, const std::string& container, bool read_only) {
  return {{"hostPath", host},
          {"containerPath", container},
          {"options", json::array({read_only ? "ro" : "rw", "nosuid", "nodev", "bind"})}};
}

/// The CDI spec of claim \p c: one device per share, each carrying the claim's whole
/// environment and mounts (a container gets all the claim's devices, so the edits agree). Pure.
inline json cdi_spec(const prepared_claim& c, const settings& s) {
  json env = json::array();
  for (const auto& [k, v] : claim_env(c, s)) env.push_back(k + "=" + v);
  json mounts = json::array(
      {cdi_mount(c.ledger_dir, s.container_hook_path + "/cache", false),
       cdi_mount(s.host_hook_path + "/region", s.container_hook_path + "/region", false),
       cdi_mount(s.host_hook_path + "/libgpuslice.so", s.container_hook_path + "/libgpuslice.so",
                 true),
       cdi_mount(s.host_hook_path + "/ld.so.preload", "/etc/ld.so.preload", true)});
  json devices = json::array();
  for (const auto& sh : c.shares) {
    devices.push_back({{"name", cdi_name(c.ref.uid, sh)},
                       {"containerEdits", {{"env", env}, {"mounts", mounts}}}});
  }
  return {{"cdiVersion", std::string(k_cdi_version)}, {"kind", cdi_kind(s)}, {"devices", devices}};
}

/// The checkpoint entry of \p c.
inline json checkpoint_entry(const prepared_claim& c) {
  json shares = json::array();
  for (const auto& sh : c.shares) {
    shares.push_back({{"request", sh.request},
                      {"pool", sh.pool},
                      {"device", sh.device},
                      {"shareID", sh.share_id},
                      {"uuid", sh.uuid},
                      {"memoryMiB", sh.memory_mib},
                      {"cores", sh.cores}});
  }
  return {{"namespace", c.ref.name_space}, {"name", c.ref.name},        {"uid", c.ref.uid},
          {"cdiSpec", c.cdi_spec},         {"ledgerDir", c.ledger_dir}, {"shares", shares}};
}

/// The checkpoint: every claim prepared and not yet unprepared, by uid.
using checkpoint = std::map<std::string, prepared_claim>;

/// The checkpoint's text.
inline std::string encode_checkpoint(const checkpoint& cp, const settings& s) {
  json claims = json::object();
  for (const auto& [uid, c] : cp) claims[uid] = checkpoint_entry(c);
  return json{{"version", k_checkpoint_version},
              {"driver", s.driver},
              {"node", s.node_name},
              {"claims", claims}}
      .dump(2);
}

/// Reads the checkpoint \p text (of file \p path, named in errors). A checkpoint of another
/// version, driver or node, or one that does not parse, is an error: preparing on top of it
/// could lose track of what a restarted plugin must unprepare. Pure.
inline result<checkpoint> decode_checkpoint(const std::string& text, const std::string& path,
                                            const settings& s) {
  auto bad = [&](const std::string& why) {
    return make_error(errc::corrupt, "checkpoint " + path + ": " + why +
                                         "; move it away to start with no prepared claims");
  };
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  const json* v = kube::detail::member(j, "version");
  if (v == nullptr || !v->is_number_integer() || v->get<int>() != k_checkpoint_version) {
    return bad("version " + (v != nullptr ? v->dump() : std::string("missing")) + ", expected " +
               std::to_string(k_checkpoint_version));
  }
  if (kube::detail::string_at(j, "driver") != s.driver ||
      kube::detail::string_at(j, "node") != s.node_name) {
    return bad("written for driver " + kube::detail::string_at(j, "driver") + " on node " +
               kube::detail::string_at(j, "node") + ", not " + s.driver + " on " + s.node_name);
  }
  const json* claims = kube::detail::member(j, "claims");
  if (claims == nullptr || !claims->is_object()) return bad("claims: expected an object");
  checkpoint cp;
  for (const auto& [uid, e] : claims->items()) {
    if (!e.is_object()) return bad("claim " + uid + ": expected an object");
    prepared_claim c;
    c.ref = {kube::detail::string_at(e, "namespace"), uid, kube::detail::string_at(e, "name")};
    c.cdi_spec = kube::detail::string_at(e, "cdiSpec");
    c.ledger_dir = kube::detail::string_at(e, "ledgerDir");
    const json* shares = kube::detail::member(e, "shares");
    if (c.cdi_spec.empty() || c.ledger_dir.empty() || shares == nullptr || !shares->is_array()) {
      return bad("claim " + uid + ": expected cdiSpec, ledgerDir and shares");
    }
    for (const json& x : *shares) {
      share sh;
      sh.request = kube::detail::string_at(x, "request");
      sh.pool = kube::detail::string_at(x, "pool");
      sh.device = kube::detail::string_at(x, "device");
      sh.share_id = kube::detail::string_at(x, "shareID");
      sh.uuid = kube::detail::string_at(x, "uuid");
      const json* m = kube::detail::member(x, "memoryMiB");
      const json* k = kube::detail::member(x, "cores");
      if (m == nullptr || !m->is_number_integer() || k == nullptr || !k->is_number_integer()) {
        return bad("claim " + uid + ": a share without memoryMiB or cores");
      }
      sh.memory_mib = m->get<std::int64_t>();
      sh.cores = k->get<std::int64_t>();
      c.shares.push_back(std::move(sh));
    }
    cp.emplace(uid, std::move(c));
  }
  return cp;
}

/// Removes what preparing \p c made: its CDI spec file and its ledger directory. Missing files
/// are not an error (a repeated unprepare). An error message, or nullopt.
inline std::optional<std::string> remove_prepared(const prepared_claim& c) {
  std::error_code ec;
  std::filesystem::remove(c.cdi_spec, ec);
  if (ec) return c.cdi_spec + ": " + ec.message();
  std::filesystem::remove_all(c.ledger_dir, ec);
  if (ec) return c.ledger_dir + ": " + ec.message();
  return std::nullopt;
}

}  // namespace gpuslice::dra
