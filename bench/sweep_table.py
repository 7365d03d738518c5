"""Markdown tables of a `gpuslice sweep --json` file (what bench/README.md shows).

Usage: python bench/sweep_table.py sweep.json
Prints, per pod list, the mean over seeds of each placement policy's allocation at 130% (the
most allocated in bold) beside the offline bounds, then the same for allocation at 100%, the
fragmentation rate at 90%, the arrived load at the first failed pod (overall and multi-GPU),
and acceptance by pod kind. Admission control (rsfgd), which turns away pods that fit, gets
a table of its own: its allocation beside its refusals, never in the placement ranking.
"""

from __future__ import annotations

import json
import math
import sys

#: Policies that are admission control (gpuslice.simulation.ADMISSION_POLICIES), kept here so
#: that the script reads JSON without the package.
ADMISSION = ("rsfgd",)


def fmt(v: float, digits: int = 2) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def table(summary, policies, traces, key, bounds, higher_is_better=True, digits=2, bold=True):
    head = ["pod list", *policies] + (["bound, any", "bound, no failure <90%"] if bounds else [])
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for t in traces:
        rows = {r["policy"]: r for r in summary if r["trace"] == t}
        vals = [rows[p].get(key, math.nan) for p in policies]
        vals = [math.nan if v is None else v for v in vals]
        ok = [v for v in vals if not math.isnan(v)]
        best = (max(ok) if higher_is_better else min(ok)) if ok and bold else math.nan
        cells = [(f"**{fmt(v, digits)}**" if v == best else fmt(v, digits)) for v in vals]
        if bounds:
            for kind in ("bound:any", "bound:placed_before"):
                cells.append(fmt(rows.get(kind, {}).get("alloc_pct_last", math.nan)))
        lines.append("| " + " | ".join([t, *cells]) + " |")
    return "\n".join(lines)


def first_failure(row: dict, key: str = "first_failure_pct") -> str:
    """Mean over the seeds that failed a pod; "none" when no seed did."""
    v = row.get(key, math.nan)
    if key == "first_failure_pct" and row.get("first_failure_none", 0) == len(row["seeds"]):
        return "none"
    return "none" if v is None or math.isnan(v) else f"{v:.1f}"


def main() -> int:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
    summary = data["summary"]
    policies = [p for p in data["policies"] if p not in ADMISSION]
    admission = [p for p in data["policies"] if p in ADMISSION]
    traces = list(dict.fromkeys(r["trace"] for r in summary))
    print("Placement policies (every one places each pod that fits). Allocation % at 130% "
          "arrived (mean over seeds):\n")
    print(table(summary, policies, traces, "alloc_pct_130", bool(data["bounds"])))
    print("\nAllocation % at 100% arrived:\n")
    print(table(summary, policies, traces, "alloc_pct_100", False))
    print("\nFragmentation rate % at 90% arrived (lowest in bold):\n")
    print(table(summary, policies, traces, "frag_rate_pct_90", False, higher_is_better=False))
    print("\nArrived load % at the first failed pod, any kind / multi-GPU (mean over the seeds "
          "that failed one; higher is later):\n")
    head = ["pod list", *policies]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(policies)]
    for t in traces:
        rows = {r["policy"]: r for r in summary if r["trace"] == t}
        lines.append("| " + " | ".join(
            [t, *(f"{first_failure(rows[p])} / {first_failure(rows[p], 'first_failure_pct_multi')}"
                  for p in policies)]) + " |")
    print("\n".join(lines))
    refused = {p: sum(r.get("refused_fitting", 0) for r in summary if r["policy"] == p)
               for p in policies}
    print("\nFitting pods refused per run, summed over the pod lists: " +
          ", ".join(f"{p} {v:.0f}" for p, v in refused.items()) + ".")
    if admission:
        print("\nAdmission control, not ranked with the placement policies: allocation % at "
              "100% / 130%, beside the pods per run it turned away although a node could hold "
              "them, and the arrived load % at its first refusal or failure:\n")
        head = ["pod list"] + [f"{p} {c}" for p in admission
                               for c in ("alloc @100%", "alloc @130%", "refused fitting",
                                         "1st failure @load %")]
        lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
        for t in traces:
            rows = {r["policy"]: r for r in summary if r["trace"] == t}
            cells = []
            for p in admission:
                r = rows[p]
                cells += [fmt(r["alloc_pct_100"]), fmt(r["alloc_pct_130"]),
                          fmt(r.get("refused_fitting", math.nan), 0), first_failure(r)]
            lines.append("| " + " | ".join([t, *cells]) + " |")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
