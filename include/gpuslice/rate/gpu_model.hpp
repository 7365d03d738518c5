#pragma once
/// \file
/// A discrete-event model of one GPU shared by tenants, in virtual time, so a compute-share
/// controller can be checked exactly and deterministically in milliseconds of CPU.
///
/// The GPU: contexts are time-sliced. Each tenant's launched kernels run in order; when
/// several tenants have work the GPU round-robins between them in slices of timeslice_ns
/// (a kernel longer than a slice is preempted and resumed, as compute preemption does), and
/// a tenant alone keeps the GPU. A tenant's busy time is the time its kernels ran, accounted
/// exactly; its share over a window is its busy time in the window over the window's length.
///
/// A tenant: a host thread that picks kernels from a mix (duration, jitter, grid size),
/// launches them (launch_overhead_ns each), keeps at most streams_in_flight unfinished, and
/// may think between launches or launch in bursts. Before each launch it asks its controller:
///  - gpuslice: our sm_limiter on its own bucket, fed the time a pair of events brackets (see
///    below) for one launch in observe_every and for each launch the limiter flags to learn
///    from (as the shim does), NVML-style utilization samples, and the
///    peer-activity signal;
///  - reference: reference_controller, fed the same NVML-style samples every 120 ms and
///    charged grid blocks; it sleeps 10 ms when dry;
///  - none: launches freely.
/// Sleeps end sleep_overshoot_ns late, as real sleeps do.
///
/// Event timing (gpu_spec::event_timing), as the shim measures a launch: a start event is recorded
/// on the stream event_lead_ns before the kernel is submitted, and an end event after it. The start
/// event completes when the stream reaches it: at its record time if the tenant's stream was idle,
/// else when the tenant's previous kernel ended. So a timed launch reads as
/// end - max(launch - event_lead_ns, previous kernel's end): other tenants' slices included
/// and, on an idle stream, the submission gap too. A 5 us kernel launched on an idle stream
/// with a 3 us gap reads as 8 us: the limiter must not charge what events say without the
/// utilization correction.
///
/// NVML-style utilization: every nvml_period_ns each tenant's busy time in the period is
/// reported as an integer percent; the reference controller reads the latest one.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <queue>
#include <string>
#include <vector>

#include "gpuslice/config.hpp"
#include "gpuslice/rate/limiter.hpp"
#include "gpuslice/rate/reference_controller.hpp"
#include "gpuslice/rate/token_bucket.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::rate {

/// One kind of kernel in a tenant's mix (one function id).
struct kernel_spec {
  /// Mean duration on the whole GPU.
  std::int64_t duration_ns = 1'000'000;
  /// Durations are uniform in duration_ns * [1 - jitter, 1 + jitter]; 0..1.
  double jitter = 0.0;
  /// Relative frequency in the mix.
  double weight = 1.0;
  /// Grid size in blocks (what the reference controller charges); 0 = two blocks per SM.
  std::int64_t grid_blocks = 0;
};

/// Which controller admits the tenants' launches.
enum class controller_kind : std::uint8_t { gpuslice, reference, none };

/// A tenant of the modelled GPU.
struct tenant_spec {
  std::string name;
  /// Target share in percent; 0 or >= 100 = no limit.
  double share_percent = 0.0;
  utilization_policy policy = utilization_policy::force;
  task_priority priority = task_priority::low;
  /// The kernel mix; each entry is one function.
  std::vector<kernel_spec> kernels{kernel_spec{}};
  /// Host time between launches.
  std::int64_t think_ns = 0;
  /// When > 0: launch this many kernels back to back, then think burst_gap_ns.
  std::int64_t burst_kernels = 0;
  std::int64_t burst_gap_ns = 0;
  /// Launched but unfinished kernels before the host waits for one to finish.
  std::int64_t streams_in_flight = 2;
  /// When the tenant starts and stops launching.
  std::int64_t start_ns = 0;
  std::int64_t stop_ns = std::numeric_limits<std::int64_t>::max();
  /// One launch in this many is timed and reported to the controller; 0 = none.
  std::int64_t observe_every = 1;
  /// When > 0: after this many launches the host waits until all its kernels have finished
  /// (a cudaStreamSynchronize every N launches, as tests/gpu/launch_share.cu does).
  std::int64_t sync_every = 0;
  /// The limiter is told that another tenant is active whatever the others do: the shim
  /// without a node region (GPUSLICE_NODE_REGION unset) cannot tell that it is alone.
  bool assume_company = false;
  /// Tenants with the same container id >= 0 are processes of one container: they draw from
  /// one bucket (the first one's words, as the ledger's rate words are shared) and count as
  /// one tenant in each other's peer signal. -1: a container of its own.
  std::int64_t container = -1;
};

/// The modelled GPU and host.
struct gpu_spec {
  /// SMs; only the reference controller's arithmetic and the default grid size use it.
  std::int64_t sm_count = 132;
  /// Context time slice; 0 = kernels run to completion, tenants alternate per kernel.
  std::int64_t timeslice_ns = 2'000'000;
  /// Host time per launch.
  std::int64_t launch_overhead_ns = 3'000;
  /// How a timed launch reads: false, from its kernel's first start to its end (what a
  /// profiler sees); true, as a pair of events brackets it (see the file comment).
  bool event_timing = false;
  /// With event_timing: host time between recording a timed launch's start event and
  /// submitting the kernel (the start event's lead over the kernel on an idle stream).
  std::int64_t event_lead_ns = 3'000;
  /// How late a sleep ends.
  std::int64_t sleep_overshoot_ns = 50'000;
  /// Period of the NVML-style per-process utilization samples.
  std::int64_t nvml_period_ns = 166'666'667;
  /// A tenant counts as active for its peers while it has work or asked to launch this
  /// recently.
  std::int64_t activity_window_ns = 100'000'000;
  /// Run-to-run variation as the hardware shows it (all 0: the exact model above).
  /// Host time per launch is launch_overhead_ns plus a uniform draw in [0, launch_jitter_ns].
  std::int64_t launch_jitter_ns = 0;
  /// Sleeps end sleep_overshoot_ns plus a uniform draw in [0, sleep_jitter_ns] late.
  std::int64_t sleep_jitter_ns = 0;
  /// Host time the first launch of each function spends in the launch call before its kernel
  /// is submitted (lazy module loading, CUDA_MODULE_LOADING=LAZY, the default): with
  /// event_timing the start event is recorded before the call, so the first timing holds it.
  std::int64_t first_launch_ns = 0;
  /// When the first NVML-style sample is taken, after nvml_period_ns (the phase of the
  /// driver's sampling against the tenants' start).
  std::int64_t nvml_offset_ns = 0;
  /// 0: each NVML-style sample reaches the limiter when it is taken, with its own window.
  /// > 0: the limiter's caller polls every nvml_poll_ns (the shim's watcher, 200 ms) and passes
  /// the samples taken since its last poll as one window, which ends at the last sample's time
  /// (the shim converts NVML's timestamps to its clock)...
  std::int64_t nvml_poll_ns = 0;
  /// ...or, when true, at the poll (a caller that stamps the window with its own clock when it
  /// reads it: the window is late by the samples' age, up to a sample period and a poll).
  bool nvml_window_at_poll = false;
};

/// What to run and how to record it.
struct model_options {
  /// Simulated time.
  std::int64_t duration_ns = 5'000'000'000;
  /// Busy time is recorded at every multiple of this.
  std::int64_t sample_step_ns = 10'000'000;
  controller_kind controller = controller_kind::gpuslice;
  std::uint64_t seed = 1;
  limiter_params params{};
  reference_params reference{};
};

/// The outcome of a run: exact cumulative busy time per tenant at every sample time.
struct model_result {
  std::int64_t step_ns = 0;
  /// 0, step, 2*step, ... up to the duration.
  std::vector<std::int64_t> times_ns;
  /// busy_ns[t][k]: tenant t's busy time in [0, times_ns[k]).
  std::vector<std::vector<std::int64_t>> busy_ns;
  /// Per tenant: kernels launched, and total wall time spent waiting for admission.
  std::vector<std::int64_t> launches;
  std::vector<std::int64_t> waited_ns;
  /// capacity_ns[t][k]: the capacity of tenant t's bucket at times_ns[k] (gpuslice controller).
  std::vector<std::vector<std::int64_t>> capacity_ns;

  /// Tenant \p t's share over [from_ns, to_ns); both are multiples of step_ns within the run.
  double share_between(std::size_t t, std::int64_t from_ns, std::int64_t to_ns) const {
    const auto a = static_cast<std::size_t>(from_ns / step_ns);
    const auto b = static_cast<std::size_t>(to_ns / step_ns);
    return static_cast<double>(busy_ns.at(t).at(b) - busy_ns.at(t).at(a)) /
           static_cast<double>(to_ns - from_ns);
  }
  /// Tenant \p t's share over the window of \p window_ns ending at each sample time from
  /// window_ns on (a multiple of step_ns); element i ends at times_ns[i + window/step].
  std::vector<double> window_shares(std::size_t t, std::int64_t window_ns) const {
    const auto w = static_cast<std::size_t>(window_ns / step_ns);
    std::vector<double> out;
    const auto& b = busy_ns.at(t);
    for (std::size_t k = w; k < b.size(); ++k) {
      out.push_back(static_cast<double>(b[k] - b[k - w]) / static_cast<double>(window_ns));
    }
    return out;
  }
};

namespace detail {

/// The model's clock: reads the simulation's current time.
struct model_clock {
  const std::int64_t* now_ns = nullptr;
  std::int64_t now() const noexcept { return *now_ns; }
};

/// splitmix64: a small, portable, seeded generator (results identical on every platform).
class model_rng {
 public:
  explicit model_rng(std::uint64_t seed) noexcept : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1).
  double uniform() noexcept {
    constexpr double k_two_pow_minus_53 = 1.0 / 9007199254740992.0;
    return static_cast<double>(next() >> 11) * k_two_pow_minus_53;
  }

 private:
  std::uint64_t s_;
};

/// Most samples a run records (bounds memory: tenants x samples x 8 bytes).
inline constexpr std::int64_t k_max_samples = 10'000'000;

inline error spec_error(const std::string& what, const std::string& expected) {
  return make_error(errc::invalid_value, what + ": expected " + expected);
}

/// Checks the inputs of run_gpu_model; one clear line for the first problem.
inline result<bool> validate(const gpu_spec& gpu, const std::vector<tenant_spec>& tenants,
                             const model_options& opt) {
  if (gpu.sm_count < 1) return spec_error("sm_count=" + std::to_string(gpu.sm_count), ">= 1");
  if (gpu.timeslice_ns < 0 || gpu.launch_overhead_ns < 0 || gpu.sleep_overshoot_ns < 0 ||
      gpu.event_lead_ns < 0) {
    return spec_error("timeslice_ns, launch_overhead_ns, sleep_overshoot_ns, event_lead_ns",
                      ">= 0");
  }
  if (gpu.launch_jitter_ns < 0 || gpu.sleep_jitter_ns < 0 || gpu.first_launch_ns < 0 ||
      gpu.nvml_offset_ns < 0 || gpu.nvml_poll_ns < 0) {
    return spec_error(
        "launch_jitter_ns, sleep_jitter_ns, first_launch_ns, nvml_offset_ns, nvml_poll_ns", ">= 0");
  }
  if (gpu.nvml_period_ns < 1'000'000) {
    return spec_error("nvml_period_ns=" + std::to_string(gpu.nvml_period_ns), ">= 1 ms");
  }
  if (opt.duration_ns <= 0 || opt.sample_step_ns <= 0 || opt.duration_ns < opt.sample_step_ns) {
    return spec_error("duration_ns=" + std::to_string(opt.duration_ns) +
                          ", sample_step_ns=" + std::to_string(opt.sample_step_ns),
                      "0 < sample_step_ns <= duration_ns");
  }
  if (opt.duration_ns / opt.sample_step_ns > k_max_samples) {
    return spec_error("duration_ns / sample_step_ns", "at most " + std::to_string(k_max_samples));
  }
  if (tenants.empty()) return spec_error("tenants", "at least one tenant");
  for (std::size_t i = 0; i < tenants.size(); ++i) {
    const tenant_spec& t = tenants[i];
    const std::string who =
        "tenant " + std::to_string(i) + (t.name.empty() ? "" : " (" + t.name + ")");
    if (!(t.share_percent >= 0.0 && t.share_percent <= 100.0)) {
      return spec_error(who + " share_percent=" + std::to_string(t.share_percent), "0..100");
    }
    if (t.kernels.empty()) return spec_error(who + " kernels", "at least one kernel");
    double weights = 0;
    for (const kernel_spec& k : t.kernels) {
      if (k.duration_ns < 1 || !(k.jitter >= 0.0 && k.jitter <= 1.0) || !(k.weight >= 0.0) ||
          k.grid_blocks < 0) {
        return spec_error(who + " kernel",
                          "duration_ns >= 1, jitter in 0..1, weight >= 0, grid_blocks >= 0");
      }
      weights += k.weight;
    }
    if (!(weights > 0.0)) return spec_error(who + " kernel weights", "a positive sum");
    if (t.think_ns < 0 || t.burst_kernels < 0 || t.burst_gap_ns < 0 || t.observe_every < 0 ||
        t.sync_every < 0) {
      return spec_error(who + " think_ns, burst_kernels, burst_gap_ns, observe_every, sync_every",
                        ">= 0");
    }
    if (t.streams_in_flight < 1) {
      return spec_error(who + " streams_in_flight=" + std::to_string(t.streams_in_flight), ">= 1");
    }
    if (t.start_ns < 0 || t.stop_ns < t.start_ns) {
      return spec_error(who + " start_ns/stop_ns", "0 <= start_ns <= stop_ns");
    }
  }
  return true;
}

/// The simulation; one object per run. Not thread-safe (used by one thread).
class gpu_simulation {
 public:
  gpu_simulation(const gpu_spec& gpu, const std::vector<tenant_spec>& tenants,
                 const model_options& opt)
      : gpu_(gpu), opt_(opt) {
    tenants_.reserve(tenants.size());
    for (std::size_t i = 0; i < tenants.size(); ++i) {
      tenants_.push_back(std::make_unique<tenant>(tenants[i], opt.seed + 7919 * (i + 1)));
      tenant& t = *tenants_.back();
      for (const kernel_spec& k : t.spec.kernels) t.total_weight += k.weight;
      t.loaded.assign(t.spec.kernels.size(), false);
      const double share = t.spec.share_percent;
      const bool limited = share > 0.0 && share < 100.0;
      if (opt.controller == controller_kind::gpuslice) {
        // Processes of one container share the first one's words.
        auto* words = t.words.words;
        for (std::size_t j = 0; j < i && t.spec.container >= 0; ++j) {
          if (tenants_[j]->spec.container == t.spec.container) {
            words = tenants_[j]->words.words;
            break;
          }
        }
        t.limiter = std::make_unique<limiter_type>(
            words, limiter_settings{share, t.spec.policy, t.spec.priority}, opt.params,
            model_clock{&now_});
      } else if (opt.controller == controller_kind::reference && limited) {
        t.reference = std::make_unique<reference_controller>(
            gpu.sm_count, static_cast<std::int64_t>(std::lround(share)), opt.reference);
      }
    }
  }

  model_result run() {
    const std::size_t n = tenants_.size();
    model_result out;
    out.step_ns = opt_.sample_step_ns;
    out.busy_ns.assign(n, {});
    out.capacity_ns.assign(n, {});
    for (std::size_t i = 0; i < n; ++i) {
      const tenant& t = *tenants_[i];
      if (t.spec.start_ns < opt_.duration_ns) push(t.spec.start_ns, ev::host, i);
      if (t.reference) {
        push(t.spec.start_ns + opt_.reference.refill_period_ns, ev::reference_tick, i);
      }
    }
    push(gpu_.nvml_offset_ns + gpu_.nvml_period_ns, ev::nvml, 0);
    if (gpu_.nvml_poll_ns > 0) push(gpu_.nvml_poll_ns, ev::nvml_poll, 0);
    push(0, ev::record, 0);
    while (!events_.empty()) {
      const event e = events_.top();
      if (e.t > opt_.duration_ns) break;
      events_.pop();
      now_ = e.t;
      switch (e.kind) {
        case ev::host:
          host_wake(e.who);
          break;
        case ev::gpu_end:
          gpu_end();
          break;
        case ev::nvml:
          nvml_sample();
          break;
        case ev::nvml_poll:
          nvml_poll();
          break;
        case ev::reference_tick:
          reference_tick(e.who);
          break;
        case ev::record:
          record(out);
          break;
      }
    }
    for (const auto& t : tenants_) {
      out.launches.push_back(t->launches);
      out.waited_ns.push_back(t->waited_ns);
    }
    return out;
  }

 private:
  using limiter_type = sm_limiter<model_clock>;
  enum class ev : std::uint8_t { record, nvml, nvml_poll, reference_tick, gpu_end, host };

  struct event {
    std::int64_t t;
    std::uint64_t seq;
    ev kind;
    std::size_t who;
    bool operator>(const event& o) const noexcept { return t != o.t ? t > o.t : seq > o.seq; }
  };

  struct kernel {
    std::size_t function;
    std::int64_t remaining_ns;
    std::int64_t first_start_ns;
    bool timed;
    std::int64_t event_ns;  ///< when a timed launch's start event was recorded
    std::int64_t call_ns;   ///< how long its launch call took on the host
  };

  struct pending_launch {
    bool present = false;
    bool admitted = false;
    std::size_t function = 0;
    std::int64_t duration_ns = 0;
    std::int64_t grid_blocks = 0;
    std::int64_t asked_at_ns = 0;
    bool learn = false;                  ///< the controller asked for this launch to be timed
    std::int64_t loading_since_ns = -1;  ///< in the first launch's load since then (-1: not)
  };

  struct tenant {
    tenant(const tenant_spec& s, std::uint64_t seed) : spec(s), rng(seed) {}
    tenant_spec spec;
    model_rng rng;
    double total_weight = 0;
    local_rate_words words;
    std::unique_ptr<limiter_type> limiter;
    std::unique_ptr<reference_controller> reference;
    std::deque<kernel> queue;  // launched, unfinished; the front may be running
    pending_launch pending;
    bool host_blocked = false;
    std::int64_t busy_ns = 0;  // credited (finished slices)
    std::int64_t last_end_ns = std::numeric_limits<std::int64_t>::min() / 2;  // previous kernel
    std::int64_t busy_at_nvml_ns = 0;
    std::int64_t last_util_percent = -1;
    std::int64_t last_ask_ns = std::numeric_limits<std::int64_t>::min() / 2;
    std::int64_t launches = 0;
    std::int64_t waited_ns = 0;
    std::int64_t burst_count = 0;
    std::int64_t since_sync = 0;       ///< launches since the host last synchronised
    bool syncing = false;              ///< waiting for its kernels to finish (sync_every)
    std::vector<bool> loaded;          ///< per function: launched before (its module is loaded)
    std::int64_t nvml_busy_ns = 0;     ///< busy time of the samples not yet polled
    std::int64_t nvml_last_ns = -1;    ///< end of the last sample taken (-1: none yet)
    std::int64_t nvml_polled_ns = -1;  ///< end of the last sample polled (-1: none yet)
  };

  void push(std::int64_t t, ev kind, std::size_t who) { events_.push(event{t, seq_++, kind, who}); }

  std::int64_t busy_now(std::size_t i) const noexcept {
    const tenant& t = *tenants_[i];
    return t.busy_ns + (running_ == static_cast<std::ptrdiff_t>(i) ? now_ - segment_start_ : 0);
  }

  bool active(std::size_t i) const noexcept {
    const tenant& t = *tenants_[i];
    if (now_ < t.spec.start_ns) return false;
    return !t.queue.empty() || t.pending.present || now_ - t.last_ask_ns < gpu_.activity_window_ns;
  }

  /// The peer signal for tenant i, as the node region would give it.
  void peers(std::size_t i, bool& others, bool& high_others) const noexcept {
    others = high_others = false;
    const std::int64_t mine = tenants_[i]->spec.container;
    for (std::size_t j = 0; j < tenants_.size(); ++j) {
      if (j == i || !active(j)) continue;
      if (mine >= 0 && tenants_[j]->spec.container == mine) continue;  // the same container
      others = true;
      if (tenants_[j]->spec.priority == task_priority::high) high_others = true;
    }
  }

  void choose_kernel(tenant& t) {
    double pick = t.rng.uniform() * t.total_weight;
    std::size_t f = 0;
    while (f + 1 < t.spec.kernels.size() && pick >= t.spec.kernels[f].weight) {
      pick -= t.spec.kernels[f].weight;
      ++f;
    }
    const kernel_spec& k = t.spec.kernels[f];
    const double factor = 1.0 + k.jitter * (2.0 * t.rng.uniform() - 1.0);
    t.pending.present = true;
    t.pending.admitted = false;
    t.pending.function = f;
    t.pending.duration_ns =
        std::max<std::int64_t>(1, std::llround(static_cast<double>(k.duration_ns) * factor));
    t.pending.grid_blocks =
        k.grid_blocks > 0 ? k.grid_blocks : k_default_blocks_per_sm * gpu_.sm_count;
    t.pending.asked_at_ns = now_;
  }

  void sleep_host(std::size_t i, std::int64_t wait) {
    tenant& t = *tenants_[i];
    const std::int64_t until =
        now_ + wait + gpu_.sleep_overshoot_ns + draw(t, gpu_.sleep_jitter_ns);
    t.waited_ns += until - now_;
    push(until, ev::host, i);
  }

  void host_wake(std::size_t i) {
    tenant& t = *tenants_[i];
    if (now_ >= t.spec.stop_ns) {
      t.pending = {};
      return;
    }
    if (t.syncing) {
      if (!t.queue.empty()) {
        t.host_blocked = true;  // woken when its last kernel finishes
        return;
      }
      t.syncing = false;
    }
    if (!t.pending.present) choose_kernel(t);
    t.last_ask_ns = now_;
    if (static_cast<std::int64_t>(t.queue.size()) >= t.spec.streams_in_flight) {
      t.host_blocked = true;  // woken when one of its kernels finishes
      return;
    }
    if (!t.pending.admitted && !admit(i)) return;
    if (t.pending.loading_since_ns < 0 && gpu_.first_launch_ns > 0 &&
        !t.loaded.at(t.pending.function)) {
      // The first launch of a function loads its module inside the launch call.
      t.loaded.at(t.pending.function) = true;
      t.pending.loading_since_ns = now_;
      push(now_ + gpu_.first_launch_ns, ev::host, i);
      return;
    }
    launch(i);
  }

  /// Asks the tenant's controller; false when the host went to sleep first.
  bool admit(std::size_t i) {
    tenant& t = *tenants_[i];
    bool others = false, high_others = false;
    peers(i, others, high_others);
    if (t.limiter) {
      t.limiter->set_others_active(others || t.spec.assume_company, high_others);
      const admission a = t.limiter->admit(t.pending.function, now_);
      if (!a.admitted) {
        sleep_host(i, a.wait_ns);
        return false;
      }
      t.pending.admitted = true;
      t.pending.learn = a.learn;
      if (a.wait_ns > 0) {
        sleep_host(i, a.wait_ns);
        return false;
      }
      return true;
    }
    if (t.reference && reference_applies(t, others, high_others)) {
      if (t.spec.priority == task_priority::low && high_others) {
        sleep_host(i, t.reference->params().sleep_ns);  // blocked while high priority runs
        return false;
      }
      if (!t.reference->try_launch(t.pending.grid_blocks)) {
        sleep_host(i, t.reference->params().sleep_ns);
        return false;
      }
    }
    t.pending.admitted = true;
    return true;
  }

  static bool reference_applies(const tenant& t, bool others, bool high_others) noexcept {
    switch (t.spec.policy) {
      case utilization_policy::disable:
        return false;
      case utilization_policy::force:
        return true;
      case utilization_policy::default_policy:
        return t.spec.priority == task_priority::high ? high_others : others;
    }
    return true;
  }

  void launch(std::size_t i) {
    tenant& t = *tenants_[i];
    // One launch in observe_every is timed, and (as the shim does) every launch whose function
    // the limiter has not learned yet.
    const bool timed = (t.spec.observe_every > 0 && t.launches % t.spec.observe_every == 0) ||
                       (t.spec.observe_every > 0 && t.pending.learn);
    const std::int64_t called = t.pending.loading_since_ns >= 0 ? t.pending.loading_since_ns : now_;
    t.queue.push_back(kernel{t.pending.function, t.pending.duration_ns, -1, timed,
                             called - gpu_.event_lead_ns, now_ - called});
    t.pending = {};
    ++t.launches;
    if (running_ < 0) start_next(i, false);
    std::int64_t next =
        now_ + gpu_.launch_overhead_ns + draw(t, gpu_.launch_jitter_ns) + t.spec.think_ns;
    if (t.spec.sync_every > 0 && ++t.since_sync >= t.spec.sync_every) {
      t.since_sync = 0;
      t.syncing = true;
    }
    if (t.spec.burst_kernels > 0 && ++t.burst_count >= t.spec.burst_kernels) {
      t.burst_count = 0;
      next += t.spec.burst_gap_ns;
    }
    push(next, ev::host, i);
  }

  /// Starts a segment on the GPU: tenant \p prefer keeps it unless \p rotate or it has no work.
  void start_next(std::size_t prefer, bool rotate) {
    const std::size_t n = tenants_.size();
    std::ptrdiff_t chosen = -1;
    if (!rotate && !tenants_[prefer]->queue.empty()) {
      chosen = static_cast<std::ptrdiff_t>(prefer);
    } else {
      for (std::size_t k = 1; k <= n; ++k) {
        const std::size_t j = (prefer + k) % n;
        if (!tenants_[j]->queue.empty()) {
          chosen = static_cast<std::ptrdiff_t>(j);
          break;
        }
      }
    }
    if (chosen != static_cast<std::ptrdiff_t>(last_ran_)) slice_used_ = 0;
    running_ = chosen;
    if (chosen < 0) {
      slice_used_ = 0;  // idle: whoever comes next gets a fresh slice
      return;
    }
    last_ran_ = static_cast<std::size_t>(chosen);
    kernel& k = tenants_[last_ran_]->queue.front();
    if (k.first_start_ns < 0) k.first_start_ns = now_;
    std::int64_t len = k.remaining_ns;
    if (gpu_.timeslice_ns > 0) len = std::min(len, gpu_.timeslice_ns - slice_used_);
    segment_start_ = now_;
    push(now_ + len, ev::gpu_end, 0);
  }

  void gpu_end() {
    const auto r = static_cast<std::size_t>(running_);
    tenant& t = *tenants_[r];
    const std::int64_t len = now_ - segment_start_;
    t.busy_ns += len;
    slice_used_ += len;
    kernel& k = t.queue.front();
    k.remaining_ns -= len;
    bool finished = false;
    if (k.remaining_ns <= 0) {
      finished = true;
      if (k.timed && t.limiter) {
        // The start event completed when the stream reached it (see the file comment).
        const std::int64_t start =
            gpu_.event_timing ? std::max(k.event_ns, t.last_end_ns) : k.first_start_ns;
        if (gpu_.event_timing) {
          t.limiter->observe(k.function, now_ - start, k.call_ns, now_);
        } else {
          t.limiter->observe(k.function, now_ - start, now_);
        }
      }
      t.last_end_ns = now_;
      t.queue.pop_front();
      if (t.host_blocked) {
        t.host_blocked = false;
        push(now_, ev::host, r);
      }
    }
    bool others_waiting = false;
    for (std::size_t j = 0; j < tenants_.size(); ++j) {
      if (j != r && !tenants_[j]->queue.empty()) others_waiting = true;
    }
    bool rotate = false;
    if (gpu_.timeslice_ns > 0) {
      if (slice_used_ >= gpu_.timeslice_ns) {
        if (others_waiting) {
          rotate = true;
        } else {
          slice_used_ = 0;  // alone: a fresh slice
        }
      }
    } else {
      rotate = finished && others_waiting;
    }
    running_ = -1;
    start_next(r, rotate);
  }

  void nvml_sample() {
    const std::int64_t period = gpu_.nvml_period_ns;
    for (std::size_t i = 0; i < tenants_.size(); ++i) {
      tenant& t = *tenants_[i];
      const std::int64_t busy = busy_now(i);
      const std::int64_t in_period = busy - t.busy_at_nvml_ns;
      t.busy_at_nvml_ns = busy;
      const std::int64_t pct = std::clamp<std::int64_t>(
          std::llround(k_percent * static_cast<double>(in_period) / static_cast<double>(period)), 0,
          100);
      t.last_util_percent = pct;
      const std::int64_t reported = pct * period / static_cast<std::int64_t>(k_percent);
      if (gpu_.nvml_poll_ns > 0) {
        t.nvml_busy_ns += reported;
        t.nvml_last_ns = now_;
      } else if (t.limiter && now_ > t.spec.start_ns) {
        t.limiter->utilization_sample(now_ - period, now_, reported);
      }
    }
    push(now_ + period, ev::nvml, 0);
  }

  /// The shim's watcher reading NVML: the samples since its last poll, as one window that ends
  /// now (see gpu_spec::nvml_poll_ns); the first answer only sets where the next one starts.
  void nvml_poll() {
    for (auto& tp : tenants_) {
      tenant& t = *tp;
      if (t.nvml_last_ns < 0 || t.nvml_last_ns == t.nvml_polled_ns) continue;
      const bool first = t.nvml_polled_ns < 0;
      const std::int64_t span = t.nvml_last_ns - t.nvml_polled_ns;
      t.nvml_polled_ns = t.nvml_last_ns;
      const std::int64_t busy = t.nvml_busy_ns;
      t.nvml_busy_ns = 0;
      if (first || !t.limiter || now_ <= t.spec.start_ns) continue;
      const std::int64_t end = gpu_.nvml_window_at_poll ? now_ : t.nvml_polled_ns;
      t.limiter->utilization_sample(end - span, end, busy);
    }
    push(now_ + gpu_.nvml_poll_ns, ev::nvml_poll, 0);
  }

  /// A uniform draw in [0, \p max_ns] from tenant \p t's generator (0 draws nothing).
  static std::int64_t draw(tenant& t, std::int64_t max_ns) noexcept {
    if (max_ns <= 0) return 0;
    return std::llround(t.rng.uniform() * static_cast<double>(max_ns));
  }

  void reference_tick(std::size_t i) {
    tenant& t = *tenants_[i];
    if (now_ >= t.spec.stop_ns) return;
    t.reference->tick(t.last_util_percent);
    push(now_ + t.reference->params().refill_period_ns, ev::reference_tick, i);
  }

  void record(model_result& out) {
    out.times_ns.push_back(now_);
    for (std::size_t i = 0; i < tenants_.size(); ++i) {
      out.busy_ns[i].push_back(busy_now(i));
      const auto& l = tenants_[i]->limiter;
      out.capacity_ns[i].push_back(l ? l->bucket().burst_ns() : 0);
    }
    if (now_ + opt_.sample_step_ns <= opt_.duration_ns) {
      push(now_ + opt_.sample_step_ns, ev::record, 0);
    }
  }

  /// Grid of a kernel whose spec leaves it 0: one wave of two blocks per SM.
  static constexpr std::int64_t k_default_blocks_per_sm = 2;
  static constexpr double k_percent = 100.0;

  gpu_spec gpu_;
  model_options opt_;
  std::vector<std::unique_ptr<tenant>> tenants_;
  std::priority_queue<event, std::vector<event>, std::greater<>> events_;
  std::uint64_t seq_ = 0;
  std::int64_t now_ = 0;
  std::ptrdiff_t running_ = -1;
  std::size_t last_ran_ = 0;
  std::int64_t segment_start_ = 0;
  std::int64_t slice_used_ = 0;
};

}  // namespace detail

/// A GPU with the run-to-run variation a real card and the shim show: event
/// timing, launch overhead and jitter, sleep overshoot and jitter, a module load of 0.2-5.2 ms
/// inside the first launch, NVML's ~6 Hz sampling at a random phase, read every 200 ms; two
/// draws from \p rng. The stability test and bench_limiter_stability run the same card.
inline gpu_spec hardware_like_gpu(detail::model_rng& rng) {
  constexpr std::int64_t us = 1'000, ms = 1'000'000;
  gpu_spec gpu;
  gpu.event_timing = true;
  gpu.launch_overhead_ns = 4 * us;
  gpu.launch_jitter_ns = 2 * us;
  gpu.sleep_overshoot_ns = 60 * us;
  gpu.sleep_jitter_ns = 100 * us;
  gpu.first_launch_ns = 200 * us + static_cast<std::int64_t>(rng.uniform() * 5 * ms);
  gpu.nvml_period_ns = 166'666'667;
  gpu.nvml_offset_ns = static_cast<std::int64_t>(rng.uniform() * 166 * ms);
  gpu.nvml_poll_ns = 200 * ms;
  return gpu;
}

/// Runs \p tenants on the modelled \p gpu under \p opt.controller; deterministic for a seed.
/// Bad input gives one line naming the field and the expectation. Thread-safe (no shared
/// state: each call owns its simulation).
inline result<model_result> run_gpu_model(const gpu_spec& gpu,
                                          const std::vector<tenant_spec>& tenants,
                                          const model_options& opt) {
  auto ok = detail::validate(gpu, tenants, opt);
  if (!ok) return std::move(ok).err();
  detail::gpu_simulation sim(gpu, tenants, opt);
  return sim.run();
}

}  // namespace gpuslice::rate
