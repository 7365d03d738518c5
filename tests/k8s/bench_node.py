"""Node-side benchmarks (bench/README.md): Allocate latency over 1,000 calls, and /metrics scrape
time with 100 containers, each against a baseline measured in the same run.

  GPUSLICE_DEVICE_PLUGIN=... GPUSLICE_MONITOR=... GPUSLICE_FAKE_NVML_DIR=... \\
  GPUSLICE_CORE_MODULE=... python3 tests/k8s/bench_node.py [--calls 1000] [--containers 100]

Allocate: the kubelet-shaped client calls Allocate on the plugin (fake NVML, fake API server);
before each call the test adds a pod waiting for its devices (the node keeps the 50 newest).
Baseline: the API-server work Allocate cannot avoid, done from Python: the pod LIST with the
node's field selector and one merge PATCH, on the same fake API server.
Scrape: GET /metrics of gpuslice-monitor over 100 ledgers of 2 devices. Baseline: reading the
same 100 ledgers with gpuslice.read_ledger_snapshot in Python.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import load_gpuslice  # noqa: E402
from fake_apiserver import FakeAPIServer  # noqa: E402
from test_device_plugin import Node, first_list, gpu_pod, uuids_of  # noqa: E402
from test_monitor import Monitor, ledger  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def report(name, xs, base):
    p50, p99, b50, b99 = pct(xs, 50), pct(xs, 99), pct(base, 50), pct(base, 99)
    print(f"{name}: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms; baseline p50 "
          f"{b50 * 1e3:.2f} ms, p99 {b99 * 1e3:.2f} ms; ratio p50 {p50 / b50:.2f}, "
          f"p99 {p99 / b99:.2f}")


def bench_allocate(calls):
    with FakeAPIServer(history=100) as api:
        node = Node(api, args=["--register-interval-ms", "30000"])
        try:
            with node.kubelet.plugin() as client:
                stream, first = first_list(client)
                stream.cancel()
                u0 = uuids_of(first)[0]
                lat, base = [], []
                for i in range(calls):
                    gpu_pod(api, f"p{i}", [("c", [(u0, 1024, 10)])])
                    t = time.perf_counter()
                    client.allocate([f"{u0}-0"])
                    lat.append(time.perf_counter() - t)
                    if i >= 50:
                        api.delete("pods", f"p{i - 50}")
                # baseline: the LIST and the PATCH, from Python
                for i in range(calls):
                    name = f"b{i}"
                    gpu_pod(api, name, [("c", [(u0, 1024, 10)])], phase="success")
                    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
                    t = time.perf_counter()
                    conn.request("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")
                    json.loads(conn.getresponse().read())
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
                    body = json.dumps({"metadata": {"annotations": {"x": str(i)}}})
                    conn.request("PATCH", f"/api/v1/namespaces/default/pods/{name}", body=body,
                                 headers={"Content-Type": "application/merge-patch+json"})
                    conn.getresponse().read()
                    base.append(time.perf_counter() - t)
                    conn.close()
                    api.delete("pods", name)
            report(f"Allocate ({calls} calls)", lat, base)
        finally:
            node.close()


def bench_scrape(containers, scrapes=50):
    import shutil
    import tempfile

    gpuslice = load_gpuslice()
    d = tempfile.mkdtemp(prefix="gsbench")
    try:
        paths = []
        for i in range(containers):
            lg = ledger(d, f"uid-{i:04d}", "c", {"GPU-a": "8Gi", "GPU-b": "8Gi"})
            lg.try_reserve("GPU-a", (i + 1) << 20)
            paths.append(lg.path)
        m = Monitor(d, ["--no-nvml"])
        try:
            lat = []
            for _ in range(scrapes):
                t = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics") as r:
                    r.read()
                lat.append(time.perf_counter() - t)
        finally:
            m.close()
        base = []
        for _ in range(scrapes):
            t = time.perf_counter()
            for p in paths:
                gpuslice.read_ledger_snapshot(p)
            base.append(time.perf_counter() - t)
        report(f"/metrics scrape ({containers} containers, {scrapes} scrapes)", lat, base)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--containers", type=int, default=100)
    a = ap.parse_args()
    bench_allocate(a.calls)
    bench_scrape(a.containers)


if __name__ == "__main__":
    main()
