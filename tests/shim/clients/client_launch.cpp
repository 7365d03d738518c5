/// \file
/// Launches through the SM limiter, end to end on the fake driver. Each scenario measures the
/// share of the fake device's busy time this process gets (the fake's own accounting: the time
/// its stream workers held the device) over a window of wall time.
///
///   share PATH PERCENT    a launch storm on one stream through PATH (kernel, ptsz, ex, ex_ptsz,
///                         coop, coop_ptsz, multi, graph, graph_ptsz, and the legacy launch,
///                         grid, grid_async) gets PERCENT +- 3 points
///   long PERCENT          50 ms kernels hold PERCENT +- 3 over a 5 s window
///   threads PERCENT       four threads on four streams share one bucket: PERCENT together
///   container PERCENT     two processes of one container (one ledger): PERCENT together
///   container_alone       CUDA_DEVICE_MEMORY_SHARED_CACHE unset, default policy, node region:
///                         two processes of one container (the default ledger) are one tenant,
///                         alone, so both run uncapped
///   capture               launches on a stream being captured are recorded, neither admitted
///                         nor timed; the captured graph holds its share when launched
///   capture_global        a global-mode capture stays open while the shim's watcher polls a
///                         timed launch of another thread: the capture survives (and a thread
///                         of the program's own in global mode would have invalidated it)
///   nocap_devices         two GPUs, no cap: both run uncapped and the launch path asks the
///                         driver nothing (no cuStreamGetDevice per launch)
///   devices               two GPUs, caps 70 and 30: each launch charged to its own device
///   fork                  a forked child learns its own kernels' cost and holds the share
///   set_limit             a forked process changes the ledger's SM and memory limits while
///                         this one launches; the new limits hold in this process, and a cap
///                         set again after "no cap" holds too
///   default               with GPU_CORE_UTILIZATION_POLICY=default and a node region, a lone
///                         tenant runs uncapped, is capped while a second container launches
///                         on the GPU, and runs uncapped again once it stops
///   priority              a low-priority tenant is suspended while a high-priority one runs
///   refused               an invalid SM limit makes launches fail closed
///   oversub EXPECT        a 100 MiB allocation on a 64 MiB card: with CUDA_OVERSUBSCRIBE it is
///                         managed memory preferring the device (EXPECT=managed), else refused
///   tenant SECONDS        (helper) launches a storm for SECONDS, as another container

#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../fake/fake_driver.hpp"
#include "../fake/fake_launch.hpp"
#include "client.hpp"
#include "gpuslice/memory/ledger.hpp"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // the multi-device launch

extern "C" CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                        unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                        CUstream s, void** params, void** extra);

extern char** environ;

namespace {

/// Duration of each storm kernel (fake_sleep_us's parameter).
constexpr std::uint64_t k_kernel_us = 1000;
/// Duration of the storm kernels of this process (a forked child uses longer ones).
std::uint64_t g_kernel_us = k_kernel_us;
/// A storm syncs its stream every this many launches, so an uncapped storm cannot queue
/// unbounded work (the device stays busy: the sync waits only for queued kernels).
constexpr int k_sync_every = 32;
/// Tolerance of a share, in percentage points (the acceptance criterion).
constexpr double k_tolerance = 3.0;
/// A share at or above this reads as "uncapped" (the fake's workers reach ~95-100%).
constexpr double k_uncapped_floor = 80.0;
/// Warm-up before a measurement (the first launches teach the limiter the kernel's cost).
constexpr auto k_warmup = std::chrono::milliseconds(400);
/// Measurement window.
constexpr auto k_window = std::chrono::milliseconds(1500);

using clock_type = std::chrono::steady_clock;

struct device_setup {
  int device = 0;  ///< CUDA ordinal (= physical device: the tests set no CUDA_VISIBLE_DEVICES)
  CUcontext ctx = nullptr;
  CUfunction sleep = nullptr;
  CUstream stream = nullptr;
  CUgraphExec graph = nullptr;
};

device_setup setup(int device = 0) {
  device_setup d;
  d.device = device;
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&d.ctx, device) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(d.ctx) == CUDA_SUCCESS);
  CUmodule m = nullptr;
  static const char k_image[] = "fake module";
  CLIENT_REQUIRE(cuModuleLoadData(&m, k_image) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuModuleGetFunction(&d.sleep, m, "fake_sleep_us") == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuStreamCreate(&d.stream, 0) == CUDA_SUCCESS);
  // A graph of two half-length kernels: one graph launch is one storm kernel's worth of work.
  CUgraph g = nullptr;
  CLIENT_REQUIRE(cuGraphCreate(&g, 0) == CUDA_SUCCESS);
  std::uint64_t half = k_kernel_us / 2;
  void* params[1] = {&half};
  CUDA_KERNEL_NODE_PARAMS np{};
  np.func = d.sleep;
  np.gridDimX = np.gridDimY = np.gridDimZ = 1;
  np.blockDimX = np.blockDimY = np.blockDimZ = 1;
  np.kernelParams = params;
  CUgraphNode first = nullptr;
  CUgraphNode second = nullptr;
  CLIENT_REQUIRE(cuGraphAddKernelNode(&first, g, nullptr, 0, &np) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuGraphAddKernelNode(&second, g, &first, 1, &np) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuGraphInstantiate(&d.graph, g, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuGraphDestroy(g) == CUDA_SUCCESS);
  return d;
}

/// Releases what setup() made, then reports the checks.
int finish(const device_setup& d, const char* name) {
  cuStreamSynchronize(d.stream);
  CLIENT_CHECK(cuGraphExecDestroy(d.graph) == CUDA_SUCCESS);
  CLIENT_CHECK(cuStreamDestroy(d.stream) == CUDA_SUCCESS);
  return client::finish(name);
}

/// One launch of a storm kernel through \p path.
CUresult launch(const device_setup& d, const std::string& path) {
  std::uint64_t us = g_kernel_us;
  void* params[1] = {&us};
  if (path == "kernel") {
    return cuLaunchKernel(d.sleep, 1, 1, 1, 1, 1, 1, 0, d.stream, params, nullptr);
  }
  if (path == "ptsz") {
    return cuLaunchKernel_ptsz(d.sleep, 1, 1, 1, 1, 1, 1, 0, d.stream, params, nullptr);
  }
  if (path == "ex" || path == "ex_ptsz") {
    CUlaunchConfig cfg{};
    cfg.gridDimX = cfg.gridDimY = cfg.gridDimZ = 1;
    cfg.blockDimX = cfg.blockDimY = cfg.blockDimZ = 1;
    cfg.hStream = d.stream;
    return path == "ex" ? cuLaunchKernelEx(&cfg, d.sleep, params, nullptr)
                        : cuLaunchKernelEx_ptsz(&cfg, d.sleep, params, nullptr);
  }
  if (path == "coop") {
    return cuLaunchCooperativeKernel(d.sleep, 1, 1, 1, 1, 1, 1, 0, d.stream, params);
  }
  if (path == "coop_ptsz") {
    return cuLaunchCooperativeKernel_ptsz(d.sleep, 1, 1, 1, 1, 1, 1, 0, d.stream, params);
  }
  if (path == "multi") {
    CUDA_LAUNCH_PARAMS p{};
    p.function = d.sleep;
    p.gridDimX = p.gridDimY = p.gridDimZ = 1;
    p.blockDimX = p.blockDimY = p.blockDimZ = 1;
    p.hStream = d.stream;
    p.kernelParams = params;
    return cuLaunchCooperativeKernelMultiDevice(&p, 1, 0);
  }
  if (path == "launch" || path == "grid" || path == "grid_async") {
    // The legacy API: parameters set on the function first; cuLaunch and cuLaunchGrid run on
    // the legacy default stream.
    CUresult r = cuParamSetv(d.sleep, 0, &us, sizeof us);
    if (r != CUDA_SUCCESS) return r;
    if (path == "launch") return cuLaunch(d.sleep);
    if (path == "grid") return cuLaunchGrid(d.sleep, 1, 1);
    return cuLaunchGridAsync(d.sleep, 1, 1, d.stream);
  }
  if (path == "graph") return cuGraphLaunch(d.graph, d.stream);
  if (path == "graph_ptsz") return cuGraphLaunch_ptsz(d.graph, d.stream);
  std::fprintf(stdout, "unknown launch path %s\n", path.c_str());
  std::_Exit(2);
}

/// The stream \p path's launches run on (the legacy launches without a stream argument run on
/// the legacy default stream), which a storm synchronises.
CUstream stream_of(const device_setup& d, const std::string& path) {
  return path == "launch" || path == "grid" ? nullptr : d.stream;
}

/// Launches through \p path until \p until; returns false if a launch failed.
bool storm_until(const device_setup& d, const std::string& path, clock_type::time_point until) {
  int n = 0;
  while (clock_type::now() < until) {
    if (launch(d, path) != CUDA_SUCCESS) return false;
    if (++n % k_sync_every == 0) cuStreamSynchronize(stream_of(d, path));
  }
  return true;
}

/// Storms through \p path on another thread while this one measures, after a warm-up, the
/// share of busy time (percent) over a fixed window of wall time: a launch that the limiter
/// holds back (a suspended tenant) cannot stretch the window.
double measured_share(const device_setup& d, const std::string& path, int threads = 1,
                      clock_type::duration warmup = k_warmup,
                      clock_type::duration window = k_window) {
  std::atomic<bool> stop{false};
  std::atomic<bool> failed{false};
  std::vector<std::thread> storms;
  for (int t = 0; t < threads; ++t) {
    storms.emplace_back([&, t] {
      cuCtxSetCurrent(d.ctx);
      device_setup mine = d;
      // Each further thread launches on a stream of its own: they share only the limiter.
      if (t > 0 && cuStreamCreate(&mine.stream, 0) != CUDA_SUCCESS) {
        failed.store(true);
        return;
      }
      int n = 0;
      while (!stop.load()) {
        if (launch(mine, path) != CUDA_SUCCESS) {
          failed.store(true);
          break;
        }
        if (++n % k_sync_every == 0) cuStreamSynchronize(stream_of(mine, path));
      }
      cuStreamSynchronize(stream_of(mine, path));
      if (t > 0) cuStreamDestroy(mine.stream);
    });
  }
  std::this_thread::sleep_for(warmup);
  const std::uint64_t busy0 = fake_cuda_physical_busy_us(d.device);
  const auto t0 = clock_type::now();
  std::this_thread::sleep_for(window);
  const std::uint64_t busy1 = fake_cuda_physical_busy_us(d.device);
  const auto t1 = clock_type::now();
  stop.store(true);
  for (std::thread& t : storms) t.join();
  CLIENT_REQUIRE(!failed.load());
  const double wall_us =
      static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(t1 - t0).count());
  const double share = 100.0 * static_cast<double>(busy1 - busy0) / wall_us;
  std::fprintf(stdout, "%s: share %.2f%% of the device's busy time\n", path.c_str(), share);
  std::fflush(stdout);
  return share;
}

void check_share(double share, double expected) {
  std::fprintf(stdout, "  expected %.0f%% +- %.0f\n", expected, k_tolerance);
  CLIENT_CHECK(std::fabs(share - expected) <= k_tolerance);
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v == nullptr ? fallback : v;
}

/// Starts this program as another container: same environment but its own ledger.
pid_t spawn_self(const std::vector<std::string>& changes, const std::string& verb,
                 const std::string& arg, int stdout_fd = -1) {
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv(*e);
    bool replaced = false;
    for (const std::string& c : changes) {
      const std::string name = c.substr(0, c.find('=') + 1);
      if (kv.rfind(name, 0) == 0) replaced = true;
    }
    if (!replaced) vars.push_back(kv);
  }
  vars.insert(vars.end(), changes.begin(), changes.end());
  std::vector<char*> envp;
  for (std::string& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string v = verb;
  std::string a = arg;
  char* argv[] = {self.data(), v.data(), a.data(), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  CLIENT_REQUIRE(rc == 0);
  return pid;
}

/// Starts this program as another container (a tenant storming for \p seconds).
pid_t spawn_tenant(const std::vector<std::string>& changes, double seconds) {
  return spawn_self(changes, "tenant", std::to_string(seconds));
}

void wait_tenant(pid_t pid) {
  int status = 0;
  CLIENT_REQUIRE(waitpid(pid, &status, 0) == pid);
  CLIENT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int scenario_share(const std::string& path, double expected) {
  const device_setup d = setup();
  check_share(measured_share(d, path), expected);
  return finish(d, "launch share");
}

int scenario_long(double expected) {
  // 50 ms kernels: each is 1% of the 5 s window (the fake credits busy time when a kernel
  // ends, so a window holds whole kernels), and one kernel is more than the bucket's 30 ms
  // capacity. The storm queues up to 32 launches between syncs: beyond the first two, the
  // limiter holds launches of the unlearned kernel until its first timing arrives.
  constexpr std::uint64_t k_long_us = 50'000;
  g_kernel_us = k_long_us;
  const device_setup d = setup();
  check_share(measured_share(d, "kernel", 1, std::chrono::seconds(1), std::chrono::seconds(5)),
              expected);
  return finish(d, "launch long");
}

int scenario_devices() {
  // Two GPUs with their own caps (CUDA_DEVICE_SM_LIMIT_<i>): each launch is admitted on its
  // stream's device, by that device's bucket.
  const device_setup d0 = setup(0);
  const device_setup d1 = setup(1);
  double s0 = 0.0;
  std::thread other([&] { s0 = measured_share(d0, "kernel"); });
  cuCtxSetCurrent(d1.ctx);
  const double s1 = measured_share(d1, "kernel");
  other.join();
  check_share(s0, 70.0);
  check_share(s1, 30.0);
  CLIENT_CHECK(finish(d0, "launch devices (0)") == 0);
  return finish(d1, "launch devices");
}

int scenario_threads(double expected) {
  const device_setup d = setup();
  // Four threads on four streams draw from one bucket: together they get the share.
  constexpr int k_threads = 4;
  check_share(measured_share(d, "kernel", k_threads), expected);
  return finish(d, "launch threads");
}

int scenario_peer() {
  const device_setup d = setup();
  std::fprintf(stdout, "peer_share=%.3f\n", measured_share(d, "kernel"));
  return finish(d, "launch peer");
}

/// Storms beside another process of the same container (spawned as "peer"), which reports its
/// own share on a pipe: {this process's share, the peer's}.
std::pair<double, double> shares_with_peer(const device_setup& d) {
  int fds[2];
  CLIENT_REQUIRE(pipe(fds) == 0);
  const pid_t peer = spawn_self({}, "peer", "", fds[1]);
  close(fds[1]);
  const double mine = measured_share(d, "kernel");
  std::string out;
  char buf[256];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  wait_tenant(peer);
  const auto at = out.find("peer_share=");
  CLIENT_REQUIRE(at != std::string::npos);
  const double theirs = std::atof(out.c_str() + at + std::strlen("peer_share="));
  return {mine, theirs};
}

int scenario_container_alone() {
  // The default policy with CUDA_DEVICE_MEMORY_SHARED_CACHE unset: this process and another of
  // the same container (the default ledger) storm together. One tenant in the node region, and
  // alone there: uncapped together. Each counted as a tenant of its own, they would cap each
  // other at the container's share.
  CLIENT_REQUIRE(std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE") == nullptr);
  const device_setup d = setup();
  const auto [mine, theirs] = shares_with_peer(d);
  std::fprintf(stdout, "container alone: %.2f%% + %.2f%% from the other process\n", mine, theirs);
  CLIENT_CHECK(mine + theirs >= k_uncapped_floor);
  return finish(d, "launch container_alone");
}

int scenario_container(double expected) {
  const device_setup d = setup();
  // Another process of the same container (same ledger, same bucket) storms at the same time;
  // the two shares add up to the container's.
  const auto [mine, theirs] = shares_with_peer(d);
  std::fprintf(stdout, "container: %.2f%% + %.2f%% from the other process\n", mine, theirs);
  check_share(mine + theirs, expected);
  CLIENT_CHECK(mine > 0.0 && theirs > 0.0);
  return finish(d, "launch container");
}

int scenario_capture() {
  device_setup d = setup();
  // Launches on a stream being captured are recorded into the graph, not run: the shim neither
  // admits nor times them (a timing event would become a node of the program's graph).
  constexpr int k_captured = 8;
  const std::uint64_t busy0 = fake_cuda_physical_busy_us(0);
  CLIENT_REQUIRE(cuStreamBeginCapture(d.stream, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS);
  for (int i = 0; i < k_captured; ++i) CLIENT_CHECK(launch(d, "kernel") == CUDA_SUCCESS);
  CUgraph g = nullptr;
  CLIENT_REQUIRE(cuStreamEndCapture(d.stream, &g) == CUDA_SUCCESS);
  int kernels = 0;
  int others = 0;
  fake_cuda_graph_nodes(g, &kernels, &others);
  CLIENT_CHECK_EQ(kernels, k_captured);
  CLIENT_CHECK_EQ(others, 0);
  CLIENT_CHECK(cuStreamSynchronize(d.stream) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(fake_cuda_physical_busy_us(0), busy0);
  // The captured graph is charged when it is launched.
  device_setup captured = d;
  CLIENT_REQUIRE(cuGraphInstantiate(&captured.graph, g, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuGraphDestroy(g) == CUDA_SUCCESS);
  check_share(measured_share(captured, "graph"), 30.0);
  CLIENT_CHECK(cuGraphExecDestroy(captured.graph) == CUDA_SUCCESS);
  return finish(d, "launch capture");
}

int scenario_capture_global() {
  device_setup d = setup();
  CUstream side = nullptr;
  CLIENT_REQUIRE(cuStreamCreate(&side, 0) == CUDA_SUCCESS);
  // A kernel that stays unfinished through each capture below, launched as the first launch of
  // a fresh thread: the shim times it, and its watcher polls the end event (cuEventQuery, a
  // "potentially unsafe" call) every tick until it completes.
  constexpr std::uint64_t k_side_us = 600'000;
  constexpr auto k_hold = std::chrono::milliseconds(150);  // 15 watcher ticks
  auto side_launch = [&] {
    std::thread t([&] {
      cuCtxSetCurrent(d.ctx);
      std::uint64_t us = k_side_us;
      void* params[1] = {&us};
      CLIENT_CHECK(cuLaunchKernel(d.sleep, 1, 1, 1, 1, 1, 1, 0, side, params, nullptr) ==
                   CUDA_SUCCESS);
    });
    t.join();
  };

  // The model bites: a thread of the program in the default global mode that queries an event
  // while this thread captures in global mode invalidates the capture.
  {
    CUevent e = nullptr;
    CLIENT_REQUIRE(cuEventCreate(&e, 0) == CUDA_SUCCESS);
    CLIENT_REQUIRE(cuEventRecord(e, side) == CUDA_SUCCESS);
    CLIENT_REQUIRE(cuStreamBeginCapture(d.stream, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS);
    CUresult queried = CUDA_SUCCESS;
    std::thread q([&] { queried = cuEventQuery(e); });
    q.join();
    CLIENT_CHECK(queried == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    CUgraph g = nullptr;
    CLIENT_CHECK(cuStreamEndCapture(d.stream, &g) == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    CLIENT_CHECK(cuEventSynchronize(e) == CUDA_SUCCESS);
    CLIENT_CHECK(cuEventDestroy(e) == CUDA_SUCCESS);
  }

  // The shim's watcher polls its timed launch through a whole global-mode capture.
  side_launch();
  const std::uint64_t relaxed0 = fake_capture_relaxed_calls();
  constexpr int k_captured = 4;
  CLIENT_REQUIRE(cuStreamBeginCapture(d.stream, CU_STREAM_CAPTURE_MODE_GLOBAL) == CUDA_SUCCESS);
  for (int i = 0; i < k_captured; ++i) CLIENT_CHECK(launch(d, "kernel") == CUDA_SUCCESS);
  std::this_thread::sleep_for(k_hold);
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  CLIENT_CHECK(cuStreamIsCapturing(d.stream, &status) == CUDA_SUCCESS);
  CLIENT_CHECK(status == CU_STREAM_CAPTURE_STATUS_ACTIVE);
  CUgraph g = nullptr;
  CLIENT_REQUIRE(cuStreamEndCapture(d.stream, &g) == CUDA_SUCCESS);
  // The watcher did query during the capture (in relaxed mode): the capture was at risk.
  const std::uint64_t relaxed = fake_capture_relaxed_calls() - relaxed0;
  std::fprintf(stdout, "watcher queries during the capture: %llu\n",
               static_cast<unsigned long long>(relaxed));
  CLIENT_CHECK(relaxed > 0);
  int kernels = 0;
  int others = 0;
  fake_cuda_graph_nodes(g, &kernels, &others);
  CLIENT_CHECK_EQ(kernels, k_captured);
  CUgraphExec exec = nullptr;
  CLIENT_REQUIRE(cuGraphInstantiate(&exec, g, 0) == CUDA_SUCCESS);
  CLIENT_CHECK(cuGraphLaunch(exec, d.stream) == CUDA_SUCCESS);
  CLIENT_CHECK(cuStreamSynchronize(d.stream) == CUDA_SUCCESS);
  CLIENT_CHECK(cuGraphExecDestroy(exec) == CUDA_SUCCESS);
  CLIENT_CHECK(cuGraphDestroy(g) == CUDA_SUCCESS);
  CLIENT_CHECK(cuStreamSynchronize(side) == CUDA_SUCCESS);
  CLIENT_CHECK(cuStreamDestroy(side) == CUDA_SUCCESS);
  return finish(d, "launch capture_global");
}

int scenario_nocap_devices() {
  // No cap on either of two GPUs: each storm runs uncapped, and once the fast path is on the
  // launch path asks the driver nothing, not even which device a stream is on.
  const device_setup d0 = setup(0);
  const device_setup d1 = setup(1);
  CLIENT_CHECK(launch(d0, "kernel") == CUDA_SUCCESS);
  CLIENT_CHECK(launch(d1, "kernel") == CUDA_SUCCESS);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the watcher runs
  const std::uint64_t asked0 = fake_cuda_stream_device_calls();
  double s0 = 0.0;
  std::thread other([&] {
    cuCtxSetCurrent(d0.ctx);
    s0 = measured_share(d0, "kernel");
  });
  cuCtxSetCurrent(d1.ctx);
  const double s1 = measured_share(d1, "kernel");
  other.join();
  const std::uint64_t asked = fake_cuda_stream_device_calls() - asked0;
  std::fprintf(stdout, "cuStreamGetDevice calls during the storms: %llu\n",
               static_cast<unsigned long long>(asked));
  CLIENT_CHECK(s0 >= k_uncapped_floor);
  CLIENT_CHECK(s1 >= k_uncapped_floor);
  CLIENT_CHECK_EQ(asked, 0u);
  CLIENT_CHECK(finish(d0, "launch nocap_devices (0)") == 0);
  return finish(d1, "launch nocap_devices");
}

int scenario_fork() {
  const device_setup d = setup();
  // The parent launches (its limiter and watcher start), then forks. The child's kernels are
  // three times longer: it holds its share only if it learns their cost itself, on a watcher
  // of its own (the parent's thread does not survive fork).
  constexpr int k_parent_launches = 8;
  for (int i = 0; i < k_parent_launches; ++i) CLIENT_CHECK(launch(d, "kernel") == CUDA_SUCCESS);
  CLIENT_CHECK(cuStreamSynchronize(d.stream) == CUDA_SUCCESS);
  std::fflush(stdout);
  const pid_t child = fork();
  CLIENT_REQUIRE(child >= 0);
  if (child == 0) {
    constexpr std::uint64_t k_longer = 3;
    g_kernel_us = k_kernel_us * k_longer;
    const device_setup c = setup();
    check_share(measured_share(c, "kernel"), 30.0);
    std::_Exit(finish(c, "launch fork (child)"));
  }
  wait_tenant(child);
  return finish(d, "launch fork");
}

int scenario_set_limit() {
  const std::string ledger_path = env_or("CUDA_DEVICE_MEMORY_SHARED_CACHE", "");
  CLIENT_REQUIRE(!ledger_path.empty());
  const device_setup d = setup();
  // The environment's cap (70%) holds first.
  check_share(measured_share(d, "kernel"), 70.0);

  // Another process (the operator's `gpuslice set-limit`) changes both limits in the ledger.
  auto change = [&](std::uint32_t sm, std::uint64_t bytes) {
    const pid_t pid = fork();
    CLIENT_REQUIRE(pid >= 0);
    if (pid == 0) {
      auto l = gpuslice::memory::shared_ledger::open(gpuslice::memory::open_only, ledger_path);
      if (!l || l->device_count() < 1) std::_Exit(3);
      const bool ok = l->set_sm_limit(0, sm) && l->set_limit(0, bytes);
      std::_Exit(ok ? 0 : 4);
    }
    wait_tenant(pid);
  };
  constexpr std::uint64_t k_new_limit = std::uint64_t{16} << 20;
  change(30, k_new_limit);
  check_share(measured_share(d, "kernel"), 30.0);
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  CLIENT_CHECK(cuMemGetInfo(&free_bytes, &total_bytes) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(total_bytes, k_new_limit);
  CUdeviceptr p = 0;
  CLIENT_CHECK(cuMemAlloc(&p, k_new_limit + 1) == CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK(cuMemAlloc(&p, k_new_limit / 2) == CUDA_SUCCESS);
  CLIENT_CHECK(cuMemFree(p) == CUDA_SUCCESS);

  // 100 is "explicitly no cap": the storm runs uncapped.
  change(100, k_new_limit);
  const double uncapped = measured_share(d, "kernel");
  CLIENT_CHECK(uncapped >= k_uncapped_floor);

  // Uncapped, launches take the fast path and read nothing per launch: the watcher must see
  // the new cap in the ledger and hold it.
  change(30, k_new_limit);
  check_share(measured_share(d, "kernel"), 30.0);
  return finish(d, "launch set_limit");
}

int scenario_default() {
  const std::string ledger_path = env_or("CUDA_DEVICE_MEMORY_SHARED_CACHE", "");
  CLIENT_REQUIRE(!ledger_path.empty());
  const device_setup d = setup();
  // Alone: the default policy lets the tenant use the whole GPU.
  const double alone = measured_share(d, "kernel");
  CLIENT_CHECK(alone >= k_uncapped_floor);

  // A second container registers and launches: capped at its share (30%) meanwhile.
  constexpr double k_tenant_seconds = 3.0;
  const pid_t other =
      spawn_tenant({"CUDA_DEVICE_MEMORY_SHARED_CACHE=" + ledger_path + ".other"}, k_tenant_seconds);
  const double shared = measured_share(d, "kernel");
  check_share(shared, 30.0);
  wait_tenant(other);

  // Alone again once the other's stamps age past the activity window.
  const double freed = measured_share(d, "kernel");
  CLIENT_CHECK(freed >= k_uncapped_floor);
  return finish(d, "launch default");
}

int scenario_priority() {
  const std::string ledger_path = env_or("CUDA_DEVICE_MEMORY_SHARED_CACHE", "");
  CLIENT_REQUIRE(!ledger_path.empty());
  const device_setup d = setup();
  constexpr double k_tenant_seconds = 3.0;
  const pid_t high = spawn_tenant(
      {"CUDA_DEVICE_MEMORY_SHARED_CACHE=" + ledger_path + ".high", "CUDA_TASK_PRIORITY=0"},
      k_tenant_seconds);
  // A low-priority tenant yields the GPU entirely while a high-priority one is active.
  const double low = measured_share(d, "kernel");
  CLIENT_CHECK(low <= k_tolerance);
  wait_tenant(high);
  return finish(d, "launch priority");
}

int scenario_tenant(double seconds) {
  const device_setup d = setup();
  CLIENT_REQUIRE(storm_until(d, "kernel",
                             clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                     std::chrono::duration<double>(seconds))));
  cuStreamSynchronize(d.stream);
  return finish(d, "launch tenant");
}

int scenario_refused() {
  const device_setup d = setup();
  client::stderr_capture cap;
  const CUresult r = launch(d, "kernel");
  const std::string log = cap.take();
  CLIENT_CHECK_EQ(r, CUDA_ERROR_NOT_PERMITTED);
  CLIENT_CHECK(launch(d, "graph") == CUDA_ERROR_NOT_PERMITTED);
  CLIENT_CHECK(log.find("CUDA_DEVICE_SM_LIMIT") != std::string::npos);
  return finish(d, "launch refused");
}

int scenario_oversub(const std::string& expect) {
  const device_setup d = setup();
  constexpr std::uint64_t k_bytes = std::uint64_t{100} << 20;
  CUdeviceptr p = 0;
  const CUresult r = cuMemAlloc(&p, k_bytes);
  if (expect != "managed") {
    CLIENT_CHECK_EQ(r, CUDA_ERROR_OUT_OF_MEMORY);
    return finish(d, "launch oversub (off)");
  }
  CLIENT_REQUIRE(r == CUDA_SUCCESS);
  int preferred = -2;
  int accessed_by = -2;
  CLIENT_CHECK(fake_cuda_advice(p, &preferred, &accessed_by) == 1);
  CLIENT_CHECK_EQ(preferred, 0);
  CLIENT_CHECK_EQ(accessed_by, 0);
  // The memory is usable and charged to the quota like device memory.
  std::vector<unsigned char> host(4096, 0x5a);
  CLIENT_CHECK(cuMemcpyHtoD(p, host.data(), host.size()) == CUDA_SUCCESS);
  const std::string ledger_path = env_or("CUDA_DEVICE_MEMORY_SHARED_CACHE", "");
  CLIENT_REQUIRE(!ledger_path.empty());
  auto l = gpuslice::memory::shared_ledger::open(gpuslice::memory::open_only, ledger_path);
  CLIENT_REQUIRE(l.ok());
  CLIENT_CHECK_EQ(l->used(0), k_bytes);
  // The quota still holds: 100 + 200 MiB exceed the 256 MiB limit.
  CUdeviceptr q = 0;
  CLIENT_CHECK_EQ(cuMemAlloc(&q, 2 * k_bytes), CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK(cuMemFree(p) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(l->used(0), std::uint64_t{0});
  return finish(d, "launch oversub");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string verb = argc > 1 ? argv[1] : "";
  if (verb == "share" && argc == 4) return scenario_share(argv[2], std::atof(argv[3]));
  if (verb == "threads" && argc == 3) return scenario_threads(std::atof(argv[2]));
  if (verb == "long" && argc == 3) return scenario_long(std::atof(argv[2]));
  if (verb == "container" && argc == 3) return scenario_container(std::atof(argv[2]));
  if (verb == "container_alone") return scenario_container_alone();
  if (verb == "peer") return scenario_peer();
  if (verb == "capture") return scenario_capture();
  if (verb == "capture_global") return scenario_capture_global();
  if (verb == "nocap_devices") return scenario_nocap_devices();
  if (verb == "devices") return scenario_devices();
  if (verb == "fork") return scenario_fork();
  if (verb == "set_limit") return scenario_set_limit();
  if (verb == "default") return scenario_default();
  if (verb == "priority") return scenario_priority();
  if (verb == "tenant" && argc == 3) return scenario_tenant(std::atof(argv[2]));
  if (verb == "refused") return scenario_refused();
  if (verb == "oversub" && argc == 3) return scenario_oversub(argv[2]);
  std::fprintf(stdout,
               "usage: %s share PATH PERCENT | long PERCENT | threads PERCENT | container PERCENT "
               "| container_alone | set_limit | "
               "capture | capture_global | devices | nocap_devices | fork | default | priority | "
               "refused | oversub managed|refused | tenant SECONDS\n",
               argv[0]);
  return 2;
}
