"""The simulator seen from Python: loaders, determinism, capacity, replay, custom scorers, CLI."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuslice
from gpuslice.traces import NodeTable, PodTable, find_openb_dir, read_nodes, read_pods
from gpuslice.workload import OPENB_SHAPE, generate

# The simulation module behind gpuslice.simulate.
sim = importlib.import_module("gpuslice.simulation")

POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
              "creation_time,deletion_time,scheduled_time\n")
_BESIDE_REPO = Path(__file__).resolve().parents[3] / "shared" / "data" / "alibaba-gpu-v2023"
OPENB = find_openb_dir() or (_BESIDE_REPO if (_BESIDE_REPO / "openb_node_list_gpu_node.csv").is_file()
                              else None)
needs_openb = pytest.mark.skipif(OPENB is None, reason="the openb trace (../shared/data/"
                                 "alibaba-gpu-v2023 or $GPUSLICE_OPENB_DIR) is not present")


def nodes_table(rows):
    """rows: (name, cpu, mem, gpus, model)."""
    return NodeTable(sn=np.array([r[0] for r in rows]), cpu_milli=np.array([r[1] for r in rows]),
                     memory_mib=np.array([r[2] for r in rows]),
                     gpu=np.array([r[3] for r in rows]), model=np.array([r[4] for r in rows]))


def pods_table(rows):
    """rows: (name, cpu, mem, num_gpu, gpu_milli, spec, creation, deletion)."""
    col = lambda k, dtype=np.int64: np.array([r[k] for r in rows], dtype=dtype)  # noqa: E731
    return PodTable(name=col(0, str), cpu_milli=col(1), memory_mib=col(2), num_gpu=col(3),
                    gpu_milli=col(4), gpu_spec=col(5, str), creation_time=col(6),
                    deletion_time=col(7))


@pytest.fixture(scope="module")
def small():
    nodes = nodes_table([(f"n{i:02d}", 32000, 1 << 20, [1, 2, 4, 8][i % 4], "T4" if i % 3 else "V100")
                         for i in range(16)])
    rng = np.random.default_rng(5)
    rows = []
    for i in range(120):
        kind = i % 5
        n = 0 if kind == 0 else (2 if kind == 4 else 1)
        m = 0 if kind == 0 else (int(rng.integers(1, 10)) * 100 if kind <= 2 else 1000)
        rows.append((f"p{i:03d}", int(rng.integers(1, 8)) * 1000, 1024, n, m,
                     "V100" if i % 17 == 0 and n else "", i, i + 25))
    return nodes, pods_table(rows)


# ---- loaders --------------------------------------------------------------------------------

@pytest.mark.parametrize("row,fragment", [
    ("p1,4000,1024,1,abc,,LS,Running,0,1,0", ":2: column 'gpu_milli': expected an integer"),
    ("p1,4000,1024,1,500,,LS,Running,0,1", ":2: expected 11 columns as in the header, got 10"),
    ("p1,-4,1024,1,500,,LS,Running,0,1,0", ":2: column 'cpu_milli': expected an integer"),
    ("p1,4000,1024,3,500,,LS,Running,0,1,0", ":2: column 'gpu_milli': expected 1000 or more"),
    ("p1,4000,1024,12,1000,,LS,Running,0,1,0", ":2: column 'num_gpu': expected an integer in 0..8"),
])
def test_pod_loader_errors_name_file_line_column(tmp_path, row, fragment):
    f = tmp_path / "pods.csv"
    f.write_text(POD_HEADER + "p0,1000,1024,0,0,,LS,Running,0,1,0\n" + row.replace(":2:", "") + "\n")
    fragment = fragment.replace(":2:", ":3:")
    with pytest.raises(ValueError) as info:
        read_pods(f)
    message = str(info.value)
    assert message.startswith(str(f) + ":3:")
    assert fragment in message
    assert "\n" not in message


def test_node_loader_errors(tmp_path):
    f = tmp_path / "nodes.csv"
    f.write_text("sn,cpu_milli,memory_mib,gpu\nn1,1,1,1\n")
    with pytest.raises(ValueError, match=r"nodes.csv:1: header lacks column 'model'"):
        read_nodes(f)
    f.write_text("sn,cpu_milli,memory_mib,gpu,model\nn1,1,1,x,T4\n")
    with pytest.raises(ValueError, match=r"nodes.csv:2: column 'gpu': expected an integer in 0..8, got 'x'"):
        read_nodes(f)
    with pytest.raises(OSError):
        read_nodes(tmp_path / "absent.csv")


@needs_openb
def test_real_trace_loads_as_numpy_tables():
    nodes = read_nodes(OPENB / "openb_node_list_gpu_node.csv")
    pods = read_pods(OPENB / "openb_pod_list_default.csv")
    assert len(nodes) == 1213 and nodes.total_gpus == 6212
    assert len(pods) == 8152 and pods.has_times
    assert pods.cpu_milli.dtype == np.int64
    multi = read_pods(OPENB / "openb_pod_list_multigpu50.csv")
    assert not multi.has_times and (multi.creation_time == -1).all()
    spec = read_pods(OPENB / "openb_pod_list_gpuspec33.csv")
    assert "V100M16|V100M32" in set(spec.gpu_spec)


# ---- the embedded default -------------------------------------------------------------------

def test_generator_has_the_openb_shape():
    nodes, pods = generate(3)
    assert len(nodes) == 1213
    assert set(nodes.gpu.tolist()) == {1, 2, 4, 8}
    assert nodes.total_gpus == sum(c * g for c, g, *_ in OPENB_SHAPE.node_types)
    kinds = np.select([pods.num_gpu == 0, pods.gpu_milli < 1000, pods.num_gpu == 1], [0, 1, 2], 3)
    share = np.bincount(kinds, minlength=4) / len(pods)
    assert np.allclose(share, OPENB_SHAPE.kind_mix, atol=0.015)
    again = generate(3)[1]
    assert np.array_equal(pods.cpu_milli, again.cpu_milli)
    assert not np.array_equal(pods.gpu_milli, generate(4)[1].gpu_milli)


# ---- runs -----------------------------------------------------------------------------------

def test_same_seed_same_result_other_seed_other_order(small):
    w = sim.prepare(*small)
    for policy in sim.POLICIES:
        a = sim.run_one(w, policy, seed=11)
        b = sim.run_one(w, policy, seed=11)
        assert np.array_equal(a["events"]["node"], b["events"]["node"]), policy
        assert a["milestones"] == b["milestones"]
    c = sim.run_one(w, "fgd", seed=12)
    assert not np.array_equal(a["events"]["pod"], c["events"]["pod"])


def test_allocation_never_exceeds_capacity(small):
    w = sim.prepare(*small)
    capacity = w.total_gpus * 1000
    for policy in sim.POLICIES:
        r = sim.run_one(w, policy, seed=3)
        ev = r["events"]
        assert r["gpu_capacity_milli"] == capacity
        assert (ev["allocated_milli"] <= capacity).all(), policy
        assert (np.diff(ev["arrived_milli"]) >= 0).all()
        assert ev["arrived_milli"][-1] >= 1.2 * capacity  # filled up to ~1.3x
        assert (ev["node"] < 0).sum() == sum(r["failed_pods"].values())
        for m in r["milestones"]:
            assert 0 <= m["alloc_ratio_pct"] <= 100


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 8), st.sampled_from(["A", "B"])), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 3), st.integers(1, 999), st.integers(0, 64000)),
                min_size=1, max_size=40),
       st.sampled_from(sim.POLICIES), st.integers(0, 2**31))
def test_any_small_workload_keeps_capacity(node_rows, pod_rows, policy, seed):
    nodes = nodes_table([(f"n{i}", 32000, 4096, g, mdl) for i, (g, mdl) in enumerate(node_rows)])
    pods = pods_table([(f"p{i}", cpu, 512, [0, 1, 1, 2][k], [0, milli, 1000, 1000][k], "", 0, 1)
                       for i, (k, milli, cpu) in enumerate(pod_rows)])
    if nodes.total_gpus == 0 or pods.gpu_request_milli.sum() == 0:
        return
    r = sim.run_one(sim.prepare(nodes, pods), policy, seed=seed)
    assert (r["events"]["allocated_milli"] <= nodes.total_gpus * 1000).all()
    placed = r["events"]["node"] >= 0
    assert placed.sum() + sum(r["failed_pods"].values()) == len(r["events"]["node"])


def test_replay_frees_resources_at_deletion_and_waiting_pods_start():
    nodes = nodes_table([("n", 8000, 1024, 1, "T4")])
    pods = pods_table([("a", 1000, 10, 1, 1000, "", 0, 10), ("b", 1000, 10, 1, 1000, "", 5, 20),
                       ("c", 1000, 10, 1, 1000, "", 10, 30), ("d", 1000, 10, 1, 300, "", 40, 99)])
    r = gpuslice.simulate(nodes, pods, policy="bestfit", experiment="replay")
    ev = r["events"]
    # b waits for a, c for b, d for c; each starts when the GPU frees up.
    assert ev["time_s"].tolist() == [0, 5, 10, 10, 10, 25, 25, 40, 45, 45, 104]
    assert ev["node"].tolist() == [0, -1, 0, 0, -1, 0, 0, -1, 0, 0, 0]
    assert ev["allocated_milli"].tolist() == [1000, 1000, 0, 1000, 1000, 0, 1000, 1000, 0, 300, 0]
    assert r["pods"]["departed"] == 4
    assert r["failed_pods"] == {"cpu": 0, "sharing": 0, "whole": 0, "multi": 0}
    assert r["milestones"] == []
    m = r["replay"]
    assert set(m) >= set(sim.REPLAY_MEASURES)
    assert m["waited_pods"] == 3 and m["failed_pods"] == 0
    assert m["wait_mean_s"] == pytest.approx(25 / 3)
    assert m["alloc_peak_pct"] == pytest.approx(100.0)


def test_replay_compress_loads_the_cluster_and_policies_differ():
    w = sim.prepare(*sim.load_workload())
    light = sim.run_one(w, "fgd", "replay", compress=1)["replay"]
    heavy = {p: sim.run_one(w, p, "replay", compress=50)["replay"] for p in ("fgd", "random")}
    assert heavy["fgd"]["alloc_peak_pct"] > light["alloc_peak_pct"]
    assert heavy["fgd"]["span_s"] == pytest.approx(light["span_s"] / 50)
    assert (heavy["random"]["waited_pods"] + heavy["random"]["failed_pods"] >
            heavy["fgd"]["waited_pods"] + heavy["fgd"]["failed_pods"])
    with pytest.raises(ValueError, match="compress"):
        sim.run_one(w, "fgd", "replay", compress=0)


def test_replay_needs_times():
    nodes = nodes_table([("n", 8000, 1024, 1, "T4")])
    pods = pods_table([("a", 1000, 10, 1, 1000, "", -1, -1)])
    with pytest.raises(ValueError, match="replay needs creation_time and deletion_time"):
        gpuslice.simulate(nodes, pods, experiment="replay")


def test_custom_python_scorer(small):
    w = sim.prepare(*small)
    calls = []

    def prefer_last(pod, cluster, feasible):
        calls.append(len(feasible))
        assert cluster["gpu_free"].shape == (16, 8)
        assert set(pod) >= {"cpu_milli", "num_gpu", "gpu_milli", "kind"}
        return feasible  # the largest node index wins

    r = sim.run_one(w, prefer_last, seed=1)
    assert r["policy"] == "prefer_last" and calls
    # Replaying the placements: each pod went to the last node that could take it.
    nodes = r["events"]["node"]
    assert nodes.max() == 15
    first = next(i for i, n in enumerate(nodes) if n >= 0)
    assert nodes[first] == 15

    with pytest.raises(ValueError, match="expected .* scores"):
        sim.run_one(w, lambda pod, cluster, feasible: [1], seed=1)
    with pytest.raises(ZeroDivisionError):
        sim.run_one(w, lambda pod, cluster, feasible: 1 // 0, seed=1)


def test_bad_arguments_are_one_clear_line(small):
    w = sim.prepare(*small)
    with pytest.raises(ValueError, match="policy 'fastest': expected one of random, dotprod"):
        sim.run_one(w, "fastest")
    with pytest.raises(ValueError, match="experiment 'drain'"):
        sim.run_one(w, "fgd", experiment="drain")
    with pytest.raises(ValueError, match="give both"):
        gpuslice.simulate(nodes=small[0])


@needs_openb
def test_openb_default_trace_fgd_beats_random():
    r = {p: gpuslice.simulate(OPENB / "openb_node_list_gpu_node.csv",
                              OPENB / "openb_pod_list_default.csv", policy=p, seed=42)
         for p in ("fgd", "random")}
    assert r["fgd"]["pods"]["sampled"] == 2714  # Go's math/rand draws, seed 42
    alloc = {p: sim.milestone_value(r[p], "alloc_ratio_pct", 100) for p in r}
    assert alloc["fgd"] > alloc["random"]


# ---- CLI ------------------------------------------------------------------------------------

def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpuslice", "simulate", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def test_cli_table_json_and_plot(tmp_path):
    out = run_cli("--policy", "fgd", "random", "--seeds", "1-2", "--json", str(tmp_path / "r.json"),
                  "--plot", str(tmp_path / "a.png"))
    assert out.returncode == 0, out.stderr
    assert "fgd" in out.stdout and "random" in out.stdout and "alloc" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert [(d["policy"], d["seed"]) for d in data] == [("fgd", 1), ("fgd", 2), ("random", 1),
                                                        ("random", 2)]
    for d in data:
        assert {"policy", "seed", "experiment", "gpu_capacity_milli", "wall_s", "milestones",
                "failed_pods"} <= set(d)
        assert set(d["failed_pods"]) == {"cpu", "sharing", "whole", "multi"}
        m = d["milestones"][100]
        assert m["arrived_pct"] == 100
        assert {"alloc_ratio_pct", "frag_amount_milli", "frag_rate_pct", "unallocated_gpus"} <= set(m)
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tmp_path):
    bad = tmp_path / "pods.csv"
    bad.write_text(POD_HEADER + "p1,4000,1024,1,12x,,LS,Running,0,1,0\n")
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn1,8000,1024,1,T4\n")
    out = run_cli("--nodes", str(nodes), "--pods", str(bad))
    assert out.returncode == 1
    assert out.stderr.strip() == (f"gpuslice simulate: error: {bad}:2: column 'gpu_milli': "
                                  "expected an integer in 0..2147483647, got '12x'")
    assert run_cli("--seeds", "9-3").returncode == 2
    assert run_cli("--policy", "nope").returncode == 2
    out = run_cli("--pods", str(bad))
    assert out.returncode == 1 and "give both" in out.stderr
    out = run_cli("--load", "0")
    assert out.returncode == 1
    assert out.stderr.strip() == ("gpuslice simulate: error: --load 0: expected a multiple of GPU "
                                  "capacity in (0, 10]")


def test_cli_replay_on_the_embedded_default(tmp_path):
    out = run_cli("--experiment", "replay", "--compress", "20", "--policy", "fgd", "random",
                  "--seed", "1", "--plot", str(tmp_path / "r.png"))
    assert out.returncode == 0, out.stderr
    assert "replay" in out.stdout
    for column in ("alloc % mean", "alloc % peak", "frag rate % peak", "waited pods",
                   "gave up pods", "refused fitting", "accept % sharing"):
        assert column in out.stdout
    assert "—" not in out.stdout
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = run_cli("--compress", "3")
    assert out.returncode == 1 and "replay only" in out.stderr
