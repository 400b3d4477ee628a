r"""Named selections: one vector chosen from a set-valued field, to drive a solver.

A selection is a function `fn(field, t, x, *, tau, key) -> Float[Array, "p"]`
that returns one vector of the field's value at `(t, x)` (or, for the smooth
selections, a vector that tends to it). The built-in ones (THEORY section 3):

| name | vector | in the field? |
| --- | --- | --- |
| `"min-norm"` | minimum-norm element over $I_\varepsilon$ | yes |
| `"softmin"` | $\sum_i \mathrm{softmax}(-\psi/\tau)_i \nabla\psi_i$ | as $\tau \to 0$ |
| `"autodiff"` | `jax.grad` of $\min_i \psi_i$ (projected) | yes, not min-norm |
| `"random"` | seeded Dirichlet(1) mix of the active generators | yes |

**min-norm** is the steepest-ascent direction of a minimum of smooth pieces and
the selection followed by the slow solution of the inclusion: it slides along
kinks. **autodiff** is what a framework returns: at a tie JAX's `min` splits the
gradient equally among the tied pieces (for the hull of `(2, 0)` and `(0, 1)` it
returns `(1, 0.5)`, while the minimum-norm element is `(0.4, 0.8)`).

**softmin** rate. If the margins outside $I_\varepsilon(x)$ exceed the minimum by
at least $\delta > 0$, all the softmin weight outside the active set is at most
$(m-1)e^{-\delta/\tau}$, and the distance from the softmin vector to the field's
value is at most that weight times the spread of the generators:

$$\mathrm{dist}(v_\tau, D(x)) \le (m - 1)\, e^{-\delta/\tau}
\max_{i,j} \|g_i - g_j\|.$$

The decay is exponential in $1/\tau$ with rate $\delta$ (the tests measure the
slope of $\log \mathrm{dist}$ against $1/\tau$ and find $\delta$ to a few per
cent), and nothing is gained while $\tau \gtrsim \delta$: near ties that are not
within $\varepsilon$ keep the softmin vector away from the field. Along SGD
iterates, whose softmin temperature is $\tau_k = \rho_k^{-L}$, this is why the
field is measured with $\varepsilon$ of order $\tau_k \log n$.

Users add their own with
[`register_selection`][flowtools.fields.selections.register_selection].
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["register_selection", "select", "selection_names", "selection_label"]


def _min_norm(field, t, x, *, tau, key):
    return field.value(t, x).min_norm().point


def _softmin(field, t, x, *, tau, key):
    return field.softmin_direction(t, x, tau)


def _autodiff(field, t, x, *, tau, key):
    return field.autodiff_direction(t, x)


def _random(field, t, x, *, tau, key):
    hull = field.value(t, x)
    draws = jax.random.exponential(key, hull.mask.shape, dtype=jnp.float64)
    draws = jnp.where(hull.mask, draws, 0.0)
    return (draws / jnp.sum(draws)) @ hull.generators


_SELECTIONS: dict[str, tuple[Callable, str]] = {
    "min-norm": (_min_norm, "min-norm (minimum-norm element of the field)"),
    "softmin": (_softmin, "softmin (smoothed minimum at temperature tau)"),
    "autodiff": (
        _autodiff,
        "autodiff (jax.grad of the minimum; ties split equally; not the min-norm "
        "element)",
    ),
    "random": (_random, "random (seeded convex combination of active generators)"),
}
_NEEDS_TAU = {"softmin"}
_NEEDS_KEY = {"random"}


def register_selection(
    name: str, fn: Callable, *, label: str | None = None, overwrite: bool = False
) -> None:
    """Register a user selection under `name`, for `field.select` and the solver.

    **Arguments:**

    - `name`: the selection's name.
    - `fn`: `fn(field, t, x, *, tau, key) -> Float[Array, "p"]`, JAX-traceable.
      It can use `field.value(t, x)` (a [`flowtools.fields.HullValue`][]),
      `field.pieces(t, x)` and the field's other methods.
    - `label`: a one-line description recorded with results (default: `name`).
    - `overwrite`: allow replacing an existing selection, built-ins included.

    **Raises:** `TypeError` for a non-callable `fn` or a non-string name;
    `ValueError` when `name` is taken and `overwrite` is `False`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}.")
    if name in _SELECTIONS and not overwrite:
        raise ValueError(
            f"selection {name!r} is already registered; pass overwrite=True to "
            "replace it or choose another name."
        )
    _SELECTIONS[name] = (fn, name if label is None else label)


def selection_names() -> tuple[str, ...]:
    """The names of the registered selections."""
    return tuple(_SELECTIONS)


def selection_label(name: str) -> str:
    """A one-line description of a selection, honest about what it is."""
    _check_name(name)
    return _SELECTIONS[name][1]


def _check_name(name: Any) -> None:
    if name not in _SELECTIONS:
        raise ValueError(
            f"unknown selection {name!r}; registered: {', '.join(_SELECTIONS)}. "
            "Add one with flowtools.fields.selections.register_selection."
        )


def select(
    field: Any,
    x: Float[Array, " p"],
    name: str = "min-norm",
    *,
    t: Any = 0.0,
    tau: Any = None,
    key: Any = None,
) -> Float[Array, " p"]:
    """One vector of `field` at `(t, x)`, chosen by the selection called `name`.

    **Arguments:**

    - `field`: a [`flowtools.fields.PiecewiseField`][] or
      [`flowtools.fields.MarginField`][] (or any object with the same methods).
    - `x`: the point (a flat unit vector for a field on the sphere).
    - `name`: `"min-norm"`, `"softmin"`, `"autodiff"`, `"random"`, or a registered
      name.
    - `t`: time.
    - `tau`: temperature, required by `"softmin"`; may be traced.
    - `key`: a JAX PRNG key, required by `"random"`.

    **Returns:** a vector of shape `(p,)`.

    **Raises:** `ValueError` for an unknown name, a missing or nonpositive `tau`,
    or a missing `key`.
    """
    _check_name(name)
    if name in _NEEDS_TAU:
        if tau is None:
            raise ValueError(
                f"selection {name!r} needs a temperature, e.g. tau=1e-2; got tau=None."
            )
        if isinstance(tau, int | float | np.number) and not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}.")
        tau = jnp.asarray(tau, jnp.float64)
    if name in _NEEDS_KEY and key is None:
        raise ValueError(
            f"selection {name!r} needs a PRNG key, e.g. key=jax.random.key(0)."
        )
    fn = _SELECTIONS[name][0]
    return fn(field, t, jnp.asarray(x, jnp.float64), tau=tau, key=key)
