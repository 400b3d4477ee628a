"""Integrating margin flows: the inclusion, smooth selections, the mean field.

diffrax owns the time loop, the saving, the stop events, the batching (through
`vmap`) and the progress meter; this module chooses the term, the solver and
the step-size controller, and turns diffrax's output into a `FlowSolution`.
"""

from typing import Any

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from flowtools import losses
from flowtools.flow.grid import step_grid
from flowtools.flow.run import _check_start, _finish, _plan, _solve, _static_free
from flowtools.flow.solution import (
    SELECTIONS,
    STOP_REASONS,
    FlowError,
    FlowSolution,
    FlowStats,
    Stop,
)
from flowtools.flow.terms import _MeanField

__all__ = [
    "FlowError",
    "FlowSolution",
    "FlowStats",
    "Stop",
    "STOP_REASONS",
    "SELECTIONS",
    "integrate",
    "integrate_batch",
    "integrate_mean_field",
    "step_grid",
]


# ---------------------------------------------------------------------------
# Public entry points.

_INTEGRATE_DOC_ARGS = """
    - `field`: a field with `pieces(t, x)`, `objective(t, x)`, `dim`,
      `on_sphere` (`PiecewiseField`, `MarginField`).
    - `t1`: final flow time.
    - `selection`: `None` (or `"proximal"`) for the inclusion solver; `"min-norm"`,
      `"autodiff"`, `"random"` for explicit Euler driven by that selection (for
      comparison and teaching: it chatters across kinks); `"softmin"` for the
      smooth ODE $\\dot u = \\sum_i \\mathrm{softmax}(-q/\\tau)_i P_u J_i(u)$
      with Tsit5 and PID control.
    - `t0`: initial time.
    - `dt0`: the fixed step (default $(t_1 - t_0)/1000$); the initial step of
      adaptive solvers.
    - `solver`: a diffrax solver for the explicit selections (e.g.
      `diffrax.Tsit5()` to run a discontinuous selection with adaptive steps);
      must be `None` for the inclusion solver.
    - `saveat`: `None` (about 101 points of the step grid; 101 evenly spaced
      times for adaptive steps), an int (that many), a sequence
      of times (with fixed steps they are added to the step grid, so the solution
      is exactly at those times), or `"steps"` (every step).
    - `stop`: a `Stop` (stationarity and/or stagnation window).
    - `tau`: softmin temperature, a float or a traceable function $t \\mapsto
      \\tau(t)$. An annealed $\\tau(t) = \\rho(t)^{-L}$ reproduces the
      GD-matched drift of normalized gradient descent (THEORY section 4); for
      the norm evolving with the direction use `integrate_mean_field`.
    - `rtol`, `atol`: tolerances of the PID controller (adaptive solvers only).
    - `max_steps`: step limit (default: the grid length for fixed steps,
      $16^4$ for adaptive ones).
    - `key`: PRNG key of the `"random"` selection (folded with the time).
    - `progress`: show diffrax's tqdm progress meter.
    - `throw`: raise `FlowError` when the step limit is reached or the state
      stops being finite; with `False` the solution says so in
      `stats.stop_reason`.
    - `decrease_tol`: objective decreases larger than this are counted.
    - `pattern`: pre-activation sign pattern `u -> Bool[Array, "m"]` for the
      sign-flip count (default: every hidden pre-activation of the field's model
      when it exposes `preactivations`; `False` turns counting off).
"""


def integrate(
    field: Any,
    u0: Float[Array, " p"],
    t1: float,
    selection: str | None = None,
    *,
    t0: float = 0.0,
    dt0: float | None = None,
    solver: Any = None,
    saveat: Any = None,
    stop: Stop | None = None,
    tau: Any = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int | None = None,
    key: Any = None,
    progress: bool = False,
    throw: bool = True,
    decrease_tol: float = 1e-12,
    pattern: Any = None,
) -> FlowSolution:
    plan = _plan(
        field,
        t1,
        selection,
        t0=t0,
        dt0=dt0,
        solver=solver,
        saveat=saveat,
        stop=stop,
        tau=tau,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        key=key,
        progress=progress,
        decrease_tol=decrease_tol,
        pattern=pattern,
    )
    u0 = _check_start(field, u0, t0)
    if u0.ndim != 1:
        raise ValueError(
            f"u0 must be one point (p,); got shape {u0.shape}. Use integrate_batch."
        )
    out = _solve(_static_free(plan), field, u0)
    return _finish(out, plan, batched=False, throw=throw)


integrate.__doc__ = (
    """Integrate the margin-ascent inclusion $\\dot u \\in D_S(u)$ (or a smooth
    selection of it) from `u0` over $[t_0, t_1]$.

    By default the inclusion is stepped by the linearized proximal Euler step
    (THEORY section 3b, `ProximalEuler`) on a fixed grid: it lands on kinks and
    slides along them without chattering; first order in smooth stretches.
    On the sphere the start is normalized and every step renormalized.

    **Arguments:**
"""
    + _INTEGRATE_DOC_ARGS
    + """
    **Returns:** a `FlowSolution`.

    **Raises:** `ValueError` for a zero or misshapen start, an unknown selection,
    bad times or options; `FlowError` (with `throw=True`) when `max_steps` is
    reached, naming the time reached. Warns when the start has non-positive
    normalized margin (the late-stage theory does not apply).

    !!! warning

        On ReLU networks each margin has neuron kinks that the step treats as
        smooth: the margin may decrease by $O(h)$ on steps where a
        pre-activation changes sign (`stats.sign_flips`,
        `stats.max_margin_decrease`).

    References: Lyu & Li (2020); Bolte & Pauwels (2021); Schechtman &
    Schreuder (2025).
    """
)


def integrate_batch(
    field: Any,
    U0: Float[Array, "b p"],
    t1: float,
    selection: str | None = None,
    **kwargs: Any,
) -> FlowSolution:
    throw = kwargs.pop("throw", True)
    t0 = kwargs.get("t0", 0.0)
    plan = _plan(field, t1, selection, **_plan_kwargs(kwargs))
    U0 = _check_start(field, U0, t0)
    if U0.ndim != 2:
        raise ValueError(f"U0 must have shape (b, p); got {U0.shape}.")
    out = jax.vmap(lambda u: _solve(_static_free(plan), field, u))(U0)
    return _finish(out, plan, batched=True, throw=throw)


integrate_batch.__doc__ = """Integrate from every row of `U0` at once (`vmap`, one
    compilation); same arguments as `integrate`.

    **Returns:** a `FlowSolution` whose arrays have a leading batch axis; entries
    past a flow's stop are `inf`; `stats.stop_reason` is a tuple.

    **Raises:** as `integrate`; with `throw=True` the first failing start is named.
    """


def _plan_kwargs(kwargs):
    defaults = dict(
        t0=0.0,
        dt0=None,
        solver=None,
        saveat=None,
        stop=None,
        tau=None,
        rtol=1e-8,
        atol=1e-10,
        max_steps=None,
        key=None,
        progress=False,
        decrease_tol=1e-12,
        pattern=None,
    )
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(
            f"unknown arguments {sorted(unknown)}; valid: {sorted(defaults)}."
        )
    defaults.update(kwargs)
    return defaults


def integrate_mean_field(
    field: Any,
    u0: Float[Array, "*b p"],
    log_rho0: Float[Array, "*b"],
    t1: float,
    loss: Any = "exponential",
    *,
    t0: float = 0.0,
    dt0: float | None = None,
    saveat: Any = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int | None = None,
    progress: bool = False,
    throw: bool = True,
) -> FlowSolution:
    """Integrate the mean-field flow of normalized gradient descent in $(u, \\log
    \\rho)$ (THEORY section 4), the smooth ODE that SGD shadows in flow time:

    $$\\dot u = \\textstyle\\sum_i \\lambda_i P_u J_i(u), \\qquad
    \\tfrac{d}{dt}\\log\\rho = L \\sum_i \\lambda_i q_i(u), \\qquad
    \\lambda = \\mathrm{softmax}\\big(\\log w(\\rho^L q(u))\\big)$$

    over every sample (one forward pass of `field.margins` and one reverse pass
    with the weights held fixed; fields without `margins` use `field.all_pieces`),
    with Tsit5 and PID control. The
    weights are computed in log space, so late stages (huge $\\rho^L q$) do not
    underflow. Its temperature $\\rho^{-L}$ falls as the norm grows: the
    GD-matched, annealed softmin flow, which tends to the inclusion.

    **Arguments:**

    - `field`: a `MarginField` (needs `margins` or `all_pieces`, and `degree`).
    - `u0`: start `(p,)`, or a batch `(b, p)` (one compilation, `vmap`).
    - `log_rho0`: $\\log\\rho$ at the start, scalar or `(b,)`.
    - `t1`, `t0`, `dt0`, `saveat`, `rtol`, `atol`, `max_steps`, `progress`,
      `throw`: as in `integrate`.
    - `loss`: `"exponential"`, `"logistic"` or a `flowtools.losses.Loss`.

    **Returns:** a `FlowSolution` with `log_rho` filled in (leading batch axis for
    a batch).

    **Raises:** `ValueError` for a zero start or a field without `all_pieces`;
    `FlowError` as in `integrate`.

    Reference: Lyu & Li (2020); Schechtman & Schreuder (2025).
    """
    if not hasattr(field, "all_pieces") or not hasattr(field, "degree"):
        raise ValueError(
            "integrate_mean_field needs a margin field with all_pieces and degree "
            f"(MarginField); got {type(field).__name__}."
        )
    loss = losses.get(loss)
    plan = _plan(
        field,
        t1,
        "softmin",
        t0=t0,
        dt0=dt0,
        solver=None,
        saveat=saveat,
        stop=None,
        tau=1.0,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        key=None,
        progress=progress,
        decrease_tol=1e-12,
        pattern=None,
    )
    terms = diffrax.ODETerm(_MeanField(field, loss, int(field.degree)))
    plan = plan._replace(terms=terms, label=f"mean-field ({loss.name})")
    u0 = _check_start(field, u0, t0)
    log_rho0 = jnp.asarray(log_rho0, jnp.float64)
    if u0.ndim == 1:
        out = _solve(_static_free(plan), field, u0, log_rho0.reshape(()))
        return _finish(out, plan, batched=False, throw=throw)
    log_rho0 = jnp.broadcast_to(log_rho0, u0.shape[:1])
    out = jax.vmap(lambda u, r: _solve(_static_free(plan), field, u, r))(u0, log_rho0)
    return _finish(out, plan, batched=True, throw=throw)
