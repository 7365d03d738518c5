#pragma once
/// \file
/// Internals of libgpuslice.so shared by its two translation units: the hook table, the one
/// object that holds all mutable state, and logging. Nothing here is exported; the exported
/// names are the driver's and NVML's own, defined in hooks.cpp.

#include <cuda.h>
#include <fmt/format.h>
#include <nvml.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <map>
#include <unordered_map>
#include <vector>

#include "gpuslice/config.hpp"
#include "gpuslice/memory/ledger.hpp"
#include "launch.hpp"
#include "views.hpp"

// cuda.h maps cuGetProcAddress to cuGetProcAddress_v2; the shim defines both names.
#undef cuGetProcAddress

/// Marks a function the shim exports (everything else is hidden).
#define GPUSLICE_SHIM_EXPORT extern "C" __attribute__((visibility("default")))

// The shim indexes the environment's per-device limits (config) and the ledger's device records
// with one visible ordinal, so the two tables must be the same size.
static_assert(gpuslice::memory::k_max_devices == gpuslice::k_max_devices,
              "the ledger must track as many devices as the environment contract names");

namespace gpuslice::shim::detail {

/// The CUDA 11.3 form of cuGetProcAddress, which cuda.h no longer declares.
using get_proc_v1_fn = CUresult (*)(const char*, void**, int, cuuint64_t);
/// The current form of cuGetProcAddress.
using get_proc_v2_fn = CUresult (*)(const char*, void**, int, cuuint64_t,
                                    CUdriverProcAddressQueryResult*);

/// cuCtxCreate_v2 and _v3, which CUDA 13's cuda.h declares only for the driver's own build.
using ctx_create_v2_fn = CUresult (*)(CUcontext*, unsigned int, CUdevice);
using ctx_create_v3_fn = CUresult (*)(CUcontext*, CUexecAffinityParam*, int, unsigned int,
                                      CUdevice);

/// Which default stream an entry point's variant uses (cuGetProcAddress flags select it).
enum class stream_kind : std::uint8_t { legacy, per_thread };
/// Which library provides the real function.
enum class library : std::uint8_t { cuda, nvml };

/// Every hooked entry point: X(exported symbol, name cuGetProcAddress is asked for, CUDA version
/// that introduced the variant, default-stream kind, library, function type). To hook another
/// entry point, add a line here and define the function in hooks.cpp.
#define GPUSLICE_HOOKS(X)                                                                          \
  X(cuGetProcAddress, "cuGetProcAddress", 11030, legacy, cuda, get_proc_v1_fn)                     \
  X(cuGetProcAddress_v2, "cuGetProcAddress", 12000, legacy, cuda, get_proc_v2_fn)                  \
  X(cuMemGetInfo_v2, "cuMemGetInfo", 3020, legacy, cuda, decltype(&::cuMemGetInfo_v2))             \
  X(cuDeviceTotalMem_v2, "cuDeviceTotalMem", 3020, legacy, cuda, decltype(&::cuDeviceTotalMem_v2)) \
  X(cuMemAlloc_v2, "cuMemAlloc", 3020, legacy, cuda, decltype(&::cuMemAlloc_v2))                   \
  X(cuMemAllocPitch_v2, "cuMemAllocPitch", 3020, legacy, cuda, decltype(&::cuMemAllocPitch_v2))    \
  X(cuMemAllocManaged, "cuMemAllocManaged", 6000, legacy, cuda, decltype(&::cuMemAllocManaged))    \
  X(cuMemFree_v2, "cuMemFree", 3020, legacy, cuda, decltype(&::cuMemFree_v2))                      \
  X(cuMemAllocAsync, "cuMemAllocAsync", 11020, legacy, cuda, decltype(&::cuMemAllocAsync))         \
  X(cuMemAllocAsync_ptsz, "cuMemAllocAsync", 11020, per_thread, cuda,                              \
    decltype(&::cuMemAllocAsync))                                                                  \
  X(cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", 11020, legacy, cuda,                       \
    decltype(&::cuMemAllocFromPoolAsync))                                                          \
  X(cuMemAllocFromPoolAsync_ptsz, "cuMemAllocFromPoolAsync", 11020, per_thread, cuda,              \
    decltype(&::cuMemAllocFromPoolAsync))                                                          \
  X(cuMemFreeAsync, "cuMemFreeAsync", 11020, legacy, cuda, decltype(&::cuMemFreeAsync))            \
  X(cuMemFreeAsync_ptsz, "cuMemFreeAsync", 11020, per_thread, cuda, decltype(&::cuMemFreeAsync))   \
  X(cuMemPoolCreate, "cuMemPoolCreate", 11020, legacy, cuda, decltype(&::cuMemPoolCreate))         \
  X(cuCtxDestroy_v2, "cuCtxDestroy", 4000, legacy, cuda, decltype(&::cuCtxDestroy_v2))             \
  X(cuCtxSynchronize, "cuCtxSynchronize", 2000, legacy, cuda, decltype(&::cuCtxSynchronize))       \
  X(cuStreamSynchronize, "cuStreamSynchronize", 2000, legacy, cuda,                                \
    decltype(&::cuStreamSynchronize))                                                              \
  X(cuStreamSynchronize_ptsz, "cuStreamSynchronize", 7000, per_thread, cuda,                       \
    decltype(&::cuStreamSynchronize))                                                              \
  X(cuEventSynchronize, "cuEventSynchronize", 2000, legacy, cuda, decltype(&::cuEventSynchronize)) \
  X(cuCtxCreate_v2, "cuCtxCreate", 3020, legacy, cuda, ctx_create_v2_fn)                           \
  X(cuCtxCreate_v3, "cuCtxCreate", 11040, legacy, cuda, ctx_create_v3_fn)                          \
  X(cuCtxCreate_v4, "cuCtxCreate", 12050, legacy, cuda, decltype(&::cuCtxCreate_v4))               \
  X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 7000, legacy, cuda,                      \
    decltype(&::cuDevicePrimaryCtxRetain))                                                         \
  X(cuDeviceGraphMemTrim, "cuDeviceGraphMemTrim", 11040, legacy, cuda,                             \
    decltype(&::cuDeviceGraphMemTrim))                                                             \
  X(cuGraphUpload, "cuGraphUpload", 11010, legacy, cuda, decltype(&::cuGraphUpload))               \
  X(cuGraphUpload_ptsz, "cuGraphUpload", 11010, per_thread, cuda, decltype(&::cuGraphUpload))       \
  X(cuModuleLoad, "cuModuleLoad", 2000, legacy, cuda, decltype(&::cuModuleLoad))                   \
  X(cuModuleLoadData, "cuModuleLoadData", 2000, legacy, cuda, decltype(&::cuModuleLoadData))       \
  X(cuModuleLoadDataEx, "cuModuleLoadDataEx", 2010, legacy, cuda, decltype(&::cuModuleLoadDataEx)) \
  X(cuModuleLoadFatBinary, "cuModuleLoadFatBinary", 2000, legacy, cuda,                           \
    decltype(&::cuModuleLoadFatBinary))                                                            \
  X(cuModuleUnload, "cuModuleUnload", 2000, legacy, cuda, decltype(&::cuModuleUnload))             \
  X(cuLibraryLoadData, "cuLibraryLoadData", 12000, legacy, cuda, decltype(&::cuLibraryLoadData))   \
  X(cuLibraryLoadFromFile, "cuLibraryLoadFromFile", 12000, legacy, cuda,                           \
    decltype(&::cuLibraryLoadFromFile))                                                            \
  X(cuLibraryUnload, "cuLibraryUnload", 12000, legacy, cuda, decltype(&::cuLibraryUnload))         \
  X(cuDevicePrimaryCtxRelease_v2, "cuDevicePrimaryCtxRelease", 11000, legacy, cuda,                \
    decltype(&::cuDevicePrimaryCtxRelease_v2))                                                     \
  X(cuDevicePrimaryCtxReset_v2, "cuDevicePrimaryCtxReset", 11000, legacy, cuda,                    \
    decltype(&::cuDevicePrimaryCtxReset_v2))                                                       \
  X(cuMemPoolDestroy, "cuMemPoolDestroy", 11020, legacy, cuda, decltype(&::cuMemPoolDestroy))      \
  X(cuMemCreate, "cuMemCreate", 10020, legacy, cuda, decltype(&::cuMemCreate))                     \
  X(cuMemRelease, "cuMemRelease", 10020, legacy, cuda, decltype(&::cuMemRelease))                  \
  X(cuMemRetainAllocationHandle, "cuMemRetainAllocationHandle", 11000, legacy, cuda,               \
    decltype(&::cuMemRetainAllocationHandle))                                                      \
  X(cuMemMap, "cuMemMap", 10020, legacy, cuda, decltype(&::cuMemMap))                              \
  X(cuMemUnmap, "cuMemUnmap", 10020, legacy, cuda, decltype(&::cuMemUnmap))                        \
  X(cuArrayCreate_v2, "cuArrayCreate", 3020, legacy, cuda, decltype(&::cuArrayCreate_v2))          \
  X(cuArray3DCreate_v2, "cuArray3DCreate", 3020, legacy, cuda, decltype(&::cuArray3DCreate_v2))    \
  X(cuArrayDestroy, "cuArrayDestroy", 2000, legacy, cuda, decltype(&::cuArrayDestroy))             \
  X(cuMipmappedArrayCreate, "cuMipmappedArrayCreate", 5000, legacy, cuda,                          \
    decltype(&::cuMipmappedArrayCreate))                                                           \
  X(cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy", 5000, legacy, cuda,                        \
    decltype(&::cuMipmappedArrayDestroy))                                                          \
  X(nvmlDeviceGetMemoryInfo, "nvmlDeviceGetMemoryInfo", 0, legacy, nvml,                           \
    decltype(&::nvmlDeviceGetMemoryInfo))                                                          \
  X(nvmlDeviceGetMemoryInfo_v2, "nvmlDeviceGetMemoryInfo_v2", 0, legacy, nvml,                     \
    decltype(&::nvmlDeviceGetMemoryInfo_v2))                                                       \
  GPUSLICE_LAUNCH_HOOKS(X)

/// Real functions the shim calls but does not hook: X(symbol, library, function type).
#define GPUSLICE_HELPERS(X)                                                        \
  X(cuInit, cuda, decltype(&::cuInit))                                             \
  X(cuDeviceGetCount, cuda, decltype(&::cuDeviceGetCount))                         \
  X(cuDeviceGet, cuda, decltype(&::cuDeviceGet))                                   \
  X(cuDeviceGetUuid_v2, cuda, decltype(&::cuDeviceGetUuid_v2))                     \
  X(cuCtxGetDevice, cuda, decltype(&::cuCtxGetDevice))                             \
  X(cuStreamGetDevice, cuda, decltype(&::cuStreamGetDevice))                       \
  X(cuArrayGetMemoryRequirements, cuda, decltype(&::cuArrayGetMemoryRequirements)) \
  X(cuMipmappedArrayGetMemoryRequirements, cuda,                                   \
    decltype(&::cuMipmappedArrayGetMemoryRequirements))                            \
  X(cuDeviceGetMemPool, cuda, decltype(&::cuDeviceGetMemPool))                     \
  X(cuDeviceGetDefaultMemPool, cuda, decltype(&::cuDeviceGetDefaultMemPool))       \
  X(cuDeviceGetAttribute, cuda, decltype(&::cuDeviceGetAttribute))                 \
  X(cuDevicePrimaryCtxGetState, cuda, decltype(&::cuDevicePrimaryCtxGetState))     \
  X(cuDevicePrimaryCtxRetain, cuda, decltype(&::cuDevicePrimaryCtxRetain))         \
  X(cuCtxPushCurrent_v2, cuda, decltype(&::cuCtxPushCurrent_v2))                   \
  X(cuCtxPopCurrent_v2, cuda, decltype(&::cuCtxPopCurrent_v2))                     \
  X(cuMemPoolGetAttribute, cuda, decltype(&::cuMemPoolGetAttribute))               \
  X(cuMemPoolTrimTo, cuda, decltype(&::cuMemPoolTrimTo))                           \
  X(nvmlInit_v2, nvml, decltype(&::nvmlInit_v2))                                   \
  X(nvmlDeviceGetHandleByUUID, nvml, decltype(&::nvmlDeviceGetHandleByUUID))       \
  X(nvmlDeviceGetUUID, nvml, decltype(&::nvmlDeviceGetUUID))                       \
  X(nvmlDeviceGetComputeRunningProcesses_v3, nvml,                                 \
    decltype(&::nvmlDeviceGetComputeRunningProcesses_v3))                          \
  GPUSLICE_LAUNCH_HELPERS(X)

/// Index of a hooked entry point in the table.
enum class hook : int {
#define GPUSLICE_X(sym, base, since, stream, lib, type) sym,
  GPUSLICE_HOOKS(GPUSLICE_X)
#undef GPUSLICE_X
      count
};
/// Index of a helper.
enum class helper : int {
#define GPUSLICE_X(sym, lib, type) sym,
  GPUSLICE_HELPERS(GPUSLICE_X)
#undef GPUSLICE_X
      count
};

/// Number of hooked entry points.
inline constexpr int k_hook_count = static_cast<int>(hook::count);
/// Number of helpers.
inline constexpr int k_helper_count = static_cast<int>(helper::count);

/// One row of the hook table: immutable, defined in hooks.cpp.
struct hook_entry {
  const char* symbol;  ///< exported name, also what dlsym is asked for
  const char* base;    ///< name cuGetProcAddress is asked for
  int since;           ///< CUDA version that introduced this variant
  stream_kind stream;  ///< default-stream kind of this variant
  library lib;         ///< where the real function lives
  void* fn;            ///< the shim's function
};

/// The hook table, in `hook` order.
extern const hook_entry k_hooks[k_hook_count];

/// The hook for \p name (an exported name), or null. Thread-safe.
const hook_entry* find_hook(std::string_view name) noexcept;

/// The entry cuGetProcAddress should answer with for (\p base, \p version, \p flags), or null:
/// among the variants of \p base introduced at or before \p version, the newest, preferring the
/// per-thread one when \p flags ask for it. Thread-safe.
const hook_entry* match_proc(std::string_view base, int version, cuuint64_t flags) noexcept;

/// True when \p base names a counted allocation whose every variant the shim hooks is newer
/// than \p version: the driver would hand out an older, uncounted ABI. Thread-safe.
bool refused_legacy(std::string_view base, int version) noexcept;

/// What a counted allocation holds against the ledger.
struct charge {
  int ordinal = -1;         ///< CUDA device ordinal of this process
  int index = -1;           ///< ledger device index
  std::uint64_t bytes = 0;  ///< bytes reserved
  /// A stream-ordered allocation's pool: then \p bytes are the allocation's size, and what is
  /// charged is the pool's reserve (state::settle_pool), not the allocation.
  CUmemoryPool pool = nullptr;
  /// The context a device pointer or array was made in: its teardown frees it.
  CUcontext ctx = nullptr;
};

/// Live allocations of one kind (device pointers, arrays, VMM handles) and their charges:
/// 64 shards, each a mutex and a hash map, so concurrent threads rarely share a lock.
class alloc_table {
 public:
  /// Records \p key; returns the charge it displaced (an allocation the driver freed without
  /// the shim seeing it, whose address was reused), which the caller gives back. May throw
  /// std::bad_alloc. Thread-safe.
  std::optional<charge> insert(std::uint64_t key, const charge& c);
  /// Removes and returns \p key's charge. Thread-safe.
  std::optional<charge> take(std::uint64_t key) noexcept;
  /// Removes and returns every charge made in \p ctx. May throw std::bad_alloc. Thread-safe.
  std::vector<charge> take_context(CUcontext ctx);
  /// Locks every shard (before fork). Thread-safe with respect to the other members.
  void lock_all() noexcept;
  /// Unlocks every shard (after fork, in the parent).
  void unlock_all() noexcept;
  /// Unlocks and empties every shard (after fork, in the child: its allocations are the
  /// parent's, which the child neither holds nor may free).
  void reset_in_child() noexcept;

 private:
  static constexpr std::size_t k_shards = 64;
  static constexpr unsigned k_shard_shift = 58;  // top 6 bits of the mixed key pick a shard
  static constexpr std::uint64_t k_mix = 0x9E3779B97F4A7C15ULL;  // Fibonacci hashing
  using map_type = std::unordered_map<std::uint64_t, charge>;
  /// Nodes a shard keeps from its takes for its next inserts, so the usual allocate-then-free
  /// pattern costs no heap allocation on the counted path.
  static constexpr std::size_t k_spare_nodes = 4;
  struct alignas(64) shard {
    std::mutex mu;
    map_type map;
    std::array<map_type::node_type, k_spare_nodes> spare;
    std::size_t spares = 0;
  };
  shard& pick(std::uint64_t key) noexcept { return shards_[(key * k_mix) >> k_shard_shift]; }
  std::array<shard, k_shards> shards_;
};

/// A device as this process sees it.
struct device_info {
  bool usable = false;           ///< registered in the ledger with a limit
  int index = -1;                ///< ledger device index
  std::uint64_t limit = 0;       ///< bytes from the environment (the ledger's is in force)
  std::uint64_t card_total = 0;  ///< bytes the card has
  std::string uuid;              ///< "GPU-..." or "MIG-..." as NVML spells it: the ledger's key
  nvmlDevice_t nvml = nullptr;   ///< NVML handle for reconciliation, when found
  std::uint64_t overhead = 0;    ///< uncounted driver memory charged (context, modules)
  /// Uncounted driver memory that did not fit the limit: reservations are refused until it
  /// does (the driver holds it whether or not the ledger can).
  std::atomic<std::uint64_t> pending{0};
  std::atomic<std::uint64_t> next_reconcile_ns{0};  ///< read without the lock
  std::atomic<std::uint64_t> last_read_ns{0};       ///< when NVML was last asked
  /// Measurements asked for by measure_now(), and the last one a reading answered: while
  /// measured < asked, the next reservation or view measures first, waiting for the lock.
  std::atomic<std::uint64_t> measure_asked{0};
  std::atomic<std::uint64_t> measured{0};  ///< written with devices_mu_ held
  /// Counted changes of this process's memory on the device in flight: charged but not yet
  /// made by the driver, or made by the driver but not yet given back. A reading of NVML is
  /// taken only while there are none (state::change_begin).
  std::atomic<std::uint32_t> in_flight{0};
  /// A reading is waiting for quiet: changes that begin meanwhile wait until it is taken.
  std::atomic<bool> reading{false};
};

/// A reservation that was refused, and why, for the one log line.
enum class refusal { none, over_limit, config, ledger, device };

/// Everything the shim knows and changes, in one object, created on first use (never in a
/// constructor that runs during preload). Thread-safety is stated per member.
class state {
 public:
  /// The instance, initialised on the first call. Thread-safe.
  static state& get() noexcept;

  /// The real function of \p h, or null when the driver lacks it. Thread-safe after get().
  template <class F>
  F real(hook h) const noexcept {
    return reinterpret_cast<F>(real_[static_cast<int>(h)]);
  }
  /// The real helper \p h, or null. Thread-safe after get().
  template <class F>
  F helper_fn(helper h) const noexcept {
    return reinterpret_cast<F>(helpers_[static_cast<int>(h)]);
  }
  /// Opens NVML on first use; true when the library is there. Thread-safe.
  bool nvml_loaded() noexcept {
    load_nvml();
    return libnvml_ != nullptr;
  }
  /// The real function a hook stands for, by address identity. Thread-safe.
  const hook_entry* entry_for_real(void* fn) const noexcept;

  // ---- accounting (all thread-safe) -----------------------------------------------------

  /// Reserves \p bytes on CUDA ordinal \p ordinal for \p call; on refusal logs one line (and
  /// with ACTIVE_OOM_KILLER ends the process). Returns false when refused; when it returns true
  /// a change is in flight on \p ordinal until the caller's change_end().
  /// A refusal first trims this process's pools on the device and tries again.
  bool reserve(int ordinal, std::uint64_t bytes, const char* call, charge& out) noexcept;
  /// Grows \p c by \p more bytes (after the driver reported a larger size). False if refused.
  bool reserve_more(charge& c, std::uint64_t more, const char* call) noexcept;
  /// Begins a counted change of this process's memory on \p ordinal: waits while a reading of
  /// NVML is being taken, then holds readings off until change_end(). reserve() begins one when
  /// it succeeds; the caller ends it once the driver's call has returned and its charge is
  /// settled. Never call reconcile paths (measure_now) while holding one. Thread-safe.
  void change_begin(int ordinal) noexcept;
  /// Ends a change change_begin() (or a successful reserve()) began. Thread-safe.
  void change_end(int ordinal) noexcept;
  /// Gives back \p bytes of \p c (the whole charge by default).
  void release(const charge& c) noexcept;
  void release(const charge& c, std::uint64_t bytes) noexcept;

  // ---- stream-ordered pools: charged at their reserve, not at their allocations ----------

  /// Records a pool cuMemPoolCreate made: where it lives decides whether it is charged.
  void pool_created(CUmemoryPool pool, const CUmemPoolProps& props) noexcept;
  /// After cuMemPoolDestroy: the driver gave back the pool's idle reserve.
  void pool_destroyed(CUmemoryPool pool) noexcept;
  /// True for a pool located on the host (never charged).
  bool pool_on_host(CUmemoryPool pool) noexcept;
  /// The ordinal of a pool cuMemPoolCreate placed on a device, or -1.
  int pool_ordinal(CUmemoryPool pool) noexcept;
  /// The device whose memory \p pool holds: where cuMemPoolCreate placed it, else the device
  /// whose default or current pool it is (cuda.h lets a stream of another device allocate from
  /// it); -1 when the shim cannot tell. Thread-safe.
  int pool_device(CUmemoryPool pool) noexcept;
  /// After an allocation of \p bytes from \p pool, for which \p inflight was reserved: the
  /// pool's charge follows its reserve (from \p inflight first), and \p inflight is given back.
  /// False when the reserve grew beyond what the limit admits (the caller undoes the allocation).
  /// \p first_use is set when this was the pool's first allocation since it was created or its
  /// device's context was torn down (see measure_now).
  bool settle_pool(CUmemoryPool pool, std::uint64_t bytes, charge& inflight,
                   bool& first_use) noexcept;
  /// After \p c (a pooled allocation) was freed.
  void pool_freed(const charge& c) noexcept;
  /// After a stream, event or context synchronisation: the driver may have given pools' memory
  /// beyond their release threshold back (cuda.h), so every pool's reserve is read and what it
  /// gave back stops being charged at once, not at this process's next call (an idle process
  /// would otherwise keep it charged, and its neighbours would be refused). Thread-safe.
  void synchronised() noexcept;
  /// Trims this process's pools on \p ordinal to what their allocations need and settles them.
  void trim_pools(int ordinal) noexcept;

  // ---- VMM: physical memory lives until released and unmapped --------------------------

  /// A charged cuMemCreate handle, with its one reference.
  void vmm_created(CUmemGenericAllocationHandle h) noexcept;
  /// After cuMemRetainAllocationHandle gave \p h: one more reference.
  void vmm_retained(CUmemGenericAllocationHandle h) noexcept;
  /// After cuMemRelease(\p h): true when the driver freed the memory (no reference and no
  /// mapping left, or a handle the shim does not follow), so its charge is given back.
  bool vmm_released(CUmemGenericAllocationHandle h) noexcept;
  /// After cuMemMap.
  void vmm_mapped(CUdeviceptr at, std::size_t size, CUmemGenericAllocationHandle h) noexcept;
  /// After cuMemUnmap: the handles whose memory the driver freed (released and now unmapped).
  std::vector<CUmemGenericAllocationHandle> vmm_unmapped(CUdeviceptr at, std::size_t size) noexcept;

  /// The driver's own memory on \p ordinal (every device for -1) may have changed: a module or
  /// library was loaded or unloaded, a graph with memory nodes was launched or uploaded, or the
  /// graph allocator was trimmed. The next call measures it again rather than at the next
  /// interval. Thread-safe; a store per device.
  void driver_memory_changed(int ordinal) noexcept;

  /// The driver may have just taken memory of its own on \p ordinal that no call shows (a pool's
  /// first use in a context: 70 MiB on an H200): measures it now, waiting for another thread's
  /// reconciliation rather than skipping, and if this reading is lost (counted memory moved
  /// while it was taken) makes the next reservation or view measure before it proceeds. False
  /// when the driver's memory does not fit the limit: then this refusal of \p bytes for \p call
  /// is logged (and the OOM killer acts), and the caller undoes its allocation.
  bool measure_now(int ordinal, std::uint64_t bytes, const char* call) noexcept;

  /// After the driver made a context on \p ordinal (cuCtxCreate, a primary context's first
  /// retain): the next reservation or view on it measures the driver's memory before it
  /// proceeds, so a context counts from its creation on. Thread-safe.
  void context_made(int ordinal) noexcept;
  /// Before the driver makes a context on \p ordinal while this process is not identified yet:
  /// NVML's process list, for context_made_after() to find the pid that the context adds.
  /// nullopt when NVML cannot be read or the pid is known. Thread-safe.
  std::optional<std::vector<std::pair<unsigned, std::uint64_t>>> processes_before_context(
      int ordinal) noexcept;
  /// After the context was made: if exactly one pid appeared in NVML's list since \p before
  /// (or the NSpid hint's host pid did), it is this process's, found without a probe
  /// allocation, so a process identifies itself even when its quota is full. Then
  /// context_made(). Thread-safe.
  void context_made_after(
      int ordinal,
      const std::optional<std::vector<std::pair<unsigned, std::uint64_t>>>& before) noexcept;

  /// After the driver tore \p ctx down on \p ordinal: it freed the context's allocations, so
  /// their charges are given back, and the context's own memory is measured again.
  void context_gone(CUcontext ctx, int ordinal) noexcept;

  /// Live allocations by kind.
  alloc_table& pointers() noexcept { return pointers_; }
  alloc_table& arrays() noexcept { return arrays_; }
  alloc_table& handles() noexcept { return handles_; }

  /// The device of the calling thread's current context.
  CUresult current_device(int* ordinal) noexcept;
  /// The device \p stream belongs to (its context's; per-thread variants share the logic).
  CUresult stream_device(CUstream stream, int* ordinal) noexcept;

  /// The view of CUDA ordinal \p ordinal given the card's real figures; nullopt when the
  /// device is unknown to the shim (the caller passes the driver's figures through).
  std::optional<memory_view> cuda_view(int ordinal, std::uint64_t card_total,
                                       std::uint64_t card_free) noexcept;
  /// The same for an NVML device handle. Never initialises CUDA: before the application has,
  /// the view comes from the ledger's record of the UUID.
  std::optional<memory_view> nvml_view(nvmlDevice_t dev, std::uint64_t card_total,
                                       std::uint64_t card_free) noexcept;

  /// The pid NVML lists this process under (the host's pid in a container's pid namespace),
  /// once verified by identify(); 0 while unknown. Thread-safe.
  unsigned nvml_pid() const noexcept { return nvml_pid_.load(std::memory_order_acquire); }

  // ---- for the launch path and live limit changes (launch.cpp; all thread-safe) ----------

  /// The parsed configuration (defaults when it did not parse; see closed_reason()).
  const config& configuration() const noexcept { return config_; }
  /// The ledger file in use: CUDA_DEVICE_MEMORY_SHARED_CACHE, or the default ledger when it is
  /// unset (empty when the configuration did not parse). Set once at start-up; thread-safe.
  const std::string& ledger_path() const noexcept { return ledger_path_; }
  /// Why the shim fails closed (invalid configuration or unusable ledger); empty when it does not.
  const std::string& closed_reason() const noexcept {
    return config_error_.empty() ? ledger_error_ : config_error_;
  }
  /// Registers the devices on first use; the number of CUDA devices the shim knows.
  int device_count() noexcept {
    ensure_devices();
    return device_count_;
  }
  /// The device of CUDA ordinal \p ordinal, or null (out of range). Call device_count() first.
  const device_info* device(int ordinal) const noexcept {
    return ordinal >= 0 && ordinal < device_count_ ? &devices_[static_cast<std::size_t>(ordinal)]
                                                   : nullptr;
  }
  /// The SM limiter's words of ledger device \p index (null for a bad index).
  std::atomic<std::uint64_t>* rate_words(int index) noexcept;
  /// The ledger's SM share of device \p index: 0 unset, 1..99 a cap, 100 explicitly none.
  std::uint32_t ledger_sm_limit(int index) noexcept;

  /// Logs one line to stderr at \p level if enabled. Thread-safe; never throws.
  template <class... Args>
  void log(log_level level, fmt::format_string<Args...> f, Args&&... args) const noexcept {
    if (static_cast<int>(level) > log_level_.load(std::memory_order_relaxed)) return;
    try {
      write_line(level, fmt::vformat(f, fmt::make_format_args(args...)));
    } catch (...) {
      // Logging must never take the process down or change a hook's answer.
    }
  }

  /// After fork, in the child: the child holds nothing and attaches again. Not thread-safe
  /// (the child has one thread).
  void after_fork_child() noexcept;
  void before_fork() noexcept;
  void after_fork_parent() noexcept;

 private:
  state() = default;
  void init() noexcept;
  bool load_nvml() noexcept;
  bool ensure_devices() noexcept;
  std::optional<memory::slot_handle> slot() noexcept;
  void reconcile(device_info& d, bool force, bool wait = false) noexcept;
  /// reconcile(d, false), or a waiting, forced one while a measure_now() is unanswered.
  void reconcile_due(device_info& d) noexcept;
  enum class identity { known, not_now, ambiguous };
  identity identify(device_info& d, int ordinal) noexcept;
  /// With devices_mu_ held: stops new counted changes on \p d and waits for those in flight;
  /// false (and changes allowed again) when they do not end within k_quiet_wait_ns.
  bool quiesce(device_info& d) noexcept;
  /// Allows counted changes on \p d again.
  void unquiesce(device_info& d) noexcept;
  /// Charges \p d's pending driver memory if the ledger has room for it now (takes devices_mu_).
  void retry_pending(device_info& d) noexcept;
  /// With devices_mu_ held: \p d's NVML handle, looked up on first use (null if NVML does not
  /// know the device).
  nvmlDevice_t nvml_handle(device_info& d) noexcept;
  /// With devices_mu_ held: gives back \p d's overhead and pending (taken under a wrong pid).
  void drop_overhead(device_info& d) noexcept;
  std::optional<memory_view> nvml_only_view(const std::string& uuid, std::uint64_t card_total,
                                            std::uint64_t card_free);
  void refuse(refusal why, int ordinal, std::uint64_t bytes, const char* call) noexcept;
  void write_line(log_level level, const std::string& msg) const noexcept;
  memory::shared_ledger* shared() noexcept { return shared_ ? &*shared_ : nullptr; }

  template <class Fn>
  auto with_ledger(Fn&& fn) noexcept {
    return shared_ ? fn(*shared_) : fn(*local_);
  }

  std::atomic<int> log_level_{static_cast<int>(log_level::warn)};
  config config_{};
  std::string config_error_;  ///< non-empty: fail closed
  std::string ledger_error_;  ///< non-empty: fail closed
  std::string ledger_path_;   ///< the ledger file opened (or tried) at start-up
  std::optional<memory::shared_ledger> shared_;
  std::optional<memory::in_memory_ledger> local_;

  void* libcuda_ = nullptr;
  void* libnvml_ = nullptr;
  std::array<void*, k_hook_count> real_{};
  std::array<void*, k_helper_count> helpers_{};
  std::once_flag nvml_once_;
  bool nvml_ok_ = false;

  std::mutex devices_mu_;  ///< guards device registration and reconciliation
  std::atomic<bool> devices_ready_{false};
  int device_count_ = 0;
  std::array<device_info, gpuslice::k_max_devices> devices_{};
  /// Bytes this process charged through counted calls, per ordinal (reconciliation).
  std::array<std::atomic<std::uint64_t>, gpuslice::k_max_devices> counted_{};
  /// This process's pid in NVML's lists, 0 until verified (see identify()).
  std::atomic<unsigned> nvml_pid_{0};
  int identify_attempts_ = 0;  ///< identification attempts that failed; guarded by devices_mu_
  /// Delay before the next identification attempt, doubling from k_retry_interval_ns to
  /// k_reconcile_interval_ns; guarded by devices_mu_.
  std::uint64_t identify_backoff_ns_ = 0;

  std::mutex slot_mu_;
  std::atomic<bool> attached_{false};
  memory::slot_handle slot_{};

  alloc_table pointers_;
  alloc_table arrays_;
  alloc_table handles_;

  /// A pool's charge: its reserve as last read, on its device.
  struct pool_record {
    bool host = false;         ///< located on the host: never charged
    bool destroyed = false;    ///< destroyed with allocations outstanding
    charge held;               ///< the reserve charged
    std::uint64_t live = 0;    ///< bytes of this process's live allocations from it
    /// Allocated from since its creation or its device's last context teardown: the driver
    /// takes memory of its own at a pool's first use in a context (state::measure_now).
    bool used = false;
  };
  void settle_locked(CUmemoryPool pool, pool_record& rec) noexcept;
  /// Reads the reserves of this process's pools on \p ordinal (lock order: devices_mu_, then
  /// pools_mu_, never the reverse).
  void settle_pools(int ordinal) noexcept;
  std::mutex pools_mu_;  ///< guards pools_
  /// pools_.size(), read without the lock: a view of a process without pools takes no lock.
  std::atomic<std::size_t> pool_count_{0};
  std::unordered_map<CUmemoryPool, pool_record> pools_;

  /// A charged VMM handle's references and mappings.
  struct vmm_record {
    int refs = 1;
    int maps = 0;
  };
  std::mutex vmm_mu_;  ///< guards vmm_ and vmm_maps_
  std::unordered_map<CUmemGenericAllocationHandle, vmm_record> vmm_;
  /// Mappings of charged handles: start -> (size, handle).
  std::map<CUdeviceptr, std::pair<std::size_t, CUmemGenericAllocationHandle>> vmm_maps_;
};

/// Per-thread re-entry guard: a hook that finds it held passes straight to the driver (the
/// driver or the shim itself called back into an exported name).
class reentry_guard {
 public:
  reentry_guard() noexcept : first_(!held_) { held_ = true; }
  ~reentry_guard() {
    if (first_) held_ = false;
  }
  reentry_guard(const reentry_guard&) = delete;
  reentry_guard& operator=(const reentry_guard&) = delete;
  /// True for the outermost hook on this thread.
  bool first() const noexcept { return first_; }

 private:
  static thread_local bool held_ __attribute__((tls_model("initial-exec")));
  bool first_;
};

/// Ends a counted change when the hook is done (or earlier, with end()).
class change_scope {
 public:
  /// Adopts a change already begun (by a successful state::reserve) on \p ordinal.
  change_scope(state& s, int ordinal) noexcept : s_(&s), ordinal_(ordinal) {}
  ~change_scope() { end(); }
  change_scope(const change_scope&) = delete;
  change_scope& operator=(const change_scope&) = delete;
  /// Ends the change now (idempotent).
  void end() noexcept {
    if (s_ != nullptr) s_->change_end(ordinal_);
    s_ = nullptr;
  }

 private:
  state* s_;
  int ordinal_;
};

/// Formats 16 UUID bytes the way NVML spells a GPU: "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
std::string format_uuid(const CUuuid& u);

/// The real dlsym of the C library (the shim exports its own). Thread-safe.
void* real_dlsym(void* handle, const char* name) noexcept;

}  // namespace gpuslice::shim::detail
