"""Readers of the Alibaba ``cluster-trace-gpu-v2023`` ("openb") CSV files.

Get the files from the public ``alibaba/clusterdata`` repository, folder
``cluster-trace-gpu-v2023/csv`` (research or study use, cite the FGD paper, USENIX ATC '23).
Node lists have ``sn,cpu_milli,memory_mib,gpu,model``; pod lists have
``name,cpu_milli,memory_mib,num_gpu,gpu_milli`` and, except the multigpu variants,
``gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time``. ``gpu_spec`` lists the
allowed GPU models separated by ``|`` (empty: any model).

Parsing is done by the C++ core; a malformed row raises ``ValueError`` naming the file, the line
and the column. Nothing is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from . import _core

PathLike = Union[str, "os.PathLike[str]"]

#: File names of the openb trace that the simulator's documentation and tests use.
OPENB_NODE_FILE = "openb_node_list_gpu_node.csv"
OPENB_DEFAULT_POD_FILE = "openb_pod_list_default.csv"


@dataclass(frozen=True)
class NodeTable:
    """A node list: one numpy array per column, rows in file order."""

    sn: np.ndarray  #: node names (str)
    cpu_milli: np.ndarray  #: allocatable milli-CPU (int64)
    memory_mib: np.ndarray  #: allocatable memory in MiB (int64)
    gpu: np.ndarray  #: GPUs, 0..8 (int64)
    model: np.ndarray  #: GPU model, "" for CPU-only nodes (str)

    def __len__(self) -> int:
        return len(self.sn)

    @property
    def total_gpus(self) -> int:
        """Sum of the GPU column."""
        return int(self.gpu.sum())


@dataclass(frozen=True)
class PodTable:
    """A pod list: one numpy array per column, rows in file order. Absent times are -1."""

    name: np.ndarray  #: pod names (str)
    cpu_milli: np.ndarray  #: requested milli-CPU (int64)
    memory_mib: np.ndarray  #: requested MiB (int64)
    num_gpu: np.ndarray  #: GPUs, 0..8 (int64)
    gpu_milli: np.ndarray  #: milli-GPU per GPU, 1000 = a whole GPU (int64)
    gpu_spec: np.ndarray  #: allowed models joined by "|", "" = any (str)
    creation_time: np.ndarray  #: seconds, -1 when the file has none (int64)
    deletion_time: np.ndarray  #: seconds, -1 when the file has none (int64)

    def __len__(self) -> int:
        return len(self.name)

    @property
    def has_times(self) -> bool:
        """True when every pod has creation and deletion times (replay needs them)."""
        return bool(len(self) and (self.creation_time >= 0).all() and (self.deletion_time >= 0).all())

    @property
    def gpu_request_milli(self) -> np.ndarray:
        """n * m per pod (m clamped to 1000, 0 for CPU-only pods)."""
        m = np.clip(self.gpu_milli, 0, 1000)
        return np.where(self.num_gpu > 0, self.num_gpu * m, 0)


def _text(path: PathLike) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=str) if values else np.array([], dtype=str)


def read_nodes(path: PathLike) -> NodeTable:
    """Reads a node list CSV. Raises ValueError (file:line: column ...) or OSError."""
    d = _core.read_nodes_csv(_text(path), str(path))
    return NodeTable(sn=_strings(d["sn"]), cpu_milli=d["cpu_milli"], memory_mib=d["memory_mib"],
                     gpu=d["gpu"], model=_strings(d["model"]))


def read_pods(path: PathLike) -> PodTable:
    """Reads a pod list CSV (any openb variant). Raises ValueError (file:line: column ...)."""
    d = _core.read_pods_csv(_text(path), str(path))
    return PodTable(name=_strings(d["name"]), cpu_milli=d["cpu_milli"],
                    memory_mib=d["memory_mib"], num_gpu=d["num_gpu"], gpu_milli=d["gpu_milli"],
                    gpu_spec=_strings(d["gpu_spec"]), creation_time=d["creation_time"],
                    deletion_time=d["deletion_time"])


def find_openb_dir() -> Path | None:
    """The openb csv folder: $GPUSLICE_OPENB_DIR, else ../shared/data/alibaba-gpu-v2023 beside a
    source checkout; None when neither holds the node list."""
    candidates = []
    if os.environ.get("GPUSLICE_OPENB_DIR"):
        candidates.append(Path(os.environ["GPUSLICE_OPENB_DIR"]))
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidates.append(parent.parent / "shared" / "data" / "alibaba-gpu-v2023")
    for c in candidates:
        if (c / OPENB_NODE_FILE).is_file():
            return c
    return None
