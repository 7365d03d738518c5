#pragma once
/// \file
/// What the shim's client programs share: checks that count failures, the driver entry points
/// the scenario uses, loaded in one of three ways (linked, dlopen+dlsym, cuGetProcAddress_v2),
/// and capture of the shim's log lines from stderr.

#include <cuda.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gpuslice/quantity.hpp"

namespace client {

inline int& failures() {
  static int n = 0;
  return n;
}

/// Records a failed check with its location; the program exits non-zero at the end.
#define CLIENT_CHECK(cond)                                                          \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stdout, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++client::failures();                                                         \
    }                                                                               \
  } while (0)

/// Checks that two integers are equal and prints both when they are not.
#define CLIENT_CHECK_EQ(a, b)                                                                    \
  do {                                                                                           \
    const auto client_a_ = (a);                                                                  \
    const auto client_b_ = (b);                                                                  \
    if (!(client_a_ == client_b_)) {                                                             \
      std::fprintf(stdout, "%s:%d: check failed: %s == %s (%llu vs %llu)\n", __FILE__, __LINE__, \
                   #a, #b, static_cast<unsigned long long>(client_a_),                           \
                   static_cast<unsigned long long>(client_b_));                                  \
      ++client::failures();                                                                      \
    }                                                                                            \
  } while (0)

/// Stops the program when a precondition of the rest fails.
#define CLIENT_REQUIRE(cond)                                                    \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stdout, "%s:%d: required: %s\n", __FILE__, __LINE__, #cond); \
      std::fflush(stdout);                                                      \
      std::_Exit(2);                                                            \
    }                                                                           \
  } while (0)

/// The exit status: 0 when every check passed.
inline int finish(const char* name) {
  std::fprintf(stdout, "%s: %s (%d failed checks)\n", name, failures() == 0 ? "ok" : "FAILED",
               failures());
  std::fflush(stdout);
  return failures() == 0 ? 0 : 1;
}

/// A byte quantity from the environment (quantity grammar), or \p fallback.
inline std::uint64_t env_bytes(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr) return fallback;
  auto b = gpuslice::parse_bytes(v);
  CLIENT_REQUIRE(b.ok());
  return *b;
}

/// Redirects stderr into memory so a test can read the shim's log lines; restores it on
/// take(), echoing what was captured.
class stderr_capture {
 public:
  stderr_capture() {
    fd_ = memfd_create("gpuslice-client-stderr", 0);
    CLIENT_REQUIRE(fd_ >= 0);
    saved_ = dup(STDERR_FILENO);
    dup2(fd_, STDERR_FILENO);
  }
  ~stderr_capture() {
    if (saved_ >= 0) take();
    close(fd_);
  }
  /// Everything written to stderr since construction.
  std::string take() {
    if (saved_ >= 0) {
      dup2(saved_, STDERR_FILENO);
      close(saved_);
      saved_ = -1;
    }
    std::string out;
    char buf[4096];
    ssize_t n = 0;
    off_t at = 0;
    while ((n = pread(fd_, buf, sizeof buf, at)) > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      at += n;
    }
    std::fputs(out.c_str(), stderr);
    return out;
  }

 private:
  int fd_ = -1;
  int saved_ = -1;
};

/// The driver entry points the scenario uses.
struct driver {
  decltype(&::cuInit) init = nullptr;
  decltype(&::cuDeviceGet) device_get = nullptr;
  decltype(&::cuDeviceGetCount) device_count = nullptr;
  decltype(&::cuDeviceGetUuid_v2) device_uuid = nullptr;
  decltype(&::cuDeviceTotalMem_v2) total_mem = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) ctx_retain = nullptr;
  decltype(&::cuCtxSetCurrent) ctx_set = nullptr;
  decltype(&::cuMemGetInfo_v2) mem_info = nullptr;
  decltype(&::cuMemAlloc_v2) alloc = nullptr;
  decltype(&::cuMemFree_v2) free = nullptr;
  decltype(&::cuMemAllocPitch_v2) alloc_pitch = nullptr;
  decltype(&::cuMemAllocManaged) alloc_managed = nullptr;
  decltype(&::cuMemAllocAsync) alloc_async = nullptr;
  decltype(&::cuMemFreeAsync) free_async = nullptr;
  decltype(&::cuMemAllocFromPoolAsync) alloc_pool = nullptr;
  decltype(&::cuMemPoolCreate) pool_create = nullptr;
  decltype(&::cuMemPoolDestroy) pool_destroy = nullptr;
  decltype(&::cuStreamCreate) stream_create = nullptr;
  decltype(&::cuStreamDestroy_v2) stream_destroy = nullptr;
  decltype(&::cuStreamSynchronize) stream_sync = nullptr;
  decltype(&::cuMemCreate) mem_create = nullptr;
  decltype(&::cuMemRelease) mem_release = nullptr;
  decltype(&::cuArrayCreate_v2) array_create = nullptr;
  decltype(&::cuArray3DCreate_v2) array3d_create = nullptr;
  decltype(&::cuArrayDestroy) array_destroy = nullptr;
  decltype(&::cuMipmappedArrayCreate) mipmap_create = nullptr;
  decltype(&::cuMipmappedArrayDestroy) mipmap_destroy = nullptr;
  decltype(&::cuGetProcAddress_v2) get_proc = nullptr;
};

/// Every member of \p d is set.
inline bool complete(const driver& d) {
  const void* const* p = reinterpret_cast<const void* const*>(&d);
  for (std::size_t i = 0; i < sizeof(driver) / sizeof(void*); ++i) {
    if (p[i] == nullptr) {
      std::fprintf(stdout, "driver entry %zu not resolved\n", i);
      return false;
    }
  }
  return true;
}

/// The CUDA version a CUDA 13 runtime passes to cuGetProcAddress.
inline constexpr int k_runtime_version = 13000;

}  // namespace client
