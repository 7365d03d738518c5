"""gpuslice: share one NVIDIA GPU among many containers.

Memory quotas (a cross-process ledger), compute shares (an SM limiter) and placement
policies (HAMi's, the FGD paper's, topology-aware) over a C++17 header-only core.
"""

from ._core import (
    Cluster,
    Config,
    ContainerRequest,
    Decision,
    Device,
    Grant,
    LogLevel,
    Node,
    UtilizationPolicy,
    __version__,
    decode_node_devices,
    decode_pair_scores,
    decode_pod_devices,
    encode_node_devices,
    encode_pod_devices,
    fit,
    format_bytes,
    parse_bytes,
    parse_config,
    parse_percent,
)
from . import sharing
from .memory import Ledger, read_ledger_snapshot
from .simulation import simulate
from .traces import read_nodes, read_pods

__all__ = [
    "Cluster",
    "Config",
    "ContainerRequest",
    "Decision",
    "Device",
    "Grant",
    "Node",
    "decode_node_devices",
    "decode_pair_scores",
    "decode_pod_devices",
    "encode_node_devices",
    "encode_pod_devices",
    "fit",
    "Ledger",
    "LogLevel",
    "UtilizationPolicy",
    "__version__",
    "format_bytes",
    "parse_bytes",
    "parse_config",
    "parse_percent",
    "read_nodes",
    "read_pods",
    "read_ledger_snapshot",
    "sharing",
    "simulate",
]
