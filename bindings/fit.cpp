// Python bindings of include/gpuslice/fit: the model, the scheduling cycle (built-in policies or
// a Python callable as the node scorer) and HAMi's annotation codecs.
#include "gpuslice/fit/fit.hpp"

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings.hpp"
#include "gpuslice/fit/codec.hpp"
#include "gpuslice/quantity.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace gpuslice::py {

namespace {

using namespace gpuslice::fit;

template <class T>
T unwrap(result<T> r) {
  if (!r) throw ::py::value_error(r.message());
  return std::move(r).value();
}

/// Bytes from an int or a quantity string ("3000m", "16Gi").
std::uint64_t to_bytes(const ::py::object& v, const char* what) {
  if (::py::isinstance<::py::str>(v)) return unwrap(parse_bytes(v.cast<std::string>()));
  if (::py::isinstance<::py::int_>(v) && !::py::isinstance<::py::bool_>(v)) {
    const auto i = v.cast<long long>();
    if (i < 0)
      throw ::py::value_error(std::string(what) + " must be >= 0, got " + std::to_string(i));
    return static_cast<std::uint64_t>(i);
  }
  throw ::py::type_error(std::string(what) + ": expected bytes as an int or a quantity string");
}

hami_policy node_policy_of(const std::string& s) {
  if (s == "binpack") return hami_policy::binpack;
  if (s == "spread") return hami_policy::spread;
  throw ::py::value_error("policy \"" + s + "\": expected \"binpack\" or \"spread\"");
}

gpu_policy gpu_policy_of(const std::string& s) {
  if (s == "binpack") return gpu_policy::binpack;
  if (s == "spread") return gpu_policy::spread;
  if (s == "topology") return gpu_policy::topology;
  throw ::py::value_error("gpu_policy \"" + s +
                          "\": expected \"binpack\", \"spread\" or \"topology\"");
}

std::vector<std::vector<std::int32_t>> links_to_py(const link_matrix& m) {
  std::vector<std::vector<std::int32_t>> out(m.size(), std::vector<std::int32_t>(m.size()));
  for (std::size_t a = 0; a < m.size(); ++a) {
    for (std::size_t b = 0; b < m.size(); ++b) out[a][b] = m.at(a, b);
  }
  return out;
}

link_matrix links_from_py(const std::vector<std::vector<std::int32_t>>& rows) {
  link_matrix m(rows.size());
  for (std::size_t a = 0; a < rows.size(); ++a) {
    if (rows[a].size() != rows.size()) {
      throw ::py::value_error("links: row " + std::to_string(a) + " has " +
                              std::to_string(rows[a].size()) + " entries; expected a square " +
                              std::to_string(rows.size()) + "x" + std::to_string(rows.size()) +
                              " matrix");
    }
  }
  for (std::size_t a = 0; a < rows.size(); ++a) {
    for (std::size_t b = a + 1; b < rows.size(); ++b) {
      if (rows[a][b] != rows[b][a]) {
        throw ::py::value_error("links: entry (" + std::to_string(a) + ", " + std::to_string(b) +
                                ") differs from (" + std::to_string(b) + ", " + std::to_string(a) +
                                "); expected a symmetric matrix");
      }
      m.set(a, b, rows[a][b]);
    }
  }
  return m;
}

::py::dict reasons_to_py(const reason_counts& c) {
  ::py::dict d;
  for (std::size_t i = 0; i < k_reason_count; ++i) {
    const auto r = static_cast<reason>(i);
    if (c[r] != 0) d[::py::str(std::string(name_of(r)))] = c[r];
  }
  return d;
}

/// A Python callable as the node scorer; GPUs are chosen by a built-in GPU policy.
struct callable_scorer {
  static constexpr bool k_needs_allocation = true;
  ::py::function fn;
  hami_scorer inner;
  double node_score(const candidate& c) const {
    ::py::list alloc;
    for (const auto& ca : *c.allocation) {
      ::py::list devs;
      for (const auto& g : ca.devices) devs.append(g);
      alloc.append(devs);
    }
    return fn(c.target, alloc).cast<double>();
  }
  double gpu_score(const node& n, const device_state& d, const share& s) const {
    return inner.gpu_score(n, d, s);
  }
  bool topology() const { return inner.topology(); }
};

struct fit_args {
  std::string policy = "binpack";
  std::string gpu = "spread";
  std::vector<double> weights{1.0, 1.0, 1.0};
  bool backtrack = false;
  std::uint64_t backtrack_limit = 100000;
  bool report_nodes = false;
  ::py::object scorer = ::py::none();
};

decision run_fit(const cluster& c, const pod_request& pod, const fit_args& a) {
  if (a.weights.size() != 3) {
    throw ::py::value_error("weights: expected 3 numbers (slots, cores, memory), got " +
                            std::to_string(a.weights.size()));
  }
  const usage_weights w{a.weights[0], a.weights[1], a.weights[2]};
  const hami_scorer hs(node_policy_of(a.policy), gpu_policy_of(a.gpu), w);
  fit_options o;
  o.backtrack = a.backtrack;
  o.backtrack_limit = a.backtrack_limit;
  o.report_nodes = a.report_nodes;
  if (a.scorer.is_none()) return unwrap(c.fit(pod, hs, o));
  if (::py::isinstance<::py::str>(a.scorer) && a.scorer.cast<std::string>() == "topology") {
    return unwrap(c.fit(pod, topology_scorer(node_policy_of(a.policy), w), o));
  }
  if (!::py::isinstance<::py::function>(a.scorer)) {
    throw ::py::type_error("scorer: expected None, \"topology\" or a callable(node, allocation)");
  }
  return unwrap(c.fit(pod, callable_scorer{a.scorer.cast<::py::function>(), hs}, o));
}

pod_request to_pod(const ::py::object& pod) {
  if (::py::isinstance<container_request>(pod)) return pod_request{{pod.cast<container_request>()}};
  return pod_request{pod.cast<std::vector<container_request>>()};
}

}  // namespace

void bind_fit(::py::module_& m) {
  ::py::class_<device>(m, "Device",
                       "One GPU of a node and its usage (memory in bytes, cores in "
                       "milli-GPU: 1000 = the whole GPU).")
      .def(::py::init([](std::string uuid, ::py::object memory, std::uint32_t index,
                         std::string type, std::int32_t numa, bool healthy, std::uint32_t slots,
                         std::uint32_t cores, ::py::object memory_used, std::uint32_t cores_used,
                         std::uint32_t slots_used, std::string mode) {
             device d;
             d.uuid = std::move(uuid);
             d.memory_total = to_bytes(memory, "memory");
             d.index = index;
             d.type = std::move(type);
             d.numa = numa;
             d.healthy = healthy;
             d.slots_total = slots;
             d.cores_total = cores;
             d.memory_used = to_bytes(memory_used, "memory_used");
             d.cores_used = cores_used;
             d.slots_used = slots_used;
             d.mode = std::move(mode);
             return d;
           }),
           "uuid"_a, "memory"_a, "index"_a = 0, "type"_a = "", "numa"_a = 0, "healthy"_a = true,
           "slots"_a = k_default_slots, "cores"_a = k_milli_per_gpu, "memory_used"_a = 0,
           "cores_used"_a = 0, "slots_used"_a = 0, "mode"_a = std::string(k_default_mode))
      .def_readwrite("uuid", &device::uuid)
      .def_readwrite("index", &device::index)
      .def_readwrite("type", &device::type)
      .def_readwrite("numa", &device::numa)
      .def_readwrite("healthy", &device::healthy)
      .def_readwrite("slots", &device::slots_total)
      .def_readwrite("slots_used", &device::slots_used)
      .def_readwrite("memory", &device::memory_total)
      .def_readwrite("memory_used", &device::memory_used)
      .def_readwrite("cores", &device::cores_total)
      .def_readwrite("cores_used", &device::cores_used)
      .def_readwrite("mode", &device::mode)
      .def("__repr__", [](const device& d) {
        return "Device(" + d.uuid + ", " + format_bytes(d.memory_used) + "/" +
               format_bytes(d.memory_total) + ", cores " + std::to_string(d.cores_used) + "/" +
               std::to_string(d.cores_total) + ", slots " + std::to_string(d.slots_used) + "/" +
               std::to_string(d.slots_total) + ")";
      });

  ::py::class_<node>(m, "Node", "A node: CPU (milli), host memory (bytes), GPUs and links.")
      .def(::py::init([](std::string name, std::vector<device> devices, std::uint64_t cpu,
                         ::py::object memory, std::uint64_t cpu_used, ::py::object memory_used,
                         std::vector<std::vector<std::int32_t>> links) {
             node n;
             n.name = std::move(name);
             n.devices = std::move(devices);
             n.cpu_total = cpu;
             n.memory_total = to_bytes(memory, "memory");
             n.cpu_used = cpu_used;
             n.memory_used = to_bytes(memory_used, "memory_used");
             n.links = links_from_py(links);
             if (auto e = validate(n)) throw ::py::value_error(e->message);
             return n;
           }),
           "name"_a, "devices"_a, "cpu"_a = 0, "memory"_a = 0, "cpu_used"_a = 0,
           "memory_used"_a = 0, "links"_a = std::vector<std::vector<std::int32_t>>{})
      .def_readwrite("name", &node::name)
      .def_readwrite("devices", &node::devices)
      .def_readwrite("cpu", &node::cpu_total)
      .def_readwrite("cpu_used", &node::cpu_used)
      .def_readwrite("memory", &node::memory_total)
      .def_readwrite("memory_used", &node::memory_used)
      .def_property(
          "links", [](const node& n) { return links_to_py(n.links); },
          [](node& n, const std::vector<std::vector<std::int32_t>>& rows) {
            n.links = links_from_py(rows);
          },
          "Pairwise link scores (a symmetric matrix, one row per device), or [].");

  ::py::class_<container_request>(
      m, "ContainerRequest",
      "What one container asks for. cores is HAMi's percent (0..100); milli is the same "
      "quantity in milli-GPU (1000 = one GPU); give one of them.")
      .def(::py::init([](std::uint32_t count, ::py::object memory, std::uint32_t memory_percent,
                         ::py::object cores, ::py::object milli, std::vector<std::string> use_types,
                         std::vector<std::string> nouse_types, std::vector<std::string> use_uuids,
                         std::vector<std::string> nouse_uuids, bool numa_bind, bool exclusive,
                         std::uint64_t cpu, ::py::object host_memory) {
             container_request r;
             r.count = count;
             r.memory = to_bytes(memory, "memory");
             r.memory_percent = memory_percent;
             if (!cores.is_none() && !milli.is_none()) {
               throw ::py::value_error("give cores (percent) or milli (milli-GPU), not both");
             }
             if (!cores.is_none()) {
               const auto pct = cores.cast<std::uint32_t>();
               if (pct > k_cores_per_gpu) {
                 throw ::py::value_error("cores " + std::to_string(pct) +
                                         ": expected a percent 0..100");
               }
               r.cores_percent(pct);
             }
             if (!milli.is_none()) r.cores = milli.cast<std::uint32_t>();
             r.use_types = std::move(use_types);
             r.nouse_types = std::move(nouse_types);
             r.use_uuids = std::move(use_uuids);
             r.nouse_uuids = std::move(nouse_uuids);
             r.numa_bind = numa_bind;
             r.exclusive = exclusive;
             r.cpu = cpu;
             r.host_memory = to_bytes(host_memory, "host_memory");
             if (auto e = validate(pod_request{{r}})) throw ::py::value_error(e->message);
             return r;
           }),
           "count"_a = 0, "memory"_a = 0, "memory_percent"_a = 0, "cores"_a = ::py::none(),
           "milli"_a = ::py::none(), "use_types"_a = std::vector<std::string>{},
           "nouse_types"_a = std::vector<std::string>{}, "use_uuids"_a = std::vector<std::string>{},
           "nouse_uuids"_a = std::vector<std::string>{}, "numa_bind"_a = false,
           "exclusive"_a = false, "cpu"_a = 0, "host_memory"_a = 0)
      .def_readwrite("count", &container_request::count)
      .def_readwrite("memory", &container_request::memory)
      .def_readwrite("memory_percent", &container_request::memory_percent)
      .def_readwrite("milli", &container_request::cores)
      .def_property_readonly("cores",
                             [](const container_request& r) { return milli_to_cores(r.cores); })
      .def_readwrite("use_types", &container_request::use_types)
      .def_readwrite("nouse_types", &container_request::nouse_types)
      .def_readwrite("use_uuids", &container_request::use_uuids)
      .def_readwrite("nouse_uuids", &container_request::nouse_uuids)
      .def_readwrite("numa_bind", &container_request::numa_bind)
      .def_readwrite("exclusive", &container_request::exclusive)
      .def_readwrite("cpu", &container_request::cpu)
      .def_readwrite("host_memory", &container_request::host_memory);

  ::py::class_<device_grant>(m, "Grant", "One device of an allocation.")
      .def_readonly("device", &device_grant::device, "position in Node.devices")
      .def_readonly("memory", &device_grant::memory, "bytes")
      .def_readonly("milli", &device_grant::cores, "milli-GPU")
      .def("__eq__",
           [](const device_grant& a, const ::py::object& b) {
             return ::py::isinstance<device_grant>(b) && a == b.cast<device_grant>();
           })
      .def("__hash__",
           [](const device_grant& g) {
             return ::py::hash(::py::make_tuple(g.device, g.memory, g.cores));
           })
      .def("__repr__", [](const device_grant& g) {
        return "Grant(device=" + std::to_string(g.device) + ", memory=" + std::to_string(g.memory) +
               ", milli=" + std::to_string(g.cores) + ")";
      });

  ::py::class_<decision>(m, "Decision", "The outcome of one scheduling cycle.")
      .def_readonly("placed", &decision::placed)
      .def_property_readonly("node",
                             [](const decision& d) -> ::py::object {
                               if (!d.placed) return ::py::none();
                               return ::py::int_(d.node);
                             })
      .def_readonly("score", &decision::score)
      .def_property_readonly("containers",
                             [](const decision& d) {
                               std::vector<std::vector<device_grant>> out;
                               for (const auto& c : d.containers) out.push_back(c.devices);
                               return out;
                             })
      .def_readonly("feasible_nodes", &decision::feasible_nodes)
      .def_readonly("total_nodes", &decision::total_nodes)
      .def_property_readonly(
          "reasons", [](const decision& d) { return reasons_to_py(d.reasons); },
          "rejected nodes per reason name")
      .def_property_readonly(
          "nodes",
          [](const decision& d) {
            ::py::list out;
            for (const auto& r : d.nodes) {
              out.append(::py::dict("node"_a = r.node, "feasible"_a = r.feasible,
                                    "score"_a = r.score, "normalized"_a = r.normalized,
                                    "reasons"_a = reasons_to_py(r.reasons)));
            }
            return out;
          },
          "per-node reports (with report_nodes=True)")
      .def_property_readonly("message", &decision::message);

  ::py::class_<cluster>(m, "Cluster",
                        "Nodes and their usage; fit() decides, reserve() applies. Not "
                        "thread-safe to reserve while fitting.")
      .def(::py::init(
               [](std::vector<node> nodes) { return unwrap(cluster::make(std::move(nodes))); }),
           "nodes"_a)
      .def_property_readonly("nodes", &cluster::nodes)
      .def(
          "fit",
          [](const cluster& c, const ::py::object& pod, const std::string& policy,
             const std::string& gpu_policy, std::vector<double> weights, bool backtrack,
             std::uint64_t backtrack_limit, bool report_nodes, ::py::object scorer) {
            fit_args a{policy,          gpu_policy,   std::move(weights), backtrack,
                       backtrack_limit, report_nodes, std::move(scorer)};
            return run_fit(c, to_pod(pod), a);
          },
          "pod"_a, "policy"_a = "binpack", "gpu_policy"_a = "spread",
          "weights"_a = std::vector<double>{1.0, 1.0, 1.0}, "backtrack"_a = false,
          "backtrack_limit"_a = 100000, "report_nodes"_a = false, "scorer"_a = ::py::none(),
          "One scheduling cycle for a pod (a ContainerRequest or a list of them).")
      .def(
          "reserve", [](cluster& c, const decision& d) { (void)unwrap(c.reserve(d)); },
          "decision"_a)
      .def(
          "release", [](cluster& c, const decision& d) { (void)unwrap(c.release(d)); },
          "decision"_a)
      .def(
          "annotation",
          [](const cluster& c, const decision& d) {
            if (!d.placed) throw ::py::value_error("decision is not a placement");
            return unwrap(encode_pod_devices(to_annotation(c.nodes()[d.node], d.containers)));
          },
          "decision"_a, "HAMi's hami.io/vgpu-devices-allocated value for a placed decision.");

  m.def(
      "fit",
      [](std::vector<node> nodes, const ::py::object& pod, const std::string& policy,
         const std::string& gpu_policy, std::vector<double> weights, bool backtrack,
         std::uint64_t backtrack_limit, bool report_nodes, ::py::object scorer) {
        const cluster c = unwrap(cluster::make(std::move(nodes)));
        fit_args a{policy,          gpu_policy,   std::move(weights), backtrack,
                   backtrack_limit, report_nodes, std::move(scorer)};
        return run_fit(c, to_pod(pod), a);
      },
      "nodes"_a, "pod"_a, "policy"_a = "binpack", "gpu_policy"_a = "spread",
      "weights"_a = std::vector<double>{1.0, 1.0, 1.0}, "backtrack"_a = false,
      "backtrack_limit"_a = 100000, "report_nodes"_a = false, "scorer"_a = ::py::none(),
      "One scheduling cycle over a list of nodes.");

  m.def(
      "encode_pod_devices",
      [](const std::vector<
          std::vector<std::tuple<std::string, std::string, std::uint64_t, std::uint32_t>>>& pod) {
        std::vector<annotated_container> in;
        for (const auto& c : pod) {
          annotated_container ac;
          for (const auto& [uuid, type, mem, cores] : c) ac.push_back({uuid, type, mem, cores});
          in.push_back(std::move(ac));
        }
        return unwrap(encode_pod_devices(in));
      },
      "pod"_a, "HAMi's pod devices annotation from [[(uuid, type, mem_mib, cores), ...], ...].");
  m.def(
      "decode_pod_devices",
      [](const std::string& text) {
        std::vector<std::vector<std::tuple<std::string, std::string, std::uint64_t, std::uint32_t>>>
            out;
        for (const auto& c : unwrap(decode_pod_devices(text))) {
          out.emplace_back();
          for (const auto& d : c) out.back().emplace_back(d.uuid, d.type, d.memory_mib, d.cores);
        }
        return out;
      },
      "text"_a, "Decode HAMi's pod devices annotation; raises ValueError.");
  m.def(
      "decode_node_devices",
      [](const std::string& text) { return unwrap(decode_node_devices(text)); }, "text"_a,
      "Decode hami.io/node-nvidia-register (JSON or colon form); raises ValueError.");
  m.def("encode_node_devices", &encode_node_devices, "devices"_a,
        "HAMi's node registration JSON for devices.");
  m.def(
      "decode_pair_scores",
      [](const std::string& text, const std::vector<device>& devices) {
        return links_to_py(unwrap(decode_pair_scores(text, devices)));
      },
      "text"_a, "devices"_a, "Device pair scores JSON to a link matrix (list of rows).");
}

}  // namespace gpuslice::py
