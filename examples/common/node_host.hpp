#pragma once
/// \file
/// What the two node programs (the device plugin and the DRA plugin) do alike on the host: the
/// stop flag that SIGTERM and SIGINT set, an interruptible sleep, `ld.so.preload` naming the shim,
/// and the fresh, world-writable directory a container's (or a claim's) ledger lives in.

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

namespace gpuslice::node_host {

/// Set by SIGTERM or SIGINT once install_stop_signals() has run.
inline std::atomic<bool> g_stop{false};

/// Makes SIGTERM and SIGINT set g_stop (the programs then end their loops and unregister).
inline void install_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop.store(true); };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

/// Sleeps \p d in short steps, returning early once g_stop is set.
inline void nap(std::chrono::milliseconds d) {
  constexpr std::chrono::milliseconds k_step{20};
  const auto until = std::chrono::steady_clock::now() + d;
  while (!g_stop.load() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::min(d, k_step));
  }
}

/// Writes `<host_hook>/ld.so.preload` naming `<container_hook>/libgpuslice.so`, the file the
/// containers get mounted at /etc/ld.so.preload. An error message, or nullopt.
inline std::optional<std::string> write_preload(const std::string& host_hook,
                                                const std::string& container_hook) {
  std::ofstream preload(host_hook + "/ld.so.preload");
  preload << container_hook << "/libgpuslice.so\n";
  if (!preload) return host_hook + "/ld.so.preload: cannot write";
  return std::nullopt;
}

/// A warning when the shim is not installed at `<host_hook>/libgpuslice.so`, or nullopt.
inline std::optional<std::string> missing_shim(const std::string& host_hook) {
  if (std::filesystem::exists(host_hook + "/libgpuslice.so")) return std::nullopt;
  return host_hook +
         "/libgpuslice.so is missing: containers will start without the limits' enforcement "
         "until it is installed there";
}

/// Makes \p dir afresh (whatever it held is removed: a new container or claim starts with a new
/// ledger, as HAMi does) and world-writable, so processes under any user share it. An error
/// message, or nullopt.
inline std::optional<std::string> fresh_shared_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::filesystem::create_directories(dir, ec);
  if (ec) return dir + ": " + ec.message();
  constexpr mode_t k_world_writable = 0777;
  if (::chmod(dir.c_str(), k_world_writable) != 0) return dir + ": chmod: " + std::strerror(errno);
  return std::nullopt;
}

}  // namespace gpuslice::node_host
