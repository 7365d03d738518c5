// Reserve+release throughput of the memory ledger against the design HAMi-core uses: one
// process-shared lock around the ledger, and a scan of the process slots to total a device's
// use on every allocation. Same region size, same machine, same run.
//
//   build/<dir>/bench/bench_ledger --benchmark_min_time=0.5
//
// Cases: 1 thread, 2 threads of one process, 2 processes on one file (the forked peer runs the
// same loop; the "total_pairs_per_s" counter includes its work).
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>

#include "gpuslice/memory/ledger.hpp"

namespace m = gpuslice::memory;

namespace {

constexpr std::uint64_t k_bytes = 4096;        // one reservation
constexpr std::uint64_t k_limit = 1ULL << 40;  // never the reason a reserve fails
constexpr int k_peer_report_every = 256;       // peer publishes its count this often
constexpr int k_baseline_active_slots = 8;     // processes HAMi's scan walks (proc_num)
constexpr int k_baseline_busy_slots = 64;      // ... in a container with many workers

/// Shared flags between the timed process and its forked peer.
struct peer_control {
  std::atomic<int> stop{0};
  std::atomic<int> ready{0};
  std::atomic<std::uint64_t> pairs{0};
};

peer_control* make_control() {
  void* p = ::mmap(nullptr, sizeof(peer_control), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return new (p) peer_control{};
}

std::string bench_path(const char* name) {
  return "/tmp/gpuslice-bench-" + std::to_string(::getpid()) + "-" + name;
}

// ---- the baseline: a lock and a slot scan, as in HAMi-core's shared region ----------------

/// HAMi-core keeps per process per device usage and sums it under a process-shared lock.
struct baseline_region {
  pthread_mutex_t lock;
  std::uint64_t limit[m::k_max_devices];
  std::int32_t proc_num;
  struct proc {
    std::int32_t pid;
    std::uint64_t used[m::k_max_devices];
  } procs[m::k_slot_count];
};

class baseline_ledger {
 public:
  explicit baseline_ledger(const std::string& path, bool create) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0600);
    if (create && ::ftruncate(fd, sizeof(baseline_region)) != 0) std::abort();
    r_ = static_cast<baseline_region*>(
        ::mmap(nullptr, sizeof(baseline_region), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ::close(fd);
    if (create) {
      pthread_mutexattr_t a;
      pthread_mutexattr_init(&a);
      pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
      pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
      pthread_mutex_init(&r_->lock, &a);
      r_->limit[0] = k_limit;
      r_->proc_num = k_baseline_active_slots;
      for (int i = 0; i < k_baseline_active_slots; ++i) r_->procs[i].pid = 1 + i;
    }
  }
  ~baseline_ledger() { ::munmap(r_, sizeof(baseline_region)); }

  /// Sets how many process entries the scan walks (HAMi's proc_num). Not thread-safe.
  void set_active(int n) {
    r_->proc_num = n;
    for (int i = 0; i < n; ++i) r_->procs[i].pid = 1 + i;
  }

  /// Slot i of the active ones (each benchmark thread/process uses its own).
  bool try_reserve(int slot, int dev, std::uint64_t bytes) {
    pthread_mutex_lock(&r_->lock);
    std::uint64_t total = 0;
    for (int i = 0; i < r_->proc_num; ++i) total += r_->procs[i].used[dev];
    const bool ok = total + bytes <= r_->limit[dev];
    if (ok) r_->procs[slot].used[dev] += bytes;
    pthread_mutex_unlock(&r_->lock);
    return ok;
  }
  void release(int slot, int dev, std::uint64_t bytes) {
    pthread_mutex_lock(&r_->lock);
    r_->procs[slot].used[dev] -= bytes;
    pthread_mutex_unlock(&r_->lock);
  }

 private:
  baseline_region* r_;
};

// ---- drivers ----------------------------------------------------------------------------

struct gpuslice_side {
  m::shared_ledger ledger;
  m::slot_handle slot;
  explicit gpuslice_side(const std::string& path)
      : ledger(std::move(m::shared_ledger::open(m::open_or_create, path).value())),
        slot(*ledger.attach()) {
    (void)ledger.device("GPU-bench", k_limit);
  }
  void pair(int) {
    if (!ledger.try_reserve(slot, 0, k_bytes)) std::abort();
    ledger.release(slot, 0, k_bytes);
  }
};

struct baseline_side {
  baseline_ledger ledger;
  baseline_side(const std::string& path, bool create) : ledger(path, create) {}
  void pair(int slot) {
    if (!ledger.try_reserve(slot, 0, k_bytes)) std::abort();
    ledger.release(slot, 0, k_bytes);
  }
};

template <class Side>
void threads_case(benchmark::State& state, Side& side) {
  const int slot = state.thread_index();
  for (auto _ : state) side.pair(slot);
  state.SetItemsProcessed(state.iterations());
}

gpuslice_side* g_gpuslice = nullptr;
baseline_side* g_baseline = nullptr;

void BM_gpuslice_threads(benchmark::State& state) {
  if (state.thread_index() == 0 && g_gpuslice == nullptr) {
    g_gpuslice = new gpuslice_side(bench_path("threads"));
  }
  threads_case(state, *g_gpuslice);
}

void BM_hami_mutex_scan_threads(benchmark::State& state) {
  if (state.thread_index() == 0) {
    if (g_baseline == nullptr) {
      g_baseline = new baseline_side(bench_path("baseline-threads"), true);
    }
    g_baseline->ledger.set_active(static_cast<int>(state.range(0)));
  }
  threads_case(state, *g_baseline);
}

/// Two processes on one file: a forked peer loops; this process is timed.
template <class MakeSide>
void two_processes(benchmark::State& state, const char* name, MakeSide make) {
  const std::string path = bench_path(name);
  auto* ctl = make_control();
  auto side = make(path, true);
  const pid_t peer = ::fork();
  if (peer == 0) {
    auto mine = make(path, false);
    ctl->ready = 1;
    std::uint64_t n = 0;
    while (ctl->stop.load(std::memory_order_relaxed) == 0) {
      mine->pair(1);
      if (++n % k_peer_report_every == 0) ctl->pairs.fetch_add(k_peer_report_every);
    }
    ::_exit(0);
  }
  while (ctl->ready.load() == 0) {
  }
  const auto peer_before = ctl->pairs.load();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) side->pair(0);
  const auto t1 = std::chrono::steady_clock::now();
  const auto peer_pairs = ctl->pairs.load() - peer_before;
  ctl->stop = 1;
  int status = 0;
  ::waitpid(peer, &status, 0);
  const double secs = std::chrono::duration<double>(t1 - t0).count();
  state.SetItemsProcessed(state.iterations());
  state.counters["total_pairs_per_s"] = static_cast<double>(state.iterations() + peer_pairs) / secs;
  ::munmap(ctl, sizeof(peer_control));
  ::unlink(path.c_str());
}

void BM_gpuslice_2_processes(benchmark::State& state) {
  two_processes(state, "procs",
                [](const std::string& p, bool) { return std::make_unique<gpuslice_side>(p); });
}

void BM_hami_mutex_scan_2_processes(benchmark::State& state) {
  two_processes(state, "baseline-procs", [](const std::string& p, bool create) {
    return std::make_unique<baseline_side>(p, create);
  });
}

}  // namespace

BENCHMARK(BM_gpuslice_threads)->Threads(1)->Threads(2)->UseRealTime();
// Arg: process entries the baseline's scan walks (8 typical, 64 a busy inference container).
BENCHMARK(BM_hami_mutex_scan_threads)
    ->Arg(k_baseline_active_slots)
    ->Arg(k_baseline_busy_slots)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();
BENCHMARK(BM_gpuslice_2_processes)->UseRealTime();
BENCHMARK(BM_hami_mutex_scan_2_processes)->UseRealTime();

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  for (const char* n : {"threads", "baseline-threads"}) ::unlink(bench_path(n).c_str());
  return 0;
}
