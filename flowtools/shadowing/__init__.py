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

from flowtools.shadowing._measure import measure
from flowtools.shadowing._report import ShadowingReport, fit_decay
from flowtools.shadowing._windows import late_stage_index, window_starts

__all__ = [
    "ShadowingReport",
    "fit_decay",
    "late_stage_index",
    "measure",
    "window_starts",
]
