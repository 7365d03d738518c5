/// \file
/// gpuslice's kubelet device plugin (device plugin API v1beta1, gRPC on unix sockets).
///
/// It advertises deviceSplitCount virtual devices per GPU under the resource name, keeps their
/// health from NVML (a periodic probe, and XID events where NVML has them), registers the
/// node's GPUs in HAMi's `hami.io/node-nvidia-register` annotation (written only when it
/// changes), and answers Allocate with HAMi's environment contract for the pod the scheduler
/// bound to this node. It registers with kubelet again whenever kubelet's socket is recreated
/// (a kubelet restart removes every plugin's registration). The decisions are in plugin.hpp;
/// this file is the protocol. See examples/README.md.

#include <fmt/core.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api.grpc.pb.h"
#include "node_host.hpp"
#include "nvml.hpp"
#include "plugin.hpp"

namespace {

namespace dp = gpuslice::device_plugin;
namespace kube = gpuslice::kube;
namespace node_host = gpuslice::node_host;
using namespace std::chrono_literals;

/// The API version this plugin speaks.
constexpr const char* k_api_version = "v1beta1";
/// How long a call to kubelet's Register may take.
constexpr auto k_register_deadline = 5s;
/// How often a ListAndWatch stream checks for a cancelled call or a stopping server.
constexpr auto k_stream_poll = 100ms;
/// How long a stopping server waits for streams to end before cancelling them.
constexpr auto k_shutdown_grace = 1s;
/// Releasing HAMi's node lock: attempts, and the first pause between them (doubling), as
/// HAMi's nodelock package retries.
constexpr int k_lock_attempts = 5;
constexpr auto k_lock_retry_first = 100ms;
/// How long one NVML event wait blocks (bounds how fast the XID thread notices a stop).
constexpr unsigned k_xid_wait_ms = 200;

using node_host::g_stop;
using node_host::nap;

template <class... Args>
void log(fmt::format_string<Args...> f, Args&&... args) {
  fmt::print(stderr, "gpuslice-device-plugin: {}\n", fmt::format(f, std::forward<Args>(args)...));
}

/// The node's GPUs and their health; a generation number moves on every change. Thread-safe.
class node_state {
 public:
  explicit node_state(std::vector<dp::gpu> gpus) : gpus_(std::move(gpus)) {}

  std::vector<dp::gpu> snapshot(std::uint64_t* generation = nullptr) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (generation != nullptr) *generation = generation_;
    return gpus_;
  }

  /// Applies NVML's view \p now (by index; a GPU NVML no longer lists is unhealthy). True when
  /// any health changed.
  bool update(const std::vector<gpuslice::node::gpu_info>& now) {
    std::lock_guard<std::mutex> lock(mu_);
    bool changed = false;
    for (auto& g : gpus_) {
      bool healthy = false;
      std::string why = "not reported by NVML";
      for (const auto& n : now) {
        if (n.index != g.index) continue;
        healthy = n.healthy && (n.uuid.empty() || n.uuid == g.uuid);
        why = n.healthy ? (healthy ? "" : "index now has " + n.uuid) : n.why_unhealthy;
      }
      if (healthy != g.healthy || why != g.why_unhealthy) {
        if (healthy != g.healthy) {
          log("GPU {} ({}) is now {}{}", g.index, g.uuid, healthy ? "healthy" : "unhealthy",
              healthy ? "" : ": " + why);
          changed = true;
        }
        g.healthy = healthy;
        g.why_unhealthy = why;
      }
    }
    if (changed) {
      ++generation_;
      cv_.notify_all();
    }
    return changed;
  }

  /// Waits until the generation differs from \p seen or \p d passes.
  void wait_change(std::uint64_t seen, std::chrono::milliseconds d) const {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, d, [&] { return generation_ != seen; });
  }

  /// Wakes waiters (on stop).
  void poke() { cv_.notify_all(); }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<dp::gpu> gpus_;
  std::uint64_t generation_ = 0;
};

/// Everything the services share.
struct core {
  dp::settings settings;
  kube::api_client api;
  node_state state;
  std::mutex allocate_mu;  ///< Allocate consumes the node-wide pending pod: one at a time
};

/// The ListAndWatch reply of resource \p res for \p gpus: the shared GPUs' virtual devices, or
/// the MIG devices of one profile (healthy when their GPU is).
v1beta1::ListAndWatchResponse device_list(const dp::resource& res, const std::vector<dp::gpu>& gpus,
                                          const dp::settings& s) {
  v1beta1::ListAndWatchResponse r;
  for (const auto& g : gpus) {
    if (!res.profile.empty()) {
      for (const auto& m : g.migs) {
        if (!g.mig_enabled || m.profile != res.profile) continue;
        auto* d = r.add_devices();
        d->set_id(m.uuid);
        d->set_health(g.healthy ? "Healthy" : "Unhealthy");
        d->mutable_topology()->add_nodes()->set_id(g.numa);
      }
      continue;
    }
    if (!dp::shared_gpu(g, s)) continue;
    for (const auto& id : dp::virtual_ids(g, s.device_split_count)) {
      auto* d = r.add_devices();
      d->set_id(id);
      d->set_health(g.healthy ? "Healthy" : "Unhealthy");
      // Only on request, as in HAMi: with the GPU's NUMA node reported, a TopologyManager
      // policy of restricted or single-numa-node rejects pods whose CPUs sit elsewhere.
      if (s.enable_numa_topology) d->mutable_topology()->add_nodes()->set_id(g.numa);
    }
  }
  return r;
}

class plugin_service final : public v1beta1::DevicePlugin::Service {
 public:
  plugin_service(core& c, dp::resource r) : c_(c), res_(std::move(r)) {}

  /// Ends the ListAndWatch streams (the server is being replaced or stopped).
  void stop() {
    stopping_.store(true);
    c_.state.poke();
  }

  grpc::Status GetDevicePluginOptions(grpc::ServerContext*, const v1beta1::Empty*,
                                      v1beta1::DevicePluginOptions* out) override {
    out->set_pre_start_required(false);
    out->set_get_preferred_allocation_available(true);
    return grpc::Status::OK;
  }

  grpc::Status ListAndWatch(grpc::ServerContext* ctx, const v1beta1::Empty*,
                            grpc::ServerWriter<v1beta1::ListAndWatchResponse>* w) override {
    std::uint64_t sent = 0;
    auto gpus = c_.state.snapshot(&sent);
    if (!w->Write(device_list(res_, gpus, c_.settings))) return grpc::Status::OK;
    while (!stopping_.load() && !g_stop.load() && !ctx->IsCancelled()) {
      c_.state.wait_change(sent, k_stream_poll);
      std::uint64_t now = 0;
      gpus = c_.state.snapshot(&now);
      if (now == sent) continue;
      sent = now;
      if (!w->Write(device_list(res_, gpus, c_.settings))) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status GetPreferredAllocation(grpc::ServerContext*,
                                      const v1beta1::PreferredAllocationRequest* req,
                                      v1beta1::PreferredAllocationResponse* out) override {
    // Prefer the virtual devices of the GPUs the scheduler chose for the next containers, so
    // kubelet's accounting follows the scheduler's; any other choice still works (Allocate
    // grants the annotated GPUs whatever IDs kubelet picked).
    std::vector<std::vector<std::string>> wanted;
    if (!res_.profile.empty()) {
      // MIG devices are whole: any of the profile will do.
    } else if (auto pods = c_.api.list(kube::pods_path(),
                                       {"", "spec.nodeName=" + c_.settings.node_name, ""})) {
      auto p = dp::pending_pod(pods->items, c_.settings.node_name);
      if (const auto* pod = std::get_if<kube::json>(&p)) {
        const auto* todo = kube::detail::annotation(*pod, kube::k_devices_to_allocate);
        if (todo != nullptr && todo->is_string()) {
          if (auto d = gpuslice::fit::decode_pod_devices(todo->get_ref<const std::string&>())) {
            for (const auto& ctr : *d) {
              if (ctr.empty()) continue;
              wanted.emplace_back();
              for (const auto& dev : ctr) wanted.back().push_back(dev.uuid);
            }
          }
        }
      }
    }
    std::size_t next = 0;
    for (const auto& cr : req->container_requests()) {
      auto* resp = out->add_container_responses();
      std::set<std::string> chosen(cr.must_include_deviceids().begin(),
                                   cr.must_include_deviceids().end());
      const auto size = static_cast<std::size_t>(std::max(0, cr.allocation_size()));
      if (next < wanted.size()) {
        for (const auto& uuid : wanted[next]) {
          for (const auto& id : cr.available_deviceids()) {
            if (chosen.size() >= size) break;
            if (dp::uuid_of_virtual(id) == uuid && chosen.count(id) == 0) {
              chosen.insert(id);
              break;
            }
          }
        }
        ++next;
      }
      for (const auto& id : cr.available_deviceids()) {
        if (chosen.size() >= size) break;
        chosen.insert(id);
      }
      for (const auto& id : chosen) resp->add_deviceids(id);
    }
    return grpc::Status::OK;
  }

  grpc::Status Allocate(grpc::ServerContext*, const v1beta1::AllocateRequest* req,
                        v1beta1::AllocateResponse* out) override {
    if (!res_.profile.empty()) return allocate_mig(*req, out);
    std::lock_guard<std::mutex> lock(c_.allocate_mu);
    std::vector<std::vector<std::string>> requests;
    for (const auto& cr : req->container_requests()) {
      requests.emplace_back(cr.devices_ids().begin(), cr.devices_ids().end());
    }
    constexpr int k_attempts = 2;  // a 409 (the pod changed meanwhile) is retried once
    for (int attempt = 0; attempt < k_attempts; ++attempt) {
      auto pods =
          c_.api.list(kube::pods_path(), {"", "spec.nodeName=" + c_.settings.node_name, ""});
      if (!pods) return refuse(grpc::StatusCode::UNAVAILABLE, pods.message());
      auto pending = dp::pending_pod(pods->items, c_.settings.node_name);
      if (auto* e = std::get_if<dp::allocate_error>(&pending)) {
        return refuse(grpc::StatusCode::FAILED_PRECONDITION, e->message);
      }
      const auto& pod = std::get<kube::json>(pending);
      const auto ref = kube::pod_identity(pod);
      auto planned = dp::plan_allocation(pod, requests, c_.state.snapshot(), c_.settings);
      if (auto* e = std::get_if<dp::allocate_error>(&planned)) {
        mark_failed(ref, e->message);
        return refuse(grpc::StatusCode::INVALID_ARGUMENT, e->message);
      }
      auto& plan = std::get<dp::allocation_plan>(planned);
      for (const auto& g : plan.grants) {
        if (auto e = node_host::fresh_shared_dir(g.cache_dir)) {
          const std::string m = "pod " + ref.key() + ": cache directory " + *e;
          mark_failed(ref, m);
          return refuse(grpc::StatusCode::INTERNAL, m);
        }
      }
      auto patched =
          c_.api.merge_patch(kube::pod_path(ref.name_space, ref.name), dp::plan_patch(plan));
      if (!patched) {
        if (kube::http_status(patched.err()) == 409 && attempt + 1 < k_attempts) continue;
        return refuse(grpc::StatusCode::UNAVAILABLE, patched.message());
      }
      for (const auto& g : plan.grants) {
        auto* r = out->add_container_responses();
        for (const auto& [k, v] : g.envs) (*r->mutable_envs())[k] = v;
        for (const auto& m : g.mounts) {
          auto* mt = r->add_mounts();
          mt->set_container_path(m.container_path);
          mt->set_host_path(m.host_path);
          mt->set_read_only(m.read_only);
        }
      }
      log("allocated {} container(s) of pod {}{}", plan.grants.size(), ref.key(),
          plan.done ? " (bind-phase=success)" : "");
      if (plan.done) release_node_lock(ref);
      return grpc::Status::OK;
    }
    return refuse(grpc::StatusCode::ABORTED, "the pod kept changing; kubelet will retry");
  }

  grpc::Status PreStartContainer(grpc::ServerContext*, const v1beta1::PreStartContainerRequest*,
                                 v1beta1::PreStartContainerResponse*) override {
    return grpc::Status::OK;
  }

 private:
  /// A MIG resource: the devices kubelet chose, whole, made visible by UUID (NVIDIA's contract;
  /// HAMi's scheduler annotations do not cover them).
  grpc::Status allocate_mig(const v1beta1::AllocateRequest& req, v1beta1::AllocateResponse* out) {
    const auto gpus = c_.state.snapshot();
    for (const auto& cr : req.container_requests()) {
      std::string visible;
      for (const auto& id : cr.devices_ids()) {
        const dp::gpu* parent = nullptr;
        for (const auto& g : gpus) {
          for (const auto& m : g.migs) {
            if (g.mig_enabled && m.uuid == id && m.profile == res_.profile) parent = &g;
          }
        }
        if (parent == nullptr) {
          return refuse(grpc::StatusCode::INVALID_ARGUMENT, "device " + id + " is not a " +
                                                                res_.name + " device of node " +
                                                                c_.settings.node_name);
        }
        if (!parent->healthy) {
          return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                        "device " + id + " is on unhealthy GPU " + parent->uuid + " (" +
                            parent->why_unhealthy + ")");
        }
        visible += (visible.empty() ? "" : ",") + id;
      }
      (*out->add_container_responses()->mutable_envs())["NVIDIA_VISIBLE_DEVICES"] = visible;
    }
    return grpc::Status::OK;
  }

  static grpc::Status refuse(grpc::StatusCode code, const std::string& message) {
    log("Allocate refused: {}", message);
    return {code, message};
  }

  void mark_failed(const kube::pod_ref& ref, const std::string& reason) {
    auto r =
        c_.api.merge_patch(kube::pod_path(ref.name_space, ref.name), dp::failure_patch(reason));
    if (!r) log("cannot mark pod {} failed: {}", ref.key(), r.message());
    release_node_lock(ref);
  }

  /// Releases HAMi's node lock held for \p ref once its allocation ended (HAMi's scheduler
  /// places nothing else on the node while it is held), retrying as HAMi does.
  void release_node_lock(const kube::pod_ref& ref) {
    const std::string path = kube::node_path(c_.settings.node_name);
    auto wait = k_lock_retry_first;
    std::string last;
    for (int attempt = 0; attempt < k_lock_attempts; ++attempt) {
      if (attempt != 0) {
        std::this_thread::sleep_for(wait);
        wait *= 2;
      }
      auto node = c_.api.get(path);
      if (!node) {
        last = node.message();
        continue;
      }
      auto patch = dp::node_lock_release_patch(*node, ref);
      if (!patch) return;  // no lock, or another pod's
      auto r = c_.api.merge_patch(path, *patch);
      if (r) {
        log("released node lock {} of pod {}", dp::k_node_lock, ref.key());
        return;
      }
      last = r.message();
    }
    log("cannot release node lock {} of pod {} on node {}: {}", dp::k_node_lock, ref.key(),
        c_.settings.node_name, last);
  }

  core& c_;
  dp::resource res_;
  std::atomic<bool> stopping_{false};
};

/// The inode of \p path, or 0 when it does not exist.
ino_t inode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

/// One generation of the plugin's gRPC server, with its socket.
struct server_instance {
  std::unique_ptr<plugin_service> service;
  std::unique_ptr<grpc::Server> server;
  ino_t socket_inode = 0;

  void stop() {
    if (server == nullptr) return;
    service->stop();
    server->Shutdown(std::chrono::system_clock::now() + k_shutdown_grace);
    server->Wait();
    server.reset();
    service.reset();
  }
};

/// Starts a server for \p res on its socket (replacing a stale socket file).
std::optional<server_instance> start_server(core& c, const dp::resource& res) {
  const std::string path = c.settings.kubelet_dir + "/" + res.socket;
  ::unlink(path.c_str());
  server_instance s;
  s.service = std::make_unique<plugin_service>(c, res);
  grpc::ServerBuilder b;
  b.AddListeningPort("unix://" + path, grpc::InsecureServerCredentials());
  b.RegisterService(s.service.get());
  s.server = b.BuildAndStart();
  if (s.server == nullptr) {
    log("cannot serve on {}", path);
    return std::nullopt;
  }
  s.socket_inode = inode_of(path);
  return s;
}

/// Registers \p res with kubelet; an error message, or empty on success.
std::string register_with_kubelet(const dp::settings& s, const dp::resource& res) {
  auto channel = grpc::CreateChannel("unix://" + s.kubelet_dir + "/kubelet.sock",
                                     grpc::InsecureChannelCredentials());
  auto stub = v1beta1::Registration::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + k_register_deadline);
  ctx.set_wait_for_ready(false);
  v1beta1::RegisterRequest req;
  req.set_version(k_api_version);
  req.set_endpoint(res.socket);
  req.set_resource_name(res.name);
  req.mutable_options()->set_pre_start_required(false);
  req.mutable_options()->set_get_preferred_allocation_available(true);
  v1beta1::Empty reply;
  const grpc::Status st = stub->Register(&ctx, req, &reply);
  if (!st.ok())
    return st.error_message().empty() ? "status " + std::to_string(st.error_code())
                                      : st.error_message();
  return {};
}

/// Writes the registration annotation when it differs from the node's; true when written.
void register_node(core& c, std::string& last_error) {
  const auto gpus = c.state.snapshot();
  std::vector<dp::gpu> listed(gpus.begin(), gpus.end());
  const auto encoded_or =
      dp::encode_registration(dp::registered_devices(listed, c.settings), c.settings);
  std::string err;
  if (!encoded_or) {
    err = encoded_or.message();
    if (err != last_error) log("node registration: {}", err);
    last_error = err;
    return;
  }
  const std::string& encoded = *encoded_or;
  auto node = c.api.get(kube::node_path(c.settings.node_name));
  if (!node) {
    err = node.message();
  } else if (auto patch = dp::registration_patch(*node, encoded, std::time(nullptr))) {
    auto r = c.api.merge_patch(kube::node_path(c.settings.node_name), *patch);
    if (!r) {
      err = r.message();
    } else {
      log("registered {} GPU(s) on node {}", gpus.size(), c.settings.node_name);
    }
  }
  if (err != last_error && !err.empty()) log("node registration: {}", err);
  last_error = err;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      fmt::print("{}", dp::usage());
      return 0;
    }
  }
  std::vector<std::string> ignored;
  auto parsed = dp::parse_settings(args, ignored);
  if (!parsed) {
    log("{}", parsed.message());
    return 2;
  }
  const dp::settings s = *parsed;
  for (const auto& k : ignored) log("config key {} is not a device plugin setting; ignored", k);
  auto api_cfg =
      s.api_server.empty() ? kube::in_cluster_config() : kube::config_from_url(s.api_server);
  if (!api_cfg) {
    log("{}", api_cfg.message());
    return 2;
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
  std::vector<dp::gpu> gpus;
  for (const auto& g : *listed) {
    if (g.uuid.empty()) {
      log("GPU {} has no UUID ({}); not advertised", g.index, g.why_unhealthy);
      continue;
    }
    if (dp::filtered_out(s, g.index, g.uuid)) {
      log("GPU {} ({}) is in this node's filterdevices; not advertised", g.index, g.uuid);
      continue;
    }
    dp::gpu x{g.index,         g.uuid,        g.name, g.memory_total, g.numa, g.healthy,
              g.why_unhealthy, g.mig_enabled, {}};
    for (const auto& m : g.migs) x.migs.push_back({m.uuid, m.profile});
    gpus.push_back(std::move(x));
  }
  if (gpus.empty()) {
    log("NVML lists no GPU on this node; nothing to advertise");
    return 1;
  }
  // The host side of the mounts: the node region directory and ld.so.preload naming the shim.
  std::error_code ec;
  std::filesystem::create_directories(s.host_hook_path + "/region", ec);
  std::filesystem::create_directories(s.host_hook_path + "/containers", ec);
  if (auto e = node_host::write_preload(s.host_hook_path, s.container_hook_path)) {
    log("{}", *e);
    return 1;
  }
  if (auto w = node_host::missing_shim(s.host_hook_path)) log("{}", *w);
  node_host::install_stop_signals();

  const std::vector<dp::resource> served = dp::resources(gpus, s);
  core c{s, kube::api_client(*api_cfg), node_state(std::move(gpus)), {}};
  log("{} GPU(s), {} devices each, resource {}, node {}", c.state.snapshot().size(),
      s.device_split_count, s.resource_name, s.node_name);
  for (const auto& r : served) {
    if (!r.profile.empty()) log("MIG profile {} served as {}", r.profile, r.name);
  }

  std::atomic<bool> reregister{true};
  std::thread health([&] {
    while (!g_stop.load()) {
      if (auto now = (*nv)->gpus()) {
        if (c.state.update(*now)) reregister.store(true);
      }
      nap(std::chrono::milliseconds(s.health_interval_ms));
    }
  });
  std::thread xid([&] {
    while (!g_stop.load()) {
      if (!(*nv)->has_events()) {
        nap(std::chrono::milliseconds(s.health_interval_ms));
        continue;
      }
      if ((*nv)->wait_xid(k_xid_wait_ms)) {
        if (auto now = (*nv)->gpus()) {
          if (c.state.update(*now)) reregister.store(true);
        }
      }
    }
  });
  std::thread registrar([&] {
    std::string last_error;
    auto next = std::chrono::steady_clock::now();
    while (!g_stop.load()) {
      if (reregister.exchange(false) || std::chrono::steady_clock::now() >= next) {
        register_node(c, last_error);
        next = std::chrono::steady_clock::now() + std::chrono::milliseconds(s.register_interval_ms);
      }
      nap(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(s.register_interval_ms),
                                              50ms));
    }
  });

  // The kubelet side, per resource: serve, register, and start over whenever kubelet's socket
  // is recreated (kubelet restarted) or ours was removed (kubelet cleans its directory when it
  // starts).
  const std::string kubelet_sock = s.kubelet_dir + "/kubelet.sock";
  struct endpoint {
    dp::resource res;
    std::optional<server_instance> srv;
    ino_t registered_with = 0;
    std::string last_error;
  };
  std::vector<endpoint> endpoints;
  for (const auto& r : served) endpoints.push_back({r, std::nullopt, 0, {}});
  while (!g_stop.load()) {
    const ino_t kubelet_now = inode_of(kubelet_sock);
    for (auto& e : endpoints) {
      const std::string own_sock = s.kubelet_dir + "/" + e.res.socket;
      const bool ours_gone = e.srv && inode_of(own_sock) != e.srv->socket_inode;
      if (ours_gone || (e.registered_with != 0 && kubelet_now != e.registered_with)) {
        log("{}: kubelet restarted or our socket was removed: serving and registering again",
            e.res.name);
        if (e.srv) e.srv->stop();
        e.srv.reset();
        e.registered_with = 0;
      }
      if (!e.srv) e.srv = start_server(c, e.res);
      if (e.srv && e.registered_with == 0 && kubelet_now != 0) {
        const std::string err = register_with_kubelet(s, e.res);
        if (err.empty()) {
          e.registered_with = kubelet_now;
          e.last_error.clear();
          log("registered {} with kubelet at {}", e.res.name, kubelet_sock);
        } else if (err != e.last_error) {
          log("kubelet registration failed: {}; retrying", err);
          e.last_error = err;
        }
      }
    }
    nap(std::chrono::milliseconds(s.watch_interval_ms));
  }
  log("stopping");
  for (auto& e : endpoints) {
    if (e.srv) e.srv->stop();
    ::unlink((s.kubelet_dir + "/" + e.res.socket).c_str());
  }
  c.state.poke();
  health.join();
  xid.join();
  registrar.join();
  return 0;
}
