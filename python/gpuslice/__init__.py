"""gpuslice: share one NVIDIA GPU among many containers.

Memory quotas (a cross-process ledger), compute shares (an SM limiter) and placement
policies (HAMi's, the FGD paper's, topology-aware) over a C++17 header-only core.
"""

from ._core import (
    Config,
    LogLevel,
    UtilizationPolicy,
    __version__,
    format_bytes,
    parse_bytes,
    parse_config,
    parse_percent,
)
from .memory import Ledger, read_ledger_snapshot

__all__ = [
    "Config",
    "Ledger",
    "LogLevel",
    "UtilizationPolicy",
    "__version__",
    "format_bytes",
    "parse_bytes",
    "parse_config",
    "parse_percent",
    "read_ledger_snapshot",
]
