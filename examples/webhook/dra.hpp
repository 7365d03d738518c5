#pragma once
/// \file
/// The webhook's DRA mode: a GPU pod's HAMi requests (`nvidia.com/gpu`, `gpumem`,
/// `gpumem-percentage` 100, `gpucores`, after HAMi's defaults) become a ResourceClaim for
/// gpuslice-dra-plugin's devices, so that kube-scheduler allocates the share and the plugin
/// prepares it (docs/dra.md):
///   - each GPU container gets `resources.claims: [{name: gpuslice-<i>}]` (init containers
///     `gpuslice-init-<i>`) and loses the extended resources (also `nvidia.com/priority`, whose
///     environment variable HAMi's rules already set);
///   - the pod gets `spec.resourceClaims: [{name, resourceClaimTemplateName}]`, naming a
///     ResourceClaimTemplate whose name is derived from its content (`gpuslice-<n>x-<mem>-<cores>c`
///     plus a hash of the selectors when there are any), in the pod's namespace; the templates are
///     returned for the caller to create (idempotent: the same request always names the same
///     template);
///   - the template asks `count: n` devices of the configured DeviceClass, each with
///     `capacity.requests: {memory: <gpumem>Mi, cores: <gpucores>}` (no memory for the whole
///     card: the request policy's default is all of it), distinct GPUs for n > 1
///     (`distinctAttribute: <driver>/uuid`), and CEL selectors for `nvidia.com/use-gputype`,
///     `nouse-gputype` (substrings of productName) and `use-gpuuuid`, `nouse-gpuuuid`;
///   - the scheduler name is left as the pod had it (kube-scheduler allocates claims).
/// What DRA cannot say keeps the pod on the HAMi path, with a warning naming the container and
/// the reason: `gpumem-percentage` below 100 (a claim asks an amount, not a share of an unknown
/// card), no `gpucores` (a claim that asks none takes all of the device's cores), and
/// `nvidia.com/numa-bind`. Pure; thread-safe.

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kube.hpp"

namespace gpuslice::webhook::dra {

using json = nlohmann::json;

/// The annotation that selects (annotated mode: "true") or refuses (all mode: "false") the DRA
/// path for one pod.
inline constexpr std::string_view k_annotation = "gpuslice.dev/dra";
/// gpuslice-dra-plugin's default driver name (the domain of its device attributes).
inline constexpr std::string_view k_default_driver = "gpu.gpuslice.dev";
/// The DeviceClass examples/deploy/dra installs.
inline constexpr std::string_view k_default_class = "gpuslice";
/// The claim request's name inside each template.
inline constexpr std::string_view k_request_name = "gpu";
/// The full share of a card, percent.
inline constexpr std::int64_t k_whole_percent = 100;

/// Which GPU pods take the DRA path.
enum class mode : std::uint8_t {
  off,        ///< none (the default): HAMi's path only
  annotated,  ///< pods annotated gpuslice.dev/dra: "true"
  all,        ///< every GPU pod, except those annotated gpuslice.dev/dra: "false"
};

/// Parses "off", "annotated" or "all"; false when unknown.
inline bool mode_from_name(std::string_view name, mode& out) noexcept {
  if (name == "off") {
    out = mode::off;
  } else if (name == "annotated") {
    out = mode::annotated;
  } else if (name == "all") {
    out = mode::all;
  } else {
    return false;
  }
  return true;
}

/// The DRA mode's settings.
struct options {
  mode which = mode::off;                     ///< which pods take the DRA path
  std::string device_class{k_default_class};  ///< the DeviceClass the claims name
  std::string driver{k_default_driver};       ///< the attributes' domain in selectors
};

/// What converting one pod gave.
struct conversion {
  bool converted = false;          ///< the pod now holds claims instead of HAMi's resources
  std::vector<json> templates;     ///< ResourceClaimTemplates the pod names, to be created
  std::vector<std::string> notes;  ///< why a pod stayed on HAMi's path (one line each)
};

/// True when the settings send this pod (its annotations) to the DRA path.
inline bool selected(const json& pod, const options& o) {
  if (o.which == mode::off) return false;
  const json* meta = kube::detail::member(pod, "metadata");
  const json* ann = meta != nullptr ? kube::detail::member(*meta, "annotations") : nullptr;
  const std::string v = ann != nullptr ? kube::detail::string_at(*ann, k_annotation) : "";
  return o.which == mode::all ? v != "false" : v == "true";
}

namespace detail {

// FNV-1a, 32 bits: a short stable digest of a template's selectors for its name.
inline std::string digest(std::string_view text) {
  constexpr std::uint32_t offset = 2166136261U;
  constexpr std::uint32_t prime = 16777619U;
  std::uint32_t h = offset;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= prime;
  }
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", h);
  return buf;
}

// The comma-separated items of an annotation, blanks trimmed, empty ones dropped.
inline std::vector<std::string> items(std::string_view list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view item = list.substr(start, comma - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    start = comma + 1;
  }
  return out;
}

// A CEL string literal.
inline std::string cel_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// CEL selectors for HAMi's type and uuid annotations.
inline json selectors(const json& annotations, const std::string& driver) {
  json out = json::array();
  const std::string attrs = "device.attributes[" + cel_string(driver) + "]";
  auto any_of = [&](std::string_view key, const std::string& field, bool contains) {
    const std::string v = kube::detail::string_at(annotations, key);
    std::string expr;
    for (const auto& item : items(v)) {
      if (!expr.empty()) expr += " || ";
      expr += contains ? attrs + "." + field + ".contains(" + cel_string(item) + ")"
                       : attrs + "." + field + " == " + cel_string(item);
    }
    return expr;
  };
  auto add = [&](const std::string& expr, bool negate) {
    if (expr.empty()) return;
    out.push_back({{"cel", {{"expression", negate ? "!(" + expr + ")" : expr}}}});
  };
  add(any_of(kube::k_use_type, "productName", true), false);
  add(any_of(kube::k_nouse_type, "productName", true), true);
  add(any_of(kube::k_use_uuid, "uuid", false), false);
  add(any_of(kube::k_nouse_uuid, "uuid", false), true);
  return out;
}

// The resource value of container c (limits, then requests), or null.
inline const json* resource(const json& c, std::string_view name) {
  const json* res = kube::detail::member(c, "resources");
  if (res == nullptr || name.empty()) return nullptr;
  for (const char* part : {"limits", "requests"}) {
    const json* m = kube::detail::member(*res, part);
    if (m == nullptr || !m->is_object()) continue;
    auto it = m->find(std::string(name));
    if (it != m->end()) return &*it;
  }
  return nullptr;
}

inline std::int64_t value(const json* v) {
  if (v == nullptr) return -1;
  std::string text = v->is_string()           ? v->get<std::string>()
                     : v->is_number_integer() ? std::to_string(v->get<std::int64_t>())
                                              : "";
  auto q = kube::parse_quantity(text);
  return q ? *q : -1;
}

}  // namespace detail

/// The ResourceClaimTemplate for n devices, each with memory_mib of memory (< 0: the whole card)
/// and cores percent, with the selectors given. Pure.
inline json claim_template(const std::string& name_space, std::int64_t n, std::int64_t memory_mib,
                           std::int64_t cores, const json& selectors, const options& o) {
  json capacity = {{"cores", std::to_string(cores)}};
  if (memory_mib >= 0) capacity["memory"] = std::to_string(memory_mib) + "Mi";
  json exactly = {{"deviceClassName", o.device_class},
                  {"allocationMode", "ExactCount"},
                  {"count", n},
                  {"capacity", {{"requests", capacity}}}};
  if (!selectors.empty()) exactly["selectors"] = selectors;
  json devices = {{"requests", json::array({{{"name", k_request_name}, {"exactly", exactly}}})}};
  if (n > 1) {
    devices["constraints"] = json::array(
        {{{"requests", json::array({k_request_name})}, {"distinctAttribute", o.driver + "/uuid"}}});
  }
  std::string name = "gpuslice-" + std::to_string(n) + "x-" +
                     (memory_mib >= 0 ? std::to_string(memory_mib) + "mi" : std::string("allmem")) +
                     "-" + std::to_string(cores) + "c";
  if (!selectors.empty()) name += "-" + detail::digest(selectors.dump() + o.driver);
  if (o.device_class != k_default_class) name += "-" + detail::digest(o.device_class);
  return {{"apiVersion", "resource.k8s.io/v1"},
          {"kind", "ResourceClaimTemplate"},
          {"metadata", {{"name", name}, {"namespace", name_space}}},
          {"spec", {{"spec", {{"devices", devices}}}}}};
}

/// Converts pod (already through HAMi's rules, so its defaults are set) to claims in place, or
/// leaves it untouched with notes saying why. original_scheduler: spec.schedulerName before
/// HAMi's rules set ours (restored on conversion). Pure apart from pod.
inline conversion convert(json& pod, const kube::config& cfg, const options& o,
                          const std::string& original_scheduler) {
  conversion out;
  const std::string where = "pod " + kube::pod_identity(pod).key();
  const json* meta = kube::detail::member(pod, "metadata");
  const json* ann = meta != nullptr ? kube::detail::member(*meta, "annotations") : nullptr;
  const json annotations = ann != nullptr && ann->is_object() ? *ann : json::object();
  if (kube::detail::string_at(annotations, kube::k_numa_bind) == "true") {
    out.notes.push_back(where + ": " + std::string(kube::k_numa_bind) +
                        " has no DRA equivalent here; left on HAMi's path");
    return out;
  }
  const std::string ns = meta != nullptr ? kube::detail::string_at(*meta, "namespace", "default")
                                         : std::string("default");
  const json sel = detail::selectors(annotations, o.driver);
  struct plan {
    std::string field;
    std::size_t index;
    std::string claim;
    json tmpl;
  };
  std::vector<plan> plans;
  for (const char* field : {"initContainers", "containers"}) {
    const json* list = kube::detail::member(pod["spec"], field);
    if (list == nullptr || !list->is_array()) continue;
    for (std::size_t i = 0; i < list->size(); ++i) {
      const json& c = (*list)[i];
      if (!c.is_object()) continue;
      const std::int64_t n = detail::value(detail::resource(c, cfg.resource_count));
      if (n <= 0) continue;
      const std::string cw = where + ": container " + kube::detail::string_at(c, "name", "?");
      const std::int64_t mem = detail::value(detail::resource(c, cfg.resource_memory));
      const std::int64_t pct = detail::value(detail::resource(c, cfg.resource_memory_percent));
      const std::int64_t cores = detail::value(detail::resource(c, cfg.resource_cores));
      if (pct >= 0 && pct < k_whole_percent && mem < 0) {
        out.notes.push_back(cw + ": " + cfg.resource_memory_percent + " " + std::to_string(pct) +
                            " is a share of a card a claim cannot name (use " +
                            cfg.resource_memory + " in MiB); left on HAMi's path");
        return out;
      }
      if (cores <= 0) {
        out.notes.push_back(cw + ": no " + cfg.resource_cores +
                            " (a claim that asks no cores takes the whole device's); left on "
                            "HAMi's path");
        return out;
      }
      const std::string claim =
          std::string("gpuslice-") + (field[0] == 'i' ? "init-" : "") + std::to_string(i);
      plans.push_back({field, i, claim, claim_template(ns, n, mem, cores, sel, o)});
    }
  }
  if (plans.empty()) return out;
  json& spec = pod["spec"];
  if (!spec.contains("resourceClaims") || !spec["resourceClaims"].is_array()) {
    spec["resourceClaims"] = json::array();
  }
  for (const plan& p : plans) {
    json& c = spec[p.field][p.index];
    json& res = c["resources"];
    for (const char* part : {"limits", "requests"}) {
      if (!res.contains(part) || !res[part].is_object()) continue;
      for (const std::string* name :
           {&cfg.resource_count, &cfg.resource_memory, &cfg.resource_memory_percent,
            &cfg.resource_cores, &cfg.resource_priority}) {
        if (!name->empty()) res[part].erase(*name);
      }
      if (res[part].empty()) res.erase(part);
    }
    if (!res.contains("claims") || !res["claims"].is_array()) res["claims"] = json::array();
    res["claims"].push_back({{"name", p.claim}});
    const std::string tname = p.tmpl["metadata"]["name"].get<std::string>();
    spec["resourceClaims"].push_back({{"name", p.claim}, {"resourceClaimTemplateName", tname}});
    bool seen = false;
    for (const json& t : out.templates) seen = seen || t["metadata"]["name"] == tname;
    if (!seen) out.templates.push_back(p.tmpl);
  }
  if (original_scheduler.empty()) {
    spec.erase("schedulerName");
  } else {
    spec["schedulerName"] = original_scheduler;
  }
  out.converted = true;
  return out;
}

}  // namespace gpuslice::webhook::dra
