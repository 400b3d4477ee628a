"""The conservative field of a minimum or maximum of smooth user pieces."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from flowtools.fields import selections
from flowtools.fields.hull import HullValue, Pieces, _check_eps, _eps_array, _tangent

__all__ = ["PiecewiseField"]


class PiecewiseField(eqx.Module):
    r"""The conservative field of $\min_j \phi_j$ or $\max_j \phi_j$ for smooth pieces.

    With $\sigma = +1$ for ascent and $-1$ for descent, the field is the hull of the
    gradients of the signed pieces $\psi_j = \sigma \phi_j$ that are active for the
    function being ascended, $\sigma F$, enlarged by `eps`:

    $$D(t, x) = \mathrm{conv}\{\nabla_x \psi_j(t, x) : j \in I_\varepsilon(t, x)\},$$

    projected by $P_x$ when `on_sphere` (then `x` must be a unit vector). Ascent of
    a minimum and descent of a maximum are ascents of $\min_j \psi_j$, the
    convention of [`Pieces`][flowtools.fields.Pieces] and of the flow solver. Ascent
    of a maximum and descent of a minimum are also accepted: their hull, objective
    and selections are available, but `pieces` raises, since they are not the
    ascent of a minimum (their solutions need not be unique and the proximal step
    of the flow solver does not apply).

    One line each (THEORY section 6 and CASES 5, 6):

    ```python
    abs_y = PiecewiseField(lambda t, y: jnp.stack([y[0], -y[0]]), 1, kind="max",
                           direction="descent")                # dy/dt in -sign(y)
    slide = PiecewiseField(lambda t, y: jnp.stack([y[0] - t * y[0], -y[0] - t * y[0]]),
                           1, kind="max", direction="descent")  # -sign(y) + t
    kink = PiecewiseField(lambda t, x: jnp.stack([x[0], 2 * x[0]]), 1, kind="max",
                          direction="descent")                  # max(x, 2x)
    ```

    **Arguments:**

    - `pieces_fn`: `pieces_fn(t, x) -> Float[Array, "m"]`, the smooth pieces
      $\phi_j(t, x)$, a JAX-traceable function of a scalar time and a point of shape
      `(dim,)`.
    - `dim`: the dimension $p$ of `x`.
    - `kind`: `"min"` or `"max"`.
    - `direction`: `"ascent"` or `"descent"`.
    - `on_sphere`: project the gradients onto the tangent space of the unit sphere.
    - `eps`: slack of the enlarged active set.

    **Raises:** `ValueError` for an unknown `kind` or `direction`, a `dim` below 1,
    a negative `eps`, or a `pieces_fn` that does not return a 1-D array of pieces;
    `TypeError` for a `pieces_fn` that is not callable.
    """

    pieces_fn: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    direction: str = eqx.field(static=True)
    on_sphere: bool = eqx.field(static=True)
    num_pieces: int = eqx.field(static=True)
    eps: float

    def __init__(
        self,
        pieces_fn: Callable,
        dim: int,
        kind: str = "min",
        direction: str = "ascent",
        on_sphere: bool = False,
        eps: float = 1e-9,
    ):
        if kind not in ("min", "max"):
            raise ValueError(f"kind must be 'min' or 'max', got {kind!r}.")
        if direction not in ("ascent", "descent"):
            raise ValueError(
                f"direction must be 'ascent' or 'descent', got {direction!r}."
            )
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}.")
        if not callable(pieces_fn):
            raise TypeError(f"pieces_fn must be callable, got {pieces_fn!r}.")

        x = jax.ShapeDtypeStruct((dim,), jnp.float64)
        t = jax.ShapeDtypeStruct((), jnp.float64)
        try:
            out = jax.eval_shape(pieces_fn, t, x)
        except Exception as err:
            raise ValueError(
                f"pieces_fn(t, x) failed for a scalar t and x of shape ({dim},): {err}"
            ) from err
        if not hasattr(out, "shape") or len(out.shape) != 1 or out.shape[0] < 1:
            raise ValueError(
                "pieces_fn(t, x) must return a 1-D array of piece values, got "
                f"{getattr(out, 'shape', out)}; stack the pieces with jnp.stack."
            )

        self.pieces_fn = pieces_fn
        self.dim = dim
        self.kind = kind
        self.direction = direction
        self.on_sphere = bool(on_sphere)
        self.num_pieces = int(out.shape[0])
        self.eps = _check_eps(eps)

    @property
    def _sign(self) -> float:
        return 1.0 if self.direction == "ascent" else -1.0

    @property
    def _min_form(self) -> bool:
        return (self.kind == "min") == (self.direction == "ascent")

    def _signed(self, t, x):
        x = jnp.asarray(x, jnp.float64)
        return self._sign * jnp.asarray(self.pieces_fn(t, x), jnp.float64)

    def _values_grads(self, t, x):
        x = jnp.asarray(x, jnp.float64)
        values = self._signed(t, x)
        grads = jax.jacrev(self._signed, argnums=1)(t, x)
        if self.on_sphere:
            grads = _tangent(x, grads)
        return values, grads

    def _active(self, values, eps):
        if self._min_form:
            return values <= jnp.min(values) + eps
        return values >= jnp.max(values) - eps

    def pieces(self, t: Any, x: Float[Array, " p"]) -> Pieces:
        """All `m` pieces in the ascent-of-minimum convention (`overflow` is `False`).

        **Arguments:**

        - `t`: time.
        - `x`: point of shape `(dim,)`.

        **Returns:** a [`Pieces`][flowtools.fields.Pieces].

        **Raises:** `ValueError` for ascent of a maximum or descent of a minimum,
        which are not the ascent of a minimum of smooth pieces.
        """
        if not self._min_form:
            raise ValueError(
                f"pieces() describes the ascent of a minimum; kind={self.kind!r} with "
                f"direction={self.direction!r} is not one. Use kind='min' with "
                "direction='ascent' or kind='max' with direction='descent', or "
                "select() for a vector of this field."
            )
        values, grads = self._values_grads(t, x)
        return Pieces(values, grads, self._active(values, self.eps), jnp.asarray(False))

    def objective(self, t: Any, x: Float[Array, " p"]) -> Float[Array, ""]:
        r"""The function that the flow increases, $\sigma F(t, x)$.

        For the ascent-of-minimum forms this is $\min_j \psi_j$; for the other two
        forms it is $\max_j \psi_j$.
        """
        values = self._signed(t, x)
        return jnp.min(values) if self._min_form else jnp.max(values)

    def value(self, t: Any, x: Float[Array, " p"], *, eps: Any = None) -> HullValue:
        """The value $D(t, x)$ of the field, as a
        [`HullValue`][flowtools.fields.HullValue].

        **Arguments:**

        - `t`, `x`: time and point.
        - `eps`: slack of the active set for this call (default: the field's).
        """
        values, grads = self._values_grads(t, x)
        return HullValue(grads, self._active(values, _eps_array(self.eps, eps)))

    def softmin_direction(self, t: Any, x: Float[Array, " p"], tau: Any) -> Array:
        r"""The softmin selection $\sum_j \mathrm{softmax}(\mp\psi/\tau)_j \nabla
        \psi_j$ (the gradient of the smoothed minimum, or maximum), projected on the
        sphere.
        """
        values, grads = self._values_grads(t, x)
        logits = -values / tau if self._min_form else values / tau
        return jax.nn.softmax(logits) @ grads

    def autodiff_direction(self, t: Any, x: Float[Array, " p"]) -> Array:
        """What `jax.grad` of the objective returns (ties split equally by JAX),
        projected on the sphere. Not the minimum-norm element in general.
        """
        x = jnp.asarray(x, jnp.float64)
        grad = jax.grad(lambda x: self.objective(t, x))(x)
        return _tangent(x, grad[None])[0] if self.on_sphere else grad

    def select(
        self,
        x: Float[Array, " p"],
        name: str = "min-norm",
        *,
        t: Any = 0.0,
        tau: Any = None,
        key: Any = None,
    ) -> Float[Array, " p"]:
        """One vector of the field at `(t, x)`, chosen by a named selection.

        See [`flowtools.fields.selections.select`][] for the names and their arguments.
        """
        return selections.select(self, x, name, t=t, tau=tau, key=key)
