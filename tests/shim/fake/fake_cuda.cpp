/// \file
/// A test double of the CUDA driver, built as libcuda.so.1, so the shim runs end to end without
/// a GPU. Device memory is host memory (anonymous mappings) with a configurable total per
/// device; contexts, streams with worker threads that "run" kernels for configurable durations,
/// events, memory pools, VMM handles, arrays and a real cuGetProcAddress are modelled closely
/// enough that the shim cannot tell it from the driver for what it uses.
///
/// Environment of the fake (read once, at cuInit):
///   FAKE_CUDA_DEVICES          physical devices, 1..4 (default 1)
///   FAKE_CUDA_MEMORY[_<p>]     total bytes of every (or physical) device, quantity grammar
///                              (default 1Gi)
///   FAKE_CUDA_CONTEXT_BYTES    device memory a context takes when created (default 0)
///   FAKE_CUDA_MODULE_BYTES     device memory a module loaded in a context takes (default 0)
///   FAKE_CUDA_POOL_BYTES       device memory the driver takes for itself the first time a pool
///                              located on the device backs an allocation in a context (default
///                              0): outside every pool's reserve, so cuMemPoolGetAttribute never
///                              shows it, but in cuMemGetInfo's free and NVML's per-process
///                              figure like context memory; kept until the context is torn down.
///                              Measured on an H200 (driver 580, CUDA 13) with PyTorch's
///                              cudaMallocAsync backend: the default pool's first allocation made
///                              the process's NVML figure grow 70 MiB beyond the pool's reserve,
///                              for the life of the context. Only the default pool was measured;
///                              the fake takes it for each device pool (the default one and every
///                              created one) at its first use in each context, the assumption that
///                              hides the most memory from an interposer.
///   FAKE_CUDA_KERNEL_US        duration of a launched kernel in microseconds (default 100)
///                              (a kernel named fake_sleep_us runs for its first parameter's
///                              microseconds; one named fake_null queues nothing)
///   FAKE_CUDA_HOST_HEAP        1: device memory from the C heap instead of fresh mappings, so
///                              an allocation costs what malloc does (for benchmarks)
///   FAKE_CUDA_SLOW_ALLOC       "<bytes>:<us>": cuMemAlloc of at least <bytes> works <us>
///                              microseconds before the memory is taken, as a large allocation
///                              takes milliseconds on a real driver (default: none)
///   FAKE_CUDA_LAZY_LOAD_US     host time the first launch of a library kernel in a context
///                              spends loading it inside the launch call (default 0), as the
///                              driver loads a CUkernel into a context on its first use there
///   CUDA_VISIBLE_DEVICES       honoured like the driver: indices or UUID prefixes, any order
///
/// Each process has its own fake devices (nothing is shared between processes): the ledger, not
/// the fake, is what processes share. Internal calls never go through the exported names, so an
/// interposer sees each application call exactly once, as with the real driver.

#include <cuda.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "fake_driver.hpp"
#include "fake_launch.hpp"
#include "gpuslice/quantity.hpp"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

// cuda.h maps these names to their current variants; the fake defines the old ones too.
#undef cuGetProcAddress
#undef cuMemAlloc

// Opaque driver handles, defined here as the fake's own objects.
struct CUstream_st;
struct CUevent_st {
  std::mutex mu;
  std::condition_variable cv;
  bool recorded = false;
  bool done = true;
  std::chrono::steady_clock::time_point when{};
};
struct CUfunc_st {
  std::string name;
  /// True for a library's CUkernel (CUkern_st below): cuda.h lets a CUkernel be passed where a
  /// CUfunction is expected, and the launch resolves it in the current context.
  bool library_kernel = false;
};
/// A module owns its functions, as in the driver: they live until the module is unloaded.
struct CUmod_st {
  std::map<std::string, std::unique_ptr<CUfunc_st>> functions;
  CUctx_st* ctx = nullptr;  ///< the context it was loaded in
  int physical = 0;
  std::uint64_t bytes = 0;  ///< device memory its code and data take (FAKE_CUDA_MODULE_BYTES)
};
/// What the two kinds of array share: their memory lives in the context they were made in.
struct fake_array {
  int physical = 0;
  std::uint64_t bytes = 0;
  bool deferred = false;    ///< CUDA_ARRAY3D_DEFERRED_MAPPING: holds no memory of its own
  CUctx_st* ctx = nullptr;  ///< freed with it
  bool freed = false;       ///< its context was torn down: the handle is dead
};
struct CUarray_st : fake_array {};
struct CUmipmappedArray_st : fake_array {};
/// A stream-ordered pool, as the CUDA 13 headers describe it: it reserves device memory as its
/// allocations need it and keeps what they free, releasing the part above its release
/// threshold at the next stream, event or context synchronisation, and down to a floor on
/// cuMemPoolTrimTo. A pool located on the host takes no device memory. Guarded by st().mu.
struct CUmemPoolHandle_st {
  int physical = 0;
  bool is_default = false;
  bool host = false;             ///< located on the host: takes no device memory
  bool destroyed = false;        ///< destroyed with allocations outstanding
  std::uint64_t reserved = 0;    ///< device bytes the pool holds
  std::uint64_t used = 0;        ///< bytes of its live allocations
  std::uint64_t threshold = 0;   ///< CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
  std::uint64_t reserved_high = 0;
  std::uint64_t used_high = 0;
};
struct CUctx_st {
  int ordinal = 0;
  int physical = 0;
  bool primary = false;
  int refs = 0;
  CUstream_st* default_stream = nullptr;
  /// Device pools that backed an allocation in this context: each took FAKE_CUDA_POOL_BYTES on
  /// its device, given back at the context's teardown. Guarded by st().mu.
  std::vector<CUmemPoolHandle_st*> pools_used;
};

/// A stream: a FIFO of work run by one worker thread.
struct CUstream_st {
  struct work {
    std::uint64_t kernel_us = 0;  ///< 0 = an event marker
    CUevent_st* event = nullptr;
  };
  int physical = 0;
  CUctx_st* ctx = nullptr;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<work> queue;
  std::uint64_t pending = 0;
  bool stop = false;
  std::thread worker;
};

namespace {

constexpr int k_max_fake_devices = 4;
constexpr std::uint64_t k_default_total = std::uint64_t{1} << 30;
constexpr int k_driver_version = 13000;
/// VMM granularity of the fake, as a real GPU reports for pinned device memory (2 MiB).
constexpr std::size_t k_vmm_granularity = std::size_t{2} << 20;
/// Pitch alignment of cuMemAllocPitch and array size alignment (bytes).
constexpr std::size_t k_pitch_alignment = 512;
constexpr std::uint64_t k_default_kernel_us = 100;
/// A running kernel's busy time is credited at least this often.
constexpr std::chrono::microseconds k_busy_slice{1000};
/// cuMemAllocPitch accepts these element sizes, as the driver does.
constexpr unsigned k_pitch_elements[] = {4, 8, 16};

struct device {
  std::uint64_t total = k_default_total;
  std::atomic<std::uint64_t> used{0};
  std::atomic<int> contexts{0};  ///< live contexts (NVML lists a process only while it has one)
  std::atomic<std::uint64_t> busy_us{0};
  unsigned char uuid[16] = {};
};

struct allocation {
  int physical = 0;
  std::uint64_t bytes = 0;
  std::uint64_t mapped = 0;  ///< bytes mapped with mmap; 0 for heap memory
  CUmemPoolHandle_st* pool = nullptr;  ///< the pool it came from (its bytes are the pool's)
  int refs = 1;  ///< VMM handles: unreleased references (cuMemCreate, cuMemRetainAllocationHandle)
  int maps = 0;  ///< VMM handles: live mappings (cuMemMap)
  CUctx_st* ctx = nullptr;  ///< the context a device pointer belongs to (freed with it)
};

/// A VMM mapping (cuMemMap): the handle whose memory backs [address, address + size).
struct vmm_mapping {
  CUmemGenericAllocationHandle handle = 0;
  std::uint64_t size = 0;
};

struct driver_state {
  std::mutex mu;
  bool configured = false;   ///< the environment was read (the fake NVML may ask before cuInit)
  bool initialised = false;  ///< cuInit succeeded: what the driver API checks
  int physical_count = 1;
  device devs[k_max_fake_devices];
  int visible[k_max_fake_devices] = {};
  int visible_count = 0;
  std::uint64_t context_bytes = 0;
  std::uint64_t module_bytes = 0;
  std::uint64_t pool_bytes = 0;  ///< FAKE_CUDA_POOL_BYTES
  std::uint64_t kernel_us = k_default_kernel_us;
  bool host_heap = false;
  /// FAKE_CUDA_RESET_RETAINED=1: another thread retains the primary context right after each
  /// cuDevicePrimaryCtxReset, so cuDevicePrimaryCtxGetState reports it active again (a race the
  /// driver allows; the reset destroyed the allocations all the same).
  bool reset_retained = false;
  std::uint64_t slow_alloc_bytes = 0;  ///< FAKE_CUDA_SLOW_ALLOC
  std::uint64_t slow_alloc_us = 0;
  std::map<std::uintptr_t, allocation> allocs;
  std::map<CUmemGenericAllocationHandle, allocation> handles;
  CUmemGenericAllocationHandle next_handle = 1;
  std::map<std::uintptr_t, std::uint64_t> reservations;  ///< cuMemAddressReserve: start -> size
  std::map<std::uintptr_t, vmm_mapping> mappings;        ///< cuMemMap: start -> mapping
  std::set<fake_array*> arrays;                          ///< live arrays, for teardown
  CUctx_st* primary[k_max_fake_devices] = {};
  CUmemPoolHandle_st default_pool[k_max_fake_devices];
  /// Each device's current pool (cuDeviceSetMemPool), which cuMemAllocAsync draws from.
  CUmemPoolHandle_st* current_pool[k_max_fake_devices] = {};
  /// Every pool, created ones included (kept reachable: a destroyed pool with outstanding
  /// allocations lives until they are freed).
  std::vector<CUmemPoolHandle_st*> pools;
  /// Loaded modules: the driver frees what a program never unloads at exit, so the fake keeps
  /// them reachable rather than leaked.
  std::map<CUmod_st*, std::unique_ptr<CUmod_st>> modules;
};

/// The driver's state; never destroyed (worker threads may outlive exit).
driver_state*& state_ptr() {
  static driver_state* s = new driver_state;
  return s;
}
driver_state& st() { return *state_ptr(); }

// Initial-exec: in static TLS even when the fake is dlopen'd, where LeakSanitizer's scan of
// dynamic TLS at exit crashes on this object.
thread_local std::vector<CUctx_st*> t_ctx_stack __attribute__((tls_model("initial-exec")));

/// After fork the child starts with a fresh, uninitialised driver, as a CUDA child must call
/// cuInit again and cannot use the parent's contexts. The parent's state stays reachable.
driver_state* g_parent_state = nullptr;
void reset_in_child() {
  g_parent_state = state_ptr();
  state_ptr() = new driver_state;
  t_ctx_stack.clear();
}

CUctx_st* current() { return t_ctx_stack.empty() ? nullptr : t_ctx_stack.back(); }

std::uint64_t env_bytes(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr) return fallback;
  auto b = gpuslice::parse_bytes(v);
  if (!b) {
    std::fprintf(stderr, "fake libcuda: %s: %s\n", name, b.message().c_str());
    std::abort();
  }
  return *b;
}

void make_uuid(int p, unsigned char out[16]) {
  // Fixed, distinct and recognisable: 5a1ce000-0000-4000-8000-0000000000<p>.
  static constexpr unsigned char k_base[16] = {0x5a, 0x1c, 0xe0, 0x00, 0x00, 0x00, 0x40, 0x00,
                                               0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  std::memcpy(out, k_base, 16);
  out[15] = static_cast<unsigned char>(0xa0 + p);
}

std::string uuid_string(const unsigned char u[16]) {
  char buf[64];
  std::snprintf(buf, sizeof buf,
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                u[14], u[15]);
  return buf;
}

/// Applies CUDA_VISIBLE_DEVICES the way the driver does: a comma list of indices or UUID
/// prefixes; the list stops at the first invalid or repeated entry.
void parse_visible(driver_state& s) {
  s.visible_count = 0;
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  if (v == nullptr) {
    for (int p = 0; p < s.physical_count; ++p) s.visible[s.visible_count++] = p;
    return;
  }
  std::string_view rest(v);
  while (!rest.empty() && s.visible_count < k_max_fake_devices) {
    const auto comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    int found = -1;
    if (!item.empty() &&
        std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      const int idx = std::atoi(std::string(item).c_str());
      if (idx < s.physical_count) found = idx;
    } else if (item.rfind("GPU-", 0) == 0) {
      for (int p = 0; p < s.physical_count; ++p) {
        if (uuid_string(s.devs[p].uuid).rfind(item, 0) == 0) found = p;
      }
    }
    if (found < 0) break;
    if (std::find(s.visible, s.visible + s.visible_count, found) != s.visible + s.visible_count) {
      break;
    }
    s.visible[s.visible_count++] = found;
  }
}

bool take(int p, std::uint64_t bytes) {
  device& d = st().devs[p];
  std::uint64_t used = d.used.load();
  do {
    if (bytes > d.total - used) return false;
  } while (!d.used.compare_exchange_weak(used, used + bytes));
  return true;
}

void give(int p, std::uint64_t bytes) { st().devs[p].used.fetch_sub(bytes); }

void* map_bytes(std::uint64_t bytes) {
  void* m = mmap(nullptr, std::max<std::uint64_t>(bytes, 1), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return m == MAP_FAILED ? nullptr : m;
}

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

CUresult check_init() { return st().initialised ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED; }

CUresult check_ordinal(CUdevice dev) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  return dev >= 0 && dev < st().visible_count ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

// ---- streams -------------------------------------------------------------------------------

void stream_loop(CUstream_st* s) {
  std::unique_lock<std::mutex> lock(s->mu);
  for (;;) {
    s->cv.wait(lock, [&] { return s->stop || !s->queue.empty(); });
    if (s->queue.empty()) return;
    CUstream_st::work w = s->queue.front();
    s->queue.pop_front();
    lock.unlock();
    if (w.kernel_us != 0) {
      // Busy time is the time the kernel held the device, as a GPU counts it: the sleep's
      // real length (the scheduler may stretch it), not the nominal duration. It is credited
      // as the kernel runs, a slice at a time, as a GPU's utilization counters advance: a
      // long kernel's time is not all counted in the sample period where it ends.
      const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(w.kernel_us);
      auto from = std::chrono::steady_clock::now();
      for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::microseconds>(end - from);
        if (left.count() <= 0) break;
        std::this_thread::sleep_for(std::min(left, k_busy_slice));
        const auto now = std::chrono::steady_clock::now();
        const auto held = std::chrono::duration_cast<std::chrono::microseconds>(now - from);
        st().devs[s->physical].busy_us.fetch_add(static_cast<std::uint64_t>(held.count()));
        from = now;
      }
    }
    if (w.event != nullptr) {
      std::lock_guard<std::mutex> el(w.event->mu);
      w.event->when = std::chrono::steady_clock::now();
      w.event->done = true;
      w.event->cv.notify_all();
    }
    lock.lock();
    --s->pending;
    s->cv.notify_all();
  }
}

CUstream_st* new_stream(CUctx_st* ctx) {
  auto* s = new CUstream_st;
  s->ctx = ctx;
  s->physical = ctx->physical;
  s->worker = std::thread(stream_loop, s);
  return s;
}

void delete_stream(CUstream_st* s) {
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->stop = true;
    s->cv.notify_all();
  }
  s->worker.join();
  delete s;
}

/// The stream a handle names: the context's default stream for 0, CU_STREAM_LEGACY and
/// CU_STREAM_PER_THREAD (the fake does not distinguish the two default streams).
CUstream_st* resolve(CUstream h) {
  if (h != nullptr && h != CU_STREAM_LEGACY && h != CU_STREAM_PER_THREAD) return h;
  CUctx_st* c = current();
  if (c == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(st().mu);
  if (c->default_stream == nullptr) c->default_stream = new_stream(c);
  return c->default_stream;
}

void enqueue(CUstream_st* s, CUstream_st::work w) {
  std::lock_guard<std::mutex> lock(s->mu);
  s->queue.push_back(w);
  ++s->pending;
  s->cv.notify_all();
}

void drain(CUstream_st* s) {
  std::unique_lock<std::mutex> lock(s->mu);
  s->cv.wait(lock, [&] { return s->pending == 0; });
}

// ---- allocations ---------------------------------------------------------------------------

CUresult alloc_on(int physical, std::uint64_t bytes, CUdeviceptr* out) {
  if (out == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (!take(physical, bytes)) return CUDA_ERROR_OUT_OF_MEMORY;
  const bool heap = st().host_heap;
  void* m = heap ? std::malloc(bytes) : map_bytes(bytes);
  if (m == nullptr) {
    give(physical, bytes);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::lock_guard<std::mutex> lock(st().mu);
  allocation a{physical, bytes, heap ? 0 : bytes};
  a.ctx = current();
  st().allocs[reinterpret_cast<std::uintptr_t>(m)] = a;
  *out = reinterpret_cast<CUdeviceptr>(m);
  return CUDA_SUCCESS;
}

/// Stream-ordered calls on a capturing stream become graph nodes: an allocation gets an address
/// that stays fixed for the graph (address space only) and becomes an allocation node, and a
/// free of a graph address is a free node. The graph allocator backs them (see
/// fake_cuda_graph_mem below).
struct graph_address {
  int physical = 0;
  std::uint64_t bytes = 0;
  bool live = false;  ///< allocated by a graph launch and not freed yet
};
std::map<std::uintptr_t, graph_address>& graph_addresses() {
  static auto* m = new std::map<std::uintptr_t, graph_address>;  // guarded by st().mu
  return *m;
}
/// The graph allocator of each physical device, as cuda.h documents it: memory for a graph's
/// allocation nodes is reserved when the graph is launched or uploaded, kept after the graph's
/// frees for later launches, and given back only by cuDeviceGraphMemTrim. Guarded by st().mu.
struct graph_allocator {
  std::uint64_t reserved = 0;  ///< device bytes it holds (counted in the device's used)
  std::uint64_t used = 0;      ///< bytes of live graph allocations
  std::uint64_t reserved_high = 0;
  std::uint64_t used_high = 0;
};
graph_allocator g_graph_mem[k_max_fake_devices];
/// The free (cuMemFree, or cuMemFreeAsync outside a capture) of graph allocation \p p after its
/// graph ran: the memory goes back to the graph allocator, whose reserve stays until
/// cuDeviceGraphMemTrim. Caller holds st().mu.
CUresult free_graph_allocation(CUdeviceptr p) {
  auto g = graph_addresses().find(static_cast<std::uintptr_t>(p));
  if (g == graph_addresses().end() || !g->second.live) return CUDA_ERROR_INVALID_VALUE;
  g->second.live = false;
  g_graph_mem[g->second.physical].used -= g->second.bytes;
  return CUDA_SUCCESS;
}

CUresult free_ptr(CUdeviceptr p) {
  allocation a;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    auto it = st().allocs.find(static_cast<std::uintptr_t>(p));
    if (it == st().allocs.end()) return free_graph_allocation(p);
    a = it->second;
    st().allocs.erase(it);
    if (a.pool != nullptr) {
      // The pool keeps the memory for reuse; a destroyed pool gives it back as it comes.
      a.pool->used -= a.bytes;
      if (a.pool->destroyed && !a.pool->host) {
        a.pool->reserved -= a.bytes;
        give(a.physical, a.bytes);
      }
      a.bytes = 0;
    }
  }
  if (a.mapped == 0) {
    std::free(reinterpret_cast<void*>(p));
  } else {
    munmap(reinterpret_cast<void*>(p), a.mapped);
  }
  give(a.physical, a.bytes);
  return CUDA_SUCCESS;
}

/// Allocates \p bytes from \p pool for a stream of \p ctx: from its idle reserve when that
/// suffices, else the pool grows by the shortfall, rounded up to the VMM granularity, as far as
/// the device has room. A device pool's first allocation in \p ctx also takes
/// FAKE_CUDA_POOL_BYTES for the driver itself, outside the pool's reserve.
CUresult pool_alloc(CUmemPoolHandle_st* pool, CUctx_st* ctx, std::uint64_t bytes,
                    CUdeviceptr* out) {
  if (out == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  void* m = map_bytes(bytes);
  if (m == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lock(st().mu);
  if (pool->destroyed) {
    munmap(m, bytes);
    return CUDA_ERROR_INVALID_VALUE;
  }
  const bool first_use =
      !pool->host && ctx != nullptr && st().pool_bytes != 0 &&
      std::find(ctx->pools_used.begin(), ctx->pools_used.end(), pool) == ctx->pools_used.end();
  const std::uint64_t own = first_use ? st().pool_bytes : 0;
  const std::uint64_t idle = pool->reserved - pool->used;
  const std::uint64_t grow =
      !pool->host && bytes > idle ? round_up(bytes - idle, k_vmm_granularity) : 0;
  if (grow + own != 0 && !take(pool->physical, grow + own)) {
    munmap(m, bytes);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  pool->reserved += grow;
  if (first_use) ctx->pools_used.push_back(pool);
  pool->used += bytes;
  pool->reserved_high = std::max(pool->reserved_high, pool->reserved);
  pool->used_high = std::max(pool->used_high, pool->used);
  st().allocs[reinterpret_cast<std::uintptr_t>(m)] = allocation{pool->physical, bytes, bytes, pool};
  *out = reinterpret_cast<CUdeviceptr>(m);
  return CUDA_SUCCESS;
}

/// Gives back what \p pool holds above max(\p keep, its live bytes), in whole granules.
/// Precondition: st().mu held.
void pool_trim(CUmemPoolHandle_st* pool, std::uint64_t keep) {
  if (pool->host) return;
  const std::uint64_t floor = round_up(std::max(keep, pool->used), k_vmm_granularity);
  if (pool->reserved <= floor) return;
  give(pool->physical, pool->reserved - floor);
  pool->reserved = floor;
}

/// A stream, event or context synchronisation: every pool holding more than its release
/// threshold gives back what it can above it.
void release_pools_at_sync() {
  std::lock_guard<std::mutex> lock(st().mu);
  for (CUmemPoolHandle_st* pool : st().pools) {
    if (pool->reserved > pool->threshold) pool_trim(pool, pool->threshold);
  }
}

CUresult ctx_physical(int* physical) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  CUctx_st* c = current();
  if (c == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  *physical = c->physical;
  return CUDA_SUCCESS;
}

/// An array format's texels: bytes per block of bw x bh texels, and the further planes of video
/// formats as num/den times the first plane's rows. {0} for a format the fake refuses.
struct texels {
  std::uint64_t bytes = 0;
  std::uint64_t bw = 1, bh = 1, num = 1, den = 1;
};
texels format_texels(CUarray_format f, unsigned channels) {
  switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
      return {1ull * channels};
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
      return {2ull * channels};
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT:
      return {4ull * channels};
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
      return {4};
    case CU_AD_FORMAT_UNORM_INT16X4:
    case CU_AD_FORMAT_SNORM_INT16X4:
      return {8};
    case CU_AD_FORMAT_BC1_UNORM:
    case CU_AD_FORMAT_BC4_UNORM:
      return {8, 4, 4};
    case CU_AD_FORMAT_BC2_UNORM:
    case CU_AD_FORMAT_BC3_UNORM:
    case CU_AD_FORMAT_BC7_UNORM:
      return {16, 4, 4};
    case CU_AD_FORMAT_NV12:
      return {1, 1, 1, 3, 2};
    default:
      return {0};
  }
}

/// Bytes one level takes: rows of blocks padded to the pitch alignment.
std::uint64_t level_bytes(const texels& t, std::uint64_t w, std::uint64_t h, std::uint64_t d) {
  const std::uint64_t row = round_up((std::max<std::uint64_t>(w, 1) + t.bw - 1) / t.bw * t.bytes,
                                     k_pitch_alignment);
  const std::uint64_t rows = ((std::max<std::uint64_t>(h, 1) + t.bh - 1) / t.bh * t.num + t.den - 1) / t.den;
  return row * rows * std::max<std::uint64_t>(d, 1);
}

/// Bytes an array takes over its mip chain: each level halves the dimensions, except a layered
/// array's (or cubemap's) depth, its layer count.
std::uint64_t array_bytes(const texels& t, std::uint64_t w, std::uint64_t h, std::uint64_t d,
                          unsigned levels, bool layered) {
  std::uint64_t bytes = 0;
  for (unsigned l = 0; l < levels; ++l) {
    bytes += level_bytes(t, w, h, d);
    w = std::max<std::uint64_t>(w / 2, 1);
    h = h == 0 ? 0 : std::max<std::uint64_t>(h / 2, 1);
    if (!layered) d = d == 0 ? 0 : std::max<std::uint64_t>(d / 2, 1);
  }
  return bytes;
}

CUresult ctx_create(int ordinal, bool primary, CUctx_st** out) {
  const int p = st().visible[ordinal];
  if (!take(p, st().context_bytes)) return CUDA_ERROR_OUT_OF_MEMORY;
  auto* c = new CUctx_st;
  c->ordinal = ordinal;
  c->physical = p;
  c->primary = primary;
  c->refs = 1;
  st().devs[p].contexts.fetch_add(1);
  *out = c;
  return CUDA_SUCCESS;
}

/// Tearing a context down frees the device memory allocated in it, as the driver does.
void ctx_destroy(CUctx_st* c) {
  if (c->default_stream != nullptr) delete_stream(c->default_stream);
  std::vector<std::pair<std::uintptr_t, allocation>> dead;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    for (auto it = st().allocs.begin(); it != st().allocs.end();) {
      if (it->second.ctx == c && it->second.pool == nullptr) {
        dead.emplace_back(*it);
        it = st().allocs.erase(it);
      } else {
        ++it;
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(st().mu);
    for (auto& [mod, owned] : st().modules) {
      if (owned->ctx != c) continue;
      give(owned->physical, owned->bytes);
      owned->bytes = 0;
      owned->ctx = nullptr;
    }
    for (fake_array* a : st().arrays) {
      if (a->ctx != c || a->freed) continue;
      if (!a->deferred) give(a->physical, a->bytes);
      a->freed = true;
    }
    for (CUmemPoolHandle_st* pool : c->pools_used) give(pool->physical, st().pool_bytes);
    c->pools_used.clear();
  }
  for (const auto& [at, a] : dead) {
    if (a.mapped == 0) {
      std::free(reinterpret_cast<void*>(at));
    } else {
      munmap(reinterpret_cast<void*>(at), a.mapped);
    }
    give(a.physical, a.bytes);
  }
  t_ctx_stack.erase(std::remove(t_ctx_stack.begin(), t_ctx_stack.end(), c), t_ctx_stack.end());
  st().devs[c->physical].contexts.fetch_sub(1);
  give(c->physical, st().context_bytes);
  delete c;
}

}  // namespace

// ---- initialisation, devices -------------------------------------------------------------------

namespace {
/// Reads the fake's environment once. Precondition: st().mu held.
void configure(driver_state& s) {
  if (s.configured) return;
  static std::once_flag at_fork;
  std::call_once(at_fork, [] { pthread_atfork(nullptr, nullptr, reset_in_child); });
  if (const char* n = std::getenv("FAKE_CUDA_DEVICES")) {
    s.physical_count = std::atoi(n);
    if (s.physical_count < 1 || s.physical_count > k_max_fake_devices) {
      std::fprintf(stderr, "fake libcuda: FAKE_CUDA_DEVICES=%s: expected 1..4\n", n);
      std::abort();
    }
  }
  const std::uint64_t total = env_bytes("FAKE_CUDA_MEMORY", k_default_total);
  for (int p = 0; p < s.physical_count; ++p) {
    const std::string name = "FAKE_CUDA_MEMORY_" + std::to_string(p);
    s.devs[p].total = env_bytes(name.c_str(), total);
    make_uuid(p, s.devs[p].uuid);
    s.default_pool[p].physical = p;
    s.default_pool[p].is_default = true;
    s.current_pool[p] = &s.default_pool[p];
    s.pools.push_back(&s.default_pool[p]);
  }
  s.context_bytes = env_bytes("FAKE_CUDA_CONTEXT_BYTES", 0);
  s.module_bytes = env_bytes("FAKE_CUDA_MODULE_BYTES", 0);
  s.pool_bytes = env_bytes("FAKE_CUDA_POOL_BYTES", 0);
  if (const char* h = std::getenv("FAKE_CUDA_HOST_HEAP")) s.host_heap = std::strcmp(h, "1") == 0;
  if (const char* r = std::getenv("FAKE_CUDA_RESET_RETAINED"))
    s.reset_retained = std::strcmp(r, "1") == 0;
  if (const char* slow = std::getenv("FAKE_CUDA_SLOW_ALLOC")) {
    char* end = nullptr;
    s.slow_alloc_bytes = std::strtoull(slow, &end, 10);
    if (end != nullptr && *end == ':') s.slow_alloc_us = std::strtoull(end + 1, nullptr, 10);
  }
  if (const char* k = std::getenv("FAKE_CUDA_KERNEL_US"))
    s.kernel_us = std::strtoull(k, nullptr, 10);
  parse_visible(s);
  s.configured = true;
}
/// The configured state, without initialising the driver API (what NVML reads).
driver_state& configured() {
  driver_state& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  configure(s);
  return s;
}
}  // namespace

FAKE_EXPORT CUresult cuInit(unsigned int flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  driver_state& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  configure(s);
  s.initialised = true;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDriverGetVersion(int* v) {
  if (v == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *v = k_driver_version;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int* count) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *count = st().visible_count;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
  if (CUresult r = check_ordinal(ordinal); r != CUDA_SUCCESS) return r;
  if (dev == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *dev = ordinal;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (name == nullptr || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  std::snprintf(name, static_cast<std::size_t>(len), "Fake GPU %d", st().visible[dev]);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (uuid == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::memcpy(uuid->bytes, st().devs[st().visible[dev]].uuid, sizeof uuid->bytes);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *bytes = st().devs[st().visible[dev]].total;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attr, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  constexpr int k_fake_sm_count = 8;
  switch (attr) {
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
      *value = k_fake_sm_count;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY:
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
      *value = 1;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT:
      *value = static_cast<int>(k_pitch_alignment);
      return CUDA_SUCCESS;
    default:
      *value = 0;
      return CUDA_SUCCESS;
  }
}

// ---- contexts --------------------------------------------------------------------------------

FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  CUctx_st*& prim = st().primary[dev];
  if (prim != nullptr) {
    ++prim->refs;
  } else if (CUresult r = ctx_create(dev, true, &prim); r != CUDA_SUCCESS) {
    return r;
  }
  *pctx = prim;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  CUctx_st* dead = nullptr;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    CUctx_st*& prim = st().primary[dev];
    if (prim == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    if (--prim->refs == 0) std::swap(dead, prim);
  }
  if (dead != nullptr) ctx_destroy(dead);
  return CUDA_SUCCESS;
}

/// Destroys the primary context whatever its reference count; a later retain makes a new one.
FAKE_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  CUctx_st* dead = nullptr;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    std::swap(dead, st().primary[dev]);
  }
  if (dead != nullptr) ctx_destroy(dead);
  if (st().reset_retained) {
    std::lock_guard<std::mutex> lock(st().mu);
    CUctx_st*& prim = st().primary[dev];
    if (prim == nullptr) (void)ctx_create(dev, true, &prim);
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (flags == nullptr || active == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  *flags = 0;
  *active = st().primary[dev] != nullptr ? 1 : 0;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* params, unsigned int flags,
                                    CUdevice dev) {
  (void)params;
  (void)flags;
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  CUctx_st* c = nullptr;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    if (CUresult r = ctx_create(dev, false, &c); r != CUDA_SUCCESS) return r;
  }
  t_ctx_stack.push_back(c);
  *pctx = c;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (ctx == nullptr || ctx->primary) return CUDA_ERROR_INVALID_CONTEXT;
  t_ctx_stack.erase(std::remove(t_ctx_stack.begin(), t_ctx_stack.end(), ctx), t_ctx_stack.end());
  ctx_destroy(ctx);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (!t_ctx_stack.empty()) t_ctx_stack.pop_back();
  if (ctx != nullptr) t_ctx_stack.push_back(ctx);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetCurrent(CUcontext* pctx) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pctx = current();
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (ctx == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  t_ctx_stack.push_back(ctx);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* pctx) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (t_ctx_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
  if (pctx != nullptr) *pctx = t_ctx_stack.back();
  t_ctx_stack.pop_back();
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetDevice(CUdevice* dev) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (dev == nullptr) return CUDA_ERROR_INVALID_VALUE;
  CUctx_st* c = current();
  if (c == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  *dev = c->ordinal;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSynchronize() {
  CUctx_st* c = current();
  if (c == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (c->default_stream != nullptr) drain(c->default_stream);
  release_pools_at_sync();
  return CUDA_SUCCESS;
}

// ---- memory ----------------------------------------------------------------------------------

FAKE_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  int p = 0;
  if (CUresult r = ctx_physical(&p); r != CUDA_SUCCESS) return r;
  if (free_bytes == nullptr || total_bytes == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const device& d = st().devs[p];
  *total_bytes = d.total;
  *free_bytes = d.total - d.used.load();
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
  int p = 0;
  if (CUresult r = ctx_physical(&p); r != CUDA_SUCCESS) return r;
  if (st().slow_alloc_us != 0 && bytes >= st().slow_alloc_bytes) {
    std::this_thread::sleep_for(std::chrono::microseconds(st().slow_alloc_us));
  }
  return alloc_on(p, bytes, dptr);
}

/// The pre-3.2 cuMemAlloc with 32-bit device pointers, which real drivers still export.
FAKE_EXPORT CUresult cuMemAlloc(unsigned int* dptr, unsigned int bytes) {
  int p = 0;
  if (CUresult r = ctx_physical(&p); r != CUDA_SUCCESS) return r;
  if (dptr == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (!take(p, bytes)) return CUDA_ERROR_OUT_OF_MEMORY;
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_32BIT, -1, 0);
  if (m == MAP_FAILED) {
    give(p, bytes);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::lock_guard<std::mutex> lock(st().mu);
  st().allocs[reinterpret_cast<std::uintptr_t>(m)] = allocation{p, bytes, bytes};
  *dptr = static_cast<unsigned int>(reinterpret_cast<std::uintptr_t>(m));
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width,
                                        size_t height, unsigned int element_bytes) {
  int p = 0;
  if (CUresult r = ctx_physical(&p); r != CUDA_SUCCESS) return r;
  if (pitch == nullptr || width == 0 || height == 0 ||
      std::find(std::begin(k_pitch_elements), std::end(k_pitch_elements), element_bytes) ==
          std::end(k_pitch_elements)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  const std::size_t row = round_up(width, k_pitch_alignment);
  CUresult r = alloc_on(p, row * height, dptr);
  if (r == CUDA_SUCCESS) *pitch = row;
  return r;
}

FAKE_EXPORT CUresult cuMemAllocManaged(CUdeviceptr* dptr, size_t bytes, unsigned int flags) {
  int p = 0;
  if (CUresult r = ctx_physical(&p); r != CUDA_SUCCESS) return r;
  if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST) return CUDA_ERROR_INVALID_VALUE;
  const CUresult r = alloc_on(p, bytes, dptr);
  if (r != CUDA_ERROR_OUT_OF_MEMORY) return r;
  // Managed memory may exceed the device, as on a real GPU: what does not fit stays
  // host-resident and takes no device memory (recorded with 0 device bytes).
  void* m = map_bytes(bytes);
  if (m == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lock(st().mu);
  allocation a{p, 0, bytes};
  a.ctx = current();
  st().allocs[reinterpret_cast<std::uintptr_t>(m)] = a;
  *dptr = reinterpret_cast<CUdeviceptr>(m);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (dptr == 0) return CUDA_SUCCESS;
  return free_ptr(dptr);
}

FAKE_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr dptr) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  std::lock_guard<std::mutex> lock(st().mu);
  auto it = st().allocs.upper_bound(static_cast<std::uintptr_t>(dptr));
  if (it == st().allocs.begin()) return CUDA_ERROR_NOT_FOUND;
  --it;
  if (dptr >= it->first + it->second.bytes) return CUDA_ERROR_NOT_FOUND;
  if (base != nullptr) *base = it->first;
  if (size != nullptr) *size = it->second.bytes;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return CUDA_SUCCESS;
}

namespace {
CUresult stream_physical(CUstream h, int* p, CUctx_st** ctx = nullptr) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  CUstream_st* s = resolve(h);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  *p = s->physical;
  if (ctx != nullptr) *ctx = s->ctx;
  return CUDA_SUCCESS;
}
bool capturing(CUstream h) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  return cuStreamIsCapturing(h, &status) == CUDA_SUCCESS && status != CU_STREAM_CAPTURE_STATUS_NONE;
}
CUresult capture_alloc(CUdeviceptr* dptr, size_t bytes, CUstream h, int p) {
  if (dptr == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  void* m = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  *dptr = reinterpret_cast<CUdeviceptr>(m);
  {
    std::lock_guard<std::mutex> lock(st().mu);
    graph_addresses()[reinterpret_cast<std::uintptr_t>(m)] = graph_address{p, bytes, false};
  }
  fake_capture_mem_node(h, *dptr, true);
  return CUDA_SUCCESS;
}
CUresult alloc_async(CUdeviceptr* dptr, size_t bytes, CUstream h) {
  int p = 0;
  CUctx_st* ctx = nullptr;
  if (CUresult r = stream_physical(h, &p, &ctx); r != CUDA_SUCCESS) return r;
  if (capturing(h)) return capture_alloc(dptr, bytes, h, p);
  CUmemPoolHandle_st* pool = nullptr;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    pool = st().current_pool[p];
  }
  return pool_alloc(pool, ctx, bytes, dptr);
}
CUresult alloc_pool_async(CUdeviceptr* dptr, size_t bytes, CUmemoryPool pool, CUstream h) {
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  int p = 0;
  CUctx_st* ctx = nullptr;
  if (CUresult r = stream_physical(h, &p, &ctx); r != CUDA_SUCCESS) return r;
  if (capturing(h)) return capture_alloc(dptr, bytes, h, p);
  return pool_alloc(pool, ctx, bytes, dptr);
}
CUresult free_async(CUdeviceptr dptr, CUstream h) {
  int p = 0;
  if (CUresult r = stream_physical(h, &p); r != CUDA_SUCCESS) return r;
  if (capturing(h)) {  // a free node: the memory goes back when the graph runs
    bool graph = false;
    {
      std::lock_guard<std::mutex> lock(st().mu);
      graph = graph_addresses().count(static_cast<std::uintptr_t>(dptr)) != 0;
    }
    if (graph) fake_capture_mem_node(h, dptr, false);
    return CUDA_SUCCESS;
  }
  return free_ptr(dptr);
}
}  // namespace

FAKE_EXPORT CUresult cuMemAllocAsync(CUdeviceptr* d, size_t n, CUstream s) {
  return alloc_async(d, n, s);
}
FAKE_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr* d, size_t n, CUstream s) {
  return alloc_async(d, n, s);
}
FAKE_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr* d, size_t n, CUmemoryPool pool,
                                             CUstream s) {
  return alloc_pool_async(d, n, pool, s);
}
FAKE_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* d, size_t n, CUmemoryPool pool,
                                                  CUstream s) {
  return alloc_pool_async(d, n, pool, s);
}
FAKE_EXPORT CUresult cuMemFreeAsync(CUdeviceptr d, CUstream s) { return free_async(d, s); }
FAKE_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr d, CUstream s) { return free_async(d, s); }

FAKE_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pool = &st().default_pool[st().visible[dev]];
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemPoolCreate(CUmemoryPool* pool, const CUmemPoolProps* props) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (pool == nullptr || props == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const CUmemLocationType where = props->location.type;
  const bool host = where == CU_MEM_LOCATION_TYPE_HOST || where == CU_MEM_LOCATION_TYPE_HOST_NUMA;
  if (!host && (where != CU_MEM_LOCATION_TYPE_DEVICE || props->location.id < 0 ||
                props->location.id >= st().visible_count)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  auto* p = new CUmemPoolHandle_st;
  p->host = host;
  p->physical = host ? 0 : st().visible[props->location.id];
  std::lock_guard<std::mutex> lock(st().mu);
  st().pools.push_back(p);
  *pool = p;
  return CUDA_SUCCESS;
}

/// As documented: with allocations outstanding the call returns at once and the pool's
/// resources are released as they are freed.
FAKE_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  if (pool == nullptr || pool->is_default) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  if (pool->destroyed) return CUDA_ERROR_INVALID_VALUE;
  pool_trim(pool, 0);
  pool->destroyed = true;
  for (CUmemPoolHandle_st*& cur : st().current_pool) {
    if (cur == pool) cur = &st().default_pool[pool->physical];
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetGraphMemAttribute(CUdevice dev, CUgraphMem_attribute attr,
                                                  void* value) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  const graph_allocator& g = g_graph_mem[st().visible[dev]];
  cuuint64_t v = 0;
  switch (attr) {
    case CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT: v = g.used; break;
    case CU_GRAPH_MEM_ATTR_USED_MEM_HIGH: v = g.used_high; break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: v = g.reserved; break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH: v = g.reserved_high; break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  std::memcpy(value, &v, sizeof v);
  return CUDA_SUCCESS;
}

/// Gives back what the graph allocator holds beyond its live allocations.
FAKE_EXPORT CUresult cuDeviceGraphMemTrim(CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  std::lock_guard<std::mutex> lock(st().mu);
  const int p = st().visible[dev];
  graph_allocator& g = g_graph_mem[p];
  give(p, g.reserved - g.used);
  g.reserved = g.used;
  return CUDA_SUCCESS;
}

/// A launch (\p run) or upload of a graph whose allocation nodes are \p allocs and free nodes
/// \p frees: the graph allocator of each device grows to hold its live allocations plus the
/// graph's, or the call fails with CUDA_ERROR_OUT_OF_MEMORY and nothing changes. A launch then
/// makes the graph's allocations live and frees what its free nodes free. Relaunching a graph
/// whose allocations are still live fails with CUDA_ERROR_INVALID_VALUE, as the driver refuses.
CUresult fake_cuda_graph_mem(const CUdeviceptr* allocs, std::size_t n_allocs,
                             const CUdeviceptr* frees, std::size_t n_frees, bool run) {
  if (n_allocs == 0 && n_frees == 0) return CUDA_SUCCESS;
  std::lock_guard<std::mutex> lock(st().mu);
  std::uint64_t want[k_max_fake_devices] = {};
  for (std::size_t i = 0; i < n_allocs; ++i) {
    auto it = graph_addresses().find(static_cast<std::uintptr_t>(allocs[i]));
    if (it == graph_addresses().end()) return CUDA_ERROR_INVALID_VALUE;
    if (it->second.live && run) return CUDA_ERROR_INVALID_VALUE;
    want[it->second.physical] += it->second.bytes;
  }
  std::uint64_t grown[k_max_fake_devices] = {};
  for (int p = 0; p < k_max_fake_devices; ++p) {
    graph_allocator& g = g_graph_mem[p];
    const std::uint64_t need = g.used + want[p];
    if (need <= g.reserved) continue;
    if (!take(p, need - g.reserved)) {
      for (int q = 0; q < p; ++q) {
        give(q, grown[q]);
        g_graph_mem[q].reserved -= grown[q];
      }
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
    grown[p] = need - g.reserved;
    g.reserved = need;
    g.reserved_high = std::max(g.reserved_high, g.reserved);
  }
  if (!run) return CUDA_SUCCESS;
  for (std::size_t i = 0; i < n_allocs; ++i) {
    graph_address& a = graph_addresses()[static_cast<std::uintptr_t>(allocs[i])];
    a.live = true;
    graph_allocator& g = g_graph_mem[a.physical];
    g.used += a.bytes;
    g.used_high = std::max(g.used_high, g.used);
  }
  for (std::size_t i = 0; i < n_frees; ++i) {
    auto it = graph_addresses().find(static_cast<std::uintptr_t>(frees[i]));
    if (it == graph_addresses().end() || !it->second.live) continue;
    it->second.live = false;
    g_graph_mem[it->second.physical].used -= it->second.bytes;
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  pool_trim(pool, keep);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr,
                                           void* value) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (pool == nullptr || value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
      std::memcpy(&pool->threshold, value, sizeof pool->threshold);
      return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
      return CUDA_SUCCESS;  // reuse policies: the fake reuses freely
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: {
      cuuint64_t v = 0;
      std::memcpy(&v, value, sizeof v);
      if (v != 0) return CUDA_ERROR_INVALID_VALUE;  // high watermarks reset only to zero
      (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH ? pool->reserved_high : pool->used_high) = 0;
      return CUDA_SUCCESS;
    }
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
}

FAKE_EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr,
                                           void* value) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (pool == nullptr || value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  cuuint64_t v = 0;
  switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
      v = pool->threshold;
      break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT:
      v = pool->reserved;
      break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
      v = pool->reserved_high;
      break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT:
      v = pool->used;
      break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
      v = pool->used_high;
      break;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
  std::memcpy(value, &v, sizeof v);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (pool == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  *pool = st().current_pool[st().visible[dev]];
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (pool == nullptr || pool->host || pool->physical != st().visible[dev]) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::lock_guard<std::mutex> lock(st().mu);
  st().current_pool[st().visible[dev]] = pool;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemGetAllocationGranularity(size_t* g, const CUmemAllocationProp* prop,
                                                   CUmemAllocationGranularity_flags) {
  if (g == nullptr || prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *g = k_vmm_granularity;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                                 const CUmemAllocationProp* prop, unsigned long long flags) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (handle == nullptr || prop == nullptr || flags != 0 || size == 0 ||
      size % k_vmm_granularity != 0 || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  // cuda.h: HOST ignores the id and must request no shareable handle; HOST_NUMA names a NUMA
  // node (0 where there is no NUMA); HOST_NUMA_CURRENT is refused with INVALID_VALUE.
  const CUmemLocationType where = prop->location.type;
  if (where == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT ||
      (where == CU_MEM_LOCATION_TYPE_HOST && prop->requestedHandleTypes != 0) ||
      (where == CU_MEM_LOCATION_TYPE_HOST_NUMA && prop->location.id < 0) ||
      (where != CU_MEM_LOCATION_TYPE_DEVICE && where != CU_MEM_LOCATION_TYPE_HOST &&
       where != CU_MEM_LOCATION_TYPE_HOST_NUMA)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (where != CU_MEM_LOCATION_TYPE_DEVICE) {
    // Host-located physical memory: takes no device memory.
    std::lock_guard<std::mutex> lock(st().mu);
    *handle = st().next_handle++;
    st().handles[*handle] = allocation{-1, size, 0};
    return CUDA_SUCCESS;
  }
  if (prop->location.id < 0 || prop->location.id >= st().visible_count) {
    return CUDA_ERROR_INVALID_DEVICE;
  }
  const int p = st().visible[prop->location.id];
  if (!take(p, size)) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lock(st().mu);
  *handle = st().next_handle++;
  st().handles[*handle] = allocation{p, size, 0};
  return CUDA_SUCCESS;
}

namespace {
/// As cuMemRelease documents: "The memory allocation will be freed when all outstanding
/// mappings to the memory are unmapped and when all outstanding references to the handle ...
/// are also released." Precondition: st().mu held.
void free_handle_if_unused(std::map<CUmemGenericAllocationHandle, allocation>::iterator it) {
  if (it->second.refs > 0 || it->second.maps > 0) return;
  if (it->second.physical >= 0) give(it->second.physical, it->second.bytes);
  st().handles.erase(it);
}
}  // namespace

FAKE_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  std::lock_guard<std::mutex> lock(st().mu);
  auto it = st().handles.find(handle);
  if (it == st().handles.end() || it->second.refs == 0) return CUDA_ERROR_INVALID_VALUE;
  --it->second.refs;
  free_handle_if_unused(it);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle* handle, void* addr) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::lock_guard<std::mutex> lock(st().mu);
  auto m = st().mappings.upper_bound(a);
  if (m == st().mappings.begin()) return CUDA_ERROR_INVALID_VALUE;
  --m;
  if (a >= m->first + m->second.size) return CUDA_ERROR_INVALID_VALUE;
  ++st().handles.at(m->second.handle).refs;
  *handle = m->second.handle;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment,
                                         CUdeviceptr addr, unsigned long long flags) {
  (void)alignment;
  (void)addr;  // a hint only
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (ptr == nullptr || size == 0 || size % k_vmm_granularity != 0 || flags != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  void* m = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lock(st().mu);
  st().reservations[reinterpret_cast<std::uintptr_t>(m)] = size;
  *ptr = reinterpret_cast<CUdeviceptr>(m);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  std::lock_guard<std::mutex> lock(st().mu);
  auto it = st().reservations.find(static_cast<std::uintptr_t>(ptr));
  if (it == st().reservations.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  auto m = st().mappings.lower_bound(it->first);
  if (m != st().mappings.end() && m->first < it->first + size) return CUDA_ERROR_INVALID_VALUE;
  munmap(reinterpret_cast<void*>(ptr), size);
  st().reservations.erase(it);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                              CUmemGenericAllocationHandle handle, unsigned long long flags) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (offset != 0 || flags != 0 || size == 0) return CUDA_ERROR_INVALID_VALUE;
  const auto a = static_cast<std::uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(st().mu);
  auto h = st().handles.find(handle);
  if (h == st().handles.end() || size > h->second.bytes) return CUDA_ERROR_INVALID_VALUE;
  // Only on a reservation, and only where nothing is mapped.
  auto res = st().reservations.upper_bound(a);
  if (res == st().reservations.begin()) return CUDA_ERROR_INVALID_VALUE;
  --res;
  if (a + size > res->first + res->second) return CUDA_ERROR_INVALID_VALUE;
  auto next = st().mappings.lower_bound(a);
  if (next != st().mappings.end() && next->first < a + size) return CUDA_ERROR_INVALID_VALUE;
  if (next != st().mappings.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > a) return CUDA_ERROR_INVALID_VALUE;
  }
  st().mappings[a] = vmm_mapping{handle, size};
  ++h->second.maps;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  const auto a = static_cast<std::uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(st().mu);
  auto first = st().mappings.find(a);
  if (first == st().mappings.end()) return CUDA_ERROR_INVALID_VALUE;
  // Whole mappings only: the range must end where a mapping ends.
  auto last = first;
  while (last != st().mappings.end() && last->first < a + size) ++last;
  auto end_check = std::prev(last);
  if (end_check->first + end_check->second.size != a + size) return CUDA_ERROR_INVALID_VALUE;
  for (auto m = first; m != last;) {
    auto h = st().handles.find(m->second.handle);
    m = st().mappings.erase(m);
    if (h != st().handles.end()) {
      --h->second.maps;
      free_handle_if_unused(h);
    }
  }
  return CUDA_SUCCESS;
}

/// As cuda.h documents: the range must be wholly mapped, and each descriptor names a device (a
/// host location only with a host-located mapping, which the fake does not check further).
FAKE_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc,
                                    size_t count) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (size == 0 || desc == nullptr || count == 0) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; ++i) {
    const CUmemLocation& at = desc[i].location;
    if (at.type == CU_MEM_LOCATION_TYPE_DEVICE && (at.id < 0 || at.id >= st().visible_count)) {
      return CUDA_ERROR_INVALID_DEVICE;
    }
  }
  const auto a = static_cast<std::uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(st().mu);
  // Mappings must cover [a, a + size) without a gap.
  auto m = st().mappings.upper_bound(a);
  if (m == st().mappings.begin()) return CUDA_ERROR_INVALID_VALUE;
  --m;
  std::uintptr_t covered = a;
  for (; m != st().mappings.end() && covered < a + size; ++m) {
    if (m->first > covered || m->first + m->second.size <= covered) return CUDA_ERROR_INVALID_VALUE;
    covered = m->first + m->second.size;
  }
  return covered >= a + size ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- arrays --------------------------------------------------------------------------------

namespace {
/// A deferred-mapping array takes no memory until memory is mapped into it (cuMemMapArrayAsync
/// with a cuMemCreate handle, whose memory it is).
template <class Handle>
CUresult make_array(Handle* out, std::uint64_t bytes, bool deferred) {
  int p = 0;
  if (CUresult r = ctx_physical(&p); r != CUDA_SUCCESS) return r;
  if (out == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (!deferred && !take(p, bytes)) return CUDA_ERROR_OUT_OF_MEMORY;
  using object = std::remove_pointer_t<Handle>;
  auto* a = new object;
  a->physical = p;
  a->bytes = bytes;
  a->deferred = deferred;
  a->ctx = current();
  {
    std::lock_guard<std::mutex> lock(st().mu);
    st().arrays.insert(a);
  }
  *out = a;
  return CUDA_SUCCESS;
}
template <class Handle>
CUresult destroy_array(Handle a) {
  if (a == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  {
    std::lock_guard<std::mutex> lock(st().mu);
    st().arrays.erase(a);
  }
  if (!a->deferred && !a->freed) give(a->physical, a->bytes);
  delete a;
  return CUDA_SUCCESS;
}
/// As documented: "If the CUDA array is not allocated with flag CUDA_ARRAY3D_DEFERRED_MAPPING
/// CUDA_ERROR_INVALID_VALUE will be returned."
template <class Handle>
CUresult array_requirements(CUDA_ARRAY_MEMORY_REQUIREMENTS* req, Handle a, CUdevice dev) {
  if (CUresult r = check_ordinal(dev); r != CUDA_SUCCESS) return r;
  if (req == nullptr || a == nullptr || !a->deferred) return CUDA_ERROR_INVALID_VALUE;
  std::memset(req, 0, sizeof *req);
  req->size = a->bytes;
  req->alignment = k_pitch_alignment;
  return CUDA_SUCCESS;
}
}  // namespace

FAKE_EXPORT CUresult cuArrayCreate_v2(CUarray* out, const CUDA_ARRAY_DESCRIPTOR* d) {
  if (d == nullptr || d->NumChannels == 0) return CUDA_ERROR_INVALID_VALUE;
  const texels t = format_texels(d->Format, d->NumChannels);
  if (t.bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  return make_array(out, array_bytes(t, d->Width, d->Height, 0, 1, false), false);
}

namespace {
constexpr unsigned k_layers = CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP;
}

FAKE_EXPORT CUresult cuArray3DCreate_v2(CUarray* out, const CUDA_ARRAY3D_DESCRIPTOR* d) {
  if (d == nullptr || d->NumChannels == 0) return CUDA_ERROR_INVALID_VALUE;
  const texels t = format_texels(d->Format, d->NumChannels);
  if (t.bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  return make_array(out,
                    array_bytes(t, d->Width, d->Height, d->Depth, 1, (d->Flags & k_layers) != 0),
                    (d->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING) != 0);
}

FAKE_EXPORT CUresult cuArrayDestroy(CUarray a) { return destroy_array(a); }

FAKE_EXPORT CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS* req, CUarray a,
                                                  CUdevice dev) {
  return array_requirements(req, a, dev);
}

FAKE_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray* out, const CUDA_ARRAY3D_DESCRIPTOR* d,
                                            unsigned int levels) {
  if (d == nullptr || d->NumChannels == 0 || levels == 0) return CUDA_ERROR_INVALID_VALUE;
  const texels t = format_texels(d->Format, d->NumChannels);
  if (t.bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  return make_array(
      out, array_bytes(t, d->Width, d->Height, d->Depth, levels, (d->Flags & k_layers) != 0),
      (d->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING) != 0);
}

FAKE_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray a) { return destroy_array(a); }

FAKE_EXPORT CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS* req,
                                                           CUmipmappedArray a, CUdevice dev) {
  return array_requirements(req, a, dev);
}

// ---- streams, events, modules, launches ----------------------------------------------------

FAKE_EXPORT CUresult cuStreamCreate(CUstream* out, unsigned int flags) {
  (void)flags;
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  CUctx_st* c = current();
  if (c == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *out = new_stream(c);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamDestroy_v2(CUstream s) {
  if (s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
    return CUDA_ERROR_INVALID_HANDLE;
  }
  drain(s);
  delete_stream(s);
  return CUDA_SUCCESS;
}

namespace {
CUresult stream_sync(CUstream h) {
  CUstream_st* s = resolve(h);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  drain(s);
  release_pools_at_sync();
  return CUDA_SUCCESS;
}
std::atomic<std::uint64_t> g_stream_device_calls{0};
CUresult stream_device(CUstream h, CUdevice* dev) {
  g_stream_device_calls.fetch_add(1, std::memory_order_relaxed);
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  CUstream_st* s = resolve(h);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (dev == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *dev = s->ctx->ordinal;
  return CUDA_SUCCESS;
}
CUresult event_record(CUevent e, CUstream h) {
  CUstream_st* s = resolve(h);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (fake_capture_event(h)) return CUDA_SUCCESS;  // became a node of the captured graph
  {
    std::lock_guard<std::mutex> lock(e->mu);
    e->recorded = true;
    e->done = false;
  }
  enqueue(s, CUstream_st::work{0, e});
  return CUDA_SUCCESS;
}
CUfunction kernel_in_current_context(CUfunction kernel);
CUresult launch(CUfunction f, void** params, CUstream h) {
  if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (f->library_kernel) {
    f = kernel_in_current_context(f);  // a CUkernel: its function in the current context
    if (f == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  }
  CUstream_st* s = resolve(h);
  if (s == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  // A kernel named fake_null does nothing and queues nothing: benchmarks of the launch path.
  if (f->name == "fake_null") return CUDA_SUCCESS;
  // A stream being captured records the launch into its graph instead of running it.
  if (fake_capture_kernel(h, f, params)) return CUDA_SUCCESS;
  std::uint64_t us = st().kernel_us;
  // A kernel named fake_sleep_us runs for its first parameter's microseconds.
  if (f->name == "fake_sleep_us" && params != nullptr && params[0] != nullptr) {
    std::memcpy(&us, params[0], sizeof us);
  }
  enqueue(s, CUstream_st::work{std::max<std::uint64_t>(us, 1), nullptr});
  return CUDA_SUCCESS;
}
}  // namespace

FAKE_EXPORT CUresult cuStreamSynchronize(CUstream s) { return stream_sync(s); }
FAKE_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { return stream_sync(s); }
FAKE_EXPORT CUresult cuStreamGetDevice(CUstream s, CUdevice* d) { return stream_device(s, d); }
FAKE_EXPORT CUresult cuStreamGetDevice_ptsz(CUstream s, CUdevice* d) { return stream_device(s, d); }

FAKE_EXPORT CUresult cuEventCreate(CUevent* e, unsigned int flags) {
  (void)flags;
  if (e == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *e = new CUevent_st;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuEventDestroy_v2(CUevent e) {
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  {
    std::unique_lock<std::mutex> lock(e->mu);
    e->cv.wait(lock, [&] { return e->done; });
  }
  delete e;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuEventRecord(CUevent e, CUstream s) { return event_record(e, s); }
FAKE_EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return event_record(e, s); }
FAKE_EXPORT CUresult cuEventQuery(CUevent e) {
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (CUresult r = fake_capture_unsafe_call(); r != CUDA_SUCCESS) return r;
  std::lock_guard<std::mutex> lock(e->mu);
  return e->done ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
FAKE_EXPORT CUresult cuEventSynchronize(CUevent e) {
  if (e == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (CUresult r = fake_capture_unsafe_call(); r != CUDA_SUCCESS) return r;
  {
    std::unique_lock<std::mutex> lock(e->mu);
    e->cv.wait(lock, [&] { return e->done; });
  }
  release_pools_at_sync();
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) {
  if (ms == nullptr || a == nullptr || b == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::scoped_lock lock(a->mu, b->mu);
  if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
  if (!a->done || !b->done) return CUDA_ERROR_NOT_READY;
  *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
  return CUDA_SUCCESS;
}

/// A module loaded in a context takes device memory there (its code and data), until unloaded
/// or the context is torn down.
FAKE_EXPORT CUresult cuModuleLoadData(CUmodule* m, const void* image) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (m == nullptr || image == nullptr) return CUDA_ERROR_INVALID_VALUE;
  auto owned = std::make_unique<CUmod_st>();
  if (CUctx_st* c = current(); c != nullptr && st().module_bytes != 0) {
    if (!take(c->physical, st().module_bytes)) return CUDA_ERROR_OUT_OF_MEMORY;
    owned->ctx = c;
    owned->physical = c->physical;
    owned->bytes = st().module_bytes;
  }
  *m = owned.get();
  std::lock_guard<std::mutex> lock(st().mu);
  st().modules[owned.get()] = std::move(owned);
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuModuleUnload(CUmodule m) {
  std::lock_guard<std::mutex> lock(st().mu);
  auto it = st().modules.find(m);
  if (it == st().modules.end()) return CUDA_ERROR_INVALID_HANDLE;
  give(it->second->physical, it->second->bytes);
  st().modules.erase(it);
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
  if (f == nullptr || m == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(st().mu);
  auto& fn = m->functions[name];
  if (fn == nullptr) fn = std::make_unique<CUfunc_st>(CUfunc_st{name});
  *f = fn.get();
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, unsigned, CUstream s, void** params, void**) {
  return launch(f, params, s);
}
FAKE_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned, unsigned, unsigned, unsigned,
                                         unsigned, unsigned, unsigned, CUstream s, void** params,
                                         void**) {
  return launch(f, params, s);
}

// ---- libraries (context-independent loading, CUDA 12.0) ---------------------------------------
// cuda.h: cuLibraryLoadData loads a library whose kernels (CUkernel) belong to no context;
// cuKernelGetFunction returns the kernel's function in the current context (loading it there),
// and cuLaunchKernel, cuLaunchKernelEx and cuLaunchCooperativeKernel accept a CUkernel where
// they take a CUfunction, launching it in the current context.

struct CUkern_st : CUfunc_st {
  /// The kernel's function in each context it was loaded in (owned: the library outlives them).
  std::map<CUctx_st*, std::unique_ptr<CUfunc_st>> in_context;
};
struct CUlib_st {
  std::map<std::string, std::unique_ptr<CUkern_st>> kernels;
};

namespace {
std::mutex g_library_mu;
std::map<CUlib_st*, std::unique_ptr<CUlib_st>>& libraries() {
  static auto* m = new std::map<CUlib_st*, std::unique_ptr<CUlib_st>>;  // used at exit
  return *m;
}
/// FAKE_CUDA_LAZY_LOAD_US, read once.
std::uint64_t lazy_load_us() {
  static const std::uint64_t us = [] {
    const char* v = std::getenv("FAKE_CUDA_LAZY_LOAD_US");
    return v == nullptr ? std::uint64_t{0} : std::strtoull(v, nullptr, 10);
  }();
  return us;
}
/// \p k's function in the current context, loaded there on first use (null: no context).
CUfunction function_of(CUkern_st* k) {
  CUctx_st* c = current();
  if (c == nullptr) return nullptr;
  bool loaded = false;
  CUfunction f = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_library_mu);
    auto& fn = k->in_context[c];
    if (fn == nullptr) {
      fn = std::make_unique<CUfunc_st>(CUfunc_st{k->name, false});
      loaded = true;
    }
    f = fn.get();
  }
  if (loaded && lazy_load_us() != 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(lazy_load_us()));
  }
  return f;
}
CUfunction kernel_in_current_context(CUfunction kernel) {
  return function_of(static_cast<CUkern_st*>(kernel));
}
}  // namespace

FAKE_EXPORT CUresult cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option*, void**,
                                       unsigned int, CUlibraryOption*, void**, unsigned int) {
  if (CUresult r = check_init(); r != CUDA_SUCCESS) return r;
  if (library == nullptr || code == nullptr) return CUDA_ERROR_INVALID_VALUE;
  auto owned = std::make_unique<CUlib_st>();
  *library = owned.get();
  std::lock_guard<std::mutex> lock(g_library_mu);
  libraries()[owned.get()] = std::move(owned);
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuLibraryUnload(CUlibrary library) {
  std::lock_guard<std::mutex> lock(g_library_mu);
  return libraries().erase(library) == 1 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
/// Every name is found in a fake library (as every name is in a fake module).
FAKE_EXPORT CUresult cuLibraryGetKernel(CUkernel* kernel, CUlibrary library, const char* name) {
  if (kernel == nullptr || name == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_library_mu);
  if (libraries().count(library) == 0) return CUDA_ERROR_INVALID_HANDLE;
  auto& k = library->kernels[name];
  if (k == nullptr) {
    k = std::make_unique<CUkern_st>();
    k->name = name;
    k->library_kernel = true;
  }
  *kernel = k.get();
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuKernelGetFunction(CUfunction* function, CUkernel kernel) {
  if (function == nullptr || kernel == nullptr) return CUDA_ERROR_INVALID_VALUE;
  CUfunction f = function_of(kernel);
  if (f == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
  *function = f;
  return CUDA_SUCCESS;
}

// ---- errors ----------------------------------------------------------------------------------

FAKE_EXPORT CUresult cuGetErrorName(CUresult e, const char** s) {
  if (s == nullptr) return CUDA_ERROR_INVALID_VALUE;
  switch (e) {
    case CUDA_SUCCESS:
      *s = "CUDA_SUCCESS";
      break;
    case CUDA_ERROR_INVALID_VALUE:
      *s = "CUDA_ERROR_INVALID_VALUE";
      break;
    case CUDA_ERROR_OUT_OF_MEMORY:
      *s = "CUDA_ERROR_OUT_OF_MEMORY";
      break;
    case CUDA_ERROR_NOT_INITIALIZED:
      *s = "CUDA_ERROR_NOT_INITIALIZED";
      break;
    case CUDA_ERROR_INVALID_CONTEXT:
      *s = "CUDA_ERROR_INVALID_CONTEXT";
      break;
    case CUDA_ERROR_NOT_FOUND:
      *s = "CUDA_ERROR_NOT_FOUND";
      break;
    default:
      *s = nullptr;
      return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

// ---- cuGetProcAddress --------------------------------------------------------------------------

namespace {
/// One driver entry point: the name without a version suffix, the CUDA version that introduced
/// this variant, and the legacy and per-thread-default-stream functions.
struct proc_entry {
  const char* base;
  int since;
  void* legacy;
  void* per_thread;  ///< the _ptds/_ptsz variant, or null when the entry has none
};

#define FAKE_FN(f) reinterpret_cast<void*>(&f)

CUresult get_proc(const char* symbol, void** pfn, int version, cuuint64_t flags,
                  CUdriverProcAddressQueryResult* status);
CUresult get_proc_v1(const char* symbol, void** pfn, int version, cuuint64_t flags) {
  return get_proc(symbol, pfn, version, flags, nullptr);
}

// The table names the deprecated legacy launch API too (the driver still resolves it).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
const proc_entry k_procs[] = {
    {"cuInit", 2000, FAKE_FN(cuInit), nullptr},
    {"cuDriverGetVersion", 2020, FAKE_FN(cuDriverGetVersion), nullptr},
    {"cuGetProcAddress", 11030, FAKE_FN(get_proc_v1), nullptr},
    {"cuGetProcAddress", 12000, FAKE_FN(get_proc), nullptr},
    {"cuGetErrorName", 6000, FAKE_FN(cuGetErrorName), nullptr},
    {"cuDeviceGetCount", 2000, FAKE_FN(cuDeviceGetCount), nullptr},
    {"cuDeviceGet", 2000, FAKE_FN(cuDeviceGet), nullptr},
    {"cuDeviceGetName", 2000, FAKE_FN(cuDeviceGetName), nullptr},
    {"cuDeviceGetUuid", 11040, FAKE_FN(cuDeviceGetUuid_v2), nullptr},
    {"cuDeviceTotalMem", 3020, FAKE_FN(cuDeviceTotalMem_v2), nullptr},
    {"cuDeviceGetAttribute", 2000, FAKE_FN(cuDeviceGetAttribute), nullptr},
    {"cuDevicePrimaryCtxRetain", 7000, FAKE_FN(cuDevicePrimaryCtxRetain), nullptr},
    {"cuDevicePrimaryCtxRelease", 11000, FAKE_FN(cuDevicePrimaryCtxRelease_v2), nullptr},
    {"cuDevicePrimaryCtxReset", 11000, FAKE_FN(cuDevicePrimaryCtxReset_v2), nullptr},
    {"cuDevicePrimaryCtxGetState", 7000, FAKE_FN(cuDevicePrimaryCtxGetState), nullptr},
    {"cuCtxCreate", 12050, FAKE_FN(cuCtxCreate_v4), nullptr},
    {"cuCtxDestroy", 4000, FAKE_FN(cuCtxDestroy_v2), nullptr},
    {"cuCtxSetCurrent", 4000, FAKE_FN(cuCtxSetCurrent), nullptr},
    {"cuCtxGetCurrent", 4000, FAKE_FN(cuCtxGetCurrent), nullptr},
    {"cuCtxPushCurrent", 4000, FAKE_FN(cuCtxPushCurrent_v2), nullptr},
    {"cuCtxPopCurrent", 4000, FAKE_FN(cuCtxPopCurrent_v2), nullptr},
    {"cuCtxGetDevice", 2000, FAKE_FN(cuCtxGetDevice), nullptr},
    {"cuCtxSynchronize", 2000, FAKE_FN(cuCtxSynchronize), nullptr},
    {"cuMemGetInfo", 3020, FAKE_FN(cuMemGetInfo_v2), nullptr},
    {"cuMemAlloc", 2000, FAKE_FN(cuMemAlloc), nullptr},
    {"cuMemAlloc", 3020, FAKE_FN(cuMemAlloc_v2), nullptr},
    {"cuMemAllocPitch", 3020, FAKE_FN(cuMemAllocPitch_v2), nullptr},
    {"cuMemAllocManaged", 6000, FAKE_FN(cuMemAllocManaged), nullptr},
    {"cuMemFree", 3020, FAKE_FN(cuMemFree_v2), nullptr},
    {"cuMemGetAddressRange", 3020, FAKE_FN(cuMemGetAddressRange_v2), nullptr},
    {"cuMemcpyHtoD", 3020, FAKE_FN(cuMemcpyHtoD_v2), nullptr},
    {"cuMemcpyDtoH", 3020, FAKE_FN(cuMemcpyDtoH_v2), nullptr},
    {"cuMemAllocAsync", 11020, FAKE_FN(cuMemAllocAsync), FAKE_FN(cuMemAllocAsync_ptsz)},
    {"cuMemAllocFromPoolAsync", 11020, FAKE_FN(cuMemAllocFromPoolAsync),
     FAKE_FN(cuMemAllocFromPoolAsync_ptsz)},
    {"cuMemFreeAsync", 11020, FAKE_FN(cuMemFreeAsync), FAKE_FN(cuMemFreeAsync_ptsz)},
    {"cuDeviceGetDefaultMemPool", 11020, FAKE_FN(cuDeviceGetDefaultMemPool), nullptr},
    {"cuMemPoolCreate", 11020, FAKE_FN(cuMemPoolCreate), nullptr},
    {"cuMemPoolDestroy", 11020, FAKE_FN(cuMemPoolDestroy), nullptr},
    {"cuMemPoolTrimTo", 11020, FAKE_FN(cuMemPoolTrimTo), nullptr},
    {"cuDeviceGetGraphMemAttribute", 11040, FAKE_FN(cuDeviceGetGraphMemAttribute), nullptr},
    {"cuDeviceGraphMemTrim", 11040, FAKE_FN(cuDeviceGraphMemTrim), nullptr},
    {"cuMemPoolSetAttribute", 11020, FAKE_FN(cuMemPoolSetAttribute), nullptr},
    {"cuMemPoolGetAttribute", 11020, FAKE_FN(cuMemPoolGetAttribute), nullptr},
    {"cuDeviceGetMemPool", 11020, FAKE_FN(cuDeviceGetMemPool), nullptr},
    {"cuDeviceSetMemPool", 11020, FAKE_FN(cuDeviceSetMemPool), nullptr},
    {"cuMemGetAllocationGranularity", 10020, FAKE_FN(cuMemGetAllocationGranularity), nullptr},
    {"cuMemCreate", 10020, FAKE_FN(cuMemCreate), nullptr},
    {"cuMemRelease", 10020, FAKE_FN(cuMemRelease), nullptr},
    {"cuMemRetainAllocationHandle", 11000, FAKE_FN(cuMemRetainAllocationHandle), nullptr},
    {"cuMemAddressReserve", 10020, FAKE_FN(cuMemAddressReserve), nullptr},
    {"cuMemAddressFree", 10020, FAKE_FN(cuMemAddressFree), nullptr},
    {"cuMemMap", 10020, FAKE_FN(cuMemMap), nullptr},
    {"cuMemUnmap", 10020, FAKE_FN(cuMemUnmap), nullptr},
    {"cuMemSetAccess", 10020, FAKE_FN(cuMemSetAccess), nullptr},
    {"cuArrayCreate", 3020, FAKE_FN(cuArrayCreate_v2), nullptr},
    {"cuArray3DCreate", 3020, FAKE_FN(cuArray3DCreate_v2), nullptr},
    {"cuArrayDestroy", 2000, FAKE_FN(cuArrayDestroy), nullptr},
    {"cuArrayGetMemoryRequirements", 11060, FAKE_FN(cuArrayGetMemoryRequirements), nullptr},
    {"cuMipmappedArrayCreate", 5000, FAKE_FN(cuMipmappedArrayCreate), nullptr},
    {"cuMipmappedArrayDestroy", 5000, FAKE_FN(cuMipmappedArrayDestroy), nullptr},
    {"cuMipmappedArrayGetMemoryRequirements", 11060, FAKE_FN(cuMipmappedArrayGetMemoryRequirements),
     nullptr},
    {"cuStreamCreate", 2000, FAKE_FN(cuStreamCreate), nullptr},
    {"cuStreamDestroy", 4000, FAKE_FN(cuStreamDestroy_v2), nullptr},
    {"cuStreamSynchronize", 2000, FAKE_FN(cuStreamSynchronize), FAKE_FN(cuStreamSynchronize_ptsz)},
    {"cuStreamGetDevice", 12080, FAKE_FN(cuStreamGetDevice), FAKE_FN(cuStreamGetDevice_ptsz)},
    {"cuEventCreate", 2000, FAKE_FN(cuEventCreate), nullptr},
    {"cuEventDestroy", 4000, FAKE_FN(cuEventDestroy_v2), nullptr},
    {"cuEventRecord", 2000, FAKE_FN(cuEventRecord), FAKE_FN(cuEventRecord_ptsz)},
    {"cuEventQuery", 2000, FAKE_FN(cuEventQuery), nullptr},
    {"cuEventSynchronize", 2000, FAKE_FN(cuEventSynchronize), nullptr},
    {"cuEventElapsedTime", 12080, FAKE_FN(cuEventElapsedTime_v2), nullptr},
    {"cuModuleLoadData", 2000, FAKE_FN(cuModuleLoadData), nullptr},
    {"cuModuleUnload", 2000, FAKE_FN(cuModuleUnload), nullptr},
    {"cuModuleGetFunction", 2000, FAKE_FN(cuModuleGetFunction), nullptr},
    {"cuLaunchKernel", 4000, FAKE_FN(cuLaunchKernel), FAKE_FN(cuLaunchKernel_ptsz)},
    {"cuLaunchKernelEx", 11060, FAKE_FN(cuLaunchKernelEx), FAKE_FN(cuLaunchKernelEx_ptsz)},
    {"cuLaunchCooperativeKernel", 9000, FAKE_FN(cuLaunchCooperativeKernel),
     FAKE_FN(cuLaunchCooperativeKernel_ptsz)},
    {"cuGraphCreate", 10000, FAKE_FN(cuGraphCreate), nullptr},
    {"cuGraphDestroy", 10000, FAKE_FN(cuGraphDestroy), nullptr},
    {"cuGraphAddKernelNode", 12000, FAKE_FN(cuGraphAddKernelNode_v2), nullptr},
    {"cuGraphInstantiate", 11040, FAKE_FN(cuGraphInstantiateWithFlags), nullptr},
    {"cuGraphExecDestroy", 10000, FAKE_FN(cuGraphExecDestroy), nullptr},
    {"cuGraphLaunch", 10000, FAKE_FN(cuGraphLaunch), FAKE_FN(cuGraphLaunch_ptsz)},
    {"cuLibraryLoadData", 12000, FAKE_FN(cuLibraryLoadData), nullptr},
    {"cuLibraryUnload", 12000, FAKE_FN(cuLibraryUnload), nullptr},
    {"cuLibraryGetKernel", 12000, FAKE_FN(cuLibraryGetKernel), nullptr},
    {"cuKernelGetFunction", 12000, FAKE_FN(cuKernelGetFunction), nullptr},
    {"cuGraphUpload", 11010, FAKE_FN(cuGraphUpload), FAKE_FN(cuGraphUpload_ptsz)},
    {"cuStreamBeginCapture", 10010, FAKE_FN(cuStreamBeginCapture_v2), nullptr},
    {"cuStreamEndCapture", 10000, FAKE_FN(cuStreamEndCapture), nullptr},
    {"cuStreamIsCapturing", 10000, FAKE_FN(cuStreamIsCapturing), FAKE_FN(cuStreamIsCapturing_ptsz)},
    {"cuThreadExchangeStreamCaptureMode", 10010, FAKE_FN(cuThreadExchangeStreamCaptureMode),
     nullptr},
    {"cuLaunch", 2000, FAKE_FN(cuLaunch), nullptr},
    {"cuLaunchGrid", 2000, FAKE_FN(cuLaunchGrid), nullptr},
    {"cuLaunchGridAsync", 2000, FAKE_FN(cuLaunchGridAsync), nullptr},
    {"cuParamSetSize", 2000, FAKE_FN(cuParamSetSize), nullptr},
    {"cuParamSetv", 2000, FAKE_FN(cuParamSetv), nullptr},
    {"cuMemAdvise", 12020, FAKE_FN(cuMemAdvise_v2), nullptr},
    {"cuMemPrefetchAsync", 12020, FAKE_FN(cuMemPrefetchAsync_v2), nullptr},
};
#pragma GCC diagnostic pop

/// The driver's semantics: the newest variant introduced at or before \p version; with
/// CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM its per-thread variant when it has one.
CUresult get_proc(const char* symbol, void** pfn, int version, cuuint64_t flags,
                  CUdriverProcAddressQueryResult* status) {
  constexpr cuuint64_t k_known_flags =
      CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  if (symbol == nullptr || pfn == nullptr || (flags & ~k_known_flags) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  *pfn = nullptr;
  const proc_entry* best = nullptr;
  bool known = false;
  for (const proc_entry& e : k_procs) {
    if (std::strcmp(e.base, symbol) != 0) continue;
    known = true;
    if (e.since <= version && (best == nullptr || e.since > best->since)) best = &e;
  }
  if (best == nullptr) {
    if (status != nullptr) {
      *status =
          known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    }
    return CUDA_ERROR_NOT_FOUND;
  }
  const bool per_thread = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  *pfn = per_thread && best->per_thread != nullptr ? best->per_thread : best->legacy;
  if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
  return CUDA_SUCCESS;
}
}  // namespace

FAKE_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version,
                                         cuuint64_t flags, CUdriverProcAddressQueryResult* status) {
  return get_proc(symbol, pfn, version, flags, status);
}

FAKE_EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int version,
                                      cuuint64_t flags) {
  return get_proc(symbol, pfn, version, flags, nullptr);
}

// ---- what the fake NVML reads ------------------------------------------------------------------

FAKE_EXPORT int fake_cuda_physical_count() { return configured().physical_count; }
FAKE_EXPORT std::uint64_t fake_cuda_physical_total(int p) { return configured().devs[p].total; }
FAKE_EXPORT std::uint64_t fake_cuda_physical_used(int p) {
  return configured().devs[p].used.load();
}
FAKE_EXPORT int fake_cuda_physical_contexts(int p) { return configured().devs[p].contexts.load(); }
FAKE_EXPORT int fake_cuda_initialised() {
  driver_state& s = st();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.initialised ? 1 : 0;
}
FAKE_EXPORT void fake_cuda_physical_uuid(int p, unsigned char out[16]) {
  std::memcpy(out, configured().devs[p].uuid, 16);
}
FAKE_EXPORT std::uint64_t fake_cuda_stream_device_calls() {
  return g_stream_device_calls.load(std::memory_order_relaxed);
}
FAKE_EXPORT std::uint64_t fake_cuda_physical_busy_us(int p) {
  return configured().devs[p].busy_us.load();
}
