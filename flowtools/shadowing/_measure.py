"""The shadowing measurement and the diagnostics along the run."""

import math
import warnings
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from flowtools.shadowing._references import (
    _distances,
    _inclusion_flows,
    _mean_field_flows,
)
from flowtools.shadowing._report import ShadowingReport, fit_decay
from flowtools.shadowing._windows import (
    _clock,
    _late_stage_first,
    _trace_array,
    window_starts,
)

_REFERENCE_KINDS = ("mean_field", "inclusion")
_DIAGNOSTIC_CHUNK = 32


# ---------------------------------------------------------------------------
# Diagnostics along the run


@eqx.filter_jit
def _along_chunk(field, U, eps_values, kkt):
    def one(u, eps):
        if kkt:
            return field.kkt_residual(u, eps=eps)
        return field.stationarity(u, eps=eps)

    return jax.vmap(one)(U, eps_values)


def _along(field, U, eps_values, what):
    # Stationarity or KKT residual at every record, in fixed-size chunks (one
    # compilation; the memory of a chunk is that of a few Jacobians).
    out = np.empty(U.shape[0])
    for start in range(0, U.shape[0], _DIAGNOSTIC_CHUNK):
        stop = min(start + _DIAGNOSTIC_CHUNK, U.shape[0])
        block = np.zeros((_DIAGNOSTIC_CHUNK, U.shape[1]))
        block[: stop - start] = U[start:stop]
        block[stop - start :] = U[stop - 1]
        eps_block = np.full(_DIAGNOSTIC_CHUNK, eps_values[stop - 1])
        eps_block[: stop - start] = eps_values[start:stop]
        values = _along_chunk(
            field, jnp.asarray(block), jnp.asarray(eps_block), what == "kkt"
        )
        out[start:stop] = np.asarray(values)[: stop - start]
    return out


def _field_data(field):
    ds = getattr(field, "dataset", None)
    if ds is None or not hasattr(field, "margins") or not hasattr(field, "degree"):
        raise TypeError(
            f"field must be a flowtools.fields.MarginField, got {type(field).__name__}."
        )
    return ds


def _margins_along(field, U, log_rho, loss):
    from flowtools import losses

    degree = int(field.degree)
    loss = losses.get(loss)
    q = np.asarray(jax.jit(jax.vmap(field.margins))(jnp.asarray(U)))
    gbar = q.min(axis=1)
    # Smoothed margin in log space: -log(sum_i l(rho^L q_i)) / rho^L, written as
    # -log(sum_i exp(log l(rho^L q_i))) / rho^L.
    scale = np.exp(degree * log_rho)[:, None]
    log_l = np.asarray(loss.log_value(jnp.asarray(scale * q)))
    log_sum = np.asarray(jax.scipy.special.logsumexp(jnp.asarray(log_l), axis=1))
    if loss.name == "logistic":
        # S = sum log(1 + e^-q); gtilde = -log(expm1(S)) / rho^L.
        # log(expm1(S)) = log S + log(expm1(S) / S), with expm1(S)/S = 1 + S/2 + ...
        # for tiny S (late in training S underflows while log S is finite).
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s = np.exp(log_sum)
            middle = np.log(np.expm1(np.clip(s, 1e-300, 30.0)))
        log_expm1 = np.where(s < 1e-8, log_sum + s / 2, np.where(s < 30.0, middle, s))
        smoothed = -log_expm1 / scale[:, 0]
    else:
        smoothed = -log_sum / scale[:, 0]
    return gbar, smoothed


# ---------------------------------------------------------------------------
# The measurement


def measure(
    trace: Any,
    field: Any,
    horizon: float,
    *,
    starts: Sequence[int] | None = None,
    num_starts: int = 12,
    reference: str | Sequence[str] = ("mean_field", "inclusion"),
    selection: str | Sequence[str] = "min-norm",
    loss: str | None = None,
    dt: float | None = None,
    eps: float | None = None,
    tau: float | None = None,
    clock: str = "auto",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    key: Any = None,
    diagnostics: bool = True,
    progress: bool = False,
) -> ShadowingReport:
    """Measure how closely SGD iterates shadow the margin flows, window by window.

    For each window start $k$ (log-spaced in $k$ after the late-stage entry, or
    given), each reference flow $\\Phi$ is integrated from $u_k$ over $[0, T]$
    and compared with every recorded iterate $u_j$ of the window at exactly the
    flow time $t_j - t_k$; $D_T(k)$ is the largest chordal distance in the
    window (Benaim, Hofbauer & Sorin 2005; Schechtman & Schreuder 2025). See the
    module docstring for the references and diagnostics.

    !!! warning

        The distance sees only the recorded iterates: a window's maximum is taken
        over the records inside it, not over every SGD step. Record densely in
        flow time (the SGD recorder's flow-time schedule) for a faithful
        $D_T(k)$. The inclusion reference is first order in its step `dt`, so its
        distances carry an error of order `dt`; the mean-field reference is
        integrated to `rtol`/`atol`. All windows of one reference are solved in
        one batched call that saves every window at the union of all in-window
        offsets, so memory grows like windows x recorded offsets x parameters
        (about 150 MB for 12 windows, 360 offsets and 4,000 parameters).

    **Arguments:**

    - `trace`: a [`flowtools.sgd.SGDTrace`][] (arrays `k`, `t`, `u`, `log_rho`;
      `t_exact`, `eta`, `margin`, `late_stage_step`, `loss` are used when there).
    - `field`: the [`flowtools.fields.MarginField`][] of the same model and data.
    - `horizon`: the window length $T > 0$ in flow time.
    - `starts`: SGD steps to start windows at (snapped to records), or `None`.
    - `num_starts`: number of automatic, log-spaced starts.
    - `reference`: `"mean_field"`, `"inclusion"` or both.
    - `selection`: one name or several for the inclusion references:
      `"min-norm"` (or `"proximal"`) is the inclusion solver, the linearized
      proximal Euler scheme that follows the minimum-norm solution (label
      `"inclusion"`); any other selection of `flowtools.flow.integrate`
      (`"softmin"`, `"autodiff"`, `"random"`) adds a flow driven by that
      selection, labelled `"inclusion[<name>]"`.
    - `loss`: the loss of the mean-field weights; defaults to `trace.loss`.
    - `dt`: the step of the inclusion solver; default `horizon / 500`.
    - `eps`: the fixed active-set slack for `stationarity_fixed`; default the
      field's own `eps`.
    - `tau`: the temperature of a `"softmin"` selection; default $\\rho^{-L}$ at
      the last record.
    - `clock`: `"auto"` (the exact clock when the trace has it at every record),
      `"exact"` or `"estimate"`.
    - `rtol`, `atol`: tolerances of the mean-field integration (adaptive
      Tsit5). On ReLU networks every neuron kink crossed costs rejected steps,
      so tolerances much below the distances being measured only cost time.
    - `key`: PRNG key for a `"random"` selection.
    - `diagnostics`: compute stationarity and the KKT residual along the run.
    - `progress`: show progress bars.

    **Returns:**

    A [`ShadowingReport`][flowtools.shadowing.ShadowingReport].

    **Raises:**

    - `ValueError`: for a non-positive horizon, an unknown reference or clock,
      a run that never reaches the late stage, or starts that leave no complete
      window, each naming the argument and the remedy.
    """
    finite = isinstance(horizon, int | float) and math.isfinite(horizon)
    if not finite or horizon <= 0:
        raise ValueError(f"horizon={horizon!r} must be a positive finite flow time.")
    kinds = (reference,) if isinstance(reference, str) else tuple(reference)
    for kind in kinds:
        if kind not in _REFERENCE_KINDS:
            raise ValueError(
                f"reference={kind!r} is not known; use one or both of "
                f"{_REFERENCE_KINDS}."
            )
    if not kinds:
        raise ValueError("reference is empty; give 'mean_field' and/or 'inclusion'.")
    names = (selection,) if isinstance(selection, str) else tuple(selection)
    if "inclusion" in kinds and not names:
        raise ValueError("selection is empty; give at least 'min-norm'.")
    if dt is None:
        dt = horizon / 500.0
    if not dt > 0:
        raise ValueError(f"dt={dt!r} must be positive.")

    # --- the run on its flow clock
    k = _trace_array(trace, "k").astype(np.int64)
    u = _trace_array(trace, "u").astype(np.float64)
    log_rho = _trace_array(trace, "log_rho").astype(np.float64)
    t, clock_used = _clock(trace, clock)
    t = t.astype(np.float64)
    if u.ndim != 2 or u.shape[0] != k.shape[0]:
        raise ValueError(
            f"trace.u has shape {u.shape}; expected (records, parameters) with "
            f"{k.shape[0]} records."
        )
    if np.any(np.diff(t) < 0):
        raise ValueError("trace flow times decrease; the clock must be non-decreasing.")
    ds = _field_data(field)
    loss_name = loss if loss is not None else getattr(trace, "loss", "exponential")
    loss_name = getattr(loss_name, "name", loss_name)
    degree = int(field.degree)
    n = int(ds.n) if hasattr(ds, "n") else int(np.asarray(ds.y).shape[0])
    if eps is None:
        eps = float(getattr(field, "eps", 1e-6))

    margin_rec = _trace_array(trace, "margin", required=False)
    smoothed_rec = _trace_array(trace, "smoothed", required=False)
    if margin_rec is None or smoothed_rec is None:
        margin_rec, smoothed_rec = _margins_along(field, u, log_rho, loss_name)
    first = _late_stage_first(trace, k, np.asarray(margin_rec))
    late_step = int(k[first])

    # --- windows
    idx = window_starts(
        k, t, horizon, first=first, starts=starts, num_starts=num_starts
    )
    members = [
        np.nonzero((np.arange(len(t)) >= i) & (t - t[i] <= horizon))[0] for i in idx
    ]
    counts = np.array([len(m) for m in members], dtype=np.int64)
    width = int(counts.max())
    S = np.empty((len(idx), width))
    window_k = np.full((len(idx), width), -1, dtype=np.int64)
    for w, (i, mem) in enumerate(zip(idx, members, strict=True)):
        S[w, : len(mem)] = t[mem] - t[i]
        S[w, len(mem) :] = S[w, len(mem) - 1]
        window_k[w, : len(mem)] = k[mem]
    # One batched solve per reference saves every window's flow at the union of
    # all in-window offsets (one compilation); each window then reads its own.
    times = np.unique(S)
    where = np.searchsorted(times, S)
    U0 = u[idx]

    # --- reference flows at the recorded flow times
    flows, selections = {}, {}
    if "mean_field" in kinds:
        flows["mean_field"] = _mean_field_flows(
            field, U0, log_rho[idx], times, horizon, loss_name, rtol, atol, progress
        )
        selections["mean_field"] = (
            f"mean-field flow in (u, log rho), {loss_name} loss weights"
        )
    inclusion_labels = []
    if "inclusion" in kinds:
        if tau is None:
            tau = float(np.exp(-degree * log_rho[-1]))
        if key is None:
            key = jax.random.key(0)
        for name in names:
            label = (
                "inclusion"
                if name in ("min-norm", "proximal")
                else (f"inclusion[{name}]")
            )
            flows[label] = _inclusion_flows(
                field, U0, times, horizon, name, dt, tau, key, progress
            )
            selections[label] = (
                "inclusion solver (linearized proximal Euler, min-norm)"
                if label == "inclusion"
                else f"selection {name!r}"
                + (f" (tau={tau:.3g})" if name == "softmin" else "")
            )
            inclusion_labels.append(label)
    flows = {
        label: np.take_along_axis(phi, where[:, :, None], axis=1)
        for label, phi in flows.items()
    }

    # --- distances
    pad = np.arange(width)[None, :] >= counts[:, None]
    distance, geodesic, curves = {}, {}, {}
    for label, phi in flows.items():
        chord = np.empty((len(idx), width))
        angle = np.empty((len(idx), width))
        for w, mem in enumerate(members):
            c, a = _distances(u[mem], phi[w, : len(mem)])
            chord[w, : len(mem)], angle[w, : len(mem)] = c, a
        chord[pad], angle[pad] = np.nan, np.nan
        curves[label] = chord
        distance[label] = np.nanmax(chord, axis=1)
        geodesic[label] = np.nanmax(angle, axis=1)
    closest = np.full(len(idx), -1, dtype=np.int64)
    if inclusion_labels:
        stacked = np.stack([distance[label] for label in inclusion_labels])
        closest = np.argmin(stacked, axis=0).astype(np.int64)
        distance["closest"] = stacked.min(axis=0)
        geodesic["closest"] = np.stack(
            [geodesic[label] for label in inclusion_labels]
        ).min(axis=0)
        curves["closest"] = np.stack(
            [curves[inclusion_labels[c]][w] for w, c in enumerate(closest)]
        )

    # --- diagnostics along the run
    run = np.arange(first, len(k))
    eta = _trace_array(trace, "eta", required=False)
    eta = np.full(len(k), np.nan) if eta is None else eta.astype(np.float64)
    eps_tau = np.exp(-degree * log_rho[run]) * math.log(max(n, 2))
    if diagnostics:
        stationarity = _along(field, u[run], eps_tau, "stationarity")
        fixed = np.full(len(run), eps)
        stationarity_fixed = _along(field, u[run], fixed, "stationarity")
        kkt = _along(field, u[run], eps_tau, "kkt")
    else:
        stationarity = stationarity_fixed = kkt = np.full(len(run), np.nan)

    fits = {}
    for label, values in distance.items():
        fits[label] = {
            "vs_k": fit_decay(k[idx], values),
            "vs_t": fit_decay(t[idx], values, log_x=False),
        }
    for label, values in (
        ("stationarity", stationarity),
        ("stationarity_fixed", stationarity_fixed),
    ):
        fits[label] = {
            "vs_k": fit_decay(k[run], values),
            "vs_t": fit_decay(t[run], values, log_x=False),
        }

    if np.any(~np.isfinite(np.concatenate(list(distance.values())))):
        warnings.warn(
            "Some shadowing distances are not finite: a reference flow failed "
            "(NaN). Check the field at those window starts.",
            stacklevel=2,
        )

    return ShadowingReport(
        horizon=float(horizon),
        references=tuple(flows),
        inclusion_references=tuple(inclusion_labels),
        selections=selections,
        starts_index=idx.astype(np.int64),
        starts_k=k[idx],
        starts_t=t[idx],
        counts=counts,
        offsets=np.where(pad, np.nan, S),
        window_k=window_k,
        distance=distance,
        geodesic=geodesic,
        curves=curves,
        closest=closest,
        fits=fits,
        k=k[run],
        t=t[run],
        eta=eta[run],
        log_rho=log_rho[run],
        rho=np.exp(log_rho[run]),
        margin=np.asarray(margin_rec, dtype=np.float64)[run],
        smoothed=np.asarray(smoothed_rec, dtype=np.float64)[run],
        eps_tau=eps_tau,
        stationarity=stationarity,
        stationarity_fixed=stationarity_fixed,
        kkt_residual=kkt,
        eps=float(eps),
        clock=clock_used,
        loss=str(loss_name),
        degree=degree,
        late_stage_step=late_step,
        settings={"dt": float(dt), "rtol": rtol, "atol": atol, "tau": tau},
    )
