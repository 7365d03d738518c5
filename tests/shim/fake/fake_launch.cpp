/// \file
/// The fake driver's other launch paths, built into the same libcuda.so.1 as fake_cuda.cpp:
/// cuLaunchKernelEx, cooperative launches (single and multi-device), the legacy cuLaunch,
/// cuLaunchGrid and cuLaunchGridAsync (with cuParamSetv/cuParamSetSize), graphs of kernel nodes
/// (create, add kernel node, instantiate, launch, upload, destroy; memory nodes from capture),
/// stream capture and cuMemAdvise.
///
/// Stream capture follows cuThreadExchangeStreamCaptureMode's documentation in cuda.h: a thread
/// in the default global mode that makes a "potentially unsafe" call (here cuEventQuery and
/// cuEventSynchronize) while it has a capture of its own not begun in relaxed mode, or while
/// another thread has a capture begun in global mode, is refused with
/// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and the capture is invalidated: cuStreamIsCapturing
/// reports it INVALIDATED and cuStreamEndCapture fails with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED.
/// A thread in thread-local mode ignores other threads' captures; one in relaxed mode is never
/// refused. Every path ends in the
/// fake's own cuLaunchKernel (bound inside the library by -Bsymbolic, so an interposer never sees
/// these internal calls), whose stream workers "run" each kernel for its duration and add it to
/// the device's busy time: the accounting the share tests read.
///
/// A graph node keeps its kernel's first parameter as 8 bytes, which is what the fake's
/// fake_sleep_us kernel takes (its duration in microseconds); a graph launch runs its nodes in
/// order on the launch stream.

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "fake_driver.hpp"
#include "fake_launch.hpp"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // the multi-device launch

namespace {
/// One kernel node of a fake graph.
struct kernel_node {
  CUfunction f = nullptr;
  bool has_arg = false;
  std::uint64_t arg = 0;  ///< the first kernel parameter, as fake_sleep_us reads it
};
}  // namespace

struct CUgraph_st {
  std::vector<kernel_node> nodes;
  int other_nodes = 0;              ///< event and memory nodes a capture recorded
  std::vector<CUdeviceptr> allocs;  ///< allocation nodes: their fixed addresses
  std::vector<CUdeviceptr> frees;   ///< free nodes
};
struct CUgraphExec_st {
  std::vector<kernel_node> nodes;
  std::vector<CUdeviceptr> allocs;
  std::vector<CUdeviceptr> frees;
};
struct CUgraphNode_st {
  int unused = 0;
};

namespace {
/// Advice given to managed ranges: base address -> (preferred device, accessed-by device).
struct advice {
  int preferred = -1;
  int accessed_by = -1;
};
std::mutex g_advice_mu;
std::map<CUdeviceptr, advice>& advices() {
  static auto* m = new std::map<CUdeviceptr, advice>;  // never destroyed: used at exit
  return *m;
}

CUresult launch_node(const kernel_node& n, CUstream stream) {
  std::uint64_t arg = n.arg;
  void* params[1] = {&arg};
  return cuLaunchKernel(n.f, 1, 1, 1, 1, 1, 1, 0, stream, n.has_arg ? params : nullptr, nullptr);
}
}  // namespace

FAKE_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** params,
                                      void** extra) {
  if (config == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return cuLaunchKernel(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
                        config->blockDimY, config->blockDimZ, config->sharedMemBytes,
                        config->hStream, params, extra);
}
FAKE_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f,
                                           void** params, void** extra) {
  return cuLaunchKernelEx(config, f, params, extra);
}

FAKE_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                               unsigned bx, unsigned by, unsigned bz,
                                               unsigned shared, CUstream s, void** params) {
  return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, s, params, nullptr);
}
FAKE_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy,
                                                    unsigned gz, unsigned bx, unsigned by,
                                                    unsigned bz, unsigned shared, CUstream s,
                                                    void** params) {
  return cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shared, s, params);
}
FAKE_EXPORT CUresult cuLaunchCooperativeKernelMultiDevice(CUDA_LAUNCH_PARAMS* list, unsigned count,
                                                          unsigned flags) {
  (void)flags;
  if (list == nullptr || count == 0) return CUDA_ERROR_INVALID_VALUE;
  for (unsigned i = 0; i < count; ++i) {
    const CUDA_LAUNCH_PARAMS& p = list[i];
    const CUresult r =
        cuLaunchKernel(p.function, p.gridDimX, p.gridDimY, p.gridDimZ, p.blockDimX, p.blockDimY,
                       p.blockDimZ, p.sharedMemBytes, p.hStream, p.kernelParams, nullptr);
    if (r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}

// ---- legacy launches -------------------------------------------------------------------------

namespace {
/// Parameters set with cuParamSetv for the legacy launches: function -> bytes, as the driver
/// keeps them with the function.
std::mutex g_param_mu;
std::map<CUfunction, std::vector<unsigned char>>& legacy_params() {
  static auto* m = new std::map<CUfunction, std::vector<unsigned char>>;  // used at exit
  return *m;
}
/// A legacy launch of \p f on \p s: the first 8 parameter bytes, when set, are its first
/// parameter (what fake_sleep_us reads).
CUresult legacy_launch(CUfunction f, int gw, int gh, CUstream s) {
  if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (gw <= 0 || gh <= 0) return CUDA_ERROR_INVALID_VALUE;
  std::uint64_t arg = 0;
  bool has_arg = false;
  {
    std::lock_guard<std::mutex> lock(g_param_mu);
    auto it = legacy_params().find(f);
    if (it != legacy_params().end() && it->second.size() >= sizeof arg) {
      std::memcpy(&arg, it->second.data(), sizeof arg);
      has_arg = true;
    }
  }
  void* params[1] = {&arg};
  return cuLaunchKernel(f, static_cast<unsigned>(gw), static_cast<unsigned>(gh), 1, 1, 1, 1, 0, s,
                        has_arg ? params : nullptr, nullptr);
}
}  // namespace

FAKE_EXPORT CUresult cuParamSetSize(CUfunction f, unsigned int bytes) {
  if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard<std::mutex> lock(g_param_mu);
  legacy_params()[f].resize(bytes);
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuParamSetv(CUfunction f, int offset, void* ptr, unsigned int bytes) {
  if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  if (offset < 0 || (ptr == nullptr && bytes != 0)) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_param_mu);
  auto& p = legacy_params()[f];
  const std::size_t end = static_cast<std::size_t>(offset) + bytes;
  if (p.size() < end) p.resize(end);
  if (bytes != 0) std::memcpy(p.data() + offset, ptr, bytes);
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuLaunch(CUfunction f) { return legacy_launch(f, 1, 1, nullptr); }
FAKE_EXPORT CUresult cuLaunchGrid(CUfunction f, int gw, int gh) {
  return legacy_launch(f, gw, gh, nullptr);
}
FAKE_EXPORT CUresult cuLaunchGridAsync(CUfunction f, int gw, int gh, CUstream s) {
  return legacy_launch(f, gw, gh, s);
}

FAKE_EXPORT CUresult cuGraphCreate(CUgraph* g, unsigned flags) {
  if (g == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  *g = new CUgraph_st;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphDestroy(CUgraph g) {
  if (g == nullptr) return CUDA_ERROR_INVALID_VALUE;
  delete g;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphAddKernelNode_v2(CUgraphNode* node, CUgraph g, const CUgraphNode*,
                                             size_t, const CUDA_KERNEL_NODE_PARAMS* p) {
  if (node == nullptr || g == nullptr || p == nullptr || p->func == nullptr) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  kernel_node n;
  n.f = p->func;
  if (p->kernelParams != nullptr && p->kernelParams[0] != nullptr) {
    n.has_arg = true;
    std::memcpy(&n.arg, p->kernelParams[0], sizeof n.arg);
  }
  g->nodes.push_back(n);
  static CUgraphNode_st k_node;  // nodes are not looked at again by the fake
  *node = &k_node;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph g,
                                                 unsigned long long flags) {
  (void)flags;
  if (exec == nullptr || g == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *exec = new CUgraphExec_st{g->nodes, g->allocs, g->frees};
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
  if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
  delete exec;
  return CUDA_SUCCESS;
}
/// A graph's allocation nodes take their memory from the graph allocator at launch (reserving
/// more on the device when it holds too little) before any node runs.
FAKE_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
  if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = fake_cuda_graph_mem(exec->allocs.data(), exec->allocs.size(), exec->frees.data(),
                                       exec->frees.size(), true);
      r != CUDA_SUCCESS) {
    return r;
  }
  for (const kernel_node& n : exec->nodes) {
    if (CUresult r = launch_node(n, s); r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s) {
  return cuGraphLaunch(exec, s);
}
/// Uploading reserves what the graph's allocation nodes need, so a later launch takes no more.
FAKE_EXPORT CUresult cuGraphUpload(CUgraphExec exec, CUstream s) {
  (void)s;
  if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
  return fake_cuda_graph_mem(exec->allocs.data(), exec->allocs.size(), exec->frees.data(),
                             exec->frees.size(), false);
}
FAKE_EXPORT CUresult cuGraphUpload_ptsz(CUgraphExec exec, CUstream s) {
  return cuGraphUpload(exec, s);
}

// ---- stream capture ------------------------------------------------------------------------

namespace {
/// One capture sequence in progress.
struct capture {
  CUgraph graph = nullptr;
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
  std::thread::id owner;     ///< the thread that began it
  bool invalidated = false;  ///< a prohibited call was made while it ran
};
std::mutex g_capture_mu;
std::map<CUstream, capture>& captures() {
  static auto* m = new std::map<CUstream, capture>;  // never destroyed: used at exit
  return *m;
}
/// The calling thread's capture interaction mode (cuThreadExchangeStreamCaptureMode).
thread_local CUstreamCaptureMode t_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
/// Potentially unsafe calls made while a capture was in progress by threads in relaxed mode.
std::atomic<std::uint64_t> g_relaxed_calls{0};
}  // namespace

FAKE_EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
  if (mode == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (*mode != CU_STREAM_CAPTURE_MODE_GLOBAL && *mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
      *mode != CU_STREAM_CAPTURE_MODE_RELAXED) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::swap(*mode, t_capture_mode);
  return CUDA_SUCCESS;
}

CUresult fake_capture_unsafe_call() {
  const std::thread::id self = std::this_thread::get_id();
  std::lock_guard<std::mutex> lock(g_capture_mu);
  if (t_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED) {
    if (!captures().empty()) g_relaxed_calls.fetch_add(1, std::memory_order_relaxed);
    return CUDA_SUCCESS;
  }
  bool prohibited = false;
  for (auto& [stream, c] : captures()) {
    const bool own = c.owner == self && c.mode != CU_STREAM_CAPTURE_MODE_RELAXED;
    const bool global = t_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && c.owner != self &&
                        c.mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
    if (own || global) {
      c.invalidated = true;
      prohibited = true;
    }
  }
  return prohibited ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
  if (s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  }
  if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
      mode != CU_STREAM_CAPTURE_MODE_RELAXED) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto [it, fresh] = captures().emplace(s, capture{});
  if (!fresh) return CUDA_ERROR_ILLEGAL_STATE;
  it->second.graph = new CUgraph_st;
  it->second.mode = mode;
  it->second.owner = std::this_thread::get_id();
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph* g) {
  if (g == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return CUDA_ERROR_ILLEGAL_STATE;
  const capture c = it->second;
  captures().erase(it);
  if (c.invalidated) {
    delete c.graph;
    *g = nullptr;
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  *g = c.graph;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
  if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  *status = it == captures().end()  ? CU_STREAM_CAPTURE_STATUS_NONE
            : it->second.invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                     : CU_STREAM_CAPTURE_STATUS_ACTIVE;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus* status) {
  return cuStreamIsCapturing(s, status);
}

bool fake_capture_kernel(CUstream s, CUfunction f, void** params) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return false;
  if (it->second.invalidated) return true;  // recorded nowhere: the capture is void
  kernel_node n;
  n.f = f;
  if (params != nullptr && params[0] != nullptr) {
    n.has_arg = true;
    std::memcpy(&n.arg, params[0], sizeof n.arg);
  }
  it->second.graph->nodes.push_back(n);
  return true;
}

bool fake_capture_mem_node(CUstream s, CUdeviceptr p, bool alloc) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return false;
  if (!it->second.invalidated) {
    CUgraph_st& g = *it->second.graph;
    (alloc ? g.allocs : g.frees).push_back(p);
    ++g.other_nodes;
  }
  return true;
}

bool fake_capture_event(CUstream s) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return false;
  if (!it->second.invalidated) ++it->second.graph->other_nodes;
  return true;
}

FAKE_EXPORT std::uint64_t fake_capture_relaxed_calls() {
  return g_relaxed_calls.load(std::memory_order_relaxed);
}

FAKE_EXPORT void fake_cuda_graph_nodes(CUgraph g, int* kernels, int* others) {
  *kernels = static_cast<int>(g->nodes.size());
  *others = g->other_nodes;
}

FAKE_EXPORT CUresult cuMemAdvise_v2(CUdeviceptr p, size_t bytes, CUmem_advise what,
                                    CUmemLocation where) {
  if (p == 0 || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_advice_mu);
  advice& a = advices()[p];
  const int device = where.type == CU_MEM_LOCATION_TYPE_DEVICE ? where.id : -1;
  if (what == CU_MEM_ADVISE_SET_PREFERRED_LOCATION) a.preferred = device;
  if (what == CU_MEM_ADVISE_SET_ACCESSED_BY) a.accessed_by = device;
  return CUDA_SUCCESS;
}

/// CUDA 13's cuMemPrefetchAsync (a location and flags instead of a device): nothing to move in
/// the fake, so it checks its arguments and succeeds.
FAKE_EXPORT CUresult cuMemPrefetchAsync_v2(CUdeviceptr p, size_t bytes, CUmemLocation where,
                                           unsigned int flags, CUstream stream) {
  (void)stream;
  if (p == 0 || bytes == 0 || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (where.type != CU_MEM_LOCATION_TYPE_DEVICE && where.type != CU_MEM_LOCATION_TYPE_HOST &&
      where.type != CU_MEM_LOCATION_TYPE_HOST_NUMA) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT int fake_cuda_advice(CUdeviceptr p, int* preferred, int* accessed_by) {
  std::lock_guard<std::mutex> lock(g_advice_mu);
  auto it = advices().find(p);
  if (it == advices().end()) return 0;
  *preferred = it->second.preferred;
  *accessed_by = it->second.accessed_by;
  return 1;
}
