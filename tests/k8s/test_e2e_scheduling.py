"""The whole flow on one machine, as the control plane drives it: a pod asking for
nvidia.com/gpu 1, gpumem 3000, gpucores 30 goes through admission (the webhook over HTTPS),
filter and prioritize (as kube-scheduler sends them to the extender), bind (annotations and the
Binding in the fake API server), and Allocate (a kubelet-shaped gRPC client of the device
plugin). A process then starts with the Allocate response's environment and mounts (mapped to
the host paths, as the container runtime would), under libgpuslice.so on the fake driver: it
sees 3000 MiB and is refused beyond it, and the exporter shows its usage and limit. A second
pod lands as the GPU policy (spread) says, and deleting the first gives its share back to the
next filter.

Needs the programs and the fakes from the CMake build (examples:scheduler:e2e sets them). With
GPUSLICE_IMAGE naming an image built by scripts/image.sh, the webhook, the extender, the device
plugin and the exporter run from that image instead (`buildah run --isolation chroot`, on the
host's network, as the users the manifests give them), and the shim the process preloads is the
image's, copied onto the host's hook directory as the DaemonSet's init container does; only the
fake driver (GPUSLICE_FAKE_NVML_DIR) comes from the build, mounted in as the NVIDIA runtime
mounts the real one. A library missing from the image then fails this test."""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import cuda_workload
from kubelet import Kubelet
import waiting

ENV = {k: os.environ.get(k, "") for k in
       ["GPUSLICE_EXTENDER", "GPUSLICE_WEBHOOK", "GPUSLICE_DEVICE_PLUGIN", "GPUSLICE_MONITOR",
        "GPUSLICE_FAKE_NVML_DIR", "GPUSLICE_SHIM"]}
IMAGE = os.environ.get("GPUSLICE_IMAGE", "")
if IMAGE:  # the programs and the shim come from the image, under their names in it
    ENV.update(GPUSLICE_EXTENDER="gpuslice_extender", GPUSLICE_WEBHOOK="gpuslice_webhook",
               GPUSLICE_DEVICE_PLUGIN="gpuslice-device-plugin",
               GPUSLICE_MONITOR="gpuslice-monitor", GPUSLICE_SHIM="(from the image)")
# Asked for by GPUSLICE_IMAGE (scripts/test.sh), the test runs or fails: it is never skipped.
NEEDS = all(ENV.values()) and shutil.which("openssl")
pytestmark = pytest.mark.skipif(not IMAGE and not NEEDS,
                                reason="needs the programs, the shim and the fake driver "
                                       "(run through ctest examples:scheduler:e2e, or "
                                       "GPUSLICE_IMAGE and GPUSLICE_FAKE_NVML_DIR)")
BUILDAH = ["buildah", "--storage-driver", "vfs"]
# The image's shim, where the device plugin's Allocate mounts it from (image/Containerfile).
IMAGE_SHIM = "/usr/local/vgpu/libgpuslice.so"
NON_ROOT = "65532:65532"  # the image's user, which the manifests run all but the plugin as
TIMEOUT_S = 30
MIB = 1 << 20
REGISTER = "hami.io/node-nvidia-register"
wait_for = functools.partial(waiting.wait_for, timeout=TIMEOUT_S)

# The process in the container (cuda_workload.PRELUDE), then the test's own lines.
WORKLOAD = cuda_workload.script("""
    print("total_mib", total.value >> 20, flush=True)
    held = ctypes.c_uint64()
    print("alloc_2000", cu.cuMemAlloc_v2(ctypes.byref(held), ctypes.c_size_t(2000 << 20)),
          flush=True)
    print("alloc_1500_more", cu.cuMemAlloc_v2(ctypes.byref(ctypes.c_uint64()),
                                              ctypes.c_size_t(1500 << 20)), flush=True)
    sys.stdin.readline()  # hold the memory until the test has scraped the exporter
""")




def first_line(proc) -> str:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return line


class Cluster:
    """The fake API server plus every gpuslice program on one machine."""

    def __init__(self, api, tmp):
        self.api = api
        self.procs = []
        self.container = ""  # the image's working container, in image mode
        # unix socket paths must stay short
        self.dir = tempfile.mkdtemp(prefix="gse2e", dir="/tmp")
        self.kubelet_dir = os.path.join(self.dir, "k")
        self.hook = os.path.join(self.dir, "hook")
        os.makedirs(self.kubelet_dir)
        api.add_node("n1")
        self.kubelet = Kubelet(self.kubelet_dir)
        try:
            self.start_programs(tmp)
        except BaseException as e:
            # A program that did not come up (one missing a library, say) says why.
            errors = self.close()
            raise AssertionError(f"the programs did not start: {e}\n{errors}") from e

    def start_programs(self, tmp):
        api = self.api
        fake = ENV["GPUSLICE_FAKE_NVML_DIR"]
        self.fake_env = dict(os.environ, LD_LIBRARY_PATH=fake, FAKE_CUDA_DEVICES="2",
                             FAKE_CUDA_MEMORY="16Gi")
        self.fake_env.pop("NODE_NAME", None)
        if IMAGE:
            self.from_image(tmp)
            self.shim = os.path.join(self.hook, "libgpuslice.so")
        else:
            self.shim = ENV["GPUSLICE_SHIM"]
        fake_only = {k: self.fake_env[k] for k in
                     ["LD_LIBRARY_PATH", "FAKE_CUDA_DEVICES", "FAKE_CUDA_MEMORY"]}
        self.plugin = self.start([ENV["GPUSLICE_DEVICE_PLUGIN"], "--node-name", "n1",
                                  "--api-server", api.url, "--kubelet-dir", self.kubelet_dir,
                                  "--host-hook-path", self.hook, "--register-interval-ms", "100",
                                  "--watch-interval-ms", "50"], env=fake_only, line=False,
                                 user="0:0", mounts=[self.dir, fake])
        self.kubelet.wait_registrations(1)
        # The webhook, with a certificate made as examples/deploy/README.md says.
        crt, key = str(tmp / "tls.crt"), str(tmp / "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", key, "-out", crt, "-subj", "/CN=gpuslice-webhook",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                       capture_output=True)
        os.chmod(key, 0o644)  # the webhook's user reads it, as from its Secret volume
        webhook = self.start([ENV["GPUSLICE_WEBHOOK"], "--cert", crt, "--key", key,
                              "--listen", "127.0.0.1", "--port", "0"], mounts=[str(tmp)])
        self.webhook_port = int(webhook.banner.split("https://127.0.0.1:")[1].split()[0])
        self.tls = ssl.create_default_context(cafile=crt)
        extender = self.start([ENV["GPUSLICE_EXTENDER"], "--apiserver", api.url, "--listen",
                               "127.0.0.1", "--port", "0"])
        self.extender_port = int(extender.banner.split("http://127.0.0.1:")[1].split()[0])
        monitor = self.start([ENV["GPUSLICE_MONITOR"], "--ledger-dir",
                              os.path.join(self.hook, "containers"), "--listen", "127.0.0.1:0",
                              "--node-name", "n1", "--api-server", api.url, "--no-nvml"],
                             mounts=[self.dir])
        self.monitor_port = int(monitor.banner)

    def from_image(self, tmp):
        """A working container of the image; its shim installed on the host's hook directory
        by the init container's commands (examples/deploy/base/node.yaml)."""
        made = subprocess.run(BUILDAH + ["from", "--pull-never", IMAGE], capture_output=True,
                              text=True, timeout=300)
        assert made.returncode == 0, f"buildah from {IMAGE}: {made.stderr}"
        self.container = made.stdout.strip().splitlines()[-1]
        # Read by the programs' non-root user, as hostPath and Secret volumes are.
        os.chmod(self.dir, 0o755)
        os.chmod(tmp, 0o755)
        os.makedirs(self.hook)
        subprocess.run(BUILDAH + ["run", "--isolation", "chroot", "--user", "0:0", "-v",
                                  f"{self.hook}:/host/usr/local/vgpu", self.container, "--",
                                  "sh", "-c",
                                  f"cp {IMAGE_SHIM} /host/usr/local/vgpu/libgpuslice.so.new && "
                                  "mv -f /host/usr/local/vgpu/libgpuslice.so.new "
                                  "/host/usr/local/vgpu/libgpuslice.so"],
                       check=True, timeout=120)

    def start(self, args, env=None, line=True, user=NON_ROOT, mounts=()):
        """Starts a program: from the build, or in the image's container (its own environment
        plus env, the host's network, mounts at the same paths)."""
        program = args[0]
        if IMAGE:
            wrap = BUILDAH + ["run", "--isolation", "chroot", "--network", "host",
                              "--user", user]
            for k, v in (env or {}).items():
                wrap += ["--env", f"{k}={v}"]
            for m in mounts:
                wrap += ["-v", f"{m}:{m}"]
            args, env = wrap + [self.container, "--"] + args, None
        elif env is not None:
            env = dict({k: v for k, v in os.environ.items() if k != "NODE_NAME"}, **env)
        p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE if line else subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        p.program = program
        self.procs.append(p)
        p.banner = first_line(p) if line else ""
        return p

    def close(self) -> str:
        """Stops everything; returns what the programs wrote to stderr."""
        errors = []
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=TIMEOUT_S)
            errors.append(f"{p.program}: {err or ''}".strip())
        self.kubelet.stop()
        if self.container:
            subprocess.run(BUILDAH + ["rm", self.container], capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)
        return "\n".join(errors)

    # -- the control plane's calls
    def admit(self, pod: dict) -> dict:
        """The API server's admission call; returns the pod with the JSONPatch applied."""
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": "adm-" + pod["metadata"]["name"],
                              "kind": {"group": "", "version": "v1", "kind": "Pod"},
                              "namespace": "default", "operation": "CREATE", "object": pod}}
        c = http.client.HTTPSConnection("127.0.0.1", self.webhook_port, timeout=TIMEOUT_S,
                                        context=self.tls)
        c.request("POST", "/mutate", body=json.dumps(review),
                  headers={"Content-Type": "application/json"})
        r = json.loads(c.getresponse().read())["response"]
        c.close()
        assert r["allowed"], r
        out = json.loads(json.dumps(pod))
        for op in json.loads(base64.b64decode(r.get("patch", "W10="))):
            assert op["op"] in ("add", "replace"), op
            parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
            target = out
            for p in parts[:-1]:
                target = target[int(p)] if isinstance(target, list) else target[p]
            target[parts[-1]] = op["value"]
        return out

    def extender(self, verb: str, body) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", self.extender_port, timeout=TIMEOUT_S)
        c.request("POST", "/" + verb, body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        out = json.loads(r.read())
        c.close()
        return out

    def schedule(self, pod: dict) -> str:
        """filter, prioritize and bind as kube-scheduler does; returns the chosen node."""
        args = {"Pod": pod, "NodeNames": ["n1"]}
        f = self.extender("filter", args)
        assert f["NodeNames"] == ["n1"], f
        scores = self.extender("prioritize", {"Pod": pod, "NodeNames": f["NodeNames"]})
        node = max(scores, key=lambda h: h["Score"])["Host"]
        m = pod["metadata"]
        b = self.extender("bind", {"PodName": m["name"], "PodNamespace": m["namespace"],
                                   "PodUID": m["uid"], "Node": node})
        assert b["Error"] == "", b
        return node

    def metrics(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/metrics",
                                    timeout=TIMEOUT_S) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out


def new_pod(cluster, name: str, mem="3000", cores="30") -> dict:
    submitted = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": name, "namespace": "default"},
                 "spec": {"containers": [{"name": "main", "image": "cuda-app",
                                          "resources": {"limits": {
                                              "nvidia.com/gpu": "1", "nvidia.com/gpumem": mem,
                                              "nvidia.com/gpucores": cores}}}]}}
    admitted = cluster.admit(submitted)
    assert admitted["spec"]["schedulerName"] == "gpuslice-scheduler"
    return cluster.api.add_pod(name, containers=admitted["spec"]["containers"])


@pytest.fixture
def cluster(fake_apiserver, tmp_path):
    c = Cluster(fake_apiserver, tmp_path)
    yield c
    c.close()


def test_a_pod_from_admission_to_a_process_held_to_its_share(cluster):
    api = cluster.api
    # The device plugin registered the node's two fake GPUs; the extender sees them.
    reg = wait_for(lambda: api.get("nodes", "n1")["metadata"]["annotations"].get(REGISTER),
                   "the node registration")
    uuids = [d["id"] for d in json.loads(reg)]
    assert len(uuids) == 2

    def gpus_seen():
        c = http.client.HTTPConnection("127.0.0.1", cluster.extender_port, timeout=TIMEOUT_S)
        c.request("GET", "/state")
        st = json.loads(c.getresponse().read())
        c.close()
        return {n["name"]: [d["memory_used_mib"] for d in n["devices"]] for n in st["nodes"]}

    wait_for(lambda: gpus_seen().get("n1") == [0, 0], "the extender to watch n1's GPUs")

    pod = new_pod(cluster, "e2e-1")
    assert cluster.schedule(pod) == "n1"
    bound = api.get("pods", "e2e-1")
    assert bound["spec"]["nodeName"] == "n1"
    to_allocate = bound["metadata"]["annotations"]["hami.io/vgpu-devices-to-allocate"]
    chosen = to_allocate.split(",")[0]
    assert to_allocate == f"{chosen},NVIDIA,3000,30:;" and chosen in uuids

    # kubelet: the plugin's preferred devices, then Allocate.
    with cluster.kubelet.plugin() as client:
        stream = client.list_and_watch()
        ids = [d.ID for d in next(stream).devices]
        stream.cancel()
        preferred = list(client.preferred(ids, 1).container_responses[0].deviceIDs)
        assert [i.rsplit("-", 1)[0] for i in preferred] == [chosen]
        resp = client.allocate(preferred).container_responses[0]
    env = dict(resp.envs)
    assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert env["CUDA_DEVICE_SM_LIMIT"] == "30"
    assert env["NVIDIA_VISIBLE_DEVICES"] == chosen

    # The container runtime: the mounts' host paths stand in for the container paths, and
    # NVIDIA_VISIBLE_DEVICES limits what the driver shows.
    def host(path):
        for m in resp.mounts:
            if path == m.container_path or path.startswith(m.container_path + "/"):
                return m.host_path + path[len(m.container_path):]
        return path
    proc_env = dict(cluster.fake_env, **{k: host(v) for k, v in env.items()},
                    CUDA_VISIBLE_DEVICES=chosen, LD_PRELOAD=cluster.shim)
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD], env=proc_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = dict(first_line(proc).split() for _ in range(3))
        assert lines == {"total_mib": "3000", "alloc_2000": "0",
                         "alloc_1500_more": "2"}  # 2: CUDA_ERROR_OUT_OF_MEMORY

        # The exporter shows the container's usage and limit on the chosen GPU.
        def pod_series(name):
            return [(lab, v) for lab, v in cluster.metrics().get(name, [])
                    if lab.get("pod") == "e2e-1"]
        used = wait_for(lambda: [v for lab, v in pod_series("hami_vgpu_memory_used_bytes")
                                 if v >= 2000 * MIB], "the exporter to show the usage")
        assert 2000 * MIB <= used[0] < 3000 * MIB
        limits = pod_series("hami_vgpu_memory_limit_bytes")
        assert [(lab["device_uuid"], lab["container"], v) for lab, v in limits] == \
            [(chosen, "main", 3000 * MIB)]
    finally:
        proc.communicate(input="\n", timeout=TIMEOUT_S)

    # A second pod: GPU spread puts it on the other card.
    second = new_pod(cluster, "e2e-2")
    cluster.schedule(second)
    ann = api.get("pods", "e2e-2")["metadata"]["annotations"]
    other = ann["hami.io/vgpu-devices-to-allocate"].split(",")[0]
    assert other != chosen and other in uuids

    # A pod of 14000 MiB fits no card while both hold 3000 MiB of 16384...
    big = new_pod(cluster, "e2e-big", mem="14000", cores="10")
    f = cluster.extender("filter", {"Pod": big, "NodeNames": ["n1"]})
    assert f["NodeNames"] == [] and "insufficient GPU memory" in f["FailedNodes"]["n1"]
    # ...until the first pod is deleted: its share comes back to the next filter.
    api.delete("pods", "e2e-1")
    wait_for(lambda: cluster.extender("filter", {"Pod": big, "NodeNames": ["n1"]})["NodeNames"]
             == ["n1"], "the deleted pod's share")
    assert cluster.schedule(big) == "n1"
    assert api.get("pods", "e2e-big")["metadata"]["annotations"][
        "hami.io/vgpu-devices-to-allocate"].startswith(chosen + ",")
