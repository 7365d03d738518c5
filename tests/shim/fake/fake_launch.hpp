#pragma once
/// \file
/// The fake driver's launch paths defined in fake_launch.cpp that cuda.h does not declare (the
/// per-thread-default-stream variants), for the fake's cuGetProcAddress table, and what the fake
/// tells tests about managed memory. Test-double internals; include after cuda.h.

#include <cuda.h>

extern "C" {
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f, void** params,
                               void** extra);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                        unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                        CUstream s, void** params);
CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s);
/// The advice cuMemAdvise recorded for the managed range at \p p: the preferred device and the
/// device it is accessed by (-1 = none). Returns 0 when no advice was given. Thread-safe.
int fake_cuda_advice(CUdeviceptr p, int* preferred, int* accessed_by);
}
