/// \file
/// Stream-ordered pools (charged at their reserve) and VMM handles (charged until released and
/// unmapped). See shim.hpp.

#include <algorithm>

#include "state_internal.hpp"

namespace gpuslice::shim::detail {

// ---- stream-ordered pools -------------------------------------------------------------------

// A pool holds device memory beyond its live allocations: what they freed, up to its release
// threshold, until a synchronisation or a trim (the CUDA headers: "When more than the release
// threshold bytes of memory are held by the memory pool, the allocator will try to release
// memory back to the OS on the next call to stream, event or context synchronize"). So a pool
// is charged at its reserve (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), read after each allocation
// from it and at each view, never at the sizes of its allocations; a free gives nothing back
// until the reserve shrinks. Pools located on the host take no device memory and are never
// charged. Precondition of settle_locked: pools_mu_ held.
void state::settle_locked(CUmemoryPool pool, pool_record& rec) noexcept {
  if (rec.host || rec.destroyed || rec.held.index < 0) return;
  auto get = helper_fn<decltype(&::cuMemPoolGetAttribute)>(helper::cuMemPoolGetAttribute);
  cuuint64_t reserved = 0;
  if (get == nullptr ||
      get(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS) {
    return;
  }
  if (reserved < rec.held.bytes) {
    const std::uint64_t less = rec.held.bytes - reserved;
    release(rec.held, less);
    rec.held.bytes -= less;
  }
}

void state::settle_pools(int ordinal) noexcept {
  if (pool_count_.load(std::memory_order_acquire) == 0) return;
  std::lock_guard<std::mutex> lock(pools_mu_);
  for (auto& [pool, rec] : pools_) {
    if (rec.held.ordinal == ordinal) settle_locked(pool, rec);
  }
}

void state::synchronised() noexcept {
  if (pool_count_.load(std::memory_order_acquire) == 0) return;
  std::lock_guard<std::mutex> lock(pools_mu_);
  for (auto& [pool, rec] : pools_) settle_locked(pool, rec);
}

void state::pool_created(CUmemoryPool pool, const CUmemPoolProps& props) noexcept {
  const CUmemLocationType where = props.location.type;
  try {
    std::lock_guard<std::mutex> lock(pools_mu_);
    auto it = pools_.find(pool);
    if (it != pools_.end()) {
      // The handle of a pool the driver has since freed: its charge is no longer held.
      release(it->second.held);
      pools_.erase(it);
      pool_count_.store(pools_.size(), std::memory_order_release);
    }
    pool_record rec;
    rec.host = where != CU_MEM_LOCATION_TYPE_DEVICE;
    rec.held.ordinal = rec.host ? -1 : props.location.id;
    pools_.emplace(pool, rec);
    pool_count_.store(pools_.size(), std::memory_order_release);
  } catch (...) {
    // Unrecorded: charged as a device pool of the allocating stream's device.
  }
}

void state::pool_destroyed(CUmemoryPool pool) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  if (it == pools_.end()) return;
  pool_record& rec = it->second;
  // The driver frees the idle reserve now and the rest as the allocations are freed.
  if (rec.held.bytes > rec.live) {
    release(rec.held, rec.held.bytes - rec.live);
    rec.held.bytes = rec.live;
  }
  rec.destroyed = true;
  if (rec.live == 0) pools_.erase(it);
  pool_count_.store(pools_.size(), std::memory_order_release);
}

bool state::pool_on_host(CUmemoryPool pool) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  return it != pools_.end() && it->second.host;
}

int state::pool_ordinal(CUmemoryPool pool) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  return it == pools_.end() || it->second.host ? -1 : it->second.held.ordinal;
}

int state::pool_device(CUmemoryPool pool) noexcept {
  if (const int known = pool_ordinal(pool); known >= 0) return known;
  auto default_pool =
      helper_fn<decltype(&::cuDeviceGetDefaultMemPool)>(helper::cuDeviceGetDefaultMemPool);
  auto current_pool = helper_fn<decltype(&::cuDeviceGetMemPool)>(helper::cuDeviceGetMemPool);
  const int n = device_count();
  for (int i = 0; i < n; ++i) {
    CUmemoryPool p = nullptr;
    if ((default_pool != nullptr && default_pool(&p, i) == CUDA_SUCCESS && p == pool) ||
        (current_pool != nullptr && current_pool(&p, i) == CUDA_SUCCESS && p == pool)) {
      return i;
    }
  }
  return -1;
}

bool state::settle_pool(CUmemoryPool pool, std::uint64_t bytes, charge& inflight,
                        bool& first_use) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  pool_record* rec = nullptr;
  try {
    rec = &pools_[pool];
    pool_count_.store(pools_.size(), std::memory_order_release);
  } catch (...) {
    return false;
  }
  first_use = !rec->used;
  rec->used = true;
  rec->held.ordinal = inflight.ordinal;
  rec->held.index = inflight.index;
  auto get = helper_fn<decltype(&::cuMemPoolGetAttribute)>(helper::cuMemPoolGetAttribute);
  cuuint64_t reserved = 0;
  if (get == nullptr ||
      get(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS) {
    reserved = rec->held.bytes + bytes;  // unknown: assume the pool grew by the allocation
  }
  rec->live += bytes;
  bool ok = true;
  if (reserved > rec->held.bytes) {
    const std::uint64_t growth = reserved - rec->held.bytes;
    const std::uint64_t from_inflight = std::min(growth, inflight.bytes);
    inflight.bytes -= from_inflight;
    rec->held.bytes += from_inflight;
    if (growth > from_inflight)
      ok = reserve_more(rec->held, growth - from_inflight, "pool reserve");
  } else if (reserved < rec->held.bytes) {
    const std::uint64_t less = rec->held.bytes - reserved;
    release(rec->held, less);
    rec->held.bytes -= less;
  }
  release(inflight);
  inflight.bytes = 0;
  return ok;
}

void state::pool_freed(const charge& c) noexcept {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(c.pool);
  if (it == pools_.end()) return;
  pool_record& rec = it->second;
  rec.live -= std::min(rec.live, c.bytes);
  if (rec.destroyed) {
    const std::uint64_t back = std::min(rec.held.bytes, c.bytes);
    release(rec.held, back);
    rec.held.bytes -= back;
    if (rec.live == 0) pools_.erase(it);
    pool_count_.store(pools_.size(), std::memory_order_release);
    return;
  }
  settle_locked(c.pool, rec);
}

void state::trim_pools(int ordinal) noexcept {
  auto trim = helper_fn<decltype(&::cuMemPoolTrimTo)>(helper::cuMemPoolTrimTo);
  if (trim == nullptr) return;
  std::lock_guard<std::mutex> lock(pools_mu_);
  for (auto& [pool, rec] : pools_) {
    if (rec.host || rec.destroyed || rec.held.ordinal != ordinal || rec.held.bytes == 0) continue;
    if (trim(pool, 0) == CUDA_SUCCESS) settle_locked(pool, rec);
  }
}

// ---- VMM ---------------------------------------------------------------------------------

// cuMemRelease documents that "the memory allocation will be freed when all outstanding mappings
// to the memory are unmapped and when all outstanding references to the handle ... are also
// released", so a charged handle keeps its charge until both hold (NVIDIA's vectorAddMMAP
// releases its handles right after mapping them).
void state::vmm_created(CUmemGenericAllocationHandle h) noexcept {
  try {
    std::lock_guard<std::mutex> lock(vmm_mu_);
    vmm_[h] = vmm_record{};
  } catch (...) {
    // Unfollowed: the charge is given back at cuMemRelease, as before mappings were followed.
  }
}

void state::vmm_retained(CUmemGenericAllocationHandle h) noexcept {
  std::lock_guard<std::mutex> lock(vmm_mu_);
  auto it = vmm_.find(h);
  if (it != vmm_.end()) ++it->second.refs;
}

bool state::vmm_released(CUmemGenericAllocationHandle h) noexcept {
  std::lock_guard<std::mutex> lock(vmm_mu_);
  auto it = vmm_.find(h);
  if (it == vmm_.end()) return true;
  if (--it->second.refs > 0 || it->second.maps > 0) return false;
  vmm_.erase(it);
  return true;
}

void state::vmm_mapped(CUdeviceptr at, std::size_t size, CUmemGenericAllocationHandle h) noexcept {
  try {
    std::lock_guard<std::mutex> lock(vmm_mu_);
    auto it = vmm_.find(h);
    if (it == vmm_.end()) return;
    vmm_maps_[at] = {size, h};
    ++it->second.maps;
  } catch (...) {
  }
}

std::vector<CUmemGenericAllocationHandle> state::vmm_unmapped(CUdeviceptr at,
                                                              std::size_t size) noexcept {
  std::vector<CUmemGenericAllocationHandle> freed;
  try {
    std::lock_guard<std::mutex> lock(vmm_mu_);
    for (auto m = vmm_maps_.lower_bound(at); m != vmm_maps_.end() && m->first < at + size;) {
      const CUmemGenericAllocationHandle h = m->second.second;
      m = vmm_maps_.erase(m);
      auto it = vmm_.find(h);
      if (it == vmm_.end()) continue;
      if (--it->second.maps == 0 && it->second.refs == 0) {
        vmm_.erase(it);
        freed.push_back(h);
      }
    }
  } catch (...) {
  }
  return freed;
}

}  // namespace gpuslice::shim::detail
