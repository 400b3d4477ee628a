"""Wrapping a user predictor function as a `Model` of a claimed degree."""

import math
from collections.abc import Callable, Sequence

from flowtools.models._activations import _check_relu0
from flowtools.models._model import Model, _normal_init, _positive_int


def custom(
    fn: Callable,
    degree: int,
    shapes: Sequence[Sequence[int]],
    init: Callable | None = None,
    name: str = "custom",
    *,
    layer_names: Sequence[str] | None = None,
    in_dim: int | None = None,
    relu0: float | None = None,
) -> Model:
    """Wrap a user predictor `fn(theta, X) -> (n,)` as a `Model` of a given degree.

    The degree is a claim: verify it with `check_homogeneous` before use.

    **Arguments:**

    - `fn`: `fn(theta, X)` with `theta` a tuple of arrays and `X` of shape
      `(n, d)`, returning shape `(n,)`; called as `fn(theta, X, relu0)` when
      `relu0` is given.
    - `degree`: the claimed homogeneity degree $L \\geq 1$.
    - `shapes`: one shape per parameter leaf.
    - `init`: `init(key, scale) -> theta` with leaves multiplied by `scale`;
      default: normal leaves with standard deviation $1/\\sqrt{\\text{fan-in}}$
      (last axis length for a matrix, first for a vector, 1 for a scalar).
    - `name`, `layer_names`: labels (default names `p0`, `p1`, ...).
    - `in_dim`: expected row length of `X`, checked by `apply` when given.
    - `relu0`: if given, the value passed to `fn` and changed by `with_relu0`.

    **Returns:** a `Model`.

    **Raises:** `ValueError` for a bad degree, shapes or names; `TypeError` if
    `fn` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(theta, X); got {type(fn).__name__}.")
    degree = _positive_int(degree, "degree")
    shapes = tuple(tuple(int(v) for v in shape) for shape in shapes)
    if not shapes or any(v < 1 for shape in shapes for v in shape):
        raise ValueError(f"shapes must be non-empty positive shapes; got {shapes}.")
    names = tuple(layer_names) if layer_names is not None else None
    names = names or tuple(f"p{k}" for k in range(len(shapes)))
    if len(names) != len(shapes):
        raise ValueError(f"layer_names needs {len(shapes)} entries; got {names}.")
    if init is None:
        fan_ins = [
            shape[-1] if len(shape) > 1 else max(shape, default=1) for shape in shapes
        ]
        init = _normal_init(shapes, tuple(1 / math.sqrt(f) for f in fan_ins))
    if relu0 is None:
        apply_fn = lambda theta, X, s: fn(theta, X)  # noqa: E731
    else:
        relu0 = _check_relu0(relu0)
        apply_fn = fn
    return Model(
        name=name,
        degree=degree,
        shapes=shapes,
        layer_names=names,
        relu0=0.0 if relu0 is None else relu0,
        in_dim=None if in_dim is None else _positive_int(in_dim, "in_dim"),
        apply_fn=apply_fn,
        init_fn=init,
        relu0_settable=relu0 is not None,
    )
