// Python bindings of include/gpuslice/memory: the ledger (shared file or in-process) and the
// read-only snapshot a monitor takes. The Python facade gpuslice.Ledger (memory.py) resolves
// device names and quantity strings; this layer takes indices and byte counts.
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <variant>

#include "bindings.hpp"
#include "gpuslice/memory/ledger.hpp"

using namespace pybind11::literals;

namespace gpuslice::py {
namespace {

namespace mem = gpuslice::memory;

/// Raises the Python exception that matches the error: FileNotFoundError, FileExistsError,
/// OSError or ValueError, with the one-line message.
[[noreturn]] void raise(const error& e) {
  PyObject* type = PyExc_ValueError;
  if (e.code == errc::not_found) type = PyExc_FileNotFoundError;
  if (e.code == errc::exists) type = PyExc_FileExistsError;
  if (e.code == errc::io_error) type = PyExc_OSError;
  PyErr_SetString(type, e.message.c_str());
  throw pybind11::error_already_set();
}

template <class T>
T unwrap(result<T> r) {
  if (!r) raise(r.err());
  return std::move(r).value();
}

pybind11::dict to_py(const mem::snapshot& s) {
  pybind11::list devices;
  for (std::size_t i = 0; i < s.devices.size(); ++i) {
    const auto& d = s.devices[i];
    devices.append(pybind11::dict("index"_a = i, "uuid"_a = d.uuid, "limit"_a = d.limit,
                                  "used"_a = d.used, "sm_limit_percent"_a = d.sm_limit_percent));
  }
  pybind11::list processes;
  for (const auto& p : s.processes) {
    pybind11::dict used;
    for (std::size_t i = 0; i < s.devices.size(); ++i) used[pybind11::int_(i)] = p.used[i];
    processes.append(
        pybind11::dict("pid"_a = p.pid, "start_time"_a = p.start_time, "used"_a = used));
  }
  return pybind11::dict("devices"_a = devices, "processes"_a = processes);
}

/// One Python class over both storage policies.
class ledger {
 public:
  using variant = std::variant<mem::shared_ledger, mem::in_memory_ledger>;
  explicit ledger(variant v, std::string path) : v_(std::move(v)), path_(std::move(path)) {}

  static ledger open(const std::string& path, bool create) {
    auto r = create ? mem::shared_ledger::open(mem::create_only, path)
                    : mem::shared_ledger::open(mem::open_only, path);
    return ledger(unwrap(std::move(r)), path);
  }
  static ledger in_memory() { return ledger(mem::in_memory_ledger::create(), ""); }

  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit(std::forward<F>(f), v_);
  }

  int device(const std::string& uuid, std::uint64_t limit) {
    return unwrap(visit([&](auto& l) { return l.device(uuid, limit); }));
  }
  int find_device(const std::string& uuid) {
    auto r = visit([&](auto& l) { return l.find_device(uuid); });
    if (!r) throw pybind11::value_error(r.message());  // a lookup, not a missing file
    return *r;
  }
  int device_count() {
    return visit([](auto& l) { return l.device_count(); });
  }
  int checked(int device) {
    if (device < 0 || device >= device_count()) {
      throw pybind11::index_error("device index " + std::to_string(device) + ": expected 0.." +
                                  std::to_string(device_count() - 1) + " (registered devices)");
    }
    return device;
  }
  std::string uuid(int device) {
    return visit([&](auto& l) { return l.uuid(checked(device)); });
  }
  mem::slot_handle slot() {
    return unwrap(visit([](auto& l) { return l.attach(); }));
  }
  bool try_reserve(int device, std::uint64_t bytes) {
    checked(device);
    const auto s = slot();
    pybind11::gil_scoped_release nogil;
    return visit([&](auto& l) { return l.try_reserve(s, device, bytes); });
  }
  void release(int device, std::uint64_t bytes) {
    checked(device);
    const auto s = slot();
    if (bytes > visit([&](auto& l) { return l.slot_used(s, device); })) {
      throw pybind11::value_error(
          "release of " + std::to_string(bytes) + " bytes on device " + std::to_string(device) +
          ": this process holds only " +
          std::to_string(visit([&](auto& l) { return l.slot_used(s, device); })));
    }
    pybind11::gil_scoped_release nogil;
    visit([&](auto& l) { l.release(s, device, bytes); });
  }
  std::uint64_t held(int device) {
    checked(device);
    const auto s = slot();
    return visit([&](auto& l) { return l.slot_used(s, device); });
  }
  std::uint64_t used(int device) {
    return visit([&](auto& l) { return l.used(checked(device)); });
  }
  std::uint64_t limit(int device) {
    return visit([&](auto& l) { return l.limit(checked(device)); });
  }
  void set_limit(int device, std::uint64_t bytes) {
    visit([&](auto& l) { l.set_limit(checked(device), bytes); });
  }
  std::uint32_t sm_limit(int device) {
    return visit([&](auto& l) { return l.sm_limit(checked(device)); });
  }
  void set_sm_limit(int device, std::uint32_t percent) {
    if (percent > k_cores_per_gpu) {
      throw pybind11::value_error("SM limit " + std::to_string(percent) +
                                  ": expected a percentage from 0 to 100");
    }
    visit([&](auto& l) { l.set_sm_limit(checked(device), percent); });
  }
  std::uint64_t reap() {
    pybind11::gil_scoped_release nogil;
    return visit([](auto& l) { return l.reap(); });
  }
  pybind11::dict snapshot() {
    return to_py(visit([](auto& l) { return l.snapshot(); }));
  }
  const std::string& path() const { return path_; }

 private:
  variant v_;
  std::string path_;
};

}  // namespace

void bind_memory(pybind11::module_& m) {
  pybind11::class_<ledger>(m, "_Ledger",
                           "The memory ledger (private: use gpuslice.Ledger). Thread-safe.")
      .def_static("open", &ledger::open, "path"_a, "create"_a,
                  "Open a ledger file (create=True: create_only, else open_only).")
      .def_static("in_memory", &ledger::in_memory, "A fresh in-process ledger.")
      .def("device", &ledger::device, "uuid"_a, "limit"_a,
           "Index of the device, registered with limit bytes if absent.")
      .def("find_device", &ledger::find_device, "uuid"_a)
      .def_property_readonly("device_count", &ledger::device_count)
      .def("uuid", &ledger::uuid, "device"_a)
      .def("try_reserve", &ledger::try_reserve, "device"_a, "bytes"_a)
      .def("release", &ledger::release, "device"_a, "bytes"_a)
      .def("held", &ledger::held, "device"_a, "Bytes this process holds on the device.")
      .def("used", &ledger::used, "device"_a)
      .def("limit", &ledger::limit, "device"_a)
      .def("set_limit", &ledger::set_limit, "device"_a, "bytes"_a)
      .def("sm_limit", &ledger::sm_limit, "device"_a)
      .def("set_sm_limit", &ledger::set_sm_limit, "device"_a, "percent"_a)
      .def("reap", &ledger::reap)
      .def("snapshot", &ledger::snapshot)
      .def_property_readonly("path", &ledger::path);
  m.def(
      "read_ledger_snapshot",
      [](const std::string& path) { return to_py(unwrap(mem::read_snapshot(path))); }, "path"_a,
      "Snapshot of a ledger file, read without writing to it.");
  m.attr("LEDGER_MAX_DEVICES") = mem::k_max_devices;
  m.attr("LEDGER_SLOT_COUNT") = mem::k_slot_count;
}

}  // namespace gpuslice::py
