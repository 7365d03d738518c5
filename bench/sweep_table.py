"""Markdown tables of a `gpuslice sweep --json` file (what bench/README.md shows).

Usage: python bench/sweep_table.py sweep.json
Prints, per pod list, the mean over seeds of each policy's allocation at 130% (the most
allocated in bold) beside the offline bounds, then the same for allocation at 100% and the
fragmentation rate at 90%, and the pods a policy held back although a node could hold them.
"""

from __future__ import annotations

import json
import math
import sys


def table(summary, policies, traces, key, bounds, higher_is_better=True):
    head = ["pod list", *policies] + (["bound, any", "bound, no failure <90%"] if bounds else [])
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for t in traces:
        rows = {r["policy"]: r for r in summary if r["trace"] == t}
        vals = [rows[p].get(key, math.nan) for p in policies]
        ok = [v for v in vals if not math.isnan(v)]
        best = (max(ok) if higher_is_better else min(ok)) if ok else math.nan
        cells = [("**%.2f**" if v == best else "%.2f") % v if not math.isnan(v) else "—"
                 for v in vals]
        if bounds:
            for kind in ("bound:any", "bound:placed_before"):
                v = rows.get(kind, {}).get("alloc_pct_last", math.nan)
                cells.append("—" if math.isnan(v) else f"{v:.2f}")
        lines.append("| " + " | ".join([t, *cells]) + " |")
    return "\n".join(lines)


def main() -> int:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
    summary = data["summary"]
    policies = data["policies"]
    traces = list(dict.fromkeys(r["trace"] for r in summary))
    print("Allocation % at 130% arrived (mean over seeds):\n")
    print(table(summary, policies, traces, "alloc_pct_130", bool(data["bounds"])))
    print("\nAllocation % at 100% arrived:\n")
    print(table(summary, policies, traces, "alloc_pct_100", False))
    print("\nFragmentation rate % at 90% arrived (lowest in bold):\n")
    print(table(summary, policies, traces, "frag_rate_pct_90", False, higher_is_better=False))
    holding = [p for p in policies
               if any(r.get("held_back", 0) > 0 for r in summary if r["policy"] == p)]
    if holding:
        print("\nPods held back per run although a node could hold them (mean over seeds):\n")
        lines = ["| pod list | " + " | ".join(holding) + " |", "| --- |" + " ---: |" * len(holding)]
        for t in traces:
            rows = {r["policy"]: r for r in summary if r["trace"] == t}
            lines.append("| " + " | ".join([t, *(f"{rows[p].get('held_back', 0):.0f}"
                                                  for p in holding)]) + " |")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
