#pragma once
/// \file
/// The mutating admission webhook's decision, without the HTTPS server: an AdmissionReview
/// (admission.k8s.io/v1 or v1beta1) in, an AdmissionReview with the response out. For a Pod that
/// asks for GPUs it applies HAMi's webhook rules (kube::config):
///   - gpumem, gpumem-percentage or gpucores without nvidia.com/gpu: defaultGPUNum GPUs;
///   - no gpucores and (no memory, or gpumem-percentage 100): gpucores 100 (the card alone);
///   - otherwise a missing gpucores is defaultCores, a missing memory is defaultMem (when set);
///   - the priority resource (nvidia.com/priority) becomes CUDA_TASK_PRIORITY in the env;
///   - spec.schedulerName becomes the configured scheduler (when empty or default-scheduler);
///   - a GPU pod with a privileged container, or with spec.nodeName set, is refused (HAMi's
///     reasons: "container NAME is privileged", "pod has node assigned").
/// A pod that names another scheduler, or is labelled hami.io/webhook=ignore, is left untouched.
/// With settings::dra on (off by default), the GPU pods it selects then become ResourceClaims
/// for gpuslice-dra-plugin (dra.hpp): outcome::templates lists the templates they name.
/// A review is answered in the version it came in (admission.k8s.io/v1 or v1beta1).
/// Values HAMi refuses (gpumem-percentage outside 0..100, a numa-bind that is not a boolean, an
/// unknown scheduler policy, bad scoring weights, a malformed quantity) are refused with one line
/// naming the pod, the container and the field. The answer carries a JSONPatch (RFC 6902). A
/// review whose object cannot be read is allowed or refused as fail_open says. Pure, thread-safe.

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "dra.hpp"
#include "kube.hpp"

namespace gpuslice::webhook {

using json = nlohmann::json;

/// kube-scheduler's default name: a pod naming it (or none) is moved to ours.
inline constexpr std::string_view k_default_scheduler = "default-scheduler";
/// The AdmissionReview versions answered, each in its own version.
inline constexpr std::string_view k_admission_v1 = "admission.k8s.io/v1";
inline constexpr std::string_view k_admission_v1beta1 = "admission.k8s.io/v1beta1";
/// The label (on a pod, or on a namespace through the configuration's namespaceSelector) that
/// keeps the webhook away, as in HAMi.
inline constexpr std::string_view k_ignore_label = "hami.io/webhook";
inline constexpr std::string_view k_ignore_value = "ignore";
/// The environment variable HAMi-core (and libgpuslice.so) reads for the task priority.
inline constexpr std::string_view k_priority_env = "CUDA_TASK_PRIORITY";
/// HTTP-ish status codes carried in a refusal's Status.
inline constexpr int k_status_bad_request = 400;
inline constexpr int k_status_forbidden = 403;

/// The webhook's settings: HAMi's chart keys and what to do with a review it cannot read.
struct settings {
  kube::config cfg;                                   ///< resource names and defaults
  std::string scheduler_name = "gpuslice-scheduler";  ///< schedulerName
  bool fail_open = false;  ///< a review whose object is unreadable: allow (true) or refuse
  dra::options dra;        ///< which GPU pods become ResourceClaims (dra.hpp); off by default
};

/// Standard base64 (RFC 4648) of \p in, as AdmissionResponse.patch carries it. Pure.
inline std::string base64(std::string_view in) {
  static constexpr char k_alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const auto n = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << 16 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(in[i + 1])) << 8 |
                   static_cast<unsigned char>(in[i + 2]);
    out += k_alphabet[n >> 18 & 63];
    out += k_alphabet[n >> 12 & 63];
    out += k_alphabet[n >> 6 & 63];
    out += k_alphabet[n & 63];
  }
  if (i + 1 == in.size()) {
    const auto n = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << 16;
    out += k_alphabet[n >> 18 & 63];
    out += k_alphabet[n >> 12 & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const auto n = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << 16 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(in[i + 1])) << 8;
    out += k_alphabet[n >> 18 & 63];
    out += k_alphabet[n >> 12 & 63];
    out += k_alphabet[n >> 6 & 63];
    out += '=';
  }
  return out;
}

/// What review() decided, besides the AdmissionReview it returns.
struct outcome {
  json review;  ///< the AdmissionReview to answer (HTTP 200)
  bool allowed = true;
  bool mutated = false;  ///< a patch was attached
  std::string message;   ///< why it was refused (or why an unreadable review was let through)
  /// DRA mode: the ResourceClaimTemplates the mutated pod names, for the caller to create
  /// before answering (dra.hpp).
  std::vector<json> templates;
  bool dry_run = false;  ///< request.dryRun: create nothing
};

namespace detail {

/// The resource value \p name of container \p c (limits, then requests), or null.
inline json* resource(json& c, std::string_view name) {
  for (const char* part : {"limits", "requests"}) {
    json* res = c.contains("resources") && c["resources"].is_object() ? &c["resources"] : nullptr;
    if (res == nullptr || !res->contains(part) || !(*res)[part].is_object()) continue;
    auto it = (*res)[part].find(name);
    if (it != (*res)[part].end()) return &*it;
  }
  return nullptr;
}

/// Sets limits[name] = value on container \p c.
inline void set_limit(json& c, std::string_view name, const std::string& value) {
  if (!c.contains("resources") || !c["resources"].is_object()) c["resources"] = json::object();
  json& res = c["resources"];
  if (!res.contains("limits") || !res["limits"].is_object()) res["limits"] = json::object();
  res["limits"][std::string(name)] = value;
}

/// The integer value of a resource quantity, or an error naming the field.
inline result<std::int64_t> value_of(const json& v, const std::string& where) {
  std::string text;
  if (v.is_string()) {
    text = v.get<std::string>();
  } else if (v.is_number_integer()) {
    text = std::to_string(v.get<std::int64_t>());
  } else {
    return make_error(errc::invalid_value, where + ": expected a quantity");
  }
  auto q = kube::parse_quantity(text);
  if (!q) return error{q.code(), where + " " + q.message()};
  return *q;
}

}  // namespace detail

/// Applies HAMi's webhook rules to \p pod in place. Returns whether the pod asks for GPUs, or a
/// refusal naming the container and the field. Pure apart from \p pod.
inline result<bool> mutate_pod(json& pod, const settings& s) {
  const kube::config& cfg = s.cfg;
  const std::string where = "pod " + kube::pod_identity(pod).key();
  if (!pod.contains("spec") || !pod["spec"].is_object()) {
    return make_error(errc::invalid_value, where + ": spec: expected an object");
  }
  bool gpu = false;
  for (const char* field : {"initContainers", "containers"}) {
    if (!pod["spec"].contains(field)) continue;
    json& list = pod["spec"][field];
    if (!list.is_array()) {
      return make_error(errc::invalid_value,
                        where + ": spec." + field + ": expected an array of containers");
    }
    for (json& c : list) {
      if (!c.is_object()) continue;
      const std::string cw = where + ": container " +
                             ::gpuslice::detail::quoted(kube::detail::string_at(c, "name", "?"));
      auto present = [&](const std::string& name) {
        return !name.empty() && detail::resource(c, name) != nullptr;
      };
      if (present(cfg.resource_memory_percent)) {
        auto pct = detail::value_of(*detail::resource(c, cfg.resource_memory_percent),
                                    cw + ": " + cfg.resource_memory_percent);
        if (!pct) return std::move(pct).err();
        if (*pct > static_cast<std::int64_t>(fit::k_max_percent)) {
          return make_error(errc::out_of_range, cw + ": " + cfg.resource_memory_percent + " " +
                                                    std::to_string(*pct) +
                                                    ": must be an integer between 0 and 100");
        }
      }
      if (present(cfg.resource_priority)) {
        auto prio = detail::value_of(*detail::resource(c, cfg.resource_priority),
                                     cw + ": " + cfg.resource_priority);
        if (!prio) return std::move(prio).err();
        if (!c.contains("env") || !c["env"].is_array()) c["env"] = json::array();
        c["env"].push_back(
            {{"name", std::string(k_priority_env)}, {"value", std::to_string(*prio)}});
      }
      const bool has_count = present(cfg.resource_count);
      const bool has_mem = present(cfg.resource_memory);
      const bool has_pct = present(cfg.resource_memory_percent);
      const bool has_cores = present(cfg.resource_cores);
      bool counted = has_count;
      if (!has_count && (has_mem || has_pct || has_cores) && cfg.default_gpu_num > 0) {
        detail::set_limit(c, cfg.resource_count, std::to_string(cfg.default_gpu_num));
        counted = true;
      }
      if (!counted) continue;
      if (has_count) {
        auto n = detail::value_of(*detail::resource(c, cfg.resource_count),
                                  cw + ": " + cfg.resource_count);
        if (!n) return std::move(n).err();
        if (*n == 0) continue;  // asks for no GPU: nothing to default
      }
      gpu = true;
      if (!has_cores) {
        bool exclusive = false;
        if (has_pct) {
          auto pct = detail::value_of(*detail::resource(c, cfg.resource_memory_percent), cw);
          exclusive = pct && *pct == static_cast<std::int64_t>(fit::k_max_percent);
        } else {
          exclusive = !has_mem;
        }
        if (exclusive) {
          detail::set_limit(c, cfg.resource_cores, std::to_string(fit::k_max_percent));
        } else if (cfg.default_cores != 0) {
          detail::set_limit(c, cfg.resource_cores, std::to_string(cfg.default_cores));
        }
      }
      if (!has_mem && !has_pct && cfg.default_memory != 0) {
        detail::set_limit(c, cfg.resource_memory, std::to_string(cfg.default_memory));
      }
    }
  }
  if (!gpu) return false;
  // HAMi's webhook refusals, with its reasons: a privileged container sees every GPU of the
  // node whatever its share, and a pod placed by hand bypasses the scheduler's accounting.
  for (const char* field : {"initContainers", "containers"}) {
    const json* list = kube::detail::member(pod["spec"], field);
    if (list == nullptr) continue;
    for (const json& c : *list) {
      const json* sc = c.is_object() ? kube::detail::member(c, "securityContext") : nullptr;
      const json* priv = sc != nullptr ? kube::detail::member(*sc, "privileged") : nullptr;
      if (priv != nullptr && priv->is_boolean() && priv->get<bool>()) {
        return make_error(errc::invalid_value,
                          where + ": container " + kube::detail::string_at(c, "name", "?") +
                              " is privileged (a privileged container sees every GPU of its "
                              "node, beyond its share)");
      }
    }
  }
  if (const std::string node = kube::detail::string_at(pod["spec"], "nodeName"); !node.empty()) {
    return make_error(errc::invalid_value,
                      where + ": pod has node assigned (spec.nodeName " + node +
                          "): a GPU pod is placed by the scheduler, which accounts for its share");
  }
  json& spec = pod["spec"];
  const std::string current = kube::detail::string_at(spec, "schedulerName");
  if (current.empty() || current == k_default_scheduler) spec["schedulerName"] = s.scheduler_name;
  // Everything else HAMi's scheduler would refuse: the mapping's own checks.
  auto req = kube::pod_request_from_json(pod, cfg);
  if (!req) return std::move(req).err();
  auto scorer = kube::pod_scorer(pod, fit::hami_scorer{});
  if (!scorer) return std::move(scorer).err();
  return true;
}

/// Decides one AdmissionReview body. A body that is not an AdmissionReview with a request and
/// a uid is an error (answer HTTP 400: there is no uid to answer). Thread-safe.
inline result<outcome> review(std::string_view body, const settings& s) {
  const json in = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (in.is_discarded() || !in.is_object()) {
    return make_error(errc::invalid_value, "AdmissionReview: malformed JSON; expected an object");
  }
  const json* req = kube::detail::member(in, "request");
  const std::string uid = req != nullptr ? kube::detail::string_at(*req, "uid") : "";
  if (req == nullptr || !req->is_object() || uid.empty()) {
    return make_error(errc::invalid_value, "AdmissionReview: expected a request object with a uid");
  }
  // The API server reads the answer in the version it asked in (HAMi's chart asks v1beta1).
  std::string version = kube::detail::string_at(in, "apiVersion");
  if (version.empty()) version = std::string(k_admission_v1);
  if (version != k_admission_v1 && version != k_admission_v1beta1) {
    return make_error(errc::invalid_value, "AdmissionReview: apiVersion " +
                                               ::gpuslice::detail::quoted(version) + ": expected " +
                                               std::string(k_admission_v1) + " or " +
                                               std::string(k_admission_v1beta1));
  }
  outcome out;
  if (const json* dry = kube::detail::member(*req, "dryRun"); dry != nullptr && dry->is_boolean()) {
    out.dry_run = dry->get<bool>();
  }
  json response = {{"uid", uid}, {"allowed", true}};
  auto refuse = [&](int code, const std::string& message) {
    out.allowed = false;
    out.message = message;
    response["allowed"] = false;
    response["status"] = {{"code", code}, {"message", message}};
  };
  const json* kind = kube::detail::member(*req, "kind");
  const json* object = kube::detail::member(*req, "object");
  const bool is_pod = kind != nullptr && kube::detail::string_at(*kind, "kind") == "Pod";
  if (!is_pod) {
    // Not ours (the configuration's rules should not send it): let it through untouched.
  } else if (object == nullptr || !object->is_object()) {
    const std::string why = "AdmissionReview " + uid + ": request.object: expected a Pod";
    if (s.fail_open) {
      out.message = why + " (allowed: fail open)";
      response["warnings"] = json::array({"gpuslice webhook: " + out.message});
    } else {
      refuse(k_status_bad_request, "gpuslice webhook: " + why);
    }
  } else {
    json pod = *object;
    // Pods created from a template carry only generateName; name the pod for messages.
    if (kube::detail::string_at(pod["metadata"], "name").empty() && pod["metadata"].is_object()) {
      pod["metadata"]["name"] = kube::detail::string_at(pod["metadata"], "generateName", "?");
    }
    if (const json* ns = kube::detail::member(*req, "namespace");
        ns != nullptr && ns->is_string() && pod["metadata"].is_object() &&
        !pod["metadata"].contains("namespace")) {
      pod["metadata"]["namespace"] = *ns;
    }
    const json* meta = kube::detail::member(pod, "metadata");
    const json* labels = meta != nullptr ? kube::detail::member(*meta, "labels") : nullptr;
    const std::string scheduler =
        pod["spec"].is_object() ? kube::detail::string_at(pod["spec"], "schedulerName") : "";
    json mutated = pod;
    result<bool> gpu = false;
    if (labels != nullptr && kube::detail::string_at(*labels, k_ignore_label) == k_ignore_value) {
      // HAMi's objectSelector leaves these pods out; the same when the configuration has none.
    } else if (!scheduler.empty() && scheduler != k_default_scheduler &&
               scheduler != s.scheduler_name) {
      // Another scheduler places this pod: HAMi's webhook leaves it as it is.
    } else {
      gpu = mutate_pod(mutated, s);
      if (gpu && *gpu && dra::selected(mutated, s.dra)) {
        dra::conversion conv = dra::convert(mutated, s.cfg, s.dra, scheduler);
        out.templates = std::move(conv.templates);
        for (const std::string& note : conv.notes) {
          if (!response.contains("warnings")) response["warnings"] = json::array();
          response["warnings"].push_back("gpuslice webhook: " + note);
        }
      }
    }
    if (!gpu) {
      refuse(k_status_forbidden, "gpuslice webhook: " + gpu.message());
    } else {
      // Only what the rules changed: metadata name/namespace were filled in for messages.
      json patch = json::diff(pod, mutated);
      if (!patch.empty()) {
        response["patchType"] = "JSONPatch";
        response["patch"] = base64(patch.dump());
        out.mutated = true;
      }
    }
  }
  out.review = {{"apiVersion", version}, {"kind", "AdmissionReview"}, {"response", response}};
  return out;
}

}  // namespace gpuslice::webhook
