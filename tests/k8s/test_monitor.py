"""The metrics exporter against ledgers written through gpuslice.Ledger, parsed with
prometheus_client's text parser: HAMi's families and labels, the legacy ones, gpuslice's own,
unreadable ledgers skipped with a reason and a counter, stale containers kept visible."""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import load_gpuslice

MONITOR = os.environ.get("GPUSLICE_MONITOR", "")
FAKE_DIR = os.environ.get("GPUSLICE_FAKE_NVML_DIR", "")
SHIM = os.environ.get("GPUSLICE_SHIM_PRELOAD", "")
LAUNCH_CLIENT = os.environ.get("GPUSLICE_SHIM_LAUNCH_CLIENT", "")
gpuslice = load_gpuslice()
pytestmark = pytest.mark.skipif(not os.path.exists(MONITOR),
                                reason="needs GPUSLICE_MONITOR (run through ctest)")
needs_ledger = pytest.mark.skipif(gpuslice is None,
                                  reason="needs the gpuslice package (its _core module)")

UA = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
UB = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
MIB = 1 << 20


class Monitor:
    def __init__(self, ledger_dir, args=(), env=None):
        e = dict(os.environ, **(env or {}))
        self.log = []
        self.proc = subprocess.Popen(
            [MONITOR, "--ledger-dir", ledger_dir, "--listen", "127.0.0.1:0", "--node-name", "n1",
             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        self.port = int(self.proc.stdout.readline())
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def text(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            assert r.status == 200
            return r.read().decode()

    def scrape(self):
        """{sample name: {frozenset(labels): value}} of one scrape."""
        out = {}
        for fam in text_string_to_metric_families(self.text()):
            for s in fam.samples:
                out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
        return out

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self._reader.join()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


@pytest.fixture
def ledger_dir():
    d = tempfile.mkdtemp(prefix="gsmon")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def ledger(ledger_dir, uid, container, limits):
    d = os.path.join(ledger_dir, f"{uid}_{container}")
    os.makedirs(d, exist_ok=True)
    return gpuslice.Ledger.create(os.path.join(d, "gpuslice.cache"), limits)


def labels(**kw):
    return frozenset(kw.items())


@needs_ledger
def test_hami_families_and_labels_match_the_ledgers(ledger_dir, fake_apiserver):
    pod = fake_apiserver.add_pod("train", namespace="ml", node_name="n1")
    uid = pod["metadata"]["uid"]
    l1 = ledger(ledger_dir, uid, "main", {UA: "1Gi", UB: "2Gi"})
    assert l1.try_reserve(UA, 100 * MIB) and l1.try_reserve(UB, 300 * MIB)
    l1.set_sm_limit(UA, 30)
    l2 = ledger(ledger_dir, "0f0f-uid-unknown", "side", {UA: "512Mi"})
    env = {"LD_LIBRARY_PATH": FAKE_DIR, "FAKE_CUDA_DEVICES": "2", "FAKE_CUDA_MEMORY": "16Gi"}
    m = Monitor(ledger_dir, ["--api-server", fake_apiserver.url], env=env)
    try:
        s = m.scrape()
    finally:
        assert m.close() == 0
    base = dict(namespace="ml", pod="train", container="main", node="n1", zone="vGPU")
    used = s["hami_vgpu_memory_used_bytes"]
    assert used[labels(**base, vdevice_index="0", device_uuid=UA)] == l1.used(UA) == 100 * MIB
    assert used[labels(**base, vdevice_index="1", device_uuid=UB)] == l1.used(UB) == 300 * MIB
    limit = s["hami_vgpu_memory_limit_bytes"]
    assert limit[labels(**base, vdevice_index="1", device_uuid=UB)] == l1.limit(UB) == 2 << 30
    assert s["gpuslice_vgpu_sm_limit_percent"][
        labels(**base, vdevice_index="0", device_uuid=UA)] == 30
    # a pod the API server does not know: its uid stands in, the namespace is empty
    other = dict(namespace="", pod="0f0f-uid-unknown", container="side", node="n1", zone="vGPU")
    assert limit[labels(**other, vdevice_index="0", device_uuid=UA)] == l2.limit(UA)
    assert used[labels(**other, vdevice_index="0", device_uuid=UA)] == 0
    # this test process charged l1, not l2
    assert s["gpuslice_container_processes"][labels(**base)] == 1
    assert s["gpuslice_container_processes"][labels(**other)] == 0
    assert s["gpuslice_container_stale"][labels(**base)] == 0
    assert s["gpuslice_container_last_update_timestamp_seconds"][labels(**base)] > 0
    # the host GPUs from NVML (the fake: two 16 GiB devices, none of their memory used here)
    host = s["hami_host_gpu_memory_used_bytes"]
    assert len(host) == 2
    types = {dict(k)["device_type"] for k in host}
    assert types == {"NVIDIA-Fake GPU 0", "NVIDIA-Fake GPU 1"}
    assert all(dict(k)["zone"] == "vGPU" and dict(k)["node"] == "n1" for k in host)
    util = s["hami_host_gpu_utilization_ratio"]
    assert set(util) == set(host) and all(0 <= v <= 100 for v in util.values())
    # no legacy families unless asked
    assert "vGPU_device_memory_usage_in_bytes" not in s
    assert "HostCoreUtilization" not in s


@needs_ledger
def test_legacy_families_on_request(ledger_dir):
    l1 = ledger(ledger_dir, "uid-1", "c", {UA: "1Gi"})
    assert l1.try_reserve(UA, 5 * MIB)
    env = {"LD_LIBRARY_PATH": FAKE_DIR, "FAKE_CUDA_DEVICES": "1", "FAKE_CUDA_MEMORY": "4Gi"}
    m = Monitor(ledger_dir, ["--legacy-metrics"], env=env)
    try:
        s = m.scrape()
    finally:
        assert m.close() == 0
    (host,) = s["HostGPUMemoryUsage"]
    assert dict(host)["nodeid"] == "n1" and dict(host)["deviceidx"] == "0"
    assert dict(host)["devicetype"] == "NVIDIA-Fake GPU 0"
    assert set(s["HostCoreUtilization"]) == {host}
    key = labels(podnamespace="", podname="uid-1", ctrname="c", vdeviceid="0", deviceuuid=UA)
    assert s["vGPU_device_memory_usage_in_bytes"][key] == 5 * MIB
    assert s["vGPU_device_memory_limit_in_bytes"][key] == 1 << 30
    assert "hami_vgpu_memory_used_bytes" in s  # the current names stay


@needs_ledger
def test_unreadable_ledgers_are_skipped_with_a_reason_and_a_counter(ledger_dir):
    good = ledger(ledger_dir, "uid-good", "c", {UA: "1Gi"})
    assert good.try_reserve(UA, MIB)
    os.makedirs(os.path.join(ledger_dir, "uid-bad_c"))
    with open(os.path.join(ledger_dir, "uid-bad_c", "gpuslice.cache"), "wb") as f:
        f.write(b"not a ledger at all" * 100)
    os.makedirs(os.path.join(ledger_dir, "uid-empty_c"))
    open(os.path.join(ledger_dir, "uid-empty_c", "gpuslice.cache"), "wb").close()
    os.makedirs(os.path.join(ledger_dir, "nounderscore"))
    m = Monitor(ledger_dir, ["--no-nvml"])
    try:
        for _ in range(3):
            s = m.scrape()
    finally:
        assert m.close() == 0
    pods = {dict(k)["pod"] for k in s["hami_vgpu_memory_used_bytes"]}
    assert pods == {"uid-good"}
    errors = {dict(k)["reason"]: v for k, v in s["gpuslice_monitor_ledger_errors_total"].items()}
    assert sum(errors.values()) == 9  # three bad entries, three scrapes
    assert errors["directory_name"] == 3
    # each bad ledger logged once, naming its file, however often it is scraped
    for name in ("uid-bad_c", "uid-empty_c", "nounderscore"):
        assert sum(name in line for line in m.log) == 1, m.log


@needs_ledger
def test_a_stale_container_stays_visible_with_its_last_values(ledger_dir):
    path = os.path.join(ledger_dir, "uid-1_c", "gpuslice.cache")
    l1 = ledger(ledger_dir, "uid-1", "c", {UA: "1Gi"})
    assert l1.try_reserve(UA, 7 * MIB)
    key = labels(namespace="", pod="uid-1", container="c", node="n1", zone="vGPU")
    dev = labels(namespace="", pod="uid-1", container="c", node="n1", zone="vGPU",
                 vdevice_index="0", device_uuid=UA)
    m = Monitor(ledger_dir, ["--no-nvml"])
    try:
        s1 = m.scrape()
        assert s1["gpuslice_container_stale"][key] == 0
        updated = s1["gpuslice_container_last_update_timestamp_seconds"][key]
        with open(path, "rb") as f:
            saved = f.read(64)
        with open(path, "r+b") as f:
            f.write(b"\0" * 64)  # the header destroyed: the file is no longer a ledger
        s2 = m.scrape()
        assert s2["gpuslice_container_stale"][key] == 1
        assert s2["hami_vgpu_memory_used_bytes"][dev] == 7 * MIB  # not a silent 0
        assert s2["gpuslice_container_last_update_timestamp_seconds"][key] == updated
        with open(path, "r+b") as f:
            f.write(saved)
        s3 = m.scrape()
        assert s3["gpuslice_container_stale"][key] == 0
        assert s3["gpuslice_container_last_update_timestamp_seconds"][key] >= updated
        # a container whose directory is removed is gone
        shutil.rmtree(os.path.dirname(path))
        s4 = m.scrape()
        assert key not in s4.get("gpuslice_container_stale", {})
    finally:
        assert m.close() == 0


@needs_ledger
def test_reaps_of_a_dead_process_are_counted(ledger_dir):
    l1 = ledger(ledger_dir, "uid-1", "c", {UA: "1Gi"})
    pid = os.fork()
    if pid == 0:  # a process that charges the ledger and dies without releasing
        child = gpuslice.Ledger.open(l1.path)
        os._exit(0 if child.try_reserve(UA, 64 * MIB) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert l1.used(UA) == 64 * MIB
    assert l1.reap() == 64 * MIB
    key = labels(namespace="", pod="uid-1", container="c", node="n1", zone="vGPU")
    m = Monitor(ledger_dir, ["--no-nvml"])
    try:
        s = m.scrape()
    finally:
        assert m.close() == 0
    assert s["gpuslice_container_reaps_total"][key] == 1
    assert s["gpuslice_container_reclaimed_bytes_total"][key] == 64 * MIB
    assert s["gpuslice_container_processes"][key] == 0


@pytest.mark.parametrize("args, expected", [
    (["--listen", "nohost"], '--listen "nohost": expected HOST:PORT'),
    (["--bogus"], '"--bogus": unknown flag'),
    (["--api-server", "ftp://x"], "expected http://host:port"),
])
def test_bad_flags_get_one_clear_line(args, expected):
    r = subprocess.run([MONITOR, "--node-name", "n1", "--no-nvml", *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r.stderr


@pytest.mark.skipif(not (SHIM and os.path.exists(LAUNCH_CLIENT) and os.path.isdir(FAKE_DIR)),
                    reason="needs the shim, its launch client and the fake driver (ctest)")
def test_the_sm_limiters_statistics_from_a_process_under_the_shim(ledger_dir):
    d = os.path.join(ledger_dir, "uid-1_c")
    os.makedirs(d)
    path = os.path.join(d, "gpuslice.cache")
    env = dict(os.environ, LD_LIBRARY_PATH=FAKE_DIR, FAKE_CUDA_MEMORY="1Gi", LD_PRELOAD=SHIM,
               GPU_CORE_UTILIZATION_POLICY="force", CUDA_DEVICE_SM_LIMIT="30",
               CUDA_DEVICE_MEMORY_SHARED_CACHE=path)
    m = Monitor(ledger_dir, ["--no-nvml", "--legacy-metrics"])
    try:
        t0 = time.monotonic()
        # a launch storm held to 30% by the shim's limiter, which keeps its bucket in the ledger
        proc = subprocess.Popen([LAUNCH_CLIENT, "share", "kernel", "30"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        achieved = []
        while proc.poll() is None:
            sample = m.scrape()
            got = list(sample.get("gpuslice_vgpu_achieved_share_ratio", {}).values())
            # HAMi's container utilization (and its legacy name) is the same reading, in percent
            hami = list(sample.get("hami_container_device_utilization_ratio", {}).values())
            legacy = list(sample.get("Device_utilization_desc_of_container", {}).values())
            assert hami == pytest.approx([a * 100 for a in got])
            assert legacy == pytest.approx(hami)
            achieved += got
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
        wall = time.monotonic() - t0
        assert proc.returncode == 0, out + err
        s = m.scrape()
    finally:
        assert m.close() == 0
    (key,) = s["gpuslice_vgpu_sm_share_ratio"]
    assert dict(key)["pod"] == "uid-1" and dict(key)["vdevice_index"] == "0"
    assert s["gpuslice_vgpu_sm_share_ratio"][key] == pytest.approx(0.3)
    gpu = s["gpuslice_vgpu_gpu_time_seconds_total"][key]
    throttled = s["gpuslice_vgpu_throttled_seconds_total"][key]
    # tokens accrue at the share: the charged GPU time cannot outrun the wall clock, and a storm
    # at 30% must have been held back
    assert 0 < gpu <= wall
    assert throttled > 0
    assert achieved and all(0 <= a <= 1 for a in achieved), achieved
