"""Exponential and logistic losses, computed in log space.

Late in training the margins $q_i$ are large and $e^{-q_i}$ underflows: XLA on the
CPU flushes subnormal numbers to zero, so under JAX $e^{-q}$ is exactly 0 once
$q > 708.4$ in float64 and $q > 87.3$ in float32. Everything here is therefore
available through logarithms: $\\log \\ell(q)$, $\\log w(q)$ with $w = -\\ell'$,
and the normalized weights $\\lambda = \\mathrm{softmax}(\\log w(q))$, which stay
finite and accurate for $q$ from $-10^4$ to $10^6$ and beyond.

Functions keep the floating dtype of their input (float32 in, float32 out);
integer inputs are promoted to the default floating dtype.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "EXPONENTIAL",
    "LOGISTIC",
    "Loss",
    "get",
    "log_risk",
    "weights",
]

_NAMES = ("exponential", "logistic")


def _as_float(q: ArrayLike) -> Array:
    q = jnp.asarray(q)
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(jnp.result_type(float))
    return q


def _log_log1p_exp_neg(q: Array) -> Array:
    """$\\log \\log(1 + e^{-q})$ for every real $q$, without underflow.

    For $q \\ge 0$ write $z = e^{-q} \\in (0, 1]$ and use
    $\\log\\log(1 + z) = -q + \\log(\\log(1 + z) / z)$; the ratio lies in
    $[\\log 2, 1]$ and tends to 1 when $z$ underflows, so the result tends to
    $-q$ with relative error below $z / 2$. For $q < 0$ the softplus is at least
    $\\log 2$ and its logarithm is computed directly.
    """
    # where (not maximum/minimum): autodiff of maximum splits the gradient at 0.
    z = jnp.exp(-jnp.where(q >= 0, q, 0.0))
    safe_z = jnp.where(z > 0, z, 1.0)
    ratio = jnp.where(z > 0, jnp.log1p(safe_z) / safe_z, 1.0)
    large = -q + jnp.log(ratio)
    small = jnp.log(jax.nn.softplus(-jnp.where(q < 0, q, 0.0)))
    return jnp.where(q >= 0, large, small)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A margin loss $\\ell(q)$ with its logarithm and its log-weight.

    Two instances exist: `EXPONENTIAL` ($\\ell(q) = e^{-q}$) and `LOGISTIC`
    ($\\ell(q) = \\log(1 + e^{-q})$). Instances are frozen and hashable, so they
    can be passed as static arguments to `jax.jit`.

    **Arguments:**

    - `name`: `"exponential"` or `"logistic"`.
    - `zero_value`: $\\ell(0)$ (1 for the exponential loss, $\\log 2$ for the
      logistic loss); $n R(\\theta) < \\ell(0)$ is the classical sufficient
      condition for the late stage (Lyu & Li 2020).
    """

    name: str
    zero_value: float

    def __post_init__(self):
        if self.name not in _NAMES:
            raise ValueError(
                f"Loss name must be one of {_NAMES}, got {self.name!r}; use "
                "flowtools.losses.EXPONENTIAL or flowtools.losses.LOGISTIC."
            )

    def value(self, q: ArrayLike) -> Float[Array, "*shape"]:
        """The loss $\\ell(q)$, elementwise.

        **Arguments:**

        - `q`: margins, any shape.

        **Returns:**

        $\\ell(q)$ with the shape and floating dtype of `q`.

        !!! warning

            The value itself underflows to 0 for large $q$ and, for the
            exponential loss, overflows to `inf` for $q < -709$ (float64); these
            are values that the dtype cannot represent. Use `log_value` for
            anything that is summed or compared late in training.
        """
        q = _as_float(q)
        if self.name == "exponential":
            return jnp.exp(-q)
        return jax.nn.softplus(-q)

    def log_value(self, q: ArrayLike) -> Float[Array, "*shape"]:
        """The log-loss $\\log \\ell(q)$, elementwise and without underflow.

        Exponential: $-q$. Logistic: $\\log\\log(1 + e^{-q})$, equal to
        $-q + \\log(\\log(1 + e^{-q}) e^{q})$ for $q \\ge 0$, which tends to $-q$
        where $e^{-q}$ underflows.

        **Arguments:**

        - `q`: margins, any shape.

        **Returns:**

        $\\log \\ell(q)$ with the shape and floating dtype of `q`; finite for every
        finite `q`.
        """
        q = _as_float(q)
        if self.name == "exponential":
            return -q
        return _log_log1p_exp_neg(q)

    def log_weight(self, q: ArrayLike) -> Float[Array, "*shape"]:
        """The log-weight $\\log w(q) = \\log(-\\ell'(q))$, elementwise.

        Exponential: $w(q) = e^{-q}$, so $\\log w = -q$. Logistic:
        $w(q) = 1 / (1 + e^{q})$, so $\\log w = -\\mathrm{softplus}(q)$.

        **Arguments:**

        - `q`: margins, any shape.

        **Returns:**

        $\\log w(q)$ with the shape and floating dtype of `q`; finite for every
        finite `q`.
        """
        q = _as_float(q)
        if self.name == "exponential":
            return -q
        return -jax.nn.softplus(q)


EXPONENTIAL = Loss("exponential", 1.0)
"""The exponential loss $\\ell(q) = e^{-q}$."""

LOGISTIC = Loss("logistic", math.log(2.0))
"""The logistic loss $\\ell(q) = \\log(1 + e^{-q})$."""

_BY_NAME = {"exponential": EXPONENTIAL, "logistic": LOGISTIC}


def get(loss: str | Loss) -> Loss:
    """Look up a loss by name (or pass a `Loss` through).

    **Arguments:**

    - `loss`: `"exponential"`, `"logistic"` (case-insensitive) or a `Loss`.

    **Returns:**

    The `Loss` instance.

    **Raises:**

    - `ValueError`: for an unknown name (the message lists the valid names).
    - `TypeError`: when `loss` is neither a string nor a `Loss`.
    """
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f"loss must be a string or a flowtools.losses.Loss, got "
            f"{type(loss).__name__}; use one of {_NAMES}."
        )
    key = loss.strip().lower()
    if key not in _BY_NAME:
        raise ValueError(f"Unknown loss {loss!r}; valid names are {_NAMES}.")
    return _BY_NAME[key]


def weights(q: ArrayLike, loss: str | Loss = "exponential") -> Float[Array, "*shape"]:
    """Normalized sample weights $\\lambda = w(q) / \\sum_j w(q_j)$, in log space.

    Computed as $\\mathrm{softmax}(\\log w(q))$ along the last axis, so the weights
    are correct however large the margins are: for the logistic loss in float32
    with $q = (104, 105)$, where $e^{-q}$ is exactly 0 on the CPU, they are
    $(0.731, 0.269)$. For the exponential loss these are the softmin weights at
    temperature 1 (THEORY section 4: at $\\theta = \\rho u$ they are the softmin
    weights of $q(u)$ at temperature $\\rho^{-L}$).

    **Arguments:**

    - `q`: margins; the weights are normalized along the last axis.
    - `loss`: a loss name or `Loss`.

    **Returns:**

    Nonnegative weights summing to 1 along the last axis, with the shape and
    floating dtype of `q`.
    """
    return jax.nn.softmax(get(loss).log_weight(q), axis=-1)


def log_risk(q: ArrayLike, loss: str | Loss = "exponential") -> Float[Array, "*batch"]:
    """The log of the empirical risk, $\\log \\frac1n \\sum_i \\ell(q_i)$, in log space.

    Computed as $\\mathrm{logsumexp}_i \\log \\ell(q_i) - \\log n$ along the last
    axis, finite however large the margins are.

    **Arguments:**

    - `q`: margins $q_i$; the mean is taken along the last axis.
    - `loss`: a loss name or `Loss`.

    **Returns:**

    $\\log R$, with the leading (batch) shape and floating dtype of `q`.

    **Raises:**

    - `ValueError`: when the last axis of `q` is empty.
    """
    q = _as_float(q)
    if q.ndim == 0 or q.shape[-1] == 0:
        raise ValueError(
            f"log_risk needs at least one margin along the last axis, got shape "
            f"{q.shape}."
        )
    n = q.shape[-1]
    return jax.nn.logsumexp(get(loss).log_value(q), axis=-1) - math.log(n)
