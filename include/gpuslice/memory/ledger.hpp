#pragma once
/// \file
/// The memory ledger: cross-process, crash-safe accounting of device memory against a limit.
///
/// Every process of a container charges its device allocations to one ledger (a file mapped
/// MAP_SHARED, see region.hpp). `try_reserve` either takes bytes under the device's limit or
/// fails; `release` gives them back. A process killed with SIGKILL leaves its slot behind; any
/// process may reap it, and its bytes come back exactly once.
///
/// Limits: a stored limit is always a concrete byte count. 0 means "nothing may be reserved"
/// (never "unlimited"); a caller with no limit stores the device's total memory.
///
/// Caller contract (the shim): reserve before the driver allocates; if the driver call then
/// fails, release the same bytes on the same device through the same slot. Release only bytes
/// that this process reserved. A child created by fork() must call attach() again: it gets its
/// own slot and holds nothing until it reserves.
///
/// ## The protocol, and why a dead process's bytes come back exactly once
///
/// State: per device a total `used` (D, below bit 63) whose top bit is the device's reap gate,
/// and a `limit`; per process slot an `owner` claim word (claim.hpp: pid, generation, state
/// free/claiming/live/reaping; a slot_handle carries the whole word and every operation
/// through it first checks that the slot still holds it) and
/// k_lanes lanes. A lane holds an in-flight word F and per-device charges W[d]. A thread owns
/// one private lane (its thread id is the lane's holder) and updates it with plain atomic
/// loads and stores; threads that find no free lane share lane 0 with read-modify-writes. A
/// process's charge is the sum of its lanes. In the header, G names the reaper at work.
///
/// Reserve of b bytes on device d (hot path on a private lane: one compare-and-swap, the rest
/// plain stores; no lock, no system call):
///   1. F := 1                          (store; ordered before step 2 by its release)
///   2. CAS D: D -> D + b, only if D's gate bit is clear and D + b <= limit (acq_rel). If
///      the gate bit is set: F := 0, wait for it to clear (bounded; fail closed), go to 1.
///      Over the limit: F := 0 and fail.
///   3. W[d] := W[d] + b                (store)
///   4. F := 0                          (store, release)
/// Release is the same with D -> D - b (saturating at 0) and W[d] := W[d] - b.
///
/// Reap (rare: after a process death is seen):
///   1. Scan slots; if no live/claiming slot has a dead owner, stop (nothing to do).
///   2. Take G, a claim (claim.hpp) naming the reaper's pid, start time and generation; a
///      holder the kernel proves dead is displaced. Another live reaper holding it means this
///      call returns 0, and so does a process that cannot read its own start time: nobody
///      could judge it, so it never holds G. G is given back by CAS, so a reaper that was
///      displaced can never open another's gate.
///   3. Close every device's gate: fetch_or of the gate bit into D (acq_rel).
///   4. Drain: wait until F == 0 in every lane of every slot whose owner is alive (bounded; on
///      timeout reopen and return 0). Why no live operation can slip through: all writes to D
///      are read-modify-writes, so they are totally ordered. If an operation's CAS on D comes
///      before the reaper's fetch_or, the fetch_or reads from it (a release sequence), so the
///      operation's F := 1 happens before the reaper reads F: the reaper waits for its step 4.
///      If it comes after, the CAS sees the gate bit and fails: the operation backs off.
///   5. Mark every dead slot `reaping` (CAS live -> reaping).
///   6. For each device, D := sum of the live slots' lanes' W[d], one store that also clears
///      the gate bit.
///   7. Zero the dead slots' lanes, set the slots free, clear G.
///
/// Why exactly once: a reap never subtracts a dead slot's bytes; it *recomputes* D from the
/// live slots at a moment when no live operation is between steps 1 and 4 of its bracket, so
/// every live slot's charges equal exactly what it added to D. A process that died anywhere in
/// the bracket (between the CAS on D and step 4 included) is simply not counted: whatever it
/// did or did not add to D is replaced by the recount. Two reapers are serialised by G; a
/// reaper that dies mid-way leaves G and gate bits to be taken over by the next reaper (any
/// waiting operation starts one), whose recount is the same idempotent store. D never exceeds
/// the limit through a reserve (step 2 is a CAS checked against the limit), and the recount
/// can only lower D to what live processes hold.
///
/// Threads: a lane's holder is a thread id of the slot's process; a lane whose thread has
/// exited is taken over by the next thread that needs one (its charges stay: they are the
/// process's). A thread must not die in the middle of an operation (pthread_exit or
/// cancellation from a signal handler); a process may (SIGKILL included).
///
/// Liveness (liveness.hpp): a slot's process is dead only when the kernel says so (kill(pid, 0)
/// answers ESRCH, or only a zombie without threads is left), or when its pid now names a
/// process with another start time. Everything else is alive, so a live process is never
/// reaped. The generation check covers the next operation of a process whose slot was reaped
/// all the same; one already past its check when the reap ran is not covered, and needs a
/// live process taken for dead, which this rule excludes. Corruption: mark_corrupted() stops every
/// attached process at its next reservation (through the device gate bits the hot path checks
/// anyway), not only later openers.
///
/// Progress: the hot path is lock-free while the gates are open. They close only while a
/// reaper works after a process death (a scan of the slots plus the drain), and a dead
/// reaper's work is taken over. Reserve waits at most k_gate_wait_ns and then fails closed;
/// release waits until the gate opens. Every wait is measured on the injected Clock.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "gpuslice/claim.hpp"
#include "gpuslice/config.hpp"
#include "gpuslice/liveness.hpp"
#include "gpuslice/memory/platform.hpp"
#include "gpuslice/memory/region.hpp"
#include "gpuslice/quantity.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::memory {

static_assert(k_max_devices == gpuslice::k_max_devices,
              "the ledger holds as many devices as the environment contract configures");
static_assert(k_rate_words == gpuslice::k_rate_words,
              "the ledger reserves the words the SM limiter's bucket lays out");

/// Creation tag: fail with errc::exists if the file exists.
struct create_only_t {};
/// Creation tag: fail with errc::not_found if the file does not exist.
struct open_only_t {};
/// Creation tag: open the file, creating and initialising it if needed.
struct open_or_create_t {};
/// Tag value of create_only_t.
inline constexpr create_only_t create_only{};
/// Tag value of open_only_t.
inline constexpr open_only_t open_only{};
/// Tag value of open_or_create_t.
inline constexpr open_or_create_t open_or_create{};

/// How long an opener waits for another process to finish initialising a region.
inline constexpr std::uint64_t k_init_wait_ns = 2'000'000'000;
/// How long an operation waits for a device record being claimed by another process.
inline constexpr std::uint64_t k_device_wait_ns = 2'000'000'000;
/// How long try_reserve waits for a closed reap gate before failing closed.
inline constexpr std::uint64_t k_gate_wait_ns = 2'000'000'000;
/// How long a reaper waits for live operations to drain before giving up this round.
inline constexpr std::uint64_t k_drain_wait_ns = 1'000'000'000;
/// Smallest interval between two periodic (not failure-driven) reaps.
inline constexpr std::uint64_t k_reap_interval_ns = 1'000'000'000;
/// Slots whose lane a thread remembers (a thread rarely uses more ledgers than this).
inline constexpr std::size_t k_lane_cache = 4;
/// A thread looks at the clock for a periodic reap once in this many reserves.
inline constexpr std::uint32_t k_reap_check_every = 256;
/// Sleep between polls of a state another process is expected to change soon.
inline constexpr std::chrono::microseconds k_poll_sleep{50};

/// A device as the ledger sees it.
struct device_usage {
  std::string uuid;                    ///< UUID the device was registered with
  std::uint64_t limit = 0;             ///< bytes
  std::uint64_t used = 0;              ///< bytes, total over processes
  std::uint32_t sm_limit_percent = 0;  ///< SM share for the limiter; 0 = none
};

/// A process slot as the ledger sees it.
struct process_usage {
  std::int32_t pid = 0;                             ///< process id
  std::uint64_t start_time = 0;                     ///< start time from /proc/<pid>/stat
  std::array<std::uint64_t, k_max_devices> used{};  ///< bytes per device index
};

/// A point-in-time copy of a ledger (fields read one by one; not an atomic cut).
struct snapshot {
  std::vector<device_usage> devices;     ///< indices 0..n-1
  std::vector<process_usage> processes;  ///< live slots only
};

/// A process's slot in a ledger, from attach(). Plain value; valid for the ledger it came from
/// until the slot is reaped: it carries the slot's whole owner word (pid, generation, state),
/// and every operation through it checks that word first, so a handle whose slot was reaped
/// and claimed again never acts on the new owner's slot (the operation fails closed;
/// slot_current() says why, and attach() gives a new slot).
struct slot_handle {
  std::uint32_t index = static_cast<std::uint32_t>(k_slot_count);  ///< slot number
  std::uint64_t owner = 0;  ///< the slot's owner word when the handle was made
  /// True for a handle returned by attach().
  bool valid() const noexcept { return index < k_slot_count; }
};

namespace detail {

inline error file_error(errc code, const std::string& path, const std::string& what) {
  return make_error(code, "ledger file " + gpuslice::detail::quoted(path) + ": " + what);
}

/// Checks a fully initialised header. Thread-safe on a region nobody mutates the header of.
template <template <class> class Atom>
std::optional<error> validate_header(const basic_region_header<Atom>& h, std::uint64_t file_size,
                                     const std::string& path) {
  if (h.magic != k_magic) {
    return file_error(errc::corrupt, path, "not a gpuslice ledger (wrong magic number)");
  }
  if (h.layout_version != k_layout_version) {
    return file_error(errc::version_mismatch, path,
                      "layout version " + std::to_string(h.layout_version) + ", expected " +
                          std::to_string(k_layout_version));
  }
  if (h.region_size != k_region_size || file_size != k_region_size) {
    return file_error(errc::corrupt, path,
                      "size " + std::to_string(file_size) + " bytes (header says " +
                          std::to_string(h.region_size) + "), expected " +
                          std::to_string(k_region_size));
  }
  if (h.slot_count != k_slot_count) {
    return file_error(errc::corrupt, path,
                      "header claims " + std::to_string(h.slot_count) + " slots, expected " +
                          std::to_string(k_slot_count));
  }
  const auto n = h.device_count.load(std::memory_order_acquire);
  if (n > static_cast<std::uint32_t>(k_max_devices)) {
    return file_error(errc::corrupt, path,
                      "header claims " + std::to_string(n) + " devices, at most " +
                          std::to_string(k_max_devices) + " fit");
  }
  return std::nullopt;
}

/// Writes a fresh header; the caller owns the initialisation claim.
template <template <class> class Atom>
void write_header(basic_region_header<Atom>& h) {
  h.layout_version = k_layout_version;
  h.region_size = k_region_size;
  h.slot_count = static_cast<std::uint32_t>(k_slot_count);
  h.magic = k_magic;  // last: a header with the magic is a whole header
}

/// What a ledger marked corrupted means and the one recovery that never grants a quota twice.
inline constexpr std::string_view k_corrupted_advice =
    "marked corrupted: its processes are refused every new reservation; stop every process of "
    "the container that uses it (restart the pod), then remove the file. Removing it while any "
    "of them runs would let a new ledger grant the quota a second time";

/// Constructs every field of \p r in place except the initialisation claim (init, init_ident),
/// which its holder keeps. Precondition: the caller holds that claim; nobody else uses \p r.
template <template <class> class Atom>
void construct_region(basic_region<Atom>& r) {
  using u64 = Atom<std::uint64_t>;
  auto& h = r.header;
  ::new (static_cast<void*>(&h.device_count)) Atom<std::uint32_t>(0);
  ::new (static_cast<void*>(&h.reap_gate)) u64(0);
  ::new (static_cast<void*>(&h.reap_gate_ident)) u64(0);
  ::new (static_cast<void*>(&h.last_reap_ns)) u64(0);
  ::new (static_cast<void*>(&h.reap_count)) u64(0);
  ::new (static_cast<void*>(&h.reclaimed_bytes)) u64(0);
  h.reserved0 = 0;
  std::fill(std::begin(h.reserved), std::end(h.reserved), std::uint64_t{0});
  // Value-initialisation zeroes the records; a takeover may find them half written.
  for (auto& d : r.devices) ::new (static_cast<void*>(&d)) basic_device_record<Atom>();
  for (auto& s : r.slots) ::new (static_cast<void*>(&s)) basic_process_slot<Atom>();
  write_header(h);
}

inline bool all_zero(const unsigned char* p, std::size_t n) {
  return std::all_of(p, p + n, [](unsigned char c) { return c == 0; });
}

/// pread that retries on EINTR and short reads; returns bytes read or -1.
inline ssize_t read_at(int fd, void* buf, std::size_t n, off_t off) {
  std::size_t done = 0;
  while (done < n) {
    const ssize_t r =
        ::pread(fd, static_cast<char*>(buf) + done, n - done, off + static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

/// Checks a ledger file's size and header bytes before it is mapped: foreign, other-version,
/// truncated and wrong-size files are refused. Precondition: fd is open for reading.
inline std::optional<error> classify_file(int fd, std::uint64_t size, const std::string& path) {
  unsigned char raw[sizeof(region_header)] = {};
  const ssize_t got = read_at(fd, raw, sizeof raw, 0);
  if (got < 0) return file_error(errc::io_error, path, "cannot read: " + errno_text(errno));
  const auto truncated = [&] {
    return file_error(errc::corrupt, path,
                      (size < k_region_size ? "truncated: " : "wrong size: ") +
                          std::to_string(size) + " bytes, expected " +
                          std::to_string(k_region_size));
  };
  if (static_cast<std::size_t>(got) < sizeof raw) return truncated();
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint64_t init = 0;
  std::memcpy(&magic, raw + offsetof(region_header, magic), sizeof magic);
  std::memcpy(&version, raw + offsetof(region_header, layout_version), sizeof version);
  std::memcpy(&init, raw + offsetof(region_header, init), sizeof init);
  const std::uint8_t state = claim_state(init);
  // The initialiser writes the magic last (write_header), so a half-written header of this
  // version has no magic yet, and a foreign or other-version file is refused even while its
  // init word reads "initialising": nothing is ever taken over that is not ours.
  if (magic != 0 && magic != k_magic) {
    return file_error(errc::corrupt, path, "not a gpuslice ledger (wrong magic number)");
  }
  if (magic == k_magic && version != k_layout_version) {
    return file_error(errc::version_mismatch, path,
                      "layout version " + std::to_string(version) + ", expected " +
                          std::to_string(k_layout_version));
  }
  if (size != k_region_size) return truncated();
  // Zero magic is only legitimate while uninitialised (all zero) or initialising.
  if (magic == 0 && !all_zero(raw, sizeof raw) &&
      state != static_cast<std::uint8_t>(init_state::initialising)) {
    return file_error(errc::corrupt, path, "not a gpuslice ledger (wrong magic number)");
  }
  return std::nullopt;
}

}  // namespace detail

/// Storage policy: a region in a file mapped MAP_SHARED. Movable, not copyable.
template <template <class> class Atom = std::atomic>
class shared_file_storage {
 public:
  /// The layout this storage holds.
  using region_type = basic_region<Atom>;

  shared_file_storage() = default;
  shared_file_storage(shared_file_storage&& o) noexcept
      : region_(std::exchange(o.region_, nullptr)), path_(std::move(o.path_)) {}
  shared_file_storage& operator=(shared_file_storage&& o) noexcept {
    if (this != &o) {
      unmap();
      region_ = std::exchange(o.region_, nullptr);
      path_ = std::move(o.path_);
    }
    return *this;
  }
  ~shared_file_storage() { unmap(); }

  /// Creates the file; errc::exists if it is there. Waits for other openers on \p clock,
  /// judging them with \p live. Thread-safe (no shared state).
  template <class Clock = steady_clock_source, class Liveness = proc_liveness>
  static result<shared_file_storage> open(create_only_t, const std::string& path,
                                          const Clock& clock = {}, const Liveness& live = {}) {
    return open_impl(path, O_CREAT | O_EXCL, true, clock, live);
  }
  /// Opens an existing ledger; errc::not_found if absent. Thread-safe.
  template <class Clock = steady_clock_source, class Liveness = proc_liveness>
  static result<shared_file_storage> open(open_only_t, const std::string& path,
                                          const Clock& clock = {}, const Liveness& live = {}) {
    return open_impl(path, 0, false, clock, live);
  }
  /// Opens, creating and initialising the file if needed. Thread-safe.
  template <class Clock = steady_clock_source, class Liveness = proc_liveness>
  static result<shared_file_storage> open(open_or_create_t, const std::string& path,
                                          const Clock& clock = {}, const Liveness& live = {}) {
    return open_impl(path, O_CREAT, true, clock, live);
  }

  /// The mapped region. Thread-safe.
  region_type* region() const noexcept { return region_; }
  /// Where the region lives.
  const std::string& path() const noexcept { return path_; }

 private:
  static constexpr mode_t k_file_mode = 0666;  // the container's processes may run as others

  void unmap() noexcept {
    if (region_ != nullptr) ::munmap(static_cast<void*>(region_), k_region_size);
    region_ = nullptr;
  }

  template <class Clock, class Liveness>
  static result<shared_file_storage> open_impl(const std::string& path, int flags, bool may_init,
                                               const Clock& clock, const Liveness& live) {
    using detail::file_error;
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | flags, k_file_mode);
    if (fd < 0) {
      const int e = errno;
      if (e == EEXIST) return file_error(errc::exists, path, "already exists (create_only)");
      if (e == ENOENT && (flags & O_CREAT) != 0) {
        return file_error(errc::io_error, path, "cannot create: " + detail::errno_text(e));
      }
      if (e == ENOENT) return file_error(errc::not_found, path, "does not exist (open_only)");
      return file_error(errc::io_error, path, "cannot open: " + detail::errno_text(e));
    }
    struct fd_closer {
      int fd;
      ~fd_closer() { ::close(fd); }
    } closer{fd};

    // Wait for a creator that has the file but has not sized it yet.
    const std::uint64_t waited_from = clock.now_ns();
    struct stat st {};
    for (;;) {
      if (::fstat(fd, &st) != 0) {
        return file_error(errc::io_error, path, "cannot stat: " + detail::errno_text(errno));
      }
      if (st.st_size != 0) break;
      if (may_init) {
        // posix_fallocate, not ftruncate: a sparse file on a full disk would fail later, at
        // the first store through the mapping, with SIGBUS instead of this clean error.
        if (const int e = ::posix_fallocate(fd, 0, static_cast<off_t>(k_region_size)); e != 0) {
          return file_error(errc::io_error, path,
                            "cannot size to " + std::to_string(k_region_size) +
                                " bytes: " + detail::errno_text(e));
        }
        continue;
      }
      if (clock.now_ns() - waited_from > k_init_wait_ns) {
        return file_error(errc::busy, path,
                          "is empty: its creator did not initialise it within 2 s");
      }
      std::this_thread::sleep_for(k_poll_sleep);
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);

    // Classify from a copy of the header before mapping, so a short or foreign file never
    // gets mapped (a mapping past the end of a file faults on access).
    if (auto e = detail::classify_file(fd, size, path)) return std::move(*e);

    void* p = ::mmap(nullptr, k_region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      return file_error(errc::io_error, path, "cannot map: " + detail::errno_text(errno));
    }
    shared_file_storage s;
    s.region_ = static_cast<region_type*>(p);
    s.path_ = path;
    if (auto e = s.initialise_or_wait(may_init, size, clock, live)) return std::move(*e);
    return s;
  }

  /// Agrees with concurrent openers on one initialisation (the claim of claim.hpp on
  /// header.init: an initialiser that died is taken over, one that lives is waited for); then
  /// validates the header.
  template <class Clock, class Liveness>
  std::optional<error> initialise_or_wait(bool may_init, std::uint64_t size, const Clock& clock,
                                          const Liveness& live) {
    using detail::file_error;
    auto& h = region_->header;
    const std::uint64_t waited_from = clock.now_ns();
    const claim_identity me = self_identity(live);
    for (;;) {
      std::uint64_t w = h.init.load(std::memory_order_acquire);
      if (may_init) {
        const claim_result r = try_claim(h.init, h.init_ident, me, live);
        if (r.mine()) {
          // Nobody can be using a region whose initialisation never finished: (re)build it.
          initialise();
          (void)finish_claim(h.init, r.word, static_cast<std::uint8_t>(init_state::ready));
          continue;  // whatever happened, the next look decides
        }
        w = r.word;
      }
      const std::uint8_t st = claim_state(w);
      if (st == static_cast<std::uint8_t>(init_state::ready)) break;
      if (st == static_cast<std::uint8_t>(init_state::corrupted)) {
        return file_error(errc::corrupt, path_, std::string(detail::k_corrupted_advice));
      }
      if (st > static_cast<std::uint8_t>(init_state::corrupted)) {
        return file_error(errc::corrupt, path_,
                          "invalid initialisation state " + std::to_string(st));
      }
      if (clock.now_ns() - waited_from > k_init_wait_ns) {
        return file_error(
            errc::busy, path_,
            st == 0 ? std::string("was never initialised (no creator finished within 2 s)")
                    : "initialisation by process " + std::to_string(claim_pid(w)) +
                          " did not finish within 2 s");
      }
      std::this_thread::sleep_for(k_poll_sleep);
    }
    return detail::validate_header(h, size, path_);
  }

  /// Builds every field but the init claim in place. Precondition: this process holds the
  /// initialisation claim.
  void initialise() { detail::construct_region(*region_); }

  region_type* region_ = nullptr;
  std::string path_;
};

/// Storage policy: a region on the heap, for one process (controllers, simulators, tests).
template <template <class> class Atom = std::atomic>
class heap_storage {
 public:
  /// The layout this storage holds.
  using region_type = basic_region<Atom>;

  /// A fresh, initialised region.
  static heap_storage create() {
    heap_storage s;
    s.region_ = std::make_unique<region_type>();  // value-initialised: all zero
    detail::write_header(s.region_->header);
    s.region_->header.init.store(claim_word(0, 0, static_cast<std::uint8_t>(init_state::ready)),
                                 std::memory_order_release);
    return s;
  }
  /// The region. Thread-safe.
  region_type* region() const noexcept { return region_.get(); }
  /// Where the region lives.
  std::string path() const { return "<in-memory>"; }

 private:
  std::unique_ptr<region_type> region_;
};

/// The ledger over a storage policy, a clock and a liveness check.
/// Clock: `std::uint64_t now_ns() const`. Liveness: `liveness_probe probe(std::int32_t pid)
/// const` and `std::int32_t self_pid() const`. Movable, not copyable; all operations are
/// thread-safe unless stated.
template <class Storage, class Clock = steady_clock_source, class Liveness = proc_liveness>
class basic_ledger {
 public:
  using storage_type = Storage;
  using region_type = typename Storage::region_type;

  /// Wraps an opened storage.
  explicit basic_ledger(Storage storage, Clock clock = {}, Liveness live = {})
      : storage_(std::move(storage)),
        clock_(std::move(clock)),
        live_(std::move(live)),
        attach_mutex_(std::make_unique<std::mutex>()) {}

  /// Opens a ledger file (shared_file_storage only). Thread-safe.
  template <class Tag>
  static result<basic_ledger> open(Tag tag, const std::string& path, Clock clock = {},
                                   Liveness live = {}) {
    auto s = Storage::open(tag, path, clock, live);
    if (!s) return std::move(s).err();
    return basic_ledger(std::move(*s), std::move(clock), std::move(live));
  }

  /// A fresh in-process ledger (heap_storage only).
  static basic_ledger create(Clock clock = {}, Liveness live = {}) {
    return basic_ledger(Storage::create(), std::move(clock), std::move(live));
  }

  // ---- devices ---------------------------------------------------------------------------

  /// The index (0..15) of the device with \p uuid, registering it with \p limit bytes if
  /// absent; an existing device keeps its limit. Thread-safe (across processes too).
  result<int> device(std::string_view uuid, std::uint64_t limit) {
    if (uuid.empty() || uuid.size() >= k_uuid_bytes) {
      return make_error(errc::invalid_value, "device UUID " + gpuslice::detail::quoted(uuid) +
                                                 ": expected 1 to " +
                                                 std::to_string(k_uuid_bytes - 1) + " bytes");
    }
    if (!usable_now()) return make_error(errc::corrupt, std::string(detail::k_corrupted_advice));
    auto& h = header();
    const claim_identity me = self_identity(live_);
    const auto now = [this] { return clock_now(); };
    for (int i = 0; i < k_max_devices;) {
      auto& d = dev(i);
      const claim_result r = claim(d.state, d.state_ident, me, live_, now, k_device_wait_ns);
      if (r.mine()) {
        // Fresh, or taken over from a registrar that died half-way: write it all.
        std::memset(d.uuid, 0, k_uuid_bytes);
        std::memcpy(d.uuid, uuid.data(), uuid.size());
        d.limit.store(limit, std::memory_order_relaxed);
        d.sm_limit_percent.store(0, std::memory_order_relaxed);
        d.used.store(0, std::memory_order_seq_cst);
        for (auto& w : d.rate_words) w.store(0, std::memory_order_relaxed);
        close_if_corrupted();
        if (!finish_claim(d.state, r.word, static_cast<std::uint8_t>(device_state::ready))) {
          continue;  // taken over from us: look at the record again
        }
        auto n = h.device_count.load(std::memory_order_relaxed);
        const auto want = static_cast<std::uint32_t>(i + 1);
        while (n < want &&
               !h.device_count.compare_exchange_weak(n, want, std::memory_order_acq_rel)) {
        }
        return i;
      }
      if (r.what == claim_result::kind::busy) {
        return make_error(errc::busy, "device record " + std::to_string(i) +
                                          " is being registered by process " +
                                          std::to_string(claim_pid(r.word)) +
                                          ", which did not finish within 2 s");
      }
      if (claim_state(r.word) != static_cast<std::uint8_t>(device_state::ready)) {
        return make_error(errc::corrupt, "device record " + std::to_string(i) +
                                             " has an invalid state " +
                                             std::to_string(claim_state(r.word)));
      }
      if (uuid_equals(d, uuid)) return i;
      ++i;
    }
    return make_error(errc::capacity, "device UUID " + gpuslice::detail::quoted(uuid) +
                                          ": the ledger already holds " +
                                          std::to_string(k_max_devices) + " devices");
  }

  /// The index of the device with \p uuid; errc::not_found if absent. Thread-safe.
  result<int> find_device(std::string_view uuid) const {
    const int n = device_count();
    for (int i = 0; i < n; ++i) {
      const auto& d = dev(i);
      if (claim_state(d.state.load(std::memory_order_acquire)) ==
              static_cast<std::uint8_t>(device_state::ready) &&
          uuid_equals(d, uuid)) {
        return i;
      }
    }
    return make_error(errc::not_found,
                      "device UUID " + gpuslice::detail::quoted(uuid) + " is not in the ledger");
  }

  /// Registered devices (records 0..n-1). Thread-safe.
  int device_count() const noexcept {
    return static_cast<int>(std::min<std::uint32_t>(
        header().device_count.load(std::memory_order_acquire), k_max_devices));
  }

  /// The device's UUID ("" for an unregistered index). Thread-safe.
  std::string uuid(int device) const {
    if (!ready_device(device)) return {};
    const auto& d = dev(device);
    return std::string(d.uuid, strnlen(d.uuid, k_uuid_bytes));
  }

  // ---- processes ---------------------------------------------------------------------------

  /// The calling process's slot, created on first use (pid + /proc start time; a process
  /// whose start time cannot be read gets a slot judged by its pid alone). After fork() the
  /// child gets a new slot on its next call; a process whose slot was reaped gets a new one.
  /// Thread-safe.
  result<slot_handle> attach() {
    const std::int32_t pid = live_.self_pid();
    std::lock_guard<std::mutex> lock(*attach_mutex_);  // first use only; not the hot path
    if (self_pid_ == pid && self_slot_.valid() && slot_current(self_slot_)) return self_slot_;
    const claim_identity me = self_identity(live_);
    auto r = attach_as(pid, me.start_time);
    if (r) {
      self_pid_ = pid;
      self_slot_ = *r;
    }
    return r;
  }

  /// The slot of process (\p pid, \p start_time; 0 = not known), created if absent: for
  /// controllers and simulators that account on behalf of processes that do not use the ledger
  /// themselves, and tests. Only the calling process may charge through the slot (its threads
  /// own the slot's lanes), so never attach_as a process that charges the same ledger.
  /// Thread-safe.
  result<slot_handle> attach_as(std::int32_t pid, std::uint64_t start_time) {
    if (pid <= 0 || static_cast<std::uint32_t>(pid) > k_max_pid) {
      return make_error(errc::invalid_value,
                        "pid " + std::to_string(pid) + ": expected a positive process id");
    }
    if (!usable()) return make_error(errc::corrupt, std::string(detail::k_corrupted_advice));
    start_time &= k_claim_start_mask;
    const claim_identity me{pid, start_time};
    for (int attempt = 0; attempt < 2; ++attempt) {
      for (std::size_t i = 0; i < k_slot_count; ++i) {
        auto& s = slot(i);
        const auto o = s.owner.load(std::memory_order_acquire);
        if (owner_state(o) == slot_state::live && owner_pid(o) == pid &&
            claim_start(o, s.ident.load(std::memory_order_acquire)) == start_time) {
          return slot_handle{static_cast<std::uint32_t>(i), o};
        }
      }
      for (std::size_t i = 0; i < k_slot_count; ++i) {
        auto& s = slot(i);
        if (owner_state(s.owner.load(std::memory_order_relaxed)) != slot_state::free) continue;
        const claim_result r = try_claim(s.owner, s.ident, me, live_);
        if (!r.mine()) continue;
        clear_lanes(s);
        // A CAS, not a store: a claim is never silently shared.
        if (finish_claim(s.owner, r.word, static_cast<std::uint8_t>(slot_state::live))) {
          return slot_handle{static_cast<std::uint32_t>(i),
                             with_claim_state(r.word, static_cast<std::uint8_t>(slot_state::live))};
        }
      }
      if (reap() == 0 && !any_free_slot()) break;
    }
    return make_error(errc::capacity, "all " + std::to_string(k_slot_count) +
                                          " process slots are held by live processes");
  }

  /// True while \p h still names its slot: false once the slot was reaped (its process taken
  /// for dead) or freed; every operation through \p h then fails closed. Thread-safe.
  bool slot_current(slot_handle h) const noexcept {
    return h.valid() && slot(h.index).owner.load(std::memory_order_acquire) == h.owner;
  }

  /// False once the ledger is marked corrupted: every reservation is then refused, in every
  /// process attached to it (see mark_corrupted). Thread-safe.
  bool usable() const noexcept {
    return claim_state(header().init.load(std::memory_order_relaxed)) ==
           static_cast<std::uint8_t>(init_state::ready);
  }

  // ---- the hot path ------------------------------------------------------------------------

  /// Reserves \p bytes on \p device for \p slot if the device total stays at or below its
  /// limit. Lock-free while no reap is in progress; fails closed on bad arguments.
  /// When it would fail, it first reaps dead processes and tries once more. Thread-safe.
  bool try_reserve(slot_handle h, int device, std::uint64_t bytes) noexcept {
    if (!h.valid() || !ready_device(device) || bytes > k_max_bytes) return false;
    // Corruption and a reaped slot are checked inside at no extra shared load: a corrupted
    // ledger keeps every device's gate bit set (see mark_corrupted), and lane_for() checks
    // the handle's generation.
    if (bytes == 0) return slot_current(h) && usable();
    maybe_periodic_reap();
    if (reserve_once(h, device, bytes)) return true;
    if (reap() == 0) return false;
    return reserve_once(h, device, bytes);
  }

  /// Charges \p bytes on \p device to \p slot whether or not they fit the limit: memory the
  /// driver already holds (a context, a module) is counted where every process of the
  /// container sees it, so the device's use may then exceed its limit and every reservation is
  /// refused until it is back under. False on bad arguments, a reaped slot or a corrupted
  /// ledger. Thread-safe.
  bool charge_held(slot_handle h, int device, std::uint64_t bytes) noexcept {
    if (!h.valid() || !ready_device(device) || bytes == 0 || bytes > k_max_bytes) return false;
    return add_used(h, device, bytes, false);
  }

  /// Gives back \p bytes on \p device that \p slot reserved; asking for more than the process
  /// holds gives back what it holds, so a caller's mistake never frees another process's
  /// quota. Lock-free while no reap is in progress (then it waits for the reaper, whose death
  /// is repaired). Thread-safe.
  void release(slot_handle h, int device, std::uint64_t bytes) noexcept {
    if (!h.valid() || !ready_device(device) || bytes == 0) return;
    const lane_ref l = lane_for(h);
    if (l.lane == nullptr) return;  // the slot was reaped: its bytes are no longer counted here
    bytes = std::min(bytes, charged(slot(h.index), device));
    if (bytes == 0 || bytes > k_max_bytes) return;
    auto& used = dev(device).used;
    begin(l);
    auto cur = used.load(std::memory_order_relaxed);
    for (;;) {
      if ((cur & k_gate_bit) != 0) {
        end(l);
        // Opens unless the ledger was marked corrupted: then nothing is counted any more.
        if (!wait_gate(device, ~std::uint64_t{0})) return;
        begin(l);
        cur = used.load(std::memory_order_relaxed);
        continue;
      }
      if (used.compare_exchange_weak(cur, cur > bytes ? cur - bytes : 0,
                                     std::memory_order_acq_rel)) {
        break;
      }
    }
    charge(l, device, ~bytes + 1);  // minus bytes, modulo 2^64
    end(l);
  }

  /// Bytes in use on \p device, over all processes (0 for a bad index). Thread-safe.
  std::uint64_t used(int device) const noexcept {
    return ready_device(device) ? dev(device).used.load(std::memory_order_acquire) & k_max_bytes
                                : 0;
  }
  /// The device's limit in bytes (0 for a bad index). Thread-safe.
  std::uint64_t limit(int device) const noexcept {
    return ready_device(device) ? dev(device).limit.load(std::memory_order_acquire) : 0;
  }
  /// Bytes \p slot holds on \p device (the sum of its lanes). Thread-safe.
  std::uint64_t slot_used(slot_handle h, int device) const noexcept {
    return slot_current(h) && device >= 0 && device < k_max_devices ? charged(slot(h.index), device)
                                                                    : 0;
  }

  /// Sets the device's limit; it applies to the next reservation, and bytes already in use are
  /// never revoked (a total above a lowered limit only blocks reservations). Thread-safe.
  /// Returns false for an unregistered device.
  bool set_limit(int device, std::uint64_t bytes) noexcept {
    if (!ready_device(device)) return false;
    dev(device).limit.store(bytes, std::memory_order_release);
    return true;
  }

  /// Sets the SM share (0..100; 0 = none) the limiter reads. Thread-safe. False if invalid.
  bool set_sm_limit(int device, std::uint32_t percent) noexcept {
    if (!ready_device(device) || percent > k_cores_per_gpu) return false;
    dev(device).sm_limit_percent.store(percent, std::memory_order_release);
    return true;
  }
  /// The SM share of \p device (0 = none). Thread-safe.
  std::uint32_t sm_limit(int device) const noexcept {
    return ready_device(device) ? dev(device).sm_limit_percent.load(std::memory_order_acquire) : 0;
  }

  /// The SM limiter's k_rate_words naturally aligned words for \p device (nullptr for a bad
  /// index). Opaque to the ledger; zero at initialisation. Thread-safe.
  std::atomic<std::uint64_t>* rate_words(int device) noexcept {
    return device >= 0 && device < k_max_devices ? dev(device).rate_words : nullptr;
  }

  // ---- reaping -------------------------------------------------------------------------------

  /// Returns the bytes of dead processes' slots to their devices and frees the slots; returns
  /// the bytes reclaimed (0 if nothing was dead, or another live reaper is at work). See the
  /// protocol at the top of this file. Thread-safe (across processes too).
  std::uint64_t reap() noexcept {
    const auto r = reap_impl(false);
    return r == k_no_gate ? 0 : r;
  }

  /// A copy of the devices and the live slots. Thread-safe.
  memory::snapshot snapshot() const {
    memory::snapshot out;
    const int n = device_count();
    for (int i = 0; i < n; ++i) {
      const auto& d = dev(i);
      out.devices.push_back(device_usage{uuid(i), d.limit.load(std::memory_order_acquire),
                                         d.used.load(std::memory_order_acquire) & k_max_bytes,
                                         d.sm_limit_percent.load(std::memory_order_acquire)});
    }
    for (std::size_t i = 0; i < k_slot_count; ++i) {
      const auto& s = slot(i);
      const auto o = s.owner.load(std::memory_order_acquire);
      if (owner_state(o) != slot_state::live) continue;
      process_usage p;
      p.pid = owner_pid(o);
      p.start_time = claim_start(o, s.ident.load(std::memory_order_acquire));
      for (int d = 0; d < k_max_devices; ++d) p.used[d] = charged(s, d);
      out.processes.push_back(p);
    }
    return out;
  }

  /// Bytes reclaimed from dead processes over the ledger's life. Thread-safe.
  std::uint64_t reclaimed_bytes() const noexcept {
    return header().reclaimed_bytes.load(std::memory_order_relaxed);
  }

  /// Marks the region corrupted: every later open refuses it, and every process attached to
  /// it is refused its next reservation, registration and attach; releases are ignored from
  /// then on (nothing in the file is counted any more). For operators and for checks that
  /// find the region inconsistent. Thread-safe.
  void mark_corrupted() noexcept {
    auto& init = header().init;
    auto w = init.load(std::memory_order_relaxed);
    while (!init.compare_exchange_weak(
        w, with_claim_state(w, static_cast<std::uint8_t>(init_state::corrupted)),
        std::memory_order_seq_cst)) {
    }
    // Every reservation already checks the device's gate bit; a corrupted ledger keeps them
    // all closed (a reaper or a registration that opens one closes it again, see
    // close_if_corrupted), so the hot path pays nothing for this check.
    close_if_corrupted();
  }

  /// The storage (for its path and region). Thread-safe.
  const Storage& storage() const noexcept { return storage_; }

 private:
  auto& header() const noexcept { return storage_.region()->header; }
  auto& dev(int i) const noexcept { return storage_.region()->devices[i]; }
  auto& slot(std::size_t i) const noexcept { return storage_.region()->slots[i]; }
  std::uint64_t clock_now() const noexcept { return clock_.now_ns(); }

  /// usable(), ordered against mark_corrupted() (see close_if_corrupted).
  bool usable_now() const noexcept {
    return claim_state(header().init.load(std::memory_order_seq_cst)) ==
           static_cast<std::uint8_t>(init_state::ready);
  }

  /// Closes every device's gate for good when the ledger is marked corrupted. Called by
  /// mark_corrupted, and after anything that may open a gate (a reaper's recount, a device's
  /// registration): each side stores, then loads the other's word, all seq_cst, so either the
  /// opener sees the mark or the marker's close comes after the opening.
  void close_if_corrupted() noexcept {
    if (usable_now()) return;
    for (int d = 0; d < k_max_devices; ++d) {
      dev(d).used.fetch_or(k_gate_bit, std::memory_order_seq_cst);
    }
  }

  bool ready_device(int device) const noexcept {
    return device >= 0 && device < k_max_devices &&
           claim_state(dev(device).state.load(std::memory_order_acquire)) ==
               static_cast<std::uint8_t>(device_state::ready);
  }

  template <class Record>
  static bool uuid_equals(const Record& d, std::string_view uuid) noexcept {
    const std::size_t n = strnlen(d.uuid, k_uuid_bytes);
    return n == uuid.size() && std::memcmp(d.uuid, uuid.data(), n) == 0;
  }

  bool any_free_slot() const noexcept {
    for (std::size_t i = 0; i < k_slot_count; ++i) {
      if (owner_state(slot(i).owner.load(std::memory_order_relaxed)) == slot_state::free) {
        return true;
      }
    }
    return false;
  }

  /// False only when the kernel proves the slot's process dead (liveness.hpp, claim.hpp).
  template <class Slot>
  bool slot_alive(const Slot& s, std::uint64_t owner) const noexcept {
    return !claim_holder_dead(live_, owner, s.ident.load(std::memory_order_acquire));
  }

  /// True while any operation of the slot's process is announced (the reaper's drain).
  template <class Slot>
  static bool any_inflight(const Slot& s) noexcept {
    for (const auto& l : s.lanes) {
      if (l.inflight.load(std::memory_order_acquire) != 0) return true;
    }
    return false;
  }

  /// The bytes a slot holds on a device: the sum of its lanes (modulo 2^64).
  template <class Slot>
  static std::uint64_t charged(const Slot& s, int device) noexcept {
    std::uint64_t sum = 0;
    for (const auto& l : s.lanes) sum += l.used[device].load(std::memory_order_acquire);
    return sum;
  }

  template <class Slot>
  static void clear_lanes(Slot& s) noexcept {
    for (auto& l : s.lanes) {
      l.holder.store(0, std::memory_order_relaxed);
      l.inflight.store(0, std::memory_order_relaxed);
      for (auto& u : l.used) u.store(0, std::memory_order_relaxed);
    }
  }

  bool any_dead_slot() const noexcept {
    for (std::size_t i = 0; i < k_slot_count; ++i) {
      const auto& s = slot(i);
      const auto o = s.owner.load(std::memory_order_acquire);
      const auto st = owner_state(o);
      if (st == slot_state::free) continue;
      if (st == slot_state::reaping || !slot_alive(s, o)) return true;
    }
    return false;
  }

  /// Takes the reap gate (a claim, claim.hpp), displacing a holder the kernel proves dead.
  /// Returns the gate word now held, or 0 when a live reaper holds it or when this process
  /// cannot establish its own identity (a reaper nobody could judge must never hold it).
  std::uint64_t acquire_gate() noexcept {
    const claim_identity me = self_identity(live_);
    if (!me.complete()) return 0;
    auto& h = header();
    const claim_result r = try_claim(h.reap_gate, h.reap_gate_ident, me, live_);
    return r.mine() ? r.word : 0;
  }

  /// True when the gate is open or its holder is proven dead.
  bool gate_abandoned() const noexcept {
    auto& h = header();
    const auto g = h.reap_gate.load(std::memory_order_acquire);
    return claim_state(g) == k_claim_free ||
           claim_holder_dead(live_, g, h.reap_gate_ident.load(std::memory_order_acquire));
  }

  using lane_type =
      std::remove_reference_t<decltype(std::declval<region_type&>().slots[0].lanes[0])>;

  /// The lane a thread uses in a slot; shared lanes are updated with read-modify-writes.
  struct lane_ref {
    lane_type* lane;
    bool shared;
  };

  /// This thread's lane in slot \p h: a private one it holds or claims (taking over one whose
  /// thread has exited), else the shared lane. Remembered per thread for a few slots.
  ///
  /// Also the generation check of the hot path, at no extra shared load: a cached private lane
  /// whose holder is still this thread proves the slot was not freed since the entry was made
  /// for this very owner word (freeing a slot, and claiming it again, clear every lane's
  /// holder, and only this thread's slow path below sets it back, evicting the thread's other
  /// entries for the slot). Everything else checks slot_current(h) first. Returns a null lane
  /// when \p h no longer names its slot.
  lane_ref lane_for(slot_handle h) noexcept {
    struct entry {
      const void* region = nullptr;
      std::uint64_t owner = 0;
      std::uint32_t slot = 0;
      std::uint32_t lane = 0;
    };
    static thread_local std::array<entry, k_lane_cache> cache{};
    static thread_local std::size_t next = 0;
    const std::uint64_t tid = detail::this_thread_id();
    const void* r = storage_.region();
    auto& s = slot(h.index);
    for (const auto& e : cache) {
      if (e.region != r || e.slot != h.index || e.owner != h.owner) continue;
      auto& l = s.lanes[e.lane];
      if (e.lane == k_shared_lane) {
        if (!slot_current(h)) return {nullptr, true};
        return {&l, true};
      }
      if (l.holder.load(std::memory_order_relaxed) == tid) return {&l, false};
    }
    if (!slot_current(h)) return {nullptr, false};
    for (auto& e : cache) {
      if (e.region == r && e.slot == h.index) e.region = nullptr;
    }
    std::size_t chosen = k_shared_lane;
    for (std::size_t i = 0; i < k_lanes && chosen == k_shared_lane; ++i) {
      if (i == k_shared_lane) continue;
      auto& l = s.lanes[i];
      auto cur = l.holder.load(std::memory_order_acquire);
      if (cur == tid) {
        chosen = i;
      } else if ((cur == 0 || !detail::thread_exists(cur)) &&
                 l.holder.compare_exchange_strong(cur, tid, std::memory_order_acq_rel)) {
        chosen = i;
      }
    }
    cache[next] = entry{r, h.owner, h.index, static_cast<std::uint32_t>(chosen)};
    next = (next + 1) % k_lane_cache;
    return {&s.lanes[chosen], chosen == k_shared_lane};
  }

  /// Announces an operation in lane \p l (step 1).
  static void begin(const lane_ref& l) noexcept {
    if (l.shared) {
      l.lane->inflight.fetch_add(1, std::memory_order_relaxed);
    } else {
      l.lane->inflight.store(1, std::memory_order_relaxed);
    }
  }
  /// Ends an operation in lane \p l (step 4).
  static void end(const lane_ref& l) noexcept {
    if (l.shared) {
      l.lane->inflight.fetch_sub(1, std::memory_order_release);
    } else {
      l.lane->inflight.store(0, std::memory_order_release);
    }
  }
  /// Adds \p delta (modulo 2^64) to the lane's charge on \p device (step 3).
  static void charge(const lane_ref& l, int device, std::uint64_t delta) noexcept {
    auto& w = l.lane->used[device];
    if (l.shared) {
      w.fetch_add(delta, std::memory_order_relaxed);
    } else {
      w.store(w.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
    }
  }

  /// Waits until \p device's gate bit clears, at most \p wait_ns (all ones: forever). A gate
  /// left by a dead reaper is taken over: this thread finishes the reap. False on timeout.
  bool wait_gate(int device, std::uint64_t wait_ns) noexcept {
    const auto from = clock_now();
    for (;;) {
      if ((dev(device).used.load(std::memory_order_acquire) & k_gate_bit) == 0) return true;
      if (!usable_now()) return false;  // closed for good: the ledger is marked corrupted
      // A gate left by a dead reaper: finish its reap (a no-op without an identity).
      if (gate_abandoned() && reap_impl(true) != k_no_gate) continue;
      if (clock_now() - from > wait_ns) return false;
      std::this_thread::sleep_for(k_poll_sleep);
    }
  }

  bool reserve_once(slot_handle h, int device, std::uint64_t bytes) noexcept {
    return add_used(h, device, bytes, true);
  }

  /// Adds \p bytes to \p device's use and to \p h's slot, through the device's gate and one
  /// compare-and-swap loop: with \p within_limit only while the total stays at or below the
  /// device's limit, else while it stays representable (memory the driver already holds).
  /// False on a reaped slot (fail closed), a gate that stays closed, or no room.
  bool add_used(slot_handle h, int device, std::uint64_t bytes, bool within_limit) noexcept {
    const lane_ref l = lane_for(h);
    if (l.lane == nullptr) return false;
    auto& d = dev(device);
    begin(l);
    const auto cap =
        within_limit ? std::min(d.limit.load(std::memory_order_acquire), k_max_bytes) : k_max_bytes;
    auto cur = d.used.load(std::memory_order_relaxed);
    for (;;) {
      if ((cur & k_gate_bit) != 0) {
        end(l);
        if (!wait_gate(device, k_gate_wait_ns)) return false;
        begin(l);
        cur = d.used.load(std::memory_order_relaxed);
        continue;
      }
      if (cur > cap || bytes > cap - cur) {
        end(l);
        return false;
      }
      if (d.used.compare_exchange_weak(cur, cur + bytes, std::memory_order_acq_rel)) break;
    }
    charge(l, device, bytes);
    end(l);
    return true;
  }

  /// The reap of reap(); \p force skips the check for dead slots (taking over a dead reaper).
  /// Returns the bytes reclaimed, or k_no_gate when it could not take the gate.
  std::uint64_t reap_impl(bool force) noexcept {
    if (!usable_now()) return k_no_gate;  // a corrupted ledger's gates stay closed
    if (!force && !any_dead_slot()) return 0;
    auto& h = header();
    const std::uint64_t gate = acquire_gate();
    if (gate == 0) return k_no_gate;
    const int n = device_count();
    for (int d = 0; d < n; ++d) dev(d).used.fetch_or(k_gate_bit, std::memory_order_acq_rel);
    const auto reopen = [&] {
      for (int d = 0; d < n; ++d) dev(d).used.fetch_and(k_max_bytes, std::memory_order_seq_cst);
      close_if_corrupted();
      (void)release_claim(h.reap_gate, gate);
    };
    // Drain live operations; find the dead slots.
    const std::uint64_t drain_from = clock_now();
    std::array<bool, k_slot_count> dead{};
    for (std::size_t i = 0; i < k_slot_count; ++i) {
      auto& s = slot(i);
      for (;;) {
        const auto o = s.owner.load(std::memory_order_acquire);
        const auto st = owner_state(o);
        if (st == slot_state::free) break;
        if (st == slot_state::reaping || !slot_alive(s, o)) {
          dead[i] = true;  // a reaping slot under the gate: its reaper died
          break;
        }
        // A live claimer holds no bytes yet and cannot be inside an operation.
        if (st == slot_state::claiming || !any_inflight(s)) break;
        if (clock_now() - drain_from > k_drain_wait_ns) {
          reopen();
          return 0;
        }
        std::this_thread::yield();
      }
    }
    for (std::size_t i = 0; i < k_slot_count; ++i) {
      if (!dead[i]) continue;
      auto& s = slot(i);
      auto o = s.owner.load(std::memory_order_acquire);
      if (owner_state(o) != slot_state::reaping &&
          !s.owner.compare_exchange_strong(
              o, with_claim_state(o, static_cast<std::uint8_t>(slot_state::reaping)),
              std::memory_order_acq_rel)) {
        dead[i] = false;  // changed under us: only a free slot can (claimed); leave it
      }
    }
    std::uint64_t reclaimed = 0;
    for (int d = 0; d < n; ++d) {
      std::uint64_t sum = 0;
      for (std::size_t i = 0; i < k_slot_count; ++i) {
        const auto& s = slot(i);
        if (owner_state(s.owner.load(std::memory_order_acquire)) == slot_state::live) {
          sum += charged(s, d);
        }
      }
      sum = std::min(sum, k_max_bytes);
      auto& used = dev(d).used;
      const auto old = used.load(std::memory_order_acquire) & k_max_bytes;
      used.store(sum, std::memory_order_seq_cst);  // also opens the device's gate
      if (old > sum) reclaimed += old - sum;
    }
    close_if_corrupted();
    for (std::size_t i = 0; i < k_slot_count; ++i) {
      if (!dead[i]) continue;
      auto& s = slot(i);
      clear_lanes(s);
      s.ident.store(0, std::memory_order_relaxed);
      // Free, keeping the generation: the next claim of the slot is a new generation.
      const auto o = s.owner.load(std::memory_order_relaxed);
      s.owner.store(claim_word(0, claim_generation(o), k_claim_free), std::memory_order_release);
    }
    if (reclaimed != 0) {
      h.reap_count.fetch_add(1, std::memory_order_relaxed);
      h.reclaimed_bytes.fetch_add(reclaimed, std::memory_order_relaxed);
    }
    (void)release_claim(h.reap_gate, gate);
    return reclaimed;
  }

  /// Looks at the clock once every k_reap_check_every reserves of a thread, and reaps when
  /// k_reap_interval_ns passed since the last periodic reap (by any process).
  void maybe_periodic_reap() noexcept {
    static thread_local std::uint32_t countdown = 0;
    if (countdown-- != 0) return;
    countdown = k_reap_check_every - 1;
    auto& last = header().last_reap_ns;
    const auto now = clock_now();
    auto prev = last.load(std::memory_order_relaxed);
    if (now - prev < k_reap_interval_ns && now >= prev) return;
    if (last.compare_exchange_strong(prev, now, std::memory_order_relaxed)) reap();
  }

  /// reap_impl's answer when it could not take the gate (no reap reclaims 2^64 - 1 bytes).
  static constexpr std::uint64_t k_no_gate = ~std::uint64_t{0};

  Storage storage_;
  Clock clock_;
  Liveness live_;
  std::unique_ptr<std::mutex> attach_mutex_;
  std::int32_t self_pid_ = 0;
  slot_handle self_slot_{};
};

/// The ledger over a MAP_SHARED file: what the shim and monitors use.
using shared_ledger = basic_ledger<shared_file_storage<>>;
/// The ledger in process memory: for controllers, simulators and tests.
using in_memory_ledger = basic_ledger<heap_storage<>>;

namespace detail {
/// A field of type \p T at byte \p offset of a copied region. Pure.
template <class T>
T field_at(const std::vector<unsigned char>& bytes, std::size_t offset) noexcept {
  T v{};
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}
}  // namespace detail

/// Reads a ledger file without writing to it (a monitor's view): copies the file with pread
/// (never maps it, so a file truncated under the reader is an error, not SIGBUS) and decodes a
/// snapshot, clamping every count it finds. Errors as for open_only. Thread-safe.
inline result<snapshot> read_snapshot(const std::string& path) {
  using detail::field_at;
  using detail::file_error;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return file_error(errc::not_found, path, "does not exist");
    return file_error(errc::io_error, path, "cannot open: " + detail::errno_text(e));
  }
  struct fd_closer {
    int fd;
    ~fd_closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return file_error(errc::io_error, path, "cannot stat: " + detail::errno_text(errno));
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (auto e = detail::classify_file(fd, size, path)) return std::move(*e);
  std::vector<unsigned char> bytes(k_region_size);
  const ssize_t got = detail::read_at(fd, bytes.data(), bytes.size(), 0);
  if (got < 0) return file_error(errc::io_error, path, "cannot read: " + detail::errno_text(errno));
  if (static_cast<std::size_t>(got) != k_region_size) {
    return file_error(errc::corrupt, path,
                      "truncated while being read: " + std::to_string(got) + " bytes, expected " +
                          std::to_string(k_region_size));
  }
  using h = region_header;
  const std::uint8_t state = claim_state(field_at<std::uint64_t>(bytes, offsetof(h, init)));
  if (state == static_cast<std::uint8_t>(init_state::corrupted)) {
    return file_error(errc::corrupt, path, std::string(detail::k_corrupted_advice));
  }
  if (state > static_cast<std::uint8_t>(init_state::corrupted)) {
    return file_error(errc::corrupt, path, "invalid initialisation state " + std::to_string(state));
  }
  if (state != static_cast<std::uint8_t>(init_state::ready)) {
    return file_error(errc::busy, path, "is not initialised yet");
  }
  if (field_at<std::uint64_t>(bytes, offsetof(h, magic)) != k_magic ||
      field_at<std::uint32_t>(bytes, offsetof(h, layout_version)) != k_layout_version ||
      field_at<std::uint64_t>(bytes, offsetof(h, region_size)) != k_region_size ||
      field_at<std::uint32_t>(bytes, offsetof(h, slot_count)) != k_slot_count) {
    return file_error(errc::corrupt, path, "header does not describe this layout");
  }
  const auto claimed = field_at<std::uint32_t>(bytes, offsetof(h, device_count));
  if (claimed > static_cast<std::uint32_t>(k_max_devices)) {
    return file_error(errc::corrupt, path,
                      "header claims " + std::to_string(claimed) + " devices, at most " +
                          std::to_string(k_max_devices) + " fit");
  }
  snapshot out;
  const auto n = std::min<std::uint32_t>(claimed, k_max_devices);
  constexpr std::size_t devices_at = offsetof(region, devices);
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::size_t at = devices_at + i * sizeof(device_record);
    const char* uuid = reinterpret_cast<const char*>(bytes.data() + at);
    out.devices.push_back(device_usage{
        std::string(uuid, strnlen(uuid, k_uuid_bytes)),
        field_at<std::uint64_t>(bytes, at + offsetof(device_record, limit)),
        field_at<std::uint64_t>(bytes, at + offsetof(device_record, used)) & k_max_bytes,
        std::min<std::uint32_t>(
            field_at<std::uint32_t>(bytes, at + offsetof(device_record, sm_limit_percent)),
            k_cores_per_gpu)});
  }
  constexpr std::size_t slots_at = offsetof(region, slots);
  for (std::size_t i = 0; i < k_slot_count; ++i) {
    const std::size_t at = slots_at + i * sizeof(process_slot);
    const auto o = field_at<std::uint64_t>(bytes, at + offsetof(process_slot, owner));
    if (owner_state(o) != slot_state::live) continue;
    process_usage pu;
    pu.pid = owner_pid(o);
    pu.start_time =
        claim_start(o, field_at<std::uint64_t>(bytes, at + offsetof(process_slot, ident)));
    for (std::size_t l = 0; l < k_lanes; ++l) {
      const std::size_t lane_at = at + offsetof(process_slot, lanes) + l * sizeof(slot_lane);
      for (int d = 0; d < k_max_devices; ++d) {
        pu.used[static_cast<std::size_t>(d)] += field_at<std::uint64_t>(
            bytes, lane_at + offsetof(slot_lane, used) + static_cast<std::size_t>(d) * 8);
      }
    }
    out.processes.push_back(pu);
  }
  return out;
}

}  // namespace gpuslice::memory
