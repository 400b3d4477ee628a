"""The `Model` container and the parameter layout helpers shared by constructors.

A `Model` holds the degree $L$, the leaf shapes and the functions that apply and
initialise it; parameters are tuples of float64 arrays with a flat view through
`ravel` / `unravel`. The helpers validate sizes and draw the seeded normal
initialisations used by the built-in constructors.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from flowtools.models._activations import _check_relu0

Params = tuple[Float[Array, "..."], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A positively homogeneous predictor $f(\\theta; x)$ of degree $L$.

    Instances compare and hash by identity, so a model can be a static argument
    of `jax.jit`. Build them with the constructors of `flowtools.models` (`linear`,
    `deep_linear`, `diagonal`, `mlp`, `cnn`, `custom`).

    **Fields:**

    - `name`: short label (`"mlp"`, `"cnn"`, ...).
    - `degree`: the homogeneity degree $L$.
    - `shapes`: one shape per parameter leaf.
    - `layer_names`: one name per parameter leaf.
    - `relu0`: the autodiff value $s$ of $\\mathrm{ReLU}'(0)$.
    - `in_dim`: length of an input row (`None` when unknown, for `custom`).
    - `apply_fn`: `apply_fn(theta, X, relu0) -> (n,)` on a tuple `theta`.
    - `init_fn`: `init_fn(key, scale) -> theta`.
    - `preact_fn`: `preact_fn(theta, X, relu0)` returns the pre-activations of
      every hidden layer, or `None` for models without activations.
    - `activation_layers`: for each pre-activation array, the name of the layer
      that produces it.
    - `relu0_settable`: whether `with_relu0` may change `relu0`.
    """

    name: str
    degree: int
    shapes: tuple[tuple[int, ...], ...]
    layer_names: tuple[str, ...]
    relu0: float
    in_dim: int | None
    apply_fn: Callable = dataclasses.field(repr=False)
    init_fn: Callable = dataclasses.field(repr=False)
    preact_fn: Callable | None = dataclasses.field(default=None, repr=False)
    activation_layers: tuple[str, ...] = ()
    relu0_settable: bool = True

    @property
    def num_params(self) -> int:
        """Total number of scalar parameters $p$."""
        return sum(math.prod(shape) for shape in self.shapes)

    def apply(
        self, theta: Params | Float[ArrayLike, " p"], X: Float[ArrayLike, "n d"]
    ) -> Float[Array, " n"]:
        """Scores $f(\\theta; x_i)$ for every row of `X`, in one batched pass.

        **Arguments:**

        - `theta`: a parameter tuple or a flat vector of length `num_params`.
        - `X`: inputs, one flat sample per row (a single row `(d,)` gives a
          scalar).

        **Returns:** the scores, shape `(n,)`.

        **Raises:** `ValueError` for a wrong parameter layout or input width.
        """
        theta = self.as_tree(theta)
        X = jnp.asarray(X)
        single = X.ndim == 1
        X = X[None] if single else X
        if X.ndim != 2:
            raise ValueError(f"X must have shape (n, d); got shape {X.shape}.")
        if self.in_dim is not None and X.shape[1] != self.in_dim:
            raise ValueError(
                f"model {self.name!r} takes rows of length {self.in_dim}; "
                f"X has shape {X.shape}."
            )
        out = self.apply_fn(theta, X, self.relu0)
        if out.shape != (X.shape[0],):
            raise ValueError(
                f"model {self.name!r} returned shape {out.shape} for {X.shape[0]} "
                f"rows; apply functions must return shape (n,)."
            )
        return out[0] if single else out

    def preactivations(
        self, theta: Params | Float[ArrayLike, " p"], X: Float[ArrayLike, "n d"]
    ) -> tuple[Float[Array, "n ..."], ...]:
        """Pre-activations of every hidden layer (empty for models without any).

        **Arguments:** `theta` (tuple or flat) and `X` of shape `(n, d)`.

        **Returns:** one array per hidden layer, leading axis `n`; the name of the
        layer producing each is in `activation_layers`.
        """
        if self.preact_fn is None:
            return ()
        return tuple(self.preact_fn(self.as_tree(theta), jnp.asarray(X), self.relu0))

    def init(self, key: Any, scale: float = 1.0) -> Params:
        """Random parameters: He-normal for hidden layers, LeCun-normal for heads.

        Deterministic in `key` (the normals come in blocks of 1024 drawn with
        `jax.random.fold_in(key, block)`); `init(key, c)` equals `c * init(key)`
        leaf by leaf for the built-in models.

        **Arguments:**

        - `key`: a JAX PRNG key (or an integer seed).
        - `scale`: positive factor applied to every leaf.

        **Returns:** a tuple of float64 arrays with shapes `shapes`.

        **Raises:** `ValueError` for a non-positive scale or a custom init that
        returns the wrong layout.
        """
        if isinstance(scale, int | float) and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number; got {scale}.")
        if isinstance(key, int):
            key = jax.random.key(key)
        theta = self.as_tree(tuple(self.init_fn(key, scale)))
        return tuple(jnp.asarray(leaf, jnp.float64) for leaf in theta)

    def ravel(self, theta: Params) -> Float[Array, " p"]:
        """Flat vector of all parameters, leaves concatenated in order (C order)."""
        theta = self.as_tree(theta)
        return jnp.concatenate([jnp.ravel(leaf) for leaf in theta])

    def unravel(self, flat: Float[ArrayLike, " p"]) -> Params:
        """Inverse of `ravel`: split a flat vector into the parameter tuple.

        **Raises:** `ValueError` if `flat` is not 1-D of length `num_params`.
        """
        flat = jnp.asarray(flat)
        if flat.ndim != 1 or flat.shape[0] != self.num_params:
            raise ValueError(
                f"unravel expects a flat vector of length {self.num_params} for "
                f"model {self.name!r}; got shape {flat.shape}."
            )
        leaves, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            leaves.append(flat[start : start + size].reshape(shape))
            start += size
        return tuple(leaves)

    def as_tree(self, theta_or_flat: Any) -> Params:
        """Parameters as a tuple, from a tuple/list of arrays or a flat vector.

        **Arguments:**

        - `theta_or_flat`: a tuple or list with one array per layer, or a 1-D
          vector of length `num_params`.

        **Returns:** the parameter tuple.

        **Raises:** `ValueError` naming the expected length or shapes;
        `TypeError` for objects that are not arrays.
        """
        if isinstance(theta_or_flat, tuple | list):
            leaves = tuple(jnp.asarray(leaf) for leaf in theta_or_flat)
            got = tuple(leaf.shape for leaf in leaves)
            if got != self.shapes:
                raise ValueError(
                    f"model {self.name!r} expects {len(self.shapes)} arrays with "
                    f"shapes {self.shapes} (layers {self.layer_names}); got {got}. "
                    f"A flat vector of length {self.num_params} is accepted too."
                )
            return leaves
        try:
            flat = jnp.asarray(theta_or_flat)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"parameters must be a tuple of arrays or a flat vector of length "
                f"{self.num_params}; got {type(theta_or_flat).__name__}."
            ) from error
        if flat.ndim != 1 or flat.shape[0] != self.num_params:
            raise ValueError(
                f"a flat parameter vector for model {self.name!r} must have length "
                f"{self.num_params}; got shape {flat.shape}. Pass a tuple of arrays "
                f"with shapes {self.shapes} instead, or fix the length."
            )
        return self.unravel(flat)

    def describe(self) -> str:
        """Human-readable summary: name, degree, parameter count, layer shapes."""
        lines = [
            f"{self.name}: degree L={self.degree}, {self.num_params} parameters, "
            f"relu0={self.relu0:g}"
        ]
        for layer, shape in zip(self.layer_names, self.shapes, strict=True):
            lines.append(f"  {layer:<8} {str(shape):<16} {math.prod(shape)}")
        return "\n".join(lines)

    def with_relu0(self, s: float) -> "Model":
        """The same model with autodiff value $s$ of $\\mathrm{ReLU}'(0)$.

        **Raises:** `ValueError` for $s \\notin [0, 1]$, or for a `custom` model
        built without a `relu0` argument (its function fixes its own choice).
        """
        s = _check_relu0(s)
        if not self.relu0_settable:
            raise ValueError(
                f"model {self.name!r} wraps a user function that does not take "
                f"relu0; build it with models.custom(..., relu0={s}) and a function "
                f"fn(theta, X, relu0)."
            )
        return dataclasses.replace(self, relu0=s)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _widths(value: Any, name: str, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        value = (value,)
    value = tuple(_positive_int(w, f"each entry of {name}") for w in value)
    if not value and not allow_empty:
        raise ValueError(f"{name} must hold at least one positive integer.")
    return value


# Standard normals are drawn in fixed-size blocks, one key per block, so that
# every model reuses the same compiled sampler; leaves are cut on the host.
_BLOCK = 1024


def _standard_normals(key, size):
    blocks = [
        jax.random.normal(jax.random.fold_in(key, b), (_BLOCK,), dtype=jnp.float64)
        for b in range(-(-size // _BLOCK))
    ]
    if any(isinstance(block, jax.core.Tracer) for block in blocks):
        return jnp.concatenate(blocks), jnp
    return np.concatenate([np.asarray(block) for block in blocks]), np


def _normal_init(shapes, stds):
    def init_fn(key, scale):
        z, xp = _standard_normals(key, sum(math.prod(shape) for shape in shapes))
        leaves, start = [], 0
        for shape, std in zip(shapes, stds, strict=True):
            size = math.prod(shape)
            leaves.append(
                jnp.asarray(scale * (std * xp.reshape(z[start : start + size], shape)))
            )
            start += size
        return tuple(leaves)

    return init_fn
