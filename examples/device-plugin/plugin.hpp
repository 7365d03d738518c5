#pragma once
/// \file
/// The device plugin's decisions, apart from gRPC (main.cpp holds the kubelet protocol):
///   - settings: HAMi's chart keys from a JSON config file and flags, validated;
///   - the advertised devices: deviceSplitCount virtual devices per GPU ("<uuid>-<i>");
///   - the node registration annotation and HAMi's handshake, and when they must be written;
///   - Allocate: which pod, which container, and HAMi's environment contract and mounts.
/// Everything here is plain data in, plain data out (thread-safe, pure) except the functions
/// that take an api_client, which talk to the API server.


#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#ifdef GPUSLICE_HAVE_YAML_CPP
#include <yaml-cpp/yaml.h>
#endif

#include "apiserver.hpp"
#include "gpuslice/fit/codec.hpp"
#include "gpuslice/fit/model.hpp"
#include "gpuslice/result.hpp"
#include "kube.hpp"

namespace gpuslice::device_plugin {

using json = nlohmann::json;

/// The node annotation HAMi's scheduler and the device plugin use to greet each other.
inline constexpr std::string_view k_handshake = "hami.io/node-handshake";
/// Why an allocation failed (set with bind-phase=failed).
inline constexpr std::string_view k_bind_failure_reason = "gpuslice.io/bind-failure-reason";
/// The bind phases the device plugin writes.
inline constexpr std::string_view k_bind_success = "success";
inline constexpr std::string_view k_bind_failed = "failed";
/// The sharing mode the plugin registers its GPUs under (HAMi's word for the interposer).
inline constexpr std::string_view k_mode = "hami-core";
/// Most virtual devices per GPU: keeps device IDs ("<40-character uuid>-<i>") under kubelet's
/// 63 characters and ListAndWatch replies small.
inline constexpr std::uint32_t k_max_split_count = 1024;
/// Largest memory or core scaling factor accepted.
inline constexpr double k_max_scaling = 100.0;
/// The ledger file name inside a container's cache directory.
inline constexpr std::string_view k_cache_file = "gpuslice.cache";
/// The node region file name inside the region directory.
inline constexpr std::string_view k_region_file = "node.region";
/// Where HAMi's chart mounts the device plugin's per-node configuration (`nodeconfig`).
inline constexpr std::string_view k_default_node_config = "/config/config.json";
/// HAMi's node lock: its scheduler sets it on a node while a pod's devices are allocated there,
/// and the device plugin releases it when the allocation ends (succeeded or failed).
inline constexpr std::string_view k_node_lock = "hami.io/mutex.lock";
/// The separator of the lock's value "<RFC 3339 time>,<namespace>,<pod name>".
inline constexpr char k_node_lock_sep = ',';
/// Largest preconfigured device memory (MiB): HAMi's devmem is a Go int32.
inline constexpr long long k_max_device_memory_mib = 2147483647;

/// What the device plugin runs with. A plain value.
struct settings {
  // HAMi's chart keys (the `nvidia` section of its device ConfigMap), with HAMi's defaults.
  std::uint32_t device_split_count = 10;
  double device_memory_scaling = 1.0;
  double device_core_scaling = 1.0;
  std::string mig_strategy = "none";
  bool disable_core_limit = false;
  bool enable_numa_topology = false;                  ///< ListAndWatch reports each GPU's NUMA node
  std::uint64_t preconfigured_device_memory_mib = 0;  ///< memory of a GPU NVML cannot size
  std::string lib_cuda_log_level;                     ///< LIBCUDA_LOG_LEVEL in containers
  std::string resource_name = "nvidia.com/gpu";
  std::string resource_memory_name = "nvidia.com/gpumem";
  std::string resource_core_name = "nvidia.com/gpucores";
  std::string resource_priority_name = "nvidia.com/priority";
  // The node.
  std::string node_name;   ///< --node-name or NODE_NAME
  std::string api_server;  ///< --api-server URL; empty: in-cluster configuration
  std::string kubelet_dir = "/var/lib/kubelet/device-plugins";
  std::string socket_name = "gpuslice-nvidia.sock";
  std::string host_hook_path = "/usr/local/vgpu";       ///< on the host (and in this pod)
  std::string container_hook_path = "/usr/local/vgpu";  ///< where containers see it
  std::string nvml_library = "libnvidia-ml.so.1";
  int register_interval_ms = 30000;  ///< how often the registration is checked (written on change)
  int health_interval_ms = 5000;     ///< how often NVML is probed
  int watch_interval_ms = 1000;      ///< how often kubelet's socket is checked for a restart
  /// The registration annotation's encoding: HAMi's JSON (read by HAMi 2.8 and later), or the
  /// colon form HAMi's schedulers before 2.8 read.
  std::string registration_encoding = "json";
  /// HAMi's per-node overrides (`nodeconfig`); read when it exists unless named explicitly.
  std::string node_config = std::string(k_default_node_config);
  bool node_config_explicit = false;      ///< --node-config given: a missing file is an error
  std::vector<std::string> filter_uuids;  ///< nodeconfig filterdevices: GPUs left out, by uuid
  std::vector<unsigned> filter_indices;   ///< ... and by index
};

namespace detail {

inline error bad(std::string where, std::string_view value, std::string_view expected) {
  return make_error(errc::invalid_value, std::move(where) + " " +
                                             ::gpuslice::detail::quoted(value) + ": expected " +
                                             std::string(expected));
}

/// A Kubernetes extended resource name: "<domain>/<name>".
inline bool valid_resource_name(std::string_view s) {
  const std::size_t slash = s.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= s.size()) return false;
  if (s.find('/', slash + 1) != std::string_view::npos) return false;
  constexpr std::size_t k_max_name = 63;
  if (s.size() - slash - 1 > k_max_name) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alnum =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > slash && c >= 'A' && c <= 'Z');
    if (!(alnum || c == '.' || c == '-' || c == '/' || (i > slash && c == '_'))) return false;
  }
  return true;
}

/// Sets one setting from its text form; \p where names its source ("--device-split-count",
/// "config.json: deviceSplitCount").
inline std::optional<error> apply(settings& s, std::string_view key, const std::string& v,
                                  const std::string& where) {
  auto integer = [&](long long lo, long long hi, auto& out,
                     std::string_view expected) -> std::optional<error> {
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi) {
      return bad(where, v, expected);
    }
    out = static_cast<std::remove_reference_t<decltype(out)>>(x);
    return std::nullopt;
  };
  auto scaling = [&](double& out) -> std::optional<error> {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !std::isfinite(x) || x <= 0 || x > k_max_scaling) {
      return bad(where, v, "a number greater than 0 and at most 100");
    }
    out = x;
    return std::nullopt;
  };
  auto name = [&](std::string& out) -> std::optional<error> {
    if (!valid_resource_name(v)) {
      return bad(where, v, "a resource name <domain>/<name> such as nvidia.com/gpu");
    }
    out = v;
    return std::nullopt;
  };
  if (key == "deviceSplitCount") {
    return integer(1, k_max_split_count, s.device_split_count, "an integer from 1 to 1024");
  }
  if (key == "deviceMemoryScaling") return scaling(s.device_memory_scaling);
  if (key == "deviceCoreScaling") return scaling(s.device_core_scaling);
  if (key == "migStrategy") {
    if (v != "none" && v != "mixed") return bad(where, v, "none or mixed");
    s.mig_strategy = v;
    return std::nullopt;
  }
  auto boolean = [&](bool& out) -> std::optional<error> {
    if (v != "true" && v != "false") return bad(where, v, "true or false");
    out = v == "true";
    return std::nullopt;
  };
  // HAMi's chart writes disableCoreLimit in its YAML and disablecorelimit in its flags.
  if (key == "disablecorelimit" || key == "disableCoreLimit") return boolean(s.disable_core_limit);
  if (key == "enableNumaTopology") return boolean(s.enable_numa_topology);
  if (key == "preConfiguredDeviceMemory") {
    return integer(0, k_max_device_memory_mib, s.preconfigured_device_memory_mib,
                   "MiB, 0 (use NVML's figure) to 2147483647");
  }
  if (key == "libCudaLogLevel") {
    if (!v.empty() && (v.size() != 1 || v[0] < '0' || v[0] > '4')) {
      return bad(where, v, "a log level from 0 to 4, or empty");
    }
    s.lib_cuda_log_level = v;
    return std::nullopt;
  }
  if (key == "registrationEncoding") {
    if (v != "json" && v != "legacy") {
      return bad(where, v, "json (HAMi 2.8 and later) or legacy (HAMi before 2.8)");
    }
    s.registration_encoding = v;
    return std::nullopt;
  }
  if (key == "resourceCountName") return name(s.resource_name);
  if (key == "resourceMemoryName") return name(s.resource_memory_name);
  if (key == "resourceCoreName") return name(s.resource_core_name);
  if (key == "resourcePriorityName") return name(s.resource_priority_name);
  constexpr long long k_max_interval_ms = 3600 * 1000;
  if (key == "registerIntervalMs") {
    return integer(1, k_max_interval_ms, s.register_interval_ms, "milliseconds, 1 to 3600000");
  }
  if (key == "healthIntervalMs") {
    return integer(1, k_max_interval_ms, s.health_interval_ms, "milliseconds, 1 to 3600000");
  }
  if (key == "watchIntervalMs") {
    return integer(1, k_max_interval_ms, s.watch_interval_ms, "milliseconds, 1 to 3600000");
  }
  auto path = [&](std::string& out) -> std::optional<error> {
    if (v.empty() || v.front() != '/') return bad(where, v, "an absolute path");
    out = v;
    return std::nullopt;
  };
  if (key == "kubeletDir") return path(s.kubelet_dir);
  if (key == "hostHookPath") return path(s.host_hook_path);
  if (key == "containerHookPath") return path(s.container_hook_path);
  if (key == "socketName") {
    if (v.empty() || v.find('/') != std::string::npos) return bad(where, v, "a file name");
    s.socket_name = v;
    return std::nullopt;
  }
  if (key == "nodeName") {
    if (v.empty()) return bad(where, v, "a node name");
    s.node_name = v;
    return std::nullopt;
  }
  if (key == "apiServer") {
    auto c = kube::config_from_url(v);
    if (!c) return make_error(errc::invalid_value, where + ": " + c.message());
    s.api_server = v;
    return std::nullopt;
  }
  if (key == "nvmlLibrary") {
    if (v.empty()) return bad(where, v, "a library name or path");
    s.nvml_library = v;
    return std::nullopt;
  }
  return make_error(errc::not_found, where + ": unknown setting");
}

/// The flag of each setting, and the key it sets.
struct flag_key {
  std::string_view flag;
  std::string_view key;
  bool boolean;
};
inline constexpr flag_key k_flags[] = {
    {"--device-split-count", "deviceSplitCount", false},
    {"--device-memory-scaling", "deviceMemoryScaling", false},
    {"--device-cores-scaling", "deviceCoreScaling", false},
    {"--mig-strategy", "migStrategy", false},
    {"--disable-core-limit", "disablecorelimit", true},
    {"--enable-numa-topology", "enableNumaTopology", true},
    {"--preconfigured-device-memory", "preConfiguredDeviceMemory", false},
    {"--lib-cuda-log-level", "libCudaLogLevel", false},
    {"--registration-encoding", "registrationEncoding", false},
    {"--resource-name", "resourceCountName", false},
    {"--resource-memory-name", "resourceMemoryName", false},
    {"--resource-core-name", "resourceCoreName", false},
    {"--resource-priority-name", "resourcePriorityName", false},
    {"--node-name", "nodeName", false},
    {"--api-server", "apiServer", false},
    {"--kubelet-dir", "kubeletDir", false},
    {"--socket-name", "socketName", false},
    {"--host-hook-path", "hostHookPath", false},
    {"--container-hook-path", "containerHookPath", false},
    {"--nvml-library", "nvmlLibrary", false},
    {"--register-interval-ms", "registerIntervalMs", false},
    {"--health-interval-ms", "healthIntervalMs", false},
    {"--watch-interval-ms", "watchIntervalMs", false},
};

}  // namespace detail

/// The usage text.
inline std::string usage() {
  std::string u =
      "usage: gpuslice-device-plugin [--config-file FILE] [--node-config FILE] "
      "[--FLAG VALUE | --FLAG=VALUE]...\n"
      "  --config-file FILE (or --config)  HAMi's device configuration, JSON or YAML (the\n"
      "                                chart's device-config.yaml): keys under \"nvidia\" or at\n"
      "                                the top level\n"
      "  --node-config FILE            HAMi's per-node overrides (`nodeconfig`, the chart's\n"
      "                                config.json; default /config/config.json when it exists)\n"
      "  Precedence: flags, then this node's nodeconfig entry, then the config files.\n";
  for (const auto& f : detail::k_flags) {
    u += "  " + std::string(f.flag) + (f.boolean ? "[=true|false]" : " VALUE") + "  (" +
         std::string(f.key) + ")\n";
  }
  u += "  NODE_NAME in the environment names the node when --node-name is not given.\n";
  return u;
}

namespace detail {

#ifdef GPUSLICE_HAVE_YAML_CPP
/// A YAML node as JSON: mappings are objects, sequences arrays, scalars strings (YAML 1.1's
/// capitalised booleans spelled as JSON's), null null.
inline json yaml_to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
      return o;
    }
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& e : n) a.push_back(yaml_to_json(e));
      return a;
    }
    case YAML::NodeType::Scalar: {
      std::string v = n.Scalar();
      if (n.Tag() != "!") {  // plain (unquoted) scalars only
        if (v == "True" || v == "TRUE") v = "true";
        if (v == "False" || v == "FALSE") v = "false";
      }
      return v;
    }
    default:
      return nullptr;
  }
}
#endif

/// Reads \p path as a JSON object, or (when built with yaml-cpp) a YAML mapping. \p flag names
/// the option that named the file in errors.
inline result<json> read_config_object(const std::string& path, const std::string& flag) {
  std::ifstream f(path);
  if (!f) {
    return make_error(errc::not_found,
                      flag + " " + path + ": cannot read: " + std::strerror(errno));
  }
  std::stringstream text;
  text << f.rdbuf();
  json j = json::parse(text.str(), nullptr, false);
#ifdef GPUSLICE_HAVE_YAML_CPP
  if (j.is_discarded()) {
    try {
      j = yaml_to_json(YAML::Load(text.str()));
    } catch (const YAML::Exception& e) {
      return make_error(errc::invalid_value,
                        flag + " " + path + ": not JSON, and not YAML (" + e.what() + ")");
    }
  }
  constexpr const char* k_expected = "expected a JSON object or YAML mapping of HAMi's settings";
#else
  constexpr const char* k_expected =
      "expected a JSON object of HAMi's settings (this build reads no YAML: it was built "
      "without yaml-cpp)";
#endif
  if (j.is_discarded() || !j.is_object()) {
    return make_error(errc::invalid_value, flag + " " + path + ": " + k_expected);
  }
  return j;
}

/// The text form apply() takes of a config value.
inline std::string text_of(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number_integer()) return std::to_string(value.get<long long>());
  if (value.is_number()) {
    std::ostringstream o;
    o << value.get<double>();
    return o.str();
  }
  return value.dump();
}

/// ASCII lower case (Go's encoding/json matches keys case-insensitively).
inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace detail

/// Applies the config file \p path: HAMi's keys at the top level or under "nvidia" (the other
/// vendors' sections of HAMi's device-config.yaml are not read). Keys it does not know (the
/// scheduler's, in a shared ConfigMap) are returned in \p ignored; null values are unset.
inline std::optional<error> apply_config_file(settings& s, const std::string& path,
                                              std::vector<std::string>& ignored,
                                              const std::string& flag = "--config-file") {
  auto j = detail::read_config_object(path, flag);
  if (!j) return std::move(j).err();
  const json* obj = &*j;
  if (j->contains("nvidia")) {
    if (!(*j)["nvidia"].is_object()) {
      return make_error(errc::invalid_value, path + ": nvidia: expected an object");
    }
    obj = &(*j)["nvidia"];
  }
  for (const auto& [key, value] : obj->items()) {
    if (value.is_null()) continue;
    auto e = detail::apply(s, key, detail::text_of(value), path + ": " + key);
    if (e && e->code == make_error_code(errc::not_found)) {
      ignored.push_back(key);
    } else if (e) {
      return e;
    }
  }
  return std::nullopt;
}

/// Applies the entry of HAMi's per-node configuration file \p path (`{"nodeconfig": [{"name":
/// NODE, ...}]}`) that names \p s.node_name, as HAMi's device plugin does: the split count,
/// the scalings, the preconfigured device memory, the CUDA log level, NUMA topology and the
/// devices to leave out (`filterdevices`) override the config file. `operatingmode` must be
/// hami-core (the interposer's mode; gpuslice has no mig or mps mode). Keys HAMi reads there
/// but gpuslice has no use for (`enablegetpreferredallocation`: gpuslice always offers a
/// preferred allocation) and keys HAMi does not read there (`migstrategy`) go to \p ignored.
inline std::optional<error> apply_node_config(settings& s, const std::string& path,
                                              std::vector<std::string>& ignored) {
  auto j = detail::read_config_object(path, "--node-config");
  if (!j) return std::move(j).err();
  const json* list = nullptr;
  for (const auto& [k, v] : j->items()) {
    if (detail::lower(k) == "nodeconfig") list = &v;
  }
  if (list == nullptr || list->is_null()) return std::nullopt;
  if (!list->is_array()) {
    return make_error(errc::invalid_value, path + ": nodeconfig: expected a list of nodes");
  }
  static constexpr std::pair<std::string_view, std::string_view> k_keys[] = {
      {"devicesplitcount", "deviceSplitCount"},
      {"devicememoryscaling", "deviceMemoryScaling"},
      {"devicecorescaling", "deviceCoreScaling"},
      {"preconfigureddevicememory", "preConfiguredDeviceMemory"},
      {"libcudaloglevel", "libCudaLogLevel"},
      {"enablenumatopology", "enableNumaTopology"},
  };
  for (std::size_t i = 0; i < list->size(); ++i) {
    const json& entry = (*list)[i];
    const std::string at = path + ": nodeconfig[" + std::to_string(i) + "]";
    if (!entry.is_object()) return make_error(errc::invalid_value, at + ": expected an object");
    std::string name;
    for (const auto& [k, v] : entry.items()) {
      if (detail::lower(k) == "name" && v.is_string()) name = v.get<std::string>();
    }
    if (name != s.node_name) continue;
    for (const auto& [k, v] : entry.items()) {
      const std::string key = detail::lower(k);
      const std::string where = at + " (" + name + "): " + k;
      if (key == "name" || v.is_null()) continue;
      if (key == "operatingmode") {
        const std::string mode = detail::text_of(v);
        if (!mode.empty() && mode != k_mode) {
          return detail::bad(where, mode,
                             "hami-core (gpuslice shares GPUs through its interposer; it has no "
                             "mig or mps mode)");
        }
        continue;
      }
      if (key == "filterdevices") {
        if (!v.is_object()) return make_error(errc::invalid_value, where + ": expected an object");
        for (const auto& [fk, fv] : v.items()) {
          const std::string f = detail::lower(fk);
          if (fv.is_null()) continue;
          if ((f != "uuid" && f != "index") || !fv.is_array()) {
            return make_error(errc::invalid_value,
                              where + "." + fk + ": expected uuid or index, a list");
          }
          for (const json& x : fv) {
            if (f == "uuid" && x.is_string() && !x.get<std::string>().empty()) {
              s.filter_uuids.push_back(x.get<std::string>());
            } else if (f == "index" && x.is_number_unsigned()) {
              s.filter_indices.push_back(x.get<unsigned>());
            } else {
              return detail::bad(where + "." + fk, x.dump(),
                                 f == "uuid" ? "a GPU uuid" : "a GPU index (0, 1, ...)");
            }
          }
        }
        continue;
      }
      const auto it = std::find_if(std::begin(k_keys), std::end(k_keys),
                                   [&](const auto& m) { return m.first == key; });
      if (it == std::end(k_keys)) {
        ignored.push_back(k);
        continue;
      }
      if (auto e = detail::apply(s, it->second, detail::text_of(v), where)) return e;
    }
  }
  return std::nullopt;
}

/// Parses the command line (argv[1..]) and NODE_NAME. The config files come first, then this
/// node's nodeconfig entry, then the flags (whatever their order on the command line). Errors
/// are one line naming the flag or file, the value and the expectation. \p ignored gets config
/// keys that were not used.
inline result<settings> parse_settings(const std::vector<std::string>& args,
                                       std::vector<std::string>& ignored) {
  settings s;
  if (const char* n = std::getenv("NODE_NAME"); n != nullptr && *n != '\0') s.node_name = n;
  struct given {
    std::string flag;
    std::string_view key;
    std::string value;
  };
  std::vector<given> flags;
  std::vector<std::pair<std::string, std::string>> files;  // flag, path
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    std::string value;
    bool has_value = false;
    if (const std::size_t eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    if (a == "--config" || a == "--config-file" || a == "--node-config") {
      if (!has_value) {
        if (i + 1 >= args.size())
          return make_error(errc::invalid_value, a + ": expected a file name");
        value = args[++i];
      }
      if (a == "--node-config") {
        s.node_config = value;
        s.node_config_explicit = true;
      } else {
        files.emplace_back(a, value);
      }
      continue;
    }
    const detail::flag_key* f = nullptr;
    for (const auto& k : detail::k_flags) {
      if (k.flag == a) f = &k;
    }
    if (f == nullptr) {
      return make_error(errc::invalid_value,
                        ::gpuslice::detail::quoted(args[i]) + ": unknown flag; see --help");
    }
    if (!has_value) {
      if (f->boolean) {
        value = "true";
      } else if (i + 1 >= args.size()) {
        return make_error(errc::invalid_value, a + ": expected a value");
      } else {
        value = args[++i];
      }
    }
    flags.push_back({a, f->key, value});
  }
  // The node's name decides which nodeconfig entry applies: settle it first.
  for (const auto& f : flags) {
    if (f.key == "nodeName") {
      if (auto e = detail::apply(s, f.key, f.value, f.flag)) return std::move(*e);
    }
  }
  for (const auto& [flag, path] : files) {
    if (auto e = apply_config_file(s, path, ignored, flag)) return std::move(*e);
  }
  if (s.node_name.empty()) {
    return make_error(errc::invalid_value,
                      "node name: expected --node-name or NODE_NAME (the pod's spec.nodeName)");
  }
  std::error_code ec;
  if (s.node_config_explicit || std::filesystem::exists(s.node_config, ec)) {
    if (auto e = apply_node_config(s, s.node_config, ignored)) return std::move(*e);
  }
  for (const auto& f : flags) {
    if (auto e = detail::apply(s, f.key, f.value, f.flag)) return std::move(*e);
  }
  return s;
}

/// Whether HAMi's `filterdevices` leaves \p index / \p uuid out (neither advertised nor
/// registered).
inline bool filtered_out(const settings& s, unsigned index, const std::string& uuid) {
  return std::find(s.filter_indices.begin(), s.filter_indices.end(), index) !=
             s.filter_indices.end() ||
         std::find(s.filter_uuids.begin(), s.filter_uuids.end(), uuid) != s.filter_uuids.end();
}

// ---- devices ------------------------------------------------------------------------------------

/// A MIG device (migStrategy mixed advertises it under its profile's resource).
struct mig_device {
  std::string uuid;     ///< "MIG-..."
  std::string profile;  ///< "1g.5gb"
};

/// A physical GPU as the plugin tracks it.
struct gpu {
  unsigned index = 0;
  std::string uuid;
  std::string name;                ///< NVML's product name
  std::uint64_t memory_total = 0;  ///< bytes
  int numa = 0;
  bool healthy = true;
  std::string why_unhealthy;
  bool mig_enabled = false;      ///< in MIG mode
  std::vector<mig_device> migs;  ///< its MIG devices (found at start)
};

/// Whether \p g is shared through the interposer (split into virtual devices, registered for
/// HAMi's scheduler): every GPU, except one in MIG mode under migStrategy mixed.
inline bool shared_gpu(const gpu& g, const settings& s) {
  return !(s.mig_strategy == "mixed" && g.mig_enabled);
}

/// A resource the plugin serves to kubelet, each on its own socket.
struct resource {
  std::string name;     ///< "nvidia.com/gpu", "nvidia.com/mig-1g.5gb"
  std::string socket;   ///< file name in kubelet's directory
  std::string profile;  ///< the MIG profile; empty for the shared GPUs
};

/// The resources to serve: the shared GPUs' (when there are any, or always without MIG), and
/// under migStrategy mixed one per MIG profile found, named <domain>/mig-<profile> as NVIDIA's
/// plugin names them, in the resource name's domain.
inline std::vector<resource> resources(const std::vector<gpu>& gpus, const settings& s) {
  std::vector<resource> out;
  const bool any_shared =
      std::any_of(gpus.begin(), gpus.end(), [&](const gpu& g) { return shared_gpu(g, s); });
  if (any_shared || s.mig_strategy != "mixed") out.push_back({s.resource_name, s.socket_name, {}});
  if (s.mig_strategy != "mixed") return out;
  const std::string domain = s.resource_name.substr(0, s.resource_name.find('/'));
  std::vector<std::string> profiles;
  for (const gpu& g : gpus) {
    if (!g.mig_enabled) continue;
    for (const auto& m : g.migs) {
      if (std::find(profiles.begin(), profiles.end(), m.profile) == profiles.end()) {
        profiles.push_back(m.profile);
      }
    }
  }
  std::sort(profiles.begin(), profiles.end());
  for (const auto& p : profiles) {
    out.push_back({domain + "/mig-" + p, "gpuslice-mig-" + p + ".sock", p});
  }
  return out;
}

/// The virtual device IDs of \p g: "<uuid>-0" ... "<uuid>-<split-1>".
inline std::vector<std::string> virtual_ids(const gpu& g, std::uint32_t split) {
  std::vector<std::string> out;
  out.reserve(split);
  for (std::uint32_t i = 0; i < split; ++i) out.push_back(g.uuid + "-" + std::to_string(i));
  return out;
}

/// The GPU uuid of a virtual device ID ("" when it has no "-<digits>" suffix).
inline std::string uuid_of_virtual(std::string_view id) {
  const std::size_t dash = id.rfind('-');
  if (dash == std::string_view::npos || dash + 1 >= id.size()) return {};
  for (std::size_t i = dash + 1; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9') return {};
  }
  return std::string(id.substr(0, dash));
}

/// HAMi's type word: "NVIDIA-" + the product name.
inline std::string gpu_type(const gpu& g) { return "NVIDIA-" + g.name; }

/// The registration of \p gpus with \p s's split count and scalings, as fit devices (memory
/// and cores scaled, rounded down). A GPU NVML cannot size takes preConfiguredDeviceMemory, and
/// without it is left out (HAMi's rule).
inline std::vector<fit::device> registered_devices(const std::vector<gpu>& gpus,
                                                   const settings& s) {
  std::vector<fit::device> out;
  for (const gpu& g : gpus) {
    if (!shared_gpu(g, s)) continue;
    fit::device d;
    d.uuid = g.uuid;
    d.index = g.index;
    d.type = gpu_type(g);
    d.numa = g.numa;
    d.healthy = g.healthy;
    d.slots_total = s.device_split_count;
    // A GPU NVML cannot size (unified memory) registers the configured figure, as in HAMi.
    const std::uint64_t bytes = g.memory_total != 0
                                    ? g.memory_total
                                    : s.preconfigured_device_memory_mib * fit::k_bytes_per_mib;
    if (bytes == 0) continue;  // unsized, none preconfigured: HAMi skips it too
    const auto mib = static_cast<double>(bytes / fit::k_bytes_per_mib);
    d.memory_total = static_cast<std::uint64_t>(std::floor(mib * s.device_memory_scaling)) *
                     fit::k_bytes_per_mib;
    d.cores_total = static_cast<std::uint32_t>(
        std::floor(static_cast<double>(::gpuslice::k_milli_per_gpu) * s.device_core_scaling));
    d.mode = std::string(k_mode);
    out.push_back(std::move(d));
  }
  return out;
}

/// The registration annotation's value for \p devices in \p s's encoding.
inline result<std::string> encode_registration(const std::vector<fit::device>& devices,
                                               const settings& s) {
  if (s.registration_encoding == "legacy") return fit::encode_node_devices_legacy(devices);
  return fit::encode_node_devices(devices);
}

/// "YYYY-MM-DD HH:MM:SS" in UTC (Go's time.DateTime layout, which HAMi's handshake uses).
inline std::string date_time(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

/// The merge patch that registers \p encoded on \p node, or nothing when the node already
/// carries it and the scheduler has not marked the node's devices deleted. The handshake
/// ("Reported <time>") goes with every registration and only then: HAMi's per-interval patches
/// of both have throttled API servers.
inline std::optional<json> registration_patch(const json& node, const std::string& encoded,
                                              std::time_t now) {
  const json* reg = kube::detail::annotation(node, kube::k_node_register);
  const json* hs = kube::detail::annotation(node, k_handshake);
  const bool same = reg != nullptr && reg->is_string() && *reg == encoded;
  const bool deleted = hs != nullptr && hs->is_string() &&
                       hs->get_ref<const std::string&>().rfind("Deleted", 0) == 0;
  if (same && !deleted) return std::nullopt;
  return json{{"metadata",
               {{"annotations",
                 {{std::string(kube::k_node_register), encoded},
                  {std::string(k_handshake), "Reported " + date_time(now)}}}}}};
}

// ---- Allocate -----------------------------------------------------------------------------------

/// A mount kubelet is to make.
struct mount {
  std::string container_path;
  std::string host_path;
  bool read_only = true;
};

/// What one container gets.
struct container_grant {
  std::string container;  ///< the container's name
  std::map<std::string, std::string> envs;
  std::vector<mount> mounts;
  std::vector<std::string> uuids;  ///< the GPUs, in the order of the CUDA_DEVICE_*_<i> indices
  std::string cache_dir;           ///< host directory of the container's ledger
};

/// An Allocate error, and whether the pod is to be marked failed (there is a pod to mark).
struct allocate_error {
  std::string message;
  bool mark_failed = false;
};

/// The result of planning an Allocate: the grants and the annotations to write.
struct allocation_plan {
  std::string name_space, name, uid, resource_version;
  std::vector<container_grant> grants;
  std::string remaining;  ///< the to-allocate annotation after this call
  bool done = false;      ///< every container has its devices: bind-phase=success
};

/// Go's strconv.ParseBool, which HAMi uses for CUDA_DISABLE_CONTROL.
inline bool go_true(std::string_view v) {
  return v == "1" || v == "t" || v == "T" || v == "TRUE" || v == "true" || v == "True";
}

/// The one pod of \p items (pods bound to \p node) that waits for its devices: bind-phase
/// allocating with a to-allocate annotation, not finished or being deleted. Errors: none, or
/// more than one (the scheduler allocates one pod per node at a time).
inline std::variant<json, allocate_error> pending_pod(const json& items, const std::string& node) {
  std::vector<const json*> found;
  for (const json& p : items) {
    const json* phase = kube::detail::annotation(p, kube::k_bind_phase);
    const json* todo = kube::detail::annotation(p, kube::k_devices_to_allocate);
    if (phase == nullptr || !phase->is_string() || *phase != kube::k_bind_allocating) continue;
    if (todo == nullptr) continue;
    const json* meta = kube::detail::member(p, "metadata");
    if (meta != nullptr && kube::detail::member(*meta, "deletionTimestamp") != nullptr) continue;
    const json* status = kube::detail::member(p, "status");
    const std::string ph = status != nullptr ? kube::detail::string_at(*status, "phase") : "";
    if (ph == "Succeeded" || ph == "Failed") continue;
    found.push_back(&p);
  }
  if (found.empty()) {
    return allocate_error{"no pod bound to node " + node +
                              " is waiting for devices (bind-phase=allocating with " +
                              std::string(kube::k_devices_to_allocate) +
                              "); the scheduler has not bound one here yet",
                          false};
  }
  if (found.size() > 1) {
    std::string names;
    for (const json* p : found) {
      names += (names.empty() ? "" : ", ") + kube::pod_identity(*p).key();
    }
    return allocate_error{"pods " + names + " are all allocating on node " + node +
                              " at once; expected one (the scheduler allocates one pod per "
                              "node at a time)",
                          false};
  }
  return *found.front();
}

/// Plans Allocate for \p requests (the device IDs kubelet chose, per container) on \p pod,
/// with the node's \p gpus. Pure: the caller writes the result.
inline std::variant<allocation_plan, allocate_error> plan_allocation(
    const json& pod, const std::vector<std::vector<std::string>>& requests,
    const std::vector<gpu>& gpus, const settings& s) {
  const kube::pod_ref ref = kube::pod_identity(pod);
  const std::string who = "pod " + ref.key();
  auto fail = [&](std::string m) { return allocate_error{who + ": " + std::move(m), true}; };
  allocation_plan plan;
  plan.name_space = ref.name_space;
  plan.name = ref.name;
  plan.uid = ref.uid;
  if (const json* meta = kube::detail::member(pod, "metadata")) {
    plan.resource_version = kube::detail::string_at(*meta, "resourceVersion");
  }
  if (plan.uid.empty()) return fail("metadata.uid: expected the pod's uid");
  const json* todo = kube::detail::annotation(pod, kube::k_devices_to_allocate);
  if (todo == nullptr || !todo->is_string()) {
    return fail(std::string(kube::k_devices_to_allocate) + ": expected a string");
  }
  auto decoded = fit::decode_pod_devices(todo->get_ref<const std::string&>());
  if (!decoded) {
    return fail(std::string(kube::k_devices_to_allocate) + ": " + decoded.message());
  }
  std::vector<fit::annotated_container> left = std::move(*decoded);
  // The annotation lists init containers, then containers (HAMi's order).
  std::vector<const json*> containers;
  if (const json* spec = kube::detail::member(pod, "spec")) {
    for (const char* field : {"initContainers", "containers"}) {
      const json* cs = kube::detail::member(*spec, field);
      if (cs == nullptr || !cs->is_array()) continue;
      for (const json& c : *cs) containers.push_back(&c);
    }
  }
  for (const auto& req : requests) {
    std::size_t at = 0;
    while (at < left.size() && left[at].empty()) ++at;
    if (at == left.size()) {
      return fail("no container left with devices to allocate, but kubelet asked for " +
                  std::to_string(req.size()));
    }
    if (at >= containers.size()) {
      return fail(std::string(kube::k_devices_to_allocate) + " names container " +
                  std::to_string(at) + " but the pod has " + std::to_string(containers.size()));
    }
    const json& c = *containers[at];
    const std::string cname = kube::detail::string_at(c, "name");
    const auto& devs = left[at];
    if (devs.size() != req.size()) {
      return fail("container " + ::gpuslice::detail::quoted(cname) + ": kubelet asked for " +
                  std::to_string(req.size()) + " devices, the scheduler gave " +
                  std::to_string(devs.size()));
    }
    container_grant g;
    g.container = cname;
    for (std::size_t i = 0; i < devs.size(); ++i) {
      const auto& d = devs[i];
      const auto it =
          std::find_if(gpus.begin(), gpus.end(), [&](const gpu& x) { return x.uuid == d.uuid; });
      if (it == gpus.end()) {
        return fail("device " + d.uuid + " is not on node " + s.node_name +
                    " (it vanished, or the annotation names another node's GPU)");
      }
      if (!shared_gpu(*it, s)) {
        return fail("device " + d.uuid +
                    " is in MIG mode: its MIG devices are advertised under "
                    "their own resource names, not shared");
      }
      if (!it->healthy) {
        return fail("device " + d.uuid + " is unhealthy (" + it->why_unhealthy + ")");
      }
      g.envs["CUDA_DEVICE_MEMORY_LIMIT_" + std::to_string(i)] = std::to_string(d.memory_mib) + "m";
      g.uuids.push_back(d.uuid);
    }
    g.envs["CUDA_DEVICE_SM_LIMIT"] = std::to_string(devs.front().cores);
    std::string visible;
    for (const auto& u : g.uuids) visible += (visible.empty() ? "" : ",") + u;
    g.envs["NVIDIA_VISIBLE_DEVICES"] = visible;
    const std::string cache_in = s.container_hook_path + "/cache";
    g.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = cache_in + "/" + std::string(k_cache_file);
    g.envs["GPUSLICE_NODE_REGION"] =
        s.container_hook_path + "/region/" + std::string(k_region_file);
    if (s.disable_core_limit) g.envs["GPU_CORE_UTILIZATION_POLICY"] = "disable";
    if (!s.lib_cuda_log_level.empty()) g.envs["LIBCUDA_LOG_LEVEL"] = s.lib_cuda_log_level;
    if (s.device_memory_scaling > 1.0) g.envs["CUDA_OVERSUBSCRIBE"] = "true";
    // CUDA_TASK_PRIORITY from the container's priority resource.
    const json* res = kube::detail::member(c, "resources");
    const json* limits = res != nullptr ? kube::detail::member(*res, "limits") : nullptr;
    if (const json* p =
            limits != nullptr ? kube::detail::member(*limits, s.resource_priority_name) : nullptr) {
      const std::string text = p->is_string() ? p->get<std::string>() : p->dump();
      auto q = kube::parse_quantity(text);
      if (!q || *q > 1) {
        return fail("container " + ::gpuslice::detail::quoted(cname) + ": " +
                    s.resource_priority_name + " " + ::gpuslice::detail::quoted(text) +
                    ": expected 0 (high) or 1 (low)");
      }
      g.envs["CUDA_TASK_PRIORITY"] = std::to_string(*q);
    }
    bool disable_control = false;
    if (const json* env = kube::detail::member(c, "env"); env != nullptr && env->is_array()) {
      for (const json& e : *env) {
        if (kube::detail::string_at(e, "name") == "CUDA_DISABLE_CONTROL" &&
            go_true(kube::detail::string_at(e, "value"))) {
          disable_control = true;
        }
      }
    }
    g.cache_dir = s.host_hook_path + "/containers/" + plan.uid + "_" + cname;
    g.mounts.push_back({cache_in, g.cache_dir, false});
    g.mounts.push_back({s.container_hook_path + "/region", s.host_hook_path + "/region", false});
    if (!disable_control) {
      g.mounts.push_back(
          {s.container_hook_path + "/libgpuslice.so", s.host_hook_path + "/libgpuslice.so", true});
      g.mounts.push_back({"/etc/ld.so.preload", s.host_hook_path + "/ld.so.preload", true});
    }
    left[at].clear();
    plan.grants.push_back(std::move(g));
  }
  auto enc = fit::encode_pod_devices(left);
  if (!enc) return fail(enc.message());
  plan.remaining = *enc;
  plan.done = std::all_of(left.begin(), left.end(), [](const auto& c) { return c.empty(); });
  return plan;
}

/// The merge patch recording \p plan: the devices taken off the to-allocate annotation, and
/// bind-phase=success once none are left; with the pod's resourceVersion as a precondition, so
/// a pod changed meanwhile is a 409 rather than a lost update.
inline json plan_patch(const allocation_plan& plan) {
  json ann = {{std::string(kube::k_devices_to_allocate), plan.remaining}};
  if (plan.done) ann[std::string(kube::k_bind_phase)] = std::string(k_bind_success);
  json meta = {{"annotations", ann}};
  if (!plan.resource_version.empty()) meta["resourceVersion"] = plan.resource_version;
  return json{{"metadata", meta}};
}

/// The merge patch marking a pod's allocation failed, with the reason.
inline json failure_patch(const std::string& reason) {
  return json{{"metadata",
               {{"annotations",
                 {{std::string(kube::k_bind_phase), std::string(k_bind_failed)},
                  {std::string(k_bind_failure_reason), reason}}}}}};
}

/// The merge patch that releases HAMi's node lock (k_node_lock) on \p node after the
/// allocation of \p pod ended, as HAMi's ReleaseNodeLock writes it: the annotation removed,
/// with the node's resourceVersion as a precondition. Nothing when the node holds no lock, or
/// holds another pod's ("<time>,<namespace>,<name>" naming another pod); a lock in the older
/// form (a bare time, no owner) is released. Pure, thread-safe.
inline std::optional<json> node_lock_release_patch(const json& node, const kube::pod_ref& pod) {
  const json* lock = kube::detail::annotation(node, k_node_lock);
  if (lock == nullptr) return std::nullopt;
  const std::string value = lock->is_string() ? lock->get<std::string>() : std::string();
  const std::string owner =
      std::string(1, k_node_lock_sep) + pod.name_space + k_node_lock_sep + pod.name;
  const bool has_owner = value.find(k_node_lock_sep) != std::string::npos;
  if (has_owner && (value.size() < owner.size() ||
                    value.compare(value.size() - owner.size(), owner.size(), owner) != 0)) {
    return std::nullopt;
  }
  json meta = {{"annotations", {{std::string(k_node_lock), nullptr}}}};
  if (const json* m = kube::detail::member(node, "metadata")) {
    const std::string rv = kube::detail::string_at(*m, "resourceVersion");
    if (!rv.empty()) meta["resourceVersion"] = rv;
  }
  return json{{"metadata", meta}};
}

}  // namespace gpuslice::device_plugin
