"""`gpuslice check-env`: parse the shim's environment contract and print what it means."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-env",
        help="validate the shim's environment variables (current environment or NAME=VALUE)",
        description="Parse CUDA_DEVICE_MEMORY_LIMIT and the rest of the contract exactly as "
        "libgpuslice.so does, and print the result or the one-line error.",
    )
    p.add_argument("assignments", nargs="*", metavar="NAME=VALUE",
                   help="variables to check instead of the current environment")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import format_bytes, parse_config

    env: dict[str, str] = {}
    if args.assignments:
        for a in args.assignments:
            name, sep, value = a.partition("=")
            if not sep:
                raise ValueError(f"{a!r}: expected NAME=VALUE")
            env[name] = value
    else:
        env = dict(os.environ)
    cfg = parse_config(env)
    table = Table(title="gpuslice configuration")
    table.add_column("device", justify="right")
    table.add_column("memory limit")
    table.add_column("SM limit")
    for i, (mem, sm) in enumerate(zip(cfg.memory_limits, cfg.sm_limits)):
        if mem is None and sm == 0 and i > 0:
            continue
        shown = "none" if mem is None else (mem if isinstance(mem, str) else format_bytes(mem))
        table.add_row(str(i), shown, "none" if sm == 0 else f"{sm}%")
    console = Console()
    console.print(table)
    console.print(f"policy={cfg.policy.name} priority={cfg.priority} "
                  f"oversubscribe={cfg.oversubscribe} oom_killer={cfg.active_oom_killer} "
                  f"shared_cache={cfg.shared_cache or '-'} node_region={cfg.node_region or '-'}")
    return 0
