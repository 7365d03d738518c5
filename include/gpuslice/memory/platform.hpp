#pragma once
/// \file
/// The ledger's primitive layer: every OS call the ledger makes (proc files, files, mappings,
/// clocks) goes through here. Each function returns an error value rather than throwing and
/// states its preconditions. Linux only (/proc).

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "gpuslice/liveness.hpp"

namespace gpuslice::memory {

namespace detail {

// /proc/<pid>/stat is read in liveness.hpp, shared with the node region.
using gpuslice::detail::k_stat_buffer;
using gpuslice::detail::k_stat_starttime_field;
using gpuslice::detail::proc_stat;
using gpuslice::detail::read_proc_stat;

/// The calling thread's cached kernel thread id (0 = not looked up yet).
inline std::uint64_t& cached_thread_id() noexcept {
  static thread_local std::uint64_t tid = 0;
  return tid;
}

/// pthread_atfork child handler: the forking thread has a new id in the child.
inline void forget_thread_id_after_fork() noexcept { cached_thread_id() = 0; }

/// The kernel thread id of the caller, cached per thread (and looked up again in a fork
/// child). Thread-safe.
inline std::uint64_t this_thread_id() noexcept {
  auto& tid = cached_thread_id();
  if (tid == 0) {
    static const int registered = ::pthread_atfork(nullptr, nullptr, &forget_thread_id_after_fork);
    (void)registered;
    tid = static_cast<std::uint64_t>(::syscall(SYS_gettid));
  }
  return tid;
}

/// False only when thread \p tid of the calling process certainly no longer exists (doubt
/// counts as existing). Thread-safe.
inline bool thread_exists(std::uint64_t tid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%llu", static_cast<unsigned long long>(tid));
  struct stat st {};
  if (::stat(path, &st) == 0) return true;
  if (errno != ENOENT) return true;
  // Without /proc every thread would look gone: only a readable task directory counts.
  return ::stat("/proc/self/task", &st) != 0;
}

/// Current wall of the monotonic clock in nanoseconds. Thread-safe.
inline std::uint64_t monotonic_ns() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

/// errno as text for messages.
inline std::string errno_text(int e) { return std::strerror(e); }

}  // namespace detail

/// The liveness seam's answer (liveness.hpp).
using gpuslice::liveness_probe;
/// The real liveness: kill(pid, 0) and /proc (liveness.hpp).
using gpuslice::proc_liveness;

/// The real clock: monotonic nanoseconds. Stateless and thread-safe.
struct steady_clock_source {
  /// Monotonic time in nanoseconds. Thread-safe.
  std::uint64_t now_ns() const noexcept { return detail::monotonic_ns(); }
};

}  // namespace gpuslice::memory
