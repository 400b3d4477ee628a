"""Planning a solve (outside jit), the compiled solve and its post-processing."""

import inspect
import math
import warnings
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from flowtools.flow.grid import _bucket, _Grid, _pad, _save_times, step_grid
from flowtools.flow.solution import (
    _DEFAULT_SAVES,
    SELECTIONS,
    STOP_REASONS,
    FlowError,
    FlowSolution,
    FlowStats,
    Stop,
)
from flowtools.flow.solver import (
    PiecesTerm,
    ProximalEuler,
    SphereProjected,
    initial_track,
    make_pattern_fn,
)
from flowtools.flow.terms import (
    _SelectionField,
    _StagnationStop,
    _stationarity,
    _StationarityStop,
    _Tau,
)

__all__: list[str] = []


# ---------------------------------------------------------------------------
# The plan of a solve (outside jit) and the compiled solve.


class _Plan(NamedTuple):
    terms: Any
    solver: Any
    controller: Any
    saveat: Any
    event: Any
    args: Any
    dt0: Any
    t0: Any
    t1: Any
    max_steps: int
    label: str
    inclusion: bool
    sphere: bool
    progress: Any
    num_saves: int | None


def _check_field(field):
    for name in ("pieces", "objective", "dim", "on_sphere"):
        if not hasattr(field, name):
            raise TypeError(
                f"field must be a flowtools field (PiecewiseField, MarginField); "
                f"got {type(field).__name__} without {name!r}."
            )


def _check_start(field, u0, t0):
    u0 = jnp.asarray(u0, jnp.float64)
    if u0.shape[-1:] != (field.dim,):
        raise ValueError(
            f"u0 must have length field.dim = {field.dim}; got shape {u0.shape}. "
            f"Pass a flat vector (model.ravel(theta))."
        )
    if not bool(jnp.all(jnp.isfinite(u0))):
        raise ValueError("u0 contains NaN or inf; pass a finite start.")
    norms = jnp.linalg.norm(u0, axis=-1)
    if field.on_sphere:
        if bool(jnp.any(norms == 0)):
            raise ValueError(
                "u0 is the zero vector, which has no direction on the sphere; "
                "start from a nonzero point (e.g. model.init(key) raveled)."
            )
        u0 = u0 / norms[..., None]
        if hasattr(field, "margins"):
            objective = jax.vmap(lambda u: field.objective(t0, u))(
                u0.reshape(-1, field.dim)
            )
            worst = float(jnp.min(objective))
            if worst <= 0:
                warnings.warn(
                    f"the start has normalized margin {worst:.3g} <= 0: the flow "
                    "of the margin is defined, but the late-stage theory (positive "
                    "margin, Lyu & Li 2020; Schechtman & Schreuder 2025) does not "
                    "apply to it.",
                    stacklevel=3,
                )
    return u0


def _plan(
    field,
    t1,
    selection,
    *,
    t0,
    dt0,
    solver,
    saveat,
    stop,
    tau,
    rtol,
    atol,
    max_steps,
    key,
    progress,
    decrease_tol,
    pattern,
):
    _check_field(field)
    name = "proximal" if selection is None else selection
    if name not in SELECTIONS:
        raise ValueError(
            f"selection must be one of {SELECTIONS} or None; got {name!r}."
        )
    t0, t1 = float(t0), float(t1)
    if not t1 > t0:
        raise ValueError(f"t1 must be larger than t0; got t0={t0}, t1={t1}.")
    save = _save_times(saveat, t0, t1)
    stop = Stop() if stop is None else stop
    if not isinstance(stop, Stop):
        raise TypeError(f"stop must be a flow.Stop or None; got {type(stop).__name__}.")
    sphere = bool(field.on_sphere)

    # Term and solver.
    inclusion = name == "proximal"
    if inclusion:
        if pattern is None:
            pattern = make_pattern_fn(field)
        elif pattern is False:
            pattern = None
        terms = PiecesTerm(field, pattern)
        if solver is not None:
            raise ValueError(
                "solver must be None for the inclusion solver (selection=None)."
            )
        solver = ProximalEuler(on_sphere=sphere, decrease_tol=decrease_tol)
    else:
        if name == "softmin":
            if tau is None:
                raise ValueError(
                    "selection='softmin' needs a temperature tau > 0 (a float or a "
                    "function t -> tau(t)); e.g. tau=1e-2."
                )
            tau_leaf = _Tau(tau) if callable(tau) else jnp.asarray(tau, jnp.float64)
        else:
            tau_leaf = None
        if name == "random" and key is None:
            raise ValueError(
                "selection='random' needs a PRNG key (key=jax.random.key(0))."
            )
        takes_t = "t" in inspect.signature(field.select).parameters
        terms = diffrax.ODETerm(_SelectionField(field, name, takes_t, tau_leaf, key))
        if solver is None:
            solver = diffrax.Tsit5() if name == "softmin" else diffrax.Euler()
        if sphere:
            solver = SphereProjected(solver)
    if stop.window is not None and not inclusion:
        raise ValueError(
            "stop.window (margin stagnation) needs the inclusion solver "
            "(selection=None); use stop.stationarity with other selections."
        )

    # Step-size control: fixed grids include the saved times; adaptive uses PID.
    adaptive = isinstance(solver, diffrax.AbstractAdaptiveSolver)
    if adaptive and not inclusion:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        step_dt0 = (t1 - t0) / 100 if dt0 is None else float(dt0)
        limit = 16**4 if max_steps is None else int(max_steps)
    else:
        step = (t1 - t0) / 1000 if dt0 is None else float(dt0)
        if saveat is None:
            # Default saving on the step grid itself, so that it leaves steps alone.
            grid = step_grid(t0, t1, step)
            stride = max(1, math.ceil((len(grid) - 1) / (_DEFAULT_SAVES - 1)))
            save = np.unique(np.append(grid[::stride], grid[-1]))
        grid = step_grid(t0, t1, step, None if isinstance(save, str) else save)
        controller = _Grid(jnp.asarray(_pad(grid, _bucket(len(grid), 1024))))
        step_dt0 = None
        limit = _bucket(len(grid), 1024) if max_steps is None else int(max_steps)
    if limit < 1:
        raise ValueError(f"max_steps must be a positive integer; got {max_steps}.")

    # Saving: the requested points, plus the final state at the time reached.
    if isinstance(save, str):
        main = diffrax.SubSaveAt(t0=True, steps=True)
    else:
        main = diffrax.SubSaveAt(ts=jnp.asarray(_pad(save, _bucket(len(save), 2))))
    saveat_ = diffrax.SaveAt(subs=[main, diffrax.SubSaveAt(t1=True)])

    # Stop events.
    conds = []
    if stop.stationarity is not None:
        conds.append(_StationarityStop(field, jnp.asarray(stop.stationarity), sphere))
    if stop.window is not None:
        conds.append(_StagnationStop(jnp.asarray(stop.min_gain)))
    event = diffrax.Event(tuple(conds)) if conds else None
    args = {"window": jnp.asarray(np.inf if stop.window is None else stop.window)}
    meter = diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter()
    label = "proximal (min-norm inclusion)" if inclusion else name
    return _Plan(
        terms,
        solver,
        controller,
        saveat_,
        event,
        args,
        step_dt0,
        jnp.asarray(t0),
        jnp.asarray(t1),
        limit,
        label,
        inclusion,
        sphere,
        meter,
        None if isinstance(save, str) else len(save),
    )


def _static_free(plan):
    """The plan without what the compiled solve does not need (labels, counts)."""
    return plan._replace(label="", num_saves=None)


def _conds_kinds(event):
    if event is None:
        return ()
    return tuple(
        "stationarity" if isinstance(c, _StationarityStop) else "stagnation"
        for c in event.cond_fn
    )


@eqx.filter_jit
def _solve(plan: _Plan, field, u0, log_rho0=None):
    """One diffeqsolve plus diagnostics at the saved points; vmap-able."""
    if plan.inclusion:
        y0 = (u0, initial_track(plan.t0, field.objective(plan.t0, u0)))
    elif log_rho0 is not None:
        y0 = (u0, log_rho0)
    else:
        y0 = u0
    sol = diffrax.diffeqsolve(
        plan.terms,
        plan.solver,
        plan.t0,
        plan.t1,
        plan.dt0,
        y0,
        args=plan.args,
        saveat=plan.saveat,
        stepsize_controller=plan.controller,
        event=plan.event,
        max_steps=plan.max_steps,
        throw=False,
        progress_meter=plan.progress,
    )
    saved, final = sol.ys
    ts, t_final = sol.ts[0], sol.ts[1][0]
    us_raw = saved[0] if isinstance(saved, tuple) else saved
    u_final = (final[0] if isinstance(final, tuple) else final)[0]
    reached = jnp.isfinite(ts)

    # Diagnostics at the saved points.
    if plan.sphere:
        norms = jnp.linalg.norm(us_raw, axis=-1)
        drift = jnp.max(jnp.where(reached, jnp.abs(norms - 1), 0.0))
        us = us_raw / jnp.where(reached & (norms > 0), norms, 1.0)[:, None]
    else:
        drift = jnp.asarray(jnp.nan)
        us = us_raw
    safe_u = jnp.where(reached[:, None], us, u0)
    safe_t = jnp.where(reached, ts, plan.t0)
    # One saved point at a time: a batch of Jacobians per saved point is large.
    margin, stationarity = jax.lax.map(
        lambda tu: (field.objective(*tu), _stationarity(field, *tu)), (safe_t, safe_u)
    )
    margin = jnp.where(reached, margin, jnp.inf)
    stationarity = jnp.where(reached, stationarity, jnp.inf)

    # Result code.
    code = jnp.where(sol.result == diffrax.RESULTS.successful, 0, 5)
    code = jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, 3, code)
    code = jnp.where(sol.result == diffrax.RESULTS.event_occurred, 0, code)
    if plan.event is not None:
        for i, kind in enumerate(_conds_kinds(plan.event)):
            fired = sol.event_mask[i]
            code = jnp.where(fired, STOP_REASONS.index(kind), code)
    code = jnp.where(jnp.all(jnp.isfinite(u_final)), code, 4)

    # Statistics: from the Track for the inclusion solver, else from saved points.
    steps_diff = margin[:-1] - margin[1:]
    pair_ok = reached[:-1] & reached[1:]
    saved_dec = jnp.where(pair_ok, steps_diff, -jnp.inf)
    saved_max = jnp.max(saved_dec) if saved_dec.size else jnp.asarray(-jnp.inf)
    if plan.inclusion:
        track = final[1]
        track = jax.tree_util.tree_map(lambda x: x[0], track)
        sign_flips = track.sign_flips if plan.terms.pattern_fn is not None else -1.0
        num_dec = track.num_decreases
        max_dec = jnp.maximum(track.max_decrease, saved_max)
        overflow, qp_gap = track.overflow_steps, track.qp_gap
    else:
        pattern_fn = make_pattern_fn(field)
        if pattern_fn is None:
            sign_flips = jnp.asarray(-1.0)
        else:
            patterns = jax.vmap(pattern_fn)(safe_u)
            changed = jnp.any(patterns[1:] != patterns[:-1], axis=-1)
            sign_flips = jnp.sum(changed & pair_ok).astype(jnp.float64)
        num_dec = jnp.sum(saved_dec > 1e-12).astype(jnp.float64)
        max_dec = saved_max
        overflow, qp_gap = jnp.asarray(0.0), jnp.asarray(0.0)
    stats = dict(
        num_steps=sol.stats["num_accepted_steps"],
        num_rejected=sol.stats["num_rejected_steps"],
        code=code,
        t_final=t_final,
        sign_flips=sign_flips,
        num_decreases=num_dec,
        max_margin_decrease=max_dec,
        overflow_steps=overflow,
        qp_gap=qp_gap,
    )
    out = dict(
        ts=ts,
        us=us,
        margin=margin,
        stationarity=stationarity,
        drift=drift,
        u_final=u_final,
        stats=stats,
    )
    if log_rho0 is not None:
        out["log_rho"] = saved[1]
    return out


def _finish(out, plan, *, batched, throw):
    out = jax.tree_util.tree_map(np.asarray, out)
    st = out["stats"]
    codes = np.atleast_1d(st["code"]).astype(int)
    reasons = tuple(STOP_REASONS[c] for c in codes)
    bad = [
        i for i, r in enumerate(reasons) if r in ("max_steps", "nonfinite", "failed")
    ]
    if throw and bad:
        i = bad[0]
        t_reached = float(np.atleast_1d(st["t_final"])[i])
        where = f" (start {i} of the batch)" if batched else ""
        if reasons[i] == "max_steps":
            advice = (
                f"max_steps={plan.max_steps} was reached at t = {t_reached:.6g} < "
                f"t1 = {plan.t1}{where}. Raise max_steps, use the fixed-step "
                "inclusion solver (selection=None), or a smooth selection "
                "(selection='softmin', tau=...) with adaptive steps."
            )
        else:
            advice = (
                f"the flow stopped at t = {t_reached:.6g}{where} with status "
                f"{reasons[i]!r} (NaN or solver failure); check the start and dt0."
            )
        raise FlowError(advice + " Pass throw=False to get the partial solution.")
    stats = FlowStats(
        num_steps=st["num_steps"],
        num_rejected=st["num_rejected"],
        stop_reason=reasons if batched else reasons[0],
        t_final=st["t_final"],
        sign_flips=st["sign_flips"].astype(int),
        num_decreases=st["num_decreases"].astype(int),
        max_margin_decrease=st["max_margin_decrease"],
        overflow_steps=st["overflow_steps"].astype(int),
        qp_gap=st["qp_gap"],
    )
    ts, us = out["ts"], out["us"]
    margin, stationarity = out["margin"], out["stationarity"]
    log_rho = out.get("log_rho")
    if plan.num_saves is not None:
        keep = slice(None, plan.num_saves)
        ts, us = ts[..., keep], us[..., keep, :]
        margin, stationarity = margin[..., keep], stationarity[..., keep]
        log_rho = None if log_rho is None else log_rho[..., keep]
    if not batched:
        keep = np.isfinite(ts)
        ts, us, margin, stationarity = (
            ts[keep],
            us[keep],
            margin[keep],
            stationarity[keep],
        )
        stats = stats._replace(
            num_steps=int(stats.num_steps),
            num_rejected=int(stats.num_rejected),
            t_final=float(stats.t_final),
            sign_flips=int(stats.sign_flips),
            num_decreases=int(stats.num_decreases),
            max_margin_decrease=float(stats.max_margin_decrease),
            overflow_steps=int(stats.overflow_steps),
            qp_gap=float(stats.qp_gap),
        )
        if log_rho is not None:
            log_rho = log_rho[keep]
    return FlowSolution(
        ts=ts,
        us=us,
        margin=margin,
        stationarity=stationarity,
        drift=out["drift"] if batched else float(out["drift"]),
        stats=stats,
        selection=plan.label,
        log_rho=log_rho,
        u_final=out["u_final"],
    )
