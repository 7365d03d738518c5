/// \file
/// Threads allocate and free concurrently under the shim: the ledger total never exceeds the
/// limit, neither does what the fake driver really holds, contention produces refusals
/// (OUT_OF_MEMORY) and successes, and when everything is freed the quota is whole again. Linked
/// against the fake libcuda.so.1. With the argument "async" the threads allocate from the
/// device's stream-ordered pool (each on its own stream, the pool keeping everything it frees),
/// so the pool's reserve and its trimming on refusal are under contention too.

#include <atomic>
#include <random>
#include <string_view>
#include <thread>
#include <vector>

#include "client.hpp"
#include "fake_driver.hpp"
#include "gpuslice/memory/ledger.hpp"

namespace {
constexpr int k_threads = 8;
constexpr int k_operations = 4000;
/// Allocations a thread holds at most: 16 of up to 4 MiB can exceed the 32 MiB limit even when
/// the scheduler runs the threads one after another, so refusals happen in any interleaving.
constexpr std::size_t k_max_held = 16;
constexpr std::uint64_t k_min_size = std::uint64_t{64} << 10;
constexpr std::uint64_t k_max_size = std::uint64_t{4} << 20;
}  // namespace

int main(int argc, char** argv) {
  const bool async = argc > 1 && std::string_view(argv[1]) == "async";
  const char* path = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  CLIENT_REQUIRE(path != nullptr);
  const std::uint64_t limit = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext ctx = nullptr;
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS);
  if (async) {
    CUmemoryPool pool = nullptr;
    CLIENT_REQUIRE(cuDeviceGetDefaultMemPool(&pool, 0) == CUDA_SUCCESS);
    cuuint64_t keep_all = ~cuuint64_t{0};
    CLIENT_REQUIRE(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all) ==
                   CUDA_SUCCESS);
  }

  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> peak{0};
  std::atomic<std::uint64_t> physical_peak{0};  // what the fake driver really holds
  std::atomic<long> ok{0}, refused{0}, other{0};
  std::atomic<int> ready{0};  // threads start together, so they contend
  std::thread watcher([&] {
    while (!done.load()) {
      auto snap = gpuslice::memory::read_snapshot(path);
      if (snap.ok() && !snap->devices.empty()) {
        const std::uint64_t seen = snap->devices[0].used;
        std::uint64_t prev = peak.load();
        while (seen > prev && !peak.compare_exchange_weak(prev, seen)) {
        }
      }
      const std::uint64_t held = fake_cuda_physical_used(0);
      std::uint64_t prev = physical_peak.load();
      while (held > prev && !physical_peak.compare_exchange_weak(prev, held)) {
      }
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < k_threads; ++t) {
    workers.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < k_threads) std::this_thread::yield();
      CUstream stream = nullptr;
      if (cuCtxSetCurrent(ctx) != CUDA_SUCCESS ||
          (async && cuStreamCreate(&stream, 0) != CUDA_SUCCESS)) {
        other.fetch_add(1);
        return;
      }
      const auto release = [&](CUdeviceptr p) {
        return async ? cuMemFreeAsync(p, stream) : cuMemFree_v2(p);
      };
      std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 1);
      std::uniform_int_distribution<std::uint64_t> size(k_min_size, k_max_size);
      std::vector<CUdeviceptr> held;
      for (int i = 0; i < k_operations; ++i) {
        if (held.size() == k_max_held || (!held.empty() && rng() % 2 == 0)) {
          const std::size_t at = rng() % held.size();
          if (release(held[at]) != CUDA_SUCCESS) other.fetch_add(1);
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(at));
          continue;
        }
        CUdeviceptr p = 0;
        const CUresult r =
            async ? cuMemAllocAsync(&p, size(rng), stream) : cuMemAlloc_v2(&p, size(rng));
        if (r == CUDA_SUCCESS) {
          held.push_back(p);
          ok.fetch_add(1);
        } else if (r == CUDA_ERROR_OUT_OF_MEMORY) {
          refused.fetch_add(1);
        } else {
          other.fetch_add(1);
        }
      }
      for (CUdeviceptr p : held) {
        if (release(p) != CUDA_SUCCESS) other.fetch_add(1);
      }
      if (async && (cuStreamSynchronize(stream) != CUDA_SUCCESS ||
                    cuStreamDestroy_v2(stream) != CUDA_SUCCESS)) {
        other.fetch_add(1);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  done.store(true);
  watcher.join();

  std::printf("allocations %ld, refusals %ld, peak %llu of %llu bytes\n", ok.load(), refused.load(),
              static_cast<unsigned long long>(peak.load()), static_cast<unsigned long long>(limit));
  std::printf("the fake driver held at most %llu bytes\n",
              static_cast<unsigned long long>(physical_peak.load()));
  CLIENT_CHECK(peak.load() <= limit);
  CLIENT_CHECK(physical_peak.load() <= limit);
  CLIENT_CHECK(ok.load() > 0);
  CLIENT_CHECK(refused.load() > 0);
  CLIENT_CHECK_EQ(other.load(), 0);
  CLIENT_REQUIRE(cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
  size_t free_b = 0, total_b = 0;
  CLIENT_CHECK(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  // Charged = held: nothing for plain allocations, the pool's kept reserve for async ones.
  CLIENT_CHECK_EQ(limit - free_b, fake_cuda_physical_used(0));
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok());
  CLIENT_CHECK_EQ(snap->devices[0].used, fake_cuda_physical_used(0));
  if (!async) CLIENT_CHECK_EQ(free_b, limit);
  return client::finish("client_storm");
}
