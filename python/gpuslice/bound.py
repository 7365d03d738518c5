"""An offline upper bound on the GPU allocation of a fill-up run (docs/placement.md).

Given the exact arrivals of a run (the fill-up plan of a seed), no placement, online or
offline, can allocate more milli-GPU than the optimum of a linear relaxation:

* variables x[t, c] >= 0: how many pods of request type t (cpu, memory, n, m, gpu_spec) go to
  nodes of class c (cpu, memory, GPUs, model); only where the model is allowed and one node of
  the class could hold one such pod;
* per type: at most as many as arrived (and, with ``placed_before``, at least as many as
  arrived before that load: every placement that fails no pod that early must place them);
* per class, summed over its nodes: milli-CPU, MiB, milli-GPU, pods (1001 a node);
* per class, the whole-GPU and bin-packing constraint through dual feasible functions
  (Fekete and Schepers): for k = 1..4, u_k(m) = floor((k+1) m / 1000) / k (or m / 1000 when
  (k+1) m / 1000 is an integer) sums to at most 1 over the pods sharing any one GPU, so
  sum over pods of n * u_k(m) <= GPUs. With k = 4 an 810-milli pod weighs a whole GPU.

The optimum is a bound, not a schedule: it splits a class's capacity freely across its nodes
and ignores arrival order. Needs scipy (HiGHS).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import _core
from .traces import NodeTable, PodTable

#: Pods a node may hold (PLACEMENT-SPEC §1).
MAX_PODS_PER_NODE = 1001
#: Milli-GPU in one GPU.
GPU_MILLI = 1000
#: The dual feasible functions used: u_k for these k.
DFF_KS: tuple[int, ...] = (1, 2, 3, 4)


def _dff(m: int, k: int) -> float:
    """Fekete-Schepers u_k on a share of m milli out of one GPU."""
    scaled = (k + 1) * m
    if scaled % GPU_MILLI == 0:
        return m / GPU_MILLI
    return math.floor(scaled / GPU_MILLI) / k


def _name_order(names: Sequence[str]) -> np.ndarray:
    # The core sorts by name bytewise; code-point order of str is the same for UTF-8.
    return np.array(sorted(range(len(names)), key=lambda i: str(names[i]).encode()), dtype=np.int64)


def allocation_bound(nodes: NodeTable, pods: PodTable, seed: int, load: float = 1.3,
                     placed_before_pct: float = 0.0) -> float:
    """Upper bound, in percent of GPU capacity, on the milli-GPU any placement can allocate
    from the fill-up arrivals of seed. placed_before_pct > 0 restricts to placements that place
    every pod arriving before that arrived load (percent of capacity), as any policy does that
    fails no pod so early. NaN when no placement can place them all."""
    try:
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the offline bound needs scipy (pip install scipy)") from e
    w = _core.Workload(list(map(str, nodes.sn)), nodes.cpu_milli, nodes.memory_mib, nodes.gpu,
                       list(map(str, nodes.model)), list(map(str, pods.name)), pods.cpu_milli,
                       pods.memory_mib, pods.num_gpu, pods.gpu_milli,
                       list(map(str, pods.gpu_spec)), pods.creation_time, pods.deletion_time)
    plan = _core.fillup_plan(w, int(seed), float(load))
    by_name = _name_order(list(map(str, pods.name)))
    cpu = np.asarray(pods.cpu_milli)[by_name]
    mem = np.asarray(pods.memory_mib)[by_name]
    n = np.asarray(pods.num_gpu)[by_name]
    m = np.where(n > 0, np.clip(np.asarray(pods.gpu_milli)[by_name], 0, GPU_MILLI), 0)
    spec = [str(pods.gpu_spec[i]) if n[j] > 0 else "" for j, i in enumerate(by_name)]
    capacity = int(np.sum(nodes.gpu)) * GPU_MILLI
    forced_limit = placed_before_pct / 100.0 * capacity

    # Request types of the arrivals: count, and how many arrived before the forced limit.
    types: dict[tuple, list[int]] = {}
    arrived = 0
    for i in plan["order"]:
        key = (int(cpu[i]), int(mem[i]), int(n[i]), int(m[i]),
               tuple(sorted({t for t in spec[i].split("|") if t})))
        entry = types.setdefault(key, [0, 0])
        entry[0] += 1
        if arrived < forced_limit:  # the load that arrived before this pod
            entry[1] += 1
        arrived += int(n[i] * m[i])
    classes: dict[tuple, int] = {}
    for c, mm, g, mdl in zip(nodes.cpu_milli, nodes.memory_mib, nodes.gpu, nodes.model):
        k = (int(c), int(mm), int(g), str(mdl))
        classes[k] = classes.get(k, 0) + 1
    type_list = list(types.items())
    class_list = list(classes.items())

    var: list[tuple[int, int]] = []
    for ti, ((tc, tm, tn, tmilli, tspec), _) in enumerate(type_list):
        for ci, ((cc, cm, cg, cmodel), _) in enumerate(class_list):
            if tc > cc or tm > cm:
                continue
            if tmilli > 0 and (tn > cg or (tspec and cmodel not in tspec)):
                continue
            var.append((ti, ci))
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    upper: list[float] = []

    def add(coefs: list[tuple[int, float]], bound: float) -> None:
        r = len(upper)
        for v, a in coefs:
            rows.append(r)
            cols.append(v)
            vals.append(a)
        upper.append(bound)

    by_type: dict[int, list[int]] = {}
    by_class: dict[int, list[int]] = {}
    for v, (ti, ci) in enumerate(var):
        by_type.setdefault(ti, []).append(v)
        by_class.setdefault(ci, []).append(v)
    for ti, (_, (count, forced)) in enumerate(type_list):
        vs = by_type.get(ti, [])
        if forced > 0 and not vs:
            return float("nan")
        add([(v, 1.0) for v in vs], count)
        if forced > 0:
            add([(v, -1.0) for v in vs], -forced)
    for ci, ((cc, cm, cg, _), count) in enumerate(class_list):
        vs = by_class.get(ci, [])
        t = [type_list[var[v][0]][0] for v in vs]
        add([(v, k[0]) for v, k in zip(vs, t)], cc * count)
        add([(v, k[1]) for v, k in zip(vs, t)], cm * count)
        add([(v, 1.0) for v in vs], MAX_PODS_PER_NODE * count)
        add([(v, k[2] * k[3]) for v, k in zip(vs, t)], cg * GPU_MILLI * count)
        for k in DFF_KS:
            add([(v, key[2] * _dff(key[3], k)) for v, key in zip(vs, t) if key[3] > 0],
                cg * count)
    if not var:
        return 0.0
    a = coo_matrix((vals, (rows, cols)), shape=(len(upper), len(var))).tocsr()
    gain = -np.array([type_list[ti][0][2] * type_list[ti][0][3] for ti, _ in var], dtype=float)
    res = linprog(gain, A_ub=a, b_ub=np.array(upper, dtype=float), bounds=(0, None),
                  method="highs")
    if res.status == 2:  # infeasible: the forced pods cannot all be placed
        return float("nan")
    if res.status != 0:
        raise RuntimeError(f"offline bound: the LP solver stopped: {res.message}")
    return 100.0 * min(-res.fun, capacity) / capacity
