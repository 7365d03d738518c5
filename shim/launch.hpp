#pragma once
/// \file
/// The launch paths of libgpuslice.so: the entry points that start GPU work (kernels, cooperative
/// kernels, graphs, the legacy cuLaunch family), which the SM limiter admits, and the driver functions the launch path uses
/// to time a sample of launches. Included by shim.hpp, after cuda.h and nvml.h; the hooks are
/// defined in launch.cpp.

#include <cuda.h>
#include <nvml.h>

// The per-thread-default-stream variants, which cuda.h declares only when a program selects
// them at compile time. The driver exports all of them.
extern "C" {
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int grid_x, unsigned int grid_y,
                             unsigned int grid_z, unsigned int block_x, unsigned int block_y,
                             unsigned int block_z, unsigned int shared_bytes, CUstream stream,
                             void** params, void** extra);
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f, void** params,
                               void** extra);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int grid_x, unsigned int grid_y,
                                        unsigned int grid_z, unsigned int block_x,
                                        unsigned int block_y, unsigned int block_z,
                                        unsigned int shared_bytes, CUstream stream, void** params);
CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream);
CUresult cuEventRecord_ptsz(CUevent event, CUstream stream);
CUresult cuStreamIsCapturing_ptsz(CUstream stream, CUstreamCaptureStatus* status);
}

// cuLaunchCooperativeKernelMultiDevice and the legacy cuLaunch, cuLaunchGrid and
// cuLaunchGridAsync are deprecated, yet programs built against older toolkits still call them and
// the driver still exports them: the shim must admit them like any launch, so it names them (its
// hook table takes their addresses) without the deprecation warning.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

/// Launch entry points the limiter admits, in the form of GPUSLICE_HOOKS in shim.hpp.
#define GPUSLICE_LAUNCH_HOOKS(X)                                                                \
  X(cuLaunchKernel, "cuLaunchKernel", 4000, legacy, cuda, decltype(&::cuLaunchKernel))          \
  X(cuLaunchKernel_ptsz, "cuLaunchKernel", 7000, per_thread, cuda,                              \
    decltype(&::cuLaunchKernel_ptsz))                                                           \
  X(cuLaunchKernelEx, "cuLaunchKernelEx", 11060, legacy, cuda, decltype(&::cuLaunchKernelEx))   \
  X(cuLaunchKernelEx_ptsz, "cuLaunchKernelEx", 11060, per_thread, cuda,                         \
    decltype(&::cuLaunchKernelEx_ptsz))                                                         \
  X(cuLaunchCooperativeKernel, "cuLaunchCooperativeKernel", 9000, legacy, cuda,                 \
    decltype(&::cuLaunchCooperativeKernel))                                                     \
  X(cuLaunchCooperativeKernel_ptsz, "cuLaunchCooperativeKernel", 9000, per_thread, cuda,        \
    decltype(&::cuLaunchCooperativeKernel_ptsz))                                                \
  X(cuLaunchCooperativeKernelMultiDevice, "cuLaunchCooperativeKernelMultiDevice", 9000, legacy, \
    cuda, decltype(&::cuLaunchCooperativeKernelMultiDevice))                                    \
  X(cuGraphLaunch, "cuGraphLaunch", 10000, legacy, cuda, decltype(&::cuGraphLaunch))            \
  X(cuGraphLaunch_ptsz, "cuGraphLaunch", 10000, per_thread, cuda, decltype(&::cuGraphLaunch_ptsz)) \
  X(cuLaunch, "cuLaunch", 2000, legacy, cuda, decltype(&::cuLaunch))                            \
  X(cuLaunchGrid, "cuLaunchGrid", 2000, legacy, cuda, decltype(&::cuLaunchGrid))                \
  X(cuLaunchGridAsync, "cuLaunchGridAsync", 2000, legacy, cuda, decltype(&::cuLaunchGridAsync))

/// Driver and NVML functions the launch path calls without hooking them, in the form of
/// GPUSLICE_HELPERS in shim.hpp.
#define GPUSLICE_LAUNCH_HELPERS(X)                                         \
  X(cuCtxGetCurrent, cuda, decltype(&::cuCtxGetCurrent))                   \
  X(cuCtxSetCurrent, cuda, decltype(&::cuCtxSetCurrent))                   \
  X(cuEventCreate, cuda, decltype(&::cuEventCreate))                       \
  X(cuEventDestroy_v2, cuda, decltype(&::cuEventDestroy_v2))               \
  X(cuEventRecord, cuda, decltype(&::cuEventRecord))                       \
  X(cuEventRecord_ptsz, cuda, decltype(&::cuEventRecord_ptsz))             \
  X(cuEventQuery, cuda, decltype(&::cuEventQuery))                         \
  X(cuEventElapsedTime_v2, cuda, decltype(&::cuEventElapsedTime_v2))       \
  X(cuMemAdvise_v2, cuda, decltype(&::cuMemAdvise_v2))                     \
  X(cuStreamIsCapturing, cuda, decltype(&::cuStreamIsCapturing))           \
  X(cuStreamIsCapturing_ptsz, cuda, decltype(&::cuStreamIsCapturing_ptsz)) \
  X(cuThreadExchangeStreamCaptureMode, cuda,                               \
    decltype(&::cuThreadExchangeStreamCaptureMode))                        \
  X(nvmlDeviceGetProcessUtilization, nvml, decltype(&::nvmlDeviceGetProcessUtilization))
