"""The offline allocation bound and `gpuslice sweep`."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim_tables import tables

sim = importlib.import_module("gpuslice.simulation")
pytest.importorskip("scipy")
bound = importlib.import_module("gpuslice.bound")

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
              "creation_time,deletion_time,scheduled_time\n")



def test_bound_sees_that_an_810_pod_spoils_a_gpu():
    # Only 810-milli pods: one per GPU at most, so at most 81% of any GPU can be allocated,
    # whatever the placement. Capacity alone would say 100%.
    nodes, pods = tables([(64000, 65536, 2, "A")] * 4, [(1000, 1024, 1, 810, "")] * 5)
    assert bound.allocation_bound(nodes, pods, seed=3) == pytest.approx(81.0)
    r = sim.run_one(sim.prepare(nodes, pods), "sfgd", seed=3)
    assert r["events"]["allocated_milli"][-1] == 8 * 810


def test_bound_counts_cpu_and_model():
    # Each node's CPU feeds one of its two GPUs; pods typed to B never fit on A nodes.
    nodes, pods = tables([(4000, 65536, 2, "A"), (4000, 65536, 2, "B")],
                         [(4000, 1024, 1, 1000, "")] * 3 + [(0, 1, 1, 1000, "B")])
    b = bound.allocation_bound(nodes, pods, seed=1)
    # At most: one untyped pod per node on CPU, plus B's second GPU by a typed pod.
    assert b == pytest.approx(75.0)
    # Requiring that a pod arriving first be placed can only lower it, never raise it.
    assert bound.allocation_bound(nodes, pods, seed=1, placed_before_pct=50) <= b
    # Typed pods for a model nobody has: no placement can place them.
    nodes_a, pods_c = tables([(4000, 65536, 2, "A")], [(1, 1, 1, 1000, "C")] * 3)
    assert math.isnan(bound.allocation_bound(nodes_a, pods_c, seed=1, placed_before_pct=50))


node_row = st.tuples(st.integers(0, 64000), st.integers(0, 65536), st.integers(1, 8),
                     st.sampled_from(["A", "B"]))
pod_row = st.one_of(
    st.tuples(st.integers(0, 32000), st.integers(0, 16384), st.just(1), st.integers(1, 999),
              st.sampled_from(["", "A", "B"])),
    st.tuples(st.integers(0, 32000), st.integers(0, 16384), st.integers(1, 4),
              st.just(1000), st.sampled_from(["", "A"])),
    st.tuples(st.integers(0, 16000), st.integers(0, 4096), st.just(0), st.just(0), st.just("")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(node_row, min_size=1, max_size=6), st.lists(pod_row, min_size=1, max_size=30),
       st.integers(0, 1000))
def test_no_policy_allocates_more_than_the_bound(node_rows, pod_rows, seed):
    nodes, pods = tables(node_rows, pod_rows)
    if (pods.num_gpu * np.minimum(pods.gpu_milli, 1000)).sum() == 0:
        return
    w = sim.prepare(nodes, pods)
    capacity = w.total_gpus * 1000
    b = bound.allocation_bound(nodes, pods, seed)
    for policy in ("fgd", "sfgd", "bestfit", "random"):
        r = sim.run_one(w, policy, seed=seed)
        ev = r["events"]
        if len(ev["node"]) == 0:
            continue  # the tune-down removed every pod (one pod above 1.3x capacity)
        assert 100.0 * ev["allocated_milli"][-1] / capacity <= b + 1e-6, policy
        if (ev["node"] >= 0).all():  # it failed no pod: the conditional bound applies too
            cond = bound.allocation_bound(nodes, pods, seed, placed_before_pct=130)
            assert 100.0 * ev["allocated_milli"][-1] / capacity <= cond + 1e-6, policy


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpuslice", "sweep", *args],
                          capture_output=True, text=True, check=False)


def test_sweep_table_json_and_plot(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "openb_node_list_gpu_node.csv").write_text(
        NODE_HEADER + "".join(f"n{i},64000,262144,{[2, 4, 8][i % 3]},{'AB'[i % 2]}\n"
                              for i in range(12)))
    for name, share in (("gpushare20", 0.2), ("gpushare100", 1.0), ("default", 0.4)):
        rows = []
        for i in range(80):
            m = int(rng.integers(1, 10)) * 100 if rng.random() < share else 1000
            rows.append(f"p{i},{int(rng.integers(1, 16)) * 1000},1024,1,{m},,LS,Running,0,1,0\n")
        (tmp_path / f"openb_pod_list_{name}.csv").write_text(POD_HEADER + "".join(rows))
    out = run_cli("--pods-dir", str(tmp_path), "--policy", "fgd", "sfgd", "--seeds", "1-2",
                  "--bound", "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png"))
    assert out.returncode == 0, out.stderr
    assert "of 3 pod lists" in out.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert [(r["trace"], r["policy"], r["seed"]) for r in data["runs"]][:4] == [
        ("default", "fgd", 1), ("default", "fgd", 2), ("default", "sfgd", 1),
        ("default", "sfgd", 2)]
    assert [r["trace"] for r in data["runs"][4::4]] == ["gpushare20", "gpushare100"]
    for trace in ("default", "gpushare20", "gpushare100"):
        rows = [r for r in data["summary"] if r["trace"] == trace]
        policies = [r for r in rows if not r["policy"].startswith("bound:")]
        best = max(r["alloc_pct_130"] for r in policies)
        assert [r["winner"] for r in policies] == [r["alloc_pct_130"] == best for r in policies]
        any_bound = next(r for r in rows if r["policy"] == "bound:any")
        assert best <= any_bound["alloc_pct_last"] + 1e-6
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_errors(tmp_path):
    out = run_cli("--pods-dir", str(tmp_path / "nope"))
    assert out.returncode == 1
    assert out.stderr.strip() == f"gpuslice sweep: error: --pods-dir {tmp_path / 'nope'}: not a folder"
    out = run_cli("--pods-dir", str(tmp_path))
    assert out.returncode == 1 and "no openb_pod_list_*.csv files" in out.stderr


def test_simulate_bound_rows_lie_above_every_policy():
    out = subprocess.run([sys.executable, "-m", "gpuslice", "simulate", "--policy", "fgd", "sfgd",
                          "--seed", "1", "--bound"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip()
            for line in out.stdout.splitlines() if line.startswith("│")}
    value = {k: float(v.split("±")[0]) for k, v in rows.items()}
    assert set(value) == {"fgd", "sfgd", "bound, any placement", "bound, no failure <90%"}
    assert value["sfgd"] <= value["bound, no failure <90%"] <= value["bound, any placement"]
    assert value["fgd"] <= value["bound, no failure <90%"]
    bad = subprocess.run([sys.executable, "-m", "gpuslice", "simulate", "--experiment", "replay",
                          "--bound"], capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "fillup only" in bad.stderr
