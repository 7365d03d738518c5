"""The dra policy (kube-scheduler's default placement of DRA claims) seen from Python and the CLI."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from gpuslice.traces import NodeTable, PodTable

sim = importlib.import_module("gpuslice.simulation")


def _tables(node_rows, pod_rows):
    nodes = NodeTable(sn=np.array([r[0] for r in node_rows]),
                      cpu_milli=np.array([r[1] for r in node_rows]),
                      memory_mib=np.array([r[2] for r in node_rows]),
                      gpu=np.array([r[3] for r in node_rows]),
                      model=np.array([r[4] for r in node_rows]))
    col = lambda k, dtype=np.int64: np.array([r[k] for r in pod_rows], dtype=dtype)  # noqa: E731
    pods = PodTable(name=col(0, str), cpu_milli=col(1), memory_mib=col(2), num_gpu=col(3),
                    gpu_milli=col(4), gpu_spec=col(5, str), creation_time=col(6),
                    deletion_time=col(7))
    return nodes, pods


def test_dra_is_a_placement_policy():
    assert "dra" in sim.POLICIES
    assert sim.DRA_POLICIES == ("dra",)
    assert "dra" not in sim.ADMISSION_POLICIES


def test_t4_takes_99_shares_of_10_milli_under_dra_and_100_under_binpack():
    # One T4 (15360 MiB): a 10-milli share asks 153.6 MiB, which the 1 MiB step rounds up to
    # 154, so 99 shares fill the card's memory while their cores and milli-GPU fit 100.
    nodes, pods = _tables([("n0", 640000, 1 << 20, 1, "T4")],
                          [(f"p{i:03d}", 1000, 64, 1, 10, "", i, i + 10_000)
                           for i in range(100)])
    w = sim.prepare(nodes, pods)
    dra = sim.run_one(w, "dra", load=1.0, seed=1)
    binpack = sim.run_one(w, "binpack", load=1.0, seed=1)
    assert dra["failed_pods"]["sharing"] == 1
    assert dra["pods"]["refused_fitting"] == 1  # the milli-GPU model would have taken it
    assert binpack["failed_pods"]["sharing"] == 0


def test_nodes_pct_knob(tmp_path):
    nodes, pods = _tables([(f"n{i:03d}", 32000, 1 << 17, 1, "T4") for i in range(150)],
                          [(f"p{i:03d}", 1000 * (1 + i % 7), 2048, 1, 100 * (1 + i % 9), "",
                            i, i + 50) for i in range(300)])
    w = sim.prepare(nodes, pods)
    adaptive = sim.run_one(w, "dra", seed=3)
    every = sim.run_one(w, "dra", seed=3, knobs={"dra_nodes_pct": 100})
    # 150 nodes: the adaptive default looks for 100 feasible nodes, so the choices differ.
    assert adaptive["events"]["node"].tolist() != every["events"]["node"].tolist()
    with pytest.raises(ValueError, match="dra_nodes_pct 101: expected 0"):
        sim.run_one(w, "dra", knobs={"dra_nodes_pct": 101})


def test_cli_runs_dra_beside_binpack(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "gpuslice", "simulate", "--policy", "dra",
                           "binpack", "--seed", "42", "--dra-nodes-pct", "100", "--json",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "dra" in proc.stdout
    runs = json.loads(out.read_text())
    assert sorted({r["policy"] for r in runs}) == ["binpack", "dra"]
