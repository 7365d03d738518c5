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

namespace gpuslice::memory {

namespace detail {

/// Largest /proc/<pid>/stat we read; the line is far shorter (comm is at most 16 bytes).
inline constexpr std::size_t k_stat_buffer = 1024;
/// Field number (1-based, as in proc(5)) of the process start time in /proc/<pid>/stat.
inline constexpr int k_stat_starttime_field = 22;

/// What /proc/<pid>/stat says about a process.
struct proc_stat {
  enum class status : std::uint8_t {
    running,  ///< the file was read: state and start_time are valid
    gone,     ///< no such process (ENOENT / ESRCH)
    unknown,  ///< any other failure (EMFILE, EACCES, a malformed line): do not conclude
  };
  status what = status::unknown;
  char state = '?';              ///< field 3 ('R', 'S', 'Z', ...)
  std::uint64_t start_time = 0;  ///< field 22, clock ticks since boot
};

/// Reads /proc/<pid>/stat. Precondition: none (pid <= 0 reads as gone). Thread-safe.
inline proc_stat read_proc_stat(std::int32_t pid) noexcept {
  proc_stat out;
  if (pid <= 0) {
    out.what = proc_stat::status::gone;
    return out;
  }
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ESRCH) out.what = proc_stat::status::gone;
    return out;
  }
  char buf[k_stat_buffer];
  ssize_t n;
  do {
    n = ::read(fd, buf, sizeof buf - 1);
  } while (n < 0 && errno == EINTR);
  const int read_errno = errno;
  ::close(fd);
  if (n < 0 && read_errno == ESRCH) out.what = proc_stat::status::gone;  // exited meanwhile
  if (n <= 0) return out;
  buf[n] = '\0';
  // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ') return out;
  p += 2;
  const char state = *p;
  int field = 3;
  while (field < k_stat_starttime_field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return out;
    ++p;
    ++field;
  }
  char* end = nullptr;
  const auto start = std::strtoull(p, &end, 10);
  if (end == p) return out;
  out.what = proc_stat::status::running;
  out.state = state;
  out.start_time = start;
  return out;
}

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

/// The answer of a liveness probe.
struct liveness_probe {
  enum class status : std::uint8_t {
    running,  ///< the process exists (start_time valid)
    gone,     ///< no such process, or a zombie: certainly dead
    unknown,  ///< could not tell: the ledger then treats the process as alive (never reaps)
  };
  status what = status::unknown;
  std::uint64_t start_time = 0;  ///< valid when running
};

/// Liveness from /proc: a slot's process is alive when /proc/<pid>/stat exists, it is not a
/// zombie, and its start time matches the slot's (so a reused pid is not taken for the old
/// process). An unreadable /proc (fd exhaustion, permissions) answers `unknown`, and the
/// ledger never reaps on doubt. Stateless and thread-safe. Processes must share the pid
/// namespace of the caller.
struct proc_liveness {
  /// Probes \p pid. Thread-safe.
  liveness_probe probe(std::int32_t pid) const noexcept {
    const auto st = detail::read_proc_stat(pid);
    switch (st.what) {
      case detail::proc_stat::status::gone:
        return {liveness_probe::status::gone, 0};
      case detail::proc_stat::status::unknown:
        return {liveness_probe::status::unknown, 0};
      case detail::proc_stat::status::running:
        break;
    }
    if (st.state == 'Z' || st.state == 'X' || st.state == 'x') {
      return {liveness_probe::status::gone, 0};
    }
    return {liveness_probe::status::running, st.start_time};
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
