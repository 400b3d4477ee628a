"""Values of set-valued fields: convex hulls of generators, and candidate pieces."""

from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from flowtools import simplex

__all__ = ["Pieces", "HullValue"]


class Pieces(NamedTuple):
    """The candidate pieces of a field at a point, in the ascent-of-minimum convention.

    **Fields:**

    - `values`: $\\psi_j(t, x)$ for the candidate pieces, shape `(k,)`.
    - `grads`: their gradients, projected by $P_x$ on the sphere, shape `(k, p)`.
    - `mask`: which candidates lie in the enlarged active set $I_\\varepsilon$.
    - `overflow`: `True` when more than `k` pieces lie within $\\varepsilon$ of the
      minimum, so that the mask misses some active pieces.
    """

    values: Float[Array, " k"]
    grads: Float[Array, "k p"]
    mask: Bool[Array, " k"]
    overflow: Bool[Array, ""]


class HullValue(NamedTuple):
    r"""A value of a set-valued field: the convex hull $\mathrm{conv}\{g_j : j \in
    \text{mask}\}$ of the masked rows of `generators`.

    **Fields:**

    - `generators`: the rows $g_j$, shape `(k, p)`.
    - `mask`: which rows belong to the set; at least one must be `True`.
    """

    generators: Float[Array, "k p"]
    mask: Bool[Array, " k"]

    def min_norm(self, **kwargs: Any) -> simplex.QPResult:
        r"""The minimum-norm element of the hull, with its simplex weights.

        Solves $\min_{\lambda \in \Delta(\text{mask})} \tfrac12 \|G^\top
        \lambda\|^2$; `result.point` is the element, `result.weights` the weights,
        `result.gap` the certified bound on the objective error.

        **Arguments:**

        - `**kwargs`: passed to [`flowtools.simplex.min_norm_point`][].

        **Returns:** a [`flowtools.simplex.QPResult`][].
        """
        return simplex.min_norm_point(self.generators, self.mask, **kwargs)

    def stationarity(self) -> Float[Array, ""]:
        r"""The stationarity measure $s = \min\{\|v\| : v \in \text{hull}\}$.

        **Returns:** a nonnegative scalar, exactly 0 when the solver finds the
        origin inside the hull.
        """
        return jnp.linalg.norm(self.min_norm().point)

    def support(self, d: Float[Array, " p"]) -> Float[Array, ""]:
        r"""The support function $\sigma(d) = \max_{v \in \text{hull}} \langle v, d
        \rangle$, attained at a generator.

        **Arguments:**

        - `d`: a direction of shape `(p,)`.

        **Returns:** a scalar.
        """
        scores = self.generators @ jnp.asarray(d, self.generators.dtype)
        return jnp.max(jnp.where(self.mask, scores, -jnp.inf))

    def distance(self, v: Float[Array, " p"], **kwargs: Any) -> Float[Array, ""]:
        r"""The Euclidean distance from `v` to the hull (0 exactly when `v` is in it).

        Solves $\min_{\lambda \in \Delta} \tfrac12 \|G^\top \lambda - v\|^2$ as the
        simplex QP with linear term $c = -G v$, then measures $\|G^\top \lambda^* -
        v\|$ directly (not from the objective, which would lose half the digits).

        **Arguments:**

        - `v`: a vector of shape `(p,)`.
        - `**kwargs`: passed to [`flowtools.simplex.solve`][].

        **Returns:** a nonnegative scalar. Its accuracy is that of the QP solution
        $d^* = G^\top \lambda^*$ (see `flowtools.simplex`).
        """
        v = jnp.asarray(v, self.generators.dtype)
        result = simplex.solve(
            self.generators, -(self.generators @ v), self.mask, **kwargs
        )
        return jnp.linalg.norm(result.point - v)


def _tangent(x: Float[Array, " p"], grads: Float[Array, "k p"]) -> Float[Array, "k p"]:
    """Project each row onto the tangent space of the unit sphere at `x`."""
    return grads - jnp.outer(grads @ x, x)


def _check_eps(eps: Any) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError) as err:
        raise TypeError(f"eps must be a real number, got {eps!r}.") from err
    if not (value >= 0.0 and value < float("inf")):
        raise ValueError(
            f"eps must be finite and >= 0 (the slack of the enlarged active set), "
            f"got {eps!r}."
        )
    return value


def _eps_array(field_eps: Any, eps: Any) -> Array:
    """The eps of a call as an array, so that changing it does not recompile."""
    if eps is None:
        return jnp.asarray(field_eps, jnp.float64)
    if isinstance(eps, int | float) and not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}.")
    return jnp.asarray(eps, jnp.float64)
