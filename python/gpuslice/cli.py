"""The `gpuslice` command line.

Each subcommand lives in a module `gpuslice._cmd_<name>` that defines
`register(subparsers)`; it adds its parser and sets `func(args) -> int` as a default.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuslice",
        description="GPU sharing toolkit: memory quotas, SM shares and placement policies.",
    )
    parser.add_argument("--version", action="version", version=f"gpuslice {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    package = importlib.import_module("gpuslice")
    names = sorted(
        m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("_cmd_")
    )
    for name in names:
        importlib.import_module(f"gpuslice.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"gpuslice {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
