"""SGD iterates against flow trajectories: shadowing distances and diagnostics.

The normalized SGD iterates $u_k$, placed on the flow clock $t_k = \\sum_{j<k}
\\eta_j$, form an asymptotic pseudo-trajectory of the margin-ascent inclusion
$\\dot u \\in D_S(u)$ (Schechtman & Schreuder 2025). For a horizon $T$ and a
window start $k$ this module integrates a reference flow $\\Phi$ from $u_k$ over
$[0, T]$ and records

$$D_T(k) = \\max_{j \\ge k,\\ t_j - t_k \\le T} \\| u_j - \\Phi_{t_j - t_k}(u_k) \\|,$$

the quantity whose limit $0$ defines an asymptotic pseudo-trajectory (Benaim,
Hofbauer & Sorin 2005). The flow is evaluated at exactly the flow times
$t_j - t_k$ of the recorded iterates, never at a nearby solver time.

Two kinds of reference are measured, each under its own label:

- `"mean_field"`: the smooth mean-field flow in $(u, \\log\\rho)$ started from
  $(u_k, \\log\\rho_k)$, the flow that SGD follows on average (its weights are
  the softmin weights at temperature $\\rho^{-L}$). Its distance measures the
  sampling noise and discretization part, which shrinks like $\\sqrt{\\eta_k}$.
- `"inclusion"`: the inclusion itself, stepped by the linearized proximal Euler
  scheme (the slow, minimum-norm solution), and `"inclusion[<name>]"` for each
  further selection the caller names. Its distance is the theorem's object and
  is dominated by the temperature bias, which shrinks only like $\\rho_k^{-L}$.
  `"closest"` is, per window, the smallest distance over the inclusion-kind
  references: the proxy for the distance to the solution set.

Along the run the report also holds the normalized and smoothed margins, the
stationarity $s_\\epsilon(u_k)$ with $\\epsilon$ tied to the softmin temperature
($\\epsilon_k = \\rho_k^{-L} \\log n$) and with a fixed $\\epsilon$, the KKT
residual, $\\rho_k$, $\\eta_k$ and $t_k$, and log-log least-squares decay rates of
$D_T(k)$ and $s(u_k)$ against $k$ and against $t_k$ with their standard errors.
"""

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

__all__ = [
    "ShadowingReport",
    "fit_decay",
    "late_stage_index",
    "measure",
    "window_starts",
]

_REFERENCE_KINDS = ("mean_field", "inclusion")
_DIAGNOSTIC_CHUNK = 32


@dataclasses.dataclass(eq=False)
class ShadowingReport:
    """Distances between SGD iterates and reference flows, and run diagnostics.

    Windows are indexed by `w`; `M` is the largest number of recorded iterates in
    a window. Per-window arrays of length `M` are padded with NaN (floats) or
    `-1` (integers) past `counts[w]`. Run diagnostics are indexed by `m`, the
    records from the late-stage entry on.

    **Fields:**

    - `horizon`: the window length $T$ in flow time.
    - `references`: labels of the integrated reference flows.
    - `inclusion_references`: the labels among them that solve the inclusion.
    - `selections`: for each reference label, what produced its flow.
    - `starts_index`, `starts_k`, `starts_t`: the record index, SGD step and flow
      time of each window start, shape `(w,)`.
    - `counts`: recorded iterates in each window (start included), `(w,)`.
    - `offsets`: the flow times $t_j - t_k$ inside each window, `(w, M)`.
    - `window_k`: the SGD steps $j$ inside each window, `(w, M)`.
    - `distance`: per reference label (and `"closest"`), chordal $D_T(k)$, `(w,)`.
    - `geodesic`: the same with geodesic distance $\\arccos\\langle u_j,
      \\Phi\\rangle$, `(w,)`.
    - `curves`: per label, the chordal error at every iterate of each window,
      `(w, M)`.
    - `closest`: for each window, the index in `inclusion_references` of the
      closest inclusion flow, `(w,)`.
    - `fits`: per label (and `"stationarity"`, `"stationarity_fixed"`), a dict
      `{"vs_k": (slope, stderr), "vs_t": (slope, stderr)}` of log-log
      least-squares fits; a decay has a negative slope.
    - `k`, `t`, `eta`, `log_rho`, `rho`, `margin`, `smoothed`: the run along the
      records used for diagnostics, `(m,)`.
    - `eps_tau`: the tied slack $\\rho_k^{-L}\\log n$, `(m,)`.
    - `stationarity`: $s_{\\epsilon_k}(u_k)$ with `eps_tau`, `(m,)`.
    - `stationarity_fixed`: $s_\\epsilon(u_k)$ with the fixed slack `eps`, `(m,)`.
    - `kkt_residual`: the relative KKT residual of $u_k$ at slack `eps_tau`
      (`MarginField.kkt_residual`; `inf` where $\\bar g(u_k) \\le 0$), `(m,)`.
    - `eps`: the fixed slack; `clock`: `"exact"` or `"estimate"`; `loss`: the
      loss name; `degree`: $L$; `late_stage_step`: the late-stage entry used.
    - `settings`: integration settings (`dt`, `rtol`, `atol`, `tau`).
    """

    horizon: float
    references: tuple
    inclusion_references: tuple
    selections: dict
    starts_index: np.ndarray
    starts_k: np.ndarray
    starts_t: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    window_k: np.ndarray
    distance: dict
    geodesic: dict
    curves: dict
    closest: np.ndarray
    fits: dict
    k: np.ndarray
    t: np.ndarray
    eta: np.ndarray
    log_rho: np.ndarray
    rho: np.ndarray
    margin: np.ndarray
    smoothed: np.ndarray
    eps_tau: np.ndarray
    stationarity: np.ndarray
    stationarity_fixed: np.ndarray
    kkt_residual: np.ndarray
    eps: float
    clock: str
    loss: str
    degree: int
    late_stage_step: int
    settings: dict

    def table(self) -> list[dict]:
        """One row per window: start step, flow time, iterates, and each distance.

        **Returns:**

        A list of dicts with keys `k`, `t`, `count` and one key per label of
        `distance`.
        """
        rows = []
        for w in range(len(self.starts_k)):
            row = {
                "k": int(self.starts_k[w]),
                "t": float(self.starts_t[w]),
                "count": int(self.counts[w]),
            }
            for label, values in self.distance.items():
                row[label] = float(values[w])
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------
# Fits and window starts


def fit_decay(x: Any, y: Any) -> tuple[float, float]:
    """Least-squares slope of $\\log y$ against $\\log x$, with its standard error.

    Only pairs with both values finite and positive are used. A decay like
    $y \\propto x^{-a}$ gives slope $-a$.

    **Arguments:**

    - `x`, `y`: arrays of the same length.

    **Returns:**

    `(slope, stderr)`; the standard error is
    $\\sqrt{\\mathrm{SSR}/(n-2) / \\sum_i (\\log x_i - \\overline{\\log x})^2}$,
    NaN with fewer than 3 usable points; both are NaN with fewer than 2.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    if lx.size < 2 or np.ptp(lx) == 0.0:
        return (math.nan, math.nan)
    lx_c = lx - lx.mean()
    sxx = float(lx_c @ lx_c)
    slope = float(lx_c @ (ly - ly.mean()) / sxx)
    if lx.size < 3:
        return (slope, math.nan)
    resid = ly - ly.mean() - slope * lx_c
    stderr = math.sqrt(float(resid @ resid) / (lx.size - 2) / sxx)
    return (slope, stderr)


def window_starts(
    k: Int[np.ndarray, " m"],
    t: Float[np.ndarray, " m"],
    horizon: float,
    *,
    first: int = 0,
    starts: Sequence[int] | None = None,
    num_starts: int = 12,
) -> np.ndarray:
    """Record indices of window starts, log-spaced in the step count.

    Automatic starts are `num_starts` values log-spaced in $k$ between the
    record `first` and the last record whose window $[t_k, t_k + T]$ lies
    inside the run, each snapped to the nearest recorded step (in $\\log k$);
    duplicates are dropped. Given starts (SGD steps) are snapped the same way.

    **Arguments:**

    - `k`, `t`: recorded steps (increasing) and flow times (non-decreasing).
    - `horizon`: the window length $T > 0$.
    - `first`: the first record allowed as a start (the late-stage entry).
    - `starts`: SGD steps to start windows at, or `None` for automatic starts.
    - `num_starts`: how many automatic starts to aim for.

    **Returns:**

    Increasing record indices, shape `(w,)`.

    **Raises:**

    - `ValueError`: when no complete window fits after `first`, or a given start
      lies outside the late-stage records or too close to the end of the run.
    """
    k = np.asarray(k, dtype=np.int64)
    t = np.asarray(t, dtype=np.float64)
    last_ok = np.nonzero(t <= t[-1] - horizon)[0]
    last_ok = last_ok[last_ok >= first]
    if last_ok.size == 0:
        raise ValueError(
            f"horizon={horizon} does not fit in the late-stage part of the run: "
            f"flow time goes from {t[first]:.6g} (step {k[first]}) to {t[-1]:.6g} "
            f"(step {k[-1]}). Use a shorter horizon or a longer run."
        )
    last = int(last_ok[-1])
    logk = np.log(np.maximum(k, 1).astype(np.float64))

    if starts is None:
        if num_starts < 1:
            raise ValueError(f"num_starts={num_starts} must be at least 1.")
        targets = np.linspace(logk[first], logk[last], num_starts)
    else:
        requested = np.asarray(starts, dtype=np.int64).reshape(-1)
        if requested.size == 0:
            raise ValueError("starts is empty; give at least one SGD step, or None.")
        bad = requested[(requested < k[first]) | (requested > k[last])]
        if bad.size:
            raise ValueError(
                f"starts {bad.tolist()} lie outside the steps where a complete "
                f"window of horizon {horizon} starts after the late-stage entry "
                f"({k[first]} to {k[last]}); choose starts in that range."
            )
        targets = np.log(np.maximum(requested, 1).astype(np.float64))

    candidates = np.arange(first, last + 1)
    idx = candidates[
        np.argmin(np.abs(logk[candidates][None, :] - targets[:, None]), axis=1)
    ]
    return np.unique(idx)


# ---------------------------------------------------------------------------
# Reading the trace


def _trace_array(trace: Any, name: str, required: bool = True) -> np.ndarray | None:
    value = getattr(trace, name, None)
    if value is None:
        if required:
            raise TypeError(
                f"trace has no field {name!r}; pass a flowtools.sgd.SGDTrace (or an "
                "object with arrays k, t, u, log_rho)."
            )
        return None
    return np.asarray(value)


def _clock(trace: Any, clock: str) -> tuple[np.ndarray, str]:
    t = _trace_array(trace, "t")
    t_exact = _trace_array(trace, "t_exact", required=False)
    exact_ok = t_exact is not None and t_exact.shape == t.shape
    exact_ok = exact_ok and bool(np.all(np.isfinite(t_exact)))
    if clock == "auto":
        return (t_exact, "exact") if exact_ok else (t, "estimate")
    if clock == "exact":
        if not exact_ok:
            raise ValueError(
                "clock='exact' but the trace has no finite exact clock t_exact at "
                "every record; run SGD with the exact clock or use clock='estimate'."
            )
        return t_exact, "exact"
    if clock == "estimate":
        return t, "estimate"
    raise ValueError(f"clock={clock!r}; use 'auto', 'exact' or 'estimate'.")


def _late_stage_first(trace: Any, k: np.ndarray, margin: np.ndarray) -> int:
    # A warm-up phase (another loss or step) is not the theorem's setting: windows
    # start in the main phase only.
    index = np.arange(len(k))
    phase = getattr(trace, "phase", None)
    lower = 0
    if phase is not None:
        main = np.nonzero(np.asarray(phase) != 0)[0]
        if main.size == 0:
            raise ValueError(
                "Every record belongs to the warm-up phase; run the main phase "
                "longer before measuring shadowing."
            )
        lower = int(main[0])

    step = getattr(trace, "late_stage_step", None)
    if step is not None:
        after = np.nonzero((k >= int(step)) & (index >= lower))[0]
        if after.size == 0:
            raise ValueError(
                f"The late stage starts at step {step}, after the last record "
                f"(step {k[-1]}); record further or give starts explicitly."
            )
        return _stays_positive(int(after[0]), margin)
    positive = np.nonzero((margin > 0) & (index >= lower))[0]
    if positive.size == 0:
        raise ValueError(
            "No recorded iterate classifies every sample correctly (all normalized "
            f"margins <= 0, the largest is {np.max(margin):.3g}): the late stage is "
            "never reached and shadowing of the margin flow does not apply. Run "
            "longer or with another step size."
        )
    return int(positive[0])


def _stays_positive(entry: int, margin: np.ndarray) -> int:
    # SGD may misclassify a sample again for a while just after the entry step:
    # windows start at the first record after which the margin stays positive.
    negative = np.nonzero(margin[entry:] <= 0)[0]
    if negative.size and entry + negative[-1] + 1 < len(margin):
        return entry + int(negative[-1]) + 1
    return entry


def late_stage_index(trace: Any) -> int:
    """Index of the first record from which SGD stays in the late stage.

    That is the first record at or after the late-stage entry step (and after any
    warm-up phase) after which the normalized margin stays positive at every
    record: SGD may misclassify a sample again for a while just after entering.

    **Raises:**

    - `ValueError`: when no record is in the late stage.
    """
    k = np.asarray(trace.k)
    return _late_stage_first(trace, k, np.asarray(trace.margin))


# ---------------------------------------------------------------------------
# Reference flows


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _distances(u: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Chordal distance between unit vectors, and the geodesic angle computed as
    # 2 arcsin(chord / 2), which stays accurate for small angles.
    chord = np.linalg.norm(_normalize_rows(u) - _normalize_rows(phi), axis=-1)
    return chord, 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


def _mean_field_flows(field, U0, log_rho0, times, horizon, loss, rtol, atol, progress):
    from flowtools import flow

    sol = flow.integrate_mean_field(
        field,
        jnp.asarray(U0),
        jnp.asarray(log_rho0),
        horizon,
        loss=loss,
        saveat=times,
        rtol=rtol,
        atol=atol,
        progress=progress,
    )
    return np.asarray(sol.us)


def _inclusion_flows(field, U0, times, horizon, selection, dt, tau, key, progress):
    from flowtools import flow

    kwargs = {}
    if selection == "softmin":
        kwargs["tau"] = tau
    if selection == "random":
        kwargs["key"] = key
    sol = flow.integrate_batch(
        field,
        jnp.asarray(U0),
        horizon,
        selection=None if selection in ("min-norm", "proximal") else selection,
        dt0=dt,
        saveat=times,
        progress=progress,
        **kwargs,
    )
    return np.asarray(sol.us)


def _progress(iterable, progress: bool, desc: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


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
            "vs_t": fit_decay(t[idx], values),
        }
    for label, values in (
        ("stationarity", stationarity),
        ("stationarity_fixed", stationarity_fixed),
    ):
        fits[label] = {
            "vs_k": fit_decay(k[run], values),
            "vs_t": fit_decay(t[run], values),
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
