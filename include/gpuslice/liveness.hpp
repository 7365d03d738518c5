#pragma once
/// \file
/// Process liveness, shared by everything that keeps state in a file other processes map (the
/// memory ledger, the node region, the claim primitive of claim.hpp).
///
/// The rule: a process is dead only when the kernel says so.
///   - `kill(pid, 0)` failing with ESRCH: dead. EPERM: alive (another user's process).
///   - /proc/<pid>/stat then gives the start time, so a reused pid is not taken for the old
///     process. A zombie *leader* whose other threads still run (its main thread called
///     pthread_exit) is alive: the process is alive while /proc/<pid>/task lists another
///     thread. A zombie with no other thread, or a dead ('X') task, is dead.
///   - Anything else (/proc hidden by hidepid=2, fd exhaustion, a malformed line) is unknown,
///     and unknown counts as alive: state is never taken from a process that may be running.
///
/// The seam: code that judges liveness takes a `Liveness` type with
/// `liveness_probe probe(std::int32_t pid) const` and `std::int32_t self_pid() const`;
/// proc_liveness is the real one, testing::fake_liveness a table a test controls.
/// Linux only. Processes must share the caller's pid namespace.

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace gpuslice {

/// The answer of a liveness probe.
struct liveness_probe {
  enum class status : std::uint8_t {
    running,  ///< the process exists and start_time is its start time
    gone,     ///< the kernel says no such process (or only a zombie is left): certainly dead
    unknown,  ///< alive, or could not tell: never treated as dead; start_time not known
  };
  status what = status::unknown;
  std::uint64_t start_time = 0;  ///< valid when running: clock ticks since boot (field 22)
};

namespace detail {

/// Largest /proc/<pid>/stat we read; the line is far shorter (comm is at most 16 bytes).
inline constexpr std::size_t k_stat_buffer = 1024;
/// Field number (1-based, as in proc(5)) of the process start time in /proc/<pid>/stat.
inline constexpr int k_stat_starttime_field = 22;

/// What /proc/<pid>/stat says about a process.
struct proc_stat {
  enum class status : std::uint8_t {
    running,  ///< the file was read: state and start_time are valid
    gone,     ///< no such file (ENOENT / ESRCH): exited, or hidden by hidepid
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

/// What /proc/<pid>/task says about a zombie leader's other threads.
enum class other_threads : std::uint8_t { none, some, unknown };

/// Whether thread group \p pid has a thread other than its leader. Thread-safe.
inline other_threads threads_besides_leader(std::int32_t pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/task", static_cast<int>(pid));
  DIR* dir = ::opendir(path);
  if (dir == nullptr) return errno == ENOENT ? other_threads::none : other_threads::unknown;
  other_threads out = other_threads::none;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    if (std::strtol(e->d_name, nullptr, 10) != pid) {
      out = other_threads::some;
      break;
    }
  }
  ::closedir(dir);
  return out;
}

/// What kill(pid, 0) says.
enum class signal_probe : std::uint8_t { exists, gone, unknown };

/// kill(\p pid, 0): ESRCH is gone, success or EPERM exists. Thread-safe.
inline signal_probe probe_by_signal(std::int32_t pid) noexcept {
  if (pid <= 0) return signal_probe::gone;  // 0 and negatives name groups, never a process
  if (::kill(static_cast<pid_t>(pid), 0) == 0) return signal_probe::exists;
  if (errno == ESRCH) return signal_probe::gone;
  return errno == EPERM ? signal_probe::exists : signal_probe::unknown;
}

}  // namespace detail

/// The real liveness: the rule at the top of this file. Stateless and thread-safe.
struct proc_liveness {
  /// Probes \p pid. Thread-safe.
  liveness_probe probe(std::int32_t pid) const noexcept {
    using s = liveness_probe::status;
    const auto sig = detail::probe_by_signal(pid);
    if (sig == detail::signal_probe::gone) return {s::gone, 0};
    const auto st = detail::read_proc_stat(pid);
    if (st.what != detail::proc_stat::status::running) {
      // Hidden (hidepid=2 answers ENOENT for another user's process), unreadable, or exited
      // between the two calls: ask the kernel again, which alone may say dead.
      return {detail::probe_by_signal(pid) == detail::signal_probe::gone ? s::gone : s::unknown, 0};
    }
    if (st.state == 'X' || st.state == 'x') return {s::gone, 0};
    if (st.state == 'Z') {
      switch (detail::threads_besides_leader(pid)) {
        case detail::other_threads::none:
          return {s::gone, 0};
        case detail::other_threads::unknown:
          return {s::unknown, 0};
        case detail::other_threads::some:
          break;  // a zombie leader of a running process
      }
    }
    return {s::running, st.start_time};
  }
  /// The calling process's pid. Thread-safe.
  std::int32_t self_pid() const noexcept { return static_cast<std::int32_t>(::getpid()); }
};

/// How a holder recorded in shared state is judged: true only when \p p proves that the
/// process that recorded \p recorded_start is gone (\p recorded_start 0 = not known, then only
/// the kernel's "no such process" counts). Pure.
constexpr bool proves_dead(const liveness_probe& p, std::uint64_t recorded_start,
                           std::uint64_t start_mask = ~std::uint64_t{0}) noexcept {
  if (p.what == liveness_probe::status::gone) return true;
  if (p.what != liveness_probe::status::running || recorded_start == 0) return false;
  return (p.start_time & start_mask) != (recorded_start & start_mask);
}

}  // namespace gpuslice
