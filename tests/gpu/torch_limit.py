"""PyTorch under libgpuslice.so on a real GPU: prints mem_get_info, then allocates tensors of a
fixed size until torch raises OutOfMemoryError, then frees them and fills again with tensors twice
as large (what fits must still fit: the allocator's cached or pooled memory is given back first).
One "key=value" per line.

driver_held is what the driver really holds for this process at each refusal: NVML's per-process
figures summed over every process on every GPU, minus the same sum before this process touched
CUDA. It needs no pid (NVML lists host pids, which differ from os.getpid() in a pid namespace) and
assumes nothing else starts or frees GPU memory meanwhile. Run with
PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync to exercise stream-ordered pools."""
import sys

from nvml_held import gpu_process_bytes, nvml_library

CHUNK_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 64
MIB = 1 << 20

nvml = nvml_library()
baseline = gpu_process_bytes(nvml)

import torch  # noqa: E402  (after the baseline: importing torch may touch CUDA)

free, total = torch.cuda.mem_get_info()
print(f"mem_get_info_total={total}")
print(f"mem_get_info_free={free}")


def fill(chunk_mib):
    held = []
    refused = "none"
    try:
        while True:
            held.append(torch.empty(chunk_mib * MIB, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError as e:  # the shim's CUDA_ERROR_OUT_OF_MEMORY
        refused = type(e).__name__
    torch.cuda.synchronize()
    return held, refused


held, refused = fill(CHUNK_MIB)
print(f"refused={refused}")
print(f"tensor_bytes={len(held) * CHUNK_MIB * MIB}")
print(f"reserved={torch.cuda.memory_reserved()}")
print(f"driver_held={gpu_process_bytes(nvml) - baseline}")
free, total = torch.cuda.mem_get_info()
print(f"free_at_refusal={free}")
first = len(held) * CHUNK_MIB * MIB
del held
torch.cuda.synchronize()

# Freed, not emptied: the caching allocator (or the pool) still holds it. Fill again with chunks
# twice as large.
held, refused = fill(2 * CHUNK_MIB)
print(f"refill_refused={refused}")
print(f"refill_tensor_bytes={len(held) * 2 * CHUNK_MIB * MIB}")
print(f"refill_driver_held={gpu_process_bytes(nvml) - baseline}")
print(f"first_tensor_bytes={first}")
