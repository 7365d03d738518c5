"""examples/policy_prototype.py: its scorer's choices, and a comparison table that is the
simulator's own numbers."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuslice

sim = importlib.import_module("gpuslice.simulation")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy_prototype.py"


@pytest.fixture(scope="module")
def prototype():
    spec = importlib.util.spec_from_file_location("policy_prototype", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cluster_of(free_rows: list[list[int]]) -> dict:
    free = np.full((len(free_rows), 8), -1, dtype=np.int64)
    for i, row in enumerate(free_rows):
        free[i, :len(row)] = row
    return {"gpu_free": free, "gpu_free_total": np.where(free > 0, free, 0).sum(axis=1)}


def test_sharing_pod_fills_the_tightest_partly_used_gpu(prototype):
    # Node 0: a 400-milli fragment; node 1: only whole GPUs; node 2: a 350-milli fragment.
    cluster = cluster_of([[400, 1000], [1000, 1000], [350]])
    pod = {"num_gpu": 1, "gpu_milli": 300, "cpu_milli": 1000, "memory_mib": 1024, "kind": "sharing"}
    scores = prototype.tightest_fragment(pod, cluster, np.array([0, 1, 2]))
    assert list(np.argsort(-scores)) == [2, 0, 1]
    assert scores[1] == prototype.FRESH_GPU_SCORE


def test_whole_and_cpu_pods_leave_free_gpus_together(prototype):
    cluster = cluster_of([[1000, 1000, 1000, 1000], [1000, 200], [0, 0]])
    whole = {"num_gpu": 1, "gpu_milli": 1000, "cpu_milli": 1000, "memory_mib": 1024,
             "kind": "whole"}
    scores = prototype.tightest_fragment(whole, cluster, np.array([0, 1]))
    assert scores[1] > scores[0]  # leaves no whole GPU free on node 1 vs three on node 0
    cpu = {"num_gpu": 0, "gpu_milli": 0, "cpu_milli": 1000, "memory_mib": 1024, "kind": "cpu"}
    scores = prototype.tightest_fragment(cpu, cluster, np.array([0, 1, 2]))
    assert int(np.argmax(scores)) == 2  # the node with no free GPU


def test_prototype_prints_the_simulators_comparison(tmp_path, prototype):
    out_json = tmp_path / "runs.json"
    run = subprocess.run([sys.executable, str(EXAMPLE), "--seeds", "1", "--json", str(out_json)],
                         capture_output=True, text=True, timeout=300, check=True)
    rows = {}
    for line in run.stdout.splitlines():
        m = re.match(r"^│ (\w+)\s+│\s+([\d.]+) │\s+([\d.]+) │\s+([\d.]+) │\s+([\d.]+) │$", line)
        if m:
            rows[m.group(1)] = [float(x) for x in m.groups()[1:]]
    assert set(rows) == {"tightest_fragment", *sim.POLICIES}
    assert f"{len(sim.POLICIES) + 1} runs in" in run.stdout

    # The table is the simulator's numbers for seed 42, recomputed here independently.
    workload = sim.prepare(*sim.load_workload())
    for policy in ("fgd", "random", "binpack"):
        result = sim.run_one(workload, policy, seed=42)
        assert rows[policy][1] == pytest.approx(
            sim.milestone_value(result, "alloc_ratio_pct", 130), abs=0.005)
        assert rows[policy][3] == pytest.approx(
            sim.milestone_value(result, "unallocated_gpus", 130), abs=0.005)
    custom = sim.run_one(workload, prototype.tightest_fragment, seed=42)
    assert rows["tightest_fragment"][1] == pytest.approx(
        sim.milestone_value(custom, "alloc_ratio_pct", 130), abs=0.005)

    # Rows are sorted by allocation at 130%, and the JSON holds every run.
    alloc = [v[1] for v in rows.values()]
    assert alloc == sorted(alloc, reverse=True)
    runs = json.loads(out_json.read_text())
    assert sorted(r["policy"] for r in runs) == sorted(rows)
    assert gpuslice.__version__ in run.stdout


def test_prototype_refuses_bad_arguments():
    run = subprocess.run([sys.executable, str(EXAMPLE), "--seeds", "0"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "--seeds 0: expected at least 1" in run.stderr
