/// \file
/// The exported entry points of libgpuslice.so: the driver's and NVML's own names (and dlsym,
/// through which programs reach them after dlopen). Each hook finds the real function, lets a
/// re-entrant call straight through, and otherwise charges the ledger before the real call and
/// rolls the charge back if the call fails.
///
/// Imported memory (cuIpcOpenMemHandle, cuMemImportFromShareableHandle) is not charged to the
/// importer: it is the exporter's allocation, already charged to the exporter's ledger when it
/// was made through a counted call. Charging both would count the same bytes twice when they
/// share a ledger. See docs/threat-model.md for what this leaves to the operator.

#include <dlfcn.h>

#include <cstring>

#include "shim.hpp"

namespace gpuslice::shim::detail {

#define GPUSLICE_X(sym, base, since, stream, lib, type) using sym##_fn = type;
GPUSLICE_HOOKS(GPUSLICE_X)
#undef GPUSLICE_X

}  // namespace gpuslice::shim::detail

using gpuslice::shim::detail::alloc_table;
using gpuslice::shim::detail::charge;
using gpuslice::shim::detail::hook;
using gpuslice::shim::detail::reentry_guard;
using gpuslice::shim::detail::state;
namespace d = gpuslice::shim::detail;

/// Finds the real function and passes re-entrant calls straight through. A missing real
/// function is reported as missing, never faked.
#define GPUSLICE_PROLOGUE(sym, missing, ...)        \
  state& s = state::get();                          \
  const auto real = s.real<d::sym##_fn>(hook::sym); \
  if (real == nullptr) return missing;              \
  reentry_guard guard;                              \
  if (!guard.first()) return real(__VA_ARGS__);

namespace {

using gpuslice::log_level;

/// Gives back a charge: a pooled allocation through its pool, anything else to the ledger.
void give_back(state& s, const charge& c) noexcept {
  if (c.pool != nullptr) {
    s.pool_freed(c);
  } else {
    s.release(c);
  }
}

/// Records \p c under \p key. An address the driver handed out again was freed behind the
/// shim's back (its context was torn down): that old charge is given back, never orphaned.
template <class Undo>
CUresult record(state& s, alloc_table& table, std::uint64_t key, const charge& c, const char* name,
                Undo undo) noexcept {
  try {
    if (auto displaced = table.insert(key, c)) give_back(s, *displaced);
  } catch (...) {
    undo();
    give_back(s, c);
    s.log(log_level::error, "{}: out of memory while recording the allocation; refused", name);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return CUDA_SUCCESS;
}

/// Reserves \p estimate, runs \p call, settles the charge to \p actual() (the size the driver
/// took), records it under \p key(); rolls everything back (undoing the allocation with
/// \p undo) when any step fails.
template <class Call, class Actual, class Key, class Undo>
CUresult counted_alloc(state& s, int ordinal, std::uint64_t estimate, const char* name,
                       alloc_table& table, Call call, Actual actual, Key key, Undo undo,
                       CUcontext ctx = nullptr) noexcept {
  charge c;
  if (!s.reserve(ordinal, estimate, name, c)) return CUDA_ERROR_OUT_OF_MEMORY;
  d::change_scope in_flight(s, ordinal);  // no reading is taken until the charge is settled
  c.ctx = ctx;
  const CUresult r = call();
  if (r != CUDA_SUCCESS) {
    s.release(c);
    return r;
  }
  const auto delta = gpuslice::shim::settle(c.bytes, actual());
  if (delta.less != 0) {
    s.release(c, delta.less);
    c.bytes -= delta.less;
  }
  if (delta.more != 0 && !s.reserve_more(c, delta.more, name)) {
    undo();
    s.release(c);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return record(s, table, key(), c, name, undo);
}

/// Takes \p key's charge, runs \p call, and gives the charge back if the call succeeded (puts
/// it back otherwise). Untracked keys pass through.
template <class Call>
CUresult counted_free(state& s, alloc_table& table, std::uint64_t key, Call call) noexcept {
  const auto c = table.take(key);
  if (!c) return call();
  // From the driver's free until the charge is given back, a reading would see less memory
  // than is counted: none is taken meanwhile.
  s.change_begin(c->ordinal);
  d::change_scope in_flight(s, c->ordinal);
  const CUresult r = call();
  if (r == CUDA_SUCCESS) {
    give_back(s, *c);
  } else {
    try {
      if (auto displaced = table.insert(key, *c)) give_back(s, *displaced);
    } catch (...) {
      give_back(s, *c);  // cannot track it any more: give it back rather than leak quota
    }
  }
  return r;
}

std::uint64_t key_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

/// The calling thread's current context (what a device pointer or array belongs to).
CUcontext current_context(state& s) {
  auto get = s.helper_fn<decltype(&::cuCtxGetCurrent)>(d::helper::cuCtxGetCurrent);
  CUcontext ctx = nullptr;
  if (get != nullptr && get(&ctx) != CUDA_SUCCESS) ctx = nullptr;
  return ctx;
}

/// The texel layout of an array format with \p channels channels. Formats this table does not
/// know (newer than CUDA 13) are taken at 16 bytes a texel, the largest a plain format has, so a
/// new format is over-charged rather than free.
gpuslice::shim::texel_layout layout_of(CUarray_format f, unsigned channels) {
  const std::uint32_t n = std::max(channels, 1u);
  switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
      return {n};
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
      return {2 * n};
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT:
      return {4 * n};
    // The normalised formats carry their channel count in the format.
    case CU_AD_FORMAT_UNORM_INT8X1:
    case CU_AD_FORMAT_SNORM_INT8X1:
      return {1};
    case CU_AD_FORMAT_UNORM_INT8X2:
    case CU_AD_FORMAT_SNORM_INT8X2:
    case CU_AD_FORMAT_UNORM_INT16X1:
    case CU_AD_FORMAT_SNORM_INT16X1:
      return {2};
    case CU_AD_FORMAT_UNORM_INT8X4:
    case CU_AD_FORMAT_SNORM_INT8X4:
    case CU_AD_FORMAT_UNORM_INT16X2:
    case CU_AD_FORMAT_SNORM_INT16X2:
    case CU_AD_FORMAT_UNORM_INT_101010_2:
      return {4};
    case CU_AD_FORMAT_UNORM_INT16X4:
    case CU_AD_FORMAT_SNORM_INT16X4:
      return {8};
    // Block compression: 4x4 texels per block of 8 (BC1, BC4) or 16 bytes.
    case CU_AD_FORMAT_BC1_UNORM:
    case CU_AD_FORMAT_BC1_UNORM_SRGB:
    case CU_AD_FORMAT_BC4_UNORM:
    case CU_AD_FORMAT_BC4_SNORM:
      return {8, 4, 4};
    case CU_AD_FORMAT_BC2_UNORM:
    case CU_AD_FORMAT_BC2_UNORM_SRGB:
    case CU_AD_FORMAT_BC3_UNORM:
    case CU_AD_FORMAT_BC3_UNORM_SRGB:
    case CU_AD_FORMAT_BC5_UNORM:
    case CU_AD_FORMAT_BC5_SNORM:
    case CU_AD_FORMAT_BC6H_UF16:
    case CU_AD_FORMAT_BC6H_SF16:
    case CU_AD_FORMAT_BC7_UNORM:
    case CU_AD_FORMAT_BC7_UNORM_SRGB:
      return {16, 4, 4};
    // Video formats: the first plane's texel size, then the further planes over its rows.
    case CU_AD_FORMAT_NV12:  // 8-bit 4:2:0
      return {1, 1, 1, 3, 2};
    case CU_AD_FORMAT_P010:  // 16-bit 4:2:0
    case CU_AD_FORMAT_P016:
      return {2, 1, 1, 3, 2};
    case CU_AD_FORMAT_NV16:  // 8-bit 4:2:2
      return {1, 1, 1, 2, 1};
    case CU_AD_FORMAT_P210:  // 16-bit 4:2:2
    case CU_AD_FORMAT_P216:
      return {2, 1, 1, 2, 1};
    case CU_AD_FORMAT_YUY2:  // packed 4:2:2, 8-bit
      return {2};
    case CU_AD_FORMAT_Y210:  // packed 4:2:2, 16-bit
    case CU_AD_FORMAT_Y216:
    case CU_AD_FORMAT_AYUV:
    case CU_AD_FORMAT_Y410:
      return {4};
    case CU_AD_FORMAT_Y416:
      return {8};
    case CU_AD_FORMAT_Y444_PLANAR8:  // three full planes
    case CU_AD_FORMAT_YUV444_8bit_SemiPlanar:
      return {1, 1, 1, 3, 1};
    case CU_AD_FORMAT_Y444_PLANAR10:
    case CU_AD_FORMAT_YUV444_16bit_SemiPlanar:
      return {2, 1, 1, 3, 1};
    default:
      return {16};
  }
}

/// The row alignment of arrays on \p ordinal (the driver's texture pitch alignment).
std::uint64_t row_alignment(state& s, int ordinal) {
  auto attr = s.helper_fn<decltype(&::cuDeviceGetAttribute)>(d::helper::cuDeviceGetAttribute);
  int v = 0;
  if (attr == nullptr ||
      attr(&v, CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT, ordinal) != CUDA_SUCCESS || v <= 0) {
    return 1;
  }
  return static_cast<std::uint64_t>(v);
}

/// An array's footprint: the driver's requirement query where it answers (only for arrays made
/// with CUDA_ARRAY3D_DEFERRED_MAPPING, which the shim never charges, on current drivers), else
/// the computed footprint. The driver's block-linear layout may pad further; reconciliation
/// against NVML charges that difference (state::reconcile).
template <class Handle, class Query>
std::uint64_t array_actual(Query query, Handle h, int ordinal, std::uint64_t estimate) {
  if (query == nullptr) return estimate;
  CUDA_ARRAY_MEMORY_REQUIREMENTS req{};
  return query(&req, h, ordinal) == CUDA_SUCCESS ? static_cast<std::uint64_t>(req.size) : estimate;
}

/// A stream-ordered allocation from \p pool on \p ordinal: reserves the allocation's size while
/// the driver runs, then charges the pool's reserve instead (state::settle_pool). Host-located
/// pools are never charged. A pool's first allocation in a context also makes the driver take
/// memory of its own, measured before this returns (state::measure_now); if that does not fit,
/// the allocation is undone and refused.
template <class Call, class Undo>
CUresult pooled_alloc(state& s, int ordinal, CUmemoryPool pool, const char* name, CUdeviceptr* dptr,
                      size_t bytes, Call call, Undo undo) {
  if (s.pool_on_host(pool)) return call();
  // A pool grows by whole granules (2 MiB on current GPUs), so the reservation covers the
  // allocation rounded up to one: the driver never holds more than was reserved, even for the
  // moment before the pool's reserve is read back.
  constexpr std::uint64_t k_pool_granule = std::uint64_t{2} << 20;
  const std::uint64_t worst = (bytes + k_pool_granule - 1) / k_pool_granule * k_pool_granule;
  charge inflight;
  if (!s.reserve(ordinal, worst, name, inflight)) return CUDA_ERROR_OUT_OF_MEMORY;
  d::change_scope in_flight(s, ordinal);
  const CUresult r = call();
  if (r != CUDA_SUCCESS) {
    s.release(inflight);
    return r;
  }
  charge c = inflight;
  c.bytes = bytes;
  c.pool = pool;
  bool first_use = false;
  const bool settled = s.settle_pool(pool, bytes, inflight, first_use);
  in_flight.end();  // measure_now takes a reading, which waits for no change in flight
  if (!settled || (first_use && !s.measure_now(ordinal, bytes, name))) {
    undo();
    s.pool_freed(c);
    s.trim_pools(ordinal);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return record(s, s.pointers(), static_cast<std::uint64_t>(*dptr), c, name, undo);
}

/// True when \p stream is being captured: stream-ordered calls on it then become graph nodes.
/// Memory a graph allocates is the graph allocator's, reserved when the graph is launched or
/// uploaded and measured from the driver (state::driver_memory_changed); at capture there is
/// nothing to charge, so an aborted capture leaves no charge behind.
bool capturing(state& s, CUstream stream, bool per_thread) {
  auto is = per_thread
                ? s.helper_fn<decltype(&::cuStreamIsCapturing)>(d::helper::cuStreamIsCapturing_ptsz)
                : s.helper_fn<decltype(&::cuStreamIsCapturing)>(d::helper::cuStreamIsCapturing);
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  return is != nullptr && is(stream, &status) == CUDA_SUCCESS &&
         status != CU_STREAM_CAPTURE_STATUS_NONE;
}

CUresult mem_alloc_async(state& s, d::cuMemAllocAsync_fn real, const char* name, CUdeviceptr* dptr,
                         size_t bytes, CUstream stream, bool per_thread) {
  int ordinal = 0;
  if (dptr == nullptr || bytes == 0) return real(dptr, bytes, stream);
  if (capturing(s, stream, per_thread)) return real(dptr, bytes, stream);
  if (CUresult r = s.stream_device(stream, &ordinal); r != CUDA_SUCCESS) return r;
  auto undo = [&] {
    auto free_async = s.real<d::cuMemFreeAsync_fn>(hook::cuMemFreeAsync);
    if (free_async != nullptr) free_async(*dptr, stream);
  };
  // The device's current pool serves cuMemAllocAsync.
  auto get_pool = s.helper_fn<decltype(&::cuDeviceGetMemPool)>(d::helper::cuDeviceGetMemPool);
  CUmemoryPool pool = nullptr;
  if (get_pool != nullptr && get_pool(&pool, ordinal) == CUDA_SUCCESS && pool != nullptr) {
    return pooled_alloc(
        s, ordinal, pool, name, dptr, bytes, [&] { return real(dptr, bytes, stream); }, undo);
  }
  return counted_alloc(
      s, ordinal, bytes, name, s.pointers(), [&] { return real(dptr, bytes, stream); },
      [&] { return bytes; }, [&] { return static_cast<std::uint64_t>(*dptr); }, undo);
}

CUresult mem_alloc_pool(state& s, d::cuMemAllocFromPoolAsync_fn real, const char* name,
                        CUdeviceptr* dptr, size_t bytes, CUmemoryPool pool, CUstream stream,
                        bool per_thread) {
  if (dptr == nullptr || pool == nullptr || bytes == 0 || capturing(s, stream, per_thread)) {
    return real(dptr, bytes, pool, stream);
  }
  // A pool cuMemPoolCreate placed is charged to its device; another (a device's default pool)
  // to the stream's device.
  int ordinal = s.pool_device(pool);
  if (ordinal < 0) {
    if (CUresult r = s.stream_device(stream, &ordinal); r != CUDA_SUCCESS) return r;
  }
  return pooled_alloc(
      s, ordinal, pool, name, dptr, bytes, [&] { return real(dptr, bytes, pool, stream); },
      [&] {
        auto free_async = s.real<d::cuMemFreeAsync_fn>(hook::cuMemFreeAsync);
        if (free_async != nullptr) free_async(*dptr, stream);
      });
}

/// The allocation of cuMemAlloc_v2. With CUDA_OVERSUBSCRIBE=true, an allocation the quota
/// admitted but the card cannot hold becomes managed memory that prefers the device and stays
/// mapped there (docs/oversubscription.md): it is charged to the quota like device memory.
CUresult alloc_or_oversubscribe(state& s, d::cuMemAlloc_v2_fn real, CUdeviceptr* dptr, size_t bytes,
                                int ordinal) {
  const CUresult r = real(dptr, bytes);
  if (r != CUDA_ERROR_OUT_OF_MEMORY || !s.configuration().oversubscribe) return r;
  auto managed = s.real<d::cuMemAllocManaged_fn>(hook::cuMemAllocManaged);
  if (managed == nullptr || managed(dptr, bytes, CU_MEM_ATTACH_GLOBAL) != CUDA_SUCCESS) return r;
  auto advise = s.helper_fn<decltype(&::cuMemAdvise_v2)>(d::helper::cuMemAdvise_v2);
  if (advise != nullptr) {
    CUmemLocation where{};
    where.type = CU_MEM_LOCATION_TYPE_DEVICE;
    where.id = ordinal;
    advise(*dptr, bytes, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, where);
    advise(*dptr, bytes, CU_MEM_ADVISE_SET_ACCESSED_BY, where);
  }
  s.log(log_level::info,
        "cuMemAlloc_v2: {} bytes do not fit device {}; oversubscribed as managed memory", bytes,
        ordinal);
  return CUDA_SUCCESS;
}

/// Counted allocation names whose pre-3.2 (32-bit) variants the shim does not hook: a lookup
/// that would return such a variant is refused rather than left uncounted.
constexpr const char* k_legacy_counted[] = {"cuMemAlloc", "cuMemAllocPitch", "cuArrayCreate",
                                            "cuArray3DCreate"};

CUresult resolve_proc(state& s, const char* symbol, void** pfn, int version, cuuint64_t flags,
                      CUdriverProcAddressQueryResult* status, CUresult r) {
  if (r != CUDA_SUCCESS || symbol == nullptr || pfn == nullptr || *pfn == nullptr) return r;
  const d::hook_entry* e = s.entry_for_real(*pfn);
  if (e == nullptr) e = d::match_proc(symbol, version, flags);
  if (e != nullptr && s.real<void*>(static_cast<hook>(e - d::k_hooks)) != nullptr) {
    *pfn = e->fn;
    return r;
  }
  if (d::refused_legacy(symbol, version)) {
    s.log(log_level::warn,
          "cuGetProcAddress({}, {}): the driver offers an uncounted pre-3.2 variant; refused",
          symbol, version);
    *pfn = nullptr;
    if (status != nullptr) *status = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    return CUDA_ERROR_NOT_FOUND;
  }
  return r;
}

template <class Memory>
nvmlReturn_t nvml_memory(state& s, nvmlDevice_t dev, Memory* m) {
  if (auto v = s.nvml_view(dev, m->total, m->free)) {
    m->total = v->total;
    m->free = v->free;
    m->used = v->used;
  }
  return NVML_SUCCESS;
}

}  // namespace

// ---- cuGetProcAddress --------------------------------------------------------------------------

GPUSLICE_SHIM_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version,
                                                  cuuint64_t flags,
                                                  CUdriverProcAddressQueryResult* status) {
  GPUSLICE_PROLOGUE(cuGetProcAddress_v2, CUDA_ERROR_NOT_FOUND, symbol, pfn, version, flags, status)
  return resolve_proc(s, symbol, pfn, version, flags, status,
                      real(symbol, pfn, version, flags, status));
}

GPUSLICE_SHIM_EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int version,
                                               cuuint64_t flags) {
  GPUSLICE_PROLOGUE(cuGetProcAddress, CUDA_ERROR_NOT_FOUND, symbol, pfn, version, flags)
  return resolve_proc(s, symbol, pfn, version, flags, nullptr, real(symbol, pfn, version, flags));
}

// ---- views -------------------------------------------------------------------------------------

GPUSLICE_SHIM_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  GPUSLICE_PROLOGUE(cuMemGetInfo_v2, CUDA_ERROR_NOT_FOUND, free_bytes, total_bytes)
  const CUresult r = real(free_bytes, total_bytes);
  if (r != CUDA_SUCCESS || free_bytes == nullptr || total_bytes == nullptr) return r;
  int ordinal = 0;
  if (s.current_device(&ordinal) != CUDA_SUCCESS) return r;
  if (auto v = s.cuda_view(ordinal, *total_bytes, *free_bytes)) {
    *total_bytes = v->total;
    *free_bytes = v->free;
  }
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  GPUSLICE_PROLOGUE(cuDeviceTotalMem_v2, CUDA_ERROR_NOT_FOUND, bytes, dev)
  const CUresult r = real(bytes, dev);
  if (r != CUDA_SUCCESS || bytes == nullptr) return r;
  if (auto v = s.cuda_view(dev, *bytes, *bytes)) *bytes = v->total;
  return r;
}

GPUSLICE_SHIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t* m) {
  state& s = state::get();
  const auto real = [&s] {
    return s.real<d::nvmlDeviceGetMemoryInfo_fn>(hook::nvmlDeviceGetMemoryInfo);
  };
  if (!s.nvml_loaded() || real() == nullptr) return NVML_ERROR_FUNCTION_NOT_FOUND;
  reentry_guard guard;
  const nvmlReturn_t r = real()(dev, m);
  if (!guard.first() || r != NVML_SUCCESS || m == nullptr) return r;
  return nvml_memory(s, dev, m);
}

GPUSLICE_SHIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t* m) {
  state& s = state::get();
  const auto real = [&s] {
    return s.real<d::nvmlDeviceGetMemoryInfo_v2_fn>(hook::nvmlDeviceGetMemoryInfo_v2);
  };
  if (!s.nvml_loaded() || real() == nullptr) return NVML_ERROR_FUNCTION_NOT_FOUND;
  reentry_guard guard;
  const nvmlReturn_t r = real()(dev, m);
  if (!guard.first() || r != NVML_SUCCESS || m == nullptr) return r;
  m->reserved = 0;  // the view's total is the limit; the driver's reservation is not the tenant's
  return nvml_memory(s, dev, m);
}

// ---- counted allocations -----------------------------------------------------------------------

GPUSLICE_SHIM_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
  GPUSLICE_PROLOGUE(cuMemAlloc_v2, CUDA_ERROR_NOT_FOUND, dptr, bytes)
  int ordinal = 0;
  if (dptr == nullptr || bytes == 0) return real(dptr, bytes);
  if (CUresult r = s.current_device(&ordinal); r != CUDA_SUCCESS) return r;
  return counted_alloc(
      s, ordinal, bytes, "cuMemAlloc_v2", s.pointers(),
      [&] { return alloc_or_oversubscribe(s, real, dptr, bytes, ordinal); }, [&] { return bytes; },
      [&] { return static_cast<std::uint64_t>(*dptr); },
      [&] { s.real<d::cuMemFree_v2_fn>(hook::cuMemFree_v2)(*dptr); }, current_context(s));
}

GPUSLICE_SHIM_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width,
                                                 size_t height, unsigned int element_bytes) {
  GPUSLICE_PROLOGUE(cuMemAllocPitch_v2, CUDA_ERROR_NOT_FOUND, dptr, pitch, width, height,
                    element_bytes)
  int ordinal = 0;
  if (dptr == nullptr || pitch == nullptr || width == 0 || height == 0) {
    return real(dptr, pitch, width, height, element_bytes);
  }
  if (CUresult r = s.current_device(&ordinal); r != CUDA_SUCCESS) return r;
  // Charged at width x height first, then at the pitch x height the driver returned.
  return counted_alloc(
      s, ordinal, static_cast<std::uint64_t>(width) * height, "cuMemAllocPitch_v2", s.pointers(),
      [&] { return real(dptr, pitch, width, height, element_bytes); },
      [&] { return static_cast<std::uint64_t>(*pitch) * height; },
      [&] { return static_cast<std::uint64_t>(*dptr); },
      [&] { s.real<d::cuMemFree_v2_fn>(hook::cuMemFree_v2)(*dptr); }, current_context(s));
}

GPUSLICE_SHIM_EXPORT CUresult cuMemAllocManaged(CUdeviceptr* dptr, size_t bytes,
                                                unsigned int flags) {
  GPUSLICE_PROLOGUE(cuMemAllocManaged, CUDA_ERROR_NOT_FOUND, dptr, bytes, flags)
  int ordinal = 0;
  if (dptr == nullptr || bytes == 0) return real(dptr, bytes, flags);
  // Managed memory may migrate; it is charged to the device current at allocation.
  if (CUresult r = s.current_device(&ordinal); r != CUDA_SUCCESS) return r;
  return counted_alloc(
      s, ordinal, bytes, "cuMemAllocManaged", s.pointers(),
      [&] { return real(dptr, bytes, flags); }, [&] { return bytes; },
      [&] { return static_cast<std::uint64_t>(*dptr); },
      [&] { s.real<d::cuMemFree_v2_fn>(hook::cuMemFree_v2)(*dptr); }, current_context(s));
}

GPUSLICE_SHIM_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  GPUSLICE_PROLOGUE(cuMemFree_v2, CUDA_ERROR_NOT_FOUND, dptr)
  return counted_free(s, s.pointers(), dptr, [&] { return real(dptr); });
}

GPUSLICE_SHIM_EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream stream) {
  GPUSLICE_PROLOGUE(cuMemAllocAsync, CUDA_ERROR_NOT_FOUND, dptr, bytes, stream)
  return mem_alloc_async(s, real, "cuMemAllocAsync", dptr, bytes, stream, false);
}

GPUSLICE_SHIM_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytes,
                                                   CUstream stream) {
  GPUSLICE_PROLOGUE(cuMemAllocAsync_ptsz, CUDA_ERROR_NOT_FOUND, dptr, bytes, stream)
  return mem_alloc_async(s, real, "cuMemAllocAsync_ptsz", dptr, bytes, stream, true);
}

GPUSLICE_SHIM_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytes,
                                                      CUmemoryPool pool, CUstream stream) {
  GPUSLICE_PROLOGUE(cuMemAllocFromPoolAsync, CUDA_ERROR_NOT_FOUND, dptr, bytes, pool, stream)
  return mem_alloc_pool(s, real, "cuMemAllocFromPoolAsync", dptr, bytes, pool, stream, false);
}

GPUSLICE_SHIM_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* dptr, size_t bytes,
                                                           CUmemoryPool pool, CUstream stream) {
  GPUSLICE_PROLOGUE(cuMemAllocFromPoolAsync_ptsz, CUDA_ERROR_NOT_FOUND, dptr, bytes, pool, stream)
  return mem_alloc_pool(s, real, "cuMemAllocFromPoolAsync_ptsz", dptr, bytes, pool, stream, true);
}

// A free captured into a graph happens when the graph runs: the charge stays until then (and
// goes when the address is handed out again), never given back early.
GPUSLICE_SHIM_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  GPUSLICE_PROLOGUE(cuMemFreeAsync, CUDA_ERROR_NOT_FOUND, dptr, stream)
  if (capturing(s, stream, false)) return real(dptr, stream);
  return counted_free(s, s.pointers(), dptr, [&] { return real(dptr, stream); });
}

GPUSLICE_SHIM_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  GPUSLICE_PROLOGUE(cuMemFreeAsync_ptsz, CUDA_ERROR_NOT_FOUND, dptr, stream)
  if (capturing(s, stream, true)) return real(dptr, stream);
  return counted_free(s, s.pointers(), dptr, [&] { return real(dptr, stream); });
}

GPUSLICE_SHIM_EXPORT CUresult cuDeviceGraphMemTrim(CUdevice dev) {
  GPUSLICE_PROLOGUE(cuDeviceGraphMemTrim, CUDA_ERROR_NOT_FOUND, dev)
  const CUresult r = real(dev);
  if (r == CUDA_SUCCESS) s.driver_memory_changed(dev);
  return r;
}

// Uploading a graph reserves its memory nodes' memory in the graph allocator: measured at the
// next call, as after a launch (launch.cpp).
GPUSLICE_SHIM_EXPORT CUresult cuGraphUpload(CUgraphExec exec, CUstream stream) {
  GPUSLICE_PROLOGUE(cuGraphUpload, CUDA_ERROR_NOT_FOUND, exec, stream)
  const CUresult r = real(exec, stream);
  if (r == CUDA_SUCCESS) s.driver_memory_changed(-1);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuGraphUpload_ptsz(CUgraphExec exec, CUstream stream) {
  GPUSLICE_PROLOGUE(cuGraphUpload_ptsz, CUDA_ERROR_NOT_FOUND, exec, stream)
  const CUresult r = real(exec, stream);
  if (r == CUDA_SUCCESS) s.driver_memory_changed(-1);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuMemPoolCreate(CUmemoryPool* pool, const CUmemPoolProps* props) {
  GPUSLICE_PROLOGUE(cuMemPoolCreate, CUDA_ERROR_NOT_FOUND, pool, props)
  const CUresult r = real(pool, props);
  if (r == CUDA_SUCCESS && pool != nullptr && props != nullptr) s.pool_created(*pool, *props);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  GPUSLICE_PROLOGUE(cuMemPoolDestroy, CUDA_ERROR_NOT_FOUND, pool)
  const CUresult r = real(pool);
  if (r == CUDA_SUCCESS) s.pool_destroyed(pool);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                                          const CUmemAllocationProp* prop,
                                          unsigned long long flags) {
  GPUSLICE_PROLOGUE(cuMemCreate, CUDA_ERROR_NOT_FOUND, handle, size, prop, flags)
  // Only device-resident physical memory counts; host and host-NUMA locations do not.
  if (handle == nullptr || prop == nullptr || size == 0 ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
    return real(handle, size, prop, flags);
  }
  const CUresult r = counted_alloc(
      s, prop->location.id, size, "cuMemCreate", s.handles(),
      [&] { return real(handle, size, prop, flags); }, [&] { return size; },
      [&] { return static_cast<std::uint64_t>(*handle); },
      [&] { s.real<d::cuMemRelease_fn>(hook::cuMemRelease)(*handle); });
  if (r == CUDA_SUCCESS) s.vmm_created(*handle);
  return r;
}

namespace {
/// Gives back the charge of a VMM handle whose memory the driver freed.
void vmm_freed(state& s, CUmemGenericAllocationHandle h) {
  if (auto c = s.handles().take(h)) s.release(*c);
}
}  // namespace

// A handle's memory is freed when it is both released and unmapped (state::vmm_released).
GPUSLICE_SHIM_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  GPUSLICE_PROLOGUE(cuMemRelease, CUDA_ERROR_NOT_FOUND, handle)
  const CUresult r = real(handle);
  if (r == CUDA_SUCCESS && s.vmm_released(handle)) vmm_freed(s, handle);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle* handle,
                                                          void* addr) {
  GPUSLICE_PROLOGUE(cuMemRetainAllocationHandle, CUDA_ERROR_NOT_FOUND, handle, addr)
  const CUresult r = real(handle, addr);
  if (r == CUDA_SUCCESS && handle != nullptr) s.vmm_retained(*handle);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                                       CUmemGenericAllocationHandle handle,
                                       unsigned long long flags) {
  GPUSLICE_PROLOGUE(cuMemMap, CUDA_ERROR_NOT_FOUND, ptr, size, offset, handle, flags)
  const CUresult r = real(ptr, size, offset, handle, flags);
  if (r == CUDA_SUCCESS) s.vmm_mapped(ptr, size, handle);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  GPUSLICE_PROLOGUE(cuMemUnmap, CUDA_ERROR_NOT_FOUND, ptr, size)
  const CUresult r = real(ptr, size);
  if (r == CUDA_SUCCESS) {
    for (CUmemGenericAllocationHandle h : s.vmm_unmapped(ptr, size)) vmm_freed(s, h);
  }
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuArrayCreate_v2(CUarray* out, const CUDA_ARRAY_DESCRIPTOR* desc) {
  GPUSLICE_PROLOGUE(cuArrayCreate_v2, CUDA_ERROR_NOT_FOUND, out, desc)
  int ordinal = 0;
  if (out == nullptr || desc == nullptr) return real(out, desc);
  if (CUresult r = s.current_device(&ordinal); r != CUDA_SUCCESS) return r;
  const std::uint64_t estimate =
      gpuslice::shim::array_bytes(layout_of(desc->Format, desc->NumChannels), desc->Width,
                                  desc->Height, 0, 1, false, row_alignment(s, ordinal));
  return counted_alloc(
      s, ordinal, estimate, "cuArrayCreate_v2", s.arrays(), [&] { return real(out, desc); },
      [&] { return estimate; }, [&] { return key_of(*out); },
      [&] { s.real<d::cuArrayDestroy_fn>(hook::cuArrayDestroy)(*out); }, current_context(s));
}

GPUSLICE_SHIM_EXPORT CUresult cuArray3DCreate_v2(CUarray* out,
                                                 const CUDA_ARRAY3D_DESCRIPTOR* desc) {
  GPUSLICE_PROLOGUE(cuArray3DCreate_v2, CUDA_ERROR_NOT_FOUND, out, desc)
  int ordinal = 0;
  if (out == nullptr || desc == nullptr) return real(out, desc);
  if (CUresult r = s.current_device(&ordinal); r != CUDA_SUCCESS) return r;
  // A deferred-mapping array takes no memory: what backs it comes from cuMemCreate, charged
  // there, and mapped with cuMemMapArrayAsync.
  if ((desc->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING) != 0) return real(out, desc);
  const bool layered = (desc->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
  const std::uint64_t estimate =
      gpuslice::shim::array_bytes(layout_of(desc->Format, desc->NumChannels), desc->Width,
                                  desc->Height, desc->Depth, 1, layered, row_alignment(s, ordinal));
  auto query = s.helper_fn<decltype(&::cuArrayGetMemoryRequirements)>(
      d::helper::cuArrayGetMemoryRequirements);
  return counted_alloc(
      s, ordinal, estimate, "cuArray3DCreate_v2", s.arrays(), [&] { return real(out, desc); },
      [&] { return array_actual(query, *out, ordinal, estimate); }, [&] { return key_of(*out); },
      [&] { s.real<d::cuArrayDestroy_fn>(hook::cuArrayDestroy)(*out); }, current_context(s));
}

GPUSLICE_SHIM_EXPORT CUresult cuArrayDestroy(CUarray array) {
  GPUSLICE_PROLOGUE(cuArrayDestroy, CUDA_ERROR_NOT_FOUND, array)
  return counted_free(s, s.arrays(), key_of(array), [&] { return real(array); });
}

GPUSLICE_SHIM_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray* out,
                                                     const CUDA_ARRAY3D_DESCRIPTOR* desc,
                                                     unsigned int levels) {
  GPUSLICE_PROLOGUE(cuMipmappedArrayCreate, CUDA_ERROR_NOT_FOUND, out, desc, levels)
  int ordinal = 0;
  if (out == nullptr || desc == nullptr) return real(out, desc, levels);
  if (CUresult r = s.current_device(&ordinal); r != CUDA_SUCCESS) return r;
  if ((desc->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING) != 0) return real(out, desc, levels);
  const bool layered = (desc->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
  // The whole chain, every level padded.
  const std::uint64_t estimate = gpuslice::shim::array_bytes(
      layout_of(desc->Format, desc->NumChannels), desc->Width, desc->Height, desc->Depth, levels,
      layered, row_alignment(s, ordinal));
  auto query = s.helper_fn<decltype(&::cuMipmappedArrayGetMemoryRequirements)>(
      d::helper::cuMipmappedArrayGetMemoryRequirements);
  return counted_alloc(
      s, ordinal, estimate, "cuMipmappedArrayCreate", s.arrays(),
      [&] { return real(out, desc, levels); },
      [&] { return array_actual(query, *out, ordinal, estimate); }, [&] { return key_of(*out); },
      [&] { s.real<d::cuMipmappedArrayDestroy_fn>(hook::cuMipmappedArrayDestroy)(*out); },
      current_context(s));
}

GPUSLICE_SHIM_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray array) {
  GPUSLICE_PROLOGUE(cuMipmappedArrayDestroy, CUDA_ERROR_NOT_FOUND, array)
  return counted_free(s, s.arrays(), key_of(array), [&] { return real(array); });
}

// ---- modules: their code and data take device memory the driver measures -------------------

namespace {
/// After a module load or unload in the current context: its device's memory is measured again
/// at the next call (state::reconcile), so a module counts from its load on.
void module_changed(state& s) {
  int ordinal = -1;
  if (s.current_device(&ordinal) == CUDA_SUCCESS) s.driver_memory_changed(ordinal);
}
}  // namespace

GPUSLICE_SHIM_EXPORT CUresult cuModuleLoad(CUmodule* module, const char* fname) {
  GPUSLICE_PROLOGUE(cuModuleLoad, CUDA_ERROR_NOT_FOUND, module, fname)
  const CUresult r = real(module, fname);
  if (r == CUDA_SUCCESS) module_changed(s);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  GPUSLICE_PROLOGUE(cuModuleLoadData, CUDA_ERROR_NOT_FOUND, module, image)
  const CUresult r = real(module, image);
  if (r == CUDA_SUCCESS) module_changed(s);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuModuleLoadDataEx(CUmodule* module, const void* image,
                                                 unsigned int n, CUjit_option* options,
                                                 void** values) {
  GPUSLICE_PROLOGUE(cuModuleLoadDataEx, CUDA_ERROR_NOT_FOUND, module, image, n, options, values)
  const CUresult r = real(module, image, n, options, values);
  if (r == CUDA_SUCCESS) module_changed(s);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuModuleLoadFatBinary(CUmodule* module, const void* fatbin) {
  GPUSLICE_PROLOGUE(cuModuleLoadFatBinary, CUDA_ERROR_NOT_FOUND, module, fatbin)
  const CUresult r = real(module, fatbin);
  if (r == CUDA_SUCCESS) module_changed(s);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuModuleUnload(CUmodule module) {
  GPUSLICE_PROLOGUE(cuModuleUnload, CUDA_ERROR_NOT_FOUND, module)
  const CUresult r = real(module);
  if (r == CUDA_SUCCESS) module_changed(s);
  return r;
}

// A library is loaded into every context, lazily: every device is measured again.
GPUSLICE_SHIM_EXPORT CUresult cuLibraryLoadData(CUlibrary* library, const void* code,
                                                CUjit_option* jit_options, void** jit_values,
                                                unsigned int jit_count,
                                                CUlibraryOption* library_options,
                                                void** library_values, unsigned int library_count) {
  GPUSLICE_PROLOGUE(cuLibraryLoadData, CUDA_ERROR_NOT_FOUND, library, code, jit_options, jit_values,
                    jit_count, library_options, library_values, library_count)
  const CUresult r = real(library, code, jit_options, jit_values, jit_count, library_options,
                          library_values, library_count);
  if (r == CUDA_SUCCESS) s.driver_memory_changed(-1);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuLibraryLoadFromFile(CUlibrary* library, const char* file,
                                                    CUjit_option* jit_options, void** jit_values,
                                                    unsigned int jit_count,
                                                    CUlibraryOption* library_options,
                                                    void** library_values,
                                                    unsigned int library_count) {
  GPUSLICE_PROLOGUE(cuLibraryLoadFromFile, CUDA_ERROR_NOT_FOUND, library, file, jit_options,
                    jit_values, jit_count, library_options, library_values, library_count)
  const CUresult r = real(library, file, jit_options, jit_values, jit_count, library_options,
                          library_values, library_count);
  if (r == CUDA_SUCCESS) s.driver_memory_changed(-1);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuLibraryUnload(CUlibrary library) {
  GPUSLICE_PROLOGUE(cuLibraryUnload, CUDA_ERROR_NOT_FOUND, library)
  const CUresult r = real(library);
  if (r == CUDA_SUCCESS) s.driver_memory_changed(-1);
  return r;
}

// ---- context teardown: the driver frees the context's memory ---------------------------------

GPUSLICE_SHIM_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  GPUSLICE_PROLOGUE(cuCtxDestroy_v2, CUDA_ERROR_NOT_FOUND, ctx)
  int ordinal = -1;
  {
    // The context's device, asked of the context itself.
    auto push = s.helper_fn<decltype(&::cuCtxPushCurrent_v2)>(d::helper::cuCtxPushCurrent_v2);
    auto pop = s.helper_fn<decltype(&::cuCtxPopCurrent_v2)>(d::helper::cuCtxPopCurrent_v2);
    CUcontext popped = nullptr;
    if (push != nullptr && pop != nullptr && ctx != nullptr && push(ctx) == CUDA_SUCCESS) {
      if (s.current_device(&ordinal) != CUDA_SUCCESS) ordinal = -1;
      pop(&popped);
    }
  }
  const CUresult r = real(ctx);
  if (r == CUDA_SUCCESS) s.context_gone(ctx, ordinal);
  return r;
}

namespace {
/// Runs \p call (a release or reset of \p dev's primary context) and gives back the charges of
/// that context when the call tore it down.
template <class Call>
CUresult primary_teardown(state& s, CUdevice dev, bool destroys, Call call) {
  auto get_state =
      s.helper_fn<decltype(&::cuDevicePrimaryCtxGetState)>(d::helper::cuDevicePrimaryCtxGetState);
  auto retain =
      s.helper_fn<decltype(&::cuDevicePrimaryCtxRetain)>(d::helper::cuDevicePrimaryCtxRetain);
  auto release = s.real<d::cuDevicePrimaryCtxRelease_v2_fn>(hook::cuDevicePrimaryCtxRelease_v2);
  unsigned flags = 0;
  int active = 0;
  CUcontext primary = nullptr;
  // The primary context's handle: retaining an active one creates nothing, and the release
  // right after leaves its count as it was.
  if (get_state != nullptr && retain != nullptr && release != nullptr &&
      get_state(dev, &flags, &active) == CUDA_SUCCESS && active != 0 &&
      retain(&primary, dev) == CUDA_SUCCESS) {
    release(dev);
  }
  const CUresult r = call();
  // cuDevicePrimaryCtxReset "destroy[s] all allocations" of the context whatever the state
  // reports afterwards (another thread may have retained it again meanwhile); a release tears
  // it down only when that was the last reference.
  if (r == CUDA_SUCCESS && primary != nullptr &&
      (destroys || (get_state(dev, &flags, &active) == CUDA_SUCCESS && active == 0))) {
    s.context_gone(primary, dev);
  }
  return r;
}
}  // namespace

GPUSLICE_SHIM_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  GPUSLICE_PROLOGUE(cuDevicePrimaryCtxRelease_v2, CUDA_ERROR_NOT_FOUND, dev)
  return primary_teardown(s, dev, false, [&] { return real(dev); });
}

GPUSLICE_SHIM_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  GPUSLICE_PROLOGUE(cuDevicePrimaryCtxReset_v2, CUDA_ERROR_NOT_FOUND, dev)
  return primary_teardown(s, dev, true, [&] { return real(dev); });
}

// ---- synchronisation: pools give memory beyond their release threshold back ----------------

GPUSLICE_SHIM_EXPORT CUresult cuCtxSynchronize() {
  GPUSLICE_PROLOGUE(cuCtxSynchronize, CUDA_ERROR_NOT_FOUND)
  const CUresult r = real();
  if (r == CUDA_SUCCESS) s.synchronised();
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuStreamSynchronize(CUstream stream) {
  GPUSLICE_PROLOGUE(cuStreamSynchronize, CUDA_ERROR_NOT_FOUND, stream)
  const CUresult r = real(stream);
  if (r == CUDA_SUCCESS) s.synchronised();
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream stream) {
  GPUSLICE_PROLOGUE(cuStreamSynchronize_ptsz, CUDA_ERROR_NOT_FOUND, stream)
  const CUresult r = real(stream);
  if (r == CUDA_SUCCESS) s.synchronised();
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuEventSynchronize(CUevent event) {
  GPUSLICE_PROLOGUE(cuEventSynchronize, CUDA_ERROR_NOT_FOUND, event)
  const CUresult r = real(event);
  if (r == CUDA_SUCCESS) s.synchronised();
  return r;
}

// ---- context creation: the driver takes the context's memory ----------------------------------

GPUSLICE_SHIM_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  GPUSLICE_PROLOGUE(cuDevicePrimaryCtxRetain, CUDA_ERROR_NOT_FOUND, pctx, dev)
  // Only the first retain makes the context; later ones count a reference.
  auto get_state =
      s.helper_fn<decltype(&::cuDevicePrimaryCtxGetState)>(d::helper::cuDevicePrimaryCtxGetState);
  unsigned flags = 0;
  int active = 0;
  const bool existed =
      get_state != nullptr && get_state(dev, &flags, &active) == CUDA_SUCCESS && active != 0;
  const auto before = existed ? std::nullopt : s.processes_before_context(dev);
  const CUresult r = real(pctx, dev);
  if (r == CUDA_SUCCESS && !existed) s.context_made_after(dev, before);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice dev) {
  GPUSLICE_PROLOGUE(cuCtxCreate_v2, CUDA_ERROR_NOT_FOUND, pctx, flags, dev)
  const auto before = s.processes_before_context(dev);
  const CUresult r = real(pctx, flags, dev);
  if (r == CUDA_SUCCESS) s.context_made_after(dev, before);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuCtxCreate_v3(CUcontext* pctx, CUexecAffinityParam* params,
                                             int num_params, unsigned int flags, CUdevice dev) {
  GPUSLICE_PROLOGUE(cuCtxCreate_v3, CUDA_ERROR_NOT_FOUND, pctx, params, num_params, flags, dev)
  const auto before = s.processes_before_context(dev);
  const CUresult r = real(pctx, params, num_params, flags, dev);
  if (r == CUDA_SUCCESS) s.context_made_after(dev, before);
  return r;
}

GPUSLICE_SHIM_EXPORT CUresult cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* params,
                                             unsigned int flags, CUdevice dev) {
  GPUSLICE_PROLOGUE(cuCtxCreate_v4, CUDA_ERROR_NOT_FOUND, pctx, params, flags, dev)
  const auto before = s.processes_before_context(dev);
  const CUresult r = real(pctx, params, flags, dev);
  if (r == CUDA_SUCCESS) s.context_made_after(dev, before);
  return r;
}

// ---- dlsym -------------------------------------------------------------------------------------

namespace {

/// Sanitizer runtimes call dlsym while they start, before their shadow memory exists, so the
/// dlsym path is built without instrumentation and calls nothing the runtimes intercept.
#define GPUSLICE_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined")))

GPUSLICE_UNINSTRUMENTED bool same(const char* a, const char* b) noexcept {
  while (*a != '\0' && *a == *b) {
    ++a;
    ++b;
  }
  return *a == *b;
}

GPUSLICE_UNINSTRUMENTED bool starts_with(const char* s, const char* prefix) noexcept {
  while (*prefix != '\0') {
    if (*s++ != *prefix++) return false;
  }
  return true;
}

GPUSLICE_UNINSTRUMENTED const d::hook_entry* find_hook_raw(const char* name) noexcept {
  for (int i = 0; i < d::k_hook_count; ++i) {
    if (same(name, d::k_hooks[i].symbol)) return &d::k_hooks[i];
  }
  return nullptr;
}

}  // namespace

/// Programs that dlopen the driver reach it through dlsym, which the shim answers with its own
/// hooks for the names it hooks (only when the real lookup finds the name: a missing entry
/// point stays missing). Lookups with RTLD_NEXT are answered relative to the shim, which
/// precedes every library but the sanitizer runtimes in a preload.
GPUSLICE_SHIM_EXPORT GPUSLICE_UNINSTRUMENTED void* dlsym(void* handle, const char* name) noexcept {
  void* r = d::real_dlsym(handle, name);
  if (r == nullptr || !(starts_with(name, "cu") || starts_with(name, "nvml"))) return r;
  if (const d::hook_entry* e = find_hook_raw(name)) return e->fn;
  for (const char* legacy : k_legacy_counted) {
    if (same(name, legacy)) {
      state::get().log(log_level::warn, "dlsym({}): uncounted pre-3.2 variant; refused", name);
      return nullptr;
    }
  }
  return r;
}

// ---- the table ---------------------------------------------------------------------------------

namespace gpuslice::shim::detail {

const hook_entry k_hooks[k_hook_count] = {
#define GPUSLICE_X(sym, base, since, stream, lib, type) \
  {#sym, base, since, stream_kind::stream, library::lib, reinterpret_cast<void*>(&::sym)},
    GPUSLICE_HOOKS(GPUSLICE_X)
#undef GPUSLICE_X
};

const hook_entry* find_hook(std::string_view name) noexcept {
  for (const hook_entry& e : k_hooks) {
    if (name == e.symbol) return &e;
  }
  return nullptr;
}

const hook_entry* match_proc(std::string_view base, int version, cuuint64_t flags) noexcept {
  const bool per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  const hook_entry* best = nullptr;
  for (const hook_entry& e : k_hooks) {
    if (e.lib != library::cuda || base != e.base || e.since > version) continue;
    const bool stream_ok = e.stream == stream_kind::legacy || per_thread;
    if (!stream_ok) continue;
    if (best == nullptr || e.since > best->since ||
        (e.since == best->since && per_thread && e.stream == stream_kind::per_thread)) {
      best = &e;
    }
  }
  return best;
}

bool refused_legacy(std::string_view base, int version) noexcept {
  bool counted = false;
  for (const char* legacy : k_legacy_counted) counted = counted || base == legacy;
  return counted && match_proc(base, version, 0) == nullptr;
}

namespace {
using dlsym_fn = void* (*)(void*, const char*);
GPUSLICE_UNINSTRUMENTED dlsym_fn find_real_dlsym() noexcept {
  // The C library's dlsym by version: GLIBC_2.34 since dlsym moved into libc, GLIBC_2.2.5 on
  // older x86-64 C libraries.
  void* f = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (f == nullptr) f = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
  return reinterpret_cast<dlsym_fn>(f);
}
}  // namespace

GPUSLICE_UNINSTRUMENTED void* real_dlsym(void* handle, const char* name) noexcept {
  static const dlsym_fn real = find_real_dlsym();
  return real == nullptr ? nullptr : real(handle, name);
}

}  // namespace gpuslice::shim::detail
