"""rsfgd's reservation: allocation against the pods it holds back, as `reserve` varies, and the
ablation of its tests (docs/placement.md, "Holding whole GPUs back").

Usage: PYTHONPATH=python python bench/reserve_curve.py [--openb-dir DIR] [--ablation]
Prints Markdown tables, means over the paper's seeds 42-51.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import gpuslice.simulation as sim

RESERVES = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.50)
ABLATION_TRACES = ("default", "gpushare100", "cpu250", "gpuspec05", "multigpu50")
ABLATION = (("fgd", "fgd", {}), ("sfgd", "sfgd", {}), ("rsfgd", "rsfgd", {}),
            ("without the sliver test (reserve_fill=1.01)", "rsfgd", {"reserve_fill": 1.01}),
            ("without the better-user test (reserve_big=0)", "rsfgd", {"reserve_big": 0}),
            ("without the CPU test (reserve_cpu=0)", "rsfgd", {"reserve_cpu": 0}))


def workload(folder: Path, trace: str):
    return sim.prepare(*sim.load_workload(folder / "openb_node_list_gpu_node.csv",
                                          folder / f"openb_pod_list_{trace}.csv"))


def mean(results, key, pct):
    return statistics.mean(sim.milestone_value(r, key, pct) for r in results)


def curve(folder: Path) -> None:
    w = workload(folder, "default")
    capacity = w.total_gpus * 1000
    print("| reserve | alloc % @100% | alloc % @130% | frag rate % @90% | pods held back per run "
          "| first held back at arrived load |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for reserve in RESERVES:
        rs = sim.simulate_many(w, ["rsfgd"], sim.PAPER_SEEDS, knobs={"reserve": reserve})
        held = statistics.mean(r["pods"]["held_back"] for r in rs)
        firsts = [100 * r["pods"]["first_held_back_arrived_milli"] / capacity for r in rs
                  if r["pods"]["first_held_back_arrived_milli"] is not None]
        first = f"{statistics.mean(firsts):.1f}%" if firsts else "—"
        print(f"| {reserve:.2f} | {mean(rs, 'alloc_ratio_pct', 100):.2f} | "
              f"{mean(rs, 'alloc_ratio_pct', 130):.2f} | {mean(rs, 'frag_rate_pct', 90):.2f} | "
              f"{held:.0f} | {first} |")


def ablation(folder: Path) -> None:
    works = {t: workload(folder, t) for t in ABLATION_TRACES}
    print("| variant | " + " | ".join(ABLATION_TRACES) + " |")
    print("| --- |" + " ---: |" * len(ABLATION_TRACES))
    for label, policy, knobs in ABLATION:
        cells = []
        for t in ABLATION_TRACES:
            rs = sim.simulate_many(works[t], [policy], sim.PAPER_SEEDS, knobs=knobs)
            held = statistics.mean(r["pods"]["held_back"] for r in rs)
            a100, a130 = mean(rs, "alloc_ratio_pct", 100), mean(rs, "alloc_ratio_pct", 130)
            cells.append("—" if math.isnan(a130) else f"{a100:.2f} / {a130:.2f} / {held:.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openb-dir", type=Path,
                    default=Path(__file__).resolve().parents[1] / "../shared/data/alibaba-gpu-v2023")
    ap.add_argument("--ablation", action="store_true", help="the ablation table instead")
    args = ap.parse_args()
    (ablation if args.ablation else curve)(args.openb_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
