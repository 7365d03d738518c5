"""Small node and pod tables for the simulator's Python tests."""

from __future__ import annotations

import numpy as np

from gpuslice.traces import NodeTable, PodTable

def tables(node_rows, pod_rows):
    """node_rows: (cpu, mem, gpus, model); pod_rows: (cpu, mem, num_gpu, gpu_milli, spec).
    Names are zero-padded so the core's name order is the row order."""
    nodes = NodeTable(sn=np.array([f"n{i:03d}" for i in range(len(node_rows))]),
                      cpu_milli=np.array([r[0] for r in node_rows], dtype=np.int64),
                      memory_mib=np.array([r[1] for r in node_rows], dtype=np.int64),
                      gpu=np.array([r[2] for r in node_rows], dtype=np.int64),
                      model=np.array([r[3] for r in node_rows]))
    pods = PodTable(name=np.array([f"p{i:04d}" for i in range(len(pod_rows))]),
                    cpu_milli=np.array([r[0] for r in pod_rows], dtype=np.int64),
                    memory_mib=np.array([r[1] for r in pod_rows], dtype=np.int64),
                    num_gpu=np.array([r[2] for r in pod_rows], dtype=np.int64),
                    gpu_milli=np.array([r[3] for r in pod_rows], dtype=np.int64),
                    gpu_spec=np.array([r[4] for r in pod_rows]),
                    creation_time=np.zeros(len(pod_rows), dtype=np.int64),
                    deletion_time=np.ones(len(pod_rows), dtype=np.int64))
    return nodes, pods
