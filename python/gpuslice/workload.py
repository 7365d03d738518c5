"""The embedded default workload: a seeded generator of a cluster and a pod list with the shape
of the Alibaba openb trace, so ``gpuslice simulate`` runs with no files.

Every parameter lives in :data:`OPENB_SHAPE`. How they were measured, from
``openb_node_list_gpu_node.csv`` and ``openb_pod_list_default.csv`` of cluster-trace-gpu-v2023:

* ``node_types``: the node list grouped by (gpu, model, cpu_milli, memory_mib), with counts
  (all 15 groups, 1,213 nodes, 6,212 GPUs).
* ``kind_mix``: share of pods by kind in the default pod list (8,152 pods): 1,088 CPU-only,
  3,078 sharing (num_gpu 1, gpu_milli < 1000), 3,911 one whole GPU, 75 multi-GPU, rounded to
  13/38/48/1 %.
* ``sharing_milli``: the gpu_milli values of the sharing pods with their counts (all 20).
* ``*_requests``: per kind, the most common (cpu_milli, memory_mib) pairs with counts, the
  shortest list covering 90% of that kind's pods; multi-GPU pods as (num_gpu, cpu, memory).
* ``duration_log_mu``, ``duration_log_sigma``: mean and standard deviation of
  ln(deletion_time - creation_time), in seconds, over the default pod list.
* ``replay_horizon_s`` is not measured: arrivals are spread uniformly over it, and 900 s is
  chosen so that the replay experiment loads about 60% of the GPUs at its end (the real trace's
  arrivals are bursty; replay the real file to study them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .traces import NodeTable, PodTable


@dataclass(frozen=True)
class WorkloadShape:
    """Parameters of the generator (see the module docstring for their origin)."""

    #: (count, gpus, model, cpu_milli, memory_mib) per node type
    node_types: tuple[tuple[int, int, str, int, int], ...]
    #: pods in the trace
    pod_count: int
    #: fraction of CPU-only, sharing, whole-GPU and multi-GPU pods
    kind_mix: tuple[float, float, float, float]
    #: (gpu_milli, count) of sharing pods
    sharing_milli: tuple[tuple[int, int], ...]
    #: (cpu_milli, memory_mib, count) of CPU-only pods
    cpu_requests: tuple[tuple[int, int, int], ...]
    #: (cpu_milli, memory_mib, count) of sharing pods
    sharing_requests: tuple[tuple[int, int, int], ...]
    #: (cpu_milli, memory_mib, count) of one-GPU pods
    whole_requests: tuple[tuple[int, int, int], ...]
    #: (num_gpu, cpu_milli, memory_mib, count) of multi-GPU pods
    multi_requests: tuple[tuple[int, int, int, int], ...]
    #: ln(duration in seconds): mean
    duration_log_mu: float
    #: ln(duration in seconds): standard deviation
    duration_log_sigma: float
    #: arrivals are uniform over [0, replay_horizon_s)
    replay_horizon_s: int


#: The openb statistics (measured as the module docstring says).
OPENB_SHAPE = WorkloadShape(
    node_types=(
        (549, 8, "G2", 96000, 393216), (387, 2, "T4", 104000, 524288),
        (107, 2, "P100", 16000, 122880), (39, 8, "G3", 128000, 786432),
        (28, 4, "V100M16", 32000, 131072), (22, 2, "P100", 64000, 262144),
        (21, 8, "V100M32", 96000, 786432), (19, 1, "V100M16", 8000, 32768),
        (17, 4, "T4", 96000, 393216), (9, 4, "V100M32", 48000, 376832),
        (7, 8, "V100M16", 64000, 262144), (3, 1, "P100", 8000, 61440),
        (2, 2, "P100", 8000, 61440), (2, 1, "A10", 128000, 1048576),
        (1, 8, "V100M16", 82000, 344064),
    ),
    pod_count=8152,
    kind_mix=(0.13, 0.38, 0.48, 0.01),
    sharing_milli=(
        (810, 1078), (470, 750), (320, 328), (650, 253), (230, 140), (460, 128), (590, 75),
        (160, 74), (550, 72), (220, 62), (370, 47), (110, 24), (480, 19), (50, 7), (330, 7),
        (350, 6), (270, 4), (440, 2), (140, 1), (290, 1),
    ),
    cpu_requests=((12500, 57344, 364), (32000, 49152, 284), (8000, 30517, 163),
                  (15400, 51200, 120), (16500, 51200, 95)),
    sharing_requests=((3152, 5600, 1122), (11908, 47104, 625), (8000, 30517, 486),
                      (4000, 22888, 189), (4000, 15258, 182), (4152, 10600, 152),
                      (4000, 30517, 136)),
    whole_requests=((11300, 49152, 857), (11400, 48128, 534), (3152, 5600, 470),
                    (18708, 64512, 255), (9810, 41560, 195), (12000, 24576, 158),
                    (15700, 58368, 158), (11908, 47104, 153), (16000, 32768, 108),
                    (8000, 16384, 104), (4000, 24576, 104), (12000, 16384, 99),
                    (14200, 58368, 93), (24200, 93184, 84), (11400, 77824, 65),
                    (8000, 32768, 55), (11900, 77824, 51)),
    multi_requests=((8, 88000, 327680, 18), (8, 64200, 263168, 18), (4, 32200, 132096, 9),
                    (2, 16200, 66560, 7), (8, 120000, 737280, 3), (2, 6000, 65536, 3),
                    (8, 64000, 262144, 3), (4, 32000, 131072, 3), (2, 30200, 160768, 3),
                    (4, 60200, 320512, 3)),
    duration_log_mu=6.443,
    duration_log_sigma=1.878,
    replay_horizon_s=900,
)


def _draw(rng: np.random.Generator, table, size: int) -> np.ndarray:
    weights = np.array([row[-1] for row in table], dtype=float)
    return rng.choice(len(table), size=size, p=weights / weights.sum())


def generate_nodes(shape: WorkloadShape = OPENB_SHAPE) -> NodeTable:
    """The cluster: every node type with its count, named openb-node-0000... in table order."""
    gpus, models, cpus, mems = [], [], [], []
    for count, g, model, cpu, mem in shape.node_types:
        gpus += [g] * count
        models += [model] * count
        cpus += [cpu] * count
        mems += [mem] * count
    n = len(gpus)
    return NodeTable(sn=np.array([f"openb-node-{i:04d}" for i in range(n)]),
                     cpu_milli=np.array(cpus, dtype=np.int64),
                     memory_mib=np.array(mems, dtype=np.int64), gpu=np.array(gpus, dtype=np.int64),
                     model=np.array(models))


def generate_pods(seed: int, shape: WorkloadShape = OPENB_SHAPE) -> PodTable:
    """A pod list of shape.pod_count pods drawn from the shape with numpy's PCG64 seeded by
    seed. Same seed, same pods."""
    rng = np.random.default_rng(seed)
    n = shape.pod_count
    kind = rng.choice(4, size=n, p=np.array(shape.kind_mix) / sum(shape.kind_mix))
    cpu = np.zeros(n, dtype=np.int64)
    mem = np.zeros(n, dtype=np.int64)
    num_gpu = np.zeros(n, dtype=np.int64)
    milli = np.zeros(n, dtype=np.int64)
    for k, table in enumerate((shape.cpu_requests, shape.sharing_requests, shape.whole_requests)):
        idx = np.flatnonzero(kind == k)
        rows = _draw(rng, table, len(idx))
        cpu[idx] = [table[r][0] for r in rows]
        mem[idx] = [table[r][1] for r in rows]
    sharing = np.flatnonzero(kind == 1)
    milli[sharing] = [shape.sharing_milli[r][0] for r in _draw(rng, shape.sharing_milli, len(sharing))]
    num_gpu[sharing] = 1
    whole = np.flatnonzero(kind == 2)
    num_gpu[whole] = 1
    milli[whole] = 1000
    multi = np.flatnonzero(kind == 3)
    rows = _draw(rng, shape.multi_requests, len(multi))
    num_gpu[multi] = [shape.multi_requests[r][0] for r in rows]
    cpu[multi] = [shape.multi_requests[r][1] for r in rows]
    mem[multi] = [shape.multi_requests[r][2] for r in rows]
    milli[multi] = 1000
    creation = np.sort(rng.integers(0, shape.replay_horizon_s, size=n))
    duration = np.maximum(1, rng.lognormal(shape.duration_log_mu, shape.duration_log_sigma, n))
    deletion = creation + duration.astype(np.int64)
    return PodTable(name=np.array([f"openb-pod-{i:04d}" for i in range(n)]), cpu_milli=cpu,
                    memory_mib=mem, num_gpu=num_gpu, gpu_milli=milli,
                    gpu_spec=np.full(n, "", dtype=str), creation_time=creation,
                    deletion_time=deletion)


def generate(seed: int = 0, shape: WorkloadShape = OPENB_SHAPE) -> tuple[NodeTable, PodTable]:
    """The embedded default workload: (nodes, pods) for a seed."""
    return generate_nodes(shape), generate_pods(seed, shape)
