/// \file
/// The fake driver's other launch paths, built into the same libcuda.so.1 as fake_cuda.cpp:
/// cuLaunchKernelEx, cooperative launches (single and multi-device), graphs of kernel nodes
/// (create, add kernel node, instantiate, launch, destroy) and cuMemAdvise. Every path ends in the
/// fake's own cuLaunchKernel (bound inside the library by -Bsymbolic, so an interposer never sees
/// these internal calls), whose stream workers "run" each kernel for its duration and add it to
/// the device's busy time: the accounting the share tests read.
///
/// A graph node keeps its kernel's first parameter as 8 bytes, which is what the fake's
/// fake_sleep_us kernel takes (its duration in microseconds); a graph launch runs its nodes in
/// order on the launch stream.

#include <cuda.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
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
  int other_nodes = 0;  ///< event nodes a capture recorded (not run by the fake)
};
struct CUgraphExec_st {
  std::vector<kernel_node> nodes;
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
  *exec = new CUgraphExec_st{g->nodes};
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
  if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
  delete exec;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
  if (exec == nullptr) return CUDA_ERROR_INVALID_VALUE;
  for (const kernel_node& n : exec->nodes) {
    if (CUresult r = launch_node(n, s); r != CUDA_SUCCESS) return r;
  }
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s) {
  return cuGraphLaunch(exec, s);
}

// ---- stream capture ------------------------------------------------------------------------

namespace {
std::mutex g_capture_mu;
std::map<CUstream, CUgraph>& captures() {
  static auto* m = new std::map<CUstream, CUgraph>;  // never destroyed: used at exit
  return *m;
}
}  // namespace

FAKE_EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode) {
  if (s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  }
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto [it, fresh] = captures().emplace(s, nullptr);
  if (!fresh) return CUDA_ERROR_ILLEGAL_STATE;
  it->second = new CUgraph_st;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph* g) {
  if (g == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return CUDA_ERROR_ILLEGAL_STATE;
  *g = it->second;
  captures().erase(it);
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
  if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(g_capture_mu);
  *status =
      captures().count(s) != 0 ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus* status) {
  return cuStreamIsCapturing(s, status);
}

bool fake_capture_kernel(CUstream s, CUfunction f, void** params) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return false;
  kernel_node n;
  n.f = f;
  if (params != nullptr && params[0] != nullptr) {
    n.has_arg = true;
    std::memcpy(&n.arg, params[0], sizeof n.arg);
  }
  it->second->nodes.push_back(n);
  return true;
}

bool fake_capture_event(CUstream s) {
  std::lock_guard<std::mutex> lock(g_capture_mu);
  auto it = captures().find(s);
  if (it == captures().end()) return false;
  ++it->second->other_nodes;
  return true;
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

FAKE_EXPORT int fake_cuda_advice(CUdeviceptr p, int* preferred, int* accessed_by) {
  std::lock_guard<std::mutex> lock(g_advice_mu);
  auto it = advices().find(p);
  if (it == advices().end()) return 0;
  *preferred = it->second.preferred;
  *accessed_by = it->second.accessed_by;
  return 1;
}
