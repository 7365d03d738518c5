"""Plots of simulation results (matplotlib, no display needed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .traces import PathLike


def _curves(results: Sequence[dict], key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    by_policy: dict[str, list[dict]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(r)
    out = {}
    for policy, runs in by_policy.items():
        xs = sorted({m["arrived_pct"] for r in runs for m in r["milestones"]})
        table = np.full((len(runs), len(xs)), np.nan)
        col = {x: i for i, x in enumerate(xs)}
        for j, r in enumerate(runs):
            for m in r["milestones"]:
                if m[key] is not None:
                    table[j, col[m["arrived_pct"]]] = m[key]
        out[policy] = (np.array(xs, dtype=float), table)
    return out


def plot_allocation(results: Sequence[dict], path: PathLike, title: str | None = None) -> None:
    """Writes a PNG of the GPU allocation ratio against the arrived load: per policy the median
    over seeds, with the band between the quartiles (the paper's Fig. 9a, upside up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for policy, (xs, table) in _curves(results, "alloc_ratio_pct").items():
        keep = ~np.all(np.isnan(table), axis=0)
        xs, table = xs[keep], table[:, keep]
        q1, med, q3 = np.nanpercentile(table, [25, 50, 75], axis=0)
        (line,) = ax.plot(xs, med, label=policy, linewidth=1.4)
        ax.fill_between(xs, q1, q3, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.plot([0, 100], [0, 100], color="0.6", linestyle=":", linewidth=1, label="ideal")
    ax.set_xlabel("arrived GPU request (% of GPU capacity)")
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
