"""Fixed-step grids that contain the requested times."""

import math
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from flowtools.flow.solution import _DEFAULT_SAVES

__all__ = ["step_grid"]


# ---------------------------------------------------------------------------
# Grids.


def step_grid(
    t0: float, t1: float, dt: float, ts: Any = None
) -> Float[np.ndarray, " m"]:
    """The fixed-step grid $t_0, t_0 + h, \\dots$ merged with the times `ts`.

    Requested times become grid points, so that a fixed-step solution is *at*
    those times and not interpolated (CASES.md 10: SGD iterate $k$ is compared
    at exactly its flow time $t_k$). Steps stay of length `dt` except where a
    requested time or $t_1$ cuts one; grid points closer than $10^{-12}\\,dt$ to
    a requested time are merged into it.

    **Arguments:** `t0 < t1`, the step `dt > 0`, optional times `ts` in
    $[t_0, t_1]$.

    **Returns:** an increasing float64 array starting at `t0`, ending at `t1`.

    **Raises:** `ValueError` for `dt <= 0`, `t1 <= t0` or times outside.
    """
    t0, t1, dt = float(t0), float(t1), float(dt)
    if not dt > 0:
        raise ValueError(f"dt0 must be positive; got {dt}.")
    if not t1 > t0:
        raise ValueError(f"t1 must be larger than t0; got t0={t0}, t1={t1}.")
    num = int(math.floor((t1 - t0) / dt * (1 + 1e-12)))
    base = t0 + dt * np.arange(num + 1)
    extra = np.array([t1], float)
    if ts is not None:
        ts = np.asarray(ts, float).ravel()
        if ts.size and (ts.min() < t0 - 1e-12 * dt or ts.max() > t1 + 1e-12 * dt):
            raise ValueError(
                f"requested times must lie in [t0, t1] = [{t0}, {t1}]; got "
                f"[{ts.min()}, {ts.max()}]."
            )
        extra = np.concatenate([extra, ts])
    keep = np.min(np.abs(base[:, None] - extra[None, :]), axis=1) > 1e-12 * dt
    grid = np.unique(np.concatenate([base[keep], extra]))
    return np.clip(grid, t0, t1)


def _bucket(n: int, least: int) -> int:
    """Round a length up to a power of two (at least `least`), so that solves with
    nearby step or save counts share one compilation."""
    return max(least, 1 << (int(n) - 1).bit_length())


def _pad(ts, length):
    ts = np.asarray(ts, float)
    return np.concatenate([ts, np.full(length - len(ts), ts[-1])])


class _Grid(diffrax.AbstractStepSizeController):
    """Steps to the points of an increasing grid padded at its end with copies of
    $t_1$ (a `diffrax.StepTo` whose array length need not change with the grid)."""

    ts: Any

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        del terms, y0, dt0, args, func, error_order
        ts = eqx.error_if(self.ts, self.ts[0] != t0, "the grid must start at t0.")
        return ts[1], jnp.asarray(2, jnp.int32)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        del t0, y0, y1_candidate, args, y_error, error_order
        index = jnp.minimum(controller_state, self.ts.shape[0] - 1)
        return (
            True,
            t1,
            self.ts[index],
            False,
            controller_state + 1,
            diffrax.RESULTS.successful,
        )


def _save_times(saveat, t0, t1):
    if saveat is None:
        return np.linspace(t0, t1, _DEFAULT_SAVES)
    if isinstance(saveat, str):
        if saveat != "steps":
            raise ValueError(
                f"saveat must be 'steps', an int or times; got {saveat!r}."
            )
        return "steps"
    if isinstance(saveat, int | np.integer):
        if saveat < 2:
            raise ValueError(f"saveat as a count must be >= 2; got {saveat}.")
        return np.linspace(t0, t1, int(saveat))
    ts = np.asarray(saveat, float).ravel()
    if ts.size == 0 or np.any(np.diff(ts) < 0) or not np.all(np.isfinite(ts)):
        raise ValueError("saveat times must be a non-empty, finite, sorted sequence.")
    if ts[0] < t0 or ts[-1] > t1:
        raise ValueError(
            f"saveat times must lie in [t0, t1] = [{t0}, {t1}]; got "
            f"[{ts[0]}, {ts[-1]}]."
        )
    return ts
