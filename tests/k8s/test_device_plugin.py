"""The device plugin as kubelet and the API server see it: a kubelet-shaped gRPC client
(kubelet.py) on unix sockets, the fake API server, and the fake NVML from the shim's tests.

The binary and the fake NVML come from the CMake build (ctest sets GPUSLICE_DEVICE_PLUGIN and
GPUSLICE_FAKE_NVML_DIR)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

from kubelet import Kubelet
from waiting import wait_for

PLUGIN = os.environ.get("GPUSLICE_DEVICE_PLUGIN", "")
FAKE_DIR = os.environ.get("GPUSLICE_FAKE_NVML_DIR", "")
pytestmark = pytest.mark.skipif(
    not (os.path.exists(PLUGIN) and os.path.isdir(FAKE_DIR)),
    reason="needs GPUSLICE_DEVICE_PLUGIN and GPUSLICE_FAKE_NVML_DIR (run through ctest)")

REGISTER = "hami.io/node-nvidia-register"
HANDSHAKE = "hami.io/node-handshake"
TO_ALLOCATE = "hami.io/vgpu-devices-to-allocate"
PHASE = "hami.io/bind-phase"
REASON = "gpuslice.io/bind-failure-reason"
SPLIT = 10
GIB = 1 << 30




class Node:
    """A node: the plugin process, a kubelet, a host hook directory and the NVML faults file."""

    def __init__(self, api, args=(), devices=2, memory="16Gi", register=True, env=None):
        self.api = api
        # unix socket paths must stay short (108 bytes): a short directory under /tmp
        self.dir = tempfile.mkdtemp(prefix="gsdp", dir="/tmp")
        self.kubelet_dir = os.path.join(self.dir, "k")
        self.hook = os.path.join(self.dir, "hook")
        self.faults = os.path.join(self.dir, "faults")
        os.makedirs(self.kubelet_dir)
        open(self.faults, "w").close()
        if api.get("nodes", "n1") is None:
            api.add_node("n1")
        self.kubelet = Kubelet(self.kubelet_dir)
        self.args = ["--node-name", "n1", "--api-server", api.url,
                     "--kubelet-dir", self.kubelet_dir, "--host-hook-path", self.hook,
                     "--register-interval-ms", "100", "--health-interval-ms", "50",
                     "--watch-interval-ms", "50", *args]
        self.env = dict(os.environ, LD_LIBRARY_PATH=FAKE_DIR, FAKE_CUDA_DEVICES=str(devices),
                        FAKE_CUDA_MEMORY=memory, FAKE_NVML_FAULTS=self.faults, **(env or {}))
        self.env.pop("NODE_NAME", None)
        self.proc = None
        self.start()
        if register:
            self.kubelet.wait_registrations(1)

    def start(self):
        self.log = []
        self.proc = subprocess.Popen([PLUGIN, *self.args], env=self.env, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc, self.log))
        self._reader.start()

    @staticmethod
    def _read(proc, log):
        for line in proc.stderr:
            log.append(line.rstrip("\n"))

    def stop(self):
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=15)
        self._reader.join()
        self.proc.stderr.close()
        self.proc = None
        return rc

    def close(self):
        rc = self.stop()
        self.kubelet.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc

    def fault(self, text):
        with open(self.faults + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.faults + ".tmp", self.faults)

    def registration(self):
        node = self.api.get("nodes", "n1")
        reg = node["metadata"].get("annotations", {}).get(REGISTER)
        return json.loads(reg) if reg else None

    def node_patches(self):
        return [m for m in self.api.mutations
                if m["method"] == "PATCH" and m["path"] == "/api/v1/nodes/n1"]

    def pod_mutations(self):
        return [m for m in self.api.mutations if "/pods" in m["path"]]


@pytest.fixture
def node(fake_apiserver):
    n = Node(fake_apiserver)
    yield n
    assert n.close() == 0, "\n".join(n.log)


def encode(containers):
    return "".join("".join(f"{u},NVIDIA,{m},{c}:" for u, m, c in devs) + ";"
                   for devs in containers)


def gpu_pod(api, name, containers, node_name="n1", env=None, limits=None, phase="allocating",
            annotation=None):
    """A pod the scheduler placed: containers is [(container name, [(uuid, MiB, cores)])]."""
    specs = []
    for i, (cname, devs) in enumerate(containers):
        c = {"name": cname, "resources": {"limits": {"nvidia.com/gpu": str(len(devs))}}}
        if env and i in env:
            c["env"] = env[i]
        if limits and i in limits:
            c["resources"]["limits"].update(limits[i])
        specs.append(c)
    ann = {"hami.io/vgpu-node": "n1", PHASE: phase,
           TO_ALLOCATE: annotation if annotation is not None else encode([d for _, d in containers])}
    return api.add_pod(name, node_name=node_name, annotations=ann, containers=specs)


def first_list(client):
    stream = client.list_and_watch()
    first = next(stream)
    return stream, first


def uuids_of(resp):
    out = []
    for d in resp.devices:
        u = d.ID.rsplit("-", 1)[0]
        if u not in out:
            out.append(u)
    return out


def test_registers_advertises_and_writes_the_annotation_once(node, fake_apiserver):
    reg = node.kubelet.wait_registrations(1)[0]
    assert reg.version == "v1beta1"
    assert reg.resource_name == "nvidia.com/gpu"
    assert reg.options.get_preferred_allocation_available
    assert os.path.exists(os.path.join(node.kubelet_dir, reg.endpoint))
    with node.kubelet.plugin() as client:
        opts = client.options()
        assert opts.get_preferred_allocation_available and not opts.pre_start_required
        stream, first = first_list(client)
        assert client.pre_start([first.devices[0].ID]) is not None
        stream.cancel()
    ids = [d.ID for d in first.devices]
    assert len(ids) == 2 * SPLIT and len(set(ids)) == len(ids)
    assert all(d.health == "Healthy" for d in first.devices)
    assert all(len(i) <= 63 for i in ids)
    uuids = uuids_of(first)
    assert len(uuids) == 2

    devices = wait_for(node.registration, what="the registration annotation")
    assert [d["id"] for d in devices] == uuids
    for i, d in enumerate(devices):
        assert d["index"] == i and d["count"] == SPLIT and d["devmem"] == 16 * 1024
        assert d["devcore"] == 100 and d["health"] is True and d["mode"] == "hami-core"
        assert d["type"] == f"NVIDIA-Fake GPU {i}"
    ann = fake_apiserver.get("nodes", "n1")["metadata"]["annotations"]
    assert ann[HANDSHAKE].startswith("Reported ")
    # many register intervals later: still the one patch (nothing changed)
    time.sleep(0.6)
    assert len(node.node_patches()) == 1
    gets = len([r for r in fake_apiserver.requests if r["path"] == "/api/v1/nodes/n1"])
    assert gets >= 3  # it did look, every interval

    # a restarted plugin with the same GPUs finds the annotation current: no patch either
    assert node.stop() == 0
    seen = len(fake_apiserver.requests)
    node.start()
    wait_for(lambda: any(r["path"] == "/api/v1/nodes/n1" for r in fake_apiserver.requests[seen:]),
             what="the restarted plugin's node check")
    time.sleep(0.3)
    assert len(node.node_patches()) == 1

    # the scheduler marks the node's devices deleted: the plugin registers again
    fake_apiserver.update("nodes", "n1", lambda o: o["metadata"]["annotations"].update(
        {HANDSHAKE: "Deleted_2026-01-01 00:00:00"}))
    wait_for(lambda: len(node.node_patches()) == 2, what="a re-registration")
    ann = fake_apiserver.get("nodes", "n1")["metadata"]["annotations"]
    assert ann[HANDSHAKE].startswith("Reported ")


def test_health_follows_nvml_lost_gpus_and_critical_xids(node):
    with node.kubelet.plugin() as client:
        stream, first = first_list(client)
        u0, u1 = uuids_of(first)
        node.fault("lost 1\n")
        update = next(stream)
        health = {d.ID: d.health for d in update.devices}
        assert all(h == "Unhealthy" for i, h in health.items() if i.startswith(u1))
        assert all(h == "Healthy" for i, h in health.items() if i.startswith(u0))
        wait_for(lambda: [d["health"] for d in node.registration()] == [True, False],
                 what="GPU 1 unhealthy in the annotation")
        # an application XID (13) changes nothing; a critical one (79) takes GPU 0 down
        node.fault("lost 1\nxid 0 13\nxid 0 79\n")
        update = next(stream)
        assert all(d.health == "Unhealthy" for d in update.devices)
        # GPU 1 comes back; an XID is sticky until the plugin restarts
        node.fault("xid 0 13\nxid 0 79\n")
        update = next(stream)
        health = {d.ID: d.health for d in update.devices}
        assert all(h == "Healthy" for i, h in health.items() if i.startswith(u1))
        assert all(h == "Unhealthy" for i, h in health.items() if i.startswith(u0))
        stream.cancel()
    wait_for(lambda: [d["health"] for d in node.registration()] == [False, True],
             what="the annotation to follow")
    assert any("XID 79" in line for line in node.log)
    assert not any("XID 13" in line for line in node.log)


def test_allocate_answers_with_hamis_contract(node, fake_apiserver):
    with node.kubelet.plugin() as client:
        stream, first = first_list(client)
        stream.cancel()
        u0, u1 = uuids_of(first)
        ids = [d.ID for d in first.devices]
        pod = gpu_pod(fake_apiserver, "p", [("c1", [(u1, 1024, 30)]),
                                            ("c2", [(u0, 2048, 50), (u1, 4096, 50)])],
                      env={1: [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]},
                      limits={1: {"nvidia.com/priority": "0"}})
        uid = pod["metadata"]["uid"]
        # the preferred allocation steers kubelet to the GPU the scheduler chose
        pref = client.preferred(ids, 1)
        assert [i.rsplit("-", 1)[0] for i in pref.container_responses[0].deviceIDs] == [u1]

        r1 = client.allocate([f"{u1}-0"]).container_responses[0]
        env = dict(r1.envs)
        assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1024m"
        assert env["CUDA_DEVICE_SM_LIMIT"] == "30"
        assert env["NVIDIA_VISIBLE_DEVICES"] == u1
        assert env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/usr/local/vgpu/cache/gpuslice.cache"
        assert env["GPUSLICE_NODE_REGION"] == "/usr/local/vgpu/region/node.region"
        assert "CUDA_TASK_PRIORITY" not in env and "CUDA_OVERSUBSCRIBE" not in env
        assert "GPU_CORE_UTILIZATION_POLICY" not in env
        mounts = {m.container_path: (m.host_path, m.read_only) for m in r1.mounts}
        cache = os.path.join(node.hook, "containers", f"{uid}_c1")
        assert mounts["/usr/local/vgpu/cache"] == (cache, False)
        assert mounts["/usr/local/vgpu/region"] == (os.path.join(node.hook, "region"), False)
        assert mounts["/usr/local/vgpu/libgpuslice.so"] == (
            os.path.join(node.hook, "libgpuslice.so"), True)
        assert mounts["/etc/ld.so.preload"] == (os.path.join(node.hook, "ld.so.preload"), True)
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o777
        with open(os.path.join(node.hook, "ld.so.preload")) as f:
            assert f.read() == "/usr/local/vgpu/libgpuslice.so\n"
        ann = fake_apiserver.get("pods", "p")["metadata"]["annotations"]
        assert ann[TO_ALLOCATE] == ";" + encode([[(u0, 2048, 50), (u1, 4096, 50)]])
        assert ann[PHASE] == "allocating"

        r2 = client.allocate([f"{u0}-3", f"{u1}-4"]).container_responses[0]
        env = dict(r2.envs)
        assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "2048m"
        assert env["CUDA_DEVICE_MEMORY_LIMIT_1"] == "4096m"
        assert env["NVIDIA_VISIBLE_DEVICES"] == f"{u0},{u1}"
        assert env["CUDA_TASK_PRIORITY"] == "0"
        paths = {m.container_path for m in r2.mounts}
        assert "/etc/ld.so.preload" not in paths and "/usr/local/vgpu/libgpuslice.so" not in paths
        assert "/usr/local/vgpu/cache" in paths
        ann = fake_apiserver.get("pods", "p")["metadata"]["annotations"]
        assert ann[PHASE] == "success" and ann[TO_ALLOCATE] == ";;"
    patches = [m for m in node.pod_mutations() if m["method"] == "PATCH"]
    assert len(patches) == 2
    assert all(p["content_type"] == "application/merge-patch+json" for p in patches)
    # each carried the pod's version as a precondition
    assert all(p["body"]["metadata"].get("resourceVersion") for p in patches)


def test_allocate_takes_init_containers_first(node, fake_apiserver):
    with node.kubelet.plugin() as client:
        stream, first = first_list(client)
        stream.cancel()
        u0, u1 = uuids_of(first)
        ann = {PHASE: "allocating", TO_ALLOCATE: encode([[(u0, 100, 10)], [], [(u1, 200, 20)]])}
        pod = fake_apiserver.add_pod("p", node_name="n1", annotations=ann)
        uid = pod["metadata"]["uid"]
        fake_apiserver.update("pods", "p", lambda o: o["spec"].update(
            initContainers=[{"name": "init"}], containers=[{"name": "cpu"}, {"name": "gpu"}]))
        r1 = client.allocate([f"{u0}-0"]).container_responses[0]
        assert dict(r1.envs)["NVIDIA_VISIBLE_DEVICES"] == u0
        assert os.path.isdir(os.path.join(node.hook, "containers", f"{uid}_init"))
        r2 = client.allocate([f"{u1}-0"]).container_responses[0]
        assert dict(r2.envs)["NVIDIA_VISIBLE_DEVICES"] == u1
        assert dict(r2.envs)["CUDA_DEVICE_MEMORY_LIMIT_0"] == "200m"
        assert os.path.isdir(os.path.join(node.hook, "containers", f"{uid}_gpu"))
        assert fake_apiserver.get("pods", "p")["metadata"]["annotations"][PHASE] == "success"


def test_allocate_refuses_bad_input_and_changes_nothing_else(node, fake_apiserver):
    api = fake_apiserver
    with node.kubelet.plugin() as client:
        stream, first = first_list(client)
        stream.cancel()
        u0, u1 = uuids_of(first)

        def refused(code, *ids):
            with pytest.raises(grpc.RpcError) as e:
                client.allocate(list(ids))
            assert e.value.code() == code, e.value.details()
            return e.value.details()

        # no pod, or one placed here but not yet bound to this node: no writes
        msg = refused(grpc.StatusCode.FAILED_PRECONDITION, f"{u0}-0")
        assert "no pod bound to node n1" in msg
        gpu_pod(api, "unbound", [("c", [(u0, 1024, 10)])], node_name="")
        assert "no pod bound" in refused(grpc.StatusCode.FAILED_PRECONDITION, f"{u0}-0")
        api.delete("pods", "unbound")
        # two pods allocating at once: both named, neither touched
        gpu_pod(api, "a", [("c", [(u0, 1024, 10)])])
        gpu_pod(api, "b", [("c", [(u0, 1024, 10)])])
        msg = refused(grpc.StatusCode.FAILED_PRECONDITION, f"{u0}-0")
        assert "default/a" in msg and "default/b" in msg
        assert not [m for m in node.pod_mutations() if m["method"] != "POST"]
        api.delete("pods", "a")
        api.delete("pods", "b")

        def failed_with(name, *ids):
            before = api.get("pods", name)["metadata"]["annotations"][TO_ALLOCATE]
            msg = refused(grpc.StatusCode.INVALID_ARGUMENT, *ids)
            ann = api.get("pods", name)["metadata"]["annotations"]
            assert ann[PHASE] == "failed" and ann[REASON] == msg
            assert ann[TO_ALLOCATE] == before  # nothing consumed
            return msg

        gpu_pod(api, "bad", [("c", [])], annotation="GPU-x,NVIDIA,notanumber,1:;")
        assert TO_ALLOCATE in failed_with("bad", f"{u0}-0")
        gpu_pod(api, "gone", [("c", [("GPU-00000000-dead-beef-0000-000000000000", 1024, 10)])])
        assert "not on node n1" in failed_with("gone", f"{u0}-0")
        gpu_pod(api, "count", [("c", [(u0, 1024, 10)])])
        assert "kubelet asked for 2 devices, the scheduler gave 1" in failed_with(
            "count", f"{u0}-0", f"{u0}-1")
        gpu_pod(api, "prio", [("c", [(u0, 1024, 10)])], limits={0: {"nvidia.com/priority": "7"}})
        assert "nvidia.com/priority" in failed_with("prio", f"{u0}-0")
        node.fault("lost 1\n")
        wait_for(lambda: [d["health"] for d in node.registration()] == [True, False],
                 what="GPU 1 unhealthy")
        gpu_pod(api, "sick", [("c", [(u1, 1024, 10)])])
        assert "unhealthy" in failed_with("sick", f"{u1}-0")
        node.fault("")
        # the API server failing: an error, and the pod keeps waiting for a retry
        gpu_pod(api, "retry", [("c", [(u0, 1024, 10)])])
        api.fault(method="GET", path="/api/v1/pods", status=503)
        assert "503" in refused(grpc.StatusCode.UNAVAILABLE, f"{u0}-0")
        assert api.get("pods", "retry")["metadata"]["annotations"][PHASE] == "allocating"
        assert dict(client.allocate([f"{u0}-0"]).container_responses[0].envs)
        assert api.get("pods", "retry")["metadata"]["annotations"][PHASE] == "success"


def test_registers_again_when_kubelet_restarts(node):
    node.kubelet.wait_registrations(1)
    node.kubelet.restart()
    regs = node.kubelet.wait_registrations(2)
    assert regs[1].resource_name == "nvidia.com/gpu"
    wait_for(lambda: os.path.exists(os.path.join(node.kubelet_dir, regs[1].endpoint)),
             what="the plugin's socket")
    with node.kubelet.plugin() as client:
        stream, first = first_list(client)
        stream.cancel()
        assert len(first.devices) == 2 * SPLIT
    # and again: every restart is noticed
    node.kubelet.restart()
    node.kubelet.wait_registrations(3)
    # our socket removed alone (kubelet's stays): served and registered again too
    sock = os.path.join(node.kubelet_dir, regs[1].endpoint)
    wait_for(lambda: os.path.exists(sock), what="the plugin's socket")
    os.unlink(sock)
    node.kubelet.wait_registrations(4)
    wait_for(lambda: os.path.exists(sock), what="the plugin's socket again")


def test_registration_is_retried_until_kubelet_accepts(fake_apiserver):
    n = Node(fake_apiserver, register=False)
    try:
        n.kubelet.reject_with = "resource busy"
        time.sleep(0.3)
        assert not n.kubelet.registrations
        n.kubelet.reject_with = None
        n.kubelet.wait_registrations(1)
        assert sum("kubelet registration failed: resource busy" in line for line in n.log) == 1
    finally:
        assert n.close() == 0


def test_mig_mixed_serves_each_profile_under_its_own_resource(fake_apiserver):
    # GPU 1 in MIG mode: two 1g.5gb devices (index 1 empty) and one 2g.10gb
    n = Node(fake_apiserver, args=["--mig-strategy", "mixed"], register=False,
             env={"FAKE_NVML_MIG": "1:1g.5gb,-,1g.5gb,2g.10gb"})
    try:
        regs = n.kubelet.wait_registrations(3)
        by_name = {r.resource_name: r.endpoint for r in regs}
        assert sorted(by_name) == ["nvidia.com/gpu", "nvidia.com/mig-1g.5gb",
                                   "nvidia.com/mig-2g.10gb"]
        with n.kubelet.plugin(by_name["nvidia.com/gpu"]) as client:
            stream, first = first_list(client)
            stream.cancel()
            assert len(first.devices) == SPLIT  # GPU 0 only: GPU 1 is partitioned
            (u0,) = uuids_of(first)
        with n.kubelet.plugin(by_name["nvidia.com/mig-1g.5gb"]) as client:
            stream, first = first_list(client)
            stream.cancel()
            ids = [d.ID for d in first.devices]
            assert len(ids) == 2 and all(i.startswith("MIG-") for i in ids)
            assert len(set(ids)) == 2
            env = dict(client.allocate([ids[1]]).container_responses[0].envs)
            assert env == {"NVIDIA_VISIBLE_DEVICES": ids[1]}
            with pytest.raises(grpc.RpcError) as e:
                client.allocate([f"{u0}-0"])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a nvidia.com/mig-1g.5gb device" in e.value.details()
        with n.kubelet.plugin(by_name["nvidia.com/mig-2g.10gb"]) as client:
            stream, first = first_list(client)
            stream.cancel()
            assert len(first.devices) == 1
        # only the shared GPU is registered for HAMi's scheduler
        assert [d["id"] for d in wait_for(n.registration, what="registration")] == [u0]
    finally:
        assert n.close() == 0


def test_settings_from_a_config_file_and_flags(fake_apiserver, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"nvidia": {
        "deviceSplitCount": 4, "deviceMemoryScaling": 2, "deviceCoreScaling": 1.5,
        "disablecorelimit": True, "resourceCountName": "example.com/vgpu", "defaultMem": 0}}))
    n = Node(fake_apiserver, args=["--config", str(cfg), "--device-split-count", "3"], devices=1)
    try:
        assert n.kubelet.wait_registrations(1)[0].resource_name == "example.com/vgpu"
        with n.kubelet.plugin() as client:
            stream, first = first_list(client)
            stream.cancel()
            assert len(first.devices) == 3  # the flag overrides the file
            (u0,) = uuids_of(first)
            d = wait_for(n.registration, what="registration")[0]
            assert (d["count"], d["devmem"], d["devcore"]) == (3, 32 * 1024, 150)
            gpu_pod(fake_apiserver, "p", [("c", [(u0, 20000, 10)])])
            env = dict(client.allocate([f"{u0}-0"]).container_responses[0].envs)
            assert env["CUDA_OVERSUBSCRIBE"] == "true"
            assert env["GPU_CORE_UTILIZATION_POLICY"] == "disable"
            assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "20000m"
    finally:
        assert n.close() == 0
    assert any("defaultMem" in line and "ignored" in line for line in n.log)


@pytest.mark.parametrize("args, expected", [
    (["--device-split-count", "0"], '--device-split-count "0": expected an integer from 1'),
    (["--device-split-count", "1025"], "expected an integer from 1 to 1024"),
    (["--device-memory-scaling", "nan"], '--device-memory-scaling "nan": expected a number'),
    (["--device-cores-scaling", "0"], "--device-cores-scaling"),
    (["--mig-strategy", "single"], '--mig-strategy "single": expected none or mixed'),
    (["--disable-core-limit=yes"], "expected true or false"),
    (["--resource-name", "gpu"], "expected a resource name <domain>/<name>"),
    (["--api-server", "localhost:80"], "expected http://host:port"),
    (["--no-such-flag"], '"--no-such-flag": unknown flag'),
    (["--config", "/nonexistent.json"], "--config /nonexistent.json: cannot read"),
    (["--config-file", "/nonexistent.yaml"], "--config-file /nonexistent.yaml: cannot read"),
    (["--node-config", "/nonexistent.json"], "--node-config /nonexistent.json: cannot read"),
    (["--registration-encoding", "xml"], '--registration-encoding "xml": expected json'),
    (["--lib-cuda-log-level", "9"], '--lib-cuda-log-level "9": expected a log level'),
])
def test_bad_settings_get_one_clear_line(args, expected):
    env = dict(os.environ, LD_LIBRARY_PATH=FAKE_DIR)
    r = subprocess.run([PLUGIN, "--node-name", "n1", "--api-server", "http://127.0.0.1:1", *args],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr


def test_bad_config_values_name_the_file_and_key(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"deviceMemoryScaling": -2}')
    r = subprocess.run([PLUGIN, "--node-name", "n1", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f'{cfg}: deviceMemoryScaling "-2": expected a number greater than 0' in r.stderr
    cfg.write_text("[1,2]")
    r = subprocess.run([PLUGIN, "--node-name", "n1", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "expected a JSON object" in r.stderr
    r = subprocess.run([PLUGIN], capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if k != "NODE_NAME"})
    assert r.returncode == 2 and "expected --node-name or NODE_NAME" in r.stderr


LOCK = "hami.io/mutex.lock"


def lock_node(api, value):
    api.update("nodes", "n1", lambda o: o["metadata"].setdefault("annotations", {}).update(
        {LOCK: value}))


def node_lock(api):
    return api.get("nodes", "n1")["metadata"].get("annotations", {}).get(LOCK)


def test_allocate_releases_hamis_node_lock(node, fake_apiserver):
    """HAMi's scheduler locks the node while a pod's devices are allocated; its device plugin
    releases the lock when the allocation ends, succeeded or failed (nodelock.ReleaseNodeLock:
    the annotation set to null, the node's resourceVersion as a precondition)."""
    api = fake_apiserver
    with node.kubelet.plugin() as client:
        stream, first = first_list(client)
        stream.cancel()
        u0, u1 = uuids_of(first)
        # two containers: the lock stays until the last one has its devices
        gpu_pod(api, "p", [("a", [(u0, 1024, 10)]), ("b", [(u1, 1024, 10)])])
        lock_node(api, "2026-01-01T00:00:00Z,default,p")
        client.allocate([f"{u0}-0"])
        assert node_lock(api) == "2026-01-01T00:00:00Z,default,p"
        client.allocate([f"{u1}-0"])
        assert node_lock(api) is None
        release = [m for m in node.node_patches() if LOCK in json.dumps(m["body"])]
        assert len(release) == 1
        assert release[0]["body"]["metadata"]["annotations"] == {LOCK: None}
        assert release[0]["body"]["metadata"]["resourceVersion"]
        assert release[0]["content_type"] == "application/merge-patch+json"
        api.delete("pods", "p")

        # a failed allocation releases it too
        gpu_pod(api, "bad", [("c", [(u0, 1024, 10)])])
        lock_node(api, "2026-01-01T00:00:00Z,default,bad")
        with pytest.raises(grpc.RpcError):
            client.allocate([f"{u0}-0", f"{u0}-1"])
        assert api.get("pods", "bad")["metadata"]["annotations"][PHASE] == "failed"
        assert node_lock(api) is None
        api.delete("pods", "bad")

        # another pod's lock is not ours to release; HAMi's older bare-time lock is
        gpu_pod(api, "q", [("c", [(u0, 1024, 10)])])
        lock_node(api, "2026-01-01T00:00:00Z,default,other")
        client.allocate([f"{u0}-0"])
        assert node_lock(api) == "2026-01-01T00:00:00Z,default,other"
        api.delete("pods", "q")
        gpu_pod(api, "r", [("c", [(u0, 1024, 10)])])
        lock_node(api, "2026-01-01T00:00:00Z")
        client.allocate([f"{u0}-0"])
        assert node_lock(api) is None


def test_numa_topology_only_when_enabled(fake_apiserver):
    for args, want in (([], False), (["--enable-numa-topology"], True)):
        n = Node(fake_apiserver, args=args, devices=1)
        try:
            with n.kubelet.plugin() as client:
                stream, first = first_list(client)
                stream.cancel()
            assert len(first.devices) == SPLIT
            assert all(d.HasField("topology") == want for d in first.devices), args
            if want:
                assert all([x.ID for x in d.topology.nodes] == [0] for d in first.devices)
        finally:
            assert n.close() == 0


DEVICE_CONFIG_YAML = """\
nvidia:
  resourceCountName: nvidia.com/gpu
  resourceMemoryName: nvidia.com/gpumem
  resourceMemoryPercentageName: nvidia.com/gpumem-percentage
  resourceCoreName: nvidia.com/gpucores
  resourcePriorityName: nvidia.com/priority
  overwriteEnv: false
  defaultMemory: 0
  defaultCores: 0
  defaultGPUNum: 1
  preConfiguredDeviceMemory: 0
  memoryFactor: 1
  deviceSplitCount: 10
  deviceMemoryScaling: 1
  deviceCoreScaling: 1
  enableNumaTopology: false
  gpuCorePolicy: default
  libCudaLogLevel: 2
  runtimeClassName: ""
  migProfileAllowlist:
  - models: [ "A30" ]
    profiles: [ "1g.6gb", "2g.12gb", "4g.24gb" ]
cambricon:
  resourceCountName: cambricon.com/vmlu
"""


def test_hamis_yaml_configuration_and_nodeconfig_unchanged(fake_apiserver, tmp_path):
    """The chart's device-config.yaml (--config-file) and its per-node config.json (nodeconfig,
    Go's case-insensitive keys): this node's entry overrides the file, another node's does not,
    and flags override both."""
    cfg = tmp_path / "device-config.yaml"
    cfg.write_text(DEVICE_CONFIG_YAML)
    nodes = tmp_path / "config.json"
    nodes.write_text(json.dumps({"nodeconfig": [
        {"name": "n2", "devicesplitcount": 7},
        {"name": "n1", "operatingmode": "hami-core", "devicesplitcount": 4,
         "devicememoryscaling": 2, "deviceCoreScaling": 1.5, "preconfigureddevicememory": 0,
         "enablenumatopology": True, "migstrategy": "none",
         "filterdevices": {"uuid": [], "index": [1]}, "enablegetpreferredallocation": False}]}))
    n = Node(fake_apiserver, args=["--config-file", str(cfg), "--node-config", str(nodes),
                                   "--device-memory-scaling", "1.5"], devices=2)
    try:
        with n.kubelet.plugin() as client:
            stream, first = first_list(client)
            stream.cancel()
            assert len(first.devices) == 4  # GPU 1 filtered out; split 4 from nodeconfig
            assert all(d.HasField("topology") for d in first.devices)
            (u0,) = uuids_of(first)
            (d,) = wait_for(n.registration, what="registration")
            assert (d["id"], d["count"], d["devmem"], d["devcore"]) == (u0, 4, 24 * 1024, 150)
            gpu_pod(fake_apiserver, "p", [("c", [(u0, 1024, 10)])])
            env = dict(client.allocate([f"{u0}-0"]).container_responses[0].envs)
            assert env["LIBCUDA_LOG_LEVEL"] == "2"
            assert env["CUDA_OVERSUBSCRIBE"] == "true"
    finally:
        assert n.close() == 0
    assert any("filterdevices" in line for line in n.log)


def test_pre_2_8_registration_encoding(fake_apiserver):
    """HAMi's schedulers before 2.8 read the colon form (device.DecodeNodeDevices); 2.8 changed
    the device plugin to JSON (device.MarshalNodeDevices)."""
    n = Node(fake_apiserver, args=["--registration-encoding", "legacy",
                                   "--device-cores-scaling", "2"], devices=2)
    try:
        def raw():
            ann = fake_apiserver.get("nodes", "n1")["metadata"].get("annotations", {})
            return ann.get(REGISTER)
        text = wait_for(raw, what="the registration annotation")
        entries = text.split(":")
        assert entries[-1] == "" and len(entries) == 3
        for i, e in enumerate(entries[:2]):
            f = e.split(",")
            assert len(f) == 9
            assert f[0].startswith("GPU-")
            assert f[1:] == [str(SPLIT), str(16 * 1024), "200", f"NVIDIA-Fake GPU {i}", "0",
                             "true", str(i), "hami-core"]
    finally:
        assert n.close() == 0


@pytest.mark.parametrize("node_config, expected", [
    ({"nodeconfig": [{"name": "n1", "operatingmode": "mps"}]}, 'operatingmode "mps": expected '
     "hami-core"),
    ({"nodeconfig": [{"name": "n1", "devicesplitcount": 0}]},
     'nodeconfig[0] (n1): devicesplitcount "0": expected an integer from 1'),
    ({"nodeconfig": [{"name": "n1", "filterdevices": {"index": ["a"]}}]},
     "filterdevices.index"),
    ({"nodeconfig": {"name": "n1"}}, "nodeconfig: expected a list"),
])
def test_bad_node_config_is_one_clear_line(tmp_path, node_config, expected):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(node_config))
    r = subprocess.run([PLUGIN, "--node-name", "n1", "--node-config", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr


def test_preconfigured_device_memory_sizes_a_gpu_nvml_cannot(fake_apiserver):
    """HAMi's preConfiguredDeviceMemory (MiB) registers a GPU whose memory NVML does not size
    (unified memory); without it such a GPU is not registered."""
    for args, want in (([], [16 * 1024]), (["--preconfigured-device-memory", "8192"],
                                           [16 * 1024, 8192])):
        n = Node(fake_apiserver, args=args, devices=2, env={"FAKE_CUDA_MEMORY_1": "0"})
        try:
            devs = wait_for(n.registration, what="registration")
            assert [d["devmem"] for d in devs] == want
        finally:
            assert n.close() == 0
        fake_apiserver.update("nodes", "n1", lambda o: o["metadata"].update(annotations={}))
