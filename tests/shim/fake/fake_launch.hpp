#pragma once
/// \file
/// The fake driver's launch paths defined in fake_launch.cpp that cuda.h does not declare (the
/// per-thread-default-stream variants), for the fake's cuGetProcAddress table, and what the fake
/// tells tests about managed memory. Test-double internals; include after cuda.h.

#include <cuda.h>

#include <cstddef>
#include <cstdint>

extern "C" {
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f, void** params,
                               void** extra);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                        unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                        CUstream s, void** params);
CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s);
CUresult cuGraphUpload_ptsz(CUgraphExec exec, CUstream s);
CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus* status);
/// True when \p stream is being captured; then records a kernel node of \p f (keeping its first
/// parameter, as graph nodes do) into the capture. Thread-safe.
bool fake_capture_kernel(CUstream stream, CUfunction f, void** params);
/// CUDA_SUCCESS when the calling thread may make a "potentially unsafe" call now; otherwise
/// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, and the captures that prohibit it are invalidated
/// (cuThreadExchangeStreamCaptureMode's rules). Thread-safe.
CUresult fake_capture_unsafe_call();
/// Potentially unsafe calls that threads in relaxed mode made while a capture was in progress
/// (allowed). Thread-safe.
std::uint64_t fake_capture_relaxed_calls();
/// cuStreamGetDevice calls so far (what a launch path asks the driver). Thread-safe.
std::uint64_t fake_cuda_stream_device_calls();
/// True when \p stream is being captured; then records an event node into the capture.
/// Thread-safe.
bool fake_capture_event(CUstream stream);
/// True when \p stream is being captured; then records an allocation node (\p alloc) or a free
/// node of graph address \p p into the capture. Thread-safe.
bool fake_capture_mem_node(CUstream stream, CUdeviceptr p, bool alloc);
/// The graph allocator's part of a launch (\p run) or an upload of a graph with allocation
/// nodes \p allocs and free nodes \p frees (fake_cuda.cpp). Thread-safe.
CUresult fake_cuda_graph_mem(const CUdeviceptr* allocs, std::size_t n_allocs,
                             const CUdeviceptr* frees, std::size_t n_frees, bool run);
/// Kernel nodes and other nodes of graph \p g (for tests of what a capture recorded).
/// Thread-safe with respect to launches.
void fake_cuda_graph_nodes(CUgraph g, int* kernels, int* others);
/// The advice cuMemAdvise recorded for the managed range at \p p: the preferred device and the
/// device it is accessed by (-1 = none). Returns 0 when no advice was given. Thread-safe.
int fake_cuda_advice(CUdeviceptr p, int* preferred, int* accessed_by);
}
