"""Start-up at scale: N processes of one container start at once, each timing itself from the
common start to its first allocation (tests/shim/clients/client_nvml.cpp, scenario first_alloc),
on the fake driver, once without the shim (the baseline) and once under it with one shared
ledger. Prints the p50, p99 and maximum of each and what the shim adds.

Usage: python3 bench/shim_startup.py BUILD_DIR [N]   (BUILD_DIR: a build with the shim tests)
"""
import os
import subprocess
import sys
import tempfile
import time


def run(build, n, shim):
    client = os.path.join(build, "tests/shim/shim_client_nvml")
    fake = os.path.join(build, "tests/shim/fake")
    ledger_dir = tempfile.mkdtemp(prefix="gpuslice-startup-")
    env = dict(os.environ, LD_LIBRARY_PATH=fake, FAKE_CUDA_MEMORY="64Gi",
               FAKE_CUDA_CONTEXT_BYTES="8Mi", CUDA_DEVICE_MEMORY_LIMIT="32Gi",
               CUDA_DEVICE_MEMORY_SHARED_CACHE=os.path.join(ledger_dir, "ledger"))
    if shim:
        env["LD_PRELOAD"] = os.path.join(build, "shim/libgpuslice.so")
    env["CLIENT_T0_NS"] = str(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    procs = [subprocess.Popen([client, "first_alloc"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
    times = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a client failed ({p.returncode}): {out}")
        times.append(int(out.strip().rsplit("=", 1)[1]))
    times.sort()
    return times


def pct(sorted_ns, q):
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def main():
    build = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    bare = run(build, n, shim=False)
    under = run(build, n, shim=True)
    print(f"{n} processes at once, time to first allocation (ms): p50 / p99 / max")
    print(f"  fake driver alone: {pct(bare, .5):8.1f} / {pct(bare, .99):8.1f} / {bare[-1] / 1e6:8.1f}")
    print(f"  under the shim:    {pct(under, .5):8.1f} / {pct(under, .99):8.1f} / "
          f"{under[-1] / 1e6:8.1f}")
    print(f"  added at p99: {pct(under, .99) - pct(bare, .99):+.1f} ms")


if __name__ == "__main__":
    main()
