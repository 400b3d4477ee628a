"""Bias-free ReLU networks: the perceptron `mlp` and the convolutional `cnn`."""

import math
from collections.abc import Sequence
from functools import partial

import jax

from flowtools.models._activations import (
    _check_relu0,
    _check_slope,
    _leaky_relu,
    _relu,
)
from flowtools.models._model import Model, _normal_init, _positive_int, _widths


def mlp(
    in_dim: int,
    widths: Sequence[int] = (32,),
    activation: str = "relu",
    slope: float = 0.01,
    relu0: float = 0.0,
    first_layer_bias: bool = False,
) -> Model:
    """A bias-free (leaky-)ReLU perceptron $f = w^\\top \\sigma(W_{D-1} \\cdots
    \\sigma(W_1 x))$, degree $L = D$ = number of weight layers.

    With `first_layer_bias=True` the first layer computes $W_1 x + b_1$; the
    model stays homogeneous of the same degree because $b_1$ is a parameter that
    scales with $\\theta$ (a bias anywhere else breaks homogeneity).

    **Arguments:**

    - `in_dim`: input dimension.
    - `widths`: hidden widths; `len(widths) + 1` weight layers.
    - `activation`: `"relu"` or `"leaky_relu"`.
    - `slope`: negative slope of the leaky ReLU.
    - `relu0`: autodiff value $s$ at the kink (see `relu`, `leaky_relu`).
    - `first_layer_bias`: add a bias `b1` to the first layer.

    **Returns:** a `Model` with leaves `W1 (w1, in_dim)`, [`b1 (w1,)`],
    `W2 (w2, w1)`, ..., `head (w_last,)`.

    **Raises:** `ValueError` for an unknown activation or bad widths.
    """
    in_dim = _positive_int(in_dim, "in_dim")
    widths = _widths(widths, "widths", allow_empty=not first_layer_bias)
    relu0 = _check_relu0(relu0)
    if activation == "relu":
        act = _relu
    elif activation == "leaky_relu":
        act = partial(_leaky_relu, slope=_check_slope(slope))
    else:
        raise ValueError(
            f"activation must be 'relu' or 'leaky_relu'; got {activation!r}."
        )
    gain = 2.0 if activation == "relu" else 2.0 / (1.0 + float(slope) ** 2)

    fan_ins = (in_dim,) + widths
    shapes = [(w, f) for w, f in zip(widths, fan_ins, strict=False)]
    names = [f"W{k + 1}" for k in range(len(widths))]
    stds = [math.sqrt(gain / f) for f in fan_ins[:-1]]
    if first_layer_bias:
        # The bias acts as a weight on a constant input 1 (fan-in in_dim + 1).
        stds[0] = math.sqrt(gain / (in_dim + 1))
        shapes.insert(1, (widths[0],))
        names.insert(1, "b1")
        stds.insert(1, stds[0])
    shapes.append((fan_ins[-1],))
    names.append("head")
    stds.append(1 / math.sqrt(fan_ins[-1]))

    def forward(theta, X, s):
        weights = (theta[0], *theta[2:-1]) if first_layer_bias else theta[:-1]
        h, preacts = X, []
        for k, W in enumerate(weights):
            z = h @ W.T
            if k == 0 and first_layer_bias:
                z = z + theta[1]
            preacts.append(z)
            h = act(z, s=s)
        return preacts, h @ theta[-1]

    return Model(
        name="mlp",
        degree=len(widths) + 1,
        shapes=tuple(shapes),
        layer_names=tuple(names),
        relu0=relu0,
        in_dim=in_dim,
        apply_fn=lambda theta, X, s: forward(theta, X, s)[1],
        init_fn=_normal_init(tuple(shapes), tuple(stds)),
        preact_fn=lambda theta, X, s: forward(theta, X, s)[0],
        activation_layers=tuple(f"W{k + 1}" for k in range(len(widths))),
    )


def _pool2x2(h, kind):
    n, height, width, c = h.shape
    h = h[:, : 2 * (height // 2), : 2 * (width // 2)]
    h = h.reshape(n, height // 2, 2, width // 2, 2, c)
    return h.max(axis=(2, 4)) if kind == "max" else h.mean(axis=(2, 4))


def cnn(
    image_shape: tuple[int, ...] = (8, 8),
    channels: Sequence[int] = (8,),
    kernel: int = 3,
    pool: str = "max",
    relu0: float = 0.0,
) -> Model:
    """A bias-free CNN: blocks of conv ('SAME') + ReLU + 2x2 pooling, linear head.

    Degree $L$ = `len(channels) + 1` (max and average pooling are positively
    homogeneous of degree 1). Rows of `X` are images flattened in C order over
    `(height, width, channels)`; `apply` reshapes them inside.

    !!! warning
        Pooling uses non-overlapping 2x2 windows; an odd height or width drops
        its last row or column before pooling.

    **Arguments:**

    - `image_shape`: `(height, width)` or `(height, width, in_channels)`.
    - `channels`: output channels of each conv block.
    - `kernel`: side of the square conv kernels.
    - `pool`: `"max"` or `"avg"`.
    - `relu0`: autodiff value $s$ of $\\mathrm{ReLU}'(0)$.

    **Returns:** a `Model` with leaves `conv1 (k, k, c_in, c1)`, ... (HWIO) and
    `head (h_last * w_last * c_last,)`.

    **Raises:** `ValueError` for an unknown pooling or an image too small for
    the number of pooling stages.
    """
    if len(image_shape) not in (2, 3):
        raise ValueError(
            f"image_shape must be (height, width) or (height, width, channels); "
            f"got {image_shape!r}."
        )
    shape = tuple(_positive_int(v, "image_shape entries") for v in image_shape)
    height, width, c_in = shape if len(shape) == 3 else (*shape, 1)
    channels = _widths(channels, "channels", allow_empty=False)
    kernel = _positive_int(kernel, "kernel")
    relu0 = _check_relu0(relu0)
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg'; got {pool!r}.")

    shapes, stds, h, w, c = [], [], height, width, c_in
    for c_out in channels:
        if h < 2 or w < 2:
            raise ValueError(
                f"image_shape {image_shape} is too small for {len(channels)} "
                f"2x2 pooling stages; use fewer channels entries."
            )
        shapes.append((kernel, kernel, c, c_out))
        stds.append(math.sqrt(2.0 / (kernel * kernel * c)))
        h, w, c = h // 2, w // 2, c_out
    shapes.append((h * w * c,))
    stds.append(1 / math.sqrt(h * w * c))
    names = tuple(f"conv{k + 1}" for k in range(len(channels))) + ("head",)

    def forward(theta, X, s):
        n = X.shape[0]
        x, preacts = X.reshape(n, height, width, c_in), []
        for K in theta[:-1]:
            z = jax.lax.conv_general_dilated(
                x, K, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            preacts.append(z)
            x = _pool2x2(_relu(z, s), pool)
        return preacts, x.reshape(n, -1) @ theta[-1]

    return Model(
        name="cnn",
        degree=len(channels) + 1,
        shapes=tuple(shapes),
        layer_names=names,
        relu0=relu0,
        in_dim=height * width * c_in,
        apply_fn=lambda theta, X, s: forward(theta, X, s)[1],
        init_fn=_normal_init(tuple(shapes), tuple(stds)),
        preact_fn=lambda theta, X, s: forward(theta, X, s)[0],
        activation_layers=names[:-1],
    )
