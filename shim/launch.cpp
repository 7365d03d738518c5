/// \file
/// Every launch path through the SM limiter: cuLaunchKernel[_ptsz], cuLaunchKernelEx[_ptsz],
/// cuLaunchCooperativeKernel[_ptsz], cuLaunchCooperativeKernelMultiDevice, cuGraphLaunch[_ptsz]
/// and the legacy cuLaunch, cuLaunchGrid and cuLaunchGridAsync are admitted by the device's
/// sm_limiter before they reach the driver. Graphs are charged by
/// their own learned cost (the graph exec is the "function"), cooperative kernels like any other.
///
/// Per device, the limiter's bucket lives in the container's ledger (its rate words), so every
/// process of the container draws from one bucket. Its share is the ledger's SM field, which the
/// first process stores from CUDA_DEVICE_SM_LIMIT and `gpuslice set-limit` changes: a launch on a
/// capped device reads that field (one load from the shared mapping) and applies a change at
/// once; the watcher reads it every tick for every device.
///
/// Fast path: while no visible device is capped, every launch checks one process-wide flag and
/// calls the driver; it asks the driver nothing (not even which device the stream is on), so
/// its cost does not grow with the number of GPUs. The flag is set once every visible device has
/// its gate, none is capped and the watcher runs; the watcher clears it within one tick of a cap
/// appearing in the ledger (a cap set on an uncapped process holds from then on). A launch on
/// the fast path counts as activity on each of the process's devices in the node region.
///
/// Learning: one launch in k_sample_every per thread (and the first), and every launch of a
/// kernel the limiter has not learned yet (admission::learn), is bracketed by two
/// events recorded on its own stream; a watcher thread reads the elapsed time when the second
/// event has completed and feeds it to the limiter. Recording events neither synchronises
/// anything nor orders the program's streams against each other.
///
/// Stream capture: the watcher puts its own thread in CU_STREAM_CAPTURE_MODE_RELAXED before its
/// first driver call. A "potentially unsafe" call (cuEventQuery) from a thread in the default
/// global mode while another thread captures in global mode (torch.cuda.graph's default) would
/// invalidate that capture; in relaxed mode it does not. Where the mode cannot be set, the
/// watcher makes no driver call and no launch is timed. The same thread feeds NVML's
/// per-process SM utilization as the slow correction, stamps this tenant active in the node
/// region (GPUSLICE_NODE_REGION) and reads the other tenants' stamps.
///
/// Failing closed: with an invalid configuration, an unusable ledger, a device the shim could
/// not register or refused limiter words, launches are refused (CUDA_ERROR_NOT_PERMITTED) with
/// one log line; they are never let through uncapped.

#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gpuslice/rate/limiter.hpp"
#include "gpuslice/rate/node_region.hpp"
#include "shim.hpp"

namespace gpuslice::shim::detail {

#define GPUSLICE_X(sym, base, since, stream, lib, type) using sym##_fn = type;
GPUSLICE_LAUNCH_HOOKS(GPUSLICE_X)
#undef GPUSLICE_X

namespace {

using limiter_t = rate::sm_limiter<rate::steady_clock_ns, std::atomic<std::uint64_t>>;

/// One launch per thread in this many (and each thread's first) is timed with events.
constexpr std::uint32_t k_sample_every = 32;
/// Timed launches whose events have not completed yet, at most (more are not timed).
constexpr std::size_t k_max_pending_samples = 256;
/// Spare events kept per context.
constexpr std::size_t k_max_spare_events = 64;
/// Period of the watcher: node-region stamps and peers, completed samples.
constexpr std::int64_t k_tick_ns = 10'000'000;
/// Period of the utilization correction from NVML.
constexpr std::int64_t k_utilization_period_ns = 200'000'000;
/// Oldest NVML sample timestamp (us before the read) taken at its word; older ones, or a clock
/// the shim cannot tell, end the window at the read.
constexpr std::int64_t k_max_sample_age_us = 10'000'000;
/// NVML per-process samples read per query.
constexpr unsigned k_utilization_batch = 64;
/// Percent above which a share is no cap (the ledger stores 100 for "explicitly none").
constexpr std::uint32_t k_full_percent = 100;
constexpr std::int64_t k_ns_per_us = 1'000;
constexpr double k_ns_per_ms = 1e6;
constexpr std::int64_t k_ns_per_s = 1'000'000'000;

/// The calling thread's launches, for sampling (initial-exec: no TLS call on the launch path).
thread_local std::uint32_t t_launches __attribute__((tls_model("initial-exec"))) = 0;

/// True while no visible device is capped, each has its gate and the watcher runs: launches go
/// straight to the driver (see the file comment). Constant-initialised, so reading it is one
/// load with no guard.
std::atomic<bool> g_fast{false};
/// A launch took the fast path since the watcher's last node-region stamp.
std::atomic<bool> g_fast_launched{false};

/// The fast path's test, made by every launch before anything else. Thread-safe.
inline bool fast_path() noexcept {
  if (!g_fast.load(std::memory_order_acquire)) return false;
  if (!g_fast_launched.load(std::memory_order_relaxed)) {
    g_fast_launched.store(true, std::memory_order_relaxed);
  }
  return true;
}

std::int64_t now_ns() noexcept { return rate::steady_clock_ns{}.now(); }

void sleep_ns(std::int64_t ns) noexcept {
  timespec ts{static_cast<time_t>(ns / k_ns_per_s), static_cast<long>(ns % k_ns_per_s)};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/// One device as the launch path sees it.
struct device_gate {
  int ordinal = -1;
  int index = -1;                       ///< ledger device index
  std::unique_ptr<limiter_t> limiter;   ///< over the ledger's rate words
  std::atomic<std::uint32_t> raw{~0u};  ///< the ledger's SM field last applied
  std::atomic<bool> bypass{true};       ///< no cap in force: launches skip the limiter
  std::atomic<bool> launched{false};    ///< a launch since the watcher's last stamp
  std::uint32_t percent = 0;            ///< the cap in force (0 = none); under the mutex
  rate::tenant_handle tenant;           ///< node-region record; watcher and mutex holders only
  nvmlDevice_t nvml = nullptr;          ///< for the utilization correction; watcher only
  bool nvml_tried = false;              ///< watcher only
  unsigned long long nvml_seen = 0;     ///< last NVML sample timestamp read; watcher only
};

/// A launch bracketed by two events, waiting for the second to complete.
struct pending_sample {
  device_gate* gate;
  std::uint64_t function;
  CUcontext ctx;
  CUevent start;
  CUevent end;
  std::int64_t call_ns;  ///< how long the launch call took on the host (limiter::observe)
};

/// The launch path's state: the gates, the event pools, the samples, the node region and the
/// watcher thread. Created on first launch; never destroyed (launches may come from other
/// libraries' destructors at exit).
class launch_control {
 public:
  static launch_control& get() noexcept {
    static launch_control* const instance = new launch_control;
    return *instance;
  }

  /// The gate of CUDA ordinal \p ordinal, created on first use; null when the device cannot be
  /// limited (the caller refuses the launch). Thread-safe.
  device_gate* gate(state& s, int ordinal) noexcept {
    if (ordinal >= 0 && ordinal < k_max_devices) {
      device_gate* g = gates_[static_cast<std::size_t>(ordinal)].load(std::memory_order_acquire);
      if (g != nullptr) return g;
    }
    return create_gate(s, ordinal);
  }

  /// Applies a new value \p raw of the ledger's SM field to \p g. Thread-safe (slow path).
  void apply(state& s, device_gate& g, std::uint32_t raw) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    apply_locked(s, g, raw);
  }

  /// A launch being timed: its start event is recorded, its end event not yet.
  struct open_sample {
    device_gate* gate = nullptr;
    std::uint64_t function = 0;
    CUstream stream = nullptr;
    CUcontext ctx = nullptr;
    CUevent start = nullptr;
    CUevent end = nullptr;
    bool per_thread = false;
    std::int64_t call_ns = 0;  ///< the launch call's host time, once it returned
  };

  /// Records a start event on \p stream (in the current context) for a launch of \p function;
  /// false when events cannot be had (the launch then goes untimed). Thread-safe.
  bool begin_sample(state& s, device_gate& g, std::uint64_t function, CUstream stream,
                    bool per_thread, open_sample& out) noexcept {
    auto get_ctx = s.helper_fn<decltype(&::cuCtxGetCurrent)>(helper::cuCtxGetCurrent);
    auto record = recorder(s, per_thread);
    CUcontext ctx = nullptr;
    if (get_ctx == nullptr || record == nullptr || get_ctx(&ctx) != CUDA_SUCCESS ||
        ctx == nullptr) {
      return false;
    }
    out = open_sample{&g, function, stream, ctx, nullptr, nullptr, per_thread};
    if (!take_events(s, ctx, out.start, out.end)) return false;
    if (record(out.start, stream) != CUDA_SUCCESS) {  // e.g. a stream of another context
      give_events(s, ctx, out.start, out.end);
      return false;
    }
    return true;
  }

  /// Records the end event of \p o after its launch returned \p launched, and queues the pair
  /// for the watcher. Thread-safe.
  void end_sample(state& s, const open_sample& o, CUresult launched) noexcept {
    auto record = recorder(s, o.per_thread);
    if (launched != CUDA_SUCCESS || record(o.end, o.stream) != CUDA_SUCCESS) {
      destroy_event(s, o.start);  // recorded: the driver frees it once it completes
      give_events(s, o.ctx, nullptr, o.end);
      return;
    }
    try {
      std::lock_guard<std::mutex> lock(samples_mu_);
      samples_.push_back(pending_sample{o.gate, o.function, o.ctx, o.start, o.end, o.call_ns});
      pending_.store(samples_.size(), std::memory_order_relaxed);
    } catch (...) {
      destroy_event(s, o.start);
      destroy_event(s, o.end);
    }
  }

  /// A timed launch on \p stream: start event, \p launch(), end event; untimed whenever events
  /// cannot be had. Thread-safe.
  template <class Launch>
  CUresult timed(state& s, device_gate& g, std::uint64_t function, CUstream stream, bool per_thread,
                 Launch&& launch) noexcept {
    open_sample o;
    if (!begin_sample(s, g, function, stream, per_thread, o)) return launch();
    // The call's host time: a first launch that loads its module does it in here, between the
    // events (see sm_limiter::observe).
    const std::int64_t called = now_ns();
    const CUresult r = launch();
    o.call_ns = now_ns() - called;
    end_sample(s, o, r);
    return r;
  }

  /// After fork, in the child: starts the child's own watcher on its first launch (the parent's
  /// thread did not survive the fork). Thread-safe; one relaxed load when there is nothing to do.
  void restart_after_fork(state& s) noexcept {
    if (!restart_watcher_.load(std::memory_order_relaxed)) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (!restart_watcher_.exchange(false, std::memory_order_relaxed)) return;
    bool needed = false;
    for (auto& slot : gates_) needed = needed || slot.load(std::memory_order_relaxed) != nullptr;
    if (needed) start_watcher(s);
  }

  /// After a launch on an uncapped device: creates the gates of the other visible devices and
  /// turns the fast path on when none is capped. Does its work once. Thread-safe.
  void try_fast(state& s) noexcept {
    if (fast_tried_.load(std::memory_order_relaxed)) return;
    if (fast_tried_.exchange(true, std::memory_order_relaxed)) return;
    const int count = s.device_count();
    for (int i = 0; i < count; ++i) {
      if (gate(s, i) == nullptr) return;  // a device that refuses launches: no fast path
    }
    std::lock_guard<std::mutex> lock(mu_);
    all_gates_ = true;
    refresh_fast_locked(s);
  }

  /// True when the calling thread's next launch should be timed: one in k_sample_every, and
  /// every one the limiter asks to \p learn from. Thread-safe.
  bool sample_now(bool learn = false) noexcept {
    if ((t_launches++ % k_sample_every) != 0 && !learn) return false;
    if (!timing_.load(std::memory_order_relaxed)) return false;
    return pending_.load(std::memory_order_relaxed) < k_max_pending_samples;
  }

  /// Fork handlers: the child keeps no watcher, samples, events or node-region records of the
  /// parent (they belong to the parent's contexts and pid).
  void before_fork() noexcept {
    mu_.lock();
    samples_mu_.lock();
    pool_mu_.lock();
  }
  void after_fork_parent() noexcept {
    pool_mu_.unlock();
    samples_mu_.unlock();
    mu_.unlock();
  }
  void after_fork_child() noexcept {
    g_fast.store(false, std::memory_order_relaxed);  // until the child's watcher runs
    samples_.clear();
    pool_.clear();
    pending_.store(0, std::memory_order_relaxed);
    watcher_started_ = false;
    start_time_ = 0;  // the child's own, read on its next join (no /proc read in a fork handler)
    restart_watcher_.store(true, std::memory_order_relaxed);
    for (auto& slot : gates_) {
      if (device_gate* g = slot.load(std::memory_order_relaxed)) {
        g->tenant = rate::tenant_handle{};
        g->nvml_seen = 0;
      }
    }
    pool_mu_.unlock();
    samples_mu_.unlock();
    mu_.unlock();
  }

 private:
  launch_control() = default;

  /// The cap (percent, 0 = none) that the ledger's SM field \p raw means for \p ordinal: 0 is
  /// unset (the environment's cap), 100 explicitly none.
  static std::uint32_t effective_percent(const config& cfg, int ordinal, std::uint32_t raw) {
    if (raw == 0) return cfg.sm_percent[static_cast<std::size_t>(ordinal)];
    return raw >= k_full_percent ? 0 : raw;
  }

  /// apply() with mu_ held.
  void apply_locked(state& s, device_gate& g, std::uint32_t raw) noexcept {
    if (g.raw.load(std::memory_order_relaxed) == raw) return;
    const config& cfg = s.configuration();
    const std::uint32_t pct = effective_percent(cfg, g.ordinal, raw);
    g.limiter->set_settings({static_cast<double>(pct), cfg.policy, cfg.priority});
    g.percent = pct;
    if (region_) region_->update(g.tenant, cfg.priority, pct);
    const bool bypass = pct == 0 || cfg.policy == utilization_policy::disable;
    // Launches that bypassed the limiter were never charged: the utilization they caused must
    // not be read as a correction of the charges once the cap holds again.
    if (!bypass && g.bypass.load(std::memory_order_relaxed)) g.limiter->restart_feedback(now_ns());
    g.bypass.store(bypass, std::memory_order_release);
    g.raw.store(raw, std::memory_order_release);
    refresh_fast_locked(s);
    s.log(log_level::info, "device {}: SM share {}", g.ordinal,
          pct == 0 ? std::string("unlimited") : fmt::format("{}%", pct));
  }

  /// Turns the fast path on when every visible device has its gate, none is capped and the
  /// watcher runs; off otherwise. Holds mu_.
  void refresh_fast_locked(state& s) noexcept {
    bool fast = all_gates_ && watcher_started_ && !restart_watcher_.load(std::memory_order_relaxed);
    const int count = s.device_count();
    for (int i = 0; fast && i < count; ++i) {
      const device_gate* g = gates_[static_cast<std::size_t>(i)].load(std::memory_order_relaxed);
      fast = g != nullptr && g->bypass.load(std::memory_order_relaxed);
    }
    g_fast.store(fast, std::memory_order_release);
  }

  device_gate* create_gate(state& s, int ordinal) noexcept {
    if (!s.closed_reason().empty()) return nullptr;
    const int count = s.device_count();
    const device_info* d = s.device(ordinal);
    if (ordinal < 0 || ordinal >= count || d == nullptr || !d->usable) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = gates_[static_cast<std::size_t>(ordinal)];
    if (device_gate* g = slot.load(std::memory_order_acquire)) return g;
    try {
      auto g = std::make_unique<device_gate>();
      g->ordinal = ordinal;
      g->index = d->index;
      std::atomic<std::uint64_t>* words = s.rate_words(d->index);
      if (words == nullptr) return nullptr;
      const config& cfg = s.configuration();
      const std::uint32_t raw0 = s.ledger_sm_limit(d->index);
      g->percent = effective_percent(cfg, ordinal, raw0);
      g->limiter = std::make_unique<limiter_t>(
          words, rate::limiter_settings{static_cast<double>(g->percent), cfg.policy, cfg.priority});
      g->raw.store(raw0, std::memory_order_relaxed);
      g->bypass.store(g->percent == 0 || cfg.policy == utilization_policy::disable,
                      std::memory_order_relaxed);
      if (!g->limiter->ok()) {
        s.log(log_level::error, "device {}: the ledger's limiter words are refused: {}", ordinal,
              g->limiter->error_message());
        return nullptr;
      }
      if (!once_) init_once(s);
      if (region_) {
        join(s, *g, d->uuid);
      } else {
        // Without a node region nobody can tell this tenant it is alone: `default` caps, as
        // HAMi's does without its monitor, and priority has no peers to yield to.
        g->limiter->set_others_active(true, false);
      }
      device_gate* made = g.release();
      slot.store(made, std::memory_order_release);
      // The watcher learns costs for a capped device, keeps the node-region stamps and notices
      // a cap set on an uncapped device (the fast path reads nothing per launch).
      start_watcher(s);
      return made;
    } catch (...) {
      s.log(log_level::error, "device {}: out of memory while preparing its limiter", ordinal);
      return nullptr;
    }
  }

  /// This process's start time, as the ledger records it (0 when /proc cannot tell).
  static std::uint64_t own_start_time() noexcept {
    const memory::proc_liveness live;
    return live.probe(live.self_pid()).start_time;
  }

  /// Opens the node region and computes this container's key. Holds mu_.
  void init_once(state& s) {
    once_ = true;
    pthread_atfork([] { get().before_fork(); }, [] { get().after_fork_parent(); },
                   [] { get().after_fork_child(); });
    const config& cfg = s.configuration();
    start_time_ = own_start_time();
    // The container is its ledger file (named, or the default one), so every process that
    // shares the quota counts as one tenant in the node region.
    const std::string& ledger = s.ledger_path();
    struct stat st {};
    if (!ledger.empty() && ::stat(ledger.c_str(), &st) == 0) {
      container_ = rate::container_key(static_cast<std::uint64_t>(st.st_dev),
                                       static_cast<std::uint64_t>(st.st_ino));
    } else {
      container_ = rate::container_key(static_cast<std::uint64_t>(::getpid()), start_time_);
    }
    if (cfg.node_region.empty()) return;
    auto r = rate::node_region::open(cfg.node_region);
    if (!r) {
      s.log(log_level::warn, "{}={}: {}; the default policy caps as if others were active",
            env::node_region, cfg.node_region, r.message());
      return;
    }
    region_.emplace(std::move(*r));
  }

  /// Registers \p g's tenant in the node region. Holds mu_.
  void join(state& s, device_gate& g, const std::string& uuid) {
    const config& cfg = s.configuration();
    if (start_time_ == 0) {
      start_time_ = own_start_time();
    }
    auto h = region_->join(rate::device_key(uuid), container_, cfg.priority, g.percent,
                           static_cast<std::int32_t>(::getpid()), start_time_, now_ns());
    if (!h) {
      s.log(log_level::warn, "device {}: {}; the default policy caps as if others were active",
            g.ordinal, h.message());
      g.limiter->set_others_active(true, false);
      return;
    }
    g.tenant = *h;
    const auto p = region_->peers(g.tenant, now_ns());
    g.limiter->set_others_active(p.others_active, p.high_others_active);
  }

  void start_watcher(state& s) {
    if (watcher_started_) return;
    watcher_started_ = true;
    try {
      std::thread([this] { watch(); }).detach();
    } catch (...) {
      watcher_started_ = false;
      s.log(log_level::warn, "cannot start the limiter's watcher thread; costs are not learned");
    }
  }

  /// The watcher: never returns. Runs with its own re-entry guard held, so the driver calls it
  /// makes are never taken for the program's.
  void watch() noexcept {
    reentry_guard guard;
    state& s = state::get();
    relax_capture_mode(s);
    std::int64_t next_utilization = now_ns() + k_utilization_period_ns;
    for (;;) {
      sleep_ns(k_tick_ns);
      const std::int64_t now = now_ns();
      if (timing_.load(std::memory_order_relaxed)) collect(s);
      std::vector<device_gate*> gates;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& slot : gates_) {
          if (device_gate* g = slot.load(std::memory_order_relaxed)) gates.push_back(g);
        }
        const bool fast_launched = g_fast_launched.exchange(false, std::memory_order_relaxed);
        for (device_gate* g : gates) {
          if (fast_launched) g->launched.store(true, std::memory_order_relaxed);
          // A process that only waits still sees a new cap (for its node-region record).
          const std::uint32_t raw = s.ledger_sm_limit(g->index);
          if (raw != g->raw.load(std::memory_order_relaxed)) apply_locked(s, *g, raw);
          if (!region_) continue;
          if (!g->tenant.valid()) join(s, *g, s.device(g->ordinal)->uuid);
          if (!g->tenant.valid()) continue;
          if (g->launched.exchange(false, std::memory_order_relaxed))
            region_->stamp(g->tenant, now);
          const auto p = region_->peers(g->tenant, now);
          g->limiter->set_others_active(p.others_active, p.high_others_active);
        }
        refresh_fast_locked(s);
      }
      if (now >= next_utilization) {
        next_utilization = now + k_utilization_period_ns;
        for (device_gate* g : gates) utilization(s, *g, now);
      }
    }
  }

  /// Puts the watcher's thread in relaxed stream-capture mode, so that its driver calls never
  /// invalidate a global-mode capture of the program's; where that fails, launches are no longer
  /// timed and the watcher makes no driver call. Watcher only, once.
  void relax_capture_mode(state& s) noexcept {
    auto exchange = s.helper_fn<decltype(&::cuThreadExchangeStreamCaptureMode)>(
        helper::cuThreadExchangeStreamCaptureMode);
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    const CUresult r = exchange != nullptr ? exchange(&mode) : CUDA_ERROR_NOT_FOUND;
    if (r == CUDA_SUCCESS) return;
    timing_.store(false, std::memory_order_relaxed);
    s.log(log_level::warn,
          "cuThreadExchangeStreamCaptureMode failed ({}): kernel costs are not timed, so that "
          "the limiter's watcher never invalidates a stream capture",
          static_cast<int>(r));
  }

  /// Feeds completed timed launches to their limiters. Watcher only.
  void collect(state& s) noexcept {
    auto query = s.helper_fn<decltype(&::cuEventQuery)>(helper::cuEventQuery);
    auto elapsed = s.helper_fn<decltype(&::cuEventElapsedTime_v2)>(helper::cuEventElapsedTime_v2);
    auto set_ctx = s.helper_fn<decltype(&::cuCtxSetCurrent)>(helper::cuCtxSetCurrent);
    std::vector<pending_sample> batch;
    {
      std::lock_guard<std::mutex> lock(samples_mu_);
      batch.swap(samples_);
    }
    if (batch.empty()) return;  // no driver call when there is nothing to read
    std::vector<pending_sample> keep;
    for (const pending_sample& p : batch) {
      if (query == nullptr || elapsed == nullptr || set_ctx == nullptr ||
          set_ctx(p.ctx) != CUDA_SUCCESS) {
        destroy_event(s, p.start);
        destroy_event(s, p.end);
        continue;
      }
      const CUresult q = query(p.end);
      if (q == CUDA_ERROR_NOT_READY) {
        keep.push_back(p);
        continue;
      }
      float ms = 0.0f;
      if (q == CUDA_SUCCESS && elapsed(&ms, p.start, p.end) == CUDA_SUCCESS && ms >= 0.0f) {
        p.gate->limiter->observe(p.function,
                                 static_cast<std::int64_t>(static_cast<double>(ms) * k_ns_per_ms),
                                 p.call_ns, now_ns());
      }
      give_events(s, p.ctx, p.start, p.end);
    }
    if (set_ctx != nullptr) set_ctx(nullptr);
    std::lock_guard<std::mutex> lock(samples_mu_);
    samples_.insert(samples_.end(), keep.begin(), keep.end());
    pending_.store(samples_.size(), std::memory_order_relaxed);
  }

  /// Feeds NVML's per-process SM utilization of this process to \p g's limiter. Watcher only.
  void utilization(state& s, device_gate& g, std::int64_t now) noexcept {
    if (!g.nvml_tried) {
      g.nvml_tried = true;
      const bool loaded = s.nvml_loaded();  // before the lookup: it fills the helpers
      auto by_uuid =
          s.helper_fn<decltype(&::nvmlDeviceGetHandleByUUID)>(helper::nvmlDeviceGetHandleByUUID);
      if (!loaded || by_uuid == nullptr ||
          by_uuid(s.device(g.ordinal)->uuid.c_str(), &g.nvml) != NVML_SUCCESS) {
        g.nvml = nullptr;
      }
    }
    auto util = s.helper_fn<decltype(&::nvmlDeviceGetProcessUtilization)>(
        helper::nvmlDeviceGetProcessUtilization);
    if (g.nvml == nullptr || util == nullptr) return;
    std::array<nvmlProcessUtilizationSample_t, k_utilization_batch> samples{};
    unsigned n = static_cast<unsigned>(samples.size());
    if (util(g.nvml, samples.data(), &n, g.nvml_seen) != NVML_SUCCESS) return;
    // This process as NVML lists it: the pid the memory side verified (the host's pid in a
    // container's pid namespace), else getpid().
    const unsigned verified = s.nvml_pid();
    const auto self = verified != 0 ? verified : static_cast<unsigned>(::getpid());
    std::sort(samples.begin(), samples.begin() + n,
              [](const auto& a, const auto& b) { return a.timeStamp < b.timeStamp; });
    const bool first = g.nvml_seen == 0;
    unsigned long long prev = g.nvml_seen;
    double busy_us = 0.0;
    for (unsigned i = 0; i < n; ++i) {
      // NVML lists this process's samples by its pid as NVML sees it: in a pid namespace,
      // until the memory side has verified the host's pid, nothing matches and no correction
      // is made.
      if (samples[i].pid != self || samples[i].timeStamp <= prev) continue;
      if (!first) {
        busy_us += static_cast<double>(samples[i].smUtil) / k_full_percent *
                   static_cast<double>(samples[i].timeStamp - prev);
      }
      prev = samples[i].timeStamp;
    }
    if (prev == g.nvml_seen) return;
    const auto span_ns = static_cast<std::int64_t>(prev - g.nvml_seen) * k_ns_per_us;
    g.nvml_seen = prev;
    if (first) return;  // the first answer only sets where the next one starts
    if (g.bypass.load(std::memory_order_relaxed)) return;  // uncharged launches: nothing to correct
    const std::int64_t end = sample_end_ns(prev, now);
    g.limiter->utilization_sample(end - span_ns, end,
                                  static_cast<std::int64_t>(busy_us * k_ns_per_us));
  }

  /// The time on the steady clock (\p now) of NVML's sample timestamp \p stamp_us. NVML stamps
  /// its samples with a CPU timestamp in microseconds, taken when the driver sampled, up to a
  /// sample period (1/6 s or more) before the watcher reads them. The limiter lines the window
  /// up with the charges it filed at each kernel's start: a window stamped at the read instead
  /// pairs one window's busy time with a later window's charges, a kernel's worth of error per
  /// window with long kernels (a 100 ms kernel at a 30% cap read 25 to 36% over 4 s in the GPU
  /// model). The timestamp's clock is taken to be whichever of the real-time and the monotonic
  /// clock it is nearer; a stamp near neither (or in the future) is taken as now.
  static std::int64_t sample_end_ns(unsigned long long stamp_us, std::int64_t now) noexcept {
    timespec rt{};
    if (::clock_gettime(CLOCK_REALTIME, &rt) != 0) return now;
    const std::int64_t realtime_us =
        static_cast<std::int64_t>(rt.tv_sec) * (k_ns_per_s / k_ns_per_us) +
        static_cast<std::int64_t>(rt.tv_nsec) / k_ns_per_us;
    const auto stamp = static_cast<std::int64_t>(stamp_us);
    const std::int64_t age_realtime = realtime_us - stamp;
    const std::int64_t age_steady = now / k_ns_per_us - stamp;
    const std::int64_t age_us =
        std::abs(age_realtime) < std::abs(age_steady) ? age_realtime : age_steady;
    if (age_us < 0 || age_us > k_max_sample_age_us) return now;
    return now - age_us * k_ns_per_us;
  }

  static decltype(&::cuEventRecord) recorder(state& s, bool per_thread) noexcept {
    return per_thread ? s.helper_fn<decltype(&::cuEventRecord_ptsz)>(helper::cuEventRecord_ptsz)
                      : s.helper_fn<decltype(&::cuEventRecord)>(helper::cuEventRecord);
  }

  bool take_events(state& s, CUcontext ctx, CUevent& a, CUevent& b) noexcept {
    {
      std::lock_guard<std::mutex> lock(pool_mu_);
      auto it = pool_.find(ctx);
      if (it != pool_.end() && it->second.size() >= 2) {
        a = it->second.back();
        it->second.pop_back();
        b = it->second.back();
        it->second.pop_back();
        return true;
      }
    }
    auto create = s.helper_fn<decltype(&::cuEventCreate)>(helper::cuEventCreate);
    if (create == nullptr || create(&a, CU_EVENT_DEFAULT) != CUDA_SUCCESS) return false;
    if (create(&b, CU_EVENT_DEFAULT) != CUDA_SUCCESS) {
      destroy_event(s, a);
      return false;
    }
    return true;
  }

  void give_events(state& s, CUcontext ctx, CUevent a, CUevent b) noexcept {
    std::lock_guard<std::mutex> lock(pool_mu_);
    try {
      auto& spare = pool_[ctx];
      for (CUevent e : {a, b}) {
        if (e == nullptr) continue;
        if (spare.size() < k_max_spare_events) {
          spare.push_back(e);
        } else {
          destroy_event(s, e);
        }
      }
    } catch (...) {
      destroy_event(s, a);
      destroy_event(s, b);
    }
  }

  static void destroy_event(state& s, CUevent e) noexcept {
    auto destroy = s.helper_fn<decltype(&::cuEventDestroy_v2)>(helper::cuEventDestroy_v2);
    if (e != nullptr && destroy != nullptr) destroy(e);
  }

  std::mutex mu_;  ///< gate creation, settings, node region
  std::array<std::atomic<device_gate*>, k_max_devices> gates_{};
  bool once_ = false;
  bool watcher_started_ = false;
  std::optional<rate::node_region> region_;
  std::uint64_t container_ = 0;
  std::uint64_t start_time_ = 0;
  std::atomic<bool> restart_watcher_{false};
  std::atomic<bool> fast_tried_{false};  ///< try_fast() ran
  bool all_gates_ = false;               ///< every visible device has its gate; under mu_
  std::atomic<bool> timing_{true};       ///< launches may be timed (the watcher reads events)

  std::mutex samples_mu_;
  std::vector<pending_sample> samples_;
  std::atomic<std::size_t> pending_{0};

  std::mutex pool_mu_;
  std::unordered_map<CUcontext, std::vector<CUevent>> pool_;
};

/// Says once per process why launches are refused.
void refuse_once(state& s, int ordinal) noexcept {
  static std::atomic<bool> said{false};
  if (said.exchange(true)) return;
  s.log(log_level::error, "kernel launches on device {} are refused (failing closed): {}", ordinal,
        s.closed_reason().empty() ? std::string("the device has no usable limiter")
                                  : s.closed_reason());
}

/// The device a launch on \p stream runs on; false when the driver cannot tell.
bool launch_device(state& s, CUstream stream, int& ordinal) noexcept {
  if (s.device_count() == 1) {
    ordinal = 0;  // the common case in a container: no driver call on the launch path
    return true;
  }
  return s.stream_device(stream, &ordinal) == CUDA_SUCCESS;
}

/// True when \p stream is being captured into a graph: the launch is recorded, not run, so it
/// is neither admitted nor timed (an event recorded there would become a node of the
/// program's graph); the graph is charged when it is launched. Thread-safe.
bool capturing(state& s, CUstream stream, bool per_thread) noexcept {
  auto query =
      per_thread
          ? s.helper_fn<decltype(&::cuStreamIsCapturing_ptsz)>(helper::cuStreamIsCapturing_ptsz)
          : s.helper_fn<decltype(&::cuStreamIsCapturing)>(helper::cuStreamIsCapturing);
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  return query != nullptr && query(stream, &status) == CUDA_SUCCESS &&
         status != CU_STREAM_CAPTURE_STATUS_NONE;
}

/// Admits one launch of \p function on \p g: waits as the limiter says. True when the limiter
/// asks for the launch to be timed (its function's cost is not learned yet). Thread-safe.
bool admit(device_gate& g, std::uint64_t function) noexcept {
  for (;;) {
    const rate::admission a = g.limiter->admit(function, now_ns());
    if (a.wait_ns > 0) sleep_ns(a.wait_ns);
    if (a.admitted) return a.learn;
  }
}

/// The launch path shared by every single-stream entry point.
template <class Launch>
CUresult gated(state& s, CUstream stream, bool per_thread, std::uint64_t function,
               Launch&& launch) noexcept {
  int ordinal = 0;
  if (!launch_device(s, stream, ordinal)) return launch();  // the driver reports the error
  launch_control& c = launch_control::get();
  device_gate* g = c.gate(s, ordinal);
  if (g == nullptr) {
    refuse_once(s, ordinal);
    return CUDA_ERROR_NOT_PERMITTED;
  }
  c.restart_after_fork(s);
  const std::uint32_t raw = s.ledger_sm_limit(g->index);
  if (raw != g->raw.load(std::memory_order_acquire)) c.apply(s, *g, raw);
  if (!g->launched.load(std::memory_order_relaxed)) {
    g->launched.store(true, std::memory_order_relaxed);
  }
  if (g->bypass.load(std::memory_order_acquire)) {
    c.try_fast(s);
    return launch();
  }
  if (capturing(s, stream, per_thread)) return launch();
  const bool learn = admit(*g, function);
  if (c.sample_now(learn)) return c.timed(s, *g, function, stream, per_thread, launch);
  return launch();
}

std::uint64_t id_of(const void* p) noexcept { return reinterpret_cast<std::uintptr_t>(p); }

}  // namespace
}  // namespace gpuslice::shim::detail

namespace d = gpuslice::shim::detail;
using d::hook;
using d::reentry_guard;
using d::state;

/// Finds the real function, takes the fast path when no device is capped and passes re-entrant
/// calls straight through.
#define GPUSLICE_LAUNCH_PROLOGUE(sym, ...)          \
  state& s = state::get();                          \
  const auto real = s.real<d::sym##_fn>(hook::sym); \
  if (real == nullptr) return CUDA_ERROR_NOT_FOUND; \
  if (d::fast_path()) return real(__VA_ARGS__);     \
  reentry_guard guard;                              \
  if (!guard.first()) return real(__VA_ARGS__);

GPUSLICE_SHIM_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                             unsigned int gz, unsigned int bx, unsigned int by,
                                             unsigned int bz, unsigned int shared, CUstream stream,
                                             void** params, void** extra) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchKernel, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra)
  return d::gated(s, stream, false, d::id_of(f),
                  [&] { return real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                                  unsigned int gz, unsigned int bx, unsigned int by,
                                                  unsigned int bz, unsigned int shared,
                                                  CUstream stream, void** params, void** extra) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchKernel_ptsz, f, gx, gy, gz, bx, by, bz, shared, stream, params,
                           extra)
  return d::gated(s, stream, true, d::id_of(f),
                  [&] { return real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f,
                                               void** params, void** extra) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchKernelEx, config, f, params, extra)
  if (config == nullptr) return real(config, f, params, extra);
  return d::gated(s, config->hStream, false, d::id_of(f),
                  [&] { return real(config, f, params, extra); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f,
                                                    void** params, void** extra) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchKernelEx_ptsz, config, f, params, extra)
  if (config == nullptr) return real(config, f, params, extra);
  return d::gated(s, config->hStream, true, d::id_of(f),
                  [&] { return real(config, f, params, extra); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx,
                                                        unsigned int gy, unsigned int gz,
                                                        unsigned int bx, unsigned int by,
                                                        unsigned int bz, unsigned int shared,
                                                        CUstream stream, void** params) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchCooperativeKernel, f, gx, gy, gz, bx, by, bz, shared, stream,
                           params)
  return d::gated(s, stream, false, d::id_of(f),
                  [&] { return real(f, gx, gy, gz, bx, by, bz, shared, stream, params); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx,
                                                             unsigned int gy, unsigned int gz,
                                                             unsigned int bx, unsigned int by,
                                                             unsigned int bz, unsigned int shared,
                                                             CUstream stream, void** params) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchCooperativeKernel_ptsz, f, gx, gy, gz, bx, by, bz, shared,
                           stream, params)
  return d::gated(s, stream, true, d::id_of(f),
                  [&] { return real(f, gx, gy, gz, bx, by, bz, shared, stream, params); });
}

/// Each listed launch is admitted on its own device before any is made; the launches are not
/// timed (their devices' typical costs are charged), as one call spans several devices.
GPUSLICE_SHIM_EXPORT CUresult cuLaunchCooperativeKernelMultiDevice(CUDA_LAUNCH_PARAMS* list,
                                                                   unsigned int count,
                                                                   unsigned int flags) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchCooperativeKernelMultiDevice, list, count, flags)
  if (list == nullptr) return real(list, count, flags);
  d::launch_control& c = d::launch_control::get();
  std::vector<d::launch_control::open_sample> timed;
  const bool sample = c.sample_now();
  for (unsigned int i = 0; i < count; ++i) {
    int ordinal = 0;
    if (!d::launch_device(s, list[i].hStream, ordinal)) continue;  // the driver will refuse it
    d::device_gate* g = c.gate(s, ordinal);
    if (g == nullptr) {
      d::refuse_once(s, ordinal);
      for (const auto& o : timed) c.end_sample(s, o, CUDA_ERROR_NOT_PERMITTED);
      return CUDA_ERROR_NOT_PERMITTED;
    }
    const std::uint32_t raw = s.ledger_sm_limit(g->index);
    if (raw != g->raw.load(std::memory_order_acquire)) c.apply(s, *g, raw);
    g->launched.store(true, std::memory_order_relaxed);
    if (g->bypass.load(std::memory_order_acquire) || d::capturing(s, list[i].hStream, false)) {
      continue;
    }
    const std::uint64_t function = d::id_of(list[i].function);
    const bool learn = d::admit(*g, function);
    // Entries whose stream is in the current context are timed; the others are charged their
    // device's typical cost (an event must belong to its stream's context).
    d::launch_control::open_sample o;
    if ((sample || learn) && c.begin_sample(s, *g, function, list[i].hStream, false, o)) {
      try {
        timed.push_back(o);
      } catch (...) {
        c.end_sample(s, o, CUDA_ERROR_OUT_OF_MEMORY);
      }
    }
  }
  const CUresult r = real(list, count, flags);
  for (const auto& o : timed) c.end_sample(s, o, r);
  return r;
}

namespace {
CUresult graph_launch(CUgraphExec exec, CUstream stream) {
  GPUSLICE_LAUNCH_PROLOGUE(cuGraphLaunch, exec, stream)
  return d::gated(s, stream, false, d::id_of(exec), [&] { return real(exec, stream); });
}
CUresult graph_launch_ptsz(CUgraphExec exec, CUstream stream) {
  GPUSLICE_LAUNCH_PROLOGUE(cuGraphLaunch_ptsz, exec, stream)
  return d::gated(s, stream, true, d::id_of(exec), [&] { return real(exec, stream); });
}
}  // namespace

// A graph with memory nodes takes its memory from the graph allocator when it is launched; the
// driver keeps that reserve after the graph's frees. Every device measures its driver memory
// again at its next call (a relaxed store each: the fast path's cost stays that of the launch).
GPUSLICE_SHIM_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
  const CUresult r = graph_launch(exec, stream);
  if (r == CUDA_SUCCESS) state::get().driver_memory_changed(-1);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream) {
  const CUresult r = graph_launch_ptsz(exec, stream);
  if (r == CUDA_SUCCESS) state::get().driver_memory_changed(-1);
  return r;
}

// The legacy launches: parameters were set with cuParamSet*, the grid is 2D, and cuLaunch and
// cuLaunchGrid run on the legacy default stream.
GPUSLICE_SHIM_EXPORT CUresult cuLaunch(CUfunction f) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunch, f)
  return d::gated(s, nullptr, false, d::id_of(f), [&] { return real(f); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchGrid(CUfunction f, int grid_width, int grid_height) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchGrid, f, grid_width, grid_height)
  return d::gated(s, nullptr, false, d::id_of(f), [&] { return real(f, grid_width, grid_height); });
}

GPUSLICE_SHIM_EXPORT CUresult cuLaunchGridAsync(CUfunction f, int grid_width, int grid_height,
                                                CUstream stream) {
  GPUSLICE_LAUNCH_PROLOGUE(cuLaunchGridAsync, f, grid_width, grid_height, stream)
  return d::gated(s, stream, false, d::id_of(f),
                  [&] { return real(f, grid_width, grid_height, stream); });
}
