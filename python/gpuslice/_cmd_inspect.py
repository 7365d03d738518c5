"""`gpuslice inspect PATH`: show a ledger file (read-only) as a table or Prometheus text."""

from __future__ import annotations

import argparse
import sys
from typing import Any

_PIPE_WIDTH = 160  # columns of the table when stdout is not a terminal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show who uses what in a memory ledger file (read-only)",
        description="Read a ledger file (CUDA_DEVICE_MEMORY_SHARED_CACHE) without writing to it "
        "and print each device's limit and use and each process's bytes. A ledger marked "
        "corrupted is reported with the one recovery that never grants a quota twice: stop "
        "every process of the container that uses it, then remove the file.",
    )
    p.add_argument("path", help="the ledger file")
    p.add_argument("--prometheus", action="store_true",
                   help="print the Prometheus text exposition format instead of a table")
    p.set_defaults(func=run)


def _label(value: object) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(snap: dict[str, Any], path: str) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    ledger = _label(path)

    def family(name: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")

    devices = snap["devices"]
    family("gpuslice_device_memory_limit_bytes", "Memory limit of the device in the ledger.")
    for d in devices:
        lines.append(f'gpuslice_device_memory_limit_bytes{{ledger="{ledger}",device="{d["index"]}",'
                     f'uuid="{_label(d["uuid"])}"}} {d["limit"]}')
    family("gpuslice_device_memory_used_bytes", "Memory in use on the device, all processes.")
    for d in devices:
        lines.append(f'gpuslice_device_memory_used_bytes{{ledger="{ledger}",device="{d["index"]}",'
                     f'uuid="{_label(d["uuid"])}"}} {d["used"]}')
    family("gpuslice_device_sm_limit_percent", "SM share of the device (0 = none).")
    for d in devices:
        lines.append(f'gpuslice_device_sm_limit_percent{{ledger="{ledger}",device="{d["index"]}",'
                     f'uuid="{_label(d["uuid"])}"}} {d["sm_limit_percent"]}')
    family("gpuslice_process_memory_used_bytes", "Memory a process holds on the device.")
    for p in snap["processes"]:
        for index, used in sorted(p["used"].items()):
            d = devices[index]
            lines.append(f'gpuslice_process_memory_used_bytes{{ledger="{ledger}",pid="{p["pid"]}",'
                         f'device="{index}",uuid="{_label(d["uuid"])}"}} {used}')
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from . import format_bytes
    from ._core import read_ledger_snapshot

    snap = read_ledger_snapshot(args.path)
    if args.prometheus:
        sys.stdout.write(prometheus_text(snap, args.path))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Piped output (a log, a file) is not cut to 80 columns: UUIDs stay whole.
        console = Console(width=max(console.width, _PIPE_WIDTH))
    devices = Table(title=f"ledger {args.path}")
    devices.add_column("device", justify="right")
    devices.add_column("uuid")
    devices.add_column("limit", justify="right")
    devices.add_column("used", justify="right")
    devices.add_column("used %", justify="right")
    devices.add_column("SM limit", justify="right")
    for d in snap["devices"]:
        share = f"{100 * d['used'] / d['limit']:.1f}" if d["limit"] else "-"
        sm = f"{d['sm_limit_percent']}%" if d["sm_limit_percent"] else "none"
        devices.add_row(str(d["index"]), d["uuid"], format_bytes(d["limit"]),
                        format_bytes(d["used"]), share, sm)
    console.print(devices)
    procs = Table(title="processes")
    procs.add_column("pid", justify="right")
    for d in snap["devices"]:
        procs.add_column(f"device {d['index']}", justify="right")
    for p in sorted(snap["processes"], key=lambda p: p["pid"]):
        procs.add_row(str(p["pid"]), *(format_bytes(p["used"][d["index"]]) for d in snap["devices"]))
    console.print(procs)
    return 0
