"""The fair-comparison measures of `simulate` and `sweep`: acceptance by pod kind, load at the
first failure, fitting pods refused, and admission control (rsfgd) kept out of the ranking."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from sim_tables import tables

sim = importlib.import_module("gpuslice.simulation")

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
              "creation_time,deletion_time,scheduled_time\n")


def typed_cluster():
    """Typed pods compete only within their kind, so every order gives the same counts: two
    2-GPU pods for the one 2-GPU node of A (one fails), three 400-milli pods for C's one GPU
    (one fails), one whole pod for B's GPU, one CPU-only pod. 6200 milli on 4 GPUs."""
    nodes = [(64000, 1 << 20, 2, "A"), (64000, 1 << 20, 1, "B"), (64000, 1 << 20, 1, "C")]
    pods = ([(1000, 1, 2, 1000, "A")] * 2 + [(1000, 1, 1, 400, "C")] * 3
            + [(1000, 1, 1, 1000, "B"), (1000, 1, 0, 0, "")])
    return tables(nodes, pods)


@pytest.mark.parametrize("policy", sim.POLICIES)
def test_acceptance_first_failure_and_refusals_on_a_hand_made_cluster(policy):
    w = sim.prepare(*typed_cluster())
    for seed in (1, 2):
        # 1.6x leaves no room for another GPU pod: sampling adds CPU-only pods only.
        r = sim.run_one(w, policy, seed=seed, load=1.6)
        attempted = r["pods"]["attempted"]
        assert (attempted["multi"], attempted["sharing"], attempted["whole"]) == (2, 3, 1)
        assert r["acceptance_pct"]["multi"] == pytest.approx(50.0)
        assert r["acceptance_pct"]["sharing"] == pytest.approx(200 / 3)
        assert r["acceptance_pct"]["whole"] == pytest.approx(100.0)
        assert r["acceptance_pct"]["cpu"] == pytest.approx(100.0)
        assert r["pods"]["refused_fitting"] == 0
        # The first failure: the arrived load at the first event without a node.
        ev = r["events"]
        k = int((ev["node"] < 0).argmax())
        assert r["first_failure_pct"] == pytest.approx(100.0 * ev["arrived_milli"][k] / 4000)
        assert r["first_failure_pct_by_kind"]["whole"] is None
        assert r["first_failure_pct_by_kind"]["cpu"] is None
        assert min(r["first_failure_pct_by_kind"]["multi"],
                   r["first_failure_pct_by_kind"]["sharing"]) == r["first_failure_pct"]


def test_first_failure_is_where_capacity_runs_out():
    # Five 500-milli pods on two GPUs: every placement holds four; the fifth fails at 125%.
    w = sim.prepare(*tables([(64000, 1 << 20, 2, "A")], [(1000, 1, 1, 500, "")] * 5))
    for policy in ("fgd", "sfgd", "random", "binpack"):
        r = sim.run_one(w, policy, seed=3)
        assert r["first_failure_pct"] == pytest.approx(125.0)
        assert r["acceptance_pct"]["sharing"] == pytest.approx(80.0)
        assert r["acceptance_pct"]["multi"] is None  # no pod of that kind arrived
        assert r["pods"]["refused_fitting"] == 0
    # Nothing fails below capacity: no first failure.
    w = sim.prepare(*tables([(64000, 1 << 20, 2, "A")], [(1000, 1, 1, 500, "")] * 3))
    r = sim.run_one(w, "fgd", seed=3, load=0.75)
    assert r["first_failure_pct"] is None


def test_replay_counts_waits_give_ups_and_acceptance():
    # One GPU: a runs 0-100; b (5-8) waits and gives up at 8; c (200-400) starts at once.
    nodes, pods = tables([(8000, 100, 1, "T4")], [(1000, 1, 1, 1000, ""), (1000, 1, 1, 500, ""),
                                                  (1000, 1, 1, 1000, "")])
    pods.creation_time[:] = [0, 5, 200]
    pods.deletion_time[:] = [100, 8, 400]
    r = sim.run_one(sim.prepare(nodes, pods), "fgd", experiment="replay")
    assert r["replay"]["failed_pods"] == 1 and r["replay"]["waited_pods"] == 0
    assert r["acceptance_pct"]["sharing"] == pytest.approx(0.0)
    assert r["acceptance_pct"]["whole"] == pytest.approx(100.0)
    assert r["pods"]["refused_fitting"] == 0
    assert r["first_failure_pct"] is None  # arrived load means nothing once pods depart


def table_rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines()
            if line.startswith("│")]


def test_simulate_table_shows_rsfgd_apart_with_its_refusals():
    out = subprocess.run([sys.executable, "-m", "gpuslice", "simulate", "--policy", "rsfgd",
                          "fgd", "sfgd", "--seeds", "42-43"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    labels = [r[0] for r in rows if r[0]]
    # Placement policies first, then a rule, then admission control, labelled as such.
    assert labels[:2] == ["fgd", "sfgd"]
    assert labels[-1] == "rsfgd (admission control)"
    rule = out.stdout.index("├")
    assert out.stdout.index("sfgd ") < rule < out.stdout.index("rsfgd (admission control)")
    for column in ("refused", "1st fail", "accept %", "sharing", "multi-GPU", "CPU-only"):
        assert column in out.stdout, column
    by = {r[0]: r for r in rows if r[0] in ("fgd", "sfgd", "rsfgd (admission control)")}
    assert by["fgd"][3] == "0" and by["sfgd"][3] == "0"


def test_sweep_ranks_placement_policies_only(tmp_path):
    (tmp_path / "openb_node_list_gpu_node.csv").write_text(
        NODE_HEADER + "".join(f"n{i},64000,262144,{[2, 4, 8][i % 3]},A\n" for i in range(9)))
    rows = [f"p{i},{(i % 7 + 1) * 1000},1024,1,{[300, 700, 1000, 450][i % 4]},,LS,Running,0,1,0\n"
            for i in range(60)]
    (tmp_path / "openb_pod_list_default.csv").write_text(POD_HEADER + "".join(rows))
    out = subprocess.run([sys.executable, "-m", "gpuslice", "sweep", "--pods-dir", str(tmp_path),
                          "--policy", "fgd", "sfgd", "rsfgd", "--seeds", "1-2", "--json",
                          str(tmp_path / "s.json")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "admission control (not ranked with the placement policies): rsfgd" in out.stdout
    assert "sfgd allocates at least fgd's figure at 100% and 130% on" in out.stdout
    assert "rsfgd allocates" not in out.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    summary = data["summary"]
    placement = [r for r in summary if r["policy"] in ("fgd", "sfgd")]
    best = max(r["alloc_pct_130"] for r in placement)
    assert [r["winner"] for r in placement] == [r["alloc_pct_130"] == best for r in placement]
    rsfgd = next(r for r in summary if r["policy"] == "rsfgd")
    assert rsfgd["admission"] and not rsfgd["winner"]
    for r in placement:
        assert not r["admission"]
        assert r["refused_fitting"] == 0
        for key in ("first_failure_pct", "accept_pct_sharing", "accept_pct_whole",
                    "accept_pct_multi", "accept_pct_cpu"):
            assert key in r
