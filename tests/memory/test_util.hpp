#pragma once
// Helpers for the ledger tests: pid-named temp files, forked children that always _exit, and
// small file edits.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
#include <string>
#include <vector>

namespace gpuslice::memory::test {

/// A file path under the temp directory carrying the pid (parallel runs never collide);
/// removed on destruction.
class temp_path {
 public:
  explicit temp_path(const std::string& name) {
    static int counter = 0;
    path_ =
        (std::filesystem::temp_directory_path() / ("gpuslice-ledger-" + std::to_string(::getpid()) +
                                                   "-" + std::to_string(counter++) + "-" + name))
            .string();
    std::filesystem::remove(path_);
  }
  ~temp_path() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  temp_path(const temp_path&) = delete;
  temp_path& operator=(const temp_path&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

/// Forks a child that runs \p body and _exits with its return value (127 on an exception);
/// the child never returns into the test framework.
inline pid_t fork_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 127;
    try {
      rc = body();
    } catch (...) {
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return pid;
}

/// Waits for \p pid; returns its exit status, or 128 + signal.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/// Whole file contents.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Replaces the file's contents.
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Overwrites sizeof(T) bytes at \p offset.
template <class T>
void poke(std::string& bytes, std::size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

/// True under ASan or TSan (sanitized runs are scaled down).
constexpr bool sanitized() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

/// An integer from the environment, or \p fallback.
inline long env_or(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtol(v, nullptr, 10) : fallback;
}

/// A block of shared anonymous memory that survives fork (results and flags of children).
template <class T>
struct shared_block {
  T* p;
  explicit shared_block(std::size_t n = 1)
      : p(static_cast<T*>(::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0))),
        n_(n) {
    REQUIRE(p != MAP_FAILED);
    for (std::size_t i = 0; i < n; ++i) new (p + i) T{};
  }
  ~shared_block() { ::munmap(p, sizeof(T) * n_); }
  shared_block(const shared_block&) = delete;
  shared_block& operator=(const shared_block&) = delete;

 private:
  std::size_t n_;
};

}  // namespace gpuslice::memory::test
