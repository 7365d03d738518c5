#!/usr/bin/env python3
"""Target versus achieved compute share, gpuslice's SM limiter beside the reference controller.

Runs the GPU model (virtual time, fixed seeds) on the acceptance scenarios under both
controllers in the same run, prints one table of 1 s window shares after 0.5 s (mean, min,
max, worst deviation), and plots share over time for two scenarios into bench/sharing.png.

    PYTHONPATH=<site with gpuslice> python bench/plot_sharing.py [--out bench/sharing.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpuslice import sharing
from gpuslice.sharing import GPU, Kernel, Tenant

#: Windows that start this long after the beginning are judged (the acceptance's 0.5 s).
SETTLE_S = 0.5
SECONDS = 5.0


def scenarios(nvml_ms: float) -> list[tuple[str, list[Tenant], GPU]]:
    """The acceptance scenarios: name, tenants, GPU (NVML-style samples every nvml_ms)."""
    out = []
    for sms in (132, 16):
        for target in (10, 30, 50, 70, 90):
            for ms in (0.02, 1.0, 50.0):
                out.append((f"1 tenant, {ms:g} ms kernels, {sms} SMs",
                            [Tenant(share=target, kernels=[Kernel(duration_ms=ms)])],
                            GPU(sm_count=sms, nvml_period_ms=nvml_ms)))
    out.append(("30/70, mixed kernels", [
        Tenant(share=30, kernels=[Kernel(duration_ms=1, jitter=0.3)]),
        Tenant(share=70, kernels=[Kernel(duration_ms=0.2, jitter=0.5, weight=3),
                                  Kernel(duration_ms=5, jitter=0.5)]),
    ], GPU(nvml_period_ms=nvml_ms)))
    out.append(("30/70, long kernels", [
        Tenant(share=30, kernels=[Kernel(duration_ms=20, jitter=0.5)]),
        Tenant(share=70, kernels=[Kernel(duration_ms=0.2, jitter=0.5, weight=3),
                                  Kernel(duration_ms=10, jitter=0.2)]),
    ], GPU(nvml_period_ms=nvml_ms)))
    out.append(("20/30/50, 20 bursty", [
        Tenant(share=20, kernels=[Kernel(duration_ms=0.2, jitter=0.2)], burst_kernels=100,
               burst_gap_ms=20),
        Tenant(share=30, kernels=[Kernel(duration_ms=1, jitter=0.5)]),
        Tenant(share=50, kernels=[Kernel(duration_ms=3, jitter=0.5),
                                  Kernel(duration_ms=0.1, jitter=0.5, weight=4)]),
    ], GPU(nvml_period_ms=nvml_ms)))
    return out


def table(results: list[tuple[str, dict[str, sharing.SharingResult]]], nvml_ms: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"1 s window share after {SETTLE_S} s, percent (GPU model, seed 1, "
                    f"NVML samples every {nvml_ms:.0f} ms)")
    t.add_column("scenario")
    t.add_column("target", justify="right")
    for c in ("gpuslice", "reference"):
        t.add_column(f"{c} mean", justify="right")
        t.add_column(f"{c} min..max", justify="right")
        t.add_column(f"{c} worst pp", justify="right")
    worst = {"gpuslice": 0.0, "reference": 0.0}
    for name, res in results:
        rows = {c: r.summary(after_s=SETTLE_S) for c, r in res.items()}
        for i, row in enumerate(rows["gpuslice"]):
            cells = [name if i == 0 else "", f"{row['target']:g}"]
            for c in ("gpuslice", "reference"):
                r = rows[c][i]
                worst[c] = max(worst[c], r["worst_pp"])
                cells += [f"{r['mean']:.1f}", f"{r['min']:.1f}..{r['max']:.1f}",
                          f"{r['worst_pp']:.1f}"]
            t.add_row(*cells)
    console = Console(width=160)
    console.print(t)
    console.print(f"worst deviation over all scenarios: gpuslice {worst['gpuslice']:.2f} pp, "
                  f"reference {worst['reference']:.2f} pp")


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [
        ("20/30/50, one bursty (force)", [
            Tenant(share=20, kernels=[Kernel(duration_ms=0.2, jitter=0.2)], burst_kernels=100,
                   burst_gap_ms=20),
            Tenant(share=30, kernels=[Kernel(duration_ms=1, jitter=0.5)]),
            Tenant(share=50, kernels=[Kernel(duration_ms=3, jitter=0.5),
                                      Kernel(duration_ms=0.1, jitter=0.5, weight=4)]),
        ]),
        ("default policy: 30% alone, 50% joins at 2 s", [
            Tenant(share=30, kernels=[Kernel(duration_ms=1, jitter=0.3)], policy="default"),
            Tenant(share=50, kernels=[Kernel(duration_ms=2, jitter=0.3)], policy="default",
                   start_s=2.0),
        ]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.6), sharex=True, sharey=True)
    for col, (title, tenants) in enumerate(cases):
        res = sharing.compare(tenants, SECONDS, window=0.25, step=0.01)
        for row, controller in enumerate(("gpuslice", "reference")):
            ax = axes[row][col]
            r = res[controller]
            for t, color in zip(r.tenants, ("tab:blue", "tab:orange", "tab:green")):
                ax.plot(r.times, r.shares[t.name], color=color, lw=1.2,
                        label=f"{t.name} (target {t.share:g}%)")
                ax.axhline(t.share, color=color, ls="--", lw=0.8)
            ax.set_title(f"{controller}: {title}", fontsize=9)
            ax.set_ylim(0, 105)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("time (s), 250 ms windows")
            if col == 0:
                ax.set_ylabel("GPU share (%)")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Target (dashed) vs achieved compute share, GPU model, 132 SMs", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    print(f"wrote {out}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("sharing.png"))
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--nvml-ms", type=float, default=1000.0 / 6.0,
                   help="period of the utilization samples (NVML: 1/6 s to 1 s)")
    args = p.parse_args()
    results = [(name, sharing.compare(ts, SECONDS, gpu=gpu))
               for name, ts, gpu in scenarios(args.nvml_ms)]
    table(results, args.nvml_ms)
    if not args.no_plot:
        plot(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
