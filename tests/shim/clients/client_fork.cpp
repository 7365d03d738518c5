/// \file
/// Several processes share one ledger file under the shim: children made by fork() each get
/// their own slot, together they never exceed the limit, and the quota of a child killed with
/// SIGKILL comes back to the parent after a reap. Linked against the fake libcuda.so.1 and run
/// under LD_PRELOAD=libgpuslice.so with CUDA_DEVICE_MEMORY_SHARED_CACHE set, or unset: then the
/// processes share the documented default ledger, /tmp/gpuslice.ledger.

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "client.hpp"
#include "gpuslice/memory/ledger.hpp"

namespace {

constexpr std::uint64_t k_chunk = std::uint64_t{4} << 20;
constexpr int k_children = 3;

struct child_proc {
  pid_t pid = 0;
  int report = -1;  ///< read end: the child writes how many chunks it holds
  int hold = -1;    ///< write end: closing it lets the child free and exit
  long chunks = 0;
};

void use_device0() {
  CLIENT_REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext ctx = nullptr;
  CLIENT_REQUIRE(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS);
  CLIENT_REQUIRE(cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
}

[[noreturn]] void child_main(int report, int hold) {
  use_device0();
  std::vector<CUdeviceptr> held;
  for (;;) {
    CUdeviceptr p = 0;
    const CUresult r = cuMemAlloc_v2(&p, k_chunk);
    if (r != CUDA_SUCCESS) {
      if (r != CUDA_ERROR_OUT_OF_MEMORY) _exit(4);
      break;
    }
    held.push_back(p);
    std::this_thread::yield();  // let the siblings interleave
  }
  const long n = static_cast<long>(held.size());
  if (write(report, &n, sizeof n) != static_cast<ssize_t>(sizeof n)) _exit(5);
  char c = 0;
  while (read(hold, &c, 1) > 0) {
  }
  for (CUdeviceptr p : held) {
    if (cuMemFree_v2(p) != CUDA_SUCCESS) _exit(6);
  }
  _exit(0);
}

}  // namespace

int main() {
  const char* named = std::getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
  const char* path = named != nullptr ? named : "/tmp/gpuslice.ledger";
  const std::uint64_t limit = client::env_bytes("CUDA_DEVICE_MEMORY_LIMIT", 0);
  CLIENT_REQUIRE(limit % k_chunk == 0);

  // The parent touches no CUDA before forking, as a CUDA program must.
  std::vector<child_proc> kids(k_children);
  for (child_proc& k : kids) {
    int report[2], hold[2];
    CLIENT_REQUIRE(pipe(report) == 0 && pipe(hold) == 0);
    k.pid = fork();
    CLIENT_REQUIRE(k.pid >= 0);
    if (k.pid == 0) {
      close(report[0]);
      close(hold[1]);
      // Only the parent may hold a sibling's pipe ends, or closing them would not end it.
      for (const child_proc& sibling : kids) {
        if (sibling.pid == 0) break;
        close(sibling.report);
        close(sibling.hold);
      }
      child_main(report[1], hold[0]);
    }
    close(report[1]);
    close(hold[0]);
    k.report = report[0];
    k.hold = hold[1];
  }

  // Watch the ledger while the children fill it: the total never exceeds the limit.
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> peak{0};
  std::atomic<int> samples{0};
  std::thread watcher([&] {
    while (!done.load()) {
      auto snap = gpuslice::memory::read_snapshot(path);
      if (snap.ok() && !snap->devices.empty()) {
        std::uint64_t seen = snap->devices[0].used;
        std::uint64_t prev = peak.load();
        while (seen > prev && !peak.compare_exchange_weak(prev, seen)) {
        }
        samples.fetch_add(1);
      }
      std::this_thread::yield();
    }
  });
  long total = 0;
  for (child_proc& k : kids) {
    CLIENT_REQUIRE(read(k.report, &k.chunks, sizeof k.chunks) ==
                   static_cast<ssize_t>(sizeof k.chunks));
    total += k.chunks;
  }
  // The children hold everything until released, so the ledger's state now is their peak: make
  // sure the watcher saw it at least once (fast children can finish before its first reading).
  const int seen_before = samples.load();
  for (int i = 0; i < 5000 && samples.load() <= seen_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  done.store(true);
  watcher.join();
  CLIENT_CHECK(samples.load() > 0);
  CLIENT_CHECK(peak.load() <= limit);
  // Each child stopped at its first refusal with all memory held: together exactly the limit.
  CLIENT_CHECK_EQ(static_cast<std::uint64_t>(total) * k_chunk, limit);

  // Each child has its own slot, holding what it allocated.
  auto snap = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(snap.ok());
  CLIENT_CHECK_EQ(snap->devices[0].used, limit);
  for (const child_proc& k : kids) {
    std::uint64_t in_slot = 0;
    int slots = 0;
    for (const auto& p : snap->processes) {
      if (p.pid == k.pid) {
        ++slots;
        in_slot = p.used[0];
      }
    }
    CLIENT_CHECK(slots == (k.chunks > 0 ? 1 : 0) || slots == 1);
    CLIENT_CHECK_EQ(in_slot, static_cast<std::uint64_t>(k.chunks) * k_chunk);
  }

  // Kill the child holding the most; its quota comes back after a reap, here triggered by the
  // parent's own allocation that would not fit otherwise.
  auto victim = std::max_element(
      kids.begin(), kids.end(),
      [](const child_proc& a, const child_proc& b) { return a.chunks < b.chunks; });
  CLIENT_REQUIRE(victim->chunks > 0);
  kill(victim->pid, SIGKILL);
  int status = 0;
  CLIENT_REQUIRE(waitpid(victim->pid, &status, 0) == victim->pid);
  CLIENT_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  auto dead = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(dead.ok());
  CLIENT_CHECK_EQ(dead->devices[0].used, limit);  // not yet reaped: nobody needed the bytes
  use_device0();
  size_t free_b = 0, total_b = 0;
  CLIENT_CHECK(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(total_b, limit);
  CUdeviceptr p = 0;
  const std::uint64_t reclaim = static_cast<std::uint64_t>(victim->chunks) * k_chunk;
  CLIENT_CHECK_EQ(cuMemAlloc_v2(&p, reclaim), CUDA_SUCCESS);
  CLIENT_CHECK_EQ(cuMemAlloc_v2(&p, k_chunk), CUDA_ERROR_OUT_OF_MEMORY);
  CLIENT_CHECK(cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS);
  CLIENT_CHECK_EQ(free_b, 0u);

  for (child_proc& k : kids) {
    close(k.hold);
    close(k.report);
    if (k.pid == victim->pid) continue;
    CLIENT_REQUIRE(waitpid(k.pid, &status, 0) == k.pid);
    CLIENT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  auto after = gpuslice::memory::read_snapshot(path);
  CLIENT_REQUIRE(after.ok());
  CLIENT_CHECK_EQ(after->devices[0].used, reclaim);  // only the parent's allocation remains
  return client::finish("client_fork");
}
