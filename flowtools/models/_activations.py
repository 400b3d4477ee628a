"""ReLU and leaky ReLU with a chosen autodiff derivative at the kink.

Both activations are `jax.custom_jvp` functions whose derivative at exactly $0$ is
a fixed element of the Clarke subdifferential, so that backpropagation through a
network built from them is one conservative field (Bolte & Pauwels 2021).
"""

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def _check_relu0(s: Any) -> float:
    if isinstance(s, bool) or not isinstance(s, int | float | np.floating):
        raise TypeError(f"relu0 must be a Python float in [0, 1]; got {s!r}.")
    if not 0.0 <= float(s) <= 1.0:
        raise ValueError(
            f"relu0 (the autodiff value of ReLU'(0)) must lie in [0, 1]; got {s}."
        )
    return float(s)


def _kink_derivative(x, s, left, right):
    return jnp.where(x > 0, right, jnp.where(x < 0, left, s)).astype(x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _relu(x, s):
    return jnp.maximum(x, 0)


@_relu.defjvp
def _relu_jvp(s, primals, tangents):
    (x,), (dx,) = primals, tangents
    return _relu(x, s), _kink_derivative(x, s, 0.0, 1.0) * dx


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _leaky_relu(x, slope, s):
    return jnp.where(x >= 0, x, slope * x)


@_leaky_relu.defjvp
def _leaky_relu_jvp(slope, s, primals, tangents):
    (x,), (dx,) = primals, tangents
    at_zero = s + (1.0 - s) * slope
    return _leaky_relu(x, slope, s), _kink_derivative(x, at_zero, slope, 1.0) * dx


def relu(x: Float[ArrayLike, "..."], s: float = 0.0) -> Float[Array, "..."]:
    """Elementwise $\\max(x, 0)$ whose autodiff derivative at exactly $0$ is $s$.

    JAX's own `jax.nn.relu` uses $s = 0$. Any $s \\in [0, 1]$ is an element of the
    Clarke subdifferential at $0$, and a fixed choice gives a conservative field
    (Bolte & Pauwels 2021). Example: `relu(x, s) - relu(-x, s)` is the identity,
    yet `jax.grad` of it at $0$ is $2s$.

    **Arguments:**

    - `x`: input array.
    - `s`: derivative used at $x = 0$, a Python float in $[0, 1]$.

    **Returns:** $\\max(x, 0)$, same shape as `x`.

    **Raises:** `ValueError` if `s` is outside $[0, 1]$; `TypeError` if it is
    not a Python number.
    """
    return _relu(jnp.asarray(x), _check_relu0(s))


def leaky_relu(
    x: Float[ArrayLike, "..."], slope: float = 0.01, s: float = 0.0
) -> Float[Array, "..."]:
    """Elementwise $x$ for $x \\geq 0$ and $a x$ below, with a chosen derivative at $0$.

    The autodiff derivative at exactly $0$ is the convex combination
    $s \\cdot 1 + (1 - s) a$ of the two one-sided slopes, so $s = 0$ takes the
    left slope $a$ and $s = 1$ the right slope $1$.

    **Arguments:**

    - `x`: input array.
    - `slope`: the slope $a$ for negative inputs (a finite Python float).
    - `s`: weight of the right slope at $0$, in $[0, 1]$.

    **Returns:** the activation, same shape as `x`.

    **Raises:** `ValueError` for `s` outside $[0, 1]$ or a non-finite `slope`.
    """
    return _leaky_relu(jnp.asarray(x), _check_slope(slope), _check_relu0(s))


def _check_slope(slope: Any) -> float:
    if not isinstance(slope, int | float) or not math.isfinite(slope):
        raise ValueError(f"slope must be a finite Python float; got {slope!r}.")
    return float(slope)
