"""`gpuslice sweep`: every pod list x policy x seed of a trace folder, one table, JSON and a plot."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from ._cmd_simulate import parse_seeds

#: Pod lists a folder of the openb trace holds.
POD_GLOB = "openb_pod_list_*.csv"
#: Node list used when --nodes is not given.
NODE_FILE = "openb_node_list_gpu_node.csv"
#: Arrived-load points of the table: allocation at these, fragmentation rate at the last one.
ALLOC_POINTS = (100, 130)
FRAG_POINT = 90
#: Arrived load below which the conditional bound requires that no pod fails.
BOUND_PLACED_BEFORE_PCT = 90.0
#: How often the main thread refreshes the progress bar.
POLL_S = 0.1
#: Console width used when stdout is not a terminal.
_PIPE_WIDTH = 230


def trace_name(path: Path) -> str:
    """openb_pod_list_gpushare40.csv -> gpushare40."""
    return path.stem.removeprefix("openb_pod_list_")


def trace_family(name: str) -> str:
    """gpushare40 -> gpushare; default -> default."""
    return re.sub(r"\d+$", "", name) or name


def trace_sort_key(path: Path) -> tuple[str, int, str]:
    """Family first, then the number after it as a number (gpushare20 before gpushare100)."""
    name = trace_name(path)
    digits = name[len(trace_family(name)):]
    return trace_family(name), int(digits) if digits else -1, digits


def register(sub: argparse._SubParsersAction) -> None:
    from .simulation import DEFAULT_LOAD, NEW_POLICIES, PAPER_POLICIES, PAPER_SEEDS, POLICIES

    default_policies = list(PAPER_POLICIES) + list(NEW_POLICIES)
    p = sub.add_parser(
        "sweep",
        help="run every pod list of a trace folder through policies and seeds",
        description="Run the fill-up experiment on every pod list (openb_pod_list_*.csv) of a "
        "folder, for every policy and seed, in parallel; print one table (allocation at 100%% "
        "and 130%% of capacity, fragmentation rate at 90%%, winner marked per pod list), and "
        "optionally write JSON and a plot of unallocated GPUs per trace family.",
    )
    p.add_argument("--pods-dir", required=True, metavar="DIR",
                   help="folder of openb_pod_list_*.csv files (and the node list)")
    p.add_argument("--nodes", metavar="CSV",
                   help=f"node list (default: DIR/{NODE_FILE})")
    p.add_argument("--policy", nargs="+", action="extend", choices=POLICIES, metavar="P",
                   help=f"policies (default: {' '.join(default_policies)})")
    p.add_argument("--seeds", type=parse_seeds,
                   help=f"seeds, e.g. 42-51 (default {PAPER_SEEDS[0]}-{PAPER_SEEDS[-1]})")
    p.add_argument("--load", type=float, default=DEFAULT_LOAD,
                   help="fill-up target as a multiple of GPU capacity (default 1.3)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default: CPUs)")
    p.add_argument("--bound", action="store_true",
                   help="add the offline upper bounds on allocation at the last load point "
                   "(needs scipy)")
    p.add_argument("--json", metavar="FILE",
                   help="write the summary, the bounds and every run (milestones as one list "
                   "per measure, indexed like milestones.arrived_pct)")
    p.add_argument("--plot", metavar="FILE",
                   help="write a PNG: unallocated GPUs at 130%% per policy, a panel per family")
    p.set_defaults(func=run, default_policies=default_policies)


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    mean = sum(v) / len(v)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))


def summarise(runs: list[dict], bounds: list[dict], traces: list[str],
              policies: list[str], last_pct: int) -> list[dict]:
    """Per (trace, policy): mean and std over seeds of the table's measures, and the winner."""
    from .simulation import ADMISSION_POLICIES, POD_KINDS, milestone_value

    out = []
    for trace in traces:
        rows = []
        for policy in policies:
            rs = [r for r in runs if r["trace"] == trace and r["policy"] == policy]
            row = {"trace": trace, "family": trace_family(trace), "policy": policy,
                   "seeds": [r["seed"] for r in rs]}
            for x in ALLOC_POINTS:
                row[f"alloc_pct_{x}"], row[f"alloc_pct_{x}_std"] = _mean_std(
                    [milestone_value(r, "alloc_ratio_pct", x) for r in rs])
            row[f"frag_rate_pct_{FRAG_POINT}"], row[f"frag_rate_pct_{FRAG_POINT}_std"] = _mean_std(
                [milestone_value(r, "frag_rate_pct", FRAG_POINT) for r in rs])
            row[f"unallocated_gpus_{last_pct}"], row[f"unallocated_gpus_{last_pct}_std"] = \
                _mean_std([milestone_value(r, "unallocated_gpus", last_pct) for r in rs])
            row["held_back"], row["held_back_std"] = _mean_std(
                [float(r["pods"]["held_back"]) for r in rs])
            row["refused_fitting"], row["refused_fitting_std"] = _mean_std(
                [float(r["pods"]["refused_fitting"]) for r in rs])
            # Mean over the seeds whose run failed a pod; none_failed counts the others.
            firsts = [r["first_failure_pct"] for r in rs]
            row["first_failure_pct"], row["first_failure_pct_std"] = _mean_std(
                [x for x in firsts if x is not None])
            row["first_failure_none"] = sum(1 for x in firsts if x is None)
            for kind in POD_KINDS:
                fk = [r["first_failure_pct_by_kind"][kind] for r in rs]
                row[f"first_failure_pct_{kind}"] = _mean_std([x for x in fk if x is not None])[0]
                acc = [r["acceptance_pct"][kind] for r in rs]
                row[f"accept_pct_{kind}"] = _mean_std([x for x in acc if x is not None])[0]
            row["admission"] = policy in ADMISSION_POLICIES
            row["winner"] = False
            rows.append(row)
        key = f"alloc_pct_{last_pct}" if last_pct in ALLOC_POINTS else "alloc_pct_130"
        # Admission control is never ranked with the placement policies: it can buy
        # allocation by refusing pods that fit.
        scored = [r for r in rows
                  if not r["admission"] and not math.isnan(r.get(key, float("nan")))]
        if scored:
            best = max(r[key] for r in scored)
            for r in scored:
                r["winner"] = r[key] == best
        for kind in ("any", "placed_before"):
            bs = [b[kind] for b in bounds if b["trace"] == trace]
            if bs:
                mean, std = _mean_std(bs)
                rows.append({"trace": trace, "family": trace_family(trace),
                             "policy": f"bound:{kind}", "alloc_pct_last": mean,
                             "alloc_pct_last_std": std, "winner": False})
        out.extend(rows)
    return out


def _columns(run: dict) -> dict:
    """A run with its milestones as one list per measure (a sixth of the JSON's size)."""
    ms = run["milestones"]
    keys = list(ms[0]) if ms else []
    return {**run, "milestones": {k: [m[k] for m in ms] for k in keys}}


def _bound(nodes, pods, trace: str, seed: int, load: float) -> dict:
    from .bound import allocation_bound

    return {"trace": trace, "seed": seed,
            "any": allocation_bound(nodes, pods, seed, load),
            "placed_before": allocation_bound(nodes, pods, seed, load,
                                              placed_before_pct=BOUND_PLACED_BEFORE_PCT)}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.table import Table

    from .simulation import (ADMISSION_POLICIES, PAPER_SEEDS, POD_KIND_LABELS, prepare,
                             read_nodes, read_pods, run_one, to_json)

    folder = Path(args.pods_dir)
    if not folder.is_dir():
        raise ValueError(f"--pods-dir {folder}: not a folder")
    pod_files = sorted(folder.glob(POD_GLOB), key=trace_sort_key)
    if not pod_files:
        raise ValueError(f"--pods-dir {folder}: no {POD_GLOB} files")
    if not 0 < args.load <= 10:
        raise ValueError(f"--load {args.load:g}: expected a multiple of GPU capacity in (0, 10]")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: expected 1 or more")
    if args.bound:
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise ValueError("--bound: needs scipy (pip install scipy)") from None
    node_file = Path(args.nodes) if args.nodes else folder / NODE_FILE
    policies = list(dict.fromkeys(args.policy or args.default_policies))
    seeds = args.seeds or list(PAPER_SEEDS)
    last_pct = int(round(args.load * 100))
    out = Console()
    if not out.is_terminal:
        out = Console(width=_PIPE_WIDTH)
    err = Console(stderr=True)

    t0 = time.perf_counter()
    nodes = read_nodes(node_file)
    traces = [trace_name(f) for f in pod_files]
    tables = {trace_name(f): read_pods(f) for f in pod_files}
    workloads = {t: prepare(nodes, tables[t]) for t in traces}
    jobs = [(t, p, s) for t in traces for p in policies for s in seeds]
    bound_jobs = [(t, s) for t in traces for s in seeds] if args.bound else []
    workers = max(1, min(args.jobs or os.cpu_count() or 1, len(jobs)))
    runs: list[dict] = []
    bounds: list[dict] = []
    with Progress(TextColumn("[bold]sweep[/bold] {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("runs", total=len(jobs) + len(bound_jobs))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {}
            for t, p, s in jobs:
                futures[pool.submit(run_one, workloads[t], p, "fillup", args.load, s)] = (t, p, s)
            for t, s in bound_jobs:
                futures[pool.submit(_bound, nodes, tables[t], t, s, args.load)] = (t, "bound", s)
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                    for f in done:
                        t, p, s = futures[f]
                        r = f.result()
                        if p == "bound":
                            bounds.append(r)
                        else:
                            r = to_json(r)
                            r["trace"] = t
                            runs.append(r)
                        progress.update(task, advance=1, description=f"{t} {p} seed {s}")
            finally:
                for f in pending:
                    f.cancel()
    wall = time.perf_counter() - t0
    order = {(t, p, s): i for i, (t, p, s) in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["trace"], r["policy"], r["seed"])])
    bounds.sort(key=lambda b: (traces.index(b["trace"]), b["seed"]))
    summary = summarise(runs, bounds, traces, policies, last_pct)

    placement = [p for p in policies if p not in ADMISSION_POLICIES]
    admission = [p for p in policies if p in ADMISSION_POLICIES]

    def cell(row, key):
        v = row.get(key, float("nan"))
        return "—" if math.isnan(v) else f"{v:.2f} ± {row[key + '_std']:.2f}"

    def short(row, key, digits=1):
        v = row.get(key, float("nan"))
        return "—" if math.isnan(v) else f"{v:.{digits}f}"

    def first_fail(row):
        if row["first_failure_none"] == len(row["seeds"]):
            return "none"
        more = f" ({row['first_failure_none']} none)" if row["first_failure_none"] else ""
        return short(row, "first_failure_pct") + more

    def fair_columns(table):
        table.add_column("refused fitting", justify="right")
        table.add_column("1st fail @load %", justify="right")
        for kind in ("sharing", "whole", "multi", "cpu"):
            table.add_column(f"accept % {POD_KIND_LABELS[kind]}", justify="right")

    def fair_cells(row):
        return [short(row, "refused_fitting"), first_fail(row),
                *[short(row, f"accept_pct_{k}") for k in ("sharing", "whole", "multi", "cpu")]]

    table = Table(title=escape(f"gpuslice sweep: {folder}, {len(traces)} pod lists x "
                               f"{len(placement)} placement policies x {len(seeds)} seeds, "
                               f"fill-up to {args.load:g}"),
                  caption=escape(f"mean ± std over seeds; * = most allocated at {last_pct}% "
                                 "among placement policies; refused fitting = pods per run "
                                 "turned away while a node could hold them; 1st fail = arrived "
                                 "load % at the first failed pod (mean over the seeds that "
                                 "failed one); accept % = placed / arrived by pod kind; "
                                 f"{len(runs)} runs in {wall:.1f} s"))
    table.add_column("pod list", no_wrap=True)
    table.add_column("policy", no_wrap=True)
    for x in ALLOC_POINTS:
        table.add_column(f"alloc % @{x}%", justify="right")
    fair_columns(table)
    table.add_column(f"frag rate % @{FRAG_POINT}%", justify="right")
    table.add_column(f"unalloc GPUs @{last_pct}%", justify="right")

    previous = None
    for row in summary:
        if row["policy"] in admission:
            continue
        first = row["trace"] != previous
        if first and previous is not None:
            table.add_section()
        previous = row["trace"]
        name = row["trace"] if first else ""
        if row["policy"].startswith("bound:"):
            label = ("bound, any placement" if row["policy"] == "bound:any" else
                     f"bound, no failure <{BOUND_PLACED_BEFORE_PCT:g}%")
            table.add_row(name, f"[dim]{label}[/dim]",
                          *(["—", cell(row, "alloc_pct_last")] if last_pct == 130 else
                            ["—", "—"]), *["—"] * 6, "—", "—")
            continue
        mark = "*" if row["winner"] else ""
        style = "bold" if row["winner"] else None
        table.add_row(name, f"{row['policy']}{mark}",
                      *[cell(row, f"alloc_pct_{x}") for x in ALLOC_POINTS], *fair_cells(row),
                      cell(row, f"frag_rate_pct_{FRAG_POINT}"),
                      cell(row, f"unallocated_gpus_{last_pct}"), style=style)
    if placement:
        out.print(table)
    if admission:
        # Admission control holds fitting pods back to keep whole GPUs for later ones: its
        # allocation is shown beside the refusals that bought it, in a table of its own.
        adm = Table(title=escape(f"admission control (not ranked with the placement policies): "
                                 f"{', '.join(admission)}, {len(traces)} pod lists x "
                                 f"{len(seeds)} seeds"),
                    caption=escape("held back = pods per run the policy turned away although "
                                   "a node could hold them (its own count); refused fitting = "
                                   "the same, checked by the filter"))
        adm.add_column("pod list", no_wrap=True)
        adm.add_column("policy", no_wrap=True)
        for x in ALLOC_POINTS:
            adm.add_column(f"alloc % @{x}%", justify="right")
        fair_columns(adm)
        adm.add_column("held back", justify="right")
        for row in summary:
            if row["policy"] not in admission:
                continue
            adm.add_row(row["trace"], row["policy"],
                        *[cell(row, f"alloc_pct_{x}") for x in ALLOC_POINTS], *fair_cells(row),
                        short(row, "held_back", 0))
        out.print(adm)
    if "fgd" in policies:
        for p in placement:
            if p == "fgd":
                continue
            key = f"alloc_pct_{last_pct}" if last_pct in ALLOC_POINTS else "alloc_pct_130"
            mine = {r["trace"]: r for r in summary if r["policy"] == p}
            fgd = {r["trace"]: r for r in summary if r["policy"] == "fgd"}
            wins = sum(1 for t in traces if mine[t][key] > fgd[t][key])
            out.print(f"{p} allocates more than fgd at {last_pct}% on {wins} of "
                      f"{len(traces)} pod lists")
            # At least fgd's figure at every allocation point, on which lists.
            below = [t for t in traces if any(mine[t][f"alloc_pct_{x}"] < fgd[t][f"alloc_pct_{x}"]
                                              for x in ALLOC_POINTS)]
            points = " and ".join(f"{x}%" for x in ALLOC_POINTS)
            out.print(f"{p} allocates at least fgd's figure at {points} on "
                      f"{len(traces) - len(below)} of {len(traces)} pod lists"
                      + (f"; below on {', '.join(below)}" if below else ""))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"pods_dir": str(folder), "nodes": str(node_file), "load": args.load,
                       "seeds": seeds, "policies": policies, "summary": summary,
                       "bounds": bounds, "runs": [_columns(r) for r in runs]}, f,
                      separators=(",", ":"))
        out.print(f"wrote {len(runs)} runs to {args.json}")
    if args.plot:
        from .plot import plot_sweep

        plot_sweep(summary, args.plot, last_pct)
        out.print(f"wrote {args.plot}")
    return 0
