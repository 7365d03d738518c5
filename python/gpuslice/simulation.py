"""The placement simulator: replays a GPU cluster trace through placement policies.

The heavy loop is C++ (``gpuslice._core.run_experiment``, PLACEMENT-SPEC §5-§8); this module
prepares the workload once, runs (policy, seed) pairs on a thread pool (the core releases the
GIL, so runs use every core), and shapes the results.

Experiments:

* ``fillup`` (default): the FGD paper's experiment. The trace is shuffled, then sampled with
  replacement until the GPU request reaches ``load`` x capacity; pods never depart; a pod that
  fails is dropped but counts in the arrived load; node ranks drawn per run break score ties.
  All draws come from a bit-exact port of Go's math/rand seeded with the run seed.
* ``replay``: pods arrive in creation_time order and depart at deletion_time.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np

from . import _core
from .traces import NodeTable, PathLike, PodTable, read_nodes, read_pods
from .workload import generate

#: Every built-in policy, in the order tables show them.
POLICIES: tuple[str, ...] = tuple(_core.policy_names)
#: The policies this package adds (docs/placement.md): stranding-aware FGD, which places every
#: pod that fits somewhere, and rsfgd, which holds sliver-making pods back from the last whole
#: GPUs.
NEW_POLICIES: tuple[str, ...] = ("sfgd", "rsfgd")
#: Parts of sfgd and rsfgd that ``knobs`` can switch (docs/placement.md, the ablations).
SFGD_KNOBS: tuple[str, ...] = ("exact", "pack", "cpu_fit", "host_all", "strand", "host",
                               "reserve", "reserve_fill", "reserve_big", "reserve_cpu")
#: Kubernetes' own placement: kube-scheduler's default scoring with DRA's structured-parameters
#: allocator (first fit over devices, capacity rounded up by the request policy), the baseline
#: an operator gets without gpuslice's scheduler (docs/placement.md). A placement policy: it
#: refuses only pods that do not fit under its rules.
DRA_POLICIES: tuple[str, ...] = ("dra",)
#: The dra policy's knob: percentageOfNodesToScore (0 = kube-scheduler's adaptive default).
DRA_KNOBS: tuple[str, ...] = ("dra_nodes_pct",)
#: The six policies of the FGD paper.
PAPER_POLICIES: tuple[str, ...] = ("random", "dotprod", "gpuclustering", "gpupacking", "bestfit",
                                   "fgd")
#: Policies that are admission control rather than placement: they may turn away a pod that
#: a node could hold (rsfgd holds sliver-making pods back from the last whole GPUs), so their
#: allocation is not comparable with the placement policies' and tables rank them apart.
ADMISSION_POLICIES: tuple[str, ...] = ("rsfgd",)
#: Pod kinds as results name them: CPU-only, sharing (one GPU, part of it), one whole GPU,
#: several whole GPUs.
POD_KINDS: tuple[str, ...] = ("cpu", "sharing", "whole", "multi")
#: How tables label the pod kinds.
POD_KIND_LABELS: dict[str, str] = {"sharing": "sharing", "whole": "1 GPU", "multi": "multi-GPU",
                                   "cpu": "CPU-only"}
#: Experiments by name.
EXPERIMENTS: tuple[str, ...] = ("fillup", "replay")
#: The paper's fill-up target, as a multiple of GPU capacity.
DEFAULT_LOAD = 1.3
#: The paper's seeds.
PAPER_SEEDS: tuple[int, ...] = tuple(range(42, 52))
#: What a replay's ``replay`` dict holds, each a measure over the load phase (first to last
#: arrival): time-weighted mean and peak allocation and fragmentation rate, pods that started
#: after waiting and their mean wait, pods that gave up, the span in seconds.
REPLAY_MEASURES: tuple[str, ...] = ("alloc_mean_pct", "alloc_peak_pct", "frag_rate_mean_pct",
                                    "frag_rate_peak_pct", "waited_pods", "wait_mean_s",
                                    "failed_pods", "span_s")
#: Highest arrived-load point reported, in percent.
MAX_ARRIVED_PCT = 130

#: A custom scorer: (pod, cluster, feasible) -> one integer per feasible node, larger wins.
#: pod is a dict (cpu_milli, memory_mib, num_gpu, gpu_milli, kind); cluster a dict of numpy
#: arrays indexed by node (cpu_left, memory_left, gpus, model, pods, gpu_free_total and gpu_free,
#: an N x 8 array with -1 for absent GPUs); feasible the indices of the feasible nodes.
Scorer = Callable[[dict, dict, np.ndarray], Sequence[int]]

NodesArg = Union[NodeTable, PathLike, None]
PodsArg = Union[PodTable, PathLike, None]


def load_workload(nodes: NodesArg = None, pods: PodsArg = None,
                  workload_seed: int = 0) -> tuple[NodeTable, PodTable]:
    """Tables from tables, CSV paths, or (both None) the embedded default generated with
    workload_seed."""
    if nodes is None and pods is None:
        return generate(workload_seed)
    if nodes is None or pods is None:
        raise ValueError("nodes and pods: give both (tables or CSV paths) or neither "
                         "(the embedded default workload)")
    node_table = nodes if isinstance(nodes, NodeTable) else read_nodes(nodes)
    pod_table = pods if isinstance(pods, PodTable) else read_pods(pods)
    return node_table, pod_table


def prepare(nodes: NodeTable, pods: PodTable) -> _core.Workload:
    """Validates the tables and hands them to the C++ core once; the result is shared by runs."""
    return _core.Workload(
        list(map(str, nodes.sn)), nodes.cpu_milli, nodes.memory_mib, nodes.gpu,
        list(map(str, nodes.model)), list(map(str, pods.name)), pods.cpu_milli, pods.memory_mib,
        pods.num_gpu, pods.gpu_milli, list(map(str, pods.gpu_spec)), pods.creation_time,
        pods.deletion_time)


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _load_pct(arrived_milli: int, capacity_milli: int) -> float | None:
    """Arrived load in percent of GPU capacity; None for the core's -1 (never happened)."""
    if arrived_milli < 0 or capacity_milli <= 0:
        return None
    return 100.0 * arrived_milli / capacity_milli


def _shape(raw: dict, policy: str, seed: int, experiment: str, load: float, wall: float,
           cpu: float) -> dict:
    ms = raw["milestones"]
    capacity = int(raw["total_gpus"]) * 1000
    attempted = {k: int(v) for k, v in raw["attempted_pods"].items()}
    failed = {k: int(v) for k, v in raw["failed_pods"].items()}
    milestones = [
        {
            "arrived_pct": x,
            "alloc_ratio_pct": _nan_to_none(ms["alloc_ratio_pct"][x]),
            "frag_amount_milli": _nan_to_none(ms["frag_amount_milli"][x]),
            "frag_amount_pct": _nan_to_none(ms["frag_amount_pct"][x]),
            "frag_rate_pct": _nan_to_none(ms["frag_rate_pct"][x]),
            "unallocated_gpus": _nan_to_none(ms["unallocated_gpus"][x]),
        }
        for x in range(len(ms["present"])) if ms["present"][x]
    ] if experiment == "fillup" else []  # arrived-load points mean nothing once pods depart
    return {
        "policy": policy,
        "seed": seed,
        "experiment": experiment,
        "load": load,
        "gpu_capacity_milli": capacity,
        "wall_s": wall,
        "cpu_s": cpu,
        "milestones": milestones,
        "failed_pods": failed,
        # placed / attempted by kind, in percent (None: no pod of that kind arrived)
        "acceptance_pct": {k: (100.0 * (attempted[k] - failed[k]) / attempted[k]
                               if attempted[k] else None) for k in POD_KINDS},
        # fill-up: arrived load (percent of GPU capacity) at the first failed pod, overall and
        # by kind; None where none failed (always None in a replay: load there is not arrived)
        "first_failure_pct": _load_pct(int(raw["first_failed_arrived"]), capacity),
        "first_failure_pct_by_kind": {
            k: _load_pct(int(raw["first_failed_arrived_by_kind"][k]), capacity)
            for k in POD_KINDS},
        "pods": {"trace": raw["trace_pods"], "sampled": raw["tuned_pods"],
                 "removed": raw["removed_pods"], "departed": raw["departures"],
                 "held_back": raw["held_back"], "attempted": attempted,
                 # refused while some node could hold them (the filter's verdict, checked
                 # apart from the policy): failed in the fill-up, sent to wait in the replay
                 "refused_fitting": int(raw["refused_fitting"]),
                 # arrived milli-GPU at the first pod held back (fill-up), None if none
                 "first_held_back_arrived_milli": (raw["first_held_back_arrived"]
                                                   if raw["first_held_back_arrived"] >= 0
                                                   else None)},
        "events": raw["events"],
        **({"replay": dict(raw["replay"])} if "replay" in raw else {}),
    }


def run_one(workload: _core.Workload, policy: str | Scorer = "fgd", experiment: str = "fillup",
            load: float = DEFAULT_LOAD, seed: int = 42, knobs: dict | None = None,
            compress: float = 1.0) -> dict:
    """One run on a prepared workload. A callable policy is a custom scorer (slow path: it is
    called once per pod that has more than one feasible node). knobs switch parts of sfgd
    and rsfgd (SFGD_KNOBS: exact, pack, cpu_fit, host_all as bools; strand, host, reserve,
    reserve_fill, reserve_big, reserve_cpu as numbers) for their ablations, and dra's
    percentageOfNodesToScore (DRA_KNOBS: dra_nodes_pct, 0 = adaptive, 100 = every node).
    compress divides a replay's inter-arrival times (durations kept), to load the cluster;
    a replay's result has a ``replay`` dict of its measures (REPLAY_MEASURES)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment {experiment!r}: expected one of {', '.join(EXPERIMENTS)}")
    scorer = policy if callable(policy) else None
    name = getattr(policy, "__name__", "custom") if scorer is not None else str(policy)
    if scorer is None and name not in POLICIES:
        raise ValueError(f"policy {name!r}: expected one of {', '.join(POLICIES)}")
    start = time.perf_counter()
    cpu_start = time.thread_time()
    raw = _core.run_experiment(workload, name if scorer is None else "custom", experiment,
                               int(seed), float(load), scorer, dict(knobs or {}), float(compress))
    # The run is computed on this thread: its CPU time is the run's own cost, whatever else
    # shares the cores.
    return _shape(raw, name, int(seed), experiment, float(load), time.perf_counter() - start,
                  time.thread_time() - cpu_start)


def simulate(nodes: NodesArg = None, pods: PodsArg = None, policy: str | Scorer = "fgd",
             experiment: str = "fillup", load: float = DEFAULT_LOAD, seed: int = 42,
             knobs: dict | None = None, compress: float = 1.0) -> dict:
    """Runs one experiment and returns the result object that ``gpuslice simulate --json``
    writes (plus ``events``: per-pod numpy arrays). nodes and pods are tables, CSV paths, or
    both None for the embedded default workload. knobs: see run_one."""
    node_table, pod_table = load_workload(nodes, pods)
    return run_one(prepare(node_table, pod_table), policy, experiment, load, seed, knobs,
                   compress)


def simulate_many(workload: _core.Workload, policies: Iterable[str | Scorer],
                  seeds: Iterable[int], experiment: str = "fillup", load: float = DEFAULT_LOAD,
                  jobs: int | None = None,
                  progress: Callable[[dict], None] | None = None,
                  knobs: dict | None = None, compress: float = 1.0) -> list[dict]:
    """Runs every (policy, seed) pair on jobs threads (default: all CPUs); results come back in
    (policy, seed) order. progress(result) is called as each run finishes. knobs: see run_one
    (they apply to sfgd only)."""
    pairs = [(p, s) for p in policies for s in seeds]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(pairs)))
    if any(callable(p) for p, _ in pairs):
        workers = 1  # a Python scorer holds the GIL: threads would only contend
    results: list[dict | None] = [None] * len(pairs)

    def one(i: int) -> None:
        p, s = pairs[i]
        results[i] = run_one(workload, p, experiment, load, s, knobs, compress)
        if progress is not None:
            progress(results[i])

    if workers == 1:
        for i in range(len(pairs)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(one, i) for i in range(len(pairs))]:
                f.result()
    return [r for r in results if r is not None]


def milestone_value(result: dict, key: str, arrived_pct: int) -> float:
    """The value of key at an arrived-load point, NaN when that point has none."""
    for m in result["milestones"]:
        if m["arrived_pct"] == arrived_pct:
            v = m[key]
            return float("nan") if v is None else float(v)
    return float("nan")


def summarise(results: Sequence[dict], key: str, arrived_pct: int) -> dict[str, dict[str, float]]:
    """Per policy: median, quartiles, mean and standard deviation over seeds of key at a point."""
    by_policy: dict[str, list[float]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(milestone_value(r, key, arrived_pct))
    out = {}
    for policy, values in by_policy.items():
        v = np.array([x for x in values if not math.isnan(x)])
        if len(v) == 0:
            out[policy] = {k: float("nan") for k in ("median", "q1", "q3", "mean", "std")}
            continue
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        out[policy] = {"median": float(med), "q1": float(q1), "q3": float(q3),
                       "mean": float(v.mean()), "std": float(v.std())}
    return out


def summarise_replay(results: Sequence[dict], key: str) -> dict[str, dict[str, float]]:
    """Per policy: mean and standard deviation over seeds of one replay measure."""
    by_policy: dict[str, list[float]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(float(r["replay"][key]))
    return {p: {"mean": float(np.mean(v)), "std": float(np.std(v))} for p, v in by_policy.items()}


def to_json(result: dict) -> dict[str, Any]:
    """The result without its numpy per-event arrays (what --json writes)."""
    return {k: v for k, v in result.items() if k != "events"}
