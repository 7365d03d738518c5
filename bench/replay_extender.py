#!/usr/bin/env python3
"""Plays the openb fill-up through the live gpuslice_extender, as kube-scheduler drives it.

The fake API server (tests/k8s/fake_apiserver.py) holds the openb node list, each node with
HAMi's ``hami.io/node-nvidia-register`` annotation and its CPU and memory as allocatable
(``--replicate N`` holds N copies of the list: 8 gives 9,704 nodes). The built
``gpuslice_extender`` follows it by list+watch and binds through it. The pods are those of
``gpuslice simulate --experiment fillup`` for the same trace, seed and load, in the same order
(the simulator's own submission order). Each pod is created in the API server, then:

1. NodeResourcesFit, as kube-scheduler runs it before any extender: the nodes whose CPU and
   memory left (and pod count) hold the pod's requests;
2. ``filter`` with those names (nodeCacheCapable), then ``prioritize`` with the nodes it passed;
3. the node with the largest score; equal scores go to the smaller name. Node names start with
   the simulator's per-seed node rank (``%05d-``, as the FGD artifact names them), so this is
   the simulator's tie-break (kube-scheduler would pick at random among equal totals);
4. ``bind``: the extender patches HAMi's annotations and creates the Binding; its watch then
   sees the pod bound while later pods are scheduled.

Every pod goes through the extender, CPU-only ones included: the deployment leaves the
extender's managedResources empty, so kube-scheduler sends it every pod (docs/placement.md).

The mapping from openb's request to HAMi's (bench/README.md): a pod of ``num_gpu`` n and
``gpu_milli`` m asks ``nvidia.com/gpu: n``, ``nvidia.com/gpumem-percentage: m/10`` and
``nvidia.com/gpucores: m/10`` (every openb share is a multiple of 10 milli, so this is exact);
a whole-GPU pod (m = 1000) asks 100 and 100. ``gpu_spec`` becomes HAMi's
``nvidia.com/use-gputype`` annotation (its models, comma-separated); each card's type is the
node's model. A card has 10 slots (HAMi's deviceSplitCount) and the memory of MODEL_MIB.

Prints (and with --json writes) allocation at 100% and 130% of load, discretised as the
simulator does (PLACEMENT-SPEC §8), beside the simulator's figure for the same run, pods/s
through filter+prioritize+bind, p50/p99 per verb, and how many pods went where the simulator
put them.

    .venv/bin/python bench/replay_extender.py --extender build/dev/examples/extender/gpuslice_extender \\
        --policy binpack --seed 42 [--replicate 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "k8s"))
from fake_apiserver import FakeAPIServer  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "alibaba-gpu-v2023"
#: Device memory of each openb model, MiB (G2 and G3 are not public: 16 GiB assumed). The
#: requests are percentages of the card, so the figures change no placement.
MODEL_MIB = {"V100M16": 16384, "V100M32": 32768, "P100": 16384, "T4": 15360, "A10": 24576,
             "G2": 16384, "G3": 16384}
DEFAULT_MIB = 16384
SPLIT = 10                # HAMi's deviceSplitCount: tasks per card
MAX_PODS = 1001           # the FGD artifact's pods per node
MILLI = 1000              # milli-GPU per card
PERCENT_PER_MILLI = 10    # gpu_milli / 10 = percent of the card
START_TIMEOUT_S = 120     # the extender lists every node before it serves
HTTP_TIMEOUT_S = 30
#: Each replayed policy: the extender's --node-policy and --gpu-policy, and the simulator's
#: policy it is compared with. binpack and spread run the extender's sim-binpack and sim-spread
#: (the simulator's formulas, which choose the GPUs themselves); hami-binpack and hami-spread
#: run HAMi's own node policies, with HAMi's GPU policy closest to the simulator's GPU choice,
#: against the simulator's binpack and spread, which they are not (docs/placement.md).
LIVE_POLICY = {"binpack": ("sim-binpack", "spread"), "spread": ("sim-spread", "spread"),
               "fgd": ("fgd", "spread"), "sfgd": ("sfgd", "spread"),
               "hami-binpack": ("binpack", "binpack"), "hami-spread": ("spread", "spread")}
SIM_POLICY = {"hami-binpack": "binpack", "hami-spread": "spread"}


def hami_limits(n: int, m: int) -> dict[str, str]:
    """HAMi's container limits for openb's (num_gpu n, gpu_milli m)."""
    if n <= 0 or m <= 0:
        return {}
    pct = str(min(m, MILLI) // PERCENT_PER_MILLI)
    return {"nvidia.com/gpu": str(n), "nvidia.com/gpumem-percentage": pct,
            "nvidia.com/gpucores": pct}


def registration(name: str, gpus: int, model: str) -> str:
    mib = MODEL_MIB.get(model, DEFAULT_MIB)
    return json.dumps([{"id": f"{name}-gpu{k}", "index": k, "count": SPLIT, "devmem": mib,
                        "devcore": 100, "type": model, "numa": 0, "mode": "hami-core",
                        "health": True} for k in range(gpus)], separators=(",", ":"))


def discretise(arrived: np.ndarray, allocated: np.ndarray, total_gpus: int, x: int) -> float:
    """alloc(X) of PLACEMENT-SPEC §8 from per-event arrived and allocated milli-GPU."""
    a = np.rint(arrived / (10.0 * total_gpus))
    u = np.round(allocated / (10.0 * total_gpus), 2)
    sel = u[a == x]
    if sel.size == 0:
        sel = u[(a >= x - 1) & (a <= x + 1)]
    return float(np.round(sel.mean(), 2)) if sel.size else math.nan


class Extender:
    """The extender program following \\p apiserver; stopped by close()."""

    def __init__(self, binary: str, apiserver: str, policy: str):
        node_policy, gpu_policy = LIVE_POLICY[policy]
        self.log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and block
        self.proc = subprocess.Popen(
            [binary, "--apiserver", apiserver, "--listen", "127.0.0.1", "--port", "0",
             "--node-policy", node_policy, "--gpu-policy", gpu_policy],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if "on http://127.0.0.1:" not in line:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.log.seek(0)
            why = self.log.read()
            self.log.close()
            raise RuntimeError(f"gpuslice_extender did not start: {line}{why}")
        self.port = int(line.split("on http://127.0.0.1:")[1].split()[0])
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)

    def post(self, path: str, body: dict | str) -> tuple[Any, float]:
        """The answer and the seconds from sending the encoded request (the body, or its JSON
        text) to reading the answer (this client's JSON encoding and decoding excluded)."""
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        t0 = time.perf_counter()
        self.conn.request("POST", path, text, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        took = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}: {data[:200]!r}")
        return json.loads(data), took

    def get(self, path: str) -> str:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.read().decode()

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        if not self.log.closed and self.proc.returncode is not None:
            self.log.close()


class ApiServer:
    """The fake API server in a process of its own (as a real one is another machine), holding
    the nodes and pods of a JSON file from the start; stopped by close()."""

    def __init__(self, objects: dict):
        self.file = tempfile.NamedTemporaryFile(mode="w", suffix=".json")
        json.dump(objects, self.file, separators=(",", ":"))
        self.file.flush()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                     "--serve-apiserver", self.file.name],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"the fake API server did not start: {self.url!r}")

    def close(self) -> None:
        self.proc.stdin.close()  # it serves until stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.file.close()


def serve_apiserver(path: str) -> int:
    """The ApiServer process: loads the objects of the file at path, prints the URL, serves
    until stdin closes."""
    objects = json.loads(Path(path).read_text())
    with FakeAPIServer(history=1_000_000) as api:
        for n in objects["nodes"]:
            api.add_node(n["name"], annotations=n["annotations"], status=n["status"])
        for p in objects["pods"]:
            api.add_pod(p["metadata"]["name"], uid=p["metadata"]["uid"],
                        annotations=p["metadata"]["annotations"],
                        containers=p["spec"]["containers"])
        # The tests' request and mutation records would only grow here.
        api.requests = _Discard()
        api.mutations = _Discard()
        print(api.url, flush=True)
        sys.stdin.read()
    return 0


class _Discard(list):
    """A list that keeps nothing appended to it."""

    def append(self, _item: Any) -> None:
        pass


def pod_object(name: str, uid: str, annotations: dict, container: dict) -> dict:
    """The Pod as FakeAPIServer.add_pod creates it (before the server's own metadata)."""
    return {"metadata": {"name": name, "namespace": "default", "annotations": annotations,
                         "labels": {}, "uid": uid},
            "spec": {"containers": [container]}, "status": {"phase": "Pending"}}


def replay(args: argparse.Namespace) -> dict:
    import gpuslice
    from gpuslice import _core
    from gpuslice.traces import NodeTable, read_nodes, read_pods

    nodes = read_nodes(args.nodes)
    pods = read_pods(args.pods)
    if args.limit_nodes:
        cut = slice(0, args.limit_nodes)
        nodes = NodeTable(sn=nodes.sn[cut], cpu_milli=nodes.cpu_milli[cut],
                          memory_mib=nodes.memory_mib[cut], gpu=nodes.gpu[cut],
                          model=nodes.model[cut])
    workload = gpuslice.simulation.prepare(nodes, pods)
    sim = gpuslice.simulation.run_one(workload, SIM_POLICY.get(args.policy, args.policy),
                                      "fillup", args.load, args.seed)
    plan = _core.fillup_plan(workload, args.seed, args.load)
    ranks = np.asarray(plan["ranks"])
    order = np.asarray(sim["events"]["pod"])
    sim_node = np.asarray(sim["events"]["node"])
    if args.limit_pods:
        order, sim_node = order[:args.limit_pods], sim_node[:args.limit_pods]

    sn = [str(s) for s in nodes.sn]
    cpu = np.asarray(nodes.cpu_milli, dtype=np.int64)
    mem = np.asarray(nodes.memory_mib, dtype=np.int64)
    gpus = np.asarray(nodes.gpu, dtype=np.int64)
    model = [str(m) for m in nodes.model]
    # The workload sorts nodes by name; ranks[i] is the i-th name's.
    by_name = sorted(range(len(sn)), key=lambda i: sn[i])
    reps = max(1, args.replicate)
    width = len(str(len(sn) * reps))
    names: list[str] = []
    node_of: list[int] = []  # trace node of each live node
    for r in range(reps):
        for pos, i in enumerate(by_name):
            rank = int(ranks[pos]) * reps + r
            names.append(f"{rank:0{width}d}-{sn[i]}" + (f"-r{r}" if reps > 1 else ""))
            node_of.append(i)
    index = {name: k for k, name in enumerate(names)}
    pos_of_trace = {i: pos for pos, i in enumerate(by_name)}
    cpu_free = np.array([cpu[i] for i in node_of], dtype=np.int64)
    mem_free = np.array([mem[i] for i in node_of], dtype=np.int64)
    pods_on = np.zeros(len(names), dtype=np.int64)
    total_gpus = int(gpus.sum()) * reps

    pod_name = [str(s) for s in pods.name]
    p_cpu = np.asarray(pods.cpu_milli, dtype=np.int64)
    p_mem = np.asarray(pods.memory_mib, dtype=np.int64)
    p_n = np.asarray(pods.num_gpu, dtype=np.int64)
    p_m = np.clip(np.asarray(pods.gpu_milli, dtype=np.int64), 0, MILLI)
    p_spec = [str(s) for s in pods.gpu_spec]
    # The simulator's pod indices are into the name-sorted pods.
    sorted_pods = sorted(range(len(pod_name)), key=lambda i: pod_name[i])

    times: dict[str, list[float]] = {"filter": [], "prioritize": [], "bind": []}
    arrived = np.zeros(len(order), dtype=np.int64)
    allocated = np.zeros(len(order), dtype=np.int64)
    same = 0
    failed = 0
    ties = 0  # GPU pods whose prioritize answer had its top score on more than one node
    # Every pod is created before the clock starts (as a batch submitted at once), so the
    # loop measures what kube-scheduler does: NodeResourcesFit, filter, prioritize, bind.
    node_objs = [{"name": names[k], "annotations": {
        "hami.io/node-nvidia-register": registration(names[k], int(gpus[i]), model[i])},
        "status": {"allocatable": {"cpu": f"{cpu[i]}m", "memory": f"{mem[i]}Mi",
                                   "pods": str(MAX_PODS)}}} for k, i in enumerate(node_of)]
    pod_objs: list[dict] = []
    pod_text: list[str] = []
    for k, idx in enumerate(order):
        j = sorted_pods[int(idx)]
        n, m = int(p_n[j]), int(p_m[j]) if int(p_n[j]) > 0 else 0
        ann = {}
        spec = [t for t in p_spec[j].split("|") if t and t != "nan"]
        if n > 0 and spec:
            ann["nvidia.com/use-gputype"] = ",".join(spec)
        container = {"name": "main", "resources": {
            "requests": {"cpu": f"{p_cpu[j]}m", "memory": f"{p_mem[j]}Mi"},
            "limits": hami_limits(n, m)}}
        pod_objs.append(pod_object(f"p{k}", f"uid-{k}", ann, container))
        pod_text.append(json.dumps(pod_objs[-1], separators=(",", ":")))
    quoted = [json.dumps(n_) for n_ in names]
    api = ApiServer({"nodes": node_objs, "pods": pod_objs})
    try:
        ext = Extender(args.extender, api.url, args.policy)
        try:
            start = time.perf_counter()
            a_sum = u_sum = 0
            for k, idx in enumerate(order):
                j = sorted_pods[int(idx)]
                n, m = int(p_n[j]), int(p_m[j]) if int(p_n[j]) > 0 else 0
                uid = f"uid-{k}"
                name = f"p{k}"
                a_sum += n * m
                fits = np.nonzero((cpu_free >= p_cpu[j]) & (mem_free >= p_mem[j]) &
                                  (pods_on < MAX_PODS))[0]
                chosen = -1
                if fits.size:
                    body = ('{"Pod":' + pod_text[k] + ',"NodeNames":[' +
                            ",".join([quoted[c] for c in fits]) + "]}")
                    fr, took = ext.post("/filter", body)
                    times["filter"].append(took)
                    passed = fr.get("NodeNames") or []
                    if passed:
                        body = ('{"Pod":' + pod_text[k] + ',"NodeNames":' +
                                json.dumps(passed, separators=(",", ":")) + "}")
                        pr, took = ext.post("/prioritize", body)
                        times["prioritize"].append(took)
                        top = max(h["Score"] for h in pr)
                        tops = [h["Host"] for h in pr if h["Score"] == top]
                        ties += 1 if len(tops) > 1 and n > 0 else 0
                        host = min(tops)
                        br, took = ext.post("/bind", {"PodName": name, "PodNamespace": "default",
                                                      "PodUID": uid, "Node": host})
                        times["bind"].append(took)
                        if br.get("Error"):
                            raise RuntimeError(f"bind {name} -> {host}: {br['Error']}")
                        chosen = index[host]
                if chosen >= 0:
                    cpu_free[chosen] -= p_cpu[j]
                    mem_free[chosen] -= p_mem[j]
                    pods_on[chosen] += 1
                    u_sum += n * m
                else:
                    failed += 1
                arrived[k], allocated[k] = a_sum, u_sum
                if args.progress and (k + 1) % args.progress == 0:
                    print(f"replay_extender: {k + 1}/{len(order)} pods, "
                          f"{(k + 1) / (time.perf_counter() - start):.0f} pods/s",
                          file=sys.stderr, flush=True)
                want = int(sim_node[k])
                if reps == 1:
                    live_trace = node_of[chosen] if chosen >= 0 else -1
                    same += 1 if (want < 0 and chosen < 0) or (
                        want >= 0 and chosen >= 0 and pos_of_trace[live_trace] == want) else 0
            wall = time.perf_counter() - start
            state = json.loads(ext.get("/state"))
            server = server_side(ext.get("/metrics"))
        finally:
            ext.close()
    finally:
        api.close()
    held = sum(d["cores_used_percent"] * PERCENT_PER_MILLI
               for n_ in state["nodes"] for d in n_["devices"])
    sim_ms = {m_["arrived_pct"]: m_["alloc_ratio_pct"] for m_ in sim["milestones"]}

    def pct(v: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(v) * 1000.0, q)) if v else math.nan

    out = {
        "policy": args.policy, "seed": args.seed, "load": args.load, "nodes": len(names),
        "pods": int(len(order)), "failed": failed, "prioritize_ties": ties, "wall_s": wall,
        "pods_per_s": len(order) / wall if wall > 0 else math.nan,
        "latency_ms": {v: {"p50": pct(t, 50), "p99": pct(t, 99), "count": len(t)}
                       for v, t in times.items()},
        "alloc_pct": {x: discretise(arrived, allocated, total_gpus, x) for x in (100, 130)},
        "sim_alloc_pct": {x: sim_ms.get(x) for x in (100, 130)} if reps == 1 else None,
        "same_node_as_sim": same if reps == 1 else None,
        "extender_held_milli": int(held), "replay_allocated_milli": int(u_sum),
        "server_ms": server,
    }
    return out


def server_side(metrics: str) -> dict[str, dict[str, float]]:
    """The extender's own filter and bind times from its /metrics histograms: the mean and the
    upper bound of the bucket that holds the 99th percentile, in ms."""
    out: dict[str, dict[str, float]] = {}
    for verb in ("filter", "bind"):
        name = f"gpuslice_extender_{verb}_duration_seconds"
        buckets: list[tuple[float, float]] = []
        total = count = 0.0
        for line in metrics.splitlines():
            if line.startswith(name + "_bucket{le=\""):
                le = line.split('le="')[1].split('"')[0]
                buckets.append((math.inf if le == "+Inf" else float(le), float(line.split()[-1])))
            elif line.startswith(name + "_sum"):
                total = float(line.split()[-1])
            elif line.startswith(name + "_count"):
                count = float(line.split()[-1])
        p99 = next((le for le, c in buckets if count and c >= 0.99 * count), math.nan)
        out[verb] = {"mean": 1000.0 * total / count if count else math.nan,
                     "p99_bucket": 1000.0 * p99}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve-apiserver":
        return serve_apiserver(argv[1])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--extender", default=os.environ.get("GPUSLICE_EXTENDER", ""),
                   help="the built gpuslice_extender (default: $GPUSLICE_EXTENDER)")
    p.add_argument("--nodes", default=str(DATA / "openb_node_list_gpu_node.csv"))
    p.add_argument("--pods", default=str(DATA / "openb_pod_list_default.csv"))
    p.add_argument("--policy", default="binpack", choices=sorted(LIVE_POLICY))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--load", type=float, default=1.3)
    p.add_argument("--replicate", type=int, default=1, help="copies of the node list")
    p.add_argument("--limit-nodes", type=int, default=0, help="first N nodes of the list only")
    p.add_argument("--limit-pods", type=int, default=0, help="first N pods of the order only")
    p.add_argument("--json", default="", help="write the result here")
    p.add_argument("--progress", type=int, default=0, help="a line on stderr every N pods")
    args = p.parse_args(argv)
    if not args.extender or not os.access(args.extender, os.X_OK):
        print("replay_extender: --extender: expected the built gpuslice_extender "
              f"(got {args.extender!r})", file=sys.stderr)
        return 2
    out = replay(args)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
