"""sfgd, the stranding-aware FGD policy, and rsfgd, which holds sliver-making pods back from the
last whole GPUs: physical invariants under any workload, determinism, and at least FGD's
allocation on the embedded default workload."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim_tables import tables

sim = importlib.import_module("gpuslice.simulation")

MILLI = 1000
#: Pods one node may hold (PLACEMENT-SPEC §1).
MAX_PODS = 1001



def fits(cpu_left, mem_left, free, model, pod, pods_on_node):
    """The feasibility rule of PLACEMENT-SPEC §2, written out independently of the core."""
    cpu, mem, n, m, spec = pod
    if pods_on_node + 1 > MAX_PODS or cpu > cpu_left or mem > mem_left:
        return False
    if n == 0 or m == 0:
        return True
    if spec and model not in spec.split("|"):
        return False
    m = min(m, MILLI)
    if n == 1 or m >= MILLI:
        return sum(f >= m for f in free) >= n
    return sum(f // m for f in free) >= n


node_row = st.tuples(st.integers(0, 64000), st.integers(0, 65536), st.integers(0, 8),
                     st.sampled_from(["A", "B"]))
pod_row = st.one_of(
    st.tuples(st.integers(0, 32000), st.integers(0, 16384), st.just(0), st.just(0), st.just("")),
    st.tuples(st.integers(0, 32000), st.integers(0, 16384), st.just(1), st.integers(1, 999),
              st.sampled_from(["", "A", "B", "A|B"])),
    st.tuples(st.integers(0, 32000), st.integers(0, 16384), st.integers(1, 8),
              st.integers(1000, 1500), st.sampled_from(["", "A", "B"])),
)
knobs = st.builds(
    lambda base, tests: {**base, **tests},
    st.fixed_dictionaries({"exact": st.booleans(), "pack": st.booleans(),
                           "cpu_fit": st.booleans(),
                           "strand": st.sampled_from([0.0, 0.5, 1.0, 3.0]),
                           # -1: the policy's own (none for sfgd, a quarter for rsfgd)
                           "reserve": st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1.0])}),
    # rsfgd's own tests, or none of them: then nearly every sharing pod that would open a
    # whole GPU is held back once whole GPUs are short
    st.sampled_from([{}] + 3 * [{"reserve_fill": 1.01, "reserve_big": 0.0, "reserve_cpu": 0.0}]))


@pytest.mark.parametrize("policy", ["sfgd", "rsfgd"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(node_row, min_size=1, max_size=8), st.lists(pod_row, min_size=1, max_size=60),
       knobs, st.integers(0, 2**31))
def test_never_overcommits_and_refuses_a_pod_that_fits_only_by_holding_it_back(
        policy, node_rows, pod_rows, kn, seed):
    nodes, pods = tables(node_rows, pod_rows)
    if nodes.gpu.sum() == 0 or (pods.num_gpu * np.minimum(pods.gpu_milli, MILLI)).sum() == 0:
        return  # the fill-up needs GPU capacity and GPU requests
    r = sim.run_one(sim.prepare(nodes, pods), policy, seed=seed, knobs=kn)
    ev = r["events"]
    turned_away = 0
    cpu_left = [row[0] for row in node_rows]
    mem_left = [row[1] for row in node_rows]
    free = [[MILLI] * row[2] for row in node_rows]
    count = [0] * len(node_rows)
    for pod_index, node, mask in zip(ev["pod"], ev["node"], ev["gpus"]):
        pod = pod_rows[pod_index]
        if node < 0:
            # Failed: no node could have taken it, or rsfgd held back a sharing pod.
            if any(fits(cpu_left[j], mem_left[j], free[j], node_rows[j][3], pod, count[j])
                   for j in range(len(node_rows))):
                turned_away += 1
                assert pod[2] == 1 and 0 < pod[3] < MILLI
            continue
        assert fits(cpu_left[node], mem_left[node], free[node], node_rows[node][3], pod,
                    count[node])
        count[node] += 1
        cpu, mem, n, m, _ = pod
        gpus = [g for g in range(8) if (int(mask) >> g) & 1]
        assert len(gpus) == (n if m > 0 else 0)
        cpu_left[node] -= cpu
        mem_left[node] -= mem
        for g in gpus:
            free[node][g] -= min(m, MILLI)
        # Physical invariants, after every placement.
        assert cpu_left[node] >= 0 and mem_left[node] >= 0
        assert all(0 <= f <= MILLI for f in free[node])
    allocated = ev["allocated_milli"][-1] if len(ev["allocated_milli"]) else 0
    assert allocated == sum(row[2] * MILLI for row in node_rows) - sum(map(sum, free))
    assert turned_away == r["pods"]["held_back"]
    assert turned_away == r["pods"]["refused_fitting"]
    if kn["reserve"] == 0 or (policy == "sfgd" and kn["reserve"] < 0):
        assert turned_away == 0


@pytest.mark.parametrize("policy", ["sfgd", "rsfgd"])
def test_deterministic_for_a_seed(policy):
    w = sim.prepare(*sim.load_workload())
    a = sim.run_one(w, policy, seed=44)
    b = sim.run_one(w, policy, seed=44)
    c = sim.run_one(w, policy, seed=45)
    assert np.array_equal(a["events"]["node"], b["events"]["node"])
    assert np.array_equal(a["events"]["gpus"], b["events"]["gpus"])
    assert a["milestones"] == b["milestones"]
    assert not np.array_equal(a["events"]["pod"], c["events"]["pod"])


def test_sfgd_and_rsfgd_allocate_at_least_fgd_on_the_embedded_default():
    w = sim.prepare(*sim.load_workload())
    results = sim.simulate_many(w, ["fgd", "sfgd", "rsfgd"], sim.PAPER_SEEDS)
    at130 = sim.summarise(results, "alloc_ratio_pct", 130)
    assert at130["sfgd"]["mean"] >= at130["fgd"]["mean"]
    assert at130["rsfgd"]["mean"] >= at130["fgd"]["mean"]
    # sfgd never turns a pod away; rsfgd only holds back, and reserve=0 makes it sfgd.
    assert all(r["pods"]["held_back"] == 0 for r in results if r["policy"] != "rsfgd")
    as_sfgd = sim.run_one(w, "rsfgd", seed=42, knobs={"reserve": 0})
    sfgd = next(r for r in results if r["policy"] == "sfgd" and r["seed"] == 42)
    assert np.array_equal(as_sfgd["events"]["node"], sfgd["events"]["node"])
    # FGD's own knobs turn sfgd back into FGD, placement for placement.
    as_fgd = sim.run_one(w, "sfgd", seed=42, knobs={"exact": False, "strand": 0, "host": 0})
    fgd = next(r for r in results if r["policy"] == "fgd" and r["seed"] == 42)
    assert np.array_equal(as_fgd["events"]["node"], fgd["events"]["node"])
    assert np.array_equal(as_fgd["events"]["gpus"], fgd["events"]["gpus"])


def test_node_index_changes_no_placement():
    w = sim.prepare(*sim.load_workload())
    from gpuslice import _core

    for policy in ("fgd", "sfgd", "rsfgd", "dotprod", "gpuclustering", "gpupacking"):
        for experiment, compress in (("fillup", 1.0), ("replay", 50.0)):
            a = _core.run_experiment(w, policy, experiment, 7, 1.3, None, {}, compress, True)
            b = _core.run_experiment(w, policy, experiment, 7, 1.3, None, {}, compress, False)
            assert np.array_equal(a["events"]["node"], b["events"]["node"]), (policy, experiment)
            assert np.array_equal(a["events"]["gpus"], b["events"]["gpus"]), (policy, experiment)
