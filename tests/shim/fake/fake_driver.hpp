#pragma once
/// \file
/// What the fake CUDA driver (libcuda.so.1 built from fake_cuda.cpp) exports beyond the driver
/// API, so the fake NVML (libnvidia-ml.so.1) in the same process reports the same devices.
/// These are test-double internals, not driver names.

#include <cstdint>

extern "C" {
/// Number of physical fake devices (FAKE_CUDA_DEVICES, 1..4). Thread-safe.
int fake_cuda_physical_count();
/// Total bytes of physical device \p p. Thread-safe.
std::uint64_t fake_cuda_physical_total(int p);
/// Bytes this process holds on physical device \p p: allocations, pool reserves and the
/// driver's own memory (contexts, modules, first pool uses). Thread-safe.
std::uint64_t fake_cuda_physical_used(int p);
/// Live contexts of this process on physical device \p p. Thread-safe.
int fake_cuda_physical_contexts(int p);
/// 1 when cuInit succeeded in this process (reading the devices above never initialises the
/// driver API, as NVML does not). Thread-safe.
int fake_cuda_initialised();
/// The 16 UUID bytes of physical device \p p. Thread-safe.
void fake_cuda_physical_uuid(int p, unsigned char out[16]);
/// Microseconds of kernel time this process ran on physical device \p p. Thread-safe.
std::uint64_t fake_cuda_physical_busy_us(int p);
}
