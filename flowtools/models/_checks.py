"""Checks on models and starting points: homogeneity, Euler's identity, kinks.

`check_homogeneous` measures $f(c\\theta) = c^L f(\\theta)$, Euler's identity and
the degree of the gradient at random parameter points; `check_start` rejects a
start at which subgradient ascent cannot move.
"""

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from flowtools.models._model import Model, Params, _positive_int

# Rows with |f| below this fraction of max |f| are left out of relative checks.
_TINY = 1e-6


class NotHomogeneousError(ValueError):
    """Raised when a model fails $f(c\\theta) = c^L f(\\theta)$ or Euler's identity."""


class HomogeneityReport(NamedTuple):
    """What `check_homogeneous` measured (largest relative errors seen)."""

    degree: int
    ratio_error: float  # max |f(c theta) / f(theta) - c^L| / c^L
    euler_error: float  # max |<grad f, theta> - L f| / (L |f|)
    grad_error: float  # max ||g(c theta) - c^(L-1) g(theta)|| / (c^(L-1) ||g||)
    rows_checked: int
    num_points: int


def _as_data(X: Any) -> np.ndarray:
    X = np.asarray(getattr(X, "X", X), dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (n, d) array; got shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf; clean the data first.")
    return X


def _scaled(theta, c):
    return tuple(c * leaf for leaf in theta)


@partial(jax.jit, static_argnums=0)
def _homogeneity_measurements(model, theta, X, scales):
    """f, <grad f, theta> per row; f and the flat gradient of sum f at c theta."""

    def at_scale(c):
        point = _scaled(theta, c)
        grads = jax.grad(lambda th: jnp.sum(model.apply(th, X)))(point)
        return model.apply(point, X), model.ravel(grads)

    f, directional = jax.jvp(lambda th: model.apply(th, X), (theta,), (theta,))
    values, grads = jax.vmap(at_scale)(jnp.concatenate([jnp.ones(1), scales]))
    return f, values[1:], directional, grads


@partial(jax.jit, static_argnums=0)
def _start_measurements(model, theta, X):
    return model.preactivations(theta, X), jax.jacrev(model.apply)(theta, X)


def check_homogeneous(
    model: Model,
    X: Float[ArrayLike, "n d"],
    key: Any = None,
    *,
    num_points: int = 4,
    scales: Sequence[float] = (0.5, 2.0, 3.0),
    rtol: float = 1e-6,
) -> HomogeneityReport:
    """Check $f(c\\theta) = c^L f(\\theta)$ and Euler's identity at random points.

    At the parameter points `model.init(k)` for `k` in
    `jax.random.split(key, num_points)` (in that order) and every scale $c$,
    compare $f(c\\theta; x_i) / f(\\theta; x_i)$ with $c^L$; compare the
    directional derivative $\\langle \\nabla_\\theta f(\\theta; x_i), \\theta
    \\rangle$ (forward mode, the same linear map as backpropagation) with
    $L f(\\theta; x_i)$; and compare the gradient of $\\sum_i f(\\theta; x_i)$
    at $c\\theta$ with $c^{L-1}$ times its value at $\\theta$. Rows with
    $|f(\\theta; x_i)| \\leq 10^{-6} \\max_j |f(\\theta; x_j)|$ are left out of
    the relative comparisons. See Lyu & Li (2020) for the role of Euler's
    identity.

    **Arguments:**

    - `model`: the model to check; `X`: inputs `(n, d)` (or a `Dataset`).
    - `key`: PRNG key or integer seed for the points (default `key(0)`).
    - `num_points`, `scales`: parameter points and factors $c > 0$ to try.
    - `rtol`: relative tolerance on each comparison.

    **Returns:** a `HomogeneityReport` with the largest relative errors.

    **Raises:** `NotHomogeneousError` naming the measured ratio and the expected
    $c^L$ (with the scale, row and point), or the Euler residual;
    `ValueError` for bad arguments or outputs that are zero or not finite at
    every point.
    """
    X = jnp.asarray(_as_data(X))
    num_points = _positive_int(num_points, "num_points")
    scales = tuple(float(c) for c in scales)
    if not scales or not all(math.isfinite(c) and c > 0 for c in scales):
        raise ValueError(f"scales must be positive finite numbers; got {scales}.")
    if not rtol > 0:
        raise ValueError(f"rtol must be positive; got {rtol}.")
    key = jax.random.key(0) if key is None else key
    key = jax.random.key(key) if isinstance(key, int) else key
    L = model.degree
    errors = {"ratio": 0.0, "euler": 0.0, "grad": 0.0}
    rows_checked = 0

    for j, k in enumerate(jax.random.split(key, num_points)):
        theta = model.init(k)
        measured = _homogeneity_measurements(model, theta, X, jnp.asarray(scales))
        f, values, directional, grads = (np.asarray(a) for a in measured)
        if not (np.all(np.isfinite(f)) and np.all(np.isfinite(values))):
            raise ValueError(f"model {model.name!r} returned NaN/inf at point {j}.")
        rows = np.flatnonzero(np.abs(f) > _TINY * np.max(np.abs(f)))
        if rows.size == 0:
            continue
        rows_checked += rows.size
        where = f"model {model.name!r} (degree L={L}), parameter point {j}"

        for c, value in zip(scales, values, strict=True):
            ratio = value[rows] / f[rows]
            err = np.abs(ratio - c**L) / c**L
            i = int(np.argmax(err))
            errors["ratio"] = max(errors["ratio"], float(err[i]))
            if err[i] > rtol:
                raise NotHomogeneousError(
                    f"{where} is not positively homogeneous: at scale c={c:g}, row "
                    f"{rows[i]}, the measured ratio f(c theta)/f(theta) = "
                    f"{ratio[i]:.10g} but c^L = {c**L:.10g} (relative error "
                    f"{err[i]:.2e} > rtol={rtol:g}). Biases (except in the first "
                    f"layer), tanh, softplus and normalisation layers break "
                    f"homogeneity; or the declared degree is wrong."
                )

        directional = directional[rows]
        err = np.abs(directional - L * f[rows]) / (L * np.abs(f[rows]))
        i = int(np.argmax(err))
        errors["euler"] = max(errors["euler"], float(err[i]))
        if err[i] > rtol:
            raise NotHomogeneousError(
                f"{where} fails Euler's identity at row {rows[i]}: <grad f, theta> = "
                f"{directional[i]:.10g} but L f = {L * f[rows[i]]:.10g} (relative "
                f"residual {err[i]:.2e} > rtol={rtol:g})."
            )

        g = grads[0]
        for c, gc in zip(scales, grads[1:], strict=True):
            residual = np.linalg.norm(gc - c ** (L - 1) * g)
            err = residual / (c ** (L - 1) * np.linalg.norm(g) + 1e-300)
            errors["grad"] = max(errors["grad"], float(err))
            if err > rtol:
                raise NotHomogeneousError(
                    f"{where}: the gradient is not homogeneous of degree L-1: "
                    f"||grad f(c theta) - c^(L-1) grad f(theta)|| / "
                    f"||c^(L-1) grad f(theta)|| = {err:.2e} at scale c={c:g} "
                    f"(rtol={rtol:g})."
                )

    if rows_checked == 0:
        raise ValueError(
            f"model {model.name!r} returned 0 on every row at all {num_points} "
            f"parameter points; homogeneity cannot be measured. Try other X or key."
        )
    return HomogeneityReport(L, *errors.values(), rows_checked, num_points)


def check_start(
    model: Model, theta: Params | Float[ArrayLike, " p"], X: Float[ArrayLike, "n d"]
) -> None:
    """Reject a starting point at which subgradient ascent cannot move.

    Criteria, in order: `theta` is finite and nonzero; no hidden layer has every
    pre-activation exactly $0$ on every row of `X` (the whole layer on the ReLU
    kink, e.g. an all-zero first layer); and the autodiff Jacobian of the
    outputs $\\partial f(\\theta; x_i) / \\partial \\theta$ is not identically
    zero over all rows (by Euler's identity a zero Jacobian forces $f = 0$ on
    every row, and the direction never changes). The second criterion needs
    pre-activations, so it applies to `mlp` and `cnn`; the third applies to
    every model.

    **Arguments:** `model`; `theta` (tuple or flat); `X` of shape `(n, d)` (or a
    `Dataset`).

    **Returns:** `None` when the start is usable.

    **Raises:** `ValueError` describing the problem and suggesting a perturbed
    start.
    """
    theta = model.as_tree(theta)
    X = jnp.asarray(_as_data(X))
    flat = np.asarray(model.ravel(theta))
    remedy = (
        "Start from model.init(jax.random.key(seed)) instead, or perturb this "
        "start, e.g. theta + 1e-3 * model.init(key) leaf by leaf."
    )
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"theta contains NaN or inf. {remedy}")
    if not np.any(flat):
        raise ValueError(f"theta is the zero vector: it has no direction. {remedy}")

    preacts, jacobian = _start_measurements(model, theta, X)
    for layer, z in zip(model.activation_layers, preacts, strict=True):
        if not np.any(np.asarray(z)):
            raise ValueError(
                f"every pre-activation of hidden layer {layer!r} is exactly 0 on "
                f"all {X.shape[0]} rows: the start sits on the ReLU kink, where "
                f"autodiff only returns the relu0={model.relu0:g} convention. "
                f"{remedy}"
            )

    if not any(np.any(np.asarray(leaf)) for leaf in jacobian):
        raise ValueError(
            f"autodiff returns a zero gradient of f(theta; x_i) for all "
            f"{X.shape[0]} rows at this start (model {model.name!r}), so the flow "
            f"and SGD cannot move. {remedy}"
        )
