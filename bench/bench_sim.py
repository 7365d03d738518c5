"""Speed of the simulator on the openb default trace, against a pure-Python baseline.

Measures, on this machine:
  1. one fill-up run per policy on one core (C++ core through gpuslice._core), best of --repeat;
  2. the same run of FGD and BestFit in a careful pure-Python implementation of PLACEMENT-SPEC
     (numpy-vectorised filter, fragmentation cached by node state, FGD scores cached per node
     version), fed the same submission order and node ranks; its placements must equal the
     core's, pod for pod, so the baseline doubles as a cross-check;
  3. the paper's grid (6 policies x 10 seeds) and the full grid (every policy x 10) through
     the `gpuslice simulate` command line, wall and CPU time with --jobs 1 and with --jobs 2
     (CPU time shows the cost when other processes share the cores);
  4. sfgd's time per decision against FGD's, seeds 42-51, in the same process, alternating;
  5. the command's time per run against the core's: the paper grid through
     `gpuslice simulate --jobs 1` (start-up, reading and preparing the trace included) and
     the same 60 runs through `_core.run_experiment` in one loop, in the same run;
  6. fill-ups of the node list replicated 1x, 2x, 4x and 8x (seed 42) for the policies with a node
     index (fgd, sfgd, dotprod, gpuclustering, gpupacking): CPU time
     of the process (time.process_time), the median of --scale-repeat runs with the node index,
     the sizes interleaved in one loop so that load from other work falls on all of them alike;
     one run per size that scores every node, whose placements must be identical.

Usage: python bench/bench_sim.py [--openb-dir DIR] [--repeat 3] [--only-scale] [--scale-repeat 7]
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from gpuslice import read_nodes, read_pods
from gpuslice.traces import find_openb_dir

sim = importlib.import_module("gpuslice.simulation")
from gpuslice import _core  # noqa: E402

MAX_PODS_PER_NODE = 1001
MAX_SPEC_CPU = 128000.0
MAX_SPEC_GPU = 8000.0
THRESHOLD_PCT = 95


# ---- the pure-Python baseline ---------------------------------------------------------------

def typical_pods(W):
    """§3: keys (cpu, m, n, T) by count then key, descending; shortest 95% prefix."""
    counts = Counter((cpu, m, n, t if n else "") for cpu, mem, n, m, t in W)
    keys = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    total = sum(counts.values())
    target = THRESHOLD_PCT * total / 100
    cum, k = 0, 0
    while cum < target and k < len(keys):
        cum += keys[k][1]
        k += 1
    denom = total if k >= len(keys) else cum
    return keys[:k], denom


class PyFillup:
    """One fill-up run of FGD or BestFit, written for speed in plain Python plus numpy."""

    def __init__(self, nodes, pods, plan):
        node_row = {str(n): i for i, n in enumerate(nodes.sn)}
        rows = [node_row[n] for n in plan["node_names"]]
        self.models = sorted({str(m) for m in nodes.model if m})
        model_id = {m: i for i, m in enumerate(self.models)}
        self.cpu_alloc = nodes.cpu_milli[rows].astype(np.int64)
        self.mem_alloc = nodes.memory_mib[rows].astype(np.int64)
        self.gpus = nodes.gpu[rows].astype(np.int64)
        self.model = np.array([model_id.get(str(nodes.model[r]), -1) for r in rows])
        n = len(rows)
        self.cpu_used = np.zeros(n, np.int64)
        self.mem_used = np.zeros(n, np.int64)
        self.pods = np.zeros(n, np.int64)
        self.free = np.zeros((n, 8), np.int64)
        for i in range(n):
            self.free[i, : self.gpus[i]] = 1000
        self.version = [0] * n
        self.ranks = plan["ranks"]
        pod_row = {str(p): i for i, p in enumerate(pods.name)}
        self.W = []
        for name in plan["pod_names"]:
            r = pod_row[name]
            num, milli = int(pods.num_gpu[r]), int(pods.gpu_milli[r])
            m = 0 if num == 0 else max(0, min(milli, 1000))
            spec = "|".join(t for t in str(pods.gpu_spec[r]).split("|") if t)
            self.W.append((int(pods.cpu_milli[r]), int(pods.memory_mib[r]), num, m, spec))
        self.order = plan["order"]
        self.typical, self.denom = typical_pods(self.W)
        self.cache = {}
        self.frag = [self.amount(i, int(self.cpu_alloc[i]), self.free[i]) for i in range(n)]
        self.score_cache = {}

    def access(self, spec, model):
        return not spec or (model >= 0 and self.models[model] in spec.split("|"))

    def amount(self, i, cpu_left, free):
        model = int(self.model[i])
        g = int(self.gpus[i])
        fs = tuple(sorted((int(x) for x in free[:g]), reverse=True))
        key = (cpu_left, fs, model)
        v = self.cache.get(key)
        if v is None:
            L = sum(fs)
            v = 0
            for (cpu_t, m_t, n_t, t), count in self.typical:
                q3 = False
                small = 0
                if m_t > 0 and self.access(t, model):
                    fit = sum(1 for f in fs if f >= m_t)
                    small = sum(f for f in fs if f < m_t)
                    q3 = fit >= n_t and cpu_left >= cpu_t
                v += count * (small if q3 else L)
            self.cache[key] = v
        return v

    def fgd(self, i, cpu, n, m):
        ck = (i, cpu, n, m)
        hit = self.score_cache.get(ck)
        if hit is not None and hit[0] == self.version[i]:
            return hit[1], hit[2]
        before = self.frag[i]
        cpu_after = int(self.cpu_alloc[i] - self.cpu_used[i]) - cpu
        free = self.free[i].copy()

        def score(after):
            x = (before - after) / self.denom / 1000.0
            return int(100 * (1.0 / (1.0 + math.exp(-x))))

        best, gpu = -1, -1
        if n == 0 or m == 0:
            best = score(self.amount(i, cpu_after, free))
        elif m < 1000:
            seen = {}
            for g in range(int(self.gpus[i])):
                v = int(free[g])
                if v < m:
                    continue
                if v not in seen:
                    free[g] = v - m
                    seen[v] = score(self.amount(i, cpu_after, free))
                    free[g] = v
                if seen[v] > best:
                    best, gpu = seen[v], g
        else:
            taken = [g for g in range(int(self.gpus[i])) if free[g] >= m][:n]
            free[taken] -= m
            best = score(self.amount(i, cpu_after, free))
        self.score_cache[ck] = (self.version[i], best, gpu)
        return best, gpu

    def run(self, policy):
        placed = []
        for idx in self.order:
            cpu, mem, n, m, spec = self.W[idx]
            feas = ((self.pods + 1 <= MAX_PODS_PER_NODE) & (self.cpu_used + cpu <= self.cpu_alloc)
                    & (self.mem_used + mem <= self.mem_alloc))
            if m > 0:
                feas &= self.gpus > 0
                if spec:
                    feas &= np.array([self.access(spec, int(x)) for x in self.model])
                feas &= (self.free // m).sum(axis=1) >= n
            cand = np.flatnonzero(feas)
            if len(cand) == 0:
                placed.append(-1)
                continue
            gpu = -1
            if len(cand) == 1:
                pick = int(cand[0])
            elif policy == "bestfit":
                L = self.free[cand].sum(axis=1)
                cpu_left = self.cpu_alloc[cand] - self.cpu_used[cand]
                u = 0.5 * (cpu_left - cpu) / MAX_SPEC_CPU + 0.5 * (L - n * m) / MAX_SPEC_GPU
                raw = np.trunc(100 * (1 - u))
                pick = int(cand[np.lexsort((self.ranks[cand], -raw))[0]])
            else:
                best, best_rank, pick = -1, None, -1
                for i in cand.tolist():
                    s, g = self.fgd(i, cpu, n, m)
                    if s > best or (s == best and self.ranks[i] < best_rank):
                        best, best_rank, pick, gpu = s, self.ranks[i], i, g
            f = self.free[pick]
            if n > 0 and m > 0:
                if m < 1000 and policy == "fgd":
                    if gpu < 0:
                        gpu = self.fgd(pick, cpu, n, m)[1]
                    f[gpu] -= m
                elif m < 1000:
                    ok = [g for g in range(int(self.gpus[pick])) if f[g] >= m]
                    f[min(ok, key=lambda g: (f[g], g))] -= m
                else:
                    f[[g for g in range(int(self.gpus[pick])) if f[g] >= m][:n]] -= m
            self.cpu_used[pick] += cpu
            self.mem_used[pick] += mem
            self.pods[pick] += 1
            self.version[pick] += 1
            self.frag[pick] = self.amount(pick, int(self.cpu_alloc[pick] - self.cpu_used[pick]), f)
            placed.append(pick)
        return np.array(placed)


# ---- measurements ---------------------------------------------------------------------------

def best_of(repeat, fn):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def cli_grid(nodes_csv, pods_csv, policies, jobs):
    cmd = [sys.executable, "-m", "gpuslice", "simulate", "--nodes", str(nodes_csv), "--pods",
           str(pods_csv), "--seeds", "42-51", "--jobs", str(jobs), "--policy", *policies]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def sections_1_to_5(args, nodes, pods, nodes_csv, pods_csv, workload):
    """Sections 1 to 5; true when a cross-check failed."""
    print("\n1. one fill-up run on one core (C++ core)")
    core = {}
    for policy in sim.POLICIES:
        secs, r = best_of(args.repeat, lambda p=policy: sim.run_one(workload, p, seed=42))
        core[policy] = (secs, r)
        print(f"   {policy:14s} {secs * 1000:7.1f} ms   {len(r['events']['node'])} pods")
    print("\n2. pure-Python baseline (same order and ranks), placements compared pod by pod")
    plan = _core.fillup_plan(workload, 42, 1.3)
    for policy in ("bestfit", "fgd"):
        t = time.perf_counter()
        placed = PyFillup(nodes, pods, plan).run(policy)
        secs = time.perf_counter() - t
        same = np.array_equal(placed, core[policy][1]["events"]["node"])
        print(f"   {policy:14s} python {secs:6.2f} s   core {core[policy][0] * 1000:6.1f} ms   "
              f"ratio {secs / core[policy][0]:5.0f}x   identical placements: {same}")
        if not same:
            return True
    print("\n3. grids through `gpuslice simulate` (10 seeds, wall time incl. start-up)")
    for name, policies in (("paper grid 6x10", sim.PAPER_POLICIES),
                           (f"full grid {len(sim.POLICIES)}x10", sim.POLICIES)):
        one, cpu_one = cli_grid(nodes_csv, pods_csv, policies, 1)
        two, cpu_two = cli_grid(nodes_csv, pods_csv, policies, 2)
        print(f"   {name}: --jobs 1 {one:5.2f} s wall ({cpu_one:5.2f} s CPU)   --jobs 2 "
              f"{two:5.2f} s wall ({cpu_two:5.2f} s CPU)   speed-up {one / two:4.2f}x")
    print("\n4. time per decision, sfgd and rsfgd against fgd (seeds 42-51, best of --repeat "
          "per seed)")
    per = {"fgd": 0.0, "sfgd": 0.0, "rsfgd": 0.0}
    decisions = {p: 0 for p in per}
    for seed in sim.PAPER_SEEDS:
        for policy in per:
            secs, r = best_of(args.repeat, lambda p=policy, s=seed: _core.run_experiment(
                workload, p, "fillup", s, 1.3))
            per[policy] += secs
            decisions[policy] += len(r["events"]["node"])
    us = {p: 1e6 * per[p] / decisions[p] for p in per}
    print(f"   fgd {us['fgd']:.2f} us/decision   sfgd {us['sfgd']:.2f} us/decision "
          f"(ratio {us['sfgd'] / us['fgd']:.2f}x)   rsfgd {us['rsfgd']:.2f} us/decision "
          f"(ratio {us['rsfgd'] / us['fgd']:.2f}x)")
    print("\n5. the command's time per run against the core's (paper grid, 60 runs, one job)")
    t = time.perf_counter()
    for policy in sim.PAPER_POLICIES:
        for seed in sim.PAPER_SEEDS:
            _core.run_experiment(workload, policy, "fillup", seed, 1.3)
    core_wall = time.perf_counter() - t
    cmd_wall, _ = cli_grid(nodes_csv, pods_csv, sim.PAPER_POLICIES, 1)
    runs = len(sim.PAPER_POLICIES) * len(sim.PAPER_SEEDS)
    print(f"   core {1000 * core_wall / runs:.1f} ms/run   `gpuslice simulate` "
          f"{1000 * cmd_wall / runs:.1f} ms/run (start-up included)   ratio "
          f"{cmd_wall / core_wall:.2f}x")
    return False


def scale(nodes, pods, repeat):
    """Section 6; false when the node index changed a placement."""
    from gpuslice.traces import NodeTable

    print("\n6. node list replicated k times, seed 42: process CPU time, median of "
          f"{repeat} indexed runs per size (sizes interleaved), one run scoring every node")
    sizes = (1, 2, 4, 8)
    work = {}
    for k in sizes:
        big = NodeTable(sn=np.array([f"{s}-r{i}" for i in range(k) for s in nodes.sn]),
                        cpu_milli=np.tile(nodes.cpu_milli, k),
                        memory_mib=np.tile(nodes.memory_mib, k), gpu=np.tile(nodes.gpu, k),
                        model=np.tile(nodes.model, k))
        work[k] = (len(big), sim.prepare(big, pods))

    def cpu_run(k, policy, index):
        t = time.process_time()
        r = _core.run_experiment(work[k][1], policy, "fillup", 42, 1.3, None, {}, 1.0, index)
        return time.process_time() - t, r["events"]

    ok = True
    for policy in ("fgd", "sfgd", "dotprod", "gpuclustering", "gpupacking"):
        every = {}
        for k in sizes:
            every[k] = cpu_run(k, policy, False)
            same = all(np.array_equal(cpu_run(k, policy, True)[1][c], every[k][1][c])
                       for c in ("node", "gpus"))
            ok = ok and same
            if not same:
                print(f"   {policy} {k}x: the node index changed a placement")
        times = {k: [] for k in sizes}
        for _ in range(repeat):
            for k in sizes:
                times[k].append(cpu_run(k, policy, True)[0])
        med = {k: statistics.median(times[k]) for k in sizes}
        for k in sizes:
            print(f"   {policy:13s} {k}x {work[k][0]:6d} nodes {len(every[k][1]['node']):6d} "
                  f"decisions: index {med[k]:6.3f} s ({med[k] / med[1]:5.1f}x, runs "
                  f"{min(times[k]):.3f}-{max(times[k]):.3f})   every node {every[k][0]:6.3f} s "
                  f"({every[k][0] / every[1][0]:5.1f}x)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openb-dir", type=Path, default=find_openb_dir())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only-scale", action="store_true", help="run section 6 only")
    ap.add_argument("--scale-repeat", type=int, default=7,
                    help="indexed runs per size and policy in section 6 (the median is shown)")
    args = ap.parse_args()
    if args.openb_dir is None:
        print("the openb trace is needed: pass --openb-dir or set GPUSLICE_OPENB_DIR")
        return 2
    nodes_csv = args.openb_dir / "openb_node_list_gpu_node.csv"
    pods_csv = args.openb_dir / "openb_pod_list_default.csv"
    nodes, pods = read_nodes(nodes_csv), read_pods(pods_csv)
    workload = sim.prepare(nodes, pods)
    print(f"machine: {os.cpu_count()} CPUs; trace: {len(nodes)} nodes, {len(pods)} pods; "
          f"seed 42, load 1.3, best of {args.repeat}")
    if not args.only_scale and sections_1_to_5(args, nodes, pods, nodes_csv, pods_csv, workload):
        return 1
    if not scale(nodes, pods, args.scale_repeat):
        return 1
    print(f"\nload average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
