#pragma once
/// \file
/// The ledger's primitive layer: every OS call the ledger makes (proc files, files, mappings,
/// clocks) goes through here. Each function returns an error value rather than throwing and
/// states its preconditions. Linux only (/proc).

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

namespace gpuslice::memory {

namespace detail {

/// Largest /proc/<pid>/stat we read; the line is far shorter (comm is at most 16 bytes).
inline constexpr std::size_t k_stat_buffer = 1024;
/// Field number (1-based, as in proc(5)) of the process start time in /proc/<pid>/stat.
inline constexpr int k_stat_starttime_field = 22;

/// Process state and start time from /proc/<pid>/stat; nullopt if the process does not exist.
/// Precondition: pid > 0. Thread-safe.
struct proc_stat {
  char state;
  std::uint64_t start_time;
};

inline std::optional<proc_stat> read_proc_stat(std::int32_t pid) noexcept {
  if (pid <= 0) return std::nullopt;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[k_stat_buffer];
  ssize_t n;
  do {
    n = ::read(fd, buf, sizeof buf - 1);
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  buf[n] = '\0';
  // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ') return std::nullopt;
  p += 2;
  proc_stat out{*p, 0};
  int field = 3;
  while (field < k_stat_starttime_field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return std::nullopt;
    ++p;
    ++field;
  }
  char* end = nullptr;
  out.start_time = std::strtoull(p, &end, 10);
  if (end == p) return std::nullopt;
  return out;
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

/// Liveness from /proc: a process is alive when /proc/<pid>/stat exists, it is not a zombie,
/// and its start time matches (so a reused pid is not taken for the old process).
/// Stateless and thread-safe. Processes must share the pid namespace of the caller.
struct proc_liveness {
  /// The start time of a running (not zombie) process, or nullopt. Thread-safe.
  std::optional<std::uint64_t> start_time(std::int32_t pid) const noexcept {
    auto st = detail::read_proc_stat(pid);
    if (!st || st->state == 'Z' || st->state == 'X' || st->state == 'x') return std::nullopt;
    return st->start_time;
  }
  /// The calling process's pid. Thread-safe.
  std::int32_t self_pid() const noexcept { return static_cast<std::int32_t>(::getpid()); }
};

/// The real clock: monotonic nanoseconds. Stateless and thread-safe.
struct steady_clock_source {
  /// Monotonic time in nanoseconds. Thread-safe.
  std::uint64_t now_ns() const noexcept { return detail::monotonic_ns(); }
};

}  // namespace gpuslice::memory
