#pragma once
/// \file
/// The memory ledger's region: the fixed-width layout of the file that a container's processes
/// map with MAP_SHARED (or that an in-memory ledger allocates). Offsets, not pointers; every
/// field has a fixed width and a pinned offset (tests/memory/test_region.cpp). Any change to
/// this layout must bump k_layout_version.
///
/// Layout (byte offsets):
///   [0, 256)                       region_header
///   [256, 256 + 16 * 256)          device_record[k_max_devices]
///   [4352, 4352 + 1024 * 1600)     process_slot[k_slot_count], each 64 + 8 lanes * 192
///   total k_region_size = 1642752 bytes
///
/// Endianness: the file is read only by processes of the same machine, so native order.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "gpuslice/claim.hpp"
#include "gpuslice/shared_words.hpp"

namespace gpuslice::memory {

/// Most devices one ledger tracks (== gpuslice::k_max_devices).
inline constexpr int k_max_devices = 16;
/// Bytes reserved for a device UUID including the terminating NUL; NVML/CUDA UUID strings
/// ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", 40 characters) fit with room to spare.
inline constexpr std::size_t k_uuid_bytes = 96;
/// Process slots in a region: one per process that ever charged the ledger and is not reaped.
inline constexpr std::size_t k_slot_count = 1024;
/// 64-bit words per device reserved for the SM limiter's shared token bucket (one definition,
/// shared with rate/token_bucket.hpp).
inline constexpr std::size_t k_rate_words = gpuslice::k_rate_words;
/// "GPUSLEDG" read as a little-endian 64-bit word: identifies a gpuslice ledger file.
inline constexpr std::uint64_t k_magic = 0x4744454c53555047ULL;
/// Lanes per process slot. A thread of the process owns one lane (lanes 1..7) and updates it
/// with plain atomic stores; lane 0 is shared by threads that found no free lane and is
/// updated with read-modify-writes.
inline constexpr std::size_t k_lanes = 8;
/// Index of the shared lane.
inline constexpr std::size_t k_shared_lane = 0;
/// The top bit of a device total: set while a reaper recounts (the reap gate of the device).
inline constexpr std::uint64_t k_gate_bit = std::uint64_t{1} << 63;
/// Largest device total or limit: everything below the gate bit.
inline constexpr std::uint64_t k_max_bytes = k_gate_bit - 1;
/// Layout version; bumped on any change to the structs below.
inline constexpr std::uint32_t k_layout_version = 2;
/// Cache line size assumed for alignment of hot fields.
inline constexpr std::size_t k_cache_line = 64;

/// The region's initialisation state: the state byte of the claim word region_header::init.
enum class init_state : std::uint8_t {
  uninitialised = 0,  ///< a fresh, zero-filled file
  initialising = 1,   ///< one process won the claim and is writing the header
  ready = 2,          ///< usable
  corrupted = 3,      ///< marked unusable; every opener refuses it
};

/// State of a device record: the state byte of the claim word device_record::state.
enum class device_state : std::uint8_t {
  empty = 0,     ///< unused record
  claiming = 1,  ///< a process is writing the UUID and limit
  ready = 2,     ///< in use; UUID immutable from now on
};

/// State of a process slot: the state byte of the claim word process_slot::owner.
enum class slot_state : std::uint8_t {
  free = 0,      ///< unused; may be claimed by compare-and-swap
  claiming = 1,  ///< a process is writing its start time; holds no bytes yet
  live = 2,      ///< owned by a process; charges in used[] belong to it
  reaping = 3,   ///< its process is dead and a reaper (holding the reap gate) is freeing it
};

/// Region header. Written once by the initialising process, then read-mostly.
template <template <class> class Atom>
struct alignas(k_cache_line) basic_region_header {
  std::uint64_t magic;           ///< k_magic
  std::uint32_t layout_version;  ///< k_layout_version
  std::uint32_t reserved0;       ///< zero
  /// The initialisation claim (claim.hpp): state memory::init_state, holder the initialiser.
  Atom<std::uint64_t> init;
  Atom<std::uint64_t> init_ident;    ///< the initialiser's start time (claim.hpp)
  std::uint64_t region_size;         ///< k_region_size; compared with the file size on open
  Atom<std::uint32_t> device_count;  ///< records 0..device_count-1 are claimed (<= 16)
  std::uint32_t slot_count;          ///< k_slot_count
  /// The reap gate, a claim (claim.hpp): free, or claiming while its holder reaps.
  Atom<std::uint64_t> reap_gate;
  Atom<std::uint64_t> reap_gate_ident;  ///< the reaper's start time (claim.hpp)
  Atom<std::uint64_t> last_reap_ns;     ///< clock reading of the last periodic reap
  Atom<std::uint64_t> reap_count;       ///< completed reaps that reclaimed something
  Atom<std::uint64_t> reclaimed_bytes;  ///< bytes reclaimed from dead processes, all time
  std::uint64_t reserved[21];
};

/// Per-device record: identity, limit, the device total, and the SM limiter's words.
template <template <class> class Atom>
struct alignas(k_cache_line) basic_device_record {
  char uuid[k_uuid_bytes];  ///< NUL-padded UUID; immutable once ready
  /// The record's claim (claim.hpp): state memory::device_state, holder its registrar.
  Atom<std::uint64_t> state;
  Atom<std::uint64_t> state_ident;       ///< the registrar's start time (claim.hpp)
  Atom<std::uint64_t> limit;             ///< bytes; the total never exceeds it by a reserve
  Atom<std::uint32_t> sm_limit_percent;  ///< SM share for the limiter; 0 = none
  std::uint32_t reserved0;
  /// Device total in bytes (below k_gate_bit), CAS-updated; k_gate_bit is set while a reaper
  /// recounts. Own cache line.
  alignas(k_cache_line) Atom<std::uint64_t> used;
  std::uint64_t reserved1[7];
  /// Opaque to the ledger, zero at initialisation: the SM limiter's shared token bucket.
  alignas(k_cache_line) Atom<std::uint64_t> rate_words[k_rate_words];
};

/// One lane of a process slot: the charges made through it and its operations in flight.
/// A process's charge on a device is the sum of its lanes' words, modulo 2^64 (a thread may
/// release bytes another thread reserved, taking its own lane "below zero").
template <template <class> class Atom>
struct alignas(k_cache_line) basic_slot_lane {
  Atom<std::uint64_t> holder;    ///< thread id of the owning thread; 0 = free (lane 0: unused)
  Atom<std::uint64_t> inflight;  ///< operations between announcing and finishing (ledger.hpp)
  std::uint64_t reserved0[6];
  Atom<std::uint64_t> used[k_max_devices];  ///< bytes charged through this lane, per device
};

/// A process's slot: who owns it and what it holds per device, in lanes.
template <template <class> class Atom>
struct alignas(k_cache_line) basic_process_slot {
  /// The slot's claim (claim.hpp): pid, generation and memory::slot_state in one word. A
  /// slot_handle carries the whole word, so a handle outlives no reap of its slot.
  Atom<std::uint64_t> owner;
  Atom<std::uint64_t> ident;  ///< the owner's start time (claim.hpp; /proc/<pid>/stat field 22)
  std::uint64_t reserved0[6];
  basic_slot_lane<Atom> lanes[k_lanes];
};

/// The whole region.
template <template <class> class Atom>
struct basic_region {
  basic_region_header<Atom> header;
  basic_device_record<Atom> devices[k_max_devices];
  basic_process_slot<Atom> slots[k_slot_count];
};

/// The layout over std::atomic, the one that files hold.
using region_header = basic_region_header<std::atomic>;
using device_record = basic_device_record<std::atomic>;
using slot_lane = basic_slot_lane<std::atomic>;
using process_slot = basic_process_slot<std::atomic>;
using region = basic_region<std::atomic>;

/// Size of a region in bytes (and of a ledger file).
inline constexpr std::size_t k_region_size = sizeof(region);

static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "the ledger needs lock-free 64-bit atomics (address-free across processes)");
static_assert(std::atomic<std::uint32_t>::is_always_lock_free,
              "the ledger needs lock-free 32-bit atomics (address-free across processes)");
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4,
              "atomics must have the size of the integers they hold");
static_assert(std::is_standard_layout_v<region>, "the region must be standard-layout");
static_assert(sizeof(region_header) == 256);
static_assert(sizeof(device_record) == 256);
static_assert(sizeof(slot_lane) == 192);
static_assert(sizeof(process_slot) == 64 + k_lanes * 192);
static_assert(k_region_size == 256 + 16 * 256 + 1024 * (64 + 8 * 192));

static_assert(static_cast<std::uint8_t>(init_state::uninitialised) == k_claim_free &&
                  static_cast<std::uint8_t>(init_state::initialising) == k_claim_claiming,
              "the init states extend the claim states");
static_assert(static_cast<std::uint8_t>(device_state::empty) == k_claim_free &&
                  static_cast<std::uint8_t>(device_state::claiming) == k_claim_claiming,
              "the device states extend the claim states");
static_assert(static_cast<std::uint8_t>(slot_state::free) == k_claim_free &&
                  static_cast<std::uint8_t>(slot_state::claiming) == k_claim_claiming,
              "the slot states extend the claim states");
static_assert(k_max_bytes < k_gate_bit && (k_max_bytes & k_gate_bit) == 0, "gate bit layout");

/// Packs a slot owner word (generation 0; claims add their own).
constexpr std::uint64_t make_owner(std::int32_t pid, slot_state s,
                                   std::uint32_t generation = 0) noexcept {
  return claim_word(pid, generation, static_cast<std::uint8_t>(s));
}
/// The pid of an owner word.
constexpr std::int32_t owner_pid(std::uint64_t owner) noexcept { return claim_pid(owner); }
/// The state of an owner word.
constexpr slot_state owner_state(std::uint64_t owner) noexcept {
  return static_cast<slot_state>(claim_state(owner));
}

}  // namespace gpuslice::memory
