"""What the driver holds for every process, read from NVML through ctypes: the GPU checks'
physical measure. NVML lists host pids (which differ from os.getpid() in a pid namespace), so the
checks compare the sum over every process on every GPU before and after, assuming nothing else
starts or frees GPU memory meanwhile."""
import ctypes

NVML_VALUE_NOT_AVAILABLE = (1 << 64) - 1


class _ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_t (v2/v3 layout)
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


def nvml_library():
    """libnvidia-ml, initialised."""
    lib = ctypes.CDLL("libnvidia-ml.so.1")
    if lib.nvmlInit_v2() != 0:
        raise RuntimeError("nvmlInit_v2 failed")
    return lib


def gpu_process_bytes(lib):
    """NVML's usedGpuMemory summed over every compute process of every GPU."""
    count = ctypes.c_uint(0)
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        raise RuntimeError("nvmlDeviceGetCount_v2 failed")
    total = 0
    for i in range(count.value):
        dev = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(dev)) != 0:
            raise RuntimeError(f"nvmlDeviceGetHandleByIndex_v2({i}) failed")
        n = ctypes.c_uint(256)
        infos = (_ProcessInfo * 256)()
        if lib.nvmlDeviceGetComputeRunningProcesses_v3(dev, ctypes.byref(n), infos) != 0:
            raise RuntimeError("nvmlDeviceGetComputeRunningProcesses_v3 failed")
        total += sum(p.usedGpuMemory for p in infos[:n.value]
                     if p.usedGpuMemory != NVML_VALUE_NOT_AVAILABLE)
    return total
