"""Result containers of the flow solvers."""

from typing import Any, NamedTuple

__all__ = [
    "FlowError",
    "FlowSolution",
    "FlowStats",
    "Stop",
    "STOP_REASONS",
    "SELECTIONS",
]

SELECTIONS = ("proximal", "min-norm", "autodiff", "random", "softmin")
STOP_REASONS = ("t1", "stationarity", "stagnation", "max_steps", "nonfinite", "failed")

_DEFAULT_SAVES = 101


class FlowError(RuntimeError):
    """A flow stopped before `t1` without a stop event (step limit, NaN)."""


class Stop(NamedTuple):
    """Stop rules, each a terminating `diffrax.Event`.

    **Fields:**

    - `stationarity`: stop once $s(u) = \\min\\{\\lVert v\\rVert : v \\in
      D_S(u)\\}$ (over the field's enlarged active set) falls below this value.
    - `window`: length in flow time of the stagnation window (inclusion solver
      only): stop once $F$ increased by less than `min_gain` over a window.
    - `min_gain`: the stagnation threshold.
    """

    stationarity: float | None = None
    window: float | None = None
    min_gain: float = 1e-12


class FlowStats(NamedTuple):
    """Solver statistics of a flow (arrays with a leading batch axis in batches).

    **Fields:**

    - `num_steps`: accepted steps; `num_rejected`: rejected steps.
    - `stop_reason`: one of `STOP_REASONS` (a tuple of them in batches).
    - `t_final`: the flow time reached.
    - `sign_flips`: steps at which a pre-activation of the model changed sign
      (inclusion solver on models exposing `preactivations`; else counted
      between saved points; `-1` where no pre-activations exist).
    - `num_decreases`: steps (inclusion solver) or saved intervals (other
      schemes) over which the objective fell by more than `decrease_tol`.
    - `max_margin_decrease`: the largest such decrease ($\\le 0$ when monotone).
    - `overflow_steps`: steps with more pieces within `eps` than candidates.
    - `qp_gap`: largest certified gap of the step QPs (inclusion solver).
    """

    num_steps: Any
    num_rejected: Any
    stop_reason: Any
    t_final: Any
    sign_flips: Any
    num_decreases: Any
    max_margin_decrease: Any
    overflow_steps: Any
    qp_gap: Any


class FlowSolution(NamedTuple):
    """A solved flow: saved times and points with their diagnostics.

    Single solves are trimmed to the points actually reached; batched solves keep
    a fixed length and pad unreached entries with `inf` (diffrax's convention).

    **Fields:**

    - `ts (m,)`, `us (m, p)`: saved times and points.
    - `margin (m,)`: the objective $F(t, u)$ (the normalized margin $\\bar
      g(u)$ for a margin field).
    - `stationarity (m,)`: $s(u)$, norm of the minimum-norm element.
    - `drift`: $\\max |\\lVert u\\rVert - 1|$ over the saved points, before any
      renormalization of interpolated points (`nan` off the sphere).
    - `stats`: a `FlowStats`.
    - `selection`: what drove the flow (`"proximal"`, `"min-norm"`, ...).
    - `log_rho (m,)`: $\\log\\rho$ for the mean-field flow, else `None`.
    - `u_final (p,)`, `t_final`: the last point and time reached.
    """

    ts: Any
    us: Any
    margin: Any
    stationarity: Any
    drift: Any
    stats: FlowStats
    selection: str
    log_rho: Any = None
    u_final: Any = None
