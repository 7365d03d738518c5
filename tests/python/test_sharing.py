"""gpuslice.sharing: the GPU model from Python, and the SM limiter's acceptance through it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuslice import sharing
from gpuslice.sharing import GPU, Kernel, Tenant


def saturating(share, *kernels, **kw):
    return Tenant(share=share, kernels=list(kernels) or [Kernel()], **kw)


def test_run_returns_numpy_series_per_tenant():
    r = sharing.run([saturating(40, Kernel(duration_ms=1)), {"share": 20, "name": "b"}], 3,
                    window=0.5, step=0.01)
    assert r.names == ["t0", "b"]
    assert isinstance(r.times, np.ndarray) and r.times[0] == pytest.approx(0.5)
    assert r.times[-1] == pytest.approx(3.0)
    assert set(r.shares) == {"t0", "b"}
    for s in r.shares.values():
        assert s.shape == r.times.shape
        assert np.all((s >= 0) & (s <= 100 + 1e-9))
    assert np.all(np.diff(r.busy, axis=1) >= 0)  # cumulative busy time never decreases
    assert r.busy.shape == (2, 301)
    assert r.launches.dtype == np.int64 and np.all(r.launches > 0)


def test_runs_are_deterministic_for_a_seed():
    ts = [saturating(35, Kernel(duration_ms=0.5, jitter=0.5))]
    a, b = sharing.run(ts, 2, seed=7), sharing.run(ts, 2, seed=7)
    c = sharing.run(ts, 2, seed=8)
    np.testing.assert_array_equal(a.busy, b.busy)
    assert not np.array_equal(a.launches, c.launches)


@pytest.mark.parametrize("target", [10, 30, 50, 70, 90])
@pytest.mark.parametrize("kernel_ms", [0.02, 1.0, 50.0])
def test_one_tenant_holds_its_target_in_every_window_after_half_a_second(target, kernel_ms):
    r = sharing.run([saturating(target, Kernel(duration_ms=kernel_ms))], 4)
    lo, hi = r.window_range("t0", after_s=0.5)
    assert target - 2 <= lo and hi <= target + 2, (lo, hi)


def test_two_tenants_at_30_and_70():
    r = sharing.run([
        saturating(30, Kernel(duration_ms=1, jitter=0.3)),
        saturating(70, Kernel(duration_ms=0.2, jitter=0.5, weight=3),
                   Kernel(duration_ms=5, jitter=0.5)),
    ], 5)
    for row in r.summary(after_s=0.5):
        assert row["worst_pp"] <= 2, row


@pytest.mark.parametrize("seed", [1, 2])
def test_two_tenants_with_50ms_kernels_hold_from_3s_with_nvml_once_a_second(seed):
    # Time-sliced with each other's 50 ms kernels, one launch in 32 timed (as the shim does).
    pair = [
        saturating(30, Kernel(duration_ms=50), observe_every=32),
        saturating(70, Kernel(duration_ms=1, weight=3), Kernel(duration_ms=50), observe_every=32),
    ]
    gpu = GPU(nvml_period_ms=1000)
    r = sharing.run(pair, 9, gpu=gpu, seed=seed)
    for row in r.summary(after_s=3.0):
        assert row["worst_pp"] <= 3, row
    # With the bucket at its 30 ms in company, the banked refill is lost and the 70% tenant
    # falls short: the check above can fail.
    short = sharing.run(pair, 9, gpu=gpu, seed=seed, params={"burst_kernels": 0.0})
    assert short.summary(after_s=3.0)[1]["mean"] < 65


def test_three_tenants_one_bursty():
    r = sharing.run([
        saturating(20, Kernel(duration_ms=0.2, jitter=0.2), burst_kernels=100, burst_gap_ms=20),
        saturating(30, Kernel(duration_ms=1, jitter=0.5)),
        saturating(50, Kernel(duration_ms=3, jitter=0.5), Kernel(duration_ms=0.1, jitter=0.5,
                                                                 weight=4)),
    ], 5)
    for row in r.summary(after_s=0.5):
        assert row["worst_pp"] <= 3, row


def test_default_policy_is_work_conserving_alone_and_capped_in_company():
    r = sharing.run([
        saturating(30, Kernel(duration_ms=1, jitter=0.3), policy="default"),
        saturating(50, Kernel(duration_ms=2, jitter=0.3), policy="default", start_s=2.0),
    ], 5)
    assert r.share_between("t0", 0, 2.0) >= 95
    assert r.share_between("t0", 2.1, 2.5) == pytest.approx(30, abs=3)
    lo, hi = r.window_range("t0", after_s=2.5)
    assert 28 <= lo and hi <= 32


def test_high_priority_is_not_throttled_by_low_priority():
    r = sharing.run([
        saturating(50, policy="default", priority="high", stop_s=3.0),
        saturating(50, policy="default", priority="low"),
    ], 5)
    assert r.share_between("t0", 0.5, 3.0) >= 95
    assert r.share_between("t1", 3.5, 5.0) >= 95


def test_reference_controller_is_the_baseline_and_misses():
    res = sharing.compare([saturating(50, Kernel(duration_ms=1))], 4)
    assert set(res) == {"gpuslice", "reference"}
    ours = res["gpuslice"].share_between("t0", 1, 4)
    ref = res["reference"].share_between("t0", 1, 4)
    assert ours == pytest.approx(50, abs=1)
    assert ref > 90  # a 50% cap on a 132-SM GPU runs nearly unthrottled


def test_same_gains_on_a_16_sm_slice():
    r = sharing.run([saturating(30, Kernel(duration_ms=1, jitter=0.3))], 4, gpu=GPU(sm_count=16))
    lo, hi = r.window_range("t0")
    assert 28 <= lo and hi <= 32


@settings(max_examples=20, deadline=None)
@given(target=st.integers(5, 95), kernel_us=st.integers(20, 20_000),
       jitter=st.floats(0, 0.5), streams=st.integers(1, 4))
def test_any_saturating_tenant_averages_its_target(target, kernel_us, jitter, streams):
    r = sharing.run([saturating(target, Kernel(duration_ms=kernel_us / 1000, jitter=jitter),
                                streams_in_flight=streams)], 4)
    assert r.share_between("t0", 1.0, 4.0) == pytest.approx(target, abs=1.5)


@pytest.mark.parametrize("tenants,kwargs,fragment", [
    ([{"shares": 3}], {}, "tenant 0: Tenant.__init__() got an unexpected keyword argument"),
    ([{"share": 3, "policy": "sometimes"}], {}, "policy 'sometimes'; expected default, force"),
    ([{"share": 3, "kernels": [{"ms": 1}]}], {}, "tenant 0 kernel:"),
    ([{"share": 120}], {}, "share_percent=120.000000: expected 0..100"),
    ([{"share": 3, "name": "a"}, {"share": 3, "name": "a"}], {}, "expected unique names"),
    ([{"share": 3}], {"controller": "pid"}, "controller='pid': expected one of"),
    ([{"share": 3}], {"window": 0.25, "step": 0.1}, "expected a multiple of step"),
    ([{"share": 3}], {"params": {"gain": 1}}, "params: unknown key 'gain'"),
    ([], {}, "tenants: expected at least one tenant"),
])
def test_bad_input_is_one_clear_line(tenants, kwargs, fragment):
    controller = kwargs.pop("controller", "gpuslice")
    with pytest.raises(ValueError) as info:
        sharing.run(tenants, 1, controller, **kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_params_reach_the_controller():
    # Pin the correction at 0.5 and switch off the integral: every launch is charged half its
    # time, so the tenant gets twice its share. The default controller holds it.
    ts = [saturating(30, Kernel(duration_ms=1))]
    skewed = sharing.run(ts, 3, params={"min_correction": 0.5, "max_correction": 0.5,
                                        "utilization_gain": 0.0})
    assert skewed.share_between("t0", 1, 3) == pytest.approx(60, abs=1)
    assert sharing.run(ts, 3).share_between("t0", 1, 3) == pytest.approx(30, abs=1)
