"""The inclusion solver on closed-form cases (THEORY 3b, 6; CASES 5, 6, 10)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from flowtools import flow
from flowtools.fields import PiecewiseField

# ---------------------------------------------------------------------------
# Fields with closed-form solutions.

A = 0.4  # half-angle of the circle case (THEORY 6)
TH0 = 1.2
T_STAR = math.log(math.tan((TH0 + A) / 2) / math.tan(A / 2))  # arrival at the kink


def _circle_pieces(t, u):
    Z = jnp.array([[math.cos(A), math.sin(A)], [math.cos(A), -math.sin(A)]])
    return Z @ u


def _abs_pieces(t, y):
    return jnp.stack([y[0], -y[0]])


def _slide_pieces(t, y):
    return jnp.stack([y[0] - t * y[0], -y[0] - t * y[0]])


CIRCLE = PiecewiseField(
    _circle_pieces, 2, kind="min", direction="ascent", on_sphere=True
)
ABS = PiecewiseField(_abs_pieces, 1, kind="max", direction="descent")  # -sign(y)
SLIDE = PiecewiseField(_slide_pieces, 1, kind="max", direction="descent")  # -sign+t


def _theta(us):
    return np.arctan2(us[:, 1], us[:, 0])


def _theta_exact(t):
    """Closed form before the kink: tan((th + a)/2) = tan((th0 + a)/2) e^{-t}."""
    return 2 * np.arctan(np.tan((TH0 + A) / 2) * np.exp(-t)) - A


def _u(th):
    return jnp.array([math.cos(th), math.sin(th)])


# ---------------------------------------------------------------------------
# CASES 5 and 6.


def test_sign_reaches_zero_in_few_steps():
    """CASES 5: dy/dt in -sign(y), y0 = 1: y(2) = 0 to 1e-12 in 20 steps."""
    sol = flow.integrate(ABS, jnp.array([1.0]), 2.0, dt0=0.1, saveat="steps")
    assert abs(sol.us[-1, 0]) <= 1e-12
    assert sol.stats.num_steps <= 40
    assert sol.stats.stop_reason == "t1"
    # max(1 - t, 0) on the grid: exact up to rounding of the grid times (1e-14).
    np.testing.assert_allclose(sol.us[:, 0], np.maximum(1 - sol.ts, 0), atol=1e-14)


def test_sign_explicit_euler_chatters_where_proximal_does_not():
    """From y0 = 1.05 (off the grid) explicit Euler oscillates at amplitude ~h."""
    h = 0.1
    prox = flow.integrate(ABS, jnp.array([1.05]), 2.0, dt0=h, saveat="steps")
    euler = flow.integrate(
        ABS, jnp.array([1.05]), 2.0, "autodiff", dt0=h, saveat="steps"
    )
    tail = prox.ts >= 1.2
    assert np.max(np.abs(prox.us[tail, 0])) <= 1e-12
    amplitude = np.max(np.abs(euler.us[tail, 0]))
    assert 0.3 * h <= amplitude <= h  # overshoot 0.05 each way
    assert np.any(np.diff(np.sign(euler.us[tail, 0])) != 0)


def test_sliding_then_leaving_converges_at_first_order():
    """CASES 6: dy/dt in -sign(y) + t, y0 = 0: y = 0 for t <= 1, y(3) = 2; the
    error of a first-order scheme halves with h (ratio 2 within 5%)."""
    errors = []
    for h in (0.02, 0.01, 0.005):
        sol = flow.integrate(SLIDE, jnp.array([0.0]), 3.0, dt0=h, saveat="steps")
        sliding = sol.ts <= 1.0 + 1e-12
        assert np.max(np.abs(sol.us[sliding, 0])) <= 1e-12
        errors.append(abs(sol.us[-1, 0] - 2.0))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 2.0, rtol=0.05)
    assert errors[-1] < 0.01


# ---------------------------------------------------------------------------
# The circle case.


def test_circle_order_before_the_kink():
    """Error at t = 1 (< t* = 1.6252) against the closed form: log-log slope 1
    (first order, within 0.1)."""
    steps = np.array([0.02, 0.01, 0.005, 0.0025])
    errors = []
    for h in steps:
        sol = flow.integrate(CIRCLE, _u(TH0), 1.0, dt0=float(h), saveat=[1.0])
        errors.append(abs(_theta(sol.us)[-1] - _theta_exact(1.0)))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - 1.0) <= 0.1, (steps, errors)


def test_circle_arrival_and_no_chattering():
    """t* = 1.6252 matched to O(h); afterwards |th| <= 1e-12 with the proximal
    step while explicit Euler with the same step chatters at amplitude ~h."""
    assert abs(T_STAR - 1.6252) < 1e-4
    h = 0.01
    sol = flow.integrate(CIRCLE, _u(TH0), 3.0, dt0=h, saveat="steps")
    th = _theta(sol.us)
    arrival = sol.ts[np.argmax(np.abs(th) <= 1e-9)]
    assert abs(arrival - T_STAR) <= 3 * h
    after = sol.ts >= arrival
    assert np.max(np.abs(th[after])) <= 1e-12
    assert sol.drift <= 1e-10

    euler = flow.integrate(CIRCLE, _u(TH0), 3.0, "min-norm", dt0=h, saveat="steps")
    tail = euler.ts >= T_STAR + 0.2
    amplitude = np.max(np.abs(_theta(euler.us)[tail]))
    assert 0.1 * h <= amplitude <= 2 * h
    assert euler.drift <= 1e-10


def test_circle_margin_is_nondecreasing():
    """gbar = cos(|th| + a) is a Lyapunov function of the inclusion (1e-12)."""
    sol = flow.integrate(CIRCLE, _u(TH0), 3.0, dt0=0.01, saveat="steps")
    np.testing.assert_allclose(
        sol.margin, np.cos(np.abs(_theta(sol.us)) + A), atol=1e-14
    )
    assert np.min(np.diff(sol.margin)) >= -1e-12
    assert sol.stats.max_margin_decrease <= 1e-12


def test_stationarity_stop_fires_at_the_kink():
    """Stop(stationarity=1e-8) fires once the flow sits at th = 0 (t* + O(h))."""
    h = 0.01
    sol = flow.integrate(CIRCLE, _u(TH0), 5.0, dt0=h, stop=flow.Stop(stationarity=1e-8))
    assert sol.stats.stop_reason == "stationarity"
    assert abs(sol.stats.t_final - T_STAR) <= 3 * h
    assert abs(_theta(sol.u_final[None])[0]) <= 1e-9


def test_stagnation_stop():
    """Stop(window=0.5): the margin stops growing after t*; fires before t = 5."""
    sol = flow.integrate(
        CIRCLE, _u(TH0), 5.0, dt0=0.01, stop=flow.Stop(window=0.5, min_gain=1e-10)
    )
    assert sol.stats.stop_reason == "stagnation"
    assert T_STAR < sol.stats.t_final <= T_STAR + 1.5


# ---------------------------------------------------------------------------
# Sliding along a tie on the sphere.


def test_sliding_on_the_sphere_keeps_the_tie():
    """Two samples z = (c, +-s, 0): from off the tie set the flow reaches the arc
    u_2 = 0 and slides along it towards e_1 with q_1 = q_2 to 1e-9."""
    c, s = math.cos(A), math.sin(A)
    Z = jnp.array([[c, s, 0.0], [c, -s, 0.0]])
    field = PiecewiseField(lambda t, u: Z @ u, 3, on_sphere=True)
    u0 = jnp.array([0.3, 0.1, 1.0])
    sol = flow.integrate(field, u0, 4.0, dt0=0.01, saveat="steps")
    q = sol.us @ np.asarray(Z).T
    tied = np.abs(q[:, 0] - q[:, 1]) <= 1e-9
    first = np.argmax(tied)
    assert tied[first:].all()  # once on the tie set, it never leaves
    # it slides a whole arc: the third coordinate falls from > 0.5 to < 0.05
    assert sol.us[first, 2] > 0.5 and sol.us[-1, 2] < 0.05
    assert np.min(np.diff(sol.margin)) >= -1e-12
    assert sol.drift <= 1e-10


# ---------------------------------------------------------------------------
# CASES 10: the solution at exactly the requested times.


def test_step_grid_keeps_the_step_and_adds_times():
    """Steps of 0.1 on [0, 1.05] stay 0.1 (last 0.05), never shrunk to 1.05/11."""
    grid = flow.step_grid(0.0, 1.05, 0.1)
    np.testing.assert_allclose(np.diff(grid)[:-1], 0.1, atol=1e-15)
    assert abs(grid[-1] - 1.05) == 0.0 and abs(np.diff(grid)[-1] - 0.05) < 1e-14
    grid = flow.step_grid(0.0, 1.05, 0.1, ts=[0.37, 1.0])
    assert 0.37 in grid and len(grid) == 13


def test_solution_at_exact_sgd_times():
    """CASES 10: saved times equal the requested flow times exactly, and the
    states equal an independent loop of normalized Euler steps on the same grid
    (before the kink only the lower piece is active, so the proximal step is
    explicit Euler; 1e-14)."""
    ts = np.array([0.0, 0.1, 0.2, 0.3, 0.37, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.05])
    sol = flow.integrate(CIRCLE, _u(TH0), 1.05, dt0=0.1, saveat=ts)
    assert np.array_equal(sol.ts, ts)

    z = np.array([math.cos(A), -math.sin(A)])  # lower piece for th > 0
    u = np.array([math.cos(TH0), math.sin(TH0)])
    expected = [u]
    for h in np.diff(flow.step_grid(0.0, 1.05, 0.1, ts)):
        u = u + h * (z - (z @ u) * u)
        u = u / np.linalg.norm(u)
        expected.append(u)
    np.testing.assert_allclose(sol.us, np.array(expected), atol=1e-14)


# ---------------------------------------------------------------------------
# Smooth selections.


def test_softmin_tends_to_the_inclusion():
    """Softmin(tau) with Tsit5 + PID: at t = 3 the angle is O(tau) from the kink."""
    sol = flow.integrate(CIRCLE, _u(TH0), 3.0, "softmin", tau=1e-3, saveat=[3.0])
    assert abs(_theta(sol.us)[-1]) <= 5e-3
    assert sol.drift <= 1e-10
    annealed = flow.integrate(
        CIRCLE, _u(TH0), 3.0, "softmin", tau=lambda t: 0.1 / (1.0 + 10.0 * t)
    )
    assert abs(_theta(annealed.us)[-1]) <= 0.05
    assert annealed.stats.num_steps > 0


# ---------------------------------------------------------------------------
# Errors.


def test_zero_start_raises():
    with pytest.raises(ValueError, match="zero vector"):
        flow.integrate(CIRCLE, jnp.zeros(2), 1.0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="selection must be one of"):
        flow.integrate(CIRCLE, _u(TH0), 1.0, "steepest")
    with pytest.raises(ValueError, match="needs a temperature"):
        flow.integrate(CIRCLE, _u(TH0), 1.0, "softmin")
    with pytest.raises(ValueError, match="t1 must be larger"):
        flow.integrate(CIRCLE, _u(TH0), 0.0)
    with pytest.raises(ValueError, match="length field.dim"):
        flow.integrate(CIRCLE, jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match="stagnation"):
        flow.integrate(CIRCLE, _u(TH0), 1.0, "min-norm", stop=flow.Stop(window=1.0))


def test_max_steps_reached():
    """The adaptive controller on a discontinuous selection hits its step limit:
    an error naming the time reached, or a result code with throw=False."""
    import diffrax

    kwargs = dict(solver=diffrax.Tsit5(), rtol=1e-8, atol=1e-10, max_steps=200)
    with pytest.raises(flow.FlowError, match="max_steps=200 was reached at t = "):
        flow.integrate(ABS, jnp.array([1.0]), 2.0, "autodiff", **kwargs)
    sol = flow.integrate(ABS, jnp.array([1.0]), 2.0, "autodiff", throw=False, **kwargs)
    assert sol.stats.stop_reason == "max_steps"
    assert 0.9 <= sol.stats.t_final < 2.0
