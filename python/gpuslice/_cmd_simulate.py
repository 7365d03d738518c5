"""`gpuslice simulate`: which placement policy wastes the fewest GPUs on a workload?"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

#: Arrived-load points (percent of GPU capacity) the table shows.
TABLE_ALLOC_POINTS = (100, 130)
TABLE_FRAG_POINTS = (70, 90)
#: Largest --load accepted (the core refuses more).
MAX_LOAD = 10.0
#: Runs shorter than this show no progress bar.
PROGRESS_AFTER_S = 1.0
#: How often the main thread checks on running simulations.
POLL_S = 0.05


# Console width used when stdout is not a terminal (a pipe, a CI log).
_PIPE_WIDTH = 230

def parse_seeds(text: str) -> list[int]:
    """'42-51' -> 42..51; '1,5,9' -> those; '7' -> [7]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            if sep and lo:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: expected a range like 42-51 or a list like 1,2,3") from None
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    from .simulation import DEFAULT_LOAD, EXPERIMENTS, PAPER_SEEDS, POLICIES

    p = sub.add_parser(
        "simulate",
        help="replay a GPU cluster trace through placement policies",
        description="Replay a GPU cluster trace (Alibaba cluster-trace-gpu-v2023 'openb' CSVs, "
        "or the embedded default workload) through placement policies and compare how many "
        "GPUs each leaves unallocated. fillup is the FGD paper's experiment (ATC '23).",
    )
    p.add_argument("--nodes", metavar="CSV", help="node list (openb_node_list_*.csv)")
    p.add_argument("--pods", metavar="CSV", help="pod list (openb_pod_list_*.csv)")
    p.add_argument("--policy", nargs="+", action="extend", choices=POLICIES, metavar="P",
                   help=f"policies to run (default: all of {', '.join(POLICIES)})")
    p.add_argument("--experiment", choices=EXPERIMENTS, default="fillup")
    p.add_argument("--load", type=float, default=DEFAULT_LOAD,
                   help="fill-up target as a multiple of GPU capacity (default 1.3)")
    p.add_argument("--compress", type=float, default=1.0,
                   help="replay: divide inter-arrival times by this factor, durations kept, "
                   "so that the cluster saturates (default 1: the trace's own times)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=parse_seeds,
                       help=f"seeds, e.g. 42-51 (default {PAPER_SEEDS[0]}-{PAPER_SEEDS[-1]})")
    seeds.add_argument("--seed", type=int, help="one seed")
    p.add_argument("--workload-seed", type=int, default=0,
                   help="seed of the embedded default workload generator (default 0)")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel runs (default: number of CPUs)")
    p.add_argument("--quartiles", action="store_true",
                   help="show median [q1, q3] over seeds instead of mean ± std")
    p.add_argument("--bound", action="store_true",
                   help="fill-up: add rows with offline upper bounds on the allocation at the "
                   "last load point, from the same arrivals (docs/placement.md; needs scipy)")
    p.add_argument("--dra-nodes-pct", type=int, metavar="PCT", default=None,
                   help="dra: kube-scheduler's percentageOfNodesToScore (default 0: its "
                   "adaptive default; 100: score every node)")
    p.add_argument("--json", metavar="FILE", help="write one object per (policy, seed)")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of allocation vs arrived load")
    p.set_defaults(func=run)


def _fmt(stats: dict[str, float], quartiles: bool) -> str:
    if math.isnan(stats["median"]):
        return "—"
    if quartiles:
        return f"{stats['median']:.2f} [{stats['q1']:.2f}, {stats['q3']:.2f}]"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _run_grid(workload, policies, seeds, args, console) -> list[dict]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .simulation import run_one

    pairs = [(p, s) for p in policies for s in seeds]
    workers = max(1, min(args.jobs or os.cpu_count() or 1, len(pairs)))
    results: dict[int, dict] = {}
    start = time.perf_counter()
    progress = None
    task = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        knobs = None
        if getattr(args, "dra_nodes_pct", None) is not None:
            knobs = {"dra_nodes_pct": args.dra_nodes_pct}
        futures = {pool.submit(run_one, workload, p, args.experiment, args.load, s, knobs,
                               args.compress): i
                   for i, (p, s) in enumerate(pairs)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for f in done:
                    results[futures[f]] = f.result()
                if progress is None and pending and time.perf_counter() - start > PROGRESS_AFTER_S:
                    progress = Progress(TextColumn("simulating"), BarColumn(),
                                        TextColumn("{task.completed}/{task.total} runs"),
                                        TimeElapsedColumn(), console=console, transient=True)
                    progress.start()
                    task = progress.add_task("runs", total=len(pairs))
                if progress is not None:
                    progress.update(task, completed=len(results))
        finally:
            if progress is not None:
                progress.stop()
            for f in pending:
                f.cancel()
    return [results[i] for i in range(len(pairs))]


def _mean(values: list[float | None]) -> float:
    """Mean of the values that are not None; NaN when none is."""
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else float("nan")


def _fair_cells(runs: list[dict]) -> list[str]:
    """The fair-comparison cells of one policy's runs: fitting pods refused (mean per run),
    arrived load at the first failure (mean over the runs that failed one; "none" when no run
    failed a pod), and acceptance by pod kind (placed / attempted, mean over seeds)."""
    refused = sum(r["pods"]["refused_fitting"] for r in runs) / len(runs)
    firsts = [r["first_failure_pct"] for r in runs]
    first = _mean(firsts)
    never = sum(1 for x in firsts if x is None)
    first_cell = ("none" if math.isnan(first) else
                  f"{first:.1f}" + (f" ({never} none)" if never else ""))
    cells = [f"{refused:.0f}" if refused == int(refused) else f"{refused:.1f}", first_cell]
    for kind in ("sharing", "whole", "multi", "cpu"):
        acc = _mean([r["acceptance_pct"][kind] for r in runs])
        cells.append("—" if math.isnan(acc) else f"{acc:.1f}")
    return cells


def _fillup_table(results, policies, workload, source, args, seeds, wall, bounds=None):
    from rich.markup import escape
    from rich.table import Table

    from .simulation import ADMISSION_POLICIES, POD_KIND_LABELS, summarise

    title = (f"gpuslice simulate: {args.experiment}, {source}, {workload.node_count} nodes, "
             f"{workload.total_gpus} GPUs, {workload.pod_count} pods, load {args.load:g}, "
             f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    stat = "median [q1, q3]" if args.quartiles else "mean ± std"
    table = Table(title=escape(title), caption=escape(
        f"{stat} over seeds; refused fitting = pods per run turned away while a node could "
        "hold them; 1st fail = arrived load % at the first failed pod; accept % = placed / "
        f"arrived by pod kind; admission control is ranked apart; {len(results)} runs in "
        f"{wall:.1f} s"))
    table.add_column("policy", no_wrap=True)
    for x in TABLE_ALLOC_POINTS:
        table.add_column(f"alloc % @{x}%", justify="right")
    table.add_column("refused fitting", justify="right")
    table.add_column("1st fail @load %", justify="right")
    for kind in ("sharing", "whole", "multi", "cpu"):
        table.add_column(f"accept % {POD_KIND_LABELS[kind]}", justify="right")
    table.add_column(f"frag rate % @{TABLE_FRAG_POINTS[-1]}%", justify="right")
    table.add_column("CPU s/run", justify="right")
    alloc = {x: summarise(results, "alloc_ratio_pct", x) for x in TABLE_ALLOC_POINTS}
    frag = summarise(results, "frag_rate_pct", TABLE_FRAG_POINTS[-1])
    placement = [p for p in policies if p not in ADMISSION_POLICIES]
    admission = [p for p in policies if p in ADMISSION_POLICIES]

    def row(policy: str, label: str) -> None:
        runs = [r for r in results if r["policy"] == policy]
        secs = sum(r["cpu_s"] for r in runs) / len(runs)
        table.add_row(label, *[_fmt(alloc[x][policy], args.quartiles) for x in TABLE_ALLOC_POINTS],
                      *_fair_cells(runs), _fmt(frag[policy], args.quartiles), f"{secs:.3f}")

    for policy in placement:
        row(policy, policy)
    last = int(round(args.load * 100))
    for label, values in (bounds or {}).items():
        cells = ["—"] * len(TABLE_ALLOC_POINTS)
        if last in TABLE_ALLOC_POINTS:
            ok = [v for v in values if not math.isnan(v)]
            if len(ok) == len(values) and ok:
                mean = sum(ok) / len(ok)
                std = math.sqrt(sum((v - mean) ** 2 for v in ok) / len(ok))
                cells[TABLE_ALLOC_POINTS.index(last)] = f"{mean:.2f} ± {std:.2f}"
        table.add_row(f"[dim]{label}[/dim]", *cells, *["—"] * 8)
    if admission:
        table.add_section()
        for policy in admission:
            row(policy, f"{policy} (admission control)")
    return table


def _replay_table(results, policies, workload, source, args, seeds, wall):
    from rich.markup import escape
    from rich.table import Table

    from .simulation import ADMISSION_POLICIES, POD_KIND_LABELS, summarise_replay

    title = (f"gpuslice simulate: replay, {source}, {workload.node_count} nodes, "
             f"{workload.total_gpus} GPUs, {workload.pod_count} pods, inter-arrival times / "
             f"{args.compress:g}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    span_h = results[0]["replay"]["span_s"] / 3600 if results else 0.0
    table = Table(title=escape(title), caption=escape(
        f"mean ± std over seeds, over the {span_h:.1f} h from first to last arrival; waited = "
        "started after waiting; gave up = waited until its own end; refused fitting = sent to "
        "wait on arrival while a node could hold it; accept % = started / arrived by pod kind; "
        f"{len(results)} runs in {wall:.1f} s"))
    table.add_column("policy", no_wrap=True)
    columns = [("alloc % mean", "alloc_mean_pct", 2), ("alloc % peak", "alloc_peak_pct", 2),
               ("frag rate % mean", "frag_rate_mean_pct", 2),
               ("frag rate % peak", "frag_rate_peak_pct", 2), ("waited pods", "waited_pods", 1),
               ("mean wait s", "wait_mean_s", 1), ("gave up pods", "failed_pods", 1)]
    for name, _, _ in columns:
        table.add_column(name, justify="right")
    table.add_column("refused fitting", justify="right")
    for kind in ("sharing", "whole", "multi", "cpu"):
        table.add_column(f"accept % {POD_KIND_LABELS[kind]}", justify="right")
    stats = {key: summarise_replay(results, key) for _, key, _ in columns}
    placement = [p for p in policies if p not in ADMISSION_POLICIES]
    admission = [p for p in policies if p in ADMISSION_POLICIES]

    def row(policy: str, label: str) -> None:
        cells = []
        for _, key, digits in columns:
            st = stats[key][policy]
            cells.append(f"{st['mean']:.{digits}f}" if st["std"] == 0 else
                         f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}")
        runs = [r for r in results if r["policy"] == policy]
        fair = _fair_cells(runs)
        table.add_row(label, *cells, fair[0], *fair[2:])

    for policy in placement:
        row(policy, policy)
    if admission:
        table.add_section()
        for policy in admission:
            row(policy, f"{policy} (admission control)")
    return table


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .simulation import PAPER_SEEDS, POLICIES, load_workload, prepare, to_json

    if not 0 < args.load <= MAX_LOAD:
        raise ValueError(f"--load {args.load:g}: expected a multiple of GPU capacity in "
                         f"(0, {MAX_LOAD:g}]")
    if not 0 < args.compress <= 1e9:
        raise ValueError(f"--compress {args.compress:g}: expected a factor in (0, 1e9]")
    if args.compress != 1.0 and args.experiment != "replay":
        raise ValueError("--compress: applies to --experiment replay only")
    if args.bound:
        if args.experiment != "fillup":
            raise ValueError("--bound: applies to --experiment fillup only")
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise ValueError("--bound: needs scipy (pip install scipy)") from None
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: expected 1 or more")
    if (args.nodes is None) != (args.pods is None):
        raise ValueError("--nodes and --pods: give both, or neither for the embedded default")
    policies = list(dict.fromkeys(args.policy or POLICIES))
    seeds = [args.seed] if args.seed is not None else (args.seeds or list(PAPER_SEEDS))
    out = Console()
    if not out.is_terminal:
        # Rich assumes 80 columns off a terminal; with --quartiles the table needs about 150.
        out = Console(width=_PIPE_WIDTH)
    err = Console(stderr=True)
    t0 = time.perf_counter()
    nodes, pods = load_workload(args.nodes, args.pods, args.workload_seed)
    workload = prepare(nodes, pods)
    if args.experiment == "replay" and not workload.has_times:
        raise ValueError(f"--experiment replay: {args.pods} has no creation_time/deletion_time "
                         "columns (the multigpu variants lack them); use fillup")
    results = _run_grid(workload, policies, seeds, args, err)
    wall = time.perf_counter() - t0

    source = "embedded default workload" if args.nodes is None else Path(args.pods).name
    if args.experiment == "replay":
        table = _replay_table(results, policies, workload, source, args, seeds, wall)
    else:
        bounds = None
        if args.bound:
            from ._cmd_sweep import BOUND_PLACED_BEFORE_PCT
            from .bound import allocation_bound

            bounds = {
                "bound, any placement": [allocation_bound(nodes, pods, s, args.load)
                                         for s in seeds],
                f"bound, no failure <{BOUND_PLACED_BEFORE_PCT:g}%": [
                    allocation_bound(nodes, pods, s, args.load, BOUND_PLACED_BEFORE_PCT)
                    for s in seeds],
            }
        table = _fillup_table(results, policies, workload, source, args, seeds, wall, bounds)
    out.print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([to_json(r) for r in results], f, indent=1)
        out.print(f"wrote {len(results)} results to {args.json}")
    if args.plot:
        from .plot import plot_allocation

        if args.experiment == "replay":
            from .plot import plot_replay

            plot_replay(results, args.plot, title=f"replay x{args.compress:g}: {source}")
        else:
            plot_allocation(results, args.plot, title=f"{args.experiment}: {source}")
        out.print(f"wrote {args.plot}")
    return 0
