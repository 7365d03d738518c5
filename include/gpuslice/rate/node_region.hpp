#pragma once
/// \file
/// The node-wide region: one small file (GPUSLICE_NODE_REGION) that every container on a node
/// maps with MAP_SHARED and registers in, per GPU it launches on. It gives the SM limiter's
/// `default` policy its "others active" signal and priority its meaning, with no daemon: each
/// tenant stamps its own record while it launches and reads the others' stamps.
///
/// A tenant is one container on one GPU: the shim's processes of one container share a
/// container key (from the identity of their ledger file), so they never count as each
/// other's peers. A tenant is *active* while its last stamp is younger than the activity
/// window; a process that dies simply stops stamping, so a crash never leaves a GPU capped for
/// longer than one window, and its record is reused once its pid is gone.
///
/// Layout (byte offsets, native order, fixed-width fields; any change bumps the version):
///   [0, 64)                       node_header
///   [64, 64 + 256 * 64)           node_tenant[k_node_tenants]
///   total k_node_region_size = 16448 bytes

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include "gpuslice/claim.hpp"
#include "gpuslice/config.hpp"
#include "gpuslice/liveness.hpp"
#include "gpuslice/memory/platform.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::rate {

/// Records in a node region: tenants (container x GPU) that ever registered and are not reused.
inline constexpr std::size_t k_node_tenants = 256;
/// "GSNODERG" read as a little-endian word: identifies a gpuslice node region.
inline constexpr std::uint64_t k_node_magic = 0x475245444F4E5347ULL;
/// Layout version of the node region; bumped on any change.
inline constexpr std::uint32_t k_node_layout_version = 2;
/// A tenant whose last stamp is younger than this is active (the default policy's window).
inline constexpr std::int64_t k_default_active_window_ns = 500'000'000;
/// How long an opener waits for a live process that is initialising the region.
inline constexpr std::uint64_t k_node_init_wait_ns = 2'000'000'000;

/// State of a tenant record: the state byte of the claim word node_tenant::owner (claim.hpp).
enum class tenant_state : std::uint8_t { free = 0, claiming = 1, live = 2 };
/// State of the region: the state byte of the claim word node_header::init (claim.hpp).
enum class node_init_state : std::uint8_t { fresh = 0, initialising = 1, ready = 2 };

static_assert(static_cast<std::uint8_t>(tenant_state::free) == k_claim_free &&
                  static_cast<std::uint8_t>(tenant_state::claiming) == k_claim_claiming,
              "tenant states extend the claim states");
static_assert(static_cast<std::uint8_t>(node_init_state::fresh) == k_claim_free &&
                  static_cast<std::uint8_t>(node_init_state::initialising) == k_claim_claiming,
              "node init states extend the claim states");

/// Region header, written once by the initialising process.
struct alignas(64) node_header {
  std::uint64_t magic;                    ///< k_node_magic once ready
  std::uint32_t layout_version;           ///< k_node_layout_version
  std::uint32_t tenant_count;             ///< k_node_tenants
  std::atomic<std::uint64_t> init;        ///< claim word (claim.hpp): node_init_state
  std::atomic<std::uint64_t> init_ident;  ///< the initialiser's start time (claim.hpp)
  std::uint64_t region_size;              ///< k_node_region_size
  std::atomic<std::uint64_t> joins;       ///< registrations ever made (statistics)
  std::uint64_t reserved[2];              ///< zero
};

/// One tenant: a container's processes on one GPU.
struct alignas(64) node_tenant {
  std::atomic<std::uint64_t> owner;          ///< claim word (claim.hpp): joiner, tenant_state
  std::atomic<std::uint64_t> ident;          ///< the joiner's /proc start time (claim.hpp)
  std::atomic<std::uint64_t> device_key;     ///< device_key() of the GPU's UUID
  std::atomic<std::uint64_t> container_key;  ///< the container's key (see container_key())
  std::atomic<std::int64_t> last_active_ns;  ///< CLOCK_MONOTONIC of the last stamp
  std::atomic<std::uint32_t> priority;       ///< task_priority (0 high, 1 low)
  std::atomic<std::uint32_t> sm_percent;     ///< the tenant's SM cap, for inspection (0 none)
  std::uint64_t reserved[2];                 ///< zero
};

/// The whole region.
struct node_layout {
  node_header header;
  node_tenant tenants[k_node_tenants];
};

/// Size of a node region file in bytes.
inline constexpr std::size_t k_node_region_size = sizeof(node_layout);

static_assert(sizeof(node_header) == 64, "node header layout");
static_assert(sizeof(node_tenant) == 64, "node tenant layout");
static_assert(k_node_region_size == 64 + k_node_tenants * 64, "node region layout");
static_assert(std::is_standard_layout_v<node_layout>, "the node region must be standard-layout");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::int64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "node region atomics must be lock-free (address-free across processes)");

/// What the others on a GPU are doing, as one tenant sees it.
struct peer_state {
  bool others_active = false;       ///< another container is active on the GPU
  bool high_others_active = false;  ///< another high-priority container is
  int active_tenants = 0;           ///< active tenants on the GPU, this one included
};

/// A tenant's record in a region, from join(). Plain value.
struct tenant_handle {
  std::size_t index = k_node_tenants;  ///< record number
  std::uint64_t owner = 0;             ///< the record's owner word when joined
  std::uint64_t device_key = 0;        ///< the GPU it is on
  std::uint64_t container_key = 0;     ///< the container it belongs to
  /// True for a handle returned by join().
  bool valid() const noexcept { return index < k_node_tenants; }
};

/// FNV-1a of a GPU UUID: the key tenants of one GPU share. Never 0. Pure.
inline std::uint64_t device_key(std::string_view uuid) noexcept {
  constexpr std::uint64_t k_offset = 0xcbf29ce484222325ULL;
  constexpr std::uint64_t k_prime = 0x100000001b3ULL;
  std::uint64_t h = k_offset;
  for (char c : uuid) {
    h ^= static_cast<unsigned char>(c);
    h *= k_prime;
  }
  return h == 0 ? 1 : h;
}

/// A container key from a file identity (the ledger the container's processes share) or, with
/// no file, from a process identity: \p a and \p b are (st_dev, st_ino) or (pid, start time).
/// Never 0. Pure.
inline std::uint64_t container_key(std::uint64_t a, std::uint64_t b) noexcept {
  constexpr std::uint64_t k_mix = 0x9E3779B97F4A7C15ULL;
  std::uint64_t h = (a * k_mix) ^ (b + k_mix + (a << 6) + (a >> 2));
  h ^= h >> 31;
  return h == 0 ? 1 : h;
}

/// The node-wide region over a file mapped MAP_SHARED (or heap memory, for tests). Movable, not
/// copyable. All operations are thread- and process-safe (atomics on the mapping, no lock).
class node_region {
 public:
  node_region(node_region&& o) noexcept
      : layout_(std::exchange(o.layout_, nullptr)),
        heap_(std::move(o.heap_)),
        path_(std::move(o.path_)) {}
  node_region& operator=(node_region&& o) noexcept {
    if (this != &o) {
      unmap();
      layout_ = std::exchange(o.layout_, nullptr);
      heap_ = std::move(o.heap_);
      path_ = std::move(o.path_);
    }
    return *this;
  }
  node_region(const node_region&) = delete;
  node_region& operator=(const node_region&) = delete;
  ~node_region() { unmap(); }

  /// Opens the region file at \p path, creating and initialising it if needed (mode 0666 less
  /// the umask, widened by its creator so every container's user may map it). A file that is
  /// not a node region, of another version or of another size is refused. Thread-safe.
  static result<node_region> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
      return make_error(errc::io_error, "node region " + path +
                                            ": cannot open: " + memory::detail::errno_text(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      return make_error(errc::io_error,
                        "node region " + path + ": " + memory::detail::errno_text(e));
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size != 0 && size != k_node_region_size) {
      ::close(fd);
      return make_error(errc::corrupt, "node region " + path + ": " + std::to_string(size) +
                                           " bytes, expected " +
                                           std::to_string(k_node_region_size) +
                                           " (not a gpuslice node region of this version)");
    }
    // Growing an empty file is idempotent: concurrent creators all extend it to the same size.
    if (size == 0 && ::ftruncate(fd, static_cast<off_t>(k_node_region_size)) != 0) {
      const int e = errno;
      ::close(fd);
      return make_error(errc::io_error, "node region " + path +
                                            ": cannot size it: " + memory::detail::errno_text(e));
    }
    if (st.st_uid == ::geteuid()) ::fchmod(fd, 0666);  // best effort: all tenants' users map it
    void* m = ::mmap(nullptr, k_node_region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int map_errno = errno;
    ::close(fd);
    if (m == MAP_FAILED) {
      return make_error(errc::io_error, "node region " + path + ": cannot map it: " +
                                            memory::detail::errno_text(map_errno));
    }
    node_region r(static_cast<node_layout*>(m), path);
    if (auto ok = r.initialise(); !ok) return std::move(ok).err();
    return r;
  }

  /// A fresh region in this process's memory (tests, simulation). Thread-safe.
  static node_region in_memory() {
    auto heap = std::make_unique<node_layout>();  // value-initialised: all zero
    node_region r(heap.get(), "<memory>");
    r.heap_ = std::move(heap);
    (void)r.initialise();
    return r;
  }

  /// Registers a tenant on the GPU \p device_key for \p container_key with \p priority, as the
  /// calling process (pid \p pid, /proc start time \p start_time, 0 = not known), stamped
  /// active at \p now. Takes a free record, or one whose process \p live proves dead, with
  /// the claim of claim.hpp: two joiners never end up in one record, and a live joiner's
  /// half-written record is never taken. errc::capacity when all are held by live processes.
  /// Thread- and process-safe.
  template <class Liveness = proc_liveness>
  result<tenant_handle> join(std::uint64_t device_key, std::uint64_t container_key,
                             task_priority priority, std::uint32_t sm_percent, std::int32_t pid,
                             std::uint64_t start_time, std::int64_t now,
                             const Liveness& live = {}) noexcept {
    const claim_identity me{pid, start_time & k_claim_start_mask};
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t i = 0; i < k_node_tenants; ++i) {
        node_tenant& t = layout_->tenants[i];
        // First pass: free records only; second pass: also records whose process is dead.
        if (pass == 0 && claim_state(t.owner.load(std::memory_order_relaxed)) != k_claim_free) {
          continue;
        }
        const claim_result r = try_claim(t.owner, t.ident, me, live, pass == 1);
        if (!r.mine()) continue;
        t.device_key.store(device_key, std::memory_order_relaxed);
        t.container_key.store(container_key, std::memory_order_relaxed);
        t.priority.store(static_cast<std::uint32_t>(priority), std::memory_order_relaxed);
        t.sm_percent.store(sm_percent, std::memory_order_relaxed);
        t.last_active_ns.store(now, std::memory_order_relaxed);
        if (!finish_claim(t.owner, r.word, static_cast<std::uint8_t>(tenant_state::live))) {
          continue;  // taken over from us: never share a record
        }
        layout_->header.joins.fetch_add(1, std::memory_order_relaxed);
        return tenant_handle{
            i, with_claim_state(r.word, static_cast<std::uint8_t>(tenant_state::live)), device_key,
            container_key};
      }
    }
    return make_error(errc::capacity, "node region " + path_ + ": all " +
                                          std::to_string(k_node_tenants) +
                                          " tenant records are held by live processes");
  }

  /// True while \p h still holds its record (false once another joiner took it over, its
  /// process having been proven dead, or after leave). Thread- and process-safe.
  bool current(tenant_handle h) const noexcept {
    return h.valid() && layout_->tenants[h.index].owner.load(std::memory_order_acquire) == h.owner;
  }

  /// Stamps \p h active at \p now (never moves a stamp back). Thread- and process-safe.
  void stamp(tenant_handle h, std::int64_t now) noexcept {
    if (!current(h)) return;
    auto& a = layout_->tenants[h.index].last_active_ns;
    std::int64_t cur = a.load(std::memory_order_relaxed);
    while (cur < now && !a.compare_exchange_weak(cur, now, std::memory_order_relaxed)) {
    }
  }

  /// Updates the priority and SM cap \p h shows to others. Thread- and process-safe.
  void update(tenant_handle h, task_priority priority, std::uint32_t sm_percent) noexcept {
    if (!current(h)) return;
    layout_->tenants[h.index].priority.store(static_cast<std::uint32_t>(priority),
                                             std::memory_order_relaxed);
    layout_->tenants[h.index].sm_percent.store(sm_percent, std::memory_order_relaxed);
  }

  /// The others on \p h's GPU at \p now: live records of other containers on the same GPU whose
  /// stamp is younger than \p window_ns. Thread- and process-safe (a scan of 256 records).
  peer_state peers(tenant_handle h, std::int64_t now,
                   std::int64_t window_ns = k_default_active_window_ns) const noexcept {
    peer_state p;
    for (const node_tenant& t : layout_->tenants) {
      if (state_of(t.owner.load(std::memory_order_acquire)) != tenant_state::live) continue;
      if (t.device_key.load(std::memory_order_relaxed) != h.device_key) continue;
      if (now - t.last_active_ns.load(std::memory_order_relaxed) >= window_ns) continue;
      ++p.active_tenants;
      if (t.container_key.load(std::memory_order_relaxed) == h.container_key) continue;
      p.others_active = true;
      if (t.priority.load(std::memory_order_relaxed) ==
          static_cast<std::uint32_t>(task_priority::high)) {
        p.high_others_active = true;
      }
    }
    return p;
  }

  /// Frees \p h's record (a process that leaves cleanly). Thread- and process-safe.
  void leave(tenant_handle h) noexcept {
    if (h.valid()) (void)release_claim(layout_->tenants[h.index].owner, h.owner);
  }

  /// Live records, for inspection and tests. Thread-safe.
  std::size_t live_tenants() const noexcept {
    std::size_t n = 0;
    for (const node_tenant& t : layout_->tenants) {
      n += state_of(t.owner.load(std::memory_order_acquire)) == tenant_state::live ? 1 : 0;
    }
    return n;
  }

  /// The mapped layout (tests pin it). Thread-safe.
  node_layout* layout() const noexcept { return layout_; }
  /// Where the region lives.
  const std::string& path() const noexcept { return path_; }

 private:
  node_region(node_layout* l, std::string path) noexcept : layout_(l), path_(std::move(path)) {}

  static std::uint64_t pack(std::int32_t pid, tenant_state s) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid)) << 32) |
           static_cast<std::uint64_t>(s);
  }
  static tenant_state state_of(std::uint64_t owner) noexcept {
    return static_cast<tenant_state>(owner & 0xffu);
  }
  /// Agrees with concurrent openers on one initialisation (the claim of claim.hpp on
  /// header.init: an initialiser proven dead is taken over, a live one waited for on the
  /// steady clock), then validates the header.
  template <class Liveness = proc_liveness>
  result<bool> initialise(const Liveness& live = {}) noexcept {
    node_header& h = layout_->header;
    const claim_identity me = self_identity(live);
    const auto now = [] { return memory::detail::monotonic_ns(); };
    // A region some version finished: refuse it by its own words before reading a claim
    // that may lie elsewhere in its layout. (Read atomically: an initialiser may be writing.)
    const std::uint64_t magic = __atomic_load_n(&h.magic, __ATOMIC_ACQUIRE);
    const std::uint32_t version = __atomic_load_n(&h.layout_version, __ATOMIC_ACQUIRE);
    if (magic != 0 && magic != k_node_magic) {
      return make_error(errc::corrupt, "node region " + path_ + ": not a gpuslice node region");
    }
    if (magic == k_node_magic && version != k_node_layout_version) {
      return make_error(errc::version_mismatch, "node region " + path_ + ": layout version " +
                                                    std::to_string(version) + ", expected " +
                                                    std::to_string(k_node_layout_version));
    }
    for (;;) {
      const claim_result r = claim(h.init, h.init_ident, me, live, now, k_node_init_wait_ns);
      if (r.mine()) {
        // Fresh, or left half-written by an initialiser that died: build it all in place.
        __atomic_store_n(&h.layout_version, k_node_layout_version, __ATOMIC_RELAXED);
        h.region_size = k_node_region_size;
        h.tenant_count = static_cast<std::uint32_t>(k_node_tenants);
        ::new (static_cast<void*>(&h.joins)) std::atomic<std::uint64_t>(0);
        h.reserved[0] = h.reserved[1] = 0;
        for (node_tenant& t : layout_->tenants) ::new (static_cast<void*>(&t)) node_tenant();
        __atomic_store_n(&h.magic, k_node_magic, __ATOMIC_RELEASE);
        if (finish_claim(h.init, r.word, static_cast<std::uint8_t>(node_init_state::ready))) {
          return true;
        }
        continue;
      }
      if (r.what == claim_result::kind::busy) {
        return make_error(errc::busy, "node region " + path_ + ": process " +
                                          std::to_string(claim_pid(r.word)) +
                                          " did not finish initialising it within 2 s");
      }
      if (claim_state(r.word) != static_cast<std::uint8_t>(node_init_state::ready)) {
        return make_error(errc::corrupt, "node region " + path_ + ": invalid state " +
                                             std::to_string(claim_state(r.word)));
      }
      break;
    }
    if (h.magic != k_node_magic) {
      return make_error(errc::corrupt, "node region " + path_ + ": not a gpuslice node region");
    }
    if (h.layout_version != k_node_layout_version || h.region_size != k_node_region_size ||
        h.tenant_count != k_node_tenants) {
      return make_error(errc::version_mismatch, "node region " + path_ + ": layout version " +
                                                    std::to_string(h.layout_version) +
                                                    ", expected " +
                                                    std::to_string(k_node_layout_version));
    }
    return false;
  }

  void unmap() noexcept {
    if (layout_ != nullptr && !heap_) ::munmap(layout_, k_node_region_size);
    layout_ = nullptr;
  }

  node_layout* layout_ = nullptr;
  std::unique_ptr<node_layout> heap_;
  std::string path_;
};

}  // namespace gpuslice::rate
