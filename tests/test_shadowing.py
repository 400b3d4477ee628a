"""Tests of flowtools.shadowing: planted traces, real SGD runs, fits and errors."""

import math
import types

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import logsumexp

from flowtools import data, fields, models, shadowing

# The circle case of THEORY section 6: a linear model on R^2 with the signed points
# z_{1,2} = (cos a, +-sin a); u = (cos th, sin th), gbar(th) = cos(|th| + a).
A = 0.4
TH0 = 1.0


@pytest.fixture(scope="module")
def circle_field():
    X = np.array([[math.cos(A), math.sin(A)], [math.cos(A), -math.sin(A)]])
    ds = data.Dataset.from_arrays(X, np.array([1.0, 1.0]), name="circle")
    return fields.MarginField(models.linear(2), ds, eps=1e-9, k=2)


def _circle_mean_field(th0, log_rho0, t_eval):
    """The mean-field flow (exponential loss, L = 1) in (th, log rho), by scipy.

    With e_th = (-sin th, cos th): <z_1, e_th> = sin(a - th), <z_2, e_th> =
    -sin(a + th); lambda = softmax(-rho q).
    """

    def rhs(t, y):
        th, log_rho = y
        q = np.array([math.cos(th - A), math.cos(th + A)])
        logits = -math.exp(log_rho) * q
        lam = np.exp(logits - logits.max())
        lam /= lam.sum()
        dth = lam[0] * math.sin(A - th) - lam[1] * math.sin(A + th)
        return [dth, lam @ q]

    sol = solve_ivp(
        rhs, (0.0, t_eval[-1]), [th0, log_rho0], method="DOP853",
        t_eval=t_eval, rtol=1e-12, atol=1e-14,
    )  # fmt: skip
    assert sol.success
    return sol.y[0], sol.y[1]


def _circle_inclusion(th0, t):
    """Closed form of the inclusion from th0 in (0, pi - a): reaches 0 at t*."""
    th = 2.0 * np.arctan(math.tan((th0 + A) / 2.0) * np.exp(-t)) - A
    return np.maximum(th, 0.0)


def _clock(rng, t_end, num):
    # Irregular record times (not on any solver grid, CASES.md 10).
    gaps = rng.uniform(0.5, 1.5, size=num - 1)
    return np.concatenate([[0.0], np.cumsum(gaps) / gaps.sum() * t_end])


def _planted(th, log_rho, t, first_step=1000):
    k = first_step + np.cumsum(np.arange(len(t)) + 1) - 1
    u = np.stack([np.cos(th), np.sin(th)], axis=1)
    return types.SimpleNamespace(
        k=k,
        t=t,
        u=u,
        log_rho=log_rho,
        eta=np.gradient(t),
        late_stage_step=int(k[0]),
        loss="exponential",
    )


def _rotate(u, angle):
    c, s = math.cos(angle), math.sin(angle)
    return u @ np.array([[c, s], [-s, c]])


@pytest.fixture(scope="module")
def mean_field_trace():
    t = _clock(np.random.default_rng(0), 3.0, 120)
    th, log_rho = _circle_mean_field(TH0, math.log(4.0), t)
    return _planted(th, log_rho, t)


def test_planted_mean_field_trace_is_shadowed_exactly(circle_field, mean_field_trace):
    report = shadowing.measure(
        mean_field_trace, circle_field, 1.0, num_starts=4, reference="mean_field",
        rtol=1e-11, atol=1e-13,
    )  # fmt: skip
    assert report.references == ("mean_field",)
    assert len(report.starts_k) >= 3
    # The trace is the flow itself (scipy DOP853 at rtol 1e-12), sampled at
    # irregular times: D_T is the integrator's error, far below 1e-7.
    assert np.all(report.distance["mean_field"] < 1e-7)
    assert np.all(report.geodesic["mean_field"] < 1e-7)
    # Margins computed from the field match the closed form cos(|th| + a).
    u = mean_field_trace.u[-len(report.k) :]
    th = np.arctan2(u[:, 1], u[:, 0])
    np.testing.assert_allclose(report.margin, np.cos(np.abs(th) + A), atol=1e-14)
    # Smoothed margin -log(sum_i exp(-rho q_i)) / rho (L = 1), by scipy.
    rho = np.exp(report.log_rho)
    q = np.stack([np.cos(th - A), np.cos(th + A)], axis=1)
    expected = -logsumexp(-rho[:, None] * q, axis=1) / rho
    np.testing.assert_allclose(report.smoothed, expected, rtol=1e-12)
    assert np.all(report.smoothed <= report.margin)
    # Every recorded iterate inside a window is compared, at its own offset.
    i = report.starts_index[0]
    inside = mean_field_trace.t - mean_field_trace.t[i] <= 1.0
    inside &= np.arange(len(mean_field_trace.t)) >= i
    assert report.counts[0] == inside.sum()
    np.testing.assert_array_equal(
        report.offsets[0, : report.counts[0]],
        mean_field_trace.t[inside] - mean_field_trace.t[i],
    )


def test_planted_offset_is_measured_exactly(circle_field, mean_field_trace):
    # Rotate the iterates of the first window after its start by delta: the flow
    # from the (unrotated) start is the planted trajectory, so every later
    # iterate of that window sits at chordal distance 2 sin(delta / 2) and angle
    # delta from it. The windows are those of the test above (same compilation).
    delta = 0.01
    first = shadowing.measure(
        mean_field_trace, circle_field, 1.0, num_starts=4, reference="mean_field",
        rtol=1e-11, atol=1e-13, diagnostics=False,
    )  # fmt: skip
    i0, count = int(first.starts_index[0]), int(first.counts[0])
    trace = types.SimpleNamespace(**vars(mean_field_trace))
    trace.u = mean_field_trace.u.copy()
    trace.u[i0 + 1 : i0 + count] = _rotate(trace.u[i0 + 1 : i0 + count], delta)
    report = shadowing.measure(
        trace, circle_field, 1.0, num_starts=4, reference="mean_field",
        rtol=1e-11, atol=1e-13, diagnostics=False,
    )  # fmt: skip
    np.testing.assert_array_equal(report.starts_index, first.starts_index)
    # Tolerance: the integrator error measured above (< 1e-7).
    assert report.distance["mean_field"][0] == pytest.approx(
        2 * math.sin(delta / 2), abs=1e-7
    )
    assert report.geodesic["mean_field"][0] == pytest.approx(delta, abs=1e-7)
    curve = report.curves["mean_field"][0, :count]
    assert curve[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(curve[1:], 2 * math.sin(delta / 2), atol=1e-7)
    assert np.all(np.isnan(report.curves["mean_field"][0, count:]))


def test_planted_inclusion_trace_within_first_order_error(circle_field):
    # The trace is the closed-form inclusion, through its arrival at the kink
    # (t* = 1.4243 from th0 = 1) and its sliding at th = 0. The proximal Euler
    # scheme is first order, so D_T must be O(dt).
    dt = 1e-3
    t = _clock(np.random.default_rng(1), 3.0, 90)
    th = _circle_inclusion(TH0, t)
    trace = _planted(th, np.full_like(t, 50.0), t)
    report = shadowing.measure(
        trace, circle_field, 1.0, num_starts=4, reference="inclusion", dt=dt,
        diagnostics=False,
    )  # fmt: skip
    d = report.distance["inclusion"]
    assert len(d) >= 3
    assert np.all(d < 0.5 * dt), d  # first order; measured about 0.2 dt
    np.testing.assert_array_equal(report.distance["closest"], d)
    assert report.inclusion_references == ("inclusion",)
    assert np.all(report.closest == 0)


def test_fit_decay_recovers_an_exponential_rate():
    rng = np.random.default_rng(1)
    t = np.linspace(3.0, 4.5, 12)
    noise = 0.01 * rng.standard_normal(t.size)
    rate, stderr = shadowing.fit_decay(t, 0.2 * np.exp(-2.5 * t + noise), log_x=False)
    # noise of 1% on log y over 12 points: the rate is within 5 standard errors
    assert abs(rate + 2.5) < 5 * stderr and stderr < 0.1
    x_c = t - t.mean()
    assert rate == pytest.approx(
        float(x_c @ (np.log(0.2) - 2.5 * t + noise)) / float(x_c @ x_c), rel=1e-12
    )


def test_fit_decay_recovers_a_power_law():
    rng = np.random.default_rng(2)
    x = np.geomspace(10, 1e6, 30)
    noise = rng.normal(scale=0.05, size=x.size)
    slope, stderr = shadowing.fit_decay(x, 3.0 * x**-0.65 * np.exp(noise))
    # Independent value: numpy's polyfit on the same log-log data.
    (expected, _), cov = np.polyfit(np.log(x), np.log(3.0 * x**-0.65 * np.exp(noise)),
                                    1, cov="unscaled")  # fmt: skip
    resid = np.log(3.0 * x**-0.65 * np.exp(noise)) - np.polyval(
        [expected, _], np.log(x)
    )
    assert slope == pytest.approx(expected, rel=1e-12)
    assert stderr == pytest.approx(
        math.sqrt(cov[0, 0] * (resid @ resid) / (x.size - 2)), rel=1e-10
    )
    assert abs(slope + 0.65) < 4 * stderr
    assert (
        shadowing.fit_decay([1.0, 2.0], [1.0, 0.5])[1]
        != shadowing.fit_decay([1.0, 2.0], [1.0, 0.5])[1]
    )  # NaN standard error with two points
    assert all(math.isnan(v) for v in shadowing.fit_decay([1.0], [1.0]))


def test_window_starts_are_log_spaced_and_snapped():
    k = np.unique(np.round(np.geomspace(1, 1e6, 400)).astype(int))
    t = np.log(k + 1.0)
    idx = shadowing.window_starts(k, t, 1.0, first=10, num_starts=6)
    assert idx[0] == 10
    assert t[idx[-1]] <= t[-1] - 1.0
    # Log-spaced: the ratios of consecutive steps are about equal.
    ratios = np.diff(np.log(k[idx]))
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=0.05)
    given = shadowing.window_starts(k, t, 1.0, first=10, starts=[1000, 1001])
    assert k[given].tolist() == [k[np.argmin(np.abs(np.log(k) - np.log(1000)))]]


def test_errors_name_the_problem(circle_field, mean_field_trace):
    with pytest.raises(ValueError, match="horizon"):
        shadowing.measure(mean_field_trace, circle_field, -1.0)
    with pytest.raises(ValueError, match="does not fit"):
        shadowing.measure(mean_field_trace, circle_field, 10.0)
    with pytest.raises(ValueError, match="reference='flow'"):
        shadowing.measure(mean_field_trace, circle_field, 1.0, reference="flow")
    with pytest.raises(ValueError, match="starts"):
        shadowing.measure(mean_field_trace, circle_field, 1.0, starts=[1])
    with pytest.raises(ValueError, match="exact clock"):
        shadowing.measure(mean_field_trace, circle_field, 1.0, clock="exact")
    trace = types.SimpleNamespace(**vars(mean_field_trace))
    trace.late_stage_step = None
    trace.u = -mean_field_trace.u  # every sample misclassified
    with pytest.raises(ValueError, match="late stage"):
        shadowing.measure(trace, circle_field, 1.0)
    with pytest.raises(TypeError, match="field"):
        shadowing.measure(mean_field_trace, object(), 1.0)


# ---------------------------------------------------------------------------
# Real SGD runs (slow: each compiles SGD, two batched flows and the diagnostics).


@pytest.fixture(scope="module")
def linear_report():
    from flowtools import sgd

    ds = data.load("blobs:n=40,d=3,margin=0.3,seed=0")
    model = models.linear(ds.dim)
    horizon = 0.5
    trace = sgd.run(
        model, ds, model.init(jax.random.key(0)), 1.0, 10**5, clock="exact",
        record={"log_points": 200, "dt": horizon / 20},
    )  # fmt: skip
    field = fields.MarginField(model, ds, k=16)
    return shadowing.measure(trace, field, horizon, num_starts=8)


@pytest.mark.slow
def test_linear_sgd_shadows_the_mean_field_flow(linear_report):
    d = linear_report.distance["mean_field"]
    # THEORY 4: the noise and discretization errors shrink like sqrt(eta_k); over
    # starts from k = 1 to about 3e4 the last window is more than 10x closer than
    # the first (measured: 0.087 -> 0.0038).
    assert d[-1] * 10 <= d[0], d
    slope, stderr = linear_report.fits["mean_field"]["vs_k"]
    assert slope + 2 * stderr < 0, (slope, stderr)


@pytest.mark.slow
def test_linear_sgd_approaches_the_inclusion(linear_report):
    # The distance to the inclusion falls too, but slowly (temperature bias,
    # rho_k^(-L) with rho_k growing like log k; measured: 0.115 -> 0.066).
    d = linear_report.distance["inclusion"]
    assert d[-1] < d[0], d
    slope, stderr = linear_report.fits["inclusion"]["vs_k"]
    assert slope + 2 * stderr < 0, (slope, stderr)
    np.testing.assert_array_equal(linear_report.distance["closest"], d)
    # The inclusion is harder to shadow than the mean-field flow at late starts.
    assert np.all(d[-3:] > linear_report.distance["mean_field"][-3:])
    # Stationarity with the fixed slack decreases along the run.
    assert linear_report.fits["stationarity_fixed"]["vs_k"][0] < 0


@pytest.mark.slow
def test_relu_network_on_digits_end_to_end():
    from flowtools import sgd

    full = data.load("digits:0,1")
    ds = data.Dataset.from_arrays(full.X[::4], full.y[::4], name="digits 0/1, 1 in 4")
    model = models.mlp(ds.dim, widths=(16,))
    horizon = 0.25
    trace = sgd.run(
        model, ds, model.init(jax.random.key(0)), 0.05, 10**6, clock="exact",
        record={"log_points": 100, "dt": horizon / 10},
    )  # fmt: skip
    field = fields.MarginField(model, ds, k=16)
    report = shadowing.measure(
        trace, field, horizon, num_starts=6, dt=horizon / 100, eps=3e-2
    )
    # Measured: mean field 0.064 -> 0.0011 over starts k = 10 .. 4e5 (slope about
    # -0.49 in k); inclusion 0.054 -> 0.035, after a rise to 0.068 at the second
    # start (temperature bias).
    d = report.distance["mean_field"]
    assert np.all(np.isfinite(d)) and d[-1] * 10 <= d[0], d
    assert report.fits["mean_field"]["vs_k"][0] < 0
    d = report.distance["inclusion"]
    assert np.all(np.isfinite(d)) and d[-1] < d[0], d
    assert np.all(np.diff(d[1:]) < 0), d
    # The normalized margin grows along the run.
    assert report.margin[-1] > report.margin[0] > 0
    assert np.all(np.isfinite(report.stationarity))
    # The KKT residual is defined where every sample is classified: SGD noise
    # can misclassify again for a while after the late-stage entry.
    positive = report.margin > 0
    assert np.all(np.isfinite(report.kkt_residual[positive]))
    assert np.all(np.isinf(report.kkt_residual[~positive]))
