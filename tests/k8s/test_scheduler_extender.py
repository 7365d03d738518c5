"""The scheduler extender in a live-shaped cluster: it lists and watches nodes and pods through
the fake API server, binds through it within a deadline, skips what does not parse with its
reason, serves many idle keep-alive connections, and exposes /metrics.

Needs GPUSLICE_EXTENDER (the built gpuslice_extender); skipped otherwise. The requests are
kube-scheduler's shapes (k8s.io/kube-scheduler/extender/v1, nodeCacheCapable)."""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import waiting

EXTENDER = os.environ.get("GPUSLICE_EXTENDER", "")
pytestmark = pytest.mark.skipif(not EXTENDER, reason="GPUSLICE_EXTENDER not set")

REGISTER = "hami.io/node-nvidia-register"
ALLOCATED = "hami.io/vgpu-devices-allocated"
START_TIMEOUT_S = 30  # generous: sanitizer builds on a loaded machine
wait_for = functools.partial(waiting.wait_for, timeout=START_TIMEOUT_S)
CLIENT_TIMEOUT_S = 20
# kube-scheduler's httpTimeout in examples/extender/scheduler-config.yaml.
SCHEDULER_HTTP_TIMEOUT_S = 5


def registration(prefix: str, gpus: int, mib: int = 16384, count: int = 10) -> str:
    return json.dumps([{"id": f"{prefix}{i}", "index": i, "count": count, "devmem": mib,
                        "devcore": 100, "type": "NVIDIA-A100", "numa": 0, "mode": "hami-core",
                        "health": True} for i in range(gpus)])


def gpu_container(gpus="1", mem: str | None = "3000", cores: str | None = "30") -> dict:
    limits = {"nvidia.com/gpu": gpus}
    if mem is not None:
        limits["nvidia.com/gpumem"] = mem
    if cores is not None:
        limits["nvidia.com/gpucores"] = cores
    return {"name": "main", "resources": {"limits": limits}}


class Extender:
    """The extender program against an API server; stopped by close()."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([EXTENDER, "--listen", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        served = re.search(r"on https?://127\.0\.0\.1:(\d+)", line)
        assert served, line + self.proc.stderr.read()
        self.port = int(served.group(1))

    def request(self, method: str, path: str, body=None, timeout=CLIENT_TIMEOUT_S):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=None if body is None else json.dumps(body),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def post(self, path: str, body) -> dict:
        status, text = self.request("POST", path, body)
        assert status == 200, text
        return json.loads(text)

    def state(self) -> dict:
        return json.loads(self.request("GET", "/state")[1])

    def usage(self, node: str) -> list[int]:
        """Memory used per GPU of a node, MiB."""
        for n in self.state()["nodes"]:
            if n["name"] == node:
                return [d["memory_used_mib"] for d in n["devices"]]
        return []

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=START_TIMEOUT_S)
        return err

    def kill(self) -> None:
        """Ends it at once (SIGKILL): no clean shutdown."""
        self.proc.kill()
        self.proc.communicate(timeout=START_TIMEOUT_S)




def filter_args(pod: dict, names: list[str]) -> dict:
    return {"Pod": pod, "NodeNames": names}


def bind_args(pod: dict, node: str) -> dict:
    m = pod["metadata"]
    return {"PodName": m["name"], "PodNamespace": m["namespace"], "PodUID": m["uid"],
            "Node": node}


@pytest.fixture
def cluster(fake_apiserver):
    api = fake_apiserver
    api.add_node("gpu-1", annotations={REGISTER: registration("GPU-1-", 2)})
    api.add_node("broken", annotations={REGISTER: '[{"id":'})
    # Bound before the extender starts: rebuilt into usage at start.
    api.add_pod("running", node_name="gpu-1", phase="Running", containers=[gpu_container()],
                annotations={ALLOCATED: "GPU-1-0,NVIDIA,3000,30:;"})
    # Bound to a GPU the node no longer has: skipped with its reason, never fatal.
    api.add_pod("stale", node_name="gpu-1", phase="Running", containers=[gpu_container()],
                annotations={ALLOCATED: "GPU-gone,NVIDIA,1000,10:;"})
    ext = Extender("--apiserver", api.url, "--bind-timeout-ms", "1500")
    yield api, ext
    ext.close()


def test_nodes_and_pods_are_followed_through_list_and_watch(cluster):
    api, ext = cluster
    # The bound pod's share is there from the start; the stale one is skipped with its reason.
    assert ext.usage("gpu-1") == [3000, 0]
    st = ext.state()
    assert "broken" in st["skipped_nodes"] and "node registration" in st["skipped_nodes"]["broken"]
    assert any("GPU-gone" in why for why in st["skipped_pods"].values())

    pod = api.add_pod("p1", containers=[gpu_container(mem="14000")])
    r = ext.post("/filter", filter_args(pod, ["gpu-1", "broken", "gpu-2"]))
    assert r["NodeNames"] == ["gpu-1"]
    assert r["FailedAndUnresolvableNodes"]["broken"].startswith("gpuslice: node skipped: node broken")
    assert r["FailedAndUnresolvableNodes"]["gpu-2"] == \
        "gpuslice: node not registered with the extender"

    # A node that joins later is served once the watch delivers it.
    api.add_node("gpu-2", annotations={REGISTER: registration("GPU-2-", 1)})
    wait_for(lambda: ext.usage("gpu-2") == [0], "gpu-2 from the watch")
    r = ext.post("/filter", filter_args(pod, ["gpu-1", "gpu-2"]))
    assert r["NodeNames"] == ["gpu-1", "gpu-2"]

    # A malformed node that gets fixed is served too.
    api.update("nodes", "broken",
               lambda n: n["metadata"]["annotations"].update({REGISTER: registration("GPU-b-", 1)}))
    wait_for(lambda: ext.usage("broken") == [0], "the fixed node")

    # Deleting the running pod gives its share back to the next filter.
    api.delete("pods", "running")
    wait_for(lambda: ext.usage("gpu-1") == [0, 0], "the deleted pod's share")


def test_bind_writes_hami_annotations_and_the_binding(cluster):
    api, ext = cluster
    pod = api.add_pod("p2", containers=[gpu_container()])
    assert ext.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
    assert ext.post("/bind", bind_args(pod, "gpu-1"))["Error"] == ""
    stored = api.get("pods", "p2")
    assert stored["spec"]["nodeName"] == "gpu-1"
    ann = stored["metadata"]["annotations"]
    # GPU spread: the emptier card, GPU-1-1 (GPU-1-0 holds the running pod).
    assert ann["hami.io/vgpu-devices-to-allocate"] == "GPU-1-1,NVIDIA,3000,30:;"
    assert ann[ALLOCATED] == ann["hami.io/vgpu-devices-to-allocate"]
    assert ann["hami.io/bind-phase"] == "allocating"
    # Counted at once, and still once after the watch reports the bound pod.
    assert ext.usage("gpu-1") == [3000, 3000]
    wait_for(lambda: any(b["uid"] == pod["metadata"]["uid"] for b in ext.state()["bindings"]),
             "the binding in state")
    time.sleep(0.2)
    assert ext.usage("gpu-1") == [3000, 3000]
    api.delete("pods", "p2")
    wait_for(lambda: ext.usage("gpu-1") == [3000, 0], "p2's share back")


def test_a_pod_asking_for_zero_gpus_binds(cluster):
    api, ext = cluster
    pod = api.add_pod("zero", containers=[gpu_container(gpus="0", mem=None, cores=None)])
    assert ext.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
    assert ext.post("/bind", bind_args(pod, "gpu-1"))["Error"] == ""
    stored = api.get("pods", "zero")
    assert stored["spec"]["nodeName"] == "gpu-1"
    assert "hami.io/vgpu-devices-to-allocate" not in stored["metadata"]["annotations"]
    # A pod filtered elsewhere (not seen here) is read from the API server at bind.
    other = api.add_pod("unseen", containers=[gpu_container(gpus="0", mem=None, cores=None)])
    assert ext.post("/bind", bind_args(other, "gpu-1"))["Error"] == ""
    assert api.get("pods", "unseen")["spec"]["nodeName"] == "gpu-1"


def test_bind_against_a_hung_api_server_answers_within_the_scheduler_timeout(cluster):
    api, ext = cluster
    pod = api.add_pod("p3", containers=[gpu_container()])
    ext.post("/filter", filter_args(pod, ["gpu-1"]))
    api.fault(method="PATCH", path="/pods/p3", hang=True, times=None)
    try:
        start = time.monotonic()
        status, text = ext.request("POST", "/bind", bind_args(pod, "gpu-1"),
                                   timeout=SCHEDULER_HTTP_TIMEOUT_S)
        elapsed = time.monotonic() - start
    finally:
        api.clear_faults()
    assert status == 200
    err = json.loads(text)["Error"]
    assert err.startswith("pod default/p3: binding failed: PATCH ") and "p3" in err
    assert elapsed < SCHEDULER_HTTP_TIMEOUT_S
    # The reservation is undone; nothing was bound.
    assert ext.usage("gpu-1") == [3000, 0]
    assert api.get("pods", "p3")["spec"].get("nodeName", "") == ""


IDLE_CONNECTIONS = 128
REQUESTS_AMONG_IDLE = 32
# Every request among the idle connections is answered within this (kube-scheduler's httpTimeout
# is 5 s, and the extender holds an idle connection for as long).
ANSWER_BOUND_S = 4


def test_idle_keep_alive_connections_never_starve_a_request(cluster):
    api, ext = cluster
    pod = api.add_pod("among-idle", containers=[gpu_container()])
    # Many kept-alive connections, each idle after one request, as kube-scheduler's HTTP client
    # keeps them (far more than any fixed worker pool).
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", ext.port), timeout=CLIENT_TIMEOUT_S)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            reply = b""
            while not reply.endswith(b"\r\n\r\nok"):
                chunk = s.recv(4096)
                assert chunk, reply
                reply += chunk
            idle.append(s)
        # Real requests, some at once, each on a fresh connection: all answered within the bound.
        results: list = []
        lock = threading.Lock()

        def one(i: int) -> None:
            start = time.monotonic()
            try:
                if i % 2:
                    status, body = ext.request("GET", "/healthz", timeout=ANSWER_BOUND_S)
                    ok = (status, body) == (200, "ok")
                else:
                    status, body = ext.request("POST", "/filter", filter_args(pod, ["gpu-1"]),
                                               timeout=ANSWER_BOUND_S)
                    ok = status == 200 and json.loads(body)["NodeNames"] == ["gpu-1"]
            except OSError as e:
                ok, body = False, repr(e)
            with lock:
                results.append((ok, time.monotonic() - start, body))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(REQUESTS_AMONG_IDLE)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r for r in results if not r[0] or r[1] >= ANSWER_BOUND_S]
        assert len(results) == REQUESTS_AMONG_IDLE
        assert not failed, f"{len(failed)} of {REQUESTS_AMONG_IDLE} not answered in time: {failed[:3]}"
    finally:
        for s in idle:
            s.close()


def test_metrics_expose_latency_failures_and_hami_families(cluster):
    api, ext = cluster
    pod = api.add_pod("p4", containers=[gpu_container()])
    ext.post("/filter", filter_args(pod, ["gpu-1"]))
    ext.post("/bind", bind_args(pod, "gpu-1"))
    ext.post("/bind", {"PodName": "nobody", "PodNamespace": "default", "PodUID": "u-x",
                       "Node": "gpu-1"})
    status, text = ext.request("GET", "/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    filt = {s.name: s.value for s in fams["gpuslice_extender_filter_duration_seconds"].samples}
    assert filt["gpuslice_extender_filter_duration_seconds_count"] >= 1
    binds = {s.name: s.value for s in fams["gpuslice_extender_bind_duration_seconds"].samples}
    assert binds["gpuslice_extender_bind_duration_seconds_count"] == 2
    failures = {s.labels["reason"]: s.value for s in fams["gpuslice_extender_failures"].samples}
    assert failures["not_filtered"] == 1
    assert fams["gpuslice_extender_skipped_nodes"].samples[0].value == 1
    allocated = {(s.labels["node"], s.labels["device_uuid"]): s.value
                 for s in fams["hami_gpu_memory_allocated_bytes"].samples}
    assert allocated[("gpu-1", "GPU-1-0")] == 3000 * 2**20
    assert allocated[("gpu-1", "GPU-1-1")] == 3000 * 2**20
    shared = {s.labels["device_uuid"]: s.value for s in fams["hami_gpu_shared_count"].samples}
    assert shared["GPU-1-0"] == 1
    limit = {s.labels["device_uuid"]: s.value
             for s in fams["hami_gpu_memory_limit_bytes"].samples}
    assert limit["GPU-1-0"] == 16384 * 2**20


def test_bad_inputs_a_missing_pod_and_a_patch_conflict(cluster):
    api, ext = cluster
    # A pod nobody filtered and the API server does not have.
    r = ext.post("/bind", {"PodName": "ghost", "PodNamespace": "default", "PodUID": "u-ghost",
                           "Node": "gpu-1"})
    assert r["Error"] == ("pod default/ghost (uid u-ghost): not seen by filter; expected filter "
                          "before bind")
    # The API server answers the annotation patch with 409 Conflict: the bind fails with the
    # API server's words, the reservation is undone, and nothing is bound.
    pod = api.add_pod("p5", containers=[gpu_container()])
    ext.post("/filter", filter_args(pod, ["gpu-1"]))
    api.fault(method="PATCH", path="/pods/p5", status=409, message="the object has been modified")
    r = ext.post("/bind", bind_args(pod, "gpu-1"))
    assert r["Error"].startswith("pod default/p5: binding failed: PATCH ")
    assert "409" in r["Error"]
    assert ext.usage("gpu-1") == [3000, 0]
    assert api.get("pods", "p5")["spec"].get("nodeName", "") == ""
    # The next attempt (kube-scheduler retries) succeeds.
    ext.post("/filter", filter_args(pod, ["gpu-1"]))
    assert ext.post("/bind", bind_args(pod, "gpu-1"))["Error"] == ""
    assert api.get("pods", "p5")["spec"]["nodeName"] == "gpu-1"
    # Malformed bodies: a 400 naming what was expected.
    status, text = ext.request("POST", "/bind", None)
    assert status == 400 and "ExtenderBindingArgs" in text


def test_a_node_whose_device_plugin_is_gone_offers_no_gpus(cluster):
    api, ext = cluster
    # kubelet zeroes the allocatable count when the device plugin goes; the registration stays.
    api.update("nodes", "gpu-1",
               lambda n: n["status"].update({"allocatable": {"nvidia.com/gpu": "20", "cpu": "8"}}))
    pod = api.add_pod("after-plugin", containers=[gpu_container()])
    wait_for(lambda: ext.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"],
             "gpu-1 with its plugin")
    api.update("nodes", "gpu-1",
               lambda n: n["status"]["allocatable"].update({"nvidia.com/gpu": "0"}))

    def refused():
        r = ext.post("/filter", filter_args(pod, ["gpu-1"]))
        return not r["NodeNames"] and r["FailedAndUnresolvableNodes"].get("gpu-1")
    why = wait_for(refused, "gpu-1 refused once its plugin is gone")
    assert "allocatable[nvidia.com/gpu] is 0" in why and "device plugin is gone" in why
    # A pod without GPUs still goes there; the plugin's return brings the GPUs back.
    cpu_pod = api.add_pod("cpu-only", containers=[{"name": "main"}])
    assert ext.post("/filter", filter_args(cpu_pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
    api.update("nodes", "gpu-1",
               lambda n: n["status"]["allocatable"].update({"nvidia.com/gpu": "20"}))
    wait_for(lambda: ext.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"],
             "gpu-1 with its plugin back")


def test_a_configured_resource_name_is_the_one_checked(fake_apiserver):
    api = fake_apiserver
    api.add_node("gpu-1", annotations={REGISTER: registration("GPU-1-", 2)},
                 status={"allocatable": {"nvidia.com/gpu": "0", "example.com/vgpu": "0"}})
    ext = Extender("--apiserver", api.url, "--resource-name", "example.com/vgpu")
    try:
        limits = {"example.com/vgpu": "1"}
        pod = api.add_pod("named", containers=[{"name": "main", "resources": {"limits": limits}}])
        r = ext.post("/filter", filter_args(pod, ["gpu-1"]))
        assert r["NodeNames"] == []
        assert "allocatable[nvidia.com/gpu] is 0" in r["FailedAndUnresolvableNodes"]["gpu-1"]
        # Only the configured name counts: nvidia.com/gpu at 0 does not matter.
        api.update("nodes", "gpu-1",
                   lambda n: n["status"]["allocatable"].update({"example.com/vgpu": "20"}))
        wait_for(lambda: ext.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] ==
                 ["gpu-1"], "gpu-1 with the configured resource")
    finally:
        ext.close()


TOKEN = "s3cret-token-0123456789abcdef"


def test_verbs_need_the_token_and_reads_stay_open(fake_apiserver, tmp_path):
    api = fake_apiserver
    api.add_node("gpu-1", annotations={REGISTER: registration("GPU-1-", 2)})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ext = Extender("--apiserver", api.url, "--auth-token-file", str(token_file))
    try:
        pod = api.add_pod("guarded", containers=[gpu_container()])
        for verb, body in (("filter", filter_args(pod, ["gpu-1"])),
                           ("prioritize", filter_args(pod, ["gpu-1"])),
                           ("bind", bind_args(pod, "gpu-1")), ("release", bind_args(pod, "gpu-1"))):
            for path in (f"/{verb}", f"/wrong-token-0123456789/{verb}"):
                status, text = ext.request("POST", path, body)
                assert status == 401, (path, text)
                assert "unauthenticated" in json.loads(text)["Error"]
        assert api.get("pods", "guarded")["spec"].get("nodeName", "") == ""
        assert ext.usage("gpu-1") == [0, 0]
        # Reads stay open.
        for path in ("/healthz", "/readyz", "/state", "/metrics"):
            assert ext.request("GET", path)[0] == 200, path
        # kube-scheduler's urlPrefix carries the token; a bearer header does too.
        assert ext.post(f"/{TOKEN}/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
        assert ext.post(f"/{TOKEN}/bind", bind_args(pod, "gpu-1"))["Error"] == ""
        assert api.get("pods", "guarded")["spec"]["nodeName"] == "gpu-1"
        c = http.client.HTTPConnection("127.0.0.1", ext.port, timeout=CLIENT_TIMEOUT_S)
        c.request("POST", "/filter", body=json.dumps(filter_args(pod, ["gpu-1"])),
                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert c.getresponse().status == 200
        c.close()
    finally:
        ext.close()


def test_a_token_file_that_is_missing_or_weak_is_refused(tmp_path):
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    for path in (str(tmp_path / "missing"), str(weak)):
        r = subprocess.run([EXTENDER, "--nodes", os.devnull, "--auth-token-file", path],
                           capture_output=True, text=True, timeout=START_TIMEOUT_S)
        assert r.returncode != 0
        assert r.stderr.startswith(f"gpuslice_extender: {path}: "), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


LEASE_S = 2


def ready(ext: Extender) -> bool:
    try:
        return ext.request("GET", "/readyz", timeout=2)[0] == 200
    except OSError:
        return False


def test_two_replicas_elect_one_leader_and_the_follower_takes_over(fake_apiserver):
    api = fake_apiserver
    api.add_node("gpu-1", annotations={REGISTER: registration("GPU-1-", 2)})
    args = ("--apiserver", api.url, "--leader-elect", "--lease-namespace", "gpuslice",
            "--lease-duration-s", str(LEASE_S))
    a = Extender(*args, "--identity", "replica-a")
    b = Extender(*args, "--identity", "replica-b")
    try:
        wait_for(lambda: ready(a) or ready(b), "a leader")
        time.sleep(LEASE_S / 2)  # the other replica tries at least once meanwhile
        assert ready(a) != ready(b), "exactly one leader"
        leader, follower = (a, b) if ready(a) else (b, a)
        lease = api.get("leases", "gpuslice-extender", namespace="gpuslice")
        assert lease["spec"]["holderIdentity"] == ("replica-a" if leader is a else "replica-b")
        assert lease["spec"]["leaseDurationSeconds"] == LEASE_S

        # The follower filters but neither binds nor releases.
        pod = api.add_pod("elected", containers=[gpu_container()])
        assert follower.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
        status, text = follower.request("POST", "/bind", bind_args(pod, "gpu-1"))
        assert status == 503 and "not the leader" in json.loads(text)["Error"]
        assert api.get("pods", "elected")["spec"].get("nodeName", "") == ""

        # The leader dies without giving the lease up: the follower takes over once it expires.
        leader.kill()
        start = time.monotonic()
        wait_for(lambda: ready(follower), "the follower to take over")
        assert time.monotonic() - start < 5 * LEASE_S  # the lease's duration and a few tries
        lease = api.get("leases", "gpuslice-extender", namespace="gpuslice")
        assert lease["spec"]["holderIdentity"] == ("replica-b" if leader is a else "replica-a")
        assert lease["spec"]["leaseTransitions"] >= 1
        assert follower.post("/filter", filter_args(pod, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
        assert follower.post("/bind", bind_args(pod, "gpu-1"))["Error"] == ""
        assert api.get("pods", "elected")["spec"]["nodeName"] == "gpu-1"

        # A new replica while the lease is held stays a follower; a clean stop hands over at once.
        c = Extender(*args, "--identity", "replica-c")
        try:
            time.sleep(LEASE_S)
            assert not ready(c)
            assert "released the lease" in follower.close()
            wait_for(lambda: ready(c), "replica-c after the holder released the lease",
                     timeout=3 * LEASE_S)
        finally:
            c.close()
    finally:
        for e in (a, b):
            if e.proc.poll() is None:
                e.close()


def test_a_pod_that_fits_nowhere_or_fails_to_bind_gets_an_event(cluster):
    api, ext = cluster
    pod = api.add_pod("too-big", containers=[gpu_container(mem="40000")])
    r = ext.post("/filter", filter_args(pod, ["gpu-1", "broken"]))
    assert r["NodeNames"] == []
    ev = wait_for(lambda: [e for e in api.objects("events")
                           if e["involvedObject"]["name"] == "too-big"], "a FilteringFailed event")
    assert len(ev) == 1
    e = ev[0]
    assert e["metadata"]["namespace"] == "default"
    assert e["involvedObject"]["kind"] == "Pod"
    assert e["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert (e["type"], e["reason"]) == ("Warning", "FilteringFailed")
    assert e["message"].startswith("no available node, 2 nodes do not meet: ")
    assert "gpu-1: gpuslice: " in e["message"] and "broken: gpuslice: node skipped" in e["message"]
    assert e["source"]["component"] == "gpuslice-extender"
    # kube-scheduler's retry of the same pod, failing the same way, adds no second Event (the
    # BindingFailed Event below is posted after it would have been).
    assert ext.post("/filter", filter_args(pod, ["gpu-1", "broken"]))["NodeNames"] == []

    # A pod that fits gets no event; a failed bind gets BindingFailed with bind's error.
    ok = api.add_pod("fits", containers=[gpu_container()])
    assert ext.post("/filter", filter_args(ok, ["gpu-1"]))["NodeNames"] == ["gpu-1"]
    api.fault(method="POST", path="/pods/fits/binding", status=409, message="already bound")
    err = ext.post("/bind", bind_args(ok, "gpu-1"))["Error"]
    assert err
    bound = wait_for(lambda: [e for e in api.objects("events")
                              if e["involvedObject"]["name"] == "fits"], "a BindingFailed event")
    assert [(e["reason"], e["message"]) for e in bound] == [("BindingFailed", err)]
    assert len([e for e in api.objects("events") if e["involvedObject"]["name"] == "too-big"]) == 1


def test_kubeconfig_runs_the_extender_outside_the_cluster(fake_apiserver, tmp_path):
    api = fake_apiserver
    api.add_node("gpu-1", annotations={REGISTER: registration("GPU-1-", 2)})
    kc = tmp_path / "kubeconfig"
    kc.write_text(f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    server: {api.url}
  name: fake
contexts:
- context:
    cluster: fake
    user: operator
  name: fake
current-context: fake
users:
- name: operator
  user:
    token: operator-token
""")
    ext = Extender("--kubeconfig", str(kc))
    try:
        assert ext.usage("gpu-1") == [0, 0]
        listed = [r for r in api.requests if r["path"] == "/api/v1/nodes"]
        assert listed and all(r["authorization"] == "Bearer operator-token" for r in listed)
    finally:
        ext.close()
    # A context that is not there: one line naming the file and what is missing.
    r = subprocess.run([EXTENDER, "--kubeconfig", str(kc), "--context", "prod"],
                       capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert r.returncode != 0
    assert r.stderr == f'gpuslice_extender: kubeconfig {kc}: contexts: no context named "prod"\n'


def test_tls_serving_keeps_the_token_off_the_wire(fake_apiserver, tmp_path):
    api = fake_apiserver
    api.add_node("gpu-1", annotations={REGISTER: registration("GPU-1-", 2)})
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("openssl cannot make a certificate")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ext = Extender("--apiserver", api.url, "--auth-token-file", str(token_file),
                   "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        # kube-scheduler's enableHTTPS with tlsConfig.caFile: the server's certificate verified.
        ctx = ssl.create_default_context(cafile=str(cert))
        pod = api.add_pod("over-tls", containers=[gpu_container()])
        c = http.client.HTTPSConnection("127.0.0.1", ext.port, timeout=CLIENT_TIMEOUT_S,
                                        context=ctx)
        c.request("POST", f"/{TOKEN}/filter", body=json.dumps(filter_args(pod, ["gpu-1"])))
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["NodeNames"] == ["gpu-1"]
        c.request("GET", "/readyz")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"ok")
        c.close()
        # Plain HTTP gets no answer.
        with pytest.raises((http.client.HTTPException, OSError)):
            ext.request("GET", "/healthz", timeout=2)
    finally:
        ext.close()
    # A key that does not match is refused with one line.
    other = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], capture_output=True,
                   check=True)
    r = subprocess.run([EXTENDER, "--nodes", os.devnull, "--tls-cert", str(cert), "--tls-key",
                        str(other)], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert r.returncode != 0
    assert r.stderr.startswith(f"gpuslice_extender: {cert}, {other}: "), r.stderr
