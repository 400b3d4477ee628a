"""Reference flows started from window starts, and distances on the sphere."""

import jax.numpy as jnp
import numpy as np


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
