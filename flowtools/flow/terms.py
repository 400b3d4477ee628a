"""Vector fields of the explicit and smooth schemes, and the stop events."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from flowtools import simplex

__all__: list[str] = []


# ---------------------------------------------------------------------------
# Vector fields of the explicit schemes.


class _SelectionField(eqx.Module):
    field: Any
    name: str = eqx.field(static=True)
    takes_t: bool = eqx.field(static=True)
    tau: Any
    key: Any

    def __call__(self, t, u, args):
        if self.name == "softmin":
            return _softmin(self.field, t, u, _tau_at(self.tau, t))
        kwargs = {}
        if self.takes_t:
            kwargs["t"] = t
        if self.name == "random":
            step = jnp.asarray(jnp.floor(t * 1e6), jnp.uint32)
            kwargs["key"] = jax.random.fold_in(self.key, step)
        return self.field.select(u, self.name, **kwargs)


class _Tau(eqx.Module):
    fn: Callable = eqx.field(static=True)


def _tau_at(tau, t):
    return tau.fn(t) if isinstance(tau, _Tau) else tau


def _softmin(field, t, u, tau):
    if hasattr(field, "softmin_direction"):
        return field.softmin_direction(t, u, tau)
    pieces = field.pieces(t, u)
    lam = jax.nn.softmax(-pieces.values / tau)
    return lam @ pieces.grads


class _MeanField(eqx.Module):
    field: Any
    loss: Any = eqx.field(static=True)
    degree: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        u, log_rho = y
        if hasattr(self.field, "margins"):
            # One reverse pass: J^T lambda without the (n, p) Jacobian.
            q, pullback = jax.vjp(self.field.margins, u)
            lam = self._weights(q, log_rho)
            g = pullback(lam)[0]
            g = g - jnp.dot(g, u) * u
        else:
            q, G = self.field.all_pieces(u)
            lam = self._weights(q, log_rho)
            g = lam @ G
        return (g, self.degree * jnp.dot(lam, q))

    def _weights(self, q, log_rho):
        scaled = jnp.exp(self.degree * log_rho) * q
        return jax.nn.softmax(self.loss.log_weight(scaled))


# ---------------------------------------------------------------------------
# Stop events.


class _StationarityStop(eqx.Module):
    field: Any
    tol: Any
    sphere: bool = eqx.field(static=True)

    def __call__(self, t, y, args, **kwargs):
        u = y[0] if isinstance(y, tuple) else y
        return _stationarity(self.field, t, u) < self.tol


class _StagnationStop(eqx.Module):
    min_gain: Any

    def __call__(self, t, y, args, **kwargs):
        return y[1].gain < self.min_gain


def _stationarity(field, t, u):
    pieces = field.pieces(t, u)
    qp = simplex.min_norm_point(pieces.grads, pieces.mask)
    return jnp.sqrt(jnp.sum(qp.point**2))
