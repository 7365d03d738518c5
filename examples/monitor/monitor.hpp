#pragma once
/// \file
/// The metrics exporter's work, apart from HTTP: scanning the node's ledger directory
/// (`<dir>/<pod uid>_<container>/*.cache`, as the device plugin lays it out), remembering the
/// last good reading of every container, and rendering Prometheus' text format with HAMi's
/// metric families and labels (and the legacy ones on request) plus gpuslice's own.
///
/// A ledger that cannot be read is skipped with a logged reason (once per reason) and a counter;
/// a container whose ledger was read before stays visible with its last values, its last-update
/// time and gpuslice_container_stale 1, never as a silent 0.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gpuslice/memory/ledger.hpp"
#include "gpuslice/memory/region.hpp"
#include "gpuslice/rate/token_bucket.hpp"
#include "metrics.hpp"
#include "nvml.hpp"

namespace gpuslice::monitor {

/// A pod's name as the API server knows it.
struct pod_name {
  std::string name_space;
  std::string name;
};

/// The SM limiter's statistics of one device, from its token bucket in the ledger.
struct device_rate {
  bool ready = false;            ///< the bucket was initialised (a process launched under a limit)
  std::uint64_t share_ppm = 0;   ///< the share it enforces, parts per million
  std::uint64_t charged_ns = 0;  ///< GPU time charged, all time
  std::uint64_t waited_ns = 0;   ///< wall time launches were held back, all time
};

/// Counters a ledger keeps beyond the snapshot.
struct ledger_counters {
  std::uint64_t reaps = 0;            ///< reaps that reclaimed something
  std::uint64_t reclaimed_bytes = 0;  ///< bytes reclaimed from dead processes
  std::vector<device_rate> rates;     ///< per device index
};

/// Reads the reap counters and the limiter's words of the ledger file \p path (which
/// read_snapshot has just accepted), for its first \p devices devices.
inline std::optional<ledger_counters> read_counters(const std::string& path, std::size_t devices) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  void* p = ::mmap(nullptr, memory::k_region_size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return std::nullopt;
  const auto* r = static_cast<const memory::region*>(p);
  ledger_counters c;
  c.reaps = r->header.reap_count.load(std::memory_order_acquire);
  c.reclaimed_bytes = r->header.reclaimed_bytes.load(std::memory_order_acquire);
  using rate::rate_word;
  for (std::size_t i = 0; i < devices && i < static_cast<std::size_t>(memory::k_max_devices); ++i) {
    const auto& w = r->devices[i].rate_words;
    auto word = [&](rate_word k) {
      return w[static_cast<std::size_t>(k)].load(std::memory_order_acquire);
    };
    device_rate d;
    d.ready = word(rate_word::tag) == rate::k_rate_tag_ready;
    if (d.ready) {
      d.share_ppm = word(rate_word::share_ppm);
      d.charged_ns = word(rate_word::charged_ns);
      d.waited_ns = word(rate_word::waited_ns);
    }
    c.rates.push_back(d);
  }
  ::munmap(p, memory::k_region_size);
  return c;
}

/// One container's ledger as last read.
struct container_reading {
  std::string path;  ///< the ledger file
  std::string uid;   ///< pod uid from the directory name
  std::string container;
  memory::snapshot snap;
  ledger_counters counters;
  ledger_counters previous;  ///< the read before (for the achieved share)
  double previous_at = 0;    ///< when it was taken (0: none)
  double last_update = 0;    ///< Unix seconds of the last successful read
  bool stale = false;        ///< the last read failed (values are from last_update)
  std::string error;         ///< why, when stale
};

/// "<uid>_<container>" split at the first '_' (a pod uid holds none; a container name may not
/// either, as a DNS label). False when the name has no '_' or an empty part.
inline bool split_dir_name(const std::string& dir, std::string& uid, std::string& container) {
  const std::size_t u = dir.find('_');
  if (u == std::string::npos || u == 0 || u + 1 >= dir.size()) return false;
  uid = dir.substr(0, u);
  container = dir.substr(u + 1);
  return true;
}

/// The exporter's state between scrapes. Thread-safe: scrape() takes a lock.
class exporter {
 public:
  /// Where the ledgers are, the node's name, and whether to add the legacy families.
  exporter(std::string dir, std::string node, bool legacy, void (*log)(const std::string&))
      : dir_(std::move(dir)), node_(std::move(node)), legacy_(legacy), log_(log) {}

  /// Scans the ledger directory, then renders every family. \p pods maps pod uids to names
  /// (empty: names unknown; the uid stands in as the pod name and the namespace is empty).
  /// \p gpus: the host GPUs from NVML, when it is loaded. \p now: Unix seconds.
  std::string scrape(const std::map<std::string, pod_name>& pods,
                     const std::vector<node::gpu_info>* gpus, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    scan(now);
    return render(pods, gpus, now);
  }

  /// Ledger read errors so far, by reason. Thread-safe.
  std::map<std::string, std::uint64_t> errors() const {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }

 private:
  void note_error(const std::string& path, const std::string& reason, const std::string& msg) {
    ++errors_[reason];
    auto& last = logged_[path];
    if (last != msg) {
      log_("skipping ledger " + msg);
      last = msg;
    }
  }

  static std::string reason_of(std::error_code c) {
    if (c == make_error_code(errc::not_found)) return "not_found";
    if (c == make_error_code(errc::corrupt)) return "corrupt";
    if (c == make_error_code(errc::version_mismatch)) return "version_mismatch";
    if (c == make_error_code(errc::busy)) return "not_initialised";
    if (c == make_error_code(errc::io_error)) return "io_error";
    return "invalid";
  }

  void scan(double now) {
    namespace fs = std::filesystem;
    std::set<std::string> seen;
    std::error_code ec;
    fs::directory_iterator it(dir_, ec);
    if (ec) {
      note_error(dir_, "directory", dir_ + ": cannot list: " + ec.message());
    } else {
      for (const auto& entry : it) {
        std::error_code e2;
        if (!entry.is_directory(e2)) continue;
        std::string uid, container;
        const std::string name = entry.path().filename().string();
        if (!split_dir_name(name, uid, container)) {
          note_error(entry.path().string(), "directory_name",
                     entry.path().string() + ": expected a directory named <pod uid>_<container>");
          continue;
        }
        for (const auto& f : fs::directory_iterator(entry.path(), e2)) {
          if (f.path().extension() != ".cache") continue;
          const std::string path = f.path().string();
          seen.insert(path);
          read_one(path, uid, container, now);
        }
      }
    }
    for (auto i = readings_.begin(); i != readings_.end();) {
      i = seen.count(i->first) != 0 ? std::next(i) : readings_.erase(i);
    }
  }

  void read_one(const std::string& path, const std::string& uid, const std::string& container,
                double now) {
    auto snap = memory::read_snapshot(path);
    auto& r = readings_[path];
    r.path = path;
    r.uid = uid;
    r.container = container;
    if (!snap) {
      note_error(path, reason_of(snap.code()), snap.message());
      r.stale = true;
      r.error = snap.message();
      return;
    }
    r.snap = std::move(*snap);
    if (auto c = read_counters(path, r.snap.devices.size())) {
      if (r.last_update > 0) {
        r.previous = std::move(r.counters);
        r.previous_at = r.last_update;
      }
      r.counters = std::move(*c);
    }
    r.last_update = now;
    r.stale = false;
    r.error.clear();
    logged_.erase(path);
  }

  std::string render(const std::map<std::string, pod_name>& pods,
                     const std::vector<node::gpu_info>* gpus, double now) const;

  std::string dir_;
  std::string node_;
  bool legacy_;
  void (*log_)(const std::string&);
  mutable std::mutex mu_;
  std::map<std::string, container_reading> readings_;  ///< by ledger path
  std::map<std::string, std::uint64_t> errors_;        ///< by reason
  std::map<std::string, std::string> logged_;          ///< last message logged per path
};

namespace detail {

/// Accumulates one family at a time: "# HELP", "# TYPE", then samples.
class writer {
 public:
  using labels = std::vector<std::pair<std::string, std::string>>;

  void family(std::string_view name, std::string_view type, std::string_view help) {
    gpuslice::metrics::header(out_, name, type, help);
    name_ = name;
  }
  void sample(const labels& l, double v, std::string_view suffix = {}) {
    out_ += name_;
    out_ += suffix;
    if (!l.empty()) {
      out_ += '{';
      for (std::size_t i = 0; i < l.size(); ++i) {
        if (i != 0) out_ += ',';
        out_ += l[i].first + "=\"" + gpuslice::metrics::escape_label(l[i].second) + "\"";
      }
      out_ += '}';
    }
    char buf[64];
    if (v == static_cast<double>(static_cast<long long>(v)) && std::abs(v) < 1e15) {
      std::snprintf(buf, sizeof buf, " %lld\n", static_cast<long long>(v));
    } else {
      std::snprintf(buf, sizeof buf, " %.17g\n", v);
    }
    out_ += buf;
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
  std::string name_;
};

}  // namespace detail

inline std::string exporter::render(const std::map<std::string, pod_name>& pods,
                                    const std::vector<node::gpu_info>* gpus, double now) const {
  detail::writer w;
  using labels = detail::writer::labels;
  struct ctr {
    const container_reading* r;
    std::string ns, pod;
  };
  std::vector<ctr> ctrs;
  for (const auto& [path, r] : readings_) {
    if (r.last_update == 0) continue;  // never read: counted and logged, nothing to show
    const auto p = pods.find(r.uid);
    ctrs.push_back({&r, p != pods.end() ? p->second.name_space : std::string(),
                    p != pods.end() ? p->second.name : r.uid});
  }
  auto dev_labels = [&](const ctr& c, std::size_t i) {
    return labels{{"namespace", c.ns},
                  {"pod", c.pod},
                  {"container", c.r->container},
                  {"vdevice_index", std::to_string(i)},
                  {"device_uuid", c.r->snap.devices[i].uuid},
                  {"node", node_},
                  {"zone", "vGPU"}};
  };
  auto ctr_labels = [&](const ctr& c) {
    return labels{{"namespace", c.ns},
                  {"pod", c.pod},
                  {"container", c.r->container},
                  {"node", node_},
                  {"zone", "vGPU"}};
  };
  auto per_device = [&](std::string_view name, std::string_view type, std::string_view help,
                        auto value) {
    w.family(name, type, help);
    for (const auto& c : ctrs) {
      for (std::size_t i = 0; i < c.r->snap.devices.size(); ++i) {
        w.sample(dev_labels(c, i), value(c, i));
      }
    }
  };
  auto per_ctr = [&](std::string_view name, std::string_view type, std::string_view help,
                     auto value) {
    w.family(name, type, help);
    for (const auto& c : ctrs) w.sample(ctr_labels(c), value(c));
  };

  // HAMi's families.
  per_device("hami_vgpu_memory_used_bytes", "gauge", "vGPU device memory usage in bytes",
             [](const ctr& c, std::size_t i) { return double(c.r->snap.devices[i].used); });
  per_device("hami_vgpu_memory_limit_bytes", "gauge", "vGPU device memory limit in bytes",
             [](const ctr& c, std::size_t i) { return double(c.r->snap.devices[i].limit); });
  per_device("hami_container_device_memory_bytes", "gauge",
             "Container device memory usage in bytes",
             [](const ctr& c, std::size_t i) { return double(c.r->snap.devices[i].used); });
  if (gpus != nullptr) {
    auto host = [&](std::string_view name, std::string_view help, auto value, bool util) {
      w.family(name, "gauge", help);
      for (const auto& g : *gpus) {
        if (util && g.utilization < 0) continue;
        w.sample({{"node", node_},
                  {"device_index", std::to_string(g.index)},
                  {"device_uuid", g.uuid},
                  {"device_type", "NVIDIA-" + g.name},
                  {"zone", "vGPU"}},
                 value(g));
      }
    };
    host(
        "hami_host_gpu_memory_used_bytes", "GPU device memory usage in bytes",
        [](const node::gpu_info& g) { return double(g.memory_used); }, false);
    host(
        "hami_host_gpu_utilization_ratio", "GPU core utilization ratio (0-100)",
        [](const node::gpu_info& g) { return double(g.utilization); }, true);
  }

  // gpuslice's own.
  per_device(
      "gpuslice_vgpu_sm_limit_percent", "gauge",
      "SM share the limiter enforces on the device, percent (0: none set in the ledger)",
      [](const ctr& c, std::size_t i) { return double(c.r->snap.devices[i].sm_limit_percent); });
  // The SM limiter's words, for devices a limited process launched on.
  auto rated = [&](std::string_view name, std::string_view type, std::string_view help,
                   auto value) {
    w.family(name, type, help);
    for (const auto& c : ctrs) {
      const auto& rates = c.r->counters.rates;
      for (std::size_t i = 0; i < c.r->snap.devices.size() && i < rates.size(); ++i) {
        if (!rates[i].ready) continue;
        if (auto v = value(c, i)) w.sample(dev_labels(c, i), *v);
      }
    }
  };
  constexpr double k_ppm = 1e6, k_ns = 1e9;
  rated("gpuslice_vgpu_sm_share_ratio", "gauge",
        "Share of the GPU's time the SM limiter holds the container to (0..1)",
        [&](const ctr& c, std::size_t i) -> std::optional<double> {
          return double(c.r->counters.rates[i].share_ppm) / k_ppm;
        });
  rated("gpuslice_vgpu_gpu_time_seconds_total", "counter",
        "GPU time charged to the container's kernels by the SM limiter",
        [&](const ctr& c, std::size_t i) -> std::optional<double> {
          return double(c.r->counters.rates[i].charged_ns) / k_ns;
        });
  rated("gpuslice_vgpu_throttled_seconds_total", "counter",
        "Wall time the SM limiter held the container's launches back",
        [&](const ctr& c, std::size_t i) -> std::optional<double> {
          return double(c.r->counters.rates[i].waited_ns) / k_ns;
        });
  // GPU time charged per wall second between the last two reads: the achieved share.
  auto achieved = [](const ctr& c, std::size_t i) -> std::optional<double> {
    const auto& prev = c.r->previous.rates;
    const double span = c.r->last_update - c.r->previous_at;
    if (c.r->previous_at <= 0 || span <= 0 || i >= prev.size() || !prev[i].ready) {
      return std::nullopt;
    }
    const auto now_ns = c.r->counters.rates[i].charged_ns;
    if (now_ns < prev[i].charged_ns) return std::nullopt;
    return double(now_ns - prev[i].charged_ns) / k_ns / span;
  };
  rated("gpuslice_vgpu_achieved_share_ratio", "gauge",
        "GPU time charged per wall second between the last two reads of the ledger (0..1)",
        achieved);
  constexpr double k_percent = 100;
  auto achieved_percent = [&](const ctr& c, std::size_t i) -> std::optional<double> {
    auto a = achieved(c, i);
    if (a) *a *= k_percent;
    return a;
  };
  rated("hami_container_device_utilization_ratio", "gauge",
        "Container device SM utilization (0-100): the GPU time the SM limiter charged per wall "
        "second between the last two reads",
        achieved_percent);
  per_ctr("gpuslice_container_processes", "gauge",
          "Live processes charged in the container's ledger",
          [](const ctr& c) { return double(c.r->snap.processes.size()); });
  per_ctr("gpuslice_container_reaps_total", "counter",
          "Reaps of dead processes' charges that reclaimed memory",
          [](const ctr& c) { return double(c.r->counters.reaps); });
  per_ctr("gpuslice_container_reclaimed_bytes_total", "counter",
          "Bytes reclaimed from dead processes",
          [](const ctr& c) { return double(c.r->counters.reclaimed_bytes); });
  per_ctr("gpuslice_container_last_update_timestamp_seconds", "gauge",
          "When the container's ledger was last read successfully (Unix seconds)",
          [](const ctr& c) { return c.r->last_update; });
  per_ctr("gpuslice_container_stale", "gauge",
          "1 when the ledger could not be read at this scrape: values are from the last update",
          [](const ctr& c) { return c.r->stale ? 1.0 : 0.0; });
  w.family("gpuslice_monitor_ledger_errors_total", "counter",
           "Ledger reads that failed and were skipped, by reason");
  for (const auto& [reason, n] : errors_) w.sample({{"reason", reason}}, double(n));
  w.family("gpuslice_monitor_scrape_timestamp_seconds", "gauge", "When this scrape ran");
  w.sample({}, now);

  if (legacy_) {
    auto legacy_dev = [&](std::string_view name, std::string_view help, auto value) {
      w.family(name, "gauge", help);
      for (const auto& c : ctrs) {
        for (std::size_t i = 0; i < c.r->snap.devices.size(); ++i) {
          w.sample({{"podnamespace", c.ns},
                    {"podname", c.pod},
                    {"ctrname", c.r->container},
                    {"vdeviceid", std::to_string(i)},
                    {"deviceuuid", c.r->snap.devices[i].uuid}},
                   value(c, i));
        }
      }
    };
    legacy_dev("vGPU_device_memory_usage_in_bytes", "vGPU device usage",
               [](const ctr& c, std::size_t i) { return double(c.r->snap.devices[i].used); });
    legacy_dev("vGPU_device_memory_limit_in_bytes", "vGPU device limit",
               [](const ctr& c, std::size_t i) { return double(c.r->snap.devices[i].limit); });
    w.family("Device_utilization_desc_of_container", "gauge",
             "Container device utilization description");
    for (const auto& c : ctrs) {
      const auto& rates = c.r->counters.rates;
      for (std::size_t i = 0; i < c.r->snap.devices.size() && i < rates.size(); ++i) {
        if (!rates[i].ready) continue;
        if (auto v = achieved_percent(c, i)) {
          w.sample({{"podnamespace", c.ns},
                    {"podname", c.pod},
                    {"ctrname", c.r->container},
                    {"vdeviceid", std::to_string(i)},
                    {"deviceuuid", c.r->snap.devices[i].uuid}},
                   *v);
        }
      }
    }
    if (gpus != nullptr) {
      auto host = [&](std::string_view name, std::string_view help, auto value, bool util) {
        w.family(name, "gauge", help);
        for (const auto& g : *gpus) {
          if (util && g.utilization < 0) continue;
          w.sample({{"nodeid", node_},
                    {"deviceidx", std::to_string(g.index)},
                    {"deviceuuid", g.uuid},
                    {"devicetype", "NVIDIA-" + g.name}},
                   value(g));
        }
      };
      host(
          "HostGPUMemoryUsage", "GPU device memory usage",
          [](const node::gpu_info& g) { return double(g.memory_used); }, false);
      host(
          "HostCoreUtilization", "GPU core utilization",
          [](const node::gpu_info& g) { return double(g.utilization); }, true);
    }
  }
  return w.take();
}

}  // namespace gpuslice::monitor
