"""PyTorch under libgpuslice.so on a real GPU: prints mem_get_info, then allocates tensors of a
fixed size until torch raises OutOfMemoryError. One "key=value" per line."""
import sys

import torch

CHUNK_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 64
MIB = 1 << 20

free, total = torch.cuda.mem_get_info()
print(f"mem_get_info_total={total}")
print(f"mem_get_info_free={free}")
held = []
refused = "none"
try:
    while True:
        held.append(torch.empty(CHUNK_MIB * MIB, dtype=torch.uint8, device="cuda"))
except torch.cuda.OutOfMemoryError as e:  # the shim's CUDA_ERROR_OUT_OF_MEMORY
    refused = type(e).__name__
print(f"refused={refused}")
print(f"tensor_bytes={len(held) * CHUNK_MIB * MIB}")
print(f"reserved={torch.cuda.memory_reserved()}")
free, total = torch.cuda.mem_get_info()
print(f"free_at_refusal={free}")
