"""Prototype a placement policy in Python and compare it with gpuslice's built-in ones.

The policy below, ``tightest_fragment``, is a custom scorer for ``gpuslice.simulate``: for each
pod it receives the pod, the cluster's free resources (numpy arrays) and the nodes that can
take the pod, and returns one integer score per feasible node (larger wins). It is run through
the FGD paper's fill-up experiment on the embedded openb-shaped workload (no files needed),
beside every built-in policy, and the comparison is printed as a table.

    python examples/policy_prototype.py                 # seeds 42, 43, 44
    python examples/policy_prototype.py --seeds 10 --json results.json

Columns: GPU allocation ratio when the arrived load reaches 100% and 130% of GPU capacity
(higher is better), fragmentation rate at 90% arrived load, and GPUs left unallocated at 130%
(lower is better); each is the mean over seeds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import gpuslice

sim = importlib.import_module("gpuslice.simulation")

#: Milli-GPU of one whole GPU.
GPU_MILLI = 1000
#: Score of a node for a sharing pod when the pod opens a fresh GPU instead of filling a partly
#: used one: below every partly used fit (those score GPU_MILLI + 1 .. 2 * GPU_MILLI).
FRESH_GPU_SCORE = GPU_MILLI
#: Score lost per fully free GPU a whole-GPU pod leaves behind on its node.
LEFT_WHOLE_PENALTY = 100
#: (arrived %, metric key, column title) shown in the table.
COLUMNS = (
    (100, "alloc_ratio_pct", "alloc % @100"),
    (130, "alloc_ratio_pct", "alloc % @130"),
    (90, "frag_rate_pct", "frag rate % @90"),
    (130, "unallocated_gpus", "idle GPUs @130"),
)


def tightest_fragment(pod: dict, cluster: dict, feasible: np.ndarray) -> np.ndarray:
    """Fill partly used GPUs first, and there the one the pod fills most tightly; whole-GPU pods
    go where they leave the fewest free GPUs; CPU-only pods go where they strand fewest GPUs.

    The idea: a sharing pod that opens a fresh GPU fragments it, so it should take the smallest
    leftover among partly used GPUs; a whole-GPU pod should not break up a node with many
    free GPUs that a multi-GPU pod may need later."""
    free = cluster["gpu_free"][feasible]  # feasible x 8, -1 for absent GPUs
    milli = int(pod["gpu_milli"])
    gpus = int(pod["num_gpu"])
    if gpus == 0:
        # CPU-only: prefer nodes with the fewest free GPUs (none is best).
        return -cluster["gpu_free_total"][feasible].astype(np.int64)
    if gpus == 1 and milli < GPU_MILLI:
        fits = free >= milli
        partly_used = fits & (free < GPU_MILLI)
        leftover = np.where(partly_used, free - milli, GPU_MILLI)
        best = leftover.min(axis=1)
        # Partly used fit: 2000 - leftover (> 1000); otherwise a fresh GPU: 1000.
        return np.where(best < GPU_MILLI, 2 * GPU_MILLI - best, FRESH_GPU_SCORE).astype(np.int64)
    whole_free = (free >= GPU_MILLI).sum(axis=1)
    return (GPU_MILLI - LEFT_WHOLE_PENALTY * (whole_free - gpus)).astype(np.int64)


def compare(seeds: list[int], load: float = sim.DEFAULT_LOAD) -> list[dict]:
    """Runs the custom scorer and every built-in policy on the embedded default workload."""
    nodes, pods = sim.load_workload()
    workload = sim.prepare(nodes, pods)
    # A Python scorer holds the GIL, so it runs alone; the built-ins run on every core.
    custom = sim.simulate_many(workload, [tightest_fragment], seeds, load=load)
    return custom + sim.simulate_many(workload, sim.POLICIES, seeds, load=load)


def table_rows(results: list[dict]) -> list[tuple[str, list[float]]]:
    """(policy, [mean of each column over seeds]) in the order of results, best
    allocation at 130% first."""
    rows = []
    for policy in dict.fromkeys(r["policy"] for r in results):
        values = []
        for pct, key, _ in COLUMNS:
            stats = sim.summarise([r for r in results if r["policy"] == policy], key, pct)
            values.append(stats[policy]["mean"])
        rows.append((policy, values))
    rows.sort(key=lambda row: -row[1][1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3,
                        help="number of seeds, starting at 42 (default 3)")
    parser.add_argument("--load", type=float, default=sim.DEFAULT_LOAD,
                        help="fill-up target as a multiple of GPU capacity (default 1.3)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's result")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: expected at least 1")
    seeds = list(range(sim.PAPER_SEEDS[0], sim.PAPER_SEEDS[0] + args.seeds))

    start = time.perf_counter()
    results = compare(seeds, args.load)
    elapsed = time.perf_counter() - start

    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    table = Table(title=f"gpuslice {gpuslice.__version__}: fill-up to {args.load:g}x GPU "
                  f"capacity, embedded workload, {seed_text}")
    table.add_column("policy")
    for _, _, title in COLUMNS:
        table.add_column(title, justify="right")
    for policy, values in table_rows(results):
        table.add_row(policy, *(f"{v:.2f}" for v in values))
    Console(width=100).print(table)
    print(f"{len(results)} runs in {elapsed:.1f} s; tightest_fragment is the Python prototype")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([sim.to_json(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
