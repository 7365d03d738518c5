"""The replay tool (bench/replay_extender.py) on a slice of the openb trace: 50 nodes of the node
list and the first 200 pods of the simulator's fill-up order, played through the live extender
as kube-scheduler would (filter, prioritize, bind through the fake API server, whose watch
feeds the extender's state while later pods are scheduled); binpack and spread place every pod
where the simulator's binpack and spread do.

Needs GPUSLICE_EXTENDER, the gpuslice package (GPUSLICE_CORE_MODULE or installed) and the
openb CSVs (../shared/data/alibaba-gpu-v2023 or $GPUSLICE_OPENB_DIR); skipped otherwise."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import pytest

from conftest import load_gpuslice

EXTENDER = os.environ.get("GPUSLICE_EXTENDER", "")
gpuslice = load_gpuslice()
OPENB = gpuslice.traces.find_openb_dir() if gpuslice is not None else None
pytestmark = pytest.mark.skipif(not EXTENDER or gpuslice is None or OPENB is None,
                                reason="needs GPUSLICE_EXTENDER, gpuslice and the openb CSVs")

TOOL = Path(__file__).resolve().parents[2] / "bench" / "replay_extender.py"
NODES, PODS = 50, 200


def load_tool():
    spec = importlib.util.spec_from_file_location("replay_extender", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_replay_places_every_pod_and_the_extender_holds_what_was_placed(policy):
    tool = load_tool()
    args = argparse.Namespace(
        extender=EXTENDER, nodes=str(OPENB / "openb_node_list_gpu_node.csv"),
        pods=str(OPENB / "openb_pod_list_default.csv"), policy=policy, seed=42, load=1.3,
        replicate=1, limit_nodes=NODES, limit_pods=PODS, json="", progress=0)
    out = tool.replay(args)
    assert out["nodes"] == NODES and out["pods"] == PODS
    # The extender's state, kept by watch events while the pods were scheduled, holds exactly
    # the milli-GPU of the pods the replay bound (every bind answered without an error).
    assert out["replay_allocated_milli"] > 0
    assert out["extender_held_milli"] == out["replay_allocated_milli"]
    # prioritize never left kube-scheduler a random pick: one node had the top score each time.
    assert out["prioritize_ties"] == 0
    assert out["latency_ms"]["bind"]["count"] + out["failed"] == PODS
    # The extender's sim-binpack and sim-spread are the simulator's binpack and spread: every
    # pod went to the node the simulator chose for it (or failed where the simulator's did).
    assert out["same_node_as_sim"] == PODS


def test_mapping_of_openb_requests_to_hami():
    tool = load_tool()
    assert tool.hami_limits(0, 0) == {}
    assert tool.hami_limits(1, 470) == {"nvidia.com/gpu": "1",
                                        "nvidia.com/gpumem-percentage": "47",
                                        "nvidia.com/gpucores": "47"}
    assert tool.hami_limits(4, 1000) == {"nvidia.com/gpu": "4",
                                         "nvidia.com/gpumem-percentage": "100",
                                         "nvidia.com/gpucores": "100"}
