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


#: The zoomed panel of plot_allocation: the arrived-load range where the policies part.
ZOOM_FROM_PCT = 80


def plot_allocation(results: Sequence[dict], path: PathLike, title: str | None = None) -> None:
    """Writes a PNG of two panels. Left: the GPU allocation ratio against the arrived load, per
    policy the median over seeds with the band between the quartiles (the paper's Fig. 9a,
    upside up). Right: the unallocated GPUs from 80% of arrived load on, where the policies
    differ (the paper's Fig. 9a zoom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    unalloc = _curves(results, "unallocated_gpus")
    for policy, (xs, table) in _curves(results, "alloc_ratio_pct").items():
        keep = ~np.all(np.isnan(table), axis=0)
        xs, table = xs[keep], table[:, keep]
        q1, med, q3 = np.nanpercentile(table, [25, 50, 75], axis=0)
        (line,) = ax.plot(xs, med, label=policy, linewidth=1.4)
        ax.fill_between(xs, q1, q3, color=line.get_color(), alpha=0.2, linewidth=0)
        uxs, utable = unalloc[policy]
        ukeep = (uxs >= ZOOM_FROM_PCT) & ~np.all(np.isnan(utable), axis=0)
        if ukeep.any():
            uq1, umed, uq3 = np.nanpercentile(utable[:, ukeep], [25, 50, 75], axis=0)
            zoom.plot(uxs[ukeep], umed, label=policy, linewidth=1.4, color=line.get_color())
            zoom.fill_between(uxs[ukeep], uq1, uq3, color=line.get_color(), alpha=0.2,
                              linewidth=0)
    ax.plot([0, 100], [0, 100], color="0.6", linestyle=":", linewidth=1, label="ideal")
    ax.set_xlabel("arrived GPU request (% of GPU capacity)")
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    zoom.set_xlabel("arrived GPU request (% of GPU capacity)")
    zoom.set_ylabel("unallocated GPUs (median, quartile band)")
    zoom.set_title(f"from {ZOOM_FROM_PCT}% arrived: where the policies differ", fontsize=9)
    zoom.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_sweep(summary: Sequence[dict], path: PathLike, last_pct: int = 130) -> None:
    """Writes a PNG with one panel per trace family (cpu, gpushare, gpuspec, multigpu, ...):
    for each pod list of the family, the mean unallocated GPUs at last_pct of arrived load per
    policy (bars, with the standard deviation over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if not r["policy"].startswith("bound:")]
    families = list(dict.fromkeys(r["family"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    key = f"unallocated_gpus_{last_pct}"
    fig, axes = plt.subplots(1, len(families), figsize=(3.2 * len(families) + 1, 4.2), dpi=120,
                             squeeze=False, gridspec_kw={"width_ratios": [
                                 max(1, len({r["trace"] for r in rows if r["family"] == f}))
                                 for f in families]})
    width = 0.8 / max(1, len(policies))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, family in zip(axes[0], families):
        traces = list(dict.fromkeys(r["trace"] for r in rows if r["family"] == family))
        for k, policy in enumerate(policies):
            vals = []
            errs = []
            for t in traces:
                r = next((r for r in rows if r["trace"] == t and r["policy"] == policy), None)
                vals.append(np.nan if r is None else r[key])
                errs.append(0.0 if r is None else r[key + "_std"])
            xs = np.arange(len(traces)) + (k - (len(policies) - 1) / 2) * width
            ax.bar(xs, vals, width, yerr=errs, label=policy, color=colours[k % len(colours)],
                   error_kw={"linewidth": 0.6})
        ax.set_xticks(np.arange(len(traces)))
        ax.set_xticklabels([t.removeprefix(family) or t for t in traces], fontsize=8)
        ax.set_title(family)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"unallocated GPUs at {last_pct}% arrived (mean over seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_replay(results: Sequence[dict], path: PathLike, title: str | None = None) -> None:
    """Writes a PNG of a replay over time: the GPU allocation ratio (left) and the
    fragmentation rate (right) after every event, one line per policy (its first seed), from
    the first arrival to a tenth past the last (the drain after it can last months)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (alloc, frag) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120, sharex=True)
    seen: set[str] = set()
    span_h = max((r["replay"]["span_s"] for r in results), default=0.0) / 3600
    for r in results:
        if r["policy"] in seen:
            continue
        seen.add(r["policy"])
        ev = r["events"]
        hours = (ev["time_s"] - ev["time_s"][0]) / 3600 if len(ev["time_s"]) else ev["time_s"]
        capacity = r["gpu_capacity_milli"]
        alloc.step(hours, 100.0 * ev["allocated_milli"] / capacity, where="post", linewidth=1,
                   label=f"{r['policy']} (seed {r['seed']})")
        frag.step(hours, ev["frag_rate_pct"], where="post", linewidth=1, label=r["policy"])
    alloc.set_ylabel("GPU allocation ratio (%)")
    frag.set_ylabel("fragmentation rate (% of idle GPU)")
    for ax in (alloc, frag):
        ax.set_xlabel("hours since the first arrival (compressed)")
        ax.grid(alpha=0.3)
    alloc.set_ylim(0, 100)
    if span_h > 0:
        alloc.set_xlim(0, span_h * 1.1)
    alloc.legend(fontsize=8)
    if title:
        alloc.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
