"""Models without activations: linear, deep linear and diagonal networks."""

import dataclasses
import math

from flowtools.models._model import Model, _normal_init, _positive_int


def linear(dim: int) -> Model:
    """The linear model $f(w; x) = \\langle w, x \\rangle$, degree $L = 1$.

    **Arguments:** `dim`, the input dimension.

    **Returns:** a `Model` with one leaf `w` of shape `(dim,)`.
    """
    dim = _positive_int(dim, "dim")
    return Model(
        name="linear",
        degree=1,
        shapes=((dim,),),
        layer_names=("w",),
        relu0=0.0,
        in_dim=dim,
        apply_fn=lambda theta, X, s: X @ theta[0],
        init_fn=_normal_init(((dim,),), (1.0 / math.sqrt(dim),)),
    )


def deep_linear(dim: int, depth: int, width: int | None = None) -> Model:
    """A product of `depth` matrices, $f = w^\\top W_{D-1} \\cdots W_1 x$, $L = D$.

    **Arguments:**

    - `dim`: input dimension.
    - `depth`: number of factors $D$ (`depth=1` is `linear`).
    - `width`: inner width (default `dim`).

    **Returns:** a `Model` with leaves `W1 (width, dim)`, `W2 ... (width, width)`
    and `head (width,)`.
    """
    dim, depth = _positive_int(dim, "dim"), _positive_int(depth, "depth")
    width = dim if width is None else _positive_int(width, "width")
    if depth == 1:
        return dataclasses.replace(linear(dim), name="deep_linear")
    shapes = ((width, dim),) + ((width, width),) * (depth - 2) + ((width,),)
    names = tuple(f"W{k + 1}" for k in range(depth - 1)) + ("head",)
    stds = (1 / math.sqrt(dim),) + (1 / math.sqrt(width),) * (depth - 1)

    def apply_fn(theta, X, s):
        h = X
        for W in theta[:-1]:
            h = h @ W.T
        return h @ theta[-1]

    init_fn = _normal_init(shapes, stds)
    return Model("deep_linear", depth, shapes, names, 0.0, dim, apply_fn, init_fn)


def diagonal(dim: int, depth: int = 2) -> Model:
    """The diagonal network $f = \\langle u^{D} - v^{D}, x \\rangle$, $L = D$.

    Powers are elementwise; `depth=2` is the two-layer diagonal network
    $\\langle u \\odot u - v \\odot v, x \\rangle$ with $\\theta = (u, v)$. For odd
    `depth` the pair $(u, v)$ is redundant but kept, so that every depth shares
    one layout. A coordinate with $u_j = v_j = 0$ has zero gradient and stays 0.

    **Arguments:** `dim`, the input dimension; `depth`, the degree $D \\geq 1$.

    **Returns:** a `Model` with leaves `u (dim,)` and `v (dim,)`.
    """
    dim, depth = _positive_int(dim, "dim"), _positive_int(depth, "depth")
    shapes = ((dim,), (dim,))

    def apply_fn(theta, X, s):
        u, v = theta
        return X @ (u**depth - v**depth)

    init_fn = _normal_init(shapes, (1 / math.sqrt(dim),) * 2)
    return Model("diagonal", depth, shapes, ("u", "v"), 0.0, dim, apply_fn, init_fn)
