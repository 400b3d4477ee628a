"""Margins of a homogeneous predictor: per sample, normalized, smoothed; KKT residual.

With $q_i(\\theta) = y_i f(\\theta; x_i)$ and the polar form $\\theta = \\rho u$
($\\rho = \\|\\theta\\|$), homogeneity of degree $L$ gives
$q_i(\\theta) = \\rho^L q_i(u)$ (THEORY section 2). This module computes

- the normalized margin $\\bar\\gamma(u) = \\min_i q_i(u)$,
- the smoothed margin $\\tilde\\gamma(\\theta)$ of Lyu & Li (2020), in log space,
- the log of the empirical risk,
- the late-stage test ($\\min_i q_i > 0$),
- the KKT residual of a direction for the max-margin problem.

Every function takes the parameters as a tuple (one array per layer) or as a flat
vector, and the data as a `flowtools.data.Dataset` (or an `(X, y)` pair).
"""

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from flowtools import losses, simplex
from flowtools.data import Dataset
from flowtools.models import Model

__all__ = [
    "NotLateStageError",
    "check_late_stage",
    "is_late_stage",
    "kkt_residual",
    "log_loss",
    "normalized",
    "per_sample",
    "smoothed",
    "smoothed_from_margins",
    "training_error",
]

_MAX_LOG_SCALE = 600.0
_MAX_LISTED = 20


class NotLateStageError(ValueError):
    """Raised when some sample is misclassified ($q_i \\le 0$): not the late stage.

    **Attributes:**

    - `indices`: the 0-based indices of the samples with $q_i \\le 0$.
    - `training_error`: the fraction of such samples.
    - `log_loss`: $\\log R(\\theta)$ for the loss that was named.
    """

    def __init__(self, message, indices, training_error, log_loss):
        super().__init__(message)
        self.indices = indices
        self.training_error = training_error
        self.log_loss = log_loss


def _arrays(ds) -> tuple[Array, Array]:
    """The data as JAX arrays `(X, y)`, from a `Dataset` or an `(X, y)` pair."""
    if isinstance(ds, Dataset):
        return jnp.asarray(ds.X), jnp.asarray(ds.y)
    if isinstance(ds, tuple | list) and len(ds) == 2:
        return jnp.asarray(ds[0]), jnp.asarray(ds[1])
    raise TypeError(
        f"ds must be a flowtools.data.Dataset or an (X, y) pair, got "
        f"{type(ds).__name__}; build one with flowtools.data.Dataset.from_arrays."
    )


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _norm(theta) -> Array:
    """$\\|\\theta\\|$ over all leaves, scaled by the largest entry so that the
    squares neither overflow nor underflow."""
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in theta]))
    safe = jnp.where(largest > 0, largest, 1.0)
    return safe * jnp.sqrt(sum(jnp.sum(jnp.square(leaf / safe)) for leaf in theta))


def _polar(model: Model, theta) -> tuple[tuple, Array]:
    """Split $\\theta$ into $(u, \\log\\rho)$; raise on $\\theta = 0$ when concrete."""
    theta = model.as_tree(theta)
    rho = _norm(theta)
    if _is_concrete(rho) and not float(rho) > 0:
        raise ValueError(
            "theta is the zero vector (or not finite: ||theta|| = "
            f"{float(rho)}); the normalized and smoothed margins need theta != 0."
        )
    u = tuple(leaf / rho for leaf in theta)
    return u, jnp.log(rho)


@partial(jax.jit, static_argnums=0)
def _margins(model: Model, theta, X, y) -> Array:
    return y * model.apply(theta, X)


def per_sample(model: Model, theta, ds) -> Float[Array, " n"]:
    """Per-sample margins $q_i(\\theta) = y_i f(\\theta; x_i)$.

    **Arguments:**

    - `model`: a `flowtools.models.Model`.
    - `theta`: parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.

    **Returns:**

    The margins, shape `(n,)`.
    """
    X, y = _arrays(ds)
    return _margins(model, model.as_tree(theta), X, y)


def normalized(model: Model, theta, ds) -> Float[Array, ""]:
    """The normalized margin $\\bar\\gamma = \\min_i q_i(\\theta) / \\|\\theta\\|^L$.

    Evaluated as $\\min_i q_i(u)$ at $u = \\theta / \\|\\theta\\|$, which equals the
    definition by homogeneity and cannot overflow however large $\\|\\theta\\|$ is
    (for a model that is not homogeneous the two differ).

    **Arguments:**

    - `model`: a homogeneous `Model` of degree $L$.
    - `theta`: nonzero parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.

    **Returns:**

    $\\bar\\gamma(u)$, a scalar.

    **Raises:**

    - `ValueError`: when `theta` is zero.
    """
    u, _ = _polar(model, theta)
    return jnp.min(per_sample(model, u, ds))


def _log_expm1_exp(log_s: Array) -> Array:
    """$\\log(e^{S} - 1)$ from $\\log S$, for tiny and huge $S$ alike.

    For $S \\le 1$: $\\log S + \\log(\\mathrm{expm1}(S) / S)$, where the ratio lies
    in $[1, e - 1]$ and is 1 when $S$ underflows. For $S > 1$:
    $S + \\log(-\\mathrm{expm1}(-S))$.
    """
    s_small = jnp.exp(jnp.where(log_s <= 0, log_s, 0.0))
    safe = jnp.where(s_small > 0, s_small, 1.0)
    ratio = jnp.where(s_small > 0, jnp.expm1(safe) / safe, 1.0)
    small = log_s + jnp.log(ratio)
    s_large = jnp.exp(jnp.where(log_s > 0, log_s, 0.0))
    large = s_large + jnp.log(-jnp.expm1(-s_large))
    return jnp.where(log_s <= 0, small, large)


def smoothed_from_margins(
    q_u: Float[ArrayLike, " n"],
    log_rho: Float[ArrayLike, ""],
    degree: int,
    loss: str | losses.Loss = "exponential",
) -> Float[Array, ""]:
    """The smoothed margin from the margins $q(u)$ at the direction and $\\log\\rho$.

    With $a = \\rho^L$ and $q_i = a\\, q_i(u)$: exponential loss
    $\\tilde\\gamma = -\\log \\sum_i e^{-q_i} / a$; logistic loss
    $\\tilde\\gamma = -\\log(\\mathrm{expm1}(S)) / a$ with
    $S = \\sum_i \\log(1 + e^{-q_i})$, computed from
    $\\log S = \\mathrm{logsumexp}_i \\log \\ell(q_i)$ so that neither a tiny nor a
    huge $S$ loses precision (Lyu & Li 2020). Exponential:
    $\\bar\\gamma - \\log(n) / a \\le \\tilde\\gamma \\le \\bar\\gamma$; logistic with
    one sample: $\\tilde\\gamma = q(u)$ exactly.

    !!! warning

        $a$ is capped at $e^{600}$: beyond that the smoothed margin equals its
        $\\rho \\to \\infty$ limit up to $\\log(n) e^{-600}$ in absolute terms,
        which is below float64 resolution for any margin above $10^{-250}$.

    **Arguments:**

    - `q_u`: margins $q_i(u)$ at the unit direction, shape `(n,)`.
    - `log_rho`: $\\log \\|\\theta\\|$.
    - `degree`: the homogeneity degree $L$.
    - `loss`: a loss name or `Loss`.

    **Returns:**

    $\\tilde\\gamma$, a scalar.
    """
    loss = losses.get(loss)
    q_u = jnp.asarray(q_u)
    log_scale = jnp.minimum(degree * jnp.asarray(log_rho), _MAX_LOG_SCALE)
    scale = jnp.exp(log_scale)
    q = scale * q_u
    if loss.name == "exponential":
        return -jax.nn.logsumexp(-q) / scale
    log_s = jax.nn.logsumexp(loss.log_value(q))
    return -_log_expm1_exp(log_s) / scale


def smoothed(
    model: Model, theta, ds, loss: str | losses.Loss = "exponential"
) -> Float[Array, ""]:
    """The smoothed margin $\\tilde\\gamma(\\theta)$ of Lyu & Li (2020), in log space.

    Exponential loss: $\\tilde\\gamma = -\\log(\\sum_i e^{-q_i(\\theta)}) / \\rho^L$.
    Logistic loss: $\\tilde\\gamma = -\\log(\\mathrm{expm1}(S)) / \\rho^L$ with
    $S = \\sum_i \\log(1 + e^{-q_i(\\theta)})$. Computed from $q(u)$ and
    $\\log\\rho$ by `smoothed_from_margins`, so it stays finite and accurate where
    every $e^{-q_i}$ underflows.

    Reference: Lyu & Li, "Gradient descent maximizes the margin of homogeneous
    neural networks", ICLR 2020.

    **Arguments:**

    - `model`: a homogeneous `Model` of degree $L$.
    - `theta`: nonzero parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.
    - `loss`: `"exponential"`, `"logistic"` or a `Loss`.

    **Returns:**

    $\\tilde\\gamma(\\theta)$, a scalar.

    **Raises:**

    - `ValueError`: when `theta` is zero or the loss name is unknown.
    """
    loss = losses.get(loss)
    u, log_rho = _polar(model, theta)
    return smoothed_from_margins(per_sample(model, u, ds), log_rho, model.degree, loss)


def log_loss(
    model: Model, theta, ds, loss: str | losses.Loss = "exponential"
) -> Float[Array, ""]:
    """The log of the empirical risk, $\\log R(\\theta) = \\log \\frac1n \\sum_i
    \\ell(q_i(\\theta))$, in log space.

    **Arguments:**

    - `model`: a `Model`.
    - `theta`: parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.
    - `loss`: `"exponential"`, `"logistic"` or a `Loss`.

    **Returns:**

    $\\log R(\\theta)$, finite however large the margins are.
    """
    return losses.log_risk(per_sample(model, theta, ds), losses.get(loss))


def training_error(model: Model, theta, ds) -> Float[Array, ""]:
    """The fraction of samples with $q_i(\\theta) \\le 0$ (a zero margin counts as
    an error).

    **Arguments:**

    - `model`: a `Model`.
    - `theta`: parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.

    **Returns:**

    The training error in $[0, 1]$, a scalar.
    """
    q = per_sample(model, theta, ds)
    return jnp.mean((q <= 0).astype(q.dtype))


def is_late_stage(model: Model, theta, ds) -> bool:
    """Whether every sample is classified correctly, $\\min_i q_i(\\theta) > 0$.

    This is the late stage of THEORY section 2 (the classical sufficient
    condition $n R(\\theta) < \\ell(0)$ implies it). Not traceable: it returns a
    Python `bool`; inside `jax.jit` compare `per_sample(...).min()` with 0.

    **Arguments:**

    - `model`: a `Model`.
    - `theta`: parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.

    **Returns:**

    `True` in the late stage.
    """
    return bool(jnp.min(per_sample(model, theta, ds)) > 0)


def check_late_stage(
    model: Model, theta, ds, loss: str | losses.Loss = "exponential"
) -> None:
    """Raise `NotLateStageError` unless every sample is classified correctly.

    **Arguments:**

    - `model`: a `Model`.
    - `theta`: parameters, a tuple of arrays or a flat vector.
    - `ds`: a `Dataset` or an `(X, y)` pair.
    - `loss`: the loss whose value the message reports.

    **Raises:**

    - `NotLateStageError`: listing the indices of the samples with
      $q_i \\le 0$, the training error, and the loss reached (with
      $n R(\\theta)$ against $\\ell(0)$).
    """
    loss = losses.get(loss)
    q = np.asarray(per_sample(model, theta, ds))
    bad = np.flatnonzero(q <= 0)
    if bad.size == 0:
        return

    n = q.shape[0]
    error = bad.size / n
    log_r = float(losses.log_risk(q, loss))
    shown = ", ".join(str(i) for i in bad[:_MAX_LISTED])
    if bad.size > _MAX_LISTED:
        shown += f", ... ({bad.size - _MAX_LISTED} more)"
    raise NotLateStageError(
        f"not in the late stage: {bad.size} of {n} samples have margin q_i <= 0 "
        f"(indices [{shown}]); training error {error:.4g}, {loss.name} loss "
        f"R = {math.exp(log_r):.4g} (log R = {log_r:.4g}, n R = "
        f"{n * math.exp(log_r):.4g} vs l(0) = {loss.zero_value:.4g}). Train "
        "longer, or use a model that can separate these data.",
        indices=bad,
        training_error=error,
        log_loss=log_r,
    )


@partial(jax.jit, static_argnums=(0, 5))
def _kkt_generators(model: Model, u, X, y, eps, k):
    """Generators $J_i(u) - L \\bar\\gamma u$ for the `k` smallest margins, the
    active mask and the scale $L \\bar\\gamma$."""
    q = y * model.apply(model.unravel(u), X)
    gbar = jnp.min(q)
    _, rows = jax.lax.top_k(-q, k)

    def q_rows(flat):
        return y[rows] * model.apply(model.unravel(flat), X[rows])

    J = jax.jacrev(q_rows)(u)
    active = q[rows] <= gbar + eps
    scale = model.degree * gbar
    return J - scale * u[None, :], active, scale


def kkt_residual(
    model: Model, u, ds, eps: float = 1e-6, k: int | None = None
) -> Float[Array, ""]:
    """The relative KKT residual of a direction for the max-margin problem.

    With the enlarged active set $I_\\varepsilon(u) = \\{i : q_i(u) \\le
    \\bar\\gamma(u) + \\varepsilon\\}$ and $J_i(u)$ the autodiff gradient of $q_i$
    at $u$ (with the model's $\\mathrm{ReLU}'(0)$), returns

    $$r(u) = \\min_{\\lambda \\in \\Delta(I_\\varepsilon)}
    \\frac{\\|\\sum_i \\lambda_i J_i(u) - L \\bar\\gamma(u) u\\|}{L \\bar\\gamma(u)},$$

    the norm of the minimum-norm point of the hull of the generators
    $J_i(u) - L\\bar\\gamma u$ over the active set
    (`flowtools.simplex.min_norm_point`), divided by $L \\bar\\gamma$. It is 0
    exactly when $u / \\bar\\gamma(u)^{1/L}$ is a KKT point of
    $\\min \\|\\theta\\|^2/2$ subject to $q_i(\\theta) \\ge 1$ (Lyu & Li 2020;
    THEORY section 3), for the conservative field of the autodiff gradients
    (Bolte & Pauwels 2021).

    **Arguments:**

    - `model`: a homogeneous `Model` of degree $L$.
    - `u`: a direction, a tuple of arrays or a flat vector; it is normalized to
      the unit sphere first.
    - `ds`: a `Dataset` or an `(X, y)` pair.
    - `eps`: the active-set slack $\\varepsilon \\ge 0$.
    - `k`: gradients are computed for the `k` smallest margins only (a fixed
      shape, so the computation can be traced); `k >= n` means every sample.
      When more than `k` samples are within `eps` a warning says so, and the
      value is an upper bound. `None` (default) sizes `k` from the active set
      itself (the next power of two above its size, at least 8, so that
      few shapes are compiled), which needs concrete
      inputs; under tracing `None` means every sample.

    **Returns:**

    $r(u) \\ge 0$, a scalar.

    **Raises:**

    - `ValueError`: for a negative `eps`, a `k` below 1, a zero `u`, or a
      direction with $\\bar\\gamma(u) \\le 0$ (the residual is defined for a
      positive margin only).
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}.")
    if k is not None and (not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(f"k must be a positive integer or None, got {k!r}.")
    X, y = _arrays(ds)
    n = X.shape[0]

    u_tree, _ = _polar(model, u)
    flat = model.ravel(u_tree)
    q = _margins(model, u_tree, X, y)
    if _is_concrete(q):
        gbar = float(jnp.min(q))
        if not gbar > 0:
            raise ValueError(
                f"kkt_residual needs a positive normalized margin; gbar(u) = "
                f"{gbar:.4g} ({int(jnp.sum(q <= 0))} samples have q_i(u) <= 0). "
                "Check check_late_stage first."
            )
        num_active = int(jnp.sum(q <= gbar + eps))
        if k is None:
            k = max(8, 1 << (num_active - 1).bit_length())
        elif num_active > k:
            warnings.warn(
                f"{num_active} samples have a margin within eps={eps:g} of the "
                f"minimum but k={k}; the residual uses the k smallest only and is "
                "an upper bound. Raise k.",
                stacklevel=2,
            )
    k = n if k is None else min(int(k), n)

    generators, active, scale = _kkt_generators(model, flat, X, y, jnp.asarray(eps), k)
    result = simplex.min_norm_point(generators, active)
    return jnp.linalg.norm(result.point) / scale
