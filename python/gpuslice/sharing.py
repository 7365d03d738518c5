"""Compute sharing on one GPU, in the discrete-event GPU model (virtual time, exact accounting).

``run(tenants, seconds, controller)`` runs tenants that submit kernels under an SM-share
controller and returns each tenant's share over sliding windows as numpy arrays:

>>> from gpuslice import sharing
>>> r = sharing.run([sharing.Tenant(share=30, kernels=[sharing.Kernel(duration_ms=1)])], 3)
>>> round(float(r.shares["t0"][-1]), 1)
30.0

Controllers: ``"gpuslice"`` (the SM limiter of ``include/gpuslice/rate``), ``"reference"``
(a faithful model of the reference interposer: grid-size charge, 120 ms refill from a lagging
NVML-style average, 10 ms sleeps, a step that grows with the square of the SM count) and
``"none"`` (no limit). ``compare`` runs the first two on the same tenants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import _core

__all__ = ["GPU", "Kernel", "SharingResult", "Tenant", "compare", "run", "CONTROLLERS"]

#: The controllers the model can run.
CONTROLLERS = ("gpuslice", "reference", "none")

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_NS_PER_US = 1_000


@dataclass(frozen=True)
class Kernel:
    """One kind of kernel (one function) in a tenant's mix."""

    duration_ms: float = 1.0
    """Mean duration on the whole GPU, in milliseconds."""
    jitter: float = 0.0
    """Durations are uniform in duration * [1 - jitter, 1 + jitter]; 0..1."""
    weight: float = 1.0
    """Relative frequency in the mix."""
    grid_blocks: int = 0
    """Grid size in blocks (what the reference controller charges); 0 = two blocks per SM."""


@dataclass(frozen=True)
class Tenant:
    """A container on the GPU: a host thread launching kernels under a compute share."""

    share: float
    """Target share of GPU time in percent (CUDA_DEVICE_SM_LIMIT); 0 or 100 = no limit."""
    kernels: Sequence[Kernel] = (Kernel(),)
    name: str = ""
    """Unique name; defaults to t0, t1, ..."""
    policy: str = "force"
    """GPU_CORE_UTILIZATION_POLICY: force (always capped), default (capped while another
    tenant is active) or disable."""
    priority: str = "low"
    """CUDA_TASK_PRIORITY: high or low; a high tenant is never throttled by a low one."""
    think_ms: float = 0.0
    """Host time between launches."""
    burst_kernels: int = 0
    """When > 0: launch this many kernels back to back, then think burst_gap_ms."""
    burst_gap_ms: float = 0.0
    streams_in_flight: int = 2
    """Launched but unfinished kernels before the host waits for one."""
    start_s: float = 0.0
    stop_s: Union[float, None] = None
    observe_every: int = 1
    """One launch in this many is timed and reported to the controller; 0 = none."""


@dataclass(frozen=True)
class GPU:
    """The modelled GPU and host."""

    sm_count: int = 132
    timeslice_ms: float = 2.0
    """Context time slice; 0 = kernels run to completion, tenants alternate per kernel."""
    launch_overhead_us: float = 3.0
    sleep_overshoot_us: float = 50.0
    nvml_period_ms: float = 1000.0 / 6.0
    """Period of the NVML-style per-process utilization samples."""
    activity_window_ms: float = 100.0
    """A tenant is active for its peers while it has work or launched this recently."""


@dataclass
class SharingResult:
    """Per-tenant share time series of one run."""

    controller: str
    tenants: list[Tenant]
    window_s: float
    step_s: float
    times: np.ndarray
    """End of each window, in seconds (from window_s on, every step_s)."""
    shares: dict[str, np.ndarray]
    """Tenant name -> share in percent over the window ending at each time."""
    busy: np.ndarray
    """Cumulative busy seconds, busy[tenant, k] at k * step_s."""
    launches: np.ndarray
    waited_s: np.ndarray

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tenants]

    def share_between(self, name: str, start_s: float, end_s: float) -> float:
        """Share in percent of tenant ``name`` over [start_s, end_s) (multiples of step_s)."""
        i = self.names.index(name)
        a, b = round(start_s / self.step_s), round(end_s / self.step_s)
        if not 0 <= a < b < self.busy.shape[1]:
            raise ValueError(f"[{start_s}, {end_s}) s: expected a range inside the run, "
                             f"on multiples of {self.step_s} s")
        return float(100.0 * (self.busy[i, b] - self.busy[i, a]) / ((b - a) * self.step_s))

    def window_range(self, name: str, after_s: float = 0.5) -> tuple[float, float]:
        """Smallest and largest window share of ``name`` over windows starting at or after
        ``after_s``."""
        s = self.shares[name][self.times - self.window_s >= after_s - 1e-9]
        if s.size == 0:
            raise ValueError(f"after_s={after_s}: no window starts that late")
        return float(s.min()), float(s.max())

    def summary(self, after_s: float = 0.5) -> list[dict[str, Any]]:
        """One row per tenant: target, mean, min and max window share after ``after_s``, and
        the worst deviation from the target (percentage points)."""
        rows = []
        for t in self.tenants:
            lo, hi = self.window_range(t.name, after_s)
            s = self.shares[t.name][self.times - self.window_s >= after_s - 1e-9]
            rows.append({
                "tenant": t.name,
                "target": t.share,
                "mean": float(s.mean()),
                "min": lo,
                "max": hi,
                "worst_pp": max(abs(lo - t.share), abs(hi - t.share)),
            })
        return rows


TenantLike = Union[Tenant, Mapping[str, Any]]


def _tenant(i: int, t: TenantLike) -> Tenant:
    if isinstance(t, Tenant):
        tenant = t
    elif isinstance(t, Mapping):
        d = dict(t)
        kernels = d.pop("kernels", None)
        try:
            tenant = Tenant(**d)
        except TypeError as exc:
            known = ", ".join(f.name for f in dataclasses.fields(Tenant))
            raise ValueError(f"tenant {i}: {exc}; expected keys among {known}") from None
        if kernels is not None:
            tenant = dataclasses.replace(tenant, kernels=[_kernel(i, k) for k in kernels])
    else:
        raise ValueError(f"tenant {i}: expected a Tenant or a dict, not {type(t).__name__}")
    if not tenant.name:
        tenant = dataclasses.replace(tenant, name=f"t{i}")
    return tenant


def _kernel(i: int, k: Union[Kernel, Mapping[str, Any]]) -> Kernel:
    if isinstance(k, Kernel):
        return k
    try:
        return Kernel(**dict(k))
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(Kernel))
        raise ValueError(f"tenant {i} kernel: {exc}; expected keys among {known}") from None


def _ns(seconds: float, unit: int) -> int:
    return int(round(seconds * unit))


def _tenant_dict(t: Tenant) -> dict[str, Any]:
    return {
        "name": t.name,
        "share_percent": float(t.share),
        "policy": t.policy,
        "priority": str(t.priority),
        "kernels": [{"duration_ns": _ns(k.duration_ms, _NS_PER_MS), "jitter": float(k.jitter),
                     "weight": float(k.weight), "grid_blocks": int(k.grid_blocks)}
                    for k in t.kernels],
        "think_ns": _ns(t.think_ms, _NS_PER_MS),
        "burst_kernels": int(t.burst_kernels),
        "burst_gap_ns": _ns(t.burst_gap_ms, _NS_PER_MS),
        "streams_in_flight": int(t.streams_in_flight),
        "start_ns": _ns(t.start_s, _NS_PER_S),
        "stop_ns": None if t.stop_s is None else _ns(t.stop_s, _NS_PER_S),
        "observe_every": int(t.observe_every),
    }


def _gpu_dict(g: GPU) -> dict[str, Any]:
    return {
        "sm_count": int(g.sm_count),
        "timeslice_ns": _ns(g.timeslice_ms, _NS_PER_MS),
        "launch_overhead_ns": _ns(g.launch_overhead_us, _NS_PER_US),
        "sleep_overshoot_ns": _ns(g.sleep_overshoot_us, _NS_PER_US),
        "nvml_period_ns": _ns(g.nvml_period_ms, _NS_PER_MS),
        "activity_window_ns": _ns(g.activity_window_ms, _NS_PER_MS),
    }


def run(tenants: Iterable[TenantLike], seconds: float, controller: str = "gpuslice", *,
        gpu: Union[GPU, None] = None, window: float = 1.0, step: float = 0.01, seed: int = 1,
        params: Union[Mapping[str, Any], None] = None) -> SharingResult:
    """Run ``tenants`` for ``seconds`` of virtual time under ``controller``.

    Tenants are :class:`Tenant` objects or dicts of its fields (``kernels`` a list of
    :class:`Kernel` or dicts). ``window`` and ``step`` (seconds) set the sliding windows of the
    returned shares; ``params`` overrides the gpuslice controller's named parameters
    (``rate::limiter_params`` field names, times in ns). Deterministic for a seed.
    """
    if controller not in CONTROLLERS:
        raise ValueError(f"controller={controller!r}: expected one of {', '.join(CONTROLLERS)}")
    ts = [_tenant(i, t) for i, t in enumerate(tenants)]
    names = [t.name for t in ts]
    if len(set(names)) != len(names):
        raise ValueError(f"tenant names {names}: expected unique names")
    if not seconds > 0:
        raise ValueError(f"seconds={seconds}: expected > 0")
    if not 0 < step <= window <= seconds:
        raise ValueError(f"window={window}, step={step}: expected 0 < step <= window <= seconds")
    w = round(window / step)
    if abs(w * step - window) > 1e-9 * window:
        raise ValueError(f"window={window}: expected a multiple of step={step}")
    raw = _core.run_gpu_model(
        [_tenant_dict(t) for t in ts], _gpu_dict(gpu or GPU()), _ns(seconds, _NS_PER_S),
        _ns(step, _NS_PER_S), controller, int(seed), dict(params or {}))
    busy = raw["busy_ns"].astype(np.float64) / _NS_PER_S
    times = raw["times_ns"].astype(np.float64) / _NS_PER_S
    shares = {t.name: 100.0 * (busy[i, w:] - busy[i, :-w]) / window for i, t in enumerate(ts)}
    return SharingResult(
        controller=controller, tenants=ts, window_s=window, step_s=step, times=times[w:],
        shares=shares, busy=busy, launches=raw["launches"],
        waited_s=raw["waited_ns"].astype(np.float64) / _NS_PER_S)


def compare(tenants: Iterable[TenantLike], seconds: float,
            controllers: Sequence[str] = ("gpuslice", "reference"),
            **kwargs: Any) -> dict[str, SharingResult]:
    """Runs the same tenants under each controller (same seed) and returns the results."""
    ts = list(tenants)
    return {c: run(ts, seconds, c, **kwargs) for c in controllers}

