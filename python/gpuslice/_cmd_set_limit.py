"""`gpuslice set-limit`: change a running container's memory and SM limits in its ledger.

The shim reads the ledger's limits while the container runs: a new memory limit applies to
the next allocation (memory already held is never revoked) and a new SM share to the next
kernel launch, so no process restarts and no file is deleted.

The ledger's SM field: 1..99 is a cap; 100 means "no cap" (``--sm 0`` and ``--sm 100`` both
store it); 0 means "unset" (the container's CUDA_DEVICE_SM_LIMIT applies), which
``--sm env`` restores.
"""

from __future__ import annotations

import argparse
import os

#: The ledger's SM field for "explicitly no cap".
NO_CAP = 100
#: The ledger's SM field for "unset: the environment's cap applies".
FROM_ENVIRONMENT = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "set-limit",
        help="change a running container's memory and SM limits (its ledger file)",
        description="Change the limits in a container's ledger (CUDA_DEVICE_MEMORY_SHARED_CACHE). "
        "libgpuslice.so applies a new memory limit to the next allocation and a new SM share to "
        "the next kernel launch, in every process of the container, without a restart.",
    )
    p.add_argument("region", metavar="REGION", help="the container's ledger file")
    p.add_argument("--device", action="append", metavar="N|UUID",
                   help="ledger device index or GPU UUID (repeatable; default: every device)")
    p.add_argument("--memory", metavar="BYTES",
                   help="new memory limit: bytes or a quantity such as 4g, 3000m, 1.5Gi")
    p.add_argument("--sm", metavar="PERCENT",
                   help="new SM share in percent (1-99; 0 or 100 = no cap; 'env' = the "
                   "container's CUDA_DEVICE_SM_LIMIT)")
    p.set_defaults(func=run)


def _sm_field(text: str) -> int:
    """The ledger's SM field for the --sm argument, or ValueError with one clear line."""
    from . import parse_percent

    if text.strip().lower() == "env":
        return FROM_ENVIRONMENT
    try:
        pct = parse_percent(text)
    except ValueError as exc:
        raise ValueError(f"--sm {text!r}: {exc}") from None
    if pct in (0, 100):
        return NO_CAP
    return pct


def _memory_bytes(text: str) -> int:
    from . import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise ValueError(f"--memory {text!r}: {exc}") from None


def _devices(ledger, wanted: list[str] | None) -> list[int]:
    count = len(ledger.devices)
    if count == 0:
        raise ValueError(f"{ledger.path}: the ledger holds no device yet (no process of the "
                         "container has used a GPU)")
    if not wanted:
        return list(range(count))
    out = []
    for w in wanted:
        if w.isdigit():
            index = int(w)
            if index >= count:
                raise ValueError(f"--device {w}: the ledger holds devices 0..{count - 1}")
        else:
            try:
                index = ledger._index(w)
            except ValueError:
                raise ValueError(f"--device {w!r}: no such GPU UUID in the ledger "
                                 f"(it holds {', '.join(ledger.devices)})") from None
        out.append(index)
    return out


def _sm_text(field: int) -> str:
    if field == FROM_ENVIRONMENT:
        return "from environment"
    return "none" if field >= NO_CAP else f"{field}%"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import Ledger, format_bytes

    if args.memory is None and args.sm is None:
        raise ValueError("nothing to change: give --memory and/or --sm")
    memory = _memory_bytes(args.memory) if args.memory is not None else None
    sm = _sm_field(args.sm) if args.sm is not None else None
    if not os.path.exists(args.region):
        # Never create a ledger here: a typo must not leave a file the container ignores.
        raise FileNotFoundError(f"{args.region}: no such ledger file")
    ledger = Ledger.open(args.region)
    devices = _devices(ledger, args.device)

    table = Table(title=f"gpuslice set-limit {args.region}")
    for col in ("device", "UUID", "memory limit", "SM share", "in use"):
        table.add_column(col)
    console = Console()
    for i in devices:
        old_mem, old_sm = ledger.limit(i), ledger.sm_limit(i)
        if memory is not None:
            ledger.set_limit(i, memory)
        if sm is not None:
            ledger.set_sm_limit(i, sm)
        new_mem, new_sm = ledger.limit(i), ledger.sm_limit(i)
        used = ledger.used(i)
        mem_cell = format_bytes(new_mem)
        if new_mem != old_mem:
            mem_cell = f"{format_bytes(old_mem)} -> {mem_cell}"
        sm_cell = _sm_text(new_sm)
        if new_sm != old_sm:
            sm_cell = f"{_sm_text(old_sm)} -> {sm_cell}"
        table.add_row(str(i), ledger.devices[i], mem_cell, sm_cell, format_bytes(used))
        if used > new_mem:
            console.print(f"[yellow]device {i}: {format_bytes(used)} in use exceeds the new "
                          f"limit {format_bytes(new_mem)}; nothing is revoked, further "
                          "allocations are refused until use falls below it[/yellow]")
    console.print(table)
    return 0
