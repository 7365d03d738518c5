/// \file
/// How the shim uses NVML's per-process figure, on the fake driver (linked against the fake
/// libcuda.so.1; the fake libnvidia-ml.so.1 is opened to read its query counter). Scenarios:
///   quiet       NVML answers as FAKE_NVML_PROCESSES says (a figure, none, this process not
///               listed, NO_PERMISSION), from the start or (CLIENT_NVML_LATER) once identified:
///               thousands of counted calls and views read NVML's process list no more often
///               than identification's backoff and the interval allow
///   churn       threads allocate and free while neighbours (FAKE_NVML_NEIGHBOUR_*) churn exactly
///               the probe's size: the process is identified as itself, never as a neighbour,
///               what the driver holds never exceeds the limit, and at the end the ledger holds
///               exactly what the driver does (the context counted once)
///   in_flight   a large allocation is slow in the driver (FAKE_CUDA_SLOW_ALLOC) while another
///               thread loads modules (which ask for a reading) and reads the view: no reading
///               taken meanwhile gives the context's memory back, so the ledger never holds less
///               than the driver does
///   shared_over a process fills the quota, then another of the container (this program again,
///               as "late_context") makes its context, which does not fit: the first must not be
///               granted that memory again when it frees some, since the driver holds it
///   idle_pool   another process of the container ("pool_then_idle") allocates from a pool
///               that keeps nothing, frees, synchronises and idles: what its pool gave back is
///               granted to this process, never refused while it is free
///   entry_points CUDA 13's versioned entry points through cuGetProcAddress_v2: cuCtxCreate
///               answers with the shim's cuCtxCreate_v4, whose context is charged from its
///               creation on (not at the next interval); cuMemAdvise, cuMemPrefetchAsync and
///               cuDeviceGetUuid answer with the driver's _v2 functions, which then work
///   first_alloc for bench/shim_startup.py: prints the nanoseconds from CLIENT_T0_NS
///               (CLOCK_MONOTONIC, set by whoever started it) to its first allocation
///   pool_device device 0's default pool serves an allocation on a stream of device 1 (cuda.h
///               allows it): device 0, whose memory the pool holds, is charged, not device 1

#include <sys/wait.h>
#include <time.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "client.hpp"
#include "fake_driver.hpp"
#include "gpuslice/memory/ledger.hpp"

namespace {

using queries_fn = unsigned long long (*)();

/// The fake NVML's count of process-list queries (the library the shim opened, by soname).
queries_fn nvml_queries() {
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  CLIENT_REQUIRE(nvml != nullptr);
  auto fn = reinterpret_cast<queries_fn>(dlsym(nvml, "fake_nvml_process_queries"));
  CLIENT_REQUIRE(fn != nullptr);
  return fn;
}

/// Bytes the ledger charges device 0 now.
std::uint64_t ledger_used(const char* path) {
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok() && !snap->devices.empty());
  return snap->devices[0].used;
}

CUcontext start() {
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext ctx = nullptr;
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
  return ctx;
}

// Identification reads NVML 4 times per attempt, attempts back off from 20 ms to the 1 s
// interval (6 attempts before the delay reaches it, then one a second), and a reading is one
// query per second (two when a reading verifies the pid again). A per-call read makes thousands.
int quiet() {
  const int k_calls = 5000;
  const auto k_least = std::chrono::milliseconds(1200);
  start();
  // CLIENT_NVML_LATER: NVML answers so only once this process is identified and measured (a
  // process whose context NVML stops listing, or whose figure it stops reporting).
  if (const char* later = std::getenv("CLIENT_NVML_LATER")) {
    CUdeviceptr p = 0;
    CLIENT_REQUIRE(cuMemAlloc_v2(&p, 4096) == CUDA_SUCCESS && cuMemFree_v2(p) == CUDA_SUCCESS);
    setenv("FAKE_NVML_PROCESSES", later, 1);
  }
  const queries_fn queries = nvml_queries();
  const auto t0 = std::chrono::steady_clock::now();
  const unsigned long long q0 = queries();
  int failed = 0;
  int calls = 0;
  // Past the first interval, so the bound holds the interval's readings as well as
  // identification's backoff.
  for (; calls < k_calls || std::chrono::steady_clock::now() - t0 < k_least; ++calls) {
    CUdeviceptr p = 0;
    if (cuMemAlloc_v2(&p, 4096) != CUDA_SUCCESS || cuMemFree_v2(p) != CUDA_SUCCESS) ++failed;
    std::size_t free_b = 0, total_b = 0;
    if (cuMemGetInfo_v2(&free_b, &total_b) != CUDA_SUCCESS) ++failed;
  }
  const unsigned long long reads = queries() - q0;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto bound = static_cast<unsigned long long>(4 * (6 + 2 * (seconds + 1)) + 2);
  std::printf("%d alloc+free and views in %.2f s: %llu NVML process queries (bound %llu)\n", calls,
              seconds, reads, bound);
  CLIENT_CHECK_EQ(failed, 0);
  CLIENT_CHECK(reads <= bound);
  return client::finish("client_nvml quiet");
}

int churn(const char* path) {
  constexpr int k_threads = 6;
  constexpr int k_operations = 3000;
  constexpr std::uint64_t k_size = std::uint64_t{1} << 20;
  const std::uint64_t limit = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  const CUcontext ctx = start();
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> physical_peak{0};
  std::thread watcher([&] {
    while (!done.load()) {
      const std::uint64_t held = fake_cuda_physical_used(0);
      std::uint64_t prev = physical_peak.load();
      while (held > prev && !physical_peak.compare_exchange_weak(prev, held)) {
      }
    }
  });
  std::atomic<long> ok{0}, other{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < k_threads; ++t) {
    workers.emplace_back([&, t] {
      if (cuCtxSetCurrent(ctx) != CUDA_SUCCESS) return void(other.fetch_add(1));
      std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 7);
      std::vector<CUdeviceptr> held;
      for (int i = 0; i < k_operations; ++i) {
        if (held.size() == 4 || (!held.empty() && rng() % 2 == 0)) {
          if (cuMemFree_v2(held.back()) != CUDA_SUCCESS) other.fetch_add(1);
          held.pop_back();
          continue;
        }
        CUdeviceptr p = 0;
        const CUresult r = cuMemAlloc_v2(&p, k_size * (1 + rng() % 3));
        if (r == CUDA_SUCCESS) {
          held.push_back(p);
          ok.fetch_add(1);
        } else if (r != CUDA_ERROR_OUT_OF_MEMORY) {
          other.fetch_add(1);
        }
        // Views read NVML when due, while the other threads churn.
        std::size_t free_b = 0, total_b = 0;
        if (i % 64 == 0 && cuMemGetInfo_v2(&free_b, &total_b) != CUDA_SUCCESS) other.fetch_add(1);
      }
      for (CUdeviceptr p : held) {
        if (cuMemFree_v2(p) != CUDA_SUCCESS) other.fetch_add(1);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  done.store(true);
  watcher.join();
  std::size_t free_b = 0, total_b = 0;
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  const std::uint64_t held = fake_cuda_physical_used(0);
  std::printf(
      "allocations %ld; the driver held at most %llu of %llu bytes; now %llu, ledger %llu\n",
      ok.load(), static_cast<unsigned long long>(physical_peak.load()),
      static_cast<unsigned long long>(limit), static_cast<unsigned long long>(held),
      static_cast<unsigned long long>(ledger_used(path)));
  CLIENT_CHECK(ok.load() > 0);
  CLIENT_CHECK_EQ(other.load(), 0);
  CLIENT_CHECK(physical_peak.load() <= limit);
  // The context is charged once, as this process's own figure says: a neighbour's figure taken
  // for this process's would charge its bytes instead.
  CLIENT_CHECK_EQ(ledger_used(path), held);
  CLIENT_CHECK_EQ(limit - free_b, held);
  return client::finish("client_nvml churn");
}

int in_flight(const char* path) {
  const std::uint64_t limit = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  const std::uint64_t big = client::env_bytes("CLIENT_BIG_ALLOC", 0);
  const CUcontext ctx = start();
  // The context is measured and charged first.
  std::size_t free_b = 0, total_b = 0;
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  CLIENT_REQUIRE(ledger_used(path) == fake_cuda_physical_used(0));
  std::atomic<bool> done{false};
  std::atomic<long> short_of_driver{0};  // samples where the ledger held less than the driver
  std::thread watcher([&] {
    while (!done.load()) {
      // The ledger first: a charge only ever precedes what the driver takes.
      const std::uint64_t charged = ledger_used(path);
      const std::uint64_t held = fake_cuda_physical_used(0);
      if (held > charged) short_of_driver.fetch_add(1);
    }
  });
  CUdeviceptr p = 0;
  CUresult big_r = CUDA_ERROR_UNKNOWN;
  std::thread allocator([&] {
    if (cuCtxSetCurrent(ctx) == CUDA_SUCCESS) big_r = cuMemAlloc_v2(&p, big);
  });
  // Meanwhile: modules load (each asks for a reading; they take no memory here) and views read.
  std::vector<CUmodule> modules;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (std::chrono::steady_clock::now() < until) {
    CUmodule m = nullptr;
    static const char k_image[] = "fake module";
    if (cuModuleLoadData(&m, k_image) == CUDA_SUCCESS) modules.push_back(m);
    CLIENT_CHECK(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  allocator.join();
  CLIENT_CHECK(big_r == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  done.store(true);
  watcher.join();
  std::printf(
      "%zu modules; ledger %llu, driver %llu; %ld samples with the driver above the ledger\n",
      modules.size(), static_cast<unsigned long long>(ledger_used(path)),
      static_cast<unsigned long long>(fake_cuda_physical_used(0)), short_of_driver.load());
  CLIENT_CHECK_EQ(short_of_driver.load(), 0);
  CLIENT_CHECK_EQ(ledger_used(path), fake_cuda_physical_used(0));
  CLIENT_CHECK(fake_cuda_physical_used(0) <= limit);
  if (big_r == CUDA_SUCCESS) CLIENT_CHECK(cuMemFree_v2(p) == CUDA_SUCCESS);
  for (CUmodule m : modules) CLIENT_CHECK(cuModuleUnload(m) == CUDA_SUCCESS);
  return client::finish("client_nvml in_flight");
}

/// The other process of shared_over: makes its context (FAKE_CUDA_CONTEXT_BYTES), has it
/// measured, says so on stdout, and holds it until its stdin closes.
int late_context() {
  start();
  std::size_t free_b = 0, total_b = 0;
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  CLIENT_REQUIRE(write(STDOUT_FILENO, "m", 1) == 1);
  char c = 0;
  while (read(STDIN_FILENO, &c, 1) > 0) {
  }
  return 0;
}

int shared_over(const char* self) {
  const std::uint64_t limit = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  const std::uint64_t ctx = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  constexpr std::uint64_t k_chunk = std::uint64_t{4} << 20;
  start();
  std::vector<CUdeviceptr> held;
  for (CUdeviceptr p = 0; cuMemAlloc_v2(&p, k_chunk) == CUDA_SUCCESS;) held.push_back(p);
  CLIENT_REQUIRE(!held.empty());
  int to_child[2], from_child[2];
  CLIENT_REQUIRE(pipe(to_child) == 0 && pipe(from_child) == 0);
  const pid_t child = fork();
  CLIENT_REQUIRE(child >= 0);
  if (child == 0) {
    dup2(to_child[0], STDIN_FILENO);
    dup2(from_child[1], STDOUT_FILENO);
    close(to_child[1]);
    close(from_child[0]);
    execl(self, self, "late_context", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  char c = 0;
  CLIENT_REQUIRE(read(from_child[0], &c, 1) == 1);  // its context is measured
  // Two chunks freed here: the other process's context holds them now (it took them beyond the
  // limit, which a context cannot be refused), so nothing more may be granted.
  for (int i = 0; i < 2 && !held.empty(); ++i) {
    CLIENT_CHECK(cuMemFree_v2(held.back()) == CUDA_SUCCESS);
    held.pop_back();
  }
  CUdeviceptr again = 0;
  const CUresult r = cuMemAlloc_v2(&again, k_chunk);
  if (r == CUDA_SUCCESS) held.push_back(again);
  // The driver holds this process's memory and the other's context.
  const std::uint64_t both = fake_cuda_physical_used(0) + ctx;
  std::printf("both processes hold %llu of %llu bytes; the allocation after the frees: %d\n",
              static_cast<unsigned long long>(both), static_cast<unsigned long long>(limit),
              static_cast<int>(r));
  CLIENT_CHECK(both <= limit);
  CLIENT_CHECK(r == CUDA_ERROR_OUT_OF_MEMORY);
  close(to_child[1]);
  int status = 0;
  CLIENT_CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
               WEXITSTATUS(status) == 0);
  for (CUdeviceptr p : held) CLIENT_CHECK(cuMemFree_v2(p) == CUDA_SUCCESS);
  return client::finish("client_nvml shared_over");
}

/// The other process of idle_pool: allocates \p bytes from its default pool (release threshold
/// 0), frees them, synchronises its stream (the driver gives the reserve back there), says so on
/// stdout, and idles until its stdin closes.
int pool_then_idle() {
  const std::uint64_t bytes = client::env_bytes("CLIENT_POOL_BYTES", 0);
  start();
  CUstream stream = nullptr;
  CLIENT_REQUIRE(cuStreamCreate(&stream, 0) == CUDA_SUCCESS);
  CUdeviceptr p = 0;
  CLIENT_REQUIRE(cuMemAllocAsync(&p, bytes, stream) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuMemFreeAsync(p, stream) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuStreamSynchronize(stream) == CUDA_SUCCESS);
  CLIENT_REQUIRE(fake_cuda_physical_used(0) == 0);  // the driver gave it all back
  CLIENT_REQUIRE(write(STDOUT_FILENO, "s", 1) == 1);
  char c = 0;
  while (read(STDIN_FILENO, &c, 1) > 0) {
  }
  return 0;
}

int idle_pool(const char* self) {
  const std::uint64_t limit = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  int to_child[2], from_child[2];
  CLIENT_REQUIRE(pipe(to_child) == 0 && pipe(from_child) == 0);
  const pid_t child = fork();
  CLIENT_REQUIRE(child >= 0);
  if (child == 0) {
    dup2(to_child[0], STDIN_FILENO);
    dup2(from_child[1], STDOUT_FILENO);
    close(to_child[1]);
    close(from_child[0]);
    execl(self, self, "pool_then_idle", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  char c = 0;
  CLIENT_REQUIRE(read(from_child[0], &c, 1) == 1);
  start();
  // The whole quota is free: the other process holds nothing on the device.
  CUdeviceptr all = 0;
  const CUresult r = cuMemAlloc_v2(&all, limit);
  std::printf("the whole quota after the other process's pool gave its reserve back: %d\n",
              static_cast<int>(r));
  CLIENT_CHECK(r == CUDA_SUCCESS);
  if (r == CUDA_SUCCESS) CLIENT_CHECK(cuMemFree_v2(all) == CUDA_SUCCESS);
  close(to_child[1]);
  int status = 0;
  CLIENT_CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
               WEXITSTATUS(status) == 0);
  return client::finish("client_nvml idle_pool");
}

int entry_points(const char* path) {
  constexpr int k_cuda13 = 13000;
  const std::uint64_t ctx_bytes = client::env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  const CUcontext primary = start();
  std::size_t free_b = 0, total_b = 0;
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);  // the primary measured
  const auto lookup = [](const char* name) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    const CUresult r =
        cuGetProcAddress_v2(name, &fn, k_cuda13, CU_GET_PROC_ADDRESS_DEFAULT, &found);
    return r == CUDA_SUCCESS && found == CU_GET_PROC_ADDRESS_SUCCESS ? fn : nullptr;
  };
  void* fake = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  CLIENT_REQUIRE(fake != nullptr);
  // The driver's own versioned functions, passed through.
  for (const char* v2 : {"cuMemAdvise_v2", "cuMemPrefetchAsync_v2", "cuDeviceGetUuid_v2"}) {
    const std::string base(v2, std::strlen(v2) - 3);
    CLIENT_CHECK(lookup(base.c_str()) == dlsym(fake, v2));
  }
  auto advise = reinterpret_cast<decltype(&cuMemAdvise_v2)>(lookup("cuMemAdvise"));
  auto prefetch = reinterpret_cast<decltype(&cuMemPrefetchAsync_v2)>(lookup("cuMemPrefetchAsync"));
  auto uuid = reinterpret_cast<decltype(&cuDeviceGetUuid_v2)>(lookup("cuDeviceGetUuid"));
  CLIENT_REQUIRE(advise != nullptr && prefetch != nullptr && uuid != nullptr);
  CUdeviceptr p = 0;
  CLIENT_REQUIRE(cuMemAllocManaged(&p, 1 << 20, CU_MEM_ATTACH_GLOBAL) == CUDA_SUCCESS);
  CUmemLocation dev0{};
  dev0.type = CU_MEM_LOCATION_TYPE_DEVICE;
  dev0.id = 0;
  CLIENT_CHECK(advise(p, 1 << 20, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, dev0) == CUDA_SUCCESS);
  CLIENT_CHECK(prefetch(p, 1 << 20, dev0, 0, nullptr) == CUDA_SUCCESS);
  CUuuid u{};
  CLIENT_CHECK(uuid(&u, 0) == CUDA_SUCCESS);
  CLIENT_CHECK(cuMemFree_v2(p) == CUDA_SUCCESS);
  // cuCtxCreate is the shim's: a second context on the device counts at the next call.
  void* const create_fn = lookup("cuCtxCreate");
  CLIENT_REQUIRE(create_fn != nullptr);
  CLIENT_CHECK(create_fn == dlsym(RTLD_DEFAULT, "cuCtxCreate_v4"));
  auto create = reinterpret_cast<decltype(&cuCtxCreate_v4)>(create_fn);
  CUcontext second = nullptr;
  CLIENT_REQUIRE(create(&second, nullptr, 0, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  std::printf("two contexts: the driver holds %llu, the ledger %llu\n",
              static_cast<unsigned long long>(fake_cuda_physical_used(0)),
              static_cast<unsigned long long>(ledger_used(path)));
  CLIENT_CHECK_EQ(fake_cuda_physical_used(0), 2 * ctx_bytes);
  CLIENT_CHECK_EQ(ledger_used(path), fake_cuda_physical_used(0));
  CLIENT_CHECK(cuCtxDestroy_v2(second) == CUDA_SUCCESS);
  CLIENT_CHECK(cuCtxSetCurrent(primary) == CUDA_SUCCESS);
  return client::finish("client_nvml entry_points");
}

int first_alloc() {
  const char* t0 = std::getenv("CLIENT_T0_NS");
  CLIENT_REQUIRE(t0 != nullptr);
  start();
  CUdeviceptr p = 0;
  CLIENT_REQUIRE(cuMemAlloc_v2(&p, std::size_t{1} << 20) == CUDA_SUCCESS);
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const long long ns = static_cast<long long>(now.tv_sec) * 1'000'000'000LL + now.tv_nsec -
                       std::strtoll(t0, nullptr, 10);
  std::printf("first_alloc_ns=%lld\n", ns);
  CLIENT_CHECK(cuMemFree_v2(p) == CUDA_SUCCESS);
  return client::failures() == 0 ? 0 : 1;
}

int pool_device(const char* path) {
  constexpr std::uint64_t k_bytes = std::uint64_t{16} << 20;
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext ctx1 = nullptr;
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&ctx1, 1) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(ctx1) == CUDA_SUCCESS);
  CUstream stream = nullptr;
  CLIENT_REQUIRE(cuStreamCreate(&stream, 0) == CUDA_SUCCESS);
  CUmemoryPool pool0 = nullptr;
  CLIENT_REQUIRE(cuDeviceGetDefaultMemPool(&pool0, 0) == CUDA_SUCCESS);
  CUdeviceptr p = 0;
  CLIENT_CHECK(cuMemAllocFromPoolAsync(&p, k_bytes, pool0, stream) == CUDA_SUCCESS);
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok() && snap->devices.size() >= 2);
  std::printf("driver: device 0 %llu, device 1 %llu; ledger: %llu, %llu\n",
              static_cast<unsigned long long>(fake_cuda_physical_used(0)),
              static_cast<unsigned long long>(fake_cuda_physical_used(1)),
              static_cast<unsigned long long>(snap->devices[0].used),
              static_cast<unsigned long long>(snap->devices[1].used));
  CLIENT_CHECK(fake_cuda_physical_used(0) >= k_bytes);
  CLIENT_CHECK_EQ(snap->devices[0].used, fake_cuda_physical_used(0));
  CLIENT_CHECK_EQ(snap->devices[1].used, fake_cuda_physical_used(1));
  CLIENT_CHECK(cuMemFreeAsync(p, stream) == CUDA_SUCCESS);
  CLIENT_CHECK(cuStreamSynchronize(stream) == CUDA_SUCCESS);
  return client::finish("client_nvml pool_device");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view mode = argc > 1 ? argv[1] : "";
  if (mode == "first_alloc") return first_alloc();  // also runs without the shim
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  CLIENT_REQUIRE(path != nullptr);
  if (mode == "quiet") return quiet();
  if (mode == "churn") return churn(path);
  if (mode == "in_flight") return in_flight(path);
  if (mode == "pool_device") return pool_device(path);
  if (mode == "shared_over") return shared_over(argv[0]);
  if (mode == "late_context") return late_context();
  if (mode == "idle_pool") return idle_pool(argv[0]);
  if (mode == "entry_points") return entry_points(path);
  if (mode == "pool_then_idle") return pool_then_idle();
  std::fprintf(stdout,
               "client_nvml: unknown scenario '%.*s' (quiet, churn, in_flight, pool_device, "
               "shared_over, idle_pool, entry_points)\n",
               static_cast<int>(mode.size()), mode.data());
  return 2;
}
