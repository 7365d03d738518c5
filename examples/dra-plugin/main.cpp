/// \file
/// gpuslice-dra-plugin: a Dynamic Resource Allocation kubelet plugin whose GPU shares the shim
/// enforces.
///
/// It registers with kubelet through the plugin registration API (a socket in kubelet's
/// plugins_registry directory), serves the DRA plugin service (v1 and v1beta1) on its own
/// socket, publishes the node's GPUs as ResourceSlice devices with consumable `memory` and
/// `cores` capacity (updated when NVML's view changes, removed when the plugin stops), and
/// prepares a claim's shares as a CDI spec holding the shim's environment contract. What it
/// prepared is checkpointed, so a restarted plugin can unprepare it. The decisions are in
/// driver.hpp; this file is the protocol. See docs/dra.md.

#include <dlfcn.h>
#include <fmt/core.h>
#include <grpcpp/grpcpp.h>
#include <nvml.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "apiserver.hpp"
#include "dra_v1.grpc.pb.h"
#include "dra_v1beta1.grpc.pb.h"
#include "driver.hpp"
#include "node_host.hpp"
#include "nvml.hpp"
#include "registration.grpc.pb.h"

namespace {

namespace dra = gpuslice::dra;
namespace kube = gpuslice::kube;
namespace node_host = gpuslice::node_host;
namespace reg = pluginregistration;
namespace dra_v1 = k8s::io::kubelet::pkg::apis::dra::v1;
namespace dra_v1beta1 = k8s::io::kubelet::pkg::apis::dra::v1beta1;
using namespace std::chrono_literals;

/// The plugin type kubelet's plugin manager hands to its DRA handler.
constexpr const char* k_plugin_type = "DRAPlugin";
/// The services offered, newest first (kubelet picks the first it knows).
constexpr const char* k_service_v1 = "v1.DRAPlugin";
constexpr const char* k_service_v1beta1 = "v1beta1.DRAPlugin";
/// How long a stopping server waits for calls to end.
constexpr auto k_shutdown_grace = 1s;

using node_host::g_stop;
using node_host::nap;

template <class... Args>
void log(fmt::format_string<Args...> f, Args&&... args) {
  fmt::print(stderr, "gpuslice-dra-plugin: {}\n", fmt::format(f, std::forward<Args>(args)...));
}

/// What NVML's device listing leaves out: the driver version and each GPU's compute capability,
/// read through symbols looked up separately (a library without them just leaves them empty).
struct nvml_extras {
  std::string driver_version;
  std::map<std::string, std::string> compute_capability;  ///< by GPU UUID
};

nvml_extras read_extras(const std::string& library, const std::vector<std::string>& uuids) {
  nvml_extras out;
  void* h = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return out;
  using version_fn = decltype(&nvmlSystemGetDriverVersion);
  using by_uuid_fn = decltype(&nvmlDeviceGetHandleByUUID);
  using cc_fn = decltype(&nvmlDeviceGetCudaComputeCapability);
  auto version = reinterpret_cast<version_fn>(dlsym(h, "nvmlSystemGetDriverVersion"));
  auto by_uuid = reinterpret_cast<by_uuid_fn>(dlsym(h, "nvmlDeviceGetHandleByUUID"));
  auto cc = reinterpret_cast<cc_fn>(dlsym(h, "nvmlDeviceGetCudaComputeCapability"));
  char buf[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE] = {};
  if (version != nullptr && version(buf, sizeof buf) == NVML_SUCCESS) out.driver_version = buf;
  if (by_uuid != nullptr && cc != nullptr) {
    for (const auto& u : uuids) {
      nvmlDevice_t d = nullptr;
      int major = 0, minor = 0;
      if (by_uuid(u.c_str(), &d) == NVML_SUCCESS && cc(d, &major, &minor) == NVML_SUCCESS) {
        out.compute_capability[u] = std::to_string(major) + "." + std::to_string(minor);
      }
    }
  }
  dlclose(h);
  return out;
}

/// The devices the driver publishes from NVML's view \p now: each GPU, or under the mixed MIG
/// strategy each MIG device of a GPU in MIG mode.
std::vector<dra::gpu> devices_of(const std::vector<gpuslice::node::gpu_info>& now,
                                 const dra::settings& s, const nvml_extras& x) {
  std::vector<dra::gpu> out;
  for (const auto& g : now) {
    const auto cc = x.compute_capability.find(g.uuid);
    const std::string capability = cc == x.compute_capability.end() ? "" : cc->second;
    if (g.mig_enabled) {
      if (s.mig_strategy != "mixed") continue;
      for (const auto& m : g.migs) {
        dra::gpu d;
        d.name = "gpu-" + std::to_string(g.index) + "-mig-" + std::to_string(m.index);
        d.uuid = m.uuid;
        d.product = g.name;
        d.index = g.index;
        d.memory_total = m.memory_total;
        d.compute_capability = capability;
        d.parent_uuid = g.uuid;
        d.profile = m.profile;
        d.healthy = g.healthy;
        d.why_unhealthy = g.why_unhealthy;
        out.push_back(std::move(d));
      }
      continue;
    }
    if (g.uuid.empty()) continue;  // a GPU that does not even answer its UUID
    dra::gpu d;
    d.name = "gpu-" + std::to_string(g.index);
    d.uuid = g.uuid;
    d.product = g.name;
    d.index = g.index;
    d.memory_total = g.memory_total;
    d.compute_capability = capability;
    d.healthy = g.healthy;
    d.why_unhealthy = g.why_unhealthy;
    out.push_back(std::move(d));
  }
  return out;
}

/// The driver's state: the node's devices and the prepared claims. Thread-safe: one lock.
class driver {
 public:
  driver(dra::settings s, kube::api_client api, dra::checkpoint cp)
      : s_(std::move(s)), api_(std::move(api)), cp_(std::move(cp)) {}

  const dra::settings& settings() const { return s_; }
  const kube::api_client& api() const { return api_; }

  /// Replaces the devices; true when they changed.
  bool set_devices(std::vector<dra::gpu> now) {
    std::lock_guard<std::mutex> lock(mu_);
    auto same = [](const dra::gpu& a, const dra::gpu& b) {
      return a.name == b.name && a.uuid == b.uuid && a.healthy == b.healthy &&
             a.memory_total == b.memory_total && a.compute_capability == b.compute_capability;
    };
    const bool changed =
        now.size() != gpus_.size() || !std::equal(now.begin(), now.end(), gpus_.begin(), same);
    for (const auto& g : now) {
      for (const auto& old : gpus_) {
        if (old.name == g.name && old.healthy != g.healthy) {
          log("device {} ({}) is now {}{}", g.name, g.uuid, g.healthy ? "healthy" : "unhealthy",
              g.healthy ? "" : ": " + g.why_unhealthy);
        }
      }
    }
    gpus_ = std::move(now);
    return changed;
  }

  std::vector<dra::gpu> devices() const {
    std::lock_guard<std::mutex> lock(mu_);
    return gpus_;
  }

  /// Prepares one claim: the devices to answer, or the claim's error.
  struct prepared {
    std::vector<dra::share> shares;
    std::vector<std::string> cdi_ids;
    std::string error;
  };

  prepared prepare(const dra::claim_ref& ref) {
    std::lock_guard<std::mutex> lock(mu_);
    prepared out;
    if (ref.uid.empty() || ref.name.empty() || ref.name_space.empty()) {
      out.error = "claim " + ref.key() + " (uid " + ref.uid +
                  "): kubelet must name the claim's namespace, name and uid";
      return out;
    }
    if (auto it = cp_.find(ref.uid); it != cp_.end()) {  // prepared already (kubelet retries)
      return answer(it->second);
    }
    auto claim = api_.get(dra::claim_path(ref.name_space, ref.name));
    if (!claim) {
      out.error = kube::http_status(claim.err()) == 404
                      ? "claim " + ref.key() + ": not found (deleted after it was allocated?)"
                      : "claim " + ref.key() + ": " + claim.message();
      return out;
    }
    auto shares = dra::claim_shares(*claim, ref, gpus_, s_);
    if (auto* e = std::get_if<std::string>(&shares)) {
      out.error = *e;
      return out;
    }
    dra::prepared_claim c{ref, std::get<std::vector<dra::share>>(shares),
                          dra::cdi_spec_path(s_, ref.uid), dra::ledger_dir(s_, ref.uid)};
    std::optional<std::string> err = node_host::fresh_shared_dir(c.ledger_dir);
    if (!err) err = dra::detail::write_atomically(c.cdi_spec, dra::cdi_spec(c, s_).dump(2));
    if (!err) {
      cp_[ref.uid] = c;
      err = save();
      if (err) cp_.erase(ref.uid);
    }
    if (err) {
      dra::remove_prepared(c);
      out.error = "claim " + ref.key() + ": " + *err;
      return out;
    }
    log("prepared claim {} ({}): {} share(s)", ref.key(), ref.uid, c.shares.size());
    return answer(c);
  }

  /// Unprepares one claim: empty, or the claim's error.
  std::string unprepare(const dra::claim_ref& ref) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = cp_.find(ref.uid);
    if (it == cp_.end()) return {};  // never prepared here, or unprepared already
    if (auto e = dra::remove_prepared(it->second)) return "claim " + ref.key() + ": " + *e;
    const dra::prepared_claim kept = it->second;
    cp_.erase(it);
    if (auto e = save()) {
      cp_[ref.uid] = kept;
      return "claim " + ref.key() + ": " + *e;
    }
    log("unprepared claim {} ({})", ref.key(), ref.uid);
    return {};
  }

 private:
  prepared answer(const dra::prepared_claim& c) const {
    prepared out;
    out.shares = c.shares;
    for (const auto& sh : c.shares) out.cdi_ids.push_back(dra::cdi_id(s_, c.ref.uid, sh));
    return out;
  }

  std::optional<std::string> save() const {
    return dra::detail::write_atomically(s_.plugin_dir + "/checkpoint.json",
                                         dra::encode_checkpoint(cp_, s_));
  }

  const dra::settings s_;
  const kube::api_client api_;
  mutable std::mutex mu_;
  std::vector<dra::gpu> gpus_;
  dra::checkpoint cp_;
};

/// The generated types of one DRA API version, for dra_service.
template <class Service, class PrepareReq, class PrepareResp, class UnprepareReq,
          class UnprepareResp>
struct api_types {
  using DRAPlugin = Service;
  using NodePrepareResourcesRequest = PrepareReq;
  using NodePrepareResourcesResponse = PrepareResp;
  using NodeUnprepareResourcesRequest = UnprepareReq;
  using NodeUnprepareResourcesResponse = UnprepareResp;
};
using api_v1 =
    api_types<dra_v1::DRAPlugin, dra_v1::NodePrepareResourcesRequest,
              dra_v1::NodePrepareResourcesResponse, dra_v1::NodeUnprepareResourcesRequest,
              dra_v1::NodeUnprepareResourcesResponse>;
using api_v1beta1 =
    api_types<dra_v1beta1::DRAPlugin, dra_v1beta1::NodePrepareResourcesRequest,
              dra_v1beta1::NodePrepareResourcesResponse, dra_v1beta1::NodeUnprepareResourcesRequest,
              dra_v1beta1::NodeUnprepareResourcesResponse>;

/// The DRA service of one API version (v1 and v1beta1 carry the same messages).
template <class Api>
class dra_service final : public Api::DRAPlugin::Service {
 public:
  explicit dra_service(driver& d) : d_(d) {}

  grpc::Status NodePrepareResources(grpc::ServerContext*,
                                    const typename Api::NodePrepareResourcesRequest* req,
                                    typename Api::NodePrepareResourcesResponse* out) override {
    for (const auto& c : req->claims()) {
      const dra::claim_ref ref{c.namespace_(), c.uid(), c.name()};
      auto p = d_.prepare(ref);
      auto& r = (*out->mutable_claims())[c.uid()];
      if (!p.error.empty()) {
        log("prepare: {}", p.error);
        r.set_error(p.error);
        continue;
      }
      for (std::size_t i = 0; i < p.shares.size(); ++i) {
        auto* dev = r.add_devices();
        if (!p.shares[i].request.empty()) dev->add_request_names(p.shares[i].request);
        dev->set_pool_name(p.shares[i].pool);
        dev->set_device_name(p.shares[i].device);
        dev->add_cdi_device_ids(p.cdi_ids[i]);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status NodeUnprepareResources(grpc::ServerContext*,
                                      const typename Api::NodeUnprepareResourcesRequest* req,
                                      typename Api::NodeUnprepareResourcesResponse* out) override {
    for (const auto& c : req->claims()) {
      const std::string e = d_.unprepare({c.namespace_(), c.uid(), c.name()});
      auto& r = (*out->mutable_claims())[c.uid()];
      if (!e.empty()) {
        log("unprepare: {}", e);
        r.set_error(e);
      }
    }
    return grpc::Status::OK;
  }

 private:
  driver& d_;
};

/// kubelet's plugin registration service.
class registration_service final : public reg::Registration::Service {
 public:
  registration_service(std::string name, std::string endpoint)
      : name_(std::move(name)), endpoint_(std::move(endpoint)) {}

  grpc::Status GetInfo(grpc::ServerContext*, const reg::InfoRequest*,
                       reg::PluginInfo* out) override {
    out->set_type(k_plugin_type);
    out->set_name(name_);
    out->set_endpoint(endpoint_);
    out->add_supported_versions(k_service_v1);
    out->add_supported_versions(k_service_v1beta1);
    return grpc::Status::OK;
  }

  grpc::Status NotifyRegistrationStatus(grpc::ServerContext*, const reg::RegistrationStatus* st,
                                        reg::RegistrationStatusResponse*) override {
    if (st->plugin_registered()) {
      log("registered with kubelet as {}", name_);
    } else {
      log("kubelet refused the registration: {}", st->error());
    }
    return grpc::Status::OK;
  }

 private:
  std::string name_;
  std::string endpoint_;
};

/// The inode of \p path, or 0 when it does not exist.
ino_t inode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

/// A gRPC server on a unix socket, with the socket's inode (to notice it was removed).
struct served {
  std::unique_ptr<grpc::Server> server;
  ino_t inode = 0;
  std::string path;

  void stop() {
    if (server == nullptr) return;
    server->Shutdown(std::chrono::system_clock::now() + k_shutdown_grace);
    server->Wait();
    server.reset();
  }
};

/// Serves \p services on \p path (a stale socket file is replaced).
std::optional<served> serve(const std::string& path, const std::vector<grpc::Service*>& services) {
  ::unlink(path.c_str());
  grpc::ServerBuilder b;
  b.AddListeningPort("unix://" + path, grpc::InsecureServerCredentials());
  for (auto* s : services) b.RegisterService(s);
  served out;
  out.server = b.BuildAndStart();
  if (out.server == nullptr) {
    log("cannot serve on {}", path);
    return std::nullopt;
  }
  out.inode = inode_of(path);
  out.path = path;
  return out;
}

/// The spec of a slice without its pool's generation (which moves on every publication).
kube::json spec_sans_generation(kube::json spec) {
  if (spec.is_object() && spec.contains("pool") && spec["pool"].is_object()) {
    spec["pool"].erase("generation");
  }
  return spec;
}

/// Keeps the node's ResourceSlices as the devices say. Not thread-safe: one thread calls it.
class slice_publisher {
 public:
  slice_publisher(driver& d, std::string driver_version)
      : d_(d), driver_version_(std::move(driver_version)) {}

  /// Brings the slices in line with the devices; false (after a log line on a new error) when
  /// the API server did not take it all (the next round tries again).
  bool publish() {
    const auto& s = d_.settings();
    const std::string selector = "spec.nodeName=" + s.node_name + ",spec.driver=" + s.driver;
    auto existing = d_.api().list(dra::slices_path(), {"", selector, ""});
    if (!existing) return failed(existing.message());
    if (!owner_) {
      if (auto node = d_.api().get(kube::node_path(s.node_name))) {
        if (const auto* meta = kube::detail::member(*node, "metadata")) owner_ = *meta;
      }
    }
    const kube::json* owner = owner_ ? &*owner_ : nullptr;
    auto wanted = dra::resource_slices(d_.devices(), s, driver_version_, 0, owner);
    std::map<std::string, kube::json> have;
    std::int64_t generation = generation_;
    for (const auto& o : existing->items) {
      have[kube::detail::string_at(o["metadata"], "name")] = o;
      const auto& pool = o["spec"]["pool"];
      if (pool.is_object() && pool["generation"].is_number_integer()) {
        generation = std::max(generation, pool["generation"].get<std::int64_t>());
      }
    }
    bool same = have.size() == wanted.size();
    for (const auto& w : wanted) {
      const auto it = have.find(w["metadata"]["name"].get<std::string>());
      same = same && it != have.end() &&
             spec_sans_generation(it->second["spec"]) == spec_sans_generation(w["spec"]);
    }
    if (same) {
      generation_ = generation;
      return ok();
    }
    generation_ = generation + 1;
    wanted = dra::resource_slices(d_.devices(), s, driver_version_, generation_, owner);
    for (auto& w : wanted) {
      const std::string name = w["metadata"]["name"].get<std::string>();
      const auto it = have.find(name);
      if (it == have.end()) {
        auto r = d_.api().post(dra::slices_path(), w);
        if (!r) return failed(r.message());
      } else {
        w["metadata"]["resourceVersion"] = it->second["metadata"]["resourceVersion"];
        auto r =
            d_.api().request("PUT", dra::slices_path() + "/" + name, w.dump(), "application/json");
        if (!r) return failed(r.message());
        have.erase(it);
      }
    }
    for (const auto& [name, o] : have) {
      auto r = d_.api().request("DELETE", dra::slices_path() + "/" + name, {}, {});
      if (!r && kube::http_status(r.err()) != 404) return failed(r.message());
    }
    log("published {} device(s) in {} ResourceSlice(s), pool {} generation {}",
        wanted.empty() ? 0 : count_devices(wanted), wanted.size(), s.node_name, generation_);
    return ok();
  }

  /// Deletes the node's slices of this driver (the plugin is going away).
  void withdraw() {
    const auto& s = d_.settings();
    auto existing = d_.api().list(
        dra::slices_path(), {"", "spec.nodeName=" + s.node_name + ",spec.driver=" + s.driver, ""});
    if (!existing) {
      log("cannot remove the ResourceSlices: {}", existing.message());
      return;
    }
    for (const auto& o : existing->items) {
      const std::string name = kube::detail::string_at(o["metadata"], "name");
      auto r = d_.api().request("DELETE", dra::slices_path() + "/" + name, {}, {});
      if (!r && kube::http_status(r.err()) != 404) log("cannot remove {}: {}", name, r.message());
    }
    log("removed {} ResourceSlice(s)", existing->items.size());
  }

 private:
  static std::size_t count_devices(const std::vector<kube::json>& slices) {
    std::size_t n = 0;
    for (const auto& sl : slices) n += sl["spec"]["devices"].size();
    return n;
  }
  bool failed(const std::string& why) {
    if (why != last_error_) log("ResourceSlices: {}; retrying", why);
    last_error_ = why;
    return false;
  }
  bool ok() {
    last_error_.clear();
    return true;
  }

  driver& d_;
  std::string driver_version_;
  std::optional<kube::json> owner_;
  std::int64_t generation_ = 0;
  std::string last_error_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      fmt::print("{}", dra::usage());
      return 0;
    }
  }
  auto parsed = dra::parse_settings(args, std::getenv("NODE_NAME"));
  if (!parsed) {
    log("{}", parsed.message());
    return 2;
  }
  const dra::settings s = *parsed;
  auto api_cfg =
      s.api_server.empty() ? kube::in_cluster_config() : kube::config_from_url(s.api_server);
  if (!api_cfg) {
    log("{}", api_cfg.message());
    return 2;
  }
  std::error_code ec;
  for (const auto& dir : {s.plugin_dir, s.registry_dir, s.cdi_dir, s.host_hook_path + "/region",
                          s.host_hook_path + "/containers"}) {
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      log("{}: {}", dir, ec.message());
      return 1;
    }
  }
  // The checkpoint of a previous run: what it prepared must stay known, to be unprepared.
  const std::string cp_path = s.plugin_dir + "/checkpoint.json";
  dra::checkpoint cp;
  if (std::filesystem::exists(cp_path)) {
    std::ifstream in(cp_path);
    std::stringstream text;
    text << in.rdbuf();
    auto decoded = dra::decode_checkpoint(text.str(), cp_path, s);
    if (!decoded) {
      log("{}", decoded.message());
      return 1;
    }
    cp = std::move(*decoded);
    log("checkpoint {}: {} prepared claim(s)", cp_path, cp.size());
  }
  auto nv = gpuslice::node::nvml::load(s.nvml_library);
  if (!nv) {
    log("{}", nv.message());
    return 1;
  }
  auto listed = (*nv)->gpus();
  if (!listed) {
    log("{}", listed.message());
    return 1;
  }
  std::vector<std::string> uuids;
  for (const auto& g : *listed) uuids.push_back(g.uuid);
  const nvml_extras extras = read_extras(s.nvml_library, uuids);
  if (auto e = node_host::write_preload(s.host_hook_path, s.container_hook_path)) {
    log("{}", *e);
    return 1;
  }
  if (auto w = node_host::missing_shim(s.host_hook_path)) log("{}", *w);
  node_host::install_stop_signals();

  driver d(s, kube::api_client(*api_cfg), std::move(cp));
  d.set_devices(devices_of(*listed, s, extras));
  log("driver {} on node {}: {} device(s)", s.driver, s.node_name, d.devices().size());

  std::atomic<bool> changed{true};
  std::thread health([&] {
    while (!g_stop.load()) {
      nap(std::chrono::milliseconds(s.health_interval_ms));
      if (auto now = (*nv)->gpus()) {
        if (d.set_devices(devices_of(*now, s, extras))) changed.store(true);
      }
    }
  });
  slice_publisher publisher(d, extras.driver_version);
  std::thread slices([&] {
    const std::chrono::milliseconds resync(s.resync_interval_ms);
    const std::chrono::milliseconds first_retry(s.watch_interval_ms);
    std::chrono::milliseconds retry = first_retry;
    auto next = std::chrono::steady_clock::now();
    while (!g_stop.load()) {
      if (changed.exchange(false) || std::chrono::steady_clock::now() >= next) {
        if (publisher.publish()) {
          retry = first_retry;
          next = std::chrono::steady_clock::now() + resync;
        } else {
          // A refusal that lasts (RBAC, an API server down) is retried less and less often.
          next = std::chrono::steady_clock::now() + retry;
          retry = std::min(retry * 2, resync);
        }
      }
      nap(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(s.resync_interval_ms),
                                              std::chrono::milliseconds(s.watch_interval_ms)));
    }
  });

  // The kubelet side: the DRA service, then the registration socket (kubelet dials the
  // endpoint as soon as it sees the registration). Either socket, removed, is served again:
  // kubelet finds a new registration socket and registers the plugin anew.
  dra_service<api_v1> v1(d);
  dra_service<api_v1beta1> v1beta1(d);
  const std::string dra_sock = s.plugin_dir + "/dra.sock";
  const std::string reg_sock = s.registry_dir + "/" + s.driver + "-reg.sock";
  registration_service registration(s.driver, dra_sock);
  std::optional<served> dra_srv, reg_srv;
  while (!g_stop.load()) {
    if (dra_srv && inode_of(dra_sock) != dra_srv->inode) {
      log("{} was removed: serving it again", dra_sock);
      dra_srv->stop();
      dra_srv.reset();
    }
    if (!dra_srv) dra_srv = serve(dra_sock, {&v1, &v1beta1});
    if (reg_srv && inode_of(reg_sock) != reg_srv->inode) {
      log("{} was removed: registering again", reg_sock);
      reg_srv->stop();
      reg_srv.reset();
    }
    if (dra_srv && !reg_srv) reg_srv = serve(reg_sock, {&registration});
    nap(std::chrono::milliseconds(s.watch_interval_ms));
  }
  log("stopping");
  // The registration goes first, so kubelet stops sending claims before the service ends.
  if (reg_srv) reg_srv->stop();
  ::unlink(reg_sock.c_str());
  if (dra_srv) dra_srv->stop();
  ::unlink(dra_sock.c_str());
  health.join();
  slices.join();
  publisher.withdraw();
  return 0;
}
