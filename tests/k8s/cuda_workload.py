"""The start of the process the end-to-end tests run in a container: the CUDA driver API through
ctypes, resolved in the global scope so the preloaded shim answers first, as it does for any
dynamically linked program. It leaves `cu` (the driver), `ok` (exit on a non-zero CUresult),
`dev`, `ctx` (the primary context, current) and `total` (cuDeviceTotalMem) for the test's own
lines that follow."""
import textwrap

PRELUDE = textwrap.dedent("""
    import ctypes, sys
    ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    cu = ctypes.CDLL(None)
    def ok(r, what):
        if r != 0:
            sys.exit(f"{what}: CUresult {r}")
    ok(cu.cuInit(0), "cuInit")
    dev, ctx, total = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_size_t()
    ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ok(cu.cuDeviceTotalMem_v2(ctypes.byref(total), dev), "cuDeviceTotalMem")
    ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
""")


def script(body: str) -> str:
    """PRELUDE followed by \\p body (dedented)."""
    return PRELUDE + textwrap.dedent(body)
