#pragma once
/// \file
/// What the translation units of the shim's state share beyond shim.hpp: the clock, byte
/// formatting for log lines, and NVML's process readings. Internal to libgpuslice.so.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shim.hpp"

namespace gpuslice::shim::detail {

/// Reconciliation with the driver's per-process figure happens at most this often per device.
inline constexpr std::uint64_t k_reconcile_interval_ns = 1'000'000'000;
/// Delay before the next attempt while this process is not identified or not yet listed.
inline constexpr std::uint64_t k_retry_interval_ns = 20'000'000;

/// Probes made before giving up (each one only when NVML's readings were ambiguous).
inline constexpr int k_identify_attempts = 8;

/// CLOCK_MONOTONIC_COARSE in nanoseconds (a few ns per read: fine for intervals). Thread-safe.
std::uint64_t coarse_now_ns() noexcept;
/// "12.0 MiB (12582912 bytes)", for log lines. May throw std::bad_alloc.
std::string human(std::uint64_t bytes);

/// One reading of NVML's compute processes of a device: (pid, bytes), bytes k_not_available
/// where NVML does not know the figure (some MIG and container setups).
using process_reading = std::vector<std::pair<unsigned, std::uint64_t>>;
/// nvmlDeviceGetComputeRunningProcesses_v3.
using processes_fn = decltype(&::nvmlDeviceGetComputeRunningProcesses_v3);
/// NVML's usedGpuMemory when it does not know the figure.
inline constexpr std::uint64_t k_not_available =
    static_cast<unsigned long long>(NVML_VALUE_NOT_AVAILABLE);

/// \p dev's compute processes, or nullopt when NVML's call fails. May throw std::bad_alloc.
std::optional<process_reading> read_processes(processes_fn procs, nvmlDevice_t dev);
/// \p pid's bytes in \p r, or nullopt when NVML does not list it.
std::optional<std::uint64_t> figure(const process_reading& r, unsigned pid);

}  // namespace gpuslice::shim::detail
