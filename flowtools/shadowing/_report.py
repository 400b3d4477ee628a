"""The shadowing report and the log-log decay fits of its distances."""

import dataclasses
import math
from typing import Any

import numpy as np


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
      `{"vs_k": (slope, stderr), "vs_t": (rate, stderr)}` of least-squares fits:
      the log-log slope against $k$ and the exponential rate against $t_k$ (the
      slope of the log of the value against $t_k$); a decay has a negative slope.
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


def fit_decay(x: Any, y: Any, *, log_x: bool = True) -> tuple[float, float]:
    r"""Least-squares slope of $\log y$ against $\log x$ (or against $x$), with its
    standard error.

    Only pairs with both values finite (and positive where a log is taken) are
    used. With `log_x=True` a power law $y \propto x^{-a}$ gives slope $-a$; with
    `log_x=False` an exponential decay $y \propto e^{-r x}$ gives slope $-r$. The
    second suits flow time $t_k$, whose origin depends on the run before the late
    stage, so that a power of $t_k$ would mean little.

    **Arguments:**

    - `x`, `y`: arrays of the same length.
    - `log_x`: regress on $\log x$ (power law) or on $x$ (exponential rate).

    **Returns:**

    `(slope, stderr)`; the standard error is
    $\sqrt{\mathrm{SSR}/(n-2) / \sum_i (X_i - \overline{X})^2}$ with $X$ the
    regressor, NaN with fewer than 3 usable points; both are NaN with fewer than 2.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    if log_x:
        keep &= x > 0
    lx = np.log(x[keep]) if log_x else x[keep]
    ly = np.log(y[keep])
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
