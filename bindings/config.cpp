// Python bindings of quantity.hpp and config.hpp.
#include <pybind11/stl.h>

#include <string>

#include "bindings.hpp"
#include "gpuslice/config.hpp"
#include "gpuslice/quantity.hpp"

using namespace pybind11::literals;

namespace gpuslice::py {

namespace {
template <class T>
T unwrap(result<T> r) {
  if (!r) throw pybind11::value_error(r.message());
  return std::move(r).value();
}

pybind11::object memory_limit_to_py(const memory_limit& m) {
  switch (m.type) {
    case memory_limit::kind::none: return pybind11::none();
    case memory_limit::kind::bytes: return pybind11::int_(m.bytes);
    case memory_limit::kind::percent: return pybind11::str(std::to_string(m.percent) + "%");
  }
  return pybind11::none();
}
}  // namespace

void bind_config(pybind11::module_& m) {
  m.def(
      "parse_bytes", [](const std::string& s) { return unwrap(parse_bytes(s)); }, "text"_a,
      "Parse a byte quantity ('3000m' = 3000 MiB, '1.5Gi', '4096'); raises ValueError.");
  m.def("format_bytes", &format_bytes, "bytes"_a,
        "Format bytes in the largest exact binary unit ('3000Mi').");
  m.def(
      "parse_percent", [](const std::string& s) { return unwrap(parse_percent(s)); }, "text"_a,
      "Parse an integer percentage 0..100; raises ValueError.");

  pybind11::enum_<utilization_policy>(m, "UtilizationPolicy")
      .value("default", utilization_policy::default_policy)
      .value("force", utilization_policy::force)
      .value("disable", utilization_policy::disable);
  pybind11::enum_<log_level>(m, "LogLevel")
      .value("error", log_level::error)
      .value("warn", log_level::warn)
      .value("info", log_level::info)
      .value("debug", log_level::debug)
      .value("trace", log_level::trace);

  pybind11::class_<config>(m, "Config", "The parsed environment contract of the shim.")
      .def_property_readonly(
          "memory_limits",
          [](const config& c) {
            pybind11::list out;
            for (const auto& lim : c.memory) out.append(memory_limit_to_py(lim));
            return out;
          },
          "Per-device memory limit: None (no limit), bytes (int) or 'N%' (str).")
      .def_property_readonly(
          "sm_limits",
          [](const config& c) {
            return std::vector<std::uint32_t>(c.sm_percent.begin(), c.sm_percent.end());
          },
          "Per-device SM percent; 0 = no limit.")
      .def("memory_limit_bytes",
           [](const config& c, int device, std::uint64_t device_total) {
             if (device < 0 || device >= k_max_devices) {
               throw pybind11::index_error("device index must be 0.." +
                                           std::to_string(k_max_devices - 1));
             }
             return c.memory[static_cast<std::size_t>(device)].resolve(device_total);
           },
           "device"_a, "device_total"_a, "The limit of a device in bytes; its total if none.")
      .def_readonly("shared_cache", &config::shared_cache)
      .def_readonly("node_region", &config::node_region)
      .def_readonly("policy", &config::policy)
      .def_property_readonly("priority",
                             [](const config& c) { return static_cast<int>(c.priority); })
      .def_readonly("oversubscribe", &config::oversubscribe)
      .def_readonly("active_oom_killer", &config::active_oom_killer)
      .def_readonly("log_level", &config::log);

  m.def(
      "parse_config",
      [](const std::map<std::string, std::string>& vars) {
        env_map env(vars.begin(), vars.end());
        return unwrap(parse_config(env));
      },
      "env"_a, "Parse the environment contract from a dict; raises ValueError.");
}

}  // namespace gpuslice::py
