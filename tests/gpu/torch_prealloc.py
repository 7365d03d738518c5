"""JAX-style preallocation with PyTorch under libgpuslice.so on a real GPU, and a second context.

One large first allocation sized from torch.cuda.mem_get_info() (what JAX's preallocation does with
XLA_PYTHON_CLIENT_MEM_FRACTION=1.0) must succeed: the view is exactly what fits, context and
modules already charged. Another 2 MiB must then be refused. Then a second context is made on the
same device through the driver API (cuCtxCreate_v4, as a library that keeps its own context does):
the shim charges it from its creation, so mem_get_info() shrinks at once by what NVML says the
process grew. One "key=value" per line; driver_held is NVML's figures summed over every process,
minus the sum before (no pid needed), as in torch_limit.py."""
import ctypes

from nvml_held import gpu_process_bytes, nvml_library

MIB = 1 << 20

nvml = nvml_library()
baseline = gpu_process_bytes(nvml)

import torch  # noqa: E402  (after the baseline: importing torch may touch CUDA)

torch.cuda.init()
torch.empty(1, device="cuda")  # the context and the allocator's first segment
torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info()
print(f"mem_get_info_total={total}")
print(f"mem_get_info_free={free}")
# The allocator rounds a large request up to 2 MiB; JAX sizes its pool the same way.
want = free // (2 * MIB) * (2 * MIB)
try:
    block = torch.empty(want, dtype=torch.uint8, device="cuda")
    print("prealloc=ok")
except torch.cuda.OutOfMemoryError:
    block = None
    print("prealloc=OutOfMemoryError")
print(f"prealloc_bytes={want}")
try:
    extra = torch.empty(2 * MIB, dtype=torch.uint8, device="cuda")
    print("extra=ok")
    del extra
except torch.cuda.OutOfMemoryError:
    print("extra=OutOfMemoryError")
torch.cuda.synchronize()
print(f"driver_held={gpu_process_bytes(nvml) - baseline}")
del block
torch.cuda.empty_cache()

# A second context on the device, through the driver API the shim interposes.
cuda = ctypes.CDLL("libcuda.so.1")
before_free, _ = torch.cuda.mem_get_info()
held_before = gpu_process_bytes(nvml)
ctx = ctypes.c_void_p()
r = cuda.cuCtxCreate_v4(ctypes.byref(ctx), None, 0, 0)
print(f"second_context={r}")
if r == 0:
    grew = gpu_process_bytes(nvml) - held_before
    free_b, total_b = ctypes.c_size_t(), ctypes.c_size_t()
    cuda.cuMemGetInfo_v2(ctypes.byref(free_b), ctypes.byref(total_b))  # in the new context
    print(f"second_context_bytes={grew}")
    print(f"free_drop={before_free - free_b.value}")
    cuda.cuCtxDestroy_v2(ctx)
